//! Kernels shared by the 32-element "unsigned quant" formats (Q4_0, Q4_1, Q5_0, Q5_1).
//!
//! Each such block decodes as `w[i] = d * q[i] + m` with `q[i]` in `0..32` (Q4_0 is
//! `d * (q - 8)`, i.e. `m = -8d`). Against a [`BlockQ8A`] activation `a[i] = da * qa[i]`:
//! `Σ w·a = d·da·Σ q·qa + m·sa`, so the inner loop is one unsigned×signed byte dot product
//! per block (`maddubs`), and the offset costs one multiply-add per block.

use super::act::BlockQ8A;
#[cfg(target_arch = "x86_64")]
use super::common::has_avx2;
use super::common::{as_blocks, block_bytes, Block};

/// A block that decodes as `d * q + m` with unsigned quants below 32.
pub trait Unsigned32: Block {
    /// `Some(c)` when the offset is a fixed multiple of the scale, `m = c·d` (Q4_0: −8, Q5_0: −16);
    /// `None` when the block stores `m` itself ([`Unsigned32::m_bits`]).
    const M_PER_D: Option<f32>;

    /// The 32 quants in element order, with `(d, m)`.
    fn unpack(&self) -> ([u8; 32], f32, f32);

    /// The f16 bits of the scale `d`.
    fn d_bits(&self) -> u16;

    /// The f16 bits of the stored offset `m` (unused when [`Unsigned32::M_PER_D`] is `Some`).
    fn m_bits(&self) -> u16;

    /// The 32 quants in element order, as bytes, with AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn quants_avx2(&self) -> std::arch::x86_64::__m256i;
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
    ///
    /// Blocks go in groups of four so that the per-block scalar work is done four wide: the four
    /// f16 scales (and offsets) convert in one F16C instruction, the activation scales and sums
    /// load as one vector each, and the four blocks' integer products are reduced together
    /// (lanes `j` and `j + 4` end up holding the two halves of block `j`) before one float
    /// conversion and one FMA per group and token. Leftover blocks (fewer than four) take the
    /// one-block path.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_tile<W: Unsigned32, const T: usize>(w: &[W], acts: &[&[BlockQ8A]; T]) -> [f32; T] {
        for a in acts {
            assert_eq!(a.len(), w.len());
        }
        let mut acc = [_mm256_setzero_ps(); T];
        let mut macc = [_mm_setzero_ps(); T];
        let groups = w.len() / 4;
        for g in 0..groups {
            let b: &[W; 4] = w[4 * g..4 * g + 4].try_into().unwrap();
            // Both 128-bit lanes hold the four scales, as the reduced products below want.
            let d8 = f16x4x2(b.map(|b| b.d_bits()));
            let m4 = match W::M_PER_D {
                Some(c) => _mm_mul_ps(_mm256_castps256_ps128(d8), _mm_set1_ps(c)),
                None => _mm256_castps256_ps128(f16x4x2(b.map(|b| b.m_bits()))),
            };
            // SAFETY: this function's target features are those `quants_avx2` needs.
            let q = b.map(|b| unsafe { b.quants_avx2() });
            for t in 0..T {
                let a: &[BlockQ8A; 4] = acts[t][4 * g..4 * g + 4].try_into().unwrap();
                let p: [__m256i; 4] = std::array::from_fn(|j| dot_u8_i8(q[j], load32(&a[j].qs)));
                let (ad, asum) = act_scales(a);
                let sc = _mm256_mul_ps(d8, _mm256_set_m128(ad, ad));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce4(p)), sc, acc[t]);
                macc[t] = _mm_fmadd_ps(m4, asum, macc[t]);
            }
        }
        let mut out = [0f32; T];
        for t in 0..T {
            out[t] = hsum_ps(acc[t]) + hsum_ps128(macc[t]);
        }
        for i in 4 * groups..w.len() {
            let b = &w[i];
            let d = f16_to_f32(b.d_bits().to_le_bytes());
            let m = match W::M_PER_D {
                Some(c) => c * d,
                None => f16_to_f32(b.m_bits().to_le_bytes()),
            };
            // SAFETY: as above.
            let q = unsafe { b.quants_avx2() };
            for t in 0..T {
                let ab = &acts[t][i];
                out[t] += d * ab.d * hsum_epi32(dot_u8_i8(q, load32(&ab.qs))) as f32 + m * ab.s;
            }
        }
        out
    }
}
