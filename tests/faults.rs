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

/// Child processes of the tests below, one case each (`WSTREAM_FAULT_CASE`, on `WSTREAM_FAULT_FILE`); a
/// case reads lost pages and is expected to end the process.
#[test]
#[ignore = "run by the SIGBUS tests below in a child process"]
fn child_fault_case() {
    let (Ok(case), Ok(path)) = (
        std::env::var("WSTREAM_FAULT_CASE"),
        std::env::var("WSTREAM_FAULT_FILE"),
    ) else {
        return; // Run on its own: nothing to do, the parent tests check.
    };
    let truncate = |path: &std::path::Path, len: u64| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap()
    };
    match case.as_str() {
        // The last of 299 shards loses its data; reading it faults in the 299th registered mapping.
        "many-shards" => {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.files().len(), SHARDS);
            let t = store.info(&format!("t{:03}", SHARDS - 1)).unwrap().clone();
            truncate(&store.files()[t.file].path, t.range.start as u64);
            let sum: f32 = store.view::<f32>(&t.name).unwrap().iter().sum();
            println!("unreachable: read {sum}");
        }
        // Eight threads fault at once: one line, not eight.
        "threads" => {
            let store = Store::open(&path).unwrap();
            let start = store.info("w").unwrap().range.start;
            truncate(std::path::Path::new(&path), start as u64);
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                for i in 0..8 {
                    let (store, barrier) = (&store, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let bytes = store.bytes(store.info("w").unwrap());
                        let page = 4096 * (1 + i * 16);
                        std::hint::black_box(bytes[page]);
                    });
                }
            });
            println!("unreachable: read the lost pages");
        }
        // A SIGBUS outside every registered mapping reaches the handler installed before ours.
        "chain" => {
            extern "C" fn previous(_: libc::c_int) {
                let msg = b"previous SIGBUS handler ran\n";
                // SAFETY: async-signal-safe calls on a static buffer.
                unsafe {
                    libc::write(2, msg.as_ptr().cast(), msg.len());
                    libc::_exit(42);
                }
            }
            // SAFETY: installs a plain handler for SIGBUS before wstream installs its own.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = previous as *const () as usize;
                libc::sigemptyset(&mut action.sa_mask);
                assert_eq!(
                    libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()),
                    0
                );
            }
            let _store = Store::open(&path).unwrap();
            let other = weight_file("chain-unregistered.safetensors");
            let file = std::fs::File::open(&other).unwrap();
            // SAFETY: a read-only mapping of a file this test owns; the read below is meant to fault.
            let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
            truncate(&other, 0);
            std::hint::black_box(map[map.len() - 1]);
            println!("unreachable: read a truncated unregistered mapping");
        }
        other => panic!("unknown case {other}"),
    }
}

const SHARDS: usize = 299;

fn run_case(case: &str, path: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_fault_case", "--ignored", "--nocapture"])
        .env("WSTREAM_FAULT_CASE", case)
        .env("WSTREAM_FAULT_FILE", path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Before: the handler's table had 256 slots, so the 299th shard's fault died as a raw "Bus error" (signal
/// 7, shell status 135).
#[test]
fn truncating_the_299th_shard_exits_cleanly() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults-299-shards");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut map = serde_json::Map::new();
    for i in 0..SHARDS {
        let shard = format!("shard-{i:03}.safetensors");
        common::write_f32(
            &dir.join(&shard),
            &[(&format!("t{i:03}"), vec![4096], vec![1.0; 4096])],
        );
        map.insert(format!("t{i:03}"), shard.into());
    }
    let index = dir.join("model.safetensors.index.json");
    std::fs::write(&index, serde_json::json!({ "weight_map": map }).to_string()).unwrap();
    let (code, stderr) = run_case("many-shards", &dir);
    let last = dir.join(format!("shard-{:03}.safetensors", SHARDS - 1));
    assert_eq!(code, Some(1), "exit status 1, not a signal: {stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("wstream: error:")).collect::<Vec<_>>(),
        [format!(
            "wstream: error: {}: weight file changed while mapped (truncated or rewritten in place); \
             nothing was written, rerun once it is complete",
            last.display()
        )]
    );
}

/// Before: each faulting thread printed the line before one of them ended the process.
#[test]
fn threads_faulting_at_once_print_one_line() {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults/threads.safetensors");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    for _ in 0..5 {
        common::write_f32(&path, &[("w", vec![1 << 18], vec![0.5; 1 << 18])]);
        let (code, stderr) = run_case("threads", &path);
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(
            stderr.matches("weight file changed while mapped").count(),
            1,
            "{stderr}"
        );
    }
}

/// Before: a SIGBUS not in a wstream mapping got the default action, whatever handler the program had.
#[test]
fn a_foreign_sigbus_reaches_the_previous_handler() {
    let path = weight_file("chain.safetensors");
    let (code, stderr) = run_case("chain", &path);
    assert_eq!(code, Some(42), "{stderr}");
    assert!(stderr.contains("previous SIGBUS handler ran"), "{stderr}");
}

/// A copy of the vit_tiny fixture in `name` (real files), its weights dated a day back so that a write
/// now changes their modification time whatever the clock's granularity.
fn vit_tiny_copy(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("faults")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = common::parity::fixture("vit_tiny");
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    std::fs::File::options()
        .write(true)
        .open(dir.join("model.safetensors"))
        .unwrap()
        .set_modified(day_ago)
        .unwrap();
    dir
}

/// Writes f32 NaN over every byte of tensor `name` of `weights`, in place (same size).
fn write_nan_over(weights: &std::path::Path, range: std::ops::Range<usize>) {
    use std::os::unix::fs::FileExt;
    let nan = f32::NAN.to_le_bytes().repeat(range.len() / 4);
    std::fs::File::options()
        .write(true)
        .open(weights)
        .unwrap()
        .write_all_at(&nan, range.start as u64)
        .unwrap();
}

/// Before: the file was checked only when a run began, so a same-size overwrite during a `--batch 12` run
/// gave every input the answer "NaN% 0 tench" and exit 0.
#[test]
fn a_file_overwritten_in_place_mid_run_fails_the_run() {
    use wstream::exec::{Event, ExecOptions, Executor};
    use wstream::models::{Act, Model};
    let dir = vit_tiny_copy("overwritten");
    let weights = dir.join("model.safetensors");
    let models = [Model::load(&dir).unwrap()];
    let data = models[0].store.tensors();
    let whole = data[0].range.start..data.iter().map(|t| t.range.end).max().unwrap();
    let [c, h, w] = models[0].input_size();
    let (image, _) = wstream::npy::read_f32(
        &common::parity::fixture("vit_tiny").join("reference/cat.input.npy"),
    )
    .unwrap();
    let batch = Act::new(image.repeat(12), vec![12, c, h, w]);
    let exec = Executor::new(&models, ExecOptions::default()).unwrap();
    let mut blocks_run = 0;
    let err = exec
        .run_observed(vec![batch], |e| {
            if let Event::BlockEnd(_) = e {
                blocks_run += 1;
                if blocks_run == 1 {
                    write_nan_over(&weights, whole.clone());
                }
            }
        })
        .map(|(out, _)| out[0].data[..4].to_vec())
        .unwrap_err();
    assert_eq!(
        blocks_run, 1,
        "the next block, which read the new bytes, fails the run"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{}: changed on disk since it was opened (modification time changed); reopen it",
            weights.display()
        )
    );
}

/// Before: a NaN logit ranked as class 0 with probability NaN, printed as an answer with exit 0.
#[test]
fn non_finite_logits_are_an_error_naming_the_model() {
    let dir = vit_tiny_copy("nan-head");
    let weights = dir.join("model.safetensors");
    let bias = Store::open(&weights)
        .unwrap()
        .info("head.bias")
        .unwrap()
        .range
        .clone();
    write_nan_over(&weights, bias);
    let img = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/cat.jpg");
    let (code, stdout, stderr) = common::wstream(&[
        "classify",
        "--batch",
        "12",
        "--model",
        dir.to_str().unwrap(),
        img.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(stdout, "", "no answer printed");
    let name = wstream::models::Model::load(&dir).unwrap().name;
    assert_eq!(
        stderr.trim_end(),
        format!(
            "wstream: error: {}: {name} computed logit NaN for class 0 of input {}: its weights hold \
             non-finite values or overflow; no answer is given",
            dir.display(),
            img.display()
        )
    );
}
