//! The error int8 activations add, layer by layer and end to end, on real models and inputs.
//! `cargo run --release --example int8_layers -- INT8_MODEL F32_MODEL INPUT...` (inputs: images or `.npy`
//! tensors): for each linear layer run in W8A8, the worst and mean relative L2 distance of its output from
//! the weight-only product of the same int8 weights on the same input; then per input, the cosine of the
//! W8A8 logits with the f32 model's (and with the weight-only int8 path's), and whether top-1 agrees, with
//! the f32 margin between its first two classes.
use std::collections::BTreeMap;

use wstream::models::layers::{record_int8_errors, take_int8_errors};
use wstream::pipeline::{self, Options, Output, Pipeline};

fn logits(model: &str, items: &[pipeline::Item], int8_activations: bool) -> Vec<Vec<f32>> {
    let p = Pipeline::load(
        &[model],
        Options {
            output: Output::Logit,
            logits: true,
            int8_activations,
            ..Options::default()
        },
    )
    .unwrap();
    items
        .iter()
        .map(|it| {
            let (answers, _) = p.run_batch(std::slice::from_ref(it)).unwrap();
            let a = answers.into_iter().next().unwrap().unwrap();
            a.models[0].logits.clone().unwrap()
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

fn top2(v: &[f32]) -> (usize, f32) {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&i, &j| v[j].total_cmp(&v[i]));
    (idx[0], v[idx[0]] - v[idx[1]])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (int8_model, f32_model, inputs) = (&args[0], &args[1], &args[2..]);
    let items = pipeline::read_inputs(inputs).unwrap();
    record_int8_errors(true);
    let w8a8 = logits(int8_model, &items, true);
    let errors = take_int8_errors();
    record_int8_errors(false);
    let mut by_layer: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
    let mut order = Vec::new();
    for (name, e) in errors {
        let s = by_layer.entry(name.clone()).or_insert_with(|| {
            order.push(name);
            (0.0, 0.0, 0)
        });
        s.0 = s.0.max(e);
        s.1 += e;
        s.2 += 1;
    }
    println!("layer\tmax_rel_l2\tmean_rel_l2");
    for name in &order {
        let (max, sum, n) = by_layer[name];
        println!("{name}\t{max:.5}\t{:.5}", sum / n as f64);
    }
    let wide = logits(int8_model, &items, false);
    let f32s = logits(f32_model, &items, true);
    println!("input\tcos_w8a8_f32\tcos_weightonly_f32\ttop1_agree\tf32_margin");
    for (i, it) in items.iter().enumerate() {
        let (t, m) = top2(&f32s[i]);
        println!(
            "{}\t{:.6}\t{:.6}\t{}\t{m:.3}",
            it.name,
            cosine(&w8a8[i], &f32s[i]),
            cosine(&wide[i], &f32s[i]),
            top2(&w8a8[i]).0 == t
        );
    }
}
