//! The rules for every file wstream writes (`convert`, `synth`, `profile --svg`): the path is checked before
//! any work (a writable folder, not an input, no other kind of file than asked for), the bytes go to a
//! temporary `.NAME.wstream-partial-PID` beside it that is renamed into place only once complete, and a
//! temporary left by a killed run is recognised by its PID and swept away instead of blocking the next one.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::writer::PartialFile;

/// What may already stand at an output path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Nothing: an existing file or folder there is refused.
    Refuse,
    /// A regular file, replaced as a whole once the new one is complete (a drawing written again).
    Replace,
}

/// Checks that `dest` can be written before any work is done: it names a file in an existing folder that
/// this process can create files in, ends in `.ext` when `ext` is given, is none of `inputs` (the same
/// file under any name, a hard link or a symlink included) and, as `existing` says, does not exist or is a
/// regular file.
pub fn check(dest: &Path, ext: Option<&str>, existing: Existing, inputs: &[PathBuf]) -> Result<()> {
    let refuse = |msg: String| Error::Output {
        path: dest.to_path_buf(),
        msg,
    };
    if dest.file_name().is_none() {
        return Err(refuse("names no file".into()));
    }
    if let Some(ext) = ext {
        if !dest
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case(ext))
        {
            return Err(refuse(format!(
                "does not end in .{ext}; wstream writes a .{ext} file only under a .{ext} name, never over another kind of file"
            )));
        }
    }
    if let Ok(meta) = std::fs::metadata(dest) {
        let same = |p: &PathBuf| {
            std::fs::metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()))
        };
        if inputs.iter().any(same) {
            return Err(refuse(
                "is an input of this command; wstream never writes over its inputs".into(),
            ));
        }
    }
    // The rename replaces the directory entry itself: a symlink is replaced, not followed.
    if let Ok(meta) = std::fs::symlink_metadata(dest) {
        if existing == Existing::Refuse {
            return Err(refuse(
                "already exists; wstream never overwrites it (remove it or pick another name)"
                    .into(),
            ));
        }
        if !meta.is_file() && !meta.is_symlink() {
            return Err(refuse(
                "exists and is not a regular file (a folder, device or pipe); refusing to replace it"
                    .into(),
            ));
        }
    }
    let dir = folder_of(dest);
    if !dir.is_dir() {
        return Err(refuse(format!(
            "its folder {} does not exist",
            dir.display()
        )));
    }
    // The only sure test of writability (permissions, read-only mounts, ACLs) is creating a file.
    let probe = partial_path(dest)?;
    match PartialFile::create(probe) {
        Ok(_) => Ok(()),
        Err(Error::Io { error, .. }) => Err(refuse(format!(
            "cannot create files in its folder {}: {error}",
            dir.display()
        ))),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `dest` through a temporary file renamed into place: a failure or an interruption
/// leaves what was at `dest` as it was.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let write = || {
        let mut w = PartialFile::create(partial_path(dest)?)?;
        w.write_all(bytes)?;
        w.finish_as(dest)
    };
    // The user named `dest`, not the temporary.
    write().map_err(|e| match e {
        Error::Io { error, .. } => Error::io(dest, error),
        e => e,
    })
}

fn folder_of(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The temporary name this process writes `dest` under: `.NAME.wstream-partial-PID` in the same folder (so
/// the final rename stays on one file system). Temporaries for `dest` left by processes that are gone (a
/// SIGKILL, a power cut), or by an earlier process that had this PID, are removed first; those of a live
/// process (a concurrent run) are left alone.
pub(crate) fn partial_path(dest: &Path) -> Result<PathBuf> {
    let name = dest.file_name().ok_or_else(|| Error::Output {
        path: dest.to_path_buf(),
        msg: "names no file".into(),
    })?;
    let prefix = format!(".{}.wstream-partial-", name.to_string_lossy());
    let dir = folder_of(dest);
    let me = std::process::id();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(pid) = file_name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != me && Path::new("/proc").join(pid.to_string()).exists() {
                continue;
            }
            let stale = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&stale)
            } else {
                std::fs::remove_file(&stale)
            };
            removed.map_err(|e| Error::Output {
                path: stale.clone(),
                msg: format!("partial output of an earlier run (process {pid} is gone) cannot be removed: {e}"),
            })?;
        }
    }
    Ok(dir.join(format!("{prefix}{me}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_partials_of_gone_processes_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("model.safetensors");
        // PIDs stop at 2^22, so these two are gone; /proc/1 is init, always live.
        let gone = dir
            .path()
            .join(".model.safetensors.wstream-partial-4294967295");
        let live = dir.path().join(".model.safetensors.wstream-partial-1");
        let gone_dir = dir
            .path()
            .join(".model.safetensors.wstream-partial-4294967294");
        let other = dir.path().join(".other.wstream-partial-4294967295");
        for f in [&gone, &live, &other] {
            std::fs::write(f, "x").unwrap();
        }
        std::fs::create_dir(&gone_dir).unwrap();
        std::fs::write(gone_dir.join("config.json"), "{}").unwrap();
        let p = partial_path(&dest).unwrap();
        assert_eq!(
            p,
            dir.path().join(format!(
                ".model.safetensors.wstream-partial-{}",
                std::process::id()
            ))
        );
        assert!(!gone.exists() && !gone_dir.exists());
        assert!(live.exists() && other.exists());
    }
}
