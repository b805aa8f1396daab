//! The streaming executor: same numerics as the plain runner, budgets enforced, one record per block.

mod common;

use common::parity::fixture;
use wstream::exec::{Evict, ExecOptions, Executor};
use wstream::models::{Act, Model};
use wstream::npy;

fn input(model: &str) -> Act {
    let (data, shape) = npy::read_f32(&fixture(model).join("reference/cat.input.npy")).unwrap();
    Act::new(data, shape)
}

fn batch_of(a: &Act, n: usize) -> Act {
    let mut shape = a.shape.clone();
    shape[0] = n;
    Act::new(
        a.data
            .iter()
            .copied()
            .cycle()
            .take(a.data.len() * n)
            .collect(),
        shape,
    )
}

#[test]
fn streaming_equals_plain_runner_bit_for_bit() {
    let names = ["vit_tiny", "convnext_tiny", "swin_tiny"];
    let models: Vec<Model> = names
        .iter()
        .map(|n| Model::load(fixture(n)).unwrap())
        .collect();
    let plain: Vec<Act> = models
        .iter()
        .zip(names)
        .map(|(m, n)| m.forward(input(n)).unwrap())
        .collect();
    for evict in [Evict::Rss, Evict::Cache] {
        for lookahead in [0, 1, 3] {
            let opts = ExecOptions {
                budget: None,
                lookahead,
                evict,
                ..Default::default()
            };
            let exec = Executor::new(&models, opts).unwrap();
            let (out, records) = exec.run(names.iter().map(|n| input(n)).collect()).unwrap();
            assert_eq!(out, plain, "evict {evict:?}, lookahead {lookahead}");
            let expected: Vec<(String, String)> = models
                .iter()
                .flat_map(|m| {
                    m.blocks
                        .iter()
                        .map(|b| (m.name.clone(), b.name().to_string()))
                })
                .collect();
            let got: Vec<(String, String)> = records
                .iter()
                .map(|r| (r.model.clone(), r.block.clone()))
                .collect();
            assert_eq!(got, expected, "one record per block, in order");
            assert!(records.windows(2).all(|w| w[0].end <= w[1].end));
            assert!(records
                .iter()
                .all(|r| r.weight_bytes > 0 && r.weight_bytes % 4096 == 0));
        }
    }
}

#[test]
fn readings_only_when_asked() {
    let models = [Model::load(fixture("vit_tiny")).unwrap()];
    let run = |readings| {
        let opts = ExecOptions {
            readings,
            ..Default::default()
        };
        Executor::new(&models, opts)
            .unwrap()
            .run(vec![input("vit_tiny")])
            .unwrap()
    };
    // The first run reads the fixture, so the page cache holds all of it for the second.
    let _ = run(true);
    let (with, records) = run(true);
    // The readings count the tensors' own bytes, the weight bytes whole pages.
    assert!(
        records
            .iter()
            .all(|r| r.resident_before > r.weight_bytes / 2 && r.resident_before <= r.weight_bytes),
        "a cached file reads as resident: {:?}",
        records
            .iter()
            .map(|r| (r.resident_before, r.weight_bytes))
            .collect::<Vec<_>>()
    );
    assert!(records.iter().all(|r| r.mem_after.vm_rss > 0));
    let (without, records) = run(false);
    assert_eq!(without, with, "the readings change no answer");
    assert!(records
        .iter()
        .all(|r| r.resident_before == 0 && r.storage_read.is_none() && r.mem_after.vm_rss == 0));
}

#[test]
fn batch_runs_layer_major_with_the_same_answers() {
    let model = Model::load(fixture("vit_tiny")).unwrap();
    let one = model.forward(input("vit_tiny")).unwrap();
    let models = [model];
    let exec = Executor::new(&models, ExecOptions::default()).unwrap();
    let (out, records) = exec.run(vec![batch_of(&input("vit_tiny"), 3)]).unwrap();
    assert_eq!(
        records.len(),
        models[0].blocks.len(),
        "each block runs once for the whole batch"
    );
    assert_eq!(out[0].shape, [3, 1000]);
    for row in out[0].data.chunks(1000) {
        let d = row
            .iter()
            .zip(&one.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-5, "batched logits differ by {d}");
    }
}

#[test]
fn budget_below_the_largest_block_is_refused_before_any_work() {
    let models = [Model::load(fixture("vit_tiny")).unwrap()];
    let min = Executor::new(&models, ExecOptions::default())
        .unwrap()
        .min_budget();
    let err = Executor::new(
        &models,
        ExecOptions {
            budget: Some(min - 1),
            ..Default::default()
        },
    )
    .err()
    .expect("budget too small")
    .to_string();
    assert!(
        err.contains(&format!("the minimum budget is {min} bytes")),
        "{err}"
    );
    assert!(err.contains("block `"), "names the block: {err}");
    let exec = Executor::new(
        &models,
        ExecOptions {
            budget: Some(min),
            lookahead: 8,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        exec.run(vec![input("vit_tiny")]).is_ok(),
        "the minimum budget works"
    );
}
