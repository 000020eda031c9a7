//! Randomized workloads: shared prefixes, arrivals over time, aborts, pools from tiny to large,
//! budgets from one token up, steps that return an extra (speculative) token. After every step the scheduler's and KV manager's invariants
//! hold and the step respects its limits; at the end every request that was not aborted has
//! exactly the tokens the fake model gives it alone, and the pool is whole again.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::*;
use ferrollm_core::scheduler::SchedulerError;
use ferrollm_core::{FinishReason, Request, SamplingParams, Scheduler, SchedulerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SCENARIOS: u64 = 4000;

#[derive(Default)]
struct Totals {
    requests: usize,
    refused: usize,
    aborted: usize,
    preemptions: u64,
    prefix_hits: u64,
    chunked_steps: usize,
    steps: usize,
    spec_draft_tokens: u64,
    spec_accepted: u64,
}

#[test]
fn random_workloads_finish_with_the_tokens_each_request_gets_alone() {
    let mut totals = Totals::default();
    for seed in 0..SCENARIOS {
        run_scenario(seed, &mut totals);
    }
    // The workloads must actually exercise the hard paths.
    assert!(totals.preemptions > 100, "only {} preemptions", totals.preemptions);
    assert!(totals.prefix_hits > 10_000, "only {} prefix-hit tokens", totals.prefix_hits);
    assert!(totals.aborted > 100 && totals.refused > 10, "aborted {}, refused {}", totals.aborted, totals.refused);
    assert!(totals.chunked_steps > 1000, "only {} chunked prefill steps", totals.chunked_steps);
    assert!(totals.spec_accepted > 1000, "only {} accepted draft tokens", totals.spec_accepted);
    assert!(totals.spec_draft_tokens > totals.spec_accepted, "no draft was ever rejected");
    eprintln!(
        "{} requests ({} refused, {} aborted), {} steps, {} preemptions, {} prefix-hit tokens, {}/{} drafts accepted",
        totals.requests,
        totals.refused,
        totals.aborted,
        totals.steps,
        totals.preemptions,
        totals.prefix_hits,
        totals.spec_accepted,
        totals.spec_draft_tokens
    );
}

fn random_config(rng: &mut StdRng) -> SchedulerConfig {
    let block_size = [1, 2, 4, 8, 16][rng.gen_range(0..5)];
    let max_model_len = rng.gen_range(16..=256);
    // From pools that cannot hold one long request to pools that hold many.
    let capacity = rng.gen_range(max_model_len / 2..=max_model_len * 6);
    SchedulerConfig {
        max_num_seqs: rng.gen_range(1..=16),
        max_num_batched_tokens: if rng.gen_bool(0.15) { rng.gen_range(1..=8) } else { rng.gen_range(16..=256) },
        max_model_len,
        block_size,
        num_blocks: capacity / block_size + 1,
        enable_prefix_caching: rng.gen_bool(0.8),
        enable_chunked_prefill: rng.gen_bool(0.7),
        num_lookahead_tokens: 0,
        jump_forward: true,
    }
}

fn random_request(rng: &mut StdRng, id: usize, prefixes: &[Vec<u32>]) -> Request {
    let mut prompt = if rng.gen_bool(0.7) {
        let p = &prefixes[rng.gen_range(0..prefixes.len())];
        p[..rng.gen_range(0..=p.len())].to_vec()
    } else {
        Vec::new()
    };
    let suffix = rng.gen_range(0..60);
    prompt.extend((0..suffix).map(|_| rng.gen_range(0..VOCAB)));
    if prompt.is_empty() {
        prompt.push(rng.gen_range(0..VOCAB));
    }
    let max_tokens = if rng.gen_bool(0.1) { None } else { Some(rng.gen_range(1..=40)) };
    let params = SamplingParams {
        max_tokens,
        min_tokens: rng.gen_range(0..=3).min(max_tokens.unwrap_or(3)),
        ignore_eos: rng.gen_bool(0.3),
        stop_token_ids: (0..rng.gen_range(0..=2)).map(|_| rng.gen_range(0..VOCAB)).collect(),
        disable_speculation: id % 7 == 3,
        ..SamplingParams::greedy(1)
    };
    let mut req = Request::new(format!("r{id}"), prompt, Arc::new(params));
    req.eos_token_ids = vec![EOS];
    if rng.gen_bool(0.1) {
        req.cache_salt = Some(format!("salt{}", rng.gen_range(0..2)));
    }
    req
}

fn run_scenario(seed: u64, totals: &mut Totals) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cfg = random_config(&mut rng);
    let prefixes: Vec<Vec<u32>> =
        (0..3).map(|_| (0..rng.gen_range(0..120)).map(|_| rng.gen_range(0..VOCAB)).collect()).collect();
    let num_requests = rng.gen_range(1..=24);
    let mut arrivals: Vec<(usize, Request)> =
        (0..num_requests).map(|i| (rng.gen_range(0..30), random_request(&mut rng, i, &prefixes))).collect();
    arrivals.sort_by_key(|(t, _)| *t);
    let abort_rate = if rng.gen_bool(0.5) { 0.0 } else { rng.gen_range(0.0..0.05) };

    let mut cfg = cfg;
    if seed % 3 == 1 && seed.is_multiple_of(2) {
        cfg.num_lookahead_tokens = 1 + (seed / 3 % 5) as usize;
    }
    let mut sched = Scheduler::new(cfg.clone());
    let mut model = FakeModel::new(&cfg);
    model.speculate = rng.gen_bool(0.2);
    // Drafts chosen from the seed alone, so the other draws (and scenarios) stay as they were.
    if seed % 3 == 1 {
        let write_ahead = seed.is_multiple_of(2);
        model.drafts =
            Some(Drafts { max_drafts: 1 + (seed / 3 % 5) as usize, accuracy: (seed % 10) as f64 / 10.0, write_ahead });
        model.speculate = false;
    }
    let mut expected: HashMap<String, (Vec<u32>, FinishReason)> = HashMap::new();
    let mut active: Vec<String> = Vec::new();
    let mut aborted: HashSet<String> = HashSet::new();
    let mut run = Run::default();
    let last_arrival = arrivals.last().map_or(0, |(t, _)| *t);
    let mut bound = last_arrival + 10;
    let mut next = 0;
    let mut step = 0;
    let ctx = format!("seed {seed}, {cfg:?}");

    while next < arrivals.len() || sched.has_unfinished_requests() {
        while next < arrivals.len() && arrivals[next].0 <= step {
            let req = arrivals[next].1.clone();
            next += 1;
            totals.requests += 1;
            let max_len = cfg
                .max_model_len
                .min(req.prompt_token_ids.len().saturating_add(req.params.max_tokens.unwrap_or(usize::MAX)));
            let need_blocks = (max_len - 1).div_ceil(cfg.block_size);
            match sched.add_request(req.clone()) {
                Ok(()) => {
                    expected.insert(req.id.clone(), generate_alone(&req, cfg.max_model_len));
                    active.push(req.id.clone());
                    bound += max_len + 1;
                }
                Err(SchedulerError::PromptTooLong { .. }) => {
                    assert!(req.prompt_token_ids.len() >= cfg.max_model_len, "{ctx}");
                    totals.refused += 1;
                }
                Err(SchedulerError::TooLarge { .. }) => {
                    assert!(need_blocks > cfg.num_blocks, "{ctx}: refused a request that fits");
                    totals.refused += 1;
                }
                Err(e) => panic!("{ctx}: unexpected {e}"),
            }
        }
        if !active.is_empty() && rng.gen_bool(abort_rate) {
            let id = active.swap_remove(rng.gen_range(0..active.len()));
            if !run.finish.contains_key(&id) {
                sched.finish_requests(std::slice::from_ref(&id), FinishReason::Abort);
                sched.check_invariants();
                aborted.insert(id);
                totals.aborted += 1;
            }
        }

        let out = sched.schedule();
        check_step(&sched, &out);
        totals.chunked_steps += out.scheduled.iter().filter(|s| !s.sample).count();
        let res = model.execute(&out);
        let outs = sched.update_from_output(&out, &res);
        sched.check_invariants();
        record(&mut run, &outs);
        step += 1;
        assert!(step <= bound, "{ctx}: not done after {step} steps");
    }

    totals.steps += step;
    let stats = sched.stats();
    totals.preemptions += stats.num_preemptions;
    totals.prefix_hits += stats.prefix_cache_hits;
    totals.spec_draft_tokens += stats.spec_num_draft_tokens;
    totals.spec_accepted += stats.spec_num_accepted_tokens;
    assert_eq!(stats.spec_num_accepted_tokens, stats.spec_num_accepted_tokens_per_pos.iter().sum::<u64>(), "{ctx}");
    assert_eq!(sched.kv_cache().num_free_blocks(), cfg.num_blocks, "{ctx}: blocks leaked");
    for (id, (want, reason)) in &expected {
        let got = run.tokens.get(id).map_or(&[][..], |t| &t[..]);
        if aborted.contains(id) {
            assert!(want.starts_with(got), "{ctx}: aborted {id} diverged");
        } else {
            assert_eq!(got, &want[..], "{ctx}: {id}'s tokens");
            assert_eq!(run.finish.get(id), Some(reason), "{ctx}: {id}'s finish reason");
        }
    }
    // The runner is told about every request it saw, and then holds none.
    let out = sched.schedule();
    model.execute(&out);
    assert!(out.is_empty());
    assert_eq!(model.num_known(), 0, "{ctx}: the runner was not told a request finished");
}
