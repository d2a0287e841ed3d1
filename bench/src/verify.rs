//! `--workload verify`: the end check of a soak run with `--ack-log`. Replays the log (the
//! last acknowledged event of each key decides what must be there) and reads every key
//! through one endpoint: an object whose PUT was acknowledged must come back with exactly
//! its size and SHA-256 (else it counts as lost, or as wrong bytes), a key whose delete was
//! acknowledged must answer 404. Keys whose last write failed are in an unknown state and
//! are only counted. Answers 500/502/503/504 and transport errors are retried.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use serde::Serialize;
use sha2::Digest as _;

use crate::body::PoolBody;
use crate::conn::Connector;
use crate::s3::Target;
use crate::err_chain;

/// What the log says a key must hold at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    Object { size: u64, sha: String },
    Deleted,
    Unknown,
}

/// The final expectation per key, from ack-log lines in the order written.
pub fn replay(text: &str) -> Result<BTreeMap<String, Expect>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("ack log line {}: {e}", n + 1))?;
        let key = v["k"].as_str().ok_or_else(|| format!("ack log line {}: no key", n + 1))?.to_string();
        let e = if v.get("u").is_some() {
            Expect::Unknown
        } else if v.get("d").is_some() {
            Expect::Deleted
        } else {
            Expect::Object {
                size: v["s"].as_u64().ok_or_else(|| format!("ack log line {}: no size", n + 1))?,
                sha: v["h"].as_str().ok_or_else(|| format!("ack log line {}: no sha", n + 1))?.to_string(),
            }
        };
        out.insert(key, e);
    }
    Ok(out)
}

#[derive(Serialize, Default)]
pub struct VerifyReport {
    pub endpoint: String,
    /// Objects whose last acknowledged event is a PUT.
    pub objects: u64,
    pub objects_ok: u64,
    /// Acknowledged objects that were missing (404) at the end.
    pub lost: u64,
    /// Acknowledged objects that came back with other bytes.
    pub wrong_bytes: u64,
    pub deleted: u64,
    pub deleted_ok: u64,
    /// Keys with an acknowledged delete that still answered 200.
    pub resurrected: u64,
    /// Keys whose last write failed (not checked).
    pub unknown: u64,
    /// Reads that never got an answer to check (after all attempts).
    pub unreadable: u64,
    pub retried: u64,
    pub mib_read: f64,
    pub problems: Vec<String>,
    pub passed: bool,
}

pub async fn run(target: Target, client: Client<Connector, PoolBody>, log: &str, concurrency: usize, timeout: Duration) -> Result<VerifyReport, String> {
    let text = std::fs::read_to_string(log).map_err(|e| format!("--ack-log {log}: {e}"))?;
    let expect = replay(&text)?;
    let work: Arc<Mutex<Vec<(String, Expect)>>> = Arc::new(Mutex::new(expect.into_iter().collect()));
    let report = Arc::new(Mutex::new(VerifyReport { endpoint: target.endpoint.clone(), ..Default::default() }));
    let bytes = Arc::new(AtomicU64::new(0));
    let (target, client) = (Arc::new(target), Arc::new(client));
    let mut handles = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (work, report, bytes, target, client) = (work.clone(), report.clone(), bytes.clone(), target.clone(), client.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let Some((key, want)) = work.lock().unwrap().pop() else { return };
                let note = |r: &mut VerifyReport, msg: String| {
                    if r.problems.len() < 20 {
                        r.problems.push(msg);
                    }
                };
                if want == Expect::Unknown {
                    report.lock().unwrap().unknown += 1;
                    continue;
                }
                let mut got = None;
                for attempt in 0..8u32 {
                    match read(&target, &client, &key, timeout).await {
                        Ok((status, _, _)) if matches!(status.as_u16(), 500 | 502 | 503 | 504) => {}
                        Ok(a) => {
                            got = Some(a);
                            break;
                        }
                        Err(_) => {}
                    }
                    report.lock().unwrap().retried += 1;
                    tokio::time::sleep(Duration::from_millis((200u64 << attempt.min(4)).min(2000))).await;
                }
                let mut r = report.lock().unwrap();
                let Some((status, len, sha)) = got else {
                    r.unreadable += 1;
                    note(&mut r, format!("{key}: no answer"));
                    continue;
                };
                bytes.fetch_add(len, Ordering::Relaxed);
                match want {
                    Expect::Object { size, sha: want_sha } => {
                        r.objects += 1;
                        if status == StatusCode::NOT_FOUND {
                            r.lost += 1;
                            note(&mut r, format!("LOST {key}: 404"));
                        } else if status != StatusCode::OK {
                            r.unreadable += 1;
                            note(&mut r, format!("{key}: {status}"));
                        } else if len != size || sha != want_sha {
                            r.wrong_bytes += 1;
                            note(&mut r, format!("WRONG BYTES {key}: {len} bytes {sha}, acknowledged {size} bytes {want_sha}"));
                        } else {
                            r.objects_ok += 1;
                        }
                    }
                    Expect::Deleted => {
                        r.deleted += 1;
                        if status == StatusCode::NOT_FOUND {
                            r.deleted_ok += 1;
                        } else if status == StatusCode::OK {
                            r.resurrected += 1;
                            note(&mut r, format!("{key}: deleted (acknowledged) but still there"));
                        } else {
                            r.unreadable += 1;
                            note(&mut r, format!("{key}: {status}"));
                        }
                    }
                    Expect::Unknown => unreachable!("skipped above"),
                }
            }
        }));
    }
    for h in handles {
        h.await.map_err(|e| format!("a verifier panicked: {e}"))?;
    }
    let mut r = std::mem::take(&mut *report.lock().unwrap());
    r.mib_read = bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64;
    r.passed = r.lost == 0 && r.wrong_bytes == 0 && r.resurrected == 0 && r.unreadable == 0;
    Ok(r)
}

/// GET of one key: (status, length, SHA-256 hex of the body).
async fn read(target: &Target, client: &Client<Connector, PoolBody>, key: &str, timeout: Duration) -> Result<(StatusCode, u64, String), String> {
    let req = target.request(Method::GET, Some(key), None, PoolBody::empty(), None, None)?;
    let fut = async {
        let resp = client.request(req).await.map_err(|e| format!("GET {key}: {}", err_chain(&e)))?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut sha = sha2::Sha256::new();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("GET {key}: {}", err_chain(&e)))?;
            if let Some(d) = frame.data_ref() {
                len += d.len() as u64;
                sha.update(d);
            }
        }
        Ok((status, len, hex::encode(sha.finalize())))
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| format!("GET {key}: timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_event_decides() {
        let log = "{\"k\":\"a\",\"s\":3,\"h\":\"aa\"}\n{\"k\":\"b\",\"s\":1,\"h\":\"bb\"}\n{\"k\":\"a\",\"d\":1}\n\
                   {\"k\":\"c\",\"s\":2,\"h\":\"cc\"}\n{\"k\":\"c\",\"u\":1}\n{\"k\":\"a\",\"s\":4,\"h\":\"dd\"}\n";
        let m = replay(log).unwrap();
        assert_eq!(m["a"], Expect::Object { size: 4, sha: "dd".into() });
        assert_eq!(m["b"], Expect::Object { size: 1, sha: "bb".into() });
        assert_eq!(m["c"], Expect::Unknown);
        assert!(replay("not json").is_err());
    }
}
