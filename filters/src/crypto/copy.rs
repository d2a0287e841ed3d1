//! CopyObject through the proxy. The backend cannot copy server-side: the object key is
//! bound into every segment header, so the copy streams the source through the proxy and
//! re-wraps each segment's data key for the destination (chunks pass unchanged, memory
//! stays at about one chunk). A source that fails authentication aborts the upload with
//! a short body, so the backend stores nothing.

use std::sync::Arc;

use pingora::http::RequestHeader;
use s3cp_format::{meta, KeyRing, ObjectId, Rewrapper};

use super::{crypto_error, metadata};
use crate::backend::Backend;
use crate::ctx::RequestCtx;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::etag::client_etag;
use crate::filter::Reply;
use crate::request::{IfNoneMatch, S3Request};

pub async fn copy_object(
    backend: &Backend,
    ring: &Arc<KeyRing>,
    req: &RequestHeader,
    s3: &S3Request,
    ctx: &mut RequestCtx,
) -> Result<Reply, S3Error> {
    let src = s3.copy_source.as_ref().expect("CopyObject has a source");
    let (dst_bucket, dst_key) = (s3.bucket.as_deref().unwrap_or(""), s3.key.as_deref().unwrap_or(""));
    let src_obj = ObjectId { bucket: &src.bucket, key: &src.key };
    let dst_obj = ObjectId { bucket: dst_bucket, key: dst_key };

    let query: Vec<(String, String)> = src.version_id.iter().map(|v| ("versionId".to_string(), v.clone())).collect();
    let get = backend.request("GET", Some(&src.bucket), Some(&src.key), &query, &[], None)?;
    let mut source = backend.open(Some(&src.bucket), get).await?;
    let head = source.read_header().await?;
    match head.status.as_u16() {
        200 => {}
        404 => return Err(s3err(S3ErrorCode::NoSuchKey, "The specified key does not exist.").with_resource(format!("/{}/{}", src.bucket, src.key))),
        403 => return Err(s3err(S3ErrorCode::AccessDenied, "the backend denied reading the copy source")),
        s => {
            log::warn!("backend answered {s} reading copy source /{}/{}", src.bucket, src.key);
            return Err(s3err(S3ErrorCode::ServiceUnavailable, "the copy source could not be read; please retry").with_retry_after(1));
        }
    }
    let hdr = |n: &str| head.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let sealed = hdr(meta::HEADER).ok_or_else(|| {
        ctx.crypto_failure = Some("not_encrypted");
        s3err(S3ErrorCode::InvalidObjectState, "The copy source was not written through the encryption proxy")
    })?;
    let opened = meta::open(ring, src_obj, &sealed).map_err(|e| crypto_error(ctx, &e))?;
    let length = hdr("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| S3Error::internal("copy", "source answer without Content-Length"))?;

    let payload = if s3.metadata_replace {
        // The content is unchanged, so a known plaintext MD5 stays true.
        let md5 = sealed_md5(&opened.payload);
        let mut fresh = metadata::from_request(req, None);
        if let Some(m) = md5 {
            fresh = with_md5(&fresh, &m);
        }
        fresh
    } else {
        opened.payload.clone()
    };
    let md5 = sealed_md5(&payload);
    let new_sealed = meta::seal(ring.current(), dst_obj, opened.chunk_size, &payload).map_err(|e| crypto_error(ctx, &e))?;
    let mut put_headers: Vec<(&str, &str)> = vec![("content-type", "application/octet-stream"), (meta::HEADER, &new_sealed)];
    if s3.if_none_match == Some(IfNoneMatch::Any) {
        put_headers.push(("if-none-match", "*"));
    }
    let put = backend.request("PUT", Some(dst_bucket), Some(dst_key), &[], &put_headers, Some(length))?;
    let mut dest = backend.open(Some(dst_bucket), put).await?;

    let mut rewrap = Rewrapper::new((**ring).clone(), src_obj, dst_obj, ring.current().clone());
    while let Some(piece) = source.read_body().await? {
        let out = rewrap.update(&piece).map_err(|e| crypto_error(ctx, &e))?;
        if !out.is_empty() {
            dest.write_body(out, false).await?;
        }
    }
    source.release().await;
    // Dropping `dest` before this point closes the connection mid-body: nothing is stored.
    let last = rewrap.finish().map_err(|e| crypto_error(ctx, &e))?;
    dest.write_body(last, true).await?;
    let answer = dest.read_header().await?;
    while dest.read_body().await?.is_some() {}
    dest.release().await;
    ctx.key_id = Some(ring.current_id());

    match answer.status.as_u16() {
        200..=299 => {}
        412 => return Err(crate::conditional::precondition_failed(&s3.resource())),
        s => {
            log::warn!("backend answered {s} to the copy's PUT of {}", s3.resource());
            return Err(s3err(S3ErrorCode::ServiceUnavailable, "the copy could not be stored; please retry").with_retry_after(1));
        }
    }
    let backend_etag = answer.headers.get("etag").and_then(|v| v.to_str().ok()).unwrap_or("");
    let etag = client_etag(backend_etag, md5.as_deref());
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    let last_modified = now.format(&fmt).map_err(|e| S3Error::internal("formatting a date", e))?;
    Ok(Reply::xml(
        200,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CopyObjectResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LastModified>{last_modified}</LastModified><ETag>{}</ETag></CopyObjectResult>",
            crate::xml::escape(&etag)
        ),
    ))
}

fn sealed_md5(payload: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(payload).ok()?.get("md5")?.as_str().map(str::to_string)
}

fn with_md5(payload: &[u8], md5: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("md5".into(), serde_json::Value::String(md5.to_string()));
    }
    serde_json::to_vec(&v).expect("json")
}
