//! Image preprocessing against timm's eval transform (`tests/fixtures/*/reference/<stem>.input.npy`,
//! made by timm 1.0.31 + Pillow 13.0.0 from `tests/data/`), and the errors for bad image files.

use crate::common;

use std::path::{Path, PathBuf};

use wstream::models::config::PretrainedCfg;
use wstream::models::ModelConfig;
use wstream::preprocess::{load_rgb, CropMode, Filter, Preprocess};
use wstream::Error;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn preprocess_for(model_dir: &Path) -> Preprocess {
    let cfg = ModelConfig::load_optional(&model_dir.join("config.json")).unwrap();
    Preprocess::from_config(&cfg, model_dir).unwrap()
}

/// Mean and max absolute difference from timm's tensor in pixel levels (`|diff| * std * 255`).
fn diff_levels(pre: &Preprocess, ours: &[f32], timm: &[f32]) -> (f64, f64) {
    assert_eq!(ours.len(), timm.len());
    let plane = ours.len() / 3;
    let (mut sum, mut max) = (0f64, 0f64);
    for (i, (a, b)) in ours.iter().zip(timm).enumerate() {
        let d = ((a - b).abs() * pre.std[i / plane] * 255.0) as f64;
        sum += d;
        max = max.max(d);
    }
    (sum / ours.len() as f64, max)
}

/// Preprocesses `tests/data/<image>` for the fixture and compares with timm's tensor.
fn compare(fixture: &str, image: &str) -> (f64, f64) {
    let dir = root().join("tests/fixtures").join(fixture);
    let pre = preprocess_for(&dir);
    let img = load_rgb(&root().join("tests/data").join(image)).unwrap();
    let ours = pre.apply(&img);
    let stem = Path::new(image).file_stem().unwrap().to_str().unwrap();
    let (timm, shape) =
        wstream::npy::read_f32(&dir.join(format!("reference/{stem}.input.npy"))).unwrap();
    assert_eq!(shape, [1, 3, pre.size[0], pre.size[1]]);
    let (mean, max) = diff_levels(&pre, &ours, &timm);
    println!("{fixture:>13} {image:<13} {pre}: mean |diff| {mean:.4} levels, max {max:.4}");
    (mean, max)
}

#[test]
fn png_inputs_match_timm_exactly() {
    // No decoder difference: the same RGB pixels, Pillow's resampling arithmetic and torch's f32
    // normalisation, so the very same floats.
    for image in ["coffee.png", "cat_grey.png", "cat_rgba.png"] {
        let (mean, max) = compare("vit_tiny", image);
        assert_eq!((mean, max), (0.0, 0.0), "{image}: diff in levels");
    }
}

#[test]
fn jpeg_input_matches_timm_exactly() {
    // libjpeg-turbo's decoder set up as Pillow sets it up: the same pixels, so the same floats.
    for fixture in ["vit_tiny", "convnext_tiny", "swin_tiny"] {
        let (mean, max) = compare(fixture, "cat.jpg");
        assert_eq!((mean, max), (0.0, 0.0), "{fixture}: diff in levels");
    }
}

/// A synthetic texture, `((x * 37 + y * 91 + c * 53) ^ (x * y * 7)) & 255`, so the expected values can
/// be stated in the test.
fn texture(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([0, 1, 2].map(|c| (((x * 37 + y * 91 + c * 53) ^ (x * y * 7)) & 255) as u8))
    })
}

// timm's transform (8 px, crop_pct 0.875, bicubic, mean/std 0.5) of `texture(60, 150)` and
// `texture(150, 60)`, as pixel levels in CHW order: `np.rint((x * 0.5 + 0.5) * 255)`, Pillow 13.0.0.
// Pillow resamples the portrait vertically first (150 -> 22 rows is more than twice the 60 -> 9
// column reduction) and the landscape horizontally first; the other order would change some levels.
const PORTRAIT: [u8; 192] = [
    123, 127, 129, 135, 124, 126, 117, 125, 139, 133, 130, 125, 114, 119, 126, 119, 121, 126, 126,
    118, 123, 128, 119, 115, 131, 133, 126, 118, 117, 129, 126, 135, 130, 112, 104, 127, 123, 129,
    129, 149, 115, 121, 130, 135, 132, 130, 119, 129, 121, 130, 123, 124, 132, 125, 130, 129, 129,
    122, 135, 132, 145, 132, 134, 122, 127, 130, 131, 119, 125, 132, 146, 128, 123, 132, 124, 129,
    130, 136, 129, 130, 127, 121, 119, 104, 117, 128, 133, 127, 121, 127, 133, 116, 126, 127, 131,
    125, 130, 103, 107, 133, 136, 124, 126, 146, 117, 124, 122, 124, 129, 125, 128, 127, 133, 127,
    130, 121, 133, 143, 126, 123, 132, 127, 126, 135, 130, 134, 128, 135, 126, 124, 123, 131, 129,
    116, 123, 137, 129, 131, 135, 126, 141, 131, 129, 121, 132, 128, 131, 116, 108, 130, 130, 131,
    124, 123, 127, 112, 127, 129, 123, 131, 122, 133, 143, 132, 120, 125, 130, 141, 137, 129, 129,
    134, 133, 122, 125, 130, 118, 126, 141, 134, 124, 115, 121, 125, 128, 134, 122, 134, 125, 122,
    133, 120,
];
const LANDSCAPE: [u8; 192] = [
    131, 133, 136, 126, 126, 148, 123, 124, 115, 119, 129, 132, 123, 139, 128, 136, 129, 128, 124,
    131, 130, 122, 131, 128, 118, 133, 133, 144, 132, 120, 134, 129, 133, 108, 113, 137, 128, 122,
    120, 123, 117, 103, 130, 123, 134, 134, 121, 120, 135, 130, 139, 138, 132, 159, 135, 121, 123,
    139, 140, 125, 127, 134, 136, 128, 143, 118, 121, 118, 133, 151, 131, 124, 129, 124, 116, 120,
    117, 130, 133, 125, 116, 119, 125, 128, 127, 124, 122, 133, 127, 132, 122, 122, 137, 144, 129,
    134, 121, 126, 113, 131, 125, 132, 120, 109, 117, 123, 137, 118, 127, 130, 122, 119, 78, 132,
    128, 125, 129, 131, 128, 132, 127, 130, 126, 125, 125, 130, 130, 125, 152, 117, 125, 143, 135,
    117, 114, 121, 140, 130, 130, 121, 128, 117, 129, 127, 130, 139, 132, 123, 127, 130, 117, 130,
    132, 129, 135, 140, 130, 126, 127, 134, 131, 171, 134, 119, 125, 127, 130, 115, 127, 135, 131,
    131, 122, 118, 107, 129, 111, 126, 123, 124, 127, 78, 113, 128, 135, 132, 126, 136, 133, 126,
    123, 124,
];

#[test]
fn both_resampling_pass_orders_match_pillow() {
    let pre = with_cfg(|p| {
        p.input_size = Some([3, 8, 8]);
        p.mean = Some([0.5; 3]);
        p.std = Some([0.5; 3]);
    })
    .unwrap();
    for ((w, h), expected) in [((60, 150), PORTRAIT), ((150, 60), LANDSCAPE)] {
        let levels: Vec<u8> = pre
            .apply(&texture(w, h))
            .iter()
            .map(|x| ((x * 0.5 + 0.5) * 255.0).round() as u8)
            .collect();
        assert_eq!(levels, expected, "{w}x{h}");
    }
}

#[test]
fn config_resolves_like_timm() {
    let vit = preprocess_for(&root().join("tests/fixtures/vit_tiny"));
    assert_eq!(vit.size, [32, 32]);
    assert_eq!(vit.scale_size, [35, 35]); // floor(32 / 0.9)
    assert_eq!(vit.interpolation, Filter::Bicubic);
    assert_eq!(vit.crop_mode, CropMode::Center);
    assert_eq!((vit.mean, vit.std), ([0.5; 3], [0.5; 3]));
    // shorter side to 35, the longer int(35 * 451 / 300) = 52
    assert_eq!(vit.resized_size(300, 451), [35, 52]);
    assert_eq!(vit.resized_size(451, 300), [52, 35]);

    let conv = preprocess_for(&root().join("tests/fixtures/convnext_tiny"));
    assert_eq!(conv.scale_size, [67, 67]); // floor(64 / 0.95)

    // timm's defaults when the config says nothing.
    let none = Preprocess::from_config(&ModelConfig::default(), Path::new("m")).unwrap();
    assert_eq!(none.size, [224, 224]);
    assert_eq!(none.scale_size, [256, 256]); // floor(224 / 0.875)
    assert_eq!(none.interpolation, Filter::Bicubic);
    assert_eq!(none.crop_mode, CropMode::Center);
    assert_eq!(none.mean, [0.485, 0.456, 0.406]);
    assert_eq!(none.std, [0.229, 0.224, 0.225]);
    assert_eq!(
        none.to_string(),
        "resize shorter side to 256 (bicubic), centre crop 224x224, \
         normalise mean [0.485, 0.456, 0.406] std [0.229, 0.224, 0.225]"
    );
}

fn with_cfg(f: impl FnOnce(&mut PretrainedCfg)) -> wstream::Result<Preprocess> {
    let mut pre = PretrainedCfg::default();
    f(&mut pre);
    let cfg = ModelConfig {
        pretrained_cfg: Some(pre),
        ..Default::default()
    };
    Preprocess::from_config(&cfg, Path::new("models/x"))
}

fn config_msg(r: wstream::Result<Preprocess>) -> String {
    match r {
        Err(e @ Error::Config { .. }) => e.to_string(),
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

#[test]
fn other_crop_modes_and_interpolations() {
    let squash = with_cfg(|p| p.crop_mode = Some("squash".into())).unwrap();
    assert_eq!(squash.crop_mode, CropMode::Squash);
    assert_eq!(squash.resized_size(300, 451), [256, 256]);
    let border = with_cfg(|p| p.crop_mode = Some("border".into())).unwrap();
    // longer side to 256: round(300 / (451 / 256)) = 170
    assert_eq!(border.resized_size(300, 451), [170, 256]);
    let bilinear = with_cfg(|p| p.interpolation = Some("bilinear".into())).unwrap();
    assert_eq!(bilinear.interpolation, Filter::Bilinear);
    // non-square input: ResizeKeepRatio, round(side / min ratio)
    let rect = with_cfg(|p| p.input_size = Some([3, 224, 320])).unwrap();
    assert_eq!(rect.scale_size, [256, 365]);
    assert_eq!(rect.resized_size(300, 451), [256, 385]);

    // Every mode gives a full tensor, padding where the resized image is short of the crop.
    let img = load_rgb(&root().join("tests/data/coffee.png")).unwrap();
    for pre in [&squash, &border, &bilinear, &rect] {
        let x = pre.apply(&img);
        assert_eq!(x.len(), 3 * pre.size[0] * pre.size[1]);
        assert!(x.iter().all(|v| v.is_finite()));
    }
    // Border pads with the mean colour, which normalises to ~0: the top row is padding.
    let x = border.apply(&img);
    assert!(x[..224].iter().all(|v| v.abs() < 0.01), "{:?}", &x[..4]);
}

#[test]
fn unsupported_config_is_refused_clearly() {
    let msg = config_msg(with_cfg(|p| p.crop_mode = Some("fancy".into())));
    assert_eq!(
        msg,
        "models/x: config.json pretrained_cfg: crop_mode `fancy` is not supported \
         (timm's modes are center, squash and border)"
    );
    let msg = config_msg(with_cfg(|p| p.interpolation = Some("hamming".into())));
    assert!(
        msg.contains("interpolation `hamming` is not supported (only bicubic, bilinear, lanczos and nearest)"),
        "{msg}"
    );
    let msg = config_msg(with_cfg(|p| p.input_size = Some([1, 224, 224])));
    assert!(msg.contains("input_size has 1 channels"), "{msg}");
    let msg = config_msg(with_cfg(|p| p.std = Some([0.5, 0.0, 0.5])));
    assert!(msg.contains("std"), "{msg}");
    let msg = config_msg(with_cfg(|p| p.crop_pct = Some(-1.0)));
    assert!(msg.contains("crop_pct -1"), "{msg}");
    let msg = config_msg(with_cfg(|p| p.crop_pct = Some(1e-9)));
    assert!(msg.contains("resize size"), "{msg}");
}

/// `load_rgb`'s error message for a file holding `bytes`.
fn input_error(name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    match load_rgb(&path) {
        Err(Error::Input { path: p, msg }) => {
            assert_eq!(p, path);
            msg
        }
        other => panic!("{name}: expected Error::Input, got {other:?}"),
    }
}

#[test]
fn bad_image_files_are_refused_clearly() {
    assert_eq!(
        input_error("empty.jpg", b""),
        "file is empty (0 bytes), not an image"
    );
    assert_eq!(
        input_error("x.jpg", b"this is not a picture\n"),
        "not an image wstream reads (unrecognised content, it looks like text); the formats read are \
         JPEG, PNG, WebP, BMP, TIFF and GIF"
    );
    assert_eq!(
        input_error("x.png", &[0u8, 1, 2, 3, 200, 17]),
        "not an image wstream reads (unrecognised content); the formats read are JPEG, PNG, WebP, \
         BMP, TIFF and GIF"
    );
    assert_eq!(
        input_error("x.tga", b"\x00\x00\x02\x00\x00\x00\x00\x00"),
        "not an image wstream reads (unrecognised content); the formats read are JPEG, PNG, WebP, \
         BMP, TIFF and GIF"
    );
    assert_eq!(
        input_error("x.ico", b"\x00\x00\x01\x00\x01\x00\x10\x10\x00\x00"),
        "is an image in ICO format; only JPEG, PNG, WebP, BMP, TIFF and GIF are supported"
    );

    let jpeg = std::fs::read(root().join("tests/data/cat.jpg")).unwrap();
    assert_eq!(
        input_error("half.jpg", &jpeg[..jpeg.len() / 2]),
        "truncated or corrupt JPEG: the file ends before the JPEG end-of-image marker"
    );
    for cut in [3, 20, 200, jpeg.len() - 2] {
        let msg = input_error("cut.jpg", &jpeg[..cut]);
        assert!(msg.starts_with("truncated or corrupt JPEG"), "{cut}: {msg}");
    }
    let png = std::fs::read(root().join("tests/data/coffee.png")).unwrap();
    for cut in [8, 30, png.len() / 2, png.len() - 12] {
        let msg = input_error("cut.png", &png[..cut]);
        assert!(
            msg.contains("PNG") && (msg.contains("truncated") || msg.contains("corrupt")),
            "{cut}: {msg}"
        );
    }

    // A header claiming 30000 x 30000 pixels is refused before any pixel is decoded.
    let mut huge = jpeg.clone();
    let sof = huge
        .windows(2)
        .position(|w| w[0] == 0xFF && matches!(w[1], 0xC0 | 0xC2))
        .unwrap();
    huge[sof + 5..sof + 9].copy_from_slice(&[0x75, 0x30, 0x75, 0x30]);
    assert_eq!(
        input_error("huge.jpg", &huge),
        "JPEG image is 30000x30000, over the limit of 20000 pixels a side"
    );

    let dir = tempfile::tempdir().unwrap();
    let msg = load_rgb(dir.path()).unwrap_err().to_string();
    assert!(msg.ends_with(": is a folder, not an image file"), "{msg}");
    let missing = dir.path().join("missing.jpg");
    assert!(matches!(load_rgb(&missing), Err(Error::NotFound { .. })));
}

#[test]
fn grey_and_rgba_become_rgb_like_pillow() {
    let grey = load_rgb(&root().join("tests/data/cat_grey.png")).unwrap();
    assert_eq!(grey.dimensions(), (451, 300));
    assert!(grey.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    // RGBA: the alpha is dropped, the colour planes kept (the leftmost columns are fully transparent
    // but still hold the photo's colours).
    let rgba = load_rgb(&root().join("tests/data/cat_rgba.png")).unwrap();
    assert_eq!(rgba.dimensions(), (300, 200));
    assert!(rgba.pixels().take(12).any(|p| p.0 != [0, 0, 0]));
}

/// The full-size check (not run by default): timm's 224 px transforms of every `tests/data` image for
/// vit_large_patch16_224 (crop_pct 0.9, mean/std 0.5) and convnext_large (crop_pct 0.875, ImageNet),
/// made with the reference venv:
///
/// ```sh
/// mkdir -p /tmp/pp224 && .venv-ref/bin/python - <<'EOF'
/// import json, numpy as np, timm
/// from PIL import Image
/// for m in ['vit_large_patch16_224', 'convnext_large']:
///     cfg = json.load(open(f'/work/fullsize/{m}/config.json'))
///     t = timm.data.create_transform(**timm.data.resolve_data_config({}, pretrained_cfg=cfg['pretrained_cfg']))
///     for f in ['cat.jpg', 'coffee.png', 'cat_grey.png', 'cat_rgba.png']:
///         x = t(Image.open('tests/data/' + f).convert('RGB')).numpy()[None]
///         np.save(f'/tmp/pp224/{m}.{f.split(".")[0]}.npy', x.astype(np.float32))
/// EOF
/// WSTREAM_PP224=/tmp/pp224 WSTREAM_FULLSIZE=/work/fullsize \
///     cargo test --release --test suite -- --ignored --nocapture preprocess::
/// ```
#[test]
#[ignore = "needs WSTREAM_PP224 (timm outputs) and WSTREAM_FULLSIZE (model configs)"]
fn full_size_inputs_match_timm() {
    let (Some(refs), Some(models)) = (
        std::env::var_os("WSTREAM_PP224").map(PathBuf::from),
        std::env::var_os("WSTREAM_FULLSIZE").map(PathBuf::from),
    ) else {
        common::skip_or_fail(
            "full-size preprocessing parity: WSTREAM_PP224 (timm's outputs) and WSTREAM_FULLSIZE \
             (the exports' configs) are not both set; see the test's doc comment",
        );
        return;
    };
    for model in ["vit_large_patch16_224", "convnext_large"] {
        let pre = preprocess_for(&models.join(model));
        for image in ["cat.jpg", "coffee.png", "cat_grey.png", "cat_rgba.png"] {
            let img = load_rgb(&root().join("tests/data").join(image)).unwrap();
            let ours = pre.apply(&img);
            let stem = image.split('.').next().unwrap();
            let (timm, _) =
                wstream::npy::read_f32(&refs.join(format!("{model}.{stem}.npy"))).unwrap();
            let (mean, max) = diff_levels(&pre, &ours, &timm);
            println!("{model:>22} {image:<13} {pre}: mean |diff| {mean:.4} levels, max {max:.4}");
            assert!(mean < 1.0, "{model} {image}: mean {mean}");
            if image.ends_with(".png") {
                assert_eq!(max, 0.0, "{model} {image}");
            }
        }
    }
}
