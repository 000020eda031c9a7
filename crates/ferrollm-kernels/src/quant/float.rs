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

/// `outs[t][r]` = row `r` of `bytes` (rows of `row_bytes`) · `acts[t]`, for the `k = acts.len()`
/// (1 to 4) tokens, with the fastest available code. Outputs are token-major, as the matmul
/// writes them, so a register tile stores its sums straight into place.
pub fn dot_rows(kind: Float, bytes: &[u8], row_bytes: usize, acts: &[&[f32]], outs: &mut [&mut [f32]]) {
    assert!(row_bytes > 0 && bytes.len().is_multiple_of(row_bytes));
    let (rows, cols) = (bytes.len() / row_bytes, row_bytes / kind.bytes());
    assert_eq!(outs.len(), acts.len(), "one output row per token");
    for (a, o) in acts.iter().zip(outs.iter()) {
        assert!(a.len() == cols && o.len() == rows, "dot_rows shapes");
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected; the shapes were checked above.
        unsafe {
            match kind {
                Float::F32 => avx2::dot_rows::<0>(bytes, row_bytes, acts, outs),
                Float::F16 => avx2::dot_rows::<1>(bytes, row_bytes, acts, outs),
                Float::BF16 => avx2::dot_rows::<2>(bytes, row_bytes, acts, outs),
            }
        }
        return;
    }
    let mut o = [0f32; 4];
    for (r, row) in bytes.chunks_exact(row_bytes).enumerate() {
        dot_scalar(kind, row, acts, &mut o[..acts.len()]);
        for (out, v) in outs.iter_mut().zip(o) {
            out[r] = v;
        }
    }
}

/// `out[t] = Σ w·acts[t]` for up to 4 activation rows, with the fastest available code.
pub fn dot(kind: Float, row: &[u8], acts: &[&[f32]], out: &mut [f32]) {
    if row.is_empty() {
        out[..acts.len()].fill(0.0);
        return;
    }
    let mut outs: Vec<&mut [f32]> = out[..acts.len()].chunks_mut(1).collect();
    dot_rows(kind, row, row.len(), acts, &mut outs);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::x86::hsum4_ps;
    use super::*;
    use std::arch::x86_64::*;

    const KINDS: [Float; 3] = [Float::F32, Float::F16, Float::BF16];

    /// `outs[t][r]` for every row in `bytes` and the `k = acts.len()` (1 to 4) tokens.
    ///
    /// Rows go in register tiles of `R` rows × `k` tokens (`R·k` accumulators), so each 8 decoded
    /// weights meet `k` tokens and each 8 activations meet `R` rows: prefill is then bound by the
    /// FMA units rather than by loads and conversions. Every output is eight FMA chains (column
    /// `c` in lane `c % 8`) summed as `hsum_ps` does, whatever the tile, which keeps results
    /// batch invariant: a token gets the same bits alone or among others, and row grouping does
    /// not matter either.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows<const K: usize>(bytes: &[u8], row_bytes: usize, acts: &[&[f32]], outs: &mut [&mut [f32]]) {
        // Tiles of at most 12 accumulators; a lone token takes 4 rows to hide the FMA latency.
        // Three tokens take 3 rows: 4 would need 12 accumulators and 4 weight registers, and
        // the spills halve the kernel's speed.
        match acts.len() {
            1 => tiles::<K, 4, 1>(bytes, row_bytes, acts, outs),
            2 => tiles::<K, 4, 2>(bytes, row_bytes, acts, outs),
            3 => tiles::<K, 3, 3>(bytes, row_bytes, acts, outs),
            4 => tiles::<K, 3, 4>(bytes, row_bytes, acts, outs),
            n => panic!("token tile of {n}"),
        }
    }

    /// Whole tiles of `R` rows, then the remaining rows in pairs and one at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn tiles<const K: usize, const R: usize, const T: usize>(
        bytes: &[u8],
        row_bytes: usize,
        acts: &[&[f32]],
        outs: &mut [&mut [f32]],
    ) {
        let acts: &[&[f32]; T] = acts.try_into().expect("token tile width");
        let cols = row_bytes / KINDS[K].bytes();
        let rows = bytes.len() / row_bytes;
        let mut r = 0;
        while r < rows {
            let rs = &bytes[r * row_bytes..];
            // Leftover rows in pairs: a single row's one chain per token would wait on each FMA.
            r += match rows - r {
                n if n >= R => tile::<K, R, T>(rs, cols, acts, outs, r),
                n if n >= 2 => tile::<K, 2, T>(rs, cols, acts, outs, r),
                _ => tile::<K, 1, T>(rs, cols, acts, outs, r),
            };
        }
    }

    /// Eight weights at `p`, as f32.
    ///
    /// # Safety
    /// `p` must point at 8 readable elements of the kind (32 bytes for f32, 16 otherwise).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<const K: usize>(p: *const u8) -> __m256 {
        // SAFETY: the caller's promise; unaligned loads.
        unsafe {
            match KINDS[K] {
                Float::F32 => _mm256_loadu_ps(p.cast()),
                Float::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                Float::BF16 => {
                    let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
                    _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
                }
            }
        }
    }

    /// `R` consecutive rows (`cols` weights each, at the start of `rows`) against `T` activation
    /// rows, written to `outs[t][r0..r0 + R]`; returns `R`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn tile<const K: usize, const R: usize, const T: usize>(
        rows: &[u8],
        cols: usize,
        acts: &[&[f32]; T],
        outs: &mut [&mut [f32]],
        r0: usize,
    ) -> usize {
        let kind = KINDS[K];
        let (eb, rb) = (kind.bytes(), cols * kind.bytes());
        assert!(rows.len() >= R * rb && acts.iter().all(|a| a.len() >= cols));
        let w: [*const u8; R] = std::array::from_fn(|r| rows[r * rb..].as_ptr());
        let x: [*const f32; T] = std::array::from_fn(|t| acts[t].as_ptr());
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        let main = cols / 8 * 8;
        let mut i = 0;
        while i < main {
            if T == 1 && (i * eb).is_multiple_of(64) {
                // A lone token streams R rows at once, more streams than the hardware prefetcher
                // follows well with both threads reading: fetch the next tile's line ahead.
                for r in 0..R {
                    let ahead = rows.as_ptr().wrapping_add((R + r) * rb + i * eb);
                    // A prefetch is only a hint: it never faults, whatever the address.
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                }
            }
            // SAFETY: i + 8 <= main <= cols, and every row holds `cols` elements (asserted).
            let wv: [__m256; R] = std::array::from_fn(|r| unsafe { load8::<K>(w[r].add(i * eb)) });
            for t in 0..T {
                // SAFETY: as above; each act row holds at least `cols` f32s (asserted).
                let xv = unsafe { _mm256_loadu_ps(x[t].add(i)) };
                for r in 0..R {
                    acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
                }
            }
            i += 8;
        }
        for t in 0..T {
            let v: [__m256; 4] = std::array::from_fn(|r| if r < R { acc[r][t] } else { _mm256_setzero_ps() });
            let mut sums = [0f32; 4];
            // SAFETY: `sums` holds 4 f32s; unaligned store.
            unsafe { _mm_storeu_ps(sums.as_mut_ptr(), hsum4_ps(v)) };
            if main < cols {
                for (r, s) in sums[..R].iter_mut().enumerate() {
                    let row = &rows[r * rb..(r + 1) * rb];
                    *s += (main..cols).map(|i| kind.get(row, i) * acts[t][i]).sum::<f32>();
                }
            }
            outs[t][r0..r0 + R].copy_from_slice(&sums[..R]);
        }
        R
    }
}
