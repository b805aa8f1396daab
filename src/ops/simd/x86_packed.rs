//! The x86 micro-kernels of `ops::packed`. AVX-512: a tile of up to `MR` rows times one panel of `NR` = 32
//! output channels, accumulated over the whole depth in 2 x `m` registers. AVX2 (16 registers of 8 lanes):
//! the same tile as up to 6 rows times half a panel at a time, 2 x 6 accumulators (the classic 6 x 16
//! FMA tile), the same FMAs in the same order, so the same sums bit for bit. Their portable reference is
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

/// The lengths both tiles need: `1 <= m <= MR`, the inputs, the output rows and the epilogue vectors.
fn check(m: usize, x: &[f32], w: &[f32], inp: usize, out: &TileOut) {
    assert!((1..=MR).contains(&m), "tile of {m} rows");
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

/// [`tile_into`] with AVX2 and FMA: rows 0..6 then 6..m, each over the panel's two halves of 16 channels.
/// Panics unless the CPU has AVX2 and FMA and the lengths are as [`tile_into`] requires.
pub(crate) fn tile_into_avx2(m: usize, x: &[f32], w: &[f32], inp: usize, out: TileOut) {
    assert!(
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        "AVX2 tile on a CPU without it"
    );
    check(m, x, w, inp, &out);
    let sink = Sink::of(out);
    for r0 in (0..m).step_by(6) {
        let rows = 6.min(m - r0);
        for h in [0, 16] {
            // SAFETY: AVX2 and FMA are present and the lengths checked above: rows r0..r0 + rows < m of
            // x, columns h..h + 16 of the panel and of the sink's rows (bias and scale hold NR values).
            unsafe {
                let (x, w, sink) = (x.as_ptr().add(r0 * inp), w.as_ptr().add(h), sink.at(r0, h));
                match rows {
                    1 => kernel_avx2::<1>(x, w, inp, sink),
                    2 => kernel_avx2::<2>(x, w, inp, sink),
                    3 => kernel_avx2::<3>(x, w, inp, sink),
                    4 => kernel_avx2::<4>(x, w, inp, sink),
                    5 => kernel_avx2::<5>(x, w, inp, sink),
                    _ => kernel_avx2::<6>(x, w, inp, sink),
                }
            }
        }
    }
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

/// `M` rows (`x + i * inp`) times 16 channels of a panel (`w + k * NR`, 16 values) over the whole depth,
/// then the sink's epilogue on the 16 values of each row.
///
/// # Safety
/// AVX2 and FMA; `x` readable for `M` rows of `inp`, `w` for `inp` steps of `NR` (16 used), `sink` valid
/// for `M` rows of 16 values (and 16 of bias and scale).
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2<const M: usize>(x: *const f32, w: *const f32, inp: usize, sink: Sink) {
    let mut c0 = [_mm256_setzero_ps(); M];
    let mut c1 = [_mm256_setzero_ps(); M];
    for k in 0..inp {
        // SAFETY (every load of the loop): step k < inp of the panel, element k of rows i < M.
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
