//! GEMV / small-batch matmul throughput at SmolLM2-135M and Qwen2.5-0.5B shapes.
//!
//! `cargo run --release -p ferrollm-kernels --example gemv_bench [-- FILTER...]`
//!
//! Each matrix is replicated until the copies exceed the L3 cache and the calls cycle through
//! them, so decode numbers are for weights streamed from DRAM, as in a real decode step. Times
//! are medians over many calls, except the `hot` section, which reports the fastest call as a
//! measure of kernel speed that holds up on a busy machine; `tile` times one float kernel call
//! with everything in L1, and `qtile` the interleaved quantized kernels on a block of rows in L2
//! (each 8-row group in L1 for 16 tokens). Arguments pick sections (`pool`, `tile`, `qtile`,
//! `membw`, `hot`, `gemv`, `prefill`, `model`) and dtypes (`Q8_0`, `Q4_K`, ...); none means all.

use std::time::{Duration, Instant};

use ferrollm_kernels::quant;
use ferrollm_kernels::{Bytes, DType, QMatrix, ThreadPool};

const DTYPES: [DType; 13] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q6K,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q5K,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q4K,
    DType::Q3K,
    DType::Q2K,
];

/// (label, cols, rows)
const GEMV_SHAPES: [(&str, usize, usize); 8] = [
    ("smol 576->1536", 576, 1536),
    ("smol 1536->576", 1536, 576),
    ("smol 576->576", 576, 576),
    ("smol 576->192", 576, 192),
    ("smol 576->49152", 576, 49152),
    ("qwen 896->4864", 896, 4864),
    ("qwen 4864->896", 4864, 896),
    ("qwen 896->151936", 896, 151936),
];

/// Enough copies of a matrix to fall out of the 32 MiB L3 between uses.
const STREAM_BYTES: usize = 96 << 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Offsets of f16 scale fields per block, set to sane values after filling with random bytes.
fn f16_fields(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q4K | DType::Q5K => &[0, 2],
        DType::Q2K => &[80, 82],
        DType::Q3K => &[108],
        DType::Q6K => &[208],
        DType::F32 | DType::F16 | DType::BF16 => &[],
    }
}

/// A random matrix built straight from bytes (quantizing large f32 matrices is slow).
fn random_matrix(rng: &mut Rng, dtype: DType, rows: usize, cols: usize) -> QMatrix {
    let n = dtype.row_bytes(cols) * rows;
    let bytes: Vec<u8> = match dtype {
        DType::F32 | DType::F16 | DType::BF16 => {
            let row: Vec<f32> = (0..cols).map(|_| rng.f32()).collect();
            let row = quant::quantize_row(dtype, &row);
            row.iter().copied().cycle().take(n).collect()
        }
        _ => {
            let mut b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            for block in b.chunks_exact_mut(dtype.type_size()) {
                for &off in f16_fields(dtype) {
                    block[off..off + 2].copy_from_slice(&half::f16::from_f32(rng.f32() * 0.05).to_bits().to_le_bytes());
                }
            }
            b
        }
    };
    // As a model loads it (FERROLLM_NO_REPACK=1 keeps the row layout, for comparisons).
    QMatrix::new(dtype, rows, cols, Bytes::from_vec(bytes)).unwrap().prepared_for_matmul()
}

/// Fastest seconds per call of `f`: on a shared machine, the calls that were not preempted.
fn min_time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

/// Nanoseconds this thread has run on a CPU (Linux schedstat), or `None` where unavailable.
fn cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
}

/// Mean on-CPU seconds per call of `f` on this thread: time lost to preemption on a busy
/// machine does not count. Falls back to wall time.
fn cpu_time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let (c0, t0) = (cpu_ns(), Instant::now());
    for _ in 0..reps {
        f();
    }
    match (c0, cpu_ns()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 * 1e-9 / reps as f64,
        _ => t0.elapsed().as_secs_f64() / reps as f64,
    }
}

/// Median seconds per call of `f`, over at least `min_reps` calls and ~`budget` of time.
fn median_time(budget: Duration, min_reps: usize, mut f: impl FnMut(usize)) -> f64 {
    for i in 0..3 {
        f(i);
    }
    let mut times = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while times.len() < min_reps || (start.elapsed() < budget && times.len() < 100_000) {
        let t = Instant::now();
        f(i);
        times.push(t.elapsed().as_secs_f64());
        i += 1;
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

const SECTIONS: [&str; 10] = ["pool", "membw", "hot", "tile", "attn", "panel", "qtile", "gemv", "prefill", "model"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sections: Vec<&str> = SECTIONS.iter().copied().filter(|s| args.iter().any(|a| a == s)).collect();
    let section = |name: &str| sections.is_empty() || sections.contains(&name);
    let named: Vec<DType> =
        DTYPES.iter().copied().filter(|d| args.iter().any(|a| a.eq_ignore_ascii_case(d.name()))).collect();
    let dtypes: Vec<DType> = if named.is_empty() { DTYPES.to_vec() } else { named };
    let pools = [ThreadPool::new(1), ThreadPool::new(2)];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    if section("pool") {
        for pool in &pools {
            let t = median_time(Duration::from_millis(300), 1000, |_| pool.run(pool.num_threads(), |_| {}));
            println!("pool overhead, {} thread(s), empty run: {:.2} us", pool.num_threads(), t * 1e6);
        }
        // A job whose tasks take ~2 us each, so the worker must wake and join for a speedup;
        // back-to-back calls, as in a decode step.
        let spin = |us: f64| {
            let t = Instant::now();
            while t.elapsed().as_secs_f64() < us * 1e-6 {
                std::hint::spin_loop();
            }
        };
        for pool in &pools {
            let n = pool.num_threads();
            let t = median_time(Duration::from_millis(300), 1000, |_| pool.run(4 * n, |_| spin(2.0)));
            let me = std::thread::current().id();
            let helped = std::sync::atomic::AtomicUsize::new(0);
            for _ in 0..1000 {
                pool.run(4 * n, |_| {
                    spin(2.0);
                    if std::thread::current().id() != me {
                        helped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
            println!(
                "pool, {n} thread(s), {} tasks of 2 us back to back: {:.2} us (ideal {:.0} us); {:.0}% of tasks ran on workers",
                4 * n,
                t * 1e6,
                8.0,
                helped.into_inner() as f64 / (4000 * n) as f64 * 100.0
            );
        }
    }

    if section("membw") {
        // The roofline for decode: plain streaming reads of a buffer far larger than L3.
        let buf: Vec<u64> = (0..(256usize << 20) / 8).map(|i| i as u64).collect();
        for pool in &pools {
            let parts = pool.num_threads() * 8;
            let len = buf.len() / parts;
            let sink = std::sync::atomic::AtomicU64::new(0);
            let t = median_time(Duration::from_millis(500), 5, |_| {
                pool.run(parts, |p| {
                    let s = buf[p * len..(p + 1) * len].iter().fold(0u64, |a, &v| a.wrapping_add(v));
                    sink.fetch_add(s, std::sync::atomic::Ordering::Relaxed);
                })
            });
            println!(
                "memory read bandwidth, {} thread(s): {:.1} GB/s",
                pool.num_threads(),
                (buf.len() * 8) as f64 / t / 1e9
            );
        }
    }

    if section("hot") {
        println!("\nKernel speed, 1 thread, weights hot in L2 (256 x 1536); fastest of many calls");
        println!(
            "{:<6} {:>14} {:>14} {:>14} {:>14}",
            "dtype", "n=1 GB/s", "n=1 GFLOP/s", "n=4 GFLOP/s", "n=64 GFLOP/s"
        );
        for &dtype in &dtypes {
            let (rows, cols) = (256, 1536);
            let w = random_matrix(&mut rng, dtype, rows, cols);
            print!("{:<6}", dtype.name());
            for (i, n) in [1usize, 1, 4, 64, 512].into_iter().enumerate() {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
                let mut out = vec![0f32; n * rows];
                let t = match n {
                    512 => cpu_time(8, || w.matmul(&pools[0], &x, n, &mut out)),
                    64 => min_time(20, || w.matmul(&pools[0], &x, n, &mut out)),
                    _ => min_time(200, || w.matmul(&pools[0], &x, n, &mut out)),
                };
                if i == 0 {
                    print!(" {:>14.1}", w.bytes().len() as f64 / t / 1e9);
                } else {
                    print!(" {:>14.1}", 2.0 * (rows * cols * n) as f64 / t / 1e9);
                }
            }
            println!();
        }
    }

    if section("gemv") {
        println!("\nGEMV (n = 1), weights streamed from DRAM; GB/s of weight bytes, median");
        print!("{:<7}", "dtype");
        for (label, _, _) in GEMV_SHAPES {
            print!(" {:>18}", label);
        }
        println!();
        for &dtype in &dtypes {
            for pool in &pools {
                print!("{:<5}x{}", dtype.name(), pool.num_threads());
                for (_, cols, rows) in GEMV_SHAPES {
                    if cols % dtype.block_size() != 0 {
                        print!(" {:>18}", "-");
                        continue;
                    }
                    let one = random_matrix(&mut rng, dtype, rows, cols);
                    let bytes = one.bytes().len();
                    let copies = STREAM_BYTES.div_ceil(bytes).clamp(1, 64);
                    let mats: Vec<QMatrix> = (0..copies)
                        .map(|i| if i == 0 { one.clone() } else { random_matrix(&mut rng, dtype, rows, cols) })
                        .collect();
                    let x: Vec<f32> = (0..cols).map(|_| rng.f32()).collect();
                    let mut out = vec![0f32; rows];
                    let t =
                        median_time(Duration::from_millis(250), 10, |i| mats[i % copies].matmul(pool, &x, 1, &mut out));
                    print!(" {:>9.1} ({:>5.0}us)", bytes as f64 / t / 1e9, t * 1e6);
                }
                println!();
            }
        }
    }

    if section("tile") {
        // The float kernel alone, everything in L1: one call of 12 rows x 4 tokens, repeated.
        println!("\nFloat kernel, 1 thread, 12 rows x 4 tokens in L1; fastest of many calls");
        for kind in [quant::float::Float::F32, quant::float::Float::F16] {
            for cols in [576usize, 1536] {
                let rb = cols * kind.bytes();
                let bytes: Vec<u8> = (0..12 * cols)
                    .flat_map(|_| {
                        let v = rng.f32() - 0.5;
                        match kind {
                            quant::float::Float::F32 => v.to_le_bytes().to_vec(),
                            _ => half::f16::from_f32(v).to_bits().to_le_bytes().to_vec(),
                        }
                    })
                    .collect();
                let xs: Vec<Vec<f32>> = (0..4).map(|_| (0..cols).map(|_| rng.f32()).collect()).collect();
                let acts: Vec<&[f32]> = xs.iter().map(|v| v.as_slice()).collect();
                let mut out = [0f32; 48];
                let t = min_time(200, || {
                    for _ in 0..100 {
                        let mut outs: Vec<&mut [f32]> = out.chunks_mut(12).collect();
                        quant::float::dot_rows(kind, &bytes, rb, &acts, &mut outs)
                    }
                }) / 100.0;
                println!("{kind:?} cols {cols}: {:.1} GFLOP/s", 2.0 * (12 * 4 * cols) as f64 / t / 1e9);
            }
        }
    }

    if section("attn") {
        // Decode attention as SmolLM2-135M runs it (9 query heads over 3 KV heads of 64 dims,
        // f16 cache in blocks of 16 placed at random), one layer's call for B sequences of one
        // new token each; 30 layers' caches so the step's KV streams from memory, as in decode.
        println!("\nDecode attention, SmolLM2 shape, f16 cache, 2 threads, median per layer call");
        let (nh, nkv, hd, bs, layers) = (9usize, 3usize, 64usize, 16usize, 30usize);
        for (b, ctx, ql) in [(16usize, 192usize, 1usize), (64, 192, 1), (1, 576, 1), (1, 512, 512)] {
            let blocks_per_seq = ctx.div_ceil(bs);
            let n_blocks = b * blocks_per_seq;
            let elems = n_blocks * bs * nkv * hd;
            let caches: Vec<(Vec<u16>, Vec<u16>)> = (0..layers)
                .map(|_| {
                    let k = (0..elems).map(|_| half::f16::from_f32(rng.f32()).to_bits()).collect();
                    let v = (0..elems).map(|_| half::f16::from_f32(rng.f32()).to_bits()).collect();
                    (k, v)
                })
                .collect();
            // A random permutation of the blocks over the sequences.
            let mut order: Vec<u32> = (0..n_blocks as u32).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            let q: Vec<f32> = (0..b * ql * nh * hd).map(|_| rng.f32()).collect();
            let mut out = vec![0f32; b * ql * nh * hd];
            let shape = ferrollm_kernels::KvShape { block_size: bs, n_kv_heads: nkv, head_dim: hd };
            let seqs: Vec<ferrollm_kernels::AttentionSeq> = (0..b)
                .map(|s| ferrollm_kernels::AttentionSeq {
                    query_start: s * ql,
                    query_len: ql,
                    context_len: ctx,
                    block_table: &order[s * blocks_per_seq..(s + 1) * blocks_per_seq],
                })
                .collect();
            let t = median_time(Duration::from_millis(1000), 10, |_| {
                for (k, v) in &caches {
                    let kv = ferrollm_kernels::PagedKv { data: ferrollm_kernels::KvRef::F16 { k, v }, shape };
                    ferrollm_kernels::attention::paged_attention(&pools[1], &q, &kv, &seqs, nh, 0.125, &mut out);
                }
            }) / layers as f64;
            let bytes = (b * ctx * nkv * hd * 2 * 2) as f64;
            // Scores and weighted values: 2 FLOP per (query, key, dim) each, over the causal keys.
            let pairs = b * nh * (ql * (ctx - ql) + ql * (ql + 1) / 2);
            let gflops = (4 * pairs * hd) as f64 / t / 1e9;
            println!(
                "B={b:<3} ctx {ctx} queries {ql}: {:>7.1} us/layer, KV read {:.1} GB/s, {gflops:.1} GFLOP/s",
                t * 1e6,
                bytes / t / 1e9
            );
        }
    }
    if section("panel") {
        // The prefill panel kernel alone, as the matmul calls it: one sub-block of PANEL_ROWS
        // rows widened once, then `panel_tokens()` packed tokens per call (all in L1 for one
        // group; the activations in L2 for more).
        let rows = quant::float::PANEL_ROWS;
        let group = quant::float::panel_tokens();
        println!("\nFloat panel kernel, 1 thread, {rows} rows; fastest of many calls");
        for cols in [576usize, 1536] {
            let kind = quant::float::Float::F16;
            let rb = cols * kind.bytes();
            let bytes: Vec<u8> = (0..rows * cols)
                .flat_map(|_| half::f16::from_f32(rng.f32() - 0.5).to_bits().to_le_bytes().to_vec())
                .collect();
            let mut buf = Vec::new();
            let Some(panel) = quant::float::pack_panel(kind, &bytes, rb, &mut buf) else {
                println!("no panel kernel here");
                break;
            };
            // The kernel reads the packed panel where pack_panel put it (its alignment matters).
            let (start, len) = (panel.as_ptr() as usize, panel.len());
            let skip = (start - buf.as_ptr() as usize) / 4;
            let buf_ro = std::mem::take(&mut buf);
            let panel = &buf_ro[skip..skip + len];
            for ntok in [8usize, 64, 448] {
                let x: Vec<f32> = (0..ntok * cols).map(|_| rng.f32()).collect();
                let mut out = vec![0f32; rows * ntok];
                // Packed groups back to back from a 64-byte boundary, as the matmul lays them out.
                let mut packed = vec![0f32; ntok * cols + 16];
                let off = packed.as_ptr().align_offset(64).min(16);
                for (g, xb) in x.chunks(group * cols).enumerate() {
                    let acts: Vec<&[f32]> = xb.chunks(cols).collect();
                    quant::float::pack_acts(&acts, &mut packed[off + g * group * cols..][..xb.len()]);
                }
                let t = min_time(if ntok > 64 { 200 } else { 2000 }, || {
                    for (g, ob) in out.chunks_mut(group * rows).enumerate() {
                        let k = ob.len() / rows;
                        let acts: Vec<&[f32]> = (0..k).map(|j| &x[(group * g + j) * cols..][..cols]).collect();
                        let mut outs: Vec<&mut [f32]> = ob.chunks_mut(rows).collect();
                        let pb = &packed[off + g * group * cols..][..k * cols];
                        quant::float::dot_panel(kind, panel, &bytes, rb, pb, &acts, &mut outs);
                    }
                });
                let mut scratch = Vec::new();
                let pack = min_time(2000, || {
                    quant::float::pack_panel(kind, &bytes, rb, &mut scratch);
                });
                println!(
                    "F16 cols {cols} tokens {ntok}: {:.1} GFLOP/s; pack {:.2} us ({:.1}% of the dots)",
                    2.0 * (rows * ntok * cols) as f64 / t / 1e9,
                    pack * 1e6,
                    100.0 * pack / t
                );
            }
        }
    }

    if section("qtile") {
        println!("\nInterleaved quantized kernels, 1 thread, 64 rows x 16 tokens; fastest of many calls");
        for &dtype in dtypes.iter().filter(|d| matches!(d, DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q8_0)) {
            for cols in [576usize, 1536] {
                let w = random_matrix(&mut rng, dtype, 64, cols);
                let x: Vec<f32> = (0..16 * cols).map(|_| rng.f32()).collect();
                let mut out = vec![0f32; 16 * 64];
                let t = min_time(2000, || w.matmul(&pools[0], &x, 16, &mut out));
                println!("{:<5} cols {cols}: {:.1} GMAC/s", dtype.name(), (64 * 16 * cols) as f64 / t / 1e9);
            }
        }
    }

    if section("prefill") {
        println!("\nPrefill matmul, 1 and 2 threads; GFLOP/s (2·rows·cols·n per call), median");
        let shapes = [
            ("smol 576->1536", 576, 1536),
            ("smol 1536->576", 1536, 576),
            ("smol 576->576", 576, 576),
            ("smol 576->192", 576, 192),
            ("qwen 896->4864", 896, 4864),
        ];
        for &dtype in &dtypes {
            for (label, cols, rows) in shapes {
                if cols % dtype.block_size() != 0 {
                    continue;
                }
                let w = random_matrix(&mut rng, dtype, rows, cols);
                for pool in &pools {
                    print!("{:<5} {:<15} x{}", dtype.name(), label, pool.num_threads());
                    for n in [16usize, 64, 512] {
                        let x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
                        let mut out = vec![0f32; n * rows];
                        let t = median_time(Duration::from_millis(300), 5, |_| w.matmul(pool, &x, n, &mut out));
                        print!("  n={n:<3} {:>6.1}", 2.0 * (rows * cols * n) as f64 / t / 1e9);
                    }
                    println!();
                }
            }
        }
    }

    if section("model") {
        // Every matmul of one SmolLM2-135M forward pass (30 layers of q, k, v, o, gate, up, down),
        // with each layer's weights distinct so decode streams all of them from memory; the
        // tied output projection is timed separately for one token, as llama-bench's pp512
        // computes logits for the last token only.
        println!("\nSmolLM2-135M, all layer matmuls of one forward pass (2 threads), median");
        let layer: [(usize, usize); 7] =
            [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)];
        for &dtype in &dtypes {
            if 576 % dtype.block_size() != 0 {
                continue;
            }
            let mats: Vec<QMatrix> = (0..30)
                .flat_map(|_| layer.iter().map(|&(c, r)| random_matrix(&mut rng, dtype, r, c)).collect::<Vec<_>>())
                .collect();
            let head = random_matrix(&mut rng, dtype, 49152, 576);
            let bytes: usize = mats.iter().map(|m| m.bytes().len()).sum();
            for n in [1usize, 16, 512] {
                let xs: Vec<f32> = (0..n * 1536).map(|_| rng.f32()).collect();
                let mut out = vec![0f32; n * 1536];
                let reps = if n == 512 { 3 } else { 20 };
                let t = median_time(Duration::from_millis(if n == 512 { 2000 } else { 500 }), reps, |_| {
                    for m in &mats {
                        m.matmul(&pools[1], &xs[..n * m.cols], n, &mut out[..n * m.rows]);
                    }
                });
                // The same with Q/K/V and gate/up fused (`matmul_many`), as the model runs them.
                let mut outs = vec![0f32; 2 * n * 1536];
                let tf = median_time(Duration::from_millis(if n == 512 { 2000 } else { 500 }), reps, |_| {
                    for l in mats.chunks_exact(7) {
                        let (a, b) = outs.split_at_mut(n * 1536);
                        let (ko, vo) = b[..n * 384].split_at_mut(n * 192);
                        let qo = &mut a[..n * 576];
                        quant::matmul_many(&pools[1], &[&l[0], &l[1], &l[2]], &xs[..n * 576], n, &mut [qo, ko, vo]);
                        l[3].matmul(&pools[1], &xs[..n * 576], n, &mut out[..n * 576]);
                        let (g, u) = outs.split_at_mut(n * 1536);
                        quant::matmul_many(&pools[1], &[&l[4], &l[5]], &xs[..n * 576], n, &mut [g, &mut u[..n * 1536]]);
                        l[6].matmul(&pools[1], &xs[..n * 1536], n, &mut out[..n * 576]);
                    }
                });
                let th = median_time(Duration::from_millis(200), 5, |_| {
                    head.matmul(&pools[1], &xs[..576], 1, &mut vec![0f32; 49152])
                });
                let total = t + th;
                print!(
                    "{:<5} n={n:<3}: layers {:>7.2} ms + head(1 token) {:>5.2} ms -> {:>7.1} tok/s",
                    dtype.name(),
                    t * 1e3,
                    th * 1e3,
                    n as f64 / total
                );
                if n == 1 {
                    print!(", layer weights {:.1} GB/s", bytes as f64 / t / 1e9);
                }
                println!("; fused QKV + gate/up: layers {:>7.2} ms ({:.3}x)", tf * 1e3, t / tf);
            }
        }
    }
}
