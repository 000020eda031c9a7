//! NEON versions of the two attention inner kernels, [`crate::scores::scores`] and
//! [`crate::ops::axpy_many_gathered`], for aarch64 (where NEON is baseline).
//!
//! Both keep the bits of their scalar twins, as the x86 kernels do:
//! - scores: each f32x4 lane is one key, and a (query, key) pair goes through
//!   [`crate::scores::score`]'s operations: eight fused multiply-add chains over the dims
//!   `l, l + 8, ...` (run one after the other, each a vector of accumulators), the pair-sum tree
//!   `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`, one fused multiply-add per dim past
//!   the last multiple of 8, then `* scale`. Two vectors make the eight keys of the `scores`
//!   contract (outputs padded to 8).
//! - weighted value sums: each output element adds `w * v` in key order with a separate multiply
//!   and add, as [`crate::ops::axpy_scalar`] (hence `axpy` on aarch64) does, each row stopping at
//!   its own count.
//!
//! f16 elements are widened exactly ([`crate::quant::arm::f16x4_to_f32`], no FP16 extension), so
//! the kernels see the values the scalar twins see.

use crate::ops::Gathered;
use crate::quant::arm::f16x4_to_f32;
use crate::scores::KeysT;
use std::arch::aarch64::*;

/// A cache element loaded four at a time as f32 (f16 widened exactly).
pub trait Load4: Copy {
    /// # Safety
    /// Four elements are readable at `p`.
    unsafe fn load4(p: *const Self) -> float32x4_t;
}

impl Load4 for f32 {
    #[inline(always)]
    unsafe fn load4(p: *const f32) -> float32x4_t {
        // SAFETY: the caller's promise; `vld1q_f32` needs only f32 alignment, which `p` has.
        unsafe { vld1q_f32(p) }
    }
}

impl Load4 for u16 {
    #[inline(always)]
    unsafe fn load4(p: *const u16) -> float32x4_t {
        // SAFETY: the caller's promise (8 bytes); `vld1_u16` needs only u16 alignment. The
        // widening needs NEON, which every aarch64 target has.
        unsafe { f16x4_to_f32(vld1_u16(p)) }
    }
}

/// [`crate::scores::scores`] for `bs % 8 == 0` and `k0 % 8 == 0`: keys in groups of eight (two
/// vectors, inside one block), writing up to `k1` rounded up to 8.
///
/// # Safety
/// The shapes `scores` checks (every block panel inside `base`, `stride` and `out` covering `k1`
/// rounded up to 8), with those two conditions.
#[target_feature(enable = "neon")]
pub unsafe fn scores<E: Load4>(
    q: &[f32],
    k: KeysT<E>,
    k0: usize,
    k1: usize,
    scale: f32,
    out: &mut [f32],
    stride: usize,
) {
    let (dim, bs) = (k.dim, k.bs);
    let nq = q.len() / dim;
    let mut r = 0;
    while r < nq {
        // Three queries × eight keys: 24 accumulators live at the peak of the pair-sum tree.
        let rows = (nq - r).min(3);
        let mut p = k0;
        while p < k1 {
            // SAFETY: block p / bs exists and its panel is inside `base`; keys p..p + 8 are in that
            // block (bs % 8 == 0, p % 8 == 0) for every dim; rows r..r + rows of q exist and their
            // outputs p..p + 8 are inside `out` (the caller's promise).
            unsafe {
                let kp = k.base.as_ptr().add(k.blocks[p / bs] + p % bs);
                let (qp, op) = (q.as_ptr().add(r * dim), out.as_mut_ptr().add(r * stride + p));
                match rows {
                    3 => score_tile::<E, 3>(qp, dim, kp, bs, scale, op, stride),
                    2 => score_tile::<E, 2>(qp, dim, kp, bs, scale, op, stride),
                    _ => score_tile::<E, 1>(qp, dim, kp, bs, scale, op, stride),
                }
            }
            p += 8;
        }
        r += rows;
    }
}

/// Lane chain `l` (dims `l, l + 8, ...` below `main`) of `R` queries against eight keys.
///
/// # Safety
/// As for [`score_tile`].
#[target_feature(enable = "neon")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn chain<E: Load4, const R: usize>(
    q: *const f32,
    dim: usize,
    k: *const E,
    bs: usize,
    l: usize,
    main: usize,
) -> [[float32x4_t; 2]; R] {
    let mut acc = [[vdupq_n_f32(0.0); 2]; R];
    for d in (l..main).step_by(8) {
        // SAFETY: the caller's promise covers dim d of the eight keys and of the R queries.
        let kv = unsafe { [E::load4(k.add(d * bs)), E::load4(k.add(d * bs + 4))] };
        for r in 0..R {
            // SAFETY: as above.
            let qv = vdupq_n_f32(unsafe { *q.add(r * dim + d) });
            for j in 0..2 {
                acc[r][j] = vfmaq_f32(acc[r][j], qv, kv[j]);
            }
        }
    }
    acc
}

/// `a + b` lane by lane, for every (query, key vector).
#[target_feature(enable = "neon")]
#[inline]
fn add<const R: usize>(a: [[float32x4_t; 2]; R], b: [[float32x4_t; 2]; R]) -> [[float32x4_t; 2]; R] {
    std::array::from_fn(|r| [vaddq_f32(a[r][0], b[r][0]), vaddq_f32(a[r][1], b[r][1])])
}

/// `R` queries (at `q`, `dim` apart) against the eight keys at `k` (dim `d` at `k + d * bs`):
/// [`crate::scores::score`]`(q, k) * scale` in every lane, stored as eight outputs a row.
///
/// # Safety
/// `R` rows of `dim` queries are readable at `q`, eight elements at `k + d * bs` for every
/// `d < dim`, and eight outputs are writable at `out + r * stride` for `r < R`.
#[target_feature(enable = "neon")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn score_tile<E: Load4, const R: usize>(
    q: *const f32,
    dim: usize,
    k: *const E,
    bs: usize,
    scale: f32,
    out: *mut f32,
    stride: usize,
) {
    let main = dim / 8 * 8;
    // SAFETY (the chains): the caller's promise. Arguments evaluate left to right, so the tree's
    // adds take their operands in `score`'s order and at most four chains per pair are live.
    let s = unsafe {
        let c = |l| chain::<E, R>(q, dim, k, bs, l, main);
        add(add(add(c(0), c(4)), add(c(2), c(6))), add(add(c(1), c(5)), add(c(3), c(7))))
    };
    let sv = vdupq_n_f32(scale);
    for r in 0..R {
        for j in 0..2 {
            let mut acc = s[r][j];
            for d in main..dim {
                // SAFETY: the caller's promise.
                let (qd, kv) = unsafe { (*q.add(r * dim + d), E::load4(k.add(d * bs + 4 * j))) };
                acc = vfmaq_f32(acc, vdupq_n_f32(qd), kv);
            }
            // SAFETY: the caller's promise.
            unsafe { vst1q_f32(out.add(r * stride + 4 * j), vmulq_f32(acc, sv)) };
        }
    }
}

/// [`crate::ops::axpy_many_gathered`]: rows in groups of up to four, their columns in register
/// blocks of 16 then 4 (each loaded value chunk serves every row of the group, no partial sum
/// goes through memory), the last `dim % 4` columns one by one.
///
/// # Safety
/// The shapes `axpy_many_gathered` checks: every row of `v` inside `base`, `out` one row of
/// `v.dim` per count, counts within `v`'s rows and `w` holding row `r`'s weights from
/// `r * w_stride`.
#[target_feature(enable = "neon")]
pub unsafe fn axpy_many_gathered<E: Load4 + crate::ops::GatherElem>(
    w: &[f32],
    w_stride: usize,
    n: &[usize],
    v: Gathered<E>,
    out: &mut [f32],
) {
    let dim = v.dim;
    let (pw, po) = (w.as_ptr(), out.as_mut_ptr());
    let rows = (v.base.as_ptr(), v.offs.as_ptr());
    let mut r = 0;
    while r < n.len() {
        let nr = (n.len() - r).min(4);
        let counts = &n[r..r + nr];
        let mut d = 0;
        // SAFETY (the blocks): rows r..r + nr of `out` exist, their counts are within `v`'s rows
        // and `w`'s length, and columns d..d + 16 (resp. d + 4) are below `dim`.
        unsafe {
            let (w_r, o_r) = (pw.add(r * w_stride), po.add(r * dim));
            while d + 16 <= dim {
                value_rows::<E, 4>(w_r, w_stride, counts, rows, dim, d, o_r);
                d += 16;
            }
            while d + 4 <= dim {
                value_rows::<E, 1>(w_r, w_stride, counts, rows, dim, d, o_r);
                d += 4;
            }
        }
        // The last dim % 4 columns, key by key, with the scalar twin's multiply and add.
        for (i, &c) in counts.iter().enumerate().filter(|_| d < dim) {
            for p in 0..c {
                // SAFETY: as for the blocks; t < dim. Raw pointers throughout, so `po` stays
                // valid for the next rows.
                unsafe {
                    let (a, row) = (*pw.add((r + i) * w_stride + p), rows.0.add(*rows.1.add(p)));
                    for t in d..dim {
                        *po.add((r + i) * dim + t) += a * (*row.add(t)).to_f32();
                    }
                }
            }
        }
        r += nr;
    }
}

/// [`value_block`] for the `n.len()` (1 to 4) rows of a group.
///
/// # Safety
/// As for [`value_block`], with `R = n.len()`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn value_rows<E: Load4, const C: usize>(
    w: *const f32,
    w_stride: usize,
    n: &[usize],
    rows: (*const E, *const usize),
    dim: usize,
    d0: usize,
    out: *mut f32,
) {
    // SAFETY: the caller's promise, with R = n.len().
    unsafe {
        match n.len() {
            4 => value_block::<E, 4, C>(w, w_stride, n, rows, dim, d0, out),
            3 => value_block::<E, 3, C>(w, w_stride, n, rows, dim, d0, out),
            2 => value_block::<E, 2, C>(w, w_stride, n, rows, dim, d0, out),
            _ => value_block::<E, 1, C>(w, w_stride, n, rows, dim, d0, out),
        }
    }
}

/// Columns `d0..d0 + 4 * C` of `R` rows of `out` (at `out`, `dim` apart): row `r` adds
/// `w[r * w_stride + p] * v_p` for `p < n[r]` in order, multiply then add, value row `p` at
/// `rows.0 + rows.1[p]`.
///
/// # Safety
/// `n.len() == R`; row `r` of `out` and value rows `p < n[r]` hold at least `d0 + 4 * C <= dim`
/// elements, and `w` is readable at `r * w_stride + p` for `p < n[r]`.
#[target_feature(enable = "neon")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn value_block<E: Load4, const R: usize, const C: usize>(
    w: *const f32,
    w_stride: usize,
    n: &[usize],
    rows: (*const E, *const usize),
    dim: usize,
    d0: usize,
    out: *mut f32,
) {
    // Value row `p`'s columns d0..d0 + 4 * C.
    let load = |p: usize| -> [float32x4_t; C] {
        // SAFETY: `p` is below some row's count, so `offs[p]` exists and row `p` holds the
        // columns (the caller's promise).
        let row = unsafe { rows.0.add(*rows.1.add(p) + d0) };
        // SAFETY: as above, four elements from column d0 + 4 * c < dim.
        std::array::from_fn(|c| unsafe { E::load4(row.add(4 * c)) })
    };
    // SAFETY: rows r < R of `out` hold columns d0..d0 + 4 * C (the caller's promise).
    let mut acc: [[float32x4_t; C]; R] =
        std::array::from_fn(|r| std::array::from_fn(|c| unsafe { vld1q_f32(out.add(r * dim + d0 + 4 * c)) }));
    let (lo, hi) = (n.iter().copied().min().unwrap_or(0), n.iter().copied().max().unwrap_or(0));
    // Keys every row takes.
    for p in 0..lo {
        let vv = load(p);
        for r in 0..R {
            // SAFETY: p < n[r], so `w` holds this weight (the caller's promise).
            let a = vdupq_n_f32(unsafe { *w.add(r * w_stride + p) });
            for c in 0..C {
                acc[r][c] = vaddq_f32(acc[r][c], vmulq_f32(a, vv[c]));
            }
        }
    }
    // Keys only the rows with longer contexts take (the causal triangle of a tile).
    for p in lo..hi {
        let vv = load(p);
        for r in 0..R {
            if p < n[r] {
                // SAFETY: as above.
                let a = vdupq_n_f32(unsafe { *w.add(r * w_stride + p) });
                for c in 0..C {
                    acc[r][c] = vaddq_f32(acc[r][c], vmulq_f32(a, vv[c]));
                }
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            // SAFETY: as for the loads of `acc`.
            unsafe { vst1q_f32(out.add(r * dim + d0 + 4 * c), acc[r][c]) };
        }
    }
}
