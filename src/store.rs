//! Memory-mapped safetensors checkpoints: header validation, a tensor index with absolute byte ranges, and
//! zero-copy typed views borrowed straight from the read-only shared mapping.
//!
//! A checkpoint is one `.safetensors` file or a sharded set (`model.safetensors.index.json` + shards); both
//! open as one [`Store`]. Nothing is read at open but the headers: the OS pages tensor data in on first touch
//! and may drop it again under pressure, because every page is file-backed and clean.
#![allow(unsafe_code)]

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::weight::{self, Weight};

/// Headers larger than this are refused before they are parsed (the `safetensors` crate's own cap).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;
/// Names of the padding tensors `wstream convert --layout exec` puts between blocks (and between tensors)
/// so each starts aligned; they hold zeros and no model reads them.
pub const PAD_PREFIX: &str = "__pad__.";
const SINGLE_FILE: &str = "model.safetensors";
const SHARD_INDEX: &str = "model.safetensors.index.json";

/// One mapped file of a checkpoint.
pub struct MappedFile {
    pub path: PathBuf,
    file: File,
    map: Mmap,
    /// Size and modification time at open; checked again by [`Store::check_unchanged`].
    len: u64,
    modified: Option<SystemTime>,
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return Err(Error::NoWeights { path: path.into() });
        }
        let len = meta.len();
        if len == 0 {
            return Err(Error::EmptyFile { path: path.into() });
        }
        // SAFETY: a read-only shared mapping (PROT_READ, MAP_SHARED). We never write through it, so no
        // aliasing &mut exists. If another process truncates the file while it is mapped, touching the lost
        // pages raises SIGBUS; the executor checks size and mtime before use (`check_unchanged`).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        fault_guard::register(&map, path);
        Ok(MappedFile {
            path: path.into(),
            file,
            map,
            len,
            modified: meta.modified().ok(),
        })
    }

    /// The whole mapping, page-aligned at its start.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        fault_guard::unregister(&self.map);
    }
}

/// Turns the SIGBUS a mapped file raises when it was truncated under us into one clear line naming the file
/// and exit status 1. Any other SIGBUS (not in a registered mapping) keeps the default action.
mod fault_guard {
    use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
    use std::sync::Once;

    const SLOTS: usize = 256;
    /// One registered mapping: start address, length, and the leaked message naming its file.
    struct Slot {
        start: AtomicUsize,
        len: AtomicUsize,
        msg: AtomicPtr<u8>,
        msg_len: AtomicUsize,
    }
    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: Slot = Slot {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        msg: AtomicPtr::new(std::ptr::null_mut()),
        msg_len: AtomicUsize::new(0),
    };
    static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
    static INSTALL: Once = Once::new();

    pub fn register(map: &[u8], path: &std::path::Path) {
        INSTALL.call_once(install);
        let msg = format!(
            "wstream: error: {}: weight file changed while mapped (truncated or rewritten in place); \
             nothing was written, rerun once it is complete\n",
            path.display()
        );
        // Leaked on purpose: the handler may read it at any time, even after the mapping is gone.
        let msg: &'static mut [u8] = Box::leak(msg.into_bytes().into_boxed_slice());
        for slot in &TABLE {
            if slot
                .start
                .compare_exchange(
                    0,
                    map.as_ptr() as usize,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                slot.msg_len.store(msg.len(), Ordering::Release);
                slot.msg.store(msg.as_mut_ptr(), Ordering::Release);
                slot.len.store(map.len(), Ordering::Release);
                return;
            }
        }
        // Table full: this mapping just has no friendly message.
    }

    pub fn unregister(map: &[u8]) {
        for slot in &TABLE {
            if slot.start.load(Ordering::Acquire) == map.as_ptr() as usize {
                slot.len.store(0, Ordering::Release);
                slot.start.store(0, Ordering::Release);
            }
        }
    }

    fn install() {
        // SAFETY: installs a handler for SIGBUS only; `on_sigbus` is async-signal-safe (atomics, write,
        // _exit, sigaction, raise). A zeroed sigaction is a valid starting value.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    }

    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; only atomics and
        // async-signal-safe calls follow.
        unsafe {
            let addr = (*info).si_addr() as usize;
            for slot in &TABLE {
                let start = slot.start.load(Ordering::Acquire);
                let len = slot.len.load(Ordering::Acquire);
                if start != 0 && addr >= start && addr < start + len {
                    let msg = slot.msg.load(Ordering::Acquire);
                    libc::write(
                        2,
                        msg as *const libc::c_void,
                        slot.msg_len.load(Ordering::Acquire),
                    );
                    libc::_exit(1);
                }
            }
            // Not ours: default action (core dump), as if no handler were installed.
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

/// Where one tensor lives.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Index into [`Store::files`].
    pub file: usize,
    /// Absolute byte range in that file.
    pub range: Range<usize>,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn nbytes(&self) -> usize {
        self.range.len()
    }
}

/// A byte range of one mapped file: the unit of prefetch, release and residency queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRange {
    pub file: usize,
    pub range: Range<usize>,
}

/// Copies made because a tensor's bytes were not aligned for its element type.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CopyStats {
    pub unaligned_copies: u64,
    pub unaligned_bytes: u64,
}

/// Element types that can be viewed straight from the mapping.
pub trait Element: bytemuck::Pod {
    const DTYPE: Dtype;
}
impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
}
impl Element for half::f16 {
    const DTYPE: Dtype = Dtype::F16;
}
impl Element for half::bf16 {
    const DTYPE: Dtype = Dtype::BF16;
}
impl Element for i8 {
    const DTYPE: Dtype = Dtype::I8;
}
impl Element for u8 {
    const DTYPE: Dtype = Dtype::U8;
}

/// An opened checkpoint: one or more mapped safetensors files and an index of their tensors.
pub struct Store {
    path: PathBuf,
    files: Vec<MappedFile>,
    /// Sorted by (file, offset): the order the bytes lie on disk.
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    unaligned_copies: AtomicU64,
    unaligned_bytes: AtomicU64,
}

impl Store {
    /// Opens a `.safetensors` file, a `model.safetensors.index.json`, or a model folder holding either.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let target = if meta.is_dir() {
            weights_in_folder(path)?
        } else {
            path.to_path_buf()
        };
        let is_index = target
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".index.json"));
        let (files, tensors) = if is_index {
            open_sharded(&target)?
        } else {
            let file = MappedFile::open(&target)?;
            let tensors = parse_file(&file, 0)?;
            (vec![file], tensors)
        };
        // Parsing touched the header pages; unmap them so an opened store holds nothing resident and a later
        // page-cache drop is not blocked by a mapped (possibly large) folio.
        for f in &files {
            crate::residency::release(f.bytes(), 0..f.bytes().len(), None)
                .map_err(|e| Error::io(&f.path, e))?;
        }
        let mut by_name = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(Error::DuplicateTensor {
                    path: files[t.file].path.clone(),
                    name: t.name.clone(),
                });
            }
        }
        Ok(Store {
            path: path.to_path_buf(),
            files,
            tensors,
            by_name,
            unaligned_copies: AtomicU64::new(0),
            unaligned_bytes: AtomicU64::new(0),
        })
    }

    /// The path as given to [`Store::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn files(&self) -> &[MappedFile] {
        &self.files
    }

    /// All tensors in on-disk order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.nbytes() as u64).sum()
    }

    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::NoTensor {
                path: self.path.clone(),
                name: name.into(),
            })
    }

    /// The raw bytes of a tensor, borrowed from the mapping.
    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.files[t.file].map[t.range.clone()]
    }

    /// A typed view of `name`. Borrowed from the mapping when its bytes are aligned for `T`; otherwise an
    /// aligned copy, counted in [`Store::copy_stats`].
    pub fn view<T: Element>(&self, name: &str) -> Result<Cow<'_, [T]>> {
        let t = self.info(name)?;
        if t.dtype != T::DTYPE {
            return Err(Error::WrongDtype {
                path: self.files[t.file].path.clone(),
                name: name.into(),
                expected: T::DTYPE.to_string(),
                actual: t.dtype.to_string(),
            });
        }
        let bytes = self.bytes(t);
        Ok(match bytemuck::try_cast_slice(bytes) {
            Ok(slice) => Cow::Borrowed(slice),
            Err(_) => {
                self.unaligned_copies.fetch_add(1, Ordering::Relaxed);
                self.unaligned_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Cow::Owned(bytemuck::pod_collect_to_vec(bytes))
            }
        })
    }

    /// [`Store::view`] that also checks the shape.
    pub fn view_shaped<T: Element>(&self, name: &str, shape: &[usize]) -> Result<Cow<'_, [T]>> {
        let t = self.info(name)?;
        if t.shape != shape {
            return Err(Error::WrongShape {
                path: self.files[t.file].path.clone(),
                name: name.into(),
                expected: shape.to_vec(),
                actual: t.shape.clone(),
            });
        }
        self.view(name)
    }

    /// A weight in its stored dtype, borrowed from the mapping: f32, f16, bf16, or int8 with its
    /// `<name>_scale` (F32 `[out]`, every value finite and >= 0, else an error naming the scale tensor).
    pub fn weight(&self, name: &str) -> Result<Weight<'_>> {
        let t = self.info(name)?;
        Ok(match t.dtype {
            Dtype::F32 => Weight::F32(self.view(name)?),
            Dtype::F16 => Weight::F16(self.view(name)?),
            Dtype::BF16 => Weight::Bf16(self.view(name)?),
            Dtype::I8 => {
                let scale_name = weight::scale_name(name);
                let scale = self.int8_scale(t, &scale_name)?;
                if let Some((o, v)) = scale
                    .iter()
                    .enumerate()
                    .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
                {
                    return Err(Error::BadTensor {
                        path: self.files[t.file].path.clone(),
                        name: scale_name,
                        msg: format!(
                            "scale[{o}] is {v}: corrupted (int8 scales are finite and >= 0)"
                        ),
                    });
                }
                Weight::I8 {
                    q: self.view(name)?,
                    scale,
                }
            }
            other => {
                return Err(Error::WrongDtype {
                    path: self.files[t.file].path.clone(),
                    name: name.into(),
                    expected: "F32, F16, BF16 or I8".into(),
                    actual: other.to_string(),
                })
            }
        })
    }

    /// The scale tensor of int8 weight `t`, checked to be F32 `[out]` (values are checked by the caller).
    pub fn int8_scale(&self, t: &TensorInfo, scale_name: &str) -> Result<Cow<'_, [f32]>> {
        let path = || self.files[t.file].path.clone();
        if !self.contains(scale_name) {
            return Err(Error::BadTensor {
                path: path(),
                name: t.name.clone(),
                msg: format!("int8 weight without its scale tensor `{scale_name}`"),
            });
        }
        let out = t.shape.first().copied().unwrap_or(1);
        self.view_shaped::<f32>(scale_name, &[out])
    }

    /// A (small) tensor as f32 whatever its stored dtype: borrowed when f32, widened otherwise.
    pub fn floats(&self, name: &str) -> Result<Cow<'_, [f32]>> {
        let per_row = self.info(name)?.shape.iter().skip(1).product();
        Ok(match self.weight(name)? {
            Weight::F32(w) => w,
            w => Cow::Owned(w.to_f32(per_row).into_owned()),
        })
    }

    pub fn copy_stats(&self) -> CopyStats {
        CopyStats {
            unaligned_copies: self.unaligned_copies.load(Ordering::Relaxed),
            unaligned_bytes: self.unaligned_bytes.load(Ordering::Relaxed),
        }
    }

    /// The byte ranges covering the named tensors, merged where they touch, in file order.
    pub fn ranges_of<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<FileRange>> {
        let mut ranges = names
            .into_iter()
            .map(|n| {
                self.info(n).map(|t| FileRange {
                    file: t.file,
                    range: t.range.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        ranges.sort_by_key(|r| (r.file, r.range.start));
        let mut merged: Vec<FileRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last)
                    if last.file == r.file
                        && (last.range.end >= r.range.start
                            || self.only_padding(r.file, last.range.end..r.range.start)) =>
                {
                    last.range.end = last.range.end.max(r.range.end);
                }
                _ => merged.push(r),
            }
        }
        Ok(merged)
    }

    /// Whether `gap` of `file` holds nothing but padding tensors (see [`PAD_PREFIX`]): a block's tensors
    /// then stay one range, so its pages are prefetched and released as a whole.
    fn only_padding(&self, file: usize, gap: Range<usize>) -> bool {
        let first = self
            .tensors
            .partition_point(|t| (t.file, t.range.start) < (file, gap.start));
        let mut covered = gap.start;
        for t in &self.tensors[first..] {
            if t.file != file || covered >= gap.end {
                break;
            }
            if t.range.start != covered || !t.name.starts_with(PAD_PREFIX) {
                return false;
            }
            covered = t.range.end;
        }
        covered >= gap.end
    }

    /// Fails if any file's size or modification time differs from when it was opened: touching pages of a
    /// file truncated under a shared mapping would raise SIGBUS instead of an error.
    pub fn check_unchanged(&self) -> Result<()> {
        for f in &self.files {
            let meta = std::fs::metadata(&f.path).map_err(|e| Error::io(&f.path, e))?;
            if meta.len() != f.len {
                return Err(Error::FileChanged {
                    path: f.path.clone(),
                    what: format!("size {} bytes, was {}", meta.len(), f.len),
                });
            }
            if meta.modified().ok() != f.modified {
                return Err(Error::FileChanged {
                    path: f.path.clone(),
                    what: "modification time changed".into(),
                });
            }
        }
        Ok(())
    }
}

/// Which file of a model folder holds the weights.
fn weights_in_folder(dir: &Path) -> Result<PathBuf> {
    for name in [SHARD_INDEX, SINGLE_FILE] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    match found.len() {
        0 => Err(Error::NoWeights { path: dir.into() }),
        1 => Ok(found.remove(0)),
        count => Err(Error::AmbiguousWeights {
            path: dir.into(),
            count,
        }),
    }
}

fn open_sharded(index: &Path) -> Result<(Vec<MappedFile>, Vec<TensorInfo>)> {
    let bad = |msg: String| Error::ShardIndex {
        index: index.into(),
        msg,
    };
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(bad("no `weight_map` object".into()));
    };
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shard_names = BTreeSet::new();
    for (tensor, shard) in map {
        let Some(shard) = shard.as_str() else {
            return Err(bad(format!(
                "`weight_map` entry for `{tensor}` is not a file name"
            )));
        };
        if shard.contains('/') || shard.contains('\\') || shard.is_empty() {
            return Err(bad(format!(
                "shard name `{shard}` must be a plain file name"
            )));
        }
        shard_names.insert(shard.to_string());
    }
    let mut files = Vec::new();
    let mut tensors = Vec::new();
    let mut shard_of: HashMap<String, usize> = HashMap::new();
    for (i, shard) in shard_names.iter().enumerate() {
        let path = dir.join(shard);
        let file = MappedFile::open(&path).map_err(|e| match e {
            Error::NotFound { .. } => Error::MissingShard {
                index: index.into(),
                shard: shard.clone(),
                reason: "no such file".into(),
            },
            other => other,
        })?;
        tensors.extend(parse_file(&file, i)?);
        files.push(file);
        shard_of.insert(shard.clone(), i);
    }
    let found: HashMap<&str, usize> = tensors.iter().map(|t| (t.name.as_str(), t.file)).collect();
    for (tensor, shard) in map {
        let shard = shard.as_str().unwrap_or_default();
        if found.get(tensor.as_str()) != Some(&shard_of[shard]) {
            return Err(bad(format!(
                "`{tensor}` is mapped to `{shard}`, which does not hold it"
            )));
        }
    }
    if tensors.len() != map.len() {
        let extra = tensors
            .iter()
            .find(|t| !map.contains_key(&t.name))
            .map(|t| format!("`{}` in `{}`", t.name, files[t.file].path.display()))
            .unwrap_or_default();
        return Err(bad(format!(
            "shards hold tensors the index does not list: {extra}"
        )));
    }
    Ok((files, tensors))
}

/// One header entry, as written. The dtype stays a string so an unknown one gets a named error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// The header's top-level object with its keys in order and duplicates kept, so they can be reported.
struct RawHeader(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<RawHeader, A::Error> {
                let mut entries = Vec::new();
                while let Some(kv) = m.next_entry()? {
                    entries.push(kv);
                }
                Ok(RawHeader(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// Validates one file's header and returns its tensors with absolute byte ranges, in offset order.
/// Every check names the tensor and the numbers; the `safetensors` crate then validates the same header as a
/// second opinion, so nothing it would refuse gets through.
fn parse_file(file: &MappedFile, file_index: usize) -> Result<Vec<TensorInfo>> {
    let path = &file.path;
    let buf = file.bytes();
    let file_len = buf.len() as u64;
    let Some(len_bytes) = buf.get(..8) else {
        return Err(Error::TooShort {
            path: path.clone(),
            len: file_len,
        });
    };
    let header_len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    if header_len > MAX_HEADER_BYTES {
        return Err(Error::HeaderTooLarge {
            path: path.clone(),
            header_len,
            limit: MAX_HEADER_BYTES,
        });
    }
    if 8 + header_len > file_len {
        return Err(Error::HeaderPastEnd {
            path: path.clone(),
            header_len,
            file_len,
        });
    }
    let data_start = 8 + header_len as usize;
    let header = std::str::from_utf8(&buf[8..data_start]).map_err(|e| Error::HeaderNotUtf8 {
        path: path.clone(),
        offset: e.valid_up_to(),
    })?;
    let RawHeader(entries) = serde_json::from_str(header).map_err(|e| Error::HeaderJson {
        path: path.clone(),
        msg: e.to_string(),
    })?;

    let bad = |name: &str, msg: String| Error::BadTensor {
        path: path.clone(),
        name: name.into(),
        msg,
    };
    let mut seen = BTreeSet::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if !seen.insert(name.clone()) {
            return Err(Error::DuplicateTensor {
                path: path.clone(),
                name,
            });
        }
        if name == "__metadata__" {
            continue;
        }
        let raw: RawEntry = serde_json::from_value(value)
            .map_err(|e| bad(&name, format!("bad header entry: {e}")))?;
        let dtype: Dtype = serde_json::from_value(serde_json::Value::String(raw.dtype.clone()))
            .map_err(|_| bad(&name, format!("unknown dtype `{}`", raw.dtype)))?;
        let (begin, end) = raw.data_offsets;
        if end < begin {
            return Err(bad(
                &name,
                format!("data_offsets [{begin}, {end}] end before they begin"),
            ));
        }
        let bits = raw
            .shape
            .iter()
            .try_fold(dtype.bitsize(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(&name, format!("shape {:?} overflows", raw.shape)))?;
        if bits % 8 != 0 || bits / 8 != end - begin {
            return Err(bad(
                &name,
                format!(
                    "shape {:?} x {dtype} needs {} bytes but data_offsets [{begin}, {end}] hold {}",
                    raw.shape,
                    bits as f64 / 8.0,
                    end - begin
                ),
            ));
        }
        tensors.push(TensorInfo {
            name,
            dtype,
            shape: raw.shape,
            file: file_index,
            range: begin..end,
        });
    }

    // The data section must be covered exactly: no overlaps, no gaps, nothing past the end.
    tensors.sort_by_key(|t| (t.range.start, t.range.end));
    let data_len = (file_len - data_start as u64) as usize;
    let mut expect = 0usize;
    let mut prev: Option<&str> = None;
    for t in &tensors {
        let (begin, end) = (t.range.start, t.range.end);
        let after = prev.map(|p| format!(" after `{p}`")).unwrap_or_default();
        if begin < expect {
            return Err(bad(
                &t.name,
                format!("data_offsets [{begin}, {end}] overlap the previous tensor{after}, which ends at {expect}"),
            ));
        }
        if begin > expect {
            return Err(bad(
                &t.name,
                format!("data_offsets [{begin}, {end}] leave a gap of {} bytes{after} (expected start {expect})", begin - expect),
            ));
        }
        if end > data_len {
            return Err(Error::Truncated {
                path: path.clone(),
                name: t.name.clone(),
                needed: end as u64,
                actual: data_len as u64,
            });
        }
        expect = end;
        prev = Some(&t.name);
    }
    if expect != data_len {
        return Err(Error::TrailingBytes {
            path: path.clone(),
            covered: expect as u64,
            actual: data_len as u64,
        });
    }
    SafeTensors::read_metadata(buf).map_err(|e| Error::HeaderJson {
        path: path.clone(),
        msg: format!("refused by the safetensors crate: {e}"),
    })?;

    for t in &mut tensors {
        t.range = t.range.start + data_start..t.range.end + data_start;
    }
    Ok(tensors)
}
