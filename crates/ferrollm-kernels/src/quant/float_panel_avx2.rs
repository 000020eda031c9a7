//! Float prefill on AVX2 over widened panels whose columns are permuted, so that a register
//! holds one column of 8 rows (an outer-product tile: 12 FMAs per 2 weight loads and 6
//! broadcasts, no horizontal sums) while every output keeps the row kernel's bits.
//!
//! The row kernel ([`super::float::dot_rows`]) sums output (row, token) as eight FMA chains,
//! lane `j` over columns `j, j + 8, j + 16, ..` in order, then adds the lanes as `hsum_ps`
//! does: `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`. Here panel and activations store
//! the columns residue by residue (column `8i + j` at position `j·seg + i`, `seg` = columns / 8),
//! so a tile walking the positions in order runs chain `j` over its columns in the same order,
//! sets it aside when its `seg` positions end, and adds the eight chains in that same tree, a
//! vector of 8 rows at a time. Widening f16/bf16 to f32 is exact, so the sums are the same bits.
//!
//! Layouts (`main` = the leading multiple of 8 columns, `rows8` = the leading multiple of 8 rows):
//! - panel: row groups of [`GROUP_ROWS`] (the last one 8 or 16 rows if `rows8` is not a
//!   multiple), group `g` from float `GROUP_ROWS·g·main`, position `p` holding its rows' weights
//!   of column `c(p)` side by side;
//! - activations: groups of [`TOKENS`] tokens (the last one short), group `g` from float
//!   `TOKENS·g·main`, position `p` holding each of its tokens' column `c(p)`.
//!
//! Rows past `rows8` and columns past `main` go through the row kernel and its tail sum.

/// Rows of one register tile: two vectors of 8.
#[cfg(target_arch = "x86_64")]
pub const GROUP_ROWS: usize = 16;
/// Tokens of one register tile: 2 × 6 accumulators, 2 weight registers and a broadcast leave
/// one of the 16 registers spare (3 × 4 left none, and LLVM spilled an accumulator).
pub const TOKENS: usize = 6;

/// Floats [`pack`] writes for `rows` rows of `cols` columns.
pub fn panel_len(rows: usize, cols: usize) -> usize {
    rows / 8 * 8 * (cols / 8 * 8)
}

/// Lays out `acts` (1 to [`TOKENS`] rows) for [`dot_panel`] in `out` (`acts.len() · main`
/// floats); the copy is exact.
pub fn pack_acts(acts: &[&[f32]], out: &mut [f32]) {
    let main = acts.first().map_or(0, |a| a.len() / 8 * 8);
    assert!(acts.len() <= TOKENS && acts.iter().all(|a| a.len() / 8 * 8 == main), "pack_acts shapes");
    assert_eq!(out.len(), acts.len() * main, "pack_acts output");
    let t = acts.len();
    // Written in position order, read with a stride of 8 columns: the writes are the ones
    // that would miss.
    let mut positions = out.chunks_exact_mut(t.max(1));
    for j in 0..8 {
        for c in (j..main).step_by(8) {
            let o = positions.next().expect("a position per column");
            for (o, a) in o.iter_mut().zip(acts) {
                *o = a[c];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{dot_panel, pack};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::float::{avx2, tail_dot, KINDS};
    use super::*;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Widens and permutes the leading `rows8` rows of `bytes` into `panel`
    /// ([`panel_len`] floats), eight rows × eight columns at a time: the block is transposed in
    /// registers so each column's 8 rows go out in one store.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn pack<const K: usize>(bytes: &[u8], row_bytes: usize, panel: &mut [f32]) {
        let eb = KINDS[K].bytes();
        let (rows, cols) = (bytes.len() / row_bytes, row_bytes / eb);
        let (rows8, main) = (rows / 8 * 8, cols / 8 * 8);
        let seg = main / 8;
        assert_eq!(panel.len(), rows8 * main, "panel of other rows");
        for g0 in (0..rows8).step_by(GROUP_ROWS) {
            let width = (rows8 - g0).min(GROUP_ROWS);
            let group = &mut panel[g0 * main..][..width * main];
            for r0 in (g0..g0 + width).step_by(8) {
                let src = &bytes[r0 * row_bytes..][..8 * row_bytes];
                for i in 0..seg {
                    // SAFETY: columns 8i..8i + 8 lie within each of the 8 rows of `src`.
                    let v: [__m256; 8] = std::array::from_fn(|r| unsafe {
                        avx2::load8::<K>(src[r * row_bytes + 8 * i * eb..].as_ptr())
                    });
                    for (j, col) in transpose8(v).into_iter().enumerate() {
                        let at = (j * seg + i) * width + (r0 - g0);
                        // SAFETY: position j·seg + i < main, so its 8 rows lie within `group`.
                        unsafe { _mm256_storeu_ps(group[at..at + 8].as_mut_ptr(), col) };
                    }
                }
            }
        }
    }

    /// Rows to columns: element `r` of output `c` is element `c` of input `r`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn transpose8(v: [__m256; 8]) -> [__m256; 8] {
        let lo: [__m256; 4] = std::array::from_fn(|k| _mm256_unpacklo_ps(v[2 * k], v[2 * k + 1]));
        let hi: [__m256; 4] = std::array::from_fn(|k| _mm256_unpackhi_ps(v[2 * k], v[2 * k + 1]));
        // q[..]: columns {0, 4}, {1, 5}, {2, 6}, {3, 7} of rows 0-3 (then 4-7) in each half.
        let q = [
            _mm256_shuffle_ps::<0b01_00_01_00>(lo[0], lo[1]),
            _mm256_shuffle_ps::<0b11_10_11_10>(lo[0], lo[1]),
            _mm256_shuffle_ps::<0b01_00_01_00>(hi[0], hi[1]),
            _mm256_shuffle_ps::<0b11_10_11_10>(hi[0], hi[1]),
            _mm256_shuffle_ps::<0b01_00_01_00>(lo[2], lo[3]),
            _mm256_shuffle_ps::<0b11_10_11_10>(lo[2], lo[3]),
            _mm256_shuffle_ps::<0b01_00_01_00>(hi[2], hi[3]),
            _mm256_shuffle_ps::<0b11_10_11_10>(hi[2], hi[3]),
        ];
        std::array::from_fn(|c| {
            let (a, b) = (q[c % 4], q[4 + c % 4]);
            if c < 4 {
                _mm256_permute2f128_ps::<0x20>(a, b)
            } else {
                _mm256_permute2f128_ps::<0x31>(a, b)
            }
        })
    }

    /// `outs[t][r]` for every row of `bytes` and the `acts.len()` (1 to [`TOKENS`]) tokens,
    /// the leading `rows8` rows from `panel` ([`pack`]) against `packed` ([`pack_acts`]).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; shapes as checked by the caller.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_panel<const K: usize>(
        panel: &[f32],
        bytes: &[u8],
        row_bytes: usize,
        packed: &[f32],
        acts: &[&[f32]],
        outs: &mut [&mut [f32]],
    ) {
        match acts.len() {
            1 => groups::<K, 1>(panel, bytes, row_bytes, packed, acts, outs),
            2 => groups::<K, 2>(panel, bytes, row_bytes, packed, acts, outs),
            3 => groups::<K, 3>(panel, bytes, row_bytes, packed, acts, outs),
            4 => groups::<K, 4>(panel, bytes, row_bytes, packed, acts, outs),
            5 => groups::<K, 5>(panel, bytes, row_bytes, packed, acts, outs),
            6 => groups::<K, 6>(panel, bytes, row_bytes, packed, acts, outs),
            n => panic!("token tile of {n}"),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn groups<const K: usize, const T: usize>(
        panel: &[f32],
        bytes: &[u8],
        row_bytes: usize,
        packed: &[f32],
        acts: &[&[f32]],
        outs: &mut [&mut [f32]],
    ) {
        let kind = KINDS[K];
        let (rows, cols) = (bytes.len() / row_bytes, row_bytes / kind.bytes());
        let (rows8, main) = (rows / 8 * 8, cols / 8 * 8);
        assert!(panel.len() >= rows8 * main && packed.len() >= T * main && outs.len() == T);
        for g0 in (0..rows8).step_by(GROUP_ROWS) {
            let group = &panel[g0 * main..];
            match (rows8 - g0).min(GROUP_ROWS) / 8 {
                2 => group_sums::<2, T>(group, packed, main, outs, g0),
                _ => group_sums::<1, T>(group, packed, main, outs, g0),
            }
        }
        if main < cols {
            for (a, o) in acts.iter().zip(outs.iter_mut()) {
                for (r, s) in o[..rows8].iter_mut().enumerate() {
                    *s += tail_dot(kind, &bytes[r * row_bytes..][..row_bytes], a, main);
                }
            }
        }
        if rows8 < rows {
            let mut rest: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[rows8..]).collect();
            // The row kernel takes at most 4 tokens a call.
            for (a, o) in acts.chunks(4).zip(rest.chunks_mut(4)) {
                // SAFETY: AVX2, FMA and F16C (this function's features); the rows are whole.
                unsafe { avx2::dot_rows::<K>(&bytes[rows8 * row_bytes..], row_bytes, a, o) };
            }
        }
    }

    /// One row group's sums (`8·V` rows from `g0`, its panel at the start of `group`), stored
    /// to `outs[t][g0..]`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn group_sums<const V: usize, const T: usize>(
        group: &[f32],
        packed: &[f32],
        main: usize,
        outs: &mut [&mut [f32]],
        g0: usize,
    ) {
        assert!(group.len() >= 8 * V * main && packed.len() >= T * main && outs.len() == T);
        let dst: [*mut f32; T] = std::array::from_fn(|t| outs[t][g0..][..8 * V].as_mut_ptr());
        // SAFETY: the lengths were asserted; each `dst[t]` holds 8·V floats.
        unsafe { tile::<V, T>(group.as_ptr(), packed.as_ptr(), main / 8, dst) };
    }

    /// The sums of `V` vectors of 8 rows (panel group at `w`) for `T` tokens (at `x`), over the
    /// `8·seg` permuted columns, stored to `dst[t][..8·V]`.
    ///
    /// # Safety
    /// `w` must hold `8·V·8·seg` floats, `x` `T·8·seg`, and each `dst[t]` 8·V.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const V: usize, const T: usize>(w: *const f32, x: *const f32, seg: usize, dst: [*mut f32; T]) {
        assert!(seg > 0, "no columns");
        let mut chains = [const { MaybeUninit::<[[__m256; V]; T]>::uninit() }; 8];
        let (mut w, mut x) = (w, x);
        for chain in chains.iter_mut() {
            let mut acc = [[_mm256_setzero_ps(); V]; T];
            let mut left = seg;
            // A loop that runs at least once: else LLVM stored the zeros of every chain
            // up front, a 3 KiB memset per call.
            loop {
                // SAFETY: the caller's promise; each position advances both pointers once.
                unsafe {
                    let wv: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(w.add(8 * v)));
                    for (t, acc) in acc.iter_mut().enumerate() {
                        let b = _mm256_broadcast_ss(&*x.add(t));
                        for (a, &wv) in acc.iter_mut().zip(&wv) {
                            *a = _mm256_fmadd_ps(wv, b, *a);
                        }
                    }
                    (w, x) = (w.add(8 * V), x.add(T));
                }
                left -= 1;
                if left == 0 {
                    break;
                }
            }
            chain.write(acc);
        }
        // hsum_ps's tree over the chains, lane j being chain j.
        for (t, &dst) in dst.iter().enumerate() {
            for v in 0..V {
                // SAFETY: the loop above wrote all eight chains.
                let c: [__m256; 8] = std::array::from_fn(|j| unsafe { chains[j].assume_init_ref()[t][v] });
                let even = _mm256_add_ps(_mm256_add_ps(c[0], c[4]), _mm256_add_ps(c[2], c[6]));
                let odd = _mm256_add_ps(_mm256_add_ps(c[1], c[5]), _mm256_add_ps(c[3], c[7]));
                // SAFETY: `dst` holds 8·V floats (the caller's promise); unaligned store.
                unsafe { _mm256_storeu_ps(dst.add(8 * v), _mm256_add_ps(even, odd)) };
            }
        }
    }
}
