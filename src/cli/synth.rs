//! `wstream synth`: a synthetic checkpoint folder for an architecture, with a progress bar.

use std::path::PathBuf;

use anyhow::{bail, Result};
use wstream::synth;

/// Run by tests/suite/help.rs (with /tmp/ replaced by a temporary folder).
const EXAMPLES: &str = "\
Example:
  wstream synth --arch vit_tiny_patch16_224 --out /tmp/vit_tiny_synth";

#[derive(clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Architecture, timm's name (e.g. vit_large_patch16_224, convnext_large, swin_large_patch4_window7_224).
    #[arg(long)]
    arch: String,
    /// Folder to create (timm's Hugging Face layout: model.safetensors + config.json).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the random values.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: Args) -> Result<()> {
    synthesize(&args.arch, &args.out, args.seed)
}

/// Writes one synthetic model with a progress bar on stderr (hidden when stderr is not a terminal).
pub fn synthesize(arch: &str, out: &std::path::Path, seed: u64) -> Result<()> {
    let Some(total) = synth::weight_bytes(arch) else {
        bail!(
            "unknown architecture `{arch}`; known: {}",
            synth::ARCHITECTURES.join(", ")
        );
    };
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("synth {arch}"));
    synth::write(arch, out, seed, |n| bar.set_position(n))?;
    bar.finish_and_clear();
    Ok(())
}
