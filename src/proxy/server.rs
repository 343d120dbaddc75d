//! Server assembly: Pingora server from the validated config, the upstream group with health
//! checks, listeners, log sinks, and the SIGHUP / SIGUSR1 handlers (installed before the
//! server listens: by default SIGHUP would kill the process, and Pingora does not handle it).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::health_check::{HealthObserve, TcpHealthCheck};
use pingora::lb::{selection::RoundRobin, Backend, LoadBalancer};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;

use super::{Shared, VigilProxy};
use crate::config::Config;
use crate::logsink::LogSink;
use crate::models::{ModelSet, Registry, ReloadOutcome};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Models(#[from] crate::models::ModelError),
    #[error("{0}")]
    Log(#[from] crate::logsink::SinkError),
    #[error("upstream servers: {0}")]
    Upstream(String),
    #[error("listener {address}: {reason}")]
    Listener { address: String, reason: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Process-level options from the command line.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub config_path: PathBuf,
    /// Take over the listeners of a running vigil (SIGQUIT + `--upgrade`).
    pub upgrade: bool,
    pub daemon: bool,
}

struct LogHealth;

#[async_trait]
impl HealthObserve for LogHealth {
    async fn observe(&self, target: &Backend, healthy: bool) {
        if healthy {
            tracing::info!(upstream = %target.addr, "Upstream server is healthy again.");
        } else {
            tracing::warn!(upstream = %target.addr, "Upstream server failed its health check; no longer sending it requests.");
        }
    }
}

/// Build everything and run until a stop signal. Returns only on a start-up error.
pub fn serve(cfg: Config, opts: ServeOptions) -> Result<(), ServeError> {
    let first = ModelSet::build(&cfg, 1)?;
    tracing::info!(
        rules = first.rules.rules().len(),
        patterns = first.rules.pattern_count(),
        version = %first.version(),
        mode = cfg.policy.mode.as_str(),
        learned = first.learned.is_some(),
        "Model set loaded."
    );
    if first.learned.is_none() {
        match &cfg.models.dir {
            Some(dir) => {
                tracing::warn!(dir = %dir.display(), "No model set in models.dir: the rules run alone until `vigil train` writes one there and vigil gets SIGHUP.")
            }
            None => tracing::info!("models.dir is off: the rules run alone."),
        }
    }
    let access = LogSink::open("access", &cfg.logging.access_log)?;
    let decisions = LogSink::open("decision", &cfg.logging.decision_log)?;
    let registry = Arc::new(Registry::new(&opts.config_path, cfg.clone(), first));

    install_signal_handlers(registry.clone(), access.clone(), decisions.clone())?;

    let conf = ServerConf {
        threads: cfg.server.threads,
        pid_file: cfg.server.pid_file.display().to_string(),
        upgrade_sock: cfg.server.upgrade_sock.display().to_string(),
        grace_period_seconds: Some(cfg.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(cfg.server.graceful_shutdown_timeout.as_secs()),
        daemon: opts.daemon,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let addrs: Vec<String> = cfg.upstream.servers.iter().map(|a| a.to_string()).collect();
    let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addrs.iter().map(String::as_str))
        .map_err(|e| ServeError::Upstream(e.to_string()))?;
    let mut hc = if cfg.upstream.tls {
        TcpHealthCheck::new_tls(&cfg.upstream.sni)
    } else {
        TcpHealthCheck::new()
    };
    let ca = load_ca(&cfg.upstream)?;
    hc.peer_template.options.ca = ca.clone();
    hc.peer_template.options.verify_cert = cfg.upstream.verify_cert;
    hc.peer_template.options.verify_hostname = cfg.upstream.verify_cert;
    hc.health_changed_callback = Some(Box::new(LogHealth));
    lb.set_health_check(hc);
    lb.health_check_frequency = Some(cfg.upstream.health_check_interval);
    let health = background_service("upstream health check", lb);
    let upstreams = health.task();

    let shared = Arc::new(Shared {
        registry,
        access,
        decisions,
        decision_log_all: cfg.logging.decision_log_all,
        trusted: cfg.server.trusted_proxies.clone(),
        upstreams,
        upstream: cfg.upstream.clone(),
        upstream_ca: ca,
        sessions: Arc::new(crate::session::Sessions::new(cfg.sessions.clone())),
    });
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        VigilProxy { shared },
        "vigil proxy",
    );
    for l in &cfg.listeners {
        let address = l.address.to_string();
        match &l.tls {
            None => proxy.add_tcp(&address),
            Some(tls) => proxy
                .add_tls(
                    &address,
                    &tls.cert.display().to_string(),
                    &tls.key.display().to_string(),
                )
                .map_err(|e| ServeError::Listener {
                    address: address.clone(),
                    reason: e.to_string(),
                })?,
        }
        tracing::info!(address = %address, tls = l.tls.is_some(), "Listening.");
    }
    server.add_service(proxy);
    server.add_service(health);
    server.run_forever();
}

/// The CA bundle upstream certificates are checked against, when one is configured.
fn load_ca(
    u: &crate::config::Upstream,
) -> Result<Option<Arc<pingora::protocols::tls::CaType>>, ServeError> {
    let Some(path) = &u.ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path)
        .map_err(|e| ServeError::Upstream(format!("ca_file {}: {e}", path.display())))?;
    let certs = pingora::tls::x509::X509::stack_from_pem(&pem).map_err(|e| {
        ServeError::Upstream(format!(
            "ca_file {}: not a PEM certificate bundle: {e}",
            path.display()
        ))
    })?;
    if certs.is_empty() {
        return Err(ServeError::Upstream(format!(
            "ca_file {}: no certificate in it",
            path.display()
        )));
    }
    Ok(Some(Arc::new(certs.into_boxed_slice())))
}

/// SIGHUP: rebuild the model set from the config file and swap it in (or keep the old one and
/// say why). SIGUSR1: reopen log files. Both run on their own thread, off the request path.
fn install_signal_handlers(
    registry: Arc<Registry>,
    access: LogSink,
    decisions: LogSink,
) -> Result<(), ServeError> {
    use signal_hook::consts::{SIGHUP, SIGUSR1};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGHUP, SIGUSR1]).map_err(ServeError::Signals)?;
    std::thread::Builder::new()
        .name("vigil-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                match sig {
                    SIGHUP => match registry.reload() {
                        Ok(ReloadOutcome::Swapped { version, warnings }) => {
                            for w in warnings {
                                tracing::warn!("{w}");
                            }
                            tracing::info!(version = %version, "Model set reloaded.");
                        }
                        Err(e) => {
                            for p in e.problems() {
                                tracing::error!(problem = %p, "Reload refused; the previous model set keeps serving.");
                            }
                        }
                    },
                    SIGUSR1 => {
                        access.reopen();
                        decisions.reopen();
                    }
                    _ => {}
                }
            }
        })
        .map_err(ServeError::Signals)?;
    Ok(())
}
