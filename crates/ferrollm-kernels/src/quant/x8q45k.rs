//! Q4_K and Q5_K weights interleaved eight rows at a time: the [`super::x8`] scheme for the
//! 256-weight super-blocks with 6-bit sub-block scales and mins, in the same bytes as eight GGUF
//! blocks (1,152 and 1,408). Q4_K_M files store most matrices in Q4_K (all of a Llama's,
//! Qwen2.5's `ffn_down`), Q5_K_M files in Q5_K.
//!
//! A 32-byte load holds four quants of each of eight rows; `maddubs` against four broadcast
//! activation bytes gives all eight rows' partial sums of a 32-weight sub-block, kept in i16
//! for its eight steps (four for Q5_K, whose fifth bit is or-ed in per step). The sub-block
//! scale is applied by the widening `madd` (its operand is the row's scale instead of 1), so the
//! integer sum `Σ_j sc_j·Σ q·a` per row is exact, as is the min term `Σ_j m_j·bsum_j`. Each
//! output is then `acc = fma(isum, d·da, acc); acc = fma(−msum, dmin·da, acc)` super-block after
//! super-block, whatever the number of tokens, in the scalar path too: bit-identical across
//! paths and batch shapes.
//!
//! The 96 bytes of 6-bit scales and mins are re-laid so that a few masks and shifts unpack all
//! 128 of them into two registers per kind, and one `pshufb` then spreads a sub-block's eight
//! scales over the rows' lanes (see [`X8K4`]).

use super::act::BlockQ8K;
#[cfg(target_arch = "x86_64")]
use super::common::has_avx2;
use super::common::Block;
use super::kquant::{pack_scale_min_k4, scale_min_k4, KBlock};
use super::q4_k::BlockQ4K;
use super::q5_k::BlockQ5K;
use super::x8::{Interleaved, ROWS};

/// One super-block position (256 weights) of eight rows; `HB` is 0 (Q4_K) or 256 (Q5_K).
///
/// `qs`: chunk `c` (0..4, sub-blocks `2c` and `2c + 1`) is the 256 bytes at `256c`; its step `s`
/// (0..8) is the 32 bytes at `256c + 32s`, byte `4r + i` row `r`'s GGUF `qs[32c + 4s + i]`: low
/// nibble element `64c + 4s + i`, high nibble element `64c + 32 + 4s + i`. `qh` (Q5_K): step `s`
/// is the 32 bytes at `32s`, byte `4r + i` row `r`'s GGUF `qh[4s + i]`, whose bit `j` is the
/// fifth bit of element `32j + 4s + i`.
///
/// Scales and mins (6 bits each, 64 of each): value `(j, r)` (sub-block `j`, row `r`) has slot
/// `k = 16·(r / 4) + 4·(j % 4) + r % 4` in half `h = j / 4`. `scl[k]` holds the low 4 bits of
/// the scale of half 0 (low nibble) and half 1 (high nibble), `ml[k]` the same for mins, and
/// `sh[k]` the high 2 bits: half-0 scale in bits 0-1, half-1 scale 2-3, half-0 min 4-5, half-1
/// min 6-7. Unpacked, a half is one register whose 128-bit lane `L` holds rows `4L..4L + 4`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct X8K4<const HB: usize> {
    pub d: [u8; 16],
    pub dmin: [u8; 16],
    pub scl: [u8; 32],
    pub ml: [u8; 32],
    pub sh: [u8; 32],
    pub qh: [u8; HB],
    pub qs: [u8; 1024],
}

pub type X8Q4K = X8K4<0>;
pub type X8Q5K = X8K4<256>;
assert_block!(X8Q4K, 1152);
assert_block!(X8Q5K, 1408);

// SAFETY: repr(C) byte arrays only: alignment 1, no padding, any bit pattern is valid.
unsafe impl<const HB: usize> Block for X8K4<HB> {
    const BYTES: usize = 1152 + HB;
    const ELEMS: usize = 256 * ROWS;
}

/// The fields of a Q4_K or Q5_K block (`qh` zero for Q4_K).
pub struct K4Parts {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; 128],
    pub qh: [u8; 32],
}

/// The GGUF blocks that pack into [`X8K4`]: Q4_K, and Q5_K with its fifth bits.
pub trait K4Source: KBlock {
    const HB: usize;
    fn parts(&self) -> K4Parts;
    fn from_parts(p: K4Parts) -> Self;
}

impl K4Source for BlockQ4K {
    const HB: usize = 0;
    fn parts(&self) -> K4Parts {
        K4Parts { d: self.d, dmin: self.dmin, scales: self.scales, qs: self.qs, qh: [0; 32] }
    }
    fn from_parts(p: K4Parts) -> Self {
        BlockQ4K { d: p.d, dmin: p.dmin, scales: p.scales, qs: p.qs }
    }
}

impl K4Source for BlockQ5K {
    const HB: usize = 256;
    fn parts(&self) -> K4Parts {
        K4Parts { d: self.d, dmin: self.dmin, scales: self.scales, qs: self.qs, qh: self.qh }
    }
    fn from_parts(p: K4Parts) -> Self {
        BlockQ5K { d: p.d, dmin: p.dmin, scales: p.scales, qh: p.qh, qs: p.qs }
    }
}

/// Half and slot of scale `(j, r)`; see [`X8K4`].
fn slot(j: usize, r: usize) -> (usize, usize) {
    (j / 4, 16 * (r / 4) + 4 * (j % 4) + r % 4)
}

impl<const HB: usize> X8K4<HB> {
    /// Packs one super-block of each of eight rows.
    pub fn pack<W: K4Source>(rows: [&W; ROWS]) -> Self {
        assert_eq!(W::HB, HB, "interleaved layout does not match the source format");
        let mut out =
            X8K4 { d: [0; 16], dmin: [0; 16], scl: [0; 32], ml: [0; 32], sh: [0; 32], qh: [0; HB], qs: [0; 1024] };
        for (r, w) in rows.iter().enumerate() {
            let K4Parts { d, dmin, scales, qs, qh } = w.parts();
            out.d[2 * r..2 * r + 2].copy_from_slice(&d);
            out.dmin[2 * r..2 * r + 2].copy_from_slice(&dmin);
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, &scales);
                let (h, k) = slot(j, r);
                out.scl[k] |= (sc & 0x0F) << (4 * h);
                out.ml[k] |= (m & 0x0F) << (4 * h);
                out.sh[k] |= (sc >> 4) << (2 * h) | (m >> 4) << (4 + 2 * h);
            }
            for c in 0..4 {
                for l in 0..32 {
                    out.qs[256 * c + 32 * (l / 4) + 4 * r + l % 4] = qs[32 * c + l];
                }
            }
            if HB > 0 {
                for (l, &byte) in qh.iter().enumerate() {
                    out.qh[32 * (l / 4) + 4 * r + l % 4] = byte;
                }
            }
        }
        out
    }

    /// Row `r` (0..8) as the GGUF block it was packed from.
    pub fn row<W: K4Source>(&self, r: usize) -> W {
        assert_eq!(W::HB, HB, "interleaved layout does not match the source format");
        let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
        for j in 0..8 {
            let (h, k) = slot(j, r);
            sc[j] = (self.scl[k] >> (4 * h)) & 0x0F | ((self.sh[k] >> (2 * h)) & 3) << 4;
            m[j] = (self.ml[k] >> (4 * h)) & 0x0F | ((self.sh[k] >> (4 + 2 * h)) & 3) << 4;
        }
        let qs = std::array::from_fn(|x| self.qs[256 * (x / 32) + 32 * (x % 32 / 4) + 4 * r + x % 4]);
        let qh = std::array::from_fn(|l| if HB > 0 { self.qh[32 * (l / 4) + 4 * r + l % 4] } else { 0 });
        W::from_parts(K4Parts {
            d: [self.d[2 * r], self.d[2 * r + 1]],
            dmin: [self.dmin[2 * r], self.dmin[2 * r + 1]],
            scales: pack_scale_min_k4(&sc, &m),
            qs,
            qh,
        })
    }
}

/// Interleaves a row-major Q4_K (`W = BlockQ4K`, `HB = 0`) or Q5_K (`BlockQ5K`, 256) matrix
/// (`rows` a multiple of 8); layout as in [`super::x8::interleave`].
pub fn interleave<W: K4Source, const HB: usize>(bytes: &[u8], rows: usize) -> Vec<u8> {
    super::x8::interleave_with(bytes, rows, X8K4::<HB>::pack::<W>)
}

/// Scalar reference of [`Interleaved::dot_group`] (`W` the source format), bit-identical to the
/// AVX2 and NEON paths.
pub fn dot_group_scalar<W: K4Source, const HB: usize>(
    blocks: &[X8K4<HB>],
    acts: &[&[BlockQ8K]],
    out: &mut [[f32; ROWS]],
) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        assert_eq!(a.len(), blocks.len());
        *o = [0f32; ROWS];
        for (blk, ab) in blocks.iter().zip(a.iter()) {
            for (r, acc) in o.iter_mut().enumerate() {
                let u = blk.row::<W>(r).unpack();
                let (mut isum, mut msum) = (0i32, 0i32);
                for j in 0..8 {
                    let s: i32 = (32 * j..32 * j + 32).map(|e| u.q[e] as i32 * ab.qs[e] as i32).sum();
                    isum += u.sc[2 * j] * s;
                    msum += u.m[2 * j] * (ab.bsums[2 * j] as i32 + ab.bsums[2 * j + 1] as i32);
                }
                *acc = (isum as f32).mul_add(u.d * ab.d, *acc);
                *acc = (-(msum as f32)).mul_add(u.dmin * ab.d, *acc);
            }
        }
    }
}

/// [`Interleaved`] for one source format: the layouts differ only in `HB`.
macro_rules! interleaved_k4 {
    ($w:ty, $hb:expr) => {
        impl Interleaved for X8K4<$hb> {
            type Act = BlockQ8K;

            fn dot_group(blocks: &[Self], acts: &[&[BlockQ8K]], out: &mut [[f32; ROWS]]) {
                #[cfg(target_arch = "x86_64")]
                if has_avx2() {
                    // SAFETY: AVX2, FMA and F16C were detected.
                    unsafe { avx2::dot_group(blocks, acts, out) };
                    return;
                }
                #[cfg(target_arch = "aarch64")]
                if super::common::has_neon() {
                    // SAFETY: NEON was detected.
                    unsafe { super::xk_neon::dot_group_k4(blocks, acts, out) };
                    return;
                }
                dot_group_scalar::<$w, $hb>(blocks, acts, out)
            }

            fn dequantize_row(blocks: &[Self], r: usize, out: &mut [f32]) {
                for (b, y) in blocks.iter().zip(out.chunks_exact_mut(256)) {
                    super::kquant::dequantize_row(&[b.row::<$w>(r)], y);
                }
            }
        }
    };
}
interleaved_k4!(BlockQ4K, 0);
interleaved_k4!(BlockQ5K, 256);

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::x86::{broadcast4, dot_group_by_tokens, pair_ctl, prefetch_ahead, store_rows8};
    use super::*;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_group<const HB: usize>(blocks: &[X8K4<HB>], acts: &[&[BlockQ8K]], out: &mut [[f32; ROWS]]) {
        dot_group_by_tokens!(dot_blocks, HB; blocks, acts, out)
    }

    /// Eight rows' accumulators per token, lane `r` for row `r`.
    ///
    /// Integer sums: a `maddubs` lane adds two products of a quant (below 16, or 32 for Q5_K)
    /// and an activation byte (|a| ≤ 127, see [`super::super::act`]); a sub-block's eight steps
    /// (Q4_K: 16·15·127 = 30,480) or four (Q5_K: 8·31·127 = 31,496) stay below i16's 32,767. The
    /// scale `madd` gives at most 2·31,496·63 per half sub-block, 64 M over a super-block: i32
    /// holds it. Mins: `bsum` pairs below 32·127 times mins below 64.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_blocks<const HB: usize, const T: usize>(blocks: &[X8K4<HB>], acts: &[&[BlockQ8K]; T]) -> [__m256; T] {
        let nib = _mm256_set1_epi8(0x0F);
        let top = _mm256_set1_epi8(0x30);
        let bit4 = _mm256_set1_epi8(0x10);
        // Sub-block `4h + q`'s scale in both halves of its rows' i16 pairs; min pairs (j, j + 1).
        let scale_ctl: [__m256i; 4] = std::array::from_fn(|q| pair_ctl::<false>(q as i8, q as i8));
        let min_ctl = [pair_ctl::<false>(0, 1), pair_ctl::<false>(2, 3)];
        let mut acc = [_mm256_setzero_ps(); T];
        for (b, blk) in blocks.iter().enumerate() {
            prefetch_ahead(blk);
            // SAFETY: each field read is 16 or 32 readable bytes; unaligned loads.
            let (dw, dminw, scl, ml, sh) = unsafe {
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(blk.d.as_ptr().cast())),
                    _mm256_cvtph_ps(_mm_loadu_si128(blk.dmin.as_ptr().cast())),
                    _mm256_loadu_si256(blk.scl.as_ptr().cast()),
                    _mm256_loadu_si256(blk.ml.as_ptr().cast()),
                    _mm256_loadu_si256(blk.sh.as_ptr().cast()),
                )
            };
            // The 16-bit shifts carry bits across bytes only into bits the masks clear.
            let sc = [
                _mm256_or_si256(_mm256_and_si256(scl, nib), _mm256_and_si256(_mm256_slli_epi16(sh, 4), top)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(scl, 4), nib),
                    _mm256_and_si256(_mm256_slli_epi16(sh, 2), top),
                ),
            ];
            let mins = [
                _mm256_or_si256(_mm256_and_si256(ml, nib), _mm256_and_si256(sh, top)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ml, 4), nib),
                    _mm256_and_si256(_mm256_srli_epi16(sh, 2), top),
                ),
            ];
            let mut isum = [_mm256_setzero_si256(); T];
            for j in 0..8 {
                let (c, h) = (j / 2, j % 2);
                let scv = _mm256_shuffle_epi8(sc[j / 4], scale_ctl[j % 4]);
                let mut s16 = [_mm256_setzero_si256(); T];
                for s in 0..8 {
                    // SAFETY: step `s` of chunk `c` is 32 readable bytes of `qs`; unaligned load.
                    let v = unsafe { _mm256_loadu_si256(blk.qs.as_ptr().add(256 * c + 32 * s).cast()) };
                    let mut w =
                        if h == 0 { _mm256_and_si256(v, nib) } else { _mm256_and_si256(_mm256_srli_epi16(v, 4), nib) };
                    if HB > 0 {
                        // SAFETY: step `s` of `qh` is 32 readable bytes when HB > 0.
                        let qh = unsafe { _mm256_loadu_si256(blk.qh.as_ptr().add(32 * s).cast()) };
                        // Bit j of each byte to bit 4; the 16-bit shifts carry bits across
                        // bytes, but bit 4 of either byte comes from bit j of the same byte.
                        let hi = match j {
                            0..=4 => _mm256_sll_epi16(qh, _mm_cvtsi32_si128(4 - j as i32)),
                            _ => _mm256_srl_epi16(qh, _mm_cvtsi32_si128(j as i32 - 4)),
                        };
                        w = _mm256_or_si256(w, _mm256_and_si256(hi, bit4));
                    }
                    let e = 32 * j + 4 * s;
                    for t in 0..T {
                        s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(w, broadcast4(&acts[t][b].qs, e)));
                    }
                    // Q5_K widens every four steps, Q4_K after all eight.
                    if s == 7 || (HB > 0 && s == 3) {
                        for t in 0..T {
                            isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s16[t], scv));
                            s16[t] = _mm256_setzero_si256();
                        }
                    }
                }
            }
            let mpair: [__m256i; 4] = std::array::from_fn(|p| _mm256_shuffle_epi8(mins[p / 2], min_ctl[p % 2]));
            for t in 0..T {
                let ab = &acts[t][b];
                // SAFETY: `bsums` is 32 readable bytes; unaligned load.
                let bs = unsafe { _mm256_loadu_si256(ab.bsums.as_ptr().cast()) };
                // Sub-block sums: i16 lanes 0..4 (sub-blocks 0..4) and 8..12 (4..8); as i32
                // lanes 0, 1, 4, 5 they are the pairs (0, 1), (2, 3), (4, 5), (6, 7).
                let bs = _mm256_hadd_epi16(bs, bs);
                let mut msum = _mm256_setzero_si256();
                for (p, lane) in [0, 1, 4, 5].into_iter().enumerate() {
                    let bp = _mm256_permutevar8x32_epi32(bs, _mm256_set1_epi32(lane));
                    msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mpair[p], bp));
                }
                let da = _mm256_set1_ps(ab.d);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(dw, da), acc[t]);
                acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dminw, da), acc[t]);
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::{as_blocks, block_bytes, f32_to_f16};
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Random Q4_K or Q5_K rows: every byte random (so every 6-bit scale and min, every nibble
    /// and fifth bit occurs), with sane f16 scales (the first four bytes of both formats).
    fn random_rows<W: K4Source>(rng: &mut StdRng, rows: usize, per_row: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..rows * per_row * W::BYTES).map(|_| rng.gen()).collect();
        for blk in bytes.chunks_exact_mut(W::BYTES) {
            blk[..2].copy_from_slice(&f32_to_f16(rng.gen_range(-0.01..0.01)));
            blk[2..4].copy_from_slice(&f32_to_f16(rng.gen_range(0.0..0.01)));
        }
        bytes
    }

    fn check<W: K4Source, const HB: usize>(seed: u64)
    where
        X8K4<HB>: Interleaved<Act = BlockQ8K>,
    {
        let mut rng = StdRng::seed_from_u64(seed);
        for per_row in [1usize, 3, 19] {
            let rows = 16;
            let bytes = random_rows::<W>(&mut rng, rows, per_row);
            let src: &[W] = as_blocks(&bytes);
            let packed = interleave::<W, HB>(&bytes, rows);
            assert_eq!(packed.len(), bytes.len(), "same bytes as the row layout");
            let x8: &[X8K4<HB>] = as_blocks(&packed);
            let xs: Vec<Vec<BlockQ8K>> = super::super::x8::tests::random_acts(&mut rng, 4, per_row);
            let acts: Vec<&[BlockQ8K]> = xs.iter().map(|a| a.as_slice()).collect();
            for g in 0..rows / ROWS {
                let group = &x8[g * per_row..(g + 1) * per_row];
                let mut want = [[0f32; ROWS]; 4];
                dot_group_scalar::<W, HB>(group, &acts, &mut want);
                for r in 0..ROWS {
                    let row = &src[(g * ROWS + r) * per_row..(g * ROWS + r + 1) * per_row];
                    for (b, blk) in row.iter().enumerate() {
                        // Scales and mins round-trip through the 6-bit re-layout; so do the quants.
                        let back: W = group[b].row(r);
                        assert_eq!(block_bytes(&[back]), block_bytes(std::slice::from_ref(blk)));
                    }
                    let mut reference = [0f32; 4];
                    super::super::kquant::dot_scalar(row, &acts, &mut reference);
                    for t in 0..4 {
                        let tol = 1e-4 * (1.0 + reference[t].abs());
                        assert!((want[t][r] - reference[t]).abs() <= tol, "{} vs {}", want[t][r], reference[t]);
                    }
                }
                for k in 1..=4 {
                    let mut got = [[0f32; ROWS]; 4];
                    X8K4::<HB>::dot_group(group, &acts[..k], &mut got);
                    assert_eq!(got[..k], want[..k], "{k} tokens: fast path is not bit-identical to the scalar one");
                }
            }
        }
    }

    #[test]
    fn q4_k_packs_and_matches_the_row_kernel_bit_for_bit_across_tiles() {
        check::<BlockQ4K, 0>(13);
    }

    #[test]
    fn q5_k_packs_and_matches_the_row_kernel_bit_for_bit_across_tiles() {
        check::<BlockQ5K, 256>(14);
    }
}
