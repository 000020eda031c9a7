//! Opens a model path: a GGUF file, or a Hugging Face directory with config.json.

use std::path::Path;
use std::sync::Arc;

use ferrollm_kernels::Backend;

use crate::gguf::GgufFile;
use crate::safetensors_dir::SafetensorsDir;
use crate::{LlamaModel, ModelConfig, ModelError, Tokenizer};

pub struct LoadedModel {
    pub model: LlamaModel,
    pub tokenizer: Tokenizer,
    /// What was loaded, for logs and `/v1/models`.
    pub description: String,
}

/// Loads weights, config and tokenizer from `path`.
pub fn load_model(path: &Path, backend: Arc<dyn Backend>) -> Result<LoadedModel, ModelError> {
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(ModelError::Io {
            path: shown,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    if path.is_dir() {
        let dir = SafetensorsDir::open(path)?;
        let config = dir.config().clone();
        let tokenizer = Tokenizer::from_hf_dir(path)?;
        let model = LlamaModel::load(config, &dir, backend)?;
        Ok(LoadedModel { model, tokenizer, description: format!("{shown} (safetensors)") })
    } else {
        let gguf = GgufFile::open(path)?;
        let config = ModelConfig::from_gguf(&gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let model = LlamaModel::load(config, &gguf, backend)?;
        Ok(LoadedModel { model, tokenizer, description: format!("{shown} (GGUF)") })
    }
}
