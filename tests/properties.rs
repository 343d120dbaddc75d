//! Property tests: the parser, the normaliser and the rule engine never panic on arbitrary
//! input, stay bounded, and the access-log writer and parser round-trip any bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, FixedOffset};
use proptest::prelude::*;
use vigil::config::{Inspection, OverLimit};
use vigil::detectors::rules::RuleSet;
use vigil::normalize::{normalize, Context};
use vigil::record::Record;
use vigil::request::HttpRequest;

fn rules() -> &'static RuleSet {
    static RULES: std::sync::OnceLock<RuleSet> = std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        RuleSet::load(&[std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/rules"
        ))])
        .expect("shipped rules")
    })
}

fn limits() -> Inspection {
    Inspection {
        body_limit: 65536,
        over_limit: OverLimit::InspectPrefix,
        max_request_line: 8192,
        max_header_value: 8192,
        max_args: 64,
    }
}

/// Bytes biased towards the characters decoders and parsers care about.
fn tricky_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            any::<u8>(),
            prop::sample::select(b"%uU+&#;\\/.*-\"'<>=?[]{}() \t\r\n\x00\xc0\xc1\xe0\xef\xbc\x80\xaf0123456789abcdefABCDEF".to_vec()),
        ],
        0..max,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn normalize_never_panics_and_stays_bounded(input in tricky_bytes(300), ctx in prop::sample::select(vec![Context::Form, Context::Path, Context::Plain])) {
        let f = normalize(&input, ctx);
        // Decoding only shrinks, except %uXXXX and entities that may expand to 4 UTF-8 bytes.
        prop_assert!(f.decoded.len() <= input.len() * 4 + 4);
        prop_assert!(!f.decoded.contains(&0));
        if let Some(s) = &f.sql { prop_assert!(s.len() <= f.decoded.len() + 2); }
    }

    #[test]
    fn log_lines_round_trip_any_bytes(
        ua in tricky_bytes(120),
        referer in tricky_bytes(60),
        target in tricky_bytes(80),
        user in prop::option::of("[a-z]{1,8}"),
        status in 100u16..600,
        bytes in any::<u32>(),
    ) {
        // A literal "-" is how the format writes an absent field: not distinguishable.
        prop_assume!(ua != b"-" && referer != b"-");
        let time: DateTime<FixedOffset> = DateTime::parse_from_str("01/Feb/2024:03:04:05 +0100", "%d/%b/%Y:%H:%M:%S %z").unwrap();
        let mut line = b"GET /".to_vec();
        line.extend_from_slice(&target);
        line.extend_from_slice(b" HTTP/1.1");
        let r = Record {
            client: "203.0.113.5".into(),
            remote_user: user.map(String::into_bytes),
            time,
            request_line: line,
            status,
            bytes: bytes as u64,
            referer: Some(referer),
            user_agent: Some(ua),
        };
        let text = r.to_combined();
        prop_assert!(!text.contains('\n') && !text.contains('\r'));
        let back = Record::parse_line(&text, 1).unwrap();
        prop_assert_eq!(back, r);
    }

    #[test]
    fn parser_never_panics(line in "\\PC{0,200}") {
        let _ = Record::parse_line(&line, 1);
    }

    #[test]
    fn rule_engine_never_panics_on_arbitrary_requests(
        target in tricky_bytes(200),
        body in tricky_bytes(400),
        ct in prop::sample::select(vec!["application/x-www-form-urlencoded", "application/json", "multipart/form-data; boundary=x", "text/xml", "image/png", ""]),
        cookie in tricky_bytes(80),
    ) {
        let mut t = b"/".to_vec();
        t.extend_from_slice(&target);
        let req = HttpRequest {
            method: "POST".into(),
            target: t,
            version: "HTTP/1.1".into(),
            headers: vec![("content-type".into(), ct.as_bytes().to_vec()), ("cookie".into(), cookie)],
            body,
            body_truncated: false,
        };
        let report = rules().inspect(&req, &limits());
        for m in &report.matches {
            prop_assert!(!m.snippet.contains('"') && !m.snippet.bytes().any(|b| b < 0x20));
        }
    }
}
