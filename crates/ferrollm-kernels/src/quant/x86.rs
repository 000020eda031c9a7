//! AVX2 building blocks shared by the block kernels. Every function here requires AVX2, FMA
//! and F16C, which callers check once through [`super::common::has_avx2`].

use std::arch::x86_64::*;

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The lane sums of four vectors, `[hsum_ps(v[0]), .., hsum_ps(v[3])]` bit for bit (the same
/// adds in the same order), in a dozen shuffles and adds instead of four serial reductions: a
/// register tile's epilogue then costs little next to its main loop.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn hsum4_ps(v: [__m256; 4]) -> __m128 {
    // [a0+a4, a1+a5, a2+a6, a3+a7 | b0+b4, ..]: hsum_ps's first step for two vectors at once.
    let ab = _mm256_add_ps(_mm256_permute2f128_ps(v[0], v[1], 0x20), _mm256_permute2f128_ps(v[0], v[1], 0x31));
    let cd = _mm256_add_ps(_mm256_permute2f128_ps(v[2], v[3], 0x20), _mm256_permute2f128_ps(v[2], v[3], 0x31));
    // Second step, lanes 0+2 and 1+3: [a02, a13, c02, c13 | b02, b13, d02, d13].
    let s = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, 0b01_00_01_00), _mm256_shuffle_ps(ab, cd, 0b11_10_11_10));
    // Last step, 02 + 13: [a, c, a, c | b, d, b, d].
    let h = _mm256_hadd_ps(s, s);
    _mm_unpacklo_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1))
}

/// Sum of the 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// One IEEE half to f32 with F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn f16_to_f32(h: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes(h) as i32)))
}

/// 16 bytes of packed nibbles to 32 bytes: low nibbles in the low 128-bit lane, high nibbles in
/// the high lane, which is ggml's element order for Q4_0/Q4_1/Q5_0/Q5_1. The bytes load into
/// both lanes at once and a per-lane variable shift brings the high nibbles down: two ALU
/// instructions after the load.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn unpack_nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: `qs` is 16 readable bytes; unaligned load.
    let v = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(qs.as_ptr().cast())) };
    let both = _mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Byte `i` of the result is `0xFF` if bit `i` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn bits_to_bytes(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    // Byte i takes byte i/8 of `bits` (set1 repeats `bits` in both 128-bit lanes).
    let shuf = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bytes = _mm256_shuffle_epi8(v, shuf);
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask)
}

/// 32 bytes from memory.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn load32<T: Copy>(p: &[T]) -> __m256i {
    assert!(std::mem::size_of_val(p) >= 32);
    // SAFETY: at least 32 readable bytes (checked above); unaligned load.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

/// Dot of unsigned bytes `u` (each ≤ 127) with signed bytes `s`, as 8 i32 partial sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// Unsigned bytes `w` times signed bytes `a`, added to a row accumulator `acc`: with `avx2`,
/// `maddubs` into 16 i16 lanes (two products each; the caller widens them with
/// `dot_u8i8!(avx2, widen acc)` before they can overflow); with `vnni`, AVX-VNNI's `vpdpbusd`
/// into 8 i32 lanes (four products each, one op, nothing to widen). Both are exact.
/// `dot_u8i8!(isa, i32 acc, w, a)` adds into i32 lanes with either (`maddubs` + `madd` + `add`
/// with AVX2), for operands whose two-product i16 sums may overflow if kept.
macro_rules! dot_u8i8 {
    (avx2, i32 $acc:expr, $w:expr, $a:expr) => {
        _mm256_add_epi32($acc, _mm256_madd_epi16(_mm256_maddubs_epi16($w, $a), _mm256_set1_epi16(1)))
    };
    (vnni, i32 $acc:expr, $w:expr, $a:expr) => {
        _mm256_dpbusd_avx_epi32($acc, $w, $a)
    };
    (avx2, widen $acc:expr) => {
        _mm256_madd_epi16($acc, _mm256_set1_epi16(1))
    };
    (vnni, widen $acc:expr) => {
        $acc
    };
    (avx2, $acc:expr, $w:expr, $a:expr) => {
        _mm256_add_epi16($acc, _mm256_maddubs_epi16($w, $a))
    };
    (vnni, $acc:expr, $w:expr, $a:expr) => {
        _mm256_dpbusd_avx_epi32($acc, $w, $a)
    };
}
pub(crate) use dot_u8i8;

/// Per-block state shared by the Q4_K and Q5_K kernels: the eight 6-bit sub-block scales as i16
/// in both 128-bit lanes (to pick with [`kscale`]), and the mins widened to i16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn k4_scales_mins(scales: &[u8; 12]) -> (__m256i, __m128i) {
    let (sc, m) = super::kquant::scales_mins_k4(scales);
    let sc16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64));
    let m16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(m as i64));
    (_mm256_broadcastsi128_si256(sc16), m16)
}

/// Scale `j` (0..8) of [`k4_scales_mins`] in all 16 i16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn kscale(sc: __m256i, j: usize) -> __m256i {
    let lo = (2 * j) as i8;
    let pick = _mm256_set1_epi16(i16::from_le_bytes([lo as u8, (lo + 1) as u8]));
    _mm256_shuffle_epi8(sc, pick)
}

/// `Σ_j mins[j] · (bsums[2j] + bsums[2j + 1])` as 4 i32 partial sums: the min term of a Q4_K or
/// Q5_K block (its sub-blocks span 32 activations, two of the Q8_K 16-wide sums).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn k4_min_dot(m16: __m128i, bsums: &[i16; 16]) -> __m128i {
    // SAFETY: `bsums` is 32 readable bytes; unaligned loads.
    let (lo, hi) = unsafe { (_mm_loadu_si128(bsums.as_ptr().cast()), _mm_loadu_si128(bsums.as_ptr().add(8).cast())) };
    _mm_madd_epi16(m16, _mm_hadd_epi16(lo, hi))
}

/// Sum of the 4 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn hsum_ps128(v: __m128) -> f32 {
    let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Scales of 16-weight sub-blocks `a` (low 128-bit lane) and `a + 1` (high lane) as i16,
/// from the 16 per-sub-block scale bytes in `sc` (Q2_K and Q3_K keep one scale byte per 16 weights).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn pair_scales(sc: __m128i, a: usize) -> __m256i {
    let a = a as u8;
    let pick = _mm_set_epi64x(i64::from_le_bytes([a + 1; 8]), i64::from_le_bytes([a; 8]));
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, pick))
}

/// Four f16 values to f32, in both 128-bit lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn f16x4x2(h: [u16; 4]) -> __m256 {
    let bits = h[0] as u64 | (h[1] as u64) << 16 | (h[2] as u64) << 32 | (h[3] as u64) << 48;
    _mm256_cvtph_ps(_mm_set1_epi64x(bits as i64))
}

/// The scales `d` and the sums `s` of four activation blocks, as two vectors.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn act_scales(a: &[super::act::BlockQ8A; 4]) -> (__m128, __m128) {
    // SAFETY: `d` and `s` are the first 8 bytes of the repr(C) `BlockQ8A`, read through a
    // pointer to the whole block; `_mm_loadl_epi64` does an unaligned 8-byte load.
    let ds =
        a.each_ref().map(|b| unsafe { _mm_castsi128_ps(_mm_loadl_epi64((b as *const super::act::BlockQ8A).cast())) });
    let lo = _mm_unpacklo_ps(ds[0], ds[1]); // d0 d1 s0 s1
    let hi = _mm_unpacklo_ps(ds[2], ds[3]); // d2 d3 s2 s3
    (_mm_movelh_ps(lo, hi), _mm_movehl_ps(hi, lo))
}

/// Four vectors of 8 i32 partial sums to one: lane `j` (`j + 4`) holds the sum of the low
/// (high) 128-bit half of `p[j]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn reduce4(p: [__m256i; 4]) -> __m256i {
    let x = _mm256_add_epi32(_mm256_unpacklo_epi32(p[0], p[1]), _mm256_unpackhi_epi32(p[0], p[1]));
    let y = _mm256_add_epi32(_mm256_unpacklo_epi32(p[2], p[3]), _mm256_unpackhi_epi32(p[2], p[3]));
    _mm256_add_epi32(_mm256_unpacklo_epi64(x, y), _mm256_unpackhi_epi64(x, y))
}

/// Four activation bytes starting at element `e` of `qs` as one 32-bit lane: what each step of
/// the interleaved kernels (four quants of each row) multiplies, in every lane.
#[inline(always)]
pub fn act4<const N: usize>(qs: &[i8; N], e: usize) -> i32 {
    let b: [i8; 4] = qs[e..e + 4].try_into().unwrap();
    i32::from_le_bytes(b.map(|x| x as u8))
}

/// [`act4`] in every 32-bit lane of a 256-bit register.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn broadcast4<const N: usize>(qs: &[i8; N], e: usize) -> __m256i {
    _mm256_set1_epi32(act4(qs, e))
}

/// `pshufb` control, the same in both 128-bit lanes, that spreads per-row bytes over the four
/// row lanes of each half as i16 pairs: row lane `r'` gets byte `4·qa + r'` in its low i16 and
/// `4·qb + r'` in its high one, in the low byte of each i16 (zero-extended) or, with `HIGH`, in
/// the high byte (an arithmetic shift by 8 then sign-extends it). The interleaved K-quant
/// kernels store scales so that a 16-byte half holds four sub-blocks of its four rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn pair_ctl<const HIGH: bool>(qa: i8, qb: i8) -> __m256i {
    let at = if HIGH { 1 } else { 0 };
    let lane: [i8; 16] = std::array::from_fn(|i| match i % 4 {
        b if b == at => 4 * qa + (i / 4) as i8,
        b if b == at + 2 => 4 * qb + (i / 4) as i8,
        _ => -128, // high bit set: pshufb writes zero
    });
    // SAFETY: `lane` is 16 readable bytes; unaligned load.
    _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(lane.as_ptr().cast()) })
}

/// [`super::common::by_tokens`] storing with [`store_rows8`].
macro_rules! dot_group_by_tokens {
    ($($args:tt)*) => {
        $crate::quant::common::by_tokens!(store_rows8, $($args)*)
    };
}
pub(crate) use dot_group_by_tokens;

/// How far ahead of the block being read the interleaved kernels prefetch: a lone token's
/// matmul streams its weights once, and the hardware prefetcher alone left 10-15% of the
/// bandwidth unused (Q8_0 at 576 x 1536, in-process A/B over distances of 0.5-8 KiB: 4 KiB
/// best). With several tokens the first call on a group streams it the same way (the later
/// ones find it in L1): prefetching for every token count made AVX2 decode at batch 4 30-50%
/// faster and at 16 13-22% (SmolLM2 Q4_1 and Q8_0, Qwen2.5 Q4_K_M).
pub const PREFETCH_AHEAD: usize = 4096;

/// Prefetches the cache lines of the block `PREFETCH_AHEAD` bytes after `blk`. A prefetch is
/// only a hint: it never faults, so running past the end of the weights is harmless.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn prefetch_ahead<X>(blk: &X) {
    let p = (blk as *const X).cast::<u8>().wrapping_add(PREFETCH_AHEAD);
    for line in 0..std::mem::size_of::<X>().div_ceil(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * line).cast());
    }
}

/// Each token's eight interleaved-row outputs (one vector per token) into `out`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn store_rows8<const T: usize>(acc: [__m256; T], out: &mut [[f32; 8]]) {
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 8 writable f32s; unaligned store.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), a) };
    }
}
