//! Detection floors of the shipped rule packs on small committed samples of the development
//! corpora (`tests/data/*.sample.*`, drawn by `tests/data/sample_corpora.py`). A rule change
//! that loses detection in a category, or starts flagging ordinary traffic, fails here; the
//! full corpora are evaluated by `.ci/run` when `../shared/corpora` is present.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use vigil::config::Config;
use vigil::detectors::rules::RuleSet;
use vigil::eval::{self, EvalReport};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn report() -> EvalReport {
    let cfg = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml")).unwrap();
    let rules = RuleSet::load(&cfg.rules.paths).unwrap();
    let mut samples = eval::load_payloads(&data("payloads.sample.jsonl")).unwrap();
    let (log, bad) = eval::load_access_log(&data("access_log.sample.log")).unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    samples.extend(log);
    samples.extend(eval::load_benign_params(&data("benign_params.sample.txt")).unwrap());
    eval::evaluate(&rules, &cfg.inspection, &samples, cfg.policy.threshold)
}

fn rate(rep: &EvalReport, corpus: &str, attack: bool, category: &str) -> f64 {
    let cell = rep
        .cells
        .get(&(corpus.to_string(), attack, category.to_string()))
        .unwrap_or_else(|| panic!("no {corpus}/{category} rows in the sample"));
    assert!(cell.total > 0);
    cell.rate() * 100.0
}

#[test]
fn detection_floors_and_false_positive_ceilings() {
    let rep = report();
    let mut failures = Vec::new();
    // Floors sit a little under what the packs reach on these samples, so that a real loss
    // fails while sampling noise does not.
    for (category, floor) in [
        ("sqli", 97.0),
        ("xss", 96.0),
        ("lfi", 96.0),
        ("rce", 94.0),
        ("log4shell", 95.0),
        ("ssti", 90.0),
        ("shellshock", 90.0),
    ] {
        let r = rate(&rep, "payloads", true, category);
        if r < floor {
            failures.push(format!("{category}: {r:.1}% detected, floor {floor}%"));
        }
    }
    let overall = rep.overall("payloads", true).rate() * 100.0;
    if overall < 94.0 {
        failures.push(format!(
            "attacks overall: {overall:.1}% detected, floor 94%"
        ));
    }
    for (corpus, ceiling) in [
        ("access_log", 0.3),
        ("benign_params", 0.5),
        ("payloads", 3.0),
    ] {
        let r = rep.overall(corpus, false).rate() * 100.0;
        if r > ceiling {
            failures.push(format!(
                "{corpus}: {r:.2}% of benign inputs flagged, ceiling {ceiling}%"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
