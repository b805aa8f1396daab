//! The packed layout (`wstream convert --layout packed`): what the file holds, that `--layout source` restores
//! the source tensors bit for bit, that the executor's ranges cover the panels, and the refusals. Parity with
//! timm is checked per family (tests/suite/vit.rs, convnext.rs, swin.rs:
//! `*_packed_matches_timm_block_by_block`).

use crate::common;

use std::collections::HashMap;
use std::path::Path;

use common::parity::fixture;
use common::{write_raw, wstream};
use safetensors::SafeTensors;
use wstream::convert::{self, Dtype, Layout, Options};
use wstream::models::Model;
use wstream::ops::packed;
use wstream::store::PACKED_KEY;
use wstream::Store;

fn convert_to(input: &Path, output: &Path, dtype: Dtype, layout: Layout) -> wstream::Result<()> {
    convert::convert(input, output, &Options { dtype, layout }, |_, _| {}).map(|_| ())
}

/// name -> (dtype, shape, bytes) of every tensor but the padding.
fn tensors(path: &Path) -> HashMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("__pad__."))
        .map(|(n, v)| {
            (
                n,
                (
                    format!("{:?}", v.dtype()),
                    v.shape().to_vec(),
                    v.data().to_vec(),
                ),
            )
        })
        .collect()
}

#[test]
fn packed_files_round_trip_to_the_source_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["vit_tiny", "convnext_tiny", "swin_tiny"] {
        let src = fixture(name).join("model.safetensors");
        let packed_file = tmp.path().join(format!("{name}.packed.safetensors"));
        let back = tmp.path().join(format!("{name}.back.safetensors"));
        convert_to(&src, &packed_file, Dtype::F32, Layout::Packed).unwrap();
        convert_to(&packed_file, &back, Dtype::F32, Layout::Source).unwrap();

        let (orig, pk) = (tensors(&src), tensors(&packed_file));
        assert_eq!(tensors(&back), orig, "{name}: source -> packed -> source");

        // The header says what Python sees: packed matrices are F32 [out / 32, in, 32] (same bytes,
        // permuted), listed with their source shapes in the metadata; everything else is as it was.
        let bytes = std::fs::read(&packed_file).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let record: serde_json::Value =
            serde_json::from_str(&meta.metadata().as_ref().unwrap()[PACKED_KEY]).unwrap();
        assert_eq!(record["geometry"], packed::GEOMETRY);
        let listed = record["tensors"].as_object().unwrap();
        assert!(!listed.is_empty(), "{name}: nothing packed");
        for (t, (dtype, shape, data)) in &orig {
            let (pdtype, pshape, pdata) = &pk[t];
            assert_eq!(pdtype, dtype);
            match listed.get(t) {
                Some(s) => {
                    let want: Vec<usize> = serde_json::from_value(s.clone()).unwrap();
                    assert_eq!(&want, shape, "{name}: {t}'s recorded shape");
                    let (out, inp) = (shape[0], shape[1..].iter().product::<usize>());
                    assert_eq!(pshape, &packed::packed_shape(out, inp));
                    let w: Vec<f32> = bytemuck::pod_collect_to_vec(data);
                    let p: Vec<f32> = bytemuck::pod_collect_to_vec(pdata);
                    // Output channel 32 p + j, input k sits at [p][k][j].
                    for (o, k) in [(0, 0), (out - 1, inp - 1), (out / 2 + 3, inp / 3)] {
                        assert_eq!(p[(o / 32) * inp * 32 + k * 32 + o % 32], w[o * inp + k]);
                    }
                }
                None => {
                    assert_eq!((pshape, pdata), (shape, data), "{name}: {t} changed");
                    let linear = t.ends_with(".weight") && shape.len() == 2;
                    assert!(!linear || shape[0] % 32 != 0, "{name}: {t} was not packed");
                }
            }
        }
    }
}

/// The executor pages in and releases what `block_ranges` says; for a packed file those ranges must be
/// exactly the bytes the forward reads (the panels included), and every block page-aligned.
#[test]
fn block_ranges_cover_the_panels_the_forward_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("vit.safetensors");
    convert_to(&fixture("vit_tiny"), &out, Dtype::F32, Layout::Packed).unwrap();
    let model = Model::load(&out).unwrap();
    let store = &model.store;
    let mut covered = 0;
    for i in 0..model.blocks.len() {
        let ranges = model.block_ranges(i).unwrap();
        assert_eq!(ranges.len(), 1, "block {i} is one range");
        assert!(ranges[0].range.start.is_multiple_of(4096));
        for name in model.block_tensors(i) {
            let t = store.info(&name).unwrap();
            assert!(ranges[0].range.start <= t.range.start && t.range.end <= ranges[0].range.end);
            if store.is_packed(&name) {
                covered += 1;
                assert!(
                    t.range.start.is_multiple_of(64),
                    "{name} is 64-byte aligned"
                );
            }
        }
    }
    let packed_tensors = store
        .tensors()
        .iter()
        .filter(|t| store.is_packed(&t.name))
        .count();
    assert_eq!(
        covered, packed_tensors,
        "every packed tensor belongs to a block"
    );
    assert!(
        covered >= 8,
        "both encoder blocks' matrices are packed ({covered})"
    );
}

/// A 1x32 weight as the packed layout stores it, under `geometry`, with `stored` as its header shape.
fn packed_file(dir: &Path, geometry: &str, stored: &str) -> std::path::PathBuf {
    let meta = serde_json::json!({ "geometry": geometry, "tensors": { "fc.weight": [32, 4] } });
    let header = format!(
        r#"{{"__metadata__":{{"{PACKED_KEY}":{}}},"fc.weight":{{"dtype":"F32","shape":{stored},"data_offsets":[0,512]}}}}"#,
        serde_json::Value::String(meta.to_string())
    );
    write_raw(&dir.join("p.safetensors"), &header, &[0u8; 512])
}

#[test]
fn refuses_panels_of_another_geometry_or_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let ok = packed_file(tmp.path(), packed::GEOMETRY, "[1,4,32]");
    let store = Store::open(&ok).unwrap();
    assert!(store.is_packed("fc.weight"));
    assert_eq!(store.info("fc.weight").unwrap().shape, [32, 4]);

    let other = packed_file(tmp.path(), "f32 panels of 16 output channels", "[2,4,16]");
    let e = Store::open(&other).err().unwrap().to_string();
    assert!(
        e.contains("packed for another kernel") && e.contains("panels of 16"),
        "{e}"
    );
    let (code, _, err) = wstream(&["inspect", other.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("packed for another kernel"), "{err}");

    let wrong = packed_file(tmp.path(), packed::GEOMETRY, "[32,4]");
    let e = Store::open(&wrong).err().unwrap().to_string();
    assert!(e.contains("packs to F32 [1, 4, 32]"), "{e}");
}

#[test]
fn packed_layout_is_f32_only_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let e = convert_to(
        &fixture("vit_tiny"),
        &tmp.path().join("a"),
        Dtype::Int8,
        Layout::Packed,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--layout packed stores f32"), "{e}");
    let p = tmp.path().join("p.safetensors");
    convert_to(&fixture("vit_tiny"), &p, Dtype::F32, Layout::Packed).unwrap();
    let e = convert_to(&p, &tmp.path().join("b"), Dtype::Bf16, Layout::Source)
        .unwrap_err()
        .to_string();
    assert!(e.contains("convert it to f32 --layout source first"), "{e}");
    assert!(!tmp.path().join("a").exists() && !tmp.path().join("b").exists());
}
