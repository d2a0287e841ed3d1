//! The `conditional` filter: `If-None-Match: *` ("create only if absent") and `If-Match`
//! ("replace only this version") on writes.
//!
//! In `backend` mode the headers simply travel to the backend, which must honour them (AWS,
//! MinIO, Ceph, moto do). In `enforce` mode the proxy decides, for backends that silently
//! ignore them (Garage):
//!
//! 1. every single-object write (PutObject, CopyObject, CompleteMultipartUpload,
//!    DeleteObject) takes this process's lock on its object name ([`KeyLocks`]); writers of
//!    other objects never wait;
//! 2. a conditional write then asks the backend for the object (one HEAD) and answers 412
//!    (or 404 for `If-Match` on a missing object) itself;
//! 3. the lock is held until the backend has answered the write (`upstream_response`), or
//!    until the request ends on any other path (an error, a client that went away): the
//!    guard lives in the request's context, so dropping the context releases it. Pingora's
//!    retries of the upstream request happen under the same lock.
//!
//! An `If-None-Match: *` PutObject whose client streams its body at once (no
//! `Expect: 100-continue`; PBS's chunk uploads) does not wait for the HEAD before its upload
//! starts: the HEAD runs while the body streams to the backend, and the service
//! ([`hold_until_checked`]) holds back the last non-empty piece of the upstream body until it
//! has answered. The backend cannot complete a write whose body it has not received whole, so
//! the write still happens only after "absent" (a refused upload is cut off before its end and
//! never stored) and a remote backend's round trip for the HEAD is hidden behind the upload.
//! A refused upload then costs the part of the body already sent and that backend
//! connection; a client that asks for `100-continue` keeps the HEAD first.
//!
//! So among the writers of one process exactly one `If-None-Match: *` writer of a new
//! object wins, and an `If-Match` writer replaces exactly the version it named. Replicas
//! do not share locks: several replicas are exact only when a load balancer sends all
//! requests for one object to one replica (`deploy/haproxy/`).
//!
//! `If-Match` names an ETag the client was shown, not the backend's (see `etag.rs`): the
//! plaintext MD5 sealed into the object's metadata, or the backend's ETag with `-1`. The
//! check compares the same candidates the crypto filter's reads accept. The backend is
//! then not given `If-Match` (it would compare a client ETag with a ciphertext ETag).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use s3cp_format::{meta, ObjectId};
use serde::Deserialize;

use crate::backend::Backend;
use crate::ctx::RequestCtx;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::etag::client_etag;
use crate::filter::{Filter, Flow};
use crate::keylock::{KeyGuard, KeyLocks};
use crate::keys::KeyState;
use crate::request::{IfNoneMatch, Operation, S3Request};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionalMode {
    Backend,
    Enforce,
}

impl std::str::FromStr for ConditionalMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "backend" => Ok(Self::Backend),
            "enforce" => Ok(Self::Enforce),
            _ => Err(format!("conditional_writes must be `backend` or `enforce`, not {s:?}")),
        }
    }
}

/// The conditional filter's per-request state.
#[derive(Default, Debug)]
pub struct ConditionalCtx {
    /// This request is the only writer of its object in this process while this is held.
    guard: Option<KeyGuard>,
    /// The proxy evaluated `If-Match` itself: the backend must not see it.
    if_match_enforced: bool,
    /// The existence check of an `If-None-Match: *` upload, running while its body streams.
    pending: Option<PendingCheck>,
    /// The latest non-empty upstream body piece, held back while `pending` runs.
    held: Option<bytes::Bytes>,
}

/// A spawned existence check; dropping it (the request ended another way) stops it.
#[derive(Debug)]
struct PendingCheck(tokio::task::JoinHandle<Result<(), S3Error>>);

impl Drop for PendingCheck {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Called by the service for every upstream body piece, after the chain: while an existence
/// check runs alongside the upload, the last non-empty piece stays here, so the backend never
/// has the whole body before the check has answered; at the end of the body the check is
/// awaited, and its refusal (412) becomes the request's error before the body's end is sent.
pub async fn hold_until_checked(body: &mut Option<bytes::Bytes>, end: bool, ctx: &mut ConditionalCtx) -> Result<(), S3Error> {
    if ctx.pending.is_none() {
        return Ok(());
    }
    let piece = body.take().filter(|b| !b.is_empty());
    if !end {
        if let Some(p) = piece {
            *body = ctx.held.replace(p);
        }
        // An empty piece, not None: pingora reads None as the end of the body.
        body.get_or_insert_with(bytes::Bytes::new);
        return Ok(());
    }
    if let Some(mut check) = ctx.pending.take() {
        match (&mut check.0).await {
            Ok(answer) => answer?,
            Err(e) => return Err(S3Error::internal("the existence check of a conditional write", e)),
        }
    }
    *body = match (ctx.held.take(), piece) {
        (Some(a), Some(b)) => {
            let mut joined = bytes::BytesMut::with_capacity(a.len() + b.len());
            joined.extend_from_slice(&a);
            joined.extend_from_slice(&b);
            Some(joined.freeze())
        }
        (a, b) => a.or(b),
    };
    Ok(())
}

/// An upload whose existence check can run while its body streams: a PutObject with a body
/// the client sends at once (no `Expect: 100-continue`, which asks to hear a refusal first).
fn check_alongside_body(req: &RequestHeader, s3: &S3Request) -> bool {
    let declared = req.headers.get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    s3.op == Operation::PutObject && req.headers.get("expect").is_none() && declared.is_some_and(|n| n > 0)
}

/// "Absent" or 412, for an `If-None-Match: *` write.
async fn create_only(backend: Arc<Backend>, s3: S3Request) -> Result<(), S3Error> {
    match current_of(&backend, &s3).await? {
        Current::Absent => Ok(()),
        Current::Present { .. } => Err(precondition_failed(&s3.resource())),
    }
}

pub struct ConditionalFilter {
    mode: ConditionalMode,
    backend: Arc<Backend>,
    /// The key ring, to read the plaintext MD5 sealed in an object's metadata (the ETag a
    /// client that sent Content-MD5 was shown). Without it `If-Match` knows only the
    /// backend-derived ETags.
    keys: Option<Arc<KeyState>>,
    locks: Arc<KeyLocks>,
}

impl ConditionalFilter {
    pub fn new(mode: ConditionalMode, backend: Arc<Backend>) -> Self {
        Self { mode, backend, keys: None, locks: KeyLocks::new() }
    }

    /// Lets `If-Match` compare the sealed plaintext MD5 too (chains with `crypto`).
    #[must_use]
    pub fn with_keys(mut self, keys: Arc<KeyState>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// The per-object locks (entries exist only while held or awaited).
    pub fn locks(&self) -> &Arc<KeyLocks> {
        &self.locks
    }
}

/// The 412 answer S3 gives.
pub fn precondition_failed(resource: &str) -> S3Error {
    s3err(S3ErrorCode::PreconditionFailed, "At least one of the pre-conditions you specified did not hold").with_resource(resource)
}

/// Writes that replace or remove one object, serialised per object in `enforce` mode.
fn is_object_write(op: Operation) -> bool {
    matches!(op, Operation::PutObject | Operation::CopyObject | Operation::CompleteMultipartUpload | Operation::DeleteObject)
}

/// How long a write waits for another write of the same object to end (`enforce`).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Writes on which S3 honours `If-None-Match: *` and `If-Match`.
fn takes_write_conditions(op: Operation) -> bool {
    matches!(op, Operation::PutObject | Operation::CopyObject | Operation::CompleteMultipartUpload)
}

/// What the backend says about the object a conditional write names.
#[derive(Debug)]
enum Current {
    Absent,
    /// The backend's ETag and the sealed metadata header, if the object has one.
    Present { backend_etag: String, sealed: Option<String> },
}

/// The ETags a client may have been shown for an object (quoted), as the crypto filter's
/// reads accept them: the sealed plaintext MD5 form and the `-1` form for objects in the
/// proxy's format, the backend's own ETag for objects without sealed metadata.
fn shown_etags(backend_etag: &str, sealed: bool, sealed_md5: Option<&str>) -> Vec<String> {
    if !sealed {
        return vec![format!("\"{}\"", backend_etag.trim().trim_matches('"'))];
    }
    let mut v = vec![client_etag(backend_etag, None)];
    if let Some(md5) = sealed_md5 {
        v.push(client_etag(backend_etag, Some(md5)));
    }
    v
}

/// `If-Match`'s list (`*` or quoted ETags, comma-separated) against the shown ETags.
fn if_match_holds(list: &str, shown: &[String]) -> bool {
    list.split(',').map(str::trim).filter(|t| !t.is_empty()).any(|t| {
        t == "*" || shown.iter().any(|s| s.trim_matches('"') == t.trim_start_matches("W/").trim_matches('"'))
    })
}

/// The plaintext MD5 in a sealed metadata payload (`crypto/metadata.rs` writes it as
/// `"md5": "<hex>"`).
fn sealed_md5(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Md5Only {
        md5: Option<String>,
    }
    serde_json::from_slice::<Md5Only>(payload).ok()?.md5
}

/// What the backend holds under the name `s3` writes (one HEAD).
async fn current_of(backend: &Backend, s3: &S3Request) -> Result<Current, S3Error> {
    let (bucket, key) = (s3.bucket.as_deref(), s3.key.as_deref());
    let head = backend.request("HEAD", bucket, key, &[], &[], None)?;
    let (resp, _) = backend.send(bucket, head, None, 0).await?;
    let header = |r: &ResponseHeader, n: &str| r.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    match resp.status.as_u16() {
        404 => Ok(Current::Absent),
        200 => Ok(Current::Present { backend_etag: header(&resp, "etag").unwrap_or_default(), sealed: header(&resp, meta::HEADER) }),
        403 => Err(s3err(S3ErrorCode::AccessDenied, "the backend denied the existence check of a conditional write")),
        s => {
            log::warn!("backend answered {s} to the existence check of the conditional write of {}", s3.resource());
            Err(s3err(S3ErrorCode::ServiceUnavailable, "the backend could not confirm the state of the object; please retry").with_retry_after(1))
        }
    }
}

impl ConditionalFilter {
    async fn current(&self, s3: &S3Request) -> Result<Current, S3Error> {
        current_of(&self.backend, s3).await
    }

    /// The plaintext MD5 sealed in the object's metadata, when the key ring can open it.
    fn sealed_md5_of(&self, s3: &S3Request, sealed: &str) -> Option<String> {
        let Some(ring) = self.keys.as_ref().and_then(|k| k.get()) else {
            log::warn!("conditional: no key ring to read the sealed ETag of {}; If-Match compares the backend-derived ETag only", s3.resource());
            return None;
        };
        let obj = ObjectId { bucket: s3.bucket.as_deref().unwrap_or(""), key: s3.key.as_deref().unwrap_or("") };
        match meta::open(&ring, obj, sealed) {
            Ok(opened) => sealed_md5(&opened.payload),
            Err(e) => {
                log::warn!("conditional: the metadata of {} does not open ({e}); If-Match compares the backend-derived ETag only", s3.resource());
                None
            }
        }
    }

    /// Evaluates the write's conditions on the object as the backend holds it now.
    async fn check(&self, s3: &S3Request, if_match: Option<&str>) -> Result<(), S3Error> {
        let current = self.current(s3).await?;
        match (&current, if_match) {
            (Current::Present { .. }, _) if s3.if_none_match == Some(IfNoneMatch::Any) => Err(precondition_failed(&s3.resource())),
            (Current::Absent, Some(_)) => Err(s3err(S3ErrorCode::NoSuchKey, "The specified key does not exist.").with_resource(s3.resource())),
            (Current::Present { backend_etag, sealed }, Some(list)) => {
                let md5 = sealed.as_deref().and_then(|s| self.sealed_md5_of(s3, s));
                if if_match_holds(list, &shown_etags(backend_etag, sealed.is_some(), md5.as_deref())) {
                    Ok(())
                } else {
                    Err(precondition_failed(&s3.resource()))
                }
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Filter for ConditionalFilter {
    fn name(&self) -> &'static str {
        "conditional"
    }

    async fn request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Result<Flow, S3Error> {
        ctx.verified()?;
        let s3 = ctx.s3()?;
        if takes_write_conditions(s3.op) && matches!(s3.if_none_match, Some(IfNoneMatch::ETags(_))) {
            // S3 takes only `*` on a write; an ETag list would be an unconditional overwrite
            // on a backend that ignores it.
            return Err(s3err(S3ErrorCode::NotImplemented, "A header you provided implies functionality that is not implemented: If-None-Match on a write takes only '*'")
                .with_resource(s3.resource()));
        }
        if self.mode != ConditionalMode::Enforce || !is_object_write(s3.op) {
            return Ok(Flow::Continue);
        }
        let (Some(bucket), Some(key)) = (s3.bucket.as_deref(), s3.key.as_deref()) else { return Ok(Flow::Continue) };
        let if_match = if takes_write_conditions(s3.op) {
            req.headers.get("if-match").map(|v| v.to_str().map(str::to_string)).transpose().map_err(|_| {
                s3err(S3ErrorCode::InvalidArgument, "If-Match is not valid text")
            })?
        } else {
            None
        };
        let Ok(guard) = tokio::time::timeout(LOCK_WAIT, self.locks.lock(format!("{bucket}/{key}"))).await else {
            // Another write of this object has held it that long (a large or a trickled
            // body): answered, not waited on for as long as that writer keeps sending.
            return Err(s3err(S3ErrorCode::ServiceUnavailable, format!("Another write to this object has been in progress for {} seconds; please retry", LOCK_WAIT.as_secs()))
                .with_retry_after(5)
                .with_resource(s3.resource()));
        };
        let s3 = ctx.s3()?;
        let conditional = takes_write_conditions(s3.op) && (s3.if_none_match == Some(IfNoneMatch::Any) || if_match.is_some());
        let mut pending = None;
        if conditional && if_match.is_none() && check_alongside_body(req, s3) {
            // Under the lock, like the check below; answered before the body's end is sent.
            pending = Some(PendingCheck(tokio::spawn(create_only(self.backend.clone(), s3.clone()))));
        } else if conditional {
            // A refused writer lets go at once (dropping `guard` here), not after its body
            // has been drained.
            self.check(s3, if_match.as_deref()).await?;
        }
        ctx.conditional.pending = pending;
        ctx.conditional.guard = Some(guard);
        ctx.conditional.if_match_enforced = if_match.is_some();
        Ok(Flow::Continue)
    }

    async fn upstream_request(&self, up: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        // A retried attempt replays the body from its start: a piece held for the failed
        // attempt is not part of the new one.
        ctx.conditional.held = None;
        if ctx.conditional.if_match_enforced {
            up.remove_header("if-match");
        }
        Ok(())
    }

    async fn upstream_response(&self, _resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        // The backend has answered the write: the next writer may look.
        ctx.conditional.guard = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendConfig;
    use crate::sigv4::Credentials;
    use std::time::Duration;

    fn filter() -> ConditionalFilter {
        let backend = Backend::new(BackendConfig {
            endpoint: "http://127.0.0.1:1".into(),
            region: "garage".into(),
            credentials: Credentials::new("GK1", "secret"),
            path_style: true,
            insecure_skip_verify: false,
            ca_file: None,
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            send_if_none_match: true,
            delete_objects: crate::delete_emulation::DeleteObjectsMode::Native,
            verified_writes: crate::verified_write::VerifiedWrites::default(),
        })
        .unwrap();
        ConditionalFilter::new(ConditionalMode::Enforce, Arc::new(backend))
    }

    #[test]
    fn the_lock_goes_with_the_backend_answer_or_with_the_request() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let f = filter();
            // Released when the backend has answered the write.
            let mut ctx = RequestCtx::new("r1".into());
            ctx.conditional.guard = Some(f.locks().lock("b/k".into()).await);
            assert_eq!(f.locks().len(), 1);
            let mut resp = ResponseHeader::build(200, None).unwrap();
            f.upstream_response(&mut resp, &mut ctx).await.unwrap();
            assert!(f.locks().is_empty());
            // Released when the request ends any other way (error, client gone): the
            // context is dropped.
            let mut ctx = RequestCtx::new("r2".into());
            ctx.conditional.guard = Some(f.locks().lock("b/k".into()).await);
            drop(ctx);
            assert!(f.locks().is_empty());
        });
    }

    #[test]
    fn if_match_the_proxy_enforced_does_not_reach_the_backend() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let f = filter();
            let mut up = RequestHeader::build("PUT", b"/b/k", None).unwrap();
            up.insert_header("if-match", "\"abc-1\"").unwrap();
            let mut ctx = RequestCtx::new("r".into());
            f.upstream_request(&mut up, &mut ctx).await.unwrap();
            assert!(up.headers.get("if-match").is_some(), "backend mode and unconditional writes leave it");
            ctx.conditional.if_match_enforced = true;
            f.upstream_request(&mut up, &mut ctx).await.unwrap();
            assert!(up.headers.get("if-match").is_none());
        });
    }

    #[test]
    fn an_upload_checked_alongside_its_body_keeps_its_last_piece_until_the_check_answers() {
        use bytes::Bytes;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), S3Error>>();
            let mut c = ConditionalCtx { pending: Some(PendingCheck(tokio::spawn(async move { rx.await.unwrap() }))), ..Default::default() };
            let mut b = Some(Bytes::from_static(b"one"));
            hold_until_checked(&mut b, false, &mut c).await.unwrap();
            assert_eq!(b.as_deref(), Some(&b""[..]), "the latest piece is held (an empty piece goes on: None would end the body)");
            let mut b = Some(Bytes::from_static(b"two"));
            hold_until_checked(&mut b, false, &mut c).await.unwrap();
            assert_eq!(b.as_deref(), Some(&b"one"[..]), "the previous piece goes, the latest stays");
            let mut b = Some(Bytes::new());
            hold_until_checked(&mut b, false, &mut c).await.unwrap();
            assert!(b.as_deref() == Some(&b""[..]) && c.held.as_deref() == Some(&b"two"[..]), "an empty piece releases nothing");
            tx.send(Ok(())).unwrap();
            let mut b = Some(Bytes::from_static(b"three"));
            hold_until_checked(&mut b, true, &mut c).await.unwrap();
            assert_eq!(b.as_deref(), Some(&b"twothree"[..]), "absent: the end goes with the held piece");

            // Present: the end of the body never goes, the request fails with 412.
            let mut c = ConditionalCtx { pending: Some(PendingCheck(tokio::spawn(async { Err(precondition_failed("/b/k")) }))), ..Default::default() };
            let mut b = Some(Bytes::from_static(b"last"));
            hold_until_checked(&mut b, false, &mut c).await.unwrap();
            assert_eq!(b.as_deref(), Some(&b""[..]));
            let mut b = None;
            assert_eq!(hold_until_checked(&mut b, true, &mut c).await.unwrap_err().status(), 412);
            assert!(b.is_none());

            // A retried attempt starts without the failed attempt's held piece.
            let f = filter();
            let mut ctx = RequestCtx::new("r".into());
            ctx.conditional.held = Some(Bytes::from_static(b"from the failed attempt"));
            let mut up = RequestHeader::build("PUT", b"/b/k", None).unwrap();
            f.upstream_request(&mut up, &mut ctx).await.unwrap();
            assert!(ctx.conditional.held.is_none());

            // Without a check pieces pass untouched.
            let mut c = ConditionalCtx::default();
            let mut b = Some(Bytes::from_static(b"x"));
            hold_until_checked(&mut b, false, &mut c).await.unwrap();
            assert_eq!(b.as_deref(), Some(&b"x"[..]));
        });
    }

    #[test]
    fn only_a_put_with_a_body_sent_at_once_is_checked_alongside_it() {
        let parse = |method: &str, headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build(method, b"/bkt/k", None).unwrap();
            for (n, v) in headers {
                r.insert_header(n.to_string(), v.to_string()).unwrap();
            }
            let s3 = S3Request::parse(&r, None).unwrap();
            (r, s3)
        };
        let (r, s3) = parse("PUT", &[("host", "h"), ("content-length", "5"), ("if-none-match", "*")]);
        assert!(check_alongside_body(&r, &s3));
        let (r, s3) = parse("PUT", &[("host", "h"), ("content-length", "5"), ("if-none-match", "*"), ("expect", "100-continue")]);
        assert!(!check_alongside_body(&r, &s3), "the client wants to hear a refusal before it sends");
        let (r, s3) = parse("PUT", &[("host", "h"), ("content-length", "0"), ("if-none-match", "*")]);
        assert!(!check_alongside_body(&r, &s3), "an empty marker has no body to hide the check behind");
    }

    #[test]
    fn shown_etags_are_the_forms_reads_accept() {
        assert_eq!(shown_etags("\"abc\"", true, None), vec!["\"abc-1\""]);
        assert_eq!(shown_etags("\"abc\"", true, Some("d41d")), vec!["\"abc-1\"", "\"d41d\""]);
        assert_eq!(shown_etags("\"abc-3\"", true, None), vec!["\"abc-3\""]);
        // Not in the proxy's format (passthrough, or no crypto in the chain): as stored.
        assert_eq!(shown_etags("abc", false, None), vec!["\"abc\""]);
    }

    #[test]
    fn if_match_lists() {
        let shown = shown_etags("\"abc\"", true, Some("d41d"));
        assert!(if_match_holds("\"d41d\"", &shown));
        assert!(if_match_holds("d41d", &shown));
        assert!(if_match_holds("\"abc-1\"", &shown));
        assert!(if_match_holds("\"zzz\", \"abc-1\"", &shown));
        assert!(if_match_holds("*", &shown));
        assert!(if_match_holds("W/\"d41d\"", &shown));
        // The ciphertext's own ETag was never shown to a client.
        assert!(!if_match_holds("\"abc\"", &shown));
        assert!(!if_match_holds("\"zzz\"", &shown));
        assert!(!if_match_holds("", &shown));
    }

    #[test]
    fn sealed_md5_reads_the_metadata_payload() {
        assert_eq!(sealed_md5(br#"{"h":[],"md5":"00ff"}"#).as_deref(), Some("00ff"));
        assert_eq!(sealed_md5(br#"{"h":[["content-type","x"]]}"#), None);
        assert_eq!(sealed_md5(b"not json"), None);
    }

    #[test]
    fn which_operations_lock_and_which_take_conditions() {
        for op in [Operation::PutObject, Operation::CopyObject, Operation::CompleteMultipartUpload, Operation::DeleteObject] {
            assert!(is_object_write(op));
        }
        for op in [Operation::UploadPart, Operation::GetObject, Operation::CreateMultipartUpload, Operation::DeleteObjects] {
            assert!(!is_object_write(op));
        }
        assert!(!takes_write_conditions(Operation::DeleteObject));
    }
}
