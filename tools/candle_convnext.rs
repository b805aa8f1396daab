//! candle-transformers' own ConvNeXt (the Rust peer in tools/bench_vs_torch.sh) on a timm ConvNeXt
//! folder: loads `model.safetensors` into candle, then runs each input and prints one JSON line per input
//! shaped like `wstream classify --json --logits` (`elapsed_ms`, `models[0].logits`), so the benchmark
//! times and checks it the way it does wstream. The weights are read into memory at load (candle's
//! buffered VarBuilder), as a program that owns its tensors holds them.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --profile bench --example candle_convnext -- \
//!     /work/fullsize/convnext_large /work/fullsize/convnext_large/reference/cat.input.npy
//! ```
//!
//! candle's `convnext::Config` has only its presets (tiny, small, base, large, xlarge and the conv-MLP
//! atto..nano), chosen here from config.json's `architecture`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::convnext;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("candle_convnext: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, inputs @ ..] = &args[..] else {
        return Err("usage: candle_convnext MODEL_DIR INPUT.npy...".into());
    };
    if inputs.is_empty() {
        return Err("usage: candle_convnext MODEL_DIR INPUT.npy...".into());
    }
    let dir = Path::new(model);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let arch = config["architecture"].as_str().unwrap_or_default();
    let cfg = match arch.split('.').next().unwrap_or_default() {
        "convnext_tiny" => convnext::Config::tiny(),
        "convnext_small" => convnext::Config::small(),
        "convnext_base" => convnext::Config::base(),
        "convnext_large" => convnext::Config::large(),
        "convnext_xlarge" => convnext::Config::xlarge(),
        "convnext_atto" => convnext::Config::atto(),
        "convnext_femto" => convnext::Config::femto(),
        "convnext_pico" => convnext::Config::pico(),
        "convnext_nano" => convnext::Config::nano(),
        other => {
            return Err(format!(
                "{model}: architecture `{other}` is none of candle's ConvNeXt presets"
            )
            .into())
        }
    };
    let classes = config["num_classes"].as_u64().unwrap_or(1000) as usize;
    let bytes = std::fs::read(dir.join("model.safetensors"))?;
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)?;
    let net = convnext::convnext(&cfg, classes, vb)?;
    for input in inputs {
        let mut x = Tensor::read_npy(input)?;
        if x.rank() == 3 {
            x = x.unsqueeze(0)?;
        }
        let start = Instant::now();
        let logits = net.forward(&x)?;
        let logits = logits.to_vec2::<f32>()?;
        let elapsed_ms = start.elapsed().as_secs_f64() * 1e3 / logits.len() as f64;
        let line = serde_json::json!({
            "input": input,
            "elapsed_ms": elapsed_ms,
            "models": [{ "name": arch, "logits": logits[0] }],
        });
        println!("{line}");
    }
    Ok(())
}
