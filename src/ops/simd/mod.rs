//! Run-time instruction-set dispatch for the element-wise and attention kernels, portable helpers they share
//! ([`reduce`]), and the dispatchers of the two kernels no compiler vectorises well: the transpose of a linear
//! layer's yᵀ ([`transposed`]) and the 7x7 depthwise row ([`depthwise7_row`]). Everything specific to an
//! instruction set lives in a submodule per architecture (`x86` for AVX2 and AVX-512, `neon` for aarch64),
//! entered only from here after [`level`] has detected the features it is compiled for; each hand-written
//! kernel keeps a portable reference that a test compares it with.
//!
//! The crate builds for baseline x86-64 (SSE2), so it runs on any x86-64 box. A [`Kernel`]'s body is plain
//! scalar Rust marked `#[inline(always)]`; [`run`] calls it through a function compiled for AVX-512 or
//! AVX2 when the CPU has them, so the same loops vectorise 16 or 8 lanes wide instead of 4. Rust never
//! contracts `a * b + c` into an FMA on its own, and the intrinsics kernels multiply and add separately in
//! the scalar paths' order, so every level computes bitwise the same results.
//!
//! On aarch64, NEON is part of the baseline, so a [`Kernel`] is compiled for it (4 lanes) without a
//! dispatch; the NEON level selects the hand-written kernels of `neon.rs`. The optional extensions the int8
//! and bf16 kernels need are detected at run time ([`arm_extensions`]).
#![allow(unsafe_code)]

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon_bf16;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon_int8;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon_packed;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_bf16;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_int8;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_packed;

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

/// A unit of work whose `run` is inlined into a function compiled for the CPU's best instruction set.
pub trait Kernel {
    type Output;
    /// Must be `#[inline(always)]`, or it is compiled once for the baseline and gains nothing.
    fn run(self) -> Self::Output;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

/// The environment variable that chooses the kernels: unset, empty or `auto` for the best this CPU has,
/// `portable` for the portable ones only.
pub const KERNELS_VAR: &str = "WSTREAM_KERNELS";

/// [`KERNELS_VAR`]'s value: `Ok(true)` for `portable`, or the message for a value that means nothing.
fn kernels_choice() -> &'static Result<bool, String> {
    static CHOICE: OnceLock<Result<bool, String>> = OnceLock::new();
    CHOICE.get_or_init(|| match std::env::var_os(KERNELS_VAR) {
        None => Ok(false),
        Some(v) if v.is_empty() || v == "auto" => Ok(false),
        Some(v) if v == "portable" => Ok(true),
        Some(v) => Err(format!(
            "{KERNELS_VAR}={:?} is not a kernel choice: set `portable` (the portable kernels only) or `auto` \
             (the best this CPU has, as when it is unset)",
            v.to_string_lossy()
        )),
    })
}

/// Refuses a [`KERNELS_VAR`] value other than those it documents, so a misspelt `portable` is not silently
/// a run on the vector kernels. `Pipeline::new` asks this before any work.
pub fn check_kernels_var() -> crate::Result<()> {
    kernels_choice()
        .as_ref()
        .map(|_| ())
        .map_err(|e| crate::Error::Options(e.clone()))
}

/// Whether `WSTREAM_KERNELS=portable` asks for the portable kernels only: the path a CPU without any of the
/// instruction sets below takes, run on one that has them (CI tests it that way). Every dispatcher in `ops`
/// asks this, directly or through [`level`], before choosing a vector kernel. A value [`check_kernels_var`]
/// refuses counts as unset here.
pub(crate) fn portable_forced() -> bool {
    matches!(kernels_choice(), Ok(true))
}

/// The kernels a run uses, for `classify --verbose` and the profile: the hand-written ones' level, why, and
/// what the `gemm` crate chose for the matrix products (it has its own run-time dispatch, which
/// `WSTREAM_KERNELS` cannot reach).
pub fn kernels() -> String {
    let ours = match (level(), portable_forced()) {
        (Level::Baseline, true) => "portable (WSTREAM_KERNELS=portable)".to_string(),
        (Level::Baseline, false) => "portable (no vector kernels for this CPU)".to_string(),
        _ => instruction_sets(),
    };
    format!("{ours}; matrix products: gemm crate, {}", gemm_level())
}

/// The instruction set the `gemm` crate's f32 products dispatch to, by the checks it makes itself
/// (gemm-common's `init_gemm_fn`).
fn gemm_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if is_x86_feature_detected!("fma") {
            return "fma";
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        return "neon";
    }
    "scalar"
}

fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        if portable_forced() {
            Level::Baseline
        } else {
            cpu_level()
        }
    })
}

/// The best level this CPU has, whatever `WSTREAM_KERNELS` says: tests that compare a vector kernel with its
/// portable reference ask this, so they still run for real in CI's forced-portable run.
fn cpu_level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Level::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Level::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            return Level::Neon;
        }
        Level::Baseline
    })
}

/// Whether the AVX-512 kernels run here (detected, and not `WSTREAM_KERNELS=portable`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    level() == Level::Avx512
}

/// Whether the best level here is AVX2 with FMA (no AVX-512; not `WSTREAM_KERNELS=portable`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    level() == Level::Avx2
}

/// The optional aarch64 extensions, for the kernels that dispatch on them: SDOT/UDOT (`dotprod`) and
/// SMMLA (`i8mm`) for int8 products, BFDOT/BFMMLA (`bf16`) for bf16 ones. All false when the portable
/// kernels are forced.
#[cfg(target_arch = "aarch64")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ArmExtensions {
    pub dotprod: bool,
    pub i8mm: bool,
    pub bf16: bool,
}

/// The optional aarch64 extensions this CPU has (detected once).
#[cfg(target_arch = "aarch64")]
pub(crate) fn arm_extensions() -> ArmExtensions {
    static EXT: OnceLock<ArmExtensions> = OnceLock::new();
    *EXT.get_or_init(|| {
        if portable_forced() {
            return ArmExtensions::default();
        }
        ArmExtensions {
            dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
            i8mm: std::arch::is_aarch64_feature_detected!("i8mm"),
            bf16: std::arch::is_aarch64_feature_detected!("bf16"),
        }
    })
}

/// The instruction sets the kernels use on this CPU, for reports: `avx512`, `avx2`, `neon` followed by the
/// optional extensions found (`neon+dotprod+i8mm+bf16`), or `portable` (no vector kernels, or
/// `WSTREAM_KERNELS=portable`). The `gemm` crate's products dispatch on their own.
pub fn instruction_sets() -> String {
    match level() {
        Level::Baseline => "portable".into(),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => "avx2".into(),
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => "avx512".into(),
        #[cfg(target_arch = "aarch64")]
        Level::Neon => {
            let ext = arm_extensions();
            let mut s = String::from("neon");
            for (on, name) in [
                (ext.dotprod, "+dotprod"),
                (ext.i8mm, "+i8mm"),
                (ext.bf16, "+bf16"),
            ] {
                if on {
                    s.push_str(name);
                }
            }
            s
        }
    }
}

/// Runs `k` compiled for the best instruction set this CPU has.
#[inline]
pub fn run<K: Kernel>(k: K) -> K::Output {
    match level() {
        // SAFETY: `level` returned Avx512 only after detecting every feature `x86::avx512` is compiled for.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { x86::avx512(k) },
        // SAFETY: as above, for AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { x86::avx2(k) },
        // NEON is already enabled for the whole aarch64 build.
        #[cfg(target_arch = "aarch64")]
        Level::Neon => k.run(),
        Level::Baseline => k.run(),
    }
}

/// Vector lanes the reductions interleave over: an AVX-512 register of f32.
pub const LANES: usize = 16;

/// Folds `map` of each value with `f` into [`LANES`] interleaved partial results, then folds those pairwise:
/// a reduction that vectorises. For a sum that is a fixed order, not left to right (within float rounding of
/// it); for max and min it is exact.
#[inline(always)]
pub fn reduce(x: &[f32], init: f32, map: impl Fn(f32) -> f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut part = [init; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            part[l] = f(part[l], map(ch[l]));
        }
    }
    let tail = chunks.remainder().iter().fold(init, |a, &b| f(a, map(b)));
    // Halving, so the partial results fold in 4 vector steps rather than a chain of 16 scalar ones (that
    // chain dominated softmax over Swin's 49-wide rows).
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            part[l] = f(part[l], part[l + width]);
        }
        width /= 2;
    }
    f(part[0], tail)
}

/// Rows of the result per task of [`transposed`].
const STRIP: usize = 64;

/// `ytᵀ + bias` as a new `[rows, out]` vector, for `yt` `[out, rows]` and `out = bias.len()`: strips of
/// [`STRIP`] result rows in parallel, written into memory that is not zeroed first (zeroing was a third of
/// the cost: it is a pass over memory as large as the transpose's own writes).
pub fn transposed(yt: &[f32], rows: usize, bias: &[f32]) -> Vec<f32> {
    let out = bias.len();
    assert_eq!(yt.len(), out * rows, "yT is not [out, rows]");
    let mut y = Vec::with_capacity(out * rows);
    if out * rows == 0 {
        return y;
    }
    y.spare_capacity_mut()[..out * rows]
        .par_chunks_mut(out * STRIP)
        .enumerate()
        .for_each(|(si, strip)| {
            let r0 = si * STRIP;
            transpose_add(&yt[r0..], rows, strip, out, strip.len() / out, bias)
        });
    // SAFETY: the strips tile 0..out * rows, and `transpose_add` wrote every element of each: element
    // (r0 + j) * out + i for every j < STRIP (or the last strip's length) and i < out.
    unsafe { y.set_len(out * rows) };
    y
}

/// `dst[j * ld_dst + i] = src[i * ld_src + j] + bias[i]` for `i < bias.len()` and `j < cols`: a transpose of
/// `bias.len()` rows of `src` into `cols` rows of `dst`, adding `bias[i]` along each, writing every one of
/// those elements. With AVX-512 it moves 16x16 tiles through registers (a shuffle network, masked at the
/// edges): 1.4-1.6x faster than the scalar form, which no compiler vectorises (measured at ViT-L's shapes).
/// With NEON, 4x4 tiles.
fn transpose_add(
    src: &[f32],
    ld_src: usize,
    dst: &mut [MaybeUninit<f32>],
    ld_dst: usize,
    cols: usize,
    bias: &[f32],
) {
    let rows = bias.len();
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        dst.len() >= (cols - 1) * ld_dst + rows,
        "transpose destination"
    );
    // SAFETY: the assert above keeps every element written inside `dst`, which this call holds
    // exclusively; `transpose_add_raw` checks the strides and the source itself.
    unsafe { transpose_add_raw(src, ld_src, dst.as_mut_ptr().cast(), ld_dst, cols, bias) };
}

/// [`transpose_add`] into initialised memory: `dst[j * ld_dst + i] = src[i * ld_src + j] + bias[i]` for
/// `i < bias.len()`, `j < cols`, the other elements of `dst` left as they are.
pub(crate) fn transpose_add_into(
    src: &[f32],
    ld_src: usize,
    dst: &mut [f32],
    ld_dst: usize,
    cols: usize,
    bias: &[f32],
) {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and `transpose_add` only writes initialised values, so
    // every element of `dst` stays initialised.
    let dst = unsafe { &mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]) };
    transpose_add(src, ld_src, dst, ld_dst, cols, bias)
}

/// Where [`column_groups`]' tasks write: the result's elements, each written by exactly one task.
pub(crate) struct Columns(*mut f32);

// SAFETY: the tasks sharing a `Columns` write disjoint elements (their own output channels' columns).
unsafe impl Sync for Columns {}

impl Columns {
    /// Element `i` of the result (`j * out + n0` is row j's first element of the group at n0).
    pub(crate) fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// A new `[rows, out]` vector written by parallel tasks, one per group of `group` output channels:
/// `task(n0, n, cols)` writes columns `n0..n0 + n` of every row through `cols` (element `j * out + i` at
/// `cols.at(j * out + i)`), while whatever it computed them from is still in cache.
///
/// # Safety
/// Each task must write every element of its columns, and nothing else.
pub(crate) unsafe fn column_groups(
    rows: usize,
    out: usize,
    group: usize,
    task: impl Fn(usize, usize, &Columns) + Sync,
) -> Vec<f32> {
    let group = group.max(1);
    let mut y = Vec::with_capacity(out * rows);
    if out * rows == 0 {
        return y;
    }
    let dst = Columns(y.as_mut_ptr());
    (0..out.div_ceil(group)).into_par_iter().for_each(|t| {
        let n0 = t * group;
        task(n0, group.min(out - n0), &dst)
    });
    // SAFETY: the groups tile 0..out, and each task wrote every element of its columns for every row (the
    // caller's contract).
    unsafe { y.set_len(out * rows) };
    y
}

/// `cᵀ + bias` as a new `[rows, out]` vector (`out = bias.len()`), with `c` `[out, rows]` never whole:
/// `fill(n0, part)` computes the rows `n0..n0 + part.len() / rows` of `c` (output channels) into a scratch
/// buffer of at most `group` channels, in parallel, and each task transposes its part into its columns of the
/// result while the part is still in cache. The same values as [`transposed`] of the whole `c`, bitwise,
/// without `c` ever taking memory or a separate pass.
pub fn transposed_groups(
    rows: usize,
    bias: &[f32],
    group: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    thread_local!(static PART: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) });
    let task = |n0: usize, n: usize, dst: &Columns| {
        let b = &bias[n0..n0 + n];
        let write = |part: &mut [f32]| {
            fill(n0, part);
            // SAFETY: the result holds out * rows elements; this task writes element j * out + n0 + i for
            // j < rows and i < n, its own columns, which no other task touches.
            unsafe { transpose_add_raw(part, rows, dst.at(n0), bias.len(), rows, b) };
        };
        // A nested use (a stolen task inside `fill`) gets a fresh buffer.
        PART.with(|cell| match cell.try_borrow_mut() {
            Ok(mut part) => {
                if part.len() < n * rows {
                    part.resize(n * rows, 0.0);
                }
                write(&mut part[..n * rows])
            }
            Err(_) => write(&mut vec![0.0; n * rows]),
        });
    };
    // SAFETY: each task transposes all `rows` columns of its part into its own output channels.
    unsafe { column_groups(rows, bias.len(), group, task) }
}

/// [`transpose_add`] into memory given by a pointer, for tasks writing disjoint columns of one result.
///
/// # Safety
/// `src` must hold `(bias.len() - 1) * ld_src + cols` elements (`cols <= ld_src`), and `d` must be valid for
/// writes of element `j * ld_dst + i` for `j < cols`, `i < bias.len() <= ld_dst`, no other thread accessing
/// those.
unsafe fn transpose_add_raw(
    src: &[f32],
    ld_src: usize,
    d: *mut f32,
    ld_dst: usize,
    cols: usize,
    bias: &[f32],
) {
    let rows = bias.len();
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(cols <= ld_src && rows <= ld_dst, "transpose strides");
    assert!(src.len() >= (rows - 1) * ld_src + cols, "transpose source");
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        // SAFETY: the CPU has AVX-512F (checked by `level`); the bounds are the caller's and the asserts'.
        unsafe { x86::transpose_add_avx512(src, ld_src, d, ld_dst, cols, bias) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx2 {
        // SAFETY: the CPU has AVX2 (checked by `level`); the bounds are the caller's and the asserts'.
        unsafe { x86::transpose_add_avx2(src, ld_src, d, ld_dst, cols, bias) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if level() == Level::Neon {
        // SAFETY: the bounds are the caller's and the asserts'.
        unsafe { neon::transpose_add_neon(src, ld_src, d, ld_dst, cols, bias) };
        return;
    }
    // SAFETY: every row and column, within the caller's guarantee.
    unsafe { transpose_add_elements(src, ld_src, d, ld_dst, 0..rows, 0..cols, bias) }
}

/// [`transpose_add_raw`] one element at a time for rows `i` in `rows` and columns `j` in `cols`: the path on
/// CPUs without a vector kernel, and the edges the kernels' whole tiles leave.
///
/// # Safety
/// As [`transpose_add_raw`], for the elements of those rows and columns (`rows.end <= bias.len()`).
unsafe fn transpose_add_elements(
    src: &[f32],
    ld_src: usize,
    d: *mut f32,
    ld_dst: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    bias: &[f32],
) {
    for j in cols {
        for i in rows.clone() {
            // SAFETY: column j and row i lie inside what the caller guarantees.
            unsafe { d.add(j * ld_dst + i).write(src[i * ld_src + j] + bias[i]) };
        }
    }
}

/// [`transpose_add`] one element at a time: the reference for the vector kernels (the path on CPUs without
/// one is the same loop in [`transpose_add_raw`]).
#[cfg(test)]
fn transpose_add_portable(
    src: &[f32],
    ld_src: usize,
    dst: &mut [MaybeUninit<f32>],
    ld_dst: usize,
    cols: usize,
    bias: &[f32],
) {
    for j in 0..cols {
        for (i, b) in bias.iter().enumerate() {
            dst[j * ld_dst + i].write(src[i * ld_src + j] + b);
        }
    }
}

/// One output row `[w, c]` of a 7x7 depthwise convolution (stride 1, zero padding 3) with AVX-512 or NEON,
/// or `false` with nothing written where the CPU has neither or `c` is not whole vectors (16 or 4 lanes).
/// `lines[ky]` is input row `oy + ky - 3` (`[w, c]`), `None` where that is padding; `taps` is `[49, c]`
/// (tap-major), `bias` `[c]`. Blocks of pixels x channels (AVX-512: 8 x 16) stay in registers over all 49
/// taps, which are each loaded once per block (a compiler would not keep the blocks in registers: 3x the
/// time). Each output adds its bias, then its taps in row-major order, skipping padding, with separate
/// multiplies and adds: bitwise the plain loop's sums.
/// The portable reference is `ops::conv`'s register-blocked row, which a test there compares it with.
pub fn depthwise7_row(
    lines: &[Option<&[f32]>; 7],
    w: usize,
    c: usize,
    taps: &[f32],
    bias: &[f32],
    dst: &mut [f32],
) -> bool {
    depthwise7_row_at(level(), lines, w, c, taps, bias, dst)
}

/// [`depthwise7_row`] with the kernel this CPU has, whatever `WSTREAM_KERNELS` says: for the test against
/// the portable row.
#[cfg(test)]
pub(crate) fn depthwise7_row_unforced(
    lines: &[Option<&[f32]>; 7],
    w: usize,
    c: usize,
    taps: &[f32],
    bias: &[f32],
    dst: &mut [f32],
) -> bool {
    depthwise7_row_at(cpu_level(), lines, w, c, taps, bias, dst)
}

fn depthwise7_row_at(
    level: Level,
    lines: &[Option<&[f32]>; 7],
    w: usize,
    c: usize,
    taps: &[f32],
    bias: &[f32],
    dst: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 && c.is_multiple_of(LANES) {
        assert!(
            taps.len() == 49 * c && bias.len() == c && dst.len() == w * c,
            "depthwise shapes"
        );
        assert!(
            lines.iter().flatten().all(|l| l.len() == w * c),
            "depthwise input rows"
        );
        // SAFETY: the CPU has AVX-512F (checked by `level`); the asserts give the lengths
        // `x86::depthwise7_row_avx512` requires.
        unsafe { x86::depthwise7_row_avx512(lines, w, c, taps, bias, dst) };
        return true;
    }
    #[cfg(target_arch = "aarch64")]
    if level == Level::Neon && c.is_multiple_of(4) {
        depthwise7_row_neon(lines, w, c, taps, bias, dst);
        return true;
    }
    let _ = (level, lines, w, c, taps, bias, dst);
    false
}

/// [`depthwise7_row`] with NEON, for `c` a multiple of 4, whatever [`level`] says: every aarch64 CPU has
/// NEON, so tests call it directly, also when the portable kernels are forced.
#[cfg(target_arch = "aarch64")]
pub(crate) fn depthwise7_row_neon(
    lines: &[Option<&[f32]>; 7],
    w: usize,
    c: usize,
    taps: &[f32],
    bias: &[f32],
    dst: &mut [f32],
) {
    assert!(c.is_multiple_of(4), "depthwise channels");
    assert!(
        taps.len() == 49 * c && bias.len() == c && dst.len() == w * c,
        "depthwise shapes"
    );
    assert!(
        lines.iter().flatten().all(|l| l.len() == w * c),
        "depthwise input rows"
    );
    // SAFETY: the asserts give the shapes `neon::depthwise7_row_neon` requires.
    unsafe { neon::depthwise7_row_neon(lines, w, c, taps, bias, dst) };
}

/// The bounds a bf16 `slab` kernel (x86 `vdpbf16ps`, aarch64 BFDOT) relies on before its unsafe block: at
/// most `nr_max` channels, whole pairs inside `k` inputs, the weight rows, an activation packed `lanes`
/// tokens per vector, and the output. Both architectures' entry points call it, so their SAFETY arguments
/// rest on the same checks.
///
/// # Panics
/// If a bound does not hold.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_bf16_slab(
    w: &[u16],
    k: usize,
    (n0, nr): (usize, usize),
    (p0, pc): (usize, usize),
    xp: &[u32],
    ld: usize,
    rows: usize,
    c: &[f32],
    (nr_max, lanes): (usize, usize),
) {
    assert!((1..=nr_max).contains(&nr), "slab of {nr} channels");
    assert!(
        k.is_multiple_of(2) && (p0 + pc) * 2 <= k,
        "pairs {p0}+{pc} of {k} inputs"
    );
    assert!((n0 + nr) * k <= w.len(), "weight rows");
    assert!(
        ld >= rows.next_multiple_of(lanes),
        "packed stride {ld} for {rows} tokens"
    );
    assert!((p0 + pc) * ld <= xp.len(), "packed activation");
    assert!(c.len() >= nr * rows, "slab output");
}

/// The bounds `x86_int8::dot` and `neon_int8::dot` need before their `unsafe` blocks: `w` holds `nout` rows of
/// `4 * kq` int8, `act` `rb` vectors of the packed `[kq][16 rows][4 bytes]` layout, and `acc` rows of stride
/// `ld >= 16 * rb` for every output.
///
/// # Panics
/// If a bound does not hold.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn check_int8_dot(
    w: &[i8],
    nout: usize,
    kq: usize,
    act: &[u8],
    rb: usize,
    acc: &[i32],
    ld: usize,
) {
    assert!(
        w.len() >= nout * 4 * kq && act.len() >= rb * kq * 64 && ld >= 16 * rb,
        "dot shapes"
    );
    assert!(
        nout == 0 || acc.len() >= (nout - 1) * ld + 16 * rb,
        "dot output"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kernel` against the portable transpose, bitwise, on strided sub-blocks of each `(rows, cols, ld_src,
    /// ld_dst)` shape (every case has cols <= ld_src and rows <= ld_dst).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn transpose_matches_portable(
        shapes: &[(usize, usize, usize, usize)],
        kernel: impl Fn(&[f32], usize, &mut [MaybeUninit<f32>], usize, usize, &[f32]),
    ) {
        for &(rows, cols, ld_src, ld_dst) in shapes {
            let src: Vec<f32> = (0..rows * ld_src)
                .map(|i| (i as f32 * 0.37).sin())
                .collect();
            let bias: Vec<f32> = (0..rows).map(|i| i as f32 * 0.1).collect();
            let len = (cols - 1) * ld_dst + rows;
            let mut got = vec![MaybeUninit::new(f32::NAN); len];
            let mut want = vec![MaybeUninit::new(f32::NAN); len];
            kernel(&src, ld_src, &mut got, ld_dst, cols, &bias);
            transpose_add_portable(&src, ld_src, &mut want, ld_dst, cols, &bias);
            // SAFETY: both start initialised (NaN) and the kernels only write f32 values.
            let read = |v: &[MaybeUninit<f32>]| {
                v.iter()
                    .map(|x| unsafe { x.assume_init() }.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                read(&got),
                read(&want),
                "{rows}x{cols} ld {ld_src}/{ld_dst}"
            );
        }
    }

    /// The x86 transposes against their portable reference, bitwise, on strided sub-blocks with partial tiles
    /// in either direction or both: the AVX2 one on every x86-64 CPU with AVX2, the AVX-512 one where the CPU
    /// has it.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn transpose_kernel_matches_portable() {
        let shapes = [
            (8, 8, 8, 8),
            (16, 16, 16, 16),
            (5, 3, 7, 9),
            (3, 5, 5, 3),
            (17, 33, 40, 20),
            (40, 1, 1, 41),
            (1, 40, 41, 1),
            (16, 197, 197, 1024),
        ];
        if !is_x86_feature_detected!("avx2") {
            crate::ops::int8::tests::skip("AVX2");
            return;
        }
        transpose_matches_portable(&shapes, |src, ld_src, dst, ld_dst, cols, bias| {
            // SAFETY: AVX2 was detected above; the helper sizes `src` and `dst` as the kernel requires.
            unsafe {
                x86::transpose_add_avx2(src, ld_src, dst.as_mut_ptr().cast(), ld_dst, cols, bias)
            }
        });
        if cpu_level() != Level::Avx512 {
            eprintln!("AVX-512 part skipped: this CPU has no AVX-512");
            return;
        }
        transpose_matches_portable(&shapes, |src, ld_src, dst, ld_dst, cols, bias| {
            // SAFETY: AVX-512 was detected above; the helper sizes `src` and `dst` as the kernel requires.
            unsafe {
                x86::transpose_add_avx512(src, ld_src, dst.as_mut_ptr().cast(), ld_dst, cols, bias)
            }
        });
    }

    /// The NEON transpose against its portable reference, bitwise, on strided sub-blocks with partial tiles in
    /// either direction or both. NEON is in every aarch64 CPU, so this runs whatever `WSTREAM_KERNELS` says.
    #[test]
    #[cfg(target_arch = "aarch64")]
    fn transpose_neon_matches_portable() {
        let shapes = [
            (4, 4, 4, 4),
            (16, 16, 16, 16),
            (5, 3, 7, 9),
            (3, 5, 5, 3),
            (17, 33, 40, 20),
            (40, 1, 1, 41),
            (1, 40, 41, 1),
            (12, 64, 64, 12),
        ];
        transpose_matches_portable(&shapes, |src, ld_src, dst, ld_dst, cols, bias| {
            // SAFETY: the helper sizes `src` and `dst` as the kernel requires.
            unsafe {
                neon::transpose_add_neon(src, ld_src, dst.as_mut_ptr().cast(), ld_dst, cols, bias)
            }
        });
    }

    /// Parts transposed into their columns as they are filled give bitwise what the one-pass transpose of
    /// the whole `[out, rows]` matrix gives, for groups that do and do not divide `out`.
    #[test]
    fn transposed_groups_matches_transposed() {
        for (out, rows, group) in [
            (40, 197, 12),
            (7, 3, 16),
            (96, 49, 96),
            (33, 17, 1),
            (5, 0, 2),
        ] {
            let c: Vec<f32> = (0..out * rows).map(|i| (i as f32 * 0.37).sin()).collect();
            let bias: Vec<f32> = (0..out).map(|i| i as f32 * 0.1 - 1.0).collect();
            let got = transposed_groups(rows, &bias, group, |n0, part| {
                assert!(part.len() <= group * rows && part.len() % rows.max(1) == 0);
                part.copy_from_slice(&c[n0 * rows..][..part.len()]);
            });
            let want = transposed(&c, rows, &bias);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{out}x{rows} by {group}");
        }
    }

    /// The label names what detection finds, read here from the CPU directly, and `portable` under the switch.
    #[test]
    fn instruction_sets_names_the_detected_features() {
        #[cfg(target_arch = "aarch64")]
        let found = {
            let mut s = String::from("neon");
            for (on, name) in [
                (
                    std::arch::is_aarch64_feature_detected!("dotprod"),
                    "+dotprod",
                ),
                (std::arch::is_aarch64_feature_detected!("i8mm"), "+i8mm"),
                (std::arch::is_aarch64_feature_detected!("bf16"), "+bf16"),
            ] {
                if on {
                    s.push_str(name);
                }
            }
            s
        };
        #[cfg(target_arch = "x86_64")]
        let found = if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            "avx512"
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            "avx2"
        } else {
            "portable"
        }
        .to_string();
        #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
        let found = String::from("portable");
        let want = if portable_forced() {
            "portable".to_string()
        } else {
            found
        };
        eprintln!("instruction sets: {}", instruction_sets());
        assert_eq!(instruction_sets(), want);
    }

    /// Every tile shape: whole, partial in either direction or both, several strips, against the definition.
    #[test]
    fn transposed_matches_definition() {
        for (out, rows) in [
            (1, 1),
            (16, 16),
            (5, 3),
            (17, 33),
            (64, 197),
            (40, 16),
            (3, 150),
            (0, 4),
        ] {
            let yt: Vec<f32> = (0..out * rows).map(|i| i as f32 * 0.5).collect();
            let bias: Vec<f32> = (0..out).map(|i| 1000.0 + i as f32).collect();
            let y = transposed(&yt, rows, &bias);
            assert_eq!(y.len(), out * rows);
            for r in 0..rows {
                for o in 0..out {
                    assert_eq!(
                        y[r * out + o],
                        yt[o * rows + r] + bias[o],
                        "{out}x{rows} at ({r}, {o})"
                    );
                }
            }
        }
    }
}
