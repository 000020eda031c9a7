//! Our dequantizers against ggml's, on blocks taken from the two reference models.
//!
//! `tests/data/ggml_ref/` holds, per tensor type, the raw bytes of the first blocks of two rows
//! of a real weight matrix (`TYPE.bin`) and what gguf-py — the Python port of ggml's reference
//! dequantizers — decodes them to (`TYPE.f32`); `extract.py` there regenerates them. Random
//! round trips cannot catch a layout that is wrong in the same way in both directions; this can.

use ferrollm_kernels::{quant, Bytes, DType, QMatrix, ThreadPool};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ggml_ref");
const ROWS: usize = 2;

fn load(dtype: DType) -> (Vec<u8>, Vec<f32>) {
    let raw = std::fs::read(format!("{DATA}/{}.bin", dtype.name())).unwrap();
    let want: Vec<f32> = std::fs::read(format!("{DATA}/{}.f32", dtype.name()))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (raw, want)
}

#[test]
fn dequantize_matches_ggml_on_real_weights() {
    for dtype in [DType::Q8_0, DType::Q5_0, DType::Q4_1, DType::Q4K, DType::Q6K] {
        let (raw, want) = load(dtype);
        let cols = want.len() / ROWS;
        assert_eq!(raw.len(), ROWS * dtype.row_bytes(cols), "{}", dtype.name());
        let mut got = vec![0f32; want.len()];
        for r in 0..ROWS {
            let row = &raw[r * dtype.row_bytes(cols)..(r + 1) * dtype.row_bytes(cols)];
            quant::dequantize_row(dtype, row, &mut got[r * cols..(r + 1) * cols]);
        }
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // The same products in the same order, up to the last bit of float rounding.
            assert!((g - w).abs() <= scale * 1e-6, "{} element {i}: {g} vs ggml {w}", dtype.name());
        }
        assert!(want.iter().any(|&v| v != 0.0));
    }
}

#[test]
fn matmul_matches_ggml_dequantized_weights() {
    let pool = ThreadPool::new(2);
    for dtype in [DType::Q8_0, DType::Q5_0, DType::Q4_1, DType::Q4K, DType::Q6K] {
        let (raw, want_w) = load(dtype);
        let cols = want_w.len() / ROWS;
        let w = QMatrix::new(dtype, ROWS, cols, Bytes::from_vec(raw)).unwrap();
        let n = 3;
        let x: Vec<f32> = (0..n * cols).map(|i| ((i * 7919 % 997) as f32 / 498.5 - 1.0) * 0.5).collect();
        let mut out = vec![0f32; n * ROWS];
        w.matmul(&pool, &x, n, &mut out);
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            let xn = xt.iter().map(|v| v * v).sum::<f32>().sqrt();
            for r in 0..ROWS {
                let wr = &want_w[r * cols..(r + 1) * cols];
                let want: f32 = wr.iter().zip(xt).map(|(a, b)| a * b).sum();
                let wn = wr.iter().map(|v| v * v).sum::<f32>().sqrt();
                let err = (out[t * ROWS + r] - want).abs() / (wn * xn);
                assert!(err < 0.01, "{} token {t} row {r}: {} vs {want} ({err:.2e})", dtype.name(), out[t * ROWS + r]);
            }
        }
    }
}
