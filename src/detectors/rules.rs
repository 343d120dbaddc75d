//! Signature detector: rule packs from `rules/*.yaml` compiled into one multi-pattern,
//! linear-time regex-automata engine, matched against every targeted part of the request in
//! its raw and decoded forms (see `normalize`). Reports every matching rule with the field
//! and a short snippet, and sums severity scores (anomaly scoring). Never blocks, never does
//! I/O on the request path; a pathological input costs time linear in its length.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::meta::{self, Regex};
use regex_automata::util::pool::Pool;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind, PatternSet};
use serde::{Deserialize, Serialize};

use crate::config::Inspection;
use crate::memo::Memo;
use crate::normalize::{self, Anomalies, Context};
use crate::request::{self, HttpRequest, Part, PartKind};

/// Why a rule pack was refused. Each variant names the file and, where there is one, the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("{path}: cannot read: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: not a valid rule pack: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path}: rule {rule}: {reason}")]
    Rule {
        path: PathBuf,
        rule: String,
        reason: String,
    },
    #[error("no rules found in {paths}")]
    Empty { paths: String },
    #[error("cannot compile the rule set: {reason}")]
    Compile { reason: String },
}

/// A rule pack file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackFile {
    #[serde(default)]
    description: String,
    rules: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    id: String,
    category: String,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    score: Option<u32>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
    #[serde(default)]
    check: Option<String>,
}

/// A built-in protocol check, computed by the engine instead of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    NullByte,
    InvalidEncoding,
    MultipleEncoding,
    OverlongUtf8,
    TooManyArgs,
    MalformedBody,
    RequestLineTooLong,
    HeaderTooLong,
    BodyOverLimit,
    NonAsciiRequestLine,
    UnusualMethod,
}

impl Check {
    fn parse(s: &str) -> Option<Check> {
        Some(match s {
            "null_byte" => Check::NullByte,
            "invalid_encoding" => Check::InvalidEncoding,
            "multiple_encoding" => Check::MultipleEncoding,
            "overlong_utf8" => Check::OverlongUtf8,
            "too_many_args" => Check::TooManyArgs,
            "malformed_body" => Check::MalformedBody,
            "request_line_too_long" => Check::RequestLineTooLong,
            "header_too_long" => Check::HeaderTooLong,
            "body_over_limit" => Check::BodyOverLimit,
            "non_ascii_request_line" => Check::NonAsciiRequestLine,
            "unusual_method" => Check::UnusualMethod,
            _ => return None,
        })
    }
}

/// Which parts of a request a rule looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// Bit set of `PartKind`s, all names included.
    kinds: u16,
    /// Header names (lower-case) targeted one by one.
    headers: Vec<String>,
}

impl Targets {
    fn parse(list: &[String]) -> Result<Targets, String> {
        use PartKind::*;
        let mut t = Targets::default();
        let mut add = |ks: &[PartKind]| {
            for k in ks {
                t.kinds |= k.bit();
            }
        };
        let mut headers = Vec::new();
        for s in list {
            match s.as_str() {
                "request_line" => add(&[RequestLine]),
                "path" => add(&[Path]),
                "query" => add(&[QueryName, QueryValue]),
                "query_names" => add(&[QueryName]),
                "query_values" => add(&[QueryValue]),
                "body" => add(&[BodyName, BodyValue, BodyRaw, FileName]),
                "body_names" => add(&[BodyName]),
                "body_values" => add(&[BodyValue]),
                "body_raw" => add(&[BodyRaw]),
                "filenames" => add(&[FileName]),
                "args" => add(&[QueryName, QueryValue, BodyName, BodyValue, BodyRaw]),
                "arg_names" => add(&[QueryName, BodyName]),
                "arg_values" => add(&[QueryValue, BodyValue, BodyRaw]),
                "headers" => add(&[Header]),
                "cookies" => add(&[CookieName, CookieValue]),
                "cookie_values" => add(&[CookieValue]),
                "user_agent" => headers.push("user-agent".to_string()),
                "referer" => headers.push("referer".to_string()),
                "all" => add(&PartKind::ALL),
                other => match other.strip_prefix("header:") {
                    Some(h) if !h.is_empty() => headers.push(h.to_ascii_lowercase()),
                    _ => return Err(format!(
                        "unknown target {other:?} (expected request_line, path, query, query_names, query_values, body, body_names, body_values, body_raw, filenames, args, arg_names, arg_values, headers, header:NAME, user_agent, referer, cookies, cookie_values or all)"
                    )),
                },
            }
        }
        t.headers = headers;
        Ok(t)
    }

    fn applies(&self, kind: PartKind, name: &[u8]) -> bool {
        if self.kinds & kind.bit() != 0 {
            return true;
        }
        kind == PartKind::Header && self.headers.iter().any(|h| h.as_bytes() == name)
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub category: String,
    pub score: u32,
    pub severity: &'static str,
    pub description: String,
    pub targets: Targets,
    pub check: Option<Check>,
    pub source: PathBuf,
}

/// A matched rule, as logged and as given to the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleMatch {
    pub id: String,
    pub category: String,
    pub score: u32,
    pub severity: &'static str,
    /// Where it matched: `path`, `query:q`, `header:user-agent`, `body:comment`...
    pub field: String,
    /// The argument/cookie/header name the match was in (for exclusions).
    #[serde(skip)]
    pub parameter: Option<String>,
    /// A short excerpt around the match, escaped (never raw attacker bytes).
    pub snippet: String,
}

/// The rule engine's verdict on one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuleReport {
    pub matches: Vec<RuleMatch>,
}

impl RuleReport {
    pub fn score(&self) -> u32 {
        self.matches.iter().map(|m| m.score).sum()
    }
}

type CachePool = Pool<
    Cache,
    Box<dyn Fn() -> Cache + Send + Sync + std::panic::RefUnwindSafe + std::panic::UnwindSafe>,
>;

/// One lazy DFA over every pattern, reporting all that match (`MatchKind::All`). Used
/// directly rather than through `meta::Regex` so that it never gives up and falls back to
/// the (much slower) PikeVM: a lazy DFA whose cache thrashes is still linear in the input.
struct Engine {
    dfa: DFA,
    caches: CachePool,
    /// Only used if the lazy DFA reports an error (it has no quit bytes, so it should not).
    fallback: Regex,
}

impl Engine {
    fn which(&self, cache: &mut Cache, hay: &[u8], set: &mut PatternSet) {
        // Almost every value matches nothing. A plain search that stops at the first match
        // runs the DFA's unrolled loop, several times cheaper per byte than the overlapping
        // search that names every matching pattern, so that one only runs on a hit.
        if let Ok(None) = self
            .dfa
            .try_search_fwd(cache, &Input::new(hay).earliest(true))
        {
            return;
        }
        if self
            .dfa
            .try_which_overlapping_matches(cache, &Input::new(hay), set)
            .is_err()
        {
            self.fallback
                .which_overlapping_matches(&Input::new(hay), set);
        }
    }

    fn pattern_len(&self) -> usize {
        self.dfa.pattern_len()
    }
}

/// Header and cookie values this rule set inspected and found clean: no pattern matched them
/// in any decoded form and decoding saw no anomaly. Browsers send the same user agent, accept
/// headers and cookies with every request, and inspecting them is most of the work on a
/// typical request; a value found here skips decoding and matching. Entries hold the whole
/// value (after its decoding context) and a hit compares it byte for byte, so only the very
/// bytes that were inspected can skip inspection: a colliding hash is a miss, never a false
/// "clean". Belongs to one rule set, so a reload starts empty.
struct CleanValues {
    memo: Memo<Box<[u8]>>,
    seed: u64,
}

const CLEAN_SHARDS: usize = 16;
const CLEAN_SLOTS_PER_SHARD: usize = 256;
/// Values shorter than this cost little to inspect; longer ones are rarely repeated.
const CLEAN_MIN_LEN: usize = 8;
const CLEAN_MAX_LEN: usize = 512;

impl CleanValues {
    fn new() -> CleanValues {
        use std::hash::BuildHasher;
        CleanValues {
            memo: Memo::new(CLEAN_SHARDS, CLEAN_SLOTS_PER_SHARD),
            seed: std::collections::hash_map::RandomState::new().hash_one(0u8),
        }
    }

    fn eligible(kind: PartKind, value: &[u8]) -> bool {
        matches!(kind, PartKind::Header | PartKind::CookieValue)
            && (CLEAN_MIN_LEN..=CLEAN_MAX_LEN).contains(&value.len())
    }

    /// A multiply-rotate hash over 8-byte words, seeded per rule set (SipHash costs ~350
    /// instructions per header value, more than the memory saves on short ones). A crafted
    /// collision only evicts an entry.
    fn hash(&self, ctx: Context, value: &[u8]) -> u64 {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.seed ^ ((value.len() as u64) << 8) ^ ctx as u64;
        let mut words = value.chunks_exact(8);
        for w in &mut words {
            let w = <[u8; 8]>::try_from(w).map_or(0, u64::from_le_bytes);
            h = (h.rotate_left(5) ^ w).wrapping_mul(K);
        }
        let tail = words
            .remainder()
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64);
        h = (h.rotate_left(5) ^ tail).wrapping_mul(K);
        h ^ (h >> 29)
    }

    fn contains(&self, ctx: Context, value: &[u8]) -> bool {
        self.memo
            .find(self.hash(ctx, value), |e| {
                (e.first() == Some(&(ctx as u8)) && e.get(1..) == Some(value)).then_some(())
            })
            .is_some()
    }

    fn insert(&self, ctx: Context, value: &[u8]) {
        let mut entry = Vec::with_capacity(value.len() + 1);
        entry.push(ctx as u8);
        entry.extend_from_slice(value);
        self.memo
            .put(self.hash(ctx, value), entry.into_boxed_slice());
    }
}

/// Every rule pack, compiled.
pub struct RuleSet {
    rules: Vec<Rule>,
    /// One engine over all patterns; pattern i belongs to rule `pattern_rule[i]`.
    engine: Option<Engine>,
    pattern_rule: Vec<usize>,
    /// The same patterns one by one, used only to locate a snippet once a rule has matched.
    singles: Vec<Regex>,
    /// Union of the kinds any pattern rule targets, to skip parts nothing looks at.
    kinds: u16,
    headers: Vec<String>,
    checks: Vec<(Check, usize)>,
    version: String,
    clean: CleanValues,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .field("patterns", &self.pattern_rule.len())
            .field("version", &self.version)
            .finish()
    }
}

fn severity_score(s: &str) -> Option<(u32, &'static str)> {
    Some(match s {
        "critical" => (5, "critical"),
        "high" | "error" => (4, "high"),
        "medium" | "warning" => (3, "medium"),
        "low" | "notice" => (2, "low"),
        "info" => (0, "info"),
        _ => return None,
    })
}

fn syntax_config() -> syntax::Config {
    // Byte-oriented, ASCII case-insensitive: values are matched after our own decoding, and
    // Unicode classes would make the automaton far larger for no gain.
    syntax::Config::new()
        .case_insensitive(true)
        .unicode(false)
        .utf8(false)
        .multi_line(false)
        .dot_matches_new_line(true)
}

fn build_engine(patterns: &[String]) -> Result<Engine, String> {
    let dfa = DFA::builder()
        .configure(
            DFA::config()
                .match_kind(MatchKind::All)
                .cache_capacity(32 << 20)
                .minimum_cache_clear_count(None),
        )
        .syntax(syntax_config())
        .thompson(
            regex_automata::nfa::thompson::Config::new()
                .shrink(true)
                .nfa_size_limit(Some(256 << 20)),
        )
        .build_many(patterns)
        .map_err(|e| e.to_string())?;
    let fallback = Regex::builder()
        .configure(
            meta::Config::new()
                .match_kind(MatchKind::All)
                .nfa_size_limit(Some(256 << 20)),
        )
        .syntax(syntax_config())
        .build_many(patterns)
        .map_err(|e| e.to_string())?;
    let for_pool = dfa.clone();
    let caches: CachePool = Pool::new(Box::new(move || for_pool.create_cache()));
    Ok(Engine {
        dfa,
        caches,
        fallback,
    })
}

fn single_regex(p: &str) -> Result<Regex, String> {
    Regex::builder()
        .syntax(syntax_config())
        .build(p)
        .map_err(|e| e.to_string())
}

/// The pack files under the given files/directories, sorted, `*.yaml` / `*.yml` only.
pub fn pack_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, RulesError> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| RulesError::Read {
                path: p.clone(),
                reason: e.to_string(),
            })?;
            let mut found: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

impl RuleSet {
    /// Load and compile every pack under `paths`. All problems are reported, not just the
    /// first; nothing is returned unless every pack is valid.
    pub fn load(paths: &[PathBuf]) -> Result<RuleSet, Vec<RulesError>> {
        let files = pack_files(paths).map_err(|e| vec![e])?;
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => sources.push((f, text)),
                Err(e) => errors.push(RulesError::Read {
                    path: f,
                    reason: e.to_string(),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if sources.is_empty() {
            return Err(vec![RulesError::Empty {
                paths: paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }]);
        }
        Self::from_sources(&sources)
    }

    /// Compile packs given as (path, YAML text).
    pub fn from_sources(sources: &[(PathBuf, String)]) -> Result<RuleSet, Vec<RulesError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        let mut patterns: Vec<String> = Vec::new();
        let mut pattern_rule = Vec::new();
        let mut singles = Vec::new();
        let mut seen: HashMap<String, PathBuf> = HashMap::new();
        let mut hash = Fnv::new();
        for (path, text) in sources {
            hash.write(
                path.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
            hash.write(text.as_bytes());
            let pack: PackFile = match serde_yaml::from_str(text) {
                Ok(p) => p,
                Err(e) => {
                    let at = e
                        .location()
                        .map(|l| format!("line {}: ", l.line()))
                        .unwrap_or_default();
                    errors.push(RulesError::Parse {
                        path: path.clone(),
                        reason: format!("{at}{e}"),
                    });
                    continue;
                }
            };
            let _ = pack.description;
            for rf in pack.rules {
                let bad = |reason: String| RulesError::Rule {
                    path: path.clone(),
                    rule: rf.id.clone(),
                    reason,
                };
                if rf.id.is_empty()
                    || !rf
                        .id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                {
                    errors.push(bad(
                        "id must be non-empty and use only letters, digits, '-', '_' and '.'"
                            .into(),
                    ));
                    continue;
                }
                if let Some(first) = seen.get(&rf.id) {
                    errors.push(bad(format!(
                        "duplicate id (first defined in {})",
                        first.display()
                    )));
                    continue;
                }
                seen.insert(rf.id.clone(), path.clone());
                if rf.category.is_empty() {
                    errors.push(bad("category must not be empty".into()));
                }
                let (score, severity) = match (&rf.severity, rf.score) {
                    (_, Some(s)) if s > 1000 => {
                        errors.push(bad(format!("score must be at most 1000, got {s}")));
                        continue;
                    }
                    (Some(sev), score) => {
                        match severity_score(sev) {
                            Some((def, name)) => (score.unwrap_or(def), name),
                            None => {
                                errors.push(bad(format!("severity must be critical, high, medium, low or info, got {sev:?}")));
                                continue;
                            }
                        }
                    }
                    (None, Some(s)) => (s, "custom"),
                    (None, None) => {
                        errors.push(bad("needs a severity or a score".into()));
                        continue;
                    }
                };
                let check = match &rf.check {
                    Some(c) => match Check::parse(c) {
                        Some(c) => Some(c),
                        None => {
                            errors.push(bad(format!("unknown check {c:?}")));
                            continue;
                        }
                    },
                    None => None,
                };
                if check.is_some() != rf.patterns.is_empty() {
                    errors.push(bad("needs either patterns or a check (not both)".into()));
                    continue;
                }
                let targets = match Targets::parse(&rf.targets) {
                    Ok(t) => t,
                    Err(e) => {
                        errors.push(bad(e));
                        continue;
                    }
                };
                if check.is_none() && targets == Targets::default() {
                    errors.push(bad("needs at least one target".into()));
                    continue;
                }
                let idx = rules.len();
                let mut ok = true;
                for (pi, p) in rf.patterns.iter().enumerate() {
                    match single_regex(p) {
                        Ok(r) => {
                            if r.is_match(b"") {
                                errors.push(bad(format!("pattern {pi} matches the empty string")));
                                ok = false;
                                continue;
                            }
                            singles.push(r);
                            patterns.push(p.clone());
                            pattern_rule.push(idx);
                        }
                        Err(e) => {
                            errors.push(bad(format!("pattern {pi} does not compile: {e}")));
                            ok = false;
                        }
                    }
                }
                if !ok {
                    continue;
                }
                rules.push(Rule {
                    id: rf.id,
                    category: rf.category,
                    score,
                    severity,
                    description: rf.description,
                    targets,
                    check,
                    source: path.clone(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let engine = if patterns.is_empty() {
            None
        } else {
            match build_engine(&patterns) {
                Ok(e) => Some(e),
                Err(reason) => return Err(vec![RulesError::Compile { reason }]),
            }
        };
        let mut kinds = 0;
        let mut headers = Vec::new();
        let mut checks = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            match r.check {
                Some(c) => checks.push((c, i)),
                None => {
                    kinds |= r.targets.kinds;
                    headers.extend(r.targets.headers.iter().cloned());
                }
            }
        }
        headers.sort();
        headers.dedup();
        Ok(RuleSet {
            rules,
            engine,
            pattern_rule,
            singles,
            kinds,
            headers,
            checks,
            version: hash.hex(),
            clean: CleanValues::new(),
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// A short hash of every pack's name and content: changes whenever any rule does.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn pattern_count(&self) -> usize {
        self.pattern_rule.len()
    }

    /// Rule counts per category, for `vigil check` and the startup log.
    pub fn categories(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in &self.rules {
            *m.entry(r.category.clone()).or_insert(0) += 1;
        }
        m
    }

    fn wants(&self, p: &Part<'_>) -> bool {
        self.kinds & p.kind.bit() != 0
            || (p.kind == PartKind::Header
                && self.headers.iter().any(|h| h.as_bytes() == p.name.as_ref()))
    }

    /// Inspect a whole request.
    pub fn inspect(&self, req: &HttpRequest, limits: &Inspection) -> RuleReport {
        let (parts, split_an) = request::split(req, limits.max_args);
        let mut report = RuleReport::default();
        let mut matched = vec![false; self.rules.len()];
        let mut anomalies = Anomalies::default();
        // One DFA cache for the whole request: taking it from the pool per search showed up at
        // ~20 searches per request.
        let mut matcher = self
            .engine
            .as_ref()
            .map(|e| (e, PatternSet::new(e.pattern_len()), e.caches.get()));
        let mut header_too_long = false;
        for part in &parts {
            if part.kind == PartKind::Header && part.value.len() > limits.max_header_value {
                header_too_long = true;
            }
            if part.value.is_empty() || !self.wants(part) {
                continue;
            }
            let ctx = match part.kind {
                PartKind::Path => Context::Path,
                PartKind::QueryName
                | PartKind::QueryValue
                | PartKind::BodyName
                | PartKind::BodyValue
                | PartKind::CookieValue => Context::Form,
                PartKind::BodyRaw
                    if req
                        .header("content-type")
                        .is_some_and(|c| c.starts_with(b"application/x-www-form-urlencoded")) =>
                {
                    Context::Form
                }
                _ => Context::Plain,
            };
            let memo = CleanValues::eligible(part.kind, &part.value);
            if memo && self.clean.contains(ctx, &part.value) {
                continue;
            }
            // The request line is matched raw only: its decoded content is covered by the path
            // and argument parts, and decoding it twice would double the cost.
            let forms = if part.kind == PartKind::RequestLine {
                None
            } else {
                Some(normalize::normalize(&part.value, ctx))
            };
            if let Some(f) = &forms {
                if part.kind != PartKind::Header || f.anomalies.null_byte {
                    anomalies.merge(f.anomalies);
                }
            }
            let Some((engine, set, cache)) = matcher.as_mut() else {
                continue;
            };
            // Clearing walks every pattern's slot: only worth it after a part that matched.
            if !set.is_empty() {
                set.clear();
            }
            let raw: &[u8] = &part.value;
            engine.which(cache, raw, set);
            if let Some(f) = &forms {
                for form in f.extra(raw) {
                    engine.which(cache, form, set);
                }
            }
            if set.is_empty() {
                if memo
                    && forms
                        .as_ref()
                        .is_some_and(|f| f.anomalies == Anomalies::default())
                {
                    self.clean.insert(ctx, &part.value);
                }
                continue;
            }
            for pid in set.iter() {
                let ri = self.pattern_rule[pid.as_usize()];
                if matched[ri] || !self.rules[ri].targets.applies(part.kind, &part.name) {
                    continue;
                }
                matched[ri] = true;
                let single = &self.singles[pid.as_usize()];
                let snippet = std::iter::once(raw)
                    .chain(forms.iter().flat_map(|f| f.extra(raw)))
                    .find_map(|form| single.find(form).map(|m| snippet(form, m.start(), m.end())))
                    .unwrap_or_default();
                report.matches.push(self.make_match(ri, part, snippet));
            }
        }
        let line_len = req.method.len() + req.target.len() + req.version.len() + 2;
        for &(check, ri) in &self.checks {
            let hit = match check {
                Check::NullByte => anomalies.null_byte,
                Check::InvalidEncoding => anomalies.invalid_percent,
                Check::MultipleEncoding => anomalies.multiple_encoding,
                Check::OverlongUtf8 => anomalies.overlong_utf8,
                Check::TooManyArgs => split_an.too_many_args,
                Check::MalformedBody => split_an.malformed_body,
                Check::RequestLineTooLong => line_len > limits.max_request_line,
                Check::HeaderTooLong => header_too_long,
                Check::BodyOverLimit => req.body_truncated,
                Check::NonAsciiRequestLine => req.target.iter().any(|b| !(0x21..0x7f).contains(b)),
                Check::UnusualMethod => !matches!(
                    req.method.as_str(),
                    "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
                ),
            };
            if hit {
                let rule = &self.rules[ri];
                report.matches.push(RuleMatch {
                    id: rule.id.clone(),
                    category: rule.category.clone(),
                    score: rule.score,
                    severity: rule.severity,
                    field: "request".into(),
                    parameter: None,
                    snippet: String::new(),
                });
            }
        }
        report
    }

    fn make_match(&self, ri: usize, part: &Part<'_>, snippet: String) -> RuleMatch {
        let rule = &self.rules[ri];
        let name = String::from_utf8_lossy(&part.name);
        let field = if name.is_empty() {
            part.kind.as_str().to_string()
        } else {
            format!(
                "{}:{}",
                part.kind.as_str(),
                crate::record::escape_nginx(name.as_bytes())
            )
        };
        RuleMatch {
            id: rule.id.clone(),
            category: rule.category.clone(),
            score: rule.score,
            severity: rule.severity,
            field,
            parameter: (part.kind.is_parameter() && !name.is_empty()).then(|| name.into_owned()),
            snippet,
        }
    }
}

/// Up to 40 bytes of the match with a little context, escaped like a log field.
fn snippet(h: &[u8], start: usize, end: usize) -> String {
    let from = start.saturating_sub(10);
    let to = end.min(start + 40).max(start).min(h.len());
    let mut s = String::new();
    if from > 0 {
        s.push_str("...");
    }
    crate::record::escape_nginx_into(&mut s, &h[from..to]);
    if to < h.len() {
        s.push_str("...");
    }
    s
}

/// FNV-1a, for a stable version string of the packs (not for security).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf29ce484222325)
    }
    fn write(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
    fn hex(&self) -> String {
        let mut s = String::with_capacity(16);
        let _ = write!(s, "{:016x}", self.0);
        s
    }
}

/// Where a rule pack error came from, for messages that name a path.
pub fn describe(errors: &[RulesError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn ok<T: Send + Sync>() {}
    ok::<RuleSet>();
}

impl Rule {
    pub fn source(&self) -> &Path {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(yaml: &str) -> Result<RuleSet, Vec<RulesError>> {
        RuleSet::from_sources(&[(PathBuf::from("test.yaml"), yaml.to_string())])
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

    fn get(target: &str) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            target: target.as_bytes().to_vec(),
            version: "HTTP/1.1".into(),
            headers: vec![("user-agent".into(), b"sqlmap/1.7".to_vec())],
            ..Default::default()
        }
    }

    const PACK: &str = r#"
rules:
  - id: t-union
    category: sqli
    severity: critical
    targets: [args]
    patterns: ['\bunion\s+select\b']
  - id: t-ua
    category: scanner
    severity: high
    targets: [user_agent]
    patterns: ['sqlmap']
  - id: t-null
    category: protocol
    severity: low
    check: null_byte
"#;

    #[test]
    fn reports_every_rule_with_field_and_snippet() {
        let rs = set(PACK).unwrap();
        let r = rs.inspect(
            &get("/p?id=1%2527%2520UNION%2F**%2FSELECT%2520pw%00"),
            &limits(),
        );
        let ids: Vec<_> = r.matches.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, vec!["t-union", "t-ua", "t-null"]);
        assert_eq!(r.matches[0].field, "query:id");
        assert_eq!(r.matches[0].parameter.as_deref(), Some("id"));
        assert!(
            r.matches[0].snippet.contains("union select"),
            "{}",
            r.matches[0].snippet
        );
        assert_eq!(r.score(), 5 + 4 + 2);
    }

    #[test]
    fn remembered_clean_values_never_hide_a_match() {
        let pack = r#"
rules:
  - id: t-union
    category: sqli
    severity: critical
    targets: [headers, cookies]
    patterns: ['\bunion\s+select\b']
"#;
        let rs = set(pack).unwrap();
        let with = |name: &str, value: &str| {
            let mut r = get("/");
            r.headers = vec![(name.into(), value.as_bytes().to_vec())];
            rs.inspect(&r, &limits()).matches.len()
        };
        let clean = "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0";
        let attack = "Mozilla/5.0 union select pw from users";
        let encoded = "Mozilla/5.0 union%20select pw from users";
        for _ in 0..3 {
            assert_eq!(with("user-agent", clean), 0);
            assert_eq!(with("user-agent", attack), 1);
            // Only a value with no decoded form that matches is remembered.
            assert_eq!(with("x-custom", encoded), 1);
            assert_eq!(with("cookie", &format!("a={encoded}")), 1);
        }
        // Remembered under one header, the same bytes elsewhere are still judged by their own
        // content, which is clean.
        assert_eq!(with("referer", clean), 0);
        assert!(rs.clean.contains(Context::Plain, clean.as_bytes()));
        assert!(!rs.clean.contains(Context::Plain, attack.as_bytes()));
        assert!(!rs.clean.contains(Context::Form, clean.as_bytes()));
    }

    #[test]
    fn targets_are_respected() {
        let rs = set(PACK).unwrap();
        let mut req = get("/union%20select");
        req.headers.clear();
        assert!(rs.inspect(&req, &limits()).matches.is_empty());
    }

    #[test]
    fn invalid_packs_name_file_rule_and_reason() {
        let errs = set("rules:\n  - {id: a, category: x, severity: high, targets: [args], patterns: ['(']}\n  - {id: b, category: x, severity: huge, targets: [args], patterns: ['x']}\n  - {id: c, category: x, severity: low, targets: [nowhere], patterns: ['x']}\n").unwrap_err();
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(
            msgs[0].starts_with("test.yaml: rule a: pattern 0 does not compile"),
            "{msgs:?}"
        );
        assert!(msgs[1].contains("rule b: severity must be"), "{msgs:?}");
        assert!(
            msgs[2].contains("rule c: unknown target \"nowhere\""),
            "{msgs:?}"
        );
        let errs = set("rules: [{id: a, category: x, severity: high, targets: [args], patterns: ['x']}, {id: a, category: x, severity: high, targets: [args], patterns: ['y']}]").unwrap_err();
        assert!(errs[0].to_string().contains("duplicate id"));
    }
}
