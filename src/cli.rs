//! Command line: `serve`, `check`, `eval`. Parses flags into the library's types and prints
//! results; `anyhow` is used only here and in `main`.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::detectors::rules::RuleSet;
use crate::eval;
use crate::models::ModelSet;

#[derive(Debug, Parser)]
#[command(
    name = "vigil",
    version,
    about = "Inline inspection proxy: rebuilds each request's access-log record, scores it with attack signatures and detectors learned from the site's own logs, and logs, tags or blocks it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy. SIGHUP reloads policy, rule packs and the model set, SIGUSR1 reopens log files,
    /// SIGTERM stops gracefully, SIGQUIT hands the listeners to a new process started with
    /// --upgrade.
    Serve {
        /// Configuration file.
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// Take over the listening sockets of a running vigil (send it SIGQUIT).
        #[arg(long)]
        upgrade: bool,
        /// Run in the background.
        #[arg(long)]
        daemon: bool,
    },
    /// Validate the configuration and every rule pack; exit non-zero listing every problem.
    Check {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Train the learned detectors (request templates with per-route statistics, the
    /// pre-upstream and post-response isolation forests, the transformer over template
    /// sequences) from existing combined-format access logs, on the requests the rules pass,
    /// and write a model set that `vigil serve` loads.
    Train {
        /// Access log (nginx/Apache combined or common format); repeatable.
        #[arg(long, required = true)]
        log: Vec<PathBuf>,
        /// Directory to write the model files into.
        #[arg(long)]
        out: PathBuf,
        /// Configuration whose rule packs and threshold decide what is excluded from training.
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// Target false-positive rate each detector (both forests, the transformer) is
        /// calibrated to on held-out traffic; the ensemble's rate is up to their sum. A forest's
        /// threshold is at most the held-out tail extrapolated from its 80th and 90th
        /// percentiles, so attacks left in the log cannot push it up.
        #[arg(long, default_value_t = 0.005)]
        target_fpr: f64,
        /// Templates kept (most frequent first); rarer routes, paths fewer than two clients
        /// asked for (unless one asked at least 5 times, mostly answered 2xx/3xx), and paths
        /// mostly answered 404 become the unknown template.
        #[arg(long, default_value_t = 2000)]
        max_templates: usize,
        /// Skip the transformer (templates and forests only).
        #[arg(long, conflicts_with = "transformer_onnx")]
        no_transformer: bool,
        /// Serve this ONNX sequence model (trained elsewhere, to the contract in
        /// models/README.md, on the template ids of vocabulary.json from `vigil train` on the
        /// same logs and configuration) instead of training one; it is calibrated here.
        #[arg(long, value_name = "FILE")]
        transformer_onnx: Option<PathBuf>,
        /// Seed of the random choices in training (the forests' samples and trees, the
        /// transformer's initial weights and batches). The same logs and seed give the same
        /// models; another seed shows how much a result owes to chance.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Score an existing combined-format log offline (post-response stage, the log's own
    /// timestamps as the clock) and write one JSON object per input line, in input order.
    Score {
        /// Directory written by `vigil train` (default: the config's models.dir).
        #[arg(long)]
        models: Option<PathBuf>,
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// Add the forests' input to each line ("features": {"pre": [...], "post": [...]},
        /// numbered as in src/features.rs): to see why a forest voted.
        #[arg(long)]
        features: bool,
        /// Log file, or - for standard input.
        file: PathBuf,
    },
    /// Mine request templates (routes) from combined-format access logs and print the
    /// vocabulary: what the sequence detectors will see as this site's routes.
    Templates {
        /// Access log (nginx/Apache combined or common format); repeatable.
        #[arg(long, required = true)]
        log: Vec<PathBuf>,
        /// Templates kept (the rest are the unknown template).
        #[arg(long, default_value_t = 2000)]
        max_templates: usize,
        /// How many to print, most frequent first.
        #[arg(long, default_value_t = 40)]
        show: usize,
    },
    /// Write the access log of a simulated shop with a JSON API (browsers, customers, staff,
    /// API clients, crawlers, monitors; diurnal rates, NAT, honest errors) with interleaved
    /// attack episodes, and one ground-truth label per line: the data for `vigil eval
    /// --traffic` and for training the shipped models. Deterministic for a seed.
    Simulate {
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Days of traffic, starting Monday 2024-10-07 00:00 UTC.
        #[arg(long, default_value_t = 1.0)]
        days: f64,
        /// Traffic volume; 1.0 is about 130,000 lines on a weekday.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Attack episodes of each of the eleven kinds over the whole run (0: normal only).
        #[arg(long, default_value_t = 3)]
        episodes: usize,
        /// Where to write the log.
        #[arg(long)]
        out: PathBuf,
        /// Where to write the labels (JSONL, one {"line","attack","episode","actor"} per line).
        #[arg(long)]
        labels: Option<PathBuf>,
    },
    /// Measure the rule engine on labelled corpora: detection per category on attacks,
    /// false positives on benign traffic; with --traffic/--labels, train on the earlier part
    /// of a labelled log and measure the whole ensemble on the rest.
    Eval {
        /// Configuration whose rule packs, inspection limits and threshold are evaluated.
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
        /// Payload JSONL ({"payload","encoding","category","label"}); repeatable.
        #[arg(long)]
        payloads: Vec<PathBuf>,
        /// CRS regression tests as JSONL; paranoia-level-1 attack rows are scored; repeatable.
        #[arg(long)]
        crs: Vec<PathBuf>,
        /// Combined-format access log, counted as benign; repeatable.
        #[arg(long)]
        access_log: Vec<PathBuf>,
        /// One benign query string per line; repeatable.
        #[arg(long)]
        benign_params: Vec<PathBuf>,
        /// Print up to N missed attacks and N false positives per category.
        #[arg(long, default_value_t = 0)]
        show: usize,
        /// Exit non-zero unless overall payload detection is at least this percentage.
        #[arg(long)]
        min_detection: Option<f64>,
        /// Exit non-zero if more than this percentage of any benign corpus is flagged.
        #[arg(long)]
        max_false_positives: Option<f64>,
        /// A labelled combined-format log (e.g. from `vigil simulate`): train the learned
        /// detectors on its earlier part and evaluate the whole ensemble on the later part.
        #[arg(long, requires = "labels")]
        traffic: Option<PathBuf>,
        /// Labels of --traffic: JSONL, one {"line","attack","episode"} per log line.
        #[arg(long, requires = "traffic")]
        labels: Option<PathBuf>,
        /// Share of --traffic (from its start) used for training.
        #[arg(long, default_value_t = 0.5)]
        train_share: f64,
        /// Per-detector target false-positive rate for the training of --traffic (as
        /// `vigil train --target-fpr`).
        #[arg(long, default_value_t = 0.005)]
        target_fpr: f64,
        /// Seed of the random choices in the training of --traffic (as `vigil train --seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Also write the --traffic report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve {
            config,
            upgrade,
            daemon,
        } => {
            let cfg = Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            crate::proxy::serve(
                cfg,
                crate::proxy::ServeOptions {
                    config_path: config,
                    upgrade,
                    daemon,
                },
            )?;
            Ok(0)
        }
        Command::Check { config } => check(&config),
        Command::Simulate {
            seed,
            days,
            scale,
            episodes,
            out,
            labels,
        } => simulate(seed, days, scale, episodes, &out, labels.as_deref()),
        Command::Templates {
            log,
            max_templates,
            show,
        } => templates(&log, max_templates, show),
        Command::Train {
            log,
            out,
            config,
            target_fpr,
            max_templates,
            no_transformer,
            transformer_onnx,
            seed,
        } => train(
            &log,
            &out,
            &config,
            (target_fpr, seed),
            max_templates,
            match transformer_onnx {
                Some(p) => TransformerSource::Foreign(p),
                None if no_transformer => TransformerSource::None,
                None => TransformerSource::Train,
            },
        ),
        Command::Score {
            models,
            config,
            features,
            file,
        } => score(models.as_deref(), &config, features, &file),
        Command::Eval {
            config,
            payloads,
            crs,
            access_log,
            benign_params,
            show,
            min_detection,
            max_false_positives,
            traffic,
            labels,
            train_share,
            target_fpr,
            seed,
            json,
        } => {
            let cfg = Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let rules = std::sync::Arc::new(
                RuleSet::load(&cfg.rules.paths)
                    .map_err(|e| anyhow::anyhow!("{}", crate::detectors::rules::describe(&e)))?,
            );
            if let (Some(log), Some(labels)) = (&traffic, &labels) {
                if !(target_fpr > 0.0 && target_fpr <= 0.5) {
                    bail!("--target-fpr must be in (0, 0.5], got {target_fpr}");
                }
                eval_traffic(
                    &cfg,
                    &rules,
                    log,
                    labels,
                    (train_share, target_fpr, seed),
                    json.as_deref(),
                )?;
                if payloads.is_empty()
                    && crs.is_empty()
                    && access_log.is_empty()
                    && benign_params.is_empty()
                {
                    return Ok(0);
                }
            }
            let mut samples = Vec::new();
            for p in &payloads {
                samples.extend(eval::load_payloads(p)?);
            }
            for p in &crs {
                samples.extend(eval::load_crs(p)?);
            }
            for p in &access_log {
                let (s, bad) = eval::load_access_log(p)?;
                for b in &bad {
                    eprintln!("{}: {b}", p.display());
                }
                samples.extend(s);
            }
            for p in &benign_params {
                samples.extend(eval::load_benign_params(p)?);
            }
            if samples.is_empty() {
                bail!("nothing to evaluate: give --payloads, --crs, --access-log and/or --benign-params");
            }
            let t0 = std::time::Instant::now();
            let rep = eval::evaluate(&rules, &cfg.inspection, &samples, cfg.policy.threshold);
            let secs = t0.elapsed().as_secs_f64();
            print_report(&rep, show);
            println!(
                "\n{} requests in {:.2} s ({:.1} us per request), {} rules, threshold {}",
                samples.len(),
                secs,
                secs * 1e6 / samples.len() as f64,
                rules.rules().len(),
                cfg.policy.threshold
            );
            let mut ok = true;
            if let Some(min) = min_detection {
                let c = rep.overall("payloads", true);
                if c.total > 0 && c.rate() * 100.0 < min {
                    eprintln!(
                        "payload detection {:.2}% is below --min-detection {min}%",
                        c.rate() * 100.0
                    );
                    ok = false;
                }
            }
            if let Some(max) = max_false_positives {
                for corpus in ["payloads", "access_log", "benign_params"] {
                    let c = rep.overall(corpus, false);
                    if c.total > 0 && c.rate() * 100.0 > max {
                        eprintln!("{corpus}: {:.2}% of benign inputs flagged, above --max-false-positives {max}%", c.rate() * 100.0);
                        ok = false;
                    }
                }
            }
            Ok(if ok { 0 } else { 1 })
        }
    }
}

fn simulate(
    seed: u64,
    days: f64,
    scale: f64,
    episodes: usize,
    out: &std::path::Path,
    labels: Option<&std::path::Path>,
) -> anyhow::Result<i32> {
    use std::io::Write as _;
    if !(days > 0.0 && days <= 60.0) {
        bail!("--days must be in (0, 60], got {days}");
    }
    if !(scale > 0.0 && scale <= 20.0) {
        bail!("--scale must be in (0, 20], got {scale}");
    }
    let cfg = crate::simulate::SimConfig {
        seed,
        days,
        scale,
        episodes_per_type: episodes,
        ..Default::default()
    };
    let lines = crate::simulate::simulate(&cfg);
    let create = |p: &std::path::Path| {
        std::fs::File::create(p)
            .map(std::io::BufWriter::new)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    };
    let mut log = create(out)?;
    for l in &lines {
        writeln!(log, "{}", l.line)?;
    }
    log.flush()?;
    let attacks = lines.iter().filter(|l| l.label.attack.is_some()).count();
    if let Some(p) = labels {
        let mut f = create(p)?;
        for (i, l) in lines.iter().enumerate() {
            writeln!(f, "{}", crate::simulate::label_json(i + 1, &l.label))?;
        }
        f.flush()?;
    }
    eprintln!(
        "{} lines ({} attack requests) written to {}",
        lines.len(),
        attacks,
        out.display()
    );
    Ok(0)
}

fn eval_traffic(
    cfg: &Config,
    rules: &std::sync::Arc<RuleSet>,
    log: &std::path::Path,
    labels: &std::path::Path,
    (train_share, target_fpr, seed): (f64, f64, Option<u64>),
    json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let lines = eval::traffic::load_labeled(log, labels)?;
    let mut bar = Progress::default();
    let mut train = crate::learn::TrainConfig {
        rule_threshold: cfg.policy.threshold,
        session: cfg.sessions.clone(),
        ..Default::default()
    };
    train.forest.target_fpr = target_fpr;
    train.reseed(seed);
    let report = eval::traffic::evaluate(
        cfg,
        rules,
        &lines,
        train_share,
        &train,
        |stage, done, total| bar.show(stage, done, total),
    )?;
    bar.finish();
    print!("{}", eval::traffic::render(&report));
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// A one-line progress display on standard error (only when it is a terminal, so that logs
/// of CI runs stay readable).
#[derive(Default)]
struct Progress {
    last: String,
    shown: bool,
}

impl Progress {
    fn show(&mut self, stage: &str, done: usize, total: usize) {
        use std::io::Write as _;
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return;
        }
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        let width = 30;
        let filled = (pct * width / 100).min(width);
        let line = format!(
            "{stage:<24} [{}{}] {pct:>3}% ({done}/{total})",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
        if line != self.last {
            eprint!("\r{line}\x1b[K");
            let _ = std::io::stderr().flush();
            self.last = line;
            self.shown = true;
        }
    }

    fn finish(&mut self) {
        if self.shown {
            eprintln!();
        }
    }
}

fn read_records(logs: &[PathBuf]) -> anyhow::Result<Vec<crate::record::Record>> {
    let mut records = Vec::new();
    for p in logs {
        let text =
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        let mut bad = 0usize;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match crate::record::Record::parse_line(line, i + 1) {
                Ok(r) => records.push(r),
                Err(e) => {
                    bad += 1;
                    eprintln!("{}: {e}", p.display());
                }
            }
        }
        if bad > 0 {
            eprintln!(
                "{}: {bad} line(s) could not be parsed and were not used",
                p.display()
            );
        }
    }
    Ok(records)
}

/// What `vigil train` does for the transformer.
enum TransformerSource {
    Train,
    None,
    /// `--transformer-onnx`.
    Foreign(PathBuf),
}

fn train(
    logs: &[PathBuf],
    out: &std::path::Path,
    config: &std::path::Path,
    (target_fpr, seed): (f64, Option<u64>),
    max_templates: usize,
    transformer: TransformerSource,
) -> anyhow::Result<i32> {
    if !(target_fpr > 0.0 && target_fpr <= 0.5) {
        bail!("--target-fpr must be in (0, 0.5], got {target_fpr}");
    }
    if max_templates == 0 {
        bail!("--max-templates must be at least 1");
    }
    let cfg = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rules = RuleSet::load(&cfg.rules.paths)
        .map_err(|e| anyhow::anyhow!("{}", crate::detectors::rules::describe(&e)))?;
    // Before the logs, which can take a while to read.
    let foreign = match &transformer {
        TransformerSource::Foreign(path) => Some(crate::learn::ForeignModel {
            path: path.clone(),
            onnx: std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("--transformer-onnx {}: {e}", path.display()))?,
        }),
        _ => None,
    };
    let t0 = std::time::Instant::now();
    let records = read_records(logs)?;
    let mut tc = crate::learn::TrainConfig {
        rule_threshold: cfg.policy.threshold,
        session: cfg.sessions.clone(),
        ..Default::default()
    };
    tc.forest.target_fpr = target_fpr;
    tc.reseed(seed);
    tc.miner.max_templates = max_templates;
    if matches!(transformer, TransformerSource::None) {
        tc.lm = None;
    }
    tc.foreign = foreign;
    let mut bar = Progress::default();
    let trained = crate::learn::train(
        &records,
        &rules,
        &cfg.inspection,
        &tc,
        |stage, done, total| bar.show(stage, done, total),
    )?;
    bar.finish();
    let learned = &trained.learned;
    let manifest = crate::models::learned::save(learned, trained.canaries.clone(), out)?;
    let s = &manifest.training;
    let transformer = match &learned.transformer {
        Some(t) => format!(
            "transformer W {} over {} tokens, NLL threshold {:.2} nats",
            t.model.window(),
            t.model.vocab(),
            t.calibration.threshold
        ),
        None => "no transformer".to_string(),
    };
    println!(
        "trained on {} of {} requests ({} excluded by the rules), {} clients, {} templates, {:.1}% unknown; {} in waves of authentication failures, which the post forest is not trained on; forest thresholds pre {:.4} / post {:.4} ({} / {} established clients with higher ones of their own, {} / {} with feature bounds of their own); {transformer}; {:.1} s; written to {}",
        s.records - s.excluded_by_rules,
        s.records,
        s.excluded_by_rules,
        s.clients,
        s.templates,
        s.unknown_share * 100.0,
        s.failure_wave,
        learned.pre.threshold(),
        learned.post.threshold(),
        learned.pre.clients_with_own_threshold(),
        learned.post.clients_with_own_threshold(),
        learned.pre.clients_with_own_bounds(),
        learned.post.clients_with_own_bounds(),
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(0)
}

fn score(
    models: Option<&std::path::Path>,
    config: &std::path::Path,
    features: bool,
    file: &std::path::Path,
) -> anyhow::Result<i32> {
    use std::io::Write as _;
    let mut cfg = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(m) = models {
        cfg.models.dir = Some(m.to_path_buf());
    }
    let set =
        ModelSet::build(&cfg, 1).map_err(|e| anyhow::anyhow!("{}", e.problems().join("\n")))?;
    if set.learned.is_none() {
        let dir = cfg
            .models
            .dir
            .as_deref()
            .unwrap_or(std::path::Path::new("(models.dir is off)"));
        bail!(
            "{}: no model set here (no manifest.json); train one with `vigil train --log FILE --out DIR`",
            dir.display()
        );
    }
    let sessions = crate::session::Sessions::new(cfg.sessions.clone());
    let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
        ))
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut input = input;
    let mut line = Vec::new();
    for i in 0.. {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        let v = match crate::record::Record::parse_line(&text, i + 1) {
            Err(e) => serde_json::json!({ "line": i + 1, "error": e.reason }),
            Ok(r) => {
                let (pre, post) = crate::pipeline::score_record(&set, &sessions, &r);
                let mut v = scored_json(i + 1, &r, &set, &pre, &post);
                if features {
                    v["features"] = serde_json::json!({
                        "pre": pre.features.as_ref().map(|f| f.to_vec()),
                        "post": post.features.as_ref().map(|f| f.to_vec()),
                    });
                }
                v
            }
        };
        writeln!(out, "{v}")?;
    }
    out.flush()?;
    if let Some(t) = set.learned.as_ref().and_then(|l| l.transformer.as_ref()) {
        let (hits, misses) = t.cache_stats();
        eprintln!(
            "transformer: {} of {} scores ({:.1}%) answered from its cache, {misses} by running the model",
            hits,
            hits + misses,
            100.0 * hits as f64 / (hits + misses).max(1) as f64
        );
    }
    Ok(0)
}

/// One `vigil score` output object.
pub fn scored_json(
    line: usize,
    r: &crate::record::Record,
    set: &ModelSet,
    pre: &crate::pipeline::Pre,
    post: &crate::pipeline::Post,
) -> serde_json::Value {
    use crate::record::escape_nginx;
    let opt = |v: &Option<Vec<u8>>| v.as_deref().map(escape_nginx);
    let template = set
        .learned
        .as_deref()
        .map(|l| escape_nginx(l.vocabulary.text(pre.template).as_bytes()));
    let mut reasons = pre.verdict.reasons();
    for r in post.verdict.reasons() {
        if !reasons.contains(&r) {
            reasons.push(r);
        }
    }
    if pre.escalated {
        reasons.push("the client was escalated by earlier anomalous requests".into());
    }
    serde_json::json!({
        "line": line,
        "client": escape_nginx(r.client.as_bytes()),
        "remote_user": opt(&r.remote_user),
        "time": r.time.to_rfc3339(),
        "request": escape_nginx(&r.request_line),
        "status": r.status,
        "bytes": r.bytes,
        "referer": opt(&r.referer),
        "user_agent": opt(&r.user_agent),
        "template": template,
        "lane": pre.lane(),
        "rules": {
            "score": pre.decision.score,
            "threshold": pre.decision.threshold,
            "vote": pre.decision.attack,
            "matches": pre.decision.matches,
        },
        "pre": pre.verdict,
        "post": post.verdict,
        "verdict": {
            "anomaly": pre.verdict.anomaly || post.verdict.anomaly || pre.escalated,
            "score": pre.verdict.score.max(post.verdict.score),
            "action": pre.decision.action.as_str(),
            "escalated": pre.escalated,
            "escalated_now": post.escalated_now,
        },
        "reasons": reasons,
    })
}

fn templates(logs: &[PathBuf], max_templates: usize, show: usize) -> anyhow::Result<i32> {
    use crate::template::{Miner, MinerConfig, TemplateId};
    let records = read_records(logs)?;
    let mut miner = Miner::new(MinerConfig {
        max_templates,
        ..MinerConfig::default()
    });
    for r in &records {
        let (method, target, _) = r.request_parts();
        miner.add(
            &method,
            &target,
            crate::session::key_hash(&r.client),
            r.status,
        );
    }
    let vocab = miner.finish();
    let unknown = records
        .iter()
        .filter(|r| {
            let (m, t, _) = r.request_parts();
            vocab.lookup(&m, &t) == TemplateId::UNKNOWN
        })
        .count();
    println!(
        "{} requests, {} clusters, {} templates kept (+ unknown); {} requests ({:.1}%) map to the unknown template",
        records.len(),
        miner.cluster_count(),
        vocab.len() - 1,
        unknown,
        100.0 * unknown as f64 / records.len().max(1) as f64
    );
    for t in vocab.templates().iter().take(show) {
        println!(
            "{:>8}  {}",
            t.count,
            crate::record::escape_nginx(t.text.as_bytes())
        );
    }
    Ok(0)
}

fn check(path: &std::path::Path) -> anyhow::Result<i32> {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: invalid configuration", path.display());
            for p in e.problems() {
                eprintln!("  {p}");
            }
            return Ok(2);
        }
    };
    match ModelSet::build(&cfg, 1) {
        Ok(set) => {
            println!("{}: OK", path.display());
            println!(
                "  {} rules ({} patterns), version {}",
                set.rules.rules().len(),
                set.rules.pattern_count(),
                set.rules.version()
            );
            for (cat, n) in set.rules.categories() {
                println!("    {cat}: {n}");
            }
            println!(
                "  mode {}, threshold {}",
                cfg.policy.mode.as_str(),
                cfg.policy.threshold
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("{}: rule packs or model set invalid", path.display());
            for p in e.problems() {
                eprintln!("  {p}");
            }
            Ok(2)
        }
    }
}

fn print_report(rep: &eval::EvalReport, show: usize) {
    println!(
        "{:<14} {:<7} {:<22} {:>8} {:>8} {:>8}",
        "corpus", "label", "category", "n", "flagged", "rate"
    );
    for ((corpus, attack, cat), c) in &rep.cells {
        println!(
            "{:<14} {:<7} {:<22} {:>8} {:>8} {:>7.2}%",
            corpus,
            if *attack { "attack" } else { "benign" },
            cat,
            c.total,
            c.flagged,
            c.rate() * 100.0
        );
    }
    println!();
    for corpus in ["payloads", "crs", "access_log", "benign_params"] {
        for attack in [true, false] {
            let c = rep.overall(corpus, attack);
            if c.total > 0 {
                println!(
                    "{corpus:<14} {:<7} overall {:>8} {:>8} {:>7.2}%",
                    if attack { "attack" } else { "benign" },
                    c.total,
                    c.flagged,
                    c.rate() * 100.0
                );
            }
        }
    }
    if show > 0 {
        let mut per: std::collections::BTreeMap<&str, usize> = Default::default();
        println!("\nmissed attacks:");
        for (cat, target, ids) in &rep.misses {
            let n = per.entry(cat).or_default();
            if *n < show {
                *n += 1;
                println!(
                    "  [{cat}] {} (matched: {ids})",
                    crate::record::escape_nginx(target.as_bytes())
                );
            }
        }
        per.clear();
        println!("\nfalse positives:");
        for (cat, target, ids) in &rep.false_positives {
            let n = per.entry(cat).or_default();
            if *n < show {
                *n += 1;
                println!(
                    "  [{cat}] {} (matched: {ids})",
                    crate::record::escape_nginx(target.as_bytes())
                );
            }
        }
    }
}
