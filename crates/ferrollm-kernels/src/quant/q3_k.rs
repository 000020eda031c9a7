//! Q3_K: 256 weights in 16 sub-blocks of 16, `w = d·(sc − 32)·q`, `q` in `-4..4` from 2 low
//! bits plus a high bit, 6-bit `sc` (ggml `block_q3_K`). Scalar kernels only.

use super::common::{f16_to_f32, f32_to_f16, Block};
use super::kquant::{KBlock, KUnpacked};

/// ggml layout: the weight `e = 128n + 32k + l` has low bits `2k..2k+2` of `qs[32n + l]` and
/// its high bit at bit `4n + k` of `hmask[l]` (a clear bit subtracts 4). The 6-bit scale `j`
/// keeps its low nibble in `scales[j % 8]` (low nibble for `j < 8`, high otherwise) and its top
/// two bits at bit `2(j / 4)` of `scales[8 + j % 4]`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; 32],
    pub qs: [u8; 64],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}
assert_block!(BlockQ3K, 110);

// SAFETY: repr(C) byte arrays only: alignment 1, no padding, any bit pattern is valid.
unsafe impl Block for BlockQ3K {
    const BYTES: usize = 110;
    const ELEMS: usize = 256;
}

fn scale(s: &[u8; 12], j: usize) -> i32 {
    let low = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i32 - 32
}

fn pack_scales(sc: &[i32; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (j, &v) in sc.iter().enumerate() {
        let v = (v + 32) as u8;
        if j < 8 {
            s[j] |= v & 0x0F;
        } else {
            s[j - 8] |= (v & 0x0F) << 4;
        }
        s[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
    }
    s
}

impl KBlock for BlockQ3K {
    fn unpack(&self) -> KUnpacked {
        let mut u = KUnpacked { d: f16_to_f32(self.d), ..Default::default() };
        for j in 0..16 {
            u.sc[j] = scale(&self.scales, j);
        }
        for (e, q) in u.q.iter_mut().enumerate() {
            let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = ((self.qs[32 * n + l] >> (2 * k)) & 3) as i8;
            let high = (self.hmask[l] >> (4 * n + k)) & 1;
            *q = low - if high == 0 { 4 } else { 0 };
        }
        u
    }
}

/// Per 16 weights, the signed extreme maps to −4; scales are 6-bit signed against `d`.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ3K]) {
    for (b, xs) in out.iter_mut().zip(x.chunks_exact(256)) {
        let mut scales = [0f32; 16];
        for (s, g) in scales.iter_mut().zip(xs.chunks_exact(16)) {
            let max = g.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            *s = max / -4.0;
        }
        let max_scale = scales.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let iscale = if max_scale != 0.0 { -32.0 / max_scale } else { 0.0 };
        b.d = f32_to_f16(if iscale != 0.0 { 1.0 / iscale } else { 0.0 });
        let d = f16_to_f32(b.d);
        let sc: [i32; 16] = std::array::from_fn(|j| (iscale * scales[j]).round().clamp(-32.0, 31.0) as i32);
        b.scales = pack_scales(&sc);
        b.qs = [0; 64];
        b.hmask = [0; 32];
        for (e, &v) in xs.iter().enumerate() {
            let dl = d * sc[e / 16] as f32;
            let q = if dl != 0.0 { (v / dl).round().clamp(-4.0, 3.0) as i32 } else { 0 };
            let u = (q + 4) as u8;
            let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
            b.qs[32 * n + l] |= (u & 3) << (2 * k);
            b.hmask[l] |= (u >> 2) << (4 * n + k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let mut b = BlockQ3K { hmask: [0; 32], qs: [0; 64], scales: [0; 12], d: f32_to_f16(0.5) };
        // Scale 0 = 40 - 32 = 8: 40 = 0b10_1000, low nibble 8 in scales[0], top bits 2 at bits 0-1 of scales[8].
        b.scales[0] = 0x08;
        b.scales[8] = 0b10;
        // Scale 14 = 1 - 32 = -31: low nibble 1 in high nibble of scales[6]; top bits 0 (scales[10] bits 6-7).
        b.scales[6] = 0x10;
        // Element 0: qs[0] bits 0-1 = 3, hmask[0] bit 0 set -> q = 3.
        b.qs[0] = 3;
        b.hmask[0] = 1;
        // Element 128 + 96 + 5 = 229 (n 1, k 3, l 5; sub-block 14): qs[37] bits 6-7 = 1, hmask[5] bit 7 clear -> q = -3.
        b.qs[37] = 0b0100_0000;
        let mut y = [0f32; 256];
        super::super::kquant::dequantize_row(&[b], &mut y);
        assert_eq!(y[0], 0.5 * 8.0 * 3.0);
        assert_eq!(y[229], 0.5 * -31.0 * -3.0);
        assert_eq!(y[1], 0.5 * 8.0 * -4.0);
        // Unset scale bytes decode to -32.
        assert_eq!(scale(&b.scales, 3), -32);
    }
}
