//! UploadPartCopy, statelessly. The backend cannot copy ciphertext into a part: the
//! source's segments are bound to the source's name, and the part must become segment
//! `partNumber` of the destination. So the proxy reads the source ciphertext (the whole
//! object, or only the chunks holding `x-amz-copy-source-range`), authenticates and
//! decrypts it, and encrypts that plaintext as the part's segment, exactly as UploadPart
//! would have encrypted the same bytes, streaming it to the backend as an ordinary
//! UploadPart. Memory stays at about one chunk whatever the part size (up to 5 GiB).
//! A source that fails authentication, or ends early, leaves the part upload short of its
//! Content-Length, so the backend stores nothing. The part layout rule (every part but the
//! last a multiple of the chunk size) is checked at CompleteMultipartUpload, as for
//! UploadPart: a part cannot know whether it is the last.

use std::sync::Arc;

use bytes::BytesMut;
use pingora::http::{RequestHeader, ResponseHeader};
use s3cp_format::{meta, ChunkCipher, Decryptor, KeyRing, ObjectId, SegmentEncryptor};

use super::copy::{check_source_conditions, SourceConditions};
use super::range::{trim, ByteRange};
use super::ranged::{prepare_object, HeaderRead, Prepared, Want};
use super::{crypto_error, metadata};
use crate::backend::{Backend, Exchange};
use crate::ctx::RequestCtx;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::filter::Reply;
use crate::request::S3Request;

/// S3's largest part (and largest copy source range).
const MAX_PART: u64 = 5 << 30;

/// Parses `x-amz-copy-source-range: bytes=first-last` (both bounds required, as in S3).
fn parse_copy_range(v: &str) -> Result<(u64, u64), S3Error> {
    let bad = || {
        s3err(
            S3ErrorCode::InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy",
        )
    };
    let spec = v.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

fn range_invalid(size: u64) -> S3Error {
    s3err(S3ErrorCode::InvalidRange, format!("The x-amz-copy-source-range is not satisfiable: the source object has {size} bytes"))
}

/// The source as read: the answer's header, the open exchange and how to decrypt it.
struct Source<'a> {
    exchange: Exchange<'a>,
    head: ResponseHeader,
    decryptor: Decryptor,
    /// Plaintext window of the decrypted stream.
    skip: u64,
    take: u64,
}

async fn open_source<'a>(backend: &'a Backend, src: ObjectId<'_>, version: Option<&str>, headers: &[(&str, &str)]) -> Result<(Exchange<'a>, ResponseHeader), S3Error> {
    let query: Vec<(String, String)> = version.iter().map(|v| ("versionId".to_string(), v.to_string())).collect();
    let get = backend.request("GET", Some(src.bucket), Some(src.key), &query, headers, None)?;
    let mut ex = backend.open(Some(src.bucket), get).await?;
    let head = ex.read_header().await?;
    let resource = format!("/{}/{}", src.bucket, src.key);
    match head.status.as_u16() {
        200 | 206 => Ok((ex, head)),
        404 if version.is_some() => Err(s3err(S3ErrorCode::NoSuchVersion, "The specified version does not exist.").with_resource(resource)),
        404 => Err(s3err(S3ErrorCode::NoSuchKey, "The specified key does not exist.").with_resource(resource)),
        403 => Err(s3err(S3ErrorCode::AccessDenied, "the backend denied reading the copy source")),
        412 => Err(s3err(S3ErrorCode::ServiceUnavailable, "The copy source changed while it was being read; please retry").with_retry_after(1)),
        s => {
            log::warn!("backend answered {s} reading copy source {resource}");
            Err(s3err(S3ErrorCode::ServiceUnavailable, "the copy source could not be read; please retry").with_retry_after(1))
        }
    }
}

/// An S3 error from a backend error answer (its `<Code>` when this proxy knows it).
fn backend_error(status: u16, body: &[u8]) -> S3Error {
    let text = String::from_utf8_lossy(body);
    let field = |tag: &str| {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&close)? + start;
        Some(text[start..end].to_string())
    };
    match field("Code").and_then(|c| S3ErrorCode::from_code(&c)) {
        // The backend refused the part's checksum (verified writes): damaged in transit.
        Some(code) if crate::verified_write::is_damage_refusal(code.as_str(), &field("Message").unwrap_or_default()) => {
            log::warn!("backend refused UploadPartCopy's part as damaged in transit: {text}");
            s3err(S3ErrorCode::ServiceUnavailable, "the part was damaged on its way to the storage backend, which refused it; please retry").with_retry_after(1)
        }
        Some(code) if code.status() == status => s3err(code, field("Message").unwrap_or_default()),
        _ if status == 404 => s3err(S3ErrorCode::NoSuchUpload, "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed."),
        _ => {
            log::warn!("backend answered {status} to UploadPartCopy's part upload: {text}");
            s3err(S3ErrorCode::ServiceUnavailable, "the part could not be stored; please retry").with_retry_after(1)
        }
    }
}

/// UploadPartCopy: answered by the proxy with a `CopyPartResult`.
pub async fn upload_part_copy(
    backend: &Backend,
    ring: &Arc<KeyRing>,
    req: &RequestHeader,
    s3: &S3Request,
    chunk_size: u32,
    cipher: ChunkCipher,
    ctx: &mut RequestCtx,
) -> Result<Reply, S3Error> {
    let part = s3
        .query_value("partNumber")
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|p| (1..=10_000).contains(p))
        .ok_or_else(|| s3err(S3ErrorCode::InvalidArgument, "Part number must be an integer between 1 and 10000, inclusive"))?;
    let upload_id = s3.query_value("uploadId").unwrap_or_default().to_string();
    let src = s3.copy_source.as_ref().expect("UploadPartCopy has a source");
    let src_obj = ObjectId { bucket: &src.bucket, key: &src.key };
    let version = src.version_id.as_deref();
    let dst = ObjectId { bucket: s3.bucket.as_deref().unwrap_or(""), key: s3.key.as_deref().unwrap_or("") };
    let range = match req.headers.get("x-amz-copy-source-range") {
        Some(v) => Some(parse_copy_range(v.to_str().unwrap_or(""))?),
        None => None,
    };
    let conditions = SourceConditions::from_request(req);
    // The upload must exist before the source is read (backends may hang up on a part
    // for an unknown upload before reading its body).
    let q = vec![("max-parts".to_string(), "1".to_string()), ("uploadId".to_string(), upload_id.clone())];
    let list = backend.request("GET", Some(dst.bucket), Some(dst.key), &q, &[], None)?;
    let (resp, body) = backend.send(Some(dst.bucket), list, None, 1 << 20).await?;
    if !resp.status.is_success() {
        return Err(backend_error(resp.status.as_u16(), &body));
    }
    let format_err = |ctx: &mut RequestCtx, e| crypto_error(ctx, &e);

    // Only the chunks holding the range are fetched when the source can be planned for.
    let planned = match range {
        Some((a, b)) => match prepare_object(backend, ring, src_obj, version, Want::Range(ByteRange::FromTo(a, b)), HeaderRead::Probe, None, None).await? {
            Prepared::Plan(rr) if rr.first == a && rr.last == b => Some(rr),
            Prepared::Plan(rr) => return Err(range_invalid(rr.plain_len)),
            Prepared::Unsatisfiable(len) => return Err(range_invalid(len)),
            Prepared::Damaged(e) => return Err(format_err(ctx, e)),
            Prepared::NoSuchPart | Prepared::Fallback => None,
        },
        None => None,
    };
    let mut source = match &planned {
        Some(rr) => {
            let range = format!("bytes={}-{}", rr.plan.cipher_start, rr.plan.cipher_end);
            let (exchange, head) = open_source(backend, src_obj, version, &[("range", &range), ("if-match", &rr.backend_etag)]).await?;
            let header = rr.header.as_deref().unwrap_or_default();
            let decryptor = Decryptor::for_range((**ring).clone(), src_obj, header, &rr.plan).map_err(|e| format_err(ctx, e))?;
            Source { exchange, head, decryptor, skip: 0, take: rr.plan.len }
        }
        None => {
            let (exchange, head) = open_source(backend, src_obj, version, &[]).await?;
            // Replaced by one expecting the source's layout once its answer is read.
            Source { exchange, head, decryptor: Decryptor::new((**ring).clone(), src_obj), skip: 0, take: 0 }
        }
    };
    let hdr = |n: &str| source.head.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let Some(sealed) = hdr(meta::HEADER) else {
        ctx.crypto_failure = Some("not_encrypted");
        return Err(s3err(S3ErrorCode::InvalidObjectState, "The copy source was not written through the encryption proxy"));
    };
    let opened = meta::open(ring, src_obj, &sealed).map_err(|e| format_err(ctx, e))?;
    let payload = metadata::Sealed::parse(&opened.payload).map_err(|e| format_err(ctx, e))?;
    check_source_conditions(&conditions, &source.head, &payload.md5().map(str::to_string)).map_err(|e| {
        if e.error.code == S3ErrorCode::PreconditionFailed {
            crate::conditional::precondition_failed(&s3.resource())
        } else {
            e.error
        }
    })?;
    if planned.is_none() {
        let etag = hdr("etag").unwrap_or_default();
        let stored = hdr("content-length").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let (layout, _) = payload.announced_layout(opened.chunk_size, stored, &etag).map_err(|e| format_err(ctx, e))?;
        let plain = layout.plain_len;
        // Every source header must agree with the length this part is encrypted for.
        source.decryptor = Decryptor::expecting((**ring).clone(), src_obj, layout);
        match range {
            Some((_, b)) if b >= plain => return Err(range_invalid(plain)),
            Some((a, b)) => (source.skip, source.take) = (a, b - a + 1),
            None => source.take = plain,
        }
    }
    let plain_len = source.take;
    if plain_len == 0 {
        return Err(s3err(S3ErrorCode::InvalidRequest, "empty parts cannot be stored encrypted: every part must hold at least one byte"));
    }
    if plain_len > MAX_PART {
        return Err(s3err(S3ErrorCode::InvalidRequest, "The specified copy source is larger than the maximum allowable size for a copy source: 5368709120"));
    }

    let mut enc = SegmentEncryptor::new(cipher, ring.current(), dst, part, plain_len, chunk_size).map_err(|e| format_err(ctx, e))?;
    let query = vec![("partNumber".to_string(), part.to_string()), ("uploadId".to_string(), upload_id)];
    let (put, mut framer) = backend.upload_request(Some(dst.bucket), Some(dst.key), &query, &[("content-type", "application/octet-stream")], enc.cipher_len())?;
    let mut dest = backend.open(Some(dst.bucket), put).await?;
    let (mut skip, mut take) = (source.skip, source.take);
    while let Some(piece) = source.exchange.read_body().await? {
        let plain = source.decryptor.update(&piece).map_err(|e| format_err(ctx, e))?;
        ctx.bytes_decrypted += plain.len() as u64;
        let plain = trim(&mut skip, &mut take, plain);
        if !plain.is_empty() {
            ctx.bytes_encrypted += plain.len() as u64;
            let out = enc.update(&plain).map_err(|e| format_err(ctx, e))?;
            if !out.is_empty() {
                dest.write_body(framer.piece(out), false).await?;
            }
        }
    }
    source.exchange.release().await;
    // Returning before this point drops `dest` mid-body: the backend stores nothing.
    let rest = source.decryptor.finish();
    let rest = rest.map_err(|e| format_err(ctx, e))?;
    let rest = trim(&mut skip, &mut take, rest);
    let mut last = BytesMut::from(&enc.update(&rest).map_err(|e| format_err(ctx, e))?[..]);
    let fin = enc.finish().map_err(|e| {
        if matches!(e, s3cp_format::FormatError::InputTooShort) {
            s3err(S3ErrorCode::ServiceUnavailable, "The copy source changed while it was being read; please retry").with_retry_after(1)
        } else {
            crypto_error(ctx, &e)
        }
    })?;
    last.extend_from_slice(&fin);
    dest.write_body(framer.last(last.freeze())?, true).await?;
    let answer = dest.read_header().await?;
    let mut body = BytesMut::new();
    while let Some(p) = dest.read_body().await? {
        if body.len() < 64 << 10 {
            body.extend_from_slice(&p);
        }
    }
    dest.release().await;
    let status = answer.status.as_u16();
    if !(200..300).contains(&status) {
        return Err(backend_error(status, &body));
    }
    ctx.key_id = Some(ring.current_id());
    // The part's ETag is the backend's, as UploadPart reports it: Complete names parts by it.
    let etag = answer.headers.get("etag").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let source_version = source.head.headers.get("x-amz-version-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    let last_modified = time::OffsetDateTime::now_utc().format(&fmt).map_err(|e| S3Error::internal("formatting a date", e))?;
    let mut reply = Reply::xml(
        200,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CopyPartResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LastModified>{last_modified}</LastModified><ETag>{}</ETag></CopyPartResult>",
            crate::xml::escape(&etag)
        ),
    );
    if let Some(v) = source_version {
        reply.headers.push(("x-amz-copy-source-version-id", v));
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_ranges_need_both_bounds() {
        assert_eq!(parse_copy_range("bytes=0-9").unwrap(), (0, 9));
        assert_eq!(parse_copy_range("bytes=5-5").unwrap(), (5, 5));
        for bad in ["bytes=5-", "bytes=-5", "0-9", "bytes=9-0", "bytes=a-b"] {
            assert_eq!(parse_copy_range(bad).unwrap_err().code, S3ErrorCode::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn backend_errors_keep_their_code() {
        let e = backend_error(404, b"<Error><Code>NoSuchUpload</Code><Message>gone</Message></Error>");
        assert_eq!((e.code, e.message.as_str()), (S3ErrorCode::NoSuchUpload, "gone"));
        assert_eq!(backend_error(404, b"").code, S3ErrorCode::NoSuchUpload);
        assert_eq!(backend_error(500, b"oops").code, S3ErrorCode::ServiceUnavailable);
    }
}
