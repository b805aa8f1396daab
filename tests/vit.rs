//! ViT parity with timm on the committed tiny fixture.

mod common;

use common::parity;

#[test]
fn vit_tiny_matches_timm_block_by_block() {
    parity::check("vit_tiny", |_, act| act.clone(), 1e-4, 1e-4);
}
