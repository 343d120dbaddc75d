//! Test harness: a real upstream HTTP server (hyper, port 0 on loopback) that echoes what it
//! received, the real `vigil` binary started on a free loopback port with a generated
//! config, and a raw HTTP/1.1 client that sends exactly the bytes a test gives it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A loopback HTTP/1.1 server. Paths: `/status/NNN` answers NNN; `/big/N` answers N bytes;
/// `/chunked/N` answers N chunks of 1000 bytes with chunked encoding; `/fixed` answers a
/// fixed body; anything else answers 200 with a JSON echo of the request.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    _rt: tokio::runtime::Runtime,
}

impl Upstream {
    pub fn start() -> Upstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let seen2 = seen.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, seen.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            _rt: rt,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let s = Seen {
        method,
        uri: uri.clone(),
        headers,
        body,
    };
    seen.lock().expect("lock").push(s.clone());
    let path = uri.split('?').next().unwrap_or("").to_string();
    let full = |status: u16, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header("x-upstream", "echo")
            .body(Full::new(Bytes::from(body)).boxed())
            .expect("response")
    };
    // A test can ask for any status on any path (scenarios: 403 on /admin, 401 on /login).
    let asked = s
        .headers
        .iter()
        .find(|(k, _)| k == "x-test-status")
        .and_then(|(_, v)| v.parse::<u16>().ok());
    // And a body of any size (scenarios: a page as large as the shop's real one).
    let size = s
        .headers
        .iter()
        .find(|(k, _)| k == "x-test-bytes")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let resp = if let Some(code) = asked {
        match size {
            Some(n) => full(code, vec![b'x'; n]),
            None => full(code, format!("status {code}\n").into_bytes()),
        }
    } else if let Some(code) = path.strip_prefix("/status/") {
        full(
            code.parse().unwrap_or(500),
            format!("status {code}\n").into_bytes(),
        )
    } else if let Some(n) = path.strip_prefix("/big/") {
        let n: usize = n.parse().unwrap_or(0);
        full(200, (0..n).map(|i| b'a' + (i % 26) as u8).collect())
    } else if let Some(n) = path.strip_prefix("/chunked/") {
        let n: usize = n.parse().unwrap_or(0);
        let frames = (0..n).map(|i| {
            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'0' + (i % 10) as u8; 1000])))
        });
        let stream = futures_util::stream::iter(frames);
        Response::builder()
            .status(200)
            .body(StreamBody::new(stream).boxed())
            .expect("response")
    } else if path.starts_with("/fixed") {
        full(200, b"hello from upstream\n".to_vec())
    } else {
        let echo = serde_json::json!({
            "method": s.method,
            "uri": s.uri,
            "headers": s.headers,
            "body_len": s.body.len(),
        });
        let mut r = full(200, echo.to_string().into_bytes());
        r.headers_mut()
            .insert("content-type", "application/json".parse().expect("hv"));
        r
    };
    Ok(resp)
}

/// A free loopback port (bound to port 0, then released for vigil to take).
pub fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running vigil process with its own temp directory, config and logs.
pub struct Vigil {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    child: Child,
}

/// Config pieces a test can override; `{upstream}`, `{listen}`, `{dir}` and `{rules}` are
/// substituted.
pub struct Setup {
    pub upstream: String,
    pub policy: String,
    pub extra: String,
    pub rules: Option<PathBuf>,
    pub trusted: bool,
    /// Terminate TLS on the listener with the test certificate.
    pub tls_listener: bool,
    /// Extra keys under `upstream:` (indented YAML lines).
    pub upstream_extra: String,
    /// The learned-detector sections (`models`, `sessions`, `ensemble`, `escalation`). By
    /// default rules only and no escalation, so that one test client can send many attacks
    /// and then a clean request.
    pub learning: String,
}

impl Setup {
    pub fn new(upstream: SocketAddr) -> Setup {
        Setup {
            upstream: upstream.to_string(),
            policy: "policy:\n  mode: block\n".into(),
            extra: String::new(),
            rules: None,
            trusted: false,
            tls_listener: false,
            upstream_extra: String::new(),
            learning: "models:\n  dir: \"off\"\nescalation:\n  enabled: false\n".into(),
        }
    }

    pub fn learning(mut self, yaml: &str) -> Setup {
        self.learning = yaml.to_string();
        self
    }

    pub fn policy(mut self, yaml: &str) -> Setup {
        self.policy = yaml.to_string();
        self
    }

    pub fn extra(mut self, yaml: &str) -> Setup {
        self.extra = yaml.to_string();
        self
    }

    pub fn tls_listener(mut self) -> Setup {
        self.tls_listener = true;
        self
    }

    pub fn upstream_extra(mut self, yaml: &str) -> Setup {
        self.upstream_extra = yaml.to_string();
        self
    }

    /// Several upstream servers (a YAML flow list body, e.g. `a:1, b:2`).
    pub fn upstreams(mut self, list: &str) -> Setup {
        self.upstream = list.to_string();
        self
    }

    /// Start with 127.0.0.0/8 as trusted proxies (the test client is then a proxy).
    pub fn start_with_trusted(mut self) -> Vigil {
        self.trusted = true;
        Vigil::start(self)
    }

    pub fn rules(mut self, dir: &Path) -> Setup {
        self.rules = Some(dir.to_path_buf());
        self
    }

    pub fn start(self) -> Vigil {
        Vigil::start(self)
    }
}

impl Vigil {
    fn start(setup: Setup) -> Vigil {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let rules = setup.rules.clone().unwrap_or_else(|| repo().join("rules"));
        let d = dir.path().display().to_string();
        let mut cfg = format!(
            "listen:\n  - address: 127.0.0.1:{port}\n{tls}upstream:\n  servers: [{up}]\n{ux}  health_check_interval_secs: 1\n  connect_timeout_secs: 1\nserver:\n  threads: 1\n  grace_period_secs: 0\n  graceful_shutdown_timeout_secs: 1\n  pid_file: {d}/vigil.pid\n  upgrade_sock: {d}/upgrade.sock\n  trusted_proxies: [{t}]\nlogging:\n  access_log: {d}/access.log\n  decision_log: {d}/decisions.jsonl\nrules:\n  paths: [{r}]\n",
            up = setup.upstream,
            r = rules.display(),
            t = if setup.trusted { "127.0.0.0/8" } else { "" },
            tls = if setup.tls_listener {
                format!(
                    "    tls: {{cert: {}, key: {}}}\n",
                    repo().join("tests/data/test_cert.pem").display(),
                    repo().join("tests/data/test_key.pem").display()
                )
            } else {
                String::new()
            },
            ux = setup.upstream_extra,
        );
        cfg.push_str(&setup.policy);
        cfg.push_str(
            &setup
                .learning
                .replace("{repo}", &repo().display().to_string()),
        );
        cfg.push_str(&setup.extra.replace("{dir}", &d));
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, &cfg).expect("write config");
        let stderr = std::fs::File::create(dir.path().join("vigil.stderr")).expect("stderr file");
        let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start vigil");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut v = Vigil {
            addr,
            dir,
            config_path,
            child,
        };
        v.wait_listening();
        v
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "vigil exited with {status} before listening:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "vigil did not listen on {} in time:\n{}",
            self.addr,
            self.stderr()
        );
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vigil.stderr")).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Wait until `file` has at least `n` lines, and return them.
    pub fn lines(&self, file: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(self.path(file)).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The decision line of one request (waits until it is written).
    pub fn decision(&self, request_id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(self.path("decisions.jsonl")).unwrap_or_default();
            let found = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|d| d["request_id"] == request_id);
            if let Some(d) = found {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "no decision line for {request_id}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn access_lines(&self, n: usize) -> Vec<String> {
        self.lines("access.log", n)
    }

    pub fn decisions(&self, n: usize) -> Vec<serde_json::Value> {
        self.lines("decisions.jsonl", n)
            .iter()
            .map(|l| serde_json::from_str(l).expect("decision log lines are JSON"))
            .collect()
    }

    /// Wait until the process logged a line containing `needle` (stderr).
    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn get(&self, target: &str) -> Resp {
        send(self.addr, &format!("GET {target} HTTP/1.1\r\nHost: test.local\r\nUser-Agent: itest/1.0\r\nConnection: close\r\n\r\n"))
    }

    pub fn exit_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Send raw bytes, read until the response is complete, parse it.
pub fn send(addr: SocketAddr, raw: &str) -> Resp {
    send_bytes(addr, raw.as_bytes())
}

/// Send raw bytes; `None` when the connection closed without a complete response.
pub fn try_send(addr: SocketAddr, raw: &[u8]) -> Option<Resp> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(raw).ok()?;
    read_response(&mut s)
}

pub fn send_bytes(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect to vigil");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(raw).expect("write request");
    read_response(&mut s).expect("a complete response")
}

/// Read one response from a (possibly keep-alive) connection.
pub fn read_response(s: &mut TcpStream) -> Option<Resp> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16384];
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers = BTreeMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut rest = buf[head_end + 4..].to_vec();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        let mut out = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&rest, b"\r\n") {
                    break p;
                }
                let n = s.read(&mut tmp).ok()?;
                if n == 0 {
                    return None;
                }
                rest.extend_from_slice(&tmp[..n]);
            };
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16)
                .ok()?;
            rest.drain(..line_end + 2);
            while rest.len() < size + 2 {
                let n = s.read(&mut tmp).ok()?;
                if n == 0 {
                    return None;
                }
                rest.extend_from_slice(&tmp[..n]);
            }
            out.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
            if size == 0 {
                break;
            }
        }
        out
    } else if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        while rest.len() < len {
            let n = s.read(&mut tmp).ok()?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&tmp[..n]);
        }
        rest.truncate(len);
        rest
    } else if status == 204 || status == 304 {
        Vec::new()
    } else {
        let _ = s.read_to_end(&mut rest);
        rest
    };
    Some(Resp {
        status,
        headers,
        body,
    })
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// A request id unique within this test run.
pub fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Train a real model set with the `vigil train` binary on a committed log sample.
pub fn train_models(out: &Path, log: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["train", "--config"])
        .arg(repo().join("config.yaml"))
        .arg("--log")
        .arg(log)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run vigil train");
    assert!(
        o.status.success(),
        "vigil train failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
