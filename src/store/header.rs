//! Safetensors header parsing and validation: every check names the tensor and the numbers.

use std::collections::BTreeSet;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::TensorInfo;
use crate::error::{Error, Result};

/// Headers larger than this are refused before they are parsed (the `safetensors` crate's own cap).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

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
    let RawHeader(entries) = serde_json::from_str(header).map_err(|e| Error::HeaderJson {
        path: path.into(),
        msg: e.to_string(),
    })?;

    let bad = |name: &str, msg: String| Error::BadTensor {
        path: path.into(),
        name: name.into(),
        msg,
    };
    let mut seen = BTreeSet::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if !seen.insert(name.clone()) {
            return Err(Error::DuplicateTensor {
                path: path.into(),
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
