//! What every family's builder refuses: degenerate tensor shapes (a zero or missing dimension) and a head
//! whose rows disagree with config.json's `num_classes`. Each is a load error naming the tensor, never a panic.

mod common;

use common::parity;
use wstream::models::Model;
use wstream::Store;

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;
/// Tensors given new shapes (and as many values).
type Reshape<'a> = &'a [(&'a str, &'a [usize])];

/// Loads a copy of `fixture` with `edit` applied to its tensors and config.json; returns the load error.
fn load_err(fixture: &str, edit: impl FnOnce(&mut Tensors, &mut serde_json::Value)) -> String {
    let src = parity::fixture(fixture);
    let store = Store::open(&src).unwrap();
    let mut tensors: Tensors = store
        .tensors()
        .iter()
        .map(|t| {
            let v = store.view::<f32>(&t.name).unwrap().into_owned();
            (t.name.clone(), t.shape.clone(), v)
        })
        .collect();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut tensors, &mut config);
    let dir = tempfile::tempdir().unwrap();
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    common::write_f32(&dir.path().join("model.safetensors"), &refs);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    match Model::load(dir.path()) {
        Ok(_) => panic!("{fixture}: the edited checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn degenerate_shapes_are_refused_naming_the_tensor() {
    // (fixture, tensors given new shapes); the error must name the first.
    let cases: &[(&str, Reshape)] = &[
        ("vit_tiny", &[("head.weight", &[])]),
        (
            "vit_tiny",
            &[("head.weight", &[0, 32]), ("head.bias", &[0])],
        ),
        ("vit_tiny", &[("blocks.0.mlp.fc1.weight", &[])]),
        ("vit_tiny", &[("blocks.0.mlp.fc1.weight", &[0, 32])]),
        ("vit_tiny", &[("blocks.0.mlp.fc2.weight", &[32, 0])]),
        ("vit_tiny", &[("patch_embed.proj.weight", &[32, 3, 0, 0])]),
        ("vit_tiny", &[("pos_embed", &[1, 0])]),
        ("swin_tiny", &[("layers.0.blocks.0.attn.qkv.weight", &[])]),
        ("swin_tiny", &[("layers.0.blocks.0.mlp.fc1.weight", &[])]),
        (
            "swin_tiny",
            &[("layers.0.blocks.0.mlp.fc1.weight", &[0, 16])],
        ),
        ("swin_tiny", &[("head.fc.weight", &[])]),
        (
            "swin_tiny",
            &[("head.fc.weight", &[0, 64]), ("head.fc.bias", &[0])],
        ),
        ("swin_tiny", &[("patch_embed.proj.weight", &[16, 3, 0, 0])]),
        ("convnext_tiny", &[("stem.0.weight", &[8, 3, 0, 0])]),
        ("convnext_tiny", &[("head.fc.weight", &[])]),
        (
            "convnext_tiny",
            &[("stages.0.blocks.0.conv_dw.weight", &[8, 1, 0, 0])],
        ),
    ];
    for (fixture, changes) in cases {
        let err = load_err(fixture, |tensors, _| {
            for (name, shape) in *changes {
                let t = tensors.iter_mut().find(|t| t.0 == *name).unwrap();
                t.1 = shape.to_vec();
                t.2 = vec![0.5; shape.iter().product()];
            }
        });
        let name = changes[0].0;
        assert!(
            err.contains(&format!("`{name}`")),
            "{fixture} {changes:?}: expected `{name}` in: {err}"
        );
    }
}

#[test]
fn every_family_checks_num_classes() {
    for (fixture, head) in [
        ("vit_tiny", "head.weight"),
        ("swin_tiny", "head.fc.weight"),
        ("convnext_tiny", "head.fc.weight"),
    ] {
        let err = load_err(fixture, |_, config| config["num_classes"] = 10.into());
        assert!(
            err.contains("num_classes 10") && err.contains(head) && err.contains("1000 rows"),
            "{fixture}: {err}"
        );
    }
}
