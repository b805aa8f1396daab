//! The aarch64 BFDOT half of `ops::bf16` (FEAT_BF16): the twin of `x86_bf16.rs`, with the same safe entry
//! points over the same packed activation (`[in / 2, ld]` u32, each the bf16 pair of one token's inputs
//! `2p, 2p + 1`) and the weight read in place from the file's `[out, in]` bf16 rows.
//!
//! A tile multiplies `NR` channels with `MV` vectors of 4 tokens. One 128-bit load of a weight row brings
//! four consecutive pairs, and the indexed form `bfdot acc.4s, x.8h, w.2h[j]` takes pair `j` of it as the
//! broadcast operand: a weight load feeds `4 * MV` BFDOTs (the x86 tile broadcasts one pair per load).
//! 6 x 3 accumulators, 6 weight registers and 3 activation vectors use 27 of the 32 vector registers (the
//! quad loop compiles without a spill), and 18 independent accumulator chains keep several vector pipes
//! busy across BFDOT's latency. `NR` stays even: fc1's epilogue pairs a slab's channels.
//!
//! BFDOT's arithmetic is not `vdpbf16ps`'s: with FPCR.EBF = 0 (the reset value, which nothing here changes)
//! it rounds both products, their sum and the sum with the accumulator to odd, flushes denormal inputs
//! (the accumulator's too) and outputs to zero and returns the default NaN (Arm's `BFDotAdd`; qemu's
//! `bfdotadd`). `ops::bf16`'s reference for aarch64 models exactly that, and the tiles are tested against
//! it bitwise.
//!
//! BFDOT is written as inline assembly: its `std::arch` intrinsics (`vbfdotq_f32`) are not stable yet.

use std::arch::aarch64::*;
use std::arch::asm;

/// Output channels per tile (see the module doc for the register budget).
pub(crate) const NR: usize = 6;
/// Token vectors (4 tokens each) per tile.
const MV: usize = 3;
/// f32 lanes (tokens) in a vector.
const NL: usize = 4;

/// Whether this CPU runs BFDOT (FEAT_BF16; NEON is in every aarch64 CPU).
pub(crate) fn detected() -> bool {
    std::arch::is_aarch64_feature_detected!("bf16")
}

/// `c[i * rows + m] (+)= Σ_p w[(n0 + i) * k + 2p..][..2] · xp[p * ld + m][..2]` for channels `i < nr`
/// (`nr <= NR`), tokens `m < rows` and pairs `p` in `p0..p0 + pc`: one block of a product `yᵀ = w × xᵀ`
/// over the slab of channels `n0..n0 + nr`, written to (or with `accumulate`, added to) `c`, the slab's
/// rows `[nr, rows]`. Each step is one BFDOT (see the module doc for its rounding).
///
/// # Panics
/// If the CPU lacks FEAT_BF16 or a bound does not hold.
#[allow(clippy::too_many_arguments)]
pub(crate) fn slab(
    w: &[u16],
    k: usize,
    (n0, nr): (usize, usize),
    (p0, pc): (usize, usize),
    xp: &[u32],
    ld: usize,
    rows: usize,
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(detected(), "BFDOT run on a CPU without FEAT_BF16");
    super::check_bf16_slab(w, k, (n0, nr), (p0, pc), xp, ld, rows, c, (NR, NL));
    let vectors = rows.div_ceil(NL);
    let last = rows - (vectors.max(1) - 1) * NL;
    // SAFETY: the CPU has FEAT_BF16 (checked above). Tile (v0, mv) reads weight elements (n0 + i) * k + 2p
    // + 0..8 for whole quads of pairs (p + 4 <= p0 + pc) and 0..2 for the rest, all < (n0 + nr) * k; packed
    // elements p * ld + 4 * v0 + 0..4 * mv < (p0 + pc) * ld (4 * (v0 + mv) <= ld); and c[i * rows + m] only
    // for m < rows (the tile's last vector goes through a copy when it is partial): all within the lengths
    // asserted above.
    unsafe {
        let w = w.as_ptr().add(n0 * k + 2 * p0);
        let x = xp.as_ptr().add(p0 * ld);
        let mut v0 = 0;
        while v0 < vectors {
            let mv = MV.min(vectors - v0);
            let tail = if v0 + mv == vectors { last } else { NL };
            let cp = c.as_mut_ptr().add(NL * v0);
            let xv = x.add(NL * v0);
            let args = (w, k, xv, ld, pc, cp, rows, tail, accumulate);
            match (nr, mv) {
                (6, 3) => tile::<6, 3>(args),
                (6, 2) => tile::<6, 2>(args),
                (6, _) => tile::<6, 1>(args),
                (5, 3) => tile::<5, 3>(args),
                (5, 2) => tile::<5, 2>(args),
                (5, _) => tile::<5, 1>(args),
                (4, 3) => tile::<4, 3>(args),
                (4, 2) => tile::<4, 2>(args),
                (4, _) => tile::<4, 1>(args),
                (3, 3) => tile::<3, 3>(args),
                (3, 2) => tile::<3, 2>(args),
                (3, _) => tile::<3, 1>(args),
                (2, 3) => tile::<2, 3>(args),
                (2, 2) => tile::<2, 2>(args),
                (2, _) => tile::<2, 1>(args),
                (_, 3) => tile::<1, 3>(args),
                (_, 2) => tile::<1, 2>(args),
                (_, _) => tile::<1, 1>(args),
            }
            v0 += mv;
        }
    }
}

/// Weight rows, k, packed activation (at the tile's first token), ld, pairs, output, its row stride, the
/// tokens of the tile's last vector (1..=4), accumulate.
type TileArgs = (
    *const u16,
    usize,
    *const u32,
    usize,
    usize,
    *mut f32,
    usize,
    usize,
    bool,
);

/// `acc += x · w` per lane: each lane's pair of bf16 with the pair in the same lane of `w` (BFDOT).
#[target_feature(enable = "neon,bf16")]
#[inline]
fn bfdot(acc: float32x4_t, x: uint32x4_t, w: uint32x4_t) -> float32x4_t {
    let mut acc = acc;
    // SAFETY: BFDOT reads and writes registers only; the enclosing feature guarantees the instruction.
    unsafe {
        asm!(
            "bfdot {acc:v}.4s, {x:v}.8h, {w:v}.8h",
            acc = inout(vreg) acc,
            x = in(vreg) x,
            w = in(vreg) w,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// `acc += x · w[J]` per lane: each lane's pair of bf16 with pair `J` of `w` (the indexed BFDOT).
#[target_feature(enable = "neon,bf16")]
#[inline]
fn bfdot_lane<const J: usize>(acc: float32x4_t, x: uint32x4_t, w: uint16x8_t) -> float32x4_t {
    let mut acc = acc;
    macro_rules! lane {
        ($j:literal) => {
            // SAFETY: as in `bfdot`.
            unsafe {
                asm!(
                    concat!("bfdot {acc:v}.4s, {x:v}.8h, {w:v}.2h[", $j, "]"),
                    acc = inout(vreg) acc,
                    x = in(vreg) x,
                    w = in(vreg) w,
                    options(pure, nomem, nostack, preserves_flags)
                )
            }
        };
    }
    match J {
        0 => lane!(0),
        1 => lane!(1),
        2 => lane!(2),
        _ => lane!(3),
    }
    acc
}

/// `R` channels x `V` token vectors over `pc` pairs, accumulators in registers: whole quads of pairs with
/// the indexed BFDOT, the last `pc % 4` pairs broadcast one at a time.
///
/// # Safety
/// The CPU must have FEAT_BF16; row `i < R` of `w` holds `2 * pc` readable elements at `i * k`, `x` holds
/// `V * 4` readable u32 at `p * ld` for `p < pc`, and `c` holds `V * 4` elements at `i * ldc` for `i < R`,
/// the last vector's first `tail` only.
#[target_feature(enable = "neon,bf16")]
unsafe fn tile<const R: usize, const V: usize>(
    (w, k, x, ld, pc, c, ldc, tail, accumulate): TileArgs,
) {
    let mut acc = [[vdupq_n_f32(0.0); V]; R];
    if accumulate {
        for (i, row) in acc.iter_mut().enumerate() {
            for (v, a) in row.iter_mut().enumerate() {
                // SAFETY: within c's rows; a partial last vector is copied (the caller's contract).
                *a = unsafe { load_c(c.add(i * ldc + NL * v), if v + 1 == V { tail } else { NL }) };
            }
        }
    }
    let quads = pc / 4;
    for q in 0..quads {
        let p = 4 * q;
        // SAFETY: elements 2p..2p + 8 of weight row i lie in w (p + 4 <= pc).
        let ws: [uint16x8_t; R] =
            std::array::from_fn(|i| unsafe { vld1q_u16(w.add(i * k + 2 * p)) });
        macro_rules! pair {
            ($j:literal) => {
                // SAFETY: pair p + j's 4 * V tokens lie in x (the caller's contract).
                let xs: [uint32x4_t; V] =
                    std::array::from_fn(|v| unsafe { vld1q_u32(x.add((p + $j) * ld + NL * v)) });
                for (row, wi) in acc.iter_mut().zip(&ws) {
                    for (a, xv) in row.iter_mut().zip(&xs) {
                        *a = bfdot_lane::<$j>(*a, *xv, *wi);
                    }
                }
            };
        }
        pair!(0);
        pair!(1);
        pair!(2);
        pair!(3);
    }
    for p in 4 * quads..pc {
        // SAFETY: pair p's 4 * V tokens lie in x (the caller's contract).
        let xs: [uint32x4_t; V] =
            std::array::from_fn(|v| unsafe { vld1q_u32(x.add(p * ld + NL * v)) });
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: elements 2p, 2p + 1 of weight row i lie in w; unaligned 4-byte read.
            let pair = unsafe { (w.add(i * k + 2 * p) as *const u32).read_unaligned() };
            let b = vdupq_n_u32(pair);
            for (a, xv) in row.iter_mut().zip(&xs) {
                *a = bfdot(*a, *xv, b);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (v, a) in row.iter().enumerate() {
            // SAFETY: as for the loads above.
            unsafe {
                store_c(
                    c.add(i * ldc + NL * v),
                    if v + 1 == V { tail } else { NL },
                    *a,
                )
            };
        }
    }
}

/// The first `n` (1..=4) of four f32 at `p`, zeros after.
///
/// # Safety
/// `p` must hold `n` readable f32.
#[inline(always)]
unsafe fn load_c(p: *const f32, n: usize) -> float32x4_t {
    if n == NL {
        // SAFETY: four readable f32 (the caller's contract).
        return unsafe { vld1q_f32(p) };
    }
    let mut t = [0.0f32; NL];
    // SAFETY: n readable f32 (the caller's contract).
    unsafe { std::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), n) };
    // SAFETY: t holds four f32.
    unsafe { vld1q_f32(t.as_ptr()) }
}

/// Stores the first `n` (1..=4) lanes of `a` at `p`.
///
/// # Safety
/// `p` must hold `n` writable f32.
#[inline(always)]
unsafe fn store_c(p: *mut f32, n: usize, a: float32x4_t) {
    if n == NL {
        // SAFETY: four writable f32 (the caller's contract).
        unsafe { vst1q_f32(p, a) };
        return;
    }
    let mut t = [0.0f32; NL];
    // SAFETY: t holds four f32; n writable f32 at p (the caller's contract).
    unsafe {
        vst1q_f32(t.as_mut_ptr(), a);
        std::ptr::copy_nonoverlapping(t.as_ptr(), p, n);
    }
}

/// `dst[p * ld + m] = src[m * pairs + p]` for `m < rows`, `p < pairs`: a `[rows, pairs]` u32 matrix (an
/// activation's bf16 rows, two inputs per u32) transposed into the packed `[pairs, ld]` form, in 4x4 register
/// tiles (two rounds of `trn`), the rows and pairs past the last whole tile one element at a time. Lanes
/// `rows..ld` of `dst` are left as they are.
///
/// # Panics
/// If a bound does not hold.
pub(crate) fn transpose_pairs(src: &[u32], rows: usize, pairs: usize, dst: &mut [u32], ld: usize) {
    assert!(src.len() >= rows * pairs, "transpose source");
    assert!(
        ld >= rows && dst.len() >= pairs * ld,
        "transpose destination"
    );
    // SAFETY: NEON is in every aarch64 CPU; the lengths `transpose_pairs_neon` needs were checked above.
    unsafe { transpose_pairs_neon(src, rows, pairs, dst, ld) }
}

/// # Safety
/// See [`transpose_pairs`]: the asserted lengths.
#[target_feature(enable = "neon")]
unsafe fn transpose_pairs_neon(src: &[u32], rows: usize, pairs: usize, dst: &mut [u32], ld: usize) {
    let (rows4, pairs4) = (rows - rows % NL, pairs - pairs % NL);
    for m0 in (0..rows4).step_by(NL) {
        for p0 in (0..pairs4).step_by(NL) {
            // SAFETY: rows m0..m0 + 4 <= rows, pairs p0..p0 + 4 <= pairs: inside src's asserted length.
            let r: [uint32x4_t; NL] = std::array::from_fn(|i| unsafe {
                vld1q_u32(src.as_ptr().add((m0 + i) * pairs + p0))
            });
            // Pairs of rows interleaved, then pairs of 64-bit halves: pair p0 + j of rows m0..m0 + 4.
            let t0 = vreinterpretq_u64_u32(vtrn1q_u32(r[0], r[1]));
            let t1 = vreinterpretq_u64_u32(vtrn2q_u32(r[0], r[1]));
            let t2 = vreinterpretq_u64_u32(vtrn1q_u32(r[2], r[3]));
            let t3 = vreinterpretq_u64_u32(vtrn2q_u32(r[2], r[3]));
            let cols = [
                vtrn1q_u64(t0, t2),
                vtrn1q_u64(t1, t3),
                vtrn2q_u64(t0, t2),
                vtrn2q_u64(t1, t3),
            ];
            for (j, col) in cols.into_iter().enumerate() {
                // SAFETY: pair p0 + j < pairs, tokens m0..m0 + 4 <= rows <= ld: inside dst's asserted length.
                unsafe {
                    vst1q_u32(
                        dst.as_mut_ptr().add((p0 + j) * ld + m0),
                        vreinterpretq_u32_u64(col),
                    )
                };
            }
        }
        for p in pairs4..pairs {
            for m in m0..m0 + NL {
                dst[p * ld + m] = src[m * pairs + p];
            }
        }
    }
    for m in rows4..rows {
        for p in 0..pairs {
            dst[p * ld + m] = src[m * pairs + p];
        }
    }
}
