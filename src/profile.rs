//! The page-fault profiler's views of the executor's block records: totals per model and overall, a table
//! for a 100-column terminal, JSON, CSV, and an SVG timeline.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;
use serde::Serialize;

use crate::exec::{as_ms, BlockRecord};
use crate::process::Faults;

const MIB: f64 = 1024.0 * 1024.0;

/// Sums over a set of block records.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Totals {
    pub blocks: usize,
    pub weight_bytes: u64,
    /// Weight bytes that were not in the page cache when their block was scheduled for prefetch (mincore).
    /// Read-ahead of earlier blocks can bring pages in before that, so on a cold run `storage_read` is the
    /// fuller figure.
    #[serde(rename = "paged_in_bytes")]
    pub paged_in: u64,
    #[serde(rename = "storage_read_bytes")]
    pub storage_read: u64,
    pub compute_faults: Faults,
    pub prefetch_faults: Faults,
    #[serde(rename = "wait_ms", serialize_with = "as_ms")]
    pub wait: Duration,
    #[serde(rename = "compute_ms", serialize_with = "as_ms")]
    pub compute: Duration,
    /// From the first block's start to the last block's end.
    #[serde(rename = "wall_ms", serialize_with = "as_ms")]
    pub wall: Duration,
    /// Largest VmRSS / RssFile / RssAnon seen after a block.
    #[serde(rename = "peak_rss_after_block_bytes")]
    pub peak_rss_after_block: u64,
    #[serde(rename = "peak_rss_file_bytes")]
    pub peak_rss_file: u64,
    #[serde(rename = "peak_rss_anon_bytes")]
    pub peak_rss_anon: u64,
    /// Largest f32 scratch one block widened its f16/bf16/int8 weights into.
    #[serde(rename = "peak_scratch_bytes")]
    pub peak_scratch: u64,
}

impl Totals {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a BlockRecord>) -> Totals {
        let mut t = Totals::default();
        let (mut first, mut last) = (None, Duration::ZERO);
        for r in records {
            t.blocks += 1;
            t.weight_bytes += r.weight_bytes;
            t.paged_in += r.weight_bytes.saturating_sub(r.resident_before);
            t.storage_read += r.storage_read.unwrap_or(0);
            t.compute_faults = add(t.compute_faults, r.compute_faults);
            t.prefetch_faults = add(t.prefetch_faults, r.prefetch_faults);
            t.wait += r.wait;
            t.compute += r.compute;
            first = Some(first.map_or(r.start, |f: Duration| f.min(r.start)));
            last = last.max(r.end);
            t.peak_rss_after_block = t.peak_rss_after_block.max(r.mem_after.vm_rss);
            t.peak_rss_file = t.peak_rss_file.max(r.mem_after.rss_file);
            t.peak_rss_anon = t.peak_rss_anon.max(r.mem_after.rss_anon);
            t.peak_scratch = t.peak_scratch.max(r.scratch_bytes);
        }
        t.wall = last.saturating_sub(first.unwrap_or_default());
        t
    }

    pub fn major_faults(&self) -> u64 {
        self.compute_faults.major + self.prefetch_faults.major
    }

    pub fn minor_faults(&self) -> u64 {
        self.compute_faults.minor + self.prefetch_faults.minor
    }

    /// Bytes paged in per second of wall time, in MiB/s.
    pub fn paged_in_rate(&self) -> f64 {
        let s = self.wall.as_secs_f64();
        if s > 0.0 {
            self.paged_in as f64 / MIB / s
        } else {
            0.0
        }
    }

    /// Share of the compute thread's time spent computing rather than waiting for pages.
    pub fn compute_share(&self) -> f64 {
        let busy = (self.wait + self.compute).as_secs_f64();
        if busy > 0.0 {
            self.compute.as_secs_f64() / busy
        } else {
            1.0
        }
    }
}

fn add(a: Faults, b: Faults) -> Faults {
    Faults {
        minor: a.minor + b.minor,
        major: a.major + b.major,
    }
}

/// Totals of one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelTotals {
    pub model: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// A whole profile: every block record, totals per model and overall, and the process's peak RSS.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub blocks: Vec<BlockRecord>,
    pub models: Vec<ModelTotals>,
    pub totals: Totals,
    /// The process's peak RSS: VmHWM at the end (which includes moments inside a block), or the largest
    /// VmRSS seen after a block if that is higher (the kernel updates VmHWM lazily).
    #[serde(rename = "peak_rss_bytes")]
    pub peak_rss: u64,
    /// The kernels that ran ([`kernels`](crate::ops::kernels)): the portable ones under
    /// `WSTREAM_KERNELS=portable`.
    pub kernels: String,
}

impl Profile {
    pub fn new(blocks: Vec<BlockRecord>, vm_hwm: u64) -> Profile {
        let mut names: Vec<&str> = Vec::new();
        for r in &blocks {
            if !names.contains(&r.model.as_str()) {
                names.push(&r.model);
            }
        }
        let models = names
            .iter()
            .map(|&m| ModelTotals {
                model: m.to_string(),
                totals: Totals::of(blocks.iter().filter(|r| r.model == m)),
            })
            .collect();
        let totals = Totals::of(&blocks);
        Profile {
            peak_rss: vm_hwm.max(totals.peak_rss_after_block),
            totals,
            models,
            blocks,
            kernels: crate::ops::kernels(),
        }
    }

    /// One line per block, a totals line per model and overall; fits 100 columns.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let header = format!(
            "{:<26} {:>7} {:>6} {:>13} {:>8} {:>8} {:>8} {:>7} {:>6}",
            "block",
            "MiB",
            "cached",
            "major c/p",
            "read MiB",
            "wait ms",
            "comp ms",
            "RSS MiB",
            "file"
        );
        let mib = |b: u64| b as f64 / MIB;
        for m in &self.models {
            let _ = writeln!(s, "{}", m.model);
            let _ = writeln!(s, "{header}");
            let batches = self.blocks.last().map_or(0, |r| r.batch + 1);
            let mut batch = None;
            for r in self.blocks.iter().filter(|r| r.model == m.model) {
                // Each batch runs every block again: a line says which inputs the next rows are for.
                if batches > 1 && batch != Some(r.batch) {
                    batch = Some(r.batch);
                    let _ = writeln!(
                        s,
                        "batch {} of {batches}: {}",
                        r.batch + 1,
                        match r.inputs {
                            1 => format!("input {}", r.first_input + 1),
                            n => format!("inputs {}-{}", r.first_input + 1, r.first_input + n),
                        }
                    );
                }
                let cached = if r.weight_bytes > 0 {
                    100.0 * r.resident_before.min(r.weight_bytes) as f64 / r.weight_bytes as f64
                } else {
                    100.0
                };
                let _ = writeln!(
                    s,
                    "{:<26} {:>7.1} {:>5.0}% {:>13} {:>8.1} {:>8.1} {:>8.1} {:>7.1} {:>6.1}",
                    clip(&r.block, 26),
                    mib(r.weight_bytes),
                    cached,
                    format!("{}/{}", r.compute_faults.major, r.prefetch_faults.major),
                    mib(r.storage_read.unwrap_or(0)),
                    r.wait.as_secs_f64() * 1e3,
                    r.compute.as_secs_f64() * 1e3,
                    mib(r.mem_after.vm_rss),
                    mib(r.mem_after.rss_file),
                );
            }
            // With one model its total is the overall total: printed once, below.
            if self.models.len() > 1 {
                let _ = writeln!(
                    s,
                    "{}",
                    totals_line(&format!("total {}", m.model), &m.totals)
                );
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "{}", totals_line("total", &self.totals));
        let _ = writeln!(
            s,
            "peak RSS (VmHWM) {:.1} MiB; after blocks: RssFile <= {:.1} MiB, RssAnon <= {:.1} MiB",
            mib(self.peak_rss),
            mib(self.totals.peak_rss_file),
            mib(self.totals.peak_rss_anon)
        );
        if self.totals.peak_scratch > 0 {
            let _ = writeln!(
                s,
                "widening scratch (f16/bf16/int8 weights to f32) <= {:.1} MiB per block",
                mib(self.totals.peak_scratch)
            );
        }
        let _ = writeln!(s, "kernels: {}", self.kernels);
        s.push_str(TABLE_FOOTER);
        s
    }

    /// One CSV row per block and batch, with a header; times are since the run began.
    pub fn csv(&self) -> String {
        let mut s = String::from(
            "model,block,batch,first_input,inputs,weight_bytes,resident_before_bytes,compute_minor_faults,\
             compute_major_faults,prefetch_minor_faults,prefetch_major_faults,storage_read_bytes,wait_ms,\
             compute_ms,start_ms,end_ms,vm_rss_bytes,rss_file_bytes,rss_anon_bytes,released_unmapped_bytes,\
             released_dropped_from_cache_bytes,scratch_bytes\n",
        );
        for r in &self.blocks {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{},{},{},{},{},{}",
                csv_field(&r.model),
                csv_field(&r.block),
                r.batch,
                r.first_input,
                r.inputs,
                r.weight_bytes,
                r.resident_before,
                r.compute_faults.minor,
                r.compute_faults.major,
                r.prefetch_faults.minor,
                r.prefetch_faults.major,
                r.storage_read.map_or(String::new(), |v| v.to_string()),
                r.wait.as_secs_f64() * 1e3,
                r.compute.as_secs_f64() * 1e3,
                r.start.as_secs_f64() * 1e3,
                r.end.as_secs_f64() * 1e3,
                r.mem_after.vm_rss,
                r.mem_after.rss_file,
                r.mem_after.rss_anon,
                r.released.unmapped,
                r.released.dropped_from_cache,
                r.scratch_bytes,
            );
        }
        s
    }

    /// A timeline: one lane per model with its blocks along time (the wait for pages shaded), major faults
    /// marked; below, RSS, the weight pages mapped (RssFile) and anonymous memory after each block. Written
    /// through a temporary renamed over `path` (see [`crate::output`]); a caller checks `path` first with
    /// [`crate::output::check`].
    pub fn svg(&self, path: &Path) -> Result<(), String> {
        let err = |e: &dyn std::fmt::Display| {
            format!("{}: cannot draw the timeline: {e}", path.display())
        };
        let mut drawing = String::new();
        self.draw(&mut drawing).map_err(|e| err(&e))?;
        crate::output::write_atomic(path, drawing.as_bytes()).map_err(|e| e.to_string())
    }

    /// Draws the timeline into `svg`; drawn in memory, it reaches the file whole or not at all.
    fn draw(&self, svg: &mut String) -> Result<(), String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let lanes = self.models.len().max(1);
        // Room above the lanes (60 px each) for the legend: a 22 px row per model, the head, the wait
        // shading and the fault marker, so it covers no block.
        let legend = 22 * (lanes as u32 + 3) + 10;
        let height = 200 + 60 * lanes as u32 + legend + 260;
        let root = SVGBackend::with_string(svg, (1000, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (top, bottom) = root.split_vertically(120 + 60 * lanes as u32 + legend);
        let end = self
            .blocks
            .iter()
            .map(|r| r.end.as_secs_f64())
            .fold(0.0, f64::max)
            .max(1e-3);
        let names: Vec<String> = self.models.iter().map(|m| m.model.clone()).collect();

        let mut lanes_chart = ChartBuilder::on(&top)
            .caption(
                format!(
                    "wstream profile: {} blocks, {:.0} MiB read from storage, {} major faults, peak RSS {:.0} MiB",
                    self.totals.blocks,
                    self.totals.storage_read as f64 / MIB,
                    self.totals.major_faults(),
                    self.peak_rss as f64 / MIB
                ),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(230)
            .build_cartesian_2d(0.0..end, 0.0..lanes as f64 + f64::from(legend) / 60.0)
            .map_err(|e| err(&e))?;
        lanes_chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("time (s)")
            .y_labels(lanes * 2 + 1)
            .y_label_formatter(&|y| {
                let lane = (*y - 0.5).round();
                if (y - 0.5 - lane).abs() < 1e-6 && lane >= 0.0 {
                    names.get(lane as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(|e| err(&e))?;
        // A colour per model, its blocks alternating with a lighter shade so neighbours stay apart; the
        // head in its own colour, whichever block number it has.
        let palette = [
            RGBColor(66, 133, 244),
            RGBColor(52, 168, 83),
            RGBColor(142, 36, 170),
            RGBColor(0, 137, 123),
        ];
        let model_colour = |lane: usize| palette[lane % palette.len()];
        let wait_colour = RGBColor(200, 200, 200);
        for (i, r) in self.blocks.iter().enumerate() {
            let lane = names.iter().position(|m| *m == r.model).unwrap_or(0);
            let (start, compute_start, stop) = (
                r.start.as_secs_f64(),
                (r.start + r.wait).as_secs_f64(),
                r.end.as_secs_f64(),
            );
            let colour = if r.block == "head" {
                HEAD_COLOUR
            } else if i % 2 == 0 {
                model_colour(lane)
            } else {
                lighter(model_colour(lane))
            };
            let lane = lane as f64;
            lanes_chart
                .draw_series([
                    Rectangle::new(
                        [(start, lane + 0.15), (compute_start, lane + 0.85)],
                        wait_colour.filled(),
                    ),
                    Rectangle::new(
                        [(compute_start, lane + 0.15), (stop, lane + 0.85)],
                        colour.filled(),
                    ),
                ])
                .map_err(|e| err(&e))?;
            let major = r.compute_faults.major + r.prefetch_faults.major;
            if major > 0 {
                lanes_chart
                    .draw_series([TriangleMarker::new(
                        ((start + stop) / 2.0, lane + 0.95),
                        5,
                        RED.filled(),
                    )])
                    .map_err(|e| err(&e))?;
            }
        }
        // The legend: every entry, whether or not this run has it (a warm run has no major faults).
        let mut keys: Vec<(String, RGBColor)> = names
            .iter()
            .enumerate()
            .map(|(lane, m)| (m.clone(), model_colour(lane)))
            .collect();
        keys.push(("head block".into(), HEAD_COLOUR));
        keys.push(("waiting for pages".into(), wait_colour));
        for (label, colour) in keys {
            lanes_chart
                .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
                .map_err(|e| err(&e))?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 15, y + 5)], colour.filled())
                });
        }
        lanes_chart
            .draw_series(std::iter::empty::<TriangleMarker<(f64, f64), i32>>())
            .map_err(|e| err(&e))?
            .label("major page faults")
            .legend(|(x, y)| TriangleMarker::new((x + 7, y), 5, RED.filled()));
        lanes_chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(&e))?;

        let peak = self
            .blocks
            .iter()
            .map(|r| r.mem_after.vm_rss)
            .max()
            .unwrap_or(0)
            .max(self.peak_rss);
        let mut mem = ChartBuilder::on(&bottom)
            .caption("memory after each block (MiB)", ("sans-serif", 14))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(230)
            .build_cartesian_2d(0.0..end, 0.0..(peak as f64 / MIB * 1.1).max(1.0))
            .map_err(|e| err(&e))?;
        mem.configure_mesh()
            .x_desc("time (s)")
            .draw()
            .map_err(|e| err(&e))?;
        let series: [(&str, RGBColor, Reading); 3] = [
            ("RSS (VmRSS)", RGBColor(0, 0, 0), |r| r.mem_after.vm_rss),
            ("weights mapped (RssFile)", RGBColor(66, 133, 244), |r| {
                r.mem_after.rss_file
            }),
            ("anonymous (RssAnon)", RGBColor(234, 67, 53), |r| {
                r.mem_after.rss_anon
            }),
        ];
        for (label, colour, get) in series {
            mem.draw_series(LineSeries::new(
                self.blocks
                    .iter()
                    .map(|r| (r.end.as_secs_f64(), get(r) as f64 / MIB)),
                colour.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        mem.configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}

/// What the table's columns and totals mean; each line under 100 columns.
const TABLE_FOOTER: &str = "\
cached: share of the block's weights in the page cache when it was scheduled for prefetch (mincore)
major c/p: major page faults (a page read from storage) on the compute / prefetch thread
read MiB, read from storage: bytes the kernel read from storage for the block (/proc/thread-self/io)
paged in: weights not in the page cache when their block was scheduled; read-ahead for earlier
    blocks can bring them in first, so on a cold run \"read from storage\" is the fuller figure
wait / comp ms: the compute thread waiting for the block's pages / computing; RSS, file: VmRSS and
    RssFile (weights mapped) after the block
";

/// The head block's colour in the timeline, apart from every model's.
const HEAD_COLOUR: RGBColor = RGBColor(251, 140, 0);

fn lighter(c: RGBColor) -> RGBColor {
    let half = |v: u8| ((u16::from(v) + 255) / 2) as u8;
    RGBColor(half(c.0), half(c.1), half(c.2))
}

/// Picks one memory reading from a block record.
type Reading = fn(&BlockRecord) -> u64;

/// Three lines of totals, each under 100 columns for model names of usual length.
fn totals_line(title: &str, t: &Totals) -> String {
    format!(
        "{title}: {:.1} MiB of weights\n    paged in {:.1} MiB at {:.0} MiB/s, read from storage {:.1} MiB; \
         faults {} major / {} minor\n    compute {:.0}% (waiting for pages {:.0}%) of {:.0} ms",
        t.weight_bytes as f64 / MIB,
        t.paged_in as f64 / MIB,
        t.paged_in_rate(),
        t.storage_read as f64 / MIB,
        t.major_faults(),
        t.minor_faults(),
        100.0 * t.compute_share(),
        100.0 * (1.0 - t.compute_share()),
        t.wall.as_secs_f64() * 1e3,
    )
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(n - 1).collect();
        c.push('~');
        c
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
