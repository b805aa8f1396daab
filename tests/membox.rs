//! `tools/membox --read-bps`: the read throttle that stands in for an edge box's SD card must hold for page
//! faults on memory-mapped weights (how wstream reads them), not only for read(2), and bad arguments must be
//! refused before any cgroup is made.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn membox() -> Command {
    let mut c = Command::new("bash");
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/membox"));
    c
}

/// The folder of this process's cgroup of a v1 controller, where membox makes its children.
fn v1_cgroup(controller: &str) -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, names, path) = (f.next()?, f.next()?, f.next()?);
        names.split(',').any(|n| n == controller).then_some(path)
    })?;
    Some(PathBuf::from(format!("/sys/fs/cgroup/{controller}{path}")))
}

#[test]
fn read_throttle_slows_page_faults_of_mapped_weights() {
    // ViT-Tiny's 22.9 MB: a few seconds at the rate below, a few tens of milliseconds unthrottled.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("membox/vit_tiny_patch16_224");
    if !dir.join("config.json").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let (code, _, err) = common::wstream(&[
            "synth",
            "--arch",
            "vit_tiny_patch16_224",
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "synth: {err}");
    }
    let size = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    let rate: u64 = 12 << 20;
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cat.jpg");
    let start = Instant::now();
    // `profile --cold` drops the weights from the page cache (posix_fadvise) inside the box, so every page
    // is faulted in from the disk through the mapping.
    let child = membox()
        .arg(format!("--read-bps={}M:{}", rate >> 20, dir.display()))
        .arg("1G")
        .arg(env!("CARGO_BIN_EXE_wstream"))
        .args(["profile", "--cold", "--threads", "1", "--format", "json"])
        .arg("--model")
        .arg(&dir)
        .arg(&image)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tools/membox");
    let membox_pid = child.id();
    let out = child.wait_with_output().unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let report = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        common::skip_or_fail(&format!(
            "membox --read-bps: {}",
            report.trim().replace('\n', "; ")
        ));
        return;
    }
    assert!(out.status.success(), "{report}");
    eprintln!("{} ({elapsed:.2} s)", report.trim());

    // What the throttled cgroup read from the disk: the weights, and little else (the binary is cached).
    let read: u64 = report
        .split("bytes/s on ")
        .nth(1)
        .and_then(|r| r.split(": ").nth(1))
        .and_then(|r| r.split(" bytes read").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no throttle figures in membox's report: {report}"));
    assert!(
        read >= size * 9 / 10,
        "the box read {read} bytes from the disk, the weights are {size}: {report}"
    );
    let floor = 0.8 * size as f64 / rate as f64;
    assert!(
        elapsed >= floor,
        "{size} bytes at {rate} bytes/s took {elapsed:.2} s, under the {floor:.2} s the throttle allows"
    );

    // Both cgroups are gone once the command has exited.
    for controller in ["blkio", "memory"] {
        if let Some(parent) = v1_cgroup(controller) {
            let bx = parent.join(format!("membox-{membox_pid}"));
            assert!(!bx.exists(), "{} left behind", bx.display());
        }
    }
}

#[test]
fn read_throttle_arguments_are_checked_first() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--read-bps", "80X", "1G", "true"],
            "bad --read-bps rate `80X`",
        ),
        (
            &["--read-bps", "80M:/nonexistent/weights", "1G", "true"],
            "cannot stat `/nonexistent/weights`",
        ),
        (
            &["--read-bps", "0", "1G", "true"],
            "bad --read-bps rate `0`",
        ),
        (&["--read-bps"], "usage: membox"),
    ];
    for (args, message) in cases {
        let out = membox().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
}
