//! Activation formats: the input rows of a matmul, quantized once per call so the weight
//! kernels can use integer dot products (llama.cpp's Q8_0/Q8_1/Q8_K scheme).
//!
//! These never touch a file, so they use f32 scales and natural alignment rather than GGUF's
//! f16 fields.

#[cfg(target_arch = "x86_64")]
use super::common::has_avx2;
use std::cell::Cell;
use std::thread::LocalKey;

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

/// An activation block format: how many values one block holds and how a row is quantized.
pub trait ActBlock: Copy + Default + Send + Sync + 'static {
    const ELEMS: usize;
    fn quantize(x: &[f32], out: &mut [Self]);
    /// This thread's spare buffer of these blocks, which a matmul takes and gives back: a
    /// prefill's activations are hundreds of KiB, and a fresh allocation per matmul came
    /// from the kernel as zeroed pages, a page fault per 4 KiB.
    fn scratch() -> &'static LocalKey<Cell<Vec<Self>>>;
}

impl ActBlock for BlockQ8A {
    const ELEMS: usize = 32;
    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize_q8a(x, out)
    }
    fn scratch() -> &'static LocalKey<Cell<Vec<Self>>> {
        thread_local!(static SPARE: Cell<Vec<BlockQ8A>> = const { Cell::new(Vec::new()) });
        &SPARE
    }
}

impl ActBlock for BlockQ8K {
    const ELEMS: usize = 256;
    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize_q8k(x, out)
    }
    fn scratch() -> &'static LocalKey<Cell<Vec<Self>>> {
        thread_local!(static SPARE: Cell<Vec<BlockQ8K>> = const { Cell::new(Vec::new()) });
        &SPARE
    }
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

/// The scale of a group with largest magnitude `amax`, and its inverse (0 for an all-zero group).
#[inline]
fn scale_of(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d > 0.0 { 1.0 / d } else { 0.0 })
}

/// Symmetric 8-bit quantization of one group: returns the scale and fills `q`. Rounds ties to
/// even, as the AVX2 conversion does, so both paths produce the same bytes.
#[inline]
fn quantize_group(x: &[f32], q: &mut [i8]) -> f32 {
    let (d, id) = scale_of(x.iter().fold(0f32, |m, v| m.max(v.abs())));
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = (v * id).round_ties_even() as i8;
    }
    d
}

/// Quantizes `x` (a multiple of 32 long) into `out`.
pub fn quantize_q8a(x: &[f32], out: &mut [BlockQ8A]) {
    assert_eq!(x.len(), out.len() * 32);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected.
        unsafe { avx2::quantize_q8a(x, out) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if super::common::has_neon() {
        // SAFETY: NEON was detected.
        unsafe { neon::quantize_q8a(x, out) };
        return;
    }
    quantize_q8a_scalar(x, out)
}

/// Scalar reference of [`quantize_q8a`].
pub fn quantize_q8a_scalar(x: &[f32], out: &mut [BlockQ8A]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        b.d = quantize_group(xs, &mut b.qs);
        b.s = b.d * b.qs.iter().map(|&q| q as i32).sum::<i32>() as f32;
    }
}

/// Quantizes `x` (a multiple of 256 long) into `out`.
pub fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * 256);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected.
        unsafe { avx2::quantize_q8k(x, out) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if super::common::has_neon() {
        // SAFETY: NEON was detected.
        unsafe { neon::quantize_q8k(x, out) };
        return;
    }
    quantize_q8k_scalar(x, out)
}

/// Scalar reference of [`quantize_q8k`].
pub fn quantize_q8k_scalar(x: &[f32], out: &mut [BlockQ8K]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(256)) {
        b.d = quantize_group(xs, &mut b.qs);
        for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| v as i16).sum();
        }
    }
}

/// The AVX2 quantizers on NEON: `fcvtns` rounds to nearest even like the scalar reference, and
/// the quants (|q| ≤ 127) narrow without saturating, so the bytes are the same.
#[cfg(target_arch = "aarch64")]
mod neon {
    use super::*;
    use std::arch::aarch64::*;

    /// Largest |x| over `x` (a multiple of 4 long).
    #[inline]
    #[target_feature(enable = "neon")]
    fn amax(x: &[f32]) -> f32 {
        let mut m = vdupq_n_f32(0.0);
        for c in x.chunks_exact(4) {
            // SAFETY: `c` is 4 f32s.
            m = vmaxq_f32(m, vabsq_f32(unsafe { vld1q_f32(c.as_ptr()) }));
        }
        vmaxvq_f32(m)
    }

    /// 32 values times `id`, rounded to nearest even, into `q`; returns the sums of the first
    /// and second 16 quants.
    #[inline]
    #[target_feature(enable = "neon")]
    fn quant32(x: &[f32], id: f32, q: &mut [i8]) -> (i32, i32) {
        assert!(x.len() == 32 && q.len() == 32);
        let mut sums = [0i32; 2];
        for (h, sum) in sums.iter_mut().enumerate() {
            // SAFETY: `x` is 32 f32s: eight loads of 4 from 16·h.
            let v: [int32x4_t; 4] = std::array::from_fn(|i| {
                vcvtnq_s32_f32(vmulq_n_f32(unsafe { vld1q_f32(x.as_ptr().add(16 * h + 4 * i)) }, id))
            });
            let p01 = vcombine_s16(vqmovn_s32(v[0]), vqmovn_s32(v[1]));
            let p23 = vcombine_s16(vqmovn_s32(v[2]), vqmovn_s32(v[3]));
            // SAFETY: `q` is 32 writable bytes; this half's 16 from 16·h.
            unsafe { vst1q_s8(q.as_mut_ptr().add(16 * h), vcombine_s8(vqmovn_s16(p01), vqmovn_s16(p23))) };
            *sum = vaddvq_s32(vaddq_s32(vaddq_s32(v[0], v[1]), vaddq_s32(v[2], v[3])));
        }
        (sums[0], sums[1])
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn quantize_q8a(x: &[f32], out: &mut [BlockQ8A]) {
        for (b, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
            let (d, id) = scale_of(amax(xs));
            let (s0, s1) = quant32(xs, id, &mut b.qs);
            b.d = d;
            b.s = d * (s0 + s1) as f32;
        }
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
        for (b, xs) in out.iter_mut().zip(x.chunks_exact(256)) {
            let (d, id) = scale_of(amax(xs));
            b.d = d;
            for (j, c) in xs.chunks_exact(32).enumerate() {
                let (s0, s1) = quant32(c, id, &mut b.qs[32 * j..32 * j + 32]);
                b.bsums[2 * j] = s0 as i16;
                b.bsums[2 * j + 1] = s1 as i16;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::x86::hsum_epi32;
    use super::*;
    use std::arch::x86_64::*;

    /// Largest |x| over `x` (a multiple of 8 long).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn amax(x: &[f32]) -> f32 {
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for c in x.chunks_exact(8) {
            // SAFETY: `c` is 8 f32s; unaligned load.
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(c.as_ptr()) }));
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
    }

    /// 32 values times `id`, rounded to nearest even, packed into `q`; returns the 8-lane i32
    /// partial sums of the first and second 16 quants.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn quant32(x: &[f32], id: f32, q: &mut [i8]) -> (__m256i, __m256i) {
        assert!(x.len() == 32 && q.len() == 32);
        let idv = _mm256_set1_ps(id);
        // SAFETY: `x` is 32 f32s; unaligned loads. The default MXCSR rounding is nearest-even.
        let v: [__m256i; 4] = std::array::from_fn(|i| {
            _mm256_cvtps_epi32(_mm256_mul_ps(unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) }, idv))
        });
        let p01 = _mm256_packs_epi32(v[0], v[1]);
        let p23 = _mm256_packs_epi32(v[2], v[3]);
        let p = _mm256_packs_epi16(p01, p23);
        // The packs interleave 128-bit lanes; restore element order.
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `q` is 32 writable bytes; unaligned store.
        unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), p) };
        (_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3]))
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_q8a(x: &[f32], out: &mut [BlockQ8A]) {
        for (b, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
            let (d, id) = scale_of(amax(xs));
            let (s0, s1) = quant32(xs, id, &mut b.qs);
            b.d = d;
            b.s = d * hsum_epi32(_mm256_add_epi32(s0, s1)) as f32;
        }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
        for (b, xs) in out.iter_mut().zip(x.chunks_exact(256)) {
            let (d, id) = scale_of(amax(xs));
            b.d = d;
            for (j, c) in xs.chunks_exact(32).enumerate() {
                let (s0, s1) = quant32(c, id, &mut b.qs[32 * j..32 * j + 32]);
                b.bsums[2 * j] = hsum_epi32(s0) as i16;
                b.bsums[2 * j + 1] = hsum_epi32(s1) as i16;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_quantizers_match_scalar_bytes() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        for scale in [1.0f32, 1e-3, 300.0] {
            let mut x: Vec<f32> = (0..1024).map(|_| rnd() * scale).collect();
            x[..32].fill(0.0); // an all-zero group
            x[40] = 127.5 / 127.0 * x[41].abs().max(1e-3); // large outlier
            let (mut a, mut b) = (vec![BlockQ8A::default(); 32], vec![BlockQ8A::default(); 32]);
            quantize_q8a(&x, &mut a);
            quantize_q8a_scalar(&x, &mut b);
            for (p, q) in a.iter().zip(&b) {
                assert_eq!((p.d, p.qs), (q.d, q.qs));
                assert!((p.s - q.s).abs() <= 1e-6 * q.s.abs().max(1e-30));
            }
            let (mut a, mut b) = (vec![BlockQ8K::default(); 4], vec![BlockQ8K::default(); 4]);
            quantize_q8k(&x, &mut a);
            quantize_q8k_scalar(&x, &mut b);
            for (p, q) in a.iter().zip(&b) {
                assert_eq!((p.d, p.qs, p.bsums), (q.d, q.qs, q.bsums));
            }
        }
    }

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
