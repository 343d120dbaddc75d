//! Request templates: a Drain-style miner that turns request lines into route templates
//! (`GET /blog/tags/<*>`, `POST /api/users/<num>?page&sort`) with a capped vocabulary and an
//! explicit unknown template. Identifiers, numbers, hex, UUIDs, base64-like tokens, e-mails
//! and dates are masked before clustering; query keys are kept, values dropped; the status is
//! never part of a template (it is unknown before the upstream answers). Pure and
//! deterministic for a given input order; `Vocabulary` is what a model set persists.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Index into the vocabulary. `TemplateId::UNKNOWN` (0) is every request that matches no
/// template (a new route, or one too rare to keep).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TemplateId(pub u32);

impl TemplateId {
    pub const UNKNOWN: TemplateId = TemplateId(0);
}

/// Miner settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinerConfig {
    /// Fraction of equal tokens (wildcards count as equal) above which a line joins a cluster.
    pub similarity: f64,
    /// Templates kept, most frequent first; the rest map to `UNKNOWN`.
    pub max_templates: usize,
    /// Templates seen fewer times than this are not kept either.
    pub min_count: u64,
    /// Templates requested by fewer distinct clients than this are not routes of the site
    /// but one client's idea (a scanner's probe list, a typo): they map to `UNKNOWN`...
    pub min_clients: usize,
    /// ...unless that client used it at least this often and at least half of the answers
    /// were 2xx/3xx: an integration's own endpoint (an ERP syncing stock, a support desk's
    /// refunds a few times a day) is a route of the site that only one client uses; a
    /// scanner's path answered 403 fifty times is not. At 50, the support desk's refund route
    /// (8 calls in a simulated training day) was unknown, and a stranger's refund with no
    /// order lookup before it looked to the transformer like any rare request.
    pub solo_min_count: u64,
    /// Templates whose responses were mostly "no such resource" (404, 410, 400, 405, 501)
    /// are not routes either, whoever asked for them.
    pub max_missing_share: f64,
    /// A position Drain generalised that held at most this many distinct words is a choice
    /// between routes (`/checkout/payment`, `/checkout/shipping`), not a parameter: each
    /// word seen at least `name_min_count` times gets its own template. More words
    /// (`/blog/tags/<*>`, `/users/<*>`) stay one template.
    pub max_names: usize,
    /// Requests a word needs to become a template of its own; rarer words stay with the
    /// wildcard template.
    pub name_min_count: u64,
}

impl Default for MinerConfig {
    fn default() -> Self {
        MinerConfig {
            similarity: 0.5,
            max_templates: 2000,
            min_count: 2,
            min_clients: 2,
            solo_min_count: 5,
            max_missing_share: 0.5,
            max_names: 8,
            name_min_count: 20,
        }
    }
}

const WILD: &str = "<*>";

/// A request line reduced to what identifies its route.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    method: String,
    segments: Vec<String>,
    /// Sorted, de-duplicated query keys joined with `&` (empty when there is no query).
    query: String,
}

impl Shape {
    fn of(method: &str, target: &str) -> Shape {
        let method = if method.len() <= 12 && method.bytes().all(|b| b.is_ascii_uppercase()) {
            method.to_string()
        } else {
            "OTHER".to_string()
        };
        let (path, query) = match target.find('?') {
            Some(i) => (&target[..i], &target[i + 1..]),
            None => (target, ""),
        };
        // Absolute-form targets (`http://host/path`) keep only the path.
        let path = match path.find("://") {
            Some(i) => path[i + 3..].find('/').map_or("/", |j| &path[i + 3 + j..]),
            None => path,
        };
        let mut segments: Vec<String> = path.split('/').skip(1).map(mask_segment).collect();
        if segments.len() > 12 {
            segments.truncate(12);
            segments.push(WILD.to_string());
        }
        let mut keys: Vec<String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let k = p.split('=').next().unwrap_or("");
                mask_query_key(k)
            })
            .collect();
        keys.sort();
        keys.dedup();
        if keys.len() > 16 {
            keys.truncate(16);
            keys.push(WILD.to_string());
        }
        Shape {
            method,
            segments,
            query: keys.join("&"),
        }
    }

    /// Clusters only ever compare lines with the same method, depth, first segment and keys.
    fn bucket(&self) -> String {
        let first = self.segments.first().map(String::as_str).unwrap_or("");
        format!(
            "{} {} {} ?{}",
            self.method,
            self.segments.len(),
            first,
            self.query
        )
    }
}

/// Mask one path segment: variable-looking tokens become typed masks (`<num>`, `<hex>`, ...); a file name
/// keeps its extension (`<num>.png`).
fn mask_segment(seg: &str) -> String {
    if seg.is_empty() {
        return String::new();
    }
    if let Some(dot) = seg.rfind('.') {
        let (stem, ext) = (&seg[..dot], &seg[dot + 1..]);
        if !stem.is_empty()
            && (1..=5).contains(&ext.len())
            && ext.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            let m = match mask_token(stem) {
                m if m == stem => mask_fingerprints(stem).unwrap_or(m),
                m => m,
            };
            return format!("{m}.{}", ext.to_ascii_lowercase());
        }
    }
    mask_token(seg)
}

/// Mask the content hashes of a bundler's file names (`app.7ee402da.js`, `vendor-3f9a1c0b2d.css`,
/// vite's `index-BXa3f2Kq.js`): every deploy renames the assets, and without the mask each
/// build's names are templates of their own, rare in training just after a deploy and
/// unknown after the next one, so the sequence model found every page load surprising.
/// `None` when the stem has none (the caller keeps it as it is, with no new string).
fn mask_fingerprints(stem: &str) -> Option<String> {
    const SEPARATORS: [char; 3] = ['.', '-', '_'];
    if !stem.split(SEPARATORS).any(is_fingerprint) {
        return None;
    }
    let mut out = String::with_capacity(stem.len());
    for part in stem.split_inclusive(SEPARATORS) {
        let word = part.trim_end_matches(SEPARATORS);
        out.push_str(if is_fingerprint(word) { "<hash>" } else { word });
        out.push_str(&part[word.len()..]);
    }
    Some(out)
}

/// A bundler's content hash: eight or more hex digits with a digit and a letter among them,
/// or eight base64url letters and digits of mixed case with a digit (vite). Words, version
/// numbers (`v2`) and names (`photo-2`) are not.
fn is_fingerprint(w: &str) -> bool {
    let b = w.as_bytes();
    if b.len() < 8 || !b.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let upper = b.iter().any(u8::is_ascii_uppercase);
    let lower = b.iter().any(u8::is_ascii_lowercase);
    let hex = b.iter().all(u8::is_ascii_hexdigit);
    digits > 0 && digits < b.len() && (hex || (b.len() <= 12 && upper && lower))
}

fn mask_query_key(k: &str) -> String {
    // Keys are names chosen by the application, but array keys (`ids[3]`) and generated ones
    // (`_=1699999999`, `k1234`) vary: mask digits runs inside them.
    if k.len() > 40 {
        return WILD.to_string();
    }
    let mut out = String::with_capacity(k.len());
    let mut in_digits = false;
    for c in k.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c.to_ascii_lowercase());
            in_digits = false;
        }
    }
    out
}

/// The typed mask for a variable token, or the token itself.
pub fn mask_token(t: &str) -> String {
    let b = t.as_bytes();
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let alpha = b.iter().filter(|c| c.is_ascii_alphabetic()).count();
    if is_date(t) {
        return "<date>".into();
    }
    if !b.is_empty() && digits == b.len() {
        return "<num>".into();
    }
    if is_uuid(t) {
        return "<uuid>".into();
    }
    if t.contains('@') && t.contains('.') {
        return "<email>".into();
    }
    if b.len() >= 8 && b.iter().all(|c| c.is_ascii_hexdigit()) && digits > 0 {
        return "<hex>".into();
    }
    let upper = b.iter().filter(|c| c.is_ascii_uppercase()).count();
    let lower = b.iter().filter(|c| c.is_ascii_lowercase()).count();
    if b.len() >= 16
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'-' | b'_' | b'%')
        })
        && digits > 0
        && (upper > 0 && lower > 0 || digits * 4 >= b.len())
    {
        return "<b64>".into();
    }
    // Mostly digits with a short prefix or suffix (`v2`, `p12345`, `12345abc`).
    if digits >= 4 && digits * 2 >= alpha + digits {
        return "<id>".into();
    }
    if b.len() > 64 {
        return WILD.into();
    }
    t.to_string()
}

fn is_uuid(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_date(t: &str) -> bool {
    let b = t.as_bytes();
    let d = |r: std::ops::Range<usize>| b[r].iter().all(|c| c.is_ascii_digit());
    (b.len() == 10
        && d(0..4)
        && (b[4] == b'-' || b[4] == b'_')
        && d(5..7)
        && b[7] == b[4]
        && d(8..10))
        || (b.len() == 8
            && d(0..8)
            && (b[0] == b'1' || b[0] == b'2')
            && (b[4] == b'0' || b[4] == b'1'))
}

/// What was seen of a template or a part of it.
#[derive(Debug, Clone, Default)]
struct Tally {
    count: u64,
    /// Requests answered "no such resource".
    missing: u64,
    /// Requests answered 2xx or 3xx.
    answered: u64,
    /// Distinct clients seen, up to `CLIENTS_KEPT` (only "at least min_clients" matters).
    clients: Vec<u64>,
}

impl Tally {
    fn note(&mut self, client: u64, status: u16) {
        self.count += 1;
        self.missing += is_missing(status) as u64;
        self.answered += (200..400).contains(&status) as u64;
        note_client(&mut self.clients, client);
    }

    fn add(&mut self, o: &Tally) {
        self.count += o.count;
        self.missing += o.missing;
        self.answered += o.answered;
        for &c in &o.clients {
            note_client(&mut self.clients, c);
        }
    }

    fn kept(&self, cfg: &MinerConfig) -> bool {
        self.count >= cfg.min_count
            && (self.clients.len() >= cfg.min_clients
                || (self.count >= cfg.solo_min_count && 2 * self.answered >= self.count))
            && (self.missing as f64) <= cfg.max_missing_share * self.count as f64
    }
}

/// Distinct words seen at one position of a cluster, while there are few of them.
#[derive(Debug, Clone, Default)]
struct Names {
    words: Vec<String>,
    /// More than `MinerConfig::max_names` distinct words: a parameter, not a route name.
    many: bool,
}

/// In a key of `Cluster::variants`: the position has too many words to tell them apart.
const ANY_NAME: u8 = u8::MAX;
/// Variants tracked per cluster; requests beyond them count for the wildcard template only.
const VARIANTS_KEPT: usize = 1024;

#[derive(Debug, Clone)]
struct Cluster {
    tokens: Vec<String>,
    method: String,
    query: String,
    tally: Tally,
    /// Per position, the words seen there.
    names: Vec<Names>,
    /// Per combination of words (an index into `names` per position, `ANY_NAME` where there
    /// are many), what was seen of it: a low-cardinality position that Drain generalised
    /// (`/checkout/<*>` over payment and shipping) is split back into routes in `finish`.
    variants: HashMap<Vec<u8>, Tally>,
}

const CLIENTS_KEPT: usize = 16;

fn note_client(clients: &mut Vec<u64>, c: u64) {
    if clients.len() < CLIENTS_KEPT && !clients.contains(&c) {
        clients.push(c);
    }
}

/// Statuses that say the request named nothing the site serves.
fn is_missing(status: u16) -> bool {
    matches!(status, 400 | 404 | 405 | 410 | 501)
}

impl Cluster {
    fn similarity(&self, s: &Shape) -> f64 {
        if self.tokens.len() != s.segments.len() {
            return 0.0;
        }
        if self.tokens.is_empty() {
            return 1.0;
        }
        // As in Drain, a position already generalised to a wildcard does not count as
        // similar: otherwise every cluster would swallow its neighbours one token at a time.
        // Two file names with the same extension do count.
        let same = self
            .tokens
            .iter()
            .zip(&s.segments)
            .filter(|(a, b)| (*a == *b && a.as_str() != WILD) || generalise(a, b).is_some())
            .count();
        same as f64 / self.tokens.len() as f64
    }

    fn absorb(&mut self, s: &Shape, client: u64, status: u16, max_names: usize) {
        for (t, seg) in self.tokens.iter_mut().zip(&s.segments) {
            if t != seg && t != WILD {
                *t = generalise(t, seg).unwrap_or_else(|| WILD.to_string());
            }
        }
        self.tally.note(client, status);
        let key: Vec<u8> = self
            .names
            .iter_mut()
            .zip(&s.segments)
            .map(|(n, seg)| {
                if n.many {
                    return ANY_NAME;
                }
                if let Some(i) = n.words.iter().position(|w| w == seg) {
                    return i as u8;
                }
                if n.words.len() >= max_names.min(ANY_NAME as usize) {
                    n.many = true;
                    n.words = Vec::new();
                    return ANY_NAME;
                }
                n.words.push(seg.clone());
                (n.words.len() - 1) as u8
            })
            .collect();
        if self.variants.len() < VARIANTS_KEPT || self.variants.contains_key(&key) {
            self.variants.entry(key).or_default().note(client, status);
        }
    }

    /// The cluster as templates: one per frequent combination of route names at positions
    /// with few words, and the wildcard template for the rest. Each is (tokens, tally, and
    /// whether it is kept whatever its own tally says).
    fn routes(&self, cfg: &MinerConfig) -> Vec<(Vec<String>, Tally, bool)> {
        // Positions Drain generalised although they hold only a few words.
        let named: Vec<usize> = (0..self.tokens.len())
            .filter(|&p| {
                self.tokens[p].starts_with(WILD)
                    && !self.names[p].many
                    && self.names[p].words.len() > 1
            })
            .collect();
        if named.is_empty() {
            return vec![(self.tokens.clone(), self.tally.clone(), false)];
        }
        let mut split: HashMap<Vec<u8>, Tally> = HashMap::new();
        for (key, t) in &self.variants {
            let k: Vec<u8> = named.iter().map(|&p| key[p]).collect();
            split.entry(k).or_default().add(t);
        }
        let mut split: Vec<(Vec<u8>, Tally)> = split.into_iter().collect();
        split.sort_by(|a, b| a.0.cmp(&b.0));
        // Requests past `VARIANTS_KEPT` combinations belong to no variant: they stay with the
        // wildcard template, counted as seen from the cluster's clients.
        let mut rest = self.tally.clone();
        for (_, t) in &split {
            rest.count -= t.count;
            rest.missing -= t.missing;
            rest.answered -= t.answered;
        }
        if rest.count == 0 {
            rest.clients.clear();
        }
        let mut out = Vec::new();
        for (k, t) in split {
            if k.contains(&ANY_NAME) || t.count < cfg.name_min_count || !t.kept(cfg) {
                rest.add(&t);
                continue;
            }
            let mut tokens = self.tokens.clone();
            for (&p, &i) in named.iter().zip(&k) {
                tokens[p] = self.names[p].words[i as usize].clone();
            }
            out.push((tokens, t, false));
        }
        // The wildcard template stays whenever the cluster is a route, even if the names took
        // all its requests: tomorrow's `app.<new hash>.css` after a deploy is still this
        // route, not an unknown one.
        out.push((self.tokens.clone(), rest, self.tally.kept(cfg)));
        out
    }
}

fn render(method: &str, tokens: &[String], query: &str) -> String {
    let mut s = format!("{method} /{}", tokens.join("/"));
    if !query.is_empty() {
        s.push('?');
        s.push_str(query);
    }
    s
}

/// Two differing tokens with the same extension generalise to `<*>.ext`.
fn generalise(a: &str, b: &str) -> Option<String> {
    let ea = a.rsplit_once('.').map(|(_, e)| e)?;
    let eb = b.rsplit_once('.').map(|(_, e)| e)?;
    (ea == eb && !ea.is_empty()).then(|| format!("{WILD}.{ea}"))
}

/// Learns templates from a stream of request lines.
#[derive(Debug, Default)]
pub struct Miner {
    config: MinerConfig,
    clusters: Vec<Cluster>,
    buckets: HashMap<String, Vec<usize>>,
}

impl Miner {
    pub fn new(config: MinerConfig) -> Miner {
        Miner {
            config,
            clusters: Vec::new(),
            buckets: HashMap::new(),
        }
    }

    /// Add one request from a log: `client` identifies who sent it (any stable hash), `status`
    /// is what the site answered.
    pub fn add(&mut self, method: &str, target: &str, client: u64, status: u16) {
        let shape = Shape::of(method, target);
        let bucket = self.buckets.entry(shape.bucket()).or_default();
        let best = bucket
            .iter()
            .map(|&i| (i, self.clusters[i].similarity(&shape)))
            .filter(|(_, sim)| *sim >= self.config.similarity)
            // Highest similarity; the oldest cluster on ties, for determinism.
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        let i = match best {
            Some((i, _)) => i,
            None => {
                bucket.push(self.clusters.len());
                self.clusters.push(Cluster {
                    names: vec![Names::default(); shape.segments.len()],
                    tokens: shape.segments.clone(),
                    method: shape.method.clone(),
                    query: shape.query.clone(),
                    tally: Tally::default(),
                    variants: HashMap::new(),
                });
                self.clusters.len() - 1
            }
        };
        self.clusters[i].absorb(&shape, client, status, self.config.max_names);
    }

    pub fn cluster_count(&self) -> usize {
        self.clusters.len()
    }

    /// Freeze into a vocabulary: the most frequent routes (at most `max_templates`, each seen
    /// at least `min_count` times from `min_clients` clients and not mostly answered "no such
    /// resource"), ids assigned by descending count then text.
    pub fn finish(&self) -> Vocabulary {
        struct Merged<'a> {
            tally: Tally,
            tokens: Vec<String>,
            fallback: bool,
            first: &'a Cluster,
        }
        let cfg = &self.config;
        let mut merged: HashMap<String, Merged<'_>> = HashMap::new();
        for c in &self.clusters {
            for (tokens, t, fallback) in c.routes(cfg) {
                let e = merged
                    .entry(render(&c.method, &tokens, &c.query))
                    .or_insert(Merged {
                        tally: Tally::default(),
                        tokens,
                        fallback: false,
                        first: c,
                    });
                e.tally.add(&t);
                e.fallback |= fallback;
            }
        }
        let mut list: Vec<(String, u64, Vec<String>, &Cluster)> = merged
            .into_iter()
            .filter(|(_, m)| m.fallback || m.tally.kept(cfg))
            .map(|(t, m)| (t, m.tally.count, m.tokens, m.first))
            .collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        list.truncate(self.config.max_templates);
        let templates = list
            .into_iter()
            .map(|(text, count, tokens, c)| Template {
                text,
                method: c.method.clone(),
                tokens,
                query: c.query.clone(),
                count,
            })
            .collect();
        Vocabulary::new(templates, self.config.similarity)
    }
}

/// One kept template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub text: String,
    method: String,
    tokens: Vec<String>,
    query: String,
    /// How often it was seen in training.
    pub count: u64,
}

/// Status buckets of `RouteStats::status`: 2xx, 3xx, 401, 403, 404, other 4xx, 5xx (and
/// anything else).
pub const STATUS_BUCKETS: usize = 7;

pub fn status_bucket(status: u16) -> usize {
    match status {
        200..=299 => 0,
        300..=399 => 1,
        401 => 2,
        403 => 3,
        404 => 4,
        400..=499 => 5,
        _ => 6,
    }
}

/// What training saw of one route, all clients together: the features compare a live
/// request and its response with it (an export a hundred times its usual size, a 404 on a
/// page that always answers, ten times the route's usual traffic).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RouteStats {
    /// Centre and spread of ln(1 + bytes) of its 2xx responses (median; the larger of the
    /// scaled median absolute deviation and the scaled 10th-90th percentile range).
    pub bytes_mean: f32,
    pub bytes_std: f32,
    /// Smoothed probability of each status bucket (`status_bucket`).
    pub status: [f32; STATUS_BUCKETS],
    /// Requests per second in a busy minute of training (the 90th percentile of per-minute
    /// counts, or the median of the minutes in which the route was used if that is more).
    pub rate: f32,
    /// 401/403 answers per second in a busy ten minutes of training (the 75th percentile of
    /// per-ten-minute counts; see `learn::busy`).
    pub failure_rate: f32,
    /// How hard one client hits the route: the 90th percentile, over the route's clients, of
    /// each client's largest ~10 s count of it (taken before each of its requests).
    pub burst: f32,
}

impl Default for RouteStats {
    /// A route training never saw: nothing is surprising about it.
    fn default() -> Self {
        RouteStats {
            bytes_mean: 0.0,
            bytes_std: 0.0,
            status: [1.0 / STATUS_BUCKETS as f32; STATUS_BUCKETS],
            rate: 0.0,
            failure_rate: 0.0,
            burst: 0.0,
        }
    }
}

/// The frozen template set used at serving time. `TemplateId(i + 1)` is `templates[i]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vocabulary {
    templates: Vec<Template>,
    similarity: f64,
    /// Per template id (the unknown template first); empty in sets trained without them.
    #[serde(default)]
    stats: Vec<RouteStats>,
    #[serde(skip)]
    buckets: HashMap<String, Vec<usize>>,
}

impl PartialEq for Vocabulary {
    fn eq(&self, o: &Self) -> bool {
        self.templates == o.templates && self.similarity == o.similarity && self.stats == o.stats
    }
}

impl Vocabulary {
    fn new(templates: Vec<Template>, similarity: f64) -> Vocabulary {
        let mut v = Vocabulary {
            templates,
            similarity,
            stats: Vec::new(),
            buckets: HashMap::new(),
        };
        v.index();
        v
    }

    /// Rebuild the lookup index (after deserialising).
    pub fn index(&mut self) {
        self.buckets.clear();
        for (i, t) in self.templates.iter().enumerate() {
            let first = t.tokens.first().map(String::as_str).unwrap_or("");
            let key = format!("{} {} {} ?{}", t.method, t.tokens.len(), first, t.query);
            self.buckets.entry(key).or_default().push(i);
            // A template whose first token was generalised is also reachable from any first
            // token of that depth.
            if first == WILD || first.starts_with(WILD) {
                let key = format!("{} {} * ?{}", t.method, t.tokens.len(), t.query);
                self.buckets.entry(key).or_default().push(i);
            }
        }
    }

    /// Number of ids including `UNKNOWN`.
    pub fn len(&self) -> usize {
        self.templates.len() + 1
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    pub fn text(&self, id: TemplateId) -> &str {
        match id.0 {
            0 => "<unknown>",
            i => self
                .templates
                .get(i as usize - 1)
                .map_or("<unknown>", |t| t.text.as_str()),
        }
    }

    /// What training saw of a route (neutral statistics for one it did not see).
    pub fn route(&self, id: TemplateId) -> RouteStats {
        self.stats.get(id.0 as usize).copied().unwrap_or_default()
    }

    /// Attach the routes' statistics, one per template id (`len()` of them).
    pub fn set_stats(&mut self, stats: Vec<RouteStats>) {
        self.stats = stats;
    }

    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// The template of a request, or `UNKNOWN`.
    pub fn lookup(&self, method: &str, target: &str) -> TemplateId {
        let shape = Shape::of(method, target);
        let cands = self
            .buckets
            .get(&shape.bucket())
            .into_iter()
            .chain(self.buckets.get(&format!(
                "{} {} * ?{}",
                shape.method,
                shape.segments.len(),
                shape.query
            )))
            .flatten();
        let mut best: Option<(usize, usize)> = None;
        for &i in cands {
            let t = &self.templates[i];
            if t.tokens.len() != shape.segments.len() {
                continue;
            }
            // At serving time a literal token must match exactly (or by extension for
            // `<*>.ext`): a template is a route, not a similarity cluster any more.
            let ok = t.tokens.iter().zip(&shape.segments).all(|(a, b)| {
                a == b
                    || a == WILD
                    || (a.starts_with("<*>.")
                        && b.rsplit_once('.').is_some_and(|(_, e)| e == &a[4..]))
            });
            if !ok {
                continue;
            }
            let literal = t.tokens.iter().filter(|a| !a.starts_with(WILD)).count();
            if best.is_none_or(|(_, l)| literal > l) {
                best = Some((i, literal));
            }
        }
        best.map_or(TemplateId::UNKNOWN, |(i, _)| TemplateId(i as u32 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each request from its own client, answered 200.
    fn add(m: &mut Miner, method: &str, target: &str) {
        let n = m.clusters.iter().map(|c| c.tally.count).sum::<u64>();
        m.add(method, target, n, 200);
    }

    #[test]
    fn masks_variable_tokens() {
        assert_eq!(mask_token("12345"), "<num>");
        assert_eq!(mask_token("550e8400-e29b-41d4-a716-446655440000"), "<uuid>");
        assert_eq!(mask_token("2024-03-01"), "<date>");
        assert_eq!(mask_token("20071009"), "<date>");
        assert_eq!(mask_token("deadbeef1234"), "<hex>");
        assert_eq!(mask_token("bob@example.com"), "<email>");
        assert_eq!(mask_token("aGVsbG8gd29ybGQgaGVsbG8K9"), "<b64>");
        assert_eq!(mask_token("p12345"), "<id>");
        assert_eq!(mask_token("logstash"), "logstash");
        assert_eq!(mask_segment("photo-2.JPG"), "photo-2.jpg");
        assert_eq!(mask_segment("98765.png"), "<num>.png");
        assert_eq!(mask_segment("app.7ee402da.js"), "app.<hash>.js");
        assert_eq!(
            mask_segment("main.3f2a1b9c.chunk.js"),
            "main.<hash>.chunk.js"
        );
        assert_eq!(mask_segment("index-BXa3f2Kq.js"), "index-<hash>.js");
        assert_eq!(mask_segment("jquery-3.7.1.min.js"), "jquery-3.7.1.min.js");
        assert_eq!(mask_segment("Windows-Setup.exe"), "Windows-Setup.exe");
        assert_eq!(mask_segment("favicon.ico"), "favicon.ico");
    }

    #[test]
    fn clusters_routes_and_keeps_query_keys() {
        let mut m = Miner::new(MinerConfig {
            min_count: 1,
            min_clients: 1,
            ..MinerConfig::default()
        });
        for id in [1, 2, 3, 4] {
            add(&mut m, "GET", &format!("/api/users/{id}?page=2&sort=name"));
        }
        for name in ["firewall", "ruby", "linux"] {
            add(&mut m, "GET", &format!("/blog/tags/{name}"));
        }
        for img in ["a.png", "b.png", "kibana.png"] {
            add(
                &mut m,
                "GET",
                &format!("/presentations/logstash-2013/images/{img}"),
            );
        }
        add(&mut m, "POST", "/api/login");
        let v = m.finish();
        let texts: Vec<&str> = v.templates().iter().map(|t| t.text.as_str()).collect();
        assert!(
            texts.contains(&"GET /api/users/<num>?page&sort"),
            "{texts:?}"
        );
        assert!(texts.contains(&"GET /blog/tags/<*>"), "{texts:?}");
        assert!(
            texts.contains(&"GET /presentations/logstash-2013/images/<*>.png"),
            "{texts:?}"
        );
        assert_eq!(
            v.text(v.lookup("GET", "/api/users/99?sort=x&page=1")),
            "GET /api/users/<num>?page&sort"
        );
        assert_eq!(
            v.text(v.lookup("GET", "/blog/tags/rust")),
            "GET /blog/tags/<*>"
        );
        assert_eq!(
            v.lookup("GET", "/api/users/99"),
            TemplateId::UNKNOWN,
            "different keys, different route"
        );
        assert_eq!(v.lookup("DELETE", "/api/login"), TemplateId::UNKNOWN);
        assert_eq!(v.text(v.lookup("POST", "/api/login")), "POST /api/login");
    }

    #[test]
    fn few_frequent_words_are_routes_many_are_a_parameter() {
        let mut m = Miner::new(MinerConfig::default());
        for c in 0..40 {
            m.add("POST", "/checkout/shipping", c, 302);
            m.add("POST", "/checkout/payment", c, 302);
            // Nine user names, each as frequent as a checkout step: a parameter.
            m.add(
                "GET",
                &format!(
                    "/users/{}",
                    ["ann", "bob", "cy", "di", "ed", "flo", "gus", "hal", "ivy"][c as usize % 9]
                ),
                c,
                200,
            );
        }
        m.add("POST", "/checkout/coupon", 1, 302);
        let v = m.finish();
        let texts: Vec<&str> = v.templates().iter().map(|t| t.text.as_str()).collect();
        assert!(texts.contains(&"POST /checkout/payment"), "{texts:?}");
        assert!(texts.contains(&"POST /checkout/shipping"), "{texts:?}");
        assert!(texts.contains(&"GET /users/<*>"), "{texts:?}");
        assert!(!texts.contains(&"GET /users/ann"), "{texts:?}");
        let route = |target: &str| v.text(v.lookup("POST", target));
        assert_eq!(route("/checkout/payment"), "POST /checkout/payment");
        // A word too rare to be a route of its own, or one never seen, is still the route
        // Drain found.
        assert_eq!(route("/checkout/coupon"), "POST /checkout/<*>");
        assert_eq!(route("/checkout/gift"), "POST /checkout/<*>");
        let count = |t: &str| v.templates().iter().find(|x| x.text == t).map(|x| x.count);
        assert_eq!(count("POST /checkout/payment"), Some(40));
        assert_eq!(count("POST /checkout/<*>"), Some(1));
    }

    #[test]
    fn vocabulary_is_capped_and_deterministic() {
        let lines: Vec<String> = (0..50)
            .map(|i| format!("/page{}/x", ["a", "b", "c", "d", "e"][i % 5]))
            .collect();
        let build = || {
            let mut m = Miner::new(MinerConfig {
                max_templates: 3,
                min_count: 1,
                similarity: 0.9,
                ..MinerConfig::default()
            });
            for l in &lines {
                add(&mut m, "GET", l);
            }
            m.finish()
        };
        let a = build();
        assert_eq!(a.len(), 4, "three templates plus unknown");
        assert_eq!(a, build());
        let json = serde_json::to_string(&a).unwrap();
        let mut back: Vocabulary = serde_json::from_str(&json).unwrap();
        back.index();
        assert_eq!(back.lookup("GET", "/pagea/x"), a.lookup("GET", "/pagea/x"));
    }

    #[test]
    fn routes_need_several_clients_and_answers_other_than_not_found() {
        let mut m = Miner::new(MinerConfig::default());
        for c in 0..5 {
            m.add("GET", "/cart", c, 200);
            m.add("GET", "/prodcuts", c, 404);
        }
        // One scanner asks for its list many times over.
        for _ in 0..50 {
            m.add("GET", "/phpmyadmin/", 99, 403);
        }
        // One integration uses its own endpoint all day; once is not enough.
        for _ in 0..60 {
            m.add("PUT", "/api/v1/erp/stock", 42, 200);
        }
        m.add("GET", "/api/v1/private", 43, 200);
        // A support desk refunds a handful of orders a day; four calls are not a route yet.
        for o in 0..5 {
            m.add("POST", &format!("/api/v1/orders/{o}/refund"), 44, 200);
        }
        for _ in 0..4 {
            m.add("POST", "/api/v1/reports/rebuild", 45, 202);
        }
        m.add("POST", "/login", 1, 401);
        m.add("POST", "/login", 2, 302);
        let v = m.finish();
        let texts: Vec<&str> = v.templates().iter().map(|t| t.text.as_str()).collect();
        assert!(texts.contains(&"GET /cart"), "{texts:?}");
        assert!(
            texts.contains(&"POST /login"),
            "a 401 is an answer: {texts:?}"
        );
        assert!(!texts.contains(&"GET /prodcuts"), "{texts:?}");
        assert!(!texts.contains(&"GET /phpmyadmin/"), "{texts:?}");
        assert!(texts.contains(&"PUT /api/v1/erp/stock"), "{texts:?}");
        assert!(!texts.contains(&"GET /api/v1/private"), "{texts:?}");
        assert!(
            texts.contains(&"POST /api/v1/orders/<num>/refund"),
            "{texts:?}"
        );
        assert!(
            !texts.contains(&"POST /api/v1/reports/rebuild"),
            "{texts:?}"
        );
    }
}
