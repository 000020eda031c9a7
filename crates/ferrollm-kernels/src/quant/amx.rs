//! F16 and BF16 weights on AMX (Sapphire Rapids and later): tile matrix products of bf16 pairs
//! into f32, sixteen times the multiply-adds per cycle of AVX-512 FMA.
//!
//! A bf16 product is exact in f32, so precision rests on how the operands are split, and the
//! split is exact where it counts: an f16 weight is `hi + lo` with both parts bf16 (`hi` is it
//! rounded to 8 significant bits, `lo` the remainder, at most 3 bits), and an f32 activation is
//! `hi + mid + rest` with `hi` and `mid` bf16, each rounded to nearest (about 17 significant
//! bits in all). Each output sums `w_hi·a_hi + w_hi·a_mid + w_lo·a_hi`; what is left out
//! (`w·rest` and `w_lo·a_mid`) is within 2⁻¹⁵ of each product, finer than llama.cpp's own f16
//! activations (2⁻¹²). BF16 weights need no `lo`.
//!
//! The tile unit sums in its own order, which no vector code reproduces, so which path a token
//! takes is fixed by the token itself, never by its batch ([`mode`]): by default prompt tokens
//! take the tiles and generated tokens the vector kernels ([`super::TokenKind`]). Within this
//! path an output depends only on its weight row and its token (AMX computes each element of a
//! result tile from one row and one column), so results stay batch invariant. Prefill (more than 16
//! tokens) puts the activations in the tiles' first operand and the weights, transposed, in
//! the second, so result tiles come out token-major; decode swaps them, which needs no
//! transpose of the weights, and gives the same bits (the products are exact; tested).
//!
//! Layouts (u16 bf16 bit patterns; a tile is 16 rows of 64 bytes), chosen so that a result
//! tile is 16 tokens × 16 weight rows, token-major as the matmul's output is:
//! - activations ([`pack_acts`]): per 16-token group, per 32-column step, a `hi` and a `mid`
//!   tile, row-major (tile row = token); tokens and columns past the input are zeros;
//! - weights ([`pack_weights`]): per 16-row block, per step, one tile per part (`hi`, then
//!   `lo` for F16) in AMX's pair layout: tile row `p` holds, for each weight row, columns `2p`
//!   and `2p + 1`; rows and columns past the matrix are zeros.

use super::common::f16_to_f32;
#[cfg(target_arch = "x86_64")]
use super::common::has_avx512f;
use super::float::Float;
use super::TokenKind;
use std::sync::OnceLock;

/// Columns per step: one tile row of bf16.
pub const STEP: usize = 32;
/// Weight rows per row block, and tokens per group.
pub const TILE: usize = 16;
/// u16 elements per tile.
const TILE_ELEMS: usize = TILE * STEP;

/// Whether this CPU and OS can run the AMX kernels: AVX-512 F ([`has_avx512f`], whose switch
/// also turns this off), AMX-TILE and AMX-BF16, and the kernel's permission to use tile data
/// (Linux asks each process to request it).
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            // CPUID leaf 7 (present on every CPU with AVX-512): EDX bit 22 is AMX-BF16, bit 24
            // AMX-TILE.
            let edx = has_avx512f().then(|| std::arch::x86_64::__cpuid_count(7, 0).edx);
            edx.is_some_and(|d| d & (1 << 22) != 0 && d & (1 << 24) != 0) && request_tile_permission()
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// Which F16 and BF16 matmuls take this path ([`available`] first), from `FERROLLM_AMX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `FERROLLM_AMX=0`, or no AMX: the vector kernels everywhere.
    Off,
    /// The default: prompt tokens only. Prefill is 1.3-1.4× faster on tiles, while batch-1
    /// decode on them is half as fast as the vector kernels (each step splits every weight into
    /// parts again), so generated tokens keep the vector kernels.
    Prompts,
    /// `FERROLLM_AMX=all`: generated tokens too (for comparisons).
    All,
}

/// This process's [`Mode`].
pub fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| {
        let var = std::env::var("FERROLLM_AMX").unwrap_or_default();
        match var.as_str() {
            _ if !available() => Mode::Off,
            "0" | "off" => Mode::Off,
            "all" => Mode::All,
            _ => Mode::Prompts,
        }
    })
}

/// Whether F16 and BF16 matmuls over tokens of `kind` take this path.
pub fn enabled_for(kind: TokenKind) -> bool {
    match mode() {
        Mode::Off => false,
        Mode::Prompts => kind == TokenKind::Prompt,
        Mode::All => true,
    }
}

/// Asks Linux for the tile data state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA`); the grant
/// covers every thread of the process.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes which register state the process may
    // use; it reads and writes no memory of ours.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// Parts a weight of this kind splits into (`hi`, and `lo` for F16); F32 is not handled here.
pub fn weight_parts(kind: Float) -> usize {
    match kind {
        Float::F16 => 2,
        Float::BF16 => 1,
        Float::F32 => panic!("AMX path for F32 weights"),
    }
}

/// 32-column steps in a row of `cols`.
pub fn steps(cols: usize) -> usize {
    cols.div_ceil(STEP)
}

/// u16 elements [`pack_weights`] writes for `rows` rows of `cols` columns.
pub fn packed_weights_len(kind: Float, rows: usize, cols: usize) -> usize {
    rows.div_ceil(TILE) * steps(cols) * weight_parts(kind) * TILE_ELEMS
}

/// u16 elements [`pack_acts`] writes for `n` tokens of `cols` columns.
pub fn packed_acts_len(n: usize, cols: usize) -> usize {
    n.div_ceil(TILE) * steps(cols) * 2 * TILE_ELEMS
}

/// The f32 bits of `bits` rounded to the nearest bf16, ties to even (the low half zero).
#[inline]
fn round_bf16(bits: u32) -> u32 {
    bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000
}

/// `x` as `(hi, mid)` bf16 bit patterns: `hi` is `x` rounded, `mid` the exact remainder
/// rounded.
#[inline]
pub fn split_act(x: f32) -> (u16, u16) {
    let hi = round_bf16(x.to_bits());
    let rest = x - f32::from_bits(hi);
    ((hi >> 16) as u16, (round_bf16(rest.to_bits()) >> 16) as u16)
}

/// A weight as `(hi, lo)` bf16 bit patterns with `hi + lo` equal to it (F16), or itself and 0
/// (BF16).
#[inline]
pub fn split_weight(kind: Float, w: [u8; 2]) -> (u16, u16) {
    match kind {
        Float::F16 => {
            let x = f16_to_f32(w);
            let hi = round_bf16(x.to_bits());
            // Exact: the remainder has at most 3 significant bits.
            ((hi >> 16) as u16, ((x - f32::from_bits(hi)).to_bits() >> 16) as u16)
        }
        Float::BF16 => (u16::from_le_bytes(w), 0),
        Float::F32 => panic!("AMX path for F32 weights"),
    }
}

/// Lays out the `rows` rows (of `row_bytes`) in `bytes` as weight tiles in `out` (see the
/// module docs); scalar reference of [`pack_weights`].
pub fn pack_weights_scalar(kind: Float, bytes: &[u8], row_bytes: usize, out: &mut [u16]) {
    let (rows, cols) = (bytes.len() / row_bytes, row_bytes / 2);
    let parts = weight_parts(kind);
    assert_eq!(out.len(), packed_weights_len(kind, rows, cols), "pack_weights output");
    for (i, tile) in out.chunks_exact_mut(TILE_ELEMS).enumerate() {
        let (part, s, rb) = (i % parts, i / parts % steps(cols), i / parts / steps(cols));
        for (at, d) in tile.iter_mut().enumerate() {
            // Tile row p holds each weight row's columns 2p and 2p + 1.
            let (p, r, e) = (at / STEP, at % STEP / 2, at % 2);
            let (row, col) = (rb * TILE + r, s * STEP + 2 * p + e);
            *d = if row < rows && col < cols {
                let (hi, lo) =
                    split_weight(kind, [bytes[row * row_bytes + 2 * col], bytes[row * row_bytes + 2 * col + 1]]);
                [hi, lo][part]
            } else {
                0
            };
        }
    }
}

/// [`pack_weights_scalar`], with AVX-512 for whole steps of whole rows; the same bits.
pub fn pack_weights(kind: Float, bytes: &[u8], row_bytes: usize, out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512f() && row_bytes >= 2 * STEP {
        let (rows, cols) = (bytes.len() / row_bytes, row_bytes / 2);
        assert_eq!(out.len(), packed_weights_len(kind, rows, cols), "pack_weights output");
        // SAFETY: AVX-512 F, AVX2 and F16C were detected; the output length was checked.
        unsafe { x86::pack_weights(kind, bytes, row_bytes, out) };
        return;
    }
    pack_weights_scalar(kind, bytes, row_bytes, out)
}

/// Lays out tokens `t0..t1` of `x` (rows of `cols`) as activation tiles in `out`, which holds
/// their groups of [`TILE`] from token `t0` (a multiple of [`TILE`]); tokens past `t1` in the last
/// group and columns past `cols` are zeros.
pub fn pack_acts(x: &[f32], cols: usize, t0: usize, t1: usize, out: &mut [u16]) {
    assert!(t0.is_multiple_of(TILE) && t1 > t0 && x.len() >= t1 * cols, "pack_acts tokens");
    let steps = steps(cols);
    assert_eq!(out.len(), packed_acts_len(t1 - t0, cols), "pack_acts output");
    for (g, group) in out.chunks_exact_mut(steps * 2 * TILE_ELEMS).enumerate() {
        for lane in 0..TILE {
            let t = t0 + g * TILE + lane;
            let row = if t < t1 { &x[t * cols..(t + 1) * cols] } else { &[][..] };
            for s in 0..steps {
                let at = s * 2 * TILE_ELEMS + lane * STEP;
                let vals = row.get(s * STEP..row.len().min(s * STEP + STEP)).unwrap_or(&[]);
                let (hi, mid) = group[at..at + TILE_ELEMS + STEP].split_at_mut(TILE_ELEMS);
                for j in 0..STEP {
                    (hi[j], mid[j]) = vals.get(j).map_or((0, 0), |&v| split_act(v));
                }
            }
        }
    }
}

/// Splits `rows` rows (of `row_bytes`) into row-major parts for the decode kernel
/// ([`dot_rows_few`]): `hi` and `lo` (F16) each hold [`TILE`]-padded rows of
/// [`split_width`] u16, zeros past the matrix. No transpose: a tile loads straight from them.
pub fn split_weights(kind: Float, bytes: &[u8], row_bytes: usize, hi: &mut [u16], lo: &mut [u16]) {
    check_split(kind, bytes, row_bytes, hi, lo);
    #[cfg(target_arch = "x86_64")]
    if has_avx512f() {
        // SAFETY: AVX-512 F, AVX2 and F16C were detected; lengths checked.
        unsafe { x86::split_rows(kind, bytes, row_bytes, hi, lo) };
        return;
    }
    split_weights_scalar(kind, bytes, row_bytes, hi, lo)
}

/// The output shapes [`split_weights`] writes: `lo` empty or as long as `hi` for BF16.
fn check_split(kind: Float, bytes: &[u8], row_bytes: usize, hi: &[u16], lo: &[u16]) {
    let (rows, cols) = (bytes.len() / row_bytes, row_bytes / 2);
    let padded = rows.div_ceil(TILE) * TILE * split_width(cols);
    assert!(hi.len() == padded && (lo.len() == padded || weight_parts(kind) == 1), "split_weights output");
}

/// Scalar reference of [`split_weights`].
pub fn split_weights_scalar(kind: Float, bytes: &[u8], row_bytes: usize, hi: &mut [u16], lo: &mut [u16]) {
    check_split(kind, bytes, row_bytes, hi, lo);
    let (rows, cols) = (bytes.len() / row_bytes, row_bytes / 2);
    let width = split_width(cols);
    for (r, h) in hi.chunks_exact_mut(width).enumerate() {
        for (c, v) in h.iter_mut().enumerate() {
            let (x, y) = if r < rows && c < cols {
                split_weight(kind, [bytes[r * row_bytes + 2 * c], bytes[r * row_bytes + 2 * c + 1]])
            } else {
                (0, 0)
            };
            *v = x;
            if let Some(l) = lo.get_mut(r * width + c) {
                *l = y;
            }
        }
    }
}

/// Row length of [`split_weights`]' output: the columns rounded up to whole steps.
pub fn split_width(cols: usize) -> usize {
    steps(cols) * STEP
}

/// Lays out up to [`TILE`] tokens of `x` (rows of `cols`) for [`dot_rows_few`]: per step, a
/// `hi` and a `mid` tile in AMX's pair layout (tile row `p` holds each token's columns `2p` and
/// `2p + 1`); tokens and columns past the input are zeros.
pub fn pack_acts_pairs(x: &[f32], cols: usize, n: usize, out: &mut [u16]) {
    assert!((1..=TILE).contains(&n) && x.len() >= n * cols, "pack_acts_pairs tokens");
    assert_eq!(out.len(), packed_acts_len(n, cols), "pack_acts_pairs output");
    out.fill(0);
    for (t, row) in x[..n * cols].chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let (hi, mid) = split_act(v);
            let at = (c / STEP) * 2 * TILE_ELEMS + (c % STEP / 2) * STEP + 2 * t + c % 2;
            out[at] = hi;
            out[at + TILE_ELEMS] = mid;
        }
    }
}

/// The decode kernel: rows split by [`split_weights`] (`blocks` blocks of [`TILE`]) against
/// one group of tokens laid out by [`pack_acts_pairs`], over `steps` steps; `emit(block,
/// tile)` gets `c[i][k]`, row `i` with token `k`. The same products in the same order as
/// [`dot_tiles`] (only which operand is which differs, and bf16 products are exact), so the
/// same bits, which the tests check.
pub fn dot_rows_few(
    kind: Float,
    hi: &[u16],
    lo: &[u16],
    blocks: usize,
    a: &[u16],
    steps: usize,
    mut emit: impl FnMut(usize, &ResultTile),
) {
    let width = steps * STEP;
    assert!(hi.len() >= blocks * TILE * width && (weight_parts(kind) == 1 || lo.len() >= blocks * TILE * width));
    assert_eq!(a.len(), steps * 2 * TILE_ELEMS, "packed activations");
    assert!(available(), "AMX kernel without AMX");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AMX present and permitted; the operands' lengths were checked above.
    unsafe {
        x86::dot_rows_few(weight_parts(kind), hi, lo, blocks, a, steps, &mut emit)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (&mut emit, lo);
}

/// Result tiles: `c[k][i]` is the dot of a group's token `k` with a block's row `i`.
pub type ResultTile = [[f32; TILE]; TILE];

/// Every (row block, token group) result of the packed weights `w` (`blocks` row blocks of
/// `kind`) against the packed activations `a` (`groups` groups), both over `steps` steps,
/// handed to `emit(block, group, tile)`.
pub fn dot_tiles(
    kind: Float,
    w: &[u16],
    blocks: usize,
    a: &[u16],
    groups: usize,
    steps: usize,
    mut emit: impl FnMut(usize, usize, &ResultTile),
) {
    let parts = weight_parts(kind);
    assert_eq!(w.len(), blocks * steps * parts * TILE_ELEMS, "packed weights");
    assert_eq!(a.len(), groups * steps * 2 * TILE_ELEMS, "packed activations");
    assert!(available(), "AMX kernel without AMX");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AMX-TILE and AMX-BF16 are present and permitted (`available`); the operands'
    // lengths were checked above.
    unsafe {
        x86::dot_tiles(parts, w, blocks, a, groups, steps, &mut emit)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (&mut emit, steps);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// Bytes ahead in a row that the packer prefetches: one row streams at a time, which the
    /// hardware prefetcher alone kept to 4.8 GB/s (7 with this).
    const PREFETCH_AHEAD: usize = 1024;

    /// # Safety
    /// The CPU must support AVX-512 F and F16C; `out` must be `packed_weights_len` long.
    #[target_feature(enable = "avx512f,avx2,f16c")]
    pub unsafe fn pack_weights(kind: Float, bytes: &[u8], row_bytes: usize, out: &mut [u16]) {
        match kind {
            Float::F16 => pack::<2>(bytes, row_bytes, out),
            _ => pack::<1>(bytes, row_bytes, out),
        }
    }

    /// [`pack_weights`] for weights of `PARTS` parts (2: F16, 1: BF16): each block's 16 rows are
    /// split into row-major scratch (one sequential stream per row: 8 GB/s, where reading the
    /// 16 rows a step at a time gave 3), then moved into the pair layout a tile at a time.
    #[target_feature(enable = "avx512f,avx2,f16c")]
    fn pack<const PARTS: usize>(bytes: &[u8], row_bytes: usize, out: &mut [u16]) {
        let kind = if PARTS == 2 { Float::F16 } else { Float::BF16 };
        let (rows, cols) = (bytes.len() / row_bytes, row_bytes / 2);
        let (steps, width) = (steps(cols), split_width(cols));
        let mut split = vec![0u16; 2 * TILE * width];
        let (hi, lo) = split.split_at_mut(TILE * width);
        for (rb, block) in out.chunks_exact_mut(steps * PARTS * TILE_ELEMS).enumerate() {
            let live = rows.saturating_sub(rb * TILE).min(TILE);
            let block_rows = &bytes[rb * TILE * row_bytes..][..live * row_bytes];
            let lo = if PARTS == 2 { &mut *lo } else { &mut [][..] };
            // SAFETY: AVX-512 F and F16C (this function's features); `hi` (and `lo`) hold the
            // block's 16 padded rows.
            unsafe { split_rows(kind, block_rows, row_bytes, hi, lo) };
            for (s, tiles) in block.chunks_exact_mut(PARTS * TILE_ELEMS).enumerate() {
                for (part, tile) in tiles.chunks_exact_mut(TILE_ELEMS).enumerate() {
                    let src = if part == 0 { &hi[s * STEP..] } else { &lo[s * STEP..] };
                    assert!(src.len() >= (TILE - 1) * width + STEP);
                    // SAFETY: 16 rows of 64 bytes, `width` u16 apart, within `src` (asserted);
                    // the tile is 16 rows of 64 bytes.
                    unsafe { transpose16(src.as_ptr().cast(), width / 2, tile.as_mut_ptr().cast()) };
                }
            }
        }
    }

    /// [`super::split_weights`]: each row one sequential stream through [`step`].
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and F16C; lengths as checked by the caller.
    #[target_feature(enable = "avx512f,avx2,f16c")]
    pub unsafe fn split_rows(kind: Float, bytes: &[u8], row_bytes: usize, hi: &mut [u16], lo: &mut [u16]) {
        let (rows, cols) = (bytes.len() / row_bytes, row_bytes / 2);
        let (width, full) = (split_width(cols), cols / STEP);
        for (r, h) in hi.chunks_exact_mut(width).enumerate() {
            let l = if lo.is_empty() { &mut [][..] } else { &mut lo[r * width..][..width] };
            if r >= rows {
                h.fill(0);
                l.fill(0);
                continue;
            }
            let src = &bytes[r * row_bytes..][..row_bytes];
            for s in 0..full {
                let (hp, lp) = (
                    h[s * STEP..].as_mut_ptr(),
                    if l.is_empty() { std::ptr::null_mut() } else { l[s * STEP..].as_mut_ptr() },
                );
                // SAFETY: step s's 64 bytes lie within the row; 32 u16 from `32·s` in `h` (and
                // `l`, for F16, whose `lo` half BF16 never writes).
                unsafe {
                    match kind {
                        Float::F16 => step::<2>(src[s * 2 * STEP..].as_ptr(), hp, lp),
                        _ => step::<1>(src[s * 2 * STEP..].as_ptr(), hp, lp),
                    }
                }
            }
            for col in full * STEP..width {
                let (x, y) = if col < cols { split_weight(kind, [src[2 * col], src[2 * col + 1]]) } else { (0, 0) };
                h[col] = x;
                if !l.is_empty() {
                    l[col] = y;
                }
            }
        }
    }

    /// Loads tile `T` from 16 rows of 64 bytes, `stride` bytes apart, at `p`.
    ///
    /// # Safety
    /// Tiles configured; the 16 rows must be readable.
    #[inline(always)]
    unsafe fn load_strided<const T: usize>(p: *const u16, stride: usize) {
        // SAFETY: the caller's promise.
        unsafe {
            asm!("tileloadd tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) p, s = in(reg) stride, options(nostack, readonly))
        }
    }

    /// # Safety
    /// AMX present and permitted; operands as checked by [`super::dot_rows_few`].
    pub unsafe fn dot_rows_few(
        parts: usize,
        hi: &[u16],
        lo: &[u16],
        blocks: usize,
        a: &[u16],
        steps: usize,
        emit: &mut impl FnMut(usize, &ResultTile),
    ) {
        // SAFETY: AMX is present and permitted (the caller's promise).
        unsafe { configure() };
        let mut b = 0;
        while b < blocks {
            let rb = (blocks - b).min(4);
            // SAFETY: blocks b..b + rb lie within the split rows.
            unsafe {
                match (parts, rb) {
                    (2, 1) => few_run::<2, 1>(hi, lo, b, a, steps, emit),
                    (2, 2) => few_run::<2, 2>(hi, lo, b, a, steps, emit),
                    (2, 3) => few_run::<2, 3>(hi, lo, b, a, steps, emit),
                    (2, 4) => few_run::<2, 4>(hi, lo, b, a, steps, emit),
                    (1, 1) => few_run::<1, 1>(hi, lo, b, a, steps, emit),
                    (1, 2) => few_run::<1, 2>(hi, lo, b, a, steps, emit),
                    (1, 3) => few_run::<1, 3>(hi, lo, b, a, steps, emit),
                    _ => few_run::<1, 4>(hi, lo, b, a, steps, emit),
                }
            }
            b += rb;
        }
    }

    /// `R` blocks of split rows from `b0` (result tiles tmm0-3, weight parts tmm4-5) against
    /// the group (tmm6-7), in [`tile_run`]'s product order with the operands swapped.
    ///
    /// # Safety
    /// Tiles configured; the blocks lie within `hi` (and `lo`).
    #[inline(always)]
    unsafe fn few_run<const PARTS: usize, const R: usize>(
        hi: &[u16],
        lo: &[u16],
        b0: usize,
        a: &[u16],
        steps: usize,
        emit: &mut impl FnMut(usize, &ResultTile),
    ) {
        let width = steps * STEP;
        let stride = 2 * width;
        let (hp, lp, ap) = (hi.as_ptr(), lo.as_ptr(), a.as_ptr());
        // SAFETY (whole body): each load reads 16 rows of 64 bytes within the operands.
        unsafe {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            for s in 0..steps {
                load::<6>(ap.add(2 * s * TILE_ELEMS));
                load::<7>(ap.add((2 * s + 1) * TILE_ELEMS));
                for r in 0..R {
                    let at = (b0 + r) * TILE * width + s * STEP;
                    load_strided::<4>(hp.add(at), stride);
                    if PARTS == 2 {
                        load_strided::<5>(lp.add(at), stride);
                    }
                    dp_into::<4, 6>(r);
                    dp_into::<4, 7>(r);
                    if PARTS == 2 {
                        dp_into::<5, 6>(r);
                    }
                }
            }
        }
        let mut tile = [[0f32; TILE]; TILE];
        for r in 0..R {
            // SAFETY: tiles configured (the caller's promise).
            unsafe { store_result(r, &mut tile) };
            emit(b0 + r, &tile);
        }
    }

    /// `dst` row `p`, element `r` = `src` row `r`, element `p`, for 16 × 16 u32 (each a bf16
    /// pair): unpacks within 128-bit lanes, then lane shuffles.
    ///
    /// # Safety
    /// 16 rows of 64 bytes readable at `src` (rows `stride` u32 apart) and writable at `dst`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose16(src: *const u32, stride: usize, dst: *mut u32) {
        // SAFETY: the caller's promise; unaligned loads and stores.
        let r: [__m512i; 16] = std::array::from_fn(|i| unsafe { _mm512_loadu_si512(src.add(stride * i).cast()) });
        // a[2i], a[2i+1]: rows 2i and 2i+1 interleaved, elements 0-1 and 2-3 of each lane.
        let a: [__m512i; 16] = std::array::from_fn(|j| {
            let (x, y) = (r[j & !1], r[j | 1]);
            if j % 2 == 0 {
                _mm512_unpacklo_epi32(x, y)
            } else {
                _mm512_unpackhi_epi32(x, y)
            }
        });
        // b[4i + c], lane L: element 4L + c of rows 4i..4i + 4.
        let b: [__m512i; 16] = std::array::from_fn(|j| {
            let (i, c) = (j / 4, j % 4);
            let (x, y) = (a[4 * i + c / 2], a[4 * i + 2 + c / 2]);
            if c % 2 == 0 {
                _mm512_unpacklo_epi64(x, y)
            } else {
                _mm512_unpackhi_epi64(x, y)
            }
        });
        for c in 0..4 {
            let x = _mm512_shuffle_i32x4::<0b10_00_10_00>(b[c], b[4 + c]);
            let y = _mm512_shuffle_i32x4::<0b11_01_11_01>(b[c], b[4 + c]);
            let x2 = _mm512_shuffle_i32x4::<0b10_00_10_00>(b[8 + c], b[12 + c]);
            let y2 = _mm512_shuffle_i32x4::<0b11_01_11_01>(b[8 + c], b[12 + c]);
            let rows = [
                (c, _mm512_shuffle_i32x4::<0b10_00_10_00>(x, x2)),
                (4 + c, _mm512_shuffle_i32x4::<0b10_00_10_00>(y, y2)),
                (8 + c, _mm512_shuffle_i32x4::<0b11_01_11_01>(x, x2)),
                (12 + c, _mm512_shuffle_i32x4::<0b11_01_11_01>(y, y2)),
            ];
            for (p, v) in rows {
                // SAFETY: row p of `dst`, within its 16 rows.
                unsafe { _mm512_storeu_si512(dst.add(16 * p).cast(), v) };
            }
        }
    }

    /// One row's 32 weights at `src` to their parts at `hi` and `lo` (F16; BF16 copies to `hi`).
    ///
    /// # Safety
    /// 64 readable bytes at `src`; 32 writable u16 at `hi` and at `lo`.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,f16c")]
    unsafe fn step<const PARTS: usize>(src: *const u8, hi: *mut u16, lo: *mut u16) {
        // A prefetch is only a hint: it never faults, whatever the address.
        _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(PREFETCH_AHEAD).cast());
        // SAFETY: the caller's promise; unaligned loads and stores.
        unsafe {
            if PARTS == 1 {
                _mm512_storeu_si512(hi.cast(), _mm512_loadu_si512(src.cast()));
                return;
            }
            let (mask, half_ulp, one) =
                (_mm512_set1_epi32(0xffff_0000u32 as i32), _mm512_set1_epi32(0x7fff), _mm512_set1_epi32(1));
            for half in 0..2 {
                let x = _mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256(src.add(32 * half).cast())));
                // round_bf16: add 0x7fff plus the kept half's lowest bit, clear the rest.
                let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(x), one);
                let h = _mm512_and_si512(_mm512_add_epi32(x, _mm512_add_epi32(half_ulp, odd)), mask);
                let l = _mm512_sub_ps(_mm512_castsi512_ps(x), _mm512_castsi512_ps(h));
                let h16 = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(h));
                let l16 = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(_mm512_castps_si512(l)));
                _mm256_storeu_si256(hi.add(16 * half).cast(), h16);
                _mm256_storeu_si256(lo.add(16 * half).cast(), l16);
            }
        }
    }

    /// The tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    impl TileConfig {
        fn full() -> Self {
            let mut c = [0u8; 64];
            c[0] = 1;
            for t in 0..8 {
                c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
                c[48 + t] = TILE as u8;
            }
            TileConfig(c)
        }
    }

    thread_local! {
        /// Whether this thread has loaded [`TileConfig::full`]: the kernels share one
        /// configuration, so it is loaded once and never released (Linux saves it with the
        /// thread's other registers).
        static CONFIGURED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Loads the tile configuration on this thread's first AMX call.
    ///
    /// # Safety
    /// AMX present and permitted.
    #[inline]
    unsafe fn configure() {
        if !CONFIGURED.get() {
            let cfg = TileConfig::full();
            // SAFETY: the configuration is 64 readable bytes; AMX is permitted.
            unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
            CONFIGURED.set(true);
        }
    }

    /// Loads tile `T` from 16 rows of 64 bytes at `p`.
    ///
    /// # Safety
    /// Tiles configured; `p` must point at 1 KiB of readable memory.
    #[inline(always)]
    unsafe fn load<const T: usize>(p: *const u16) {
        // SAFETY: the caller's promise.
        unsafe {
            asm!("tileloadd tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) p, s = in(reg) 64usize, options(nostack, readonly))
        }
    }

    /// Tile `C` += tile `A` (16 rows of 32 bf16) · tile `B` (pair layout), in f32.
    ///
    /// # Safety
    /// Tiles configured and loaded.
    #[inline(always)]
    unsafe fn dp<const C: usize, const A: usize, const B: usize>() {
        // SAFETY: the caller's promise; registers only.
        unsafe {
            asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B, options(nostack, nomem))
        }
    }

    /// Stores result tile `c` (0 to 3) into `tile`.
    ///
    /// # Safety
    /// Tiles configured.
    #[inline(always)]
    unsafe fn store_result(c: usize, tile: &mut ResultTile) {
        let p = tile.as_mut_ptr().cast::<f32>();
        // SAFETY: `tile` is 16 rows of 64 bytes.
        unsafe {
            match c {
                0 => asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) p, s = in(reg) 64usize, options(nostack)),
                1 => asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) p, s = in(reg) 64usize, options(nostack)),
                2 => asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) p, s = in(reg) 64usize, options(nostack)),
                _ => asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) p, s = in(reg) 64usize, options(nostack)),
            }
        }
    }

    /// `dp` into result tile `c` (0 to 3), which the unrolled loops make a constant.
    #[inline(always)]
    unsafe fn dp_into<const A: usize, const B: usize>(c: usize) {
        // SAFETY: the caller's promise.
        unsafe {
            match c {
                0 => dp::<0, A, B>(),
                1 => dp::<1, A, B>(),
                2 => dp::<2, A, B>(),
                _ => dp::<3, A, B>(),
            }
        }
    }

    /// # Safety
    /// AMX present and permitted; `w` and `a` as checked by [`super::dot_tiles`].
    pub unsafe fn dot_tiles(
        parts: usize,
        w: &[u16],
        blocks: usize,
        a: &[u16],
        groups: usize,
        steps: usize,
        emit: &mut impl FnMut(usize, usize, &ResultTile),
    ) {
        // SAFETY: AMX is present and permitted (the caller's promise).
        unsafe { configure() };
        let mut b = 0;
        while b < blocks {
            let mut g = 0;
            // Two blocks × two groups, fewer at the edges (decode has its own kernel).
            let rb = (blocks - b).min(2);
            while g < groups {
                let gs = (groups - g).min(2);
                // SAFETY: the block and group ranges lie within the packed operands.
                unsafe {
                    match (parts, rb, gs) {
                        (2, 1, 1) => tile_run::<2, 1, 1>(w, a, b, g, steps, emit),
                        (2, 2, 1) => tile_run::<2, 2, 1>(w, a, b, g, steps, emit),
                        (2, 1, 2) => tile_run::<2, 1, 2>(w, a, b, g, steps, emit),
                        (2, 2, 2) => tile_run::<2, 2, 2>(w, a, b, g, steps, emit),
                        (1, 1, 1) => tile_run::<1, 1, 1>(w, a, b, g, steps, emit),
                        (1, 2, 1) => tile_run::<1, 2, 1>(w, a, b, g, steps, emit),
                        (1, 1, 2) => tile_run::<1, 1, 2>(w, a, b, g, steps, emit),
                        _ => tile_run::<1, 2, 2>(w, a, b, g, steps, emit),
                    }
                }
                g += gs;
            }
            b += rb;
        }
    }

    /// `R` row blocks from `b0` against `G` token groups from `g0` (`R·G` ≤ 4 result tiles in
    /// tmm0-3; weights in tmm4-5, activations in tmm6-7), over every step, then emitted.
    ///
    /// # Safety
    /// Tiles configured; the blocks and groups lie within `w` and `a`.
    #[inline(always)]
    unsafe fn tile_run<const PARTS: usize, const R: usize, const G: usize>(
        w: &[u16],
        a: &[u16],
        b0: usize,
        g0: usize,
        steps: usize,
        emit: &mut impl FnMut(usize, usize, &ResultTile),
    ) {
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        let wtile = |b: usize, s: usize, part: usize| ((b * steps + s) * PARTS + part) * TILE_ELEMS;
        let atile = |g: usize, s: usize, part: usize| ((g * steps + s) * 2 + part) * TILE_ELEMS;
        // SAFETY (whole body): every offset is a tile of a block or group in range (the
        // caller's promise), so each load reads 1 KiB within `w` or `a`.
        unsafe {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            for s in 0..steps {
                if G == 1 {
                    load::<6>(ap.add(atile(g0, s, 0)));
                    load::<7>(ap.add(atile(g0, s, 1)));
                }
                for r in 0..R {
                    load::<4>(wp.add(wtile(b0 + r, s, 0)));
                    if PARTS == 2 {
                        load::<5>(wp.add(wtile(b0 + r, s, 1)));
                    }
                    for g in 0..G {
                        if G > 1 {
                            load::<6>(ap.add(atile(g0 + g, s, 0)));
                            load::<7>(ap.add(atile(g0 + g, s, 1)));
                        }
                        let c = r * G + g;
                        dp_into::<6, 4>(c);
                        dp_into::<7, 4>(c);
                        if PARTS == 2 {
                            dp_into::<6, 5>(c);
                        }
                    }
                }
            }
        }
        let mut tile = [[0f32; TILE]; TILE];
        for r in 0..R {
            for g in 0..G {
                // SAFETY: tiles configured (the caller's promise).
                unsafe { store_result(r * G + g, &mut tile) };
                emit(b0 + r, g0 + g, &tile);
            }
        }
    }
}
