//! Weight matrices as the kernels see them: rows of blocks in one of the [`DType`] layouts.

use std::sync::Arc;

use crate::{quant, DType, KernelError, ThreadPool};

/// The memory behind [`Bytes`]: an owned buffer or a file mapping.
pub trait Backing: AsRef<[u8]> + Send + Sync {
    /// Says `range` will not be read for a while: a file mapping gives those pages back (a later
    /// read faults the same bytes in again from the file); owned memory keeps them.
    fn release(&self, _range: std::ops::Range<usize>) {}
}

impl Backing for Vec<u8> {}

/// A shared, immutable byte range: a slice of a memory-mapped file or an owned buffer.
#[derive(Clone)]
pub struct Bytes {
    owner: Arc<dyn Backing>,
    offset: usize,
    len: usize,
}

impl Bytes {
    /// A view of `owner[offset..offset + len]`; `None` if the range falls outside it.
    pub fn new(owner: Arc<dyn Backing>, offset: usize, len: usize) -> Option<Bytes> {
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

    /// [`Backing::release`] for this range.
    pub fn release(&self) {
        self.owner.release(self.offset..self.offset + self.len);
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.len)
    }
}

/// How a matrix's blocks are arranged in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// GGUF's: row after row, each a run of `dtype` blocks.
    Rows,
    /// Groups of eight rows interleaved block by block ([`quant::x8`]), made at load time for
    /// the formats whose matmul kernels read this faster.
    Interleaved8,
}

/// A `[rows, cols]` weight matrix of `dtype` blocks, in one of the [`Layout`]s.
///
/// Rows are output features and columns input features, as GGUF stores them
/// (`ne0 = cols`), so `y = x · Wᵀ` reads each row once per step.
#[derive(Clone, Debug)]
pub struct QMatrix {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    data: Bytes,
    layout: Layout,
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
        Ok(QMatrix { dtype, rows, cols, data, layout: Layout::Rows })
    }

    /// The same matrix in the layout its matmul kernels read fastest: eight rows interleaved
    /// for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K when the rows split into groups of eight; unchanged
    /// otherwise. Costs one pass over the weights at load time and the same bytes of memory: the
    /// source range is [released](Bytes::release), so a file mapping's pages leave the resident
    /// set (an embedding that shares them faults back in only the rows it reads).
    /// `FERROLLM_NO_REPACK=1` turns it off, for comparisons.
    pub fn prepared_for_matmul(self) -> QMatrix {
        use quant::x8;
        if self.layout != Layout::Rows
            || !self.rows.is_multiple_of(x8::ROWS)
            || std::env::var_os("FERROLLM_NO_REPACK").is_some_and(|v| v != "0")
        {
            return self;
        }
        let (b, r) = (self.bytes(), self.rows);
        let packed = match self.dtype {
            DType::Q4_0 => x8::interleave::<quant::q4_0::BlockQ4_0, 0, 0>(b, r),
            DType::Q4_1 => x8::interleave::<quant::q4_1::BlockQ4_1, 16, 0>(b, r),
            DType::Q5_0 => x8::interleave::<quant::q5_0::BlockQ5_0, 0, 32>(b, r),
            DType::Q5_1 => x8::interleave::<quant::q5_1::BlockQ5_1, 16, 32>(b, r),
            DType::Q8_0 => quant::x8q8::interleave(b, r),
            DType::Q4K => quant::x8q45k::interleave::<quant::q4_k::BlockQ4K, 0>(b, r),
            DType::Q5K => quant::x8q45k::interleave::<quant::q5_k::BlockQ5K, 256>(b, r),
            DType::Q6K => quant::x8q6k::interleave(b, r),
            _ => return self,
        };
        self.data.release();
        QMatrix { data: Bytes::from_vec(packed), layout: Layout::Interleaved8, ..self }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// An f32 matrix from row-major values.
    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> QMatrix {
        assert_eq!(values.len(), rows * cols);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        QMatrix { dtype: DType::F32, rows, cols, data: Bytes::from_vec(bytes), layout: Layout::Rows }
    }

    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.cols)
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// Writes row `i` as f32 into `out` (`cols` long); used for embedding lookups.
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        match self.layout {
            Layout::Rows => quant::dequantize_row(self.dtype, &self.bytes()[i * rb..(i + 1) * rb], out),
            Layout::Interleaved8 => {
                let group = &self.bytes()[i / 8 * 8 * rb..(i / 8 + 1) * 8 * rb];
                quant::x8::dequantize_row(self.dtype, group, i % 8, out)
            }
        }
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
