//! Multi-head self-attention on small per-head matrices (ViT: 197 tokens x 64; Swin: 49-token windows x 32).
//!
//! A general GEMM spends most of its time packing and dispatching at these sizes (about 18 GFLOP/s on Swin-L's
//! windows, measured). Here each (sequence, head) gathers q, kᵀ and v into small dense buffers and multiplies
//! them with a register-tiled kernel that [`simd::run`] compiles for the CPU's widest vectors.

use rayon::prelude::*;

use super::simd::{self, Kernel, LANES};

/// Adds to one `[tokens, tokens]` score matrix, given (group, head).
pub type ScoreBias<'a> = dyn Fn(usize, usize, &mut [f32]) + Sync + 'a;

/// Multi-head self-attention over `groups` independent sequences of `tokens` tokens (batch items, or Swin
/// windows), reading q, k, v from a fused qkv projection `[groups * tokens, 3 * heads * head_dim]` laid out
/// (3, heads, head_dim) per token as timm's `qkv` Linear produces. `bias(group, head, scores)` may add to each
/// `[tokens, tokens]` score matrix before the softmax (Swin's relative position bias and mask). Returns
/// `[groups * tokens, heads * head_dim]`, heads concatenated as timm's `transpose(1, 2).reshape`. q is scaled
/// by `head_dim^-0.5` before `q kᵀ`, as timm's unfused path does.
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
    let per_head: Vec<Vec<f32>> = (0..groups * heads)
        .into_par_iter()
        .map(|gh| {
            let (g, h) = (gh / heads, gh % heads);
            simd::run(Head {
                qkv: &qkv[g * tokens * 3 * c..(g + 1) * tokens * 3 * c],
                head: h,
                heads,
                tokens,
                head_dim,
                bias: bias.map(|b| (b, g)),
            })
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

/// One head of one sequence: `softmax(q kᵀ * scale + bias) v`, `[tokens, head_dim]`.
struct Head<'a, 'b> {
    /// The sequence's `[tokens, 3 * heads * head_dim]` rows.
    qkv: &'a [f32],
    head: usize,
    heads: usize,
    tokens: usize,
    head_dim: usize,
    bias: Option<(&'a ScoreBias<'b>, usize)>,
}

impl Kernel for Head<'_, '_> {
    type Output = Vec<f32>;

    #[inline(always)]
    fn run(self) -> Vec<f32> {
        let (t, d) = (self.tokens, self.head_dim);
        // kᵀ's rows (and so the score rows) padded to whole vectors: the pad columns score 0 and are dropped.
        let tp = t.next_multiple_of(LANES);
        let c = self.heads * d;
        let scale = (d as f32).powf(-0.5);
        let at = |i: usize, which: usize| {
            let s = i * 3 * c + which * c + self.head * d;
            &self.qkv[s..s + d]
        };
        let mut q = vec![0.0f32; t * d];
        let mut kt = vec![0.0f32; d * tp];
        let mut v = vec![0.0f32; t * d];
        for i in 0..t {
            for (dst, src) in q[i * d..(i + 1) * d].iter_mut().zip(at(i, 0)) {
                *dst = src * scale;
            }
            for (p, src) in at(i, 1).iter().enumerate() {
                kt[p * tp + i] = *src;
            }
            v[i * d..(i + 1) * d].copy_from_slice(at(i, 2));
        }
        let mut scores = vec![0.0f32; t * tp];
        matmul_small(&mut scores, &q, &kt, t, d, tp);
        for i in 1..t {
            scores.copy_within(i * tp..i * tp + t, i * t);
        }
        scores.truncate(t * t);
        if let Some((add, g)) = self.bias {
            add(g, self.head, &mut scores);
        }
        for row in scores.chunks_exact_mut(t) {
            softmax(row);
        }
        let mut out = vec![0.0f32; t * d];
        matmul_small(&mut out, &scores, &v, t, t, d);
        out
    }
}

/// Softmax of one row in place, with [`exp`] and lane-wise max and sum so every pass vectorises.
#[inline(always)]
fn softmax(row: &mut [f32]) {
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
    let inv = 1.0 / simd::reduce(row, 0.0, |v| v, |a, b| a + b);
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// `e^x` for `x <= 0` (softmax after the max is subtracted), within 2 ulp of the correctly rounded value down
/// to -87, below which it returns e^-87 rather than 0: branch-free (Cephes' polynomial after a
/// round-to-nearest range reduction), so loops over it vectorise, where libm's `expf` is a call per value.
#[inline(always)]
fn exp(x: f32) -> f32 {
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
    e * f32::from_bits(
        shifted
            .to_bits()
            .wrapping_sub(SHIFT.to_bits())
            .wrapping_add(127)
            << 23,
    )
}

/// `c[m, n] = a[m, k] b[k, n]`, all dense row-major, each sum over k in order. Tiles of up to [`ROWS`] rows
/// by 2 x [`LANES`] or [`LANES`] columns keep their sums in vector registers; columns past the last whole
/// tile go one at a time.
#[inline(always)]
fn matmul_small(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    let mut i = 0;
    while i < m {
        let rows = ROWS.min(m - i);
        match rows {
            ROWS => tile_rows::<ROWS>(c, a, b, i, k, n),
            3 => tile_rows::<3>(c, a, b, i, k, n),
            2 => tile_rows::<2>(c, a, b, i, k, n),
            _ => tile_rows::<1>(c, a, b, i, k, n),
        }
        i += rows;
    }
}

const ROWS: usize = 4;

/// Rows `i..i + R` of [`matmul_small`].
#[inline(always)]
fn tile_rows<const R: usize>(c: &mut [f32], a: &[f32], b: &[f32], i: usize, k: usize, n: usize) {
    let mut j = 0;
    while j + 2 * LANES <= n {
        tile::<R, { 2 * LANES }>(c, a, b, i, j, k, n);
        j += 2 * LANES;
    }
    if j + LANES <= n {
        tile::<R, LANES>(c, a, b, i, j, k, n);
        j += LANES;
    }
    for r in 0..R {
        for jj in j..n {
            let mut s = 0.0f32;
            for p in 0..k {
                s += a[(i + r) * k + p] * b[p * n + jj];
            }
            c[(i + r) * n + jj] = s;
        }
    }
}

/// The `R x L` block of `c` at (i, j).
#[inline(always)]
fn tile<const R: usize, const L: usize>(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    i: usize,
    j: usize,
    k: usize,
    n: usize,
) {
    let mut acc = [[0.0f32; L]; R];
    let rows: [&[f32]; R] = std::array::from_fn(|r| &a[(i + r) * k..(i + r + 1) * k]);
    for p in 0..k {
        let bv: [f32; L] = b[p * n + j..p * n + j + L].try_into().unwrap();
        for r in 0..R {
            let av = rows[r][p];
            for l in 0..L {
                acc[r][l] += av * bv[l];
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        c[(i + r) * n + j..(i + r) * n + j + L].copy_from_slice(acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_libm() {
        let mut worst = 0.0f64;
        for i in 0..=86_900 {
            let x = -(i as f32) * 1e-3;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "max relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn small_matmul_matches_naive_at_tile_edges() {
        for (m, k, n) in [
            (1, 1, 1),
            (5, 3, 17),
            (4, 64, 16),
            (7, 32, 49),
            (197, 64, 33),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut c = vec![f32::NAN; m * n];
            matmul_small(&mut c, &a, &b, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                    assert!((c[i * n + j] - want).abs() < 1e-4, "{m}x{k}x{n} at {i},{j}");
                }
            }
        }
    }

    #[test]
    fn matches_naive_attention_with_bias() {
        let (g, t, h, d) = (2, 5, 3, 4);
        let c = h * d;
        let qkv: Vec<f32> = (0..g * t * 3 * c).map(|i| (i as f32 * 0.5).sin()).collect();
        let add = |gi: usize, hi: usize, s: &mut [f32]| {
            s.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v += (gi + hi + i) as f32 * 0.01)
        };
        let out = attention(&qkv, g, t, h, d, Some(&add));
        let at = |gi: usize, i: usize, which: usize, hi: usize, dd: usize| {
            qkv[(gi * t + i) * 3 * c + which * c + hi * d + dd]
        };
        for gi in 0..g {
            for hi in 0..h {
                for i in 0..t {
                    let s: Vec<f32> = (0..t)
                        .map(|j| {
                            (0..d)
                                .map(|dd| at(gi, i, 0, hi, dd) * at(gi, j, 1, hi, dd))
                                .sum::<f32>()
                                / (d as f32).sqrt()
                                + (gi + hi + i * t + j) as f32 * 0.01
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f32::MIN, f32::max);
                    let e: Vec<f32> = s.iter().map(|v| (v - m).exp()).collect();
                    let z: f32 = e.iter().sum();
                    for dd in 0..d {
                        let want: f32 = (0..t).map(|j| e[j] / z * at(gi, j, 2, hi, dd)).sum();
                        let got = out[(gi * t + i) * c + hi * d + dd];
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{gi} {hi} {i} {dd}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
