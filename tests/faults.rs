//! A weight file truncated or rewritten while mapped: a clear error naming the file, never a bare SIGBUS.

mod common;

use std::path::PathBuf;
use std::process::Command;

use wstream::Store;

fn weight_file(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    common::write_f32(&path, &[("w", vec![1 << 18], vec![0.5; 1 << 18])]);
    path
}

/// Runs in a child process (see below): maps a file, truncates it, then reads the lost pages. Run on its
/// own (`--ignored`, so WSTREAM_FAULT_FILE is not set), it checks for real: as the parent of such a child.
#[test]
#[ignore = "run by truncated_file_under_a_mapping_exits_cleanly in a child process"]
fn child_reads_truncated_mapping() {
    let Ok(path) = std::env::var("WSTREAM_FAULT_FILE") else {
        // Its own file: with --include-ignored the other test runs the same check at the same time.
        return truncated_file_exits_cleanly("sigbus-ignored.safetensors");
    };
    let store = Store::open(&path).unwrap();
    let len = store.info("w").unwrap().range.start as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len)
        .unwrap();
    let sum: f32 = store.view::<f32>("w").unwrap().iter().sum();
    println!("unreachable: read {sum} from a truncated file");
}

#[test]
fn truncated_file_under_a_mapping_exits_cleanly() {
    truncated_file_exits_cleanly("sigbus.safetensors");
}

/// Runs `child_reads_truncated_mapping` on a file `name` in a child process: it exits with status 1 and an
/// error naming the file.
fn truncated_file_exits_cleanly(name: &str) {
    let path = weight_file(name);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_reads_truncated_mapping",
            "--ignored",
            "--nocapture",
        ])
        .env("WSTREAM_FAULT_FILE", &path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status 1, not a signal: {:?} {stderr}",
        out.status
    );
    assert!(
        stderr.contains(&format!(
            "{}: weight file changed while mapped",
            path.display()
        )),
        "names the file: {stderr}"
    );
}

#[test]
fn a_changed_file_is_refused_before_use() {
    let path = weight_file("changed.safetensors");
    let store = Store::open(&path).unwrap();
    store.check_unchanged().unwrap();
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.set_len(std::fs::metadata(&path).unwrap().len() + 4)
        .unwrap();
    let err = store.check_unchanged().unwrap_err().to_string();
    assert!(
        err.contains("changed on disk since it was opened") && err.contains("changed.safetensors"),
        "{err}"
    );
}
