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
    check_model(
        model_dir,
        &fixture(model_dir),
        to_timm,
        block_tol,
        logit_tol,
    )
}

/// [`check`] on a copy of the fixture converted with `wstream convert --layout packed` (the linear weights
/// in the packed kernel's panel order), against the same references.
pub fn check_packed(
    model_dir: &str,
    to_timm: impl Fn(&str, &Act) -> Act,
    block_tol: f32,
    logit_tol: f32,
) {
    let tmp = tempfile::tempdir().unwrap();
    let packed = tmp.path().join(model_dir);
    let opts = wstream::convert::Options {
        layout: wstream::convert::Layout::Packed,
        ..Default::default()
    };
    wstream::convert::convert(&fixture(model_dir), &packed, &opts, |_, _| {}).unwrap();
    let model = Model::load(&packed).unwrap();
    assert!(
        model
            .store
            .tensors()
            .iter()
            .any(|t| model.store.is_packed(&t.name)),
        "{model_dir}: nothing was packed"
    );
    check_model(model_dir, &packed, to_timm, block_tol, logit_tol)
}

fn check_model(
    model_dir: &str,
    weights: &Path,
    to_timm: impl Fn(&str, &Act) -> Act,
    block_tol: f32,
    logit_tol: f32,
) {
    let dir = fixture(model_dir);
    let model = Model::load(weights).unwrap();
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

/// Full-size parity and speed against a timm export in `$WSTREAM_FULLSIZE/<name>` (tools/export_timm.py):
/// max abs logit diff on reference/cat.input.npy (<= 1e-4), and the plain runner's time per image at 2
/// threads (median of 3 after a warm-up that pages the weights in) next to timm's from reference/meta.json,
/// with the time per kind of block. Without WSTREAM_FULLSIZE, [`super::skip_or_fail`].
pub fn fullsize(name: &str) {
    let Ok(root) = std::env::var("WSTREAM_FULLSIZE") else {
        super::skip_or_fail(&format!(
            "{name} full-size parity: WSTREAM_FULLSIZE is not set (the folder of timm exports made by \
             tools/export_timm.py)"
        ));
        return;
    };
    let dir = Path::new(&root).join(name);
    let model = Model::load(&dir).unwrap();
    let (input, shape) = npy::read_f32(&dir.join("reference/cat.input.npy")).unwrap();
    let (want, _) = npy::read_f32(&dir.join("reference/cat.logits.npy")).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference/meta.json")).unwrap())
            .unwrap();
    let x = Act::new(input, shape);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let (logits, mut times, parts) = pool.install(|| {
        let logits = model.forward(x.clone()).unwrap();
        let mut times = Vec::new();
        let mut parts: Vec<(String, f64)> = Vec::new();
        for _ in 0..3 {
            let start = std::time::Instant::now();
            let mut last = start;
            let out = model
                .forward_with(x.clone(), |i, _| {
                    let name = model.blocks[i].name();
                    let kind = name
                        .trim_end_matches(|c: char| c.is_ascii_digit())
                        .trim_end_matches('.')
                        .to_string();
                    let ms = last.elapsed().as_secs_f64() * 1e3 / 3.0;
                    match parts.iter_mut().find(|(k, _)| *k == kind) {
                        Some((_, t)) => *t += ms,
                        None => parts.push((kind, ms)),
                    }
                    last = std::time::Instant::now();
                })
                .unwrap();
            times.push(start.elapsed().as_secs_f64() * 1e3);
            assert_eq!(out.data, logits.data, "repeated runs differ");
        }
        (logits, times, parts)
    });
    times.sort_by(f64::total_cmp);
    let d = max_abs_diff(&logits.data, &want);
    let parts: Vec<String> = parts.iter().map(|(k, t)| format!("{k} {t:.0}")).collect();
    eprintln!(
        "{name}: logits max abs diff {d:e}; {:.0} ms per image (median of 3 at 2 threads, runs {times:.0?}); \
         timm {} ms\n  time per part (ms): {}",
        times[1],
        meta["timm_forward_ms"]["median"],
        parts.join(", ")
    );
    assert!(d <= 1e-4, "{name}: logits max abs diff {d} > 1e-4");
}
