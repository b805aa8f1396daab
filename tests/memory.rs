//! Memory by construction: a batch's activations are estimated from the blocks' shapes before any work,
//! batches are split to keep the peak RSS under the memory limit (or the limit is refused with the number),
//! input sizes a model cannot take are refused before an image is decoded, and images are capped in pixels
//! from their header.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use wstream::exec::Executor;
use wstream::models::Model;
use wstream::pipeline::{estimate, read_inputs, Options, Pipeline, BASE_MEMORY};
use wstream::residency::drop_file_cache;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

fn image(name: &str) -> String {
    root().join("tests/data").join(name).display().to_string()
}

/// A copy of fixture `name` in `dir` whose config.json says `input_size` is `[3, size, size]`.
fn with_input_size(dir: &Path, name: &str, size: usize) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(
        fixture(name).join("model.safetensors"),
        out.join("model.safetensors"),
    )
    .unwrap();
    let text = std::fs::read_to_string(fixture(name).join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg["pretrained_cfg"]["input_size"] = serde_json::json!([3, size, size]);
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    out
}

#[test]
fn activation_estimates_follow_the_block_shapes() {
    // vit_tiny: 32x32 images, 8x8 patches (16 + 1 tokens), width 32, MLP 128, 1000 classes. The patch
    // embedding holds the most: the image (3*32*32), 16 patch rows of 3*8*8 and their 32 outputs, and the
    // 17x32 token sequence; a block at most 17 * (3 * 32 + 128) = 3808 (x, norm2's copy, the MLP's hidden
    // activation and output).
    let vit = Model::load(fixture("vit_tiny")).unwrap();
    let per_input = 3 * 32 * 32 + 16 * (3 * 8 * 8 + 32) + 17 * 32;
    assert_eq!(per_input, 7200);
    assert_eq!(vit.activation_bytes(1).unwrap(), 4 * 7200);
    assert_eq!(vit.activation_bytes(32).unwrap(), 32 * 4 * 7200);
    // Growing with the batch; never more than the inputs run one by one would hold together, less where
    // a block runs the batch in sub-batches (ConvNeXt's stem: 256 output rows an input).
    for name in ["convnext_tiny", "swin_tiny"] {
        let m = Model::load(fixture(name)).unwrap();
        let a = |b| m.activation_bytes(b).unwrap();
        assert!(0 < a(1) && a(1) < a(2) && a(2) < a(7), "{name}");
        assert!(a(7) <= 7 * a(1), "{name}: {} for 7, {} for 1", a(7), a(1));
    }
}

#[test]
fn batches_are_split_to_fit_the_memory_limit_and_answer_the_same() {
    let vit = fixture("vit_tiny");
    let models = [Model::load(&vit).unwrap()];
    let budget = Executor::new(&models, Default::default()).unwrap().budget();
    // Halfway between what 5 and 6 inputs per batch are estimated to need.
    let (five, six) = (
        estimate(&models, budget, 5).unwrap().0,
        estimate(&models, budget, 6).unwrap().0,
    );
    assert!(five < six);
    let limit = (five + six) / 2;
    let opts = |batch, memory| Options {
        batch,
        memory: Some(memory),
        logits: true,
        ..Options::default()
    };
    let split = Pipeline::load(&[&vit], opts(32, limit)).unwrap();
    assert_eq!(split.batch(), 5, "5 inputs fit {limit} bytes, 6 do not");
    let whole = Pipeline::load(&[&vit], opts(3, limit)).unwrap();
    assert_eq!(whole.batch(), 3, "a batch that fits is kept");

    let inputs: Vec<String> = (0..3)
        .flat_map(|_| ["cat.jpg", "coffee.png", "cat_grey.png", "cat_rgba.png"])
        .map(image)
        .collect();
    let items = read_inputs(&inputs).unwrap();
    let answers = |p: &Pipeline| {
        let mut out = Vec::new();
        p.run(&items, |a| -> wstream::Result<()> {
            out.push((a.input, a.models[0].logits.clone().unwrap()));
            Ok(())
        })
        .unwrap();
        out
    };
    let split_answers = answers(&split);
    let one_by_one = answers(&Pipeline::load(&[&vit], opts(1, limit)).unwrap());
    assert_eq!(split_answers.len(), 12);
    for ((na, a), (nb, b)) in split_answers.iter().zip(&one_by_one) {
        assert_eq!(na, nb);
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "{na}: batched logits differ by {diff}");
    }

    // Below what one input's activations need (the weights aside): refused with the numbers.
    let err = Pipeline::load(&[&vit], opts(1, BASE_MEMORY))
        .err()
        .unwrap()
        .to_string();
    // One input: its [3, 32, 32] input and the largest block's activations with half again for the heap.
    let acts = models[0].activation_bytes(1).unwrap();
    let needed = BASE_MEMORY + 4 * 3 * 32 * 32 + acts + acts / 2;
    assert!(
        err.contains(&format!(
            "one input needs about {needed} bytes of memory for vit_tiny_patch16_224's activations, \
             over the memory limit of {BASE_MEMORY} bytes (--memory); raise it with --memory"
        )),
        "{err}"
    );
}

#[test]
fn an_input_size_the_model_cannot_take_is_refused_before_decoding() {
    let tmp = tempfile::tempdir().unwrap();
    // ViT's position embedding holds 4x4 patches: an 8000x8000 input is refused at load, naming the block.
    let vit = with_input_size(tmp.path(), "vit_tiny", 8000);
    let err = Pipeline::load(&[&vit], Options::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(
            "patch_embed: input 3x8000x8000 does not fit: the position embedding holds 16 patches"
        ),
        "{err}"
    );
    // ConvNeXt takes any size, but an 8000x8000 input needs GiBs of activations: refused by the limit,
    // before the image is read (through the CLI: one line, exit 1).
    let convnext = with_input_size(tmp.path(), "convnext_tiny", 8000);
    let (code, out, err) = common::wstream(&[
        "classify",
        "--memory",
        "1G",
        "--model",
        convnext.to_str().unwrap(),
        &image("cat.jpg"),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("over the memory limit of 1073741824 bytes (--memory)"),
        "{err}"
    );
}

/// A PNG holding its signature, an IHDR chunk for a `w`x`h` RGB image and the start of its data: enough for
/// the header check, then the data ends.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for chunk in [ihdr, b"IDAT\x78\x9c".to_vec()] {
        png.extend_from_slice(&(chunk.len() as u32 - 4).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

#[test]
fn images_over_the_pixel_limit_are_refused_from_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    let bomb = tmp.path().join("bomb.png");
    std::fs::write(&bomb, png_header(10_000, 10_000)).unwrap();
    let vit = fixture("vit_tiny");
    let run = |extra: &[&str]| {
        let mut args = vec!["classify", "--model", vit.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(bomb.to_str().unwrap());
        common::wstream(&args)
    };
    let (code, _, err) = run(&[]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(
            "bomb.png: PNG image is 10000x10000 = 100000000 pixels, over the limit of 89478485 \
             (a decompression bomb?); raise it with --max-pixels"
        ),
        "{err}"
    );
    // Raised, the header passes and the decoder finds the data missing.
    let (code, _, err) = run(&["--max-pixels", "100000000"]);
    assert_eq!(code, 1);
    assert!(!err.contains("--max-pixels"), "{err}");
    assert!(err.contains("bomb.png:"), "{err}");
    // Lowered, a real photo is refused.
    let (code, _, err) = common::wstream(&[
        "classify",
        "--max-pixels",
        "1000",
        "--model",
        vit.to_str().unwrap(),
        &image("cat.jpg"),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("pixels, over the limit of 1000"), "{err}");
}

/// `classify --batch 32` of the three Large models (synthetic, in the folder tests/ensemble.rs also uses)
/// inside a 512 MiB memory cgroup, the weights dropped from the page cache first so they are charged to it.
/// The limit comes from the cgroup (7/8 of it, 448 MiB); with the blocks run in sub-batches the batch of 32
/// is estimated to fit it whole (it was split before, into batches of 9), and does: 357 MiB measured.
#[test]
fn batch_32_of_the_large_models_fits_a_512_mib_cgroup() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ensemble");
    let models = common::large_models(&dir);
    for m in &models {
        drop_file_cache(&std::fs::File::open(m.join("model.safetensors")).unwrap()).unwrap();
    }
    let mut args = vec![
        "classify".to_string(),
        "--json".into(),
        "--threads".into(),
        "2".into(),
        "--batch".into(),
        "32".into(),
        "--memory-report".into(),
    ];
    for m in &models {
        args.push("--model".into());
        args.push(m.display().to_string());
    }
    for _ in 0..8 {
        for i in ["cat.jpg", "coffee.png", "cat_grey.png", "cat_rgba.png"] {
            args.push(image(i));
        }
    }
    let Some((stdout, report)) =
        common::wstream_in_membox("512M", &args, "batch 32 under a 512 MiB cgroup")
    else {
        return;
    };
    assert!(
        !report.contains("note: --batch 32 runs as batches of"),
        "the batch fits the cgroup's limit whole: {report}"
    );
    // The process's own VmHWM (other tests' children run beside it) stays under the 448 MiB it planned
    // for, 7/8 of the cgroup's limit.
    let peak: f64 = report
        .lines()
        .find_map(|l| l.strip_prefix("memory: peak RSS (VmHWM) "))
        .and_then(|rest| rest.split(" MiB").next())
        .and_then(|mib| mib.parse().ok())
        .unwrap_or_else(|| panic!("no memory report: {report}"));
    eprintln!("peak RSS (VmHWM) {peak} MiB");
    assert!(peak <= 448.0, "peak RSS {peak} MiB");
    let answers = String::from_utf8_lossy(&stdout);
    assert_eq!(answers.lines().count(), 32, "one answer per input");
    for line in answers.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["models"].as_array().unwrap().len(), 3);
    }
}

/// The largest RssAnon `/proc/PID/status` shows while `child` runs, read every millisecond, and its status.
fn peak_rss_anon(mut child: std::process::Child) -> (u64, std::process::ExitStatus) {
    let path = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (peak, status);
        }
        let kib = std::fs::read_to_string(&path).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
        peak = peak.max(kib.unwrap_or(0) * 1024);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The estimate is true: the anonymous memory it plans for `classify --batch 8` of ConvNeXt-L (synthetic;
/// of the three Large models, the one whose measured peak comes closest to its estimate) holds the peak
/// RssAnon of every run and is at most 1.65x the highest of three (88.3 MiB estimated). On an AVX-512 box,
/// with two threads the peak falls in one of two modes, 60 or 73 MiB (once 82), about half each under load:
/// it is set in the first stage, where whether glibc reuses a freed buffer or maps a fresh one depends on
/// the two threads' timing (RssAnon never falls after it; one thread gives 66 every time). The estimate's
/// slack covers the high mode; the low one alone is 1.47x below it. On an AVX2-only box (AMD Zen 3) every
/// run peaked at 55.6 MiB, 1.59x below: the bound is the AVX2 box's ratio with a little room.
#[test]
fn the_estimate_holds_the_measured_peak_of_a_large_batch() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ensemble");
    let convnext = common::large_models(&dir).remove(1);
    let models = [Model::load(&convnext).unwrap()];
    let budget = Executor::new(&models, Default::default()).unwrap().budget();
    let (_, anon, _) = estimate(&models, budget, 8).unwrap();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut highest = 0;
    for run in 1..=3 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wstream"));
        cmd.args([
            "classify",
            "--json",
            "--threads",
            "2",
            "--batch",
            "8",
            "--model",
        ])
        .arg(&convnext)
        .args((0..8).map(|_| image("cat.jpg")))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let (peak, status) = peak_rss_anon(cmd.spawn().unwrap());
        assert!(status.success(), "classify failed: {status}");
        eprintln!(
            "ConvNeXt-L batch 8, run {run}: peak RssAnon {:.1} MiB, estimated {:.1} MiB",
            mib(peak),
            mib(anon)
        );
        assert!(
            peak <= anon,
            "peak RssAnon {:.1} MiB over the estimate {:.1}",
            mib(peak),
            mib(anon)
        );
        highest = highest.max(peak);
    }
    assert!(
        anon as f64 <= 1.65 * highest as f64,
        "estimate {:.1} MiB more than 1.65x the highest measured {:.1}",
        mib(anon),
        mib(highest)
    );
}
