//! Copies of encrypted objects: CopyObject, and re-wrapping objects to the current master
//! key after a rotation. The backend cannot copy server-side: the object's name (and key
//! id) is bound into every segment header, so the copy streams the source through the
//! proxy and re-wraps each segment's data key for the destination; chunks pass unchanged
//! and memory stays at about one chunk. A multipart source (several segments) is stored by
//! a single PUT, which cannot carry the `-N` part count that sizes are computed from, so
//! its content is re-encrypted into one segment instead (S3 limits a copy to 5 GB, as
//! a single PUT). A source that fails authentication aborts the upload with a short body,
//! so the backend stores nothing.

use std::sync::Arc;
use bytes::BytesMut;

use pingora::http::RequestHeader;
use s3cp_format::{meta, ChunkCipher, Decryptor, FormatError, KeyId, KeyRing, ObjectId, Rewrapper, SegmentEncryptor};

use super::{crypto_error, metadata};
use crate::backend::Backend;
use crate::ctx::RequestCtx;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::etag::client_etag;
use crate::filter::Reply;
use crate::request::{IfNoneMatch, S3Request};

/// Why a copy failed: the S3 answer, and the format error behind it if any.
pub struct CopyError {
    pub error: S3Error,
    pub format: Option<FormatError>,
}

impl From<S3Error> for CopyError {
    fn from(error: S3Error) -> Self {
        Self { error, format: None }
    }
}

fn format_failure(e: FormatError) -> CopyError {
    CopyError { error: s3err(S3ErrorCode::InternalError, "the copy source could not be authenticated"), format: Some(e) }
}

/// What to do with the source's sealed metadata.
pub enum MetadataChange<'a> {
    Keep,
    /// Replace by the descriptive headers of this request (the plaintext MD5 is kept: the
    /// content does not change).
    ReplaceFrom(&'a RequestHeader),
}

pub struct Copied {
    pub backend_etag: String,
    /// The version the copy created (`x-amz-version-id` of the backend's answer, in a
    /// versioned bucket).
    pub version_id: Option<String>,
    /// The source version read (`x-amz-copy-source-version-id` of the answer).
    pub source_version_id: Option<String>,
    pub sealed_md5: Option<String>,
    /// Key id the source was sealed with.
    pub source_key_id: KeyId,
}

/// Streams `src` to `dst`, re-wrapping every segment for `dst` under the ring's current key
/// (a single segment keeps its chunks and so its chunk cipher; several segments are
/// re-encrypted into one, sealed with `cipher`).
/// `only_if_not_current`: skip (returning `Ok(None)`) when the source already uses the
/// current key and `src == dst` (key rotation). `extra_put` headers go on the upload.
#[allow(clippy::too_many_arguments)]
pub async fn reencrypt_copy(
    backend: &Backend,
    ring: &Arc<KeyRing>,
    cipher: ChunkCipher,
    src: ObjectId<'_>,
    src_version: Option<&str>,
    dst: ObjectId<'_>,
    metadata_change: MetadataChange<'_>,
    extra_put: &[(&str, &str)],
    only_if_not_current: bool,
    conditions: &SourceConditions,
) -> Result<Option<Copied>, CopyError> {
    let query: Vec<(String, String)> = src_version.iter().map(|v| ("versionId".to_string(), v.to_string())).collect();
    let get = backend.request("GET", Some(src.bucket), Some(src.key), &query, &[], None)?;
    let mut source = backend.open(Some(src.bucket), get).await?;
    let head = source.read_header().await?;
    match head.status.as_u16() {
        200 => {}
        404 if src_version.is_some() => {
            return Err(s3err(S3ErrorCode::NoSuchVersion, "The specified version does not exist.").with_resource(format!("/{}/{}", src.bucket, src.key)).into())
        }
        404 => {
            return Err(s3err(S3ErrorCode::NoSuchKey, "The specified key does not exist.").with_resource(format!("/{}/{}", src.bucket, src.key)).into())
        }
        403 => return Err(s3err(S3ErrorCode::AccessDenied, "the backend denied reading the copy source").into()),
        s => {
            log::warn!("backend answered {s} reading copy source /{}/{}", src.bucket, src.key);
            return Err(s3err(S3ErrorCode::ServiceUnavailable, "the copy source could not be read; please retry").with_retry_after(1).into());
        }
    }
    let hdr = |n: &str| head.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let sealed = hdr(meta::HEADER).ok_or_else(|| CopyError {
        error: s3err(S3ErrorCode::InvalidObjectState, "The copy source was not written through the encryption proxy"),
        format: Some(FormatError::NotEncrypted),
    })?;
    let opened = meta::open(ring, src, &sealed).map_err(format_failure)?;
    let payload = metadata::Sealed::parse(&opened.payload).map_err(format_failure)?;
    let sealed_md5 = payload.md5().map(str::to_string);
    check_source_conditions(conditions, &head, &sealed_md5)?;
    if only_if_not_current && opened.key_id == ring.current_id() {
        source.release_without_body().await;
        return Ok(None);
    }
    let length = hdr("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| S3Error::internal("copy", "source answer without Content-Length"))?;

    let source_etag = hdr("etag").unwrap_or_default();
    // The source as announced, checked against every header the copy reads.
    let (layout, _) = payload.announced_layout(opened.chunk_size, length, &source_etag).map_err(format_failure)?;

    let payload = match metadata_change {
        MetadataChange::Keep => opened.payload.clone(),
        MetadataChange::ReplaceFrom(req) => metadata::with_checksum(metadata::from_request(req, None, sealed_md5.as_deref()), payload.checksum()),
    };
    // The copy is one segment, stored by a single PUT: its length is sealed.
    let payload = metadata::with_plain_len(payload, Some(layout.plain_len));
    let new_sealed = meta::seal(ring.current(), dst, opened.chunk_size, &payload).map_err(|e| CopyError {
        error: s3err(S3ErrorCode::MetadataTooLarge, "Your metadata headers exceed the maximum allowed metadata size once encrypted (about 1400 bytes)"),
        format: Some(e),
    })?;
    let mut put_headers: Vec<(&str, &str)> = vec![("content-type", "application/octet-stream"), (meta::HEADER, &new_sealed)];
    put_headers.extend_from_slice(extra_put);
    if only_if_not_current {
        // Re-wrapping in place: do not overwrite an object a client replaced meanwhile
        // (backends that honour If-Match on PUT).
        put_headers.push(("if-match", &source_etag));
    }
    let mut stream = if layout.segments > 1 {
        if layout.plain_len > MAX_SINGLE_PUT {
            return Err(s3err(S3ErrorCode::InvalidRequest, "The specified copy source is larger than the maximum allowable size for a copy source: 5368709120").into());
        }
        let enc = SegmentEncryptor::new(cipher, ring.current(), dst, 0, layout.plain_len, opened.chunk_size).map_err(format_failure)?;
        CopyStream::Reencrypt(Decryptor::expecting((**ring).clone(), src, layout), enc)
    } else {
        CopyStream::Rewrap(Rewrapper::new((**ring).clone(), src, dst, ring.current().clone()).expecting(layout))
    };
    let (put, mut framer) = backend.upload_request(Some(dst.bucket), Some(dst.key), &[], &put_headers, stream.output_len(length))?;
    let mut dest = backend.open(Some(dst.bucket), put).await?;
    while let Some(piece) = source.read_body().await? {
        let out = stream.update(&piece).map_err(format_failure)?;
        if !out.is_empty() {
            dest.write_body(framer.piece(out), false).await?;
        }
    }
    source.release().await;
    // Returning before this point drops `dest` mid-body: the backend stores nothing.
    let last = stream.finish().map_err(format_failure)?;
    dest.write_body(framer.last(last)?, true).await?;
    let answer = dest.read_header().await?;
    let mut body = BytesMut::new();
    while let Some(p) = dest.read_body().await? {
        if body.len() < 64 << 10 {
            body.extend_from_slice(&p);
        }
    }
    dest.release().await;
    match answer.status.as_u16() {
        200..=299 => {}
        412 => return Err(s3err(S3ErrorCode::PreconditionFailed, "At least one of the pre-conditions you specified did not hold").into()),
        s => {
            // A refusal of damaged data (verified writes) is retryable like any other.
            log::warn!("backend answered {s} to the copy's PUT of /{}/{}: {}", dst.bucket, dst.key, String::from_utf8_lossy(&body));
            return Err(s3err(S3ErrorCode::ServiceUnavailable, "the copy could not be stored; please retry").with_retry_after(1).into());
        }
    }
    let answer_hdr = |n: &str| answer.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let backend_etag = answer_hdr("etag").unwrap_or_default();
    let version_id = answer_hdr("x-amz-version-id");
    let source_version_id = hdr("x-amz-version-id");
    Ok(Some(Copied { backend_etag, version_id, source_version_id, sealed_md5, source_key_id: opened.key_id }))
}

/// `x-amz-copy-source-if-*`, evaluated on the source as the client sees it.
#[derive(Default)]
pub struct SourceConditions {
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<std::time::SystemTime>,
    pub if_unmodified_since: Option<std::time::SystemTime>,
}

impl SourceConditions {
    pub fn from_request(req: &RequestHeader) -> Self {
        let h = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let t = |n: &str| h(n).and_then(|v| httpdate::parse_http_date(&v).ok());
        Self {
            if_match: h("x-amz-copy-source-if-match"),
            if_none_match: h("x-amz-copy-source-if-none-match"),
            if_modified_since: t("x-amz-copy-source-if-modified-since"),
            if_unmodified_since: t("x-amz-copy-source-if-unmodified-since"),
        }
    }
}

pub(super) fn check_source_conditions(c: &SourceConditions, head: &pingora::http::ResponseHeader, sealed_md5: &Option<String>) -> Result<(), CopyError> {
    let backend = head.headers.get("etag").and_then(|v| v.to_str().ok()).unwrap_or("");
    let shown = [client_etag(backend, sealed_md5.as_deref()), client_etag(backend, None)];
    let matches = |list: &str| {
        list.split(',').map(|t| t.trim().trim_matches('"')).any(|t| t == "*" || shown.iter().any(|s| s.trim_matches('"') == t))
    };
    let modified = head.headers.get("last-modified").and_then(|v| v.to_str().ok()).and_then(|v| httpdate::parse_http_date(v).ok());
    let failed = c.if_match.as_deref().is_some_and(|l| !matches(l))
        || c.if_none_match.as_deref().is_some_and(matches)
        || matches!((c.if_unmodified_since, modified), (Some(t), Some(m)) if m > t)
        || (c.if_match.is_none() && matches!((c.if_modified_since, modified), (Some(t), Some(m)) if m <= t));
    if failed {
        return Err(s3err(S3ErrorCode::PreconditionFailed, "At least one of the pre-conditions you specified did not hold").into());
    }
    Ok(())
}

/// S3's limit for a single PUT (and so for a copy).
const MAX_SINGLE_PUT: u64 = 5 << 30;

/// How the stored bytes of a copy are produced from the source's (one per copy: the size
/// difference between variants does not matter).
#[allow(clippy::large_enum_variant)]
enum CopyStream {
    /// One segment: re-wrap its header, pass its chunks.
    Rewrap(Rewrapper),
    /// Several segments: authenticate and decrypt, encrypt again as one segment.
    Reencrypt(Decryptor, SegmentEncryptor),
}

impl CopyStream {
    fn output_len(&self, source_len: u64) -> u64 {
        match self {
            CopyStream::Rewrap(_) => source_len,
            CopyStream::Reencrypt(_, enc) => enc.cipher_len(),
        }
    }

    fn update(&mut self, input: &[u8]) -> Result<bytes::Bytes, FormatError> {
        match self {
            CopyStream::Rewrap(r) => r.update(input),
            CopyStream::Reencrypt(dec, enc) => {
                let plain = dec.update(input)?;
                enc.update(&plain)
            }
        }
    }

    /// The final piece, released only once the whole source authenticated.
    fn finish(self) -> Result<bytes::Bytes, FormatError> {
        match self {
            CopyStream::Rewrap(r) => r.finish(),
            CopyStream::Reencrypt(dec, mut enc) => {
                let rest = dec.finish()?;
                let mut out = bytes::BytesMut::from(&enc.update(&rest)?[..]);
                out.extend_from_slice(&enc.finish()?);
                Ok(out.freeze())
            }
        }
    }
}

/// CopyObject: answered by the proxy with a `CopyObjectResult`.
pub async fn copy_object(
    backend: &Backend,
    ring: &Arc<KeyRing>,
    cipher: ChunkCipher,
    req: &RequestHeader,
    s3: &S3Request,
    ctx: &mut RequestCtx,
) -> Result<Reply, S3Error> {
    let src = s3.copy_source.as_ref().expect("CopyObject has a source");
    let (dst_bucket, dst_key) = (s3.bucket.as_deref().unwrap_or(""), s3.key.as_deref().unwrap_or(""));
    // Copying a named version onto its key restores that version (S3 allows it; versioned
    // buckets are restored this way).
    if src.bucket == dst_bucket && src.key == dst_key && !s3.metadata_replace && src.version_id.is_none() {
        return Err(s3err(
            S3ErrorCode::InvalidRequest,
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
        ));
    }
    let change = if s3.metadata_replace { MetadataChange::ReplaceFrom(req) } else { MetadataChange::Keep };
    let mut extra = Vec::new();
    if s3.if_none_match == Some(IfNoneMatch::Any) {
        extra.push(("if-none-match", "*"));
    }
    // What the destination is stored as (Object Lock, storage class) goes to the backend's
    // PUT as the client sent it (signed by the client, re-signed by the proxy).
    for name in DESTINATION_HEADERS {
        if let Some(v) = req.headers.get(*name).and_then(|v| v.to_str().ok()) {
            extra.push((*name, v));
        }
    }
    let copied = reencrypt_copy(
        backend,
        ring,
        cipher,
        ObjectId { bucket: &src.bucket, key: &src.key },
        src.version_id.as_deref(),
        ObjectId { bucket: dst_bucket, key: dst_key },
        change,
        &extra,
        false,
        &SourceConditions::from_request(req),
    )
    .await
    .map_err(|e| match e.format {
        Some(f) => crypto_error(ctx, &f),
        None => {
            if e.error.code == S3ErrorCode::PreconditionFailed {
                crate::conditional::precondition_failed(&s3.resource())
            } else {
                e.error
            }
        }
    })?
    .expect("copies always run");
    ctx.key_id = Some(ring.current_id());
    let etag = client_etag(&copied.backend_etag, copied.sealed_md5.as_deref());
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    let last_modified = time::OffsetDateTime::now_utc().format(&fmt).map_err(|e| S3Error::internal("formatting a date", e))?;
    let mut reply = Reply::xml(
        200,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CopyObjectResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LastModified>{last_modified}</LastModified><ETag>{}</ETag></CopyObjectResult>",
            crate::xml::escape(&etag)
        ),
    );
    if let Some(v) = copied.version_id {
        reply.headers.push(("x-amz-version-id", v));
    }
    if let Some(v) = copied.source_version_id {
        reply.headers.push(("x-amz-copy-source-version-id", v));
    }
    Ok(reply)
}

/// Request headers of a CopyObject that describe how the destination is stored.
const DESTINATION_HEADERS: &[&str] = &[
    "x-amz-object-lock-mode",
    "x-amz-object-lock-retain-until-date",
    "x-amz-object-lock-legal-hold",
    "x-amz-storage-class",
];
