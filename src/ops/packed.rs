//! Linear layers over kernel-ready weights: the `[out, in]` matrix stored (by `wstream convert --layout
//! packed`) as panels of [`NR`] output channels, `panels[p][k][j] = w[p * NR + j][k]`, so the micro-kernel
//! reads each panel from the mapping front to back: no copy, no repacking per call.
//!
//! A product `y = x wᵀ` runs as tiles of up to [`MR`] rows of `x` by one panel: every tile broadcasts its
//! rows' values straight from `x` (no interleaved copy of it), accumulates over the whole depth in registers
//! (no partial sums stored and reloaded) and leaves through the [`Epilogue`] (bias, GELU, layer scale, residual add) straight into
//! `y`, while it is still in L1: no extra pass over the activation. The rows are split between the pool's
//! threads; each thread walks every panel, so a panel comes from memory once and is reused from its L2
//! by every tile of that thread's rows.
//!
//! The AVX-512 kernel and its AVX2 form are in `simd/x86_packed.rs`, their NEON twin (the same panels) in `simd/neon_packed.rs`;
//! [`tile_portable`] is the reference beside them, run on any other CPU (and under
//! `WSTREAM_KERNELS=portable`), compiled for AVX2 where present.

use rayon::prelude::*;

use super::activation::gelu1;
use super::simd::{self, Kernel};

/// Output channels per panel: two AVX-512 registers of f32. Part of the file format (a packed file records
/// it and is refused by a build whose kernel uses another).
pub const NR: usize = 32;
/// Rows of `x` per tile: 2 x 12 accumulators, two weight registers and a broadcast fit AVX-512's 32
/// registers. A choice of this build only, not recorded in files.
pub const MR: usize = 12;
/// The `geometry` a packed file's `wstream.packed` metadata records, checked when it is opened.
pub const GEOMETRY: &str =
    "f32 panels of 32 output channels: [out / 32, in, 32], w[32 p + j][k] at [p][k][j]";

/// Whether an `[out, inp]` matrix can be stored packed: whole panels only (the file then holds the same
/// bytes as the source, permuted; a remainder would need padding).
pub fn packable(out: usize, inp: usize) -> bool {
    out > 0 && inp > 0 && out.is_multiple_of(NR)
}

/// The shape a packed `[out, inp]` matrix has in the file's header: `[out / NR, inp, NR]`.
pub fn packed_shape(out: usize, inp: usize) -> [usize; 3] {
    [out / NR, inp, NR]
}

/// Packed elements `start..start + dst.len()` of the `[out, inp]` row-major matrix `src`.
pub fn pack_range(src: &[f32], inp: usize, start: usize, dst: &mut [f32]) {
    for (e, d) in (start..).zip(dst) {
        let (p, rem) = (e / (inp * NR), e % (inp * NR));
        *d = src[(p * NR + rem % NR) * inp + rem / NR];
    }
}

/// Row-major elements `start..start + dst.len()` of the `[out, inp]` matrix whose panels are `panels`: the
/// inverse of [`pack_range`].
pub fn unpack_range(panels: &[f32], inp: usize, start: usize, dst: &mut [f32]) {
    for (e, d) in (start..).zip(dst) {
        let (o, k) = (e / inp, e % inp);
        *d = panels[(o / NR) * inp * NR + k * NR + o % NR];
    }
}

/// What happens to each product value on its way out of the kernel, in this order: `+ bias[o]`, GELU,
/// `* scale[o]`, then stored, or added to what `y` holds (a residual).
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub gelu: bool,
    pub scale: Option<&'a [f32]>,
    pub accumulate: bool,
}

/// `y = epilogue(x × wᵀ)` for `x` `[rows, inp]`, `y` `[rows, out]` and `w` the packed `[out, inp]` matrix.
pub fn linear_packed(
    x: &[f32],
    rows: usize,
    panels: &[f32],
    out: usize,
    y: &mut [f32],
    ep: Epilogue,
) {
    assert!(
        out.is_multiple_of(NR) && out > 0,
        "{out} outputs are not whole panels"
    );
    let inp = panels.len() / out;
    assert_eq!(
        panels.len(),
        out * inp,
        "panels are not [out / {NR}, in, {NR}]"
    );
    assert_eq!(x.len(), rows * inp, "input is not [rows, {inp}]");
    assert_eq!(y.len(), rows * out, "output is not [rows, {out}]");
    for v in [ep.bias, ep.scale].into_iter().flatten() {
        assert_eq!(v.len(), out, "epilogue vector length");
    }
    if rows == 0 {
        return;
    }
    let parts = rayon::current_num_threads().min(rows.div_ceil(MR)).max(1);
    // Even shares, not whole tiles: 49 rows split 25 + 24 (each ending in a short tile), not 36 + 13.
    let per = rows.div_ceil(parts);
    y.par_chunks_mut(per * out)
        .zip(x.par_chunks(per * inp))
        .for_each(|(yp, xp)| part(xp, xp.len() / inp, inp, panels, out, yp, ep));
}

/// One thread's rows: every panel times every tile of rows, each tile over the whole depth in registers,
/// then through the epilogue. A panel is read from memory once and from this core's L2 by the other tiles;
/// the rows of `x` are read in place (no interleaved copy, no buffer to fill).
fn part(
    x: &[f32],
    rows: usize,
    inp: usize,
    panels: &[f32],
    out: usize,
    y: &mut [f32],
    ep: Epilogue,
) {
    let panel = inp * NR;
    #[cfg(target_arch = "x86_64")]
    if !simd::has_avx512() && simd::has_avx2() {
        let mut partial = vec![0.0f32; rows * NR];
        for (p, w) in panels.chunks_exact(panel).enumerate() {
            let next = panels.get(panel * (p + 1)..panel * (p + 2)).unwrap_or(&[]);
            let dst = tile_out(&mut y[p * NR..(rows - 1) * out + (p + 1) * NR], out, p, ep);
            simd::x86_packed::panel_avx2(rows, x, w, inp, next, &mut partial, dst);
        }
        return;
    }
    let tiles = tiles(rows);
    let mut acc = [0.0f32; MR * NR];
    for (p, w) in panels.chunks_exact(panel).enumerate() {
        // The next panel, a share per tile, asked for while this one computes from L2 (the first tile of
        // each panel would otherwise wait on memory).
        let next = panels.get(panel * (p + 1)..panel * (p + 2)).unwrap_or(&[]);
        for (t, &(r0, m)) in tiles.iter().enumerate() {
            let share = next.len().div_ceil(tiles.len());
            let ahead = next.get(t * share..).unwrap_or(&[]);
            let ahead = &ahead[..share.min(ahead.len())];
            let xt = &x[r0 * inp..(r0 + m) * inp];
            // The x86 kernels apply the epilogue in their registers, on its way to y.
            #[cfg(target_arch = "x86_64")]
            if simd::has_avx512() {
                let y = &mut y[r0 * out + p * NR..(r0 + m - 1) * out + (p + 1) * NR];
                simd::x86_packed::tile_into(m, xt, w, inp, ahead, tile_out(y, out, p, ep));
                continue;
            }
            let acc = &mut acc[..m * NR];
            tile(m, xt, w, inp, acc, ahead);
            simd::run(Finish {
                acc,
                y: &mut y[r0 * out..],
                out,
                col: p * NR,
                ep,
            });
        }
    }
}

/// Where the x86 kernels leave panel `p`'s sums: `y` from that panel's first column of the tile's first row
/// (rows `out` apart), through the epilogue's slices for the panel's columns.
#[cfg(target_arch = "x86_64")]
fn tile_out<'a>(
    y: &'a mut [f32],
    out: usize,
    p: usize,
    ep: Epilogue<'a>,
) -> simd::x86_packed::TileOut<'a> {
    let cols = p * NR..(p + 1) * NR;
    simd::x86_packed::TileOut {
        y,
        ld: out,
        bias: ep.bias.map(|b| &b[cols.clone()]),
        gelu: ep.gelu,
        scale: ep.scale.map(|s| &s[cols]),
        accumulate: ep.accumulate,
    }
}

/// The first row and row count of each tile of `rows` rows: as few tiles as [`MR`] allows, their sizes
/// differing by at most one, so no tile is a short remainder (a 1-row tile costs a third of a full one for a
/// twelfth of its work: its two accumulators wait on the FMA latency).
fn tiles(rows: usize) -> Vec<(usize, usize)> {
    let n = rows.div_ceil(MR);
    (0..n)
        .map(|t| (t * rows / n, (t + 1) * rows / n - t * rows / n))
        .collect()
}

/// `acc[i][j] = Σ_k x[i][k] w[k][j]` for `m` rows (`x` `[m, inp]` row-major, `w` a panel `[inp, NR]`).
/// `ahead`: values to ask the cache for meanwhile (x86 only).
fn tile(m: usize, x: &[f32], w: &[f32], inp: usize, acc: &mut [f32], ahead: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx512() {
        return simd::x86_packed::tile(m, x, w, inp, acc, ahead);
    }
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx2() {
        return simd::x86_packed::tile_avx2(m, x, w, inp, acc);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ahead;
    #[cfg(target_arch = "aarch64")]
    if !simd::portable_forced() {
        return simd::neon_packed::tile(m, x, w, inp, acc);
    }
    // Only the vector tiles need the row count; the portable one reads it from the slices.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = m;
    tile_portable(x, w, inp, acc)
}

/// The portable tile: separate multiplies and adds, `k` in order, for each of the rows.
pub fn tile_portable(x: &[f32], w: &[f32], inp: usize, acc: &mut [f32]) {
    simd::run(Tile { x, w, inp, acc })
}

struct Tile<'a> {
    x: &'a [f32],
    w: &'a [f32],
    inp: usize,
    acc: &'a mut [f32],
}

impl Kernel for Tile<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for (row, xr) in self
            .acc
            .chunks_exact_mut(NR)
            .zip(self.x.chunks_exact(self.inp))
        {
            let mut a = [0.0f32; NR];
            for (&xv, wk) in xr.iter().zip(self.w.chunks_exact(NR)) {
                for j in 0..NR {
                    a[j] += xv * wk[j];
                }
            }
            row.copy_from_slice(&a);
        }
    }
}

/// The epilogue of one tile: `acc` `[m, NR]` into columns `col..col + NR` of `y`'s first `m` rows.
struct Finish<'a> {
    acc: &'a [f32],
    y: &'a mut [f32],
    out: usize,
    col: usize,
    ep: Epilogue<'a>,
}

impl Kernel for Finish<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let Finish {
            acc,
            y,
            out,
            col,
            ep,
        } = self;
        let cols = col..col + NR;
        for (i, a) in acc.chunks_exact(NR).enumerate() {
            let mut v = [0.0f32; NR];
            v.copy_from_slice(a);
            if let Some(b) = ep.bias {
                v.iter_mut()
                    .zip(&b[cols.clone()])
                    .for_each(|(v, b)| *v += b);
            }
            if ep.gelu {
                v.iter_mut().for_each(|v| *v = gelu1(*v));
            }
            if let Some(s) = ep.scale {
                v.iter_mut()
                    .zip(&s[cols.clone()])
                    .for_each(|(v, s)| *v *= s);
            }
            let dst = &mut y[i * out + col..i * out + col + NR];
            if ep.accumulate {
                dst.iter_mut().zip(&v).for_each(|(d, v)| *d += v);
            } else {
                dst.copy_from_slice(&v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + 1.0) * seed).sin()).collect()
    }

    fn packed(w: &[f32], out: usize, inp: usize) -> Vec<f32> {
        let mut p = vec![0.0; out * inp];
        pack_range(w, inp, 0, &mut p);
        p
    }

    #[test]
    fn pack_and_unpack_are_inverse_in_any_range() {
        let (out, inp) = (64, 7);
        let w = values(out * inp, 0.3);
        let p = packed(&w, out, inp);
        assert_eq!(p[NR * inp + 2 * NR + 5], w[(NR + 5) * inp + 2]);
        let mut back = vec![0.0; out * inp];
        for (c, chunk) in back.chunks_mut(100).enumerate() {
            unpack_range(&p, inp, c * 100, chunk);
        }
        assert_eq!(back, w);
        let mut p2 = vec![0.0; out * inp];
        for (c, chunk) in p2.chunks_mut(33).enumerate() {
            pack_range(&w, inp, c * 33, chunk);
        }
        assert_eq!(p2, p);
    }

    /// Epilogues to test, as (bias, GELU, layer scale, accumulate): each step alone and in the models'
    /// combinations.
    const EPILOGUES: [(bool, bool, bool, bool); 6] = [
        (false, false, false, false),
        (true, false, false, false),
        (true, true, false, false),
        (true, false, true, true),
        (false, true, true, true),
        (false, false, false, true),
    ];

    fn epilogue<'a>(
        bias: &'a [f32],
        scale: &'a [f32],
        (with_bias, gelu, with_scale, accumulate): (bool, bool, bool, bool),
    ) -> Epilogue<'a> {
        Epilogue {
            bias: with_bias.then_some(bias),
            gelu,
            scale: with_scale.then_some(scale),
            accumulate,
        }
    }

    /// Every epilogue, at row counts that leave partial tiles and split between threads, against f64; the
    /// kernel this CPU runs and the portable tile agree to rounding.
    #[test]
    fn linear_packed_matches_naive_with_every_epilogue() {
        for (rows, inp, out) in [(1, 5, 32), (13, 17, 64), (25, 300, 96), (197, 64, 32)] {
            let x = values(rows * inp, 0.37);
            let w = values(out * inp, 0.11);
            let p = packed(&w, out, inp);
            let bias = values(out, 0.7);
            let scale = values(out, 0.9);
            let y0 = values(rows * out, 0.53);
            for &(with_bias, gelu, with_scale, accumulate) in &EPILOGUES {
                let ep = epilogue(&bias, &scale, (with_bias, gelu, with_scale, accumulate));
                let mut y = y0.clone();
                linear_packed(&x, rows, &p, out, &mut y, ep);
                for r in 0..rows {
                    for o in 0..out {
                        let mut v: f64 = (0..inp)
                            .map(|k| x[r * inp + k] as f64 * w[o * inp + k] as f64)
                            .sum();
                        if with_bias {
                            v += bias[o] as f64;
                        }
                        if gelu {
                            v = v * 0.5 * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
                        }
                        if with_scale {
                            v *= scale[o] as f64;
                        }
                        if accumulate {
                            v += y0[r * out + o] as f64;
                        }
                        let g = y[r * out + o] as f64;
                        assert!(
                            (g - v).abs() < 1e-5 * (inp as f64).sqrt() * (1.0 + v.abs()),
                            "{rows}x{inp}x{out} {ep:?} at ({r},{o}): {g} vs {v}"
                        );
                    }
                }
            }
        }
    }

    /// Each row's sums do not depend on the tile it is in, so one-row tiles through [`Finish`] are what
    /// every tile must give, bit for bit, whether its epilogue runs as a pass or in registers (AVX-512),
    /// GELU included.
    #[test]
    fn epilogue_in_registers_gives_the_finish_pass_values() {
        for (rows, inp, out) in [(13, 17, 64), (197, 64, 32)] {
            let x = values(rows * inp, 0.37);
            let p = packed(&values(out * inp, 0.11), out, inp);
            let (bias, scale, y0) = (values(out, 0.7), values(out, 0.9), values(rows * out, 0.53));
            for &combo in &EPILOGUES {
                let ep = epilogue(&bias, &scale, combo);
                let mut y = y0.clone();
                linear_packed(&x, rows, &p, out, &mut y, ep);
                let mut want = y0.clone();
                for r in 0..rows {
                    for (pi, w) in p.chunks_exact(inp * NR).enumerate() {
                        let mut acc = [0.0; NR];
                        tile(1, &x[r * inp..(r + 1) * inp], w, inp, &mut acc, &[]);
                        simd::run(Finish {
                            acc: &acc,
                            y: &mut want[r * out..],
                            out,
                            col: pi * NR,
                            ep,
                        });
                    }
                }
                assert_eq!(y, want, "{rows}x{inp}x{out} {ep:?}");
            }
        }
    }

    #[test]
    fn this_cpus_tile_matches_the_portable_one() {
        let inp = 129;
        for m in 1..=MR {
            let x = values(m * inp, 0.37);
            let w = values(inp * NR, 0.11);
            let (mut a, mut b) = (vec![0.0; m * NR], vec![0.0; m * NR]);
            tile(m, &x, &w, inp, &mut a, &[]);
            tile_portable(&x, &w, inp, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-4, "m {m}: {x} vs {y}");
            }
        }
    }

    /// The AVX2 tile, called directly (so it runs on AVX-512 CPUs too): every row count, each epilogue in
    /// its registers bitwise as the [`Finish`] pass applies it to its sums, the sums within rounding of the
    /// portable tile, bitwise those of one pass over the whole depth (the depth spans three blocks) and,
    /// where the CPU has AVX-512, bitwise those of the AVX-512 tile (the same FMAs).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_tile_matches_the_others() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            crate::ops::int8::tests::skip("AVX2");
            return;
        }
        let inp = 2 * simd::x86_packed::KC + 67;
        let w = values(inp * NR, 0.11);
        let (bias, scale) = (values(NR, 0.7), values(NR, 0.9));
        for m in 1..=MR {
            let x = values(m * inp, 0.37);
            let (mut a, mut b) = (vec![0.0; m * NR], vec![0.0; m * NR]);
            simd::x86_packed::tile_avx2(m, &x, &w, inp, &mut a);
            tile_portable(&x, &w, inp, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-4, "m {m}: {x} vs {y}");
            }
            let mut whole = vec![0.0; m * NR];
            let dst = simd::x86_packed::TileOut {
                y: &mut whole,
                ld: NR,
                bias: None,
                gelu: false,
                scale: None,
                accumulate: false,
            };
            let mut partial = vec![0.0; m * NR];
            simd::x86_packed::panel_avx2_blocks(m, &x, &w, inp, &[], &mut partial, dst, inp);
            assert_eq!(a, whole, "m {m}: blocks vs one pass");
            if simd::has_avx512() {
                let mut c = vec![0.0; m * NR];
                simd::x86_packed::tile(m, &x, &w, inp, &mut c, &[]);
                assert_eq!(a, c, "m {m}");
            }
            for &combo in &EPILOGUES {
                let ep = epilogue(&bias, &scale, combo);
                let y0 = values(m * NR, 0.53);
                let mut got = y0.clone();
                let dst = simd::x86_packed::TileOut {
                    y: &mut got,
                    ld: NR,
                    bias: ep.bias,
                    gelu: ep.gelu,
                    scale: ep.scale,
                    accumulate: ep.accumulate,
                };
                simd::x86_packed::tile_into_avx2(m, &x, &w, inp, dst);
                let mut want = y0.clone();
                simd::run(Finish {
                    acc: &a,
                    y: &mut want,
                    out: NR,
                    col: 0,
                    ep,
                });
                assert_eq!(got, want, "m {m} {ep:?}");
            }
        }
    }
}
