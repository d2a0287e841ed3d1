//! `GET /api/v1/key/verify`: which master key do a bucket's objects use, and does a given
//! key-check value match it? Lets an administrator check a key file (or a share) before
//! sending it, without the key leaving the workstation: the request carries only the key id
//! and the key-check value, which every object's segment header already stores in clear.
//!
//! Reads the first segment header (108 bytes, one ranged GET) of the first `limit` objects
//! under `prefix`. Nothing is decrypted and no key material is involved.

use filters::backend::Backend;
use filters::rotation::list_keys;
use s3cp_format::{FormatError, SegmentHeader, HEADER_LEN};
use serde::Serialize;
use subtle::ConstantTimeEq;

/// Most objects one request examines.
pub const MAX_LIMIT: usize = 100;

/// What one object's header says.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ObjectKeyInfo {
    pub key: String,
    /// `None` when the object is not in the encrypted format (written before the proxy).
    pub key_id: Option<u32>,
    pub kcv: Option<String>,
    /// Whether the object's key id and key-check value are the ones asked about.
    pub matches: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub bucket: String,
    pub prefix: String,
    pub key_id: u32,
    pub examined: usize,
    /// Key ids seen, ascending.
    pub key_ids: Vec<u32>,
    /// `match`: some objects use this key id and all of those have this key-check value.
    /// `mismatch`: an object uses this key id with another key-check value (a different key).
    /// `key_id_not_used`: no examined object uses this key id. `no_objects`: nothing to examine.
    pub verdict: &'static str,
    pub objects: Vec<ObjectKeyInfo>,
}

/// Classifies one header against the key id / kcv asked about.
pub fn classify(key: &str, header: Result<SegmentHeader, FormatError>, key_id: u32, kcv: &[u8; 8]) -> ObjectKeyInfo {
    match header {
        Ok(h) => ObjectKeyInfo {
            key: key.to_owned(),
            key_id: Some(h.key_id),
            kcv: Some(hex::encode(h.kcv)),
            matches: h.key_id == key_id && bool::from(h.kcv.ct_eq(kcv)),
            error: None,
        },
        Err(e) => ObjectKeyInfo { key: key.to_owned(), key_id: None, kcv: None, matches: false, error: Some(e.to_string()) },
    }
}

/// The verdict over examined objects.
pub fn verdict(objects: &[ObjectKeyInfo], key_id: u32) -> &'static str {
    let same_id: Vec<&ObjectKeyInfo> = objects.iter().filter(|o| o.key_id == Some(key_id)).collect();
    if objects.is_empty() {
        "no_objects"
    } else if same_id.is_empty() {
        "key_id_not_used"
    } else if same_id.iter().all(|o| o.matches) {
        "match"
    } else {
        "mismatch"
    }
}

/// Reads the headers of up to `limit` objects under `prefix` in `bucket`.
pub async fn survey(backend: &Backend, bucket: &str, prefix: &str, limit: usize, key_id: u32, kcv: &[u8; 8]) -> Result<Report, String> {
    let (keys, _) = list_keys(backend, bucket, prefix, None).await.map_err(|e| format!("listing {bucket}: {}", e))?;
    let mut objects = Vec::new();
    for key in keys.into_iter().take(limit) {
        let range = format!("bytes=0-{}", HEADER_LEN - 1);
        let req = backend
            .request("GET", Some(bucket), Some(&key), &[], &[("range", &range)], None)
            .map_err(|e| e.to_string())?;
        let header = match backend.send(Some(bucket), req, None, HEADER_LEN * 2).await {
            Ok((resp, body)) if matches!(resp.status.as_u16(), 200 | 206) => SegmentHeader::parse(&body),
            Ok((resp, _)) => {
                objects.push(ObjectKeyInfo {
                    key,
                    key_id: None,
                    kcv: None,
                    matches: false,
                    error: Some(format!("backend answered {}", resp.status.as_u16())),
                });
                continue;
            }
            Err(e) => return Err(format!("reading {bucket}/{key}: {}", e)),
        };
        objects.push(classify(&key, header, key_id, kcv));
    }
    let mut key_ids: Vec<u32> = objects.iter().filter_map(|o| o.key_id).collect();
    key_ids.sort_unstable();
    key_ids.dedup();
    Ok(Report {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
        key_id,
        examined: objects.len(),
        key_ids,
        verdict: verdict(&objects, key_id),
        objects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(key_id: Option<u32>, matches: bool) -> ObjectKeyInfo {
        ObjectKeyInfo { key: "k".into(), key_id, kcv: None, matches, error: None }
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(&[], 1), "no_objects");
        assert_eq!(verdict(&[info(Some(2), false), info(None, false)], 1), "key_id_not_used");
        assert_eq!(verdict(&[info(Some(1), true), info(Some(2), false)], 1), "match");
        assert_eq!(verdict(&[info(Some(1), true), info(Some(1), false)], 1), "mismatch");
    }
}
