//! `vigil check` and start-up refuse bad configuration, naming every problem with its field.

use std::process::Command;

use crate::harness::repo;

fn check(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        yaml.replace("{rules}", &repo().join("rules").display().to_string()),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_config_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["check", "--config"])
        .arg(repo().join("config.yaml"))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn every_problem_is_listed_with_its_field_path() {
    let (code, _, err) = check("rules: {paths: ['{rules}']}\nlisten: [{address: 'localhost'}]\npolicy:\n  mode: blok\n  block_status: 200\n  routes:\n    - {path_prefix: /a}\n    - {path_prefix: /b}\n    - {path_prefix: /c, threshold: -1}\n  allowlist: {clients: ['10.0.0.0/33']}\ninspection: {body_limit: 1000000, over_limit: drop}\n");
    assert_eq!(code, 2);
    for want in [
        "listen[0].address: must be an IP:port",
        "policy.mode: must be one of off, detect, tag, block, got \"blok\"",
        "policy.block_status: must be a 4xx or 5xx status, got 200",
        "policy.routes[2].threshold: must be > 0 (an anomaly score), got -1",
        "policy.allowlist.clients[0]: must be an IP address or CIDR",
        "inspection.body_limit: must be at most 65536",
        "inspection.over_limit: must be inspect_prefix or reject",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn unknown_keys_and_bad_types_are_errors() {
    let (code, _, err) =
        check("rules: {paths: ['{rules}']}\npolicy:\n  mode: block\n  treshold: 5\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown field `treshold`") && err.contains("policy"),
        "{err}"
    );
    let (code, _, err) = check("rules: {paths: ['{rules}']}\nserver: {threads: many}\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("server.threads") || err.contains("threads"),
        "{err}"
    );
}

#[test]
fn broken_rule_packs_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bad.yaml"), "rules:\n  - {id: x1, category: t, severity: critical, targets: [args], patterns: ['a(']}\n  - {id: x2, category: t, severity: critical, targets: [nowhere], patterns: ['b']}\n").expect("write");
    let (code, _, err) = check(&format!("rules: {{paths: ['{}']}}\n", dir.path().display()));
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.yaml: rule x1: pattern 0 does not compile"),
        "{err}"
    );
    assert!(err.contains("bad.yaml: rule x2: unknown target"), "{err}");
}

#[test]
fn serve_refuses_to_start_on_a_bad_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "policy: {mode: nope}\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("policy.mode"));
}
