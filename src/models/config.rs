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
    pub label_names: Option<Vec<String>>,
    /// Set by `wstream synth`: the weights are random.
    pub wstream_synthetic: Option<serde_json::Value>,
}

/// The preprocessing a checkpoint was trained with.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PretrainedCfg {
    pub input_size: Option<[usize; 3]>,
    pub interpolation: Option<String>,
    pub crop_pct: Option<f64>,
    pub crop_mode: Option<String>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
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
        serde_json::from_slice(&text).map_err(|e| Error::Config {
            path: path.into(),
            msg: format!("not a valid timm config.json: {e}"),
        })
    }

    /// `model_args[key]` as a whole number.
    pub fn arg_usize(&self, key: &str) -> Option<usize> {
        self.model_args.get(key)?.as_u64().map(|v| v as usize)
    }

    /// `model_args[key]` as a list of whole numbers, or one number repeated `n` times.
    pub fn arg_usizes(&self, key: &str, n: usize) -> Option<Vec<usize>> {
        match self.model_args.get(key)? {
            serde_json::Value::Array(a) => {
                a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect()
            }
            v => v.as_u64().map(|v| vec![v as usize; n]),
        }
    }

    pub fn arg_f64(&self, key: &str) -> Option<f64> {
        self.model_args.get(key)?.as_f64()
    }

    /// The `[3, h, w]` input the model was trained on (224 x 224 when the config does not say).
    pub fn input_size(&self) -> [usize; 3] {
        self.pretrained_cfg
            .as_ref()
            .and_then(|p| p.input_size)
            .unwrap_or([3, 224, 224])
    }
}
