//! Limits the scheduler works under.

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Most requests in one step.
    pub max_num_seqs: usize,
    /// Most tokens computed in one step (the token budget); long prompts are chunked to fit.
    pub max_num_batched_tokens: usize,
    /// Most tokens a request may hold (prompt + output).
    pub max_model_len: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks in the KV pool.
    pub num_blocks: usize,
    pub enable_prefix_caching: bool,
    /// Split prompts across steps when they exceed the budget; when false, a prompt that does
    /// not fit the remaining budget waits for the next step.
    pub enable_chunked_prefill: bool,
    /// KV slots to reserve past each sampling step's tokens, for a drafter that writes KV
    /// for the draft positions before they are scheduled (layer-skip self-drafting). 0 for
    /// proposers that compute nothing (n-gram lookup).
    pub num_lookahead_tokens: usize,
    /// Structured outputs: append the tokens a grammar forces in one step (jump-forward)
    /// instead of sampling them one by one.
    pub jump_forward: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            max_model_len: 8192,
            block_size: 16,
            num_blocks: 1024,
            enable_prefix_caching: true,
            enable_chunked_prefill: true,
            num_lookahead_tokens: 0,
            jump_forward: true,
        }
    }
}
