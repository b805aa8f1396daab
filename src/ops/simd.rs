//! Run-time instruction-set dispatch for the element-wise and attention kernels.
//!
//! The crate builds for baseline x86-64 (SSE2), so it runs on any x86-64 box. A [`Kernel`]'s body is plain
//! scalar Rust marked `#[inline(always)]`; [`run`] calls it through a function compiled for AVX-512 or
//! AVX2 when the CPU has them, so the same loops vectorise 16 or 8 lanes wide instead of 4. Rust never
//! contracts `a * b + c` into an FMA on its own, so every level computes bitwise the same results.
#![allow(unsafe_code)]

use std::sync::OnceLock;

/// A unit of work whose `run` is inlined into a function compiled for the CPU's best instruction set.
pub trait Kernel {
    type Output;
    /// Must be `#[inline(always)]`, or it is compiled once for the baseline and gains nothing.
    fn run(self) -> Self::Output;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Level::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Level::Avx2;
            }
        }
        Level::Baseline
    })
}

/// Runs `k` compiled for the best instruction set this CPU has.
#[inline]
pub fn run<K: Kernel>(k: K) -> K::Output {
    match level() {
        // SAFETY: `level` returned Avx512 only after detecting every feature `avx512` is compiled for.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { avx512(k) },
        // SAFETY: as above, for AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { avx2(k) },
        Level::Baseline => k.run(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn avx512<K: Kernel>(k: K) -> K::Output {
    k.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<K: Kernel>(k: K) -> K::Output {
    k.run()
}

/// Vector lanes the reductions interleave over: an AVX-512 register of f32.
pub const LANES: usize = 16;

/// Folds `map` of each value with `f` into [`LANES`] interleaved partial results, then folds those: a
/// reduction that vectorises. For a sum that is a fixed order, not left to right (within float rounding of
/// it); for max and min it is exact.
#[inline(always)]
pub fn reduce(x: &[f32], init: f32, map: impl Fn(f32) -> f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut part = [init; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            part[l] = f(part[l], map(ch[l]));
        }
    }
    let tail = chunks.remainder().iter().fold(init, |a, &b| f(a, map(b)));
    f(part.into_iter().fold(init, &f), tail)
}
