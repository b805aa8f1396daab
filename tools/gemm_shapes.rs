//! GFLOP/s of `ops::matmul` at the models' shapes, best of N runs (robust on a shared machine).
//! `cargo run --release --example gemm_shapes -- [threads] [reps] [filter] [yt|y|linear]`: one line per shape,
//! name, MxKxN, best GFLOP/s and ms, and GFLOP per CPU-second
//! (getrusage: all threads, robust to other processes holding the cores). A linear layer's shape is `out x in x rows`; the last argument picks what
//! is timed: `yt` (default) the product `w × xᵀ` into a dense `yᵀ`, `y` the same product written straight into
//! `y` (`matmul_t`), `linear` the whole `ops::linear` (product, transpose, bias) as the models call it, `packed` the same
//! layer over kernel-ready panels (`ops::packed::linear_packed` with its bias epilogue), `packed_stream` the
//! same over copies of the panels that together exceed the last-level cache (each call's weights come from
//! memory, as a model's streamed blocks do), `peak` the FMA
//! throughput probe instead of the shapes (independent AVX-512 or AVX2 FMA chains on every thread). Run it several times (interleaved with the build it is compared to) and keep the best.
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

/// GFLOP/s of `threads` threads each running 12 independent chains of FMAs (enough to cover the FMA
/// latency on current x86 cores), AVX-512 where the CPU has it, else AVX2's 8 lanes, best of `reps`: what
/// the box sustains, the kernels' ceiling.
#[cfg(target_arch = "x86_64")]
fn peak(threads: usize, reps: usize) {
    use rayon::prelude::*;
    use std::arch::x86_64::*;
    const STEPS: usize = 50_000_000;
    #[target_feature(enable = "avx512f")]
    fn chains512() -> f32 {
        let mut acc = [_mm512_set1_ps(1.0); 12];
        let a = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm512_set1_ps(std::hint::black_box(1e-7));
        for _ in 0..STEPS / 12 {
            for c in acc.iter_mut() {
                *c = _mm512_fmadd_ps(*c, a, b);
            }
        }
        acc.iter().map(|&c| _mm512_reduce_add_ps(c)).sum()
    }
    #[target_feature(enable = "avx2,fma")]
    fn chains256() -> f32 {
        let mut acc = [_mm256_set1_ps(1.0); 12];
        let a = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm256_set1_ps(std::hint::black_box(1e-7));
        for _ in 0..STEPS / 12 {
            for c in acc.iter_mut() {
                *c = _mm256_fmadd_ps(*c, a, b);
            }
        }
        let mut lanes = [0.0f32; 8];
        acc.iter()
            .map(|&c| {
                // SAFETY: 8 f32 into an array of 8.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), c) };
                lanes.iter().sum::<f32>()
            })
            .sum()
    }
    let (isa, lanes) = if is_x86_feature_detected!("avx512f") {
        ("AVX-512", 16.0)
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        ("AVX2", 8.0)
    } else {
        println!("fma peak: neither AVX-512 nor AVX2 with FMA here");
        return;
    };
    let mut best = f64::MAX;
    for _ in 0..reps.min(5) {
        let t = Instant::now();
        (0..threads).into_par_iter().for_each(|_| {
            // SAFETY: the ISA each call needs was detected above.
            std::hint::black_box(unsafe {
                if lanes == 16.0 {
                    chains512()
                } else {
                    chains256()
                }
            });
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    let flops = 2.0 * lanes * (threads * STEPS / 12 * 12) as f64;
    println!(
        "fma peak ({isa}), {threads} thread(s): {:8.1} GFLOP/s",
        flops / best / 1e9
    );
}

/// [`peak`] elsewhere: the probe is x86 only.
#[cfg(not(target_arch = "x86_64"))]
fn peak(_threads: usize, _reps: usize) {
    println!("fma peak: x86 only");
}
