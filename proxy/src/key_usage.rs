//! `GET /api/v1/key-usage`: which master key every stored version under a prefix is sealed
//! with. In a versioned bucket a re-wrap (`/api/v1/rewrap`) writes a new version under the
//! current key and leaves the older versions as they were (S3 versions are immutable), so
//! before an old key is retired the operator needs to know which versions still use it:
//! they stay readable only while that key is loaded.

use std::collections::BTreeMap;

use filters::backend::Backend;
use filters::rotation::{list_versions, version_key, KeyUse, VersionMarker};
use s3cp_format::KeyRing;
use serde_json::{json, Value};

/// Versions examined by one call at most (each is a HEAD); the answer names where to go on.
pub const MAX_VERSIONS: usize = 10_000;

/// Scans the versions under `prefix` (from `start`), counting them per key id and listing
/// those sealed under `wanted` (or, without it, under any key but the current one).
pub async fn scan(backend: &Backend, ring: &KeyRing, bucket: &str, prefix: &str, wanted: Option<u32>, start: Option<VersionMarker>) -> Result<Value, String> {
    let current = ring.current_id();
    let mut per_key: BTreeMap<String, u64> = BTreeMap::new();
    let (mut not_encrypted, mut unreadable, mut scanned) = (0u64, 0u64, 0usize);
    let mut listed: Vec<Value> = Vec::new();
    let mut marker = start;
    loop {
        let (page, next) = list_versions(backend, bucket, prefix, marker.as_ref()).await.map_err(|e| e.to_string())?;
        for v in page {
            let usage = version_key(backend, ring, bucket, &v.key, &v.version_id).await;
            scanned += 1;
            let (id, loaded) = match usage {
                KeyUse::Key(id) => (Some(id), true),
                KeyUse::NotLoaded(id) => (Some(id), false),
                KeyUse::NotEncrypted => {
                    not_encrypted += 1;
                    (None, false)
                }
                KeyUse::Unreadable => {
                    unreadable += 1;
                    (None, false)
                }
            };
            if let Some(id) = id {
                *per_key.entry(id.to_string()).or_default() += 1;
                let report = match wanted {
                    Some(w) => id == w,
                    None => id != current,
                };
                if report && listed.len() < MAX_VERSIONS {
                    listed.push(json!({ "key": v.key, "version_id": v.version_id, "is_latest": v.is_latest, "key_id": id, "key_loaded": loaded }));
                }
            }
        }
        marker = next;
        if marker.is_none() || scanned >= MAX_VERSIONS {
            break;
        }
    }
    Ok(json!({
        "bucket": bucket,
        "prefix": prefix,
        "current_key_id": current,
        "versions_scanned": scanned,
        "versions_per_key_id": per_key,
        "not_encrypted": not_encrypted,
        "unreadable": unreadable,
        "versions": listed,
        "truncated": marker.is_some(),
        "next_key_marker": marker.as_ref().map(|m| m.key.clone()),
        "next_version_id_marker": marker.as_ref().map(|m| m.version_id.clone()),
    }))
}
