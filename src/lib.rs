//! wstream runs very large image classifiers (timm's ViT, ConvNeXt and Swin families) on machines with
//! little RAM. Weights stay in their safetensors files, memory-mapped read-only; models run block by block
//! straight from the mapping, and the pages of a block are released once it has run.
//!
//! Layers, one-way: [`store`], [`residency`], [`process`] (all `unsafe` lives there) know nothing of models;
//! [`ops`] are kernels over activations and borrowed weights (`unsafe` there: the GEMM calls in `ops::gemm`,
//! the run-time SIMD dispatch and the AVX-512 kernels in `ops::simd`);
//! [`models`] build blocks over a store; the CLI sits on top.

#![deny(unsafe_code)]

pub mod classify;
pub mod convert;
pub mod error;
pub mod exec;
pub mod models;
pub mod npy;
pub mod ops;
pub mod pipeline;
pub mod preprocess;
pub mod process;
pub mod profile;
pub mod residency;
pub mod store;
pub mod synth;
pub mod weight;
mod writer;

pub use error::{Error, Result};
pub use store::Store;
