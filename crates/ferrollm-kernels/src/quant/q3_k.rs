//! Q3_K: 256 weights in 16 sub-blocks of 16, `w = d·(sc − 32)·q`, `q` in `-4..4` from 2 low
//! bits plus a high bit, 6-bit `sc` (ggml `block_q3_K`).

use super::act::BlockQ8K;
#[cfg(target_arch = "x86_64")]
use super::common::has_avx2;
use super::common::{f16_to_f32, f32_to_f16, Block};
use super::kquant::{KBlock, KUnpacked};

/// ggml layout: the weight `e = 128n + 32k + l` has low bits `2k..2k+2` of `qs[32n + l]` and
/// its high bit at bit `4n + k` of `hmask[l]` (a clear bit subtracts 4). The 6-bit scale `j`
/// keeps its low nibble in `scales[j % 8]` (low nibble for `j < 8`, high otherwise) and its top
/// two bits at bit `2(j / 4)` of `scales[8 + j % 4]`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; 32],
    pub qs: [u8; 64],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}
assert_block!(BlockQ3K, 110);

// SAFETY: repr(C) byte arrays only: alignment 1, no padding, any bit pattern is valid.
unsafe impl Block for BlockQ3K {
    const BYTES: usize = 110;
    const ELEMS: usize = 256;
}

fn scale(s: &[u8; 12], j: usize) -> i32 {
    let low = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i32 - 32
}

/// All sixteen 6-bit scales (unsigned, before the −32) as the bytes of two u64s, with 32-bit
/// masks instead of sixteen [`scale`] calls.
#[cfg(any(target_arch = "x86_64", test))]
pub(crate) fn scales6(s: &[u8; 12]) -> (u64, u64) {
    let a0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let a1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let hi = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let (low, top) = (0x0F0F_0F0F, 0x0303_0303);
    let j0 = (a0 & low) | ((hi & top) << 4);
    let j4 = (a1 & low) | (((hi >> 2) & top) << 4);
    let j8 = ((a0 >> 4) & low) | (((hi >> 4) & top) << 4);
    let j12 = ((a1 >> 4) & low) | (((hi >> 6) & top) << 4);
    (j0 as u64 | (j4 as u64) << 32, j8 as u64 | (j12 as u64) << 32)
}

fn pack_scales(sc: &[i32; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (j, &v) in sc.iter().enumerate() {
        let v = (v + 32) as u8;
        if j < 8 {
            s[j] |= v & 0x0F;
        } else {
            s[j - 8] |= (v & 0x0F) << 4;
        }
        s[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
    }
    s
}

impl KBlock for BlockQ3K {
    fn unpack(&self) -> KUnpacked {
        let mut u = KUnpacked { d: f16_to_f32(self.d), ..Default::default() };
        for j in 0..16 {
            u.sc[j] = scale(&self.scales, j);
        }
        for (e, q) in u.q.iter_mut().enumerate() {
            let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = ((self.qs[32 * n + l] >> (2 * k)) & 3) as i8;
            let high = (self.hmask[l] >> (4 * n + k)) & 1;
            *q = low - if high == 0 { 4 } else { 0 };
        }
        u
    }
}

/// Per 16 weights, the signed extreme maps to −4; scales are 6-bit signed against `d`.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ3K]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(256)) {
        let mut scales = [0f32; 16];
        for (s, g) in scales.iter_mut().zip(xs.chunks_exact(16)) {
            let max = g.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            *s = max / -4.0;
        }
        let max_scale = scales.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let iscale = if max_scale != 0.0 { -32.0 / max_scale } else { 0.0 };
        b.d = f32_to_f16(if iscale != 0.0 { 1.0 / iscale } else { 0.0 });
        let d = f16_to_f32(b.d);
        let sc: [i32; 16] = std::array::from_fn(|j| (iscale * scales[j]).round().clamp(-32.0, 31.0) as i32);
        b.scales = pack_scales(&sc);
        b.qs = [0; 64];
        b.hmask = [0; 32];
        for (e, &v) in xs.iter().enumerate() {
            let dl = d * sc[e / 16] as f32;
            let q = if dl != 0.0 { (v / dl).round().clamp(-4.0, 3.0) as i32 } else { 0 };
            let u = (q + 4) as u8;
            let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
            b.qs[32 * n + l] |= (u & 3) << (2 * k);
            b.hmask[l] |= (u >> 2) << (4 * n + k);
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
    super::kquant::dot_rows_scalar::<BlockQ3K>(bytes, row_bytes, acts, out)
}

/// `out[t] = Σ w·acts[t]` for up to 4 activation rows, with the fastest available code.
pub fn dot(w: &[BlockQ3K], acts: &[&[BlockQ8K]], out: &mut [f32]) {
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

    /// Quants enter `maddubs` unsigned (low bits plus 4·high bit, 0..8); the −4 offset is
    /// applied afterwards through the activation's 16-wide sums, as in the Q6_K kernel.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_tile<const T: usize>(w: &[BlockQ3K], acts: &[&[BlockQ8K]; T]) -> [f32; T] {
        for a in acts {
            assert_eq!(a.len(), w.len());
        }
        let mut acc = [_mm256_setzero_ps(); T];
        let three = _mm256_set1_epi8(3);
        let one = _mm256_set1_epi8(1);
        for (i, b) in w.iter().enumerate() {
            let (lo, hi) = scales6(&b.scales);
            let sc = _mm_sub_epi8(_mm_set_epi64x(hi as i64, lo as i64), _mm_set1_epi8(32));
            let hm = load32(&b.hmask);
            let mut sumi = [_mm256_setzero_si256(); T];
            for n in 0..2 {
                let qv = load32(&b.qs[32 * n..32 * n + 32]);
                for k in 0..4 {
                    let low = _mm256_and_si256(_mm256_srl_epi16(qv, _mm_cvtsi32_si128(2 * k as i32)), three);
                    let high = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128((4 * n + k) as i32)), one);
                    let q = _mm256_or_si256(low, _mm256_slli_epi16(high, 2));
                    let s = pair_scales(sc, 8 * n + 2 * k);
                    for t in 0..T {
                        let y = load32(&acts[t][i].qs[128 * n + 32 * k..128 * n + 32 * k + 32]);
                        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), s));
                    }
                }
            }
            let d = _mm256_set1_ps(f16_to_f32(b.d));
            let sc16 = _mm256_cvtepi8_epi16(sc);
            for t in 0..T {
                let ab = &acts[t][i];
                // The −4 offset: 4 · Σ_j sc[j] · bsums[j], as 8 i32 partial sums.
                let off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load32(&ab.bsums)), 2);
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
        let mut b = BlockQ3K { hmask: [0; 32], qs: [0; 64], scales: [0; 12], d: f32_to_f16(0.5) };
        // Scale 0 = 40 - 32 = 8: 40 = 0b10_1000, low nibble 8 in scales[0], top bits 2 at bits 0-1 of scales[8].
        b.scales[0] = 0x08;
        b.scales[8] = 0b10;
        // Scale 14 = 1 - 32 = -31: low nibble 1 in high nibble of scales[6]; top bits 0 (scales[10] bits 6-7).
        b.scales[6] = 0x10;
        // Element 0: qs[0] bits 0-1 = 3, hmask[0] bit 0 set -> q = 3.
        b.qs[0] = 3;
        b.hmask[0] = 1;
        // Element 128 + 96 + 5 = 229 (n 1, k 3, l 5; sub-block 14): qs[37] bits 6-7 = 1, hmask[5] bit 7 clear -> q = -3.
        b.qs[37] = 0b0100_0000;
        let mut y = [0f32; 256];
        super::super::kquant::dequantize_row(&[b], &mut y);
        assert_eq!(y[0], 0.5 * 8.0 * 3.0);
        assert_eq!(y[229], 0.5 * -31.0 * -3.0);
        assert_eq!(y[1], 0.5 * 8.0 * -4.0);
        // Unset scale bytes decode to -32.
        assert_eq!(scale(&b.scales, 3), -32);
    }

    #[test]
    fn packed_scale_decoder_agrees() {
        let mut x = 0x0123_4567_89AB_CDEFu64;
        for _ in 0..1000 {
            let s = super::super::kquant::random_scale_bytes(&mut x);
            let (lo, hi) = scales6(&s);
            for j in 0..16 {
                let v = if j < 8 { lo >> (8 * j) } else { hi >> (8 * (j - 8)) } as u8;
                assert_eq!(v as i32 - 32, scale(&s, j));
            }
        }
    }
}
