//! Modes (off, detect, tag, block), per-route policy, allowlist, exclusions and the
//! stripping of client-supplied verdict headers.

use crate::harness::{send, Setup, Upstream};

const XSS: &str = "/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E";
const SQLI: &str = "/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--";

#[test]
fn block_mode_answers_403_with_the_request_id_and_upstream_never_sees_it() {
    let up = Upstream::start();
    let v = Setup::new(up.addr).start();
    let r = send(
        v.addr,
        &format!(
            "GET {SQLI} HTTP/1.1\r\nHost: a\r\nX-Request-Id: blk-1\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 403);
    assert!(
        r.text().contains("blk-1"),
        "the block page carries the request id: {}",
        r.text()
    );
    assert_eq!(r.header("x-request-id"), Some("blk-1"));
    assert_eq!(
        up.count(),
        0,
        "a blocked request never reaches the upstream"
    );
    // A clean request still goes through.
    assert_eq!(v.get("/search?q=running+shoes").status, 200);
    assert_eq!(up.count(), 1);
}

#[test]
fn block_status_is_configurable() {
    let up = Upstream::start();
    let v = Setup::new(up.addr)
        .policy("policy:\n  mode: block\n  block_status: 406\n")
        .start();
    assert_eq!(v.get(XSS).status, 406);
}

#[test]
fn detect_mode_passes_and_logs() {
    let up = Upstream::start();
    let v = Setup::new(up.addr)
        .policy("policy:\n  mode: detect\n")
        .start();
    let r = v.get(XSS);
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1);
    assert!(
        up.last().header("x-vigil-verdict").is_none(),
        "detect mode adds no headers"
    );
    let d = &v.decisions(1)[0];
    assert_eq!(d["action"], "log");
    assert_eq!(d["attack"], true);
}

#[test]
fn tag_mode_adds_verdict_headers_upstream_and_optionally_downstream() {
    let up = Upstream::start();
    let v = Setup::new(up.addr)
        .policy("policy:\n  mode: tag\n  tag_response: true\n")
        .start();
    let r = v.get(XSS);
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-vigil-verdict"), Some("attack"));
    let score: u32 = seen
        .header("x-vigil-score")
        .and_then(|s| s.parse().ok())
        .expect("score header");
    assert!(score >= 5);
    assert!(
        seen.header("x-vigil-rules")
            .is_some_and(|r| r.contains("xss-script-tag")),
        "{:?}",
        seen.header("x-vigil-rules")
    );
    assert_eq!(
        r.header("x-vigil-verdict"),
        Some("attack"),
        "tag_response copies the verdict to the response"
    );
    v.get("/search?q=shoes");
    assert_eq!(up.last().header("x-vigil-verdict"), Some("pass"));
    assert_eq!(up.last().header("x-vigil-score"), Some("0"));
}

#[test]
fn off_mode_inspects_nothing() {
    let up = Upstream::start();
    let v = Setup::new(up.addr).policy("policy:\n  mode: off\n").start();
    assert_eq!(v.get(SQLI).status, 200);
    let d = &v.decisions(1)[0];
    assert_eq!(d["mode"], "off");
    assert_eq!(d["action"], "allow");
    assert!(d["matches"].is_null());
}

#[test]
fn spoofed_verdict_headers_are_stripped_in_every_mode() {
    let up = Upstream::start();
    for mode in ["off", "detect", "tag", "block"] {
        let v = Setup::new(up.addr)
            .policy(&format!("policy:\n  mode: {mode}\n"))
            .start();
        let r = send(v.addr, "GET /clean HTTP/1.1\r\nHost: a\r\nX-Vigil-Verdict: pass\r\nx-vigil-score: 0\r\nX-VIGIL-RULES: none\r\nX-Vigil-Anything: 1\r\nConnection: close\r\n\r\n");
        assert_eq!(r.status, 200);
        let seen = up.last();
        let vigil_headers: Vec<_> = seen
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-vigil-"))
            .collect();
        if mode == "tag" {
            assert_eq!(seen.header("x-vigil-verdict"), Some("pass"));
            assert_eq!(
                seen.header("x-vigil-rules"),
                Some(""),
                "{mode}: client value replaced"
            );
            assert!(seen.header("x-vigil-anything").is_none());
        } else {
            assert!(vigil_headers.is_empty(), "{mode}: {vigil_headers:?}");
        }
    }
}

#[test]
fn per_route_policy_overrides_mode_and_threshold() {
    let up = Upstream::start();
    let v = Setup::new(up.addr)
        .policy("policy:\n  mode: block\n  routes:\n    - {path_prefix: /legacy, mode: detect}\n    - {host: lab.local, threshold: 100}\n    - {path_prefix: /strict, threshold: 2}\n")
        .start();
    let on = |host: &str, target: &str| {
        send(
            v.addr,
            &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .status
    };
    assert_eq!(
        on("a", &format!("/legacy{XSS}")),
        200,
        "detect route passes"
    );
    assert_eq!(
        on("lab.local:8080", XSS),
        200,
        "host route with a high threshold passes"
    );
    assert_eq!(on("a", XSS), 403, "elsewhere the global policy blocks");
    // An invalid-encoding anomaly alone scores 2: blocked only where the threshold is 2.
    assert_eq!(on("a", "/strict?q=100%zz"), 403);
    assert_eq!(on("a", "/other?q=100%zz"), 200);
}

#[test]
fn allowlist_wins_over_blocking_but_is_still_logged() {
    let up = Upstream::start();
    let v = Setup::new(up.addr)
        .policy("policy:\n  mode: block\n  allowlist:\n    clients: [127.0.0.1]\n")
        .start();
    assert_eq!(v.get(SQLI).status, 200);
    let d = &v.decisions(1)[0];
    assert_eq!(d["action"], "log");
    assert_eq!(d["allowlisted"], true);
    assert_eq!(d["attack"], true);

    let v = Setup::new(up.addr)
        .policy("policy:\n  mode: block\n  allowlist:\n    routes: [{path_prefix: /internal/}]\n")
        .start();
    assert_eq!(v.get(&format!("/internal/{SQLI}")).status, 200);
    assert_eq!(v.get(SQLI).status, 403);
}

#[test]
fn exclusions_remove_a_false_positive_only_where_configured() {
    let up = Upstream::start();
    let v = Setup::new(up.addr)
        .policy("policy:\n  mode: block\n  exclusions:\n    - {path_prefix: /search, parameter: q, categories: [xss]}\n    - {path_prefix: /cms/, rule_ids: [xss-script-tag, xss-js-sink, xss-html-injection]}\n")
        .start();
    assert_eq!(v.get(XSS).status, 200, "xss in q on /search is excluded");
    assert_eq!(
        v.get("/search?other=%3Cscript%3Ealert(1)%3C%2Fscript%3E")
            .status,
        403,
        "another parameter is still inspected"
    );
    assert_eq!(
        v.get(SQLI).status,
        403,
        "other categories still block on /search"
    );
    assert_eq!(
        v.get("/elsewhere?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E")
            .status,
        403,
        "other routes still block"
    );
    assert_eq!(
        v.get("/cms/edit?body=%3Cscript%3Ealert(1)%3C%2Fscript%3E")
            .status,
        200
    );
    let d = v.decisions(5);
    assert!(d.iter().any(|d| d["excluded"].as_u64().unwrap_or(0) > 0));
}

#[test]
fn a_client_that_keeps_attacking_is_escalated_and_the_escalation_fades() {
    let up = Upstream::start();
    let v = Setup::new(up.addr)
        .learning(
            "models:\n  dir: \"off\"\nescalation:\n  enabled: true\n  after: 2\n  duration_secs: 2\n  action: block\npolicy:\n  mode: block\n  allowlist:\n    routes: [{path_prefix: /open}]\n",
        )
        .policy("")
        .start();
    assert_eq!(v.get("/search?q=running+shoes").status, 200);
    assert_eq!(v.get(SQLI).status, 403);
    assert_eq!(
        v.get("/search?q=boots").status,
        200,
        "one attack does not escalate"
    );
    assert_eq!(v.get(XSS).status, 403);
    let r = v.get("/search?q=sandals");
    assert_eq!(r.status, 403, "after two attacks the client is escalated");
    assert_eq!(up.count(), 2);
    let d = v.decisions(5);
    assert_eq!(d[4]["escalated"], true, "{}", d[4]);
    assert_eq!(d[4]["attack"], false);
    assert_eq!(d[3]["escalated_now"], true, "{}", d[3]);
    assert_eq!(
        v.get("/open/page").status,
        200,
        "the allowlist wins over an escalation"
    );
    std::thread::sleep(std::time::Duration::from_millis(2200));
    assert_eq!(
        v.get("/search?q=sandals").status,
        200,
        "the escalation ends duration_secs after the last anomaly"
    );
}

#[test]
fn escalation_action_is_capped_by_the_route_mode_and_can_tag() {
    let up = Upstream::start();
    let v = Setup::new(up.addr)
        .learning(
            "models:\n  dir: \"off\"\nescalation:\n  enabled: true\n  after: 1\n  action: tag\n",
        )
        .start();
    assert_eq!(v.get(SQLI).status, 403);
    let r = v.get("/search?q=boots");
    assert_eq!(r.status, 200, "escalated to tag, not block");
    let seen = up.last();
    assert_eq!(seen.header("x-vigil-verdict"), Some("escalated"));
}
