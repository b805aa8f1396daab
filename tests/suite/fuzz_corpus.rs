//! Replays every committed fuzz input (tools/fuzz/corpus and tools/fuzz/crashes, one folder per target)
//! through the same code the libFuzzer targets run (tools/fuzz/src/lib.rs) on stable Rust: none may panic;
//! an `Err` from wstream is fine.
//!
//! A crash input whose bug is not fixed yet is listed in tools/fuzz/crashes/known_panics.txt. Such an input
//! must still panic: once the fix lands the test fails and asks for the line to be removed, and from then
//! on the input guards against the bug coming back.

#[path = "../../tools/fuzz/src/lib.rs"]
mod fuzz;

use std::collections::BTreeSet;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

#[test]
fn fuzz_inputs_do_not_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/fuzz");
    let known_text = std::fs::read_to_string(root.join("crashes/known_panics.txt")).unwrap();
    let known: BTreeSet<&str> = known_text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let (mut replayed, mut problems, mut still_known) = (0, Vec::new(), BTreeSet::new());
    for (target, run) in fuzz::TARGETS {
        for kind in ["corpus", "crashes"] {
            let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else {
                continue;
            };
            let mut files: Vec<_> = dir.map(|e| e.unwrap().path()).collect();
            files.sort();
            for file in files {
                let id = format!(
                    "{kind}/{target}/{}",
                    file.file_name().unwrap().to_string_lossy()
                );
                let data = std::fs::read(&file).unwrap();
                let panicked = catch_unwind(AssertUnwindSafe(|| run(&data))).is_err();
                replayed += 1;
                match (panicked, known.contains(id.as_str())) {
                    (true, false) => problems.push(format!("{id}: panics (see the message above)")),
                    (false, true) => problems.push(format!(
                        "{id}: no longer panics; remove it from crashes/known_panics.txt"
                    )),
                    (true, true) => {
                        still_known.insert(id);
                    }
                    (false, false) => {}
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(fuzz::scratch());
    for id in known.iter().filter(|id| !still_known.contains(**id)) {
        if !problems.iter().any(|p| p.starts_with(*id)) {
            problems.push(format!(
                "{id}: listed in known_panics.txt but no such input"
            ));
        }
    }
    // Past the harness's capture, so the open findings show even when the test passes.
    for id in &still_known {
        let line = format!("KNOWN PANIC (not fixed yet) tools/fuzz/{id}\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    assert!(
        replayed >= 20,
        "only {replayed} fuzz inputs found under {root:?}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
