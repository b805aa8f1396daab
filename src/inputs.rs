//! Which files a run classifies and in what order, so that a run over millions of files can be split
//! between machines and resumed: folders are walked recursively in a natural order that does not depend on
//! the file system, a manifest (`--files-from`) can name the files instead, and a [`Shard`] keeps every
//! N-th of them.
//!
//! - Inside a folder, entries are taken in [`natural_cmp`] order of their names: runs of ASCII digits
//!   compare as numbers (`img2` before `img10`), everything else bytewise.
//! - Hidden entries (a name starting with `.`) and files whose extension is not one of
//!   [`IMAGE_EXTENSIONS`] are skipped and listed in [`Walk::skipped`]: a caller reports them, nothing is
//!   ignored silently. A file named directly (not found in a folder) is always an input, whatever its name.
//! - Symlinks are followed. A folder reached a second time by another path is walked once (the second
//!   path is skipped and listed); a symlink to a folder that contains it, which would make the walk
//!   endless, is refused with an error naming both.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::io::BufRead;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The extensions (any case) a file found in a folder must have to be an input.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"];

/// Why a file or folder found in a walk is not an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Its name starts with `.`.
    Hidden,
    /// A file without an image extension.
    NotImage,
    /// Neither a file nor a folder (a FIFO, socket or device), or a dangling symlink.
    NotRegular,
    /// A folder already walked under another path (through a symlink).
    SeenFolder,
}

impl SkipReason {
    pub fn describe(self) -> &'static str {
        match self {
            SkipReason::Hidden => "hidden (name starts with '.')",
            SkipReason::NotImage => "no .jpg, .jpeg or .png extension",
            SkipReason::NotRegular => "not a regular file or folder, or a dangling symlink",
            SkipReason::SeenFolder => "a folder already walked through another path",
        }
    }
}

/// The files a walk found, in order, and what it skipped.
#[derive(Debug, Default)]
pub struct Walk {
    pub files: Vec<PathBuf>,
    pub skipped: Vec<(PathBuf, SkipReason)>,
}

/// Compares two names in natural order: maximal runs of ASCII digits compare by their numeric value
/// (`2` < `10`; with equal values the run with fewer leading zeros first), all other bytes bytewise; when
/// everything compares equal, bytewise over the whole names, so the order is total and deterministic.
pub fn natural_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let run = |s: &[u8], k: usize| {
                let end = s[k..]
                    .iter()
                    .position(|c| !c.is_ascii_digit())
                    .map_or(s.len(), |p| k + p);
                (k, end)
            };
            let ((si, ei), (sj, ej)) = (run(a, i), run(b, j));
            let strip = |s: &[u8]| {
                let z = s.iter().take_while(|&&c| c == b'0').count();
                s[z..].to_vec()
            };
            let (na, nb) = (strip(&a[si..ei]), strip(&b[sj..ej]));
            // Without leading zeros, a longer run is a larger number; equal lengths compare digit-wise.
            let by_value = na.len().cmp(&nb.len()).then_with(|| na.cmp(&nb));
            let by_zeros = (ei - si).cmp(&(ej - sj));
            match by_value.then(by_zeros) {
                Ordering::Equal => (i, j) = (ei, ej),
                o => return o,
            }
        } else {
            match a[i].cmp(&b[j]) {
                Ordering::Equal => (i, j) = (i + 1, j + 1),
                o => return o,
            }
        }
    }
    (a.len() - i).cmp(&(b.len() - j)).then_with(|| a.cmp(b))
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Expands `paths` in order: a folder into the images under it (recursively, see the module notes), any
/// other path into itself (a missing or unreadable file fails when it is read, as that input's error). A
/// folder with no image anywhere under it is an error, as is a symlink loop or a folder that cannot be
/// listed.
pub fn walk(paths: &[impl AsRef<Path>]) -> Result<Walk> {
    let mut walk = Walk::default();
    let mut seen = HashSet::new();
    for path in paths {
        let path = path.as_ref();
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                let before = walk.files.len();
                if seen.insert((meta.dev(), meta.ino())) {
                    let mut ancestors = vec![(meta.dev(), meta.ino(), path.to_path_buf())];
                    walk_dir(path, &mut ancestors, &mut seen, &mut walk)?;
                }
                if walk.files.len() == before {
                    return Err(Error::Input {
                        path: path.into(),
                        msg: "folder holds no images (.jpg, .jpeg, .png, .webp, .bmp, .tif, .tiff, .gif), sub-folders included"
                            .into(),
                    });
                }
            }
            _ => walk.files.push(path.to_path_buf()),
        }
    }
    Ok(walk)
}

fn walk_dir(
    dir: &Path,
    ancestors: &mut Vec<(u64, u64, PathBuf)>,
    seen: &mut HashSet<(u64, u64)>,
    walk: &mut Walk,
) -> Result<()> {
    let io = |e: std::io::Error| Error::Input {
        path: dir.into(),
        msg: format!("cannot list folder: {e}"),
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(io)?;
    entries.sort_by(|a, b| {
        natural_cmp(
            a.file_name().unwrap_or_default().as_bytes(),
            b.file_name().unwrap_or_default().as_bytes(),
        )
    });
    for path in entries {
        if path
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b"."))
        {
            walk.skipped.push((path, SkipReason::Hidden));
            continue;
        }
        // Follows symlinks; a dangling one has no metadata.
        let Ok(meta) = std::fs::metadata(&path) else {
            walk.skipped.push((path, SkipReason::NotRegular));
            continue;
        };
        if meta.is_dir() {
            let id = (meta.dev(), meta.ino());
            if let Some((_, _, ancestor)) = ancestors.iter().find(|a| (a.0, a.1) == id) {
                return Err(Error::Input {
                    path,
                    msg: format!(
                        "symlink loop: this is the folder {} that contains it; wstream follows a \
                         symlinked folder once and refuses loops (remove the link or list the files \
                         with --files-from)",
                        ancestor.display()
                    ),
                });
            }
            if !seen.insert(id) {
                walk.skipped.push((path, SkipReason::SeenFolder));
                continue;
            }
            ancestors.push((id.0, id.1, path.clone()));
            walk_dir(&path, ancestors, seen, walk)?;
            ancestors.pop();
        } else if !meta.is_file() {
            walk.skipped.push((path, SkipReason::NotRegular));
        } else if is_image(&path) {
            walk.files.push(path);
        } else {
            walk.skipped.push((path, SkipReason::NotImage));
        }
    }
    Ok(())
}

/// The paths listed in `reader`, one per line (`--files-from`): bytes taken as they are (a path may hold
/// spaces or non-UTF-8 bytes), a trailing `\r` dropped, empty lines ignored. `what` names the list in errors.
pub fn read_list(reader: impl BufRead, what: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in reader.split(b'\n') {
        let mut line = line.map_err(|e| Error::Input {
            path: what.into(),
            msg: format!("cannot read the list of inputs: {e}"),
        })?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if !line.is_empty() {
            paths.push(PathBuf::from(std::ffi::OsStr::from_bytes(&line)));
        }
    }
    Ok(paths)
}

/// One of `count` parts of a run: the inputs at positions `index`, `index + count`, ... of the
/// deterministic order. Every part of the same inputs is a disjoint subset, and together they are all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based, below `count`.
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `K/N`, 0-based: `0/3`, `1/3`, `2/3`.
    fn from_str(s: &str) -> std::result::Result<Shard, String> {
        let bad = || format!("`{s}` is not a shard K/N with 0 <= K < N, such as 0/4");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        Shard::new(index, count).ok_or_else(bad)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The environment variable that gives the shard count where the scheduler sets only an index.
pub const SHARD_COUNT_VAR: &str = "WSTREAM_SHARD_COUNT";

impl Shard {
    pub fn new(index: usize, count: usize) -> Option<Shard> {
        (count > 0 && index < count).then_some(Shard { index, count })
    }

    /// Keeps the items of this shard, in order.
    pub fn select<T>(&self, items: Vec<T>) -> Vec<T> {
        items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % self.count == self.index)
            .map(|(_, t)| t)
            .collect()
    }

    /// The shard an array job's environment names, and a description of where it came from, or `None`
    /// outside one. `count` (a `--shard-count` flag) is used where the scheduler gives only an index, and
    /// then [`SHARD_COUNT_VAR`]. Looked for in this order:
    /// - Kubernetes Indexed Job: `JOB_COMPLETION_INDEX` (0-based) + count;
    /// - Slurm job array: `SLURM_ARRAY_TASK_ID` less `SLURM_ARRAY_TASK_MIN`, divided by
    ///   `SLURM_ARRAY_TASK_STEP`, of `SLURM_ARRAY_TASK_COUNT` (or count);
    /// - AWS Batch array job: `AWS_BATCH_JOB_ARRAY_INDEX` (0-based) + count.
    ///
    /// An index without a count, or values that are not numbers or out of range, are errors.
    pub fn from_env(
        count: Option<usize>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<(Shard, String)>> {
        let num = |name: &str| -> Result<Option<usize>> {
            match var(name) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    Error::Options(format!("{name}={v:?} is not a non-negative whole number"))
                }),
            }
        };
        let count_of = |sched: &str| -> Result<(usize, String)> {
            if let Some(c) = count {
                return Ok((c, format!("--shard-count {c}")));
            }
            match num(SHARD_COUNT_VAR)? {
                Some(c) => Ok((c, format!("{SHARD_COUNT_VAR}={c}"))),
                None => Err(Error::Options(format!(
                    "{sched} is set but the number of shards is not: pass --shard-count N or set \
                     {SHARD_COUNT_VAR} to the number of tasks"
                ))),
            }
        };
        let found = if let Some(i) = num("JOB_COMPLETION_INDEX")? {
            let (n, from) = count_of("JOB_COMPLETION_INDEX")?;
            Some((i, n, format!("JOB_COMPLETION_INDEX={i} and {from}")))
        } else if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            let (n, from) = match (count, num("SLURM_ARRAY_TASK_COUNT")?) {
                (None, Some(n)) => (n, format!("SLURM_ARRAY_TASK_COUNT={n}")),
                _ => count_of("SLURM_ARRAY_TASK_ID")?,
            };
            let Some(i) = id.checked_sub(min).map(|d| d / step) else {
                return Err(Error::Options(format!(
                    "SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}"
                )));
            };
            Some((
                i,
                n,
                format!("SLURM_ARRAY_TASK_ID={id} (min {min}, step {step}) and {from}"),
            ))
        } else if let Some(i) = num("AWS_BATCH_JOB_ARRAY_INDEX")? {
            let (n, from) = count_of("AWS_BATCH_JOB_ARRAY_INDEX")?;
            Some((i, n, format!("AWS_BATCH_JOB_ARRAY_INDEX={i} and {from}")))
        } else {
            None
        };
        match found {
            None => Ok(None),
            Some((i, n, from)) => match Shard::new(i, n) {
                Some(s) => Ok(Some((s, from))),
                None => Err(Error::Options(format!(
                    "shard {i} of {n} from {from} is out of range: the index must be below the count"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec![
            "img10.jpg",
            "img2.jpg",
            "img02.jpg",
            "Img1.jpg",
            "img1.jpg",
            "a",
            "img1a.jpg",
            "img",
            "99999999999999999999999.jpg",
            "3.jpg",
        ];
        v.sort_by(|a, b| natural_cmp(a.as_bytes(), b.as_bytes()));
        assert_eq!(
            v,
            [
                "3.jpg",
                "99999999999999999999999.jpg",
                "Img1.jpg",
                "a",
                "img",
                "img1.jpg",
                "img1a.jpg",
                "img2.jpg",
                "img02.jpg",
                "img10.jpg"
            ]
        );
    }

    #[test]
    fn shard_specs_and_environments() {
        assert_eq!("1/3".parse(), Ok(Shard { index: 1, count: 3 }));
        for bad in ["3/3", "0/0", "1", "-1/3", "a/b", "1/3/4"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let shard = |c, p| Shard::from_env(c, env(p)).map(|o| o.map(|(s, _)| s.to_string()));
        assert_eq!(shard(None, &[]).unwrap(), None);
        assert_eq!(
            shard(
                None,
                &[("JOB_COMPLETION_INDEX", "2"), (SHARD_COUNT_VAR, "4")]
            )
            .unwrap(),
            Some("2/4".into())
        );
        assert_eq!(
            shard(Some(3), &[("JOB_COMPLETION_INDEX", "2")]).unwrap(),
            Some("2/3".into())
        );
        assert!(shard(None, &[("JOB_COMPLETION_INDEX", "2")]).is_err());
        assert!(shard(Some(2), &[("JOB_COMPLETION_INDEX", "2")]).is_err());
        assert_eq!(
            shard(
                None,
                &[
                    ("SLURM_ARRAY_TASK_ID", "7"),
                    ("SLURM_ARRAY_TASK_MIN", "1"),
                    ("SLURM_ARRAY_TASK_STEP", "2"),
                    ("SLURM_ARRAY_TASK_COUNT", "5")
                ]
            )
            .unwrap(),
            Some("3/5".into())
        );
        assert_eq!(
            shard(
                None,
                &[("AWS_BATCH_JOB_ARRAY_INDEX", "0"), (SHARD_COUNT_VAR, "2")]
            )
            .unwrap(),
            Some("0/2".into())
        );
        assert!(shard(None, &[("AWS_BATCH_JOB_ARRAY_INDEX", "x")]).is_err());
        assert_eq!(
            Shard { index: 1, count: 3 }.select((0..8).collect()),
            vec![1, 4, 7]
        );
    }
}
