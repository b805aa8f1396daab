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

use std::borrow::Cow;

use rayon::prelude::*;

use crate::error::Result;
use crate::models::{input_error, Act, Block, BuildCtx};
use crate::ops::{self, Layout};
use crate::store::Store;

/// timm's LayerNorm / LayerNorm2d default (every variant but `convnext_xxlarge`).
const EPS: f32 = 1e-6;
/// `convnext_xxlarge` registers `norm_eps=1e-5`.
const XXLARGE_EPS: f32 = 1e-5;

/// Builds the blocks in execution order: `stem`, per stage `stages.{s}.downsample` (stages 1..) and
/// `stages.{s}.blocks.{b}`, then `head`.
pub fn build(ctx: &mut BuildCtx) -> Result<Vec<Box<dyn Block>>> {
    refuse_unsupported(ctx)?;

    // Stem: conv [dims0, in_chans, p, p] stride p, then LayerNorm2d.
    let w = ctx.shape("stem.0.weight")?;
    let &[d0, in_chans, patch, patch_w] = w.as_slice() else {
        return Err(ctx.err(format!(
            "stem.0.weight has shape {w:?}, expected a conv weight [dim, in_chans, k, k]"
        )));
    };
    if patch != patch_w || patch == 0 || d0 == 0 || in_chans == 0 {
        return Err(ctx.err(format!(
            "stem.0.weight has shape {w:?}, expected a square k x k patch conv"
        )));
    }
    let conv_bias = ctx.store.contains("stem.0.bias");
    if let Some(want) = arg_bool(ctx, "conv_bias") {
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
        if let Some(want) = ctx.config.arg_usizes(key, n_stages) {
            if &want != got {
                return Err(ctx.err(format!(
                    "config.json model_args says {key} {want:?} but the weights hold {key} {got:?}"
                )));
            }
        }
    }
    let eps = norm_eps(ctx, &depths, &dims);

    // Variant switches read once from the first block, then required of every block.
    let fc1 = ctx.shape("stages.0.blocks.0.mlp.fc1.weight")?;
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
    if let Some(want) = arg_bool(ctx, "conv_mlp") {
        if want != conv_mlp {
            return Err(ctx.err(format!(
                "config.json says conv_mlp={want} but stages.0.blocks.0.mlp.fc1.weight has shape {fc1:?}"
            )));
        }
    }
    let layer_scale = ctx.store.contains("stages.0.blocks.0.gamma");
    if let Some(v) = ctx.config.model_args.get("ls_init_value") {
        if v.is_null() == layer_scale {
            return Err(ctx.err(format!(
                "config.json says ls_init_value={v} but stages.0.blocks.0.gamma is {}",
                if layer_scale { "present" } else { "absent" }
            )));
        }
    }

    let mut blocks: Vec<Box<dyn Block>> =
        Vec::with_capacity(depths.iter().sum::<usize>() + n_stages + 2);
    let mut tensors = vec![ctx.expect("stem.0.weight", &[d0, in_chans, patch, patch])?];
    tensors.extend(claim_bias(ctx, "stem.0.bias", d0, conv_bias)?);
    tensors.push(ctx.expect("stem.1.weight", &[d0])?);
    tensors.push(ctx.expect("stem.1.bias", &[d0])?);
    blocks.push(Box::new(Stem {
        tensors,
        in_chans,
        patch,
        dim: d0,
        bias: conv_bias,
        eps,
    }));

    let mut prev = d0;
    for s in 0..n_stages {
        let dim = dims[s];
        let p = format!("stages.{s}.");
        // timm: stage 0 follows the stride-4 stem at the same width (Identity); every later stage has
        // stride 2, so a LayerNorm2d + 2x2 stride-2 conv downsample.
        if s > 0 {
            let n = |t: &str| format!("{p}downsample.{t}");
            let mut tensors = vec![
                ctx.expect(&n("0.weight"), &[prev])?,
                ctx.expect(&n("0.bias"), &[prev])?,
                ctx.expect(&n("1.weight"), &[dim, prev, 2, 2])?,
            ];
            tensors.extend(claim_bias(ctx, &n("1.bias"), dim, conv_bias)?);
            blocks.push(Box::new(Downsample {
                name: format!("stages.{s}.downsample"),
                prefix: format!("{p}downsample."),
                tensors,
                in_dim: prev,
                dim,
                k: 2,
                bias: conv_bias,
                eps,
            }));
        } else if dim != prev {
            return Err(ctx.err(format!(
                "stages.0 is {dim} wide but the stem outputs {prev} channels"
            )));
        }

        let dw = ctx.shape(&format!("{p}blocks.0.conv_dw.weight"))?;
        let &[_, 1, k, k_w] = dw.as_slice() else {
            return Err(ctx.err(format!(
                "{p}blocks.0.conv_dw.weight has shape {dw:?}, expected a depthwise weight [{dim}, 1, k, k]"
            )));
        };
        if k != k_w || k % 2 == 0 {
            return Err(ctx.err(format!(
                "{p}blocks.0.conv_dw.weight has shape {dw:?}: only square odd depthwise kernels are supported"
            )));
        }
        let hidden = out_dim(ctx, &format!("{p}blocks.0.mlp.fc1.weight"))?;
        let (fc1_shape, fc2_shape) = if conv_mlp {
            (vec![hidden, dim, 1, 1], vec![dim, hidden, 1, 1])
        } else {
            (vec![hidden, dim], vec![dim, hidden])
        };
        for b in 0..depths[s] {
            let prefix = format!("{p}blocks.{b}.");
            let n = |t: &str| format!("{prefix}{t}");
            let mut tensors = vec![ctx.expect(&n("conv_dw.weight"), &[dim, 1, k, k])?];
            tensors.extend(claim_bias(ctx, &n("conv_dw.bias"), dim, conv_bias)?);
            tensors.extend([
                ctx.expect(&n("norm.weight"), &[dim])?,
                ctx.expect(&n("norm.bias"), &[dim])?,
                ctx.expect(&n("mlp.fc1.weight"), &fc1_shape)?,
                ctx.expect(&n("mlp.fc1.bias"), &[hidden])?,
                ctx.expect(&n("mlp.fc2.weight"), &fc2_shape)?,
                ctx.expect(&n("mlp.fc2.bias"), &[dim])?,
            ]);
            if layer_scale {
                tensors.push(ctx.expect(&n("gamma"), &[dim])?);
            } else if ctx.store.contains(&n("gamma")) {
                return Err(ctx.err(format!(
                    "{} is present but stages.0.blocks.0.gamma is not: mixed layer scale",
                    n("gamma")
                )));
            }
            blocks.push(Box::new(ConvBlock {
                name: format!("stages.{s}.blocks.{b}"),
                prefix,
                tensors,
                dim,
                k,
                bias: conv_bias,
                gamma: layer_scale,
                eps,
            }));
        }
        prev = dim;
    }

    blocks.push(Box::new(build_head(ctx, prev, eps)?));
    Ok(blocks)
}

/// The head: timm's `NormMlpClassifierHead` (pool -> `head.norm` -> optional `head.pre_logits.fc` + GELU ->
/// `head.fc`), or with `head_norm_first` (`convnext_tiny_hnf`) `norm_pre` -> pool -> `head.fc`.
fn build_head(ctx: &mut BuildCtx, dim: usize, eps: f32) -> Result<Head> {
    let mut tensors = Vec::new();
    let head_norm = ctx.optional("head.norm.weight", &[dim])?;
    let norm_pre = ctx.optional("norm_pre.weight", &[dim])?;
    let norm = match (head_norm, norm_pre) {
        (Some(w), None) => {
            tensors.extend([w, ctx.expect("head.norm.bias", &[dim])?]);
            HeadNorm::AfterPool
        }
        (None, Some(w)) => {
            tensors.extend([w, ctx.expect("norm_pre.bias", &[dim])?]);
            HeadNorm::BeforePool
        }
        (Some(_), Some(_)) => return Err(ctx.err(
            "both head.norm and norm_pre are present; timm has one or the other (head_norm_first)",
        )),
        // What timm computes after `reset_classifier(.., reset_other=True)`: pool -> fc.
        (None, None) => HeadNorm::None,
    };
    // `head_hidden_size` (convnext_large_mlp): a pre-logits Linear + GELU between the norm and the classifier.
    let hidden = if ctx.store.contains("head.pre_logits.fc.weight") {
        let hidden = out_dim(ctx, "head.pre_logits.fc.weight")?;
        tensors.extend([
            ctx.expect("head.pre_logits.fc.weight", &[hidden, dim])?,
            ctx.expect("head.pre_logits.fc.bias", &[hidden])?,
        ]);
        Some(hidden)
    } else {
        None
    };
    let feat = hidden.unwrap_or(dim);
    let classes = out_dim(ctx, "head.fc.weight")?;
    tensors.extend([
        ctx.expect("head.fc.weight", &[classes, feat])?,
        ctx.expect("head.fc.bias", &[classes])?,
    ]);
    if let Some(want) = ctx.config.num_classes {
        if want != classes {
            return Err(ctx.err(format!(
                "config.json says num_classes {want} but head.fc.weight has {classes} rows"
            )));
        }
    }
    ctx.num_classes = Some(classes);
    Ok(Head {
        tensors,
        dim,
        classes,
        norm,
        hidden,
        eps,
    })
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
        || arg_bool(ctx, "use_grn") == Some(true)
    {
        return unsupported("ConvNeXt-V2 (GlobalResponseNorm in the MLP)");
    }
    let stem_type = args.get("stem_type").and_then(|v| v.as_str());
    if s.contains("stem.2.weight")
        || s.contains("stem.3.weight")
        || stem_type.is_some_and(|t| t != "patch")
    {
        return unsupported(
            "the overlapping conv stem (stem_type `overlap*`, the `*_ols` variants)",
        );
    }
    let norm_layer = args.get("norm_layer").and_then(|v| v.as_str());
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
    if let Some(os) = ctx.config.arg_usize("output_stride") {
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

/// The leading (output) dimension of a weight, claiming it; its full shape is checked with `expect` later.
fn out_dim(ctx: &mut BuildCtx, name: &str) -> Result<usize> {
    let shape = ctx.shape(name)?;
    match shape.first() {
        Some(&n) if n > 0 => Ok(n),
        _ => Err(ctx.err(format!(
            "{name} has shape {shape:?}, expected a weight with a non-zero output dimension"
        ))),
    }
}

/// `model_args[key]` as a bool.
fn arg_bool(ctx: &BuildCtx, key: &str) -> Option<bool> {
    ctx.config.model_args.get(key)?.as_bool()
}

/// The LayerNorm eps: `model_args.norm_eps`, else timm's registered default for the architecture
/// (`convnext_xxlarge` 1e-5, all others 1e-6); without an architecture name, xxlarge is recognised by its
/// depths and widths.
fn norm_eps(ctx: &BuildCtx, depths: &[usize], dims: &[usize]) -> f32 {
    if let Some(e) = ctx.config.arg_f64("norm_eps") {
        return e as f32;
    }
    match ctx.config.architecture.as_deref() {
        Some(a) if a.starts_with("convnext_xxlarge") => XXLARGE_EPS,
        Some(_) => EPS,
        None if depths == [3, 4, 30, 3] && dims == [384, 768, 1536, 3072] => XXLARGE_EPS,
        None => EPS,
    }
}

/// Claims a conv bias that the checkpoint's `conv_bias` setting (read from `stem.0.bias`) says is there, and
/// refuses one that it says is not.
fn claim_bias(ctx: &mut BuildCtx, name: &str, n: usize, conv_bias: bool) -> Result<Option<String>> {
    if conv_bias {
        ctx.expect(name, &[n]).map(Some)
    } else if ctx.store.contains(name) {
        Err(ctx.err(format!(
            "{name} is present but stem.0.bias is not: mixed conv_bias"
        )))
    } else {
        Ok(None)
    }
}

/// Checks a channels-last activation `[b, h, w, c]` and returns `(b, h, w)`.
fn nhwc(s: &Store, block: &str, x: &Act, c: usize) -> Result<(usize, usize, usize)> {
    match *x.shape.as_slice() {
        [b, h, w, cc] if cc == c && x.data.len() == b * h * w * c => Ok((b, h, w)),
        _ => Err(input_error(
            s,
            format!(
                "{block}: expected channels-last activations [batch, h, w, {c}], got shape {:?} ({} values)",
                x.shape,
                x.data.len()
            ),
        )),
    }
}

/// A conv bias, or zeros for `conv_bias=False` checkpoints.
fn bias_or_zeros<'a>(s: &'a Store, on: bool, name: &str, n: usize) -> Result<Cow<'a, [f32]>> {
    if on {
        s.floats(name)
    } else {
        Ok(Cow::Owned(vec![0.0; n]))
    }
}

/// `stem`: `[b, in_chans, h, w]` (NCHW image) -> conv k x k stride k -> LayerNorm2d -> `[b, h/k, w/k, dim]`.
struct Stem {
    tensors: Vec<String>,
    in_chans: usize,
    patch: usize,
    dim: usize,
    bias: bool,
    eps: f32,
}

impl Block for Stem {
    fn name(&self) -> &str {
        "stem"
    }

    fn tensors(&self) -> &[String] {
        &self.tensors
    }

    fn forward(&self, s: &Store, x: Act) -> Result<Act> {
        let (b, c, h, w) = match *x.shape.as_slice() {
            [b, c, h, w] if x.data.len() == b * c * h * w => (b, c, h, w),
            _ => {
                return Err(input_error(
                    s,
                    format!(
                        "stem: expected an image [batch, {}, h, w], got shape {:?} ({} values)",
                        self.in_chans,
                        x.shape,
                        x.data.len()
                    ),
                ))
            }
        };
        if c != self.in_chans || h < self.patch || w < self.patch {
            return Err(input_error(
                s,
                format!(
                    "stem: input {c}x{h}x{w} does not fit: the stem is a {p}x{p} stride-{p} conv over {} channels",
                    self.in_chans,
                    p = self.patch
                ),
            ));
        }
        let bias = if self.bias {
            Some(s.floats("stem.0.bias")?)
        } else {
            None
        };
        let mut y = ops::patch_conv(
            &x.data,
            Layout::Nchw,
            (b, c, h, w),
            self.patch,
            &s.weight("stem.0.weight")?,
            bias.as_deref(),
            self.dim,
        );
        ops::layer_norm(
            &mut y,
            self.dim,
            &s.floats("stem.1.weight")?,
            &s.floats("stem.1.bias")?,
            self.eps,
        );
        Ok(Act::new(
            y,
            vec![b, h / self.patch, w / self.patch, self.dim],
        ))
    }
}

/// `stages.{s}.downsample`: LayerNorm2d -> conv k x k stride k, `[b, h, w, in_dim]` -> `[b, h/k, w/k, dim]`.
struct Downsample {
    name: String,
    prefix: String,
    tensors: Vec<String>,
    in_dim: usize,
    dim: usize,
    k: usize,
    bias: bool,
    eps: f32,
}

impl Block for Downsample {
    fn name(&self) -> &str {
        &self.name
    }

    fn tensors(&self) -> &[String] {
        &self.tensors
    }

    fn forward(&self, s: &Store, mut x: Act) -> Result<Act> {
        let (b, h, w) = nhwc(s, &self.name, &x, self.in_dim)?;
        if h < self.k || w < self.k {
            return Err(input_error(
                s,
                format!(
                    "{}: a {h}x{w} feature map is too small for the {k}x{k} stride-{k} downsample (input image too small)",
                    self.name,
                    k = self.k
                ),
            ));
        }
        let f = |t: &str| s.floats(&format!("{}{t}", self.prefix));
        let m = |t: &str| s.weight(&format!("{}{t}", self.prefix));
        ops::layer_norm(
            &mut x.data,
            self.in_dim,
            &f("0.weight")?,
            &f("0.bias")?,
            self.eps,
        );
        let bias = if self.bias { Some(f("1.bias")?) } else { None };
        let y = ops::patch_conv(
            &x.data,
            Layout::Nhwc,
            (b, self.in_dim, h, w),
            self.k,
            &m("1.weight")?,
            bias.as_deref(),
            self.dim,
        );
        Ok(Act::new(y, vec![b, h / self.k, w / self.k, self.dim]))
    }
}

/// `stages.{s}.blocks.{b}`: `x + gamma * fc2(gelu(fc1(LayerNorm(dwconv(x)))))`, all channels-last.
struct ConvBlock {
    name: String,
    prefix: String,
    tensors: Vec<String>,
    dim: usize,
    k: usize,
    bias: bool,
    gamma: bool,
    eps: f32,
}

impl Block for ConvBlock {
    fn name(&self) -> &str {
        &self.name
    }

    fn tensors(&self) -> &[String] {
        &self.tensors
    }

    fn forward(&self, s: &Store, mut x: Act) -> Result<Act> {
        let dim = self.dim;
        let (b, h, w) = nhwc(s, &self.name, &x, dim)?;
        let rows = b * h * w;
        let f = |t: &str| s.floats(&format!("{}{t}", self.prefix));
        let m = |t: &str| s.weight(&format!("{}{t}", self.prefix));

        let dw_bias = bias_or_zeros(s, self.bias, &format!("{}conv_dw.bias", self.prefix), dim)?;
        let mut y = ops::depthwise_conv(
            &x.data,
            (b, h, w, dim),
            self.k,
            &f("conv_dw.weight")?,
            &dw_bias,
        );
        ops::layer_norm(&mut y, dim, &f("norm.weight")?, &f("norm.bias")?, self.eps);
        // fc1 / fc2: Linear [out, in] or 1x1 conv [out, in, 1, 1], the same matrix either way. fc2's bias goes
        // in with the layer scale and the residual.
        let out = ops::mlp(
            &y,
            rows,
            &m("mlp.fc1.weight")?,
            &f("mlp.fc1.bias")?,
            &m("mlp.fc2.weight")?,
            None,
            dim,
        );
        drop(y);
        let gamma = if self.gamma { Some(f("gamma")?) } else { None };
        residual(&mut x.data, &out, &f("mlp.fc2.bias")?, gamma.as_deref());
        Ok(x)
    }
}

/// `x += gamma * (y + bias)` per row of `bias.len()` channels (gamma absent: `x += y + bias`), one pass.
fn residual(x: &mut [f32], y: &[f32], bias: &[f32], gamma: Option<&[f32]>) {
    let c = bias.len();
    let chunk = c * (16384 / c.max(1)).max(1);
    x.par_chunks_mut(chunk)
        .zip(y.par_chunks(chunk))
        .for_each(|(xc, yc)| {
            for (xr, yr) in xc.chunks_exact_mut(c).zip(yc.chunks_exact(c)) {
                match gamma {
                    Some(g) => {
                        for (((a, v), bb), g) in xr.iter_mut().zip(yr).zip(bias).zip(g) {
                            *a += g * (v + bb);
                        }
                    }
                    None => {
                        for ((a, v), bb) in xr.iter_mut().zip(yr).zip(bias) {
                            *a += v + bb;
                        }
                    }
                }
            }
        });
}

/// Where the head's LayerNorm sits.
#[derive(Clone, Copy, Debug)]
enum HeadNorm {
    /// `head.norm` on the pooled features (the default ConvNeXt head).
    AfterPool,
    /// `norm_pre` on every position before pooling (`head_norm_first`, `convnext_tiny_hnf`).
    BeforePool,
    /// No norm (a head reset with `reset_other`).
    None,
}

/// `head`: `[b, h, w, dim]` -> average over h, w -> norm -> (pre-logits fc + GELU) -> fc -> `[b, classes]`.
struct Head {
    tensors: Vec<String>,
    dim: usize,
    classes: usize,
    norm: HeadNorm,
    hidden: Option<usize>,
    eps: f32,
}

impl Block for Head {
    fn name(&self) -> &str {
        "head"
    }

    fn tensors(&self) -> &[String] {
        &self.tensors
    }

    fn forward(&self, s: &Store, mut x: Act) -> Result<Act> {
        let dim = self.dim;
        let (b, h, w) = nhwc(s, "head", &x, dim)?;
        if h * w == 0 {
            return Err(input_error(
                s,
                format!("head: cannot pool an empty {h}x{w} feature map"),
            ));
        }
        if let HeadNorm::BeforePool = self.norm {
            ops::layer_norm(
                &mut x.data,
                dim,
                &s.floats("norm_pre.weight")?,
                &s.floats("norm_pre.bias")?,
                self.eps,
            );
        }
        let mut pooled = vec![0.0f32; b * dim];
        let n = (h * w) as f32;
        for (dst, img) in pooled
            .chunks_exact_mut(dim)
            .zip(x.data.chunks_exact(h * w * dim))
        {
            for px in img.chunks_exact(dim) {
                dst.iter_mut().zip(px).for_each(|(d, v)| *d += v);
            }
            dst.iter_mut().for_each(|d| *d /= n);
        }
        if let HeadNorm::AfterPool = self.norm {
            ops::layer_norm(
                &mut pooled,
                dim,
                &s.floats("head.norm.weight")?,
                &s.floats("head.norm.bias")?,
                self.eps,
            );
        }
        if let Some(hidden) = self.hidden {
            pooled = ops::linear_weight(
                &pooled,
                b,
                &s.weight("head.pre_logits.fc.weight")?,
                hidden,
                Some(&s.floats("head.pre_logits.fc.bias")?),
            );
            ops::gelu(&mut pooled);
        }
        let logits = ops::linear_weight(
            &pooled,
            b,
            &s.weight("head.fc.weight")?,
            self.classes,
            Some(&s.floats("head.fc.bias")?),
        );
        Ok(Act::new(logits, vec![b, self.classes]))
    }
}
