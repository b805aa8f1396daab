//! Safetensors header parsing and validation: every check names the tensor and the numbers.

use std::collections::HashSet;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde::de::{Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::TensorInfo;
use crate::error::{Error, Result};

/// Headers larger than this are refused before they are parsed. The `safetensors` crate's cap is 100 MB, but
/// a header is copied about three times while it is checked and indexed (a 99 MB tensor name cost 295 MB of
/// RSS); [`MAX_TENSORS`] entries need about 10 MB, and ViT-L/16's header (296 tensors) is 28 KB.
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Checkpoints (all shards together) listing more tensors than this are refused before the tensors are
/// indexed. The `safetensors` crate bounds them only through its header cap, which admits well over a million
/// zero-size tensors, each costing over a kilobyte to index: 1.58 GB of RSS for a million. timm's Large
/// models have about 300 tensors; at this limit a header costs about 100 MB of RSS to open.
pub const MAX_TENSORS: usize = 100_000;

/// Tensors with more dimensions than this are refused while their shape is parsed: timm's have at most 4,
/// and a header of one tensor with 8 million dimensions cost 447 MB of RSS to inspect.
pub const MAX_RANK: usize = 8;

/// One header entry, as written. The dtype stays a string so an unknown one gets a named error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Shape,
    data_offsets: (usize, usize),
}

/// A shape, refused past [`MAX_RANK`] dimensions before more are stored.
struct Shape(Vec<usize>);

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Shape;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of dimensions")
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> std::result::Result<Shape, A::Error> {
                let mut dims = Vec::new();
                while let Some(d) = s.next_element()? {
                    if dims.len() == MAX_RANK {
                        return Err(A::Error::custom(format!(
                            "shape has more than {MAX_RANK} dimensions, wstream's limit"
                        )));
                    }
                    dims.push(d);
                }
                Ok(Shape(dims))
            }
        }
        d.deserialize_seq(V)
    }
}

/// The header's top-level object with its keys in order and duplicates kept, so they can be reported. Each
/// value stays the JSON text it is in the header until it is checked, and past [`MAX_TENSORS`] tensors the
/// keys are only counted, so parsing a header costs about its names' bytes.
struct RawHeader<'a> {
    entries: Vec<(String, &'a RawValue)>,
    /// Keys other than `__metadata__`, kept or not.
    tensors: usize,
}

impl<'de> Deserialize<'de> for RawHeader<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<RawHeader<'de>, A::Error> {
                let mut entries = Vec::new();
                let mut tensors = 0;
                while let Some(key) = m.next_key::<String>()? {
                    tensors += (key != "__metadata__") as usize;
                    if tensors <= MAX_TENSORS {
                        entries.push((key, m.next_value()?));
                    } else {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(RawHeader { entries, tensors })
            }
        }
        d.deserialize_map(V)
    }
}

/// Validates the header of one file, mapped whole as `buf`, and returns its tensors with absolute byte
/// ranges, in offset order. The `safetensors` crate then validates the same header as a second opinion, so
/// nothing it would refuse gets through.
pub(super) fn parse(path: &Path, buf: &[u8], file_index: usize) -> Result<Vec<TensorInfo>> {
    let file_len = buf.len() as u64;
    let Some(len_bytes) = buf.get(..8) else {
        return Err(Error::TooShort {
            path: path.into(),
            len: file_len,
        });
    };
    let header_len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    if header_len > MAX_HEADER_BYTES {
        return Err(Error::HeaderTooLarge {
            path: path.into(),
            header_len,
            limit: MAX_HEADER_BYTES,
        });
    }
    if 8 + header_len > file_len {
        return Err(Error::HeaderPastEnd {
            path: path.into(),
            header_len,
            file_len,
        });
    }
    let data_start = 8 + header_len as usize;
    let header = std::str::from_utf8(&buf[8..data_start]).map_err(|e| Error::HeaderNotUtf8 {
        path: path.into(),
        offset: e.valid_up_to(),
    })?;
    let RawHeader {
        entries,
        tensors: listed,
    } = serde_json::from_str(header).map_err(|e| Error::HeaderJson {
        path: path.into(),
        msg: e.to_string(),
    })?;
    if listed > MAX_TENSORS {
        return Err(Error::TooManyTensors {
            path: path.into(),
            count: listed,
            limit: MAX_TENSORS,
        });
    }

    let bad = |name: &str, msg: String| Error::BadTensor {
        path: path.into(),
        name: name.into(),
        msg,
    };
    let mut seen = HashSet::with_capacity(entries.len());
    if let Some((name, _)) = entries.iter().find(|(k, _)| !seen.insert(k.as_str())) {
        return Err(Error::DuplicateTensor {
            path: path.into(),
            name: name.clone(),
        });
    }
    drop(seen);
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == "__metadata__" {
            continue;
        }
        let raw: RawEntry = serde_json::from_str(value.get())
            .map_err(|e| bad(&name, format!("bad header entry: {e}")))?;
        let dtype: Dtype = serde_json::from_value(serde_json::Value::String(raw.dtype.clone()))
            .map_err(|_| bad(&name, format!("unknown dtype `{}`", raw.dtype)))?;
        let Shape(shape) = raw.shape;
        let (begin, end) = raw.data_offsets;
        if end < begin {
            return Err(bad(
                &name,
                format!("data_offsets [{begin}, {end}] end before they begin"),
            ));
        }
        let bits = shape
            .iter()
            .try_fold(dtype.bitsize(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(&name, format!("shape {shape:?} overflows")))?;
        if bits % 8 != 0 || bits / 8 != end - begin {
            return Err(bad(
                &name,
                format!(
                    "shape {:?} x {dtype} needs {} bytes but data_offsets [{begin}, {end}] hold {}",
                    shape,
                    bits as f64 / 8.0,
                    end - begin
                ),
            ));
        }
        tensors.push(TensorInfo {
            name,
            dtype,
            shape,
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
                path: path.into(),
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
            path: path.into(),
            covered: expect as u64,
            actual: data_len as u64,
        });
    }
    SafeTensors::read_metadata(buf).map_err(|e| Error::HeaderJson {
        path: path.into(),
        msg: format!("refused by the safetensors crate: {e}"),
    })?;

    for t in &mut tensors {
        t.range = t.range.start + data_start..t.range.end + data_start;
    }
    Ok(tensors)
}
