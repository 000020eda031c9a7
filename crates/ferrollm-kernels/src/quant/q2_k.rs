//! Q2_K: 256 weights in 16 sub-blocks of 16, `w = d·sc·q − dmin·m`, 2-bit `q`, 4-bit `sc`/`m`
//! (ggml `block_q2_K`).

use super::act::BlockQ8K;
#[cfg(target_arch = "x86_64")]
use super::common::has_avx2;
use super::common::{f16_to_f32, f32_to_f16, Block};
use super::kquant::{affine_quant, affine_scales, KBlock, KUnpacked};

/// ggml layout: `scales[j]` is scale (low nibble) and min (high nibble) of sub-block `j`; the
/// weight `e = 128n + 32k + l` is bits `2k..2k+2` of `qs[32n + l]`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}
assert_block!(BlockQ2K, 84);

// SAFETY: repr(C) byte arrays only: alignment 1, no padding, any bit pattern is valid.
unsafe impl Block for BlockQ2K {
    const BYTES: usize = 84;
    const ELEMS: usize = 256;
}

impl KBlock for BlockQ2K {
    fn unpack(&self) -> KUnpacked {
        let mut u = KUnpacked { d: f16_to_f32(self.d), dmin: f16_to_f32(self.dmin), ..Default::default() };
        for j in 0..16 {
            u.sc[j] = (self.scales[j] & 0x0F) as i32;
            u.m[j] = (self.scales[j] >> 4) as i32;
        }
        for (e, q) in u.q.iter_mut().enumerate() {
            let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
            *q = ((self.qs[32 * n + l] >> (2 * k)) & 3) as i8;
        }
        u
    }
}

pub fn quantize_row(x: &[f32], out: &mut [BlockQ2K]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(256)) {
        let (d, dmin, sc, m) = affine_scales(xs, 16, 3.0, 15.0);
        b.d = f32_to_f16(d);
        b.dmin = f32_to_f16(dmin);
        let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        for j in 0..16 {
            b.scales[j] = sc[j] | (m[j] << 4);
        }
        b.qs = [0; 64];
        for (e, &v) in xs.iter().enumerate() {
            let j = e / 16;
            let q = affine_quant(v, d * sc[j] as f32, dmin * m[j] as f32, 3);
            let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
            b.qs[32 * n + l] |= q << (2 * k);
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
    super::kquant::dot_rows_scalar::<BlockQ2K>(bytes, row_bytes, acts, out)
}

/// `out[t] = Σ w·acts[t]` for up to 4 activation rows, with the fastest available code.
pub fn dot(w: &[BlockQ2K], acts: &[&[BlockQ8K]], out: &mut [f32]) {
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

    /// Quants enter `maddubs` as they are (0..4); the sub-block scale multiplies in `madd`, and
    /// the mins come from the activation's 16-wide sums.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_tile<const T: usize>(w: &[BlockQ2K], acts: &[&[BlockQ8K]; T]) -> [f32; T] {
        for a in acts {
            assert_eq!(a.len(), w.len());
        }
        let mut acc = [_mm256_setzero_ps(); T];
        let mut accm = [_mm256_setzero_ps(); T];
        let three = _mm256_set1_epi8(3);
        for (i, b) in w.iter().enumerate() {
            // SAFETY: `scales` is 16 readable bytes; unaligned load.
            let raw = unsafe { _mm_loadu_si128(b.scales.as_ptr().cast()) };
            let sc = _mm_and_si128(raw, _mm_set1_epi8(0x0F));
            let m16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0F)));
            let mut sumi = [_mm256_setzero_si256(); T];
            for n in 0..2 {
                let qv = load32(&b.qs[32 * n..32 * n + 32]);
                for k in 0..4 {
                    let q = _mm256_and_si256(_mm256_srl_epi16(qv, _mm_cvtsi32_si128(2 * k as i32)), three);
                    let s = pair_scales(sc, 8 * n + 2 * k);
                    for t in 0..T {
                        let y = load32(&acts[t][i].qs[128 * n + 32 * k..128 * n + 32 * k + 32]);
                        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), s));
                    }
                }
            }
            let d = _mm256_set1_ps(f16_to_f32(b.d));
            let dmin = _mm256_set1_ps(f16_to_f32(b.dmin));
            for t in 0..T {
                let ab = &acts[t][i];
                let dy = _mm256_broadcast_ss(&ab.d);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), _mm256_mul_ps(d, dy), acc[t]);
                let pm = _mm256_cvtepi32_ps(_mm256_madd_epi16(m16, load32(&ab.bsums)));
                accm[t] = _mm256_fmadd_ps(pm, _mm256_mul_ps(dmin, dy), accm[t]);
            }
        }
        let mut out = [0f32; T];
        for t in 0..T {
            out[t] = hsum_ps(_mm256_sub_ps(acc[t], accm[t]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let mut b = BlockQ2K { scales: [0; 16], qs: [0; 64], d: f32_to_f16(0.5), dmin: f32_to_f16(0.25) };
        b.scales[3] = 0x27; // sub-block 3: scale 7, min 2
                            // Element 48 = n 0, k 1, l 16: bits 2-3 of qs[16].
        b.qs[16] = 0b1100;
        // Element 128 + 96 + 31 = 255 (sub-block 15): bits 6-7 of qs[63].
        b.scales[15] = 0x11;
        b.qs[63] = 0b0100_0000;
        let mut y = [0f32; 256];
        super::super::kquant::dequantize_row(&[b], &mut y);
        assert_eq!(y[48], 0.5 * 7.0 * 3.0 - 0.25 * 2.0);
        assert_eq!(y[255], 0.5 * 1.0 * 1.0 - 0.25);
        assert_eq!(y[16], 0.0 - 0.25 * 0.0);
    }
}
