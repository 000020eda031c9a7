//! Weight matrices as the kernels see them: rows of blocks in one of the [`DType`] layouts.

use std::sync::Arc;

use crate::{quant, DType, KernelError, ThreadPool};

/// A shared, immutable byte range: a slice of a memory-mapped file or an owned buffer.
#[derive(Clone)]
pub struct Bytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    offset: usize,
    len: usize,
}

impl Bytes {
    /// A view of `owner[offset..offset + len]`; `None` if the range falls outside it.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, offset: usize, len: usize) -> Option<Bytes> {
        let end = offset.checked_add(len)?;
        if end > (*owner).as_ref().len() {
            return None;
        }
        Some(Bytes { owner, offset, len })
    }

    pub fn from_vec(v: Vec<u8>) -> Bytes {
        let len = v.len();
        Bytes { owner: Arc::new(v), offset: 0, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.offset..self.offset + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.len)
    }
}

/// A `[rows, cols]` weight matrix, row-major, each row a run of `dtype` blocks.
///
/// Rows are output features and columns input features, as GGUF stores them
/// (`ne0 = cols`), so `y = x · Wᵀ` reads each row once per step.
#[derive(Clone, Debug)]
pub struct QMatrix {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    data: Bytes,
}

impl QMatrix {
    pub fn new(dtype: DType, rows: usize, cols: usize, data: Bytes) -> Result<QMatrix, KernelError> {
        if !cols.is_multiple_of(dtype.block_size()) {
            return Err(KernelError::BadRowLength { dtype: dtype.name(), cols, block: dtype.block_size() });
        }
        let need = dtype.row_bytes(cols) * rows;
        if data.len() != need {
            return Err(KernelError::BadDataLength { dtype: dtype.name(), rows, cols, have: data.len(), need });
        }
        Ok(QMatrix { dtype, rows, cols, data })
    }

    /// An f32 matrix from row-major values.
    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> QMatrix {
        assert_eq!(values.len(), rows * cols);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        QMatrix { dtype: DType::F32, rows, cols, data: Bytes::from_vec(bytes) }
    }

    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.cols)
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// The raw blocks of row `i`.
    pub fn row(&self, i: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.bytes()[i * rb..(i + 1) * rb]
    }

    /// Writes row `i` as f32 into `out` (`cols` long); used for embedding lookups.
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        quant::dequantize_row(self.dtype, self.row(i), out);
    }

    /// The whole matrix as f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (i, chunk) in out.chunks_mut(self.cols).enumerate() {
            self.dequantize_row(i, chunk);
        }
        out
    }

    /// `out[t, r] = Σ_c x[t, c] · W[r, c]` for `n` input rows: `x` is `[n, cols]`, `out` is `[n, rows]`.
    pub fn matmul(&self, pool: &ThreadPool, x: &[f32], n: usize, out: &mut [f32]) {
        assert_eq!(x.len(), n * self.cols, "matmul input shape");
        assert_eq!(out.len(), n * self.rows, "matmul output shape");
        quant::matmul(pool, self, x, n, out);
    }
}
