//! Vision Transformer as timm's `VisionTransformer` computes it (`vit_*_patch16_224`, `patch14`, 384
//! variants): conv patch embed, class token, learned position embedding, pre-norm blocks (LayerNorm eps 1e-6,
//! fused qkv, scale head_dim^-0.5, exact GELU, optional layer scale), final norm, token or average pooling,
//! linear head.

use crate::error::Result;
use crate::models::{input_error, Act, Block, BuildCtx};
use crate::ops::{self, Layout};
use crate::store::Store;

const EPS: f32 = 1e-6;

/// Heads per architecture size, for what shapes cannot tell.
fn preset_heads(arch: &str, dim: usize) -> usize {
    let presets = [
        ("vit_tiny", 3),
        ("vit_small", 6),
        ("vit_base", 12),
        ("vit_large", 16),
        ("vit_huge", 16),
    ];
    presets
        .iter()
        .find(|(p, _)| arch.starts_with(p))
        .map_or(dim / 64, |&(_, h)| h)
}

/// Builds the blocks: `patch_embed`, `blocks.0` .. `blocks.{depth-1}`, `head`.
pub fn build(ctx: &mut BuildCtx) -> Result<Vec<Box<dyn Block>>> {
    let w = ctx.shape("patch_embed.proj.weight")?;
    let &[dim, in_chans, patch, patch_w] = w.as_slice() else {
        return Err(ctx.err(format!(
            "patch_embed.proj.weight has shape {w:?}, expected [dim, 3, p, p]"
        )));
    };
    if patch != patch_w || in_chans != 3 {
        return Err(ctx.err(format!(
            "patch_embed.proj.weight has shape {w:?}, expected square patches over 3 channels"
        )));
    }
    let depth = ctx.count("blocks.", "attn.qkv.weight");
    let arch = ctx.config.architecture.clone().unwrap_or_default();
    let heads = ctx
        .config
        .arg_usize("num_heads")
        .unwrap_or_else(|| preset_heads(&arch, dim));
    if heads == 0 || dim % heads != 0 {
        return Err(ctx.err(format!(
            "{heads} heads do not divide the embedding width {dim}"
        )));
    }
    let pos = ctx.shape("pos_embed")?;
    let &[1, tokens, pos_dim] = pos.as_slice() else {
        return Err(ctx.err(format!(
            "pos_embed has shape {pos:?}, expected [1, tokens, {dim}]"
        )));
    };
    if pos_dim != dim || tokens < 2 {
        return Err(ctx.err(format!(
            "pos_embed has shape {pos:?}, expected [1, tokens, {dim}]"
        )));
    }

    let mut blocks: Vec<Box<dyn Block>> = Vec::with_capacity(depth + 2);
    let mut tensors = vec![
        ctx.expect("patch_embed.proj.weight", &[dim, 3, patch, patch])?,
        ctx.expect("patch_embed.proj.bias", &[dim])?,
        ctx.expect("cls_token", &[1, 1, dim])?,
        ctx.expect("pos_embed", &[1, tokens, dim])?,
    ];
    let norm_pre = ctx.optional("norm_pre.weight", &[dim])?.is_some();
    if norm_pre {
        tensors.push("norm_pre.weight".into());
        tensors.push(ctx.expect("norm_pre.bias", &[dim])?);
    }
    blocks.push(Box::new(PatchEmbed {
        tensors,
        dim,
        patch,
        tokens,
        norm_pre,
    }));

    let hidden = ctx.shape("blocks.0.mlp.fc1.weight")?[0];
    for i in 0..depth {
        let p = format!("blocks.{i}.");
        let n = |s: &str| format!("{p}{s}");
        let mut tensors = vec![
            ctx.expect(&n("norm1.weight"), &[dim])?,
            ctx.expect(&n("norm1.bias"), &[dim])?,
            ctx.expect(&n("attn.qkv.weight"), &[3 * dim, dim])?,
            ctx.expect(&n("attn.proj.weight"), &[dim, dim])?,
            ctx.expect(&n("attn.proj.bias"), &[dim])?,
            ctx.expect(&n("norm2.weight"), &[dim])?,
            ctx.expect(&n("norm2.bias"), &[dim])?,
            ctx.expect(&n("mlp.fc1.weight"), &[hidden, dim])?,
            ctx.expect(&n("mlp.fc1.bias"), &[hidden])?,
            ctx.expect(&n("mlp.fc2.weight"), &[dim, hidden])?,
            ctx.expect(&n("mlp.fc2.bias"), &[dim])?,
        ];
        let qkv_bias = ctx.optional(&n("attn.qkv.bias"), &[3 * dim])?;
        let ls1 = ctx.optional(&n("ls1.gamma"), &[dim])?;
        let ls2 = ctx.optional(&n("ls2.gamma"), &[dim])?;
        tensors.extend(
            [qkv_bias.clone(), ls1.clone(), ls2.clone()]
                .into_iter()
                .flatten(),
        );
        blocks.push(Box::new(EncoderBlock {
            name: format!("blocks.{i}"),
            prefix: p,
            tensors,
            dim,
            heads,
            qkv_bias: qkv_bias.is_some(),
            ls1: ls1.is_some(),
            ls2: ls2.is_some(),
        }));
    }

    let head = ctx.shape("head.weight")?;
    let classes = head[0];
    let pool = match ctx
        .config
        .model_args
        .get("global_pool")
        .and_then(|v| v.as_str())
    {
        None | Some("token") => Pool::Token,
        Some("avg") => Pool::Avg,
        Some(other) => {
            return Err(ctx.err(format!(
                "global_pool `{other}` is not supported (token, avg)"
            )))
        }
    };
    let mut tensors = vec![
        ctx.expect("head.weight", &[classes, dim])?,
        ctx.expect("head.bias", &[classes])?,
    ];
    // timm replaces the final norm by fc_norm (after pooling) for average pooling.
    let norm = ctx.optional("norm.weight", &[dim])?.is_some();
    if norm {
        tensors.push("norm.weight".into());
        tensors.push(ctx.expect("norm.bias", &[dim])?);
    }
    let fc_norm = ctx.optional("fc_norm.weight", &[dim])?.is_some();
    if fc_norm {
        tensors.push("fc_norm.weight".into());
        tensors.push(ctx.expect("fc_norm.bias", &[dim])?);
    }
    blocks.push(Box::new(Head {
        tensors,
        dim,
        classes,
        pool,
        norm,
        fc_norm,
    }));
    ctx.num_classes = Some(classes);
    Ok(blocks)
}

/// Patch embedding, class token and position embedding: `[b, 3, h, w]` -> `[b, tokens, dim]`.
struct PatchEmbed {
    tensors: Vec<String>,
    dim: usize,
    patch: usize,
    tokens: usize,
    norm_pre: bool,
}

impl Block for PatchEmbed {
    fn name(&self) -> &str {
        "patch_embed"
    }

    fn tensors(&self) -> &[String] {
        &self.tensors
    }

    fn forward(&self, s: &Store, x: Act) -> Result<Act> {
        let &[b, c, h, w] = x.shape.as_slice() else {
            return Err(input_error(
                s,
                format!("expected a [batch, 3, h, w] image, got {:?}", x.shape),
            ));
        };
        let (gh, gw) = (h / self.patch, w / self.patch);
        if c != 3 || gh * gw + 1 != self.tokens || h % self.patch != 0 || w % self.patch != 0 {
            return Err(input_error(
                s,
                format!(
                    "input {c}x{h}x{w} does not fit: the position embedding holds {} patches of {}x{} over 3 channels",
                    self.tokens - 1,
                    self.patch,
                    self.patch
                ),
            ));
        }
        let dim = self.dim;
        let patches = ops::patch_conv(
            &x.data,
            Layout::Nchw,
            (b, c, h, w),
            self.patch,
            &s.weight("patch_embed.proj.weight")?,
            Some(&s.floats("patch_embed.proj.bias")?),
            dim,
        );
        let cls = s.floats("cls_token")?;
        let pos = s.floats("pos_embed")?;
        let mut out = vec![0.0f32; b * self.tokens * dim];
        for (bi, seq) in out.chunks_exact_mut(self.tokens * dim).enumerate() {
            seq[..dim].copy_from_slice(&cls);
            seq[dim..].copy_from_slice(
                &patches[bi * (self.tokens - 1) * dim..(bi + 1) * (self.tokens - 1) * dim],
            );
            for (v, p) in seq.iter_mut().zip(pos.iter()) {
                *v += p;
            }
        }
        if self.norm_pre {
            ops::layer_norm(
                &mut out,
                dim,
                &s.floats("norm_pre.weight")?,
                &s.floats("norm_pre.bias")?,
                EPS,
            );
        }
        Ok(Act::new(out, vec![b, self.tokens, dim]))
    }
}

/// A pre-norm transformer block: `x + ls1(attn(norm1(x)))`, then `x + ls2(mlp(norm2(x)))`.
struct EncoderBlock {
    name: String,
    prefix: String,
    tensors: Vec<String>,
    dim: usize,
    heads: usize,
    qkv_bias: bool,
    ls1: bool,
    ls2: bool,
}

impl EncoderBlock {
    fn n(&self, s: &str) -> String {
        format!("{}{s}", self.prefix)
    }
}

/// `x += gamma * y` (gamma absent: `x += y`).
fn add_scaled(x: &mut [f32], y: &[f32], gamma: Option<&[f32]>) {
    use rayon::prelude::*;
    let dim = gamma.map_or(y.len().max(1), |g| g.len());
    x.par_chunks_mut(dim)
        .zip(y.par_chunks(dim))
        .for_each(|(xr, yr)| match gamma {
            Some(g) => xr
                .iter_mut()
                .zip(yr)
                .zip(g)
                .for_each(|((a, b), g)| *a += g * b),
            None => xr.iter_mut().zip(yr).for_each(|(a, b)| *a += b),
        });
}

impl Block for EncoderBlock {
    fn name(&self) -> &str {
        &self.name
    }

    fn tensors(&self) -> &[String] {
        &self.tensors
    }

    fn forward(&self, s: &Store, mut x: Act) -> Result<Act> {
        let (b, t, dim) = (x.shape[0], x.shape[1], self.dim);
        let rows = b * t;
        let f = |name: &str| s.floats(&self.n(name));
        let m = |name: &str| s.weight(&self.n(name));
        let gamma = |on: bool, name: &str| if on { f(name).map(Some) } else { Ok(None) };

        let mut h = x.data.clone();
        ops::layer_norm(&mut h, dim, &f("norm1.weight")?, &f("norm1.bias")?, EPS);
        let qkv_bias = gamma(self.qkv_bias, "attn.qkv.bias")?;
        let qkv = ops::linear_weight(
            &h,
            rows,
            &m("attn.qkv.weight")?,
            3 * dim,
            qkv_bias.as_deref(),
        );
        let attn = ops::attention(&qkv, b, t, self.heads, dim / self.heads, None);
        let proj = ops::linear_weight(
            &attn,
            rows,
            &m("attn.proj.weight")?,
            dim,
            Some(&f("attn.proj.bias")?),
        );
        add_scaled(&mut x.data, &proj, gamma(self.ls1, "ls1.gamma")?.as_deref());

        let mut h = x.data.clone();
        ops::layer_norm(&mut h, dim, &f("norm2.weight")?, &f("norm2.bias")?, EPS);
        let out = ops::mlp(
            &h,
            rows,
            &m("mlp.fc1.weight")?,
            &f("mlp.fc1.bias")?,
            &m("mlp.fc2.weight")?,
            Some(&f("mlp.fc2.bias")?),
            dim,
        );
        add_scaled(&mut x.data, &out, gamma(self.ls2, "ls2.gamma")?.as_deref());
        Ok(x)
    }
}

#[derive(Clone, Copy)]
enum Pool {
    /// The class token.
    Token,
    /// The mean of the patch tokens.
    Avg,
}

/// Final norm, pooling, optional fc_norm, classifier: `[b, tokens, dim]` -> `[b, classes]`.
struct Head {
    tensors: Vec<String>,
    dim: usize,
    classes: usize,
    pool: Pool,
    norm: bool,
    fc_norm: bool,
}

impl Block for Head {
    fn name(&self) -> &str {
        "head"
    }

    fn tensors(&self) -> &[String] {
        &self.tensors
    }

    fn forward(&self, s: &Store, x: Act) -> Result<Act> {
        let (b, t, dim) = (x.shape[0], x.shape[1], self.dim);
        let norm = |x: &mut [f32]| -> Result<()> {
            if self.norm {
                ops::layer_norm(
                    x,
                    dim,
                    &s.floats("norm.weight")?,
                    &s.floats("norm.bias")?,
                    EPS,
                );
            }
            Ok(())
        };
        let mut pooled = vec![0.0f32; b * dim];
        match self.pool {
            Pool::Token => {
                // Only the class token reaches the head, so only it needs the final norm.
                for (bi, dst) in pooled.chunks_exact_mut(dim).enumerate() {
                    dst.copy_from_slice(&x.data[bi * t * dim..bi * t * dim + dim]);
                }
                norm(&mut pooled)?;
            }
            Pool::Avg => {
                let mut normed = x.data;
                norm(&mut normed)?;
                for (bi, dst) in pooled.chunks_exact_mut(dim).enumerate() {
                    for ti in 1..t {
                        let row = &normed[(bi * t + ti) * dim..(bi * t + ti + 1) * dim];
                        dst.iter_mut().zip(row).for_each(|(d, v)| *d += v);
                    }
                    dst.iter_mut().for_each(|d| *d /= (t - 1) as f32);
                }
            }
        }
        if self.fc_norm {
            ops::layer_norm(
                &mut pooled,
                dim,
                &s.floats("fc_norm.weight")?,
                &s.floats("fc_norm.bias")?,
                EPS,
            );
        }
        let logits = ops::linear_weight(
            &pooled,
            b,
            &s.weight("head.weight")?,
            self.classes,
            Some(&s.floats("head.bias")?),
        );
        Ok(Act::new(logits, vec![b, self.classes]))
    }
}
