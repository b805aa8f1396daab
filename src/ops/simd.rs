//! Run-time instruction-set dispatch for the element-wise and attention kernels, and the two kernels no
//! compiler vectorises well, written with AVX-512 intrinsics: the transpose of a linear layer's yᵀ
//! ([`transposed`]) and the 7x7 depthwise row ([`depthwise7_row`]).
//!
//! The crate builds for baseline x86-64 (SSE2), so it runs on any x86-64 box. A [`Kernel`]'s body is plain
//! scalar Rust marked `#[inline(always)]`; [`run`] calls it through a function compiled for AVX-512 or
//! AVX2 when the CPU has them, so the same loops vectorise 16 or 8 lanes wide instead of 4. Rust never
//! contracts `a * b + c` into an FMA on its own, and the intrinsics kernels multiply and add separately in
//! the scalar paths' order, so every level computes bitwise the same results.
#![allow(unsafe_code)]

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
}

fn level() -> Level {
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
        Level::Baseline
    })
}

/// Runs `k` compiled for the best instruction set this CPU has.
#[inline]
pub fn run<K: Kernel>(k: K) -> K::Output {
    match level() {
        // SAFETY: `level` returned Avx512 only after detecting every feature `avx512` is compiled for.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { avx512(k) },
        // SAFETY: as above, for AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { avx2(k) },
        Level::Baseline => k.run(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn avx512<K: Kernel>(k: K) -> K::Output {
    k.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<K: Kernel>(k: K) -> K::Output {
    k.run()
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
    assert!(cols <= ld_src && rows <= ld_dst, "transpose strides");
    assert!(src.len() >= (rows - 1) * ld_src + cols, "transpose source");
    assert!(
        dst.len() >= (cols - 1) * ld_dst + rows,
        "transpose destination"
    );
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        // SAFETY: the CPU has AVX-512F (checked by `level`), and the asserts above keep every element read
        // and written inside `src` and `dst`, which is what `transpose_add_avx512` requires.
        unsafe { transpose_add_avx512(src, ld_src, dst, ld_dst, cols, bias) };
        return;
    }
    for j in 0..cols {
        for (i, b) in bias.iter().enumerate() {
            dst[j * ld_dst + i].write(src[i * ld_src + j] + b);
        }
    }
}

/// [`transpose_add`] in 16x16 register tiles.
///
/// # Safety
/// The CPU must have AVX-512F; `src` must hold `(bias.len() - 1) * ld_src + cols` elements and `dst`
/// `(cols - 1) * ld_dst + bias.len()`, with `cols <= ld_src` and `bias.len() <= ld_dst`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_add_avx512(
    src: &[f32],
    ld_src: usize,
    dst: &mut [MaybeUninit<f32>],
    ld_dst: usize,
    cols: usize,
    bias: &[f32],
) {
    use std::arch::x86_64::*;
    let rows = bias.len();
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr() as *mut f32);
    for i0 in (0..rows).step_by(16) {
        let w = 16.min(rows - i0);
        let wmask: __mmask16 = (1u32 << w).wrapping_sub(1) as u16;
        // SAFETY (all loads and stores below): lanes outside the masks are not accessed; the accessed ones
        // are rows i0..i0 + w < rows of src, columns j0..j0 + h <= cols, and their transposes in dst, all
        // within the lengths the caller guarantees.
        let b = unsafe { _mm512_maskz_loadu_ps(wmask, bias.as_ptr().add(i0)) };
        for j0 in (0..cols).step_by(16) {
            let h = 16.min(cols - j0);
            let hmask: __mmask16 = (1u32 << h).wrapping_sub(1) as u16;
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, ri) in r.iter_mut().enumerate().take(w) {
                *ri = unsafe { _mm512_maskz_loadu_ps(hmask, s.add((i0 + i) * ld_src + j0)) };
            }
            // Pairs, then quads within 128-bit lanes: u[4g + c] lane L holds column 4L + c, rows 4g..4g + 3.
            let mut t = [_mm512_setzero_ps(); 16];
            for p in 0..8 {
                t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
                t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
            }
            let mut u = [_mm512_setzero_ps(); 16];
            for g in 0..4 {
                let (lo, hi) = (t[4 * g], t[4 * g + 2]);
                let (lo2, hi2) = (t[4 * g + 1], t[4 * g + 3]);
                u[4 * g] = _mm512_shuffle_ps::<0x44>(lo, hi);
                u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(lo, hi);
                u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(lo2, hi2);
                u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(lo2, hi2);
            }
            // Then 128-bit lanes across registers: column c, 4 + c, 8 + c, 12 + c, rows 0..16.
            for c in 0..4 {
                let v = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
                let vp = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
                let x = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
                let xp = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
                let cols4 = [
                    (c, _mm512_shuffle_f32x4::<0x88>(v, vp)),
                    (4 + c, _mm512_shuffle_f32x4::<0x88>(x, xp)),
                    (8 + c, _mm512_shuffle_f32x4::<0xDD>(v, vp)),
                    (12 + c, _mm512_shuffle_f32x4::<0xDD>(x, xp)),
                ];
                for (j, col) in cols4 {
                    if j < h {
                        unsafe {
                            _mm512_mask_storeu_ps(
                                d.add((j0 + j) * ld_dst + i0),
                                wmask,
                                _mm512_add_ps(col, b),
                            )
                        };
                    }
                }
            }
        }
    }
}

/// One output row `[w, c]` of a 7x7 depthwise convolution (stride 1, zero padding 3) with AVX-512, or `false`
/// with nothing written where the CPU lacks it or `c` is not whole vectors. `lines[ky]` is input row
/// `oy + ky - 3` (`[w, c]`), `None` where that is padding; `taps` is `[49, c]` (tap-major), `bias` `[c]`.
/// Blocks of 8 pixels x 16 channels stay in registers over all 49 taps, which are each loaded once per block
/// (a compiler would not keep the blocks in registers: 3x the time). Each output adds its bias, then its taps
/// in row-major order, skipping padding, with separate multiplies and adds: bitwise the plain loop's sums.
pub fn depthwise7_row(
    lines: &[Option<&[f32]>; 7],
    w: usize,
    c: usize,
    taps: &[f32],
    bias: &[f32],
    dst: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 && c.is_multiple_of(LANES) {
        assert!(
            taps.len() == 49 * c && bias.len() == c && dst.len() == w * c,
            "depthwise shapes"
        );
        assert!(
            lines.iter().flatten().all(|l| l.len() == w * c),
            "depthwise input rows"
        );
        // SAFETY: the CPU has AVX-512F (checked by `level`); the asserts give the lengths
        // `depthwise7_row_avx512` requires.
        unsafe { depthwise7_row_avx512(lines, w, c, taps, bias, dst) };
        return true;
    }
    let _ = (lines, w, c, taps, bias, dst);
    false
}

/// [`depthwise7_row`]'s kernel.
///
/// # Safety
/// The CPU must have AVX-512F; `c` must be a multiple of 16, every line and `dst` hold `w * c` values,
/// `taps` `49 * c` and `bias` `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn depthwise7_row_avx512(
    lines: &[Option<&[f32]>; 7],
    w: usize,
    c: usize,
    taps: &[f32],
    bias: &[f32],
    dst: &mut [f32],
) {
    use std::arch::x86_64::*;
    const OB: usize = 8;
    let d = dst.as_mut_ptr();
    // SAFETY (every load and store below): channel offsets are c0 + 0..16 <= c; pixel indices are < w, checked
    // where they can fall outside; tap indices < 49; so each access lies in a slice of the length the caller
    // guarantees.
    for c0 in (0..c).step_by(LANES) {
        let b = unsafe { _mm512_loadu_ps(bias.as_ptr().add(c0)) };
        for ox0 in (0..w).step_by(OB) {
            let mut acc = [b; OB];
            for (ky, line) in lines.iter().enumerate() {
                let Some(line) = line else { continue };
                let l = line.as_ptr();
                for kx in 0..7 {
                    let t = unsafe { _mm512_loadu_ps(taps.as_ptr().add((ky * 7 + kx) * c + c0)) };
                    for (j, a) in acc.iter_mut().enumerate() {
                        // Input column ox0 + j + kx - 3, skipped where it is padding (or past a short block).
                        let x = ox0 + j + kx;
                        if x >= 3 && x - 3 < w {
                            let v = unsafe { _mm512_loadu_ps(l.add((x - 3) * c + c0)) };
                            *a = _mm512_add_ps(*a, _mm512_mul_ps(v, t));
                        }
                    }
                }
            }
            for (j, a) in acc.iter().enumerate().take(w - ox0) {
                unsafe { _mm512_storeu_ps(d.add((ox0 + j) * c + c0), *a) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
