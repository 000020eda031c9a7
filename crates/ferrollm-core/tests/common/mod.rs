//! A fake model runner for scheduler tests.
//!
//! It keeps a simulated KV cache of `num_blocks * block_size` slots and goes through the block
//! tables exactly as attention would: each computed position writes a value derived from the
//! previous position's value (read back from the cache) and its token, so a slot's value
//! depends on the whole prefix, like real KV. The next token is a function of the last value.
//! A wrong block table, a prefix hit on the wrong block, or KV overwritten while still needed
//! therefore changes the generated tokens, and tests compare against [`generate_alone`].
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ferrollm_core::{
    EngineCoreOutput, FinishReason, ModelRunnerOutput, Request, SamplingParams, Scheduler, SchedulerConfig,
    SchedulerOutput,
};

pub const EOS: u32 = 1;
/// The fake model's vocabulary: 0..VOCAB.
pub const VOCAB: u32 = 64;
const START: u64 = 0x243f_6a88_85a3_08d3;

/// KV "value" at a position, from the previous position's value and this token.
pub fn mix(prev: u64, token: u32) -> u64 {
    let mut z = prev ^ (u64::from(token).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The token the fake model picks after a position whose KV value is `kv`.
pub fn next_token(kv: u64) -> u32 {
    ((kv >> 17) % u64::from(VOCAB)) as u32
}

/// The scheduler's stop rules, restated: what the request would produce with the model to itself.
pub fn generate_alone(req: &Request, max_model_len: usize) -> (Vec<u32>, FinishReason) {
    let p = &req.params;
    let max_model_len = max_model_len.min(req.max_model_len);
    let mut kv = START;
    for &t in &req.prompt_token_ids {
        kv = mix(kv, t);
    }
    let mut out = Vec::new();
    loop {
        let t = next_token(kv);
        out.push(t);
        kv = mix(kv, t);
        let stop_allowed = out.len() >= p.min_tokens;
        if stop_allowed && ((!p.ignore_eos && req.eos_token_ids.contains(&t)) || p.stop_token_ids.contains(&t)) {
            return (out, FinishReason::Stop);
        }
        if p.max_tokens.is_some_and(|m| out.len() >= m) || req.prompt_token_ids.len() + out.len() >= max_model_len {
            return (out, FinishReason::Length);
        }
    }
}

pub struct FakeModel {
    block_size: usize,
    kv: Vec<Option<u64>>,
    /// Requests the runner holds state for (seen with `new`, not yet finished).
    known: HashSet<String>,
    /// When a sampled step starts at an even position, also return the token after the
    /// sampled one, as speculative decoding does when a draft is accepted. Its KV is not
    /// written: the scheduler must compute it next step.
    pub speculate: bool,
    /// Speculative decoding as the engine does it: after each sampled step propose up to
    /// `max_drafts` tokens, each the fake model's true next token with probability about
    /// `accuracy` (deterministic), verify the scheduled drafts by greedy match, and return the
    /// accepted ones plus the model's own next token.
    pub drafts: Option<Drafts>,
}

#[derive(Debug, Clone, Copy)]
pub struct Drafts {
    pub max_drafts: usize,
    pub accuracy: f64,
    /// Like a layer-skip drafter: write (garbage) KV at the draft positions ahead, within the
    /// block table, which must never disturb computed KV.
    pub write_ahead: bool,
}

impl FakeModel {
    pub fn new(config: &SchedulerConfig) -> Self {
        FakeModel {
            block_size: config.block_size,
            kv: vec![None; config.num_blocks * config.block_size],
            known: HashSet::new(),
            speculate: false,
            drafts: None,
        }
    }

    /// Requests whose state the runner still holds.
    pub fn num_known(&self) -> usize {
        self.known.len()
    }

    fn slot(&self, table: &[u32], pos: usize) -> usize {
        table[pos / self.block_size] as usize * self.block_size + pos % self.block_size
    }

    /// Runs one step; checks the runner's side of the contract as it goes.
    pub fn execute(&mut self, out: &SchedulerOutput) -> ModelRunnerOutput {
        for id in &out.finished_req_ids {
            self.known.remove(id);
        }
        let mut res = ModelRunnerOutput::default();
        for s in &out.scheduled {
            match &s.new {
                Some(new) => {
                    assert!(self.known.insert(s.req_id.clone()), "{} sent as new twice", s.req_id);
                    assert!(s.start_pos < new.prompt_token_ids.len(), "{}: prompt fully cached", s.req_id);
                }
                None => assert!(self.known.contains(&s.req_id), "{} scheduled before it was sent", s.req_id),
            }
            let end = s.start_pos + s.num_tokens();
            assert!(s.num_tokens() > 0, "{} scheduled for no tokens", s.req_id);
            assert!(s.block_table.len() * self.block_size >= end, "{}: block table too short", s.req_id);
            let mut prev = if s.start_pos == 0 {
                START
            } else {
                let slot = self.slot(&s.block_table, s.start_pos - 1);
                self.kv[slot].unwrap_or_else(|| panic!("{} reads KV never written", s.req_id))
            };
            let mut vals = Vec::with_capacity(s.num_tokens());
            for (k, &t) in s.token_ids.iter().enumerate() {
                prev = mix(prev, t);
                let slot = self.slot(&s.block_table, s.start_pos + k);
                self.kv[slot] = Some(prev);
                vals.push(prev);
            }
            assert!(s.num_spec_tokens == 0 || (s.sample && self.drafts.is_some()), "{}: unexpected drafts", s.req_id);
            res.req_ids.push(s.req_id.clone());
            let mut sampled = Vec::new();
            if s.sample {
                // Verify the drafts: accept while each is the model's own next token.
                let base = s.num_tokens() - s.num_spec_tokens - 1;
                for i in 0..=s.num_spec_tokens {
                    let t = next_token(vals[base + i]);
                    sampled.push(t);
                    if i == s.num_spec_tokens || s.token_ids[base + 1 + i] != t {
                        break;
                    }
                }
                if self.speculate && s.num_spec_tokens == 0 && s.start_pos % 2 == 0 {
                    sampled.push(next_token(mix(prev, sampled[0])));
                }
            }
            let mut proposed = Vec::new();
            if let (Some(d), true) = (self.drafts, s.sample) {
                let n = sampled.len();
                let last = *sampled.last().expect("sampled");
                let base = s.num_tokens() - s.num_spec_tokens - 1;
                let mut kv = mix(vals[base + n - 1], last);
                let mut count = (kv % (d.max_drafts as u64 + 1)) as usize;
                // The newest token sits at position p, not yet computed.
                let p = s.start_pos + base + n;
                if d.write_ahead {
                    let room = (s.block_table.len() * self.block_size).saturating_sub(p);
                    count = count.min(room + 1);
                    for pos in p..p + count.saturating_sub(1) {
                        let slot = self.slot(&s.block_table, pos);
                        self.kv[slot] = Some(0xdead_beef ^ pos as u64);
                    }
                }
                for _ in 0..count {
                    let truth = next_token(kv);
                    let good = (mix(kv, 7) % 1000) as f64 / 1000.0 < d.accuracy;
                    let t = if good { truth } else { (truth + 1) % VOCAB };
                    proposed.push(t);
                    kv = mix(kv, t);
                }
            }
            res.spec_token_ids.push(proposed);
            res.sampled_token_ids.push(sampled);
            res.logprobs.push(None);
            res.prompt_logprobs.push(None);
        }
        res
    }
}

pub fn config(num_blocks: usize, block_size: usize, budget: usize, max_num_seqs: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs,
        max_num_batched_tokens: budget,
        max_model_len: 4096,
        block_size,
        num_blocks,
        enable_prefix_caching: true,
        enable_chunked_prefill: true,
        num_lookahead_tokens: 0,
        jump_forward: true,
    }
}

pub fn request(id: &str, prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request::new(id, prompt, Arc::new(SamplingParams::greedy(max_tokens)))
}

/// Prompt of `n` tokens in the fake vocabulary, distinct per `seed`.
pub fn prompt(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (seed.wrapping_mul(31).wrapping_add(i * 7)) % VOCAB).collect()
}

/// Everything a run produced, per request.
#[derive(Debug, Default)]
pub struct Run {
    pub tokens: HashMap<String, Vec<u32>>,
    pub finish: HashMap<String, FinishReason>,
    pub cached: HashMap<String, usize>,
    pub steps: usize,
    pub outputs: Vec<Vec<EngineCoreOutput>>,
    pub scheduled: Vec<SchedulerOutput>,
}

/// Drives the scheduler with the fake model until every request is done, checking invariants
/// and budgets after every step.
pub fn run_to_completion(sched: &mut Scheduler, model: &mut FakeModel, max_steps: usize) -> Run {
    let mut run = Run::default();
    while sched.has_unfinished_requests() {
        assert!(run.steps < max_steps, "not done after {max_steps} steps");
        let out = sched.schedule();
        check_step(sched, &out);
        let res = model.execute(&out);
        let outs = sched.update_from_output(&out, &res);
        sched.check_invariants();
        record(&mut run, &outs);
        run.outputs.push(outs);
        run.scheduled.push(out);
        run.steps += 1;
    }
    sched.check_invariants();
    run
}

pub fn record(run: &mut Run, outs: &[EngineCoreOutput]) {
    for o in outs {
        assert!(!run.finish.contains_key(&o.req_id), "{} got output after finishing", o.req_id);
        run.tokens.entry(o.req_id.clone()).or_default().extend(&o.new_token_ids);
        run.cached.insert(o.req_id.clone(), o.num_cached_tokens);
        if let Some(r) = o.finish_reason {
            run.finish.insert(o.req_id.clone(), r);
        }
    }
}

/// The limits every step must respect.
pub fn check_step(sched: &Scheduler, out: &SchedulerOutput) {
    let c = &sched.config;
    let total: usize = out.scheduled.iter().map(|s| s.num_tokens()).sum();
    assert_eq!(total, out.num_batched_tokens);
    assert!(total <= c.max_num_batched_tokens, "budget exceeded: {total} > {}", c.max_num_batched_tokens);
    assert!(out.scheduled.len() <= c.max_num_seqs, "too many sequences in a step");
    let ids: HashSet<&String> = out.scheduled.iter().map(|s| &s.req_id).collect();
    assert_eq!(ids.len(), out.scheduled.len(), "a request scheduled twice in one step");
    for p in &out.preempted_req_ids {
        assert!(!ids.contains(p), "{p} both preempted and scheduled");
    }
    sched.check_invariants();
}
