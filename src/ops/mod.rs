//! Kernels over activations and borrowed weights. Weight-bearing ops take the weight as the `&[f32]` view
//! of the mapping and never copy the big matrices; activations are dense row-major `Vec<f32>`.

mod gemm;

use rayon::prelude::*;

pub use self::gemm::{matmul, MatRef, Threads};

/// Rows handed to one rayon task by the row-wise kernels: enough work to amortise the task.
fn rows_per_task(row_len: usize) -> usize {
    (16384 / row_len.max(1)).max(1)
}

/// `x [rows, in] × wᵀ + bias`, with `w` a linear layer's `[out, in]` weight read in place (transposed view).
pub fn linear(x: &[f32], rows: usize, w: &[f32], out: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let inp = w.len() / out.max(1);
    assert_eq!(w.len(), out * inp, "weight is not [out, in]");
    let mut y = vec![0.0f32; rows * out];
    let accumulate = bias.is_some();
    if let Some(b) = bias {
        assert_eq!(b.len(), out, "bias length");
        y.par_chunks_mut(out * rows_per_task(out)).for_each(|c| {
            for row in c.chunks_exact_mut(out) {
                row.copy_from_slice(b);
            }
        });
    }
    matmul(
        &mut y,
        MatRef::rows(x, rows, inp),
        MatRef::transposed(w, out, inp),
        1.0,
        accumulate,
        Threads::Pool,
    );
    y
}

/// LayerNorm over the last dimension (`dim` values per row), in place.
pub fn layer_norm(x: &mut [f32], dim: usize, weight: &[f32], bias: &[f32], eps: f32) {
    assert!(
        weight.len() == dim && bias.len() == dim,
        "norm parameters must have {dim} values"
    );
    x.par_chunks_mut(dim * rows_per_task(dim)).for_each(|c| {
        for row in c.chunks_exact_mut(dim) {
            let mean = row.iter().sum::<f32>() / dim as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
                *v = (*v - mean) * inv * w + b;
            }
        }
    });
}

/// The error function, to about 1e-7 absolute: the branch-free rational approximation used by Eigen and
/// XLA, so loops over it vectorise. Exact GELU needs it.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2.mul_add(-2.726_142_3e-10, 2.770_681_4e-8);
    p = x2.mul_add(p, -2.101_024e-6);
    p = x2.mul_add(p, -5.692_506_4e-5);
    p = x2.mul_add(p, -7.349_906_3e-4);
    p = x2.mul_add(p, -2.954_600_1e-3);
    p = x2.mul_add(p, -1.609_603_3e-2);
    p *= x;
    let mut q = x2.mul_add(-1.456_607_2e-5, -2.133_740_6e-4);
    q = x2.mul_add(q, -1.682_827e-3);
    q = x2.mul_add(q, -7.373_329_4e-3);
    q = x2.mul_add(q, -1.426_474e-2);
    p / q
}

/// Exact (erf) GELU, in place: `x * 0.5 * (1 + erf(x / sqrt 2))`, as torch's default `nn.GELU`.
pub fn gelu(x: &mut [f32]) {
    x.par_chunks_mut(16384).for_each(|c| {
        for v in c {
            *v = *v * 0.5 * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    });
}

/// Softmax over each row of `n` values, in place.
pub fn softmax_rows(x: &mut [f32], n: usize) {
    for row in x.chunks_exact_mut(n) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// Adds to one `[tokens, tokens]` score matrix, given (group, head).
pub type ScoreBias<'a> = dyn Fn(usize, usize, &mut [f32]) + Sync + 'a;

/// Multi-head self-attention over `groups` independent sequences of `tokens` tokens (batch items, or Swin
/// windows), reading q, k, v in place from a fused qkv projection `[groups * tokens, 3 * heads * head_dim]`
/// laid out (3, heads, head_dim) per token as timm's `qkv` Linear produces. `bias(group, head, scores)` may
/// add to each `[tokens, tokens]` score matrix before the softmax (Swin's relative position bias and mask).
/// Returns `[groups * tokens, heads * head_dim]`, heads concatenated as timm's `transpose(1, 2).reshape`.
pub fn attention(
    qkv: &[f32],
    groups: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    bias: Option<&ScoreBias<'_>>,
) -> Vec<f32> {
    let c = heads * head_dim;
    assert_eq!(qkv.len(), groups * tokens * 3 * c, "qkv size");
    let scale = (head_dim as f32).powf(-0.5);
    let per_head: Vec<Vec<f32>> = (0..groups * heads)
        .into_par_iter()
        .map(|gh| {
            let (g, h) = (gh / heads, gh % heads);
            let base = &qkv[g * tokens * 3 * c..(g + 1) * tokens * 3 * c];
            let view = |which: usize| MatRef {
                data: &base[which * c + h * head_dim..],
                rows: tokens,
                cols: head_dim,
                row_stride: 3 * c,
                col_stride: 1,
            };
            let (q, k, v) = (view(0), view(1), view(2));
            let kt = MatRef {
                data: k.data,
                rows: head_dim,
                cols: tokens,
                row_stride: 1,
                col_stride: 3 * c,
            };
            let mut scores = vec![0.0f32; tokens * tokens];
            matmul(&mut scores, q, kt, scale, false, Threads::Single);
            if let Some(add) = bias {
                add(g, h, &mut scores);
            }
            softmax_rows(&mut scores, tokens);
            let mut o = vec![0.0f32; tokens * head_dim];
            matmul(
                &mut o,
                MatRef::rows(&scores, tokens, tokens),
                v,
                1.0,
                false,
                Threads::Single,
            );
            o
        })
        .collect();
    let mut out = vec![0.0f32; groups * tokens * c];
    out.par_chunks_mut(tokens * c)
        .enumerate()
        .for_each(|(g, dst)| {
            for h in 0..heads {
                let src = &per_head[g * heads + h];
                for t in 0..tokens {
                    dst[t * c + h * head_dim..t * c + (h + 1) * head_dim]
                        .copy_from_slice(&src[t * head_dim..(t + 1) * head_dim]);
                }
            }
        });
    out
}

/// Memory layout of an image-like activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[batch, channels, height, width]`, as images arrive.
    Nchw,
    /// `[batch, height, width, channels]`, as the models keep features.
    Nhwc,
}

/// A non-overlapping `k x k`, stride-`k` convolution (patch embedding, ConvNeXt stem and downsample) as
/// im2col + GEMM on the conv weight `[out, c, k, k]` read in place. Input `[b, c, h, w]` (or NHWC), output
/// NHWC `[b, h/k, w/k, out]`. Rows and columns that do not fill a whole patch are dropped, as torch does.
#[allow(clippy::too_many_arguments)]
pub fn patch_conv(
    x: &[f32],
    layout: Layout,
    (b, c, h, w): (usize, usize, usize, usize),
    k: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
    out: usize,
) -> Vec<f32> {
    assert_eq!(x.len(), b * c * h * w, "input size");
    assert_eq!(
        weight.len(),
        out * c * k * k,
        "conv weight is not [out, c, k, k]"
    );
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
    linear(&cols, b * hp * wp, weight, out, bias)
}

/// Depthwise `k x k` convolution, stride 1, zero padding `k / 2`, on NHWC input `[b, h, w, c]` with the
/// weight `[c, 1, k, k]`. Channels are innermost so the loop vectorises over them; rayon splits rows.
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
    // Tap-major copy of the (small) weight, [k*k, c], so the inner loop reads it contiguously.
    let mut taps = vec![0.0f32; k * k * c];
    for ci in 0..c {
        for t in 0..k * k {
            taps[t * c + ci] = weight[ci * k * k + t];
        }
    }
    let pad = k / 2;
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(w * c).enumerate().for_each(|(row, dst)| {
        let (bi, oy) = (row / h, row % h);
        for ox in 0..w {
            let acc = &mut dst[ox * c..(ox + 1) * c];
            acc.copy_from_slice(bias);
            for ky in 0..k {
                let Some(iy) = (oy + ky).checked_sub(pad).filter(|&v| v < h) else {
                    continue;
                };
                for kx in 0..k {
                    let Some(ix) = (ox + kx).checked_sub(pad).filter(|&v| v < w) else {
                        continue;
                    };
                    let src = &x[((bi * h + iy) * w + ix) * c..][..c];
                    let tap = &taps[(ky * k + kx) * c..][..c];
                    for ((a, s), t) in acc.iter_mut().zip(src).zip(tap) {
                        *a += s * t;
                    }
                }
            }
        }
    });
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_accurate() {
        for i in -600..=600 {
            let x = i as f32 / 100.0;
            let want = libm::erf(x as f64) as f32;
            assert!(
                (erf(x) - want).abs() < 5e-7,
                "erf({x}) = {} want {want}",
                erf(x)
            );
        }
    }

    #[test]
    fn layer_norm_normalises() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0];
        layer_norm(&mut x, 4, &[1.0; 4], &[0.5; 4], 1e-6);
        let want = [-1.341_640_8, -0.447_213_6, 0.447_213_6, 1.341_640_8];
        for (v, w) in x[..4].iter().zip(want) {
            assert!((v - 0.5 - w).abs() < 1e-5);
        }
        assert!(x[4..].iter().all(|v| (v - 0.5).abs() < 1e-6));
    }

    #[test]
    fn depthwise_matches_naive() {
        let (b, h, w, c, k) = (1, 5, 4, 3, 3);
        let x: Vec<f32> = (0..b * h * w * c).map(|i| (i as f32 * 0.7).sin()).collect();
        let wt: Vec<f32> = (0..c * k * k).map(|i| (i as f32 * 0.3).cos()).collect();
        let bias = [0.1, 0.2, 0.3];
        let y = depthwise_conv(&x, (b, h, w, c), k, &wt, &bias);
        for oy in 0..h {
            for ox in 0..w {
                for ci in 0..c {
                    let mut want = bias[ci];
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (oy as i64 + ky as i64 - 1, ox as i64 + kx as i64 - 1);
                            if iy >= 0 && iy < h as i64 && ix >= 0 && ix < w as i64 {
                                want += x[((iy as usize) * w + ix as usize) * c + ci]
                                    * wt[ci * k * k + ky * k + kx];
                            }
                        }
                    }
                    assert!((y[(oy * w + ox) * c + ci] - want).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn attention_matches_naive_single_head() {
        let (t, d) = (3, 2);
        let qkv: Vec<f32> = (0..t * 3 * d).map(|i| (i as f32 * 0.5).sin()).collect();
        let out = attention(&qkv, 1, t, 1, d, None);
        let row = |i: usize, which: usize| &qkv[i * 3 * d + which * d..i * 3 * d + (which + 1) * d];
        for i in 0..t {
            let s: Vec<f32> = (0..t)
                .map(|j| {
                    row(i, 0)
                        .iter()
                        .zip(row(j, 1))
                        .map(|(a, b)| a * b)
                        .sum::<f32>()
                        / (d as f32).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f32::MIN, f32::max);
            let e: Vec<f32> = s.iter().map(|v| (v - m).exp()).collect();
            let z: f32 = e.iter().sum();
            for dd in 0..d {
                let want: f32 = (0..t).map(|j| e[j] / z * row(j, 2)[dd]).sum();
                assert!((out[i * d + dd] - want).abs() < 1e-5);
            }
        }
    }
}
