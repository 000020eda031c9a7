//! Paged attention over a flat, variable-length batch: prefill chunks and decodes together.
//!
//! Each sequence contributes `query_len` query tokens at the end of its `context_len` tokens;
//! query `i` sits at position `context_len - query_len + i` and attends causally to every
//! earlier position, reading keys and values through the sequence's block table.

use crate::ops::{axpy, axpy_f16, dot, dot_f16, f32_to_f16_row, round_to_f16};
use crate::threadpool::DisjointSlice;
use crate::ThreadPool;

/// Element type of a KV cache: `f32`, or f16 stored as its IEEE half bits (`u16`, llama.cpp's
/// default KV type: half the memory and attention traffic).
pub trait KvElem: Copy + Default + Send + Sync + 'static {
    /// Writes `x` into `out` in this type.
    fn store(x: &[f32], out: &mut [Self]);
    /// `q · k`.
    fn dot(q: &[f32], k: &[Self]) -> f32;
    /// `out += a * v`.
    fn axpy(a: f32, v: &[Self], out: &mut [f32]);
    /// Rounds `x` in place to what the attention arithmetic sees for this cache type. For f16
    /// caches the query and the softmax weights are rounded to f16 as well, as in llama.cpp's
    /// f16-KV attention (ggml converts the f32 operand of an f16 matmul to f16): then our
    /// numerics follow the reference implementation's, not just its storage.
    fn round_operands(x: &mut [f32]);
}

impl KvElem for f32 {
    fn store(x: &[f32], out: &mut [f32]) {
        out.copy_from_slice(x);
    }
    #[inline]
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        dot(q, k)
    }
    #[inline]
    fn axpy(a: f32, v: &[f32], out: &mut [f32]) {
        axpy(a, v, out)
    }
    #[inline]
    fn round_operands(_: &mut [f32]) {}
}

impl KvElem for u16 {
    fn store(x: &[f32], out: &mut [u16]) {
        f32_to_f16_row(x, out);
    }
    #[inline]
    fn dot(q: &[f32], k: &[u16]) -> f32 {
        dot_f16(q, k)
    }
    #[inline]
    fn axpy(a: f32, v: &[u16], out: &mut [f32]) {
        axpy_f16(a, v, out)
    }
    #[inline]
    fn round_operands(x: &mut [f32]) {
        round_to_f16(x)
    }
}

/// One layer's K and V, each `[num_blocks, block_size, n_kv_heads, head_dim]`.
#[derive(Clone, Copy)]
pub enum KvRef<'a> {
    F32 { k: &'a [f32], v: &'a [f32] },
    F16 { k: &'a [u16], v: &'a [u16] },
}

/// [`KvRef`], writable.
pub enum KvMut<'a> {
    F32 { k: &'a mut [f32], v: &'a mut [f32] },
    F16 { k: &'a mut [u16], v: &'a mut [u16] },
}

/// One layer's paged KV cache with its geometry.
pub struct PagedKv<'a> {
    pub data: KvRef<'a>,
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
pub fn write_kv(cache: KvMut, k: &[f32], v: &[f32], slots: &[usize], kv_dim: usize) {
    fn write<E: KvElem>(kc: &mut [E], vc: &mut [E], k: &[f32], v: &[f32], slots: &[usize], kv_dim: usize) {
        for (t, &slot) in slots.iter().enumerate() {
            E::store(&k[t * kv_dim..(t + 1) * kv_dim], &mut kc[slot * kv_dim..(slot + 1) * kv_dim]);
            E::store(&v[t * kv_dim..(t + 1) * kv_dim], &mut vc[slot * kv_dim..(slot + 1) * kv_dim]);
        }
    }
    match cache {
        KvMut::F32 { k: kc, v: vc } => write(kc, vc, k, v, slots, kv_dim),
        KvMut::F16 { k: kc, v: vc } => write(kc, vc, k, v, slots, kv_dim),
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
    match kv.data {
        KvRef::F32 { k, v } => attention::<f32>(pool, q, k, v, kv, seqs, n_heads, scale, out),
        KvRef::F16 { k, v } => attention::<u16>(pool, q, k, v, kv, seqs, n_heads, scale, out),
    }
}

/// [`paged_attention`] for one cache element type (`geo` gives the geometry).
#[allow(clippy::too_many_arguments)]
fn attention<E: KvElem>(
    pool: &ThreadPool,
    q: &[f32],
    kc: &[E],
    vc: &[E],
    geo: &PagedKv,
    seqs: &[AttentionSeq],
    n_heads: usize,
    scale: f32,
    out: &mut [f32],
) {
    let (hd, bs) = (geo.head_dim, geo.block_size);
    let group = n_heads / geo.n_kv_heads;
    let kv_dim = geo.n_kv_heads * hd;
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
        let (mut scores, mut qr) = (Vec::new(), vec![0f32; hd]);
        for task in c * chunk..((c + 1) * chunk).min(n_tasks) {
            let (s, t, pos) = token_seq[task / n_heads];
            let h = task % n_heads;
            let kvh = h / group;
            let seq = &seqs[s];
            qr.copy_from_slice(&q[(t * n_heads + h) * hd..(t * n_heads + h + 1) * hd]);
            E::round_operands(&mut qr);
            let qv = &qr[..];
            // SAFETY: each task owns the distinct (token, head) row of `out`.
            let o = unsafe { out.part((t * n_heads + h) * hd, hd) };
            attend_one(qv, kc, vc, bs, hd, seq.block_table, pos + 1, kvh, kv_dim, scale, &mut scores, o);
        }
    });
}

/// One query head over `n_ctx` cached positions: two passes (scores, then weighted values).
#[allow(clippy::too_many_arguments)]
fn attend_one<E: KvElem>(
    q: &[f32],
    kc: &[E],
    vc: &[E],
    bs: usize,
    hd: usize,
    block_table: &[u32],
    n_ctx: usize,
    kvh: usize,
    kv_dim: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    // Cache slots of positions 0..n_ctx, block by block (no division per position).
    let slots = || block_table.iter().flat_map(move |&b| (0..bs).map(move |o| b as usize * bs + o)).take(n_ctx);
    let head = |slot: usize| slot * kv_dim + kvh * hd..slot * kv_dim + (kvh + 1) * hd;
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for slot in slots() {
        let s = E::dot(q, &kc[head(slot)]) * scale;
        max = max.max(s);
        scores.push(s);
    }
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for s in scores.iter_mut() {
        *s /= sum;
    }
    E::round_operands(scores);
    out.fill(0.0);
    for (slot, &w) in slots().zip(scores.iter()) {
        E::axpy(w, &vc[head(slot)], out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Dense causal attention on contiguous K/V, the reference for the paged kernel; `round` is
    /// applied to the query and the softmax weights (the cache type's [`KvElem::round_operands`]).
    #[allow(clippy::too_many_arguments)]
    fn dense(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n_tok: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
        round: fn(f32) -> f32,
        out: &mut [f32],
    ) {
        let group = nh / nkv;
        for t in 0..n_tok {
            for h in 0..nh {
                let qv: Vec<f32> = q[(t * nh + h) * hd..][..hd].iter().map(|&x| round(x)).collect();
                let kvh = h / group;
                let s: Vec<f32> =
                    (0..=t).map(|p| dot(&qv, &k[(p * nkv + kvh) * hd..][..hd]) / (hd as f32).sqrt()).collect();
                let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                let o = &mut out[(t * nh + h) * hd..][..hd];
                o.fill(0.0);
                for p in 0..=t {
                    axpy(round(e[p] / z), &v[(p * nkv + kvh) * hd..][..hd], o);
                }
            }
        }
    }

    #[test]
    fn paged_matches_dense_with_scattered_blocks_and_split_chunks() {
        let (nh, nkv, hd, bs, n_tok) = (4, 2, 8, 4, 11);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let q: Vec<f32> = (0..n_tok * nh * hd).map(|_| rng.gen_range(-1.0..1.0)).collect();
        // K and V exactly representable in f16, so the cache holds them unchanged.
        let f16 = |x: f32| half::f16::from_f32(x).to_f32();
        let k: Vec<f32> = (0..n_tok * nkv * hd).map(|_| f16(rng.gen_range(-1.0..1.0))).collect();
        let v: Vec<f32> = (0..n_tok * nkv * hd).map(|_| f16(rng.gen_range(-1.0..1.0))).collect();

        let block_table = [5u32, 2, 7];
        let kv_dim = nkv * hd;
        let slots: Vec<usize> = (0..n_tok).map(|p| block_table[p / bs] as usize * bs + p % bs).collect();
        let (mut k32, mut v32) = (vec![0f32; 8 * bs * kv_dim], vec![0f32; 8 * bs * kv_dim]);
        let (mut k16, mut v16) = (vec![0u16; 8 * bs * kv_dim], vec![0u16; 8 * bs * kv_dim]);
        write_kv(KvMut::F32 { k: &mut k32, v: &mut v32 }, &k, &v, &slots, kv_dim);
        write_kv(KvMut::F16 { k: &mut k16, v: &mut v16 }, &k, &v, &slots, kv_dim);
        // Query the last 5 tokens as one chunk, as a chunked prefill would.
        let start = n_tok - 5;
        let seqs = [AttentionSeq { query_start: 0, query_len: 5, context_len: n_tok, block_table: &block_table }];
        let pool = ThreadPool::new(2);
        type Round = fn(f32) -> f32;
        let cases: [(KvRef, Round); 2] = [
            (KvRef::F32 { k: &k32, v: &v32 }, |x| x),
            (KvRef::F16 { k: &k16, v: &v16 }, |x| half::f16::from_f32(x).to_f32()),
        ];
        for (data, round) in cases {
            let mut want = vec![0f32; q.len()];
            dense(&q, &k, &v, n_tok, nh, nkv, hd, round, &mut want);
            let kv = PagedKv { data, block_size: bs, n_kv_heads: nkv, head_dim: hd };
            let mut got = vec![0f32; 5 * nh * hd];
            paged_attention(&pool, &q[start * nh * hd..], &kv, &seqs, nh, 1.0 / (hd as f32).sqrt(), &mut got);
            for (a, b) in got.iter().zip(&want[start * nh * hd..]) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }
}
