//! The two-stage scoring of one request, shared by the proxy, `vigil score` and `vigil eval`
//! so that offline numbers describe what the proxy does.
//!
//! Pre-upstream (`pre`): rules on the decoded request, the request's template, the
//! transformer's surprise at that template after the client's recent ones, and the forest over
//! the request and the client's state so far; fused by the ensemble and turned into an action
//! by the policy (this is what may block). Post-response (`post`): status and bytes join the
//! client's state, the status-aware forest scores the completed record, and a client whose
//! requests keep being anomalous (scanning, brute force, enumeration) is escalated: its next
//! requests get the escalated action for a decaying period.
//!
//! Time is passed in (the request's arrival, or a log line's own timestamp), never read here.
//! No I/O, no panics on any input.

use std::net::IpAddr;

use chrono::{DateTime, FixedOffset};
use serde::Serialize;

use crate::config::Mode;
use crate::ensemble::{self, DetectorKind, DetectorScore, Verdict};
use crate::features::{self, PostVector, PreVector, RequestFacts};
use crate::models::ModelSet;
use crate::policy::{Action, Decision};
use crate::record::Record;
use crate::request::HttpRequest;
use crate::session::{ClientState, SessionKey, Sessions};
use crate::template::TemplateId;

/// What the pipeline needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestInput<'a> {
    pub client: IpAddr,
    /// The client as written in logs (the address, or a host name in some Apache logs):
    /// what sessions are keyed on.
    pub client_name: &'a str,
    /// The request's arrival in local time (the hour-of-day features use it).
    pub time: DateTime<FixedOffset>,
    pub host: &'a str,
    pub path: &'a str,
    pub request: &'a HttpRequest,
}

/// Seconds since the epoch, with milliseconds.
pub fn seconds(t: &DateTime<FixedOffset>) -> f64 {
    t.timestamp() as f64 + t.timestamp_subsec_millis() as f64 / 1000.0
}

/// The outcome of the pre-upstream stage; `post` completes it.
#[derive(Debug, Clone, Serialize)]
pub struct Pre {
    pub decision: Decision,
    pub verdict: Verdict,
    pub template: TemplateId,
    /// The client was escalated when this request arrived.
    pub escalated: bool,
    #[serde(skip)]
    pub session_key: String,
    #[serde(skip)]
    pub now: f64,
    #[serde(skip)]
    features: Option<PreVector>,
    /// The transformer's score, reused by the post-response verdict.
    #[serde(skip)]
    transformer: Option<DetectorScore>,
}

/// The outcome of the post-response stage.
#[derive(Debug, Clone, Serialize)]
pub struct Post {
    pub verdict: Verdict,
    /// This response made the client escalated.
    pub escalated_now: bool,
}

fn session_key(sessions: &Sessions, input: &RequestInput<'_>) -> String {
    let req = input.request;
    let header = match &sessions.config().key {
        SessionKey::Header(name) => req.header(name),
        _ => None,
    };
    sessions.key(
        input.client_name,
        req.header("user-agent"),
        req.header("cookie"),
        header,
    )
}

/// What a client's state said when a request arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub escalated: bool,
    /// The client's previous templates, most recent last.
    pub context: Vec<TemplateId>,
    /// `context` is the client's whole history (it starts at the session's beginning).
    pub whole_history: bool,
    pub features: PreVector,
}

/// A request arrives at a client's state: read what the detectors need, then record it.
/// Training replays logs through this same function, so the features it learns from are the
/// ones the proxy computes.
pub fn arrive(
    c: &mut ClientState,
    facts: &RequestFacts<'_>,
    template: TemplateId,
    vocabulary: u64,
    now: f64,
    window: usize,
) -> Arrival {
    c.use_vocabulary(vocabulary);
    let escalated = c.escalated(now);
    let context = c.recent.clone();
    let known = c.requests > 0;
    let features = features::pre(facts, known.then_some(&*c), window);
    let whole_history = c.requests as usize == context.len();
    c.observe_request(now, template, window);
    Arrival {
        escalated,
        context,
        whole_history,
        features,
    }
}

/// The response of a request reaches the client's state; returns the post-response features.
pub fn respond(
    c: &mut ClientState,
    pre: &PreVector,
    status: u16,
    bytes: u64,
    now: f64,
) -> PostVector {
    c.observe_response(now, status, bytes);
    features::post(pre, status, bytes, c, now)
}

/// Score a request before it goes upstream, and record its arrival in the client's state.
pub fn pre(models: &ModelSet, sessions: &Sessions, input: &RequestInput<'_>) -> Pre {
    let now = seconds(&input.time);
    let ens = &models.ensemble;
    // Rules switched off in the ensemble do not run at all (and so decide nothing).
    let report = if ens.rules.enabled {
        models.rules.inspect(input.request, &models.inspection)
    } else {
        Default::default()
    };
    let mut decision = models
        .policy
        .decide(input.client, input.host, input.path, report);
    let mut scores = Vec::with_capacity(3);
    if ens.rules.enabled {
        scores.push(DetectorScore::new(
            DetectorKind::Rules,
            &ens.rules,
            ensemble::rules_score(decision.score, decision.threshold),
            decision.score as f64,
            decision.threshold as f64,
        ));
    }

    let learned = models.learned.as_deref();
    let target = String::from_utf8_lossy(&input.request.target);
    let template = learned.map_or(TemplateId::UNKNOWN, |l| {
        l.vocabulary.lookup(&input.request.method, &target)
    });
    let key = session_key(sessions, input);
    let window = sessions.config().window;
    let facts = RequestFacts {
        time: input.time,
        method: &input.request.method,
        target: &input.request.target,
        unknown_template: template == TemplateId::UNKNOWN,
    };
    let vocabulary = learned.map_or(0, |l| l.vocabulary_tag);
    let arrival = sessions.with(&key, now, |c| {
        arrive(c, &facts, template, vocabulary, now, window)
    });
    let escalated = arrival.escalated;

    let mut transformer = None;
    if let Some(l) = learned {
        if ens.forest.enabled {
            let s = l.pre.score(&arrival.features);
            scores.push(DetectorScore::new(
                DetectorKind::ForestPre,
                &ens.forest,
                s.score,
                s.raw,
                s.threshold,
            ));
        }
        if let Some(t) = l.transformer.as_ref().filter(|_| ens.transformer.enabled) {
            if let Some(s) = t.score(&arrival.context, arrival.whole_history, template) {
                let d = DetectorScore::new(
                    DetectorKind::Transformer,
                    &ens.transformer,
                    s.score,
                    s.nll,
                    s.threshold,
                );
                transformer = Some(d);
                scores.push(d);
            }
        }
    }
    let verdict = ensemble::combine(ens, scores, decision.attack);
    decision.action = action(models, &decision, &verdict, escalated);
    Pre {
        decision,
        verdict,
        template,
        escalated,
        session_key: key,
        now,
        features: learned.map(|_| arrival.features),
        transformer,
    }
}

/// The action for a request: the route's mode for rule attacks; for a verdict of the learned
/// detectors alone, the mode capped at `ensemble.max_action`; for an escalated client, the
/// mode capped at `escalation.action`. The allowlist turns any block into a log entry.
fn action(models: &ModelSet, d: &Decision, v: &Verdict, escalated: bool) -> Action {
    let mut strength = Mode::Off;
    if d.attack {
        strength = d.mode;
    } else if v.anomaly {
        strength = d.mode.min(models.ensemble.max_action);
    }
    if escalated && models.escalation.enabled {
        strength = strength.max(d.mode.min(models.escalation.action));
    }
    match strength {
        Mode::Off => Action::Allow,
        Mode::Detect => Action::Log,
        Mode::Tag => Action::Tag,
        Mode::Block if d.allowlisted => Action::Log,
        Mode::Block => Action::Block,
    }
}

/// Complete the record with what was sent back, update the client's state, and judge it.
pub fn post(models: &ModelSet, sessions: &Sessions, pre: &Pre, status: u16, bytes: u64) -> Post {
    let now = pre.now;
    let ens = &models.ensemble;
    let post_vec = sessions.with(&pre.session_key, now, |c| match &pre.features {
        Some(v) => Some(respond(c, v, status, bytes, now)),
        None => {
            c.observe_response(now, status, bytes);
            None
        }
    });
    let mut scores: Vec<DetectorScore> = pre
        .verdict
        .detectors
        .iter()
        .filter(|d| d.detector == DetectorKind::Rules)
        .copied()
        .collect();
    if let (Some(l), Some(v)) = (models.learned.as_deref(), post_vec) {
        if ens.forest.enabled {
            let s = l.post.score(&v);
            scores.push(DetectorScore::new(
                DetectorKind::ForestPost,
                &ens.forest,
                s.score,
                s.raw,
                s.threshold,
            ));
        }
    }
    scores.extend(pre.transformer);
    let verdict = ensemble::combine(ens, scores, pre.decision.attack);
    let esc = &models.escalation;
    let mut escalated_now = false;
    if esc.enabled && (verdict.anomaly || pre.verdict.anomaly) {
        let duration = esc.duration.as_secs_f64();
        escalated_now = sessions.with(&pre.session_key, now, |c| {
            c.note_anomaly(now, esc.after, duration)
        });
    }
    Post {
        verdict,
        escalated_now,
    }
}

/// Both stages for one line of an access log, on the line's own clock (`vigil score`,
/// `vigil eval`): what the proxy would have decided and logged for it.
pub fn score_record(models: &ModelSet, sessions: &Sessions, r: &Record) -> (Pre, Post) {
    let req = crate::eval::request_from_record(r);
    let client = r
        .client
        .parse()
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let path = String::from_utf8_lossy(req.path()).into_owned();
    let input = RequestInput {
        client,
        client_name: &r.client,
        time: r.time,
        host: "localhost",
        path: &path,
        request: &req,
    };
    let pre = pre(models, sessions, &input);
    let post = post(models, sessions, &pre, r.status, r.bytes);
    (pre, post)
}
