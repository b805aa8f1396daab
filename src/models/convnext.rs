//! ConvNeXt as timm's `ConvNeXt` computes it (`convnext_atto` .. `convnext_xxlarge`, incl. `convnext_large_mlp`
//! and `convnext_tiny_hnf`): patch stem (k x k stride-k conv + LayerNorm2d), four stages of an optional
//! downsample (LayerNorm2d + 2x2 stride-2 conv) and blocks `x + gamma * fc2(gelu(fc1(norm(dwconv7x7(x)))))`,
//! then the head: global average pool -> `head.norm` -> (`head.pre_logits.fc` + GELU) -> `head.fc`.
//!
//! Activations stay channels-last (`[b, h, w, c]`) from the stem to the head, so timm's LayerNorm2d is a
//! LayerNorm over the last dimension and the MLP is a GEMM on the rows as they are. The `conv_mlp` variants
//! (atto .. nano) store `mlp.fc1/fc2` as 1x1 conv weights `[out, in, 1, 1]`: the same bytes as a linear
//! `[out, in]` weight, read in place the same way.
//!
//! Not supported, refused at load with a message: ConvNeXt-V2 (GRN), the overlapping conv stems (`*_ols`),
//! RmsNorm / SimpleNorm variants (`*_rms`), dilated stages (`output_stride` < 32), pooling other than `avg`,
//! activations other than GELU.

use crate::error::Result;
use crate::models::layers::{Bias, Depthwise, LayerNorm, Linear, Mlp, PatchConv};
use crate::models::{Act, Block, BuildCtx, Forward, Param, Planned, Weights};
use crate::ops::{self, elementwise, Layout};

/// timm's LayerNorm / LayerNorm2d default (every variant but `convnext_xxlarge`).
const EPS: f32 = 1e-6;
/// `convnext_xxlarge` registers `norm_eps=1e-5`.
const XXLARGE_EPS: f32 = 1e-5;

/// Builds the blocks in execution order: `stem`, per stage `stages.{s}.downsample` (stages 1..) and
/// `stages.{s}.blocks.{b}`, then `head`.
pub fn build(ctx: &mut BuildCtx) -> Result<Vec<Block>> {
    refuse_unsupported(ctx)?;

    // Stem: conv [dims0, in_chans, p, p] stride p, then LayerNorm2d.
    let w = ctx.dims("stem.0.weight")?;
    let [d0, in_chans, patch, patch_w] = w;
    if patch != patch_w {
        return Err(ctx.err(format!(
            "stem.0.weight has shape {w:?}, expected a square k x k patch conv"
        )));
    }
    let conv_bias = ctx.store.contains("stem.0.bias");
    if let Some(want) = arg_bool(ctx, "conv_bias")? {
        if want != conv_bias {
            return Err(ctx.err(format!(
                "config.json says conv_bias={want} but stem.0.bias is {}",
                if conv_bias { "present" } else { "absent" }
            )));
        }
    }

    // Stages: depth and width from the weights.
    let n_stages = ctx.count("stages.", "blocks.0.conv_dw.weight");
    if n_stages == 0 {
        return Err(ctx.err("no stages.0.blocks.0.conv_dw.weight: no ConvNeXt stage found"));
    }
    let mut depths = Vec::with_capacity(n_stages);
    let mut dims = Vec::with_capacity(n_stages);
    for s in 0..n_stages {
        depths.push(ctx.count(&format!("stages.{s}.blocks."), "conv_dw.weight"));
        dims.push(out_dim(
            ctx,
            &format!("stages.{s}.blocks.0.conv_dw.weight"),
        )?);
    }
    for (key, got) in [("depths", &depths), ("dims", &dims)] {
        if let Some(want) = ctx
            .config
            .arg_usizes(key, n_stages)
            .map_err(|m| ctx.err(m))?
        {
            if &want != got {
                return Err(ctx.err(format!(
                    "config.json model_args says {key} {want:?} but the weights hold {key} {got:?}"
                )));
            }
        }
    }
    let eps = norm_eps(ctx, &depths, &dims)?;

    // Variant switches read once from the first block, then required of every block.
    let fc1 = ctx
        .store
        .info("stages.0.blocks.0.mlp.fc1.weight")?
        .shape
        .clone();
    let conv_mlp = match fc1.len() {
        2 => false,
        4 => true,
        _ => {
            let msg = format!(
                "stages.0.blocks.0.mlp.fc1.weight has shape {fc1:?}, expected [hidden, dim] (Linear) or \
                 [hidden, dim, 1, 1] (conv_mlp)"
            );
            return Err(ctx.err(msg));
        }
    };
    if let Some(want) = arg_bool(ctx, "conv_mlp")? {
        if want != conv_mlp {
            return Err(ctx.err(format!(
                "config.json says conv_mlp={want} but stages.0.blocks.0.mlp.fc1.weight has shape {fc1:?}"
            )));
        }
    }
    let layer_scale = ctx.store.contains("stages.0.blocks.0.gamma");
    // A number or null; only whether it is null matters here (the weights hold gamma).
    ctx.config
        .arg_f64("ls_init_value")
        .map_err(|m| ctx.err(m))?;
    if let Some(v) = ctx.config.model_args.get("ls_init_value") {
        if v.is_null() == layer_scale {
            return Err(ctx.err(format!(
                "config.json says ls_init_value={v} but stages.0.blocks.0.gamma is {}",
                if layer_scale { "present" } else { "absent" }
            )));
        }
    }

    let mut blocks = Vec::with_capacity(depths.iter().sum::<usize>() + n_stages + 2);
    ctx.begin_block("stem");
    let stem = Stem {
        conv: PatchConv::new(
            ctx,
            "stem.0",
            (d0, in_chans, patch),
            conv_bias_of(ctx, "stem.0.bias", conv_bias)?,
        )?,
        norm: LayerNorm::new(ctx, "stem.1", d0, eps)?,
    };
    blocks.push(Block::new(ctx.end_block(), stem));

    let mut prev = d0;
    for s in 0..n_stages {
        let dim = dims[s];
        let p = format!("stages.{s}");
        // timm: stage 0 follows the stride-4 stem at the same width (Identity); every later stage has
        // stride 2, so a LayerNorm2d + 2x2 stride-2 conv downsample.
        if s > 0 {
            ctx.begin_block(format!("{p}.downsample"));
            let down = Downsample {
                norm: LayerNorm::new(ctx, &format!("{p}.downsample.0"), prev, eps)?,
                conv: PatchConv::new(
                    ctx,
                    &format!("{p}.downsample.1"),
                    (dim, prev, 2),
                    conv_bias_of(ctx, &format!("{p}.downsample.1.bias"), conv_bias)?,
                )?,
            };
            blocks.push(Block::new(ctx.end_block(), down));
        } else if dim != prev {
            return Err(ctx.err(format!(
                "stages.0 is {dim} wide but the stem outputs {prev} channels"
            )));
        }

        let dw_name = format!("{p}.blocks.0.conv_dw.weight");
        let dw = ctx.dims(&dw_name)?;
        let [_, 1, k, k_w] = dw else {
            return Err(ctx.err(format!(
                "{dw_name} has shape {dw:?}, expected a depthwise weight [{dim}, 1, k, k]"
            )));
        };
        if k != k_w || k % 2 == 0 {
            return Err(ctx.err(format!(
                "{dw_name} has shape {dw:?}: only square odd depthwise kernels are supported"
            )));
        }
        let hidden = out_dim(ctx, &format!("{p}.blocks.0.mlp.fc1.weight"))?;
        for b in 0..depths[s] {
            let prefix = format!("{p}.blocks.{b}");
            let n = |t: &str| format!("{prefix}.{t}");
            ctx.begin_block(&prefix);
            let dw_bias = conv_bias_of(ctx, &n("conv_dw.bias"), conv_bias)?;
            let block = ConvBlock {
                conv_dw: Depthwise::new(ctx, &n("conv_dw"), dim, k, dw_bias)?,
                norm: LayerNorm::new(ctx, &n("norm"), dim, eps)?,
                mlp: if conv_mlp {
                    Mlp::conv1x1(ctx, &n("mlp"), dim, hidden)?
                } else {
                    Mlp::new(ctx, &n("mlp"), dim, hidden)?
                },
                gamma: if layer_scale {
                    Some(ctx.param(&n("gamma"), &[dim])?)
                } else if ctx.store.contains(&n("gamma")) {
                    return Err(ctx.err(format!(
                        "{} is present but stages.0.blocks.0.gamma is not: mixed layer scale",
                        n("gamma")
                    )));
                } else {
                    None
                },
            };
            blocks.push(Block::new(ctx.end_block(), block));
        }
        prev = dim;
    }

    blocks.push(build_head(ctx, prev, eps)?);
    Ok(blocks)
}

/// The head: timm's `NormMlpClassifierHead` (pool -> `head.norm` -> optional `head.pre_logits.fc` + GELU ->
/// `head.fc`), or with `head_norm_first` (`convnext_tiny_hnf`) `norm_pre` -> pool -> `head.fc`.
fn build_head(ctx: &mut BuildCtx, dim: usize, eps: f32) -> Result<Block> {
    // `head_hidden_size` (convnext_large_mlp): a pre-logits Linear + GELU between the norm and the classifier.
    let hidden = if ctx.store.contains("head.pre_logits.fc.weight") {
        Some(out_dim(ctx, "head.pre_logits.fc.weight")?)
    } else {
        None
    };
    let classes = out_dim(ctx, "head.fc.weight")?;
    ctx.classes("head.fc.weight", classes)?;
    ctx.begin_block("head");
    let head_norm = LayerNorm::optional(ctx, "head.norm", dim, eps)?;
    let norm_pre = LayerNorm::optional(ctx, "norm_pre", dim, eps)?;
    let norm = match (head_norm, norm_pre) {
        (Some(n), None) => HeadNorm::AfterPool(n),
        (None, Some(n)) => HeadNorm::BeforePool(n),
        (Some(_), Some(_)) => return Err(ctx.err(
            "both head.norm and norm_pre are present; timm has one or the other (head_norm_first)",
        )),
        // What timm computes after `reset_classifier(.., reset_other=True)`: pool -> fc.
        (None, None) => HeadNorm::None,
    };
    let pre_logits = hidden
        .map(|h| Linear::new(ctx, "head.pre_logits.fc", dim, h, Bias::Yes))
        .transpose()?;
    let feat = hidden.unwrap_or(dim);
    // Everything declared so far is timm's `forward_head(x, pre_logits=True)`; the classifier follows.
    let features_meta = ctx.open_meta();
    let head = Head {
        norm,
        pre_logits,
        fc: Linear::new(ctx, "head.fc", feat, classes, Bias::Yes)?.weight_only(),
        dim,
        logits: true,
    };
    ctx.features_head(Block::new(
        features_meta,
        Head {
            logits: false,
            ..head
        },
    ));
    Ok(Block::new(ctx.end_block(), head))
}

/// Variants whose computation differs from what the blocks here do: refused by name, never half-run.
fn refuse_unsupported(ctx: &BuildCtx) -> Result<()> {
    let arch = ctx.config.architecture.as_deref().unwrap_or("");
    let args = &ctx.config.model_args;
    let s = ctx.store;
    let unsupported = |what: &str| {
        Err(ctx.err(format!(
            "{what} is not supported (architecture `{}`)",
            if arch.is_empty() { "unknown" } else { arch }
        )))
    };
    if arch.starts_with("convnextv2")
        || s.contains("stages.0.blocks.0.mlp.grn.weight")
        || arg_bool(ctx, "use_grn")? == Some(true)
    {
        return unsupported("ConvNeXt-V2 (GlobalResponseNorm in the MLP)");
    }
    let stem_type = ctx.config.arg_str("stem_type").map_err(|m| ctx.err(m))?;
    if s.contains("stem.2.weight")
        || s.contains("stem.3.weight")
        || stem_type.is_some_and(|t| t != "patch")
    {
        return unsupported(
            "the overlapping conv stem (stem_type `overlap*`, the `*_ols` variants)",
        );
    }
    let norm_layer = ctx.config.arg_str("norm_layer").map_err(|m| ctx.err(m))?;
    if arch.contains("_rms")
        || norm_layer.is_some_and(|n| n != "layernorm" && n != "layernorm2d")
        || (s.contains("stem.1.weight") && !s.contains("stem.1.bias"))
    {
        return unsupported(
            "a norm layer other than LayerNorm (RmsNorm / SimpleNorm, `*_rms` variants)",
        );
    }
    if let Some(act) = args.get("act_layer") {
        if act.as_str() != Some("gelu") {
            return unsupported(&format!("act_layer {act}"));
        }
    }
    if let Some(os) = ctx
        .config
        .arg_usize("output_stride")
        .map_err(|m| ctx.err(m))?
    {
        if os != 32 {
            return unsupported(&format!("output_stride {os} (dilated stages)"));
        }
    }
    match args.get("global_pool").map(|v| v.as_str()) {
        None | Some(Some("avg")) => {}
        Some(other) => {
            return unsupported(&format!(
                "global_pool {} (only `avg`)",
                other.unwrap_or("(not a string)")
            ))
        }
    }
    Ok(())
}

/// The leading (output) dimension of a weight; its full shape is checked when it is declared.
fn out_dim(ctx: &BuildCtx, name: &str) -> Result<usize> {
    let shape = &ctx.store.info(name)?.shape;
    match shape.first() {
        Some(&n) if n > 0 => Ok(n),
        _ => Err(ctx.err(format!(
            "`{name}` has shape {shape:?}, expected a weight with a non-zero output dimension"
        ))),
    }
}

/// `model_args[key]` as a bool; another type is refused.
fn arg_bool(ctx: &BuildCtx, key: &str) -> Result<Option<bool>> {
    ctx.config.arg_bool(key).map_err(|m| ctx.err(m))
}

/// The LayerNorm eps: `model_args.norm_eps`, else timm's registered default for the architecture
/// (`convnext_xxlarge` 1e-5, all others 1e-6); without an architecture name, xxlarge is recognised by its
/// depths and widths.
fn norm_eps(ctx: &BuildCtx, depths: &[usize], dims: &[usize]) -> Result<f32> {
    if let Some(e) = ctx.config.arg_f64("norm_eps").map_err(|m| ctx.err(m))? {
        return Ok(e as f32);
    }
    Ok(match ctx.config.architecture.as_deref() {
        Some(a) if a.starts_with("convnext_xxlarge") => XXLARGE_EPS,
        Some(_) => EPS,
        None if depths == [3, 4, 30, 3] && dims == [384, 768, 1536, 3072] => XXLARGE_EPS,
        None => EPS,
    })
}

/// A conv bias that the checkpoint's `conv_bias` setting (read from `stem.0.bias`) says is there; one it says
/// is not there is refused.
fn conv_bias_of(ctx: &BuildCtx, name: &str, conv_bias: bool) -> Result<Bias> {
    if conv_bias {
        Ok(Bias::Yes)
    } else if ctx.store.contains(name) {
        Err(ctx.err(format!(
            "{name} is present but stem.0.bias is not: mixed conv_bias"
        )))
    } else {
        Ok(Bias::No)
    }
}

/// Checks a channels-last activation `[b, h, w, c]` of `len` values and returns `(b, h, w)`.
fn nhwc(w: &Weights, shape: &[usize], len: usize, c: usize) -> Result<(usize, usize, usize)> {
    match *shape {
        [b, h, wd, cc] if cc == c && len == b * h * wd * c => Ok((b, h, wd)),
        _ => Err(w.input_error(format!(
            "expected channels-last activations [batch, h, w, {c}], got shape {shape:?} ({len} values)"
        ))),
    }
}

/// `stem`: `[b, in_chans, h, w]` (NCHW image) -> conv k x k stride k -> LayerNorm2d -> `[b, h/k, w/k, dim]`.
struct Stem {
    conv: PatchConv,
    norm: LayerNorm,
}

impl Stem {
    /// Checks an image `[b, in_chans, h, w]` of `len` values; returns `(b, h, w)`.
    fn check(&self, w: &Weights, shape: &[usize], len: usize) -> Result<(usize, usize, usize)> {
        let (in_chans, p) = (self.conv.in_chans, self.conv.k);
        let (b, c, h, wd) = match *shape {
            [b, c, h, wd] if len == b * c * h * wd => (b, c, h, wd),
            _ => {
                return Err(w.input_error(format!(
                "expected an image [batch, {in_chans}, h, w], got shape {shape:?} ({len} values)"
            )))
            }
        };
        if c != in_chans || h < p || wd < p {
            return Err(w.input_error(format!(
                "input {c}x{h}x{wd} does not fit: the stem is a {p}x{p} stride-{p} conv over {in_chans} channels"
            )));
        }
        Ok((b, h, wd))
    }
}

/// A `k x k` stride-`k` conv from `in_values` values of `(b, h, w)` with `c` channels: its output shape and
/// live values (input, the patch rows it gathers, output).
fn patch_conv_plan(
    conv: &PatchConv,
    in_values: usize,
    (b, h, wd): (usize, usize, usize),
) -> Planned {
    let (k, c) = (conv.k, conv.in_chans);
    let pixels = b * (h / k) * (wd / k);
    Planned {
        output: vec![b, h / k, wd / k, conv.out],
        live: in_values + pixels * (c * k * k + conv.out),
    }
}

impl Forward for Stem {
    fn plan(&self, w: &Weights, input: &[usize]) -> Result<Planned> {
        let len = input.iter().product();
        let bhw = self.check(w, input, len)?;
        Ok(patch_conv_plan(&self.conv, len, bhw))
    }

    fn forward(&self, w: &Weights, x: Act) -> Result<Act> {
        let p = self.conv.k;
        let (b, h, wd) = self.check(w, &x.shape, x.data.len())?;
        let mut y = self.conv.forward(w, &x.data, Layout::Nchw, (b, h, wd))?;
        self.norm.apply(w, &mut y)?;
        Ok(Act::new(y, vec![b, h / p, wd / p, self.conv.out]))
    }
}

/// `stages.{s}.downsample`: LayerNorm2d -> conv k x k stride k, `[b, h, w, in_dim]` -> `[b, h/k, w/k, dim]`.
struct Downsample {
    norm: LayerNorm,
    conv: PatchConv,
}

impl Downsample {
    /// Checks the feature map `[b, h, w, in_chans]` of `len` values; returns `(b, h, w)`.
    fn check(&self, w: &Weights, shape: &[usize], len: usize) -> Result<(usize, usize, usize)> {
        let k = self.conv.k;
        let (b, h, wd) = nhwc(w, shape, len, self.conv.in_chans)?;
        if h < k || wd < k {
            return Err(w.input_error(format!(
                "a {h}x{wd} feature map is too small for the {k}x{k} stride-{k} downsample (input image too small)"
            )));
        }
        Ok((b, h, wd))
    }
}

impl Forward for Downsample {
    fn plan(&self, w: &Weights, input: &[usize]) -> Result<Planned> {
        let len = input.iter().product();
        let bhw = self.check(w, input, len)?;
        Ok(patch_conv_plan(&self.conv, len, bhw))
    }

    fn forward(&self, w: &Weights, mut x: Act) -> Result<Act> {
        let k = self.conv.k;
        let (b, h, wd) = self.check(w, &x.shape, x.data.len())?;
        self.norm.apply(w, &mut x.data)?;
        let y = self.conv.forward(w, &x.data, Layout::Nhwc, (b, h, wd))?;
        Ok(Act::new(y, vec![b, h / k, wd / k, self.conv.out]))
    }
}

/// `stages.{s}.blocks.{b}`: `x + gamma * fc2(gelu(fc1(LayerNorm(dwconv(x)))))`, all channels-last.
struct ConvBlock {
    conv_dw: Depthwise,
    norm: LayerNorm,
    mlp: Mlp,
    gamma: Option<Param>,
}

impl Forward for ConvBlock {
    fn plan(&self, w: &Weights, input: &[usize]) -> Result<Planned> {
        let c = self.conv_dw.dim;
        let (b, h, wd) = nhwc(w, input, input.iter().product(), c)?;
        // At fc2: x, the depthwise output, the hidden activation and fc2's output.
        Ok(Planned {
            output: input.to_vec(),
            live: b * h * wd * (3 * c + self.mlp.hidden),
        })
    }

    fn forward(&self, w: &Weights, mut x: Act) -> Result<Act> {
        let (b, h, wd) = nhwc(w, &x.shape, x.data.len(), self.conv_dw.dim)?;
        let mut y = self.conv_dw.forward(w, &x.data, (b, h, wd))?;
        self.norm.apply(w, &mut y)?;
        let gamma = w.maybe_floats(self.gamma)?;
        if self
            .mlp
            .add_to(w, &y, b * h * wd, &mut x.data, gamma.as_deref())?
        {
            return Ok(x);
        }
        // fc2's bias goes in with the layer scale and the residual.
        let out = self.mlp.forward_without_fc2_bias(w, &y, b * h * wd)?;
        drop(y);
        elementwise::add_bias_scaled(
            &mut x.data,
            &out,
            &w.floats(self.mlp.fc2_bias)?,
            gamma.as_deref(),
        );
        Ok(x)
    }
}

/// Where the head's LayerNorm sits.
#[derive(Clone, Copy)]
enum HeadNorm {
    /// `head.norm` on the pooled features (the default ConvNeXt head).
    AfterPool(LayerNorm),
    /// `norm_pre` on every position before pooling (`head_norm_first`, `convnext_tiny_hnf`).
    BeforePool(LayerNorm),
    /// No norm (a head reset with `reset_other`).
    None,
}

/// `head`: `[b, h, w, dim]` -> average over h, w -> norm -> (pre-logits fc + GELU) -> fc -> `[b, classes]`;
/// without `logits`, the features before `fc` (which it then never reads).
#[derive(Clone, Copy)]
struct Head {
    norm: HeadNorm,
    pre_logits: Option<Linear>,
    fc: Linear,
    dim: usize,
    logits: bool,
}

impl Head {
    /// Checks the feature map `[b, h, w, dim]` of `len` values; returns `(b, h, w)`.
    fn check(&self, w: &Weights, shape: &[usize], len: usize) -> Result<(usize, usize, usize)> {
        let (b, h, wd) = nhwc(w, shape, len, self.dim)?;
        if h * wd == 0 {
            return Err(w.input_error(format!("cannot pool an empty {h}x{wd} feature map")));
        }
        Ok((b, h, wd))
    }
}

impl Forward for Head {
    fn plan(&self, w: &Weights, input: &[usize]) -> Result<Planned> {
        let len = input.iter().product::<usize>();
        let (b, _, _) = self.check(w, input, len)?;
        let feat = self.pre_logits.map_or(self.dim, |fc| fc.out_dim);
        if !self.logits {
            return Ok(Planned {
                output: vec![b, feat],
                live: len + b * (self.dim + feat),
            });
        }
        Ok(Planned {
            output: vec![b, self.fc.out_dim],
            live: len + b * (self.dim + feat + self.fc.out_dim),
        })
    }

    fn forward(&self, w: &Weights, mut x: Act) -> Result<Act> {
        let dim = self.dim;
        let (b, h, wd) = self.check(w, &x.shape, x.data.len())?;
        if let HeadNorm::BeforePool(n) = &self.norm {
            n.apply(w, &mut x.data)?;
        }
        let mut pooled = elementwise::mean_pool(&x.data, (b, h * wd, dim), 0);
        if let HeadNorm::AfterPool(n) = &self.norm {
            n.apply(w, &mut pooled)?;
        }
        if let Some(fc) = &self.pre_logits {
            pooled = fc.forward(w, &pooled, b)?;
            ops::gelu(&mut pooled);
        }
        if !self.logits {
            let feat = pooled.len() / b;
            return Ok(Act::new(pooled, vec![b, feat]));
        }
        let logits = self.fc.forward(w, &pooled, b)?;
        Ok(Act::new(logits, vec![b, self.fc.out_dim]))
    }
}
