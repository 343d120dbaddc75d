//! Configuration: `FileConfig` mirrors `config.yaml` exactly (unknown keys are errors) and
//! `FileConfig::validate` turns it into the typed `Config` the rest of vigil uses, reporting
//! every problem at once with its field path. No I/O beyond reading the file itself.

mod file;

pub use file::FileConfig;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

/// Everything that can go wrong turning a file into a `Config`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// Every problem, one per line, for `vigil check` and the reload log.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { problems, .. } => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

/// One validation problem: the field path (`policy.routes[2].threshold`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Directory the config file lives in; relative paths in it are resolved against it.
    pub base_dir: PathBuf,
    pub listeners: Vec<Listener>,
    pub upstream: Upstream,
    pub server: Server,
    pub logging: Logging,
    pub rules: RulesConfig,
    pub inspection: Inspection,
    pub policy: PolicyConfig,
    pub models: ModelsConfig,
    pub sessions: crate::session::SessionConfig,
    pub ensemble: EnsembleConfig,
    pub escalation: EscalationConfig,
}

/// Where the learned detectors come from.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelsConfig {
    /// A model set directory written by `vigil train`; `None`: rules only.
    pub dir: Option<PathBuf>,
}

/// One detector's place in the ensemble.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorSettings {
    pub enabled: bool,
    /// In [0, 1]: how much of its calibrated score the detector contributes.
    pub weight: f64,
    /// Calibrated score at which the detector votes (0.5 is its trained threshold).
    pub threshold: f64,
}

/// How the detectors' calibrated scores become one verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleConfig {
    pub rules: DetectorSettings,
    pub forest: DetectorSettings,
    pub transformer: DetectorSettings,
    /// The transformer's weight for a request that changes state (any method but GET, HEAD,
    /// OPTIONS, TRACE): paying, refunding or editing without the steps before it is what a
    /// contextual attack is, while reading a page out of order is often a bookmark or a new
    /// tab.
    pub transformer_unsafe_weight: f64,
    /// Fused score at or above which a request is anomalous.
    pub threshold: f64,
    /// The strongest action a verdict of the learned detectors alone may take (rule hits
    /// that reach `policy.threshold` always take the route's mode).
    pub max_action: Mode,
}

/// Clients recognised as scanning, brute-forcing or enumerating.
#[derive(Debug, Clone, PartialEq)]
pub struct EscalationConfig {
    pub enabled: bool,
    /// Anomalous requests of one user agent, each within `within` of the previous, that
    /// escalate a client's requests with that agent.
    pub after: u32,
    pub within: Duration,
    /// How long an escalation lasts after the client's last anomalous request.
    pub duration: Duration,
    /// What an escalated client's requests get (bounded by the route's mode).
    pub action: Mode,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub address: SocketAddr,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub servers: Vec<SocketAddr>,
    pub tls: bool,
    /// SNI and Host-independent name verified on the upstream certificate.
    pub sni: String,
    pub verify_cert: bool,
    /// CA bundle (PEM) upstream certificates are verified against, instead of the system's.
    pub ca_file: Option<PathBuf>,
    pub health_check_interval: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub threads: usize,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    pub trusted_proxies: Vec<IpNet>,
}

/// Where a log goes: a file (reopened on SIGUSR1), standard output, or nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Logging {
    pub access_log: LogTarget,
    pub decision_log: LogTarget,
    /// Log every request (true) or only those that matched at least one rule.
    pub decision_log_all: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RulesConfig {
    /// Files or directories of `*.yaml` rule packs.
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// Inspect the first `body_limit` bytes and pass the rest uninspected.
    InspectPrefix,
    /// Answer 413 without contacting the upstream.
    Reject,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    pub body_limit: usize,
    pub over_limit: OverLimit,
    pub max_request_line: usize,
    pub max_header_value: usize,
    pub max_args: usize,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Off,
    Detect,
    Tag,
    Block,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Detect => "detect",
            Mode::Tag => "tag",
            Mode::Block => "block",
        }
    }
}

/// Which requests a route, allowlist entry or exclusion applies to. Empty parts match all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteMatch {
    /// Lower-case host without port.
    pub host: Option<String>,
    pub path_prefix: Option<String>,
}

impl RouteMatch {
    pub fn matches(&self, host: &str, path: &str) -> bool {
        if let Some(h) = &self.host {
            if !host_without_port(host).eq_ignore_ascii_case(h) {
                return false;
            }
        }
        if let Some(p) = &self.path_prefix {
            if !path.starts_with(p.as_str()) {
                return false;
            }
        }
        true
    }
}

/// `example.com:8080` -> `example.com`; `[::1]:8080` -> `[::1]`.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    pub matcher: RouteMatch,
    pub mode: Option<Mode>,
    pub threshold: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Exclusion {
    pub matcher: RouteMatch,
    pub rule_ids: Vec<String>,
    pub categories: Vec<String>,
    /// Only matches found in this argument (query, body or cookie name) are excluded.
    pub parameter: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    pub mode: Mode,
    pub threshold: u32,
    pub block_status: u16,
    pub tag_response: bool,
    pub routes: Vec<RoutePolicy>,
    pub allow_clients: Vec<IpNet>,
    pub allow_routes: Vec<RouteMatch>,
    pub exclusions: Vec<Exclusion>,
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parse and validate YAML text; `path` names the file in errors and anchors relative paths.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: FileConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: describe_yaml_error(&e),
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        file.validate(base)
            .map_err(|problems| ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
    }

    /// Resolve a path from the config file against the config's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        resolve(&self.base_dir, p)
    }
}

pub(crate) fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// serde_yaml's messages already carry the field path for unknown or mistyped keys
/// (`policy.routes[0]: unknown field ...`); add the line when it knows it.
fn describe_yaml_error(e: &serde_yaml::Error) -> String {
    match e.location() {
        Some(loc) => format!("line {}, column {}: {}", loc.line(), loc.column(), e),
        None => e.to_string(),
    }
}
