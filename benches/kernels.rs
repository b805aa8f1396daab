//! Kernels at the Large models' shapes: ViT-L linear layers, ConvNeXt-L depthwise 7x7 per stage, Swin-L
//! window attention. Weights are plain buffers here; the models bench reads them from mapped files.

mod common;

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
        ("fc1_batch8", 1576, 1024, 4096),
        ("convnext_s1_fc1", 784, 384, 1536),
        ("fc1_batch2", 394, 1024, 4096),
        ("swin_s2_qkv_batch8", 1568, 768, 2304),
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

/// `ops::matmul` alone at the shapes that dominate the three models ([`common::GEMM_SHAPES`]), 2 threads.
fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    for (name, m, k, n) in common::GEMM_SHAPES {
        let a = values(m * k, 1);
        let b = values(n * k, 2);
        let mut dst = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        g.bench_function(BenchmarkId::new(name, format!("{m}x{k}x{n}")), |bench| {
            bench.iter(|| {
                let (av, bv) = (
                    ops::MatRef::rows(&a, m, k),
                    ops::MatRef::transposed(&b, n, k),
                );
                ops::matmul(black_box(&mut dst), av, bv, false)
            })
        });
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
        let add = |_: usize, h: usize, row: usize, s: &mut [f32]| {
            for (v, b) in s.iter_mut().zip(&bias[(h * 49 + row) * 49..]) {
                *v += b;
            }
        };
        for (kind, products) in [("", ops::Products::F32), ("_bf16", ops::Products::Bf16)] {
            g.bench_function(
                BenchmarkId::from_parameter(format!("stage{stage}_{windows}x{heads}heads{kind}")),
                |bench| {
                    bench.iter(|| {
                        ops::attention(
                            black_box(&qkv),
                            windows,
                            49,
                            heads,
                            32,
                            Some(&add),
                            products,
                        )
                    })
                },
            );
        }
    }
    g.finish();
}

/// ViT-L's global attention (197 tokens, 16 heads of 64) and the element-wise kernels around the linears.
fn vit_l_rest(c: &mut Criterion) {
    let mut g = c.benchmark_group("vit_l_rest");
    let qkv = values(197 * 3 * 1024, 9);
    for (kind, products) in [("", ops::Products::F32), ("_bf16", ops::Products::Bf16)] {
        g.bench_function(format!("attention_197x16heads{kind}"), |bench| {
            bench.iter(|| ops::attention(black_box(&qkv), 1, 197, 16, 64, None, products))
        });
    }
    let x = values(197 * 1024, 10);
    let (w, b) = (values(1024, 11), values(1024, 12));
    g.bench_function("layer_norm_197x1024", |bench| {
        bench.iter(|| {
            let mut y = x.clone();
            ops::layer_norm(&mut y, 1024, &w, &b, 1e-6);
            y
        })
    });
    // A fresh copy each time: GELU applied over and over drives values into denormals.
    let h = values(197 * 4096, 13);
    g.bench_function("gelu_197x4096", |bench| {
        bench.iter(|| {
            let mut y = h.clone();
            ops::gelu(&mut y);
            y
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    gemm,
    linear,
    depthwise,
    window_attention,
    vit_l_rest
);
criterion_main!(benches);
