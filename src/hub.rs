//! Where a model named on the command line lives: a path, a Hugging Face hub id found in the local cache
//! (`timm/NAME`, `hf-hub:timm/NAME`, `NAME@REVISION`), or a cache repo folder (`models--timm--NAME`).
//! Nothing is ever downloaded: a model missing from the cache is an error saying where it looked and how
//! to fetch it.
//!
//! The cache layout is huggingface_hub's: `CACHE/models--ORG--NAME/refs/REVISION` holds a commit hash,
//! `snapshots/HASH/` the files (symlinks into `blobs/`, which the mapping follows). CACHE is
//! `HF_HUB_CACHE` (or its old name `HUGGINGFACE_HUB_CACHE`), else `HF_HOME/hub`, else
//! `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`, as huggingface_hub resolves it.
//!
//! A resolver of our own rather than the `hf-hub` crate: its 1.0 requires reqwest, tokio, hyper and hf-xet
//! whatever features are chosen (a download client in a crate that must never download), and the offline
//! `Cache` of its 0.x releases reads only `HF_HOME` and finds a revision only through `refs/`, not by
//! commit hash.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The organisation a bare `NAME@REVISION` belongs to, as timm's `hf-hub:` names do.
const DEFAULT_ORG: &str = "timm";

/// Where the default models live: `WSTREAM_WEIGHTS` when set, else the `weights/` folder of the source tree
/// this binary was built from; with a phrase saying which, for messages.
pub fn default_weights_dir() -> (PathBuf, &'static str) {
    match std::env::var_os("WSTREAM_WEIGHTS").filter(|v| !v.is_empty()) {
        Some(dir) => (PathBuf::from(dir), "WSTREAM_WEIGHTS"),
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("weights"),
            "the weights/ folder of the source tree wstream was built from; set WSTREAM_WEIGHTS to use another",
        ),
    }
}

/// The Hugging Face hub cache folder and the setting that chose it.
pub fn cache_dir() -> Option<(PathBuf, &'static str)> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("HF_HUB_CACHE") {
        return Some((d, "HF_HUB_CACHE"));
    }
    if let Some(d) = var("HUGGINGFACE_HUB_CACHE") {
        return Some((d, "HUGGINGFACE_HUB_CACHE"));
    }
    if let Some(d) = var("HF_HOME") {
        return Some((d.join("hub"), "HF_HOME/hub"));
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return Some((d.join("huggingface/hub"), "XDG_CACHE_HOME/huggingface/hub"));
    }
    var("HOME").map(|h| (h.join(".cache/huggingface/hub"), "~/.cache/huggingface/hub"))
}

/// A hub id: `org/name` and the revision asked for (`main` when none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
}

impl HubId {
    /// Reads `hf-hub:ORG/NAME[@REV]`, `ORG/NAME[@REV]` or `NAME@REV` (organisation timm); `None` for
    /// anything else (a path with more components, a bare name without a revision).
    pub fn parse(spec: &str) -> Option<HubId> {
        let (explicit, rest) = match spec.strip_prefix("hf-hub:") {
            Some(r) => (true, r),
            None => (false, spec),
        };
        let (repo, revision) = match rest.split_once('@') {
            Some((r, rev)) => (r, Some(rev)),
            None => (rest, None),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let repo = match repo.split('/').collect::<Vec<_>>()[..] {
            [org, name] if valid(org) && valid(name) => format!("{org}/{name}"),
            [name] if valid(name) && (explicit || revision.is_some()) => {
                format!("{DEFAULT_ORG}/{name}")
            }
            _ => return None,
        };
        let revision = match revision {
            Some(r) if r.is_empty() || r.split('/').any(|p| !valid(p)) => return None,
            Some(r) => r.to_string(),
            None => "main".to_string(),
        };
        Some(HubId { repo, revision })
    }

    /// The repo's folder in the cache: `models--ORG--NAME`.
    pub fn folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

/// A model to load, and how it was found (for a note on stderr), if not given as a plain path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub path: PathBuf,
    pub found: Option<String>,
}

/// Finds the model `spec` names: an existing file or folder (a cache repo folder resolves to its `main`
/// snapshot), else a hub id in the local cache.
pub fn locate(spec: &Path) -> Result<Located> {
    if spec.exists() {
        if spec.join("snapshots").is_dir() && !spec.join("model.safetensors").exists() {
            let path = snapshot(spec, "main", &spec.display().to_string())?;
            let found = format!(
                "{} is a hub cache repo: using its main snapshot",
                spec.display()
            );
            return Ok(Located {
                path,
                found: Some(found),
            });
        }
        return Ok(Located {
            path: spec.to_path_buf(),
            found: None,
        });
    }
    let text = spec.to_string_lossy();
    let Some(id) = HubId::parse(&text) else {
        // Not a hub id: loading it gives the usual error for a missing path.
        return Ok(Located {
            path: spec.to_path_buf(),
            found: None,
        });
    };
    let Some((cache, whence)) = cache_dir() else {
        return Err(Error::Hub(format!(
            "{text}: no such file or folder, and no Hugging Face cache to look in (HF_HUB_CACHE, HF_HOME, \
             XDG_CACHE_HOME and HOME are all unset)"
        )));
    };
    let repo_dir = cache.join(id.folder());
    if !repo_dir.join("snapshots").is_dir() {
        return Err(Error::Hub(format!(
            "{text}: no such file or folder, and {} is not in the Hugging Face cache: looked for {} \
             (cache from {whence}); wstream never downloads: run `hf download {}` first",
            id.repo,
            repo_dir.display(),
            id.repo
        )));
    }
    let path = snapshot(&repo_dir, &id.revision, &id.repo)?;
    let found = format!(
        "{text}: {} from the Hugging Face cache ({whence})",
        path.display()
    );
    Ok(Located {
        path,
        found: Some(found),
    })
}

/// The snapshot folder of `revision` in the cache repo folder `repo_dir`: a branch or tag in `refs/`, or a
/// commit hash in `snapshots/`.
fn snapshot(repo_dir: &Path, revision: &str, repo: &str) -> Result<PathBuf> {
    let by_ref = repo_dir.join("refs").join(revision);
    let hash = match crate::fsutil::read_regular(&by_ref, 4096, "hub cache ref") {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(Error::NotFound { .. }) => revision.to_string(),
        Err(e) => return Err(e),
    };
    let dir = repo_dir.join("snapshots").join(&hash);
    let plain = !hash.is_empty() && hash.chars().all(|c| c.is_ascii_alphanumeric());
    if plain && dir.is_dir() {
        return Ok(dir);
    }
    let list = |sub: &str| {
        let mut names: Vec<String> = std::fs::read_dir(repo_dir.join(sub))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    Err(Error::Hub(format!(
        "{repo}: revision `{revision}` is not in the cache at {}: {} (refs: {}; snapshots: {}); \
         run `hf download {repo} --revision {revision}` first",
        repo_dir.display(),
        if by_ref.exists() {
            format!("refs/{revision} names snapshot `{hash}`, which is missing")
        } else {
            format!("no refs/{revision} and no snapshots/{revision}")
        },
        list("refs"),
        list("snapshots"),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(repo: &str, revision: &str) -> Option<HubId> {
        Some(HubId {
            repo: repo.into(),
            revision: revision.into(),
        })
    }

    #[test]
    fn hub_ids() {
        assert_eq!(
            HubId::parse("timm/convnext_large.fb_in1k"),
            id("timm/convnext_large.fb_in1k", "main")
        );
        assert_eq!(HubId::parse("hf-hub:timm/vit_x"), id("timm/vit_x", "main"));
        assert_eq!(HubId::parse("hf-hub:vit_x"), id("timm/vit_x", "main"));
        assert_eq!(HubId::parse("vit_x@v1.0"), id("timm/vit_x", "v1.0"));
        assert_eq!(
            HubId::parse("org/vit_x@refs/pr/1"),
            id("org/vit_x", "refs/pr/1")
        );
        assert_eq!(HubId::parse("vit_x"), None);
        assert_eq!(HubId::parse("a/b/c"), None);
        assert_eq!(HubId::parse("../x"), None);
        assert_eq!(HubId::parse("timm/x@"), None);
        assert_eq!(HubId::parse("timm/x@../../etc"), None);
        assert_eq!(id("timm/x", "main").unwrap().folder(), "models--timm--x");
    }
}
