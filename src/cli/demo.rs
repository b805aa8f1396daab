//! `wstream demo`: the three-model ensemble on a bundled photo, with a memory report. Missing default models
//! are synthesised first (timm's exact layout, random values), so it runs on a fresh clone.

use anyhow::{bail, Result};
use wstream::synth;

use wstream::pipeline::{Item, Source};

use super::classify::{default_model_paths, format_answer, memory_report, RunArgs, DEFAULT_MODELS};
use super::{out, printable};

/// A real photo (a cat, CC0; see tests/data/README.md) so the demo needs no files of its own.
const PHOTO: &[u8] = include_bytes!("../../tests/data/cat.jpg");

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(args: Args) -> Result<()> {
    super::set_threads(args.run.threads)?;
    // The README promises a budget too small is refused before any work: synthesising a missing model
    // writes gigabytes, so check against a lower bound known from the architectures' shapes first (the
    // pipeline checks the exact figure once the files exist).
    if let Some(budget) = args.run.budget {
        let largest = DEFAULT_MODELS
            .iter()
            .filter_map(|&arch| {
                synth::largest_group(arch).map(|(block, bytes)| (arch, block, bytes))
            })
            .fold(None, |big: Option<(&str, String, u64)>, g| match big {
                Some(b) if b.2 >= g.2 => Some(b),
                _ => Some(g),
            });
        if let Some((arch, block, needed)) = largest {
            if needed > budget {
                bail!(
                    "--budget {budget} bytes is below what block `{block}` of {arch} needs: the minimum \
                     budget is at least {needed} bytes ({}); nothing was synthesised or run",
                    super::human_bytes(needed)
                );
            }
        }
    }
    let dirs = default_model_paths();
    for (dir, arch) in dirs.iter().zip(DEFAULT_MODELS) {
        if !dir.join("model.safetensors").exists() {
            eprintln!(
                "{}: missing; writing synthetic weights (see weights/README.md for the real ones)",
                dir.display()
            );
            super::synth::synthesize(arch, dir, 0)?;
        }
    }
    let pipeline = args.run.pipeline(&dirs, 3, false)?;
    let photo = wstream::preprocess::decode_rgb_bytes(
        PHOTO,
        std::path::Path::new("the bundled photo"),
        wstream::preprocess::MAX_PIXELS,
    )?;
    let items = [Item {
        name: "bundled photo: a tabby cat (tests/data/cat.jpg)".into(),
        source: Source::Decoded(photo),
    }];
    let records = pipeline.run(&items, |answer| -> Result<()> {
        Ok(out(format_answer(&answer, true))?)
    })?;
    let synthetic: Vec<&str> = pipeline
        .models()
        .iter()
        .filter(|m| m.synthetic)
        .map(|m| m.name.as_str())
        .collect();
    if !synthetic.is_empty() {
        out(format_args!(
            "note: synthetic weights (random values) for {}: the classes above mean nothing, the memory figures are real",
            printable(&synthetic.join(", "))
        ))?;
    }
    out(memory_report(pipeline.models(), &records).trim_end())?;
    Ok(())
}
