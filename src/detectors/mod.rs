//! Detectors score a request. `rules` matches attack signatures on the decoded request parts;
//! `forest` is an isolation forest over the numeric features of the request and its client;
//! `transformer` scores how surprising a request's template is after the previous
//! ones of the client's user agent (`bigram` is the baseline it is measured against).

pub mod bigram;
pub mod forest;
pub mod rules;
pub mod transformer;
