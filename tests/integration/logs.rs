//! Access log (nginx `combined` parity, checked against a real nginx when one is installed
//! and against lines recorded from nginx 1.22 otherwise), log forging, the JSON decision log
//! and log reopening on SIGUSR1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{free_port, repo, send_bytes, try_send, Setup, Upstream};

/// Requests sent to both nginx and vigil; the upstream answers all of them itself.
fn parity_requests() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"GET /fixed?a=1&b=%22q%22 HTTP/1.1\r\nHost: a\r\nUser-Agent: Mozilla/5.0 \"quoted\" back\\slash\ttab caf\xc3\xa9\r\nReferer: http://ref.example/p?x=\"1\"\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /fixed/auth HTTP/1.1\r\nHost: a\r\nAuthorization: Basic YWxpY2U6c2VjcmV0\r\nUser-Agent: curl/8.0\r\nConnection: close\r\n\r\n".to_vec(),
        b"POST /fixed/form HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\nConnection: close\r\n\r\na=1&b=2".to_vec(),
        b"HEAD /fixed HTTP/1.1\r\nHost: a\r\nUser-Agent: head-check\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /status/404 HTTP/1.1\r\nHost: a\r\nUser-Agent: \r\nReferer: \r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /fixed HTTP/1.0\r\nHost: a\r\nUser-Agent: old\xff\xfeclient\r\n\r\n".to_vec(),
        b"GET /fixed HTTP/1.1\r\nHost: a\r\nAuthorization: Basic OnB3\r\nUser-Agent: empty-user\r\nConnection: close\r\n\r\n".to_vec(),
    ];
    // A forged-line attempt: a quote, a fake rest-of-line and a second fake record.
    v.push(b"GET /fixed HTTP/1.1\r\nHost: a\r\nUser-Agent: x\" 200 1 \"-\" \"-\"\t10.9.9.9 - - [01/Jan/2020:00:00:00 +0000] \"GET /forged HTTP/1.1\" 200 1 \"-\" \"-\r\nConnection: close\r\n\r\n".to_vec());
    v
}

/// The time field varies: compare the rest of the line.
fn without_time(line: &str) -> String {
    match (line.find('['), line.find(']')) {
        (Some(a), Some(b)) if a < b => format!("{}[TIME]{}", &line[..a], &line[b + 1..]),
        _ => line.to_string(),
    }
}

fn vigil_lines_for(reqs: &[Vec<u8>]) -> Vec<String> {
    let up = Upstream::start();
    let v = Setup::new(up.addr)
        .policy("policy:\n  mode: detect\n")
        .start();
    for r in reqs {
        try_send(v.addr, r);
    }
    v.access_lines(reqs.len())
}

#[test]
fn access_log_matches_lines_recorded_from_nginx() {
    let golden = std::fs::read_to_string(repo().join("tests/data/nginx_combined.golden"))
        .expect("golden file");
    let expected: Vec<&str> = golden.lines().collect();
    let got: Vec<String> = vigil_lines_for(&parity_requests())
        .iter()
        .map(|l| without_time(l))
        .collect();
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e);
    }
}

fn nginx_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/nginx",
        "/usr/bin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nginx(bin: &Path, dir: &Path, port: u16, upstream: std::net::SocketAddr) -> Nginx {
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log {d}/access.log combined;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://{upstream}; }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("nginx conf");
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx(child)
}

#[test]
fn access_log_is_field_for_field_what_a_real_nginx_writes() {
    let Some(bin) = nginx_binary() else {
        eprintln!("skipped: nginx is not installed (the recorded-lines test still checks parity)");
        return;
    };
    let up = Upstream::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _nginx = start_nginx(&bin, dir.path(), port, up.addr);
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let reqs = parity_requests();
    for r in &reqs {
        try_send(addr, r);
    }
    let path = dir.path().join("access.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    let nginx_lines: Vec<String> = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(without_time).collect();
        if lines.len() >= reqs.len() || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if std::env::var_os("VIGIL_WRITE_GOLDEN").is_some() {
        let mut text = nginx_lines.join("\n");
        text.push('\n');
        std::fs::write(repo().join("tests/data/nginx_combined.golden"), text)
            .expect("write golden");
    }
    let ours: Vec<String> = vigil_lines_for(&reqs)
        .iter()
        .map(|l| without_time(l))
        .collect();
    assert_eq!(ours, nginx_lines);
}

#[test]
fn time_field_is_nginx_time_local() {
    let lines = vigil_lines_for(&parity_requests()[..1]);
    let l = &lines[0];
    let a = l.find('[').expect("[");
    let b = l.find(']').expect("]");
    let t = &l[a + 1..b];
    assert!(
        chrono::DateTime::parse_from_str(t, "%d/%b/%Y:%H:%M:%S %z").is_ok(),
        "{t}"
    );
}

#[test]
fn forged_log_lines_are_impossible() {
    let reqs = parity_requests();
    let lines = vigil_lines_for(&reqs);
    assert_eq!(
        lines.len(),
        reqs.len(),
        "one line per request, no more: {lines:#?}"
    );
    for l in &lines {
        assert!(!l.starts_with("10.9.9.9"), "{l}");
        vigil::record::Record::parse_line(l, 1)
            .unwrap_or_else(|e| panic!("our own line must parse: {e}: {l}"));
    }
    let forged = lines.last().expect("line");
    assert!(
        forged.contains(r#""x\x22 200 1 \x22-\x22 \x22-\x22\x0910.9.9.9"#),
        "{forged}"
    );
}

#[test]
fn decision_log_records_the_verdict_and_every_matched_rule() {
    let up = Upstream::start();
    let v = Setup::new(up.addr).start();
    let req = b"GET /search?q=%3Cscript%3Ealert(1)%3C/script%3E&id=1%27%20UNION%20SELECT%20pw%20FROM%20users-- HTTP/1.1\r\nHost: shop.local\r\nUser-Agent: tester\"\r\nX-Request-Id: dec-1\r\nConnection: close\r\n\r\n";
    assert_eq!(send_bytes(v.addr, req).status, 403);
    let d = &v.decisions(1)[0];
    assert_eq!(d["request_id"], "dec-1");
    assert_eq!(d["action"], "block");
    assert_eq!(d["status"], 403);
    assert_eq!(d["client"], "127.0.0.1");
    assert_eq!(d["host"], "shop.local");
    assert_eq!(d["user_agent"], "tester\\x22", "attacker bytes are escaped");
    assert!(d["score"].as_u64().unwrap_or(0) >= 10);
    assert_eq!(d["threshold"], 5);
    assert!(d["inspect_us"].is_u64());
    assert!(d["rules_version"].as_str().is_some_and(|s| !s.is_empty()));
    let matches = d["matches"].as_array().expect("matches");
    let find = |id: &str| {
        matches
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {matches:?}"))
    };
    let xss = find("xss-script-tag");
    assert_eq!(xss["category"], "xss");
    assert_eq!(xss["field"], "query:q");
    assert!(
        xss["snippet"]
            .as_str()
            .is_some_and(|s| s.contains("<script")),
        "{xss}"
    );
    let sqli = find("sqli-union-select");
    assert_eq!(sqli["field"], "query:id");
    assert!(
        sqli["snippet"]
            .as_str()
            .is_some_and(|s| s.contains("union select") || s.contains("UNION%20SELECT")),
        "{sqli}"
    );
    // Snippets never carry raw quotes or control bytes.
    for m in matches {
        let s = m["snippet"].as_str().unwrap_or("");
        assert!(!s.contains('"') && !s.bytes().any(|b| b < 0x20), "{s}");
    }
}

#[test]
fn sigusr1_reopens_the_log_files() {
    let up = Upstream::start();
    let v = Setup::new(up.addr).start();
    assert_eq!(v.get("/one").status, 200);
    assert_eq!(v.access_lines(1).len(), 1);
    std::fs::rename(v.path("access.log"), v.path("access.log.1")).expect("rotate");
    v.signal(libc::SIGUSR1);
    assert!(v.wait_log("Log file reopened"), "{}", v.stderr());
    assert_eq!(v.get("/two").status, 200);
    let new = v.access_lines(1);
    assert_eq!(new.len(), 1);
    assert!(new[0].contains("GET /two "), "{}", new[0]);
    let old = std::fs::read_to_string(v.path("access.log.1")).expect("old log");
    assert!(old.contains("GET /one ") && !old.contains("GET /two "));
}
