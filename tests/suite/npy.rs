//! `.npy` inputs through `classify`: malformed headers and impossible shapes are one error line, never a
//! panic or a silent empty answer, and a batch array gives each item the answer it gets alone.

use crate::common;

use std::path::Path;

use common::parity::fixture;
use common::wstream;

/// A version-1 `.npy` file with `header` (padded as numpy pads it) and `data`.
fn write_npy(path: &Path, header: &[u8], data: &[u8]) -> String {
    let mut h = header.to_vec();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
    path.display().to_string()
}

fn header(shape: &[u8]) -> Vec<u8> {
    let mut h = b"{'descr': '<f4', 'fortran_order': False, 'shape': ".to_vec();
    h.extend_from_slice(shape);
    h.extend_from_slice(b", }");
    h
}

#[test]
fn malformed_arrays_are_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let vit = fixture("vit_tiny").display().to_string();
    // Before: the first two panicked in the header parser (slicing `)` and a multi-byte char), the third
    // (element count x 4 wraps to 0) and the fifth exited 0 printing nothing, the fourth panicked in
    // `chunks_exact(0)`.
    let cases: [(&[u8], &[u8], &str); 6] = [
        (
            b"{'descr': '<f4', 'fortran_order': False, 'shape': )}",
            b"",
            "malformed header: expected a string, True, False or a tuple at byte 50, found ')'",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': \u{e9})}".as_bytes(),
            b"",
            "header byte 50 is not ASCII (0xc3)",
        ),
        (
            &header(b"(4, 3, 1073741824, 1073741824)"),
            b"",
            "shape [4, 3, 1073741824, 1073741824] overflows",
        ),
        (
            &header(b"(2, 3, 0, 0)"),
            b"",
            "array of shape [2, 3, 0, 0] holds no image",
        ),
        (
            &header(b"(0, 3, 32, 32)"),
            b"",
            "array of shape [0, 3, 32, 32] holds no image",
        ),
        (
            &header(b"(1, 3, 32, 32)"),
            &[0; 64],
            "shape [1, 3, 32, 32] needs 12288 data bytes, the file has 64",
        ),
    ];
    for (i, (header, data, expected)) in cases.into_iter().enumerate() {
        let npy = write_npy(&dir.path().join(format!("{i}.npy")), header, data);
        let (code, stdout, stderr) = wstream(&["classify", "--model", &vit, &npy]);
        assert_eq!(code, 1, "{npy}: exit status: {stderr}");
        assert!(stdout.is_empty(), "{npy}: no answer: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{npy}: one line: {stderr}");
        assert!(
            stderr.contains(&format!("{npy}: ")) && stderr.contains(expected),
            "{npy}: `{stderr}` lacks `{expected}`"
        );
    }
}

#[test]
fn each_item_of_a_batch_array_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let vit = fixture("vit_tiny").display().to_string();
    let single = fixture("vit_tiny").join("reference/cat.input.npy");
    let (values, shape) = wstream::npy::read_f32(&single).unwrap();
    assert_eq!(shape, [1, 3, 32, 32]);
    // The same image twice, the second negated: each item must get its own 3 x 32 x 32 values.
    let data: Vec<u8> = values
        .iter()
        .chain(values.iter().map(|v| -v).collect::<Vec<_>>().iter())
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let pair = write_npy(
        &dir.path().join("pair.npy"),
        &header(b"(2, 3, 32, 32)"),
        &data,
    );
    let negated: Vec<f32> = values.iter().map(|v| -v).collect();
    let neg = write_npy(
        &dir.path().join("neg.npy"),
        &header(b"(3, 32, 32)"),
        &negated
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    let logits = |inputs: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["classify", "--json", "--logits", "--model", &vit];
        args.extend_from_slice(inputs);
        let (code, stdout, stderr) = wstream(&args);
        assert_eq!(code, 0, "{stderr}");
        stdout
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["models"][0]["logits"].clone()
            })
            .collect()
    };
    let alone = logits(&[single.to_str().unwrap(), &neg]);
    let batch = logits(&[&pair]);
    assert_eq!(batch.len(), 2);
    assert!(alone[0].as_array().is_some_and(|l| l.len() == 1000));
    assert_eq!(
        batch, alone,
        "items of a [2, 3, H, W] array classify as alone"
    );
    assert_ne!(batch[0], batch[1]);
}
