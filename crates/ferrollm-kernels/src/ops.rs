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

/// `gate = silu(gate) * up`, the SwiGLU activation: AVX-512 or AVX2 where the CPU has it, else
/// [`silu_mul_scalar`]; all give the same bits, the exponential evaluated in f64 and rounded
/// once). ggml's own f32 `expf` here moved SmolLM2's agreement with llama.cpp from 0.9690 to
/// 0.9601, so this one stays.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul lengths");
    #[cfg(target_arch = "x86_64")]
    if crate::quant::common::has_avx512f() {
        // SAFETY: AVX-512 F, with AVX2 and FMA, was detected at run time; lengths are equal.
        unsafe { x86::silu_mul_avx512(gate, up) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::quant::common::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time; lengths are equal (asserted above).
        unsafe { x86::silu_mul(gate, up) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if crate::quant::common::has_neon() {
        // SAFETY: NEON was detected at run time; lengths are equal (asserted above).
        unsafe { neon::silu_mul(gate, up) };
        return;
    }
    silu_mul_scalar(gate, up)
}

/// Reference for [`silu_mul`], operation for operation.
pub fn silu_mul_scalar(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_lane(-*g)) * u;
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

/// `out[i]` = the f32 value of the IEEE half bits `x[i]` (exact).
#[inline]
pub fn f16_to_f32_row_scalar(x: &[u16], out: &mut [f32]) {
    for (o, &h) in out.iter_mut().zip(x) {
        *o = half::f16::from_bits(h).to_f32();
    }
}

/// Rows of a paged K or V cache, read in place: row `p` is `base[offs[p]..offs[p] + dim]`.
#[derive(Clone, Copy)]
pub struct Gathered<'a, E> {
    pub base: &'a [E],
    pub offs: &'a [usize],
    pub dim: usize,
}

impl<E> Gathered<'_, E> {
    fn check(&self) {
        assert!(self.dim > 0, "gathered rows: zero dim");
        for &o in self.offs {
            assert!(o + self.dim <= self.base.len(), "gathered row at {o} beyond the cache");
        }
    }
}

/// A cache element the kernels gather rows of: f32, or f16 bits (widened exactly).
pub trait GatherElem: Copy + Sized {
    fn widen(x: &[Self], out: &mut [f32]);
    /// One element as f32 (exact).
    fn to_f32(self) -> f32;
    /// [`crate::scores::scores`]'s AVX2 or NEON kernel, for whole vectors of keys (false: not
    /// available here).
    fn scores_simd(
        q: &[f32],
        k: crate::scores::KeysT<Self>,
        k0: usize,
        k1: usize,
        scale: f32,
        out: &mut [f32],
        out_stride: usize,
    ) -> bool;
    /// [`axpy_many_gathered`]'s AVX2 or NEON kernel (false: not available here).
    fn axpy_many_simd(w: &[f32], w_stride: usize, n: &[usize], v: Gathered<Self>, out: &mut [f32]) -> bool;
}

macro_rules! gather_elem {
    ($t:ty, $widen:expr, $one:expr) => {
        impl GatherElem for $t {
            fn widen(x: &[Self], out: &mut [f32]) {
                $widen(x, out)
            }
            #[inline(always)]
            fn to_f32(self) -> f32 {
                $one(self)
            }
            #[allow(unreachable_code)]
            // The arguments feed only the x86 and NEON kernels; elsewhere the method just answers false.
            #[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(unused_variables))]
            fn scores_simd(
                q: &[f32],
                k: crate::scores::KeysT<Self>,
                k0: usize,
                k1: usize,
                scale: f32,
                out: &mut [f32],
                out_stride: usize,
            ) -> bool {
                #[cfg(target_arch = "x86_64")]
                if crate::quant::common::has_avx2() {
                    // SAFETY: AVX2, FMA and F16C were detected; the caller checked the shapes, that
                    // every block panel lies inside the cache, and that vectors of keys are whole.
                    unsafe { crate::scores::x86::scores(q, k, k0, k1, scale, out, out_stride) };
                    return true;
                }
                #[cfg(target_arch = "aarch64")]
                if crate::quant::common::has_neon() {
                    // SAFETY: NEON was detected; the caller checked the shapes, that every block
                    // panel lies inside the cache, and that vectors of eight keys are whole.
                    unsafe { crate::attn_neon::scores(q, k, k0, k1, scale, out, out_stride) };
                    return true;
                }
                false
            }
            #[allow(unreachable_code)]
            // As above: the arguments feed only the x86 and NEON kernels.
            #[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(unused_variables))]
            fn axpy_many_simd(w: &[f32], w_stride: usize, n: &[usize], v: Gathered<Self>, out: &mut [f32]) -> bool {
                #[cfg(target_arch = "x86_64")]
                if crate::quant::common::has_avx2() {
                    let g = x86::Gather(v.base.as_ptr(), v.offs.as_ptr());
                    // SAFETY: as above.
                    unsafe { x86::axpy_many_from(w, w_stride, n, g, v.dim, out) };
                    return true;
                }
                #[cfg(target_arch = "aarch64")]
                if crate::quant::common::has_neon() {
                    // SAFETY: NEON was detected; the caller checked the shapes.
                    unsafe { crate::attn_neon::axpy_many_gathered(w, w_stride, n, v, out) };
                    return true;
                }
                false
            }
        }
    };
}
gather_elem!(f32, |x: &[f32], out: &mut [f32]| out.copy_from_slice(x), |x: f32| x);
gather_elem!(u16, f16_to_f32_row_scalar, |h: u16| half::f16::from_bits(h).to_f32());

/// [`axpy_many`] with value rows read in place from a paged cache: the same bits as widening
/// them to f32 rows first, without the copy (a decode tile's few queries would pay as much for a
/// separate widening pass as for the arithmetic).
pub fn axpy_many_gathered<E: GatherElem>(w: &[f32], w_stride: usize, n: &[usize], v: Gathered<E>, out: &mut [f32]) {
    v.check();
    let dim = v.dim;
    assert_eq!(out.len(), n.len() * dim, "axpy_many: one out row per count");
    for (r, &nr) in n.iter().enumerate() {
        assert!(nr <= v.offs.len(), "axpy_many: count {nr} beyond the rows of v");
        assert!(nr == 0 || w.len() >= r * w_stride + nr, "axpy_many: weights too short");
    }
    if !E::axpy_many_simd(w, w_stride, n, v, out) {
        axpy_many_gathered_scalar(w, w_stride, n, v, out);
    }
}

/// Reference for [`axpy_many_gathered`]: each value row widened, then [`axpy_scalar`].
pub fn axpy_many_gathered_scalar<E: GatherElem>(
    w: &[f32],
    w_stride: usize,
    n: &[usize],
    v: Gathered<E>,
    out: &mut [f32],
) {
    let mut row = vec![0f32; v.dim];
    for (r, (o, &nr)) in out.chunks_exact_mut(v.dim).zip(n).enumerate() {
        for (p, &off) in v.offs[..nr].iter().enumerate() {
            E::widen(&v.base[off..off + v.dim], &mut row);
            axpy_scalar(w[r * w_stride + p], &row, o);
        }
    }
}

/// Checks the shapes of [`axpy_many`].
fn axpy_many_shape(w: &[f32], w_stride: usize, n: &[usize], v: &[f32], dim: usize, out: &[f32]) {
    assert!(dim > 0, "axpy_many: zero dim");
    assert!(v.len().is_multiple_of(dim), "axpy_many: rows of {dim}");
    assert_eq!(out.len(), n.len() * dim, "axpy_many: one out row per count");
    for (r, &nr) in n.iter().enumerate() {
        assert!(nr <= v.len() / dim, "axpy_many: count {nr} beyond the rows of v");
        assert!(nr == 0 || w.len() >= r * w_stride + nr, "axpy_many: weights too short");
    }
}

/// Weighted sums of the `dim`-long rows of `v`: for each row `r` of `out` (one per entry of `n`),
/// `out_r += w[r * w_stride + p] * v_p` for `p` in `0..n[r]`, in that order. Each element of
/// `out` goes through the very operations that calling [`axpy`] once per `p` would do (AVX2
/// where the CPU has it, else [`axpy_many_scalar`], as for [`axpy`]).
///
/// The AVX2 kernel keeps a block of 4 rows by 16 columns in registers across all the keys, so
/// each chunk of `v` it loads serves 4 rows and no partial sum goes through memory; with AVX-512
/// F, blocks of 4 rows by 64 (then 32) columns come first, in zmm registers.
pub fn axpy_many(w: &[f32], w_stride: usize, n: &[usize], v: &[f32], dim: usize, out: &mut [f32]) {
    axpy_many_shape(w, w_stride, n, v, dim, out);
    #[cfg(target_arch = "x86_64")]
    if crate::quant::common::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time; the shapes were checked above.
        unsafe { x86::axpy_many(w, w_stride, n, v, dim, out) };
        return;
    }
    axpy_many_scalar(w, w_stride, n, v, dim, out)
}

/// Reference for [`axpy_many`]: [`axpy_scalar`] per row and weight.
pub fn axpy_many_scalar(w: &[f32], w_stride: usize, n: &[usize], v: &[f32], dim: usize, out: &mut [f32]) {
    axpy_many_shape(w, w_stride, n, v, dim, out);
    for (r, (o, &nr)) in out.chunks_exact_mut(dim).zip(n).enumerate() {
        for (p, vp) in v.chunks_exact(dim).take(nr).enumerate() {
            axpy_scalar(w[r * w_stride + p], vp, o);
        }
    }
}

/// `1/k!` for `k = 9, 8, ..., 1`: the Taylor polynomial of `exp` on `|r| <= ln(2)/2`, in Horner
/// order (the constant term 1 is added last). Its truncation error is below 1e-11 relative.
const EXP_TAYLOR: [f64; 9] =
    [1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0];

/// `exp(x)`, evaluated in f64 and rounded once to f32: within 1e-11 relative of the exact value
/// before that rounding, so as good as libm's `expf` (which differs by an ulp only where the exact
/// value lies within 1e-11 of a rounding boundary). Scalar twin of the AVX2 `exp8` of
/// [`silu_mul`]: the same operations (fused where it fuses), so the same bits for every input.
#[inline(always)]
fn exp_lane(x: f32) -> f32 {
    // Clamped to where f32 results are 0 or infinite anyway (as `maxpd`/`minpd` do: NaN passes).
    let x = x as f64;
    let x = if -200.0 > x { -200.0 } else { x };
    let x = if 100.0 < x { 100.0 } else { x };
    let n = (x * std::f64::consts::LOG2_E).round_ties_even();
    let r = (-n).mul_add(std::f64::consts::LN_2, x);
    let mut p = EXP_TAYLOR[0];
    for &c in &EXP_TAYLOR[1..] {
        p = p.mul_add(r, c);
    }
    p = p.mul_add(r, 1.0);
    // 2^n from its exponent bits (n is in -289..=145 here; NaN gives garbage bits times NaN).
    let scale = f64::from_bits(((n as i64).wrapping_add(1023) as u64) << 52);
    (p * scale) as f32
}

/// Softmax of `x` in place, computed as llama.cpp's CPU softmax computes it (AVX-512 or AVX2+FMA
/// where the CPU has it, else [`softmax_scalar`]; all give the same bits).
///
/// Why its order: attention scores already follow llama.cpp's f16 GEMM bit for bit
/// ([`crate::scores`]); with the softmax too, greedy tokens agree with it more often at near-ties
/// (the teacher-forced agreement tests move with every rounding change), and its exponential is
/// f32 (twice as fast as the f64-based one it replaced). Steps, from ggml's `soft_max`:
/// - `m = max x`;
/// - `e_i = expf_ggml(x_i - m)`, eight at a time from element 0 (lanes past the end count as 0);
/// - each eight summed as `((e0 + e4) + (e2 + e6)) + ((e1 + e5) + (e3 + e7))`, the eights added in
///   f64 in order;
/// - `x_i = e_i * (1 / sum)`, the reciprocal taken in f64 and rounded to f32.
///
/// The result is a function of `x` alone.
pub fn softmax(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::quant::common::has_avx512f() {
        // SAFETY: AVX-512 F, with AVX2 and FMA, was detected at run time.
        unsafe { x86::softmax_avx512(x) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::quant::common::has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        unsafe { x86::softmax(x) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if crate::quant::common::has_neon() {
        // SAFETY: NEON was detected at run time.
        unsafe { neon::softmax(x) };
        return;
    }
    softmax_scalar(x)
}

/// [`softmax`] of each row `x[r * stride..][..n[r]]`.
pub fn softmax_rows(x: &mut [f32], stride: usize, n: &[usize]) {
    for (r, &len) in n.iter().enumerate() {
        softmax(&mut x[r * stride..][..len]);
    }
}

/// Reference for [`softmax`], operation for operation.
pub fn softmax_scalar(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| if m > v { m } else { v });
    let mut sum = 0f64;
    for chunk in x.chunks_mut(8) {
        let mut e = [0f32; 8];
        for (ei, v) in e.iter_mut().zip(chunk.iter_mut()) {
            *v = expf_ggml(*v - max);
            *ei = *v;
        }
        let pair: [f32; 4] = std::array::from_fn(|m| e[m + 4] + e[m]);
        sum += ((pair[0] + pair[2]) + (pair[1] + pair[3])) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// ggml's AVX2 `expf` (from Arm's optimized routines: at most 1.95 ulp from the exact value),
/// one lane. Its constants, as f32 bit patterns: the rounding shifter 1.5·2^23, log2(e), ln(2) in
/// two parts, and the degree-5 polynomial.
const GGML_EXP: [u32; 9] = [
    0x4b40_0000,
    0x3fb8_aa3b,
    0x35bf_be8e,
    0x3f31_7200,
    0x3c07_2010,
    0x3d2b_9f17,
    0x3e2a_af33,
    0x3eff_fedb,
    0x3f7f_fff6,
];

/// Scalar twin of the AVX2 `expf_ggml8`: the same operations, so the same bits for every input.
/// Results below about 2^-126 go through a second scaling (subnormals); below 2^-192 they are 0,
/// above 88.38 infinite.
#[inline(always)]
fn expf_ggml(x: f32) -> f32 {
    let c = GGML_EXP.map(f32::from_bits);
    let z = x.mul_add(c[1], c[0]);
    let n = z - c[0];
    let b = (-n).mul_add(c[2], (-n).mul_add(c[3], x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
    let j = c[4].mul_add(b, c[5]).mul_add(u, c[6].mul_add(b, c[7])).mul_add(u, c[8] * b);
    if n.abs() <= 126.0 || n.is_nan() {
        return k.mul_add(j, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// [`silu_mul`] on NEON: [`exp_lane`]'s operations two f64 lanes at a time (`fmla` fuses as
/// `mul_add` does, `frintn` rounds ties to even, `fmax`/`fmin` let NaN through as its clamps do),
/// so the same bits.
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    /// `exp` of two f64 lanes, as [`super::exp_lane`] computes it before its final rounding.
    #[inline]
    #[target_feature(enable = "neon")]
    fn exp2_f64(x: float64x2_t) -> float64x2_t {
        let x = vminq_f64(vmaxq_f64(x, vdupq_n_f64(-200.0)), vdupq_n_f64(100.0));
        let n = vrndnq_f64(vmulq_n_f64(x, std::f64::consts::LOG2_E));
        let r = vfmaq_f64(x, vnegq_f64(n), vdupq_n_f64(std::f64::consts::LN_2));
        let mut p = vdupq_n_f64(super::EXP_TAYLOR[0]);
        for &c in &super::EXP_TAYLOR[1..] {
            p = vfmaq_f64(vdupq_n_f64(c), p, r);
        }
        p = vfmaq_f64(vdupq_n_f64(1.0), p, r);
        let e = vshlq_n_s64::<52>(vaddq_s64(vcvtq_s64_f64(n), vdupq_n_s64(1023)));
        vmulq_f64(p, vreinterpretq_f64_s64(e))
    }

    /// # Safety
    /// The CPU must support NEON; `gate` and `up` have equal lengths.
    #[target_feature(enable = "neon")]
    pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
        let body = gate.len() / 4 * 4;
        for (g, u) in gate[..body].chunks_exact_mut(4).zip(up.chunks_exact(4)) {
            // SAFETY: `g` and `u` are 4 f32s each, `g` borrowed mutably.
            unsafe {
                let gv = vld1q_f32(g.as_ptr());
                let neg = vnegq_f32(gv);
                let lo = vcvt_f32_f64(exp2_f64(vcvt_f64_f32(vget_low_f32(neg))));
                let hi = vcvt_f32_f64(exp2_f64(vcvt_high_f64_f32(neg)));
                let e = vcombine_f32(lo, hi);
                let s = vdivq_f32(gv, vaddq_f32(vdupq_n_f32(1.0), e));
                vst1q_f32(g.as_mut_ptr(), vmulq_f32(s, vld1q_f32(u.as_ptr())));
            }
        }
        super::silu_mul_scalar(&mut gate[body..], &up[body..]);
    }

    /// [`super::expf_ggml`] on four lanes, operation for operation.
    #[inline]
    #[target_feature(enable = "neon")]
    fn expf_ggml4(x: float32x4_t) -> float32x4_t {
        let mut c = [vdupq_n_f32(0.0); 9];
        for (c, &b) in c.iter_mut().zip(&super::GGML_EXP) {
            *c = vdupq_n_f32(f32::from_bits(b));
        }
        let z = vfmaq_f32(c[0], x, c[1]);
        let n = vsubq_f32(z, c[0]);
        let b = vfmsq_f32(vfmsq_f32(x, n, c[3]), n, c[2]);
        let e = vshlq_n_u32::<23>(vreinterpretq_u32_f32(z));
        let k = vreinterpretq_f32_u32(vaddq_u32(e, vdupq_n_u32(1f32.to_bits())));
        let abs_n = vabsq_f32(n);
        let special = vcgtq_f32(abs_n, vdupq_n_f32(126.0));
        let u = vmulq_f32(b, b);
        let j = vfmaq_f32(vmulq_f32(c[8], b), vfmaq_f32(vfmaq_f32(c[7], c[6], b), vfmaq_f32(c[5], c[4], b), u), u);
        let fast = vfmaq_f32(k, k, j);
        if vmaxvq_u32(special) == 0 {
            return fast;
        }
        let g = vandq_u32(vcleq_f32(n, vdupq_n_f32(0.0)), vdupq_n_u32(0x8200_0000));
        let s1 = vreinterpretq_f32_u32(vaddq_u32(g, vdupq_n_u32(0x7f00_0000)));
        let s2 = vreinterpretq_f32_u32(vsubq_u32(e, g));
        let huge = vcgtq_f32(abs_n, vdupq_n_f32(192.0));
        let scaled = vmulq_f32(vfmaq_f32(s2, s2, j), s1);
        vbslq_f32(huge, vmulq_f32(s1, s1), vbslq_f32(special, scaled, fast))
    }

    /// [`super::softmax`] on NEON: each eight are two registers, summed in the scalar tree.
    ///
    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn softmax(x: &mut [f32]) {
        let mut vmax = vdupq_n_f32(f32::NEG_INFINITY);
        let mut fours = x.chunks_exact(4);
        for c in &mut fours {
            // SAFETY: `c` holds 4 floats.
            vmax = vmaxq_f32(vmax, unsafe { vld1q_f32(c.as_ptr()) });
        }
        let max = fours.remainder().iter().fold(vmaxvq_f32(vmax), |m, &v| if m > v { m } else { v });
        let vm = vdupq_n_f32(max);
        let mut sum = 0f64;
        for chunk in x.chunks_mut(8) {
            let mut buf = [0f32; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: `buf` holds 8 floats.
            let (lo, hi) = unsafe { (vld1q_f32(buf.as_ptr()), vld1q_f32(buf.as_ptr().add(4))) };
            let mut e = [expf_ggml4(vsubq_f32(lo, vm)), expf_ggml4(vsubq_f32(hi, vm))];
            // Lanes past the end of the last, partial eight count as 0 (llama.cpp's masked keys).
            if chunk.len() < 8 {
                let len = chunk.len() as u32;
                let first = [0u32, 1, 2, 3];
                // SAFETY: `first` holds 4 u32s.
                let lanes = unsafe { vld1q_u32(first.as_ptr()) };
                for (h, e) in e.iter_mut().enumerate() {
                    let lane = vaddq_u32(lanes, vdupq_n_u32(4 * h as u32));
                    let valid = vcltq_u32(lane, vdupq_n_u32(len));
                    *e = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(*e), valid));
                }
            }
            // SAFETY: `buf` holds 8 floats.
            unsafe {
                vst1q_f32(buf.as_mut_ptr(), e[0]);
                vst1q_f32(buf.as_mut_ptr().add(4), e[1]);
            }
            chunk.copy_from_slice(&buf[..chunk.len()]);
            sum += crate::quant::arm::hsum8(e[0], e[1]) as f64;
        }
        let inv = (1.0 / sum) as f32;
        for v in x.iter_mut() {
            *v *= inv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::scores::x86::Load8;
    use std::arch::x86_64::*;

    /// Where the kernels read rows of keys or values: contiguous f32 rows, or rows gathered in
    /// place from a paged cache (f32, or f16 widened in registers, which is exact), so that the
    /// same kernel, hence the same float operations, serves both.
    ///
    /// Methods are `#[inline(always)]` and only called from AVX2+FMA+F16C functions (AVX-512 F
    /// ones too for [`Rows8::load16`]), into which they inline, intrinsics included.
    pub trait Rows8: Copy {
        /// Eight floats of row `p` from column `i`.
        ///
        /// # Safety
        /// Row `p` exists and holds at least `i + 8` values; the CPU has AVX2 and F16C.
        unsafe fn load8(self, p: usize, i: usize) -> __m256;
        /// Sixteen floats of row `p` from column `i`.
        ///
        /// # Safety
        /// Row `p` exists and holds at least `i + 16` values; the CPU has AVX-512 F.
        unsafe fn load16(self, p: usize, i: usize) -> __m512;
        /// Value `i` of row `p`, under the same conditions.
        unsafe fn at(self, p: usize, i: usize) -> f32;
    }

    /// Rows `dim` apart from a pointer.
    #[derive(Clone, Copy)]
    pub struct Dense(pub *const f32, pub usize);

    impl Rows8 for Dense {
        #[inline(always)]
        unsafe fn load8(self, p: usize, i: usize) -> __m256 {
            // SAFETY: the caller's promise.
            unsafe { _mm256_loadu_ps(self.0.add(p * self.1 + i)) }
        }
        #[inline(always)]
        unsafe fn load16(self, p: usize, i: usize) -> __m512 {
            // SAFETY: the caller's promise.
            unsafe { _mm512_loadu_ps(self.0.add(p * self.1 + i)) }
        }
        #[inline(always)]
        unsafe fn at(self, p: usize, i: usize) -> f32 {
            // SAFETY: the caller's promise.
            unsafe { *self.0.add(p * self.1 + i) }
        }
    }

    /// Row `p` starts at `base + offs[p]`.
    #[derive(Clone, Copy)]
    pub struct Gather<E>(pub *const E, pub *const usize);

    impl<E: Load8 + super::GatherElem> Rows8 for Gather<E> {
        #[inline(always)]
        unsafe fn load8(self, p: usize, i: usize) -> __m256 {
            // SAFETY: the caller's promise.
            unsafe { E::load8(self.0.add(*self.1.add(p) + i)) }
        }
        #[inline(always)]
        unsafe fn load16(self, p: usize, i: usize) -> __m512 {
            // SAFETY: the caller's promise.
            unsafe { E::load16(self.0.add(*self.1.add(p) + i)) }
        }
        #[inline(always)]
        unsafe fn at(self, p: usize, i: usize) -> f32 {
            // SAFETY: the caller's promise.
            unsafe { *self.0.add(*self.1.add(p) + i) }.to_f32()
        }
    }

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

    /// # Safety
    /// The CPU must support AVX2 and FMA; the shapes are those `super::axpy_many_shape` checks:
    /// `dim > 0`, `out` holds `n.len()` rows of `dim`, `v` at least `n[r]` rows of `dim`, and `w`
    /// holds `r * w_stride + n[r]` floats for every row with `n[r] > 0`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy_many(w: &[f32], w_stride: usize, n: &[usize], v: &[f32], dim: usize, out: &mut [f32]) {
        // SAFETY: the rows of `v` are `dim` apart and whole (the caller's promise).
        unsafe { axpy_many_from(w, w_stride, n, Dense(v.as_ptr(), dim), dim, out) }
    }

    /// [`axpy_many`] with values from any row source, in AVX-512 blocks first where the CPU has
    /// AVX-512 F (the same bits: each element's chain is the same either way).
    ///
    /// # Safety
    /// As for [`axpy_many`], with `v` holding rows `0..max(n)` of `dim` floats.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_many_from<V: Rows8>(w: &[f32], w_stride: usize, n: &[usize], v: V, dim: usize, out: &mut [f32]) {
        let wide = crate::quant::common::has_avx512f();
        // SAFETY: the caller's promise; `wide` only where AVX-512 F was detected.
        unsafe { axpy_many_tiered(w, w_stride, n, v, dim, out, wide) }
    }

    /// [`axpy_many_from`] with the AVX-512 blocks (`wide`) or without, so that tests can compare
    /// the two on one CPU.
    ///
    /// # Safety
    /// As for [`axpy_many_from`]; `wide` only where the CPU has AVX-512 F.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_many_tiered<V: Rows8>(
        w: &[f32],
        w_stride: usize,
        n: &[usize],
        v: V,
        dim: usize,
        out: &mut [f32],
        wide: bool,
    ) {
        let rows = n.len();
        let (pw, po) = (w.as_ptr(), out.as_mut_ptr());
        // AVX-512 takes up to 8 rows a group, so each widened value row serves twice as many.
        let group = if wide { 8 } else { 4 };
        let mut g = 0;
        while g < rows {
            let ng = (rows - g).min(group);
            let mut wide_cols = 0;
            if wide {
                // SAFETY: rows g..g + ng exist, as for the blocks below; AVX-512 F is the
                // caller's promise.
                wide_cols =
                    unsafe { axpy_cols_avx512(pw.add(g * w_stride), w_stride, &n[g..g + ng], v, dim, po.add(g * dim)) };
            }
            let mut r = g;
            while r < g + ng {
                let nr = (g + ng - r).min(4);
                let counts = &n[r..r + nr];
                let mut d = wide_cols;
                // SAFETY (the blocks): rows r..r + nr of `out` exist, their counts are within
                // `v`'s rows and `w`'s length, and columns d..d + 16 (resp. d + 8) are below `dim`.
                unsafe {
                    let (w_r, o_r) = (pw.add(r * w_stride), po.add(r * dim));
                    while d + 16 <= dim {
                        match nr {
                            4 => axpy_block::<4, 2, V>(w_r, w_stride, counts, v, dim, d, o_r),
                            3 => axpy_block::<3, 2, V>(w_r, w_stride, counts, v, dim, d, o_r),
                            2 => axpy_block::<2, 2, V>(w_r, w_stride, counts, v, dim, d, o_r),
                            _ => axpy_block::<1, 2, V>(w_r, w_stride, counts, v, dim, d, o_r),
                        }
                        d += 16;
                    }
                    if d + 8 <= dim {
                        match nr {
                            4 => axpy_block::<4, 1, V>(w_r, w_stride, counts, v, dim, d, o_r),
                            3 => axpy_block::<3, 1, V>(w_r, w_stride, counts, v, dim, d, o_r),
                            2 => axpy_block::<2, 1, V>(w_r, w_stride, counts, v, dim, d, o_r),
                            _ => axpy_block::<1, 1, V>(w_r, w_stride, counts, v, dim, d, o_r),
                        }
                        d += 8;
                    }
                }
                // The last dim % 8 columns: `axpy`'s scalar tail, key by key.
                for (i, &c) in counts.iter().enumerate().filter(|_| d < dim) {
                    for p in 0..c {
                        // SAFETY: as for the blocks; t < dim. Raw pointers throughout, so `po`
                        // stays valid for the next rows.
                        unsafe {
                            let a = *pw.add((r + i) * w_stride + p);
                            for t in d..dim {
                                *po.add((r + i) * dim + t) += a * v.at(p, t);
                            }
                        }
                    }
                }
                r += nr;
            }
            g += ng;
        }
    }

    /// One body for the AVX2 and AVX-512 value blocks (`$lanes` columns a register): every
    /// element goes through the same fused multiply-adds in the same order on both.
    macro_rules! axpy_block_fn {
        ($(#[$doc:meta])* $name:ident, $features:literal, $lanes:literal, $vec:ty, $zero:ident,
         $loadu:ident, $set1:ident, $fmadd:ident, $storeu:ident, $rowload:ident) => {
            $(#[$doc])*
            #[target_feature(enable = $features)]
            #[inline]
            #[allow(clippy::needless_range_loop)]
            unsafe fn $name<const R: usize, const C: usize, V: Rows8>(
                w: *const f32,
                w_stride: usize,
                n: &[usize],
                v: V,
                dim: usize,
                d0: usize,
                out: *mut f32,
            ) {
                let mut acc: [[$vec; C]; R] = [[$zero(); C]; R];
                let mut vv: [$vec; C] = [$zero(); C];
                // SAFETY (all loads and stores below): inside the rows and columns the caller
                // promises.
                for r in 0..R {
                    for c in 0..C {
                        acc[r][c] = unsafe { $loadu(out.add(r * dim + d0 + $lanes * c)) };
                    }
                }
                let (lo, hi) = (n.iter().copied().min().unwrap_or(0), n.iter().copied().max().unwrap_or(0));
                // Keys every row takes.
                for p in 0..lo {
                    for c in 0..C {
                        vv[c] = unsafe { v.$rowload(p, d0 + $lanes * c) };
                    }
                    for r in 0..R {
                        let a = $set1(unsafe { *w.add(r * w_stride + p) });
                        for c in 0..C {
                            acc[r][c] = $fmadd(a, vv[c], acc[r][c]);
                        }
                    }
                }
                // Keys only the rows with longer contexts take (the causal triangle of a tile).
                for p in lo..hi {
                    for c in 0..C {
                        vv[c] = unsafe { v.$rowload(p, d0 + $lanes * c) };
                    }
                    for r in 0..R {
                        if p < n[r] {
                            let a = $set1(unsafe { *w.add(r * w_stride + p) });
                            for c in 0..C {
                                acc[r][c] = $fmadd(a, vv[c], acc[r][c]);
                            }
                        }
                    }
                }
                for r in 0..R {
                    for c in 0..C {
                        unsafe { $storeu(out.add(r * dim + d0 + $lanes * c), acc[r][c]) };
                    }
                }
            }
        };
    }

    axpy_block_fn!(
        /// Columns `d0..d0 + 8 * C` of `R` rows of `out` (at `out`, `dim` apart): row `r` adds
        /// `w[r * w_stride + p] * v_p` for `p < n[r]` in order, with `axpy`'s fused multiply-add.
        ///
        /// # Safety
        /// AVX2 and FMA; `n.len() == R`; row `r` of `out` and rows `p < n[r]` of `v` hold at least
        /// `d0 + 8 * C <= dim` floats, and `w` is readable at `r * w_stride + p` for `p < n[r]`.
        axpy_block, "avx2,fma,f16c", 8, __m256, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_set1_ps,
        _mm256_fmadd_ps, _mm256_storeu_ps, load8
    );

    axpy_block_fn!(
        /// [`axpy_block`] for columns `d0..d0 + 16 * C`, sixteen per zmm register.
        ///
        /// # Safety
        /// AVX-512 F, AVX2, FMA and F16C; `n.len() == R`; row `r` of `out` and rows `p < n[r]` of
        /// `v` hold at least `d0 + 16 * C <= dim` floats, and `w` is readable at `r * w_stride + p`
        /// for `p < n[r]`.
        axpy_block512, "avx512f,avx2,fma,f16c", 16, __m512, _mm512_setzero_ps, _mm512_loadu_ps,
        _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps, load16
    );

    /// Columns `0..dim / 32 * 32` of the `n.len()` (1 to 8) rows of `out`: up to 4 rows in blocks
    /// of 64 then 32 columns, more in blocks of 32 (16 zmm accumulators either way, half the
    /// register file, so each value load serves every row); returns how many columns it did.
    ///
    /// # Safety
    /// AVX-512 F, AVX2, FMA and F16C; `1 <= n.len() <= 8`; otherwise as for [`axpy_block`], for
    /// every block of columns below `dim`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn axpy_cols_avx512<V: Rows8>(
        w: *const f32,
        w_stride: usize,
        n: &[usize],
        v: V,
        dim: usize,
        out: *mut f32,
    ) -> usize {
        let mut d = 0;
        // SAFETY (the blocks): the caller's promise, with columns d..d + 64 (resp. d + 32) below
        // `dim`.
        unsafe {
            if n.len() > 4 {
                while d + 32 <= dim {
                    match n.len() {
                        8 => axpy_block512::<8, 2, V>(w, w_stride, n, v, dim, d, out),
                        7 => axpy_block512::<7, 2, V>(w, w_stride, n, v, dim, d, out),
                        6 => axpy_block512::<6, 2, V>(w, w_stride, n, v, dim, d, out),
                        _ => axpy_block512::<5, 2, V>(w, w_stride, n, v, dim, d, out),
                    }
                    d += 32;
                }
                return d;
            }
            while d + 64 <= dim {
                match n.len() {
                    4 => axpy_block512::<4, 4, V>(w, w_stride, n, v, dim, d, out),
                    3 => axpy_block512::<3, 4, V>(w, w_stride, n, v, dim, d, out),
                    2 => axpy_block512::<2, 4, V>(w, w_stride, n, v, dim, d, out),
                    _ => axpy_block512::<1, 4, V>(w, w_stride, n, v, dim, d, out),
                }
                d += 64;
            }
            if d + 32 <= dim {
                match n.len() {
                    4 => axpy_block512::<4, 2, V>(w, w_stride, n, v, dim, d, out),
                    3 => axpy_block512::<3, 2, V>(w, w_stride, n, v, dim, d, out),
                    2 => axpy_block512::<2, 2, V>(w, w_stride, n, v, dim, d, out),
                    _ => axpy_block512::<1, 2, V>(w, w_stride, n, v, dim, d, out),
                }
                d += 32;
            }
        }
        d
    }

    /// Four lanes of `super::exp_lane`, operation for operation.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn exp4(x: __m128) -> __m128 {
        let x = _mm256_cvtps_pd(x);
        let x = _mm256_max_pd(_mm256_set1_pd(-200.0), x);
        let x = _mm256_min_pd(_mm256_set1_pd(100.0), x);
        let n = _mm256_round_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_pd(
            x,
            _mm256_set1_pd(std::f64::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(std::f64::consts::LN_2), x);
        let mut p = _mm256_set1_pd(super::EXP_TAYLOR[0]);
        for &c in &super::EXP_TAYLOR[1..] {
            p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(c));
        }
        p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0));
        // n as an integer in the low bits (n + 1.5 * 2^52), plus the bias, into the exponent.
        let k = _mm256_castpd_si256(_mm256_add_pd(n, _mm256_set1_pd(6755399441055744.0)));
        let scale = _mm256_castsi256_pd(_mm256_slli_epi64::<52>(_mm256_add_epi64(k, _mm256_set1_epi64x(1023))));
        _mm256_cvtpd_ps(_mm256_mul_pd(p, scale))
    }

    /// [`exp8`] on 8 floats, for the tests.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp8_slice(x: &[f32; 8]) -> [f32; 8] {
        let mut out = [0f32; 8];
        // SAFETY: both arrays hold 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp8(_mm256_loadu_ps(x.as_ptr()))) };
        out
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA, and `gate.len() == up.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
        let n = gate.len();
        let body = n / 8 * 8;
        let (pg, pu) = (gate.as_mut_ptr(), up.as_ptr());
        let one = _mm256_set1_ps(1.0);
        for i in (0..body).step_by(8) {
            // SAFETY: i + 8 <= body <= n, and both slices hold n floats; `gate` is borrowed mutably.
            unsafe {
                let g = _mm256_loadu_ps(pg.add(i));
                let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
                let s = _mm256_div_ps(g, _mm256_add_ps(one, e));
                _mm256_storeu_ps(pg.add(i), _mm256_mul_ps(s, _mm256_loadu_ps(pu.add(i))));
            }
        }
        super::silu_mul_scalar(&mut gate[body..], &up[body..]);
    }

    /// Eight lanes of `super::exp_lane`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn exp8(x: __m256) -> __m256 {
        let lo = exp4(_mm256_castps256_ps128(x));
        let hi = exp4(_mm256_extractf128_ps(x, 1));
        _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1)
    }

    /// Eight lanes of `super::exp_lane` in one zmm of f64, operation for operation as [`exp4`]
    /// (`vrndscalepd` with mode 0 rounds to nearest even, as `vroundpd` does).
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    fn exp8_f64(x: __m256) -> __m256 {
        let x = _mm512_cvtps_pd(x);
        let x = _mm512_max_pd(_mm512_set1_pd(-200.0), x);
        let x = _mm512_min_pd(_mm512_set1_pd(100.0), x);
        let n = _mm512_roundscale_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_pd(
            x,
            _mm512_set1_pd(std::f64::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_pd(n, _mm512_set1_pd(std::f64::consts::LN_2), x);
        let mut p = _mm512_set1_pd(super::EXP_TAYLOR[0]);
        for &c in &super::EXP_TAYLOR[1..] {
            p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(c));
        }
        p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0));
        let k = _mm512_castpd_si512(_mm512_add_pd(n, _mm512_set1_pd(6755399441055744.0)));
        let scale = _mm512_castsi512_pd(_mm512_slli_epi64::<52>(_mm512_add_epi64(k, _mm512_set1_epi64(1023))));
        _mm512_cvtpd_ps(_mm512_mul_pd(p, scale))
    }

    /// Sixteen lanes of `super::exp_lane`: two [`exp8_f64`], half the instructions of [`exp8`]
    /// per lane.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    fn exp16(x: __m512) -> __m512 {
        let lo = exp8_f64(_mm512_castps512_ps256(x));
        let hi = exp8_f64(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi)))
    }

    /// [`exp16`] on 16 floats, for the tests.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, AVX2 and FMA.
    #[cfg(test)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn exp16_slice(x: &[f32; 16]) -> [f32; 16] {
        let mut out = [0f32; 16];
        // SAFETY: both arrays hold 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp16(_mm512_loadu_ps(x.as_ptr()))) };
        out
    }

    /// [`silu_mul`] sixteen lanes at a time, the same operations per lane; the last `len % 16`
    /// go through the AVX2 kernel (and its scalar tail).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, AVX2 and FMA, and `gate.len() == up.len()`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn silu_mul_avx512(gate: &mut [f32], up: &[f32]) {
        let n = gate.len();
        let body = n / 16 * 16;
        let (pg, pu) = (gate.as_mut_ptr(), up.as_ptr());
        let one = _mm512_set1_ps(1.0);
        for i in (0..body).step_by(16) {
            // SAFETY: i + 16 <= body <= n, and both slices hold n floats; `gate` is borrowed mutably.
            unsafe {
                let g = _mm512_loadu_ps(pg.add(i));
                let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
                let s = _mm512_div_ps(g, _mm512_add_ps(one, e));
                _mm512_storeu_ps(pg.add(i), _mm512_mul_ps(s, _mm512_loadu_ps(pu.add(i))));
            }
        }
        // SAFETY: AVX2 and FMA are among this function's features; the tails have equal lengths.
        unsafe { silu_mul(&mut gate[body..], &up[body..]) }
    }

    /// Eight lanes of `super::expf_ggml`, operation for operation.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn expf_ggml8(x: __m256) -> __m256 {
        // A plain loop, not `array::map`: its closure was sometimes left out of line, a call
        // per 8 exponentials (softmax 4× slower in one build).
        let mut c = [_mm256_setzero_ps(); 9];
        for (c, &b) in c.iter_mut().zip(&super::GGML_EXP) {
            *c = _mm256_set1_ps(f32::from_bits(b));
        }
        let z = _mm256_fmadd_ps(x, c[1], c[0]);
        let n = _mm256_sub_ps(z, c[0]);
        let b = _mm256_fnmadd_ps(n, c[2], _mm256_fnmadd_ps(n, c[3], x));
        let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
        let k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0))));
        let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let special = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0));
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(_mm256_fmadd_ps(c[4], b, c[5]), u, _mm256_fmadd_ps(c[6], b, c[7])),
            u,
            _mm256_mul_ps(c[8], b),
        );
        let fast = _mm256_fmadd_ps(k, j, k);
        if _mm256_movemask_ps(special) == 0 {
            return fast;
        }
        let g = _mm256_and_si256(
            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
            _mm256_set1_epi32(0x8200_0000u32 as i32),
        );
        let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
        let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
        let huge = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
        let scaled = _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1);
        let y = _mm256_blendv_ps(fast, scaled, special);
        _mm256_blendv_ps(y, _mm256_mul_ps(s1, s1), huge)
    }

    /// [`expf_ggml8`] on 8 floats, for the tests.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn expf_ggml8_slice(x: &[f32; 8]) -> [f32; 8] {
        let mut out = [0f32; 8];
        // SAFETY: both arrays hold 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), expf_ggml8(_mm256_loadu_ps(x.as_ptr()))) };
        out
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax(x: &mut [f32]) {
        // The maximum in lanes: the same value as the scalar fold for any input without NaN.
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut eights = x.chunks_exact(8);
        for c in &mut eights {
            // SAFETY: `c` holds 8 floats.
            vmax = _mm256_max_ps(vmax, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        }
        let m4 = _mm_max_ps(_mm256_extractf128_ps(vmax, 1), _mm256_castps256_ps128(vmax));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let lanes = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let max = eights.remainder().iter().fold(lanes, |m, &v| if m > v { m } else { v });
        let vm = _mm256_set1_ps(max);
        let mut sum = 0f64;
        for chunk in x.chunks_mut(8) {
            let len = chunk.len();
            let e = if len == 8 {
                // SAFETY: `chunk` holds 8 floats, borrowed mutably.
                unsafe {
                    let e = expf_ggml8(_mm256_sub_ps(_mm256_loadu_ps(chunk.as_ptr()), vm));
                    _mm256_storeu_ps(chunk.as_mut_ptr(), e);
                    e
                }
            } else {
                // The last, partial eight: lanes past the end count as 0 (llama.cpp's masked keys).
                let mut buf = [0f32; 8];
                buf[..len].copy_from_slice(chunk);
                // SAFETY: `buf` holds 8 floats.
                let e = expf_ggml8(_mm256_sub_ps(unsafe { _mm256_loadu_ps(buf.as_ptr()) }, vm));
                let valid =
                    _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                let e = _mm256_and_ps(e, _mm256_castsi256_ps(valid));
                // SAFETY: `buf` holds 8 floats.
                unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), e) };
                chunk.copy_from_slice(&buf[..len]);
                e
            };
            let t = _mm_add_ps(_mm256_extractf128_ps(e, 1), _mm256_castps256_ps128(e));
            let t = _mm_add_ps(t, _mm_movehl_ps(t, t));
            sum += _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t))) as f64;
        }
        let inv = (1.0 / sum) as f32;
        let vinv = _mm256_set1_ps(inv);
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 floats, borrowed mutably.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), vinv)) };
        }
        for v in chunks.into_remainder() {
            *v *= inv;
        }
    }

    /// Sixteen lanes of `super::expf_ggml`, operation for operation as [`expf_ggml8`] (lane
    /// masks in place of its blends; `vpandd` with the sign cleared in place of `vandnps`).
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    fn expf_ggml16(x: __m512) -> __m512 {
        // A plain loop, as in `expf_ggml8`.
        let mut c = [_mm512_setzero_ps(); 9];
        for (c, &b) in c.iter_mut().zip(&super::GGML_EXP) {
            *c = _mm512_set1_ps(f32::from_bits(b));
        }
        let z = _mm512_fmadd_ps(x, c[1], c[0]);
        let n = _mm512_sub_ps(z, c[0]);
        let b = _mm512_fnmadd_ps(n, c[2], _mm512_fnmadd_ps(n, c[3], x));
        let e = _mm512_slli_epi32::<23>(_mm512_castps_si512(z));
        let k = _mm512_castsi512_ps(_mm512_add_epi32(e, _mm512_castps_si512(_mm512_set1_ps(1.0))));
        let abs_n = _mm512_abs_ps(n);
        let special = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(abs_n, _mm512_set1_ps(126.0));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(_mm512_fmadd_ps(c[4], b, c[5]), u, _mm512_fmadd_ps(c[6], b, c[7])),
            u,
            _mm512_mul_ps(c[8], b),
        );
        let fast = _mm512_fmadd_ps(k, j, k);
        if special == 0 {
            return fast;
        }
        let g = _mm512_maskz_mov_epi32(
            _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps()),
            _mm512_set1_epi32(0x8200_0000u32 as i32),
        );
        let s1 = _mm512_castsi512_ps(_mm512_add_epi32(g, _mm512_set1_epi32(0x7f00_0000)));
        let s2 = _mm512_castsi512_ps(_mm512_sub_epi32(e, g));
        let huge = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(abs_n, _mm512_set1_ps(192.0));
        let scaled = _mm512_mul_ps(_mm512_fmadd_ps(s2, j, s2), s1);
        let y = _mm512_mask_blend_ps(special, fast, scaled);
        _mm512_mask_blend_ps(huge, y, _mm512_mul_ps(s1, s1))
    }

    /// [`expf_ggml16`] on 16 floats, for the tests.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, AVX2 and FMA.
    #[cfg(test)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn expf_ggml16_slice(x: &[f32; 16]) -> [f32; 16] {
        let mut out = [0f32; 16];
        // SAFETY: both arrays hold 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), expf_ggml16(_mm512_loadu_ps(x.as_ptr()))) };
        out
    }

    /// The sums of lanes 0..8 and of lanes 8..16 of `e`, each in [`softmax`]'s order for an
    /// eight: `((e0 + e4) + (e2 + e6)) + ((e1 + e5) + (e3 + e7))`, operands as there.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    fn sum_eights(e: __m512) -> (f32, f32) {
        // Lane m < 4 of each eight: e[m + 4] + e[m] (the 128-bit halves of each eight swapped).
        let t = _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_11_00_01>(e, e), e);
        // Lanes 0 and 1: t0 + t2 and t1 + t3 (`movhlps`), then lane 0 their sum (`movshdup`).
        let t = _mm512_add_ps(t, _mm512_permute_ps::<0b11_10_11_10>(t));
        let t = _mm512_add_ps(t, _mm512_movehdup_ps(t));
        (_mm512_cvtss_f32(t), _mm_cvtss_f32(_mm512_extractf32x4_ps::<2>(t)))
    }

    /// [`softmax`] sixteen lanes at a time: the maximum, the exponentials and the scaling are
    /// element-wise (the maximum exact in any order), and each sixteen's two eights are summed
    /// and added to the f64 sum in order, as [`softmax`] adds them. Partial sixteens use masked
    /// loads and stores.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn softmax_avx512(x: &mut [f32]) {
        let len = x.len();
        let p = x.as_mut_ptr();
        let (body, rest) = (len / 16 * 16, len % 16);
        // Lanes 0..rest of the partial sixteen at `body`.
        let tail: __mmask16 = ((1u32 << rest) - 1) as u16;
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut vmax = neg_inf;
        for i in (0..body).step_by(16) {
            // SAFETY: i + 16 <= len, and `x` holds len floats.
            vmax = _mm512_max_ps(vmax, unsafe { _mm512_loadu_ps(p.add(i)) });
        }
        if rest > 0 {
            // SAFETY: lanes 0..rest are x[body..len]; masked-off lanes are not read.
            vmax = _mm512_max_ps(vmax, unsafe { _mm512_mask_loadu_ps(neg_inf, tail, p.add(body)) });
        }
        let hi8 = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(vmax)));
        let m8 = _mm256_max_ps(hi8, _mm512_castps512_ps256(vmax));
        let m4 = _mm_max_ps(_mm256_extractf128_ps(m8, 1), _mm256_castps256_ps128(m8));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let vm = _mm512_set1_ps(_mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2))));
        let mut sum = 0f64;
        for i in (0..body).step_by(16) {
            // SAFETY: i + 16 <= len, and `x` holds len floats, borrowed mutably.
            let e = unsafe {
                let e = expf_ggml16(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), vm));
                _mm512_storeu_ps(p.add(i), e);
                e
            };
            let (lo, hi) = sum_eights(e);
            sum += lo as f64;
            sum += hi as f64;
        }
        if rest > 0 {
            // Lanes past the end count as 0 (llama.cpp's masked keys), as in [`softmax`].
            // SAFETY: lanes 0..rest are x[body..len], borrowed mutably; masked-off lanes are
            // neither read nor written.
            let e = unsafe {
                let v = _mm512_maskz_loadu_ps(tail, p.add(body));
                let e = _mm512_maskz_mov_ps(tail, expf_ggml16(_mm512_sub_ps(v, vm)));
                _mm512_mask_storeu_ps(p.add(body), tail, e);
                e
            };
            let (lo, hi) = sum_eights(e);
            sum += lo as f64;
            if rest > 8 {
                sum += hi as f64;
            }
        }
        let vinv = _mm512_set1_ps((1.0 / sum) as f32);
        for i in (0..body).step_by(16) {
            // SAFETY: i + 16 <= len, and `x` holds len floats, borrowed mutably.
            unsafe { _mm512_storeu_ps(p.add(i), _mm512_mul_ps(_mm512_loadu_ps(p.add(i)), vinv)) };
        }
        if rest > 0 {
            // SAFETY: as for the exponentials of the partial sixteen.
            unsafe {
                let v = _mm512_maskz_loadu_ps(tail, p.add(body));
                _mm512_mask_storeu_ps(p.add(body), tail, _mm512_mul_ps(v, vinv));
            }
        }
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
    fn axpy_many_equals_single_calls_bit_for_bit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(23);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for dim in [1, 5, 8, 13, 16, 24, 31, 64, 72, 128] {
            for (nq, nk) in [(1, 1), (1, 4), (2, 3), (3, 2), (4, 5), (7, 4), (9, 9), (24, 13)] {
                let k: Vec<f32> = (0..nk * dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
                // Weighted sums: random counts per row (0 and all keys included), weights with a stride.
                let ws = nk + 2;
                let w: Vec<f32> = (0..nq * ws).map(|_| rng.gen_range(0.0..1.0)).collect();
                let n: Vec<usize> = (0..nq).map(|r| if r == 0 { nk } else { rng.gen_range(0..=nk) }).collect();
                let init: Vec<f32> = (0..nq * dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let (mut fast, mut slow) = (init.clone(), init.clone());
                axpy_many(&w, ws, &n, &k, dim, &mut fast);
                axpy_many_scalar(&w, ws, &n, &k, dim, &mut slow);
                let (mut want, mut want_scalar) = (init.clone(), init.clone());
                for r in 0..nq {
                    for p in 0..n[r] {
                        let kp = &k[p * dim..][..dim];
                        axpy(w[r * ws + p], kp, &mut want[r * dim..][..dim]);
                        axpy_scalar(w[r * ws + p], kp, &mut want_scalar[r * dim..][..dim]);
                    }
                }
                assert_eq!(bits(&fast), bits(&want), "axpy_many dim={dim} nq={nq} nk={nk}");
                assert_eq!(bits(&slow), bits(&want_scalar), "axpy_many_scalar dim={dim}");
                for (f, s) in fast.iter().zip(&slow) {
                    assert!((f - s).abs() <= 1e-5 * (nk as f32 + 1.0), "axpy_many vs scalar dim={dim}: {f} vs {s}");
                }
            }
        }
    }

    /// The NEON SwiGLU on the edges of its exponential: zeros, infinities, NaN, clamped and
    /// overflowing arguments, subnormals; the same bits as the scalar twin (any NaN for NaN).
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_silu_mul_matches_scalar_twin_on_special_values() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(38);
        let inf = f32::INFINITY;
        let special = [0.0, -0.0, 88.0, -88.0, 104.0, -104.0, 200.0, -200.0, 1e30, -1e30, 1e-40, inf, -inf, f32::NAN];
        let g: Vec<f32> = (0..1003)
            .map(|i| if i % 5 == 0 { special[i / 5 % special.len()] } else { rng.gen_range(-120.0..120.0) })
            .collect();
        let u: Vec<f32> = (0..g.len()).map(|_| rng.gen_range(-2.0..2.0)).collect();
        let (mut a, mut b) = (g.clone(), g.clone());
        silu_mul(&mut a, &u);
        silu_mul_scalar(&mut b, &u);
        for ((x, y), g) in a.iter().zip(&b).zip(&g) {
            assert!(x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan(), "silu({g}): {x} vs {y}");
        }
    }

    #[test]
    fn silu_mul_matches_scalar_twin_and_libm() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(31);
        for n in [0, 1, 7, 8, 9, 100, 1000] {
            let g: Vec<f32> = (0..n).map(|_| rng.gen_range(-30.0..30.0)).collect();
            let u: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let (mut a, mut b) = (g.clone(), g.clone());
            silu_mul(&mut a, &u);
            silu_mul_scalar(&mut b, &u);
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            for ((&x, &y), &got) in g.iter().zip(&u).zip(&a) {
                let want = x / (1.0 + (-x).exp()) * y;
                assert!((got - want).abs() <= 1e-6 * want.abs() + 1e-30, "silu({x}) * {y}: {got} vs {want}");
            }
        }
        // Saturation: silu(-inf) * u = -0 or NaN as for libm; large negatives go to zero.
        let (mut g, u) = (vec![-200.0f32, 200.0, 0.0], vec![1.0f32; 3]);
        silu_mul(&mut g, &u);
        assert_eq!(g, [-0.0, 200.0, 0.0]);
    }

    /// Rows gathered in place from a scattered cache, f32 or f16, give the very bits of the dense
    /// kernels on the widened rows (SIMD and scalar alike).
    #[test]
    fn gathered_kernels_equal_dense_kernels_on_widened_rows() {
        use rand::seq::SliceRandom;
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(29);
        fn check<E: GatherElem>(rng: &mut impl Rng, cache: &[E], dim: usize, nq: usize, nk: usize) {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            // Rows at shuffled, strided offsets (a paged cache: slot * kv_dim + head * dim).
            let mut slots: Vec<usize> = (0..cache.len() / (2 * dim)).collect();
            slots.shuffle(rng);
            let offs: Vec<usize> = slots[..nk].iter().map(|&s| s * 2 * dim + dim).collect();
            let g = Gathered { base: cache, offs: &offs, dim };
            let mut dense = vec![0f32; nk * dim];
            for (d, &o) in dense.chunks_exact_mut(dim).zip(&offs) {
                E::widen(&cache[o..o + dim], d);
            }
            let w: Vec<f32> = (0..nq * nk).map(|_| rng.gen_range(0.0..1.0)).collect();
            let n: Vec<usize> = (0..nq).map(|r| if r == 0 { nk } else { rng.gen_range(0..=nk) }).collect();
            let run = |f: &dyn Fn(&mut [f32])| {
                let mut out = vec![0.25f32; nq * dim];
                f(&mut out);
                out
            };
            let fast = run(&|o| axpy_many_gathered(&w, nk, &n, g, o));
            let slow = run(&|o| axpy_many_gathered_scalar(&w, nk, &n, g, o));
            assert_eq!(bits(&fast), bits(&run(&|o| axpy_many(&w, nk, &n, &dense, dim, o))), "axpy dim={dim}");
            assert_eq!(bits(&slow), bits(&run(&|o| axpy_many_scalar(&w, nk, &n, &dense, dim, o))), "scalar");
        }
        for dim in [1, 8, 13, 64, 72, 128] {
            let len = 40 * 2 * dim;
            let c32: Vec<f32> = (0..len).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let c16: Vec<u16> = c32.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect();
            for (nq, nk) in [(1, 1), (1, 7), (2, 3), (3, 2), (9, 17), (24, 40)] {
                check(&mut rng, &c32, dim, nq, nk);
                check(&mut rng, &c16, dim, nq, nk);
            }
        }
    }

    #[test]
    fn softmax_matches_scalar_twin_bit_for_bit_and_exact_softmax_closely() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for n in [0, 1, 7, 8, 9, 16, 23, 64, 65, 300] {
            for spread in [0.5f32, 10.0, 120.0] {
                let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-spread..spread)).collect();
                let (mut a, mut b) = (x.clone(), x.clone());
                softmax(&mut a);
                softmax_scalar(&mut b);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "softmax n={n} spread={spread}");
                // Against the exact softmax.
                let m = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let e: Vec<f64> = x.iter().map(|&v| ((v - m) as f64).exp()).collect();
                let z: f64 = e.iter().sum();
                for (got, want) in a.iter().zip(&e) {
                    assert!(
                        (*got as f64 - want / z).abs() <= 1e-6 * (want / z) + 1e-30,
                        "n={n}: {got} vs {}",
                        want / z
                    );
                }
            }
        }
    }

    #[test]
    fn silu_exp_matches_scalar_twin_and_libm() {
        // The exponential alone, over its whole range (flush to 0 and to infinity included), against
        // libm's `expf` and against the exact value rounded to f32 (via f64): at most an ulp apart.
        let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).abs();
        let xs: Vec<f32> =
            (0..200_000).map(|i| -110.0 + i as f32 * 0.001).chain([0.0, -0.0, 88.0, 88.5, -200.0, -1e30]).collect();
        let (mut exact, mut chunk) = (0, [0f32; 8]);
        for (i, &x) in xs.iter().enumerate() {
            let got = exp_lane(x);
            assert!(ulps(got, x.exp()) <= 1, "exp({x}) = {got}, libm {}", x.exp());
            assert!(ulps(got, (x as f64).exp() as f32) <= 1, "exp({x}) = {got}");
            exact += (got.to_bits() == ((x as f64).exp() as f32).to_bits()) as usize;
            chunk[i % 8] = x;
            if i % 8 == 7 {
                // The SIMD lanes, bit for bit (through softmax of a one-hot row would lose them).
                #[cfg(target_arch = "x86_64")]
                if crate::quant::common::has_avx2() {
                    // SAFETY: AVX2 and FMA were detected at run time; `chunk` holds 8 floats.
                    let v = unsafe { x86::exp8_slice(&chunk) };
                    for (l, &c) in chunk.iter().enumerate() {
                        assert_eq!(v[l].to_bits(), exp_lane(c).to_bits(), "exp8({c})");
                    }
                }
            }
        }
        assert!(exact * 1000 >= xs.len() * 999, "{exact} of {} correctly rounded", xs.len());
        assert!(exp_lane(f32::NAN).is_nan() && exp_lane(f32::INFINITY) == f32::INFINITY);
        assert_eq!(exp_lane(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn ggml_expf_simd_matches_scalar_twin_and_is_within_two_ulp() {
        let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).abs();
        let xs: Vec<f32> = (0..300_000)
            .map(|i| -150.0 + i as f32 * 0.0008)
            .chain([0.0, -0.0, 88.3, 88.4, 88.7, 89.0, -87.0, -103.0, -104.5, -200.0, -1e30])
            .chain([f32::NEG_INFINITY, f32::INFINITY, f32::NAN])
            .collect();
        for chunk in xs.chunks(8) {
            let mut lanes = [0f32; 8];
            lanes[..chunk.len()].copy_from_slice(chunk);
            #[cfg(target_arch = "x86_64")]
            if crate::quant::common::has_avx2() {
                // SAFETY: AVX2 and FMA were detected at run time; `lanes` holds 8 floats.
                let v = unsafe { x86::expf_ggml8_slice(&lanes) };
                for (l, &x) in lanes.iter().enumerate() {
                    let s = expf_ggml(x);
                    assert!(v[l].to_bits() == s.to_bits() || (v[l].is_nan() && s.is_nan()), "expf_ggml8({x})");
                }
            }
        }
        for &x in &xs {
            let (got, want) = (expf_ggml(x), (x as f64).exp());
            if x.is_nan() {
                assert!(got.is_nan());
            } else if want >= f32::MIN_POSITIVE as f64 && want <= f32::MAX as f64 {
                assert!(ulps(got, want as f32) <= 2, "expf_ggml({x}) = {got}, exact {want}");
            } else if want < f32::MIN_POSITIVE as f64 {
                assert!((0.0..f32::MIN_POSITIVE).contains(&got), "expf_ggml({x}) = {got}");
            } else {
                assert_eq!(got, f32::INFINITY, "expf_ggml({x})");
            }
        }
        assert_eq!(expf_ggml(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn softmax_rows_equal_each_row_alone() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for rows in [1usize, 2, 3, 7, 8, 9, 17, 24] {
            let stride = 70;
            let n: Vec<usize> = (0..rows).map(|_| rng.gen_range(0..=stride)).collect();
            let x: Vec<f32> = (0..rows * stride).map(|_| rng.gen_range(-30.0..30.0)).collect();
            let mut got = x.clone();
            softmax_rows(&mut got, stride, &n);
            for (r, &len) in n.iter().enumerate() {
                let mut want = x[r * stride..][..len].to_vec();
                softmax_scalar(&mut want);
                assert_eq!(bits(&got[r * stride..][..len]), bits(&want), "{rows} rows, row {r}");
                assert_eq!(
                    bits(&got[r * stride + len..][..stride - len]),
                    bits(&x[r * stride + len..][..stride - len])
                );
            }
        }
    }

    /// Bits equal, or both NaN (payloads are not part of the contract).
    #[cfg(target_arch = "x86_64")]
    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
    }

    /// Random values in `-spread..spread`, about one in six replaced by a special value (if any).
    #[cfg(target_arch = "x86_64")]
    fn with_specials(rng: &mut impl rand::Rng, n: usize, spread: f32, special: &[f32]) -> Vec<f32> {
        (0..n)
            .map(|_| {
                if !special.is_empty() && rng.gen_range(0..6) == 0 {
                    special[rng.gen_range(0..special.len())]
                } else {
                    rng.gen_range(-spread..spread)
                }
            })
            .collect()
    }

    /// The AVX-512 `silu_mul` (and its 16-lane exponential over the whole range) gives the AVX2
    /// kernel's and the scalar twin's bits, tails of every length included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn silu_mul_avx512_matches_avx2_and_scalar_bit_for_bit() {
        use rand::{Rng, SeedableRng};
        if !crate::quant::common::has_avx512f() {
            eprintln!("no AVX-512 F here: silu_mul never takes its AVX-512 path, nothing to compare");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(37);
        let inf = f32::INFINITY;
        let special = [0.0, -0.0, 88.0, -88.0, 104.0, -104.0, 200.0, -200.0, 1e30, -1e30, 1e-40, inf, -inf, f32::NAN];
        for n in [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 100, 1000, 1023] {
            for spread in [1.0f32, 30.0, 120.0] {
                let g = with_specials(&mut rng, n, spread, &special);
                let u: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let (mut wide, mut avx2, mut scalar) = (g.clone(), g.clone(), g.clone());
                // SAFETY: AVX-512 F (with AVX2 and FMA) was detected above; lengths are equal.
                unsafe {
                    x86::silu_mul_avx512(&mut wide, &u);
                    x86::silu_mul(&mut avx2, &u);
                }
                silu_mul_scalar(&mut scalar, &u);
                assert!(same_bits(&wide, &scalar), "silu_mul n={n} spread={spread}: {wide:?} vs {scalar:?}");
                assert!(same_bits(&wide, &avx2), "silu_mul vs AVX2 n={n} spread={spread}");
            }
        }
        let xs: Vec<f32> = (0..200_000)
            .map(|i| -110.0 + i as f32 * 0.001)
            .chain([0.0, -0.0, 88.0, 88.5, 100.0, 101.0, -200.0, -201.0, -1e30, 1e30, 1e-40])
            .chain([f32::INFINITY, f32::NEG_INFINITY, f32::NAN])
            .collect();
        for chunk in xs.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: AVX-512 F (with AVX2 and FMA) was detected above.
            let v = unsafe { x86::exp16_slice(&lanes) };
            let want = lanes.map(exp_lane);
            assert!(same_bits(&v, &want), "exp16({lanes:?}) = {v:?}, want {want:?}");
        }
    }

    /// The AVX-512 softmax (and its 16-lane ggml exponential) gives the AVX2 kernel's and the
    /// scalar twin's bits: same sums of each eight, added in the same order.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn softmax_avx512_matches_avx2_and_scalar_bit_for_bit() {
        use rand::SeedableRng;
        if !crate::quant::common::has_avx512f() {
            eprintln!("no AVX-512 F here: softmax never takes its AVX-512 path, nothing to compare");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(41);
        // Masked keys (-inf), and values far enough below the rest for subnormal or zero weights.
        let special = [f32::NEG_INFINITY, -0.0, 0.0, -90.0, -104.0, -150.0, -300.0];
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33, 64, 65, 100, 300, 1000] {
            for spread in [0.5f32, 10.0, 120.0] {
                for specials in [&special[..0], &special[..]] {
                    let x = with_specials(&mut rng, n, spread, specials);
                    let (mut wide, mut avx2, mut scalar) = (x.clone(), x.clone(), x.clone());
                    // SAFETY: AVX-512 F (with AVX2 and FMA) was detected above.
                    unsafe {
                        x86::softmax_avx512(&mut wide);
                        x86::softmax(&mut avx2);
                    }
                    softmax_scalar(&mut scalar);
                    assert!(same_bits(&wide, &scalar), "softmax n={n} spread={spread}: {wide:?} vs {scalar:?}");
                    assert!(same_bits(&wide, &avx2), "softmax vs AVX2 n={n} spread={spread}");
                }
            }
        }
        // A row of masked keys only: NaN everywhere, as the scalar twin.
        let (mut wide, mut scalar) = (vec![f32::NEG_INFINITY; 21], vec![f32::NEG_INFINITY; 21]);
        // SAFETY: AVX-512 F (with AVX2 and FMA) was detected above.
        unsafe { x86::softmax_avx512(&mut wide) };
        softmax_scalar(&mut scalar);
        assert!(same_bits(&wide, &scalar));
        let xs: Vec<f32> = (0..300_000)
            .map(|i| -150.0 + i as f32 * 0.0008)
            .chain([0.0, -0.0, 88.3, 88.4, 88.7, 89.0, -87.0, -103.0, -104.5, -200.0, -1e30])
            .chain([f32::NEG_INFINITY, f32::INFINITY, f32::NAN])
            .collect();
        for chunk in xs.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: AVX-512 F (with AVX2 and FMA) was detected above.
            let v = unsafe { x86::expf_ggml16_slice(&lanes) };
            let want = lanes.map(expf_ggml);
            assert!(same_bits(&v, &want), "expf_ggml16({lanes:?}) = {v:?}, want {want:?}");
        }
    }

    /// The AVX-512 blocks of `axpy_many` (dense f32 rows, gathered f32 and f16 rows) give the
    /// bits of the AVX2 blocks and of one `axpy` per key, for every width and row-group size.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn axpy_many_avx512_blocks_match_avx2_blocks_bit_for_bit() {
        use rand::seq::SliceRandom;
        use rand::{Rng, SeedableRng};
        if !crate::quant::common::has_avx512f() {
            eprintln!("no AVX-512 F here: axpy_many never takes its AVX-512 blocks, nothing to compare");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(43);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for dim in [1, 7, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 80, 96, 100, 128, 200] {
            for (nq, nk) in [(1, 1), (1, 9), (2, 3), (3, 2), (4, 5), (5, 9), (6, 7), (7, 3), (9, 17), (24, 13)] {
                let ws = nk + 2;
                let w: Vec<f32> = (0..nq * ws).map(|_| rng.gen_range(0.0..1.0)).collect();
                let n: Vec<usize> = (0..nq).map(|r| if r == 0 { nk } else { rng.gen_range(0..=nk) }).collect();
                let init: Vec<f32> = (0..nq * dim).map(|_| rng.gen_range(-1.0..1.0)).collect();
                // Dense rows, and the same rows at shuffled offsets of a cache, as f32 and as f16.
                let k16: Vec<u16> =
                    (0..nk * dim).map(|_| half::f16::from_f32(rng.gen_range(-2.0..2.0)).to_bits()).collect();
                let mut k = vec![0f32; nk * dim];
                f16_to_f32_row_scalar(&k16, &mut k);
                let mut slots: Vec<usize> = (0..nk + 3).collect();
                slots.shuffle(&mut rng);
                let offs: Vec<usize> = slots[..nk].iter().map(|&s| s * dim).collect();
                let (mut c32, mut c16) = (vec![0f32; (nk + 3) * dim], vec![0u16; (nk + 3) * dim]);
                for (p, &o) in offs.iter().enumerate() {
                    c32[o..o + dim].copy_from_slice(&k[p * dim..][..dim]);
                    c16[o..o + dim].copy_from_slice(&k16[p * dim..][..dim]);
                }
                axpy_many_shape(&w, ws, &n, &k, dim, &init);
                let run = |wide: bool, src: u8| {
                    let mut out = init.clone();
                    // SAFETY: AVX-512 F (with AVX2, FMA and F16C) was detected above; the shapes
                    // were checked, and every gathered row lies inside its cache.
                    unsafe {
                        match src {
                            0 => x86::axpy_many_tiered(&w, ws, &n, x86::Dense(k.as_ptr(), dim), dim, &mut out, wide),
                            1 => {
                                let g = x86::Gather(c32.as_ptr(), offs.as_ptr());
                                x86::axpy_many_tiered(&w, ws, &n, g, dim, &mut out, wide)
                            }
                            _ => {
                                let g = x86::Gather(c16.as_ptr(), offs.as_ptr());
                                x86::axpy_many_tiered(&w, ws, &n, g, dim, &mut out, wide)
                            }
                        }
                    }
                    bits(&out)
                };
                let mut want = init.clone();
                for r in 0..nq {
                    for p in 0..n[r] {
                        axpy(w[r * ws + p], &k[p * dim..][..dim], &mut want[r * dim..][..dim]);
                    }
                }
                let want = bits(&want);
                for src in 0..3 {
                    assert_eq!(run(true, src), want, "AVX-512 vs axpy dim={dim} nq={nq} nk={nk} source {src}");
                    assert_eq!(run(false, src), want, "AVX2 vs axpy dim={dim} nq={nq} nk={nk} source {src}");
                }
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
