//! Swin Transformer as timm's `SwinTransformer` computes it (`swin_{tiny,small,base,large}_patch4_window7_224`,
//! `*_window12_384`): a `p x p` stride-`p` patch embedding + LayerNorm, stages that open (from the second on)
//! with patch merging (2x2 neighbourhood concat -> LayerNorm -> bias-free linear), Swin blocks with window
//! attention (relative position bias, cyclic shift by `window // 2` on odd blocks with timm's -100 region
//! mask, windows and shifts clamped to the feature map as `_calc_window_shift` does, zero padding to whole
//! windows), exact-GELU MLPs, LayerNorm eps 1e-5 everywhere, a final norm, global average pooling and
//! `head.fc`. Activations stay NHWC `[b, h, w, c]` as in timm.
//!
//! Everything comes from tensor names and shapes: stages and depths from `layers.{s}.blocks.{b}`, widths from
//! the norms, heads from `relative_position_bias_table` (`[(2w-1)^2, heads]`), the window from its length.
//! The image size (which fixes the windows, shifts and masks) comes from `config.json`.
//!
//! The relative position index and the shift masks are timm's non-persistent buffers: they are computed here
//! at build (small), so forward only reads the bias table from the mapping. Checkpoints in the original
//! Microsoft layout (patch merging stored at the end of stage `s` as `layers.{s}.downsample`, classifier as
//! `head.`) are remapped as timm's `checkpoint_filter_fn` does; stale `relative_position_index` /
//! `attn_mask` buffers stored as f32 are claimed and ignored, other dtypes are refused with an explanation.

use rayon::prelude::*;

use crate::error::Result;
use crate::models::layers::{Bias, LayerNorm, Linear, Mlp, PatchConv};
use crate::models::{Act, Block, BuildCtx, Forward, Param, Planned, Weights};
use crate::ops::{self, elementwise, Layout};

/// `nn.LayerNorm`'s default, used by every norm in timm's Swin.
const EPS: f32 = 1e-5;

/// timm's `get_relative_position_index(win_h, win_w)`, flattened: entry `i * n + j` (n = win_h * win_w,
/// tokens row-major in the window) is the row of `relative_position_bias_table` that biases the score of
/// query token `i` against key token `j`: `(yi - yj + win_h - 1) * (2 win_w - 1) + (xi - xj + win_w - 1)`.
pub fn relative_position_index(win_h: usize, win_w: usize) -> Vec<u32> {
    let n = win_h * win_w;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n {
        let (yi, xi) = (i / win_w, i % win_w);
        for j in 0..n {
            let (yj, xj) = (j / win_w, j % win_w);
            let dy = yi + win_h - 1 - yj;
            let dx = xi + win_w - 1 - xj;
            idx.push((dy * (2 * win_w - 1) + dx) as u32);
        }
    }
    idx
}

/// Python's `range(len)[start:end]` for the slice bounds timm's `get_attn_mask` uses (negative = from the
/// end; `-0` is `0`, so a zero shift makes `(-shift, None)` the whole axis, as in timm).
fn py_slice(start: isize, end: Option<isize>, len: usize) -> std::ops::Range<usize> {
    let len = len as isize;
    let fix = |v: isize| if v < 0 { (v + len).max(0) } else { v.min(len) };
    let (a, b) = (fix(start), end.map_or(len, fix));
    a as usize..b.max(a) as usize
}

/// timm's `SwinTransformerBlock.get_attn_mask` for a `(h, w)` feature map, window `(win_h, win_w)` and shift
/// `(shift_h, shift_w)`: `[num_windows, n, n]` (n = win_h * win_w), 0 where query and key come from the same
/// region of the shifted, padded map and -100 elsewhere. Empty when there is no shift (timm's `None`).
pub fn shift_mask(
    (h, w): (usize, usize),
    (win_h, win_w): (usize, usize),
    (shift_h, shift_w): (usize, usize),
) -> Vec<f32> {
    if shift_h == 0 && shift_w == 0 {
        return Vec::new();
    }
    let hp = h.div_ceil(win_h) * win_h;
    let wp = w.div_ceil(win_w) * win_w;
    let mut img = vec![0u32; hp * wp];
    let bounds = |win: usize, shift: usize| {
        let (win, shift) = (win as isize, shift as isize);
        [(0, Some(-win)), (-win, Some(-shift)), (-shift, None)]
    };
    let mut cnt = 0;
    for (h0, h1) in bounds(win_h, shift_h) {
        for (w0, w1) in bounds(win_w, shift_w) {
            for y in py_slice(h0, h1, hp) {
                for x in py_slice(w0, w1, wp) {
                    img[y * wp + x] = cnt;
                }
            }
            cnt += 1;
        }
    }
    let (nwh, nww) = (hp / win_h, wp / win_w);
    let n = win_h * win_w;
    let mut mask = vec![0.0f32; nwh * nww * n * n];
    for (wi, m) in mask.chunks_exact_mut(n * n).enumerate() {
        let (wy, wx) = (wi / nww, wi % nww);
        let label = |t: usize| img[(wy * win_h + t / win_w) * wp + wx * win_w + t % win_w];
        for i in 0..n {
            for j in 0..n {
                if label(i) != label(j) {
                    m[i * n + j] = -100.0;
                }
            }
        }
    }
    mask
}

/// The image size the model is built for: `model_args.img_size`, else `pretrained_cfg.input_size`, else
/// timm's default 224. Both given and different is refused (timm would refuse every input of one of them).
fn image_size(ctx: &BuildCtx) -> Result<(usize, usize)> {
    let from_args = match ctx.config.arg_usizes("img_size", 2) {
        Ok(None) => None,
        Ok(Some(v)) if v.len() == 2 => Some((v[0], v[1])),
        _ => {
            return Err(ctx.err(format!(
                "config.json model_args.img_size is {}, expected a size or [height, width]",
                ctx.config.model_args["img_size"]
            )))
        }
    };
    let from_cfg = ctx
        .config
        .pretrained_cfg
        .as_ref()
        .and_then(|p| p.input_size);
    let size = match (from_args, from_cfg) {
        (Some(a), Some([_, h, w])) if a != (h, w) => Err(ctx.err(format!(
            "config.json disagrees on the image size: model_args.img_size {}x{} but pretrained_cfg.input_size \
             {h}x{w}; Swin's windows and masks are fixed for one size",
            a.0, a.1
        ))),
        (Some(a), _) => Ok(a),
        (None, _) => {
            let [_, h, w] = ctx.config.input_size();
            Ok((h, w))
        }
    }?;
    // The shift masks are built for this size at load, so an absurd one must stop here (it also kept the
    // padded sizes from overflowing): the same bound as an image's side.
    if size.0.max(size.1) > crate::preprocess::MAX_SIDE as usize {
        return Err(ctx.err(format!(
            "config.json's image size {}x{} is over {} pixels a side",
            size.0,
            size.1,
            crate::preprocess::MAX_SIDE
        )));
    }
    Ok(size)
}

/// The (clamped) window of a block on an `res` feature map and the target window `t` it was clamped from,
/// found from the bias table's row count: timm builds the table for `min(res, t)` per axis.
fn block_window(
    ctx: &BuildCtx,
    table: &str,
    rows: usize,
    res: (usize, usize),
) -> Result<((usize, usize), usize)> {
    let clamp = |t: usize| (res.0.min(t), res.1.min(t));
    let rows_for = |(wh, ww): (usize, usize)| (2 * wh - 1) * (2 * ww - 1);
    if let Some(t) = ctx
        .config
        .arg_usize("window_size")
        .map_err(|m| ctx.err(m))?
    {
        let win = clamp(t.max(1));
        if rows_for(win) != rows {
            return Err(ctx.err(format!(
                "`{table}` has {rows} rows, but config.json's window_size {t} on the {}x{} feature map gives a \
                 {}x{} window with {} rows",
                res.0,
                res.1,
                win.0,
                win.1,
                rows_for(win)
            )));
        }
        return Ok((win, t));
    }
    (1..=res.0.max(res.1))
        .find(|&t| rows_for(clamp(t)) == rows)
        .map(|t| (clamp(t), t))
        .ok_or_else(|| {
            ctx.err(format!(
                "`{table}` has {rows} rows, which is (2w-1)^2 for no window w that fits the {}x{} feature map \
                 (wrong image size in config.json?)",
                res.0, res.1
            ))
        })
}

/// Old checkpoints may still hold timm's non-persistent buffers. f32 copies are claimed (shape-checked) and
/// ignored: wstream recomputes them. Others cannot be claimed, so they are refused with the reason.
fn claim_buffer(ctx: &mut BuildCtx, name: &str, shape: &[usize]) -> Result<()> {
    let Ok(info) = ctx.store.info(name) else {
        return Ok(());
    };
    if info.dtype != safetensors::Dtype::F32 {
        return Err(ctx.err(format!(
            "`{name}` is timm's non-persistent buffer, stored here as {}; wstream recomputes it and can only \
             skip f32 copies: drop it from the checkpoint (timm's checkpoint_filter_fn skips it too)",
            info.dtype
        )));
    }
    ctx.skip(name, shape)
}

/// Builds the blocks: `patch_embed`, per stage `layers.{s}.downsample` (s >= 1) and `layers.{s}.blocks.{b}`,
/// then `head`.
pub fn build(ctx: &mut BuildCtx) -> Result<Vec<Block>> {
    let w = ctx.dims("patch_embed.proj.weight")?;
    let [dim0, in_chans, patch, patch_w] = w;
    if patch != patch_w || in_chans != 3 {
        return Err(ctx.err(format!(
            "patch_embed.proj.weight has shape {w:?}, expected square patches over 3 channels"
        )));
    }
    if ctx
        .config
        .arg_bool("always_partition")
        .map_err(|m| ctx.err(m))?
        == Some(true)
    {
        return Err(ctx.err("model_args.always_partition = true is not supported"));
    }
    let img = image_size(ctx)?;
    let grid = (img.0 / patch, img.1 / patch);
    if grid.0 == 0 || grid.1 == 0 {
        return Err(ctx.err(format!(
            "image size {}x{} is smaller than one {patch}x{patch} patch",
            img.0, img.1
        )));
    }
    let stages = ctx.count("layers.", "blocks.0.norm1.weight");
    if stages == 0 {
        return Err(ctx.err("no Swin stages (`layers.0.blocks.0.*`) found"));
    }
    // The original layout (timm's checkpoint_filter_fn tells it by this tensor) stores stage s+1's patch
    // merging at the end of stage s and the classifier as `head.`.
    let old = ctx.store.contains("layers.0.downsample.reduction.weight");
    if old
        && ctx.store.contains(&format!(
            "layers.{}.downsample.reduction.weight",
            stages - 1
        ))
    {
        return Err(ctx.err(format!(
            "original-layout checkpoint has a patch merging after its last stage (`layers.{}.downsample`), \
             which no Swin has",
            stages - 1
        )));
    }

    let mut blocks = Vec::new();
    ctx.begin_block("patch_embed");
    let embed = PatchEmbed {
        proj: PatchConv::new(ctx, "patch_embed.proj", (dim0, 3, patch), Bias::Yes)?,
        norm: LayerNorm::new(ctx, "patch_embed.norm", dim0, EPS)?,
        img,
    };
    blocks.push(Block::new(ctx.end_block(), embed));

    let (mut res, mut dim) = (grid, dim0);
    for s in 0..stages {
        let [sdim] = ctx.dims(&format!("layers.{s}.blocks.0.norm1.weight"))?;
        if s > 0 {
            // Where its tensors live: `layers.{s}.downsample`, or `layers.{s-1}.downsample` in the original
            // layout.
            let prefix = format!("layers.{}.downsample", if old { s - 1 } else { s });
            ctx.begin_block(format!("layers.{s}.downsample"));
            let merge = PatchMerging {
                norm: LayerNorm::new(ctx, &format!("{prefix}.norm"), 4 * dim, EPS)?,
                reduction: Linear::new(
                    ctx,
                    &format!("{prefix}.reduction"),
                    4 * dim,
                    sdim,
                    Bias::No,
                )?,
                res,
            };
            blocks.push(Block::new(ctx.end_block(), merge));
            res = (res.0.div_ceil(2), res.1.div_ceil(2));
            dim = sdim;
        } else if sdim != dim0 {
            return Err(ctx.err(format!(
                "layers.0 is {sdim} wide but the patch embedding gives {dim0} (no patch merging in layers.0)"
            )));
        }
        let depth = ctx.count(&format!("layers.{s}.blocks."), "norm1.weight");
        for b in 0..depth {
            blocks.push(SwinBlock::build(ctx, s, b, dim, res)?);
        }
    }

    let pool = ctx.config.arg_str("global_pool").map_err(|m| ctx.err(m))?;
    if !matches!(pool, None | Some("avg")) {
        return Err(ctx.err(format!(
            "global_pool `{}` is not supported (avg)",
            pool.unwrap_or_default()
        )));
    }
    let fc = if old { "head" } else { "head.fc" };
    let head_w = format!("{fc}.weight");
    let [classes, _] = ctx.dims(&head_w)?;
    ctx.classes(&head_w, classes)?;
    ctx.begin_block("head");
    let norm = LayerNorm::new(ctx, "norm", dim, EPS)?;
    // timm's `forward_head(x, pre_logits=True)`: the norm and the pool; the classifier follows.
    let features_meta = ctx.open_meta();
    let head = Head {
        norm,
        fc: Linear::new(ctx, fc, dim, classes, Bias::Yes)?.weight_only(),
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

/// Checks that `x` is `[b, h, w, c]` for this block; returns `b`.
fn check_nhwc(w: &Weights, shape: &[usize], (h, wd): (usize, usize), c: usize) -> Result<usize> {
    match shape {
        &[b, xh, xw, xc] if (xh, xw, xc) == (h, wd, c) => Ok(b),
        other => Err(w.input_error(format!(
            "expected a [batch, {h}, {wd}, {c}] input, got {other:?}"
        ))),
    }
}

/// Conv patch embedding + LayerNorm: `[b, 3, H, W]` -> `[b, H/p, W/p, dim]`.
struct PatchEmbed {
    proj: PatchConv,
    norm: LayerNorm,
    img: (usize, usize),
}

impl PatchEmbed {
    /// Checks the image shape against the size the model is built for; returns the batch.
    fn check(&self, w: &Weights, shape: &[usize]) -> Result<usize> {
        let (ih, iw) = self.img;
        let &[b, c, h, wd] = shape else {
            return Err(w.input_error(format!(
                "expected a [batch, 3, {ih}, {iw}] image, got {shape:?}"
            )));
        };
        if (c, h, wd) != (3, ih, iw) {
            return Err(w.input_error(format!(
                "input {c}x{h}x{wd} does not fit: this Swin is built for 3x{ih}x{iw} images \
                 (its windows and shift masks are fixed for that size)"
            )));
        }
        Ok(b)
    }
}

impl Forward for PatchEmbed {
    fn plan(&self, w: &Weights, input: &[usize]) -> Result<Planned> {
        let b = self.check(w, input)?;
        let ((h, wd), p, out) = (self.img, self.proj.k, self.proj.out);
        let pixels = b * (h / p) * (wd / p);
        // The image, the conv's patch rows (im2col) and its output.
        Ok(Planned {
            output: vec![b, h / p, wd / p, out],
            live: b * 3 * h * wd + pixels * (3 * p * p + out),
        })
    }

    fn forward(&self, w: &Weights, x: Act) -> Result<Act> {
        let b = self.check(w, &x.shape)?;
        let (h, wd) = self.img;
        let p = self.proj.k;
        let mut out = self.proj.forward(w, &x.data, Layout::Nchw, (b, h, wd))?;
        self.norm.apply(w, &mut out)?;
        Ok(Act::new(out, vec![b, h / p, wd / p, self.proj.out]))
    }
}

/// timm's `PatchMerging`: pad to even, concat each 2x2 neighbourhood as (y0 x0, y1 x0, y0 x1, y1 x1),
/// LayerNorm over `4 dim`, bias-free linear to `out_dim`: `[b, h, w, dim]` -> `[b, ceil(h/2), ceil(w/2), out]`.
struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
    res: (usize, usize),
}

impl Forward for PatchMerging {
    fn plan(&self, w: &Weights, input: &[usize]) -> Result<Planned> {
        let (h, wd, c) = (self.res.0, self.res.1, self.reduction.in_dim / 4);
        let b = check_nhwc(w, input, self.res, c)?;
        let (h2, w2) = (h.div_ceil(2), wd.div_ceil(2));
        // The input, the concatenated neighbourhoods and the reduction's output.
        Ok(Planned {
            output: vec![b, h2, w2, self.reduction.out_dim],
            live: b * h * wd * c + b * h2 * w2 * (4 * c + self.reduction.out_dim),
        })
    }

    fn forward(&self, w: &Weights, x: Act) -> Result<Act> {
        let (h, wd, c) = (self.res.0, self.res.1, self.reduction.in_dim / 4);
        let b = check_nhwc(w, &x.shape, self.res, c)?;
        let (h2, w2) = (h.div_ceil(2), wd.div_ceil(2));
        let mut cat = vec![0.0f32; b * h2 * w2 * 4 * c];
        cat.par_chunks_mut(w2 * 4 * c)
            .enumerate()
            .for_each(|(row, dst)| {
                let (bi, y2) = (row / h2, row % h2);
                for x2 in 0..w2 {
                    for k in 0..4 {
                        // timm: reshape(B, H/2, 2, W/2, 2, C).permute(0, 1, 3, 4, 2, 5): w offset major.
                        let (y, xx) = (2 * y2 + k % 2, 2 * x2 + k / 2);
                        if y < h && xx < wd {
                            dst[(x2 * 4 + k) * c..][..c]
                                .copy_from_slice(&x.data[((bi * h + y) * wd + xx) * c..][..c]);
                        }
                    }
                }
            });
        self.norm.apply(w, &mut cat)?;
        let out = self.reduction.forward(w, &cat, b * h2 * w2)?;
        Ok(Act::new(out, vec![b, h2, w2, self.reduction.out_dim]))
    }
}

/// timm's `SwinTransformerBlock`: `x + attn(norm1(x))` over (shifted) windows, then `x + mlp(norm2(x))`.
struct SwinBlock {
    /// `relative_position_bias_table`, `[(2 win_h - 1) * (2 win_w - 1), heads]`.
    table: Param,
    norm1: LayerNorm,
    /// Width of q, k, v and of the attention output: `heads * head_dim`, a third of its output.
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    mlp: Mlp,
    heads: usize,
    /// Feature map, window and cyclic shift, all after timm's clamp.
    res: (usize, usize),
    window: (usize, usize),
    shift: (usize, usize),
    /// Rows of the bias table per (query, key) pair, `[n * n]`.
    rel_index: Vec<u32>,
    /// The shift mask `[num_windows, n, n]`, empty without a shift.
    mask: Vec<f32>,
}

impl SwinBlock {
    fn build(
        ctx: &mut BuildCtx,
        s: usize,
        b: usize,
        dim: usize,
        res: (usize, usize),
    ) -> Result<Block> {
        let prefix = format!("layers.{s}.blocks.{b}");
        let n = |t: &str| format!("{prefix}.{t}");
        let table = n("attn.relative_position_bias_table");
        let [rows, heads] = ctx.dims(&table)?;
        let (window, target) = block_window(ctx, &table, rows, res)?;
        // timm: shift window//2 on odd blocks, 0 along an axis the window covers whole.
        let shift = if b % 2 == 1 {
            (
                if res.0 > window.0 { target / 2 } else { 0 },
                if res.1 > window.1 { target / 2 } else { 0 },
            )
        } else {
            (0, 0)
        };
        let qs: [usize; 2] = ctx.dims(&n("attn.qkv.weight"))?;
        let attn_dim = qs[0] / 3;
        if qs[1] != dim || !qs[0].is_multiple_of(3) || !attn_dim.is_multiple_of(heads) {
            return Err(ctx.err(format!(
                "{} has shape {qs:?}, expected [3 * heads * head_dim, {dim}] with {heads} heads (from the bias \
                 table)",
                n("attn.qkv.weight")
            )));
        }
        let [hidden, _] = ctx.dims(&n("mlp.fc1.weight"))?;
        ctx.begin_block(&prefix);
        let block = SwinBlock {
            table: ctx.param(&table, &[rows, heads])?,
            norm1: LayerNorm::new(ctx, &n("norm1"), dim, EPS)?,
            qkv: Linear::new(ctx, &n("attn.qkv"), dim, 3 * attn_dim, Bias::Optional)?,
            proj: Linear::new(ctx, &n("attn.proj"), attn_dim, dim, Bias::Yes)?,
            norm2: LayerNorm::new(ctx, &n("norm2"), dim, EPS)?,
            mlp: Mlp::new(ctx, &n("mlp"), dim, hidden)?,
            heads,
            res,
            window,
            shift,
            rel_index: relative_position_index(window.0, window.1),
            mask: shift_mask(res, window, shift),
        };
        let meta = ctx.end_block();

        let tokens = window.0 * window.1;
        claim_buffer(ctx, &n("attn.relative_position_index"), &[tokens, tokens])?;
        let windows = block.mask.len() / (tokens * tokens).max(1);
        claim_buffer(ctx, &n("attn_mask"), &[windows, tokens, tokens])?;
        Ok(Block::new(meta, block))
    }
}

impl Forward for SwinBlock {
    fn plan(&self, w: &Weights, input: &[usize]) -> Result<Planned> {
        let (h, wd, c) = (self.res.0, self.res.1, self.proj.out_dim);
        let b = check_nhwc(w, input, self.res, c)?;
        let rows = b * h * wd;
        // Windows are padded to whole windows: the attention runs on at least as many rows.
        let (wh, ww) = self.window;
        let padded = b * h.div_ceil(wh) * wh * wd.div_ceil(ww) * ww;
        let a = self.proj.in_dim;
        // The forward drops each buffer once used; the largest sets alive at once: x with the windows and
        // qkv, x with qkv and the attention output, and x with the MLP's input, hidden activation and
        // output. The bias gathered per head is small.
        let attention = rows * c + padded * (c + 3 * a).max(4 * a);
        let mlp = rows * (3 * c + self.mlp.hidden);
        Ok(Planned {
            output: input.to_vec(),
            live: attention.max(mlp) + self.heads * wh * ww * wh * ww,
        })
    }

    fn forward(&self, w: &Weights, mut x: Act) -> Result<Act> {
        let (h, wd, c) = (self.res.0, self.res.1, self.proj.out_dim);
        let b = check_nhwc(w, &x.shape, self.res, c)?;
        let (wh, ww) = self.window;
        let (sh, sw) = self.shift;
        let (nwh, nww) = (h.div_ceil(wh), wd.div_ceil(ww));
        let (nw, n) = (nwh * nww, wh * ww);
        let groups = b * nw;

        // norm1, cyclic shift by -shift, zero padding to whole windows, window partition: [b * nw, n, c].
        let mut normed = x.data.clone();
        self.norm1.apply(w, &mut normed)?;
        let mut win = vec![0.0f32; groups * n * c];
        win.par_chunks_mut(n * c).enumerate().for_each(|(g, dst)| {
            let (bi, wy, wx) = (g / nw, g % nw / nww, g % nww);
            for ty in 0..wh {
                let py = wy * wh + ty;
                if py >= h {
                    break;
                }
                let y = (py + sh) % h;
                for tx in 0..ww {
                    let px = wx * ww + tx;
                    if px >= wd {
                        break;
                    }
                    let xx = (px + sw) % wd;
                    dst[(ty * ww + tx) * c..][..c]
                        .copy_from_slice(&normed[((bi * h + y) * wd + xx) * c..][..c]);
                }
            }
        });
        drop(normed);

        let qkv = self.qkv.forward(w, &win, groups * n)?;
        drop(win);

        // The relative position bias, gathered once per forward from the mapped table: [heads, n, n].
        let table = w.floats(self.table)?;
        let heads = self.heads;
        let mut rel = vec![0.0f32; heads * n * n];
        for (i, &r) in self.rel_index.iter().enumerate() {
            let row = &table[r as usize * heads..][..heads];
            for (hd, &v) in row.iter().enumerate() {
                rel[hd * n * n + i] = v;
            }
        }
        let mask = &self.mask;
        let add_bias = |g: usize, hd: usize, row: usize, scores: &mut [f32]| {
            for (sc, r) in scores.iter_mut().zip(&rel[(hd * n + row) * n..][..n]) {
                *sc += r;
            }
            if !mask.is_empty() {
                for (sc, m) in scores
                    .iter_mut()
                    .zip(&mask[((g % nw) * n + row) * n..][..n])
                {
                    *sc += m;
                }
            }
        };
        let attn_dim = self.proj.in_dim;
        let products = self.qkv.attention_products(w)?;
        let attn = ops::attention(
            &qkv,
            groups,
            n,
            heads,
            attn_dim / heads,
            Some(&add_bias),
            products,
        );
        drop(qkv);
        let proj = self.proj.forward(w, &attn, groups * n)?;
        drop(attn);

        // Window reverse, crop, cyclic shift by +shift, residual.
        x.data
            .par_chunks_mut(wd * c)
            .enumerate()
            .for_each(|(row, dst)| {
                let (bi, y) = (row / h, row % h);
                let py = (y + h - sh) % h;
                for xx in 0..wd {
                    let px = (xx + wd - sw) % wd;
                    let g = bi * nw + (py / wh) * nww + px / ww;
                    let t = (py % wh) * ww + px % ww;
                    let src = &proj[(g * n + t) * c..][..c];
                    dst[xx * c..][..c]
                        .iter_mut()
                        .zip(src)
                        .for_each(|(a, v)| *a += v);
                }
            });
        drop(proj);

        // MLP.
        let mut normed = x.data.clone();
        self.norm2.apply(w, &mut normed)?;
        if !self.mlp.add_to(w, &normed, b * h * wd, &mut x.data, None)? {
            let out = self.mlp.forward(w, &normed, b * h * wd)?;
            elementwise::add_assign(&mut x.data, &out);
        }
        Ok(x)
    }
}

/// Final norm, global average pool over the map, `head.fc`: `[b, h, w, dim]` -> `[b, classes]`.
#[derive(Clone, Copy)]
struct Head {
    norm: LayerNorm,
    /// `head.fc`, or `head` in the original layout.
    fc: Linear,
    /// Whether `fc` runs; without it the output is the pooled features and `fc` is never read.
    logits: bool,
}

impl Forward for Head {
    fn plan(&self, w: &Weights, input: &[usize]) -> Result<Planned> {
        let dim = self.fc.in_dim;
        match *input {
            [b, h, wd, c] if c == dim && !self.logits => Ok(Planned {
                output: vec![b, dim],
                live: b * (h * wd * dim + dim),
            }),
            [b, h, wd, c] if c == dim => Ok(Planned {
                output: vec![b, self.fc.out_dim],
                live: b * (h * wd * dim + dim + self.fc.out_dim),
            }),
            _ => Err(w.input_error(format!(
                "expected a [batch, h, w, {dim}] input, got {input:?}"
            ))),
        }
    }

    fn forward(&self, w: &Weights, x: Act) -> Result<Act> {
        let dim = self.fc.in_dim;
        let (b, tokens) = match x.shape.as_slice() {
            &[b, h, wd, c] if c == dim => (b, h * wd),
            other => {
                return Err(w.input_error(format!(
                    "expected a [batch, h, w, {dim}] input, got {other:?}"
                )))
            }
        };
        let mut normed = x.data;
        self.norm.apply(w, &mut normed)?;
        let pooled = elementwise::mean_pool(&normed, (b, tokens, dim), 0);
        if !self.logits {
            return Ok(Act::new(pooled, vec![b, dim]));
        }
        let logits = self.fc.forward(w, &pooled, b)?;
        Ok(Act::new(logits, vec![b, self.fc.out_dim]))
    }
}
