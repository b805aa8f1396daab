//! What a timm user asks of answers: pre-logits features matching timm's, logits beside the top classes,
//! synthetic weights flagged wherever they run, and models of the same name told apart.

use crate::common;

use std::path::{Path, PathBuf};

use common::parity::fixture;
use common::wstream;
use wstream::models::{Act, Model};
use wstream::npy;
use wstream::pipeline::{Output, Pipeline};

const FAMILIES: [&str; 3] = ["vit_tiny", "convnext_tiny", "swin_tiny"];

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn cat() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/cat.jpg")
        .display()
        .to_string()
}

/// timm's `forward_head(forward_features(x), pre_logits=True)` (reference/<stem>.features.npy, written by
/// tools/export_timm.py) for every reference input of the three families, within 1e-4.
#[test]
fn features_match_timm_pre_logits() {
    for name in FAMILIES {
        let dir = fixture(name);
        let model = Model::load(&dir).unwrap().into_features().unwrap();
        let mut checked = 0;
        for entry in std::fs::read_dir(dir.join("reference")).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().unwrap().to_string();
            let Some(stem) = file.strip_suffix(".input.npy") else {
                continue;
            };
            let (input, shape) = npy::read_f32(&path).unwrap();
            let ours = model.forward(Act::new(input, shape)).unwrap();
            let (want, want_shape) =
                npy::read_f32(&dir.join(format!("reference/{stem}.features.npy"))).unwrap();
            assert_eq!(ours.shape, want_shape, "{name} {stem}");
            let diff = ours
                .data
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(diff <= 1e-4, "{name} {stem}: features differ by {diff}");
            checked += 1;
        }
        assert!(checked >= 1, "{name}: no reference input");
    }
}

/// The features head declares no classifier tensor, so the executor never pages the classifier in.
#[test]
fn the_features_head_does_not_read_the_classifier() {
    for (name, fc) in [
        ("vit_tiny", "head.weight"),
        ("convnext_tiny", "head.fc.weight"),
        ("swin_tiny", "head.fc.weight"),
    ] {
        let full = Model::load(fixture(name)).unwrap();
        let last = full.blocks.len() - 1;
        assert!(full.block_tensors(last).contains(&fc.to_string()), "{name}");
        let features = full.into_features().unwrap();
        let tensors = features.block_tensors(last);
        assert!(
            !tensors.iter().any(|t| t.starts_with(&fc[..fc.len() - 6])),
            "{name}: {tensors:?}"
        );
        assert!(!tensors.is_empty(), "{name}: the head's norm stays");
    }
}

#[test]
fn classify_prints_features_per_model_and_no_ensemble() {
    let models: Vec<String> = FAMILIES
        .iter()
        .map(|f| fixture(f).display().to_string())
        .collect();
    let mut args = vec!["classify", "--json", "--output-type", "features"];
    for m in &models {
        args.extend(["--model", m]);
    }
    let img = cat();
    args.push(&img);
    let (code, stdout, stderr) = wstream(&args);
    assert_eq!(code, 0, "{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 1);
    let answer = &lines[0];
    assert!(answer.get("ensemble").is_none(), "{answer}");
    let widths: Vec<usize> = answer["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert!(m.get("top").is_none(), "{m}");
            m["features"].as_array().unwrap().len()
        })
        .collect();
    assert_eq!(widths, [32, 32, 64]);

    // The same run through the library gives the same vectors.
    let p = Pipeline::load(
        &models,
        wstream::pipeline::Options {
            output: Output::Features,
            ..Default::default()
        },
    )
    .unwrap();
    let items = wstream::pipeline::read_inputs(std::slice::from_ref(&img)).unwrap();
    let (answers, _) = p.run_batch(&items).unwrap();
    let lib = answers[0].as_ref().unwrap();
    for (m, j) in lib.models.iter().zip(answer["models"].as_array().unwrap()) {
        let cli: Vec<f32> = serde_json::from_value(j["features"].clone()).unwrap();
        assert_eq!(m.features.as_ref().unwrap(), &cli);
    }

    let (code, stdout, _) = wstream(&[
        "classify",
        "--output-type",
        "features",
        "--model",
        &models[2],
        &img,
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("    64 features: "), "{stdout}");
    let (code, _, stderr) = wstream(&[
        "classify",
        "--json",
        "--logits",
        "--output-type",
        "features",
        "--model",
        &models[0],
        &img,
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--logits and --output-type features exclude each other"),
        "{stderr}"
    );
}

#[test]
fn logit_output_adds_each_class_logit() {
    let m = fixture("vit_tiny").display().to_string();
    let img = cat();
    let (code, stdout, stderr) = wstream(&[
        "classify",
        "--json",
        "--logits",
        "--output-type",
        "logit",
        "--top",
        "3",
        "--model",
        &m,
        &img,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let a = &json_lines(&stdout)[0];
    let logits: Vec<f32> = serde_json::from_value(a["models"][0]["logits"].clone()).unwrap();
    for r in a["models"][0]["top"].as_array().unwrap() {
        let class = r["class"].as_u64().unwrap() as usize;
        assert_eq!(r["logit"].as_f64().unwrap() as f32, logits[class]);
    }
    // The ensemble stays a probability ranking.
    assert!(a["ensemble"]["top"][0].get("logit").is_none());
    // Without --output-type the answer is as before: no logit per class.
    let (_, stdout, _) = wstream(&["classify", "--json", "--model", &m, &img]);
    assert!(!stdout.contains("\"logit\""), "{stdout}");
    assert!(!stdout.contains("synthetic"), "{stdout}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

/// `synth` marks its weights file; the mark is seen by classify and profile (a stderr note once per model,
/// `"synthetic": true` in JSON) also for the weights file alone, and for an old synthetic model whose only
/// trace is config.json's `wstream_synthetic`. Real weights carry neither.
#[test]
fn synthetic_weights_are_flagged_by_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let synth = tmp.path().join("synth");
    let arch = "vit_tiny_patch16_224";
    let (code, _, err) = wstream(&["synth", "--arch", arch, "--out", synth.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let bytes = std::fs::read(synth.join("model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let marker = &meta.metadata().as_ref().unwrap()[wstream::models::SYNTHETIC_KEY];
    assert!(marker.contains("\"seed\":0"), "{marker}");

    // The weights file alone, without the config.json that also says so.
    let alone = tmp.path().join(format!("{arch}.safetensors"));
    std::fs::copy(synth.join("model.safetensors"), &alone).unwrap();
    // A model from before the marker: only config.json tells.
    let old = tmp.path().join("old");
    copy_dir(&fixture("vit_tiny"), &old);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(old.join("config.json")).unwrap()).unwrap();
    cfg["wstream_synthetic"] = serde_json::json!({"seed": 0});
    std::fs::write(old.join("config.json"), cfg.to_string()).unwrap();

    let real = fixture("vit_tiny").display().to_string();
    let img = cat();
    for m in [synth.clone(), alone, old] {
        let m = m.display().to_string();
        let (code, stdout, stderr) = wstream(&[
            "classify", "--json", "--model", &m, "--model", &real, &img, &img,
        ]);
        assert_eq!(code, 0, "{stderr}");
        let notes: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("synthetic weights"))
            .collect();
        assert_eq!(
            notes.len(),
            1,
            "one note for the one synthetic model: {stderr}"
        );
        assert!(notes[0].contains(&m), "{stderr}");
        for a in json_lines(&stdout) {
            assert_eq!(a["models"][0]["synthetic"], true, "{a}");
            assert!(a["models"][1].get("synthetic").is_none(), "{a}");
        }
    }
    let (code, _, stderr) = wstream(&["profile", "--model", synth.to_str().unwrap(), &img]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("holds synthetic weights"), "{stderr}");
}

/// Two models of one name: an int8 copy beside its f32 original gets `[int8]`, a bare weights file beside
/// its folder gets its position; the order of `--model` decides, the same every run.
#[test]
fn models_of_the_same_name_are_told_apart() {
    let tmp = tempfile::tempdir().unwrap();
    // ConvNeXt: its shapes alone tell the architecture, so the bare file loads without a config.json.
    let arch = "convnext_tiny";
    let folder = tmp.path().join(arch);
    copy_dir(&fixture(arch), &folder);
    let bare = tmp.path().join(format!("{arch}.safetensors"));
    std::fs::copy(folder.join("model.safetensors"), &bare).unwrap();
    let int8 = tmp.path().join("int8");
    let (code, _, err) = wstream(&[
        "convert",
        folder.to_str().unwrap(),
        int8.to_str().unwrap(),
        "--dtype",
        "int8",
    ]);
    assert_eq!(code, 0, "{err}");
    let img = cat();
    let paths: [PathBuf; 3] = [folder, int8, bare];
    let args = |order: &[usize]| {
        let mut a: Vec<String> = vec!["classify".into(), "--json".into()];
        for &i in order {
            a.extend(["--model".into(), paths[i].display().to_string()]);
        }
        a.push(img.clone());
        a
    };
    let names = |order: &[usize]| {
        let a = args(order);
        let (code, stdout, stderr) = wstream(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 0, "{stderr}");
        let names: Vec<String> = json_lines(&stdout)[0]["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect();
        (names, stderr)
    };
    let (got, stderr) = names(&[0, 1, 2]);
    assert_eq!(
        got,
        [
            arch.to_string(),
            format!("{arch}[int8]"),
            format!("{arch}[2]")
        ]
    );
    assert!(
        stderr.contains(&format!("note: {arch}[2] is {}", paths[2].display())),
        "{stderr}"
    );
    assert_eq!(names(&[0, 1, 2]).0, got, "deterministic");
    // The int8 copy first: the f32 ones are then the odd dtype.
    let (got, _) = names(&[1, 0]);
    assert_eq!(got, [arch.to_string(), format!("{arch}[f32]")]);
    // Text output shows the same names.
    let a = args(&[0, 2]);
    let text: Vec<&str> = a
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--json")
        .collect();
    let (_, stdout, _) = wstream(&text);
    assert!(stdout.contains(&format!("  {arch}[2]\n")), "{stdout}");
}

/// `--quiet` keeps stderr to warnings and errors: the synthetic-weights note goes, JSON still says so.
#[test]
fn quiet_drops_notes_but_json_still_flags_synthetic_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let synth = tmp.path().join("synth");
    let out = synth.to_str().unwrap();
    let (code, _, err) = wstream(&["synth", "--arch", "vit_tiny_patch16_224", "--out", out]);
    assert_eq!(code, 0, "{err}");
    let img = cat();
    let (code, stdout, stderr) = wstream(&["classify", "--json", "--model", out, &img]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("holds synthetic weights"), "{stderr}");
    assert_eq!(json_lines(&stdout)[0]["models"][0]["synthetic"], true);
    let (code, stdout, stderr) = wstream(&["classify", "--json", "--quiet", "--model", out, &img]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr, "");
    assert_eq!(json_lines(&stdout)[0]["models"][0]["synthetic"], true);
}

/// Features have no CSV form (its columns are classes): refused as a usage error before any work.
#[test]
fn features_to_a_csv_file_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("out.csv");
    let vit = fixture("vit_tiny").display().to_string();
    let (code, _, stderr) = wstream(&[
        "classify",
        "--output-type",
        "features",
        "--output",
        csv.to_str().unwrap(),
        "--model",
        &vit,
        &cat(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("needs a .jsonl or .json --output"),
        "{stderr}"
    );
    assert!(!csv.exists());
}
