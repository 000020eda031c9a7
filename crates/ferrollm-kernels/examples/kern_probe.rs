//! Row-kernel speed of the 32-weight block formats, one thread, weights hot in L1/L2: ns per
//! block for 1 and 4 tokens, best of many calls in on-CPU time (so it holds up on a busy machine).
//! For A/B runs of kernel changes: build it at both commits and alternate the binaries.
//!
//! `cargo run --release -p ferrollm-kernels --example kern_probe`
use ferrollm_kernels::quant::{self, act, block32, q4_0, q4_1, q5_0, q8_0};
use ferrollm_kernels::DType;
use std::time::Instant;

fn main() {
    let (rows, cols) = (64usize, 1536usize);
    let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    let xa: Vec<f32> = (0..4 * cols).map(|i| ((i * 104729 % 1000) as f32 / 500.0) - 1.0).collect();
    let mut a = vec![act::BlockQ8A::default(); 4 * cols / 32];
    for t in 0..4 {
        act::quantize_q8a(&xa[t * cols..(t + 1) * cols], &mut a[t * cols / 32..(t + 1) * cols / 32]);
    }
    let apr = cols / 32;
    for dt in [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q8_0] {
        let w: Vec<u8> = x.chunks_exact(cols).flat_map(|r| quant::quantize_row(dt, r)).collect();
        let rb = w.len() / rows;
        for k in [1usize, 4] {
            let acts: Vec<&[act::BlockQ8A]> = (0..k).map(|t| &a[t * apr..(t + 1) * apr]).collect();
            let mut out = vec![0f32; rows * k];
            let f: quant::common::DotRows<act::BlockQ8A> = match dt {
                DType::Q4_0 => block32::dot_rows::<q4_0::BlockQ4_0>,
                DType::Q4_1 => block32::dot_rows::<q4_1::BlockQ4_1>,
                DType::Q5_0 => block32::dot_rows::<q5_0::BlockQ5_0>,
                _ => q8_0::dot_rows,
            };
            let mut best = f64::MAX;
            for _ in 0..100 {
                let c0 = cpu_ns();
                let t = Instant::now();
                for _ in 0..50 {
                    f(&w, rb, &acts, &mut out);
                }
                let wall = t.elapsed().as_secs_f64();
                let cpu = (cpu_ns() - c0) as f64 * 1e-9;
                best = best.min(wall.min(cpu) / 50.0);
            }
            let blocks = (rows * apr) as f64;
            println!(
                "{:<5} T={k}: {:.2} ns/block, {:.1} GB/s",
                dt.name(),
                best / blocks * 1e9,
                w.len() as f64 / best / 1e9
            );
        }
    }
}

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}
extern "C" {
    fn clock_gettime(clk: i32, ts: *mut Timespec) -> i32;
}
fn cpu_ns() -> u64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: valid out pointer; CLOCK_THREAD_CPUTIME_ID = 3.
    unsafe { clock_gettime(3, &mut ts) };
    ts.sec as u64 * 1_000_000_000 + ts.nsec as u64
}
