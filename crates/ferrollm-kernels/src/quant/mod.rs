//! Quantized block formats (GGUF layouts): dequantization, quantization and matmul kernels.
//!
//! One module per block type holds its `#[repr(C)]` layout (size checked at compile time), a
//! scalar reference dequantizer, a reference quantizer, and AVX2 dot-product kernels with
//! scalar twins. Matmuls quantize the activations once per call ([`act`]) so the inner loops
//! are integer dot products, as in llama.cpp; [`matmul`] tiles rows × tokens and spreads rows
//! across the pool.
//!
//! | weights | activations | kernel (AVX2 + FMA + F16C, NEON for floats and the interleaved 32-element, Q4_K, Q5_K and Q6_K formats; scalar fallback everywhere) |
//! | --- | --- | --- |
//! | F32, F16, BF16 | f32 | [`float`]: decode 8 weights, FMA into each token; prefill over widened panels (AVX-512 row pairs, AVX2 outer products over permuted columns) |
//! | Q4_0, Q4_1, Q5_0, Q5_1 | [`act::BlockQ8A`] | [`block32`]: `maddubs` of unsigned quants; offsets via the block sum |
//! | Q8_0 | [`act::BlockQ8A`] | [`q8_0`]: sign trick, `maddubs` |
//! | Q2_K … Q6_K | [`act::BlockQ8K`] | one module each; sub-block scales in `madd`, mins/offsets via `bsums` |
//!
//! Every kernel dots one weight row against up to four tokens at once, decoding each weight
//! block once for all of them.

/// Compile-time check that a block type has the GGUF size and alignment 1.
macro_rules! assert_block {
    ($t:ty, $bytes:expr) => {
        const _: () = assert!(std::mem::size_of::<$t>() == $bytes);
        const _: () = assert!(std::mem::align_of::<$t>() == 1);
    };
}

pub mod act;
pub mod amx;
#[cfg(target_arch = "aarch64")]
pub(crate) mod arm;
pub mod block32;
pub mod common;
pub mod float;
mod float_panel_avx2;
pub mod kquant;
mod matmul;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
#[cfg(test)]
mod tests;
pub mod x8;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "aarch64")]
mod x8_neon;
pub mod x8q45k;
pub mod x8q6k;
pub mod x8q8;
#[cfg(target_arch = "aarch64")]
mod xk_neon;

use crate::{DType, QMatrix};
use common::as_blocks;
pub use matmul::{matmul, matmul_many, matmul_many_as, matmul_many_runs};

/// What the tokens of a matmul are, for weights with two kernels that round differently (F16
/// and BF16 on AMX, [`amx::mode`]): a token's kind, not its batch, picks the kernel, so each
/// token's result is still the same whatever else is in the step, however it is chunked or
/// resumed. Every other weight type computes both kinds alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// Positions inside the request's prompt: prefill, where throughput matters.
    Prompt,
    /// Tokens the model generated (decode steps, drafts, their recomputation after preemption).
    Generated,
}

/// A run of `len` consecutive tokens of one kind in a batch ([`matmul_many_runs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenRun {
    pub len: usize,
    pub kind: TokenKind,
}

/// Whether this crate can load and multiply weights of `dtype`. Loaders call it to turn an
/// unsupported tensor type into an error instead of a panic deep in a kernel. (Every [`DType`]
/// is supported today; GGUF types outside `DType`, such as the IQ formats, are already refused
/// by [`DType::from_ggml_id`].)
pub fn is_supported(dtype: DType) -> bool {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => true,
        DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 => true,
        DType::Q2K | DType::Q3K | DType::Q4K | DType::Q5K | DType::Q6K => true,
    }
}

/// Decodes one row of `dtype` blocks into `out`.
///
/// Panics if `src` is not exactly the encoding of `out.len()` values.
pub fn dequantize_row(dtype: DType, src: &[u8], out: &mut [f32]) {
    assert_eq!(out.len() % dtype.block_size(), 0, "row length is not a whole number of {} blocks", dtype.name());
    assert_eq!(src.len(), dtype.row_bytes(out.len()), "{} row bytes", dtype.name());
    match dtype {
        DType::F32 => float::dequantize_row(float::Float::F32, src, out),
        DType::F16 => float::dequantize_row(float::Float::F16, src, out),
        DType::BF16 => float::dequantize_row(float::Float::BF16, src, out),
        DType::Q4_0 => q4_0::dequantize_row(as_blocks(src), out),
        DType::Q4_1 => q4_1::dequantize_row(as_blocks(src), out),
        DType::Q5_0 => q5_0::dequantize_row(as_blocks(src), out),
        DType::Q5_1 => q5_1::dequantize_row(as_blocks(src), out),
        DType::Q8_0 => q8_0::dequantize_row(as_blocks(src), out),
        DType::Q2K => kquant::dequantize_row::<q2_k::BlockQ2K>(as_blocks(src), out),
        DType::Q3K => kquant::dequantize_row::<q3_k::BlockQ3K>(as_blocks(src), out),
        DType::Q4K => kquant::dequantize_row::<q4_k::BlockQ4K>(as_blocks(src), out),
        DType::Q5K => kquant::dequantize_row::<q5_k::BlockQ5K>(as_blocks(src), out),
        DType::Q6K => kquant::dequantize_row::<q6_k::BlockQ6K>(as_blocks(src), out),
    }
}

/// Encodes `x` (a whole number of blocks) as one row of `dtype`, with the reference quantizers.
/// For tests, benchmarks and tools; models load already-quantized weights.
pub fn quantize_row(dtype: DType, x: &[f32]) -> Vec<u8> {
    fn blocks<B: common::Block>(x: &[f32], f: fn(&[f32], &mut [B])) -> Vec<u8> {
        let zero = vec![0u8; B::BYTES];
        let mut out = vec![as_blocks::<B>(&zero)[0]; x.len() / B::ELEMS];
        f(x, &mut out);
        common::block_bytes(&out).to_vec()
    }
    assert_eq!(x.len() % dtype.block_size(), 0, "row length is not a whole number of {} blocks", dtype.name());
    match dtype {
        DType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => x.iter().flat_map(|&v| common::f32_to_f16(v)).collect(),
        DType::BF16 => x.iter().flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()).collect(),
        DType::Q4_0 => blocks(x, q4_0::quantize_row),
        DType::Q4_1 => blocks(x, q4_1::quantize_row),
        DType::Q5_0 => blocks(x, q5_0::quantize_row),
        DType::Q5_1 => blocks(x, q5_1::quantize_row),
        DType::Q8_0 => blocks(x, q8_0::quantize_row),
        DType::Q2K => blocks(x, q2_k::quantize_row),
        DType::Q3K => blocks(x, q3_k::quantize_row),
        DType::Q4K => blocks(x, q4_k::quantize_row),
        DType::Q5K => blocks(x, q5_k::quantize_row),
        DType::Q6K => blocks(x, q6_k::quantize_row),
    }
}

/// A `[rows, cols]` matrix of `dtype` from row-major f32 values, through the reference quantizer.
pub fn quantize_matrix(dtype: DType, rows: usize, cols: usize, values: &[f32]) -> QMatrix {
    assert_eq!(values.len(), rows * cols);
    let bytes: Vec<u8> = values.chunks_exact(cols).flat_map(|r| quantize_row(dtype, r)).collect();
    QMatrix::new(dtype, rows, cols, crate::Bytes::from_vec(bytes)).expect("quantized matrix shape")
}
