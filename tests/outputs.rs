//! What wstream writes: checked before the run, written whole or not at all.

mod common;

use std::path::{Path, PathBuf};

use common::parity::fixture;
use common::wstream;

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn cat() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/cat.jpg")
        .display()
        .to_string()
}

/// A private copy of fixture `fx` in `dir/fx`.
fn copy_fixture(dir: &Path, fx: &str) -> PathBuf {
    let out = dir.join(fx);
    std::fs::create_dir(&out).unwrap();
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(fixture(fx).join(f), out.join(f)).unwrap();
    }
    out
}

#[test]
fn profile_svg_is_checked_before_the_run_and_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_fixture(dir.path(), "vit_tiny");
    let weights = model.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let m = model.display().to_string();
    let refused = |svg: &Path, expected: &str| {
        let listed = listing(&model);
        let svg = svg.display().to_string();
        let (code, stdout, stderr) = wstream(&["profile", "--svg", &svg, "--model", &m, &cat()]);
        assert_ne!(code, 0, "--svg {svg} succeeded");
        assert!(stdout.is_empty(), "refused before the run: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "`{stderr}` lacks `{expected}`");
        assert_eq!(listing(&model), listed, "nothing created or left behind");
        assert_eq!(
            std::fs::read(&weights).unwrap(),
            before,
            "weights untouched"
        );
    };
    // The old code wrote the drawing over the model's weights and exited 0.
    refused(&weights, "does not end in .svg");
    refused(&model.join("config.json"), "does not end in .svg");
    std::fs::hard_link(&weights, model.join("weights.svg")).unwrap();
    refused(&model.join("weights.svg"), "is an input");
    std::fs::remove_file(model.join("weights.svg")).unwrap();
    std::os::unix::fs::symlink("model.safetensors", model.join("link.svg")).unwrap();
    refused(&model.join("link.svg"), "is an input");
    std::fs::remove_file(model.join("link.svg")).unwrap();
    std::fs::create_dir(model.join("folder.svg")).unwrap();
    refused(&model.join("folder.svg"), "not a regular file");
    std::fs::remove_dir(model.join("folder.svg")).unwrap();
    refused(&dir.path().join("nowhere/t.svg"), "does not exist");

    // An earlier drawing is replaced as a whole, through a temporary that does not outlive the run.
    let svg = dir.path().join("t.svg");
    std::fs::write(&svg, "old drawing").unwrap();
    let s = svg.display().to_string();
    let (code, _, stderr) = wstream(&["profile", "--svg", &s, "--model", &m, &cat()]);
    assert_eq!(code, 0, "{stderr}");
    let drawing = std::fs::read_to_string(&svg).unwrap();
    assert!(drawing.starts_with("<svg") && drawing.trim_end().ends_with("</svg>"));
    assert_eq!(listing(dir.path()), ["t.svg", "vit_tiny"]);
}
