//! Int8 weights computed in int8 (W8A8): each activation row is quantized on the fly to u8 with its own
//! scale and zero point (asymmetric, per token), multiplied with the file's per-output-channel int8 weights
//! into i32 (`vpdpbusd` on AVX512-VNNI, else AVX2's exact i16 `vpmaddwd`, `simd/x86_int8.rs`; SDOT on
//! aarch64 with `dotprod`,
//! `simd/neon_int8.rs`), and turned back into f32 as each tile of
//! outputs leaves the kernel. LayerNorm, softmax and GELU stay f32 around it.
//!
//! With `x[r, k] ≈ sx[r] (u[r, k] - zx[r])` and `w[o, k] = sw[o] q[o, k]`:
//! `y[r, o] = sx[r] sw[o] (Σ_k u[r, k] q[o, k] - zx[r] Σ_k q[o, k])`. The second sum is the weight's column
//! sum (per output channel), which `convert --dtype int8` stores beside the weight (`<name>_colsum`, I32
//! `[out]`); for files written before it, [`colsums`] computes it at each call (a pass over the int8 weight,
//! a small fraction of the product's work).
//!
//! The weights are read in the file's own `[out, in]` layout, straight from the mapping: the kernel
//! broadcasts four consecutive int8 weights of one output channel against 16 rows' four activations, so
//! it is the *activations* (quantized anyway, hence copied anyway) that are packed: `[rows / 16][in / 4][16
//! rows][4 bytes]`, one 64-byte vector per group of four inputs. No weight is repacked.

use std::borrow::Cow;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::activation::gelu1;
use super::bias_or_zeros;
use super::simd::{self, Kernel};

/// Rows per packed activation vector (one 512-bit register of i32 lanes).
const LANES: usize = 16;

/// Output channels per rayon task of a product: enough to amortise the task and its accumulator buffer,
/// small enough that the buffer stays in L2 for 3136 rows (Swin's and ConvNeXt's first stage).
const OUT_PER_TASK: usize = 16;

/// An int8 weight as stored: `q` `[out, in]`, per-output-channel `scale`, and the column sums of `q`.
pub struct Int8Weight<'a> {
    pub q: &'a [i8],
    pub scale: &'a [f32],
    pub colsum: Cow<'a, [i32]>,
}

impl<'a> Int8Weight<'a> {
    /// The weight with its stored column sums, or with sums computed now when the file has none.
    pub fn new(q: &'a [i8], scale: &'a [f32], colsum: Option<Cow<'a, [i32]>>) -> Self {
        let inp = q.len() / scale.len().max(1);
        let colsum = colsum.unwrap_or_else(|| Cow::Owned(colsums(q, inp)));
        assert_eq!(colsum.len(), scale.len(), "column sums vs outputs");
        Int8Weight { q, scale, colsum }
    }

    fn out(&self) -> usize {
        self.scale.len()
    }
}

/// `Σ_k q[o, k]` for each output channel `o` of an `[out, inp]` int8 matrix.
pub fn colsums(q: &[i8], inp: usize) -> Vec<i32> {
    q.par_chunks(inp.max(1))
        .map(|row| row.iter().map(|&v| v as i32).sum())
        .collect()
}

/// Whether W8A8 runs here for a layer of `inp` inputs: the CPU has AVX512-VNNI, AVX2 or aarch64's `dotprod`
/// (and `WSTREAM_KERNELS=portable` is not set), and the inputs come in whole groups of four (every timm
/// layer's do). Otherwise int8 weights take the widening path.
pub fn available(inp: usize) -> bool {
    native() && inp.is_multiple_of(4) && inp > 0
}

fn native() -> bool {
    static NATIVE: OnceLock<bool> = OnceLock::new();
    *NATIVE.get_or_init(|| {
        if simd::portable_forced() {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            simd::x86_int8::detected() || simd::x86_int8::avx2_detected()
        }
        #[cfg(target_arch = "aarch64")]
        {
            simd::neon_int8::detected()
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        false
    })
}

/// Whether the AVX-512 kernels run: the VNNI product, and the quantizers and the scaling-back transpose
/// written for its 16-row vectors. With AVX2 alone, the product is `dot_avx2`, the quantizers their AVX2
/// forms and the scaling-back transpose the portable loop, compiled for AVX2.
#[cfg(target_arch = "x86_64")]
fn vnni() -> bool {
    native() && simd::x86_int8::detected()
}

/// Activation rows quantized to u8 and packed for the kernel (see the module doc).
pub struct Quantized {
    /// `[rb][kq][16][4]` u8, rows past `rows` zero.
    data: Vec<u8>,
    /// Per row (padded to `16 rb`): the zero point and the scale.
    zero: Vec<i32>,
    scale: Vec<f32>,
    rows: usize,
    /// Groups of four inputs.
    kq: usize,
    /// Vectors of 16 rows.
    rb: usize,
}

impl Quantized {
    fn empty(rows: usize, inp: usize) -> Self {
        assert!(
            inp.is_multiple_of(4),
            "int8 activations need inputs in groups of 4, not {inp}"
        );
        let (kq, rb) = (inp / 4, rows.div_ceil(LANES));
        // Reported with the widening scratch: the W8A8 path's buffer besides the activations.
        crate::weight::note_chunk(rb * kq * 64);
        Quantized {
            data: vec![0; rb * kq * 64],
            zero: vec![0; rb * LANES],
            scale: vec![0.0; rb * LANES],
            rows,
            kq,
            rb,
        }
    }
}

/// A row's scale and zero point: the range `[min(x, 0), max(x, 0)]` in 255 steps, so zero is exact. A
/// row holding a NaN or infinity gets a NaN scale, which makes its outputs NaN as the f32 product would.
#[inline(always)]
pub(crate) fn range_params(lo: f32, hi: f32, finite: bool) -> (f32, f32, i32) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = (hi - lo) / 255.0;
    if !finite || !scale.is_finite() {
        return (f32::NAN, 0.0, 0);
    }
    if scale == 0.0 {
        return (1.0, 0.0, 0);
    }
    let zero = (-lo / scale).round_ties_even().clamp(0.0, 255.0);
    (scale, 1.0 / scale, zero as i32)
}

#[inline(always)]
fn quant(v: f32, inv: f32, zero: i32) -> u8 {
    ((v * inv).round_ties_even() + zero as f32).clamp(0.0, 255.0) as u8
}

/// Quantizes `x` `[rows, inp]` row by row.
pub fn quantize(x: &[f32], rows: usize, inp: usize) -> Quantized {
    quantize_with(x, rows, inp, native())
}

/// [`quantize`], with the AVX-512 or AVX2 loop when `hand` (and the CPU has one), else the portable one.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn quantize_with(x: &[f32], rows: usize, inp: usize, hand: bool) -> Quantized {
    assert_eq!(x.len(), rows * inp, "input is not [rows, {inp}]");
    let mut a = Quantized::empty(rows, inp);
    let kq = a.kq;
    struct Block<'a> {
        x: &'a [f32],
        inp: usize,
        data: &'a mut [u8],
        zero: &'a mut [i32],
        scale: &'a mut [f32],
        row: &'a mut Vec<u8>,
    }
    impl Kernel for Block<'_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            let Block {
                x,
                inp,
                data,
                zero,
                scale,
                row,
            } = self;
            for (l, xr) in x.chunks_exact(inp).enumerate() {
                let lo = simd::reduce(xr, f32::INFINITY, |v| v, f32::min);
                let hi = simd::reduce(xr, f32::NEG_INFINITY, |v| v, f32::max);
                let finite = simd::reduce(xr, 0.0, |v| v * 0.0, |a, b| a + b) == 0.0;
                let (s, inv, z) = range_params(lo, hi, finite);
                scale[l] = s;
                zero[l] = z;
                row.clear();
                row.extend(xr.iter().map(|&v| quant(v, inv, z)));
                for (q, four) in row.chunks_exact(4).enumerate() {
                    data[q * 64 + l * 4..q * 64 + l * 4 + 4].copy_from_slice(four);
                }
            }
        }
    }
    a.data
        .par_chunks_mut(kq * 64)
        .zip(a.zero.par_chunks_mut(LANES))
        .zip(a.scale.par_chunks_mut(LANES))
        .zip(x.par_chunks(LANES * inp))
        .for_each_init(Vec::new, |row, (((data, zero), scale), x)| {
            #[cfg(target_arch = "x86_64")]
            if hand && vnni() {
                simd::x86_int8::quantize_rows(x, inp, data, zero, scale);
                return;
            } else if hand && simd::x86_int8::avx2_detected() {
                simd::x86_int8::quantize_rows_avx2(x, inp, data, zero, scale);
                return;
            }
            simd::run(Block {
                x,
                inp,
                data,
                zero,
                scale,
                row,
            })
        });
    a
}

/// Quantizes the rows of `x` given transposed, `xt` `[inp, rows]` (a hidden activation kept as `hᵀ`): the
/// same values as [`quantize`] of `x`.
pub fn quantize_t(xt: &[f32], inp: usize, rows: usize) -> Quantized {
    quantize_t_with(xt, inp, rows, native())
}

/// [`quantize_t`], with the AVX-512 or AVX2 loop when `hand` (and the CPU has one), else the portable one.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn quantize_t_with(xt: &[f32], inp: usize, rows: usize, hand: bool) -> Quantized {
    assert_eq!(xt.len(), rows * inp, "activation is not [{inp}, rows]");
    let mut a = Quantized::empty(rows, inp);
    let kq = a.kq;
    struct Block<'a> {
        xt: &'a [f32],
        rows: usize,
        r0: usize,
        data: &'a mut [u8],
        zero: &'a mut [i32],
        scale: &'a mut [f32],
    }
    impl Kernel for Block<'_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            let Block {
                xt,
                rows,
                r0,
                data,
                zero,
                scale,
            } = self;
            let n = LANES.min(rows - r0);
            let (mut lo, mut hi, mut fin) = (
                [f32::INFINITY; LANES],
                [f32::NEG_INFINITY; LANES],
                [0.0f32; LANES],
            );
            for col in xt.chunks_exact(rows) {
                for l in 0..n {
                    let v = col[r0 + l];
                    lo[l] = lo[l].min(v);
                    hi[l] = hi[l].max(v);
                    fin[l] += v * 0.0;
                }
            }
            let mut inv = [0.0f32; LANES];
            for l in 0..n {
                let (s, i, z) = range_params(lo[l], hi[l], fin[l] == 0.0);
                (scale[l], inv[l], zero[l]) = (s, i, z);
            }
            for (q, four) in data.chunks_exact_mut(64).enumerate() {
                for j in 0..4 {
                    let col = &xt[(4 * q + j) * rows + r0..][..n];
                    for l in 0..n {
                        four[l * 4 + j] = quant(col[l], inv[l], zero[l]);
                    }
                }
            }
        }
    }
    a.data
        .par_chunks_mut(kq * 64)
        .zip(a.zero.par_chunks_mut(LANES))
        .zip(a.scale.par_chunks_mut(LANES))
        .enumerate()
        .for_each(|(v, ((data, zero), scale))| {
            #[cfg(target_arch = "x86_64")]
            if hand && vnni() {
                simd::x86_int8::quantize_cols(xt, rows, v * LANES, data, zero, scale);
                return;
            } else if hand && simd::x86_int8::avx2_detected() {
                simd::x86_int8::quantize_cols_avx2(xt, rows, v * LANES, data, zero, scale);
                return;
            }
            simd::run(Block {
                xt,
                rows,
                r0: v * LANES,
                data,
                zero,
                scale,
            })
        });
    a
}

/// `acc[o * ld + r] = Σ_k u[r, k] q[o, k]` for the `w.len() / (4 kq)` output channels in `w` and all
/// `16 rb` (padded) rows of `a`: the VNNI or SDOT kernel where the CPU has it, else [`dot_portable`].
fn dot(w: &[i8], a: &Quantized, acc: &mut [i32], ld: usize) {
    let nout = w.len() / (4 * a.kq).max(1);
    assert!(
        w.len() == nout * 4 * a.kq && ld >= LANES * a.rb,
        "dot shapes"
    );
    assert!(
        nout == 0 || acc.len() >= (nout - 1) * ld + LANES * a.rb,
        "dot output"
    );
    #[cfg(target_arch = "x86_64")]
    if vnni() {
        simd::x86_int8::dot(w, nout, a.kq, &a.data, a.rb, acc, ld);
        return;
    } else if native() {
        simd::x86_int8::dot_avx2(w, nout, a.kq, &a.data, a.rb, acc, ld);
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if native() {
        simd::neon_int8::dot(w, nout, a.kq, &a.data, a.rb, acc, ld);
        return;
    }
    dot_portable(w, a, acc, ld);
}

/// [`dot`] one product at a time: the reference for the VNNI and SDOT kernels.
fn dot_portable(w: &[i8], a: &Quantized, acc: &mut [i32], ld: usize) {
    let inp = 4 * a.kq;
    for (o, wr) in w.chunks_exact(inp.max(1)).enumerate() {
        for r in 0..LANES * a.rb {
            let (v, l) = (r / LANES, r % LANES);
            let mut s = 0i32;
            for (k, &wk) in wr.iter().enumerate() {
                let u = a.data[(v * a.kq + k / 4) * 64 + l * 4 + k % 4];
                s += u as i32 * wk as i32;
            }
            acc[o * ld + r] = s;
        }
    }
}

/// `yt = (x wᵀ)ᵀ` `[out, rows]` in f32, from the quantized rows of `x`: tasks of [`OUT_PER_TASK`] output
/// channels, each multiplied into i32 and scaled back while its tile is in cache.
pub fn product_t(a: &Quantized, w: &Int8Weight, yt: &mut [f32]) {
    product_t_gelu(a, w, yt, None)
}

/// [`product_t`], then `gelu(y + bias[o])` on each output channel `o` when `bias` is given, applied while
/// the tile is in cache (the separate bias-and-GELU pass over `yT` cost a read and a write of it): the
/// same f32 operations in the same order, so the same values.
fn product_t_gelu(a: &Quantized, w: &Int8Weight, yt: &mut [f32], bias: Option<&[f32]>) {
    let (out, rows) = (w.out(), a.rows);
    assert_eq!(yt.len(), out * rows, "yT is not [{out}, {rows}]");
    if rows == 0 || out == 0 {
        return;
    }
    yt.par_chunks_mut(OUT_PER_TASK * rows)
        .enumerate()
        .for_each(|(t, dst)| product_part(a, w, t * OUT_PER_TASK, dst, bias));
}

/// Output channels `o0..o0 + dst.len() / rows` of `(x wᵀ)ᵀ` into `dst` (`[channels, rows]`), each turned
/// into `gelu(y + bias[o])` when `bias` is given: the i32 sums go to this thread's scratch, which the
/// epilogue scales back while it is in cache.
fn product_part(a: &Quantized, w: &Int8Weight, o0: usize, dst: &mut [f32], bias: Option<&[f32]>) {
    let rows = a.rows;
    let n = dst.len() / rows.max(1);
    assert!(
        dst.len() == n * rows,
        "{} values are not rows of {rows}",
        dst.len()
    );
    struct Epilogue<'a> {
        acc: &'a [i32],
        ld: usize,
        colsum: &'a [i32],
        sw: &'a [f32],
        zero: &'a [i32],
        sx: &'a [f32],
        bias: Option<&'a [f32]>,
        dst: &'a mut [f32],
    }
    impl Kernel for Epilogue<'_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            let rows = self.dst.len() / self.sw.len();
            for (o, d) in self.dst.chunks_exact_mut(rows).enumerate() {
                let (cs, sw) = (self.colsum[o], self.sw[o]);
                let acc = &self.acc[o * self.ld..][..rows];
                for (((d, &s), &z), &sx) in d.iter_mut().zip(acc).zip(self.zero).zip(self.sx) {
                    *d = (s - z * cs) as f32 * (sx * sw);
                }
                if let Some(b) = self.bias {
                    d.iter_mut().for_each(|v| *v = gelu1(*v + b[o]));
                }
            }
        }
    }
    with_sums(a, w, o0, n, |acc, ld| {
        simd::run(Epilogue {
            acc,
            ld,
            colsum: &w.colsum[o0..o0 + n],
            sw: &w.scale[o0..o0 + n],
            zero: &a.zero,
            sx: &a.scale,
            bias: bias.map(|b| &b[o0..o0 + n]),
            dst,
        })
    });
}

/// Runs `then(acc, ld)` on the i32 sums of output channels `o0..o0 + n` for all rows of `a`, channel i's
/// at `acc[i * ld..]`, in this thread's scratch.
fn with_sums(a: &Quantized, w: &Int8Weight, o0: usize, n: usize, then: impl FnOnce(&[i32], usize)) {
    thread_local!(static ACC: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) });
    let (out, rows) = (w.out(), a.rows);
    let inp = 4 * a.kq;
    assert_eq!(w.q.len(), out * inp, "weight is not [{out}, {inp}]");
    assert!(o0 + n <= out, "output channels {o0}.. of {out}");
    if n == 0 || rows == 0 {
        return;
    }
    let ld = LANES * a.rb;
    // Nothing inside runs rayon work, so the scratch is never borrowed twice on one thread.
    ACC.with_borrow_mut(|acc| {
        if acc.len() < n * ld {
            acc.resize(n * ld, 0);
        }
        let acc = &mut acc[..n * ld];
        dot(&w.q[o0 * inp..(o0 + n) * inp], a, acc, ld);
        then(acc, ld)
    });
}

/// `x wᵀ + bias` `[rows, out]` from the quantized rows of `x`: each task's output channels are multiplied
/// into a scratch part and transposed (adding the bias) into its columns of the result from cache, so no
/// `[out, rows]` buffer or separate transpose pass exists. The same values as [`product_t`] then
/// [`simd::transposed`]. With VNNI (AVX-512) the scaling back and the transpose are one pass from the i32
/// sums in registers.
fn product(a: &Quantized, w: &Int8Weight, bias: Option<&[f32]>) -> Vec<f32> {
    let bias = bias_or_zeros(bias, w.out());
    #[cfg(target_arch = "x86_64")]
    if vnni() {
        let task = |o0: usize, n: usize, put: &mut dyn FnMut(&simd::x86_int8::Dequant)| {
            with_sums(a, w, o0, n, |acc, ld| {
                put(&simd::x86_int8::Dequant {
                    acc,
                    ld,
                    rows: a.rows,
                    colsum: &w.colsum[o0..o0 + n],
                    sw: &w.scale[o0..o0 + n],
                    bias: &bias[o0..o0 + n],
                    zero: &a.zero,
                    sx: &a.scale,
                })
            })
        };
        return simd::x86_int8::dequant_groups(a.rows, w.out(), OUT_PER_TASK, task);
    }
    simd::transposed_groups(a.rows, &bias, OUT_PER_TASK, |o0, part| {
        product_part(a, w, o0, part, None)
    })
}

/// `x [rows, in] × wᵀ + bias` with int8 activations: [`quantize`], then [`product`] (the product with the
/// transpose that adds the bias fused per task).
pub fn linear(x: &[f32], rows: usize, w: &Int8Weight, bias: Option<&[f32]>) -> Vec<f32> {
    let out = w.out();
    let inp = w.q.len() / out.max(1);
    if let Some(b) = bias {
        assert_eq!(b.len(), out, "bias length");
    }
    product(&quantize(x, rows, inp), w, bias)
}

/// The MLP `fc2(gelu(fc1(x) + b1)) + b2` with both layers in int8: the hidden activation stays transposed
/// (`hᵀ` gets its bias and GELU in f32, then is quantized per row straight from that layout).
pub fn mlp(
    x: &[f32],
    rows: usize,
    w1: &Int8Weight,
    b1: &[f32],
    w2: &Int8Weight,
    b2: Option<&[f32]>,
) -> Vec<f32> {
    let hidden = w1.out();
    assert_eq!(b1.len(), hidden, "fc1 bias length");
    let inp = w1.q.len() / hidden.max(1);
    let a = quantize(x, rows, inp);
    let mut ht = vec![0.0f32; hidden * rows];
    product_t_gelu(&a, w1, &mut ht, Some(b1));
    let a2 = quantize_t(&ht, hidden, rows);
    drop(ht);
    product(&a2, w2, b2)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn weights(out: usize, inp: usize) -> (Vec<i8>, Vec<f32>) {
        let q = (0..out * inp)
            .map(|i| ((i * 7919 + 13) % 255) as i32 - 127)
            .map(|v| v as i8)
            .collect();
        let s = (0..out).map(|o| 1e-3 * (1 + o % 5) as f32).collect();
        (q, s)
    }

    /// Pseudo-random values in [-1, 1), some rows scaled up tenfold (activations' outlier tokens).
    fn acts(rows: usize, inp: usize) -> Vec<f32> {
        let mut s = 0x2545_f491_u32;
        (0..rows * inp)
            .map(|i| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let v = (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0;
                if (i / inp) % 5 == 3 {
                    10.0 * v
                } else {
                    v
                }
            })
            .collect()
    }

    /// The kernel this CPU runs (VNNI, AVX2 or SDOT) against the portable reference, exactly (integers), at
    /// every tile remainder: 1-9 outputs, 1-4 vectors of rows, one group of four inputs up to ViT-L's 4096,
    /// the extremes of u8 and s8.
    #[test]
    fn kernel_matches_portable_exactly() {
        if !native() {
            crate::ops::int8::tests::skip("AVX512-VNNI, AVX2 or dotprod");
            return;
        }
        for (out, rows, inp) in [
            (1, 1, 4),
            (8, 16, 64),
            (9, 17, 12),
            (16, 48, 192),
            (3, 33, 100),
            (24, 64, 4096),
            (7, 5, 1024),
        ] {
            let (mut q, _) = weights(out, inp);
            q[0] = -127;
            let mut x = acts(rows, inp);
            x[0] = -1e3;
            let a = quantize(&x, rows, inp);
            let ld = LANES * a.rb + 3;
            let mut got = vec![7; out * ld];
            let mut want = vec![7; out * ld];
            dot(&q, &a, &mut got, ld);
            dot_portable(&q, &a, &mut want, ld);
            assert_eq!(got, want, "{out} x {rows} x {inp}");
        }
    }

    /// The SDOT kernel against the portable reference, exactly, called directly (so it also runs when
    /// `WSTREAM_KERNELS=portable` is set): 1-13 outputs (tiles of 6 and their remainders), 1-3 vectors of
    /// rows, and the extremes the sign flip must get right (u8 0 and 255 against s8 -128 and 127).
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn sdot_kernel_matches_portable_exactly() {
        if !simd::neon_int8::detected() {
            skip("dotprod");
            return;
        }
        let check = |q: &[i8], a: &Quantized, what: &str| {
            let out = q.len() / (4 * a.kq);
            let ld = LANES * a.rb + 3;
            let mut got = vec![7; out * ld];
            let mut want = vec![7; out * ld];
            simd::neon_int8::dot(q, out, a.kq, &a.data, a.rb, &mut got, ld);
            dot_portable(q, a, &mut want, ld);
            assert_eq!(got, want, "{what}");
        };
        for (out, rows, inp) in [(1, 1, 4), (6, 16, 64), (13, 33, 100), (7, 48, 4096)] {
            let (q, _) = weights(out, inp);
            let a = quantize(&acts(rows, inp), rows, inp);
            check(&q, &a, &format!("{out} x {rows} x {inp}"));
        }
        for (u, w) in [(255u8, -128i8), (255, 127), (0, -128), (0, 127)] {
            let mut a = Quantized::empty(16, 4096);
            a.data.fill(u);
            check(&[w; 7 * 4096], &a, &format!("u8 {u} x s8 {w}"));
        }
    }

    /// The AVX2 kernel against the portable reference, exactly, called directly (so it also runs on CPUs
    /// with VNNI and when `WSTREAM_KERNELS=portable` is set): 1-9 outputs (tiles of 4 and their
    /// remainders), 1-3 vectors of rows, group counts that leave the widening's tail, and the extremes a
    /// saturating byte product would get wrong (u8 255 against s8 -128 and 127).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernel_matches_portable_exactly() {
        if !simd::x86_int8::avx2_detected() {
            skip("AVX2");
            return;
        }
        let check = |q: &[i8], a: &Quantized, what: &str| {
            let out = q.len() / (4 * a.kq);
            let ld = LANES * a.rb + 3;
            let mut got = vec![7; out * ld];
            let mut want = vec![7; out * ld];
            simd::x86_int8::dot_avx2(q, out, a.kq, &a.data, a.rb, &mut got, ld);
            dot_portable(q, a, &mut want, ld);
            assert_eq!(got, want, "{what}");
        };
        for (out, rows, inp) in [
            (1, 1, 4),
            (4, 16, 64),
            (9, 33, 100),
            (6, 48, 4096),
            (3, 5, 28),
        ] {
            let (q, _) = weights(out, inp);
            let a = quantize(&acts(rows, inp), rows, inp);
            check(&q, &a, &format!("{out} x {rows} x {inp}"));
        }
        for (u, w) in [(255u8, -128i8), (255, 127), (0, -128), (0, 127)] {
            let mut a = Quantized::empty(16, 4096);
            a.data.fill(u);
            check(&[w; 5 * 4096], &a, &format!("u8 {u} x s8 {w}"));
        }
    }

    /// The AVX-512 quantizers give exactly the portable loops' bytes, zero points and scales: inputs not a
    /// multiple of 16 (the masked tail), rows not a multiple of 16, a zero row, NaN and infinite rows.
    #[test]
    fn hand_quantizers_match_portable_exactly() {
        if !native() {
            skip("AVX512-VNNI or dotprod");
            return;
        }
        for (rows, inp) in [(1, 4), (17, 40), (33, 1028), (197, 96), (16, 12)] {
            let mut x = acts(rows, inp);
            x[..inp].fill(0.0);
            if rows > 2 {
                x[inp + 3] = f32::NAN;
                x[2 * inp + inp - 1] = f32::NEG_INFINITY;
                x[rows * inp - 1] = -3e5;
            }
            let mut xt = vec![0.0; rows * inp];
            for r in 0..rows {
                for k in 0..inp {
                    xt[k * rows + r] = x[r * inp + k];
                }
            }
            let bits = |a: &Quantized| a.scale.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
            let want = quantize_with(&x, rows, inp, false);
            for got in [
                quantize_with(&x, rows, inp, true),
                quantize_t_with(&xt, inp, rows, true),
                quantize_t_with(&xt, inp, rows, false),
            ] {
                assert_eq!(got.data, want.data, "{rows} x {inp}");
                assert_eq!(got.zero, want.zero, "{rows} x {inp}");
                assert_eq!(bits(&got), bits(&want), "{rows} x {inp}");
            }
        }
    }

    /// The transposed quantizer packs exactly what the row-wise one packs.
    #[test]
    fn quantize_t_matches_quantize() {
        for (rows, inp) in [(1, 4), (17, 64), (197, 96)] {
            let x = acts(rows, inp);
            let mut xt = vec![0.0; rows * inp];
            for r in 0..rows {
                for k in 0..inp {
                    xt[k * rows + r] = x[r * inp + k];
                }
            }
            let (a, b) = (quantize(&x, rows, inp), quantize_t(&xt, inp, rows));
            assert_eq!(a.data, b.data);
            assert_eq!(a.zero, b.zero);
            assert_eq!(a.scale, b.scale);
        }
    }

    /// Dequantizing the packed rows gives back each input to half a step of its row's scale, and zero exactly.
    #[test]
    fn quantize_round_trips_within_half_a_step() {
        let (rows, inp) = (20, 40);
        let mut x = acts(rows, inp);
        x[5] = 0.0;
        x[inp * 19..].fill(0.0);
        let a = quantize(&x, rows, inp);
        for r in 0..rows {
            let (v, l) = (r / LANES, r % LANES);
            for k in 0..inp {
                let u = a.data[(v * a.kq + k / 4) * 64 + l * 4 + k % 4] as i32;
                let back = (u - a.zero[r]) as f32 * a.scale[r];
                let x = x[r * inp + k];
                assert!(
                    (back - x).abs() <= a.scale[r] * 0.5001,
                    "({r}, {k}): {back} vs {x}"
                );
                if x == 0.0 {
                    assert_eq!(back, 0.0);
                }
            }
        }
    }

    /// W8A8 against the f32 product of the dequantized weights on the same input: relative L2 error under
    /// 1% (per-token u8 activations carry ~0.4% of each row's range as rounding noise; measured 0.3%).
    #[test]
    fn linear_matches_f32_within_bound() {
        let (rows, inp, out) = (37, 256, 40);
        let (q, s) = weights(out, inp);
        let x = acts(rows, inp);
        let b: Vec<f32> = (0..out).map(|o| o as f32 * 0.1).collect();
        let w = Int8Weight::new(&q, &s, None);
        let wide: Vec<f32> = q
            .iter()
            .enumerate()
            .map(|(i, &v)| v as f32 * s[i / inp])
            .collect();
        let want = crate::ops::linear(&x, rows, &wide, out, Some(&b));
        // Whichever kernel the CPU runs, and the portable one forced through the same epilogue.
        let got = linear(&x, rows, &w, Some(&b));
        let err = rel_l2(&got, &want);
        assert!(err < 0.01, "relative L2 {err}");
        assert!(err > 0.0);
        let a = quantize(&x, rows, inp);
        let mut acc = vec![0; out * LANES * a.rb];
        dot_portable(&q, &a, &mut acc, LANES * a.rb);
        for (o, r) in [(0, 0), (39, 36), (17, 20)] {
            let y = (acc[o * LANES * a.rb + r] - a.zero[r] * w.colsum[o]) as f32
                * (a.scale[r] * s[o])
                + b[o];
            assert_eq!(got[r * out + o], y, "({r}, {o})");
        }
    }

    /// The product transposed per task gives bitwise what the whole `yT` and a separate transpose give, with
    /// and without a bias, for output counts that leave a partial last task.
    #[test]
    fn product_matches_product_t_transposed() {
        for (rows, inp, out) in [(37, 64, 40), (5, 12, 33), (197, 96, 16)] {
            let (q, s) = weights(out, inp);
            let w = Int8Weight::new(&q, &s, None);
            let a = quantize(&acts(rows, inp), rows, inp);
            let mut yt = vec![0.0; out * rows];
            product_t(&a, &w, &mut yt);
            let b: Vec<f32> = (0..out).map(|o| o as f32 * 0.1 - 1.0).collect();
            let zeros = vec![0.0; out];
            for (bias, want) in [(Some(&b[..]), &b), (None, &zeros)] {
                let want = simd::transposed(&yt, rows, want);
                let got = product(&a, &w, bias);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{rows} x {inp} x {out}");
            }
        }
    }

    #[test]
    fn non_finite_rows_give_nan() {
        let (rows, inp, out) = (3, 8, 2);
        let (q, s) = weights(out, inp);
        let mut x = acts(rows, inp);
        x[inp + 2] = f32::NAN;
        x[2 * inp] = f32::INFINITY;
        let got = linear(&x, rows, &Int8Weight::new(&q, &s, None), None);
        assert!(got[..out].iter().all(|v| v.is_finite()));
        assert!(got[out..].iter().all(|v| v.is_nan()), "{got:?}");
    }

    #[test]
    fn mlp_matches_its_layers() {
        let (rows, inp, hidden, out) = (21, 64, 96, 32);
        let (q1, s1) = weights(hidden, inp);
        let (q2, s2) = weights(out, hidden);
        let b1: Vec<f32> = (0..hidden).map(|i| i as f32 * 0.01 - 0.5).collect();
        let b2: Vec<f32> = (0..out).map(|i| 0.3 - i as f32 * 0.02).collect();
        let (w1, w2) = (
            Int8Weight::new(&q1, &s1, None),
            Int8Weight::new(&q2, &s2, None),
        );
        let x = acts(rows, inp);
        let got = mlp(&x, rows, &w1, &b1, &w2, Some(&b2));
        let mut h = linear(&x, rows, &w1, Some(&b1));
        crate::ops::gelu(&mut h);
        let want = linear(&h, rows, &w2, Some(&b2));
        // hᵀ gets bias and GELU in the same f32 order as h does, so the quantized inputs agree exactly.
        assert_eq!(got, want);
    }

    pub(crate) fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    pub(crate) fn skip(what: &str) {
        assert!(
            std::env::var_os("CI").is_none() || simd::portable_forced(),
            "this CPU lacks {what}; CI runs on a box with it"
        );
        eprintln!("skipped: this CPU lacks {what}");
    }
}
