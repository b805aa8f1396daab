//! From logits to answers: softmax, top-K with labels, and the ensemble of several models.

use serde::{Deserialize, Serialize};

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

/// Class names for a model: its config's `label_names`, else timm's ImageNet-1k names for 1000 classes,
/// else `class N`.
pub fn labels(model: &Model) -> Vec<String> {
    match &model.config.label_names {
        Some(names) if names.len() == model.num_classes => names.clone(),
        _ if model.num_classes == 1000 => IMAGENET_LABELS.lines().map(str::to_string).collect(),
        _ => (0..model.num_classes)
            .map(|i| format!("class {i}"))
            .collect(),
    }
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
    }
}
