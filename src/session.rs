//! Per-client session state, after the request's record and template and before the
//! features: per lane of a client (its direct requests, and apart from them those that follow
//! links it was served: `Sessions::lane`) the last W request templates and time-decayed
//! counters (request rates over 10 s / 60 s / 10 min, error ratio, 401/403/404 counts,
//! inter-arrival statistics, bytes), and per user agent of it the sequence the transformer
//! reads. Time is passed in by the caller (the request's own timestamp), never read from the
//! clock, so replaying a log gives the same state as living through it. Memory is bounded: at
//! most `max_clients` entries (a lane each), idle ones expire after `idle_ttl`, and a full
//! table evicts the least recently active of a sample (approximate LRU, O(1) per insert).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use crate::record::Record;
use crate::template::TemplateId;

/// How requests are grouped into one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKey {
    /// The client address (after trusted-proxy resolution).
    Ip,
    /// Address and user-agent: separates users behind one NAT address.
    IpUserAgent,
    /// The value of a cookie (falls back to the address when absent).
    Cookie(String),
    /// The value of a request header, e.g. an API key (falls back to the address).
    Header(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// Templates remembered per client lane.
    pub window: usize,
    pub max_clients: usize,
    /// Seconds without a request after which a client lane is forgotten; also how long a
    /// page it was served can be followed into its navigation lane.
    pub idle_ttl: f64,
    pub key: SessionKey,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            window: 20,
            max_clients: 100_000,
            idle_ttl: 1800.0,
            key: SessionKey::Ip,
        }
    }
}

/// An exponentially decaying event count: `value` is the number of events in (roughly) the
/// last `tau` seconds, so `value / tau` is a rate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Decayed {
    value: f32,
    at: f64,
}

impl Decayed {
    fn decay_to(&mut self, now: f64, tau: f64) {
        if now > self.at {
            self.value *= (-(now - self.at) / tau).exp() as f32;
            self.at = now;
        }
    }

    pub fn add(&mut self, now: f64, tau: f64, amount: f32) {
        self.decay_to(now, tau);
        self.value += amount;
    }

    /// The count as of `now` (without changing the state).
    pub fn at(&self, now: f64, tau: f64) -> f32 {
        if now > self.at {
            self.value * (-(now - self.at) / tau).exp() as f32
        } else {
            self.value
        }
    }
}

pub const TAU_SHORT: f64 = 10.0;
pub const TAU_MEDIUM: f64 = 60.0;
pub const TAU_LONG: f64 = 600.0;

/// The slot of a small per-client table that holds `is`'s entry, else the one with the least
/// `keep` value (the oldest, the quietest), which the caller then takes over. `keep` is
/// evaluated once per slot.
fn slot_for<T>(slots: &[T], is: impl Fn(&T) -> bool, keep: impl Fn(&T) -> f64) -> usize {
    if let Some(i) = slots.iter().position(is) {
        return i;
    }
    let mut least = (0, f64::INFINITY);
    for (i, v) in slots.iter().enumerate() {
        let k = keep(v);
        if k < least.1 {
            least = (i, k);
        }
    }
    least.0
}

/// Append `template` to a window of at most `window` templates, dropping the oldest; the
/// buffer is sized once, so a full window never reallocates.
fn push_recent(recent: &mut Vec<TemplateId>, template: TemplateId, window: usize) {
    if recent.capacity() < window {
        recent.reserve_exact(window - recent.len());
    }
    if recent.len() >= window {
        recent.remove(0);
    }
    recent.push(template);
}

/// User agents whose anomalies a client keeps count of (`ClientState::strikes`).
pub const STRIKE_AGENTS: usize = 4;
/// Agents striking together that escalate the whole client when none of them escalated on
/// its own: more than a NAT address's attacker plus one of its users tripping a detector by
/// chance.
pub const ROTATING_AGENTS: usize = 3;

/// Share of a client's requests of the last minute that its anomalies must make before they
/// escalate it (`ClientState::note_anomaly`).
pub const ESCALATION_SHARE: f32 = 0.5;

/// One user agent's anomalous requests from a client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Strikes {
    /// `agent_hash` of the user agent (0: a free slot).
    pub agent: u32,
    /// Anomalous requests in a row, each within `within` seconds of the previous.
    pub count: u32,
    pub last: f64,
    /// Until when this agent's requests get the escalated action.
    pub until: f64,
}

impl Default for Strikes {
    fn default() -> Self {
        Strikes {
            agent: 0,
            count: 0,
            last: f64::NEG_INFINITY,
            until: f64::NEG_INFINITY,
        }
    }
}

/// User agents of one client whose template sequences are kept apart (`ClientState::sequences`).
/// Beyond this many, the least recently seen agent's sequence starts again.
pub const SEQUENCE_AGENTS: usize = 8;

/// One user agent's templates from a client: what the transformer reads as context. The
/// people behind one NAT address interleave their requests, and in the address's merged
/// sequence any page looks out of order; one person's browser keeps one user agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// `agent_hash` of the user agent.
    pub agent: u32,
    /// Most recent last; at most `window` entries.
    pub recent: Vec<TemplateId>,
    /// Requests since the sequence began (more than `recent.len()` once the window is full).
    pub requests: u64,
    pub last: f64,
}

/// Targets a client recently fetched that its next requests may name as referer
/// (`ClientState::pages`): its last pages and their assets, across its user agents. On a
/// simulated site, 32 put 130 of 259,482 requests in another lane than an unbounded memory
/// would, 16 put 3,550.
pub const PAGES: usize = 32;

/// Targets a client was recently answered 2xx/3xx for, per user agent (`page_hash`), and
/// when: what tells a click on a link from a request typed, scripted or scanned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pages {
    /// Seconds (request clock) the times of `entries` count from.
    origin: f64,
    /// Most recent last, at most `PAGES`.
    entries: Vec<Page>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Page {
    /// `page_hash` of agent and target.
    hash: u32,
    /// `agent_hash` of the user agent it was served to.
    agent: u32,
    /// Seconds after `Pages::origin`.
    at: f32,
}

impl Pages {
    /// Remember that `page` (`page_hash`) was fetched by `agent` at `now`. When full, an agent
    /// holding half the pages gives up its own oldest, anyone else the oldest of all: one user
    /// agent answered 2xx/3xx fast (a crawler, a scanner whose probes are redirected) cannot
    /// push its neighbours' pages out, and their clicks stay in the navigation lane.
    pub fn note(&mut self, now: f64, agent: u32, page: u32) {
        if self.entries.is_empty() {
            self.origin = now;
        }
        if let Some(i) = self.entries.iter().position(|e| e.hash == page) {
            self.entries.remove(i);
        } else if self.entries.len() >= PAGES {
            let own = self.entries.iter().filter(|e| e.agent == agent).count();
            let i = if own >= PAGES / 2 {
                self.entries
                    .iter()
                    .position(|e| e.agent == agent)
                    .unwrap_or(0)
            } else {
                0
            };
            self.entries.remove(i);
        }
        self.entries.push(Page {
            hash: page,
            agent,
            at: (now - self.origin) as f32,
        });
    }

    /// Whether `page` was fetched at most `within` seconds before `now`.
    pub fn fetched(&self, now: f64, page: u32, within: f64) -> bool {
        self.entries
            .iter()
            .any(|e| e.hash == page && now - (self.origin + f64::from(e.at)) <= within)
    }

    /// When the latest page was fetched (negative infinity for none).
    fn newest(&self) -> f64 {
        // The latest noted is not always the newest: responses finish out of order.
        self.entries
            .iter()
            .map(|e| self.origin + f64::from(e.at))
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// A fetched target as `Pages` keys it: the user agent's hash and the target's bytes, FNV-1a
/// folded to 32 bits (a collision only files one request in the other lane).
pub fn page_hash(agent: u32, target: &[u8]) -> u32 {
    let h = agent
        .to_le_bytes()
        .iter()
        .chain(target)
        .fold(FNV_OFFSET, fnv);
    (h ^ (h >> 32)) as u32
}

/// The target (path and query) a `Referer` names: an `http(s)` URL's part from its path on,
/// or a bare path; `None` for anything else (`-`, `android-app://...`, garbage).
pub fn referer_target(referer: &[u8]) -> Option<&[u8]> {
    let r = match referer.iter().position(|&b| b == b'#') {
        Some(i) => &referer[..i],
        None => referer,
    };
    if r.first() == Some(&b'/') {
        return (r.get(1) != Some(&b'/')).then_some(r);
    }
    let scheme = |s: &[u8]| r.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s));
    let rest = if scheme(b"http://") {
        &r[7..]
    } else if scheme(b"https://") {
        &r[8..]
    } else {
        return None;
    };
    match rest.iter().position(|&b| b == b'/' || b == b'?') {
        Some(i) if rest[i] == b'/' => Some(&rest[i..]),
        Some(_) => None,
        None => Some(b"/"),
    }
}

/// What a request's lane is named after its client's session key: see `Sessions::lane`.
const NAVIGATION: &str = "\u{0}navigation";

/// The session key of a client's navigation lane.
pub fn navigation_key(key: &str) -> String {
    format!("{key}{NAVIGATION}")
}

/// The client's own session key (its direct lane's) of a lane's key.
pub fn client_key(lane: &str) -> &str {
    lane.strip_suffix(NAVIGATION).unwrap_or(lane)
}

/// The lanes of a log's requests, in order, as `Sessions::lane` puts them, for passes over a
/// log that keep no other client state (training's route statistics, the eval's baseline).
pub struct Lanes {
    within: f64,
    pages: HashMap<String, Pages>,
}

impl Lanes {
    pub fn new(config: &SessionConfig) -> Lanes {
        Lanes {
            within: config.idle_ttl,
            pages: HashMap::new(),
        }
    }

    /// The key of the lane of `r`, the next request of the log, whose client's session key is
    /// `key`; `now` is its time.
    pub fn key(&mut self, key: &str, now: f64, r: &Record) -> String {
        let agent = agent_hash(r.user_agent.as_deref());
        let follows = r
            .referer
            .as_deref()
            .and_then(referer_target)
            .is_some_and(|t| {
                self.pages
                    .get(key)
                    .is_some_and(|p| p.fetched(now, page_hash(agent, t), self.within))
            });
        if served(r.status) {
            let (_, target, _) = r.request_parts();
            self.pages.entry(key.to_string()).or_default().note(
                now,
                agent,
                page_hash(agent, target.as_bytes()),
            );
        }
        if follows {
            navigation_key(key)
        } else {
            key.to_string()
        }
    }
}

/// Whether a response served what was asked for, a page a later request may follow: 2xx/3xx
/// (not 0, no response at all).
pub fn served(status: u16) -> bool {
    (100..400).contains(&status)
}

/// Templates whose 10 s counts a client keeps (`ClientState::bursts`). A new template takes the
/// slot with the smallest count, so the busiest routes stay; an untracked template counts 0.
pub const BURST_SLOTS: usize = 4;

/// Everything vigil remembers about one client lane (a session entry).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientState {
    /// Most recent last; at most `window` entries.
    pub recent: Vec<TemplateId>,
    pub first_seen: f64,
    pub last_seen: f64,
    pub requests: u64,
    pub rate_short: Decayed,
    pub rate_medium: Decayed,
    pub rate_long: Decayed,
    /// Decayed (60 s) counts of 4xx/5xx responses and of 401, 403 and 404 in particular.
    pub errors: Decayed,
    pub unauthorized: Decayed,
    pub forbidden: Decayed,
    pub not_found: Decayed,
    /// Decayed (60 s) response bytes.
    pub bytes: Decayed,
    /// Decayed (10 s) request counts of the client's busiest recent templates: one client
    /// hammering one route (a flood, a brute force, an id walk) shows here long before its
    /// overall rate looks unlike a browser loading a page of assets.
    pub bursts: [(TemplateId, Decayed); BURST_SLOTS],
    /// Exponentially weighted mean and variance of seconds between requests.
    pub gap_mean: f32,
    pub gap_var: f32,
    /// Anomalous requests per user agent (the most recent `STRIKE_AGENTS` agents). Escalation
    /// holds for the agent that earned it, so that the people behind one NAT address are not
    /// blocked for what one of them did; strikes from several agents at once, none with a run
    /// of its own (a scanner rotating its user agent), escalate the whole client.
    pub strikes: [Strikes; STRIKE_AGENTS],
    /// Until when (seconds, request clock) every request of the client gets the escalated
    /// action, whatever its user agent.
    pub escalated_until: f64,
    /// Templates per user agent (at most `SEQUENCE_AGENTS`), for the transformer; `recent`
    /// and the counters stay per client, so a scanner that rotates its user agent still
    /// fills one window.
    pub sequences: Vec<Sequence>,
    /// The vocabulary `recent` and `sequences` hold ids of: after a model swap to another
    /// vocabulary the old ids mean other routes, so the windows restart (the counters stay
    /// valid).
    pub vocabulary: u64,
    /// What the client was recently answered 2xx/3xx for: kept in the entry of its session
    /// key (its direct lane), read for every request of it that names a referer
    /// (`Sessions::lane`).
    pub pages: Pages,
}

impl ClientState {
    pub fn new(now: f64) -> ClientState {
        ClientState {
            recent: Vec::new(),
            first_seen: now,
            last_seen: now,
            requests: 0,
            rate_short: Decayed::default(),
            rate_medium: Decayed::default(),
            rate_long: Decayed::default(),
            errors: Decayed::default(),
            unauthorized: Decayed::default(),
            forbidden: Decayed::default(),
            not_found: Decayed::default(),
            bytes: Decayed::default(),
            bursts: [(TemplateId::UNKNOWN, Decayed::default()); BURST_SLOTS],
            gap_mean: 0.0,
            gap_var: 0.0,
            strikes: [Strikes::default(); STRIKE_AGENTS],
            escalated_until: f64::NEG_INFINITY,
            sequences: Vec::new(),
            vocabulary: 0,
            pages: Pages::default(),
        }
    }

    /// Make `recent` refer to `vocabulary`'s ids, dropping ids of another one.
    pub fn use_vocabulary(&mut self, vocabulary: u64) {
        if self.vocabulary != vocabulary {
            self.recent.clear();
            self.sequences.clear();
            self.bursts = [(TemplateId::UNKNOWN, Decayed::default()); BURST_SLOTS];
            self.vocabulary = vocabulary;
        }
    }

    /// Count an anomalous request of `agent` (`agent_hash` of its user agent). Once `after`
    /// of one agent's came each within `within` seconds of the previous, and they are at least
    /// `ESCALATION_SHARE` of the client's requests of the last minute, that agent's requests
    /// are escalated until `duration` after its latest anomaly: the escalation lasts while the
    /// behaviour goes on and fades when it stops. A scan, a brute force or a flood is anomalous
    /// request after request; an integration whose poll trips a forest now and then among its
    /// ordinary calls is not. `ROTATING_AGENTS` agents striking each within `within` of now
    /// escalate the whole client, unless one of them is escalated on its own. Returns whether
    /// this call started a new escalation.
    pub fn note_anomaly(
        &mut self,
        now: f64,
        after: u32,
        within: f64,
        duration: f64,
        agent: u32,
    ) -> bool {
        let was = self.escalated(now, agent);
        let slot = slot_for(&self.strikes, |s| s.agent == agent, |s| s.last);
        if self.strikes[slot].agent != agent {
            self.strikes[slot] = Strikes {
                agent,
                ..Strikes::default()
            };
        }
        let s = &mut self.strikes[slot];
        if now - s.last > within {
            s.count = 0;
        }
        s.count = s.count.saturating_add(1);
        s.last = s.last.max(now);
        let recent = self.rate_medium.at(now, TAU_MEDIUM).max(1.0);
        if s.count >= after && s.count as f32 >= ESCALATION_SHARE * recent {
            s.until = s.until.max(now + duration);
        }
        // When one agent's run already explains the anomalies (it escalated on its own), the
        // others striking beside it are its neighbours behind a NAT address, whose shared
        // counters it has just filled with errors: escalating the whole address blocked them
        // for ten minutes (466 of 535 false positives on one simulated site). A scanner that
        // rotates its user agent never builds a run under one agent.
        let (agents, one_explains) = self
            .strikes
            .iter()
            .filter(|s| s.count > 0 && now - s.last <= within)
            .fold((0, false), |(n, one), s| (n + 1, one || s.until > now));
        if agents >= ROTATING_AGENTS && !one_explains {
            self.escalated_until = self.escalated_until.max(now + duration);
        }
        !was && self.escalated(now, agent)
    }

    /// Whether a request of `agent` (`agent_hash` of its user agent) from this client gets
    /// the escalated action.
    pub fn escalated(&self, now: f64, agent: u32) -> bool {
        now < self.escalated_until
            || self
                .strikes
                .iter()
                .any(|s| s.agent == agent && now < s.until)
    }

    /// Record a request's arrival and template (pre-upstream stage).
    pub fn observe_request(&mut self, now: f64, template: TemplateId, window: usize) {
        if self.requests > 0 {
            let gap = (now - self.last_seen).max(0.0) as f32;
            // EWMA with alpha 0.2: about the last five gaps.
            let d = gap - self.gap_mean;
            self.gap_mean += 0.2 * d;
            self.gap_var = 0.8 * (self.gap_var + 0.2 * d * d);
        }
        self.requests += 1;
        self.last_seen = self.last_seen.max(now);
        self.rate_short.add(now, TAU_SHORT, 1.0);
        self.rate_medium.add(now, TAU_MEDIUM, 1.0);
        self.rate_long.add(now, TAU_LONG, 1.0);
        self.count_burst(now, template);
        push_recent(&mut self.recent, template, window);
    }

    /// Append `template` to `agent`'s sequence and return the sequence before it, and whether
    /// that is the sequence's whole history (it starts at the session's beginning). A sequence
    /// idle longer than `idle_ttl` starts again, as a client idle that long is forgotten:
    /// training splits sequences the same way (`learn::train`).
    pub fn continue_sequence(
        &mut self,
        now: f64,
        agent: u32,
        template: TemplateId,
        window: usize,
        idle_ttl: f64,
    ) -> (Vec<TemplateId>, bool) {
        let i = match self.sequences.iter().position(|s| s.agent == agent) {
            Some(i) => i,
            None if self.sequences.len() < SEQUENCE_AGENTS => {
                // Most clients have one agent: grow one at a time, not by the default four.
                self.sequences.reserve_exact(1);
                self.sequences.push(Sequence {
                    agent,
                    recent: Vec::new(),
                    requests: 0,
                    last: now,
                });
                self.sequences.len() - 1
            }
            None => {
                let i = slot_for(&self.sequences, |_| false, |s| s.last);
                let s = &mut self.sequences[i];
                (s.agent, s.last) = (agent, now);
                s.recent.clear();
                s.requests = 0;
                i
            }
        };
        let s = &mut self.sequences[i];
        if now - s.last > idle_ttl {
            s.recent.clear();
            s.requests = 0;
        }
        let context = s.recent.clone();
        let whole = s.requests as usize == context.len();
        push_recent(&mut s.recent, template, window);
        s.requests += 1;
        s.last = s.last.max(now);
        (context, whole)
    }

    /// The client's requests of `template` in about the last 10 s (0 when it is not among the
    /// client's busiest recent templates).
    pub fn burst(&self, now: f64, template: TemplateId) -> f32 {
        self.bursts
            .iter()
            .find(|(t, _)| *t == template)
            .map_or(0.0, |(_, d)| d.at(now, TAU_SHORT))
    }

    fn count_burst(&mut self, now: f64, template: TemplateId) {
        let slot = slot_for(
            &self.bursts,
            |(t, _)| *t == template,
            |(_, d)| d.at(now, TAU_SHORT) as f64,
        );
        if self.bursts[slot].0 != template {
            self.bursts[slot] = (template, Decayed::default());
        }
        self.bursts[slot].1.add(now, TAU_SHORT, 1.0);
    }

    /// Record the response (post-response stage).
    pub fn observe_response(&mut self, now: f64, status: u16, bytes: u64) {
        if status >= 400 {
            self.errors.add(now, TAU_MEDIUM, 1.0);
        }
        match status {
            401 => self.unauthorized.add(now, TAU_MEDIUM, 1.0),
            403 => self.forbidden.add(now, TAU_MEDIUM, 1.0),
            404 => self.not_found.add(now, TAU_MEDIUM, 1.0),
            _ => {}
        }
        self.bytes.add(now, TAU_MEDIUM, bytes as f32);
    }

    /// Distinct templates among the recent ones.
    pub fn unique_recent(&self) -> usize {
        let mut v = self.recent.clone();
        v.sort_unstable();
        v.dedup();
        v.len()
    }

    /// Share of recent (60 s) requests that failed.
    pub fn error_ratio(&self, now: f64) -> f32 {
        let n = self.rate_medium.at(now, TAU_MEDIUM);
        if n <= 0.0 {
            0.0
        } else {
            (self.errors.at(now, TAU_MEDIUM) / n).min(1.0)
        }
    }

    /// Approximate heap plus inline size of this state, for capacity planning.
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of::<ClientState>()
            + self.recent.capacity() * std::mem::size_of::<TemplateId>()
            + self.sequences.capacity() * std::mem::size_of::<Sequence>()
            + self
                .sequences
                .iter()
                .map(|s| s.recent.capacity() * std::mem::size_of::<TemplateId>())
                .sum::<usize>()
            + self.pages.entries.capacity() * std::mem::size_of::<Page>()
    }

    /// When the client was last heard of in this entry: a request, or a page fetched in its
    /// navigation lane.
    fn last_active(&self) -> f64 {
        self.last_seen.max(self.pages.newest())
    }
}

const SHARDS: usize = 16;
/// Entries examined to pick an eviction victim when a shard is full.
const EVICTION_SAMPLE: usize = 16;

/// A session key as model files store it (a forest's per-client thresholds): FNV-1a, 64 bits,
/// because the standard library's hasher may change between Rust releases and a model set
/// must mean the same to every build of vigil.
pub fn key_hash(key: impl AsRef<[u8]>) -> u64 {
    key.as_ref().iter().fold(FNV_OFFSET, fnv)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(h: u64, b: &u8) -> u64 {
    (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
}

/// A request's user agent as the escalation state keys it (never 0, which means "several").
pub fn agent_hash(user_agent: Option<&[u8]>) -> u32 {
    let mut h = DefaultHasher::new();
    user_agent.unwrap_or_default().hash(&mut h);
    (h.finish() as u32).max(1)
}

/// Site-wide decayed counts per template, all clients together: a flood spread over many
/// addresses, or credential stuffing with a few attempts per address, shows here and in no
/// single client's state. Indexed by template id; reset when the vocabulary changes.
#[derive(Debug, Default)]
pub struct Site {
    table: std::sync::RwLock<SiteTable>,
}

#[derive(Debug, Default)]
struct SiteTable {
    vocabulary: u64,
    routes: Vec<Mutex<SiteRoute>>,
}

#[derive(Debug, Default)]
struct SiteRoute {
    requests: Decayed,
    failures: Decayed,
}

impl Site {
    /// Run `f` on the counts of `template` of the vocabulary tagged `vocabulary`
    /// (`routes` ids long).
    fn with<T>(
        &self,
        vocabulary: u64,
        routes: usize,
        template: TemplateId,
        f: impl FnOnce(&mut SiteRoute) -> T,
    ) -> T {
        let i = template.0 as usize;
        {
            let t = self.table.read().unwrap_or_else(|e| e.into_inner());
            if t.vocabulary == vocabulary && t.routes.len() == routes {
                if let Some(r) = t.routes.get(i) {
                    return f(&mut r.lock().unwrap_or_else(|e| e.into_inner()));
                }
            }
        }
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        if t.vocabulary != vocabulary || t.routes.len() != routes {
            t.vocabulary = vocabulary;
            t.routes = (0..routes).map(|_| Mutex::default()).collect();
        }
        match t.routes.get(i) {
            Some(r) => f(&mut r.lock().unwrap_or_else(|e| e.into_inner())),
            // An id outside the vocabulary: counted nowhere.
            None => f(&mut SiteRoute::default()),
        }
    }

    /// A request for `template` arrives; returns the template's decayed ~60 s request count
    /// before it.
    pub fn arrive(&self, vocabulary: u64, routes: usize, template: TemplateId, now: f64) -> f32 {
        self.with(vocabulary, routes, template, |r| {
            let before = r.requests.at(now, TAU_MEDIUM);
            r.requests.add(now, TAU_MEDIUM, 1.0);
            before
        })
    }

    /// Its response was sent; returns the template's decayed ~10 min count of authentication
    /// failures (401, 403), this response included. Ten minutes, not one: credential
    /// stuffing spreads a few attempts per address over half an hour or more, a trickle that
    /// a one-minute count loses in the noise of users mistyping their passwords.
    pub fn respond(
        &self,
        vocabulary: u64,
        routes: usize,
        template: TemplateId,
        now: f64,
        status: u16,
    ) -> f32 {
        self.with(vocabulary, routes, template, |r| {
            let failed = matches!(status, 401 | 403);
            r.failures
                .add(now, TAU_LONG, if failed { 1.0 } else { 0.0 });
            r.failures.at(now, TAU_LONG)
        })
    }
}

/// All clients' state, sharded to keep lock contention low on the request path.
pub struct Sessions {
    config: SessionConfig,
    shards: Vec<Mutex<HashMap<String, ClientState>>>,
    site: Site,
}

impl Sessions {
    pub fn new(config: SessionConfig) -> Sessions {
        Sessions {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            config,
            site: Site::default(),
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The site-wide counts (every client of this store together).
    pub fn site(&self) -> &Site {
        &self.site
    }

    /// The session key of a request.
    pub fn key(
        &self,
        client: &str,
        user_agent: Option<&[u8]>,
        cookie: Option<&[u8]>,
        header: Option<&[u8]>,
    ) -> String {
        match &self.config.key {
            SessionKey::Ip => client.to_string(),
            // `key_hash`, not the standard hasher: model files name clients by this key.
            SessionKey::IpUserAgent => {
                format!("{client}|{:016x}", key_hash(user_agent.unwrap_or_default()))
            }
            SessionKey::Cookie(name) => cookie
                .and_then(|c| cookie_value(c, name))
                .map(|v| format!("c:{}", String::from_utf8_lossy(v)))
                .unwrap_or_else(|| client.to_string()),
            SessionKey::Header(_) => header
                .filter(|v| !v.is_empty())
                .map(|v| format!("h:{}", String::from_utf8_lossy(v)))
                .unwrap_or_else(|| client.to_string()),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, ClientState>> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Run `f` on the client's state, creating it (and evicting if full) when needed.
    pub fn with<R>(&self, key: &str, now: f64, f: impl FnOnce(&mut ClientState) -> R) -> R {
        let per_shard = (self.config.max_clients / SHARDS).max(1);
        let mut map = match self.shard(key).lock() {
            Ok(m) => m,
            // A panic while holding the lock leaves plain counters behind: keep using them.
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(state) = map.get_mut(key) {
            if now - state.last_seen <= self.config.idle_ttl {
                return f(state);
            }
            // Expired: start afresh, as if it had been evicted. Its pages stay: a client that
            // only follows links for a while keeps this entry for them alone, and each counts
            // for `idle_ttl` after it was served.
            let pages = std::mem::take(&mut state.pages);
            *state = ClientState::new(now);
            state.pages = pages;
            return f(state);
        }
        if map.len() >= per_shard {
            evict(&mut map, now, self.config.idle_ttl);
        }
        let state = map
            .entry(key.to_string())
            .or_insert_with(|| ClientState::new(now));
        f(state)
    }

    /// The lane of a request of the client `key`, by `agent` (`agent_hash`) with this
    /// `Referer`: `Some(navigation_key(key))` when the referer names a page the same client
    /// and user agent were answered 2xx/3xx for within `idle_ttl`, a click on a link; `None`
    /// for the client's direct lane (typed, bookmarked, scripted, scanned, from another
    /// site). A referer is matched by its path and query only, as logs do not hold the host:
    /// another site's origin-only referer reads as `/`. Each lane is a client of its own for the counters, the forests, the
    /// transformer's sequences and escalation: the people behind one NAT address browse by
    /// links while a scanner or a script beside them requests directly, and one address's
    /// counters made the scanner's errors theirs (on a simulated site, 298 of 404 false
    /// positives came from one NAT address with a slow scanner in it).
    pub fn lane(&self, key: &str, now: f64, agent: u32, referer: Option<&[u8]>) -> Option<String> {
        let page = page_hash(agent, referer.and_then(referer_target)?);
        let map = match self.shard(key).lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.get(key)
            .is_some_and(|c| c.pages.fetched(now, page, self.config.idle_ttl))
            .then(|| navigation_key(key))
    }

    /// Remember that the client `key` was answered 2xx/3xx for `page` (`page_hash`) by `agent`.
    pub fn note_page(&self, key: &str, now: f64, agent: u32, page: u32) {
        self.with(key, now, |c| c.pages.note(now, agent, page));
    }

    /// A copy of a client's state, if known and not expired.
    pub fn get(&self, key: &str, now: f64) -> Option<ClientState> {
        let map = match self.shard(key).lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.get(key)
            .filter(|s| now - s.last_seen <= self.config.idle_ttl)
            .cloned()
    }

    /// Forget one client, both its lanes (the session reset of the REST API).
    pub fn reset(&self, key: &str) -> bool {
        let navigation = navigation_key(key);
        [key, navigation.as_str()]
            .into_iter()
            .fold(false, |any, k| {
                let mut map = match self.shard(k).lock() {
                    Ok(m) => m,
                    Err(poisoned) => poisoned.into_inner(),
                };
                map.remove(k).is_some() || any
            })
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| match s.lock() {
                Ok(m) => m.len(),
                Err(p) => p.into_inner().len(),
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Make room in a full shard: drop expired entries among a sample, else the least recently
/// active entry of the sample.
fn evict(map: &mut HashMap<String, ClientState>, now: f64, ttl: f64) {
    let mut victim: Option<(String, f64)> = None;
    let mut expired = Vec::new();
    for (k, s) in map.iter().take(EVICTION_SAMPLE) {
        let seen = s.last_active();
        if now - seen > ttl {
            expired.push(k.clone());
        } else if victim.as_ref().is_none_or(|(_, t)| seen < *t) {
            victim = Some((k.clone(), seen));
        }
    }
    if expired.is_empty() {
        if let Some((k, _)) = victim {
            map.remove(&k);
        }
    } else {
        for k in expired {
            map.remove(&k);
        }
    }
}

fn cookie_value<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|c| {
        let c = c.strip_prefix(b" ").unwrap_or(c);
        let eq = c.iter().position(|&b| b == b'=')?;
        (c[..eq] == *name.as_bytes()).then(|| &c[eq + 1..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decayed_counts_follow_the_timestamps_not_the_clock() {
        let mut d = Decayed::default();
        for i in 0..10 {
            d.add(100.0 + i as f64 * 0.1, TAU_SHORT, 1.0);
        }
        assert!(
            (d.at(101.0, TAU_SHORT) - 9.6).abs() < 0.5,
            "{}",
            d.at(101.0, TAU_SHORT)
        );
        assert!(d.at(200.0, TAU_SHORT) < 0.01, "decays away");
    }

    #[test]
    fn state_tracks_window_errors_and_gaps() {
        let s = Sessions::new(SessionConfig {
            window: 3,
            ..SessionConfig::default()
        });
        for i in 0..5u32 {
            s.with("1.2.3.4", i as f64, |c| {
                c.observe_request(i as f64, TemplateId(i % 2 + 1), 3);
                c.observe_response(i as f64, if i < 3 { 404 } else { 200 }, 100);
            });
        }
        let c = s.get("1.2.3.4", 4.0).unwrap();
        assert_eq!(c.recent, vec![TemplateId(1), TemplateId(2), TemplateId(1)]);
        assert_eq!(c.unique_recent(), 2);
        assert_eq!(c.requests, 5);
        assert!((c.gap_mean - 0.67).abs() < 0.1, "{}", c.gap_mean);
        let ratio = c.error_ratio(4.0);
        assert!(ratio > 0.5 && ratio < 0.65, "{ratio}");
        assert!(c.not_found.at(4.0, TAU_MEDIUM) > 2.5);
    }

    #[test]
    fn memory_is_bounded_and_idle_clients_expire() {
        let s = Sessions::new(SessionConfig {
            max_clients: 160,
            idle_ttl: 60.0,
            ..SessionConfig::default()
        });
        for i in 0..10_000 {
            s.with(
                &format!("10.0.{}.{}", i / 256, i % 256),
                i as f64 * 0.001,
                |c| c.observe_request(i as f64 * 0.001, TemplateId(1), 20),
            );
        }
        assert!(s.len() <= 160, "{}", s.len());
        s.with("a", 0.0, |c| c.observe_request(0.0, TemplateId(1), 20));
        assert!(s.get("a", 30.0).is_some());
        assert!(s.get("a", 100.0).is_none(), "expired after the idle TTL");
        assert!(s.reset("a"));
    }

    #[test]
    fn keys_by_ip_ua_cookie_or_header() {
        let ip = Sessions::new(SessionConfig::default());
        assert_eq!(ip.key("1.1.1.1", Some(b"ua"), None, None), "1.1.1.1");
        let ua = Sessions::new(SessionConfig {
            key: SessionKey::IpUserAgent,
            ..SessionConfig::default()
        });
        assert_ne!(
            ua.key("1.1.1.1", Some(b"a"), None, None),
            ua.key("1.1.1.1", Some(b"b"), None, None)
        );
        let ck = Sessions::new(SessionConfig {
            key: SessionKey::Cookie("sid".into()),
            ..SessionConfig::default()
        });
        assert_eq!(
            ck.key("1.1.1.1", None, Some(b"x=1; sid=abc"), None),
            "c:abc"
        );
        assert_eq!(ck.key("1.1.1.1", None, Some(b"x=1"), None), "1.1.1.1");
    }

    /// A client's requests and its anomalies, as the pipeline feeds them.
    fn request(c: &mut ClientState, now: f64, anomalous: bool, agent: u32) -> bool {
        c.observe_request(now, TemplateId(1), 20);
        anomalous && c.note_anomaly(now, 2, 60.0, 600.0, agent)
    }

    #[test]
    fn escalation_needs_a_run_of_anomalies_from_one_agent() {
        // A scanner: every request anomalous, one second apart.
        let mut c = ClientState::new(0.0);
        assert!(!request(&mut c, 0.0, true, 7));
        assert!(request(&mut c, 1.0, true, 7), "second strike escalates");
        assert!(c.escalated(2.0, 7));
        assert!(
            !c.escalated(2.0, 8),
            "another user agent behind the address goes on"
        );
        assert!(
            c.escalated(600.5, 7) && !c.escalated(601.5, 7),
            "fades after duration"
        );

        // A poller that trips a detector every five minutes is not a scan.
        let mut p = ClientState::new(0.0);
        for i in 0..10 {
            request(&mut p, i as f64 * 300.0, true, 7);
        }
        assert!(!p.escalated(3000.0, 7));

        // An integration whose calls trip a detector now and then among many ordinary ones.
        let mut e = ClientState::new(0.0);
        for i in 0..40 {
            request(&mut e, i as f64 * 0.1, i % 10 == 0, 7);
        }
        assert!(!e.escalated(4.0, 7), "4 anomalies among 40 requests");

        // A scanner rotating its user agent escalates the whole address.
        let mut r = ClientState::new(0.0);
        for i in 0..3 {
            request(&mut r, i as f64, true, 10 + i);
        }
        assert!(r.escalated(3.0, 99));

        // An attacker behind a NAT address escalates itself; neighbours that trip a detector
        // beside it (their shared counters full of its errors) do not get the address blocked.
        let mut n = ClientState::new(0.0);
        for i in 0..6 {
            request(&mut n, i as f64 * 0.5, true, 7);
        }
        assert!(n.escalated(3.0, 7));
        request(&mut n, 3.5, true, 8);
        request(&mut n, 4.0, true, 9);
        request(&mut n, 4.5, true, 10);
        assert!(n.escalated(5.0, 7), "the attacker stays escalated");
        assert!(
            !n.escalated(5.0, 11),
            "a neighbour that did nothing is not blocked"
        );
    }

    #[test]
    fn bursts_count_one_route_of_one_client() {
        let mut c = ClientState::new(0.0);
        for i in 0..30 {
            c.observe_request(i as f64 * 0.1, TemplateId(5), 20);
            // Assets in between take the other slots and do not push the busy route out.
            c.observe_request(i as f64 * 0.1, TemplateId(100 + i), 20);
        }
        assert!(
            c.burst(3.0, TemplateId(5)) > 20.0,
            "{}",
            c.burst(3.0, TemplateId(5))
        );
        assert!(c.burst(3.0, TemplateId(6)) == 0.0);
        assert!(c.burst(60.0, TemplateId(5)) < 1.0, "decays over ~10 s");
    }

    #[test]
    fn bytes_per_client() {
        let mut c = ClientState::new(0.0);
        for i in 0..20 {
            c.continue_sequence(i as f64, 7, TemplateId(i), 20, 1800.0);
            c.observe_request(i as f64, TemplateId(i), 20);
        }
        // About 660 bytes of state per client of one user agent with a window of 20 (a fifth
        // of it the four route bursts, a fifth the strikes of four user agents, a quarter the
        // agent's own window), plus its key and the map entry.
        assert!(c.size_bytes() <= 672, "{}", c.size_bytes());
        // The pages it was served add 12 bytes each, up to `PAGES`.
        let bare = c.size_bytes();
        for i in 0..2 * PAGES as u32 {
            c.pages.note(f64::from(i), 7, i);
        }
        assert_eq!(c.size_bytes() - bare, PAGES * 12);
        // Each further user agent adds its own window and slot, up to `SEQUENCE_AGENTS`.
        let one = c.size_bytes();
        for agent in 0..2 * SEQUENCE_AGENTS as u32 {
            for i in 0..20 {
                c.continue_sequence(100.0 + i as f64, 100 + agent, TemplateId(i), 20, 1800.0);
            }
        }
        assert_eq!(c.sequences.len(), SEQUENCE_AGENTS);
        let more = c.size_bytes() - one;
        assert!(more <= 7 * 128 + 64, "{more}");
    }

    #[test]
    fn each_user_agent_has_its_own_sequence() {
        let mut c = ClientState::new(0.0);
        let (a, b) = (11, 22);
        let t = TemplateId;
        assert_eq!(c.continue_sequence(0.0, a, t(1), 3, 100.0), (vec![], true));
        assert_eq!(c.continue_sequence(1.0, b, t(9), 3, 100.0), (vec![], true));
        assert_eq!(
            c.continue_sequence(2.0, a, t(2), 3, 100.0),
            (vec![t(1)], true)
        );
        assert_eq!(
            c.continue_sequence(3.0, b, t(8), 3, 100.0),
            (vec![t(9)], true)
        );
        c.continue_sequence(4.0, a, t(3), 3, 100.0);
        // Three templates fill the window and are still the whole sequence; once one has been
        // dropped the context no longer starts at the session's beginning.
        assert_eq!(
            c.continue_sequence(5.0, a, t(4), 3, 100.0),
            (vec![t(1), t(2), t(3)], true)
        );
        assert_eq!(
            c.continue_sequence(6.0, a, t(5), 3, 100.0),
            (vec![t(2), t(3), t(4)], false)
        );
        // Idle longer than the TTL: a new session.
        assert_eq!(
            c.continue_sequence(200.0, b, t(7), 3, 100.0),
            (vec![], true)
        );
        // More agents than slots: the least recently seen one's sequence is given up.
        for k in 0..SEQUENCE_AGENTS as u32 {
            c.continue_sequence(300.0 + k as f64, 100 + k, t(1), 3, 1000.0);
        }
        assert_eq!(c.sequences.len(), SEQUENCE_AGENTS);
        assert!(c.sequences.iter().all(|s| s.agent != a && s.agent != b));
        assert_eq!(
            c.continue_sequence(400.0, a, t(6), 3, 1000.0),
            (vec![], true)
        );
        // A model swap to another vocabulary restarts every window.
        c.use_vocabulary(5);
        assert!(c.sequences.is_empty());
    }

    #[test]
    fn a_referer_names_a_target() {
        let t =
            |r: &str| referer_target(r.as_bytes()).map(|t| String::from_utf8_lossy(t).into_owned());
        assert_eq!(
            t("https://shop.example.com/products/7?c=2#top").as_deref(),
            Some("/products/7?c=2")
        );
        assert_eq!(t("HTTP://shop.example.com").as_deref(), Some("/"));
        assert_eq!(t("/cart").as_deref(), Some("/cart"));
        assert_eq!(t("//evil.example/x"), None);
        assert_eq!(t("https://shop.example.com?q=1"), None);
        assert_eq!(t("android-app://com.google.android.gm/"), None);
        assert_eq!(t("-"), None);
        assert_eq!(t(""), None);
    }

    #[test]
    fn following_a_fetched_page_is_the_navigation_lane() {
        let s = Sessions::new(SessionConfig {
            idle_ttl: 100.0,
            ..SessionConfig::default()
        });
        let (browser, other) = (11, 22);
        let home = Some(&b"https://shop.example.com/"[..]);
        assert_eq!(s.lane("a", 0.0, browser, home), None, "nothing fetched yet");
        s.note_page("a", 1.0, browser, page_hash(browser, b"/"));
        assert_eq!(s.lane("a", 2.0, browser, home), Some(navigation_key("a")));
        assert_eq!(
            s.lane("a", 2.0, browser, Some(b"/")),
            Some(navigation_key("a"))
        );
        // Another user agent at the address, no referer, another page, another client, or
        // the page fetched too long ago: the direct lane.
        assert_eq!(s.lane("a", 2.0, other, home), None);
        assert_eq!(s.lane("a", 2.0, browser, None), None);
        assert_eq!(s.lane("a", 2.0, browser, Some(b"/cart")), None);
        assert_eq!(s.lane("b", 2.0, browser, home), None);
        assert_eq!(s.lane("a", 102.0, browser, home), None);
        // A client's entry that expired keeps its pages: a client that only follows links
        // has none of its own requests in it.
        s.note_page("a", 150.0, browser, page_hash(browser, b"/cart"));
        s.with("a", 260.0, |c| c.observe_request(260.0, TemplateId(1), 20));
        assert_eq!(s.lane("a", 261.0, browser, Some(b"/cart")), None, "too old");
        s.note_page("a", 300.0, browser, page_hash(browser, b"/cart"));
        s.with("a", 380.0, |c| assert_eq!(c.requests, 0, "expired"));
        assert_eq!(
            s.lane("a", 390.0, browser, Some(b"/cart")),
            Some(navigation_key("a"))
        );
    }

    #[test]
    fn a_client_remembers_its_last_pages() {
        let mut p = Pages::default();
        for i in 0..PAGES as u32 + 5 {
            p.note(1_000_000.0 + f64::from(i), 7, i);
        }
        assert_eq!(p.entries.len(), PAGES);
        assert!(!p.fetched(1_000_100.0, 4, 1e9), "the oldest are forgotten");
        assert!(p.fetched(1_000_100.0, 5, 1e9));
        // Fetched again, a page is recent again.
        p.note(2_000_000.0, 7, 5);
        assert!(p.fetched(2_000_050.0, 5, 100.0));
        assert!(!p.fetched(2_000_050.0, 6, 100.0));
        assert_eq!(p.entries.len(), PAGES);
    }

    #[test]
    fn one_agent_served_fast_does_not_push_out_its_neighbours_pages() {
        let (browser, crawler) = (11, 22);
        let mut p = Pages::default();
        for i in 0..8 {
            p.note(f64::from(i), browser, 1000 + i);
        }
        // A crawler's thousand redirects: it keeps recycling its own half of the pages.
        for i in 0..1000 {
            p.note(10.0 + f64::from(i), crawler, i);
        }
        assert_eq!(p.entries.len(), PAGES);
        assert!(
            (0..8).all(|i| p.fetched(1100.0, 1000 + i, 1e9)),
            "the browser's pages stay"
        );
        assert!(p.fetched(1100.0, 999, 1e9) && !p.fetched(1100.0, 0, 1e9));
        // A client of one agent keeps its last `PAGES` pages, as before.
        let mut one = Pages::default();
        for i in 0..100 {
            one.note(f64::from(i), browser, i);
        }
        assert!((68..100).all(|i| one.fetched(100.0, i, 1e9)) && !one.fetched(100.0, 67, 1e9));
    }
}
