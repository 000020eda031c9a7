//! Models for ferrollm: weight loaders (GGUF, safetensors), configs, tokenizers, architectures.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod config;
pub mod error;
pub mod gguf;
pub mod llama;
pub mod loader;
mod mapped;
pub mod safetensors_dir;
pub mod tokenizer;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use error::ModelError;
pub use llama::{ForwardBatch, KvCache, LlamaModel, SeqSlice};
pub use loader::{load_model, LoadedModel};
pub use tokenizer::Tokenizer;
pub use weights::{TensorData, WeightSource};
