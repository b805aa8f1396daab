//! Synthetic checkpoints: timm's exact tensor names, shapes and on-disk order, and a `config.json`, with
//! seeded random values at timm's init scales. They stand in for the real Hugging Face weights (same bytes
//! to page, same compute) where those cannot be downloaded, e.g. in CI.

use std::path::Path;

use rayon::prelude::*;
use serde_json::json;

use crate::error::{Error, Result};
use crate::output::{self, Existing};
use crate::writer::{self, HeaderEntry, PartialFile};

/// How a tensor is initialised (timm's defaults).
#[derive(Clone, Copy)]
enum Init {
    /// Truncated-normal-like weights of this standard deviation (uniform with the same std here).
    Std(f32),
    Const(f32),
}

struct Spec {
    name: String,
    shape: Vec<usize>,
    init: Init,
}

/// The architectures `synth` can write, and the family each belongs to.
pub const ARCHITECTURES: &[&str] = &[
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "vit_large_patch16_224",
    "vit_huge_patch14_224",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "convnext_large",
    "convnext_xlarge",
    "swin_tiny_patch4_window7_224",
    "swin_small_patch4_window7_224",
    "swin_base_patch4_window7_224",
    "swin_large_patch4_window7_224",
];

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
const CLASSES: usize = 1000;

struct Builder(Vec<Spec>);

impl Builder {
    fn t(&mut self, name: String, shape: &[usize], init: Init) {
        self.0.push(Spec {
            name,
            shape: shape.to_vec(),
            init,
        });
    }

    /// A linear or conv layer: weight at std 0.02, bias zero.
    fn layer(&mut self, prefix: &str, shape: &[usize], bias: bool) {
        self.t(format!("{prefix}.weight"), shape, Init::Std(0.02));
        if bias {
            self.t(format!("{prefix}.bias"), &[shape[0]], Init::Const(0.0));
        }
    }

    fn norm(&mut self, prefix: &str, dim: usize) {
        self.t(format!("{prefix}.weight"), &[dim], Init::Const(1.0));
        self.t(format!("{prefix}.bias"), &[dim], Init::Const(0.0));
    }
}

fn vit(b: &mut Builder, dim: usize, depth: usize, patch: usize) -> serde_json::Value {
    let tokens = (224 / patch) * (224 / patch) + 1;
    b.layer("patch_embed.proj", &[dim, 3, patch, patch], true);
    b.t("cls_token".into(), &[1, 1, dim], Init::Std(1e-6));
    b.t("pos_embed".into(), &[1, tokens, dim], Init::Std(0.02));
    for i in 0..depth {
        let p = format!("blocks.{i}");
        b.norm(&format!("{p}.norm1"), dim);
        b.layer(&format!("{p}.attn.qkv"), &[3 * dim, dim], true);
        b.layer(&format!("{p}.attn.proj"), &[dim, dim], true);
        b.norm(&format!("{p}.norm2"), dim);
        b.layer(&format!("{p}.mlp.fc1"), &[4 * dim, dim], true);
        b.layer(&format!("{p}.mlp.fc2"), &[dim, 4 * dim], true);
    }
    b.norm("norm", dim);
    b.layer("head", &[CLASSES, dim], true);
    json!({"global_pool": "token", "num_features": dim, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
           "crop_pct": 0.9, "classifier": "head"})
}

fn convnext(b: &mut Builder, depths: [usize; 4], dims: [usize; 4]) -> serde_json::Value {
    b.layer("stem.0", &[dims[0], 3, 4, 4], true);
    b.norm("stem.1", dims[0]);
    for s in 0..4 {
        let d = dims[s];
        if s > 0 {
            b.norm(&format!("stages.{s}.downsample.0"), dims[s - 1]);
            b.layer(
                &format!("stages.{s}.downsample.1"),
                &[d, dims[s - 1], 2, 2],
                true,
            );
        }
        for i in 0..depths[s] {
            let p = format!("stages.{s}.blocks.{i}");
            b.layer(&format!("{p}.conv_dw"), &[d, 1, 7, 7], true);
            b.norm(&format!("{p}.norm"), d);
            b.layer(&format!("{p}.mlp.fc1"), &[4 * d, d], true);
            b.layer(&format!("{p}.mlp.fc2"), &[d, 4 * d], true);
            b.t(format!("{p}.gamma"), &[d], Init::Const(1e-6));
        }
    }
    b.norm("head.norm", dims[3]);
    b.layer("head.fc", &[CLASSES, dims[3]], true);
    json!({"global_pool": "avg", "num_features": dims[3], "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
           "crop_pct": 0.875, "classifier": "head.fc"})
}

fn swin(b: &mut Builder, embed: usize, depths: [usize; 4], heads: [usize; 4]) -> serde_json::Value {
    let window = 7;
    b.layer("patch_embed.proj", &[embed, 3, 4, 4], true);
    b.norm("patch_embed.norm", embed);
    for s in 0..4 {
        let d = embed << s;
        if s > 0 {
            b.norm(&format!("layers.{s}.downsample.norm"), 2 * d);
            b.layer(
                &format!("layers.{s}.downsample.reduction"),
                &[d, 2 * d],
                false,
            );
        }
        for i in 0..depths[s] {
            let p = format!("layers.{s}.blocks.{i}");
            b.norm(&format!("{p}.norm1"), d);
            let table = (2 * window - 1) * (2 * window - 1);
            b.t(
                format!("{p}.attn.relative_position_bias_table"),
                &[table, heads[s]],
                Init::Std(0.02),
            );
            b.layer(&format!("{p}.attn.qkv"), &[3 * d, d], true);
            b.layer(&format!("{p}.attn.proj"), &[d, d], true);
            b.norm(&format!("{p}.norm2"), d);
            b.layer(&format!("{p}.mlp.fc1"), &[4 * d, d], true);
            b.layer(&format!("{p}.mlp.fc2"), &[d, 4 * d], true);
        }
    }
    let last = embed << 3;
    b.norm("norm", last);
    b.layer("head.fc", &[CLASSES, last], true);
    json!({"global_pool": "avg", "num_features": last, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
           "crop_pct": 0.9, "classifier": "head.fc"})
}

fn specs(arch: &str) -> Option<(Vec<Spec>, serde_json::Value)> {
    let mut b = Builder(Vec::new());
    let cfg = match arch {
        "vit_tiny_patch16_224" => vit(&mut b, 192, 12, 16),
        "vit_small_patch16_224" => vit(&mut b, 384, 12, 16),
        "vit_base_patch16_224" => vit(&mut b, 768, 12, 16),
        "vit_large_patch16_224" => vit(&mut b, 1024, 24, 16),
        "vit_huge_patch14_224" => vit(&mut b, 1280, 32, 14),
        "convnext_tiny" => convnext(&mut b, [3, 3, 9, 3], [96, 192, 384, 768]),
        "convnext_small" => convnext(&mut b, [3, 3, 27, 3], [96, 192, 384, 768]),
        "convnext_base" => convnext(&mut b, [3, 3, 27, 3], [128, 256, 512, 1024]),
        "convnext_large" => convnext(&mut b, [3, 3, 27, 3], [192, 384, 768, 1536]),
        "convnext_xlarge" => convnext(&mut b, [3, 3, 27, 3], [256, 512, 1024, 2048]),
        "swin_tiny_patch4_window7_224" => swin(&mut b, 96, [2, 2, 6, 2], [3, 6, 12, 24]),
        "swin_small_patch4_window7_224" => swin(&mut b, 96, [2, 2, 18, 2], [3, 6, 12, 24]),
        "swin_base_patch4_window7_224" => swin(&mut b, 128, [2, 2, 18, 2], [4, 8, 16, 32]),
        "swin_large_patch4_window7_224" => swin(&mut b, 192, [2, 2, 18, 2], [6, 12, 24, 48]),
        _ => return None,
    };
    Some((b.0, cfg))
}

const SYNTHETIC_NOTE: &str = "random weights at timm's init scales, written by `wstream synth`";

/// The config.json timm writes for such a checkpoint, marked as synthetic.
fn config_json(arch: &str, c: &serde_json::Value, seed: u64) -> serde_json::Value {
    json!({
        "architecture": arch,
        "num_classes": CLASSES,
        "num_features": c["num_features"],
        "global_pool": c["global_pool"],
        "pretrained_cfg": {
            "input_size": [3, 224, 224],
            "interpolation": "bicubic",
            "crop_pct": c["crop_pct"],
            "crop_mode": "center",
            "mean": c["mean"],
            "std": c["std"],
            "num_classes": CLASSES,
            "classifier": c["classifier"],
        },
        "wstream_synthetic": {"seed": seed, "note": SYNTHETIC_NOTE},
    })
}

/// SplitMix64: a fast, well-mixed generator; one stream per chunk keeps generation parallel and repeatable.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fill(out: &mut [f32], init: Init, seed: u64) {
    const CHUNK: usize = 1 << 16;
    match init {
        Init::Const(v) => out.fill(v),
        Init::Std(std) => {
            // Uniform on [-a, a] has std a / sqrt 3.
            let a = std * 3f32.sqrt();
            out.par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(ci, chunk)| {
                    let mut s = seed ^ (ci as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
                    for v in chunk {
                        let u = (splitmix(&mut s) >> 40) as f32 / (1u64 << 24) as f32;
                        *v = (2.0 * u - 1.0) * a;
                    }
                });
        }
    }
}

/// Bytes of the weights `arch` would have.
pub fn weight_bytes(arch: &str) -> Option<u64> {
    specs(arch).map(|(s, _)| {
        s.iter()
            .map(|t| 4 * t.shape.iter().product::<usize>() as u64)
            .sum()
    })
}

/// The largest group of tensors (timm's module: `blocks.3`, `stages.1.downsample`; see
/// [`group_of`](crate::models::group_of)) of `arch` and its bytes. Every group lies within one of the
/// blocks the executor pages in at once, so this is a lower bound on the minimum budget for `arch`,
/// known without writing or opening its file.
pub fn largest_group(arch: &str) -> Option<(String, u64)> {
    let (specs, _) = specs(arch)?;
    let mut groups: Vec<(&str, u64)> = Vec::new();
    for s in &specs {
        let g = crate::models::group_of(&s.name);
        let bytes = 4 * s.shape.iter().product::<usize>() as u64;
        match groups.iter_mut().find(|(name, _)| *name == g) {
            Some((_, total)) => *total += bytes,
            None => groups.push((g, bytes)),
        }
    }
    // The first of equal groups (`blocks.0`, not `blocks.23`).
    let (g, bytes) = groups.into_iter().rev().max_by_key(|&(_, bytes)| bytes)?;
    Some((g.trim_end_matches('.').to_string(), bytes))
}

/// Writes `out/model.safetensors` and `out/config.json` for `arch`. Refuses to overwrite existing files;
/// an error or an interruption leaves neither half-written.
/// `progress(bytes_written)` is called as the data is written.
pub fn write(arch: &str, out: &Path, seed: u64, mut progress: impl FnMut(u64)) -> Result<()> {
    let Some((mut specs, cfg)) = specs(arch) else {
        return Err(Error::UnknownArch {
            arch: arch.into(),
            known: ARCHITECTURES.join(", "),
        });
    };
    let weights = out.join("model.safetensors");
    let config = out.join("config.json");
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    for p in [&weights, &config] {
        output::check(p, None, Existing::Refuse, &[])?;
    }
    // timm's files (torch state dict through safetensors' Python writer) hold tensors sorted by name.
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut offset = 0usize;
    let offsets: Vec<(usize, usize)> = specs
        .iter()
        .map(|s| {
            let begin = offset;
            offset += 4 * s.shape.iter().product::<usize>();
            (begin, offset)
        })
        .collect();
    let entries = specs.iter().zip(&offsets).map(|(s, &offsets)| HeaderEntry {
        name: &s.name,
        dtype: safetensors::Dtype::F32,
        shape: &s.shape,
        offsets,
    });
    // The marker travels with the weights (copies, `convert` outputs), where config.json may not.
    let marker = serde_json::json!({"seed": seed, "note": SYNTHETIC_NOTE}).to_string();
    let metadata = [(crate::models::SYNTHETIC_KEY.to_string(), marker)].into();
    let header = writer::header(&metadata, entries, 8);
    let mut w = PartialFile::create(output::partial_path(&weights)?)?;
    w.write_header(&header)?;
    let mut written = 0u64;
    for (i, s) in specs.iter().enumerate() {
        let mut values = vec![0f32; s.shape.iter().product()];
        fill(
            &mut values,
            s.init,
            seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ i as u64,
        );
        w.write_all(bytemuck::cast_slice(&values))?;
        written += 4 * values.len() as u64;
        progress(written);
    }
    let text =
        serde_json::to_string_pretty(&config_json(arch, &cfg, seed)).expect("JSON of plain values");
    // The weights reach the disk first, then config.json is put in place, then the weights: an interruption
    // between the two renames (a moment) leaves a config.json the next synth names, never weights that a
    // later run would preprocess without their config.
    w.sync_uncached()?;
    output::write_atomic(&config, (text + "\n").as_bytes())?;
    w.finish_as(&weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_models_have_the_known_sizes() {
        // Tensor counts of timm's own exports of these architectures.
        let count = |a: &str| specs(a).unwrap().0.len();
        assert_eq!(count("vit_large_patch16_224"), 296);
        assert_eq!(count("convnext_large"), 344);
        assert_eq!(count("swin_large_patch4_window7_224"), 329);
        let total: u64 = [
            "vit_large_patch16_224",
            "convnext_large",
            "swin_large_patch4_window7_224",
        ]
        .iter()
        .map(|a| weight_bytes(a).unwrap())
        .sum();
        assert!((2_700_000_000..2_900_000_000).contains(&total), "{total}");
    }
}
