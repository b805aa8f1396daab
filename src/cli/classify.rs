//! `wstream classify`: top-K classes per model and for the ensemble, as text or JSON lines.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use wstream::classify::{combine, labels, softmax, top_k, Ensemble, Ranked};
use wstream::models::{Act, Model};
use wstream::npy;

use super::out;

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
    let k = args.top as usize;
    for item in items {
        let start = Instant::now();
        let mut all_logits = Vec::with_capacity(models.len());
        for m in &models {
            let [c, h, w] = item.shape;
            let logits = m
                .forward(Act::new(item.chw.clone(), vec![1, c, h, w]))
                .with_context(|| format!("{}: model {}", item.name, m.name))?;
            all_logits.push(logits.data);
        }
        let elapsed_ms = start.elapsed().as_secs_f64() * 1e3;
        let answers: Vec<ModelAnswer> = models
            .iter()
            .zip(&all_logits)
            .zip(&model_labels)
            .map(|((m, l), names)| ModelAnswer {
                name: m.name.clone(),
                top: top_k(&softmax(l), k, names),
                logits: args.logits.then(|| l.clone()),
            })
            .collect();
        let views: Vec<&[f32]> = all_logits.iter().map(Vec::as_slice).collect();
        let answer = Answer {
            input: item.name,
            elapsed_ms,
            models: answers,
            ensemble: EnsembleAnswer {
                top: top_k(&combine(&views, args.ensemble), k, &model_labels[0]),
            },
        };
        if args.json {
            out(serde_json::to_string(&answer)?)?;
        } else {
            print_answer(&answer, models.len() > 1)?;
        }
    }
    Ok(())
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
