//! The page-fault profiler: one record per block in order, totals that add up, real page-ins when cold; how
//! it presents a run of several inputs and batches; `inspect --residency --summary`.

mod common;

use std::path::Path;

use common::parity::fixture;
use common::wstream;

fn cat() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/cat.jpg")
        .display()
        .to_string()
}

#[test]
fn json_records_and_totals_add_up() {
    // A private copy: the other tests read the committed fixture concurrently, which would warm the cache
    // this cold run has just dropped.
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(fixture("vit_tiny").join(f), dir.path().join(f)).unwrap();
    }
    let model = dir.path().display().to_string();
    let (code, stdout, stderr) = wstream(&[
        "profile",
        "--cold",
        "--format",
        "json",
        "--model",
        &model,
        &cat(),
        &cat(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let p: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let blocks = p["blocks"].as_array().unwrap();
    let names: Vec<&str> = blocks
        .iter()
        .map(|b| b["block"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "patch_embed",
            "blocks.0",
            "blocks.1",
            "head",
            "patch_embed",
            "blocks.0",
            "blocks.1",
            "head"
        ]
    );
    let sum = |key: &str| blocks.iter().map(|b| b[key].as_u64().unwrap()).sum::<u64>();
    let t = &p["totals"];
    assert_eq!(t["blocks"], 8);
    assert_eq!(t["weight_bytes"].as_u64().unwrap(), sum("weight_bytes"));
    let faults = |who: &str, kind: &str| {
        blocks
            .iter()
            .map(|b| b[who][kind].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        t["compute_faults"]["minor"].as_u64().unwrap(),
        faults("compute_faults", "minor")
    );
    assert_eq!(
        t["prefetch_faults"]["major"].as_u64().unwrap(),
        faults("prefetch_faults", "major")
    );
    let wait: f64 = blocks.iter().map(|b| b["wait_ms"].as_f64().unwrap()).sum();
    assert!((t["wait_ms"].as_f64().unwrap() - wait).abs() < 1e-6);
    for b in blocks {
        assert!(
            b["end_ms"].as_f64().unwrap()
                >= b["start_ms"].as_f64().unwrap() + b["compute_ms"].as_f64().unwrap() - 1e-6
        );
        assert!(b["mem_after_bytes"]["vm_rss"].as_u64().unwrap() > 0);
        assert!(
            b["resident_before_bytes"].as_u64().unwrap() <= b["weight_bytes"].as_u64().unwrap()
        );
    }
    assert!(
        p["peak_rss_bytes"].as_u64().unwrap() >= t["peak_rss_after_block_bytes"].as_u64().unwrap()
    );
    assert_eq!(p["models"][0]["model"], "vit_tiny_patch16_224");
    if std::fs::metadata("/proc/thread-self/io").is_ok() {
        // Cold: the first pass must have read the weights from storage (or faulted them in).
        let first_pass = &blocks[..4];
        let paged: u64 = first_pass
            .iter()
            .map(|b| {
                b["storage_read_bytes"].as_u64().unwrap_or(0)
                    + b["compute_faults"]["major"].as_u64().unwrap()
                    + b["prefetch_faults"]["major"].as_u64().unwrap()
            })
            .sum();
        assert!(
            paged > 0,
            "a cold run reads from storage: {}",
            serde_json::to_string(first_pass).unwrap()
        );
    }
}

#[test]
fn table_csv_and_svg() {
    let model = fixture("vit_tiny").display().to_string();
    let svg = tempfile::Builder::new().suffix(".svg").tempfile().unwrap();
    let svg_path = svg.path().display().to_string();
    let (code, table, stderr) =
        wstream(&["profile", "--svg", &svg_path, "--model", &model, &cat()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        table.lines().all(|l| l.chars().count() <= 100),
        "fits 100 columns:\n{table}"
    );
    assert!(
        table.contains("blocks.1")
            && table.contains("total: ")
            && table.contains("peak RSS (VmHWM)")
    );
    let drawing = std::fs::read_to_string(svg.path()).unwrap();
    assert!(
        drawing.starts_with("<svg")
            && drawing.contains("vit_tiny_patch16_224")
            && drawing.contains("RssFile")
    );

    let (code, csv, stderr) = wstream(&["profile", "--format", "csv", "--model", &model, &cat()]);
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 5, "header + one row per block");
    assert!(rows[0]
        .starts_with("model,block,batch,first_input,inputs,weight_bytes,resident_before_bytes"));
    assert!(rows[2].starts_with("vit_tiny_patch16_224,blocks.0,"));
    let cols = rows[0].split(',').count();
    assert!(rows.iter().all(|r| r.split(',').count() == cols));
}

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
        .display()
        .to_string()
}

fn three_images() -> [String; 3] {
    [data("cat.jpg"), data("coffee.png"), data("cat_grey.png")]
}

#[test]
fn csv_numbers_batches_and_times_them_from_the_run_start() {
    let m = fixture("vit_tiny").display().to_string();
    let [a, b, c] = three_images();
    let (code, stdout, stderr) = wstream(&[
        "profile", "--format", "csv", "--batch", "2", "--model", &m, &a, &b, &c,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    for unit in [
        "wait_ms",
        "compute_ms",
        "start_ms",
        "end_ms",
        "storage_read_bytes",
        "vm_rss_bytes",
    ] {
        col(unit);
    }
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    // vit_tiny: patch_embed, 2 blocks, head; two batches (2 inputs, then 1).
    let blocks = ["patch_embed", "blocks.0", "blocks.1", "head"];
    assert_eq!(rows.len(), 8);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r[col("block")], blocks[i % 4]);
        let (batch, first, n) = if i < 4 {
            ("0", "0", "2")
        } else {
            ("1", "2", "1")
        };
        assert_eq!(
            [r[col("batch")], r[col("first_input")], r[col("inputs")]],
            [batch, first, n],
            "row {i}"
        );
    }
    // One time base: each block starts after the previous one ended, across the batch boundary too.
    let t = |r: &Vec<&str>, c: &str| r[col(c)].parse::<f64>().unwrap();
    assert!(
        t(&rows[0], "start_ms") < 1000.0,
        "the first block starts at the run's start"
    );
    for w in rows.windows(2) {
        assert!(
            t(&w[1], "start_ms") >= t(&w[0], "end_ms"),
            "{:?} then {:?}",
            w[0],
            w[1]
        );
    }
}

#[test]
fn json_field_names_carry_units() {
    let m = fixture("convnext_tiny").display().to_string();
    let [a, b, _] = three_images();
    let (code, stdout, stderr) = wstream(&[
        "profile", "--format", "json", "--batch", "1", "--model", &m, &a, &b,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let blocks = v["blocks"].as_array().unwrap();
    let first = &blocks[0];
    for key in [
        "wait_ms",
        "compute_ms",
        "start_ms",
        "end_ms",
        "weight_bytes",
        "resident_before_bytes",
        "storage_read_bytes",
        "mem_after_bytes",
        "released_bytes",
        "scratch_bytes",
    ] {
        assert!(first.get(key).is_some(), "no {key} in {first}");
    }
    for key in [
        "wait",
        "compute",
        "start",
        "end",
        "resident_before",
        "mem_after",
    ] {
        assert!(first.get(key).is_none(), "{key} has no unit in {first}");
    }
    let last = blocks.last().unwrap();
    assert_eq!(
        (last["batch"].as_u64(), last["first_input"].as_u64()),
        (Some(1), Some(1))
    );
    let totals = &v["totals"];
    for key in [
        "wait_ms",
        "compute_ms",
        "wall_ms",
        "paged_in_bytes",
        "storage_read_bytes",
    ] {
        assert!(totals.get(key).is_some(), "no {key} in {totals}");
    }
    assert!(v.get("peak_rss_bytes").is_some());
    // The wall time spans both batches, from the first block's start to the last one's end.
    let wall = last["end_ms"].as_f64().unwrap() - first["start_ms"].as_f64().unwrap();
    assert!(
        (totals["wall_ms"].as_f64().unwrap() - wall).abs() < 1e-6,
        "{totals}"
    );
}

#[test]
fn table_prints_totals_once_for_one_model_and_explains_its_columns() {
    let m = fixture("vit_tiny").display().to_string();
    let (code, table, stderr) = wstream(&["profile", "--model", &m, &data("cat.jpg")]);
    assert_eq!(code, 0, "{stderr}");
    let totals = table
        .lines()
        .filter(|l| l.starts_with("total"))
        .collect::<Vec<_>>();
    assert_eq!(totals.len(), 1, "{table}");
    assert!(totals[0].starts_with("total: "), "{table}");
    for term in ["cached: ", "major c/p: ", "paged in: ", "read from storage"] {
        assert!(
            table.lines().any(|l| l.contains(term)),
            "no {term} in the footer:\n{table}"
        );
    }
    assert!(table.lines().all(|l| l.chars().count() <= 100), "{table}");

    let s = fixture("swin_tiny").display().to_string();
    let (code, table, stderr) =
        wstream(&["profile", "--model", &m, "--model", &s, &data("cat.jpg")]);
    assert_eq!(code, 0, "{stderr}");
    let totals = table
        .lines()
        .filter(|l| l.starts_with("total"))
        .collect::<Vec<_>>();
    assert_eq!(
        totals,
        [
            "total vit_tiny_patch16_224: 0.3 MiB of weights",
            "total swin_tiny_patch4_window7_224: 0.8 MiB of weights",
            "total: 1.1 MiB of weights"
        ],
        "{table}"
    );
}

#[test]
fn table_says_which_inputs_each_batch_ran() {
    let m = fixture("vit_tiny").display().to_string();
    let [a, b, c] = three_images();
    let (code, table, stderr) = wstream(&["profile", "--batch", "2", "--model", &m, &a, &b, &c]);
    assert_eq!(code, 0, "{stderr}");
    let batches: Vec<&str> = table.lines().filter(|l| l.starts_with("batch ")).collect();
    assert_eq!(
        batches,
        ["batch 1 of 2: inputs 1-2", "batch 2 of 2: input 3"],
        "{table}"
    );
    let after = |head: &str| {
        table
            .split(head)
            .nth(1)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert!(after("batch 1 of 2").starts_with("patch_embed "), "{table}");
    assert!(after("batch 2 of 2").starts_with("patch_embed "), "{table}");
}

#[test]
fn svg_has_one_time_axis_a_legend_and_the_head_colour() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("t.svg");
    let m = fixture("convnext_tiny").display().to_string();
    let [a, b, c] = three_images();
    let (code, _, stderr) = wstream(&[
        "profile",
        "--batch",
        "1",
        "--svg",
        svg.to_str().unwrap(),
        "--model",
        &m,
        &a,
        &b,
        &c,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let drawing = std::fs::read_to_string(&svg).unwrap();
    for label in [
        "convnext_tiny",
        "head block",
        "waiting for pages",
        "major page faults",
    ] {
        assert!(drawing.contains(label), "no {label} in the legend");
    }
    // The head's colour (#FB8C00): one bar per batch, and its legend key.
    assert_eq!(drawing.matches(r##"fill="#FB8C00""##).count(), 3 + 1);
    // One lane chart and one memory chart, each with a single time axis.
    assert_eq!(drawing.matches("time (s)").count(), 2);
}

/// A safetensors file holding one f32 per name, in the given order on disk.
fn write_safetensors(path: &Path, names: &[&str]) {
    let header: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let v = serde_json::json!({"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]});
            (n.to_string(), v)
        })
        .collect();
    let header = serde_json::to_vec(&header).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend(vec![0u8; 4 * names.len()]);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn inspect_summary_lists_blocks_in_execution_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.safetensors");
    write_safetensors(
        &file,
        &[
            "head.weight",
            "blocks.10.mlp.fc1.weight",
            "norm.weight",
            "blocks.2.attn.qkv.weight",
            "blocks.2.norm1.weight",
            "patch_embed.proj.weight",
            "blocks.10.norm1.weight",
        ],
    );
    let (code, stdout, stderr) = wstream(&[
        "inspect",
        "--residency",
        "--summary",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains(": 7 tensors in 1 file(s)"), "{stdout}");
    let blocks: Vec<(&str, &str)> = lines[2..lines.len() - 1]
        .iter()
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap(), w.next().unwrap())
        })
        .collect();
    assert_eq!(
        blocks,
        [
            ("patch_embed.", "1"),
            ("blocks.2.", "2"),
            ("blocks.10.", "2"),
            ("norm.", "1"),
            ("head.", "1")
        ],
        "{stdout}"
    );
    assert!(lines[lines.len() - 1].starts_with("resident: "), "{stdout}");
    assert!(!stdout.contains("weight"), "no per-tensor lines:\n{stdout}");

    let (code, stdout, stderr) = wstream(&[
        "inspect",
        "--residency",
        "--summary",
        "--json",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(v.get("tensors").is_none(), "{v}");
    assert_eq!(v["groups"][1]["group"], "blocks.2.");

    let (code, _, stderr) = wstream(&["inspect", "--summary", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--residency"), "{stderr}");
}

#[test]
fn inspect_summary_groups_exec_layout_padding() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exec");
    let m = fixture("vit_tiny").display().to_string();
    let (code, _, stderr) = wstream(&["convert", &m, out.to_str().unwrap(), "--layout", "exec"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) =
        wstream(&["inspect", "--residency", "--summary", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let names: Vec<&str> = stdout
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        [
            "cls_token",
            "patch_embed.",
            "pos_embed",
            "blocks.0.",
            "blocks.1.",
            "norm.",
            "head.",
            "padding",
            "resident:"
        ],
        "{stdout}"
    );
    assert!(!stdout.contains("__pad__"), "{stdout}");
}
