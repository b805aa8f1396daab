//! Parity against timm's reference outputs in tests/fixtures/<model>/reference (made by tools/export_timm.py).

use std::path::{Path, PathBuf};

use wstream::models::{Act, Model};
use wstream::npy;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs `model` on each reference image and compares every block's output with timm's (after `to_timm`
/// converts wstream's layout to timm's), then the logits. A mismatch names the first block that differs.
pub fn check(model_dir: &str, to_timm: impl Fn(&str, &Act) -> Act, block_tol: f32, logit_tol: f32) {
    let dir = fixture(model_dir);
    let model = Model::load(&dir).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference/blocks.json")).unwrap())
            .unwrap();
    let names: Vec<&str> = manifest["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let files: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let ours: Vec<&str> = model.blocks.iter().map(|b| b.name()).collect();
    assert_eq!(ours, names, "block list differs from timm's modules");

    let mut images = 0;
    for entry in std::fs::read_dir(dir.join("reference")).unwrap() {
        let path = entry.unwrap().path();
        let Some(stem) = path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .strip_suffix(".input.npy")
        else {
            continue;
        };
        images += 1;
        let (input, shape) = npy::read_f32(&path).unwrap();
        let mut worst = Vec::new();
        let logits = model
            .forward_with(Act::new(input, shape), |i, out| {
                let (want, want_shape) =
                    npy::read_f32(&dir.join(format!("reference/{stem}.blocks/{}", files[i])))
                        .unwrap();
                let got = to_timm(names[i], out);
                assert_eq!(got.shape, want_shape, "{stem}: block {} shape", names[i]);
                let d = max_abs_diff(&got.data, &want);
                assert!(
                    d <= block_tol,
                    "{stem}: first block to differ is {}: max abs diff {d} > {block_tol}",
                    names[i]
                );
                worst.push(d);
            })
            .unwrap();
        let (want, _) = npy::read_f32(&dir.join(format!("reference/{stem}.logits.npy"))).unwrap();
        let d = max_abs_diff(&logits.data, &want);
        eprintln!("{model_dir}/{stem}: logits max abs diff {d:e}; per block {worst:?}");
        assert!(
            d <= logit_tol,
            "{stem}: logits max abs diff {d} > {logit_tol}"
        );
        let spread = want.iter().cloned().fold(f32::MIN, f32::max)
            - want.iter().cloned().fold(f32::MAX, f32::min);
        assert!(
            spread > 0.1,
            "reference logits are degenerate (spread {spread})"
        );
    }
    assert!(images > 0, "no reference inputs in {}", dir.display());
}
