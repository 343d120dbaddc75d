//! The model set: everything a request is scored with (rule packs, policy, inspection
//! limits), built and self-checked as one unit off the request path, and served through one
//! `ArcSwap` so that a reload swaps all of it at once. A request pins one set for its whole
//! life; a set that fails to build or to pass its self-check never replaces the serving one.

pub mod learned;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError, EnsembleConfig, EscalationConfig, Inspection};
use crate::detectors::rules::{self, RuleSet, RulesError};
use crate::policy::Policy;
use crate::request::HttpRequest;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("rule packs refused:\n{}", rules::describe(.0))]
    Rules(Vec<RulesError>),
    #[error("self-check failed: {0}")]
    SelfCheck(String),
    #[error("model set refused: {0}")]
    Learned(#[from] learned::LearnedError),
}

impl ModelError {
    /// One line per problem, for `vigil check` and reload logs.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ModelError::Config(e) => e.problems(),
            ModelError::Rules(es) => es.iter().map(|e| e.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// One consistent set of everything used to score a request.
#[derive(Debug)]
pub struct ModelSet {
    /// Increments with every successful load in this process.
    pub generation: u64,
    pub rules: Arc<RuleSet>,
    pub policy: Policy,
    pub inspection: Inspection,
    pub ensemble: EnsembleConfig,
    pub escalation: EscalationConfig,
    /// The learned detectors; `None` runs the rules alone (no `models.dir`, or no model set
    /// in it yet).
    pub learned: Option<Arc<learned::Learned>>,
    pub manifest: Option<learned::Manifest>,
    pub loaded_at: SystemTime,
}

impl ModelSet {
    /// Build a complete set from a validated config (reads the rule packs and the model set
    /// in `models.dir`). A directory without a manifest means "no learned detectors yet"; a
    /// model set that is there but damaged is an error naming the file.
    pub fn build(cfg: &Config, generation: u64) -> Result<ModelSet, ModelError> {
        let rules = RuleSet::load(&cfg.rules.paths).map_err(ModelError::Rules)?;
        let (learned, manifest) = match &cfg.models.dir {
            Some(dir) if learned::present(dir) => {
                let (l, m) = learned::load(dir)?;
                (Some(Arc::new(l)), Some(m))
            }
            _ => (None, None),
        };
        Self::assemble(cfg, generation, Arc::new(rules), learned, manifest)
    }

    /// A set from parts already in memory (training followed by scoring, tests).
    pub fn assemble(
        cfg: &Config,
        generation: u64,
        rules: Arc<RuleSet>,
        learned: Option<Arc<learned::Learned>>,
        manifest: Option<learned::Manifest>,
    ) -> Result<ModelSet, ModelError> {
        let set = ModelSet {
            generation,
            rules,
            policy: Policy::new(cfg.policy.clone()),
            inspection: cfg.inspection.clone(),
            ensemble: cfg.ensemble.clone(),
            escalation: cfg.escalation.clone(),
            learned,
            manifest,
            loaded_at: SystemTime::now(),
        };
        set.self_check()?;
        let model_window = set
            .learned
            .as_deref()
            .and_then(|l| l.transformer.as_ref())
            .map(|t| t.window());
        if let Some(w) = model_window.filter(|&w| cfg.sessions.window < w) {
            // Not refused: the set still works, but its calibration scored longer contexts.
            tracing::warn!(
                sessions_window = cfg.sessions.window,
                model_window = w,
                "sessions.window is shorter than the transformer's window: it sees at most \
                 sessions.window templates of context, fewer than it was calibrated with."
            );
        }
        Ok(set)
    }

    /// A set must still recognise a plain attack and pass a plain page view; a rule change
    /// that breaks either (an engine that matches nothing, or everything) is refused.
    pub fn self_check(&self) -> Result<(), ModelError> {
        let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let benign = canary(
            "/index.html?page=2&sort=name",
            b"Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
        );
        let report = self.rules.inspect(&benign, &self.inspection);
        if !report.matches.is_empty() {
            let ids: Vec<_> = report.matches.iter().map(|m| m.id.as_str()).collect();
            return Err(ModelError::SelfCheck(format!(
                "a plain page view matches rules {ids:?}"
            )));
        }
        let _ = self.policy.decide(client, "localhost", "/", report);
        Ok(())
    }

    /// `<hash of the rule packs>[+<model set id>]#<generation>`.
    pub fn version(&self) -> String {
        match &self.manifest {
            Some(m) => format!("{}+{}#{}", self.rules.version(), m.id(), self.generation),
            None => format!("{}#{}", self.rules.version(), self.generation),
        }
    }
}

fn canary(target: &str, ua: &[u8]) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        target: target.as_bytes().to_vec(),
        version: "HTTP/1.1".into(),
        headers: vec![
            ("host".into(), b"localhost".to_vec()),
            ("user-agent".into(), ua.to_vec()),
            ("accept".into(), b"text/html,application/xhtml+xml".to_vec()),
        ],
        body: Vec::new(),
        body_truncated: false,
    }
}

/// The serving model set and how to replace it.
pub struct Registry {
    current: ArcSwap<ModelSet>,
    config_path: PathBuf,
    generation: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// The config the process started with: sections that cannot change without a restart
    /// (listeners, upstreams, server, logging) are compared against it on reload.
    boot: Config,
}

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    Swapped {
        version: String,
        warnings: Vec<String>,
    },
}

impl Registry {
    pub fn new(config_path: &Path, boot: Config, first: ModelSet) -> Registry {
        Registry {
            generation: AtomicU64::new(first.generation),
            current: ArcSwap::from_pointee(first),
            config_path: config_path.to_path_buf(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            boot,
        }
    }

    /// The set a request should pin for its whole life.
    pub fn current(&self) -> Arc<ModelSet> {
        self.current.load_full()
    }

    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// Re-read the config file and rule packs, build and self-check a new set, and swap it in.
    /// On any error the serving set is untouched. Blocking (file I/O, regex compilation): call
    /// it off the request path.
    pub fn reload(&self) -> Result<ReloadOutcome, ModelError> {
        let result = Config::load(&self.config_path)
            .map_err(ModelError::from)
            .and_then(|cfg| {
                let generation = self.generation.load(Ordering::Relaxed) + 1;
                ModelSet::build(&cfg, generation).map(|set| (cfg, set))
            });
        match result {
            Ok((cfg, set)) => {
                let warnings = self.restart_only_changes(&cfg);
                self.generation.store(set.generation, Ordering::Relaxed);
                let version = set.version();
                self.current.store(Arc::new(set));
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                Ok(ReloadOutcome::Swapped { version, warnings })
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn restart_only_changes(&self, cfg: &Config) -> Vec<String> {
        let mut w = Vec::new();
        if cfg.listeners != self.boot.listeners {
            w.push("listen");
        }
        if cfg.upstream != self.boot.upstream {
            w.push("upstream");
        }
        if cfg.server != self.boot.server {
            w.push("server");
        }
        if cfg.logging != self.boot.logging {
            w.push("logging");
        }
        if cfg.sessions != self.boot.sessions {
            w.push("sessions");
        }
        w.into_iter()
            .map(|s| format!("the {s} section changed; it takes effect only after a restart or an upgrade (SIGQUIT + --upgrade)"))
            .collect()
    }
}
