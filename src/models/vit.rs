//! Vision Transformer as timm's `VisionTransformer` computes it (`vit_*_patch16_224`, `patch14`, 384
//! variants): conv patch embed, class token, learned position embedding, pre-norm blocks (LayerNorm eps 1e-6,
//! fused qkv, scale head_dim^-0.5, exact GELU, optional layer scale), final norm, token or average pooling,
//! linear head.

use crate::error::Result;
use crate::models::layers::{Bias, LayerNorm, Linear, Mlp, PatchConv};
use crate::models::{Act, Block, BuildCtx, Forward, Param, Planned, Weights};
use crate::ops::{self, elementwise, Layout};

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
pub fn build(ctx: &mut BuildCtx) -> Result<Vec<Block>> {
    let [dim, in_chans, patch, patch_w] = ctx.dims("patch_embed.proj.weight")?;
    if patch != patch_w || in_chans != 3 {
        return Err(ctx.err(format!(
            "patch_embed.proj.weight has shape {:?}, expected square patches over 3 channels",
            [dim, in_chans, patch, patch_w]
        )));
    }
    let depth = ctx.count("blocks.", "attn.qkv.weight");
    let arch = ctx.config.architecture.clone().unwrap_or_default();
    let heads = ctx
        .config
        .arg_usize("num_heads")
        .map_err(|m| ctx.err(m))?
        .unwrap_or_else(|| preset_heads(&arch, dim));
    if heads == 0 || dim % heads != 0 {
        return Err(ctx.err(format!(
            "{heads} heads do not divide the embedding width {dim}"
        )));
    }
    let pos = ctx.dims("pos_embed")?;
    let [1, tokens, pos_dim] = pos else {
        return Err(ctx.err(format!(
            "pos_embed has shape {pos:?}, expected [1, tokens, {dim}]"
        )));
    };
    if pos_dim != dim || tokens < 2 {
        return Err(ctx.err(format!(
            "pos_embed has shape {pos:?}, expected [1, tokens, {dim}]"
        )));
    }

    let mut blocks = Vec::with_capacity(depth + 2);
    ctx.begin_block("patch_embed");
    let embed = PatchEmbed {
        proj: PatchConv::new(ctx, "patch_embed.proj", (dim, 3, patch), Bias::Yes)?,
        cls_token: ctx.param("cls_token", &[1, 1, dim])?,
        pos_embed: ctx.param("pos_embed", &[1, tokens, dim])?,
        norm_pre: LayerNorm::optional(ctx, "norm_pre", dim, EPS)?,
        tokens,
    };
    blocks.push(Block::new(ctx.end_block(), embed));

    let [hidden, _] = ctx.dims("blocks.0.mlp.fc1.weight")?;
    for i in 0..depth {
        let p = format!("blocks.{i}");
        ctx.begin_block(&p);
        let block = EncoderBlock {
            norm1: LayerNorm::new(ctx, &format!("{p}.norm1"), dim, EPS)?,
            qkv: Linear::new(ctx, &format!("{p}.attn.qkv"), dim, 3 * dim, Bias::Optional)?,
            proj: Linear::new(ctx, &format!("{p}.attn.proj"), dim, dim, Bias::Yes)?,
            ls1: ctx.optional(&format!("{p}.ls1.gamma"), &[dim])?,
            norm2: LayerNorm::new(ctx, &format!("{p}.norm2"), dim, EPS)?,
            mlp: Mlp::new(ctx, &format!("{p}.mlp"), dim, hidden)?,
            ls2: ctx.optional(&format!("{p}.ls2.gamma"), &[dim])?,
            heads,
        };
        blocks.push(Block::new(ctx.end_block(), block));
    }

    let [classes, _] = ctx.dims("head.weight")?;
    ctx.classes("head.weight", classes)?;
    let pool = match ctx.config.arg_str("global_pool").map_err(|m| ctx.err(m))? {
        None | Some("token") => Pool::Token,
        Some("avg") => Pool::Avg,
        Some(other) => {
            return Err(ctx.err(format!(
                "global_pool `{other}` is not supported (token, avg)"
            )))
        }
    };
    ctx.begin_block("head");
    // timm replaces the final norm by fc_norm (after pooling) for average pooling.
    let norm = LayerNorm::optional(ctx, "norm", dim, EPS)?;
    let fc_norm = LayerNorm::optional(ctx, "fc_norm", dim, EPS)?;
    // timm's `forward_head(x, pre_logits=True)`: norms and pooling; the classifier follows.
    let features_meta = ctx.open_meta();
    let head = Head {
        norm,
        fc_norm,
        fc: Linear::new(ctx, "head", dim, classes, Bias::Yes)?.weight_only(),
        pool,
        logits: true,
    };
    ctx.features_head(Block::new(
        features_meta,
        Head {
            logits: false,
            ..head
        },
    ));
    blocks.push(Block::new(ctx.end_block(), head));
    Ok(blocks)
}

/// Patch embedding, class token and position embedding: `[b, 3, h, w]` -> `[b, tokens, dim]`.
struct PatchEmbed {
    proj: PatchConv,
    cls_token: Param,
    pos_embed: Param,
    norm_pre: Option<LayerNorm>,
    tokens: usize,
}

impl PatchEmbed {
    /// Checks an image shape `[b, 3, h, w]` against the position embedding; returns `(b, h, w)`.
    fn check(&self, w: &Weights, shape: &[usize]) -> Result<(usize, usize, usize)> {
        let &[b, c, h, wd] = shape else {
            return Err(w.input_error(format!("expected a [batch, 3, h, w] image, got {shape:?}")));
        };
        let patch = self.proj.k;
        let (gh, gw) = (h / patch, wd / patch);
        if c != 3 || gh * gw + 1 != self.tokens || h % patch != 0 || wd % patch != 0 {
            return Err(w.input_error(format!(
                "input {c}x{h}x{wd} does not fit: the position embedding holds {} patches of {patch}x{patch} \
                 over 3 channels",
                self.tokens - 1,
            )));
        }
        Ok((b, h, wd))
    }
}

impl Forward for PatchEmbed {
    fn plan(&self, w: &Weights, input: &[usize]) -> Result<Planned> {
        let (b, h, wd) = self.check(w, input)?;
        let (t, dim, k) = (self.tokens, self.proj.out, self.proj.k);
        // The image, the conv's patch rows (im2col), its output and the token sequence.
        let live = b * 3 * h * wd + b * (t - 1) * (3 * k * k + dim) + b * t * dim;
        Ok(Planned {
            output: vec![b, t, dim],
            live,
        })
    }

    fn forward(&self, w: &Weights, x: Act) -> Result<Act> {
        let (b, h, wd) = self.check(w, &x.shape)?;
        let dim = self.proj.out;
        let patches = self.proj.forward(w, &x.data, Layout::Nchw, (b, h, wd))?;
        let cls = w.floats(self.cls_token)?;
        let pos = w.floats(self.pos_embed)?;
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
        if let Some(norm) = &self.norm_pre {
            norm.apply(w, &mut out)?;
        }
        Ok(Act::new(out, vec![b, self.tokens, dim]))
    }
}

/// A pre-norm transformer block: `x + ls1(attn(norm1(x)))`, then `x + ls2(mlp(norm2(x)))`.
struct EncoderBlock {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ls1: Option<Param>,
    norm2: LayerNorm,
    mlp: Mlp,
    ls2: Option<Param>,
    heads: usize,
}

impl Forward for EncoderBlock {
    fn plan(&self, w: &Weights, input: &[usize]) -> Result<Planned> {
        let dim = self.proj.out_dim;
        let &[b, t, xd] = input else {
            return Err(w.input_error(format!(
                "expected tokens [batch, tokens, {dim}], got {input:?}"
            )));
        };
        if xd != dim {
            return Err(w.input_error(format!(
                "expected tokens [batch, tokens, {dim}], got {input:?}"
            )));
        }
        // The forward drops each buffer once used; the largest sets alive at once: x with norm1's copy and
        // qkv (3 dim), x with qkv and the attention output, and x with norm2's copy, the MLP's hidden
        // activation and its output.
        Ok(Planned {
            output: input.to_vec(),
            live: b * t * (5 * dim).max(3 * dim + self.mlp.hidden),
        })
    }

    fn forward(&self, w: &Weights, mut x: Act) -> Result<Act> {
        let dim = self.proj.out_dim;
        let &[b, t, xd] = x.shape.as_slice() else {
            return Err(w.input_error(format!(
                "expected tokens [batch, tokens, {dim}], got {:?}",
                x.shape
            )));
        };
        if xd != dim {
            return Err(w.input_error(format!(
                "expected tokens [batch, tokens, {dim}], got {:?}",
                x.shape
            )));
        }
        let rows = b * t;

        let mut h = x.data.clone();
        self.norm1.apply(w, &mut h)?;
        let qkv = self.qkv.forward(w, &h, rows)?;
        drop(h);
        let products = self.qkv.attention_products(w)?;
        let attn = ops::attention(&qkv, b, t, self.heads, dim / self.heads, None, products);
        drop(qkv);
        let ls1 = w.maybe_floats(self.ls1)?;
        if !self
            .proj
            .add_to(w, &attn, rows, &mut x.data, ls1.as_deref())?
        {
            let proj = self.proj.forward(w, &attn, rows)?;
            elementwise::add_scaled(&mut x.data, &proj, ls1.as_deref());
        }
        drop(attn);

        let mut h = x.data.clone();
        self.norm2.apply(w, &mut h)?;
        let ls2 = w.maybe_floats(self.ls2)?;
        if !self.mlp.add_to(w, &h, rows, &mut x.data, ls2.as_deref())? {
            let out = self.mlp.forward(w, &h, rows)?;
            elementwise::add_scaled(&mut x.data, &out, ls2.as_deref());
        }
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

/// Final norm, pooling, optional fc_norm, classifier: `[b, tokens, dim]` -> `[b, classes]`; without
/// `logits`, the pooled features before the classifier (which it then never reads).
#[derive(Clone, Copy)]
struct Head {
    norm: Option<LayerNorm>,
    fc_norm: Option<LayerNorm>,
    fc: Linear,
    pool: Pool,
    logits: bool,
}

impl Forward for Head {
    fn plan(&self, w: &Weights, input: &[usize]) -> Result<Planned> {
        let dim = self.fc.in_dim;
        match *input {
            [b, t, xd] if xd == dim && t >= 2 && !self.logits => Ok(Planned {
                output: vec![b, dim],
                live: b * t * dim + 2 * b * dim,
            }),
            [b, t, xd] if xd == dim && t >= 2 => Ok(Planned {
                output: vec![b, self.fc.out_dim],
                live: b * t * dim + 2 * b * dim + b * self.fc.out_dim,
            }),
            _ => Err(w.input_error(format!(
                "expected tokens [batch, tokens, {dim}], got {input:?}"
            ))),
        }
    }

    fn forward(&self, w: &Weights, x: Act) -> Result<Act> {
        let dim = self.fc.in_dim;
        let &[b, t, xd] = x.shape.as_slice() else {
            return Err(w.input_error(format!(
                "expected tokens [batch, tokens, {dim}], got {:?}",
                x.shape
            )));
        };
        if xd != dim || t < 2 {
            return Err(w.input_error(format!(
                "expected tokens [batch, tokens, {dim}], got {:?}",
                x.shape
            )));
        }
        let norm = |x: &mut [f32]| match &self.norm {
            Some(n) => n.apply(w, x),
            None => Ok(()),
        };
        let mut pooled = match self.pool {
            Pool::Token => {
                // Only the class token reaches the head, so only it needs the final norm.
                let mut pooled = vec![0.0f32; b * dim];
                for (bi, dst) in pooled.chunks_exact_mut(dim).enumerate() {
                    dst.copy_from_slice(&x.data[bi * t * dim..bi * t * dim + dim]);
                }
                norm(&mut pooled)?;
                pooled
            }
            Pool::Avg => {
                let mut normed = x.data;
                norm(&mut normed)?;
                elementwise::mean_pool(&normed, (b, t, dim), 1)
            }
        };
        if let Some(n) = &self.fc_norm {
            n.apply(w, &mut pooled)?;
        }
        if !self.logits {
            return Ok(Act::new(pooled, vec![b, dim]));
        }
        let logits = self.fc.forward(w, &pooled, b)?;
        Ok(Act::new(logits, vec![b, self.fc.out_dim]))
    }
}
