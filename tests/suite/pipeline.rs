//! The library's classify pipeline gives exactly what `wstream classify --json --logits` prints: the same
//! logits bit for bit, the same ranking, the same JSON, from paths and from inputs held in memory.

use crate::common;

use std::path::PathBuf;

use common::parity::fixture;
use common::wstream;
use wstream::classify::Ensemble;
use wstream::pipeline::{read_inputs, Answer, Item, Options, Pipeline, Source};
use wstream::{npy, preprocess, Error};

const FIXTURES: [&str; 3] = ["vit_tiny", "convnext_tiny", "swin_tiny"];

fn image(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// `wstream classify --json --logits` with `flags`, one parsed answer and its JSON line per input.
fn cli(models: &[PathBuf], flags: &[&str], inputs: &[PathBuf]) -> Vec<(Answer, String)> {
    let mut args = vec!["classify", "--json", "--logits"];
    args.extend_from_slice(flags);
    let models: Vec<String> = models.iter().map(|m| m.display().to_string()).collect();
    for m in &models {
        args.extend(["--model", m.as_str()]);
    }
    let inputs: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    args.extend(inputs.iter().map(String::as_str));
    let (code, stdout, stderr) = wstream(&args);
    assert_eq!(code, 0, "{args:?}: {stderr}");
    stdout
        .lines()
        .map(|l| (serde_json::from_str(l).unwrap(), l.to_string()))
        .collect()
}

/// `ours` equals the CLI's answer in every field but the timing, and serialises to the CLI's JSON line.
fn assert_same(mut ours: Answer, (cli, line): &(Answer, String)) {
    ours.elapsed_ms = cli.elapsed_ms;
    assert_eq!(&ours, cli);
    let timing = |s: &str| {
        let at = s.find("\"elapsed_ms\":").unwrap();
        let end = at + s[at..].find(',').unwrap();
        format!("{}{}", &s[..at], &s[end..])
    };
    assert_eq!(timing(&serde_json::to_string(&ours).unwrap()), timing(line));
    // Rounded to the microsecond: no float noise such as 573.1404650000001 in the printed line.
    let at = line.find("\"elapsed_ms\":").unwrap() + "\"elapsed_ms\":".len();
    let ms = &line[at..at + line[at..].find(',').unwrap()];
    let decimals = ms.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(decimals <= 3 && ms.parse::<f64>().unwrap() > 0.0, "{ms}");
}

#[test]
fn run_answers_what_classify_prints() {
    let models: Vec<PathBuf> = FIXTURES.iter().map(|f| fixture(f)).collect();
    let inputs: Vec<PathBuf> = ["cat.jpg", "coffee.png", "cat_grey.png", "cat_rgba.png"]
        .iter()
        .map(|n| image(n))
        .collect();
    let cases = [
        (
            &["--batch", "2", "--top", "3"][..],
            2,
            3,
            Ensemble::MeanProb,
        ),
        (&["--ensemble", "mean-logit"][..], 1, 5, Ensemble::MeanLogit),
    ];
    for (flags, batch, top, ensemble) in cases {
        let expected = cli(&models, flags, &inputs);
        let options = Options {
            batch,
            top,
            ensemble,
            logits: true,
            ..Options::default()
        };
        let pipeline = Pipeline::load(&models, options).unwrap();
        let mut answers = Vec::new();
        let records = pipeline
            .run(&read_inputs(&inputs).unwrap(), |a| {
                answers.push(a);
                Ok::<_, Error>(())
            })
            .unwrap();
        assert_eq!(answers.len(), 4, "{flags:?}");
        for (ours, theirs) in answers.into_iter().zip(&expected) {
            assert_eq!(ours.models.len(), 3);
            assert!(ours.models.iter().all(|m| m.top.len() == top));
            assert_same(ours, theirs);
        }
        let blocks: usize = pipeline.models().iter().map(|m| m.blocks.len()).sum();
        assert_eq!(
            records.len(),
            blocks * 4 / batch,
            "one record per block per batch"
        );
    }
}

#[test]
fn a_batch_from_memory_answers_each_input() {
    let vit = fixture("vit_tiny");
    let npy_path = vit.join("reference/cat.input.npy");
    let expected = cli(
        std::slice::from_ref(&vit),
        &["--batch", "2"],
        &[image("cat.jpg"), npy_path.clone()],
    );
    let pipeline = Pipeline::load(
        &[&vit],
        Options {
            logits: true,
            ..Options::default()
        },
    )
    .unwrap();
    let (chw, shape) = npy::read_f32(&npy_path).unwrap();
    assert_eq!(shape, [1, 3, 32, 32]);
    let (wrong, _) =
        npy::read_f32(&fixture("convnext_tiny").join("reference/cat.input.npy")).unwrap();
    let items = [
        Item {
            name: image("cat.jpg").display().to_string(),
            source: Source::Decoded(preprocess::load_rgb(&image("cat.jpg")).unwrap()),
        },
        Item {
            name: "too big".into(),
            source: Source::Tensor {
                chw: wrong,
                shape: [3, 64, 64],
            },
        },
        Item {
            name: npy_path.display().to_string(),
            source: Source::Tensor {
                chw,
                shape: [3, 32, 32],
            },
        },
        Item {
            name: "missing".into(),
            source: Source::Image(image("missing.jpg")),
        },
    ];
    let (answers, records) = pipeline.run_batch(&items).unwrap();
    assert_eq!(
        records.len(),
        pipeline.models()[0].blocks.len(),
        "one batch"
    );
    let [cat, big, tensor, missing] = <[_; 4]>::try_from(answers).unwrap();
    assert_same(cat.unwrap(), &expected[0]);
    assert_same(tensor.unwrap(), &expected[1]);
    assert_eq!(
        big.unwrap_err().to_string(),
        "too big: input is [3, 64, 64] but vit_tiny_patch16_224 expects [3, 32, 32]"
    );
    assert!(missing.unwrap_err().to_string().contains("missing.jpg"));
}

#[test]
fn readings_are_taken_per_run_as_asked() {
    let vit = fixture("vit_tiny");
    let pipeline = Pipeline::load(&[&vit], Options::default()).unwrap();
    let items = [Item {
        name: "cat".into(),
        source: Source::Image(image("cat.jpg")),
    }];
    let (with, records) = pipeline
        .run_batch_readings(&items, &|| false, true)
        .unwrap();
    assert!(records.iter().all(|r| r.mem_after.vm_rss > 0));
    let (without, records) = pipeline
        .run_batch_readings(&items, &|| false, false)
        .unwrap();
    assert!(records
        .iter()
        .all(|r| r.mem_after.vm_rss == 0 && r.storage_read.is_none() && r.resident_before == 0));
    let models = |a: Vec<Result<Answer, Error>>| {
        a.into_iter()
            .map(|a| format!("{:?}", a.unwrap().models))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        models(with),
        models(without),
        "the readings change no answer"
    );
}

#[test]
fn a_server_can_share_a_pipeline() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Pipeline>();
    shareable::<Item>();
}

#[test]
fn no_model_or_an_empty_batch_is_refused() {
    let none = Pipeline::new(Vec::new(), Options::default()).err().unwrap();
    assert_eq!(none.to_string(), "a pipeline needs at least one model");
    let empty = Pipeline::load(
        &[fixture("vit_tiny")],
        Options {
            batch: 0,
            ..Options::default()
        },
    )
    .err()
    .unwrap();
    assert_eq!(empty.to_string(), "a batch holds at least one input, not 0");
}
