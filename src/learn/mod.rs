//! Learning from a site's own access logs: mine the template vocabulary, replay the requests
//! through client sessions on the log's own clock, and train the pre-upstream and
//! post-response isolation forests, on rule-clean traffic only. Also the offline scorer that
//! `vigil score` uses, which runs the same per-request steps as the proxy will. No I/O here:
//! the caller reads logs and writes models.

pub mod transformer;

use std::collections::{HashMap, HashSet};

use crate::config::Inspection;
use crate::detectors::forest::{self, ForestError, ForestModel, TrainOptions};
use crate::detectors::rules::RuleSet;
use crate::eval::request_from_record;
use crate::features::{
    in_failure_wave, PostVector, PreVector, FEATURES_VERSION, POST_FLOORED, PRE_FLOORED,
};
use crate::models::learned::{canary_outputs, Canary, CANARIES};
pub use crate::models::learned::{Learned, TrainingSummary};

/// What training produces: the detectors and the canaries their manifest will carry.
#[derive(Debug)]
pub struct Trained {
    pub learned: Learned,
    pub canaries: Vec<Canary>,
}
use crate::detectors::transformer::{
    counted_from, with_counts, FreshStart, Transformer, Transitions,
};
use crate::pipeline;
use crate::record::Record;
use crate::session::{agent_hash, key_hash, Decayed, Lanes, SessionConfig, Sessions, TAU_SHORT};
use crate::template::{
    status_bucket, Miner, MinerConfig, RouteStats, TemplateId, Vocabulary, STATUS_BUCKETS,
};

#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error("no usable training traffic: {0}")]
    NoData(String),
    #[error("pre-upstream forest: {0}")]
    PreForest(ForestError),
    #[error("post-response forest: {0}")]
    PostForest(ForestError),
    // Not `#[from]`, which would make the inner error the source as well: printed as a
    // chain, its text came twice.
    #[error("transformer: {0}")]
    Transformer(transformer::LmTrainError),
    #[error("transformer: the model does not load: {0}")]
    TransformerLoad(crate::detectors::transformer::TransformerError),
    #[error("{}: {reason}", path.display())]
    Foreign {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl From<transformer::LmTrainError> for LearnError {
    fn from(e: transformer::LmTrainError) -> Self {
        LearnError::Transformer(e)
    }
}

impl From<crate::detectors::transformer::TransformerError> for LearnError {
    fn from(e: crate::detectors::transformer::TransformerError) -> Self {
        LearnError::TransformerLoad(e)
    }
}

/// A sequence model trained elsewhere (`vigil train --transformer-onnx`), on the template ids
/// of the vocabulary that `vigil train` mines from the same logs: served instead of one trained
/// here, and calibrated, counted and checked here like one.
#[derive(Debug, Clone)]
pub struct ForeignModel {
    /// Where it was read from, for errors.
    pub path: std::path::PathBuf,
    pub onnx: Vec<u8>,
}

/// Everything training needs to know.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub miner: MinerConfig,
    pub session: SessionConfig,
    pub forest: TrainOptions,
    /// Rule score at or above which a request is left out of training.
    pub rule_threshold: u32,
    /// `None`: no transformer (the forests and templates only).
    pub lm: Option<transformer::LmConfig>,
    /// Share of clients held out of the transformer's training to calibrate its threshold.
    pub calibration_share: f64,
    /// Serve this model instead of training one (`lm` is then unused).
    pub foreign: Option<ForeignModel>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            miner: MinerConfig::default(),
            session: SessionConfig::default(),
            forest: TrainOptions::default(),
            rule_threshold: 5,
            lm: Some(transformer::LmConfig::default()),
            calibration_share: 0.1,
            foreign: None,
        }
    }
}

impl TrainConfig {
    /// Use `seed` for every random choice of training (`None`: the defaults).
    pub fn reseed(&mut self, seed: Option<u64>) {
        if let Some(seed) = seed {
            self.forest.seed = seed;
            if let Some(lm) = &mut self.lm {
                lm.seed = seed;
            }
        }
    }
}

/// A client active in at least this many distinct clock hours of the training log is part of
/// the site's traffic, however odd: the forests never set it aside as an attacker (attack
/// episodes are short; a partner's poller runs all day).
const ESTABLISHED_HOURS: usize = 4;

/// The distinct clock hours (`clock_hour`) each client of a log was active in, up to
/// `ESTABLISHED_HOURS`: which clients are established in it. (The forests' own
/// `forest::Established` adds what each of them does routinely.)
#[derive(Default)]
struct ActiveHours(HashMap<u64, Vec<i64>>);

impl ActiveHours {
    fn note(&mut self, client: u64, hour: i64) {
        let seen = self.0.entry(client).or_default();
        if seen.len() < ESTABLISHED_HOURS && !seen.contains(&hour) {
            seen.push(hour);
        }
    }

    fn contains(&self, client: u64) -> bool {
        self.0.get(&client).map_or(0, Vec::len) >= ESTABLISHED_HOURS
    }

    fn established(self) -> HashSet<u64> {
        self.0
            .into_iter()
            .filter(|(_, h)| h.len() >= ESTABLISHED_HOURS)
            .map(|(c, _)| c)
            .collect()
    }
}

/// The clock hour of a record, as a count of hours since the epoch.
fn clock_hour(r: &Record) -> i64 {
    (record_time(r) / 3600.0).floor() as i64
}

/// Seconds since the epoch, with milliseconds, of a record.
pub fn record_time(r: &Record) -> f64 {
    pipeline::seconds(&r.time)
}

/// One request through templates, session and features, exactly as the proxy does it
/// (`pipeline::replay`); returns the key of its lane (`Sessions::lane`), the template, whether the transformer's
/// context for it was empty (a sequence begins), and the vectors.
fn step(
    vocab: &Vocabulary,
    sessions: &Sessions,
    r: &Record,
) -> (String, TemplateId, bool, PreVector, PostVector) {
    let client = sessions.key(&r.client, r.user_agent.as_deref(), None, None);
    // Tag 0: training sessions hold this vocabulary only.
    let (key, template, arrival, post) = pipeline::replay((vocab, 0), sessions, &client, r);
    (
        key,
        template,
        arrival.context.is_empty(),
        arrival.features,
        post,
    )
}

/// Requests one client contributes to a route's statistics: a log holds attacks the rules
/// do not see (a brute force makes most of a login route's 401s, an exfiltration most of an
/// export route's bytes), and what a route usually answers is what most of its clients get.
const ROUTE_STATS_PER_CLIENT: u32 = 3;
/// The same for a client established in the log (`ESTABLISHED_HOURS`): an integration's own
/// endpoint has one client, and three of its answers say little about their usual sizes.
const ROUTE_STATS_PER_ESTABLISHED: u32 = 300;

/// The clients of records, in order, as the proxy's session table keys them: the lanes of
/// their session keys (`Sessions::lane`).
fn session_clients(sessions: &Sessions, records: &[&Record]) -> Vec<u64> {
    let mut lanes = Lanes::new(sessions.config());
    records
        .iter()
        .map(|r| {
            let key = sessions.key(&r.client, r.user_agent.as_deref(), None, None);
            key_hash(lanes.key(&key, record_time(r), r))
        })
        .collect()
}

/// What training saw of each route (`Vocabulary::route`), from the rule-clean records.
/// Clients are the sessions' clients, so that a route's bursts are counted per client as
/// `ClientState::burst` counts them at serving time.
fn route_stats(vocab: &Vocabulary, records: &[&Record], sessions: &Sessions) -> Vec<RouteStats> {
    #[derive(Default, Clone)]
    struct Acc {
        sizes: Vec<f64>,
        status: [f64; STATUS_BUCKETS],
        n: f64,
        /// Requests per minute, 401/403 answers per ten minutes of the training span.
        minutes: HashMap<i64, u32>,
        tens: HashMap<i64, u32>,
        /// Each client's largest ~10 s count of the route, as `ClientState::burst` sees it.
        bursts: HashMap<u64, f32>,
    }
    let clients = session_clients(sessions, records);
    let mut established = ActiveHours::default();
    for (r, &c) in records.iter().zip(&clients) {
        established.note(c, clock_hour(r));
    }
    let mut acc = vec![Acc::default(); vocab.len()];
    let mut per_client: HashMap<(u64, u32), u32> = HashMap::new();
    let mut counts: HashMap<(u64, u32), Decayed> = HashMap::new();
    for (r, &client) in records.iter().zip(&clients) {
        let (m, t, _) = r.request_parts();
        let id = vocab.lookup(&m, &t).0;
        let Some(a) = acc.get_mut(id as usize) else {
            continue;
        };
        let now = record_time(r);
        let count = counts.entry((client, id)).or_default();
        let before = count.at(now, TAU_SHORT);
        count.add(now, TAU_SHORT, 1.0);
        let top = a.bursts.entry(client).or_default();
        *top = top.max(before);
        *a.minutes
            .entry(r.time.timestamp().div_euclid(60))
            .or_default() += 1;
        *a.tens
            .entry(r.time.timestamp().div_euclid(600))
            .or_default() += matches!(r.status, 401 | 403) as u32;
        let seen = per_client.entry((client, id)).or_default();
        *seen += 1;
        let cap = if established.contains(client) {
            ROUTE_STATS_PER_ESTABLISHED
        } else {
            ROUTE_STATS_PER_CLIENT
        };
        if *seen > cap {
            continue;
        }
        a.n += 1.0;
        a.status[status_bucket(r.status)] += 1.0;
        if (200..300).contains(&r.status) {
            a.sizes.push((r.bytes as f64).ln_1p());
        }
    }
    let span_minutes = match (records.first(), records.last()) {
        (Some(a), Some(b)) => ((record_time(b) - record_time(a)) / 60.0).ceil().max(1.0) as usize,
        _ => 1,
    };
    acc.iter_mut()
        .map(|a| {
            // Median and scaled median absolute deviation: robust where mean and standard
            // deviation would follow a few huge responses.
            a.sizes.sort_by(f64::total_cmp);
            let median = a.sizes.get(a.sizes.len() / 2).copied().unwrap_or(0.0);
            let mut dev: Vec<f64> = a.sizes.iter().map(|x| (x - median).abs()).collect();
            dev.sort_by(f64::total_cmp);
            let mad = dev.get(dev.len() / 2).copied().unwrap_or(0.0) * 1.4826;
            // When most answers have one size (an empty poll result), the MAD is 0 and every
            // other legitimate size looks extreme; the 10th-90th percentile range (2.563
            // standard deviations of a normal) keeps such a route's spread honest.
            let spread = mad.max((quantile(&a.sizes, 0.9) - quantile(&a.sizes, 0.1)) / 2.563);
            let mut status = [0f32; STATUS_BUCKETS];
            for (p, c) in status.iter_mut().zip(a.status) {
                // Add-half smoothing: a status never seen on a route is rare, not impossible.
                *p = ((c + 0.5) / (a.n + 0.5 * STATUS_BUCKETS as f64)) as f32;
            }
            RouteStats {
                bytes_mean: median as f32,
                bytes_std: spread as f32,
                status,
                // A route used in runs (an integration syncing every 15 minutes) is quiet in
                // most minutes, so its 90th percentile is 0 and each run would look like a
                // surge: the baseline is at least its median minute in use. A flood in the
                // log would have to fill half of the route's busy minutes to move that.
                rate: busy(a.minutes.values().copied(), span_minutes, 0.9).max(busy(
                    a.minutes.values().copied(),
                    0,
                    0.5,
                )) / 60.0,
                failure_rate: busy(a.tens.values().copied(), span_minutes.div_ceil(10), 0.75)
                    / 600.0,
                burst: {
                    let mut b: Vec<f64> = a.bursts.values().map(|&x| x as f64).collect();
                    b.sort_by(f64::total_cmp);
                    quantile(&b, 0.9) as f32
                },
            }
        })
        .collect()
}

/// The `q` quantile of sorted values (0 for none). For the route's bursts: a tenth of a
/// route's clients may hit it harder than the 90th percentile, and the few attack clients of
/// a training log (a flood is a handful of addresses) cannot move it.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len().saturating_sub(1)) as f64 * q).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

/// A busy period of a route: the `q` quantile of its counts per period, padded with quiet
/// (zero) periods up to the training span's `periods`; with `periods` 0, the quantile of the
/// periods in which the route was used. A flood or a stuffing run in the log fills a few
/// periods and moves a mean, not this. Requests take the 90th percentile of minutes (or the
/// median minute in use, if more);
/// authentication failures the 75th of ten-minute periods, because a simulated training day
/// had credential stuffing on its login route in 17 of its 144 ten-minute periods (and the
/// 90th percentile was the attackers' rate, not the users').
fn busy(counts: impl Iterator<Item = u32>, periods: usize, q: f64) -> f32 {
    let mut c: Vec<u32> = counts.collect();
    c.resize(c.len().max(periods), 0);
    c.sort_unstable();
    let i = ((c.len() as f64) * q) as usize;
    c.get(i.min(c.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0) as f32
}

/// Train from parsed records (any order; they are sorted by time, stably).
pub fn train(
    records: &[Record],
    rules: &RuleSet,
    limits: &Inspection,
    cfg: &TrainConfig,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<Trained, LearnError> {
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
        miner.add(&m, &t, key_hash(&r.client), r.status);
        if n % 5000 == 0 {
            progress("templates", n, clean.len());
        }
    }
    let mut vocabulary = miner.finish();
    let sessions = Sessions::new(cfg.session.clone());
    vocabulary.set_stats(route_stats(&vocabulary, &clean, &sessions));
    progress("templates", clean.len(), clean.len());

    // The transformer's training sequences are the contexts the proxy keeps
    // (`ClientState::continue_sequence`): per client and user agent, a new one wherever the
    // replay found an empty context (the agent idle longer than the session TTL, displaced by
    // more agents, or its client evicted), so that training and serving split them alike.
    // In order of their first request: a client's sessions in a deterministic order.
    let mut sequences: Vec<(u64, Vec<u32>)> = Vec::new();
    let mut open: HashMap<(u64, u32), usize> = HashMap::new();
    let mut pre = Vec::with_capacity(clean.len());
    let mut post = Vec::with_capacity(clean.len());
    let mut hours = Vec::with_capacity(clean.len());
    let mut unknown = 0usize;
    let mut clients = HashSet::new();
    let mut established = ActiveHours::default();
    for (n, r) in clean.iter().enumerate() {
        let (key, template, fresh, p, q) = step(&vocabulary, &sessions, r);
        let c = key_hash(&key);
        clients.insert(c);
        let hour = clock_hour(r);
        established.note(c, hour);
        let agent = agent_hash(r.user_agent.as_deref());
        let at = match open.get(&(c, agent)) {
            Some(&i) if !fresh => i,
            _ => {
                sequences.push((c, Vec::new()));
                open.insert((c, agent), sequences.len() - 1);
                sequences.len() - 1
            }
        };
        sequences[at].1.push(template.0);
        unknown += (template == TemplateId::UNKNOWN) as usize;
        pre.push((c, p));
        post.push((c, q));
        hours.push(hour);
        if n % 5000 == 0 {
            progress("sessions", n, clean.len());
        }
    }
    progress("sessions", clean.len(), clean.len());
    progress("forest", 0, 2);
    let established = established.established();
    let pre_model = ForestModel::train(
        &pre,
        &cfg.forest,
        &forest::Established::with_routine(established.clone(), &pre, &hours),
        &PRE_FLOORED,
    )
    .map_err(LearnError::PreForest)?;
    progress("forest", 1, 2);
    // Waves of authentication failures are left out of the post forest's training sample
    // (see `in_failure_wave`). Measured on four simulated sites, credential stuffing's request
    // recall rose from 0.41-0.93 to 0.86-0.94, and F1 on each. Left out of its calibration too,
    // false positives rose on one site from 0.42% to 0.70%. Not the pre forest's counterpart,
    // a route's site-wide request surges (feature 19): an integration's own sync surges its
    // routes, and with the surges left out one such integration was flagged ever after (false
    // positives on one site 0.36% to 1.4%).
    let failure_wave = post.iter().filter(|(_, q)| in_failure_wave(q)).count();
    let post_model = ForestModel::train_leaving_out(
        &post,
        &cfg.forest,
        &forest::Established::with_routine(established, &post, &hours),
        &POST_FLOORED,
        in_failure_wave,
    )
    .map_err(LearnError::PostForest)?;
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
        transformer: false,
        failure_wave,
        seed: cfg.forest.seed,
    };
    let source = match (&cfg.foreign, &cfg.lm) {
        (Some(f), _) => Some(Source::Foreign(f)),
        (None, Some(lm)) => Some(Source::Train(lm)),
        (None, None) => None,
    };
    let (transformer, onnx) = match source {
        Some(s) => match train_transformer(
            by_client(sequences),
            vocabulary.len(),
            s,
            cfg,
            &mut progress,
        ) {
            Ok((t, bytes)) => (Some(t), Some(bytes)),
            // A log too small for a sequence model still makes useful templates and forests;
            // a model asked for by name (`Foreign`) that cannot be calibrated is an error.
            Err(LearnError::Transformer(e @ transformer::LmTrainError::NotEnoughData(_)))
                if matches!(s, Source::Train(_)) =>
            {
                tracing::warn!(reason = %e, "The model set is written without a transformer.");
                (None, None)
            }
            Err(e) => return Err(e),
        },
        None => (None, None),
    };
    let mut summary = summary;
    summary.transformer = transformer.is_some();
    let mut learned = Learned::new(vocabulary, pre_model, post_model, summary);
    learned.transformer = transformer;
    learned.transformer_onnx = onnx;
    // Canaries: the earliest clean records, so that they include clients' first requests.
    let first: Vec<Record> = clean.iter().take(CANARIES).map(|r| (*r).clone()).collect();
    let canaries = canary_outputs(&learned, &first);
    Ok(Trained { learned, canaries })
}

/// Each client's sequences, whatever their user agents, in the order they began: a client's
/// requests are held out together for calibration.
fn by_client(sequences: Vec<(u64, Vec<u32>)>) -> Vec<(u64, Vec<Vec<u32>>)> {
    let mut clients: HashMap<u64, Vec<Vec<u32>>> = HashMap::new();
    for (c, s) in sequences {
        clients.entry(c).or_default().push(s);
    }
    clients.into_iter().collect()
}

/// Where the sequence model comes from.
#[derive(Clone, Copy)]
enum Source<'a> {
    Train(&'a transformer::LmConfig),
    Foreign(&'a ForeignModel),
}

/// Train the sequence model on most clients (or take a foreign one) and calibrate it on the
/// requests of the others.
fn train_transformer(
    mut clients: Vec<(u64, Vec<Vec<u32>>)>,
    vocab: usize,
    source: Source<'_>,
    cfg: &TrainConfig,
    progress: &mut impl FnMut(&str, usize, usize),
) -> Result<(Transformer, Vec<u8>), LearnError> {
    use crate::detectors::transformer::{NllCalibration, SequenceModel};
    // Deterministic order (the map's is not), then every k-th client held out.
    clients.sort_by_key(|(c, _)| *c);
    let every = ((1.0 / cfg.calibration_share.clamp(0.02, 0.5)).round() as usize).max(2);
    // With fewer than `every` clients, the last one is held out.
    let every = every.min(clients.len()).max(2);
    let mut train = Vec::new();
    let mut hold = Vec::new();
    for (i, (c, seqs)) in clients.into_iter().enumerate() {
        if i % every == every - 1 {
            hold.extend(seqs.into_iter().map(|s| (c, s)));
        } else {
            train.extend(seqs);
        }
    }
    let transitions = Transitions::count(&train);
    let (model, onnx) = match source {
        Source::Train(lm) => {
            let (onnx, report) = transformer::train(&train, vocab, lm, |epoch, batch, batches| {
                progress(&format!("transformer {epoch}"), batch, batches)
            })?;
            tracing::info!(
                windows = report.windows,
                epochs = report.epochs_run,
                best_epoch = report.best_epoch,
                validation_loss = report
                    .validation_loss
                    .get(report.best_epoch.saturating_sub(1))
                    .copied()
                    .unwrap_or(f64::NAN),
                seconds = report.seconds,
                "Transformer trained."
            );
            (
                SequenceModel::load(&onnx, std::path::Path::new("transformer.onnx"))?,
                onnx,
            )
        }
        Source::Foreign(f) => {
            let model = SequenceModel::load(&f.onnx, &f.path)?;
            if model.n_templates() < vocab {
                return Err(LearnError::Foreign {
                    path: f.path.clone(),
                    reason: format!(
                        "knows {} templates, but the vocabulary mined from these logs has \
                         {vocab}: train it on the template ids of vocabulary.json from `vigil \
                         train` on the same logs and configuration",
                        model.n_templates()
                    ),
                });
            }
            (model, f.onnx.clone())
        }
    };
    // Every request of the held-out clients, scored as the proxy would: with the sequence's
    // previous templates as context, BOS while the whole sequence fits. (The proxy keeps
    // `sessions.window` templates; `ModelSet` warns when that is shorter than the model's W,
    // since the contexts scored here would then be longer than the proxy's.)
    let mut items = Vec::new();
    for (c, s) in &hold {
        for i in 0..s.len() {
            items.push((*c, (&s[..i], true, s[i])));
        }
    }
    let cap = 40_000;
    if items.len() > cap {
        let step = items.len() as f64 / cap as f64;
        items = (0..cap)
            .map(|k| items[(k as f64 * step) as usize])
            .collect();
    }
    let (owners, items): (Vec<u64>, Vec<_>) = items.into_iter().unzip();
    progress("calibrate", 0, 1);
    let nlls = model.nll_batch(&items)?;
    progress("calibrate", 1, 1);
    let not_enough = || {
        transformer::LmTrainError::NotEnoughData(format!(
            "{} held-out requests to calibrate on; need at least 50",
            items.len()
        ))
    };
    let calibrate = |nlls: Vec<f64>| {
        NllCalibration::from_client_nlls(
            owners.iter().copied().zip(nlls).collect(),
            cfg.forest.target_fpr,
        )
        .ok_or_else(not_enough)
    };
    // The NLLs as served: at least what the counts vouch for at a lane's start
    // (`Transitions`). The plain threshold of those says which templates are ordinary first
    // requests (`FreshStart`); the served calibration is made on the NLLs floored there too.
    let counted: Vec<f32> = items
        .iter()
        .zip(&nlls)
        .map(|((ctx, start, t), &n)| {
            let prev = counted_from(ctx.len(), ctx.last().copied(), *start);
            with_counts(Some(&transitions), prev, *t, n)
        })
        .collect();
    let plain = calibrate(counted.iter().map(|&n| f64::from(n)).collect())?;
    let fresh = FreshStart::of(&model, plain.threshold, Some(&transitions))?;
    let calibration = calibrate(
        items
            .iter()
            .zip(&counted)
            .map(|((_, _, t), &n)| f64::from(fresh.apply(*t, n)))
            .collect(),
    )?;
    Ok((
        Transformer::floored(model, calibration, fresh, Some(transitions)),
        onnx,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::models::ModelSet;
    use std::path::Path;
    use std::sync::Arc;

    fn config() -> Config {
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml")).unwrap()
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
    fn serving_training_and_log_passes_put_requests_in_the_same_lanes() {
        const CHROME: &str = "Mozilla/5.0 Chrome/129";
        const PHONE: &str = "Mozilla/5.0 iPhone";
        let rec = |secs: u32, target: &str, status: u16, referer: &str, ua: &str| {
            let l = format!(
                "10.1.1.1 - - [01/Mar/2024:10:{:02}:{:02} +0000] \"GET {target} HTTP/1.1\" {status} 512 \"{referer}\" \"{ua}\"",
                secs / 60,
                secs % 60
            );
            Record::parse_line(&l, 1).unwrap()
        };
        let site = "https://shop.example.com";
        let (home, product) = (format!("{site}/"), format!("{site}/products/1"));
        let log = [
            (rec(0, "/", 200, "-", CHROME), false),
            (rec(1, "/static/app.css", 200, &home, CHROME), true),
            (rec(2, "/products/1", 200, &home, CHROME), true),
            // A scanner with the same user agent, direct.
            (rec(3, "/.env", 404, "-", CHROME), false),
            // Another agent at the address was not served the home page.
            (rec(4, "/products/1", 200, &home, PHONE), false),
            (rec(5, "/cart", 302, &product, CHROME), true),
            (rec(6, "/gone", 404, &product, CHROME), true),
            // A 404 is no page to follow.
            (
                rec(7, "/about", 200, &format!("{site}/gone"), CHROME),
                false,
            ),
            (rec(8, "/about", 200, &format!("{site}/cart"), CHROME), true),
            // The phone's own page, served above, can be followed.
            (rec(9, "/cart", 200, &product, PHONE), true),
        ];
        let lane = |navigation: bool| {
            if navigation {
                crate::session::navigation_key("10.1.1.1")
            } else {
                "10.1.1.1".to_string()
            }
        };
        let expected: Vec<String> = log.iter().map(|(_, n)| lane(*n)).collect();
        let cfg = config();

        // The passes over a log that keep no client state.
        let mut lanes = Lanes::new(&cfg.sessions);
        let passes: Vec<String> = log
            .iter()
            .map(|(r, _)| lanes.key(&r.client, record_time(r), r))
            .collect();
        assert_eq!(passes, expected);

        // Training's replay.
        let mut miner = Miner::new(MinerConfig::default());
        for (r, _) in &log {
            let (m, t, _) = r.request_parts();
            miner.add(&m, &t, 1, r.status);
        }
        let vocabulary = miner.finish();
        let sessions = Sessions::new(cfg.sessions.clone());
        let replayed: Vec<String> = log
            .iter()
            .map(|(r, _)| pipeline::replay((&vocabulary, 0), &sessions, &r.client, r).0)
            .collect();
        assert_eq!(replayed, expected);

        // Serving's two stages (as `vigil score` runs them).
        let rules = RuleSet::load(&cfg.rules.paths).unwrap();
        let set = ModelSet::assemble(&cfg, 1, Arc::new(rules), None, None).unwrap();
        let sessions = Sessions::new(cfg.sessions.clone());
        let served: Vec<String> = log
            .iter()
            .map(|(r, _)| pipeline::score_record(&set, &sessions, r).0.session_key)
            .collect();
        assert_eq!(served, expected);
        // Later than `idle_ttl` after the home page, following it is no longer a click.
        let late = rec(0, "/products/2", 200, &home, CHROME);
        let late = Record {
            time: late.time + chrono::Duration::seconds(cfg.sessions.idle_ttl as i64 + 60),
            ..late
        };
        assert_eq!(
            pipeline::score_record(&set, &sessions, &late).0.session_key,
            lane(false)
        );
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
        let cfg = config();
        let rules = RuleSet::load(&cfg.rules.paths).unwrap();
        let learned = train(
            &recs,
            &rules,
            &cfg.inspection,
            &TrainConfig::default(),
            |_, _, _| {},
        )
        .unwrap()
        .learned;
        assert_eq!(learned.summary.excluded_by_rules, 1);
        assert!(
            learned.summary.templates >= 4 && learned.summary.templates < 20,
            "{:?}",
            learned.summary
        );
        let set =
            ModelSet::assemble(&cfg, 1, Arc::new(rules), Some(Arc::new(learned)), None).unwrap();
        let sessions = Sessions::new(cfg.sessions.clone());
        let flagged = |r: &Record| {
            let (pre, post) = pipeline::score_record(&set, &sessions, r);
            pre.verdict.anomaly || post.verdict.anomaly || pre.escalated
        };
        // Replay the day first, as `vigil score` does with a log: sessions are then warm.
        let replay_flags = recs.iter().filter(|r| flagged(r)).count();
        assert!(
            replay_flags < recs.len() / 100,
            "{replay_flags} of {} flagged",
            recs.len()
        );
        // A scanner: 60 different missing pages in 12 seconds.
        let scan = (0..60u32)
            .filter(|&i| {
                flagged(&line(
                    "10.66.0.1",
                    87_000 + i / 5,
                    &format!("GET /admin{i}/config.php.bak"),
                    404,
                ))
            })
            .count();
        assert!(
            scan >= 50,
            "the scan is recognised after a few requests: {scan}/60"
        );
        // Known clients carrying on as before are not.
        let normal_flags = (3000..3100u32).filter(|&i| flagged(&day(i))).count();
        assert!(
            normal_flags <= 2,
            "{normal_flags}/100 ordinary requests flagged"
        );
    }
}
