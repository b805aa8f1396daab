//! The page-fault profiler: one record per block in order, totals that add up, real page-ins when cold.

mod common;

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
    let wait: f64 = blocks.iter().map(|b| b["wait"].as_f64().unwrap()).sum();
    assert!((t["wait"].as_f64().unwrap() - wait).abs() < 1e-6);
    for b in blocks {
        assert!(
            b["end"].as_f64().unwrap()
                >= b["start"].as_f64().unwrap() + b["compute"].as_f64().unwrap() - 1e-6
        );
        assert!(b["mem_after"]["vm_rss"].as_u64().unwrap() > 0);
        assert!(b["resident_before"].as_u64().unwrap() <= b["weight_bytes"].as_u64().unwrap());
    }
    assert!(p["peak_rss"].as_u64().unwrap() >= t["peak_rss_after_block"].as_u64().unwrap());
    assert_eq!(p["models"][0]["model"], "vit_tiny_patch16_224");
    if std::fs::metadata("/proc/thread-self/io").is_ok() {
        // Cold: the first pass must have read the weights from storage (or faulted them in).
        let first_pass = &blocks[..4];
        let paged: u64 = first_pass
            .iter()
            .map(|b| {
                b["storage_read"].as_u64().unwrap_or(0)
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
            && table.contains("total vit_tiny_patch16_224:")
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
    assert!(rows[0].starts_with("model,block,weight_bytes,resident_before"));
    assert!(rows[2].starts_with("vit_tiny_patch16_224,blocks.0,"));
    let cols = rows[0].split(',').count();
    assert!(rows.iter().all(|r| r.split(',').count() == cols));
}
