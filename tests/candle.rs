//! `wstream::candle`: candle tensors in, candle tensors out, checked against timm's reference outputs; and
//! candle-transformers' own ConvNeXt (an implementation written by others) against wstream's logits.
#![cfg(feature = "candle")]

mod common;

use candle_core::{DType, Device, Module, Tensor};
use common::parity::fixture;
use wstream::models::{Act, Model};
use wstream::pipeline::{Item, Options, Output, Pipeline, Source};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn npy(path: &str) -> (Vec<f32>, Vec<usize>) {
    wstream::npy::read_f32(&fixture("convnext_tiny").join(path)).unwrap()
}

fn pipeline(output: Output) -> Pipeline {
    let options = Options {
        output,
        logits: true,
        ..Options::default()
    };
    Pipeline::load(&[fixture("convnext_tiny")], options).unwrap()
}

/// The fixture's cat twice, the second with its pixels scaled, as one `[2, 3, 64, 64]` batch.
fn batch() -> (Vec<f32>, Tensor) {
    let (cat, shape) = npy("reference/cat.input.npy");
    assert_eq!(shape, [1, 3, 64, 64]);
    let mut data = cat.clone();
    data.extend(cat.iter().map(|v| v * 0.5));
    let x = Tensor::from_vec(data.clone(), (2, 3, 64, 64), &Device::Cpu).unwrap();
    (data, x)
}

#[test]
fn logits_and_features_match_timm_and_the_pipeline() {
    let (data, x) = batch();
    let p = pipeline(Output::Logit);
    let out = wstream::candle::forward(&p, &x).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dims(), [2, 1000]);
    assert_eq!(out[0].dtype(), DType::F32);
    let rows = out[0].to_vec2::<f32>().unwrap();
    let (timm, _) = npy("reference/cat.logits.npy");
    let d = max_abs_diff(&rows[0], &timm);
    assert!(d <= 1e-4, "logits vs timm: max |diff| {d}");
    // The same inputs through Pipeline::run give the same numbers, bit for bit.
    let items: Vec<Item> = data
        .chunks(3 * 64 * 64)
        .enumerate()
        .map(|(i, chw)| Item {
            name: format!("x{i}"),
            source: Source::Tensor {
                chw: chw.to_vec(),
                shape: [3, 64, 64],
            },
        })
        .collect();
    let mut answers = Vec::new();
    p.run(&items, |a| {
        answers.push(a);
        Ok::<_, wstream::Error>(())
    })
    .unwrap();
    for (row, a) in rows.iter().zip(&answers) {
        assert_eq!(Some(row), a.models[0].logits.as_ref());
    }
    assert_ne!(rows[0], rows[1]);

    let f = pipeline(Output::Features);
    let feats = wstream::candle::forward(&f, &x).unwrap();
    assert_eq!(feats[0].dims(), [2, 32]);
    let (timm, _) = npy("reference/cat.features.npy");
    let d = max_abs_diff(&feats[0].to_vec2::<f32>().unwrap()[0], &timm);
    assert!(d <= 1e-4, "features vs timm: max |diff| {d}");
}

#[test]
fn a_strided_view_gives_the_same_logits() {
    let (_, x) = batch();
    let p = pipeline(Output::Logit);
    let want = wstream::candle::forward(&p, &x).unwrap()[0]
        .to_vec2::<f32>()
        .unwrap();
    // [2, 3, 64, 64] stored as [2, 3, 64(w), 64(h)], transposed back: a non-contiguous view.
    let view = x
        .transpose(2, 3)
        .unwrap()
        .contiguous()
        .unwrap()
        .transpose(2, 3)
        .unwrap();
    assert!(!view.is_contiguous());
    let got = wstream::candle::forward(&p, &view).unwrap()[0]
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(want, got);
    // A batch narrowed out of a larger one starts at an offset in its storage.
    let got = wstream::candle::forward(&p, &x.narrow(0, 1, 1).unwrap()).unwrap()[0]
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(want[1], got[0]);
}

#[test]
fn wrong_dtype_rank_or_size_is_refused_by_name() {
    let (_, x) = batch();
    let p = pipeline(Output::Logit);
    let err = |t: &Tensor| wstream::candle::forward(&p, t).unwrap_err().to_string();
    let e = err(&x.to_dtype(DType::BF16).unwrap());
    assert!(
        e.contains("dtype BF16") && e.contains("to_dtype(DType::F32)"),
        "{e}"
    );
    let e = err(&x.get(0).unwrap());
    assert!(
        e.contains("has 3 dimensions") && e.contains("unsqueeze(0)"),
        "{e}"
    );
    let small = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let e = err(&small);
    assert!(
        e.contains("[1, 3, 32, 32]") && e.contains("[N >= 1, 3, 64, 64]"),
        "{e}"
    );
    let rgba = Tensor::zeros((1, 4, 64, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(err(&rgba).contains("[N >= 1, 3, 64, 64]"));
    let empty = Tensor::zeros((0, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(err(&empty).contains("[N >= 1, 3, 64, 64]"));
}

/// candle-transformers' ConvNeXt against wstream's on the same weights. Its `convnext::Config` offers only
/// presets, so the fixture's shrunken depths and widths (1-1-2-1, 8..32) cannot be built in candle; the
/// weights are timm's convnext_tiny layout (candle's `Config::tiny()`) written by `wstream synth` (seed 0),
/// with every layer scale set to 0.1..1 (synth writes timm's 1e-6, which would leave the blocks' MLPs
/// unchecked), run on the fixture's 64x64 cat.
#[test]
fn candle_transformers_convnext_agrees_with_wstream() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("convnext_tiny");
    wstream::synth::write("convnext_tiny", &model_dir, 0, |_| {}).unwrap();
    let file = model_dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = {
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names = st.names();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let t = st.tensor(name).unwrap();
                let values = bytemuck::pod_collect_to_vec::<u8, f32>(t.data());
                (name.to_string(), t.shape().to_vec(), values)
            })
            .collect()
    };
    let mut scaled = 0;
    for (name, _, values) in &mut tensors {
        if name.ends_with(".gamma") {
            for (i, v) in values.iter_mut().enumerate() {
                *v = 0.1 + 0.9 * ((i * 37 + scaled) % 101) as f32 / 100.0;
            }
            scaled += 1;
        }
    }
    assert_eq!(scaled, 18, "convnext_tiny has 3+3+9+3 blocks");
    std::fs::remove_file(&file).unwrap();
    common::write_f32(
        &file,
        &tensors
            .iter()
            .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
            .collect::<Vec<_>>(),
    );
    drop(tensors);

    let (cat, shape) = npy("reference/cat.input.npy");
    let model = Model::load(&model_dir).unwrap();
    let ours = model.forward(Act::new(cat.clone(), shape.clone())).unwrap();
    assert_eq!(ours.shape, [1, 1000]);

    let vb = candle_nn::VarBuilder::from_buffered_safetensors(
        std::fs::read(&file).unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let net = candle_transformers::models::convnext::convnext(
        &candle_transformers::models::convnext::Config::tiny(),
        1000,
        vb,
    )
    .unwrap();
    let x = Tensor::from_vec(cat, (1, 3, 64, 64), &Device::Cpu).unwrap();
    let theirs = net.forward(&x).unwrap().to_vec2::<f32>().unwrap();

    let scale = ours.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(&ours.data, &theirs[0]);
    assert!(
        scale > 0.1,
        "logits this small ({scale}) would check nothing"
    );
    // Both compute in f32 with their own summation orders (candle's im2col convs, wstream's kernels).
    assert!(
        d <= 1e-4 * scale.max(1.0),
        "candle-transformers vs wstream: max |diff| {d} for logits up to {scale}"
    );
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
    };
    assert_eq!(argmax(&ours.data), argmax(&theirs[0]));
}
