//! `config.json` as timm writes it for the Hugging Face hub: the architecture name, `model_args` overrides,
//! and `pretrained_cfg` (input size and preprocessing).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::fsutil;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelConfig {
    pub architecture: Option<String>,
    pub num_classes: Option<usize>,
    #[serde(default)]
    pub model_args: serde_json::Map<String, serde_json::Value>,
    pub pretrained_cfg: Option<PretrainedCfg>,
    /// Class names: a list, or an object from class index to name (timm's `label_names`; see
    /// [`crate::classify::labels`]). Read as any JSON so a value of the wrong shape is refused with a
    /// message naming it.
    pub label_names: Option<serde_json::Value>,
    /// Label name to description (timm's `label_descriptions`).
    pub label_descriptions: Option<serde_json::Value>,
    /// Set by `wstream synth`: the weights are random.
    pub wstream_synthetic: Option<serde_json::Value>,
    /// Where the config was read from (a config.json, or the weights file whose metadata holds it); `None`
    /// when the model has none and every value is timm's default.
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
}

/// The preprocessing a checkpoint was trained with.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PretrainedCfg {
    pub input_size: Option<[usize; 3]>,
    /// The size timm evaluates at, when it differs from the training size.
    pub test_input_size: Option<[usize; 3]>,
    pub interpolation: Option<String>,
    pub crop_pct: Option<f64>,
    pub test_crop_pct: Option<f64>,
    pub crop_mode: Option<String>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    /// timm's loader moves a config's top-level labels here; either place is read (top level first).
    pub label_names: Option<serde_json::Value>,
    pub label_descriptions: Option<serde_json::Value>,
}

impl ModelConfig {
    /// Reads `path` if it exists; a missing file is an empty config, a malformed one, one that is not a
    /// regular file or one over [`fsutil::MAX_CONFIG_BYTES`] an error.
    pub fn load_optional(path: &Path) -> Result<Self> {
        let text = match fsutil::read_regular(path, fsutil::MAX_CONFIG_BYTES, "config.json") {
            Ok(t) => t,
            Err(Error::NotFound { .. }) => return Ok(Self::default()),
            Err(e) => return Err(e),
        };
        let mut cfg: Self = serde_json::from_slice(&text).map_err(|e| Error::Config {
            path: path.into(),
            msg: format!("not a valid timm config.json: {e}"),
        })?;
        cfg.source = Some(path.into());
        Ok(cfg)
    }

    /// `model_args[key]` as a whole number. Absent (or null) is `None`; a value of another type is an
    /// error naming the field, not a silent fallback to the default it would have overridden.
    pub fn arg_usize(&self, key: &str) -> Result<Option<usize>, String> {
        self.arg(key, "a whole number", as_usize)
    }

    /// `model_args[key]` as a list of whole numbers, or one number repeated `n` times.
    pub fn arg_usizes(&self, key: &str, n: usize) -> Result<Option<Vec<usize>>, String> {
        self.arg(key, "a whole number or a list of them", |v| match v {
            serde_json::Value::Array(a) => a.iter().map(as_usize).collect(),
            v => as_usize(v).map(|v| vec![v; n]),
        })
    }

    pub fn arg_f64(&self, key: &str) -> Result<Option<f64>, String> {
        self.arg(key, "a number", serde_json::Value::as_f64)
    }

    pub fn arg_bool(&self, key: &str) -> Result<Option<bool>, String> {
        self.arg(key, "true or false", serde_json::Value::as_bool)
    }

    pub fn arg_str(&self, key: &str) -> Result<Option<&str>, String> {
        self.arg(key, "a string", serde_json::Value::as_str)
    }

    fn arg<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        read: impl FnOnce(&'a serde_json::Value) -> Option<T>,
    ) -> Result<Option<T>, String> {
        match self.model_args.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => read(v).map(Some).ok_or_else(|| {
                format!(
                    "config.json model_args.{key} is {}, expected {expected}",
                    shorten(v)
                )
            }),
        }
    }

    /// The `[3, h, w]` input the model was trained on (224 x 224 when the config does not say).
    pub fn input_size(&self) -> [usize; 3] {
        self.pretrained_cfg
            .as_ref()
            .and_then(|p| p.input_size)
            .unwrap_or([3, 224, 224])
    }
}

/// Enough of a JSON value to recognise it in a message; a hostile config's megabyte string stays out.
pub(crate) fn shorten(v: &serde_json::Value) -> String {
    let mut shown = v.to_string();
    if shown.len() > 64 {
        let cut = (0..=61)
            .rev()
            .find(|&i| shown.is_char_boundary(i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push_str("...");
    }
    shown
}

fn as_usize(v: &serde_json::Value) -> Option<usize> {
    v.as_u64().and_then(|v| usize::try_from(v).ok())
}
