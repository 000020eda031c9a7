//! Activation formats: the input rows of a matmul, quantized once per call so the weight
//! kernels can use integer dot products (llama.cpp's Q8_0/Q8_1/Q8_K scheme).
//!
//! These never touch a file, so they use f32 scales and natural alignment rather than GGUF's
//! f16 fields.

/// 32 activations as `d * qs[i]`, with `s = d * Σ qs` so that weight formats with an offset
/// (`w = dw * q + m`, which covers Q4_0/Q5_0 with `m = -8 dw` / `-16 dw` and Q4_1/Q5_1) add
/// `m * s` instead of summing per element. One format serves all 32-element weight blocks.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ8A {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

/// 256 activations as `d * qs[i]`, with the sums of each 16 quants in `bsums` (for the min
/// and offset terms of the K-quants). Same layout as ggml's `block_q8_K`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K { d: 0.0, qs: [0; 256], bsums: [0; 16] }
    }
}

const _: () = assert!(std::mem::size_of::<BlockQ8A>() == 40);
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

/// Symmetric 8-bit quantization of one group: returns the scale and fills `q`.
#[inline]
fn quantize_group(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = (v * id).round() as i8;
    }
    d
}

/// Quantizes `x` (a multiple of 32 long) into `out`.
pub fn quantize_q8a(x: &[f32], out: &mut [BlockQ8A]) {
    assert_eq!(x.len(), out.len() * 32);
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        b.d = quantize_group(xs, &mut b.qs);
        b.s = b.d * b.qs.iter().map(|&q| q as i32).sum::<i32>() as f32;
    }
}

/// Quantizes `x` (a multiple of 256 long) into `out`.
pub fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * 256);
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(256)) {
        b.d = quantize_group(xs, &mut b.qs);
        for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| v as i16).sum();
        }
    }
}

/// f32 activations pass through unchanged (float and dequantize-then-dot kernels).
pub fn copy_f32(x: &[f32], out: &mut [f32]) {
    out.copy_from_slice(x);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8a_keeps_sum_and_bounds() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.37).collect();
        let mut b = [BlockQ8A::default(); 2];
        quantize_q8a(&x, &mut b);
        for (blk, xs) in b.iter().zip(x.chunks(32)) {
            let sum: f32 = blk.qs.iter().map(|&q| q as f32 * blk.d).sum();
            assert!((sum - blk.s).abs() < 1e-3);
            for (q, v) in blk.qs.iter().zip(xs) {
                assert!((*q as f32 * blk.d - v).abs() <= blk.d * 0.5 + 1e-6);
            }
        }
    }

    #[test]
    fn q8k_bsums() {
        let x: Vec<f32> = (0..256).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let mut b = [BlockQ8K::default()];
        quantize_q8k(&x, &mut b);
        for j in 0..16 {
            let s: i32 = b[0].qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            assert_eq!(s, b[0].bsums[j] as i32);
        }
        assert_eq!(b[0].qs.iter().map(|q| q.unsigned_abs()).max(), Some(127));
    }
}
