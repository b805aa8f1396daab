//! The store: valid files, sharded checkpoints, zero-copy views, and a clear error for each kind of bad file.

use crate::common;

use std::path::{Path, PathBuf};

use common::{write_f32, write_raw, wstream};
use wstream::{Error, Store};

fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

#[test]
fn opens_file_and_borrows_views() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_f32(
        &dir.path().join("m.safetensors"),
        &[
            ("b", vec![2], vec![5.0, 6.0]),
            ("a", vec![2, 3], (0..6).map(|i| i as f32).collect()),
        ],
    );
    let store = Store::open(&path).unwrap();
    let names: Vec<&str> = store.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["b", "a"], "on-disk order");
    let a = store.info("a").unwrap();
    assert_eq!(a.shape, [2, 3]);
    assert_eq!(a.nbytes(), 24);
    let header_end =
        8 + u64::from_le_bytes(std::fs::read(&path).unwrap()[..8].try_into().unwrap()) as usize;
    assert_eq!(a.range, header_end + 8..header_end + 32);
    let view = store.view::<f32>("a").unwrap();
    assert!(
        matches!(view, std::borrow::Cow::Borrowed(_)),
        "aligned data is borrowed, not copied"
    );
    assert_eq!(&*view, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let file_bytes = store.files()[0].bytes();
    assert!(
        std::ptr::eq(
            view.as_ptr() as *const u8,
            file_bytes[a.range.clone()].as_ptr()
        ),
        "view points into the mapping"
    );
    assert_eq!(store.copy_stats().unaligned_copies, 0);
    assert_eq!(store.total_bytes(), 32);
    assert!(matches!(
        store.view::<half::f16>("a"),
        Err(Error::WrongDtype { .. })
    ));
    assert!(matches!(
        store.view_shaped::<f32>("a", &[3, 2]),
        Err(Error::WrongShape { .. })
    ));
    let err = store.view::<f32>("zzz").unwrap_err().to_string();
    assert!(err.contains("no tensor named `zzz`"), "{err}");
    assert_eq!(
        store.ranges_of(["a", "b"]).unwrap().len(),
        1,
        "touching ranges merge"
    );
}

#[test]
fn unaligned_view_is_copied_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    // A 33-byte header puts the data at offset 41: not 4-byte aligned.
    let header = r#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#;
    let header = format!("{header:<33}");
    let path = write_raw(&dir.path().join("u.safetensors"), &header, &f32_bytes(3));
    let store = Store::open(&path).unwrap();
    let view = store.view::<f32>("x").unwrap();
    assert!(matches!(view, std::borrow::Cow::Owned(_)));
    assert_eq!(&*view, &[0.0, 1.0, 2.0]);
    let stats = store.copy_stats();
    assert_eq!((stats.unaligned_copies, stats.unaligned_bytes), (1, 12));
}

#[test]
fn half_precision_views() {
    let dir = tempfile::tempdir().unwrap();
    let vals: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .chain(
            [1.5f32, -2.0]
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()),
        )
        .collect();
    let header = r#"{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]}}"#;
    let header = format!("{header:<112}");
    let path = write_raw(&dir.path().join("h.safetensors"), &header, &vals);
    let store = Store::open(&path).unwrap();
    let h: Vec<f32> = store
        .view::<half::f16>("h")
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect();
    let b: Vec<f32> = store
        .view::<half::bf16>("b")
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect();
    assert_eq!(h, [1.5, -2.0]);
    assert_eq!(b, [1.5, -2.0]);
}

fn sharded(dir: &Path) -> PathBuf {
    write_f32(
        &dir.join("model-00001-of-00002.safetensors"),
        &[("a", vec![2], vec![1.0, 2.0])],
    );
    write_f32(
        &dir.join("model-00002-of-00002.safetensors"),
        &[("b", vec![1], vec![3.0])],
    );
    let index = dir.join("model.safetensors.index.json");
    std::fs::write(
        &index,
        r#"{"metadata":{"total_size":12},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    index
}

#[test]
fn sharded_checkpoint_opens_as_one_store() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path());
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.files().len(), 2);
    assert_eq!(&*store.view::<f32>("a").unwrap(), &[1.0, 2.0]);
    assert_eq!(&*store.view::<f32>("b").unwrap(), &[3.0]);
    assert_eq!(store.info("b").unwrap().file, 1);
}

/// `n` zero-size F32 tensors `t0`, `t1`, ... (a header of `n` entries and no data).
fn zero_size_tensors(path: &Path, n: usize) -> PathBuf {
    let entries: Vec<String> = (0..n)
        .map(|i| format!(r#""t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#))
        .collect();
    write_raw(path, &format!("{{{}}}", entries.join(",")), &[])
}

/// A shard index mapping `t0`, `t1`, ... `t{n-1}` to `shard`.
fn index_of(path: &Path, n: usize, shard: &str) -> PathBuf {
    let entries: Vec<String> = (0..n).map(|i| format!(r#""t{i}":"{shard}""#)).collect();
    let text = format!(
        r#"{{"metadata":{{}},"weight_map":{{{}}}}}"#,
        entries.join(",")
    );
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Before these limits, a header of 1M zero-size tensors cost 1.58 GB of RSS to open and a 2M-entry shard
/// index 379 MB; each is now refused, naming the limit, before anything past it is stored.
#[test]
fn tensor_count_rank_and_index_size_are_capped() {
    use wstream::fsutil::MAX_INDEX_BYTES;
    use wstream::store::{MAX_HEADER_BYTES, MAX_RANK, MAX_TENSORS};
    assert_eq!((MAX_TENSORS, MAX_RANK), (100_000, 8));
    assert_eq!((MAX_HEADER_BYTES, MAX_INDEX_BYTES), (16 << 20, 16 << 20));
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);

    // At the limit a checkpoint opens, in one file or through an index.
    let store = Store::open(zero_size_tensors(&p("max.safetensors"), MAX_TENSORS)).unwrap();
    assert_eq!(store.tensors().len(), MAX_TENSORS);
    std::fs::create_dir(p("max_index")).unwrap();
    zero_size_tensors(&p("max_index/a.safetensors"), MAX_TENSORS);
    let index = index_of(
        &p("max_index/model.safetensors.index.json"),
        MAX_TENSORS,
        "a.safetensors",
    );
    assert_eq!(Store::open(&index).unwrap().tensors().len(), MAX_TENSORS);

    let mut cases: Vec<(PathBuf, String)> = Vec::new();
    cases.push((
        zero_size_tensors(&p("over.safetensors"), MAX_TENSORS + 1),
        "lists 100001 tensors, over wstream's limit of 100000 per checkpoint".into(),
    ));
    write_raw(
        &p("rank.safetensors"),
        r#"{"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}}"#,
        &f32_bytes(1),
    );
    cases.push((
        p("rank.safetensors"),
        "tensor `a`: bad header entry: shape has more than 8 dimensions".into(),
    ));
    std::fs::create_dir(p("over_index")).unwrap();
    zero_size_tensors(&p("over_index/a.safetensors"), 1);
    cases.push((
        index_of(
            &p("over_index/model.safetensors.index.json"),
            MAX_TENSORS + 1,
            "a.safetensors",
        ),
        "lists 100001 tensors, over wstream's limit of 100000 per checkpoint".into(),
    ));
    std::fs::create_dir(p("big_index")).unwrap();
    let big = p("big_index/model.safetensors.index.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(MAX_INDEX_BYTES + 1)
        .unwrap();
    cases.push((
        big,
        "shard index of 16777217 bytes is over the 16777216-byte limit".into(),
    ));
    for (path, expected) in cases {
        let err = Store::open(&path).err().map(|e| e.to_string());
        assert!(
            err.as_ref().is_some_and(|e| e.contains(&expected)),
            "{}: got {err:?}, expected `{expected}`",
            path.display()
        );
        let (code, stdout, stderr) = wstream(&["inspect", path.to_str().unwrap()]);
        assert_eq!((code, stdout.as_str()), (1, ""), "{}", path.display());
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(&expected), "{stderr}");
    }
}

/// The shard index parser names what is wrong with the index.
#[test]
fn shard_index_errors_name_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path());
    let index = dir.path().join("model.safetensors.index.json");
    let a = "model-00001-of-00002.safetensors";
    let b = "model-00002-of-00002.safetensors";
    zero_size_tensors(&dir.path().join("s.safetensors"), 2);
    for (text, expected) in [
        (r#"{"metadata":{}}"#.to_string(), "no `weight_map` object"),
        (r#"{"weight_map":[1]}"#.into(), "no `weight_map` object"),
        (
            r#"{"weight_map":{"a":1}}"#.into(),
            "`weight_map` entry for `a` is not a file name",
        ),
        (
            format!(r#"{{"weight_map":{{"a":"{a}","a":"{a}","b":"{b}"}}}}"#),
            "`weight_map` lists `a` twice",
        ),
        (
            format!(r#"{{"weight_map":{{"a":"{b}","b":"{b}"}}}}"#),
            "`a` is mapped to `model-00002-of-00002.safetensors`, which does not hold it",
        ),
        (
            r#"{"weight_map":{"t0":"s.safetensors"}}"#.into(),
            "shards hold tensors the index does not list: `t1` in",
        ),
        (
            format!(r#"{{"weight_map":{{"a":"{a}","b":"{a}"}}}}"#),
            "`b` is mapped to `model-00001-of-00002.safetensors`, which does not hold it",
        ),
        (
            r#"{"weight_map":{"a":"../x"}}"#.into(),
            "shard name `../x` must be a plain file name",
        ),
        ("{".into(), "not valid JSON"),
    ] {
        std::fs::write(&index, &text).unwrap();
        let err = Store::open(&index).err().map(|e| e.to_string());
        assert!(
            err.as_ref().is_some_and(|e| e.contains(expected)),
            "{text}: got {err:?}, expected `{expected}`"
        );
    }
}

/// One broken input per case: the library error and the CLI's single stderr line must both name it.
#[test]
fn every_bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |n: &str| d.join(n);
    let ok_entry = |name: &str, begin: usize, end: usize| {
        format!(
            r#""{name}":{{"dtype":"F32","shape":[{}],"data_offsets":[{begin},{end}]}}"#,
            (end - begin) / 4
        )
    };
    let mut cases: Vec<(PathBuf, &str)> = Vec::new();

    cases.push((p("missing.safetensors"), "no such file or folder"));
    std::fs::create_dir(p("empty_folder")).unwrap();
    std::fs::write(p("empty_folder/config.json"), "{}").unwrap();
    cases.push((p("empty_folder"), "folder holds no model.safetensors"));
    std::fs::write(p("empty.safetensors"), b"").unwrap();
    cases.push((p("empty.safetensors"), "file is empty"));
    std::fs::write(p("short.safetensors"), b"\x05\x00\x00").unwrap();
    cases.push((
        p("short.safetensors"),
        "3 bytes, shorter than the 8-byte header length",
    ));
    let mut past = 1000u64.to_le_bytes().to_vec();
    past.extend_from_slice(b"{}");
    std::fs::write(p("past.safetensors"), past).unwrap();
    cases.push((
        p("past.safetensors"),
        "header length 1000 runs past the end of the file (10 bytes)",
    ));
    let mut huge = 200_000_000u64.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    std::fs::write(p("huge.safetensors"), huge).unwrap();
    cases.push((
        p("huge.safetensors"),
        "header length 200000000 is over the 16777216-byte limit",
    ));
    let mut utf = 4u64.to_le_bytes().to_vec();
    utf.extend_from_slice(b"{\xff}}");
    std::fs::write(p("utf8.safetensors"), utf).unwrap();
    cases.push((
        p("utf8.safetensors"),
        "header is not valid UTF-8 (bad byte at header offset 1)",
    ));
    write_raw(&p("json.safetensors"), "{not json}", &[]);
    cases.push((
        p("json.safetensors"),
        "header is not valid safetensors JSON",
    ));
    write_raw(
        &p("overlap.safetensors"),
        &format!("{{{},{}}}", ok_entry("a", 0, 8), ok_entry("b", 4, 12)),
        &f32_bytes(3),
    );
    cases.push((
        p("overlap.safetensors"),
        "tensor `b`: data_offsets [4, 12] overlap the previous tensor after `a`",
    ));
    write_raw(
        &p("gap.safetensors"),
        &format!("{{{},{}}}", ok_entry("a", 0, 4), ok_entry("b", 8, 12)),
        &f32_bytes(3),
    );
    cases.push((
        p("gap.safetensors"),
        "tensor `b`: data_offsets [8, 12] leave a gap of 4 bytes after `a`",
    ));
    write_raw(
        &p("pastend.safetensors"),
        &format!("{{{}}}", ok_entry("a", 0, 400)),
        &f32_bytes(2),
    );
    cases.push((
        p("pastend.safetensors"),
        "tensor `a` ends at data byte 400 but the file holds 8 data bytes",
    ));
    write_raw(
        &p("trailing.safetensors"),
        &format!("{{{}}}", ok_entry("a", 0, 4)),
        &f32_bytes(2),
    );
    cases.push((
        p("trailing.safetensors"),
        "tensors cover 4 data bytes but the file holds 8",
    ));
    write_raw(
        &p("dtype.safetensors"),
        r#"{"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#,
        &f32_bytes(1),
    );
    cases.push((p("dtype.safetensors"), "tensor `a`: unknown dtype `F33`"));
    write_raw(
        &p("size.safetensors"),
        r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
        &f32_bytes(2),
    );
    cases.push((
        p("size.safetensors"),
        "tensor `a`: shape [3] x F32 needs 12 bytes but data_offsets [0, 8] hold 8",
    ));
    write_raw(
        &p("dup.safetensors"),
        &format!("{{{},{}}}", ok_entry("a", 0, 4), ok_entry("a", 4, 8)),
        &f32_bytes(2),
    );
    cases.push((p("dup.safetensors"), "tensor `a` appears twice"));
    let full = f32_bytes(64);
    write_raw(
        &p("truncated.safetensors"),
        &format!("{{{}}}", ok_entry("w", 0, 256)),
        &full[..100],
    );
    cases.push((
        p("truncated.safetensors"),
        "data section is truncated: tensor `w` ends at data byte 256 but the file holds 100",
    ));
    std::fs::create_dir(p("shards")).unwrap();
    let index = sharded(&p("shards"));
    std::fs::remove_file(p("shards/model-00002-of-00002.safetensors")).unwrap();
    cases.push((
        index,
        "shard index names `model-00002-of-00002.safetensors`, which is missing",
    ));

    for (path, expected) in cases {
        let err = match Store::open(&path) {
            Ok(_) => panic!("{} opened, expected an error", path.display()),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(expected),
            "{}: got `{err}`, expected `{expected}`",
            path.display()
        );
        assert!(
            err.contains(path.file_name().unwrap().to_str().unwrap()),
            "error names the file: {err}"
        );

        let (code, stdout, stderr) = wstream(&["inspect", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{}: exit code", path.display());
        assert!(stdout.is_empty(), "nothing on stdout: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
        assert!(
            stderr.starts_with("wstream: error: ") && stderr.contains(expected),
            "{stderr}"
        );
    }
}

#[test]
fn bad_flags_get_one_line() {
    let (code, _, stderr) = wstream(&["inspect", "--bogus", "x"]);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--bogus"), "{stderr}");
}

#[test]
fn inspect_json_lists_every_tensor() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vit_tiny");
    let (code, stdout, stderr) = wstream(&["inspect", "--json", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["architecture"], "vit");
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 32);
    let sum: u64 = tensors.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    assert_eq!(v["total_bytes"].as_u64().unwrap(), sum);
    let file_len = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    let last = tensors
        .iter()
        .map(|t| t["offset"].as_u64().unwrap() + t["bytes"].as_u64().unwrap())
        .max();
    assert_eq!(last, Some(file_len), "offsets are absolute file offsets");
    let pos = tensors.iter().find(|t| t["name"] == "pos_embed").unwrap();
    assert_eq!(pos["shape"], serde_json::json!([1, 17, 32]));
    assert_eq!(pos["dtype"], "F32");
    assert!(
        pos.get("resident_bytes").is_none(),
        "residency only when asked"
    );

    let (code, stdout, _) = wstream(&["inspect", "--json", "--residency", dir.to_str().unwrap()]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for t in v["tensors"].as_array().unwrap() {
        assert!(t["resident_bytes"].as_u64().unwrap() <= t["bytes"].as_u64().unwrap());
    }
    let groups: Vec<&str> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert!(
        groups.contains(&"blocks.0.") && groups.contains(&"blocks.1."),
        "{groups:?}"
    );
}

#[test]
fn inspect_prints_a_name_of_any_length() {
    // format! panics on a padding width over 65,535: the table's name column was as wide as the longest name.
    let dir = tempfile::tempdir().unwrap();
    let long = format!("{}.weight", "n".repeat(70_000));
    let path = write_f32(
        &dir.path().join("long.safetensors"),
        &[
            ("short", vec![2], vec![1.0, 2.0]),
            (&long, vec![1], vec![3.0]),
        ],
    );
    let path = path.to_str().unwrap();
    for flags in [&[][..], &["--residency"]] {
        let mut args = vec!["inspect", path];
        args.extend_from_slice(flags);
        let (code, stdout, stderr) = wstream(&args);
        assert_eq!(code, 0, "{flags:?}: {stderr}");
        let row = |name: &str| {
            stdout
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("{flags:?}: no row for {}", &name[..10]))
                .split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
        };
        assert_eq!(row(&long)[..3], ["F32", "[1]", "70136"], "{flags:?}");
        assert_eq!(row("short")[..4], ["F32", "[2]", "70128", "8"], "{flags:?}");
        // The short name's row keeps a bounded column, not one 70,007 characters wide.
        assert!(stdout
            .lines()
            .all(|l| l.len() < 200 || l.starts_with("nnnnnnnn")));
    }
}

/// A file of raw tensors: `(name, dtype, shape, bytes)`, packed in the order given.
fn write_tensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> PathBuf {
    let (mut header, mut data) = (serde_json::Map::new(), Vec::new());
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape,
                               "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(bytes);
    }
    write_raw(path, &serde_json::Value::Object(header).to_string(), &data)
}

fn scale_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn int8_weight_with_scale_widens_and_bad_scales_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let q = vec![1u8, 0xFF, 2, 0xFE]; // [[1, -1], [2, -2]] as i8
    let open = |scale: (&str, Vec<usize>, Vec<u8>)| {
        let path = dir.path().join("q.safetensors");
        let _ = std::fs::remove_file(&path);
        write_tensors(
            &path,
            &[
                ("fc.weight", "I8", vec![2, 2], q.clone()),
                (scale.0, "F32", scale.1, scale.2),
            ],
        );
        Store::open(&path).unwrap()
    };
    let store = open(("fc.weight_scale", vec![2], scale_bytes(&[0.5, 0.25])));
    assert_eq!(
        &*store.floats("fc.weight").unwrap(),
        &[0.5, -0.5, 0.5, -0.5]
    );

    for (scale, values, want) in [
        (
            "fc.weight_scale",
            vec![0.5, f32::NAN],
            "`fc.weight_scale`: scale[1] is NaN: corrupted",
        ),
        (
            "fc.weight_scale",
            vec![-1.0, 0.5],
            "scale[0] is -1: corrupted",
        ),
        (
            "fc.weight_scale",
            vec![0.5],
            "`fc.weight_scale` has shape [1], expected [2]",
        ),
        (
            "fc.weight_scales",
            vec![0.5, 0.5],
            "int8 weight without its scale tensor `fc.weight_scale`",
        ),
    ] {
        let store = open((scale, vec![values.len()], scale_bytes(&values)));
        let err = store.weight("fc.weight").unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn ranges_merge_across_padding_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_tensors(
        &dir.path().join("p.safetensors"),
        &[
            ("a", "F32", vec![4], vec![0; 16]),
            ("__pad__.0", "U8", vec![48], vec![0; 48]),
            ("b", "F32", vec![4], vec![0; 16]),
            ("other", "F32", vec![1], vec![0; 4]),
            ("c", "F32", vec![1], vec![0; 4]),
        ],
    );
    let store = Store::open(&path).unwrap();
    assert_eq!(
        store.ranges_of(["a", "b"]).unwrap().len(),
        1,
        "a pad is no gap"
    );
    assert_eq!(
        store.ranges_of(["b", "c"]).unwrap().len(),
        2,
        "another tensor is"
    );
}
