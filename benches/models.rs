//! Each Large model end to end, batch 1, warm page cache, weights streamed from synthetic files with timm's
//! exact layout (written once into target/bench-weights by `wstream::synth`), streamed and with the plain
//! runner, plus the three-model ensemble.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use wstream::exec::{ExecOptions, Executor};
use wstream::models::{Act, Model};

const ARCHS: [&str; 3] = [
    "vit_large_patch16_224",
    "convnext_large",
    "swin_large_patch4_window7_224",
];

fn model(arch: &str) -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-weights")
        .join(arch);
    if !dir.join("config.json").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        wstream::synth::write(arch, &dir, 0, |_| {}).expect("synthesise bench weights");
    }
    Model::load(&dir).expect("load bench weights")
}

fn image() -> Act {
    Act::new(
        (0..3 * 224 * 224)
            .map(|i| ((i % 255) as f32 / 127.0) - 1.0)
            .collect(),
        vec![1, 3, 224, 224],
    )
}

fn models(c: &mut Criterion) {
    // As the command line does, so the figures are the CLI's.
    wstream::process::keep_freed_heap();
    let all: Vec<Model> = ARCHS.iter().map(|a| model(a)).collect();
    let mut g = c.benchmark_group("model_batch1_warm");
    g.sample_size(10);
    for m in &all {
        let one = std::slice::from_ref(m);
        let exec = Executor::new(one, ExecOptions::default()).unwrap();
        g.bench_function(format!("{}/streamed", m.name), |b| {
            b.iter(|| exec.run(vec![image()]).unwrap())
        });
        // The plain runner keeps every page mapped: the streaming executor's cost is the difference.
        g.bench_function(format!("{}/plain", m.name), |b| {
            b.iter(|| m.forward(image()).unwrap())
        });
    }
    let exec = Executor::new(&all, ExecOptions::default()).unwrap();
    g.bench_function("ensemble", |b| {
        b.iter(|| exec.run(vec![image(), image(), image()]).unwrap())
    });
    g.finish();
}

criterion_group!(benches, models);
criterion_main!(benches);
