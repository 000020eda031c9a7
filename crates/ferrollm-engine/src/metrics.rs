//! Serving metrics, exported in Prometheus text format with vLLM's metric names so existing
//! dashboards read them unchanged.

use std::fmt::Write;
use std::sync::Mutex;

use ferrollm_core::SchedulerStats;

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

const TTFT_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
const ITL_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
const E2E_BUCKETS: &[f64] = &[0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0];

#[derive(Debug, Clone)]
pub struct MetricsState {
    pub scheduler: SchedulerStats,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub requests_finished: [u64; 3],
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
}

pub struct Metrics {
    pub model_name: String,
    state: Mutex<MetricsState>,
}

impl Metrics {
    pub fn new(model_name: String) -> Metrics {
        Metrics {
            model_name,
            state: Mutex::new(MetricsState {
                scheduler: SchedulerStats::default(),
                prompt_tokens: 0,
                generation_tokens: 0,
                requests_finished: [0; 3],
                ttft: Histogram::new(TTFT_BUCKETS),
                itl: Histogram::new(ITL_BUCKETS),
                e2e: Histogram::new(E2E_BUCKETS),
            }),
        }
    }

    pub fn update<R>(&self, f: impl FnOnce(&mut MetricsState) -> R) -> R {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    pub fn snapshot(&self) -> MetricsState {
        self.update(|s| s.clone())
    }

    pub fn render_prometheus(&self) -> String {
        let s = self.snapshot();
        let labels = format!("model_name=\"{}\"", self.model_name.replace('"', "'"));
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {v}");
        };
        let st = &s.scheduler;
        gauge("vllm:num_requests_running", "Requests in the running batch.", "gauge", st.num_running as f64);
        gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.", "gauge", st.num_waiting as f64);
        gauge(
            "vllm:kv_cache_usage_perc",
            "Fraction of KV-cache blocks in use (0-1).",
            "gauge",
            st.kv_cache_usage as f64,
        );
        gauge(
            "vllm:gpu_cache_usage_perc",
            "Alias of kv_cache_usage_perc for older dashboards.",
            "gauge",
            st.kv_cache_usage as f64,
        );
        gauge("ferrollm:kv_cache_free_blocks", "Free KV-cache blocks.", "gauge", st.num_free_blocks as f64);
        gauge(
            "vllm:prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache.",
            "counter",
            st.prefix_cache_queries as f64,
        );
        gauge(
            "vllm:prefix_cache_hits_total",
            "Prompt tokens found in the prefix cache.",
            "counter",
            st.prefix_cache_hits as f64,
        );
        gauge("vllm:num_preemptions_total", "Preemptions of running requests.", "counter", st.num_preemptions as f64);
        gauge(
            "vllm:spec_decode_num_drafts_total",
            "Steps in which a request verified draft tokens.",
            "counter",
            st.spec_num_drafts as f64,
        );
        gauge(
            "vllm:spec_decode_num_draft_tokens_total",
            "Draft tokens verified.",
            "counter",
            st.spec_num_draft_tokens as f64,
        );
        gauge(
            "vllm:spec_decode_num_accepted_tokens_total",
            "Draft tokens accepted.",
            "counter",
            st.spec_num_accepted_tokens as f64,
        );
        gauge("ferrollm:engine_steps_total", "Engine steps (forward passes) run.", "counter", st.num_steps as f64);
        gauge(
            "ferrollm:jump_forward_tokens_total",
            "Tokens a grammar forced and jump-forward appended without sampling.",
            "counter",
            st.num_jump_forward_tokens as f64,
        );
        gauge("vllm:prompt_tokens_total", "Prompt tokens processed.", "counter", s.prompt_tokens as f64);
        gauge("vllm:generation_tokens_total", "Tokens generated.", "counter", s.generation_tokens as f64);
        for (i, reason) in ["stop", "length", "abort"].iter().enumerate() {
            let _ = writeln!(
                out,
                "vllm:request_success_total{{{labels},finished_reason=\"{reason}\"}} {}",
                s.requests_finished[i]
            );
        }
        if !st.spec_num_accepted_tokens_per_pos.is_empty() {
            let name = "vllm:spec_decode_num_accepted_tokens_per_pos";
            let _ =
                writeln!(out, "# HELP {name} Draft tokens accepted, by position in the draft.\n# TYPE {name} counter");
            for (pos, c) in st.spec_num_accepted_tokens_per_pos.iter().enumerate() {
                let _ = writeln!(out, "{name}{{{labels},position=\"{pos}\"}} {c}");
            }
        }
        s.ttft.render(&mut out, "vllm:time_to_first_token_seconds", "Time to first token.", &labels);
        s.itl.render(&mut out, "vllm:inter_token_latency_seconds", "Time between output tokens.", &labels);
        s.itl.render(&mut out, "vllm:time_per_output_token_seconds", "Alias of inter_token_latency.", &labels);
        s.e2e.render(&mut out, "vllm:e2e_request_latency_seconds", "Request latency from arrival to finish.", &labels);
        out
    }
}
