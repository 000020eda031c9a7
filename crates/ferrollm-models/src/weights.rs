//! Where a model's tensors come from, independent of file format.
//!
//! Names are GGUF's (`token_embd.weight`, `blk.3.attn_q.weight`, `output_norm.weight`, ...);
//! the safetensors loader maps Hugging Face names onto them.

use ferrollm_kernels::{Bytes, DType, QMatrix};

use crate::ModelError;

/// One tensor's raw bytes and layout. `shape` is row-major, outermost first: a weight matrix
/// is `[out_features, in_features]`, a norm weight `[dim]`.
#[derive(Clone, Debug)]
pub struct TensorData {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Bytes,
}

impl TensorData {
    /// As a `[rows, cols]` matrix; a 1-D tensor becomes one row.
    pub fn into_matrix(self) -> Result<QMatrix, ModelError> {
        let (rows, cols) = match self.shape.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            other => {
                return Err(ModelError::BadShape { name: self.name, got: other.to_vec(), want: vec![0, 0] });
            }
        };
        Ok(QMatrix::new(self.dtype, rows, cols, self.bytes)?)
    }

    /// Dequantized values, row-major.
    pub fn to_f32(&self) -> Result<Vec<f32>, ModelError> {
        Ok(self.clone().into_matrix()?.to_f32())
    }
}

pub trait WeightSource: Send + Sync {
    /// The tensor named `name` (GGUF naming), or `ModelError::MissingTensor`.
    fn tensor(&self, name: &str) -> Result<TensorData, ModelError>;
    fn has(&self, name: &str) -> bool;
}
