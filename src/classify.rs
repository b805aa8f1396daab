//! From logits to answers: softmax, top-K with labels, and the ensemble of several models.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::models::config::shorten;
use crate::models::Model;

const IMAGENET_LABELS: &str = include_str!("imagenet_labels.txt");

/// How the models of an ensemble are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensemble {
    /// The mean of the models' softmax probabilities.
    MeanProb,
    /// The softmax of the mean of the models' logits.
    MeanLogit,
}

/// One ranked class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    pub class: usize,
    pub label: String,
    pub prob: f32,
    /// The class's raw logit, when the output type asks for logits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit: Option<f32>,
}

/// timm's ImageNet-1k synsets (`timm/data/_info/imagenet_synsets.txt`), in class order: the label names
/// whose descriptions are [`IMAGENET_LABELS`].
const IMAGENET_SYNSETS: &str = include_str!("imagenet_synsets.txt");

/// What a class's label says (timm inference.py's `--label-type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LabelType {
    /// The label name: the config's `label_names`, ImageNet-1k's synset (`n02123045`).
    Name,
    /// The name's description (`label_descriptions`; ImageNet-1k's "tabby, tabby cat"), else the name.
    #[default]
    Description,
    /// The class index itself.
    Index,
}

/// The config's `label_names` (top level, else in `pretrained_cfg`), unless absent or null.
fn config_label_names(model: &Model) -> Option<&Value> {
    let cfg = &model.config;
    cfg.label_names
        .as_ref()
        .or_else(|| cfg.pretrained_cfg.as_ref()?.label_names.as_ref())
        .filter(|v| !v.is_null())
}

/// Where [`labels`] takes a model's class names from, in words: the config, ImageNet-1k's, or numbers.
pub fn label_source(model: &Model) -> &'static str {
    if config_label_names(model).is_some() {
        "config.json label_names"
    } else if model.num_classes == 1000 {
        "imagenet-1k"
    } else {
        "class numbers"
    }
}

/// Class labels for a model, as timm's inference.py makes them: from the config's `label_names` (a list
/// of one name per class, or an object from class index to name; top level or in `pretrained_cfg`) and
/// `label_descriptions` (name to description) when it has them, else timm's ImageNet-1k names for 1000
/// classes, else `class N`. A class a sparse object leaves out is `<unmapped:N>`, as in timm. Labels that
/// cannot be meant for this head (a list of another length, an index beyond the classes, a name without a
/// description, values that are not strings) are refused with an error naming the config.
pub fn labels(model: &Model, label_type: LabelType) -> Result<Vec<String>> {
    let n = model.num_classes;
    if label_type == LabelType::Index {
        return Ok((0..n).map(|i| i.to_string()).collect());
    }
    let cfg = &model.config;
    let pre = cfg.pretrained_cfg.as_ref();
    let names = config_label_names(model);
    let descriptions = cfg
        .label_descriptions
        .as_ref()
        .or_else(|| pre.and_then(|p| p.label_descriptions.as_ref()))
        .filter(|v| !v.is_null());
    let err = |msg: String| Error::Config {
        path: cfg
            .source
            .clone()
            .unwrap_or_else(|| model.store.path().to_path_buf()),
        msg,
    };
    let Some(names) = names else {
        return Ok(match (n, label_type) {
            (1000, LabelType::Name) => IMAGENET_SYNSETS.lines().map(str::to_string).collect(),
            (1000, _) => IMAGENET_LABELS.lines().map(str::to_string).collect(),
            _ => (0..n).map(|i| format!("class {i}")).collect(),
        });
    };
    let text = |v: &Value, what: &dyn Fn() -> String| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| err(format!("{} is {}, not a string", what(), shorten(v))))
    };
    let mut out: Vec<Option<String>> = vec![None; n];
    match names {
        Value::Array(list) => {
            if list.len() != n {
                return Err(err(format!(
                    "label_names lists {} names but the model's head has {n} classes",
                    list.len()
                )));
            }
            for (i, v) in list.iter().enumerate() {
                out[i] = Some(text(v, &|| format!("label_names[{i}]"))?);
            }
        }
        Value::Object(map) if !map.is_empty() => {
            for (key, v) in map {
                let i: usize = key.trim().parse().map_err(|_| {
                    err(format!(
                        "label_names key {key:?} is not a class index (a whole number)"
                    ))
                })?;
                if i >= n {
                    return Err(err(format!(
                        "label_names names class {i} but the model's head has {n} classes (0..={})",
                        n - 1
                    )));
                }
                if out[i].is_some() {
                    return Err(err(format!("label_names names class {i} twice")));
                }
                out[i] = Some(text(v, &|| format!("label_names[{key:?}]"))?);
            }
        }
        other => {
            return Err(err(format!(
                "label_names is {}, expected a non-empty list of names or an object from class index to name",
                shorten(other)
            )))
        }
    }
    if let Some(descriptions) = descriptions {
        let Value::Object(map) = descriptions else {
            return Err(err(format!(
                "label_descriptions is {}, expected an object from label name to description",
                shorten(descriptions)
            )));
        };
        for name in out.iter_mut().flatten() {
            let Some(d) = map.get(name.as_str()) else {
                return Err(err(format!(
                    "label_descriptions has no description for label name {name:?}"
                )));
            };
            let d = text(d, &|| format!("label_descriptions[{name:?}]"))?;
            if label_type == LabelType::Description {
                *name = d;
            }
        }
    }
    Ok(out
        .into_iter()
        .enumerate()
        .map(|(i, l)| l.unwrap_or_else(|| format!("<unmapped:{i}>")))
        .collect())
}

pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&l| ((l - max) as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// The `k` most probable classes, most probable first (ties: lower class first).
pub fn top_k(probs: &[f32], k: usize, labels: &[String]) -> Vec<Ranked> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.into_iter()
        .take(k)
        .map(|i| Ranked {
            class: i,
            label: labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class {i}")),
            prob: probs[i],
            logit: None,
        })
        .collect()
}

/// The ensemble's probabilities from each model's logits (all the same length).
pub fn combine(logits: &[&[f32]], how: Ensemble) -> Vec<f32> {
    let n = logits[0].len();
    let k = logits.len() as f32;
    match how {
        Ensemble::MeanProb => {
            let mut acc = vec![0.0f32; n];
            for l in logits {
                for (a, p) in acc.iter_mut().zip(softmax(l)) {
                    *a += p / k;
                }
            }
            acc
        }
        Ensemble::MeanLogit => {
            let mut mean = vec![0.0f32; n];
            for l in logits {
                for (m, v) in mean.iter_mut().zip(l.iter()) {
                    *m += v / k;
                }
            }
            softmax(&mean)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_combines() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let p = softmax(&[1.0, 3.0, 2.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let top = top_k(&p, 2, &labels);
        assert_eq!((top[0].class, top[1].class), (1, 2));
        assert_eq!(top[0].label, "b");
        let m = combine(&[&[0.0, 10.0, 0.0], &[10.0, 0.0, 0.0]], Ensemble::MeanProb);
        assert!((m[0] - m[1]).abs() < 1e-6 && m[2] < 1e-3);
        let l = combine(&[&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]], Ensemble::MeanLogit);
        assert!(l.iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-6));
        assert_eq!(IMAGENET_LABELS.lines().count(), 1000);
        assert_eq!(IMAGENET_LABELS.lines().nth(281), Some("tabby, tabby cat"));
        assert_eq!(IMAGENET_SYNSETS.lines().count(), 1000);
        assert_eq!(IMAGENET_SYNSETS.lines().nth(281), Some("n02123045"));
    }
}
