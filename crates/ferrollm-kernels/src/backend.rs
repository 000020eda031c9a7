//! The one trait through which models reach kernels.
//!
//! Model code calls these operations and never a SIMD routine directly, so a second backend
//! (CUDA) can later implement the same trait over device buffers.

use crate::attention::{self, AttentionSeq, KvMut, PagedKv};
use crate::ops::{self, RopeStyle, RopeTable};
use crate::{QMatrix, ThreadPool};

pub trait Backend: Send + Sync {
    /// `out = x · Wᵀ` for `n` rows of `x`.
    fn matmul(&self, w: &QMatrix, x: &[f32], n: usize, out: &mut [f32]);
    /// `outs[i] = x · ws[i]ᵀ` for matrices that read the same `x` (fused Q/K/V, gate/up).
    fn matmul_many(&self, ws: &[&QMatrix], x: &[f32], n: usize, outs: &mut [&mut [f32]]) {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.matmul(w, x, n, out);
        }
    }
    fn rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]);
    fn rope(&self, table: &RopeTable, x: &mut [f32], positions: &[u32], n_heads: usize, style: RopeStyle);
    fn silu_mul(&self, gate: &mut [f32], up: &[f32]);
    fn add_inplace(&self, x: &mut [f32], y: &[f32]);
    /// Stores K and V rows (`[tokens, kv_dim]`) in their cache slots.
    fn write_kv(&self, cache: KvMut, k: &[f32], v: &[f32], slots: &[usize], kv_dim: usize);
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
}

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
    fn rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        ops::rms_norm(x, weight, eps, out)
    }
    fn rope(&self, table: &RopeTable, x: &mut [f32], positions: &[u32], n_heads: usize, style: RopeStyle) {
        table.apply(x, positions, n_heads, style)
    }
    fn silu_mul(&self, gate: &mut [f32], up: &[f32]) {
        ops::silu_mul(gate, up)
    }
    fn add_inplace(&self, x: &mut [f32], y: &[f32]) {
        ops::add_inplace(x, y)
    }
    fn write_kv(&self, cache: KvMut, k: &[f32], v: &[f32], slots: &[usize], kv_dim: usize) {
        attention::write_kv(cache, k, v, slots, kv_dim)
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
