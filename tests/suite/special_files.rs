//! Files that are not regular files (FIFOs, devices) and files too large to read into memory, wherever
//! wstream reads one: refused with one line naming the file, never a hang or an endless read.

use crate::common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::parity::fixture;

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("special-files")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// A model folder: the vit_tiny fixture's weights (a symlink) and, unless `config` is false, its config.
fn model_dir(name: &str, config: bool) -> PathBuf {
    let d = dir(name);
    let src = fixture("vit_tiny");
    std::os::unix::fs::symlink(src.join("model.safetensors"), d.join("model.safetensors")).unwrap();
    if config {
        std::fs::copy(src.join("config.json"), d.join("config.json")).unwrap();
    }
    d
}

/// Runs wstream with `args`, at most 60 s and 2 GiB of address space (before the fix a FIFO hung and
/// /dev/zero was read until memory ran out); returns (exit code, stderr). A hang fails the test.
fn run(args: &[&Path]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wstream"));
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches no state of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 2 << 30,
                rlim_max: 2 << 30,
            };
            libc::setrlimit(libc::RLIMIT_AS, &limit);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (status.code(), stderr);
        }
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("wstream {args:?} still running after 60 s: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `args` exit with status 1 and the one error line `wstream: error: {path}: {msg}`.
fn refused(args: &[&Path], path: &Path, msg: &str) {
    let (code, stderr) = run(args);
    assert_eq!(code, Some(1), "{args:?}: {stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!("wstream: error: {}: {msg}", path.display()),
        "{args:?}"
    );
}

const FIFO: &str = "not a regular file but a FIFO (named pipe); name a file";
const CHAR: &str = "not a regular file but a character device; name a file";

fn p(s: &str) -> &Path {
    Path::new(s)
}

#[test]
fn a_fifo_weights_file_or_shard_is_refused() {
    let d = dir("fifo-weights");
    let w = d.join("w.safetensors");
    mkfifo(&w);
    refused(&[p("inspect"), &w], &w, FIFO);
    refused(&[p("classify"), p("--model"), &w, &w], &w, FIFO);

    let d = dir("fifo-model-safetensors");
    let w = d.join("model.safetensors");
    mkfifo(&w);
    refused(&[p("inspect"), &d], &w, FIFO);

    let d = dir("fifo-shard");
    let shard = d.join("model-00001-of-00001.safetensors");
    mkfifo(&shard);
    std::fs::write(
        d.join("model.safetensors.index.json"),
        r#"{"weight_map": {"w": "model-00001-of-00001.safetensors"}}"#,
    )
    .unwrap();
    refused(&[p("inspect"), &d], &shard, FIFO);
}

#[test]
fn a_fifo_or_device_config_json_is_refused() {
    let npy = fixture("vit_tiny").join("reference/cat.input.npy");
    let d = model_dir("fifo-config", false);
    let config = d.join("config.json");
    mkfifo(&config);
    refused(&[p("classify"), p("--model"), &d, &npy], &config, FIFO);

    let d = model_dir("zero-config", false);
    let config = d.join("config.json");
    std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
    refused(&[p("classify"), p("--model"), &d, &npy], &config, CHAR);
}

#[test]
fn a_config_json_over_4_mib_is_refused() {
    let d = model_dir("big-config", false);
    let config = d.join("config.json");
    // Valid JSON, so only its size refuses it.
    let mut text = " ".repeat(4 << 20);
    text.push_str("{}");
    std::fs::write(&config, text).unwrap();
    let npy = fixture("vit_tiny").join("reference/cat.input.npy");
    refused(
        &[p("classify"), p("--model"), &d, &npy],
        &config,
        "config.json of 4194306 bytes is over the 4194304-byte limit",
    );
}

#[test]
fn a_device_or_oversized_shard_index_is_refused() {
    let d = dir("zero-index");
    let index = d.join("model.safetensors.index.json");
    std::os::unix::fs::symlink("/dev/zero", &index).unwrap();
    refused(&[p("inspect"), &d], &index, CHAR);

    let d = dir("big-index");
    let index = d.join("model.safetensors.index.json");
    std::fs::write(&index, " ".repeat((16 << 20) + 1)).unwrap();
    refused(
        &[p("inspect"), &d],
        &index,
        "shard index of 16777217 bytes is over the 16777216-byte limit",
    );
}

#[test]
fn a_fifo_or_device_npy_input_is_refused() {
    let model = fixture("vit_tiny");
    let d = dir("npy");
    let fifo = d.join("fifo.npy");
    mkfifo(&fifo);
    refused(&[p("classify"), p("--model"), &model, &fifo], &fifo, FIFO);
    let zero = d.join("zero.npy");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    refused(&[p("classify"), p("--model"), &model, &zero], &zero, CHAR);
}
