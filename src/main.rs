//! The `vigil` binary: logging set-up and the command line (see `cli`).
// A panic on a request or reload path would take the proxy down: outside tests, errors are
// handled, never unwrapped (enforced by the CI's clippy run).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::Parser;

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Diagnostics go to stderr so that an access log on stdout stays clean.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let cli = vigil::cli::Cli::parse();
    match vigil::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vigil: {e:#}");
            std::process::exit(1);
        }
    }
}
