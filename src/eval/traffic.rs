//! Evaluation of the whole ensemble on a labelled access log (`vigil eval --traffic LOG
//! --labels LABELS`): a chronological split (train on the earlier part, score the later one
//! through the same two-stage pipeline as the proxy, sessions warmed on the earlier part),
//! request-level precision / recall / F1 / false-positive rate, per attack type request and
//! episode recall and requests until first detection, ROC-AUC and PR-AUC per detector, an
//! ablation (each detector alone, and together) and a bigram baseline beside the transformer.
//! Reads files; never used by the proxy.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{Config, EnsembleConfig};
use crate::detectors::bigram::Bigram;
use crate::detectors::rules::RuleSet;
use crate::ensemble::DetectorKind;
use crate::learn::{self, TrainConfig};
use crate::models::ModelSet;
use crate::pipeline;
use crate::record::Record;
use crate::session::{agent_hash, Lanes, Sessions};
use crate::template::TemplateId;

use super::EvalError;

/// One line of a labelled log.
#[derive(Debug, Clone)]
pub struct Labeled {
    pub record: Record,
    /// Attack kind, or `None` for normal traffic.
    pub attack: Option<String>,
    pub episode: Option<u32>,
}

#[derive(Deserialize)]
struct LabelRow {
    line: usize,
    attack: Option<String>,
    episode: Option<u32>,
}

/// Read a combined-format log and its labels (JSONL, one `{"line","attack","episode",...}` per
/// log line). Every log line must parse and have a label: an evaluation that silently drops
/// lines would report numbers about other data.
pub fn load_labeled(log: &Path, labels: &Path) -> Result<Vec<Labeled>, EvalError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| EvalError::Read {
            path: p.display().to_string(),
            reason: e.to_string(),
        })
    };
    let log_text = read(log)?;
    let label_text = read(labels)?;
    let mut by_line: HashMap<usize, LabelRow> = HashMap::new();
    for (i, l) in label_text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let row: LabelRow = serde_json::from_str(l).map_err(|e| EvalError::Line {
            path: labels.display().to_string(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        by_line.insert(row.line, row);
    }
    let mut out = Vec::new();
    for (i, l) in log_text.lines().enumerate() {
        let line = i + 1;
        let record = Record::parse_line(l, line).map_err(|e| EvalError::Line {
            path: log.display().to_string(),
            line,
            reason: e.reason,
        })?;
        let label = by_line.remove(&line).ok_or_else(|| EvalError::Line {
            path: labels.display().to_string(),
            line,
            reason: "no label for this log line".into(),
        })?;
        out.push(Labeled {
            record,
            attack: label.attack,
            episode: label.episode,
        });
    }
    Ok(out)
}

/// Request-level confusion counts.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Confusion {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    pub fn_: usize,
}

impl Confusion {
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
    pub fn fpr(&self) -> f64 {
        ratio(self.fp, self.fp + self.tn)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Detection of one attack type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeReport {
    pub requests: usize,
    pub requests_flagged: usize,
    pub episodes: usize,
    pub episodes_detected: usize,
    /// Per detected episode: its requests up to and including the first flagged one.
    pub until_first: Vec<usize>,
}

impl TypeReport {
    pub fn request_recall(&self) -> f64 {
        ratio(self.requests_flagged, self.requests)
    }
    pub fn episode_recall(&self) -> f64 {
        ratio(self.episodes_detected, self.episodes)
    }
    pub fn median_until_first(&self) -> Option<usize> {
        let mut v = self.until_first.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }
}

/// One configuration of the ensemble, scored.
#[derive(Debug, Clone, Serialize)]
pub struct VariantReport {
    pub name: String,
    pub confusion: Confusion,
    pub types: BTreeMap<String, TypeReport>,
}

/// Ranking quality of one detector's raw score.
#[derive(Debug, Clone, Serialize)]
pub struct Ranking {
    pub detector: String,
    pub roc_auc: f64,
    pub pr_auc: f64,
    /// ROC-AUC of contextual attacks against normal traffic only.
    pub contextual_roc_auc: Option<f64>,
    /// Recall per attack type when the threshold lets through 0.5% of normal test requests
    /// (the same operating point for every detector, to compare them fairly).
    pub recall_at_half_percent_fpr: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrafficReport {
    pub train_lines: usize,
    pub test_lines: usize,
    pub test_attacks: usize,
    pub train_seconds: f64,
    pub templates: usize,
    pub variants: Vec<VariantReport>,
    pub rankings: Vec<Ranking>,
}

/// The ablation: each detector alone, rules with the forest, and everything.
fn variants(base: &EnsembleConfig) -> Vec<(&'static str, EnsembleConfig)> {
    let only = |rules: bool, forest: bool, transformer: bool| {
        let mut e = base.clone();
        e.rules.enabled = rules;
        e.forest.enabled = forest;
        e.transformer.enabled = transformer;
        e
    };
    vec![
        ("rules alone", only(true, false, false)),
        ("forest alone", only(false, true, false)),
        ("transformer alone", only(false, false, true)),
        ("rules + forest", only(true, true, false)),
        ("ensemble", only(true, true, true)),
    ]
}

/// Per-line raw scores of the full ensemble run, for the rankings.
#[derive(Default)]
struct Raw {
    rules: Vec<f64>,
    forest_pre: Vec<f64>,
    forest_post: Vec<f64>,
    transformer: Vec<f64>,
    bigram: Vec<f64>,
    ensemble: Vec<f64>,
}

/// Train on the first `train_share` of the lines and evaluate on the rest.
pub fn evaluate(
    cfg: &Config,
    rules: &Arc<RuleSet>,
    lines: &[Labeled],
    train_share: f64,
    train: &TrainConfig,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<TrafficReport, EvalError> {
    let split = ((lines.len() as f64) * train_share.clamp(0.05, 0.95)) as usize;
    let (train_part, test_part) = lines.split_at(split);
    let train_records: Vec<Record> = train_part.iter().map(|l| l.record.clone()).collect();
    let t0 = std::time::Instant::now();
    let trained = learn::train(&train_records, rules, &cfg.inspection, train, |s, d, t| {
        progress(s, d, t)
    })
    .map_err(|e| EvalError::Read {
        path: "training".into(),
        reason: e.to_string(),
    })?;
    let train_seconds = t0.elapsed().as_secs_f64();
    let learned = Arc::new(trained.learned);
    let templates = learned.vocabulary.len();

    // The baseline learns from the training part's requests per client lane and user agent,
    // in order, as the transformer's sequences are kept (without their idle splits, and with
    // the requests the rules flag, a few hundred in a day).
    let mut lanes = Lanes::new(&cfg.sessions);
    let keys = Sessions::new(cfg.sessions.clone());
    let train_keys: Vec<(String, u32)> = train_records
        .iter()
        .map(|r| {
            let key = keys.key(&r.client, r.user_agent.as_deref(), None, None);
            let lane = lanes.key(&key, pipeline::seconds(&r.time), r);
            (lane, agent_hash(r.user_agent.as_deref()))
        })
        .collect();
    let mut seqs: HashMap<(String, u32), Vec<TemplateId>> = HashMap::new();
    for (r, k) in train_records.iter().zip(&train_keys) {
        let (m, t, _) = r.request_parts();
        seqs.entry(k.clone())
            .or_default()
            .push(learned.vocabulary.lookup(&m, &t));
    }
    let bigram = Bigram::train(&seqs.into_values().collect::<Vec<_>>(), templates);

    let mut reports = Vec::new();
    let mut raw = Raw::default();
    let all = variants(&cfg.ensemble);
    for (vi, (name, ens)) in all.iter().enumerate() {
        let mut c = cfg.clone();
        c.ensemble = ens.clone();
        let set =
            ModelSet::assemble(&c, 1, rules.clone(), Some(learned.clone()), None).map_err(|e| {
                EvalError::Read {
                    path: "model set".into(),
                    reason: e.to_string(),
                }
            })?;
        let sessions = Sessions::new(cfg.sessions.clone());
        for (i, l) in train_part.iter().enumerate() {
            pipeline::score_record(&set, &sessions, &l.record);
            if i % 5000 == 0 {
                progress(&format!("warm {name}"), i, train_part.len());
            }
        }
        let full = vi == all.len() - 1;
        let mut last: HashMap<(String, u32), TemplateId> = HashMap::new();
        if full {
            for (r, k) in train_records.iter().zip(&train_keys) {
                let (m, t, _) = r.request_parts();
                last.insert(k.clone(), learned.vocabulary.lookup(&m, &t));
            }
        }
        let mut flagged = Vec::with_capacity(test_part.len());
        for (i, l) in test_part.iter().enumerate() {
            let (pre, post) = pipeline::score_record(&set, &sessions, &l.record);
            flagged.push(pre.verdict.anomaly || post.verdict.anomaly || pre.escalated);
            if full {
                let get = |k: DetectorKind| {
                    pre.verdict
                        .detector(k)
                        .or_else(|| post.verdict.detector(k))
                        .map_or(0.0, |d| d.raw)
                };
                raw.rules.push(get(DetectorKind::Rules));
                raw.forest_pre.push(get(DetectorKind::ForestPre));
                raw.forest_post.push(get(DetectorKind::ForestPost));
                raw.transformer.push(get(DetectorKind::Transformer));
                let k = (pre.session_key.clone(), pre.agent);
                raw.bigram
                    .push(bigram.nll(last.get(&k).copied(), pre.template));
                last.insert(k, pre.template);
                raw.ensemble
                    .push(pre.verdict.score.max(post.verdict.score) + pre.escalated as u8 as f64);
            }
            if i % 5000 == 0 {
                progress(&format!("score {name}"), i, test_part.len());
            }
        }
        reports.push(variant_report(name, test_part, &flagged));
    }

    let labels: Vec<bool> = test_part.iter().map(|l| l.attack.is_some()).collect();
    let mut rankings = Vec::new();
    let have_transformer = raw.transformer.iter().any(|&x| x != 0.0);
    for (name, scores) in [
        ("rules", &raw.rules),
        ("forest_pre", &raw.forest_pre),
        ("forest_post", &raw.forest_post),
        ("transformer", &raw.transformer),
        ("bigram", &raw.bigram),
        ("ensemble", &raw.ensemble),
    ] {
        if name == "transformer" && !have_transformer {
            continue;
        }
        rankings.push(ranking(name, scores, &labels, test_part));
    }
    Ok(TrafficReport {
        train_lines: train_part.len(),
        test_lines: test_part.len(),
        test_attacks: labels.iter().filter(|&&a| a).count(),
        train_seconds,
        templates,
        variants: reports,
        rankings,
    })
}

fn variant_report(name: &str, test: &[Labeled], flagged: &[bool]) -> VariantReport {
    let mut confusion = Confusion::default();
    let mut types: BTreeMap<String, TypeReport> = BTreeMap::new();
    // (kind, episode) -> (requests seen so far, first flagged position)
    let mut episodes: BTreeMap<(String, u32), (usize, Option<usize>)> = BTreeMap::new();
    for (l, &f) in test.iter().zip(flagged) {
        match &l.attack {
            None if f => confusion.fp += 1,
            None => confusion.tn += 1,
            Some(kind) => {
                if f {
                    confusion.tp += 1;
                } else {
                    confusion.fn_ += 1;
                }
                let t = types.entry(kind.clone()).or_default();
                t.requests += 1;
                t.requests_flagged += f as usize;
                let e = episodes
                    .entry((kind.clone(), l.episode.unwrap_or(0)))
                    .or_insert((0, None));
                e.0 += 1;
                if f && e.1.is_none() {
                    e.1 = Some(e.0);
                }
            }
        }
    }
    for ((kind, _), (_, first)) in episodes {
        let t = types.entry(kind).or_default();
        t.episodes += 1;
        if let Some(n) = first {
            t.episodes_detected += 1;
            t.until_first.push(n);
        }
    }
    VariantReport {
        name: name.to_string(),
        confusion,
        types,
    }
}

/// ROC-AUC by the rank statistic (ties count half).
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut pos, mut i) = (0.0, 0usize, 0usize);
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] {
                rank_sum += avg_rank;
                pos += 1;
            }
        }
        i = j + 1;
    }
    let neg = scores.len() - pos;
    if pos == 0 || neg == 0 {
        return 0.5;
    }
    (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos as f64 * neg as f64)
}

/// Average precision (area under the precision-recall curve), ties broken pessimistically.
pub fn pr_auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    // Highest first; among equal scores the negatives first, so ties do not flatter.
    idx.sort_by(|&a, &b| {
        scores[b]
            .total_cmp(&scores[a])
            .then(labels[a].cmp(&labels[b]))
    });
    let pos = labels.iter().filter(|&&l| l).count();
    if pos == 0 {
        return 0.0;
    }
    let (mut tp, mut ap) = (0usize, 0.0);
    for (n, &k) in idx.iter().enumerate() {
        if labels[k] {
            tp += 1;
            ap += tp as f64 / (n + 1) as f64;
        }
    }
    ap / pos as f64
}

fn ranking(name: &str, scores: &[f64], labels: &[bool], test: &[Labeled]) -> Ranking {
    let roc = roc_auc(scores, labels);
    let pr = pr_auc(scores, labels);
    let ctx: Vec<usize> = (0..test.len())
        .filter(|&i| test[i].attack.as_deref().is_none_or(|k| k == "contextual"))
        .collect();
    let contextual_roc_auc = ctx.iter().any(|&i| test[i].attack.is_some()).then(|| {
        let s: Vec<f64> = ctx.iter().map(|&i| scores[i]).collect();
        let l: Vec<bool> = ctx.iter().map(|&i| labels[i]).collect();
        roc_auc(&s, &l)
    });
    let mut normal: Vec<f64> = (0..test.len())
        .filter(|&i| !labels[i])
        .map(|i| scores[i])
        .collect();
    normal.sort_by(f64::total_cmp);
    let cut = normal
        .get(((normal.len() as f64) * 0.995) as usize)
        .copied()
        .unwrap_or(f64::INFINITY);
    let mut per: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (i, l) in test.iter().enumerate() {
        if let Some(k) = &l.attack {
            let e = per.entry(k.clone()).or_default();
            e.0 += 1;
            e.1 += (scores[i] > cut) as usize;
        }
    }
    Ranking {
        detector: name.to_string(),
        roc_auc: roc,
        pr_auc: pr,
        contextual_roc_auc,
        recall_at_half_percent_fpr: per
            .into_iter()
            .map(|(k, (n, hit))| (k, ratio(hit, n)))
            .collect(),
    }
}

/// The report as text tables.
pub fn render(r: &TrafficReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "trained on {} lines ({:.1} s, {} templates), scored {} lines of which {} are attacks\n",
        r.train_lines, r.train_seconds, r.templates, r.test_lines, r.test_attacks
    );
    let _ = writeln!(
        s,
        "{:<18} {:>9} {:>9} {:>9} {:>9}",
        "variant", "precision", "recall", "F1", "FPR"
    );
    for v in &r.variants {
        let c = &v.confusion;
        let _ = writeln!(
            s,
            "{:<18} {:>9.4} {:>9.4} {:>9.4} {:>8.3}%",
            v.name,
            c.precision(),
            c.recall(),
            c.f1(),
            c.fpr() * 100.0
        );
    }
    if let Some(full) = r.variants.last() {
        let _ = writeln!(
            s,
            "\nper attack type ({}): request recall, episode recall, median requests until first detection",
            full.name
        );
        let names: Vec<&str> = r.variants.iter().map(|v| v.name.as_str()).collect();
        let _ = writeln!(
            s,
            "{:<20} {:>8} {:>9} {:>8} {:>6}   episode recall by variant: {}",
            "type",
            "requests",
            "req.rec",
            "episodes",
            "first",
            names.join(" | ")
        );
        for (kind, t) in &full.types {
            let by: Vec<String> = r
                .variants
                .iter()
                .map(|v| {
                    v.types
                        .get(kind)
                        .map_or("-".into(), |t| format!("{:.2}", t.episode_recall()))
                })
                .collect();
            let _ = writeln!(
                s,
                "{:<20} {:>8} {:>9.3} {:>4}/{:<3} {:>6}   {}",
                kind,
                t.requests,
                t.request_recall(),
                t.episodes_detected,
                t.episodes,
                t.median_until_first().map_or("-".into(), |n| n.to_string()),
                by.join(" | ")
            );
        }
    }
    let _ = writeln!(
        s,
        "\n{:<12} {:>8} {:>8} {:>11}   recall at 0.5% FPR per type",
        "detector", "ROC-AUC", "PR-AUC", "ctx ROC-AUC"
    );
    for k in &r.rankings {
        let per: Vec<String> = k
            .recall_at_half_percent_fpr
            .iter()
            .map(|(t, v)| format!("{t} {v:.2}"))
            .collect();
        let _ = writeln!(
            s,
            "{:<12} {:>8.4} {:>8.4} {:>11}   {}",
            k.detector,
            k.roc_auc,
            k.pr_auc,
            k.contextual_roc_auc
                .map_or("-".into(), |v| format!("{v:.4}")),
            per.join(", ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_random_and_tied_rankings() {
        assert_eq!(
            roc_auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            1.0
        );
        assert_eq!(
            roc_auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            0.0
        );
        assert_eq!(roc_auc(&[0.5; 4], &[false, true, false, true]), 0.5);
        assert_eq!(
            pr_auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            1.0
        );
        assert!(pr_auc(&[0.5; 4], &[false, true, false, true]) <= 0.5);
    }

    #[test]
    fn episodes_count_once_and_remember_the_first_hit() {
        let rec = |s: u32| {
            Record::parse_line(
                &format!("10.0.0.1 - - [01/Mar/2024:00:00:{s:02} +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"x\""),
                1,
            )
            .unwrap()
        };
        let l = |s, attack: Option<&str>, ep| Labeled {
            record: rec(s),
            attack: attack.map(String::from),
            episode: ep,
        };
        let test = vec![
            l(0, None, None),
            l(1, Some("scanning"), Some(1)),
            l(2, Some("scanning"), Some(1)),
            l(3, Some("scanning"), Some(1)),
            l(4, Some("flood"), Some(2)),
            l(5, None, None),
        ];
        let r = variant_report("x", &test, &[false, false, false, true, false, true]);
        let s = &r.types["scanning"];
        assert_eq!((s.episodes, s.episodes_detected), (1, 1));
        assert_eq!(s.median_until_first(), Some(3));
        assert_eq!(r.types["flood"].episodes_detected, 0);
        assert_eq!((r.confusion.tp, r.confusion.fp, r.confusion.fn_), (1, 1, 3));
    }
}
