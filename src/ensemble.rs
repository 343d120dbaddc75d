//! Ensemble: the detectors' calibrated scores (rules, isolation forest, transformer) become
//! one `Verdict` that carries its reasons. Sits between the detectors and the policy; pure and
//! allocation-light (it runs twice per request: pre-upstream and post-response).
//!
//! Every detector reports a score in [0, 1] on which its trained threshold (the one calibrated
//! to the target false-positive rate) sits at 0.5. The fused score is the largest weighted
//! score, `max wᵢ·sᵢ`: with weight 1 a detector at its own threshold flags the request, so
//! the ensemble's false-positive rate is at most the sum of the detectors' calibrated ones; a
//! weight below 1 asks that detector to be surer than its threshold. (A noisy-OR,
//! `1 - Π (1 - wᵢ·sᵢ)`, was measured first: two detectors each a little below threshold, which
//! normal traffic often gives, added up to a flag, and the ensemble's false-positive rate on
//! the simulator's held-out day was 1.9% against 0.3% for each detector alone.) Rule hits
//! that reach `policy.threshold` are authoritative and decide on their own whatever the
//! weights say (the research prototype let a weighted vote overrule them).

use serde::Serialize;

use crate::config::{DetectorSettings, EnsembleConfig};

/// Which detector a score comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    Rules,
    ForestPre,
    ForestPost,
    Transformer,
}

impl DetectorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DetectorKind::Rules => "rules",
            DetectorKind::ForestPre => "forest_pre",
            DetectorKind::ForestPost => "forest_post",
            DetectorKind::Transformer => "transformer",
        }
    }
}

/// One detector's contribution to a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DetectorScore {
    pub detector: DetectorKind,
    /// Calibrated to [0, 1]; the detector's trained threshold is at 0.5.
    pub score: f64,
    /// Calibrated score at which it votes (`ensemble.<detector>.threshold`).
    pub threshold: f64,
    pub vote: bool,
    pub weight: f64,
    /// In the detector's own unit: rule points, forest anomaly score, transformer NLL (nats).
    pub raw: f64,
    /// The trained threshold in that unit.
    pub raw_threshold: f64,
}

impl DetectorScore {
    pub fn new(
        detector: DetectorKind,
        settings: &DetectorSettings,
        score: f64,
        raw: f64,
        raw_threshold: f64,
    ) -> DetectorScore {
        let score = if score.is_finite() {
            score.clamp(0.0, 1.0)
        } else {
            // A detector that produced garbage is not evidence either way.
            0.0
        };
        DetectorScore {
            detector,
            score,
            threshold: settings.threshold,
            vote: score >= settings.threshold,
            weight: settings.weight,
            raw,
            raw_threshold,
        }
    }
}

/// The transformer's settings for a request of `method`: a state change (RFC 9110's unsafe
/// methods, and anything unknown) weighs `transformer_unsafe_weight`.
pub fn transformer_settings(cfg: &EnsembleConfig, method: &str) -> DetectorSettings {
    let safe = ["GET", "HEAD", "OPTIONS", "TRACE"]
        .iter()
        .any(|m| method.eq_ignore_ascii_case(m));
    DetectorSettings {
        weight: if safe {
            cfg.transformer.weight
        } else {
            cfg.transformer_unsafe_weight
        },
        ..cfg.transformer
    }
}

/// The rules' calibrated score: the policy threshold lands on 0.5, twice it on 1.
pub fn rules_score(points: u32, threshold: u32) -> f64 {
    (points as f64 / (2.0 * threshold.max(1) as f64)).min(1.0)
}

/// Map a raw score so that `threshold` lands on 0.5 and `ceiling` (or anything above) on 1;
/// `floor` and below land on 0. Piecewise linear, so the order of raw scores is kept.
pub fn calibrate(raw: f64, floor: f64, threshold: f64, ceiling: f64) -> f64 {
    if !raw.is_finite() {
        return if raw == f64::NEG_INFINITY { 0.0 } else { 1.0 };
    }
    let s = if raw <= threshold {
        let span = threshold - floor;
        if span <= 0.0 {
            0.0
        } else {
            0.5 * (raw - floor) / span
        }
    } else {
        let span = ceiling - threshold;
        if span <= 0.0 {
            1.0
        } else {
            0.5 + 0.5 * (raw - threshold) / span
        }
    };
    s.clamp(0.0, 1.0)
}

/// The fused judgement on a request at one stage. Serialised with its `reasons`.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Fused score in [0, 1].
    pub score: f64,
    pub threshold: f64,
    pub anomaly: bool,
    /// The rule hits reached `policy.threshold` and decided on their own.
    pub rules_decided: bool,
    pub detectors: Vec<DetectorScore>,
}

impl Verdict {
    pub fn detector(&self, kind: DetectorKind) -> Option<&DetectorScore> {
        self.detectors.iter().find(|d| d.detector == kind)
    }

    /// One sentence per piece of evidence, for operators. Written when a log asks for them,
    /// not per request: under a flood every request has a voting detector, and formatting
    /// its sentences cost more than scoring it with the forest.
    pub fn reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.rules_decided {
            reasons.push("rule hits reached the policy threshold".to_string());
        }
        for d in self.detectors.iter().filter(|d| d.vote) {
            reasons.push(match d.detector {
                DetectorKind::Rules => format!(
                    "rules: {} points (threshold {})",
                    d.raw, d.raw_threshold
                ),
                DetectorKind::ForestPre | DetectorKind::ForestPost => format!(
                    "{}: anomaly score {:.3} above its trained threshold {:.3} (calibrated {:.2})",
                    d.detector.as_str(),
                    d.raw,
                    d.raw_threshold,
                    d.score
                ),
                DetectorKind::Transformer => format!(
                    "transformer: this template after the previous ones of this client and user agent has NLL {:.2} nats (at most its NLL as a first request, if it is a page that opens sessions), trained threshold {:.2} (calibrated {:.2})",
                    d.raw, d.raw_threshold, d.score
                ),
            });
        }
        if self.anomaly && !self.rules_decided {
            reasons.push(format!(
                "ensemble score {:.3} >= {:.2}",
                self.score, self.threshold
            ));
        }
        reasons
    }
}

impl Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut v = s.serialize_struct("Verdict", 6)?;
        v.serialize_field("score", &self.score)?;
        v.serialize_field("threshold", &self.threshold)?;
        v.serialize_field("anomaly", &self.anomaly)?;
        v.serialize_field("rules_decided", &self.rules_decided)?;
        v.serialize_field("detectors", &self.detectors)?;
        v.serialize_field("reasons", &self.reasons())?;
        v.end()
    }
}

/// Fuse the scores of the enabled detectors (`scores` holds only those that ran).
/// `rules_decided` is whether the rule hits reached the policy threshold.
pub fn combine(cfg: &EnsembleConfig, scores: Vec<DetectorScore>, rules_decided: bool) -> Verdict {
    let score = scores
        .iter()
        .map(|d| (d.weight * d.score).clamp(0.0, 1.0))
        .fold(0.0, f64::max);
    let anomaly = rules_decided || score >= cfg.threshold;
    Verdict {
        score,
        threshold: cfg.threshold,
        anomaly,
        rules_decided,
        detectors: scores,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    fn cfg() -> EnsembleConfig {
        let d = |weight| DetectorSettings {
            enabled: true,
            weight,
            threshold: 0.5,
        };
        EnsembleConfig {
            rules: d(1.0),
            forest: d(1.0),
            transformer: d(1.0),
            transformer_unsafe_weight: 1.0,
            threshold: 0.5,
            max_action: Mode::Block,
        }
    }

    fn s(kind: DetectorKind, settings: DetectorSettings, score: f64) -> DetectorScore {
        DetectorScore::new(kind, &settings, score, score, 0.5)
    }

    #[test]
    fn state_changes_get_the_transformers_unsafe_weight() {
        let mut c = cfg();
        c.transformer.weight = 0.7;
        c.transformer_unsafe_weight = 0.8;
        for (method, weight) in [
            ("GET", 0.7),
            ("head", 0.7),
            ("OPTIONS", 0.7),
            ("POST", 0.8),
            ("delete", 0.8),
            ("PROPFIND", 0.8),
        ] {
            let s = transformer_settings(&c, method);
            assert_eq!(s.weight, weight, "{method}");
            assert_eq!((s.enabled, s.threshold), (true, 0.5));
        }
    }

    #[test]
    fn a_detector_at_its_threshold_decides_and_weights_ask_for_more() {
        let mut c = cfg();
        let forest_sure = combine(&c, vec![s(DetectorKind::ForestPost, c.forest, 0.95)], false);
        assert!(forest_sure.anomaly, "{forest_sure:?}");
        let forest_at_threshold =
            combine(&c, vec![s(DetectorKind::ForestPost, c.forest, 0.5)], false);
        assert!(forest_at_threshold.anomaly);
        // Two detectors just below their thresholds do not add up to a flag.
        let below = combine(
            &c,
            vec![
                s(DetectorKind::ForestPost, c.forest, 0.45),
                s(DetectorKind::Transformer, c.transformer, 0.45),
            ],
            false,
        );
        assert!(!below.anomaly, "{below:?}");
        c.transformer.weight = 0.7;
        let weighted = combine(
            &c,
            vec![s(DetectorKind::Transformer, c.transformer, 0.6)],
            false,
        );
        assert!(!weighted.anomaly, "0.7 x 0.6 < 0.5: {weighted:?}");
        let both = combine(
            &c,
            vec![
                s(DetectorKind::ForestPost, c.forest, 0.55),
                s(DetectorKind::Transformer, c.transformer, 0.9),
            ],
            false,
        );
        assert!(both.anomaly, "{both:?}");
        assert_eq!(both.reasons().len(), 3, "{:?}", both.reasons());
        let json = serde_json::to_value(&both).unwrap();
        assert_eq!(json["reasons"].as_array().map(Vec::len), Some(3), "{json}");
    }

    #[test]
    fn rules_are_authoritative_whatever_the_weights() {
        let mut c = cfg();
        c.rules.weight = 0.0;
        let v = combine(
            &c,
            vec![s(DetectorKind::Rules, c.rules, rules_score(5, 5))],
            true,
        );
        assert!(v.anomaly && v.rules_decided);
        assert_eq!(rules_score(5, 5), 0.5);
        assert_eq!(rules_score(20, 5), 1.0);
    }

    #[test]
    fn garbage_scores_are_not_evidence() {
        let c = cfg();
        let v = combine(
            &c,
            vec![s(DetectorKind::Transformer, c.transformer, f64::NAN)],
            false,
        );
        assert!(!v.anomaly && v.score == 0.0);
    }

    #[test]
    fn calibration_keeps_order_and_pins_the_threshold() {
        assert_eq!(calibrate(3.0, 0.0, 3.0, 9.0), 0.5);
        assert_eq!(calibrate(9.0, 0.0, 3.0, 9.0), 1.0);
        assert_eq!(calibrate(-1.0, 0.0, 3.0, 9.0), 0.0);
        assert!(calibrate(2.0, 0.0, 3.0, 9.0) < calibrate(4.0, 0.0, 3.0, 9.0));
        assert_eq!(calibrate(f64::INFINITY, 0.0, 3.0, 9.0), 1.0);
    }
}
