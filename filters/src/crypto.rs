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

mod attributes;
pub mod copy;
mod known;
mod metadata;
mod multipart;
mod partcopy;
mod range;
mod ranged;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use s3cp_format::{meta, plan_range, ChunkCipher, Decryptor, FormatError, KeyRing, ObjectId, RangePlan, SegmentEncryptor, HEADER_LEN};

use crate::backend::Backend;
use crate::ctx::RequestCtx;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::etag::client_etag;
use crate::filter::{Filter, Flow};
use crate::keys::KeyState;
use crate::passthrough::{self, LegacyObjects};
use crate::request::Operation;
use crate::verified_write::BodyFramer;
use range::ByteRange;
use known::KnownObjects;
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

/// The crypto filter's per-request state: one variant per plan, each owning only what that
/// plan needs, so that no combination of fields has to be kept valid by hand. (One per
/// request, mostly in its largest variant: boxing would only add an allocation.)
#[derive(Default)]
#[allow(clippy::large_enum_variant)]
pub enum CryptoCtx {
    /// Nothing to change (another operation), or answered in the request phase
    /// (CopyObject, UploadPartCopy).
    #[default]
    Idle,
    /// PutObject (part 0) or UploadPart: the body is encrypted as it streams.
    Upload(Upload),
    /// CreateMultipartUpload: the metadata is sealed; there is no body to change.
    Create { sealed: String },
    /// CompleteMultipartUpload: the body is collected and checked against the parts.
    Complete(multipart::Completion),
    /// GetObject / HeadObject.
    Read(Read),
}

pub struct Upload {
    ring: Arc<KeyRing>,
    part: u32,
    /// `None`: a plain `Transfer-Encoding: chunked` body of unknown length, collected
    /// (up to [`MAX_UNKNOWN_LENGTH`]) and encrypted once complete.
    plain_len: Option<u64>,
    /// The sealed metadata of a PutObject; sent again by a retried attempt.
    sealed: Option<String>,
    body: UploadBody,
    /// The backend's 400 answer to a checksummed body, held until it shows whether the
    /// backend refused the body as damaged in transit (verified writes).
    refusal: Option<BytesMut>,
}

/// The body of one backend attempt of an upload (made anew when the attempt is retried).
enum UploadBody {
    NotStarted,
    /// Encrypted as it streams; the ciphertext goes out through the framer (verified writes).
    Encrypting(SegmentEncryptor, BodyFramer),
    Collecting(BytesMut),
    Finished,
}

pub struct Read {
    ring: Arc<KeyRing>,
    what: ReadWhat,
    /// The client's Range or `partNumber`, as asked (planned again if the object changes).
    want: Option<Want>,
    /// The client's ETag conditions, answered here (the backend knows only ciphertext
    /// ETags).
    if_match: Option<String>,
    if_none_match: Option<String>,
    /// `If-Range` of a Range GET: the Range applies only to the version it names (an ETag
    /// the client was shown, or its Last-Modified time); any other gets the whole object.
    if_range: Option<String>,
    /// The Range of a HEAD: answered as the GET would be (206, the range's length), from
    /// the object's authenticated length.
    head_range: Option<ByteRange>,
    /// `x-amz-checksum-mode: ENABLED`.
    checksum_mode: bool,
    answer: Answer,
}

/// What a read returns.
enum ReadWhat {
    /// The whole object; `part` when a `partNumber` read could not be planned (an empty
    /// object, an object not in the format).
    Whole { part: Option<u32> },
    /// A Range or `partNumber` read planned to fetch only the chunks it needs.
    Planned { read: RangedRead, part: bool },
    /// A Range that could not be planned, taken from the whole object.
    FromWhole(ByteRange),
    /// A Range near the start of the object, asked for from stored byte 0 in one request, so
    /// that the first segment header comes with the data (docs/object-format.md 6.3.1). The
    /// answer settles it: a `Planned` read of that answer (header with the data), or one
    /// planned anew that the backend is asked for again.
    /// `end`: the last stored byte asked for (`None`: to the end).
    Speculative { range: ByteRange, end: Option<u64> },
    /// A plan made from what this replica remembered no longer fits the object (replaced
    /// meanwhile): planned again from fresh probes before the backend is asked again.
    Replan,
}

/// What the answer to a `Speculative` read showed.
enum Settled {
    /// It serves the read (a `Planned` read whose header starts the body, or the whole object).
    Read(ReadWhat),
    /// It does not (a multipart object, another chunk size): the read is planned anew and
    /// the backend asked again.
    Resend(ReadWhat),
    Unsatisfiable(u64),
    Damaged(FormatError),
}

/// What becomes of the backend's answer body.
#[allow(clippy::large_enum_variant)]
enum Answer {
    /// Passed on as it is (an error answer, or an object served unencrypted).
    AsIs,
    /// Authenticated and decrypted; `[skip, skip + take)` of the plaintext goes on.
    Decrypt { decryptor: Decryptor, skip: u64, take: u64 },
    /// The first segment header, collected from the start of the body; then decrypted as
    /// `plan` (becoming `Decrypt`).
    HeaderFirst { header: Vec<u8>, plan: RangePlan, skip: u64, take: u64 },
    /// An object served unencrypted (it predates encryption): `[skip, skip + take)` of it
    /// goes on.
    Slice { skip: u64, take: u64 },
    /// Dropped; this is sent in its place when it ends.
    Replace(Bytes),
}

pub struct CryptoFilter {
    keys: Arc<KeyState>,
    backend: Arc<Backend>,
    chunk_size: u32,
    /// Chunk cipher (format version) of every segment this filter writes; reads take both.
    cipher: ChunkCipher,
    unencrypted: UnencryptedPolicy,
    /// What earlier reads established about recently read objects (`crypto/known.rs`).
    known: KnownObjects,
}

impl CryptoFilter {
    pub fn new(keys: Arc<KeyState>, backend: Arc<Backend>, chunk_size: u32, cipher: ChunkCipher, unencrypted: UnencryptedPolicy) -> Self {
        Self { keys, backend, chunk_size, cipher, unencrypted, known: KnownObjects::default() }
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
                | Operation::GetObjectAttributes
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
        if matches!(s3.op, Operation::PutObject | Operation::CompleteMultipartUpload | Operation::CopyObject) {
            // Written through this replica: what it remembered of the name is out of date.
            self.known.forget(obj, None);
        }
        ctx.crypto = match s3.op {
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
                if s3.op == Operation::PutObject {
                    CryptoCtx::Upload(Upload { ring, part: 0, plain_len, sealed: Some(sealed), body: UploadBody::NotStarted, refusal: None })
                } else {
                    CryptoCtx::Create { sealed }
                }
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
                CryptoCtx::Upload(Upload { ring, part, plain_len, sealed: None, body: UploadBody::NotStarted, refusal: None })
            }
            Operation::GetObject | Operation::HeadObject => match self.plan_read(req, &s3, ring, ctx).await? {
                Ok(read) => CryptoCtx::Read(read),
                Err(reply) => return Ok(Flow::Respond(reply)),
            },
            Operation::CopyObject => {
                let reply = copy::copy_object(&self.backend, &ring, self.cipher, req, &s3, ctx).await?;
                return Ok(Flow::Respond(reply));
            }
            Operation::GetObjectAttributes => {
                let reply = attributes::get_object_attributes(&self.backend, &ring, req, &s3, self.unencrypted.legacy(), ctx).await?;
                return Ok(Flow::Respond(reply));
            }
            Operation::CompleteMultipartUpload => CryptoCtx::Complete(multipart::before_complete(&self.backend, &s3).await?),
            Operation::UploadPartCopy => {
                let reply = partcopy::upload_part_copy(&self.backend, &ring, req, &s3, self.chunk_size, self.cipher, ctx).await?;
                return Ok(Flow::Respond(reply));
            }
            _ => CryptoCtx::Idle,
        };
        Ok(Flow::Continue)
    }

    async fn upstream_request(&self, up: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        if let CryptoCtx::Read(Read { what: ReadWhat::Replan, want: Some(want), ring, .. }) = &ctx.crypto {
            let (want, ring) = (*want, ring.clone());
            let what = self.replan(want, &ring, ctx).await?;
            if let CryptoCtx::Read(read) = &mut ctx.crypto {
                read.what = what;
            }
        }
        let mut state = std::mem::take(&mut ctx.crypto);
        let result = self.shape_upstream(&mut state, up, ctx);
        ctx.crypto = state;
        result
    }

    fn request_body(&self, body: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        let mut state = std::mem::take(&mut ctx.crypto);
        let result = match &mut state {
            CryptoCtx::Complete(c) => multipart::complete_body(c, body, end, self.chunk_size),
            CryptoCtx::Upload(u) => self.upload_body(u, body, end, ctx),
            _ => Ok(()),
        };
        ctx.crypto = state;
        result
    }

    async fn upstream_response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        let status = resp.status.as_u16();
        let op = ctx.s3()?.op;
        let mut state = std::mem::take(&mut ctx.crypto);
        let result = match &mut state {
            CryptoCtx::Upload(_) if op == Operation::PutObject && (200..300).contains(&status) => {
                strip_checksums(resp);
                // The plaintext MD5 is the ETag only when it was sealed into the object
                // (the client declared Content-MD5): every later GET/HEAD then shows the same.
                let md5 = ctx.body_md5.map(hex::encode);
                let backend = header(resp, "etag").unwrap_or_default();
                set_header(resp, "etag", client_etag(&backend, md5.as_deref()))
            }
            CryptoCtx::Upload(u) => {
                strip_checksums(resp);
                if status == 400 && ctx.upstream_trailer {
                    // Held: the answer may change (its length with it).
                    u.refusal = Some(BytesMut::new());
                    resp.remove_header("content-length");
                }
                Ok(())
            }
            CryptoCtx::Read(read) if status == 200 || status == 206 => self.read_response(read, resp, ctx).await,
            CryptoCtx::Complete(c) if status >= 500 && c.upload_is_gone() => {
                // ListParts did not know the upload and the backend failed on it (moto
                // answers 500 for an upload that never existed): it does not exist.
                let resource = ctx.s3()?.resource();
                Err(s3err(S3ErrorCode::NoSuchUpload, "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.").with_resource(resource))
            }
            CryptoCtx::Read(read) if status == 412 && read.remembered() => Err(self.forget_and_resend(read, ctx)),
            CryptoCtx::Read(Read { what: ReadWhat::Planned { .. }, .. }) if status == 412 => {
                // An error answer of its own: the backend's 412 may have no body to replace.
                Err(ranged::changed())
            }
            CryptoCtx::Read(_) if status == 304 || status == 412 => match header(resp, "etag") {
                Some(e) => set_header(resp, "etag", client_etag(&e, None)),
                None => Ok(()),
            },
            _ => Ok(()),
        };
        ctx.crypto = state;
        result
    }

    fn response_body(&self, body: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        if let CryptoCtx::Upload(Upload { refusal: Some(held), .. }) = &mut ctx.crypto {
            if let Some(b) = body.take() {
                if held.len() < 64 << 10 {
                    held.extend_from_slice(&b);
                }
            }
            if !end {
                *body = Some(Bytes::new());
                return Ok(());
            }
            let held = std::mem::take(held).freeze();
            *body = Some(self.answer_refusal(held, ctx));
            return Ok(());
        }
        let CryptoCtx::Read(read) = &mut ctx.crypto else { return Ok(()) };
        match &read.answer {
            Answer::AsIs => Ok(()),
            Answer::Replace(replacement) => {
                *body = Some(if end { replacement.clone() } else { Bytes::new() });
                Ok(())
            }
            Answer::Slice { .. } => {
                let Answer::Slice { skip, take } = &mut read.answer else { unreachable!("matched above") };
                *body = Some(range::trim(skip, take, body.take().unwrap_or_default()));
                Ok(())
            }
            Answer::HeaderFirst { .. } => {
                let obj = ObjectId { bucket: ctx.s3.as_ref().and_then(|s| s.bucket.as_deref()).unwrap_or(""), key: ctx.s3.as_ref().and_then(|s| s.key.as_deref()).unwrap_or("") };
                let piece = body.take();
                let mut opened = None;
                let result = header_first(&mut read.answer, &read.ring, obj, piece, end, &mut opened).and_then(|rest| decrypt_piece(&mut read.answer, rest, end));
                if let Some(header) = opened.map(Bytes::from) {
                    self.remember_first_header(read, header, obj, ctx.s3.as_ref().and_then(|s| s.query_value("versionId")));
                }
                match result {
                    Ok((plain, n)) => {
                        ctx.bytes_decrypted += n;
                        *body = Some(plain);
                        Ok(())
                    }
                    Err(e) => Err(crypto_error(ctx, &e)),
                }
            }
            Answer::Decrypt { .. } => match decrypt_piece(&mut read.answer, body.take(), end) {
                Ok((plain, n)) => {
                    ctx.bytes_decrypted += n;
                    *body = Some(plain);
                    Ok(())
                }
                Err(e) => Err(crypto_error(ctx, &e)),
            },
        }
    }
}

/// Whether `If-Range: validator` names the version answered (RFC 9110 13.1.5): an entity tag
/// by strong comparison with an ETag the client may have been shown (a weak one never
/// matches), a date when it is exactly the object's Last-Modified time. Anything else (an
/// unparsable value included) does not: the client then gets the whole object, never a part
/// of another version than the one it holds the rest of.
fn if_range_holds(validator: &str, etags: &[String], last_modified: Option<&str>) -> bool {
    let v = validator.trim();
    if v.starts_with("W/") {
        return false;
    }
    if v.starts_with('"') {
        return etags.iter().any(|e| e == v);
    }
    match (passthrough::http_date(v), last_modified.and_then(passthrough::http_date)) {
        (Some(asked), Some(modified)) => asked == modified,
        _ => false,
    }
}

/// The 416 answer's error.
fn unsatisfiable(s3: &crate::request::S3Request) -> S3Error {
    s3err(S3ErrorCode::InvalidRange, "The requested range is not satisfiable").with_resource(s3.resource())
}

impl Read {
    /// A plan made from what this replica remembered of the object.
    fn remembered(&self) -> bool {
        matches!(&self.what, ReadWhat::Planned { read, .. } if read.remembered)
    }

    /// A planned read, and `resp` is not an answer for the version the plan was made for
    /// (its ETag or stored length differ): the object was replaced since the plan's header
    /// reads, or since this replica remembered it, and the backend ignored If-Match.
    fn answer_of_another_version(&self, resp: &ResponseHeader) -> bool {
        let ReadWhat::Planned { read, .. } = &self.what else { return false };
        let stored = match header(resp, "content-range") {
            Some(cr) => range::parse_content_range(&cr).map(|(_, _, total)| total),
            None => header(resp, "content-length").and_then(|v| v.parse::<u64>().ok()),
        };
        header(resp, "etag").as_deref() != Some(read.backend_etag.as_str()) || read.stored_len.is_some_and(|s| stored != Some(s))
    }
}

/// Makes pingora send the request to the backend again, shaped by `what` (the read planned
/// anew on the answer just received, which is dropped unread).
fn resend(read: &mut Read, what: ReadWhat, ctx: &mut RequestCtx) -> S3Error {
    read.what = what;
    ctx.resend_upstream = true;
    s3err(S3ErrorCode::ServiceUnavailable, "the read is planned anew and sent again")
}

/// Collects the first segment header from the start of a `HeaderFirst` answer; once it is
/// whole, the answer becomes `Decrypt` for the rest, which is returned (`None` while the
/// header is incomplete).
/// `opened` receives the header once it is authenticated.
fn header_first(answer: &mut Answer, ring: &KeyRing, obj: ObjectId<'_>, piece: Option<Bytes>, end: bool, opened: &mut Option<Vec<u8>>) -> Result<Option<Bytes>, FormatError> {
    let Answer::HeaderFirst { header, .. } = answer else { return Ok(piece) };
    let mut piece = piece.unwrap_or_default();
    let n = (HEADER_LEN - header.len()).min(piece.len());
    header.extend_from_slice(&piece.split_to(n));
    if header.len() < HEADER_LEN {
        return if end { Err(FormatError::Truncated) } else { Ok(None) };
    }
    let Answer::HeaderFirst { header, plan, skip, take } = std::mem::replace(answer, Answer::AsIs) else { unreachable!("matched above") };
    let decryptor = Decryptor::for_range(ring.clone(), obj, &header, &plan)?;
    *answer = Answer::Decrypt { decryptor, skip, take };
    *opened = Some(header);
    Ok(Some(piece))
}

/// One piece of an answer body through the decryptor (at the end, the decryptor finishes:
/// it checks the segment count of whole objects against its layout). Returns what goes on
/// and the number of bytes decrypted.
fn decrypt_piece(answer: &mut Answer, body: Option<Bytes>, end: bool) -> Result<(Bytes, u64), FormatError> {
    let Answer::Decrypt { decryptor, .. } = answer else { return Ok((body.unwrap_or_default(), 0)) };
    let mut plain = match body {
        Some(b) if !b.is_empty() => decryptor.update(&b)?,
        _ => Bytes::new(),
    };
    if end {
        let Answer::Decrypt { decryptor, mut skip, mut take } = std::mem::replace(answer, Answer::AsIs) else { unreachable!("matched above") };
        let last = decryptor.finish()?;
        if !last.is_empty() {
            let mut joined = BytesMut::with_capacity(plain.len() + last.len());
            joined.extend_from_slice(&plain);
            joined.extend_from_slice(&last);
            plain = joined.freeze();
        }
        let n = plain.len() as u64;
        return Ok((range::trim(&mut skip, &mut take, plain), n));
    }
    let Answer::Decrypt { skip, take, .. } = answer else { unreachable!("matched above") };
    let n = plain.len() as u64;
    Ok((range::trim(skip, take, plain), n))
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

    /// Plans a GET/HEAD: a whole object, or a Range / `partNumber` read of only the chunks it
    /// needs (checked against the headers it rests on, before the backend is asked).
    /// `Err(reply)` is an answer given here (416).
    async fn plan_read(&self, req: &RequestHeader, s3: &crate::request::S3Request, ring: Arc<KeyRing>, ctx: &mut RequestCtx) -> Result<Result<Read, crate::filter::Reply>, S3Error> {
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
        let want = match (range, part) {
            (Some(_), Some(_)) => return Err(s3err(S3ErrorCode::InvalidRequest, "Cannot specify both Range header and partNumber query parameter")),
            (Some(r), None) => Some(Want::Range(r)),
            (None, Some(n)) => Some(Want::Part(n)),
            (None, None) => None,
        };
        if want.is_some() {
            // The part's plaintext is computed from the format (segment n is part n): the
            // backend is asked for ciphertext bytes, never for its own part n.
            if let Some(s) = ctx.s3.as_mut() {
                s.query.retain(|(k, _)| k != "partNumber");
            }
        }
        let what = match want {
            None => ReadWhat::Whole { part: None },
            // One request, pinned to the version this replica read before.
            Some(want) if let Some(read) = ranged::remembered_plan(&self.known, s3, want) => {
                ctx.read_plan = Some("memory");
                ReadWhat::Planned { read, part: part.is_some() }
            }
            // One request, no header probe: the header comes with the data.
            Some(Want::Range(r)) if let Some(end) = range::from_start(r, self.chunk_size) => {
                ctx.read_plan = Some("from_start");
                ReadWhat::Speculative { range: r, end }
            }
            Some(want) => {
                ctx.read_plan = Some("header_reads");
                let prepared = ranged::prepare(&self.backend, &ring, &self.known, s3, want).await?;
                match self.planned(prepared, want, s3, ctx).await? {
                    Ok(what) => what,
                    Err(len) => {
                        let e = unsatisfiable(s3);
                        let mut reply = crate::filter::Reply::xml(416, String::from_utf8_lossy(&e.to_xml(&ctx.request_id)).into_owned());
                        reply.headers.push(("content-range", format!("bytes */{len}")));
                        ctx.error = Some(e);
                        return Ok(Err(reply));
                    }
                }
            }
        };
        Ok(Ok(Read {
            ring,
            what,
            want,
            if_match: h("if-match"),
            if_none_match: h("if-none-match"),
            if_range: h("if-range").filter(|_| matches!(want, Some(Want::Range(_)))),
            head_range: h("range").filter(|_| s3.op == Operation::HeadObject && part.is_none()).and_then(|r| ByteRange::parse(&r)),
            checksum_mode: h("x-amz-checksum-mode").is_some_and(|v| v.eq_ignore_ascii_case("enabled")),
            answer: Answer::AsIs,
        }))
    }

    /// What a prepared Range / `partNumber` read becomes; `Ok(Err(len))`: the range lies
    /// outside an object of `len` bytes (416).
    async fn planned(&self, prepared: Prepared, want: Want, s3: &crate::request::S3Request, ctx: &mut RequestCtx) -> Result<Result<ReadWhat, u64>, S3Error> {
        let part = match want {
            Want::Part(n) => Some(n),
            Want::Range(_) => None,
        };
        Ok(Ok(match prepared {
            Prepared::Plan(read) => ReadWhat::Planned { read, part: part.is_some() },
            Prepared::Unsatisfiable(len) => return Ok(Err(len)),
            Prepared::NoSuchPart => return Err(self.no_such_part(s3, part.unwrap_or(0)).await),
            Prepared::Damaged(e) => return Err(crypto_error(ctx, &e)),
            Prepared::Fallback => match want {
                Want::Range(r) => ReadWhat::FromWhole(r),
                Want::Part(_) => ReadWhat::Whole { part },
            },
        }))
    }

    /// A read whose remembered plan no longer fits the object: planned from fresh probes.
    async fn replan(&self, want: Want, ring: &KeyRing, ctx: &mut RequestCtx) -> Result<ReadWhat, S3Error> {
        let s3 = ctx.s3()?.clone();
        let obj = ObjectId { bucket: s3.bucket.as_deref().unwrap_or(""), key: s3.key.as_deref().unwrap_or("") };
        let version = s3.query_value("versionId");
        let prepared = ranged::prepare_object(&self.backend, ring, obj, version, want, ranged::HeaderRead::WithData, None, Some(&self.known)).await?;
        match self.planned(prepared, want, &s3, ctx).await? {
            Ok(what) => Ok(what),
            // Shrunk meanwhile below the range (rare): no place for a Content-Range here.
            Err(len) => Err(unsatisfiable(&s3).with_detail("ActualObjectSize", len.to_string())),
        }
    }

    /// The first header of a single-part object, authenticated at the start of a ranged
    /// answer (a Range near the start, one request): later ranges of that version need no
    /// header read either.
    fn remember_first_header(&self, read: &Read, header: Bytes, obj: ObjectId<'_>, version: Option<&str>) {
        let ReadWhat::Planned { read: rr, .. } = &read.what else { return };
        if rr.plan.layout.segments != 1 || rr.plan.header_offset != 0 {
            return;
        }
        let known = known::Known::new(rr.backend_etag.clone(), rr.plan.layout, header);
        // The answer's stored length is the one this layout has (else it is not remembered).
        if rr.stored_len.is_some() && known.stored_len() == rr.stored_len {
            self.known.remember(obj, version, known);
        }
    }

    /// Forgets what this replica remembered of the object read and sends the read again,
    /// planned from fresh probes (the remembered version was replaced).
    fn forget_and_resend(&self, read: &mut Read, ctx: &mut RequestCtx) -> S3Error {
        ctx.read_plan = Some("replanned");
        if let Some(s3) = ctx.s3.as_ref() {
            let obj = ObjectId { bucket: s3.bucket.as_deref().unwrap_or(""), key: s3.key.as_deref().unwrap_or("") };
            self.known.forget(obj, s3.query_value("versionId"));
        }
        // A remembered plan is only ever made for a Range or partNumber (`want`).
        resend(read, ReadWhat::Replan, ctx)
    }

    /// Shapes the request header of one backend attempt.
    fn shape_upstream(&self, state: &mut CryptoCtx, up: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        let set = |up: &mut RequestHeader, n: &'static str, v: String| {
            up.insert_header(n, v).map_err(|e| S3Error::internal("setting an upstream header", e))
        };
        match state {
            CryptoCtx::Upload(u) => {
                let s3 = ctx.s3()?;
                let obj = ObjectId { bucket: s3.bucket.as_deref().unwrap_or(""), key: s3.key.as_deref().unwrap_or("") };
                // Made per attempt: a retry replays the body from the start.
                u.body = match u.plain_len {
                    Some(plain_len) => {
                        let enc = SegmentEncryptor::new(self.cipher, u.ring.current(), obj, u.part, plain_len, self.chunk_size).map_err(|e| crypto_error(ctx, &e))?;
                        let framer = self.backend.verified_writes().framer(enc.cipher_len());
                        set(up, "content-length", framer.content_length().to_string())?;
                        UploadBody::Encrypting(enc, framer)
                    }
                    None => {
                        // The ciphertext goes on chunked too, once the whole body is known.
                        up.remove_header("content-length");
                        UploadBody::Collecting(BytesMut::new())
                    }
                };
                ctx.key_id = Some(u.ring.current_id());
                ctx.body_rewritten = true;
                for h in PLAINTEXT_BODY_HEADERS.iter().filter(|h| !(u.plain_len.is_none() && **h == "transfer-encoding")) {
                    up.remove_header(*h);
                }
                if let Some(enc) = up.headers.get("content-encoding").and_then(|v| v.to_str().ok()) {
                    let rest: Vec<&str> = enc.split(',').map(str::trim).filter(|t| !t.eq_ignore_ascii_case("aws-chunked")).collect();
                    let rest = rest.join(",");
                    up.remove_header("content-encoding");
                    if !rest.is_empty() && u.part > 0 {
                        set(up, "content-encoding", rest)?;
                    }
                }
                if let Some(sealed) = &u.sealed {
                    seal_headers(up, sealed)?;
                    // If-Match names an ETag the client was shown: give the backend its own.
                    if let Some(im) = up.headers.get("if-match").and_then(|v| v.to_str().ok()).map(str::to_string) {
                        let translated: Vec<String> = im
                            .split(',')
                            .map(|t| crate::etag::backend_etag_of(t).unwrap_or_else(|| t.trim().to_string()))
                            .collect();
                        set(up, "if-match", translated.join(", "))?;
                    }
                }
                // The ciphertext's own checksum, which the backend verifies (verified writes):
                // aws-chunked framing is the outermost content coding. Set after the sealed
                // headers are stripped (Content-Encoding is one of them).
                ctx.upstream_trailer = false;
                if let UploadBody::Encrypting(_, framer) = &u.body {
                    ctx.upstream_trailer = framer.is_trailer();
                    for (n, v) in framer.headers() {
                        let v = match (n, up.headers.get(n).and_then(|v| v.to_str().ok())) {
                            ("content-encoding", Some(rest)) => format!("{v},{rest}"),
                            _ => v,
                        };
                        set(up, n, v)?;
                    }
                }
            }
            CryptoCtx::Create { sealed } => {
                // A checksum algorithm chosen at creation would make the backend demand
                // plaintext checksums on every part.
                for h in PLAINTEXT_BODY_HEADERS {
                    up.remove_header(*h);
                }
                seal_headers(up, sealed)?
            }
            CryptoCtx::Complete(c) => {
                // A body sent chunked (no Content-Length) goes on chunked.
                let chunked = ctx.s3()?.content_length.is_none();
                for h in PLAINTEXT_BODY_HEADERS.iter().filter(|h| !(chunked && **h == "transfer-encoding")) {
                    up.remove_header(*h);
                }
                ctx.body_rewritten = true;
                c.restart();
            }
            CryptoCtx::Read(read) => {
                // Ranges and ETag conditions are answered by the proxy: the backend knows
                // only ciphertext offsets and ciphertext ETags.
                for h in ["range", "if-range", "if-match", "if-none-match"] {
                    up.remove_header(h);
                }
                // The date conditions yield to the ETag ones answered here (RFC 9110 13.2.2;
                // S3: If-Match true and If-Unmodified-Since false is 200 with the data): the
                // backend must not answer 412 or 304 on a date the ETag condition overrides.
                if read.if_match.is_some() {
                    up.remove_header("if-unmodified-since");
                }
                if read.if_none_match.is_some() {
                    up.remove_header("if-modified-since");
                }
                if let ReadWhat::Speculative { end, .. } = &read.what {
                    let end = end.map(|e| e.to_string()).unwrap_or_default();
                    set(up, "range", format!("bytes=0-{end}"))?;
                }
                if let ReadWhat::Planned { read: rr, .. } = &read.what {
                    if ctx.s3()?.op == Operation::GetObject {
                        set(up, "range", format!("bytes={}-{}", rr.fetch_start(), rr.plan.cipher_end))?;
                    }
                    set(up, "if-match", rr.backend_etag.clone())?;
                }
            }
            CryptoCtx::Idle => {}
        }
        Ok(())
    }

    /// One piece of an upload's body: encrypted as it streams, or collected when its length
    /// is unknown. The final chunk goes on only at the end, after the sigv4 filter (which
    /// ran first) accepted the whole body.
    fn upload_body(&self, u: &mut Upload, body: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        match &mut u.body {
            UploadBody::Encrypting(enc, _) => {
                let mut out = match body.take() {
                    Some(b) if !b.is_empty() => {
                        ctx.bytes_encrypted += b.len() as u64;
                        enc.update(&b).map_err(|e| crypto_error(ctx, &e))?
                    }
                    _ => Bytes::new(),
                };
                if end {
                    let UploadBody::Encrypting(enc, mut framer) = std::mem::replace(&mut u.body, UploadBody::Finished) else { unreachable!("matched above") };
                    let last = enc.finish().map_err(|e| {
                        if matches!(e, FormatError::InputTooShort) {
                            s3err(S3ErrorCode::IncompleteBody, "You did not provide the number of bytes specified by the Content-Length HTTP header")
                        } else {
                            crypto_error(ctx, &e)
                        }
                    })?;
                    out = if out.is_empty() {
                        last
                    } else {
                        let mut joined = BytesMut::with_capacity(out.len() + last.len());
                        joined.extend_from_slice(&out);
                        joined.extend_from_slice(&last);
                        joined.freeze()
                    };
                    *body = Some(framer.last(out)?);
                    return Ok(());
                }
                let UploadBody::Encrypting(_, framer) = &mut u.body else { unreachable!("matched above") };
                *body = Some(if out.is_empty() { out } else { framer.piece(out) });
                Ok(())
            }
            UploadBody::Collecting(spool) => {
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
                let UploadBody::Collecting(plain) = std::mem::replace(&mut u.body, UploadBody::Finished) else { unreachable!("matched above") };
                *body = Some(self.encrypt_collected(u, &plain, ctx)?);
                Ok(())
            }
            UploadBody::NotStarted | UploadBody::Finished => Ok(()),
        }
    }

    /// The backend's 400 answer to an upload sent with a ciphertext checksum. A refusal of
    /// the body as damaged on its way (the checksum did not match) is the network's fault:
    /// the client is told to retry, with the one 400 code SDKs retry (the status went out
    /// with the header, before this body showed what the 400 was). Any other answer goes on.
    fn answer_refusal(&self, held: Bytes, ctx: &mut RequestCtx) -> Bytes {
        let text = String::from_utf8_lossy(&held);
        let field = |tag: &str| {
            let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
            let start = text.find(&open)? + open.len();
            let end = text[start..].find(&close)? + start;
            Some(text[start..end].to_string())
        };
        let (code, message) = (field("Code").unwrap_or_default(), field("Message").unwrap_or_default());
        if !crate::verified_write::is_damage_refusal(&code, &message) {
            return held;
        }
        let resource = ctx.s3.as_ref().map(|s| s.resource()).unwrap_or_default();
        log::warn!("request {}: the backend refused the body of {resource} as damaged in transit ({code}: {message}); the client is asked to retry", ctx.request_id);
        let e = s3err(
            S3ErrorCode::RequestTimeout,
            format!("The storage backend refused the encrypted body because it was damaged on its way there (its checksum did not match: {code}); nothing was stored. Please retry."),
        )
        .with_resource(resource);
        let xml = e.to_xml(&ctx.request_id);
        ctx.error = Some(e);
        xml
    }

    /// A chunked body of unknown length, complete: encrypted whole (the segment header
    /// needs the length).
    fn encrypt_collected(&self, u: &Upload, plain: &[u8], ctx: &mut RequestCtx) -> Result<Bytes, S3Error> {
        if u.part > 0 && plain.is_empty() {
            return Err(s3err(S3ErrorCode::InvalidRequest, "empty parts cannot be stored encrypted: every part must hold at least one byte"));
        }
        let s3 = ctx.s3()?;
        let obj = ObjectId { bucket: s3.bucket.as_deref().unwrap_or(""), key: s3.key.as_deref().unwrap_or("") };
        let mut enc = SegmentEncryptor::new(self.cipher, u.ring.current(), obj, u.part, plain.len() as u64, self.chunk_size).map_err(|e| crypto_error(ctx, &e))?;
        let mut out = BytesMut::from(&enc.update(plain).map_err(|e| crypto_error(ctx, &e))?[..]);
        out.extend_from_slice(&enc.finish().map_err(|e| crypto_error(ctx, &e))?);
        ctx.bytes_encrypted += plain.len() as u64;
        Ok(out.freeze())
    }

    /// A GET/HEAD answer for an object: unseal its metadata, give plaintext length and
    /// ETag, evaluate ETag conditions and ranges, and prepare decryption.
    ///
    /// Every length announced here is one the object's authenticated data confirms before
    /// the client holds a complete answer (reader rule 5.11): a sealed length is compared
    /// with the stored length now; otherwise the decryptor compares every segment header with
    /// the announced layout before releasing any of its bytes, and where no byte would be
    /// held back (HEAD, an empty body) the headers are read and checked here first.
    async fn read_response(&self, read: &mut Read, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        if read.answer_of_another_version(resp) {
            // Another version than the plan was made for (a backend that ignores If-Match):
            // a plan from memory is made anew; one from this read's own header reads met a
            // replacement between its requests, as a 412 would have said.
            if read.remembered() {
                return Err(self.forget_and_resend(read, ctx));
            }
            return Err(ranged::changed());
        }
        let s3 = ctx.s3()?.clone();
        if let (Some(asked), Some(answered)) = (s3.query_value("versionId"), header(resp, "x-amz-version-id")) {
            // Not authenticated (a backend can serve an older version under any id: section
            // 11 of docs/object-format.md), but another id than asked for is a plain lie.
            if asked != answered {
                ctx.crypto_failure = Some("other_version");
                log::error!("request {}: {} asked for version {asked}, the backend answered version {answered}", ctx.request_id, s3.resource());
                return Err(s3err(S3ErrorCode::InternalError, format!("The backend answered with another version than the one asked for (request {})", ctx.request_id)));
            }
        }
        let Some(sealed) = header(resp, meta::HEADER) else {
            let last_modified = header(resp, "last-modified").and_then(|v| passthrough::http_date(&v));
            if self.unencrypted.legacy().is_some_and(|l| l.admits(s3.key.as_deref().unwrap_or(""), last_modified)) {
                // The backend was asked for the whole object (ranges are planned for the
                // format): a Range is cut from it here.
                return match &read.what {
                    ReadWhat::FromWhole(r) if s3.op == Operation::GetObject => self.slice_unencrypted(read, *r, resp, ctx),
                    // Asked for stored bytes 0.. as if encrypted: the Range is cut from the whole
                    // object, asked for again.
                    ReadWhat::Speculative { range, .. } => Err(resend(read, ReadWhat::FromWhole(*range), ctx)),
                    ReadWhat::Whole { part: Some(_) } => Err(s3err(S3ErrorCode::NotImplemented, "partNumber reads of objects that predate encryption (unencrypted_objects: passthrough) are not supported; read the whole object or a Range").with_resource(s3.resource())),
                    _ => Ok(()),
                };
            }
            ctx.crypto_failure = Some("not_encrypted");
            log::warn!("request {}: object {} has no sealed metadata and is refused", ctx.request_id, s3.resource());
            return Err(s3err(
                S3ErrorCode::InvalidObjectState,
                "This object has no valid encryption metadata (x-amz-meta-s3cp): it was stored directly on the backend, bypassing the proxy, or its metadata was removed there, so it cannot be authenticated and is not served. Objects written before encryption was introduced can be admitted with unencrypted_objects: passthrough and unencrypted_before / unencrypted_prefixes",
            )
            .with_resource(s3.resource()));
        };
        let ring = read.ring.clone();
        let obj = ObjectId { bucket: s3.bucket.as_deref().unwrap_or(""), key: s3.key.as_deref().unwrap_or("") };
        let opened = meta::open(&ring, obj, &sealed).map_err(|e| crypto_error(ctx, &e))?;
        ctx.key_id = Some(opened.key_id);
        let backend_etag = header(resp, "etag").unwrap_or_default();
        let payload = metadata::Sealed::parse(&opened.payload).map_err(|e| crypto_error(ctx, &e))?;
        if let ReadWhat::Speculative { range, .. } = read.what {
            let version = s3.query_value("versionId");
            match self.settle(range, resp, opened.chunk_size, &payload, &backend_etag, obj, &ring, version).await? {
                Settled::Read(what) => read.what = what,
                Settled::Resend(what) => return Err(resend(read, what, ctx)),
                Settled::Damaged(e) => return Err(crypto_error(ctx, &e)),
                Settled::Unsatisfiable(len) => {
                    // The answer has a body (at least a header's worth): it carries the error.
                    let e = unsatisfiable(&s3);
                    read.answer = Answer::Replace(self.error_answer(resp, ctx, e)?);
                    set_header(resp, "content-range", format!("bytes */{len}"))?;
                    return Ok(());
                }
            }
        }
        let layout = match &read.what {
            // Planned and checked against the headers it rests on before the request.
            ReadWhat::Planned { .. } | ReadWhat::Speculative { .. } | ReadWhat::Replan => None,
            ReadWhat::Whole { .. } | ReadWhat::FromWhole(_) => {
                let cipher_len = header(resp, "content-length").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                let (layout, verified) = payload.announced_layout(opened.chunk_size, cipher_len, &backend_etag).map_err(|e| crypto_error(ctx, &e))?;
                let nothing_held_back = s3.op == Operation::HeadObject || layout.plain_len == 0;
                let layout = if nothing_held_back && !verified {
                    let version = s3.query_value("versionId");
                    // Checked before for this version (same ETag, same shape): not read again.
                    let checked = self.known.with(obj, version, |k| {
                        let l = k.layout;
                        let same = k.backend_etag == backend_etag && k.last_checked && (l.plain_len, l.segments, l.chunk_size) == (layout.plain_len, layout.segments, layout.chunk_size);
                        same.then_some(l)
                    });
                    match checked.flatten() {
                        Some(l) => l,
                        None => {
                            let known = ranged::verify_layout(&self.backend, &ring, obj, version, &backend_etag, layout).await?.map_err(|e| crypto_error(ctx, &e))?;
                            let layout = known.layout;
                            self.known.remember(obj, version, known);
                            layout
                        }
                    }
                } else {
                    layout
                };
                Some(layout)
            }
        };
        let sealed_checksum = match read.what {
            ReadWhat::Whole { .. } if read.checksum_mode => payload.checksum(),
            _ => None,
        };
        let sealed_md5 = payload.restore(resp)?;
        let etag = client_etag(&backend_etag, sealed_md5.as_deref());
        set_header(resp, "etag", etag.clone())?;
        metadata::apply_response_overrides(resp, &s3.query)?;

        // ETag conditions, on the ETags this client may have been shown.
        let candidates = [etag, client_etag(&backend_etag, None)];
        if let Some(validator) = read.if_range.take() {
            if !if_range_holds(&validator, &candidates, header(resp, "last-modified").as_deref()) {
                // Another version than the client holds part of: the whole object, 200.
                match read.what {
                    ReadWhat::FromWhole(_) => read.what = ReadWhat::Whole { part: None },
                    ReadWhat::Planned { part: false, .. } => return Err(resend(read, ReadWhat::Whole { part: None }, ctx)),
                    _ => {}
                }
            }
        }
        let matches = |list: &str| {
            list.split(',').map(str::trim).any(|t| t == "*" || candidates.iter().any(|c| c == t || c.trim_matches('"') == t.trim_matches('"')))
        };
        if let Some(im) = read.if_match.take() {
            if !matches(&im) {
                return Err(crate::conditional::precondition_failed(&s3.resource()));
            }
        }
        if let Some(inm) = read.if_none_match.take() {
            if matches(&inm) {
                resp.set_status(304).map_err(|e| S3Error::internal("304", e))?;
                resp.remove_header("content-length");
                read.answer = Answer::Replace(Bytes::new());
                return Ok(());
            }
        }

        let (status, skip, len) = match (&read.what, layout) {
            (ReadWhat::Planned { read: rr, part }, _) => {
                resp.set_status(206).map_err(|e| S3Error::internal("status", e))?;
                set_header(resp, "content-range", format!("bytes {}-{}/{}", rr.first, rr.last, rr.plain_len))?;
                set_header(resp, "content-length", (rr.last - rr.first + 1).to_string())?;
                set_header(resp, "accept-ranges", "bytes".to_string())?;
                strip_checksums(resp);
                if *part {
                    if let Some(n) = rr.parts_count {
                        set_header(resp, "x-amz-mp-parts-count", n.to_string())?;
                    }
                }
                if s3.op == Operation::GetObject {
                    let (skip, take) = (rr.lead, rr.last - rr.first + 1);
                    read.answer = match &rr.header {
                        Some(h) => Answer::Decrypt { decryptor: Decryptor::for_range((*ring).clone(), obj, h, &rr.plan).map_err(|e| crypto_error(ctx, &e))?, skip, take },
                        // Checked against the announced layout before any byte goes on.
                        None => Answer::HeaderFirst { header: Vec::with_capacity(HEADER_LEN), plan: rr.plan, skip, take },
                    };
                }
                return Ok(());
            }
            (ReadWhat::FromWhole(r), Some(layout)) => match r.resolve(layout.plain_len) {
                Some((first, last)) => {
                    set_header(resp, "content-range", format!("bytes {first}-{last}/{}", layout.plain_len))?;
                    (206, first, last - first + 1)
                }
                None => {
                    // The backend's answer holds the whole object (at least one header's
                    // worth of bytes), so its body can carry the error document.
                    let e = unsatisfiable(&s3);
                    read.answer = Answer::Replace(self.error_answer(resp, ctx, e)?);
                    set_header(resp, "content-range", format!("bytes */{}", layout.plain_len))?;
                    return Ok(());
                }
            },
            // A HEAD with a Range: what the GET would answer, without a body.
            (ReadWhat::Whole { part: None }, Some(layout)) if let Some(r) = read.head_range => match r.resolve(layout.plain_len) {
                Some((first, last)) => {
                    set_header(resp, "content-range", format!("bytes {first}-{last}/{}", layout.plain_len))?;
                    (206, first, last - first + 1)
                }
                None => return Err(unsatisfiable(&s3)),
            },
            (_, layout) => (200, 0, layout.map_or(0, |l| l.plain_len)),
        };
        let layout = layout.expect("unplanned reads have a layout");
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
            read.answer = Answer::Decrypt { decryptor: Decryptor::expecting((*ring).clone(), obj, layout), skip, take: len };
        }
        Ok(())
    }

    /// Settles a `Speculative` read on the backend's answer to stored bytes `0..`: it serves
    /// the read when the object is a single segment of the configured chunk size (its
    /// header is at the start of the body); otherwise the read is planned as any Range and
    /// the backend asked again.
    #[allow(clippy::too_many_arguments)]
    async fn settle(&self, range: ByteRange, resp: &ResponseHeader, chunk_size: u32, payload: &metadata::Sealed, backend_etag: &str, obj: ObjectId<'_>, ring: &KeyRing, version: Option<&str>) -> Result<Settled, S3Error> {
        if resp.status.as_u16() == 200 {
            // The backend ignored the Range: the whole object is here.
            return Ok(Settled::Read(ReadWhat::FromWhole(range)));
        }
        let fetched = header(resp, "content-range").as_deref().and_then(range::parse_content_range);
        if let Some((0, end, total)) = fetched {
            let layout = match payload.announced_layout(chunk_size, total, backend_etag) {
                Ok((layout, _)) => layout,
                Err(e) => return Ok(Settled::Damaged(e)),
            };
            if layout.segments == 1 && chunk_size == self.chunk_size {
                let Some((first, last)) = range.resolve(layout.plain_len) else { return Ok(Settled::Unsatisfiable(layout.plain_len)) };
                if let Some(plan) = plan_range(0, last, layout.plain_len, chunk_size, None).filter(|p| p.cipher_end == end) {
                    let (backend_etag, plain_len) = (backend_etag.to_string(), layout.plain_len);
                    let read = RangedRead { plan, header: None, lead: first, backend_etag, plain_len, first, last, parts_count: None, remembered: false, stored_len: Some(total) };
                    return Ok(Settled::Read(ReadWhat::Planned { read, part: false }));
                }
            }
        }
        Ok(match ranged::prepare_object(&self.backend, ring, obj, version, Want::Range(range), ranged::HeaderRead::WithData, Some(backend_etag), Some(&self.known)).await? {
            Prepared::Plan(read) => {
                // A multipart object whose range starts in its first part: the plan (its part
                // length and last header checked by the probes) may still fit this answer.
                let from_start = plan_range(0, read.last, read.plain_len, read.plan.layout.chunk_size, read.plan.layout.part_len);
                match (fetched, from_start) {
                    (Some((0, end, _)), Some(plan)) if read.plan.segment == 0 && plan.cipher_end == end => {
                        Settled::Read(ReadWhat::Planned { read: RangedRead { plan, header: None, lead: read.first, ..read }, part: false })
                    }
                    _ => Settled::Resend(ReadWhat::Planned { read, part: false }),
                }
            }
            Prepared::Unsatisfiable(len) => Settled::Unsatisfiable(len),
            Prepared::Damaged(e) => Settled::Damaged(e),
            Prepared::NoSuchPart | Prepared::Fallback => Settled::Resend(ReadWhat::FromWhole(range)),
        })
    }

    /// A Range of an object served unencrypted, cut from the whole object the backend sends.
    fn slice_unencrypted(&self, read: &mut Read, range: ByteRange, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        let len = header(resp, "content-length").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match range.resolve(len) {
            Some((first, last)) => {
                resp.set_status(206).map_err(|e| S3Error::internal("status", e))?;
                set_header(resp, "content-range", format!("bytes {first}-{last}/{len}"))?;
                set_header(resp, "content-length", (last - first + 1).to_string())?;
                read.answer = Answer::Slice { skip: first, take: last - first + 1 };
            }
            None => {
                let e = unsatisfiable(ctx.s3()?);
                if len == 0 {
                    // No body to carry the error document: the proxy answers it in full.
                    return Err(e);
                }
                read.answer = Answer::Replace(self.error_answer(resp, ctx, e)?);
                set_header(resp, "content-range", format!("bytes */{len}"))?;
            }
        }
        Ok(())
    }

    /// Turns the backend's answer into an S3 error answer and returns the error document to
    /// send in place of its body. Only for answers that have a body (the document goes out
    /// when it ends): elsewhere return the error, and the proxy answers it in full.
    fn error_answer(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx, e: S3Error) -> Result<Bytes, S3Error> {
        let body = e.to_xml(&ctx.request_id);
        let keep: Vec<_> = ["date", "x-amz-request-id"].iter().filter_map(|h| header(resp, h).map(|v| (*h, v))).collect();
        let mut fresh = ResponseHeader::build(e.status(), None).map_err(|x| S3Error::internal("error answer", x))?;
        for (h, v) in keep {
            set_header(&mut fresh, h, v)?;
        }
        set_header(&mut fresh, "content-type", "application/xml".to_string())?;
        set_header(&mut fresh, "content-length", body.len().to_string())?;
        *resp = fresh;
        ctx.error = Some(e);
        Ok(body)
    }
}

/// Moves the plaintext's descriptive headers into the sealed metadata header.
fn seal_headers(up: &mut RequestHeader, sealed: &str) -> Result<(), S3Error> {
    metadata::strip_sealed_headers(up);
    up.insert_header("content-type", "application/octet-stream")
        .and_then(|_| up.insert_header(meta::HEADER, sealed))
        .map_err(|e| S3Error::internal("setting the sealed metadata", e))?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::if_range_holds;

    #[test]
    fn if_range_names_one_version_strongly() {
        let etags = ["\"5d41402abc4b2a76b9719d911017c592\"".to_string(), "\"0123-2\"".to_string()];
        let modified = Some("Sun, 06 Dec 2026 10:00:00 GMT");
        assert!(if_range_holds("\"5d41402abc4b2a76b9719d911017c592\"", &etags, modified));
        assert!(if_range_holds(" \"0123-2\" ", &etags, modified));
        assert!(!if_range_holds("\"5d41402abc4b2a76b9719d911017c593\"", &etags, modified));
        // Weak tags never match; an unquoted tag is no entity tag (and no date).
        assert!(!if_range_holds("W/\"5d41402abc4b2a76b9719d911017c592\"", &etags, modified));
        assert!(!if_range_holds("5d41402abc4b2a76b9719d911017c592", &etags, modified));
        // A date matches the Last-Modified time exactly, not an earlier or later one.
        assert!(if_range_holds("Sun, 06 Dec 2026 10:00:00 GMT", &etags, modified));
        assert!(!if_range_holds("Sun, 06 Dec 2026 10:00:01 GMT", &etags, modified));
        assert!(!if_range_holds("Sun, 06 Dec 2026 09:59:59 GMT", &etags, modified));
        assert!(!if_range_holds("Sun, 06 Dec 2026 10:00:00 GMT", &etags, None));
        assert!(!if_range_holds("", &etags, modified));
    }
}
