//! `wstream inspect`: every tensor of a checkpoint, the detected family, and (with --residency) how much of
//! each tensor and each block is in the page cache right now, like vmtouch/fincore but per tensor.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use wstream::models::{group_of, Family};
use wstream::residency::resident_bytes;
use wstream::store::PAD_PREFIX;
use wstream::Store;

use super::{human_bytes, out, printable};

/// Run by tests/suite/help.rs, from the repository's root.
const EXAMPLES: &str = "\
Examples (from the repository's root):
  wstream inspect tests/fixtures/vit_tiny
  wstream inspect --residency --json tests/fixtures/swin_tiny/model.safetensors
  wstream inspect --residency --summary tests/fixtures/convnext_tiny";

#[derive(clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// A .safetensors file, a model.safetensors.index.json, a model folder in timm's Hugging Face layout, or
    /// a hub id in the local Hugging Face cache (timm/NAME, NAME@REVISION).
    path: PathBuf,
    /// Also report how many bytes of each tensor and each block are resident in memory (mincore).
    #[arg(long)]
    residency: bool,
    /// With --residency: only the per-block lines (and in JSON, no per-tensor entries).
    #[arg(long, requires = "residency")]
    summary: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct TensorRow {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    file: String,
    offset: usize,
    bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    resident_bytes: Option<u64>,
}

#[derive(Serialize)]
struct GroupRow {
    group: String,
    tensors: usize,
    bytes: u64,
    resident_bytes: u64,
}

#[derive(Serialize)]
struct Report {
    path: String,
    architecture: &'static str,
    files: Vec<String>,
    total_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    resident_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tensors: Vec<TensorRow>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<GroupRow>,
}

pub fn run(args: Args) -> Result<()> {
    let located = super::classify::locate_models(std::slice::from_ref(&args.path))?;
    let store = Store::open(&located[0])?;
    let architecture = Family::detect(&store).map_or("unknown", Family::name);
    let file_name = |i: usize| store.files()[i].path.display().to_string();
    let mut tensors = Vec::with_capacity(store.tensors().len());
    for t in store.tensors() {
        let resident = if args.residency {
            Some(resident_bytes(
                store.files()[t.file].bytes(),
                t.range.clone(),
            )?)
        } else {
            None
        };
        tensors.push(TensorRow {
            name: t.name.clone(),
            dtype: t.dtype.to_string(),
            shape: t.shape.clone(),
            file: file_name(t.file),
            offset: t.range.start,
            bytes: t.nbytes(),
            resident_bytes: resident,
        });
    }
    let groups = if args.residency {
        group_rows(&tensors)
    } else {
        Vec::new()
    };
    let resident = args
        .residency
        .then(|| tensors.iter().filter_map(|t| t.resident_bytes).sum());
    let tensor_count = tensors.len();
    if args.summary {
        tensors.clear();
    }
    let report = Report {
        path: args.path.display().to_string(),
        architecture,
        files: (0..store.files().len()).map(file_name).collect(),
        total_bytes: store.total_bytes(),
        resident_bytes: resident,
        tensors,
        groups,
    };
    if args.json {
        out(serde_json::to_string(&report)?)?;
    } else {
        print_table(&report, tensor_count, args.summary)?;
    }
    Ok(())
}

/// Per-block totals, in execution order (see [`execution_key`]); the padding tensors of the exec layout
/// as one "padding" line, last.
fn group_rows(tensors: &[TensorRow]) -> Vec<GroupRow> {
    let mut rows: Vec<GroupRow> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for t in tensors {
        let g = if t.name.starts_with(PAD_PREFIX) {
            PADDING
        } else {
            group_of(&t.name)
        };
        let i = *index.entry(g.to_string()).or_insert_with(|| {
            rows.push(GroupRow {
                group: g.to_string(),
                tensors: 0,
                bytes: 0,
                resident_bytes: 0,
            });
            rows.len() - 1
        });
        rows[i].tensors += 1;
        rows[i].bytes += t.bytes as u64;
        rows[i].resident_bytes += t.resident_bytes.unwrap_or(0);
    }
    rows.sort_by_cached_key(|r| execution_key(&r.group));
    rows
}

const PADDING: &str = "padding";

/// Orders block groups as timm runs them, from their names alone (tensors on disk are in any order):
/// the stem first; then numbered stages and blocks by number (blocks.2 before blocks.10), a stage's
/// downsample before its blocks; the final norm, then the head; padding after everything.
fn execution_key(group: &str) -> (u8, Vec<(u8, u64, String)>) {
    let first = group.split('.').next().unwrap_or("");
    let rank = match first {
        "stem" | "patch_embed" | "cls_token" | "reg_token" | "pos_embed" | "absolute_pos_embed" => {
            0
        }
        "norm" | "fc_norm" | "head_norm" => 2,
        "head" => 3,
        PADDING => 4,
        _ => 1,
    };
    let parts = group
        .split('.')
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u64>() {
            Ok(n) => (1, n, String::new()),
            Err(_) if p == "downsample" => (0, 0, String::new()),
            Err(_) => (2, 0, p.to_string()),
        })
        .collect();
    (rank, parts)
}

/// The name columns are padded to their longest entry up to this width; a longer name overflows its row.
/// `format!` refuses widths over 65,535 (it panicked on such a tensor name), and no column needs to be wider
/// than a screen.
const MAX_NAME_COLUMN: usize = 100;

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The header line, a line per tensor (unless `summary`), then with residency a line per block.
fn print_table(r: &Report, tensor_count: usize, summary: bool) -> std::io::Result<()> {
    out(format_args!(
        "{}: {} tensors in {} file(s), {} ({} bytes), architecture: {}",
        printable(&r.path),
        tensor_count,
        r.files.len(),
        human_bytes(r.total_bytes),
        r.total_bytes,
        r.architecture
    ))?;
    if !summary {
        print_tensors(r)?;
    }
    if let Some(resident) = r.resident_bytes {
        if !summary {
            out("")?;
        }
        print_groups(r, resident)?;
    }
    Ok(())
}

fn print_tensors(r: &Report) -> std::io::Result<()> {
    let multi = r.files.len() > 1;
    // Names and paths come from the file: escaped before their widths are taken.
    let names: Vec<_> = r.tensors.iter().map(|t| printable(&t.name)).collect();
    let name_w = names
        .iter()
        .map(|n| n.len())
        .max()
        .unwrap_or(4)
        .clamp(4, MAX_NAME_COLUMN);
    let resident_head = if r.resident_bytes.is_some() {
        "  resident"
    } else {
        ""
    };
    out(format_args!(
        "{:<name_w$}  {:<5}  {:<20}  {:>12}  {:>10}{resident_head}",
        "name", "dtype", "shape", "offset", "bytes"
    ))?;
    for (t, name) in r.tensors.iter().zip(&names) {
        let resident = t
            .resident_bytes
            .map(|b| format!("  {:>7.1}%", percent(b, t.bytes as u64)))
            .unwrap_or_default();
        let file = if multi {
            format!("  {}", printable(&t.file))
        } else {
            String::new()
        };
        out(format_args!(
            "{:<name_w$}  {:<5}  {:<20}  {:>12}  {:>10}{resident}{file}",
            name,
            t.dtype,
            format!("{:?}", t.shape),
            t.offset,
            t.bytes
        ))?;
    }
    Ok(())
}

fn print_groups(r: &Report, resident: u64) -> std::io::Result<()> {
    let groups: Vec<_> = r.groups.iter().map(|g| printable(&g.group)).collect();
    let w = groups
        .iter()
        .map(|g| g.len())
        .max()
        .unwrap_or(5)
        .clamp(5, MAX_NAME_COLUMN);
    out(format_args!(
        "{:<w$}  {:>7}  {:>10}  {:>10}  {:>7}",
        "block", "tensors", "bytes", "resident", "%"
    ))?;
    for (g, group) in r.groups.iter().zip(&groups) {
        out(format_args!(
            "{:<w$}  {:>7}  {:>10}  {:>10}  {:>6.1}%",
            group,
            g.tensors,
            human_bytes(g.bytes),
            human_bytes(g.resident_bytes),
            percent(g.resident_bytes, g.bytes)
        ))?;
    }
    out(format_args!(
        "resident: {} of {} ({:.1}%)",
        human_bytes(resident),
        human_bytes(r.total_bytes),
        percent(resident, r.total_bytes)
    ))?;
    Ok(())
}
