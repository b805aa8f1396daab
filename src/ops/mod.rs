//! Kernels over activations and borrowed weights. Weight-bearing ops take the weight as the `&[f32]` view
//! of the mapping and never copy the big matrices; activations are dense row-major `Vec<f32>`.

mod attention;
pub mod elementwise;
mod gemm;
pub(crate) mod simd;

use std::cell::RefCell;

use rayon::prelude::*;

use crate::weight::{self, Weight};

pub use self::attention::{attention, ScoreBias};
pub use self::gemm::{matmul, matmul_t, MatRef, Threads};
use self::simd::Kernel;

/// Rows handed to one rayon task by the row-wise kernels: enough work to amortise the task.
fn rows_per_task(row_len: usize) -> usize {
    (16384 / row_len.max(1)).max(1)
}

/// `x [rows, in] × wᵀ + bias`, with `w` a linear layer's `[out, in]` weight read in place.
///
/// With fewer rows than outputs (every transformer layer at batch 1, ConvNeXt's late stages) it computes
/// `yᵀ = w × xᵀ`: the `gemm` crate then streams the large weight as its left-hand operand, 1.4-2.2x faster at
/// ViT-L's fc2 and ConvNeXt-L's stage-3 shapes (measured, x86-v4), writing `yᵀ` densely and transposing it
/// below [`TRANSPOSE_BELOW_ROWS`] rows, straight into `y` above; with more rows than outputs, `y = x × wᵀ`
/// directly is faster. The orders agree to rounding, not bitwise: the crate's blocking depends on the shape
/// (a batch matches its images run one by one to 1e-5, tests/exec.rs).
pub fn linear(x: &[f32], rows: usize, w: &[f32], out: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let inp = w.len() / out.max(1);
    assert_eq!(w.len(), out * inp, "weight is not [out, in]");
    assert_eq!(x.len(), rows * inp, "input is not [rows, {inp}]");
    if let Some(b) = bias {
        assert_eq!(b.len(), out, "bias length");
    }
    if rows < out && rows < TRANSPOSE_BELOW_ROWS {
        return with_yt(out * rows, |yt| {
            weight_times(yt, w, MatRef::transposed(x, rows, inp));
            transpose_bias(yt, rows, bias)
        });
    }
    let mut y = vec![0.0f32; rows * out];
    if let Some(b) = bias {
        y.par_chunks_mut(out * rows_per_task(out)).for_each(|c| {
            for row in c.chunks_exact_mut(out) {
                row.copy_from_slice(b);
            }
        });
    }
    if rows < out {
        matmul_t(
            &mut y,
            MatRef::rows(w, out, inp),
            MatRef::transposed(x, rows, inp),
            1.0,
            bias.is_some(),
            Threads::Pool,
        );
        return y;
    }
    matmul(
        &mut y,
        MatRef::rows(x, rows, inp),
        MatRef::transposed(w, out, inp),
        1.0,
        bias.is_some(),
        Threads::Pool,
    );
    y
}

/// With fewer rows than this (and than outputs) `linear` computes `yᵀ` densely and transposes it; from here on
/// the GEMM writes `y` directly through a transposed view, which got faster than the extra pass (criterion,
/// 2 threads: ViT-L fc1 at 197 rows 7.0 vs 7.7-8.9 ms; at 394 rows 13.5 vs 12.7 ms; at 1576 rows 61 vs 44 ms;
/// ConvNeXt-L stage-1 fc1 at 784 rows 4.9 vs 3.2 ms).
const TRANSPOSE_BELOW_ROWS: usize = 256;

/// `yt = w × xt`, `[out, rows]`, for `w` `[out, in]` and `xt` an `[in, rows]` view (`xᵀ` of an `[rows, in]`
/// input, or an activation kept transposed): the orientation in which the crate streams the large weight as
/// its left-hand operand.
fn weight_times(yt: &mut [f32], w: &[f32], xt: MatRef) {
    let out = w.len() / xt.rows.max(1);
    matmul(
        yt,
        MatRef::rows(w, out, xt.rows),
        xt,
        1.0,
        false,
        Threads::Pool,
    );
}

/// Runs `f` on a `len`-element buffer for `yᵀ`, the calling thread's own, kept from call to call: a fresh
/// one would be zeroed every time, a pass over as much memory as the transpose writes. It holds at most
/// [`TRANSPOSE_BELOW_ROWS`] rows of the widest layer (6 MiB for Swin-L's 6144 outputs). A nested call (a
/// rayon task stolen while the buffer is in use) gets a fresh buffer.
fn with_yt<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local!(static YT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) });
    YT.with(|cell| match cell.try_borrow_mut() {
        Ok(mut yt) => {
            if yt.len() < len {
                yt.resize(len, 0.0);
            }
            f(&mut yt[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// `y = ytᵀ + bias` for `yt` `[out, rows]`.
fn transpose_bias(yt: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let out = yt.len() / rows.max(1);
    match bias {
        Some(b) => simd::transposed(yt, rows, b),
        None => simd::transposed(yt, rows, &vec![0.0; out]),
    }
}

/// Bound on the f32 rows a non-f32 weight is widened into at a time (f32 weights need none). 16 MiB holds
/// every ViT-L matrix whole; smaller chunks cost more than the widening (int8 ViT-L: 4 MiB chunks +33% over
/// f32, 16 MiB +14%, measured) and the int8 ensemble's peak RSS did not change.
pub const WIDEN_CHUNK_BYTES: usize = 16 << 20;

/// [`linear`] on a weight in its stored dtype. f32 is read in place; f16, bf16 and int8 rows are widened
/// [`WIDEN_CHUNK_BYTES`] at a time and multiplied chunk by chunk, so no f32 copy of the matrix ever exists
/// and each widened chunk is used from cache by every row of `x` (layer-major batches amortise it).
pub fn linear_weight(
    x: &[f32],
    rows: usize,
    w: &Weight,
    out: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    if let Some(w) = w.as_f32() {
        return linear(x, rows, w, out, bias);
    }
    let inp = w.len() / out.max(1);
    assert_eq!(w.len(), out * inp, "weight is not [out, in]");
    let (chunk, mut buf) = widen_buffer(inp, out);
    if chunk == out {
        w.rows_into(0, inp, &mut buf);
        return linear(x, rows, &buf, out, bias);
    }
    if rows < out {
        return with_yt(out * rows, |yt| {
            widened_times(yt, w, MatRef::transposed(x, rows, inp), &mut buf);
            transpose_bias(yt, rows, bias)
        });
    }
    let mut y = vec![0.0f32; rows * out];
    for o0 in (0..out).step_by(chunk) {
        let n = chunk.min(out - o0);
        let wc = &mut buf[..n * inp];
        w.rows_into(o0, inp, wc);
        let part = linear(x, rows, wc, n, bias.map(|b| &b[o0..o0 + n]));
        y.par_chunks_mut(out)
            .zip(part.par_chunks(n))
            .for_each(|(dst, src)| dst[o0..o0 + n].copy_from_slice(src));
    }
    y
}

/// The buffer an `[out, inp]` weight is widened into: whole rows, at most [`WIDEN_CHUNK_BYTES`] (and at least
/// one row), reported to the scratch accounting. Returns the rows it holds and the buffer.
fn widen_buffer(inp: usize, out: usize) -> (usize, Vec<f32>) {
    let chunk = (WIDEN_CHUNK_BYTES / 4 / inp.max(1)).clamp(1, out.max(1));
    let buf = vec![0.0f32; chunk * inp];
    weight::note_chunk(buf.len() * 4);
    (chunk, buf)
}

/// `yt = w × xt` for a weight to be widened: [`WIDEN_CHUNK_BYTES`] of its rows at a time into `buf`. yᵀ's
/// rows are output channels, so each chunk's product is a contiguous run of them.
fn widened_times(yt: &mut [f32], w: &Weight, xt: MatRef, buf: &mut [f32]) {
    let (inp, rows) = (xt.rows, xt.cols);
    let out = w.len() / inp.max(1);
    let chunk = buf.len() / inp.max(1);
    for (o0, dst) in (0..out).step_by(chunk).zip(yt.chunks_mut(chunk * rows)) {
        let n = chunk.min(out - o0);
        let wc = &mut buf[..n * inp];
        w.rows_into(o0, inp, wc);
        weight_times(dst, wc, xt);
    }
}

/// `yt = w × xt` (`[out, rows]`) for a weight in any stored dtype, f32 read in place.
fn product_t(yt: &mut [f32], w: &Weight, xt: MatRef) {
    if let Some(w) = w.as_f32() {
        return weight_times(yt, w, xt);
    }
    let inp = xt.rows;
    let out = w.len() / inp.max(1);
    let (_, mut buf) = widen_buffer(inp, out);
    widened_times(yt, w, xt, &mut buf);
}

/// A transformer or ConvNeXt MLP on `x` `[rows, in]`: `fc2(gelu(fc1(x) + b1)) + b2`, `[rows, out]`.
///
/// With fewer rows than both layers' outputs (and [`TRANSPOSE_BELOW_ROWS`]) the hidden activation stays
/// transposed: fc1's `hᵀ = w1 × xᵀ` gets its bias and GELU row by row and feeds fc2's product as it is. That
/// skips fc1's transpose (0.3-0.4 ms at ViT-L's and ConvNeXt-L's stage-2 shapes) and fc2's product runs
/// faster from it (ViT-L 6.4 -> 5.8 ms, ConvNeXt-L stage 2 3.8 -> 3.3 ms, 2 threads): the crate packs its
/// right-hand operand from whole rows. Otherwise it is [`linear_weight`], [`bias_gelu`], [`linear_weight`].
#[allow(clippy::too_many_arguments)]
pub fn mlp(
    x: &[f32],
    rows: usize,
    w1: &Weight,
    b1: &[f32],
    w2: &Weight,
    b2: Option<&[f32]>,
    out: usize,
) -> Vec<f32> {
    let hidden = b1.len();
    let inp = w1.len() / hidden.max(1);
    assert_eq!(w1.len(), hidden * inp, "fc1 weight is not [{hidden}, in]");
    assert_eq!(x.len(), rows * inp, "input is not [rows, {inp}]");
    assert_eq!(w2.len(), out * hidden, "fc2 weight is not [out, {hidden}]");
    if rows == 0 || rows >= hidden.min(out).min(TRANSPOSE_BELOW_ROWS) {
        let mut h = linear_weight(x, rows, w1, hidden, None);
        bias_gelu(&mut h, b1);
        return linear_weight(&h, rows, w2, out, b2);
    }
    let mut ht = vec![0.0f32; hidden * rows];
    product_t(&mut ht, w1, MatRef::transposed(x, rows, inp));
    bias_gelu_t(&mut ht, rows, b1);
    with_yt(out * rows, |yt| {
        product_t(yt, w2, MatRef::rows(&ht, hidden, rows));
        transpose_bias(yt, rows, b2)
    })
}

/// `x = gelu(x + bias[o])` along each row `o` of a transposed activation `[bias.len(), rows]`, in place:
/// [`bias_gelu`] for `hᵀ`, the same value for each element.
fn bias_gelu_t(xt: &mut [f32], rows: usize, bias: &[f32]) {
    assert_eq!(
        xt.len(),
        bias.len() * rows,
        "activation is not [{}, {rows}]",
        bias.len()
    );
    struct Rows<'a>(&'a mut [f32], &'a [f32], usize);
    impl Kernel for Rows<'_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            for (row, b) in self.0.chunks_exact_mut(self.2).zip(self.1) {
                for v in row.iter_mut() {
                    *v = gelu1(*v + b);
                }
            }
        }
    }
    let per_task = rows_per_task(rows);
    xt.par_chunks_mut(rows * per_task)
        .zip(bias.par_chunks(per_task))
        .for_each(|(c, b)| simd::run(Rows(c, b, rows)));
}

/// LayerNorm over the last dimension (`dim` values per row), in place.
pub fn layer_norm(x: &mut [f32], dim: usize, weight: &[f32], bias: &[f32], eps: f32) {
    assert!(
        weight.len() == dim && bias.len() == dim,
        "norm parameters must have {dim} values"
    );
    struct Norm<'a> {
        rows: &'a mut [f32],
        weight: &'a [f32],
        bias: &'a [f32],
        eps: f32,
    }
    impl Kernel for Norm<'_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            let dim = self.weight.len();
            for row in self.rows.chunks_exact_mut(dim) {
                let add = |a: f32, b: f32| a + b;
                let mean = simd::reduce(row, 0.0, |v| v, add) / dim as f32;
                let var = simd::reduce(row, 0.0, |v| (v - mean) * (v - mean), add) / dim as f32;
                let inv = 1.0 / (var + self.eps).sqrt();
                for ((v, w), b) in row.iter_mut().zip(self.weight).zip(self.bias) {
                    *v = (*v - mean) * inv * w + b;
                }
            }
        }
    }
    x.par_chunks_mut(dim * rows_per_task(dim)).for_each(|rows| {
        simd::run(Norm {
            rows,
            weight,
            bias,
            eps,
        })
    });
}

/// The error function, to about 1e-7 absolute: the branch-free rational approximation used by Eigen and
/// XLA, so loops over it vectorise. Exact GELU needs it. Plain multiplies and adds, not `mul_add`: without
/// FMA enabled at compile time (the default x86-64 target) `f32::mul_add` is a libm `fmaf` call per step and
/// keeps the loop scalar (about 35% of Swin-L's time, measured).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_600_1e-3;
    p = x2 * p + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_4e-3;
    q = x2 * q + -1.426_474e-2;
    p / q
}

/// Exact (erf) GELU of one value: `x * 0.5 * (1 + erf(x / sqrt 2))`, as torch's default `nn.GELU`.
#[inline(always)]
fn gelu1(x: f32) -> f32 {
    x * 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Exact (erf) GELU, in place.
pub fn gelu(x: &mut [f32]) {
    struct Gelu<'a>(&'a mut [f32]);
    impl Kernel for Gelu<'_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            self.0.iter_mut().for_each(|v| *v = gelu1(*v));
        }
    }
    x.par_chunks_mut(16384).for_each(|c| simd::run(Gelu(c)));
}

/// `x = gelu(x + bias)` over rows of `bias.len()` values, in place: a linear layer's bias and the exact GELU
/// after it in one pass (the GEMM then writes without reading a bias-filled output).
pub fn bias_gelu(x: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    assert!(
        n > 0 && x.len().is_multiple_of(n),
        "{} values are not rows of {n}",
        x.len()
    );
    struct BiasGelu<'a>(&'a mut [f32], &'a [f32]);
    impl Kernel for BiasGelu<'_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            for row in self.0.chunks_exact_mut(self.1.len()) {
                for (v, b) in row.iter_mut().zip(self.1) {
                    *v = gelu1(*v + b);
                }
            }
        }
    }
    x.par_chunks_mut(n * rows_per_task(n))
        .for_each(|c| simd::run(BiasGelu(c, bias)));
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
/// im2col + GEMM on the conv weight `[out, c, k, k]` read in place (or widened in chunks, see
/// [`linear_weight`]). Input `[b, c, h, w]` (or NHWC), output
/// NHWC `[b, h/k, w/k, out]`. Rows and columns that do not fill a whole patch are dropped, as torch does.
#[allow(clippy::too_many_arguments)]
pub fn patch_conv(
    x: &[f32],
    layout: Layout,
    (b, c, h, w): (usize, usize, usize, usize),
    k: usize,
    weight: &Weight,
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
    linear_weight(&cols, b * hp * wp, weight, out, bias)
}

/// Depthwise `k x k` convolution, stride 1, zero padding `k / 2`, on NHWC input `[b, h, w, c]` with the
/// weight `[c, 1, k, k]`. Channels are innermost so the loops vectorise over them; rayon splits rows. For
/// k = 7 and whole vectors of channels on an AVX-512 CPU, each output row goes to [`simd::depthwise7_row`]
/// (ConvNeXt-L's 7x7: `[1, 56, 56, 192]` 1.35 -> 0.92 ms on two cores, `[1, 7, 7, 1536]` 0.39 -> 0.21 ms;
/// 1.4-1.7x on one core at stages 0-1). Otherwise, for k = 3, 5, 7, in register blocks of [`DW_OUT`] pixels
/// ([`dw_block`]), half the time of one-tap-at-a-time accumulation. The sums run in the same order either way.
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
    fn gelu_matches_exact_gelu() {
        let xs: Vec<f32> = (-800..=800).map(|i| i as f32 / 100.0).collect();
        let mut y = xs.clone();
        gelu(&mut y);
        for (x, y) in xs.iter().zip(&y) {
            let x64 = *x as f64;
            let want = x64 * 0.5 * (1.0 + libm::erf(x64 / std::f64::consts::SQRT_2));
            assert!(
                (*y as f64 - want).abs() < 2e-6,
                "gelu({x}) = {y} want {want}"
            );
        }
    }

    #[test]
    fn linear_matches_naive_in_every_order() {
        // yT and the transpose pass; y = x wT; 300 rows straight into y through a transposed view.
        for (rows, inp, out) in [
            (3, 5, 7),
            (7, 5, 3),
            (17, 4, 40),
            (40, 4, 17),
            (300, 9, 320),
        ] {
            let x: Vec<f32> = (0..rows * inp).map(|i| (i as f32 * 0.37).sin()).collect();
            let w: Vec<f32> = (0..out * inp).map(|i| (i as f32 * 0.11).cos()).collect();
            let b: Vec<f32> = (0..out).map(|i| i as f32 * 0.1).collect();
            let y = linear(&x, rows, &w, out, Some(&b));
            let plain = linear(&x, rows, &w, out, None);
            for r in 0..rows {
                for o in 0..out {
                    let want: f32 = (0..inp).map(|k| x[r * inp + k] * w[o * inp + k]).sum();
                    assert!(
                        (plain[r * out + o] - want).abs() < 1e-5,
                        "[{rows},{inp}]x[{inp},{out}] at ({r},{o})"
                    );
                    assert!((y[r * out + o] - want - b[o]).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn linear_weight_widens_in_chunks_like_f32() {
        use std::borrow::Cow;
        // 1100 outputs of 4096 inputs widen to 17.6 MB of f32: two chunks, in both orders.
        let (inp, out) = (4096, 1100);
        let q: Vec<i8> = (0..out * inp).map(|i| (i % 255) as i8).collect();
        let scale: Vec<f32> = (0..out).map(|o| 1e-3 * (1 + o % 7) as f32).collect();
        let w = Weight::I8 {
            q: Cow::Borrowed(&q),
            scale: Cow::Borrowed(&scale),
        };
        assert!(out * inp * 4 > WIDEN_CHUNK_BYTES);
        let wide = w.to_f32(inp);
        let b: Vec<f32> = (0..out).map(|o| o as f32 * 0.01).collect();
        for rows in [5, out + 3] {
            let x: Vec<f32> = (0..rows * inp).map(|i| (i as f32 * 0.37).sin()).collect();
            let got = linear_weight(&x, rows, &w, out, Some(&b));
            let want = linear(&x, rows, &wide, out, Some(&b));
            let d = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(d < 1e-3, "{rows} rows: max diff {d}");
        }
    }

    /// Both paths (hᵀ kept transposed below the row bound, the plain layers above it), f32 read in place and
    /// f16 widened, fc2 with and without a bias: the layers one by one, to float rounding (the products'
    /// blocking differs between the orders).
    #[test]
    fn mlp_matches_its_layers() {
        use std::borrow::Cow;
        let (inp, hidden, out) = (48, 160, 40);
        let w1: Vec<f32> = (0..hidden * inp)
            .map(|i| (i as f32 * 0.37).sin() * 0.2)
            .collect();
        let w2: Vec<f32> = (0..out * hidden)
            .map(|i| (i as f32 * 0.11).cos() * 0.2)
            .collect();
        let b1: Vec<f32> = (0..hidden).map(|i| i as f32 * 0.01 - 0.5).collect();
        let b2: Vec<f32> = (0..out).map(|i| 0.3 - i as f32 * 0.02).collect();
        let h16 = |w: &[f32]| {
            w.iter()
                .map(|&v| half::f16::from_f32(v))
                .collect::<Vec<_>>()
        };
        let (w1h, w2h) = (h16(&w1), h16(&w2));
        let weights = [
            (
                Weight::F32(Cow::Borrowed(&w1)),
                Weight::F32(Cow::Borrowed(&w2)),
            ),
            (
                Weight::F16(Cow::Borrowed(&w1h)),
                Weight::F16(Cow::Borrowed(&w2h)),
            ),
        ];
        for rows in [1, 7, 39, 300] {
            let x: Vec<f32> = (0..rows * inp).map(|i| (i as f32 * 0.53).sin()).collect();
            for (wa, wb) in &weights {
                for bias2 in [Some(&b2[..]), None] {
                    let got = mlp(&x, rows, wa, &b1, wb, bias2, out);
                    let mut h = linear(&x, rows, &wa.to_f32(inp), hidden, Some(&b1));
                    gelu(&mut h);
                    let want = linear(&h, rows, &wb.to_f32(hidden), out, bias2);
                    assert_eq!(got.len(), rows * out);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() < 1e-5 * (1.0 + w.abs()),
                            "{rows} rows at {i}: {g} vs {w}"
                        );
                    }
                }
            }
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
    fn bias_gelu_is_gelu_of_the_sum() {
        let bias = [0.5f32, -1.0, 2.0];
        let x: Vec<f32> = (0..12).map(|i| (i as f32 * 0.9).sin() * 3.0).collect();
        let mut want: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + bias[i % 3]).collect();
        gelu(&mut want);
        let mut got = x.clone();
        bias_gelu(&mut got, &bias);
        assert_eq!(got, want);
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
