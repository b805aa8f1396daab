//! Multi-head self-attention on small per-head matrices (ViT: 197 tokens x 64; Swin: 49-token windows x 32).
//!
//! A general GEMM spends most of its time packing and dispatching at these sizes (about 18 GFLOP/s on Swin-L's
//! windows, measured). Here each block of query rows of a sequence gathers q, kᵀ and v of one head after
//! another into small dense buffers, reused across heads, and multiplies them with a register-tiled kernel that
//! [`simd::run`] compiles for the CPU's widest vectors, writing each head's product into its output columns.
//! Blocks of bf16 and int8 files can ask for the products in bf16 ([`Products`]).

use rayon::prelude::*;

use super::bf16;
use super::simd::{self, Kernel, LANES};

/// What attention's two products (`q kᵀ` and `softmax · v`) multiply in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    F32,
    /// q, k, v and the probabilities rounded to bf16 (nearest, ties to even), the sums in f32, with the bf16
    /// kernel of `ops::bf16` (`vdpbf16ps` or BFDOT): for blocks whose linear layers already run in bf16 or
    /// int8, where the f32 products were the largest part left (about an eighth of ViT-L's int8 time). The
    /// scores' softmax stays f32. Where the CPU has no bf16 kernel, or a head's width is odd, f32.
    Bf16,
}

/// Adds to row `row` of one `[tokens, tokens]` score matrix, given (group, head, row).
pub type ScoreBias<'a> = dyn Fn(usize, usize, usize, &mut [f32]) + Sync + 'a;

/// Multi-head self-attention over `groups` independent sequences of `tokens` tokens (batch items, or Swin
/// windows), reading q, k, v from a fused qkv projection `[groups * tokens, 3 * heads * head_dim]` laid out
/// (3, heads, head_dim) per token as timm's `qkv` Linear produces. `bias(group, head, row, scores)` may add to
/// each row of each `[tokens, tokens]` score matrix before the softmax (Swin's relative position bias and
/// mask). Returns `[groups * tokens, heads * head_dim]`, heads concatenated as timm's `transpose(1, 2).reshape`.
/// q is scaled by `head_dim^-0.5` before `q kᵀ`, as timm's unfused path does.
pub fn attention(
    qkv: &[f32],
    groups: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    bias: Option<&ScoreBias<'_>>,
    products: Products,
) -> Vec<f32> {
    let (t, d, c) = (tokens, head_dim, heads * head_dim);
    assert_eq!(qkv.len(), groups * t * 3 * c, "qkv size");
    let narrow = products == Products::Bf16 && d.is_multiple_of(2) && bf16::available();
    // Blocks of query rows, one per thread when there are fewer groups than threads (ViT, Swin's last stage);
    // each block does all heads, so it owns whole rows of the output. Each block packs kᵀ and v itself: more
    // blocks would repeat that more.
    let blocks = rayon::current_num_threads().div_ceil(groups);
    let rows = t.div_ceil(blocks);
    let mut out = vec![0.0f32; groups * t * c];
    out.par_chunks_mut(t * c).enumerate().for_each(|(g, out)| {
        out.par_chunks_mut(rows * c)
            .enumerate()
            .for_each(|(b, out)| {
                let block = Block {
                    qkv: &qkv[g * t * 3 * c..(g + 1) * t * 3 * c],
                    out,
                    first: b * rows,
                    tokens: t,
                    heads,
                    head_dim: d,
                    bias: bias.map(|f| (f, g)),
                };
                if narrow {
                    simd::run(Narrow(block))
                } else {
                    run_block(block)
                }
            })
    });
    out
}

/// Runs `b` with the tallest tiles the CPU keeps in registers: 8 rows on AVX-512 (16 accumulators, each load
/// of `b` feeding twice the products of 4 rows), 4 on AVX2 and NEON, whose registers hold fewer sums. The
/// sums are the same whatever the tile.
fn run_block(b: Block<'_, '_>) {
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx512() {
        return simd::run(Tiled::<8>(b));
    }
    simd::run(Tiled::<4>(b))
}

/// Query rows `first..` of one sequence, all heads: `softmax(q kᵀ * scale + bias) v` into their output rows.
struct Block<'a, 'b> {
    /// The sequence's `[tokens, 3 * heads * head_dim]` rows.
    qkv: &'a [f32],
    /// `[rows, heads * head_dim]`.
    out: &'a mut [f32],
    first: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    bias: Option<(&'a ScoreBias<'b>, usize)>,
}

/// A [`Block`] computed in tiles of up to `R` rows.
struct Tiled<'a, 'b, const R: usize>(Block<'a, 'b>);

impl<const R: usize> Kernel for Tiled<'_, '_, R> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Tiled(b) = self;
        b.run::<R>()
    }
}

/// A [`Block`] with its products in bf16 ([`Products::Bf16`]).
struct Narrow<'a, 'b>(Block<'a, 'b>);

impl Kernel for Narrow<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        self.0.run_bf16()
    }
}

impl Block<'_, '_> {
    #[inline(always)]
    fn run<const R: usize>(self) {
        let (t, d) = (self.tokens, self.head_dim);
        let tp = t.next_multiple_of(LANES);
        let c = self.heads * d;
        let rows = self.out.len() / c;
        let scale = (d as f32).powf(-0.5);
        let mut q = vec![0.0f32; rows * d];
        // kᵀ's rows (and so the score rows) padded to whole vectors: the pad columns are never read. v is
        // packed too: in place in the qkv rows, its rows may sit a multiple of 4 KiB apart (ViT) and evict
        // each other from L1.
        let mut kt = vec![0.0f32; d * tp];
        let mut v = vec![0.0f32; t * d];
        let mut scores = vec![0.0f32; rows * tp];
        let zeros = vec![0.0f32; t];
        for h in 0..self.heads {
            // kᵀ through register tiles: written one scalar at a time, 64 apart, it took about a tenth of
            // ViT-L's attention.
            simd::transpose_add_into(&self.qkv[c + h * d..], 3 * c, &mut kt, tp, d, &zeros);
            for (i, v) in v.chunks_exact_mut(d).enumerate() {
                v.copy_from_slice(&self.qkv[i * 3 * c + 2 * c + h * d..][..d]);
            }
            for (i, q) in q.chunks_exact_mut(d).enumerate() {
                let src = &self.qkv[(self.first + i) * 3 * c + h * d..][..d];
                for (dst, src) in q.iter_mut().zip(src) {
                    *dst = src * scale;
                }
            }
            matmul_small::<R>((&mut scores, tp), (&q, d), (&kt, tp), rows, d, tp);
            for (i, row) in scores.chunks_exact_mut(tp).enumerate() {
                let row = &mut row[..t];
                if let Some((add, g)) = self.bias {
                    add(g, h, self.first + i, row);
                }
                softmax(row);
            }
            // Written in place into head h's output columns.
            matmul_small::<R>(
                (&mut self.out[h * d..], c),
                (&scores, tp),
                (&v, d),
                rows,
                t,
                d,
            );
        }
    }
}

impl Block<'_, '_> {
    /// [`Block::run`] with the products in bf16: per head, q (scaled) as bf16 rows and k packed as the
    /// kernel's `[head_dim / 2, tokens]` pairs; the scores' rows get the bias and the softmax in f32 and are
    /// rounded to bf16 rows; v is packed as pairs of consecutive tokens. Score rows are padded to whole
    /// vectors (pad scores -inf, so probability 0, and zero rows of v behind them): the softmax and the
    /// rounding then have no scalar tails, which cost ViT-L's 197-token rows as much as their 12 vectors.
    #[inline(always)]
    fn run_bf16(self) {
        let (t, d) = (self.tokens, self.head_dim);
        let (c, pairs) = (self.heads * d, d / 2);
        let rows = self.out.len() / c;
        let scale = (d as f32).powf(-0.5);
        let (tp, ldv) = (t.next_multiple_of(LANES), d.next_multiple_of(LANES));
        let mut q = vec![0u16; rows * d];
        let mut k = vec![0u32; t * pairs];
        let mut kt = vec![0u32; pairs * tp];
        let mut v = vec![0u32; tp / 2 * ldv];
        let mut scores = vec![0.0f32; rows * tp];
        let mut p = vec![0u16; rows * tp];
        let mut o = vec![0.0f32; rows * d];
        let zeros = vec![0.0f32; d];
        let row =
            |i: usize, which: usize, h: usize| &self.qkv[i * 3 * c + which * c + h * d..][..d];
        for h in 0..self.heads {
            for (i, q) in q.chunks_exact_mut(d).enumerate() {
                for (dst, &src) in q.iter_mut().zip(row(self.first + i, 0, h)) {
                    *dst = bf16::round(src * scale);
                }
            }
            for (j, k) in k.chunks_exact_mut(pairs).enumerate() {
                for (dst, two) in k.iter_mut().zip(row(j, 1, h).chunks_exact(2)) {
                    *dst = bf16::pair(two[0], two[1]);
                }
            }
            bf16::pack_pairs(&k, t, pairs, &mut kt, tp);
            for (jp, v) in v.chunks_exact_mut(ldv).take(t.div_ceil(2)).enumerate() {
                let even = row(2 * jp, 2, h);
                let odd = if 2 * jp + 1 < t {
                    row(2 * jp + 1, 2, h)
                } else {
                    &zeros
                };
                for ((dst, &e), &o) in v.iter_mut().zip(even).zip(odd) {
                    *dst = bf16::pair(e, o);
                }
            }
            bf16::matmul_packed(&q, (rows, d), &kt, tp, tp, &mut scores);
            for (i, (s, pr)) in scores
                .chunks_exact_mut(tp)
                .zip(p.chunks_exact_mut(tp))
                .enumerate()
            {
                if let Some((add, g)) = self.bias {
                    add(g, h, self.first + i, &mut s[..t]);
                }
                s[t..].fill(f32::NEG_INFINITY);
                // The softmax's last pass, the scaling, done as the probabilities are rounded.
                let inv = exp_shifted(s);
                for (dst, &src) in pr.iter_mut().zip(s.iter()) {
                    *dst = bf16::round(src * inv);
                }
            }
            bf16::matmul_packed(&p, (rows, tp), &v, ldv, d, &mut o);
            for (dst, src) in self.out.chunks_exact_mut(c).zip(o.chunks_exact(d)) {
                dst[h * d..][..d].copy_from_slice(src);
            }
        }
    }
}

/// Softmax of one row in place, with [`exp`] and lane-wise max and sum so every pass vectorises.
#[inline(always)]
fn softmax(row: &mut [f32]) {
    let inv = exp_shifted(row);
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// The softmax but for its scaling: `row[j] = e^(row[j] - max)`; returns `1 / Σ row[j]`.
#[inline(always)]
fn exp_shifted(row: &mut [f32]) -> f32 {
    // A plain comparison: `f32::max`'s NaN handling costs two more instructions in the reduction's chain.
    let max = simd::reduce(
        row,
        f32::NEG_INFINITY,
        |v| v,
        |a, b| if a > b { a } else { b },
    );
    for x in row.iter_mut() {
        *x = exp(*x - max);
    }
    1.0 / simd::reduce(row, 0.0, |v| v, |a, b| a + b)
}

/// `e^x` for `x <= 0` (softmax after the max is subtracted), within 2 ulp of the correctly rounded value down
/// to [`EXP_ZERO_BELOW`], 0 below it: branch-free (Cephes' polynomial after a round-to-nearest range
/// reduction), so loops over it vectorise, where libm's `expf` is a call per value.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let tiny = x < EXP_ZERO_BELOW;
    let x = x.clamp(-87.0, 0.0);
    // Round x / ln 2 to the nearest integer n by adding and subtracting 1.5 * 2^23.
    const SHIFT: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + SHIFT;
    let n = shifted - SHIFT;
    // r = x - n ln 2, with ln 2 split in two so the product is exact.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_66;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from shifted's bits, which are SHIFT's plus n: `n as i32` saturates, which LLVM does one lane at a
    // time.
    let v = e * f32::from_bits(
        shifted
            .to_bits()
            .wrapping_sub(SHIFT.to_bits())
            .wrapping_add(127)
            << 23,
    );
    if tiny {
        0.0
    } else {
        v
    }
}

/// Where [`exp`] returns 0. A probability of e^-64 (1.6e-28) next to the row's largest, e^0, changes no f32
/// sum, but a smaller one, scaled by the softmax and multiplied by v, makes denormal floats, and every
/// operation on one costs a microcode assist: Swin-L's shifted-window masks (-100) and large scores made its
/// attention 7x slower in the model than on benchmark data before this cut-off.
const EXP_ZERO_BELOW: f32 = -64.0;

/// `c[m, n] = a[m, k] b[k, n]`, each matrix given as (data, row stride), each sum over k in order. Tiles of
/// up to `R` rows (then 4, 2, 1 for the rest) by [`WIDE`] or [`LANES`] columns keep their sums in vector
/// registers; columns past the last whole tile go one at a time.
#[inline(always)]
fn matmul_small<const R: usize>(
    c: (&mut [f32], usize),
    a: (&[f32], usize),
    b: (&[f32], usize),
    m: usize,
    k: usize,
    n: usize,
) {
    let (c, ldc) = c;
    let (a, lda) = a;
    let (b, ldb) = b;
    assert!(m > 0 && k > 0 && n > 0);
    assert!(
        a.len() >= (m - 1) * lda + k
            && b.len() >= (k - 1) * ldb + n
            && c.len() >= (m - 1) * ldc + n
    );
    let mut i = 0;
    while i < m {
        let (c, a) = (&mut c[i * ldc..], &a[i * lda..]);
        let rows = match m - i {
            left if left >= R => {
                tile_rows::<R>((c, ldc), (a, lda), (b, ldb), k, n);
                R
            }
            4.. => {
                tile_rows::<4>((c, ldc), (a, lda), (b, ldb), k, n);
                4
            }
            2 | 3 => {
                tile_rows::<2>((c, ldc), (a, lda), (b, ldb), k, n);
                2
            }
            _ => {
                tile_rows::<1>((c, ldc), (a, lda), (b, ldb), k, n);
                1
            }
        };
        i += rows;
    }
}

/// Columns of the widest tile: two AVX-512 registers. On aarch64 [`LANES`], four NEON registers: 4 x 32 sums
/// would take all 32 of them, and the compiler spills them to the stack inside the loop over k.
const WIDE: usize = if cfg!(target_arch = "aarch64") {
    LANES
} else {
    2 * LANES
};

/// The first `R` rows of [`matmul_small`]'s `c`.
#[inline(always)]
fn tile_rows<const R: usize>(
    c: (&mut [f32], usize),
    a: (&[f32], usize),
    b: (&[f32], usize),
    k: usize,
    n: usize,
) {
    let (c, ldc) = c;
    let (a, lda) = a;
    let (b, ldb) = b;
    let mut j = 0;
    while j + WIDE <= n {
        tile::<R, WIDE>((&mut c[j..], ldc), (a, lda), (&b[j..], ldb), k);
        j += WIDE;
    }
    if j + LANES <= n {
        tile::<R, LANES>((&mut c[j..], ldc), (a, lda), (&b[j..], ldb), k);
        j += LANES;
    }
    for r in 0..R {
        for jj in j..n {
            let mut s = 0.0f32;
            for p in 0..k {
                s += a[r * lda + p] * b[p * ldb + jj];
            }
            c[r * ldc + jj] = s;
        }
    }
}

/// The `R x L` block at the start of `c`.
#[inline(always)]
fn tile<const R: usize, const L: usize>(
    c: (&mut [f32], usize),
    a: (&[f32], usize),
    b: (&[f32], usize),
    k: usize,
) {
    let (c, ldc) = c;
    let (a, lda) = a;
    let (b, ldb) = b;
    let mut acc = [[0.0f32; L]; R];
    let rows: [&[f32]; R] = std::array::from_fn(|r| &a[r * lda..r * lda + k]);
    for p in 0..k {
        let bv: [f32; L] = b[p * ldb..p * ldb + L].try_into().unwrap();
        for r in 0..R {
            let av = rows[r][p];
            for l in 0..L {
                acc[r][l] += av * bv[l];
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        c[r * ldc..r * ldc + L].copy_from_slice(acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_libm() {
        let mut worst = 0.0f64;
        for i in 0..=64_000 {
            let x = -(i as f32) * 1e-3;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "max relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(EXP_ZERO_BELOW - 1e-3), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }

    /// Tiles of 4 and of 8 rows give the same sums, at row counts that leave 8-, 4-, 2- and 1-row tiles and
    /// column counts that leave narrow tiles and single columns.
    #[test]
    fn small_matmul_matches_naive_at_tile_edges() {
        for (m, k, n) in [
            (1, 1, 1),
            (5, 3, 17),
            (4, 64, 16),
            (7, 32, 49),
            (15, 16, 50),
            (197, 64, 33),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut c = vec![f32::NAN; m * n];
            matmul_small::<4>((&mut c, n), (&a, k), (&b, n), m, k, n);
            let mut tall = vec![f32::NAN; m * n];
            matmul_small::<8>((&mut tall, n), (&a, k), (&b, n), m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                    assert!((c[i * n + j] - want).abs() < 1e-4, "{m}x{k}x{n} at {i},{j}");
                    assert_eq!(c[i * n + j].to_bits(), tall[i * n + j].to_bits());
                }
            }
        }
    }

    #[test]
    fn matches_naive_attention_with_bias() {
        let (g, t, h, d) = (2, 5, 3, 4);
        let qkv: Vec<f32> = (0..g * t * 3 * h * d)
            .map(|i| (i as f32 * 0.5).sin())
            .collect();
        let b = |gi: usize, hi: usize, i: usize, j: usize| (gi + hi + i * t + j) as f64 * 0.01;
        let add = |gi: usize, hi: usize, i: usize, s: &mut [f32]| {
            for (j, v) in s.iter_mut().enumerate() {
                *v += b(gi, hi, i, j) as f32;
            }
        };
        let out = attention(&qkv, g, t, h, d, Some(&add), Products::F32);
        let want = naive(&qkv, (g, t, h, d), b, |v| v);
        for (k, (&got, &want)) in out.iter().zip(&want).enumerate() {
            assert!((got as f64 - want).abs() < 1e-5, "{k}: {got} vs {want}");
        }
    }

    /// Naive attention in f64 over operands first passed through `r` (q after its scale), probabilities
    /// through `r` too: with `r` rounding to bf16, what [`Products::Bf16`] computes up to f32 sums.
    fn naive(
        qkv: &[f32],
        (g, t, h, d): (usize, usize, usize, usize),
        bias: impl Fn(usize, usize, usize, usize) -> f64,
        r: impl Fn(f64) -> f64,
    ) -> Vec<f64> {
        let c = h * d;
        let at = |gi: usize, i: usize, which: usize, hi: usize, dd: usize| {
            qkv[(gi * t + i) * 3 * c + which * c + hi * d + dd] as f64
        };
        let scale = (d as f32).powf(-0.5);
        let mut out = vec![0.0; g * t * c];
        for gi in 0..g {
            for hi in 0..h {
                for i in 0..t {
                    let s: Vec<f64> = (0..t)
                        .map(|j| {
                            (0..d)
                                .map(|dd| {
                                    r((at(gi, i, 0, hi, dd) as f32 * scale) as f64)
                                        * r(at(gi, j, 1, hi, dd))
                                })
                                .sum::<f64>()
                                + bias(gi, hi, i, j)
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    for dd in 0..d {
                        out[(gi * t + i) * c + hi * d + dd] = (0..t)
                            .map(|j| r((s[j] - m).exp() / z) * r(at(gi, j, 2, hi, dd)))
                            .sum();
                    }
                }
            }
        }
        out
    }

    /// bf16 products: the bf16-rounded operands' attention, at an odd token count (padded rows and a zero
    /// row of v) with a bias, split into row blocks; where this process has no bf16 kernel, exactly the f32
    /// products.
    #[test]
    fn bf16_products_match_rounded_operands() {
        let (g, t, h, d) = (2, 21, 3, 8);
        let c = h * d;
        let qkv: Vec<f32> = (0..g * t * 3 * c)
            .map(|i| (i as f32 * 0.37).sin() * 2.0)
            .collect();
        let b = |gi: usize, hi: usize, i: usize, j: usize| ((gi + hi + i * t + j) % 7) as f64 * 0.1;
        let add = |gi: usize, hi: usize, i: usize, s: &mut [f32]| {
            for (j, v) in s.iter_mut().enumerate() {
                *v += b(gi, hi, i, j) as f32;
            }
        };
        let narrow = attention(&qkv, g, t, h, d, Some(&add), Products::Bf16);
        let wide = attention(&qkv, g, t, h, d, Some(&add), Products::F32);
        if !bf16::available() {
            assert_eq!(narrow, wide);
        } else {
            check_bf16(&narrow, &qkv, (g, t, h, d), b);
        }
    }

    fn check_bf16(
        narrow: &[f32],
        qkv: &[f32],
        (g, t, h, d): (usize, usize, usize, usize),
        b: impl Fn(usize, usize, usize, usize) -> f64 + Copy,
    ) {
        let round = |v: f64| half::bf16::from_f32(v as f32).to_f32() as f64;
        let want = naive(qkv, (g, t, h, d), b, round);
        let exact = naive(qkv, (g, t, h, d), b, |v| v);
        let (mut worst, mut moved) = (0.0f64, 0.0f64);
        for ((&got, &want), &exact) in narrow.iter().zip(&want).zip(&exact) {
            worst = worst.max((got as f64 - want).abs());
            moved = moved.max((got as f64 - exact).abs());
        }
        // About 3e-7 here; a probability rounded the other way (f32 softmax vs f64) would move an output by
        // ~2^-9 of its share, still far below the bf16 rounding's own effect.
        assert!(worst < 2e-5, "{worst:e} from the bf16 operands' attention");
        assert!(moved > 2e-3, "no bf16 rounding visible ({moved:e})");
    }
}
