//! Re-wrapping stored objects to the current master key after a rotation. Only segment
//! headers and sealed metadata change (chunks are copied as they are), so data keys stay
//! and no plaintext is produced. Objects already under the current key are skipped, so a
//! job can be re-run after an interruption.

use std::sync::Arc;

use quick_xml::events::Event;
use quick_xml::Reader;
use s3cp_format::{KeyRing, ObjectId};

use crate::backend::Backend;
use crate::crypto::copy::{reencrypt_copy, CopyError, MetadataChange, SourceConditions};
use crate::error::{s3err, S3Error, S3ErrorCode};

/// One page of keys under `prefix`, and the token of the next page.
pub async fn list_keys(backend: &Backend, bucket: &str, prefix: &str, token: Option<&str>) -> Result<(Vec<String>, Option<String>), S3Error> {
    let mut q = vec![("list-type".to_string(), "2".to_string()), ("prefix".to_string(), prefix.to_string())];
    if let Some(t) = token {
        q.push(("continuation-token".to_string(), t.to_string()));
    }
    let req = backend.request("GET", Some(bucket), None, &q, &[], None)?;
    let (resp, body) = backend.send(Some(bucket), req, None, 16 << 20).await?;
    if resp.status.as_u16() != 200 {
        return Err(s3err(S3ErrorCode::ServiceUnavailable, format!("listing {bucket} failed with status {}", resp.status.as_u16())));
    }
    let mut r = Reader::from_reader(&body[..]);
    let mut buf = Vec::new();
    let (mut keys, mut next, mut truncated, mut current) = (Vec::new(), None, false, Vec::<u8>::new());
    loop {
        match r.read_event_into(&mut buf).map_err(|e| S3Error::internal("parsing a listing", e))? {
            Event::Start(s) => current = s.name().as_ref().to_vec(),
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| S3Error::internal("parsing a listing", e))?.into_owned();
                match current.as_slice() {
                    b"Key" => keys.push(text),
                    b"NextContinuationToken" => next = Some(text),
                    b"IsTruncated" => truncated = text.trim() == "true",
                    _ => {}
                }
            }
            Event::End(_) => current.clear(),
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok((keys, if truncated { next } else { None }))
}

/// What happened to one object.
pub enum Rewrapped {
    Done,
    AlreadyCurrent,
}

/// Re-wraps one object in place to the ring's current key.
pub async fn rewrap_object(backend: &Backend, ring: &Arc<KeyRing>, bucket: &str, key: &str) -> Result<Rewrapped, CopyError> {
    let obj = ObjectId { bucket, key };
    match reencrypt_copy(backend, ring, obj, None, obj, MetadataChange::Keep, &[], true, &SourceConditions::default()).await? {
        Some(_) => Ok(Rewrapped::Done),
        None => Ok(Rewrapped::AlreadyCurrent),
    }
}
