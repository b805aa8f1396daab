//! GFLOP/s of a bf16 weight's linear layer (`ops::linear_weight`, natively multiplied where the CPU has
//! AVX512_BF16) against the same layer on f32 weights (`ops::linear`), at the models' shapes, best of N runs.
//! `cargo run --release --example bf16_shapes -- [threads] [reps] [filter]`: one line per shape, `out x in x
//! rows`, best GFLOP/s and ms of each and the ratio. `WSTREAM_KERNELS=portable` times the widening path.
#[path = "../benches/common/mod.rs"]
mod common;

use std::borrow::Cow;
use std::time::Instant;

use half::bf16;
use wstream::ops::{linear, linear_weight};
use wstream::weight::Weight;

/// Best wall seconds and best CPU seconds per call.
fn best_of(reps: usize, inner: usize, mut f: impl FnMut()) -> (f64, f64) {
    let (mut best, mut best_cpu) = (f64::MAX, f64::MAX);
    for _ in 0..reps {
        let (t, c) = (Instant::now(), wstream::process::cpu_seconds());
        for _ in 0..inner {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / inner as f64);
        best_cpu = best_cpu.min((wstream::process::cpu_seconds() - c) / inner as f64);
    }
    (best, best_cpu)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).map_or(2, |s| s.parse().unwrap());
    let reps: usize = args.get(2).map_or(20, |s| s.parse().unwrap());
    let filter = args.get(3).cloned().unwrap_or_default();
    wstream::process::keep_freed_heap();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let extra = [
        ("k4064", 1024usize, 4064usize, 197usize),
        ("k4096", 1024, 4096, 197),
        ("k4128", 1024, 4128, 197),
    ];
    for (name, m, k, n) in common::GEMM_SHAPES.into_iter().chain(extra) {
        if !name.contains(&filter) {
            continue;
        }
        // A `_rows` shape is `x [rows, in] × wᵀ`: M rows, N outputs; the others `w × xᵀ`.
        let (out, rows) = if name.ends_with("_rows") {
            (n, m)
        } else {
            (m, n)
        };
        let w: Vec<f32> = (0..out * k)
            .map(|i| (i as f32 * 0.11).cos() * 0.05)
            .collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bias: Vec<f32> = (0..out).map(|i| (i as f32 * 0.21).cos()).collect();
        let weight = Weight::Bf16(Cow::Borrowed(&wb));
        let inner = if out * rows * k < 1 << 22 { 200 } else { 1 };
        let f32_s = best_of(reps, inner, || {
            std::hint::black_box(linear(&x, rows, &w, out, Some(&bias)));
        });
        let bf16_s = best_of(reps, inner, || {
            std::hint::black_box(linear_weight(&x, rows, &weight, out, Some(&bias)));
        });
        let gf = |s: f64| 2.0 * (out * rows * k) as f64 / s / 1e9;
        println!(
            "{name:14} {out}x{k}x{rows} f32 {:6.1} GFLOP/s {:7.3} ms ({:6.1} per CPU-s)  bf16 {:6.1} GFLOP/s \
             {:7.3} ms ({:6.1} per CPU-s)  {:.2}x",
            gf(f32_s.0),
            f32_s.0 * 1e3,
            gf(f32_s.1),
            gf(bf16_s.0),
            bf16_s.0 * 1e3,
            gf(bf16_s.1),
            f32_s.0 / bf16_s.0
        );
    }
}
