//! AMX path pieces, one thread: weight packing from a cold 256 MiB stream, and the tile kernel
//! on hot packed operands. `cargo run --release -p ferrollm-kernels --example amx_probe`
use ferrollm_kernels::quant::amx;
use ferrollm_kernels::quant::float::Float;
use std::time::Instant;

fn main() {
    if !amx::available() {
        println!("no AMX here");
        return;
    }
    let cols = 576;
    let rows_total = (256 << 20) / (2 * cols);
    let bytes: Vec<u8> = (0..rows_total * cols * 2).map(|i| if i % 2 == 1 { 0x3c } else { (i % 251) as u8 }).collect();
    let rb = 2 * cols;
    let sub = 64;
    let mut packed = vec![0u16; amx::packed_weights_len(Float::F16, sub, cols)];
    for _ in 0..3 {
        let t = Instant::now();
        for s in (0..rows_total / sub * sub).step_by(sub) {
            amx::pack_weights(Float::F16, &bytes[s * rb..(s + sub) * rb], rb, &mut packed);
        }
        let dt = t.elapsed().as_secs_f64();
        println!("pack: {:.2} GB/s of f16 read", (rows_total * rb) as f64 / dt / 1e9);
    }
    for n in [1usize, 16, 64, 256] {
        let x: Vec<f32> = (0..n * cols).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        let mut ap = vec![0u16; amx::packed_acts_len(n, cols)];
        amx::pack_acts(&x, cols, 0, n, &mut ap);
        amx::pack_weights(Float::F16, &bytes[..sub * rb], rb, &mut packed);
        let groups = n.div_ceil(16);
        let reps = 20000 / groups;
        let mut sink = 0f32;
        let t = Instant::now();
        for _ in 0..reps {
            amx::dot_tiles(Float::F16, &packed, sub / 16, &ap, groups, amx::steps(cols), |_, _, tile| {
                sink += tile[0][0]
            });
        }
        let dt = t.elapsed().as_secs_f64();
        let flops = 2.0 * (sub * cols * n * reps) as f64;
        println!(
            "tiles n={n}: {:.1} GFLOP/s useful ({:.2} us per 64-row call) {sink}",
            flops / dt / 1e9,
            dt / reps as f64 * 1e6
        );
    }
}
