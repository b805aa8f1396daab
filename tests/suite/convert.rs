//! `wstream convert`: f16/bf16/int8 values, the exec layout (alignment, padding, order, identical logits),
//! what is recorded, and the refusals.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::parity::fixture;
use common::{listing, write_f32, wstream};
use safetensors::{Dtype as StDtype, SafeTensors};
use wstream::convert::{self, Dtype, Layout, Options, Summary};
use wstream::models::{Act, Model, PAD_PREFIX};
use wstream::{npy, Store};

const FIXTURES: [&str; 3] = ["vit_tiny", "convnext_tiny", "swin_tiny"];
const DTYPES: [Dtype; 4] = [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::Int8];

fn run(input: &Path, output: &Path, dtype: Dtype, layout: Layout) -> Summary {
    let mut last = (0, 1);
    let s = convert::convert(input, output, &Options { dtype, layout }, |d, t| {
        assert!(d >= last.0 && d <= t, "progress {d}/{t} after {last:?}");
        last = (d, t);
    })
    .unwrap_or_else(|e| panic!("convert {} -> {}: {e}", input.display(), output.display()));
    assert_eq!(last.0, last.1, "progress reaches the total");
    s
}

fn f32s(store: &Store, name: &str) -> Vec<f32> {
    store.view::<f32>(name).unwrap().into_owned()
}

fn metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

fn is_matrix(t: &wstream::store::TensorInfo) -> bool {
    t.name.ends_with(".weight") && t.shape.len() >= 2
}

/// Names in file order, without padding.
fn names(store: &Store) -> Vec<String> {
    store
        .tensors()
        .iter()
        .filter(|t| !t.name.starts_with(PAD_PREFIX))
        .map(|t| t.name.clone())
        .collect()
}

#[test]
fn f16_and_bf16_round_to_nearest_even() {
    let dir = tempfile::tempdir().unwrap();
    for fx in FIXTURES {
        let src = Store::open(fixture(fx)).unwrap();
        for dtype in [Dtype::F16, Dtype::Bf16] {
            let out = dir
                .path()
                .join(format!("{fx}-{}.safetensors", dtype.name()));
            let s = run(&fixture(fx), &out, dtype, Layout::Source);
            assert_eq!((s.quantized, s.pads), (0, 0));
            assert_eq!(s.weights, out);
            let conv = Store::open(&out).unwrap();
            assert_eq!(names(&conv), names(&src), "{fx}: source order kept");
            for t in src.tensors() {
                let c = conv.info(&t.name).unwrap();
                assert_eq!(c.shape, t.shape, "{}", t.name);
                let v = f32s(&src, &t.name);
                match dtype {
                    Dtype::F16 => {
                        assert_eq!(c.dtype, StDtype::F16);
                        let got = conv.view::<half::f16>(&t.name).unwrap();
                        let want: Vec<half::f16> =
                            v.iter().map(|&x| half::f16::from_f32(x)).collect();
                        assert_eq!(
                            bytemuck::cast_slice::<_, u16>(&got),
                            bytemuck::cast_slice::<_, u16>(&want),
                            "{fx} {}",
                            t.name
                        );
                    }
                    _ => {
                        assert_eq!(c.dtype, StDtype::BF16);
                        let got = conv.view::<half::bf16>(&t.name).unwrap();
                        let want: Vec<half::bf16> =
                            v.iter().map(|&x| half::bf16::from_f32(x)).collect();
                        assert_eq!(
                            bytemuck::cast_slice::<_, u16>(&got),
                            bytemuck::cast_slice::<_, u16>(&want),
                            "{fx} {}",
                            t.name
                        );
                    }
                }
            }
            let meta = metadata(&out);
            assert_eq!(meta["wstream.dtype"], dtype.name());
            assert_eq!(meta["wstream.layout"], "source");
            assert_eq!(meta["wstream.source"], fx);
            assert!(!meta.contains_key("wstream.int8"));
            // A file output is just the file.
            assert!(!dir.path().join("config.json").exists());
        }
    }
}

#[test]
fn int8_is_symmetric_per_output_channel() {
    let dir = tempfile::tempdir().unwrap();
    for fx in FIXTURES {
        let src = Store::open(fixture(fx)).unwrap();
        let out = dir.path().join(fx);
        let s = run(&fixture(fx), &out, Dtype::Int8, Layout::Source);
        let conv = Store::open(&out).unwrap();
        let matrices = src.tensors().iter().filter(|t| is_matrix(t)).count();
        assert!(matrices > 5, "{fx}: {matrices} matrices");
        assert_eq!(s.quantized, matrices);
        assert_eq!(s.tensors, src.tensors().len());
        // Each matrix gains its scales and its column sums.
        assert_eq!(conv.tensors().len(), src.tensors().len() + 2 * matrices);
        for t in src.tensors() {
            let w = f32s(&src, &t.name);
            let c = conv.info(&t.name).unwrap();
            assert_eq!(c.shape, t.shape, "{}", t.name);
            if !is_matrix(t) {
                assert_eq!(c.dtype, StDtype::F32, "{fx} {} stays f32", t.name);
                assert_eq!(
                    bytemuck::cast_slice::<_, u32>(&f32s(&conv, &t.name)),
                    bytemuck::cast_slice::<_, u32>(&w),
                    "{fx} {} untouched",
                    t.name
                );
                continue;
            }
            assert_eq!(c.dtype, StDtype::I8, "{fx} {}", t.name);
            let scale_name = format!("{}_scale", t.name);
            let sc = conv.info(&scale_name).unwrap();
            assert_eq!(
                (sc.dtype, sc.shape.clone()),
                (StDtype::F32, vec![t.shape[0]])
            );
            assert_eq!(
                sc.range.start, c.range.end,
                "{scale_name} right after its weight"
            );
            let q = conv.view::<i8>(&t.name).unwrap();
            let scales = f32s(&conv, &scale_name);
            let colsum_name = format!("{}_colsum", t.name);
            let cs = conv.info(&colsum_name).unwrap();
            assert_eq!(
                (cs.dtype, cs.shape.clone()),
                (StDtype::I32, vec![t.shape[0]])
            );
            assert_eq!(
                cs.range.start, sc.range.end,
                "{colsum_name} right after the scales"
            );
            let colsums = conv.view::<i32>(&colsum_name).unwrap();
            let row = t.numel() / t.shape[0];
            for (o, &scale) in scales.iter().enumerate() {
                let qs = &q[o * row..(o + 1) * row];
                assert_eq!(colsums[o], qs.iter().map(|&v| v as i32).sum::<i32>());
                let ws = &w[o * row..(o + 1) * row];
                let max = ws.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert_eq!(scale, max / 127.0, "{fx} {} row {o}", t.name);
                for (i, (&qv, &wv)) in q[o * row..(o + 1) * row].iter().zip(ws).enumerate() {
                    assert!((-127..=127).contains(&qv));
                    let err = (qv as f32 * scale - wv).abs();
                    assert!(
                        err <= scale / 2.0 * (1.0 + 1e-5) + f32::MIN_POSITIVE,
                        "{fx} {} [{o}, {i}]: {qv} * {scale} vs {wv}",
                        t.name
                    );
                }
            }
        }
        let meta = metadata(&out.join("model.safetensors"));
        assert_eq!(meta["wstream.dtype"], "int8");
        assert!(meta["wstream.int8"].contains("per-output-channel"));
    }
}

#[test]
fn int8_all_zero_rows_get_scale_zero() {
    let dir = tempfile::tempdir().unwrap();
    let input = copy_of(dir.path(), "vit_tiny", |name, v| {
        if name == "blocks.0.mlp.fc1.weight" {
            let row = v.len() / 128;
            v[..row].fill(0.0);
        }
    });
    let out = dir.path().join("q.safetensors");
    run(&input, &out, Dtype::Int8, Layout::Exec);
    let conv = Store::open(&out).unwrap();
    let scales = f32s(&conv, "blocks.0.mlp.fc1.weight_scale");
    assert_eq!(scales[0], 0.0);
    assert!(scales[1] > 0.0);
    let q = conv.view::<i8>("blocks.0.mlp.fc1.weight").unwrap();
    assert!(q[..32].iter().all(|&v| v == 0));
}

/// The tensor order the executor reads `model` in, with int8 scales after their weights.
fn exec_order(model: &Model, int8: bool) -> Vec<Vec<String>> {
    let mut seen = std::collections::HashSet::new();
    (0..model.blocks.len())
        .map(|i| {
            let mut g = Vec::new();
            for n in model.block_tensors(i) {
                if seen.insert(n.clone()) {
                    g.push(n.clone());
                    let t = model.store.info(&n).unwrap();
                    if int8 && is_matrix(t) {
                        g.push(format!("{n}_scale"));
                        g.push(format!("{n}_colsum"));
                    }
                }
            }
            g
        })
        .collect()
}

#[test]
fn exec_layout_aligns_blocks_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    for fx in FIXTURES {
        let src = Model::load(fixture(fx)).unwrap();
        for dtype in DTYPES {
            let out = dir.path().join(format!("{fx}-{}", dtype.name()));
            let s = run(&fixture(fx), &out, dtype, Layout::Exec);
            let file = out.join("model.safetensors");
            let bytes = std::fs::read(&file).unwrap();
            let st = SafeTensors::deserialize(&bytes).expect("the safetensors crate reads it");
            assert_eq!(st.len(), s.tensors + 2 * s.quantized + s.pads);
            let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            assert_eq!((8 + header_len) % 4096, 0, "data section page-aligned");

            let conv = Store::open(&file).unwrap();
            // No holes: every byte after the header belongs to one tensor (Store::open checks too).
            let mut end = 8 + header_len;
            let mut pads = 0;
            for t in conv.tensors() {
                assert_eq!(t.range.start, end, "{fx} {}: no hole before it", t.name);
                end = t.range.end;
                if let Some(n) = t.name.strip_prefix(PAD_PREFIX) {
                    assert_eq!(n, pads.to_string(), "pads numbered in file order");
                    pads += 1;
                    assert_eq!(t.dtype, StDtype::U8);
                    assert!(t.shape[0] > 0 && t.shape[0] < 4096);
                    assert!(conv.bytes(t).iter().all(|&b| b == 0), "{} is zeros", t.name);
                } else {
                    assert_eq!(t.range.start % 64, 0, "{fx} {}: 64-byte aligned", t.name);
                }
            }
            assert_eq!(end, bytes.len());
            assert_eq!(pads, s.pads);

            let order = exec_order(&src, dtype == Dtype::Int8);
            let flat: Vec<String> = order.iter().flatten().cloned().collect();
            assert_eq!(names(&conv), flat, "{fx} {}: execution order", dtype.name());
            for g in &order {
                let first = conv.info(&g[0]).unwrap();
                assert_eq!(first.range.start % 4096, 0, "{fx} block starting {}", g[0]);
            }
            let meta = metadata(&file);
            assert_eq!(meta["wstream.layout"], "exec");

            if dtype == Dtype::F32 {
                let m = Model::load(&out).unwrap();
                assert_eq!(m.blocks.len(), src.blocks.len());
                let mut prev_end = 0;
                for i in 0..m.blocks.len() {
                    let ranges = m.block_ranges(i).unwrap();
                    assert_eq!(ranges[0].range.start % 4096, 0, "{fx} block {i}");
                    assert!(ranges[0].range.start >= prev_end, "{fx} block {i} in order");
                    prev_end = ranges.last().unwrap().range.end;
                }
                for t in src.store.tensors() {
                    assert_eq!(
                        bytemuck::cast_slice::<_, u32>(&f32s(&m.store, &t.name)),
                        bytemuck::cast_slice::<_, u32>(&f32s(&src.store, &t.name)),
                    );
                }
                let (x, shape) =
                    npy::read_f32(&fixture(fx).join("reference/cat.input.npy")).unwrap();
                let a = src.forward(Act::new(x.clone(), shape.clone())).unwrap();
                let b = m.forward(Act::new(x, shape)).unwrap();
                assert_eq!(
                    bytemuck::cast_slice::<_, u32>(&a.data),
                    bytemuck::cast_slice::<_, u32>(&b.data),
                    "{fx}: bitwise identical logits"
                );
            }
        }
    }
}

/// A copy of fixture `fx` (weights + config.json) with `edit(name, values)` applied to each tensor.
fn copy_of(dir: &Path, fx: &str, edit: impl Fn(&str, &mut Vec<f32>)) -> PathBuf {
    let store = Store::open(fixture(fx)).unwrap();
    let tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = store
        .tensors()
        .iter()
        .map(|t| {
            let mut v = f32s(&store, &t.name);
            edit(&t.name, &mut v);
            (t.name.as_str(), t.shape.clone(), v)
        })
        .collect();
    let out = dir.join(format!("{fx}-edited"));
    std::fs::create_dir_all(&out).unwrap();
    write_f32(&out.join("model.safetensors"), &tensors);
    std::fs::copy(fixture(fx).join("config.json"), out.join("config.json")).unwrap();
    out
}

#[test]
fn records_metadata_and_config() {
    let dir = tempfile::tempdir().unwrap();
    // An input written by safetensors' own writer with timm's metadata, config.json beside it.
    let src = Store::open(fixture("convnext_tiny")).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = src
        .tensors()
        .iter()
        .map(|t| {
            let v = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), src.bytes(t));
            (t.name.clone(), v.unwrap())
        })
        .collect();
    let input_dir = dir.path().join("in");
    std::fs::create_dir(&input_dir).unwrap();
    let input = input_dir.join("convnext_tiny.safetensors");
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &input).unwrap();
    let config_text =
        std::fs::read_to_string(fixture("convnext_tiny").join("config.json")).unwrap();
    std::fs::write(input_dir.join("config.json"), &config_text).unwrap();
    let before = std::fs::read(&input).unwrap();

    let out = dir.path().join("out");
    let s = run(&input, &out, Dtype::Bf16, Layout::Exec);
    assert_eq!(s.config, Some(out.join("config.json")));
    assert_eq!(std::fs::read(&input).unwrap(), before, "input untouched");
    let meta = metadata(&out.join("model.safetensors"));
    assert_eq!(meta["format"], "pt");
    assert_eq!(meta["wstream.dtype"], "bf16");
    assert_eq!(meta["wstream.layout"], "exec");
    assert_eq!(meta["wstream.source"], "convnext_tiny.safetensors");

    let text = std::fs::read_to_string(out.join("config.json")).unwrap();
    let mut got: serde_json::Value = serde_json::from_str(&text).unwrap();
    let record = got
        .as_object_mut()
        .unwrap()
        .remove("wstream_convert")
        .unwrap();
    assert_eq!(
        record,
        serde_json::json!({"dtype": "bf16", "layout": "exec", "source": "convnext_tiny.safetensors"})
    );
    let orig: serde_json::Value = serde_json::from_str(&config_text).unwrap();
    assert_eq!(got, orig, "the rest of config.json as it was");
    assert!(
        text.starts_with(config_text.trim_end().trim_end_matches('}').trim_end()),
        "original text kept"
    );
    let mut entries: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["config.json", "model.safetensors"]);

    // Converting a converted model again keeps one record, the newest. (Only f32 inputs load today.)
    let exec32 = dir.path().join("exec32");
    run(&input, &exec32, Dtype::F32, Layout::Exec);
    let again = dir.path().join("again");
    run(&exec32, &again, Dtype::F32, Layout::Source);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(again.join("config.json")).unwrap()).unwrap();
    assert_eq!(v["wstream_convert"]["source"], "exec32");
    assert_eq!(v["wstream_convert"]["layout"], "source");
    assert_eq!(metadata(&again.join("model.safetensors"))["format"], "pt");
    // No padding left from the exec-layout input, and the values came through exactly.
    let back = Store::open(&again).unwrap();
    assert_eq!(back.tensors().len(), src.tensors().len());
    for t in src.tensors() {
        assert_eq!(
            bytemuck::cast_slice::<_, u32>(&f32s(&back, &t.name)),
            bytemuck::cast_slice::<_, u32>(&f32s(&src, &t.name)),
        );
    }
}

#[test]
fn sharded_input() {
    let dir = tempfile::tempdir().unwrap();
    let src = Store::open(fixture("vit_tiny")).unwrap();
    let input = dir.path().join("sharded");
    std::fs::create_dir(&input).unwrap();
    let all: Vec<(&str, Vec<usize>, Vec<f32>)> = src
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t.shape.clone(), f32s(&src, &t.name)))
        .collect();
    let (a, b) = all.split_at(all.len() / 2);
    write_f32(&input.join("model-00001-of-00002.safetensors"), a);
    write_f32(&input.join("model-00002-of-00002.safetensors"), b);
    let map: serde_json::Map<String, serde_json::Value> = a
        .iter()
        .map(|t| (t.0.to_string(), "model-00001-of-00002.safetensors".into()))
        .chain(
            b.iter()
                .map(|t| (t.0.to_string(), "model-00002-of-00002.safetensors".into())),
        )
        .collect();
    std::fs::write(
        input.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    std::fs::copy(
        fixture("vit_tiny").join("config.json"),
        input.join("config.json"),
    )
    .unwrap();
    let out = dir.path().join("one");
    run(&input, &out, Dtype::F32, Layout::Source);
    let conv = Store::open(&out).unwrap();
    assert_eq!(conv.files().len(), 1);
    assert_eq!(names(&conv), names(&src));
    for t in src.tensors() {
        assert_eq!(f32s(&conv, &t.name), f32s(&src, &t.name));
    }
}

/// Runs the CLI expecting one error line containing `expected`, nothing on stdout, and `dir` unchanged.
fn refused(dir: &Path, args: &[&str], expected: &str) {
    let before = listing(dir);
    let (code, stdout, stderr) = wstream(args);
    assert_ne!(code, 0, "{args:?} succeeded");
    assert!(stdout.is_empty(), "{args:?}: {stdout}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
    assert!(
        stderr.contains(expected),
        "{args:?}: `{stderr}` lacks `{expected}`"
    );
    assert_eq!(
        listing(dir),
        before,
        "{args:?}: nothing created or left behind"
    );
}

#[test]
fn cli_converts_and_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).display().to_string();
    let vit = copy_of(dir.path(), "vit_tiny", |_, _| {});
    let vit = vit.to_str().unwrap();

    let (code, stdout, stderr) = wstream(&[
        "convert",
        vit,
        &d("q"),
        "--dtype",
        "int8",
        "--layout",
        "exec",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("int8 exec layout"), "{stdout}");
    assert!(
        stderr.is_empty(),
        "no progress bar off a terminal: {stderr}"
    );
    assert_eq!(
        listing(&dir.path().join("q")),
        ["config.json", "model.safetensors"]
    );

    std::fs::write(d("taken.safetensors"), "x").unwrap();
    refused(dir.path(), &["convert", vit, &d("q")], "already exists");
    refused(
        dir.path(),
        &["convert", vit, &d("taken.safetensors")],
        "already exists",
    );
    refused(dir.path(), &["convert", vit, vit], "is an input");
    let weights = format!("{vit}/model.safetensors");
    refused(dir.path(), &["convert", &weights, &weights], "is an input");
    refused(
        dir.path(),
        &["convert", &d("missing"), &d("out")],
        "no such file or folder",
    );
    refused(
        dir.path(),
        &["convert", &d("taken.safetensors"), &d("out")],
        "taken.safetensors",
    );
    let other = write_f32(
        &dir.path().join("other.safetensors"),
        &[("x", vec![2], vec![1.0, 2.0])],
    );
    refused(
        dir.path(),
        &["convert", other.to_str().unwrap(), &d("out")],
        "no known family",
    );
    refused(
        dir.path(),
        &["convert", vit, &d("out"), "--dtype", "f64"],
        "f64",
    );
    refused(
        dir.path(),
        &["convert", vit, &d("out"), "--layout", "fast"],
        "fast",
    );
    refused(
        dir.path(),
        &["convert", vit, &d("nowhere/out")],
        "does not exist",
    );
}

#[test]
fn f16_overflow_and_non_finite_int8_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).display().to_string();
    let big = copy_of(dir.path(), "vit_tiny", |name, v| {
        if name == "blocks.1.mlp.fc2.weight" {
            v[5] = 1e6;
        }
        if name == "blocks.0.norm1.bias" {
            v[0] = f32::INFINITY; // stays infinite in f16: not an overflow
        }
    });
    let big = big.to_str().unwrap();
    refused(
        dir.path(),
        &["convert", big, &d("h"), "--dtype", "f16"],
        "blocks.1.mlp.fc2.weight`: value 1000000 (element 5) overflows F16",
    );
    // bf16 has f32's range.
    let (code, _, stderr) = wstream(&["convert", big, &d("b.safetensors"), "--dtype", "bf16"]);
    assert_eq!(code, 0, "{stderr}");
    let b = Store::open(d("b.safetensors")).unwrap();
    assert_eq!(
        b.view::<half::bf16>("blocks.1.mlp.fc2.weight").unwrap()[5].to_f32(),
        999424.0
    );
    assert!(b.view::<half::bf16>("blocks.0.norm1.bias").unwrap()[0].is_infinite());
    std::fs::remove_file(d("b.safetensors")).unwrap();

    let nan = copy_of(dir.path(), "convnext_tiny", |name, v| {
        if name == "stages.1.blocks.0.conv_dw.weight" {
            v[60] = f32::NAN;
        }
    });
    refused(
        dir.path(),
        &["convert", nan.to_str().unwrap(), &d("q"), "--dtype", "int8"],
        "stages.1.blocks.0.conv_dw.weight`: value NaN at output channel 1",
    );
}

#[test]
fn output_is_left_out_of_the_page_cache() {
    // Written through the page cache, a file stays cached in small folios; dropped once on disk, the first
    // run reads it back in 2 MiB ones. tempdir may be tmpfs, whose pages cannot leave memory. A fresh
    // mapping reads nothing; mincore through it reports the file's page-cache residency (this process
    // wrote the file, so the kernel tells it).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let s = run(
        &fixture("vit_tiny"),
        &dir.path().join("out"),
        Dtype::Int8,
        Layout::Source,
    );
    let file = std::fs::File::open(&s.weights).unwrap();
    // SAFETY: the file lives in this test's own temporary folder, which nothing else writes while it is
    // mapped; the mapping is only passed to mincore, never read.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let cached = wstream::residency::resident_bytes(&map, 0..map.len()).unwrap();
    assert_eq!(cached, 0, "bytes of {} still cached", s.weights.display());
}
