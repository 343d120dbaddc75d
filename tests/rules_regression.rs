//! Detection floors on the small, fixed samples of the development corpora committed under
//! `tests/data` (drawn by `tests/data/sample_corpora.py`): a rule or decoder change that loses
//! a class of attacks, or starts flagging ordinary traffic, fails here before it reaches the
//! full `vigil eval`. The floors sit a little below the current rates so that noise-free
//! improvements never fail, while a real regression does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use vigil::config::Config;
use vigil::detectors::rules::RuleSet;
use vigil::eval;

#[test]
fn sampled_corpora_stay_above_their_floors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = root.join("tests/data");
    let cfg = Config::load(&root.join("config.yaml")).expect("shipped config");
    let rules = RuleSet::load(&[PathBuf::from(root.join("rules"))]).expect("shipped rules");

    let mut samples = eval::load_payloads(&data.join("payloads.sample.jsonl")).unwrap();
    let (log, bad) = eval::load_access_log(&data.join("access_log.sample.log")).unwrap();
    assert!(bad.is_empty(), "unparsable sample log lines: {bad:?}");
    samples.extend(log);
    samples.extend(eval::load_benign_params(&data.join("benign_params.sample.txt")).unwrap());
    let rep = eval::evaluate(&rules, &cfg.inspection, &samples, cfg.policy.threshold);

    let mut problems = Vec::new();
    let mut floor = |what: String, rate: f64, min: f64| {
        if rate < min {
            problems.push(format!("{what}: {:.2}% is below the floor of {min}%", rate));
        }
    };
    floor(
        "attack payloads detected".into(),
        rep.overall("payloads", true).rate() * 100.0,
        95.0,
    );
    for (category, min) in [("sqli", 96.0), ("xss", 95.0), ("lfi", 96.0), ("rce", 94.0)] {
        let cell = rep
            .cells
            .get(&("payloads".to_string(), true, category.to_string()))
            .cloned()
            .unwrap_or_default();
        floor(
            format!("{category} payloads detected"),
            cell.rate() * 100.0,
            min,
        );
    }
    let mut ceiling = |what: &str, rate: f64, max: f64| {
        if rate > max {
            problems.push(format!(
                "{what}: {:.2}% is above the ceiling of {max}%",
                rate
            ));
        }
    };
    ceiling(
        "benign payloads flagged",
        rep.overall("payloads", false).rate() * 100.0,
        2.5,
    );
    ceiling(
        "access-log requests flagged",
        rep.overall("access_log", false).rate() * 100.0,
        0.2,
    );
    ceiling(
        "benign query strings flagged",
        rep.overall("benign_params", false).rate() * 100.0,
        0.5,
    );
    assert!(
        problems.is_empty(),
        "{}\nfalse positives: {:#?}",
        problems.join("\n"),
        rep.false_positives
    );
}
