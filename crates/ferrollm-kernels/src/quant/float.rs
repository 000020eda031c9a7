//! Unquantized weights: F32, F16 and BF16 rows against f32 activations.
//!
//! Rows are read straight from the (possibly unaligned) file bytes, so values are decoded with
//! unaligned loads rather than by casting the row to `&[f32]`.

use super::common::{bf16_to_f32, f16_to_f32, has_avx2};

/// The element encodings handled here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Float {
    F32,
    F16,
    BF16,
}

impl Float {
    pub fn bytes(self) -> usize {
        match self {
            Float::F32 => 4,
            Float::F16 | Float::BF16 => 2,
        }
    }

    #[inline]
    fn get(self, row: &[u8], i: usize) -> f32 {
        match self {
            Float::F32 => f32::from_le_bytes(row[4 * i..4 * i + 4].try_into().unwrap()),
            Float::F16 => f16_to_f32([row[2 * i], row[2 * i + 1]]),
            Float::BF16 => bf16_to_f32([row[2 * i], row[2 * i + 1]]),
        }
    }
}

pub fn dequantize_row(kind: Float, src: &[u8], out: &mut [f32]) {
    assert_eq!(src.len(), out.len() * kind.bytes());
    for (i, o) in out.iter_mut().enumerate() {
        *o = kind.get(src, i);
    }
}

/// `out[t] = Σ w·acts[t]`; scalar reference.
pub fn dot_scalar(kind: Float, row: &[u8], acts: &[&[f32]], out: &mut [f32]) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        assert_eq!(row.len(), a.len() * kind.bytes());
        *o = a.iter().enumerate().map(|(i, &x)| kind.get(row, i) * x).sum();
    }
}

/// `out[r * k + t]` for every row in `bytes` (rows of `row_bytes`) and the `k = acts.len()`
/// (1 to 4) tokens, with the fastest available code.
pub fn dot_rows(kind: Float, bytes: &[u8], row_bytes: usize, acts: &[&[f32]], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected.
        unsafe {
            match kind {
                Float::F32 => avx2::dot_rows::<0>(bytes, row_bytes, acts, out),
                Float::F16 => avx2::dot_rows::<1>(bytes, row_bytes, acts, out),
                Float::BF16 => avx2::dot_rows::<2>(bytes, row_bytes, acts, out),
            }
        }
        return;
    }
    let k = acts.len();
    for (row, o) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(k)) {
        dot_scalar(kind, row, acts, o);
    }
}

/// `out[t] = Σ w·acts[t]` for up to 4 activation rows, with the fastest available code.
pub fn dot(kind: Float, row: &[u8], acts: &[&[f32]], out: &mut [f32]) {
    if row.is_empty() {
        out[..acts.len()].fill(0.0);
        return;
    }
    dot_rows(kind, row, row.len(), acts, &mut out[..acts.len()]);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::common::for_each_row;
    use super::super::x86::hsum_ps;
    use super::*;
    use std::arch::x86_64::*;

    const KINDS: [Float; 3] = [Float::F32, Float::F16, Float::BF16];

    /// `out[r * k + t]` for every row in `bytes` and the `k = acts.len()` (1 to 4) tokens.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows<const K: usize>(bytes: &[u8], row_bytes: usize, acts: &[&[f32]], out: &mut [f32]) {
        match acts.len() {
            1 => for_each_row::<_, 1>(bytes, row_bytes, acts, out, |r, a| dot_tile::<K, 1>(r, a)),
            2 => for_each_row::<_, 2>(bytes, row_bytes, acts, out, |r, a| dot_tile::<K, 2>(r, a)),
            3 => for_each_row::<_, 3>(bytes, row_bytes, acts, out, |r, a| dot_tile::<K, 3>(r, a)),
            4 => for_each_row::<_, 4>(bytes, row_bytes, acts, out, |r, a| dot_tile::<K, 4>(r, a)),
            n => panic!("token tile of {n}"),
        }
    }

    /// Eight weights from `row` starting at element `i`, as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load8<const K: usize>(row: &[u8], i: usize) -> __m256 {
        let kind = KINDS[K];
        let bytes = &row[i * kind.bytes()..(i + 8) * kind.bytes()];
        // SAFETY: `bytes` holds exactly the 32 (f32) or 16 (f16, bf16) bytes read; unaligned loads.
        unsafe {
            match kind {
                Float::F32 => _mm256_loadu_ps(bytes.as_ptr().cast()),
                Float::F16 => _mm256_cvtph_ps(_mm_loadu_si128(bytes.as_ptr().cast())),
                Float::BF16 => {
                    let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(bytes.as_ptr().cast()));
                    _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
                }
            }
        }
    }

    /// One weight row against `T` activation rows; each 8 weights are decoded once for all `T`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_tile<const K: usize, const T: usize>(row: &[u8], acts: &[&[f32]; T]) -> [f32; T] {
        let kind = KINDS[K];
        let cols = row.len() / kind.bytes();
        for a in acts {
            assert_eq!(a.len(), cols);
        }
        // Two accumulator sets, so one token is not bound by the latency of a single FMA chain.
        let mut acc0 = [_mm256_setzero_ps(); T];
        let mut acc1 = [_mm256_setzero_ps(); T];
        let main = cols / 8 * 8;
        let step = |i: usize, acc: &mut [__m256; T]| {
            let w = load8::<K>(row, i);
            for t in 0..T {
                let x = &acts[t][i..i + 8];
                // SAFETY: `x` is 8 f32s; unaligned load.
                let xv = unsafe { _mm256_loadu_ps(x.as_ptr()) };
                acc[t] = _mm256_fmadd_ps(w, xv, acc[t]);
            }
        };
        for i in (0..main / 16 * 16).step_by(16) {
            step(i, &mut acc0);
            step(i + 8, &mut acc1);
        }
        if !main.is_multiple_of(16) {
            step(main - 8, &mut acc0);
        }
        let acc: [__m256; T] = std::array::from_fn(|t| _mm256_add_ps(acc0[t], acc1[t]));
        let mut out = [0f32; T];
        for t in 0..T {
            out[t] = hsum_ps(acc[t]) + (main..cols).map(|i| kind.get(row, i) * acts[t][i]).sum::<f32>();
        }
        out
    }
}
