//! `wstream classify`: top-K classes per model and for the ensemble, as text or JSON lines.

use std::path::PathBuf;

use anyhow::{bail, Result};
use wstream::classify::{self, Ranked};
use wstream::exec::{self, BlockRecord};
use wstream::models::Model;
use wstream::pipeline::{default_memory, read_inputs, Answer, Options, Pipeline};
use wstream::process::MemReading;
use wstream::profile::Totals;

use super::{human_bytes, out, parse_bytes, printable};

/// The models `classify` and `demo` use when no `--model` is given: timm's Hugging Face layout under weights/.
pub const DEFAULT_MODELS: [&str; 3] = [
    "weights/vit_large_patch16_224",
    "weights/convnext_large",
    "weights/swin_large_patch4_window7_224",
];

#[derive(clap::Args)]
pub struct Args {
    /// A model folder in timm's Hugging Face layout, or a .safetensors file. Repeat for an ensemble.
    /// Default: the three Large models under weights/ (see weights/README.md).
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Print one JSON object per input per line.
    #[arg(long)]
    json: bool,
    /// Include the raw logits in the JSON output.
    #[arg(long, requires = "json")]
    logits: bool,
    /// How many classes to list.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    top: u64,
    #[command(flatten)]
    run: RunArgs,
    /// Print peak memory, faults and bytes paged in to stderr at the end.
    #[arg(long)]
    memory_report: bool,
    /// Images (JPEG, PNG, WebP, BMP, TIFF, GIF), folders of them (sorted), or preprocessed .npy f32
    /// arrays [3, H, W] / [N, 3, H, W].
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

/// How models are run: shared by `classify`, `demo` and `profile`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Compute threads (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: Option<u64>,
    /// How the models of an ensemble are combined.
    #[arg(long, value_enum, default_value_t = Ensemble::MeanProb)]
    pub ensemble: Ensemble,
    /// Most weight bytes resident at once (suffixes K, M, G; default twice the largest block, at most
    /// 160M); the prefetch look-ahead grows to fit it.
    #[arg(long, value_parser = parse_bytes)]
    pub budget: Option<u64>,
    /// After a block ran: `rss` unmaps its pages (page cache stays warm), `cache` also drops them from the cache.
    #[arg(long, value_enum, default_value_t = Evict::Rss)]
    pub evict: Evict,
    /// Inputs run through each block together, so each block's weights are paged in once per batch.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub batch: u64,
    /// Most bytes the run's peak RSS may reach (suffixes K, M, G; default 7/8 of the cgroup's memory
    /// limit, else 1G): batches are split to stay under it, and a limit below what one input needs is
    /// refused.
    #[arg(long, value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// Most pixels an image may have, checked before decoding (default 89478485, Pillow's
    /// decompression-bomb limit).
    #[arg(long, default_value_t = wstream::preprocess::MAX_PIXELS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pixels: u64,
}

/// How an ensemble's models are combined, as the flag spells it.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Ensemble {
    /// The mean of the models' softmax probabilities.
    MeanProb,
    /// The softmax of the mean of the models' logits.
    MeanLogit,
}

/// What happens to a block's pages after it ran, as the flag spells it.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Evict {
    /// Unmap them from the process; the page cache keeps them warm for the next run.
    Rss,
    /// Also drop them from the page cache, for boxes where the cache itself must stay small.
    Cache,
}

impl RunArgs {
    /// Loads the models into a pipeline run with these flags; its warnings go to stderr, and so does a
    /// note when the batch is split to fit the memory limit.
    pub fn pipeline(
        &self,
        paths: &[impl AsRef<std::path::Path>],
        top: usize,
        logits: bool,
    ) -> wstream::Result<Pipeline> {
        let pipeline = Pipeline::load(paths, self.options(top, logits))?
            .with_warnings(|w| eprintln!("warning: {}", printable(&w.to_string())));
        if pipeline.batch() < self.batch as usize {
            let limit = self.memory.unwrap_or_else(|| default_memory().0);
            eprintln!(
                "note: --batch {} runs as batches of {} to keep peak memory under {} (raise it with --memory)",
                self.batch,
                pipeline.batch(),
                human_bytes(limit)
            );
        }
        Ok(pipeline)
    }

    /// The pipeline's options for these flags, ranking `top` classes, with logits or without.
    pub fn options(&self, top: usize, logits: bool) -> Options {
        Options {
            budget: self.budget,
            evict: match self.evict {
                Evict::Rss => exec::Evict::Rss,
                Evict::Cache => exec::Evict::Cache,
            },
            batch: self.batch as usize,
            ensemble: match self.ensemble {
                Ensemble::MeanProb => classify::Ensemble::MeanProb,
                Ensemble::MeanLogit => classify::Ensemble::MeanLogit,
            },
            top,
            logits,
            memory: self.memory,
            max_pixels: self.max_pixels,
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    super::set_threads(args.run.threads)?;
    let paths: Vec<PathBuf> = if args.models.is_empty() {
        DEFAULT_MODELS.iter().map(PathBuf::from).collect()
    } else {
        args.models.clone()
    };
    if args.models.is_empty() {
        if let Some(missing) = paths.iter().find(|p| !p.exists()) {
            bail!(
                "{}: default model not found; run `wstream demo` (it synthesises missing models) or see weights/README.md",
                missing.display()
            );
        }
    }
    let pipeline = args.run.pipeline(&paths, args.top as usize, args.logits)?;
    let items = read_inputs(&args.inputs)?;
    let show_progress = !args.json && items.len() > 1;
    let bar = if show_progress {
        indicatif::ProgressBar::new(items.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let ensemble = pipeline.models().len() > 1;
    let records = pipeline.run(&items, |answer| -> Result<()> {
        let text = if args.json {
            serde_json::to_string(&answer)?
        } else {
            format_answer(&answer, ensemble)
        };
        bar.suspend(|| out(text))?;
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    if args.memory_report {
        eprint!("{}", memory_report(pipeline.models(), &records));
    }
    Ok(())
}

/// Peak memory, faults and paging over a run, as the demo and `--memory-report` print it.
pub fn memory_report(models: &[Model], records: &[BlockRecord]) -> String {
    let t = Totals::of(records);
    let weights: u64 = models.iter().map(|m| m.store.total_bytes()).sum();
    format!(
        "memory: peak RSS (VmHWM) {}; after blocks, peak RssFile {} and RssAnon {}\n\
         weights: {} in {} model(s), mapped read-only; {} paged in from outside the page cache, {} read from storage\n\
         faults: {} major, {} minor\n",
        human_bytes(MemReading::now().vm_hwm.max(t.peak_rss_after_block)),
        human_bytes(t.peak_rss_file),
        human_bytes(t.peak_rss_anon),
        human_bytes(weights),
        models.len(),
        human_bytes(t.paged_in),
        human_bytes(t.storage_read),
        t.major_faults(),
        t.minor_faults(),
    )
}

/// An answer as text: its ranked classes per model, and for the ensemble when there are several models.
pub fn format_answer(a: &Answer, ensemble: bool) -> String {
    use std::fmt::Write;
    let mut s = format!("{} ({:.1} ms)\n", printable(&a.input), a.elapsed_ms);
    let mut top = |title: &str, ranked: &[Ranked]| {
        let _ = writeln!(s, "  {}", printable(title));
        for r in ranked {
            let _ = writeln!(
                s,
                "    {:>6.2}%  {:>4}  {}",
                r.prob * 100.0,
                r.class,
                printable(&r.label)
            );
        }
    };
    for m in &a.models {
        top(&m.name, &m.top);
    }
    if ensemble {
        top("ensemble", &a.ensemble.top);
    }
    s.pop();
    s
}
