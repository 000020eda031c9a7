//! Errors from loading or running a model; each says what to fix.

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a valid GGUF file: {reason}")]
    BadGguf { path: String, reason: String },
    #[error("{path}: {reason}")]
    BadSafetensors { path: String, reason: String },
    #[error("invalid model config: {0}")]
    BadConfig(String),
    #[error("unsupported architecture '{0}' (supported: llama, mistral, qwen2)")]
    UnsupportedArchitecture(String),
    #[error("tensor '{name}' has type {dtype}, which ferrollm cannot load yet")]
    UnsupportedTensorType { name: String, dtype: String },
    #[error("tensor '{0}' is missing from the model")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {got:?}, expected {want:?}")]
    BadShape { name: String, got: Vec<usize>, want: Vec<usize> },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    /// A tool was asked for something this model cannot give (e.g. cutting more layers than it has).
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Kernel(#[from] ferrollm_kernels::KernelError),
}
