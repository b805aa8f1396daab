//! GFLOP/s of `ops::matmul` at the models' shapes, best of N runs (robust on a shared machine).
//! `cargo run --release --example gemm_shapes -- [threads] [reps] [filter] [yt|y|linear]`: one line per shape,
//! name, MxKxN, best GFLOP/s and ms. A linear layer's shape is `out x in x rows`; the last argument picks what
//! is timed: `yt` (default) the product `w × xᵀ` into a dense `yᵀ`, `y` the same product written straight into
//! `y` (`matmul_t`), `linear` the whole `ops::linear` (product, transpose, bias) as the models call it. Run it several times (interleaved with the build it is compared to) and keep the best.
#[path = "../benches/common/mod.rs"]
mod common;

use std::time::Instant;
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
    for (name, m, k, n) in common::GEMM_SHAPES {
        if !name.contains(&filter) {
            continue;
        }
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let bias: Vec<f32> = (0..m).map(|i| (i as f32 * 0.21).cos()).collect();
        let mut dst = vec![0.0f32; m * n];
        let inner = if m * n * k < 1 << 22 { 200 } else { 1 };
        let mut best = f64::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            for _ in 0..inner {
                if mode == "linear" {
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
        }
        println!(
            "{name:14} {m}x{k}x{n} {:8.1} GFLOP/s {:8.3} ms",
            2.0 * (m * n * k) as f64 / best / 1e9,
            best * 1e3
        );
    }
}
