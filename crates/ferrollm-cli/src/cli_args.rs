//! Command-line flags shared by the subcommands, named as vLLM names them.

use anyhow::{bail, Result};
use clap::Args;
use ferrollm_engine::EngineArgs;

#[derive(Args, Debug, Clone)]
pub struct EngineFlags {
    /// Context length (defaults to the model's).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Most sequences in one step.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Token budget of one step; longer prompts are prefilled in chunks.
    #[arg(long, default_value_t = ferrollm_engine::args::DEFAULT_MAX_NUM_BATCHED_TOKENS)]
    pub max_num_batched_tokens: usize,
    /// Tokens per KV-cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Memory for the KV cache, e.g. 1GiB, 512MiB or a byte count.
    #[arg(long, default_value = "1GiB")]
    pub kv_cache_memory: String,
    /// Turn automatic prefix caching off.
    #[arg(long)]
    pub no_enable_prefix_caching: bool,
    /// Turn chunked prefill off (a prompt then waits for a step with room for all of it).
    #[arg(long)]
    pub no_enable_chunked_prefill: bool,
    /// Jinja file overriding the model's chat template.
    #[arg(long)]
    pub chat_template: Option<String>,
    /// Model name reported by the API.
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Compute threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Requests pending at once before new ones get HTTP 503.
    #[arg(long, default_value_t = 4096)]
    pub max_pending_requests: usize,
    /// Speculative decoding as JSON, e.g.
    /// '{"method":"ngram","num_speculative_tokens":4,"prompt_lookup_min":2,"prompt_lookup_max":5}'
    /// '{"method":"layer_skip","draft_layers":8,"num_speculative_tokens":3}'
    /// or '{"method":"draft_model","model":"draft.gguf","num_speculative_tokens":3}'
    /// (a same-vocabulary draft, e.g. from `ferrollm cut-layers`).
    #[arg(long)]
    pub speculative_config: Option<String>,
    /// Structured outputs: sample every token, even those a grammar forces (turns
    /// jump-forward off, for comparison).
    #[arg(long)]
    pub no_jump_forward: bool,
}

/// Parses `1GiB`, `512MiB`, `2G`, `1000000`.
pub fn parse_bytes(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = match num.parse() {
        Ok(v) => v,
        Err(_) => bail!("'{s}' is not a size: use e.g. 1GiB, 512MiB or a byte count"),
    };
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("unknown size unit '{other}' in '{s}': use KiB, MiB or GiB"),
    };
    Ok((v * mult) as usize)
}

impl EngineFlags {
    pub fn to_engine_args(&self, model: std::path::PathBuf) -> Result<EngineArgs> {
        if let Some(t) = self.threads {
            if t == 0 {
                bail!("--threads must be at least 1");
            }
            std::env::set_var("FERROLLM_NUM_THREADS", t.to_string());
        }
        if self.block_size == 0 || self.max_num_seqs == 0 || self.max_num_batched_tokens == 0 {
            bail!("--block-size, --max-num-seqs and --max-num-batched-tokens must be at least 1");
        }
        let mut a = EngineArgs::new(model);
        a.max_model_len = self.max_model_len;
        a.max_num_seqs = self.max_num_seqs;
        a.max_num_batched_tokens = self.max_num_batched_tokens;
        a.block_size = self.block_size;
        a.kv_cache_memory = parse_bytes(&self.kv_cache_memory)?;
        a.enable_prefix_caching = !self.no_enable_prefix_caching;
        a.enable_chunked_prefill = !self.no_enable_chunked_prefill;
        a.chat_template = self.chat_template.clone();
        a.served_model_name = self.served_model_name.clone();
        a.max_pending_requests = self.max_pending_requests;
        a.jump_forward = !self.no_jump_forward;
        a.speculative_config = match &self.speculative_config {
            Some(json) => Some(ferrollm_engine::SpeculativeConfig::parse(json).map_err(anyhow::Error::msg)?),
            None => None,
        };
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3XB").is_err());
    }
}
