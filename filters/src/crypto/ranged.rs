//! Range GETs that fetch only the ciphertext chunks holding the requested bytes.
//!
//! A small probe reads the first segment header (and with it the object's length, ETag
//! and sealed metadata); for a multipart object whose range starts in a later part, a
//! second probe reads that part's header. The main request then asks the backend for just
//! the planned ciphertext bytes, pinned with `If-Match` to the probed ETag so that an object
//! replaced in between is noticed instead of mixed.

use s3cp_format::{meta, object_plain_len, plan_range, KeyRing, ObjectId, RangePlan, SegmentHeader, HEADER_LEN};

use super::range::ByteRange;
use crate::backend::Backend;
use crate::error::S3Error;
use crate::etag::segments_from_etag;
use crate::request::S3Request;

/// A planned ranged read.
#[derive(Debug, Clone)]
pub struct RangedRead {
    pub plan: RangePlan,
    pub header: Vec<u8>,
    pub backend_etag: String,
    pub plain_len: u64,
    pub first: u64,
    pub last: u64,
    /// The object's segment (= part) count, for `x-amz-mp-parts-count` (multipart objects only).
    pub parts_count: Option<u32>,
}

/// What a planned read wants: a byte range, or a part (`partNumber`) of the plaintext.
#[derive(Debug, Clone, Copy)]
pub enum Want {
    Range(ByteRange),
    Part(u32),
}

pub enum Prepared {
    Plan(RangedRead),
    /// The range lies outside the object (answer 416 with the plaintext length).
    Unsatisfiable(u64),
    /// `partNumber` beyond the object's part count.
    NoSuchPart,
    /// Not an object the proxy can plan for (absent, not encrypted, …): the ordinary read
    /// path answers it.
    Fallback,
}

async fn probe(backend: &Backend, obj: ObjectId<'_>, version: Option<&str>, from: u64, if_match: Option<&str>) -> Result<Option<(pingora::http::ResponseHeader, bytes::Bytes)>, S3Error> {
    let (bucket, key) = (Some(obj.bucket), Some(obj.key));
    let range = format!("bytes={}-{}", from, from + HEADER_LEN as u64 - 1);
    let mut headers = vec![("range", range.as_str())];
    if let Some(e) = if_match {
        headers.push(("if-match", e));
    }
    let query: Vec<(String, String)> = version.iter().map(|v| ("versionId".to_string(), v.to_string())).collect();
    let req = backend.request("GET", bucket, key, &query, &headers, None)?;
    let mut ex = backend.open(bucket, req).await?;
    let resp = ex.read_header().await?;
    if resp.status.as_u16() != 206 {
        // Absent, not ranged, …: the ordinary read answers it; this body is not wanted
        // (it may be an error document or, from a backend ignoring Range, the whole object).
        ex.release_without_body().await;
        return Ok(None);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(piece) = ex.read_body().await? {
        if body.len() + piece.len() > HEADER_LEN {
            ex.release_without_body().await;
            return Ok(None);
        }
        body.extend_from_slice(&piece);
    }
    ex.release().await;
    Ok((body.len() == HEADER_LEN).then_some((resp, body.freeze())))
}

pub async fn prepare(backend: &Backend, ring: &KeyRing, s3: &S3Request, want: Want) -> Result<Prepared, S3Error> {
    let obj = ObjectId { bucket: s3.bucket.as_deref().unwrap_or(""), key: s3.key.as_deref().unwrap_or("") };
    prepare_object(backend, ring, obj, s3.query_value("versionId"), want).await
}

/// Plans a read of `want` from the stored object `obj`.
pub async fn prepare_object(backend: &Backend, ring: &KeyRing, obj: ObjectId<'_>, version: Option<&str>, want: Want) -> Result<Prepared, S3Error> {
    let Some((resp, first_header)) = probe(backend, obj, version, 0, None).await? else { return Ok(Prepared::Fallback) };
    let h = |n: &str| resp.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (Some(sealed), Some(etag), Some(content_range)) = (h(meta::HEADER), h("etag"), h("content-range")) else {
        return Ok(Prepared::Fallback);
    };
    let Ok(opened) = meta::open(ring, obj, &sealed) else { return Ok(Prepared::Fallback) };
    let Some(total) = content_range.rsplit('/').next().and_then(|t| t.parse::<u64>().ok()) else {
        return Ok(Prepared::Fallback);
    };
    let segments = segments_from_etag(&etag);
    let Some(plain_len) = object_plain_len(total, opened.chunk_size, segments) else { return Ok(Prepared::Fallback) };
    let part = if segments > 1 {
        match SegmentHeader::parse(&first_header) {
            Ok(hdr) => Some(hdr.plain_len),
            Err(_) => return Ok(Prepared::Fallback),
        }
    } else {
        None
    };
    let (first, last) = match want {
        Want::Range(range) => match range.resolve(plain_len) {
            Some(r) => r,
            None => return Ok(Prepared::Unsatisfiable(plain_len)),
        },
        Want::Part(n) => {
            if n == 0 || n > segments {
                return Ok(Prepared::NoSuchPart);
            }
            // Part n is segment n: every part but the last holds the first one's length.
            let p = part.unwrap_or(plain_len);
            let first = u64::from(n - 1) * p;
            let end = (first + p).min(plain_len);
            if p == 0 || first >= end {
                // An empty object: the ordinary read answers it whole.
                return Ok(Prepared::Fallback);
            }
            (first, end - 1)
        }
    };
    let Some(plan) = plan_range(first, last, plain_len, opened.chunk_size, part) else { return Ok(Prepared::Fallback) };
    let header = if plan.header_offset == 0 {
        first_header.to_vec()
    } else {
        match probe(backend, obj, version, plan.header_offset, Some(&etag)).await? {
            Some((_, body)) => body.to_vec(),
            None => return Ok(Prepared::Fallback),
        }
    };
    // A multipart object (backend ETag `…-N`, even for N = 1) reports its part count.
    let parts_count = etag.trim_matches('"').contains('-').then_some(segments);
    Ok(Prepared::Plan(RangedRead { plan, header, backend_etag: etag, plain_len, first, last, parts_count }))
}
