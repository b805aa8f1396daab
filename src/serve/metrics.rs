//! The server's Prometheus metrics, kept by hand: a few counters and histograms under one mutex (taken
//! once per request and once per batch, far from contention at a model's pace) and the executor's block
//! records summed per block. Process memory and page-cache residency are read at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::exec::BlockRecord;
use crate::models::Model;
use crate::process::MemReading;

/// Seconds: from a warm small model (milliseconds) to a Large ensemble under a memory limit (tens of
/// seconds).
const SECONDS_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const BATCH_BUCKETS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

#[derive(Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default, Clone, Copy)]
struct BlockTotals {
    runs: u64,
    compute: f64,
    wait: f64,
    major_faults: u64,
    paged_in: u64,
    storage_read: u64,
}

struct State {
    requests: BTreeMap<(&'static str, u16), u64>,
    durations: BTreeMap<&'static str, Histogram>,
    queue_wait: Histogram,
    batch_size: Histogram,
    batches: u64,
    dropped: u64,
    blocks: BTreeMap<(String, String), BlockTotals>,
}

pub struct Metrics {
    state: Mutex<State>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            state: Mutex::new(State {
                requests: BTreeMap::new(),
                durations: BTreeMap::new(),
                queue_wait: Histogram::new(&SECONDS_BUCKETS),
                batch_size: Histogram::new(&BATCH_BUCKETS),
                batches: 0,
                dropped: 0,
                blocks: BTreeMap::new(),
            }),
        }
    }
}

/// Escapes a label value (model and block names come from files).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves counters that are still counters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        let mut s = self.state();
        *s.requests.entry((route, status)).or_default() += 1;
        s.durations
            .entry(route)
            .or_insert_with(|| Histogram::new(&SECONDS_BUCKETS))
            .observe(took.as_secs_f64());
    }

    /// A batch about to run: its size and how long each of its requests waited in the queue.
    pub fn batch(&self, waits: &[Duration]) {
        let mut s = self.state();
        s.batches += 1;
        s.batch_size.observe(waits.len() as f64);
        for w in waits {
            s.queue_wait.observe(w.as_secs_f64());
        }
    }

    /// Requests whose client had gone when their batch was gathered.
    pub fn dropped(&self, n: usize) {
        self.state().dropped += n as u64;
    }

    pub fn blocks(&self, records: &[BlockRecord]) {
        let mut s = self.state();
        for r in records {
            let t = s
                .blocks
                .entry((r.model.clone(), r.block.clone()))
                .or_default();
            t.runs += 1;
            t.compute += r.compute.as_secs_f64();
            t.wait += r.wait.as_secs_f64();
            t.major_faults += r.compute_faults.major + r.prefetch_faults.major;
            t.paged_in += r.weight_bytes.saturating_sub(r.resident_before);
            t.storage_read += r.storage_read.unwrap_or(0);
        }
    }

    /// The Prometheus text exposition of every metric; `models` for the weight gauges (residency read
    /// now with mincore), `queue_depth` and `healthy` as the server sees them now.
    pub fn render(&self, models: &[Model], queue_depth: usize, healthy: bool) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let s = self.state();
        head(
            &mut out,
            "wstream_requests_total",
            "counter",
            "HTTP requests answered, by route and status code.",
        );
        for ((route, status), n) in &s.requests {
            let _ = writeln!(
                out,
                "wstream_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        head(
            &mut out,
            "wstream_request_duration_seconds",
            "histogram",
            "Time from a request's headers to its answer, by route.",
        );
        for (route, h) in &s.durations {
            h.render(
                &mut out,
                "wstream_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        head(
            &mut out,
            "wstream_queue_wait_seconds",
            "histogram",
            "Time a classify request waited between its queueing and the start of its batch.",
        );
        s.queue_wait
            .render(&mut out, "wstream_queue_wait_seconds", "");
        head(
            &mut out,
            "wstream_batch_size",
            "histogram",
            "Requests per batch run through the models together.",
        );
        s.batch_size.render(&mut out, "wstream_batch_size", "");
        head(
            &mut out,
            "wstream_queue_depth",
            "gauge",
            "Classify requests queued and not yet in a batch.",
        );
        let _ = writeln!(out, "wstream_queue_depth {queue_depth}");
        head(&mut out, "wstream_batches_total", "counter", "Batches run.");
        let _ = writeln!(out, "wstream_batches_total {}", s.batches);
        head(
            &mut out,
            "wstream_requests_dropped_total",
            "counter",
            "Classify requests dropped before their batch because their client had gone.",
        );
        let _ = writeln!(out, "wstream_requests_dropped_total {}", s.dropped);
        type Field = fn(&BlockTotals) -> String;
        let series: [(&str, &str, Field); 6] = [
            (
                "wstream_block_runs_total",
                "Times the block ran (once per batch).",
                |t| t.runs.to_string(),
            ),
            (
                "wstream_block_compute_seconds_total",
                "Seconds the block computed.",
                |t| t.compute.to_string(),
            ),
            (
                "wstream_block_wait_seconds_total",
                "Seconds the compute thread waited for the block's prefetch.",
                |t| t.wait.to_string(),
            ),
            (
                "wstream_block_major_faults_total",
                "Major page faults while the block was prefetched and computed.",
                |t| t.major_faults.to_string(),
            ),
            (
                "wstream_block_paged_in_bytes_total",
                "Weight bytes of the block that were not in the page cache when it was scheduled.",
                |t| t.paged_in.to_string(),
            ),
            (
                "wstream_block_storage_read_bytes_total",
                "Bytes read from storage for the block.",
                |t| t.storage_read.to_string(),
            ),
        ];
        for (name, help, field) in series {
            head(&mut out, name, "counter", help);
            for ((model, block), t) in &s.blocks {
                let _ = writeln!(
                    out,
                    "{name}{{model=\"{}\",block=\"{}\"}} {}",
                    label(model),
                    label(block),
                    field(t)
                );
            }
        }
        drop(s);
        let mem = MemReading::now();
        head(
            &mut out,
            "wstream_process_resident_bytes",
            "gauge",
            "Resident memory of the process: VmRSS (total), RssFile (file) and RssAnon (anon).",
        );
        for (kind, v) in [
            ("total", mem.vm_rss),
            ("file", mem.rss_file),
            ("anon", mem.rss_anon),
        ] {
            let _ = writeln!(out, "wstream_process_resident_bytes{{kind=\"{kind}\"}} {v}");
        }
        head(
            &mut out,
            "wstream_weights_bytes",
            "gauge",
            "Bytes of the model's weight files.",
        );
        for m in models {
            let _ = writeln!(
                out,
                "wstream_weights_bytes{{model=\"{}\"}} {}",
                label(&m.name),
                m.store.total_bytes()
            );
        }
        head(
            &mut out,
            "wstream_weights_cached_bytes",
            "gauge",
            "Bytes of the model's weight files in the page cache now (mincore).",
        );
        for m in models {
            let cached: u64 = m
                .store
                .files()
                .iter()
                .filter_map(|f| {
                    crate::residency::resident_bytes(f.bytes(), 0..f.bytes().len()).ok()
                })
                .sum();
            let _ = writeln!(
                out,
                "wstream_weights_cached_bytes{{model=\"{}\"}} {cached}",
                label(&m.name)
            );
        }
        head(
            &mut out,
            "wstream_healthy",
            "gauge",
            "1 while every weight file is the one opened, else 0.",
        );
        let _ = writeln!(out, "wstream_healthy {}", u8::from(healthy));
        out
    }
}
