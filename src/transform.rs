//! Which eval transform a model gets: timm's `resolve_data_config` over the model's `pretrained_cfg` and
//! the caller's overrides (inference.py's / validate.py's flags), remembering where each value came from
//! so a run can say what it did.
//!
//! `test_input_size` / `test_crop_pct` are used unless [`Overrides::use_train_size`] is set, as
//! `resolve_data_config(use_test_size=True)` does in timm's validate.py (the script behind timm's published
//! accuracies). timm's inference.py calls it without `use_test_size` (its `--use-train-size` flag is read
//! by nothing), so it always takes the train size: `use_train_size` reproduces it.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::ModelConfig;
use crate::preprocess::{
    CropMode, Filter, Preprocess, DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,
    MAX_SIDE,
};

/// The caller's choices over a model's config, as timm's scripts take them (`None`: the config decides).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Overrides {
    /// Ignore `test_input_size` / `test_crop_pct` (`--use-train-size`).
    pub use_train_size: bool,
    /// A square input of this side (`--img-size`).
    pub img_size: Option<usize>,
    pub crop_pct: Option<f64>,
    pub crop_mode: Option<CropMode>,
    pub interpolation: Option<Filter>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
}

/// Where a resolved value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// timm's default: the config says nothing.
    Default,
    /// The config's `pretrained_cfg` field of that name.
    Config,
    /// The config's `test_input_size` / `test_crop_pct`.
    Test,
    /// The caller's override.
    Flag,
}

/// Where each value of a [`Transform`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origins {
    pub input_size: Origin,
    pub crop_pct: Origin,
    pub crop_mode: Origin,
    pub interpolation: Origin,
    pub mean: Origin,
    pub std: Origin,
}

/// A model's resolved eval transform, as timm's data config spells it (the `preprocess` field of a JSON
/// answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transform {
    pub input_size: [usize; 3],
    pub crop_pct: f64,
    pub crop_mode: CropMode,
    pub interpolation: Filter,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub from: Origins,
}

impl Transform {
    /// Resolves the transform for a model with config `cfg` (loaded from `path`) as timm's
    /// `resolve_data_config(args, pretrained_cfg, use_test_size=!over.use_train_size)` does, and checks
    /// that it can work. A bad config value is an [`Error::Config`] naming `path` and the field, a bad
    /// override an [`Error::Options`] naming the flag.
    pub fn resolve(cfg: &ModelConfig, over: &Overrides, path: &Path) -> Result<Transform> {
        let pre = cfg.pretrained_cfg.clone().unwrap_or_default();
        let test = !over.use_train_size;
        let err = |origin: Origin, msg: String| match origin {
            Origin::Flag => Error::Options(msg),
            _ => Error::Config {
                path: path.into(),
                msg: format!("config.json pretrained_cfg: {msg}"),
            },
        };
        let (input_size, size_from) = match (over.img_size, pre.test_input_size) {
            (Some(n), _) => ([3, n, n], Origin::Flag),
            (None, Some(s)) if test => (s, Origin::Test),
            _ => match pre.input_size {
                Some(s) => (s, Origin::Config),
                None => ([3, 224, 224], Origin::Default),
            },
        };
        // timm tests each of these for truth: a 0, "" or [] means "not given".
        let (crop_pct, crop_from) = match (over.crop_pct, pre.test_crop_pct, pre.crop_pct) {
            (Some(p), _, _) if p != 0.0 => (p, Origin::Flag),
            (_, Some(p), _) if test && p != 0.0 => (p, Origin::Test),
            (_, _, Some(p)) if p != 0.0 => (p, Origin::Config),
            _ => (DEFAULT_CROP_PCT, Origin::Default),
        };
        let (crop_mode, mode_from) = match (over.crop_mode, pre.crop_mode.as_deref()) {
            (Some(m), _) => (m, Origin::Flag),
            (None, None | Some("")) => (CropMode::Center, Origin::Default),
            (None, Some(name)) => (
                CropMode::from_name(name).ok_or_else(|| {
                    err(
                        Origin::Config,
                        format!(
                            "crop_mode `{name}` is not supported \
                             (timm's modes are center, squash and border)"
                        ),
                    )
                })?,
                Origin::Config,
            ),
        };
        let (interpolation, interp_from) = match (over.interpolation, pre.interpolation.as_deref())
        {
            (Some(f), _) => (f, Origin::Flag),
            (None, None | Some("")) => (Filter::Bicubic, Origin::Default),
            (None, Some(name)) => (
                Filter::from_name(name).ok_or_else(|| {
                    err(
                        Origin::Config,
                        format!(
                            "interpolation `{name}` is not supported (only bicubic, bilinear, lanczos and nearest)"
                        ),
                    )
                })?,
                Origin::Config,
            ),
        };
        let stat = |flag: Option<[f32; 3]>, config: Option<[f32; 3]>, default: [f32; 3]| match (
            flag, config,
        ) {
            (Some(v), _) => (v, Origin::Flag),
            (None, Some(v)) => (v, Origin::Config),
            (None, None) => (default, Origin::Default),
        };
        let (mean, mean_from) = stat(over.mean, pre.mean, IMAGENET_DEFAULT_MEAN);
        let (std, std_from) = stat(over.std, pre.std, IMAGENET_DEFAULT_STD);

        let name = |origin: Origin, field: &str, flag: &str| match origin {
            Origin::Flag => flag.to_string(),
            Origin::Test => format!("test_{field}"),
            _ => field.to_string(),
        };
        let size_name = name(size_from, "input_size", "--img-size");
        let [chans, h, w] = input_size;
        if chans != 3 {
            return Err(err(
                size_from,
                format!(
                    "{size_name} has {chans} channels; only 3-channel (RGB) models take images"
                ),
            ));
        }
        if h == 0 || w == 0 || h > MAX_SIDE as usize || w > MAX_SIDE as usize {
            return Err(err(
                size_from,
                format!("{size_name} {h}x{w} is not usable (each side must be 1..={MAX_SIDE})"),
            ));
        }
        let crop_name = name(crop_from, "crop_pct", "--crop-pct");
        if !(crop_pct.is_finite() && crop_pct > 0.0) {
            return Err(err(
                crop_from,
                format!("{crop_name} {crop_pct} is not a positive number"),
            ));
        }
        let (sh, sw) = scale_size(h, w, crop_pct);
        let limit = MAX_SIDE as f64;
        if !(1.0..=limit).contains(&sh) || !(1.0..=limit).contains(&sw) {
            return Err(err(
                crop_from,
                format!(
                    "{crop_name} {crop_pct} makes the resize size {sh}x{sw} for input {h}x{w} \
                     (each side must be 1..={MAX_SIDE})"
                ),
            ));
        }
        if mean.iter().any(|m| !m.is_finite()) {
            let what = name(mean_from, "mean", "--mean");
            return Err(err(mean_from, format!("{what} {mean:?} is not finite")));
        }
        if std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            let what = name(std_from, "std", "--std");
            return Err(err(
                std_from,
                format!("{what} {std:?} must be finite and non-zero"),
            ));
        }
        Ok(Transform {
            input_size,
            crop_pct,
            crop_mode,
            interpolation,
            mean,
            std,
            from: Origins {
                input_size: size_from,
                crop_pct: crop_from,
                crop_mode: mode_from,
                interpolation: interp_from,
                mean: mean_from,
                std: std_from,
            },
        })
    }

    /// The transform's arithmetic ([`Preprocess::apply`] turns an image into the model's input).
    pub fn preprocess(&self) -> Preprocess {
        let [_, h, w] = self.input_size;
        let (sh, sw) = scale_size(h, w, self.crop_pct);
        Preprocess {
            size: [h, w],
            scale_size: [sh as usize, sw as usize],
            crop_mode: self.crop_mode,
            interpolation: self.interpolation,
            mean: self.mean,
            std: self.std,
        }
    }
}

/// `math.floor(img_size / crop_pct)` per side.
fn scale_size(h: usize, w: usize, crop_pct: f64) -> (f64, f64) {
    let scale = |side: usize| (side as f64 / crop_pct).floor();
    (scale(h), scale(w))
}

impl Origin {
    /// Where a value came from, in words: `field` is its pretrained_cfg name, `flag` its override.
    pub fn describe(self, field: &str, flag: &str) -> String {
        match self {
            Origin::Default => "timm's default".into(),
            Origin::Config => format!("pretrained_cfg.{field}"),
            Origin::Test => format!("pretrained_cfg.test_{field}"),
            Origin::Flag => flag.into(),
        }
    }
}

/// One line per value and where it came from, for `--verbose`.
impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [c, h, w] = self.input_size;
        let o = &self.from;
        let lines = [
            (
                "input_size",
                format!("{c}x{h}x{w}"),
                o.input_size.describe("input_size", "--img-size"),
            ),
            (
                "crop_pct",
                self.crop_pct.to_string(),
                o.crop_pct.describe("crop_pct", "--crop-pct"),
            ),
            (
                "crop_mode",
                self.crop_mode.name().into(),
                o.crop_mode.describe("crop_mode", "--crop-mode"),
            ),
            (
                "interpolation",
                self.interpolation.name().into(),
                o.interpolation.describe("interpolation", "--interpolation"),
            ),
            (
                "mean",
                format!("{:?}", self.mean),
                o.mean.describe("mean", "--mean"),
            ),
            (
                "std",
                format!("{:?}", self.std),
                o.std.describe("std", "--std"),
            ),
        ];
        for (i, (name, value, whence)) in lines.iter().enumerate() {
            let end = if i + 1 < lines.len() { "\n" } else { "" };
            write!(f, "{name:<14}{value:<24} from {whence}{end}")?;
        }
        Ok(())
    }
}
