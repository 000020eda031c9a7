//! Q8_0: 32 weights as `d * q`, `q` a signed byte (ggml `block_q8_0`).

use super::act::BlockQ8A;
#[cfg(target_arch = "x86_64")]
use super::common::has_avx2;
use super::common::{as_blocks, f16_to_f32, f32_to_f16, Block};

#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; 32],
}
assert_block!(BlockQ8_0, 34);

// SAFETY: repr(C) byte arrays only: alignment 1, no padding, any bit pattern is valid.
unsafe impl Block for BlockQ8_0 {
    const BYTES: usize = 34;
    const ELEMS: usize = 32;
}

pub fn dequantize_row(blocks: &[BlockQ8_0], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(32)) {
        let d = f16_to_f32(b.d);
        for (yi, &q) in y.iter_mut().zip(&b.qs) {
            *yi = q as f32 * d;
        }
    }
}

/// ggml's reference quantizer: the largest magnitude maps to ±127.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8_0]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = (v * id).round() as i8;
        }
    }
}

/// `out[t] = Σ w·acts[t]` for up to 4 activation rows; scalar reference.
pub fn dot_scalar(w: &[BlockQ8_0], acts: &[&[BlockQ8A]], out: &mut [f32]) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        assert_eq!(a.len(), w.len());
        let mut sum = 0f32;
        for (b, ab) in w.iter().zip(a.iter()) {
            let isum: i32 = b.qs.iter().zip(&ab.qs).map(|(&q, &y)| q as i32 * y as i32).sum();
            sum += f16_to_f32(b.d) * ab.d * isum as f32;
        }
        *o = sum;
    }
}

/// `out[r * k + t]` for every row in `bytes` (rows of `row_bytes`) and the `k = acts.len()`
/// (1 to 4) tokens, with the fastest available code.
pub fn dot_rows(bytes: &[u8], row_bytes: usize, acts: &[&[BlockQ8A]], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected.
        unsafe { avx2::dot_rows(bytes, row_bytes, acts, out) };
        return;
    }
    let k = acts.len();
    for (row, o) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(k)) {
        dot_scalar(as_blocks(row), acts, o);
    }
}

/// `out[t] = Σ w·acts[t]` for up to 4 activation rows, with the fastest available code.
pub fn dot(w: &[BlockQ8_0], acts: &[&[BlockQ8A]], out: &mut [f32]) {
    super::common::dot_via_rows(w, acts, out, dot_rows)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {

    use super::super::x86::*;
    use super::*;
    // The F16C conversion, not the portable one from `common`.
    use super::super::x86::f16_to_f32;
    use std::arch::x86_64::*;

    /// `out[r * k + t]` for every row in `bytes` and the `k = acts.len()` (1 to 4) tokens.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows(bytes: &[u8], row_bytes: usize, acts: &[&[BlockQ8A]], out: &mut [f32]) {
        super::super::common::for_each_row_tiled!(bytes, row_bytes, acts, out, dot_tile)
    }

    /// Signed × signed bytes: move the weight's sign onto the activation (`sign_epi8`) so
    /// `maddubs` sees |w| unsigned. |q| ≤ 127 on the activation side keeps pair sums within i16
    /// (a weight of −128 becomes an unsigned 128, still exact). Blocks go in groups of four as in
    /// the Q4/Q5 kernels (`block32`): four scales per F16C conversion, one reduction, one float
    /// conversion and one FMA per group and token; leftover blocks go one at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_tile<const T: usize>(w: &[BlockQ8_0], acts: &[&[BlockQ8A]; T]) -> [f32; T] {
        for a in acts {
            assert_eq!(a.len(), w.len());
        }
        let mut acc = [_mm256_setzero_ps(); T];
        let groups = w.len() / 4;
        for g in 0..groups {
            let b: &[BlockQ8_0; 4] = w[4 * g..4 * g + 4].try_into().unwrap();
            let d8 = f16x4x2(b.map(|b| u16::from_le_bytes(b.d)));
            let q = b.map(|b| load32(&b.qs));
            let aq = q.map(|q| _mm256_sign_epi8(q, q));
            for t in 0..T {
                let a: &[BlockQ8A; 4] = acts[t][4 * g..4 * g + 4].try_into().unwrap();
                let p: [__m256i; 4] =
                    std::array::from_fn(|j| dot_u8_i8(aq[j], _mm256_sign_epi8(load32(&a[j].qs), q[j])));
                let (ad, _) = act_scales(a);
                let sc = _mm256_mul_ps(d8, _mm256_set_m128(ad, ad));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce4(p)), sc, acc[t]);
            }
        }
        let mut out = [0f32; T];
        for t in 0..T {
            out[t] = hsum_ps(acc[t]);
        }
        for i in 4 * groups..w.len() {
            let b = &w[i];
            let q = load32(&b.qs);
            let aq = _mm256_sign_epi8(q, q);
            let d = f16_to_f32(b.d);
            for t in 0..T {
                let ab = &acts[t][i];
                out[t] += d * ab.d * hsum_epi32(dot_u8_i8(aq, _mm256_sign_epi8(load32(&ab.qs), q))) as f32;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let mut b = BlockQ8_0 { d: f32_to_f16(0.125), qs: [0; 32] };
        b.qs[0] = -128;
        b.qs[7] = 127;
        b.qs[31] = -3;
        let mut y = [0f32; 32];
        dequantize_row(&[b], &mut y);
        assert_eq!(y[0], -16.0);
        assert_eq!(y[7], 15.875);
        assert_eq!(y[31], -0.375);
        assert_eq!(y[1], 0.0);
    }
}
