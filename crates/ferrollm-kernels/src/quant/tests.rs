//! Cross-format tests: round trips, SIMD against scalar references, and matmul against a
//! dequantize-then-f32 reference. Known-answer tests live next to each format.

use super::act::{quantize_q8a, quantize_q8k, BlockQ8A, BlockQ8K};
use super::amx;
use super::common::{as_blocks, f32_to_f16};
use super::float::{self, Float};
use super::*;
use crate::ThreadPool;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ALL: [DType; 13] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2K,
    DType::Q3K,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
];

/// Roughly normal values (sum of three uniforms), like trained weights and activations.
fn gauss(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.gen::<f32>() + rng.gen::<f32>() + rng.gen::<f32>() - 1.5) * 2.0 * scale).collect()
}

fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt()
}

/// Offsets of the f16 scale fields inside each block type.
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

/// A row of random bytes with sane scales, so every bit of the quant fields is exercised
/// (quantizer output alone never produces some patterns, such as Q8_0's −128).
fn random_row(rng: &mut StdRng, dtype: DType, cols: usize) -> Vec<u8> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => quantize_row(dtype, &gauss(rng, cols, 1.0)),
        _ => {
            let mut bytes: Vec<u8> = (0..dtype.row_bytes(cols)).map(|_| rng.gen()).collect();
            for block in bytes.chunks_exact_mut(dtype.type_size()) {
                for &off in f16_fields(dtype) {
                    block[off..off + 2].copy_from_slice(&f32_to_f16(rng.gen_range(-0.1..0.1)));
                }
            }
            bytes
        }
    }
}

#[test]
fn every_dtype_is_supported_and_round_trips() {
    // Relative RMS error of quantize → dequantize on normal data. ggml's own (searching)
    // quantizers do somewhat better on the K-quants; these bounds are for ours.
    let bounds = [
        (DType::F32, 0.0),
        (DType::F16, 1e-3),
        (DType::BF16, 8e-3),
        (DType::Q8_0, 0.01),
        (DType::Q5_0, 0.06),
        (DType::Q5_1, 0.05),
        (DType::Q4_0, 0.12),
        (DType::Q4_1, 0.10),
        (DType::Q6K, 0.03),
        (DType::Q5K, 0.06),
        (DType::Q4K, 0.12),
        (DType::Q3K, 0.25),
        (DType::Q2K, 0.45),
    ];
    let mut rng = StdRng::seed_from_u64(1);
    let x = gauss(&mut rng, 4096, 0.7);
    for (dtype, bound) in bounds {
        assert!(is_supported(dtype));
        let bytes = quantize_row(dtype, &x);
        assert_eq!(bytes.len(), dtype.row_bytes(x.len()));
        let mut y = vec![0f32; x.len()];
        dequantize_row(dtype, &bytes, &mut y);
        let err: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
        let rel = rms(&err) / rms(&x);
        eprintln!("{:>5}: relative rms error {rel:.4}", dtype.name());
        assert!(rel <= bound, "{}: relative rms error {rel} above {bound}", dtype.name());
    }
}

#[test]
fn zero_rows_quantize_to_zero() {
    for dtype in ALL {
        let x = vec![0f32; 512];
        let mut y = vec![1f32; 512];
        dequantize_row(dtype, &quantize_row(dtype, &x), &mut y);
        assert!(y.iter().all(|&v| v == 0.0), "{}", dtype.name());
    }
}

/// Runs the dispatched (SIMD where available) dot and the scalar reference on the same data.
fn simd_and_scalar(dtype: DType, row: &[u8], x: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
    let t = x.len();
    let (mut fast, mut slow) = (vec![0f32; t], vec![0f32; t]);
    let q8a: Vec<Vec<BlockQ8A>> = x
        .iter()
        .map(|v| {
            let mut a = vec![BlockQ8A::default(); v.len() / 32];
            if v.len() % 32 == 0 {
                quantize_q8a(v, &mut a);
            }
            a
        })
        .collect();
    let q8k: Vec<Vec<BlockQ8K>> = x
        .iter()
        .map(|v| {
            let mut a = vec![BlockQ8K::default(); v.len() / 256];
            if v.len() % 256 == 0 {
                quantize_q8k(v, &mut a);
            }
            a
        })
        .collect();
    let a8: Vec<&[BlockQ8A]> = q8a.iter().map(|v| v.as_slice()).collect();
    let ak: Vec<&[BlockQ8K]> = q8k.iter().map(|v| v.as_slice()).collect();
    let af: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => {
            let kind = [Float::F32, Float::F16, Float::BF16]
                [[DType::F32, DType::F16, DType::BF16].iter().position(|&d| d == dtype).unwrap()];
            float::dot(kind, row, &af, &mut fast);
            float::dot_scalar(kind, row, &af, &mut slow);
        }
        DType::Q4_0 => {
            block32::dot::<q4_0::BlockQ4_0>(as_blocks(row), &a8, &mut fast);
            block32::dot_scalar::<q4_0::BlockQ4_0>(as_blocks(row), &a8, &mut slow);
        }
        DType::Q4_1 => {
            block32::dot::<q4_1::BlockQ4_1>(as_blocks(row), &a8, &mut fast);
            block32::dot_scalar::<q4_1::BlockQ4_1>(as_blocks(row), &a8, &mut slow);
        }
        DType::Q5_0 => {
            block32::dot::<q5_0::BlockQ5_0>(as_blocks(row), &a8, &mut fast);
            block32::dot_scalar::<q5_0::BlockQ5_0>(as_blocks(row), &a8, &mut slow);
        }
        DType::Q5_1 => {
            block32::dot::<q5_1::BlockQ5_1>(as_blocks(row), &a8, &mut fast);
            block32::dot_scalar::<q5_1::BlockQ5_1>(as_blocks(row), &a8, &mut slow);
        }
        DType::Q8_0 => {
            q8_0::dot(as_blocks(row), &a8, &mut fast);
            q8_0::dot_scalar(as_blocks(row), &a8, &mut slow);
        }
        DType::Q4K => {
            q4_k::dot(as_blocks(row), &ak, &mut fast);
            kquant::dot_scalar::<q4_k::BlockQ4K>(as_blocks(row), &ak, &mut slow);
        }
        DType::Q5K => {
            q5_k::dot(as_blocks(row), &ak, &mut fast);
            kquant::dot_scalar::<q5_k::BlockQ5K>(as_blocks(row), &ak, &mut slow);
        }
        DType::Q6K => {
            q6_k::dot(as_blocks(row), &ak, &mut fast);
            kquant::dot_scalar::<q6_k::BlockQ6K>(as_blocks(row), &ak, &mut slow);
        }
        DType::Q2K => {
            q2_k::dot(as_blocks(row), &ak, &mut fast);
            kquant::dot_scalar::<q2_k::BlockQ2K>(as_blocks(row), &ak, &mut slow);
        }
        DType::Q3K => {
            q3_k::dot(as_blocks(row), &ak, &mut fast);
            kquant::dot_scalar::<q3_k::BlockQ3K>(as_blocks(row), &ak, &mut slow);
        }
    }
    (fast, slow)
}

#[test]
fn simd_kernels_match_scalar_references() {
    eprintln!("SIMD available: {}", common::has_avx2());
    let mut rng = StdRng::seed_from_u64(2);
    for dtype in ALL {
        let widths: &[usize] = match dtype.block_size() {
            1 => &[1, 7, 8, 13, 64, 579],
            32 => &[32, 96, 576, 1536],
            _ => &[256, 768, 1536],
        };
        for &cols in widths {
            for t in 1..=4 {
                let row = random_row(&mut rng, dtype, cols);
                let x: Vec<Vec<f32>> = (0..t).map(|_| gauss(&mut rng, cols, 1.0)).collect();
                let (fast, slow) = simd_and_scalar(dtype, &row, &x);
                let mut w = vec![0f32; cols];
                dequantize_row(dtype, &row, &mut w);
                for (j, (f, s)) in fast.iter().zip(&slow).enumerate() {
                    // Integer sums are exact; only the float accumulation order differs.
                    let mag: f32 = w.iter().zip(&x[j]).map(|(a, b)| (a * b).abs()).sum::<f32>() + 1e-6;
                    assert!((f - s).abs() <= 2e-5 * mag, "{} cols {cols} tile {t}: {f} vs {s}", dtype.name());
                }
            }
        }
    }
}

/// `out[t, r]` against f64 dot products of the dequantized weights with the f32 inputs.
fn check_matmul(pool: &ThreadPool, dtype: DType, rows: usize, cols: usize, n: usize, rng: &mut StdRng) -> f32 {
    let bytes: Vec<u8> = (0..rows).flat_map(|_| random_row(rng, dtype, cols)).collect();
    let w = QMatrix::new(dtype, rows, cols, crate::Bytes::from_vec(bytes)).unwrap();
    let x = gauss(rng, n * cols, 1.0);
    let mut out = vec![f32::NAN; n * rows];
    w.matmul(pool, &x, n, &mut out);
    let wf = w.to_f32();
    let mut worst = 0f32;
    for t in 0..n {
        let xt = &x[t * cols..(t + 1) * cols];
        let xn = xt.iter().map(|v| (v * v) as f64).sum::<f64>().sqrt();
        for r in 0..rows {
            let wr = &wf[r * cols..(r + 1) * cols];
            let want: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
            let wn = wr.iter().map(|v| (v * v) as f64).sum::<f64>().sqrt();
            let rel = ((out[t * rows + r] as f64 - want).abs() / (wn * xn + 1e-12)) as f32;
            worst = worst.max(rel);
        }
    }
    worst
}

/// Error per output relative to `‖w_r‖·‖x_t‖` (the largest the dot could be). Quantizing the
/// activations to 8 bits bounds it near `amax / 254 / rms` per element; we allow 0.01 for the
/// quantized types and 1e-5 for float weights, and check the typical error is far below.
#[test]
fn matmul_matches_dequantized_reference_on_odd_shapes() {
    let pools = [ThreadPool::new(1), ThreadPool::new(2), ThreadPool::new(3)];
    let mut rng = StdRng::seed_from_u64(3);
    for dtype in ALL {
        let cols = match dtype.block_size() {
            1 => 99,
            32 => 160,
            _ => 512,
        };
        let tol = if dtype.block_size() == 1 { 1e-5 } else { 0.01 };
        let mut worst = 0f32;
        for (i, &(rows, n)) in [(1, 1), (5, 3), (37, 7), (130, 33), (64, 4), (17, 9)].iter().enumerate() {
            let pool = &pools[i % pools.len()];
            worst = worst.max(check_matmul(pool, dtype, rows, cols, n, &mut rng));
        }
        eprintln!("{:>5}: worst error / (|w||x|) {worst:.2e}", dtype.name());
        assert!(worst <= tol, "{}: {worst} above {tol}", dtype.name());
    }
}

#[test]
fn matmul_is_identical_across_thread_counts_and_large_batches() {
    let mut rng = StdRng::seed_from_u64(4);
    let (one, two) = (ThreadPool::new(1), ThreadPool::new(2));
    for dtype in [DType::Q4_0, DType::Q8_0, DType::Q4K, DType::Q6K, DType::F16] {
        let (rows, cols, n) = (77, 512, 130);
        let bytes: Vec<u8> = (0..rows).flat_map(|_| random_row(&mut rng, dtype, cols)).collect();
        let w = QMatrix::new(dtype, rows, cols, crate::Bytes::from_vec(bytes)).unwrap();
        let x = gauss(&mut rng, n * cols, 1.0);
        let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
        w.matmul(&one, &x, n, &mut a);
        w.matmul(&two, &x, n, &mut b);
        assert_eq!(a, b, "{}", dtype.name());
        // Each output equals the single-token result: tiling does not change the arithmetic.
        let mut single = vec![0f32; rows];
        w.matmul(&two, &x[5 * cols..6 * cols], 1, &mut single);
        assert_eq!(&a[5 * rows..6 * rows], &single[..], "{}", dtype.name());
    }
}

#[test]
fn nested_matmul_inside_pool_task() {
    let pool = ThreadPool::new(2);
    let mut rng = StdRng::seed_from_u64(5);
    let w = quantize_matrix(DType::Q8_0, 40, 64, &gauss(&mut rng, 40 * 64, 1.0));
    let x = gauss(&mut rng, 64, 1.0);
    let mut want = vec![0f32; 40];
    w.matmul(&pool, &x, 1, &mut want);
    pool.run(4, |_| {
        let mut got = vec![0f32; 40];
        w.matmul(&pool, &x, 1, &mut got);
        assert_eq!(got, want);
    });
}

/// `matmul_many` gives exactly what separate `matmul` calls give: rows of several matrices in
/// one dispatch, shared activations; mixed dtypes fall back to one call each.
#[test]
fn matmul_many_equals_separate_matmuls() {
    let mut rng = StdRng::seed_from_u64(6);
    let pools = [ThreadPool::new(1), ThreadPool::new(2)];
    let cases: [&[(DType, usize)]; 4] = [
        &[(DType::Q4_1, 96), (DType::Q4_1, 32), (DType::Q4_1, 32)],
        &[(DType::Q4K, 70), (DType::Q4K, 70)],
        &[(DType::Q4K, 20), (DType::Q6K, 9), (DType::Q4K, 3), (DType::Q6K, 1)],
        &[(DType::F16, 5), (DType::F16, 0), (DType::F16, 1)],
    ];
    for (case, &mats) in cases.iter().enumerate() {
        let cols = 512;
        let ws: Vec<QMatrix> = mats
            .iter()
            .map(|&(dtype, rows)| {
                let bytes: Vec<u8> = (0..rows).flat_map(|_| random_row(&mut rng, dtype, cols)).collect();
                QMatrix::new(dtype, rows, cols, crate::Bytes::from_vec(bytes)).unwrap()
            })
            .collect();
        for pool in &pools {
            for n in [1usize, 3, 9] {
                let x = gauss(&mut rng, n * cols, 1.0);
                let want: Vec<Vec<f32>> = ws
                    .iter()
                    .map(|w| {
                        let mut o = vec![0f32; n * w.rows];
                        w.matmul(pool, &x, n, &mut o);
                        o
                    })
                    .collect();
                let mut got: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; n * w.rows]).collect();
                let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|o| o.as_mut_slice()).collect();
                let refs: Vec<&QMatrix> = ws.iter().collect();
                matmul_many(pool, &refs, &x, n, &mut outs);
                assert_eq!(got, want, "case {case}, {} threads, n {n}", pool.num_threads());
            }
        }
    }
}

/// Matrices interleaved eight rows at a time ([`QMatrix::prepared_for_matmul`]) dequantize to
/// the same values, multiply like the row layout (up to float rounding), and give each token
/// bit-identical outputs whatever the batch and thread count; `matmul_many` mixes layouts.
#[test]
fn interleaved_matmul_matches_rows_and_is_batch_invariant() {
    let mut rng = StdRng::seed_from_u64(7);
    let (one, two) = (ThreadPool::new(1), ThreadPool::new(2));
    for dtype in [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q4K, DType::Q5K, DType::Q6K] {
        let shapes: &[(usize, usize)] = match dtype.block_size() {
            256 => &[(8, 256), (64, 1536), (136, 768)],
            _ => &[(8, 32), (64, 576), (136, 160)],
        };
        for &(rows, cols) in shapes {
            let bytes: Vec<u8> = (0..rows).flat_map(|_| random_row(&mut rng, dtype, cols)).collect();
            let w = QMatrix::new(dtype, rows, cols, crate::Bytes::from_vec(bytes)).unwrap();
            let p = w.clone().prepared_for_matmul();
            assert_eq!(p.layout(), crate::qmatrix::Layout::Interleaved8, "{}", dtype.name());
            assert_eq!(p.bytes().len(), w.bytes().len(), "same bytes per row");
            assert_eq!(p.to_f32(), w.to_f32(), "{} dequantizes the same", dtype.name());
            // Enough tokens for the panel kernels (AVX2's from 48), and splits on both sides.
            let n = 100;
            let x = gauss(&mut rng, n * cols, 1.0);
            let (mut rows_out, mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows], vec![0f32; n * rows]);
            w.matmul(&two, &x, n, &mut rows_out);
            p.matmul(&one, &x, n, &mut a);
            p.matmul(&two, &x, n, &mut b);
            assert_eq!(a, b, "{} {rows}x{cols}: thread count changed the result", dtype.name());
            // The two layouts add the same integer block sums in different float orders: allow
            // rounding relative to the magnitude of the terms (random K-quant scales make
            // outputs that cancel terms a thousand times larger).
            let wf = w.to_f32();
            for (i, (got, want)) in a.iter().zip(&rows_out).enumerate() {
                let (t, r) = (i / rows, i % rows);
                let mag: f32 = (0..cols).map(|c| (wf[r * cols + c] * x[t * cols + c]).abs()).sum::<f32>() + 1e-6;
                assert!((got - want).abs() <= 2e-5 * mag, "{}: {got} vs {want} (terms {mag})", dtype.name());
            }
            // Any split of the batch gives the same bits per token.
            let mut split = vec![0f32; n * rows];
            let mut t = 0;
            for k in [1usize, 4, 3, 5, 2, 22, 63] {
                p.matmul(&two, &x[t * cols..(t + k) * cols], k, &mut split[t * rows..(t + k) * rows]);
                t += k;
            }
            assert_eq!(split, a, "{} {rows}x{cols}: batch split changed the result", dtype.name());
        }
    }
    // Rows that do not split into groups of eight keep the row layout.
    let w = quantize_matrix(DType::Q4_1, 12, 64, &gauss(&mut rng, 12 * 64, 1.0)).prepared_for_matmul();
    assert_eq!(w.layout(), crate::qmatrix::Layout::Rows);
    // One fused call over matrices of both layouts equals separate calls.
    let ws = [
        quantize_matrix(DType::Q4_1, 16, 64, &gauss(&mut rng, 16 * 64, 1.0)).prepared_for_matmul(),
        w,
        quantize_matrix(DType::Q4_1, 24, 64, &gauss(&mut rng, 24 * 64, 1.0)).prepared_for_matmul(),
    ];
    let x = gauss(&mut rng, 5 * 64, 1.0);
    let want: Vec<Vec<f32>> = ws
        .iter()
        .map(|w| {
            let mut o = vec![0f32; 5 * w.rows];
            w.matmul(&two, &x, 5, &mut o);
            o
        })
        .collect();
    let mut got: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; 5 * w.rows]).collect();
    let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|o| o.as_mut_slice()).collect();
    matmul_many(&two, &ws.iter().collect::<Vec<_>>(), &x, 5, &mut outs);
    assert_eq!(got, want);
}

/// The interleaved block32 and Q8_0 kernels (AVX2/AVX-VNNI on x86, NEON on aarch64) give the
/// bits of their scalar references for 1 to 4 tokens: every row's float operations are the
/// scalar ones, and the integer sums are exact.
#[test]
fn interleaved_kernels_match_their_scalar_references_bit_for_bit() {
    use super::x8::{self, Interleaved};
    type Scalar<B> = fn(&[B], &[&[BlockQ8A]], &mut [[f32; x8::ROWS]]);
    fn check<B: Interleaved<Act = BlockQ8A>>(name: &str, bytes: &[u8], acts: &[&[BlockQ8A]], scalar: Scalar<B>) {
        let blocks: &[B] = as_blocks(bytes);
        let per_group = blocks.len() / 2;
        for g in blocks.chunks_exact(per_group) {
            for k in 1..=4 {
                let (mut got, mut want) = ([[f32::NAN; x8::ROWS]; 4], [[0f32; x8::ROWS]; 4]);
                B::dot_group(g, &acts[..k], &mut got[..k]);
                scalar(g, &acts[..k], &mut want[..k]);
                let bits = |v: &[[f32; x8::ROWS]]| v.iter().flatten().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got[..k]), bits(&want[..k]), "{name}, {k} tokens");
            }
        }
    }
    let mut rng = StdRng::seed_from_u64(15);
    let (rows, cols) = (16, 160);
    let x = gauss(&mut rng, 4 * cols, 1.0);
    let q8a: Vec<Vec<BlockQ8A>> = x
        .chunks_exact(cols)
        .map(|v| {
            let mut a = vec![BlockQ8A::default(); cols / 32];
            quantize_q8a(v, &mut a);
            a
        })
        .collect();
    let acts: Vec<&[BlockQ8A]> = q8a.iter().map(|a| a.as_slice()).collect();
    for dtype in [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0] {
        let w = quantize_matrix(dtype, rows, cols, &gauss(&mut rng, rows * cols, 1.0)).prepared_for_matmul();
        assert_eq!(w.layout(), crate::qmatrix::Layout::Interleaved8);
        let b = w.bytes();
        match dtype {
            DType::Q4_0 => check::<x8::X8Q4_0>("Q4_0", b, &acts, x8::dot_group_scalar),
            DType::Q4_1 => check::<x8::X8Q4_1>("Q4_1", b, &acts, x8::dot_group_scalar),
            DType::Q5_0 => check::<x8::X8Q5_0>("Q5_0", b, &acts, x8::dot_group_scalar),
            DType::Q5_1 => check::<x8::X8Q5_1>("Q5_1", b, &acts, x8::dot_group_scalar),
            _ => check::<super::x8q8::X8Q8_0>("Q8_0", b, &acts, super::x8q8::dot_group_scalar),
        }
    }
}

/// The float kernels' register tiles (rows × tokens) change which outputs share loads, never an
/// output's arithmetic: any split of the batch, any thread count and any row count (tiles plus
/// leftover rows) give the same bits per token, close to the scalar reference.
#[test]
fn float_matmul_is_batch_invariant() {
    let mut rng = StdRng::seed_from_u64(11);
    let (one, two) = (ThreadPool::new(1), ThreadPool::new(2));
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for (rows, cols) in [(1, 8), (7, 13), (29, 64), (50, 200), (110, 1000)] {
            let bytes: Vec<u8> = (0..rows).flat_map(|_| random_row(&mut rng, dtype, cols)).collect();
            let w = QMatrix::new(dtype, rows, cols, crate::Bytes::from_vec(bytes)).unwrap();
            // Enough tokens for the panel kernels (AVX2's from 48), and splits on both sides.
            let n = 100;
            let x = gauss(&mut rng, n * cols, 1.0);
            let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
            w.matmul(&one, &x, n, &mut a);
            w.matmul(&two, &x, n, &mut b);
            assert_eq!(a, b, "{} {rows}x{cols}: thread count changed the result", dtype.name());
            let mut split = vec![0f32; n * rows];
            let mut t = 0;
            for k in [1usize, 4, 3, 5, 2, 22, 63] {
                w.matmul(&two, &x[t * cols..(t + k) * cols], k, &mut split[t * rows..(t + k) * rows]);
                t += k;
            }
            assert_eq!(split, a, "{} {rows}x{cols}: batch split changed the result", dtype.name());
            let wf = w.to_f32();
            // AMX keeps about 17 bits of each activation (see `amx`): within 2⁻¹⁴ of Σ|w·x|.
            let amx_path = dtype != DType::F32 && amx::enabled_for(super::TokenKind::Generated);
            for (i, got) in a.iter().enumerate() {
                let (tok, r) = (i / rows, i % rows);
                let want: f32 = (0..cols).map(|c| wf[r * cols + c] * x[tok * cols + c]).sum();
                let scale: f32 = (0..cols).map(|c| (wf[r * cols + c] * x[tok * cols + c]).abs()).sum();
                let tol = if amx_path { scale * 2f32.powi(-14) } else { 1e-4 * (1.0 + want.abs()) };
                assert!((got - want).abs() <= tol, "{}: {got} vs {want}", dtype.name());
            }
        }
    }
}

/// The four-at-once lane sum behind the float kernels' epilogue adds in `hsum_ps`'s order, so
/// the two agree bit for bit, cancellations, infinities and signed zeros included.
#[cfg(target_arch = "x86_64")]
#[test]
fn hsum4_matches_hsum_ps_bit_for_bit() {
    use super::x86::{hsum4_ps, hsum_ps};
    use std::arch::x86_64::*;
    if !common::has_avx2() {
        eprintln!("no AVX2+FMA+F16C here: hsum4_ps is never called, nothing to compare");
        return;
    }
    let mut rng = StdRng::seed_from_u64(5);
    let special = [0.0f32, -0.0, 1e30, -1e30, f32::INFINITY, 1e-40, -3.5];
    for i in 0..2000 {
        let lanes: Vec<f32> = (0..32)
            .map(|j| match (i + j) % 11 {
                0 => special[rng.gen_range(0..special.len())],
                k => (rng.gen::<f32>() - 0.5) * 10f32.powi(k % 7 - 2),
            })
            .collect();
        // SAFETY: AVX2 was checked above; each load reads 8 of the 32 f32s.
        let (got, want) = unsafe {
            let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(lanes[8 * k..].as_ptr()));
            let mut got = [0f32; 4];
            _mm_storeu_ps(got.as_mut_ptr(), hsum4_ps(v));
            (got, v.map(|x| hsum_ps(x)))
        };
        assert_eq!(got.map(f32::to_bits), want.map(f32::to_bits), "lanes {lanes:?}");
    }
}

/// The AVX-512 panel kernel (where this CPU has it) gives the row kernel's bits for every tile
/// shape: 1-8 tokens, row pairs in fours, threes, twos and ones, an odd last row, a column tail,
/// more tiles than one batch and more columns than one K-block.
#[test]
fn float_panel_kernel_matches_the_row_kernel() {
    let mut rng = StdRng::seed_from_u64(12);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let kind = match dtype {
            DType::F32 => Float::F32,
            DType::F16 => Float::F16,
            _ => Float::BF16,
        };
        // The last shape takes several batches of tiles and K-blocks, an odd row and a tail.
        for (rows, cols) in [(1, 8), (2, 16), (7, 13), (11, 64), (24, 200), (83, 1545)] {
            let bytes: Vec<u8> = (0..rows).flat_map(|_| random_row(&mut rng, dtype, cols)).collect();
            let rb = cols * kind.bytes();
            let mut buf = vec![f32::NAN; 7]; // a used buffer: only its start is the panel
            let Some(panel) = float::pack_panel(kind, &bytes, rb, &mut buf) else {
                continue; // no AVX-512 here: the matmul never takes this path
            };
            let x = gauss(&mut rng, float::panel_tokens() * cols, 1.0);
            let acts: Vec<&[f32]> = x.chunks_exact(cols).collect();
            for k in 1..=float::panel_tokens() {
                let (want, mut got) = (row_kernel_outputs(kind, &bytes, rb, &acts[..k]), vec![vec![f32::NAN; rows]; k]);
                let mut g: Vec<&mut [f32]> = got.iter_mut().map(|o| o.as_mut_slice()).collect();
                let mut packed = vec![f32::NAN; k * (cols / 8 * 8)];
                float::pack_acts(&acts[..k], &mut packed);
                float::dot_panel(kind, panel, &bytes, rb, &packed, &acts[..k], &mut g);
                assert_eq!(got, want, "{} {rows}x{cols}, {k} tokens", dtype.name());
            }
        }
    }
}

/// Every token's outputs from the row kernel, which takes at most 4 tokens a call: what the
/// panel kernels must reproduce bit for bit.
fn row_kernel_outputs(kind: Float, bytes: &[u8], rb: usize, acts: &[&[f32]]) -> Vec<Vec<f32>> {
    let mut want = vec![vec![0f32; bytes.len() / rb]; acts.len()];
    let mut w: Vec<&mut [f32]> = want.iter_mut().map(|o| o.as_mut_slice()).collect();
    for (a, w) in acts.chunks(4).zip(w.chunks_mut(4)) {
        float::dot_rows(kind, bytes, rb, a, w);
    }
    want
}

/// The AVX2 panel kernel (outer-product tiles over permuted columns), called directly so that
/// CPUs whose matmul takes the AVX-512 one test it too: the same bits as the row kernel for
/// every token count, with leftover rows (not a multiple of 8), partial row groups and a
/// column tail.
#[cfg(target_arch = "x86_64")]
#[test]
fn float_avx2_panel_kernel_matches_the_row_kernel() {
    use super::float_panel_avx2 as panel2;
    if !super::common::has_avx2() {
        return; // no AVX2 here: the matmul never takes this path
    }
    let mut rng = StdRng::seed_from_u64(13);
    for (dtype, k_id) in [(DType::F32, 0), (DType::F16, 1), (DType::BF16, 2)] {
        let kind = [Float::F32, Float::F16, Float::BF16][k_id];
        for (rows, cols) in [(8, 8), (7, 13), (16, 64), (27, 200), (83, 1545)] {
            let bytes: Vec<u8> = (0..rows).flat_map(|_| random_row(&mut rng, dtype, cols)).collect();
            let rb = cols * kind.bytes();
            let mut panel = vec![f32::NAN; panel2::panel_len(rows, cols)];
            // SAFETY: AVX2, FMA and F16C were detected.
            unsafe {
                match k_id {
                    0 => panel2::pack::<0>(&bytes, rb, &mut panel),
                    1 => panel2::pack::<1>(&bytes, rb, &mut panel),
                    _ => panel2::pack::<2>(&bytes, rb, &mut panel),
                }
            }
            let x = gauss(&mut rng, panel2::TOKENS * cols, 1.0);
            let acts: Vec<&[f32]> = x.chunks_exact(cols).collect();
            for k in 1..=panel2::TOKENS {
                let (want, mut got) = (row_kernel_outputs(kind, &bytes, rb, &acts[..k]), vec![vec![f32::NAN; rows]; k]);
                let mut g: Vec<&mut [f32]> = got.iter_mut().map(|o| o.as_mut_slice()).collect();
                let mut packed = vec![f32::NAN; k * (cols / 8 * 8)];
                panel2::pack_acts(&acts[..k], &mut packed);
                // SAFETY: AVX2, FMA and F16C were detected; the shapes match.
                unsafe {
                    match k_id {
                        0 => panel2::dot_panel::<0>(&panel, &bytes, rb, &packed, &acts[..k], &mut g),
                        1 => panel2::dot_panel::<1>(&panel, &bytes, rb, &packed, &acts[..k], &mut g),
                        _ => panel2::dot_panel::<2>(&panel, &bytes, rb, &packed, &acts[..k], &mut g),
                    }
                }
                assert_eq!(got, want, "{} {rows}x{cols}, {k} tokens", dtype.name());
            }
        }
    }
}

/// The float row kernels (AVX2 on x86, NEON on aarch64) give the bits of their scalar twin,
/// [`float::dot_lanes_scalar`], for every token count, with and without a column tail: so the
/// two ISAs agree bit for bit. Where neither kernel exists `dot_rows` is the plain scalar sum,
/// which this does not claim to match.
#[test]
fn float_row_kernels_match_their_scalar_twin_bit_for_bit() {
    let simd = super::common::has_avx2() || super::common::has_neon();
    let mut rng = StdRng::seed_from_u64(14);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let kind = [Float::F32, Float::F16, Float::BF16]
            [[DType::F32, DType::F16, DType::BF16].iter().position(|&d| d == dtype).unwrap()];
        for (rows, cols) in [(1, 8), (3, 7), (5, 13), (9, 64), (13, 200)] {
            let bytes: Vec<u8> = (0..rows).flat_map(|_| random_row(&mut rng, dtype, cols)).collect();
            let rb = cols * kind.bytes();
            let x = gauss(&mut rng, 4 * cols, 1.0);
            let acts: Vec<&[f32]> = x.chunks_exact(cols).collect();
            for k in 1..=4 {
                let mut got = vec![vec![f32::NAN; rows]; k];
                let mut g: Vec<&mut [f32]> = got.iter_mut().map(|o| o.as_mut_slice()).collect();
                float::dot_rows(kind, &bytes, rb, &acts[..k], &mut g);
                for (r, row) in bytes.chunks_exact(rb).enumerate() {
                    let mut want = [0f32; 4];
                    float::dot_lanes_scalar(kind, row, &acts[..k], &mut want[..k]);
                    for t in 0..k {
                        if simd {
                            assert_eq!(
                                got[t][r].to_bits(),
                                want[t].to_bits(),
                                "{} {rows}x{cols} row {r} token {t}/{k}",
                                dtype.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// NEON's f16 widening (no FP16 extension) is exact for every half that is not a NaN.
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_f16_widening_is_exact() {
    for bits in 0..=u16::MAX {
        let want = super::common::f16_to_f32(bits.to_le_bytes());
        if want.is_nan() {
            continue;
        }
        let mut eight = [0u8; 16];
        for c in eight.chunks_exact_mut(2) {
            c.copy_from_slice(&bits.to_le_bytes());
        }
        // SAFETY: NEON is part of aarch64; `eight` holds 16 bytes.
        let v = unsafe { super::arm::load_f16x8(eight.as_ptr()) };
        let mut got = [0f32; 8];
        // SAFETY: `got` holds 8 floats.
        unsafe {
            std::arch::aarch64::vst1q_f32(got.as_mut_ptr(), v[0]);
            std::arch::aarch64::vst1q_f32(got.as_mut_ptr().add(4), v[1]);
        }
        assert!(got.iter().all(|g| g.to_bits() == want.to_bits()), "f16 {bits:#06x}: {got:?} vs {want}");
    }
}

/// The AMX split is exact for F16 weights (`hi + lo` is the weight) and for BF16 (`hi` is it),
/// and the activation split keeps the value to within 2⁻¹⁷ of it.
#[test]
fn amx_splits_are_exact_where_they_must_be() {
    for bits in 0..=u16::MAX {
        let w = bits.to_le_bytes();
        let x = super::common::f16_to_f32(w);
        if !x.is_finite() {
            continue;
        }
        let (hi, lo) = amx::split_weight(Float::F16, w);
        let back = f32::from_bits((hi as u32) << 16) + f32::from_bits((lo as u32) << 16);
        assert_eq!(back, x, "f16 {bits:#06x}");
        assert_eq!(amx::split_weight(Float::BF16, w), (bits, 0));
    }
    let mut rng = StdRng::seed_from_u64(21);
    for x in gauss(&mut rng, 100_000, 3.0) {
        let (hi, mid) = amx::split_act(x);
        let back = f32::from_bits((hi as u32) << 16) + f32::from_bits((mid as u32) << 16);
        assert!((back - x).abs() <= x.abs() * 2f32.powi(-17), "{x} split to {back}");
    }
}

/// Weight tiles and row-major splits from the AVX-512 code are the scalar references', for odd
/// rows and columns.
#[test]
fn amx_weight_packing_matches_scalar() {
    let mut rng = StdRng::seed_from_u64(22);
    for (dtype, kind) in [(DType::F16, Float::F16), (DType::BF16, Float::BF16)] {
        for (rows, cols) in [(1, 32), (5, 40), (16, 64), (37, 577), (48, 1536)] {
            let bytes: Vec<u8> = (0..rows).flat_map(|_| random_row(&mut rng, dtype, cols)).collect();
            let len = amx::packed_weights_len(kind, rows, cols);
            let (mut fast, mut slow) = (vec![7u16; len], vec![9u16; len]);
            amx::pack_weights(kind, &bytes, 2 * cols, &mut fast);
            amx::pack_weights_scalar(kind, &bytes, 2 * cols, &mut slow);
            assert!(fast == slow, "{} {rows}x{cols}", dtype.name());
            // The decode kernel's row-major split, likewise.
            let padded = rows.div_ceil(amx::TILE) * amx::TILE * amx::split_width(cols);
            let lo_len = if kind == Float::F16 { padded } else { 0 };
            let (mut fh, mut fl, mut sh, mut sl) =
                (vec![7u16; padded], vec![7u16; lo_len], vec![9u16; padded], vec![9u16; lo_len]);
            amx::split_weights(kind, &bytes, 2 * cols, &mut fh, &mut fl);
            amx::split_weights_scalar(kind, &bytes, 2 * cols, &mut sh, &mut sl);
            assert!(fh == sh && fl == sl, "{} {rows}x{cols} split", dtype.name());
        }
    }
}

/// On a CPU with AMX: tile products within 2⁻¹⁴ of `Σ|w·x|` of f64 dot products of the same
/// weights and activations, and each output the same bits whichever block and group hold its
/// row and token (here: alone, or the sixth token of 37 and a row of the third block).
#[test]
fn amx_tiles_are_accurate_and_batch_invariant() {
    if !amx::available() {
        eprintln!("no AMX on this CPU: the F16 and BF16 matmuls use the vector kernels");
        return;
    }
    let mut rng = StdRng::seed_from_u64(23);
    for (dtype, kind) in [(DType::F16, Float::F16), (DType::BF16, Float::BF16)] {
        for (rows, cols, n) in [(1, 32, 1), (40, 100, 37), (70, 1536, 20)] {
            let bytes: Vec<u8> = (0..rows).flat_map(|_| random_row(&mut rng, dtype, cols)).collect();
            let w = QMatrix::new(dtype, rows, cols, crate::Bytes::from_vec(bytes.clone())).unwrap().to_f32();
            let x = gauss(&mut rng, n * cols, 1.0);
            let run = |rows: std::ops::Range<usize>, t0: usize, t1: usize| {
                let rb = 2 * cols;
                let mut wp = vec![0u16; amx::packed_weights_len(kind, rows.len(), cols)];
                amx::pack_weights(kind, &bytes[rows.start * rb..rows.end * rb], rb, &mut wp);
                let xs = &x[t0 * cols..t1 * cols];
                let mut ap = vec![0u16; amx::packed_acts_len(t1 - t0, cols)];
                amx::pack_acts(xs, cols, 0, t1 - t0, &mut ap);
                let mut out = vec![f32::NAN; (t1 - t0) * rows.len()];
                let (blocks, groups) = (rows.len().div_ceil(amx::TILE), (t1 - t0).div_ceil(amx::TILE));
                amx::dot_tiles(kind, &wp, blocks, &ap, groups, amx::steps(cols), |b, g, tile| {
                    for (k, row) in tile.iter().enumerate() {
                        for (m, &v) in row.iter().enumerate() {
                            let (r, t) = (b * amx::TILE + m, g * amx::TILE + k);
                            if r < rows.len() && t < t1 - t0 {
                                out[t * rows.len() + r] = v;
                            }
                        }
                    }
                });
                out
            };
            let all = run(0..rows, 0, n);
            for t in 0..n {
                for r in 0..rows {
                    let (wr, xt) = (&w[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
                    let want: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let scale: f64 = wr.iter().zip(xt).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                    let got = all[t * rows + r] as f64;
                    assert!((got - want).abs() <= scale * 2f64.powi(-14), "{} {t},{r}: {got} vs {want}", dtype.name());
                }
            }
            let t = n.min(6) - 1;
            let r = rows.min(35) - 1;
            let alone = run(r..r + 1, t, t + 1);
            assert_eq!(alone[0].to_bits(), all[t * rows + r].to_bits(), "{} {rows}x{cols}", dtype.name());
            // The decode kernel (operands swapped, weights split row-major) on up to 16 tokens
            // gives the same bits.
            let few = n.min(amx::TILE);
            let width = amx::split_width(cols);
            let padded = rows.div_ceil(amx::TILE) * amx::TILE * width;
            let mut hi = vec![1u16; padded];
            let mut lo = vec![1u16; if kind == Float::F16 { padded } else { 0 }];
            amx::split_weights(kind, &bytes, 2 * cols, &mut hi, &mut lo);
            let mut ap = vec![0u16; amx::packed_acts_len(few, cols)];
            amx::pack_acts_pairs(&x[..few * cols], cols, few, &mut ap);
            let mut got = vec![f32::NAN; few * rows];
            amx::dot_rows_few(kind, &hi, &lo, rows.div_ceil(amx::TILE), &ap, amx::steps(cols), |b, tile| {
                for (i, row) in tile.iter().enumerate() {
                    for (k, &v) in row[..few].iter().enumerate() {
                        if b * amx::TILE + i < rows {
                            got[k * rows + b * amx::TILE + i] = v;
                        }
                    }
                }
            });
            let want: Vec<u32> = all[..few * rows].iter().map(|v| v.to_bits()).collect();
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want,
                "{} {rows}x{cols} decode kernel",
                dtype.name()
            );
        }
    }
}

/// The AMX matmul (on a CPU with AMX, whether or not `FERROLLM_AMX` turns it on for the
/// engine): the same bits for a token whatever the batch split (decode's ≤ 16-token kernel and
/// prefill's larger one alike), thread count and fused matrices, and close to f64.
#[test]
fn amx_matmul_is_batch_invariant_across_both_kernels() {
    if !amx::available() {
        eprintln!("no AMX on this CPU: the F16 and BF16 matmuls use the vector kernels");
        return;
    }
    let mut rng = StdRng::seed_from_u64(24);
    let (one, two) = (ThreadPool::new(1), ThreadPool::new(2));
    for (dtype, kind) in [(DType::F16, Float::F16), (DType::BF16, Float::BF16)] {
        for (rows, cols) in [(1, 8), (7, 45), (50, 200), (130, 576)] {
            let bytes: Vec<u8> = (0..rows).flat_map(|_| random_row(&mut rng, dtype, cols)).collect();
            let w = QMatrix::new(dtype, rows, cols, crate::Bytes::from_vec(bytes)).unwrap();
            let n = 53;
            let x = gauss(&mut rng, n * cols, 1.0);
            let run = |pool: &ThreadPool, t0: usize, t1: usize, out: &mut [f32]| {
                super::matmul::run_amx(pool, &[&w], &x[t0 * cols..t1 * cols], t1 - t0, &mut [out], kind)
            };
            let (mut a, mut b) = (vec![f32::NAN; n * rows], vec![f32::NAN; n * rows]);
            run(&one, 0, n, &mut a);
            run(&two, 0, n, &mut b);
            assert_eq!(a, b, "{} {rows}x{cols}: thread count changed the result", dtype.name());
            let mut split = vec![f32::NAN; n * rows];
            let mut t = 0;
            for k in [1usize, 16, 17, 3, 16] {
                run(&two, t, t + k, &mut split[t * rows..(t + k) * rows]);
                t += k;
            }
            assert_eq!(split, a, "{} {rows}x{cols}: batch split changed the result", dtype.name());
            let wf = w.to_f32();
            for (i, got) in a.iter().enumerate() {
                let (tok, r) = (i / rows, i % rows);
                let (wr, xt) = (&wf[r * cols..(r + 1) * cols], &x[tok * cols..(tok + 1) * cols]);
                let want: f64 = wr.iter().zip(xt).map(|(&p, &q)| p as f64 * q as f64).sum();
                let scale: f64 = wr.iter().zip(xt).map(|(&p, &q)| (p as f64 * q as f64).abs()).sum();
                assert!((*got as f64 - want).abs() <= scale * 2f64.powi(-14), "{}: {got} vs {want}", dtype.name());
            }
        }
    }
}

/// A batch in runs of prompt and generated tokens: each token's outputs are those of its own
/// kind computed alone (so the kind, never the batch, picks the kernel), for float weights (two
/// kernels on an AMX CPU in the default mode) and quantized ones (one kernel for both kinds),
/// with two fused matrices. Where the kinds share kernels the batch is one call and every
/// output the same bits as a plain `matmul_many`.
#[test]
fn token_runs_take_their_own_kinds_kernels() {
    use super::{TokenKind::*, TokenRun};
    let mut rng = StdRng::seed_from_u64(25);
    let pool = ThreadPool::new(2);
    let runs = [(3, Generated), (20, Prompt), (1, Generated), (2, Generated), (5, Prompt)]
        .map(|(len, kind)| TokenRun { len, kind });
    let n: usize = runs.iter().map(|r| r.len).sum();
    for dtype in [DType::F16, DType::BF16, DType::F32, DType::Q8_0] {
        let (rows, cols) = (40, 96);
        let mats: Vec<QMatrix> = (0..2)
            .map(|_| {
                let bytes: Vec<u8> = match dtype {
                    DType::Q8_0 => {
                        let w = gauss(&mut rng, rows * cols, 0.1);
                        w.chunks(cols).flat_map(|r| crate::quant::quantize_row(DType::Q8_0, r)).collect()
                    }
                    _ => (0..rows).flat_map(|_| random_row(&mut rng, dtype, cols)).collect(),
                };
                QMatrix::new(dtype, rows, cols, crate::Bytes::from_vec(bytes)).unwrap().prepared_for_matmul()
            })
            .collect();
        let ws: Vec<&QMatrix> = mats.iter().collect();
        let x = gauss(&mut rng, n * cols, 1.0);
        let (mut a, mut b) = (vec![f32::NAN; n * rows], vec![f32::NAN; n * rows]);
        super::matmul_many_runs(&pool, &ws, &x, &runs, &mut [&mut a, &mut b]);
        let mut t = 0;
        for run in &runs {
            for tok in t..t + run.len {
                let (mut ea, mut eb) = (vec![0f32; rows], vec![0f32; rows]);
                let xt = &x[tok * cols..(tok + 1) * cols];
                super::matmul_many_as(&pool, &ws, xt, 1, &mut [&mut ea, &mut eb], run.kind);
                assert_eq!(&a[tok * rows..(tok + 1) * rows], &ea[..], "{} token {tok}", dtype.name());
                assert_eq!(&b[tok * rows..(tok + 1) * rows], &eb[..], "{} token {tok}", dtype.name());
            }
            t += run.len;
        }
        let two_kernels = matches!(dtype, DType::F16 | DType::BF16) && amx::mode() == amx::Mode::Prompts;
        let (mut pa, mut pb) = (vec![0f32; n * rows], vec![0f32; n * rows]);
        super::matmul_many(&pool, &ws, &x, n, &mut [&mut pa, &mut pb]);
        assert_eq!(a == pa && b == pb, !two_kernels, "{}: kinds share kernels exactly when not on AMX", dtype.name());
    }
}
