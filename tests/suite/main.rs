//! Most integration tests, as one test binary: one link of the crate and its dependencies instead of one
//! per file, which was most of their build time. Each file is a module; `cargo test --release --test suite
//! -- MODULE::` runs one of them.
//!
//! Test files stay their own binaries (tests/*.rs) when they change state the whole process shares (the
//! environment, signal handlers), measure this process (its RSS, faults, readings of the page cache of
//! fixtures that other tests read at the same time), or bound wall-clock time.

#[path = "../common/mod.rs"]
mod common;

mod arch_logits;
mod cli;
mod compact;
mod convert;
mod convnext;
mod deploy;
mod fuzz_corpus;
mod help;
mod hub;
mod jobs;
mod jpeg;
mod labels;
mod models;
mod npy;
mod outputs;
mod outputs_hub;
mod packed;
mod pipeline;
mod preprocess;
mod special_files;
mod store;
mod swin;
mod transform;
mod vit;
