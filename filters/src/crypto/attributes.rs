//! GetObjectAttributes, answered by the proxy with the values the client would see: the
//! plaintext size, the client's ETag, the storage class, the plaintext checksum the client
//! uploaded (only when it was sealed) and the plaintext size of every part. The backend's
//! own attributes describe ciphertext (sizes, part sizes, checksums) and are never asked.
//!
//! The object (or the version named by `versionId`) is read with a HEAD; its announced
//! length is authenticated as a HEAD's is (the sealed length, or the first and last segment
//! headers), and the part size `P` of a multipart object comes from its first segment
//! header: every part but the last holds `P` bytes (docs/object-format.md 6.2).

use pingora::http::{RequestHeader, ResponseHeader};
use s3cp_format::{meta, KeyRing, Layout, ObjectId};

use super::{crypto_error, metadata, ranged};
use crate::backend::Backend;
use crate::ctx::RequestCtx;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::etag::client_etag;
use crate::filter::Reply;
use crate::passthrough::{self, LegacyObjects};
use crate::request::S3Request;
use crate::xml::escape;

/// The attributes a client may ask for (`x-amz-object-attributes`).
#[derive(Default, Debug, PartialEq, Eq)]
struct Asked {
    etag: bool,
    checksum: bool,
    parts: bool,
    storage_class: bool,
    size: bool,
}

fn asked(req: &RequestHeader) -> Result<Asked, S3Error> {
    let list: Vec<&str> = req
        .headers
        .get_all("x-amz-object-attributes")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if list.is_empty() {
        return Err(s3err(S3ErrorCode::InvalidArgument, "The x-amz-object-attributes header specifying the attributes to be retrieved is either missing or empty"));
    }
    let mut a = Asked::default();
    for name in list {
        match name {
            "ETag" => a.etag = true,
            "Checksum" => a.checksum = true,
            "ObjectParts" => a.parts = true,
            "StorageClass" => a.storage_class = true,
            "ObjectSize" => a.size = true,
            other => return Err(s3err(S3ErrorCode::InvalidArgument, format!("Invalid attribute name specified: {other}"))),
        }
    }
    Ok(a)
}

/// Paging of `ObjectParts` (`x-amz-max-parts`, `x-amz-part-number-marker`).
struct PartPage {
    max: u32,
    marker: u32,
}

fn part_page(req: &RequestHeader) -> Result<PartPage, S3Error> {
    let num = |name: &str, default: u32| -> Result<u32, S3Error> {
        match req.headers.get(name).and_then(|v| v.to_str().ok()) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| s3err(S3ErrorCode::InvalidArgument, format!("{name} must be a non-negative integer"))),
        }
    };
    Ok(PartPage { max: num("x-amz-max-parts", 1000)?, marker: num("x-amz-part-number-marker", 0)? })
}

/// What the answer reports, in plaintext terms.
struct Attributes {
    etag: String,
    size: u64,
    storage_class: String,
    checksum: Option<(String, String)>,
    /// Plaintext size of every part (multipart objects only).
    parts: Option<Vec<u64>>,
}

/// The plaintext size of each part of a multipart upload (`multipart`: its backend ETag
/// says `-N`, one part included, as S3 reports it); `None` for an object stored by a PUT.
fn part_sizes(layout: &Layout, multipart: bool) -> Option<Vec<u64>> {
    if !multipart {
        return None;
    }
    let n = u64::from(layout.segments);
    if n == 1 {
        return Some(vec![layout.plain_len]);
    }
    let p = layout.part_len?;
    let last = layout.plain_len.checked_sub((n - 1) * p)?;
    Some((1..n).map(|_| p).chain(std::iter::once(last)).collect())
}

/// Answers GetObjectAttributes for `s3`'s object (and `versionId`).
pub async fn get_object_attributes(backend: &Backend, ring: &KeyRing, req: &RequestHeader, s3: &S3Request, legacy: Option<&LegacyObjects>, ctx: &mut RequestCtx) -> Result<Reply, S3Error> {
    let asked = asked(req)?;
    let page = part_page(req)?;
    let (bucket, key) = (s3.bucket.as_deref().unwrap_or(""), s3.key.as_deref().unwrap_or(""));
    let version = s3.query_value("versionId");
    let query: Vec<(String, String)> = version.iter().map(|v| ("versionId".to_string(), v.to_string())).collect();
    let head = backend.request("HEAD", Some(bucket), Some(key), &query, &[], None)?;
    let (resp, _) = backend.send(Some(bucket), head, None, 0).await?;
    let hdr = |n: &str| resp.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    if resp.status.as_u16() != 200 {
        return Err(head_error(&resp, s3, version.is_some()));
    }
    let backend_etag = hdr("etag").unwrap_or_default();
    let stored = hdr("content-length").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let storage_class = hdr("x-amz-storage-class").unwrap_or_else(|| "STANDARD".to_string());
    let attributes = match hdr(meta::HEADER) {
        None => {
            let last_modified = hdr("last-modified").and_then(|v| passthrough::http_date(&v));
            if !legacy.is_some_and(|l| l.admits(key, last_modified)) {
                ctx.crypto_failure = Some("not_encrypted");
                return Err(s3err(S3ErrorCode::InvalidObjectState, "This object has no valid encryption metadata (x-amz-meta-s3cp) and is not served through the encryption proxy").with_resource(s3.resource()));
            }
            // An object that predates encryption: its stored values are its own.
            Attributes { etag: backend_etag, size: stored, storage_class, checksum: None, parts: None }
        }
        Some(sealed) => {
            let obj = ObjectId { bucket, key };
            let opened = meta::open(ring, obj, &sealed).map_err(|e| crypto_error(ctx, &e))?;
            ctx.key_id = Some(opened.key_id);
            let payload = metadata::Sealed::parse(&opened.payload).map_err(|e| crypto_error(ctx, &e))?;
            let (layout, verified) = payload.announced_layout(opened.chunk_size, stored, &backend_etag).map_err(|e| crypto_error(ctx, &e))?;
            // As a HEAD: what is announced is authenticated first (for multipart objects
            // this also reads the part size from the first segment header).
            let layout = if verified && layout.segments <= 1 {
                layout
            } else {
                ranged::verify_layout(backend, ring, obj, version, &backend_etag, layout).await?.map_err(|e| crypto_error(ctx, &e))?.layout
            };
            Attributes {
                etag: client_etag(&backend_etag, payload.md5()),
                size: layout.plain_len,
                storage_class,
                checksum: payload.checksum(),
                parts: part_sizes(&layout, crate::etag::is_multipart_etag(&backend_etag)),
            }
        }
    };
    let mut reply = Reply::xml(200, answer_xml(&asked, &attributes, &page));
    for name in ["last-modified", "x-amz-version-id"] {
        if let Some(v) = hdr(name) {
            reply.headers.push((if name == "last-modified" { "last-modified" } else { "x-amz-version-id" }, v));
        }
    }
    Ok(reply)
}

/// The backend's HEAD failed: the same answer GetObject would get (a HEAD has no body, so
/// the code follows the status).
fn head_error(resp: &ResponseHeader, s3: &S3Request, by_version: bool) -> S3Error {
    let e = match resp.status.as_u16() {
        404 if by_version => s3err(S3ErrorCode::NoSuchVersion, "The specified version does not exist."),
        404 => s3err(S3ErrorCode::NoSuchKey, "The specified key does not exist."),
        403 => s3err(S3ErrorCode::AccessDenied, "Access Denied"),
        405 => s3err(S3ErrorCode::MethodNotAllowed, "The specified method is not allowed against this resource (a delete marker)."),
        400 => s3err(S3ErrorCode::InvalidArgument, "Invalid version id specified"),
        s => {
            log::warn!("backend answered {s} to the HEAD of GetObjectAttributes {}", s3.resource());
            s3err(S3ErrorCode::ServiceUnavailable, "the object's attributes could not be read; please retry").with_retry_after(1)
        }
    };
    e.with_resource(s3.resource())
}

fn answer_xml(asked: &Asked, a: &Attributes, page: &PartPage) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<GetObjectAttributesResponse xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    if asked.etag {
        // S3 gives this ETag without quotes.
        x.push_str(&format!("<ETag>{}</ETag>", escape(a.etag.trim_matches('"'))));
    }
    if asked.checksum {
        if let Some((name, value)) = &a.checksum {
            let alg = name.trim_start_matches("x-amz-checksum-").to_ascii_uppercase();
            x.push_str(&format!("<Checksum><Checksum{alg}>{}</Checksum{alg}><ChecksumType>FULL_OBJECT</ChecksumType></Checksum>", escape(value)));
        }
    }
    if asked.parts {
        if let Some(parts) = &a.parts {
            let total = parts.len() as u32;
            let shown: Vec<(u32, u64)> = (1..=total).zip(parts.iter().copied()).filter(|(n, _)| *n > page.marker).take(page.max as usize).collect();
            let next = shown.last().map_or(page.marker, |(n, _)| *n);
            let truncated = next < total;
            x.push_str(&format!(
                "<ObjectParts><PartsCount>{total}</PartsCount><PartNumberMarker>{}</PartNumberMarker><NextPartNumberMarker>{next}</NextPartNumberMarker><MaxParts>{}</MaxParts><IsTruncated>{truncated}</IsTruncated>",
                page.marker, page.max
            ));
            for (n, size) in shown {
                x.push_str(&format!("<Part><PartNumber>{n}</PartNumber><Size>{size}</Size></Part>"));
            }
            x.push_str("</ObjectParts>");
        }
    }
    if asked.storage_class {
        x.push_str(&format!("<StorageClass>{}</StorageClass>", escape(&a.storage_class)));
    }
    if asked.size {
        x.push_str(&format!("<ObjectSize>{}</ObjectSize>", a.size));
    }
    x.push_str("</GetObjectAttributesResponse>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_plaintext_sizes() {
        let layout = Layout { plain_len: 12 << 20, chunk_size: 65536, segments: 3, part_len: Some(5 << 20) };
        assert_eq!(part_sizes(&layout, true), Some(vec![5 << 20, 5 << 20, 2 << 20]));
        let single = Layout { plain_len: 100, chunk_size: 65536, segments: 1, part_len: Some(100) };
        assert_eq!(part_sizes(&single, false), None);
        // A one-part upload is a multipart object of one part (s3-tests
        // test_get_single_multipart_object_attributes).
        assert_eq!(part_sizes(&single, true), Some(vec![100]));
        assert!(crate::etag::is_multipart_etag("\"0123456789abcdef0123456789abcdef-1\""));
        assert!(!crate::etag::is_multipart_etag("\"0123456789abcdef0123456789abcdef\""));
    }

    #[test]
    fn answer_pages_parts_and_hides_nothing_it_was_not_asked() {
        let a = Attributes { etag: "\"abc-3\"".into(), size: 12, storage_class: "STANDARD".into(), checksum: Some(("x-amz-checksum-crc32".into(), "AAAAAA==".into())), parts: Some(vec![5, 5, 2]) };
        let all = Asked { etag: true, checksum: true, parts: true, storage_class: true, size: true };
        let x = answer_xml(&all, &a, &PartPage { max: 2, marker: 0 });
        assert!(x.contains("<ETag>abc-3</ETag>"), "{x}");
        assert!(x.contains("<ChecksumCRC32>AAAAAA==</ChecksumCRC32>"), "{x}");
        assert!(x.contains("<PartsCount>3</PartsCount>") && x.contains("<IsTruncated>true</IsTruncated>") && x.contains("<NextPartNumberMarker>2</NextPartNumberMarker>"), "{x}");
        assert!(!x.contains("<PartNumber>3</PartNumber>"), "{x}");
        let x = answer_xml(&all, &a, &PartPage { max: 2, marker: 2 });
        assert!(x.contains("<Part><PartNumber>3</PartNumber><Size>2</Size></Part>") && x.contains("<IsTruncated>false</IsTruncated>"), "{x}");
        let only_size = Asked { size: true, ..Default::default() };
        let x = answer_xml(&only_size, &a, &PartPage { max: 1000, marker: 0 });
        assert!(x.contains("<ObjectSize>12</ObjectSize>") && !x.contains("ETag") && !x.contains("Parts"), "{x}");
    }
}
