//! Which files make up a checkpoint: the weights file of a model folder, or a shard index
//! (`model.safetensors.index.json`) checked against the shards it names.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::header::MAX_TENSORS;
use super::{header, MappedFile, TensorInfo};
use crate::error::{Error, Result};
use crate::fsutil;

const SINGLE_FILE: &str = "model.safetensors";
const SHARD_INDEX: &str = "model.safetensors.index.json";

/// Which file of a model folder holds the weights.
pub(super) fn weights_in_folder(dir: &Path) -> Result<PathBuf> {
    for name in [SHARD_INDEX, SINGLE_FILE] {
        let p = dir.join(name);
        // Not only regular files: a FIFO or device by that name gets its clear refusal when opened.
        if p.metadata().is_ok_and(|m| !m.is_dir()) {
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

/// The index's top level; `metadata` and anything else is not needed.
#[derive(Deserialize)]
struct RawIndex<'a> {
    #[serde(borrow)]
    weight_map: Option<&'a RawValue>,
}

/// `weight_map`'s entries in order, each value still its JSON text; past [`MAX_TENSORS`] the keys are only
/// counted, so an index costs about its own bytes to parse however many entries it lists.
struct WeightMap<'a> {
    entries: Vec<(String, &'a RawValue)>,
    count: usize,
}

impl<'de> Deserialize<'de> for WeightMap<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WeightMap<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of tensor names to shard file names")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<WeightMap<'de>, A::Error> {
                let mut entries = Vec::new();
                let mut count = 0;
                while let Some(key) = m.next_key::<String>()? {
                    count += 1;
                    if count <= MAX_TENSORS {
                        entries.push((key, m.next_value()?));
                    } else {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(WeightMap { entries, count })
            }
        }
        d.deserialize_map(V)
    }
}

/// Opens the shards `index` names, each checked to hold exactly the tensors the index maps to it.
pub(super) fn open_sharded(index: &Path) -> Result<(Vec<MappedFile>, Vec<TensorInfo>)> {
    let bad = |msg: String| Error::ShardIndex {
        index: index.into(),
        msg,
    };
    let text = fsutil::read_regular(index, fsutil::MAX_INDEX_BYTES, "shard index")?;
    let raw: RawIndex =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let Some(WeightMap { entries, count }) = raw
        .weight_map
        .and_then(|m| serde_json::from_str(m.get()).ok())
    else {
        return Err(bad("no `weight_map` object".into()));
    };
    if count > MAX_TENSORS {
        return Err(Error::TooManyTensors {
            path: index.into(),
            count,
            limit: MAX_TENSORS,
        });
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut map = BTreeMap::new();
    let mut shard_names = BTreeSet::new();
    for (tensor, shard) in entries {
        let Ok(shard) = serde_json::from_str::<String>(shard.get()) else {
            return Err(bad(format!(
                "`weight_map` entry for `{tensor}` is not a file name"
            )));
        };
        if shard.contains('/') || shard.contains('\\') || shard.is_empty() {
            return Err(bad(format!(
                "shard name `{shard}` must be a plain file name"
            )));
        }
        shard_names.insert(shard.clone());
        if map.insert(tensor.clone(), shard).is_some() {
            return Err(bad(format!("`weight_map` lists `{tensor}` twice")));
        }
    }
    let unlisted = |tensors: &[TensorInfo], files: &[MappedFile]| {
        let extra = tensors
            .iter()
            .find(|t| !map.contains_key(&t.name))
            .map(|t| format!("`{}` in `{}`", t.name, files[t.file].path.display()))
            .unwrap_or_default();
        bad(format!(
            "shards hold tensors the index does not list: {extra}"
        ))
    };
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
        tensors.extend(header::parse(&file.path, file.bytes(), i)?);
        files.push(file);
        shard_of.insert(shard.clone(), i);
        // Checked as each shard is read, so at most one shard's tensors (MAX_TENSORS) are held past the
        // index's count.
        if tensors.len() > map.len() {
            return Err(unlisted(&tensors, &files));
        }
    }
    let found: HashMap<&str, usize> = tensors.iter().map(|t| (t.name.as_str(), t.file)).collect();
    for (tensor, shard) in &map {
        if found.get(tensor.as_str()) != Some(&shard_of[shard]) {
            return Err(bad(format!(
                "`{tensor}` is mapped to `{shard}`, which does not hold it"
            )));
        }
    }
    if tensors.len() != map.len() {
        return Err(unlisted(&tensors, &files));
    }
    Ok((files, tensors))
}
