//! The aarch64 half of the dispatch: the kernels written with NEON intrinsics where the compiler does not
//! vectorise the portable form well. NEON is part of the aarch64 baseline, so the generic [`Kernel`]s
//! (super::Kernel) are already compiled for it; these are the twins of the AVX-512 kernels in `x86.rs`.
//! Each computes bitwise what its portable reference computes (separate multiplies and adds, in the same
//! order), and a test beside it compares the two.

use std::arch::aarch64::*;

/// f32 lanes in a NEON register.
const NL: usize = 4;

/// [`transpose_add`](super::transpose_add) in 4x4 register tiles (two rounds of `trn`), with the rows and
/// columns past the last whole tile one element at a time.
///
/// # Safety
/// `src` must hold `(bias.len() - 1) * ld_src + cols` elements and `d` must be valid for writes of element
/// `j * ld_dst + i` for `j < cols`, `i < bias.len()` (no other thread accessing those), with `cols <= ld_src`
/// and `bias.len() <= ld_dst`.
pub(super) unsafe fn transpose_add_neon(
    src: &[f32],
    ld_src: usize,
    d: *mut f32,
    ld_dst: usize,
    cols: usize,
    bias: &[f32],
) {
    let rows = bias.len();
    let (rows4, cols4) = (rows - rows % NL, cols - cols % NL);
    let s = src.as_ptr();
    // SAFETY (every load and store below): rows i0..i0 + 4 <= rows and columns j0..j0 + 4 <= cols of src,
    // and their transposes in dst, all within the lengths the caller guarantees.
    for i0 in (0..rows4).step_by(NL) {
        let b = unsafe { vld1q_f32(bias.as_ptr().add(i0)) };
        for j0 in (0..cols4).step_by(NL) {
            let r: [float32x4_t; NL] =
                std::array::from_fn(|i| unsafe { vld1q_f32(s.add((i0 + i) * ld_src + j0)) });
            // Pairs of rows interleaved, then pairs of 64-bit halves: column c of rows i0..i0 + 4.
            let t0 = vreinterpretq_f64_f32(vtrn1q_f32(r[0], r[1]));
            let t1 = vreinterpretq_f64_f32(vtrn2q_f32(r[0], r[1]));
            let t2 = vreinterpretq_f64_f32(vtrn1q_f32(r[2], r[3]));
            let t3 = vreinterpretq_f64_f32(vtrn2q_f32(r[2], r[3]));
            let columns = [
                vtrn1q_f64(t0, t2),
                vtrn1q_f64(t1, t3),
                vtrn2q_f64(t0, t2),
                vtrn2q_f64(t1, t3),
            ];
            for (j, col) in columns.into_iter().enumerate() {
                let v = vaddq_f32(vreinterpretq_f32_f64(col), b);
                unsafe { vst1q_f32(d.add((j0 + j) * ld_dst + i0), v) };
            }
        }
        // SAFETY: rows i0..i0 + 4 and columns cols4..cols, within the caller's guarantee.
        unsafe {
            super::transpose_add_elements(src, ld_src, d, ld_dst, i0..i0 + NL, cols4..cols, bias)
        };
    }
    // SAFETY: rows rows4..rows and every column, within the caller's guarantee.
    unsafe { super::transpose_add_elements(src, ld_src, d, ld_dst, rows4..rows, 0..cols, bias) };
}

/// [`depthwise7_row`](super::depthwise7_row)'s kernel: blocks of 4 pixels x 16 channels when `c` is a
/// multiple of 16 (16 accumulators of the 32 registers), else 8 pixels x 4 channels.
///
/// # Safety
/// `c` must be a multiple of 4, every line and `dst` hold `w * c` values, `taps` `49 * c` and `bias` `c`.
pub(super) unsafe fn depthwise7_row_neon(
    lines: &[Option<&[f32]>; 7],
    w: usize,
    c: usize,
    taps: &[f32],
    bias: &[f32],
    dst: &mut [f32],
) {
    // SAFETY: the caller's guarantees, and each instance's channel groups are whole for this `c`.
    if c.is_multiple_of(4 * NL) {
        unsafe { depthwise7_row_blocks::<4, 4>(lines, w, c, taps, bias, dst) }
    } else {
        unsafe { depthwise7_row_blocks::<1, 8>(lines, w, c, taps, bias, dst) }
    }
}

/// [`depthwise7_row_neon`] in blocks of `OB` pixels x `V` registers of channels, each block's sums held in
/// registers over all 49 taps; the same structure, and the same order of operations, as the AVX-512 kernel.
///
/// # Safety
/// As [`depthwise7_row_neon`], with `c` a multiple of `4 * V`.
#[inline(always)]
unsafe fn depthwise7_row_blocks<const V: usize, const OB: usize>(
    lines: &[Option<&[f32]>; 7],
    w: usize,
    c: usize,
    taps: &[f32],
    bias: &[f32],
    dst: &mut [f32],
) {
    let d = dst.as_mut_ptr();
    let load = |p: *const f32| -> [float32x4_t; V] {
        // SAFETY: every `p` below starts a run of 4 * V channels inside a slice the caller guarantees.
        std::array::from_fn(|v| unsafe { vld1q_f32(p.add(v * NL)) })
    };
    let add_product = |a: &mut [float32x4_t; V], x: &[float32x4_t; V], t: &[float32x4_t; V]| {
        for ((a, x), t) in a.iter_mut().zip(x).zip(t) {
            *a = vaddq_f32(*a, vmulq_f32(*x, *t));
        }
    };
    // SAFETY (every pointer below): channel offsets are c0 + 0..4 * V <= c; pixel indices are < w, checked
    // where they can fall outside; tap indices < 49; so each access lies in a slice of the length the caller
    // guarantees.
    for c0 in (0..c).step_by(V * NL) {
        let b = load(unsafe { bias.as_ptr().add(c0) });
        for ox0 in (0..w).step_by(OB) {
            let mut acc = [b; OB];
            // As in the AVX-512 kernel: a block whose inputs need no padding checks runs straight-line.
            let interior = ox0 >= 3 && ox0 + OB + 3 <= w;
            for (ky, line) in lines.iter().enumerate() {
                let Some(line) = line else { continue };
                if interior {
                    let l = unsafe { line.as_ptr().add((ox0 - 3) * c + c0) };
                    for kx in 0..7 {
                        let t = load(unsafe { taps.as_ptr().add((ky * 7 + kx) * c + c0) });
                        for (j, a) in acc.iter_mut().enumerate() {
                            add_product(a, &load(unsafe { l.add((j + kx) * c) }), &t);
                        }
                    }
                    continue;
                }
                let l = line.as_ptr();
                for kx in 0..7 {
                    let t = load(unsafe { taps.as_ptr().add((ky * 7 + kx) * c + c0) });
                    for (j, a) in acc.iter_mut().enumerate() {
                        // Input column ox0 + j + kx - 3, skipped where it is padding (or past a short block).
                        let x = ox0 + j + kx;
                        if x >= 3 && x - 3 < w {
                            add_product(a, &load(unsafe { l.add((x - 3) * c + c0) }), &t);
                        }
                    }
                }
            }
            for (j, a) in acc.iter().enumerate().take(w - ox0) {
                for (v, a) in a.iter().enumerate() {
                    unsafe { vst1q_f32(d.add((ox0 + j) * c + c0 + v * NL), *a) };
                }
            }
        }
    }
}
