//! `wstream classify`: top-K classes per model and for the ensemble, as text or JSON lines.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use wstream::classify::{self, Ranked};
use wstream::exec::{self, BlockRecord};
use wstream::inputs::{self, Shard, SkipReason};
use wstream::models::Model;
use wstream::pipeline::{default_memory, file_items, Answer, Item, Options, Output, Pipeline};
use wstream::process::MemReading;
use wstream::profile::Totals;
use wstream::records::{Record, RecordWriter};
use wstream::transform::Overrides;

use super::{exit_with, human_bytes, out, parse_bytes, printable, EXIT_PARTIAL, EXIT_RETRYABLE};

/// The models `classify` and `demo` use when no `--model` is given: folders in timm's Hugging Face layout
/// under [`wstream::hub::default_weights_dir`].
pub const DEFAULT_MODELS: [&str; 3] = [
    "vit_large_patch16_224",
    "convnext_large",
    "swin_large_patch4_window7_224",
];

/// The default models' folders, saying on stderr where they are looked up.
pub fn default_model_paths() -> Vec<PathBuf> {
    let (dir, whence) = wstream::hub::default_weights_dir();
    super::note(format_args!(
        "default models from {} ({whence})",
        printable(&dir.display().to_string())
    ));
    DEFAULT_MODELS.iter().map(|m| dir.join(m)).collect()
}

/// The models `--model` names: paths, or hub ids found in the local Hugging Face cache (a note on stderr
/// says where each of those was found).
pub fn locate_models(given: &[PathBuf]) -> wstream::Result<Vec<PathBuf>> {
    given
        .iter()
        .map(|spec| {
            let located = wstream::hub::locate(spec)?;
            if let Some(found) = &located.found {
                super::note(printable(found));
            }
            Ok(located.path)
        })
        .collect()
}
/// Run from the repository's root, every example works on the bundled fixtures (tests/suite/help.rs runs them).
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
    /// A model folder in timm's Hugging Face layout, a .safetensors file, or a hub id in the local Hugging
    /// Face cache (timm/NAME, hf-hub:timm/NAME, NAME@REVISION; never downloaded). Repeat for an ensemble.
    /// Default: the three Large models under $WSTREAM_WEIGHTS, else the source tree's weights/ (see
    /// weights/README.md).
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Print one JSON object per input per line.
    #[arg(long)]
    json: bool,
    /// Include the raw logits in the JSON output.
    #[arg(long, requires = "json")]
    logits: bool,
    /// What each model answers: `prob` its top classes with probabilities, `logit` with their raw logits
    /// too, `features` the pooled pre-logits embedding (timm's forward_head(x, pre_logits=True); the
    /// classifier is skipped and there is no ensemble answer).
    #[arg(long, value_enum, default_value_t = OutputType::Prob)]
    output_type: OutputType,
    /// How many classes to list.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    top: u64,
    #[command(flatten)]
    run: RunArgs,
    /// Print peak memory, faults and bytes paged in to stderr at the end.
    #[arg(long)]
    memory_report: bool,
    /// Write the records to FILE instead of stdout, in the format its extension names: .jsonl (one JSON
    /// object per line), .csv (timm inference.py's columns) or .json (one array, written at the end).
    /// .jsonl and .csv are appended batch by batch, so a killed run leaves complete records only.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Continue the --output file of an earlier run with the same models and options: inputs it holds are
    /// skipped, no record is written twice. A missing file is started.
    #[arg(long, requires = "output")]
    resume: bool,
    /// An input that cannot be classified gets an {"input", "error"} record and the run goes on; at the
    /// end a summary goes to stderr and the exit status is 65 if any input failed.
    #[arg(long)]
    skip_errors: bool,
    /// Also classify the paths listed in FILE, one per line (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    files_from: Option<PathBuf>,
    /// Classify only shard K of N (0-based): the inputs at positions K, K+N, K+2N... of the walk's order.
    /// Default: from JOB_COMPLETION_INDEX (Kubernetes), SLURM_ARRAY_TASK_ID or AWS_BATCH_JOB_ARRAY_INDEX.
    #[arg(long, value_name = "K/N", value_parser = parse_shard)]
    shard: Option<Shard>,
    /// The number of shards where the scheduler sets only an index (Kubernetes, AWS Batch); also
    /// WSTREAM_SHARD_COUNT.
    #[arg(long, value_name = "N", conflicts_with = "shard", value_parser = clap::value_parser!(u64).range(1..))]
    shard_count: Option<u64>,
    /// No progress line and no notes on stderr (warnings and errors still go there).
    #[arg(long, short)]
    quiet: bool,
    /// Images (JPEG, PNG, WebP, BMP, TIFF, GIF), folders walked recursively for them in natural order, or
    /// preprocessed .npy f32 arrays [3, H, W] / [N, 3, H, W].
    #[arg(required_unless_present = "files_from")]
    inputs: Vec<PathBuf>,
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    s.parse()
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
    /// `on`: int8 weights are multiplied in int8, each activation row quantized on the fly (W8A8, where the
    /// CPU has AVX512-VNNI); `off`: they are widened to f32 (weight-only, the path before W8A8).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub int8_activations: OnOff,
    /// Print each model's resolved eval transform (size, crop_pct, crop mode, interpolation, mean, std and
    /// where each came from) and the kernels that run (see WSTREAM_KERNELS) to stderr before running.
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
    Nearest,
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
                Interpolation::Nearest => pre::Filter::Nearest,
            }),
            mean: self.mean.map(|s| s.0),
            std: self.std.map(|s| s.0),
        }
    }
}

/// What each model answers, as the flag spells it.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputType {
    Prob,
    Logit,
    Features,
}

/// How an ensemble's models are combined, as the flag spells it.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Ensemble {
    /// The mean of the models' softmax probabilities.
    MeanProb,
    /// The softmax of the mean of the models' logits.
    MeanLogit,
}

/// A switch, as a flag's value.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
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
        self.pipeline_with(paths, self.options(top, logits))
    }

    /// [`RunArgs::pipeline`] with `options` as given. Notes on stderr name each model whose weights are
    /// synthetic, and the path of each model whose name had to be made distinct.
    pub fn pipeline_with(
        &self,
        paths: &[impl AsRef<std::path::Path>],
        options: Options,
    ) -> wstream::Result<Pipeline> {
        let pipeline = Pipeline::load(paths, options)?
            .with_warnings(|w| eprintln!("warning: {}", printable(&w.to_string())));
        for (m, t) in pipeline.models().iter().zip(pipeline.transforms()) {
            if m.synthetic {
                super::note(format_args!(
                    "{} ({}) holds synthetic weights (random values, written by `wstream synth`): \
                     its classes mean nothing",
                    printable(&m.name),
                    printable(&m.store.path().display().to_string())
                ));
            }
            if m.name.ends_with(']') {
                super::note(format_args!(
                    "{} is {}",
                    printable(&m.name),
                    printable(&m.store.path().display().to_string())
                ));
            }
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
        if self.verbose {
            eprintln!("kernels: {}", wstream::ops::kernels());
        }
        if pipeline.batch() < self.batch as usize {
            let limit = self.memory.unwrap_or_else(|| default_memory().0);
            super::note(format_args!(
                "--batch {} runs as batches of {} to keep peak memory under {} (raise it with --memory)",
                self.batch,
                pipeline.batch(),
                human_bytes(limit)
            ));
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
            output: wstream::pipeline::Output::Prob,
            transform: self.transform.overrides(),
            label_type: match self.label_type {
                LabelType::Name => classify::LabelType::Name,
                LabelType::Description => classify::LabelType::Description,
                LabelType::Index => classify::LabelType::Index,
            },
            int8_activations: self.int8_activations == OnOff::On,
            readings: true,
        }
    }
}

/// Errors that running again later can cure: weights missing or unreadable (a volume not mounted yet),
/// changed or truncated under the run, a result file that could not be written (a full disk).
fn retryable(e: wstream::Error) -> anyhow::Error {
    use wstream::Error as E;
    match e {
        E::NotFound { .. }
        | E::Io { .. }
        | E::MissingShard { .. }
        | E::FileChanged { .. }
        | E::Hub(_) => exit_with(EXIT_RETRYABLE, e),
        e => e.into(),
    }
}

fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    exit_with(2, anyhow::anyhow!("{e}"))
}

pub fn run(args: Args) -> Result<()> {
    super::set_quiet(args.quiet);
    super::set_threads(args.run.threads)?;
    let paths: Vec<PathBuf> = if args.models.is_empty() {
        default_model_paths()
    } else {
        locate_models(&args.models).map_err(retryable)?
    };
    if args.models.is_empty() {
        if let Some(missing) = paths.iter().find(|p| !p.exists()) {
            return Err(exit_with(
                EXIT_RETRYABLE,
                anyhow::anyhow!(
                    "{}: default model not found; run `wstream demo` (it synthesises missing models), \
                     set WSTREAM_WEIGHTS to a folder holding them, or see weights/README.md",
                    printable(&missing.display().to_string())
                ),
            ));
        }
    }
    if args.logits && args.output_type == OutputType::Features {
        bail!("--logits and --output-type features exclude each other: the classifier is not run");
    }
    let csv = args
        .output
        .as_ref()
        .and_then(|p| p.extension())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if csv && args.output_type == OutputType::Features {
        return Err(usage(
            "--output-type features needs a .jsonl or .json --output: a CSV's columns are classes",
        ));
    }
    let options = Options {
        output: match args.output_type {
            OutputType::Prob => Output::Prob,
            OutputType::Logit => Output::Logit,
            OutputType::Features => Output::Features,
        },
        // Only the memory report shows what these readings give.
        readings: args.memory_report,
        ..args.run.options(args.top as usize, args.logits)
    };
    let note = |msg: String| {
        super::note(printable(&msg));
    };
    let files = input_files(&args, &note)?;
    let bar = progress_bar(&files);
    let block_bar = bar.clone();
    let single = files.len() == 1;
    let pipeline = args
        .run
        .pipeline_with(&paths, options)
        .map_err(retryable)?
        .with_block_progress(move || {
            if single {
                block_bar.inc(1);
            }
        });
    if single {
        bar.set_length(pipeline.blocks() as u64);
    }
    // Drawn only now that its length is known.
    if !args.quiet && std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
    let mut writer = None;
    let mut done = HashSet::new();
    if let Some(path) = &args.output {
        let settings = settings(&pipeline);
        let (w, resumed) =
            RecordWriter::open(path, &settings, args.top as usize, args.resume, &files)?;
        if args.resume {
            note(format!(
                "resuming {}: {} inputs already recorded are skipped",
                path.display(),
                resumed.done.len()
            ));
        }
        if resumed.cut > 0 {
            note(format!(
                "{}: cut off a torn last record of {} bytes (an interrupted write); its input runs again",
                path.display(),
                resumed.cut
            ));
        }
        writer = Some(w);
        done = resumed.done;
    }
    let ensemble = pipeline.models().len() > 1;
    let mut run = Run {
        args: &args,
        pipeline: &pipeline,
        writer: writer.as_mut(),
        bar: &bar,
        ensemble,
        single,
        failed: Vec::new(),
        answered: 0,
        records: Vec::new(),
    };
    let mut pending: Vec<Item> = Vec::new();
    for path in &files {
        if done.contains(&path.display().to_string()) {
            if !single {
                bar.inc(1);
            }
            continue;
        }
        match file_items(path) {
            Ok(items) => {
                if single {
                    // One array of several images: every batch of it runs all the blocks.
                    let batches = items.len().div_ceil(pipeline.batch());
                    bar.set_length((batches * pipeline.blocks()) as u64);
                } else if items.len() > 1 {
                    bar.inc_length(items.len() as u64 - 1);
                }
                for item in items {
                    if done.contains(&item.name) {
                        if !single {
                            bar.inc(1);
                        }
                    } else {
                        pending.push(item);
                    }
                }
            }
            Err(e) if args.skip_errors => {
                run.emit(vec![Outcome::Failed(path.display().to_string(), e)])?
            }
            Err(e) => return Err(e.into()),
        }
        while pending.len() >= pipeline.batch() {
            let rest = pending.split_off(pipeline.batch());
            run.batch(std::mem::replace(&mut pending, rest))?;
        }
    }
    if !pending.is_empty() {
        run.batch(pending)?;
    }
    let (failed, answered, records) = (run.failed, run.answered, run.records);
    if let Some(w) = writer {
        w.finish().map_err(retryable)?;
    }
    bar.finish_and_clear();
    if args.memory_report {
        eprint!("{}", memory_report(pipeline.models(), &records));
    }
    if !failed.is_empty() {
        let shown: Vec<String> = failed.iter().take(3).map(|e| format!("{e:#}")).collect();
        let more = failed.len().saturating_sub(shown.len());
        return Err(exit_with(
            EXIT_PARTIAL,
            anyhow::anyhow!(
                "{} of {} inputs failed (their records hold the errors): {}{}",
                failed.len(),
                failed.len() + answered,
                shown.join("; "),
                if more > 0 {
                    format!("; and {more} more")
                } else {
                    String::new()
                }
            ),
        ));
    }
    Ok(())
}

/// The input files of a run, in order: the walk of the inputs and of `--files-from`, the skipped files
/// reported, then the shard's part of them.
fn input_files(args: &Args, note: &impl Fn(String)) -> Result<Vec<PathBuf>> {
    let mut listed = args.inputs.clone();
    if let Some(list) = &args.files_from {
        if list.as_os_str() == "-" {
            listed.extend(inputs::read_list(std::io::stdin().lock(), Path::new("-"))?);
        } else {
            let f = std::fs::File::open(list)
                .with_context(|| format!("--files-from {}", list.display()))?;
            listed.extend(inputs::read_list(std::io::BufReader::new(f), list)?);
        }
        if listed.is_empty() {
            return Err(usage(format!(
                "--files-from {} lists no path and no input was given",
                list.display()
            )));
        }
    }
    let walk = inputs::walk(&listed)?;
    if !walk.skipped.is_empty() {
        let mut reasons: Vec<SkipReason> = walk.skipped.iter().map(|s| s.1).collect();
        let mut seen = HashSet::new();
        reasons.retain(|r| seen.insert(*r));
        let parts: Vec<String> = reasons
            .iter()
            .map(|r| {
                let of: Vec<&PathBuf> = walk
                    .skipped
                    .iter()
                    .filter(|s| s.1 == *r)
                    .map(|s| &s.0)
                    .collect();
                format!("{} {} (e.g. {})", of.len(), r.describe(), of[0].display())
            })
            .collect();
        note(format!(
            "skipped {} entries found in folders: {}",
            walk.skipped.len(),
            parts.join("; ")
        ));
    }
    let shard = match args.shard {
        Some(s) => Some((s, "--shard".to_string())),
        None => {
            let count = args.shard_count.map(|c| c as usize);
            let found = Shard::from_env(count, |k| std::env::var(k).ok()).map_err(usage)?;
            if found.is_none() && count.is_some() {
                return Err(usage(
                    "--shard-count needs a shard index from JOB_COMPLETION_INDEX or \
                     AWS_BATCH_JOB_ARRAY_INDEX (or use --shard K/N)",
                ));
            }
            found
        }
    };
    let Some((shard, from)) = shard else {
        return Ok(walk.files);
    };
    let total = walk.files.len();
    let files = shard.select(walk.files);
    note(format!(
        "shard {shard} (from {from}): {} of {total} input files",
        files.len()
    ));
    Ok(files)
}

/// What changes a run's answers, recorded beside a result file so that it is resumed only by the same.
fn settings(pipeline: &Pipeline) -> serde_json::Value {
    let models: Vec<serde_json::Value> = pipeline
        .models()
        .iter()
        .map(|m| {
            let path = m.store.path();
            let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            serde_json::json!({
                "name": m.name,
                "path": path.display().to_string(),
                "weight_bytes": m.store.total_bytes(),
            })
        })
        .collect();
    let o = pipeline.options();
    serde_json::json!({
        "models": models,
        "top": o.top,
        "logits": o.logits,
        "ensemble": format!("{:?}", o.ensemble),
        "max_pixels": o.max_pixels,
        "output": format!("{:?}", o.output),
    })
}

/// The progress line, not drawn yet. It is drawn only for a person watching (stderr a terminal, no
/// --quiet): a log file or a pipe gets no carriage returns and escape codes.
fn progress_bar(files: &[PathBuf]) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(files.len() as u64),
        indicatif::ProgressDrawTarget::hidden(),
    );
    let template = if files.len() == 1 {
        "{msg} [{wide_bar}] block {pos}/{len} {elapsed}"
    } else {
        "[{wide_bar}] {pos}/{len} inputs {rate} ETA {eta}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(
            style
                .with_key(
                    "rate",
                    |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.1} img/s", s.per_sec());
                    },
                )
                .progress_chars("=> "),
        );
    }
    if let [one] = files {
        bar.set_message(printable(&one.display().to_string()).into_owned());
    }
    bar
}

/// What became of one input.
enum Outcome {
    Answer(Answer),
    /// The input's name and its error.
    Failed(String, wstream::Error),
}

/// A run in progress: where its records go and what it counted.
struct Run<'a> {
    args: &'a Args,
    pipeline: &'a Pipeline,
    writer: Option<&'a mut RecordWriter>,
    bar: &'a indicatif::ProgressBar,
    ensemble: bool,
    /// One input file: the bar counts its blocks, not inputs.
    single: bool,
    failed: Vec<wstream::Error>,
    answered: usize,
    records: Vec<BlockRecord>,
}

impl Run<'_> {
    fn batch(&mut self, items: Vec<Item>) -> Result<()> {
        let (results, records) = self.pipeline.run_batch(&items).map_err(retryable)?;
        if self.args.memory_report {
            self.records.extend(records);
        }
        let results = items
            .iter()
            .zip(results)
            .map(|(item, r)| match r {
                Ok(a) => Outcome::Answer(a),
                Err(e) => Outcome::Failed(item.name.clone(), e),
            })
            .collect();
        self.emit(results)
    }

    /// Writes a batch's records in order. Without --skip-errors the first failed input ends the run, the
    /// records before it written.
    fn emit(&mut self, results: Vec<Outcome>) -> Result<()> {
        let mut answers = Vec::new();
        let mut errors = Vec::new();
        let mut fatal = None;
        for r in results {
            match r {
                Outcome::Answer(a) => answers.push(Ok(a)),
                Outcome::Failed(_, e) if !self.args.skip_errors => {
                    fatal = Some(e);
                    break;
                }
                Outcome::Failed(input, e) => {
                    answers.push(Err(errors.len()));
                    errors.push((input, e.to_string(), e));
                }
            }
        }
        let records: Vec<Record> = answers
            .iter()
            .map(|a| match a {
                Ok(a) => Record::Answer(a),
                Err(i) => Record::Failed {
                    input: &errors[*i].0,
                    error: &errors[*i].1,
                },
            })
            .collect();
        match &mut self.writer {
            Some(w) => w.write(&records).map_err(retryable)?,
            None => {
                for r in &records {
                    let text = match r {
                        _ if self.args.json => r.to_json(),
                        Record::Answer(a) => format_answer(a, self.ensemble),
                        Record::Failed { input, error } => {
                            format!("{}\n  error: {}", printable(input), printable(error))
                        }
                    };
                    self.bar.suspend(|| out(text))?;
                }
            }
        }
        if !self.single {
            self.bar.inc(records.len() as u64);
        }
        self.answered += answers.iter().filter(|a| a.is_ok()).count();
        self.failed.extend(errors.into_iter().map(|e| e.2));
        match fatal {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
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
    let top = |s: &mut String, title: &str, ranked: &[Ranked]| {
        let _ = writeln!(s, "  {}", printable(title));
        for r in ranked {
            let logit = r
                .logit
                .map_or(String::new(), |l| format!("  logit {l:>8.4}"));
            let _ = writeln!(
                s,
                "    {:>6.2}%{logit}  {:>4}  {}",
                r.prob * 100.0,
                r.class,
                printable(&r.label)
            );
        }
    };
    for m in &a.models {
        if let Some(f) = &m.features {
            // The whole vector is for --json; text shows its size and first values to recognise it.
            let head: Vec<String> = f.iter().take(6).map(|v| format!("{v:.4}")).collect();
            let more = if f.len() > 6 { " ..." } else { "" };
            let _ = writeln!(
                s,
                "  {}\n    {} features: {}{more}",
                printable(&m.name),
                f.len(),
                head.join(" ")
            );
        } else {
            top(&mut s, &m.name, &m.top);
        }
    }
    if ensemble && !a.ensemble.is_empty() {
        top(&mut s, "ensemble", &a.ensemble.top);
    }
    s.pop();
    s
}
