//! The aarch64 `dotprod` kernel of [`crate::ops::int8`]: the twin of `x86_int8.rs` with SDOT into i32.
//!
//! SDOT multiplies signed by signed bytes, while the activations are u8 (the mixed USDOT needs `i8mm`,
//! which the Pi 5's Cortex-A76 lacks). So each activation byte is flipped to `u - 128` (an XOR with 0x80)
//! as it is loaded, and the `128 Σ_k q[o, k]` this takes away is added back once per output channel:
//! `Σ u q = Σ (u - 128) q + 128 Σ q`, exact in i32 (|Σ| <= 4096 · 255 · 128 for ViT-L's widest layer).
//! Its portable reference, `int8::dot_portable`, computes the same integers, which a test there checks.
//!
//! SDOT is written as inline assembly: its `std::arch` intrinsic (`vdotq_s32`) is not stable yet.

use std::arch::aarch64::*;
use std::arch::asm;

/// Output channels per register tile: 6 x 4 accumulators (16 rows), 4 activation registers and the
/// broadcast weight word fill 29 of the 32 vector registers.
const OT: usize = 6;

/// Whether the CPU has what [`dot`] needs (NEON is in every aarch64 CPU).
pub(crate) fn detected() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// [`dot_sdot`] after checking the CPU and every length it needs (panics otherwise: a caller's bug).
pub(crate) fn dot(
    w: &[i8],
    nout: usize,
    kq: usize,
    act: &[u8],
    rb: usize,
    acc: &mut [i32],
    ld: usize,
) {
    assert!(detected(), "dot_sdot on a CPU without dotprod");
    super::check_int8_dot(w, nout, kq, act, rb, acc, ld);
    // SAFETY: the feature and lengths `dot_sdot` requires were checked just above.
    unsafe { dot_sdot(w, nout, kq, act, rb, acc, ld) }
}

/// `acc[o * ld + r] = sum_k act[r, k] * w[o, k]` for `o < nout`, `r < 16 * rb`, with `act` in the packed
/// layout of `int8::Quantized` (`[rb][kq][16 rows][4 bytes]`) and `w` `nout` rows of `4 * kq` int8.
///
/// # Safety
/// The CPU must have `dotprod`; `w.len() >= nout * 4 * kq`, `act.len() >= rb * kq * 64`,
/// `acc.len() >= (nout - 1) * ld + 16 * rb` and `ld >= 16 * rb`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_sdot(
    w: &[i8],
    nout: usize,
    kq: usize,
    act: &[u8],
    rb: usize,
    acc: &mut [i32],
    ld: usize,
) {
    let inp = 4 * kq;
    let (wp, ap, cp) = (w.as_ptr(), act.as_ptr(), acc.as_mut_ptr());
    for o0 in (0..nout).step_by(OT) {
        let on = OT.min(nout - o0);
        // The 128 Σ_k q[o, k] that flipping the activations to signed takes away (see the module doc).
        let mut corr = [0i32; OT];
        for (c, row) in corr
            .iter_mut()
            .zip(w[o0 * inp..(o0 + on) * inp].chunks_exact(inp))
        {
            *c = 128 * row.iter().map(|&q| q as i32).sum::<i32>();
        }
        for v in 0..rb {
            // SAFETY: rows o0..o0 + on of w, vector v of act and the matching acc elements lie inside the
            // lengths the caller guarantees.
            unsafe {
                let (w0, a0, c0) = (
                    wp.add(o0 * inp),
                    ap.add(v * kq * 64),
                    cp.add(o0 * ld + v * 16),
                );
                if on == OT {
                    tile::<OT>(w0, kq, a0, c0, ld, &corr);
                } else {
                    for (o, c) in corr.iter().enumerate().take(on) {
                        tile::<1>(w0.add(o * inp), kq, a0, c0.add(o * ld), ld, &[*c]);
                    }
                }
            }
        }
    }
}

/// `acc += a · b` four bytes at a time in each i32 lane (SDOT).
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: SDOT reads and writes registers only; the enclosing feature guarantees the instruction.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// One register tile: `O` output channels x one vector of 16 rows, over all `kq` groups of 4 inputs, with
/// `corr[o]` added as it is stored.
///
/// # Safety
/// As [`dot_sdot`], for the `O` weight rows at `w`, the activation vector at `a` and the tile at `c`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn tile<const O: usize>(
    w: *const i8,
    kq: usize,
    a: *const u8,
    c: *mut i32,
    ld: usize,
    corr: &[i32],
) {
    let flip = vdupq_n_u8(0x80);
    let mut sum = [[vdupq_n_s32(0); 4]; O];
    for q in 0..kq {
        let mut x = [vdupq_n_s8(0); 4];
        for (j, xj) in x.iter_mut().enumerate() {
            // SAFETY: rows 4j..4j + 4 of group q of the packed vector (see `dot_sdot`).
            let u = unsafe { vld1q_u8(a.add(q * 64 + j * 16)) };
            *xj = vreinterpretq_s8_u8(veorq_u8(u, flip));
        }
        for (o, so) in sum.iter_mut().enumerate() {
            // SAFETY: bytes 4q..4q + 4 of weight row o, inside the row of 4 * kq bytes.
            let word = unsafe { (w.add(o * 4 * kq + 4 * q) as *const i32).read_unaligned() };
            let b = vreinterpretq_s8_s32(vdupq_n_s32(word));
            for (s, xj) in so.iter_mut().zip(&x) {
                *s = sdot(*s, *xj, b);
            }
        }
    }
    for (o, so) in sum.iter().enumerate() {
        let k = vdupq_n_s32(corr[o]);
        for (j, s) in so.iter().enumerate() {
            // SAFETY: element (o, 4j .. 4j + 4) of the tile, inside acc (see `dot_sdot`).
            unsafe { vst1q_s32(c.add(o * ld + j * 4), vaddq_s32(*s, k)) };
        }
    }
}
