//! The AVX512-VNNI kernel of [`crate::ops::int8`]: `u8 x s8` dot products with `vpdpbusd` into i32. Its
//! portable reference, `int8::dot_portable`, computes the same integers (integer sums are exact in any
//! order), which a test there checks.

use std::arch::x86_64::*;

/// Output channels per register tile.
const OT: usize = 8;
/// Activation vectors (16 rows each) per register tile: 8 x 3 accumulators, 3 activation vectors and one
/// broadcast weight word fill 28 of the 32 registers.
const VT: usize = 3;

/// Whether the CPU has what [`dot`] needs.
pub(crate) fn detected() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// [`dot_vnni`] after checking the CPU and every length it needs (panics otherwise: a caller's bug).
pub(crate) fn dot(
    w: &[i8],
    nout: usize,
    kq: usize,
    act: &[u8],
    rb: usize,
    acc: &mut [i32],
    ld: usize,
) {
    assert!(detected(), "dot_vnni on a CPU without AVX512-VNNI");
    assert!(
        w.len() >= nout * 4 * kq && act.len() >= rb * kq * 64 && ld >= 16 * rb,
        "dot shapes"
    );
    assert!(
        nout == 0 || acc.len() >= (nout - 1) * ld + 16 * rb,
        "dot output"
    );
    // SAFETY: the features and lengths `dot_vnni` requires were checked just above.
    unsafe { dot_vnni(w, nout, kq, act, rb, acc, ld) }
}

/// `acc[o * ld + r] = sum_k act[r, k] * w[o, k]` for `o < nout`, `r < 16 * rb`, with `act` in the packed
/// layout of `int8::Quantized` (`[rb][kq][16 rows][4 bytes]`) and `w` `nout` rows of `4 * kq` int8.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW and AVX512-VNNI; `w.len() >= nout * 4 * kq`,
/// `act.len() >= rb * kq * 64`, `acc.len() >= (nout - 1) * ld + 16 * rb` and `ld >= 16 * rb`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_vnni(
    w: &[i8],
    nout: usize,
    kq: usize,
    act: &[u8],
    rb: usize,
    acc: &mut [i32],
    ld: usize,
) {
    let (wp, ap, cp) = (w.as_ptr(), act.as_ptr(), acc.as_mut_ptr());
    for o0 in (0..nout).step_by(OT) {
        let on = OT.min(nout - o0);
        for v0 in (0..rb).step_by(VT) {
            let vn = VT.min(rb - v0);
            // SAFETY: rows o0..o0 + on of w, vectors v0..v0 + vn of act and the matching acc elements lie
            // inside the lengths the caller guarantees.
            unsafe {
                let (w0, a0, c0) = (
                    wp.add(o0 * 4 * kq),
                    ap.add(v0 * kq * 64),
                    cp.add(o0 * ld + v0 * 16),
                );
                match (on, vn) {
                    (OT, VT) => tile::<OT, VT>(w0, kq, a0, c0, ld),
                    (OT, 2) => tile::<OT, 2>(w0, kq, a0, c0, ld),
                    (OT, _) => tile::<OT, 1>(w0, kq, a0, c0, ld),
                    _ => {
                        for o in 0..on {
                            let (wo, co) = (w0.add(o * 4 * kq), c0.add(o * ld));
                            match vn {
                                VT => tile::<1, VT>(wo, kq, a0, co, ld),
                                2 => tile::<1, 2>(wo, kq, a0, co, ld),
                                _ => tile::<1, 1>(wo, kq, a0, co, ld),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One register tile: `O` output channels x `V` vectors of 16 rows, over all `kq` groups of 4 inputs.
///
/// # Safety
/// As [`dot_vnni`], for the `O` weight rows at `w`, the `V` activation vectors at `a` and the tile at `c`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile<const O: usize, const V: usize>(
    w: *const i8,
    kq: usize,
    a: *const u8,
    c: *mut i32,
    ld: usize,
) {
    let mut sum = [[_mm512_setzero_si512(); V]; O];
    for q in 0..kq {
        let mut x = [_mm512_setzero_si512(); V];
        for (v, xv) in x.iter_mut().enumerate() {
            // SAFETY: vector v0 + v, group q of the packed activations (see `dot_vnni`).
            *xv = unsafe { _mm512_loadu_si512(a.add((v * kq + q) * 64) as *const _) };
        }
        for (o, so) in sum.iter_mut().enumerate() {
            // SAFETY: bytes 4q..4q + 4 of weight row o, inside the row of 4 * kq bytes.
            let b = _mm512_set1_epi32(unsafe {
                (w.add(o * 4 * kq + 4 * q) as *const i32).read_unaligned()
            });
            for (s, xv) in so.iter_mut().zip(&x) {
                *s = _mm512_dpbusd_epi32(*s, *xv, b);
            }
        }
    }
    for (o, so) in sum.iter().enumerate() {
        for (v, s) in so.iter().enumerate() {
            // SAFETY: element (o, 16 v .. 16 v + 16) of the tile, inside acc (see `dot_vnni`).
            unsafe { _mm512_storeu_si512(c.add(o * ld + v * 16) as *mut _, *s) };
        }
    }
}
