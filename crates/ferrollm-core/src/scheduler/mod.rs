//! The scheduler: each step, decides how many tokens of which requests to compute.
//!
//! There are no prefill and decode phases (vLLM v1). A request is simply behind by some
//! number of tokens: its whole prompt when admitted, one token after each sampled token, more
//! when speculative tokens are added. Each step hands out a token budget
//! (`max_num_batched_tokens`) over at most `max_num_seqs` requests: running requests first, in
//! order, then waiting ones first come, first served. A prompt larger than what is left of the
//! budget is chunked (chunked prefill), so decodes keep flowing while it is read.
//!
//! When the KV pool runs out, the newest running request is preempted: it gives its blocks
//! back and waits at the front of the queue to be recomputed from scratch (its generated tokens
//! included). Its full blocks stay cached, so on resume the prefix cache usually hands most of
//! them back. The oldest running request is never preempted for another, so it always
//! progresses, and every request admitted is guaranteed to fit the pool on its own
//! ([`SchedulerError::TooLarge`]), so nothing waits forever.

mod config;
mod output;

use std::collections::{HashMap, HashSet, VecDeque};

pub use config::SchedulerConfig;
pub use output::{NewRequestData, ScheduledRequest, SchedulerOutput};

use crate::kv_cache::KvCacheManager;
use crate::{
    EngineCoreOutput, FinishReason, ModelRunnerOutput, Request, RequestId, RequestStatus, StructuredOutputGrammar,
    TokenBitmask,
};

/// Counters for /metrics and logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerStats {
    pub num_running: usize,
    pub num_waiting: usize,
    /// Fraction of KV blocks in use (0..=1).
    pub kv_cache_usage: f32,
    pub num_blocks: usize,
    pub num_free_blocks: usize,
    /// Prompt tokens looked up in the prefix cache, and those found.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub num_preemptions: u64,
    /// Speculative decoding: steps in which a request verified at least one draft token,
    /// the draft tokens verified, and those accepted (vLLM's spec_decode counters).
    pub spec_num_drafts: u64,
    pub spec_num_draft_tokens: u64,
    pub spec_num_accepted_tokens: u64,
    /// Accepted draft tokens by position in the draft (0 = first).
    pub spec_num_accepted_tokens_per_pos: Vec<u64>,
    /// Steps run (each one forward pass).
    pub num_steps: u64,
    /// Tokens appended because a grammar forced them (jump-forward), not sampled.
    pub num_jump_forward_tokens: u64,
}

impl SchedulerStats {
    /// Accepted over verified draft tokens; `None` before any draft.
    pub fn spec_acceptance_rate(&self) -> Option<f64> {
        (self.spec_num_draft_tokens > 0)
            .then(|| self.spec_num_accepted_tokens as f64 / self.spec_num_draft_tokens as f64)
    }

    /// Tokens emitted per drafting step (accepted drafts plus the target's own token), as vLLM
    /// defines the mean acceptance length; `None` before any draft.
    pub fn spec_mean_acceptance_length(&self) -> Option<f64> {
        (self.spec_num_drafts > 0).then(|| 1.0 + self.spec_num_accepted_tokens as f64 / self.spec_num_drafts as f64)
    }
}

/// Speculative-decoding counters kept by the scheduler.
#[derive(Debug, Clone, Default)]
struct SpecStats {
    num_drafts: u64,
    num_draft_tokens: u64,
    num_accepted_tokens: u64,
    accepted_per_pos: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    #[error("request needs {need} tokens of KV cache but the pool holds only {capacity}")]
    TooLarge { need: usize, capacity: usize },
    #[error("prompt has {prompt} tokens, but the model's context length is {max_model_len}")]
    PromptTooLong { prompt: usize, max_model_len: usize },
    #[error("a request with id '{0}' is already active")]
    DuplicateId(RequestId),
    #[error("prompt is empty: at least one token is needed to generate from")]
    EmptyPrompt,
}

/// Waiting and running requests, and the KV blocks they hold.
///
/// Invariants (checked by [`Scheduler::check_invariants`]): every active request is in exactly
/// one of `waiting` (status `Waiting` or `Preempted`, holding no blocks, nothing computed) and
/// `running` (status `Running`, at least its last token not yet computed); `running` holds at
/// most `max_num_seqs` requests, oldest admission first; finished requests are dropped at once.
pub struct Scheduler {
    /// Read-only after `new`: the KV pool was sized from it.
    pub config: SchedulerConfig,
    kv: KvCacheManager,
    requests: HashMap<RequestId, Request>,
    waiting: VecDeque<RequestId>,
    running: Vec<RequestId>,
    /// Finished or aborted since the last `schedule()`, for the runner to drop.
    finished_req_ids: Vec<RequestId>,
    num_preemptions: u64,
    spec: SpecStats,
    /// Grammar state of constrained requests (structured outputs).
    grammars: HashMap<RequestId, Box<dyn StructuredOutputGrammar>>,
    num_steps: u64,
    num_jump_forward_tokens: u64,
}

/// Most tokens `req` may ever hold: prompt plus `max_tokens`, within its context length.
fn max_len(req: &Request) -> usize {
    req.prompt_token_ids.len().saturating_add(req.params.max_tokens.unwrap_or(usize::MAX)).min(req.max_model_len)
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Scheduler {
        assert!(config.block_size > 0, "block_size must be positive");
        assert!(config.max_num_seqs > 0, "max_num_seqs must be positive");
        assert!(config.max_num_batched_tokens > 0, "max_num_batched_tokens must be positive");
        let kv = KvCacheManager::new(config.num_blocks, config.block_size, config.enable_prefix_caching);
        Scheduler {
            config,
            kv,
            requests: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            finished_req_ids: Vec::new(),
            num_preemptions: 0,
            spec: SpecStats::default(),
            grammars: HashMap::new(),
            num_steps: 0,
            num_jump_forward_tokens: 0,
        }
    }

    /// Queues a request, refusing one that could never complete: a duplicate id, an empty
    /// prompt, a prompt that fills the context, or a request whose KV at its longest (prompt
    /// plus `max_tokens`, capped by the context length) exceeds the whole pool.
    ///
    /// The request's `max_model_len` is lowered to the scheduler's if larger.
    pub fn add_request(&mut self, req: Request) -> Result<(), SchedulerError> {
        self.add_request_with_grammar(req, None)
    }

    /// Like [`add_request`](Self::add_request), for a request whose output `grammar`
    /// constrains: each step that samples for it carries the allowed tokens, and the grammar
    /// advances with every token the request emits.
    pub fn add_request_with_grammar(
        &mut self,
        mut req: Request,
        grammar: Option<Box<dyn StructuredOutputGrammar>>,
    ) -> Result<(), SchedulerError> {
        if self.requests.contains_key(&req.id) {
            return Err(SchedulerError::DuplicateId(req.id));
        }
        let prompt = req.prompt_token_ids.len();
        if prompt == 0 {
            return Err(SchedulerError::EmptyPrompt);
        }
        let max_model_len = req.max_model_len.min(self.config.max_model_len);
        if prompt >= max_model_len {
            return Err(SchedulerError::PromptTooLong { prompt, max_model_len });
        }
        let max_len = prompt.saturating_add(req.params.max_tokens.unwrap_or(usize::MAX)).min(max_model_len);
        // The last generated token is never fed back, so it needs no KV slot.
        let need = max_len - 1;
        let capacity = self.config.num_blocks * self.config.block_size;
        if need > capacity {
            return Err(SchedulerError::TooLarge { need, capacity });
        }
        req.max_model_len = max_model_len;
        req.status = RequestStatus::Waiting;
        req.num_computed_tokens = 0;
        req.spec_token_ids.clear();
        if let Some(g) = grammar {
            self.grammars.insert(req.id.clone(), g);
        }
        self.waiting.push_back(req.id.clone());
        self.requests.insert(req.id.clone(), req);
        Ok(())
    }

    /// Ends requests early (client abort, stop string seen by the detokenizer); frees their blocks.
    /// Waiting and running requests alike; unknown or already finished ids are ignored.
    pub fn finish_requests(&mut self, ids: &[RequestId], reason: FinishReason) {
        for id in ids {
            let Some(mut req) = self.requests.remove(id) else { continue };
            match req.status {
                RequestStatus::Running => {
                    self.running.retain(|r| r != id);
                    self.kv.free(id);
                }
                RequestStatus::Waiting | RequestStatus::Preempted => self.waiting.retain(|r| r != id),
                RequestStatus::Finished(_) => unreachable!("finished requests are dropped at once"),
            }
            req.status = RequestStatus::Finished(reason);
            self.grammars.remove(id);
            self.finished_req_ids.push(req.id);
        }
    }

    /// Plans one step. Call [`update_from_output`](Self::update_from_output) with the runner's
    /// result before planning the next one: the tokens scheduled here count as computed only then.
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out =
            SchedulerOutput { finished_req_ids: std::mem::take(&mut self.finished_req_ids), ..Default::default() };
        let mut budget = self.config.max_num_batched_tokens;
        // (request, tokens to compute, first time scheduled, draft tokens among them)
        let mut planned: Vec<(RequestId, usize, bool, usize)> = Vec::new();

        // Running requests in admission order; each takes what it is behind by, up to the budget,
        // plus the draft tokens proposed for it when the budget has room for them.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i].clone();
            let req = &self.requests[&id];
            let behind = req.num_tokens() - req.num_computed_tokens;
            debug_assert!(behind >= 1, "running request {id} has nothing to compute");
            let n = behind.min(budget);
            // Drafts only follow the last known token, and never past what the request may
            // still emit: the verified tokens plus one must fit `max_tokens` and the context.
            let mut n_spec = if n == behind {
                let room = max_len(req).saturating_sub(req.num_tokens() + 1);
                req.spec_token_ids.len().min(room).min(budget - n)
            } else {
                0
            };
            let mut lookahead = self.lookahead(req, n + n_spec);
            let mut preempted_self = false;
            while self.kv.allocate_slots(&self.requests[&id], n + n_spec + lookahead, &[]).is_none() {
                if n_spec + lookahead > 0 {
                    // Drafts are optional: drop them before preempting anyone.
                    (n_spec, lookahead) = (0, 0);
                    continue;
                }
                let victim = self.running.pop().expect("the request itself is running");
                self.preempt(&victim);
                preempted_self = victim == id;
                out.preempted_req_ids.push(victim);
                if preempted_self {
                    break;
                }
            }
            if preempted_self {
                // It was the newest, so no running request is left to look at.
                break;
            }
            planned.push((id, n + n_spec, false, n_spec));
            budget -= n + n_spec;
            i += 1;
        }

        // Waiting requests, first come first served; none while memory is tight enough that
        // this step preempted, or the request just preempted would be readmitted at once.
        if out.preempted_req_ids.is_empty() {
            while budget > 0 && self.running.len() < self.config.max_num_seqs {
                let Some(id) = self.waiting.front().cloned() else { break };
                let req = &self.requests[&id];
                let (hits, num_hit_tokens) = self.kv.get_computed_blocks(req);
                let mut n = req.num_tokens() - num_hit_tokens;
                if n > budget {
                    // Without chunked prefill the request waits for a step with room, unless no
                    // step ever has room, which would leave it waiting forever.
                    if !self.config.enable_chunked_prefill && n <= self.config.max_num_batched_tokens {
                        break;
                    }
                    n = budget;
                }
                let lookahead = if num_hit_tokens + n == req.num_tokens() { self.lookahead(req, n) } else { 0 };
                if self.kv.allocate_slots(req, n + lookahead, &hits).is_none() {
                    // Strict FCFS: later requests do not overtake the head.
                    break;
                }
                self.waiting.pop_front();
                let req = self.requests.get_mut(&id).expect("waiting request is known");
                let first_time = req.status == RequestStatus::Waiting;
                req.status = RequestStatus::Running;
                req.num_computed_tokens = num_hit_tokens;
                req.num_cached_tokens.get_or_insert(num_hit_tokens);
                self.running.push(id.clone());
                planned.push((id, n, first_time, 0));
                budget -= n;
            }
        }

        out.scheduled = planned
            .into_iter()
            .map(|(id, n, first_time, n_spec)| {
                let req = &self.requests[&id];
                let start = req.num_computed_tokens;
                let mut token_ids = req.tokens(start, start + n - n_spec);
                let drafts = &req.spec_token_ids[..n_spec];
                token_ids.extend_from_slice(drafts);
                let sample = start + n - n_spec == req.num_tokens();
                let grammar_bitmasks = match self.grammars.get_mut(&id) {
                    Some(g) if sample => bitmasks_along(g.as_mut(), drafts),
                    _ => Vec::new(),
                };
                ScheduledRequest {
                    new: first_time.then(|| NewRequestData {
                        prompt_token_ids: req.prompt_token_ids.clone(),
                        params: req.params.clone(),
                    }),
                    token_ids,
                    num_spec_tokens: n_spec,
                    start_pos: start,
                    block_table: self.kv.block_table(&id).to_vec(),
                    sample,
                    grammar_bitmasks,
                    req_id: id,
                }
            })
            .collect();
        out.num_batched_tokens = self.config.max_num_batched_tokens - budget;
        if !out.scheduled.is_empty() {
            self.num_steps += 1;
        }
        out
    }

    /// KV slots to reserve past `n` scheduled tokens of `req` for a drafter that writes KV
    /// ahead (`num_lookahead_tokens`), never past what the request can ever hold, so that a
    /// request admitted as fitting the pool still fits with them.
    fn lookahead(&self, req: &Request, n: usize) -> usize {
        let want = self.config.num_lookahead_tokens;
        if want == 0 || req.params.disable_speculation {
            return 0;
        }
        let limit = max_len(req).saturating_sub(1);
        want.min(limit.saturating_sub(req.num_computed_tokens + n))
    }

    /// Gives back the request's blocks and puts it first in line to be recomputed.
    fn preempt(&mut self, id: &RequestId) {
        self.kv.free(id);
        let req = self.requests.get_mut(id).expect("preempting a known request");
        req.spec_token_ids.clear();
        req.status = RequestStatus::Preempted;
        req.num_computed_tokens = 0;
        req.num_preemptions += 1;
        self.num_preemptions += 1;
        self.waiting.push_front(id.clone());
    }

    /// Applies a step's result: advances computed tokens, appends sampled tokens, caches the
    /// blocks they filled, and finishes requests that hit a stop condition.
    ///
    /// Ready for speculative decoding: when a step scheduled draft tokens, the runner returns
    /// the accepted ones plus one, and positions past them count as not computed (their KV is
    /// overwritten later). Tokens after a stop are dropped.
    pub fn update_from_output(&mut self, out: &SchedulerOutput, runner: &ModelRunnerOutput) -> Vec<EngineCoreOutput> {
        let mut outputs = Vec::new();
        let mut finished: Vec<RequestId> = Vec::new();
        for (k, sched) in out.scheduled.iter().enumerate() {
            let Some(req) = self.requests.get_mut(&sched.req_id) else { continue }; // aborted meanwhile
            if req.status != RequestStatus::Running || req.num_computed_tokens != sched.start_pos {
                continue; // not the request this step was planned for (aborted, id reused)
            }
            let j = if runner.req_ids.get(k) == Some(&sched.req_id) {
                Some(k)
            } else {
                runner.req_ids.iter().position(|r| r == &sched.req_id)
            };
            // A chunk that ends mid-prompt samples nothing meaningful.
            let sampled: &[u32] = match j.and_then(|j| runner.sampled_token_ids.get(j)) {
                Some(s) if sched.sample => s,
                _ => &[],
            };
            let mut new_logprobs = j.and_then(|j| runner.logprobs.get(j).cloned()).flatten();
            let new_prompt_logprobs = j.and_then(|j| runner.prompt_logprobs.get(j).cloned()).flatten();

            if sched.num_spec_tokens > 0 && sched.sample {
                let accepted = sampled.len().saturating_sub(1).min(sched.num_spec_tokens);
                self.spec.num_drafts += 1;
                self.spec.num_draft_tokens += sched.num_spec_tokens as u64;
                self.spec.num_accepted_tokens += accepted as u64;
                if self.spec.accepted_per_pos.len() < sched.num_spec_tokens {
                    self.spec.accepted_per_pos.resize(sched.num_spec_tokens, 0);
                }
                for c in &mut self.spec.accepted_per_pos[..accepted] {
                    *c += 1;
                }
            }
            req.spec_token_ids = match j.and_then(|j| runner.spec_token_ids.get(j)) {
                Some(d) if sched.sample && !req.params.disable_speculation => d.clone(),
                _ => Vec::new(),
            };

            let mut new_token_ids = Vec::with_capacity(sampled.len());
            let mut finish_reason = None;
            for &t in sampled {
                req.output_token_ids.push(t);
                new_token_ids.push(t);
                finish_reason = check_stop(req);
                if finish_reason.is_some() {
                    break;
                }
            }
            // Computed: everything scheduled, except positions after the last token known now
            // (rejected drafts) and the newest token itself, which is fed in next step.
            req.num_computed_tokens = (sched.start_pos + sched.num_tokens()).min(req.num_tokens() - 1);
            self.kv.cache_full_blocks(req);

            if let Some(g) = self.grammars.get_mut(&req.id) {
                if !new_token_ids.is_empty() && !g.accept_tokens(&new_token_ids) {
                    // The runner sampled under this grammar's mask, so this means the grammar
                    // engine failed; end the request rather than emit unconstrained text.
                    finish_reason = finish_reason.or(Some(FinishReason::Stop));
                }
                // Jump-forward: tokens the grammar forces are appended now and computed next
                // step as one chunk, instead of one decode step each. Not for requests that want
                // logprobs, which only a forward pass per token can give honestly.
                let mut forced = Vec::new();
                if finish_reason.is_none()
                    && !new_token_ids.is_empty()
                    && self.config.jump_forward
                    && req.params.logprobs.is_none()
                {
                    forced = g.jump_forward();
                }
                for &t in &forced {
                    req.output_token_ids.push(t);
                    new_token_ids.push(t);
                    self.num_jump_forward_tokens += 1;
                    finish_reason = check_stop(req);
                    if finish_reason.is_some() {
                        break;
                    }
                }
                if !forced.is_empty() {
                    // Drafts were proposed before the forced tokens were known.
                    req.spec_token_ids.clear();
                    if let Some(lp) = &mut new_logprobs {
                        lp.truncate(sampled.len());
                    }
                } else if !req.spec_token_ids.is_empty() {
                    // Drafts the grammar rejects could never be accepted: verify only the rest.
                    let ok = g.validate_tokens(&req.spec_token_ids);
                    req.spec_token_ids.truncate(ok);
                }
            }

            if let Some(lp) = &mut new_logprobs {
                lp.truncate(new_token_ids.len());
            }
            if finish_reason.is_some() {
                self.grammars.remove(&req.id);
            }
            if let Some(reason) = finish_reason {
                req.status = RequestStatus::Finished(reason);
                finished.push(req.id.clone());
            }
            if !new_token_ids.is_empty() || finish_reason.is_some() || new_prompt_logprobs.is_some() {
                outputs.push(EngineCoreOutput {
                    req_id: req.id.clone(),
                    new_token_ids,
                    new_logprobs,
                    new_prompt_logprobs,
                    finish_reason,
                    num_cached_tokens: req.num_cached_tokens.unwrap_or(0),
                });
            }
        }
        if !finished.is_empty() {
            let done: HashSet<&RequestId> = finished.iter().collect();
            self.running.retain(|id| !done.contains(id));
            for id in &finished {
                self.kv.free(id);
                self.requests.remove(id);
            }
            self.finished_req_ids.extend(finished);
        }
        outputs
    }

    pub fn has_unfinished_requests(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Waiting requests, preempted ones included.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// An active (waiting or running) request.
    pub fn get_request(&self, id: &str) -> Option<&Request> {
        self.requests.get(id)
    }

    pub fn kv_cache(&self) -> &KvCacheManager {
        &self.kv
    }

    /// Forgets all cached prefixes; refused (false) while any request holds blocks.
    pub fn reset_prefix_cache(&mut self) -> bool {
        self.kv.reset_prefix_cache()
    }

    pub fn stats(&self) -> SchedulerStats {
        let prefix = self.kv.prefix_cache_stats();
        SchedulerStats {
            num_running: self.running.len(),
            num_waiting: self.waiting.len(),
            kv_cache_usage: self.kv.usage(),
            num_blocks: self.kv.num_blocks(),
            num_free_blocks: self.kv.num_free_blocks(),
            prefix_cache_queries: prefix.queries,
            prefix_cache_hits: prefix.hits,
            num_preemptions: self.num_preemptions,
            spec_num_drafts: self.spec.num_drafts,
            spec_num_draft_tokens: self.spec.num_draft_tokens,
            spec_num_accepted_tokens: self.spec.num_accepted_tokens,
            spec_num_accepted_tokens_per_pos: self.spec.accepted_per_pos.clone(),
            num_steps: self.num_steps,
            num_jump_forward_tokens: self.num_jump_forward_tokens,
        }
    }

    /// Checks the invariants in the type's doc comment and the KV manager's; panics on the
    /// first broken one. For tests: it walks every request and block.
    pub fn check_invariants(&self) {
        self.kv.check_invariants();
        assert!(self.running.len() <= self.config.max_num_seqs, "more running requests than max_num_seqs");
        assert_eq!(self.running.len() + self.waiting.len(), self.requests.len(), "request lost or duplicated");
        let bs = self.config.block_size;
        for id in &self.running {
            let req = &self.requests[id];
            assert_eq!(req.status, RequestStatus::Running, "request {id} in running");
            assert!(req.num_computed_tokens < req.num_tokens(), "running request {id} has nothing to compute");
            assert!(req.num_tokens() <= req.max_model_len, "request {id} outgrew the context");
            assert!(self.kv.block_table(id).len() * bs >= req.num_computed_tokens, "request {id} lacks blocks");
        }
        for id in &self.waiting {
            let req = &self.requests[id];
            assert!(matches!(req.status, RequestStatus::Waiting | RequestStatus::Preempted), "request {id} waiting");
            assert_eq!(req.num_computed_tokens, 0, "waiting request {id} has computed tokens");
            assert!(self.kv.block_table(id).is_empty(), "waiting request {id} holds blocks");
            assert!(req.spec_token_ids.is_empty(), "waiting request {id} holds draft tokens");
        }
    }
}

/// The allowed tokens at the position after the last known token and after each of `drafts`
/// (which the grammar has already validated), leaving the grammar where it was.
fn bitmasks_along(g: &mut dyn StructuredOutputGrammar, drafts: &[u32]) -> Vec<TokenBitmask> {
    let mut masks = Vec::with_capacity(drafts.len() + 1);
    masks.push(g.allowed_tokens());
    let mut advanced = 0;
    for &t in drafts {
        if !g.accept_tokens(&[t]) {
            break;
        }
        advanced += 1;
        masks.push(g.allowed_tokens());
    }
    if advanced > 0 {
        g.rollback(advanced);
    }
    masks
}

/// Why the request must stop after its newest token, if it must. Stop tokens and EOS count
/// only once `min_tokens` are out; length limits always apply.
fn check_stop(req: &Request) -> Option<FinishReason> {
    let params = &req.params;
    let num_output = req.output_token_ids.len();
    let last = *req.output_token_ids.last()?;
    if num_output >= params.min_tokens
        && ((!params.ignore_eos && req.eos_token_ids.contains(&last)) || params.stop_token_ids.contains(&last))
    {
        return Some(FinishReason::Stop);
    }
    if params.max_tokens.is_some_and(|m| num_output >= m) || req.num_tokens() >= req.max_model_len {
        return Some(FinishReason::Length);
    }
    None
}
