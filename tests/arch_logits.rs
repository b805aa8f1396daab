//! The three fixtures' logits on this architecture against those the x86-64 build computed
//! (tests/fixtures/x86_logits.jsonl, `wstream classify --json --logits` on AVX-512; regeneration in
//! tests/fixtures/README.md): the NEON kernels, the portable ones and every x86 level must agree within
//! 1e-5. The element-wise kernels compute the same bits everywhere; the `gemm` crate's products sum in an
//! order that depends on its micro-kernels, which is all that may differ.

use std::path::Path;

use wstream::models::{Act, Model};
use wstream::npy;

const TOL: f32 = 1e-5;

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
        let want: Vec<f32> = answer["models"][0]["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let model = Model::load(dir).unwrap();
        let (x, shape) = npy::read_f32(&input).unwrap();
        let got = model.forward(Act::new(x, shape)).unwrap().data;
        assert_eq!(got.len(), want.len(), "{}: logits", dir.display());
        let (at, diff) = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .enumerate()
            .fold((0, 0.0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        eprintln!(
            "{name} on {}: max abs diff from x86 {diff:e} (logit {at})",
            std::env::consts::ARCH
        );
        assert!(
            diff <= TOL,
            "{name}: logit {at} is {} here, {} on x86: diff {diff} > {TOL}",
            got[at],
            want[at]
        );
        fixtures.push(name);
    }
    fixtures.sort();
    assert_eq!(fixtures, ["convnext_tiny", "swin_tiny", "vit_tiny"]);
}
