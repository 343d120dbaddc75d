//! Established clients are judged against their own normal: a model set trained by `vigil
//! train` on a log in which a partner integration syncs all day gives that client its own,
//! higher forest thresholds, and the proxy applies them to it and to no one else.

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

/// The raw thresholds the two forests judged one stock update from `client` by.
fn stock_update(v: &Vigil, client: &str, n: u32) -> [f64; 2] {
    let id = format!("c-{}", request_id());
    let r = send(
        v.addr,
        &format!(
            "PUT /api/v1/products/{n}/stock HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: {ERP_UA}\r\nX-Forwarded-For: {client}\r\nX-Request-Id: {id}\r\nX-Test-Status: 200\r\nX-Test-Bytes: 96\r\nContent-Type: application/json\r\nContent-Length: 10\r\nConnection: close\r\n\r\n{{\"qty\": 7}}"
        ),
    );
    assert_eq!(r.status, 200, "only the forests judge here, and they tag");
    let d = v.decision(&id);
    let threshold = |stage: &str, name: &str| {
        d[stage]["detectors"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["detector"] == name))
            .and_then(|x| x["raw_threshold"].as_f64())
            .unwrap_or_else(|| panic!("no {name} threshold in {d}"))
    };
    [
        threshold("pre", "forest_pre"),
        threshold("post", "forest_post"),
    ]
}

/// The site's and the ERP's own raw thresholds in a forest file.
fn thresholds(file: &std::path::Path) -> (f64, f64) {
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("forest file")).expect("json");
    let site = f["threshold"].as_f64().expect("threshold");
    let own = f["own"][vigil::session::key_hash(ERP).to_string()]
        .as_f64()
        .unwrap_or_else(|| {
            panic!(
                "{}: the ERP has no threshold of its own: {}",
                file.display(),
                f["own"]
            )
        });
    assert!(own > site, "own {own}, site {site}");
    assert_eq!(
        f["own"].as_object().map(|o| o.len()),
        Some(1),
        "only the ERP is established and odd"
    );
    (site, own)
}

#[test]
fn an_established_client_is_judged_against_its_own_threshold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("train.log");
    std::fs::write(&log, training_log()).expect("write log");
    let models = dir.path().join("models");
    train_models(&models, &log);
    let (pre_site, pre_own) = thresholds(&models.join("forest_pre.json"));
    let (post_site, post_own) = thresholds(&models.join("forest_post.json"));

    let up = Upstream::start();
    let v = Setup::new(up.addr)
        .policy("policy:\n  mode: tag\n")
        .learning(&format!(
            "models:\n  dir: {}\nescalation:\n  enabled: false\n",
            models.display()
        ))
        .start_with_trusted();
    // A cold session's first updates, sent back to back, are far from the ERP's training
    // (its runs always followed earlier ones) and score above both thresholds (raw ~1.1 when
    // written), so the votes agree: what is asserted is which threshold judges each client.
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    for n in 0..5 {
        let [pre, post] = stock_update(&v, ERP, 5000 + n);
        assert!(
            close(pre, pre_own) && close(post, post_own),
            "the ERP is judged by {pre} / {post}"
        );
        let [pre, post] = stock_update(&v, STRANGER, 6000 + n);
        assert!(
            close(pre, pre_site) && close(post, post_site),
            "a stranger is judged by {pre} / {post}"
        );
    }
}
