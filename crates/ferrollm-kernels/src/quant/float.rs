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
    use super::super::x86::hsum_ps;
    use super::*;
    use std::arch::x86_64::*;

    const KINDS: [Float; 3] = [Float::F32, Float::F16, Float::BF16];

    /// `out[r * k + t]` for every row in `bytes` and the `k = acts.len()` (1 to 4) tokens.
    ///
    /// Rows go in register tiles of `R` rows × `k` tokens (`R·k` accumulators), so each 8 decoded
    /// weights meet `k` tokens and each 8 activations meet `R` rows: prefill is then bound by the
    /// FMA units rather than by loads and conversions. Every output is one FMA chain over its
    /// columns in order, whatever the tile, which keeps results batch invariant: a token gets the
    /// same bits alone or among others, and row grouping does not matter either.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows<const K: usize>(bytes: &[u8], row_bytes: usize, acts: &[&[f32]], out: &mut [f32]) {
        // Tiles of at most 12 accumulators; a lone token takes 4 rows to hide the FMA latency.
        match acts.len() {
            1 => tiles::<K, 4, 1>(bytes, row_bytes, acts, out),
            2 => tiles::<K, 4, 2>(bytes, row_bytes, acts, out),
            3 => tiles::<K, 4, 3>(bytes, row_bytes, acts, out),
            4 => tiles::<K, 3, 4>(bytes, row_bytes, acts, out),
            n => panic!("token tile of {n}"),
        }
    }

    /// Whole tiles of `R` rows, then the remaining rows one at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn tiles<const K: usize, const R: usize, const T: usize>(
        bytes: &[u8],
        row_bytes: usize,
        acts: &[&[f32]],
        out: &mut [f32],
    ) {
        let acts: &[&[f32]; T] = acts.try_into().expect("token tile width");
        let cols = row_bytes / KINDS[K].bytes();
        for a in acts {
            assert_eq!(a.len(), cols);
        }
        assert!(row_bytes > 0 && bytes.len().is_multiple_of(row_bytes));
        let rows = bytes.len() / row_bytes;
        assert_eq!(out.len(), rows * T);
        let mut r = 0;
        while r < rows {
            let (rs, os) = (&bytes[r * row_bytes..], &mut out[r * T..]);
            // Leftover rows in pairs: a single row's one chain per token would wait on each FMA.
            r += match rows - r {
                n if n >= R => tile::<K, R, T>(&rs[..R * row_bytes], cols, acts, &mut os[..R * T]),
                n if n >= 2 => tile::<K, 2, T>(&rs[..2 * row_bytes], cols, acts, &mut os[..2 * T]),
                _ => tile::<K, 1, T>(&rs[..row_bytes], cols, acts, &mut os[..T]),
            };
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

    /// `R` consecutive rows (`cols` weights each) against `T` activation rows; returns `R`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn tile<const K: usize, const R: usize, const T: usize>(
        rows: &[u8],
        cols: usize,
        acts: &[&[f32]; T],
        out: &mut [f32],
    ) -> usize {
        let kind = KINDS[K];
        let rb = cols * kind.bytes();
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        let main = cols / 8 * 8;
        for i in (0..main).step_by(8) {
            if T == 1 && (i * kind.bytes()).is_multiple_of(64) {
                // A lone token streams R rows at once, more streams than the hardware prefetcher
                // follows well with both threads reading: fetch the next tile's line ahead.
                for r in 0..R {
                    let ahead = rows.as_ptr().wrapping_add((R + r) * rb + i * kind.bytes());
                    // A prefetch is only a hint: it never faults, whatever the address.
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                }
            }
            let w: [__m256; R] = std::array::from_fn(|r| load8::<K>(&rows[r * rb..(r + 1) * rb], i));
            for t in 0..T {
                let x = &acts[t][i..i + 8];
                // SAFETY: `x` is 8 f32s; unaligned load.
                let xv = unsafe { _mm256_loadu_ps(x.as_ptr()) };
                for r in 0..R {
                    acc[r][t] = _mm256_fmadd_ps(w[r], xv, acc[r][t]);
                }
            }
        }
        for r in 0..R {
            let row = &rows[r * rb..(r + 1) * rb];
            for t in 0..T {
                out[r * T + t] = hsum_ps(acc[r][t]) + (main..cols).map(|i| kind.get(row, i) * acts[t][i]).sum::<f32>();
            }
        }
        R
    }
}
