//! candle interop (the `candle` feature): a program built on candle hands a loaded [`Pipeline`] a
//! `candle_core::Tensor` batch `[N, 3, H, W]` of preprocessed f32 images and gets each model's logits, or
//! its pooled features with [`Output::Features`](crate::pipeline::Output::Features), back as a `Tensor`
//! `[N, classes]` / `[N, features]` on the CPU.
//!
//! The batch is read in place from the tensor's CPU storage when it is contiguous: no intermediate
//! tensor or `Vec`. The executor owns the activations it runs on, so each model's run copies the batch
//! once into its own buffer (as [`Pipeline::run`] does with its own inputs); the outputs are moved into the
//! returned tensors without a copy. A non-contiguous tensor (a transposed or strided view) is first made
//! contiguous by candle, which is one more copy. A tensor of another dtype, on another device or of
//! another shape is refused with an error that says which and how to convert it.
//!
//! ```no_run
//! use candle_core::{Device, Tensor};
//! use wstream::pipeline::{Options, Pipeline};
//!
//! let pipeline = Pipeline::load(&["weights/convnext_large"], Options::default())?;
//! let x = Tensor::zeros((2, 3, 224, 224), candle_core::DType::F32, &Device::Cpu).unwrap();
//! let logits = &wstream::candle::forward(&pipeline, &x)?[0]; // [2, 1000]
//! # Ok::<(), wstream::Error>(())
//! ```

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::pipeline::Pipeline;

/// Runs every model of `pipeline` on the batch `x` (`[N, 3, H, W]` f32 on the CPU, `[3, H, W]` the models'
/// input size, already preprocessed as their transforms say) and returns each model's output in model
/// order: `[N, classes]` logits, or `[N, features]` when the pipeline's output is features.
pub fn forward(pipeline: &Pipeline, x: &Tensor) -> Result<Vec<Tensor>> {
    let dims = x.dims();
    let err = |msg: String| Error::Input {
        path: format!("candle tensor {dims:?}").into(),
        msg,
    };
    if !x.device().is_cpu() {
        return Err(err(format!(
            "is on {:?}; wstream computes on the CPU: pass x.to_device(&Device::Cpu)",
            x.device().location()
        )));
    }
    if x.dtype() != DType::F32 {
        return Err(err(format!(
            "has dtype {:?}; wstream takes F32 inputs: pass x.to_dtype(DType::F32)",
            x.dtype()
        )));
    }
    let &[n, c, h, w] = dims else {
        return Err(err(format!(
            "has {} dimensions; wstream takes a batch [N, 3, H, W] (x.unsqueeze(0) for one image)",
            dims.len()
        )));
    };
    let want = pipeline.input_size(0);
    if n == 0 || [c, h, w] != want {
        return Err(err(format!(
            "is not a batch of {want:?} inputs, the size {} takes; expected [N >= 1, {}, {}, {}]",
            pipeline.models()[0].name,
            want[0],
            want[1],
            want[2]
        )));
    }
    let contiguous;
    let x = if x.is_contiguous() {
        x
    } else {
        contiguous = x.contiguous().map_err(|e| err(e.to_string()))?;
        &contiguous
    };
    let outputs = {
        let (storage, layout) = x.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            return Err(err("is on the CPU but its storage is not".into()));
        };
        let all = cpu.as_slice::<f32>().map_err(|e| err(e.to_string()))?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Err(err("is still not contiguous after x.contiguous()".into()));
        };
        pipeline.run_array(&all[start..end], n)?
    };
    outputs
        .into_iter()
        .map(|o| {
            let shape = (o.shape[0], o.shape[1]);
            Tensor::from_vec(o.data, shape, &Device::Cpu).map_err(|e| err(e.to_string()))
        })
        .collect()
}
