//! The scheduler's side of structured outputs, with a scripted grammar: masks for every
//! sampled position, the grammar advanced by emitted tokens, forced tokens appended and
//! computed next step as one chunk (jump-forward), drafts cut where the grammar rejects them.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use ferrollm_core::{
    FinishReason, ModelRunnerOutput, Request, SamplingParams, Scheduler, SchedulerOutput, StructuredOutputGrammar,
    TokenBitmask,
};

/// A grammar given as the allowed tokens at each position, then only `EOS`.
struct Slots {
    slots: Vec<Vec<u32>>,
    pos: usize,
    /// Dropped with the grammar, so tests can see the scheduler let go of it.
    _alive: Arc<()>,
    accepted: Arc<Mutex<Vec<u32>>>,
}

impl Slots {
    fn allowed_at(&self, pos: usize) -> Vec<u32> {
        self.slots.get(pos).cloned().unwrap_or_else(|| vec![EOS])
    }
}

impl StructuredOutputGrammar for Slots {
    fn allowed_tokens(&mut self) -> TokenBitmask {
        let mut m = TokenBitmask::empty(VOCAB as usize);
        for t in self.allowed_at(self.pos) {
            m.allow(t);
        }
        m
    }
    fn accept_tokens(&mut self, tokens: &[u32]) -> bool {
        for &t in tokens {
            if !self.allowed_at(self.pos).contains(&t) {
                return false;
            }
            self.pos += 1;
            self.accepted.lock().unwrap().push(t);
        }
        true
    }
    fn validate_tokens(&mut self, tokens: &[u32]) -> usize {
        tokens.iter().enumerate().take_while(|&(i, t)| self.allowed_at(self.pos + i).contains(t)).count()
    }
    fn rollback(&mut self, n: usize) {
        self.pos -= n;
        let mut a = self.accepted.lock().unwrap();
        let keep = a.len() - n;
        a.truncate(keep);
    }
    fn jump_forward(&mut self) -> Vec<u32> {
        let mut forced = Vec::new();
        while self.pos < self.slots.len() && self.slots[self.pos].len() == 1 {
            forced.push(self.slots[self.pos][0]);
            self.pos += 1;
        }
        self.accepted.lock().unwrap().extend(&forced);
        forced
    }
    fn is_terminated(&self) -> bool {
        self.pos > self.slots.len()
    }
}

struct Setup {
    sched: Scheduler,
    alive: Arc<()>,
    accepted: Arc<Mutex<Vec<u32>>>,
}

fn setup(slots: &[&[u32]], params: SamplingParams, jump_forward: bool) -> Setup {
    let mut cfg = config(64, 4, 64, 8);
    cfg.jump_forward = jump_forward;
    let mut sched = Scheduler::new(cfg);
    let alive = Arc::new(());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let g = Slots {
        slots: slots.iter().map(|s| s.to_vec()).collect(),
        pos: 0,
        _alive: alive.clone(),
        accepted: accepted.clone(),
    };
    let mut req = Request::new("r", vec![10, 11, 12, 13], Arc::new(params));
    req.eos_token_ids = vec![EOS];
    sched.add_request_with_grammar(req, Some(Box::new(g))).unwrap();
    Setup { sched, alive, accepted }
}

/// The runner's answer: `sampled` and `drafts` for the one scheduled request.
fn answer(out: &SchedulerOutput, sampled: &[u32], drafts: &[u32]) -> ModelRunnerOutput {
    ModelRunnerOutput {
        req_ids: vec![out.scheduled[0].req_id.clone()],
        sampled_token_ids: vec![sampled.to_vec()],
        logprobs: vec![None],
        prompt_logprobs: vec![None],
        spec_token_ids: vec![drafts.to_vec()],
    }
}

fn allowed(m: &TokenBitmask) -> Vec<u32> {
    (0..VOCAB).filter(|&t| m.is_allowed(t)).collect()
}

#[test]
fn forced_tokens_are_appended_and_computed_next_step_as_one_chunk() {
    let mut s = setup(&[&[5, 6], &[7], &[8], &[9], &[5, 6]], SamplingParams::greedy(50), true);
    let out = s.sched.schedule();
    assert_eq!(out.scheduled[0].token_ids, vec![10, 11, 12, 13]);
    assert_eq!(out.scheduled[0].grammar_bitmasks.len(), 1);
    assert_eq!(allowed(&out.scheduled[0].grammar_bitmasks[0]), vec![5, 6]);
    let outs = s.sched.update_from_output(&out, &answer(&out, &[5], &[]));
    assert_eq!(outs[0].new_token_ids, vec![5, 7, 8, 9], "the forced tokens arrive with the sampled one");

    let out = s.sched.schedule();
    let r = &out.scheduled[0];
    assert_eq!((r.start_pos, r.token_ids.clone(), r.sample), (4, vec![5, 7, 8, 9], true));
    assert_eq!(allowed(&r.grammar_bitmasks[0]), vec![5, 6]);
    let outs = s.sched.update_from_output(&out, &answer(&out, &[6], &[]));
    assert_eq!(outs[0].new_token_ids, vec![6]);

    let out = s.sched.schedule();
    assert_eq!(allowed(&out.scheduled[0].grammar_bitmasks[0]), vec![EOS], "a finished grammar allows only EOS");
    let outs = s.sched.update_from_output(&out, &answer(&out, &[EOS], &[]));
    assert_eq!(outs[0].finish_reason, Some(FinishReason::Stop));
    assert_eq!(*s.accepted.lock().unwrap(), vec![5, 7, 8, 9, 6, EOS]);
    assert_eq!(s.sched.stats().num_jump_forward_tokens, 3);
    assert_eq!(Arc::strong_count(&s.alive), 1, "the finished request's grammar is dropped");
}

#[test]
fn without_jump_forward_forced_tokens_are_sampled_one_per_step() {
    let mut s = setup(&[&[5, 6], &[7], &[8]], SamplingParams::greedy(50), false);
    let out = s.sched.schedule();
    s.sched.update_from_output(&out, &answer(&out, &[5], &[]));
    let out = s.sched.schedule();
    assert_eq!(out.scheduled[0].token_ids, vec![5]);
    assert_eq!(allowed(&out.scheduled[0].grammar_bitmasks[0]), vec![7]);
    assert_eq!(s.sched.stats().num_jump_forward_tokens, 0);
}

#[test]
fn requests_asking_for_logprobs_get_no_jump_forward() {
    let params = SamplingParams { logprobs: Some(2), ..SamplingParams::greedy(50) };
    let mut s = setup(&[&[5, 6], &[7], &[8]], params, true);
    let out = s.sched.schedule();
    let outs = s.sched.update_from_output(&out, &answer(&out, &[5], &[]));
    assert_eq!(outs[0].new_token_ids, vec![5]);
}

#[test]
fn drafts_are_cut_where_the_grammar_rejects_them_and_masked_per_position() {
    let mut s = setup(&[&[5, 6], &[7, 8], &[7, 8], &[9, 10], &[2, 3]], SamplingParams::greedy(50), false);
    let out = s.sched.schedule();
    s.sched.update_from_output(&out, &answer(&out, &[5], &[7, 8, 3, 9]));
    let out = s.sched.schedule();
    let r = &out.scheduled[0];
    assert_eq!((r.token_ids.clone(), r.num_spec_tokens), (vec![5, 7, 8], 2), "draft 3 breaks the grammar");
    let masks: Vec<Vec<u32>> = r.grammar_bitmasks.iter().map(allowed).collect();
    assert_eq!(masks, vec![vec![7, 8], vec![7, 8], vec![9, 10]]);
    assert_eq!(*s.accepted.lock().unwrap(), vec![5], "masks along the drafts leave the grammar where it was");
    // One draft accepted plus the target's own token.
    let outs = s.sched.update_from_output(&out, &answer(&out, &[7, 7], &[]));
    assert_eq!(outs[0].new_token_ids, vec![7, 7]);
    assert_eq!(*s.accepted.lock().unwrap(), vec![5, 7, 7]);
    let out = s.sched.schedule();
    assert_eq!(out.scheduled[0].token_ids, vec![7], "the rejected draft's position is recomputed");
    assert_eq!(allowed(&out.scheduled[0].grammar_bitmasks[0]), vec![9, 10]);
}

#[test]
fn a_token_the_grammar_refuses_ends_the_request() {
    let mut s = setup(&[&[5, 6]], SamplingParams::greedy(50), true);
    let out = s.sched.schedule();
    let outs = s.sched.update_from_output(&out, &answer(&out, &[9], &[]));
    assert_eq!(outs[0].finish_reason, Some(FinishReason::Stop));
    assert!(!s.sched.has_unfinished_requests());
    assert_eq!(Arc::strong_count(&s.alive), 1);
}

#[test]
fn forced_tokens_stop_at_max_tokens_and_aborts_drop_the_grammar() {
    let mut s = setup(&[&[5, 6], &[7], &[8], &[9]], SamplingParams::greedy(3), true);
    let out = s.sched.schedule();
    let outs = s.sched.update_from_output(&out, &answer(&out, &[5], &[]));
    assert_eq!(outs[0].new_token_ids, vec![5, 7, 8]);
    assert_eq!(outs[0].finish_reason, Some(FinishReason::Length));

    let s = setup(&[&[5]], SamplingParams::greedy(3), true);
    let mut sched = s.sched;
    sched.finish_requests(&["r".to_string()], FinishReason::Abort);
    assert_eq!(Arc::strong_count(&s.alive), 1);
}

#[test]
fn preemption_keeps_the_grammar_and_recomputes_forced_tokens() {
    // Two requests in a pool too small for both: the newest is preempted mid-way and resumes.
    let mut cfg = config(5, 4, 64, 8);
    cfg.jump_forward = true;
    let mut sched = Scheduler::new(cfg);
    let alive = Arc::new(());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let slots: Vec<Vec<u32>> = vec![vec![5, 6], vec![7], vec![8], vec![9], vec![5, 6], vec![7], vec![8]];
    let g = Slots { slots, pos: 0, _alive: alive.clone(), accepted: accepted.clone() };
    let a =
        Request::new("a", prompt(1, 8), Arc::new(SamplingParams { ignore_eos: true, ..SamplingParams::greedy(12) }));
    sched.add_request(a).unwrap();
    let mut b = Request::new("b", prompt(2, 4), Arc::new(SamplingParams::greedy(12)));
    b.eos_token_ids = vec![EOS];
    sched.add_request_with_grammar(b, Some(Box::new(g))).unwrap();
    let mut model = FakeModel::new(&sched.config);
    let mut run = Run::default();
    let mut steps = 0;
    while sched.has_unfinished_requests() {
        steps += 1;
        assert!(steps < 100);
        let out = sched.schedule();
        check_step(&sched, &out);
        let mut res = model.execute(&out);
        // The runner samples within the mask: the smallest allowed token.
        for (k, s) in out.scheduled.iter().enumerate() {
            if let Some(m) = s.grammar_bitmasks.first() {
                res.sampled_token_ids[k] = vec![allowed(m)[0]];
            }
        }
        let outs = sched.update_from_output(&out, &res);
        sched.check_invariants();
        record(&mut run, &outs);
    }
    assert!(sched.stats().num_preemptions > 0, "the pool was meant to force a preemption");
    assert_eq!(run.tokens["b"], vec![5, 7, 8, 9, 5, 7, 8, EOS]);
    assert_eq!(run.finish["b"], FinishReason::Stop);
    assert_eq!(Arc::strong_count(&alive), 1);
}
