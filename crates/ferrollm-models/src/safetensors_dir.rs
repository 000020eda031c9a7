//! A Hugging Face model directory: `config.json` plus one or more `*.safetensors` files.
//!
//! Tensors are served under GGUF names (see [`gguf_name`]) so the model code has one naming
//! scheme. Q/K weights are passed through untouched: Hugging Face keeps them in the half-split
//! RoPE order, which [`crate::ModelConfig::from_hf_config`] selects as `RopeStyle::NeoX`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferrollm_kernels::{Backing, Bytes, DType};
use safetensors::{Dtype, SafeTensors};

use crate::mapped::MappedFile;
use crate::{ModelConfig, ModelError, TensorData, WeightSource};

struct Entry {
    file: usize,
    hf_name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    len: usize,
}

pub struct SafetensorsDir {
    dir: PathBuf,
    config: ModelConfig,
    files: Vec<(PathBuf, Arc<MappedFile>)>,
    /// Keyed by GGUF name.
    tensors: HashMap<String, Entry>,
}

impl std::fmt::Debug for SafetensorsDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsDir")
            .field("dir", &self.dir)
            .field("files", &self.files.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.display().to_string(), source }
}

impl SafetensorsDir {
    /// Reads `dir/config.json` and maps every `*.safetensors` file in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<SafetensorsDir, ModelError> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::BadConfig(format!("{} is not valid JSON: {e}", config_path.display())))?;
        let mut config = ModelConfig::from_hf_config(&json)?;

        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            return Err(ModelError::BadSafetensors {
                path: dir.display().to_string(),
                reason: "no *.safetensors files in the directory".into(),
            });
        }
        paths.sort();

        let mut files = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (file_idx, path) in paths.iter().enumerate() {
            let map = map_file(path)?;
            let bad = |reason: String| ModelError::BadSafetensors { path: path.display().to_string(), reason };
            let data: &[u8] = (*map).as_ref();
            let (header_len, meta) =
                SafeTensors::read_metadata(data).map_err(|e| bad(format!("invalid safetensors header: {e}")))?;
            let base = 8usize.checked_add(header_len).ok_or_else(|| bad("header length overflows".into()))?;
            for (hf_name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                let start = base.checked_add(s).ok_or_else(|| bad(format!("tensor '{hf_name}' offset overflows")))?;
                let len = e.checked_sub(s).ok_or_else(|| bad(format!("tensor '{hf_name}' has end before start")))?;
                if start.checked_add(len).is_none_or(|end| end > data.len()) {
                    return Err(bad(format!("tensor '{hf_name}' data lies outside the file")));
                }
                let name = gguf_name(&hf_name).unwrap_or_else(|| hf_name.clone());
                let entry = Entry { file: file_idx, hf_name, dtype: info.dtype, shape: info.shape.clone(), start, len };
                if let Some(prev) = tensors.insert(name.clone(), entry) {
                    return Err(bad(format!(
                        "tensor '{}' appears twice (also in {})",
                        prev.hf_name,
                        paths[prev.file].display()
                    )));
                }
            }
            files.push((path.clone(), map));
        }

        // Checkpoints that tie the head often omit `tie_word_embeddings` and rely on a model
        // class default, so an absent head means tied whatever the config says.
        if !tensors.contains_key("output.weight") {
            config.tie_word_embeddings = true;
        }
        Ok(SafetensorsDir { dir: dir.to_path_buf(), config, files, tensors })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// GGUF names of every tensor, in no particular order.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}

fn map_file(path: &Path) -> Result<Arc<MappedFile>, ModelError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    Ok(Arc::new(MappedFile::map(&file).map_err(io_err(path))?))
}

fn dtype_of(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

impl WeightSource for SafetensorsDir {
    fn tensor(&self, name: &str) -> Result<TensorData, ModelError> {
        let e = self.tensors.get(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let dtype = dtype_of(e.dtype).ok_or_else(|| ModelError::UnsupportedTensorType {
            name: e.hf_name.clone(),
            dtype: format!("{:?}", e.dtype),
        })?;
        let (path, owner) = &self.files[e.file];
        let owner: Arc<dyn Backing> = owner.clone();
        let bytes = Bytes::new(owner, e.start, e.len).ok_or_else(|| ModelError::BadSafetensors {
            path: path.display().to_string(),
            reason: format!("tensor '{}' data lies outside the file", e.hf_name),
        })?;
        Ok(TensorData { name: name.to_string(), dtype, shape: e.shape.clone(), bytes })
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Maps a Hugging Face Llama/Mistral/Qwen2 tensor name to llama.cpp's GGUF name; `None` for
/// names with no GGUF counterpart (they stay reachable under their own name).
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (module, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let gguf = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::gguf_name;

    #[test]
    fn maps_hf_names() {
        let cases = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
            ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"),
            ("model.layers.12.self_attn.k_proj.bias", "blk.12.attn_k.bias"),
            ("model.layers.3.self_attn.v_proj.bias", "blk.3.attn_v.bias"),
            ("model.layers.3.self_attn.o_proj.weight", "blk.3.attn_output.weight"),
            ("model.layers.3.mlp.gate_proj.weight", "blk.3.ffn_gate.weight"),
            ("model.layers.3.mlp.up_proj.weight", "blk.3.ffn_up.weight"),
            ("model.layers.3.mlp.down_proj.weight", "blk.3.ffn_down.weight"),
            ("model.layers.3.input_layernorm.weight", "blk.3.attn_norm.weight"),
            ("model.layers.3.post_attention_layernorm.weight", "blk.3.ffn_norm.weight"),
        ];
        for (hf, want) in cases {
            assert_eq!(gguf_name(hf).as_deref(), Some(want), "{hf}");
        }
        assert_eq!(gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq"), None);
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
    }
}
