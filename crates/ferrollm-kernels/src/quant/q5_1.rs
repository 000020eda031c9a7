//! Q5_1: 32 weights as `d * q + m`, `q` 5 bits (ggml `block_q5_1`).

use super::block32::Unsigned32;
use super::common::{f16_to_f32, f32_to_f16, Block};
use super::q5_0::{pack5, unpack5};

/// ggml layout: as Q5_0 with the block minimum `m`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
assert_block!(BlockQ5_1, 24);

// SAFETY: repr(C) byte arrays only: alignment 1, no padding, any bit pattern is valid.
unsafe impl Block for BlockQ5_1 {
    const BYTES: usize = 24;
    const ELEMS: usize = 32;
}

pub fn dequantize_row(blocks: &[BlockQ5_1], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(32)) {
        let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
        for (yi, q) in y.iter_mut().zip(unpack5(&b.qs, b.qh)) {
            *yi = q as f32 * d + m;
        }
    }
}

/// ggml's reference quantizer: min and max map to 0 and 31.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ5_1]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        let min = xs.iter().fold(f32::MAX, |m, &v| m.min(v));
        let max = xs.iter().fold(f32::MIN, |m, &v| m.max(v));
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(min);
        let mut q = [0u8; 32];
        for (qi, &v) in q.iter_mut().zip(xs) {
            *qi = (((v - min) * id + 0.5) as i8).min(31) as u8;
        }
        (b.qs, b.qh) = pack5(&q);
    }
}

impl Unsigned32 for BlockQ5_1 {
    const M_PER_D: Option<f32> = None;

    fn unpack(&self) -> ([u8; 32], f32, f32) {
        (unpack5(&self.qs, self.qh), f16_to_f32(self.d), f16_to_f32(self.m))
    }

    #[inline(always)]
    fn d_bits(&self) -> u16 {
        u16::from_le_bytes(self.d)
    }

    #[inline(always)]
    fn m_bits(&self) -> u16 {
        u16::from_le_bytes(self.m)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants_avx2(&self) -> std::arch::x86_64::__m256i {
        super::q5_0::unpack5_avx2(&self.qs, self.qh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let mut b = BlockQ5_1 { d: f32_to_f16(0.25), m: f32_to_f16(-2.0), qh: [0; 4], qs: [0; 16] };
        b.qs[3] = 0x5C; // element 3 low 12, element 19 low 5
        b.qh = ((1u32 << 3) | (1 << 19)).to_le_bytes();
        let mut y = [0f32; 32];
        dequantize_row(&[b], &mut y);
        assert_eq!(y[3], 28.0 * 0.25 - 2.0);
        assert_eq!(y[19], 21.0 * 0.25 - 2.0);
        assert_eq!(y[0], -2.0);
    }
}
