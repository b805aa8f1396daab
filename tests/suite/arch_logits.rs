//! The three fixtures' logits on this architecture against those the x86-64 build computed
//! (tests/fixtures/x86_logits.jsonl, `wstream classify --json --logits` on AVX-512; regeneration in
//! tests/fixtures/README.md): the NEON kernels, the portable ones and every x86 level must agree within
//! 1e-5. The element-wise kernels compute the same bits everywhere; the `gemm` crate's products sum in an
//! order that depends on its micro-kernels, which is all that may differ.

use std::path::Path;

use wstream::convert::{self, Dtype, Layout, Options};
use wstream::models::{Act, Model};
use wstream::npy;

const TOL: f32 = 1e-5;

/// The first model's logits of one line of a `classify --json --logits` answer file.
fn logits(answer: &serde_json::Value) -> Vec<f32> {
    answer["models"][0]["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// `got` (computed here) equals `want` (the x86 build's) within [`TOL`], naming the worst logit if not.
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: logits");
    let (at, diff) = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .enumerate()
        .fold((0, 0.0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    eprintln!(
        "{what} on {}: max abs diff from x86 {diff:e} (logit {at})",
        std::env::consts::ARCH
    );
    assert!(
        diff <= TOL,
        "{what}: logit {at} is {} here, {} on x86: diff {diff} > {TOL}",
        got[at],
        want[at]
    );
}

#[test]
fn fixture_logits_match_the_x86_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lines = std::fs::read_to_string(root.join("tests/fixtures/x86_logits.jsonl")).unwrap();
    let mut fixtures = Vec::new();
    for line in lines.lines() {
        let answer: serde_json::Value = serde_json::from_str(line).unwrap();
        let input = root.join(answer["input"].as_str().unwrap());
        // tests/fixtures/<name>/reference/<stem>.input.npy
        let dir = input.parent().unwrap().parent().unwrap();
        let want = logits(&answer);
        let model = Model::load(dir).unwrap();
        let (x, shape) = npy::read_f32(&input).unwrap();
        let got = model.forward(Act::new(x, shape)).unwrap().data;
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert_close(&name, &got, &want);
        fixtures.push(name);
    }
    fixtures.sort();
    assert_eq!(fixtures, ["convnext_tiny", "swin_tiny", "vit_tiny"]);
}

/// FNV-1a (64 bits) of each `wstream convert tests/fixtures/<name> <name>.safetensors --layout packed` made by
/// the x86-64 build: the file every architecture must write, byte for byte.
const X86_PACKED_FILES: [(&str, u64); 3] = [
    ("vit_tiny", 0x5d37_08c1_f544_4c2f),
    ("convnext_tiny", 0x3f5a_5e9a_dfa5_6485),
    ("swin_tiny", 0x859c_e014_4918_afdc),
];

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The fixtures' packed copies: the file converted here is the one x86-64 makes (so a file packed on x86 runs
/// here unchanged: the panel geometry does not depend on the CPU), and its logits through the packed kernels
/// (NEON on aarch64, AVX-512 or portable on x86) are the x86 build's (tests/fixtures/x86_packed_logits.jsonl)
/// within 1e-5.
#[test]
fn packed_fixture_files_and_logits_match_the_x86_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lines =
        std::fs::read_to_string(root.join("tests/fixtures/x86_packed_logits.jsonl")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut fixtures = Vec::new();
    for line in lines.lines() {
        let answer: serde_json::Value = serde_json::from_str(line).unwrap();
        let input = root.join(answer["input"].as_str().unwrap());
        let dir = input.parent().unwrap().parent().unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let file = tmp.path().join(format!("{name}.safetensors"));
        let opts = Options {
            dtype: Dtype::F32,
            layout: Layout::Packed,
        };
        convert::convert(dir, &file, &opts, |_, _| {}).unwrap();
        let hash = fnv1a(&std::fs::read(&file).unwrap());
        let (_, want_hash) = X86_PACKED_FILES.iter().find(|(n, _)| *n == name).unwrap();
        assert_eq!(
            hash, *want_hash,
            "{name}: the packed file written here (FNV-1a {hash:#x}) is not the one x86-64 writes"
        );

        let model = Model::load(&file).unwrap();
        assert!(
            model
                .store
                .tensors()
                .iter()
                .any(|t| model.store.is_packed(&t.name)),
            "{name}: nothing was packed"
        );
        let want = logits(&answer);
        let (x, shape) = npy::read_f32(&input).unwrap();
        let got = model.forward(Act::new(x, shape)).unwrap().data;
        assert_close(&format!("{name} packed"), &got, &want);
        fixtures.push(name);
    }
    fixtures.sort();
    assert_eq!(fixtures, ["convnext_tiny", "swin_tiny", "vit_tiny"]);
}
