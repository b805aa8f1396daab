//! `wstream classify`: top-K classes per model and for the ensemble, as text or JSON lines.

use std::path::PathBuf;

use anyhow::{bail, Result};
use wstream::classify::{self, Ranked};
use wstream::exec::{self, BlockRecord};
use wstream::models::Model;
use wstream::pipeline::{default_memory, read_inputs, Answer, Options, Pipeline};
use wstream::process::MemReading;
use wstream::profile::Totals;
use wstream::transform::Overrides;

use super::{human_bytes, out, parse_bytes, printable};

/// The models `classify` and `demo` use when no `--model` is given: timm's Hugging Face layout under weights/.
pub const DEFAULT_MODELS: [&str; 3] = [
    "weights/vit_large_patch16_224",
    "weights/convnext_large",
    "weights/swin_large_patch4_window7_224",
];

/// Run from the repository's root, every example works on the bundled fixtures (tests/help.rs runs them).
const EXAMPLES: &str = "\
Examples (from the repository's root):
  wstream classify --model tests/fixtures/convnext_tiny tests/data/cat.jpg
  wstream classify --json --top 3 --model tests/fixtures/vit_tiny --model tests/fixtures/swin_tiny tests/data
  wstream classify --verbose --use-train-size --crop-pct 0.95 --model tests/fixtures/convnext_tiny tests/data/coffee.png
  wstream classify --img-size 96 --interpolation bilinear --crop-mode squash --mean 0.5 --std 0.5 --model tests/fixtures/convnext_tiny tests/data/cat.jpg
  wstream classify --label-type name --top 1 --model tests/fixtures/vit_tiny tests/data/cat_grey.png
  wstream classify --json --logits --model tests/fixtures/vit_tiny tests/fixtures/vit_tiny/reference/cat.input.npy";

#[derive(clap::Args)]
#[command(after_help = EXAMPLES)]
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
    /// JPEG/PNG images, folders of them (sorted), or preprocessed .npy f32 arrays [3, H, W] / [N, 3, H, W].
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
    /// What a class's label says: its `name` (ImageNet-1k: the synset), its `description` (ImageNet-1k:
    /// "tabby, tabby cat"), or its `index`.
    #[arg(long, value_enum, default_value_t = LabelType::Description)]
    pub label_type: LabelType,
    /// Print each model's resolved eval transform (size, crop_pct, crop mode, interpolation, mean, std and
    /// where each came from) to stderr before running.
    #[arg(long)]
    pub verbose: bool,
    #[command(flatten)]
    pub transform: TransformArgs,
}

/// Changes to each model's eval transform, as timm's inference.py / validate.py spell them. Without them
/// each model's config.json decides, its `test_input_size` / `test_crop_pct` included.
#[derive(clap::Args)]
pub struct TransformArgs {
    /// Ignore the config's test_input_size / test_crop_pct and preprocess at the train size (what timm's
    /// inference.py always does; its validate.py uses the test size, as wstream does by default).
    #[arg(long)]
    pub use_train_size: bool,
    /// Square input of N x N pixels (ConvNeXt takes any size; ViT and Swin only the size they were
    /// trained at).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=wstream::preprocess::MAX_SIDE as u64))]
    pub img_size: Option<u64>,
    /// Fraction of the resized image the centre crop keeps: the image is resized to floor(size / crop_pct).
    #[arg(long, value_name = "F", value_parser = parse_crop_pct)]
    pub crop_pct: Option<f64>,
    /// `center`: shorter side to the resize size, centre crop; `squash`: both sides to it, aspect ratio
    /// lost; `border`: longer side to it, padded with the mean colour.
    #[arg(long, value_enum)]
    pub crop_mode: Option<CropMode>,
    /// Resampling filter of the resize (Pillow's, pixel for pixel).
    #[arg(long, value_enum)]
    pub interpolation: Option<Interpolation>,
    /// Per-channel mean to normalise with: one value for all channels or three, comma-separated
    /// (0.5 or 0.485,0.456,0.406).
    #[arg(long, value_name = "M[,M,M]", value_parser = parse_stat)]
    pub mean: Option<Stat>,
    /// Per-channel standard deviation, like --mean.
    #[arg(long, value_name = "S[,S,S]", value_parser = parse_stat)]
    pub std: Option<Stat>,
}

/// Three per-channel values.
#[derive(Clone, Copy)]
pub struct Stat([f32; 3]);

fn parse_stat(s: &str) -> Result<Stat, String> {
    let values: Vec<f32> = s
        .split(',')
        .map(|v| v.trim().parse::<f32>().ok().filter(|v| v.is_finite()))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("`{s}` is not one number or three comma-separated numbers"))?;
    match values[..] {
        [v] => Ok(Stat([v; 3])),
        [r, g, b] => Ok(Stat([r, g, b])),
        _ => Err(format!(
            "`{s}` has {} values; give one (all channels) or three (R,G,B)",
            values.len()
        )),
    }
}

fn parse_crop_pct(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number such as 0.875")),
    }
}

/// timm's crop modes, as the flag spells them.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum CropMode {
    Center,
    Squash,
    Border,
}

/// The resize filters, as the flag spells them.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Interpolation {
    Bicubic,
    Bilinear,
    Lanczos,
}

/// What labels say, as the flag spells it.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LabelType {
    Name,
    Description,
    Index,
}

impl TransformArgs {
    fn overrides(&self) -> Overrides {
        use wstream::preprocess as pre;
        Overrides {
            use_train_size: self.use_train_size,
            img_size: self.img_size.map(|n| n as usize),
            crop_pct: self.crop_pct,
            crop_mode: self.crop_mode.map(|m| match m {
                CropMode::Center => pre::CropMode::Center,
                CropMode::Squash => pre::CropMode::Squash,
                CropMode::Border => pre::CropMode::Border,
            }),
            interpolation: self.interpolation.map(|f| match f {
                Interpolation::Bicubic => pre::Filter::Bicubic,
                Interpolation::Bilinear => pre::Filter::Bilinear,
                Interpolation::Lanczos => pre::Filter::Lanczos,
            }),
            mean: self.mean.map(|s| s.0),
            std: self.std.map(|s| s.0),
        }
    }
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
        for (m, t) in pipeline.models().iter().zip(pipeline.transforms()) {
            if m.config.source.is_none() {
                eprintln!(
                    "warning: {}: no config.json beside it (nor one in its metadata); assuming timm's \
                     defaults for {} ({}x{}, crop_pct {}, {}, mean {:?}, std {:?}){}",
                    printable(&m.store.path().display().to_string()),
                    printable(&m.name),
                    t.input_size[1],
                    t.input_size[2],
                    t.crop_pct,
                    t.interpolation.name(),
                    t.mean,
                    t.std,
                    if m.num_classes == 1000 {
                        " and ImageNet-1k labels"
                    } else {
                        ""
                    }
                );
            }
            if self.verbose {
                eprintln!(
                    "{} preprocessing:\n  {}",
                    printable(&m.name),
                    t.to_string().replace('\n', "\n  ")
                );
            }
        }
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
            transform: self.transform.overrides(),
            label_type: match self.label_type {
                LabelType::Name => classify::LabelType::Name,
                LabelType::Description => classify::LabelType::Description,
                LabelType::Index => classify::LabelType::Index,
            },
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
