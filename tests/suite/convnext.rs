//! ConvNeXt parity with timm on the committed tiny fixture, refusal of mismatched checkpoints, and an ignored
//! full-size (convnext_large) parity + timing run.

use crate::common;

use std::path::Path;

use common::parity;
use wstream::models::{Act, Model};
use wstream::npy;

/// wstream keeps ConvNeXt features channels-last `[b, h, w, c]`; timm's block outputs are `[b, c, h, w]`.
/// The head's `[b, classes]` is the same in both.
fn to_timm(_: &str, act: &Act) -> Act {
    let &[b, h, w, c] = act.shape.as_slice() else {
        return act.clone();
    };
    let mut out = vec![0.0f32; act.data.len()];
    for bi in 0..b {
        for y in 0..h {
            for x in 0..w {
                for ci in 0..c {
                    out[((bi * c + ci) * h + y) * w + x] =
                        act.data[((bi * h + y) * w + x) * c + ci];
                }
            }
        }
    }
    Act::new(out, vec![b, c, h, w])
}

#[test]
fn convnext_tiny_matches_timm_block_by_block() {
    parity::check("convnext_tiny", to_timm, 1e-4, 1e-4);
}

#[test]
fn convnext_block_list_is_timms() {
    let model = Model::load(parity::fixture("convnext_tiny")).unwrap();
    let names: Vec<&str> = model.blocks.iter().map(|b| b.name()).collect();
    assert_eq!(
        names,
        [
            "stem",
            "stages.0.blocks.0",
            "stages.1.downsample",
            "stages.1.blocks.0",
            "stages.2.downsample",
            "stages.2.blocks.0",
            "stages.2.blocks.1",
            "stages.3.downsample",
            "stages.3.blocks.0",
            "head"
        ]
    );
    assert_eq!(model.num_classes, 1000);
    // Every tensor is claimed by exactly one block.
    let claimed: usize = model.blocks.iter().map(|b| b.meta().tensors.len()).sum();
    assert_eq!(claimed, model.store.tensors().len());
}

/// Reads the fixture's tensors (name, shape, values) in file order.
fn fixture_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let store = wstream::Store::open(parity::fixture("convnext_tiny")).unwrap();
    store
        .tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.shape.clone(),
                store.view::<f32>(&t.name).unwrap().into_owned(),
            )
        })
        .collect()
}

/// A copy of the fixture folder whose weights are `tensors` and whose config.json is `config`.
fn modified_fixture(
    dir: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    config: &serde_json::Value,
) {
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    common::write_f32(&dir.join("model.safetensors"), &refs);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

fn fixture_config() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(parity::fixture("convnext_tiny").join("config.json")).unwrap(),
    )
    .unwrap()
}

fn load_err(dir: &Path) -> String {
    match Model::load(dir) {
        Ok(_) => panic!("a mismatched checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unchanged_copy_loads() {
    let tmp = tempfile::tempdir().unwrap();
    modified_fixture(tmp.path(), &fixture_tensors(), &fixture_config());
    Model::load(tmp.path()).unwrap();
}

#[test]
fn wrong_tensor_shape_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tensors = fixture_tensors();
    let t = tensors
        .iter_mut()
        .find(|t| t.0 == "stages.2.blocks.1.mlp.fc2.weight")
        .unwrap();
    // [24, 96] -> [24, 95]
    t.1 = vec![24, 95];
    t.2.truncate(24 * 95);
    modified_fixture(tmp.path(), &tensors, &fixture_config());
    let msg = load_err(tmp.path());
    assert!(
        msg.contains("stages.2.blocks.1.mlp.fc2.weight") && msg.contains("95"),
        "{msg}"
    );
}

#[test]
fn scalar_weights_are_errors_not_panics() {
    for name in [
        "stages.1.blocks.0.conv_dw.weight",
        "stages.2.blocks.0.mlp.fc1.weight",
        "head.fc.weight",
        "stem.0.weight",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut tensors = fixture_tensors();
        let t = tensors.iter_mut().find(|t| t.0 == name).unwrap();
        t.1 = vec![];
        t.2 = vec![1.0];
        modified_fixture(tmp.path(), &tensors, &fixture_config());
        let msg = load_err(tmp.path());
        assert!(msg.contains(name), "{name}: {msg}");
    }
}

#[test]
fn missing_tensor_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tensors = fixture_tensors();
    tensors.retain(|t| t.0 != "stages.1.blocks.0.norm.bias");
    modified_fixture(tmp.path(), &tensors, &fixture_config());
    let msg = load_err(tmp.path());
    assert!(msg.contains("stages.1.blocks.0.norm.bias"), "{msg}");
}

#[test]
fn config_for_another_family_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = fixture_config();
    config["architecture"] = "vit_tiny_patch16_224".into();
    modified_fixture(tmp.path(), &fixture_tensors(), &config);
    let msg = load_err(tmp.path());
    assert!(
        msg.contains("vit_tiny_patch16_224") && msg.contains("convnext"),
        "{msg}"
    );
}

#[test]
fn config_depths_disagreeing_with_weights_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = fixture_config();
    config["model_args"]["depths"] = serde_json::json!([1, 1, 3, 1]);
    modified_fixture(tmp.path(), &fixture_tensors(), &config);
    let msg = load_err(tmp.path());
    assert!(
        msg.contains("depths") && msg.contains("[1, 1, 2, 1]"),
        "{msg}"
    );
}

#[test]
fn convnext_v2_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tensors = fixture_tensors();
    tensors.push((
        "stages.0.blocks.0.mlp.grn.weight".into(),
        vec![32],
        vec![0.0; 32],
    ));
    modified_fixture(tmp.path(), &tensors, &fixture_config());
    let msg = load_err(tmp.path());
    assert!(msg.contains("GlobalResponseNorm"), "{msg}");
}

#[test]
fn stray_tensor_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tensors = fixture_tensors();
    tensors.push(("stages.0.downsample.0.weight".into(), vec![8], vec![1.0; 8]));
    modified_fixture(tmp.path(), &tensors, &fixture_config());
    let msg = load_err(tmp.path());
    assert!(msg.contains("stages.0.downsample.0.weight"), "{msg}");
}

/// Without `gamma` (ls_init_value=None) and with a 1x1-conv MLP (conv_mlp=True), the model runs and computes
/// the same as the Linear form with gamma = 1.
#[test]
fn conv_mlp_and_no_layer_scale_variants() {
    let base = fixture_tensors();
    let input =
        npy::read_f32(&parity::fixture("convnext_tiny").join("reference/cat.input.npy")).unwrap();
    let run = |tensors: &[(String, Vec<usize>, Vec<f32>)], config: &serde_json::Value| {
        let tmp = tempfile::tempdir().unwrap();
        modified_fixture(tmp.path(), tensors, config);
        let model = Model::load(tmp.path()).unwrap();
        model
            .forward(Act::new(input.0.clone(), input.1.clone()))
            .unwrap()
    };
    // gamma = 1 everywhere vs gamma absent.
    let ones: Vec<_> = base
        .iter()
        .map(|(n, s, v)| {
            if n.ends_with(".gamma") {
                (n.clone(), s.clone(), vec![1.0; v.len()])
            } else {
                (n.clone(), s.clone(), v.clone())
            }
        })
        .collect();
    let with_ones = run(&ones, &fixture_config());
    let no_gamma: Vec<_> = base
        .iter()
        .filter(|t| !t.0.ends_with(".gamma"))
        .cloned()
        .collect();
    let mut config = fixture_config();
    config["model_args"]["ls_init_value"] = serde_json::Value::Null;
    let without = run(&no_gamma, &config);
    assert_eq!(with_ones.data, without.data);

    // Linear MLP weights re-shaped as 1x1 convs.
    let conv: Vec<_> = base
        .iter()
        .map(|(n, s, v)| {
            let mut s = s.clone();
            if n.contains(".mlp.fc") && n.ends_with(".weight") {
                s.extend([1, 1]);
            }
            (n.clone(), s, v.clone())
        })
        .collect();
    let mut config = fixture_config();
    config["model_args"]["conv_mlp"] = true.into();
    let a = run(&conv, &config);
    let b = run(&base, &fixture_config());
    assert_eq!(a.data, b.data);

    // A config that says conv_mlp but Linear weights is refused.
    let tmp = tempfile::tempdir().unwrap();
    modified_fixture(tmp.path(), &base, &config);
    let msg = load_err(tmp.path());
    assert!(msg.contains("conv_mlp"), "{msg}");
}

#[test]
fn wrong_input_shape_is_an_error_not_a_panic() {
    let model = Model::load(parity::fixture("convnext_tiny")).unwrap();
    for shape in [vec![1, 4, 64, 64], vec![1, 3, 3, 64], vec![3, 64, 64]] {
        let n = shape.iter().product();
        let err = model
            .forward(Act::new(vec![0.0; n], shape.clone()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("stem"), "{shape:?}: {err}");
    }
    // 16x16 reaches stage 3 at 1x1 and cannot downsample again.
    let err = model
        .forward(Act::new(vec![0.0; 3 * 16 * 16], vec![1, 3, 16, 16]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("stages.3.downsample"), "{err}");
    // A block handed the wrong width.
    let err = model.blocks[1]
        .forward(
            &model.store,
            Act::new(vec![0.0; 4 * 4 * 5], vec![1, 4, 4, 5]),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("stages.0.blocks.0"), "{err}");
}

/// Full-size parity and speed: `WSTREAM_FULLSIZE=/work/fullsize cargo test --release --test suite --
/// --ignored --nocapture convnext_large_fullsize`.
#[test]
#[ignore = "needs WSTREAM_FULLSIZE (timm exports made by tools/export_timm.py)"]
fn convnext_large_fullsize() {
    parity::fullsize("convnext_large");
}

/// A packed copy (`convert --layout packed`: panel-order weights, packed kernel, fused epilogues) matches
/// timm block by block too.
#[test]
fn convnext_tiny_packed_matches_timm_block_by_block() {
    parity::check_packed("convnext_tiny", to_timm, 1e-4, 1e-4);
}
