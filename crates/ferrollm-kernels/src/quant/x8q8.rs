//! Q8_0 weights interleaved eight rows at a time: the [`super::x8`] scheme for signed 8-bit
//! quants. SmolLM2's tied output head and Qwen2.5's output head (the largest tensors each model
//! reads per token) are Q8_0.
//!
//! `maddubs` wants one unsigned operand, so each step takes `|w|` once for all tokens and moves
//! the weights' signs onto the activations (`sign`). A lane's two products reach 2·128·127, so
//! every step widens to i32 (`madd`) before the next. Each output is
//! `acc = fma(isum, dw·da, acc)` block after block, in the scalar path too.

use super::act::BlockQ8A;
use super::common::{f16_to_f32, has_avx2, Block};
use super::q8_0::BlockQ8_0;
use super::x8::{Interleaved, ROWS};

/// One column position (32 weights) of eight rows: step `s` (0..8) is the 32 bytes at `32s`,
/// byte `4r + i` row `r`'s quant `4s + i`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct X8Q8_0 {
    pub d: [u8; 16],
    pub qs: [i8; 256],
}
assert_block!(X8Q8_0, 272);

// SAFETY: repr(C) byte arrays only: alignment 1, no padding, any bit pattern is valid.
unsafe impl Block for X8Q8_0 {
    const BYTES: usize = 272;
    const ELEMS: usize = 32 * ROWS;
}

impl X8Q8_0 {
    /// Packs one block of each of eight rows.
    pub fn pack(rows: [&BlockQ8_0; ROWS]) -> Self {
        let mut out = X8Q8_0 { d: [0; 16], qs: [0; 256] };
        for (r, w) in rows.iter().enumerate() {
            out.d[2 * r..2 * r + 2].copy_from_slice(&w.d);
            for e in 0..32 {
                out.qs[32 * (e / 4) + 4 * r + e % 4] = w.qs[e];
            }
        }
        out
    }

    /// Row `r`'s quants in element order, and its scale.
    pub fn row(&self, r: usize) -> ([i8; 32], f32) {
        let q = std::array::from_fn(|e| self.qs[32 * (e / 4) + 4 * r + e % 4]);
        (q, f16_to_f32([self.d[2 * r], self.d[2 * r + 1]]))
    }
}

/// Interleaves a row-major Q8_0 matrix (`rows` a multiple of 8); layout as in [`super::x8::interleave`].
pub fn interleave(bytes: &[u8], rows: usize) -> Vec<u8> {
    super::x8::interleave_with(bytes, rows, X8Q8_0::pack)
}

/// Scalar reference of [`Interleaved::dot_group`], bit-identical to the AVX2 path.
pub fn dot_group_scalar(blocks: &[X8Q8_0], acts: &[&[BlockQ8A]], out: &mut [[f32; ROWS]]) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        assert_eq!(a.len(), blocks.len());
        *o = [0f32; ROWS];
        for (blk, ab) in blocks.iter().zip(a.iter()) {
            for (r, acc) in o.iter_mut().enumerate() {
                let (q, d) = blk.row(r);
                let isum: i32 = q.iter().zip(&ab.qs).map(|(&q, &y)| q as i32 * y as i32).sum();
                *acc = (isum as f32).mul_add(d * ab.d, *acc);
            }
        }
    }
}

impl Interleaved for X8Q8_0 {
    type Act = BlockQ8A;

    fn dot_group(blocks: &[Self], acts: &[&[BlockQ8A]], out: &mut [[f32; ROWS]]) {
        #[cfg(target_arch = "x86_64")]
        {
            if super::common::has_avxvnni() {
                // SAFETY: AVX2, FMA, F16C and AVX-VNNI were detected.
                unsafe { vnni::dot_group(blocks, acts, out) };
                return;
            }
            if has_avx2() {
                // SAFETY: AVX2, FMA and F16C were detected.
                unsafe { avx2::dot_group(blocks, acts, out) };
                return;
            }
        }
        #[cfg(target_arch = "aarch64")]
        if super::common::has_neon() {
            // SAFETY: NEON was detected.
            unsafe { super::x8_neon::dot_group_q8(blocks, acts, out) };
            return;
        }
        dot_group_scalar(blocks, acts, out)
    }

    fn dequantize_row(blocks: &[Self], r: usize, out: &mut [f32]) {
        for (b, y) in blocks.iter().zip(out.chunks_exact_mut(32)) {
            let (q, d) = b.row(r);
            for (yi, &q) in y.iter_mut().zip(&q) {
                *yi = q as f32 * d;
            }
        }
    }

    fn tokens_per_call() -> usize {
        // The plain AVX2 kernel runs tokens in threes (see `x8q8_kernel!`).
        let plain_avx2 = has_avx2() && !super::common::has_avxvnni() && !super::common::has_avx512vnni();
        if plain_avx2 {
            6
        } else {
            4
        }
    }

    fn has_pair_kernel() -> bool {
        super::common::has_avx512vnni()
    }

    fn dot_group_pair(a: &[Self], b: &[Self], acts: &[&[BlockQ8A]], out: &mut [[f32; 2 * ROWS]]) {
        #[cfg(target_arch = "x86_64")]
        if super::common::has_avx512vnni() {
            // SAFETY: AVX-512 F/BW/VNNI, AVX2, FMA and F16C were detected.
            unsafe { avx512::dot_group_pair(a, b, acts, out) };
            return;
        }
        super::x8::dot_group_pair_by_halves(a, b, acts, out)
    }
}

/// Two groups at once on AVX-512 (see [`super::x8::avx512`]). AVX-512 has no `vpsignb`: the
/// weights' sign bits become a mask once per step, and a masked subtraction negates each
/// token's activation bytes under it.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::x8::avx512::{pair128, pair256, store_pair_tokens};
    use super::super::x86::act4;
    use super::*;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_group_pair(a: &[X8Q8_0], b: &[X8Q8_0], acts: &[&[BlockQ8A]], out: &mut [[f32; 2 * ROWS]]) {
        assert_eq!(a.len(), b.len());
        for x in acts {
            assert_eq!(x.len(), a.len());
        }
        match acts.len() {
            1 => store_pair_tokens(&dot_blocks::<1>(a, b, acts.try_into().unwrap()), out),
            2 => store_pair_tokens(&dot_blocks::<2>(a, b, acts.try_into().unwrap()), out),
            3 => store_pair_tokens(&dot_blocks::<3>(a, b, acts.try_into().unwrap()), out),
            4 => store_pair_tokens(&dot_blocks::<4>(a, b, acts.try_into().unwrap()), out),
            n => panic!("token tile of {n}"),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn dot_blocks<const T: usize>(ga: &[X8Q8_0], gb: &[X8Q8_0], acts: &[&[BlockQ8A]; T]) -> [__m512; T] {
        let mut acc = [_mm512_setzero_ps(); T];
        for (i, (x, y)) in ga.iter().zip(gb).enumerate() {
            let dw = _mm512_cvtph_ps(pair128(&x.d, &y.d));
            let mut isum = [_mm512_setzero_si512(); T];
            for s in 0..8 {
                let w = pair256(&x.qs[32 * s..], &y.qs[32 * s..]);
                let (wa, neg) = (_mm512_abs_epi8(w), _mm512_movepi8_mask(w));
                for t in 0..T {
                    let a = _mm512_set1_epi32(act4(&acts[t][i].qs, 4 * s));
                    let a = _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a);
                    isum[t] = _mm512_dpbusd_epi32(isum[t], wa, a);
                }
            }
            for t in 0..T {
                let sc = _mm512_mul_ps(dw, _mm512_set1_ps(acts[t][i].d));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), sc, acc[t]);
            }
        }
        acc
    }
}

/// The x86 kernel, once per instruction set (see [`super::x86::dot_u8i8`]): a step is
/// `sign`, then `maddubs` + `madd` + `add` with AVX2 or one `vpdpbusd` with AVX-VNNI.
#[cfg(target_arch = "x86_64")]
macro_rules! x8q8_kernel {
    ($isa:ident, $features:literal, pairs: $pairs:literal) => {
        pub(crate) mod $isa {
            use super::super::x86::{broadcast4, dot_group_by_tokens, dot_u8i8, prefetch_ahead, store_rows8};
            use super::*;
            use std::arch::x86_64::*;

            /// # Safety
            /// The CPU must support the features this module is compiled for.
            #[target_feature(enable = $features)]
            pub unsafe fn dot_group(blocks: &[X8Q8_0], acts: &[&[BlockQ8A]], out: &mut [[f32; ROWS]]) {
                if $pairs && acts.len() > 4 {
                    // Threes (the driver passes up to six, `tokens_per_call`).
                    let (a, b) = acts.split_at(3);
                    let (oa, ob) = out.split_at_mut(3);
                    dot_group_by_tokens!(dot_blocks; blocks, a, oa);
                    dot_group_by_tokens!(dot_blocks; blocks, b, ob);
                    return;
                }
                if $pairs && acts.len() == 4 {
                    // Two tokens at a time: with four, LLVM hoists every step's weights and
                    // their absolute values ahead and spills the accumulators; two ran the
                    // AVX2 prefill matmuls about 5% faster (gemv_bench prefill, AVX2 only on
                    // a Xeon) and a Q8_0 prefill 4%. With AVX-VNNI four stay faster.
                    let (a, b) = acts.split_at(2);
                    let (oa, ob) = out.split_at_mut(2);
                    dot_group_by_tokens!(dot_blocks; blocks, a, oa);
                    dot_group_by_tokens!(dot_blocks; blocks, b, ob);
                    return;
                }
                dot_group_by_tokens!(dot_blocks; blocks, acts, out)
            }

            #[inline]
            #[target_feature(enable = $features)]
            fn dot_blocks<const T: usize>(blocks: &[X8Q8_0], acts: &[&[BlockQ8A]; T]) -> [__m256; T] {
                let mut acc = [_mm256_setzero_ps(); T];
                for (b, blk) in blocks.iter().enumerate() {
                    prefetch_ahead(blk);
                    // SAFETY: `d` is 16 readable bytes; unaligned load.
                    let dw = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(blk.d.as_ptr().cast()) });
                    let mut isum = [_mm256_setzero_si256(); T];
                    for s in 0..8 {
                        // SAFETY: step `s` is 32 readable bytes of `qs`; unaligned load.
                        let w = unsafe { _mm256_loadu_si256(blk.qs.as_ptr().add(32 * s).cast()) };
                        let wa = _mm256_abs_epi8(w);
                        for t in 0..T {
                            let a = _mm256_sign_epi8(broadcast4(&acts[t][b].qs, 4 * s), w);
                            // A lane's two products reach 2·128·127: widen every step.
                            isum[t] = dot_u8i8!($isa, i32 isum[t], wa, a);
                        }
                    }
                    for t in 0..T {
                        let sc = _mm256_mul_ps(dw, _mm256_set1_ps(acts[t][b].d));
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), sc, acc[t]);
                    }
                }
                acc
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
x8q8_kernel!(avx2, "avx2,fma,f16c", pairs: true);
#[cfg(target_arch = "x86_64")]
x8q8_kernel!(vnni, "avx2,fma,f16c,avxvnni", pairs: false);

#[cfg(test)]
mod tests {
    use super::super::common::as_blocks;
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn packs_and_matches_the_row_kernel_bit_for_bit_across_tiles() {
        let mut rng = StdRng::seed_from_u64(11);
        for per_row in [1usize, 5, 18] {
            let rows = 16;
            // Random bytes cover −128, which the quantizer never writes.
            let mut bytes: Vec<u8> = (0..rows * per_row * 34).map(|_| rng.gen()).collect();
            for blk in bytes.chunks_exact_mut(34) {
                blk[..2].copy_from_slice(&super::super::common::f32_to_f16(rng.gen_range(-0.1..0.1)));
            }
            let src: &[BlockQ8_0] = as_blocks(&bytes);
            let packed = interleave(&bytes, rows);
            let x8: &[X8Q8_0] = as_blocks(&packed);
            let xs: Vec<Vec<BlockQ8A>> = super::super::x8::tests::random_acts(&mut rng, 6, per_row);
            let acts: Vec<&[BlockQ8A]> = xs.iter().map(|a| a.as_slice()).collect();
            for g in 0..rows / ROWS {
                let group = &x8[g * per_row..(g + 1) * per_row];
                let mut want = [[0f32; ROWS]; 6];
                dot_group_scalar(group, &acts, &mut want);
                for r in 0..ROWS {
                    let row = &src[(g * ROWS + r) * per_row..(g * ROWS + r + 1) * per_row];
                    for (b, blk) in row.iter().enumerate() {
                        let (q, d) = group[b].row(r);
                        assert_eq!((q, d), (blk.qs, f16_to_f32(blk.d)));
                    }
                    let mut reference = [0f32; 4];
                    super::super::q8_0::dot_scalar(row, &acts[..4], &mut reference);
                    for t in 0..4 {
                        let tol = 1e-4 * (1.0 + reference[t].abs());
                        assert!((want[t][r] - reference[t]).abs() <= tol, "{} vs {}", want[t][r], reference[t]);
                    }
                }
                if g == 1 {
                    let first = &x8[..per_row];
                    for k in 1..=4 {
                        let mut w0 = [[0f32; ROWS]; 4];
                        dot_group_scalar(first, &acts[..k], &mut w0);
                        let mut got = [[0f32; 2 * ROWS]; 4];
                        X8Q8_0::dot_group_pair(first, group, &acts[..k], &mut got);
                        for t in 0..k {
                            assert_eq!(
                                (&got[t][..ROWS], &got[t][ROWS..]),
                                (&w0[t][..], &want[t][..]),
                                "pair, {k} tokens"
                            );
                        }
                    }
                }
                for k in 1..=6 {
                    // Up to what the driver passes here (six on plain AVX2, in threes).
                    if k <= X8Q8_0::tokens_per_call() {
                        let mut got = [[0f32; ROWS]; 6];
                        X8Q8_0::dot_group(group, &acts[..k], &mut got);
                        assert_eq!(got[..k], want[..k], "{k} tokens: fast path is not bit-identical to the scalar one");
                    }
                    #[cfg(target_arch = "x86_64")]
                    {
                        type Kernel = unsafe fn(&[X8Q8_0], &[&[BlockQ8A]], &mut [[f32; ROWS]]);
                        // The AVX2 kernel takes up to six tokens, the AVX-VNNI one four.
                        let kernels: [(&str, bool, Kernel); 2] = [
                            ("AVX2", has_avx2(), avx2::dot_group),
                            ("AVX-VNNI", k <= 4 && super::super::common::has_avxvnni(), vnni::dot_group),
                        ];
                        for (isa, _, kernel) in kernels.into_iter().filter(|k| k.1) {
                            let mut got = [[0f32; ROWS]; 6];
                            // SAFETY: only kernels whose features this CPU has are run.
                            unsafe { kernel(group, &acts[..k], &mut got) };
                            assert_eq!(got[..k], want[..k], "{k} tokens: the {isa} kernel differs from the scalar one");
                        }
                    }
                }
            }
        }
    }
}
