//! Reading `.npy` arrays (little-endian f32, C order): preprocessed inputs and reference outputs.

use std::path::Path;

use crate::error::{Error, Result};

/// An f32 array and its shape.
pub fn read_f32(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let bytes = crate::fsutil::read_regular(path, crate::fsutil::MAX_NPY_BYTES, ".npy array")?;
    parse_f32(&bytes).map_err(|msg| Error::Input {
        path: path.into(),
        msg: format!("not a usable .npy array: {msg}"),
    })
}

fn parse_f32(bytes: &[u8]) -> std::result::Result<(Vec<f32>, Vec<usize>), String> {
    let magic = b"\x93NUMPY";
    if bytes.len() < 10 || &bytes[..6] != magic {
        return Err("missing the \\x93NUMPY magic".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
        v => return Err(format!("unsupported format version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("header is cut short or not text")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = header
            .find(&format!("'{key}':"))
            .ok_or(format!("header has no '{key}'"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    if !descr.starts_with("'<f4'") {
        let got = descr.split(',').next().unwrap_or("");
        return Err(format!("dtype {got} is not little-endian float32 ('<f4')"));
    }
    if !field("fortran_order")?.starts_with("False") {
        return Err("Fortran order is not supported; save a C-order array".into());
    }
    let shape_text = field("shape")?;
    let close = shape_text.find(')').ok_or("malformed shape")?;
    let shape = shape_text[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("malformed shape {}", &shape_text[..=close]))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("shape overflows")?;
    let data = &bytes[start + header_len..];
    if data.len() != n * 4 {
        return Err(format!(
            "shape {shape:?} needs {} data bytes, the file has {}",
            n * 4,
            data.len()
        ));
    }
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Ok((values, shape))
}

#[cfg(test)]
mod tests {
    use super::parse_f32;

    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn reads_and_refuses() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let ok = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            &data,
        );
        assert_eq!(
            parse_f32(&ok).unwrap(),
            (vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![2, 3])
        );
        let f8 = npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }",
            &data,
        );
        assert!(parse_f32(&f8)
            .unwrap_err()
            .contains("'<f8' is not little-endian float32"));
        let short = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }",
            &data,
        );
        assert!(parse_f32(&short)
            .unwrap_err()
            .contains("needs 32 data bytes, the file has 24"));
        assert!(parse_f32(b"hello").is_err());
    }
}
