//! The AVX-512 micro-kernel of `ops::packed`: a tile of up to `MR` rows times one panel of `NR` = 32 output
//! channels, accumulated over the whole depth in 2 x `m` registers. Its portable reference is
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
    let sink = Sink {
        y: out.y.as_mut_ptr(),
        ld: out.ld,
        bias: out.bias.map(<[f32]>::as_ptr),
        gelu: out.gelu,
        scale: out.scale.map(<[f32]>::as_ptr),
        accumulate: out.accumulate,
    };
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
