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
    about = "Inline inspection proxy: rebuilds each request's access-log record, scores it against attack signatures and logs, tags or blocks it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy. SIGHUP reloads policy and rule packs, SIGUSR1 reopens log files,
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
    /// Measure the rule engine on labelled corpora: detection per category on attacks,
    /// false positives on benign traffic.
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
        Command::Templates {
            log,
            max_templates,
            show,
        } => templates(&log, max_templates, show),
        Command::Eval {
            config,
            payloads,
            crs,
            access_log,
            benign_params,
            show,
            min_detection,
            max_false_positives,
        } => {
            let cfg = Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let rules = RuleSet::load(&cfg.rules.paths)
                .map_err(|e| anyhow::anyhow!("{}", crate::detectors::rules::describe(&e)))?;
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

fn templates(logs: &[PathBuf], max_templates: usize, show: usize) -> anyhow::Result<i32> {
    use crate::template::{Miner, MinerConfig, TemplateId};
    let mut records = Vec::new();
    for p in logs {
        let text =
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match crate::record::Record::parse_line(line, i + 1) {
                Ok(r) => records.push(r),
                Err(e) => eprintln!("{}: {e}", p.display()),
            }
        }
    }
    let mut miner = Miner::new(MinerConfig {
        max_templates,
        ..MinerConfig::default()
    });
    for r in &records {
        let (method, target, _) = r.request_parts();
        miner.add(&method, &target);
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
