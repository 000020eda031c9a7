//! Engine configuration, with vLLM's names.

use std::path::PathBuf;

/// Default KV-cache budget when none is given: enough for tens of thousands of tokens on the
/// small models we target, without crowding a 24 GiB machine.
pub const DEFAULT_KV_CACHE_MEMORY: usize = 1 << 30;

/// Default token budget of one step. On a CPU a step's time grows with its tokens, and running
/// requests' next tokens wait for the whole step: 512 prompt tokens of a 135M model take about
/// 2.5 s on two cores, 2048 (vLLM's GPU default) about 10 s, which stalls every decode behind
/// a long prompt. Prefill throughput is the same either way (a step streams the weights once
/// whether it holds 512 or 2048 tokens, and both are far past the matmul tile sizes).
pub const DEFAULT_MAX_NUM_BATCHED_TOKENS: usize = 512;

#[derive(Debug, Clone)]
pub struct EngineArgs {
    /// A GGUF file or a Hugging Face directory.
    pub model: PathBuf,
    /// Name reported by the API; defaults to the file or directory name.
    pub served_model_name: Option<String>,
    /// Context length; defaults to the model's own.
    pub max_model_len: Option<usize>,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub block_size: usize,
    /// Bytes for the KV pool.
    pub kv_cache_memory: usize,
    pub enable_prefix_caching: bool,
    pub enable_chunked_prefill: bool,
    /// A Jinja file overriding the model's chat template.
    pub chat_template: Option<String>,
    /// Requests admitted but not yet finished beyond which new ones are refused (HTTP 503).
    pub max_pending_requests: usize,
    /// Speculative decoding (`--speculative-config`); off when `None`.
    pub speculative_config: Option<crate::SpeculativeConfig>,
    /// Structured outputs: append the tokens a grammar forces in one step (jump-forward).
    pub jump_forward: bool,
}

impl EngineArgs {
    pub fn new(model: impl Into<PathBuf>) -> EngineArgs {
        EngineArgs {
            model: model.into(),
            served_model_name: None,
            max_model_len: None,
            max_num_seqs: 256,
            max_num_batched_tokens: DEFAULT_MAX_NUM_BATCHED_TOKENS,
            block_size: 16,
            kv_cache_memory: DEFAULT_KV_CACHE_MEMORY,
            enable_prefix_caching: true,
            enable_chunked_prefill: true,
            chat_template: None,
            max_pending_requests: 4096,
            speculative_config: None,
            jump_forward: true,
        }
    }
}

impl From<&str> for EngineArgs {
    fn from(model: &str) -> Self {
        EngineArgs::new(model)
    }
}

impl From<PathBuf> for EngineArgs {
    fn from(model: PathBuf) -> Self {
        EngineArgs::new(model)
    }
}

impl From<&std::path::Path> for EngineArgs {
    fn from(model: &std::path::Path) -> Self {
        EngineArgs::new(model)
    }
}
