//! The AVX-512 micro-kernel of `ops::packed`: a tile of up to `MR` rows times one panel of `NR` = 32 output
//! channels, accumulated over the whole depth in 2 x `m` registers. Its portable reference is
//! `ops::packed::tile_portable` (the same sums, with FMA's single rounding per step instead of two).

use std::arch::x86_64::*;

use crate::ops::packed::{MR, NR};

/// `acc[i][j] = Σ_k x[i * inp + k] * w[k * NR + j]` for `m = acc.len() / NR` rows of `x`, on AVX-512.
///
/// Panics unless `super::has_avx512()` and the slices hold `m * inp`, `inp * NR` and `m * NR` values
/// (`1 <= m <= MR`).
/// The cache lines of `ahead` (the next panel's share) are prefetched into L2 meanwhile, one per step of
/// the depth; prefetches do not change the sums.
pub(crate) fn tile(m: usize, x: &[f32], w: &[f32], inp: usize, acc: &mut [f32], ahead: &[f32]) {
    assert!(super::has_avx512(), "AVX-512 tile on a CPU without it");
    assert!((1..=MR).contains(&m), "tile of {m} rows");
    assert!(x.len() >= m * inp && w.len() >= inp * NR && acc.len() >= m * NR);
    let lines = ahead.len().div_ceil(16).min(inp);
    let pf = ahead.as_ptr();
    // SAFETY: the CPU has AVX-512F (checked above); the kernel reads x[..m * inp] and w[..inp * NR] and
    // writes acc[..m * NR], all within the slices (checked above); it prefetches ahead[16 l] for
    // l < lines, within `ahead` (a prefetch never faults, and these addresses are in bounds anyway).
    unsafe {
        match m {
            1 => kernel::<1>(x, w, inp, acc, pf, lines),
            2 => kernel::<2>(x, w, inp, acc, pf, lines),
            3 => kernel::<3>(x, w, inp, acc, pf, lines),
            4 => kernel::<4>(x, w, inp, acc, pf, lines),
            5 => kernel::<5>(x, w, inp, acc, pf, lines),
            6 => kernel::<6>(x, w, inp, acc, pf, lines),
            7 => kernel::<7>(x, w, inp, acc, pf, lines),
            8 => kernel::<8>(x, w, inp, acc, pf, lines),
            9 => kernel::<9>(x, w, inp, acc, pf, lines),
            10 => kernel::<10>(x, w, inp, acc, pf, lines),
            11 => kernel::<11>(x, w, inp, acc, pf, lines),
            _ => kernel::<12>(x, w, inp, acc, pf, lines),
        }
    }
}

/// # Safety
/// AVX-512F; `x` holds `M * inp` values, `w` `inp * NR`, `acc` `M * NR`; `pf` `16 * lines` values.
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const M: usize>(
    x: &[f32],
    w: &[f32],
    inp: usize,
    acc: &mut [f32],
    pf: *const f32,
    lines: usize,
) {
    let (xb, wp) = (x.as_ptr(), w.as_ptr());
    let out = acc.as_mut_ptr();
    let mut c0 = [_mm512_setzero_ps(); M];
    let mut c1 = [_mm512_setzero_ps(); M];
    for k in 0..inp {
        // SAFETY: k < inp, so w[k * NR..k * NR + 32] and x[i * inp + k] (i < M) lie in the slices.
        let (w0, w1) = unsafe {
            (
                _mm512_loadu_ps(wp.add(k * NR)),
                _mm512_loadu_ps(wp.add(k * NR + 16)),
            )
        };
        if k < lines {
            // SAFETY: k < lines, so pf + 16 k lies in the prefetched slice.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(pf.add(k * 16).cast()) };
        }
        let xk = unsafe { xb.add(k) };
        for i in 0..M {
            let a = _mm512_set1_ps(unsafe { *xk.add(i * inp) });
            c0[i] = _mm512_fmadd_ps(a, w0, c0[i]);
            c1[i] = _mm512_fmadd_ps(a, w1, c1[i]);
        }
    }
    for i in 0..M {
        // SAFETY: i < M, so acc[i * NR..i * NR + 32] lies in `acc`.
        unsafe {
            _mm512_storeu_ps(out.add(i * NR), c0[i]);
            _mm512_storeu_ps(out.add(i * NR + 16), c1[i]);
        }
    }
}
