//! The one trait through which models reach kernels.
//!
//! Model code calls these operations and never a SIMD routine directly, so a second backend
//! (CUDA) can later implement the same trait over device buffers.

use crate::attention::{self, AttentionSeq, KvMut, KvShape, PagedKv};
use crate::ops::{self, RopeStyle, RopeTable};
use crate::threadpool::DisjointSlice;
use crate::{QMatrix, ThreadPool, TokenRun};

pub trait Backend: Send + Sync {
    /// `out = x · Wᵀ` for `n` rows of `x`.
    fn matmul(&self, w: &QMatrix, x: &[f32], n: usize, out: &mut [f32]);
    /// `outs[i] = x · ws[i]ᵀ` for matrices that read the same `x` (fused Q/K/V, gate/up).
    fn matmul_many(&self, ws: &[&QMatrix], x: &[f32], n: usize, outs: &mut [&mut [f32]]) {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.matmul(w, x, n, out);
        }
    }
    /// [`Self::matmul_many`] over a batch whose tokens come in `runs` of one kind each
    /// ([`crate::TokenKind`]), in order: a backend may compute prompt and generated tokens with
    /// different kernels (never differently by batch). The default treats them alike.
    fn matmul_many_runs(&self, ws: &[&QMatrix], x: &[f32], runs: &[TokenRun], outs: &mut [&mut [f32]]) {
        let n = runs.iter().map(|r| r.len).sum();
        self.matmul_many(ws, x, n, outs)
    }
    fn rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]);
    fn rope(&self, table: &RopeTable, x: &mut [f32], positions: &[u32], n_heads: usize, style: RopeStyle);
    fn silu_mul(&self, gate: &mut [f32], up: &[f32]);
    fn add_inplace(&self, x: &mut [f32], y: &[f32]);
    /// Stores K and V rows (`[tokens, kv_dim]`) in their cache slots.
    fn write_kv(&self, cache: KvMut, k: &[f32], v: &[f32], slots: &[usize], shape: KvShape);
    #[allow(clippy::too_many_arguments)]
    fn paged_attention(
        &self,
        q: &[f32],
        kv: &PagedKv,
        seqs: &[AttentionSeq],
        n_heads: usize,
        scale: f32,
        out: &mut [f32],
    );
}

/// Kernels on the host CPU, with runtime SIMD dispatch inside each kernel.
pub struct CpuBackend {
    pool: &'static ThreadPool,
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend { pool: ThreadPool::global() }
    }

    pub fn pool(&self) -> &ThreadPool {
        self.pool
    }

    /// Runs `f(r0, r1)` over ranges covering rows `0..rows` (`row_len` floats each): on the
    /// pool when there is enough work to pay for waking it (prefill), else inline (decode). The
    /// element-wise kernels give each element the same operations in any range, so the split
    /// cannot change a result.
    fn par_rows(&self, rows: usize, row_len: usize, f: impl Fn(usize, usize) + Sync) {
        let threads = self.pool.num_threads();
        if threads == 1 || rows < 2 || rows * row_len < PAR_MIN_ELEMS {
            f(0, rows);
            return;
        }
        let per_task = rows.div_ceil(threads * 2);
        self.pool.run(rows.div_ceil(per_task), |i| f(i * per_task, ((i + 1) * per_task).min(rows)));
    }

    /// [`Self::par_rows`] over the elements `0..len` of flat arrays, in runs of whole vectors.
    fn par_elems(&self, len: usize, f: impl Fn(usize, usize) + Sync) {
        self.par_rows(len.div_ceil(ELEMS_PER_ROW), ELEMS_PER_ROW, |r0, r1| {
            f(r0 * ELEMS_PER_ROW, (r1 * ELEMS_PER_ROW).min(len))
        });
    }
}

/// Fewest floats an element-wise kernel splits across threads: below this (a decode step) the
/// fork and join cost more than the work.
const PAR_MIN_ELEMS: usize = 1 << 15;
/// Unit of the split for kernels on flat arrays: whole AVX2 vectors.
const ELEMS_PER_ROW: usize = 1024;

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend::new()
    }
}

impl Backend for CpuBackend {
    fn matmul(&self, w: &QMatrix, x: &[f32], n: usize, out: &mut [f32]) {
        w.matmul(self.pool, x, n, out)
    }
    fn matmul_many(&self, ws: &[&QMatrix], x: &[f32], n: usize, outs: &mut [&mut [f32]]) {
        crate::quant::matmul_many(self.pool, ws, x, n, outs)
    }
    fn matmul_many_runs(&self, ws: &[&QMatrix], x: &[f32], runs: &[TokenRun], outs: &mut [&mut [f32]]) {
        crate::quant::matmul_many_runs(self.pool, ws, x, runs, outs)
    }
    fn rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        let dim = weight.len();
        assert_eq!(x.len(), out.len(), "rms_norm lengths");
        let shared = DisjointSlice::new(out);
        self.par_rows(x.len() / dim.max(1), dim, |r0, r1| {
            // SAFETY: the ranges of rows given to the tasks are disjoint.
            let out = unsafe { shared.part(r0 * dim, (r1 - r0) * dim) };
            ops::rms_norm(&x[r0 * dim..r1 * dim], weight, eps, out)
        });
    }
    fn rope(&self, table: &RopeTable, x: &mut [f32], positions: &[u32], n_heads: usize, style: RopeStyle) {
        let width = x.len() / positions.len().max(1);
        let shared = DisjointSlice::new(x);
        self.par_rows(positions.len(), width, |t0, t1| {
            // SAFETY: the ranges of tokens given to the tasks are disjoint.
            let x = unsafe { shared.part(t0 * width, (t1 - t0) * width) };
            table.apply(x, &positions[t0..t1], n_heads, style)
        });
    }
    fn silu_mul(&self, gate: &mut [f32], up: &[f32]) {
        assert_eq!(gate.len(), up.len(), "silu_mul lengths");
        let shared = DisjointSlice::new(gate);
        self.par_elems(up.len(), |i0, i1| {
            // SAFETY: the element ranges given to the tasks are disjoint.
            ops::silu_mul(unsafe { shared.part(i0, i1 - i0) }, &up[i0..i1])
        });
    }
    fn add_inplace(&self, x: &mut [f32], y: &[f32]) {
        assert_eq!(x.len(), y.len(), "add_inplace lengths");
        let shared = DisjointSlice::new(x);
        self.par_elems(y.len(), |i0, i1| {
            // SAFETY: the element ranges given to the tasks are disjoint.
            ops::add_inplace(unsafe { shared.part(i0, i1 - i0) }, &y[i0..i1])
        });
    }
    fn write_kv(&self, cache: KvMut, k: &[f32], v: &[f32], slots: &[usize], shape: KvShape) {
        attention::write_kv(cache, k, v, slots, shape)
    }
    fn paged_attention(
        &self,
        q: &[f32],
        kv: &PagedKv,
        seqs: &[AttentionSeq],
        n_heads: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        attention::paged_attention(self.pool, q, kv, seqs, n_heads, scale, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prefill-sized element-wise ops go through the pool in pieces; every element must come out
    /// as the single-threaded kernel makes it (odd sizes, so the last piece is partial).
    #[test]
    fn element_wise_ops_split_across_threads_equal_inline() {
        let be = CpuBackend { pool: Box::leak(Box::new(ThreadPool::new(2))) };
        let (tokens, heads, hd) = (301, 3, 64);
        let n = tokens * heads * hd;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
        let y: Vec<f32> = (0..n).map(|i| ((i * 104_729) % 997) as f32 / 300.0 - 1.5).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();

        let (mut a, mut b) = (x.clone(), x.clone());
        be.silu_mul(&mut a, &y);
        ops::silu_mul(&mut b, &y);
        assert_eq!(bits(&a), bits(&b), "silu_mul");

        let (mut a, mut b) = (x.clone(), x.clone());
        be.add_inplace(&mut a, &y);
        ops::add_inplace(&mut b, &y);
        assert_eq!(bits(&a), bits(&b), "add_inplace");

        let w: Vec<f32> = (0..heads * hd).map(|i| 0.5 + i as f32 / 400.0).collect();
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        be.rms_norm(&x, &w, 1e-5, &mut a);
        ops::rms_norm(&x, &w, 1e-5, &mut b);
        assert_eq!(bits(&a), bits(&b), "rms_norm");

        let table = RopeTable::new(hd, 512, 10000.0);
        let positions: Vec<u32> = (0..tokens as u32).map(|p| (p * 3) % 512).collect();
        for style in [RopeStyle::Interleaved, RopeStyle::NeoX] {
            let (mut a, mut b) = (x.clone(), x.clone());
            be.rope(&table, &mut a, &positions, heads, style);
            table.apply(&mut b, &positions, heads, style);
            assert_eq!(bits(&a), bits(&b), "rope");
        }
    }
}
