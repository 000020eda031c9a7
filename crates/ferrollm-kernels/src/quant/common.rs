//! Helpers shared by the block formats: byte-to-block casts, half floats, CPU feature checks.

use std::sync::OnceLock;

/// A plain-old-data block: `#[repr(C)]`, alignment 1, no padding, every bit pattern valid.
///
/// Weight blocks keep their `f16` fields as `[u8; 2]` so the alignment stays 1: rows of a
/// memory-mapped GGUF file then cast to blocks at any offset.
///
/// # Safety
/// Implementors must satisfy the properties above.
pub unsafe trait Block: Copy + Send + Sync + 'static {
    /// Bytes per block (each layout also asserts its `size_of` at compile time).
    const BYTES: usize;
    /// Weights per block.
    const ELEMS: usize;
}

/// Views `bytes` as blocks. Panics if the length is not a whole number of blocks.
pub fn as_blocks<B: Block>(bytes: &[u8]) -> &[B] {
    assert_eq!(std::mem::size_of::<B>(), B::BYTES);
    assert_eq!(std::mem::align_of::<B>(), 1);
    assert!(
        bytes.len().is_multiple_of(B::BYTES),
        "{} bytes is not a whole number of {}-byte blocks",
        bytes.len(),
        B::BYTES
    );
    // SAFETY: `B` has alignment 1, no padding, and accepts every bit pattern (the `Block`
    // contract, with size and alignment re-checked above); the length divides exactly.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / B::BYTES) }
}

/// Views blocks as their bytes, for building test and benchmark matrices.
pub fn block_bytes<B: Block>(blocks: &[B]) -> &[u8] {
    // SAFETY: `B` is plain old data without padding (the `Block` contract), so every byte is
    // initialized; u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks)) }
}

#[inline]
pub fn f16_to_f32(h: [u8; 2]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes(h)).to_f32()
}

#[inline]
pub fn f32_to_f16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

#[inline]
pub fn bf16_to_f32(h: [u8; 2]) -> f32 {
    f32::from_bits((u16::from_le_bytes(h) as u32) << 16)
}

/// Rounds half away from zero, as ggml's `nearest_int` does for in-range values.
#[inline]
pub fn nearest_int(x: f32) -> i32 {
    x.round() as i32
}

/// Whether the AVX2 kernels may run: AVX2, FMA and F16C, detected once.
#[inline]
pub fn has_avx2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::env::var_os("FERROLLM_NO_SIMD").is_none()
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether the NEON kernels may run (aarch64, which always has NEON, unless
/// `FERROLLM_NO_SIMD` is set, as for [`has_avx2`]).
#[inline]
pub fn has_neon() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "aarch64")]
        {
            std::env::var_os("FERROLLM_NO_SIMD").is_none() && std::arch::is_aarch64_feature_detected!("neon")
        }
        #[cfg(not(target_arch = "aarch64"))]
        {
            false
        }
    })
}

/// `has_avx2() && $env unset (or "0") && every feature detected`, checked once per call site:
/// the higher kernel tiers, each with a switch that turns it off for comparisons.
macro_rules! tier_detected {
    ($env:literal; $($feature:tt),+) => {{
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                has_avx2()
                    && std::env::var_os($env).is_none_or(|v| v == "0")
                    $(&& is_x86_feature_detected!($feature))+
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        })
    }};
}

/// Whether the AVX-VNNI kernels may run: [`has_avx2`] and AVX-VNNI (`vpdpbusd` on 256-bit
/// registers: Alder Lake, Sapphire Rapids, Zen 5). `FERROLLM_NO_VNNI=1` turns them off, for
/// comparisons; the results are the same bits either way.
#[inline]
pub fn has_avxvnni() -> bool {
    tier_detected!("FERROLLM_NO_VNNI"; "avxvnni")
}

/// Whether the AVX-512 integer kernels may run: [`has_avx2`] and AVX-512 F, BW and VNNI (Ice
/// Lake, Sapphire Rapids, Zen 4). `FERROLLM_NO_AVX512=1` turns them off, for comparisons; the
/// results are the same bits either way.
#[inline]
pub fn has_avx512vnni() -> bool {
    tier_detected!("FERROLLM_NO_AVX512"; "avx512f", "avx512bw", "avx512vnni")
}

/// Whether the AVX-512 float kernels may run: [`has_avx2`] and AVX-512 F
/// (`FERROLLM_NO_AVX512=1` turns them off, as for [`has_avx512vnni`]).
#[inline]
pub fn has_avx512f() -> bool {
    tier_detected!("FERROLLM_NO_AVX512"; "avx512f")
}

/// Applies a one-row, `T`-token kernel to each row in `bytes`, writing `out[r * T + t]`.
///
/// Kernels take whole row ranges so that dispatch (feature check, tile width) is paid once per
/// range instead of once per row: decode rows are only a few hundred bytes long.
#[inline(always)]
pub fn for_each_row<A, const T: usize>(
    bytes: &[u8],
    row_bytes: usize,
    acts: &[&[A]],
    out: &mut [f32],
    tile: impl Fn(&[u8], &[&[A]; T]) -> [f32; T],
) {
    let acts: &[&[A]; T] = acts.try_into().expect("token tile width");
    assert!(row_bytes > 0 && bytes.len().is_multiple_of(row_bytes));
    assert_eq!(out.len(), bytes.len() / row_bytes * T);
    for (row, o) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(T)) {
        o.copy_from_slice(&tile(row, acts));
    }
}

/// A block type's row kernel: `dot_rows(bytes, row_bytes, acts, out)`.
pub type DotRows<A> = fn(&[u8], usize, &[&[A]], &mut [f32]);

/// `out[t] = Σ w·acts[t]` for up to 4 activation rows, through a block type's `dot_rows`.
pub fn dot_via_rows<B: Block, A>(w: &[B], acts: &[&[A]], out: &mut [f32], dot_rows: DotRows<A>) {
    if w.is_empty() {
        out[..acts.len()].fill(0.0);
        return;
    }
    dot_rows(block_bytes(w), std::mem::size_of_val(w), acts, &mut out[..acts.len()]);
}

/// Runs the const-generic `$tile::<T>` over every row for the call's token count `T` (1 to 4);
/// each width needs its own monomorphized arm, so every block type would otherwise repeat it.
/// Only the x86 kernels use it.
#[cfg(target_arch = "x86_64")]
macro_rules! for_each_row_tiled {
    ($bytes:expr, $row_bytes:expr, $acts:expr, $out:expr, $tile:ident) => {{
        use $crate::quant::common::{as_blocks, for_each_row};
        match $acts.len() {
            1 => for_each_row::<_, 1>($bytes, $row_bytes, $acts, $out, |r, a| $tile::<1>(as_blocks(r), a)),
            2 => for_each_row::<_, 2>($bytes, $row_bytes, $acts, $out, |r, a| $tile::<2>(as_blocks(r), a)),
            3 => for_each_row::<_, 3>($bytes, $row_bytes, $acts, $out, |r, a| $tile::<3>(as_blocks(r), a)),
            4 => for_each_row::<_, 4>($bytes, $row_bytes, $acts, $out, |r, a| $tile::<4>(as_blocks(r), a)),
            n => panic!("token tile of {n}"),
        }
    }};
}
#[cfg(target_arch = "x86_64")]
pub(crate) use for_each_row_tiled;

/// The entry every interleaved kernel shares, on every ISA: checks one activation row per
/// token, each as long as `blocks`, then runs `kernel::<.., T>` for the call's `T =
/// acts.len()` tokens (1 to 4) and hands each token's eight row sums to `$store`. Generic
/// kernels name their leading parameters.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! by_tokens {
    ($store:ident, $kernel:ident $(, $g:ident)*; $blocks:expr, $acts:expr, $out:expr) => {{
        let (blocks, acts, out) = ($blocks, $acts, $out);
        for a in acts {
            assert_eq!(a.len(), blocks.len());
        }
        assert!(out.len() >= acts.len());
        match acts.len() {
            1 => $store($kernel::<$($g,)* 1>(blocks, acts.try_into().unwrap()), out),
            2 => $store($kernel::<$($g,)* 2>(blocks, acts.try_into().unwrap()), out),
            3 => $store($kernel::<$($g,)* 3>(blocks, acts.try_into().unwrap()), out),
            4 => $store($kernel::<$($g,)* 4>(blocks, acts.try_into().unwrap()), out),
            n => panic!("token tile of {n}"),
        }
    }};
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use by_tokens;
