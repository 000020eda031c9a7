//! NEON helpers shared by the aarch64 kernels (the counterpart of `x86`).

use std::arch::aarch64::*;

/// Eight f16 values (their bits, little endian, at `p`) as two f32x4, exactly.
///
/// # Safety
/// `p` must point at 16 readable bytes.
#[inline]
#[target_feature(enable = "neon")]
pub unsafe fn load_f16x8(p: *const u8) -> [float32x4_t; 2] {
    // SAFETY: the caller's promise; a byte load has no alignment requirement.
    let h = vreinterpretq_u16_u8(unsafe { vld1q_u8(p) });
    [f16x4_to_f32(vget_low_u16(h)), f16x4_to_f32(vget_high_u16(h))]
}

/// Four f16 bit patterns to f32, exactly, without the FP16 extension: the exponent and
/// mantissa shifted into f32's fields and scaled by 2¹¹² are the value for normal and
/// subnormal halves alike (the product is exact), infinities and NaNs get the all-ones
/// exponent back, and the sign goes in last.
#[inline]
#[target_feature(enable = "neon")]
pub fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    let w = vmovl_u16(h);
    let sign = vshlq_n_u32::<16>(vandq_u32(w, vdupq_n_u32(0x8000)));
    let mag = vshlq_n_u32::<13>(vandq_u32(w, vdupq_n_u32(0x7FFF)));
    let scaled = vreinterpretq_u32_f32(vmulq_f32(vreinterpretq_f32_u32(mag), vdupq_n_f32(f32::from_bits(0x7780_0000))));
    let special = vceqq_u32(vandq_u32(w, vdupq_n_u32(0x7C00)), vdupq_n_u32(0x7C00));
    let v = vbslq_u32(special, vorrq_u32(mag, vdupq_n_u32(0x7F80_0000)), scaled);
    vreinterpretq_f32_u32(vorrq_u32(v, sign))
}

/// The sum of eight lanes held as `[l0..l3]`, `[l4..l7]`, added as `x86::hsum_ps` adds them:
/// `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`, so both ISAs give the same bits.
#[inline]
#[target_feature(enable = "neon")]
pub fn hsum8(lo: float32x4_t, hi: float32x4_t) -> f32 {
    let s = vaddq_f32(lo, hi);
    let t = vadd_f32(vget_low_f32(s), vget_high_f32(s));
    vget_lane_f32::<0>(t) + vget_lane_f32::<1>(t)
}
