//! The combined-format access-log record: built from a live request/response by the proxy,
//! parsed from existing nginx/Apache logs, and written back as a combined-format line with
//! nginx's escaping. Pure data: no I/O, and a line that does not parse says why.

use std::fmt::Write as _;

use chrono::{DateTime, FixedOffset};

/// One request as an access log knows it. Byte fields keep exactly what the client sent
/// (header values need not be UTF-8); escaping happens only when a line is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Client address as logged (`$remote_addr`).
    pub client: String,
    /// `$remote_user`: the user name of HTTP Basic authentication, if any.
    pub remote_user: Option<Vec<u8>>,
    pub time: DateTime<FixedOffset>,
    /// The request line as received, e.g. `GET /a?b=1 HTTP/1.1`.
    pub request_line: Vec<u8>,
    pub status: u16,
    /// Response body bytes sent (`$body_bytes_sent`).
    pub bytes: u64,
    pub referer: Option<Vec<u8>>,
    pub user_agent: Option<Vec<u8>>,
}

/// Why a log line could not be read; carries the line number for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// nginx's `$time_local` layout.
pub const TIME_FORMAT: &str = "%d/%b/%Y:%H:%M:%S %z";

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Append `value` escaped as nginx's `log_format` (escape=default) does: `"`, `\`, control
/// bytes and bytes >= 0x7f become `\xHH`. This is what makes a forged second log line
/// impossible: no byte of a client-supplied field can end the quoted field or the line.
pub fn escape_nginx_into(out: &mut String, value: &[u8]) {
    for &b in value {
        if b < 0x20 || b == b'"' || b == b'\\' || b >= 0x7f {
            out.push('\\');
            out.push('x');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push(b as char);
        }
    }
}

/// `escape_nginx_into` into a new string.
pub fn escape_nginx(value: &[u8]) -> String {
    let mut s = String::with_capacity(value.len());
    escape_nginx_into(&mut s, value);
    s
}

impl Record {
    /// The line nginx's `log_format combined` writes for this record (no trailing newline):
    /// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
    /// "$http_referer" "$http_user_agent"`.
    pub fn to_combined(&self) -> String {
        let mut s = String::with_capacity(160 + self.request_line.len());
        self.write_combined(&mut s);
        s
    }

    pub fn write_combined(&self, s: &mut String) {
        escape_nginx_into(s, self.client.as_bytes());
        s.push_str(" - ");
        optional_field(s, self.remote_user.as_deref());
        s.push_str(" [");
        let _ = write!(s, "{}", self.time.format(TIME_FORMAT));
        s.push_str("] \"");
        escape_nginx_into(s, &self.request_line);
        let _ = write!(s, "\" {} {} \"", self.status, self.bytes);
        optional_field(s, self.referer.as_deref());
        s.push_str("\" \"");
        optional_field(s, self.user_agent.as_deref());
        s.push('"');
    }

    /// Method, target and protocol of the request line (lossy for non-UTF-8 bytes).
    pub fn request_parts(&self) -> (String, String, String) {
        split_request_line(&self.request_line)
    }

    /// Parse one combined- (or common-) format line, nginx or Apache flavoured. `line_no` is
    /// only used in the error.
    pub fn parse_line(line: &str, line_no: usize) -> Result<Record, ParseError> {
        let err = |reason: &str| ParseError {
            line: line_no,
            reason: reason.to_string(),
        };
        let line = line.trim_end_matches(['\r', '\n']);
        let mut rest = line;
        let client = take_token(&mut rest).ok_or_else(|| err("missing client address"))?;
        let _ident = take_token(&mut rest).ok_or_else(|| err("missing ident field"))?;
        let user = take_user(&mut rest).ok_or_else(|| err("missing remote user field"))?;
        rest = rest.trim_start_matches(' ');
        if !rest.starts_with('[') {
            return Err(err("expected '[' opening the time field"));
        }
        let close = rest
            .find(']')
            .ok_or_else(|| err("time field has no closing ']'"))?;
        let time = DateTime::parse_from_str(&rest[1..close], TIME_FORMAT)
            .map_err(|e| err(&format!("bad time {:?}: {e}", &rest[1..close])))?;
        rest = rest[close + 1..].trim_start_matches(' ');
        if !rest.starts_with('"') {
            return Err(err("expected '\"' opening the request field"));
        }
        let (request_raw, after) = split_request_field(&rest[1..])
            .ok_or_else(|| err("request field is not followed by a status and a byte count"))?;
        let request_line = unescape(request_raw);
        rest = after.trim_start_matches(' ');
        let status_s = take_token(&mut rest).ok_or_else(|| err("missing status"))?;
        let status: u16 = status_s
            .parse()
            .ok()
            .filter(|s| (100..=999).contains(s))
            .ok_or_else(|| err(&format!("bad status {status_s:?}")))?;
        let bytes_s = take_token(&mut rest).ok_or_else(|| err("missing byte count"))?;
        let bytes = if bytes_s == "-" {
            0
        } else {
            bytes_s
                .parse()
                .map_err(|_| err(&format!("bad byte count {bytes_s:?}")))?
        };
        rest = rest.trim_start_matches(' ');
        let (referer, user_agent) = if rest.is_empty() {
            (None, None) // common log format
        } else {
            let (referer, after) =
                take_quoted(rest, false).ok_or_else(|| err("malformed referer field"))?;
            let after = after.trim_start_matches(' ');
            let (ua, _extra) = if after.is_empty() {
                ("-", "")
            } else {
                take_quoted(after, true).ok_or_else(|| err("malformed user-agent field"))?
            };
            (dash_none(referer), dash_none(ua))
        };
        Ok(Record {
            client: client.to_string(),
            remote_user: user,
            time,
            request_line,
            status,
            bytes,
            referer,
            user_agent,
        })
    }
}

fn optional_field(s: &mut String, v: Option<&[u8]>) {
    match v {
        Some(v) => escape_nginx_into(s, v),
        None => s.push('-'),
    }
}

/// Split `METHOD target PROTOCOL`. The target may itself contain spaces (attack payloads
/// logged raw), so the method is the first token and the protocol the last one when it
/// looks like `HTTP/x`.
pub fn split_request_line(line: &[u8]) -> (String, String, String) {
    let s = String::from_utf8_lossy(line);
    let s = s.trim();
    let (method, rest) = match s.find(' ') {
        Some(i) => (&s[..i], s[i + 1..].trim_start()),
        None => return (s.to_string(), String::new(), String::new()),
    };
    match rest.rfind(' ') {
        Some(i) if rest[i + 1..].starts_with("HTTP/") => (
            method.to_string(),
            rest[..i].trim_end().to_string(),
            rest[i + 1..].to_string(),
        ),
        _ if rest.starts_with("HTTP/") => (method.to_string(), String::new(), rest.to_string()),
        _ => (method.to_string(), rest.to_string(), String::new()),
    }
}

fn take_token<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let s = rest.trim_start_matches(' ');
    if s.is_empty() {
        return None;
    }
    let end = s.find(' ').unwrap_or(s.len());
    *rest = &s[end..];
    Some(&s[..end])
}

/// The remote-user field: `-`, a bare token, or (rarely) a quoted string.
fn take_user(rest: &mut &str) -> Option<Option<Vec<u8>>> {
    let s = rest.trim_start_matches(' ');
    if s.starts_with('"') {
        let (v, after) = take_quoted(s, false)?;
        *rest = after;
        return Some(dash_none(v));
    }
    let tok = take_token(rest)?;
    Some(dash_none(tok))
}

fn dash_none(v: &str) -> Option<Vec<u8>> {
    if v == "-" {
        None
    } else {
        Some(unescape(v))
    }
}

/// The request field ends at the closing quote that is followed by ` <status> <bytes>`;
/// unescaped quotes inside (old Apache, hand-made logs) do not end it early.
fn split_request_field(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => {
                if followed_by_status(&s[i + 1..]) {
                    return Some((&s[..i], &s[i + 1..]));
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

fn followed_by_status(s: &str) -> bool {
    let t = s.trim_start_matches(' ');
    if t.len() == s.len() {
        return false;
    }
    let mut parts = t.splitn(3, ' ');
    let status = parts.next().unwrap_or("");
    let bytes = parts.next().unwrap_or("");
    status.len() == 3
        && status.bytes().all(|c| c.is_ascii_digit())
        && (bytes == "-" || (!bytes.is_empty() && bytes.bytes().all(|c| c.is_ascii_digit())))
}

/// A quoted field starting at `s[0] == '"'`: returns its raw (still escaped) content and
/// what follows. For the last field, an unescaped quote inside is tolerated: the field ends
/// at the last quote that is followed by the end of the line or by a space and a quote.
fn take_quoted(s: &str, last: bool) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    if b.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    let mut candidate = None;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => {
                let after = &s[i + 1..];
                let ends = after.is_empty() || after.starts_with(" \"") || after.starts_with(' ');
                if ends {
                    if !last {
                        return Some((&s[1..i], after));
                    }
                    candidate = Some(i);
                    if after.is_empty() {
                        break;
                    }
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    candidate.map(|i| (&s[1..i], &s[i + 1..]))
}

/// Undo log escaping: nginx `\xHH`, Apache `\"`, `\\`, `\n`, `\t`, `\r`.
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    if !b.contains(&b'\\') {
        return b.to_vec();
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'x' if i + 3 < b.len() => match (hex_val(b[i + 2]), hex_val(b[i + 3])) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 4;
                        continue;
                    }
                    _ => out.push(b'\\'),
                },
                b'"' => {
                    out.push(b'"');
                    i += 2;
                    continue;
                }
                b'\\' => {
                    out.push(b'\\');
                    i += 2;
                    continue;
                }
                b'n' => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                b't' => {
                    out.push(b'\t');
                    i += 2;
                    continue;
                }
                b'r' => {
                    out.push(b'\r');
                    i += 2;
                    continue;
                }
                _ => out.push(b'\\'),
            }
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> DateTime<FixedOffset> {
        DateTime::parse_from_str("17/May/2015:10:05:03 +0000", TIME_FORMAT).unwrap()
    }

    #[test]
    fn writes_nginx_combined_with_escaping() {
        let r = Record {
            client: "10.0.0.1".into(),
            remote_user: None,
            time: t(),
            request_line: b"GET /a?q=\"x\" HTTP/1.1".to_vec(),
            status: 200,
            bytes: 0,
            referer: None,
            user_agent: Some(
                b"evil\"\n10.0.0.2 - - [x] \"GET / HTTP/1.1\" 200 1 \"-\" \"\xc3\xa9\\".to_vec(),
            ),
        };
        let line = r.to_combined();
        assert_eq!(
            line,
            "10.0.0.1 - - [17/May/2015:10:05:03 +0000] \"GET /a?q=\\x22x\\x22 HTTP/1.1\" 200 0 \"-\" \"evil\\x22\\x0A10.0.0.2 - - [x] \\x22GET / HTTP/1.1\\x22 200 1 \\x22-\\x22 \\x22\\xC3\\xA9\\x5C\""
        );
        assert!(!line.contains('\n'));
        let back = Record::parse_line(&line, 1).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn parses_apache_sample_line() {
        let l = r#"83.149.9.216 - - [17/May/2015:10:05:03 +0000] "GET /presentations/logstash-monitorama-2013/images/kibana-search.png HTTP/1.1" 200 203023 "http://semicomplete.com/presentations/logstash-monitorama-2013/" "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_9_1) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/32.0.1700.77 Safari/537.36""#;
        let r = Record::parse_line(l, 1).unwrap();
        assert_eq!(r.client, "83.149.9.216");
        assert_eq!(r.status, 200);
        assert_eq!(r.bytes, 203023);
        assert_eq!(
            r.request_parts().1,
            "/presentations/logstash-monitorama-2013/images/kibana-search.png"
        );
        assert_eq!(r.to_combined(), l);
    }

    #[test]
    fn parses_apache_escapes_spaces_ipv6_and_dashes() {
        let l = r#"2001:db8::1 - bob [01/Jan/2020:00:00:00 -0500] "GET /x?a=1 union select "pw" from t HTTP/1.0" 404 - "-" "say \"hi\"""#;
        let r = Record::parse_line(l, 7).unwrap();
        assert_eq!(r.client, "2001:db8::1");
        assert_eq!(r.remote_user.as_deref(), Some(&b"bob"[..]));
        assert_eq!(r.request_parts().1, "/x?a=1 union select \"pw\" from t");
        assert_eq!(r.bytes, 0);
        assert_eq!(r.referer, None);
        assert_eq!(r.user_agent.as_deref(), Some(&b"say \"hi\""[..]));
        let common = r#"1.2.3.4 - - [01/Jan/2020:00:00:00 +0000] "GET / HTTP/1.1" 200 12"#;
        assert_eq!(Record::parse_line(common, 1).unwrap().user_agent, None);
    }

    #[test]
    fn bad_lines_say_why_and_where() {
        let e = Record::parse_line("garbage", 42).unwrap_err();
        assert_eq!(e.line, 42);
        let e = Record::parse_line(r#"1.2.3.4 - - [nope] "GET / HTTP/1.1" 200 1 "-" "-""#, 3)
            .unwrap_err();
        assert!(e.reason.contains("bad time"), "{e}");
        let e = Record::parse_line(
            r#"1.2.3.4 - - [01/Jan/2020:00:00:00 +0000] "GET / HTTP/1.1" abc 1"#,
            3,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("line 3:"), "{e}");
    }
}
