//! `vigil score`: a log scored offline through the proxy's code path, one JSON object per
//! input line, on the log's own clock.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::harness::repo;

/// Score `log` with the shipped model set; the output lines, parsed.
fn score(log: &str) -> Vec<serde_json::Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["score", "--features", "--config"])
        .arg(repo().join("config.yaml"))
        .arg("--models")
        .arg(repo().join("models"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vigil score");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(log.as_bytes())
        .expect("write log");
    let out = child.wait_with_output().expect("vigil score");
    assert!(
        out.status.success(),
        "vigil score failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

fn line(ip: &str, time: &str, target: &str, status: u16, bytes: u64) -> String {
    format!(
        "{ip} - - [{time} +0000] \"GET {target} HTTP/1.1\" {status} {bytes} \"-\" \"Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0\"\n"
    )
}

#[test]
fn every_line_gets_an_object_in_order_with_the_forests_input() {
    let mut log = String::new();
    log += &line("198.51.100.7", "07/Oct/2024:10:00:00", "/", 200, 46_000);
    log += &line(
        "198.51.100.7",
        "07/Oct/2024:10:00:04",
        "/products/1234",
        200,
        31_000,
    );
    log += "this is not an access log line\n";
    log += &line(
        "198.51.100.7",
        "07/Oct/2024:10:00:09",
        "/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--",
        200,
        9_000,
    );
    let out = score(&log);
    assert_eq!(out.len(), 4, "{out:?}");
    for (i, o) in out.iter().enumerate() {
        assert_eq!(o["line"], i + 1);
    }
    assert!(
        out[2]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        out[2]
    );
    assert!(out[2].get("verdict").is_none());
    assert_eq!(out[1]["template"], "GET /products/<num>");
    assert_eq!(out[1]["lane"], "direct", "{}", out[1]);
    assert_eq!(out[1]["verdict"]["anomaly"], false, "{}", out[1]);
    assert_eq!(out[3]["verdict"]["anomaly"], true, "{}", out[3]);
    assert_eq!(out[3]["rules"]["vote"], true);
    for o in [&out[0], &out[1], &out[3]] {
        let f = &o["features"];
        assert_eq!(f["pre"].as_array().map(Vec::len), Some(21), "{f}");
        assert_eq!(f["post"].as_array().map(Vec::len), Some(28), "{f}");
        // The post vector begins with the pre vector.
        assert_eq!(
            f["post"].as_array().unwrap()[..21],
            f["pre"].as_array().unwrap()[..]
        );
    }
}

#[test]
fn rates_follow_the_logs_timestamps_not_the_reading_speed() {
    // The same 30 requests from one client, two a second and one a minute: read as fast as
    // each other, they differ only in their timestamps.
    let client = |seconds: fn(u32) -> u32| {
        (0..30u32)
            .map(|i| {
                let s = seconds(i);
                let time = format!("07/Oct/2024:10:{:02}:{:02}", s / 60, s % 60);
                let target = format!("/products/{}", 1000 + i);
                line("203.0.113.9", &time, &target, 200, 31_000)
            })
            .collect::<String>()
    };
    // ln(1 + the client's requests in ~10 s) when its 30th request arrived.
    let rate10 = |out: &[serde_json::Value]| out[29]["features"]["pre"][8].as_f64().unwrap();
    let burst = score(&client(|i| i / 2));
    let spread = score(&client(|i| i * 60));
    assert!(
        rate10(&burst) > 2.5 && rate10(&spread) < 0.5,
        "burst {}, spread {}",
        rate10(&burst),
        rate10(&spread)
    );
}

/// `vigil train` on the committed sample with `args`; its exit status and stderr.
fn train(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["train", "--config"])
        .arg(repo().join("config.yaml"))
        .arg("--log")
        .arg(repo().join("tests/data/access_log.sample.log"))
        .args(args)
        .output()
        .expect("run vigil train");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn train_serves_a_model_trained_elsewhere_calibrated_here() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (own, foreign, small, broken) = (
        dir.path().join("own"),
        dir.path().join("foreign"),
        dir.path().join("small"),
        dir.path().join("broken"),
    );
    // Stands in for a model trained elsewhere: one of ours, on the same logs' template ids.
    let (ok, err) = train(&["--out".as_ref(), own.as_os_str()]);
    assert!(ok, "{err}");
    let onnx = own.join("transformer.onnx");
    let (ok, err) = train(&[
        "--out".as_ref(),
        foreign.as_os_str(),
        "--transformer-onnx".as_ref(),
        onnx.as_os_str(),
    ]);
    assert!(ok, "{err}");
    // Served as given, calibrated on this log's held-out clients, and the set loads and scores.
    let read = |p: &std::path::Path| std::fs::read(p).expect("read");
    assert_eq!(read(&foreign.join("transformer.onnx")), read(&onnx));
    let meta: serde_json::Value =
        serde_json::from_slice(&read(&foreign.join("transformer.json"))).expect("json");
    let threshold = meta["calibration"]["threshold"]
        .as_f64()
        .expect("threshold");
    assert!(threshold.is_finite() && threshold > 0.0, "{meta}");
    let o = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["score", "--config"])
        .arg(repo().join("config.yaml"))
        .arg("--models")
        .arg(&foreign)
        .arg(repo().join("tests/data/access_log.sample.log"))
        .output()
        .expect("run vigil score");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first: serde_json::Value = String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("a scored line");
    assert!(
        first["pre"]["detectors"]
            .as_array()
            .is_some_and(|a| a.iter().any(|d| d["detector"] == "transformer")),
        "{first}"
    );

    // A model of fewer templates than the log's vocabulary is refused, naming its file, and
    // nothing is written.
    let (ok, _) = train(&[
        "--out".as_ref(),
        small.as_os_str(),
        "--max-templates".as_ref(),
        "5".as_ref(),
    ]);
    assert!(ok && small.join("transformer.onnx").exists());
    let (ok, err) = train(&[
        "--out".as_ref(),
        broken.as_os_str(),
        "--transformer-onnx".as_ref(),
        small.join("transformer.onnx").as_os_str(),
    ]);
    assert!(
        !ok && err.contains("small/transformer.onnx") && err.contains("templates"),
        "{err}"
    );
    assert!(!broken.exists());
    // So is a truncated one.
    let cut = dir.path().join("cut.onnx");
    std::fs::write(&cut, &read(&onnx)[..200]).expect("write");
    let (ok, err) = train(&[
        "--out".as_ref(),
        broken.as_os_str(),
        "--transformer-onnx".as_ref(),
        cut.as_os_str(),
    ]);
    assert!(!ok && err.contains("cut.onnx"), "{err}");
    assert!(!broken.exists());
}
