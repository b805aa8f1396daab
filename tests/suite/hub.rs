//! Models from a (fake) local Hugging Face cache, offline, and the default models' folder: every run is a
//! spawned `wstream` whose environment names the cache or the weights folder.

use crate::common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::parity::fixture;

const MAIN: &str = "0123456789abcdef0123456789abcdef01234567";
const OTHER: &str = "fedcba9876543210fedcba9876543210fedcba98";

/// Runs wstream in `cwd` with the Hugging Face variables cleared, then `env` set; (code, stdout, stderr).
fn run(cwd: &Path, env: &[(&str, &Path)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wstream"));
    cmd.current_dir(cwd).args(args);
    for k in [
        "HF_HUB_CACHE",
        "HF_HOME",
        "XDG_CACHE_HOME",
        "WSTREAM_WEIGHTS",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cat() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/cat.jpg")
        .display()
        .to_string()
}

/// `hub/models--timm--tiny` laid out as huggingface_hub writes it: files in blobs/ (named by content),
/// snapshots/HASH/ holding symlinks to them, refs/main naming MAIN (vit_tiny) and refs/v2 naming OTHER
/// (convnext_tiny). Returns the repo folder.
fn fake_cache(hub: &Path) -> PathBuf {
    let repo = hub.join("models--timm--tiny");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    for (hash, fx) in [(MAIN, "vit_tiny"), (OTHER, "convnext_tiny")] {
        let snap = repo.join("snapshots").join(hash);
        std::fs::create_dir_all(&snap).unwrap();
        for f in ["model.safetensors", "config.json"] {
            let blob = format!("{fx}-{f}");
            std::fs::copy(fixture(fx).join(f), repo.join("blobs").join(&blob)).unwrap();
            symlink(Path::new("../../blobs").join(&blob), snap.join(f)).unwrap();
        }
    }
    std::fs::write(repo.join("refs/main"), MAIN).unwrap();
    std::fs::write(repo.join("refs/v2"), format!("{OTHER}\n")).unwrap();
    repo
}

/// The model names of the one JSON answer on stdout.
fn names(stdout: &str) -> Vec<String> {
    let a: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    a["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn hub_ids_resolve_through_the_local_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("cache");
    let repo = fake_cache(&hub);
    let cwd = tmp.path();
    let img = cat();
    let direct = run(
        cwd,
        &[],
        &[
            "classify",
            "--json",
            "--logits",
            "--model",
            fixture("vit_tiny").to_str().unwrap(),
            &img,
        ],
    );
    assert_eq!(direct.0, 0, "{}", direct.2);
    let strip = |s: &str| s.split("\"models\"").nth(1).unwrap().to_string();

    let vit = "vit_tiny_patch16_224";
    for (spec, want) in [
        ("timm/tiny", vit),
        ("hf-hub:timm/tiny", vit),
        ("tiny@main", vit),
        ("timm/tiny@v2", "convnext_tiny"),
        (&format!("tiny@{OTHER}") as &str, "convnext_tiny"),
    ] {
        let (code, stdout, stderr) = run(
            cwd,
            &[("HF_HUB_CACHE", &hub)],
            &["classify", "--json", "--logits", "--model", spec, &img],
        );
        assert_eq!(code, 0, "{spec}: {stderr}");
        assert_eq!(names(&stdout), [want], "{spec}");
        assert!(
            stderr.contains("from the Hugging Face cache (HF_HUB_CACHE)"),
            "{spec}: {stderr}"
        );
        if want == vit {
            // The same weights as the fixture, through the blobs' symlinks.
            assert_eq!(strip(&stdout), strip(&direct.1), "{spec}");
        }
    }
    // The old name of HF_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub.
    let xdg = tmp.path().join("xdg");
    std::fs::create_dir_all(xdg.join("huggingface")).unwrap();
    symlink(&hub, xdg.join("huggingface/hub")).unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join(".cache/huggingface")).unwrap();
    symlink(&hub, home.join(".cache/huggingface/hub")).unwrap();
    let hf_home = tmp.path().join("hf_home");
    std::fs::create_dir_all(&hf_home).unwrap();
    symlink(&hub, hf_home.join("hub")).unwrap();
    for (env, whence) in [
        (
            ("HUGGINGFACE_HUB_CACHE", hub.as_path()),
            "HUGGINGFACE_HUB_CACHE",
        ),
        (("HF_HOME", hf_home.as_path()), "HF_HOME/hub"),
        (
            ("XDG_CACHE_HOME", xdg.as_path()),
            "XDG_CACHE_HOME/huggingface/hub",
        ),
        (("HOME", home.as_path()), "~/.cache/huggingface/hub"),
    ] {
        let (code, stdout, stderr) = run(
            cwd,
            &[env],
            &["classify", "--json", "--model", "timm/tiny", &img],
        );
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(names(&stdout), [vit]);
        assert!(stderr.contains(&format!("({whence})")), "{stderr}");
    }
    // The repo folder itself: its main snapshot.
    let (code, stdout, stderr) = run(
        cwd,
        &[],
        &[
            "classify",
            "--json",
            "--model",
            repo.to_str().unwrap(),
            &img,
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(names(&stdout), [vit]);
    // inspect takes hub ids too.
    let (code, stdout, stderr) = run(cwd, &[("HF_HUB_CACHE", &hub)], &["inspect", "timm/tiny@v2"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("convnext"), "{stdout}");
}

#[test]
fn a_cache_miss_says_where_it_looked_and_how_to_download() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("cache");
    let repo = fake_cache(&hub);
    let img = cat();
    let (code, stdout, stderr) = run(
        tmp.path(),
        &[("HF_HUB_CACHE", &hub)],
        &["classify", "--model", "timm/absent", &img],
    );
    assert_eq!(code, 75, "weights unavailable: the retryable status");
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for part in [
        "timm/absent: no such file or folder",
        &format!("looked for {}", hub.join("models--timm--absent").display()) as &str,
        "(cache from HF_HUB_CACHE)",
        "run `hf download timm/absent` first",
    ] {
        assert!(stderr.contains(part), "{part}: {stderr}");
    }
    let (code, _, stderr) = run(
        tmp.path(),
        &[("HF_HUB_CACHE", &hub)],
        &["classify", "--model", "tiny@v9", &img],
    );
    assert_eq!(code, 75, "weights unavailable: the retryable status");
    for part in [
        &format!(
            "timm/tiny: revision `v9` is not in the cache at {}",
            repo.display()
        ) as &str,
        "no refs/v9 and no snapshots/v9",
        "(refs: main, v2;",
        &format!("snapshots: {MAIN}, {OTHER})"),
        "hf download timm/tiny --revision v9",
    ] {
        assert!(stderr.contains(part), "{part}: {stderr}");
    }
    // A ref naming a snapshot that is gone.
    std::fs::write(repo.join("refs/main"), "0000").unwrap();
    let (code, _, stderr) = run(
        tmp.path(),
        &[("HF_HUB_CACHE", &hub)],
        &["classify", "--model", "timm/tiny", &img],
    );
    assert_eq!(code, 75, "weights unavailable: the retryable status");
    assert!(
        stderr.contains("refs/main names snapshot `0000`, which is missing"),
        "{stderr}"
    );
    // A path that is not a hub id keeps the usual error.
    let (code, _, stderr) = run(tmp.path(), &[], &["classify", "--model", "a/b/c", &img]);
    assert_eq!(code, 75, "weights unavailable: the retryable status");
    assert!(!stderr.contains("Hugging Face"), "{stderr}");
}

/// Without --model, classify and demo use $WSTREAM_WEIGHTS wherever they run from, and say so; the tiny
/// fixtures stand in for the Large models (linked under their names), so nothing is synthesised.
#[test]
fn default_models_come_from_wstream_weights_not_the_current_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("weights");
    std::fs::create_dir(&weights).unwrap();
    for (name, fx) in [
        ("vit_large_patch16_224", "vit_tiny"),
        ("convnext_large", "convnext_tiny"),
        ("swin_large_patch4_window7_224", "swin_tiny"),
    ] {
        symlink(fixture(fx), weights.join(name)).unwrap();
    }
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let note = format!(
        "note: default models from {} (WSTREAM_WEIGHTS)",
        weights.display()
    );
    let img = cat();
    let (code, stdout, stderr) = run(
        &elsewhere,
        &[("WSTREAM_WEIGHTS", &weights)],
        &["classify", "--json", &img],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(&note), "{stderr}");
    assert_eq!(
        names(&stdout),
        [
            "vit_tiny_patch16_224",
            "convnext_tiny",
            "swin_tiny_patch4_window7_224"
        ]
    );
    let (code, stdout, stderr) = run(&elsewhere, &[("WSTREAM_WEIGHTS", &weights)], &["demo"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(&note), "{stderr}");
    assert!(!stderr.contains("writing synthetic weights"), "{stderr}");
    assert!(stdout.contains("  ensemble\n"), "{stdout}");
    assert!(
        std::fs::read_dir(&elsewhere).unwrap().next().is_none(),
        "nothing written where it ran"
    );

    // An empty folder: classify names it and the ways out.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, _, stderr) = run(
        &elsewhere,
        &[("WSTREAM_WEIGHTS", &empty)],
        &["classify", &img],
    );
    assert_eq!(code, 75, "weights unavailable: the retryable status");
    assert!(
        stderr.contains(&format!(
            "{}: default model not found",
            empty.join("vit_large_patch16_224").display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("WSTREAM_WEIGHTS"), "{stderr}");
    // Unset, the source tree's weights/ is where they are looked for.
    let (_, _, stderr) = run(&elsewhere, &[], &["classify", "--budget", "1", &img]);
    let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    assert!(
        stderr.contains(&format!("note: default models from {}", tree.display())),
        "{stderr}"
    );
}
