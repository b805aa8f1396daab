//! The NEON micro-kernel of `ops::packed`, the twin of `x86_packed.rs`: a tile of up to `MR` rows times one
//! panel of `NR` = 32 output channels, read from the same panels (the file format does not depend on the
//! CPU). Each output is one chain of FMLA over the depth in `k` order, as in the AVX-512 tile, so the two
//! compute the same bits; the portable reference, `ops::packed::tile_portable`, multiplies and adds
//! separately (two roundings per step instead of one).
//!
//! Register blocking: a row of a panel is 8 NEON registers, so keeping every output of the tile in
//! registers over the whole depth, as AVX-512 does with 2 x 12, fits only 3 rows in the 32 registers.
//! Instead the tile walks the panel in strips of channels, each accumulated over the whole depth before the
//! next, as wide as the row count leaves room for:
//! - 7 to 12 rows: strips of 8 channels: 2 x m accumulators (24 at 12 rows) and 2 weight registers;
//! - 3 to 6 rows: strips of 16: 4 x m accumulators, 4 weight registers;
//! - 1 or 2 rows: the whole row: 8 x m accumulators, 8 weight registers.
//!
//! Every shape keeps at least 8 accumulators in flight, which hides FMLA's latency (4 cycles, 2 pipes on a
//! Cortex-A76). The rows of `x` are read where they are (row-major, as the AVX-512 tile reads them): one
//! scalar per row and depth, multiplied by element (`FMLA v.4s, v.4s, v.s[0]`) with no broadcast;
//! narrower strips re-read the tile's rows once per strip, from L1.

use std::arch::aarch64::*;

use crate::ops::packed::{MR, NR};

/// `acc[i][j] = Σ_k x[i * inp + k] * w[k * NR + j]` for `m = acc.len() / NR` rows of `x`.
///
/// Panics unless the slices hold `m * inp`, `inp * NR` and `m * NR` values (`1 <= m <= MR`).
pub(crate) fn tile(m: usize, x: &[f32], w: &[f32], inp: usize, acc: &mut [f32]) {
    assert!((1..=MR).contains(&m), "tile of {m} rows");
    assert!(x.len() >= m * inp && w.len() >= inp * NR && acc.len() >= m * NR);
    // SAFETY: NEON is part of the aarch64 baseline; the kernel reads x[..m * inp] and w[..inp * NR] and
    // writes acc[..m * NR], all within the slices (checked above), and each V below divides NR / 4.
    unsafe {
        match m {
            1 => kernel::<1, 8>(x, w, inp, acc),
            2 => kernel::<2, 8>(x, w, inp, acc),
            3 => kernel::<3, 4>(x, w, inp, acc),
            4 => kernel::<4, 4>(x, w, inp, acc),
            5 => kernel::<5, 4>(x, w, inp, acc),
            6 => kernel::<6, 4>(x, w, inp, acc),
            7 => kernel::<7, 2>(x, w, inp, acc),
            8 => kernel::<8, 2>(x, w, inp, acc),
            9 => kernel::<9, 2>(x, w, inp, acc),
            10 => kernel::<10, 2>(x, w, inp, acc),
            11 => kernel::<11, 2>(x, w, inp, acc),
            _ => kernel::<12, 2>(x, w, inp, acc),
        }
    }
}

/// `M` rows in strips of `V` registers (`4 V` channels) of the panel.
///
/// # Safety
/// `x` holds `M * inp` values, `w` `inp * NR`, `acc` `M * NR`; `4 V` divides `NR`.
#[target_feature(enable = "neon")]
unsafe fn kernel<const M: usize, const V: usize>(
    x: &[f32],
    w: &[f32],
    inp: usize,
    acc: &mut [f32],
) {
    let (xb, wp) = (x.as_ptr(), w.as_ptr());
    let out = acc.as_mut_ptr();
    for s in (0..NR).step_by(4 * V) {
        let mut c = [[vdupq_n_f32(0.0); V]; M];
        for k in 0..inp {
            // SAFETY: k < inp and s + 4 V <= NR, so these lie in the panel's row k.
            let wv: [float32x4_t; V] =
                std::array::from_fn(|v| unsafe { vld1q_f32(wp.add(k * NR + s + 4 * v)) });
            for (i, ci) in c.iter_mut().enumerate() {
                // SAFETY: i < M and k < inp, so x[i * inp + k] lies in `x`.
                let a = unsafe { *xb.add(i * inp + k) };
                for (cv, wv) in ci.iter_mut().zip(&wv) {
                    *cv = vfmaq_n_f32(*cv, *wv, a);
                }
            }
        }
        for (i, ci) in c.iter().enumerate() {
            for (v, cv) in ci.iter().enumerate() {
                // SAFETY: i < M and s + 4 v + 4 <= NR, so this lies in acc's row i.
                unsafe { vst1q_f32(out.add(i * NR + s + 4 * v), *cv) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::packed::tile_portable;

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + 1.0) * seed).sin()).collect()
    }

    /// Every row count, depths from 1 (and not multiples of 4) to past 128: bit for bit the `k`-ordered
    /// chain of fused multiply-adds (what the AVX-512 tile computes), and within the rounding of that and
    /// the portable tile's separate multiplies and adds: each is within γ(n) Σ|terms| of the exact sum
    /// (Higham's bound, unit roundoff 2⁻²⁴). NEON is in every aarch64 CPU, so this runs whatever
    /// `WSTREAM_KERNELS` says.
    #[test]
    fn neon_tile_matches_the_portable_one() {
        let u = f64::from(f32::EPSILON) / 2.0;
        for m in 1..=MR {
            for inp in [1, 2, 3, 5, 8, 127, 128, 129] {
                let x = values(m * inp, 0.37 + m as f32 * 0.01);
                let w = values(inp * NR, 0.11);
                // The tile must not read `acc`: NaN there would show.
                let (mut got, mut reference) = (vec![f32::NAN; m * NR], vec![f32::NAN; m * NR]);
                tile(m, &x, &w, inp, &mut got);
                tile_portable(&x, &w, inp, &mut reference);
                let n = inp as f64;
                let gamma = n * u / (1.0 - n * u);
                for i in 0..m {
                    for j in 0..NR {
                        let terms = (0..inp).map(|k| (x[i * inp + k], w[k * NR + j]));
                        let fused = terms.clone().fold(0.0f32, |c, (x, w)| x.mul_add(w, c));
                        let mag = terms.fold(0.0f64, |s, (x, w)| {
                            s + f64::from(x).abs() * f64::from(w).abs()
                        });
                        let (g, r) = (got[i * NR + j], reference[i * NR + j]);
                        let at = format!("m {m}, depth {inp}, ({i}, {j})");
                        assert_eq!(g.to_bits(), fused.to_bits(), "{at}: {g} vs fused {fused}");
                        assert!(
                            f64::from((g - r).abs()) <= 2.0 * gamma * mag,
                            "{at}: {g} vs portable {r}, beyond 2 γ Σ|terms| = {}",
                            2.0 * gamma * mag
                        );
                    }
                }
            }
        }
    }
}
