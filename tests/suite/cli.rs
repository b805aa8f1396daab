//! User-facing errors of `classify`: one line on stderr naming what is wrong, a non-zero exit, no output.

use crate::common;

use std::path::Path;

use common::parity::fixture;
use common::{write_f32, wstream};
use wstream::Store;

fn vit() -> String {
    fixture("vit_tiny").display().to_string()
}

fn image() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/cat.jpg")
        .display()
        .to_string()
}

/// A copy of the tiny ViT whose head has `classes` outputs.
fn vit_with_classes(dir: &Path, classes: usize) -> String {
    let store = Store::open(fixture("vit_tiny")).unwrap();
    let tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = store
        .tensors()
        .iter()
        .map(|t| {
            let mut shape = t.shape.clone();
            let mut values = store.view::<f32>(&t.name).unwrap().to_vec();
            if t.name.starts_with("head.") {
                shape[0] = classes;
                values.truncate(shape.iter().product());
            }
            (t.name.as_str(), shape, values)
        })
        .collect();
    let out = dir.join("vit10");
    std::fs::create_dir_all(&out).unwrap();
    write_f32(&out.join("model.safetensors"), &tensors);
    let config = std::fs::read_to_string(fixture("vit_tiny").join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["num_classes"] = classes.into();
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    out.display().to_string()
}

fn expect_one_line(args: &[&str], expected: &str) {
    let (code, stdout, stderr) = wstream(args);
    assert_ne!(code, 0, "{args:?} succeeded");
    assert!(stdout.is_empty(), "{args:?}: no answer on stdout: {stdout}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
    assert!(
        stderr.contains(expected),
        "{args:?}: `{stderr}` lacks `{expected}`"
    );
}

#[test]
fn bad_inputs_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).display().to_string();
    std::fs::write(d("notes.jpg"), "not an image").unwrap();
    std::fs::write(d("empty.png"), "").unwrap();
    let jpeg = std::fs::read(image()).unwrap();
    std::fs::write(d("half.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    std::fs::create_dir(d("no_images")).unwrap();
    let (vit, img) = (vit(), image());

    expect_one_line(&["classify", "--model", &vit, &d("notes.jpg")], "notes.jpg");
    expect_one_line(&["classify", "--model", &vit, &d("empty.png")], "empty.png");
    expect_one_line(&["classify", "--model", &vit, &d("half.jpg")], "half.jpg");
    expect_one_line(
        &["classify", "--model", &vit, &d("missing.jpg")],
        "missing.jpg",
    );
    expect_one_line(
        &["classify", "--model", &vit, &d("no_images")],
        "holds no images (.jpg, .jpeg, .png, .webp, .bmp, .tif, .tiff, .gif)",
    );
    expect_one_line(
        &["classify", "--model", &d("nowhere"), &img],
        "nowhere: no such file or folder",
    );
    expect_one_line(
        &["classify", "--model", &vit, "--budget", "1K", &img],
        "the minimum budget is",
    );
    expect_one_line(
        &["classify", "--model", &vit, "--budget", "12Q", &img],
        "unknown size suffix",
    );
    expect_one_line(&["classify", "--model", &vit, "--top", "0", &img], "--top");
    expect_one_line(
        &["classify", "--model", &vit, "--batch", "0", &img],
        "--batch",
    );
    let npy = fixture("convnext_tiny")
        .join("reference/cat.input.npy")
        .display()
        .to_string();
    expect_one_line(
        &["classify", "--model", &vit, &npy],
        "input is [3, 64, 64] but vit_tiny_patch16_224 expects [3, 32, 32]",
    );
    let ten = vit_with_classes(dir.path(), 10);
    expect_one_line(
        &["classify", "--model", &vit, "--model", &ten, &img],
        "models disagree on the number of classes",
    );
}

#[test]
fn config_that_disagrees_with_the_weights_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    std::fs::create_dir(&m).unwrap();
    std::fs::copy(
        fixture("vit_tiny").join("model.safetensors"),
        m.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        m.join("config.json"),
        r#"{"architecture": "convnext_large"}"#,
    )
    .unwrap();
    expect_one_line(
        &["classify", "--model", m.to_str().unwrap(), &image()],
        "config.json says architecture `convnext_large` (convnext) but the weights are a vit model",
    );
    std::fs::write(m.join("config.json"), "{ not json").unwrap();
    // Without a config.json, the file name stands for the architecture.
    let named = dir.path().join("convnext_tiny.safetensors");
    std::fs::copy(fixture("vit_tiny").join("model.safetensors"), &named).unwrap();
    expect_one_line(
        &["classify", "--model", named.to_str().unwrap(), &image()],
        "the file name says architecture `convnext_tiny` (convnext) but the weights are a vit model",
    );
    expect_one_line(
        &["classify", "--model", m.to_str().unwrap(), &image()],
        "not a valid timm config.json",
    );
}

#[test]
fn an_os_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let (a, vit, img) = (a.to_str().unwrap(), vit(), image());
    for args in [
        &["inspect", a][..],
        &["classify", "--model", a, &img],
        &["classify", "--model", &vit, a],
    ] {
        expect_one_line(args, &format!("{a}: "));
        let (_, _, stderr) = wstream(args);
        assert_eq!(
            stderr.matches("(os error 40)").count(),
            1,
            "{args:?}: the symlink loop (ELOOP) is reported once: {stderr}"
        );
    }
}

#[test]
fn images_and_tensors_give_the_same_answer() {
    let (vit, img) = (vit(), image());
    let npy = fixture("vit_tiny")
        .join("reference/cat.input.npy")
        .display()
        .to_string();
    let (code, stdout, stderr) = wstream(&[
        "classify", "--json", "--top", "3", "--model", &vit, &img, &npy,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let answers: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 2);
    let top = |a: &serde_json::Value| -> Vec<u64> {
        a["models"][0]["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["class"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        top(&answers[0]),
        top(&answers[1]),
        "JPEG decode differences do not change the ranking"
    );
    assert_eq!(
        top(&answers[0]),
        [515, 669, 709],
        "timm's top-3 for this fixture"
    );
    assert_eq!(
        answers[0]["models"][0]["top"][0]["label"],
        "cowboy hat, ten-gallon hat"
    );
    assert!(
        answers[0]["models"][0].get("logits").is_none(),
        "logits only with --logits"
    );
}

#[test]
fn a_missing_argument_is_named() {
    for (args, names) in [
        (&["classify"][..], "<INPUTS>"),
        (&["convert", "in"], "<OUTPUT>"),
        (&["synth", "--arch", "vit_tiny_patch16_224"], "--out <OUT>"),
        (&["profile", "x.jpg"], "--model <MODELS>"),
    ] {
        let (code, stdout, stderr) = wstream(args);
        assert_eq!(code, 2, "{args:?}: usage exit code");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(
            stderr.contains(&format!("not provided: {names}")),
            "{args:?}: `{stderr}` names {names}"
        );
        assert!(
            stderr.contains(&format!("(see wstream {} --help)", args[0])),
            "{args:?}: `{stderr}` points at the subcommand's help"
        );
    }
}

#[test]
fn bare_wstream_prints_help_as_a_usage_error() {
    let (code, stdout, stderr) = wstream(&[]);
    assert_eq!(code, 2, "a usage error, not success");
    assert!(stdout.is_empty(), "help goes to stderr: {stdout}");
    assert!(
        stderr.contains("Usage: wstream <COMMAND>") && stderr.contains("classify"),
        "the help, listing the subcommands: {stderr}"
    );
    assert!(
        !stderr.starts_with("wstream: Run large"),
        "not the description dressed as an error: {stderr}"
    );
}

/// A name, key or label with an ANSI colour code, a bell, a newline and a right-to-left override.
const HOSTILE: &str = "evil\u{1b}[31m\u{7}\nforged line\u{202e}";
const ESCAPED: &str = r"evil\u{1b}[31m\u{7}\nforged line\u{202e}";

fn assert_printable(what: &str, text: &str) {
    assert!(
        !text.contains(['\u{1b}', '\u{7}', '\u{202e}']) && !text.contains("\nforged"),
        "{what}: raw control characters: {text:?}"
    );
}

#[test]
fn control_characters_from_files_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let header = serde_json::json!({
        HOSTILE: {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    })
    .to_string();
    let file = common::write_raw(&dir.path().join("t.safetensors"), &header, &[0; 8]);
    let file = file.to_str().unwrap();
    let (code, stdout, stderr) = wstream(&["inspect", file]);
    assert_eq!(code, 0, "{stderr}");
    assert_printable("inspect's table", &stdout);
    assert!(stdout.contains(ESCAPED), "the name, escaped: {stdout}");
    let (_, json, _) = wstream(&["inspect", "--json", file]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["tensors"][0]["name"], HOSTILE, "JSON keeps the name");

    // The same name in an error: still one line.
    let short = common::write_raw(&dir.path().join("short.safetensors"), &header, &[0; 4]);
    expect_one_line(&["inspect", short.to_str().unwrap()], ESCAPED);

    // Labels from config.json in classify's text output.
    let m = dir.path().join("labelled");
    std::fs::create_dir(&m).unwrap();
    std::fs::copy(
        fixture("vit_tiny").join("model.safetensors"),
        m.join("model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(fixture("vit_tiny").join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["label_names"] = vec![HOSTILE; 1000].into();
    std::fs::write(m.join("config.json"), config.to_string()).unwrap();
    let (code, stdout, stderr) = wstream(&[
        "classify",
        "--top",
        "2",
        "--model",
        m.to_str().unwrap(),
        &image(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_printable("classify's answer", &stdout);
    assert_eq!(
        stdout.lines().count(),
        4,
        "input, model, two classes: {stdout}"
    );
    assert_eq!(stdout.matches(ESCAPED).count(), 2, "{stdout}");
}

#[test]
fn fifos_and_cut_signatures_are_named_accurately() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).display().to_string();
    let status = std::process::Command::new("mkfifo")
        .arg(d("pipe.jpg"))
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo");
    std::fs::write(d("two.jpg"), [0xFF, 0xD8]).unwrap();
    std::fs::write(d("five.png"), b"\x89PNG\r").unwrap();
    let vit = vit();
    expect_one_line(
        &["classify", "--model", &vit, &d("pipe.jpg")],
        "pipe.jpg: is a FIFO (named pipe), not a regular file",
    );
    expect_one_line(
        &["classify", "--model", &vit, &d("two.jpg")],
        "two.jpg: truncated JPEG: the file is only 2 byte(s)",
    );
    expect_one_line(
        &["classify", "--model", &vit, &d("five.png")],
        "five.png: truncated PNG: the file is only 5 byte(s)",
    );
    // Binary junk is not "text" because its high bytes are not UTF-8.
    std::fs::write(d("junk.jpg"), [0xFE, 0xFE, 0x80, 0x41]).unwrap();
    let (_, _, stderr) = wstream(&["classify", "--model", &vit, &d("junk.jpg")]);
    assert!(
        stderr.contains("(unrecognised content)"),
        "not called text: {stderr}"
    );
}

/// A copy of fixture `name` whose config.json has `model_args[key] = value`.
fn with_model_arg(dir: &Path, name: &str, key: &str, value: serde_json::Value) -> String {
    let m = dir.join(format!("{name}-{key}"));
    std::fs::create_dir(&m).unwrap();
    std::fs::copy(
        fixture(name).join("model.safetensors"),
        m.join("model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(fixture(name).join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["model_args"][key] = value;
    std::fs::write(m.join("config.json"), config.to_string()).unwrap();
    m.display().to_string()
}

#[test]
fn a_wrong_typed_model_arg_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    for (name, key, value, expected) in [
        (
            "vit_tiny",
            "num_heads",
            "2".into(),
            r#"num_heads is "2", expected a whole number"#,
        ),
        (
            "vit_tiny",
            "global_pool",
            1.into(),
            "global_pool is 1, expected a string",
        ),
        (
            "convnext_tiny",
            "depths",
            serde_json::json!([3, "3"]),
            "depths is [3,\"3\"], expected a whole number or a list of them",
        ),
        (
            "convnext_tiny",
            "conv_mlp",
            "no".into(),
            r#"conv_mlp is "no", expected true or false"#,
        ),
        (
            "convnext_tiny",
            "norm_eps",
            "1e-6".into(),
            r#"norm_eps is "1e-6", expected a number"#,
        ),
        (
            "swin_tiny",
            "window_size",
            7.5.into(),
            "window_size is 7.5, expected a whole number",
        ),
        (
            "swin_tiny",
            "global_pool",
            false.into(),
            "global_pool is false, expected a string",
        ),
    ] {
        let m = with_model_arg(dir.path(), name, key, value);
        expect_one_line(
            &["classify", "--model", &m, &img],
            &format!("config.json model_args.{expected}"),
        );
    }
    // The value shown is cut short: a hostile config cannot flood the line.
    let long = dir.path().join("long");
    std::fs::create_dir(&long).unwrap();
    let m = with_model_arg(&long, "vit_tiny", "num_heads", "x".repeat(100_000).into());
    let (_, _, stderr) = wstream(&["classify", "--model", &m, &img]);
    assert!(stderr.len() < 400, "{} bytes: {stderr}", stderr.len());
}

#[test]
fn demo_refuses_a_small_budget_before_synthesising() {
    let dir = tempfile::tempdir().unwrap();
    for budget in ["1", "100M"] {
        // `ulimit -f` caps what a regression could write at 1-2 MiB (SIGXFSZ) instead of gigabytes.
        let out = std::process::Command::new("sh")
            .args(["-c", "ulimit -f 2048; exec \"$0\" demo --budget \"$1\""])
            .arg(env!("CARGO_BIN_EXE_wstream"))
            .arg(budget)
            .current_dir(dir.path())
            .env("WSTREAM_WEIGHTS", dir.path().join("weights"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--budget {budget}: {stderr}");
        assert!(out.stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(
                "below what block `layers.3.blocks.0` of swin_large_patch4_window7_224 needs: \
                 the minimum budget is at least 113358528 bytes (108.1 MiB); nothing was synthesised"
            ),
            "--budget {budget}: {stderr}"
        );
        assert!(
            !dir.path().join("weights").exists(),
            "--budget {budget}: nothing written"
        );
    }
}

#[test]
fn the_synth_block_bound_is_below_the_exact_minimum_budget() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("vit").display().to_string();
    let arch = "vit_tiny_patch16_224";
    let (code, _, stderr) = wstream(&["synth", "--arch", arch, "--out", &m]);
    assert_eq!(code, 0, "{stderr}");
    let (block, bound) = wstream::synth::largest_group(arch).unwrap();
    assert_eq!(block, "blocks.0");
    let (_, _, stderr) = wstream(&["classify", "--model", &m, "--budget", "1", &image()]);
    let exact: u64 = stderr
        .trim_end()
        .rsplit("the minimum budget is ")
        .next()
        .and_then(|s| s.strip_suffix(" bytes"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no minimum in {stderr}"));
    assert!(
        bound <= exact && exact - bound < 2 * 4096,
        "bound {bound} vs exact {exact}"
    );
}
