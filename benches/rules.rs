//! Criterion benches for the pre-upstream signature stage: decoding (`normalize`) and the
//! whole rule engine (`RuleSet::inspect`: split + decode + match + report) on typical benign
//! requests and on attacks, with the shipped rule packs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vigil::config::{Inspection, OverLimit};
use vigil::detectors::rules::RuleSet;
use vigil::normalize::{normalize, Context};
use vigil::request::HttpRequest;

fn limits() -> Inspection {
    Inspection {
        body_limit: 65536,
        over_limit: OverLimit::InspectPrefix,
        max_request_line: 8192,
        max_header_value: 8192,
        max_args: 255,
    }
}

fn browser(method: &str, target: &str, extra: &[(&str, &str)], body: &str) -> HttpRequest {
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        ("host".into(), b"shop.example.com".to_vec()),
        ("user-agent".into(), b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36".to_vec()),
        ("accept".into(), b"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8".to_vec()),
        ("accept-language".into(), b"en-GB,en;q=0.9".to_vec()),
        ("accept-encoding".into(), b"gzip, deflate, br".to_vec()),
        ("referer".into(), b"https://shop.example.com/catalog/shoes?page=2".to_vec()),
        ("cookie".into(), b"session=9f2c1e7a4b; theme=dark; consent=1".to_vec()),
    ];
    for (k, v) in extra {
        headers.push((k.to_string(), v.as_bytes().to_vec()));
    }
    HttpRequest {
        method: method.into(),
        target: target.as_bytes().to_vec(),
        version: "HTTP/1.1".into(),
        headers,
        body: body.as_bytes().to_vec(),
        body_truncated: false,
    }
}

fn cases() -> Vec<(&'static str, HttpRequest)> {
    vec![
        ("benign_static", browser("GET", "/static/css/site.min.css?v=3.2.1", &[], "")),
        ("benign_page", browser("GET", "/catalog/shoes/running?size=42&color=blue&sort=price_asc&page=3", &[], "")),
        (
            "benign_form_post",
            browser(
                "POST",
                "/account/login",
                &[("content-type", "application/x-www-form-urlencoded")],
                "username=alice%40example.com&password=correct+horse+battery&remember=on&next=%2Faccount",
            ),
        ),
        (
            "benign_json_api",
            browser(
                "POST",
                "/api/v2/cart/items",
                &[("content-type", "application/json")],
                r#"{"sku":"SHOE-42-BLU","quantity":2,"options":{"gift":false,"note":"Happy birthday, Sam!"}}"#,
            ),
        ),
        ("attack_sqli", browser("GET", "/search?q=1%27%20UNION%20SELECT%20username,password%20FROM%20users--", &[], "")),
        ("attack_xss", browser("GET", "/search?q=%3Cimg%20src%3Dx%20onerror%3Dalert(document.cookie)%3E", &[], "")),
        ("attack_traversal", browser("GET", "/download?file=..%252f..%252f..%252fetc%252fpasswd", &[], "")),
    ]
}

fn bench_normalize(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize");
    let inputs: [(&str, &[u8], Context); 3] = [
        ("plain_value", b"running-shoes-blue", Context::Form),
        (
            "encoded_url",
            b"https%3A%2F%2Fshop.example.com%2Fcart%3Fid%3D42%26ref%3Dmail",
            Context::Form,
        ),
        (
            "evasion",
            b"%253Cscr%00ipt%253E%26%23x61%3Blert(1)%252f%252e%252e%252f",
            Context::Form,
        ),
    ];
    for (name, input, ctx) in inputs {
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(name), &input, |b, i| {
            b.iter(|| normalize(black_box(i), ctx))
        });
    }
    g.finish();
}

fn bench_rules(c: &mut Criterion) {
    let rules = match RuleSet::load(&[std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/rules"
    ))]) {
        Ok(r) => r,
        Err(e) => panic!("shipped rule packs must load: {e:?}"),
    };
    let lim = limits();
    let mut g = c.benchmark_group("rules");
    for (name, req) in cases() {
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(name), &req, |b, r| {
            b.iter(|| rules.inspect(black_box(r), &lim))
        });
    }
    // The cases above repeat one request, so from the second iteration on its header and
    // cookie values are answered by the rule set's memory of clean values, as for a returning
    // visitor. Here every request comes with a user agent and cookies not seen in the last
    // 16,384 requests (more than the memory holds): the cost of a first visit.
    let visitors: Vec<HttpRequest> = (0..16_384)
        .map(|i| {
            let mut r = browser(
                "GET",
                "/catalog/shoes/running?size=42&color=blue&sort=price_asc&page=3",
                &[],
                "",
            );
            for (name, value) in r.headers.iter_mut() {
                if name == "user-agent" {
                    *value = format!("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.{i}.0 Safari/537.36").into_bytes();
                } else if name == "cookie" {
                    *value = format!("session=9f2c{i:06x}; theme=dark; consent=1").into_bytes();
                }
            }
            r
        })
        .collect();
    g.bench_function("benign_page_first_visit", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % visitors.len();
            rules.inspect(black_box(&visitors[i]), &lim)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_normalize, bench_rules);
criterion_main!(benches);
