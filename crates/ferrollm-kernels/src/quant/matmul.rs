//! The matmul driver: activation quantization, tiling and the split across threads.
//!
//! Threads split the weight rows. Within a task, tokens are taken in blocks whose quantized
//! activations fit in L2, and rows in sub-blocks small enough to stay in L1 while every token of
//! the block passes over them, four tokens per kernel call so that each weight block is decoded
//! once per four tokens. For decode (a few tokens) this streams each weight row exactly once;
//! for prefill it keeps the kernels fed from L1 and L2.

use super::act::{ActBlock, BlockQ8A, BlockQ8K};
use super::amx;
use super::float::{self, Float};
use super::x8::{self, Interleaved};
use super::{block32, q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, TokenKind, TokenRun};
use crate::qmatrix::Layout;
use crate::threadpool::DisjointSlice;
use crate::{DType, QMatrix, ThreadPool};
use std::cell::Cell;
use std::thread::LocalKey;

/// Weight bytes per row sub-block when many tokens reuse it: about half of a 32 KiB L1.
const WEIGHT_BLOCK_BYTES: usize = 16 << 10;
/// Activation bytes per token block: an eighth of a 1 MiB L2, leaving room for the task's rows.
const TOKEN_BLOCK_BYTES: usize = 128 << 10;
/// Most tokens dotted against one weight row in one kernel call.
const TILE: usize = 4;

/// `out = x · Wᵀ` (see [`QMatrix::matmul`]): `x` is `[n, cols]`, `out` is `[n, rows]`.
pub fn matmul(pool: &ThreadPool, w: &QMatrix, x: &[f32], n: usize, out: &mut [f32]) {
    matmul_many(pool, &[w], x, n, &mut [out]);
}

/// `outs[i] = x · ws[i]ᵀ` for several matrices that read the same input (Q, K and V; gate and
/// up): one activation quantization and one pool dispatch whose tasks split the rows of all of
/// them. Matrices of different dtypes or widths go in one call per (dtype, width) group. The
/// tokens count as generated ones ([`matmul_many_as`]).
pub fn matmul_many(pool: &ThreadPool, ws: &[&QMatrix], x: &[f32], n: usize, outs: &mut [&mut [f32]]) {
    matmul_many_as(pool, ws, x, n, outs, TokenKind::Generated)
}

/// [`matmul_many`] for a batch whose tokens come in `runs` of one kind each, in order, covering
/// every row of `x`: one call for the whole batch where the kinds take the same kernels (always,
/// but for F16/BF16 on AMX), else one per run (so callers merge neighbouring runs of a kind),
/// each run's rows being contiguous in `x` and in every output.
pub fn matmul_many_runs(pool: &ThreadPool, ws: &[&QMatrix], x: &[f32], runs: &[TokenRun], outs: &mut [&mut [f32]]) {
    let n: usize = runs.iter().map(|r| r.len).sum();
    let float = ws.iter().any(|w| matches!(w.dtype, DType::F16 | DType::BF16));
    let kinds_differ = float && amx::enabled_for(TokenKind::Prompt) != amx::enabled_for(TokenKind::Generated);
    if !kinds_differ || runs.len() < 2 {
        let kind = runs.first().map_or(TokenKind::Generated, |r| r.kind);
        return matmul_many_as(pool, ws, x, n, outs, kind);
    }
    let cols = ws[0].cols;
    assert_eq!(x.len(), n * cols, "matmul input shape");
    let mut t0 = 0;
    for run in runs {
        let t1 = t0 + run.len;
        let mut parts: Vec<&mut [f32]> =
            outs.iter_mut().zip(ws).map(|(o, w)| &mut o[t0 * w.rows..t1 * w.rows]).collect();
        matmul_many_as(pool, ws, &x[t0 * cols..t1 * cols], run.len, &mut parts, run.kind);
        t0 = t1;
    }
}

/// [`matmul_many`] over `n` tokens all of `kind`.
pub fn matmul_many_as(
    pool: &ThreadPool,
    ws: &[&QMatrix],
    x: &[f32],
    n: usize,
    outs: &mut [&mut [f32]],
    kind: TokenKind,
) {
    assert_eq!(ws.len(), outs.len(), "one output per matrix");
    let Some(w0) = ws.first() else { return };
    let same = |a: &QMatrix, b: &QMatrix| a.dtype == b.dtype && a.cols == b.cols && a.layout() == b.layout();
    if ws.iter().any(|w| !same(w, w0)) {
        // One fused call per (dtype, width, layout) group, e.g. Q and K when V has another dtype.
        let mut slots: Vec<Option<&mut [f32]>> = outs.iter_mut().map(|o| Some(&mut **o)).collect();
        for i in 0..ws.len() {
            if slots[i].is_none() {
                continue;
            }
            let group: Vec<usize> = (i..ws.len()).filter(|&j| slots[j].is_some() && same(ws[j], ws[i])).collect();
            let gw: Vec<&QMatrix> = group.iter().map(|&j| ws[j]).collect();
            let mut go: Vec<&mut [f32]> = group.iter().map(|&j| slots[j].take().expect("unvisited")).collect();
            matmul_many_as(pool, &gw, x, n, &mut go, kind);
        }
        return;
    }
    assert_eq!(x.len(), n * w0.cols, "matmul input shape");
    for (w, out) in ws.iter().zip(outs.iter()) {
        assert_eq!(out.len(), n * w.rows, "matmul output shape");
    }
    if n == 0 || ws.iter().all(|w| w.rows == 0) {
        return;
    }
    if w0.cols == 0 {
        outs.iter_mut().for_each(|o| o.fill(0.0));
        return;
    }
    if w0.layout() == Layout::Interleaved8 {
        match w0.dtype {
            DType::Q4_0 => run_x8::<x8::X8Q4_0>(pool, ws, x, n, outs),
            DType::Q4_1 => run_x8::<x8::X8Q4_1>(pool, ws, x, n, outs),
            DType::Q5_0 => run_x8::<x8::X8Q5_0>(pool, ws, x, n, outs),
            DType::Q5_1 => run_x8::<x8::X8Q5_1>(pool, ws, x, n, outs),
            DType::Q8_0 => run_x8::<super::x8q8::X8Q8_0>(pool, ws, x, n, outs),
            DType::Q4K => run_x8::<super::x8q45k::X8Q4K>(pool, ws, x, n, outs),
            DType::Q5K => run_x8::<super::x8q45k::X8Q5K>(pool, ws, x, n, outs),
            DType::Q6K => run_x8::<super::x8q6k::X8Q6K>(pool, ws, x, n, outs),
            other => unreachable!("{} has no interleaved layout", other.name()),
        }
        return;
    }
    match w0.dtype {
        DType::F32 => run_float(pool, ws, x, n, outs, Float::F32),
        DType::F16 if amx::enabled_for(kind) => run_amx(pool, ws, x, n, outs, Float::F16),
        DType::BF16 if amx::enabled_for(kind) => run_amx(pool, ws, x, n, outs, Float::BF16),
        DType::F16 => run_float(pool, ws, x, n, outs, Float::F16),
        DType::BF16 => run_float(pool, ws, x, n, outs, Float::BF16),
        DType::Q4_0 => run::<BlockQ8A, _>(pool, ws, x, n, outs, block32::dot_rows::<q4_0::BlockQ4_0>),
        DType::Q4_1 => run::<BlockQ8A, _>(pool, ws, x, n, outs, block32::dot_rows::<q4_1::BlockQ4_1>),
        DType::Q5_0 => run::<BlockQ8A, _>(pool, ws, x, n, outs, block32::dot_rows::<q5_0::BlockQ5_0>),
        DType::Q5_1 => run::<BlockQ8A, _>(pool, ws, x, n, outs, block32::dot_rows::<q5_1::BlockQ5_1>),
        DType::Q8_0 => run::<BlockQ8A, _>(pool, ws, x, n, outs, q8_0::dot_rows),
        DType::Q2K => run::<BlockQ8K, _>(pool, ws, x, n, outs, q2_k::dot_rows),
        DType::Q3K => run::<BlockQ8K, _>(pool, ws, x, n, outs, q3_k::dot_rows),
        DType::Q4K => run::<BlockQ8K, _>(pool, ws, x, n, outs, q4_k::dot_rows),
        DType::Q5K => run::<BlockQ8K, _>(pool, ws, x, n, outs, q5_k::dot_rows),
        DType::Q6K => run::<BlockQ8K, _>(pool, ws, x, n, outs, q6_k::dot_rows),
    }
}

/// Quantizes `x` to activation blocks `A`, then computes every output with the row kernel
/// `dot_rows(weight rows, row bytes, up to TILE activation rows, outputs[row * k + token])`.
/// `ws` share dtype and width; tasks take runs of rows of one matrix each.
fn run<A, D>(pool: &ThreadPool, ws: &[&QMatrix], x: &[f32], n: usize, outs: &mut [&mut [f32]], dot_rows: D)
where
    A: ActBlock,
    D: Fn(&[u8], usize, &[&[A]], &mut [f32]) + Sync,
{
    let cols = ws[0].cols;
    let apr = cols / A::ELEMS; // activation blocks per token
    let acts = quantize_acts::<A>(pool, x, n, cols, apr);

    let (chunk, tasks) = split(pool, ws.iter().map(|w| w.rows), 4);
    let rb = ws[0].row_bytes();
    // Few tokens: one kernel call per task. Many: L1-sized row sub-blocks that all tokens visit.
    let sub = if n <= TILE { chunk } else { sub_block_rows(rb, chunk) };
    let token_block = token_block(apr * std::mem::size_of::<A>());
    let outs: Vec<DisjointSlice<f32>> = outs.iter_mut().map(|o| DisjointSlice::new(o)).collect();
    pool.run(tasks.len(), |task| {
        let (m, r0, r1) = tasks[task];
        let (weights, rows, out) = (ws[m].bytes(), ws[m].rows, &outs[m]);
        let mut tmp = vec![0f32; sub.min(r1 - r0) * TILE];
        for tb in (0..n).step_by(token_block) {
            let tb_end = (tb + token_block).min(n);
            for s0 in (r0..r1).step_by(sub) {
                let s1 = (s0 + sub).min(r1);
                let nr = s1 - s0;
                let bytes = &weights[s0 * rb..s1 * rb];
                for t in (tb..tb_end).step_by(TILE) {
                    let k = (tb_end - t).min(TILE);
                    let a: [&[A]; TILE] = std::array::from_fn(|j| &acts[(t + j.min(k - 1)) * apr..][..apr]);
                    dot_rows(bytes, rb, &a[..k], &mut tmp[..nr * k]);
                    for j in 0..k {
                        // SAFETY: this task alone computes rows r0..r1 (so s0..s1) of matrix m for
                        // every token; the run `(t + j)·rows + s0..+nr` of its output is borrowed
                        // only for this loop.
                        let o = unsafe { out.part((t + j) * rows + s0, nr) };
                        for (i, v) in o.iter_mut().enumerate() {
                            *v = tmp[i * k + j];
                        }
                    }
                }
            }
        }
    });
}

/// [`run`] for float weights: the activations are used as they are, and the kernels write each
/// token's outputs in place rather than through a row-major scratch tile.
fn run_float(pool: &ThreadPool, ws: &[&QMatrix], x: &[f32], n: usize, outs: &mut [&mut [f32]], kind: Float) {
    let cols = ws[0].cols;
    let main = cols / 8 * 8;
    let panel_tokens = float::panel_tokens();
    let panel_path = n > TILE && main > 0 && float::panel_pays(n);
    // The panel path splits rows in runs of 16, the AVX2 panel kernel's tiles.
    let (chunk, tasks) = split(pool, ws.iter().map(|w| w.rows), if panel_path { 16 } else { 4 });
    let rb = ws[0].row_bytes();
    let sub = match (n <= TILE, panel_path) {
        (true, _) => chunk,
        (false, true) => float::PANEL_ROWS.min(chunk),
        (false, false) => sub_block_rows(rb, chunk),
    };
    // The panel path widens each sub-block once per token block, so it takes several blocks'
    // tokens at once ([`float::panel_token_blocks`]).
    let panel_blocks = if panel_path { float::panel_token_blocks() } else { 1 };
    let mut token_block = token_block(cols * std::mem::size_of::<f32>()) * panel_blocks;
    if panel_path {
        token_block -= token_block % panel_tokens;
    }
    // On the panel path each token block starts a group of packed activations.
    assert!(!panel_path || token_block.is_multiple_of(panel_tokens), "token blocks of whole groups");
    let packed_acts = panel_path.then(|| pack_float_acts(pool, x, n, cols));
    let packed = packed_acts.as_deref().unwrap_or(&[]);
    let outs: Vec<DisjointSlice<f32>> = outs.iter_mut().map(|o| DisjointSlice::new(o)).collect();
    pool.run(tasks.len(), |task| {
        let (m, r0, r1) = tasks[task];
        let (weights, rows, out) = (ws[m].bytes(), ws[m].rows, &outs[m]);
        PANEL.with_borrow_mut(|panel| {
            for tb in (0..n).step_by(token_block) {
                let tb_end = (tb + token_block).min(n);
                for s0 in (r0..r1).step_by(sub) {
                    let s1 = (s0 + sub).min(r1);
                    let bytes = &weights[s0 * rb..s1 * rb];
                    // Prefill widens the sub-block once for the token block ([`float::panel_pays`]).
                    let panel_rows = match panel_path && float::panel_pays(tb_end - tb) {
                        true => float::pack_panel(kind, bytes, rb, panel),
                        false => None,
                    };
                    let tile = if panel_rows.is_some() { panel_tokens } else { TILE };
                    for t in (tb..tb_end).step_by(tile) {
                        let k = (tb_end - t).min(tile);
                        let a: [&[f32]; float::PANEL_TOKENS] =
                            std::array::from_fn(|j| &x[(t + j.min(k - 1)) * cols..][..cols]);
                        let mut o: [&mut [f32]; float::PANEL_TOKENS] = std::array::from_fn(|j| match j < k {
                            // SAFETY: this task alone computes rows r0..r1 (so s0..s1) of matrix m for
                            // every token; the runs `(t + j)·rows + s0..s1` of distinct tokens are
                            // disjoint and borrowed only for this call.
                            true => unsafe { out.part((t + j) * rows + s0, s1 - s0) },
                            false => &mut [],
                        });
                        if let Some(panel) = panel_rows {
                            // Token t starts a group of `tile` (token blocks are multiples).
                            let acts = &packed[t * main..][..k * main];
                            float::dot_panel(kind, panel, bytes, rb, acts, &a[..k], &mut o[..k]);
                        } else {
                            float::dot_rows(kind, bytes, rb, &a[..k], &mut o[..k]);
                        }
                    }
                }
            }
        });
    });
}

/// Row blocks of 16 that a task packs at a time on the AMX path: 64 rows of bf16 parts are
/// 147-393 KiB at 576-1536 columns, in L2 while every token group passes over them.
const AMX_SUB_BLOCKS: usize = 4;

/// [`run`] for F16 and BF16 weights on AMX ([`amx`]): the activations are split and laid out
/// once per call, each task's rows are split and laid out a sub-block at a time, and the tile
/// kernel writes each result tile's outputs in place. Every token count takes this path, so a
/// token's outputs are the same bits alone or in a batch.
pub(super) fn run_amx(pool: &ThreadPool, ws: &[&QMatrix], x: &[f32], n: usize, outs: &mut [&mut [f32]], kind: Float) {
    if n == 0 {
        return;
    }
    let cols = ws[0].cols;
    let (steps, rb) = (amx::steps(cols), ws[0].row_bytes());
    let (_, tasks) = split(pool, ws.iter().map(|w| w.rows.div_ceil(amx::TILE)), 1);
    if n <= amx::TILE {
        return run_amx_few(pool, ws, x, n, outs, kind, &tasks);
    }
    let acts = pack_amx_acts(pool, x, n, cols);
    let groups = n.div_ceil(amx::TILE);
    amx_sub_blocks(pool, ws, outs, &tasks, |packed, bytes, (r0, r1), blocks, store| {
        let len = amx::packed_weights_len(kind, r1 - r0, cols);
        if packed.len() < len {
            packed.resize(len, 0);
        }
        amx::pack_weights(kind, bytes, rb, &mut packed[..len]);
        amx::dot_tiles(kind, &packed[..len], blocks, &acts, groups, steps, |b, g, tile| {
            for (k, t) in (g * amx::TILE..n.min(g * amx::TILE + amx::TILE)).enumerate() {
                store(t, r0 + b * amx::TILE, &mut |o: &mut [f32]| o.copy_from_slice(&tile[k][..o.len()]));
            }
        });
    });
}

/// [`run_amx`] for up to 16 tokens (decode): weights split row-major, no transpose, a
/// sub-block at a time against one pair-layout group ([`amx::dot_rows_few`], the same bits).
fn run_amx_few(
    pool: &ThreadPool,
    ws: &[&QMatrix],
    x: &[f32],
    n: usize,
    outs: &mut [&mut [f32]],
    kind: Float,
    tasks: &[(usize, usize, usize)],
) {
    let cols = ws[0].cols;
    let (steps, rb, width) = (amx::steps(cols), ws[0].row_bytes(), amx::split_width(cols));
    let mut acts = Scratch::take(&AMX_ACTS);
    acts.len = amx::packed_acts_len(n, cols);
    if acts.buf.len() < acts.len {
        acts.buf.resize(acts.len, 0);
    }
    amx::pack_acts_pairs(x, cols, n, &mut acts.buf[..acts.len]);
    amx_sub_blocks(pool, ws, outs, tasks, |packed, bytes, (r0, _), blocks, store| {
        let len = blocks * amx::TILE * width;
        if packed.len() < 2 * len {
            packed.resize(2 * len, 0);
        }
        let (hi, lo) = packed[..2 * len].split_at_mut(len);
        let lo = if kind == Float::F16 { lo } else { &mut [][..] };
        amx::split_weights(kind, bytes, rb, hi, lo);
        amx::dot_rows_few(kind, hi, lo, blocks, &acts, steps, |b, tile| {
            for t in 0..n {
                store(t, r0 + b * amx::TILE, &mut |o: &mut [f32]| {
                    for (o, row) in o.iter_mut().zip(tile) {
                        *o = row[t];
                    }
                });
            }
        });
    });
}

/// Runs `body(packed, bytes, (r0, r1), blocks, store)` for each sub-block of
/// [`AMX_SUB_BLOCKS`] row blocks of each task's rows: `bytes` are rows `r0..r1` of the
/// task's matrix, `packed` the thread's spare, and `store(t, r, write)` hands `write` token
/// `t`'s outputs from row `r` to the sub-block's end (at most 16).
fn amx_sub_blocks<B>(
    pool: &ThreadPool,
    ws: &[&QMatrix],
    outs: &mut [&mut [f32]],
    tasks: &[(usize, usize, usize)],
    body: B,
) where
    B: Fn(&mut Vec<u16>, &[u8], (usize, usize), usize, &dyn Fn(usize, usize, &mut dyn FnMut(&mut [f32]))) + Sync,
{
    let rb = ws[0].row_bytes();
    let outs: Vec<DisjointSlice<f32>> = outs.iter_mut().map(|o| DisjointSlice::new(o)).collect();
    pool.run(tasks.len(), |task| {
        let (m, b0, b1) = tasks[task];
        let (weights, rows, out) = (ws[m].bytes(), ws[m].rows, &outs[m]);
        AMX_WEIGHTS.with_borrow_mut(|packed| {
            for s0 in (b0..b1).step_by(AMX_SUB_BLOCKS) {
                let s1 = (s0 + AMX_SUB_BLOCKS).min(b1);
                let (r0, r1) = (s0 * amx::TILE, (s1 * amx::TILE).min(rows));
                let store = |t: usize, r: usize, write: &mut dyn FnMut(&mut [f32])| {
                    // SAFETY: this task alone computes rows r0..r1 of matrix m for every token;
                    // the run `t·rows + r..` of at most 16 rows ends within them.
                    write(unsafe { out.part(t * rows + r, (r1 - r).min(amx::TILE)) })
                };
                body(packed, &weights[r0 * rb..r1 * rb], (r0, r1), s1 - s0, &store);
            }
        });
    });
}

/// Every token's activations split and laid out for the AMX kernel ([`amx::pack_acts`]), spread
/// over the pool by token groups when large.
fn pack_amx_acts(pool: &ThreadPool, x: &[f32], n: usize, cols: usize) -> Scratch<u16> {
    let mut buf = Scratch::take(&AMX_ACTS);
    buf.len = amx::packed_acts_len(n, cols);
    if buf.buf.len() < buf.len {
        buf.buf.resize(buf.len, 0);
    }
    let groups = n.div_ceil(amx::TILE);
    let per_group = buf.len / groups;
    let shared = DisjointSlice::new(&mut buf.buf[..buf.len]);
    let per_task = units_per_task(pool, groups, n * cols);
    pool.run(groups.div_ceil(per_task), |task| {
        let (g0, g1) = (task * per_task, ((task + 1) * per_task).min(groups));
        let (t0, t1) = (g0 * amx::TILE, (g1 * amx::TILE).min(n));
        // SAFETY: groups g0..g1 belong to this task alone.
        let out = unsafe { shared.part(g0 * per_group, (g1 - g0) * per_group) };
        amx::pack_acts(x, cols, t0, t1, out);
    });
    buf
}

/// Every token's activations laid out for the panel kernel ([`float::pack_acts`]) in groups of
/// [`float::panel_tokens`], the last group short, from a 64-byte boundary
/// ([`float::aligned_start`]); spread over the pool when large.
fn pack_float_acts(pool: &ThreadPool, x: &[f32], n: usize, cols: usize) -> Scratch<f32> {
    let (main, group) = (cols / 8 * 8, float::panel_tokens());
    let mut buf = Scratch::take(&PACKED_ACTS);
    buf.start = float::aligned_start(&mut buf.buf, n * main);
    buf.len = n * main;
    let shared = DisjointSlice::new(&mut buf.buf[buf.start..][..buf.len]);
    let groups = n.div_ceil(group);
    let per_task = units_per_task(pool, groups, n * cols);
    pool.run(groups.div_ceil(per_task), |task| {
        for g in task * per_task..((task + 1) * per_task).min(groups) {
            let (t0, t1) = (g * group, (g * group + group).min(n));
            let acts: [&[f32]; float::PANEL_TOKENS] =
                std::array::from_fn(|j| &x[(t0 + j).min(t1 - 1) * cols..][..cols]);
            // SAFETY: group g's packed activations belong to this task alone.
            float::pack_acts(&acts[..t1 - t0], unsafe { shared.part(t0 * main, (t1 - t0) * main) });
        }
    });
    buf
}

/// A buffer taken from a thread's spare ([`Scratch::take`]), given back when dropped: a
/// prefill's activations are hundreds of KiB, and a fresh allocation per matmul came from the
/// kernel as zeroed pages, a page fault per 4 KiB. Its contents are the `len` elements from
/// `start` (the buffer may hold more, and an aligned run may start past element 0).
struct Scratch<T: 'static> {
    buf: Vec<T>,
    start: usize,
    len: usize,
    key: &'static LocalKey<Cell<Vec<T>>>,
}

impl<T> Scratch<T> {
    /// A nested matmul on this thread finds the buffer taken and starts an empty one.
    fn take(key: &'static LocalKey<Cell<Vec<T>>>) -> Self {
        Scratch { buf: key.take(), start: 0, len: 0, key }
    }
}

impl<T> Drop for Scratch<T> {
    fn drop(&mut self) {
        self.key.set(std::mem::take(&mut self.buf));
    }
}

thread_local! {
    /// The calling thread's spare for [`pack_float_acts`].
    static PACKED_ACTS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// The calling thread's spare for [`pack_amx_acts`] and decode's activations.
    static AMX_ACTS: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
    /// Each thread's packed weights on the AMX path, kept between calls as [`PANEL`] is.
    static AMX_WEIGHTS: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each thread's widened weights for the AVX-512 float path, kept between calls: a fresh
    /// buffer per task cost page faults on every matmul. A task borrows it only around kernel
    /// calls, which never start a matmul, so the borrow cannot nest.
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`run`] for matrices in [`Layout::Interleaved8`]: tasks take runs of 8-row groups; within a
/// task, tokens go in L2-sized blocks, and each group (a few KiB, so it stays in L1) meets every
/// token of the block, four per kernel call, writing eight outputs per token directly.
fn run_x8<B: Interleaved>(pool: &ThreadPool, ws: &[&QMatrix], x: &[f32], n: usize, outs: &mut [&mut [f32]]) {
    let cols = ws[0].cols;
    let apr = cols / <B::Act as ActBlock>::ELEMS;
    let acts = quantize_acts::<B::Act>(pool, x, n, cols, apr);
    let group_bytes = apr * B::BYTES;
    // Prefill visits groups two at a time where the CPU has a kernel for that (AVX-512); runs
    // of an even number of groups then leave no group to the one-group kernel.
    let step = if n > 1 && B::has_pair_kernel() { 2 } else { 1 };
    let (_, tasks) = split(pool, ws.iter().map(|w| w.rows / x8::ROWS), step);
    let token_block = token_block(apr * std::mem::size_of::<B::Act>());
    let outs: Vec<DisjointSlice<f32>> = outs.iter_mut().map(|o| DisjointSlice::new(o)).collect();
    pool.run(tasks.len(), |task| {
        let (m, g0, g1) = tasks[task];
        let (weights, rows, out) = (ws[m].bytes(), ws[m].rows, &outs[m]);
        let mut tile = [[0f32; x8::ROWS]; x8::MAX_TOKENS_PER_CALL];
        let mut pair = [[0f32; 2 * x8::ROWS]; TILE];
        // Pair calls take up to TILE tokens; single groups what their kernel takes.
        let per_call = if step == 2 { TILE } else { B::tokens_per_call() };
        let group = |g: usize| -> &[B] { super::common::as_blocks(&weights[g * group_bytes..][..group_bytes]) };
        for tb in (0..n).step_by(token_block) {
            let tb_end = (tb + token_block).min(n);
            for g in (g0..g1).step_by(step) {
                let width = if g + 1 < g1 { step } else { 1 };
                for t in (tb..tb_end).step_by(per_call) {
                    let k = (tb_end - t).min(per_call);
                    let a: [&[B::Act]; x8::MAX_TOKENS_PER_CALL] =
                        std::array::from_fn(|j| &acts[(t + j.min(k - 1)) * apr..][..apr]);
                    let first = t * rows + g * x8::ROWS;
                    // SAFETY (both): this task alone computes groups g0..g1 (rows 8·g0..8·g1) of
                    // matrix m for every token, and the call covers groups g..g + width.
                    if width == 2 {
                        B::dot_group_pair(group(g), group(g + 1), &a[..k], &mut pair[..k]);
                        unsafe { store_tokens(out, &pair[..k], first, rows) };
                    } else {
                        B::dot_group(group(g), &a[..k], &mut tile[..k]);
                        unsafe { store_tokens(out, &tile[..k], first, rows) };
                    }
                }
            }
        }
    });
}

/// Copies each token's `W` outputs of a tile, token `j`'s to `out[first + j·rows..][..W]`.
///
/// # Safety
/// No other thread may access those runs of `out` during the call.
unsafe fn store_tokens<const W: usize>(out: &DisjointSlice<f32>, tile: &[[f32; W]], first: usize, rows: usize) {
    for (j, row) in tile.iter().enumerate() {
        // SAFETY: the caller owns this run.
        unsafe { out.part(first + j * rows, W) }.copy_from_slice(row);
    }
}

/// Splits the units (rows or row groups) of each matrix into runs for the pool's tasks: about
/// eight per thread, each a multiple of `min_units` long (but a matrix's last). Returns the run
/// length and the tasks as (matrix, first unit, end unit); a run never spans two matrices.
fn split(
    pool: &ThreadPool,
    units: impl Iterator<Item = usize> + Clone,
    min_units: usize,
) -> (usize, Vec<(usize, usize, usize)>) {
    let total: usize = units.clone().sum();
    let threads = pool.num_threads();
    let n_tasks = if threads == 1 { 1 } else { (threads * 8).min(total.div_ceil(min_units)).max(1) };
    let chunk = total.div_ceil(n_tasks).max(1).next_multiple_of(min_units);
    let tasks = units
        .enumerate()
        .flat_map(|(m, u)| (0..u).step_by(chunk).map(move |u0| (m, u0, (u0 + chunk).min(u))))
        .collect();
    (chunk, tasks)
}

/// Rows of an L1-sized sub-block that every token of a block visits (prefill), in whole
/// multiples of 12 so that the float kernels' register tiles of 3 or 4 rows divide them.
fn sub_block_rows(row_bytes: usize, chunk: usize) -> usize {
    ((WEIGHT_BLOCK_BYTES / row_bytes).max(12) / 12 * 12).clamp(1, chunk)
}

/// Tokens per block: as many as keep their quantized activations (`act_bytes` each) within
/// [`TOKEN_BLOCK_BYTES`], in whole tiles.
fn token_block(act_bytes: usize) -> usize {
    (TOKEN_BLOCK_BYTES / act_bytes.max(1)).max(TILE) / TILE * TILE
}

impl<T> std::ops::Deref for Scratch<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.start..][..self.len]
    }
}

/// Units per task for a pass over `units` units (`elems` elements in all) before a matmul: all
/// of them in one task, which the calling thread runs, when the pass is small; else about four
/// tasks per thread.
fn units_per_task(pool: &ThreadPool, units: usize, elems: usize) -> usize {
    if elems < 1 << 16 || pool.num_threads() == 1 {
        units.max(1)
    } else {
        units.div_ceil(pool.num_threads() * 4)
    }
}

/// Quantizes each token's row into this thread's spare buffer ([`ActBlock::scratch`]); spread
/// over the pool when there is enough of it.
fn quantize_acts<A: ActBlock>(pool: &ThreadPool, x: &[f32], n: usize, cols: usize, apr: usize) -> Scratch<A> {
    let mut acts = Scratch::take(A::scratch());
    acts.buf.resize(n * apr, A::default());
    acts.len = n * apr;
    let per_task = units_per_task(pool, n, n * cols);
    let shared = DisjointSlice::new(&mut acts.buf);
    pool.run(n.div_ceil(per_task), |task| {
        let (t0, t1) = (task * per_task, ((task + 1) * per_task).min(n));
        for t in t0..t1 {
            // SAFETY: token t's activation blocks belong to this task alone.
            let a = unsafe { shared.part(t * apr, apr) };
            A::quantize(&x[t * cols..(t + 1) * cols], a);
        }
    });
    acts
}
