//! `wstream serve`: flags, then [`wstream::serve`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use wstream::pipeline::{default_memory, Pipeline};
use wstream::serve::{self, Config, Server};

use super::classify::{
    default_model_paths, locate_models, Ensemble, Evict, LabelType, OnOff, TransformArgs,
};
use super::{human_bytes, out, parse_bytes, printable};

#[derive(clap::Args)]
pub struct Args {
    /// A model folder in timm's Hugging Face layout, a .safetensors file, or a hub id in the local Hugging
    /// Face cache (timm/NAME, hf-hub:timm/NAME, NAME@REVISION). Repeat for an ensemble. Default: the three
    /// Large models under $WSTREAM_WEIGHTS, else the source tree's weights/.
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Address to listen on; port 0 picks a free port. The first line on stdout names the address bound.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Most requests run through each block together.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_batch: u64,
    /// Longest a request waits for others to join its batch, in milliseconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    batch_window_ms: u64,
    /// Most requests waiting for a batch; beyond it, 503 with Retry-After.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    queue: u64,
    /// Largest request body (suffixes K, M, G); beyond it, 413.
    #[arg(long, default_value = "32M", value_parser = parse_bytes)]
    max_body: u64,
    /// Longest a client may take to send its headers, and then its body, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    read_timeout_secs: u64,
    /// Require `Authorization: Bearer KEY` on every route but /healthz.
    #[arg(long)]
    api_key: Option<String>,
    /// `on`: int8 weights are multiplied in int8 (W8A8, where the CPU has AVX512-VNNI); `off`: widened to
    /// f32 (weight-only).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    int8_activations: OnOff,
    /// Compute threads (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
    /// Most bytes peak RSS may reach (suffixes K, M, G; default 7/8 of the cgroup's memory limit, else
    /// 1G): batches hold no more requests than fit.
    #[arg(long, value_parser = parse_bytes)]
    memory: Option<u64>,
    /// Most weight bytes resident at once (suffixes K, M, G; default twice the largest block, at most 160M).
    #[arg(long, value_parser = parse_bytes)]
    budget: Option<u64>,
    /// After a block ran: `rss` unmaps its pages (page cache stays warm), `cache` also drops them from the
    /// cache. Default: `cache` when the weights exceed the cgroup's memory limit (the cache cannot keep them
    /// anyway), else `rss`.
    #[arg(long, value_enum)]
    evict: Option<Evict>,
    /// How an ensemble's models are combined.
    #[arg(long, value_enum, default_value_t = Ensemble::MeanProb)]
    ensemble: Ensemble,
    /// Most pixels an image may have, checked before decoding.
    #[arg(long, default_value_t = wstream::preprocess::MAX_PIXELS, value_parser = clap::value_parser!(u64).range(1..))]
    max_pixels: u64,
    /// What a class's label says: its `name`, its `description` or its `index`.
    #[arg(long, value_enum, default_value_t = LabelType::Description)]
    label_type: LabelType,
    #[command(flatten)]
    transform: TransformArgs,
}

pub fn run(args: Args) -> Result<()> {
    if args.api_key.as_deref().is_some_and(str::is_empty) {
        bail!("--api-key is empty; give a key, or leave the flag out to serve without one");
    }
    // The batch commands' interrupt handler exits at once; a server finishes what it accepted instead.
    wstream::process::default_on_interrupt();
    super::set_threads(args.threads)?;
    let paths: Vec<PathBuf> = if args.models.is_empty() {
        default_model_paths()
    } else {
        locate_models(&args.models)?
    };
    if args.models.is_empty() {
        if let Some(missing) = paths.iter().find(|p| !p.exists()) {
            bail!(
                "{}: default model not found; run `wstream demo` (it synthesises missing models) or see weights/README.md",
                missing.display()
            );
        }
    }
    let run = super::classify::RunArgs {
        threads: args.threads,
        ensemble: args.ensemble,
        budget: args.budget,
        evict: args.evict.unwrap_or(Evict::Rss),
        batch: args.max_batch,
        memory: args.memory,
        max_pixels: args.max_pixels,
        label_type: args.label_type,
        verbose: false,
        transform: args.transform,
        int8_activations: args.int8_activations,
    };
    let mut pipeline = Pipeline::load(&paths, serve::pipeline_options(run.options(5, true)))?
        .with_warnings(|w| eprintln!("warning: {}", printable(&w.to_string())));
    if args.evict.is_none() {
        let weights = pipeline
            .models()
            .iter()
            .map(|m| m.store.total_bytes())
            .sum();
        if let Some(limit) = cache_cannot_hold(weights, wstream::process::cgroup_memory_limit()) {
            // Every batch reads the weights from storage again either way; dropping each block's pages
            // as soon as it ran spares the cgroup's reclaim from scanning for them, CPU the two compute
            // threads of a small box otherwise lose (BENCHMARKS.md, serve under 512 MiB).
            pipeline = pipeline.with_evict(wstream::exec::Evict::Cache);
            eprintln!(
                "note: --evict cache: the weights ({}) exceed the cgroup's memory limit ({}); give --evict rss to keep them in the page cache",
                human_bytes(weights),
                human_bytes(limit)
            );
        }
    }
    if pipeline.batch() < args.max_batch as usize {
        let limit = args.memory.unwrap_or_else(|| default_memory().0);
        eprintln!(
            "note: batches hold at most {} requests, not --max-batch {}, to keep peak memory under {} (raise it with --memory)",
            pipeline.batch(),
            args.max_batch,
            human_bytes(limit)
        );
    }
    let config = Config {
        addr: args.addr,
        max_batch: args.max_batch as usize,
        batch_window: Duration::from_millis(args.batch_window_ms),
        queue: args.queue as usize,
        max_body: args.max_body,
        api_key: args.api_key,
        read_timeout: Duration::from_secs(args.read_timeout_secs),
        ..Config::default()
    };
    let server = Server::bind(pipeline, config)?;
    out(format_args!("listening on http://{}", server.local_addr()?))?;
    server.run(async {
        match serve::termination_signal().await {
            Ok(sig) => eprintln!("wstream: {sig}: finishing the requests accepted, then exiting"),
            Err(e) => {
                eprintln!(
                    "warning: cannot watch for SIGTERM/SIGINT ({e}); stop the server with SIGKILL"
                );
                std::future::pending::<()>().await
            }
        }
    })?;
    Ok(())
}

/// The cgroup's memory limit when the weights' bytes exceed it: the page cache cannot keep them between
/// batches.
fn cache_cannot_hold(weights: u64, limit: Option<u64>) -> Option<u64> {
    limit.filter(|&l| weights > l)
}

#[cfg(test)]
mod tests {
    use super::cache_cannot_hold;

    #[test]
    fn the_cache_is_given_up_only_below_the_weights() {
        const G: u64 = 1 << 30;
        assert_eq!(cache_cannot_hold(3 * G, Some(G / 2)), Some(G / 2));
        assert_eq!(cache_cannot_hold(3 * G, Some(4 * G)), None);
        assert_eq!(cache_cannot_hold(3 * G, Some(3 * G)), None);
        assert_eq!(cache_cannot_hold(3 * G, None), None);
    }
}
