//! Linear layers and the MLP: a weight `[out, in]` read in place (f32) or widened a bounded chunk at a time
//! (f16, bf16, int8), multiplied in the orientation the `gemm` crate runs fastest at the shape.

use std::cell::RefCell;

use rayon::prelude::*;

use super::activation::{bias_gelu, bias_gelu_t};
use super::bf16;
use super::gemm::{matmul, matmul_t, MatRef};
use super::packed::{linear_packed, Epilogue};
use super::{bias_or_zeros, rows_per_task, simd};
use crate::weight::{self, Weight};

/// `x [rows, in] × wᵀ + bias`, with `w` a linear layer's `[out, in]` weight read in place.
///
/// With fewer rows than outputs (every transformer layer at batch 1, ConvNeXt's late stages) it computes
/// `yᵀ = w × xᵀ`: the `gemm` crate then streams the large weight as its left-hand operand, 1.4-2.2x faster at
/// ViT-L's fc2 and ConvNeXt-L's stage-3 shapes (measured, x86-v4), writing `yᵀ` densely and transposing it
/// below `TRANSPOSE_BELOW_ROWS` rows, straight into `y` above; with more rows than outputs, `y = x × wᵀ`
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
            bias.is_some(),
        );
        return y;
    }
    matmul(
        &mut y,
        MatRef::rows(x, rows, inp),
        MatRef::transposed(w, out, inp),
        bias.is_some(),
    );
    y
}

/// With fewer rows than this (and than outputs) `linear` computes `yᵀ` densely and transposes it; from here on
/// the GEMM writes `y` directly through a transposed view, which gets faster than the extra pass somewhere
/// between ViT-L's 197 rows and a batch of two's 394 (ViT-L fc1 at batch 8: 28% less time, criterion).
const TRANSPOSE_BELOW_ROWS: usize = 256;

/// `yt = w × xt`, `[out, rows]`, for `w` `[out, in]` and `xt` an `[in, rows]` view (`xᵀ` of an `[rows, in]`
/// input, or an activation kept transposed): the orientation in which the crate streams the large weight as
/// its left-hand operand.
fn weight_times(yt: &mut [f32], w: &[f32], xt: MatRef) {
    let out = w.len() / xt.rows.max(1);
    matmul(yt, MatRef::rows(w, out, xt.rows), xt, false);
}

/// Runs `f` on a `len`-element buffer for `yᵀ`, the calling thread's own, kept from call to call: a fresh
/// one would be zeroed every time, a pass over as much memory as the transpose writes. It holds at most
/// [`TRANSPOSE_BELOW_ROWS`] rows of the widest layer (6 MiB for Swin-L's 6144 outputs). A nested call (a
/// rayon task stolen while the buffer is in use) gets a fresh buffer.
pub(super) fn with_yt<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
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
pub(super) fn transpose_bias(yt: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
    simd::transposed(yt, rows, &bias_or_zeros(bias, yt.len() / rows.max(1)))
}

/// Bound on the f32 rows a non-f32 weight is widened into at a time (f32 weights need none). 16 MiB holds
/// every ViT-L matrix whole; smaller chunks cost more than the widening (4 MiB chunks made int8 ViT-L 33%
/// slower than f32) and a bigger bound did not change the int8 ensemble's peak RSS.
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
    if let Weight::Bf16(wb) = w {
        if let Some(y) = bf16::linear(x, rows, wb, out, bias) {
            return y;
        }
    }
    if let Weight::PackedF32(p) = w {
        let mut y = vec![0.0f32; rows * out];
        linear_packed(
            x,
            rows,
            p,
            out,
            &mut y,
            Epilogue {
                bias,
                ..Epilogue::default()
            },
        );
        return y;
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
/// With fewer rows than both layers' outputs (and `TRANSPOSE_BELOW_ROWS`) the hidden activation stays
/// transposed: fc1's `hᵀ = w1 × xᵀ` gets its bias and GELU row by row and feeds fc2's product as it is. That
/// skips fc1's transpose, and fc2's product runs faster from it (9-13% less time at ViT-L's and ConvNeXt-L's
/// stage-2 fc2): the crate packs its right-hand operand from whole rows. Otherwise it is [`linear_weight`], [`bias_gelu`], [`linear_weight`].
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
    if let (Weight::Bf16(w1), Weight::Bf16(w2)) = (w1, w2) {
        if let Some(y) = bf16::mlp(x, rows, (w1, b1), (w2, b2), out) {
            return y;
        }
    }
    if let Weight::PackedF32(p1) = w1 {
        let mut h = vec![0.0f32; rows * hidden];
        let ep = Epilogue {
            bias: Some(b1),
            gelu: true,
            ..Epilogue::default()
        };
        linear_packed(x, rows, p1, hidden, &mut h, ep);
        return linear_weight(&h, rows, w2, out, b2);
    }
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

/// `residual += scale * (x wᵀ + bias)` (`scale` absent: 1) for `w` `[out, in]` stored packed, the sum
/// added as each output tile leaves the kernel; `false` (nothing done) for a weight in another layout.
pub fn linear_add(
    x: &[f32],
    rows: usize,
    w: &Weight,
    bias: Option<&[f32]>,
    scale: Option<&[f32]>,
    residual: &mut [f32],
) -> bool {
    let Weight::PackedF32(p) = w else {
        return false;
    };
    let out = residual.len() / rows.max(1);
    let ep = Epilogue {
        bias,
        scale,
        accumulate: true,
        ..Epilogue::default()
    };
    linear_packed(x, rows, p, out, residual, ep);
    true
}

/// `residual += scale * (fc2(gelu(fc1(x) + b1)) + b2)` with both layers' epilogues fused (bias and GELU
/// after fc1; bias, scale and the residual add after fc2) when both weights are stored packed; `false`
/// (nothing done) otherwise.
#[allow(clippy::too_many_arguments)]
pub fn mlp_add(
    x: &[f32],
    rows: usize,
    w1: &Weight,
    b1: &[f32],
    w2: &Weight,
    b2: &[f32],
    scale: Option<&[f32]>,
    residual: &mut [f32],
) -> bool {
    let (Weight::PackedF32(p1), Weight::PackedF32(_)) = (w1, w2) else {
        return false;
    };
    let hidden = b1.len();
    let mut h = vec![0.0f32; rows * hidden];
    let ep = Epilogue {
        bias: Some(b1),
        gelu: true,
        ..Epilogue::default()
    };
    linear_packed(x, rows, p1, hidden, &mut h, ep);
    linear_add(&h, rows, w2, Some(b2), scale, residual)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gelu;

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
        // 150 outputs of 32768 inputs widen to 19.7 MB of f32: two chunks (128 rows and 22), in both orders.
        // Few outputs keep the products small: this test also runs under qemu.
        let (inp, out) = (32768, 150);
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
}
