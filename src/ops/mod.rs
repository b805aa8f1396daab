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
//! - `gemm`: the one safe door to the `gemm` crate ([`matmul`], [`MatRef`]);
//! - `simd`: run-time instruction-set dispatch (`simd::Kernel`, `simd::run`) and the hand-written vector
//!   kernels, with the x86 ones in `simd/x86.rs`.
//!
//! `unsafe` lives only in `gemm` and `simd`.

mod activation;
mod attention;
mod conv;
pub mod elementwise;
mod gemm;
mod linear;
mod norm;
pub(crate) mod simd;

pub use self::activation::{bias_gelu, erf, gelu};
pub use self::attention::{attention, ScoreBias};
pub use self::conv::{depthwise_conv, patch_conv, Layout};
pub use self::gemm::{matmul, matmul_t, MatRef};
pub use self::linear::{linear, linear_weight, mlp, WIDEN_CHUNK_BYTES};
pub use self::norm::layer_norm;
pub use self::simd::{check_kernels_var, kernels, KERNELS_VAR};

/// Values (64 KiB of f32) one rayon task of an element-wise or row-wise kernel handles: enough work to
/// amortise the task, and still a dozen or more tasks over one image's activations.
pub(crate) const ELEMS_PER_TASK: usize = 16384;

/// Rows of `row_len` values handed to one rayon task by the row-wise kernels: [`ELEMS_PER_TASK`] values'
/// worth, at least one row.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (ELEMS_PER_TASK / row_len.max(1)).max(1)
}
