//! `wstream convert`: a compact (f16, bf16, int8) and/or execution-ordered copy of a model, with a progress
//! bar.

use std::path::PathBuf;

use anyhow::Result;
use wstream::convert::{self, Dtype, Layout, Options};

use super::{human_bytes, out, printable};

#[derive(Clone, Copy, clap::ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    Bf16,
    Int8,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LayoutArg {
    Source,
    Exec,
    Packed,
}

/// Run by tests/suite/help.rs, from the repository's root (with /tmp/ replaced by a temporary folder).
const EXAMPLES: &str = "\
Examples (from the repository's root):
  wstream convert tests/fixtures/vit_tiny /tmp/vit_tiny_int8 --dtype int8
  wstream convert tests/fixtures/convnext_tiny /tmp/convnext_tiny_exec.safetensors --layout exec";

#[derive(clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The model: a folder in timm's Hugging Face layout, a .safetensors file or a shard index.
    input: PathBuf,
    /// What to write: a new folder (model.safetensors + config.json), or a file ending in .safetensors.
    output: PathBuf,
    /// f16/bf16: F32 tensors in that dtype. int8: weight matrices as per-output-channel int8 + F32 scales.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    /// source: the input's tensor order, packed. exec: the order blocks run, each block page-aligned.
    /// packed: exec, with the f32 linear weights in the GEMM kernel's panel order (read without repacking;
    /// `--layout source` restores them).
    #[arg(long, value_enum, default_value = "source")]
    layout: LayoutArg,
}

pub fn run(args: Args) -> Result<()> {
    let opts = Options {
        dtype: match args.dtype {
            DtypeArg::F32 => Dtype::F32,
            DtypeArg::F16 => Dtype::F16,
            DtypeArg::Bf16 => Dtype::Bf16,
            DtypeArg::Int8 => Dtype::Int8,
        },
        layout: match args.layout {
            LayoutArg::Source => Layout::Source,
            LayoutArg::Exec => Layout::Exec,
            LayoutArg::Packed => Layout::Packed,
        },
    };
    // Hidden when stderr is not a terminal.
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!(
        "convert to {} {}",
        opts.dtype.name(),
        opts.layout.name()
    ));
    let result = convert::convert(&args.input, &args.output, &opts, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let s = result?;
    let mut extra = Vec::new();
    if s.quantized > 0 {
        extra.push(format!("{} int8 matrices + scales", s.quantized));
    }
    if s.pads > 0 {
        extra.push(format!("{} padding tensors", s.pads));
    }
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(" ({})", extra.join(", "))
    };
    out(format!(
        "{}: {} tensors{extra}, {} {} layout, {} of tensors -> {} file",
        printable(&s.weights.display().to_string()),
        s.tensors,
        opts.dtype.name(),
        opts.layout.name(),
        human_bytes(s.bytes_in),
        human_bytes(s.bytes_out),
    ))?;
    Ok(())
}
