//! Isolation-forest detector (`extended-isolation-forest`) over the feature vectors of
//! `features`: trained on rule-clean traffic with each client's share capped (so one noisy or
//! poisoning client cannot define "normal"), and calibrated on held-out normal vectors so that
//! the configured false-positive rate holds. Scores are mapped to [0, 1] with the calibrated
//! threshold at 0.5. Scoring is pure and allocation-free.

use std::collections::HashMap;

use extended_isolation_forest::{Forest, ForestOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ForestError {
    #[error("too few training vectors: {got}, need at least {need}")]
    TooFew { got: usize, need: usize },
    #[error("target false-positive rate must be in (0, 0.5], got {0}")]
    BadTarget(f64),
    #[error("training vector {index} has a non-finite value")]
    NonFinite { index: usize },
    #[error("isolation forest: {0}")]
    Forest(String),
}

/// Training settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainOptions {
    pub trees: usize,
    pub sample_size: usize,
    /// Largest share of the training set one client may contribute.
    pub max_client_share: f64,
    /// Share of the vectors held out (interleaved) for calibration.
    pub holdout: f64,
    /// Share of normal held-out vectors allowed above the threshold.
    pub target_fpr: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            trees: 100,
            sample_size: 256,
            max_client_share: 0.02,
            holdout: 0.2,
            target_fpr: 0.005,
        }
    }
}

/// A detector's verdict on one vector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    /// The forest's own anomaly score (higher is more anomalous, about 0.5 is average).
    pub raw: f64,
    /// Calibrated to [0, 1]; 0.5 is the threshold.
    pub score: f64,
    pub vote: bool,
    pub threshold: f64,
}

/// A trained, calibrated forest over `N` features.
#[derive(Serialize, Deserialize)]
pub struct ForestModel<const N: usize> {
    forest: Forest<f64, N>,
    /// Raw score at the calibrated threshold.
    threshold: f64,
    pub trained_on: usize,
    pub calibrated_on: usize,
    pub target_fpr: f64,
}

impl<const N: usize> std::fmt::Debug for ForestModel<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForestModel")
            .field("features", &N)
            .field("threshold", &self.threshold)
            .field("trained_on", &self.trained_on)
            .field("calibrated_on", &self.calibrated_on)
            .finish()
    }
}

impl<const N: usize> ForestModel<N> {
    /// Train from `(client, vector)` pairs in chronological order.
    pub fn train(
        data: &[(u64, [f64; N])],
        opts: &TrainOptions,
    ) -> Result<ForestModel<N>, ForestError> {
        if !(opts.target_fpr > 0.0 && opts.target_fpr <= 0.5) {
            return Err(ForestError::BadTarget(opts.target_fpr));
        }
        if let Some(index) = data
            .iter()
            .position(|(_, v)| v.iter().any(|x| !x.is_finite()))
        {
            return Err(ForestError::NonFinite { index });
        }
        let need = 50;
        if data.len() < need {
            return Err(ForestError::TooFew {
                got: data.len(),
                need,
            });
        }
        // Every k-th vector is held out: interleaved rather than the last stretch, so that the
        // calibration set covers the same hours and client mix as the training set.
        let every = ((1.0 / opts.holdout.clamp(0.01, 0.5)).round() as usize).max(2);
        let (hold, train): (Vec<_>, Vec<_>) = data
            .iter()
            .enumerate()
            .partition(|(i, _)| i % every == every - 1);
        let train: Vec<(u64, [f64; N])> = train.into_iter().map(|(_, v)| *v).collect();
        let hold: Vec<(u64, [f64; N])> = hold.into_iter().map(|(_, v)| *v).collect();
        let capped: Vec<[f64; N]> = cap_clients(&train, opts.max_client_share)
            .iter()
            .map(quantize)
            .collect();
        let options = ForestOptions {
            n_trees: opts.trees,
            sample_size: opts.sample_size.min(capped.len()),
            max_tree_depth: None,
            extension_level: 1,
        };
        let forest = Forest::from_slice(&capped, &options)
            .map_err(|e| ForestError::Forest(e.to_string()))?;
        let mut scores: Vec<f64> = hold
            .iter()
            .map(|(_, v)| forest.score(&quantize(v)))
            .collect();
        scores.sort_by(f64::total_cmp);
        let k = ((scores.len() as f64) * (1.0 - opts.target_fpr)).ceil() as usize;
        let threshold = scores[k.min(scores.len() - 1)];
        Ok(ForestModel {
            forest,
            threshold,
            trained_on: capped.len(),
            calibrated_on: scores.len(),
            target_fpr: opts.target_fpr,
        })
    }

    pub fn score(&self, v: &[f64; N]) -> Score {
        let raw = self.forest.score(&quantize(v));
        Score {
            raw,
            score: calibrate(raw, self.threshold),
            vote: raw > self.threshold,
            threshold: self.threshold,
        }
    }

    pub fn threshold(&self) -> f64 {
        self.threshold
    }
}

/// Steps per unit on the grid features are snapped to before the forest sees them.
const GRID: f64 = 256.0;

/// Snap every feature to a grid of `1/GRID`. The forest draws split points with
/// `rand::Uniform::new(min, max)`, which (rand 0.8) loops about `max / (max - min)` times to
/// fit its scale: two distinct but nearly equal feature values (decayed rates that differ in
/// the 9th digit) made training take minutes. On the grid any two distinct values are at least
/// `1/GRID` apart, and the features are small (log-scaled, ratios, angles), so a split costs a
/// few thousand steps at most. The grid is far finer than any difference that matters here.
fn quantize<const N: usize>(v: &[f64; N]) -> [f64; N] {
    let mut q = [0.0; N];
    for (q, x) in q.iter_mut().zip(v) {
        *q = (x * GRID).round() / GRID;
    }
    q
}

/// Piecewise-linear map of a raw score in [0, 1] so that the threshold lands on 0.5.
fn calibrate(raw: f64, t: f64) -> f64 {
    let t = t.clamp(1e-6, 1.0 - 1e-6);
    let s = if raw <= t {
        0.5 * raw / t
    } else {
        0.5 + 0.5 * (raw - t) / (1.0 - t)
    };
    if s.is_finite() {
        s.clamp(0.0, 1.0)
    } else {
        1.0
    }
}

/// Keep at most `share` of the set per client (at least one vector each), evenly spaced over
/// that client's requests so that its whole period is represented.
fn cap_clients<const N: usize>(data: &[(u64, [f64; N])], share: f64) -> Vec<[f64; N]> {
    let cap = ((data.len() as f64) * share).ceil().max(1.0) as usize;
    let mut per: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, (c, _)) in data.iter().enumerate() {
        per.entry(*c).or_default().push(i);
    }
    let mut keep = vec![false; data.len()];
    for idx in per.values() {
        if idx.len() <= cap {
            idx.iter().for_each(|&i| keep[i] = true);
        } else {
            for j in 0..cap {
                keep[idx[j * idx.len() / cap]] = true;
            }
        }
    }
    data.iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|((_, v), _)| *v)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random numbers for test data.
    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal_data(n: usize) -> Vec<(u64, [f64; 3])> {
        let mut s = 7;
        (0..n)
            .map(|i| {
                (
                    (i % 200) as u64,
                    [lcg(&mut s), lcg(&mut s) * 2.0, 5.0 + lcg(&mut s)],
                )
            })
            .collect()
    }

    #[test]
    fn calibrated_to_the_target_false_positive_rate() {
        let data = normal_data(5000);
        let m = ForestModel::train(
            &data,
            &TrainOptions {
                target_fpr: 0.05,
                ..TrainOptions::default()
            },
        )
        .unwrap();
        let fresh = normal_data(3000);
        let fp = fresh.iter().filter(|(_, v)| m.score(v).vote).count() as f64 / fresh.len() as f64;
        assert!(fp < 0.10, "false-positive rate on fresh normal data: {fp}");
        let outlier = m.score(&[8.0, -5.0, 40.0]);
        assert!(outlier.vote && outlier.score > 0.5, "{outlier:?}");
        assert!(m.score(&[0.5, 1.0, 5.5]).score < 0.5);
    }

    #[test]
    fn one_client_cannot_dominate_training() {
        // 90% of the traffic comes from one client doing something odd.
        let mut data = normal_data(1000);
        for _ in 0..9000 {
            data.push((999, [9.0, 9.0, 9.0]));
        }
        let capped = cap_clients(&data, 0.02);
        let odd = capped.iter().filter(|v| v[0] == 9.0).count();
        assert!(odd <= 200, "{odd}");
    }

    #[test]
    fn refuses_bad_input() {
        assert!(matches!(
            ForestModel::<3>::train(&normal_data(10), &TrainOptions::default()),
            Err(ForestError::TooFew { .. })
        ));
        let mut d = normal_data(100);
        d[5].1[1] = f64::NAN;
        assert!(matches!(
            ForestModel::train(&d, &TrainOptions::default()),
            Err(ForestError::NonFinite { index: 5 })
        ));
        assert!(matches!(
            ForestModel::train(
                &normal_data(100),
                &TrainOptions {
                    target_fpr: 0.0,
                    ..TrainOptions::default()
                }
            ),
            Err(ForestError::BadTarget(_))
        ));
    }

    #[test]
    fn serialises_losslessly() {
        let m = ForestModel::train(&normal_data(500), &TrainOptions::default()).unwrap();
        let json = serde_json::to_string(&m).unwrap();
        let back: ForestModel<3> = serde_json::from_str(&json).unwrap();
        let v = [0.3, 1.2, 5.1];
        assert_eq!(m.score(&v), back.score(&v));
    }
}
