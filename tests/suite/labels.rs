//! Class labels as timm's inference.py makes them: `label_names` as a list or an object (index -> name),
//! top level or in `pretrained_cfg`, `label_descriptions`, `--label-type`, ImageNet-1k's synsets and
//! descriptions, and heads of other sizes (ImageNet-22k's 21,841 classes).

use crate::common;

use serde_json::json;
use wstream::classify::{labels, LabelType};
use wstream::models::Model;
use wstream::pipeline::{read_inputs, Options, Pipeline};

fn load(dir: &tempfile::TempDir) -> Model {
    Model::load(dir.path()).unwrap()
}

fn label_err(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = common::edited("vit_tiny", |_, c| edit(c));
    match labels(&load(&dir), LabelType::Description) {
        Ok(_) => panic!("the labels were accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn imagenet_names_descriptions_and_indices() {
    let m = Model::load(common::parity::fixture("vit_tiny")).unwrap();
    let name = labels(&m, LabelType::Name).unwrap();
    let description = labels(&m, LabelType::Description).unwrap();
    let index = labels(&m, LabelType::Index).unwrap();
    assert_eq!(name[281], "n02123045");
    assert_eq!(description[281], "tabby, tabby cat");
    assert_eq!(index[281], "281");
    assert_eq!(
        (name.len(), description.len(), index.len()),
        (1000, 1000, 1000)
    );
}

#[test]
fn label_names_as_an_object_with_descriptions() {
    // A sparse object, as timm's CustomDatasetInfo takes it: classes it leaves out are `<unmapped:N>`.
    let dir = common::edited("vit_tiny", |_, c| {
        c["label_names"] = json!({"0": "tench", "281": "tabby"});
        c["label_descriptions"] = json!({"tench": "a fish", "tabby": "a cat"});
    });
    let m = load(&dir);
    let d = labels(&m, LabelType::Description).unwrap();
    assert_eq!((d[0].as_str(), d[281].as_str()), ("a fish", "a cat"));
    assert_eq!(d[1], "<unmapped:1>");
    let n = labels(&m, LabelType::Name).unwrap();
    assert_eq!((n[0].as_str(), n[281].as_str()), ("tench", "tabby"));
    assert_eq!(labels(&m, LabelType::Index).unwrap()[281], "281");

    // A list inside pretrained_cfg (where timm's hub loader puts it), without descriptions: the name.
    let dir = common::edited("vit_tiny", |_, c| {
        let names: Vec<String> = (0..1000).map(|i| format!("L{i}")).collect();
        c["pretrained_cfg"]["label_names"] = json!(names);
    });
    assert_eq!(
        labels(&load(&dir), LabelType::Description).unwrap()[7],
        "L7"
    );
}

#[test]
fn labels_that_cannot_fit_the_head_are_refused() {
    let e = label_err(|c| c["label_names"] = json!(["a", "b"]));
    assert!(
        e.contains("label_names lists 2 names but the model's head has 1000 classes"),
        "{e}"
    );
    let e = label_err(|c| c["label_names"] = json!({"1000": "x"}));
    assert!(
        e.contains("label_names names class 1000 but the model's head has 1000 classes"),
        "{e}"
    );
    let e = label_err(|c| c["label_names"] = json!({"cat": "x"}));
    assert!(
        e.contains("label_names key \"cat\" is not a class index"),
        "{e}"
    );
    let e = label_err(|c| c["label_names"] = json!({"1": "x", "01": "y"}));
    assert!(e.contains("names class 1 twice"), "{e}");
    let e = label_err(|c| c["label_names"] = json!({"1": 5}));
    assert!(e.contains("label_names[\"1\"] is 5, not a string"), "{e}");
    let e = label_err(|c| c["label_names"] = json!(7));
    assert!(e.contains("label_names is 7, expected"), "{e}");
    let e = label_err(|c| {
        c["label_names"] = json!({"3": "x"});
        c["label_descriptions"] = json!({"y": "why"});
    });
    assert!(
        e.contains("label_descriptions has no description for label name \"x\""),
        "{e}"
    );
    assert!(e.contains("config.json"), "the error names the config: {e}");
}

/// An ImageNet-22k head (21,841 classes) made at test time from the ViT fixture: labels from the config
/// when it has them, `class N` when it has none; the answer ranks all 21,841.
#[test]
fn a_21841_class_head_runs_and_is_labelled() {
    const N: usize = 21_841;
    let in22k = |names: Option<Vec<String>>| {
        common::edited("vit_tiny", move |t, c| {
            for (name, shape, values) in t.iter_mut() {
                if name.starts_with("head.") {
                    shape[0] = N;
                    let len: usize = shape.iter().product();
                    // Class 12345 scores highest for every input.
                    *values = (0..len)
                        .map(|i| if i / (len / N) == 12_345 { 0.5 } else { 0.0 })
                        .collect();
                }
            }
            c["num_classes"] = json!(N);
            c["pretrained_cfg"]["num_classes"] = json!(N);
            if let Some(names) = names {
                c["label_names"] = json!(names);
            }
        })
    };
    let input = common::parity::fixture("vit_tiny").join("reference/cat.input.npy");
    let items = read_inputs(&[&input]).unwrap();

    let dir = in22k(None);
    let p = Pipeline::load(&[dir.path()], Options::default()).unwrap();
    assert_eq!(p.models()[0].num_classes, N);
    let (answers, _) = p.run_batch(&items).unwrap();
    let top = &answers[0].as_ref().unwrap().models[0].top[0];
    assert_eq!((top.class, top.label.as_str()), (12_345, "class 12345"));

    let names: Vec<String> = (0..N).map(|i| format!("synset{i}")).collect();
    let dir = in22k(Some(names));
    let p = Pipeline::load(&[dir.path()], Options::default()).unwrap();
    let (answers, _) = p.run_batch(&items).unwrap();
    let top = &answers[0].as_ref().unwrap().models[0].top[0];
    assert_eq!((top.class, top.label.as_str()), (12_345, "synset12345"));
}

/// `classify --json` with object labels: the labels, and each model's `preprocess` for an image input.
#[test]
fn cli_answers_carry_labels_and_the_transform() {
    let dir = common::edited("convnext_tiny", |_, c| {
        c["label_names"] = json!({"5": "five"});
    });
    let model = dir.path().to_str().unwrap();
    let cat = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cat.jpg");
    let (code, out, err) = common::wstream(&[
        "classify",
        "--json",
        "--top",
        "1000",
        "--label-type",
        "name",
        "--model",
        model,
        cat,
    ]);
    assert_eq!(code, 0, "{err}");
    let a: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let m = &a["models"][0];
    let five = m["top"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["class"] == 5)
        .unwrap();
    assert_eq!(five["label"], "five");
    let six = m["top"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["class"] == 6)
        .unwrap();
    assert_eq!(six["label"], "<unmapped:6>");
    let pre = &m["preprocess"];
    assert_eq!(pre["input_size"], json!([3, 64, 64]));
    assert_eq!(pre["crop_pct"], json!(1.0));
    assert_eq!(pre["from"]["crop_pct"], "test");
    assert_eq!(pre["interpolation"], "bicubic");

    // A preprocessed tensor went through no transform: no `preprocess` field.
    let npy = common::parity::fixture("convnext_tiny").join("reference/cat.input.npy");
    let (code, out, err) = common::wstream(&[
        "classify",
        "--json",
        "--model",
        model,
        "--img-size",
        "64",
        npy.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("preprocess"), "{out}");
}
