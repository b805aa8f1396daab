//! Convolutions on image-like activations: the non-overlapping patch convolution (as im2col + a linear layer)
//! and the depthwise convolution (register-blocked over output pixels, channels innermost).

use rayon::prelude::*;

use super::linear::linear_weight;
use super::simd::{self, Kernel};
use crate::weight::Weight;

/// Memory layout of an image-like activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[batch, channels, height, width]`, as images arrive.
    Nchw,
    /// `[batch, height, width, channels]`, as the models keep features.
    Nhwc,
}

/// A non-overlapping `k x k`, stride-`k` convolution (patch embedding, ConvNeXt stem and downsample) as
/// im2col + GEMM on the conv weight `[out, c, k, k]` read in place (or widened in chunks, see
/// [`linear_weight`]). Input `[b, c, h, w]` (or NHWC), output
/// NHWC `[b, h/k, w/k, out]`. Rows and columns that do not fill a whole patch are dropped, as torch does.
pub fn patch_conv(
    x: &[f32],
    layout: Layout,
    (b, c, h, w): (usize, usize, usize, usize),
    k: usize,
    weight: &Weight,
    bias: Option<&[f32]>,
    out: usize,
) -> Vec<f32> {
    assert_eq!(
        weight.len(),
        out * c * k * k,
        "conv weight is not [out, c, k, k]"
    );
    let cols = patch_cols(x, layout, (b, c, h, w), k);
    linear_weight(&cols, b * (h / k) * (w / k), weight, out, bias)
}

/// The im2col of [`patch_conv`]: one row `[c, k, k]` per output pixel (`[b * h/k * w/k, c k k]`), in the
/// conv weight's order, so the conv is a linear layer on these rows.
pub fn patch_cols(
    x: &[f32],
    layout: Layout,
    (b, c, h, w): (usize, usize, usize, usize),
    k: usize,
) -> Vec<f32> {
    assert_eq!(x.len(), b * c * h * w, "input size");
    let (hp, wp) = (h / k, w / k);
    let patch = c * k * k;
    let mut cols = vec![0.0f32; b * hp * wp * patch];
    cols.par_chunks_mut(wp * patch)
        .enumerate()
        .for_each(|(row, dst)| {
            let (bi, py) = (row / hp.max(1), row % hp.max(1));
            for px in 0..wp {
                let d = &mut dst[px * patch..(px + 1) * patch];
                for ci in 0..c {
                    for ky in 0..k {
                        let y = py * k + ky;
                        for kx in 0..k {
                            let xx = px * k + kx;
                            d[(ci * k + ky) * k + kx] = match layout {
                                Layout::Nchw => x[((bi * c + ci) * h + y) * w + xx],
                                Layout::Nhwc => x[((bi * h + y) * w + xx) * c + ci],
                            };
                        }
                    }
                }
            }
        });
    cols
}

/// Depthwise `k x k` convolution, stride 1, zero padding `k / 2`, on NHWC input `[b, h, w, c]` with the
/// weight `[c, 1, k, k]`. Channels are innermost so the loops vectorise over them; rayon splits rows. For
/// k = 7 and whole vectors of channels on an AVX-512 or NEON CPU, each output row goes to
/// `simd::depthwise7_row`, which keeps more of the block in registers than the compiler does. Otherwise, for k = 3, 5, 7, in register
/// blocks of `DW_OUT` pixels (`dw_block`), half the time of one-tap-at-a-time accumulation. The sums run
/// in the same order either way.
pub fn depthwise_conv(
    x: &[f32],
    (b, h, w, c): (usize, usize, usize, usize),
    k: usize,
    weight: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    assert_eq!(x.len(), b * h * w * c, "input size");
    assert_eq!(
        weight.len(),
        c * k * k,
        "depthwise weight is not [c, 1, k, k]"
    );
    assert_eq!(bias.len(), c, "bias length");
    let mut y = vec![0.0f32; x.len()];
    if y.is_empty() {
        return y;
    }
    // Tap-major copy of the (small) weight, [k*k, c], so the inner loop reads it contiguously.
    // Built [`simd::LANES`] channels at a time, so its writes are whole runs rather than one value per cache
    // line.
    let mut taps = vec![0.0f32; k * k * c];
    for c0 in (0..c).step_by(simd::LANES) {
        for t in 0..k * k {
            for ci in c0..c.min(c0 + simd::LANES) {
                taps[t * c + ci] = weight[ci * k * k + t];
            }
        }
    }
    // Padding columns read this row of zeros; padding rows are skipped.
    let zeros = vec![0.0f32; c];
    let pad = k / 2;
    y.par_chunks_mut(w * c).enumerate().for_each(|(row, dst)| {
        let (bi, oy) = (row / h, row % h);
        let img = &x[bi * h * w * c..][..h * w * c];
        let line = |ky: usize| {
            (oy + ky)
                .checked_sub(pad)
                .filter(|&iy| iy < h)
                .map(|iy| &img[iy * w * c..][..w * c])
        };
        if k == 7 {
            let lines: [Option<&[f32]>; 7] = std::array::from_fn(line);
            if simd::depthwise7_row(&lines, w, c, &taps, bias, dst) {
                return;
            }
        }
        let rows = DwRows {
            line: &line,
            zeros: &zeros,
            w,
            c,
            pad,
        };
        simd::run(DwRow {
            rows: &rows,
            k,
            taps: &taps,
            bias,
            dst,
        });
    });
    y
}

/// Output pixels per register block of the depthwise kernel (4 measured best; 6 and 8 run out of registers).
const DW_OUT: usize = 4;

/// The input of one output row of the depthwise conv.
struct DwRows<'a> {
    /// Input row `oy + ky - pad` (`[w, c]`) for kernel row `ky`, `None` where it is padding.
    line: &'a dyn Fn(usize) -> Option<&'a [f32]>,
    zeros: &'a [f32],
    w: usize,
    c: usize,
    pad: usize,
}

impl<'a> DwRows<'a> {
    /// Input column `ox + i - pad` of `line` (`c` values), zeros where it is padding.
    #[inline(always)]
    fn col(&self, line: &'a [f32], ox: usize, i: usize) -> &'a [f32] {
        match (ox + i).checked_sub(self.pad).filter(|&ix| ix < self.w) {
            Some(ix) => &line[ix * self.c..][..self.c],
            None => &self.zeros[..self.c],
        }
    }
}

/// One output row of the depthwise conv, compiled for the CPU's widest vectors.
struct DwRow<'a, 'b> {
    rows: &'b DwRows<'a>,
    k: usize,
    taps: &'b [f32],
    bias: &'b [f32],
    dst: &'b mut [f32],
}

impl Kernel for DwRow<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let DwRow {
            rows,
            k,
            taps,
            bias,
            dst,
        } = self;
        match k {
            7 => dw_row::<7>(rows, taps, bias, dst),
            5 => dw_row::<5>(rows, taps, bias, dst),
            3 => dw_row::<3>(rows, taps, bias, dst),
            _ => dw_row_any(rows, k, taps, bias, dst),
        }
    }
}

/// One output row `[w, c]` of the depthwise conv with kernel `K`: blocks of [`DW_OUT`] pixels, then one
/// smaller block for the rest.
#[inline(always)]
fn dw_row<const K: usize>(rows: &DwRows, taps: &[f32], bias: &[f32], dst: &mut [f32]) {
    let (w, c) = (rows.w, rows.c);
    let full = w - w % DW_OUT;
    for (blk, out) in dst[..full * c].chunks_exact_mut(DW_OUT * c).enumerate() {
        dw_block::<K, DW_OUT>(rows, blk * DW_OUT, taps, bias, out);
    }
    let rest = &mut dst[full * c..w * c];
    match w - full {
        0 => {}
        1 => dw_block::<K, 1>(rows, full, taps, bias, rest),
        2 => dw_block::<K, 2>(rows, full, taps, bias, rest),
        3 => dw_block::<K, 3>(rows, full, taps, bias, rest),
        _ => {
            for (i, out) in rest.chunks_exact_mut(c).enumerate() {
                dw_block::<K, 1>(rows, full + i, taps, bias, out);
            }
        }
    }
}

/// Outputs `ox0 .. ox0 + OB` of a row, all channels. Per kernel row, each input column that reaches the
/// block is loaded once and multiplied into every output it feeds, and each tap once for all of them: about
/// one load per multiply-add instead of three loads and a store. All slices are cut to `c` values before the
/// channel loop, so it runs without bounds checks and vectorises.
#[inline(always)]
fn dw_block<const K: usize, const OB: usize>(
    rows: &DwRows,
    ox0: usize,
    taps: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    let c = rows.c;
    let bias = &bias[..c];
    let mut it = out.chunks_exact_mut(c);
    let mut acc: [&mut [f32]; OB] = std::array::from_fn(|_| it.next().unwrap());
    for a in acc.iter_mut() {
        a.copy_from_slice(bias);
    }
    for ky in 0..K {
        let Some(line) = (rows.line)(ky) else {
            continue;
        };
        // Columns ox0 - pad .. ox0 - pad + K + OB - 1: the first K, then the OB - 1 after them.
        let s: [&[f32]; K] = std::array::from_fn(|i| rows.col(line, ox0, i));
        let s2: [&[f32]; OB] = std::array::from_fn(|i| rows.col(line, ox0, K + i - 1));
        let t: [&[f32]; K] = std::array::from_fn(|kx| &taps[(ky * K + kx) * c..][..c]);
        for l in 0..c {
            let mut v: [f32; OB] = std::array::from_fn(|j| acc[j][l]);
            for ix in 0..K + OB - 1 {
                let sv = if ix < K { s[ix][l] } else { s2[ix - K + 1][l] };
                for (j, vj) in v.iter_mut().enumerate() {
                    if ix >= j && ix - j < K {
                        *vj += sv * t[ix - j][l];
                    }
                }
            }
            for (a, vj) in acc.iter_mut().zip(v) {
                a[l] = vj;
            }
        }
    }
}

/// [`dw_row`] for any kernel size: one output pixel, one tap at a time.
#[inline(always)]
fn dw_row_any(rows: &DwRows, k: usize, taps: &[f32], bias: &[f32], dst: &mut [f32]) {
    let c = rows.c;
    for (ox, acc) in dst.chunks_exact_mut(c).enumerate() {
        acc.copy_from_slice(bias);
        for ky in 0..k {
            let Some(line) = (rows.line)(ky) else {
                continue;
            };
            for kx in 0..k {
                let src = rows.col(line, ox, kx);
                let tap = &taps[(ky * k + kx) * c..][..c];
                for ((a, s), t) in acc.iter_mut().zip(src).zip(tap) {
                    *a += s * t;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 7x7 row against its portable reference, the register-blocked [`dw_row`], bitwise: rows at
    /// the top, middle and bottom border (padding lines), widths around both kernels' pixel blocks.
    #[test]
    fn depthwise7_row_matches_portable_row() {
        let mut ran = false;
        for (h, w, c) in [
            (7, 7, 16),
            (9, 11, 32),
            (3, 1, 16),
            (5, 13, 48),
            (4, 29, 32),
        ] {
            let x: Vec<f32> = (0..h * w * c).map(|i| (i as f32 * 0.37).sin()).collect();
            let taps: Vec<f32> = (0..49 * c).map(|i| (i as f32 * 0.11).cos()).collect();
            let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.01).collect();
            let zeros = vec![0.0f32; c];
            for oy in 0..h {
                let line = |ky: usize| {
                    (oy + ky)
                        .checked_sub(3)
                        .filter(|&iy| iy < h)
                        .map(|iy| &x[iy * w * c..][..w * c])
                };
                let lines: [Option<&[f32]>; 7] = std::array::from_fn(line);
                let mut got = vec![f32::NAN; w * c];
                if !simd::depthwise7_row_unforced(&lines, w, c, &taps, &bias, &mut got) {
                    continue;
                }
                ran = true;
                let rows = DwRows {
                    line: &line,
                    zeros: &zeros,
                    w,
                    c,
                    pad: 3,
                };
                let mut want = vec![f32::NAN; w * c];
                dw_row::<7>(&rows, &taps, &bias, &mut want);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "[{h}, {w}, {c}] row {oy}");
            }
        }
        if !ran {
            eprintln!(
                "skipped: this CPU has no AVX-512 7x7 row kernel, so only the portable row runs"
            );
        }
    }

    /// The NEON 7x7 row against the register-blocked [`dw_row`], bitwise, called directly (every aarch64 CPU
    /// has NEON, so this runs whatever `WSTREAM_KERNELS` says): both of its block shapes (16 channels x 4
    /// pixels, 4 x 8), rows at each border, widths below, at and past the blocks and their padding-free
    /// interior.
    #[test]
    #[cfg(target_arch = "aarch64")]
    fn depthwise7_row_neon_matches_portable_row() {
        for (h, w, c) in [
            (7, 7, 16),
            (9, 11, 32),
            (3, 1, 16),
            (5, 13, 48),
            (4, 29, 32),
            (7, 7, 4),
            (5, 19, 8),
            (3, 2, 24),
            (8, 23, 12),
        ] {
            let x: Vec<f32> = (0..h * w * c).map(|i| (i as f32 * 0.37).sin()).collect();
            let taps: Vec<f32> = (0..49 * c).map(|i| (i as f32 * 0.11).cos()).collect();
            let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.01).collect();
            let zeros = vec![0.0f32; c];
            for oy in 0..h {
                let line = |ky: usize| {
                    (oy + ky)
                        .checked_sub(3)
                        .filter(|&iy| iy < h)
                        .map(|iy| &x[iy * w * c..][..w * c])
                };
                let lines: [Option<&[f32]>; 7] = std::array::from_fn(line);
                let mut got = vec![f32::NAN; w * c];
                simd::depthwise7_row_neon(&lines, w, c, &taps, &bias, &mut got);
                let rows = DwRows {
                    line: &line,
                    zeros: &zeros,
                    w,
                    c,
                    pad: 3,
                };
                let mut want = vec![f32::NAN; w * c];
                dw_row::<7>(&rows, &taps, &bias, &mut want);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "[{h}, {w}, {c}] row {oy}");
            }
        }
    }

    #[test]
    fn depthwise_matches_naive_across_shapes_and_kernels() {
        // Widths below, at and above the register block, borders wider than the image, k = 1 .. 9,
        // channel counts that are not multiples of the vector width, batch > 1.
        let cases = [
            (2, 9, 11, 13, 7),
            (1, 7, 7, 24, 7),
            (1, 1, 2, 4, 7),
            (1, 3, 3, 7, 5),
            (2, 6, 5, 3, 3),
            (1, 8, 6, 12, 9),
            (1, 4, 4, 5, 1),
            (1, 14, 14, 16, 7),
            (1, 5, 11, 32, 7),
            (2, 3, 2, 16, 7),
        ];
        for (b, h, w, c, k) in cases {
            let x: Vec<f32> = (0..b * h * w * c)
                .map(|i| (i as f32 * 0.37).sin())
                .collect();
            let wt: Vec<f32> = (0..c * k * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.01).collect();
            let y = depthwise_conv(&x, (b, h, w, c), k, &wt, &bias);
            let pad = (k / 2) as i64;
            for bi in 0..b {
                for oy in 0..h {
                    for ox in 0..w {
                        for ci in 0..c {
                            let mut want = bias[ci];
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = oy as i64 + ky as i64 - pad;
                                    let ix = ox as i64 + kx as i64 - pad;
                                    if (0..h as i64).contains(&iy) && (0..w as i64).contains(&ix) {
                                        let (iy, ix) = (iy as usize, ix as usize);
                                        want += x[((bi * h + iy) * w + ix) * c + ci]
                                            * wt[(ci * k + ky) * k + kx];
                                    }
                                }
                            }
                            let got = y[((bi * h + oy) * w + ox) * c + ci];
                            // Bitwise: the register blocks keep the plain loop's summation order.
                            assert_eq!(got, want, "{:?} at ({bi},{oy},{ox},{ci})", (b, h, w, c, k));
                        }
                    }
                }
            }
        }
    }
}
