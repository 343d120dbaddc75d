//! Numeric features of a request for the isolation forest: what the request looks like and
//! what its client did before it (pre-upstream stage), plus the response (post-response
//! stage). The layout is fixed and documented below; changing it invalidates trained models,
//! so `FEATURES_VERSION` is stored with them. Pure: the caller supplies the client's state and
//! the request's own timestamp.

use chrono::{DateTime, FixedOffset, Timelike};

use crate::session::{ClientState, TAU_LONG, TAU_MEDIUM, TAU_SHORT};
use crate::template::{status_bucket, RouteStats, TemplateId};

/// Bumped whenever the layout below changes, or what the models read from a client's state:
/// since 6 the transformer's context is per client and user agent (`session::Sequence`), and
/// a set trained on per-client sequences would be asked about other ones; since 7 a client's
/// requests that follow links are a client of their own (`Sessions::lane`).
pub const FEATURES_VERSION: u32 = 7;

/// Pre-upstream features (index: meaning):
///  0 hour of day, sine      1 hour of day, cosine (the request's local time)
///  2 ln(1 + target length)  3 ln(1 + query arguments)   4 path depth
///  5 share of target bytes that are not alphanumeric or `/` `.` `-` `_`
///  6 method (GET/HEAD 0, POST 1, PUT/PATCH/DELETE 2, other 3)
///  7 template unknown (0/1)
///  8 ln(1 + requests in ~10 s)   9 ln(1 + requests in ~60 s)  10 ln(1 + requests in ~10 min)
///    (the client's, before this request)
/// 11 error ratio of the client's last ~60 s
/// 12 ln(1 + 401s)  13 ln(1 + 403s)  14 ln(1 + 404s)  (client, ~60 s)
/// 15 distinct templates / window length (client's recent requests)
/// 16 ln(1 + mean seconds between the client's requests)
/// 17 ln(1 + seconds since the client's previous request)
/// 18 share of the client's recent templates that are this request's template
/// 19 the route's traffic, all clients, against training: ln((1 + requests in ~60 s) /
///    (1 + requests in a busy minute of training))
/// 20 the client's hammering of this route against training: ln((1 + the client's requests of
///    this template in ~10 s) / (1 + what the route's 90th-percentile client reached))
pub const PRE: usize = 21;

/// Post-response features: the 21 above, then
/// 21 status class (1xx..5xx as 1..5)   22 ln(1 + response bytes)
/// 23 ln(1 + client's response bytes in ~60 s, this one included)
///    (a 304 counts as the route's usual 2xx size in 22 and 23: `delivered_bytes`)
/// 24 error ratio of the client's last ~60 s, this response included
/// 25 response size against the route's 2xx sizes in training: robust z-score of ln(1 + bytes),
///    clamped to ±10 (0 for non-2xx responses)
/// 26 surprise of the status on this route: -ln P(status bucket | route) from training
/// 27 for a 401/403: the route's authentication failures, all clients, against training:
///    ln((1 + failures in ~10 min) / (1 + failures in a busy ten minutes of training)); else 0
pub const POST: usize = 28;

/// Features whose low end is ordinary: more is the suspicious direction (rates, counts, sizes,
/// shares, surprise), and a value below the usual range means nothing. The forests floor them
/// at a low quantile of training (`detectors::forest`), since an isolation forest isolates
/// both ends: a crawler's first request in hours answered 304 with no body had the lowest
/// client bytes of any record and was flagged for it (217 of one simulated site's 740 false
/// positives). Two-sided: the hour (0, 1), the client's spread of templates (15, low is a
/// client repeating one request), its mean and latest gaps (16, 17, low is hammering).
pub const PRE_FLOORED: [bool; PRE] = {
    let mut f = [true; PRE];
    f[0] = false;
    f[1] = false;
    f[15] = false;
    f[16] = false;
    f[17] = false;
    f
};

/// `PRE_FLOORED` and the response's features, all of them floored (a 1xx status, an empty
/// body, a page smaller than usual, a common status are ordinary).
pub const POST_FLOORED: [bool; POST] = {
    let mut f = [true; POST];
    let mut i = 0;
    while i < PRE {
        f[i] = PRE_FLOORED[i];
        i += 1;
    }
    f
};

pub type PreVector = [f64; PRE];
pub type PostVector = [f64; POST];

/// Feature 27 above this (ten times the route's 401/403s of a busy ten minutes of training)
/// is a site-wide wave of authentication failures.
pub const FAILURE_WAVE: f64 = std::f64::consts::LN_10;

/// Whether a post-response vector came in a site-wide wave of authentication failures.
/// Training leaves such records out of the post forest (`learn`): credential stuffing spread
/// over hundreds of addresses is a thousand near-identical records in a training day, a dense
/// region that an isolation forest learns as normal, and no client has enough of them to be
/// set aside.
pub fn in_failure_wave(v: &PostVector) -> bool {
    v[27] > FAILURE_WAVE
}

/// What the features need to know about the request itself.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub time: DateTime<FixedOffset>,
    pub method: &'a str,
    pub target: &'a [u8],
    pub template: TemplateId,
    /// What training saw of the template's route.
    pub route: RouteStats,
    /// The route's decayed ~60 s request count, all clients, before this request.
    pub site_requests: f32,
}

/// What the post-response features need beyond the client's state.
#[derive(Debug, Clone, Copy)]
pub struct ResponseFacts {
    pub status: u16,
    pub bytes: u64,
    pub route: RouteStats,
    /// The route's decayed ~10 min count of 401/403 answers, all clients, this one included.
    pub site_failures: f32,
}

fn ln1p(x: f64) -> f64 {
    x.max(0.0).ln_1p()
}

/// Features before the upstream answers. `client` is the state *before* this request.
pub fn pre(r: &RequestFacts<'_>, client: Option<&ClientState>, window: usize) -> PreVector {
    let now = r.time.timestamp() as f64 + r.time.timestamp_subsec_millis() as f64 / 1000.0;
    let hour = r.time.hour() as f64 + r.time.minute() as f64 / 60.0;
    let angle = hour / 24.0 * std::f64::consts::TAU;
    let (path, query) = match r.target.iter().position(|&b| b == b'?') {
        Some(q) => (&r.target[..q], &r.target[q + 1..]),
        None => (r.target, &b""[..]),
    };
    let args = query
        .split(|&b| b == b'&')
        .filter(|a| !a.is_empty())
        .count();
    let depth = path.split(|&b| b == b'/').filter(|s| !s.is_empty()).count();
    let special = r
        .target
        .iter()
        .filter(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_')))
        .count();
    let method = match r.method {
        "GET" | "HEAD" => 0.0,
        "POST" => 1.0,
        "PUT" | "PATCH" | "DELETE" => 2.0,
        _ => 3.0,
    };
    let mut v = [0.0; PRE];
    v[0] = angle.sin();
    v[1] = angle.cos();
    v[2] = ln1p(r.target.len() as f64);
    v[3] = ln1p(args as f64);
    v[4] = depth as f64;
    v[5] = special as f64 / r.target.len().max(1) as f64;
    v[6] = method;
    v[7] = if r.template == TemplateId::UNKNOWN {
        1.0
    } else {
        0.0
    };
    v[19] =
        (ln1p(r.site_requests as f64) - ln1p(r.route.rate as f64 * TAU_MEDIUM)).clamp(-20.0, 20.0);
    let burst = client.map_or(0.0, |c| c.burst(now, r.template));
    v[20] = (ln1p(burst as f64) - ln1p(r.route.burst as f64)).clamp(-20.0, 20.0);
    if let Some(c) = client {
        v[8] = ln1p(c.rate_short.at(now, TAU_SHORT) as f64);
        v[9] = ln1p(c.rate_medium.at(now, TAU_MEDIUM) as f64);
        v[10] = ln1p(c.rate_long.at(now, TAU_LONG) as f64);
        v[11] = c.error_ratio(now) as f64;
        v[12] = ln1p(c.unauthorized.at(now, TAU_MEDIUM) as f64);
        v[13] = ln1p(c.forbidden.at(now, TAU_MEDIUM) as f64);
        v[14] = ln1p(c.not_found.at(now, TAU_MEDIUM) as f64);
        v[15] = c.unique_recent() as f64 / window.max(1) as f64;
        v[16] = ln1p(c.gap_mean as f64);
        v[17] = ln1p(now - c.last_seen);
        v[18] = c.recent.iter().filter(|&&t| t == r.template).count() as f64 / window.max(1) as f64;
    } else {
        // A client never seen before: no history, and "a long time" since its last request.
        v[17] = ln1p(86_400.0);
    }
    v
}

/// The bytes a response stands for: a 304 stands for the body the client already holds (the
/// route's usual 2xx size), not for nothing. Counted as empty, a crawler's or feed reader's
/// first conditional request in hours had the least client traffic of any record, a rare
/// combination the post forest flagged (on one simulated site, 156 of its 360 false
/// positives even with the low end of sizes floored).
pub fn delivered_bytes(r: &ResponseFacts) -> u64 {
    if r.status == 304 && r.route.bytes_mean > 0.0 {
        (r.route.bytes_mean as f64).exp_m1().max(0.0) as u64
    } else {
        r.bytes
    }
}

/// Features after the response. `client` is the state *after* this request and response.
pub fn post(pre: &PreVector, r: &ResponseFacts, client: &ClientState, now: f64) -> PostVector {
    let mut v = [0.0; POST];
    v[..PRE].copy_from_slice(pre);
    let size = ln1p(delivered_bytes(r) as f64);
    v[PRE] = (r.status / 100) as f64;
    v[PRE + 1] = size;
    v[PRE + 2] = ln1p(client.bytes.at(now, TAU_MEDIUM) as f64);
    v[PRE + 3] = client.error_ratio(now) as f64;
    if (200..300).contains(&r.status) && (r.route.bytes_mean > 0.0 || r.route.bytes_std > 0.0) {
        // A floor on the spread: a route that always sends the same page size must not call
        // a few bytes more an anomaly.
        let spread = (r.route.bytes_std as f64).max(0.25);
        v[PRE + 4] = ((size - r.route.bytes_mean as f64) / spread).clamp(-10.0, 10.0);
    }
    let p = r.route.status[status_bucket(r.status)] as f64;
    v[PRE + 5] = -(p.clamp(1e-6, 1.0)).ln();
    if matches!(r.status, 401 | 403) {
        v[PRE + 6] = (ln1p(r.site_failures as f64) - ln1p(r.route.failure_rate as f64 * TAU_LONG))
            .clamp(-20.0, 20.0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::TemplateId;

    fn facts(target: &'static str, hour: u32) -> RequestFacts<'static> {
        let t = DateTime::parse_from_rfc3339(&format!("2024-05-01T{hour:02}:00:00+02:00")).unwrap();
        RequestFacts {
            time: t,
            method: "GET",
            target: target.as_bytes(),
            template: TemplateId(3),
            route: RouteStats::default(),
            site_requests: 0.0,
        }
    }

    #[test]
    fn request_shape_and_real_hour() {
        let v = pre(&facts("/a/b/c?x=1&y=%27", 6), None, 20);
        assert!(
            (v[0] - 1.0).abs() < 1e-9,
            "06:00 local is a quarter of the day: {}",
            v[0]
        );
        assert_eq!(v[3], (2.0f64).ln_1p());
        assert_eq!(v[4], 3.0);
        assert!(v[5] > 0.2);
        assert_eq!(v[8], 0.0);
    }

    #[test]
    fn client_history_shows_in_rates_and_status_counts() {
        let mut c = ClientState::new(1_714_536_000.0);
        for i in 0..30 {
            let now = 1_714_536_000.0 + i as f64 * 0.2;
            c.observe_request(now, TemplateId(3), 20);
            c.observe_response(now, 404, 10);
        }
        let v = pre(&facts("/x", 6), Some(&c), 20);
        assert!(v[8] > 2.5, "a burst of 30 requests in 6 s: {}", v[8]);
        assert!(v[11] > 0.9, "all errors: {}", v[11]);
        assert!(v[14] > 3.0);
        assert!((v[15] - 0.05).abs() < 1e-9, "one template of twenty");
        assert_eq!(v[18], 1.0, "the same template twenty times over");
        let resp = ResponseFacts {
            status: 404,
            bytes: 10,
            route: RouteStats::default(),
            site_failures: 0.0,
        };
        let p = post(&v, &resp, &c, 1_714_536_006.0);
        assert_eq!(p[PRE], 4.0);
    }

    #[test]
    fn responses_are_compared_with_what_the_route_usually_sends() {
        let mut route = RouteStats {
            bytes_mean: (20_000f32).ln_1p(),
            bytes_std: 0.3,
            rate: 0.5,
            failure_rate: 1.0 / 600.0,
            ..RouteStats::default()
        };
        route.status = [0.9, 0.01, 0.05, 0.01, 0.01, 0.01, 0.01];
        let c = ClientState::new(1_714_536_000.0);
        let v = pre(&facts("/admin/reports/export", 6), None, 20);
        let at = |status, bytes, site_failures| {
            let r = ResponseFacts {
                status,
                bytes,
                route,
                site_failures,
            };
            post(&v, &r, &c, 1_714_536_000.0)
        };
        assert!(at(200, 21_000, 0.0)[PRE + 4].abs() < 0.5, "a usual size");
        assert_eq!(at(200, 40_000_000, 0.0)[PRE + 4], 10.0, "a huge export");
        assert!(at(200, 21_000, 0.0)[PRE + 5] < 0.2);
        assert!(
            at(404, 5_000, 0.0)[PRE + 5] > 4.0,
            "this route does not 404"
        );
        assert_eq!(at(200, 21_000, 50.0)[PRE + 6], 0.0, "only failures count");
        assert!(
            at(401, 900, 50.0)[PRE + 6] > 3.0,
            "fifty failures in ten minutes, usually one"
        );
        // A 304 stands for the page the client already holds: as large as the route's usual
        // page, not an empty response (on a route training never saw answer 2xx, it is 0).
        assert!((at(304, 0, 0.0)[PRE + 1] - at(200, 20_000, 0.0)[PRE + 1]).abs() < 1e-3);
        let unseen = ResponseFacts {
            status: 304,
            bytes: 0,
            route: RouteStats::default(),
            site_failures: 0.0,
        };
        assert_eq!(delivered_bytes(&unseen), 0);
        let mut busy = facts("/search?q=a", 6);
        busy.route = route;
        busy.site_requests = 600.0;
        assert!(
            pre(&busy, None, 20)[19] > 2.5,
            "twenty times the route's usual traffic"
        );
    }
}
