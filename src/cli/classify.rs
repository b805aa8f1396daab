//! `wstream classify`: top-K classes per model and for the ensemble, as text or JSON lines.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;
use wstream::classify::{combine, labels, softmax, top_k, Ensemble, Ranked};
use wstream::exec::{BlockRecord, Evict, ExecOptions, Executor};
use wstream::models::{Act, Model};
use wstream::npy;
use wstream::preprocess::{self, Preprocess};
use wstream::process::MemReading;
use wstream::profile::Totals;

use super::{human_bytes, out, parse_bytes};

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
}

impl RunArgs {
    pub fn exec_options(&self) -> ExecOptions {
        ExecOptions {
            budget: self.budget,
            evict: self.evict,
            ..ExecOptions::default()
        }
    }
}

/// One input to classify.
pub enum Source {
    /// Already preprocessed: used as is by every model.
    Tensor { chw: Vec<f32>, shape: [usize; 3] },
    /// Decoded once per batch, then preprocessed per model as its config says.
    Image(PathBuf),
    /// An image held in memory (the demo's bundled photo).
    Decoded(image::RgbImage),
}

pub struct Item {
    pub name: String,
    pub source: Source,
}

#[derive(Serialize, Clone)]
pub struct ModelAnswer {
    pub name: String,
    pub top: Vec<Ranked>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<f32>>,
}

#[derive(Serialize, Clone)]
pub struct EnsembleAnswer {
    pub top: Vec<Ranked>,
}

#[derive(Serialize, Clone)]
pub struct Answer {
    pub input: String,
    pub elapsed_ms: f64,
    pub models: Vec<ModelAnswer>,
    pub ensemble: EnsembleAnswer,
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
    let models = load_models(&paths)?;
    let items = read_inputs(&args.inputs)?;
    let show_progress = !args.json && items.len() > 1;
    let bar = if show_progress {
        indicatif::ProgressBar::new(items.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let records = classify(&models, &items, &args.run, |answer| {
        let k = args.top as usize;
        let text = if args.json {
            let mut a = answer;
            for m in &mut a.models {
                m.top.truncate(k);
                if !args.logits {
                    m.logits = None;
                }
            }
            a.ensemble.top.truncate(k);
            serde_json::to_string(&a)?
        } else {
            format_answer(&answer, k, models.len() > 1)
        };
        bar.suspend(|| out(text))?;
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    if args.memory_report {
        eprint!("{}", memory_report(&models, &records));
    }
    Ok(())
}

/// Loads models for an ensemble, refusing mixed class counts.
pub fn load_models(paths: &[PathBuf]) -> Result<Vec<Model>> {
    let models = paths
        .iter()
        .map(Model::load)
        .collect::<wstream::Result<Vec<_>>>()?;
    if let Some(m) = models
        .iter()
        .find(|m| m.num_classes != models[0].num_classes)
    {
        bail!(
            "models disagree on the number of classes: {} has {}, {} has {}; an ensemble needs the same classes",
            models[0].name,
            models[0].num_classes,
            m.name,
            m.num_classes
        );
    }
    Ok(models)
}

/// Runs the items through the executor in batches, calling `emit` with each input's answer (every class
/// ranked, logits included; the caller trims). Returns the executor's block records.
pub fn classify(
    models: &[Model],
    items: &[Item],
    run: &RunArgs,
    mut emit: impl FnMut(Answer) -> Result<()>,
) -> Result<Vec<BlockRecord>> {
    let model_labels: Vec<Vec<String>> = models.iter().map(labels).collect();
    let preprocess = models
        .iter()
        .map(|m| Preprocess::from_config(&m.config, m.store.path()))
        .collect::<wstream::Result<Vec<_>>>()?;
    let executor = Executor::new(models, run.exec_options())?;
    let mut records = Vec::new();
    for batch in items.chunks(run.batch as usize) {
        let start = Instant::now();
        let images = batch.iter().map(decode).collect::<Result<Vec<_>>>()?;
        let inputs = models
            .iter()
            .zip(&preprocess)
            .map(|(m, pre)| batch_input(m, pre, batch, &images))
            .collect::<Result<Vec<_>>>()?;
        let (outputs, recs) = executor.run(inputs)?;
        records.extend(recs);
        let elapsed_ms = start.elapsed().as_secs_f64() * 1e3 / batch.len() as f64;
        for (bi, item) in batch.iter().enumerate() {
            let all_logits: Vec<&[f32]> = outputs
                .iter()
                .zip(models)
                .map(|(o, m)| &o.data[bi * m.num_classes..(bi + 1) * m.num_classes])
                .collect();
            let n = models[0].num_classes;
            let answers = models
                .iter()
                .zip(&all_logits)
                .zip(&model_labels)
                .map(|((m, l), names)| ModelAnswer {
                    name: m.name.clone(),
                    top: top_k(&softmax(l), n, names),
                    logits: Some(l.to_vec()),
                })
                .collect();
            emit(Answer {
                input: item.name.clone(),
                elapsed_ms,
                models: answers,
                ensemble: EnsembleAnswer {
                    top: top_k(&combine(&all_logits, run.ensemble), n, &model_labels[0]),
                },
            })?;
        }
    }
    Ok(records)
}

fn decode(item: &Item) -> Result<Option<image::RgbImage>> {
    Ok(match &item.source {
        Source::Image(path) => Some(preprocess::load_rgb(path)?),
        Source::Decoded(img) => Some(img.clone()),
        Source::Tensor { .. } => None,
    })
}

/// A batch as one model's input `[n, 3, h, w]`: images preprocessed for this model, tensors checked
/// against the size it expects.
fn batch_input(
    model: &Model,
    pre: &Preprocess,
    batch: &[Item],
    images: &[Option<image::RgbImage>],
) -> Result<Act> {
    let want = model.input_size();
    let mut data = Vec::with_capacity(batch.len() * want.iter().product::<usize>());
    for (item, img) in batch.iter().zip(images) {
        match (&item.source, img) {
            (Source::Tensor { chw, shape }, _) => {
                if *shape != want {
                    bail!(
                        "{}: input is {:?} but {} expects {:?}",
                        item.name,
                        shape,
                        model.name,
                        want
                    );
                }
                data.extend_from_slice(chw);
            }
            (_, Some(img)) => data.extend(pre.apply(img)),
            (_, None) => unreachable!("images are decoded before batching"),
        }
    }
    let [c, h, w] = want;
    Ok(Act::new(data, vec![batch.len(), c, h, w]))
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

/// Expands the command line's inputs: folders into their images (sorted), .npy arrays into their items.
pub fn read_inputs(paths: &[PathBuf]) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for path in paths {
        let meta =
            std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            let mut images: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            if images.is_empty() {
                bail!(
                    "{}: folder holds no .jpg, .jpeg or .png images",
                    path.display()
                );
            }
            images.sort();
            items.extend(images.into_iter().map(|p| Item {
                name: p.display().to_string(),
                source: Source::Image(p),
            }));
        } else if path.extension().is_some_and(|e| e == "npy") {
            items.extend(read_npy(path)?);
        } else {
            items.push(Item {
                name: path.display().to_string(),
                source: Source::Image(path.clone()),
            });
        }
    }
    Ok(items)
}

fn read_npy(path: &Path) -> Result<Vec<Item>> {
    let (data, shape) = npy::read_f32(path)?;
    let name = path.display().to_string();
    let tensor = |chw: Vec<f32>, h, w| Source::Tensor {
        chw,
        shape: [3, h, w],
    };
    Ok(match shape.as_slice() {
        &[3, h, w] => vec![Item {
            name,
            source: tensor(data, h, w),
        }],
        &[n, 3, h, w] => data
            .chunks_exact(3 * h * w)
            .enumerate()
            .map(|(i, chw)| Item {
                name: if n == 1 {
                    name.clone()
                } else {
                    format!("{name}[{i}]")
                },
                source: tensor(chw.to_vec(), h, w),
            })
            .collect(),
        other => bail!("{name}: array of shape {other:?} is not a [3, H, W] or [N, 3, H, W] image"),
    })
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

/// An answer as text: the top `k` per model, and for the ensemble when there are several models.
pub fn format_answer(a: &Answer, k: usize, ensemble: bool) -> String {
    use std::fmt::Write;
    let mut s = format!("{} ({:.1} ms)\n", a.input, a.elapsed_ms);
    let mut top = |title: &str, ranked: &[Ranked]| {
        let _ = writeln!(s, "  {title}");
        for r in ranked.iter().take(k) {
            let _ = writeln!(
                s,
                "    {:>6.2}%  {:>4}  {}",
                r.prob * 100.0,
                r.class,
                r.label
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
