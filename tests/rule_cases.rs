//! Data-driven rule cases: every request in `tests/rule_cases.yaml` is inspected with the
//! shipped rule packs and the shipped config's threshold and limits, and must be judged as the
//! file says. All failures are reported together, each with the rules that did match.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use vigil::config::Config;
use vigil::detectors::rules::RuleSet;
use vigil::request::HttpRequest;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    method: Option<String>,
    target: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    attack: bool,
    #[serde(default)]
    rules: Vec<String>,
}

const BROWSER_UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

impl Case {
    fn request(&self) -> HttpRequest {
        let mut headers: Vec<(String, Vec<u8>)> = vec![("host".into(), b"shop.example".to_vec())];
        if !self.headers.contains_key("user-agent") {
            headers.push(("user-agent".into(), BROWSER_UA.as_bytes().to_vec()));
        }
        for (k, v) in &self.headers {
            headers.push((k.to_ascii_lowercase(), v.as_bytes().to_vec()));
        }
        HttpRequest {
            method: self.method.clone().unwrap_or_else(|| "GET".into()),
            target: self.target.as_bytes().to_vec(),
            version: "HTTP/1.1".into(),
            headers,
            body: self.body.clone().unwrap_or_default().into_bytes(),
            body_truncated: false,
        }
    }
}

#[test]
fn shipped_rules_judge_every_case_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = Config::load(&root.join("config.yaml")).expect("shipped config");
    let rules = RuleSet::load(&[root.join("rules")]).expect("shipped rules");
    let text = std::fs::read_to_string(root.join("tests/rule_cases.yaml")).unwrap();
    let file: CaseFile = serde_yaml::from_str(&text).expect("tests/rule_cases.yaml parses");
    assert!(file.cases.len() > 50, "the case file looks truncated");

    let known: std::collections::HashSet<&str> =
        rules.rules().iter().map(|r| r.id.as_str()).collect();
    let mut failures = Vec::new();
    for case in &file.cases {
        for id in &case.rules {
            if !known.contains(id.as_str()) {
                failures.push(format!("{}: names unknown rule {id}", case.name));
            }
        }
        let report = rules.inspect(&case.request(), &cfg.inspection);
        let score = report.score();
        let matched: Vec<String> = report
            .matches
            .iter()
            .map(|m| format!("{}@{}", m.id, m.field))
            .collect();
        if (score >= cfg.policy.threshold) != case.attack {
            failures.push(format!(
                "{}: expected {}, score {score} (threshold {}), matched [{}]",
                case.name,
                if case.attack { "an attack" } else { "benign" },
                cfg.policy.threshold,
                matched.join(", ")
            ));
        }
        for id in &case.rules {
            if !report.matches.iter().any(|m| &m.id == id) {
                failures.push(format!(
                    "{}: rule {id} did not match, matched [{}]",
                    case.name,
                    matched.join(", ")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rule cases failed:\n  {}",
        failures.len(),
        file.cases.len(),
        failures.join("\n  ")
    );
}
