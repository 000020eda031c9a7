//! Temporary probe: on-CPU time per call (schedstat) for a single-thread matmul, immune to preemption.
use ferrollm_kernels::{quant, DType, ThreadPool};
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat").unwrap().split_whitespace().next().unwrap().parse().unwrap()
}
fn main() {
    let pool = ThreadPool::new(1);
    for dtype in [DType::Q8_0, DType::Q4K, DType::Q4_0] {
        let (rows, cols) = (576, 1536);
        let vals: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        let w = quant::quantize_matrix(dtype, rows, cols, &vals);
        for n in [4usize, 16, 64, 512] {
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 104729 % 1000) as f32 / 500.0) - 1.0).collect();
            let mut out = vec![0f32; n * rows];
            w.matmul(&pool, &x, n, &mut out);
            let reps = (8192 / n).max(8);
            let c0 = cpu_ns();
            for _ in 0..reps {
                w.matmul(&pool, &x, n, &mut out);
            }
            let best = (cpu_ns() - c0) as f64 * 1e-9 / reps as f64;
            println!("{} n={n:<4} {:>6.1} GFLOP/s (on-CPU, 1 thread)", dtype.name(), 2.0 * (rows * cols * n) as f64 / best / 1e9);
        }
    }
}
