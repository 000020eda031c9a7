//! What flows back up: the runner's sampled tokens, and the core's per-request deltas.

use crate::{FinishReason, RequestId};

/// A token with its log-probability and rank (1 = most likely) under the model.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
    pub rank: usize,
}

/// The chosen token's log-probability plus the top alternatives at one position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub chosen: TokenLogprob,
    /// Most likely first.
    pub top: Vec<TokenLogprob>,
}

/// The runner's result for one step, in the order of `SchedulerOutput::scheduled`.
#[derive(Debug, Clone, Default)]
pub struct ModelRunnerOutput {
    pub req_ids: Vec<RequestId>,
    /// Tokens sampled per request this step; empty for a prefill chunk that ends mid-prompt.
    pub sampled_token_ids: Vec<Vec<u32>>,
    /// Per sampled token, when the request asked for logprobs.
    pub logprobs: Vec<Option<Vec<TokenLogprobs>>>,
    /// Logprobs of the prompt tokens computed this step (position 0 has none), when asked for.
    pub prompt_logprobs: Vec<Option<Vec<TokenLogprobs>>>,
    /// Draft tokens proposed for each request's next step (speculative decoding); may be
    /// shorter than `req_ids` or empty when nothing is proposed.
    pub spec_token_ids: Vec<Vec<u32>>,
}

/// One request's news after a step.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineCoreOutput {
    pub req_id: RequestId,
    pub new_token_ids: Vec<u32>,
    pub new_logprobs: Option<Vec<TokenLogprobs>>,
    pub new_prompt_logprobs: Option<Vec<TokenLogprobs>>,
    pub finish_reason: Option<FinishReason>,
    /// Prompt tokens served from the prefix cache at first schedule.
    pub num_cached_tokens: usize,
}
