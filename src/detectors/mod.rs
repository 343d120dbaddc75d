//! Detectors score a request. `rules` matches attack signatures on the decoded request parts;
//! `forest` is an isolation forest over the numeric features of the request and its client.

pub mod bigram;
pub mod forest;
pub mod rules;
