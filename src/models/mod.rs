//! Model families and the block abstraction they share.
//!
//! A model is an ordered list of [`Block`]s. A family's `build` walks the checkpoint once, declaring each
//! tensor through [`BuildCtx`] between [`BuildCtx::begin_block`] and [`BuildCtx::end_block`]; each
//! declaration returns a [`Param`] handle and records the tensor in the block's [`BlockMeta`]. A block's
//! forward then reads its weights through [`Weights`], by handle, so the tensors the executor pages in for a
//! block ([`Model::block_ranges`], from the meta) are by construction the ones its forward reads; debug and
//! test builds panic on a read outside the running block's declared set.
//!
//! Hyper-parameters come from tensor names and shapes plus `config.json`, never from fixed sizes.
//!
//! **Adding a timm family**: read one model file (`vit.rs` is the smallest) and [`layers`]. Write a
//! `build(ctx) -> Result<Vec<Block>>` that probes shapes ([`BuildCtx::dims`], [`BuildCtx::count`]),
//! declares each block's layers ([`layers::Linear`], [`layers::LayerNorm`], [`layers::Mlp`], ...) between
//! `begin_block` / `end_block`, and wraps a struct implementing [`Forward`] with [`Block::new`]. Register it
//! in [`Family`]. Loading then refuses any tensor of the file that no block declared.

pub mod config;
pub mod convnext;
pub mod layers;
pub mod swin;
pub mod vit;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use crate::store::PAD_PREFIX;
use crate::store::{FileRange, Store};
use crate::weight::{self, Weight};

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

/// A tensor a block declared: its index in [`Store::tensors`] and, for an int8 weight, its scale's and its
/// column sums' (absent in files written before `convert` stored them). Only [`BuildCtx`] makes one, so a
/// `Param` always names a tensor of the model's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    index: usize,
    scale: Option<usize>,
    colsum: Option<usize>,
}

/// What the executor knows of a block: its name and every tensor its forward reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMeta {
    /// timm's module path: `patch_embed`, `blocks.3`, `stages.2.downsample`, `head`.
    pub name: String,
    /// Indices into [`Store::tensors`] in declaration order, an int8 weight's scale right after it.
    pub tensors: Vec<usize>,
}

/// The computation of one block over the weights it declared.
pub trait Forward: Send + Sync {
    fn forward(&self, w: &Weights, x: Act) -> Result<Act>;

    /// What [`Forward::forward`] would do with an input of shape `input`, without running it or reading a
    /// weight: the output shape, and the most f32 values it holds at once (its input and output included),
    /// counted from the buffers the forward allocates. An input the forward refuses is refused here.
    fn plan(&self, w: &Weights, input: &[usize]) -> Result<Planned>;
}

/// A block's forward on one input shape, as [`Forward::plan`] foresees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub output: Vec<usize>,
    /// The most f32 activation values alive at once during the forward.
    pub live: usize,
}

/// One streaming unit of a model: its meta and its forward.
pub struct Block {
    meta: BlockMeta,
    forward: Box<dyn Forward>,
}

impl Block {
    pub fn new(meta: BlockMeta, forward: impl Forward + 'static) -> Block {
        Block {
            meta,
            forward: Box::new(forward),
        }
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    pub fn meta(&self) -> &BlockMeta {
        &self.meta
    }

    /// Runs the block on `x`, reading its weights from `store` (the store it was built from).
    pub fn forward(&self, store: &Store, x: Act) -> Result<Act> {
        self.forward_int8(store, x, true)
    }

    /// [`Block::forward`], with int8 weights multiplied in int8 (`int8_activations`, where the CPU can) or
    /// widened to f32 (the weight-only path).
    ///
    /// A batch whose intermediate buffers would outgrow [`SUB_BATCH_BYTES`] runs through the block in
    /// sub-batches (see `sub_batches`), each written into the batch's output as it finishes: the
    /// block's weights are still paged in once for the whole batch, while its MLP hidden activations,
    /// attention inputs and patch copies exist for one sub-batch at a time.
    pub fn forward_int8(&self, store: &Store, x: Act, int8_activations: bool) -> Result<Act> {
        let w = Weights {
            store,
            meta: &self.meta,
            int8_activations,
        };
        // An input the plan refuses goes to the forward whole, which refuses it with its own message.
        let Ok(Some((parts, one))) = self.sub_batches(&w, &x.shape) else {
            return self.forward.forward(&w, x);
        };
        let rest = x.shape[1..].to_vec();
        let per_in = x.data.len() / x.batch();
        let per_out: usize = one.output[1..].iter().product();
        let shape = |n: usize, s: &[usize]| [&[n][..], s].concat();
        if one.output[1..] == rest {
            // The block keeps the shape (every residual block): each sub-batch's result replaces its rows.
            let mut x = x;
            let mut start = 0;
            for n in parts {
                let rows = start * per_in..(start + n) * per_in;
                let part = Act::new(x.data[rows.clone()].to_vec(), shape(n, &rest));
                x.data[rows].copy_from_slice(&self.forward.forward(&w, part)?.data);
                start += n;
            }
            return Ok(x);
        }
        let mut out = Vec::with_capacity(x.batch() * per_out);
        let mut start = 0;
        for n in parts {
            let part = x.data[start * per_in..(start + n) * per_in].to_vec();
            let y = self.forward.forward(&w, Act::new(part, shape(n, &rest)))?;
            out.extend_from_slice(&y.data);
            start += n;
        }
        let b = x.batch();
        drop(x);
        Ok(Act::new(out, shape(b, &one.output[1..])))
    }

    /// [`Forward::plan`]: the output shape and peak live activation values for an input of shape `input`,
    /// run in sub-batches as [`Block::forward_int8`] runs it.
    pub fn plan(&self, store: &Store, input: &[usize]) -> Result<Planned> {
        let w = Weights {
            store,
            meta: &self.meta,
            int8_activations: true,
        };
        let whole = self.forward.plan(&w, input)?;
        let Some((parts, one)) = self.sub_batches(&w, input)? else {
            return Ok(whole);
        };
        // The batch's input, its output (the same buffer when the shape is kept) and the largest
        // sub-batch's own buffers, its copy of its inputs and its output included.
        let largest = self
            .forward
            .plan(&w, &[&[parts[0]][..], &input[1..]].concat())?;
        let (inp, out): (usize, usize) = (input.iter().product(), whole.output.iter().product());
        let kept = one.output[1..] == input[1..];
        Ok(Planned {
            output: whole.output,
            live: inp + if kept { 0 } else { out } + largest.live,
        })
    }

    /// The sizes of the sub-batches a batch of `input` runs in, largest first, and the plan for one input;
    /// `None` when the batch runs whole. Every sub-batch holds at least [`SUB_BATCH_ROWS`] rows of the
    /// block's output: the products then run near the speed of the whole batch and give every row the same
    /// value (the GEMM computes a row alike at any row count from there on). A block that keeps the shape
    /// (a residual block) takes as many inputs at once as keep its buffers within [`SUB_BATCH_BYTES`]: its
    /// products run faster on more rows. One that changes it (stem, downsample) holds the batch's whole
    /// input and output besides, so it takes as few as the rows allow, and splits only when that holds
    /// less than the whole batch would. The batch is split into equal parts of at least that many inputs.
    fn sub_batches(&self, w: &Weights, input: &[usize]) -> Result<Option<(Vec<usize>, Planned)>> {
        let Some((&b, rest)) = input.split_first() else {
            return Ok(None);
        };
        if b <= 1 {
            return Ok(None);
        }
        let one = self.forward.plan(w, &[&[1][..], rest].concat())?;
        let rows: usize = one.output[1..one.output.len().max(2) - 1].iter().product();
        let by_rows = SUB_BATCH_ROWS.div_ceil(rows.max(1));
        let kept = one.output[1..] == *rest;
        let k = if kept {
            let by_bytes = SUB_BATCH_BYTES / (4 * one.live as u64).max(1);
            (by_bytes as usize).max(by_rows)
        } else {
            by_rows
        };
        let parts = b / k.max(1);
        if parts <= 1 {
            return Ok(None);
        }
        let (each, extra) = (b / parts, b % parts);
        let sizes: Vec<usize> = (0..parts).map(|i| each + usize::from(i < extra)).collect();
        if !kept {
            let whole = self.forward.plan(w, input)?;
            let largest = self.forward.plan(w, &[&[sizes[0]][..], rest].concat())?;
            let inp: usize = input.iter().product();
            let out: usize = whole.output.iter().product();
            if inp + out + largest.live >= whole.live {
                return Ok(None);
            }
        }
        Ok(Some((sizes, one)))
    }
}

/// Activation bytes one sub-batch of a residual block may hold at once (see `Block::sub_batches`): one
/// image of the Large models' first stages (ConvNeXt-L, Swin-L: 16 MiB an image), four of ViT-L, whole
/// batches of 8 in the last stages.
pub const SUB_BATCH_BYTES: u64 = 24 << 20;

/// Fewest output rows (tokens or pixels over the batch) a sub-batch holds: from 256 rows on, the linear
/// layers take the same path as for the whole batch (`ops::linear`), so sub-batching changes no value.
pub const SUB_BATCH_ROWS: usize = 256;

/// The store as the running block sees it: its declared tensors, read by [`Param`], zero-copy.
pub struct Weights<'a> {
    store: &'a Store,
    meta: &'a BlockMeta,
    int8_activations: bool,
}

impl<'a> Weights<'a> {
    /// A small tensor (norm, bias, layer scale, depthwise kernel) as f32: see [`Store::floats`].
    pub fn floats(&self, p: Param) -> Result<Cow<'a, [f32]>> {
        self.store.floats(self.name(p))
    }

    /// [`Weights::floats`] of a tensor some variants lack.
    pub fn maybe_floats(&self, p: Option<Param>) -> Result<Option<Cow<'a, [f32]>>> {
        p.map(|p| self.floats(p)).transpose()
    }

    /// A weight matrix in its stored dtype: see [`Store::weight`].
    pub fn weight(&self, p: Param) -> Result<Weight<'a>> {
        self.store.weight(self.name(p))
    }

    /// The stored dtype of weight `p`, without viewing it.
    pub fn dtype(&self, p: Param) -> Result<safetensors::Dtype> {
        Ok(self.store.info(self.name(p))?.dtype)
    }

    /// Whether int8 weights are to be multiplied in int8 (W8A8) where the CPU can: the pipeline's
    /// `int8_activations` option; `false` keeps the weight-only (widening) path.
    pub fn int8_activations(&self) -> bool {
        self.int8_activations
    }

    /// The stored column sums of int8 weight `p` (`<name>_colsum`, I32 `[out]`), `None` for a file
    /// written before `convert` stored them or a weight that is not int8.
    pub fn colsum(&self, p: Param) -> Result<Option<Cow<'a, [i32]>>> {
        let Some(i) = p.colsum else { return Ok(None) };
        let name = self.name(p);
        let t = &self.store.tensors()[i];
        self.store
            .view_shaped(&t.name, &[self.store.info(name)?.shape[0]])
            .map(Some)
    }

    /// The name of the tensor `p` declares.
    pub fn tensor_name(&self, p: Param) -> &'a str {
        self.name(p)
    }

    /// An error about what reached this block (input shape, size), naming the block and the weights.
    pub fn input_error(&self, msg: impl std::fmt::Display) -> Error {
        Error::InputShape {
            path: self.store.path().to_path_buf(),
            msg: format!("{}: {msg}", self.meta.name),
        }
    }

    fn name(&self, p: Param) -> &'a str {
        #[cfg(any(debug_assertions, test))]
        for i in std::iter::once(p.index).chain(p.scale).chain(p.colsum) {
            assert!(
                self.meta.tensors.contains(&i),
                "block `{}` read `{}`, which it did not declare",
                self.meta.name,
                self.store.tensors()[i].name
            );
        }
        &self.store.tensors()[p.index].name
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

/// The `__metadata__` key under which `wstream convert` keeps the model's config.json in the weights file, so
/// a single-file copy carries its preprocessing. [`Model::load`] reads it when no config.json is beside the
/// weights; a config.json there wins.
pub const CONFIG_KEY: &str = "wstream.config";

/// The `__metadata__` key `wstream synth` marks its weights files with (a JSON object: seed and a note), so
/// random weights are recognised wherever the file goes, without its config.json.
pub const SYNTHETIC_KEY: &str = "wstream.synthetic";

/// The config embedded under [`CONFIG_KEY`] in the first weights file, with that file's path.
fn embedded_config(store: &Store) -> Result<Option<(String, PathBuf)>> {
    metadata_value(store, CONFIG_KEY)
}

/// The value of `key` in the first weights file's `__metadata__`, with that file's path.
fn metadata_value(store: &Store, key: &str) -> Result<Option<(String, PathBuf)>> {
    let Some(f) = store.files().first() else {
        return Ok(None);
    };
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(f.bytes()).map_err(|e| Error::HeaderJson {
            path: f.path.clone(),
            msg: e.to_string(),
        })?;
    Ok(meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(key))
        .map(|t| (t.clone(), f.path.clone())))
}

/// A loaded model: its mapped weights, configuration and blocks.
pub struct Model {
    pub name: String,
    pub family: Family,
    pub config: ModelConfig,
    pub store: Store,
    pub blocks: Vec<Block>,
    /// Classes the head produces.
    pub num_classes: usize,
    /// Random weights written by `wstream synth`: marked with [`SYNTHETIC_KEY`] in the weights, or, for files
    /// from builds before that marker, `wstream_synthetic` in config.json.
    pub synthetic: bool,
    /// The last block without its classifier, for [`Model::into_features`].
    features_head: Option<Block>,
    /// Whether int8 weights are multiplied in int8 (W8A8, where the CPU has AVX512-VNNI) rather than widened
    /// to f32: `true` unless the pipeline's [`int8_activations`](crate::pipeline::Options) option says off.
    pub int8_activations: bool,
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
        let config_path = dir.join("config.json");
        let embedded = if config_path.exists() {
            None
        } else {
            embedded_config(&store)?
        };
        let mut config = match embedded {
            Some((text, file)) => {
                let mut config: ModelConfig =
                    serde_json::from_str(&text).map_err(|e| Error::Config {
                        path: file.clone(),
                        msg: format!(
                            "the config in its metadata (`{CONFIG_KEY}`) is not timm's: {e}"
                        ),
                    })?;
                config.source = Some(file);
                config
            }
            None => ModelConfig::load_optional(&config_path)?,
        };
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
        let features_head = ctx.features_head.take();
        ctx.finish()?;
        let synthetic =
            config.wstream_synthetic.is_some() || metadata_value(&store, SYNTHETIC_KEY)?.is_some();
        Ok(Model {
            name,
            family,
            config,
            store,
            blocks,
            num_classes,
            synthetic,
            features_head,
            int8_activations: true,
        })
    }

    /// The model with its last block replaced by the head without the classifier: its output is timm's
    /// `forward_head(x, pre_logits=True)`, `[batch, features]`, and the classifier's weights are never
    /// paged in.
    pub fn into_features(mut self) -> Result<Model> {
        let Some(head) = self.features_head.take() else {
            return Err(Error::Model {
                path: self.store.path().to_path_buf(),
                msg: format!("{} has no pre-logits features to output", self.name),
            });
        };
        *self.blocks.last_mut().expect("a model has blocks") = head;
        Ok(self)
    }

    /// The plain runner: every block in order, straight from the mapping. `x` is `[batch, 3, h, w]`.
    pub fn forward(&self, x: Act) -> Result<Act> {
        self.forward_with(x, |_, _| {})
    }

    /// [`Model::forward`], calling `visit(block_index, output)` after each block.
    pub fn forward_with(&self, mut x: Act, mut visit: impl FnMut(usize, &Act)) -> Result<Act> {
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward_int8(&self.store, x, self.int8_activations)?;
            visit(i, &x);
        }
        Ok(x)
    }

    /// The name of block `i`: timm's module path.
    pub fn block_name(&self, i: usize) -> &str {
        self.blocks[i].name()
    }

    /// The names of every tensor block `i` reads, in declaration order; an int8 weight's scale follows it.
    pub fn block_tensors(&self, i: usize) -> Vec<String> {
        let all = self.store.tensors();
        self.blocks[i]
            .meta()
            .tensors
            .iter()
            .map(|&t| all[t].name.clone())
            .collect()
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

    /// The most activation bytes a batch of `batch` inputs of [`Model::input_size`] holds at once in any
    /// block (input, output and every intermediate buffer of the block's forward), from the blocks' shapes
    /// alone. An input size some block refuses (a ViT position embedding for another grid) is refused
    /// here with the forward's message, before any image is decoded.
    pub fn activation_bytes(&self, batch: usize) -> Result<u64> {
        self.activation_bytes_at(batch, self.input_size())
    }

    /// [`Model::activation_bytes`] for inputs of `[c, h, w]` (a fully convolutional model takes other
    /// sizes than the one it was trained at).
    pub fn activation_bytes_at(&self, batch: usize, input: [usize; 3]) -> Result<u64> {
        let [c, h, w] = input;
        let mut shape = vec![batch, c, h, w];
        let mut live = 0u64;
        for block in &self.blocks {
            let p = block.plan(&self.store, &shape)?;
            live = live.max(p.live as u64);
            shape = p.output;
        }
        Ok(live * 4)
    }
}

/// What a family's builder needs: the weights, the config, the block being declared, and a record of which
/// tensors the blocks claim, so a checkpoint that holds tensors no block uses (a different architecture) is
/// refused.
pub struct BuildCtx<'a> {
    pub store: &'a Store,
    pub config: &'a ModelConfig,
    path: &'a Path,
    /// Each tensor's index in [`Store::tensors`].
    index: HashMap<&'a str, usize>,
    /// Per tensor of the store: claimed by a block (or skipped as a stale buffer).
    used: Vec<bool>,
    /// The block between `begin_block` and `end_block`.
    open: Option<BlockMeta>,
    /// Set by the builder through [`BuildCtx::classes`].
    num_classes: Option<usize>,
    /// Set by the builder through [`BuildCtx::features_head`].
    features_head: Option<Block>,
}

impl<'a> BuildCtx<'a> {
    fn new(store: &'a Store, config: &'a ModelConfig, path: &'a Path) -> Self {
        let tensors = store.tensors();
        BuildCtx {
            store,
            config,
            path,
            index: tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.as_str(), i))
                .collect(),
            used: vec![false; tensors.len()],
            open: None,
            num_classes: None,
            features_head: None,
        }
    }

    /// An error about this model, naming its path.
    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::Model {
            path: self.path.to_path_buf(),
            msg: msg.into(),
        }
    }

    /// Starts declaring block `name` (timm's module path); every [`BuildCtx::param`] until
    /// [`BuildCtx::end_block`] belongs to it.
    pub fn begin_block(&mut self, name: impl Into<String>) {
        assert!(self.open.is_none(), "begin_block inside an open block");
        self.open = Some(BlockMeta {
            name: name.into(),
            tensors: Vec::new(),
        });
    }

    /// Closes the block opened by [`BuildCtx::begin_block`]: its name and the tensors declared since.
    pub fn end_block(&mut self) -> BlockMeta {
        self.open.take().expect("end_block without begin_block")
    }

    /// What the open block has declared so far: the meta of a block that stops before its remaining
    /// tensors (the head without its classifier).
    pub fn open_meta(&self) -> BlockMeta {
        self.open
            .clone()
            .expect("open_meta outside begin_block / end_block")
    }

    /// Records the head without its classifier (over a meta from [`BuildCtx::open_meta`]), which
    /// [`Model::into_features`] puts in place of the last block.
    pub fn features_head(&mut self, block: Block) {
        self.features_head = Some(block);
    }

    /// The shape of `name`, which must have exactly `N` dimensions, none zero: for reading hyper-parameters
    /// off a tensor before declaring it. Claims nothing.
    pub fn dims<const N: usize>(&self, name: &str) -> Result<[usize; N]> {
        let shape = &self.store.info(name)?.shape;
        match <[usize; N]>::try_from(shape.as_slice()) {
            Ok(dims) if !dims.contains(&0) => Ok(dims),
            _ => Err(self.degenerate(name, shape, N)),
        }
    }

    fn degenerate(&self, name: &str, shape: &[usize], rank: usize) -> Error {
        Error::BadTensor {
            path: self.path.to_path_buf(),
            name: name.into(),
            msg: format!("shape {shape:?}, expected {rank} non-zero dimension(s)"),
        }
    }

    /// Declares a tensor the open block reads and checks its shape (no dimension may be zero). Any tensor
    /// may be F32, F16 or BF16; a weight matrix (`*.weight`, 2 or more dims) may also be int8 with its
    /// scale beside it, declared with it.
    pub fn param(&mut self, name: &str, shape: &[usize]) -> Result<Param> {
        use safetensors::Dtype;
        self.check_shape(name, shape)?;
        if shape.is_empty() || shape.contains(&0) {
            return Err(self.degenerate(name, shape, shape.len().max(1)));
        }
        let t = self.store.info(name)?;
        let matrix = name.ends_with(".weight") && shape.len() >= 2;
        let (scale, colsum) = match t.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => (None, None),
            Dtype::I8 if matrix => {
                let scale = weight::scale_name(name);
                self.store.int8_scale(t, &scale)?;
                let colsum = weight::colsum_name(name);
                let colsum = if self.store.contains(&colsum) {
                    self.int8_colsum(&colsum, t.shape[0])?;
                    Some(self.index[colsum.as_str()])
                } else {
                    None
                };
                (Some(self.index[scale.as_str()]), colsum)
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
        };
        let p = Param {
            index: self.index[name],
            scale,
            colsum,
        };
        let block = self
            .open
            .as_mut()
            .expect("param declared outside begin_block / end_block");
        for i in std::iter::once(p.index).chain(p.scale).chain(p.colsum) {
            block.tensors.push(i);
            self.used[i] = true;
        }
        Ok(p)
    }

    /// Checks an int8 weight's column sums are I32 `[out]` (their values are checked where they are used:
    /// any i32 is a valid sum).
    fn int8_colsum(&self, name: &str, out: usize) -> Result<()> {
        let t = self.store.info(name)?;
        if t.dtype != safetensors::Dtype::I32 {
            return Err(Error::WrongDtype {
                path: self.path.to_path_buf(),
                name: name.into(),
                expected: "I32".into(),
                actual: t.dtype.to_string(),
            });
        }
        if t.shape != [out] {
            return Err(Error::WrongShape {
                path: self.path.to_path_buf(),
                name: name.into(),
                expected: vec![out],
                actual: t.shape.clone(),
            });
        }
        Ok(())
    }

    /// Declares a tensor present in some variants only: `None` when absent, an error when present with the
    /// wrong shape.
    pub fn optional(&mut self, name: &str, shape: &[usize]) -> Result<Option<Param>> {
        if self.store.contains(name) {
            self.param(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Claims a tensor that no forward reads (a stale buffer that is recomputed), checking its shape: it then
    /// neither fails [`BuildCtx::finish`] nor gets paged in.
    pub fn skip(&mut self, name: &str, shape: &[usize]) -> Result<()> {
        self.check_shape(name, shape)?;
        self.used[self.index[name]] = true;
        Ok(())
    }

    fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        let actual = &self.store.info(name)?.shape;
        if actual != shape {
            return Err(Error::WrongShape {
                path: self.path.to_path_buf(),
                name: name.into(),
                expected: shape.to_vec(),
                actual: actual.clone(),
            });
        }
        Ok(())
    }

    /// Records the classes the head produces (the rows of `weight`), refusing a disagreement with
    /// `config.json`'s `num_classes`.
    pub fn classes(&mut self, weight: &str, rows: usize) -> Result<()> {
        if let Some(want) = self.config.num_classes {
            if want != rows {
                return Err(self.err(format!(
                    "config.json says num_classes {want} but {weight} has {rows} rows"
                )));
            }
        }
        self.num_classes = Some(rows);
        Ok(())
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
            .zip(&self.used)
            .filter(|(t, used)| !**used && !t.name.starts_with(PAD_PREFIX))
            .map(|(t, _)| t.name.as_str())
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
    use super::*;

    /// A forward that reads one tensor by handle.
    struct Reads(Param);

    impl Forward for Reads {
        fn forward(&self, w: &Weights, x: Act) -> Result<Act> {
            w.floats(self.0)?;
            Ok(x)
        }

        fn plan(&self, _: &Weights, input: &[usize]) -> Result<Planned> {
            Ok(Planned {
                output: input.to_vec(),
                live: input.iter().product(),
            })
        }
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn vit_tiny() -> Model {
        Model::load(fixture("vit_tiny")).unwrap()
    }

    /// Runs every block of every fixture, f32 and int8 (scales read through their weight's handle), with the
    /// undeclared-read check on: no forward reads outside its block's meta.
    #[test]
    fn every_block_reads_only_what_it_declared() {
        use crate::convert::{convert, Dtype, Layout, Options};
        let tmp = tempfile::tempdir().unwrap();
        for name in ["vit_tiny", "convnext_tiny", "swin_tiny"] {
            let int8 = tmp.path().join(name);
            let opts = Options {
                dtype: Dtype::Int8,
                layout: Layout::Source,
            };
            convert(&fixture(name), &int8, &opts, |_, _| {}).unwrap();
            for path in [fixture(name), int8] {
                let model = Model::load(&path).unwrap();
                let [c, h, w] = model.input_size();
                let x = Act::new(vec![0.5; c * h * w], vec![1, c, h, w]);
                let y = model.forward(x).unwrap();
                assert_eq!(y.shape, [1, model.num_classes], "{}", path.display());
            }
        }
    }

    fn param_of(model: &Model, block: usize, nth: usize) -> Param {
        Param {
            index: model.blocks[block].meta().tensors[nth],
            scale: None,
            colsum: None,
        }
    }

    #[test]
    fn a_block_reads_what_it_declared() {
        let model = vit_tiny();
        let meta = model.blocks[1].meta().clone();
        assert_eq!(meta.name, "blocks.0");
        assert_eq!(model.block_tensors(1)[0], "blocks.0.norm1.weight");
        let x = Act::new(vec![1.0], vec![1]);
        let block = Block::new(meta, Reads(param_of(&model, 1, 0)));
        assert_eq!(block.forward(&model.store, x.clone()).unwrap(), x);
    }

    #[test]
    #[should_panic(expected = "block `blocks.0` read `head.weight`, which it did not declare")]
    fn reading_an_undeclared_tensor_panics() {
        let model = vit_tiny();
        let head = model.blocks.len() - 1;
        let head_weight = (0..model.blocks[head].meta().tensors.len())
            .map(|i| param_of(&model, head, i))
            .find(|p| model.store.tensors()[p.index].name == "head.weight")
            .unwrap();
        let block = Block::new(model.blocks[1].meta().clone(), Reads(head_weight));
        let _ = block.forward(&model.store, Act::new(vec![1.0], vec![1]));
    }

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
