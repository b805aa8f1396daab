//! The layers the families share, each declared once from the builder and applied with the running block's
//! [`Weights`].
//!
//! A layer's constructor takes timm's module path (`blocks.3.attn.proj`), declares its tensors
//! (`blocks.3.attn.proj.weight`, `.bias`) with their expected shapes through [`BuildCtx::param`], and keeps
//! the [`Param`] handles; its `forward` / `apply` reads them through [`Weights`] and calls the kernel in
//! [`crate::ops`]. A model file therefore names each tensor once, in its `build`, and its forwards hold no
//! tensor names at all. To add a family, compose these in `build` (see `vit.rs` for the smallest example);
//! add a layer here when a second family needs it.

use std::borrow::Cow;
use std::sync::Mutex;

use crate::error::Result;
use crate::models::{BuildCtx, Param, Weights};
use crate::ops::int8::{self, Int8Weight};
use crate::ops::{self, Layout};
use crate::weight::Weight;

/// Whether a layer has a bias tensor (`<prefix>.bias`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bias {
    /// Required.
    Yes,
    /// Must be absent (a bias-free layer: its presence fails [`BuildCtx`]'s unused-tensor check).
    No,
    /// Present in some variants only (ViT's and Swin's `qkv_bias`).
    Optional,
}

impl Bias {
    /// Declares `{prefix}.bias` of `[n]` accordingly.
    fn declare(self, ctx: &mut BuildCtx, prefix: &str, n: usize) -> Result<Option<Param>> {
        let name = format!("{prefix}.bias");
        match self {
            Bias::Yes => ctx.param(&name, &[n]).map(Some),
            Bias::No => Ok(None),
            Bias::Optional => ctx.optional(&name, &[n]),
        }
    }
}

/// timm's `nn.Linear`: `y = x Wᵀ + b`, weight `[out, in]` in its stored dtype.
#[derive(Debug, Clone, Copy)]
pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
    pub in_dim: usize,
    pub out_dim: usize,
    /// Whether an int8 weight may be multiplied in int8 (W8A8); `false` keeps the layer on the weight-only
    /// path (see [`Linear::weight_only`]).
    pub w8a8: bool,
}

impl Linear {
    /// Declares `{prefix}.weight` `[out_dim, in_dim]` and its bias.
    pub fn new(
        ctx: &mut BuildCtx,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        bias: Bias,
    ) -> Result<Linear> {
        Ok(Linear {
            weight: ctx.param(&format!("{prefix}.weight"), &[out_dim, in_dim])?,
            bias: bias.declare(ctx, prefix, out_dim)?,
            in_dim,
            out_dim,
            w8a8: true,
        })
    }

    /// This layer with an int8 weight always widened to f32 (its input never quantized). The models use it
    /// for the classifier: it runs on one row per image, so its product is bound by reading the weight and
    /// int8 activations would save nothing, while its error would go straight into the logits.
    pub fn weight_only(self) -> Linear {
        Linear {
            w8a8: false,
            ..self
        }
    }

    /// What the attention fed by this layer (its qkv projection) multiplies in: bf16 when this layer's own
    /// product runs in a narrow type here (a bf16 weight with the bf16 kernel, or an int8 one in W8A8), f32
    /// otherwise (f32 files keep their parity with timm; `--int8-activations off` keeps today's path).
    pub fn attention_products(&self, w: &Weights) -> Result<ops::Products> {
        let narrow = match w.dtype(self.weight)? {
            safetensors::Dtype::BF16 => ops::bf16_runs(self.in_dim),
            safetensors::Dtype::I8 => w8a8_runs(w, self.w8a8, self.in_dim),
            _ => false,
        };
        Ok(if narrow {
            ops::Products::Bf16
        } else {
            ops::Products::F32
        })
    }

    /// `residual += scale * forward(x)` in the kernel's epilogue when the weight is stored packed;
    /// `Ok(false)` (nothing done) otherwise, and the caller adds the residual itself.
    pub fn add_to(
        &self,
        w: &Weights,
        x: &[f32],
        rows: usize,
        residual: &mut [f32],
        scale: Option<&[f32]>,
    ) -> Result<bool> {
        let bias = w.maybe_floats(self.bias)?;
        Ok(ops::linear_add(
            x,
            rows,
            &w.weight(self.weight)?,
            bias.as_deref(),
            scale,
            residual,
        ))
    }

    /// `[rows, in_dim]` -> `[rows, out_dim]`.
    pub fn forward(&self, w: &Weights, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let bias = w.maybe_floats(self.bias)?;
        let weight = w.weight(self.weight)?;
        if let Some(q) = int8_weight(w, self.weight, &weight, self.w8a8, self.in_dim)? {
            return Ok(int8_linear(
                w,
                self.weight,
                x,
                rows,
                &q,
                &weight,
                bias.as_deref(),
            ));
        }
        Ok(ops::linear_weight(
            x,
            rows,
            &weight,
            self.out_dim,
            bias.as_deref(),
        ))
    }
}

/// Per-layer W8A8 errors, when [`record_int8_errors`] switched recording on.
static INT8_ERRORS: Mutex<Option<Vec<(String, f64)>>> = Mutex::new(None);

/// Starts (or stops) recording, for each linear layer run in W8A8, the relative L2 distance of its output
/// from the weight-only (widened f32) product on the same input: the error activation quantization adds.
/// Each recorded layer then runs both ways, so this is for measurement (`tools/int8_layers.rs`), not runs.
pub fn record_int8_errors(on: bool) {
    *INT8_ERRORS.lock().unwrap_or_else(|e| e.into_inner()) = on.then(Vec::new);
}

/// The errors recorded since the last call, as (weight name, relative L2), in the order the layers ran.
pub fn take_int8_errors() -> Vec<(String, f64)> {
    INT8_ERRORS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .map(std::mem::take)
        .unwrap_or_default()
}

/// A W8A8 product, recorded against the weight-only one when recording is on.
fn int8_linear(
    w: &Weights,
    p: Param,
    x: &[f32],
    rows: usize,
    q: &Int8Weight,
    weight: &Weight,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let y = int8::linear(x, rows, q, bias);
    let mut rec = INT8_ERRORS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(errors) = rec.as_mut() {
        let want = ops::linear_weight(x, rows, weight, q.scale.len(), bias);
        let num: f64 = y
            .iter()
            .zip(&want)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        errors.push((w.tensor_name(p).to_string(), (num / den).sqrt()));
    }
    y
}

/// `weight` (of parameter `p`, `inp` inputs) for the W8A8 product, when it is int8, `allowed` for its layer,
/// asked for by the pipeline and possible on this CPU; `None` sends it down the widening path.
fn int8_weight<'a>(
    w: &Weights<'a>,
    p: Param,
    weight: &'a Weight<'a>,
    allowed: bool,
    inp: usize,
) -> Result<Option<Int8Weight<'a>>> {
    match weight {
        Weight::I8 { q, scale } if w8a8_runs(w, allowed, inp) => {
            Ok(Some(Int8Weight::new(q, scale, w.colsum(p)?)))
        }
        _ => Ok(None),
    }
}

/// Whether an int8 weight of `inp` inputs, `allowed` W8A8 for its layer, is multiplied in int8 here.
fn w8a8_runs(w: &Weights, allowed: bool, inp: usize) -> bool {
    allowed && w.int8_activations() && int8::available(inp)
}

/// timm's `nn.LayerNorm` (and `LayerNorm2d` on channels-last features) over the last `dim` values.
#[derive(Debug, Clone, Copy)]
pub struct LayerNorm {
    pub weight: Param,
    pub bias: Param,
    pub dim: usize,
    pub eps: f32,
}

impl LayerNorm {
    /// Declares `{prefix}.weight` and `{prefix}.bias`, both `[dim]`.
    pub fn new(ctx: &mut BuildCtx, prefix: &str, dim: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: ctx.param(&format!("{prefix}.weight"), &[dim])?,
            bias: ctx.param(&format!("{prefix}.bias"), &[dim])?,
            dim,
            eps,
        })
    }

    /// The norm when `{prefix}.weight` is present (some variants have it), else `None`.
    pub fn optional(
        ctx: &mut BuildCtx,
        prefix: &str,
        dim: usize,
        eps: f32,
    ) -> Result<Option<LayerNorm>> {
        if ctx.store.contains(&format!("{prefix}.weight")) {
            LayerNorm::new(ctx, prefix, dim, eps).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Normalises every row of `x` in place.
    pub fn apply(&self, w: &Weights, x: &mut [f32]) -> Result<()> {
        ops::layer_norm(
            x,
            self.dim,
            &w.floats(self.weight)?,
            &w.floats(self.bias)?,
            self.eps,
        );
        Ok(())
    }
}

/// timm's `Mlp`: `fc2(gelu(fc1(x)))`, exact GELU, both layers biased, `dim -> hidden -> dim`.
#[derive(Debug, Clone, Copy)]
pub struct Mlp {
    fc1: Param,
    fc1_bias: Param,
    fc2: Param,
    /// Public for a caller that adds it itself ([`Mlp::forward_without_fc2_bias`]).
    pub fc2_bias: Param,
    dim: usize,
    /// fc1's outputs: the width of the hidden activation.
    pub hidden: usize,
}

impl Mlp {
    /// Declares `{prefix}.fc1` `[hidden, dim]` and `{prefix}.fc2` `[dim, hidden]` with their biases.
    pub fn new(ctx: &mut BuildCtx, prefix: &str, dim: usize, hidden: usize) -> Result<Mlp> {
        Mlp::declare(ctx, prefix, dim, hidden, &[])
    }

    /// [`Mlp::new`] for weights stored as 1x1 convs (`[hidden, dim, 1, 1]`, `[dim, hidden, 1, 1]`): the same
    /// bytes as the linear weights, read in place the same way.
    pub fn conv1x1(ctx: &mut BuildCtx, prefix: &str, dim: usize, hidden: usize) -> Result<Mlp> {
        Mlp::declare(ctx, prefix, dim, hidden, &[1, 1])
    }

    fn declare(
        ctx: &mut BuildCtx,
        prefix: &str,
        dim: usize,
        hidden: usize,
        kernel: &[usize],
    ) -> Result<Mlp> {
        let shape = |out: usize, inp: usize| [&[out, inp][..], kernel].concat();
        Ok(Mlp {
            fc1: ctx.param(&format!("{prefix}.fc1.weight"), &shape(hidden, dim))?,
            fc1_bias: ctx.param(&format!("{prefix}.fc1.bias"), &[hidden])?,
            fc2: ctx.param(&format!("{prefix}.fc2.weight"), &shape(dim, hidden))?,
            fc2_bias: ctx.param(&format!("{prefix}.fc2.bias"), &[dim])?,
            dim,
            hidden,
        })
    }

    /// `[rows, dim]` -> `[rows, dim]`.
    pub fn forward(&self, w: &Weights, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.run(w, x, rows, Some(self.fc2_bias))
    }

    /// `residual += scale * forward(x)` with fc1's bias and GELU and fc2's bias, the scale and the residual
    /// add in the kernels' epilogues when both weights are stored packed; `Ok(false)` (nothing done)
    /// otherwise, and the caller adds the residual itself.
    pub fn add_to(
        &self,
        w: &Weights,
        x: &[f32],
        rows: usize,
        residual: &mut [f32],
        scale: Option<&[f32]>,
    ) -> Result<bool> {
        Ok(ops::mlp_add(
            x,
            rows,
            &w.weight(self.fc1)?,
            &w.floats(self.fc1_bias)?,
            &w.weight(self.fc2)?,
            &w.floats(self.fc2_bias)?,
            scale,
            residual,
        ))
    }

    /// [`Mlp::forward`] leaving out fc2's bias, for a caller that fuses it into the residual add.
    pub fn forward_without_fc2_bias(
        &self,
        w: &Weights,
        x: &[f32],
        rows: usize,
    ) -> Result<Vec<f32>> {
        self.run(w, x, rows, None)
    }

    fn run(&self, w: &Weights, x: &[f32], rows: usize, b2: Option<Param>) -> Result<Vec<f32>> {
        let b2 = w.maybe_floats(b2)?;
        let (w1, b1, w2) = (
            w.weight(self.fc1)?,
            w.floats(self.fc1_bias)?,
            w.weight(self.fc2)?,
        );
        let q1 = int8_weight(w, self.fc1, &w1, true, self.dim)?;
        let q2 = int8_weight(w, self.fc2, &w2, true, self.hidden)?;
        let recording = INT8_ERRORS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        Ok(match (q1, q2) {
            (Some(q1), Some(q2)) if !recording => int8::mlp(x, rows, &q1, &b1, &q2, b2.as_deref()),
            (Some(q1), Some(q2)) => {
                // The layers one by one: the same values as the fused MLP (ops::int8's tests).
                let mut h = int8_linear(w, self.fc1, x, rows, &q1, &w1, None);
                ops::bias_gelu(&mut h, &b1);
                int8_linear(w, self.fc2, &h, rows, &q2, &w2, b2.as_deref())
            }
            (Some(q1), None) => {
                let mut h = int8_linear(w, self.fc1, x, rows, &q1, &w1, None);
                ops::bias_gelu(&mut h, &b1);
                ops::linear_weight(&h, rows, &w2, self.dim, b2.as_deref())
            }
            (None, Some(q2)) => {
                let mut h = ops::linear_weight(x, rows, &w1, self.hidden, None);
                ops::bias_gelu(&mut h, &b1);
                int8_linear(w, self.fc2, &h, rows, &q2, &w2, b2.as_deref())
            }
            (None, None) => ops::mlp(x, rows, &w1, &b1, &w2, b2.as_deref(), self.dim),
        })
    }
}

/// A non-overlapping `k x k`, stride-`k` convolution (patch embedding, ConvNeXt stem and downsample),
/// weight `[out, in, k, k]`; output channels-last.
#[derive(Debug, Clone, Copy)]
pub struct PatchConv {
    pub weight: Param,
    pub bias: Option<Param>,
    pub in_chans: usize,
    pub out: usize,
    pub k: usize,
}

impl PatchConv {
    /// Declares `{prefix}.weight` `[out, in_chans, k, k]` and its bias.
    pub fn new(
        ctx: &mut BuildCtx,
        prefix: &str,
        (out, in_chans, k): (usize, usize, usize),
        bias: Bias,
    ) -> Result<PatchConv> {
        Ok(PatchConv {
            weight: ctx.param(&format!("{prefix}.weight"), &[out, in_chans, k, k])?,
            bias: bias.declare(ctx, prefix, out)?,
            in_chans,
            out,
            k,
        })
    }

    /// `x` of `(b, in_chans, h, w)` in `layout` -> `[b, h/k, w/k, out]`; the caller checks the shape.
    pub fn forward(
        &self,
        w: &Weights,
        x: &[f32],
        layout: Layout,
        (b, h, wd): (usize, usize, usize),
    ) -> Result<Vec<f32>> {
        let bias = w.maybe_floats(self.bias)?;
        let weight = w.weight(self.weight)?;
        let (k, dims) = (self.k, (b, self.in_chans, h, wd));
        // W8A8 only on feature maps (ConvNeXt's downsamples): a conv on the image (stem, patch embedding)
        // keeps its pixels f32, as ONNX Runtime's dynamic quantization does.
        let inp = self.in_chans * k * k;
        if layout == Layout::Nhwc {
            if let Some(q) = int8_weight(w, self.weight, &weight, true, inp)? {
                let cols = ops::patch_cols(x, layout, dims, k);
                let rows = b * (h / k) * (wd / k);
                return Ok(int8_linear(
                    w,
                    self.weight,
                    &cols,
                    rows,
                    &q,
                    &weight,
                    bias.as_deref(),
                ));
            }
        }
        Ok(ops::patch_conv(
            x,
            layout,
            dims,
            k,
            &weight,
            bias.as_deref(),
            self.out,
        ))
    }
}

/// A depthwise `k x k` convolution, stride 1, padding `k / 2`, weight `[dim, 1, k, k]`, on channels-last
/// features.
#[derive(Debug, Clone, Copy)]
pub struct Depthwise {
    pub weight: Param,
    pub bias: Option<Param>,
    pub dim: usize,
    pub k: usize,
}

impl Depthwise {
    /// Declares `{prefix}.weight` `[dim, 1, k, k]` and its bias.
    pub fn new(
        ctx: &mut BuildCtx,
        prefix: &str,
        dim: usize,
        k: usize,
        bias: Bias,
    ) -> Result<Depthwise> {
        Ok(Depthwise {
            weight: ctx.param(&format!("{prefix}.weight"), &[dim, 1, k, k])?,
            bias: bias.declare(ctx, prefix, dim)?,
            dim,
            k,
        })
    }

    /// `[b, h, w, dim]` -> `[b, h, w, dim]`.
    pub fn forward(
        &self,
        w: &Weights,
        x: &[f32],
        (b, h, wd): (usize, usize, usize),
    ) -> Result<Vec<f32>> {
        let bias = match self.bias {
            Some(p) => w.floats(p)?,
            None => Cow::Owned(vec![0.0; self.dim]),
        };
        Ok(ops::depthwise_conv(
            x,
            (b, h, wd, self.dim),
            self.k,
            &w.floats(self.weight)?,
            &bias,
        ))
    }
}
