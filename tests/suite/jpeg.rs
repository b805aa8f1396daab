//! Decoded pixels against Pillow's (`Image.open(p).convert("RGB")`, Pillow 13.0.0 with libjpeg-turbo 3.2.0),
//! and logits through the whole image path against timm's, on the files in tests/data/jpeg made by
//! tools/jpeg_fixtures.py (which says how each was written).

use crate::common;

use std::path::{Path, PathBuf};

use wstream::preprocess::load_rgb;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg")
}

/// Every pixel of `name` as wstream decodes it equals Pillow's; on failure, the first difference.
fn assert_pillow_pixels(name: &str) {
    let ours = load_rgb(&data().join(name)).unwrap();
    let pillow = load_rgb(&data().join(format!("{name}.pillow.png"))).unwrap();
    assert_eq!(ours.dimensions(), pillow.dimensions(), "{name}: size");
    let differing = ours
        .pixels()
        .zip(pillow.pixels())
        .filter(|(a, b)| a != b)
        .count();
    if differing > 0 {
        let (i, (a, b)) = ours
            .pixels()
            .zip(pillow.pixels())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .unwrap();
        let w = ours.width() as usize;
        panic!(
            "{name}: {differing} of {} pixels differ from Pillow's; first at x {} y {}: {:?} vs {:?}",
            ours.pixels().len(),
            i % w,
            i / w,
            a.0,
            b.0
        );
    }
}

#[test]
fn jpegs_decode_to_pillows_pixels() {
    for name in [
        "b420.jpg",
        "b420_37x29.jpg",
        "b422.jpg",
        "b422_37x29.jpg",
        "b444.jpg",
        "progressive.jpg",
        "progressive_37x29.jpg",
        "restart.jpg",
        "grey.jpg",
        "grey_progressive.jpg",
        "cmyk.jpg",
        // EXIF orientation 6: Pillow (and so timm) does not rotate; neither does wstream.
        "exif_rotated.jpg",
        // Damaged scan data, or scan data cut short, before the end-of-image marker: libjpeg warns and
        // Pillow ignores its warnings, keeping the pixels libjpeg made.
        "damaged_scan.jpg",
        "short_scan.jpg",
    ] {
        assert_pillow_pixels(name);
    }
    assert_eq!(
        load_rgb(&data().join("exif_rotated.jpg"))
            .unwrap()
            .dimensions(),
        (161, 107)
    );
}

#[test]
fn other_formats_decode_to_pillows_pixels() {
    for name in [
        "lossless.webp",
        "lossy.webp",
        "rgba.webp",
        "rgb.bmp",
        "rgb.tiff",
        "lzw.tiff",
        "animated.gif",
        "transparent.gif",
    ] {
        assert_pillow_pixels(name);
    }
}

#[test]
fn logits_through_the_image_path_match_timm() {
    for fixture in ["vit_tiny", "swin_tiny"] {
        let model = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(fixture);
        for name in [
            "b420.jpg",
            "progressive.jpg",
            "grey.jpg",
            "cmyk.jpg",
            "lossy.webp",
            "animated.gif",
        ] {
            let img = data().join(name);
            let (code, out, err) = common::wstream(&[
                "classify",
                "--json",
                "--logits",
                "--model",
                model.to_str().unwrap(),
                img.to_str().unwrap(),
            ]);
            assert_eq!(code, 0, "{fixture} {name}: {err}");
            let json: serde_json::Value = serde_json::from_str(&out).unwrap();
            let ours: Vec<f32> =
                serde_json::from_value(json["models"][0]["logits"].clone()).unwrap();
            let (timm, shape) =
                wstream::npy::read_f32(&data().join(format!("logits/{fixture}.{name}.npy")))
                    .unwrap();
            assert_eq!(shape, [1, ours.len()], "{fixture} {name}");
            let max = ours
                .iter()
                .zip(&timm)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!("{fixture:>9} {name:<16} max |logit - timm| {max:.2e}");
            assert!(max <= 1e-4, "{fixture} {name}: max |diff| {max}");
        }
    }
}

#[test]
fn truncated_jpegs_are_refused_like_pillow() {
    // tools/jpeg_fixtures.py checks that Pillow refuses these two cuts.
    let jpeg = std::fs::read(data().join("b420.jpg")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cut in [jpeg.len() / 2, jpeg.len() - 2] {
        let path = dir.path().join("cut.jpg");
        std::fs::write(&path, &jpeg[..cut]).unwrap();
        let msg = load_rgb(&path).unwrap_err().to_string();
        assert!(
            msg.ends_with(
                "truncated or corrupt JPEG: the file ends before the JPEG end-of-image marker"
            ),
            "{cut}: {msg}"
        );
    }
}

#[test]
fn bad_jpegs_get_one_clear_error() {
    let jpeg = std::fs::read(data().join("b420.jpg")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let error_of = |bytes: &[u8], max_pixels: u64| {
        let path = dir.path().join("bad.jpg");
        std::fs::write(&path, bytes).unwrap();
        let msg = wstream::preprocess::load_rgb_limited(&path, max_pixels)
            .unwrap_err()
            .to_string();
        msg.split_once(": ").unwrap().1.to_string()
    };
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    // libjpeg's own fatal errors come back as errors (they unwind out of the C code, no abort).
    let mut precision = jpeg.clone();
    precision[sof + 4] = 12;
    assert_eq!(
        error_of(&precision, u64::MAX),
        "cannot decode JPEG: Unsupported JPEG data precision 12"
    );
    let mut two = jpeg.clone();
    two[sof + 9] = 2;
    assert!(
        error_of(&two, u64::MAX).starts_with("cannot decode JPEG: "),
        "{}",
        error_of(&two, u64::MAX)
    );
    // The pixel limit (`--max-pixels`) is checked from the header, before decoding.
    assert_eq!(
        error_of(&jpeg, 10_000),
        "JPEG image is 161x107 = 17227 pixels, over the limit of 10000 (a decompression bomb?); \
         raise it with --max-pixels"
    );
}

#[test]
fn folders_expand_to_every_supported_format() {
    let items = wstream::pipeline::read_inputs(&[data()]).unwrap();
    let names: Vec<String> = items
        .iter()
        .map(|i| {
            Path::new(&i.name)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for want in [
        "b420.jpg",
        "lossy.webp",
        "rgb.bmp",
        "rgb.tiff",
        "animated.gif",
        "b420.jpg.pillow.png",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
}
