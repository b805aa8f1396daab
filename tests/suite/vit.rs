//! ViT parity with timm on the committed tiny fixture.

use crate::common;

use common::parity;

#[test]
fn vit_tiny_matches_timm_block_by_block() {
    parity::check("vit_tiny", |_, act| act.clone(), 1e-4, 1e-4);
}

/// Full-size parity and speed: `WSTREAM_FULLSIZE=/work/fullsize cargo test --release --test suite --
/// --ignored --nocapture vit_large_fullsize`.
#[test]
#[ignore = "needs WSTREAM_FULLSIZE (timm exports made by tools/export_timm.py)"]
fn vit_large_fullsize() {
    parity::fullsize("vit_large_patch16_224");
}

/// A packed copy (`convert --layout packed`: panel-order weights, packed kernel, fused epilogues) matches
/// timm block by block too.
#[test]
fn vit_tiny_packed_matches_timm_block_by_block() {
    parity::check_packed("vit_tiny", |_, act| act.clone(), 1e-4, 1e-4);
}
