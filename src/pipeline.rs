//! The classify pipeline: inputs (image files, decoded images, preprocessed arrays) are preprocessed for
//! each model as its config.json says, run in batches through the streaming [`Executor`], and ranked per
//! model and for the ensemble. `wstream classify`, `demo` and `profile` are this plus flags and printing;
//! a server or another program calls it the same way, with inputs from memory.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::classify::{combine, labels, softmax, top_k, Ensemble, Ranked};
use crate::error::{Error, Result};
use crate::exec::{BlockRecord, Event, Evict, ExecOptions, Executor, Warning};
use crate::models::{Act, Model};
use crate::npy;
use crate::preprocess::{self, Preprocess};

/// What an input holds.
pub enum Source {
    /// Already preprocessed `[3, h, w]`: used as is by every model, so it must be each model's input size.
    Tensor { chw: Vec<f32>, shape: [usize; 3] },
    /// An image file, decoded when its batch runs, then preprocessed per model.
    Image(PathBuf),
    /// An image already decoded (held in memory), preprocessed per model.
    Decoded(RgbImage),
}

/// One input, and the name its answer carries.
pub struct Item {
    pub name: String,
    pub source: Source,
}

/// One model's answer for one input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelAnswer {
    pub name: String,
    /// The most probable classes, most probable first.
    pub top: Vec<Ranked>,
    /// The raw logits, when [`Options::logits`] asks for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<f32>>,
}

/// The ensemble's answer for one input (with one model, that model's probabilities).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsembleAnswer {
    pub top: Vec<Ranked>,
}

/// Everything known about one input: the JSON line `wstream classify --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub input: String,
    /// The batch's wall time (decoding and preprocessing included) divided by its inputs.
    pub elapsed_ms: f64,
    pub models: Vec<ModelAnswer>,
    pub ensemble: EnsembleAnswer,
}

/// How a [`Pipeline`] runs. Compute threads are the caller's: the blocks run on the current rayon pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Most weight bytes resident at once; `None`: [`crate::exec::default_budget`].
    pub budget: Option<u64>,
    pub evict: Evict,
    /// Inputs [`Pipeline::run`] puts through each block together (each block is paged in once per batch).
    pub batch: usize,
    pub ensemble: Ensemble,
    /// Classes ranked per model and for the ensemble.
    pub top: usize,
    /// Whether answers carry each model's raw logits.
    pub logits: bool,
    /// Most bytes the run's peak RSS may reach (mapped weights, activations, the process's own memory):
    /// batches are split to fit it. `None`: [`default_memory`].
    pub memory: Option<u64>,
    /// Most pixels an image may have (checked from its header, before decoding).
    pub max_pixels: u64,
}

/// The memory limit without [`Options::memory`] and without a cgroup limit.
pub const DEFAULT_MEMORY: u64 = 1 << 30;

/// What the process holds besides weights and activations (code, thread stacks, the GEMM's and the decoder's
/// buffers, labels): VmHWM less the weights, inputs and activations was 6-22 MiB at batch 1 of the Large
/// models (ViT-L the most); the rest is margin.
pub const BASE_MEMORY: u64 = 48 << 20;

/// What the allocator holds beyond the live activations, as a fraction of them: the peak exceeded the
/// summed buffers by up to 1.3 MiB an input on Swin-L alone (whose buffers hold 16.1 MiB an input), and by
/// up to 9 MiB an input for the three Large models in a cgroup until the heap was trimmed between models
/// (490 MiB VmHWM at batch 9, 394 MiB with the trim). Half is the margin.
const ACTIVATION_SLACK_DIVISOR: u64 = 2;

/// The memory limit when none is given: 7/8 of this process's cgroup limit (v1 or v2) when one is set,
/// else [`DEFAULT_MEMORY`]; and where it comes from, for messages. The cgroup also charges the page cache
/// the run reads, the next block's read-ahead included; the eighth left is for it (a run of the three
/// Large models planned for all of a 512 MiB cgroup kept it at its limit, reclaiming cache throughout).
pub fn default_memory() -> (u64, &'static str) {
    match crate::process::cgroup_memory_limit() {
        Some(limit) => (limit - limit / 8, "7/8 of the cgroup's memory limit"),
        None => (DEFAULT_MEMORY, "the default without a cgroup limit"),
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            budget: None,
            evict: Evict::Rss,
            batch: 1,
            ensemble: Ensemble::MeanProb,
            top: 5,
            logits: false,
            memory: None,
            max_pixels: preprocess::MAX_PIXELS,
        }
    }
}

/// One input as each model's `[3, h, w]` input, in model order: borrowed when the input is a tensor.
type Prepared<'i> = Vec<Cow<'i, [f32]>>;

/// One model or an ensemble with everything needed to answer inputs.
pub struct Pipeline {
    models: Vec<Model>,
    labels: Vec<Vec<String>>,
    preprocess: Vec<Preprocess>,
    options: Options,
    /// Inputs per batch: [`Options::batch`], or fewer where that would not fit the memory limit.
    batch: usize,
    /// The executor's weight budget, which the memory limit must also hold.
    budget: u64,
    on_warning: Option<Box<WarningSink>>,
}

/// Where a run's warnings go (the library never prints).
pub type WarningSink = dyn Fn(&Warning) + Send + Sync;

impl Pipeline {
    /// Loads each model ([`Model::load`]) and builds the pipeline over them.
    pub fn load(paths: &[impl AsRef<Path>], options: Options) -> Result<Pipeline> {
        let models = paths.iter().map(Model::load).collect::<Result<Vec<_>>>()?;
        Pipeline::new(models, options)
    }

    /// Refuses, before any work, models that disagree on their classes, a config.json whose preprocessing
    /// cannot work or whose input size a model cannot take, a budget below what the largest block needs,
    /// a memory limit below what one input needs, no model and a batch of 0 inputs. Plans the batches:
    /// [`Options::batch`] inputs, or as many as fit the memory limit (see [`Pipeline::batch`]).
    pub fn new(models: Vec<Model>, options: Options) -> Result<Pipeline> {
        if models.is_empty() {
            return Err(Error::Options("a pipeline needs at least one model".into()));
        }
        if options.batch == 0 {
            return Err(Error::Options(
                "a batch holds at least one input, not 0".into(),
            ));
        }
        if let Some(m) = models
            .iter()
            .find(|m| m.num_classes != models[0].num_classes)
        {
            return Err(Error::Model {
                path: m.store.path().to_path_buf(),
                msg: format!(
                    "models disagree on the number of classes: {} has {}, {} has {}; an ensemble needs the same classes",
                    models[0].name, models[0].num_classes, m.name, m.num_classes
                ),
            });
        }
        let labels = models.iter().map(labels).collect();
        let preprocess = models
            .iter()
            .map(|m| Preprocess::from_config(&m.config, m.store.path()))
            .collect::<Result<Vec<_>>>()?;
        let budget = Executor::new(&models, exec_options(&options))?.budget();
        let batch = plan_batch(&models, budget, &options, options.batch)?;
        Ok(Pipeline {
            models,
            labels,
            preprocess,
            options,
            batch,
            budget,
            on_warning: None,
        })
    }

    /// Inputs [`Pipeline::run`] and [`Pipeline::run_batch`] put through each block together:
    /// [`Options::batch`], or the most that keep the estimated peak RSS within the memory limit.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Hands each warning of a run (a refused read-ahead) to `sink`; without one they are dropped.
    pub fn with_warnings(mut self, sink: impl Fn(&Warning) + Send + Sync + 'static) -> Pipeline {
        self.on_warning = Some(Box::new(sink));
        self
    }

    pub fn models(&self) -> &[Model] {
        &self.models
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Runs `items` in batches of [`Pipeline::batch`], calling `emit` with each input's answer in order.
    /// The first bad input (unreadable image, wrong tensor size) ends the run before its batch runs; the
    /// answers of earlier batches have been emitted. Returns the executor's record of every block run.
    pub fn run<E: From<Error>>(
        &self,
        items: &[Item],
        mut emit: impl FnMut(Answer) -> std::result::Result<(), E>,
    ) -> std::result::Result<Vec<BlockRecord>, E> {
        let executor = Executor::new(&self.models, exec_options(&self.options))?;
        let mut records = Vec::new();
        for batch in items.chunks(self.batch) {
            let start = Instant::now();
            let inputs = batch
                .iter()
                .map(|item| self.prepare(item))
                .collect::<Result<Vec<_>>>()?;
            let names = batch.iter().map(|item| item.name.as_str());
            for answer in self.answer(&executor, names.zip(inputs), start, &mut records)? {
                emit(answer)?;
            }
        }
        Ok(records)
    }

    /// Runs `items` as one batch, whatever [`Options::batch`] says (a server gathers its own batches),
    /// split only where the memory limit requires it ([`Pipeline::batch`]). A bad input gets its error in
    /// its place and the others still run; an error of the run itself (a weight file changed on disk)
    /// fails them all. Returns the answers in `items`' order and the executor's records.
    pub fn run_batch(&self, items: &[Item]) -> Result<(Vec<Result<Answer>>, Vec<BlockRecord>)> {
        let start = Instant::now();
        let mut prepared: Vec<Result<Prepared>> =
            items.iter().map(|item| self.prepare(item)).collect();
        let good: Vec<(&str, Prepared)> = items
            .iter()
            .zip(&mut prepared)
            .filter_map(|(item, p)| {
                Some((item.name.as_str(), p.as_mut().ok().map(std::mem::take)?))
            })
            .collect();
        let mut records = Vec::new();
        let mut answers = Vec::new();
        if !good.is_empty() {
            let executor = Executor::new(&self.models, exec_options(&self.options))?;
            let fit = plan_batch(&self.models, self.budget, &self.options, good.len())?;
            let mut good = good.into_iter();
            loop {
                let part: Vec<_> = good.by_ref().take(fit).collect();
                if part.is_empty() {
                    break;
                }
                answers.extend(self.answer(&executor, part, start, &mut records)?);
            }
        }
        let mut answers = answers.into_iter();
        let results = prepared
            .into_iter()
            .map(|p| match p {
                Ok(_) => Ok(answers.next().expect("one answer per good input")),
                Err(e) => Err(e),
            })
            .collect();
        Ok((results, records))
    }

    /// One input as each model's `[3, h, w]` input: an image decoded once and preprocessed per model, a
    /// tensor checked against the size each model expects.
    fn prepare<'i>(&self, item: &'i Item) -> Result<Prepared<'i>> {
        let loaded;
        let img = match &item.source {
            Source::Tensor { chw, shape } => {
                return self
                    .models
                    .iter()
                    .map(|m| {
                        let want = m.input_size();
                        if *shape != want {
                            return Err(Error::Input {
                                path: item.name.clone().into(),
                                msg: format!("input is {shape:?} but {} expects {want:?}", m.name),
                            });
                        }
                        Ok(Cow::Borrowed(chw.as_slice()))
                    })
                    .collect();
            }
            Source::Image(path) => {
                loaded = preprocess::load_rgb_limited(path, self.options.max_pixels)?;
                &loaded
            }
            Source::Decoded(img) => img,
        };
        Ok(self
            .preprocess
            .iter()
            .map(|pre| Cow::Owned(pre.apply(img)))
            .collect())
    }

    /// Runs prepared inputs as one batch and ranks the outputs; `start` is when the batch began.
    fn answer<'i>(
        &self,
        executor: &Executor,
        batch: impl IntoIterator<Item = (&'i str, Prepared<'i>)>,
        start: Instant,
        records: &mut Vec<BlockRecord>,
    ) -> Result<Vec<Answer>> {
        let (names, inputs): (Vec<&str>, Vec<Prepared>) = batch.into_iter().unzip();
        let n = names.len();
        let acts = self
            .models
            .iter()
            .enumerate()
            .map(|(mi, m)| {
                let [c, h, w] = m.input_size();
                let mut data = Vec::with_capacity(n * c * h * w);
                for input in &inputs {
                    data.extend_from_slice(&input[mi]);
                }
                Act::new(data, vec![n, c, h, w])
            })
            .collect();
        drop(inputs);
        let (outputs, recs) = executor.run_observed(acts, |event| {
            if let (Event::Warning(w), Some(sink)) = (event, &self.on_warning) {
                sink(w);
            }
        })?;
        records.extend(recs);
        // The executor checked each file after each block read it; once more before anything is
        // answered, so no answer is printed from weights that are not the ones opened.
        for m in &self.models {
            m.store.check_unchanged()?;
        }
        let classes = self.models[0].num_classes;
        for (m, o) in self.models.iter().zip(&outputs) {
            for (bi, name) in names.iter().enumerate() {
                let logits = &o.data[bi * classes..(bi + 1) * classes];
                if let Some((class, v)) = logits.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                    // A NaN would rank as class 0 with probability NaN: an answer that looks like one.
                    return Err(Error::Model {
                        path: m.store.path().to_path_buf(),
                        msg: format!(
                            "{} computed logit {v} for class {class} of input {name}: its weights \
                             hold non-finite values or overflow; no answer is given",
                            m.name
                        ),
                    });
                }
            }
        }
        let elapsed_ms = start.elapsed().as_secs_f64() * 1e3 / n as f64;
        let k = self.options.top;
        Ok(names
            .into_iter()
            .enumerate()
            .map(|(bi, name)| {
                let logits: Vec<&[f32]> = outputs
                    .iter()
                    .map(|o| &o.data[bi * classes..(bi + 1) * classes])
                    .collect();
                let models = self
                    .models
                    .iter()
                    .zip(&logits)
                    .zip(&self.labels)
                    .map(|((m, l), names)| ModelAnswer {
                        name: m.name.clone(),
                        top: top_k(&softmax(l), k, names),
                        logits: self.options.logits.then(|| l.to_vec()),
                    })
                    .collect();
                Answer {
                    input: name.to_string(),
                    elapsed_ms,
                    models,
                    ensemble: EnsembleAnswer {
                        top: top_k(&combine(&logits, self.options.ensemble), k, &self.labels[0]),
                    },
                }
            })
            .collect())
    }
}

/// The estimated peak RSS of running `n` inputs per batch, in bytes, and of it what cannot be paged out
/// (the process's own memory and the activations; the mapped weights can): [`BASE_MEMORY`], the weight
/// budget, every model's `[n, 3, h, w]` input (all are built before the first block runs) and the largest
/// activations of any block ([`Model::activation_bytes`]) with the allocator's slack. Also the model whose
/// activations are largest. Measured against it (VmHWM, one model, batch 1 / 8 / 32): ViT-L 129 / 200 / 457
/// MiB for 160 / 269 / 642 estimated, ConvNeXt-L 174 / 282 / 709 for 217 / 389 / 981, Swin-L 185 / 309 /
/// 736 for 233 / 389 / 997; the three Large models at batch 9 in a 512 MiB cgroup 394 for 440.
pub fn estimate(models: &[Model], budget: u64, n: usize) -> Result<(u64, u64, usize)> {
    let mut inputs = 0u64;
    let (mut acts, mut largest) = (0u64, 0);
    for (i, m) in models.iter().enumerate() {
        inputs += 4 * (n * m.input_size().iter().product::<usize>()) as u64;
        let a = m.activation_bytes(n)?;
        if a > acts {
            (acts, largest) = (a, i);
        }
    }
    // Building the batch's inputs holds them twice (per input and gathered); running holds them once
    // beside the largest block's activations.
    let acts = acts + acts / ACTIVATION_SLACK_DIVISOR;
    let anon = BASE_MEMORY + (2 * inputs).max(inputs + acts);
    Ok((anon + budget, anon, largest))
}

/// Inputs per batch: at most `want`, and the most whose [`estimate`] fits the
/// memory limit. One input always runs when its anonymous memory fits (the kernel can page mapped weights
/// out under a cgroup limit: that is how one input of the three Large models runs in 54 MiB); when it
/// does not, the limit is refused with the number.
fn plan_batch(models: &[Model], budget: u64, options: &Options, want: usize) -> Result<usize> {
    let (limit, whence) = match options.memory {
        Some(m) => (m, "--memory"),
        None => default_memory(),
    };
    let (_, anon, largest) = estimate(models, budget, 1)?;
    if anon > limit {
        let m = &models[largest];
        return Err(Error::Memory {
            path: m.store.path().to_path_buf(),
            model: m.name.clone(),
            needed: anon,
            limit,
            whence: whence.into(),
        });
    }
    // The estimate grows with n: the largest n that fits, by bisection over 1..=want.
    let (mut lo, mut hi) = (1, want.max(1));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if estimate(models, budget, mid)?.0 <= limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}

fn exec_options(options: &Options) -> ExecOptions {
    ExecOptions {
        budget: options.budget,
        evict: options.evict,
        ..ExecOptions::default()
    }
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().as_str(),
            "jpg" | "jpeg" | "png" | "webp" | "bmp" | "tif" | "tiff" | "gif"
        )
    })
}

/// Expands paths into inputs: a folder into its images (sorted; .jpg/.jpeg/.png/.webp/.bmp/.tif/.tiff/.gif), a .npy array of
/// `[3, H, W]` or `[N, 3, H, W]` into its images (named `file[i]` when N > 1), anything else into an image
/// file read when its batch runs.
pub fn read_inputs(paths: &[impl AsRef<Path>]) -> Result<Vec<Item>> {
    // The OS error goes into the message, not a source: printed with its causes it would say it twice.
    let io = |path: &Path, e: std::io::Error| Error::Input {
        path: path.into(),
        msg: e.to_string(),
    };
    let mut items = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| io(path, e))?;
        if meta.is_dir() {
            let mut images: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            if images.is_empty() {
                return Err(Error::Input {
                    path: path.into(),
                    msg:
                        "folder holds no images (.jpg, .jpeg, .png, .webp, .bmp, .tif, .tiff, .gif)"
                            .into(),
                });
            }
            images.sort();
            items.extend(images.into_iter().map(|p| Item {
                name: p.display().to_string(),
                source: Source::Image(p),
            }));
        } else if path.extension().is_some_and(|e| e == "npy") {
            items.extend(read_npy(path)?);
        } else {
            items.push(Item {
                name: path.display().to_string(),
                source: Source::Image(path.to_path_buf()),
            });
        }
    }
    Ok(items)
}

fn read_npy(path: &Path) -> Result<Vec<Item>> {
    let mut array = npy::NpyF32::open(path)?;
    let name = path.display().to_string();
    let (n, h, w) = match *array.shape() {
        [3, h, w] => (None, h, w),
        [n, 3, h, w] => (Some(n), h, w),
        ref other => {
            return Err(Error::Input {
                path: path.into(),
                msg: format!("array of shape {other:?} is not a [3, H, W] or [N, 3, H, W] image"),
            })
        }
    };
    // An array with no image in it would otherwise classify nothing and exit 0.
    if n == Some(0) || h == 0 || w == 0 {
        return Err(Error::Input {
            path: path.into(),
            msg: format!("array of shape {:?} holds no image", array.shape()),
        });
    }
    // Each item's values are read into its own vector, so the array is never in memory twice.
    (0..n.unwrap_or(1))
        .map(|i| {
            Ok(Item {
                name: if n.unwrap_or(1) == 1 {
                    name.clone()
                } else {
                    format!("{name}[{i}]")
                },
                source: Source::Tensor {
                    chw: array.read(3 * h * w)?,
                    shape: [3, h, w],
                },
            })
        })
        .collect()
}
