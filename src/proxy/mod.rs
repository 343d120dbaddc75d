//! The only Pingora-aware code: the `ProxyHttp` implementation that pins a model set per
//! request, buffers the body prefix for inspection, scores the request before it goes
//! upstream, blocks or tags it, and writes the access and decision logs once the response is
//! sent; plus the server assembly (listeners, upstream group, health checks, signals).

mod server;

pub use server::{serve, ServeOptions};

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::config::{Mode, OverLimit, Upstream};
use crate::forwarded;
use crate::logsink::LogSink;
use crate::models::{ModelSet, Registry};
use crate::pipeline::{self, Pre, RequestInput};
use crate::policy::Action;
use crate::record::{escape_nginx, Record};
use crate::request::HttpRequest;
use crate::session::Sessions;

/// State shared by every request.
pub struct Shared {
    pub registry: Arc<Registry>,
    pub access: LogSink,
    pub decisions: LogSink,
    pub decision_log_all: bool,
    pub trusted: Vec<IpNet>,
    pub upstreams: Arc<LoadBalancer<RoundRobin>>,
    pub upstream: Upstream,
    pub upstream_ca: Option<Arc<pingora::protocols::tls::CaType>>,
    /// Client sessions outlive model swaps (they hold behaviour, not model output).
    pub sessions: Arc<Sessions>,
}

pub struct VigilProxy {
    pub shared: Arc<Shared>,
}

/// Per-request state. `models` is pinned at creation so that the whole request is handled by
/// one model set even if a reload happens meanwhile.
pub struct RequestCtx {
    models: Arc<ModelSet>,
    started: Instant,
    request_id: String,
    client: IpAddr,
    host: String,
    mode: Mode,
    /// The pre-upstream verdict (absent when inspection is off or never got that far).
    pre: Option<Pre>,
    inspect_us: u64,
    upstream: Option<String>,
    sent_continue: bool,
    /// Inspected body bytes Pingora cannot replay itself (see `read_body`).
    replay: Option<Bytes>,
    /// Answered by vigil itself (block, 413): nothing went upstream.
    local_status: Option<u16>,
}

const BLOCK_BODY_PREFIX: &str = "Request blocked by vigil. Request id: ";

#[async_trait]
impl ProxyHttp for VigilProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            models: self.shared.registry.current(),
            started: Instant::now(),
            request_id: String::new(),
            client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            host: String::new(),
            mode: Mode::Off,
            pre: None,
            inspect_us: 0,
            upstream: None,
            sent_continue: false,
            replay: None,
            local_status: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let req = session.req_header();
        let xff: Vec<&[u8]> = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        ctx.client = forwarded::client_ip(peer, &xff, &self.shared.trusted);
        ctx.request_id =
            forwarded::request_id(req.headers.get("x-request-id").map(|v| v.as_bytes()));
        ctx.host = req
            .headers
            .get("host")
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .or_else(|| req.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let path = req.uri.path().to_string();

        // Verdict headers are ours alone: a client must never be able to supply them.
        let spoofed: Vec<http::HeaderName> = req
            .headers
            .keys()
            .filter(|n| n.as_str().starts_with("x-vigil-"))
            .cloned()
            .collect();
        for name in spoofed {
            session.req_header_mut().remove_header(&name);
        }

        let models = ctx.models.clone();
        let eff = models.policy.effective(&ctx.host, &path);
        ctx.mode = eff.mode;
        if eff.mode == Mode::Off {
            return Ok(false);
        }

        let (body, truncated) = match self.read_body(session, ctx).await? {
            BodyRead::Done(b, t) => (b, t),
            BodyRead::Rejected => return Ok(true),
        };

        let t0 = Instant::now();
        let req = session.req_header();
        let http_req = HttpRequest {
            method: req.method.as_str().to_string(),
            target: req.raw_path().to_vec(),
            version: version_str(req.version).to_string(),
            headers: req
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            body,
            body_truncated: truncated,
        };
        let client_name = ctx.client.to_string();
        let input = RequestInput {
            client: ctx.client,
            client_name: &client_name,
            time: chrono::Local::now().fixed_offset(),
            host: &ctx.host,
            path: &path,
            request: &http_req,
        };
        let pre = pipeline::pre(&models, &self.shared.sessions, &input);
        ctx.inspect_us = t0.elapsed().as_micros() as u64;
        let action = pre.decision.action;
        ctx.pre = Some(pre);

        if action == Action::Block {
            let status = models.policy.block_status();
            let body = format!("{BLOCK_BODY_PREFIX}{}\n", ctx.request_id);
            self.respond_local(session, ctx, status, body).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(backend) = self.shared.upstreams.select(b"", 256) else {
            tracing::warn!(request_id = %ctx.request_id, "No healthy upstream server; answering 502.");
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "no healthy upstream server",
            ));
        };
        let u = &self.shared.upstream;
        let mut peer = HttpPeer::new(backend.addr.clone(), u.tls, u.sni.clone());
        peer.options.connection_timeout = Some(u.connect_timeout);
        peer.options.read_timeout = Some(u.read_timeout);
        peer.options.verify_cert = u.verify_cert;
        peer.options.verify_hostname = u.verify_cert;
        peer.options.ca = self.shared.upstream_ca.clone();
        ctx.upstream = Some(backend.addr.to_string());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let peer_trusted = peer.is_some_and(|p| self.shared.trusted.iter().any(|n| n.contains(&p)));
        // From a trusted proxy the chain is extended; from anyone else it is replaced, so the
        // upstream never sees addresses a client made up.
        let xff = match (peer, peer_trusted) {
            (Some(p), true) => {
                let prior: Vec<String> = upstream_request
                    .headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect();
                if prior.is_empty() {
                    p.to_string()
                } else {
                    format!("{}, {p}", prior.join(", "))
                }
            }
            (Some(p), false) => p.to_string(),
            (None, _) => ctx.client.to_string(),
        };
        upstream_request.insert_header("x-forwarded-for", xff)?;
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        upstream_request.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
        upstream_request.insert_header("x-request-id", ctx.request_id.as_str())?;
        if ctx.sent_continue {
            upstream_request.remove_header("expect");
        }
        if let Some(pre) = ctx.pre.as_ref().filter(|p| tagging(ctx.mode, p)) {
            for (k, v) in verdict_headers(pre, &ctx.models) {
                upstream_request.insert_header(k, v)?;
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(prefix) = ctx.replay.take() {
            let mut b = BytesMut::from(&prefix[..]);
            if let Some(rest) = body.take() {
                b.extend_from_slice(&rest);
            }
            *body = Some(b.freeze());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(pre) = &ctx.pre {
            pipeline::responded(&self.shared.sessions, pre, resp.status.as_u16());
        }
        if ctx.models.policy.tag_response() {
            if let Some(pre) = ctx.pre.as_ref().filter(|p| tagging(ctx.mode, p)) {
                for (k, v) in verdict_headers(pre, &ctx.models) {
                    resp.insert_header(k, v)?;
                }
            }
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.local_status)
            .unwrap_or(if e.is_some() { 499 } else { 0 });
        if let Some(err) = e {
            tracing::warn!(request_id = %ctx.request_id, upstream = ?ctx.upstream, status, error = %err, "Request failed.");
        }
        let req = session.req_header();
        let record = Record {
            client: ctx.client.to_string(),
            remote_user: basic_auth_user(req.headers.get("authorization").map(|v| v.as_bytes())),
            time: chrono::Local::now().fixed_offset(),
            request_line: request_line(req),
            status,
            bytes: session.body_bytes_sent() as u64,
            referer: req.headers.get("referer").map(|v| v.as_bytes().to_vec()),
            user_agent: req.headers.get("user-agent").map(|v| v.as_bytes().to_vec()),
        };
        if self.shared.access.is_on() {
            self.shared.access.write(record.to_combined());
        }
        let post = ctx.pre.as_ref().map(|pre| {
            let t0 = Instant::now();
            let post = pipeline::post(
                &ctx.models,
                &self.shared.sessions,
                pre,
                record.status,
                record.bytes,
            );
            ctx.inspect_us += t0.elapsed().as_micros() as u64;
            post
        });
        if let Some(p) = post.as_ref().filter(|p| p.escalated_now) {
            tracing::warn!(request_id = %ctx.request_id, client = %ctx.client, score = p.verdict.score, "Client escalated: its next requests get the escalation action.");
        }
        let worth_logging = self.shared.decision_log_all
            || ctx.pre.as_ref().is_some_and(|p| {
                !p.decision.matches.is_empty() || p.verdict.anomaly || p.escalated
            })
            || post.as_ref().is_some_and(|p| p.verdict.anomaly);
        if self.shared.decisions.is_on() && worth_logging {
            let line = decision_json(&record, ctx, post.as_ref(), e);
            self.shared.decisions.write(line);
        }
    }
}

enum BodyRead {
    /// The inspected bytes and whether the body was longer.
    Done(Vec<u8>, bool),
    /// Answered 413 already.
    Rejected,
}

impl VigilProxy {
    /// Read up to `body_limit` bytes of the request body before deciding. Pingora replays
    /// what was read to the upstream from its retry buffer (64 KiB); when a read overshoots
    /// that buffer the bytes are kept in `ctx.replay` and prepended to the next chunk instead.
    async fn read_body(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<BodyRead> {
        let limit = ctx.models.inspection.body_limit;
        let over = ctx.models.inspection.over_limit;
        let req = session.req_header();
        let content_length: Option<u64> = req
            .headers
            .get("content-length")
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|s| s.trim().parse().ok());
        let chunked = req
            .headers
            .get("transfer-encoding")
            .is_some_and(|v| v.as_bytes().to_ascii_lowercase().ends_with(b"chunked"));
        if !chunked && content_length.unwrap_or(0) == 0 {
            return Ok(BodyRead::Done(Vec::new(), false));
        }
        if limit == 0 {
            return Ok(BodyRead::Done(Vec::new(), true));
        }
        if over == OverLimit::Reject && content_length.is_some_and(|l| l > limit as u64) {
            self.respond_local(session, ctx, 413, "Request body too large.\n".into())
                .await?;
            return Ok(BodyRead::Rejected);
        }
        let expects_continue = req
            .headers
            .get("expect")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            session.write_continue_response().await?;
            ctx.sent_continue = true;
        }
        session.enable_retry_buffering();
        let mut buf: Vec<u8> = Vec::new();
        while buf.len() < limit {
            // Never let our own reads complete a length-delimited body that overflows the
            // retry buffer: Pingora would then have nothing left to send it with.
            if let Some(cl) = content_length {
                if cl > limit as u64 && cl - (buf.len() as u64) <= 64 * 1024 && !buf.is_empty() {
                    break;
                }
            }
            match session.read_request_body().await? {
                Some(chunk) => buf.extend_from_slice(&chunk),
                None => break,
            }
        }
        let done = session.is_body_done();
        let truncated = buf.len() > limit || !done;
        if truncated && over == OverLimit::Reject {
            self.respond_local(session, ctx, 413, "Request body too large.\n".into())
                .await?;
            return Ok(BodyRead::Rejected);
        }
        if session.retry_buffer_truncated() {
            if done {
                // Everything was read but Pingora cannot replay more than its buffer.
                tracing::warn!(request_id = %ctx.request_id, bytes = buf.len(), "Request body overflowed the replay buffer; answering 413.");
                self.respond_local(session, ctx, 413, "Request body too large.\n".into())
                    .await?;
                return Ok(BodyRead::Rejected);
            }
            ctx.replay = Some(Bytes::copy_from_slice(&buf));
        }
        buf.truncate(limit);
        Ok(BodyRead::Done(buf, truncated))
    }

    async fn respond_local(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        body: String,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(status, Some(4))?;
        resp.insert_header("content-type", "text/plain; charset=utf-8")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        // The unread rest of the body would be parsed as the next request: close instead.
        let body_pending = !session.is_body_done();
        if body_pending {
            resp.insert_header("connection", "close")?;
            session.set_keepalive(None);
        }
        ctx.local_status = Some(status);
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
        Ok(())
    }
}

fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn request_line(req: &RequestHeader) -> Vec<u8> {
    let mut l = Vec::with_capacity(req.raw_path().len() + 20);
    l.extend_from_slice(req.method.as_str().as_bytes());
    l.push(b' ');
    l.extend_from_slice(req.raw_path());
    l.push(b' ');
    l.extend_from_slice(version_str(req.version).as_bytes());
    l
}

/// `$remote_user`: the user part of `Authorization: Basic`, as nginx reports it.
pub fn basic_auth_user(v: Option<&[u8]>) -> Option<Vec<u8>> {
    let v = v?;
    let rest = v
        .strip_prefix(b"Basic ")
        .or_else(|| v.strip_prefix(b"basic "))?;
    let rest = trim_ascii(rest);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let user = match decoded.iter().position(|&b| b == b':') {
        Some(i) => decoded[..i].to_vec(),
        None => return None,
    };
    if user.is_empty() {
        None
    } else {
        Some(user)
    }
}

fn trim_ascii(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// Verdict headers go on every request of a `tag` route, and on a request that a capped
/// action (learned verdict or escalation) tags on a `block` route.
fn tagging(mode: Mode, pre: &Pre) -> bool {
    mode == Mode::Tag || pre.decision.action == Action::Tag
}

/// `x-vigil-verdict` (`attack`: the rules decided; `anomaly`: the ensemble; `escalated`: the
/// client is; else `pass`), `x-vigil-score` (rule points), `x-vigil-rules`, `x-vigil-model`
/// (the model-set version that judged the request), and with learned
/// detectors `x-vigil-anomaly-score`, `x-vigil-detectors` (`name=score/threshold(raw/raw
/// threshold)`, raw in the detector's unit: rule points, forest anomaly score, transformer NLL
/// in nats; `!` where it voted) and `x-vigil-template`. Rule ids are restricted to
/// `[A-Za-z0-9._-]` when packs load and templates are escaped, so every value is a valid
/// header value.
fn verdict_headers(pre: &Pre, models: &ModelSet) -> Vec<(&'static str, String)> {
    let d = &pre.decision;
    let v = &pre.verdict;
    let ids: Vec<&str> = d.matches.iter().map(|m| m.id.as_str()).collect();
    let verdict = if d.attack {
        "attack"
    } else if v.anomaly {
        "anomaly"
    } else if pre.escalated {
        "escalated"
    } else {
        "pass"
    };
    let mut h = vec![
        ("x-vigil-verdict", verdict.to_string()),
        ("x-vigil-score", d.score.to_string()),
        ("x-vigil-rules", ids.join(",")),
        ("x-vigil-model", models.version()),
    ];
    if let Some(l) = models.learned.as_deref() {
        h.push(("x-vigil-anomaly-score", format!("{:.3}", v.score)));
        let dets: Vec<String> = v
            .detectors
            .iter()
            .map(|s| {
                format!(
                    "{}={:.3}/{:.2}({:.4}/{:.4}){}",
                    s.detector.as_str(),
                    s.score,
                    s.threshold,
                    s.raw,
                    s.raw_threshold,
                    if s.vote { "!" } else { "" }
                )
            })
            .collect();
        h.push(("x-vigil-detectors", dets.join(";")));
        h.push((
            "x-vigil-template",
            escape_nginx(l.vocabulary.text(pre.template).as_bytes()),
        ));
    }
    h
}

fn decision_json(
    r: &Record,
    ctx: &RequestCtx,
    post: Option<&pipeline::Post>,
    e: Option<&Error>,
) -> String {
    let opt = |v: &Option<Vec<u8>>| v.as_deref().map(escape_nginx);
    let pre = ctx.pre.as_ref();
    let d = pre.map(|p| &p.decision);
    let template = pre.and_then(|p| {
        ctx.models
            .learned
            .as_deref()
            .map(|l| escape_nginx(l.vocabulary.text(p.template).as_bytes()))
    });
    let v = serde_json::json!({
        "time": r.time.to_rfc3339(),
        "request_id": ctx.request_id,
        "client": r.client,
        "remote_user": opt(&r.remote_user),
        "host": escape_nginx(ctx.host.as_bytes()),
        "request": escape_nginx(&r.request_line),
        "status": r.status,
        "bytes": r.bytes,
        "referer": opt(&r.referer),
        "user_agent": opt(&r.user_agent),
        "duration_us": ctx.started.elapsed().as_micros() as u64,
        "upstream": ctx.upstream,
        "mode": ctx.mode.as_str(),
        "action": d.map_or("allow", |d| d.action.as_str()),
        "attack": d.is_some_and(|d| d.attack),
        "anomaly": pre.is_some_and(|p| p.verdict.anomaly) || post.is_some_and(|p| p.verdict.anomaly),
        "score": d.map_or(0, |d| d.score),
        "threshold": d.map(|d| d.threshold),
        "allowlisted": d.is_some_and(|d| d.allowlisted),
        "matches": d.map(|d| &d.matches),
        "excluded": d.map_or(0, |d| d.excluded),
        "template": template,
        "lane": pre.map(Pre::lane),
        "escalated": pre.is_some_and(|p| p.escalated),
        "escalated_now": post.is_some_and(|p| p.escalated_now),
        "pre": pre.map(|p| &p.verdict),
        "post": post.map(|p| &p.verdict),
        "inspect_us": ctx.inspect_us,
        "rules_version": ctx.models.version(),
        "error": e.map(|e| e.to_string()),
    });
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_user_like_nginx() {
        assert_eq!(
            basic_auth_user(Some(b"Basic Ym9iOnB3")),
            Some(b"bob".to_vec())
        );
        assert_eq!(basic_auth_user(Some(b"Basic OnB3")), None);
        assert_eq!(basic_auth_user(Some(b"Bearer xyz")), None);
        assert_eq!(basic_auth_user(Some(b"Basic !!!")), None);
    }
}
