//! `ferrollm bench latency|throughput`, in the spirit of `vllm bench`.
//!
//! Prompts are random token ids, fresh for every run, so the prefix cache never flatters a
//! figure; generation ignores EOS so every request produces exactly `--output-len` tokens.

use std::time::Instant;

use anyhow::Result;
use clap::{Args, Subcommand};
use ferrollm_engine::{ChatMessage, Engine, PromptInput, SamplingParams};
use rand::{Rng, SeedableRng};

use crate::cli_args::EngineFlags;
use crate::fetch;

#[path = "bench_serve.rs"]
mod bench_serve;
#[path = "bench_structured.rs"]
mod bench_structured;

#[derive(Subcommand)]
pub enum BenchKind {
    /// Prefill and decode speed of one batch.
    Latency(LatencyArgs),
    /// Offline throughput of many requests at once.
    Throughput(ThroughputArgs),
    /// Load test of a running OpenAI-compatible server (like `vllm bench serve`).
    Serve(bench_serve::ServeArgs),
    /// Structured outputs: constrained vs free throughput, mask time, jump-forward on/off.
    Structured(bench_structured::StructuredArgs),
}

#[derive(Args)]
pub struct LatencyArgs {
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value_t = 512)]
    input_len: usize,
    #[arg(long, default_value_t = 128)]
    output_len: usize,
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    #[arg(long, default_value_t = 3)]
    num_iters: usize,
    #[arg(long, default_value_t = 1)]
    num_iters_warmup: usize,
    /// Prompts that invite copying: a random passage followed by its first part again, so the
    /// model continues by copying (what n-gram speculation is for). Fresh every run.
    #[arg(long)]
    copy_prompt: bool,
    /// Every prompt is this text file, tokenized (--input-len is then ignored). Repeated runs
    /// hit the prefix cache unless --no-enable-prefix-caching.
    #[arg(long, conflicts_with = "copy_prompt")]
    prompt_file: Option<String>,
    /// Ordinary chat prompts: short user questions from a built-in list, rendered with the
    /// model's chat template (--input-len is then ignored), for draft-model and layer-skip
    /// speculation. Questions repeat across iterations, so prefill figures see prefix-cache hits.
    #[arg(long, conflicts_with_all = ["copy_prompt", "prompt_file"])]
    chat_prompts: bool,
    /// Write results as JSON here.
    #[arg(long)]
    output_json: Option<String>,
    #[command(flatten)]
    engine: EngineFlags,
}

#[derive(Args)]
pub struct ThroughputArgs {
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value_t = 64)]
    num_prompts: usize,
    #[arg(long, default_value_t = 128)]
    input_len: usize,
    #[arg(long, default_value_t = 128)]
    output_len: usize,
    #[arg(long)]
    output_json: Option<String>,
    #[command(flatten)]
    engine: EngineFlags,
}

pub fn run(kind: BenchKind) -> Result<()> {
    match kind {
        BenchKind::Latency(a) => latency(a),
        BenchKind::Throughput(a) => throughput(a),
        BenchKind::Serve(a) => bench_serve::run(a),
        BenchKind::Structured(a) => bench_structured::bench(a),
    }
}

/// Random prompts of ordinary (non-special) tokens.
fn random_prompts(rng: &mut impl Rng, vocab: usize, n: usize, len: usize) -> Vec<Vec<u32>> {
    let hi = vocab.min(30000) as u32;
    (0..n).map(|_| (0..len).map(|_| rng.gen_range(1000.min(hi - 1)..hi)).collect()).collect()
}

/// Random passages followed by their first part again, `len` tokens in all: the passage's
/// continuation is the likeliest next text, which n-gram lookup finds in the prompt.
fn copy_prompts(rng: &mut impl Rng, vocab: usize, n: usize, len: usize) -> Vec<Vec<u32>> {
    let m = len - len / 3;
    random_prompts(rng, vocab, n, m)
        .into_iter()
        .map(|mut p| {
            p.extend_from_within(..len - m);
            p
        })
        .collect()
}

/// The speculative-decoding counters, when any draft was verified.
fn print_spec_stats(engine: &Engine) -> Option<serde_json::Value> {
    let st = engine.scheduler_stats();
    let rate = st.spec_acceptance_rate()?;
    let mean = st.spec_mean_acceptance_length()?;
    println!(
        "speculative decoding (all runs, warmup included): {} drafts, {} draft tokens, {} accepted ({:.1}% acceptance), mean acceptance length {:.2}",
        st.spec_num_drafts,
        st.spec_num_draft_tokens,
        st.spec_num_accepted_tokens,
        100.0 * rate,
        mean
    );
    Some(serde_json::json!({
        "num_drafts": st.spec_num_drafts, "num_draft_tokens": st.spec_num_draft_tokens,
        "num_accepted_tokens": st.spec_num_accepted_tokens, "acceptance_rate": rate,
        "mean_acceptance_length": mean,
    }))
}

/// Ordinary chat questions for `--chat-prompts` (nothing in them invites copying).
const CHAT_QUESTIONS: [&str; 32] = [
    "What is the capital of France?",
    "Explain photosynthesis in simple terms.",
    "Give me three tips for sleeping better.",
    "Why is the sky blue?",
    "Write a short poem about the sea.",
    "How do I make a cup of green tea?",
    "What are the benefits of regular exercise?",
    "Summarize the plot of Romeo and Juliet.",
    "What is the difference between a virus and a bacterium?",
    "How does a refrigerator keep food cold?",
    "Suggest a name for a friendly robot.",
    "What should I pack for a weekend hiking trip?",
    "Explain what a black hole is.",
    "How can I improve my handwriting?",
    "What is machine learning?",
    "Describe a typical day of a beekeeper.",
    "Why do leaves change colour in autumn?",
    "Give me a recipe for a simple tomato soup.",
    "What is the tallest mountain in the world?",
    "How do airplanes stay in the air?",
    "Write a two-sentence story about a lost key.",
    "What are good habits for learning a new language?",
    "Explain the water cycle.",
    "Why do cats purr?",
    "What is the Pythagorean theorem?",
    "How should I prepare for a job interview?",
    "What causes earthquakes?",
    "Describe the taste of a lemon to someone who never had one.",
    "What is the difference between weather and climate?",
    "How do vaccines work?",
    "Give me an idea for a birthday present for my sister.",
    "Explain how a bicycle works.",
];

fn params(max_tokens: usize) -> SamplingParams {
    SamplingParams { temperature: 0.0, ignore_eos: true, max_tokens: Some(max_tokens), ..Default::default() }
}

/// Adds one greedy request per prompt, `max_tokens` long, ids `{tag}-{i}`.
fn submit(
    engine: &Engine,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    tag: &str,
) -> Result<Vec<ferrollm_engine::RequestStream>> {
    let add = |(i, p): (usize, &Vec<u32>)| {
        engine.add_request(format!("{tag}-{i}"), PromptInput::Tokens(p.clone()), params(max_tokens))
    };
    Ok(prompts.iter().enumerate().map(add).collect::<Result<Vec<_>, _>>()?)
}

/// Runs the prompts as one batch; returns wall seconds and generated tokens.
fn run_batch(engine: &Engine, prompts: &[Vec<u32>], max_tokens: usize, tag: &str) -> Result<(f64, usize)> {
    let t0 = Instant::now();
    let streams = submit(engine, prompts, max_tokens, tag)?;
    let mut generated = 0;
    for s in streams {
        let out = s.blocking_collect();
        generated += out.outputs.iter().map(|c| c.token_ids.len()).sum::<usize>();
    }
    Ok((t0.elapsed().as_secs_f64(), generated))
}

/// Seconds until every request of a batch had its first token, then the decode that followed:
/// its seconds and the tokens generated in it.
struct BatchTimes {
    first_tokens: f64,
    decode_secs: f64,
    decode_tokens: usize,
    total: f64,
}

/// Runs the prompts as one batch, streaming, to time prefill and decode within one run. Each
/// stream is drained on its own thread, which stamps every delta as it arrives: with chunked
/// prefill the first requests decode while later ones still prefill, and only the tokens after
/// the last first token count as decode (as in `llama-batched-bench`).
fn timed_batch(engine: &Engine, prompts: &[Vec<u32>], max_tokens: usize, tag: &str) -> Result<BatchTimes> {
    let t0 = Instant::now();
    let streams = submit(engine, prompts, max_tokens, tag)?;
    let stamps: Vec<Vec<(f64, usize)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                scope.spawn(move || {
                    let mut v = Vec::new();
                    while let Some(d) = s.blocking_next() {
                        let n: usize = d.outputs.iter().map(|c| c.token_ids.len()).sum();
                        v.push((t0.elapsed().as_secs_f64(), n));
                    }
                    v
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("stream reader")).collect()
    });
    Ok(batch_times(&stamps))
}

/// [`BatchTimes`] from each stream's deltas as (seconds since the batch started, tokens).
fn batch_times(stamps: &[Vec<(f64, usize)>]) -> BatchTimes {
    let first = |v: &[(f64, usize)]| v.iter().find(|d| d.1 > 0).map_or(0.0, |d| d.0);
    let first_tokens = stamps.iter().map(|v| first(v)).fold(0.0, f64::max);
    let total = stamps.iter().flatten().map(|d| d.0).fold(first_tokens, f64::max);
    let decode_tokens = stamps.iter().flatten().filter(|d| d.0 > first_tokens).map(|d| d.1).sum();
    BatchTimes { first_tokens, decode_secs: total - first_tokens, decode_tokens, total }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn write_json(path: &Option<String>, value: serde_json::Value) -> Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_string_pretty(&value)?)?;
    }
    Ok(())
}

fn latency(a: LatencyArgs) -> Result<()> {
    let path = fetch::resolve_model(a.model.as_deref())?;
    let engine = Engine::new(a.engine.to_engine_args(path)?)?;
    let info = engine.info().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let file_prompt = match &a.prompt_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?;
            Some(engine.tokenize(&text, true)?)
        }
        None => None,
    };
    let chat = if a.chat_prompts {
        CHAT_QUESTIONS
            .iter()
            .map(|q| {
                let text = engine.apply_chat_template(&[ChatMessage::new("user", *q)], true)?;
                Ok(engine.tokenize(&text, false)?)
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let input_len = match &file_prompt {
        Some(p) => p.len(),
        None if a.chat_prompts => chat.iter().map(Vec::len).sum::<usize>() / chat.len(),
        None => a.input_len,
    };
    let mut next_chat = 0;
    let mut make = |rng: &mut rand::rngs::StdRng| match &file_prompt {
        Some(p) => vec![p.clone(); a.batch_size],
        None if a.chat_prompts => (0..a.batch_size)
            .map(|_| {
                next_chat += 1;
                chat[(next_chat - 1) % chat.len()].clone()
            })
            .collect(),
        None if a.copy_prompt => copy_prompts(rng, info.vocab_size, a.batch_size, a.input_len),
        None => random_prompts(rng, info.vocab_size, a.batch_size, a.input_len),
    };
    let (mut prefill, mut decode, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for it in 0..a.num_iters_warmup + a.num_iters {
        // Fresh prompts each time; prefill ends when every request has its first token, and
        // decode is the rest of the same run.
        let prompts = make(&mut rng);
        let t = timed_batch(&engine, &prompts, a.output_len, &format!("lat-{it}"))?;
        if it < a.num_iters_warmup {
            continue;
        }
        prefill.push((a.batch_size * input_len) as f64 / t.first_tokens);
        decode.push(t.decode_tokens as f64 / t.decode_secs.max(1e-9));
        total.push(t.total);
    }
    let (p, d, t) = (median(&mut prefill), median(&mut decode), median(&mut total));
    println!("model: {} ({} threads)", info.model_description, ferrollm_kernels_threads());
    println!(
        "batch {} · input {}{} · output {} · {} iterations (medians)",
        a.batch_size,
        input_len,
        if a.chat_prompts { " (mean, chat prompts)" } else { "" },
        a.output_len,
        a.num_iters
    );
    println!("prefill throughput: {p:.1} tok/s");
    println!("decode throughput:  {d:.1} tok/s ({:.2} ms/step)", 1000.0 * a.batch_size as f64 / d);
    println!("request latency:    {t:.3} s");
    println!(
        "weights streamed per decode step: {:.1} MB -> {:.2} GB/s effective at batch {}",
        info.weight_bytes as f64 / 1e6,
        info.weight_bytes as f64 * d / a.batch_size as f64 / 1e9,
        a.batch_size
    );
    let spec = print_spec_stats(&engine);
    write_json(
        &a.output_json,
        serde_json::json!({
            "prefill_tok_s": p, "decode_tok_s": d, "latency_s": t,
            "batch_size": a.batch_size, "input_len": input_len, "output_len": a.output_len,
            "spec_decode": spec,
        }),
    )
}

fn ferrollm_kernels_threads() -> String {
    std::env::var("FERROLLM_NUM_THREADS").unwrap_or_else(|_| {
        std::thread::available_parallelism().map(|n| n.get().to_string()).unwrap_or_else(|_| "1".into())
    })
}

fn throughput(a: ThroughputArgs) -> Result<()> {
    let path = fetch::resolve_model(a.model.as_deref())?;
    let engine = Engine::new(a.engine.to_engine_args(path)?)?;
    let info = engine.info().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let prompts = random_prompts(&mut rng, info.vocab_size, a.num_prompts, a.input_len);
    let (secs, generated) = run_batch(&engine, &prompts, a.output_len, "tput")?;
    let total_tokens = a.num_prompts * a.input_len + generated;
    println!("model: {} ({} threads)", info.model_description, ferrollm_kernels_threads());
    println!("{} requests · input {} · output {}", a.num_prompts, a.input_len, a.output_len);
    println!(
        "Throughput: {:.2} requests/s, {:.1} total tokens/s, {:.1} output tokens/s ({secs:.1} s)",
        a.num_prompts as f64 / secs,
        total_tokens as f64 / secs,
        generated as f64 / secs
    );
    let st = engine.scheduler_stats();
    println!("preemptions: {}", st.num_preemptions);
    let spec = print_spec_stats(&engine);
    write_json(
        &a.output_json,
        serde_json::json!({
            "spec_decode": spec,
            "requests_per_s": a.num_prompts as f64 / secs,
            "total_tok_s": total_tokens as f64 / secs,
            "output_tok_s": generated as f64 / secs,
            "elapsed_s": secs,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens an early request decodes while a later one still prefills are not decode time;
    /// empty deltas (a stream's opening) do not make a first token.
    #[test]
    fn decode_counts_only_tokens_after_the_last_first_token() {
        let stamps =
            vec![vec![(0.0, 0), (1.0, 1), (1.5, 1), (2.0, 1), (3.0, 1)], vec![(0.0, 0), (2.0, 1), (3.0, 2), (4.0, 1)]];
        let t = batch_times(&stamps);
        assert_eq!((t.first_tokens, t.total, t.decode_secs), (2.0, 4.0, 2.0));
        assert_eq!(t.decode_tokens, 4, "3.0: 1 + 2, 4.0: 1");
        // One request: everything after its first token.
        let t = batch_times(&[vec![(0.5, 1), (0.6, 1), (0.7, 1)]]);
        assert_eq!((t.first_tokens, t.decode_tokens), (0.5, 2));
        assert!((t.decode_secs - 0.2).abs() < 1e-12);
    }
}
