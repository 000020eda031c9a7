//! Q4_0: 32 weights as `d * (q - 8)`, `q` a 4-bit nibble (ggml `block_q4_0`).

use super::block32::Unsigned32;
use super::common::{f16_to_f32, f32_to_f16, Block};

/// ggml layout: `qs[j]` holds element `j` in its low nibble and element `j + 16` in its high one.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; 16],
}
assert_block!(BlockQ4_0, 18);

// SAFETY: repr(C) byte arrays only: alignment 1, no padding, any bit pattern is valid.
unsafe impl Block for BlockQ4_0 {
    const BYTES: usize = 18;
    const ELEMS: usize = 32;
}

pub fn dequantize_row(blocks: &[BlockQ4_0], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(32)) {
        let d = f16_to_f32(b.d);
        for j in 0..16 {
            y[j] = ((b.qs[j] & 0x0F) as i32 - 8) as f32 * d;
            y[j + 16] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// ggml's reference quantizer: the signed extreme maps to -8.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ4_0]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        let max = xs.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        for j in 0..16 {
            let q0 = ((xs[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((xs[j + 16] * id + 8.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

impl Unsigned32 for BlockQ4_0 {
    const M_PER_D: Option<f32> = Some(-8.0);

    fn unpack(&self) -> ([u8; 32], f32, f32) {
        let mut q = [0u8; 32];
        for j in 0..16 {
            q[j] = self.qs[j] & 0x0F;
            q[j + 16] = self.qs[j] >> 4;
        }
        let d = f16_to_f32(self.d);
        (q, d, -8.0 * d)
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
        super::x86::unpack_nibbles(&self.qs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let mut b = BlockQ4_0 { d: f32_to_f16(0.5), qs: [0; 16] };
        b.qs[0] = 0x3A; // element 0: 10 - 8 = 2, element 16: 3 - 8 = -5
        b.qs[15] = 0xF0; // element 15: -8, element 31: 7
        let mut y = [0f32; 32];
        dequantize_row(&[b], &mut y);
        assert_eq!(y[0], 1.0);
        assert_eq!(y[16], -2.5);
        assert_eq!(y[15], -4.0);
        assert_eq!(y[31], 3.5);
        assert_eq!(y[1], -4.0);
    }
}
