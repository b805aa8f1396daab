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
//! - 7 to 12 rows: strips of 8 channels: 2 x m accumulators (24 at 12 rows), 2 weight registers and one
//!   activation register per 4 rows (29 of 32 at 12 rows): 24 FMLA per 5 loads, BLIS's 8x12 ratio;
//! - 3 to 6 rows: strips of 16: 4 x m accumulators, 4 weight registers, 1 or 2 activation registers;
//! - 1 or 2 rows: the whole row: 8 x m accumulators, 8 weight registers, 1 activation register.
//!
//! Every shape keeps at least 8 accumulators in flight, which hides FMLA's latency (4 cycles, 2 pipes on a
//! Cortex-A76). The activations of 4 rows at one depth are adjacent in `xp`, so one load feeds all four
//! through the lane form of FMLA (`vfmaq_laneq_f32`) with no broadcast; narrower strips re-read the tile's
//! rows once per strip, from L1.

use std::arch::aarch64::*;

use crate::ops::packed::{MR, NR};

/// `acc[i][j] = Σ_k xp[k * m + i] * w[k * NR + j]` for `m = acc.len() / NR` rows; with `add`, `acc` += that
/// (the next slice of the depth).
///
/// Panics unless the slices hold `inp * m`, `inp * NR` and `m * NR` values (`1 <= m <= MR`).
pub(crate) fn tile(m: usize, xp: &[f32], w: &[f32], inp: usize, acc: &mut [f32], add: bool) {
    assert!((1..=MR).contains(&m), "tile of {m} rows");
    assert!(xp.len() >= inp * m && w.len() >= inp * NR && acc.len() >= m * NR);
    // SAFETY: NEON is part of the aarch64 baseline; the kernel reads xp[..inp * m] and w[..inp * NR] and
    // writes acc[..m * NR], all within the slices (checked above), and each V below divides NR / 4.
    unsafe {
        match m {
            1 => kernel::<1, 8>(xp, w, inp, acc, add),
            2 => kernel::<2, 8>(xp, w, inp, acc, add),
            3 => kernel::<3, 4>(xp, w, inp, acc, add),
            4 => kernel::<4, 4>(xp, w, inp, acc, add),
            5 => kernel::<5, 4>(xp, w, inp, acc, add),
            6 => kernel::<6, 4>(xp, w, inp, acc, add),
            7 => kernel::<7, 2>(xp, w, inp, acc, add),
            8 => kernel::<8, 2>(xp, w, inp, acc, add),
            9 => kernel::<9, 2>(xp, w, inp, acc, add),
            10 => kernel::<10, 2>(xp, w, inp, acc, add),
            11 => kernel::<11, 2>(xp, w, inp, acc, add),
            _ => kernel::<12, 2>(xp, w, inp, acc, add),
        }
    }
}

/// `M` rows in strips of `V` registers (`4 V` channels) of the panel.
///
/// # Safety
/// `xp` holds `inp * M` values, `w` `inp * NR`, `acc` `M * NR`; `4 V` divides `NR`.
#[target_feature(enable = "neon")]
unsafe fn kernel<const M: usize, const V: usize>(
    xp: &[f32],
    w: &[f32],
    inp: usize,
    acc: &mut [f32],
    add: bool,
) {
    let (x, wp) = (xp.as_ptr(), w.as_ptr());
    let out = acc.as_mut_ptr();
    for s in (0..NR).step_by(4 * V) {
        let mut c = [[vdupq_n_f32(0.0); V]; M];
        if add {
            for (i, ci) in c.iter_mut().enumerate() {
                for (v, cv) in ci.iter_mut().enumerate() {
                    // SAFETY: i < M and s + 4 v + 4 <= NR, so this lies in acc's row i.
                    *cv = unsafe { vld1q_f32(out.add(i * NR + s + 4 * v)) };
                }
            }
        }
        for k in 0..inp {
            // SAFETY: k < inp and s + 4 V <= NR, so these lie in the panel's row k.
            let wv: [float32x4_t; V] =
                std::array::from_fn(|v| unsafe { vld1q_f32(wp.add(k * NR + s + 4 * v)) });
            for g in (0..M).step_by(4) {
                // SAFETY: rows g..min(g + 4, M) at depth k: xp[k * M + g..k * M + min(g + 4, M)].
                let a = unsafe { load_rows(x.add(k * M + g), M - g) };
                for (l, ci) in c[g..M.min(g + 4)].iter_mut().enumerate() {
                    for (cv, wv) in ci.iter_mut().zip(&wv) {
                        *cv = fma_lane(*cv, *wv, a, l);
                    }
                }
            }
        }
        for (i, ci) in c.iter().enumerate() {
            for (v, cv) in ci.iter().enumerate() {
                // SAFETY: as for the loads from acc above.
                unsafe { vst1q_f32(out.add(i * NR + s + 4 * v), *cv) };
            }
        }
    }
}

/// The activations of `min(n, 4)` rows at one depth in the low lanes (the others zero), reading only those:
/// the last rows of the last depth step are the end of `xp`.
///
/// # Safety
/// `p` points at `min(n, 4)` readable values, `n >= 1`.
#[inline(always)]
unsafe fn load_rows(p: *const f32, n: usize) -> float32x4_t {
    // SAFETY: each arm reads min(n, 4) values from p (the caller's guarantee).
    unsafe {
        match n {
            1 => vsetq_lane_f32::<0>(*p, vdupq_n_f32(0.0)),
            2 => vcombine_f32(vld1_f32(p), vdup_n_f32(0.0)),
            3 => vld1q_lane_f32::<2>(p.add(2), vcombine_f32(vld1_f32(p), vdup_n_f32(0.0))),
            _ => vld1q_f32(p),
        }
    }
}

/// `c + w * a[lane]` with one rounding (FMLA by element); `lane` is a constant once the row loop is unrolled.
#[target_feature(enable = "neon")]
#[inline]
fn fma_lane(c: float32x4_t, w: float32x4_t, a: float32x4_t, lane: usize) -> float32x4_t {
    match lane {
        0 => vfmaq_laneq_f32::<0>(c, w, a),
        1 => vfmaq_laneq_f32::<1>(c, w, a),
        2 => vfmaq_laneq_f32::<2>(c, w, a),
        _ => vfmaq_laneq_f32::<3>(c, w, a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::packed::tile_portable;

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + 1.0) * seed).sin()).collect()
    }

    /// Every row count, depths from 1 (and not multiples of 4) past a slice of `linear_packed`, with and
    /// without `add`: bit for bit the `k`-ordered chain of fused multiply-adds (what the AVX-512 tile
    /// computes), and within the rounding of that and the portable tile's separate multiplies and adds:
    /// each is within γ(n + 1) Σ|terms| of the exact sum (Higham's bound, unit roundoff 2⁻²⁴). NEON is in
    /// every aarch64 CPU, so this runs whatever `WSTREAM_KERNELS` says.
    #[test]
    fn neon_tile_matches_the_portable_one() {
        let u = f64::from(f32::EPSILON) / 2.0;
        for m in 1..=MR {
            for inp in [1, 2, 3, 5, 8, 127, 128, 129] {
                let xp = values(inp * m, 0.37 + m as f32 * 0.01);
                let w = values(inp * NR, 0.11);
                let init = values(m * NR, 0.53);
                for add in [false, true] {
                    // Without `add` the tile must not read `acc`: NaN there would show.
                    let start = if add {
                        init.clone()
                    } else {
                        vec![f32::NAN; m * NR]
                    };
                    let (mut got, mut reference) = (start.clone(), start);
                    tile(m, &xp, &w, inp, &mut got, add);
                    tile_portable(&xp, &w, inp, &mut reference, add);
                    let n = (inp + 1) as f64;
                    let gamma = n * u / (1.0 - n * u);
                    for i in 0..m {
                        for j in 0..NR {
                            let c0 = if add { init[i * NR + j] } else { 0.0 };
                            let terms = (0..inp).map(|k| (xp[k * m + i], w[k * NR + j]));
                            let fused = terms.clone().fold(c0, |c, (x, w)| x.mul_add(w, c));
                            let mag = terms.fold(f64::from(c0.abs()), |s, (x, w)| {
                                s + f64::from(x).abs() * f64::from(w).abs()
                            });
                            let (g, r) = (got[i * NR + j], reference[i * NR + j]);
                            let at = format!("m {m}, depth {inp}, add {add}, ({i}, {j})");
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
}
