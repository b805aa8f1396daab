//! What each fuzz target does with one input. Shared by the libFuzzer targets (tools/fuzz/fuzz_targets, run
//! with cargo-fuzz on nightly) and by the stable replay test (tests/suite/fuzz_corpus.rs), so the committed corpus
//! and crash inputs go through exactly the code the fuzzer ran. An `Err` from wstream is a fine outcome; a
//! panic, abort or hang is a finding.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{json, Value};
use wstream::models::config::PretrainedCfg;
use wstream::models::{Act, Model, ModelConfig};
use wstream::preprocess::{self, Preprocess};
use wstream::{npy, Store};

/// What a target does with one input.
pub type Target = fn(&[u8]);

/// The targets by name: the folder names under tools/fuzz/corpus and tools/fuzz/crashes.
pub const TARGETS: [(&str, Target); 5] = [
    ("safetensors", safetensors),
    ("config", config),
    ("npy", npy),
    ("image", image),
    ("model", model),
];

/// A per-process, per-thread folder on tmpfs (the library reads paths, and the header parser is private
/// to `store`), so an exec costs a write to memory, not to disk.
pub fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let id = format!("{:?}", std::thread::current().id());
    let id: String = id.chars().filter(char::is_ascii_digit).collect();
    let dir = base.join(format!("wstream-fuzz-{}-{id}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the scratch folder");
    dir
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, bytes).expect("write the scratch file");
    path
}

/// Target 1: a safetensors file: header and tensor table, then every typed read the models make of a tensor.
pub fn safetensors(data: &[u8]) {
    let path = write("fuzz.safetensors", data);
    let Ok(store) = Store::open(&path) else {
        return;
    };
    let names: Vec<String> = store.tensors().iter().map(|t| t.name.clone()).collect();
    for name in &names {
        let info = store.info(name).expect("a listed tensor has info");
        assert_eq!(store.bytes(info).len(), info.nbytes());
        let _ = store.floats(name);
        let _ = store.weight(name);
        let _ = store.view::<f32>(name);
        let _ = store.view::<u8>(name);
        let _ = store.view_shaped::<f32>(name, &info.shape.clone());
    }
    let _ = store.ranges_of(names.iter().map(String::as_str));
    let _ = store.check_unchanged();
}

/// Target 2: `config.json`: the model config, then everything read from it before any weights are: the
/// preprocessing, the input size and the `model_args` the builders ask for.
pub fn config(data: &[u8]) {
    let path = write("config.json", data);
    let Ok(cfg) = ModelConfig::load_optional(&path) else {
        return;
    };
    let _ = cfg.input_size();
    for key in [
        "img_size",
        "patch_size",
        "embed_dim",
        "depth",
        "num_heads",
        "window_size",
    ] {
        let _ = cfg.arg_usize(key);
        let _ = cfg.arg_f64(key);
        let _ = cfg.arg_usizes(key, 4);
    }
    if let Some(arch) = &cfg.architecture {
        let _ = wstream::models::Family::from_architecture(arch);
    }
    if let Ok(pre) = Preprocess::from_config(&cfg, &path) {
        let _ = pre.to_string();
        for (h, w) in [(1, 1), (1, 20_000), (20_000, 1), (375, 500)] {
            let _ = pre.resized_size(h, w);
        }
        // Running it is target 4's job; here only when the sizes keep an exec fast.
        let [sh, sw] = pre.scale_size;
        if pre.size[0] * pre.size[1] <= 64 * 64 && sh * sw <= 256 * 256 {
            let img = ::image::RgbImage::from_pixel(7, 5, ::image::Rgb([10, 200, 30]));
            assert_eq!(pre.apply(&img).len(), 3 * pre.size[0] * pre.size[1]);
        }
    }
}

/// Target 3: a `.npy` array.
pub fn npy(data: &[u8]) {
    let path = write("fuzz.npy", data);
    if let Ok((values, shape)) = npy::read_f32(&path) {
        assert_eq!(values.len(), shape.iter().product::<usize>());
    }
}

/// Largest image the harness decodes: the library's own limit (`preprocess::MAX_PIXELS`, 100 M) is right
/// for users but would make an exec take seconds.
const FUZZ_MAX_PIXELS: u64 = 1 << 16;

/// Target 4: an image file, decoded and preprocessed. The first 4 bytes choose the preprocessing (input sides
/// 1..=16, crop_pct, crop mode, filter); the rest is the file.
pub fn image(data: &[u8]) {
    let Some((params, file)) = data.split_first_chunk::<4>() else {
        return;
    };
    let dims = ::image::ImageReader::new(std::io::Cursor::new(file))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok());
    if dims.is_some_and(|(w, h)| w as u64 * h as u64 > FUZZ_MAX_PIXELS) {
        return;
    }
    let path = write("fuzz.img", file);
    let Ok(img) = preprocess::load_rgb(&path) else {
        return;
    };
    let cfg = ModelConfig {
        pretrained_cfg: Some(PretrainedCfg {
            input_size: Some([
                3,
                1 + (params[0] % 16) as usize,
                1 + (params[1] % 16) as usize,
            ]),
            crop_pct: Some([0.875, 1.0, 0.5, 2.0, 0.95, 0.01, 3.0, 0.0][(params[2] % 8) as usize]),
            crop_mode: Some(["center", "squash", "border"][(params[3] % 3) as usize].into()),
            interpolation: Some(["bicubic", "bilinear"][(params[3] / 3 % 2) as usize].into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Some choices are refused (crop_pct 2 on a 1-pixel side resizes to 0): the config target's concern.
    let Ok(pre) = Preprocess::from_config(&cfg, &path) else {
        return;
    };
    let out = pre.apply(&img);
    assert_eq!(out.len(), 3 * pre.size[0] * pre.size[1]);
}

/// A tensor of a tiny checkpoint, as the mutations of target 5 edit it.
#[derive(Clone)]
struct Tensor {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

struct Checkpoint {
    config: Value,
    tensors: Vec<Tensor>,
}

fn fixtures() -> PathBuf {
    // The replay test is built in the repository root, the fuzz crate two folders down.
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        here.join("tests/fixtures"),
        here.join("../../tests/fixtures"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .expect("tests/fixtures")
}

fn bases() -> &'static [Checkpoint] {
    static BASES: OnceLock<Vec<Checkpoint>> = OnceLock::new();
    BASES.get_or_init(|| {
        ["vit_tiny", "convnext_tiny", "swin_tiny"]
            .iter()
            .map(|name| {
                let dir = fixtures().join(name);
                let config = std::fs::read(dir.join("config.json")).expect("fixture config");
                let store = Store::open(dir.join("model.safetensors")).expect("fixture weights");
                let tensors = store
                    .tensors()
                    .iter()
                    .map(|t| Tensor {
                        name: t.name.clone(),
                        dtype: format!("{:?}", t.dtype),
                        shape: t.shape.clone(),
                        data: store.bytes(t).to_vec(),
                    })
                    .collect();
                Checkpoint {
                    config: serde_json::from_slice(&config).expect("fixture config is JSON"),
                    tensors,
                }
            })
            .collect()
    })
}

/// Reads the fuzz input as a stream of small choices; past its end every choice is 0.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn below(&mut self, n: usize) -> usize {
        let v = u16::from_le_bytes([self.byte(), self.byte()]) as usize;
        v % n.max(1)
    }
}

const DTYPES: [(&str, usize); 8] = [
    ("F32", 4),
    ("F16", 2),
    ("BF16", 2),
    ("I8", 1),
    ("U8", 1),
    ("F64", 8),
    ("I64", 8),
    ("BOOL", 1),
];

/// Fills `n` bytes from `old`, repeated (zeros if it is empty), so an edited tensor keeps plausible values.
fn refill(old: &[u8], n: usize) -> Vec<u8> {
    if old.is_empty() {
        return vec![0; n];
    }
    old.iter().copied().cycle().take(n).collect()
}

fn resize(t: &mut Tensor) {
    let width = DTYPES.iter().find(|d| d.0 == t.dtype).map_or(1, |d| d.1);
    let n = t.shape.iter().product::<usize>() * width;
    t.data = refill(&t.data, n);
}

/// A JSON value that tends to break a config: zero, huge, negative, fractional, wrong type, long lists.
fn config_value(c: &mut Choices) -> Value {
    match c.byte() % 12 {
        0 => json!(0),
        1 => json!(c.byte() as u64),
        2 => json!(u64::MAX),
        3 => json!(-1),
        4 => json!(0.5),
        5 => json!("x"),
        6 => Value::Null,
        7 => json!([c.byte(), c.byte()]),
        8 => json!([c.byte() % 4, c.byte() % 4, c.byte() % 4, c.byte() % 4]),
        9 => json!(true),
        10 => json!(1u64 << 40),
        _ => json!([3, c.byte() % 64, c.byte() % 64]),
    }
}

const CONFIG_KEYS: [&str; 17] = [
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "depths",
    "dims",
    "num_heads",
    "window_size",
    "in_chans",
    "num_classes",
    "global_pool",
    "class_token",
    "no_embed_class",
    "reg_tokens",
    "mlp_ratio",
    "qkv_bias",
    "ls_init_value",
];

/// Applies one mutation chosen by the input to the checkpoint.
fn mutate(ck: &mut Checkpoint, c: &mut Choices) {
    let n = ck.tensors.len();
    let i = c.below(n);
    match c.byte() % 10 {
        0 if n > 0 => {
            ck.tensors.remove(i);
        }
        1 if n > 0 => {
            // Rename: another index, a dropped or changed character, a suffix.
            let t = &mut ck.tensors[i];
            let mut name: Vec<char> = t.name.chars().collect();
            let at = c.below(name.len());
            match c.byte() % 4 {
                0 if !name.is_empty() => name[at] = char::from(b'0' + c.byte() % 10),
                1 if !name.is_empty() => {
                    name.remove(at);
                }
                2 => name.extend(".x".chars()),
                _ => name.insert(at, '.'),
            }
            t.name = name.into_iter().collect();
        }
        2 if n > 0 => {
            // Duplicate under a name with one digit changed: an extra block, stage or head.
            let mut t = ck.tensors[i].clone();
            let digit = char::from(b'0' + c.byte() % 10);
            if let Some(pos) = t.name.find(|ch: char| ch.is_ascii_digit()) {
                t.name.replace_range(pos..pos + 1, &digit.to_string());
            } else {
                t.name.push(digit);
            }
            ck.tensors.push(t);
        }
        3 if n > 0 => {
            // Reshape: one dim changed, a dim added or removed, two swapped; the data follows.
            let t = &mut ck.tensors[i];
            let d = c.below(t.shape.len());
            match c.byte() % 5 {
                0 if !t.shape.is_empty() => t.shape[d] = c.byte() as usize % 70,
                1 if !t.shape.is_empty() => t.shape[d] += 1,
                2 if !t.shape.is_empty() => {
                    t.shape.remove(d);
                }
                3 => t.shape.insert(d, 1 + c.byte() as usize % 3),
                _ => t.shape.reverse(),
            }
            resize(t);
        }
        4 if n > 0 => {
            let t = &mut ck.tensors[i];
            t.dtype = DTYPES[c.below(DTYPES.len())].0.to_string();
            resize(t);
        }
        5 if n > 0 => {
            // Non-finite or extreme values where the model reads floats.
            let t = &mut ck.tensors[i];
            let at = c.below(t.data.len() / 4) * 4;
            let v = [f32::NAN, f32::INFINITY, f32::MAX, -0.0][c.byte() as usize % 4];
            if let Some(word) = t.data.get_mut(at..at + 4) {
                word.copy_from_slice(&v.to_le_bytes());
            }
        }
        6 | 7 => {
            let key = CONFIG_KEYS[c.below(CONFIG_KEYS.len())];
            let value = config_value(c);
            if let Some(args) = ck.config["model_args"].as_object_mut() {
                if value.is_null() {
                    args.remove(key);
                } else {
                    args.insert(key.into(), value);
                }
            }
        }
        8 => {
            // The top level and pretrained_cfg: architecture, class count, input size, statistics.
            let archs = [
                "vit_base_patch16_224",
                "convnext_tiny",
                "swin_tiny_patch4_window7_224",
                "vit_huge_patch14_224",
                "resnet50",
                "",
            ];
            match c.byte() % 4 {
                0 => ck.config["architecture"] = json!(archs[c.below(archs.len())]),
                1 => ck.config["num_classes"] = config_value(c),
                2 => ck.config["pretrained_cfg"]["input_size"] = config_value(c),
                _ => {
                    if let Some(obj) = ck.config.as_object_mut() {
                        obj.remove(["architecture", "pretrained_cfg", "model_args"][c.below(3)]);
                    }
                }
            }
        }
        _ => {
            // A tensor no model has, or one taken from another family.
            let other = &bases()[c.below(3)].tensors;
            if let Some(t) = other.get(c.below(other.len())) {
                ck.tensors.push(t.clone());
            }
        }
    }
}

fn write_checkpoint(ck: &Checkpoint, dir: &Path) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for t in &ck.tensors {
        let begin = data.len();
        data.extend_from_slice(&t.data);
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let mut text = serde_json::to_vec(&header).expect("header JSON");
    // Like the Python writer: the data starts 8-aligned, so valid files map aligned.
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&text);
    file.extend_from_slice(&data);
    std::fs::write(dir.join("model.safetensors"), file).expect("write the weights");
    let config = serde_json::to_vec(&ck.config).expect("config JSON");
    std::fs::write(dir.join("config.json"), config).expect("write the config");
}

/// Largest input the harness runs a loaded model on (a config edit can ask for 20000 x 20000).
const FUZZ_MAX_INPUT: usize = 64 * 64;

/// Target 5: model binding, structure-aware: the first byte picks a tiny fixture, the rest a list of mutations
/// (drop, rename, duplicate, reshape, retype, poison a value, edit config.json, graft a tensor). The result
/// is written as a model folder and loaded; when it loads, it runs on an input of the size it asks for.
pub fn model(data: &[u8]) {
    let mut c = Choices(data);
    let base = &bases()[c.byte() as usize % 3];
    let mut ck = Checkpoint {
        config: base.config.clone(),
        tensors: base.tensors.clone(),
    };
    let edits = c.byte() % 8;
    for _ in 0..edits {
        mutate(&mut ck, &mut c);
    }
    let dir = scratch().join("model");
    std::fs::create_dir_all(&dir).expect("create the model folder");
    write_checkpoint(&ck, &dir);
    let Ok(model) = Model::load(&dir) else {
        return;
    };
    let [ch, h, w] = model.input_size();
    if ch * h * w == 0 || h * w > FUZZ_MAX_INPUT {
        return;
    }
    let x: Vec<f32> = (0..ch * h * w)
        .map(|i| (i % 17) as f32 / 17.0 - 0.5)
        .collect();
    if let Ok(out) = model.forward(Act::new(x, vec![1, ch, h, w])) {
        assert_eq!(out.shape, vec![1, model.num_classes]);
    }
}
