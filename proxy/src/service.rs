//! The pingora `ProxyHttp` implementation: it parses each request once, runs the filter
//! chain in each pingora phase, and turns every failure into an S3 XML error.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use filters::backend::Backend;
use filters::keys::KeyState;
use filters::request::S3Request;
use filters::{s3err, Chain, Flow, Reply, RequestCtx, S3Error, S3ErrorCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};

use crate::audit::{Audit, AuditLine};
use crate::metrics::Metrics;

pub struct S3Proxy {
    pub chain: Chain,
    pub backend: Arc<Backend>,
    pub keys: Arc<KeyState>,
    /// The chain encrypts: without a key every request is refused.
    pub needs_key: bool,
    pub vhost_suffix: Option<String>,
    pub metrics: Arc<Metrics>,
    pub audit: Option<Arc<Audit>>,
    /// An upgrade or stop in progress: every answer closes its connection (drain.rs).
    pub drain: Arc<crate::drain::Drain>,
}

fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    format!("{:016X}{:08X}", t, SEQ.fetch_add(1, Ordering::Relaxed) as u32)
}

/// The error type of a read the crypto filter planned anew on the backend's answer.
const RESENT: ErrorType = ErrorType::Custom("read planned anew");

/// Wraps an S3 error as a pingora error, keeping it retrievable as the cause.
fn to_pingora(ctx: &mut RequestCtx, e: S3Error) -> Box<Error> {
    ctx.error = Some(e.clone());
    Error::because(ErrorType::HTTPStatus(e.status()), "s3 error", e)
}

fn base_header(status: u16, ctx: &RequestCtx) -> Result<ResponseHeader> {
    let mut h = ResponseHeader::build(status, Some(6))?;
    h.insert_header("date", httpdate::fmt_http_date(SystemTime::now()))?;
    h.insert_header("x-amz-request-id", ctx.request_id.as_str())?;
    h.insert_header("server", "s3-crypt-proxy")?;
    Ok(h)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Keep the connection when the request body was read whole.
    IfBodyUnread,
    /// The connection is closed after this reply whatever happens.
    AfterReply,
}

/// Most a client may still send after an early answer (an error, a 412) that is read and
/// thrown away so that it gets to read the answer, as nginx's lingering close does: a client
/// blocked in sending a PBS chunk would otherwise see a reset instead of the S3 error.
const LINGER_MAX_BYTES: u64 = 16 << 20;
const LINGER_TIME: Duration = Duration::from_secs(5);

/// Reads and discards the rest of the request body within the limits above, once per request
/// (our own early reply and `logging` both linger: a drain that gave up must not make a slow
/// client wait twice); true when it was read whole (the connection can then be reused), false
/// when the connection must be closed.
async fn drain_unread_body(session: &mut Session, ctx: &mut RequestCtx) -> bool {
    if session.is_body_done() || std::mem::replace(&mut ctx.lingered, true) {
        return session.is_body_done();
    }
    let req = session.req_header();
    let waits_for_continue = req.headers.get("expect").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if waits_for_continue && !ctx.continued && session.body_bytes_read() == 0 {
        return false; // the client has not sent the body and will not: nothing to drain
    }
    let declared = req.headers.get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n.saturating_sub(session.body_bytes_read() as u64) > LINGER_MAX_BYTES) {
        return false;
    }
    let drain = async {
        let mut left = LINGER_MAX_BYTES;
        while let Ok(Some(piece)) = session.read_request_body().await {
            left = left.checked_sub(piece.len() as u64)?;
        }
        session.is_body_done().then_some(())
    };
    matches!(tokio::time::timeout(LINGER_TIME, drain).await, Ok(Some(())))
}

impl S3Proxy {
    /// Sends a reply of the proxy's own. `Closing::AfterReply` when the caller will close the
    /// connection anyway (pingora does after a failed proxy attempt): the client is told so.
    async fn write_reply(&self, session: &mut Session, ctx: &mut RequestCtx, reply: Reply, closing: Closing) -> Result<()> {
        let mut h = base_header(reply.status, ctx)?;
        for (n, v) in reply.headers {
            h.insert_header(n, v)?;
        }
        h.insert_header("content-length", reply.body.len().to_string())?;
        // Drained or not, the client gets its answer; only a whole body allows reuse.
        if !drain_unread_body(session, ctx).await || closing == Closing::AfterReply || self.drain.closes_connections() {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(h), false).await?;
        session.write_response_body(Some(reply.body), true).await?;
        Ok(())
    }

    async fn write_error(&self, session: &mut Session, ctx: &mut RequestCtx, e: S3Error, closing: Closing) -> Result<()> {
        let body = if session.req_header().method == http::Method::HEAD { Bytes::new() } else { e.to_xml(&ctx.request_id) };
        let mut headers = vec![("content-type", "application/xml".to_string())];
        if let Some(secs) = e.retry_after {
            headers.push(("retry-after", secs.to_string()));
        }
        let status = e.status();
        ctx.error = Some(e);
        self.write_reply(session, ctx, Reply { status, headers, body }, closing).await
    }
}

impl S3Proxy {
    /// DeleteObjects for a backend without it (`backend.delete_objects: emulate`): the body
    /// goes through the chain's checks as it would upstream (signature, Content-MD5, XML
    /// schema, the client's key grants), then one DELETE per object, and the DeleteResult.
    async fn emulate_delete_objects(&self, session: &mut Session, req: &RequestHeader, ctx: &mut RequestCtx) -> Result<Reply, S3Error> {
        // The body checks start as for a backend attempt (the header copy goes nowhere).
        let mut unused = req.clone();
        self.chain.upstream_request(&mut unused, ctx).await?;
        let mut pieces = Vec::new();
        loop {
            let mut body = session.read_request_body().await.map_err(|e| S3Error::internal("reading the request body", e))?;
            let end = body.is_none();
            // The held XML body (at most 8 MiB) comes out whole at the end, once checked.
            self.chain.request_body(&mut body, end, ctx)?;
            pieces.extend(body.filter(|b| !b.is_empty()));
            if end {
                break;
            }
        }
        let bucket = ctx.s3()?.bucket.clone().ok_or_else(|| s3err(S3ErrorCode::InvalidRequest, "DeleteObjects needs a bucket"))?;
        filters::delete_emulation::run(&self.backend, &bucket, &filters::delete_emulation::collected(pieces)).await
    }
}

#[async_trait]
impl ProxyHttp for S3Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        // Paired with the decrement in `logging`, which runs for every request.
        self.metrics.active.inc();
        RequestCtx::new(request_id())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let parsed = S3Request::parse(session.req_header(), self.vhost_suffix.as_deref());
        match parsed {
            Ok(s3) => ctx.s3 = Some(s3),
            Err(e) => {
                self.write_error(session, ctx, e, Closing::IfBodyUnread).await?;
                return Ok(true);
            }
        }
        if self.needs_key && self.keys.get().is_none() {
            let e = s3err(S3ErrorCode::ServiceUnavailable, "The encryption key is not loaded yet; deliver it with `memkey-admin key send`").with_retry_after(5);
            self.write_error(session, ctx, e, Closing::IfBodyUnread).await?;
            return Ok(true);
        }
        let req = session.req_header().clone();
        match self.chain.request(&req, ctx).await {
            Ok(Flow::Continue) => {
                let expects = req.headers.get("expect").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
                if expects {
                    session.write_continue_response().await?;
                    ctx.continued = true;
                }
                if ctx.s3.as_ref().is_some_and(|s| s.op == filters::request::Operation::DeleteObjects)
                    && self.backend.delete_objects() == filters::delete_emulation::DeleteObjectsMode::Emulate
                {
                    match self.emulate_delete_objects(session, &req, ctx).await {
                        Ok(reply) => self.write_reply(session, ctx, reply, Closing::IfBodyUnread).await?,
                        Err(e) => self.write_error(session, ctx, e, Closing::IfBodyUnread).await?,
                    }
                    return Ok(true);
                }
                Ok(false)
            }
            Ok(Flow::Respond(reply)) => {
                self.write_reply(session, ctx, reply, Closing::IfBodyUnread).await?;
                Ok(true)
            }
            Err(e) => {
                self.write_error(session, ctx, e, Closing::IfBodyUnread).await?;
                Ok(true)
            }
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_fd = Some(fd);
        filters::backend_stats::proxied_request(reused, peer.is_tls());
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let bucket = ctx.s3.as_ref().and_then(|s| s.bucket.as_deref());
        Ok(Box::new(self.backend.peer(bucket)))
    }

    async fn upstream_request_filter(&self, _session: &mut Session, up: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
        match self.chain.upstream_request(up, ctx).await {
            Ok(()) => Ok(()),
            Err(e) => Err(to_pingora(ctx, e)),
        }
    }

    async fn request_body_filter(&self, _session: &mut Session, body: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx) -> Result<()> {
        if let Err(e) = self.chain.request_body(body, end, ctx) {
            return Err(to_pingora(ctx, e));
        }
        // An If-None-Match: * upload whose existence check runs alongside its body: the
        // backend gets the body's end only once the check said "absent" (conditional.rs).
        match filters::conditional::hold_until_checked(body, end, &mut ctx.conditional).await {
            Ok(()) => Ok(()),
            Err(e) => Err(to_pingora(ctx, e)),
        }
    }

    async fn upstream_response_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
        // Acknowledge the header at once: a backend with Nagle on (Garage) holds back a small
        // body (a 16 KiB object) until its header is acknowledged, and the kernel would delay
        // that ACK by 40 ms: every small GET waited for it (issue 14, goal 3).
        if let Some(fd) = ctx.upstream_fd {
            filters::backend::ack_promptly(fd);
        }
        if resp.status.is_informational() {
            return Ok(());
        }
        if self.drain.closes_connections() {
            // `Connection: close` on this answer: the connection ends after it, not under
            // the client's next request (drain.rs).
            session.set_keepalive(None);
        }
        let status = resp.status.as_u16();
        if status >= 500 || status == 429 {
            self.metrics.backend_errors.with_label_values(&[&status.to_string()]).inc();
        }
        if status == 429 {
            // S3 clients (PBS among them) retry 503 SlowDown but not 429.
            resp.set_status(503)?;
            if resp.headers.get("retry-after").is_none() {
                resp.insert_header("retry-after", "1")?;
            }
        }
        match self.chain.upstream_response(resp, ctx).await {
            Ok(()) => Ok(()),
            Err(_) if std::mem::take(&mut ctx.resend_upstream) => {
                // Not an answer: pingora sends the request again (its retry loop), shaped by
                // the plan the filter made on this answer, which is dropped unread.
                let mut e = Error::explain(RESENT, "the backend is asked again");
                e.set_retry(true);
                Err(e)
            }
            Err(e) => Err(to_pingora(ctx, e)),
        }
    }

    fn upstream_response_body_filter(&self, _session: &mut Session, body: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx) -> Result<Option<std::time::Duration>> {
        // Acknowledge what was read at once, so a backend with Nagle on sends its tail now.
        if let (Some(fd), false) = (ctx.upstream_fd, end) {
            filters::backend::ack_promptly(fd);
        }
        match self.chain.response_body(body, end, ctx) {
            Ok(()) => Ok(None),
            Err(e) => Err(to_pingora(ctx, e)),
        }
    }

    /// pingora's error-log summary of a request, without presigned-URL credentials.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        crate::redact::request_summary(session.req_header())
    }

    /// A read planned anew and sent again (`resend_upstream`) is no failure to warn of.
    fn suppress_proxy_warn_log(&self, _session: &Session, ctx: &RequestCtx, error: &Error, _context: pingora::proxy::ProxyWarnLogContext) -> bool {
        let resent = *error.etype() == RESENT;
        if resent {
            log::debug!("request {}: read planned anew; the backend is asked again", ctx.request_id);
        }
        resent
    }

    /// Client mistakes (4xx S3 errors) are in the audit log; the error log keeps the rest.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        ctx.error.as_ref().is_some_and(|e| e.status() < 500)
    }

    /// A request that meets a stale pooled backend connection (closed by the backend's idle
    /// timeout) is sent again on a fresh one when replaying it is harmless: pingora's rule
    /// (idempotent methods whose body is still buffered), plus CreateMultipartUpload, whose
    /// replay can at worst leave an unused upload id, never a second object.
    fn error_while_proxy(&self, peer: &HttpPeer, session: &mut Session, e: Box<Error>, ctx: &mut RequestCtx, client_reused: bool) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let creates_upload = ctx.s3.as_ref().is_some_and(|s| s.op == filters::request::Operation::CreateMultipartUpload);
        if !(session.req_header().method.is_idempotent() || creates_upload) || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let s3 = match e.root_cause().downcast_ref::<S3Error>() {
            Some(s) => s.clone(),
            None => match ctx.error.clone() {
                Some(s) => s,
                None => match e.esource() {
                    ErrorSource::Upstream => {
                        self.metrics.backend_errors.with_label_values(&["unreachable"]).inc();
                        log::warn!("request {}: backend failed: {e}", ctx.request_id);
                        s3err(S3ErrorCode::ServiceUnavailable, "The storage backend is unavailable. Please try again.").with_retry_after(1)
                    }
                    ErrorSource::Downstream => {
                        if matches!(e.etype(), ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed) {
                            ctx.error = Some(s3err(S3ErrorCode::IncompleteBody, "client connection closed"));
                            return FailToProxy { error_code: 0, can_reuse_downstream: false };
                        }
                        s3err(S3ErrorCode::InvalidRequest, "The request could not be read")
                    }
                    _ => S3Error::internal("proxy", e),
                },
            },
        };
        let code = s3.status();
        // Once the answer has started, the only honest signal left is to cut the connection.
        // (A `100 Continue` is not the answer: the error can still be sent after it.)
        if session.response_written().is_some_and(|r| !r.status.is_informational()) {
            ctx.error = Some(s3);
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        }
        if let Err(we) = self.write_error(session, ctx, s3, Closing::AfterReply).await {
            log::debug!("could not send the error answer: {we}");
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        // An answer that came before the whole request body (the backend's own early 503 or
        // 412, relayed by pingora) is followed by a close; closing with the body unread makes
        // the kernel send a reset, which destroys the answer on its way to the client (seen
        // behind HAProxy as a PUT with no answer at all). Lingering close here covers every
        // path, pingora's and ours (lingered before the reply: not again).
        if session.response_written().is_some() && !session.is_body_done() {
            drain_unread_body(session, ctx).await;
        }
        self.metrics.active.dec();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let s3 = ctx.s3.as_ref();
        let op = s3.map_or("Unknown", |s| s.op.name());
        let method = session.req_header().method.as_str().to_string();
        let m = &self.metrics;
        m.requests.with_label_values(&[&method, op, &status.to_string()]).inc();
        m.duration.with_label_values(&[op]).observe(ctx.started.elapsed().as_secs_f64());
        m.bytes_encrypted.inc_by(ctx.bytes_encrypted);
        m.bytes_decrypted.inc_by(ctx.bytes_decrypted);
        let (bytes_in, bytes_out) = (session.body_bytes_read() as u64, session.body_bytes_sent() as u64);
        m.bytes_received.inc_by(bytes_in);
        m.bytes_sent.inc_by(bytes_out);
        if let Some(client) = &ctx.client {
            let key = client.access_key.as_str();
            let class = match status / 100 {
                2 => "2xx",
                3 => "3xx",
                4 => "4xx",
                5 => "5xx",
                _ => "other",
            };
            m.client_requests.with_label_values(&[key, class]).inc();
            m.client_bytes.with_label_values(&[key, "in"]).inc_by(bytes_in);
            m.client_bytes.with_label_values(&[key, "out"]).inc_by(bytes_out);
            if ctx.throttled {
                m.client_throttled.with_label_values(&[key]).inc();
            }
        }
        if let Some(plan) = ctx.read_plan {
            m.read_plans.with_label_values(&[plan]).inc();
        }
        if let Some(kind) = ctx.crypto_failure {
            m.encryption_errors.with_label_values(&[kind]).inc();
        }
        if let Some(reason) = ctx.auth_failure {
            m.auth_failures.with_label_values(&[reason]).inc();
        }
        if let Some(audit) = &self.audit {
            let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
            audit.write(&AuditLine {
                time: time::OffsetDateTime::now_utc().format(&fmt).unwrap_or_default(),
                request_id: &ctx.request_id,
                client: session.client_addr().map(|a| a.to_string()),
                access_key: ctx.verified.as_ref().map(|v| v.access_key.as_str()),
                operation: op,
                method: &method,
                bucket: s3.and_then(|s| s.bucket.as_deref()),
                key: s3.and_then(|s| s.key.as_deref()),
                status,
                error: ctx.error.as_ref().map(|e| e.code.as_str()),
                bytes_in,
                bytes_out,
                backend_bytes_in: session.upstream_body_bytes_received() as u64,
                duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
                key_id: ctx.key_id,
            });
        }
    }
}
