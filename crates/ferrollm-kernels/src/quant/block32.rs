//! Kernels shared by the 32-element "unsigned quant" formats (Q4_0, Q4_1, Q5_0, Q5_1).
//!
//! Each such block decodes as `w[i] = d * q[i] + m` with `q[i]` in `0..32` (Q4_0 is
//! `d * (q - 8)`, i.e. `m = -8d`). Against a [`BlockQ8A`] activation `a[i] = da * qa[i]`:
//! `Σ w·a = d·da·Σ q·qa + m·sa`, so the inner loop is one unsigned×signed byte dot product
//! per block (`maddubs`), and the offset costs one multiply-add per block.

use super::act::BlockQ8A;
use super::common::{as_blocks, block_bytes, has_avx2, Block};

/// A block that decodes as `d * q + m` with unsigned quants below 32.
pub trait Unsigned32: Block {
    /// The 32 quants in element order, with `(d, m)`.
    fn unpack(&self) -> ([u8; 32], f32, f32);

    /// The same with AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn unpack_avx2(&self) -> (std::arch::x86_64::__m256i, f32, f32);
}

/// `out[t] = Σ w·acts[t]` for up to 4 activation rows; scalar reference.
pub fn dot_scalar<W: Unsigned32>(w: &[W], acts: &[&[BlockQ8A]], out: &mut [f32]) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        assert_eq!(a.len(), w.len());
        let mut sum = 0f32;
        for (b, ab) in w.iter().zip(a.iter()) {
            let (q, d, m) = b.unpack();
            let isum: i32 = q.iter().zip(&ab.qs).map(|(&q, &y)| q as i32 * y as i32).sum();
            sum += d * ab.d * isum as f32 + m * ab.s;
        }
        *o = sum;
    }
}

/// `out[r * k + t]` for every row in `bytes` (rows of `row_bytes`) and the `k = acts.len()`
/// (1 to 4) tokens, with the fastest available code.
pub fn dot_rows<W: Unsigned32>(bytes: &[u8], row_bytes: usize, acts: &[&[BlockQ8A]], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected.
        unsafe { avx2::dot_rows::<W>(bytes, row_bytes, acts, out) };
        return;
    }
    let k = acts.len();
    for (row, o) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(k)) {
        dot_scalar::<W>(as_blocks(row), acts, o);
    }
}

/// `out[t] = Σ w·acts[t]` for up to 4 activation rows, with the fastest available code.
pub fn dot<W: Unsigned32>(w: &[W], acts: &[&[BlockQ8A]], out: &mut [f32]) {
    if w.is_empty() {
        out[..acts.len()].fill(0.0);
        return;
    }
    dot_rows::<W>(block_bytes(w), std::mem::size_of_val(w), acts, &mut out[..acts.len()]);
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use super::super::common::for_each_row;
    use super::super::x86::*;
    use super::*;
    use std::arch::x86_64::*;

    /// `out[r * k + t]` for every row in `bytes` and the `k = acts.len()` (1 to 4) tokens.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows<W: Unsigned32>(bytes: &[u8], row_bytes: usize, acts: &[&[BlockQ8A]], out: &mut [f32]) {
        match acts.len() {
            1 => for_each_row::<_, 1>(bytes, row_bytes, acts, out, |r, a| dot_tile::<W, 1>(as_blocks(r), a)),
            2 => for_each_row::<_, 2>(bytes, row_bytes, acts, out, |r, a| dot_tile::<W, 2>(as_blocks(r), a)),
            3 => for_each_row::<_, 3>(bytes, row_bytes, acts, out, |r, a| dot_tile::<W, 3>(as_blocks(r), a)),
            4 => for_each_row::<_, 4>(bytes, row_bytes, acts, out, |r, a| dot_tile::<W, 4>(as_blocks(r), a)),
            n => panic!("token tile of {n}"),
        }
    }

    /// One weight row against `T` activation rows: each block is unpacked once for all `T`.
    /// Blocks go in pairs with separate accumulators, so that with one token the loop is not
    /// bound by the latency of a single FMA chain.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_tile<W: Unsigned32, const T: usize>(w: &[W], acts: &[&[BlockQ8A]; T]) -> [f32; T] {
        for a in acts {
            assert_eq!(a.len(), w.len());
        }
        // Two accumulator sets (vector products and scalar offsets), one per block of a pair.
        let mut acc = [[_mm256_setzero_ps(); T]; 2];
        let mut macc = [[0f32; T]; 2];
        let step = |i: usize, acc: &mut [__m256; T], macc: &mut [f32; T]| {
            // SAFETY: this function's target features are those `unpack_avx2` needs.
            let (q, d, m) = unsafe { w[i].unpack_avx2() };
            let dv = _mm256_set1_ps(d);
            for t in 0..T {
                let ab = &acts[t][i];
                let p = _mm256_cvtepi32_ps(dot_u8_i8(q, load32(&ab.qs)));
                acc[t] = _mm256_fmadd_ps(p, _mm256_mul_ps(dv, _mm256_broadcast_ss(&ab.d)), acc[t]);
                macc[t] += m * ab.s;
            }
        };
        let pairs = w.len() / 2;
        let [acc0, acc1] = &mut acc;
        let [macc0, macc1] = &mut macc;
        for i in 0..pairs {
            step(2 * i, acc0, macc0);
            step(2 * i + 1, acc1, macc1);
        }
        if w.len() % 2 == 1 {
            step(w.len() - 1, acc0, macc0);
        }
        let mut out = [0f32; T];
        for t in 0..T {
            out[t] = hsum_ps(_mm256_add_ps(acc[0][t], acc[1][t])) + (macc[0][t] + macc[1][t]);
        }
        out
    }
}
