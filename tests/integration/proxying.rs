//! Transparent proxying: methods, headers and bodies both ways, statuses, chunked and large
//! bodies, keep-alive, forwarding headers, an upstream that is down.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::{free_port, read_response, send, send_bytes, Setup, Upstream};

#[test]
fn methods_headers_and_bodies_pass_through() {
    let up = Upstream::start();
    let v = Setup::new(up.addr).start();
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let body = if method == "GET" {
            ""
        } else {
            "name=alice&note=hello+world"
        };
        let req = format!(
            "{method} /items/7?x=1 HTTP/1.1\r\nHost: app.local\r\nX-Custom: Keep Me\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let r = send(v.addr, &req);
        assert_eq!(r.status, 200, "{method}: {}", r.text());
        assert_eq!(
            r.header("x-upstream"),
            Some("echo"),
            "response headers come back"
        );
        let seen = up.last();
        assert_eq!(seen.method, method);
        assert_eq!(seen.uri, "/items/7?x=1");
        assert_eq!(seen.header("x-custom"), Some("Keep Me"));
        assert_eq!(seen.header("host"), Some("app.local"));
        assert_eq!(
            seen.body,
            body.as_bytes(),
            "{method} body reaches the upstream intact"
        );
    }
    let head = send(
        v.addr,
        "HEAD /fixed HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[test]
fn statuses_are_passed_on() {
    let up = Upstream::start();
    let v = Setup::new(up.addr).start();
    for code in [201u16, 204, 301, 401, 404, 418, 500, 503] {
        let r = v.get(&format!("/status/{code}"));
        assert_eq!(r.status, code);
    }
}

#[test]
fn large_and_chunked_bodies_stream_both_ways() {
    let up = Upstream::start();
    let v = Setup::new(up.addr).start();
    // A 3 MB response.
    let r = v.get("/big/3000000");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 3_000_000);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == b'a' + (i % 26) as u8));
    // A chunked response of 500 chunks.
    let r = v.get("/chunked/500");
    assert_eq!(r.body.len(), 500_000);
    // A 300 KB request body (beyond the inspection limit) arrives whole, in order.
    let body: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut req = format!("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
    req.extend_from_slice(&body);
    let r = send_bytes(v.addr, &req);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().body, body);
    // A chunked request body, split across several chunks, inspected and replayed intact.
    let chunks = ["q=hello", "+there", "&more=", &"x".repeat(70_000)];
    let mut req = b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for c in chunks {
        req.extend_from_slice(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = send_bytes(v.addr, &req);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().body, chunks.concat().as_bytes());
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let up = Upstream::start();
    let v = Setup::new(up.addr).start();
    let mut s = TcpStream::connect(v.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for i in 0..5 {
        let body = format!("n={i}");
        write!(s, "POST /k/{i} HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}", body.len()).expect("write");
        let r = read_response(&mut s).expect("response on the same connection");
        assert_eq!(r.status, 200);
        assert_eq!(up.last().uri, format!("/k/{i}"));
        assert_eq!(up.last().body, body.as_bytes());
    }
}

#[test]
fn forwarding_headers_and_request_id() {
    let up = Upstream::start();
    let v = Setup::new(up.addr).start();
    // An untrusted peer's X-Forwarded-For is replaced, not extended.
    let r = send(v.addr, "GET /f HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nX-Request-Id: abc-123\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-request-id"),
        Some("abc-123"),
        "a well-formed id is kept"
    );
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    // A malformed id is replaced by a generated one.
    send(v.addr, "GET /f HTTP/1.1\r\nHost: a\r\nX-Request-Id: bad id with spaces\r\nConnection: close\r\n\r\n");
    let id = up
        .last()
        .header("x-request-id")
        .map(str::to_string)
        .unwrap_or_default();
    assert_eq!(id.len(), 32, "generated id: {id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[test]
fn trusted_proxy_x_forwarded_for_sets_the_client() {
    let up = Upstream::start();
    let v = Setup::new(up.addr)
        .extra("")
        .policy("policy:\n  mode: block\n  allowlist:\n    clients: [198.51.100.0/24]\n")
        .start();
    // Not trusted yet: the XFF claim cannot buy the allowlist.
    let attack = "/search?q=%3Cscript%3Ealert(1)%3C/script%3E";
    let r = send(v.addr, &format!("GET {attack} HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.7\r\nConnection: close\r\n\r\n"));
    assert_eq!(r.status, 403, "XFF from an untrusted peer is ignored");

    let v2 = Setup::new(up.addr)
        .policy("policy:\n  mode: block\n  allowlist:\n    clients: [198.51.100.0/24]\n")
        .extra("")
        .start_with_trusted();
    let r = send(v2.addr, &format!("GET {attack} HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6, 198.51.100.7\r\nConnection: close\r\n\r\n"));
    assert_eq!(
        r.status, 200,
        "the right-most untrusted hop is the client and it is allowlisted"
    );
    assert_eq!(
        up.last().header("x-forwarded-for"),
        Some("6.6.6.6, 198.51.100.7, 127.0.0.1")
    );
    let lines = v2.access_lines(1);
    assert!(lines[0].starts_with("198.51.100.7 - - ["), "{}", lines[0]);
    // The left-most entry is the client's own claim and is never believed.
    let r = send(v2.addr, &format!("GET {attack} HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.7, 6.6.6.6\r\nConnection: close\r\n\r\n"));
    assert_eq!(r.status, 403);
}

#[test]
fn an_upstream_that_is_down_gives_502_and_a_log_line() {
    let dead = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let v = Setup::new(dead).start();
    let r = v.get("/anything");
    assert_eq!(r.status, 502);
    assert!(
        v.wait_log("upstream"),
        "an error line names the upstream problem:\n{}",
        v.stderr()
    );
    let lines = v.access_lines(1);
    assert!(
        lines[0].contains("\"GET /anything HTTP/1.1\" 502 "),
        "{}",
        lines[0]
    );
}

#[test]
fn round_robin_over_an_upstream_group_skips_a_dead_server() {
    let a = Upstream::start();
    let b = Upstream::start();
    let dead = free_port();
    let v = Setup::new(a.addr)
        .upstreams(&format!("{}, {}, 127.0.0.1:{dead}", a.addr, b.addr))
        .start();
    // Give the health check (1 s interval) time to mark the dead server down.
    std::thread::sleep(Duration::from_millis(2500));
    let mut ok = 0;
    for _ in 0..12 {
        if v.get("/rr").status == 200 {
            ok += 1;
        }
    }
    assert_eq!(
        ok, 12,
        "no request goes to the dead server once it is marked down"
    );
    assert!(
        a.count() >= 3 && b.count() >= 3,
        "both live servers get traffic: {} / {}",
        a.count(),
        b.count()
    );
}

#[test]
fn tls_listener_and_tls_upstream_with_sni() {
    use pingora::tls::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let up = Upstream::start();
    // A terminates TLS with the test certificate; B proxies plain HTTP to A over TLS.
    let a = Setup::new(up.addr).tls_listener().start();
    let b = Setup::new(a.addr)
        .upstream_extra(&format!(
            "  tls: true\n  sni: localhost\n  verify_cert: true\n  ca_file: {}\n",
            crate::harness::repo()
                .join("tests/data/test_cert.pem")
                .display()
        ))
        .start();
    let r = b.get("/through-tls?x=1");
    assert_eq!(
        r.status,
        200,
        "{}\nB:\n{}\nA:\n{}",
        r.text(),
        b.stderr(),
        a.stderr()
    );
    assert_eq!(up.last().uri, "/through-tls?x=1");
    assert_eq!(
        up.last().header("x-forwarded-proto"),
        Some("https"),
        "A saw a TLS connection"
    );

    // A direct TLS client to A, checking the certificate it serves.
    let mut builder = SslConnector::builder(SslMethod::tls()).expect("ssl");
    builder
        .set_ca_file(crate::harness::repo().join("tests/data/test_cert.pem"))
        .expect("ca");
    builder.set_verify(SslVerifyMode::PEER);
    let conn = builder.build();
    let tcp = TcpStream::connect(a.addr).expect("connect");
    let mut tls = conn
        .connect("localhost", tcp)
        .expect("TLS handshake with the configured certificate");
    tls.write_all(b"GET /direct HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tls, &mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(up.last().uri, "/direct");
    // Attacks over TLS are blocked like any other.
    assert_eq!(b.get("/s?q=%3Cscript%3Ealert(1)%3C/script%3E").status, 403);
}

#[test]
fn an_upstream_certificate_that_does_not_verify_is_refused() {
    let up = Upstream::start();
    let a = Setup::new(up.addr).tls_listener().start();
    // The test certificate is self-signed: without it as the CA, verification must fail.
    let b = Setup::new(a.addr)
        .upstream_extra("  tls: true\n  sni: localhost\n")
        .start();
    assert_eq!(b.get("/x").status, 502);
    assert_eq!(up.count(), 0);
}
