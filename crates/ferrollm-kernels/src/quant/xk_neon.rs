//! NEON kernels for the interleaved K-quant layouts ([`super::x8q45k`]'s Q4_K and Q5_K,
//! [`super::x8q6k`]'s Q6_K), built like [`super::x8_neon`]'s: a step's four quants of each of
//! eight rows times the token's four activation bytes (broadcast) are widening multiplies into
//! i16 lanes, one lane per (row, quant), which are reduced to one i32 per row before the
//! sub-block scale is applied. The integer sums are exact and each row's float operations are
//! its scalar twin's, in the same order, so the results are the same bits as the scalar and
//! AVX2 paths.

use super::act::BlockQ8K;
use super::arm::load_f16x8;
use super::common::by_tokens;
use super::x8::ROWS;
use super::x8_neon::{broadcast4, mla_step, row_sums, store};
use super::x8q45k::X8K4;
use super::x8q6k::X8Q6K;
use std::arch::aarch64::*;

/// [`super::x8q45k`]'s `dot_group` (Q4_K for `HB = 0`, Q5_K for 256) for 1 to 4 tokens.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub unsafe fn dot_group_k4<const HB: usize>(blocks: &[X8K4<HB>], acts: &[&[BlockQ8K]], out: &mut [[f32; ROWS]]) {
    by_tokens!(store, k4_blocks, HB; blocks, acts, out)
}

/// [`super::x8q6k`]'s `dot_group` for 1 to 4 tokens.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub unsafe fn dot_group_q6k(blocks: &[X8Q6K], acts: &[&[BlockQ8K]], out: &mut [[f32; ROWS]]) {
    by_tokens!(store, q6k_blocks; blocks, acts, out)
}

/// Bytes `4g..4g + 4` of `v` as i32 lanes: in [`X8K4`]'s unpacked scales and mins, sub-block
/// `g` (of a half) of the four rows `v` holds.
#[inline]
#[target_feature(enable = "neon")]
fn quad(v: uint8x16_t, g: usize) -> int32x4_t {
    let h = if g < 2 { vmovl_u8(vget_low_u8(v)) } else { vmovl_high_u8(v) };
    vreinterpretq_s32_u32(if g.is_multiple_of(2) { vmovl_u16(vget_low_u16(h)) } else { vmovl_high_u16(h) })
}

/// Eight rows' accumulators per token (rows 0-3, 4-7).
///
/// A lane adds one product per step, a quant below 16 (32 for Q5_K) times an activation byte
/// (|a| ≤ 127 from the quantizer; 128 is allowed for here too): a sub-block's eight steps stay
/// within 8·31·128 = 31,744, so the i16 lanes widen once per sub-block, and the scale (below
/// 64) is applied in i32, at most 8·32·31·128·63 ≈ 64 M per super-block. The min term is summed
/// in i32 from the `bsums` pairs, as the scalar twin does.
#[inline]
#[target_feature(enable = "neon")]
fn k4_blocks<const HB: usize, const T: usize>(blocks: &[X8K4<HB>], acts: &[&[BlockQ8K]; T]) -> [[float32x4_t; 2]; T] {
    let nib = vdupq_n_u8(0x0F);
    let top = vdupq_n_u8(0x30);
    let bit4 = vdupq_n_u8(0x10);
    let mut acc = [[vdupq_n_f32(0.0); 2]; T];
    for (b, blk) in blocks.iter().enumerate() {
        // SAFETY: `d` and `dmin` are 16 readable bytes each.
        let (dw, dminw) = unsafe { (load_f16x8(blk.d.as_ptr()), load_f16x8(blk.dmin.as_ptr())) };
        // SAFETY: `scl`, `ml` and `sh` are 32 readable bytes each (rows 0-3, then 4-7).
        let (scl, ml, sh) = unsafe {
            let at = |p: *const u8| [vld1q_u8(p), vld1q_u8(p.add(16))];
            (at(blk.scl.as_ptr()), at(blk.ml.as_ptr()), at(blk.sh.as_ptr()))
        };
        // Six-bit scales and mins, [half][rows 0-3, 4-7]; byte shifts carry nothing across.
        let sc: [[uint8x16_t; 2]; 2] = [
            std::array::from_fn(|q| vorrq_u8(vandq_u8(scl[q], nib), vandq_u8(vshlq_n_u8::<4>(sh[q]), top))),
            std::array::from_fn(|q| vorrq_u8(vshrq_n_u8::<4>(scl[q]), vandq_u8(vshlq_n_u8::<2>(sh[q]), top))),
        ];
        let mins: [[uint8x16_t; 2]; 2] = [
            std::array::from_fn(|q| vorrq_u8(vandq_u8(ml[q], nib), vandq_u8(sh[q], top))),
            std::array::from_fn(|q| vorrq_u8(vshrq_n_u8::<4>(ml[q]), vandq_u8(vshrq_n_u8::<2>(sh[q]), top))),
        ];
        let mut isum = [[vdupq_n_s32(0); 2]; T];
        for j in 0..8 {
            let (c, h) = (j / 2, j % 2);
            let mut part = [[vdupq_n_s16(0); 4]; T];
            for s in 0..8 {
                // SAFETY: step `s` of chunk `c` is 32 readable bytes of `qs`.
                let v = unsafe {
                    let p = blk.qs.as_ptr().add(256 * c + 32 * s);
                    [vld1q_u8(p), vld1q_u8(p.add(16))]
                };
                let qh = match HB > 0 {
                    // SAFETY: step `s` of `qh` is 32 readable bytes when HB > 0.
                    true => unsafe {
                        [vld1q_u8(blk.qh.as_ptr().add(32 * s)), vld1q_u8(blk.qh.as_ptr().add(32 * s + 16))]
                    },
                    false => [vdupq_n_u8(0); 2],
                };
                let mut w = [vdupq_n_s8(0); 2];
                for k in 0..2 {
                    let mut q = if h == 0 { vandq_u8(v[k], nib) } else { vshrq_n_u8::<4>(v[k]) };
                    if HB > 0 {
                        // Bit j of each byte to bit 4 (a negative count shifts right).
                        q = vorrq_u8(q, vandq_u8(vshlq_u8(qh[k], vdupq_n_s8(4 - j as i8)), bit4));
                    }
                    w[k] = vreinterpretq_s8_u8(q);
                }
                let e = 32 * j + 4 * s;
                for (part, a) in part.iter_mut().zip(acts) {
                    mla_step(part, w, broadcast4(&a[b].qs, e));
                }
            }
            let scale = [quad(sc[j / 4][0], j % 4), quad(sc[j / 4][1], j % 4)];
            for (isum, part) in isum.iter_mut().zip(&part) {
                let rows =
                    row_sums([vpaddlq_s16(part[0]), vpaddlq_s16(part[1]), vpaddlq_s16(part[2]), vpaddlq_s16(part[3])]);
                for q in 0..2 {
                    isum[q] = vmlaq_s32(isum[q], rows[q], scale[q]);
                }
            }
        }
        let m: [[int32x4_t; 2]; 8] =
            std::array::from_fn(|j| [quad(mins[j / 4][0], j % 4), quad(mins[j / 4][1], j % 4)]);
        for ((acc, isum), a) in acc.iter_mut().zip(&isum).zip(acts) {
            let ab = &a[b];
            let mut msum = [vdupq_n_s32(0); 2];
            for (j, m) in m.iter().enumerate() {
                let pair = ab.bsums[2 * j] as i32 + ab.bsums[2 * j + 1] as i32;
                for q in 0..2 {
                    msum[q] = vmlaq_n_s32(msum[q], m[q], pair);
                }
            }
            for q in 0..2 {
                acc[q] = vfmaq_f32(acc[q], vcvtq_f32_s32(isum[q]), vmulq_n_f32(dw[q], ab.d));
                // `acc − msum·(dmin·da)` rounded once is the scalar's `fma(−msum, dmin·da, acc)`.
                acc[q] = vfmsq_f32(acc[q], vcvtq_f32_s32(msum[q]), vmulq_n_f32(dminw[q], ab.d));
            }
        }
    }
    acc
}

/// Quarter `k`'s 6-bit quants of one step from its `ql` bytes (low nibbles for `k < 2`, high
/// for `k ≥ 2`) and bits `2k, 2k + 1` of its `qh` bytes, moved to bits 4-5.
#[inline]
#[target_feature(enable = "neon")]
fn quants6(ql: uint8x16_t, qh: uint8x16_t, k: usize) -> int8x16_t {
    let lo = if k < 2 { vandq_u8(ql, vdupq_n_u8(0x0F)) } else { vshrq_n_u8::<4>(ql) };
    let hi = match k {
        0 => vshlq_n_u8::<4>(qh),
        1 => vshlq_n_u8::<2>(qh),
        2 => qh,
        _ => vshrq_n_u8::<2>(qh),
    };
    vreinterpretq_s8_u8(vorrq_u8(lo, vandq_u8(hi, vdupq_n_u8(0x30))))
}

/// Eight Q6_K rows' outputs per token (rows 0-3, 4-7).
///
/// Each (half, quarter) of a step has its own sub-block scale, so a lane holds one product, a
/// quant below 64 times an activation byte (|a| ≤ 128): a row's four add pairwise in i16 to at
/// most 4·63·128 = 32,256 and widen as they take the scale (|sc| ≤ 128). A step's `Σ sc·q·a`
/// is at most 8·128·32,256 ≈ 33 M and its offset 32·(sc·bsum + sc·bsum) 32·2·128·4,096 ≈ 34 M:
/// i32 holds both. Per step, the f32 lane and the final sum are [`super::x8q6k`]'s.
#[inline]
#[target_feature(enable = "neon")]
fn q6k_blocks<const T: usize>(blocks: &[X8Q6K], acts: &[&[BlockQ8K]; T]) -> [[float32x4_t; 2]; T] {
    // One f32 accumulator per step (the row kernel's lane), token and half of the rows.
    let mut acc = [[[vdupq_n_f32(0.0); 2]; T]; 8];
    for (b, blk) in blocks.iter().enumerate() {
        // SAFETY: `d` is 16 readable bytes.
        let dw = unsafe { load_f16x8(blk.d.as_ptr()) };
        // Sub-block j's scales of rows 0..8 as i16 lanes. In each 32 bytes of `sc`, u32 lane
        // `g` of the first (second) 16 holds sub-block `4·(..) + g` of rows 0-3 (4-7).
        let mut svs = [vdupq_n_s16(0); 16];
        for (g, sv) in svs.chunks_exact_mut(4).enumerate() {
            // SAFETY: `sc[32g..32g + 32]` is readable (g < 4).
            let (lo, hi) = unsafe {
                let p = blk.sc.as_ptr().add(32 * g);
                (vreinterpretq_u32_s8(vld1q_s8(p)), vreinterpretq_u32_s8(vld1q_s8(p.add(16))))
            };
            let z = [vreinterpretq_s8_u32(vzip1q_u32(lo, hi)), vreinterpretq_s8_u32(vzip2q_u32(lo, hi))];
            sv[0] = vmovl_s8(vget_low_s8(z[0]));
            sv[1] = vmovl_high_s8(z[0]);
            sv[2] = vmovl_s8(vget_low_s8(z[1]));
            sv[3] = vmovl_high_s8(z[1]);
        }
        let scale: [[float32x4_t; 2]; T] =
            std::array::from_fn(|t| [vmulq_n_f32(dw[0], acts[t][b].d), vmulq_n_f32(dw[1], acts[t][b].d)]);
        for (s, acc_s) in acc.iter_mut().enumerate() {
            let mut isum = [[vdupq_n_s32(0); 2]; T];
            for n in 0..2 {
                // SAFETY: half `n` of step `s` is the 96 readable bytes of `q` at 192s + 96n:
                // the `ql` bytes of quarters 0/2, of 1/3, then the `qh` bytes (rows 0-3, 4-7 each).
                let [l02, l13, hb] = unsafe {
                    let p = blk.q.as_ptr().add(192 * s + 96 * n);
                    [
                        [vld1q_u8(p), vld1q_u8(p.add(16))],
                        [vld1q_u8(p.add(32)), vld1q_u8(p.add(48))],
                        [vld1q_u8(p.add(64)), vld1q_u8(p.add(80))],
                    ]
                };
                for k in 0..4 {
                    let l = if k % 2 == 0 { l02 } else { l13 };
                    let w = [quants6(l[0], hb[0], k), quants6(l[1], hb[1], k)];
                    let sv = svs[8 * n + 2 * k + s / 4];
                    let e = 128 * n + 32 * k + 4 * s;
                    for (isum, a) in isum.iter_mut().zip(acts) {
                        let y = broadcast4(&a[b].qs, e);
                        let p01 = vpaddq_s16(vmull_s8(vget_low_s8(w[0]), vget_low_s8(y)), vmull_high_s8(w[0], y));
                        let p23 = vpaddq_s16(vmull_s8(vget_low_s8(w[1]), vget_low_s8(y)), vmull_high_s8(w[1], y));
                        // Lane r: row r's four products.
                        let rows = vpaddq_s16(p01, p23);
                        isum[0] = vmlal_s16(isum[0], vget_low_s16(rows), vget_low_s16(sv));
                        isum[1] = vmlal_high_s16(isum[1], rows, sv);
                    }
                }
            }
            // The `−32` offset of step `s`: sub-blocks 2s and 2s + 1 against their `bsums`.
            let (s0, s1) = (svs[2 * s], svs[2 * s + 1]);
            for t in 0..T {
                let ab = &acts[t][b];
                let (b0, b1) = (ab.bsums[2 * s], ab.bsums[2 * s + 1]);
                let off = [
                    vmlal_n_s16(vmull_n_s16(vget_low_s16(s0), b0), vget_low_s16(s1), b1),
                    vmlal_high_n_s16(vmull_high_n_s16(s0, b0), s1, b1),
                ];
                for q in 0..2 {
                    let total = vsubq_s32(isum[t][q], vshlq_n_s32::<5>(off[q]));
                    acc_s[t][q] = vfmaq_f32(acc_s[t][q], vcvtq_f32_s32(total), scale[t][q]);
                }
            }
        }
    }
    // The steps added as the scalar twin's `lane_sum`: ((0+4)+(2+6))+((1+5)+(3+7)).
    std::array::from_fn(|t| {
        std::array::from_fn(|q| {
            let a = |s: usize| acc[s][t][q];
            let even = vaddq_f32(vaddq_f32(a(0), a(4)), vaddq_f32(a(2), a(6)));
            let odd = vaddq_f32(vaddq_f32(a(1), a(5)), vaddq_f32(a(3), a(7)));
            vaddq_f32(even, odd)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::super::common::{as_blocks, f32_to_f16, Block};
    use super::super::q4_k::BlockQ4K;
    use super::super::q5_k::BlockQ5K;
    use super::super::x8q45k::{self, K4Source};
    use super::super::x8q6k;
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A name and a maker of the bytes of a weight block.
    type Pattern = (&'static str, fn(&mut StdRng) -> u8);

    /// A byte that is often an extreme: all bits clear, all set, the i8 bounds, else random.
    fn edgy(rng: &mut StdRng) -> u8 {
        match rng.gen_range(0..6) {
            0 => 0x00,
            1 => 0xFF,
            2 => 0x80,
            3 => 0x7F,
            _ => rng.gen(),
        }
    }

    /// `n` interleaved blocks of `B` whose bytes come from `byte` except the leading f16 scale
    /// fields (`scale_bytes` of them), which get small random values.
    fn blocks<B: Block>(rng: &mut StdRng, n: usize, scale_bytes: usize, byte: fn(&mut StdRng) -> u8) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..n * B::BYTES).map(|_| byte(rng)).collect();
        for blk in bytes.chunks_exact_mut(B::BYTES) {
            for f in blk[..scale_bytes].chunks_exact_mut(2) {
                f.copy_from_slice(&f32_to_f16(rng.gen_range(-0.01..0.01)));
            }
        }
        bytes
    }

    /// Four tokens of `n` activation blocks, each block a pattern: all 127, all −128 (which the
    /// quantizer never writes, but the struct allows), alternating ±127/−128, or random bytes;
    /// the `bsums` consistent with the quants.
    fn acts(rng: &mut StdRng, n: usize) -> Vec<Vec<BlockQ8K>> {
        (0..4)
            .map(|_| {
                (0..n)
                    .map(|_| {
                        let pattern = rng.gen_range(0..4);
                        let mut b = BlockQ8K { d: rng.gen_range(0.001..0.05), ..Default::default() };
                        for (e, q) in b.qs.iter_mut().enumerate() {
                            *q = match pattern {
                                0 => 127,
                                1 => -128,
                                2 if e % 2 == 0 => 127,
                                2 => -128,
                                _ => rng.gen(),
                            };
                        }
                        for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                            *s = q.iter().map(|&v| v as i16).sum();
                        }
                        b
                    })
                    .collect()
            })
            .collect()
    }

    fn bits(out: &[[f32; ROWS]]) -> Vec<[u32; ROWS]> {
        out.iter().map(|o| o.map(f32::to_bits)).collect()
    }

    /// Every token count against the scalar twin, to the bit.
    fn compare<B>(
        group: &[B],
        xs: &[Vec<BlockQ8K>],
        scalar: impl Fn(&[B], &[&[BlockQ8K]], &mut [[f32; ROWS]]),
        neon: impl Fn(&[B], &[&[BlockQ8K]], &mut [[f32; ROWS]]),
        what: &str,
    ) {
        let acts: Vec<&[BlockQ8K]> = xs.iter().map(|a| a.as_slice()).collect();
        for k in 1..=4 {
            let (mut want, mut got) = ([[0f32; ROWS]; 4], [[0f32; ROWS]; 4]);
            scalar(group, &acts[..k], &mut want[..k]);
            neon(group, &acts[..k], &mut got[..k]);
            assert_eq!(bits(&got[..k]), bits(&want[..k]), "{what}, {k} tokens: {:?} vs {:?}", &got[..k], &want[..k]);
        }
    }

    fn check_k4<W: K4Source, const HB: usize>(seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let patterns: [Pattern; 3] = [("all bits set", |_| 0xFF), ("edge bytes", edgy), ("random bytes", |r| r.gen())];
        for (what, byte) in patterns {
            for n in [1usize, 2, 5] {
                let bytes = blocks::<X8K4<HB>>(&mut rng, n, 32, byte);
                let group: &[X8K4<HB>] = as_blocks(&bytes);
                let xs = acts(&mut rng, n);
                compare(
                    group,
                    &xs,
                    x8q45k::dot_group_scalar::<W, HB>,
                    // SAFETY: NEON is part of the aarch64 baseline.
                    |g, a, o| unsafe { dot_group_k4(g, a, o) },
                    what,
                );
            }
        }
    }

    #[test]
    fn q4_k_neon_matches_the_scalar_twin_bit_for_bit_on_extremes() {
        check_k4::<BlockQ4K, 0>(41);
    }

    #[test]
    fn q5_k_neon_matches_the_scalar_twin_bit_for_bit_on_extremes() {
        check_k4::<BlockQ5K, 256>(42);
    }

    #[test]
    fn q6_k_neon_matches_the_scalar_twin_bit_for_bit_on_extremes() {
        let mut rng = StdRng::seed_from_u64(43);
        // All quants 63 with every scale −128, then 127, then a mix.
        let patterns: [Pattern; 5] = [
            ("all bits set", |_| 0xFF),
            ("quants 63, scales -128", |_| 0x80),
            ("quants 63, scales 127", |_| 0x7F),
            ("edge bytes", edgy),
            ("random bytes", |r| r.gen()),
        ];
        for (what, byte) in patterns {
            for n in [1usize, 2, 5] {
                let mut bytes = blocks::<X8Q6K>(&mut rng, n, 16, byte);
                if what.starts_with("quants 63") {
                    // Scales keep the pattern; every quant byte is all ones.
                    for blk in bytes.chunks_exact_mut(X8Q6K::BYTES) {
                        blk[16 + 128..].fill(0xFF);
                    }
                }
                let group: &[X8Q6K] = as_blocks(&bytes);
                let xs = acts(&mut rng, n);
                compare(
                    group,
                    &xs,
                    x8q6k::dot_group_scalar,
                    // SAFETY: NEON is part of the aarch64 baseline.
                    |g, a, o| unsafe { dot_group_q6k(g, a, o) },
                    what,
                );
            }
        }
    }
}
