//! Paged attention over a flat, variable-length batch: prefill chunks and decodes together.
//!
//! Each sequence contributes `query_len` query tokens at the end of its `context_len` tokens;
//! query `i` sits at position `context_len - query_len + i` and attends causally to every
//! earlier position, reading keys and values through the sequence's block table.

use crate::ops::{axpy, dot};
use crate::threadpool::DisjointSlice;
use crate::ThreadPool;

/// One layer's KV cache, `[num_blocks, block_size, n_kv_heads, head_dim]` for K and for V.
pub struct PagedKv<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub block_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// One sequence's share of the batch.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSeq<'a> {
    /// Index of its first query token in the flat batch.
    pub query_start: usize,
    pub query_len: usize,
    /// Tokens in its cache after this step's keys are written (includes the queries).
    pub context_len: usize,
    pub block_table: &'a [u32],
}

/// Writes `k`/`v` rows (`[tokens, n_kv_heads * head_dim]`) into their cache slots.
pub fn write_kv(k_cache: &mut [f32], v_cache: &mut [f32], k: &[f32], v: &[f32], slots: &[usize], kv_dim: usize) {
    for (t, &slot) in slots.iter().enumerate() {
        k_cache[slot * kv_dim..(slot + 1) * kv_dim].copy_from_slice(&k[t * kv_dim..(t + 1) * kv_dim]);
        v_cache[slot * kv_dim..(slot + 1) * kv_dim].copy_from_slice(&v[t * kv_dim..(t + 1) * kv_dim]);
    }
}

/// `out[t, h] = softmax(q[t, h] · Kᵀ · scale) · V` over each token's causal context.
///
/// `q` and `out` are `[tokens, n_heads, head_dim]`; query heads share KV heads in groups of
/// `n_heads / n_kv_heads` (GQA).
pub fn paged_attention(
    pool: &ThreadPool,
    q: &[f32],
    kv: &PagedKv,
    seqs: &[AttentionSeq],
    n_heads: usize,
    scale: f32,
    out: &mut [f32],
) {
    let hd = kv.head_dim;
    let group = n_heads / kv.n_kv_heads;
    let kv_dim = kv.n_kv_heads * hd;
    // Tasks are (token, head) pairs in batch order.
    let mut token_seq = Vec::new();
    for (s, seq) in seqs.iter().enumerate() {
        for i in 0..seq.query_len {
            token_seq.push((s, seq.query_start + i, seq.context_len - seq.query_len + i));
        }
    }
    let n_tasks = token_seq.len() * n_heads;
    let out = DisjointSlice::new(out);
    let chunk = n_tasks.div_ceil(pool.num_threads() * 4).max(1);
    pool.run(n_tasks.div_ceil(chunk), |c| {
        let mut scores = Vec::new();
        for task in c * chunk..((c + 1) * chunk).min(n_tasks) {
            let (s, t, pos) = token_seq[task / n_heads];
            let h = task % n_heads;
            let kvh = h / group;
            let seq = &seqs[s];
            let qv = &q[(t * n_heads + h) * hd..(t * n_heads + h + 1) * hd];
            // SAFETY: each task owns the distinct (token, head) row of `out`.
            let o = unsafe { out.part((t * n_heads + h) * hd, hd) };
            attend_one(qv, kv, seq.block_table, pos + 1, kvh, kv_dim, scale, &mut scores, o);
        }
    });
}

/// One query head over `n_ctx` cached positions: two passes (scores, then weighted values).
#[allow(clippy::too_many_arguments)]
fn attend_one(
    q: &[f32],
    kv: &PagedKv,
    block_table: &[u32],
    n_ctx: usize,
    kvh: usize,
    kv_dim: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = kv.head_dim;
    let bs = kv.block_size;
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for p in 0..n_ctx {
        let slot = block_table[p / bs] as usize * bs + p % bs;
        let k = &kv.k[slot * kv_dim + kvh * hd..slot * kv_dim + (kvh + 1) * hd];
        let s = dot(q, k) * scale;
        max = max.max(s);
        scores.push(s);
    }
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        let slot = block_table[p / bs] as usize * bs + p % bs;
        let v = &kv.v[slot * kv_dim + kvh * hd..slot * kv_dim + (kvh + 1) * hd];
        axpy(w / sum, v, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Dense causal attention on contiguous K/V, the reference for the paged kernel.
    #[allow(clippy::too_many_arguments)]
    fn dense(q: &[f32], k: &[f32], v: &[f32], n_tok: usize, nh: usize, nkv: usize, hd: usize, out: &mut [f32]) {
        let group = nh / nkv;
        for t in 0..n_tok {
            for h in 0..nh {
                let qv = &q[(t * nh + h) * hd..][..hd];
                let kvh = h / group;
                let s: Vec<f32> =
                    (0..=t).map(|p| dot(qv, &k[(p * nkv + kvh) * hd..][..hd]) / (hd as f32).sqrt()).collect();
                let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                let o = &mut out[(t * nh + h) * hd..][..hd];
                o.fill(0.0);
                for p in 0..=t {
                    axpy(e[p] / z, &v[(p * nkv + kvh) * hd..][..hd], o);
                }
            }
        }
    }

    #[test]
    fn paged_matches_dense_with_scattered_blocks_and_split_chunks() {
        let (nh, nkv, hd, bs, n_tok) = (4, 2, 8, 4, 11);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let q: Vec<f32> = (0..n_tok * nh * hd).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let k: Vec<f32> = (0..n_tok * nkv * hd).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let v: Vec<f32> = (0..n_tok * nkv * hd).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut want = vec![0f32; q.len()];
        dense(&q, &k, &v, n_tok, nh, nkv, hd, &mut want);

        let block_table = [5u32, 2, 7];
        let kv_dim = nkv * hd;
        let mut kc = vec![0f32; 8 * bs * kv_dim];
        let mut vc = vec![0f32; 8 * bs * kv_dim];
        let slots: Vec<usize> = (0..n_tok).map(|p| block_table[p / bs] as usize * bs + p % bs).collect();
        write_kv(&mut kc, &mut vc, &k, &v, &slots, kv_dim);
        let kv = PagedKv { k: &kc, v: &vc, block_size: bs, n_kv_heads: nkv, head_dim: hd };
        // Query the last 5 tokens as one chunk, as a chunked prefill would.
        let start = n_tok - 5;
        let seqs = [AttentionSeq { query_start: 0, query_len: 5, context_len: n_tok, block_table: &block_table }];
        let mut got = vec![0f32; 5 * nh * hd];
        let pool = ThreadPool::new(2);
        paged_attention(&pool, &q[start * nh * hd..], &kv, &seqs, nh, 1.0 / (hd as f32).sqrt(), &mut got);
        for (a, b) in got.iter().zip(&want[start * nh * hd..]) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
