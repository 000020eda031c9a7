//! Q4_1: 32 weights as `d * q + m`, `q` a 4-bit nibble (ggml `block_q4_1`).

use super::block32::Unsigned32;
use super::common::{f16_to_f32, f32_to_f16, Block};

/// ggml layout: nibbles as in Q4_0, with the block minimum `m`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; 16],
}
assert_block!(BlockQ4_1, 20);

// SAFETY: repr(C) byte arrays only: alignment 1, no padding, any bit pattern is valid.
unsafe impl Block for BlockQ4_1 {
    const BYTES: usize = 20;
    const ELEMS: usize = 32;
}

pub fn dequantize_row(blocks: &[BlockQ4_1], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(32)) {
        let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
        for j in 0..16 {
            y[j] = (b.qs[j] & 0x0F) as f32 * d + m;
            y[j + 16] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// ggml's reference quantizer: min and max map to 0 and 15.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ4_1]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        let min = xs.iter().fold(f32::MAX, |m, &v| m.min(v));
        let max = xs.iter().fold(f32::MIN, |m, &v| m.max(v));
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(min);
        for j in 0..16 {
            let q0 = (((xs[j] - min) * id + 0.5) as i8).min(15) as u8;
            let q1 = (((xs[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

impl Unsigned32 for BlockQ4_1 {
    const M_PER_D: Option<f32> = None;

    fn unpack(&self) -> ([u8; 32], f32, f32) {
        let mut q = [0u8; 32];
        for j in 0..16 {
            q[j] = self.qs[j] & 0x0F;
            q[j + 16] = self.qs[j] >> 4;
        }
        (q, f16_to_f32(self.d), f16_to_f32(self.m))
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
        super::x86::unpack_nibbles(&self.qs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let mut b = BlockQ4_1 { d: f32_to_f16(0.25), m: f32_to_f16(-1.0), qs: [0; 16] };
        b.qs[0] = 0x3A; // element 0: 10, element 16: 3
        b.qs[15] = 0xF0; // element 15: 0, element 31: 15
        let mut y = [0f32; 32];
        dequantize_row(&[b], &mut y);
        assert_eq!(y[0], 1.5);
        assert_eq!(y[16], -0.25);
        assert_eq!(y[15], -1.0);
        assert_eq!(y[31], 2.75);
    }
}
