//! Integration tests: the real `vigil` binary in front of a real upstream, over real HTTP on
//! loopback ports.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod harness;

mod clients;
mod config_errors;
mod inspection;
mod logs;
mod offline;
mod policy;
mod proxying;
mod reload;
mod scenarios;
