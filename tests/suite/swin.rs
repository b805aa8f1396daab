//! Swin parity with timm on the committed tiny fixture, timm's buffers (relative position index, shift
//! mask) against values timm computes, a refused config/weights pairing, and (ignored) the full-size
//! swin_large parity and timing.

use crate::common;

use std::path::Path;

use common::parity;
use wstream::models::swin::{relative_position_index, shift_mask};
use wstream::models::{Act, Model};
use wstream::npy;

#[test]
fn swin_tiny_matches_timm_block_by_block() {
    // timm's Swin features are NHWC, as wstream keeps them.
    parity::check("swin_tiny", |_, a| a.clone(), 1e-4, 1e-4);
}

#[test]
fn swin_tiny_block_list() {
    let model = Model::load(parity::fixture("swin_tiny")).unwrap();
    let names: Vec<&str> = model.blocks.iter().map(|b| b.name()).collect();
    assert_eq!(
        names,
        [
            "patch_embed",
            "layers.0.blocks.0",
            "layers.0.blocks.1",
            "layers.1.downsample",
            "layers.1.blocks.0",
            "layers.1.blocks.1",
            "layers.2.downsample",
            "layers.2.blocks.0",
            "layers.2.blocks.1",
            "head",
        ]
    );
    assert_eq!(model.num_classes, 1000);
}

#[test]
fn relative_position_index_matches_timm() {
    // timm's get_relative_position_index(2, 2): (dy + 1) * 3 + (dx + 1) over tokens (0,0) (0,1) (1,0) (1,1).
    let want2: [[u32; 4]; 4] = [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]];
    assert_eq!(relative_position_index(2, 2), want2.concat());
    // get_relative_position_index(3, 3): (dy + 2) * 5 + (dx + 2).
    let want3: [[u32; 9]; 9] = [
        [12, 11, 10, 7, 6, 5, 2, 1, 0],
        [13, 12, 11, 8, 7, 6, 3, 2, 1],
        [14, 13, 12, 9, 8, 7, 4, 3, 2],
        [17, 16, 15, 12, 11, 10, 7, 6, 5],
        [18, 17, 16, 13, 12, 11, 8, 7, 6],
        [19, 18, 17, 14, 13, 12, 9, 8, 7],
        [22, 21, 20, 17, 16, 15, 12, 11, 10],
        [23, 22, 21, 18, 17, 16, 13, 12, 11],
        [24, 23, 22, 19, 18, 17, 14, 13, 12],
    ];
    assert_eq!(relative_position_index(3, 3), want3.concat());
    // A non-square window, get_relative_position_index(2, 3): (dy + 1) * 5 + (dx + 2).
    let want23: [[u32; 6]; 6] = [
        [7, 6, 5, 2, 1, 0],
        [8, 7, 6, 3, 2, 1],
        [9, 8, 7, 4, 3, 2],
        [12, 11, 10, 7, 6, 5],
        [13, 12, 11, 8, 7, 6],
        [14, 13, 12, 9, 8, 7],
    ];
    assert_eq!(relative_position_index(2, 3), want23.concat());
}

/// Checks a mask against timm's region labels per window (tokens with equal labels see each other).
fn assert_mask(mask: &[f32], labels: &[&[u32]]) {
    let n = labels[0].len();
    assert_eq!(mask.len(), labels.len() * n * n, "mask size");
    for (wi, lab) in labels.iter().enumerate() {
        for i in 0..n {
            for j in 0..n {
                let want = if lab[i] == lab[j] { 0.0 } else { -100.0 };
                assert_eq!(mask[(wi * n + i) * n + j], want, "window {wi} ({i}, {j})");
            }
        }
    }
}

#[test]
fn shift_mask_matches_timm() {
    // Labels from timm's SwinTransformerBlock(input_resolution, window_size, shift_size).attn_mask.
    assert_mask(
        &shift_mask((4, 4), (2, 2), (1, 1)),
        &[&[0, 0, 0, 0], &[0, 1, 0, 1], &[0, 0, 2, 2], &[0, 1, 2, 3]],
    );
    // 5x5 padded to 6x6 before the regions are cut.
    assert_mask(
        &shift_mask((5, 5), (3, 3), (1, 1)),
        &[
            &[0; 9],
            &[0, 0, 2, 0, 0, 2, 0, 0, 2],
            &[0, 0, 0, 0, 0, 0, 6, 6, 6],
            &[0, 0, 2, 0, 0, 2, 6, 6, 8],
        ],
    );
    // 6x3: the window covers the width, so only the height shifts (timm's `-0` slice quirk).
    assert_mask(
        &shift_mask((6, 3), (3, 3), (1, 0)),
        &[&[0; 9], &[0, 0, 0, 0, 0, 0, 6, 6, 6]],
    );
    assert!(shift_mask((4, 4), (4, 4), (0, 0)).is_empty());
}

fn copy_fixture(to: &Path) {
    let from = parity::fixture("swin_tiny");
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    match Model::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn convnext_config_with_swin_weights_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let cfg = std::fs::read_to_string(dir.path().join("config.json"))
        .unwrap()
        .replace("swin_tiny_patch4_window7_224", "convnext_tiny");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("convnext_tiny") && err.contains("swin model"),
        "{err}"
    );
}

#[test]
fn wrong_image_size_is_a_clear_error() {
    let model = Model::load(parity::fixture("swin_tiny")).unwrap();
    let x = Act::new(vec![0.0; 3 * 32 * 32], vec![1, 3, 32, 32]);
    let err = model.forward(x).unwrap_err().to_string();
    assert!(err.contains("3x32x32") && err.contains("3x64x64"), "{err}");
    let x = Act::new(vec![0.0; 3 * 64], vec![3, 64]);
    let err = model.forward(x).unwrap_err().to_string();
    assert!(err.contains("[batch, 3, 64, 64]"), "{err}");
}

#[test]
fn config_disagreeing_on_image_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    cfg["model_args"]["img_size"] = serde_json::json!([96, 96]);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("img_size 96x96"), "{err}");
}

#[test]
fn original_layout_checkpoint_is_remapped() {
    // Rewrite the fixture in the original (Microsoft) layout: stage s+1's patch merging stored at the end
    // of stage s, the classifier as `head.`, plus f32 copies of the stale buffers. Same logits expected.
    let dir = tempfile::tempdir().unwrap();
    let fixture = parity::fixture("swin_tiny");
    let store = wstream::Store::open(fixture.join("model.safetensors")).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for t in store.tensors() {
        let mut name = t.name.clone();
        for s in 1..3 {
            name = name.replace(
                &format!("layers.{s}.downsample."),
                &format!("layers.{}.downsample.", s - 1),
            );
        }
        name = name.replace("head.fc.", "head.");
        let data = store.view::<f32>(&t.name).unwrap().into_owned();
        tensors.push((name, t.shape.clone(), data));
    }
    let idx = relative_position_index(4, 4);
    tensors.push((
        "layers.0.blocks.1.attn.relative_position_index".into(),
        vec![16, 16],
        idx.iter().map(|&v| v as f32).collect(),
    ));
    tensors.push((
        "layers.0.blocks.1.attn_mask".into(),
        vec![16, 16, 16],
        shift_mask((16, 16), (4, 4), (2, 2)),
    ));
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_str(), s.clone(), d.clone()))
        .collect();
    common::write_f32(&dir.path().join("model.safetensors"), &refs);
    std::fs::copy(fixture.join("config.json"), dir.path().join("config.json")).unwrap();

    let model = Model::load(dir.path()).unwrap();
    let names: Vec<&str> = model.blocks.iter().map(|b| b.name()).collect();
    assert_eq!(names[3], "layers.1.downsample");
    assert_eq!(names[6], "layers.2.downsample");
    let (input, shape) = npy::read_f32(&fixture.join("reference/cat.input.npy")).unwrap();
    let (want, _) = npy::read_f32(&fixture.join("reference/cat.logits.npy")).unwrap();
    let got = model.forward(Act::new(input, shape)).unwrap();
    let d = got
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d <= 1e-4, "logits max abs diff {d}");
}

/// Full-size parity and speed: `WSTREAM_FULLSIZE=/work/fullsize cargo test --release --test suite --
/// --ignored --nocapture swin_large_fullsize`.
#[test]
#[ignore = "needs WSTREAM_FULLSIZE (timm exports made by tools/export_timm.py)"]
fn swin_large_fullsize() {
    parity::fullsize("swin_large_patch4_window7_224");
}

/// A packed copy (`convert --layout packed`: panel-order weights, packed kernel, fused epilogues) matches
/// timm block by block too.
#[test]
fn swin_tiny_packed_matches_timm_block_by_block() {
    parity::check_packed("swin_tiny", |_, a| a.clone(), 1e-4, 1e-4);
}
