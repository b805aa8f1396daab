//! Writing safetensors files, shared by `synth` and `convert`: the header JSON (entries in the order given,
//! padded with trailing spaces like the Python writer pads it) and a file written under a temporary name that
//! is removed again unless it is finished, so an error never leaves a half-written file under the real name.
//! Temporaries are registered with [`partials`], so SIGINT, SIGTERM or a SIGBUS removes them too.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_json::json;

use crate::error::{Error, Result};
use crate::process::partials::{self, Slot};

/// One tensor's header entry; `offsets` are relative to the start of the data section.
pub(crate) struct HeaderEntry<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub offsets: (usize, usize),
}

/// The header JSON: `__metadata__` first (when not empty), then the entries in the order given, padded with
/// trailing spaces so the data section (at `8 + header length`) starts on a multiple of `align` (8 for the
/// Python writer's layout, 4096 for a page-aligned one). `align` must be a multiple of 8.
pub(crate) fn header<'a>(
    metadata: &BTreeMap<String, String>,
    entries: impl IntoIterator<Item = HeaderEntry<'a>>,
    align: usize,
) -> String {
    assert!(
        align >= 8 && align.is_multiple_of(8),
        "header alignment {align}"
    );
    let mut parts = Vec::new();
    if !metadata.is_empty() {
        parts.push(format!("\"__metadata__\":{}", json!(metadata)));
    }
    for e in entries {
        let entry =
            json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [e.offsets.0, e.offsets.1]});
        parts.push(format!("{}:{entry}", json!(e.name)));
    }
    let mut header = format!("{{{}}}", parts.join(","));
    let pad = (align - (8 + header.len()) % align) % align;
    header.extend(std::iter::repeat_n(' ', pad));
    header
}

/// A file written through a buffer under a temporary name; dropped unfinished (an error, a panic), it is
/// removed.
pub(crate) struct PartialFile {
    path: PathBuf,
    w: BufWriter<File>,
    written: u64,
    finished: bool,
    slot: Slot,
}

impl PartialFile {
    /// Creates `path`, which must not exist yet.
    pub fn create(path: PathBuf) -> Result<Self> {
        // Registered before it exists, so there is no moment a signal could leave it behind.
        let slot = partials::register(&path, false);
        let file = File::create_new(&path).map_err(|e| Error::io(&path, e))?;
        Ok(PartialFile {
            path,
            w: BufWriter::with_capacity(1 << 20, file),
            written: 0,
            finished: false,
            slot,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.w
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes the safetensors preamble: the header length and the header.
    pub fn write_header(&mut self, header: &str) -> Result<()> {
        self.write_all(&(header.len() as u64).to_le_bytes())?;
        self.write_all(header.as_bytes())
    }

    /// Flushes and syncs the file and keeps it under its temporary name inside `dir`, which is renamed into
    /// place later; until then a signal still removes it, so the folder can go too.
    pub fn finish_in(mut self, dir: &mut PartialDir) -> Result<()> {
        self.sync()?;
        self.finished = true;
        dir.children.push(self.slot.take());
        Ok(())
    }

    /// Flushes, syncs and renames the file to `dest`.
    pub fn finish_as(mut self, dest: &Path) -> Result<()> {
        self.sync()?;
        std::fs::rename(&self.path, dest).map_err(|e| Error::io(dest, e))?;
        self.finished = true;
        self.slot.release();
        Ok(())
    }

    /// Syncs the file and drops it from the page cache: for weights. A file written through the page cache
    /// sits there in small folios, which every later run would map a 4 KiB page at a time; dropped, it is
    /// read back by the first run in 2 MiB folios (see [`crate::store`]).
    pub fn sync_uncached(&mut self) -> Result<()> {
        self.sync()?;
        crate::residency::drop_file_cache(self.w.get_ref()).map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes the buffer and syncs the file to the disk.
    pub fn sync(&mut self) -> Result<()> {
        let io = |e| Error::io(&self.path, e);
        self.w.flush().map_err(io)?;
        self.w.get_ref().sync_all().map_err(io)
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A folder built under a temporary name; dropped before [`PartialDir::finish_as`], it is removed with
/// everything in it.
pub(crate) struct PartialDir {
    path: PathBuf,
    finished: bool,
    slot: Slot,
    /// The finished files inside, still removed by a signal until the folder is renamed.
    children: Vec<Slot>,
}

impl PartialDir {
    /// Creates `path`, which must not exist yet.
    pub fn create(path: PathBuf) -> Result<Self> {
        let slot = partials::register(&path, true);
        std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
        Ok(PartialDir {
            path,
            finished: false,
            slot,
            children: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the folder to `dest`.
    pub fn finish_as(mut self, dest: &Path) -> Result<()> {
        std::fs::rename(&self.path, dest).map_err(|e| Error::io(dest, e))?;
        self.finished = true;
        self.children.clear();
        self.slot.release();
        Ok(())
    }
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
