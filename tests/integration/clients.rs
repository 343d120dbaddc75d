//! Established clients are judged against their own normal: a model set trained by `vigil
//! train` on a log in which a partner integration syncs all day gives that client feature
//! bounds of its own (`forest::Established`), and the proxy applies them to it and to no one
//! else.

use crate::harness::{repo, request_id, send, train_models, Setup, Upstream, Vigil};

const ERP: &str = "198.51.100.50";
const STRANGER: &str = "203.0.113.80";
const ERP_UA: &str = "erp-sync/2.1";

/// The committed sample log plus an ERP that pushes 10 stock updates, one a second, every
/// half hour of a day (480 requests: established, and unlike anyone else in the log).
fn training_log() -> String {
    let mut log = std::fs::read_to_string(repo().join("tests/data/access_log.sample.log"))
        .expect("sample log");
    for run in 0..48 {
        let (h, m) = (run / 2, (run % 2) * 30);
        for k in 0..10 {
            log += &format!(
                "{ERP} - - [18/May/2015:{h:02}:{m:02}:{k:02} +0000] \"PUT /api/v1/products/{}/stock HTTP/1.1\" 200 96 \"-\" \"{ERP_UA}\"\n",
                1000 + run * 10 + k
            );
        }
    }
    log
}

/// The two forests' raw scores and raw thresholds for one stock update from `client`.
fn stock_update(v: &Vigil, client: &str, n: u32) -> [(f64, f64); 2] {
    let id = format!("c-{}", request_id());
    let r = send(
        v.addr,
        &format!(
            "PUT /api/v1/products/{n}/stock HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: {ERP_UA}\r\nX-Forwarded-For: {client}\r\nX-Request-Id: {id}\r\nX-Test-Status: 200\r\nX-Test-Bytes: 96\r\nContent-Type: application/json\r\nContent-Length: 10\r\nConnection: close\r\n\r\n{{\"qty\": 7}}"
        ),
    );
    assert_eq!(r.status, 200, "only the forests judge here, and they tag");
    let d = v.decision(&id);
    let judged = |stage: &str, name: &str| {
        let x = d[stage]["detectors"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["detector"] == name))
            .unwrap_or_else(|| panic!("no {name} in {d}"));
        match (x["raw"].as_f64(), x["raw_threshold"].as_f64()) {
            (Some(raw), Some(t)) => (raw, t),
            _ => panic!("no {name} score in {d}"),
        }
    };
    [judged("pre", "forest_pre"), judged("post", "forest_post")]
}

/// The site's raw threshold in a forest file, after checking that the ERP has feature bounds
/// of its own there (its routine: runs of stock updates) and the stranger none.
fn site_threshold(file: &std::path::Path) -> f64 {
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("forest file")).expect("json");
    let routine = &f["routine"];
    assert!(
        routine[vigil::session::key_hash(ERP).to_string()].is_array(),
        "{}: the ERP has no bounds of its own: {routine}",
        file.display()
    );
    assert!(routine[vigil::session::key_hash(STRANGER).to_string()].is_null());
    f["threshold"].as_f64().expect("threshold")
}

#[test]
fn an_established_client_is_judged_against_its_own_routine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("train.log");
    std::fs::write(&log, training_log()).expect("write log");
    let models = dir.path().join("models");
    train_models(&models, &log);
    let sites = [
        site_threshold(&models.join("forest_pre.json")),
        site_threshold(&models.join("forest_post.json")),
    ];

    let up = Upstream::start();
    let v = Setup::new(up.addr)
        .policy("policy:\n  mode: tag\n")
        .learning(&format!(
            "models:\n  dir: {}\nescalation:\n  enabled: false\n",
            models.display()
        ))
        .start_with_trusted();
    // The same updates, back to back, from the ERP and from a stranger: the same features but
    // for the moments they arrive. On this site hardly anyone sends a PUT, and no one else
    // runs of them, so for the stranger they lie beyond the site's feature bounds; for the
    // ERP they are within its own. Both are judged by the site's thresholds: its runs are
    // odd for the site only in what its bounds now cover.
    for n in 0..5 {
        let erp = stock_update(&v, ERP, 5000 + n);
        let stranger = stock_update(&v, STRANGER, 6000 + n);
        for ((e, s), site) in erp.iter().zip(&stranger).zip(sites) {
            assert!(
                (e.1 - site).abs() < 1e-9 && (s.1 - site).abs() < 1e-9,
                "judged by {} / {}, the site's is {site}",
                e.1,
                s.1
            );
            assert!(
                s.0 > e.0 + 0.5,
                "update {n}: the stranger scores {}, the ERP {}",
                s.0,
                e.0
            );
        }
    }
}
