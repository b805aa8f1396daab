//! Model families and the block abstraction they share.
//!
//! A model is an ordered list of [`Block`]s. Each block names the tensors it reads (so the executor knows its
//! byte ranges) and has a forward over [`Act`]ivations that reads those tensors straight from the [`Store`].
//! Hyper-parameters come from tensor names and shapes plus `config.json`, never from fixed sizes.

pub mod config;
pub mod convnext;
pub mod swin;
pub mod vit;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use crate::store::PAD_PREFIX;
use crate::store::{FileRange, Store};
use crate::weight;

pub use config::ModelConfig;

/// A batch of activations: dense row-major f32, `shape[0]` is the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Act {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

impl Act {
    pub fn new(data: Vec<f32>, shape: Vec<usize>) -> Self {
        assert_eq!(
            data.len(),
            shape.iter().product::<usize>(),
            "activation size vs shape {shape:?}"
        );
        Act { data, shape }
    }

    pub fn batch(&self) -> usize {
        self.shape[0]
    }
}

/// One streaming unit of a model.
pub trait Block: Send + Sync {
    /// The block's name as timm's module path: `patch_embed`, `blocks.3`, `stages.2.downsample`, `head`.
    fn name(&self) -> &str;
    /// The tensors its forward reads.
    fn tensors(&self) -> &[String];
    fn forward(&self, store: &Store, x: Act) -> Result<Act>;
}

/// An error about what reached a block (input shape, size), naming the model's weights.
pub(crate) fn input_error(store: &Store, msg: String) -> Error {
    Error::InputShape {
        path: store.path().to_path_buf(),
        msg,
    }
}

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

    /// The family an architecture name (`vit_large_patch16_224`, `convnext_large`) belongs to.
    pub fn from_architecture(arch: &str) -> Option<Family> {
        if arch.starts_with("vit_") {
            Some(Family::Vit)
        } else if arch.starts_with("convnext") {
            Some(Family::ConvNext)
        } else if arch.starts_with("swin_") && !arch.starts_with("swinv2") {
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

/// A loaded model: its mapped weights, configuration and blocks.
pub struct Model {
    pub name: String,
    pub family: Family,
    pub config: ModelConfig,
    pub store: Store,
    pub blocks: Vec<Box<dyn Block>>,
    /// Classes the head produces.
    pub num_classes: usize,
}

impl Model {
    /// Opens a model folder in timm's Hugging Face layout (weights + config.json), or a weights file with an
    /// optional config.json beside it. Maps the weights; reads nothing but headers and the config.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let store = Store::open(path)?;
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        };
        let mut config = ModelConfig::load_optional(&dir.join("config.json"))?;
        let model_err = |msg: String| Error::Model {
            path: path.to_path_buf(),
            msg,
        };
        let Some(family) = Family::detect(&store) else {
            return Err(model_err(
                "tensor names match no known family (vit, convnext, swin); see `wstream inspect`"
                    .into(),
            ));
        };
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        let mut source = "config.json says";
        if config.architecture.is_none() {
            // Without config.json, a file named after its architecture (`vit_huge_patch14_224.safetensors`)
            // still tells what shapes cannot, such as ViT's head count.
            config.architecture = stem
                .clone()
                .filter(|s| Family::from_architecture(s).is_some());
            source = "the file name says";
        }
        if let Some(arch) = &config.architecture {
            match Family::from_architecture(arch) {
                Some(f) if f != family => {
                    return Err(model_err(format!(
                        "{source} architecture `{arch}` ({}) but the weights are a {} model",
                        f.name(),
                        family.name()
                    )))
                }
                _ => {}
            }
        }
        let name = config
            .architecture
            .clone()
            .or(stem)
            .unwrap_or_else(|| family.name().to_string());
        let mut ctx = BuildCtx::new(&store, &config, path);
        let blocks = match family {
            Family::Vit => vit::build(&mut ctx)?,
            Family::ConvNext => convnext::build(&mut ctx)?,
            Family::Swin => swin::build(&mut ctx)?,
        };
        let num_classes = ctx
            .num_classes
            .ok_or_else(|| model_err("no classifier head found".into()))?;
        ctx.finish()?;
        Ok(Model {
            name,
            family,
            config,
            store,
            blocks,
            num_classes,
        })
    }

    /// The plain runner: every block in order, straight from the mapping. `x` is `[batch, 3, h, w]`.
    pub fn forward(&self, x: Act) -> Result<Act> {
        self.forward_with(x, |_, _| {})
    }

    /// [`Model::forward`], calling `visit(block_index, output)` after each block.
    pub fn forward_with(&self, mut x: Act, mut visit: impl FnMut(usize, &Act)) -> Result<Act> {
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&self.store, x)?;
            visit(i, &x);
        }
        Ok(x)
    }

    /// Every tensor block `i` reads, in the order it names them; an int8 weight's scale follows the weight.
    pub fn block_tensors(&self, i: usize) -> Vec<String> {
        let mut names = Vec::new();
        for n in self.blocks[i].tensors() {
            names.push(n.clone());
            if self
                .store
                .info(n)
                .is_ok_and(|t| t.dtype == safetensors::Dtype::I8)
            {
                names.push(weight::scale_name(n));
            }
        }
        names
    }

    /// The byte ranges block `i` reads.
    pub fn block_ranges(&self, i: usize) -> Result<Vec<FileRange>> {
        self.store
            .ranges_of(self.block_tensors(i).iter().map(String::as_str))
    }

    /// The input `[3, h, w]` the model expects.
    pub fn input_size(&self) -> [usize; 3] {
        self.config.input_size()
    }
}

/// What a family's builder needs: the weights, the config, and a record of which tensors the blocks claim,
/// so a checkpoint that holds tensors no block uses (a different architecture) is refused.
pub struct BuildCtx<'a> {
    pub store: &'a Store,
    pub config: &'a ModelConfig,
    path: &'a Path,
    used: std::collections::HashSet<String>,
    /// Set by the builder from the head's shape.
    pub num_classes: Option<usize>,
}

impl<'a> BuildCtx<'a> {
    fn new(store: &'a Store, config: &'a ModelConfig, path: &'a Path) -> Self {
        BuildCtx {
            store,
            config,
            path,
            used: Default::default(),
            num_classes: None,
        }
    }

    /// An error about this model, naming its path.
    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::Model {
            path: self.path.to_path_buf(),
            msg: msg.into(),
        }
    }

    /// The shape of a tensor the model requires, recording it as used. Any tensor may be F32, F16 or BF16;
    /// a weight matrix (`*.weight`, 2 or more dims) may also be int8 with its `<name>_scale` beside it.
    pub fn shape(&mut self, name: &str) -> Result<Vec<usize>> {
        use safetensors::Dtype;
        let t = self.store.info(name)?;
        let matrix = name.ends_with(".weight") && t.shape.len() >= 2;
        match t.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => {}
            Dtype::I8 if matrix => {
                let scale = weight::scale_name(name);
                self.store.int8_scale(t, &scale)?;
                self.used.insert(scale);
            }
            other => {
                return Err(Error::WrongDtype {
                    path: self.path.to_path_buf(),
                    name: name.into(),
                    expected: if matrix {
                        "F32, F16, BF16 or I8"
                    } else {
                        "F32, F16 or BF16"
                    }
                    .into(),
                    actual: other.to_string(),
                })
            }
        }
        self.used.insert(name.to_string());
        Ok(t.shape.clone())
    }

    /// Claims a required tensor and checks its shape.
    pub fn expect(&mut self, name: &str, shape: &[usize]) -> Result<String> {
        let actual = self.shape(name)?;
        if actual != shape {
            return Err(Error::WrongShape {
                path: self.path.to_path_buf(),
                name: name.into(),
                expected: shape.to_vec(),
                actual,
            });
        }
        Ok(name.to_string())
    }

    /// Claims an optional tensor (present in some variants only): `None` when absent, an error when present
    /// with the wrong shape.
    pub fn optional(&mut self, name: &str, shape: &[usize]) -> Result<Option<String>> {
        if self.store.contains(name) {
            self.expect(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Counts `prefix{i}.` groups present: the depth of `blocks.`, `stages.`, `layers.2.blocks.` ...
    pub fn count(&self, prefix: &str, probe: &str) -> usize {
        (0..)
            .take_while(|i| self.store.contains(&format!("{prefix}{i}.{probe}")))
            .count()
    }

    /// Refuses a checkpoint with tensors no block uses: they mean the architecture was misread.
    fn finish(self) -> Result<()> {
        let unused: Vec<&str> = self
            .store
            .tensors()
            .iter()
            .map(|t| t.name.as_str())
            .filter(|n| !self.used.contains(*n) && !n.starts_with(PAD_PREFIX))
            .collect();
        if let Some(first) = unused.first() {
            return Err(self.err(format!(
                "{} tensor(s) are not used by the {} model built from them, e.g. `{first}`; \
                 unsupported variant or mismatched config.json",
                unused.len(),
                self.config.architecture.as_deref().unwrap_or("detected")
            )));
        }
        Ok(())
    }
}

/// The group a tensor belongs to for per-block summaries: `blocks.7.`, `stages.2.blocks.11.`,
/// `layers.1.blocks.0.`, `stages.1.downsample.`, or else its first name component (`patch_embed.`, `head.`).
pub fn group_of(name: &str) -> &str {
    let parts: Vec<&str> = name.split('.').collect();
    let mut pos = 0;
    for (i, p) in parts.iter().enumerate() {
        pos += p.len() + 1;
        let is_block = i > 0 && parts[i - 1] == "blocks" && p.parse::<usize>().is_ok();
        if (is_block || *p == "downsample") && i + 1 < parts.len() {
            return &name[..pos];
        }
    }
    name.find('.').map_or(name, |i| &name[..=i])
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
