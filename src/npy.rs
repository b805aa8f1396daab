//! Reading `.npy` arrays (little-endian f32, C order): preprocessed inputs and reference outputs.
//!
//! The header is read with a bounded read and parsed by a total parser of the one Python literal numpy
//! writes (`{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`); the size the shape needs is
//! computed with checked arithmetic and compared with the file's size before any data is read. The data is
//! then read straight into the caller's vectors, item by item, so a large array is never held twice.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Headers longer than this are refused: numpy's own cap (`numpy.lib.format`'s default `max_header_size`),
/// far above the ~100 bytes an f32 array's header needs.
pub const MAX_HEADER_BYTES: usize = 10_000;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Bytes read per `read` call while filling a vector.
const CHUNK_BYTES: usize = 1 << 16;

/// An f32 array and its shape.
pub fn read_f32(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let mut array = NpyF32::open(path)?;
    let values = array.read(array.remaining())?;
    Ok((values, array.shape))
}

/// An f32 array and its shape from the bytes of a `.npy` file (a request body); errors name `name` and
/// say what is wrong, as [`NpyF32::open`]'s do.
pub fn parse_f32(bytes: &[u8], name: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let bad = |msg: String| Error::Input {
        path: name.into(),
        msg: format!("not a usable .npy array: {msg}"),
    };
    let (header_len, start) = preamble_of(bytes).map_err(bad)?;
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "header length {header_len} is over numpy's {MAX_HEADER_BYTES}-byte limit"
        )));
    }
    let Some(header) = bytes.get(start..start + header_len) else {
        return Err(bad(format!(
            "header is cut short: the data ends {} bytes into a {header_len}-byte header",
            bytes.len() - start
        )));
    };
    let shape = parse_header(header).map_err(bad)?;
    let numel = checked_numel(&shape).map_err(bad)?;
    let data = &bytes[start + header_len..];
    if data.len() as u64 != numel as u64 * 4 {
        return Err(bad(format!(
            "shape {shape:?} needs {} data bytes, the body has {}",
            numel as u64 * 4,
            data.len()
        )));
    }
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((values, shape))
}

/// An open f32 `.npy` file whose header has been checked against its size; its values are read in C order
/// with [`NpyF32::read`].
pub struct NpyF32 {
    path: PathBuf,
    file: File,
    shape: Vec<usize>,
    /// Values not read yet.
    remaining: usize,
}

impl NpyF32 {
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::Input {
            path: path.into(),
            msg: format!("not a usable .npy array: {msg}"),
        };
        let (mut file, meta) = crate::fsutil::open_regular(path)?;
        let file_len = meta.len();
        if file_len > crate::fsutil::MAX_NPY_BYTES {
            return Err(Error::FileTooLarge {
                path: path.into(),
                what: ".npy array",
                size: file_len,
                limit: crate::fsutil::MAX_NPY_BYTES,
            });
        }
        let mut read_up_to = |n: usize| {
            let mut v = Vec::with_capacity(n);
            (&mut file)
                .take(n as u64)
                .read_to_end(&mut v)
                .map(|_| v)
                .map_err(|e| Error::io(path, e))
        };
        let mut preamble = read_up_to(10)?;
        if preamble.get(6).is_some_and(|&v| v >= 2) {
            preamble.extend(read_up_to(2)?);
        }
        let (header_len, start) = preamble_of(&preamble).map_err(bad)?;
        if header_len > MAX_HEADER_BYTES {
            return Err(bad(format!(
                "header length {header_len} is over numpy's {MAX_HEADER_BYTES}-byte limit"
            )));
        }
        let header = read_up_to(header_len)?;
        if header.len() < header_len {
            return Err(bad(format!(
                "header is cut short: the file ends {} bytes into a {header_len}-byte header",
                header.len()
            )));
        }
        let shape = parse_header(&header).map_err(bad)?;
        let numel = checked_numel(&shape).map_err(bad)?;
        // Both fit in u64: numel * 4 was checked in usize, the header is at most MAX_HEADER_BYTES.
        let needed = numel as u64 * 4;
        let data_start = (start + header_len) as u64;
        let data_len = file_len.saturating_sub(data_start);
        if data_len != needed {
            return Err(bad(format!(
                "shape {shape:?} needs {needed} data bytes, the file has {data_len}"
            )));
        }
        Ok(NpyF32 {
            path: path.into(),
            file,
            shape,
            remaining: numel,
        })
    }

    /// The array's shape, as its header gives it.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// How many values [`NpyF32::read`] has not returned yet.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// The next `count` values, in C order.
    pub fn read(&mut self, count: usize) -> Result<Vec<f32>> {
        if count > self.remaining {
            return Err(Error::Input {
                path: self.path.clone(),
                msg: format!(
                    "{count} values asked for, the array has {} left",
                    self.remaining
                ),
            });
        }
        // `count` values are known to be in the file (its size was checked at open), so this is no larger
        // than the file.
        let mut values = Vec::with_capacity(count);
        let mut buf = vec![0u8; CHUNK_BYTES.min(count * 4)];
        while values.len() < count {
            let n = ((count - values.len()) * 4).min(buf.len());
            self.file
                .read_exact(&mut buf[..n])
                .map_err(|e| Error::Input {
                    path: self.path.clone(),
                    msg: format!("reading the array's data (did the file change?): {e}"),
                })?;
            values.extend(
                buf[..n]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        self.remaining -= count;
        Ok(values)
    }
}

/// The header's length and where it starts, from the magic, version and length fields.
fn preamble_of(bytes: &[u8]) -> std::result::Result<(usize, usize), String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("missing the \\x93NUMPY magic".into());
    }
    match bytes[6] {
        1 => Ok((u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)),
        2 | 3 if bytes.len() >= 12 => Ok((
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )),
        v => Err(format!("unsupported format version {v}")),
    }
}

/// Elements of `shape`, checked so that their bytes (4 each) fit in `usize`.
fn checked_numel(shape: &[usize]) -> std::result::Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_mul(4).map(|_| n))
        .ok_or_else(|| format!("shape {shape:?} overflows: more bytes than a file can hold"))
}

/// A value of the header's dict.
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// The shape an f32 C-order header declares; anything else in the header is an error naming what and where.
fn parse_header(header: &[u8]) -> std::result::Result<Vec<usize>, String> {
    if let Some(i) = header.iter().position(|b| !b.is_ascii()) {
        return Err(format!(
            "header byte {i} is not ASCII (0x{:02x}); not a numpy header",
            header[i]
        ));
    }
    let mut p = Parser {
        text: header,
        at: 0,
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.expect(b'{')?;
    while !p.eat(b'}') {
        let key = p.string()?;
        let slot = match key.as_str() {
            "descr" => &mut descr,
            "fortran_order" => &mut fortran,
            "shape" => &mut shape,
            other => return Err(format!("header has an unexpected key '{other}'")),
        };
        p.expect(b':')?;
        if slot.replace(p.value()?).is_some() {
            return Err(format!("header has '{key}' twice"));
        }
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    p.skip_space();
    if p.at != header.len() {
        return Err(format!("header has {} after its closing brace", p.found()));
    }
    match descr {
        Some(Value::Str(d)) if d == "<f4" => {}
        Some(Value::Str(d)) => {
            return Err(format!("dtype '{d}' is not little-endian float32 ('<f4')"))
        }
        Some(_) => return Err("'descr' is not a dtype string".into()),
        None => return Err("header has no 'descr'".into()),
    }
    match fortran {
        Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err("Fortran order is not supported; save a C-order array".into())
        }
        Some(_) => return Err("'fortran_order' is not True or False".into()),
        None => return Err("header has no 'fortran_order'".into()),
    }
    match shape {
        Some(Value::Tuple(s)) => Ok(s),
        Some(_) => Err("'shape' is not a tuple of integers".into()),
        None => Err("header has no 'shape'".into()),
    }
}

/// A cursor over an ASCII header.
struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.text.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    /// Skips white space, then consumes `c` if it is next.
    fn eat(&mut self, c: u8) -> bool {
        self.skip_space();
        let hit = self.text.get(self.at) == Some(&c);
        self.at += hit as usize;
        hit
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("'{}'", c as char)))
        }
    }

    /// What is at the cursor, for a message.
    fn found(&self) -> String {
        match self.text.get(self.at) {
            Some(&c) => format!("{:?}", c as char),
            None => "the end".into(),
        }
    }

    fn error(&self, expected: &str) -> String {
        format!(
            "malformed header: expected {expected} at byte {}, found {}",
            self.at,
            self.found()
        )
    }

    /// A quoted string (either quote); numpy's keys and dtypes need no escapes.
    fn string(&mut self) -> std::result::Result<String, String> {
        self.skip_space();
        let Some(&quote) = self.text.get(self.at).filter(|&&c| c == b'\'' || c == b'"') else {
            return Err(self.error("a quoted string"));
        };
        let begin = self.at + 1;
        let Some(len) = self.text[begin..].iter().position(|&c| c == quote) else {
            return Err(format!(
                "malformed header: the string at byte {} is never closed",
                self.at
            ));
        };
        self.at = begin + len + 1;
        // The header was checked to be ASCII, so this is one char per byte.
        Ok(self.text[begin..begin + len]
            .iter()
            .map(|&c| c as char)
            .collect())
    }

    fn value(&mut self) -> std::result::Result<Value, String> {
        self.skip_space();
        let rest = &self.text[self.at..];
        for (word, b) in [("True", true), ("False", false)] {
            if rest.starts_with(word.as_bytes()) {
                self.at += word.len();
                return Ok(Value::Bool(b));
            }
        }
        match rest.first() {
            Some(b'\'' | b'"') => self.string().map(Value::Str),
            Some(b'(') => self.tuple().map(Value::Tuple),
            _ => Err(self.error("a string, True, False or a tuple")),
        }
    }

    /// `(d0, d1, ...)`, with numpy's trailing comma allowed (`(3,)`); `()` is a scalar's shape.
    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        while !self.eat(b')') {
            self.skip_space();
            let begin = self.at;
            while self.text.get(self.at).is_some_and(u8::is_ascii_digit) {
                self.at += 1;
            }
            if self.at == begin {
                return Err(self.error("a dimension (a non-negative integer)"));
            }
            let digits = std::str::from_utf8(&self.text[begin..self.at]).expect("ASCII digits");
            let dim = digits
                .parse::<usize>()
                .map_err(|_| format!("dimension {digits} in 'shape' is too large"))?;
            dims.push(dim);
            if !self.eat(b',') {
                self.expect(b')')?;
                break;
            }
        }
        Ok(dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `header` padded like numpy pads it, in a version-1 file.
    fn npy(header: &[u8], data: &[u8]) -> Vec<u8> {
        let mut h = header.to_vec();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(b' ');
        }
        h.push(b'\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(&h);
        v.extend_from_slice(data);
        v
    }

    fn read(bytes: &[u8]) -> std::result::Result<(Vec<f32>, Vec<usize>), String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        std::fs::write(&path, bytes).unwrap();
        read_f32(&path).map_err(|e| e.to_string())
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn reads_and_refuses() {
        let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let ok = npy(
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            &data,
        );
        assert_eq!(
            read(&ok).unwrap(),
            (vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![2, 3])
        );
        let f8 = npy(
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }",
            &data,
        );
        assert!(read(&f8)
            .unwrap_err()
            .contains("'<f8' is not little-endian float32"));
        let short = npy(
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }",
            &data,
        );
        assert!(read(&short)
            .unwrap_err()
            .contains("needs 32 data bytes, the file has 24"));
        assert!(read(b"hello").unwrap_err().contains("magic"));
    }

    #[test]
    fn header_forms_numpy_writes() {
        for (header, shape) in [
            (
                &b"{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }"[..],
                vec![6],
            ),
            (
                b"{'shape': (1, 2, 3), 'fortran_order': False, 'descr': '<f4'}",
                vec![1, 2, 3],
            ),
            (
                b"{\"descr\":\"<f4\",\"fortran_order\":False,\"shape\":(6)}",
                vec![6],
            ),
        ] {
            let (values, got) = read(&npy(header, &f32_bytes(&[0.5; 6]))).unwrap();
            assert_eq!((values.len(), got), (6, shape));
        }
        let scalar = npy(
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
            &f32_bytes(&[7.0]),
        );
        assert_eq!(read(&scalar).unwrap(), (vec![7.0], vec![]));
    }

    #[test]
    fn every_malformed_header_is_an_error_naming_it() {
        let head = |shape: &[u8]| {
            let mut h = b"{'descr': '<f4', 'fortran_order': False, 'shape': ".to_vec();
            h.extend_from_slice(shape);
            h
        };
        for (header, expected) in [
            (
                head(b")}"),
                "expected a string, True, False or a tuple at byte 50, found ')'",
            ),
            (
                head("\u{e9})}".as_bytes()),
                "header byte 50 is not ASCII (0xc3)",
            ),
            (head(b"\xff)}"), "header byte 50 is not ASCII (0xff)"),
            (
                head(b"(2, -3)}"),
                "expected a dimension (a non-negative integer) at byte 54, found '-'",
            ),
            (head(b"(2 3)}"), "expected ')' at byte 53, found '3'"),
            (head(b"(2, 3"), "expected ')' at byte 118, found the end"),
            (
                head(b"(99999999999999999999999,)}"),
                "dimension 99999999999999999999999 in 'shape' is too large",
            ),
            (head(b"'x'}"), "'shape' is not a tuple of integers"),
            (head(b"(1,)} x"), "header has 'x' after its closing brace"),
            (head(b"(1,), 'shape': (1,)}"), "header has 'shape' twice"),
            (
                head(b"(1,), 'extra': 1}"),
                "header has an unexpected key 'extra'",
            ),
            (
                b"{'descr': '<f4', 'shape': (1,)}".to_vec(),
                "header has no 'fortran_order'",
            ),
            (
                b"{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}".to_vec(),
                "expected a string, True, False or a tuple",
            ),
            (
                b"{'descr: '<f4'}".to_vec(),
                "header has an unexpected key 'descr: '",
            ),
            (b"{'descr".to_vec(), "the string at byte 1 is never closed"),
            (b"".to_vec(), "expected '{' at byte 54, found the end"),
        ] {
            let err = read(&npy(&header, &[])).unwrap_err();
            assert!(
                err.contains(expected),
                "{}: {err}",
                String::from_utf8_lossy(&header)
            );
        }
    }

    #[test]
    fn sizes_are_checked_before_reading() {
        // 4 * 3 * 2^30 * 2^30 elements fit in a u64, their bytes (x4) wrap to 0: the old parser accepted an
        // empty data section for them.
        let huge = npy(
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (4, 3, 1073741824, 1073741824), }",
            &[],
        );
        assert!(read(&huge)
            .unwrap_err()
            .contains("shape [4, 3, 1073741824, 1073741824] overflows"));
        let big = npy(
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }",
            &[0; 8],
        );
        assert!(read(&big)
            .unwrap_err()
            .contains("needs 4000000000000 data bytes, the file has 8"));
        let mut long = b"\x93NUMPY\x02\x00".to_vec();
        long.extend_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(read(&long)
            .unwrap_err()
            .contains("header length 1073741824 is over numpy's 10000-byte limit"));
        let cut = &npy(
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
            &[],
        )[..40];
        assert!(read(cut)
            .unwrap_err()
            .contains("the file ends 30 bytes into a 118-byte header"));
    }

    #[test]
    fn reads_item_by_item() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let values: Vec<f32> = (0..100_000).map(|i| i as f32).collect();
        let header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 50000), }";
        std::fs::write(&path, npy(header, &f32_bytes(&values))).unwrap();
        let mut a = NpyF32::open(&path).unwrap();
        assert_eq!((a.shape(), a.remaining()), (&[2, 50000][..], 100_000));
        assert_eq!(a.read(50_000).unwrap(), values[..50_000]);
        assert_eq!(a.read(50_000).unwrap(), values[50_000..]);
        assert!(a
            .read(1)
            .unwrap_err()
            .to_string()
            .contains("1 values asked for, the array has 0 left"));
    }
}
