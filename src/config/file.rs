//! The serde mirror of `config.yaml` and its validation into `Config`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::{
    Config, DetectorSettings, EnsembleConfig, EscalationConfig, Exclusion, Inspection, Listener,
    LogTarget, Logging, Mode, ModelsConfig, OverLimit, PolicyConfig, Problem, RouteMatch,
    RoutePolicy, RulesConfig, Server, TlsFiles, Upstream,
};
use crate::session::{SessionConfig, SessionKey};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default = "default_listen")]
    pub listen: Vec<FileListener>,
    #[serde(default)]
    pub upstream: FileUpstream,
    #[serde(default)]
    pub server: FileServer,
    #[serde(default)]
    pub logging: FileLogging,
    #[serde(default)]
    pub rules: FileRules,
    #[serde(default)]
    pub inspection: FileInspection,
    #[serde(default)]
    pub policy: FilePolicy,
    #[serde(default)]
    pub models: FileModels,
    #[serde(default)]
    pub sessions: FileSessions,
    #[serde(default)]
    pub ensemble: FileEnsemble,
    #[serde(default)]
    pub escalation: FileEscalation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileModels {
    pub dir: String,
}

impl Default for FileModels {
    fn default() -> Self {
        FileModels {
            dir: "models".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSessions {
    pub key: String,
    pub window: usize,
    pub max_clients: usize,
    pub idle_ttl_secs: f64,
}

impl Default for FileSessions {
    fn default() -> Self {
        let d = crate::session::SessionConfig::default();
        FileSessions {
            key: "ip".into(),
            window: d.window,
            max_clients: d.max_clients,
            idle_ttl_secs: d.idle_ttl,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDetector {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub weight: f64,
    #[serde(default = "half")]
    pub threshold: f64,
}

fn yes() -> bool {
    true
}

fn half() -> f64 {
    0.5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileEnsemble {
    pub rules: FileDetector,
    pub forest: FileDetector,
    pub transformer: FileDetector,
    pub transformer_unsafe_weight: f64,
    pub threshold: f64,
    pub max_action: String,
}

impl Default for FileEnsemble {
    fn default() -> Self {
        let d = |weight| FileDetector {
            enabled: true,
            weight,
            threshold: 0.5,
        };
        FileEnsemble {
            rules: d(1.0),
            forest: d(1.0),
            transformer: d(0.7),
            transformer_unsafe_weight: 1.0,
            threshold: 0.5,
            max_action: "block".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileEscalation {
    pub enabled: bool,
    pub after: i64,
    pub within_secs: f64,
    pub duration_secs: f64,
    pub action: String,
}

impl Default for FileEscalation {
    fn default() -> Self {
        FileEscalation {
            enabled: true,
            after: 3,
            within_secs: 60.0,
            duration_secs: 600.0,
            action: "block".into(),
        }
    }
}

fn default_listen() -> Vec<FileListener> {
    vec![FileListener {
        address: "127.0.0.1:8080".into(),
        tls: None,
    }]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    pub address: String,
    #[serde(default)]
    pub tls: Option<FileTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileUpstream {
    pub servers: Vec<String>,
    pub tls: bool,
    pub sni: String,
    pub verify_cert: bool,
    pub ca_file: Option<PathBuf>,
    pub health_check_interval_secs: f64,
    pub connect_timeout_secs: f64,
    pub read_timeout_secs: f64,
}

impl Default for FileUpstream {
    fn default() -> Self {
        FileUpstream {
            servers: vec!["127.0.0.1:3000".into()],
            tls: false,
            sni: String::new(),
            verify_cert: true,
            ca_file: None,
            health_check_interval_secs: 5.0,
            connect_timeout_secs: 5.0,
            read_timeout_secs: 60.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileServer {
    pub threads: usize,
    pub grace_period_secs: u64,
    pub graceful_shutdown_timeout_secs: u64,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    pub trusted_proxies: Vec<String>,
}

impl Default for FileServer {
    fn default() -> Self {
        FileServer {
            threads: 2,
            grace_period_secs: 5,
            graceful_shutdown_timeout_secs: 5,
            pid_file: "/tmp/vigil.pid".into(),
            upgrade_sock: "/tmp/vigil_upgrade.sock".into(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileLogging {
    pub access_log: String,
    pub decision_log: String,
    pub decision_log_all: bool,
}

impl Default for FileLogging {
    fn default() -> Self {
        FileLogging {
            access_log: "-".into(),
            decision_log: "off".into(),
            decision_log_all: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileRules {
    pub paths: Vec<PathBuf>,
}

impl Default for FileRules {
    fn default() -> Self {
        FileRules {
            paths: vec!["rules".into()],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileInspection {
    pub body_limit: usize,
    pub over_limit: String,
    pub max_request_line: usize,
    pub max_header_value: usize,
    pub max_args: usize,
}

impl Default for FileInspection {
    fn default() -> Self {
        FileInspection {
            body_limit: 64 * 1024,
            over_limit: "inspect_prefix".into(),
            max_request_line: 8192,
            max_header_value: 8192,
            max_args: 255,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilePolicy {
    pub mode: String,
    pub threshold: i64,
    pub block_status: u16,
    pub tag_response: bool,
    pub routes: Vec<FileRoute>,
    pub allowlist: FileAllowlist,
    pub exclusions: Vec<FileExclusion>,
}

impl Default for FilePolicy {
    fn default() -> Self {
        FilePolicy {
            mode: "block".into(),
            threshold: 5,
            block_status: 403,
            tag_response: false,
            routes: Vec::new(),
            allowlist: FileAllowlist::default(),
            exclusions: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub threshold: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileAllowlist {
    pub clients: Vec<String>,
    pub routes: Vec<FileRouteMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouteMatch {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileExclusion {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub parameter: Option<String>,
    #[serde(default)]
    pub rule_ids: Vec<String>,
    #[serde(default)]
    pub categories: Vec<String>,
}

/// Collects problems with their field paths so that validation reports all of them.
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, field: &str, secs: f64, min: f64) -> Duration {
        if !secs.is_finite() || secs < min {
            self.add(
                field,
                format!("must be a number of seconds >= {min}, got {secs}"),
            );
            return Duration::ZERO;
        }
        Duration::from_secs_f64(secs)
    }

    fn socket_addr(&mut self, field: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.add(
                    field,
                    format!("must be an IP:port address such as 127.0.0.1:8080, got {s:?}"),
                );
                None
            }
        }
    }

    fn cidrs(&mut self, field: &str, list: &[String]) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match parse_cidr(s) {
                Some(n) => out.push(n),
                None => self.add(
                    format!("{field}[{i}]"),
                    format!("must be an IP address or CIDR such as 10.0.0.0/8, got {s:?}"),
                ),
            }
        }
        out
    }

    fn mode(&mut self, field: &str, s: &str) -> Option<Mode> {
        match s {
            "off" => Some(Mode::Off),
            "detect" => Some(Mode::Detect),
            "tag" => Some(Mode::Tag),
            "block" => Some(Mode::Block),
            _ => {
                self.add(
                    field,
                    format!("must be one of off, detect, tag, block, got {s:?}"),
                );
                None
            }
        }
    }

    fn threshold(&mut self, field: &str, t: i64) -> u32 {
        if t <= 0 || t > 1_000_000 {
            self.add(field, format!("must be > 0 (an anomaly score), got {t}"));
            return 1;
        }
        t as u32
    }

    fn route(
        &mut self,
        field: &str,
        host: &Option<String>,
        path_prefix: &Option<String>,
    ) -> RouteMatch {
        if let Some(p) = path_prefix {
            if !p.starts_with('/') {
                self.add(
                    format!("{field}.path_prefix"),
                    format!("must start with '/', got {p:?}"),
                );
            }
        }
        if let Some(h) = host {
            if h.is_empty() || h.contains('/') || h.chars().any(char::is_whitespace) {
                self.add(
                    format!("{field}.host"),
                    format!("must be a host name, got {h:?}"),
                );
            }
        }
        RouteMatch {
            host: host
                .as_ref()
                .map(|h| super::host_without_port(h).to_ascii_lowercase()),
            path_prefix: path_prefix.clone(),
        }
    }
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn log_target(s: &str) -> LogTarget {
    match s {
        "" | "off" => LogTarget::Off,
        "-" | "stdout" => LogTarget::Stdout,
        p => LogTarget::File(PathBuf::from(p)),
    }
}

impl FileConfig {
    /// Check every field and build the typed config, or return every problem found.
    pub fn validate(self, base_dir: &Path) -> Result<Config, Vec<Problem>> {
        let mut p = Problems(Vec::new());

        if self.listen.is_empty() {
            p.add("listen", "must name at least one listener");
        }
        let mut listeners = Vec::new();
        for (i, l) in self.listen.iter().enumerate() {
            let field = format!("listen[{i}]");
            let address = p.socket_addr(&format!("{field}.address"), &l.address);
            let tls = l.tls.as_ref().map(|t| {
                let cert = super::resolve(base_dir, &t.cert);
                let key = super::resolve(base_dir, &t.key);
                if !cert.is_file() {
                    p.add(
                        format!("{field}.tls.cert"),
                        format!("no such file: {}", cert.display()),
                    );
                }
                if !key.is_file() {
                    p.add(
                        format!("{field}.tls.key"),
                        format!("no such file: {}", key.display()),
                    );
                }
                TlsFiles { cert, key }
            });
            if let Some(address) = address {
                listeners.push(Listener { address, tls });
            }
        }

        let u = &self.upstream;
        if u.servers.is_empty() {
            p.add("upstream.servers", "must name at least one upstream server");
        }
        let servers: Vec<SocketAddr> = u
            .servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| p.socket_addr(&format!("upstream.servers[{i}]"), s))
            .collect();
        if u.tls && u.sni.is_empty() {
            p.add("upstream.sni", "must be set when upstream.tls is true (the name the upstream certificate is checked against)");
        }
        let ca_file = u.ca_file.as_ref().map(|f| super::resolve(base_dir, f));
        if let Some(f) = &ca_file {
            if !f.is_file() {
                p.add("upstream.ca_file", format!("no such file: {}", f.display()));
            }
        }
        let upstream = Upstream {
            servers,
            tls: u.tls,
            sni: u.sni.clone(),
            verify_cert: u.verify_cert,
            ca_file,
            health_check_interval: p.duration(
                "upstream.health_check_interval_secs",
                u.health_check_interval_secs,
                0.1,
            ),
            connect_timeout: p.duration(
                "upstream.connect_timeout_secs",
                u.connect_timeout_secs,
                0.001,
            ),
            read_timeout: p.duration("upstream.read_timeout_secs", u.read_timeout_secs, 0.001),
        };

        let s = &self.server;
        if s.threads == 0 || s.threads > 1024 {
            p.add(
                "server.threads",
                format!("must be between 1 and 1024, got {}", s.threads),
            );
        }
        let server = Server {
            threads: s.threads.max(1),
            grace_period: Duration::from_secs(s.grace_period_secs),
            graceful_shutdown_timeout: Duration::from_secs(s.graceful_shutdown_timeout_secs),
            pid_file: super::resolve(base_dir, &s.pid_file),
            upgrade_sock: super::resolve(base_dir, &s.upgrade_sock),
            trusted_proxies: p.cidrs("server.trusted_proxies", &s.trusted_proxies),
        };

        let resolve_target = |t: LogTarget| match t {
            LogTarget::File(f) => LogTarget::File(super::resolve(base_dir, &f)),
            other => other,
        };
        let logging = Logging {
            access_log: resolve_target(log_target(&self.logging.access_log)),
            decision_log: resolve_target(log_target(&self.logging.decision_log)),
            decision_log_all: self.logging.decision_log_all,
        };

        if self.rules.paths.is_empty() {
            p.add(
                "rules.paths",
                "must name at least one rule pack file or directory",
            );
        }
        let mut rule_paths = Vec::new();
        for (i, rp) in self.rules.paths.iter().enumerate() {
            let full = super::resolve(base_dir, rp);
            if !full.exists() {
                p.add(
                    format!("rules.paths[{i}]"),
                    format!("no such file or directory: {}", full.display()),
                );
            }
            rule_paths.push(full);
        }

        let ins = &self.inspection;
        // Pingora replays at most 64 KiB of an inspected body to the upstream (its retry
        // buffer); a larger limit would lose the bytes in between, so refuse it here.
        if ins.body_limit > 64 * 1024 {
            p.add(
                "inspection.body_limit",
                format!("must be at most 65536 bytes, got {}", ins.body_limit),
            );
        }
        let over_limit = match ins.over_limit.as_str() {
            "inspect_prefix" => OverLimit::InspectPrefix,
            "reject" => OverLimit::Reject,
            other => {
                p.add(
                    "inspection.over_limit",
                    format!("must be inspect_prefix or reject, got {other:?}"),
                );
                OverLimit::InspectPrefix
            }
        };
        if ins.max_request_line < 64 {
            p.add(
                "inspection.max_request_line",
                format!("must be at least 64, got {}", ins.max_request_line),
            );
        }
        if ins.max_header_value < 64 {
            p.add(
                "inspection.max_header_value",
                format!("must be at least 64, got {}", ins.max_header_value),
            );
        }
        if ins.max_args == 0 {
            p.add("inspection.max_args", "must be at least 1");
        }
        let inspection = Inspection {
            body_limit: ins.body_limit,
            over_limit,
            max_request_line: ins.max_request_line,
            max_header_value: ins.max_header_value,
            max_args: ins.max_args,
        };

        let policy = validate_policy(&self.policy, &mut p);
        let models = ModelsConfig {
            dir: match self.models.dir.as_str() {
                "" | "off" => None,
                d => Some(super::resolve(base_dir, Path::new(d))),
            },
        };
        let sessions = validate_sessions(&self.sessions, &mut p);
        let ensemble = validate_ensemble(&self.ensemble, &mut p);
        let escalation = validate_escalation(&self.escalation, &mut p);

        if !p.0.is_empty() {
            return Err(p.0);
        }
        Ok(Config {
            base_dir: base_dir.to_path_buf(),
            listeners,
            upstream,
            server,
            logging,
            rules: RulesConfig { paths: rule_paths },
            inspection,
            policy,
            models,
            sessions,
            ensemble,
            escalation,
        })
    }
}

fn validate_sessions(fs: &FileSessions, p: &mut Problems) -> SessionConfig {
    let key = match fs.key.as_str() {
        "ip" => SessionKey::Ip,
        "ip_user_agent" => SessionKey::IpUserAgent,
        k => match k.split_once(':') {
            Some(("cookie", name)) if is_token(name) => SessionKey::Cookie(name.to_string()),
            Some(("header", name)) if is_token(name) => {
                SessionKey::Header(name.to_ascii_lowercase())
            }
            _ => {
                p.add(
                    "sessions.key",
                    format!("must be ip, ip_user_agent, cookie:NAME or header:NAME, got {k:?}"),
                );
                SessionKey::Ip
            }
        },
    };
    if !(2..=256).contains(&fs.window) {
        p.add(
            "sessions.window",
            format!("must be between 2 and 256 templates, got {}", fs.window),
        );
    }
    if fs.max_clients < 16 {
        p.add(
            "sessions.max_clients",
            format!("must be at least 16, got {}", fs.max_clients),
        );
    }
    let idle = p.duration("sessions.idle_ttl_secs", fs.idle_ttl_secs, 1.0);
    SessionConfig {
        window: fs.window.clamp(2, 256),
        max_clients: fs.max_clients.max(16),
        idle_ttl: idle.as_secs_f64(),
        key,
    }
}

/// An HTTP token (cookie or header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn unit_interval(p: &mut Problems, field: &str, x: f64, open_low: bool) -> f64 {
    let ok = x.is_finite() && x <= 1.0 && if open_low { x > 0.0 } else { x >= 0.0 };
    if !ok {
        let range = if open_low { "(0, 1]" } else { "[0, 1]" };
        p.add(field, format!("must be in {range}, got {x}"));
        return 0.5;
    }
    x
}

fn validate_ensemble(fe: &FileEnsemble, p: &mut Problems) -> EnsembleConfig {
    let mut det = |name: &str, d: &FileDetector| DetectorSettings {
        enabled: d.enabled,
        weight: unit_interval(p, &format!("ensemble.{name}.weight"), d.weight, false),
        threshold: unit_interval(p, &format!("ensemble.{name}.threshold"), d.threshold, true),
    };
    let rules = det("rules", &fe.rules);
    let forest = det("forest", &fe.forest);
    let transformer = det("transformer", &fe.transformer);
    let transformer_unsafe_weight = unit_interval(
        p,
        "ensemble.transformer_unsafe_weight",
        fe.transformer_unsafe_weight,
        false,
    );
    let threshold = unit_interval(p, "ensemble.threshold", fe.threshold, true);
    let max_action = p
        .mode("ensemble.max_action", &fe.max_action)
        .unwrap_or(Mode::Block);
    EnsembleConfig {
        rules,
        forest,
        transformer,
        transformer_unsafe_weight,
        threshold,
        max_action,
    }
}

fn validate_escalation(fe: &FileEscalation, p: &mut Problems) -> EscalationConfig {
    if !(1..=1000).contains(&fe.after) {
        p.add(
            "escalation.after",
            format!(
                "must be between 1 and 1000 (anomalous requests), got {}",
                fe.after
            ),
        );
    }
    EscalationConfig {
        enabled: fe.enabled,
        after: fe.after.clamp(1, 1000) as u32,
        within: p.duration("escalation.within_secs", fe.within_secs, 1.0),
        duration: p.duration("escalation.duration_secs", fe.duration_secs, 1.0),
        action: p
            .mode("escalation.action", &fe.action)
            .unwrap_or(Mode::Block),
    }
}

fn validate_policy(fp: &FilePolicy, p: &mut Problems) -> PolicyConfig {
    let mode = p.mode("policy.mode", &fp.mode).unwrap_or(Mode::Block);
    let threshold = p.threshold("policy.threshold", fp.threshold);
    if !(400..=599).contains(&fp.block_status) {
        p.add(
            "policy.block_status",
            format!("must be a 4xx or 5xx status, got {}", fp.block_status),
        );
    }
    let mut routes = Vec::new();
    for (i, r) in fp.routes.iter().enumerate() {
        let field = format!("policy.routes[{i}]");
        if r.host.is_none() && r.path_prefix.is_none() {
            p.add(&field, "must set host and/or path_prefix");
        }
        let matcher = p.route(&field, &r.host, &r.path_prefix);
        let mode = r
            .mode
            .as_ref()
            .and_then(|m| p.mode(&format!("{field}.mode"), m));
        let threshold = r
            .threshold
            .map(|t| p.threshold(&format!("{field}.threshold"), t));
        routes.push(RoutePolicy {
            matcher,
            mode,
            threshold,
        });
    }
    let allow_clients = p.cidrs("policy.allowlist.clients", &fp.allowlist.clients);
    let mut allow_routes = Vec::new();
    for (i, r) in fp.allowlist.routes.iter().enumerate() {
        let field = format!("policy.allowlist.routes[{i}]");
        if r.host.is_none() && r.path_prefix.is_none() {
            p.add(&field, "must set host and/or path_prefix");
        }
        allow_routes.push(p.route(&field, &r.host, &r.path_prefix));
    }
    let mut exclusions = Vec::new();
    for (i, e) in fp.exclusions.iter().enumerate() {
        let field = format!("policy.exclusions[{i}]");
        if e.rule_ids.is_empty() && e.categories.is_empty() {
            p.add(&field, "must list rule_ids and/or categories to exclude");
        }
        let matcher = p.route(&field, &e.host, &e.path_prefix);
        exclusions.push(Exclusion {
            matcher,
            rule_ids: e.rule_ids.clone(),
            categories: e.categories.clone(),
            parameter: e.parameter.clone(),
        });
    }
    PolicyConfig {
        mode,
        threshold,
        block_status: fp.block_status,
        tag_response: fp.tag_response,
        routes,
        allow_clients,
        allow_routes,
        exclusions,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use std::path::Path;

    fn problems(yaml: &str) -> Vec<String> {
        match Config::from_yaml(yaml, Path::new("test.yaml")) {
            Err(e) => e.problems(),
            Ok(_) => Vec::new(),
        }
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let yaml = "rules: {paths: ['/']}\npolicy:\n  mode: bogus\n  threshold: 0\n  routes:\n    - path_prefix: /a\n    - path_prefix: /b\n    - path_prefix: /c\n      threshold: -1\n";
        let ps = problems(yaml);
        assert!(
            ps.iter()
                .any(|p| p.starts_with("policy.mode: must be one of")),
            "{ps:?}"
        );
        assert!(
            ps.iter()
                .any(|p| p.starts_with("policy.threshold: must be > 0")),
            "{ps:?}"
        );
        assert!(
            ps.iter()
                .any(|p| p == "policy.routes[2].threshold: must be > 0 (an anomaly score), got -1"),
            "{ps:?}"
        );
        assert_eq!(ps.len(), 3, "{ps:?}");
    }

    #[test]
    fn the_transformer_weight_for_state_changes_is_checked_and_defaults_to_1() {
        let ps = problems("rules: {paths: ['/']}\nensemble:\n  transformer_unsafe_weight: 1.5\n");
        assert_eq!(
            ps,
            vec!["ensemble.transformer_unsafe_weight: must be in [0, 1], got 1.5".to_string()]
        );
        let cfg = Config::from_yaml("rules: {paths: ['/']}\n", Path::new("x.yaml"));
        let weight = cfg.map(|c| c.ensemble.transformer_unsafe_weight).ok();
        assert_eq!(weight, Some(1.0));
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = Config::from_yaml("policy:\n  mdoe: block\n", Path::new("x.yaml")).err();
        let Some(ConfigError::Parse { message, .. }) = err else {
            panic!("expected parse error, got {err:?}")
        };
        assert!(
            message.contains("policy") && message.contains("mdoe"),
            "{message}"
        );
    }

    #[test]
    fn bad_addresses_and_cidrs_are_named() {
        let ps = problems("rules: {paths: ['/']}\nlisten: [{address: 'nope'}]\nserver: {trusted_proxies: ['10.0.0.0/8', 'x']}\n");
        assert!(
            ps.iter().any(|p| p.starts_with("listen[0].address:")),
            "{ps:?}"
        );
        assert!(
            ps.iter()
                .any(|p| p.starts_with("server.trusted_proxies[1]:")),
            "{ps:?}"
        );
    }
}
