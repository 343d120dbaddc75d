//! The request as the detectors see it (a plain type, no Pingora), and its split into the
//! parts rules target: path, query and body arguments (form, JSON, multipart), headers,
//! cookies and the request line. Pure; bounded by the configured argument limit.

use std::borrow::Cow;

/// A request head plus the inspected prefix of its body.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    pub method: String,
    /// The request target exactly as received (`/a/b?c=d`).
    pub target: Vec<u8>,
    /// `HTTP/1.1`, `HTTP/2`...
    pub version: String,
    /// Header names lower-cased, values as received, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The inspected body bytes (at most the configured body limit).
    pub body: Vec<u8>,
    /// True when the body was longer than what was inspected.
    pub body_truncated: bool,
}

impl HttpRequest {
    /// First value of a header (name lower-case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The request line as it appears in an access log.
    pub fn request_line(&self) -> Vec<u8> {
        let mut l =
            Vec::with_capacity(self.method.len() + self.target.len() + self.version.len() + 2);
        l.extend_from_slice(self.method.as_bytes());
        l.push(b' ');
        l.extend_from_slice(&self.target);
        l.push(b' ');
        l.extend_from_slice(self.version.as_bytes());
        l
    }

    pub fn path(&self) -> &[u8] {
        match self.target.iter().position(|&b| b == b'?') {
            Some(q) => &self.target[..q],
            None => &self.target,
        }
    }

    pub fn query(&self) -> Option<&[u8]> {
        self.target
            .iter()
            .position(|&b| b == b'?')
            .map(|q| &self.target[q + 1..])
    }
}

/// Where in the request a part comes from. Rules name the kinds they target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PartKind {
    RequestLine = 0,
    Path,
    QueryName,
    QueryValue,
    BodyName,
    BodyValue,
    /// A body that is not form, JSON or multipart (XML, plain text...), or one that failed
    /// to parse as its declared type.
    BodyRaw,
    FileName,
    Header,
    CookieName,
    CookieValue,
}

impl PartKind {
    pub const ALL: [PartKind; 11] = [
        PartKind::RequestLine,
        PartKind::Path,
        PartKind::QueryName,
        PartKind::QueryValue,
        PartKind::BodyName,
        PartKind::BodyValue,
        PartKind::BodyRaw,
        PartKind::FileName,
        PartKind::Header,
        PartKind::CookieName,
        PartKind::CookieValue,
    ];

    pub fn bit(self) -> u16 {
        1 << (self as u8)
    }

    /// The name used in decision logs (`field`).
    pub fn as_str(self) -> &'static str {
        match self {
            PartKind::RequestLine => "request_line",
            PartKind::Path => "path",
            PartKind::QueryName => "query_name",
            PartKind::QueryValue => "query",
            PartKind::BodyName => "body_name",
            PartKind::BodyValue => "body",
            PartKind::BodyRaw => "body_raw",
            PartKind::FileName => "filename",
            PartKind::Header => "header",
            PartKind::CookieName => "cookie_name",
            PartKind::CookieValue => "cookie",
        }
    }

    /// Parts whose name is a parameter name that exclusions can refer to.
    pub fn is_parameter(self) -> bool {
        matches!(
            self,
            PartKind::QueryValue | PartKind::BodyValue | PartKind::CookieValue | PartKind::FileName
        )
    }
}

/// One inspectable value.
#[derive(Debug, Clone)]
pub struct Part<'a> {
    pub kind: PartKind,
    /// Argument, header or cookie name (empty for path, request line, raw body).
    pub name: Cow<'a, [u8]>,
    pub value: Cow<'a, [u8]>,
}

/// Structural facts noticed while splitting, reported as protocol anomalies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SplitAnomalies {
    pub too_many_args: bool,
    pub malformed_body: bool,
}

/// Split a request into the parts rules look at. At most `max_args` arguments are taken from
/// each of query, body and cookies.
pub fn split(req: &HttpRequest, max_args: usize) -> (Vec<Part<'_>>, SplitAnomalies) {
    let mut parts = Vec::with_capacity(16);
    let mut an = SplitAnomalies::default();
    let line = req.request_line();
    parts.push(Part {
        kind: PartKind::RequestLine,
        name: Cow::Borrowed(b""),
        value: Cow::Owned(line),
    });
    parts.push(Part {
        kind: PartKind::Path,
        name: Cow::Borrowed(b""),
        value: Cow::Borrowed(req.path()),
    });
    if let Some(q) = req.query() {
        an.too_many_args |= split_form(
            q,
            PartKind::QueryName,
            PartKind::QueryValue,
            max_args,
            &mut parts,
        );
    }
    for (name, value) in &req.headers {
        if name == "cookie" {
            an.too_many_args |= split_cookies(value, max_args, &mut parts);
        } else {
            parts.push(Part {
                kind: PartKind::Header,
                name: Cow::Borrowed(name.as_bytes()),
                value: Cow::Borrowed(value),
            });
        }
    }
    if !req.body.is_empty() {
        let ct = req
            .header("content-type")
            .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase())
            .unwrap_or_default();
        split_body(req, &ct, max_args, &mut parts, &mut an);
    }
    (parts, an)
}

/// `a=1&b=2` into name and value parts (still encoded: the normaliser decodes them).
fn split_form<'a>(
    s: &'a [u8],
    nk: PartKind,
    vk: PartKind,
    max: usize,
    out: &mut Vec<Part<'a>>,
) -> bool {
    let mut n = 0;
    for pair in s.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        n += 1;
        if n > max {
            return true;
        }
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(e) => (&pair[..e], &pair[e + 1..]),
            None => (pair, &b""[..]),
        };
        out.push(Part {
            kind: nk,
            name: Cow::Borrowed(b""),
            value: Cow::Borrowed(name),
        });
        out.push(Part {
            kind: vk,
            name: decode_name(name),
            value: Cow::Borrowed(value),
        });
    }
    false
}

/// Argument names are compared decoded (exclusions name `q`, not `%71`).
fn decode_name(name: &[u8]) -> Cow<'_, [u8]> {
    if !name.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(name);
    }
    let mut out = Vec::with_capacity(name.len());
    crate::normalize::percent_decode(name, true, &mut out);
    Cow::Owned(out)
}

fn split_cookies<'a>(v: &'a [u8], max: usize, out: &mut Vec<Part<'a>>) -> bool {
    let mut n = 0;
    for c in v.split(|&b| b == b';') {
        let c = trim(c);
        if c.is_empty() {
            continue;
        }
        n += 1;
        if n > max {
            return true;
        }
        let (name, value) = match c.iter().position(|&b| b == b'=') {
            Some(e) => (&c[..e], &c[e + 1..]),
            None => (c, &b""[..]),
        };
        out.push(Part {
            kind: PartKind::CookieName,
            name: Cow::Borrowed(b""),
            value: Cow::Borrowed(name),
        });
        out.push(Part {
            kind: PartKind::CookieValue,
            name: Cow::Borrowed(name),
            value: Cow::Borrowed(value),
        });
    }
    false
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

fn split_body<'a>(
    req: &'a HttpRequest,
    ct: &str,
    max: usize,
    out: &mut Vec<Part<'a>>,
    an: &mut SplitAnomalies,
) {
    let body = req.body.as_slice();
    let raw = |out: &mut Vec<Part<'a>>| {
        out.push(Part {
            kind: PartKind::BodyRaw,
            name: Cow::Borrowed(b""),
            value: Cow::Borrowed(body),
        })
    };
    if ct.starts_with("application/x-www-form-urlencoded") {
        an.too_many_args |= split_form(body, PartKind::BodyName, PartKind::BodyValue, max, out);
    } else if ct.contains("json") {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => {
                let mut n = 0;
                walk_json(v, "", max, &mut n, out);
                an.too_many_args |= n > max;
            }
            Err(_) => {
                // A truncated prefix is expected to fail; anything else is malformed.
                an.malformed_body |= !req.body_truncated;
                raw(out);
            }
        }
    } else if ct.starts_with("multipart/form-data") {
        // The boundary is case-sensitive: take it from the header as sent.
        let raw_ct = req
            .header("content-type")
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        match boundary(&raw_ct) {
            Some(b) => {
                if !split_multipart(body, b.as_bytes(), max, out) && !req.body_truncated {
                    an.malformed_body = true;
                    raw(out);
                }
            }
            None => {
                an.malformed_body = true;
                raw(out);
            }
        }
    } else if is_binary_type(ct) {
        // Images, archives, octet streams: signatures for text attacks do not apply.
    } else {
        raw(out);
    }
}

fn is_binary_type(ct: &str) -> bool {
    [
        "image/",
        "audio/",
        "video/",
        "font/",
        "application/octet-stream",
        "application/zip",
        "application/gzip",
        "application/pdf",
        "application/grpc",
        "application/protobuf",
    ]
    .iter()
    .any(|p| ct.starts_with(p))
}

/// Consumes the parsed document so strings move into the parts without another copy.
fn walk_json<'a>(
    v: serde_json::Value,
    key: &str,
    max: usize,
    n: &mut usize,
    out: &mut Vec<Part<'a>>,
) {
    if *n > max {
        return;
    }
    match v {
        serde_json::Value::String(s) => {
            *n += 1;
            out.push(Part {
                kind: PartKind::BodyValue,
                name: Cow::Owned(key.as_bytes().to_vec()),
                value: Cow::Owned(s.into_bytes()),
            });
        }
        serde_json::Value::Array(items) => {
            for item in items {
                walk_json(item, key, max, n, out);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map {
                *n += 1;
                walk_json(item, &k, max, n, out);
                out.push(Part {
                    kind: PartKind::BodyName,
                    name: Cow::Borrowed(b""),
                    value: Cow::Owned(k.into_bytes()),
                });
            }
        }
        // Numbers, booleans and null carry no text payload.
        _ => {}
    }
}

fn boundary(ct: &str) -> Option<String> {
    ct.split(';').map(str::trim).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then_some(v)
            .map(|b| b.trim_matches('"').to_string())
            .filter(|b| !b.is_empty() && b.len() <= 200)
    })
}

/// Split a multipart body; field values and file names become parts, file contents do not
/// (unless they are declared as text). Returns false when no part could be read.
fn split_multipart<'a>(
    body: &'a [u8],
    boundary: &[u8],
    max: usize,
    out: &mut Vec<Part<'a>>,
) -> bool {
    let mut delim = Vec::with_capacity(boundary.len() + 2);
    delim.extend_from_slice(b"--");
    delim.extend_from_slice(boundary);
    let mut found = 0;
    let mut pos = match find(body, &delim) {
        Some(p) => p + delim.len(),
        None => return false,
    };
    loop {
        if body[pos..].starts_with(b"--") {
            break; // closing delimiter
        }
        let Some(head_end) = find(&body[pos..], b"\r\n\r\n").map(|p| pos + p) else {
            break;
        };
        let head = &body[pos..head_end];
        let content_start = head_end + 4;
        let next = find(&body[content_start..], &delim).map(|p| content_start + p);
        let content_end = next.map_or(body.len(), |n| n.saturating_sub(2).max(content_start));
        let content = &body[content_start..content_end];
        found += 1;
        if found > max {
            break;
        }
        let head_s = String::from_utf8_lossy(head);
        let mut name = Vec::new();
        let mut filename = None;
        let mut text = true;
        for line in head_s.split("\r\n") {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("content-disposition:") {
                name = disposition_param(line, "name")
                    .unwrap_or_default()
                    .into_bytes();
                filename = disposition_param(line, "filename");
            } else if let Some(t) = lower.strip_prefix("content-type:") {
                let t = t.trim();
                text = t.starts_with("text/") || t.contains("json") || t.contains("xml");
            }
        }
        match filename {
            Some(f) => {
                out.push(Part {
                    kind: PartKind::FileName,
                    name: Cow::Owned(name.clone()),
                    value: Cow::Owned(f.into_bytes()),
                });
                if text {
                    out.push(Part {
                        kind: PartKind::BodyValue,
                        name: Cow::Owned(name),
                        value: Cow::Borrowed(content),
                    });
                }
            }
            None => {
                out.push(Part {
                    kind: PartKind::BodyName,
                    name: Cow::Borrowed(b""),
                    value: Cow::Owned(name.clone()),
                });
                out.push(Part {
                    kind: PartKind::BodyValue,
                    name: Cow::Owned(name),
                    value: Cow::Borrowed(content),
                });
            }
        }
        match next {
            Some(n) => pos = n + delim.len(),
            None => break,
        }
    }
    found > 0
}

fn disposition_param(line: &str, key: &str) -> Option<String> {
    for p in line.split(';').skip(1) {
        let p = p.trim();
        if let Some((k, v)) = p.split_once('=') {
            if k.trim().eq_ignore_ascii_case(key) {
                return Some(v.trim().trim_matches('"').to_string());
            }
        }
    }
    None
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    if n.is_empty() || h.len() < n.len() {
        return None;
    }
    h.windows(n.len()).position(|w| w == n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, ct: &str, body: &str) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            target: target.as_bytes().to_vec(),
            version: "HTTP/1.1".into(),
            headers: vec![
                ("content-type".into(), ct.as_bytes().to_vec()),
                ("cookie".into(), b"sid=abc; theme=dark".to_vec()),
            ],
            body: body.as_bytes().to_vec(),
            body_truncated: false,
        }
    }

    fn values(parts: &[Part<'_>], kind: PartKind) -> Vec<(String, String)> {
        parts
            .iter()
            .filter(|p| p.kind == kind)
            .map(|p| {
                (
                    String::from_utf8_lossy(&p.name).into(),
                    String::from_utf8_lossy(&p.value).into(),
                )
            })
            .collect()
    }

    #[test]
    fn splits_query_cookies_and_form() {
        let r = req(
            "/s?q=a%20b&x",
            "application/x-www-form-urlencoded",
            "user=bob&pw=1",
        );
        let (parts, an) = split(&r, 10);
        assert_eq!(
            values(&parts, PartKind::QueryValue),
            vec![("q".into(), "a%20b".into()), ("x".into(), "".into())]
        );
        assert_eq!(
            values(&parts, PartKind::CookieValue)[1],
            ("theme".into(), "dark".into())
        );
        assert_eq!(
            values(&parts, PartKind::BodyValue)[0],
            ("user".into(), "bob".into())
        );
        assert_eq!(an, SplitAnomalies::default());
    }

    #[test]
    fn splits_json_keys_and_strings() {
        let r = req(
            "/api",
            "application/json",
            r#"{"a":{"b":["x","y"]},"n":1,"<k>":"v"}"#,
        );
        let (parts, _) = split(&r, 10);
        let v = values(&parts, PartKind::BodyValue);
        assert!(
            v.contains(&("b".into(), "x".into())) && v.contains(&("<k>".into(), "v".into())),
            "{v:?}"
        );
        assert!(values(&parts, PartKind::BodyName)
            .iter()
            .any(|(_, k)| k == "<k>"));
    }

    #[test]
    fn splits_multipart_fields_and_filenames() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"../../shell.php\"\r\nContent-Type: application/octet-stream\r\n\r\n\x00\x01bin\r\n--XyZ--\r\n";
        let r = req("/up", "multipart/form-data; boundary=XyZ", body);
        let (parts, an) = split(&r, 10);
        assert_eq!(
            values(&parts, PartKind::BodyValue),
            vec![("title".into(), "hello".into())]
        );
        assert_eq!(
            values(&parts, PartKind::FileName),
            vec![("f".into(), "../../shell.php".into())]
        );
        assert!(!an.malformed_body);
    }

    #[test]
    fn counts_too_many_args() {
        let r = req("/?a=1&b=2&c=3", "text/plain", "");
        assert!(split(&r, 2).1.too_many_args);
    }
}
