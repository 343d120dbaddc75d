//! Detectors score a request. `rules` matches attack signatures on the decoded request parts.

pub mod rules;
