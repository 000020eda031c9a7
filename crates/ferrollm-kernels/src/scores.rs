//! Attention scores `q · k * scale` against a paged K cache stored transposed per block.
//!
//! Why transposed: with keys as rows, a score is a dot product whose eight lanes need a
//! horizontal sum at the end; for a 64-dim head that sum cost as much as the multiplies. In a
//! `[dim][block_size]` panel per block and KV head, one load gives dim `d` of eight consecutive
//! keys, and a register tile of queries × key vectors accumulates `q[d] * k[d]` with one fused
//! multiply-add per query, key vector and dim: nothing is reduced across lanes (the lane sums
//! below are vertical adds), and the loaded keys and the broadcast query values serve several
//! accumulators each.
//!
//! Every score is computed as llama.cpp's f16 GEMM (tinyBLAS) computes it: dim `d` goes to lane
//! `d % 8`, each lane one chain of fused multiply-adds in dim order, then the lanes are summed
//! as `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`; dims past the last multiple of 8
//! continue that sum with one multiply-add each; then `* scale`. With the queries rounded to f16
//! as ggml rounds them, an f16 cache gives llama.cpp's scores bit for bit, which keeps greedy
//! tokens agreeing with it at near-ties (a plain chain over all dims moved Qwen2.5's top-1
//! agreement from 0.9835 to 0.9795). In the SIMD kernel each vector lane is a key and the eight
//! "lanes" are eight accumulators run one after the other, so a (query, key) pair gets the same
//! bits as in [`scores_scalar`], in a decode, a prefill chunk or a speculative verify row.

use crate::ops::GatherElem;

/// Keys `0..` of one sequence and KV head, in blocks of `bs` stored `[dim][bs]`: dim `d` of key
/// `p` is `base[blocks[p / bs] + d * bs + p % bs]`.
#[derive(Clone, Copy)]
pub struct KeysT<'a, E> {
    pub base: &'a [E],
    /// Where each block's panel for this KV head starts in `base`.
    pub blocks: &'a [usize],
    pub bs: usize,
    pub dim: usize,
}

impl<E> KeysT<'_, E> {
    fn check(&self, k1: usize) {
        assert!(self.dim > 0 && self.bs > 0, "keys: zero dim or block size");
        assert!(self.blocks.len() * self.bs >= k1, "keys: {k1} keys beyond the blocks");
        for &b in &self.blocks[..k1.div_ceil(self.bs)] {
            assert!(b + self.dim * self.bs <= self.base.len(), "keys: block panel at {b} beyond the cache");
        }
    }
}

/// `out[r * out_stride + p] = score(q_r, k_p)` for the rows `q_r` of `q` (each `k.dim` long) and
/// keys `p` in `k0..k1` (AVX2 where the CPU has it, NEON on aarch64, else [`scores_scalar`];
/// same bits).
///
/// The SIMD kernel works on whole vectors of eight keys, so when `k1` is not a multiple of 8 it
/// also writes the entries up to the next multiple (scores of whatever the block holds there,
/// to be ignored): `out_stride` must be at least `k1` rounded up to 8.
pub fn scores<E: GatherElem>(
    q: &[f32],
    k: KeysT<E>,
    k0: usize,
    k1: usize,
    scale: f32,
    out: &mut [f32],
    out_stride: usize,
) {
    k.check(k1);
    assert!(q.len().is_multiple_of(k.dim), "scores: rows of {}", k.dim);
    let nq = q.len() / k.dim;
    if nq == 0 || k0 >= k1 {
        return;
    }
    let padded = k1.next_multiple_of(8);
    assert!(out_stride >= padded && out.len() >= (nq - 1) * out_stride + padded, "scores: out too short");
    // Vectors of eight keys stay inside one block only when blocks are whole vectors.
    if k.bs.is_multiple_of(8) && k0.is_multiple_of(8) && E::scores_simd(q, k, k0, k1, scale, out, out_stride) {
        return;
    }
    scores_scalar(q, k, k0, k1, scale, out, out_stride)
}

/// Reference for [`scores`], operation for operation.
pub fn scores_scalar<E: GatherElem>(
    q: &[f32],
    k: KeysT<E>,
    k0: usize,
    k1: usize,
    scale: f32,
    out: &mut [f32],
    out_stride: usize,
) {
    k.check(k1);
    for (r, qr) in q.chunks_exact(k.dim).enumerate() {
        for p in k0..k1 {
            let at = k.blocks[p / k.bs] + p % k.bs;
            out[r * out_stride + p] = score(qr, |d| k.base[at + d * k.bs].to_f32()) * scale;
        }
    }
}

/// One unscaled score as [`scores`] computes it, dim `d` of the key being `k(d)`.
pub fn score(q: &[f32], k: impl Fn(usize) -> f32) -> f32 {
    let main = q.len() / 8 * 8;
    let mut lane = [0f32; 8];
    for d in 0..main {
        lane[d % 8] = q[d].mul_add(k(d), lane[d % 8]);
    }
    let pair: [f32; 4] = std::array::from_fn(|m| lane[m] + lane[m + 4]);
    let sum = (pair[0] + pair[2]) + (pair[1] + pair[3]);
    (main..q.len()).fold(sum, |acc, d| q[d].mul_add(k(d), acc))
}

/// The scores driver and register tile for one vector width (`$lanes` keys a register), so the
/// AVX2 and AVX-512 kernels are one body: each lane does the same operations on both.
#[cfg(target_arch = "x86_64")]
macro_rules! scores_kernel {
    ($(#[$ddoc:meta])* $driver:ident, $(#[$tdoc:meta])* $tile:ident, $features:literal, $lanes:literal,
     $vec:ty, $zero:ident, $set1:ident, $fmadd:ident, $add:ident, $mul:ident, $storeu:ident, $load:ident,
     $max_rows:literal, [$(($r:literal, $n:literal)),*]) => {
        $(#[$ddoc])*
        #[target_feature(enable = $features)]
        pub unsafe fn $driver<E: Load8>(
            q: &[f32],
            k: super::KeysT<E>,
            k0: usize,
            k1: usize,
            scale: f32,
            out: &mut [f32],
            stride: usize,
        ) {
            let (dim, bs) = (k.dim, k.bs);
            let nq = q.len() / dim;
            // Start of each vector of keys: dim 0 of key `lanes·v`; dim d is d * bs further.
            let (v0, v1) = (k0 / $lanes, k1.div_ceil($lanes));
            let key = |v: usize| {
                let p = $lanes * v;
                // SAFETY: block p / bs exists and its panel is inside `base` (checked by the caller).
                unsafe { k.base.as_ptr().add(k.blocks[p / bs] + p % bs) }
            };
            let mut r = 0;
            while r < nq {
                // Up to `max_rows` queries × 2 key vectors (12 chains on AVX2's 16 registers, 24
                // on AVX-512's 32, so each converted key vector meets twice the queries), or 3 × 3
                // for decodes.
                let rows = if nq - r >= 4 { (nq - r).min($max_rows) } else { nq - r };
                let width = if rows > 3 { 2 } else { 3 };
                let mut v = v0;
                while v < v1 {
                    let nv = (v1 - v).min(width);
                    let ks: [*const E; 3] = std::array::from_fn(|j| key(v + j.min(nv - 1)));
                    // SAFETY: rows r..r + rows of q exist; key vectors v..v + nv are inside their
                    // blocks for every dim; their outputs are inside `out` (stride covers k1
                    // rounded up to a vector).
                    unsafe {
                        let (qp, op) = (q.as_ptr().add(r * dim), out.as_mut_ptr().add(r * stride + $lanes * v));
                        match (rows, nv) {
                            $(($r, $n) => $tile::<E, $r, $n>(qp, dim, ks, bs, scale, op, stride),)*
                            _ => unreachable!("tile {rows}x{nv}"),
                        }
                    }
                    v += nv;
                }
                r += rows;
            }
        }

        $(#[$tdoc])*
        #[target_feature(enable = $features)]
        #[inline]
        #[allow(clippy::needless_range_loop)]
        unsafe fn $tile<E: Load8, const R: usize, const N: usize>(
            q: *const f32,
            dim: usize,
            k: [*const E; 3],
            bs: usize,
            scale: f32,
            out: *mut f32,
            stride: usize,
        ) {
            let main = dim / 8 * 8;
            // Pair sums l_m + l_(m+4) of every (query, key vector).
            let mut pair: [[[$vec; 4]; N]; R] = [[[$zero(); 4]; N]; R];
            for l in 0..8 {
                let mut acc: [[$vec; N]; R] = [[$zero(); N]; R];
                for d in (l..main).step_by(8) {
                    // SAFETY (loads): the caller's promise.
                    let kv: [$vec; N] = std::array::from_fn(|j| unsafe { E::$load(k[j].add(d * bs)) });
                    for r in 0..R {
                        let qv = $set1(unsafe { *q.add(r * dim + d) });
                        for j in 0..N {
                            acc[r][j] = $fmadd(qv, kv[j], acc[r][j]);
                        }
                    }
                }
                for r in 0..R {
                    for j in 0..N {
                        pair[r][j][l % 4] = if l < 4 { acc[r][j] } else { $add(pair[r][j][l % 4], acc[r][j]) };
                    }
                }
            }
            let sv = $set1(scale);
            for r in 0..R {
                for j in 0..N {
                    let p = &pair[r][j];
                    let mut s = $add($add(p[0], p[2]), $add(p[1], p[3]));
                    for d in main..dim {
                        // SAFETY (loads): the caller's promise.
                        let kv = unsafe { E::$load(k[j].add(d * bs)) };
                        s = $fmadd($set1(unsafe { *q.add(r * dim + d) }), kv, s);
                    }
                    // SAFETY: the caller's promise.
                    unsafe { $storeu(out.add(r * stride + $lanes * j), $mul(s, sv)) };
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// A cache element loaded eight (or, on AVX-512, sixteen) at a time as f32 (f16 widened,
    /// which is exact): the one load that the scores kernel and the value rows of `ops`
    /// (`Gather`) both use.
    pub trait Load8: Copy {
        /// # Safety
        /// Eight elements are readable at `p`; the CPU has AVX2 and F16C.
        unsafe fn load8(p: *const Self) -> __m256;
        /// # Safety
        /// Sixteen elements are readable at `p`; the CPU has AVX-512 F.
        unsafe fn load16(p: *const Self) -> __m512;
    }
    impl Load8 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: the caller's promise; unaligned load.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512 {
            // SAFETY: the caller's promise; unaligned load.
            unsafe { _mm512_loadu_ps(p) }
        }
    }
    impl Load8 for u16 {
        #[inline(always)]
        unsafe fn load8(p: *const u16) -> __m256 {
            // SAFETY: the caller's promise (16 bytes); unaligned load.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
        #[inline(always)]
        unsafe fn load16(p: *const u16) -> __m512 {
            // SAFETY: the caller's promise (32 bytes); unaligned load.
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
        }
    }

    /// [`super::scores`] for `bs % 8 == 0` and `k0 % 8 == 0`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; the shapes [`super::scores`] checks, with those two conditions.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores<E: Load8>(
        q: &[f32],
        k: super::KeysT<E>,
        mut k0: usize,
        k1: usize,
        scale: f32,
        out: &mut [f32],
        stride: usize,
    ) {
        if crate::quant::common::has_avx512f() && k.bs.is_multiple_of(16) && k0.is_multiple_of(16) {
            // Whole vectors of sixteen keys on AVX-512 (each inside one block), then at most one
            // vector of eight here: the outputs written stay within k1 rounded up to 8.
            let end = k0 + (k1.next_multiple_of(8) - k0) / 16 * 16;
            if end > k0 {
                // SAFETY: AVX-512 F was detected; the keys k0..end are inside their blocks and
                // their outputs inside `out`, as the caller promised for k0..k1 rounded up to 8.
                unsafe { super::wide::scores16(q, k, k0, end, scale, out, stride) };
            }
            if end >= k1 {
                return;
            }
            k0 = end;
        }
        // SAFETY: the caller's promise.
        unsafe { scores8(q, k, k0, k1, scale, out, stride) }
    }

    scores_kernel!(
        /// Keys `k0..k1` in vectors of eight (`k0 % 8 == 0`).
        ///
        /// # Safety
        /// AVX2, FMA and F16C; the shapes [`super::scores`] checks, `bs % 8 == 0`.
        scores8,
        /// `R` queries (at `q`, `dim` apart) against `N` vectors of eight keys (`k[j]`, dim `d` at
        /// `k[j] + d * bs`): [`super::scores_scalar`]'s operations in every lane. The eight
        /// per-lane chains run one after the other, `R·N` at a time, each folded into its pair sum
        /// as it ends.
        ///
        /// # Safety
        /// AVX2, FMA and F16C; every read and the `R` rows of 8·`N` outputs (at `out`, `stride`
        /// apart) are in bounds.
        tile8, "avx2,fma,f16c", 8, __m256, _mm256_setzero_ps, _mm256_set1_ps, _mm256_fmadd_ps,
        _mm256_add_ps, _mm256_mul_ps, _mm256_storeu_ps, load8, 6,
        [(6, 2), (6, 1), (5, 2), (5, 1), (4, 2), (4, 1), (3, 3), (3, 2), (3, 1), (2, 3), (2, 2), (2, 1), (1, 3), (1, 2), (1, 1)]
    );
}

/// [`x86::scores`] with vectors of sixteen keys: each zmm lane does what an AVX2 lane does, so
/// the scores keep their bits with half the loads, broadcasts and multiply-adds.
#[cfg(target_arch = "x86_64")]
mod wide {
    use super::x86::Load8;
    use std::arch::x86_64::*;

    scores_kernel!(
        /// Keys `k0..k1`, both multiples of 16, with `bs % 16 == 0`.
        ///
        /// # Safety
        /// AVX-512 F, AVX2, FMA and F16C; the shapes [`super::scores`] checks, for keys up to `k1`.
        scores16,
        /// The AVX2 tile with sixteen keys a vector.
        ///
        /// # Safety
        /// As for the AVX2 tile, with AVX-512 F and 16·`N` outputs a row.
        tile16, "avx512f,avx2,fma,f16c", 16, __m512, _mm512_setzero_ps, _mm512_set1_ps, _mm512_fmadd_ps,
        _mm512_add_ps, _mm512_mul_ps, _mm512_storeu_ps, load16, 12,
        [(12, 2), (12, 1), (11, 2), (11, 1), (10, 2), (10, 1), (9, 2), (9, 1), (8, 2), (8, 1), (7, 2), (7, 1), (6, 2), (6, 1), (5, 2), (5, 1), (4, 2), (4, 1), (3, 3), (3, 2), (3, 1), (2, 3), (2, 2), (2, 1), (1, 3), (1, 2), (1, 1)]
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn simd_scores_equal_scalar_chains_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // Blocks of 16 and 32 take the AVX-512 kernel where the CPU has it (key ranges from a
        // multiple of 16, ending on a whole vector of 16 or with one of 8 for the AVX2 kernel).
        for (dim, bs) in [(64, 16), (24, 8), (13, 32), (64, 5), (8, 16), (64, 32)] {
            let n_blocks = 12;
            let c32: Vec<f32> = (0..n_blocks * dim * bs).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let c16: Vec<u16> = c32.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect();
            let mut order: Vec<usize> = (0..n_blocks).collect();
            order.reverse();
            let blocks: Vec<usize> = order.iter().map(|&b| b * dim * bs).collect();
            for nq in [1usize, 2, 3, 4, 5, 6, 7, 13, 24] {
                let q: Vec<f32> = (0..nq * dim).map(|_| rng.gen_range(-3.0..3.0)).collect();
                for (k0, k1) in [(0, 1), (0, 8), (0, 37), (8, 64), (64, 100), (16, 72), (32, 96), (0, n_blocks * bs)] {
                    if k1 > n_blocks * bs {
                        continue;
                    }
                    let stride = k1.next_multiple_of(8) + 3;
                    let run = |f: &dyn Fn(&mut [f32])| {
                        let mut out = vec![f32::NAN; nq * stride];
                        f(&mut out);
                        (0..nq).flat_map(|r| out[r * stride + k0..r * stride + k1].to_vec()).collect::<Vec<f32>>()
                    };
                    let k32 = KeysT { base: &c32[..], blocks: &blocks, bs, dim };
                    let k16 = KeysT { base: &c16[..], blocks: &blocks, bs, dim };
                    let fast = run(&|o| scores(&q, k32, k0, k1, 0.125, o, stride));
                    let slow = run(&|o| scores_scalar(&q, k32, k0, k1, 0.125, o, stride));
                    assert_eq!(bits(&fast), bits(&slow), "f32 dim={dim} bs={bs} nq={nq} keys {k0}..{k1}");
                    let fast = run(&|o| scores(&q, k16, k0, k1, 0.125, o, stride));
                    let slow = run(&|o| scores_scalar(&q, k16, k0, k1, 0.125, o, stride));
                    assert_eq!(bits(&fast), bits(&slow), "f16 dim={dim} bs={bs} nq={nq} keys {k0}..{k1}");
                    // And close to the exact dot product.
                    for (i, &s) in fast.iter().enumerate() {
                        let (r, p) = (i / (k1 - k0), k0 + i % (k1 - k0));
                        let at = blocks[p / bs] + p % bs;
                        let exact: f64 = (0..dim)
                            .map(|d| q[r * dim + d] as f64 * half::f16::from_bits(c16[at + d * bs]).to_f64())
                            .sum();
                        assert!((s as f64 - exact * 0.125).abs() < 1e-4, "{s} vs {}", exact * 0.125);
                    }
                }
            }
        }
    }
}
