//! GFLOP/s of `ops::matmul` at the models' shapes, best of N runs (robust on a shared machine).
//! `cargo run --release --example gemm_shapes -- [threads] [reps] [filter] [yt|y|linear]`: one line per shape,
//! name, MxKxN, best GFLOP/s and ms, and GFLOP per CPU-second
//! (getrusage: all threads, robust to other processes holding the cores). A linear layer's shape is `out x in x rows`; the last argument picks what
//! is timed: `yt` (default) the product `w × xᵀ` into a dense `yᵀ`, `y` the same product written straight into
//! `y` (`matmul_t`), `linear` the whole `ops::linear` (product, transpose, bias) as the models call it, `packed` the same
//! layer over kernel-ready panels (`ops::packed::linear_packed` with its bias epilogue), `packed_stream` the
//! same over copies of the panels that together exceed the last-level cache (each call's weights come from
//! memory, as a model's streamed blocks do), `peak` the
//! throughput probes instead of the shapes (independent chains of f32 FMAs and of the int8 product
//! instructions on every thread: the kernels' ceilings). Run it several times (interleaved with the build it is compared to) and keep the best.
#[path = "../benches/common/mod.rs"]
mod common;

use std::time::Instant;
use wstream::ops::packed::{linear_packed, pack_range, Epilogue};
use wstream::ops::{linear, matmul, matmul_t, MatRef};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).map_or(2, |s| s.parse().unwrap());
    let reps: usize = args.get(2).map_or(20, |s| s.parse().unwrap());
    let filter = args.get(3).cloned().unwrap_or_default();
    let mode = args.get(4).map_or("yt", |s| s.as_str());
    wstream::process::keep_freed_heap();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    if mode == "peak" {
        return peak(threads, reps);
    }
    for (name, m, k, n) in common::GEMM_SHAPES {
        let packed = mode.starts_with("packed");
        if !name.contains(&filter) || (packed && m % 32 != 0) {
            continue;
        }
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let bias: Vec<f32> = (0..m).map(|i| (i as f32 * 0.21).cos()).collect();
        let mut dst = vec![0.0f32; m * n];
        let mut copies = Vec::new();
        if packed {
            let mut panels = vec![0.0f32; m * k];
            pack_range(&a, k, 0, &mut panels);
            let n = if mode == "packed_stream" {
                (256 << 20) / (4 * m * k) + 1
            } else {
                1
            };
            copies = vec![panels; n];
        }
        let inner = if mode == "packed_stream" {
            copies.len()
        } else if m * n * k < 1 << 22 {
            200
        } else {
            1
        };
        let (mut best, mut best_cpu) = (f64::MAX, f64::MAX);
        for _ in 0..reps {
            let (t, cpu) = (Instant::now(), wstream::process::cpu_seconds());
            for i in 0..inner {
                if packed {
                    let panels = &copies[i % copies.len()];
                    let ep = Epilogue {
                        bias: Some(&bias),
                        ..Epilogue::default()
                    };
                    linear_packed(&b, n, panels, m, &mut dst, ep);
                } else if mode == "linear" {
                    std::hint::black_box(linear(&b, n, &a, m, Some(&bias)));
                } else {
                    let gemm = if mode == "y" { matmul_t } else { matmul };
                    gemm(
                        &mut dst,
                        MatRef::rows(&a, m, k),
                        MatRef::transposed(&b, n, k),
                        false,
                    );
                }
            }
            best = best.min(t.elapsed().as_secs_f64() / inner as f64);
            best_cpu = best_cpu.min((wstream::process::cpu_seconds() - cpu) / inner as f64);
        }
        let flops = 2.0 * (m * n * k) as f64;
        println!(
            "{name:14} {m}x{k}x{n} {:8.1} GFLOP/s {:8.3} ms {:8.1} GFLOP/CPU-s",
            flops / best / 1e9,
            best * 1e3,
            flops / best_cpu / 1e9
        );
    }
}

/// The box's ceilings for the kernels: `threads` threads each running 12 independent chains of one
/// instruction sequence (enough to cover its latency on current x86 cores), best of `reps`, for f32 FMAs
/// (AVX-512 where the CPU has it, else AVX2's 8 lanes) and for the int8 products: AVX512-VNNI's
/// `vpdpbusd`, and on AVX2 the exact `vpmaddwd` + `vpaddd` of `dot_avx2` beside the
/// `vpmaddubsw` + `vpmaddwd` + `vpaddd` of kernels that accept saturated i16 pair sums (ONNX Runtime's
/// MLAS u8 x s8 on AVX2).
#[cfg(target_arch = "x86_64")]
fn peak(threads: usize, reps: usize) {
    use rayon::prelude::*;
    use std::arch::x86_64::*;
    const STEPS: usize = 50_000_000 / 12 * 12;
    /// 12 chains of `step` from `init`, `STEPS` steps in all; inlined into each probe, so `step` is
    /// compiled with the probe's target features.
    #[inline(always)]
    fn chains<T: Copy>(init: T, step: impl Fn(T) -> T) {
        let mut acc = [init; 12];
        for _ in 0..STEPS / 12 {
            for c in acc.iter_mut() {
                *c = step(*c);
            }
        }
        std::hint::black_box(acc);
    }
    #[target_feature(enable = "avx512f")]
    fn fma512() {
        let a = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm512_set1_ps(std::hint::black_box(1e-7));
        chains(_mm512_set1_ps(1.0), |c| _mm512_fmadd_ps(c, a, b));
    }
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn vnni512() {
        let a = _mm512_set1_epi8(std::hint::black_box(3));
        let b = _mm512_set1_epi8(std::hint::black_box(-2));
        chains(_mm512_set1_epi32(1), |c| _mm512_dpbusd_epi32(c, a, b));
    }
    #[target_feature(enable = "avx2,fma")]
    fn fma256() {
        let a = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm256_set1_ps(std::hint::black_box(1e-7));
        chains(_mm256_set1_ps(1.0), |c| _mm256_fmadd_ps(c, a, b));
    }
    // Each chain's product reads its own accumulator, so nothing can be hoisted out of the loop.
    #[target_feature(enable = "avx2")]
    fn madd256() {
        let b = _mm256_set1_epi16(std::hint::black_box(3));
        chains(_mm256_set1_epi32(1), |c| {
            _mm256_add_epi32(c, _mm256_madd_epi16(c, b))
        });
    }
    #[target_feature(enable = "avx2")]
    fn maddubs256() {
        let b = _mm256_set1_epi8(std::hint::black_box(-2));
        let ones = _mm256_set1_epi16(1);
        chains(_mm256_set1_epi32(1), |c| {
            _mm256_add_epi32(c, _mm256_madd_epi16(_mm256_maddubs_epi16(c, b), ones))
        });
    }
    let avx512 = is_x86_feature_detected!("avx512f");
    let vnni =
        avx512 && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni");
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    // (what, ops per chain step, the chains), each probe only where the CPU has its instructions.
    let mut probes: Vec<(&str, f64, unsafe fn())> = Vec::new();
    if avx512 {
        probes.push(("f32 FMA (AVX-512), GFLOP/s", 32.0, fma512));
    } else if avx2 {
        probes.push(("f32 FMA (AVX2), GFLOP/s", 16.0, fma256));
    }
    if vnni {
        probes.push(("int8 vpdpbusd (AVX512-VNNI), GOP/s", 128.0, vnni512));
    }
    if avx2 {
        probes.push(("int8 exact vpmaddwd+vpaddd (AVX2), GOP/s", 32.0, madd256));
        probes.push((
            "int8 saturating vpmaddubsw+vpmaddwd+vpaddd (AVX2), GOP/s",
            64.0,
            maddubs256,
        ));
    }
    if probes.is_empty() {
        println!("peak: neither AVX-512 nor AVX2 with FMA here");
    }
    for (what, ops, chains) in probes {
        let mut best = f64::MAX;
        for _ in 0..reps.min(5) {
            let t = Instant::now();
            (0..threads).into_par_iter().for_each(|_| {
                // SAFETY: each probe was listed only where the CPU has the features it is compiled for.
                unsafe { chains() };
            });
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{what:58} {threads} thread(s): {:8.1}",
            ops * (threads * STEPS) as f64 / best / 1e9
        );
    }
}

/// [`peak`] elsewhere: the probes are x86 only.
#[cfg(not(target_arch = "x86_64"))]
fn peak(_threads: usize, _reps: usize) {
    println!("peak: x86 only");
}
