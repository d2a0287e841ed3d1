//! The soak test: many clients, each in its own key space, run a random mix of PUT, GET
//! (whole and ranged), LIST and DELETE for a fixed time and check every answer against what
//! they stored themselves; the RSS of the watched processes is sampled meanwhile.
//!
//! A client remembers, per key, the size, the SHA-256 and the seed of the body it last PUT:
//! - GET must return exactly that many bytes with that SHA-256 (and an overwrite must be seen
//!   at once: the next GET returns the new body);
//! - a Range GET must return exactly the bytes of that range (compared byte by byte);
//! - LIST of the client's prefix must show exactly its keys with their plaintext sizes;
//! - DELETE must answer 204 and a GET afterwards 404 NoSuchKey.
//!
//! At the end every client deletes what it still holds and its LIST must come back empty.
//! The run fails (exit code 1) on any error, any mismatch, or when the RSS is not flat.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use serde::Serialize;
use sha2::Digest as _;

use crate::body::{Mix, Pool, PoolBody};
use crate::conn::Connector;
use crate::procstat::{self, Watched};
use crate::s3::Target;
use crate::{err_chain, percentile, snippet};

pub struct SoakArgs {
    pub concurrency: usize,
    pub duration: Duration,
    pub max_size: u64,
    pub keys_per_client: usize,
    pub prefix: String,
    pub timeout: Duration,
    pub watch: Vec<Watched>,
    pub rss_interval: Duration,
    /// Fail when a watched process's RSS passes this (bytes).
    pub rss_limit: u64,
    /// Fail when the largest RSS of the last quarter of the run is above the largest of the
    /// first quarter by more than this (bytes).
    pub rss_growth: u64,
    pub progress: Duration,
    /// PBS-like traffic (see `pbs_loop`) instead of the generic mix.
    pub pbs: bool,
    /// Attempts per operation; answers 500/502/503/504 and transport errors are retried with
    /// a growing pause (0.2 s doubling, at most 2 s), as clients do behind a load balancer.
    pub attempts: u32,
    /// Every acknowledged write and delete, one JSON line each (`--workload verify` replays it).
    pub ack_log: Option<String>,
    /// Leave the objects in place at the end (for `--workload verify`), instead of deleting them.
    pub keep_objects: bool,
}

/// (seconds since the start, RSS in bytes of each watched process)
type Samples = Vec<(f64, Vec<u64>)>;

const OPS: [&str; 9] = ["put", "get", "range", "list", "delete", "get-404", "put-if-none-match", "put-index", "delete-objects"];
const PUT: usize = 0;
const GET: usize = 1;
const RANGE: usize = 2;
const LIST: usize = 3;
const DELETE: usize = 4;
const GET_404: usize = 5;
const PUT_INM: usize = 6;
const PUT_INDEX: usize = 7;
const DELETE_OBJECTS: usize = 8;

#[derive(Default)]
struct Counts {
    lat_us: [Vec<u64>; 9],
    bytes_put: u64,
    bytes_got: u64,
}

/// Why an operation failed in the end: an HTTP status ("503"), "connection" (no answer),
/// "cut" (an answer broken off after its status line) or "timeout".
pub struct Fail {
    class: String,
    msg: String,
}

impl Fail {
    fn status(status: StatusCode, msg: String) -> Self {
        Fail { class: status.as_u16().to_string(), msg }
    }
}

struct Shared {
    errors: AtomicU64,
    mismatches: AtomicU64,
    ops: AtomicU64,
    succeeded: AtomicU64,
    /// Listing entries for keys this client deleted before (acknowledged) (see `Soaker::list`).
    stale_listed: AtomicU64,
    /// Requests sent again, by the cause of the attempt that failed.
    retried: Mutex<BTreeMap<String, u64>>,
    /// Operations that failed after their last attempt, by cause.
    failed: Mutex<BTreeMap<String, u64>>,
    /// The first problems, for the report.
    problems: Mutex<Vec<String>>,
    stop: AtomicBool,
    ack: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

impl Shared {
    fn error(&self, f: Fail) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.failed.lock().unwrap().entry(f.class).or_default() += 1;
        self.note(format!("error: {}", f.msg));
    }

    fn mismatch(&self, msg: String) {
        self.mismatches.fetch_add(1, Ordering::Relaxed);
        self.note(format!("MISMATCH: {msg}"));
    }

    fn note(&self, msg: String) {
        eprintln!("soak: {msg}");
        let mut p = self.problems.lock().unwrap();
        if p.len() < 20 {
            p.push(msg);
        }
    }

    /// Records an acknowledged write (Some((size, sha))), an acknowledged delete (None), or
    /// a key whose state is unknown after a failed write (`unknown`).
    fn ack(&self, key: &str, state: Option<(u64, &[u8; 32])>, unknown: bool) {
        let Some(log) = &self.ack else { return };
        let line = match (unknown, state) {
            (true, _) => serde_json::json!({ "k": key, "u": 1 }),
            (false, Some((size, sha))) => serde_json::json!({ "k": key, "s": size, "h": hex::encode(sha) }),
            (false, None) => serde_json::json!({ "k": key, "d": 1 }),
        };
        use std::io::Write as _;
        let mut w = log.lock().unwrap();
        let _ = writeln!(w, "{line}");
    }
}

#[derive(Clone, Copy)]
struct Stored {
    size: u64,
    seed: u64,
    sha: [u8; 32],
}

struct Soaker {
    target: Target,
    client: Client<Connector, PoolBody>,
    pool: Pool,
    timeout: Duration,
    attempts: u32,
    shared: Arc<Shared>,
}

/// An answer read whole (small bodies: errors, listings) or hashed as it streams.
struct Answer {
    status: StatusCode,
    len: u64,
    sha: [u8; 32],
    /// The first 64 KiB of the body (error documents, listings).
    head: Bytes,
    etag: Option<String>,
    /// Whether the body matched the expected bytes (when a check was asked for).
    matched: bool,
}

/// Statuses a client retries (the request may be sent again unchanged).
fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

impl Soaker {
    /// Sends the request `mk` builds, again (rebuilt and re-signed) after a retryable answer
    /// or a transport error, up to `attempts` times. `check`: (seed, size, first byte) of the
    /// bytes the body must hold.
    async fn send(&self, mk: &(dyn Fn() -> Result<http::Request<PoolBody>, String> + Sync), what: &str, check: Option<(u64, u64, u64)>) -> Result<Answer, Fail> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let req = mk().map_err(|msg| Fail { class: "request".into(), msg })?;
            let last = attempt >= self.attempts;
            let (cause, msg) = match self.send_once(req, what, check).await {
                Ok(a) if retryable(a.status) && !last => (a.status.as_u16().to_string(), String::new()),
                Ok(a) => return Ok(a),
                Err((class, msg)) if last => return Err(Fail { class, msg }),
                Err((class, msg)) => (class, msg),
            };
            if !msg.is_empty() {
                // A transport error carries no status: its message says where it broke.
                self.shared.note(format!("retried after {cause} (attempt {attempt}): {msg}"));
            }
            *self.shared.retried.lock().unwrap().entry(cause).or_default() += 1;
            let pause = (200u64 << (attempt - 1).min(4)).min(2000);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    async fn send_once(&self, req: http::Request<PoolBody>, what: &str, check: Option<(u64, u64, u64)>) -> Result<Answer, (String, String)> {
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| ("connection".to_string(), format!("{what}: {}", err_chain(&e))))?;
            let status = resp.status();
            let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
            let mut body = resp.into_body();
            let mut sha = sha2::Sha256::new();
            let mut head = Vec::new();
            let mut len = 0u64;
            let mut verifier = check.map(|(seed, size, first)| self.pool.verifier(seed, size, first));
            while let Some(frame) = body.frame().await {
                // The answer had started: the server cut it (as a proxy must when its backend
                // fails mid-body), which is not the same as no answer at all.
                let frame = frame.map_err(|e| ("cut".to_string(), format!("{what}: {status} after {len} bytes: {}", err_chain(&e))))?;
                if let Some(d) = frame.data_ref() {
                    len += d.len() as u64;
                    sha.update(d);
                    if head.len() < 65536 {
                        head.extend_from_slice(&d[..d.len().min(65536 - head.len())]);
                    }
                    if let Some(v) = verifier.as_mut() {
                        v.feed(d);
                    }
                }
            }
            let matched = verifier.map(|v| v.ok()).unwrap_or(true);
            Ok(Answer { status, len, sha: sha.finalize().into(), head: Bytes::from(head), etag, matched })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ("timeout".to_string(), format!("{what}: timed out after {:?}", self.timeout)))?
    }

    /// PUT of a generated body. `if_none_match`: PBS's chunk upload (`If-None-Match: *`):
    /// Ok(None) when the object already exists (412, which PBS counts as success).
    async fn put_as(&self, key: &str, size: u64, seed: u64, signed: bool, if_none_match: bool) -> Result<Option<Stored>, Fail> {
        let body = self.pool.body(seed, size);
        let sha = Pool::sha256(&body);
        let md5 = signed.then(|| Pool::digests(&body).1);
        let extra: Vec<(&'static str, String)> =
            if if_none_match { vec![("if-none-match", "*".into()), ("content-type", "application/octet-stream".into())] } else { vec![] };
        let mk = || {
            let body = self.pool.body(seed, size);
            let digests = signed.then(|| Pool::digests(&body));
            self.target.request_with(Method::PUT, Some(key), None, &extra, body, Some(size), digests)
        };
        let what = format!("PUT {key} ({size} bytes)");
        let a = self.send(&mk, &what, None).await?;
        if if_none_match && a.status == StatusCode::PRECONDITION_FAILED {
            // Already there (chunk keys name their content): what PBS counts as stored.
            self.shared.ack(key, Some((size, &sha)), false);
            return Ok(None);
        }
        if a.status != StatusCode::OK {
            return Err(Fail::status(a.status, format!("{what}: {} {}", a.status, snippet(&a.head))));
        }
        if let Some(md5) = md5 {
            // With Content-MD5 the ETag is the plaintext MD5 (README, ETags).
            use base64::Engine as _;
            let want = hex::encode(base64::engine::general_purpose::STANDARD.decode(md5).unwrap_or_default());
            if a.etag.as_deref().map(|e| e.trim_matches('"')) != Some(want.as_str()) {
                self.shared.mismatch(format!("PUT {key}: ETag {:?}, expected the MD5 {want}", a.etag));
            }
        }
        self.shared.ack(key, Some((size, &sha)), false);
        Ok(Some(Stored { size, seed, sha }))
    }

    async fn put(&self, key: &str, size: u64, seed: u64, signed: bool) -> Result<Stored, Fail> {
        let st = self.put_as(key, size, seed, signed, false).await?.expect("a PUT without If-None-Match stores");
        Ok(st)
    }

    async fn get(&self, key: &str, want: &Stored) -> Result<u64, Fail> {
        let mk = || self.target.request(Method::GET, Some(key), None, PoolBody::empty(), None, None);
        let a = self.send(&mk, &format!("GET {key}"), None).await?;
        if a.status != StatusCode::OK {
            return Err(Fail::status(a.status, format!("GET {key}: {} {}", a.status, snippet(&a.head))));
        }
        if a.len != want.size || a.sha != want.sha {
            self.shared.mismatch(format!(
                "GET {key}: {} bytes with SHA-256 {}, PUT was {} bytes with {}",
                a.len,
                hex::encode(a.sha),
                want.size,
                hex::encode(want.sha)
            ));
        }
        Ok(a.len)
    }

    async fn range(&self, key: &str, want: &Stored, first: u64, last: u64) -> Result<u64, Fail> {
        let mk = || self.target.request(Method::GET, Some(key), Some((first, last)), PoolBody::empty(), None, None);
        let what = format!("GET {key} bytes={first}-{last}");
        let a = self.send(&mk, &what, Some((want.seed, want.size, first))).await?;
        if a.status != StatusCode::PARTIAL_CONTENT {
            return Err(Fail::status(a.status, format!("{what} of {}: {} {}", want.size, a.status, snippet(&a.head))));
        }
        if a.len != last - first + 1 || !a.matched {
            self.shared.mismatch(format!(
                "{what} of {}: {} bytes, content {}",
                want.size,
                a.len,
                if a.matched { "matches" } else { "differs" }
            ));
        }
        Ok(a.len)
    }

    /// LIST of the client's prefix: exactly its keys with their plaintext sizes. A key this
    /// client deleted before (acknowledged) may still be listed by a distributed backend:
    /// Garage with 3 replicas drops deleted entries on each node before merging the nodes'
    /// answers, so a node the delete has not reached yet (a moment after the delete, or for
    /// minutes when the node was down during the delete, until Garage's anti-entropy repairs
    /// it) lists the key again. Such entries are counted (`stale_listed`), not failed; a
    /// missing key or a wrong size still is a mismatch, and the end check (`--workload
    /// verify`) proves every acknowledged delete answers 404 to a GET.
    async fn list(&self, prefix: &str, want: &BTreeMap<String, Stored>, deleted: &HashSet<String>) -> Result<(), Fail> {
        let mk = || self.target.list(prefix);
        let a = self.send(&mk, &format!("LIST {prefix}"), None).await?;
        if a.status != StatusCode::OK {
            return Err(Fail::status(a.status, format!("LIST {prefix}: {} {}", a.status, snippet(&a.head))));
        }
        let text = String::from_utf8_lossy(&a.head);
        let mut got = parse_listing(&text);
        got.retain(|(k, _)| {
            let stale = !want.contains_key(k) && deleted.contains(k);
            if stale {
                self.shared.stale_listed.fetch_add(1, Ordering::Relaxed);
            }
            !stale
        });
        let expected: Vec<(String, u64)> = want.iter().map(|(k, s)| (k.clone(), s.size)).collect();
        if got != expected || text.contains("<IsTruncated>true") {
            self.shared.mismatch(format!("LIST {prefix}: {got:?}, expected {expected:?}"));
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), Fail> {
        let mk = || self.target.request(Method::DELETE, Some(key), None, PoolBody::empty(), None, None);
        let a = self.send(&mk, &format!("DELETE {key}"), None).await?;
        if a.status != StatusCode::NO_CONTENT {
            return Err(Fail::status(a.status, format!("DELETE {key}: {} {}", a.status, snippet(&a.head))));
        }
        self.shared.ack(key, None, false);
        Ok(())
    }

    /// DeleteObjects (`POST ?delete`, Content-MD5, no Quiet) as PBS's garbage collection
    /// sends it; every key must come back as <Deleted>.
    async fn delete_objects(&self, keys: &[String]) -> Result<(), Fail> {
        let doc: String = format!(
            "<Delete>{}</Delete>",
            keys.iter().map(|k| format!("<Object><Key>{k}</Key></Object>")).collect::<String>()
        );
        let doc = Bytes::from(doc);
        let mk = || {
            let body = PoolBody::from_bytes(doc.clone());
            let digests = Pool::digests(&body);
            self.target.request_with(Method::POST, None, Some("delete="), &[], body, Some(doc.len() as u64), Some(digests))
        };
        let what = format!("DeleteObjects of {} keys", keys.len());
        let mut attempt = 1u32;
        let a = loop {
            let a = self.send(&mk, &what, None).await?;
            // A 200 whose DeleteResult holds a retryable per-key error (Garage: "Could not
            // reach quorum" while a node goes away): PBS's garbage collection fails on any
            // <Error> and runs again later; here the batch is sent again (deleting is
            // idempotent), counted as a retry.
            let text = String::from_utf8_lossy(&a.head);
            let retryable = ["ServiceUnavailable", "SlowDown", "InternalError"].iter().any(|c| text.contains(&format!("<Code>{c}</Code>")));
            if a.status == StatusCode::OK && retryable && attempt < self.attempts {
                *self.shared.retried.lock().unwrap().entry("503 in DeleteResult".into()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis((200u64 << (attempt - 1).min(4)).min(2000))).await;
                attempt += 1;
                continue;
            }
            break a;
        };
        let text = String::from_utf8_lossy(&a.head);
        if a.status != StatusCode::OK || text.contains("<Error>") {
            let class = if a.status == StatusCode::OK { "200 with <Error>".to_string() } else { a.status.as_u16().to_string() };
            return Err(Fail { class, msg: format!("{what}: {} {}", a.status, snippet(&a.head)) });
        }
        let deleted = text.matches("<Deleted>").count();
        if deleted != keys.len() {
            self.shared.mismatch(format!("{what}: {deleted} <Deleted> entries"));
        }
        for k in keys {
            self.shared.ack(k, None, false);
        }
        Ok(())
    }

    async fn get_gone(&self, key: &str) -> Result<(), Fail> {
        let mk = || self.target.request(Method::GET, Some(key), None, PoolBody::empty(), None, None);
        let a = self.send(&mk, &format!("GET {key} (deleted)"), None).await?;
        if a.status != StatusCode::NOT_FOUND || !a.head.windows(9).any(|w| w == b"NoSuchKey") {
            self.shared.mismatch(format!("GET {key} after DELETE: {} {}", a.status, snippet(&a.head)));
        }
        Ok(())
    }
}

/// (Key, Size) of every <Contents> of a ListObjectsV2 answer, in order.
fn parse_listing(xml: &str) -> Vec<(String, u64)> {
    fn field<'a>(s: &'a str, tag: &str) -> Option<&'a str> {
        let a = s.find(&format!("<{tag}>"))? + tag.len() + 2;
        let b = a + s[a..].find(&format!("</{tag}>"))?;
        Some(&s[a..b])
    }
    xml.split("<Contents>")
        .skip(1)
        .map(|c| {
            let c = c.split("</Contents>").next().unwrap_or("");
            (
                field(c, "Key").unwrap_or("").to_string(),
                field(c, "Size").and_then(|s| s.parse().ok()).unwrap_or(u64::MAX),
            )
        })
        .collect()
}

/// Sizes spread evenly over orders of magnitude up to `max` (so most objects are small and
/// most bytes are in large ones), plus the edges of the 64 KiB encryption chunk and 0.
fn random_size(rng: &mut Mix, max: u64) -> u64 {
    if rng.below(10) == 0 {
        let edges = [0u64, 1, 65535, 65536, 65537, 2 * 65536, 2 * 65536 + 1];
        return edges[rng.below(edges.len() as u64) as usize].min(max);
    }
    let bits = 64 - max.leading_zeros() as u64; // max < 2^bits
    let e = rng.below(bits + 1);
    let hi = (1u64 << e).min(max + 1);
    rng.below(hi)
}

async fn client_loop(s: Arc<Soaker>, id: usize, args: Arc<SoakArgs>, deadline: Instant, mut rng: Mix) -> Counts {
    let prefix = format!("{}/c{id:03}/", args.prefix);
    let mut stored: BTreeMap<String, Stored> = BTreeMap::new();
    let mut counts = Counts::default();
    let mut next = 0u64;
    let mut deleted: HashSet<String> = HashSet::new();
    let shared = s.shared.clone();
    // A previous run may have left keys here (stopped early): start from an empty prefix.
    if let Err(e) = clear(&s, &prefix, &mut deleted).await {
        shared.error(e);
    }
    while Instant::now() < deadline && !shared.stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let step = if args.pbs {
            pbs_step(&s, &args, &prefix, &mut stored, &mut deleted, &mut counts, &mut rng).await
        } else {
            generic_step(&s, &args, &prefix, &mut stored, &mut deleted, &mut counts, &mut next, &mut rng).await
        };
        let Some((op, key, result)) = step else { continue };
        shared.ops.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                shared.succeeded.fetch_add(1, Ordering::Relaxed);
                if op < OPS.len() {
                    counts.lat_us[op].push(t0.elapsed().as_micros() as u64);
                }
            }
            Err(e) => {
                shared.error(e);
                // A failed write leaves its key in an unknown state: note it, then start
                // over from an empty prefix (LIST would otherwise disagree).
                if matches!(op, PUT | PUT_INM | PUT_INDEX | DELETE | DELETE_OBJECTS) {
                    if let Some(k) = key {
                        shared.ack(&k, None, true);
                    }
                    stored.clear();
                    if let Err(e) = clear(&s, &prefix, &mut deleted).await {
                        shared.error(e);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    if args.keep_objects {
        return counts;
    }
    // Clean up: delete everything, then the listing must be empty.
    for key in stored.keys() {
        if let Err(e) = s.delete(key).await {
            shared.error(e);
        }
    }
    if let Err(e) = s.list(&prefix, &BTreeMap::new(), &deleted).await {
        shared.error(e);
    }
    counts
}

/// One operation of the generic mix: PUT (new or overwrite), GET, Range GET, LIST, DELETE
/// followed by a GET that must be 404. (op index, key written, result); None: skipped.
type Step = Option<(usize, Option<String>, Result<(), Fail>)>;

async fn generic_step(
    s: &Soaker,
    args: &SoakArgs,
    prefix: &str,
    stored: &mut BTreeMap<String, Stored>,
    deleted: &mut HashSet<String>,
    counts: &mut Counts,
    next: &mut u64,
    rng: &mut Mix,
) -> Step {
    let roll = rng.below(100);
    if stored.is_empty() || roll < 35 {
        let key = if stored.len() < args.keys_per_client && (stored.is_empty() || rng.below(3) != 0) {
            *next += 1;
            format!("{prefix}k{next:06}")
        } else {
            nth_key(stored, rng.below(stored.len() as u64))
        };
        let size = random_size(rng, args.max_size);
        let r = s.put(&key, size, rng.next_u64(), rng.below(2) == 0).await;
        let r = r.map(|st| {
            counts.bytes_put += st.size;
            stored.insert(key.clone(), st);
        });
        Some((PUT, Some(key), r))
    } else if roll < 62 {
        let key = nth_key(stored, rng.below(stored.len() as u64));
        let r = s.get(&key, &stored[&key]).await;
        Some((GET, None, r.map(|n| counts.bytes_got += n)))
    } else if roll < 72 {
        let key = nth_key(stored, rng.below(stored.len() as u64));
        let st = stored[&key];
        if st.size == 0 {
            return None;
        }
        let first = rng.below(st.size);
        let last = (first + rng.below((st.size - first).min(1 << 20))).min(st.size - 1);
        let r = s.range(&key, &st, first, last).await;
        Some((RANGE, None, r.map(|n| counts.bytes_got += n)))
    } else if roll < 86 {
        Some((LIST, None, s.list(prefix, stored, deleted).await))
    } else {
        let key = nth_key(stored, rng.below(stored.len() as u64));
        let t0 = Instant::now();
        match s.delete(&key).await {
            Ok(()) => {
                stored.remove(&key);
                deleted.insert(key.clone());
                counts.lat_us[DELETE].push(t0.elapsed().as_micros() as u64);
                let t1 = Instant::now();
                let r = s.get_gone(&key).await;
                if r.is_ok() {
                    counts.lat_us[GET_404].push(t1.elapsed().as_micros() as u64);
                }
                // Latencies recorded above.
                Some((usize::MAX, None, r))
            }
            Err(e) => Some((DELETE, Some(key), Err(e))),
        }
    }
}

/// One operation of PBS-like traffic (shared/pbs-s3-client.md), every body signed with
/// Content-MD5:
/// - chunk upload with `If-None-Match: *` to `<prefix>.chunks/<4 hex>/<64 hex>` (the key
///   names the content; sizes up to --size); a chunk already stored must answer 412;
/// - index replace: `<prefix>.cnt/vm/<n>/index.fidx`, overwritten without a condition;
/// - whole GETs of chunks and indexes, Range GETs (what aws-cli/boto3 readers do);
/// - LIST of the client's prefix (keys and plaintext sizes exact);
/// - garbage collection: DeleteObjects (`POST ?delete`) of up to half the chunks.
async fn pbs_step(
    s: &Soaker,
    args: &SoakArgs,
    prefix: &str,
    stored: &mut BTreeMap<String, Stored>,
    deleted: &mut HashSet<String>,
    counts: &mut Counts,
    rng: &mut Mix,
) -> Step {
    let chunks: Vec<String> = stored.keys().filter(|k| k.contains("/.chunks/")).cloned().collect();
    let roll = rng.below(100);
    if stored.is_empty() || roll < 30 {
        // A new chunk, or (1 in 5) one already stored again: dedup answers 412.
        let again = !chunks.is_empty() && rng.below(5) == 0;
        let (seed, size) = if again {
            let st = stored[&chunks[rng.below(chunks.len() as u64) as usize]];
            (st.seed, st.size)
        } else {
            (rng.next_u64(), random_size(rng, args.max_size).max(1))
        };
        let sha = Pool::sha256(&s.pool.body(seed, size));
        let hexsha = hex::encode(sha);
        let key = format!("{prefix}.chunks/{}/{hexsha}", &hexsha[..4]);
        if !again && (stored.contains_key(&key) || chunks.len() >= args.keys_per_client) {
            return None;
        }
        let r = s.put_as(&key, size, seed, true, true).await.and_then(|st| match (again, st) {
            (true, Some(_)) => {
                s.shared.mismatch(format!("PUT {key} with If-None-Match: * stored over an existing chunk (200, not 412)"));
                Ok(())
            }
            (_, st) => {
                counts.bytes_put += size;
                stored.insert(key.clone(), st.unwrap_or(Stored { size, seed, sha }));
                Ok(())
            }
        });
        Some((PUT_INM, Some(key), r))
    } else if roll < 40 {
        let key = format!("{prefix}.cnt/vm/{}/index.fidx", rng.below(2));
        let size = 4096 + rng.below(256 << 10);
        let r = s.put(&key, size, rng.next_u64(), true).await.map(|st| {
            counts.bytes_put += st.size;
            stored.insert(key.clone(), st);
        });
        Some((PUT_INDEX, Some(key), r))
    } else if roll < 65 {
        let key = nth_key(stored, rng.below(stored.len() as u64));
        let r = s.get(&key, &stored[&key]).await;
        Some((GET, None, r.map(|n| counts.bytes_got += n)))
    } else if roll < 77 {
        let key = nth_key(stored, rng.below(stored.len() as u64));
        let st = stored[&key];
        let first = rng.below(st.size.max(1));
        let last = (first + rng.below((st.size - first).clamp(1, 1 << 20))).min(st.size.saturating_sub(1));
        if st.size == 0 {
            return None;
        }
        let r = s.range(&key, &st, first, last).await;
        Some((RANGE, None, r.map(|n| counts.bytes_got += n)))
    } else if roll < 90 {
        Some((LIST, None, s.list(prefix, stored, deleted).await))
    } else {
        if chunks.len() < 2 {
            return None;
        }
        let victims: Vec<String> = chunks.iter().filter(|_| rng.below(2) == 0).cloned().collect();
        if victims.is_empty() {
            return None;
        }
        let r = s.delete_objects(&victims).await.map(|()| {
            for k in &victims {
                stored.remove(k);
                deleted.insert(k.clone());
            }
        });
        if r.is_err() {
            // Some may be gone, some not.
            for k in &victims {
                s.shared.ack(k, None, true);
            }
        }
        Some((DELETE_OBJECTS, victims.first().cloned(), r))
    }
}

fn nth_key(m: &BTreeMap<String, Stored>, i: u64) -> String {
    m.keys().nth(i as usize).cloned().unwrap_or_default()
}

/// Deletes every key under `prefix` (what a stopped earlier run left, or what a failed
/// write left in an unknown state).
async fn clear(s: &Soaker, prefix: &str, deleted: &mut HashSet<String>) -> Result<(), Fail> {
    let mk = || s.target.list(prefix);
    let a = s.send(&mk, &format!("LIST {prefix}"), None).await?;
    if a.status != StatusCode::OK {
        return Err(Fail::status(a.status, format!("LIST {prefix}: {} {}", a.status, snippet(&a.head))));
    }
    for (key, _) in parse_listing(&String::from_utf8_lossy(&a.head)) {
        s.delete(&key).await?;
        deleted.insert(key);
    }
    Ok(())
}

#[derive(Serialize)]
struct RssReport {
    name: String,
    pid: u32,
    samples: usize,
    first_mib: f64,
    max_mib: f64,
    last_mib: f64,
    /// Largest sample of the first and of the last quarter of the run.
    first_quarter_max_mib: f64,
    last_quarter_max_mib: f64,
    limit_mib: f64,
    growth_limit_mib: f64,
    ok: bool,
}

#[derive(Serialize)]
struct OpLine {
    op: &'static str,
    count: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Serialize)]
pub struct SoakReport {
    endpoint: String,
    clients: usize,
    duration_s: f64,
    wall_s: f64,
    max_size: u64,
    operations: u64,
    ops_per_s: f64,
    mib_put: f64,
    mib_got: f64,
    ops: Vec<OpLine>,
    errors: u64,
    mismatches: u64,
    problems: Vec<String>,
    rss: Vec<RssReport>,
    load_before: String,
    load_after: String,
    /// The signal that ended the run before --duration, if any.
    stopped_early: Option<&'static str>,
    /// Operations started (each counted once, however many attempts it took).
    attempted: u64,
    succeeded: u64,
    /// Operations that failed after their last attempt, by cause (HTTP status, connection, timeout).
    failed: BTreeMap<String, u64>,
    /// Attempts sent again, by the cause of the failed attempt.
    retried: BTreeMap<String, u64>,
    /// Listing entries of keys deleted moments before (a distributed backend's lagging node).
    stale_listed: u64,
    pub passed: bool,
}

fn mib(n: u64) -> f64 {
    n as f64 / (1 << 20) as f64
}

pub async fn run(target: Target, client: Client<Connector, PoolBody>, args: SoakArgs) -> Result<SoakReport, String> {
    let ack = match &args.ack_log {
        Some(path) => {
            let f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| format!("--ack-log {path}: {e}"))?;
            Some(Mutex::new(std::io::BufWriter::new(f)))
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        errors: AtomicU64::new(0),
        mismatches: AtomicU64::new(0),
        ops: AtomicU64::new(0),
        succeeded: AtomicU64::new(0),
        stale_listed: AtomicU64::new(0),
        retried: Mutex::default(),
        failed: Mutex::default(),
        problems: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        ack,
    });
    let soaker = Arc::new(Soaker {
        target,
        client,
        pool: Pool::new(),
        timeout: args.timeout,
        attempts: args.attempts.max(1),
        shared: shared.clone(),
    });
    let args = Arc::new(args);
    let load_before = procstat::loadavg();

    // RSS samples: (seconds since start, bytes per watched process).
    let samples: Arc<Mutex<Samples>> = Arc::default();
    let t0 = Instant::now();
    let sample = {
        let (samples, pids) = (samples.clone(), args.watch.iter().map(|w| w.pid).collect::<Vec<_>>());
        move || {
            let v = pids.iter().map(|p| procstat::status_kb(*p, "VmRSS").unwrap_or(0)).collect();
            samples.lock().unwrap().push((t0.elapsed().as_secs_f64(), v));
        }
    };
    sample();
    let sampler_done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, args, shared, sample, samples) =
            (sampler_done.clone(), args.clone(), shared.clone(), sample.clone(), samples.clone());
        tokio::spawn(async move {
            let mut last_progress = Instant::now();
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(args.rss_interval).await;
                sample();
                if last_progress.elapsed() >= args.progress {
                    last_progress = Instant::now();
                    let last = samples.lock().unwrap().last().map(|x| x.1.clone()).unwrap_or_default();
                    let rss: Vec<String> =
                        args.watch.iter().zip(last).map(|(w, b)| format!("{} {:.1} MiB", w.name, mib(b))).collect();
                    eprintln!(
                        "soak: {:5.0}s {} operations, {} errors, {} mismatches; RSS {}; load {}",
                        t0.elapsed().as_secs_f64(),
                        shared.ops.load(Ordering::Relaxed),
                        shared.errors.load(Ordering::Relaxed),
                        shared.mismatches.load(Ordering::Relaxed),
                        rss.join(", "),
                        procstat::loadavg()
                    );
                }
            }
        })
    };

    // SIGINT / SIGTERM end the run early, cleanly: clients finish the request in hand, clean
    // up and the report is printed (bench/soak.py sends SIGTERM when the disk runs low).
    let stopped_by = Arc::new(Mutex::new(None::<&'static str>));
    {
        let (shared, stopped_by) = (shared.clone(), stopped_by.clone());
        tokio::spawn(async move {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
            let name = tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            eprintln!("soak: {name}: stopping early");
            *stopped_by.lock().unwrap() = Some(name);
            shared.stop.store(true, Ordering::Relaxed);
        });
    }
    let deadline = Instant::now() + args.duration;
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let mut handles = Vec::new();
    for id in 0..args.concurrency {
        let rng = Mix(seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        handles.push(tokio::spawn(client_loop(soaker.clone(), id, args.clone(), deadline, rng)));
    }
    let mut all = Counts::default();
    for h in handles {
        match h.await {
            Ok(c) => {
                for (a, b) in all.lat_us.iter_mut().zip(c.lat_us) {
                    a.extend(b);
                }
                all.bytes_put += c.bytes_put;
                all.bytes_got += c.bytes_got;
            }
            Err(e) => shared.error(Fail { class: "panic".into(), msg: format!("a client panicked: {e}") }),
        }
    }
    let wall = t0.elapsed();
    sampler_done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    sample();

    let samples = samples.lock().unwrap().clone();
    let end = samples.last().map(|s| s.0).unwrap_or(0.0);
    let mut rss = Vec::new();
    for (i, w) in args.watch.iter().enumerate() {
        let v: Vec<(f64, u64)> = samples.iter().map(|(t, s)| (*t, s[i])).collect();
        let max_in = |a: f64, b: f64| v.iter().filter(|(t, _)| *t >= a && *t <= b).map(|x| x.1).max().unwrap_or(0);
        let max = v.iter().map(|x| x.1).max().unwrap_or(0);
        let q1 = max_in(0.0, end / 4.0);
        let q4 = max_in(end * 3.0 / 4.0, end);
        let ok = max <= args.rss_limit && q4 <= q1 + args.rss_growth;
        rss.push(RssReport {
            name: w.name.clone(),
            pid: w.pid,
            samples: v.len(),
            first_mib: mib(v.first().map(|x| x.1).unwrap_or(0)),
            max_mib: mib(max),
            last_mib: mib(v.last().map(|x| x.1).unwrap_or(0)),
            first_quarter_max_mib: mib(q1),
            last_quarter_max_mib: mib(q4),
            limit_mib: mib(args.rss_limit),
            growth_limit_mib: mib(args.rss_growth),
            ok,
        });
    }
    let secs = wall.as_secs_f64().max(1e-9);
    let ops = all
        .lat_us
        .iter_mut()
        .enumerate()
        .map(|(i, l)| {
            l.sort_unstable();
            OpLine {
                op: OPS[i],
                count: l.len(),
                p50_ms: percentile(l, 50.0),
                p99_ms: percentile(l, 99.0),
                max_ms: l.last().copied().unwrap_or(0) as f64 / 1000.0,
            }
        })
        .collect();
    let errors = shared.errors.load(Ordering::Relaxed);
    let mismatches = shared.mismatches.load(Ordering::Relaxed);
    let operations = shared.ops.load(Ordering::Relaxed);
    if let Some(log) = &shared.ack {
        use std::io::Write as _;
        if let Err(e) = log.lock().unwrap().flush() {
            shared.note(format!("writing the ack log: {e}"));
        }
    }
    let problems = shared.problems.lock().unwrap().clone();
    let failed = shared.failed.lock().unwrap().clone();
    let retried = shared.retried.lock().unwrap().clone();
    let stopped_early = *stopped_by.lock().unwrap();
    let passed = errors == 0 && mismatches == 0 && rss.iter().all(|r| r.ok) && operations > 0;
    Ok(SoakReport {
        endpoint: soaker.target.endpoint.clone(),
        clients: args.concurrency,
        duration_s: args.duration.as_secs_f64(),
        wall_s: secs,
        max_size: args.max_size,
        operations,
        ops_per_s: operations as f64 / secs,
        mib_put: mib(all.bytes_put),
        mib_got: mib(all.bytes_got),
        ops,
        errors,
        mismatches,
        problems,
        rss,
        load_before,
        load_after: procstat::loadavg(),
        stopped_early,
        attempted: operations,
        succeeded: shared.succeeded.load(Ordering::Relaxed),
        failed,
        retried,
        stale_listed: shared.stale_listed.load(Ordering::Relaxed),
        passed,
    })
}

pub fn text(r: &SoakReport) -> String {
    let mut s = format!(
        "soak: {} clients, {:.0} s, {} operations ({:.0}/s), {:.0} MiB put, {:.0} MiB read; errors {}, mismatches {}; load {} → {}\n",
        r.clients, r.wall_s, r.operations, r.ops_per_s, r.mib_put, r.mib_got, r.errors, r.mismatches, r.load_before, r.load_after
    );
    s.push_str(&format!(
        "soak:   attempted {}, succeeded {}, failed {:?}, retried {:?}, stale listing entries {}\n",
        r.attempted, r.succeeded, r.failed, r.retried, r.stale_listed
    ));
    if let Some(sig) = r.stopped_early {
        s.push_str(&format!("soak:   stopped early by {sig} after {:.0} of {:.0} s\n", r.wall_s, r.duration_s));
    }
    for o in &r.ops {
        s.push_str(&format!(
            "soak:   {:8} {:7} p50 {:7.1} ms  p99 {:7.1} ms  max {:7.1} ms\n",
            o.op, o.count, o.p50_ms, o.p99_ms, o.max_ms
        ));
    }
    for x in &r.rss {
        s.push_str(&format!(
            "soak:   RSS {} (pid {}): first {:.1} MiB, max {:.1} MiB, last {:.1} MiB; max of first quarter {:.1}, of last quarter {:.1} \
             (limit {:.0} MiB, growth ≤ {:.0} MiB) → {}\n",
            x.name,
            x.pid,
            x.first_mib,
            x.max_mib,
            x.last_mib,
            x.first_quarter_max_mib,
            x.last_quarter_max_mib,
            x.limit_mib,
            x.growth_limit_mib,
            if x.ok { "flat" } else { "NOT flat" }
        ));
    }
    for p in &r.problems {
        s.push_str(&format!("soak:   {p}\n"));
    }
    s.push_str(if r.passed { "soak: PASSED" } else { "soak: FAILED" });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_parse() {
        let xml = "<ListBucketResult><Name>b</Name><Contents><Key>p/c000/k000001</Key><Size>17</Size><ETag>\"x\"</ETag></Contents>\
                   <Contents><Key>p/c000/k000002</Key><LastModified>t</LastModified><Size>0</Size></Contents></ListBucketResult>";
        assert_eq!(parse_listing(xml), vec![("p/c000/k000001".into(), 17), ("p/c000/k000002".into(), 0)]);
        assert!(parse_listing("<ListBucketResult></ListBucketResult>").is_empty());
    }

    #[test]
    fn sizes_stay_in_bounds() {
        let mut rng = Mix(1);
        let max = 8 << 20;
        let v: Vec<u64> = (0..10_000).map(|_| random_size(&mut rng, max)).collect();
        assert!(v.iter().all(|&n| n <= max));
        assert!(v.iter().any(|&n| n < 1024));
        assert!(v.iter().any(|&n| n > 4 << 20));
        assert!(v.contains(&0));
    }
}
