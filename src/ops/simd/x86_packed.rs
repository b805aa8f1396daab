//! The x86 micro-kernels of `ops::packed`. AVX-512: a tile of up to `MR` rows times one panel of `NR` = 32
//! output channels, accumulated over the whole depth in 2 x `m` registers. AVX2 (16 registers of 8 lanes):
//! up to 6 rows times half a panel at a time, 2 x 6 accumulators (the classic 6 x 16 FMA tile), over the
//! depth in blocks that stay in L1 (`panel_avx2`), the sums of one block resumed by the next: the same FMAs
//! in the same order, so the same sums bit for bit. Their portable reference is
//! `ops::packed::tile_portable` (the same sums, with FMA's single rounding per step instead of two).

use std::arch::x86_64::*;

use crate::ops::packed::{MR, NR};

/// `acc[i][j] = Σ_k x[i * inp + k] * w[k * NR + j]` for `m = acc.len() / NR` rows of `x`, on AVX-512.
///
/// Panics unless `super::has_avx512()` and the slices hold `m * inp`, `inp * NR` and `m * NR` values
/// (`1 <= m <= MR`).
/// The cache lines of `ahead` (the next panel's share) are prefetched into L2 meanwhile, one per step of
/// the depth; prefetches do not change the sums.
pub(crate) fn tile(m: usize, x: &[f32], w: &[f32], inp: usize, acc: &mut [f32], ahead: &[f32]) {
    let out = TileOut {
        y: acc,
        ld: NR,
        bias: None,
        gelu: false,
        scale: None,
        accumulate: false,
    };
    tile_into(m, x, w, inp, ahead, out)
}

/// [`tile`] with AVX2 and FMA, for CPUs without AVX-512 (no prefetch: the next panel is left to the
/// hardware prefetcher).
pub(crate) fn tile_avx2(m: usize, x: &[f32], w: &[f32], inp: usize, acc: &mut [f32]) {
    let out = TileOut {
        y: acc,
        ld: NR,
        bias: None,
        gelu: false,
        scale: None,
        accumulate: false,
    };
    tile_into_avx2(m, x, w, inp, out)
}

/// Where a tile leaves the registers for [`tile_into`]: `+ bias`, GELU, `* scale`, then stored into row
/// `i` of the tile at `y[i * ld..][..NR]`, or added to what it holds. The same operations, in the same
/// order, as `ops::packed::Finish` applies to [`tile`]'s sums, so the same values.
pub(crate) struct TileOut<'a> {
    pub y: &'a mut [f32],
    pub ld: usize,
    pub bias: Option<&'a [f32]>,
    pub gelu: bool,
    pub scale: Option<&'a [f32]>,
    pub accumulate: bool,
}

/// [`tile`] with its epilogue applied in the registers, straight into `out.y`: no pass over a buffer of
/// sums. Panics unless `super::has_avx512()`, `1 <= m <= MR`, `x` and `w` hold `m * inp` and `inp * NR`
/// values, `out.y` holds `(m - 1) * out.ld + NR` values (`NR <= ld`) and `bias`, `scale` at least `NR`.
pub(crate) fn tile_into(m: usize, x: &[f32], w: &[f32], inp: usize, ahead: &[f32], out: TileOut) {
    assert!(super::has_avx512(), "AVX-512 tile on a CPU without it");
    check(m, x, w, inp, &out);
    let sink = Sink::of(out);
    let lines = ahead.len().div_ceil(16).min(inp);
    let pf = ahead.as_ptr();
    // SAFETY: the CPU has AVX-512F and the lengths are what `kernel` reads and writes (checked above); it
    // prefetches ahead[16 l] for l < lines, within `ahead` (a prefetch never faults, and these addresses
    // are in bounds anyway).
    unsafe {
        match m {
            1 => kernel::<1>(x, w, inp, sink, pf, lines),
            2 => kernel::<2>(x, w, inp, sink, pf, lines),
            3 => kernel::<3>(x, w, inp, sink, pf, lines),
            4 => kernel::<4>(x, w, inp, sink, pf, lines),
            5 => kernel::<5>(x, w, inp, sink, pf, lines),
            6 => kernel::<6>(x, w, inp, sink, pf, lines),
            7 => kernel::<7>(x, w, inp, sink, pf, lines),
            8 => kernel::<8>(x, w, inp, sink, pf, lines),
            9 => kernel::<9>(x, w, inp, sink, pf, lines),
            10 => kernel::<10>(x, w, inp, sink, pf, lines),
            11 => kernel::<11>(x, w, inp, sink, pf, lines),
            _ => kernel::<12>(x, w, inp, sink, pf, lines),
        }
    }
}

/// The lengths both tiles need: `1 <= m <= MR`, then as [`check_rows`].
fn check(m: usize, x: &[f32], w: &[f32], inp: usize, out: &TileOut) {
    assert!((1..=MR).contains(&m), "tile of {m} rows");
    check_rows(m, x, w, inp, out)
}

/// The lengths a product of `m >= 1` rows by one panel needs: the inputs, the output rows and the epilogue
/// vectors.
fn check_rows(m: usize, x: &[f32], w: &[f32], inp: usize, out: &TileOut) {
    assert!(x.len() >= m * inp && w.len() >= inp * NR, "tile inputs");
    assert!(
        out.ld >= NR && out.y.len() >= (m - 1) * out.ld + NR,
        "tile output rows"
    );
    assert!(
        [out.bias, out.scale]
            .iter()
            .flatten()
            .all(|v| v.len() >= NR),
        "epilogue vectors"
    );
}

/// Depth per block of the AVX2 loop: a block of the panel (32 KB) stays in L1 while every group of rows
/// runs over it, and each group's 6 rows of it (6 KB) come from L2 (see [`panel_avx2`] for when).
pub(crate) const KC: usize = 256;

/// [`tile_into`] with AVX2 and FMA (any row count, as [`panel_avx2`]). Panics unless the CPU has AVX2 and
/// FMA and the lengths are as [`tile_into`] requires.
pub(crate) fn tile_into_avx2(m: usize, x: &[f32], w: &[f32], inp: usize, out: TileOut) {
    check(m, x, w, inp, &out);
    panel_avx2(m, x, w, inp, &[], &mut vec![0.0; m * NR], out)
}

/// `rows` rows of `x` (`[rows, inp]`) times one panel `w` with AVX2 and FMA, through `out`'s epilogue into
/// its first `rows` rows. The depth runs in blocks of [`KC`] (while such a block of all `rows` rows, 1 KB
/// a row, fits a quarter of L2; else in one block); within a block, each group of up to 6 rows
/// meets the panel's two halves of 16 channels in turn (the classic 6 x 16 FMA tile, 12 accumulators). Between blocks a
/// group's sums wait in `partial` (`[rows, NR]`) and are loaded back as the next block's starting
/// accumulators: the same FMAs in the same order as one pass over the whole depth, so the same sums bit
/// for bit, and those of the AVX-512 tile.
///
/// The cache lines of `ahead` (the next panel) are asked for meanwhile, a share per call of the kernel, one
/// per step of its depth: in a model the weights come from memory, where the hardware prefetcher stops at
/// each 4 KiB page.
///
/// Panics unless the CPU has AVX2 and FMA, `x`, `w` and `partial` hold `rows * inp`, `inp * NR` and
/// `rows * NR` values, `out.y` holds `(rows - 1) * out.ld + NR` (`NR <= ld`) and bias and scale `NR`.
pub(crate) fn panel_avx2(
    rows: usize,
    x: &[f32],
    w: &[f32],
    inp: usize,
    ahead: &[f32],
    partial: &mut [f32],
    out: TileOut,
) {
    // Blocks only while a block of all the rows stays in L2: past that (a batch), the short strided runs
    // of each group's rows cost more than the whole-depth half panel's trips to L2.
    let kc = if rows * KC * 4 <= 256 << 10 { KC } else { inp };
    panel_avx2_blocks(rows, x, w, inp, ahead, partial, out, kc)
}

/// [`panel_avx2`] with blocks of `kc` steps of the depth (a test's handle on the blocking).
#[allow(clippy::too_many_arguments)]
pub(crate) fn panel_avx2_blocks(
    rows: usize,
    x: &[f32],
    w: &[f32],
    inp: usize,
    ahead: &[f32],
    partial: &mut [f32],
    out: TileOut,
    kc: usize,
) {
    assert!(
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        "AVX2 tile on a CPU without it"
    );
    assert!(rows > 0 && inp > 0 && kc > 0, "empty panel product");
    assert!(partial.len() >= rows * NR, "partial sums");
    check_rows(rows, x, w, inp, &out);
    let sink = Sink::of(out);
    let raw = Sink::of(TileOut {
        y: partial,
        ld: NR,
        bias: None,
        gelu: false,
        scale: None,
        accumulate: false,
    });
    // Groups of at most 6 rows, their sizes differing by at most one (99 rows: 17 groups of 5 or 6, not
    // 16 of 6 and one of 3, whose 6 accumulators would wait on the FMA latency).
    let groups = rows.div_ceil(6);
    let calls = inp.div_ceil(kc) * groups * 2;
    let share = ahead.len().div_ceil(16).div_ceil(calls);
    let mut call = 0;
    for k0 in (0..inp).step_by(kc) {
        let depth = kc.min(inp - k0);
        let last = k0 + depth == inp;
        for g in 0..groups {
            for h in [0, 16] {
                let (r0, r1) = (g * rows / groups, (g + 1) * rows / groups);
                // SAFETY: AVX2 and FMA are present and the lengths checked above: rows r0..r1 <= rows of
                // x (from column k0, depth values each) and of the sinks, steps k0..k0 + depth <= inp of
                // the panel's columns h..h + 16, and 16 values of bias and scale from h.
                unsafe {
                    let x = x.as_ptr().add(r0 * inp + k0);
                    let w = w.as_ptr().add(k0 * NR + h);
                    let start = (k0 > 0).then(|| raw.at(r0, h).y.cast_const());
                    let sink = if last { sink } else { raw }.at(r0, h);
                    // This call's share of the next panel's lines, at most one per step.
                    let first = (call * share * 16).min(ahead.len());
                    let lines = (ahead.len() - first).div_ceil(16).min(share).min(depth);
                    call += 1;
                    let b = Block {
                        x,
                        w,
                        inp,
                        depth,
                        start,
                        ahead: (ahead.as_ptr().add(first), lines),
                    };
                    match r1 - r0 {
                        1 => kernel_avx2::<1>(b, sink),
                        2 => kernel_avx2::<2>(b, sink),
                        3 => kernel_avx2::<3>(b, sink),
                        4 => kernel_avx2::<4>(b, sink),
                        5 => kernel_avx2::<5>(b, sink),
                        _ => kernel_avx2::<6>(b, sink),
                    }
                }
            }
        }
    }
}

/// What [`kernel_avx2`] multiplies: rows `x + i * inp` over `depth` steps of the half panel at `w` (16
/// values at `w + k * NR`), its accumulators starting from `start`'s rows of 16 (at stride `NR`) or zero;
/// meanwhile it prefetches `ahead`'s lines (pointer, count: one per step).
#[derive(Clone, Copy)]
struct Block {
    x: *const f32,
    w: *const f32,
    inp: usize,
    depth: usize,
    start: Option<*const f32>,
    ahead: (*const f32, usize),
}

/// [`TileOut`] as the kernel reads it: row i at `y + i * ld`.
#[derive(Clone, Copy)]
struct Sink {
    y: *mut f32,
    ld: usize,
    bias: Option<*const f32>,
    gelu: bool,
    scale: Option<*const f32>,
    accumulate: bool,
}

impl Sink {
    fn of(out: TileOut) -> Self {
        Sink {
            y: out.y.as_mut_ptr(),
            ld: out.ld,
            bias: out.bias.map(<[f32]>::as_ptr),
            gelu: out.gelu,
            scale: out.scale.map(<[f32]>::as_ptr),
            accumulate: out.accumulate,
        }
    }

    /// The sink of the rows from `r0` and the columns from `col`.
    ///
    /// # Safety
    /// Row `r0` and column `col` must lie inside the sink (and `col` inside bias and scale).
    unsafe fn at(self, r0: usize, col: usize) -> Self {
        // SAFETY: the caller's.
        unsafe {
            Sink {
                y: self.y.add(r0 * self.ld + col),
                bias: self.bias.map(|b| b.add(col)),
                scale: self.scale.map(|s| s.add(col)),
                ..self
            }
        }
    }
}

/// `M` rows times 16 channels of a panel over one [`Block`] of the depth, then the sink's epilogue on the
/// 16 values of each row.
///
/// # Safety
/// AVX2 and FMA; `b.x` readable for `M` rows of `b.depth` values at stride `b.inp`, `b.w` for `b.depth`
/// steps of `NR` (16 used), `b.start` (if any) for `M` rows of 16 at stride `NR`; `sink` valid for `M`
/// rows of 16 values (and 16 of bias and scale); `b.ahead`'s lines at most `b.depth`.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2<const M: usize>(b: Block, sink: Sink) {
    let Block {
        x,
        w,
        inp,
        depth,
        start,
        ahead: (pf, lines),
    } = b;
    let mut c0 = [_mm256_setzero_ps(); M];
    let mut c1 = [_mm256_setzero_ps(); M];
    if let Some(s) = start {
        for i in 0..M {
            // SAFETY: row i < M of `start`, 16 values.
            unsafe {
                c0[i] = _mm256_loadu_ps(s.add(i * NR));
                c1[i] = _mm256_loadu_ps(s.add(i * NR + 8));
            }
        }
    }
    for k in 0..depth {
        if k < lines {
            // SAFETY: line k < lines of the caller's share of the next panel; a prefetch reads nothing into
            // the program anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(pf.add(k * 16).cast()) };
        }
        // SAFETY (every load of the loop): step k < depth of the panel, element k of rows i < M.
        let (w0, w1) = unsafe {
            (
                _mm256_loadu_ps(w.add(k * NR)),
                _mm256_loadu_ps(w.add(k * NR + 8)),
            )
        };
        for i in 0..M {
            let a = _mm256_set1_ps(unsafe { *x.add(i * inp + k) });
            c0[i] = _mm256_fmadd_ps(a, w0, c0[i]);
            c1[i] = _mm256_fmadd_ps(a, w1, c1[i]);
        }
    }
    for i in 0..M {
        let (mut a, mut b) = (c0[i], c1[i]);
        // SAFETY (every load and store): row i < M of the sink, 16 values, and 16 of bias and scale.
        unsafe {
            if let Some(v) = sink.bias {
                a = _mm256_add_ps(a, _mm256_loadu_ps(v));
                b = _mm256_add_ps(b, _mm256_loadu_ps(v.add(8)));
            }
            if sink.gelu {
                (a, b) = (gelu8(a), gelu8(b));
            }
            if let Some(v) = sink.scale {
                a = _mm256_mul_ps(a, _mm256_loadu_ps(v));
                b = _mm256_mul_ps(b, _mm256_loadu_ps(v.add(8)));
            }
            let d = sink.y.add(i * sink.ld);
            if sink.accumulate {
                a = _mm256_add_ps(_mm256_loadu_ps(d), a);
                b = _mm256_add_ps(_mm256_loadu_ps(d.add(8)), b);
            }
            _mm256_storeu_ps(d, a);
            _mm256_storeu_ps(d.add(8), b);
        }
    }
}

/// `gelu1` of each lane, as [`gelu16`] for 8 lanes.
#[target_feature(enable = "avx2,fma")]
fn gelu8(v: __m256) -> __m256 {
    let mut t = [0.0f32; 8];
    // SAFETY: t holds the 8 values one unaligned 256-bit store writes and one load reads.
    unsafe { _mm256_storeu_ps(t.as_mut_ptr(), v) };
    for x in &mut t {
        *x = crate::ops::activation::gelu1(*x);
    }
    unsafe { _mm256_loadu_ps(t.as_ptr()) }
}

/// # Safety
/// AVX-512F; `x` holds `M * inp` values, `w` `inp * NR`; `sink` valid for `M` rows; `pf` `16 * lines` values.
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const M: usize>(
    x: &[f32],
    w: &[f32],
    inp: usize,
    sink: Sink,
    pf: *const f32,
    lines: usize,
) {
    let (xb, wp) = (x.as_ptr(), w.as_ptr());
    let mut c0 = [_mm512_setzero_ps(); M];
    let mut c1 = [_mm512_setzero_ps(); M];
    for k in 0..inp {
        // SAFETY: k < inp, so w[k * NR..k * NR + 32] and x[i * inp + k] (i < M) lie in the slices.
        let (w0, w1) = unsafe {
            (
                _mm512_loadu_ps(wp.add(k * NR)),
                _mm512_loadu_ps(wp.add(k * NR + 16)),
            )
        };
        if k < lines {
            // SAFETY: k < lines, so pf + 16 k lies in the prefetched slice.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(pf.add(k * 16).cast()) };
        }
        let xk = unsafe { xb.add(k) };
        for i in 0..M {
            let a = _mm512_set1_ps(unsafe { *xk.add(i * inp) });
            c0[i] = _mm512_fmadd_ps(a, w0, c0[i]);
            c1[i] = _mm512_fmadd_ps(a, w1, c1[i]);
        }
    }
    for i in 0..M {
        let (mut a, mut b) = (c0[i], c1[i]);
        // SAFETY (every load and store): row i < M of the sink, NR values, and NR values of bias and
        // scale, as the caller guarantees.
        unsafe {
            if let Some(v) = sink.bias {
                a = _mm512_add_ps(a, _mm512_loadu_ps(v));
                b = _mm512_add_ps(b, _mm512_loadu_ps(v.add(16)));
            }
            if sink.gelu {
                (a, b) = (gelu16(a), gelu16(b));
            }
            if let Some(v) = sink.scale {
                a = _mm512_mul_ps(a, _mm512_loadu_ps(v));
                b = _mm512_mul_ps(b, _mm512_loadu_ps(v.add(16)));
            }
            let d = sink.y.add(i * sink.ld);
            if sink.accumulate {
                a = _mm512_add_ps(_mm512_loadu_ps(d), a);
                b = _mm512_add_ps(_mm512_loadu_ps(d.add(16)), b);
            }
            _mm512_storeu_ps(d, a);
            _mm512_storeu_ps(d.add(16), b);
        }
    }
}

/// `gelu1` of each lane: the scalar function itself, which this AVX-512 context compiles to vector
/// operations, so its values are bitwise those of every other GELU in the crate.
#[target_feature(enable = "avx512f")]
fn gelu16(v: __m512) -> __m512 {
    let mut t = [0.0f32; 16];
    // SAFETY: t holds the 16 values one unaligned 512-bit store writes and one load reads.
    unsafe { _mm512_storeu_ps(t.as_mut_ptr(), v) };
    for x in &mut t {
        *x = crate::ops::activation::gelu1(*x);
    }
    unsafe { _mm512_loadu_ps(t.as_ptr()) }
}
