//! Learning from a site's own access logs: mine the template vocabulary, replay the requests
//! through client sessions on the log's own clock, and train the pre-upstream and
//! post-response isolation forests, on rule-clean traffic only. Also the offline scorer that
//! `vigil score` uses, which runs the same per-request steps as the proxy will. No I/O here:
//! the caller reads logs and writes models.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::config::Inspection;
use crate::detectors::forest::{ForestError, ForestModel, Score, TrainOptions};
use crate::detectors::rules::{RuleMatch, RuleSet};
use crate::eval::request_from_record;
use crate::features::{self, PostVector, PreVector, RequestFacts, FEATURES_VERSION, POST, PRE};
use crate::record::Record;
use crate::session::{SessionConfig, Sessions};
use crate::template::{Miner, MinerConfig, TemplateId, Vocabulary};

#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error("no usable training traffic: {0}")]
    NoData(String),
    #[error("pre-upstream forest: {0}")]
    PreForest(ForestError),
    #[error("post-response forest: {0}")]
    PostForest(ForestError),
}

/// Everything training needs to know.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub miner: MinerConfig,
    pub session: SessionConfig,
    pub forest: TrainOptions,
    /// Rule score at or above which a request is left out of training.
    pub rule_threshold: u32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            miner: MinerConfig::default(),
            session: SessionConfig::default(),
            forest: TrainOptions::default(),
            rule_threshold: 5,
        }
    }
}

/// What the models were trained on, for the manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    pub records: usize,
    pub excluded_by_rules: usize,
    pub clients: usize,
    pub templates: usize,
    pub unknown_share: f64,
    pub first_time: String,
    pub last_time: String,
    pub features_version: u32,
}

/// The learned detectors.
#[derive(Debug)]
pub struct Learned {
    pub vocabulary: Vocabulary,
    pub pre: ForestModel<PRE>,
    pub post: ForestModel<POST>,
    pub summary: TrainingSummary,
}

fn client_hash(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// Seconds since the epoch, with milliseconds, of a record.
pub fn record_time(r: &Record) -> f64 {
    r.time.timestamp() as f64 + r.time.timestamp_subsec_millis() as f64 / 1000.0
}

/// One request through templates, session and features; returns the vectors and the
/// template, and updates the client's state (request, then response).
fn step(
    vocab: &Vocabulary,
    sessions: &Sessions,
    r: &Record,
) -> (String, TemplateId, PreVector, PostVector) {
    let (method, target, _) = r.request_parts();
    let template = vocab.lookup(&method, &target);
    let now = record_time(r);
    let key = sessions.key(&r.client, r.user_agent.as_deref(), None, None);
    let window = sessions.config().window;
    sessions.with(&key, now, |c| {
        let facts = RequestFacts {
            time: r.time,
            method: &method,
            target: target.as_bytes(),
            unknown_template: template == TemplateId::UNKNOWN,
        };
        let known = c.requests > 0;
        let pre = features::pre(&facts, known.then_some(&*c), window);
        c.observe_request(now, template, window);
        c.observe_response(now, r.status, r.bytes);
        let post = features::post(&pre, r.status, r.bytes, c, now);
        (key.clone(), template, pre, post)
    })
}

/// Train from parsed records (any order; they are sorted by time, stably).
pub fn train(
    records: &[Record],
    rules: &RuleSet,
    limits: &Inspection,
    cfg: &TrainConfig,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<Learned, LearnError> {
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by(|&a, &b| records[a].time.cmp(&records[b].time));
    let mut clean = Vec::with_capacity(records.len());
    for (n, &i) in order.iter().enumerate() {
        let report = rules.inspect(&request_from_record(&records[i]), limits);
        if report.score() < cfg.rule_threshold {
            clean.push(&records[i]);
        }
        if n % 1000 == 0 {
            progress("rules", n, order.len());
        }
    }
    progress("rules", order.len(), order.len());
    if clean.len() < 100 {
        return Err(LearnError::NoData(format!(
            "{} rule-clean requests of {}; need at least 100",
            clean.len(),
            records.len()
        )));
    }
    let mut miner = Miner::new(cfg.miner);
    for (n, r) in clean.iter().enumerate() {
        let (m, t, _) = r.request_parts();
        miner.add(&m, &t);
        if n % 5000 == 0 {
            progress("templates", n, clean.len());
        }
    }
    let vocabulary = miner.finish();
    progress("templates", clean.len(), clean.len());

    let sessions = Sessions::new(cfg.session.clone());
    let mut pre = Vec::with_capacity(clean.len());
    let mut post = Vec::with_capacity(clean.len());
    let mut unknown = 0usize;
    let mut clients = std::collections::HashSet::new();
    for (n, r) in clean.iter().enumerate() {
        let (key, template, p, q) = step(&vocabulary, &sessions, r);
        let c = client_hash(&key);
        clients.insert(c);
        unknown += (template == TemplateId::UNKNOWN) as usize;
        pre.push((c, p));
        post.push((c, q));
        if n % 5000 == 0 {
            progress("sessions", n, clean.len());
        }
    }
    progress("sessions", clean.len(), clean.len());
    progress("forest", 0, 2);
    let pre_model = ForestModel::train(&pre, &cfg.forest).map_err(LearnError::PreForest)?;
    progress("forest", 1, 2);
    let post_model = ForestModel::train(&post, &cfg.forest).map_err(LearnError::PostForest)?;
    progress("forest", 2, 2);
    let summary = TrainingSummary {
        records: records.len(),
        excluded_by_rules: records.len() - clean.len(),
        clients: clients.len(),
        templates: vocabulary.len() - 1,
        unknown_share: unknown as f64 / clean.len() as f64,
        first_time: clean
            .first()
            .map(|r| r.time.to_rfc3339())
            .unwrap_or_default(),
        last_time: clean
            .last()
            .map(|r| r.time.to_rfc3339())
            .unwrap_or_default(),
        features_version: FEATURES_VERSION,
    };
    Ok(Learned {
        vocabulary,
        pre: pre_model,
        post: post_model,
        summary,
    })
}

/// The offline verdict on one log line.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub template: String,
    pub rule_score: u32,
    pub rules: Vec<RuleMatch>,
    pub forest_pre: Score,
    pub forest_post: Score,
    pub anomaly: bool,
    pub reasons: Vec<String>,
}

/// Scores records one by one, in the order given, with the records' own timestamps as the
/// clock; keeps the client sessions between calls.
pub struct Scorer<'a> {
    learned: &'a Learned,
    rules: &'a RuleSet,
    limits: &'a Inspection,
    rule_threshold: u32,
    sessions: Sessions,
}

impl<'a> Scorer<'a> {
    pub fn new(
        learned: &'a Learned,
        rules: &'a RuleSet,
        limits: &'a Inspection,
        rule_threshold: u32,
        session: SessionConfig,
    ) -> Self {
        Scorer {
            learned,
            rules,
            limits,
            rule_threshold,
            sessions: Sessions::new(session),
        }
    }

    pub fn score(&self, r: &Record) -> Scored {
        let report = self.rules.inspect(&request_from_record(r), self.limits);
        let rule_score = report.score();
        let (_, template, pre, post) = step(&self.learned.vocabulary, &self.sessions, r);
        let forest_pre = self.learned.pre.score(&pre);
        let forest_post = self.learned.post.score(&post);
        let mut reasons = Vec::new();
        if rule_score >= self.rule_threshold {
            let ids: Vec<&str> = report.matches.iter().map(|m| m.id.as_str()).collect();
            reasons.push(format!(
                "rules score {rule_score} >= {} ({})",
                self.rule_threshold,
                ids.join(", ")
            ));
        }
        if forest_post.vote {
            reasons.push(format!(
                "post-response forest {:.3} > threshold {:.3}",
                forest_post.raw, forest_post.threshold
            ));
        }
        Scored {
            template: self.learned.vocabulary.text(template).to_string(),
            rule_score,
            rules: report.matches,
            forest_pre,
            forest_post,
            anomaly: !reasons.is_empty(),
            reasons,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn rules() -> RuleSet {
        RuleSet::load(&[PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))]).unwrap()
    }

    fn limits() -> Inspection {
        Inspection {
            body_limit: 65536,
            over_limit: crate::config::OverLimit::InspectPrefix,
            max_request_line: 8192,
            max_header_value: 8192,
            max_args: 255,
        }
    }

    fn line(ip: &str, secs: u32, req: &str, status: u16) -> Record {
        let l = format!(
            "{ip} - - [{:02}/Mar/2024:{:02}:{:02}:{:02} +0000] \"{req} HTTP/1.1\" {status} 512 \"-\" \"Mozilla/5.0\"",
            1 + secs / 86400,
            secs / 3600 % 24,
            secs / 60 % 60,
            secs % 60
        );
        Record::parse_line(&l, 1).unwrap()
    }

    #[test]
    fn trains_on_clean_traffic_and_flags_a_scanner() {
        // A day of traffic: twenty clients, each making a request every ten minutes and
        // visiting every kind of page in turn.
        let day = |i: u32| {
            let ip = format!("10.0.0.{}", i % 20);
            let req = match (i / 20 + i / 7) % 4 {
                0 => format!("GET /products/{}", i % 40),
                1 => "GET /static/app.css".to_string(),
                2 => format!("GET /search?q=item{}", i % 9),
                _ => "POST /cart/add".to_string(),
            };
            line(&ip, i * 29, &req, 200)
        };
        let mut recs: Vec<Record> = (0..3000u32).map(day).collect();
        recs.push(line(
            "10.9.9.9",
            4000,
            "GET /search?q=%27%20union%20select%20password%20from%20users--",
            200,
        ));
        let learned = train(
            &recs,
            &rules(),
            &limits(),
            &TrainConfig::default(),
            |_, _, _| {},
        )
        .unwrap();
        assert_eq!(learned.summary.excluded_by_rules, 1);
        assert!(
            learned.summary.templates >= 4 && learned.summary.templates < 20,
            "{:?}",
            learned.summary
        );
        let lim = limits();
        let rs = rules();
        let scorer = Scorer::new(&learned, &rs, &lim, 5, SessionConfig::default());
        // Replay the day first, as `vigil score` does with a log: sessions are then warm.
        let replay_flags = recs.iter().filter(|r| scorer.score(r).anomaly).count();
        assert!(
            replay_flags < recs.len() / 20,
            "{replay_flags} of {} flagged",
            recs.len()
        );
        // A scanner: 60 different missing pages in 12 seconds.
        let mut flagged = 0;
        for i in 0..60u32 {
            let s = scorer.score(&line(
                "10.66.0.1",
                87_000 + i / 5,
                &format!("GET /admin{i}/config.php.bak"),
                404,
            ));
            flagged += s.anomaly as usize;
        }
        assert!(
            flagged >= 40,
            "the scan is recognised after a few requests: {flagged}/60"
        );
        // Known clients carrying on as before are not.
        let normal_flags = (3000..3100u32)
            .filter(|&i| scorer.score(&day(i)).anomaly)
            .count();
        assert!(
            normal_flags <= 5,
            "{normal_flags}/100 ordinary requests flagged"
        );
    }
}
