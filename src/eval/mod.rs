//! Offline evaluation of the rule engine on labelled corpora: attack/benign payload JSONL,
//! CRS regression tests as JSONL, combined-format access logs (benign) and query-string
//! lists (benign). Prints detection per category and false-positive rates. Reads files; not
//! used by the proxy.

pub mod traffic;

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;

use crate::config::Inspection;
use crate::detectors::rules::RuleSet;
use crate::record::Record;
use crate::request::HttpRequest;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
}

/// One labelled request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Which corpus it came from (`payloads`, `crs`, `access_log`, `benign_params`).
    pub corpus: &'static str,
    pub category: String,
    pub attack: bool,
    pub id: String,
    pub req: HttpRequest,
}

fn read(path: &Path) -> Result<String, EvalError> {
    std::fs::read_to_string(path).map_err(|e| EvalError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Percent-encode as a browser's `encodeURIComponent` does.
pub fn encode_component(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 3);
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

fn get(target: String, headers: Vec<(String, Vec<u8>)>) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        target: target.into_bytes(),
        version: "HTTP/1.1".into(),
        headers,
        body: Vec::new(),
        body_truncated: false,
    }
}

fn browser_headers() -> Vec<(String, Vec<u8>)> {
    vec![
        ("host".into(), b"shop.example.com".to_vec()),
        ("user-agent".into(), b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36".to_vec()),
        ("accept".into(), b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8".to_vec()),
    ]
}

#[derive(Deserialize)]
struct PayloadRow {
    id: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    payload_b64: Option<String>,
    encoding: String,
    category: String,
    label: String,
}

/// Payload JSONL: each payload is sent the way a client would send it in a query argument.
pub fn load_payloads(path: &Path) -> Result<Vec<Sample>, EvalError> {
    let text = read(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| EvalError::Line {
            path: path.display().to_string(),
            line: i + 1,
            reason,
        };
        let row: PayloadRow = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let bytes = match &row.payload_b64 {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| bad(format!("payload_b64: {e}")))?,
            None => row.payload.clone().into_bytes(),
        };
        let target = match row.encoding.as_str() {
            "raw" => format!("/search?q={}", encode_component(&bytes)),
            "urlencoded" => format!("/search?q={}", String::from_utf8_lossy(&bytes)),
            "query" => format!("/search?{}", String::from_utf8_lossy(&bytes)),
            other => return Err(bad(format!("unknown encoding {other:?}"))),
        };
        // A raw request target cannot carry spaces or control bytes: encode those as a
        // client library would.
        let target = sanitize_target(&target);
        out.push(Sample {
            corpus: "payloads",
            category: row.category,
            attack: row.label == "attack",
            id: row.id,
            req: get(target, browser_headers()),
        });
    }
    Ok(out)
}

fn sanitize_target(t: &str) -> String {
    let mut s = String::with_capacity(t.len());
    for c in t.bytes() {
        if c <= 0x20
            || c >= 0x7f
            || c == b'"'
            || c == b'<'
            || c == b'>'
            || c == b'`'
            || c == b'{'
            || c == b'}'
            || c == b'|'
            || c == b'\\'
            || c == b'^'
        {
            s.push_str(&format!("%{c:02X}"));
        } else {
            s.push(c as char);
        }
    }
    s
}

#[derive(Deserialize)]
struct CrsRow {
    id: String,
    category: String,
    #[serde(default)]
    rule_pl: Option<u8>,
    method: String,
    uri: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    expect_attack: Option<bool>,
    #[serde(default)]
    response_rule: Option<bool>,
}

/// CRS regression tests: only the rows that must be detected at paranoia level 1 are
/// attacks; the rest are skipped (see the corpora README for why they are not benign).
pub fn load_crs(path: &Path) -> Result<Vec<Sample>, EvalError> {
    let text = read(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: CrsRow = serde_json::from_str(line).map_err(|e| EvalError::Line {
            path: path.display().to_string(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        if row.expect_attack != Some(true)
            || row.rule_pl != Some(1)
            || row.response_rule == Some(true)
        {
            continue;
        }
        let headers = row
            .headers
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.to_ascii_lowercase(), v.into_bytes())
            })
            .collect();
        out.push(Sample {
            corpus: "crs",
            category: row.category,
            attack: true,
            id: row.id,
            req: HttpRequest {
                method: row.method,
                target: row.uri.into_bytes(),
                version: row.version.unwrap_or_else(|| "HTTP/1.1".into()),
                headers,
                body: row.body.unwrap_or_default().into_bytes(),
                body_truncated: false,
            },
        });
    }
    Ok(out)
}

/// A combined-format log as benign traffic (lines that do not parse are reported).
pub fn load_access_log(path: &Path) -> Result<(Vec<Sample>, Vec<String>), EvalError> {
    let text = read(path)?;
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match Record::parse_line(line, i + 1) {
            Ok(r) => out.push(Sample {
                corpus: "access_log",
                category: "access_log".into(),
                attack: false,
                id: format!("line {}", i + 1),
                req: request_from_record(&r),
            }),
            Err(e) => bad.push(e.to_string()),
        }
    }
    Ok((out, bad))
}

/// The request a log record describes, with the headers the log kept.
pub fn request_from_record(r: &Record) -> HttpRequest {
    let (method, target, version) = r.request_parts();
    let mut headers = vec![("host".to_string(), b"localhost".to_vec())];
    if let Some(ua) = &r.user_agent {
        headers.push(("user-agent".into(), ua.clone()));
    }
    if let Some(rf) = &r.referer {
        headers.push(("referer".into(), rf.clone()));
    }
    HttpRequest {
        method,
        target: target.into_bytes(),
        version: if version.is_empty() {
            "HTTP/1.0".into()
        } else {
            version
        },
        headers,
        body: Vec::new(),
        body_truncated: false,
    }
}

/// One query string (or form body) per line, benign.
pub fn load_benign_params(path: &Path) -> Result<Vec<Sample>, EvalError> {
    let text = read(path)?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Sample {
            corpus: "benign_params",
            category: "benign_params".into(),
            attack: false,
            id: format!("line {}", i + 1),
            req: get(
                format!("/collect?{}", sanitize_target(l.trim())),
                browser_headers(),
            ),
        })
        .collect())
}

/// Counts for one (corpus, category) cell.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub total: usize,
    pub flagged: usize,
}

impl Cell {
    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.flagged as f64 / self.total as f64
        }
    }
}

/// What `vigil eval` reports.
#[derive(Debug, Default)]
pub struct EvalReport {
    /// (corpus, attack?, category) -> counts.
    pub cells: BTreeMap<(String, bool, String), Cell>,
    /// Examples of misses (attacks not flagged) and false positives, with matched rules.
    pub misses: Vec<(String, String, String)>,
    pub false_positives: Vec<(String, String, String)>,
}

impl EvalReport {
    pub fn overall(&self, corpus: &str, attack: bool) -> Cell {
        let mut c = Cell::default();
        for ((co, a, _), cell) in &self.cells {
            if co == corpus && *a == attack {
                c.total += cell.total;
                c.flagged += cell.flagged;
            }
        }
        c
    }
}

/// Score every sample; a sample is flagged when its rule score reaches `threshold`.
pub fn evaluate(
    rules: &RuleSet,
    limits: &Inspection,
    samples: &[Sample],
    threshold: u32,
) -> EvalReport {
    let mut rep = EvalReport::default();
    for s in samples {
        let report = rules.inspect(&s.req, limits);
        let flagged = report.score() >= threshold;
        let cell = rep
            .cells
            .entry((s.corpus.to_string(), s.attack, s.category.clone()))
            .or_default();
        cell.total += 1;
        cell.flagged += flagged as usize;
        let target = String::from_utf8_lossy(&s.req.target).into_owned();
        if s.attack && !flagged {
            let ids: Vec<_> = report.matches.iter().map(|m| m.id.clone()).collect();
            rep.misses.push((s.category.clone(), target, ids.join(",")));
        } else if !s.attack && flagged {
            let ids: Vec<_> = report
                .matches
                .iter()
                .map(|m| format!("{}@{}", m.id, m.field))
                .collect();
            rep.false_positives
                .push((s.category.clone(), target, ids.join(",")));
        }
    }
    rep
}
