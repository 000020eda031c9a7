//! `ferrollm bench serve`: a load generator for an OpenAI-compatible completions server, after
//! `vllm bench serve` (random dataset, `openai` backend).
//!
//! Each request is a random prompt of exactly `--random-input-len` tokens, sent as a token-id
//! array (or, with `--prompt-format text`, as text that a local tokenizer turns back into that
//! many tokens), with `ignore_eos`, `max_tokens = --random-output-len`, temperature 0 and
//! `stream: true`. Requests arrive as a Poisson process of `--request-rate` per second (`inf`:
//! all at once), at most `--max-concurrency` in flight. Every SSE chunk that carries text is
//! timestamped. The figures follow vLLM's definitions:
//!
//! - TTFT: request sent -> first chunk with text.
//! - TPOT: (e2e latency - TTFT) / (output tokens - 1), per request with more than one token.
//! - ITL: every gap between consecutive chunks with text, pooled over all requests.
//! - Output tokens: `usage.completion_tokens` when the server sends usage (we ask with
//!   `stream_options.include_usage`), else `max_tokens` when the server says it stopped on
//!   length, else the number of text chunks.
//!
//! The run is bounded: every request has a connect timeout and a total timeout, a server that
//! cannot be reached fails the run before it starts, and a request that errors is counted as
//! failed (the first errors are printed) without stopping the others.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum PromptFormat {
    /// `prompt: [token ids]` (ferrollm, vLLM and llama.cpp's llama-server accept these).
    Tokens,
    /// `prompt: "text"`, built with `--tokenizer` so that it encodes to the requested length.
    Text,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Server address, e.g. http://127.0.0.1:8000 (overrides --host/--port).
    #[arg(long)]
    base_url: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    #[arg(long, default_value = "/v1/completions")]
    endpoint: String,
    /// Model name to put in requests (default: the first id of GET /v1/models).
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value_t = 100)]
    num_prompts: usize,
    /// Requests per second, arriving as a Poisson process; `inf` sends them all at once.
    #[arg(long, default_value = "inf")]
    request_rate: String,
    /// Most requests in flight at once (default: no limit).
    #[arg(long)]
    max_concurrency: Option<usize>,
    #[arg(long, default_value_t = 1024)]
    random_input_len: usize,
    #[arg(long, default_value_t = 128)]
    random_output_len: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How prompts are sent: token-id arrays, or text (needs --tokenizer).
    #[arg(long, value_enum, default_value = "tokens")]
    prompt_format: PromptFormat,
    /// GGUF file or Hugging Face directory whose tokenizer builds text prompts (and bounds
    /// the random token ids to its vocabulary).
    #[arg(long)]
    tokenizer: Option<String>,
    /// JSON object merged into every request body, e.g. '{"logit_bias": {"2": -100}}'.
    #[arg(long)]
    extra_body: Option<String>,
    /// Bearer token for servers started with an API key.
    #[arg(long, env = "OPENAI_API_KEY")]
    api_key: Option<String>,
    /// Seconds one request may take, queueing at the server included.
    #[arg(long, default_value_t = 600.0)]
    request_timeout: f64,
    /// Seconds to open a connection.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Skip the one test request sent (and checked) before the run.
    #[arg(long)]
    skip_test_request: bool,
    /// Label stored in the JSON output (e.g. the server's name).
    #[arg(long)]
    label: Option<String>,
    /// Write the results (and per-request figures) as JSON here.
    #[arg(long)]
    output_json: Option<String>,
}

/// Where requests go.
#[derive(Clone, Debug)]
struct Target {
    host: String,
    port: u16,
    /// Path prefix of the base URL ("" or "/something").
    prefix: String,
    api_key: Option<String>,
    connect_timeout: Duration,
}

impl Target {
    fn parse(base_url: &str, api_key: Option<String>, connect_timeout: Duration) -> Result<Target> {
        let rest = match base_url.strip_prefix("http://") {
            Some(r) => r,
            None if base_url.starts_with("https://") => {
                bail!("--base-url {base_url}: https is not supported (the load generator speaks plain HTTP)")
            }
            None => base_url,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h.to_string(), p.parse::<u16>().with_context(|| format!("bad port in --base-url {base_url}"))?)
            }
            _ => (authority.to_string(), 80),
        };
        if host.is_empty() {
            bail!("--base-url {base_url}: no host");
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        Ok(Target { host, port, prefix: path.trim_end_matches('/').to_string(), api_key, connect_timeout })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}:{}{}{}", self.host, self.port, self.prefix, path)
    }

    /// Opens a fresh connection and sends one request; the body is streamed by the caller.
    async fn send(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Response<Incoming>> {
        let addr = (self.host.as_str(), self.port);
        let stream = match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr)).await {
            Err(_) => bail!("connecting to {}:{} timed out after {:?}", self.host, self.port, self.connect_timeout),
            Ok(Err(e)) => bail!("cannot connect to {}:{}: {e} (is the server running?)", self.host, self.port),
            Ok(Ok(s)) => s,
        };
        stream.set_nodelay(true).ok();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP handshake failed")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host_header = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.prefix, path))
            .header(hyper::header::HOST, host_header)
            .header(hyper::header::USER_AGENT, "ferrollm-bench-serve");
        if let Some(k) = &self.api_key {
            b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {k}"));
        }
        let req = match body {
            Some(bytes) => b
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(hyper::header::ACCEPT, "text/event-stream")
                .body(Full::new(Bytes::from(bytes)))?,
            None => b.body(Full::new(Bytes::new()))?,
        };
        sender.send_request(req).await.with_context(|| format!("{method} {} failed", self.url(path)))
    }

    /// GET returning JSON, bounded by `limit`.
    async fn get_json(&self, path: &str, limit: Duration) -> Result<Value> {
        let fut = async {
            let resp = self.send("GET", path, None).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await.context("reading response body")?.to_bytes();
            if !status.is_success() {
                bail!("GET {} -> HTTP {status}: {}", self.url(path), String::from_utf8_lossy(&body));
            }
            serde_json::from_slice::<Value>(&body).with_context(|| format!("GET {}: not JSON", self.url(path)))
        };
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => bail!("GET {} timed out after {limit:?}", self.url(path)),
        }
    }
}

/// What one request produced.
#[derive(Debug, Default, Clone)]
struct RequestResult {
    success: bool,
    error: String,
    prompt_len: usize,
    output_tokens: usize,
    /// Text chunks received.
    chunks: usize,
    finish_reason: Option<String>,
    ttft: f64,
    latency: f64,
    itl: Vec<f64>,
    /// Seconds from the run's start to sending.
    start: f64,
}

/// Sends one streaming completion and times its chunks.
async fn run_request(target: &Target, endpoint: &str, body: Vec<u8>, max_tokens: usize) -> RequestResult {
    let mut r = RequestResult::default();
    let t0 = Instant::now();
    let err = async {
        let resp = target.send("POST", endpoint, Some(body)).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            bail!("HTTP {status}: {}", text.chars().take(500).collect::<String>());
        }
        let mut buf: Vec<u8> = Vec::new();
        let mut last = t0;
        let mut usage_tokens = None;
        let mut done = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading the event stream")?;
            let Some(data) = frame.data_ref() else { continue };
            let now = Instant::now();
            buf.extend_from_slice(data);
            // Complete lines only; a partial line waits for the next frame.
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                let Some(payload) = line.strip_prefix("data:") else { continue };
                let payload = payload.trim_start();
                if payload == "[DONE]" {
                    done = true;
                    continue;
                }
                let v: Value = serde_json::from_str(payload)
                    .with_context(|| format!("bad SSE data: {}", payload.chars().take(200).collect::<String>()))?;
                if let Some(e) = v.get("error") {
                    bail!("server error in stream: {e}");
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    if let Some(n) = u.get("completion_tokens").and_then(Value::as_u64) {
                        usage_tokens = Some(n as usize);
                    }
                    if let Some(n) = u.get("prompt_tokens").and_then(Value::as_u64) {
                        r.prompt_len = n as usize;
                    }
                }
                let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else { continue };
                if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
                    r.finish_reason = Some(f.to_string());
                }
                let text = choice
                    .get("text")
                    .or_else(|| choice.get("delta").and_then(|d| d.get("content")))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !text.is_empty() {
                    if r.chunks == 0 {
                        r.ttft = (now - t0).as_secs_f64();
                    } else {
                        r.itl.push((now - last).as_secs_f64());
                    }
                    last = now;
                    r.chunks += 1;
                }
            }
        }
        r.latency = t0.elapsed().as_secs_f64();
        if !done && r.finish_reason.is_none() {
            bail!("stream ended without [DONE] or a finish_reason after {} chunks", r.chunks);
        }
        if r.chunks == 0 {
            bail!("stream carried no text (finish_reason {:?})", r.finish_reason);
        }
        r.output_tokens = match usage_tokens {
            Some(n) => n,
            None if r.finish_reason.as_deref() == Some("length") => max_tokens,
            None => r.chunks,
        };
        Ok(())
    }
    .await;
    match err {
        Ok(()) => r.success = true,
        Err(e) => {
            r.success = false;
            r.error = format!("{e:#}");
            r.latency = t0.elapsed().as_secs_f64();
        }
    }
    r
}

fn parse_rate(s: &str) -> Result<f64> {
    let t = s.trim().to_ascii_lowercase();
    if t == "inf" || t == "infinity" {
        return Ok(f64::INFINITY);
    }
    let v: f64 = t.parse().with_context(|| format!("--request-rate '{s}' is not a number or 'inf'"))?;
    if v <= 0.0 || v.is_nan() {
        bail!("--request-rate must be positive (or 'inf')");
    }
    Ok(v)
}

/// numpy.percentile's default (linear interpolation between closest ranks).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

struct Stats {
    mean: f64,
    median: f64,
    std: f64,
    p99: f64,
}

/// Statistics of `v` (seconds) in milliseconds.
fn stats_ms(v: &[f64]) -> Stats {
    if v.is_empty() {
        return Stats { mean: 0.0, median: 0.0, std: 0.0, p99: 0.0 };
    }
    let mut s: Vec<f64> = v.iter().map(|x| x * 1000.0).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    let var = s.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / s.len() as f64;
    Stats { mean, median: percentile(&s, 50.0), std: var.sqrt(), p99: percentile(&s, 99.0) }
}

/// Random ids of ordinary tokens: [1000, min(vocab, 30000)), as `bench latency` uses.
fn random_ids(rng: &mut impl Rng, vocab: usize, len: usize) -> Vec<u32> {
    let hi = vocab.clamp(1001, 30000) as u32;
    (0..len).map(|_| rng.gen_range(1000..hi)).collect()
}

/// Text that the tokenizer encodes to `len` tokens (without BOS), as vLLM's random dataset
/// builds it: decode random ids, re-encode, trim or top up, repeat until stable.
fn text_prompt(tok: &ferrollm_models::Tokenizer, rng: &mut impl Rng, len: usize) -> Result<(String, usize)> {
    let vocab = tok.vocab_size();
    let mut ids = random_ids(rng, vocab, len);
    let mut text = String::new();
    let mut got = 0;
    for _ in 0..20 {
        text = tok.decode(&ids, true)?;
        let re = tok.encode_plain(&text, false)?;
        got = re.len();
        if got == len {
            break;
        }
        ids = re;
        if ids.len() > len {
            ids.truncate(len);
        } else {
            let more = random_ids(rng, vocab, len - ids.len());
            ids.extend(more);
        }
    }
    Ok((text, got))
}

fn load_tokenizer(spec: &str) -> Result<ferrollm_models::Tokenizer> {
    let path = crate::fetch::resolve_model(Some(spec))?;
    let tok = if path.is_dir() {
        ferrollm_models::Tokenizer::from_hf_dir(&path)?
    } else {
        let g = ferrollm_models::gguf::GgufFile::open(&path)?;
        ferrollm_models::Tokenizer::from_gguf(&g)?
    };
    Ok(tok)
}

pub fn run(a: ServeArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(a))
}

async fn run_async(a: ServeArgs) -> Result<()> {
    if a.num_prompts == 0 || a.random_input_len == 0 || a.random_output_len == 0 {
        bail!("--num-prompts, --random-input-len and --random-output-len must be at least 1");
    }
    if a.max_concurrency == Some(0) {
        bail!("--max-concurrency must be at least 1");
    }
    if a.endpoint.contains("chat") {
        bail!("--endpoint {}: only the completions API (/v1/completions) is supported", a.endpoint);
    }
    if !(a.request_timeout > 0.0 && a.connect_timeout > 0.0) {
        bail!("--request-timeout and --connect-timeout must be positive");
    }
    let rate = parse_rate(&a.request_rate)?;
    let extra: serde_json::Map<String, Value> = match &a.extra_body {
        None => Default::default(),
        Some(s) => match serde_json::from_str::<Value>(s).context("--extra-body is not JSON")? {
            Value::Object(m) => m,
            _ => bail!("--extra-body must be a JSON object"),
        },
    };
    let base = a.base_url.clone().unwrap_or_else(|| format!("http://{}:{}", a.host, a.port));
    let target = Target::parse(&base, a.api_key.clone(), Duration::from_secs_f64(a.connect_timeout))?;
    let endpoint = if a.endpoint.starts_with('/') { a.endpoint.clone() } else { format!("/{}", a.endpoint) };

    let model = match &a.model {
        Some(m) => m.clone(),
        None => {
            let v = target
                .get_json("/v1/models", Duration::from_secs_f64(a.connect_timeout + 20.0))
                .await
                .context("finding the model name (pass --model to skip this)")?;
            v.pointer("/data/0/id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .context("GET /v1/models listed no model; pass --model")?
        }
    };

    // Prompts: the test prompt first, then the run's, all from one seeded generator.
    let tok = match &a.tokenizer {
        Some(t) => Some(load_tokenizer(t).with_context(|| format!("loading the tokenizer of {t}"))?),
        None => None,
    };
    if a.prompt_format == PromptFormat::Text && tok.is_none() {
        bail!("--prompt-format text needs --tokenizer (a GGUF file or model directory)");
    }
    let vocab = tok.as_ref().map_or(30000, |t| t.vocab_size());
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let mut prompts: Vec<(Value, usize)> = Vec::with_capacity(a.num_prompts + 1);
    let mut len_mismatch = 0;
    for _ in 0..=a.num_prompts {
        match a.prompt_format {
            PromptFormat::Tokens => {
                let ids = random_ids(&mut rng, vocab, a.random_input_len);
                prompts.push((json!(ids), a.random_input_len));
            }
            PromptFormat::Text => {
                let (text, n) = text_prompt(tok.as_ref().unwrap(), &mut rng, a.random_input_len)?;
                len_mismatch += usize::from(n != a.random_input_len);
                prompts.push((json!(text), n));
            }
        }
    }
    if len_mismatch > 0 {
        eprintln!("note: {len_mismatch} text prompts did not re-encode to exactly {} tokens", a.random_input_len);
    }
    let make_body = |prompt: &Value, max_tokens: usize| -> Vec<u8> {
        let mut b = json!({
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": true,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let obj = b.as_object_mut().unwrap();
        for (k, v) in &extra {
            obj.insert(k.clone(), v.clone());
        }
        serde_json::to_vec(&b).unwrap()
    };

    let timeout = Duration::from_secs_f64(a.request_timeout);
    let timed = |target: Target, endpoint: String, body: Vec<u8>, max_tokens: usize| async move {
        match tokio::time::timeout(timeout, run_request(&target, &endpoint, body, max_tokens)).await {
            Ok(r) => r,
            Err(_) => RequestResult {
                error: format!("request timed out after {timeout:?} (--request-timeout)"),
                latency: timeout.as_secs_f64(),
                ..Default::default()
            },
        }
    };

    println!("target: {} (model {model})", target.url(&endpoint));
    if !a.skip_test_request {
        let test_tokens = a.random_output_len.min(16);
        let r = timed(target.clone(), endpoint.clone(), make_body(&prompts[0].0, test_tokens), test_tokens).await;
        if !r.success {
            bail!("the test request failed, so the run did not start: {}", r.error);
        }
        println!(
            "test request ok: {} chunks, {} output tokens, finish_reason {:?}",
            r.chunks, r.output_tokens, r.finish_reason
        );
    }

    let rate_desc = if rate.is_infinite() { "inf".to_string() } else { format!("{rate}") };
    let conc_desc = a.max_concurrency.map_or("none".to_string(), |c| c.to_string());
    println!(
        "{} requests · input {} · output {} · request rate {rate_desc} · max concurrency {conc_desc}",
        a.num_prompts, a.random_input_len, a.random_output_len
    );

    let sem = a.max_concurrency.map(|c| Arc::new(tokio::sync::Semaphore::new(c)));
    let done = Arc::new(AtomicUsize::new(0));
    let step = (a.num_prompts / 10).max(1);
    let t_start = Instant::now();
    let mut handles = Vec::with_capacity(a.num_prompts);
    for (i, (prompt, plen)) in prompts[1..].iter().enumerate() {
        if i > 0 && rate.is_finite() {
            // Exponential inter-arrival gaps: a Poisson process of `rate` requests per second.
            let u: f64 = rng.gen_range(f64::EPSILON..1.0);
            tokio::time::sleep(Duration::from_secs_f64(-u.ln() / rate)).await;
        }
        let body = make_body(prompt, a.random_output_len);
        let (sem, done, target, endpoint) = (sem.clone(), done.clone(), target.clone(), endpoint.clone());
        let (plen, max_tokens, n) = (*plen, a.random_output_len, a.num_prompts);
        let fut = timed(target, endpoint, body, max_tokens);
        handles.push(tokio::spawn(async move {
            let _permit = match &sem {
                Some(s) => Some(s.clone().acquire_owned().await.expect("semaphore never closes")),
                None => None,
            };
            let start = t_start.elapsed().as_secs_f64();
            let mut r = fut.await;
            r.start = start;
            if r.prompt_len == 0 {
                r.prompt_len = plen;
            }
            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
            if d % step == 0 || d == n {
                eprintln!("  {d}/{n} done ({:.1} s)", t_start.elapsed().as_secs_f64());
            }
            r
        }));
    }
    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        results.push(h.await.context("a request task panicked")?);
    }
    let duration = t_start.elapsed().as_secs_f64();
    report(&a, &model, &target.url(&endpoint), rate, duration, &results)
}

fn report(a: &ServeArgs, model: &str, url: &str, rate: f64, duration: f64, results: &[RequestResult]) -> Result<()> {
    let ok: Vec<&RequestResult> = results.iter().filter(|r| r.success).collect();
    let failed = results.len() - ok.len();
    let total_in: usize = ok.iter().map(|r| r.prompt_len).sum();
    let total_out: usize = ok.iter().map(|r| r.output_tokens).sum();
    let early = ok.iter().filter(|r| r.output_tokens < a.random_output_len).count();
    let ttft: Vec<f64> = ok.iter().map(|r| r.ttft).collect();
    let tpot: Vec<f64> = ok
        .iter()
        .filter(|r| r.output_tokens > 1)
        .map(|r| (r.latency - r.ttft) / (r.output_tokens - 1) as f64)
        .collect();
    let itl: Vec<f64> = ok.iter().flat_map(|r| r.itl.iter().copied()).collect();
    let e2el: Vec<f64> = ok.iter().map(|r| r.latency).collect();
    let (st_ttft, st_tpot, st_itl, st_e2el) = (stats_ms(&ttft), stats_ms(&tpot), stats_ms(&itl), stats_ms(&e2el));
    let req_tput = ok.len() as f64 / duration;
    let out_tput = total_out as f64 / duration;
    let tot_tput = (total_in + total_out) as f64 / duration;
    let chunk_total: usize = ok.iter().map(|r| r.chunks).sum();

    let line = |k: &str, v: String| println!("{k:<40}{v:>10}");
    println!("{:=^50}", " Serving Benchmark Result ");
    line("Successful requests:", ok.len().to_string());
    line("Failed requests:", failed.to_string());
    line("Maximum request concurrency:", a.max_concurrency.map_or("none".into(), |c| c.to_string()));
    line("Request rate (req/s):", if rate.is_infinite() { "inf".into() } else { format!("{rate:.2}") });
    line("Benchmark duration (s):", format!("{duration:.2}"));
    line("Total input tokens:", total_in.to_string());
    line("Total generated tokens:", total_out.to_string());
    line("Request throughput (req/s):", format!("{req_tput:.2}"));
    line("Output token throughput (tok/s):", format!("{out_tput:.2}"));
    line("Total Token throughput (tok/s):", format!("{tot_tput:.2}"));
    for (title, name, s) in [
        ("Time to First Token", "TTFT", &st_ttft),
        ("Time per Output Token (excl. 1st token)", "TPOT", &st_tpot),
        ("Inter-token Latency", "ITL", &st_itl),
        ("End-to-end Latency", "E2EL", &st_e2el),
    ] {
        println!("{:-^50}", title);
        line(&format!("Mean {name} (ms):"), format!("{:.2}", s.mean));
        line(&format!("Median {name} (ms):"), format!("{:.2}", s.median));
        line(&format!("P99 {name} (ms):"), format!("{:.2}", s.p99));
    }
    println!("{:=<50}", "");
    if early > 0 {
        println!(
            "warning: {early} requests produced fewer than {} tokens (the server ignored ignore_eos?)",
            a.random_output_len
        );
    }
    if chunk_total != total_out && !ok.is_empty() {
        println!("note: {chunk_total} text chunks for {total_out} output tokens (ITL is per chunk)");
    }
    let mut shown = Vec::new();
    for r in results.iter().filter(|r| !r.success) {
        if shown.len() < 5 && !shown.contains(&r.error) {
            shown.push(r.error.clone());
        }
    }
    for e in &shown {
        eprintln!("failed request: {e}");
    }

    if let Some(path) = &a.output_json {
        let per = |f: &dyn Fn(&RequestResult) -> Value| -> Vec<Value> { results.iter().map(f).collect() };
        let mut v = json!({
            "label": a.label,
            "base_url": url,
            "model": model,
            "num_prompts": a.num_prompts,
            "request_rate": if rate.is_infinite() { json!("inf") } else { json!(rate) },
            "max_concurrency": a.max_concurrency,
            "random_input_len": a.random_input_len,
            "random_output_len": a.random_output_len,
            "prompt_format": format!("{:?}", a.prompt_format).to_lowercase(),
            "seed": a.seed,
            "duration": duration,
            "completed": ok.len(),
            "failed": failed,
            "early_stops": early,
            "total_input_tokens": total_in,
            "total_output_tokens": total_out,
            "request_throughput": req_tput,
            "output_throughput": out_tput,
            "total_token_throughput": tot_tput,
            "errors": shown,
        });
        let obj = v.as_object_mut().unwrap();
        for (name, s) in [("ttft", &st_ttft), ("tpot", &st_tpot), ("itl", &st_itl), ("e2el", &st_e2el)] {
            obj.insert(format!("mean_{name}_ms"), json!(s.mean));
            obj.insert(format!("median_{name}_ms"), json!(s.median));
            obj.insert(format!("std_{name}_ms"), json!(s.std));
            obj.insert(format!("p99_{name}_ms"), json!(s.p99));
        }
        obj.insert("input_lens".into(), per(&|r| json!(r.prompt_len)).into());
        obj.insert("output_lens".into(), per(&|r| json!(r.output_tokens)).into());
        obj.insert("ttfts".into(), per(&|r| json!(r.ttft)).into());
        obj.insert("latencies".into(), per(&|r| json!(r.latency)).into());
        obj.insert("start_times".into(), per(&|r| json!(r.start)).into());
        obj.insert("finish_reasons".into(), per(&|r| json!(r.finish_reason)).into());
        std::fs::write(path, serde_json::to_string_pretty(&v)?).with_context(|| format!("writing {path}"))?;
    }
    if ok.is_empty() {
        bail!("all {} requests failed", results.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!((percentile(&v, 99.0) - 3.97).abs() < 1e-9);
        assert_eq!(percentile(&[5.0], 99.0), 5.0);
    }

    #[test]
    fn base_urls_parse() {
        let t = Target::parse("http://127.0.0.1:8011", None, Duration::from_secs(1)).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.prefix.as_str()), ("127.0.0.1", 8011, ""));
        let t = Target::parse("localhost:9000/api/", None, Duration::from_secs(1)).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.prefix.as_str()), ("localhost", 9000, "/api"));
        assert!(Target::parse("https://x", None, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn rates_parse() {
        assert!(parse_rate("inf").unwrap().is_infinite());
        assert_eq!(parse_rate("2.5").unwrap(), 2.5);
        assert!(parse_rate("0").is_err() && parse_rate("fast").is_err());
    }
}
