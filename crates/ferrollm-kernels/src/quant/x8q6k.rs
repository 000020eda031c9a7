//! Q6_K weights interleaved eight rows at a time: the [`super::x8`] scheme for 6-bit quants
//! with signed 8-bit scales per 16 weights, in the same 1,680 bytes as eight GGUF blocks.
//! Q4_K_M files keep the output head (the largest matrix a Llama reads per token) and some
//! `ffn_down` matrices in Q6_K.
//!
//! Step `s` (0..8) covers weights `4s..4s + 4` of each of the eight 32-weight quarters of eight
//! rows; a few masks and shifts make the 6-bit quants from the low nibbles and high bits, and
//! `maddubs` against broadcast activation bytes sums them for all eight rows, widened by a
//! `madd` that applies the sub-block scale. The `−32` offset comes from `bsums`.
//!
//! The float order is the row kernel's ([`super::q6_k`], itself llama.cpp's AVX2 order): there
//! a block's integer sums sit in eight lanes, lane `λ` holding exactly what step `λ` sums
//! here, each lane is accumulated in f32 across blocks, and the lanes are added at the end as
//! `hsum_ps` does. Doing the same per step makes every output bit-identical to the row layout
//! (and so to the scalar reference and across batch shapes), which keeps our agreement with
//! llama.cpp where it was.

use super::act::BlockQ8K;
#[cfg(target_arch = "x86_64")]
use super::common::has_avx2;
use super::common::Block;
use super::kquant::KBlock;
use super::q6_k::BlockQ6K;
use super::x8::{Interleaved, ROWS};

/// One super-block position (256 weights) of eight rows.
///
/// `q` holds the quants in the order the kernel reads them: with `e = 128n + 32k + 4s + i`
/// (half `n`, quarter `k`, step `s` 0..8, `i` 0..4), step `s` is the 192 bytes at `192s`: for
/// `n` = 0 then 1, the low-nibble bytes of quarters 0/2, of quarters 1/3, and the high-bit
/// bytes (32 each); byte `4r + i` of each 32 is row `r`'s. Reading it front to back streams the
/// block once. Scale `(j, r)` (sub-block `j` 0..16) is
/// `sc[32·(j / 4) + 16·(r / 4) + 4·(j % 4) + r % 4]`: a 32-byte load holds four sub-blocks,
/// 128-bit lane `L` rows `4L..4L + 4`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct X8Q6K {
    pub d: [u8; 16],
    pub sc: [i8; 128],
    pub q: [u8; 1536],
}
assert_block!(X8Q6K, 1680);

// SAFETY: repr(C) byte arrays only: alignment 1, no padding, any bit pattern is valid.
unsafe impl Block for X8Q6K {
    const BYTES: usize = 1680;
    const ELEMS: usize = 256 * ROWS;
}

fn sc_index(j: usize, r: usize) -> usize {
    32 * (j / 4) + 16 * (r / 4) + 4 * (j % 4) + r % 4
}

/// Where row `r`'s GGUF `ql[x]` goes, `x = 64n + 32h + 4s + i` (`h = k & 1`).
fn ql_index(x: usize, r: usize) -> usize {
    let (n, h, s, i) = (x / 64, (x / 32) % 2, (x % 32) / 4, x % 4);
    192 * s + 96 * n + 32 * h + 4 * r + i
}

/// Where row `r`'s GGUF `qh[x]` goes, `x = 32n + 4s + i`.
fn qh_index(x: usize, r: usize) -> usize {
    let (n, s, i) = (x / 32, (x % 32) / 4, x % 4);
    192 * s + 96 * n + 64 + 4 * r + i
}

/// Eight per-step (per-lane) sums added as `hsum_ps` adds its lanes.
#[inline(always)]
fn lane_sum(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

impl X8Q6K {
    /// Packs one super-block of each of eight rows.
    pub fn pack(rows: [&BlockQ6K; ROWS]) -> Self {
        let mut out = X8Q6K { d: [0; 16], sc: [0; 128], q: [0; 1536] };
        for (r, w) in rows.iter().enumerate() {
            out.d[2 * r..2 * r + 2].copy_from_slice(&w.d);
            for j in 0..16 {
                out.sc[sc_index(j, r)] = w.scales[j];
            }
            for x in 0..128 {
                out.q[ql_index(x, r)] = w.ql[x];
            }
            for x in 0..64 {
                out.q[qh_index(x, r)] = w.qh[x];
            }
        }
        out
    }

    /// Row `r` (0..8) as the GGUF block it was packed from.
    pub fn row(&self, r: usize) -> BlockQ6K {
        BlockQ6K {
            ql: std::array::from_fn(|x| self.q[ql_index(x, r)]),
            qh: std::array::from_fn(|x| self.q[qh_index(x, r)]),
            scales: std::array::from_fn(|j| self.sc[sc_index(j, r)]),
            d: [self.d[2 * r], self.d[2 * r + 1]],
        }
    }
}

/// Interleaves a row-major Q6_K matrix (`rows` a multiple of 8); layout as in [`super::x8::interleave`].
pub fn interleave(bytes: &[u8], rows: usize) -> Vec<u8> {
    super::x8::interleave_with(bytes, rows, X8Q6K::pack)
}

/// Scalar reference of [`Interleaved::dot_group`], bit-identical to the AVX2 and NEON paths.
pub fn dot_group_scalar(blocks: &[X8Q6K], acts: &[&[BlockQ8K]], out: &mut [[f32; ROWS]]) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        assert_eq!(a.len(), blocks.len());
        for (r, out_r) in o.iter_mut().enumerate() {
            let mut acc = [0f32; 8];
            for (blk, ab) in blocks.iter().zip(a.iter()) {
                let u = blk.row(r).unpack();
                for (s, acc_s) in acc.iter_mut().enumerate() {
                    let mut isum = 0i32;
                    for n in 0..2 {
                        for k in 0..4 {
                            let e = 128 * n + 32 * k + 4 * s;
                            let dot: i32 = (e..e + 4).map(|e| (u.q[e] as i32 + 32) * ab.qs[e] as i32).sum();
                            isum += u.sc[8 * n + 2 * k + s / 4] * dot;
                        }
                    }
                    let off = u.sc[2 * s] * ab.bsums[2 * s] as i32 + u.sc[2 * s + 1] * ab.bsums[2 * s + 1] as i32;
                    *acc_s = ((isum - 32 * off) as f32).mul_add(u.d * ab.d, *acc_s);
                }
            }
            *out_r = lane_sum(acc);
        }
    }
}

impl Interleaved for X8Q6K {
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
            unsafe { super::xk_neon::dot_group_q6k(blocks, acts, out) };
            return;
        }
        dot_group_scalar(blocks, acts, out)
    }

    fn dequantize_row(blocks: &[Self], r: usize, out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(256)) {
            super::kquant::dequantize_row(&[b.row(r)], y);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::x86::{broadcast4, dot_group_by_tokens, pair_ctl, prefetch_ahead, store_rows8};
    use super::*;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_group(blocks: &[X8Q6K], acts: &[&[BlockQ8K]], out: &mut [[f32; ROWS]]) {
        dot_group_by_tokens!(dot_blocks; blocks, acts, out)
    }

    /// Sign-extended i16 pairs of two scale bytes per row lane (see [`pair_ctl`] with `HIGH`): the
    /// arithmetic shift brings each byte down from the high half with its sign.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn scale_pairs(v: __m256i, ctl: __m256i) -> __m256i {
        _mm256_srai_epi16(_mm256_shuffle_epi8(v, ctl), 8)
    }

    /// Quarter `k`'s 6-bit quants of one step: low nibbles (`k < 2`) or high nibbles of `ql`,
    /// and bits `2k, 2k + 1` of `qh` moved to bits 4 and 5. The 16-bit shifts carry bits across
    /// bytes only into bits the masks clear.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn quants6(ql: __m256i, qh: __m256i, k: usize, nib: __m256i, top: __m256i) -> __m256i {
        let lo = if k < 2 { _mm256_and_si256(ql, nib) } else { _mm256_and_si256(_mm256_srli_epi16(ql, 4), nib) };
        let hi = match k {
            0 => _mm256_slli_epi16(qh, 4),
            1 => _mm256_slli_epi16(qh, 2),
            2 => qh,
            _ => _mm256_srli_epi16(qh, 2),
        };
        _mm256_or_si256(lo, _mm256_and_si256(hi, top))
    }

    /// Eight rows' outputs per token, lane `r` for row `r`.
    ///
    /// Integer sums: a `maddubs` lane adds two products of a quant (below 64) and an activation
    /// byte (|a| ≤ 127, see [`super::super::act`]), at most 16,002, and is widened at once by
    /// the scale `madd` (|sc| ≤ 128). A step's `Σ sc·q·a` is at most 8·4·128·63·127 ≈ 33 M and
    /// its offset `32·(sc·bsum + sc·bsum)` 32·2·128·2,032 ≈ 17 M: i32 holds both.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_blocks<const T: usize>(blocks: &[X8Q6K], acts: &[&[BlockQ8K]; T]) -> [__m256; T] {
        let nib = _mm256_set1_epi8(0x0F);
        let top = _mm256_set1_epi8(0x30);
        // Sub-block `4q + ..`'s scale twice per row; sub-blocks (2p, 2p + 1) for the offset.
        let same: [__m256i; 4] = std::array::from_fn(|q| pair_ctl::<true>(q as i8, q as i8));
        let pair = [pair_ctl::<true>(0, 1), pair_ctl::<true>(2, 3)];
        // One f32 accumulator per step (the row kernel's lane) and token.
        let mut acc = [[_mm256_setzero_ps(); T]; 8];
        for (b, blk) in blocks.iter().enumerate() {
            prefetch_ahead(blk);
            // SAFETY: `d` is 16 readable bytes; unaligned load.
            let dw = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(blk.d.as_ptr().cast()) });
            // SAFETY: each of the four is 32 readable bytes of `sc`; unaligned loads.
            let scv: [__m256i; 4] =
                std::array::from_fn(|q| unsafe { _mm256_loadu_si256(blk.sc.as_ptr().add(32 * q).cast()) });
            // Each sub-block's scale pairs, made once per block rather than once per step.
            let mut svs = [_mm256_setzero_si256(); 16];
            for (j, sv) in svs.iter_mut().enumerate() {
                *sv = scale_pairs(scv[j / 4], same[j % 4]);
            }
            let mut scale = [_mm256_setzero_ps(); T];
            let mut bsums = [_mm256_setzero_si256(); T];
            for t in 0..T {
                let ab = &acts[t][b];
                scale[t] = _mm256_mul_ps(dw, _mm256_set1_ps(ab.d));
                // SAFETY: `bsums` is 32 readable bytes; unaligned load. i32 lane p holds the
                // sums of sub-blocks 2p and 2p + 1.
                bsums[t] = unsafe { _mm256_loadu_si256(ab.bsums.as_ptr().cast()) };
            }
            for s in 0..8 {
                // SAFETY: step `s` is 192 readable bytes of `q` (6 loads of 32).
                let (l0, l1, h0, h1) = unsafe {
                    let c = blk.q.as_ptr().add(192 * s);
                    let at = |o: usize| _mm256_loadu_si256(c.add(o).cast());
                    ([at(0), at(32)], [at(96), at(128)], at(64), at(160))
                };
                let mut isum = [_mm256_setzero_si256(); T];
                for n in 0..2 {
                    let (l, h) = if n == 0 { (l0, h0) } else { (l1, h1) };
                    for k in 0..4 {
                        let w = quants6(l[k & 1], h, k, nib, top);
                        let j = 8 * n + 2 * k + s / 4;
                        let sv = svs[j];
                        let e = 128 * n + 32 * k + 4 * s;
                        for t in 0..T {
                            let p = _mm256_maddubs_epi16(w, broadcast4(&acts[t][b].qs, e));
                            isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, sv));
                        }
                    }
                }
                let sp = scale_pairs(scv[s / 2], pair[s % 2]);
                for t in 0..T {
                    let bp = _mm256_permutevar8x32_epi32(bsums[t], _mm256_set1_epi32(s as i32));
                    let off = _mm256_slli_epi32(_mm256_madd_epi16(sp, bp), 5);
                    let total = _mm256_sub_epi32(isum[t], off);
                    acc[s][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), scale[t], acc[s][t]);
                }
            }
        }
        // The steps' sums added as `hsum_ps` adds lanes: ((0+4)+(2+6))+((1+5)+(3+7)).
        let mut out = [_mm256_setzero_ps(); T];
        for (t, o) in out.iter_mut().enumerate() {
            let even = _mm256_add_ps(_mm256_add_ps(acc[0][t], acc[4][t]), _mm256_add_ps(acc[2][t], acc[6][t]));
            let odd = _mm256_add_ps(_mm256_add_ps(acc[1][t], acc[5][t]), _mm256_add_ps(acc[3][t], acc[7][t]));
            *o = _mm256_add_ps(even, odd);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::{as_blocks, block_bytes, f32_to_f16, has_avx2};
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Random Q6_K rows: every byte random (every quant, high-bit pair and signed scale,
    /// −128 included), with a sane f16 scale.
    fn random_rows(rng: &mut StdRng, rows: usize, per_row: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..rows * per_row * 210).map(|_| rng.gen()).collect();
        for blk in bytes.chunks_exact_mut(210) {
            blk[208..].copy_from_slice(&f32_to_f16(rng.gen_range(-0.001..0.001)));
        }
        bytes
    }

    #[test]
    fn packs_and_matches_the_row_kernel_bit_for_bit_across_tiles() {
        let mut rng = StdRng::seed_from_u64(17);
        for per_row in [1usize, 3, 19] {
            let rows = 16;
            let bytes = random_rows(&mut rng, rows, per_row);
            let src: &[BlockQ6K] = as_blocks(&bytes);
            let packed = interleave(&bytes, rows);
            assert_eq!(packed.len(), bytes.len(), "same bytes as the row layout");
            let x8: &[X8Q6K] = as_blocks(&packed);
            let xs: Vec<Vec<BlockQ8K>> = super::super::x8::tests::random_acts(&mut rng, 4, per_row);
            let acts: Vec<&[BlockQ8K]> = xs.iter().map(|a| a.as_slice()).collect();
            for g in 0..rows / ROWS {
                let group = &x8[g * per_row..(g + 1) * per_row];
                let mut want = [[0f32; ROWS]; 4];
                dot_group_scalar(group, &acts, &mut want);
                for r in 0..ROWS {
                    let row = &src[(g * ROWS + r) * per_row..(g * ROWS + r + 1) * per_row];
                    for (b, blk) in row.iter().enumerate() {
                        let back = group[b].row(r);
                        assert_eq!(block_bytes(&[back]), block_bytes(std::slice::from_ref(blk)));
                    }
                    let mut reference = [0f32; 4];
                    super::super::kquant::dot_scalar(row, &acts, &mut reference);
                    for t in 0..4 {
                        let tol = 1e-4 * (1.0 + reference[t].abs());
                        assert!((want[t][r] - reference[t]).abs() <= tol, "{} vs {}", want[t][r], reference[t]);
                    }
                    // The row layout's AVX2 kernel adds in the same order: the same bits.
                    if has_avx2() {
                        let mut rows_kernel = [0f32; 4];
                        super::super::q6_k::dot(row, &acts, &mut rows_kernel);
                        let got: [f32; 4] = std::array::from_fn(|t| want[t][r]);
                        assert_eq!(got, rows_kernel, "row {r}: not the row kernel's bits");
                    }
                }
                for k in 1..=4 {
                    let mut got = [[0f32; ROWS]; 4];
                    X8Q6K::dot_group(group, &acts[..k], &mut got);
                    assert_eq!(got[..k], want[..k], "{k} tokens: fast path is not bit-identical to the scalar one");
                }
            }
        }
    }
}
