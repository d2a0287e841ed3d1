//! The `crypto` filter: object bodies are encrypted on the way in and authenticated and
//! decrypted on the way out (format: `docs/object-format.md`).
//!
//! - PutObject / UploadPart: the body is encrypted as it streams; the upstream request
//!   carries the exact ciphertext length; the final chunk is released only after the
//!   sigv4 filter accepted the whole body, so a rejected upload leaves a short body that
//!   the backend discards. User metadata is sealed into `x-amz-meta-s3cp`.
//! - GetObject / HeadObject: the plaintext length comes from the ciphertext length (no
//!   extra request), metadata is unsealed, and only authenticated chunks reach the client;
//!   a bad chunk aborts the response before any of its plaintext is sent.
//! - CopyObject: the source is streamed through the proxy and its segment headers are
//!   re-wrapped for the new name (the chunks are not re-encrypted).
//! - UploadPartCopy: the source (or its range) is decrypted and encrypted again as the
//!   part's segment, streaming (`crypto/partcopy.rs`).

pub mod copy;
mod metadata;
mod multipart;
mod partcopy;
mod range;
mod ranged;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use s3cp_format::{meta, Decryptor, FormatError, KeyRing, ObjectId, SegmentEncryptor};

use crate::backend::Backend;
use crate::ctx::RequestCtx;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::etag::client_etag;
use crate::filter::{Filter, Flow};
use crate::keys::KeyState;
use crate::passthrough::{self, LegacyObjects};
use crate::request::Operation;
use range::ByteRange;
use ranged::{Prepared, RangedRead, Want};

/// What to do with objects that have no sealed metadata (`x-amz-meta-s3cp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnencryptedPolicy {
    /// Answer an error (the default: such an object was written around the proxy, or its
    /// metadata was removed on the backend).
    Refuse,
    /// Serve the objects that provably predate encryption unchanged (migration from an
    /// unencrypted bucket); refuse the others.
    PassThrough(LegacyObjects),
}

impl UnencryptedPolicy {
    /// From `unencrypted_objects` and, for `passthrough`, the legacy objects' declaration
    /// (`unencrypted_before`, `unencrypted_prefixes`), which is required then and refused
    /// otherwise.
    pub fn from_config(mode: &str, before: Option<&str>, prefixes: Vec<String>) -> Result<Self, String> {
        match mode {
            "refuse" if before.is_none() && prefixes.is_empty() => Ok(Self::Refuse),
            "refuse" => Err("unencrypted_before / unencrypted_prefixes take effect only with unencrypted_objects: passthrough".into()),
            "passthrough" => LegacyObjects::from_config(before, prefixes).map(Self::PassThrough),
            _ => Err(format!("unencrypted_objects must be `refuse` or `passthrough`, not {mode:?}")),
        }
    }

    /// The objects served as plaintext, if any.
    pub fn legacy(&self) -> Option<&LegacyObjects> {
        match self {
            Self::Refuse => None,
            Self::PassThrough(l) => Some(l),
        }
    }
}

#[derive(Default)]
enum Plan {
    #[default]
    None,
    Encrypt {
        part: u32,
        /// `None`: a plain `Transfer-Encoding: chunked` body of unknown length, collected
        /// (up to [`MAX_UNKNOWN_LENGTH`]) and encrypted once complete.
        plain_len: Option<u64>,
    },
    SealMetadata,
    /// CompleteMultipartUpload: the part checksums in its body describe plaintext.
    Complete,
    Read {
        range: Option<ByteRange>,
    },
}

/// The crypto filter's per-request state.
#[derive(Default)]
pub struct CryptoCtx {
    plan: Plan,
    ring: Option<Arc<KeyRing>>,
    sealed_meta: Option<String>,
    encryptor: Option<SegmentEncryptor>,
    decryptor: Option<Decryptor>,
    /// Plaintext positions to pass on: `[skip, skip + take)` of the decrypted stream.
    skip: u64,
    take: u64,
    /// When set, the backend's body is dropped and this is sent instead.
    replacement: Option<Bytes>,
    /// The client's ETag conditions on a read, answered here (the backend knows only
    /// ciphertext ETags).
    if_match: Option<String>,
    if_none_match: Option<String>,
    /// A Range GET planned to fetch only the chunks it needs.
    ranged: Option<RangedRead>,
    /// The CompleteMultipartUpload body, collected to remove part checksums.
    complete_body: BytesMut,
    /// The upload being completed has no parts (the body decides between MalformedXML and
    /// InvalidPart), or is gone (completed before: the backend answers).
    complete_without_parts: bool,
    complete_gone: bool,
    /// The upload's parts (ListParts, sorted), for the check of the parts the body names.
    complete_parts: Vec<multipart::ListedPart>,
    /// A chunked upload of unknown length being collected.
    spool: Option<BytesMut>,
    /// GET/HEAD with `partNumber`.
    part_requested: bool,
    /// GET/HEAD with `x-amz-checksum-mode: ENABLED`.
    checksum_mode: bool,
}

pub struct CryptoFilter {
    keys: Arc<KeyState>,
    backend: Arc<Backend>,
    chunk_size: u32,
    unencrypted: UnencryptedPolicy,
}

impl CryptoFilter {
    pub fn new(keys: Arc<KeyState>, backend: Arc<Backend>, chunk_size: u32, unencrypted: UnencryptedPolicy) -> Self {
        Self { keys, backend, chunk_size, unencrypted }
    }

    fn ring(&self) -> Result<Arc<KeyRing>, S3Error> {
        self.keys.get().ok_or_else(|| {
            s3err(S3ErrorCode::ServiceUnavailable, "The encryption key is not loaded yet; deliver it with memkey-admin key send").with_retry_after(5)
        })
    }
}

/// Maps a format error to the client's answer, recording its kind for the metrics.
fn crypto_error(ctx: &mut RequestCtx, e: &FormatError) -> S3Error {
    ctx.crypto_failure = Some(e.kind());
    let resource = ctx.s3.as_ref().map(|s| s.resource()).unwrap_or_default();
    log::error!("request {}: object {resource}: {e}", ctx.request_id);
    match e {
        FormatError::MetadataTooLarge(_) => s3err(S3ErrorCode::MetadataTooLarge, "Your metadata headers exceed the maximum allowed metadata size once encrypted (about 1400 bytes)"),
        _ => s3err(S3ErrorCode::InternalError, format!("The object could not be decrypted or authenticated (request {})", ctx.request_id)),
    }
}

/// Largest plain `Transfer-Encoding: chunked` upload (no Content-Length, no aws-chunked):
/// the segment header carries the plaintext length, so such a body is collected before it
/// is encrypted.
pub const MAX_UNKNOWN_LENGTH: usize = 16 << 20;

/// The plaintext length of an upload: declared, or `None` for a plain chunked body.
fn upload_length(req: &RequestHeader, s3: &crate::request::S3Request) -> Result<Option<u64>, S3Error> {
    if let Some(n) = s3.plaintext_length() {
        return Ok(Some(n));
    }
    let chunked = req.headers.get("transfer-encoding").and_then(|v| v.to_str().ok()).is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked && !s3.payload.is_some_and(crate::request::PayloadMode::is_streaming) {
        return Ok(None);
    }
    Err(s3err(S3ErrorCode::MissingContentLength, "You must provide the Content-Length HTTP header."))
}

/// Headers that describe the plaintext body and must not reach the backend.
const PLAINTEXT_BODY_HEADERS: &[&str] = &[
    "content-md5",
    "x-amz-checksum-crc32",
    "x-amz-checksum-crc32c",
    "x-amz-checksum-crc64nvme",
    "x-amz-checksum-sha1",
    "x-amz-checksum-sha256",
    "x-amz-checksum-type",
    "x-amz-sdk-checksum-algorithm",
    "x-amz-checksum-algorithm",
    "x-amz-trailer",
    "x-amz-decoded-content-length",
    "transfer-encoding",
];

#[async_trait]
impl Filter for CryptoFilter {
    fn name(&self) -> &'static str {
        "crypto"
    }

    async fn request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Result<Flow, S3Error> {
        ctx.verified()?;
        let s3 = ctx.s3()?.clone();
        let obj_op = matches!(
            s3.op,
            Operation::PutObject | Operation::UploadPart | Operation::CreateMultipartUpload | Operation::GetObject
                | Operation::HeadObject | Operation::CopyObject | Operation::UploadPartCopy | Operation::CompleteMultipartUpload
        );
        if !obj_op {
            return Ok(Flow::Continue);
        }
        if req.headers.contains_key(meta::HEADER) {
            return Err(s3err(S3ErrorCode::InvalidArgument, format!("the metadata name {} is reserved by the encryption proxy", meta::HEADER)));
        }
        let ring = self.ring()?;
        let (bucket, key) = (s3.bucket.clone().unwrap_or_default(), s3.key.clone().unwrap_or_default());
        let obj = ObjectId { bucket: &bucket, key: &key };
        match s3.op {
            Operation::PutObject | Operation::CreateMultipartUpload => {
                let mut payload = metadata::from_request(req, s3.content_md5, None);
                let plain_len = if s3.op == Operation::PutObject { upload_length(req, &s3)? } else { None };
                if s3.op == Operation::PutObject {
                    // A checksum sent as a header is known now (and verified at the end of
                    // the body, before the object is stored); a trailer comes too late.
                    let ck = ctx.checksum_spec.as_ref().and_then(|(alg, v)| v.as_ref().map(|v| (alg.header_name().to_string(), v.clone())));
                    payload = metadata::with_checksum(payload, ck);
                    // Every later read announces this length and checks the stored object
                    // against it without reading the body.
                    payload = metadata::with_plain_len(payload, plain_len);
                }
                let sealed = meta::seal(ring.current(), obj, self.chunk_size, &payload).map_err(|e| crypto_error(ctx, &e))?;
                ctx.crypto.sealed_meta = Some(sealed);
                ctx.crypto.plan = if s3.op == Operation::PutObject { Plan::Encrypt { part: 0, plain_len } } else { Plan::SealMetadata };
            }
            Operation::UploadPart => {
                let part = s3
                    .query_value("partNumber")
                    .and_then(|p| p.parse::<u32>().ok())
                    .filter(|p| (1..=10_000).contains(p))
                    .ok_or_else(|| s3err(S3ErrorCode::InvalidArgument, "Part number must be an integer between 1 and 10000, inclusive"))?;
                let plain_len = upload_length(req, &s3)?;
                if plain_len == Some(0) {
                    return Err(s3err(S3ErrorCode::InvalidRequest, "empty parts cannot be stored encrypted: every part must hold at least one byte"));
                }
                ctx.crypto.plan = Plan::Encrypt { part, plain_len };
            }
            Operation::GetObject | Operation::HeadObject => {
                let h = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
                let range = match h("range") {
                    Some(r) if s3.op == Operation::GetObject => ByteRange::parse(&r),
                    _ => None,
                };
                let part = match s3.query_value("partNumber") {
                    Some(p) => Some(p.parse::<u32>().ok().filter(|p| (1..=10_000).contains(p)).ok_or_else(|| {
                        s3err(S3ErrorCode::InvalidArgument, "Part number must be an integer between 1 and 10000, inclusive")
                    })?),
                    None => None,
                };
                if part.is_some() && range.is_some() {
                    return Err(s3err(S3ErrorCode::InvalidRequest, "Cannot specify both Range header and partNumber query parameter"));
                }
                ctx.crypto.if_match = h("if-match");
                ctx.crypto.if_none_match = h("if-none-match");
                ctx.crypto.checksum_mode = h("x-amz-checksum-mode").is_some_and(|v| v.eq_ignore_ascii_case("enabled"));
                let want = match (range, part) {
                    (Some(r), _) => Some(Want::Range(r)),
                    (None, Some(n)) => Some(Want::Part(n)),
                    (None, None) => None,
                };
                if let Some(want) = want {
                    // The part's plaintext is computed from the format (segment n is part n):
                    // the backend is asked for ciphertext bytes, never for its own part n.
                    if let Some(s) = ctx.s3.as_mut() {
                        s.query.retain(|(k, _)| k != "partNumber");
                    }
                    ctx.crypto.part_requested = part.is_some();
                    match ranged::prepare(&self.backend, &ring, &s3, want).await? {
                        Prepared::Plan(rr) => ctx.crypto.ranged = Some(rr),
                        Prepared::Unsatisfiable(len) => {
                            let e = s3err(S3ErrorCode::InvalidRange, "The requested range is not satisfiable").with_resource(s3.resource());
                            let mut reply = crate::filter::Reply::xml(416, String::from_utf8_lossy(&e.to_xml(&ctx.request_id)).into_owned());
                            reply.headers.push(("content-range", format!("bytes */{len}")));
                            ctx.error = Some(e);
                            return Ok(Flow::Respond(reply));
                        }
                        Prepared::NoSuchPart => return Err(self.no_such_part(&s3, part.unwrap_or(0)).await),
                        Prepared::Damaged(e) => return Err(crypto_error(ctx, &e)),
                        Prepared::Fallback => {}
                    }
                }
                ctx.crypto.plan = Plan::Read { range };
            }
            Operation::CopyObject => {
                let reply = copy::copy_object(&self.backend, &ring, req, &s3, ctx).await?;
                return Ok(Flow::Respond(reply));
            }
            Operation::CompleteMultipartUpload => {
                multipart::before_complete(&self.backend, &s3, &mut ctx.crypto).await?;
                ctx.crypto.plan = Plan::Complete;
            }
            Operation::UploadPartCopy => {
                let reply = partcopy::upload_part_copy(&self.backend, &ring, req, &s3, self.chunk_size, ctx).await?;
                return Ok(Flow::Respond(reply));
            }
            _ => {}
        }
        ctx.crypto.ring = Some(ring);
        Ok(Flow::Continue)
    }

    async fn upstream_request(&self, up: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        let set = |up: &mut RequestHeader, n: &'static str, v: String| {
            up.insert_header(n, v).map_err(|e| S3Error::internal("setting an upstream header", e))
        };
        match ctx.crypto.plan {
            Plan::Encrypt { part, plain_len } => {
                let ring = ctx.crypto.ring.clone().expect("set with the plan");
                let s3 = ctx.s3()?;
                let obj = ObjectId { bucket: s3.bucket.as_deref().unwrap_or(""), key: s3.key.as_deref().unwrap_or("") };
                match plain_len {
                    Some(plain_len) => {
                        // Created per attempt: a retry replays the body from the start.
                        let enc = SegmentEncryptor::new(ring.current(), obj, part, plain_len, self.chunk_size)
                            .map_err(|e| crypto_error(ctx, &e))?;
                        set(up, "content-length", enc.cipher_len().to_string())?;
                        ctx.crypto.encryptor = Some(enc);
                    }
                    None => {
                        // The ciphertext goes on chunked too, once the whole body is known.
                        up.remove_header("content-length");
                        ctx.crypto.spool = Some(BytesMut::new());
                    }
                }
                ctx.key_id = Some(ring.current_id());
                ctx.body_rewritten = true;
                for h in PLAINTEXT_BODY_HEADERS.iter().filter(|h| !(plain_len.is_none() && **h == "transfer-encoding")) {
                    up.remove_header(*h);
                }
                if let Some(enc) = up.headers.get("content-encoding").and_then(|v| v.to_str().ok()) {
                    let rest: Vec<&str> = enc.split(',').map(str::trim).filter(|t| !t.eq_ignore_ascii_case("aws-chunked")).collect();
                    let rest = rest.join(",");
                    up.remove_header("content-encoding");
                    if !rest.is_empty() && part > 0 {
                        set(up, "content-encoding", rest)?;
                    }
                }
                if part == 0 {
                    self.seal_headers(up, ctx)?;
                    // If-Match names an ETag the client was shown: give the backend its own.
                    if let Some(im) = up.headers.get("if-match").and_then(|v| v.to_str().ok()).map(str::to_string) {
                        let translated: Vec<String> = im
                            .split(',')
                            .map(|t| crate::etag::backend_etag_of(t).unwrap_or_else(|| t.trim().to_string()))
                            .collect();
                        set(up, "if-match", translated.join(", "))?;
                    }
                }
            }
            Plan::SealMetadata => {
                // A checksum algorithm chosen at creation would make the backend demand
                // plaintext checksums on every part.
                for h in PLAINTEXT_BODY_HEADERS {
                    up.remove_header(*h);
                }
                self.seal_headers(up, ctx)?
            }
            Plan::Complete => {
                // A body sent chunked (no Content-Length) goes on chunked.
                let chunked = ctx.s3()?.content_length.is_none();
                for h in PLAINTEXT_BODY_HEADERS.iter().filter(|h| !(chunked && **h == "transfer-encoding")) {
                    up.remove_header(*h);
                }
                ctx.body_rewritten = true;
                ctx.crypto.complete_body.clear();
            }
            Plan::Read { .. } => {
                // Ranges and ETag conditions are answered by the proxy: the backend knows
                // only ciphertext offsets and ciphertext ETags.
                for h in ["range", "if-range", "if-match", "if-none-match"] {
                    up.remove_header(h);
                }
                if let Some(rr) = &ctx.crypto.ranged {
                    if ctx.s3()?.op == Operation::GetObject {
                        set(up, "range", format!("bytes={}-{}", rr.plan.cipher_start, rr.plan.cipher_end))?;
                    }
                    set(up, "if-match", rr.backend_etag.clone())?;
                }
            }
            Plan::None => {}
        }
        Ok(())
    }

    fn request_body(&self, body: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        if matches!(ctx.crypto.plan, Plan::Complete) {
            return multipart::complete_body(&mut ctx.crypto, body, end, self.chunk_size);
        }
        if ctx.crypto.spool.is_some() {
            return self.spool_body(body, end, ctx);
        }
        let Some(enc) = ctx.crypto.encryptor.as_mut() else { return Ok(()) };
        let mut out = match body.take() {
            Some(b) if !b.is_empty() => {
                ctx.bytes_encrypted += b.len() as u64;
                let r = enc.update(&b);
                r.map_err(|e| crypto_error(ctx, &e))?
            }
            _ => Bytes::new(),
        };
        if end {
            // The sigv4 filter ran first and accepted the body: release the final chunk.
            let enc = ctx.crypto.encryptor.take().expect("checked above");
            let last = enc.finish().map_err(|e| {
                if matches!(e, FormatError::InputTooShort) {
                    s3err(S3ErrorCode::IncompleteBody, "You did not provide the number of bytes specified by the Content-Length HTTP header")
                } else {
                    crypto_error(ctx, &e)
                }
            })?;
            if out.is_empty() {
                out = last;
            } else {
                let mut joined = BytesMut::with_capacity(out.len() + last.len());
                joined.extend_from_slice(&out);
                joined.extend_from_slice(&last);
                out = joined.freeze();
            }
        }
        *body = Some(out);
        Ok(())
    }

    async fn upstream_response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        let status = resp.status.as_u16();
        let op = ctx.s3()?.op;
        match (&ctx.crypto.plan, op) {
            (Plan::Encrypt { .. }, Operation::PutObject) if (200..300).contains(&status) => {
                strip_checksums(resp);
                // The plaintext MD5 is the ETag only when it was sealed into the object
                // (the client declared Content-MD5): every later GET/HEAD then shows the same.
                let md5 = ctx.body_md5.map(hex::encode);
                let backend = header(resp, "etag").unwrap_or_default();
                set_header(resp, "etag", client_etag(&backend, md5.as_deref()))?;
            }
            (Plan::Encrypt { .. }, _) => strip_checksums(resp),
            (Plan::Read { .. }, _) if status == 200 || status == 206 => self.read_response(resp, ctx).await?,
            (Plan::Complete, _) if status >= 500 && ctx.crypto.complete_gone => {
                // ListParts did not know the upload and the backend failed on it (moto
                // answers 500 for an upload that never existed): it does not exist.
                let resource = ctx.s3()?.resource();
                return Err(s3err(S3ErrorCode::NoSuchUpload, "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.").with_resource(resource));
            }
            (Plan::Read { .. }, _) if status == 412 && ctx.crypto.ranged.is_some() => {
                // An error answer of its own: the backend's 412 may have no body to replace.
                return Err(s3err(S3ErrorCode::ServiceUnavailable, "The object changed while it was being read; please retry").with_retry_after(1));
            }
            (Plan::Read { .. }, _) if status == 304 || status == 412 => {
                if let Some(e) = header(resp, "etag") {
                    set_header(resp, "etag", client_etag(&e, None))?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn response_body(&self, body: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        if let Some(replacement) = &ctx.crypto.replacement {
            *body = if end { Some(replacement.clone()) } else { Some(Bytes::new()) };
            return Ok(());
        }
        let Some(dec) = ctx.crypto.decryptor.as_mut() else { return Ok(()) };
        let mut plain = match body.take() {
            Some(b) if !b.is_empty() => {
                let r = dec.update(&b);
                r.map_err(|e| crypto_error(ctx, &e))?
            }
            _ => Bytes::new(),
        };
        if end {
            // The decryptor checks the segment count of whole objects against its layout.
            let dec = ctx.crypto.decryptor.take().expect("checked above");
            let last = dec.finish().map_err(|e| crypto_error(ctx, &e))?;
            if !last.is_empty() {
                let mut joined = BytesMut::with_capacity(plain.len() + last.len());
                joined.extend_from_slice(&plain);
                joined.extend_from_slice(&last);
                plain = joined.freeze();
            }
        }
        ctx.bytes_decrypted += plain.len() as u64;
        *body = Some(range::trim(&mut ctx.crypto.skip, &mut ctx.crypto.take, plain));
        Ok(())
    }
}

impl CryptoFilter {
    /// `partNumber` beyond the object's parts. S3 answers 416 InvalidPartNumber; some
    /// backends (Garage, Ceph RGW) 400 InvalidPart. The backend knows the part count too, so
    /// its status (of a HEAD, which shows nothing of the object) picks the answer.
    async fn no_such_part(&self, s3: &crate::request::S3Request, part: u32) -> S3Error {
        let (bucket, key) = (s3.bucket.as_deref(), s3.key.as_deref());
        let mut q = vec![("partNumber".to_string(), part.to_string())];
        if let Some(v) = s3.query_value("versionId") {
            q.push(("versionId".to_string(), v.to_string()));
        }
        let status = match self.backend.request("HEAD", bucket, key, &q, &[], None) {
            Ok(req) => self.backend.send(bucket, req, None, 0).await.map(|(r, _)| r.status.as_u16()).unwrap_or(0),
            Err(_) => 0,
        };
        if status == 400 {
            s3err(S3ErrorCode::InvalidPart, "The requested partnumber is not satisfiable").with_resource(s3.resource())
        } else {
            s3err(S3ErrorCode::InvalidPartNumber, "The requested partnumber is not satisfiable").with_resource(s3.resource())
        }
    }

    /// A chunked body of unknown length: collected, then encrypted whole at its end (the
    /// segment header needs the length), after the sigv4 filter accepted it.
    fn spool_body(&self, body: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        let spool = ctx.crypto.spool.as_mut().expect("checked by the caller");
        if let Some(b) = body.take() {
            if spool.len() + b.len() > MAX_UNKNOWN_LENGTH {
                return Err(s3err(
                    S3ErrorCode::MissingContentLength,
                    format!("a Transfer-Encoding: chunked upload without Content-Length is limited to {} MiB through the encryption proxy; send Content-Length (or aws-chunked)", MAX_UNKNOWN_LENGTH >> 20),
                ));
            }
            spool.extend_from_slice(&b);
        }
        if !end {
            *body = Some(Bytes::new());
            return Ok(());
        }
        let plain = ctx.crypto.spool.take().expect("checked by the caller");
        let Plan::Encrypt { part, .. } = ctx.crypto.plan else { return Err(S3Error::internal("crypto filter", "spool without an upload")) };
        if part > 0 && plain.is_empty() {
            return Err(s3err(S3ErrorCode::InvalidRequest, "empty parts cannot be stored encrypted: every part must hold at least one byte"));
        }
        let ring = ctx.crypto.ring.clone().expect("set with the plan");
        let s3 = ctx.s3()?;
        let obj = ObjectId { bucket: s3.bucket.as_deref().unwrap_or(""), key: s3.key.as_deref().unwrap_or("") };
        let mut enc = SegmentEncryptor::new(ring.current(), obj, part, plain.len() as u64, self.chunk_size).map_err(|e| crypto_error(ctx, &e))?;
        let mut out = BytesMut::from(&enc.update(&plain).map_err(|e| crypto_error(ctx, &e))?[..]);
        out.extend_from_slice(&enc.finish().map_err(|e| crypto_error(ctx, &e))?);
        ctx.bytes_encrypted += plain.len() as u64;
        *body = Some(out.freeze());
        Ok(())
    }

    /// Moves the plaintext's descriptive headers into the sealed metadata header.
    fn seal_headers(&self, up: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        metadata::strip_sealed_headers(up);
        // Kept for a retry of the same request on another backend connection.
        let sealed = ctx.crypto.sealed_meta.clone().ok_or_else(|| S3Error::internal("crypto filter", "no sealed metadata"))?;
        up.insert_header("content-type", "application/octet-stream")
            .and_then(|_| up.insert_header(meta::HEADER, sealed))
            .map_err(|e| S3Error::internal("setting the sealed metadata", e))?;
        Ok(())
    }

    /// A GET/HEAD answer for an object: unseal its metadata, give plaintext length and
    /// ETag, evaluate ETag conditions and ranges, and prepare decryption.
    ///
    /// Every length announced here is one the object's authenticated data confirms before
    /// the client holds a complete answer (reader rule 5.11): a sealed length is compared
    /// with the stored length now; otherwise the decryptor compares every segment header with
    /// the announced layout before releasing any of its bytes, and where no byte would be
    /// held back (HEAD, an empty body) the headers are read and checked here first.
    async fn read_response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        let s3 = ctx.s3()?.clone();
        let Some(sealed) = header(resp, meta::HEADER) else {
            let last_modified = header(resp, "last-modified").and_then(|v| passthrough::http_date(&v));
            if self.unencrypted.legacy().is_some_and(|l| l.admits(s3.key.as_deref().unwrap_or(""), last_modified)) {
                // The backend was asked for the whole object (ranges are planned for the
                // format): serving it as the answer to a Range or partNumber GET would hand
                // the client the wrong bytes, so such reads are refused.
                let partial = matches!(ctx.crypto.plan, Plan::Read { range: Some(_) }) || ctx.crypto.part_requested;
                if partial && s3.op == Operation::GetObject {
                    return Err(s3err(S3ErrorCode::NotImplemented, "Range and partNumber reads of objects that predate encryption (unencrypted_objects: passthrough) are not supported; read the whole object").with_resource(s3.resource()));
                }
                return Ok(());
            }
            ctx.crypto_failure = Some("not_encrypted");
            log::warn!("request {}: object {} has no sealed metadata and is refused", ctx.request_id, s3.resource());
            return Err(s3err(
                S3ErrorCode::InvalidObjectState,
                "This object has no valid encryption metadata (x-amz-meta-s3cp): it was stored directly on the backend, bypassing the proxy, or its metadata was removed there, so it cannot be authenticated and is not served. Objects written before encryption was introduced can be admitted with unencrypted_objects: passthrough and unencrypted_before / unencrypted_prefixes",
            )
            .with_resource(s3.resource()));
        };
        let ring = ctx.crypto.ring.clone().expect("set with the plan");
        let obj = ObjectId { bucket: s3.bucket.as_deref().unwrap_or(""), key: s3.key.as_deref().unwrap_or("") };
        let opened = meta::open(&ring, obj, &sealed).map_err(|e| crypto_error(ctx, &e))?;
        ctx.key_id = Some(opened.key_id);
        let backend_etag = header(resp, "etag").unwrap_or_default();
        let layout = match &ctx.crypto.ranged {
            // Planned and checked against the headers it rests on before the request.
            Some(_) => None,
            None => {
                let cipher_len = header(resp, "content-length").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                let (layout, verified) = metadata::announced_layout(&opened, cipher_len, &backend_etag).map_err(|e| crypto_error(ctx, &e))?;
                let nothing_held_back = s3.op == Operation::HeadObject || layout.plain_len == 0;
                let layout = if nothing_held_back && !verified {
                    let version = s3.query_value("versionId");
                    ranged::verify_layout(&self.backend, &ring, obj, version, &backend_etag, layout, None).await?.map_err(|e| crypto_error(ctx, &e))?
                } else {
                    layout
                };
                Some(layout)
            }
        };
        let sealed_md5 = metadata::restore(resp, &opened.payload)?;
        let whole = ctx.crypto.ranged.is_none() && !matches!(ctx.crypto.plan, Plan::Read { range: Some(_) });
        let sealed_checksum = if ctx.crypto.checksum_mode && whole { metadata::sealed_checksum(&opened.payload) } else { None };
        let etag = client_etag(&backend_etag, sealed_md5.as_deref());
        set_header(resp, "etag", etag.clone())?;
        metadata::apply_response_overrides(resp, &s3.query)?;

        // ETag conditions, on the ETags this client may have been shown.
        let candidates = [etag, client_etag(&backend_etag, None)];
        let matches = |list: &str| {
            list.split(',').map(str::trim).any(|t| t == "*" || candidates.iter().any(|c| c == t || c.trim_matches('"') == t.trim_matches('"')))
        };
        if let Some(im) = ctx.crypto.if_match.take() {
            if !matches(&im) {
                return Err(crate::conditional::precondition_failed(&s3.resource()));
            }
        }
        if let Some(inm) = ctx.crypto.if_none_match.take() {
            if matches(&inm) {
                resp.set_status(304).map_err(|e| S3Error::internal("304", e))?;
                resp.remove_header("content-length");
                ctx.crypto.replacement = Some(Bytes::new());
                return Ok(());
            }
        }

        let Some(layout) = layout else {
            let rr = ctx.crypto.ranged.clone().expect("no layout only for planned reads");
            resp.set_status(206).map_err(|e| S3Error::internal("status", e))?;
            set_header(resp, "content-range", format!("bytes {}-{}/{}", rr.first, rr.last, rr.plain_len))?;
            set_header(resp, "content-length", rr.plan.len.to_string())?;
            set_header(resp, "accept-ranges", "bytes".to_string())?;
            strip_checksums(resp);
            if ctx.crypto.part_requested {
                if let Some(n) = rr.parts_count {
                    set_header(resp, "x-amz-mp-parts-count", n.to_string())?;
                }
            }
            if s3.op == Operation::HeadObject {
                return Ok(());
            }
            let dec = Decryptor::for_range((*ring).clone(), obj, &rr.header, &rr.plan).map_err(|e| crypto_error(ctx, &e))?;
            // The decryptor emits exactly the requested bytes.
            ctx.crypto.skip = 0;
            ctx.crypto.take = rr.plan.len;
            ctx.crypto.decryptor = Some(dec);
            return Ok(());
        };
        let plain_len = layout.plain_len;
        let (status, len) = match ctx.crypto.plan {
            Plan::Read { range: Some(r) } => match r.resolve(plain_len) {
                Some((first, last)) => {
                    set_header(resp, "content-range", format!("bytes {first}-{last}/{plain_len}"))?;
                    ctx.crypto.skip = first;
                    ctx.crypto.take = last - first + 1;
                    (206, last - first + 1)
                }
                None => {
                    // The backend's answer holds the whole object (at least one header's
                    // worth of bytes), so its body can carry the error document.
                    let e = s3err(S3ErrorCode::InvalidRange, "The requested range is not satisfiable").with_resource(s3.resource());
                    self.replace_with_error(resp, ctx, e)?;
                    set_header(resp, "content-range", format!("bytes */{plain_len}"))?;
                    return Ok(());
                }
            },
            _ => {
                ctx.crypto.skip = 0;
                ctx.crypto.take = plain_len;
                (200, plain_len)
            }
        };
        resp.set_status(status).map_err(|e| S3Error::internal("status", e))?;
        set_header(resp, "content-length", len.to_string())?;
        set_header(resp, "accept-ranges", "bytes".to_string())?;
        strip_checksums(resp);
        if let Some((name, value)) = sealed_checksum {
            // The plaintext checksum the client uploaded, kept sealed.
            resp.insert_header(name, value).map_err(|e| S3Error::internal("checksum header", e))?;
            set_header(resp, "x-amz-checksum-type", "FULL_OBJECT".to_string())?;
        }
        if s3.op == Operation::GetObject {
            ctx.crypto.decryptor = Some(Decryptor::expecting((*ring).clone(), obj, layout));
        }
        Ok(())
    }

    /// Turns the backend's answer into an S3 error answer; its body is dropped. Only for
    /// answers that have a body (the error document is sent in its place when it ends):
    /// elsewhere return the error, and the proxy answers it in full.
    fn replace_with_error(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx, e: S3Error) -> Result<(), S3Error> {
        let body = e.to_xml(&ctx.request_id);
        let keep: Vec<_> = ["date", "x-amz-request-id"].iter().filter_map(|h| header(resp, h).map(|v| (*h, v))).collect();
        let mut fresh = ResponseHeader::build(e.status(), None).map_err(|x| S3Error::internal("error answer", x))?;
        for (h, v) in keep {
            set_header(&mut fresh, h, v)?;
        }
        set_header(&mut fresh, "content-type", "application/xml".to_string())?;
        set_header(&mut fresh, "content-length", body.len().to_string())?;
        *resp = fresh;
        ctx.crypto.decryptor = None;
        ctx.crypto.replacement = Some(if ctx.s3()?.op == Operation::HeadObject { Bytes::new() } else { body });
        ctx.error = Some(e);
        Ok(())
    }
}

pub(crate) fn header(resp: &ResponseHeader, name: &str) -> Option<String> {
    resp.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

pub(crate) fn set_header(resp: &mut ResponseHeader, name: &'static str, value: String) -> Result<(), S3Error> {
    resp.insert_header(name, value).map_err(|e| S3Error::internal("setting a response header", e))
}

/// Checksums the backend computed describe ciphertext: never show them.
fn strip_checksums(resp: &mut ResponseHeader) {
    let names: Vec<String> = resp
        .headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("x-amz-checksum-"))
        .collect();
    for n in names {
        resp.remove_header(&n);
    }
}
