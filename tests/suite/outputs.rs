//! What wstream writes: checked before the run, written whole or not at all, removed when interrupted, and
//! never blocked by what a killed run left behind.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::parity::fixture;
use common::{listing, wstream};

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

/// Big temporaries go under target/, not a possibly small /tmp.
fn big_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
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

    // A write that fails part-way (a file size limit standing in for a full disk: the drawing is over 20
    // KB) leaves the earlier drawing whole. The old code left a cut-off SVG in its place.
    std::fs::write(&svg, "old drawing").unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -f 16; trap '' XFSZ; exec \"$0\" profile --svg {s} --model {m} {}",
            cat()
        ))
        .arg(env!("CARGO_BIN_EXE_wstream"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("t.svg: File too large"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&svg).unwrap(), "old drawing");
    assert_eq!(listing(dir.path()), ["t.svg", "vit_tiny"]);
}

/// Spawns wstream with `args`, waits until the temporary it writes in `dir` for `name` holds data (its
/// name carries the child's PID), then does `act` to the child: signal it, or pull its input away.
fn mid_write(
    args: &[&str],
    dir: &Path,
    name: &str,
    act: impl FnOnce(u32),
) -> (Option<i32>, String) {
    mid_write_in(Path::new("."), args, dir, name, act)
}

/// [`mid_write`] run in folder `cwd`, with the default models' folder (`WSTREAM_WEIGHTS`) at `cwd/weights`.
fn mid_write_in(
    cwd: &Path,
    args: &[&str],
    dir: &Path,
    name: &str,
    act: impl FnOnce(u32),
) -> (Option<i32>, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_wstream"))
        .current_dir(cwd)
        .env("WSTREAM_WEIGHTS", cwd.join("weights"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let p = partial(dir, name, child.id());
    let start = Instant::now();
    let mut child: Child = child;
    while std::fs::metadata(&p).map_or(0, |m| m.len()) == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{args:?} ended before writing"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{args:?}: no {}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    act(child.id());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn send(signal: libc::c_int) -> impl FnOnce(u32) {
    move |pid| {
        // SAFETY: kill touches no memory of ours; the PID is our running child's.
        #[allow(unsafe_code)]
        let sent = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(sent, 0);
    }
}

fn partial(dir: &Path, name: &str, pid: u32) -> PathBuf {
    dir.join(format!(".{name}.wstream-partial-{pid}"))
}

#[test]
fn interrupted_synth_leaves_nothing_and_never_blocks_a_rerun() {
    let dir = big_tempdir();
    let out = dir.path().join("m");
    let o = out.display().to_string();
    for (signal, code, word) in [
        (libc::SIGINT, 130, "SIGINT"),
        (libc::SIGTERM, 143, "SIGTERM"),
    ] {
        let args = ["synth", "--arch", "vit_large_patch16_224", "--out", &o];
        let (status, stderr) = mid_write(&args, &out, "model.safetensors", send(signal));
        // The old code died of the signal and left model.safetensors.partial behind.
        assert_eq!(status, Some(code), "{stderr}");
        assert!(
            stderr.contains(word) && stderr.contains("partial output removed"),
            "{stderr}"
        );
        assert!(listing(&out).is_empty(), "left behind: {:?}", listing(&out));
    }

    // A partial left by a killed run (its process is gone: PIDs stop at 2^22) is swept, not an obstacle;
    // one of a live process is not touched.
    let stale = partial(&out, "model.safetensors", 4_000_000_000);
    std::fs::write(&stale, "cut short").unwrap();
    let live = partial(&out, "model.safetensors", 1);
    std::fs::write(&live, "someone else's").unwrap();
    let (code, _, stderr) = wstream(&["synth", "--arch", "vit_tiny_patch16_224", "--out", &o]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        listing(&out),
        [
            ".model.safetensors.wstream-partial-1",
            "config.json",
            "model.safetensors"
        ]
    );
    let model = wstream::models::Model::load(&out).unwrap();
    assert_eq!(model.name, "vit_tiny_patch16_224");
}

#[test]
fn interrupted_demo_synthesis_leaves_nothing() {
    // demo synthesises missing default models into $WSTREAM_WEIGHTS first.
    let dir = big_tempdir();
    let vit = dir.path().join("weights/vit_large_patch16_224");
    let (code, stderr) = mid_write_in(
        dir.path(),
        &["demo"],
        &vit,
        "model.safetensors",
        send(libc::SIGINT),
    );
    assert_eq!(code, Some(130), "{stderr}");
    assert!(listing(&vit).is_empty(), "left behind: {:?}", listing(&vit));
}

#[test]
fn interrupted_or_faulted_convert_leaves_nothing() {
    let dir = big_tempdir();
    let input = dir.path().join("in");
    // Big enough (346 MB) that converting it takes a while to interrupt.
    wstream::synth::write("vit_base_patch16_224", &input, 0, |_| {}).unwrap();
    let i = input.display().to_string();
    let clean = |what: &str| {
        assert_eq!(listing(dir.path()), ["in"], "{what} left output behind");
        assert_eq!(listing(&input), ["config.json", "model.safetensors"]);
    };

    // Folder output, SIGINT: the partial folder with its weights goes. File output, SIGTERM.
    let out = dir.path().join("out").display().to_string();
    let args = ["convert", &i, &out, "--dtype", "int8"];
    let (code, stderr) = mid_write(&args, dir.path(), "out", send(libc::SIGINT));
    assert_eq!(code, Some(130), "{stderr}");
    clean("SIGINT");
    let out_file = dir.path().join("out.safetensors").display().to_string();
    let args = ["convert", &i, &out_file];
    let (code, stderr) = mid_write(&args, dir.path(), "out.safetensors", send(libc::SIGTERM));
    assert_eq!(code, Some(143), "{stderr}");
    clean("SIGTERM");

    // A stale partial folder of a killed convert is swept.
    let stale = partial(dir.path(), "out", 4_000_000_000);
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), "cut short").unwrap();
    let small = dir.path().join("small");
    let s = small.display().to_string();
    let fx = fixture("vit_tiny").display().to_string();
    let (code, _, stderr) = wstream(&["convert", &fx, &s]);
    assert_eq!(code, 0, "{stderr}");
    std::fs::remove_dir_all(&small).unwrap();
    let (code, _, stderr) = wstream(&["convert", &fx, &out]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stale.exists());
    std::fs::remove_dir_all(&out).unwrap();

    // The input truncated under convert: the SIGBUS message says nothing was written, and nothing is.
    let weights = input.join("model.safetensors");
    let truncate = |_| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&weights)
            .unwrap();
        f.set_len(1 << 20).unwrap();
    };
    let (code, stderr) = mid_write(
        &["convert", &i, &out_file],
        dir.path(),
        "out.safetensors",
        truncate,
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("nothing was written"), "{stderr}");
    // The old code left `.out.safetensors.wstream-partial-PID` here.
    clean("SIGBUS");
}

#[test]
fn single_file_convert_keeps_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let logits = |model: &Path| {
        let m = model.display().to_string();
        let (code, stdout, stderr) =
            wstream(&["classify", "--json", "--logits", "--model", &m, &cat()]);
        assert_eq!(code, 0, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let m = v["models"][0].clone();
        assert_eq!(m["logits"].as_array().map(Vec::len), Some(1000));
        (m["name"].clone(), m["logits"].clone())
    };
    // swin_tiny's config sets a 64x64 input that differs from the 224 default; vit_tiny's sets the head
    // count, which shapes cannot tell. The old single-file copies classified differently or not at all.
    for fx in ["swin_tiny", "vit_tiny"] {
        let sub = dir.path().join(fx);
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("copy.safetensors");
        let src = fixture(fx);
        let (code, _, stderr) =
            wstream(&["convert", src.to_str().unwrap(), file.to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            listing(&sub),
            ["copy.safetensors"],
            "no config.json beside it"
        );
        let want = logits(&src);
        assert_eq!(
            logits(&file),
            want,
            "{fx}: a lossless copy classifies identically"
        );

        // The config is in the metadata as it was, plus the convert record.
        let store = wstream::Store::open(&file).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(store.files()[0].bytes()).unwrap();
        let mut cfg: serde_json::Value =
            serde_json::from_str(&meta.metadata().as_ref().unwrap()["wstream.config"]).unwrap();
        let record = cfg
            .as_object_mut()
            .unwrap()
            .remove("wstream_convert")
            .unwrap();
        assert_eq!(record["dtype"], "f32");
        let orig: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg, orig);

        // Converted again, to a folder, the config comes out as config.json.
        let again = sub.join("again");
        let (code, _, stderr) =
            wstream(&["convert", file.to_str().unwrap(), again.to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        let text = std::fs::read_to_string(again.join("config.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["wstream_convert"]["source"], "copy.safetensors");
        assert_eq!(logits(&again), want);
    }
    // A config.json beside the file wins over the embedded one.
    let sub = dir.path().join("swin_tiny");
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("swin_tiny").join("config.json")).unwrap(),
    )
    .unwrap();
    cfg["pretrained_cfg"]["mean"] = serde_json::json!([0.5, 0.5, 0.5]);
    std::fs::write(sub.join("config.json"), cfg.to_string()).unwrap();
    assert_ne!(
        logits(&sub.join("copy.safetensors")),
        logits(&fixture("swin_tiny"))
    );
}
