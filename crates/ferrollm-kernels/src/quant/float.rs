//! Unquantized weights: F32, F16 and BF16 rows against f32 activations.
//!
//! Rows are read straight from the (possibly unaligned) file bytes, so values are decoded with
//! unaligned loads rather than by casting the row to `&[f32]`.

use super::common::{bf16_to_f32, f16_to_f32, has_avx2, has_avx512f};
use super::float_panel_avx2 as panel2;

/// The element encodings handled here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Float {
    F32,
    F16,
    BF16,
}

/// The kinds by the `K` const parameter of the SIMD kernels (0: F32, 1: F16, 2: BF16).
pub(super) const KINDS: [Float; 3] = [Float::F32, Float::F16, Float::BF16];

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

/// `Σ w·act` over columns `main..` of `row`, the tail past the last multiple of 8 that every
/// kernel adds to its lane sums in this one order.
#[inline]
pub(super) fn tail_dot(kind: Float, row: &[u8], act: &[f32], main: usize) -> f32 {
    (main..act.len()).map(|i| kind.get(row, i) * act[i]).sum::<f32>()
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

/// `out[t] = Σ w·acts[t]` summed as the SIMD kernels sum it: eight fused multiply-add chains
/// (lane `c % 8` over its columns in order) added in `hsum_ps`'s tree, then the columns past
/// the last multiple of 8. Their scalar twin, bit for bit, on x86 and aarch64 alike.
pub fn dot_lanes_scalar(kind: Float, row: &[u8], acts: &[&[f32]], out: &mut [f32]) {
    for (a, o) in acts.iter().zip(out.iter_mut()) {
        assert_eq!(row.len(), a.len() * kind.bytes());
        let main = a.len() / 8 * 8;
        let mut l = [0f32; 8];
        for (c, &x) in a[..main].iter().enumerate() {
            l[c % 8] = kind.get(row, c).mul_add(x, l[c % 8]);
        }
        *o = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
        if main < a.len() {
            *o += tail_dot(kind, row, a, main);
        }
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
    #[cfg(target_arch = "aarch64")]
    if super::common::has_neon() {
        // SAFETY: NEON was detected; the shapes were checked above.
        unsafe {
            match kind {
                Float::F32 => neon::dot_rows::<0>(bytes, row_bytes, acts, outs),
                Float::F16 => neon::dot_rows::<1>(bytes, row_bytes, acts, outs),
                Float::BF16 => neon::dot_rows::<2>(bytes, row_bytes, acts, outs),
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

/// The prefill kernels over widened panels ([`pack_panel`], [`dot_panel`]) this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PanelKernel {
    /// Row pairs in 512-bit registers (this module's `avx512`).
    Avx512,
    /// Outer-product tiles over permuted columns ([`panel2`]).
    Avx2,
}

fn panel_kernel() -> Option<PanelKernel> {
    if has_avx512f() {
        Some(PanelKernel::Avx512)
    } else if has_avx2() {
        Some(PanelKernel::Avx2)
    } else {
        None
    }
}

/// Floats of the panel that `kernel` reads for `rows` rows of `cols` columns.
fn panel_len(kernel: PanelKernel, rows: usize, cols: usize) -> usize {
    match kernel {
        PanelKernel::Avx512 => rows / 2 * 2 * (cols / 8 * 8),
        PanelKernel::Avx2 => panel2::panel_len(rows, cols),
    }
}

/// Tokens per [`dot_panel`] call on this CPU (0: no panel kernel here).
pub fn panel_tokens() -> usize {
    match panel_kernel() {
        Some(PanelKernel::Avx512) => PANEL_TOKENS,
        Some(PanelKernel::Avx2) => panel2::TOKENS,
        None => 0,
    }
}

/// Whether a matmul of `n` tokens should take the panel kernel: widening (and on AVX2
/// transposing) each block of rows pays once enough tokens meet it. AVX2 from 48 tokens: at 16
/// the packing made the SmolLM2 F16 layer matmuls 10% slower (gemv_bench model), at 512 tokens
/// each matrix 1-20% faster (gemv_bench prefill); batch-64 decode runs as fast either way.
pub fn panel_pays(n: usize) -> bool {
    match panel_kernel() {
        Some(PanelKernel::Avx512) => n > 4,
        Some(PanelKernel::Avx2) => n >= 48,
        None => false,
    }
}

/// How many of the matmul's L2-sized token blocks one panel pass takes: each sub-block is
/// widened once per pass. AVX-512: eight times the tokens (the activations then sit in L2
/// rather than L1) made its prefill matmuls 10-30% faster than one (gemv_bench prefill, F16),
/// and F16 prefill 2.7% faster than four; sixteen (a 512-token prefill widens each weight
/// once) about 1-2% faster than eight. AVX2, whose widening also transposes: 32, so that
/// 512 tokens of 1536 columns are one pass too (1536 → 576 and Qwen's 896 → 4864 2-5% faster
/// than 16).
pub fn panel_token_blocks() -> usize {
    match panel_kernel() {
        Some(PanelKernel::Avx2) => 32,
        _ => 16,
    }
}

/// Widens `bytes` (rows of `row_bytes`) into the start of `panel` for [`dot_panel`], when this
/// CPU has a panel kernel, and returns that part (`None`: no such kernel here). The buffer
/// only grows, so a thread that keeps it writes into warm pages and never zero-fills them; the
/// panel starts on a 64-byte boundary within it, so no vector load splits a cache line (F16
/// prefill matmuls +5-10% on AVX-512). Prefill meets each weight with dozens of tokens,
/// so converting a block of rows once and reading f32 from then on leaves only FMAs in the
/// kernel's loop; the widening is exact, so the sums are the same bits as [`dot_rows`]'.
pub fn pack_panel<'a>(kind: Float, bytes: &[u8], row_bytes: usize, panel: &'a mut Vec<f32>) -> Option<&'a [f32]> {
    let kernel = panel_kernel().filter(|_| row_bytes >= 8 * kind.bytes())?;
    assert!(bytes.len().is_multiple_of(row_bytes));
    let (rows, cols) = (bytes.len() / row_bytes, row_bytes / kind.bytes());
    let len = panel_len(kernel, rows, cols);
    let skip = aligned_start(panel, len);
    let panel = &mut panel[skip..skip + len];
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the kernel's features were detected (AVX-512 F implies the AVX2 set here).
    unsafe {
        match (kernel, kind) {
            (PanelKernel::Avx512, Float::F32) => avx512::pack::<0>(bytes, row_bytes, panel),
            (PanelKernel::Avx512, Float::F16) => avx512::pack::<1>(bytes, row_bytes, panel),
            (PanelKernel::Avx512, Float::BF16) => avx512::pack::<2>(bytes, row_bytes, panel),
            (PanelKernel::Avx2, Float::F32) => panel2::pack::<0>(bytes, row_bytes, panel),
            (PanelKernel::Avx2, Float::F16) => panel2::pack::<1>(bytes, row_bytes, panel),
            (PanelKernel::Avx2, Float::BF16) => panel2::pack::<2>(bytes, row_bytes, panel),
        }
    }
    Some(panel)
}

/// Grows `buf` (never shrinking it, so kept pages are not zero-filled again) to hold `len`
/// floats from a 64-byte boundary, and returns where that run starts: whole 8- and 16-float
/// chunks then never straddle cache lines.
pub(crate) fn aligned_start(buf: &mut Vec<f32>, len: usize) -> usize {
    if buf.len() < len + 16 {
        buf.resize(len + 16, 0.0);
    }
    buf.as_ptr().align_offset(64).min(16)
}

/// Lays out the leading multiple of 8 columns of `acts` (1 to [`panel_tokens`] rows) for
/// [`dot_panel`] in `out`, as this CPU's panel kernel reads them; the copy is exact. AVX-512:
/// chunk-major, each 8-column chunk of every token side by side, so the kernel reads one
/// sequential stream with one pointer (eight row pointers spilled to the stack, and eight
/// streams split the prefetchers). AVX2: see [`panel2`].
pub fn pack_acts(acts: &[&[f32]], out: &mut [f32]) {
    if panel_kernel() == Some(PanelKernel::Avx2) {
        return panel2::pack_acts(acts, out);
    }
    let main = acts.first().map_or(0, |a| a.len() / 8 * 8);
    assert!(acts.len() <= PANEL_TOKENS && acts.iter().all(|a| a.len() / 8 * 8 == main), "pack_acts shapes");
    assert_eq!(out.len(), acts.len() * main, "pack_acts output");
    for (c, chunk) in out.chunks_exact_mut(8 * acts.len()).enumerate() {
        for (a, o) in acts.iter().zip(chunk.chunks_exact_mut(8)) {
            o.copy_from_slice(&a[8 * c..8 * c + 8]);
        }
    }
}

/// Rows per sub-block on the panel path: the panel (up to 290 KiB at 1536 columns) streams from
/// L2, and the K-block of a token group's activations, in L1, meets all 48 rows (8 register
/// tiles) before the next is loaded. F16 prefill matmuls took 12-15% less time than with the
/// row kernel's 12 (L1-sized) rows, and 24 or 36 rows were 2-4% slower than 48 (gemv_bench model).
pub const PANEL_ROWS: usize = 48;

/// The most tokens one [`dot_panel`] call takes on any CPU (AVX-512: with 32 vector registers
/// a tile of 3 row pairs × 8 tokens keeps 24 accumulators, so each widened weight meets twice
/// the tokens).
pub const PANEL_TOKENS: usize = 8;

/// [`dot_rows`] for rows that [`pack_panel`] has widened into `panel`, against `acts` that
/// [`pack_acts`] has laid out in `packed` (`bytes` and `acts` are still read for a leftover odd
/// row and columns past the last multiple of 8). Same bits as `dot_rows`.
pub fn dot_panel(
    kind: Float,
    panel: &[f32],
    bytes: &[u8],
    row_bytes: usize,
    packed: &[f32],
    acts: &[&[f32]],
    outs: &mut [&mut [f32]],
) {
    assert!(row_bytes > 0 && bytes.len().is_multiple_of(row_bytes));
    let (rows, cols) = (bytes.len() / row_bytes, row_bytes / kind.bytes());
    assert_eq!(outs.len(), acts.len(), "one output row per token");
    for (a, o) in acts.iter().zip(outs.iter()) {
        assert!(a.len() == cols && o.len() == rows, "dot_panel shapes");
    }
    assert!(acts.len() <= panel_tokens(), "{} tokens for the panel kernel", acts.len());
    assert_eq!(packed.len(), acts.len() * (cols / 8 * 8), "packed activations of other tokens");
    let kernel = panel_kernel().expect("dot_panel without a panel kernel (pack_panel said no)");
    assert_eq!(panel.len(), panel_len(kernel, rows, cols), "panel of other rows");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the kernel's features were detected; the shapes were checked above.
    unsafe {
        match (kernel, kind) {
            (PanelKernel::Avx512, Float::F32) => avx512::dot_panel::<0>(panel, bytes, row_bytes, packed, acts, outs),
            (PanelKernel::Avx512, Float::F16) => avx512::dot_panel::<1>(panel, bytes, row_bytes, packed, acts, outs),
            (PanelKernel::Avx512, Float::BF16) => avx512::dot_panel::<2>(panel, bytes, row_bytes, packed, acts, outs),
            (PanelKernel::Avx2, Float::F32) => panel2::dot_panel::<0>(panel, bytes, row_bytes, packed, acts, outs),
            (PanelKernel::Avx2, Float::F16) => panel2::dot_panel::<1>(panel, bytes, row_bytes, packed, acts, outs),
            (PanelKernel::Avx2, Float::BF16) => panel2::dot_panel::<2>(panel, bytes, row_bytes, packed, acts, outs),
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
pub(super) mod avx2 {
    use super::super::x86::hsum4_ps;
    use super::*;
    use std::arch::x86_64::*;

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
    pub(in crate::quant) unsafe fn load8<const K: usize>(p: *const u8) -> __m256 {
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
    pub(super) fn tile<const K: usize, const R: usize, const T: usize>(
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
        // One 64-byte line of each row per iteration (2 or 4 steps of 8 columns, unrolled), so
        // the loop's own scalar work and the prefetch test do not take FMA-port slots per step.
        let line = 64 / eb;
        let lines = main / line * line;
        let step = |i: usize, acc: &mut [[__m256; T]; R]| {
            // SAFETY: i + 8 <= main <= cols, and every row holds `cols` elements (asserted).
            let wv: [__m256; R] = std::array::from_fn(|r| unsafe { load8::<K>(w[r].add(i * eb)) });
            for t in 0..T {
                // SAFETY: as above; each act row holds at least `cols` f32s (asserted).
                let xv = unsafe { _mm256_loadu_ps(x[t].add(i)) };
                for r in 0..R {
                    acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
                }
            }
        };
        let mut i = 0;
        while i < lines {
            // A tile streams R rows at once, more streams than the hardware prefetcher
            // follows well with both threads reading: fetch the next tile's line ahead.
            // For several tokens too: a sub-block's first pass reads from L3 or DRAM (the
            // SmolLM2 F16 layer matmuls at 16 tokens took 20% less time, gemv_bench model),
            // and the later passes' prefetches hit L1.
            for r in 0..R {
                let ahead = rows.as_ptr().wrapping_add((R + r) * rb + i * eb);
                // A prefetch is only a hint: it never faults, whatever the address.
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            }
            for j in (0..line).step_by(8) {
                step(i + j, &mut acc);
            }
            i += line;
        }
        while i < main {
            step(i, &mut acc);
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
                    *s += tail_dot(kind, row, acts[t], main);
                }
            }
            outs[t][r0..r0 + R].copy_from_slice(&sums[..R]);
        }
        R
    }
}

/// The AVX2 row kernel on NEON: each output's eight lane chains are two 4-lane accumulators
/// (columns `c % 8` below 4 in the first), summed in `hsum_ps`'s order, so every output has the
/// same bits as on x86.
#[cfg(target_arch = "aarch64")]
mod neon {
    use super::super::arm::{hsum8, load_f16x8};
    use super::*;
    use std::arch::aarch64::*;

    /// `outs[t][r]` for every row in `bytes` and the 1 to 4 tokens of `acts`.
    ///
    /// # Safety
    /// The CPU must support NEON; shapes as checked by the caller.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_rows<const K: usize>(bytes: &[u8], row_bytes: usize, acts: &[&[f32]], outs: &mut [&mut [f32]]) {
        // 32 registers: 4 rows for one or two tokens, 2 rows for three or four (16 accumulators).
        match acts.len() {
            1 => tiles::<K, 4, 1>(bytes, row_bytes, acts, outs),
            2 => tiles::<K, 4, 2>(bytes, row_bytes, acts, outs),
            3 => tiles::<K, 2, 3>(bytes, row_bytes, acts, outs),
            4 => tiles::<K, 2, 4>(bytes, row_bytes, acts, outs),
            n => panic!("token tile of {n}"),
        }
    }

    #[inline]
    #[target_feature(enable = "neon")]
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
            r += match rows - r {
                n if n >= R => tile::<K, R, T>(rs, cols, acts, outs, r),
                _ => tile::<K, 1, T>(rs, cols, acts, outs, r),
            };
        }
    }

    /// Eight weights at `p` as two f32x4.
    ///
    /// # Safety
    /// `p` must point at 8 readable elements of the kind.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load8<const K: usize>(p: *const u8) -> [float32x4_t; 2] {
        // SAFETY: the caller's promise; byte loads have no alignment requirement.
        unsafe {
            match KINDS[K] {
                Float::F32 => [vreinterpretq_f32_u8(vld1q_u8(p)), vreinterpretq_f32_u8(vld1q_u8(p.add(16)))],
                Float::F16 => load_f16x8(p),
                Float::BF16 => {
                    let h = vreinterpretq_u16_u8(vld1q_u8(p));
                    [
                        vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
                        vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_high_u16(h))),
                    ]
                }
            }
        }
    }

    /// `R` rows from the start of `rows` against `T` tokens, into `outs[t][r0..r0 + R]`.
    #[inline]
    #[target_feature(enable = "neon")]
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
        let zero = vdupq_n_f32(0.0);
        let mut acc = [[[zero; 2]; T]; R];
        let main = cols / 8 * 8;
        for i in (0..main).step_by(8) {
            // SAFETY: i + 8 <= main <= cols, and every row holds `cols` elements (asserted).
            let wv: [[float32x4_t; 2]; R] = std::array::from_fn(|r| unsafe { load8::<K>(w[r].add(i * eb)) });
            for t in 0..T {
                // SAFETY: as above; each act row holds at least `cols` f32s (asserted).
                let xv = unsafe { [vld1q_f32(x[t].add(i)), vld1q_f32(x[t].add(i + 4))] };
                for r in 0..R {
                    for h in 0..2 {
                        acc[r][t][h] = vfmaq_f32(acc[r][t][h], wv[r][h], xv[h]);
                    }
                }
            }
        }
        for t in 0..T {
            for r in 0..R {
                let mut s = hsum8(acc[r][t][0], acc[r][t][1]);
                if main < cols {
                    s += tail_dot(kind, &rows[r * rb..(r + 1) * rb], acts[t], main);
                }
                outs[t][r0 + r] = s;
            }
        }
        R
    }
}

/// Prefill on AVX-512 over a widened panel: rows in pairs, each pair's 8-column chunks side by
/// side (`[row a: 8 | row b: 8]`, then the next chunk), so one 512-bit register holds a chunk
/// of two rows and one broadcast holds 8 activations in both halves. Each half is exactly one
/// of the AVX2 kernel's 8-lane FMA chains, summed in `hsum4_ps`'s order.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::avx2::{load8, tile};
    use super::*;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// # Safety
    /// The CPU must support AVX-512 F, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn pack<const K: usize>(bytes: &[u8], row_bytes: usize, panel: &mut [f32]) {
        let eb = KINDS[K].bytes();
        let chunks = row_bytes / eb / 8;
        for (pair, dst) in bytes.chunks_exact(2 * row_bytes).zip(panel.chunks_exact_mut(chunks * 16)) {
            for (c, v) in dst.chunks_exact_mut(16).enumerate() {
                // SAFETY: chunk c's 8 elements lie within each of the pair's rows.
                let (a, b) = unsafe {
                    (load8::<K>(pair[c * 8 * eb..].as_ptr()), load8::<K>(pair[row_bytes + c * 8 * eb..].as_ptr()))
                };
                // SAFETY: `v` holds 16 f32s; unaligned stores.
                unsafe {
                    _mm256_storeu_ps(v.as_mut_ptr(), a);
                    _mm256_storeu_ps(v.as_mut_ptr().add(8), b);
                }
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX-512 F, AVX2, FMA and F16C; shapes as checked by the caller.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn dot_panel<const K: usize>(
        panel: &[f32],
        bytes: &[u8],
        row_bytes: usize,
        packed: &[f32],
        acts: &[&[f32]],
        outs: &mut [&mut [f32]],
    ) {
        match acts.len() {
            1 => pairs::<K, 1>(panel, bytes, row_bytes, packed, acts.try_into().unwrap(), outs),
            2 => pairs::<K, 2>(panel, bytes, row_bytes, packed, acts.try_into().unwrap(), outs),
            3 => pairs::<K, 3>(panel, bytes, row_bytes, packed, acts.try_into().unwrap(), outs),
            4 => pairs::<K, 4>(panel, bytes, row_bytes, packed, acts.try_into().unwrap(), outs),
            5 => pairs::<K, 5>(panel, bytes, row_bytes, packed, acts.try_into().unwrap(), outs),
            6 => pairs::<K, 6>(panel, bytes, row_bytes, packed, acts.try_into().unwrap(), outs),
            7 => pairs::<K, 7>(panel, bytes, row_bytes, packed, acts.try_into().unwrap(), outs),
            8 => pairs::<K, 8>(panel, bytes, row_bytes, packed, acts.try_into().unwrap(), outs),
            n => panic!("token tile of {n}"),
        }
    }

    /// Most chunks of 8 columns per K-block: the group's packed activations for one block (at
    /// most 8 tokens × 768 columns, 24 KiB) stay in L1 while every row tile of the sub-block
    /// passes over them, and the widened weights stream from L2. Each tile keeps its
    /// accumulators between blocks, so every lane's chain runs over the columns in order and
    /// the sums keep their bits.
    const BLOCK_CHUNKS: usize = 96;
    /// Most row tiles whose accumulators are kept across K-blocks at once (16 KiB at most): a
    /// batch of 3-pair tiles is the 48 rows of [`PANEL_ROWS`].
    const MAX_TILES: usize = 8;
    /// Accumulators per tile: 4 pairs × 4 tokens or 3 × 8 at most.
    const SLOT: usize = 24;

    /// Tiles of 4 row pairs for up to 4 tokens, 3 for more (at most 24 accumulators), then 2
    /// and 1 pairs, then an odd last row through the AVX2 tile. Tiles go in batches, and each
    /// batch meets the columns one K-block at a time.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn pairs<const K: usize, const T: usize>(
        panel: &[f32],
        bytes: &[u8],
        row_bytes: usize,
        packed: &[f32],
        acts: &[&[f32]; T],
        outs: &mut [&mut [f32]],
    ) {
        let cols = row_bytes / KINDS[K].bytes();
        let (rows, chunks) = (bytes.len() / row_bytes, cols / 8);
        assert!(panel.len() >= rows / 2 * chunks * 16 && packed.len() >= T * chunks * 8);
        let block = chunks.div_ceil(chunks.div_ceil(BLOCK_CHUNKS).max(1)).max(1);
        let mut p = 0;
        while p < rows / 2 {
            // The next batch of tiles, as (first pair, pairs).
            let mut tiles = [(0, 0); MAX_TILES];
            let mut count = 0;
            while count < MAX_TILES && p < rows / 2 {
                let width = match rows / 2 - p {
                    n if n >= 4 && T <= 4 => 4,
                    n if n >= 3 && T > 4 => 3,
                    n if n >= 2 => 2,
                    _ => 1,
                };
                tiles[count] = (p, width);
                (p, count) = (p + width, count + 1);
            }
            // Tile i's accumulators are acc[SLOT·i..][..P·T], pair-major.
            let mut acc = [const { MaybeUninit::<__m512>::uninit() }; SLOT * MAX_TILES];
            for c0 in (0..chunks).step_by(block) {
                let c1 = (c0 + block).min(chunks);
                for (&(p0, width), acc) in tiles[..count].iter().zip(acc.chunks_exact_mut(SLOT)) {
                    let w = &panel[p0 * chunks * 16..];
                    match width {
                        4 => sums::<4, T>(w, chunks, packed, c0, c1, acc),
                        3 => sums::<3, T>(w, chunks, packed, c0, c1, acc),
                        2 => sums::<2, T>(w, chunks, packed, c0, c1, acc),
                        _ => sums::<1, T>(w, chunks, packed, c0, c1, acc),
                    }
                }
            }
            for (&(p0, width), acc) in tiles[..count].iter().zip(acc.chunks_exact(SLOT)) {
                let r0 = 2 * p0;
                match width {
                    4 => finish::<K, 4, T>(acc, bytes, row_bytes, acts, outs, r0),
                    3 => finish::<K, 3, T>(acc, bytes, row_bytes, acts, outs, r0),
                    2 => finish::<K, 2, T>(acc, bytes, row_bytes, acts, outs, r0),
                    _ => finish::<K, 1, T>(acc, bytes, row_bytes, acts, outs, r0),
                }
            }
        }
        if rows % 2 == 1 {
            tile::<K, 1, T>(&bytes[(rows - 1) * row_bytes..], cols, acts, outs, rows - 1);
        }
    }

    /// Adds chunks `c0..c1` of `P` row pairs (the panel from the tile's first pair, `chunks`
    /// per pair) against `T` packed tokens to `acc` (pair-major), which chunk 0 starts from zero.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // the register tile is indexed on both of its axes
    fn sums<const P: usize, const T: usize>(
        panel: &[f32],
        chunks: usize,
        packed: &[f32],
        c0: usize,
        c1: usize,
        acc: &mut [MaybeUninit<__m512>],
    ) {
        assert!(c1 <= chunks && panel.len() >= P * chunks * 16 && packed.len() >= T * chunks * 8);
        assert!(acc.len() >= P * T);
        let w: [*const f32; P] = std::array::from_fn(|p| panel[p * chunks * 16..].as_ptr());
        let x = packed.as_ptr();
        let mut a = [[_mm512_setzero_ps(); T]; P];
        if c0 > 0 {
            // SAFETY: an earlier block (c0 = 0 first) wrote these accumulators.
            a = std::array::from_fn(|p| std::array::from_fn(|t| unsafe { acc[p * T + t].assume_init() }));
        }
        for c in c0..c1 {
            // SAFETY: chunk c of pair p is 16 floats within the panel (asserted above).
            let wv: [__m512; P] = std::array::from_fn(|p| unsafe { _mm512_loadu_ps(w[p].add(16 * c)) });
            for t in 0..T {
                // SAFETY: token t's 8 f32s of chunk c lie within `packed` (asserted), in both
                // halves.
                let xv =
                    unsafe { _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(x.add(8 * (T * c + t)).cast()))) };
                for p in 0..P {
                    a[p][t] = _mm512_fmadd_ps(wv[p], xv, a[p][t]);
                }
            }
        }
        for (p, a) in a.iter().enumerate() {
            for (t, &v) in a.iter().enumerate() {
                acc[p * T + t].write(v);
            }
        }
    }

    /// Reduces a tile's accumulators (`P` pairs from row `r0`, as [`sums`] left them), adds the
    /// column tail and writes `outs[t][r0..r0 + 2P]`.
    ///
    /// Each output's 8 lanes are summed as `hsum4_ps` sums them, `((l0 + l4) + (l2 + l6)) +
    /// ((l1 + l5) + (l3 + l7))`, but for 16 outputs at once: three rounds of two shuffles and an
    /// add take 4 registers to 1 ([`round1`], [`round2`], [`round3`]), and one permute puts the
    /// sums in output order. Pairs go two at a time (4 rows × 4 tokens a register), a last odd
    /// pair alone (2 rows × 8 tokens); missing tokens are zeros whose sums are not stored.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn finish<const K: usize, const P: usize, const T: usize>(
        acc: &[MaybeUninit<__m512>],
        bytes: &[u8],
        row_bytes: usize,
        acts: &[&[f32]; T],
        outs: &mut [&mut [f32]],
        r0: usize,
    ) {
        // SAFETY: the first K-block (c0 = 0) wrote the tile's P·T accumulators.
        let at = |p: usize, t: usize| if t < T { unsafe { acc[p * T + t].assume_init() } } else { _mm512_setzero_ps() };
        let mut sums = [0f32; 16];
        // Element 4e + q from element 4q + e: quarter e then holds element e of every quarter.
        let transpose = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let mut p = 0;
        while p + 2 <= P {
            for t0 in (0..T).step_by(4) {
                // Register quarter q, element e: row r0 + 2p + q, token t0 + e; then transposed.
                let s: [__m512; 4] = std::array::from_fn(|e| round1(at(p, t0 + e), at(p + 1, t0 + e)));
                let v = _mm512_permutexvar_ps(transpose, round3(round2(s[0], s[1]), round2(s[2], s[3])));
                // SAFETY: `sums` holds 16 f32s; unaligned store.
                unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), v) };
                for (e, o) in outs[t0..T.min(t0 + 4)].iter_mut().enumerate() {
                    o[r0 + 2 * p..][..4].copy_from_slice(&sums[4 * e..4 * e + 4]);
                }
            }
            p += 2;
        }
        if p < P {
            for t0 in (0..T).step_by(8) {
                // Quarter q, element e: row r0 + 2p + q % 2, token t0 + 2e + q / 2; transposed,
                // each token's two rows are side by side in token order.
                let s: [__m512; 4] = std::array::from_fn(|e| round1(at(p, t0 + 2 * e), at(p, t0 + 2 * e + 1)));
                let v = _mm512_permutexvar_ps(transpose, round3(round2(s[0], s[1]), round2(s[2], s[3])));
                // SAFETY: `sums` holds 16 f32s; unaligned store.
                unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), v) };
                for (j, o) in outs[t0..T.min(t0 + 8)].iter_mut().enumerate() {
                    o[r0 + 2 * p..][..2].copy_from_slice(&sums[2 * j..2 * j + 2]);
                }
            }
        }
        let kind = KINDS[K];
        let cols = row_bytes / kind.bytes();
        let main = cols / 8 * 8;
        if main < cols {
            for (a, o) in acts.iter().zip(outs.iter_mut()) {
                for (r, s) in o[r0..r0 + 2 * P].iter_mut().enumerate() {
                    let row = &bytes[(r0 + r) * row_bytes..][..row_bytes];
                    *s += tail_dot(kind, row, a, main);
                }
            }
        }
    }

    /// Two accumulators `[row a: 8 | row b: 8]` to their 4 rows' first sums: quarter `q` is
    /// row `q` (a's two, then b's two) as `[l0 + l4, l1 + l5, l2 + l6, l3 + l7]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn round1(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b))
    }

    /// Two [`round1`] results to `[a02, a13, b02, b13]` in each quarter (`02` = lanes 0 + 2 of
    /// that quarter's row).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn round2(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(_mm512_shuffle_ps::<0b01_00_01_00>(a, b), _mm512_shuffle_ps::<0b11_10_11_10>(a, b))
    }

    /// Two [`round2`] results to the four final sums of each quarter: element `e` is the row of
    /// the `e`-th [`round1`] input (a's a, a's b, b's a, b's b).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn round3(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(_mm512_shuffle_ps::<0b10_00_10_00>(a, b), _mm512_shuffle_ps::<0b11_01_11_01>(a, b))
    }
}
