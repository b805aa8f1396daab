//! Helpers shared by the integration tests: hand-built safetensors files (valid and broken).
#![allow(dead_code)]

pub mod parity;

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `8-byte length + header + data` to `path`, header given as raw text.
pub fn write_raw(path: &Path, header: &str, data: &[u8]) -> PathBuf {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

/// A valid file of f32 tensors, in the given order, header padded to 8 bytes like the Python writer.
pub fn write_f32(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> PathBuf {
    let mut entries = Vec::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        let begin = data.len();
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        entries.push(format!(
            r#""{name}":{{"dtype":"F32","shape":{shape:?},"data_offsets":[{begin},{}]}}"#,
            data.len()
        ));
    }
    let mut header = format!("{{{}}}", entries.join(","));
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    write_raw(path, &header, &data)
}

/// For a test, or part of one, that cannot run here; `what` names it and what it lacks. In CI (the `CI`
/// environment variable is set) that is a failure: CI must check everything. Elsewhere, one line on stderr,
/// written past the test harness's capture so that a skipped check shows even when the test passes.
pub fn skip_or_fail(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{what}; CI is set, so it must run: provide what it needs");
    }
    let _ = std::io::stderr().write_all(format!("SKIPPED {what}\n").as_bytes());
}

/// Runs the built `wstream` binary; returns (exit code, stdout, stderr).
pub fn wstream(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wstream"))
        .args(args)
        .output()
        .expect("run wstream");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the built `wstream` with `args` under `tools/membox LIMIT` and asserts it succeeded without an OOM
/// kill; returns its stdout and membox's report (stderr). `None` where no writable memory cgroup exists
/// here: then `what` is skipped, or fails in CI.
pub fn wstream_in_membox(
    limit: &str,
    args: &[impl AsRef<std::ffi::OsStr>],
    what: &str,
) -> Option<(Vec<u8>, String)> {
    let boxed = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/membox"))
        .arg(limit)
        .arg(env!("CARGO_BIN_EXE_wstream"))
        .args(args)
        .output()
        .expect("run tools/membox");
    let report = String::from_utf8_lossy(&boxed.stderr).into_owned();
    if boxed.status.code() == Some(3) {
        skip_or_fail(&format!("{what}: {}", report.trim().replace('\n', "; ")));
        return None;
    }
    eprintln!("{}", report.trim());
    assert!(boxed.status.success(), "{what}: {report}");
    assert!(report.contains("oom-killed: no"), "{what}: {report}");
    Some((boxed.stdout, report))
}

/// The three Large models of the default ensemble, synthesised (seed 0) into `dir` unless already there.
pub fn large_models(dir: &Path) -> Vec<PathBuf> {
    [
        "vit_large_patch16_224",
        "convnext_large",
        "swin_large_patch4_window7_224",
    ]
    .iter()
    .map(|arch| {
        let out = dir.join(arch);
        if !out.join("config.json").exists() {
            let _ = std::fs::remove_dir_all(&out);
            let (code, _, err) =
                wstream(&["synth", "--arch", arch, "--out", out.to_str().unwrap()]);
            assert_eq!(code, 0, "synth {arch}: {err}");
        }
        out
    })
    .collect()
}

/// The names in folder `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A checkpoint's tensors: name, shape, values.
pub type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// A copy of `fixture` (model.safetensors + config.json) with `edit` applied to its tensors and config.json.
pub fn edited(
    fixture: &str,
    edit: impl FnOnce(&mut Tensors, &mut serde_json::Value),
) -> tempfile::TempDir {
    let src = parity::fixture(fixture);
    let store = wstream::Store::open(&src).unwrap();
    let mut tensors: Tensors = store
        .tensors()
        .iter()
        .map(|t| {
            let v = store.view::<f32>(&t.name).unwrap().into_owned();
            (t.name.clone(), t.shape.clone(), v)
        })
        .collect();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut tensors, &mut config);
    let dir = tempfile::tempdir().unwrap();
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    write_f32(&dir.path().join("model.safetensors"), &refs);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}
