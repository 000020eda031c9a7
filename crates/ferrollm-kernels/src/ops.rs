//! Element-wise and row-wise operations of a transformer layer.

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)`: llama.cpp's `llama` GGUFs, whose Q/K rows the converter permuted.
    Interleaved,
    /// Pairs `(i, i + d/2)`: Hugging Face checkpoints and `qwen2` GGUFs.
    NeoX,
}

/// Cosines and sines per position and frequency, computed once at load.
#[derive(Debug, Clone)]
pub struct RopeTable {
    pub head_dim: usize,
    pub max_positions: usize,
    /// `[max_positions, head_dim / 2]`
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(head_dim: usize, max_positions: usize, theta: f32) -> RopeTable {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for i in 0..half {
                let freq = 1.0f64 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
                let angle = p as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        RopeTable { head_dim, max_positions, cos, sin }
    }

    /// Rotates `x` (`[tokens, n_heads, head_dim]`) in place, token `t` at `positions[t]`.
    pub fn apply(&self, x: &mut [f32], positions: &[u32], n_heads: usize, style: RopeStyle) {
        let hd = self.head_dim;
        let half = hd / 2;
        for (t, &pos) in positions.iter().enumerate() {
            let p = pos as usize;
            assert!(p < self.max_positions, "position {p} beyond the rope table");
            let cos = &self.cos[p * half..(p + 1) * half];
            let sin = &self.sin[p * half..(p + 1) * half];
            for h in 0..n_heads {
                let head = &mut x[(t * n_heads + h) * hd..(t * n_heads + h + 1) * hd];
                match style {
                    RopeStyle::Interleaved => {
                        for i in 0..half {
                            let (a, b) = (head[2 * i], head[2 * i + 1]);
                            head[2 * i] = a * cos[i] - b * sin[i];
                            head[2 * i + 1] = a * sin[i] + b * cos[i];
                        }
                    }
                    RopeStyle::NeoX => {
                        for i in 0..half {
                            let (a, b) = (head[i], head[i + half]);
                            head[i] = a * cos[i] - b * sin[i];
                            head[i + half] = a * sin[i] + b * cos[i];
                        }
                    }
                }
            }
        }
    }
}

/// Root-mean-square norm of each `dim`-long row of `x`, scaled by `weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, v), w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// `gate = silu(gate) * up`, the SwiGLU activation.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `x += y`.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Adds `bias` to each row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_inplace(row, bias);
    }
}

/// Dot product: AVX2+FMA where the CPU has it, else [`dot_scalar`].
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot lengths");
    #[cfg(target_arch = "x86_64")]
    if crate::quant::common::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time; lengths are equal (asserted above).
        return unsafe { x86::dot(a, b) };
    }
    dot_scalar(a, b)
}

/// Reference dot product, written in lanes of 8 so the compiler vectorizes it for the baseline ISA.
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `y += a * x`: AVX2+FMA where the CPU has it, else [`axpy_scalar`].
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy lengths");
    #[cfg(target_arch = "x86_64")]
    if crate::quant::common::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time; lengths are equal (asserted above).
        unsafe { x86::axpy(a, x, y) };
        return;
    }
    axpy_scalar(a, x, y)
}

/// Reference `y += a * x`.
pub fn axpy_scalar(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// `out[i]` = the IEEE half bits of `x[i]`, rounded to nearest even (F16C where available,
/// else [`f32_to_f16_row_scalar`]; both give the same bits). The KV cache stores K and V this way.
pub fn f32_to_f16_row(x: &[f32], out: &mut [u16]) {
    assert_eq!(x.len(), out.len(), "f16 row lengths");
    #[cfg(target_arch = "x86_64")]
    if crate::quant::common::has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected at run time; lengths are equal (asserted above).
        unsafe { x86::f32_to_f16_row(x, out) };
        return;
    }
    f32_to_f16_row_scalar(x, out)
}

/// Reference for [`f32_to_f16_row`].
#[inline]
pub fn f32_to_f16_row_scalar(x: &[f32], out: &mut [u16]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = half::f16::from_f32(v).to_bits();
    }
}

/// Rounds every value to the nearest f16 (ties to even), keeping it as f32: F16C where
/// available, else [`round_to_f16_scalar`]; both give the same bits.
pub fn round_to_f16(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::quant::common::has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected at run time.
        unsafe { x86::round_to_f16(x) };
        return;
    }
    round_to_f16_scalar(x)
}

/// Reference for [`round_to_f16`].
#[inline]
pub fn round_to_f16_scalar(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

/// Dot product of f32 `a` with f16 `b` (IEEE half bits): F16C + FMA where available, else
/// [`dot_f16_scalar`].
#[inline]
pub fn dot_f16(a: &[f32], b: &[u16]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot lengths");
    #[cfg(target_arch = "x86_64")]
    if crate::quant::common::has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected at run time; lengths are equal (asserted above).
        return unsafe { x86::dot_f16(a, b) };
    }
    dot_f16_scalar(a, b)
}

/// Reference for [`dot_f16`].
#[inline]
pub fn dot_f16_scalar(a: &[f32], b: &[u16]) -> f32 {
    a.iter().zip(b).map(|(&x, &h)| x * half::f16::from_bits(h).to_f32()).sum()
}

/// `y += a * x` with `x` in f16 bits: F16C + FMA where available, else [`axpy_f16_scalar`].
#[inline]
pub fn axpy_f16(a: f32, x: &[u16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy lengths");
    #[cfg(target_arch = "x86_64")]
    if crate::quant::common::has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected at run time; lengths are equal (asserted above).
        unsafe { x86::axpy_f16(a, x, y) };
        return;
    }
    axpy_f16_scalar(a, x, y)
}

/// Reference for [`axpy_f16`].
#[inline]
pub fn axpy_f16_scalar(a: f32, x: &[u16], y: &mut [f32]) {
    for (yi, &h) in y.iter_mut().zip(x) {
        *yi += a * half::f16::from_bits(h).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2 and FMA, and `a.len() == b.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY (all loads): i + 16 <= n, resp. i + 8 <= n, and both slices hold n floats.
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(pa.add(i)) }, unsafe { _mm256_loadu_ps(pb.add(i)) }, acc0);
            acc1 = _mm256_fmadd_ps(
                unsafe { _mm256_loadu_ps(pa.add(i + 8)) },
                unsafe { _mm256_loadu_ps(pb.add(i + 8)) },
                acc1,
            );
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(pa.add(i)) }, unsafe { _mm256_loadu_ps(pb.add(i)) }, acc0);
            i += 8;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let hi = _mm256_extractf128_ps(acc, 1);
        let lo = _mm256_castps256_ps128(acc);
        let s4 = _mm_add_ps(hi, lo);
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
        let mut s = _mm_cvtss_f32(s1);
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA, and `x.len() == y.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len();
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n and both slices hold n floats; `y` is borrowed mutably.
            unsafe {
                let v = _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
                _mm256_storeu_ps(py.add(i), v);
            }
            i += 8;
        }
        while i < n {
            y[i] += a * x[i];
            i += 1;
        }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C, and `x.len() == out.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f32_to_f16_row(x: &[f32], out: &mut [u16]) {
        let n = x.len();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n and both slices hold n elements; `out` is borrowed mutably.
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(x.as_ptr().add(i)));
                _mm_storeu_si128(out.as_mut_ptr().add(i).cast(), h);
            }
            i += 8;
        }
        super::f32_to_f16_row_scalar(&x[i..], &mut out[i..]);
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn round_to_f16(x: &mut [f32]) {
        let n = x.len();
        let p = x.as_mut_ptr();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n and `x` holds n floats, borrowed mutably.
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p.add(i)));
                _mm256_storeu_ps(p.add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        super::round_to_f16_scalar(&mut x[i..]);
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C, and `a.len() == b.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(a: &[f32], b: &[u16]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY (all loads): i + 16 <= n, resp. i + 8 <= n, and both slices hold n elements.
        while i + 16 <= n {
            let b0 = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(pb.add(i).cast()) });
            let b1 = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(pb.add(i + 8).cast()) });
            acc0 = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(pa.add(i)) }, b0, acc0);
            acc1 = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(pa.add(i + 8)) }, b1, acc1);
            i += 16;
        }
        if i + 8 <= n {
            let b0 = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(pb.add(i).cast()) });
            acc0 = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(pa.add(i)) }, b0, acc0);
            i += 8;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let s4 = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
        _mm_cvtss_f32(s1) + super::dot_f16_scalar(&a[i..], &b[i..])
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C, and `x.len() == y.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_f16(a: f32, x: &[u16], y: &mut [f32]) {
        let n = x.len();
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n and both slices hold n elements; `y` is borrowed mutably.
            unsafe {
                let xv = _mm256_cvtph_ps(_mm_loadu_si128(px.add(i).cast()));
                _mm256_storeu_ps(py.add(i), _mm256_fmadd_ps(va, xv, _mm256_loadu_ps(py.add(i))));
            }
            i += 8;
        }
        super::axpy_f16_scalar(a, &x[i..], &mut y[i..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_styles_agree_after_permutation() {
        // The interleaved form on permuted dims equals NeoX on the original order.
        let hd = 8;
        let table = RopeTable::new(hd, 16, 10000.0);
        let x: Vec<f32> = (0..hd).map(|i| i as f32 + 1.0).collect();
        let mut neox = x.clone();
        table.apply(&mut neox, &[5], 1, RopeStyle::NeoX);
        // permute: interleaved[2i] = x[i], interleaved[2i+1] = x[i+half]
        let half = hd / 2;
        let mut inter = vec![0f32; hd];
        for i in 0..half {
            inter[2 * i] = x[i];
            inter[2 * i + 1] = x[i + half];
        }
        table.apply(&mut inter, &[5], 1, RopeStyle::Interleaved);
        for i in 0..half {
            assert!((inter[2 * i] - neox[i]).abs() < 1e-5);
            assert!((inter[2 * i + 1] - neox[i + half]).abs() < 1e-5);
        }
    }

    #[test]
    fn simd_f16_conversion_dot_and_axpy_match_scalar_references() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for n in [0, 1, 7, 8, 15, 16, 17, 63, 64, 65, 200] {
            // Magnitudes across the f16 range, subnormals and overflow included.
            let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0) * 2f32.powi(rng.gen_range(-26..18))).collect();
            let (mut h1, mut h2) = (vec![0u16; n], vec![0u16; n]);
            f32_to_f16_row(&x, &mut h1);
            f32_to_f16_row_scalar(&x, &mut h2);
            assert_eq!(h1, h2, "f16 conversion n={n}");
            let (mut r1, mut r2) = (x.clone(), x.clone());
            round_to_f16(&mut r1);
            round_to_f16_scalar(&mut r2);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&r1), bits(&r2), "f16 rounding n={n}");

            let a: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut bh = vec![0u16; n];
            f32_to_f16_row_scalar(&b, &mut bh);
            let scale: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum::<f32>() + 1e-6;
            assert!((dot_f16(&a, &bh) - dot_f16_scalar(&a, &bh)).abs() <= 1e-5 * scale, "dot_f16 n={n}");
            // Against f32 values: only the f16 rounding of `b` (2^-11 relative) differs.
            assert!((dot_f16(&a, &bh) - dot_scalar(&a, &b)).abs() <= 1e-3 * scale, "dot_f16 vs f32 n={n}");
            let (mut y1, mut y2) = (a.clone(), a.clone());
            axpy_f16(0.37, &bh, &mut y1);
            axpy_f16_scalar(0.37, &bh, &mut y2);
            for (p, q) in y1.iter().zip(&y2) {
                assert!((p - q).abs() <= 1e-6, "axpy_f16 n={n}");
            }
        }
    }

    #[test]
    fn simd_dot_and_axpy_match_scalar_references() {
        let mut seed = 1u32;
        let mut rnd = move || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for n in [0, 1, 7, 8, 15, 16, 17, 63, 64, 65, 200] {
            let a: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let scale: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum::<f32>() + 1e-6;
            assert!((dot(&a, &b) - dot_scalar(&a, &b)).abs() <= 1e-5 * scale, "dot n={n}");
            let mut y1 = b.clone();
            let mut y2 = b.clone();
            axpy(0.37, &a, &mut y1);
            axpy_scalar(0.37, &a, &mut y2);
            for (p, q) in y1.iter().zip(&y2) {
                assert!((p - q).abs() <= 1e-6, "axpy n={n}");
            }
        }
    }

    #[test]
    fn rms_norm_unit_rows() {
        let x = [3.0f32, 4.0, 0.0, 0.0];
        let w = [1.0f32; 4];
        let mut out = [0f32; 4];
        rms_norm(&x, &w, 0.0, &mut out);
        let rms = (25.0f32 / 4.0).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6);
        assert!((out[1] - 4.0 / rms).abs() < 1e-6);
    }
}
