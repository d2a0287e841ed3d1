//! `key verify`: does a key file (or a share) match the objects of a bucket? By key id and
//! key-check value only: through the proxy's admin API (`GET /api/v1/key/verify`) or offline on
//! a raw object file. The key never leaves this workstation: only its id and KCV are sent.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use s3cp_format::{SegmentHeader, HEADER_LEN};
use serde::Deserialize;

use crate::{Fail, EXIT_REJECTED, EXIT_UNREACHABLE};

/// Equality of two key-check values without an early exit.
fn ct_eq8(a: &[u8; 8], b: &[u8; 8]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What is being checked: a key id and its key-check value.
pub struct Candidate {
    pub key_id: u32,
    pub kcv: [u8; 8],
    pub source: String,
}

#[derive(Deserialize)]
struct ProxyObject {
    key: String,
    key_id: Option<u32>,
    kcv: Option<String>,
    matches: bool,
    error: Option<String>,
}

#[derive(Deserialize)]
struct ProxyReport {
    examined: usize,
    key_ids: Vec<u32>,
    verdict: String,
    objects: Vec<ProxyObject>,
}

fn finish(c: &Candidate, bucket: &str, verdict: &str, key_ids: &[u32]) -> Result<(), Fail> {
    match verdict {
        "match" => {
            println!(
                "MATCH: {} (key id {}, kcv {}) is the key of the examined objects of bucket {bucket} that use key id {}",
                c.source, c.key_id, hex::encode(c.kcv), c.key_id
            );
            Ok(())
        }
        "mismatch" => Err(Fail::new(
            EXIT_REJECTED,
            format!(
                "MISMATCH: objects of bucket {bucket} use key id {} with another key-check value: {} is NOT their key; do not send it",
                c.key_id, c.source
            ),
        )),
        "key_id_not_used" => Err(Fail::new(
            EXIT_REJECTED,
            format!(
                "NO MATCH: no examined object of bucket {bucket} uses key id {} (they use {key_ids:?})",
                c.key_id
            ),
        )),
        _ => Err(Fail::new(
            EXIT_REJECTED,
            format!("UNKNOWN: bucket {bucket} has no object to compare with"),
        )),
    }
}

/// Through the proxy's admin API (bearer token).
pub fn via_proxy(
    c: &Candidate,
    admin_url: &str,
    token: &str,
    bucket: &str,
    prefix: &str,
    limit: usize,
    timeout: Duration,
) -> Result<(), Fail> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build(),
    );
    let url = format!("{}/api/v1/key/verify", admin_url.trim_end_matches('/'));
    let limit = limit.to_string();
    let key_id = c.key_id.to_string();
    let kcv = hex::encode(c.kcv);
    let mut resp = agent
        .get(&url)
        .header("authorization", &format!("Bearer {token}"))
        .query("bucket", bucket)
        .query("prefix", prefix)
        .query("limit", &limit)
        .query("key_id", &key_id)
        .query("kcv", &kcv)
        .call()
        .map_err(|e| Fail::new(EXIT_UNREACHABLE, format!("{url}: {e}")))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_vec()
        .map_err(|e| Fail::new(EXIT_UNREACHABLE, format!("{url}: {e}")))?;
    if status != 200 {
        return Err(Fail::error(format!(
            "{url}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        )));
    }
    let r: ProxyReport = serde_json::from_slice(&body)
        .map_err(|e| Fail::error(format!("{url}: malformed answer: {e}")))?;
    println!(
        "examined {} objects of bucket {bucket}; key ids in use: {:?}",
        r.examined, r.key_ids
    );
    for o in &r.objects {
        match (&o.key_id, &o.error) {
            (Some(id), _) => println!(
                "  {}: key id {id}, kcv {}{}",
                o.key,
                o.kcv.as_deref().unwrap_or("-"),
                if o.matches { " (matches)" } else { "" }
            ),
            (None, Some(e)) => println!("  {}: {e}", o.key),
            (None, None) => println!("  {}: not encrypted", o.key),
        }
    }
    finish(c, bucket, &r.verdict, &r.key_ids)
}

/// Offline, on a raw object file as stored in the backend (its first segment header).
pub fn offline(c: &Candidate, object: &Path, bucket: &str) -> Result<(), Fail> {
    let mut f = std::fs::File::open(object)
        .map_err(|e| Fail::usage(format!("cannot read {}: {e}", object.display())))?;
    let mut head = Vec::with_capacity(HEADER_LEN);
    f.by_ref()
        .take(HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| Fail::error(format!("reading {}: {e}", object.display())))?;
    let h = SegmentHeader::parse(&head).map_err(|e| {
        Fail::new(
            EXIT_REJECTED,
            format!("{}: not an encrypted object ({e})", object.display()),
        )
    })?;
    println!(
        "{}: key id {}, kcv {}",
        object.display(),
        h.key_id,
        hex::encode(h.kcv)
    );
    let verdict = if h.key_id != c.key_id {
        "key_id_not_used"
    } else if ct_eq8(&h.kcv, &c.kcv) {
        "match"
    } else {
        "mismatch"
    };
    finish(c, bucket, verdict, &[h.key_id])
}
