//! Q5_0: 32 weights as `d * (q - 16)`, `q` 5 bits: a nibble plus one bit of `qh` (ggml `block_q5_0`).

use super::block32::Unsigned32;
use super::common::{f16_to_f32, f32_to_f16, Block};

/// ggml layout: nibbles as in Q4_0; bit `i` of little-endian `qh` is bit 4 of element `i`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
assert_block!(BlockQ5_0, 22);

// SAFETY: repr(C) byte arrays only: alignment 1, no padding, any bit pattern is valid.
unsafe impl Block for BlockQ5_0 {
    const BYTES: usize = 22;
    const ELEMS: usize = 32;
}

/// The 5-bit quants of a Q5_0/Q5_1 block in element order.
pub(crate) fn unpack5(qs: &[u8; 16], qh: [u8; 4]) -> [u8; 32] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        q[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

/// Packs 5-bit quants (element order) into nibbles and high bits.
pub(crate) fn pack5(q: &[u8; 32]) -> ([u8; 16], [u8; 4]) {
    let mut qs = [0u8; 16];
    let mut qh = 0u32;
    for j in 0..16 {
        qs[j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4);
        qh |= ((q[j] as u32 >> 4) & 1) << j;
        qh |= ((q[j + 16] as u32 >> 4) & 1) << (j + 16);
    }
    (qs, qh.to_le_bytes())
}

/// AVX2 form of [`unpack5`].
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn unpack5_avx2(qs: &[u8; 16], qh: [u8; 4]) -> std::arch::x86_64::__m256i {
    use super::x86::{bits_to_bytes, unpack_nibbles};
    use std::arch::x86_64::*;
    let hi = _mm256_and_si256(bits_to_bytes(u32::from_le_bytes(qh)), _mm256_set1_epi8(0x10));
    _mm256_or_si256(unpack_nibbles(qs), hi)
}

pub fn dequantize_row(blocks: &[BlockQ5_0], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(32)) {
        let d = f16_to_f32(b.d);
        for (yi, q) in y.iter_mut().zip(unpack5(&b.qs, b.qh)) {
            *yi = (q as i32 - 16) as f32 * d;
        }
    }
}

/// ggml's reference quantizer: the signed extreme maps to -16.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ5_0]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        let max = xs.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        let mut q = [0u8; 32];
        for (qi, &v) in q.iter_mut().zip(xs) {
            *qi = ((v * id + 16.5) as i8).min(31) as u8;
        }
        (b.qs, b.qh) = pack5(&q);
    }
}

impl Unsigned32 for BlockQ5_0 {
    const M_PER_D: Option<f32> = Some(-16.0);

    fn unpack(&self) -> ([u8; 32], f32, f32) {
        let d = f16_to_f32(self.d);
        (unpack5(&self.qs, self.qh), d, -16.0 * d)
    }

    #[inline(always)]
    fn d_bits(&self) -> u16 {
        u16::from_le_bytes(self.d)
    }

    #[inline(always)]
    fn m_bits(&self) -> u16 {
        0
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants_avx2(&self) -> std::arch::x86_64::__m256i {
        unpack5_avx2(&self.qs, self.qh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let mut b = BlockQ5_0 { d: f32_to_f16(0.5), qh: [0; 4], qs: [0; 16] };
        b.qs[0] = 0x3A; // element 0 low bits 10, element 16 low bits 3
        b.qs[15] = 0xF0; // element 15 low 0, element 31 low 15
                         // bit 0 -> element 0 gets +16; bit 31 -> element 31 gets +16; bit 17 -> element 17.
        b.qh = (1u32 | (1 << 31) | (1 << 17)).to_le_bytes();
        let mut y = [0f32; 32];
        dequantize_row(&[b], &mut y);
        assert_eq!(y[0], 5.0); // 26 - 16
        assert_eq!(y[16], -6.5); // 3 - 16
        assert_eq!(y[15], -8.0); // 0 - 16
        assert_eq!(y[31], 7.5); // 31 - 16
        assert_eq!(y[17], 0.0); // 16 - 16
        assert_eq!(y[1], -8.0);
    }
}
