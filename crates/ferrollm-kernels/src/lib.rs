//! CPU compute kernels for ferrollm.
//!
//! Every SIMD kernel has a scalar reference twin in the same module and a test that holds the
//! fast path against it. Model code reaches kernels only through the [`Backend`] trait, so a
//! CUDA backend can later slot in behind the same calls.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod attention;
#[cfg(target_arch = "aarch64")]
pub(crate) mod attn_neon;
pub mod backend;
pub mod dtype;
pub mod ops;
pub mod qmatrix;
pub mod quant;
pub mod scores;
pub mod threadpool;

pub use attention::{AttentionSeq, KvElem, KvMut, KvRef, KvShape, PagedKv};
pub use backend::{Backend, CpuBackend};
pub use dtype::DType;
pub use qmatrix::{Backing, Bytes, Layout, QMatrix};
pub use quant::{TokenKind, TokenRun};
pub use threadpool::ThreadPool;

/// Errors raised when weights do not fit what a kernel can handle.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("tensor type {0} is not supported")]
    UnsupportedType(String),
    #[error("row length {cols} is not a multiple of the {dtype} block size {block}")]
    BadRowLength { dtype: &'static str, cols: usize, block: usize },
    #[error("weight data holds {have} bytes, but {rows}x{cols} {dtype} needs {need}")]
    BadDataLength { dtype: &'static str, rows: usize, cols: usize, have: usize, need: usize },
}
