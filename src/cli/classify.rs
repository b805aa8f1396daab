//! `wstream classify`: top-K classes per model and for the ensemble, as text or JSON lines.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;
use wstream::classify::{combine, labels, softmax, top_k, Ensemble, Ranked};
use wstream::exec::{BlockRecord, Evict, ExecOptions, Executor};
use wstream::models::{Act, Model};
use wstream::npy;
use wstream::residency::MemReading;

use super::{human_bytes, out, parse_bytes};

#[derive(clap::Args)]
pub struct Args {
    /// A model folder in timm's Hugging Face layout, or a .safetensors file. Repeat for an ensemble.
    #[arg(long = "model", required = true)]
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
    /// Compute threads (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
    /// How the models of an ensemble are combined.
    #[arg(long, value_enum, default_value_t = Ensemble::MeanProb)]
    ensemble: Ensemble,
    /// Most weight bytes resident at once (suffixes K, M, G); the prefetch look-ahead shrinks to fit.
    #[arg(long, value_parser = parse_bytes)]
    budget: Option<u64>,
    /// After a block ran: `rss` unmaps its pages (page cache stays warm), `cache` also drops them from the cache.
    #[arg(long, value_enum, default_value_t = Evict::Rss)]
    evict: Evict,
    /// Inputs run through each block together, so each block's weights are paged in once per batch.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    batch: u64,
    /// Print peak memory, faults and bytes paged in to stderr at the end.
    #[arg(long)]
    memory_report: bool,
    /// Preprocessed .npy f32 arrays, [3, H, W] or [N, 3, H, W].
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

/// One image to classify, already preprocessed.
struct Item {
    name: String,
    chw: Vec<f32>,
    shape: [usize; 3],
}

#[derive(Serialize)]
struct ModelAnswer {
    name: String,
    top: Vec<Ranked>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logits: Option<Vec<f32>>,
}

#[derive(Serialize)]
struct EnsembleAnswer {
    top: Vec<Ranked>,
}

#[derive(Serialize)]
struct Answer {
    input: String,
    elapsed_ms: f64,
    models: Vec<ModelAnswer>,
    ensemble: EnsembleAnswer,
}

pub fn run(args: Args) -> Result<()> {
    super::set_threads(args.threads)?;
    let models = args
        .models
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
    let model_labels: Vec<Vec<String>> = models.iter().map(labels).collect();
    let items = read_inputs(&args.inputs)?;
    let executor = Executor::new(
        &models,
        ExecOptions {
            budget: args.budget,
            evict: args.evict,
            ..ExecOptions::default()
        },
    )?;
    let k = args.top as usize;
    let mut records = Vec::new();
    for batch in items.chunks(args.batch as usize) {
        let start = Instant::now();
        let inputs = models
            .iter()
            .map(|m| batch_input(m, batch))
            .collect::<Result<Vec<_>>>()?;
        let (outputs, recs) = executor.run(inputs)?;
        records.extend(recs);
        let elapsed_ms = start.elapsed().as_secs_f64() * 1e3 / batch.len() as f64;
        for (bi, item) in batch.iter().enumerate() {
            let all_logits: Vec<&[f32]> = outputs
                .iter()
                .zip(&models)
                .map(|(o, m)| &o.data[bi * m.num_classes..(bi + 1) * m.num_classes])
                .collect();
            let answers: Vec<ModelAnswer> = models
                .iter()
                .zip(&all_logits)
                .zip(&model_labels)
                .map(|((m, l), names)| ModelAnswer {
                    name: m.name.clone(),
                    top: top_k(&softmax(l), k, names),
                    logits: args.logits.then(|| l.to_vec()),
                })
                .collect();
            let answer = Answer {
                input: item.name.clone(),
                elapsed_ms,
                models: answers,
                ensemble: EnsembleAnswer {
                    top: top_k(&combine(&all_logits, args.ensemble), k, &model_labels[0]),
                },
            };
            if args.json {
                out(serde_json::to_string(&answer)?)?;
            } else {
                print_answer(&answer, models.len() > 1)?;
            }
        }
    }
    if args.memory_report {
        eprint!("{}", memory_report(&models, &records));
    }
    Ok(())
}

/// A batch as one model's input `[n, 3, h, w]`, checked against the size the model expects.
fn batch_input(model: &Model, batch: &[Item]) -> Result<Act> {
    let [c, h, w] = batch[0].shape;
    let want = model.input_size();
    for item in batch {
        if item.shape != want {
            bail!(
                "{}: input is {:?} but {} expects {:?}",
                item.name,
                item.shape,
                model.name,
                want
            );
        }
    }
    let data = batch.iter().flat_map(|i| i.chw.iter().copied()).collect();
    Ok(Act::new(data, vec![batch.len(), c, h, w]))
}

/// Peak memory, faults and paging over a run, as the demo and `--memory-report` print it.
pub fn memory_report(models: &[Model], records: &[BlockRecord]) -> String {
    let mem = MemReading::now();
    let peak_anon = records
        .iter()
        .map(|r| r.mem_after.rss_anon)
        .max()
        .unwrap_or(0);
    let peak_file = records
        .iter()
        .map(|r| r.mem_after.rss_file)
        .max()
        .unwrap_or(0);
    let weights: u64 = models.iter().map(|m| m.store.total_bytes()).sum();
    let major: u64 = records
        .iter()
        .map(|r| r.compute_faults.major + r.prefetch_faults.major)
        .sum();
    let minor: u64 = records
        .iter()
        .map(|r| r.compute_faults.minor + r.prefetch_faults.minor)
        .sum();
    let paged: u64 = records
        .iter()
        .map(|r| r.weight_bytes - r.resident_before.min(r.weight_bytes))
        .sum();
    let read = records.iter().filter_map(|r| r.storage_read).sum::<u64>();
    format!(
        "memory: peak RSS (VmHWM) {}; after blocks, peak RssFile {} and RssAnon {}\n\
         weights: {} in {} model(s), mapped read-only; {} paged in from outside the page cache, {} read from storage\n\
         faults: {major} major, {minor} minor\n",
        human_bytes(mem.vm_hwm),
        human_bytes(peak_file),
        human_bytes(peak_anon),
        human_bytes(weights),
        models.len(),
        human_bytes(paged),
        human_bytes(read),
    )
}

fn read_inputs(paths: &[PathBuf]) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for path in paths {
        let (data, shape) = npy::read_f32(path)?;
        let name = path.display().to_string();
        match shape.as_slice() {
            &[3, h, w] => items.push(Item {
                name,
                chw: data,
                shape: [3, h, w],
            }),
            &[n, 3, h, w] => {
                for (i, chw) in data.chunks_exact(3 * h * w).enumerate() {
                    items.push(Item {
                        name: if n == 1 {
                            name.clone()
                        } else {
                            format!("{name}[{i}]")
                        },
                        chw: chw.to_vec(),
                        shape: [3, h, w],
                    });
                }
            }
            other => {
                bail!("{name}: array of shape {other:?} is not a [3, H, W] or [N, 3, H, W] image")
            }
        }
    }
    Ok(items)
}

fn print_answer(a: &Answer, ensemble: bool) -> std::io::Result<()> {
    out(format_args!("{} ({:.1} ms)", a.input, a.elapsed_ms))?;
    let print_top = |title: &str, top: &[Ranked]| -> std::io::Result<()> {
        out(format_args!("  {title}"))?;
        for r in top {
            out(format_args!(
                "    {:>6.2}%  {:>4}  {}",
                r.prob * 100.0,
                r.class,
                r.label
            ))?;
        }
        Ok(())
    };
    for m in &a.models {
        print_top(&m.name, &m.top)?;
    }
    if ensemble {
        print_top("ensemble", &a.ensemble.top)?;
    }
    Ok(())
}
