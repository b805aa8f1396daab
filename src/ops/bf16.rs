//! bf16 weights multiplied in bf16: linear layers and the MLP of a bf16 file, with `vdpbf16ps` (AVX512_BF16,
//! `simd/x86_bf16.rs`; on CPUs with only AVX2 and FMA, FMAs taking the same steps on the halves widened in
//! registers) or BFDOT (aarch64's FEAT_BF16, `simd/neon_bf16.rs`) into f32 accumulators where the CPU has
//! it. Everything else stays f32: LayerNorm, softmax, GELU, the
//! residual adds, and the bias and GELU applied to each slab of outputs as it leaves the kernel. The same
//! kernel runs attention's two products for blocks whose layers are narrow ([`matmul_packed`]).
//!
//! The weight is read in place, `[out, in]` rows as the file stores them (source or exec layout): a tile
//! broadcasts one pair of a channel's inputs at a time, so it needs no repacking. The activation is what gets
//! packed, once per call: rounded to bf16 (nearest, ties to even) and transposed into `[in / 2, ld]` u32,
//! each the pair of inputs `2p, 2p + 1` of one token, 16 tokens per vector. The MLP's fc1 writes its
//! GELU output straight in that packed form, so fc2 reads it without another pass.
//!
//! Each output is a chain over the pairs in order, one instruction's step per pair, then `+ bias`. The two
//! instructions' steps differ, so an output differs between x86 and aarch64 in its last bits:
//! - `vdpbf16ps`: `(acc + w[2p+1]·x[2p+1]) + w[2p]·x[2p]` in f32, rounding to nearest even after each add;
//! - BFDOT (with FPCR.EBF = 0, as a process starts): `acc + (w[2p]·x[2p] + w[2p+1]·x[2p+1])`, both products,
//!   their sum and the last add each rounded to odd; denormal inputs (the accumulator's too) and results
//!   flushed to zero; NaNs the default NaN (Arm's `BFDotAdd`).
//!
//! [`slab_reference`] computes exactly the step of this architecture's instruction and the kernel is tested
//! against it bitwise (the BFDOT model is itself tested on hand-made cases on every architecture). Where
//! the CPU lacks the instruction, `WSTREAM_KERNELS=portable` asks for the portable kernels, or a layer's
//! inputs are odd in number, [`linear`] and [`mlp`] return `None` and the caller widens the weight to f32
//! as before.

use half::bf16;
use rayon::prelude::*;

use super::activation::gelu1;
use super::bias_or_zeros;
#[cfg(target_arch = "aarch64")]
use super::simd::neon_bf16 as kernel;
#[cfg(target_arch = "x86_64")]
use super::simd::x86_bf16 as kernel;
use super::simd::{self, Kernel};

/// Output channels per kernel slab.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const NR: usize = kernel::NR;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const NR: usize = 12;

/// Input pairs per block of a product: a slab's weight block (`NR` rows of 2 KiB) stays in L1 while every
/// token tile passes over it, and the activation's block (`ld` tokens x 2 KiB) in L2.
const BLOCK_PAIRS: usize = 512;

/// Token rows packed and multiplied per pass: bounds the packed activation and the `yᵀ` scratch (a pass of
/// 512 rows at Swin-L's widest layer is 12 MiB), at the cost of reading the weight once per pass.
const ROWS_PER_PASS: usize = 512;

/// Whether products with `inp` inputs per channel run natively on this CPU.
pub(crate) fn native(inp: usize) -> bool {
    inp > 0 && inp.is_multiple_of(2) && available()
}

/// Whether this process multiplies bf16 weights natively: the CPU has a bf16 kernel and
/// `WSTREAM_KERNELS=portable` does not ask for the widening path.
pub fn available() -> bool {
    !simd::portable_forced() && present()
}

/// Whether this CPU has the instructions of a bf16 kernel (whatever `WSTREAM_KERNELS` says, so that the
/// kernel tests still run under CI's forced-portable run).
fn present() -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        kernel::detected()
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// `f32` to bf16, round to nearest, ties to even; NaN stays a (quiet) NaN.
#[inline(always)]
pub(super) fn round(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// Two inputs as one packed pair: the even one in the low half, as a bf16 row stores them.
#[inline(always)]
pub(super) fn pair(even: f32, odd: f32) -> u32 {
    round(even) as u32 | (round(odd) as u32) << 16
}

/// An activation packed for the kernel: `[pairs, ld]` u32, token `m` of pair `p` at `p * ld + m`, lanes
/// `rows..ld` zero.
struct Packed {
    data: Vec<u32>,
    rows: usize,
    ld: usize,
}

impl Packed {
    fn zeroed(pairs: usize, rows: usize) -> Packed {
        let ld = rows.next_multiple_of(16);
        Packed {
            data: vec![0; pairs * ld],
            rows,
            ld,
        }
    }
}

/// `x [rows, k]` rounded and packed.
fn pack_rows(x: &[f32], rows: usize, k: usize) -> Packed {
    struct RoundPairs<'a>(&'a mut [u32], &'a [f32]);
    impl Kernel for RoundPairs<'_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            for (d, s) in self.0.iter_mut().zip(self.1.chunks_exact(2)) {
                *d = pair(s[0], s[1]);
            }
        }
    }
    let pairs = k / 2;
    let mut flat = vec![0u32; rows * pairs];
    let per_task = super::rows_per_task(k);
    flat.par_chunks_mut(pairs * per_task)
        .zip(x.par_chunks(k * per_task))
        .for_each(|(d, s)| simd::run(RoundPairs(d, s)));
    let mut p = Packed::zeroed(pairs, rows);
    transpose(&flat, rows, pairs, &mut p.data, p.ld);
    p
}

fn transpose(src: &[u32], rows: usize, pairs: usize, dst: &mut [u32], ld: usize) {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    kernel::transpose_pairs(src, rows, pairs, dst, ld);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (src, rows, pairs, dst, ld);
        unreachable!("no bf16 kernel on this architecture");
    }
}

#[allow(clippy::too_many_arguments)]
fn slab(
    w: &[u16],
    k: usize,
    n: (usize, usize),
    p: (usize, usize),
    xp: &Packed,
    c: &mut [f32],
    accumulate: bool,
) {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    kernel::slab(w, k, n, p, &xp.data, xp.ld, xp.rows, c, accumulate);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (w, k, n, p, xp, c, accumulate);
        unreachable!("no bf16 kernel on this architecture");
    }
}

/// Channels per rayon task: whole slabs, at least 8 tasks per thread (an even share at 2 threads), at most
/// 8 slabs (the fc1 epilogue's scratch stays in L2).
fn task_channels(out: usize) -> usize {
    let slabs = out.div_ceil(NR);
    NR * (slabs / (8 * rayon::current_num_threads())).clamp(1, 8)
}

/// The raw sums of channels `n0..n0 + c.len() / rows` into `c` (`[channels, rows]`), block of pairs by
/// block, slab by slab; `done(s, slab)` gets each slab (index within `c`, `[nr, rows]`) after its last
/// block.
fn group(
    w: &[u16],
    k: usize,
    xp: &Packed,
    n0: usize,
    c: &mut [f32],
    mut done: impl FnMut(usize, &mut [f32]),
) {
    let pairs = k / 2;
    let rows = xp.rows;
    let blocks = pairs.div_ceil(BLOCK_PAIRS);
    let bp = pairs.div_ceil(blocks);
    for (b, p0) in (0..pairs).step_by(bp).enumerate() {
        let pc = bp.min(pairs - p0);
        for (s, cs) in c.chunks_mut(NR * rows).enumerate() {
            let nr = cs.len() / rows;
            slab(w, k, (n0 + s * NR, nr), (p0, pc), xp, cs, b > 0);
            if p0 + pc == pairs {
                done(s, cs);
            }
        }
    }
}

/// `x wᵀ + bias` (`[rows, out]`) for a packed activation `x`: each task's channels are multiplied into a
/// scratch part and transposed into the result from cache, so no `[out, rows]` buffer or pass exists.
fn product(w: &[u16], k: usize, xp: &Packed, bias: &[f32]) -> Vec<f32> {
    simd::transposed_groups(xp.rows, bias, task_channels(bias.len()), |n0, c| {
        group(w, k, xp, n0, c, |_, _| {})
    })
}

/// `gelu(w × xᵀ + bias)`, packed as the next product's input (`[out / 2, ld]`), for an even `out`.
fn product_gelu_packed(w: &[u16], k: usize, xp: &Packed, bias: &[f32]) -> Packed {
    let (out, rows) = (bias.len(), xp.rows);
    let mut hp = Packed::zeroed(out / 2, rows);
    let ld = hp.ld;
    let g = task_channels(out);
    hp.data
        .par_chunks_mut(g / 2 * ld)
        .enumerate()
        .for_each(|(t, hg)| {
            let n0 = t * g;
            let mut c = vec![0.0f32; (out - n0).min(g) * rows];
            group(w, k, xp, n0, &mut c, |s, cs| {
                let first = s * NR;
                let b = &bias[n0 + first..][..cs.len() / rows];
                simd::run(GeluPairs {
                    c: cs,
                    rows,
                    bias: b,
                    dst: &mut hg[first / 2 * ld..],
                    ld,
                });
            });
        });
    hp
}

/// A slab's epilogue in fc1: `gelu(c + bias)` row by row (f32, as [`super::bias_gelu`]), then rows `2q, 2q +
/// 1` rounded and paired into packed row `q` of `dst`.
struct GeluPairs<'a> {
    c: &'a mut [f32],
    rows: usize,
    bias: &'a [f32],
    dst: &'a mut [u32],
    ld: usize,
}

impl Kernel for GeluPairs<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let GeluPairs {
            c,
            rows,
            bias,
            dst,
            ld,
        } = self;
        for (row, b) in c.chunks_exact_mut(rows).zip(bias) {
            for v in row.iter_mut() {
                *v = gelu1(*v + b);
            }
        }
        for (two, d) in c.chunks_exact(2 * rows).zip(dst.chunks_mut(ld)) {
            let (even, odd) = two.split_at(rows);
            for ((d, &e), &o) in d.iter_mut().zip(even).zip(odd) {
                *d = pair(e, o);
            }
        }
    }
}

/// Splits `rows` into passes of at most [`ROWS_PER_PASS`], as even as whole vectors of 16 allow.
fn passes(rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let n = rows.div_ceil(ROWS_PER_PASS).max(1);
    let per = rows.div_ceil(n).next_multiple_of(16).max(16);
    (0..rows)
        .step_by(per)
        .map(move |r0| (r0, per.min(rows - r0)))
}

fn bits(w: &[bf16]) -> &[u16] {
    bytemuck::cast_slice(w)
}

/// `x [rows, in] × wᵀ + bias` for a bf16 weight `[out, in]`, natively; `None` where this CPU (or the
/// shape) takes the widening path.
pub(super) fn linear(
    x: &[f32],
    rows: usize,
    w: &[bf16],
    out: usize,
    bias: Option<&[f32]>,
) -> Option<Vec<f32>> {
    let inp = w.len() / out.max(1);
    if rows == 0 || out == 0 || !native(inp) {
        return None;
    }
    assert_eq!(x.len(), rows * inp, "input is not [rows, {inp}]");
    Some(linear_native(x, rows, w, out, bias))
}

fn linear_native(x: &[f32], rows: usize, w: &[bf16], out: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let inp = w.len() / out;
    let bias = bias_or_zeros(bias, out);
    let mut y = Vec::with_capacity(rows * out);
    for (r0, n) in passes(rows) {
        let xp = pack_rows(&x[r0 * inp..(r0 + n) * inp], n, inp);
        let part = product(bits(w), inp, &xp, &bias);
        if rows == n {
            return part;
        }
        y.extend_from_slice(&part);
    }
    y
}

/// The MLP `fc2(gelu(fc1(x) + b1)) + b2` for bf16 weights, natively: fc1's output never exists in f32
/// beyond a slab, fc2 reads it packed. `None` where this CPU (or the shape) takes the widening path.
pub(super) fn mlp(
    x: &[f32],
    rows: usize,
    (w1, b1): (&[bf16], &[f32]),
    (w2, b2): (&[bf16], Option<&[f32]>),
    out: usize,
) -> Option<Vec<f32>> {
    let hidden = b1.len();
    let inp = w1.len() / hidden.max(1);
    if rows == 0 || out == 0 || !native(inp) || !native(hidden) {
        return None;
    }
    Some(mlp_native(x, rows, (w1, b1), (w2, b2), out))
}

fn mlp_native(
    x: &[f32],
    rows: usize,
    (w1, b1): (&[bf16], &[f32]),
    (w2, b2): (&[bf16], Option<&[f32]>),
    out: usize,
) -> Vec<f32> {
    let (hidden, inp) = (b1.len(), w1.len() / b1.len());
    let b2 = bias_or_zeros(b2, out);
    let mut y = Vec::with_capacity(rows * out);
    for (r0, n) in passes(rows) {
        let xp = pack_rows(&x[r0 * inp..(r0 + n) * inp], n, inp);
        let hp = product_gelu_packed(bits(w1), inp, &xp, b1);
        drop(xp);
        let part = product(bits(w2), hidden, &hp, &b2);
        if rows == n {
            return part;
        }
        y.extend_from_slice(&part);
    }
    y
}

/// `c [m, n] = a [m, k] × b`, products in bf16 and sums in f32, for attention's small products
/// (`ops::attention`): `a` is `m` rows of `k` (even) bf16 values, read a pair at a time as a weight's rows
/// are; `b` is packed `[k / 2, ld]` as an activation is (`ld >= n` rounded up to 16); `c` is `[m, n]`. Only
/// where [`available`].
pub(super) fn matmul_packed(
    a: &[u16],
    (m, k): (usize, usize),
    b: &[u32],
    ld: usize,
    n: usize,
    c: &mut [f32],
) {
    for (s, cs) in c[..m * n].chunks_mut(NR * n).enumerate() {
        let nr = cs.len() / n;
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        kernel::slab(a, k, (s * NR, nr), (0, k / 2), b, ld, n, cs, false);
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            let _ = (a, k, b, ld, nr);
            unreachable!("no bf16 kernel on this architecture");
        }
    }
}

/// `dst[p * ld + m] = src[m * pairs + p]`: bf16 rows (pairs of values as u32) packed for [`matmul_packed`].
pub(super) fn pack_pairs(src: &[u32], rows: usize, pairs: usize, dst: &mut [u32], ld: usize) {
    transpose(src, rows, pairs, dst, ld);
}

/// [`slab`] one pair at a time, in the kernel's order, each step this architecture's instruction's
/// ([`bfdot_step`] on aarch64, [`vdpbf16ps_step`] elsewhere): the reference the kernels are tested against.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
fn slab_reference(
    w: &[u16],
    k: usize,
    (n0, nr): (usize, usize),
    (p0, pc): (usize, usize),
    xp: &Packed,
    c: &mut [f32],
    accumulate: bool,
) {
    let step = if cfg!(target_arch = "aarch64") {
        bfdot_step
    } else {
        vdpbf16ps_step
    };
    let rows = xp.rows;
    for i in 0..nr {
        let wr = &w[(n0 + i) * k..];
        for m in 0..rows {
            let mut acc = if accumulate { c[i * rows + m] } else { 0.0 };
            for p in p0..p0 + pc {
                let wp = wr[2 * p] as u32 | (wr[2 * p + 1] as u32) << 16;
                acc = step(acc, xp.data[p * xp.ld + m], wp);
            }
            c[i * rows + m] = acc;
        }
    }
}

/// The bf16 of the low (`half` 0) or high (1) half of a pair, as f32.
#[cfg(test)]
fn half_of(pair: u32, half: u32) -> f32 {
    f32::from_bits((pair >> (16 * half)) << 16)
}

/// One `vdpbf16ps` step: the odd product added and rounded (nearest even), then the even one. The
/// instruction also flushes denormals, which the tests' values never produce.
#[cfg(test)]
fn vdpbf16ps_step(acc: f32, x: u32, w: u32) -> f32 {
    let acc = acc + half_of(w, 1) * half_of(x, 1);
    acc + half_of(w, 0) * half_of(x, 0)
}

/// One BFDOT step, as Arm's `BFDotAdd` defines it with FPCR.EBF = 0: `acc + (w₀x₀ + w₁x₁)` with denormal
/// inputs (the accumulator's too) read as zero, each product, their sum and the last add rounded to odd,
/// a result below the smallest normal flushed to zero (judged before rounding), one past the largest finite
/// rounded to infinity, and any NaN the default NaN.
#[cfg(test)]
fn bfdot_step(acc: f32, x: u32, w: u32) -> f32 {
    let input = |pair: u32, half: u32| flush(half_of(pair, half));
    // Products of bf16 are exact in f64; rounding them to odd only flushes, or overflows.
    let product = |half| round_odd(input(x, half) as f64 * input(w, half) as f64, 0.0);
    add_odd(flush(acc), add_odd(product(0), product(1)))
}

/// A denormal as a zero of its sign.
#[cfg(test)]
fn flush(v: f32) -> f32 {
    if v.is_subnormal() {
        0.0f32.copysign(v)
    } else {
        v
    }
}

/// `a + b` rounded to odd (see [`round_odd`]): the f64 sum and its exact error (Knuth's TwoSum) hold the
/// exact sum.
#[cfg(test)]
fn add_odd(a: f32, b: f32) -> f32 {
    let (a, b) = (a as f64, b as f64);
    let s = a + b;
    let e = if s.is_finite() {
        let bv = s - a;
        (a - (s - bv)) + (b - bv)
    } else {
        0.0
    };
    round_odd(s, e)
}

/// The exact value `v + e` as f32, with `|e|` at most half an ulp of `v` (0 when `v` is 0 or not finite):
/// truncated, then its last bit set if that lost anything (round to odd); zero of its sign below the
/// smallest normal, infinity at `2^128` and above, the default NaN for a NaN.
#[cfg(test)]
fn round_odd(v: f64, e: f64) -> f32 {
    if v.is_nan() {
        return f32::from_bits(0x7FC0_0000);
    }
    let sign = if v.is_sign_negative() { -1.0f32 } else { 1.0 };
    // The exact magnitude lies just below |v|.
    let below = e != 0.0 && (e < 0.0) != (v < 0.0);
    let (mag, min) = (v.abs(), f32::MIN_POSITIVE as f64);
    if mag < min || (mag == min && below) {
        return 0.0f32.copysign(sign);
    }
    if mag >= 2f64.powi(128) {
        return f32::INFINITY.copysign(sign);
    }
    // f64 has 29 more fraction bits than f32: dropping them truncates, exactly, to an f32 value.
    let bits = mag.to_bits();
    let dropped = bits & ((1 << 29) - 1);
    let mut t = (f64::from_bits(bits - dropped) as f32).to_bits();
    if dropped == 0 && below {
        t -= 1;
    }
    if dropped != 0 || e != 0.0 {
        t |= 1;
    }
    f32::from_bits(t).copysign(sign)
}

#[cfg(test)]
// Only x86 and aarch64 have a bf16 kernel to test: elsewhere the helpers go unused.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
mod tests {
    use super::*;

    /// Whether the kernel can run here; without it a test is skipped, or fails where `CI` is set. Only x86
    /// and aarch64 have a bf16 kernel, so these tests exist there only.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn kernel_here(what: &str) -> bool {
        if present() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "{what}: this CPU has no bf16 kernel; CI is set, so it must run"
        );
        eprintln!("SKIPPED {what}: this CPU has no bf16 kernel");
        false
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + 1.0) * seed).sin()).collect()
    }

    fn bf16s(v: &[f32]) -> Vec<bf16> {
        v.iter().map(|&x| bf16::from_bits(round(x))).collect()
    }

    /// `x wᵀ + bias` the reference's way, whole.
    fn linear_reference(
        x: &[f32],
        rows: usize,
        w: &[bf16],
        out: usize,
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let k = w.len() / out;
        let xp = pack_reference(x, rows, k);
        let mut yt = vec![0.0; out * rows];
        slab_reference(bits(w), k, (0, out), (0, k / 2), &xp, &mut yt, false);
        let mut y = vec![0.0; rows * out];
        for o in 0..out {
            for m in 0..rows {
                y[m * out + o] = yt[o * rows + m] + bias.map_or(0.0, |b| b[o]);
            }
        }
        y
    }

    fn pack_reference(x: &[f32], rows: usize, k: usize) -> Packed {
        let mut p = Packed::zeroed(k / 2, rows);
        for m in 0..rows {
            for q in 0..k / 2 {
                p.data[q * p.ld + m] = pair(x[m * k + 2 * q], x[m * k + 2 * q + 1]);
            }
        }
        p
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        for (v, want) in [
            (1.0f32, 0x3F80u16),
            (f32::from_bits(0x3F80_8000), 0x3F80), // tie, even stays
            (f32::from_bits(0x3F81_8000), 0x3F82), // tie, odd rounds up
            (f32::from_bits(0x3F80_8001), 0x3F81),
            (f32::from_bits(0x3F80_7FFF), 0x3F80),
            (-2.5, 0xC020),
            (f32::MAX, 0x7F80), // rounds up to infinity, as the instruction does
            (f32::INFINITY, 0x7F80),
        ] {
            assert_eq!(round(v), want, "{v:e}");
            if !v.is_infinite() && v.abs() < 1e38 {
                assert_eq!(round(v), bf16::from_f32(v).to_bits(), "{v:e} vs half");
            }
        }
        assert!(bf16::from_bits(round(f32::NAN)).is_nan());
    }

    /// The packing transpose against the one-element-at-a-time packing, at partial tiles.
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn packing_matches_reference() {
        if !kernel_here("bf16 packing") {
            return;
        }
        for (rows, k) in [(1, 2), (16, 32), (17, 34), (197, 96), (40, 1030)] {
            let x = values(rows * k, 0.37);
            let got = pack_rows(&x, rows, k);
            let want = pack_reference(&x, rows, k);
            assert_eq!((got.ld, got.rows), (want.ld, want.rows));
            assert!(got.data == want.data, "{rows}x{k}");
        }
    }

    /// The `vdpbf16ps` or BFDOT slabs against [`slab_reference`], bitwise: every channel count up to a slab, whole and
    /// partial token vectors, a block starting mid-row, accumulating or not.
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn kernel_matches_reference_bitwise() {
        if !kernel_here("bf16 kernel") {
            return;
        }
        let (k, out) = (70, 30);
        let w = bf16s(&values(out * k, 0.11));
        for rows in [1, 15, 16, 33, 50] {
            let x = values(rows * k, 0.53);
            let xp = pack_rows(&x, rows, k);
            for nr in 1..=NR {
                for (p0, pc, acc) in [(0, 35, false), (3, 20, true), (34, 1, false)] {
                    let c0 = values(nr * rows, 0.7);
                    let (mut got, mut want) = (c0.clone(), c0.clone());
                    slab(bits(&w), k, (out - nr, nr), (p0, pc), &xp, &mut got, acc);
                    slab_reference(bits(&w), k, (out - nr, nr), (p0, pc), &xp, &mut want, acc);
                    let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        b(&got),
                        b(&want),
                        "{rows} rows, {nr} channels, pairs {p0}+{pc}"
                    );
                }
            }
        }
    }

    /// Whole layers (several blocks of pairs, several tasks, several passes of rows) against the reference
    /// bitwise, and against f64 on the rounded operands to the error f32 sums carry.
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn linear_matches_reference() {
        if !kernel_here("bf16 linear") {
            return;
        }
        for (rows, k, out) in [(3, 8, 5), (197, 1100, 40), (600, 64, 30), (49, 192, 1000)] {
            let x = values(rows * k, 0.37);
            let w = bf16s(
                &values(out * k, 0.11)
                    .iter()
                    .map(|v| v * 0.1)
                    .collect::<Vec<_>>(),
            );
            let bias = values(out, 0.3);
            let got = linear_native(&x, rows, &w, out, Some(&bias));
            let want = linear_reference(&x, rows, &w, out, Some(&bias));
            assert!(got == want, "{rows}x{k}x{out}");
            for m in (0..rows).step_by(7) {
                for o in 0..out {
                    let exact: f64 = (0..k)
                        .map(|i| {
                            bf16::from_bits(round(x[m * k + i])).to_f64() * w[o * k + i].to_f64()
                        })
                        .sum::<f64>()
                        + bias[o] as f64;
                    let d = (got[m * out + o] as f64 - exact).abs();
                    assert!(d < 1e-6 * k as f64, "{rows}x{k}x{out} at ({m}, {o}): {d}");
                }
            }
        }
    }

    /// The MLP with fc1's GELU written packed: its layers one by one the reference's way (f32 GELU, rounded
    /// between the layers), bitwise.
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn mlp_matches_its_layers() {
        if !kernel_here("bf16 mlp") {
            return;
        }
        let (inp, hidden, out) = (48, 160, 40);
        let w1 = bf16s(
            &values(hidden * inp, 0.37)
                .iter()
                .map(|v| v * 0.2)
                .collect::<Vec<_>>(),
        );
        let w2 = bf16s(
            &values(out * hidden, 0.11)
                .iter()
                .map(|v| v * 0.2)
                .collect::<Vec<_>>(),
        );
        let b1 = values(hidden, 0.05);
        let b2 = values(out, 0.21);
        for rows in [1, 7, 39, 300, 1100] {
            let x = values(rows * inp, 0.53);
            for bias2 in [Some(&b2[..]), None] {
                let got = mlp_native(&x, rows, (&w1, &b1), (&w2, bias2), out);
                let mut h = linear_reference(&x, rows, &w1, hidden, Some(&b1));
                h.iter_mut().for_each(|v| *v = gelu1(*v));
                let want = linear_reference(&h, rows, &w2, out, bias2);
                assert!(got == want, "{rows} rows, bias {}", bias2.is_some());
            }
        }
    }

    /// The BFDOT model on cases whose answer is known by hand, on every architecture: round to odd where
    /// nearest-even would round the other way, an exact sum below a power of two that only TwoSum sees,
    /// flushed denormal inputs, accumulator and products, overflow, the default NaN.
    #[test]
    fn bfdot_model_rounds_to_odd_and_flushes() {
        let bf = |v: f32| round(v) as u32;
        let pair = |even: f32, odd: f32| bf(even) | bf(odd) << 16;
        let p2 = |e: i32| 2f32.powi(e);
        let one = pair(1.0, 1.0);
        for (acc, x, w, want, what) in [
            // 1 + 2^-25: nearest even gives 1.0, round to odd the odd neighbour above.
            (1.0, pair(p2(-25), 0.0), one, 0x3F80_0001, "up to odd"),
            (
                f32::from_bits(0x3F80_0001),
                pair(p2(-25), 0.0),
                one,
                0x3F80_0001,
                "stays odd",
            ),
            (
                f32::from_bits(0x3F80_0002),
                pair(p2(-25), 0.0),
                one,
                0x3F80_0003,
                "even to odd",
            ),
            // 1 - 2^-26 lies between 1 - 2^-24 (odd) and 1.
            (1.0, pair(-p2(-26), 0.0), one, 0x3F7F_FFFF, "below one"),
            // 2^60 - 2^-60 is 2^60 in f64: only the TwoSum error says it lies below.
            (
                p2(60),
                pair(-p2(-30), 0.0),
                pair(p2(-30), 0.0),
                0x5D7F_FFFF,
                "below 2^60",
            ),
            // The two products' sum is rounded to odd before the accumulator sees it.
            (0.0, pair(1.0, p2(-30)), one, 0x3F80_0001, "sum of products"),
            // A denormal accumulator reads as zero; so does a denormal bf16 input.
            (f32::from_bits(1), 0, 0, 0, "denormal accumulator"),
            (0.0, 0x0001, pair(p2(100), 0.0), 0, "denormal input"),
            // 2^-140 is a denormal product: flushed.
            (
                0.0,
                pair(p2(-70), 0.0),
                pair(p2(-70), 0.0),
                0,
                "denormal product",
            ),
            // Flushed products keep their sign: -0 + -0 + -0 is -0.
            (
                -0.0,
                pair(-p2(-70), -0.0),
                pair(p2(-70), 1.0),
                0x8000_0000,
                "negative zero",
            ),
            (
                0.0,
                pair(p2(100), 0.0),
                pair(p2(100), 0.0),
                0x7F80_0000,
                "overflow",
            ),
            (
                1.0,
                pair(f32::INFINITY, 0.0),
                0,
                0x7FC0_0000,
                "infinity times zero",
            ),
        ] {
            assert_eq!(
                bfdot_step(acc, x, w).to_bits(),
                want,
                "{what}: {acc:e} + {x:08x} . {w:08x}"
            );
        }
    }

    /// The BFDOT tiles against [`bfdot_step`] on the values where its rounding and flushing matter (the
    /// cases above, mixed over whole quads of pairs, the broadcast tail and partial token vectors), bitwise:
    /// the model is what the instruction (or qemu's emulation of it) does.
    #[test]
    #[cfg(target_arch = "aarch64")]
    fn bfdot_kernel_matches_the_model_on_edge_values() {
        if !kernel_here("BFDOT edge values") {
            return;
        }
        let specials: Vec<u16> = [
            1.0f32,
            -1.0,
            3.0e38,
            -3.0e38,
            1.0e-20,
            -1.0e-20,
            1.5,
            f32::INFINITY,
            0.0,
            -0.0,
        ]
        .iter()
        .map(|&v| round(v))
        .chain([0x0001, 0x8003, 0x0080, 0x3F81, 0xBF7F, 0x7FC0])
        .collect();
        let accs = [
            0.0f32,
            -0.0,
            f32::from_bits(1),
            f32::from_bits(0x8000_0005),
            1.0,
            f32::MIN_POSITIVE,
            f32::MAX,
            -7.25,
        ];
        let pick = |i: usize, mul: usize| specials[(i * mul + i / 7) % specials.len()];
        for (k, rows) in [(8, 5), (14, 13), (2, 3)] {
            let nr = 2;
            let w: Vec<u16> = (0..nr * k).map(|i| pick(i, 5)).collect();
            let mut xp = Packed::zeroed(k / 2, rows);
            for p in 0..k / 2 {
                for m in 0..rows {
                    xp.data[p * xp.ld + m] = pick(2 * (p * rows + m), 3) as u32
                        | (pick(2 * (p * rows + m) + 1, 7) as u32) << 16;
                }
            }
            for acc in [false, true] {
                let c0: Vec<f32> = (0..nr * rows).map(|i| accs[i % accs.len()]).collect();
                let (mut got, mut want) = (c0.clone(), c0);
                slab(&w, k, (0, nr), (0, k / 2), &xp, &mut got, acc);
                slab_reference(&w, k, (0, nr), (0, k / 2), &xp, &mut want, acc);
                for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        r.to_bits(),
                        "k {k}, rows {rows}, accumulate {acc}: output {i}: {g:e} vs the model's {r:e}"
                    );
                }
            }
        }
    }

    /// The products run natively exactly where [`available`] says (the CPU's instruction, not
    /// `WSTREAM_KERNELS=portable`), and never for an odd number of inputs.
    #[test]
    fn dispatch_follows_available() {
        let (rows, out) = (3, 4);
        for k in [8, 7] {
            let w = bf16s(&values(out * k, 0.1));
            let got = linear(&values(rows * k, 0.2), rows, &w, out, None);
            assert_eq!(got.is_some(), available() && k % 2 == 0, "{k} inputs");
        }
        assert_eq!(available(), present() && !simd::portable_forced());
    }
}
