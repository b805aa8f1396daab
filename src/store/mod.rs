//! Memory-mapped safetensors checkpoints: a tensor index with absolute byte ranges, and zero-copy typed
//! views borrowed straight from the read-only shared mapping.
//!
//! A checkpoint is one `.safetensors` file or a sharded set (`model.safetensors.index.json` + shards); both
//! open as one [`Store`]. Nothing is read at open but the headers: the OS pages tensor data in on first touch
//! and may drop it again under pressure, because every page is file-backed and clean.
//!
//! `header` validates a file's header, `shards` finds the files of a checkpoint, and `sigbus` turns a
//! fault on a file truncated under its mapping into a clear error line.

mod header;
mod shards;
mod sigbus;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use memmap2::Mmap;
use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::weight::{self, Weight};

pub use header::{MAX_HEADER_BYTES, MAX_RANK, MAX_TENSORS};

/// Names of the padding tensors `wstream convert --layout exec` puts between blocks (and between tensors)
/// so each starts aligned; they hold zeros and no model reads them.
pub const PAD_PREFIX: &str = "__pad__.";

/// The `__metadata__` key of a file written by `wstream convert --layout packed`: a JSON object with the
/// panel `geometry` (`ops::packed::GEOMETRY`) and, under `tensors`, each packed tensor's source shape. Such
/// a tensor is stored F32 `[out / 32, in, 32]` in the header (so Python tools load it as an opaque array
/// and timm refuses it by shape); [`Store`] reports it under its source shape and reads it as
/// [`Weight::PackedF32`].
pub const PACKED_KEY: &str = "wstream.packed";

/// Marks the tensors each file's [`PACKED_KEY`] metadata lists as packed, giving them their source shapes;
/// refuses a geometry this build's kernel does not read, and a listed tensor whose stored dtype or shape is
/// not that geometry's.
fn packed_tensors(files: &[MappedFile], tensors: &mut [TensorInfo]) -> Result<Vec<bool>> {
    use crate::ops::packed;
    let mut marked = vec![false; tensors.len()];
    for (fi, f) in files.iter().enumerate() {
        let bad = |msg: String| Error::HeaderJson {
            path: f.path.clone(),
            msg,
        };
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(f.bytes()).map_err(|e| bad(e.to_string()))?;
        let Some(text) = meta.metadata().as_ref().and_then(|m| m.get(PACKED_KEY)) else {
            continue;
        };
        #[derive(serde::Deserialize)]
        struct Packed {
            geometry: String,
            tensors: HashMap<String, Vec<usize>>,
        }
        let p: Packed = serde_json::from_str(text)
            .map_err(|e| bad(format!("`{PACKED_KEY}` metadata is not valid: {e}")))?;
        if p.geometry != packed::GEOMETRY {
            return Err(Error::Model {
                path: f.path.clone(),
                msg: format!(
                    "its weights are packed for another kernel (geometry `{}`); this build's kernel reads \
                     `{}`: convert the source checkpoint again with this build (`wstream convert SRC OUT \
                     --layout packed`)",
                    p.geometry,
                    packed::GEOMETRY
                ),
            });
        }
        for (name, shape) in &p.tensors {
            let Some(t) = tensors
                .iter_mut()
                .enumerate()
                .find(|(_, t)| t.file == fi && &t.name == name)
            else {
                return Err(bad(format!(
                    "`{PACKED_KEY}` lists `{name}`, which the file lacks"
                )));
            };
            let (i, t) = t;
            let out = shape.first().copied().unwrap_or(0);
            let inp = shape.iter().skip(1).product::<usize>();
            if t.dtype != Dtype::F32
                || shape.len() < 2
                || !packed::packable(out, inp)
                || t.shape != packed::packed_shape(out, inp)
            {
                return Err(Error::BadTensor {
                    path: f.path.clone(),
                    name: name.clone(),
                    msg: format!(
                        "packed tensor stored as {} {:?}, but source shape {shape:?} packs to F32 {:?}",
                        t.dtype,
                        t.shape,
                        packed::packed_shape(out, inp)
                    ),
                });
            }
            t.shape = shape.clone();
            marked[i] = true;
        }
    }
    Ok(marked)
}

/// Asks the kernel to back `map` with 2 MiB pages (madvise HUGEPAGE): faults and MADV_POPULATE_READ then
/// read the file into 2 MiB page-cache folios, each mapped by one page-middle-directory entry, where plain
/// read-ahead (WILLNEED) leaves 4 KiB folios that cost a page-table entry each, on every later run that
/// maps the file. Advisory: a kernel with transparent huge pages off (`never`) or built without them
/// refuses or ignores it, and the weights are then mapped in 4 KiB pages as before.
fn huge_pages(map: &Mmap) {
    let _ = map.advise(memmap2::Advice::HugePage);
}

/// One mapped file of a checkpoint.
pub struct MappedFile {
    pub path: PathBuf,
    file: File,
    map: Mmap,
    /// Size, modification and status-change times, device and inode at open; checked again by
    /// [`MappedFile::check_unchanged`].
    len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
    id: (u64, u64),
}

impl MappedFile {
    #[allow(unsafe_code)]
    fn open(path: &Path) -> Result<Self> {
        let (file, meta) = crate::fsutil::open_regular(path)?;
        let len = meta.len();
        if len == 0 {
            return Err(Error::EmptyFile { path: path.into() });
        }
        // SAFETY: a read-only shared mapping (PROT_READ, MAP_SHARED). We never write through it, so no
        // aliasing &mut exists. If another process truncates the file while it is mapped, touching the lost
        // pages raises SIGBUS (reported by `sigbus` as one line naming the file); the executor checks the
        // file before the run and after each block (`check_unchanged`).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        huge_pages(&map);
        sigbus::register(&map, path);
        Ok(MappedFile {
            path: path.into(),
            file,
            map,
            len,
            modified: meta.modified().ok(),
            changed: (meta.ctime(), meta.ctime_nsec()),
            id: (meta.dev(), meta.ino()),
        })
    }

    /// Fails, naming the file, if it was written, truncated or replaced since it was opened. The mapped
    /// file itself (fstat of the open descriptor) is checked for size, modification time and
    /// status-change time: an overwrite in place, even to the same size and with its mtime put back,
    /// changes the ctime. The path is checked to still name that file (device and inode): a file renamed
    /// over it is new weights the mapping does not show.
    pub fn check_unchanged(&self) -> Result<()> {
        let changed = |what: String| Error::FileChanged {
            path: self.path.clone(),
            what,
        };
        let meta = self.file.metadata().map_err(|e| Error::io(&self.path, e))?;
        if meta.len() != self.len {
            return Err(changed(format!(
                "size {} bytes, was {}",
                meta.len(),
                self.len
            )));
        }
        if meta.modified().ok() != self.modified {
            return Err(changed("modification time changed".into()));
        }
        if (meta.ctime(), meta.ctime_nsec()) != self.changed {
            return Err(changed("status-change time changed".into()));
        }
        match std::fs::metadata(&self.path) {
            Ok(now) if (now.dev(), now.ino()) == self.id => Ok(()),
            Ok(_) => Err(changed("replaced by another file".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(changed("removed or renamed".into()))
            }
            Err(e) => Err(Error::io(&self.path, e)),
        }
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
        sigbus::unregister(&self.map);
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
impl Element for i32 {
    const DTYPE: Dtype = Dtype::I32;
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
    /// Per tensor: stored in the packed kernel's panel order (see [`PACKED_KEY`]).
    packed: Vec<bool>,
    unaligned_copies: AtomicU64,
    unaligned_bytes: AtomicU64,
}

impl Store {
    /// Opens a `.safetensors` file, a `model.safetensors.index.json`, or a model folder holding either.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let target = if meta.is_dir() {
            shards::weights_in_folder(path)?
        } else {
            path.to_path_buf()
        };
        let is_index = target
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".index.json"));
        let (files, mut tensors) = if is_index {
            shards::open_sharded(&target)?
        } else {
            let file = MappedFile::open(&target)?;
            let tensors = header::parse(&file.path, file.bytes(), 0)?;
            (vec![file], tensors)
        };
        let packed = packed_tensors(&files, &mut tensors)?;
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
            packed,
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
        if self.is_packed(name) {
            return Ok(Weight::PackedF32(self.view(name)?));
        }
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

    /// Whether `name` is stored in the packed kernel's panel order (its [`TensorInfo::shape`] is then the
    /// source layout's shape, from the file's [`PACKED_KEY`] metadata).
    pub fn is_packed(&self, name: &str) -> bool {
        self.by_name.get(name).is_some_and(|&i| self.packed[i])
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

    /// Fails if any file changed since it was opened ([`MappedFile::check_unchanged`]): touching pages of a
    /// file truncated under a shared mapping would raise SIGBUS instead of an error, and a file overwritten
    /// in place gives other weights than the ones checked at open.
    pub fn check_unchanged(&self) -> Result<()> {
        self.files.iter().try_for_each(MappedFile::check_unchanged)
    }
}
