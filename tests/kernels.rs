//! `WSTREAM_KERNELS`: `portable` runs the portable kernels only and says so, with the same logits as the
//! vector kernels; a value that means nothing is refused.

mod common;

use std::path::Path;
use std::process::Command;

use common::parity::fixture;

fn image() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/cat.jpg")
        .display()
        .to_string()
}

/// Runs `wstream args` with `WSTREAM_KERNELS` set to `kernels`, or unset (CI's portable run sets it for
/// the whole suite); returns (exit code, stdout, stderr).
fn wstream_with(kernels: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wstream"));
    match kernels {
        Some(k) => cmd.env("WSTREAM_KERNELS", k),
        None => cmd.env_remove("WSTREAM_KERNELS"),
    };
    let out = cmd.args(args).output().expect("run wstream");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn logits(stdout: &str) -> Vec<u32> {
    let v: serde_json::Value = serde_json::from_str(stdout).expect("one JSON answer");
    v["models"][0]["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x.as_f64().unwrap() as f32).to_bits())
        .collect()
}

/// Every level computes bitwise the same sums (see `ops::simd`), so the portable kernels give the vector
/// kernels' logits exactly, on each family's kernels: the 7x7 depthwise row (ConvNeXt's 96 channels are
/// whole AVX-512 vectors), the transposes, softmax, GELU and LayerNorm.
#[test]
fn portable_kernels_give_the_same_logits_and_say_so() {
    for name in ["vit_tiny", "convnext_tiny", "swin_tiny"] {
        let model = fixture(name).display().to_string();
        let args = [
            "classify",
            "--json",
            "--logits",
            "--verbose",
            "--model",
            &model,
            &image(),
        ];
        let (code, vector, err) = wstream_with(None, &args);
        assert_eq!(code, 0, "{name}: {err}");
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
        {
            assert!(
                err.contains("kernels: avx512; matrix products: gemm crate, avx512f\n"),
                "{err}"
            );
        }
        let (code, portable, err) = wstream_with(Some("portable"), &args);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(
            err.contains(
                "kernels: portable (WSTREAM_KERNELS=portable); matrix products: gemm crate, "
            ),
            "{err}"
        );
        let (vector, portable) = (logits(&vector), logits(&portable));
        assert_eq!(vector.len(), 1000);
        if let Some(i) = (0..vector.len()).find(|&i| vector[i] != portable[i]) {
            panic!(
                "{name}: logit {i} is {} with the vector kernels, {} with the portable ones",
                f32::from_bits(vector[i]),
                f32::from_bits(portable[i])
            );
        }
    }
}

#[test]
fn the_profile_names_the_kernels() {
    let model = fixture("vit_tiny").display().to_string();
    let args = ["profile", "--format", "json", "--model", &model, &image()];
    let (code, out, err) = wstream_with(Some("portable"), &args);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kernels = v["kernels"].as_str().unwrap();
    assert!(
        kernels.starts_with("portable (WSTREAM_KERNELS=portable); matrix products: gemm crate, "),
        "{kernels}"
    );
    let (code, out, err) = wstream_with(Some("auto"), &args);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kernels = v["kernels"].as_str().unwrap();
    assert!(!kernels.contains("WSTREAM_KERNELS"), "{kernels}");
    assert!(out.contains("matrix products: gemm crate, "), "{kernels}");
}

#[test]
fn an_unknown_kernel_choice_is_refused() {
    let model = fixture("vit_tiny").display().to_string();
    for bad in ["portible", "avx512", "PORTABLE"] {
        let (code, out, err) = wstream_with(Some(bad), &["classify", "--model", &model, &image()]);
        assert_eq!(code, 1, "{bad}: {err}");
        assert!(out.is_empty(), "{out}");
        assert_eq!(
            err,
            format!(
                "wstream: error: WSTREAM_KERNELS=\"{bad}\" is not a kernel choice: set `portable` (the \
                 portable kernels only) or `auto` (the best this CPU has, as when it is unset)\n"
            )
        );
    }
    // `auto` and empty are the default.
    for ok in ["auto", ""] {
        let (code, out, err) = wstream_with(Some(ok), &["classify", "--model", &model, &image()]);
        assert_eq!(code, 0, "{ok:?}: {err}");
        assert!(!out.is_empty());
    }
}
