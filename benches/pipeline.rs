//! Criterion benches for the learned stages and the whole per-request scoring: template
//! lookup, feature extraction, the isolation forests, the transformer, and `ModelSet`
//! scoring of one request (both pipeline stages: rules, template, session, forest,
//! transformer, ensemble, policy) and of a simulated hour's stream, with the shipped model
//! set (`models/`, via `config.yaml`), or one trained here on the committed access-log
//! sample when none is shipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vigil::config::Config;
use vigil::detectors::rules::RuleSet;
use vigil::features::{self, RequestFacts, ResponseFacts};
use vigil::models::ModelSet;
use vigil::pipeline::{self, RequestInput};
use vigil::record::Record;
use vigil::request::HttpRequest;
use vigil::session::{ClientState, Sessions};
use vigil::template::TemplateId;

fn model_set() -> (Config, ModelSet) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = Config::load(&root.join("config.yaml")).unwrap();
    let set = ModelSet::build(&cfg, 1).unwrap();
    if set.learned.is_some() {
        return (cfg, set);
    }
    let text = std::fs::read_to_string(root.join("tests/data/access_log.sample.log")).unwrap();
    let records: Vec<Record> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| Record::parse_line(l, i + 1).ok())
        .collect();
    let rules = RuleSet::load(&cfg.rules.paths).unwrap();
    let trained = vigil::learn::train(
        &records,
        &rules,
        &cfg.inspection,
        &Default::default(),
        |_, _, _| {},
    )
    .unwrap();
    let set = ModelSet::assemble(
        &cfg,
        1,
        Arc::new(rules),
        Some(Arc::new(trained.learned)),
        None,
    )
    .unwrap();
    (cfg, set)
}

fn request(target: &str) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        target: target.as_bytes().to_vec(),
        version: "HTTP/1.1".into(),
        headers: vec![
            ("host".into(), b"shop.example.com".to_vec()),
            ("user-agent".into(), b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36".to_vec()),
            ("accept".into(), b"text/html,application/xhtml+xml".to_vec()),
            ("referer".into(), b"https://shop.example.com/products".to_vec()),
            ("cookie".into(), b"session=9f2c1e7a4b; theme=dark".to_vec()),
        ],
        body: Vec::new(),
        body_truncated: false,
    }
}

/// A short browsing session of typical requests, replayed in a loop.
const TARGETS: [&str; 6] = [
    "/",
    "/products?page=2&sort=price",
    "/products/1042",
    "/static/css/app.css",
    "/images/products/1042.jpg",
    "/search?q=running+shoes&page=1",
];

fn bench_stages(c: &mut Criterion) {
    let (_, set) = model_set();
    let learned = set.learned.clone().unwrap();
    let now = chrono::Local::now().fixed_offset();

    let mut g = c.benchmark_group("template");
    g.throughput(Throughput::Elements(1));
    g.bench_function("lookup", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % TARGETS.len();
            learned.vocabulary.lookup("GET", black_box(TARGETS[i]))
        })
    });
    g.finish();

    let mut state = ClientState::new(0.0);
    for i in 0..20 {
        state.observe_request(i as f64, TemplateId(i % 5), 20);
        state.observe_response(i as f64, 200, 5000);
    }
    let template = learned.vocabulary.lookup("GET", TARGETS[1]);
    let facts = RequestFacts {
        time: now,
        method: "GET",
        target: TARGETS[1].as_bytes(),
        template,
        route: learned.vocabulary.route(template),
        site_requests: 12.0,
    };
    let response = ResponseFacts {
        status: 200,
        bytes: 5120,
        route: facts.route,
        site_failures: 0.0,
    };
    let mut g = c.benchmark_group("features");
    g.throughput(Throughput::Elements(1));
    g.bench_function("pre_and_post", |b| {
        b.iter(|| {
            let pre = features::pre(black_box(&facts), Some(&state), 20);
            features::post(&pre, &response, &state, 21.0)
        })
    });
    g.finish();

    if let Some(t) = &learned.transformer {
        let n = learned.vocabulary.len() as u32;
        let contexts: Vec<Vec<u32>> = (0..64u32)
            .map(|k| (0..19u32).map(|j| (k * 7 + j * 3) % n).collect())
            .collect();
        let mut g = c.benchmark_group("transformer");
        g.throughput(Throughput::Elements(1));
        // Every call runs the model (what a cache miss costs), full window of context.
        g.bench_function("inference_full_window", |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % contexts.len();
                t.model.nll(black_box(&contexts[i]), false, 3 % n)
            })
        });
        // A client's third request: a short context after BOS (the partial-window plan).
        g.bench_function("inference_session_start", |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % contexts.len();
                t.model.nll(black_box(&contexts[i][..2]), true, 3 % n)
            })
        });
        // The detector as the pipeline calls it, on a repeating browsing session.
        let session: Vec<TemplateId> = TARGETS
            .iter()
            .map(|p| learned.vocabulary.lookup("GET", p))
            .collect();
        g.bench_function("score_cached_session", |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % session.len();
                let ctx: Vec<TemplateId> =
                    (0..19).map(|k| session[(i + k) % session.len()]).collect();
                t.score(black_box(&ctx), false, session[i])
            })
        });
        g.finish();
    }

    let pre = features::pre(&facts, Some(&state), 20);
    let post = features::post(&pre, &response, &state, 21.0);
    let mut g = c.benchmark_group("forest");
    g.throughput(Throughput::Elements(1));
    g.bench_function("pre", |b| b.iter(|| learned.pre.score(black_box(&pre))));
    g.bench_function("post", |b| b.iter(|| learned.post.score(black_box(&post))));
    // Scoring one vector over and over keeps its paths in cache; live traffic does not.
    // 4096 different vectors (rates, sizes, gaps varied) walk different paths.
    let varied: Vec<_> = (0..4096u32)
        .map(|i| {
            let mut v = post;
            let f = |k: u32, m: u32| (i.wrapping_mul(k) % m) as f64 / m as f64;
            v[2] += f(7, 13) * 2.0;
            v[8] += f(11, 17) * 4.0;
            v[9] += f(13, 19) * 4.0;
            v[14] += f(17, 23) * 2.0;
            v[17] = f(19, 29) * 8.0;
            v[features::PRE + 1] += f(23, 31) * 3.0 - 1.5;
            v
        })
        .collect();
    g.bench_function("post_varied", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % varied.len();
            learned.post.score(black_box(&varied[i]))
        })
    });
    g.finish();
}

fn bench_model_set(c: &mut Criterion) {
    let (cfg, set) = model_set();
    let sessions = Sessions::new(cfg.sessions.clone());
    let requests: Vec<HttpRequest> = TARGETS.iter().map(|t| request(t)).collect();
    let mut g = c.benchmark_group("model_set");
    g.throughput(Throughput::Elements(1));
    for (name, clients) in [("one_client", 1u32), ("many_clients", 5000)] {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            let mut i = 0u32;
            b.iter(|| {
                i = i.wrapping_add(1);
                let client =
                    std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i % clients));
                let name = client.to_string();
                let req = &requests[i as usize % requests.len()];
                let input = RequestInput {
                    client,
                    client_name: &name,
                    time: chrono::Local::now().fixed_offset(),
                    host: "shop.example.com",
                    path: "/",
                    request: req,
                };
                let pre = pipeline::pre(&set, &sessions, black_box(&input));
                pipeline::post(&set, &sessions, &pre, 200, 5120)
            })
        });
    }
    g.finish();
}

/// A simulated hour of the shop's busiest traffic (another seed than the shipped set's
/// training day; one attack episode of each kind), scored in order with the log's clock as
/// `vigil score` scores it, each pass from a fresh model set, so with the transformer's cache
/// cold at the start: what a request costs on a realistic stream, cache misses included, where
/// `model_set` above cycles pages the cache already holds. Also prints, once, the per-request
/// distribution of one pass and the share of transformer scores its cache answered.
fn bench_replay(c: &mut Criterion) {
    let start = vigil::simulate::SimConfig::default().start + chrono::Duration::hours(11);
    let lines = vigil::simulate::simulate(&vigil::simulate::SimConfig {
        seed: 99,
        start,
        days: 1.0 / 24.0,
        scale: 1.0,
        episodes_per_type: 1,
    });
    let records: Vec<Record> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| Record::parse_line(&l.line, i + 1).ok())
        .collect();
    let fresh = || {
        let (cfg, set) = model_set();
        let sessions = Sessions::new(cfg.sessions.clone());
        (set, sessions)
    };

    let (set, sessions) = fresh();
    let mut took: Vec<f64> = records
        .iter()
        .map(|r| {
            let t0 = std::time::Instant::now();
            black_box(pipeline::score_record(&set, &sessions, r));
            t0.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
    let (hits, misses) = set
        .learned
        .as_ref()
        .and_then(|l| l.transformer.as_ref())
        .map_or((0, 0), |t| t.cache_stats());
    println!(
        "replay: {} requests of a simulated hour, whole ModelSet per request: median {:.1} µs, p90 {:.1}, p99 {:.1}, mean {:.1}; transformer cache {:.1}% of {} scores",
        took.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        took.iter().sum::<f64>() / took.len() as f64,
        100.0 * hits as f64 / (hits + misses).max(1) as f64,
        hits + misses
    );

    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function("simulated_hour", |b| {
        b.iter_batched(
            fresh,
            // Returned, so that criterion drops the set and its clients' state untimed.
            |(set, sessions)| {
                for r in &records {
                    black_box(pipeline::score_record(&set, &sessions, r));
                }
                (set, sessions)
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// Not a timing: the resident memory one client's session state costs, printed once: a client
/// of one user agent that requests directly (its window full), and one that also browses by
/// links (both lanes' windows full, and the 32 pages it was last served).
fn session_memory(_: &mut Criterion) {
    fn rss() -> usize {
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
            .map_or(0, |pages| pages * 4096)
    }
    let cfg = vigil::session::SessionConfig::default();
    let fill = |c: &mut vigil::session::ClientState| {
        for k in 0..cfg.window as u32 {
            let now = 1.0 + k as f64;
            c.continue_sequence(now, 7, TemplateId(k), cfg.window, cfg.idle_ttl);
            c.observe_request(now, TemplateId(k), cfg.window);
            c.observe_response(now, 200, 1000);
        }
    };
    let n = 100_000u32;
    // Both tables stay alive, so that the second does not reuse the first's freed memory.
    let mut tables = Vec::new();
    for browsing in [false, true] {
        let sessions = Sessions::new(cfg.clone());
        let before = rss();
        for i in 0..n {
            let key = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            sessions.with(&key, 1.0, |c| {
                fill(c);
                if browsing {
                    for p in 0..vigil::session::PAGES as u32 {
                        c.pages.note(1.0, 7, p);
                    }
                }
            });
            if browsing {
                sessions.with(&vigil::session::navigation_key(&key), 1.0, fill);
            }
        }
        let after = rss();
        println!(
            "session memory: {} clients (one user agent each{}) with full {}-template windows: {:.1} MB resident, {} bytes per client",
            n,
            if browsing { ", browsing by links: two lanes and 32 pages" } else { ", requests direct" },
            cfg.window,
            (after - before) as f64 / 1e6,
            (after - before) / n as usize
        );
        tables.push(sessions);
    }
}

criterion_group!(
    benches,
    session_memory,
    bench_stages,
    bench_model_set,
    bench_replay
);
criterion_main!(benches);
