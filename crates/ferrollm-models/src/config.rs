//! Architecture hyper-parameters, read from GGUF metadata or a Hugging Face config.json.

use ferrollm_kernels::ops::RopeStyle;

use crate::gguf::GgufFile;
use crate::{ModelError, WeightSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, Mistral, SmolLM: no attention biases.
    Llama,
    /// Qwen2: biases on q, k and v.
    Qwen2,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    /// The context length the model was trained for.
    pub max_position_embeddings: usize,
    /// The output head reuses `token_embd.weight` when `output.weight` is absent.
    pub tie_word_embeddings: bool,
}

impl ModelConfig {
    /// Reads the hyper-parameters llama.cpp stores under `{general.architecture}.*`.
    ///
    /// `llama`/`mistral` GGUFs get [`RopeStyle::Interleaved`] because llama.cpp's converter
    /// permutes their Q/K rows into interleaved pairs; `qwen2` GGUFs are not permuted and keep
    /// Hugging Face's half-split [`RopeStyle::NeoX`] order.
    pub fn from_gguf(gguf: &GgufFile) -> Result<ModelConfig, ModelError> {
        let arch_name = gguf.architecture()?;
        let (architecture, rope_style) = match arch_name {
            "llama" | "mistral" => (Architecture::Llama, RopeStyle::Interleaved),
            "qwen2" => (Architecture::Qwen2, RopeStyle::NeoX),
            other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        };
        let key = |k: &str| format!("{arch_name}.{k}");

        let hidden_size = gguf.require_usize(&key("embedding_length"))?;
        let num_heads = gguf.require_usize(&key("attention.head_count"))?;
        let num_kv_heads = gguf.get_usize(&key("attention.head_count_kv"))?.unwrap_or(num_heads);
        if num_heads == 0 {
            return Err(ModelError::BadConfig(format!("{} is 0", key("attention.head_count"))));
        }
        // llama.cpp: head size is attention.key_length when present, else n_embd / n_head.
        // rope.dimension_count is the rotated width, equal to the head size for every
        // architecture we support, so it serves as a fallback too.
        let head_dim = match gguf.get_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None => match gguf.get_usize(&key("rope.dimension_count"))? {
                Some(d) => d,
                None => hidden_size / num_heads,
            },
        };

        let vocab_size = match gguf.tensor_info("token_embd.weight") {
            Some(t) if t.shape.len() == 2 => t.shape[0],
            _ => match gguf.get_str_array("tokenizer.ggml.tokens")? {
                Some(tokens) => tokens.len(),
                None => gguf.require_usize(&key("vocab_size"))?,
            },
        };

        let config = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: gguf.require_usize(&key("feed_forward_length"))?,
            num_layers: gguf.require_usize(&key("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: gguf.require_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: gguf.get_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_style,
            max_position_embeddings: gguf.require_usize(&key("context_length"))?,
            tie_word_embeddings: !gguf.has("output.weight"),
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads a Hugging Face `config.json`.
    ///
    /// Hugging Face checkpoints keep Q/K in the order their RoPE implementation expects, which
    /// is the half-split layout, so every architecture here uses [`RopeStyle::NeoX`].
    pub fn from_hf_config(json: &serde_json::Value) -> Result<ModelConfig, ModelError> {
        let obj = json.as_object().ok_or_else(|| ModelError::BadConfig("config.json is not a JSON object".into()))?;
        let model_type = obj
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ModelError::BadConfig("config.json has no string 'model_type'".into()))?;
        let architecture = match model_type {
            "llama" | "mistral" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        };
        let usize_key = |k: &str| -> Result<Option<usize>, ModelError> {
            match obj.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v.as_u64().and_then(|n| usize::try_from(n).ok()).map(Some).ok_or_else(|| {
                    ModelError::BadConfig(format!("config.json '{k}' must be a non-negative integer, got {v}"))
                }),
            }
        };
        let req = |k: &str| -> Result<usize, ModelError> {
            usize_key(k)?.ok_or_else(|| ModelError::BadConfig(format!("config.json is missing '{k}'")))
        };
        let f32_key = |k: &str| -> Result<Option<f32>, ModelError> {
            match obj.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(|x| Some(x as f32))
                    .ok_or_else(|| ModelError::BadConfig(format!("config.json '{k}' must be a number, got {v}"))),
            }
        };

        let hidden_size = req("hidden_size")?;
        let num_heads = req("num_attention_heads")?;
        if num_heads == 0 {
            return Err(ModelError::BadConfig("config.json 'num_attention_heads' is 0".into()));
        }
        let tie_word_embeddings = match obj.get("tie_word_embeddings") {
            None | Some(serde_json::Value::Null) => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                ModelError::BadConfig(format!("config.json 'tie_word_embeddings' must be a bool, got {v}"))
            })?,
        };
        let config = ModelConfig {
            architecture,
            vocab_size: req("vocab_size")?,
            hidden_size,
            intermediate_size: req("intermediate_size")?,
            num_layers: req("num_hidden_layers")?,
            num_heads,
            num_kv_heads: usize_key("num_key_value_heads")?.unwrap_or(num_heads),
            head_dim: usize_key("head_dim")?.unwrap_or(hidden_size / num_heads),
            rms_norm_eps: f32_key("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: f32_key("rope_theta")?.unwrap_or(10_000.0),
            rope_style: RopeStyle::NeoX,
            max_position_embeddings: req("max_position_embeddings")?,
            tie_word_embeddings,
        };
        config.validate()?;
        Ok(config)
    }

    /// Rejects configs the model code would otherwise trip over with an index panic.
    fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::BadConfig(m));
        if self.hidden_size == 0 || self.num_layers == 0 || self.intermediate_size == 0 || self.vocab_size == 0 {
            return bad(format!(
                "hidden size {}, layers {}, intermediate size {} and vocab size {} must all be non-zero",
                self.hidden_size, self.num_layers, self.intermediate_size, self.vocab_size
            ));
        }
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "{} attention heads cannot be shared by {} KV heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dimension {} must be even and non-zero for RoPE", self.head_dim));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(format!("rms_norm_eps {} must be positive", self.rms_norm_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rope theta {} must be positive", self.rope_theta));
        }
        Ok(())
    }
}
