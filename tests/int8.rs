//! Int8 files computed in int8 (W8A8): the timm fixtures' logits stay close to timm's, files written
//! before `convert` stored column sums give the same answers, and `--int8-activations off` keeps the
//! weight-only path.

mod common;

use std::path::{Path, PathBuf};

use common::parity::fixture;
use common::{skip_or_fail, wstream};
use wstream::convert::{convert, Dtype, Layout, Options};
use wstream::models::{Act, Model};
use wstream::npy;
use wstream::ops::int8;

const FIXTURES: [&str; 3] = ["vit_tiny", "convnext_tiny", "swin_tiny"];

fn int8_copy(dir: &Path, model: &str) -> PathBuf {
    let out = dir.join(format!("{model}-int8"));
    let opts = Options {
        dtype: Dtype::Int8,
        layout: Layout::Exec,
    };
    convert(&fixture(model), &out, &opts, |_, _| {}).unwrap();
    out
}

fn cat(model: &str) -> (Act, Vec<f32>) {
    let dir = fixture(model).join("reference");
    let (x, shape) = npy::read_f32(&dir.join("cat.input.npy")).unwrap();
    let (want, _) = npy::read_f32(&dir.join("cat.logits.npy")).unwrap();
    (Act::new(x, shape), want)
}

fn run(path: &Path, x: &Act, int8_activations: bool) -> Vec<f32> {
    let mut m = Model::load(path).unwrap();
    m.int8_activations = int8_activations;
    m.forward(x.clone()).unwrap().data
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap()
}

fn vnni_or_skip(what: &str) -> bool {
    let ok = int8::available(64);
    if !ok && std::env::var_os("WSTREAM_KERNELS").is_none_or(|v| v != "portable") {
        skip_or_fail(&format!(
            "{what}: this CPU has no int8 kernel (AVX512-VNNI, AVX2, dotprod)"
        ));
    }
    ok
}

/// W8A8 logits of the int8 fixtures against timm's f32 logits: cosine >= 0.995 (the target) and
/// the same top-1; and they differ from the weight-only path's (int8 activations did run).
#[test]
fn w8a8_fixtures_stay_close_to_timm() {
    let tmp = tempfile::tempdir().unwrap();
    let vnni = vnni_or_skip("W8A8 differs from weight-only");
    for model in FIXTURES {
        let path = int8_copy(tmp.path(), model);
        let (x, want) = cat(model);
        let (w8a8, wide) = (run(&path, &x, true), run(&path, &x, false));
        let (c8, cw) = (cosine(&w8a8, &want), cosine(&wide, &want));
        eprintln!("{model}: cosine vs timm f32: W8A8 {c8:.6}, weight-only {cw:.6}");
        assert!(c8 >= 0.995, "{model}: W8A8 cosine {c8}");
        assert_eq!(argmax(&w8a8), argmax(&want), "{model}: top-1");
        if vnni {
            assert_ne!(w8a8, wide, "{model}: W8A8 ran");
        }
    }
}

/// A file from before column sums were stored (the same file with every `_colsum` tensor dropped) loads,
/// runs W8A8 with sums computed at each call, and answers bitwise as the file with them does.
#[test]
fn int8_files_without_column_sums_give_the_same_answers() {
    let tmp = tempfile::tempdir().unwrap();
    for model in FIXTURES {
        let path = int8_copy(tmp.path(), model);
        let file = path.join("model.safetensors");
        let bytes = std::fs::read(&file).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let kept: Vec<(String, safetensors::tensor::TensorView)> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| !n.ends_with("_colsum") && !n.starts_with("__pad__"))
            .collect();
        assert!(kept.len() < st.len());
        let old = tmp.path().join(format!("{model}-old"));
        std::fs::create_dir(&old).unwrap();
        std::fs::copy(path.join("config.json"), old.join("config.json")).unwrap();
        safetensors::serialize_to_file(kept, None, &old.join("model.safetensors")).unwrap();
        let (x, _) = cat(model);
        for on in [true, false] {
            assert_eq!(run(&old, &x, on), run(&path, &x, on), "{model} W8A8 {on}");
        }
    }
}

/// `classify --int8-activations off` answers as the weight-only path, `on` (the default) as W8A8; a value
/// other than on/off is a usage error.
#[test]
fn the_flag_picks_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let vnni = vnni_or_skip("the flag changes the answer");
    let path = int8_copy(tmp.path(), "vit_tiny");
    let p = path.to_str().unwrap();
    let img = fixture("vit_tiny").join("reference/cat.input.npy");
    let img = img.to_str().unwrap();
    let logits = |flag: Option<&str>| {
        let mut args = vec!["classify", "--json", "--logits", "--model", p, img];
        if let Some(f) = flag {
            args.extend(["--int8-activations", f]);
        }
        let (code, out, err) = wstream(&args);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        v["models"][0]["logits"].clone()
    };
    let (default, on, off) = (logits(None), logits(Some("on")), logits(Some("off")));
    assert_eq!(default, on);
    if vnni {
        assert_ne!(on, off);
    }
    let (x, _) = cat("vit_tiny");
    let wide = run(&path, &x, false);
    let off: Vec<f32> = off
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(off, wide);
    let (code, _, err) = wstream(&["classify", "--int8-activations", "maybe", "--model", p, img]);
    assert_eq!(code, 2);
    assert!(err.contains("--int8-activations"), "{err}");
}
