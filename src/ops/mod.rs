//! Kernels over activations and borrowed weights. Weight-bearing ops take the weight as the `&[f32]` view
//! of the mapping (or a [`Weight`](crate::weight::Weight) in its stored dtype) and never copy the big
//! matrices; activations are dense row-major `Vec<f32>`.
//!
//! The map:
//! - `linear`: linear layers and the MLP ([`linear`], [`linear_weight`], [`mlp`]), the `yᵀ` scratch and the
//!   widening of non-f32 weights;
//! - `norm`: [`layer_norm`];
//! - `activation`: [`erf`] and the exact GELU, alone ([`gelu`]) or fused with a bias ([`bias_gelu`]);
//! - `conv`: [`patch_conv`], [`depthwise_conv`] and the [`Layout`] of image-like activations;
//! - `attention`: multi-head self-attention on small per-head matrices ([`attention`]);
//! - `bf16`: a bf16 file's linear layers and MLPs multiplied in bf16 (`vdpbf16ps`, or BFDOT on aarch64),
//!   used by `linear` where the CPU has it;
//! - `int8`: int8 weights computed in int8 (W8A8: per-token u8 activations, VNNI);
//! - `packed`: linear layers over weights stored in the micro-kernel's panel order, with fused epilogues
//!   ([`packed::linear_packed`]; [`linear_add`] and [`mlp_add`] fold a residual add in);
//! - `gemm`: the one safe door to the `gemm` crate ([`matmul`], [`MatRef`]);
//! - `simd`: run-time instruction-set dispatch (`simd::Kernel`, `simd::run`) and the hand-written vector
//!   kernels, with the x86 ones in `simd/x86.rs` and the aarch64 ones in `simd/neon.rs`; [`instruction_sets`]
//!   names the ones in use.
//!
//! `unsafe` lives only in `gemm` and `simd`.

mod activation;
mod attention;
mod bf16;
mod conv;
pub mod elementwise;
mod gemm;
pub mod int8;
mod linear;
mod norm;
pub mod packed;
pub(crate) mod simd;

pub use self::activation::{bias_gelu, erf, gelu};
pub use self::attention::{attention, Products, ScoreBias};
pub use self::bf16::available as bf16_native;
pub(crate) use self::bf16::native as bf16_runs;
pub use self::conv::{depthwise_conv, patch_cols, patch_conv, Layout};
pub use self::gemm::{matmul, matmul_t, MatRef};
pub use self::linear::{linear, linear_add, linear_weight, mlp, mlp_add, WIDEN_CHUNK_BYTES};
pub use self::norm::layer_norm;
pub use self::simd::{check_kernels_var, instruction_sets, kernels, KERNELS_VAR};

/// Values (64 KiB of f32) one rayon task of an element-wise or row-wise kernel handles: enough work to
/// amortise the task, and still a dozen or more tasks over one image's activations.
pub(crate) const ELEMS_PER_TASK: usize = 16384;

/// Rows of `row_len` values handed to one rayon task by the row-wise kernels: [`ELEMS_PER_TASK`] values'
/// worth, at least one row.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (ELEMS_PER_TASK / row_len.max(1)).max(1)
}

/// `bias`, or `out` zeros for a layer without one: the transposes that end the linear layers add a bias
/// along every output channel.
pub(crate) fn bias_or_zeros(bias: Option<&[f32]>, out: usize) -> std::borrow::Cow<'_, [f32]> {
    bias.map_or_else(|| vec![0.0; out].into(), Into::into)
}
