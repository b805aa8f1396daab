//! `import wstream` (the `python` feature, built by maturin from pyproject.toml): the library's pipeline
//! behind timm's habits. `create_model` resolves a path or hub id as the CLI does ([`hub::locate`]), a
//! model is a one-model [`Pipeline`] (a second one with [`Output::Features`] for `forward_features`), an
//! `Ensemble` a pipeline over several, and `transform` is the pipeline's own [`Transform`]: nothing here
//! preprocesses or computes by itself.
//!
//! Every call runs with the interpreter's lock released, on a thread of the model's compute pool; the
//! calling thread waits for it and, every [`SIGNAL_POLL`], takes the lock back for a moment to let Python
//! run its signal handlers. A Ctrl-C (KeyboardInterrupt from the handler) makes the run stop before its next
//! block ([`Pipeline::run_batch_until`]), so a long call ends within a block's time.
//!
//! Arrays in: float32 of shape `[N, 3, H, W]`, a NumPy array or anything `numpy.asarray` takes (the buffer
//! protocol, `__array__`, a CPU `torch.Tensor`), without a conversion copy when it is C-contiguous; a
//! non-contiguous array is copied in logical order; another dtype is refused (as timm's float weights
//! refuse a double input) rather than silently rounded.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use numpy::{
    PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyException, PyKeyboardInterrupt, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::classify::{combine, Ensemble as Combine};
use crate::error::Error as WsError;
use crate::exec::{BlockRecord, Evict};
use crate::hub;
use crate::models::CONFIG_KEY;
use crate::pipeline::{Answer, Item, Options, Output, Pipeline, Source};
use crate::preprocess;
use crate::transform::{Overrides, Transform};

pyo3::create_exception!(
    wstream,
    Error,
    PyException,
    "Any wstream failure; the message is the CLI's one line."
);
pyo3::create_exception!(
    wstream,
    FileError,
    Error,
    "A weights, config or input file that cannot be read (missing, truncated, changed on disk), or a hub \
     id not in the local cache."
);
pyo3::create_exception!(
    wstream,
    ModelError,
    Error,
    "Weights or a config that do not make a model wstream runs, or that computed non-finite values."
);
pyo3::create_exception!(
    wstream,
    InputError,
    Error,
    "An input (array, image) or option that does not fit the model."
);
pyo3::create_exception!(
    wstream,
    BudgetError,
    Error,
    "A weight budget or memory limit below what the model needs."
);

/// How often a waiting call lets Python run its signal handlers.
const SIGNAL_POLL: Duration = Duration::from_millis(20);

/// The Python exception for a wstream error: its class says what kind, its message is the CLI's.
fn py_err(e: WsError) -> PyErr {
    use WsError as E;
    let msg = e.to_string();
    match e {
        E::Interrupted => PyKeyboardInterrupt::new_err(msg),
        E::Budget { .. } | E::Memory { .. } => BudgetError::new_err(msg),
        E::Input { .. } | E::InputShape { .. } | E::Options(_) => InputError::new_err(msg),
        E::NoTensor { .. }
        | E::WrongDtype { .. }
        | E::WrongShape { .. }
        | E::Model { .. }
        | E::Config { .. }
        | E::UnknownArch { .. } => ModelError::new_err(msg),
        E::Server(_) => Error::new_err(msg),
        // Everything else is about reading a file: the store's header checks, I/O, the hub cache.
        _ => FileError::new_err(msg),
    }
}

fn input_err(msg: impl Into<String>) -> PyErr {
    InputError::new_err(msg.into())
}

/// What `create_model` and `Ensemble` take besides the models.
#[derive(Clone)]
struct Settings {
    options: Options,
    pool: Arc<rayon::ThreadPool>,
}

/// The CLI's `--evict` values.
fn parse_evict(evict: &str) -> PyResult<Evict> {
    match evict {
        "rss" => Ok(Evict::Rss),
        "cache" => Ok(Evict::Cache),
        other => Err(input_err(format!(
            "evict `{other}` is not one of rss, cache"
        ))),
    }
}

/// A compute pool of `threads` threads (`None`: one per core), as the CLI's `--threads` sizes its pool.
fn compute_pool(threads: Option<usize>) -> PyResult<Arc<rayon::ThreadPool>> {
    if threads == Some(0) {
        return Err(input_err("threads must be at least 1 (None: all cores)"));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .build()
        .map_err(|e| Error::new_err(format!("cannot start the compute threads: {e}")))?;
    Ok(Arc::new(pool))
}

impl Settings {
    fn new(
        threads: Option<usize>,
        budget: Option<u64>,
        evict: &str,
        memory: Option<u64>,
        use_test_size: bool,
    ) -> PyResult<Settings> {
        Ok(Settings {
            options: Options {
                budget,
                evict: parse_evict(evict)?,
                memory,
                logits: true,
                transform: Overrides {
                    use_train_size: !use_test_size,
                    ..Overrides::default()
                },
                ..Options::default()
            },
            pool: compute_pool(threads)?,
        })
    }

    /// Runs `work` on the compute pool with the interpreter's lock released, letting Python handle signals
    /// meanwhile; a KeyboardInterrupt stops the run before its next block and is raised here.
    fn run<R: Send>(
        &self,
        py: Python<'_>,
        work: impl FnOnce(&(dyn Fn() -> bool + Sync)) -> crate::Result<R> + Send,
    ) -> PyResult<R> {
        let stop = AtomicBool::new(false);
        let (result, interrupt) = py.detach(|| {
            std::thread::scope(|scope| {
                let (tx, rx) = mpsc::channel();
                let (pool, stop) = (&self.pool, &stop);
                scope.spawn(move || {
                    let r = pool.install(|| work(&|| stop.load(Ordering::Relaxed)));
                    let _ = tx.send(r);
                });
                let mut interrupt = None;
                loop {
                    match rx.recv_timeout(SIGNAL_POLL) {
                        Ok(r) => return (Some(r), interrupt),
                        Err(RecvTimeoutError::Timeout) if interrupt.is_none() => {
                            if let Err(e) = Python::attach(|py| py.check_signals()) {
                                interrupt = Some(e);
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        // The worker panicked: the scope re-raises its panic when it ends.
                        Err(RecvTimeoutError::Disconnected) => return (None, interrupt),
                    }
                }
            })
        });
        match (result, interrupt) {
            (_, Some(e)) => Err(e),
            (Some(r), None) => r.map_err(py_err),
            (None, None) => Err(Error::new_err("the compute thread ended without an answer")),
        }
    }
}

/// `x` as images `[3, H, W]` named `x[i]`, with its shape checked.
fn array_items(py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<Vec<Item>> {
    let any = match x.cast::<PyUntypedArray>() {
        Ok(a) => a.clone(),
        Err(_) => {
            let a = py
                .import("numpy")?
                .call_method1("asarray", (x,))
                .map_err(|e| {
                    input_err(format!(
                        "input of type {} is not an array: {e}",
                        type_name(x)
                    ))
                })?;
            a.cast_into::<PyUntypedArray>()
                .map_err(|_| input_err("numpy.asarray gave no array"))?
        }
    };
    let shape = any.shape().to_vec();
    let dtype = any.dtype();
    if !dtype.is_equiv_to(&numpy::dtype::<f32>(py)) {
        return Err(input_err(format!(
            "input has dtype {}, expected float32: convert it first (x.astype(numpy.float32)); \
             wstream does not round other dtypes silently",
            dtype.str()?
        )));
    }
    let [n, 3, h, w] = shape[..] else {
        return Err(input_err(format!(
            "input has shape {shape:?}, expected [N, 3, H, W] (add a batch axis to one image: x[None])"
        )));
    };
    if n == 0 || h == 0 || w == 0 {
        return Err(input_err(format!(
            "input of shape {shape:?} holds no image"
        )));
    }
    let array = any
        .cast::<PyArrayDyn<f32>>()
        .map_err(|_| input_err("input is not a float32 array"))?;
    let ro = array.try_readonly()?;
    let chw = 3 * h * w;
    let image = |i: usize, data: Vec<f32>| Item {
        name: format!("x[{i}]"),
        source: Source::Tensor {
            chw: data,
            shape: [3, h, w],
        },
    };
    Ok(match ro.as_slice() {
        Ok(s) => s
            .chunks_exact(chw)
            .enumerate()
            .map(|(i, c)| image(i, c.to_vec()))
            .collect(),
        Err(_) => {
            let all: Vec<f32> = ro.as_array().iter().copied().collect();
            all.chunks_exact(chw)
                .enumerate()
                .map(|(i, c)| image(i, c.to_vec()))
                .collect()
        }
    })
}

fn type_name(x: &Bound<'_, PyAny>) -> String {
    x.get_type()
        .name()
        .map_or_else(|_| "?".into(), |n| n.to_string())
}

/// An image for `transform` or an ensemble: a path (str or os.PathLike) read as the CLI reads it, or a
/// PIL image, converted to RGB as timm's loader does.
fn image_item(x: &Bound<'_, PyAny>, name: String) -> PyResult<Item> {
    if let Ok(path) = x.extract::<PathBuf>() {
        return Ok(Item {
            name: path.display().to_string(),
            source: Source::Image(path),
        });
    }
    if x.hasattr("convert")? && x.hasattr("tobytes")? && x.hasattr("size")? {
        let rgb = x.call_method1("convert", ("RGB",))?;
        let (w, h): (u32, u32) = rgb.getattr("size")?.extract()?;
        let bytes: Vec<u8> = rgb.call_method0("tobytes")?.extract()?;
        let img = image::RgbImage::from_raw(w, h, bytes)
            .ok_or_else(|| input_err(format!("{name}: PIL image of {w}x{h} gave too few bytes")))?;
        return Ok(Item {
            name,
            source: Source::Decoded(img),
        });
    }
    Err(PyTypeError::new_err(format!(
        "{name}: expected a path or a PIL image, got {}",
        type_name(x)
    )))
}

/// `[n, width]` float32 from rows laid end to end.
fn matrix<'py>(py: Python<'py>, rows: Vec<f32>, n: usize) -> PyResult<Bound<'py, PyAny>> {
    let width = rows.len() / n.max(1);
    Ok(PyArray1::from_vec(py, rows).reshape([n, width])?.into_any())
}

/// The per-block records as a `wstream.Profile` (made in Python, from the JSON the CLI writes).
fn block_profile<'py>(py: Python<'py>, records: &[BlockRecord]) -> PyResult<Bound<'py, PyAny>> {
    let json = serde_json::to_string(records).map_err(|e| Error::new_err(e.to_string()))?;
    let table =
        crate::profile::Profile::new(records.to_vec(), crate::process::MemReading::now().vm_hwm)
            .table();
    py.import("wstream")?
        .getattr("Profile")?
        .call1((json, table))
}

/// The answers of a run, or its first error.
fn answers(results: Vec<crate::Result<Answer>>) -> crate::Result<Vec<Answer>> {
    results.into_iter().collect()
}

/// A timm model, run block by block from its memory-mapped weights.
#[pyclass(module = "wstream", name = "Model", frozen)]
pub struct Model {
    path: PathBuf,
    settings: Settings,
    pipeline: Pipeline,
    features: OnceLock<Pipeline>,
}

impl Model {
    fn logits_of(
        &self,
        py: Python<'_>,
        pipeline: &Pipeline,
        items: Vec<Item>,
        take: fn(&Answer) -> Option<&Vec<f32>>,
        profile_too: bool,
    ) -> PyResult<Py<PyAny>> {
        let n = items.len();
        let (answers, records) = self.settings.run(py, |stop| {
            let (results, records) = pipeline.run_batch_readings(&items, stop, profile_too)?;
            Ok((answers(results)?, records))
        })?;
        let rows: Vec<f32> = answers
            .iter()
            .flat_map(|a| take(a).into_iter().flatten().copied())
            .collect();
        let out = matrix(py, rows, n)?;
        if profile_too {
            Ok(PyTuple::new(py, [out, block_profile(py, &records)?])?
                .into_any()
                .unbind())
        } else {
            Ok(out.unbind())
        }
    }

    fn features(&self, py: Python<'_>) -> PyResult<&Pipeline> {
        if let Some(p) = self.features.get() {
            return Ok(p);
        }
        let options = Options {
            output: Output::Features,
            logits: false,
            ..self.settings.options
        };
        let path = self.path.clone();
        let p = py
            .detach(|| Pipeline::load(&[path], options))
            .map_err(py_err)?;
        Ok(self.features.get_or_init(|| p))
    }
}

#[pymethods]
impl Model {
    /// Logits `[N, num_classes]` (float32) for `x`, float32 `[N, 3, H, W]` at `data_config["input_size"]`.
    /// With `profile=True`, `(logits, wstream.Profile)`: what each block cost.
    #[pyo3(signature = (x, *, profile=false))]
    fn __call__(&self, py: Python<'_>, x: &Bound<'_, PyAny>, profile: bool) -> PyResult<Py<PyAny>> {
        let items = array_items(py, x)?;
        self.logits_of(
            py,
            &self.pipeline,
            items,
            |a| a.models[0].logits.as_ref(),
            profile,
        )
    }

    /// The pooled pre-logits features `[N, num_features]`: what timm's
    /// `forward_head(forward_features(x), pre_logits=True)` gives (timm's own `forward_features` stops
    /// before the pooling). The classifier's weights are never read.
    #[pyo3(signature = (x, *, profile=false))]
    fn forward_features(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        profile: bool,
    ) -> PyResult<Py<PyAny>> {
        let items = array_items(py, x)?;
        let pipeline = self.features(py)?;
        self.logits_of(
            py,
            pipeline,
            items,
            |a| a.models[0].features.as_ref(),
            profile,
        )
    }

    /// timm's `forward_head(f, pre_logits=True)` over [`forward_features`]' output, which is already
    /// pooled: `f` itself. The classifier alone is not run (`pre_logits=False` is refused: call the
    /// model on the images).
    #[pyo3(signature = (f, *, pre_logits=false))]
    fn forward_head<'py>(
        &self,
        f: &Bound<'py, PyAny>,
        pre_logits: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        if !pre_logits {
            return Err(input_err(
                "forward_head runs only with pre_logits=True (the pooled features forward_features \
                 returns); for logits call the model on the images: m(x)",
            ));
        }
        Ok(f.clone())
    }

    /// timm's eval preprocessing of `img` (a path or a PIL image) for this model: float32 `[3, H, W]`,
    /// the CLI's PIL-exact resize, crop and normalisation.
    fn transform<'py>(
        &self,
        py: Python<'py>,
        img: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let item = image_item(img, "image".into())?;
        let pre = self.pipeline.transforms()[0].preprocess();
        let max_pixels = self.pipeline.options().max_pixels;
        let chw = self.settings.run(py, |_| match &item.source {
            Source::Image(p) => Ok(pre.apply(&preprocess::load_rgb_limited(p, max_pixels)?)),
            Source::Decoded(img) => Ok(pre.apply(img)),
            Source::Tensor { .. } => unreachable!("image_item makes no tensors"),
        })?;
        let [c, h, w] = self.pipeline.input_size(0);
        Ok(PyArray1::from_vec(py, chw).reshape([c, h, w])?.into_any())
    }

    /// The model's name (timm's architecture).
    #[getter]
    fn name(&self) -> String {
        self.pipeline.models()[0].name.clone()
    }

    /// Where the weights are (a hub id resolved to its snapshot folder).
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    #[getter]
    fn num_classes(&self) -> usize {
        self.pipeline.models()[0].num_classes
    }

    /// Random weights written by `wstream synth`: the classes mean nothing.
    #[getter]
    fn synthetic(&self) -> bool {
        self.pipeline.models()[0].synthetic
    }

    /// The `pretrained_cfg` of the model's config.json (or the config a converted file carries).
    #[getter]
    fn pretrained_cfg<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = config_text(&self.pipeline.models()[0]).map_err(py_err)?;
        let cfg = py.import("json")?.call_method1("loads", (text,))?;
        match cfg.get_item("pretrained_cfg") {
            Ok(p) if !p.is_none() => Ok(p),
            _ => Ok(PyDict::new(py).into_any()),
        }
    }

    /// What timm's `resolve_data_config({}, model=m)` gives: the eval transform's `input_size`,
    /// `interpolation`, `mean`, `std`, `crop_pct`, `crop_mode` (the train size, unless the model was
    /// created with `use_test_size=True`).
    #[getter]
    fn data_config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        data_config(py, &self.pipeline.transforms()[0])
    }

    fn __repr__(&self) -> String {
        format!(
            "wstream.Model({:?}, path={:?})",
            self.name(),
            self.path.display().to_string()
        )
    }
}

/// The config.json text a model was read with (`{}` for none).
fn config_text(m: &crate::models::Model) -> crate::Result<String> {
    let Some(source) = &m.config.source else {
        return Ok("{}".into());
    };
    if source.file_name().is_some_and(|n| n == "config.json") {
        let bytes =
            crate::fsutil::read_regular(source, crate::fsutil::MAX_CONFIG_BYTES, "config.json")?;
        return Ok(String::from_utf8_lossy(&bytes).into_owned());
    }
    let f = &m.store.files()[0];
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(f.bytes()).map_err(|e| WsError::HeaderJson {
            path: f.path.clone(),
            msg: e.to_string(),
        })?;
    Ok(meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(CONFIG_KEY))
        .cloned()
        .unwrap_or_else(|| "{}".into()))
}

/// A float as Python would have read it from config.json: f32 values are printed shortest, so `0.485`
/// stays `0.485`, not `0.48500001430511475`.
fn as_config_float(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

fn data_config<'py>(py: Python<'py>, t: &Transform) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("input_size", PyTuple::new(py, t.input_size)?)?;
    d.set_item("interpolation", t.interpolation.name())?;
    let floats = |v: [f32; 3]| v.map(as_config_float);
    d.set_item("mean", PyTuple::new(py, floats(t.mean))?)?;
    d.set_item("std", PyTuple::new(py, floats(t.std))?)?;
    d.set_item("crop_pct", t.crop_pct)?;
    d.set_item("crop_mode", t.crop_mode.name())?;
    Ok(d)
}

/// Loads a model: a folder in timm's Hugging Face layout, a `.safetensors` file, or a hub id
/// (`timm/NAME`) found in the local Hugging Face cache (never downloaded). Options mirror the CLI's:
/// `threads` (compute threads, default all cores), `budget` (most weight bytes mapped at once), `evict`
/// (`"rss"` or `"cache"`), `memory` (most bytes of peak RSS; batches are split to fit). `use_test_size`:
/// preprocess at the config's `test_input_size` as timm's validate.py does (default: the train size,
/// as `timm.data.resolve_data_config` gives).
#[pyfunction]
#[pyo3(signature = (id_or_path, *, threads=None, budget=None, evict="rss", memory=None, use_test_size=false))]
fn create_model(
    py: Python<'_>,
    id_or_path: PathBuf,
    threads: Option<usize>,
    budget: Option<u64>,
    evict: &str,
    memory: Option<u64>,
    use_test_size: bool,
) -> PyResult<Model> {
    let settings = Settings::new(threads, budget, evict, memory, use_test_size)?;
    let options = settings.options;
    let (path, pipeline) = py
        .detach(|| {
            let path = hub::locate(&id_or_path)?.path;
            let pipeline = Pipeline::load(&[&path], options)?;
            Ok((path, pipeline))
        })
        .map_err(py_err)?;
    Ok(Model {
        path,
        settings,
        pipeline,
        features: OnceLock::new(),
    })
}

/// Several models run layer-major over one batch: each block is paged in once per batch, the models one
/// after another, so peak memory is one model's, not the sum.
#[pyclass(module = "wstream", name = "Ensemble", frozen)]
pub struct Ensemble {
    settings: Settings,
    pipeline: Pipeline,
}

#[pymethods]
impl Ensemble {
    /// An ensemble of `models` (wstream Models sharing their classes). Options as `create_model`'s;
    /// unset ones are the first model's.
    #[new]
    #[pyo3(signature = (models, *, threads=None, budget=None, evict=None, memory=None, combine="mean-prob"))]
    fn new(
        py: Python<'_>,
        models: Vec<PyRef<'_, Model>>,
        threads: Option<usize>,
        budget: Option<u64>,
        evict: Option<&str>,
        memory: Option<u64>,
        combine: &str,
    ) -> PyResult<Ensemble> {
        let Some(first) = models.first() else {
            return Err(input_err("an ensemble needs at least one model"));
        };
        let base = first.settings.options;
        let pool = match threads {
            Some(_) => compute_pool(threads)?,
            None => first.settings.pool.clone(),
        };
        let options = Options {
            budget: budget.or(base.budget),
            evict: evict.map_or(Ok(base.evict), parse_evict)?,
            memory: memory.or(base.memory),
            ensemble: match combine {
                "mean-prob" => Combine::MeanProb,
                "mean-logit" => Combine::MeanLogit,
                other => {
                    return Err(input_err(format!(
                        "combine `{other}` is not one of mean-prob, mean-logit"
                    )))
                }
            },
            ..base
        };
        let settings = Settings { options, pool };
        let paths: Vec<PathBuf> = models.iter().map(|m| m.path.clone()).collect();
        let pipeline = py
            .detach(|| Pipeline::load(&paths, options))
            .map_err(py_err)?;
        Ok(Ensemble { settings, pipeline })
    }

    /// Runs `inputs`: a float32 array `[N, 3, H, W]` (every model must take that size) or a list of
    /// images (paths or PIL images, preprocessed per model). Returns a `wstream.EnsembleResult`:
    /// each model's logits, the combined probabilities, the CLI's JSON answers; and with `profile=True`
    /// the per-block records.
    #[pyo3(signature = (inputs, *, profile=false))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyAny>,
        profile: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let items = match inputs.cast::<PyList>() {
            Ok(list) => list
                .iter()
                .enumerate()
                .map(|(i, x)| image_item(&x, format!("inputs[{i}]")))
                .collect::<PyResult<Vec<_>>>()?,
            Err(_) => array_items(py, inputs)?,
        };
        if items.is_empty() {
            return Err(input_err("no inputs"));
        }
        let n = items.len();
        let (answers, records) = self.settings.run(py, |stop| {
            let (results, records) = self.pipeline.run_batch_readings(&items, stop, profile)?;
            Ok((answers(results)?, records))
        })?;
        let models = self.pipeline.models().len();
        let mut logits = Vec::with_capacity(models);
        for mi in 0..models {
            let rows: Vec<f32> = answers
                .iter()
                .flat_map(|a| a.models[mi].logits.iter().flatten().copied())
                .collect();
            logits.push(matrix(py, rows, n)?);
        }
        let how = self.pipeline.options().ensemble;
        let combined: Vec<f32> = answers
            .iter()
            .flat_map(|a| {
                let rows: Vec<&[f32]> = a
                    .models
                    .iter()
                    .map(|m| m.logits.as_deref().unwrap_or(&[]))
                    .collect();
                combine(&rows, how)
            })
            .collect();
        let json = serde_json::to_string(&answers).map_err(|e| Error::new_err(e.to_string()))?;
        let prof = if profile {
            block_profile(py, &records)?
        } else {
            py.None().into_bound(py)
        };
        let names: Vec<String> = self
            .pipeline
            .models()
            .iter()
            .map(|m| m.name.clone())
            .collect();
        py.import("wstream")?.getattr("EnsembleResult")?.call1((
            names,
            PyList::new(py, logits)?,
            matrix(py, combined, n)?,
            json,
            prof,
        ))
    }

    /// The models' names, made distinct as the CLI's answers name them.
    #[getter]
    fn names(&self) -> Vec<String> {
        self.pipeline
            .models()
            .iter()
            .map(|m| m.name.clone())
            .collect()
    }

    /// Each model's `data_config`, in model order.
    #[getter]
    fn data_configs<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.pipeline
            .transforms()
            .iter()
            .map(|t| data_config(py, t))
            .collect()
    }
}

/// The peak RSS of this process so far (VmHWM), in bytes.
#[pyfunction]
fn peak_rss() -> u64 {
    crate::process::MemReading::now().vm_hwm
}

#[pymodule(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // What the CLI does first: keep freed activation buffers for the next block instead of returning
    // them to the kernel after every block (see keep_freed_heap for the cost of not doing it).
    crate::process::keep_freed_heap();
    m.add("Error", py.get_type::<Error>())?;
    m.add("FileError", py.get_type::<FileError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("BudgetError", py.get_type::<BudgetError>())?;
    m.add_class::<Model>()?;
    m.add_class::<Ensemble>()?;
    m.add_function(wrap_pyfunction!(create_model, m)?)?;
    m.add_function(wrap_pyfunction!(peak_rss, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
