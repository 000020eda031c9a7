//! End-to-end behaviour of the engine on the real SmolLM2 model: batching, chunking,
//! preemption and prefix caching must never change what a request generates.

mod common;

use ferrollm_engine::{EngineArgs, EngineError, PromptInput, SamplingParams, LLM};

fn args() -> EngineArgs {
    EngineArgs::new(common::smollm2())
}

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "1, 2, 3, 4, 5,",
    "Water boils at a temperature of",
    "In computer science, a linked list is",
    "The quick brown fox",
];

fn texts(llm: &LLM, prompts: &[&str], params: &SamplingParams) -> Vec<String> {
    llm.generate(prompts, params).unwrap().into_iter().map(|o| o.outputs[0].text.clone()).collect()
}

#[test]
fn greedy_capital_of_france_is_paris() {
    let llm = LLM::new(args()).unwrap();
    let out = llm.generate(&["The capital of France is"], &SamplingParams::greedy(8)).unwrap();
    let text = &out[0].outputs[0].text;
    assert!(text.starts_with(" Paris"), "got {text:?}");
    assert_eq!(out[0].outputs[0].token_ids.len(), out[0].outputs[0].token_ids.len().min(8));
}

#[test]
fn batching_chunking_and_preemption_do_not_change_greedy_outputs() {
    let params = SamplingParams { logprobs: Some(1), ..SamplingParams::greedy(24) };
    check_outputs_survive_batching_chunking_and_preemption(common::smollm2(), PROMPTS, params);
}

/// The same for float weights (the tiny f16 fixture), log-probabilities to the bit. On a CPU
/// with AMX its prompt tokens take the tile kernels and generated ones the vector kernels,
/// which round differently: a token's kind, not its chunk or batch, must pick them,
/// recomputation after preemption included. The prompts are long enough (40-odd tokens) to be
/// more than one tile of tokens.
#[test]
fn float_weights_keep_outputs_under_batching_chunking_and_preemption() {
    let model = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf/tiny-llama-f16");
    let prompts: Vec<String> =
        (0..8).map(|i| format!("Item {i}: the quick brown fox jumps over the lazy dog, then item {i} again")).collect();
    let prompts: Vec<&str> = prompts.iter().map(|s| s.as_str()).collect();
    let params = SamplingParams { ignore_eos: true, logprobs: Some(1), ..SamplingParams::greedy(24) };
    check_outputs_survive_batching_chunking_and_preemption(model, &prompts, params);
}

fn check_outputs_survive_batching_chunking_and_preemption(
    model: std::path::PathBuf,
    prompts: &[&str],
    params: SamplingParams,
) {
    let args = || EngineArgs::new(model.clone());
    // Tokens and their log-probabilities, which show a difference in rounding long before it
    // changes a greedy token.
    let ids = |llm: &LLM, prompts: &[&str]| {
        let outs = llm.generate(prompts, &params).unwrap();
        outs.into_iter().map(|o| (o.outputs[0].token_ids.clone(), o.outputs[0].logprobs.clone())).collect::<Vec<_>>()
    };
    // Reference: one request at a time, whole prompts, a roomy cache.
    let alone = {
        let llm = LLM::new(args()).unwrap();
        prompts.iter().map(|p| ids(&llm, &[p]).remove(0)).collect::<Vec<_>>()
    };
    // All at once, prompts chunked 5 tokens at a time.
    let mut a = args();
    a.max_num_batched_tokens = 5;
    a.enable_prefix_caching = false;
    let chunked = ids(&LLM::new(a).unwrap(), prompts);
    assert_eq!(chunked, alone, "chunked prefill + batching changed outputs");
    // A pool of 6 blocks of 16 tokens: far too small for 8 requests of ~40-60 tokens at once.
    let mut a = args();
    a.kv_cache_memory = 6 * ferrollm_models::KvCache::bytes_per_block(
        &ferrollm_models::load_model(&model, std::sync::Arc::new(ferrollm_kernels::CpuBackend::new()))
            .unwrap()
            .model
            .config,
        16,
    );
    let llm = LLM::new(a).unwrap();
    let tight = ids(&llm, prompts);
    assert_eq!(tight, alone, "preemption changed outputs");
    assert!(llm.engine().scheduler_stats().num_preemptions > 0, "the pool was meant to force preemption");
    assert_eq!(llm.engine().scheduler_stats().num_free_blocks, 6, "blocks leaked");
}

#[test]
fn shared_prefix_is_computed_once() {
    let llm = LLM::new(args()).unwrap();
    let prefix: Vec<u32> = (0..1000).map(|i| 1000 + (i * 7919 % 20000) as u32).collect();
    let mut a = prefix.clone();
    a.extend([5000, 5001, 5002]);
    let mut b = prefix;
    b.extend([6000, 6001]);
    let p = SamplingParams::greedy(2);
    let first = llm.generate(&[PromptInput::Tokens(a)], &p).unwrap();
    assert_eq!(first[0].num_cached_tokens, 0);
    let second = llm.generate(&[PromptInput::Tokens(b)], &p).unwrap();
    assert_eq!(second[0].num_cached_tokens, 992, "1000 shared tokens = 62 full blocks of 16");
    let st = llm.engine().scheduler_stats();
    assert!(st.prefix_cache_hits >= 992);
}

#[test]
fn seeded_sampling_is_reproducible_whatever_the_batch() {
    let llm = LLM::new(args()).unwrap();
    let p = SamplingParams { temperature: 1.0, seed: Some(1234), max_tokens: Some(16), ..Default::default() };
    let alone = texts(&llm, &["Tell me a story about"], &p);
    let free = SamplingParams { temperature: 1.0, max_tokens: Some(16), ..Default::default() };
    // The same seeded request beside unseeded ones.
    let streams: Vec<_> = (0..3)
        .map(|i| {
            let params = if i == 1 { p.clone() } else { free.clone() };
            llm.engine().add_request(format!("mix-{i}"), "Tell me a story about".into(), params).unwrap()
        })
        .collect();
    let outs: Vec<_> = streams.into_iter().map(|s| s.blocking_collect()).collect();
    assert_eq!(outs[1].outputs[0].text, alone[0]);
}

#[test]
fn n_stop_strings_and_logprobs() {
    let llm = LLM::new(args()).unwrap();
    let p = SamplingParams {
        n: 2,
        temperature: 1.0,
        seed: Some(3),
        max_tokens: Some(8),
        logprobs: Some(3),
        ..Default::default()
    };
    let out = llm.generate(&["Hello, my name is"], &p).unwrap();
    assert_eq!(out[0].outputs.len(), 2);
    for c in &out[0].outputs {
        let lps = c.logprobs.as_ref().expect("logprobs asked for");
        assert_eq!(lps.len(), c.token_ids.len());
        for (lp, &t) in lps.iter().zip(&c.token_ids) {
            assert_eq!(lp.chosen.token_id, t);
            assert_eq!(lp.top.len(), 3);
            assert!(lp.chosen.logprob <= 0.0);
        }
        assert!(c.cumulative_logprob.unwrap() < 0.0);
    }
    // Greedy continuation is " Paris..."; stopping at "is" must cut before it.
    let g = llm.generate(&["The capital of France is"], &SamplingParams::greedy(16)).unwrap();
    let full = g[0].outputs[0].text.clone();
    let stop_at = full.find("Paris").expect("Paris in the greedy output");
    let p = SamplingParams { stop: vec!["Paris".into()], ..SamplingParams::greedy(16) };
    let s = llm.generate(&["The capital of France is"], &p).unwrap();
    assert_eq!(s[0].outputs[0].text, full[..stop_at]);
    assert_eq!(s[0].outputs[0].finish_reason.as_deref(), Some("stop"));
    assert_eq!(s[0].outputs[0].stop_reason.as_deref(), Some("Paris"));
    let p =
        SamplingParams { stop: vec!["Paris".into()], include_stop_str_in_output: true, ..SamplingParams::greedy(16) };
    let s = llm.generate(&["The capital of France is"], &p).unwrap();
    assert_eq!(s[0].outputs[0].text, full[..stop_at + 5]);
}

#[test]
fn prompt_logprobs_cover_every_prompt_token_after_the_first() {
    let llm = LLM::new(args()).unwrap();
    let p = SamplingParams { prompt_logprobs: Some(2), ..SamplingParams::greedy(1) };
    let out = llm.generate(&["The capital of France is"], &p).unwrap();
    let pl = out[0].prompt_logprobs.as_ref().unwrap();
    assert_eq!(pl.len(), out[0].prompt_token_ids.len());
    assert!(pl[0].is_none());
    for (lp, &t) in pl[1..].iter().zip(&out[0].prompt_token_ids[1..]) {
        assert_eq!(lp.as_ref().unwrap().chosen.token_id, t);
    }
}

#[test]
fn bad_requests_get_named_errors() {
    let mut a = args();
    a.max_model_len = Some(64);
    let llm = LLM::new(a).unwrap();
    let long = "word ".repeat(100);
    match llm.generate(&[long.as_str()], &SamplingParams::greedy(4)) {
        Err(e @ EngineError::PromptTooLong { .. }) => {
            let m = e.to_string();
            assert!(m.contains("64"), "{m}");
        }
        other => panic!("expected PromptTooLong, got {:?}", other.map(|_| ())),
    }
    let bad = SamplingParams { top_p: 2.0, ..Default::default() };
    match llm.generate(&["hi"], &bad) {
        Err(e) => assert_eq!(e.param(), Some("top_p")),
        Ok(_) => panic!("top_p=2 accepted"),
    }
    match llm.generate(&[PromptInput::Tokens(vec![10_000_000])], &SamplingParams::greedy(1)) {
        Err(e) => assert!(e.to_string().contains("out of vocabulary")),
        Ok(_) => panic!("bad token id accepted"),
    }
    assert!(matches!(LLM::new("/nonexistent/model.gguf"), Err(EngineError::Model(_))));
}
