//! GOP/s of int8 linear layers at the Large models' shapes, best of N runs (robust on a shared machine).
//! `cargo run --release --example int8_shapes -- [threads] [reps] [filter]`: per shape (`out x in x rows`),
//! the W8A8 path (`ops::int8::linear`: quantize, VNNI product, epilogue, transpose), its product alone
//! (`ops::int8::product_t`) and today's widening path (`ops::linear_weight` on the same int8 weight).
//! `WSTREAM_KERNELS=portable` shows the portable reference instead of the VNNI kernel.
use std::borrow::Cow;
use std::time::Instant;

use wstream::ops::int8::{self, Int8Weight};
use wstream::ops::linear_weight;
use wstream::weight::Weight;

const SHAPES: [(&str, usize, usize, usize); 12] = [
    ("vitl_qkv", 3072, 1024, 197),
    ("vitl_proj", 1024, 1024, 197),
    ("vitl_fc1", 4096, 1024, 197),
    ("vitl_fc2", 1024, 4096, 197),
    ("s2_fc1", 3072, 768, 196),
    ("s2_fc2", 768, 3072, 196),
    ("s3_fc1", 6144, 1536, 49),
    ("s3_fc2", 1536, 6144, 49),
    ("s1_fc1", 1536, 384, 784),
    ("s1_fc2", 384, 1536, 784),
    ("s0_fc1", 768, 192, 3136),
    ("s0_fc2", 192, 768, 3136),
];

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).map_or(2, |s| s.parse().unwrap());
    let reps: usize = args.get(2).map_or(10, |s| s.parse().unwrap());
    let filter = args.get(3).cloned().unwrap_or_default();
    wstream::process::keep_freed_heap();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    println!("shape out x in x rows: W8A8 GOP/s (ms) | product only GOP/s | widening GOP/s (ms)");
    for (name, out, inp, rows) in SHAPES {
        if !name.contains(&filter) {
            continue;
        }
        let q: Vec<i8> = (0..out * inp).map(|i| ((i * 7919) % 255) as i8).collect();
        let scale: Vec<f32> = (0..out).map(|o| 1e-3 * (1 + o % 7) as f32).collect();
        let x: Vec<f32> = (0..rows * inp).map(|i| (i as f32 * 0.37).sin()).collect();
        let bias: Vec<f32> = (0..out).map(|i| (i as f32 * 0.21).cos()).collect();
        let w = Int8Weight::new(&q, &scale, None);
        let ops = 2.0 * (out * inp * rows) as f64;
        let t8 = best(reps, || {
            std::hint::black_box(int8::linear(&x, rows, &w, Some(&bias)));
        });
        let a = int8::quantize(&x, rows, inp);
        let mut yt = vec![0.0f32; out * rows];
        let tp = best(reps, || int8::product_t(&a, &w, &mut yt));
        let wide = Weight::I8 {
            q: Cow::Borrowed(&q),
            scale: Cow::Borrowed(&scale),
        };
        let tw = best(reps, || {
            std::hint::black_box(linear_weight(&x, rows, &wide, out, Some(&bias)));
        });
        println!(
            "{name:<10} {out}x{inp}x{rows}: {:7.1} ({:6.2} ms) | {:7.1} | {:6.1} ({:6.2} ms)",
            ops / t8 / 1e9,
            t8 * 1e3,
            ops / tp / 1e9,
            ops / tw / 1e9,
            tw * 1e3
        );
    }
}
