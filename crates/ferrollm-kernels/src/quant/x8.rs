//! Eight weight rows interleaved block by block, for the 32-element unsigned formats (Q4_0,
//! Q4_1, Q5_0, Q5_1): the layout matmuls read fastest, made once at load time.
//!
//! Why: in GGUF's row-major layout a kernel dots one row at a time, so every block costs a
//! widening, a horizontal reduction and a float conversion per token. Interleaved, one 32-byte
//! load holds four quants of each of eight rows; one `maddubs` against four broadcast
//! activation bytes gives eight rows' partial sums at once. Eight such steps cover a block, the
//! sums stay in i16 (they cannot overflow, see `avx2::dot_blocks`), and one widening, conversion and
//! FMA per block and token update eight rows' accumulators, which end as eight outputs with no
//! horizontal sum. This is llama.cpp's "repack" idea (its `q4_0_8x8`), for our formats.
//!
//! Every output is computed as `acc = fma(isum, dw·da, acc); acc = fma(m, sa, acc)`, block
//! after block, whatever the number of tokens in the call. The scalar path performs the same
//! operations with `f32::mul_add`, so results are bit-identical between paths and between
//! batch shapes: a token's logits do not depend on what else is in the step.
//!
//! Bytes per row are those of the source format, so decode streams exactly as many bytes.

use super::act::BlockQ8A;
use super::block32::Unsigned32;
#[cfg(target_arch = "x86_64")]
use super::common::has_avx2;
use super::common::{as_blocks, f16_to_f32, Block};
use super::{q4_0, q4_1, q5_0, q5_1};
use crate::DType;

/// Rows per interleaved group.
pub const ROWS: usize = 8;
/// Most tokens any [`Interleaved::dot_group`] takes in one call.
pub const MAX_TOKENS_PER_CALL: usize = 6;

/// One column position (32 weights) of eight rows.
///
/// `qs`: four 32-byte chunks; in chunk `c`, byte `4r + i` holds row `r`'s quant `4c + i` in its
/// low nibble and quant `16 + 4c + i` in its high nibble. Step `s` (0..8) is chunk `s`'s low
/// nibbles for `s < 4`, chunk `s - 4`'s high nibbles after. `qh` (Q5 formats, `HB = 32`): bit
/// `s` of byte `4r + i` is the fifth bit of that byte's quant in step `s`, so one shift and one
/// mask give a step's fifth bits in place. `m` (formats that
/// store an offset, `MB = 16`): the eight f16 offsets.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockX8<const MB: usize, const HB: usize> {
    pub d: [u8; 16],
    pub m: [u8; MB],
    pub qh: [u8; HB],
    pub qs: [u8; 128],
}

// SAFETY: repr(C) byte arrays only: alignment 1, no padding, any bit pattern is valid.
unsafe impl<const MB: usize, const HB: usize> Block for BlockX8<MB, HB> {
    const BYTES: usize = 16 + MB + HB + 128;
    const ELEMS: usize = 32 * ROWS;
}

pub type X8Q4_0 = BlockX8<0, 0>;
pub type X8Q4_1 = BlockX8<16, 0>;
pub type X8Q5_0 = BlockX8<0, 32>;
pub type X8Q5_1 = BlockX8<16, 32>;
assert_block!(X8Q4_0, 144);
assert_block!(X8Q4_1, 160);
assert_block!(X8Q5_0, 176);
assert_block!(X8Q5_1, 192);

/// A row-major block format and the interleaved block it packs into.
pub trait Interleave: Unsigned32 {
    const MB: usize;
    const HB: usize;
    /// The nibble bytes (`qs[j]`: element `j` low, `j + 16` high) and the fifth bits (bit `e`
    /// of element `e`; 0 for the 4-bit formats).
    fn raw_quants(&self) -> (&[u8; 16], u32);
}

impl Interleave for q4_0::BlockQ4_0 {
    const MB: usize = 0;
    const HB: usize = 0;
    fn raw_quants(&self) -> (&[u8; 16], u32) {
        (&self.qs, 0)
    }
}
impl Interleave for q4_1::BlockQ4_1 {
    const MB: usize = 16;
    const HB: usize = 0;
    fn raw_quants(&self) -> (&[u8; 16], u32) {
        (&self.qs, 0)
    }
}
impl Interleave for q5_0::BlockQ5_0 {
    const MB: usize = 0;
    const HB: usize = 32;
    fn raw_quants(&self) -> (&[u8; 16], u32) {
        (&self.qs, u32::from_le_bytes(self.qh))
    }
}
impl Interleave for q5_1::BlockQ5_1 {
    const MB: usize = 16;
    const HB: usize = 32;
    fn raw_quants(&self) -> (&[u8; 16], u32) {
        (&self.qs, u32::from_le_bytes(self.qh))
    }
}

/// Element index of byte `i` (0..4) of step `s` (0..8).
#[inline(always)]
pub(super) fn element(s: usize, i: usize) -> usize {
    if s < 4 {
        4 * s + i
    } else {
        16 + 4 * (s - 4) + i
    }
}

/// An interleaved layout and its kernels, for the matmul driver and row lookups.
pub trait Interleaved: Block {
    /// The activation blocks the kernels take, one per block of a row (whose width is theirs).
    type Act: super::act::ActBlock;
    /// `out[t][r]` = row `r` of the group · `acts[t]`, for the group's blocks (one per column
    /// position) and 1 to 4 tokens; bit-identical however many tokens come at once.
    fn dot_group(blocks: &[Self], acts: &[&[Self::Act]], out: &mut [[f32; ROWS]]);
    /// Most tokens one [`Interleaved::dot_group`] call takes when no pair kernel runs: 4, or up
    /// to [`MAX_TOKENS_PER_CALL`] where the kernel runs them in threes.
    fn tokens_per_call() -> usize {
        4
    }
    /// Row `r` (0..8) of the group, dequantized into `out` (32 per block).
    fn dequantize_row(blocks: &[Self], r: usize, out: &mut [f32]);
    /// Whether [`Interleaved::dot_group_pair`] has a kernel of its own on this CPU (one that
    /// beats two `dot_group` calls); the matmul driver then visits groups two at a time.
    fn has_pair_kernel() -> bool {
        false
    }
    /// `out[t]` = the rows of groups `a` (0..8) and `b` (8..16) · `acts[t]`: both groups at
    /// once, with the same bits as [`Interleaved::dot_group`] on each.
    fn dot_group_pair(a: &[Self], b: &[Self], acts: &[&[Self::Act]], out: &mut [[f32; 2 * ROWS]]) {
        dot_group_pair_by_halves(a, b, acts, out)
    }
}

/// [`Interleaved::dot_group_pair`] as two [`Interleaved::dot_group`] calls.
pub fn dot_group_pair_by_halves<B: Interleaved>(a: &[B], b: &[B], acts: &[&[B::Act]], out: &mut [[f32; 2 * ROWS]]) {
    let mut tile = [[0f32; ROWS]; 4];
    for (h, g) in [a, b].into_iter().enumerate() {
        B::dot_group(g, acts, &mut tile[..acts.len()]);
        for (o, t) in out.iter_mut().zip(&tile) {
            o[h * ROWS..][..ROWS].copy_from_slice(t);
        }
    }
}

impl<const MB: usize, const HB: usize> Interleaved for BlockX8<MB, HB> {
    type Act = BlockQ8A;

    fn dot_group(blocks: &[Self], acts: &[&[BlockQ8A]], out: &mut [[f32; ROWS]]) {
        dot_group(blocks, acts, out)
    }
    fn dequantize_row(blocks: &[Self], r: usize, out: &mut [f32]) {
        dequantize_group_row(blocks, r, out)
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
        dot_group_pair_by_halves(a, b, acts, out)
    }
}

impl<const MB: usize, const HB: usize> BlockX8<MB, HB> {
    /// The offset per unit of scale of the formats that store none: Q4_0 (−8), Q5_0 (−16).
    pub const M_PER_D: f32 = if MB > 0 {
        0.0
    } else if HB > 0 {
        -16.0
    } else {
        -8.0
    };

    /// Packs block `b` of eight rows.
    pub fn pack<W: Interleave>(rows: [&W; ROWS]) -> Self {
        assert!(W::MB == MB && W::HB == HB, "interleaved layout does not match the source format");
        assert_eq!(W::M_PER_D.unwrap_or(0.0), Self::M_PER_D);
        let mut out = BlockX8 { d: [0; 16], m: [0; MB], qh: [0; HB], qs: [0; 128] };
        for (r, w) in rows.iter().enumerate() {
            let (qs, qh) = w.raw_quants();
            out.d[2 * r..2 * r + 2].copy_from_slice(&w.d_bits().to_le_bytes());
            if MB > 0 {
                out.m[2 * r..2 * r + 2].copy_from_slice(&w.m_bits().to_le_bytes());
            }
            // Chunk c's byte 4r + i holds elements 4c + i (low nibble, step c) and
            // 16 + 4c + i (high nibble, step c + 4): exactly the source's byte 4c + i.
            for c in 0..4 {
                out.qs[32 * c + 4 * r..32 * c + 4 * r + 4].copy_from_slice(&qs[4 * c..4 * c + 4]);
            }
            if HB > 0 {
                for i in 0..4 {
                    out.qh[4 * r + i] = (0..8).map(|s| (((qh >> element(s, i)) & 1) as u8) << s).sum();
                }
            }
        }
        out
    }

    /// Row `r`'s 32 quants in element order.
    pub fn quants(&self, r: usize) -> [u8; 32] {
        let mut q = [0u8; 32];
        for s in 0..8 {
            for i in 0..4 {
                let byte = self.qs[32 * (s % 4) + 4 * r + i];
                let mut v = (byte >> (4 * (s / 4))) & 0x0F;
                if HB > 0 && self.qh[4 * r + i] >> s & 1 != 0 {
                    v |= 0x10;
                }
                q[element(s, i)] = v;
            }
        }
        q
    }

    /// Row `r`'s scale and offset.
    pub fn scales(&self, r: usize) -> (f32, f32) {
        let d = f16_to_f32([self.d[2 * r], self.d[2 * r + 1]]);
        let m = if MB > 0 { f16_to_f32([self.m[2 * r], self.m[2 * r + 1]]) } else { d * Self::M_PER_D };
        (d, m)
    }
}

/// Interleaves a row-major matrix of `W` blocks (`rows` a multiple of 8) into [`BlockX8`]s:
/// group `g` holds rows `8g..8g + 8`, its blocks in column order.
pub fn interleave<W: Interleave, const MB: usize, const HB: usize>(bytes: &[u8], rows: usize) -> Vec<u8> {
    interleave_with(bytes, rows, BlockX8::<MB, HB>::pack::<W>)
}

/// The interleaving loop shared by every layout: `pack` turns one block of each of eight rows
/// into one interleaved block. Groups are split across the machine's cores: loading a model
/// repacks most of its bytes once.
pub fn interleave_with<W: Block, X: Block>(
    bytes: &[u8],
    rows: usize,
    pack: impl Fn([&W; ROWS]) -> X + Sync,
) -> Vec<u8> {
    assert!(rows.is_multiple_of(ROWS), "{rows} rows do not split into groups of {ROWS}");
    let blocks: &[W] = as_blocks(bytes);
    let per_row = blocks.len() / rows.max(1);
    let groups = rows / ROWS;
    let group_bytes = per_row * X::BYTES;
    let mut out = vec![0u8; groups * group_bytes];
    let fill = |g0: usize, dst: &mut [u8]| {
        for (g, group) in dst.chunks_exact_mut(group_bytes.max(1)).enumerate() {
            for (b, slot) in group.chunks_exact_mut(X::BYTES).enumerate() {
                let packed = pack(std::array::from_fn(|r| &blocks[(ROWS * (g0 + g) + r) * per_row + b]));
                slot.copy_from_slice(super::common::block_bytes(std::slice::from_ref(&packed)));
            }
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(groups.div_ceil(64)).max(1);
    if threads == 1 || group_bytes == 0 {
        fill(0, &mut out);
        return out;
    }
    let per = groups.div_ceil(threads);
    std::thread::scope(|s| {
        for (i, chunk) in out.chunks_mut(per * group_bytes).enumerate() {
            let fill = &fill;
            s.spawn(move || fill(i * per, chunk));
        }
    });
    out
}

/// Row `r` (0..8) of one group's blocks, dequantized into `out` (`32 · blocks.len()` long).
pub fn dequantize_group_row<const MB: usize, const HB: usize>(blocks: &[BlockX8<MB, HB>], r: usize, out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(32)) {
        let (d, m) = b.scales(r);
        for (yi, &q) in y.iter_mut().zip(&b.quants(r)) {
            *yi = q as f32 * d + m;
        }
    }
}

/// Row `r` (0..8) of an interleaved group of `dtype` (the group's bytes), dequantized.
pub fn dequantize_row(dtype: DType, group: &[u8], r: usize, out: &mut [f32]) {
    fn row<B: Interleaved>(group: &[u8], r: usize, out: &mut [f32]) {
        B::dequantize_row(as_blocks(group), r, out)
    }
    match dtype {
        DType::Q4_0 => row::<X8Q4_0>(group, r, out),
        DType::Q4_1 => row::<X8Q4_1>(group, r, out),
        DType::Q5_0 => row::<X8Q5_0>(group, r, out),
        DType::Q5_1 => row::<X8Q5_1>(group, r, out),
        DType::Q8_0 => row::<super::x8q8::X8Q8_0>(group, r, out),
        DType::Q4K => row::<super::x8q45k::X8Q4K>(group, r, out),
        DType::Q5K => row::<super::x8q45k::X8Q5K>(group, r, out),
        DType::Q6K => row::<super::x8q6k::X8Q6K>(group, r, out),
        other => panic!("{} has no interleaved layout", other.name()),
    }
}

/// `out[t][r]` = row `r` of the group · `acts[t]`, for the group's blocks (one row of them per
/// column position) and up to 4 tokens; scalar reference, bit-identical to the AVX2 path.
pub fn dot_group_scalar<const MB: usize, const HB: usize>(
    blocks: &[BlockX8<MB, HB>],
    acts: &[&[BlockQ8A]],
    out: &mut [[f32; ROWS]],
) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        assert_eq!(a.len(), blocks.len());
        *o = [0f32; ROWS];
        for (blk, ab) in blocks.iter().zip(a.iter()) {
            for (r, acc) in o.iter_mut().enumerate() {
                let isum: i32 = blk.quants(r).iter().zip(&ab.qs).map(|(&q, &y)| q as i32 * y as i32).sum();
                let (d, m) = blk.scales(r);
                *acc = (isum as f32).mul_add(d * ab.d, *acc);
                *acc = m.mul_add(ab.s, *acc);
            }
        }
    }
}

/// [`dot_group_scalar`] with the fastest available code.
pub fn dot_group<const MB: usize, const HB: usize>(
    blocks: &[BlockX8<MB, HB>],
    acts: &[&[BlockQ8A]],
    out: &mut [[f32; ROWS]],
) {
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
        unsafe { super::x8_neon::dot_group_x8(blocks, acts, out) };
        return;
    }
    dot_group_scalar(blocks, acts, out)
}

/// The x86 kernel, once per instruction set: `avx2` multiplies a step's bytes with `maddubs`
/// into i16 sums that are widened per block (Q4) or per four steps (Q5); `vnni` with AVX-VNNI's
/// `vpdpbusd`, which multiplies, adds four products and accumulates into i32 in one op, so
/// nothing is widened. The integer sums are exact either way, so both give the same bits.
#[cfg(target_arch = "x86_64")]
macro_rules! x8_kernel {
    ($isa:ident, $features:literal) => {
        pub mod $isa {
            use super::super::x86::{broadcast4, dot_group_by_tokens, dot_u8i8, prefetch_ahead, store_rows8};
            use super::*;
            use std::arch::x86_64::*;

            /// [`super::dot_group`] for 1 to 4 tokens.
            ///
            /// # Safety
            /// The CPU must support the features this module is compiled for.
            #[target_feature(enable = $features)]
            pub unsafe fn dot_group<const MB: usize, const HB: usize>(
                blocks: &[BlockX8<MB, HB>],
                acts: &[&[BlockQ8A]],
                out: &mut [[f32; ROWS]],
            ) {
                dot_group_by_tokens!(dot_blocks, MB, HB; blocks, acts, out)
            }

            /// Eight rows' accumulators per token, lane `r` for row `r`.
            ///
            /// Integer sums: a `maddubs` lane adds two products of a quant (below 16 for Q4, 32
            /// for Q5) and an activation byte (|a| ≤ 127, see [`super::super::act`]), at most
            /// 3,810 (Q4) or 7,874 (Q5) in magnitude; eight such steps (Q4) or four (Q5) stay
            /// below i16's 32,767 before the widening `madd`.
            #[inline]
            #[target_feature(enable = $features)]
            fn dot_blocks<const MB: usize, const HB: usize, const T: usize>(
                blocks: &[BlockX8<MB, HB>],
                acts: &[&[BlockQ8A]; T],
            ) -> [__m256; T] {
                let nib = _mm256_set1_epi8(0x0F);
                let mut acc = [_mm256_setzero_ps(); T];
                for (b, blk) in blocks.iter().enumerate() {
                    prefetch_ahead(blk);
                    // SAFETY: `d` and `m` are 16 readable bytes; unaligned loads.
                    let dw = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(blk.d.as_ptr().cast()) });
                    let mw = if MB > 0 {
                        // SAFETY: as above (`m` is 16 bytes when MB > 0).
                        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(blk.m.as_ptr().cast()) })
                    } else {
                        _mm256_mul_ps(dw, _mm256_set1_ps(BlockX8::<MB, HB>::M_PER_D))
                    };
                    let qh = if HB > 0 {
                        // SAFETY: `qh` is 32 readable bytes when HB > 0; unaligned load.
                        unsafe { _mm256_loadu_si256(blk.qh.as_ptr().cast()) }
                    } else {
                        _mm256_setzero_si256()
                    };
                    let mut isum = [_mm256_setzero_si256(); T];
                    let mut part = [_mm256_setzero_si256(); T];
                    for c in 0..4 {
                        // SAFETY: chunk `c` is 32 readable bytes of `qs`; unaligned load.
                        let v = unsafe { _mm256_loadu_si256(blk.qs.as_ptr().add(32 * c).cast()) };
                        let halves = [_mm256_and_si256(v, nib), _mm256_and_si256(_mm256_srli_epi16(v, 4), nib)];
                        for (h, mut w) in halves.into_iter().enumerate() {
                            let s = c + 4 * h;
                            if HB > 0 {
                                // Bit s of each byte to bit 4. The 16-bit shifts carry bits
                                // across bytes, but bit 4 of either byte comes from bit s of
                                // the same byte (s ≤ 7).
                                let b = match s {
                                    0..=4 => _mm256_sll_epi16(qh, _mm_cvtsi32_si128(4 - s as i32)),
                                    _ => _mm256_srl_epi16(qh, _mm_cvtsi32_si128(s as i32 - 4)),
                                };
                                w = _mm256_or_si256(w, _mm256_and_si256(b, _mm256_set1_epi8(0x10)));
                            }
                            let e = element(s, 0);
                            for t in 0..T {
                                part[t] = dot_u8i8!($isa, part[t], w, broadcast4(&acts[t][b].qs, e));
                            }
                        }
                        // Q5's i16 sums widen after every four steps (chunks 0-1, then 2-3).
                        if HB > 0 && c % 2 == 1 {
                            for t in 0..T {
                                isum[t] = _mm256_add_epi32(isum[t], dot_u8i8!($isa, widen part[t]));
                                part[t] = _mm256_setzero_si256();
                            }
                        }
                    }
                    for t in 0..T {
                        if HB == 0 {
                            isum[t] = dot_u8i8!($isa, widen part[t]);
                        }
                        let ab = &acts[t][b];
                        let sc = _mm256_mul_ps(dw, _mm256_set1_ps(ab.d));
                        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), sc, acc[t]);
                        acc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(ab.s), acc[t]);
                    }
                }
                acc
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
x8_kernel!(avx2, "avx2,fma,f16c");
#[cfg(target_arch = "x86_64")]
x8_kernel!(vnni, "avx2,fma,f16c,avxvnni");

/// Two groups at once on AVX-512: a 512-bit register holds one step of both groups (sixteen
/// rows' four quants), so each `vpdpbusd` does twice the work of the AVX-VNNI kernel's and
/// runs as fast. The second group's bytes are inserted into the upper half, once per chunk for
/// every token; each row's float operations are those of [`dot_group_scalar`].
#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    use super::super::x86::act4;
    use super::*;
    use std::arch::x86_64::*;

    /// 16 bytes of each group as the two halves of one 256-bit register.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(crate) fn pair128(a: &[u8], b: &[u8]) -> __m256i {
        assert!(a.len() >= 16 && b.len() >= 16);
        // SAFETY: both are at least 16 readable bytes (checked); unaligned loads.
        unsafe { _mm256_set_m128i(_mm_loadu_si128(b.as_ptr().cast()), _mm_loadu_si128(a.as_ptr().cast())) }
    }

    /// 32 bytes of each group as the two halves of one 512-bit register.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(crate) fn pair256<T: Copy>(a: &[T], b: &[T]) -> __m512i {
        assert!(std::mem::size_of_val(a) >= 32 && std::mem::size_of_val(b) >= 32);
        // SAFETY: both are at least 32 readable bytes (checked); unaligned loads.
        unsafe {
            let lo = _mm256_loadu_si256(a.as_ptr().cast());
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), _mm256_loadu_si256(b.as_ptr().cast()))
        }
    }

    /// [`Interleaved::dot_group_pair`] for 1 to 4 tokens.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_group_pair<const MB: usize, const HB: usize>(
        a: &[BlockX8<MB, HB>],
        b: &[BlockX8<MB, HB>],
        acts: &[&[BlockQ8A]],
        out: &mut [[f32; 2 * ROWS]],
    ) {
        assert_eq!(a.len(), b.len());
        for x in acts {
            assert_eq!(x.len(), a.len());
        }
        match acts.len() {
            1 => store_pair_tokens(&dot_blocks::<MB, HB, 1>(a, b, acts.try_into().unwrap()), out),
            2 => store_pair_tokens(&dot_blocks::<MB, HB, 2>(a, b, acts.try_into().unwrap()), out),
            3 => store_pair_tokens(&dot_blocks::<MB, HB, 3>(a, b, acts.try_into().unwrap()), out),
            4 => store_pair_tokens(&dot_blocks::<MB, HB, 4>(a, b, acts.try_into().unwrap()), out),
            n => panic!("token tile of {n}"),
        }
    }

    /// Each token's sixteen outputs (one register per token) into `out`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(crate) fn store_pair_tokens(acc: &[__m512], out: &mut [[f32; 2 * ROWS]]) {
        assert!(out.len() >= acc.len());
        for (o, v) in out.iter_mut().zip(acc) {
            // SAFETY: `o` is 16 writable f32s; unaligned store.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *v) };
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn dot_blocks<const MB: usize, const HB: usize, const T: usize>(
        ga: &[BlockX8<MB, HB>],
        gb: &[BlockX8<MB, HB>],
        acts: &[&[BlockQ8A]; T],
    ) -> [__m512; T] {
        let nib = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); T];
        for (i, (x, y)) in ga.iter().zip(gb).enumerate() {
            let dw = _mm512_cvtph_ps(pair128(&x.d, &y.d));
            let mw = if MB > 0 {
                _mm512_cvtph_ps(pair128(&x.m, &y.m))
            } else {
                _mm512_mul_ps(dw, _mm512_set1_ps(BlockX8::<MB, HB>::M_PER_D))
            };
            let qh = if HB > 0 { pair256(&x.qh, &y.qh) } else { _mm512_setzero_si512() };
            let mut isum = [_mm512_setzero_si512(); T];
            for c in 0..4 {
                let v = pair256(&x.qs[32 * c..], &y.qs[32 * c..]);
                let halves = [_mm512_and_si512(v, nib), _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib)];
                for (h, mut w) in halves.into_iter().enumerate() {
                    let s = c + 4 * h;
                    if HB > 0 {
                        // Bit s of each byte to bit 4, as in the AVX2 kernel.
                        let b = match s {
                            0..=4 => _mm512_sll_epi16(qh, _mm_cvtsi32_si128(4 - s as i32)),
                            _ => _mm512_srl_epi16(qh, _mm_cvtsi32_si128(s as i32 - 4)),
                        };
                        w = _mm512_or_si512(w, _mm512_and_si512(b, _mm512_set1_epi8(0x10)));
                    }
                    let e = element(s, 0);
                    for t in 0..T {
                        let a = _mm512_set1_epi32(act4(&acts[t][i].qs, e));
                        isum[t] = _mm512_dpbusd_epi32(isum[t], w, a);
                    }
                }
            }
            for t in 0..T {
                let ab = &acts[t][i];
                let sc = _mm512_mul_ps(dw, _mm512_set1_ps(ab.d));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), sc, acc[t]);
                acc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(ab.s), acc[t]);
            }
        }
        acc
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::act::ActBlock;
    use super::super::common::block_bytes;
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// `tokens` rows of `blocks` quantized activation blocks of any format, from uniform
    /// values in ±2.
    pub(crate) fn random_acts<A: ActBlock>(rng: &mut StdRng, tokens: usize, blocks: usize) -> Vec<Vec<A>> {
        (0..tokens)
            .map(|_| {
                let x: Vec<f32> = (0..A::ELEMS * blocks).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let mut a = vec![A::default(); blocks];
                A::quantize(&x, &mut a);
                a
            })
            .collect()
    }

    fn random_blocks<W: Interleave>(rng: &mut StdRng, n: usize) -> Vec<W> {
        let mut bytes: Vec<u8> = (0..n * W::BYTES).map(|_| rng.gen()).collect();
        for blk in bytes.chunks_exact_mut(W::BYTES) {
            // Sane f16 scale (and offset, for the formats that store one) in the first 4 bytes.
            let d = super::super::common::f32_to_f16(rng.gen_range(-0.1..0.1));
            let m = super::super::common::f32_to_f16(rng.gen_range(-0.1..0.1));
            blk[..2].copy_from_slice(&d);
            if W::MB > 0 {
                blk[2..4].copy_from_slice(&m);
            }
        }
        as_blocks::<W>(&bytes).to_vec()
    }

    /// Packing round-trips every quant and scale, and the kernels match the row-major
    /// reference (up to float rounding) and each other (bit for bit).
    fn check<W: Interleave, const MB: usize, const HB: usize>(seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        for per_row in [1usize, 3, 18, 28] {
            let rows = 16;
            let src = random_blocks::<W>(&mut rng, rows * per_row);
            let packed = interleave::<W, MB, HB>(block_bytes(&src), rows);
            let x8: &[BlockX8<MB, HB>] = as_blocks(&packed);
            for g in 0..rows / ROWS {
                let group = &x8[g * per_row..(g + 1) * per_row];
                for r in 0..ROWS {
                    for b in 0..per_row {
                        let (q, d, m) = src[(g * ROWS + r) * per_row + b].unpack();
                        assert_eq!(group[b].quants(r), q, "quants of row {r} block {b}");
                        assert_eq!(group[b].scales(r), (d, m), "scales of row {r} block {b}");
                    }
                }
                let xs: Vec<Vec<BlockQ8A>> = random_acts(&mut rng, 4, per_row);
                let acts: Vec<&[BlockQ8A]> = xs.iter().map(|a| a.as_slice()).collect();
                let mut want = [[0f32; ROWS]; 4];
                dot_group_scalar(group, &acts, &mut want);
                for r in 0..ROWS {
                    let row = &src[(g * ROWS + r) * per_row..(g * ROWS + r + 1) * per_row];
                    let mut reference = [0f32; 4];
                    super::super::block32::dot_scalar::<W>(row, &acts, &mut reference);
                    for t in 0..4 {
                        let tol = 1e-4 * (1.0 + reference[t].abs());
                        assert!((want[t][r] - reference[t]).abs() <= tol, "{} vs {}", want[t][r], reference[t]);
                    }
                }
                for k in 1..=4 {
                    let mut got = [[0f32; ROWS]; 4];
                    dot_group(group, &acts[..k], &mut got);
                    assert_eq!(got[..k], want[..k], "{k} tokens: fast path is not bit-identical to the scalar one");
                    #[cfg(target_arch = "x86_64")]
                    for (isa, kernel) in x86_kernels::<MB, HB>() {
                        let mut got = [[0f32; ROWS]; 4];
                        // SAFETY: `x86_kernels` lists only the kernels this CPU supports.
                        unsafe { kernel(group, &acts[..k], &mut got) };
                        assert_eq!(
                            got[..k],
                            want[..k],
                            "{k} tokens: the {isa} kernel is not bit-identical to the scalar one"
                        );
                    }
                }
            }
        }
    }

    /// The two-group entry (whichever kernel backs it) gives each group's `dot_group` bits.
    fn check_pair<W: Interleave, const MB: usize, const HB: usize>(seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        for per_row in [1usize, 5, 18] {
            let src = random_blocks::<W>(&mut rng, 16 * per_row);
            let packed = interleave::<W, MB, HB>(block_bytes(&src), 16);
            let x8: &[BlockX8<MB, HB>] = as_blocks(&packed);
            let (ga, gb) = x8.split_at(per_row);
            let xs: Vec<Vec<BlockQ8A>> = random_acts(&mut rng, 4, per_row);
            let acts: Vec<&[BlockQ8A]> = xs.iter().map(|a| a.as_slice()).collect();
            for k in 1..=4 {
                let (mut wa, mut wb) = ([[0f32; ROWS]; 4], [[0f32; ROWS]; 4]);
                dot_group_scalar(ga, &acts[..k], &mut wa);
                dot_group_scalar(gb, &acts[..k], &mut wb);
                let mut got = [[0f32; 2 * ROWS]; 4];
                BlockX8::<MB, HB>::dot_group_pair(ga, gb, &acts[..k], &mut got);
                for t in 0..k {
                    assert_eq!(got[t][..ROWS], wa[t], "{k} tokens, first group");
                    assert_eq!(got[t][ROWS..], wb[t], "{k} tokens, second group");
                }
            }
        }
    }

    #[test]
    fn pairs_of_groups_match_the_scalar_kernel() {
        check_pair::<q4_0::BlockQ4_0, 0, 0>(5);
        check_pair::<q4_1::BlockQ4_1, 16, 0>(6);
        check_pair::<q5_0::BlockQ5_0, 0, 32>(7);
        check_pair::<q5_1::BlockQ5_1, 16, 32>(8);
    }

    #[cfg(target_arch = "x86_64")]
    type Kernel<const MB: usize, const HB: usize> = unsafe fn(&[BlockX8<MB, HB>], &[&[BlockQ8A]], &mut [[f32; ROWS]]);

    /// Each x86 kernel this CPU can run, whichever one `dot_group` picks.
    #[cfg(target_arch = "x86_64")]
    fn x86_kernels<const MB: usize, const HB: usize>() -> Vec<(&'static str, Kernel<MB, HB>)> {
        let mut k: Vec<(&'static str, Kernel<MB, HB>)> = Vec::new();
        if has_avx2() {
            k.push(("AVX2", avx2::dot_group::<MB, HB>));
        }
        if super::super::common::has_avxvnni() {
            k.push(("AVX-VNNI", vnni::dot_group::<MB, HB>));
        }
        k
    }

    #[test]
    fn q4_0() {
        check::<q4_0::BlockQ4_0, 0, 0>(1);
    }

    #[test]
    fn q4_1() {
        check::<q4_1::BlockQ4_1, 16, 0>(2);
    }

    #[test]
    fn q5_0() {
        check::<q5_0::BlockQ5_0, 0, 32>(3);
    }

    #[test]
    fn q5_1() {
        check::<q5_1::BlockQ5_1, 16, 32>(4);
    }

    #[test]
    fn extreme_quants_do_not_overflow() {
        // All quants at their maximum against activations of ±127: the i16 sums peak here.
        let d = super::super::common::f32_to_f16(1.0);
        let w = q5_1::BlockQ5_1 { d, m: [0; 2], qh: [0xFF; 4], qs: [0xFF; 16] };
        let packed = interleave::<q5_1::BlockQ5_1, 16, 32>(block_bytes(&[w; 8]), 8);
        let a = BlockQ8A { d: 1.0, s: 0.0, qs: [127; 32] };
        let mut got = [[0f32; ROWS]; 1];
        dot_group::<16, 32>(as_blocks(&packed), &[&[a]], &mut got);
        assert_eq!(got[0], [(31 * 127 * 32) as f32; ROWS]);
        let w4 = q4_1::BlockQ4_1 { d, m: [0; 2], qs: [0xFF; 16] };
        let packed = interleave::<q4_1::BlockQ4_1, 16, 0>(block_bytes(&[w4; 8]), 8);
        let neg = BlockQ8A { d: 1.0, s: 0.0, qs: [-127; 32] };
        dot_group::<16, 0>(as_blocks(&packed), &[&[neg]], &mut got);
        assert_eq!(got[0], [-(15 * 127 * 32) as f32; ROWS]);
    }
}
