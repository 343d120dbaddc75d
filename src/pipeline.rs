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
//! "The client's state" is that of the request's lane (`Sessions::lane`): its direct
//! requests, or apart from them those that follow links it was served.
//!
//! Time is passed in (the request's arrival, or a log line's own timestamp), never read here.
//! No I/O, no panics on any input.

use std::net::IpAddr;

use chrono::{DateTime, FixedOffset};
use serde::Serialize;

use crate::config::Mode;
use crate::ensemble::{self, DetectorKind, DetectorScore, Verdict};
use crate::features::{self, PostVector, PreVector, RequestFacts, ResponseFacts};
use crate::models::ModelSet;
use crate::policy::{Action, Decision};
use crate::record::Record;
use crate::request::HttpRequest;
use crate::session::{
    agent_hash, page_hash, served, ClientState, SessionConfig, SessionKey, Sessions, Site,
};
use crate::template::{RouteStats, TemplateId, Vocabulary};

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
    /// The key of the request's lane (`Sessions::lane`): what its state is kept under.
    #[serde(skip)]
    pub session_key: String,
    /// The request followed a page its client was served (`session_key` is the navigation
    /// lane's; the client's pages are kept under `session::client_key` of it).
    #[serde(skip)]
    navigation: bool,
    /// The target as its client's pages remember it, once answered 2xx/3xx (`page_hash`).
    #[serde(skip)]
    page: u32,
    /// The session key as the forests' per-client thresholds name it (`session::key_hash`).
    #[serde(skip)]
    client: u64,
    #[serde(skip)]
    pub now: f64,
    /// The request's user agent, hashed (`session::agent_hash`).
    #[serde(skip)]
    pub agent: u32,
    /// The forests' input (`vigil score --features`); `None` without learned detectors.
    #[serde(skip)]
    pub features: Option<PreVector>,
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
    /// The post forest's input (`vigil score --features`).
    #[serde(skip)]
    pub features: Option<PostVector>,
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
    /// The previous templates of the client's user agent (`ClientState::continue_sequence`),
    /// most recent last.
    pub context: Vec<TemplateId>,
    /// `context` is the whole sequence (it starts at the session's beginning).
    pub whole_history: bool,
    pub features: PreVector,
}

/// The request's template and what the features need to know about it; counts the request in
/// its route's site-wide traffic. `vocabulary` is `None` without learned detectors.
pub fn request_facts<'a>(
    vocabulary: Option<(&Vocabulary, u64)>,
    site: &Site,
    time: DateTime<FixedOffset>,
    method: &'a str,
    target: &'a [u8],
) -> RequestFacts<'a> {
    let (template, route, site_requests) = match vocabulary {
        Some((v, tag)) => {
            let t = v.lookup(method, &String::from_utf8_lossy(target));
            let before = site.arrive(tag, v.len(), t, seconds(&time));
            (t, v.route(t), before)
        }
        None => (TemplateId::UNKNOWN, RouteStats::default(), 0.0),
    };
    RequestFacts {
        time,
        method,
        target,
        template,
        route,
        site_requests,
    }
}

/// What the post-response features need; counts an authentication failure in the route's
/// site-wide traffic.
pub fn response_facts(
    vocabulary: Option<(&Vocabulary, u64)>,
    site: &Site,
    template: TemplateId,
    now: f64,
    status: u16,
    bytes: u64,
) -> ResponseFacts {
    let (route, site_failures) = match vocabulary {
        Some((v, tag)) => (
            v.route(template),
            site.respond(tag, v.len(), template, now, status),
        ),
        None => (RouteStats::default(), 0.0),
    };
    ResponseFacts {
        status,
        bytes,
        route,
        site_failures,
    }
}

/// A request arrives at a client's state: read what the detectors need, then record it.
/// Training replays logs through this same function, so the features it learns from are the
/// ones the proxy computes.
pub fn arrive(
    c: &mut ClientState,
    facts: &RequestFacts<'_>,
    vocabulary: u64,
    now: f64,
    config: &SessionConfig,
    agent: u32,
) -> Arrival {
    let window = config.window;
    c.use_vocabulary(vocabulary);
    let escalated = c.escalated(now, agent);
    let known = c.requests > 0;
    let features = features::pre(facts, known.then_some(&*c), window);
    let (context, whole_history) =
        c.continue_sequence(now, agent, facts.template, window, config.idle_ttl);
    c.observe_request(now, facts.template, window);
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
    response: &ResponseFacts,
    now: f64,
) -> PostVector {
    c.observe_response(now, response.status, features::delivered_bytes(response));
    features::post(pre, response, c, now)
}

/// One logged request through both stages' state updates, as the proxy makes them (training
/// and the canary self-check replay logs with it): the key of its lane (`Sessions::lane`),
/// its template, what it found on arrival, and its post-response features.
pub fn replay(
    vocabulary: (&Vocabulary, u64),
    sessions: &Sessions,
    key: &str,
    r: &Record,
) -> (String, TemplateId, Arrival, PostVector) {
    let (method, target, _) = r.request_parts();
    let now = seconds(&r.time);
    let site = sessions.site();
    let facts = request_facts(Some(vocabulary), site, r.time, &method, target.as_bytes());
    let agent = agent_hash(r.user_agent.as_deref());
    // The site-wide counts do not depend on the client's state, so the response's can be
    // taken before the client is locked, once for both stages.
    let response = response_facts(
        Some(vocabulary),
        site,
        facts.template,
        now,
        r.status,
        r.bytes,
    );
    let lane = sessions.lane(key, now, agent, r.referer.as_deref());
    let lane_key = lane.as_deref().unwrap_or(key);
    let page = served(r.status).then(|| page_hash(agent, target.as_bytes()));
    let (arrival, post) = sessions.with(lane_key, now, |c| {
        let a = arrive(c, &facts, vocabulary.1, now, sessions.config(), agent);
        let post = respond(c, &a.features, &response, now);
        if let (None, Some(page)) = (&lane, page) {
            c.pages.note(now, agent, page);
        }
        (a, post)
    });
    if let (Some(_), Some(page)) = (&lane, page) {
        sessions.note_page(key, now, agent, page);
    }
    (lane_key.to_string(), facts.template, arrival, post)
}

impl Pre {
    /// The request's lane (`Sessions::lane`): `"navigation"` when it followed a page its
    /// client was served, else `"direct"`; for the logs, to read its detectors' scores.
    pub fn lane(&self) -> &'static str {
        if self.navigation {
            "navigation"
        } else {
            "direct"
        }
    }
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
    let agent = agent_hash(input.request.header("user-agent"));
    let client_key = session_key(sessions, input);
    let lane = sessions.lane(&client_key, now, agent, input.request.header("referer"));
    let navigation = lane.is_some();
    let key = lane.unwrap_or(client_key);
    let client = crate::session::key_hash(&key);
    let vocabulary = learned.map(|l| (&l.vocabulary, l.vocabulary_tag));
    let facts = request_facts(
        vocabulary,
        sessions.site(),
        input.time,
        &input.request.method,
        &input.request.target,
    );
    let template = facts.template;
    let tag = learned.map_or(0, |l| l.vocabulary_tag);
    let arrival = sessions.with(&key, now, |c| {
        arrive(c, &facts, tag, now, sessions.config(), agent)
    });
    let escalated = arrival.escalated;

    let mut transformer = None;
    if let Some(l) = learned {
        if ens.forest.enabled {
            let s = l.pre.score_for(client, &arrival.features);
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
                let settings = ensemble::transformer_settings(ens, &input.request.method);
                let d = DetectorScore::new(
                    DetectorKind::Transformer,
                    &settings,
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
        navigation,
        page: page_hash(agent, &input.request.target),
        client,
        now,
        agent,
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

/// The response's status is known (its headers go out): a page served 2xx/3xx is one the
/// client's next requests may follow (`Sessions::lane`). Before the body is sent, since a
/// browser asks for a page's assets while the page is still arriving; replays of a log note
/// it right after the request, the same order.
pub fn responded(sessions: &Sessions, pre: &Pre, status: u16) {
    if served(status) {
        let key = crate::session::client_key(&pre.session_key);
        sessions.note_page(key, pre.now, pre.agent, pre.page);
    }
}

/// Complete the record with what was sent back, update the client's state, and judge it.
pub fn post(models: &ModelSet, sessions: &Sessions, pre: &Pre, status: u16, bytes: u64) -> Post {
    let now = pre.now;
    let ens = &models.ensemble;
    let learned = models.learned.as_deref();
    let response = response_facts(
        learned.map(|l| (&l.vocabulary, l.vocabulary_tag)),
        sessions.site(),
        pre.template,
        now,
        status,
        bytes,
    );
    let post_vec = sessions.with(&pre.session_key, now, |c| match &pre.features {
        Some(v) => Some(respond(c, v, &response, now)),
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
    if let (Some(l), Some(v)) = (learned, post_vec) {
        if ens.forest.enabled {
            let s = l.post.score_for(pre.client, &v);
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
    // Escalation is for behaviour (scans, brute force, floods) and attacks: the rules or a
    // forest must have voted. The transformer alone says "unusual order", which a normal
    // client behind the same address may well produce, and escalating on it blocked them.
    let behaviour = |v: &Verdict| {
        v.detectors.iter().any(|d| {
            d.vote
                && matches!(
                    d.detector,
                    DetectorKind::ForestPre | DetectorKind::ForestPost
                )
        })
    };
    let strike = pre.decision.attack
        || (verdict.anomaly && behaviour(&verdict))
        || (pre.verdict.anomaly && behaviour(&pre.verdict));
    if esc.enabled && strike {
        let duration = esc.duration.as_secs_f64();
        let within = esc.within.as_secs_f64();
        escalated_now = sessions.with(&pre.session_key, now, |c| {
            c.note_anomaly(now, esc.after, within, duration, pre.agent)
        });
    }
    Post {
        verdict,
        escalated_now,
        features: post_vec,
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
    responded(sessions, &pre, r.status);
    let post = post(models, sessions, &pre, r.status, r.bytes);
    (pre, post)
}
