//! Every example a subcommand's `--help` shows runs as shown, from the repository's root (output paths
//! under /tmp/ go to a temporary folder instead). `demo` shows none: it writes 2.6 GB of synthetic
//! weights when the real ones are missing.

use crate::common;

use std::process::Command;

/// The example command lines of `wstream SUB --help`: the indented `wstream ...` lines after "Example".
fn examples(sub: &str) -> Vec<String> {
    let (code, help, err) = common::wstream(&[sub, "--help"]);
    assert_eq!(code, 0, "{err}");
    help.lines()
        .skip_while(|l| !l.starts_with("Example"))
        .filter_map(|l| l.trim_start().strip_prefix("wstream "))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_help_example_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp_prefix = format!("{}/", tmp.path().display());
    let mut ran = 0;
    for sub in ["classify", "profile", "inspect", "convert", "synth"] {
        let lines = examples(sub);
        assert!(!lines.is_empty(), "`{sub} --help` shows no example");
        for line in lines {
            let args: Vec<String> = line
                .split_whitespace()
                .map(|a| a.replace("/tmp/", &tmp_prefix))
                .collect();
            let out = Command::new(env!("CARGO_BIN_EXE_wstream"))
                .args(&args)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "`wstream {line}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // synth reports nothing; what it wrote is checked below.
            assert!(
                sub == "synth" || !out.stdout.is_empty(),
                "`wstream {line}` printed nothing"
            );
            ran += 1;
        }
    }
    assert!(ran >= 11, "{ran} examples");
    assert!(examples("demo").is_empty());
    // The files the writing examples made, in the temporary folder.
    for made in [
        "vit_tiny_int8",
        "convnext_tiny_exec.safetensors",
        "vit_tiny_synth",
    ] {
        assert!(tmp.path().join(made).exists(), "{made}");
    }
}

#[test]
fn classify_help_says_it_takes_images() {
    let (_, top, _) = common::wstream(&["--help"]);
    let (_, help, _) = common::wstream(&["classify", "--help"]);
    assert!(!top.contains("preprocessed inputs"), "{top}");
    assert!(
        top.contains("Classify images (JPEG, PNG, WebP, BMP, TIFF, GIF; folders of them)"),
        "{top}"
    );
    assert!(help.starts_with("Classify images"), "{help}");
    for flag in [
        "--use-train-size",
        "--img-size",
        "--crop-pct",
        "--crop-mode",
        "--interpolation",
        "--mean",
        "--std",
        "--label-type",
        "--verbose",
    ] {
        assert!(help.contains(flag), "{flag} missing from classify --help");
    }
}
