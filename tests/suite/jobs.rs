//! Long batch runs: the recursive walk, `--files-from`, `--skip-errors` and the exit statuses, result
//! files that survive a kill -9 and resume without duplicates, shards (flag and schedulers' environment
//! variables) whose union is the full run, no progress bytes on a pipe, and the deployment files in
//! tools/deploy run on the fixtures.

use crate::common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::parity::fixture;
use serde_json::Value;

const SCHEDULER_VARS: [&str; 7] = [
    "JOB_COMPLETION_INDEX",
    "WSTREAM_SHARD_COUNT",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_STEP",
    "AWS_BATCH_JOB_ARRAY_INDEX",
];

/// Environment variables for a run.
type Env<'a> = &'a [(&'a str, &'a str)];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn vit() -> &'static str {
    static VIT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VIT.get_or_init(|| fixture("vit_tiny").display().to_string())
}

/// `wstream` with `args` and `env`, none of the schedulers' variables inherited.
fn cmd(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wstream"));
    c.args(args);
    for v in SCHEDULER_VARS {
        c.env_remove(v);
    }
    c.envs(env.iter().copied());
    c
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out: Output = cmd(args, env).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `n` images in `dir` (hard links to the test photos), named so that natural and bytewise order differ.
fn corpus(dir: &Path, n: usize) -> Vec<PathBuf> {
    let photos = ["cat.jpg", "coffee.png", "cat_grey.png", "cat_rgba.png"];
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let src = root().join("tests/data").join(photos[i % photos.len()]);
            let ext = src.extension().unwrap().to_str().unwrap().to_string();
            let p = dir.join(format!("img{i}.{ext}"));
            std::fs::hard_link(&src, &p)
                .or_else(|_| std::fs::copy(&src, &p).map(|_| ()))
                .unwrap();
            p
        })
        .collect()
}

/// A JSON record without its timing, which differs between runs.
fn strip(line: &str) -> Value {
    let mut v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    v.as_object_mut().unwrap().remove("elapsed_ms");
    v
}

fn records(text: &str) -> Vec<Value> {
    text.lines().map(strip).collect()
}

fn input(v: &Value) -> String {
    v["input"].as_str().unwrap().to_string()
}

#[test]
fn walk_is_recursive_natural_reported_and_refuses_loops() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(&d.join("b"), 3);
    corpus(&d.join("a/sub10"), 1);
    corpus(&d.join("a/sub9"), 1);
    std::fs::write(d.join("a/notes.txt"), "x").unwrap();
    std::fs::write(d.join("a/.hidden.jpg"), "x").unwrap();
    // A second path to a folder already walked: walked once, reported.
    std::os::unix::fs::symlink(d.join("b"), d.join("a/link_to_b")).unwrap();
    let s = |p: &Path| p.display().to_string();
    let w = wstream::inputs::walk(&[d.join("b"), d.join("a")]).unwrap();
    let rel: Vec<String> = w
        .files
        .iter()
        .map(|p| s(p.strip_prefix(d).unwrap()))
        .collect();
    assert_eq!(
        rel,
        [
            "b/img0.jpg",
            "b/img1.png",
            "b/img2.png",
            "a/sub9/img0.jpg",
            "a/sub10/img0.jpg"
        ]
    );
    let mut skipped: Vec<String> = w
        .skipped
        .iter()
        .map(|(p, r)| format!("{} {r:?}", s(p.strip_prefix(d).unwrap())))
        .collect();
    skipped.sort();
    assert_eq!(
        skipped,
        [
            "a/.hidden.jpg Hidden",
            "a/link_to_b SeenFolder",
            "a/notes.txt NotImage"
        ]
    );

    // The CLI reports what it skipped on stderr, and --quiet silences that note.
    let (code, stdout, stderr) = run(&["classify", "--json", "--model", vit(), &s(d)], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 5);
    assert!(
        stderr.contains("skipped 3 entries")
            && stderr.contains("hidden")
            && stderr.contains("notes.txt"),
        "{stderr}"
    );
    let (_, _, quiet) = run(&["classify", "-q", "--model", vit(), &s(d)], &[]);
    assert!(quiet.is_empty(), "{quiet}");

    // --files-from, from a file and from stdin: the listed paths in order (a folder walked), blank lines
    // ignored, the positional inputs first.
    let list = d.join("list.txt");
    std::fs::write(
        &list,
        format!(
            "{}\n\n{}\r\n",
            s(&d.join("b/img2.png")),
            s(&d.join("a/sub9"))
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = run(
        &[
            "classify",
            "--json",
            "--model",
            vit(),
            "--files-from",
            &s(&list),
            &s(&d.join("b/img0.jpg")),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let got: Vec<String> = records(&stdout).iter().map(input).collect();
    let want = [
        d.join("b/img0.jpg"),
        d.join("b/img2.png"),
        d.join("a/sub9/img0.jpg"),
    ]
    .map(|p| s(&p));
    assert_eq!(got, want);
    let mut child = cmd(
        &["classify", "--json", "--model", vit(), "--files-from", "-"],
        &[],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    writeln!(child.stdin.take().unwrap(), "{}", s(&d.join("b"))).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 3);

    // A symlink to a folder that contains it would make the walk endless: one error naming it.
    std::os::unix::fs::symlink(d.join("a"), d.join("a/sub9/up")).unwrap();
    let (code, stdout, stderr) = run(&["classify", "--model", vit(), &s(&d.join("a"))], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("symlink loop") && stderr.contains("sub9/up"),
        "{stderr}"
    );
}

#[test]
fn skip_errors_records_failures_and_exit_statuses_are_distinct() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(&d.join("in"), 2);
    std::fs::write(d.join("in/img1a.jpg"), "not a jpeg").unwrap();
    let s = |p: &Path| p.display().to_string();
    let folder = s(&d.join("in"));

    // Without --skip-errors the bad file ends the run: status 1, the answers before it printed (img0.jpg,
    // img1.png: `.` sorts before `a`).
    let (code, stdout, stderr) = run(&["classify", "--json", "--model", vit(), &folder], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stderr.contains("img1a.jpg"), "{stderr}");

    // With it: every input has a record in order, the bad one {"input", "error"}; status 65 and a summary.
    let out = d.join("r.jsonl");
    let (code, stdout, stderr) = run(
        &[
            "classify",
            "--skip-errors",
            "--model",
            vit(),
            "--output",
            &s(&out),
            &folder,
        ],
        &[],
    );
    assert_eq!(code, 65, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("1 of 3 inputs failed") && stderr.contains("img1a.jpg"),
        "{stderr}"
    );
    let recs = records(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(
        recs.iter().map(input).collect::<Vec<_>>(),
        ["img0.jpg", "img1.png", "img1a.jpg"].map(|n| s(&d.join("in").join(n)))
    );
    let bad = recs[2].as_object().unwrap();
    assert_eq!(bad.keys().collect::<Vec<_>>(), ["error", "input"]);
    assert!(bad["error"]
        .as_str()
        .unwrap()
        .contains("not an image wstream reads"));
    assert!(recs[0]["ensemble"]["top"]
        .as_array()
        .is_some_and(|t| t.len() == 5));

    // Usage errors: 2. Weights missing (a volume not mounted yet): 75, which a retry policy keys on.
    let usage = [
        vec!["classify", "--resume", "--model", vit(), &folder],
        vec!["classify", "--shard", "3/3", "--model", vit(), &folder],
        vec!["classify", "--shard-count", "3", "--model", vit(), &folder],
    ];
    for args in usage {
        let (code, _, stderr) = run(&args, &[]);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let (code, _, stderr) = run(
        &["classify", "--model", vit(), &folder],
        &[("JOB_COMPLETION_INDEX", "1")],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("WSTREAM_SHARD_COUNT"), "{stderr}");
    let gone = s(&d.join("weights/vit_tiny"));
    let (code, _, stderr) = run(&["classify", "--model", &gone, &folder], &[]);
    assert_eq!(code, 75, "{stderr}");
    assert!(stderr.contains("weights/vit_tiny"), "{stderr}");
    let (code, _, _) = run(
        &["classify", "--model", vit(), &s(&d.join("in/img0.jpg"))],
        &[],
    );
    assert_eq!(code, 0);
}

#[test]
fn killed_run_leaves_complete_records_and_resume_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = 240;
    corpus(&d.join("in"), n);
    let s = |p: &Path| p.display().to_string();
    let folder = s(&d.join("in"));
    let out = d.join("r.jsonl");
    let base = ["classify", "--threads", "1", "--model", vit()];
    let with = |extra: &[&str]| {
        let mut v: Vec<String> = base.iter().map(|a| a.to_string()).collect();
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    };
    let args = with(&["--output", &s(&out), "--resume", &folder]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // Killed (SIGKILL) once a few records are in: every line is a complete record.
    let mut child = cmd(&args, &[]).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    loop {
        let lines = std::fs::read(&out).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
        if lines >= 5 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no records after 60 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = std::fs::read_to_string(&out).unwrap();
    assert!(killed.ends_with('\n'));
    let partial = records(&killed);
    assert!(
        partial.len() < n,
        "the kill came after the run ended ({} records)",
        partial.len()
    );

    // A torn last line (what a power cut can leave) is cut off on resume.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&out)
        .unwrap()
        .write_all(b"{\"input\":\"tor")
        .unwrap();
    let (code, stdout, stderr) = run(&args, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains(&format!("{} inputs already recorded", partial.len()))
            && stderr.contains("torn last record of 13 bytes"),
        "{stderr}"
    );
    let resumed = records(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(resumed[..partial.len()], partial[..]);
    let unique: BTreeSet<String> = resumed.iter().map(input).collect();
    assert_eq!(unique.len(), resumed.len(), "no input recorded twice");

    // The resumed file is the full run, record for record, in order.
    let full = with(&["--json", &folder]);
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    let (code, stdout, _) = run(&full, &[]);
    assert_eq!(code, 0);
    assert_eq!(resumed, records(&stdout));
    assert_eq!(resumed.len(), n);

    // Resuming a finished file runs nothing; with other settings it is refused, the file untouched.
    let before = std::fs::read(&out).unwrap();
    let (code, _, stderr) = run(&args, &[]);
    assert_eq!(code, 0, "{stderr}");
    let other = with(&["--top", "3", "--output", &s(&out), "--resume", &folder]);
    let other: Vec<&str> = other.iter().map(String::as_str).collect();
    let (code, _, stderr) = run(&other, &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("other settings") && stderr.contains("top: was 5, now 3"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // Without --resume an existing file is never overwritten; .json cannot be resumed.
    let (code, _, stderr) = run(
        &args[..args.len() - 2]
            .iter()
            .chain([&folder.as_str()])
            .copied()
            .collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("add --resume"), "{stderr}");
    let json = s(&d.join("r.json"));
    let (code, _, stderr) = run(
        &[
            "classify",
            "--model",
            vit(),
            "--output",
            &json,
            "--resume",
            &folder,
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot be resumed"), "{stderr}");
}

#[test]
fn csv_and_json_outputs_resume_and_match() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let files = corpus(&d.join("in"), 5);
    let s = |p: &Path| p.display().to_string();
    let folder = s(&d.join("in"));
    let (full, part) = (d.join("full.csv"), d.join("part.csv"));
    let (code, _, stderr) = run(
        &[
            "classify",
            "--top",
            "2",
            "--model",
            vit(),
            "--output",
            &s(&full),
            &folder,
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&full).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("filename,index_0,index_1,label_0,label_1,prob_0,prob_1,error")
    );
    // A label with a comma is quoted.
    let first = lines.next().unwrap();
    assert!(
        first.starts_with(&format!("{},", s(&files[0]))) && first.contains('"'),
        "{first}"
    );
    // The first two files, then the whole folder resumed: the same bytes as one run.
    let (code, _, stderr) = run(
        &[
            "classify",
            "--top",
            "2",
            "--model",
            vit(),
            "--output",
            &s(&part),
            "--resume",
            &s(&files[0]),
            &s(&files[1]),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(
        &[
            "classify",
            "--top",
            "2",
            "--model",
            vit(),
            "--output",
            &s(&part),
            "--resume",
            &folder,
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("2 inputs already recorded"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&part).unwrap(), text);

    // .json: one array holding the .jsonl records.
    let json = d.join("r.json");
    let (code, stdout, _) = run(&["classify", "--json", "--model", vit(), &folder], &[]);
    assert_eq!(code, 0);
    let (code, _, stderr) = run(
        &["classify", "--model", vit(), "--output", &s(&json), &folder],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let array: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let array: Vec<Value> = array.iter().map(|v| strip(&v.to_string())).collect();
    assert_eq!(array, records(&stdout));
}

#[test]
fn shards_partition_the_run_and_follow_the_schedulers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(&d.join("in"), 11);
    let s = |p: &Path| p.display().to_string();
    let folder = s(&d.join("in"));
    let (code, stdout, _) = run(&["classify", "--json", "--model", vit(), &folder], &[]);
    assert_eq!(code, 0);
    let full = records(&stdout);
    assert_eq!(full.len(), 11);

    let mut union = Vec::new();
    for k in 0..3 {
        let out = d.join(format!("part-{k}.jsonl"));
        let (code, _, stderr) = run(
            &[
                "classify",
                "--model",
                vit(),
                "--shard",
                &format!("{k}/3"),
                "--output",
                &s(&out),
                &folder,
            ],
            &[],
        );
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stderr.contains(&format!("shard {k}/3 (from --shard)")),
            "{stderr}"
        );
        let part = records(&std::fs::read_to_string(&out).unwrap());
        // Positions k, k+3, ... of the run's order.
        let want: Vec<Value> = full.iter().skip(k).step_by(3).cloned().collect();
        assert_eq!(part, want, "shard {k}/3");
        union.extend(part);
    }
    let key = |v: &Value| v.to_string();
    let mut union_sorted: Vec<String> = union.iter().map(key).collect();
    let mut full_sorted: Vec<String> = full.iter().map(key).collect();
    union_sorted.sort();
    full_sorted.sort();
    assert_eq!(
        union_sorted, full_sorted,
        "the shards' union is the full run"
    );

    // Each scheduler's variables pick the same shard as the flag, and the run says which it used.
    let shard_inputs = |env: &[(&str, &str)], extra: &[&str]| {
        let mut args = vec!["classify", "--json", "--model", vit()];
        args.extend(extra);
        args.push(&folder);
        let (code, stdout, stderr) = run(&args, env);
        assert_eq!(code, 0, "{env:?}: {stderr}");
        (
            records(&stdout).iter().map(input).collect::<Vec<_>>(),
            stderr,
        )
    };
    let (want, _) = shard_inputs(&[], &["--shard", "1/3"]);
    let cases: [(Env, &[&str], &str); 5] = [
        (
            &[("JOB_COMPLETION_INDEX", "1"), ("WSTREAM_SHARD_COUNT", "3")],
            &[],
            "JOB_COMPLETION_INDEX=1 and WSTREAM_SHARD_COUNT=3",
        ),
        (
            &[("JOB_COMPLETION_INDEX", "1")],
            &["--shard-count", "3"],
            "JOB_COMPLETION_INDEX=1 and --shard-count 3",
        ),
        (
            &[
                ("SLURM_ARRAY_TASK_ID", "1"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ],
            &[],
            "SLURM_ARRAY_TASK_ID=1",
        ),
        (
            &[
                ("SLURM_ARRAY_TASK_ID", "12"),
                ("SLURM_ARRAY_TASK_MIN", "10"),
                ("SLURM_ARRAY_TASK_STEP", "2"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ],
            &[],
            "SLURM_ARRAY_TASK_ID=12 (min 10, step 2)",
        ),
        (
            &[
                ("AWS_BATCH_JOB_ARRAY_INDEX", "1"),
                ("WSTREAM_SHARD_COUNT", "3"),
            ],
            &[],
            "AWS_BATCH_JOB_ARRAY_INDEX=1",
        ),
    ];
    for (env, extra, says) in cases {
        let (got, stderr) = shard_inputs(env, extra);
        assert_eq!(got, want, "{env:?}");
        assert!(
            stderr.contains("shard 1/3") && stderr.contains(says),
            "{env:?}: {stderr}"
        );
    }
    // --shard wins over the environment.
    let (got, _) = shard_inputs(
        &[("JOB_COMPLETION_INDEX", "0"), ("WSTREAM_SHARD_COUNT", "3")],
        &["--shard", "1/3"],
    );
    assert_eq!(got, want);
}

#[test]
fn no_progress_bytes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path(), 3);
    let s = dir.path().display().to_string();
    let (code, stdout, stderr) = run(&["classify", "--json", "--model", vit(), &s], &[]);
    assert_eq!(code, 0);
    assert_eq!(records(&stdout).len(), 3);
    assert!(stderr.is_empty(), "{stderr:?}");
    let (code, stdout, stderr) = run(&["classify", "--model", vit(), &s], &[]);
    assert_eq!(code, 0);
    assert!(
        !stdout.contains(['\r', '\x1b']) && stderr.is_empty(),
        "{stderr:?}"
    );
}

#[test]
fn progress_line_on_a_terminal_only() {
    // util-linux `script` runs the command on a pseudo-terminal and copies what it shows.
    if Command::new("script").arg("--version").output().is_err() {
        common::skip_or_fail("progress on a terminal: util-linux `script` is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let images = corpus(dir.path(), 3);
    let shown = |extra: &str, inputs: &[PathBuf]| {
        let inputs: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        let line = format!(
            "{} classify --json {extra} --model {} {} >/dev/null",
            env!("CARGO_BIN_EXE_wstream"),
            vit(),
            inputs.join(" ")
        );
        let out = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let many = shown("", &images);
    assert!(
        many.contains("/3 inputs") && many.contains("img/s") && many.contains('\r'),
        "{many:?}"
    );
    // One input: its blocks (the tiny ViT's 4). The line is redrawn at most 20 times a second, so the
    // fixture's few milliseconds may show only its first state.
    let one = shown("", &images[..1]);
    assert!(one.contains("img0.jpg") && one.contains("/4 "), "{one:?}");
    assert!(shown("--quiet", &images).is_empty());
}

/// A weights folder where the Large models' names lead to the tiny fixtures, for the deployment files.
fn tiny_weights(dir: &Path) -> PathBuf {
    let w = dir.join("weights");
    std::fs::create_dir_all(&w).unwrap();
    for (large, tiny) in [
        ("vit_large_patch16_224", "vit_tiny"),
        ("convnext_large", "convnext_tiny"),
        ("swin_large_patch4_window7_224", "swin_tiny"),
    ] {
        std::os::unix::fs::symlink(fixture(tiny), w.join(large)).unwrap();
    }
    w
}

#[test]
fn kubernetes_indexed_job_parses_and_its_command_runs() {
    let text = std::fs::read_to_string(root().join("tools/deploy/k8s-indexed-job.yaml")).unwrap();
    let job: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(job["kind"], "Job");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let completions = spec["completions"].as_u64().unwrap();
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    let env = c["env"].as_array().unwrap();
    let count = env
        .iter()
        .find(|e| e["name"] == "WSTREAM_SHARD_COUNT")
        .and_then(|e| e["value"].as_str())
        .unwrap();
    assert_eq!(
        count,
        completions.to_string(),
        "one shard per completion index"
    );
    // The weights are mounted read-only; the retry policy retries 75 only.
    let mounts = c["volumeMounts"].as_array().unwrap();
    let weights = mounts
        .iter()
        .find(|m| m["mountPath"] == "/weights")
        .unwrap();
    assert_eq!(weights["readOnly"], true);
    let rules = spec["podFailurePolicy"]["rules"].as_array().unwrap();
    let no_retry = rules[0]["onExitCodes"]["values"].as_array().unwrap();
    assert!(no_retry.contains(&1.into()) && !no_retry.contains(&75.into()));
    assert_eq!(c["command"], serde_json::json!(["sh", "-c"]));
    let script = c["args"][0].as_str().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let images = corpus(&d.join("data/images"), 6);
    let manifest: String = images
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    std::fs::write(d.join("data/manifest.txt"), manifest).unwrap();
    std::fs::create_dir(d.join("results")).unwrap();
    let weights = tiny_weights(d);
    let script = script
        .replace("/weights", weights.to_str().unwrap())
        .replace("/data", d.join("data").to_str().unwrap())
        .replace("/results", d.join("results").to_str().unwrap())
        .replace(
            "exec wstream",
            &format!("exec {}", env!("CARGO_BIN_EXE_wstream")),
        );
    let mut all = Vec::new();
    for i in 0..completions {
        let out = Command::new("sh")
            .args(["-c", &script])
            .env("JOB_COMPLETION_INDEX", i.to_string())
            .env("WSTREAM_SHARD_COUNT", count)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let part = std::fs::read_to_string(d.join(format!("results/part-{i}.jsonl"))).unwrap();
        for r in records(&part) {
            assert_eq!(r["models"].as_array().unwrap().len(), 3);
            all.push(input(&r));
        }
    }
    all.sort();
    let mut want: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    want.sort();
    assert_eq!(all, want);
}

#[test]
fn slurm_array_script_runs_a_task() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let images = corpus(&d.join("images"), 4);
    let manifest: String = images
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    std::fs::write(d.join("manifest.txt"), manifest).unwrap();
    std::fs::create_dir(d.join("results")).unwrap();
    let weights = tiny_weights(d);
    let mut all = Vec::new();
    for task in 0..2 {
        let out = Command::new("bash")
            .arg(root().join("tools/deploy/slurm-array.sh"))
            .env("WSTREAM", env!("CARGO_BIN_EXE_wstream"))
            .env("WEIGHTS", &weights)
            .env("MANIFEST", d.join("manifest.txt"))
            .env("RESULTS", d.join("results"))
            .env("SLURM_ARRAY_TASK_ID", task.to_string())
            .env("SLURM_ARRAY_TASK_COUNT", "2")
            .env("SLURM_CPUS_PER_TASK", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let part = std::fs::read_to_string(d.join(format!("results/part-{task}.jsonl"))).unwrap();
        all.extend(records(&part).iter().map(input));
    }
    assert_eq!(all, [0, 2, 1, 3].map(|i| images[i].display().to_string()));
}
