//! The classify pipeline: inputs (image files, decoded images, preprocessed arrays) are preprocessed for
//! each model as its config.json says, run in batches through the streaming [`Executor`], and ranked per
//! model and for the ensemble. `wstream classify`, `demo` and `profile` are this plus flags and printing;
//! a server or another program calls it the same way, with inputs from memory.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::classify::{combine, labels, softmax, top_k, Ensemble, LabelType, Ranked};
use crate::error::{Error, Result};
use crate::exec::{BlockRecord, Event, Evict, ExecOptions, Executor, Warning};
use crate::models::{Act, Model};
use crate::npy;
use crate::preprocess::{self, Preprocess};
use crate::transform::{Origin, Overrides, Transform};

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
    /// The model's name, made distinct within the pipeline ([`distinct_names`]).
    pub name: String,
    /// The most probable classes, most probable first (none with [`Output::Features`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<Ranked>,
    /// The raw logits, when [`Options::logits`] asks for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<f32>>,
    /// The pooled pre-logits embedding, with [`Output::Features`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<f32>>,
    /// The model's weights are random ([`Model::synthetic`]): its classes mean nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synthetic: bool,
    /// The transform that made this model's input from an image; absent for an input given as a tensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<Transform>,
}

/// The ensemble's answer for one input (with one model, that model's probabilities); empty with
/// [`Output::Features`], where there is nothing to combine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnsembleAnswer {
    pub top: Vec<Ranked>,
}

impl EnsembleAnswer {
    pub fn is_empty(&self) -> bool {
        self.top.is_empty()
    }
}

/// What each model answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Output {
    /// The top classes with their softmax probabilities.
    #[default]
    Prob,
    /// The top classes with their raw logits too ([`Ranked::logit`]); the ensemble's stay probabilities.
    Logit,
    /// The pooled pre-logits embedding (timm's `forward_head(x, pre_logits=True)`) instead of classes: the
    /// classifier is not run, nor its weights read, and there is no ensemble answer.
    Features,
}

/// Everything known about one input: the JSON line `wstream classify --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub input: String,
    /// The batch's wall time (decoding and preprocessing included) divided by its inputs.
    pub elapsed_ms: f64,
    pub models: Vec<ModelAnswer>,
    #[serde(default, skip_serializing_if = "EnsembleAnswer::is_empty")]
    pub ensemble: EnsembleAnswer,
}

/// `ms` to the microsecond: finer digits are float noise (`573.1404650000001`), not timing, and a
/// value rounded this way prints as its three decimals at most in JSON.
pub fn round_ms(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

/// How a [`Pipeline`] runs. Compute threads are the caller's: the blocks run on the current rayon pool.
#[derive(Debug, Clone, Copy, PartialEq)]
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
    /// Classes (with probabilities or logits) or features.
    pub output: Output,
    /// Changes to every model's eval transform (timm's `--img-size`, `--crop-pct`, ...); by default each
    /// model's config decides, its `test_input_size` / `test_crop_pct` included.
    pub transform: Overrides,
    /// What the answers' labels say.
    pub label_type: LabelType,
    /// Whether int8 weights are multiplied in int8 with per-token quantized activations (W8A8, where the
    /// CPU has AVX512-VNNI; the layers a model keeps wider excepted) rather than widened to f32 (the
    /// weight-only path, `false`). No effect on other dtypes.
    pub int8_activations: bool,
    /// Whether the run takes the records' readings (page-cache residency, storage reads, memory after each
    /// block); see [`ExecOptions::readings`].
    pub readings: bool,
}

/// The memory limit without [`Options::memory`] and without a cgroup limit.
pub const DEFAULT_MEMORY: u64 = 1 << 30;

/// What the process holds besides weights and activations (code, thread stacks, the GEMM's and the decoder's
/// buffers, labels): peak RssAnon less the inputs and activations was 15-22 MiB at batch 1 of the Large
/// models (f32 Swin-L the most); the rest is margin.
pub const BASE_MEMORY: u64 = 32 << 20;

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
            output: Output::Prob,
            transform: Overrides::default(),
            label_type: LabelType::default(),
            int8_activations: true,
            readings: true,
        }
    }
}

/// One input as each model's `[3, h, w]` input, in model order: borrowed when the input is a tensor.
type Prepared<'i> = Vec<Cow<'i, [f32]>>;

/// One model or an ensemble with everything needed to answer inputs.
pub struct Pipeline {
    models: Vec<Model>,
    labels: Vec<Vec<String>>,
    transforms: Vec<Transform>,
    preprocess: Vec<Preprocess>,
    options: Options,
    /// Inputs per batch: [`Options::batch`], or fewer where that would not fit the memory limit.
    batch: usize,
    /// The executor's weight budget, which the memory limit must also hold.
    budget: u64,
    on_warning: Option<Box<WarningSink>>,
    on_block: Option<Box<BlockSink>>,
}

/// Where a run's warnings go (the library never prints).
pub type WarningSink = dyn Fn(&Warning) + Send + Sync;

/// Called each time a block of a run has run, for a progress display.
pub type BlockSink = dyn Fn() + Send + Sync;

impl Pipeline {
    /// Loads each model ([`Model::load`]) and builds the pipeline over them.
    pub fn load(paths: &[impl AsRef<Path>], options: Options) -> Result<Pipeline> {
        let models = paths.iter().map(Model::load).collect::<Result<Vec<_>>>()?;
        Pipeline::new(models, options)
    }

    /// Resolves each model's transform ([`Transform::resolve`] over [`Options::transform`]) and labels
    /// ([`labels`]). Refuses, before any work, models that disagree on their classes, a config.json whose
    /// preprocessing or labels cannot work, an input size (the config's, its test size or
    /// [`Overrides::img_size`]) a model cannot take, a budget below what the largest block needs,
    /// a memory limit below what one input needs, no model, a batch of 0 inputs and a `WSTREAM_KERNELS`
    /// value that means nothing ([`check_kernels_var`](crate::ops::check_kernels_var)). Plans the batches:
    /// [`Options::batch`] inputs, or as many as fit the memory limit (see [`Pipeline::batch`]).
    pub fn new(models: Vec<Model>, options: Options) -> Result<Pipeline> {
        crate::ops::check_kernels_var()?;
        let mut models = if options.output == Output::Features {
            models
                .into_iter()
                .map(Model::into_features)
                .collect::<Result<Vec<_>>>()?
        } else {
            models
        };
        distinct_names(&mut models);
        for m in &mut models {
            m.int8_activations = options.int8_activations;
        }
        if models.is_empty() {
            return Err(Error::Options("a pipeline needs at least one model".into()));
        }
        if options.batch == 0 {
            return Err(Error::Options(
                "a batch holds at least one input, not 0".into(),
            ));
        }
        // Features are not combined, so their models need not share classes.
        if let Some(m) = models
            .iter()
            .find(|m| m.num_classes != models[0].num_classes && options.output != Output::Features)
        {
            return Err(Error::Model {
                path: m.store.path().to_path_buf(),
                msg: format!(
                    "models disagree on the number of classes: {} has {}, {} has {}; an ensemble needs the same classes",
                    models[0].name, models[0].num_classes, m.name, m.num_classes
                ),
            });
        }
        let labels = models
            .iter()
            .map(|m| labels(m, options.label_type))
            .collect::<Result<Vec<_>>>()?;
        let transforms = models
            .iter()
            .map(|m| Transform::resolve(&m.config, &options.transform, m.store.path()))
            .collect::<Result<Vec<_>>>()?;
        for (m, t) in models.iter().zip(&transforms) {
            check_input_size(m, t)?;
        }
        let preprocess = transforms.iter().map(Transform::preprocess).collect();
        let sizes: Vec<[usize; 3]> = transforms.iter().map(|t| t.input_size).collect();
        let budget = Executor::new(&models, exec_options(&options))?.budget();
        let batch = plan_batch(&models, &sizes, budget, &options, options.batch)?;
        Ok(Pipeline {
            models,
            labels,
            transforms,
            preprocess,
            options,
            batch,
            budget,
            on_warning: None,
            on_block: None,
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

    /// What happens to a block's pages after it ran, for the runs from now on.
    pub fn with_evict(mut self, evict: Evict) -> Pipeline {
        self.options.evict = evict;
        self
    }

    /// Calls `sink` after each block a batch runs through ([`Pipeline::blocks`] per batch).
    pub fn with_block_progress(mut self, sink: impl Fn() + Send + Sync + 'static) -> Pipeline {
        self.on_block = Some(Box::new(sink));
        self
    }

    /// The blocks one batch runs through: those of every model.
    pub fn blocks(&self) -> usize {
        self.models.iter().map(|m| m.blocks.len()).sum()
    }

    pub fn models(&self) -> &[Model] {
        &self.models
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Each model's eval transform (in model order): what an image goes through before that model.
    pub fn transforms(&self) -> &[Transform] {
        &self.transforms
    }

    /// The `[3, h, w]` input model `i` runs on: its transform's size, which need not be the size the
    /// model was trained at (`test_input_size`, `--img-size`).
    pub fn input_size(&self, i: usize) -> [usize; 3] {
        self.transforms[i].input_size
    }

    fn sizes(&self) -> Vec<[usize; 3]> {
        self.transforms.iter().map(|t| t.input_size).collect()
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
        let mut run = RunClock::default();
        for batch in items.chunks(self.batch) {
            let start = Instant::now();
            let inputs = batch
                .iter()
                .map(|item| self.prepare(item))
                .collect::<Result<Vec<_>>>()?;
            let names = batch.iter().map(|item| item.name.as_str());
            let answers = self.answer(
                &executor,
                names.zip(inputs),
                start,
                &mut run,
                &mut records,
                &|| false,
            )?;
            for answer in answers {
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
        self.run_batch_until(items, &|| false)
    }

    /// [`Pipeline::run_batch`], asking `stop` before each block ([`Executor::run_until`]): once it says
    /// yes the run ends with [`Error::Interrupted`].
    pub fn run_batch_until(
        &self,
        items: &[Item],
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<(Vec<Result<Answer>>, Vec<BlockRecord>)> {
        self.run_batch_readings(items, stop, self.options.readings)
    }

    /// [`Pipeline::run_batch_until`], taking the records' readings as `readings` says rather than as
    /// [`Options::readings`] does: for a caller that reports them for some runs only (Python's
    /// `profile=True`).
    pub fn run_batch_readings(
        &self,
        items: &[Item],
        stop: &(dyn Fn() -> bool + Sync),
        readings: bool,
    ) -> Result<(Vec<Result<Answer>>, Vec<BlockRecord>)> {
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
            let executor = Executor::new(
                &self.models,
                ExecOptions {
                    readings,
                    ..exec_options(&self.options)
                },
            )?;
            let fit = plan_batch(
                &self.models,
                &self.sizes(),
                self.budget,
                &self.options,
                good.len(),
            )?;
            let mut good = good.into_iter();
            let mut run = RunClock::default();
            loop {
                let part: Vec<_> = good.by_ref().take(fit).collect();
                if part.is_empty() {
                    break;
                }
                answers.extend(self.answer(
                    &executor,
                    part,
                    start,
                    &mut run,
                    &mut records,
                    stop,
                )?);
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

    /// Runs `n` preprocessed inputs laid out as one `[n, 3, h, w]` array (row-major, every model's input
    /// size) and returns each model's raw output in model order: `[n, classes]` logits, or `[n, features]`
    /// with [`Output::Features`]; nothing is ranked or combined. For programs that work on the numbers
    /// themselves ([`crate::candle`]). Runs in batches of [`Pipeline::batch`] inputs, as
    /// [`Pipeline::run`] does; the executor owns the activations it runs on, so each batch of `x` is copied
    /// once per model, and the outputs of a single batch are returned without a copy.
    pub fn run_array(&self, x: &[f32], n: usize) -> Result<Vec<Act>> {
        let sizes = self.sizes();
        let input_err = |msg: String| Error::Input {
            path: "input array".into(),
            msg,
        };
        if let Some((i, s)) = sizes.iter().enumerate().find(|(_, s)| **s != sizes[0]) {
            return Err(input_err(format!(
                "{} takes {:?} inputs but {} takes {s:?}: one array cannot feed both; run them apart",
                self.models[0].name, sizes[0], self.models[i].name
            )));
        }
        let [c, h, w] = sizes[0];
        let per = c * h * w;
        if n == 0 || x.len() != n * per {
            return Err(input_err(format!(
                "{} values for {n} inputs of {:?}: expected {} (n * {per}), and at least one input",
                x.len(),
                sizes[0],
                n * per
            )));
        }
        let executor = Executor::new(&self.models, exec_options(&self.options))?;
        let mut outs: Vec<Act> = Vec::new();
        for (bi, part) in x.chunks(self.batch * per).enumerate() {
            let b = part.len() / per;
            let acts = self
                .models
                .iter()
                .map(|_| Act::new(part.to_vec(), vec![b, c, h, w]))
                .collect();
            let (outputs, _) = executor.run_observed(acts, |event| match event {
                Event::Warning(w) => {
                    if let Some(sink) = &self.on_warning {
                        sink(w);
                    }
                }
                Event::BlockEnd(_) => {
                    if let Some(sink) = &self.on_block {
                        sink();
                    }
                }
                _ => {}
            })?;
            for (m, o) in self.models.iter().zip(&outputs) {
                m.store.check_unchanged()?;
                if let Some(at) = o.data.iter().position(|v| !v.is_finite()) {
                    let width = o.shape[1];
                    return Err(Error::Model {
                        path: m.store.path().to_path_buf(),
                        msg: format!(
                            "{} computed {} at index {} of input {}: its weights hold non-finite \
                             values or overflow; no output is given",
                            m.name,
                            o.data[at],
                            at % width,
                            bi * self.batch + at / width
                        ),
                    });
                }
            }
            if outs.is_empty() {
                outs = outputs;
            } else {
                for (all, o) in outs.iter_mut().zip(outputs) {
                    all.shape[0] += o.shape[0];
                    all.data.extend_from_slice(&o.data);
                }
            }
        }
        Ok(outs)
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
                    .zip(&self.transforms)
                    .map(|(m, t)| {
                        let want = t.input_size;
                        if *shape != want {
                            return Err(Error::Input {
                                path: item.name.clone().into(),
                                msg: match t.from.input_size {
                                    // A size other than the config's says where it came from.
                                    Origin::Test | Origin::Flag => format!(
                                        "input is {shape:?} but {} expects {want:?} (from {})",
                                        m.name,
                                        size_whence(t)
                                    ),
                                    _ => format!(
                                        "input is {shape:?} but {} expects {want:?}",
                                        m.name
                                    ),
                                },
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

    /// Runs prepared inputs as one batch and ranks the outputs; `start` is when the batch began. Its block
    /// records go to `records`, numbered and timed within the run by `run`.
    fn answer<'i>(
        &self,
        executor: &Executor,
        batch: impl IntoIterator<Item = (&'i str, Prepared<'i>)>,
        start: Instant,
        run: &mut RunClock,
        records: &mut Vec<BlockRecord>,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<Answer>> {
        let (names, inputs): (Vec<&str>, Vec<Prepared>) = batch.into_iter().unzip();
        let n = names.len();
        // A tensor input is borrowed as it is; an image went through each model's transform.
        let from_image: Vec<bool> = inputs
            .iter()
            .map(|i| i.first().is_some_and(|x| matches!(x, Cow::Owned(_))))
            .collect();
        let acts = (0..self.models.len())
            .map(|mi| {
                let [c, h, w] = self.input_size(mi);
                let mut data = Vec::with_capacity(n * c * h * w);
                for input in &inputs {
                    data.extend_from_slice(&input[mi]);
                }
                Act::new(data, vec![n, c, h, w])
            })
            .collect();
        drop(inputs);
        // The executor times a batch from its own start; a run's batches share the first one's.
        let began = run.began.get_or_insert_with(Instant::now).elapsed();
        let (outputs, mut recs) = executor.run_until(acts, stop, |event| match event {
            Event::Warning(w) => {
                if let Some(sink) = &self.on_warning {
                    sink(w);
                }
            }
            Event::BlockEnd(_) => {
                if let Some(sink) = &self.on_block {
                    sink();
                }
            }
            _ => {}
        })?;
        for r in &mut recs {
            r.batch = run.batches;
            r.first_input = run.inputs;
            r.start += began;
            r.end += began;
        }
        run.batches += 1;
        run.inputs += n;
        records.extend(recs);
        // The executor checked each file after each block read it; once more before anything is
        // answered, so no answer is printed from weights that are not the ones opened.
        for m in &self.models {
            m.store.check_unchanged()?;
        }
        // Each model's output row: its classes' logits, or its features.
        let what = match self.options.output {
            Output::Features => "feature",
            Output::Prob | Output::Logit => "logit",
        };
        for (m, o) in self.models.iter().zip(&outputs) {
            for (bi, name) in names.iter().enumerate() {
                let logits = row(o, bi);
                if let Some((class, v)) = logits.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                    // A NaN would rank as class 0 with probability NaN: an answer that looks like one.
                    return Err(Error::Model {
                        path: m.store.path().to_path_buf(),
                        msg: format!(
                            "{} computed {what} {v} for {} {class} of input {name}: its weights \
                             hold non-finite values or overflow; no answer is given",
                            m.name,
                            if what == "logit" { "class" } else { "index" },
                        ),
                    });
                }
            }
        }
        let elapsed_ms = round_ms(start.elapsed().as_secs_f64() * 1e3 / n as f64);
        let k = self.options.top;
        let output = self.options.output;
        Ok(names
            .into_iter()
            .enumerate()
            .map(|(bi, name)| {
                let rows: Vec<&[f32]> = outputs.iter().map(|o| row(o, bi)).collect();
                let models = self
                    .models
                    .iter()
                    .zip(&rows)
                    .zip(&self.labels)
                    .zip(&self.transforms)
                    .map(|(((m, l), names), t)| {
                        let (top, features) = match output {
                            Output::Features => (Vec::new(), Some(l.to_vec())),
                            Output::Prob => (top_k(&softmax(l), k, names), None),
                            Output::Logit => {
                                let mut top = top_k(&softmax(l), k, names);
                                for r in &mut top {
                                    r.logit = Some(l[r.class]);
                                }
                                (top, None)
                            }
                        };
                        ModelAnswer {
                            name: m.name.clone(),
                            top,
                            logits: (self.options.logits && output != Output::Features)
                                .then(|| l.to_vec()),
                            features,
                            synthetic: m.synthetic,
                            preprocess: from_image[bi].then(|| t.clone()),
                        }
                    })
                    .collect();
                let ensemble = match output {
                    Output::Features => EnsembleAnswer::default(),
                    Output::Prob | Output::Logit => EnsembleAnswer {
                        top: top_k(&combine(&rows, self.options.ensemble), k, &self.labels[0]),
                    },
                };
                Answer {
                    input: name.to_string(),
                    elapsed_ms,
                    models,
                    ensemble,
                }
            })
            .collect())
    }
}

/// Makes the models' names distinct, deterministically, so answers can be told apart: where several share a
/// name, those whose weights are stored in another dtype than the first of them get it as a suffix
/// (`convnext_large[int8]` beside `convnext_large`), and any still equal get their position among the
/// models sharing that name (`convnext_large[2]`, a bare file beside its folder). A unique name is kept.
pub fn distinct_names(models: &mut [Model]) {
    let dtypes: Vec<String> = models.iter().map(weight_dtype).collect();
    let base: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    let mut names = base.clone();
    for (i, name) in base.iter().enumerate() {
        let same: Vec<usize> = (0..models.len()).filter(|&j| base[j] == *name).collect();
        if same.len() < 2 {
            continue;
        }
        if dtypes[i] != dtypes[same[0]] {
            names[i] = format!("{name}[{}]", dtypes[i]);
        }
    }
    let tagged = names.clone();
    for (i, name) in tagged.iter().enumerate() {
        let same: Vec<usize> = (0..models.len()).filter(|&j| tagged[j] == *name).collect();
        let pos = same.iter().position(|&j| j == i).unwrap_or(0);
        if pos > 0 {
            names[i] = format!("{name}[{}]", pos + 1);
        }
    }
    for (m, n) in models.iter_mut().zip(names) {
        m.name = n;
    }
}

/// The dtype holding most of a model's bytes, in `convert`'s spelling (`f32`, `f16`, `bf16`, `int8`).
fn weight_dtype(m: &Model) -> String {
    let mut bytes: Vec<(String, u64)> = Vec::new();
    for t in m.store.tensors() {
        let d = match t.dtype {
            safetensors::Dtype::I8 => "int8".to_string(),
            other => other.to_string().to_lowercase(),
        };
        let n = t.shape.iter().product::<usize>() as u64 * t.dtype.bitsize() as u64 / 8;
        match bytes.iter_mut().find(|(k, _)| *k == d) {
            Some((_, b)) => *b += n,
            None => bytes.push((d, n)),
        }
    }
    bytes
        .into_iter()
        .max_by_key(|&(_, b)| b)
        .map_or_else(|| "f32".into(), |(d, _)| d)
}

/// Where a run is: when its first batch began, how many batches and inputs have run.
#[derive(Default)]
struct RunClock {
    began: Option<Instant>,
    batches: usize,
    inputs: usize,
}

/// The estimated peak RSS of running `n` inputs per batch, in bytes, and of it what cannot be paged out
/// (the process's own memory and the activations; the mapped weights can): [`BASE_MEMORY`], the weight
/// budget, every model's `[n, 3, h, w]` input (all are built before the first block runs) and the largest
/// activations of any block ([`Model::activation_bytes`]) with the allocator's slack. Also the model whose
/// activations are largest. The anonymous part against the peak RssAnon measured at batch 8 (f32, 2
/// threads, `tools/peak_anon.py`): ViT-L 63.2 MiB for 78.0 estimated, ConvNeXt-L 72.8 (60 in some runs, see
/// tests/memory.rs) for 88.4, Swin-L 57.4 for 88.4.
pub fn estimate(models: &[Model], budget: u64, n: usize) -> Result<(u64, u64, usize)> {
    let sizes: Vec<[usize; 3]> = models.iter().map(Model::input_size).collect();
    estimate_at(models, &sizes, budget, n)
}

/// [`estimate`] with model `i` running on inputs of `sizes[i]` (its resolved transform's size).
pub fn estimate_at(
    models: &[Model],
    sizes: &[[usize; 3]],
    budget: u64,
    n: usize,
) -> Result<(u64, u64, usize)> {
    let mut inputs = 0u64;
    let (mut acts, mut largest) = (0u64, 0);
    for (i, (m, &size)) in models.iter().zip(sizes).enumerate() {
        inputs += 4 * (n * size.iter().product::<usize>()) as u64;
        let a = m.activation_bytes_at(n, size)?;
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
fn plan_batch(
    models: &[Model],
    sizes: &[[usize; 3]],
    budget: u64,
    options: &Options,
    want: usize,
) -> Result<usize> {
    let (limit, whence) = match options.memory {
        Some(m) => (m, "--memory"),
        None => default_memory(),
    };
    let (_, anon, largest) = estimate_at(models, sizes, budget, 1)?;
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
        if estimate_at(models, sizes, budget, mid)?.0 <= limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}

/// Input `bi`'s row of a model's `[batch, width]` output: its classes' logits, or its features.
fn row(o: &Act, bi: usize) -> &[f32] {
    let width = o.shape[1];
    &o.data[bi * width..(bi + 1) * width]
}

/// Refuses a transform whose input size the model cannot take (ViT's position embedding and Swin's windows
/// are fixed at one size; timm refuses those inputs too), saying where the size came from.
fn check_input_size(m: &Model, t: &Transform) -> Result<()> {
    let trained = m.input_size();
    match m.activation_bytes_at(1, t.input_size) {
        Err(Error::InputShape { path, msg }) if t.input_size != trained => Err(Error::InputShape {
            path,
            msg: format!(
                "{msg}; the input size {:?} comes from {}, and this {} model takes only the size \
                 it was built for, {trained:?} (timm refuses other sizes too){}",
                t.input_size,
                size_whence(t),
                m.family.name(),
                match t.from.input_size {
                    Origin::Test => "; run it at its train size with --use-train-size",
                    _ => "",
                }
            ),
        }),
        r => r.map(|_| ()),
    }
}

/// Where a transform's input size came from, in words for messages.
fn size_whence(t: &Transform) -> String {
    t.from.input_size.describe("input_size", "--img-size")
}

fn exec_options(options: &Options) -> ExecOptions {
    ExecOptions {
        budget: options.budget,
        evict: options.evict,
        readings: options.readings,
        ..ExecOptions::default()
    }
}

/// Expands paths into inputs: a folder into the images under it ([`crate::inputs::walk`]: recursive,
/// natural order; what it skips is dropped here, a caller that reports it calls `walk` itself), each file
/// as [`file_items`] says.
pub fn read_inputs(paths: &[impl AsRef<Path>]) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for path in crate::inputs::walk(paths)?.files {
        items.extend(file_items(&path)?);
    }
    Ok(items)
}

/// One file's inputs: a .npy array of `[3, H, W]` or `[N, 3, H, W]` into its images (named `file[i]` when
/// N > 1), read now; anything else an image file read when its batch runs.
pub fn file_items(path: &Path) -> Result<Vec<Item>> {
    if path.extension().is_some_and(|e| e == "npy") {
        read_npy(path)
    } else {
        Ok(vec![Item {
            name: path.display().to_string(),
            source: Source::Image(path.to_path_buf()),
        }])
    }
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
