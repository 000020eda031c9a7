//! The scheduler's decision for one step, which the model runner executes.

use std::sync::Arc;

use crate::{RequestId, SamplingParams, TokenBitmask};

/// What the runner must remember about a request it has not seen before.
#[derive(Debug, Clone)]
pub struct NewRequestData {
    pub prompt_token_ids: Vec<u32>,
    pub params: Arc<SamplingParams>,
}

/// One request's share of a step.
#[derive(Debug, Clone)]
pub struct ScheduledRequest {
    pub req_id: RequestId,
    /// Set the first time the request is scheduled (not on resume after preemption: the runner
    /// keeps a request's state, its seeded generator included, until it finishes).
    pub new: Option<NewRequestData>,
    /// Tokens to compute this step, at positions `start_pos..start_pos + token_ids.len()`.
    /// The last `num_spec_tokens` of them are draft tokens to verify.
    pub token_ids: Vec<u32>,
    /// Draft (speculative) tokens at the end of `token_ids`; nonzero only when `sample`.
    pub num_spec_tokens: usize,
    pub start_pos: usize,
    /// Physical block ids holding positions `0..`, covering at least `start_pos + token_ids.len()`
    /// (plus the scheduler's lookahead slots, when it reserves them).
    pub block_table: Vec<u32>,
    /// The step reaches the last known token, so a next token is sampled. False for prefill
    /// chunks that stop mid-prompt.
    pub sample: bool,
    /// Structured outputs: the tokens allowed at each sampled position (the last known token,
    /// then each draft token), or empty when the request is unconstrained. May be shorter than
    /// the sampled positions when the grammar rejects a draft; positions past it allow nothing.
    pub grammar_bitmasks: Vec<TokenBitmask>,
}

impl ScheduledRequest {
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }
}

#[derive(Debug, Clone, Default)]
pub struct SchedulerOutput {
    /// In batch order: running requests first, then newly admitted ones.
    pub scheduled: Vec<ScheduledRequest>,
    pub num_batched_tokens: usize,
    /// Requests that finished or were aborted since the last step; the runner drops their state.
    pub finished_req_ids: Vec<RequestId>,
    /// Requests preempted while building this step.
    pub preempted_req_ids: Vec<RequestId>,
}

impl SchedulerOutput {
    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }
}
