//! Model families and the block abstraction they share.

use crate::store::Store;

/// The architecture families wstream knows, detected from tensor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Vit,
    ConvNext,
    Swin,
}

impl Family {
    /// The family whose characteristic tensors the store holds, if any.
    pub fn detect(store: &Store) -> Option<Family> {
        let has = |n: &str| store.contains(n);
        if has("patch_embed.proj.weight") && has("blocks.0.attn.qkv.weight") {
            Some(Family::Vit)
        } else if has("stem.0.weight") && has("stages.0.blocks.0.conv_dw.weight") {
            Some(Family::ConvNext)
        } else if has("patch_embed.proj.weight")
            && has("layers.0.blocks.0.attn.relative_position_bias_table")
        {
            Some(Family::Swin)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Vit => "vit",
            Family::ConvNext => "convnext",
            Family::Swin => "swin",
        }
    }
}

/// The group a tensor belongs to for per-block summaries: `blocks.7.`, `stages.2.blocks.11.`,
/// `layers.1.blocks.0.`, `stages.1.downsample.`, or else its first name component (`patch_embed.`, `head.`).
pub fn group_of(name: &str) -> &str {
    let parts: Vec<&str> = name.split('.').collect();
    let mut end = 0; // byte length of the group prefix, including its trailing dot
    let mut pos = 0;
    for (i, p) in parts.iter().enumerate() {
        pos += p.len() + 1;
        let is_block = i > 0 && parts[i - 1] == "blocks" && p.parse::<usize>().is_ok();
        let is_down = *p == "downsample";
        if (is_block || is_down) && i + 1 < parts.len() {
            end = pos;
            break;
        }
    }
    if end == 0 {
        end = name.find('.').map_or(name.len(), |i| i + 1);
    }
    &name[..end]
}

#[cfg(test)]
mod tests {
    use super::group_of;

    #[test]
    fn groups() {
        assert_eq!(group_of("blocks.7.attn.qkv.weight"), "blocks.7.");
        assert_eq!(
            group_of("stages.2.blocks.11.mlp.fc1.weight"),
            "stages.2.blocks.11."
        );
        assert_eq!(
            group_of("layers.1.blocks.0.norm1.bias"),
            "layers.1.blocks.0."
        );
        assert_eq!(
            group_of("stages.1.downsample.0.weight"),
            "stages.1.downsample."
        );
        assert_eq!(
            group_of("layers.2.downsample.reduction.weight"),
            "layers.2.downsample."
        );
        assert_eq!(group_of("patch_embed.proj.weight"), "patch_embed.");
        assert_eq!(group_of("cls_token"), "cls_token");
    }
}
