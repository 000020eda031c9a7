//! What the K-quants (256-weight super-blocks) share: one unpacked form and the scalar
//! reference kernels built on it.
//!
//! Every K-quant decodes as `w[e] = (d·sc[e/16])·q[e] − (dmin·m[e/16])` with small integer
//! quants, scales and mins per 16 weights (Q4_K/Q5_K repeat each 32-weight scale twice; Q3_K and
//! Q6_K have no mins). Writing the reference once over that form keeps the per-format code to
//! bit unpacking, and the arithmetic order matches ggml's dequantizers exactly.

use super::act::BlockQ8K;
use super::common::{as_blocks, Block};

/// A decoded super-block.
#[derive(Clone, Copy, Debug)]
pub struct KUnpacked {
    pub d: f32,
    pub dmin: f32,
    pub q: [i8; 256],
    pub sc: [i32; 16],
    pub m: [i32; 16],
}

impl Default for KUnpacked {
    fn default() -> Self {
        KUnpacked { d: 0.0, dmin: 0.0, q: [0; 256], sc: [0; 16], m: [0; 16] }
    }
}

/// A 256-weight block format.
pub trait KBlock: Block {
    fn unpack(&self) -> KUnpacked;
}

pub fn dequantize_row<B: KBlock>(blocks: &[B], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(256)) {
        let u = b.unpack();
        for (j, ys) in y.chunks_exact_mut(16).enumerate() {
            let dl = u.d * u.sc[j] as f32;
            let ml = u.dmin * u.m[j] as f32;
            for (yi, &q) in ys.iter_mut().zip(&u.q[16 * j..16 * j + 16]) {
                *yi = dl * q as f32 - ml;
            }
        }
    }
}

/// `out[t] = Σ w·acts[t]`; scalar reference, exact in integers within each super-block.
pub fn dot_scalar<B: KBlock>(w: &[B], acts: &[&[BlockQ8K]], out: &mut [f32]) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        assert_eq!(a.len(), w.len());
        let mut sum = 0f32;
        for (b, ab) in w.iter().zip(a.iter()) {
            let u = b.unpack();
            let mut sumi = 0i32;
            let mut summ = 0i32;
            for j in 0..16 {
                let s: i32 = (16 * j..16 * j + 16).map(|e| u.q[e] as i32 * ab.qs[e] as i32).sum();
                sumi += u.sc[j] * s;
                summ += u.m[j] * ab.bsums[j] as i32;
            }
            sum += u.d * ab.d * sumi as f32 - u.dmin * ab.d * summ as f32;
        }
        *o = sum;
    }
}

/// [`dot_scalar`] over every row in `bytes`, writing `out[r * k + t]`; the kernel of the
/// K-quants without SIMD code.
pub fn dot_rows_scalar<B: KBlock>(bytes: &[u8], row_bytes: usize, acts: &[&[BlockQ8K]], out: &mut [f32]) {
    let k = acts.len();
    for (row, o) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(k)) {
        dot_scalar::<B>(as_blocks(row), acts, o);
    }
}

/// Packs eight 6-bit scales and mins the Q4_K/Q5_K way (ggml's `get_scale_min_k4` inverse).
pub fn pack_scale_min_k4(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (sc[j] & 63, m[j] & 63);
        if j < 4 {
            s[j] |= ls;
            s[j + 4] |= lm;
        } else {
            s[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            s[j - 4] |= (ls >> 4) << 6;
            s[j] |= (lm >> 4) << 6;
        }
    }
    s
}

/// Scale and min of 32-weight sub-block `j` of a Q4_K/Q5_K block.
#[inline]
pub fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// All eight scales and mins of a Q4_K/Q5_K block at once, as little-endian byte lanes of two
/// u64s (`scales`, `mins`), using 32-bit masks instead of eight [`scale_min_k4`] calls.
#[inline]
pub fn scales_mins_k4(s: &[u8; 12]) -> (u64, u64) {
    let u0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let u1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let u2 = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let sc_lo = u0 & 0x3F3F_3F3F;
    let sc_hi = (u2 & 0x0F0F_0F0F) | (((u0 >> 6) & 0x0303_0303) << 4);
    let m_lo = u1 & 0x3F3F_3F3F;
    let m_hi = ((u2 >> 4) & 0x0F0F_0F0F) | (((u1 >> 6) & 0x0303_0303) << 4);
    (sc_lo as u64 | (sc_hi as u64) << 32, m_lo as u64 | (m_hi as u64) << 32)
}

/// Chooses 6-bit (or `levels`-step) scales and mins for the Q4_K/Q5_K/Q2_K quantizers:
/// each group maps `[min(x, 0), max(x)]` onto `0..=qmax`, then the per-group scale and min are
/// themselves quantized to `0..=levels` against the super-block's `d` and `dmin`.
///
/// Returns `(d, dmin, sc, m)`; simpler than ggml's iterative search but the same format.
pub fn affine_scales(x: &[f32], group: usize, qmax: f32, levels: f32) -> (f32, f32, Vec<u8>, Vec<u8>) {
    let mut scales = Vec::new();
    let mut mins = Vec::new();
    for g in x.chunks_exact(group) {
        let mn = g.iter().fold(0f32, |a, &v| a.min(v));
        let mx = g.iter().fold(f32::MIN, |a, &v| a.max(v));
        scales.push((mx - mn) / qmax);
        mins.push(-mn);
    }
    let max_scale = scales.iter().fold(0f32, |a, &v| a.max(v));
    let max_min = mins.iter().fold(0f32, |a, &v| a.max(v));
    let d = max_scale / levels;
    let dmin = max_min / levels;
    let q = |v: f32, s: f32| if s > 0.0 { (v / s).round().clamp(0.0, levels) as u8 } else { 0 };
    let sc = scales.iter().map(|&s| q(s, d)).collect();
    let m = mins.iter().map(|&v| q(v, dmin)).collect();
    (d, dmin, sc, m)
}

/// Quantizes `x` against per-group affine `(scale, min)`: `q = round((x + min) / scale)`.
pub fn affine_quant(x: f32, scale: f32, min: f32, qmax: i32) -> u8 {
    if scale == 0.0 {
        return 0;
    }
    ((x + min) / scale).round().clamp(0.0, qmax as f32) as u8
}

/// Twelve xorshift bytes, the size of the packed scale fields that the K-quant tests fuzz.
#[cfg(test)]
pub(crate) fn random_scale_bytes(x: &mut u64) -> [u8; 12] {
    let mut s = [0u8; 12];
    for b in s.iter_mut() {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *b = *x as u8;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_scale_decoders_agree() {
        let mut x = 0x1234_5678_9ABC_DEF1u64;
        for _ in 0..1000 {
            let s = random_scale_bytes(&mut x);
            let (sc, m) = scales_mins_k4(&s);
            for j in 0..8 {
                assert_eq!(scale_min_k4(j, &s), ((sc >> (8 * j)) as u8, (m >> (8 * j)) as u8));
            }
            let (sc8, m8): (Vec<u8>, Vec<u8>) = (0..8).map(|j| scale_min_k4(j, &s)).unzip();
            assert_eq!(pack_scale_min_k4(&sc8.try_into().unwrap(), &m8.try_into().unwrap()), s);
        }
    }
}
