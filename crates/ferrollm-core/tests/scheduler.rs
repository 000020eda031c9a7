//! The scheduler's behaviour, one story per test.

mod common;

use std::sync::Arc;

use common::*;
use ferrollm_core::scheduler::SchedulerError;
use ferrollm_core::{
    FinishReason, ModelRunnerOutput, Request, RequestStatus, SamplingParams, Scheduler, SchedulerOutput, TokenLogprob,
    TokenLogprobs,
};

fn ids(out: &SchedulerOutput) -> Vec<&str> {
    out.scheduled.iter().map(|s| s.req_id.as_str()).collect()
}

fn lens(out: &SchedulerOutput) -> Vec<usize> {
    out.scheduled.iter().map(|s| s.num_tokens()).collect()
}

/// One step with the fake model.
fn step(sched: &mut Scheduler, model: &mut FakeModel) -> (SchedulerOutput, Vec<ferrollm_core::EngineCoreOutput>) {
    let out = sched.schedule();
    check_step(sched, &out);
    let res = model.execute(&out);
    let outs = sched.update_from_output(&out, &res);
    sched.check_invariants();
    (out, outs)
}

#[test]
fn a_request_reads_its_prompt_then_decodes_one_token_per_step() {
    let cfg = config(64, 4, 64, 8);
    let mut sched = Scheduler::new(cfg.clone());
    let mut model = FakeModel::new(&cfg);
    let req = request("a", prompt(1, 10), 3);
    let (want, _) = generate_alone(&req, cfg.max_model_len);
    sched.add_request(req).unwrap();

    let (out, outs) = step(&mut sched, &mut model);
    let s = &out.scheduled[0];
    assert!(s.new.is_some());
    assert_eq!((s.start_pos, s.num_tokens(), s.block_table.len(), s.sample), (0, 10, 3, true));
    assert_eq!(outs[0].new_token_ids, [want[0]]);

    let (out, _) = step(&mut sched, &mut model);
    let s = &out.scheduled[0];
    assert!(s.new.is_none());
    assert_eq!((s.start_pos, s.token_ids.clone()), (10, vec![want[0]]));

    let (_, outs) = step(&mut sched, &mut model);
    assert_eq!(outs[0].new_token_ids, [want[2]]);
    assert_eq!(outs[0].finish_reason, Some(FinishReason::Length));
    assert!(!sched.has_unfinished_requests());
    assert_eq!(sched.kv_cache().num_free_blocks(), 64);

    // The runner hears about it in the next step, once.
    assert_eq!(sched.schedule().finished_req_ids, ["a"]);
    assert!(sched.schedule().finished_req_ids.is_empty());
}

#[test]
fn a_second_request_sharing_a_1000_token_prefix_computes_only_the_rest() {
    let cfg = config(200, 16, 2048, 8);
    let mut sched = Scheduler::new(cfg.clone());
    let mut model = FakeModel::new(&cfg);
    let shared = prompt(7, 1000);
    let a = request("a", [shared.clone(), vec![3; 20]].concat(), 4);
    let b = request("b", [shared, vec![5; 30]].concat(), 4);
    let want_b = generate_alone(&b, cfg.max_model_len).0;
    sched.add_request(a).unwrap();
    run_to_completion(&mut sched, &mut model, 100);

    sched.add_request(b).unwrap();
    let (out, _) = step(&mut sched, &mut model);
    let s = &out.scheduled[0];
    assert_eq!((s.start_pos, s.num_tokens()), (992, 1030 - 992));
    let run = run_to_completion(&mut sched, &mut model, 100);
    assert_eq!(run.cached["b"], 992);
    let stats = sched.stats();
    assert_eq!((stats.prefix_cache_queries, stats.prefix_cache_hits), (1020 + 1030, 992));
    assert_eq!(run.tokens["b"], want_b[1..]);
}

#[test]
fn a_fully_cached_prompt_still_computes_its_last_token() {
    let cfg = config(64, 16, 2048, 8);
    let mut sched = Scheduler::new(cfg.clone());
    let mut model = FakeModel::new(&cfg);
    sched.add_request(request("a", prompt(3, 32), 2)).unwrap();
    run_to_completion(&mut sched, &mut model, 10);

    let b = request("b", prompt(3, 32), 2);
    let want = generate_alone(&b, cfg.max_model_len).0;
    sched.add_request(b).unwrap();
    let (out, _) = step(&mut sched, &mut model);
    // Two full blocks are cached, but only the first is used: the second holds the last token.
    assert_eq!((out.scheduled[0].start_pos, out.scheduled[0].num_tokens()), (16, 16));
    let run = run_to_completion(&mut sched, &mut model, 10);
    assert_eq!(run.cached["b"], 16);
    assert_eq!(run.tokens["b"], want[1..]);
}

#[test]
fn requests_with_another_cache_salt_do_not_share_blocks() {
    let cfg = config(64, 16, 2048, 8);
    let mut sched = Scheduler::new(cfg.clone());
    let mut model = FakeModel::new(&cfg);
    sched.add_request(request("a", prompt(3, 40), 2)).unwrap();
    run_to_completion(&mut sched, &mut model, 10);
    let mut b = request("b", prompt(3, 40), 2);
    b.cache_salt = Some("tenant-b".into());
    sched.add_request(b).unwrap();
    let mut c = request("c", prompt(3, 40), 2);
    c.cache_salt = Some("tenant-b".into());
    let run = run_to_completion(&mut sched, &mut model, 10);
    assert_eq!(run.cached["b"], 0);
    sched.add_request(c).unwrap();
    let run = run_to_completion(&mut sched, &mut model, 10);
    assert_eq!(run.cached["c"], 32);
}

#[test]
fn with_prefix_caching_off_nothing_is_reused() {
    let mut cfg = config(64, 16, 2048, 8);
    cfg.enable_prefix_caching = false;
    let mut sched = Scheduler::new(cfg.clone());
    let mut model = FakeModel::new(&cfg);
    sched.add_request(request("a", prompt(3, 40), 2)).unwrap();
    run_to_completion(&mut sched, &mut model, 10);
    sched.add_request(request("b", prompt(3, 40), 2)).unwrap();
    let run = run_to_completion(&mut sched, &mut model, 10);
    assert_eq!(run.cached["b"], 0);
    assert_eq!(sched.stats().prefix_cache_hits, 0);
}

#[test]
fn chunked_prefill_splits_a_long_prompt_while_decodes_keep_flowing() {
    let cfg = config(200, 4, 32, 8);
    let mut sched = Scheduler::new(cfg.clone());
    let mut model = FakeModel::new(&cfg);
    let d = request("d", prompt(1, 5), 50);
    let long = request("long", prompt(2, 100), 3);
    let want_d = generate_alone(&d, cfg.max_model_len).0;
    let want_long = generate_alone(&long, cfg.max_model_len).0;
    sched.add_request(d).unwrap();
    step(&mut sched, &mut model);
    sched.add_request(long).unwrap();

    let mut chunks = Vec::new();
    let mut run = Run::default();
    for _ in 0..4 {
        let (out, outs) = step(&mut sched, &mut model);
        assert_eq!(ids(&out), ["d", "long"]);
        assert_eq!(out.scheduled[0].num_tokens(), 1, "the decode goes first, every step");
        let s = &out.scheduled[1];
        chunks.push((s.start_pos, s.num_tokens(), s.sample));
        record(&mut run, &outs);
    }
    assert_eq!(chunks, [(0, 31, false), (31, 31, false), (62, 31, false), (93, 7, true)]);
    assert_eq!(run.tokens["long"], want_long[..1]);
    let rest = run_to_completion(&mut sched, &mut model, 100);
    assert_eq!([&run.tokens["long"][..], &rest.tokens["long"]].concat(), want_long);
    assert_eq!(rest.tokens["d"], want_d[5..]);
}

#[test]
fn without_chunked_prefill_a_prompt_waits_for_a_step_with_room() {
    let mut cfg = config(200, 4, 32, 8);
    cfg.enable_chunked_prefill = false;
    let mut sched = Scheduler::new(cfg.clone());
    let mut model = FakeModel::new(&cfg);
    sched.add_request(request("d", prompt(1, 5), 3)).unwrap();
    step(&mut sched, &mut model);
    sched.add_request(request("p", prompt(2, 32), 2)).unwrap();
    // d's decode leaves 31 tokens of budget: p (32) waits until d is done.
    let (out, _) = step(&mut sched, &mut model);
    assert_eq!(ids(&out), ["d"]);
    let (out, _) = step(&mut sched, &mut model);
    assert_eq!(ids(&out), ["d"]);
    let (out, _) = step(&mut sched, &mut model);
    assert_eq!((ids(&out), lens(&out)), (vec!["p"], vec![32]));

    // A prompt larger than the whole budget could never fit: it is chunked regardless.
    sched.add_request(request("q", prompt(3, 40), 1)).unwrap();
    let run = run_to_completion(&mut sched, &mut model, 10);
    let q: Vec<_> = run.scheduled.iter().flat_map(|o| o.scheduled.iter()).filter(|s| s.req_id == "q").collect();
    assert_eq!(q.iter().map(|s| s.num_tokens()).collect::<Vec<_>>(), [31, 9]);
}

#[test]
fn max_num_seqs_and_the_token_budget_cap_every_step() {
    let cfg = config(200, 4, 10, 2);
    let mut sched = Scheduler::new(cfg.clone());
    let mut model = FakeModel::new(&cfg);
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        sched.add_request(request(id, prompt(i as u32, 6), 3)).unwrap();
    }
    let (out, _) = step(&mut sched, &mut model);
    assert_eq!((ids(&out), lens(&out)), (vec!["a", "b"], vec![6, 4]));
    let (out, _) = step(&mut sched, &mut model);
    // c waits: two sequences already run.
    assert_eq!((ids(&out), lens(&out)), (vec!["a", "b"], vec![1, 2]));
    assert_eq!(sched.num_waiting(), 1);
    run_to_completion(&mut sched, &mut model, 20);
}

#[test]
fn out_of_blocks_the_newest_request_is_preempted_and_later_resumes_with_the_same_output() {
    // 6 blocks of 4: each request alone needs 5 (8 prompt + 12 generated - 1), together 10.
    let cfg = config(6, 4, 64, 8);
    let mut sched = Scheduler::new(cfg.clone());
    let mut model = FakeModel::new(&cfg);
    let a = request("a", prompt(1, 8), 12);
    let b = request("b", prompt(2, 8), 12);
    let want_a = generate_alone(&a, cfg.max_model_len).0;
    let want_b = generate_alone(&b, cfg.max_model_len).0;
    sched.add_request(a).unwrap();
    sched.add_request(b).unwrap();

    let mut run = Run::default();
    let preempted_at = loop {
        let (out, outs) = step(&mut sched, &mut model);
        record(&mut run, &outs);
        if !out.preempted_req_ids.is_empty() {
            assert_eq!(out.preempted_req_ids, ["b"]);
            assert_eq!(ids(&out), ["a"]);
            break out.scheduled[0].start_pos;
        }
    };
    // a needed its 4th block to compute position 12; b had 3 full blocks and gave them back.
    assert_eq!(preempted_at, 12);
    let b = sched.get_request("b").unwrap();
    assert_eq!((b.status, b.num_computed_tokens, b.num_preemptions), (RequestStatus::Preempted, 0, 1));
    assert_eq!(sched.num_waiting(), 1);

    let rest = run_to_completion(&mut sched, &mut model, 100);
    let resumed = rest.scheduled.iter().flat_map(|o| &o.scheduled).find(|s| s.req_id == "b").unwrap();
    assert!(resumed.new.is_none(), "the runner kept b's state");
    // a took two of b's blocks (tail first); b's first block was still cached.
    assert_eq!(resumed.start_pos, 4);
    record(&mut run, &rest.outputs.concat());
    assert_eq!(run.tokens["a"], want_a);
    assert_eq!(run.tokens["b"], want_b);
    assert_eq!(sched.stats().num_preemptions, 1);
    assert_eq!(sched.kv_cache().num_free_blocks(), 6);
}

#[test]
fn a_request_that_is_itself_the_newest_preempts_itself_and_ends_the_step() {
    // a (prompt 8) needs a block at position 8, b (prompt 6) at position 8 two steps later.
    let cfg = config(5, 4, 64, 8);
    let mut sched = Scheduler::new(cfg.clone());
    let mut model = FakeModel::new(&cfg);
    let a = request("a", prompt(1, 8), 8);
    let b = request("b", prompt(2, 6), 8);
    let want = [generate_alone(&a, cfg.max_model_len).0, generate_alone(&b, cfg.max_model_len).0];
    sched.add_request(a).unwrap();
    sched.add_request(b).unwrap();
    let mut run = Run::default();
    for _ in 0..3 {
        let (out, outs) = step(&mut sched, &mut model);
        assert!(out.preempted_req_ids.is_empty());
        record(&mut run, &outs);
    }
    let (out, outs) = step(&mut sched, &mut model);
    record(&mut run, &outs);
    assert_eq!((ids(&out), out.preempted_req_ids.clone()), (vec!["a"], vec!["b".to_string()]));
    let rest = run_to_completion(&mut sched, &mut model, 100);
    record(&mut run, &rest.outputs.concat());
    assert_eq!([run.tokens["a"].clone(), run.tokens["b"].clone()], want);
}

#[test]
fn aborting_frees_blocks_and_tells_the_runner() {
    let cfg = config(32, 4, 64, 1);
    let mut sched = Scheduler::new(cfg.clone());
    let mut model = FakeModel::new(&cfg);
    sched.add_request(request("run", prompt(1, 9), 10)).unwrap();
    sched.add_request(request("wait", prompt(2, 9), 10)).unwrap();
    step(&mut sched, &mut model);
    assert_eq!((sched.num_running(), sched.num_waiting()), (1, 1));
    assert_eq!(sched.kv_cache().num_free_blocks(), 29);

    sched.finish_requests(&["run".into(), "wait".into(), "unknown".into()], FinishReason::Abort);
    assert!(!sched.has_unfinished_requests());
    assert_eq!(sched.kv_cache().num_free_blocks(), 32);
    sched.check_invariants();
    let out = sched.schedule();
    assert!(out.is_empty());
    assert_eq!(out.finished_req_ids, ["run", "wait"]);
}

#[test]
fn a_request_aborted_between_schedule_and_update_is_ignored() {
    let cfg = config(32, 4, 64, 8);
    let mut sched = Scheduler::new(cfg.clone());
    let mut model = FakeModel::new(&cfg);
    sched.add_request(request("a", prompt(1, 5), 10)).unwrap();
    let out = sched.schedule();
    let res = model.execute(&out);
    sched.finish_requests(&["a".into()], FinishReason::Abort);
    assert!(sched.update_from_output(&out, &res).is_empty());
    sched.check_invariants();
    assert_eq!(sched.kv_cache().num_free_blocks(), 32);
}

// --- Stop conditions, with a scripted runner -----------------------------------------------

/// Feeds `tokens` to the only request, one step each, and returns what came out.
fn script(req: Request, tokens: &[&[u32]]) -> (Vec<u32>, Option<FinishReason>) {
    let mut sched = Scheduler::new(config(64, 4, 64, 8));
    sched.add_request(req).unwrap();
    let (mut got, mut finish) = (Vec::new(), None);
    for &t in tokens {
        let out = sched.schedule();
        let res = ModelRunnerOutput {
            req_ids: vec![out.scheduled[0].req_id.clone()],
            sampled_token_ids: vec![t.to_vec()],
            logprobs: vec![None],
            prompt_logprobs: vec![None],
            ..Default::default()
        };
        for o in sched.update_from_output(&out, &res) {
            got.extend(o.new_token_ids);
            finish = o.finish_reason;
        }
        sched.check_invariants();
        if finish.is_some() {
            assert!(!sched.has_unfinished_requests());
            assert_eq!(sched.kv_cache().num_free_blocks(), 64);
            break;
        }
    }
    (got, finish)
}

fn with(params: SamplingParams, eos: &[u32]) -> Request {
    let mut r = Request::new("r", vec![10, 11, 12], Arc::new(params));
    r.eos_token_ids = eos.to_vec();
    r
}

#[test]
fn eos_stops_unless_ignored() {
    let p = SamplingParams { max_tokens: Some(5), ..Default::default() };
    assert_eq!(script(with(p.clone(), &[2]), &[&[5], &[2], &[7]]), (vec![5, 2], Some(FinishReason::Stop)));
    let ignore = SamplingParams { ignore_eos: true, ..p };
    let got = script(with(ignore, &[2]), &[&[5], &[2], &[7], &[2], &[2]]);
    assert_eq!(got, (vec![5, 2, 7, 2, 2], Some(FinishReason::Length)));
}

#[test]
fn stop_token_ids_stop_even_with_ignore_eos() {
    let p = SamplingParams { max_tokens: Some(5), stop_token_ids: vec![9], ignore_eos: true, ..Default::default() };
    assert_eq!(script(with(p, &[2]), &[&[5], &[9]]), (vec![5, 9], Some(FinishReason::Stop)));
}

#[test]
fn no_stop_before_min_tokens() {
    let p = SamplingParams { max_tokens: Some(5), min_tokens: 3, stop_token_ids: vec![9], ..Default::default() };
    let got = script(with(p, &[2]), &[&[2], &[9], &[2]]);
    assert_eq!(got, (vec![2, 9, 2], Some(FinishReason::Stop)));
}

#[test]
fn max_tokens_and_the_context_length_end_with_length() {
    let p = SamplingParams { max_tokens: Some(2), ..Default::default() };
    assert_eq!(script(with(p, &[]), &[&[5], &[6]]), (vec![5, 6], Some(FinishReason::Length)));
    let unbounded = SamplingParams { max_tokens: None, ..Default::default() };
    let mut r = with(unbounded, &[]);
    r.max_model_len = 6;
    assert_eq!(script(r, &[&[5], &[6], &[7], &[8]]), (vec![5, 6, 7], Some(FinishReason::Length)));
}

#[test]
fn a_stop_token_on_the_last_allowed_position_reports_stop() {
    let p = SamplingParams { max_tokens: Some(2), ..Default::default() };
    assert_eq!(script(with(p, &[2]), &[&[5], &[2]]), (vec![5, 2], Some(FinishReason::Stop)));
}

#[test]
fn several_tokens_in_one_step_are_cut_at_a_stop() {
    // The shape speculative decoding will produce: accepted drafts plus one.
    let p = SamplingParams { max_tokens: Some(10), ..Default::default() };
    assert_eq!(script(with(p.clone(), &[2]), &[&[4, 2, 6]]), (vec![4, 2], Some(FinishReason::Stop)));
    let short = SamplingParams { max_tokens: Some(2), ..p };
    assert_eq!(script(with(short, &[2]), &[&[4, 5, 6]]), (vec![4, 5], Some(FinishReason::Length)));
}

#[test]
fn tokens_beyond_the_scheduled_ones_are_computed_next_step() {
    let mut sched = Scheduler::new(config(64, 4, 64, 8));
    sched.add_request(with(SamplingParams { max_tokens: Some(10), ..Default::default() }, &[])).unwrap();
    let out = sched.schedule();
    let res = ModelRunnerOutput {
        req_ids: vec!["r".into()],
        sampled_token_ids: vec![vec![4, 5]],
        logprobs: vec![None],
        prompt_logprobs: vec![None],
        ..Default::default()
    };
    sched.update_from_output(&out, &res);
    // 4's KV was never computed: both new tokens go in next.
    let out = sched.schedule();
    assert_eq!((out.scheduled[0].start_pos, out.scheduled[0].token_ids.clone()), (3, vec![4, 5]));
    sched.check_invariants();
}

#[test]
fn logprobs_and_prompt_logprobs_are_passed_through() {
    let mut sched = Scheduler::new(config(64, 4, 4, 8));
    sched.add_request(with(SamplingParams { max_tokens: Some(3), ..Default::default() }, &[])).unwrap();
    sched.add_request(Request::new("long", prompt(1, 6), Arc::new(SamplingParams::default()))).unwrap();
    let lp = |t| TokenLogprobs { chosen: TokenLogprob { token_id: t, logprob: -0.5, rank: 1 }, top: vec![] };
    let out = sched.schedule();
    // r's 3 prompt tokens, then one token of long's prompt: a chunk with prompt logprobs only.
    assert_eq!((ids(&out), lens(&out)), (vec!["r", "long"], vec![3, 1]));
    let res = ModelRunnerOutput {
        req_ids: vec!["r".into(), "long".into()],
        sampled_token_ids: vec![vec![7], vec![]],
        logprobs: vec![Some(vec![lp(7)]), None],
        prompt_logprobs: vec![Some(vec![lp(11), lp(12)]), Some(vec![])],
        ..Default::default()
    };
    let outs = sched.update_from_output(&out, &res);
    assert_eq!(outs.len(), 2);
    assert_eq!(outs[0].new_logprobs, Some(vec![lp(7)]));
    assert_eq!(outs[0].new_prompt_logprobs, Some(vec![lp(11), lp(12)]));
    assert_eq!((outs[1].new_token_ids.clone(), outs[1].new_prompt_logprobs.clone()), (vec![], Some(vec![])));
}

#[test]
fn requests_that_could_never_finish_are_refused() {
    let mut cfg = config(4, 4, 64, 8);
    cfg.max_model_len = 10;
    let mut sched = Scheduler::new(cfg);
    let err = sched.add_request(request("long", vec![0; 10], 1)).unwrap_err();
    assert_eq!(err, SchedulerError::PromptTooLong { prompt: 10, max_model_len: 10 });
    assert_eq!(err.to_string(), "prompt has 10 tokens, but the model's context length is 10");
    assert_eq!(sched.add_request(request("empty", vec![], 1)), Err(SchedulerError::EmptyPrompt));

    let mut cfg = config(4, 4, 64, 8);
    cfg.max_model_len = 100;
    let mut sched = Scheduler::new(cfg);
    // 16 slots: 10 prompt + 7 generated fits (the last token needs no slot), + 8 does not.
    assert_eq!(
        sched.add_request(request("big", vec![0; 10], 8)),
        Err(SchedulerError::TooLarge { need: 17, capacity: 16 })
    );
    sched.add_request(request("fits", vec![0; 10], 7)).unwrap();
    assert_eq!(sched.add_request(request("fits", vec![0; 3], 1)), Err(SchedulerError::DuplicateId("fits".into())));
    // Without max_tokens the context length bounds the request.
    let open = Request::new("open", vec![0; 10], Arc::new(SamplingParams { max_tokens: None, ..Default::default() }));
    assert_eq!(sched.add_request(open), Err(SchedulerError::TooLarge { need: 99, capacity: 16 }));
}

#[test]
fn stats_count_requests_blocks_and_prefix_hits() {
    let cfg = config(10, 4, 64, 1);
    let mut sched = Scheduler::new(cfg.clone());
    let mut model = FakeModel::new(&cfg);
    sched.add_request(request("a", prompt(1, 9), 5)).unwrap();
    sched.add_request(request("b", prompt(1, 9), 5)).unwrap();
    step(&mut sched, &mut model);
    let s = sched.stats();
    assert_eq!((s.num_running, s.num_waiting, s.num_blocks, s.num_free_blocks), (1, 1, 10, 7));
    assert!((s.kv_cache_usage - 0.3).abs() < 1e-6);
    assert_eq!((s.prefix_cache_queries, s.prefix_cache_hits), (9, 0));
    run_to_completion(&mut sched, &mut model, 50);
    let s = sched.stats();
    assert_eq!((s.prefix_cache_queries, s.prefix_cache_hits, s.kv_cache_usage), (18, 8, 0.0));
    assert!(sched.reset_prefix_cache());
}
