//! Q4_K: 256 weights in 8 sub-blocks of 32, `w = d·sc·q − dmin·m`, 4-bit `q`, 6-bit `sc`/`m`
//! (ggml `block_q4_K`).

use super::act::BlockQ8K;
#[cfg(target_arch = "x86_64")]
use super::common::has_avx2;
use super::common::{f16_to_f32, f32_to_f16, Block};
use super::kquant::{affine_quant, affine_scales, pack_scale_min_k4, scale_min_k4, KBlock, KUnpacked};

/// ggml layout: 64-weight chunk `c` sits in `qs[32c..32c + 32]`, low nibbles first (sub-block
/// `2c`), then high nibbles (sub-block `2c + 1`).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}
assert_block!(BlockQ4K, 144);

// SAFETY: repr(C) byte arrays only: alignment 1, no padding, any bit pattern is valid.
unsafe impl Block for BlockQ4K {
    const BYTES: usize = 144;
    const ELEMS: usize = 256;
}

impl KBlock for BlockQ4K {
    fn unpack(&self) -> KUnpacked {
        let mut u = KUnpacked { d: f16_to_f32(self.d), dmin: f16_to_f32(self.dmin), ..Default::default() };
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &self.scales);
            u.sc[2 * j] = sc as i32;
            u.sc[2 * j + 1] = sc as i32;
            u.m[2 * j] = m as i32;
            u.m[2 * j + 1] = m as i32;
        }
        for c in 0..4 {
            for l in 0..32 {
                u.q[64 * c + l] = (self.qs[32 * c + l] & 0x0F) as i8;
                u.q[64 * c + 32 + l] = (self.qs[32 * c + l] >> 4) as i8;
            }
        }
        u
    }
}

pub fn quantize_row(x: &[f32], out: &mut [BlockQ4K]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(256)) {
        let (d, dmin, sc, m) = affine_scales(xs, 32, 15.0, 63.0);
        b.d = f32_to_f16(d);
        b.dmin = f32_to_f16(dmin);
        b.scales = pack_scale_min_k4(&sc.clone().try_into().unwrap(), &m.clone().try_into().unwrap());
        let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        let mut q = [0u8; 256];
        for (e, qe) in q.iter_mut().enumerate() {
            let j = e / 32;
            *qe = affine_quant(xs[e], d * sc[j] as f32, dmin * m[j] as f32, 15);
        }
        for c in 0..4 {
            for l in 0..32 {
                b.qs[32 * c + l] = q[64 * c + l] | (q[64 * c + 32 + l] << 4);
            }
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
    super::kquant::dot_rows_scalar::<BlockQ4K>(bytes, row_bytes, acts, out)
}

/// `out[t] = Σ w·acts[t]` for up to 4 activation rows, with the fastest available code.
pub fn dot(w: &[BlockQ4K], acts: &[&[BlockQ8K]], out: &mut [f32]) {
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

    /// Sub-block scales are applied in integers (`madd` by the scale instead of by 1), so each
    /// super-block needs a single float multiply-add per token; mins come from `bsums`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_tile<const T: usize>(w: &[BlockQ4K], acts: &[&[BlockQ8K]; T]) -> [f32; T] {
        for a in acts {
            assert_eq!(a.len(), w.len());
        }
        let mut acc = [_mm256_setzero_ps(); T];
        let mut accm = [_mm_setzero_ps(); T];
        let low = _mm256_set1_epi8(0x0F);
        for (i, b) in w.iter().enumerate() {
            let (sc, m16) = k4_scales_mins(&b.scales);
            let mut sumi = [_mm256_setzero_si256(); T];
            for c in 0..4 {
                let qv = load32(&b.qs[32 * c..32 * c + 32]);
                let lo = _mm256_and_si256(qv, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), low);
                let (s_lo, s_hi) = (kscale(sc, 2 * c), kscale(sc, 2 * c + 1));
                for t in 0..T {
                    let y = &acts[t][i].qs[64 * c..64 * c + 64];
                    let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load32(&y[..32])), s_lo);
                    let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load32(&y[32..])), s_hi);
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p_lo, p_hi));
                }
            }
            let d = _mm256_set1_ps(f16_to_f32(b.d));
            let dmin = _mm_set1_ps(f16_to_f32(b.dmin));
            for t in 0..T {
                let ab = &acts[t][i];
                let dy = _mm256_broadcast_ss(&ab.d);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), _mm256_mul_ps(d, dy), acc[t]);
                let pm = _mm_cvtepi32_ps(k4_min_dot(m16, &ab.bsums));
                accm[t] = _mm_fmadd_ps(pm, _mm_mul_ps(dmin, _mm256_castps256_ps128(dy)), accm[t]);
            }
        }
        let mut out = [0f32; T];
        for t in 0..T {
            out[t] = hsum_ps(acc[t]) - hsum_ps128(accm[t]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // Sub-block 0: scale 3, min 2; sub-block 5: scale 33 (0b100001), min 40 (0b101000).
        let mut scales = [0u8; 12];
        scales[0] = 3;
        scales[4] = 2;
        // j = 5: low nibbles in scales[9], high 2 bits in bits 6-7 of scales[1] (scale) and scales[5] (min).
        scales[9] = (33 & 0x0F) | ((40 & 0x0F) << 4);
        scales[1] |= (33 >> 4) << 6;
        scales[5] |= (40 >> 4) << 6;
        let mut b = BlockQ4K { d: f32_to_f16(0.5), dmin: f32_to_f16(0.25), scales, qs: [0; 128] };
        b.qs[0] = 0x07; // element 0 (sub-block 0): q = 7; element 32 (sub-block 1): q = 0
        b.qs[64 + 1] = 0x90; // chunk 2, l = 1: element 129 (sub-block 4) q = 0, element 161 (sub-block 5) q = 9
        let mut y = [0f32; 256];
        super::super::kquant::dequantize_row(&[b], &mut y);
        assert_eq!(y[0], 0.5 * 3.0 * 7.0 - 0.25 * 2.0);
        assert_eq!(y[161], 0.5 * 33.0 * 9.0 - 0.25 * 40.0);
        assert_eq!(scale_min_k4(5, &b.scales), (33, 40));
        assert_eq!(pack_scale_min_k4(&[3, 0, 0, 0, 0, 33, 0, 0], &[2, 0, 0, 0, 0, 40, 0, 0]), b.scales);
    }
}
