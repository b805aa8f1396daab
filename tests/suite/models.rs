//! What every family's builder refuses: degenerate tensor shapes (a zero or missing dimension) and a head
//! whose rows disagree with config.json's `num_classes`. Each is a load error naming the tensor, never a panic,
//! and `convert` of such a checkpoint writes nothing.

use crate::common;

use common::{edited, Tensors};
use wstream::models::Model;

/// Tensors given new shapes (and as many values).
type Reshape<'a> = &'a [(&'a str, &'a [usize])];

/// Loads a copy of `fixture` with `edit` applied to its tensors and config.json; returns the load error.
fn load_err(fixture: &str, edit: impl FnOnce(&mut Tensors, &mut serde_json::Value)) -> String {
    let dir = edited(fixture, edit);
    match Model::load(dir.path()) {
        Ok(_) => panic!("{fixture}: the edited checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

/// `tensors` with the named ones given new shapes, filled with 0.5.
fn reshape(tensors: &mut Tensors, changes: Reshape) {
    for (name, shape) in changes {
        let t = tensors.iter_mut().find(|t| t.0 == *name).unwrap();
        t.1 = shape.to_vec();
        t.2 = vec![0.5; shape.iter().product()];
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
        let err = load_err(fixture, |tensors, _| reshape(tensors, changes));
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

#[test]
fn convert_refuses_degenerate_shapes_and_writes_nothing() {
    // Before the builders checked shapes, `convert` of the first case wrote an int8 file and exited 0, and
    // the second panicked (exit 101).
    let cases: &[(&str, Reshape)] = &[
        (
            "vit_tiny",
            &[("head.weight", &[0, 32]), ("head.bias", &[0])],
        ),
        ("vit_tiny", &[("head.weight", &[])]),
        ("vit_tiny", &[("patch_embed.proj.weight", &[32, 3, 0, 0])]),
        ("vit_tiny", &[("blocks.0.mlp.fc2.weight", &[32, 0])]),
        ("swin_tiny", &[("layers.0.blocks.0.attn.qkv.weight", &[])]),
        (
            "swin_tiny",
            &[("layers.0.blocks.0.mlp.fc1.weight", &[0, 16])],
        ),
        ("convnext_tiny", &[("head.fc.weight", &[])]),
    ];
    for (fixture, changes) in cases {
        let input = edited(fixture, |tensors, _| reshape(tensors, changes));
        let weights = input.path().join("model.safetensors");
        let before = std::fs::read(&weights).unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        for (out, flags) in [
            ("out.safetensors", &["--dtype", "int8"][..]),
            ("out", &["--dtype", "f16", "--layout", "exec"]),
        ] {
            let out = out_dir.path().join(out);
            let mut args = vec![
                "convert",
                input.path().to_str().unwrap(),
                out.to_str().unwrap(),
            ];
            args.extend_from_slice(flags);
            let (code, stdout, stderr) = common::wstream(&args);
            let what = format!("{fixture} {changes:?} {flags:?}");
            assert_eq!(code, 1, "{what}: {stdout}{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr}");
            assert!(
                stderr.contains(&format!("`{}`", changes[0].0)),
                "{what}: names the tensor: {stderr}"
            );
            let left: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().collect();
            assert!(left.is_empty(), "{what}: wrote {left:?}");
        }
        assert_eq!(std::fs::read(&weights).unwrap(), before, "input untouched");
    }
}
