//! A candle program using wstream: reads a preprocessed batch as a `candle_core::Tensor` (a `.npy` of
//! `[N, 3, H, W]` or `[3, H, W]` f32, as `tools/export_timm.py` writes), hands it to wstream, and ranks the
//! logits with candle's own ops; `--features` prints the pooled embeddings' sizes and norms instead.
//!
//! ```text
//! cargo run --release --example candle_classify -- tests/fixtures/convnext_tiny \
//!     tests/fixtures/convnext_tiny/reference/cat.input.npy
//! ```

use std::process::ExitCode;

use candle_core::{Tensor, D};
use wstream::pipeline::{Options, Output, Pipeline};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("candle_classify: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let features = args.iter().any(|a| a == "--features");
    let paths: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [model, npy] = paths[..] else {
        return Err("usage: candle_classify MODEL INPUT.npy [--features]".into());
    };
    let options = Options {
        output: if features {
            Output::Features
        } else {
            Output::Prob
        },
        ..Options::default()
    };
    let pipeline = Pipeline::load(&[model], options)?;
    let mut x = Tensor::read_npy(npy)?;
    if x.rank() == 3 {
        x = x.unsqueeze(0)?;
    }
    let out = &wstream::candle::forward(&pipeline, &x)?[0];
    if features {
        let norms = out.sqr()?.sum(D::Minus1)?.sqrt()?.to_vec1::<f32>()?;
        for (i, n) in norms.iter().enumerate() {
            println!("input {i}: {} features, L2 norm {n:.4}", out.dim(1)?);
        }
        return Ok(());
    }
    // Softmax with candle's ops: the logits are an ordinary tensor from here on.
    let max = out.max_keepdim(D::Minus1)?;
    let e = out.broadcast_sub(&max)?.exp()?;
    let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    for (i, row) in probs.to_vec2::<f32>()?.iter().enumerate() {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let top: Vec<String> = order[..5]
            .iter()
            .map(|&c| format!("{c} ({:.4})", row[c]))
            .collect();
        println!("input {i}: top-5 classes {}", top.join(", "));
    }
    Ok(())
}
