//! tools/deploy/: the Grafana dashboard is valid JSON whose every query uses only the metrics `wstream
//! serve` exposes (issue #16's fixed names) and covers all of them, through the dashboard's Prometheus
//! datasource variable; the systemd unit and the Prometheus scrape job agree on the address.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// The metric names of `wstream serve`'s /metrics, with their kind.
const METRICS: [(&str, Kind); 16] = [
    ("wstream_requests_total", Kind::Counter),
    ("wstream_request_duration_seconds", Kind::Histogram),
    ("wstream_queue_wait_seconds", Kind::Histogram),
    ("wstream_batch_size", Kind::Histogram),
    ("wstream_queue_depth", Kind::Gauge),
    ("wstream_batches_total", Kind::Counter),
    ("wstream_block_runs_total", Kind::Counter),
    ("wstream_block_compute_seconds_total", Kind::Counter),
    ("wstream_block_wait_seconds_total", Kind::Counter),
    ("wstream_block_major_faults_total", Kind::Counter),
    ("wstream_block_paged_in_bytes_total", Kind::Counter),
    ("wstream_block_storage_read_bytes_total", Kind::Counter),
    ("wstream_process_resident_bytes", Kind::Gauge),
    ("wstream_weights_bytes", Kind::Gauge),
    ("wstream_weights_cached_bytes", Kind::Gauge),
    ("wstream_healthy", Kind::Gauge),
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

fn deploy(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools/deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The series a PromQL expression names: every `wstream_...` identifier, the metric it belongs to and its
/// kind, or an error naming the unknown series.
fn series(expr: &str) -> Result<Vec<(String, &'static str, Kind)>, String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("wstream_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let found = METRICS.iter().find_map(|&(m, kind)| {
            let suffix = name.strip_prefix(m)?;
            let ok = suffix.is_empty()
                || (kind == Kind::Histogram && ["_bucket", "_sum", "_count"].contains(&suffix));
            ok.then_some((m, kind))
        });
        let (metric, kind) = found.ok_or_else(|| format!("unknown series `{name}` in `{expr}`"))?;
        out.push((name.to_string(), metric, kind));
        rest = &tail[end..];
    }
    Ok(out)
}

/// Every panel, rows' nested panels included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("a panels array") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

#[test]
fn dashboard_queries_use_only_the_servers_metrics_and_cover_them() {
    let dash: Value = serde_json::from_str(&deploy("grafana-wstream-serve.json"))
        .expect("grafana-wstream-serve.json is valid JSON");
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("template variables");
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["query"], "prometheus");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().unwrap());

    let mut used = BTreeSet::new();
    let mut exprs = 0;
    for p in panels(&dash) {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("a panel title");
        assert_eq!(p["datasource"]["uid"], ds_ref.as_str(), "panel `{title}`");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel `{title}` has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], ds_ref.as_str(), "panel `{title}`");
            let expr = t["expr"].as_str().expect("an expr");
            let names = series(expr).unwrap_or_else(|e| panic!("panel `{title}`: {e}"));
            assert!(
                !names.is_empty(),
                "panel `{title}`: `{expr}` names no metric"
            );
            for (name, metric, kind) in names {
                // A counter is only read through rate/increase; a histogram's quantiles come from its
                // buckets.
                if kind == Kind::Counter || name.ends_with("_sum") || name.ends_with("_count") {
                    assert!(
                        expr.contains("rate(") || expr.contains("increase("),
                        "panel `{title}`: counter {name} read without rate/increase: `{expr}`"
                    );
                }
                if expr.contains("histogram_quantile") {
                    assert!(
                        name.ends_with("_bucket") && expr.contains("by (le)"),
                        "panel `{title}`: `{expr}`"
                    );
                }
                used.insert(metric);
            }
            exprs += 1;
        }
    }
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"].as_str().expect("a variable query");
        for (_, metric, _) in series(q).unwrap_or_else(|e| panic!("variable: {e}")) {
            used.insert(metric);
        }
    }
    let unused: Vec<_> = METRICS
        .iter()
        .map(|m| m.0)
        .filter(|m| !used.contains(m))
        .collect();
    assert!(unused.is_empty(), "metrics no panel shows: {unused:?}");
    assert!(exprs >= 16, "{exprs} queries");

    // Panels sit side by side on Grafana's 24-column grid without overlapping.
    let boxes: Vec<(&str, [i64; 4])> = panels(&dash)
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            let n = |k: &str| g[k].as_i64().expect("gridPos");
            (
                p["title"].as_str().unwrap(),
                [n("x"), n("y"), n("w"), n("h")],
            )
        })
        .collect();
    for (i, (a, [ax, ay, aw, ah])) in boxes.iter().enumerate() {
        assert!(ax + aw <= 24, "panel `{a}` is wider than the grid");
        for (b, [bx, by, bw, bh]) in &boxes[i + 1..] {
            let overlap = ax < &(bx + bw) && bx < &(ax + aw) && ay < &(by + bh) && by < &(ay + ah);
            assert!(!overlap, "panels `{a}` and `{b}` overlap");
        }
    }
}

#[test]
fn unknown_series_are_refused() {
    assert!(series("rate(wstream_requests_total[5m])").is_ok());
    assert!(series("wstream_batch_size_bucket").is_ok());
    assert!(series("wstream_requests_total_bucket").is_err());
    assert!(series("wstream_request_seconds").is_err());
}

#[test]
fn systemd_unit_and_scrape_job_agree() {
    let unit = deploy("wstream-serve.service");
    let exec = unit
        .split("\nExecStart=")
        .nth(1)
        .expect("an ExecStart line")
        .split("\n#")
        .next()
        .unwrap()
        .replace("\\\n", " ");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert!(
        args[0].ends_with("/wstream") && args[1] == "serve",
        "{exec}"
    );
    let flag = |name: &str| {
        args.windows(2)
            .find(|w| w[0] == name)
            .map(|w| w[1])
            .unwrap_or_else(|| panic!("no {name} in ExecStart: {exec}"))
    };
    let addr = flag("--addr");
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert_eq!(args.iter().filter(|a| **a == "--model").count(), 3);
    for f in ["--threads", "--max-batch", "--batch-window-ms", "--queue"] {
        flag(f);
    }
    assert!(unit.contains("\nMemoryMax="), "the unit sets MemoryMax");
    assert!(unit.contains("\nMemorySwapMax=0"));
    let scrape = deploy("prometheus-wstream.yml");
    assert!(
        scrape.contains(&format!("targets: [\"{addr}\"]")),
        "the scrape job targets {addr}: {scrape}"
    );
    assert!(scrape.contains("metrics_path: /metrics"));
}
