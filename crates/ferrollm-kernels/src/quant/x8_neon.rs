//! NEON kernels for the interleaved layouts ([`super::x8`]'s 32-element unsigned formats and
//! [`super::x8q8`]'s Q8_0), for aarch64 CPUs without the dot-product extension's intrinsics
//! (unstable in Rust): a step's 4 quants of each of 8 rows times the token's 4 activation bytes
//! (broadcast) are widening multiply-accumulates into i16 lanes, one lane per (row, quant); two
//! pairwise widening adds then give each row's sum. The integer sums are exact and each row's
//! float operations are those of the scalar references (`acc = fma(isum, dw·da, acc)`, then
//! `fma(m, sa, acc)`), so results are the same bits as the scalar and x86 paths.

use super::act::BlockQ8A;
use super::arm::load_f16x8;
use super::common::by_tokens;
use super::x8::{BlockX8, ROWS};
use super::x8q8::X8Q8_0;
use std::arch::aarch64::*;

/// `[f32; 8]` rows per token from two 4-lane accumulators each.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn store<const T: usize>(acc: [[float32x4_t; 2]; T], out: &mut [[f32; ROWS]]) {
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 8 writable f32s.
        unsafe {
            vst1q_f32(o.as_mut_ptr(), a[0]);
            vst1q_f32(o.as_mut_ptr().add(4), a[1]);
        }
    }
}

/// Four activation bytes from `qs[e..]`, repeated over the 16 lanes.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn broadcast4(qs: &[i8], e: usize) -> int8x16_t {
    let b = [qs[e] as u8, qs[e + 1] as u8, qs[e + 2] as u8, qs[e + 3] as u8];
    vreinterpretq_s8_u32(vdupq_n_u32(u32::from_le_bytes(b)))
}

/// Rows 0-3 and 4-7 from i32 lanes holding two quants' products of one row each (row `2k` and
/// `2k + 1` in `pairs[k]`, as `vpaddlq_s16` or `vpadalq_s16` leave them).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn row_sums(pairs: [int32x4_t; 4]) -> [int32x4_t; 2] {
    [vpaddq_s32(pairs[0], pairs[1]), vpaddq_s32(pairs[2], pairs[3])]
}

/// One step's products into a token's four i16 parts: `w` holds four quants of each of the
/// eight rows (rows 0-3, then 4-7), `y` the token's four activation bytes repeated, so part `k`
/// gets row pairs `2k`, `2k + 1`'s lanes (as [`row_sums`] expects after the widening adds).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn mla_step(part: &mut [int16x8_t; 4], w: [int8x16_t; 2], y: int8x16_t) {
    part[0] = vmlal_s8(part[0], vget_low_s8(w[0]), vget_low_s8(y));
    part[1] = vmlal_high_s8(part[1], w[0], y);
    part[2] = vmlal_s8(part[2], vget_low_s8(w[1]), vget_low_s8(y));
    part[3] = vmlal_high_s8(part[3], w[1], y);
}

/// [`super::x8::dot_group`] for 1 to 4 tokens.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub unsafe fn dot_group_x8<const MB: usize, const HB: usize>(
    blocks: &[BlockX8<MB, HB>],
    acts: &[&[BlockQ8A]],
    out: &mut [[f32; ROWS]],
) {
    by_tokens!(store, x8_blocks, MB, HB; blocks, acts, out)
}

/// Eight rows' accumulators per token. A lane adds one product per step, a quant below 32
/// times an activation byte (|a| ≤ 127): eight steps stay within 8 · 31 · 127 = 31,496, so
/// the i16 lanes widen once per block.
#[inline]
#[target_feature(enable = "neon")]
fn x8_blocks<const MB: usize, const HB: usize, const T: usize>(
    blocks: &[BlockX8<MB, HB>],
    acts: &[&[BlockQ8A]; T],
) -> [[float32x4_t; 2]; T] {
    let nib = vdupq_n_u8(0x0F);
    let mut acc = [[vdupq_n_f32(0.0); 2]; T];
    for (b, blk) in blocks.iter().enumerate() {
        // SAFETY: `d` (and `m` when MB > 0) are 16 readable bytes.
        let dw = unsafe { load_f16x8(blk.d.as_ptr()) };
        let mw = match MB > 0 {
            // SAFETY: as above.
            true => unsafe { load_f16x8(blk.m.as_ptr()) },
            false => [vmulq_n_f32(dw[0], BlockX8::<MB, HB>::M_PER_D), vmulq_n_f32(dw[1], BlockX8::<MB, HB>::M_PER_D)],
        };
        let qh = match HB > 0 {
            // SAFETY: `qh` is 32 readable bytes when HB > 0.
            true => unsafe { [vld1q_u8(blk.qh.as_ptr()), vld1q_u8(blk.qh.as_ptr().add(16))] },
            false => [vdupq_n_u8(0); 2],
        };
        let mut part = [[vdupq_n_s16(0); 4]; T];
        for c in 0..4 {
            // SAFETY: chunk `c` is 32 readable bytes of `qs`.
            let v = unsafe { [vld1q_u8(blk.qs.as_ptr().add(32 * c)), vld1q_u8(blk.qs.as_ptr().add(32 * c + 16))] };
            for h in 0..2 {
                let s = c + 4 * h;
                let mut w = [vdupq_n_s8(0); 2];
                for k in 0..2 {
                    let mut q = if h == 0 { vandq_u8(v[k], nib) } else { vshrq_n_u8::<4>(v[k]) };
                    if HB > 0 {
                        // Bit s of each byte of qh to bit 4 (a negative shift is a right shift).
                        q = vorrq_u8(q, vandq_u8(vshlq_u8(qh[k], vdupq_n_s8(4 - s as i8)), vdupq_n_u8(0x10)));
                    }
                    w[k] = vreinterpretq_s8_u8(q);
                }
                let e = super::x8::element(s, 0);
                for (part, a) in part.iter_mut().zip(acts) {
                    mla_step(part, w, broadcast4(&a[b].qs, e));
                }
            }
        }
        for ((acc, part), a) in acc.iter_mut().zip(&part).zip(acts) {
            let isum =
                row_sums([vpaddlq_s16(part[0]), vpaddlq_s16(part[1]), vpaddlq_s16(part[2]), vpaddlq_s16(part[3])]);
            let ab = &a[b];
            for k in 0..2 {
                acc[k] = vfmaq_f32(acc[k], vcvtq_f32_s32(isum[k]), vmulq_n_f32(dw[k], ab.d));
                acc[k] = vfmaq_f32(acc[k], mw[k], vdupq_n_f32(ab.s));
            }
        }
    }
    acc
}

/// [`super::x8q8`]'s `dot_group` for 1 to 4 tokens.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub unsafe fn dot_group_q8(blocks: &[X8Q8_0], acts: &[&[BlockQ8A]], out: &mut [[f32; ROWS]]) {
    by_tokens!(store, q8_blocks; blocks, acts, out)
}

/// Eight Q8_0 rows' accumulators per token. A product reaches 128 · 127 = 16,256, so i16 lanes
/// take two steps and then widen into i32.
#[inline]
#[target_feature(enable = "neon")]
fn q8_blocks<const T: usize>(blocks: &[X8Q8_0], acts: &[&[BlockQ8A]; T]) -> [[float32x4_t; 2]; T] {
    let mut acc = [[vdupq_n_f32(0.0); 2]; T];
    for (b, blk) in blocks.iter().enumerate() {
        // SAFETY: `d` is 16 readable bytes.
        let dw = unsafe { load_f16x8(blk.d.as_ptr()) };
        let mut wide = [[vdupq_n_s32(0); 4]; T];
        for pair in 0..4 {
            // SAFETY: steps 2·pair and 2·pair + 1 are the 64 bytes of `qs` from 64·pair.
            let w: [int8x16_t; 4] =
                std::array::from_fn(|k| unsafe { vld1q_s8(blk.qs.as_ptr().add(64 * pair + 16 * k)) });
            for (wide, a) in wide.iter_mut().zip(acts) {
                let (ya, yb) = (broadcast4(&a[b].qs, 8 * pair), broadcast4(&a[b].qs, 8 * pair + 4));
                let p = [
                    vmlal_s8(vmull_s8(vget_low_s8(w[0]), vget_low_s8(ya)), vget_low_s8(w[2]), vget_low_s8(yb)),
                    vmlal_high_s8(vmull_high_s8(w[0], ya), w[2], yb),
                    vmlal_s8(vmull_s8(vget_low_s8(w[1]), vget_low_s8(ya)), vget_low_s8(w[3]), vget_low_s8(yb)),
                    vmlal_high_s8(vmull_high_s8(w[1], ya), w[3], yb),
                ];
                for (wide, p) in wide.iter_mut().zip(p) {
                    *wide = vpadalq_s16(*wide, p);
                }
            }
        }
        for ((acc, wide), a) in acc.iter_mut().zip(&wide).zip(acts) {
            let isum = row_sums(*wide);
            for k in 0..2 {
                acc[k] = vfmaq_f32(acc[k], vcvtq_f32_s32(isum[k]), vmulq_n_f32(dw[k], a[b].d));
            }
        }
    }
    acc
}
