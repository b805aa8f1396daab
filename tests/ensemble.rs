//! The mission, end to end: the three Large architectures (synthetic weights, timm's exact layout, 2.6 GiB of
//! f32) as one ensemble, batch 1, through the `wstream` binary. Peak RSS must stay <= 256 MiB, and the run
//! must complete inside a 512 MiB memory cgroup (RSS + page cache, weights dropped from the cache first)
//! with logits identical to the unconstrained run. Run it in release mode (`cargo test --release`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use wstream::process::children_peak_rss;
use wstream::residency::drop_file_cache;

fn classify_args(models: &[PathBuf]) -> Vec<String> {
    let mut args = vec![
        "classify".to_string(),
        "--json".into(),
        "--logits".into(),
        "--threads".into(),
        "2".into(),
    ];
    for m in models {
        args.push("--model".into());
        args.push(m.display().to_string());
    }
    args.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/cat.jpg")
            .display()
            .to_string(),
    );
    args
}

fn logits(stdout: &[u8]) -> Vec<Vec<f32>> {
    let v: serde_json::Value = serde_json::from_slice(stdout).expect("one JSON answer");
    v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

#[test]
fn three_large_models_in_a_few_hundred_mib() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ensemble");
    let models = common::large_models(&dir);
    let args = classify_args(&models);

    // Unconstrained (but streamed): the reference logits and the peak RSS of the process.
    let before = children_peak_rss();
    let out = Command::new(env!("CARGO_BIN_EXE_wstream"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak = children_peak_rss();
    assert!(
        peak > before,
        "the classify run is the largest child so far"
    );
    eprintln!("ensemble peak RSS (VmHWM): {} MiB", peak >> 20);
    assert!(peak <= 256 << 20, "peak RSS {} MiB > 256 MiB", peak >> 20);
    let reference = logits(&out.stdout);
    assert_eq!(reference.len(), 3);
    assert!(reference
        .iter()
        .all(|l| l.len() == 1000 && l.iter().all(|v| v.is_finite())));

    // Inside a 512 MiB cgroup, weights cold so their page cache is charged to the box.
    for m in &models {
        drop_file_cache(&std::fs::File::open(m.join("model.safetensors")).unwrap()).unwrap();
    }
    let Some((stdout, _)) =
        common::wstream_in_membox("512M", &args, "the ensemble's 512 MiB cgroup run")
    else {
        return;
    };
    assert_eq!(
        logits(&stdout),
        reference,
        "logits under the cgroup equal the unconstrained run's"
    );
}
