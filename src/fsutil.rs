//! Opening the files wstream reads (weights, shards, shard indexes, config.json, `.npy` arrays) so that no
//! input can hang it or make it read without end: only regular files are read, opened without blocking (a
//! FIFO would block `open` until a writer came), and whatever is read into memory is capped.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Most bytes of a `config.json` read into memory. timm's configs are about 1 KiB; one carrying the label
/// names of ImageNet-21k (21,843 classes) is about 0.5 MiB.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Most bytes of a `model.safetensors.index.json` read into memory: about 200,000 `"tensor": "shard"`
/// entries, far more than any published checkpoint lists.
pub const MAX_INDEX_BYTES: u64 = 16 << 20;

/// Most bytes of a `.npy` input read into memory: 1,780 preprocessed 224 x 224 images. The whole array is
/// held while its images run, so a larger one is refused rather than read; split it.
pub const MAX_NPY_BYTES: u64 = 1 << 30;

/// Opens `path` for reading if it is a regular file (following symlinks); anything else (folder, FIFO,
/// socket, device) is refused with an error naming what it is, without ever blocking.
pub fn open_regular(path: &Path) -> Result<(File, Metadata)> {
    // O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer, forever. It has no effect on
    // reading a regular file, the only kind kept.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return Ok((file, meta));
    }
    Err(Error::NotRegular {
        path: path.into(),
        kind: kind_of(&meta),
    })
}

/// What a file that is not a regular one is, for a message: "a folder", "a FIFO (named pipe)", ...
pub fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

/// Reads all of regular file `path`, refusing one over `limit` bytes (by its size, and by what is read,
/// should it grow while being read); `what` names the kind of file in that error.
pub fn read_regular(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>> {
    let (file, meta) = open_regular(path)?;
    let too_large = |size: u64| Error::FileTooLarge {
        path: path.into(),
        what,
        size,
        limit,
    };
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_regular_file_and_caps_reads() {
        let err = read_regular(Path::new("/dev/zero"), 16, "config.json").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/dev/zero: not a regular file but a character device; name a file"
        );
        let err = open_regular(Path::new("/")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/: not a regular file but a folder; name a file"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(
            read_regular(&path, 10, "config.json").unwrap(),
            b"0123456789"
        );
        assert_eq!(
            read_regular(&path, 9, "config.json")
                .unwrap_err()
                .to_string(),
            format!(
                "{}: config.json of 10 bytes is over the 9-byte limit",
                path.display()
            )
        );
    }
}
