//! vigil: an inline inspection proxy. The library holds every stage of the request flow
//! (config -> record -> normalize -> detectors -> policy -> models) so that the binary, the
//! tests and the benches drive the same code; only `proxy` knows Pingora.
// A panic on a request or reload path would take the proxy down: outside tests, errors are
// handled, never unwrapped (enforced by the CI's clippy run).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cli;
pub mod config;
pub mod detectors;
pub mod ensemble;
pub mod eval;
pub mod features;
pub mod forwarded;
pub mod learn;
pub mod logsink;
pub mod memo;
pub mod models;
pub mod normalize;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod record;
pub mod request;
pub mod session;
pub mod simulate;
pub mod template;
