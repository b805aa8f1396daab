//! ConvNeXt as timm's `ConvNeXt` computes it.

use crate::error::Result;
use crate::models::{Block, BuildCtx};

/// Builds the blocks in execution order.
pub fn build(ctx: &mut BuildCtx) -> Result<Vec<Box<dyn Block>>> {
    Err(ctx.err("this family is not implemented yet"))
}
