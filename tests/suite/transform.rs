//! The eval transform a model gets from its config and the caller's overrides, against timm's own
//! `resolve_data_config` + `create_transform` (`tests/fixtures/transforms/`, made by
//! `tools/transform_refs.py` with timm 1.0.31 + Pillow 13.0.0 from PNG photos, so bit for bit).

use crate::common;

use std::path::{Path, PathBuf};

use serde_json::Value;
use wstream::models::config::PretrainedCfg;
use wstream::models::ModelConfig;
use wstream::pipeline::{Options, Pipeline};
use wstream::preprocess::{load_rgb, CropMode, Filter};
use wstream::transform::{Origin, Overrides, Transform};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn three(v: &Value) -> [f32; 3] {
    match floats(v)[..] {
        [x] => [x; 3],
        [r, g, b] => [r, g, b],
        ref other => panic!("{other:?}"),
    }
}

/// inference.py's flags as a case records them.
fn overrides(args: &Value, use_test_size: bool) -> Overrides {
    Overrides {
        use_train_size: !use_test_size,
        img_size: args.get("img_size").map(|v| v.as_u64().unwrap() as usize),
        crop_pct: args.get("crop_pct").map(|v| v.as_f64().unwrap()),
        crop_mode: args
            .get("crop_mode")
            .map(|v| CropMode::from_name(v.as_str().unwrap()).unwrap()),
        interpolation: args
            .get("interpolation")
            .map(|v| Filter::from_name(v.as_str().unwrap()).unwrap()),
        mean: args.get("mean").map(three),
        std: args.get("std").map(three),
    }
}

#[test]
fn every_field_and_flag_matches_timm_bit_for_bit() {
    let dir = root().join("tests/fixtures/transforms");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = meta["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 15);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let pre: PretrainedCfg = serde_json::from_value(case["pretrained_cfg"].clone()).unwrap();
        let cfg = ModelConfig {
            pretrained_cfg: Some(pre),
            ..Default::default()
        };
        let over = overrides(&case["args"], case["use_test_size"].as_bool().unwrap());
        let t = Transform::resolve(&cfg, &over, Path::new(name)).unwrap();
        let want = &case["resolved"];
        let size: Vec<usize> = want["input_size"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.input_size.to_vec(), size, "{name}");
        assert_eq!(t.crop_pct, want["crop_pct"].as_f64().unwrap(), "{name}");
        assert_eq!(t.crop_mode.name(), want["crop_mode"], "{name}");
        assert_eq!(t.interpolation.name(), want["interpolation"], "{name}");
        assert_eq!(t.mean.to_vec(), floats(&want["mean"]), "{name}");
        assert_eq!(t.std.to_vec(), floats(&want["std"]), "{name}");

        let img = load_rgb(
            &root()
                .join("tests/data")
                .join(case["image"].as_str().unwrap()),
        )
        .unwrap();
        let ours = t.preprocess().apply(&img);
        let (timm, shape) = wstream::npy::read_f32(&dir.join(format!("{name}.npy"))).unwrap();
        assert_eq!(shape, t.input_size.to_vec(), "{name}");
        let first = ours.iter().zip(&timm).position(|(a, b)| a != b);
        assert_eq!(first, None, "{name}: first differs at {first:?}");
    }
}

#[test]
fn each_value_says_where_it_came_from() {
    let cfg = ModelConfig::load_optional(&root().join("tests/fixtures/convnext_tiny/config.json"))
        .unwrap();
    // The fixture has crop_pct 0.95 and test_crop_pct 1.0, no test_input_size.
    let t = Transform::resolve(&cfg, &Overrides::default(), Path::new("m")).unwrap();
    assert_eq!((t.input_size, t.crop_pct), ([3, 64, 64], 1.0));
    assert_eq!(t.from.input_size, Origin::Config);
    assert_eq!(t.from.crop_pct, Origin::Test);
    let train = Overrides {
        use_train_size: true,
        ..Default::default()
    };
    let t = Transform::resolve(&cfg, &train, Path::new("m")).unwrap();
    assert_eq!((t.crop_pct, t.from.crop_pct), (0.95, Origin::Config));
    let flags = Overrides {
        img_size: Some(80),
        crop_mode: Some(CropMode::Border),
        mean: Some([0.5; 3]),
        ..Default::default()
    };
    let t = Transform::resolve(&ModelConfig::default(), &flags, Path::new("m")).unwrap();
    assert_eq!(t.input_size, [3, 80, 80]);
    assert_eq!(t.from.input_size, Origin::Flag);
    assert_eq!(t.from.crop_mode, Origin::Flag);
    assert_eq!(t.from.std, Origin::Default);
    assert_eq!(t.from.crop_pct, Origin::Default);
    assert_eq!(
        t.to_string().lines().next().unwrap(),
        "input_size    3x80x80                  from --img-size"
    );
    assert!(
        t.to_string()
            .contains("std           [0.229, 0.224, 0.225]    from timm's default"),
        "{t}"
    );
    // The JSON form, as answers carry it.
    let json = serde_json::to_value(&t).unwrap();
    assert_eq!(json["crop_mode"], "border");
    assert_eq!(json["from"]["input_size"], "flag");
    assert_eq!(json["from"]["crop_pct"], "default");
}

#[test]
fn bad_overrides_name_the_flag() {
    let msg = |over: Overrides| match Transform::resolve(
        &ModelConfig::default(),
        &over,
        Path::new("m"),
    ) {
        Err(e @ wstream::Error::Options(_)) => e.to_string(),
        other => panic!("expected Error::Options, got {other:?}"),
    };
    let m = msg(Overrides {
        crop_pct: Some(1e-9),
        ..Default::default()
    });
    assert!(
        m.contains("--crop-pct 0.000000001 makes the resize size"),
        "{m}"
    );
    let m = msg(Overrides {
        std: Some([0.5, 0.0, 0.5]),
        ..Default::default()
    });
    assert!(
        m.contains("--std [0.5, 0.0, 0.5] must be finite and non-zero"),
        "{m}"
    );
    let m = msg(Overrides {
        img_size: Some(0),
        ..Default::default()
    });
    assert!(m.contains("--img-size 0x0 is not usable"), "{m}");
}

/// test_input_size is the size the model runs at by default: a ConvNeXt takes it; a ViT cannot, and the
/// error says where the size came from and how to run at the train size.
#[test]
fn test_input_size_runs_the_model_at_that_size() {
    let conv = common::edited("convnext_tiny", |_, c| {
        c["pretrained_cfg"]["test_input_size"] = serde_json::json!([3, 96, 96]);
    });
    let p = Pipeline::load(&[conv.path()], Options::default()).unwrap();
    assert_eq!(p.input_size(0), [3, 96, 96]);
    let train = Options {
        transform: Overrides {
            use_train_size: true,
            ..Default::default()
        },
        ..Options::default()
    };
    let p = Pipeline::load(&[conv.path()], train).unwrap();
    assert_eq!(p.input_size(0), [3, 64, 64]);

    let vit = common::edited("vit_tiny", |_, c| {
        c["pretrained_cfg"]["test_input_size"] = serde_json::json!([3, 48, 48]);
    });
    let err = Pipeline::load(&[vit.path()], Options::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("input 3x48x48 does not fit")
            && err.contains("comes from pretrained_cfg.test_input_size")
            && err.contains("[3, 32, 32]")
            && err.contains("--use-train-size"),
        "{err}"
    );
    assert!(Pipeline::load(&[vit.path()], train).is_ok());
}

/// `--verbose` prints each model's transform with where each value came from; flags change it.
#[test]
fn cli_verbose_shows_the_resolved_transform() {
    let model = common::parity::fixture("convnext_tiny");
    let cat = root().join("tests/data/cat.jpg");
    let (code, out, err) = common::wstream(&[
        "classify",
        "--verbose",
        "--interpolation",
        "bilinear",
        "--mean",
        "0.5,0.4,0.3",
        "--model",
        model.to_str().unwrap(),
        cat.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("convnext_tiny"), "{out}");
    for line in [
        "convnext_tiny preprocessing:",
        "  input_size    3x64x64                  from pretrained_cfg.input_size",
        "  crop_pct      1                        from pretrained_cfg.test_crop_pct",
        "  crop_mode     center                   from pretrained_cfg.crop_mode",
        "  interpolation bilinear                 from --interpolation",
        "  mean          [0.5, 0.4, 0.3]          from --mean",
        "  std           [0.229, 0.224, 0.225]    from pretrained_cfg.std",
    ] {
        assert!(
            err.lines().any(|l| l == line),
            "missing {line:?} in:\n{err}"
        );
    }
    // Bad flag values: one line, exit 2.
    for (flag, value, says) in [
        (
            "--mean",
            "0.5,0.5",
            "has 2 values; give one (all channels) or three",
        ),
        (
            "--std",
            "x",
            "is not one number or three comma-separated numbers",
        ),
        ("--crop-pct", "0", "is not a positive number"),
        ("--interpolation", "box", "invalid value 'box'"),
    ] {
        let (code, _, err) = common::wstream(&[
            "classify",
            flag,
            value,
            "--model",
            model.to_str().unwrap(),
            cat.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{flag} {value}: {err}");
        assert!(err.contains(says) && err.lines().count() == 1, "{err}");
    }
}

/// A bare .safetensors without a config.json beside it runs on timm's defaults and says so on stderr.
#[test]
fn cli_warns_which_preprocessing_a_bare_file_gets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weights.safetensors");
    std::fs::copy(
        common::parity::fixture("convnext_tiny").join("model.safetensors"),
        &file,
    )
    .unwrap();
    let cat = root().join("tests/data/cat.jpg");
    let (code, out, err) = common::wstream(&[
        "classify",
        "--model",
        file.to_str().unwrap(),
        cat.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty());
    assert_eq!(
        err.trim(),
        format!(
            "warning: {}: no config.json beside it (nor one in its metadata); assuming timm's defaults \
             for weights (224x224, crop_pct 0.875, bicubic, mean [0.485, 0.456, 0.406], std [0.229, 0.224, \
             0.225]) and ImageNet-1k labels",
            file.display()
        )
    );
    // With the config beside it, no warning.
    std::fs::copy(
        common::parity::fixture("convnext_tiny").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let (code, _, err) = common::wstream(&[
        "classify",
        "--model",
        file.to_str().unwrap(),
        cat.to_str().unwrap(),
    ]);
    assert_eq!((code, err.as_str()), (0, ""));
}
