//! Paged attention over a flat, variable-length batch: prefill chunks and decodes together.
//!
//! Each sequence contributes `query_len` query tokens at the end of its `context_len` tokens;
//! query `i` sits at position `context_len - query_len + i` and attends causally to every
//! earlier position, reading keys and values through the sequence's block table.
//!
//! # Tiles
//!
//! The work is split into tiles: up to [`TILE_TOKENS`] consecutive query tokens of one sequence
//! times the query heads of one GQA group (all of them, or a share when there are too few tiles
//! to keep every thread busy). All queries of a tile read the same keys and values, so the tile
//! runs every query over each block of [`KEY_BLOCK`] keys with [`scores`] and
//! [`axpy_many_gathered`], whose register tiles share each loaded vector between several queries.
//! They read the paged cache in place, widening f16 in registers: a decode tile has one to a few
//! queries, for which a separate widening pass cost as much as the arithmetic.
//!
//! # Cache layout
//!
//! Values are rows, `[slot][kv head][head_dim]`. Keys are transposed within each block,
//! `[block][kv head][head_dim][block_size]` ([`KvShape::k_index`]), so that one load gives one
//! dim of eight keys and scores need no horizontal sums (see [`crate::scores`]). With block
//! sizes that are not a multiple of 8 the scores take the scalar path (same bits, slower).
//!
//! # Batch invariance
//!
//! The result for one (token, head) is bit-identical whatever tile, batch or thread computes it:
//! decode, prefill chunk of any length, speculative verify row. A tile only shares loads; every
//! float operation of a query depends on that query alone:
//! - the widening is exact (f16 → f32, or a copy), so the keys and values are the cached values;
//! - each score is [`crate::scores::score`]`(q, k) * scale`, bit for bit, whatever tile it sits in
//!   (each lane of the scores kernel runs one (query, key) pair's operations, in the order
//!   llama.cpp's f16 GEMM uses);
//! - a query's softmax ([`softmax`](crate::ops::softmax), llama.cpp's, then the rounding) runs
//!   over its own row of scores, keys `0..n`, where `n` is its own context length (token `i` of
//!   a tile sees one key more than token `i - 1`), with element-wise exponentials and sums in a
//!   fixed order from key 0; scores a tile computes beyond a query's `n` are never read;
//! - its output is `0 + w_0 v_0 + w_1 v_1 + ...` over exactly its `n` keys in order, each step the
//!   fused multiply-add of [`axpy`] (a property of [`axpy_many_gathered`], which stops each row at
//!   its own count instead of multiplying by a zero weight, so even an infinite V row beyond a
//!   query's context cannot reach it).
//!
//! With `hd % 8 == 0` this is also, bit for bit, the per-query algorithm (one score and one
//! `axpy_f16` call per key and query) once that uses the same [`softmax`](crate::ops::softmax); the tests check both
//! that and the closeness to a softmax with libm's `expf` and a sequential sum.

use std::cell::RefCell;
use std::cmp::Reverse;

use crate::ops::{
    axpy, axpy_f16, axpy_many_gathered, f32_to_f16_row, round_to_f16, softmax_rows, GatherElem, Gathered,
};
use crate::scores::{scores, KeysT};
use crate::threadpool::DisjointSlice;
use crate::ThreadPool;

/// Most query tokens of one sequence in one tile.
pub const TILE_TOKENS: usize = 8;
/// K (or V) rows a tile takes at a time: 64 rows of 64 dims are 8 KiB in f16, which stay in L1
/// while every query of the tile goes over them.
pub const KEY_BLOCK: usize = 64;

/// Element type of a KV cache: `f32`, or f16 stored as its IEEE half bits (`u16`, llama.cpp's
/// default KV type: half the memory and attention traffic).
pub trait KvElem: GatherElem + Default + Send + Sync + 'static {
    /// Writes `x` into `out` in this type.
    fn store(x: &[f32], out: &mut [Self]);
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
    pub shape: KvShape,
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

/// Where a layer's cache puts things: `block_size` slots per block, `n_kv_heads` heads of
/// `head_dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub block_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// Index of dim `d` of KV head `h` of the key in `slot`: blocks of `[n_kv_heads][head_dim]
    /// [block_size]`, so that eight consecutive keys of one dim are one vector load (see
    /// [`crate::scores`]).
    #[inline]
    pub fn k_index(&self, slot: usize, h: usize, d: usize) -> usize {
        let (block, j) = (slot / self.block_size, slot % self.block_size);
        ((block * self.n_kv_heads + h) * self.head_dim + d) * self.block_size + j
    }

    /// Index of the value row of KV head `h` in `slot`: rows `[slot][n_kv_heads][head_dim]`.
    #[inline]
    pub fn v_index(&self, slot: usize, h: usize) -> usize {
        (slot * self.n_kv_heads + h) * self.head_dim
    }
}

/// Writes `k`/`v` rows (`[tokens, n_kv_heads * head_dim]`) into their cache slots: values as
/// rows, keys transposed into their block's panels ([`KvShape::k_index`]).
pub fn write_kv(cache: KvMut, k: &[f32], v: &[f32], slots: &[usize], shape: KvShape) {
    fn write<E: KvElem>(kc: &mut [E], vc: &mut [E], k: &[f32], v: &[f32], slots: &[usize], shape: KvShape) {
        let kv_dim = shape.n_kv_heads * shape.head_dim;
        let mut row = vec![E::default(); kv_dim];
        for (t, &slot) in slots.iter().enumerate() {
            E::store(&v[t * kv_dim..(t + 1) * kv_dim], &mut vc[shape.v_index(slot, 0)..][..kv_dim]);
            E::store(&k[t * kv_dim..(t + 1) * kv_dim], &mut row);
            for h in 0..shape.n_kv_heads {
                for d in 0..shape.head_dim {
                    kc[shape.k_index(slot, h, d)] = row[h * shape.head_dim + d];
                }
            }
        }
    }
    match cache {
        KvMut::F32 { k: kc, v: vc } => write(kc, vc, k, v, slots, shape),
        KvMut::F16 { k: kc, v: vc } => write(kc, vc, k, v, slots, shape),
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

/// A unit of work: query tokens `t0..t0 + nt` of sequence `seq` (indices among its queries) and
/// query heads `h0..h0 + nh` of the GQA group of KV head `kvh` (indices inside the group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tile {
    seq: usize,
    t0: usize,
    nt: usize,
    kvh: usize,
    h0: usize,
    nh: usize,
}

/// Cuts the batch into tiles, most expensive first.
///
/// Tiles hold up to [`TILE_TOKENS`] tokens and a whole GQA group. When that gives fewer tiles
/// than threads (a decode with few KV heads), each group is cut into `parts` shares of heads so
/// that every thread has work. Only then: every share reads all of the group's K and V rows, and
/// at batch 1 that memory traffic costs more than an uneven split (3 KV heads on 2 threads: 95
/// vs 87 tok/s for SmolLM2 at 512 tokens of context). The pool hands tasks out in order from a
/// shared counter, so sorting by cost (longest first) balances the causal triangle: the last
/// tiles of a long prefill read the most keys.
fn plan_tiles(seqs: &[AttentionSeq], n_kv_heads: usize, group: usize, n_threads: usize) -> Vec<Tile> {
    let token_tiles: Vec<(usize, usize, usize)> = seqs
        .iter()
        .enumerate()
        .flat_map(|(s, seq)| {
            (0..seq.query_len).step_by(TILE_TOKENS).map(move |t0| (s, t0, TILE_TOKENS.min(seq.query_len - t0)))
        })
        .collect();
    let n = token_tiles.len() * n_kv_heads;
    let parts = if n > 0 && n < n_threads { n_threads.div_ceil(n).min(group) } else { 1 };
    let mut tiles = Vec::with_capacity(n * parts);
    for &(seq, t0, nt) in &token_tiles {
        for kvh in 0..n_kv_heads {
            for part in 0..parts {
                let (h0, h1) = (part * group / parts, (part + 1) * group / parts);
                if h1 > h0 {
                    tiles.push(Tile { seq, t0, nt, kvh, h0, nh: h1 - h0 });
                }
            }
        }
    }
    // Work of a tile: a dot product and a weighted row per (query, key), plus widening its keys.
    let cost = |t: &Tile| {
        let seq = &seqs[t.seq];
        let n0 = seq.context_len - seq.query_len + t.t0 + 1;
        t.nh * (t.nt * n0 + t.nt * (t.nt - 1) / 2) + 2 * (n0 + t.nt)
    };
    tiles.sort_by_cached_key(|t| Reverse(cost(t)));
    tiles
}

/// One thread's buffers, kept between calls (attention runs once per layer and step).
#[derive(Default)]
struct Scratch {
    /// The tile's queries, `[rows, hd]`, token-major, rounded for the cache type.
    q: Vec<f32>,
    /// Context length of each row.
    n: Vec<usize>,
    /// Keys of the current key block each row takes.
    counts: Vec<usize>,
    /// Scores, then softmax weights, `[rows, n_max rounded up to 8]`.
    s: Vec<f32>,
    /// Where the tile's KV head's key panel of each block starts in the K cache.
    panels: Vec<usize>,
    /// Offset in the V cache of each key's value row for the tile's KV head.
    offs: Vec<usize>,
    /// The tile's outputs, `[rows, hd]`.
    o: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
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
    assert!(
        geo.shape.n_kv_heads > 0 && n_heads.is_multiple_of(geo.shape.n_kv_heads),
        "{n_heads} heads over {} KV heads",
        geo.shape.n_kv_heads
    );
    let group = n_heads / geo.shape.n_kv_heads;
    let tiles = plan_tiles(seqs, geo.shape.n_kv_heads, group, pool.num_threads());
    let out = DisjointSlice::new(out);
    pool.run(tiles.len(), |i| {
        let tile = &tiles[i];
        SCRATCH.with_borrow_mut(|sc| {
            attend_tile(tile, &seqs[tile.seq], q, kc, vc, geo, n_heads, scale, sc, &out);
        });
    });
}

/// One tile: scores for every (query, key), each query's softmax, then the weighted values.
#[allow(clippy::too_many_arguments)]
fn attend_tile<E: KvElem>(
    tile: &Tile,
    seq: &AttentionSeq,
    q: &[f32],
    kc: &[E],
    vc: &[E],
    geo: &PagedKv,
    n_heads: usize,
    scale: f32,
    sc: &mut Scratch,
    out: &DisjointSlice<f32>,
) {
    let shape = geo.shape;
    let (hd, bs) = (shape.head_dim, shape.block_size);
    let group = n_heads / shape.n_kv_heads;
    let first_head = tile.kvh * group + tile.h0;
    let (nt, nh) = (tile.nt, tile.nh);
    let rows = nt * nh;
    // Token i of the tile sees n0 + i keys.
    let n0 = seq.context_len - seq.query_len + tile.t0 + 1;
    let n_max = n0 + nt - 1;
    // Score rows are whole vectors of keys long (the scores kernel writes up to 7 past n_max).
    let stride = n_max.next_multiple_of(8);

    // Queries, row r = (token r / nh, head r % nh), rounded as the cache type wants (per element).
    sc.q.clear();
    for i in 0..nt {
        let t = seq.query_start + tile.t0 + i;
        sc.q.extend_from_slice(&q[(t * n_heads + first_head) * hd..][..nh * hd]);
    }
    E::round_operands(&mut sc.q);
    sc.n.clear();
    sc.n.extend((0..rows).map(|r| n0 + r / nh));
    sc.s.clear();
    sc.s.resize(rows * stride, 0.0);
    // Where this KV head's key panel of each block starts, and each value row.
    sc.panels.clear();
    sc.panels
        .extend(seq.block_table[..n_max.div_ceil(bs)].iter().map(|&b| shape.k_index(b as usize * bs, tile.kvh, 0)));
    let mut offs = std::mem::take(&mut sc.offs);
    offs.clear();
    offs.extend((0..n_max).map(|p| shape.v_index(seq.block_table[p / bs] as usize * bs + p % bs, tile.kvh)));
    let keys = KeysT { base: kc, blocks: &sc.panels, bs, dim: hd };

    // Scores: every row against keys 0..n_max (a row's entries past its own context are unused).
    // The blocks sit anywhere in the cache, so the hardware prefetchers cannot see the next one
    // coming: each key block's panels are fetched while the one before is scored, and the first
    // value rows during the last.
    let panel_len = hd * bs;
    let fetch_keys = |b0: usize, panels: &[usize]| {
        for &at in &panels[b0 / bs..(b0 + KEY_BLOCK).min(n_max).div_ceil(bs)] {
            prefetch(kc, at, panel_len);
        }
    };
    fetch_keys(0, &sc.panels);
    for b0 in (0..n_max).step_by(KEY_BLOCK) {
        let b1 = (b0 + KEY_BLOCK).min(n_max);
        match b1 < n_max {
            true => fetch_keys(b1, &sc.panels),
            false => offs[..n_max.min(KEY_BLOCK)].iter().for_each(|&at| prefetch(vc, at, hd)),
        }
        scores(&sc.q, keys, b0, b1, scale, &mut sc.s, stride);
    }
    // Each row's softmax over its own context.
    softmax_rows(&mut sc.s, stride, &sc.n);
    for (r, &n) in sc.n.iter().enumerate() {
        E::round_operands(&mut sc.s[r * stride..r * stride + n]);
    }
    // Weighted values: each row takes keys 0..n in order, block by block.
    sc.o.clear();
    sc.o.resize(rows * hd, 0.0);
    for b0 in (0..n_max).step_by(KEY_BLOCK) {
        let b1 = (b0 + KEY_BLOCK).min(n_max);
        sc.counts.clear();
        sc.counts.extend(sc.n.iter().map(|&n| n.saturating_sub(b0).min(b1 - b0)));
        offs[b1..(b1 + KEY_BLOCK).min(n_max)].iter().for_each(|&at| prefetch(vc, at, hd));
        let values = Gathered { base: vc, offs: &offs[b0..b1], dim: hd };
        axpy_many_gathered(&sc.s[b0..], stride, &sc.counts, values, &mut sc.o);
    }
    sc.offs = offs;
    for i in 0..nt {
        let t = seq.query_start + tile.t0 + i;
        // SAFETY: the tiles partition the (token, head) pairs of the batch (each query token is in
        // one token tile of its sequence, each head in one share of one group), so this task owns
        // the heads first_head..first_head + nh of token t in `out`.
        let o = unsafe { out.part((t * n_heads + first_head) * hd, nh * hd) };
        o.copy_from_slice(&sc.o[i * nh * hd..(i + 1) * nh * hd]);
    }
}

/// Hints the cache lines of `base[at..at + len]` into L1 (where the address is out of
/// range too: a prefetch never faults).
#[inline]
fn prefetch<E>(base: &[E], at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = base.as_ptr().wrapping_add(at).cast::<i8>();
        for off in (0..len * std::mem::size_of::<E>()).step_by(64) {
            // SAFETY: SSE is part of x86-64; a prefetch reads nothing and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, at, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{dot, softmax};
    use rand::seq::SliceRandom;
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

    /// The softmax of the per-query algorithm: libm's `expf`, a sequential sum.
    fn legacy_softmax(x: &mut [f32]) {
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0f32;
        for s in x.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for s in x.iter_mut() {
            *s /= sum;
        }
    }

    /// The per-query algorithm the tiles replaced: one (token, head) at a time straight from the
    /// cache, a [`crate::scores::score`] per key and a [`KvElem::axpy`] per value row.
    #[allow(clippy::too_many_arguments)]
    fn per_query_reference<E: KvElem>(
        q: &[f32],
        kc: &[E],
        vc: &[E],
        geo: &PagedKv,
        seqs: &[AttentionSeq],
        n_heads: usize,
        scale: f32,
        softmax: fn(&mut [f32]),
        out: &mut [f32],
    ) {
        let shape = geo.shape;
        let (hd, bs) = (shape.head_dim, shape.block_size);
        let group = n_heads / shape.n_kv_heads;
        for seq in seqs {
            for i in 0..seq.query_len {
                let t = seq.query_start + i;
                let n_ctx = seq.context_len - seq.query_len + i + 1;
                for h in 0..n_heads {
                    let mut qr = q[(t * n_heads + h) * hd..][..hd].to_vec();
                    E::round_operands(&mut qr);
                    let slot = |p: usize| seq.block_table[p / bs] as usize * bs + p % bs;
                    let key = |p: usize| move |d: usize| kc[shape.k_index(slot(p), h / group, d)].to_f32();
                    let mut scores: Vec<f32> = (0..n_ctx).map(|p| crate::scores::score(&qr, key(p)) * scale).collect();
                    softmax(&mut scores);
                    E::round_operands(&mut scores);
                    let o = &mut out[(t * n_heads + h) * hd..][..hd];
                    o.fill(0.0);
                    for (p, &w) in scores.iter().enumerate() {
                        E::axpy(w, &vc[shape.v_index(slot(p), h / group)..][..hd], o);
                    }
                }
            }
        }
    }

    /// A KV cache of `n_blocks` blocks filled with random rows (f32 and f16 copies of the same
    /// values, as written by [`write_kv`]), and `n_tok` random queries.
    struct Fixture {
        nh: usize,
        nkv: usize,
        hd: usize,
        bs: usize,
        q: Vec<f32>,
        k32: Vec<f32>,
        v32: Vec<f32>,
        k16: Vec<u16>,
        v16: Vec<u16>,
    }

    impl Fixture {
        fn new(
            rng: &mut rand::rngs::StdRng,
            nh: usize,
            nkv: usize,
            hd: usize,
            bs: usize,
            n_blocks: usize,
            n_tok: usize,
        ) -> Self {
            let kv_dim = nkv * hd;
            let n_slots = n_blocks * bs;
            // Queries large enough for peaked softmaxes, K and V in [-1, 1].
            let q: Vec<f32> = (0..n_tok * nh * hd).map(|_| rng.gen_range(-3.0..3.0)).collect();
            let k: Vec<f32> = (0..n_slots * kv_dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let v: Vec<f32> = (0..n_slots * kv_dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let slots: Vec<usize> = (0..n_slots).collect();
            let (mut k32, mut v32) = (vec![0f32; n_slots * kv_dim], vec![0f32; n_slots * kv_dim]);
            let (mut k16, mut v16) = (vec![0u16; n_slots * kv_dim], vec![0u16; n_slots * kv_dim]);
            let shape = KvShape { block_size: bs, n_kv_heads: nkv, head_dim: hd };
            write_kv(KvMut::F32 { k: &mut k32, v: &mut v32 }, &k, &v, &slots, shape);
            write_kv(KvMut::F16 { k: &mut k16, v: &mut v16 }, &k, &v, &slots, shape);
            Fixture { nh, nkv, hd, bs, q, k32, v32, k16, v16 }
        }

        fn caches(&self) -> [PagedKv<'_>; 2] {
            let shape = KvShape { block_size: self.bs, n_kv_heads: self.nkv, head_dim: self.hd };
            let geo = |data| PagedKv { data, shape };
            [geo(KvRef::F32 { k: &self.k32, v: &self.v32 }), geo(KvRef::F16 { k: &self.k16, v: &self.v16 })]
        }

        fn scale(&self) -> f32 {
            1.0 / (self.hd as f32).sqrt()
        }

        /// Runs the tiled kernel on queries `q[token_offset..]`.
        fn run(&self, pool: &ThreadPool, kv: &PagedKv, seqs: &[AttentionSeq], token_offset: usize) -> Vec<f32> {
            let row = self.nh * self.hd;
            let n_tok: usize = seqs.iter().map(|s| s.query_start + s.query_len).max().unwrap_or(0);
            let mut out = vec![f32::NAN; n_tok * row];
            paged_attention(pool, &self.q[token_offset * row..], kv, seqs, self.nh, self.scale(), &mut out);
            out
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
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
        let shape = KvShape { block_size: bs, n_kv_heads: nkv, head_dim: hd };
        write_kv(KvMut::F32 { k: &mut k32, v: &mut v32 }, &k, &v, &slots, shape);
        write_kv(KvMut::F16 { k: &mut k16, v: &mut v16 }, &k, &v, &slots, shape);
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
            let kv = PagedKv { data, shape };
            let mut got = vec![0f32; 5 * nh * hd];
            paged_attention(&pool, &q[start * nh * hd..], &kv, &seqs, nh, 1.0 / (hd as f32).sqrt(), &mut got);
            for (a, b) in got.iter().zip(&want[start * nh * hd..]) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn tiled_kernel_matches_per_query_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(31);
        // (heads, KV heads, head dim, block size): SmolLM2's GQA, Qwen2.5's group of 7 with a head
        // dim that takes the 8-wide step, and a head dim with a scalar tail.
        for (nh, nkv, hd, bs) in [(9, 3, 64, 16), (14, 2, 24, 16), (4, 1, 20, 5)] {
            // (query_len, context_len) per sequence: decode, short prefill, chunk after a prefix,
            // whole prompt, chunk past a block boundary.
            let shapes: [(usize, usize); 5] = [(1, 37), (3, 3), (17, 80), (64, 64), (64, 130)];
            let blocks_per_seq: Vec<usize> = shapes.iter().map(|&(_, c)| c.div_ceil(bs)).collect();
            let n_blocks: usize = blocks_per_seq.iter().sum::<usize>() + 7;
            let n_tok: usize = shapes.iter().map(|&(l, _)| l).sum();
            let fx = Fixture::new(&mut rng, nh, nkv, hd, bs, n_blocks, n_tok);
            // Scattered, shuffled blocks: no sequence owns a contiguous range.
            let mut ids: Vec<u32> = (0..n_blocks as u32).collect();
            ids.shuffle(&mut rng);
            let mut tables = Vec::new();
            let mut used = 0;
            for &nb in &blocks_per_seq {
                tables.push(ids[used..used + nb].to_vec());
                used += nb;
            }
            let mut seqs = Vec::new();
            let mut start = 0;
            for (&(query_len, context_len), table) in shapes.iter().zip(&tables) {
                seqs.push(AttentionSeq { query_start: start, query_len, context_len, block_table: table });
                start += query_len;
            }
            for threads in [1, 2] {
                let pool = ThreadPool::new(threads);
                for kv in fx.caches() {
                    let got = fx.run(&pool, &kv, &seqs, 0);
                    let f16 = matches!(kv.data, KvRef::F16 { .. });
                    let reference = |softmax: fn(&mut [f32])| {
                        let mut want = vec![0f32; got.len()];
                        let (q, scale) = (&fx.q, fx.scale());
                        match kv.data {
                            KvRef::F32 { k, v } => {
                                per_query_reference(q, k, v, &kv, &seqs, nh, scale, softmax, &mut want)
                            }
                            KvRef::F16 { k, v } => {
                                per_query_reference(q, k, v, &kv, &seqs, nh, scale, softmax, &mut want)
                            }
                        }
                        want
                    };
                    // Against the former algorithm, softmax included: close. Where the bits
                    // differ, a weight an ulp apart can round to the neighbouring f16: 2^-11
                    // relative.
                    let tol = if f16 { 1e-4 } else { 2e-6 };
                    for (i, (a, b)) in got.iter().zip(&reference(legacy_softmax)).enumerate() {
                        assert!((a - b).abs() <= tol, "hd={hd} f16={f16} element {i}: {a} vs {b}");
                    }
                    // With the same softmax, the same operations, so the same bits: always for
                    // f32 caches; for f16 ones when `axpy_f16` has no scalar tail (hd % 8 == 0;
                    // its tail multiplies and adds separately) and its SIMD path runs.
                    let want = reference(softmax);
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!((a - b).abs() <= tol, "hd={hd} f16={f16} element {i}: {a} vs {b}");
                    }
                    if !f16 || (hd % 8 == 0 && crate::quant::common::has_avx2()) {
                        assert_eq!(bits(&got), bits(&want), "hd={hd} f16={f16}: not bit-identical");
                    }
                }
            }
        }
    }

    #[test]
    fn each_token_and_head_is_bit_identical_in_any_tile() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (nh, nkv, hd, bs) in [(9, 3, 64, 16), (14, 2, 24, 8), (4, 1, 20, 5)] {
            let n = 64usize;
            let row = nh * hd;
            // The sequence's blocks, scattered, plus blocks for a second sequence of 40 tokens.
            let (nb, nb2) = (n.div_ceil(bs), 40usize.div_ceil(bs));
            let fx = Fixture::new(&mut rng, nh, nkv, hd, bs, nb + nb2 + 3, n + 8);
            let mut ids: Vec<u32> = (0..(nb + nb2 + 3) as u32).collect();
            ids.shuffle(&mut rng);
            let (table, other) = (&ids[..nb], &ids[nb..nb + nb2]);
            // The cache holds all 64 tokens already; each run queries some of them.
            let seq = |query_start, t0: usize, len: usize| AttentionSeq {
                query_start,
                query_len: len,
                context_len: t0 + len,
                block_table: table,
            };
            for kv in fx.caches() {
                let pool2 = ThreadPool::new(2);
                // One 64-token query.
                let whole = fx.run(&pool2, &kv, &[seq(0, 0, n)], 0);
                let mut runs: Vec<(String, Vec<f32>)> = Vec::new();
                for threads in [1, 2, 3] {
                    let pool = ThreadPool::new(threads);
                    // Chunked prefill 1 + 7 + 20 + 36.
                    let mut chunked = Vec::new();
                    let mut t0 = 0;
                    for len in [1, 7, 20, 36] {
                        chunked.extend(fx.run(&pool, &kv, &[seq(0, t0, len)], t0));
                        t0 += len;
                    }
                    runs.push((format!("chunks 1+7+20+36, {threads} threads"), chunked));
                    // One token at a time (decode, or speculative verification rows of length 1).
                    let mut single = Vec::new();
                    for t in 0..n {
                        single.extend(fx.run(&pool, &kv, &[seq(0, t, 1)], t));
                    }
                    runs.push((format!("one token at a time, {threads} threads"), single));
                    // Chunks 5 + 59 batched with other sequences: a decode and a prefill chunk of
                    // another sequence before it (their queries reuse the fixture's tokens 64..).
                    let mut mixed = Vec::new();
                    for (t0, len) in [(0, 5), (5, 59)] {
                        let mut q = fx.q[n * row..(n + 4) * row].to_vec();
                        q.extend_from_slice(&fx.q[t0 * row..(t0 + len) * row]);
                        let seqs = [
                            AttentionSeq { query_start: 0, query_len: 1, context_len: 40, block_table: other },
                            AttentionSeq { query_start: 1, query_len: 3, context_len: 20, block_table: other },
                            seq(4, t0, len),
                        ];
                        let mut out = vec![f32::NAN; (4 + len) * row];
                        paged_attention(&pool, &q, &kv, &seqs, nh, fx.scale(), &mut out);
                        mixed.extend_from_slice(&out[4 * row..]);
                    }
                    runs.push((format!("chunks 5+59 in a mixed batch, {threads} threads"), mixed));
                }
                for (name, got) in &runs {
                    assert_eq!(got.len(), whole.len(), "{name}");
                    for (i, (a, b)) in got.iter().zip(&whole).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "hd={hd} {name}: token {} head {} differs from the 64-token query: {a} vs {b}",
                            i / row,
                            i % row / hd
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn tiles_cover_every_query_once_and_give_every_thread_work() {
        let table = [0u32; 64];
        let seqs = |shapes: &[(usize, usize)]| {
            let mut start = 0;
            shapes
                .iter()
                .map(|&(query_len, context_len)| {
                    start += query_len;
                    AttentionSeq { query_start: start - query_len, query_len, context_len, block_table: &table }
                })
                .collect::<Vec<_>>()
        };
        for (shapes, threads, min_tiles) in [
            (vec![(1, 100)], 2, 3),
            (vec![(1, 100)], 1, 3),
            (vec![(1, 100)], 4, 4),
            (vec![(512, 512)], 2, 192),
            (vec![(1, 10), (17, 40), (3, 3)], 2, 15),
        ] {
            let seqs = seqs(&shapes);
            let (nkv, group) = (3, 3);
            let tiles = plan_tiles(&seqs, nkv, group, threads);
            assert!(tiles.len() >= min_tiles, "{shapes:?}: {} tiles", tiles.len());
            let mut hits = std::collections::HashMap::new();
            for t in &tiles {
                assert!(t.nt <= TILE_TOKENS && t.nt > 0 && t.nh > 0);
                for i in t.t0..t.t0 + t.nt {
                    for h in t.h0..t.h0 + t.nh {
                        *hits.entry((t.seq, i, t.kvh * group + h)).or_insert(0) += 1;
                    }
                }
            }
            let queries: usize = shapes.iter().map(|&(l, _)| l).sum::<usize>() * nkv * group;
            assert_eq!(hits.len(), queries, "{shapes:?}");
            assert!(hits.values().all(|&c| c == 1), "{shapes:?}");
        }
    }
}
