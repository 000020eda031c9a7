//! A request as the engine core tracks it.

use std::sync::Arc;

use crate::SamplingParams;

pub type RequestId = String;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token id, or a stop string.
    Stop,
    /// max_tokens or the model's context length.
    Length,
    /// Cancelled by the client.
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    Waiting,
    Running,
    /// Gave its blocks back under memory pressure; waits to be recomputed.
    Preempted,
    Finished(FinishReason),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub id: RequestId,
    pub prompt_token_ids: Vec<u32>,
    pub output_token_ids: Vec<u32>,
    pub params: Arc<SamplingParams>,
    /// Token ids that end generation unless `ignore_eos` (the model's end-of-generation set).
    pub eos_token_ids: Vec<u32>,
    /// Most tokens (prompt + output) the request may hold: the model's context length.
    pub max_model_len: usize,
    pub status: RequestStatus,
    /// Tokens whose KV is in the cache (computed or served from the prefix cache).
    pub num_computed_tokens: usize,
    /// Prompt tokens found in the prefix cache when first scheduled; reported as usage.
    pub num_cached_tokens: Option<usize>,
    pub num_preemptions: usize,
    /// Mixed into block hashes so that KV which differs for the same tokens (a LoRA adapter,
    /// a cache salt) never aliases.
    pub cache_salt: Option<String>,
    /// Draft tokens proposed after the last step (speculative decoding), scheduled with the
    /// next one for the target model to verify. Cleared on preemption.
    pub spec_token_ids: Vec<u32>,
}

impl Request {
    pub fn new(id: impl Into<RequestId>, prompt_token_ids: Vec<u32>, params: Arc<SamplingParams>) -> Request {
        Request {
            id: id.into(),
            prompt_token_ids,
            output_token_ids: Vec::new(),
            params,
            eos_token_ids: Vec::new(),
            max_model_len: usize::MAX,
            status: RequestStatus::Waiting,
            num_computed_tokens: 0,
            num_cached_tokens: None,
            num_preemptions: 0,
            cache_salt: None,
            spec_token_ids: Vec::new(),
        }
    }

    /// Prompt plus generated tokens.
    pub fn num_tokens(&self) -> usize {
        self.prompt_token_ids.len() + self.output_token_ids.len()
    }

    /// Token at absolute position `i` (prompt first, then output).
    pub fn token_at(&self, i: usize) -> u32 {
        let p = self.prompt_token_ids.len();
        if i < p {
            self.prompt_token_ids[i]
        } else {
            self.output_token_ids[i - p]
        }
    }

    /// Tokens `start..end` of prompt-then-output.
    pub fn tokens(&self, start: usize, end: usize) -> Vec<u32> {
        (start..end).map(|i| self.token_at(i)).collect()
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.status, RequestStatus::Finished(_))
    }
}
