//! `wstream profile`: classify's run, reported block by block: what was paged in, what it cost, what stayed.

use std::path::PathBuf;

use anyhow::Result;
use wstream::output::{self, Existing};
use wstream::pipeline::read_inputs;
use wstream::process::MemReading;
use wstream::profile::Profile;
use wstream::residency::{self, drop_file_cache};

use super::classify::RunArgs;
use super::{out, printable};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

/// Run by tests/suite/help.rs, from the repository's root.
const EXAMPLES: &str = "\
Examples (from the repository's root):
  wstream profile --model tests/fixtures/convnext_tiny tests/data/cat.jpg
  wstream profile --format csv --batch 2 --model tests/fixtures/swin_tiny tests/data/cat.jpg tests/data/coffee.png";

#[derive(clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// A model folder in timm's Hugging Face layout, or a .safetensors file. Repeat for an ensemble.
    #[arg(long = "model", required = true)]
    models: Vec<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    /// Drop the weight files from the page cache first (posix_fadvise), so every page is read from storage.
    #[arg(long)]
    cold: bool,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Also draw the timeline as SVG into this file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Images (JPEG, PNG, WebP, BMP, TIFF, GIF), folders of them, or preprocessed .npy arrays, as for
    /// classify.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    super::set_threads(args.run.threads)?;
    // The profile reports blocks, not answers.
    let models = super::classify::locate_models(&args.models)?;
    let pipeline = args.run.pipeline(&models, 1, false)?;
    if let Some(svg) = &args.svg {
        // Checked before the run, against every file it reads: the weights, their config.json, the inputs.
        let mut inputs = args.inputs.clone();
        for m in pipeline.models() {
            inputs.extend(m.store.files().iter().map(|f| f.path.clone()));
            let path = m.store.path();
            let dir = if path.is_dir() {
                Some(path)
            } else {
                path.parent()
            };
            inputs.extend(dir.map(|d| d.join("config.json")));
        }
        output::check(svg, Some("svg"), Existing::Replace, &inputs)?;
    }
    let items = read_inputs(&args.inputs)?;
    if args.cold {
        for m in pipeline.models() {
            for f in m.store.files() {
                // Opening the store read its header through the mapping, which with 2 MiB pages maps the
                // file's first 2 MiB; a mapped page is not dropped, so unmap it first.
                residency::release(f.bytes(), 0..f.bytes().len(), None)
                    .and_then(|_| drop_file_cache(f.file()))
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "{}: cannot drop from the page cache: {e}",
                            f.path.display()
                        )
                    })?;
            }
        }
    }
    let records = pipeline.run(&items, |_| anyhow::Ok(()))?;
    let profile = Profile::new(records, MemReading::now().vm_hwm);
    match args.format {
        // Model names come from config.json: escaped line by line, the table's own newlines kept.
        Format::Table => {
            for line in profile.table().trim_end().lines() {
                out(printable(line))?;
            }
        }
        Format::Json => out(serde_json::to_string(&profile)?)?,
        Format::Csv => out(profile.csv().trim_end())?,
    }
    if let Some(svg) = &args.svg {
        profile.svg(svg).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}
