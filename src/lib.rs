//! wstream runs very large image classifiers (timm's ViT, ConvNeXt and Swin families) on machines with
//! little RAM. Weights stay in their safetensors files, memory-mapped read-only; models run block by block
//! straight from the mapping, and the pages of a block are released once it has run.
//!
//! Layers, one-way:
//! - [`store`] (the mappings, header validation, shards, the SIGBUS guard), [`residency`] (madvise, fadvise,
//!   mincore) and [`process`] (RSS, faults, storage reads) do the OS work and know nothing of models;
//! - [`ops`] are kernels over activations and borrowed weights, by concern (linear, norm, activation, conv,
//!   attention, elementwise), with the run-time SIMD dispatch in `ops::simd` and the x86 kernels in
//!   `ops::simd::x86`;
//! - [`models`] build each family's blocks over a store: a block declares the tensors it reads (typed
//!   [`models::Param`] handles) and its forward reads only those, through the shared [`models::layers`];
//! - [`exec`] streams blocks through memory (prefetch, budget, release, layer-major batches) and records what
//!   each cost; [`profile`] presents those records;
//! - [`pipeline`] runs models on inputs (preprocessing, batches, ensembles, answers) for the CLI, a server or
//!   any program; the `wstream` command (`src/cli`, the `cli` feature) only parses flags and presents;
//! - [`inputs`] (which files, in what order, which shard) and [`records`] (result files that survive a kill
//!   and resume) serve long batch runs.
//!
//! `unsafe` lives in `store`, `residency`, `process`, `ops::gemm`, `ops::simd` and `jpeg` (the calls into
//! libjpeg-turbo), each use with its SAFETY comment; the crate denies it elsewhere.

#![deny(unsafe_code)]

#[cfg(feature = "candle")]
pub mod candle;
pub mod classify;
pub mod convert;
pub mod error;
pub mod exec;
pub mod fsutil;
pub mod hub;
pub mod inputs;
mod jpeg;
pub mod models;
pub mod npy;
pub mod ops;
pub mod output;
pub mod pipeline;
pub mod preprocess;
pub mod process;
pub mod profile;
#[cfg(feature = "python")]
mod python;
pub mod records;
pub mod residency;
#[cfg(feature = "serve")]
pub mod serve;
pub mod store;
pub mod synth;
pub mod transform;
pub mod weight;
mod writer;

pub use error::{Error, Result};
pub use store::Store;
