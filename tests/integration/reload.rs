//! Hot reload: SIGHUP rebuilds the rule set and policy off the request path and swaps them
//! atomically; a broken pack or config is refused and the old set keeps serving; SIGHUP
//! never kills the process; SIGTERM stops it gracefully.

use std::time::{Duration, Instant};

use crate::harness::{Setup, Upstream, Vigil};

const PACK: &str = "rules:\n  - id: t-base\n    category: test\n    severity: critical\n    targets: [args]\n    patterns: ['forbidden-alpha']\n";
const NEW_RULE: &str = "rules:\n  - id: t-new\n    category: test\n    severity: critical\n    targets: [args]\n    patterns: ['forbidden-beta']\n";

fn wait_status(v: &Vigil, target: &str, want: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if v.get(target).status == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn sighup_adds_a_rule_and_a_broken_pack_is_refused() {
    let up = Upstream::start();
    let rules = tempfile::tempdir().expect("tempdir");
    std::fs::write(rules.path().join("base.yaml"), PACK).expect("pack");
    let v = Setup::new(up.addr).rules(rules.path()).start();
    assert_eq!(v.get("/?x=forbidden-alpha").status, 403);
    assert_eq!(v.get("/?x=forbidden-beta").status, 200);

    std::fs::write(rules.path().join("new.yaml"), NEW_RULE).expect("pack");
    v.signal(libc::SIGHUP);
    assert!(
        wait_status(&v, "/?x=forbidden-beta", 403),
        "new rule takes effect:\n{}",
        v.stderr()
    );
    assert!(v.wait_log("Model set reloaded"));

    // A broken pack: the whole reload is refused, the old set keeps blocking.
    std::fs::write(rules.path().join("broken.yaml"), "rules:\n  - id: t-bad\n    category: test\n    severity: critical\n    targets: [args]\n    patterns: ['(unclosed']\n").expect("pack");
    std::fs::write(rules.path().join("new.yaml"), "rules: []\n").expect("pack");
    v.signal(libc::SIGHUP);
    assert!(
        v.wait_log("broken.yaml: rule t-bad: pattern 0 does not compile"),
        "the refusal names file, rule and reason:\n{}",
        v.stderr()
    );
    assert_eq!(
        v.get("/?x=forbidden-beta").status,
        403,
        "the old set still serves"
    );
    assert_eq!(v.get("/?x=forbidden-alpha").status, 403);

    // Fix it: the next SIGHUP applies the current files.
    std::fs::remove_file(rules.path().join("broken.yaml")).expect("rm");
    v.signal(libc::SIGHUP);
    assert!(
        wait_status(&v, "/?x=forbidden-beta", 200),
        "t-new was removed"
    );
    assert_eq!(v.get("/?x=forbidden-alpha").status, 403);
}

#[test]
fn sighup_applies_a_new_policy_and_refuses_an_invalid_config() {
    let up = Upstream::start();
    let v = Setup::new(up.addr).start();
    let attack = "/s?q=%3Cscript%3Ealert(1)%3C/script%3E";
    assert_eq!(v.get(attack).status, 403);
    let cfg = std::fs::read_to_string(&v.config_path).expect("config");
    std::fs::write(&v.config_path, cfg.replace("mode: block", "mode: detect")).expect("write");
    v.signal(libc::SIGHUP);
    assert!(wait_status(&v, attack, 200), "{}", v.stderr());

    std::fs::write(
        &v.config_path,
        cfg.replace("mode: block", "mode: block\n  threshold: -3"),
    )
    .expect("write");
    v.signal(libc::SIGHUP);
    assert!(
        v.wait_log("policy.threshold: must be > 0"),
        "{}",
        v.stderr()
    );
    assert_eq!(
        v.get(attack).status,
        200,
        "the previous (detect) policy keeps serving"
    );
}

#[test]
fn reload_under_load_fails_no_request_and_each_request_sees_one_version() {
    let up = Upstream::start();
    let rules = tempfile::tempdir().expect("tempdir");
    std::fs::write(rules.path().join("base.yaml"), PACK).expect("pack");
    let v = Setup::new(up.addr).rules(rules.path()).start();
    let addr = v.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = crate::harness::send(
                        addr,
                        "GET /?x=forbidden-alpha HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                    );
                    assert_eq!(
                        r.status, 403,
                        "every request is answered by a complete rule set"
                    );
                    n += 1;
                }
                n
            })
        })
        .collect();
    for i in 0..10 {
        std::fs::write(
            rules.path().join("extra.yaml"),
            NEW_RULE.replace("t-new", &format!("t-new{i}")),
        )
        .expect("pack");
        v.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total: usize = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    assert!(total > 20, "{total} requests during reloads");
    // Every decision names exactly one rule-set version, and several versions served.
    let d = v.decisions(total);
    let versions: std::collections::BTreeSet<String> = d
        .iter()
        .map(|d| d["rules_version"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(versions.len() >= 2, "{versions:?}");
    assert!(d
        .iter()
        .all(|d| d["rules_version"].as_str().is_some_and(|s| !s.is_empty())));
}

#[test]
fn sigterm_stops_gracefully() {
    let up = Upstream::start();
    let mut v = Setup::new(up.addr).start();
    v.signal(libc::SIGHUP);
    assert!(v.wait_log("Model set reloaded"));
    assert!(
        v.exit_status(Duration::from_millis(300)).is_none(),
        "SIGHUP must not stop vigil"
    );
    v.signal(libc::SIGTERM);
    let status = v
        .exit_status(Duration::from_secs(15))
        .expect("vigil stops after SIGTERM");
    assert!(status.success(), "{status}");
}

#[test]
fn sigquit_hands_the_listeners_to_an_upgraded_process() {
    let up = Upstream::start();
    let mut old = Setup::new(up.addr).start();
    assert_eq!(old.get("/before").status, 200);
    let stderr = std::fs::File::create(old.path("new.stderr")).expect("stderr");
    let mut new = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["serve", "--upgrade", "--config"])
        .arg(&old.config_path)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start the new process");
    // The new process waits on the upgrade socket; the old one hands over on SIGQUIT.
    std::thread::sleep(Duration::from_millis(700));
    old.signal(libc::SIGQUIT);
    let status = old.exit_status(Duration::from_secs(15));
    assert!(status.is_some(), "the old process exits after handing over");
    let r = old.get("/after");
    let new_log = std::fs::read_to_string(old.path("new.stderr")).unwrap_or_default();
    let _ = new.kill();
    let _ = new.wait();
    assert_eq!(
        r.status, 200,
        "the new process serves on the same address:\n{new_log}"
    );
    assert_eq!(up.last().uri, "/after");
}

/// The `models.dir` line of a test config.
fn with_models(cfg: &str, dir: &std::path::Path) -> String {
    let start = cfg.find("models:\n  dir: ").expect("models section");
    let end = start
        + cfg[start..]
            .find("\nescalation")
            .expect("escalation section");
    format!(
        "{}models:\n  dir: {}{}",
        &cfg[..start],
        dir.display(),
        &cfg[end..]
    )
}

#[test]
fn a_reload_under_load_fails_no_request_and_each_request_sees_one_model_set() {
    use crate::harness::{repo, train_models};
    let sets = tempfile::tempdir().expect("tempdir");
    let (a, b) = (sets.path().join("a"), sets.path().join("b"));
    let sample = repo().join("tests/data/access_log.sample.log");
    train_models(&a, &sample);
    train_models(&b, &sample);
    let up = Upstream::start();
    let v = Setup::new(up.addr)
        .policy("policy:\n  mode: tag\n")
        .learning("models:\n  dir: \"off\"\nescalation:\n  enabled: false\n")
        .start();
    let base = std::fs::read_to_string(&v.config_path).expect("config");
    std::fs::write(&v.config_path, with_models(&base, &a)).expect("write");
    v.signal(libc::SIGHUP);
    assert!(v.wait_log("Model set reloaded"), "{}", v.stderr());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let stop = stop.clone();
            let addr = v.addr;
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let r = crate::harness::send(
                        addr,
                        &format!("GET /products/{i}?page={c} HTTP/1.1\r\nHost: shop\r\nX-Request-Id: load-{c}-{i}\r\nConnection: close\r\n\r\n"),
                    );
                    statuses.push(r.status);
                }
                statuses
            })
        })
        .collect();
    // Swap between the two sets a few times, each swap completing while the clients send.
    for n in 0..4 {
        let dir = if n % 2 == 0 { &b } else { &a };
        std::fs::write(&v.config_path, with_models(&base, dir)).expect("write");
        v.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(30);
        while v.stderr().matches("Model set reloaded").count() < n + 2 {
            assert!(
                Instant::now() < deadline,
                "reload {n} never completed:\n{}",
                v.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    assert!(statuses.len() > 40, "{} requests", statuses.len());
    assert!(
        statuses.iter().all(|&s| s == 200),
        "every request under reloads succeeds: {:?}",
        statuses.iter().filter(|&&s| s != 200).collect::<Vec<_>>()
    );

    // Each request names one model set on its way upstream, and its decision line names the
    // same one: the pre-upstream and post-response stages used the same set.
    let seen: std::collections::HashMap<String, String> = up
        .seen()
        .iter()
        .filter_map(|s| {
            Some((
                s.header("x-request-id")?.to_string(),
                s.header("x-vigil-model")?.to_string(),
            ))
        })
        .collect();
    assert_eq!(
        seen.len(),
        statuses.len(),
        "every request carried x-vigil-model"
    );
    let decisions = v.decisions(statuses.len() + 1);
    let mut versions = std::collections::HashSet::new();
    for d in decisions.iter().filter(|d| {
        d["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("load-"))
    }) {
        let id = d["request_id"].as_str().expect("id");
        let logged = d["rules_version"].as_str().expect("version");
        assert_eq!(seen.get(id).map(String::as_str), Some(logged), "{id}");
        versions.insert(logged.to_string());
    }
    assert!(
        versions.len() >= 2,
        "both model sets served: {versions:?}\n{}",
        v.stderr()
    );
}

#[test]
fn a_corrupt_model_file_is_refused_with_its_path_and_the_old_set_keeps_serving() {
    use crate::harness::{repo, train_models};
    let sets = tempfile::tempdir().expect("tempdir");
    let dir = sets.path().join("m");
    train_models(&dir, &repo().join("tests/data/access_log.sample.log"));
    let up = Upstream::start();
    let v = Setup::new(up.addr)
        .policy("policy:\n  mode: tag\n")
        .learning(&format!(
            "models:\n  dir: {}\nescalation:\n  enabled: false\n",
            dir.display()
        ))
        .start();
    v.get("/products/1");
    let before = up
        .last()
        .header("x-vigil-model")
        .expect("model")
        .to_string();
    assert!(before.contains('+'), "a learned set is loaded: {before}");

    let f = dir.join("forest_post.json");
    let bytes = std::fs::read(&f).expect("read");
    std::fs::write(&f, &bytes[..bytes.len() / 3]).expect("truncate");
    v.signal(libc::SIGHUP);
    assert!(
        v.wait_log("forest_post.json"),
        "the refusal names the file:\n{}",
        v.stderr()
    );
    v.get("/products/2");
    assert_eq!(
        up.last().header("x-vigil-model"),
        Some(before.as_str()),
        "the old set keeps serving"
    );
}
