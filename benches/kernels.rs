//! Kernels at the Large models' shapes: ViT-L linear layers, ConvNeXt-L depthwise 7x7 per stage, Swin-L
//! window attention. Weights are plain buffers here; the models bench reads them from mapped files.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use wstream::ops;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                / (1 << 24) as f32
                - 0.5
        })
        .collect()
}

fn linear(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear_vit_l");
    for (name, rows, inp, out) in [
        ("qkv", 197, 1024, 3072),
        ("fc1", 197, 1024, 4096),
        ("fc2", 197, 4096, 1024),
    ] {
        let x = values(rows * inp, 1);
        let w = values(out * inp, 2);
        let b = values(out, 3);
        g.throughput(Throughput::Elements((2 * rows * inp * out) as u64));
        g.bench_function(
            BenchmarkId::new(name, format!("[{rows},{inp}]x[{inp},{out}]")),
            |bench| bench.iter(|| ops::linear(black_box(&x), rows, &w, out, Some(&b))),
        );
    }
    g.finish();
}

fn depthwise(c: &mut Criterion) {
    let mut g = c.benchmark_group("depthwise7x7_convnext_l");
    for (hw, ch) in [(56, 192), (28, 384), (14, 768), (7, 1536)] {
        let x = values(hw * hw * ch, 4);
        let w = values(ch * 49, 5);
        let b = values(ch, 6);
        g.throughput(Throughput::Bytes((2 * hw * hw * ch * 4) as u64));
        g.bench_function(
            BenchmarkId::from_parameter(format!("[1,{hw},{hw},{ch}]")),
            |bench| bench.iter(|| ops::depthwise_conv(black_box(&x), (1, hw, hw, ch), 7, &w, &b)),
        );
    }
    g.finish();
}

fn window_attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("window_attention_swin_l");
    // (stage, windows, heads) at 224 px, window 7 (49 tokens), head_dim 32.
    for (stage, windows, heads) in [(0, 64, 6), (1, 16, 12), (2, 4, 24), (3, 1, 48)] {
        let qkv = values(windows * 49 * 3 * heads * 32, 7);
        let bias = values(heads * 49 * 49, 8);
        let add = |_: usize, h: usize, s: &mut [f32]| {
            for (v, b) in s.iter_mut().zip(&bias[h * 49 * 49..]) {
                *v += b;
            }
        };
        g.bench_function(
            BenchmarkId::from_parameter(format!("stage{stage}_{windows}x{heads}heads")),
            |bench| {
                bench.iter(|| ops::attention(black_box(&qkv), windows, 49, heads, 32, Some(&add)))
            },
        );
    }
    g.finish();
}

criterion_group!(benches, linear, depthwise, window_attention);
criterion_main!(benches);
