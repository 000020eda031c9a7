//! Q2_K: 256 weights in 16 sub-blocks of 16, `w = d·sc·q − dmin·m`, 2-bit `q`, 4-bit `sc`/`m`
//! (ggml `block_q2_K`). Scalar kernels only.

use super::common::{f16_to_f32, f32_to_f16, Block};
use super::kquant::{affine_quant, affine_scales, KBlock, KUnpacked};

/// ggml layout: `scales[j]` is scale (low nibble) and min (high nibble) of sub-block `j`; the
/// weight `e = 128n + 32k + l` is bits `2k..2k+2` of `qs[32n + l]`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}
assert_block!(BlockQ2K, 84);

// SAFETY: repr(C) byte arrays only: alignment 1, no padding, any bit pattern is valid.
unsafe impl Block for BlockQ2K {
    const BYTES: usize = 84;
    const ELEMS: usize = 256;
}

impl KBlock for BlockQ2K {
    fn unpack(&self) -> KUnpacked {
        let mut u = KUnpacked { d: f16_to_f32(self.d), dmin: f16_to_f32(self.dmin), ..Default::default() };
        for j in 0..16 {
            u.sc[j] = (self.scales[j] & 0x0F) as i32;
            u.m[j] = (self.scales[j] >> 4) as i32;
        }
        for (e, q) in u.q.iter_mut().enumerate() {
            let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
            *q = ((self.qs[32 * n + l] >> (2 * k)) & 3) as i8;
        }
        u
    }
}

pub fn quantize_row(x: &[f32], out: &mut [BlockQ2K]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(256)) {
        let (d, dmin, sc, m) = affine_scales(xs, 16, 3.0, 15.0);
        b.d = f32_to_f16(d);
        b.dmin = f32_to_f16(dmin);
        let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        for j in 0..16 {
            b.scales[j] = sc[j] | (m[j] << 4);
        }
        b.qs = [0; 64];
        for (e, &v) in xs.iter().enumerate() {
            let j = e / 16;
            let q = affine_quant(v, d * sc[j] as f32, dmin * m[j] as f32, 3);
            let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
            b.qs[32 * n + l] |= q << (2 * k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let mut b = BlockQ2K { scales: [0; 16], qs: [0; 64], d: f32_to_f16(0.5), dmin: f32_to_f16(0.25) };
        b.scales[3] = 0x27; // sub-block 3: scale 7, min 2
        // Element 48 = n 0, k 1, l 16: bits 2-3 of qs[16].
        b.qs[16] = 0b1100;
        // Element 128 + 96 + 31 = 255 (sub-block 15): bits 6-7 of qs[63].
        b.scales[15] = 0x11;
        b.qs[63] = 0b0100_0000;
        let mut y = [0f32; 256];
        super::super::kquant::dequantize_row(&[b], &mut y);
        assert_eq!(y[48], 0.5 * 7.0 * 3.0 - 0.25 * 2.0);
        assert_eq!(y[255], 0.5 * 1.0 * 1.0 - 0.25);
        assert_eq!(y[16], 0.0 - 0.25 * 0.0);
    }
}
