//! Re-wrapping stored objects to the current master key after a rotation. Only segment
//! headers and sealed metadata change (chunks are copied as they are), so data keys stay
//! and no plaintext is produced. Objects already under the current key are skipped, so a
//! job can be re-run after an interruption.

use std::sync::Arc;

use quick_xml::events::Event;
use quick_xml::Reader;
use s3cp_format::{ChunkCipher, KeyRing, ObjectId};

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

/// Re-wraps one object in place to the ring's current key. A multipart object is rewritten
/// as one segment sealed with `cipher`; other objects keep their chunks and chunk cipher.
pub async fn rewrap_object(backend: &Backend, ring: &Arc<KeyRing>, cipher: ChunkCipher, bucket: &str, key: &str) -> Result<Rewrapped, CopyError> {
    let obj = ObjectId { bucket, key };
    match reencrypt_copy(backend, ring, cipher, obj, None, obj, MetadataChange::Keep, &[], true, &SourceConditions::default()).await? {
        Some(_) => Ok(Rewrapped::Done),
        None => Ok(Rewrapped::AlreadyCurrent),
    }
}

/// One stored version of an object, as ListObjectVersions shows it (delete markers are
/// left out: they have no content and no key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedVersion {
    pub key: String,
    pub version_id: String,
    pub is_latest: bool,
}

/// The markers of the next ListObjectVersions page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionMarker {
    pub key: String,
    pub version_id: String,
}

/// One page of object versions under `prefix` (after `marker`), and the next page's marker.
pub async fn list_versions(backend: &Backend, bucket: &str, prefix: &str, marker: Option<&VersionMarker>) -> Result<(Vec<ListedVersion>, Option<VersionMarker>), S3Error> {
    let mut q = vec![("versions".to_string(), String::new()), ("prefix".to_string(), prefix.to_string())];
    if let Some(m) = marker {
        q.push(("key-marker".to_string(), m.key.clone()));
        q.push(("version-id-marker".to_string(), m.version_id.clone()));
    }
    let req = backend.request("GET", Some(bucket), None, &q, &[], None)?;
    let (resp, body) = backend.send(Some(bucket), req, None, 16 << 20).await?;
    if resp.status.as_u16() != 200 {
        return Err(s3err(S3ErrorCode::ServiceUnavailable, format!("listing the versions of {bucket} failed with status {}", resp.status.as_u16())));
    }
    parse_versions(&body)
}

fn parse_versions(body: &[u8]) -> Result<(Vec<ListedVersion>, Option<VersionMarker>), S3Error> {
    let bad = |e: &dyn std::fmt::Display| S3Error::internal("parsing a version listing", e);
    let mut r = Reader::from_reader(body);
    let mut buf = Vec::new();
    let (mut out, mut truncated, mut next) = (Vec::new(), false, VersionMarker::default());
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut entry: Option<ListedVersion> = None;
    loop {
        match r.read_event_into(&mut buf).map_err(|e| bad(&e))? {
            Event::Start(s) => {
                let name = s.local_name().as_ref().to_vec();
                if name == b"Version" && path.len() == 1 {
                    entry = Some(ListedVersion { key: String::new(), version_id: String::new(), is_latest: false });
                }
                path.push(name);
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| bad(&e))?.into_owned();
                match (path.len(), path.last().map(Vec::as_slice), entry.as_mut()) {
                    (3, Some(b"Key"), Some(e)) => e.key = text,
                    (3, Some(b"VersionId"), Some(e)) => e.version_id = text,
                    (3, Some(b"IsLatest"), Some(e)) => e.is_latest = text.trim() == "true",
                    (2, Some(b"IsTruncated"), _) => truncated = text.trim() == "true",
                    (2, Some(b"NextKeyMarker"), _) => next.key = text,
                    (2, Some(b"NextVersionIdMarker"), _) => next.version_id = text,
                    _ => {}
                }
            }
            Event::End(_) => {
                if path.pop().as_deref() == Some(&b"Version"[..]) && path.len() == 1 {
                    out.extend(entry.take());
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok((out, truncated.then_some(next)))
}

/// Which master key a stored version is sealed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyUse {
    /// Sealed under this key id (authenticated with the loaded key).
    Key(u32),
    /// Sealed under a key id that is not loaded (its metadata cannot be authenticated).
    NotLoaded(u32),
    /// No sealed metadata (stored around the proxy, or before encryption).
    NotEncrypted,
    /// Sealed metadata that does not authenticate, or the version could not be read.
    Unreadable,
}

/// The key id of one version (a HEAD of that version; its sealed metadata is opened).
pub async fn version_key(backend: &Backend, ring: &KeyRing, bucket: &str, key: &str, version_id: &str) -> KeyUse {
    let q = [("versionId".to_string(), version_id.to_string())];
    let Ok(head) = backend.request("HEAD", Some(bucket), Some(key), &q, &[], None) else { return KeyUse::Unreadable };
    match backend.send(Some(bucket), head, None, 0).await {
        Ok((resp, _)) if resp.status.as_u16() == 200 => match resp.headers.get(s3cp_format::meta::HEADER).and_then(|v| v.to_str().ok()) {
            None => KeyUse::NotEncrypted,
            Some(sealed) => match s3cp_format::meta::open(ring, ObjectId { bucket, key }, sealed) {
                Ok(opened) => KeyUse::Key(opened.key_id),
                Err(s3cp_format::FormatError::UnknownKeyId(id)) => KeyUse::NotLoaded(id),
                Err(_) => KeyUse::Unreadable,
            },
        },
        _ => KeyUse::Unreadable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_listings_are_parsed_without_delete_markers() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?><ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix></Prefix><KeyMarker></KeyMarker><IsTruncated>true</IsTruncated><NextKeyMarker>a&amp;b</NextKeyMarker><NextVersionIdMarker>v2</NextVersionIdMarker><DeleteMarker><Key>a&amp;b</Key><VersionId>v3</VersionId><IsLatest>true</IsLatest></DeleteMarker><Version><Key>a&amp;b</Key><VersionId>v2</VersionId><IsLatest>false</IsLatest><ETag>"x"</ETag><Size>200</Size><Owner><ID>o</ID></Owner></Version></ListVersionsResult>"#;
        let (versions, next) = parse_versions(xml).unwrap();
        assert_eq!(versions, vec![ListedVersion { key: "a&b".into(), version_id: "v2".into(), is_latest: false }]);
        assert_eq!(next, Some(VersionMarker { key: "a&b".into(), version_id: "v2".into() }));
        let last = br#"<ListVersionsResult><IsTruncated>false</IsTruncated><Version><Key>k</Key><VersionId>1</VersionId><IsLatest>true</IsLatest></Version></ListVersionsResult>"#;
        assert_eq!(parse_versions(last).unwrap().1, None);
    }
}
