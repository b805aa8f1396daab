//! bf16 files computed in bf16 (`vdpbf16ps` where the CPU has AVX512_BF16, BFDOT where an aarch64 CPU has
//! FEAT_BF16): the fixtures' logits against timm's f32 logits at the bounds, and the widening path,
//! taken without the instruction or with `WSTREAM_KERNELS=portable`, still giving exactly what an f32 file
//! of the same values gives.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::parity::fixture;
use wstream::convert::{convert, Dtype, Layout, Options};
use wstream::models::{Act, Model};
use wstream::npy;

const MODELS: [&str; 3] = ["vit_tiny", "convnext_tiny", "swin_tiny"];

fn converted(from: &Path, to: PathBuf, dtype: Dtype) -> PathBuf {
    let opts = Options {
        dtype,
        layout: Layout::Source,
    };
    convert(from, &to, &opts, |_, _| {}).unwrap();
    to
}

/// Each reference input of a fixture with timm's f32 logits for it.
fn references(model: &str) -> Vec<(String, Act, Vec<f32>)> {
    let dir = fixture(model).join("reference");
    let mut refs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let stem = name.strip_suffix(".input.npy")?.to_string();
            let (x, shape) = npy::read_f32(&dir.join(&name)).unwrap();
            let (want, _) = npy::read_f32(&dir.join(format!("{stem}.logits.npy"))).unwrap();
            Some((stem, Act::new(x, shape), want))
        })
        .collect();
    refs.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!refs.is_empty());
    refs
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / norm(a) / norm(b)
}

/// The best class and its lead over the second.
fn top(v: &[f32]) -> (usize, f32) {
    let best = (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
    let second = (0..v.len())
        .filter(|&i| i != best)
        .map(|i| v[i])
        .fold(f32::MIN, f32::max);
    (best, v[best] - second)
}

/// The targets on every reference input: cosine >= 0.9995 with timm's f32 logits, and the same top-1
/// wherever timm's lead is above 0.1. Measured on these inputs (AVX512_BF16, Zen 5): worst cosine 0.99997,
/// max abs logit difference 2.7e-2, about the widening path's; BFDOT (qemu-aarch64 `max`) the same, 0.99997
/// and 2.8e-2. A max abs bound of 0.1 catches a broken layer that a cosine near 1 can hide.
#[test]
fn bf16_logits_meet_the_targets_against_timm() {
    let tmp = tempfile::tempdir().unwrap();
    eprintln!("bf16 native: {}", wstream::ops::bf16_native());
    for model in MODELS {
        let dir = converted(&fixture(model), tmp.path().join(model), Dtype::Bf16);
        let m = Model::load(&dir).unwrap();
        for (stem, x, want) in references(model) {
            let got = m.forward(x).unwrap().data;
            let cos = cosine(&got, &want);
            let d = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            eprintln!("{model} {stem}: cosine {cos:.6}, max abs {d:.2e}");
            assert!(cos >= 0.9995, "{model} {stem}: cosine {cos}");
            assert!(d <= 0.1, "{model} {stem}: max abs logit difference {d}");
            let ((t, lead), (g, _)) = (top(&want), top(&got));
            assert!(
                t == g || lead <= 0.1,
                "{model} {stem}: top-1 {g}, timm's {t} leads by {lead}"
            );
        }
    }
}

/// `wstream classify --logits` with `WSTREAM_KERNELS` set as given, elapsed times removed.
fn logits(model: &Path, kernels: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wstream"));
    cmd.args(["classify", "--json", "--logits", "--model"])
        .arg(model)
        .arg(fixture("vit_tiny").join("reference/cat.input.npy"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/coffee.png"));
    match kernels {
        Some(k) => cmd.env("WSTREAM_KERNELS", k),
        None => cmd.env_remove("WSTREAM_KERNELS"),
    };
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["models"].to_string()
        })
        .collect()
}

/// The widening path (`WSTREAM_KERNELS=portable`, as on a CPU without the instruction) gives a bf16 file
/// bitwise the logits of an f32 file holding the same (widened) values: today's outputs. Where the CPU has
/// a bf16 kernel (AVX512_BF16, AVX2 with FMA, or aarch64's FEAT_BF16) the default run differs from it: the native path
/// is the one taken; where it lacks it (a Pi 5's Cortex-A76, `QEMU_CPU=cortex-a76`) the default run is the
/// widening path, bit for bit.
#[test]
fn widening_path_is_unchanged_and_native_path_is_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let b = converted(&fixture("vit_tiny"), tmp.path().join("b"), Dtype::Bf16);
    let wide = converted(&b, tmp.path().join("wide"), Dtype::F32);
    let widened = logits(&b, Some("portable"));
    assert_eq!(widened, logits(&wide, Some("portable")));
    // The CPU's own answer, not `ops::bf16_native`: this test may run under WSTREAM_KERNELS=portable, which
    // the child below does not inherit.
    #[cfg(target_arch = "x86_64")]
    let native = (std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512bf16"))
        || (std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"));
    #[cfg(target_arch = "aarch64")]
    let native = std::arch::is_aarch64_feature_detected!("bf16");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let native = false;
    eprintln!("this CPU multiplies bf16 natively: {native}");
    if native {
        assert_ne!(logits(&b, None), widened, "the native path was not taken");
    } else {
        assert_eq!(logits(&b, None), widened, "the widening path was not taken");
    }
}
