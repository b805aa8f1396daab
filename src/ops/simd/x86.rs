//! The x86-64 half of the dispatch: the functions [`run`](super::run) enters compiled for AVX-512 or AVX2,
//! and the kernels written with AVX-512 or AVX2 intrinsics where no compiler vectorises the portable form
//! well. Each kernel's portable reference sits beside its dispatcher in `simd/mod.rs` (or, for the depthwise
//! row, in `ops/conv.rs`), and computes bitwise the same results: separate multiplies and adds, in the same
//! order.

use super::{transpose_add_elements, Kernel, LANES};

/// `k.run()` compiled for AVX-512 (F, BW, DQ, VL) with AVX2 and FMA.
///
/// # Safety
/// The CPU must have every feature enabled here.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
pub(super) unsafe fn avx512<K: Kernel>(k: K) -> K::Output {
    k.run()
}

/// `k.run()` compiled for AVX2 with FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn avx2<K: Kernel>(k: K) -> K::Output {
    k.run()
}

/// The 16x16 transpose of `r` (register i holding row i): register j of the result holds column j.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn transpose16(r: &[std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
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
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let v = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let vp = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let x = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
        let xp = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(v, vp);
        out[4 + c] = _mm512_shuffle_f32x4::<0x88>(x, xp);
        out[8 + c] = _mm512_shuffle_f32x4::<0xDD>(v, vp);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(x, xp);
    }
    out
}

/// [`transpose_add`](super::transpose_add) in 16x16 register tiles.
///
/// # Safety
/// The CPU must have AVX-512F; `src` must hold `(bias.len() - 1) * ld_src + cols` elements and `d` must be
/// valid for writes of element `j * ld_dst + i` for `j < cols`, `i < bias.len()` (no other thread accessing
/// those), with `cols <= ld_src` and `bias.len() <= ld_dst`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_add_avx512(
    src: &[f32],
    ld_src: usize,
    d: *mut f32,
    ld_dst: usize,
    cols: usize,
    bias: &[f32],
) {
    use std::arch::x86_64::*;
    let rows = bias.len();
    let s = src.as_ptr();
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
            let t = transpose16(&r);
            for (j, col) in t.iter().enumerate().take(h) {
                unsafe {
                    _mm512_mask_storeu_ps(
                        d.add((j0 + j) * ld_dst + i0),
                        wmask,
                        _mm512_add_ps(*col, b),
                    )
                };
            }
        }
    }
}

/// [`transpose_add`](super::transpose_add) in 8x8 AVX2 register tiles (pairs, quads within 128-bit lanes,
/// then the lanes across registers), with the rows and columns past the last whole tile one element at a
/// time.
///
/// # Safety
/// The CPU must have AVX2; `src` must hold `(bias.len() - 1) * ld_src + cols` elements and `d` must be valid
/// for writes of element `j * ld_dst + i` for `j < cols`, `i < bias.len()` (no other thread accessing
/// those), with `cols <= ld_src` and `bias.len() <= ld_dst`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn transpose_add_avx2(
    src: &[f32],
    ld_src: usize,
    d: *mut f32,
    ld_dst: usize,
    cols: usize,
    bias: &[f32],
) {
    use std::arch::x86_64::*;
    let rows = bias.len();
    let (rows8, cols8) = (rows - rows % 8, cols - cols % 8);
    let s = src.as_ptr();
    // SAFETY (every load and store below): rows i0..i0 + 8 <= rows and columns j0..j0 + 8 <= cols of src,
    // and their transposes in dst, all within the lengths the caller guarantees.
    for i0 in (0..rows8).step_by(8) {
        let b = unsafe { _mm256_loadu_ps(bias.as_ptr().add(i0)) };
        for j0 in (0..cols8).step_by(8) {
            let r: [__m256; 8] =
                std::array::from_fn(|i| unsafe { _mm256_loadu_ps(s.add((i0 + i) * ld_src + j0)) });
            let t: [__m256; 8] = std::array::from_fn(|k| {
                let (p, q) = (r[2 * (k / 2)], r[2 * (k / 2) + 1]);
                if k % 2 == 0 {
                    _mm256_unpacklo_ps(p, q)
                } else {
                    _mm256_unpackhi_ps(p, q)
                }
            });
            // u[4g + k]: of rows 4g..4g + 4, column m and 4 + m (one per 128-bit lane) for m = [0, 2, 1, 3][k].
            let u: [__m256; 8] = std::array::from_fn(|k| {
                let (g, c) = (k / 4, k % 4);
                let (lo, hi) = (t[4 * g + c % 2], t[4 * g + 2 + c % 2]);
                if c < 2 {
                    _mm256_shuffle_ps::<0x44>(lo, hi)
                } else {
                    _mm256_shuffle_ps::<0xEE>(lo, hi)
                }
            });
            for c in 0..4 {
                let k = [0, 2, 1, 3][c];
                let lo = _mm256_permute2f128_ps::<0x20>(u[k], u[4 + k]);
                let hi = _mm256_permute2f128_ps::<0x31>(u[k], u[4 + k]);
                unsafe {
                    _mm256_storeu_ps(d.add((j0 + c) * ld_dst + i0), _mm256_add_ps(lo, b));
                    _mm256_storeu_ps(d.add((j0 + 4 + c) * ld_dst + i0), _mm256_add_ps(hi, b));
                }
            }
        }
        // SAFETY: rows i0..i0 + 8 and columns cols8..cols, within the caller's guarantee.
        unsafe { transpose_add_elements(src, ld_src, d, ld_dst, i0..i0 + 8, cols8..cols, bias) };
    }
    // SAFETY: rows rows8..rows and every column, within the caller's guarantee.
    unsafe { transpose_add_elements(src, ld_src, d, ld_dst, rows8..rows, 0..cols, bias) };
}

/// [`depthwise7_row`](super::depthwise7_row)'s kernel.
///
/// # Safety
/// The CPU must have AVX-512F; `c` must be a multiple of 16, every line and `dst` hold `w * c` values,
/// `taps` `49 * c` and `bias` `c`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn depthwise7_row_avx512(
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
            // A block whose every input column ox0 - 3 .. ox0 + OB + 3 lies inside the row needs no padding
            // checks: its loop is straight-line, which keeps its speed independent of how the compiler lays
            // out the checked loop's branches. Same products, same order, so the same sums.
            let interior = ox0 >= 3 && ox0 + OB + 3 <= w;
            for (ky, line) in lines.iter().enumerate() {
                let Some(line) = line else { continue };
                if interior {
                    let l = unsafe { line.as_ptr().add((ox0 - 3) * c + c0) };
                    for kx in 0..7 {
                        let t =
                            unsafe { _mm512_loadu_ps(taps.as_ptr().add((ky * 7 + kx) * c + c0)) };
                        for (j, a) in acc.iter_mut().enumerate() {
                            let v = unsafe { _mm512_loadu_ps(l.add((j + kx) * c)) };
                            *a = _mm512_add_ps(*a, _mm512_mul_ps(v, t));
                        }
                    }
                    continue;
                }
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
