//! Q6_K: 256 weights in 16 sub-blocks of 16, `w = d·sc·(q − 32)`, 6-bit `q`, signed 8-bit `sc`
//! (ggml `block_q6_K`).

use super::act::BlockQ8K;
#[cfg(target_arch = "x86_64")]
use super::common::has_avx2;
use super::common::{f16_to_f32, f32_to_f16, Block};
use super::kquant::{KBlock, KUnpacked};

/// ggml layout, per 128-weight half `n` and 32-weight quarter `k` (`e = 128n + 32k + l`): low 4
/// bits in `ql[64n + 32(k & 1) + l]` (low nibble for `k < 2`, high for `k ≥ 2`), high 2 bits at
/// bit `2k` of `qh[32n + l]`, scale `scales[e / 16]`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: [u8; 2],
}
assert_block!(BlockQ6K, 210);

// SAFETY: repr(C) byte arrays only: alignment 1, no padding, any bit pattern is valid.
unsafe impl Block for BlockQ6K {
    const BYTES: usize = 210;
    const ELEMS: usize = 256;
}

impl KBlock for BlockQ6K {
    fn unpack(&self) -> KUnpacked {
        let mut u = KUnpacked { d: f16_to_f32(self.d), ..Default::default() };
        for j in 0..16 {
            u.sc[j] = self.scales[j] as i32;
        }
        for n in 0..2 {
            for k in 0..4 {
                for l in 0..32 {
                    let ql = self.ql[64 * n + 32 * (k & 1) + l];
                    let lo = if k < 2 { ql & 0x0F } else { ql >> 4 };
                    let hi = (self.qh[32 * n + l] >> (2 * k)) & 3;
                    u.q[128 * n + 32 * k + l] = (lo | (hi << 4)) as i8 - 32;
                }
            }
        }
        u
    }
}

/// Per 16 weights, the signed extreme maps to −32; the 16 scales are then quantized to i8
/// against the super-block scale. (ggml refines these with a search; the format is the same.)
pub fn quantize_row(x: &[f32], out: &mut [BlockQ6K]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(256)) {
        let mut scales = [0f32; 16];
        for (s, g) in scales.iter_mut().zip(xs.chunks_exact(16)) {
            let max = g.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            *s = max / -32.0;
        }
        let max_scale = scales.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let iscale = if max_scale != 0.0 { -128.0 / max_scale } else { 0.0 };
        b.d = f32_to_f16(if iscale != 0.0 { 1.0 / iscale } else { 0.0 });
        let d = f16_to_f32(b.d);
        for (sc, &s) in b.scales.iter_mut().zip(&scales) {
            *sc = (iscale * s).round().clamp(-128.0, 127.0) as i8;
        }
        b.ql = [0; 128];
        b.qh = [0; 64];
        for (e, &v) in xs.iter().enumerate() {
            let dl = d * b.scales[e / 16] as f32;
            let q = if dl != 0.0 { (v / dl).round().clamp(-32.0, 31.0) as i32 + 32 } else { 32 } as u8;
            let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
            let qi = 64 * n + 32 * (k & 1) + l;
            b.ql[qi] |= if k < 2 { q & 0x0F } else { (q & 0x0F) << 4 };
            b.qh[32 * n + l] |= (q >> 4) << (2 * k);
        }
    }
}

/// `out[r * k + t]` for every row in `bytes` (rows of `row_bytes`) and the `k = acts.len()`
/// (1 to 4) tokens, with the fastest available code.
pub fn dot_rows(bytes: &[u8], row_bytes: usize, acts: &[&[BlockQ8K]], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected.
        unsafe { avx2::dot_rows(bytes, row_bytes, acts, out) };
        return;
    }
    super::kquant::dot_rows_scalar::<BlockQ6K>(bytes, row_bytes, acts, out)
}

/// `out[t] = Σ w·acts[t]` for up to 4 activation rows, with the fastest available code.
pub fn dot(w: &[BlockQ6K], acts: &[&[BlockQ8K]], out: &mut [f32]) {
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
    pub unsafe fn dot_rows(bytes: &[u8], row_bytes: usize, acts: &[&[BlockQ8K]], out: &mut [f32]) {
        super::super::common::for_each_row_tiled!(bytes, row_bytes, acts, out, dot_tile)
    }

    /// The quants enter `maddubs` unsigned (`0..64`); the `−32` offset is applied afterwards
    /// through the activation's 16-wide sums: `Σ sc·(q−32)·y = Σ sc·q·y − 32·Σ sc·bsum`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_tile<const T: usize>(w: &[BlockQ6K], acts: &[&[BlockQ8K]; T]) -> [f32; T] {
        for a in acts {
            assert_eq!(a.len(), w.len());
        }
        let mut acc = [_mm256_setzero_ps(); T];
        let low = _mm256_set1_epi8(0x0F);
        let hmask = _mm256_set1_epi8(0x30);
        for (i, b) in w.iter().enumerate() {
            // SAFETY: `scales` is 16 readable bytes; unaligned load.
            let sc = unsafe { _mm_loadu_si128(b.scales.as_ptr().cast()) };
            let mut sumi = [_mm256_setzero_si256(); T];
            for n in 0..2 {
                let ql0 = load32(&b.ql[64 * n..64 * n + 32]);
                let ql1 = load32(&b.ql[64 * n + 32..64 * n + 64]);
                let qh = load32(&b.qh[32 * n..32 * n + 32]);
                let q = [
                    _mm256_or_si256(_mm256_and_si256(ql0, low), _mm256_and_si256(_mm256_slli_epi16(qh, 4), hmask)),
                    _mm256_or_si256(_mm256_and_si256(ql1, low), _mm256_and_si256(_mm256_slli_epi16(qh, 2), hmask)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low), _mm256_and_si256(qh, hmask)),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low),
                        _mm256_and_si256(_mm256_srli_epi16(qh, 2), hmask),
                    ),
                ];
                // Quarter k covers scales 8n + 2k (low 128-bit lane) and 8n + 2k + 1 (high lane).
                let sv: [__m256i; 4] = std::array::from_fn(|k| {
                    let a = (8 * n + 2 * k) as u8;
                    let pick = _mm_set_epi64x(i64::from_le_bytes([a + 1; 8]), i64::from_le_bytes([a; 8]));
                    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, pick))
                });
                for t in 0..T {
                    let y = &acts[t][i].qs[128 * n..128 * n + 128];
                    for k in 0..4 {
                        let p = _mm256_maddubs_epi16(q[k], load32(&y[32 * k..32 * k + 32]));
                        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(p, sv[k]));
                    }
                }
            }
            let d = _mm256_set1_ps(f16_to_f32(b.d));
            let sc16 = _mm256_cvtepi8_epi16(sc);
            for t in 0..T {
                let ab = &acts[t][i];
                // The −32 offset: 32 · Σ_j sc[j] · bsums[j], as 8 i32 partial sums.
                let off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load32(&ab.bsums)), 5);
                let total = _mm256_sub_epi32(sumi[t], off);
                acc[t] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(d, _mm256_broadcast_ss(&ab.d)), acc[t]);
            }
        }
        let mut out = [0f32; T];
        for t in 0..T {
            out[t] = hsum_ps(acc[t]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let mut b = BlockQ6K { ql: [0; 128], qh: [0; 64], scales: [0; 16], d: f32_to_f16(0.5) };
        b.scales[0] = 2;
        b.scales[13] = -3;
        // Element 0 (n 0, k 0, l 0): ql[0] low nibble 5, qh[0] bits 0-1 = 2 -> q = 37 -> 5.
        b.ql[0] = 0x05;
        b.qh[0] = 0b10;
        // Element 128 + 96 + 17 = 241 (n 1, k 3, l 17; scale 15) and element 128+64+17 = 209
        // (k 2, scale 13): ql[64 + 32 + 17] high nibble 0xA is k 3; ql[64 + 17] high nibble 0x1 is k 2;
        // qh[32 + 17] bits 4-5 (k 2) = 3, bits 6-7 (k 3) = 0.
        b.scales[15] = 4;
        b.ql[64 + 32 + 17] = 0xA0;
        b.ql[64 + 17] = 0x10;
        b.qh[32 + 17] = 0b0011_0000;
        let mut y = [0f32; 256];
        super::super::kquant::dequantize_row(&[b], &mut y);
        assert_eq!(y[0], 0.5 * 2.0 * 5.0);
        assert_eq!(y[241], 0.5 * 4.0 * (10.0 - 32.0));
        assert_eq!(y[209], 0.5 * -3.0 * ((1 + 48) as f32 - 32.0));
        assert_eq!(y[1], 0.5 * 2.0 * -32.0);
    }
}
