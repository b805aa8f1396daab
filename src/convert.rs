//! Compact or re-laid-out copies of a checkpoint (`wstream convert`): f16/bf16 or int8 weights, and an
//! execution-order layout with page-aligned blocks.
//!
//! The output is a plain safetensors file (timm, Python's `safetensors` and the `safetensors` crate load it),
//! written tensor by tensor from the input's mapping in bounded chunks, under a temporary name renamed into
//! place at the end. Once on disk it is dropped from the page cache, so the first run reads it back in the
//! 2 MiB folios the weight mappings are mapped with (as written, it would stay cached in small ones). The formats are described in `weights/README.md` ("Converted weights").
//!
//! - f16 / bf16: every F32 tensor becomes that dtype (round to nearest even); others are copied. A finite
//!   value that would overflow to infinity is an error.
//! - int8: every weight matrix (a float tensor named `*.weight` with two or more dimensions: linear, conv,
//!   depthwise conv, head) becomes symmetric per-output-channel int8: `<name>` I8 of the same shape, then
//!   `<name>_scale` F32 `[out]`, `scale[o] = max_i |w[o, i]| / 127`, `q = round(w / scale)` in [-127, 127],
//!   `w ≈ q * scale`, then `<name>_colsum` I32 `[out]`, `colsum[o] = Σ_i q[o, i]` (the zero-point correction
//!   of the int8-activation product, `ops::int8`). Everything else stays F32.
//! - exec layout: tensors in the order the blocks read them, every tensor 64-byte aligned in the file and
//!   every block starting on a 4096-byte boundary, gaps filled by zero `__pad__.N` U8 tensors.
//! - packed layout (f32 only): the exec layout with every F32 linear weight (`*.weight`, `[out, in]` or a
//!   1x1 conv's `[out, in, 1, 1]`, `out` a multiple of 32) in the packed kernel's panel order
//!   (`ops::packed`): F32 `[out / 32, in, 32]` in the header, the source shapes and the panel geometry in
//!   the `wstream.packed` metadata ([`crate::store::PACKED_KEY`]). Converting a packed file to any other
//!   layout restores the source layout's bytes.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use half::slice::HalfFloatSliceExt;
use safetensors::{Dtype as StDtype, SafeTensors};

use crate::error::{Error, Result};
use crate::models::{Model, CONFIG_KEY, PAD_PREFIX};
use crate::ops::packed;
use crate::output::{self, Existing};
use crate::store::{Store, TensorInfo, PACKED_KEY};
use crate::weight::{colsum_name, scale_name, SCALE_SUFFIX};
use crate::writer::{self, HeaderEntry, PartialDir, PartialFile};

/// Every tensor of an exec-layout file starts on a multiple of this (absolute file offset).
pub const TENSOR_ALIGN: usize = 64;
/// Every block of an exec-layout file starts on a multiple of this (absolute file offset), as does the data
/// section.
pub const BLOCK_ALIGN: usize = 4096;
/// `wstream.int8` in the file's `__metadata__`: how to read the int8 weights back.
pub const INT8_FORMAT: &str =
    "symmetric per-output-channel; <name> I8 + <name>_scale F32 [out]; w = q * scale; \
     <name>_colsum I32 [out] = sum of q over each output channel";
/// Elements converted per chunk.
const CHUNK: usize = 1 << 16;

/// The dtype weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dtype {
    /// F32 (F16/BF16 tensors are widened; other dtypes are copied).
    #[default]
    F32,
    /// F32 tensors become F16 (round to nearest even); other dtypes are copied.
    F16,
    /// F32 tensors become BF16 (round to nearest even); other dtypes are copied.
    Bf16,
    /// Weight matrices become per-output-channel int8 plus F32 scales; other float tensors are F32.
    Int8,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::Int8 => "int8",
        }
    }
}

/// The order of the tensors in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// The input's order, packed (no padding).
    #[default]
    Source,
    /// The blocks' order, each block page-aligned, each tensor 64-byte aligned.
    Exec,
    /// [`Layout::Exec`] with the linear weights in the packed kernel's panel order.
    Packed,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Source => "source",
            Layout::Exec => "exec",
            Layout::Packed => "packed",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub dtype: Dtype,
    pub layout: Layout,
}

/// What [`convert`] wrote.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The weights file written (OUT, or OUT/model.safetensors).
    pub weights: PathBuf,
    /// OUT/config.json, when OUT is a folder and the input had a config.json.
    pub config: Option<PathBuf>,
    /// Tensors written, not counting scales and padding.
    pub tensors: usize,
    /// Weight matrices stored as int8 (each with a `_scale` tensor).
    pub quantized: usize,
    /// `__pad__.N` tensors.
    pub pads: usize,
    /// Tensor bytes read from the input.
    pub bytes_in: u64,
    /// Size of the output weights file.
    pub bytes_out: u64,
}

/// How one output tensor's bytes are made.
enum Op<'s> {
    /// The input bytes as they are.
    Copy(&'s TensorInfo),
    /// A float tensor in another float dtype.
    Cast(&'s TensorInfo),
    /// The int8 values of a weight matrix; its scales follow in the next [`Op::Scales`].
    Quantize(&'s TensorInfo),
    /// The scales computed by the preceding [`Op::Quantize`].
    Scales,
    /// The column sums computed by the preceding [`Op::Quantize`].
    Colsums,
    /// Zeros.
    Pad,
    /// An F32 weight matrix into the packed kernel's panel order.
    Pack(&'s TensorInfo),
    /// A packed weight back into its source layout.
    Unpack(&'s TensorInfo),
}

struct Item<'s> {
    name: String,
    dtype: StDtype,
    shape: Vec<usize>,
    op: Op<'s>,
    /// Relative to the start of the data section.
    offsets: (usize, usize),
}

/// Writes a converted copy of the model at `input` (a model folder, a `.safetensors` file or a shard index)
/// to `output`: a `.safetensors` file when its name ends so, otherwise a new folder in timm's Hugging Face
/// layout (`model.safetensors` + the input's `config.json` with a `"wstream_convert"` record). The config
/// also goes into the weights file's metadata under [`CONFIG_KEY`], where [`Model::load`] finds it when no
/// config.json is beside the file. Refuses an existing `output`, and an input [`Model::load`] does not
/// accept. `progress(done, total)` gets the input bytes converted so far.
pub fn convert(
    input: &Path,
    output: &Path,
    opts: &Options,
    mut progress: impl FnMut(u64, u64),
) -> Result<Summary> {
    let refuse = |msg: String| Error::Output {
        path: output.to_path_buf(),
        msg,
    };
    output::check(output, None, Existing::Refuse, &[input.to_path_buf()])?;
    let to_file = output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));

    let model = Model::load(input)?;
    let store = &model.store;
    if opts.layout == Layout::Packed && opts.dtype != Dtype::F32 {
        return Err(refuse(format!(
            "--layout packed stores f32 weights (the packed kernel is f32), not {}",
            opts.dtype.name()
        )));
    }
    if opts.dtype != Dtype::F32 && store.tensors().iter().any(|t| store.is_packed(&t.name)) {
        return Err(refuse(format!(
            "the input's weights are packed; convert it to f32 --layout source first, then to {}",
            opts.dtype.name()
        )));
    }
    // The input's own name (its folder or file, not `model.safetensors`) says where the output came from.
    let source = input
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| input.display().to_string());

    let items = plan(&model, opts)?;
    let mut metadata = BTreeMap::new();
    for f in store.files() {
        let (_, meta) = SafeTensors::read_metadata(f.bytes()).map_err(|e| Error::HeaderJson {
            path: f.path.clone(),
            msg: e.to_string(),
        })?;
        for (k, v) in meta.metadata().iter().flatten() {
            metadata.entry(k.clone()).or_insert_with(|| v.clone());
        }
        crate::residency::release(f.bytes(), 0..f.bytes().len().min(1 << 20), None)
            .map_err(|e| Error::io(&f.path, e))?;
    }
    // The input's config.json, else the one a single-file conversion embedded: kept in the output's
    // metadata too, so a single-file output (no config.json beside it) still preprocesses as the model says.
    let config = match input_config(input) {
        Some(p) => Some((
            std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?,
            p,
        )),
        None => metadata
            .get(CONFIG_KEY)
            .map(|t| (t.clone(), store.files()[0].path.clone())),
    };
    let config = config
        .map(|(text, origin)| with_record(&text, &origin, opts, &source))
        .transpose()?;
    match &config {
        Some(text) => {
            let value: serde_json::Value = serde_json::from_str(text).expect("checked JSON");
            metadata.insert(CONFIG_KEY.into(), value.to_string());
        }
        None => {
            metadata.remove(CONFIG_KEY);
        }
    }
    metadata.insert("wstream.dtype".into(), opts.dtype.name().into());
    metadata.insert("wstream.layout".into(), opts.layout.name().into());
    metadata.insert("wstream.source".into(), source.clone());
    if opts.dtype == Dtype::Int8 {
        metadata.insert("wstream.int8".into(), INT8_FORMAT.into());
    }
    metadata.remove(PACKED_KEY);
    if opts.layout == Layout::Packed {
        let shapes: BTreeMap<&str, &[usize]> = items
            .iter()
            .filter_map(|it| match it.op {
                Op::Pack(t) => Some((t.name.as_str(), &t.shape[..])),
                Op::Copy(t) if store.is_packed(&t.name) => Some((t.name.as_str(), &t.shape[..])),
                _ => None,
            })
            .collect();
        let record = serde_json::json!({ "geometry": packed::GEOMETRY, "tensors": shapes });
        metadata.insert(PACKED_KEY.into(), record.to_string());
    }
    let align = match opts.layout {
        Layout::Source => 8,
        Layout::Exec | Layout::Packed => BLOCK_ALIGN,
    };
    let header = writer::header(
        &metadata,
        items.iter().map(|it| HeaderEntry {
            name: &it.name,
            dtype: it.dtype,
            shape: &it.shape,
            offsets: it.offsets,
        }),
        align,
    );

    // Everything is written under a temporary name next to `output` and renamed into place at the end.
    let tmp = output::partial_path(output)?;
    let (mut dir, weights_tmp) = if to_file {
        (None, tmp.clone())
    } else {
        let dir = PartialDir::create(tmp.clone())?;
        let w = dir.path().join("model.safetensors");
        (Some(dir), w)
    };
    let mut w = PartialFile::create(weights_tmp)?;
    w.write_header(&header)?;
    let total: u64 = items
        .iter()
        .map(|it| match it.op {
            Op::Copy(t) | Op::Cast(t) | Op::Quantize(t) | Op::Pack(t) | Op::Unpack(t) => {
                t.nbytes() as u64
            }
            Op::Scales | Op::Colsums | Op::Pad => 0,
        })
        .sum();
    let data_start = w.written();
    let mut done = 0u64;
    let mut scales: Option<Vec<f32>> = None;
    let mut colsums: Option<Vec<i32>> = None;
    progress(0, total);
    for it in &items {
        if w.written() - data_start != it.offsets.0 as u64 {
            return Err(internal(
                &w,
                &it.name,
                "starts",
                it.offsets.0,
                w.written() - data_start,
            ));
        }
        match &it.op {
            Op::Copy(t) => {
                for c in store.bytes(t).chunks(4 * CHUNK) {
                    w.write_all(c)?;
                }
            }
            Op::Cast(t) => cast(store, t, it.dtype, &mut w)?,
            Op::Quantize(t) => {
                let (s, c) = quantize(store, t, &mut w)?;
                (scales, colsums) = (Some(s), Some(c));
            }
            Op::Scales => {
                let s = scales.take().expect("scales follow their weight");
                w.write_all(bytemuck::cast_slice(&s))?;
            }
            Op::Colsums => {
                let c = colsums.take().expect("column sums follow their weight");
                w.write_all(bytemuck::cast_slice(&c))?;
            }
            Op::Pad => w.write_all(&vec![0u8; it.offsets.1 - it.offsets.0])?,
            Op::Pack(t) => permute(store, t, packed::pack_range, &mut w)?,
            Op::Unpack(t) => permute(store, t, packed::unpack_range, &mut w)?,
        }
        if w.written() - data_start != it.offsets.1 as u64 {
            return Err(internal(
                &w,
                &it.name,
                "ends",
                it.offsets.1,
                w.written() - data_start,
            ));
        }
        if let Op::Copy(t) | Op::Cast(t) | Op::Quantize(t) | Op::Pack(t) | Op::Unpack(t) = it.op {
            // Done with these input pages: unmap them so the process holds one tensor at a time.
            let f = &store.files()[t.file];
            crate::residency::release(f.bytes(), t.range.clone(), None)
                .map_err(|e| Error::io(&f.path, e))?;
            done += t.nbytes() as u64;
            progress(done, total);
        }
    }
    let bytes_out = w.written();
    let summary = Summary {
        weights: if to_file {
            output.to_path_buf()
        } else {
            output.join("model.safetensors")
        },
        config: None,
        tensors: items
            .iter()
            .filter(|it| {
                matches!(
                    it.op,
                    Op::Copy(_) | Op::Cast(_) | Op::Quantize(_) | Op::Pack(_) | Op::Unpack(_)
                )
            })
            .count(),
        quantized: items
            .iter()
            .filter(|it| matches!(it.op, Op::Quantize(_)))
            .count(),
        pads: items.iter().filter(|it| matches!(it.op, Op::Pad)).count(),
        bytes_in: total,
        bytes_out,
    };
    w.sync_uncached()?;
    match dir.as_mut() {
        None => {
            if output.exists() {
                return Err(refuse("appeared while converting; left it alone".into()));
            }
            w.finish_as(output)?;
            Ok(summary)
        }
        Some(d) => {
            w.finish_in(d)?;
            if let Some(text) = &config {
                let mut c = PartialFile::create(d.path().join("config.json"))?;
                c.write_all(text.as_bytes())?;
                c.finish_in(d)?;
            }
            if output.exists() {
                return Err(refuse("appeared while converting; left it alone".into()));
            }
            dir.expect("a folder output").finish_as(output)?;
            Ok(Summary {
                config: config.map(|_| output.join("config.json")),
                ..summary
            })
        }
    }
}

fn internal(w: &PartialFile, name: &str, what: &str, planned: usize, actual: u64) -> Error {
    Error::Output {
        path: w.path().to_path_buf(),
        msg: format!(
            "internal error: tensor `{name}` {what} at data byte {actual}, planned {planned}"
        ),
    }
}

/// The config.json [`Model::load`] reads for `input`: in the folder, or beside the file.
fn input_config(input: &Path) -> Option<PathBuf> {
    let dir = if input.is_dir() {
        input.to_path_buf()
    } else {
        input.parent()?.to_path_buf()
    };
    let p = dir.join("config.json");
    p.is_file().then_some(p)
}

/// `text`, a config.json read from `src`, with a top-level `"wstream_convert"` record. The text is kept as it
/// was (key order, formatting) and the record inserted before the closing brace; a config that already has
/// one gets it replaced (and its keys re-serialised in sorted order).
fn with_record(text: &str, src: &Path, opts: &Options, source: &str) -> Result<String> {
    let bad = |msg: String| Error::Config {
        path: src.to_path_buf(),
        msg,
    };
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(bad("is not a JSON object".into()));
    };
    let record = serde_json::json!({
        "dtype": opts.dtype.name(),
        "layout": opts.layout.name(),
        "source": source,
    });
    let out = if obj.contains_key("wstream_convert") {
        obj.insert("wstream_convert".into(), record);
        serde_json::to_string_pretty(&value).expect("JSON of plain values") + "\n"
    } else {
        let body = text.trim_end();
        let close = body.len() - 1; // the object's closing brace
        let inner = body[..close].trim_end();
        let comma = if obj.is_empty() { "" } else { "," };
        format!(
            "{inner}{comma}\n  \"wstream_convert\": {record}\n}}{}",
            &text[body.len()..]
        )
    };
    debug_assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
    Ok(out)
}

fn is_float(d: StDtype) -> bool {
    matches!(d, StDtype::F32 | StDtype::F16 | StDtype::BF16)
}

/// A weight matrix int8 applies to: linear `[out, in]`, conv `[out, in/groups, kh, kw]`, the head.
fn is_matrix(t: &TensorInfo) -> bool {
    t.name.ends_with(".weight") && t.shape.len() >= 2 && is_float(t.dtype)
}

/// Whether the packed layout stores `t` in panels: an F32 linear weight, `[out, in]` or `[out, in, 1, 1]`,
/// with whole panels of outputs.
fn is_packable(t: &TensorInfo) -> bool {
    let linear = matches!(t.shape.as_slice(), [_, _] | [_, _, 1, 1]);
    linear
        && t.name.ends_with(".weight")
        && t.dtype == StDtype::F32
        && packed::packable(t.shape[0], t.shape[1])
}

/// Writes F32 matrix `t` with its elements permuted by `f` (`ops::packed::pack_range` or `unpack_range`),
/// chunk by chunk.
fn permute(
    store: &Store,
    t: &TensorInfo,
    f: fn(&[f32], usize, usize, &mut [f32]),
    w: &mut PartialFile,
) -> Result<()> {
    let src = store.view::<f32>(&t.name)?;
    let inp = t.shape.iter().skip(1).product::<usize>();
    let mut buf = vec![0.0f32; CHUNK];
    for start in (0..src.len()).step_by(CHUNK) {
        let out = &mut buf[..CHUNK.min(src.len() - start)];
        f(&src, inp, start, out);
        w.write_all(bytemuck::cast_slice(out))?;
    }
    Ok(())
}

/// One output tensor: name, dtype, shape, and how its bytes are made.
type Planned<'s> = (String, StDtype, Vec<usize>, Op<'s>);

/// The output tensors one input tensor becomes.
fn convert_one<'s>(
    store: &Store,
    t: &'s TensorInfo,
    dtype: Dtype,
    layout: Layout,
) -> Result<Vec<Planned<'s>>> {
    let panels = |t: &TensorInfo| {
        let [p, k, j] = packed::packed_shape(t.shape[0], t.shape[1..].iter().product());
        vec![p, k, j]
    };
    match (store.is_packed(&t.name), layout == Layout::Packed) {
        (true, true) => return Ok(vec![(t.name.clone(), t.dtype, panels(t), Op::Copy(t))]),
        (true, false) => {
            return Ok(vec![(
                t.name.clone(),
                t.dtype,
                t.shape.clone(),
                Op::Unpack(t),
            )])
        }
        (false, true) if is_packable(t) => {
            return Ok(vec![(t.name.clone(), t.dtype, panels(t), Op::Pack(t))])
        }
        _ => {}
    }
    let keep = || vec![(t.name.clone(), t.dtype, t.shape.clone(), Op::Copy(t))];
    let to = |d: StDtype| {
        if t.dtype == d {
            keep()
        } else {
            vec![(t.name.clone(), d, t.shape.clone(), Op::Cast(t))]
        }
    };
    // The F32 scales of weights that are already int8 stay as they are.
    let is_scale = t.name.strip_suffix(SCALE_SUFFIX).is_some_and(|w| {
        store
            .info(w)
            .is_ok_and(|w| w.dtype == StDtype::I8 && w.shape.first() == t.shape.first())
    });
    Ok(match dtype {
        _ if !is_float(t.dtype) || is_scale => keep(),
        Dtype::F32 => to(StDtype::F32),
        Dtype::F16 if t.dtype == StDtype::F32 => to(StDtype::F16),
        Dtype::Bf16 if t.dtype == StDtype::F32 => to(StDtype::BF16),
        Dtype::F16 | Dtype::Bf16 => keep(),
        Dtype::Int8 if is_matrix(t) => {
            let scale = scale_name(&t.name);
            if let Some(taken) = [scale.clone(), colsum_name(&t.name)]
                .into_iter()
                .find(|n| store.contains(n))
            {
                return Err(Error::BadTensor {
                    path: store.files()[t.file].path.clone(),
                    name: t.name.clone(),
                    msg: format!("cannot quantize: a tensor `{taken}` exists already"),
                });
            }
            vec![
                (
                    t.name.clone(),
                    StDtype::I8,
                    t.shape.clone(),
                    Op::Quantize(t),
                ),
                (scale, StDtype::F32, vec![t.shape[0]], Op::Scales),
                (
                    colsum_name(&t.name),
                    StDtype::I32,
                    vec![t.shape[0]],
                    Op::Colsums,
                ),
            ]
        }
        Dtype::Int8 => to(StDtype::F32),
    })
}

/// The output's tensors in file order with their offsets.
fn plan<'s>(model: &'s Model, opts: &Options) -> Result<Vec<Item<'s>>> {
    let store = &model.store;
    // Groups of input tensors, each starting on a page boundary in the exec layout.
    let inputs: Vec<&TensorInfo> = store
        .tensors()
        .iter()
        .filter(|t| !t.name.starts_with(PAD_PREFIX))
        .collect();
    let groups: Vec<Vec<&TensorInfo>> = match opts.layout {
        Layout::Source => vec![inputs],
        Layout::Exec | Layout::Packed => {
            let mut seen = HashSet::new();
            let mut groups = Vec::new();
            for i in 0..model.blocks.len() {
                let mut g = Vec::new();
                // An int8 input's scales come with their weights.
                for name in model.block_tensors(i) {
                    let t = store.info(&name)?;
                    if seen.insert(t.name.as_str()) {
                        g.push(t);
                    }
                }
                groups.push(g);
            }
            // Model::load refuses tensors no block claims, so this stays empty; were there any, they would
            // still be written, after the blocks, rather than dropped.
            let rest: Vec<&TensorInfo> = inputs
                .into_iter()
                .filter(|t| !seen.contains(t.name.as_str()))
                .collect();
            groups.push(rest);
            groups
        }
    };
    let exec = opts.layout != Layout::Source;
    let mut items = Vec::new();
    let mut offset = 0usize;
    let mut pads = 0usize;
    for g in groups {
        for (i, t) in g.into_iter().enumerate() {
            for (j, (name, dtype, shape, op)) in convert_one(store, t, opts.dtype, opts.layout)?
                .into_iter()
                .enumerate()
            {
                if exec {
                    let align = if i == 0 && j == 0 {
                        BLOCK_ALIGN
                    } else {
                        TENSOR_ALIGN
                    };
                    let start = offset.next_multiple_of(align);
                    if start > offset {
                        items.push(Item {
                            name: format!("{PAD_PREFIX}{pads}"),
                            dtype: StDtype::U8,
                            shape: vec![start - offset],
                            op: Op::Pad,
                            offsets: (offset, start),
                        });
                        pads += 1;
                        offset = start;
                    }
                }
                let bytes = shape.iter().product::<usize>() * dtype.bitsize() / 8;
                items.push(Item {
                    name,
                    dtype,
                    shape,
                    op,
                    offsets: (offset, offset + bytes),
                });
                offset += bytes;
            }
        }
    }
    Ok(items)
}

/// Decodes little-endian float bytes of `dtype` into `out` (same element count).
fn decode(bytes: &[u8], dtype: StDtype, out: &mut Vec<f32>) {
    out.clear();
    match dtype {
        StDtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
        ),
        StDtype::F16 => out.extend(bytes.chunks_exact(2).map(|c| {
            half::f16::from_bits(u16::from_le_bytes(c.try_into().expect("2 bytes"))).to_f32()
        })),
        StDtype::BF16 => out.extend(bytes.chunks_exact(2).map(|c| {
            half::bf16::from_bits(u16::from_le_bytes(c.try_into().expect("2 bytes"))).to_f32()
        })),
        other => unreachable!("decode of {other}"),
    }
}

/// Writes float tensor `t` as `to`, chunk by chunk. A finite value that overflows `to` is an error.
fn cast(store: &Store, t: &TensorInfo, to: StDtype, w: &mut PartialFile) -> Result<()> {
    let elem = t.dtype.bitsize() / 8;
    let mut vals = Vec::with_capacity(CHUNK);
    let mut h16 = vec![half::f16::ZERO; CHUNK];
    let mut b16 = vec![half::bf16::ZERO; CHUNK];
    for (ci, c) in store.bytes(t).chunks(CHUNK * elem).enumerate() {
        decode(c, t.dtype, &mut vals);
        let n = vals.len();
        let overflow = |i: usize| {
            vals[i].is_finite().then(|| Error::BadTensor {
                path: store.files()[t.file].path.clone(),
                name: t.name.clone(),
                msg: format!(
                    "value {} (element {}) overflows {to} (largest finite {}); not converted",
                    vals[i],
                    ci * CHUNK + i,
                    if to == StDtype::F16 {
                        half::f16::MAX.to_f32()
                    } else {
                        half::bf16::MAX.to_f32()
                    }
                ),
            })
        };
        match to {
            StDtype::F32 => w.write_all(bytemuck::cast_slice(&vals))?,
            StDtype::F16 => {
                let out = &mut h16[..n];
                out.convert_from_f32_slice(&vals);
                if let Some(e) = (0..n).filter(|&i| out[i].is_infinite()).find_map(overflow) {
                    return Err(e);
                }
                w.write_all(bytemuck::cast_slice(out))?;
            }
            StDtype::BF16 => {
                let out = &mut b16[..n];
                out.convert_from_f32_slice(&vals);
                if let Some(e) = (0..n).filter(|&i| out[i].is_infinite()).find_map(overflow) {
                    return Err(e);
                }
                w.write_all(bytemuck::cast_slice(out))?;
            }
            other => unreachable!("cast to {other}"),
        }
    }
    Ok(())
}

/// Writes weight matrix `t` as int8, output channel by output channel, and returns the scales and the column
/// sums.
fn quantize(store: &Store, t: &TensorInfo, w: &mut PartialFile) -> Result<(Vec<f32>, Vec<i32>)> {
    let rows = t.shape[0];
    let row_len = t.numel().checked_div(rows).unwrap_or(0);
    let elem = t.dtype.bitsize() / 8;
    let bytes = store.bytes(t);
    let mut scales = Vec::with_capacity(rows);
    let mut colsums = Vec::with_capacity(rows);
    let mut vals = Vec::new();
    let mut q = Vec::with_capacity(row_len);
    for o in 0..rows {
        decode(
            &bytes[o * row_len * elem..(o + 1) * row_len * elem],
            t.dtype,
            &mut vals,
        );
        let mut max = 0f32;
        for (i, &v) in vals.iter().enumerate() {
            if !v.is_finite() {
                return Err(Error::BadTensor {
                    path: store.files()[t.file].path.clone(),
                    name: t.name.clone(),
                    msg: format!(
                        "value {v} at output channel {o}, element {i}: int8 needs finite weights"
                    ),
                });
            }
            max = max.max(v.abs());
        }
        let scale = max / 127.0;
        q.clear();
        if scale > 0.0 {
            q.extend(
                vals.iter()
                    .map(|&v| (v / scale).round().clamp(-127.0, 127.0) as i8),
            );
        } else {
            q.resize(row_len, 0i8);
        }
        w.write_all(bytemuck::cast_slice(&q))?;
        scales.push(scale);
        colsums.push(q.iter().map(|&v| v as i32).sum());
    }
    Ok((scales, colsums))
}
