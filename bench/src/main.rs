//! s3cp-bench: a native S3 load generator for s3-crypt-proxy benchmarks.
//!
//! Signs real S3 requests (SigV4, path-style) and runs one workload (PUT, GET, mixed, Range,
//! HEAD) of one object size at one concurrency against one endpoint for a fixed time, then prints
//! one line: throughput, latency percentiles and what the watched processes (proxy, backend)
//! cost meanwhile: CPU (whole process and busiest thread) and peak RSS. `scripts/bench.sh`
//! runs the matrix over several targets and prints the comparison table.

mod body;
mod conn;
mod procstat;
mod s3;
mod soak;
mod verify;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use body::{seed_of, Mix, Pool, PoolBody};
use conn::Connector;
use procstat::{parse_watch, Watched, Window, WindowReport};
use s3::{Payload, Protocol, Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Workload {
    /// Uploads (overwriting 4 keys per worker).
    Put,
    /// Whole-object downloads from a pre-filled read set.
    Get,
    /// Half GETs of the read set, half PUTs.
    Mixed,
    /// Range GETs (--range-len bytes at a random offset) of the read set.
    Range,
    /// Whole-object GETs sent as the Go SDK's downloader (s5cmd) sends them: Range
    /// bytes=0-<part-1> with --range-part (s5cmd's 50 MiB by default), answered 206; an
    /// object larger than a part is read part after part. Throughput counts the object bytes.
    Ranged,
    /// HEADs of the read set (Content-Length checked); throughput is requests per second.
    Head,
    /// The soak test: every client in its own key space, random PUT/GET/Range/LIST/DELETE
    /// with random sizes up to --size (default 8 MiB), every answer checked, RSS of the
    /// --watch processes sampled; exit code 1 on any error, mismatch or RSS growth.
    /// With --pbs: PBS-like traffic (chunks with If-None-Match, index replaces, DeleteObjects).
    Soak,
    /// The end check of a soak run with --ack-log: every acknowledged object reads back with
    /// its size and SHA-256, every acknowledged delete answers 404 (--keep-objects run).
    Verify,
}

#[derive(Parser, Debug)]
#[command(name = "s3cp-bench", version, about = "Native S3 load generator: signed PUT/GET/mixed/Range/HEAD workloads, one result line")]
struct Args {
    /// http://host:port or https://host:port of the S3 endpoint (proxy, load balancer or
    /// backend), or of a WebDAV server with --protocol plain.
    #[arg(long)]
    endpoint: String,
    /// PEM file with the CA certificate(s) an https:// endpoint's certificate is verified against.
    #[arg(long)]
    ca_file: Option<String>,
    #[arg(long, default_value = "")]
    access_key: String,
    #[arg(long, default_value = "")]
    secret_key: String,
    /// Region in the signature's scope (Garage wants its own, "garage"; the proxy takes any).
    #[arg(long, default_value = "garage")]
    region: String,
    #[arg(long, default_value = "bench")]
    bucket: String,
    #[arg(long, value_enum, default_value = "s3")]
    protocol: Protocol,
    #[arg(long, value_enum)]
    workload: Workload,
    /// Object size: 4KiB, 1MiB, 4MiB, 64MiB, 1GiB, or bytes (soak: the largest, default 8MiB).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Measured time; workers stop starting requests after it and the window ends when the
    /// last one finishes (throughput is bytes over that whole window).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Unmeasured run before the window (connections, caches); at most 256 MiB of payload.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Stop after this many measured requests (e.g. 1 for the large-object RSS test).
    #[arg(long)]
    requests: Option<u64>,
    /// Stop starting requests once this much payload was moved in the window.
    #[arg(long, value_parser = parse_size)]
    max_bytes: Option<u64>,
    /// Range length for --workload range (capped at a quarter of the object size).
    #[arg(long, value_parser = parse_size, default_value = "256KiB")]
    range_len: u64,
    /// Part size of --workload ranged (the Range of each request).
    #[arg(long, value_parser = parse_size, default_value = "50MiB")]
    range_part: u64,
    /// Key prefix; objects are <prefix>/<size>/r<N> (read set) and <prefix>/<size>/w<worker>-<N>.
    #[arg(long, default_value = "s3cp-bench")]
    prefix: String,
    /// Objects in the read set (default: 64, fewer for large sizes so it stays ≤ 512 MiB, at least 4).
    #[arg(long)]
    keys: Option<usize>,
    /// Upload the read set even when it is already there.
    #[arg(long)]
    force_prefill: bool,
    /// Upload the read set as multipart uploads in parts of this size (the last part holds
    /// the rest), e.g. 5MiB with --size 15MiB for 3 parts; its keys are then
    /// <prefix>/<size>-mp<part>/r<N>. Without it every object is one PUT.
    #[arg(long, value_parser = parse_size)]
    multipart_part_size: Option<u64>,
    #[arg(long, value_enum, default_value = "unsigned")]
    payload: Payload,
    /// PUT: every upload is a new object sent with `If-None-Match: *`, as PBS uploads its
    /// chunks (a proxy enforcing the condition checks the backend first).
    #[arg(long)]
    if_none_match: bool,
    /// Compare every downloaded byte with what was uploaded (costs generator CPU).
    #[arg(long)]
    verify: bool,
    /// Create the bucket first (409 from the server is fine).
    #[arg(long)]
    create_bucket: bool,
    /// Processes to measure during the window, NAME=PID (repeatable): CPU and peak RSS.
    #[arg(long = "watch", value_parser = parse_watch)]
    watch: Vec<Watched>,
    /// A name for the result line (e.g. the target).
    #[arg(long, default_value = "")]
    label: String,
    /// Per-request time limit, headers and body.
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    request_timeout: Duration,
    /// Soak: seconds between RSS samples.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    rss_interval: Duration,
    /// Soak: fail when a watched process's RSS passes this (default 64 MiB + 1 MiB per client).
    #[arg(long, value_parser = parse_size)]
    rss_limit: Option<u64>,
    /// Soak: fail when the largest RSS of the last quarter of the run exceeds the largest of
    /// the first quarter by more than this.
    #[arg(long, value_parser = parse_size, default_value = "16MiB")]
    rss_growth: u64,
    /// Soak: a progress line on stderr this often.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    progress: Duration,
    /// Soak: PBS-like traffic (shared/pbs-s3-client.md): signed chunk uploads with
    /// Content-MD5 and If-None-Match: *, index replaces, listings, DeleteObjects batches,
    /// whole and Range GETs.
    #[arg(long)]
    pbs: bool,
    /// Soak: attempts per operation; 500/502/503/504 answers and transport errors are retried
    /// (pause 0.2 s doubling up to 2 s) and counted by cause.
    #[arg(long, default_value_t = 1)]
    attempts: u32,
    /// Soak: append every acknowledged write (key, size, SHA-256) and delete to this file,
    /// one JSON line each. Verify: the log to check.
    #[arg(long)]
    ack_log: Option<String>,
    /// Soak: leave the objects in place at the end (for --workload verify).
    #[arg(long)]
    keep_objects: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        _ => return Err(format!("bad size unit in {s} (KiB, MiB, GiB)")),
    };
    Ok(n * mult)
}

fn size_label(n: u64) -> String {
    for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= m && n.is_multiple_of(m) {
            return format!("{}{unit}", n / m);
        }
    }
    format!("{n}B")
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Put,
    Get,
    Range,
    Head,
}

#[derive(Default)]
struct OpStats {
    lat_us: Vec<u64>,
    bytes: u64,
    errors: u64,
    corrupt: u64,
    first_error: Option<String>,
}

impl OpStats {
    fn merge(&mut self, o: OpStats) {
        self.lat_us.extend(o.lat_us);
        self.bytes += o.bytes;
        self.errors += o.errors;
        self.corrupt += o.corrupt;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

struct Ctx {
    target: Target,
    client: Client<Connector, PoolBody>,
    pool: Pool,
    size: u64,
    label: String,
    range_len: u64,
    range_part: u64,
    prefix: String,
    keys: usize,
    payload: Payload,
    verify: bool,
    timeout: Duration,
    /// Read set uploaded in parts of this size.
    part_size: Option<u64>,
    /// PUTs create new objects with `If-None-Match: *` (--if-none-match).
    create_only: bool,
}

impl Ctx {
    fn read_key(&self, i: usize) -> (String, u64) {
        let key = format!("{}/{}/r{i:04}", self.prefix, self.label);
        let seed = seed_of(&key) ^ self.size;
        (key, seed)
    }

    async fn put(&self, key: &str, seed: u64) -> Result<u64, String> {
        let body = self.pool.body(seed, self.size);
        let digests = match self.payload {
            Payload::Signed => Some(Pool::digests(&body)),
            Payload::Unsigned => None,
        };
        let req = if self.create_only {
            self.target.request_with(Method::PUT, Some(key), None, &[("if-none-match", "*".to_string())], body, Some(self.size), digests)?
        } else {
            self.target.request(Method::PUT, Some(key), None, body, Some(self.size), digests)?
        };
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| format!("PUT {key}: {}", err_chain(&e)))?;
            let status = resp.status();
            let text = resp.into_body().collect().await.map_err(|e| format!("PUT {key}: {e}"))?.to_bytes();
            if !status.is_success() {
                return Err(format!("PUT {key}: {status} {}", snippet(&text)));
            }
            Ok(self.size)
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| format!("PUT {key}: timed out"))?
    }

    /// Uploads a read-set object as a multipart upload in parts of `part` bytes; its bytes are
    /// those of a single PUT with the same seed, so --verify checks either.
    async fn put_multipart(&self, key: &str, seed: u64, part: u64) -> Result<u64, String> {
        let fut = async {
            let req = self.target.request_query(Method::POST, key, "uploads", PoolBody::empty(), Some(0), None)?;
            let (_, text) = self.send(req, "CreateMultipartUpload", key).await?;
            let upload_id = xml_text(&text, "UploadId").ok_or_else(|| format!("CreateMultipartUpload {key}: no UploadId"))?;
            let upload_q = format!("uploadId={}", percent_encode(&upload_id));
            let mut complete = String::from("<CompleteMultipartUpload>");
            let (mut start, mut number) = (0u64, 1u32);
            while start < self.size {
                let len = part.min(self.size - start);
                let body = self.pool.body_range(seed, self.size, start, len);
                let digests = match self.payload {
                    Payload::Signed => Some(Pool::digests(&body)),
                    Payload::Unsigned => None,
                };
                let q = format!("partNumber={number}&{upload_q}");
                let req = self.target.request_query(Method::PUT, key, &q, body, Some(len), digests)?;
                let (headers, _) = self.send(req, "UploadPart", key).await?;
                let etag = headers.get("etag").and_then(|v| v.to_str().ok()).ok_or_else(|| format!("UploadPart {key}: no ETag"))?;
                complete.push_str(&format!("<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>"));
                start += len;
                number += 1;
            }
            complete.push_str("</CompleteMultipartUpload>");
            let len = complete.len() as u64;
            let body = PoolBody::from_bytes(Bytes::from(complete));
            let req = self.target.request_query(Method::POST, key, &upload_q, body, Some(len), None)?;
            let (_, text) = self.send(req, "CompleteMultipartUpload", key).await?;
            // S3 may answer 200 with an error document once the body has started.
            if String::from_utf8_lossy(&text).contains("<Error>") {
                return Err(format!("CompleteMultipartUpload {key}: {}", snippet(&text)));
            }
            Ok(self.size)
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| format!("multipart upload of {key}: timed out"))?
    }

    /// Sends a request whose answer is small; Ok((headers, body)) on a 2xx status.
    async fn send(&self, req: http::Request<PoolBody>, what: &str, key: &str) -> Result<(http::HeaderMap, Bytes), String> {
        let resp = self.client.request(req).await.map_err(|e| format!("{what} {key}: {}", err_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let text = body.collect().await.map_err(|e| format!("{what} {key}: {e}"))?.to_bytes();
        if !parts.status.is_success() {
            return Err(format!("{what} {key}: {} {}", parts.status, snippet(&text)));
        }
        Ok((parts.headers, text))
    }

    /// Downloads a read-set object (or a range of it); Ok((bytes, matched)).
    async fn get(&self, i: usize, range: Option<(u64, u64)>) -> Result<(u64, bool), String> {
        let (key, seed) = self.read_key(i);
        let req = self.target.request(Method::GET, Some(&key), range, PoolBody::empty(), None, None)?;
        let (want_status, want_len, start) = match range {
            // A range past the end (--workload ranged) is answered up to the object's end.
            Some((a, b)) => (StatusCode::PARTIAL_CONTENT, b.min(self.size - 1) - a + 1, a),
            None => (StatusCode::OK, self.size, 0),
        };
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| format!("GET {key}: {}", err_chain(&e)))?;
            let status = resp.status();
            let mut body = resp.into_body();
            if status != want_status {
                let text = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                return Err(format!("GET {key}: {status} {}", snippet(&text)));
            }
            let mut verifier = self.verify.then(|| self.pool.verifier(seed, self.size, start));
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("GET {key} after {n} bytes: {}", err_chain(&e)))?;
                if let Some(d) = frame.data_ref() {
                    n += d.len() as u64;
                    if let Some(v) = verifier.as_mut() {
                        v.feed(d);
                    }
                }
            }
            if n != want_len {
                return Err(format!("GET {key}: {n} bytes instead of {want_len}"));
            }
            Ok((n, verifier.map(|v| v.ok()).unwrap_or(true)))
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| format!("GET {key}: timed out"))?
    }

    /// Reads a read-set object as the Go SDK's downloader does: Range requests of
    /// `range_part` bytes from offset 0 until the object's end. Ok((bytes, matched)).
    async fn get_in_parts(&self, i: usize) -> Result<(u64, bool), String> {
        let part = self.range_part.max(1);
        let (mut start, mut total, mut all_matched) = (0u64, 0u64, true);
        while start < self.size {
            let (n, matched) = self.get(i, Some((start, start + part - 1))).await?;
            total += n;
            all_matched &= matched;
            start += part;
        }
        Ok((total, all_matched))
    }

    /// HEAD of a read-set object; its Content-Length must be the object's size. Ok((0, true)).
    async fn head(&self, i: usize) -> Result<(u64, bool), String> {
        let (key, _) = self.read_key(i);
        let req = self.target.request(Method::HEAD, Some(&key), None, PoolBody::empty(), None, None)?;
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| format!("HEAD {key}: {}", err_chain(&e)))?;
            let status = resp.status();
            let len = resp.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
            let _ = resp.into_body().collect().await;
            match (status, len) {
                (StatusCode::OK, Some(n)) if n == self.size => Ok((0, true)),
                _ => Err(format!("HEAD {key}: {status}, Content-Length {len:?} instead of {}", self.size)),
            }
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| format!("HEAD {key}: timed out"))?
    }

    /// Content-Length of a HEAD, None when absent or not 200.
    async fn head_len(&self, key: &str) -> Option<u64> {
        let req = self.target.request(Method::HEAD, Some(key), None, PoolBody::empty(), None, None).ok()?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req)).await.ok()?.ok()?;
        let len = resp.headers().get("content-length")?.to_str().ok()?.parse().ok();
        let ok = resp.status() == StatusCode::OK;
        let _ = resp.into_body().collect().await;
        if ok {
            len
        } else {
            None
        }
    }

    async fn create_bucket(&self) -> Result<(), String> {
        let req = self.target.request(Method::PUT, None, None, PoolBody::empty(), Some(0), None)?;
        let resp = self.client.request(req).await.map_err(|e| format!("CreateBucket: {}", err_chain(&e)))?;
        let status = resp.status();
        let text = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        if status.is_success() || status == StatusCode::CONFLICT {
            Ok(())
        } else {
            Err(format!("CreateBucket: {status} {}", snippet(&text)))
        }
    }
}

fn err_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The text of the first `<tag>` element of a small XML answer.
fn xml_text(doc: &[u8], tag: &str) -> Option<String> {
    let doc = std::str::from_utf8(doc).ok()?;
    let start = doc.find(&format!("<{tag}>"))? + tag.len() + 2;
    let len = doc[start..].find(&format!("</{tag}>"))?;
    Some(doc[start..start + len].to_string())
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn percent_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn snippet(b: &Bytes) -> String {
    let t = String::from_utf8_lossy(&b[..b.len().min(300)]);
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Limits shared by the workers of one phase.
struct Budget {
    deadline: Instant,
    requests: Option<u64>,
    bytes: Option<u64>,
    started: AtomicU64,
    bytes_started: AtomicU64,
}

impl Budget {
    /// Claims a slot for one request of `size` bytes; false when the phase is over.
    fn claim(&self, size: u64) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        if let Some(n) = self.requests {
            if self.started.fetch_add(1, Ordering::Relaxed) >= n {
                return false;
            }
        }
        if let Some(b) = self.bytes {
            if self.bytes_started.fetch_add(size, Ordering::Relaxed) >= b {
                return false;
            }
        }
        true
    }
}

async fn worker(ctx: Arc<Ctx>, wid: usize, workload: Workload, budget: Arc<Budget>, mut rng: Mix) -> [OpStats; 4] {
    let mut stats: [OpStats; 4] = Default::default();
    let mut iter = 0u64;
    let range_len = ctx.range_len.min(ctx.size / 4).max(1);
    loop {
        let op = match workload {
            Workload::Put => Op::Put,
            Workload::Get => Op::Get,
            Workload::Range | Workload::Ranged | Workload::Soak | Workload::Verify => Op::Range,
            Workload::Head => Op::Head,
            Workload::Mixed => {
                if rng.below(2) == 0 {
                    Op::Get
                } else {
                    Op::Put
                }
            }
        };
        let req_bytes = match op {
            Op::Range if workload == Workload::Ranged => ctx.size,
            Op::Range => range_len,
            Op::Head => 0,
            Op::Put | Op::Get => ctx.size,
        };
        if !budget.claim(req_bytes) {
            break;
        }
        let t0 = Instant::now();
        let result = match op {
            Op::Put => {
                let key = if ctx.create_only {
                    // A new name every time, as PBS's chunks (named by their digest) are.
                    format!("{}/{}/c{wid:03}-{:016x}", ctx.prefix, ctx.label, rng.next_u64())
                } else {
                    format!("{}/{}/w{wid:03}-{}", ctx.prefix, ctx.label, iter % 4)
                };
                ctx.put(&key, rng.next_u64()).await.map(|n| (n, true))
            }
            Op::Get => ctx.get(rng.below(ctx.keys as u64) as usize, None).await,
            Op::Range if workload == Workload::Ranged => ctx.get_in_parts(rng.below(ctx.keys as u64) as usize).await,
            Op::Range => {
                let a = rng.below(ctx.size - range_len + 1);
                ctx.get(rng.below(ctx.keys as u64) as usize, Some((a, a + range_len - 1))).await
            }
            Op::Head => ctx.head(rng.below(ctx.keys as u64) as usize).await,
        };
        let us = t0.elapsed().as_micros() as u64;
        let s = &mut stats[op as usize];
        match result {
            Ok((n, matched)) => {
                s.lat_us.push(us);
                s.bytes += n;
                if !matched {
                    s.corrupt += 1;
                }
            }
            Err(e) => {
                s.errors += 1;
                if s.first_error.is_none() {
                    s.first_error = Some(e);
                }
                // Do not spin on a dead endpoint.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        iter += 1;
    }
    stats
}

async fn run_phase(ctx: &Arc<Ctx>, workload: Workload, concurrency: usize, budget: Budget, seed: u64) -> (Vec<OpStats>, Duration) {
    let budget = Arc::new(budget);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for wid in 0..concurrency {
        let rng = Mix(seed ^ (wid as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        handles.push(tokio::spawn(worker(ctx.clone(), wid, workload, budget.clone(), rng)));
    }
    let mut out: Vec<OpStats> = (0..4).map(|_| OpStats::default()).collect();
    for h in handles {
        for (i, s) in h.await.expect("worker panicked").into_iter().enumerate() {
            out[i].merge(s);
        }
    }
    (out, t0.elapsed())
}

async fn prefill(ctx: &Arc<Ctx>, concurrency: usize, force: bool) -> Result<Option<Duration>, String> {
    let size = ctx.size;
    if !force {
        let (first, _) = ctx.read_key(0);
        let (last, _) = ctx.read_key(ctx.keys - 1);
        if ctx.head_len(&first).await == Some(size) && ctx.head_len(&last).await == Some(size) {
            return Ok(None);
        }
    }
    let t0 = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..concurrency.clamp(1, 8) {
        let (ctx, next) = (ctx.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= ctx.keys {
                    return Ok::<(), String>(());
                }
                let (key, seed) = ctx.read_key(i);
                // A loaded backend sometimes answers 503 (Garage: "database is locked"): retry.
                let mut attempt = 0;
                while let Err(e) = match ctx.part_size {
                    Some(part) => ctx.put_multipart(&key, seed, part).await,
                    None => ctx.put(&key, seed).await,
                } {
                    attempt += 1;
                    if attempt >= 5 {
                        return Err(format!("prefill: {e}"));
                    }
                    tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                }
            }
        }));
    }
    for h in handles {
        h.await.map_err(|e| e.to_string())??;
    }
    Ok(Some(t0.elapsed()))
}

#[derive(Serialize)]
struct OpReport {
    requests: u64,
    errors: u64,
    corrupt: u64,
    mib_s: f64,
    req_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    first_error: Option<String>,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1] as f64 / 1000.0
}

fn op_report(mut s: OpStats, wall: Duration) -> OpReport {
    s.lat_us.sort_unstable();
    let secs = wall.as_secs_f64().max(1e-9);
    OpReport {
        requests: s.lat_us.len() as u64,
        errors: s.errors,
        corrupt: s.corrupt,
        mib_s: s.bytes as f64 / (1 << 20) as f64 / secs,
        req_s: s.lat_us.len() as f64 / secs,
        p50_ms: percentile(&s.lat_us, 50.0),
        p99_ms: percentile(&s.lat_us, 99.0),
        max_ms: s.lat_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        first_error: s.first_error,
    }
}

#[derive(Serialize)]
struct Report {
    label: String,
    endpoint: String,
    protocol: Protocol,
    workload: Workload,
    size: u64,
    size_label: String,
    range_len: Option<u64>,
    /// Part size of the read set's multipart uploads (None: single PUTs).
    multipart_part_size: Option<u64>,
    concurrency: usize,
    payload: Payload,
    verify: bool,
    prefill_s: Option<f64>,
    wall_s: f64,
    /// All operations together.
    total: OpReport,
    put: Option<OpReport>,
    get: Option<OpReport>,
    load_before: String,
    load_after: String,
    window: WindowReport,
}

fn mib(n: u64) -> f64 {
    n as f64 / (1 << 20) as f64
}

fn text_line(r: &Report) -> String {
    let t = &r.total;
    let mut s = format!(
        "{}{} {} c={} {:.1} MiB/s {:.1} req/s p50={:.2}ms p99={:.2}ms ok={} err={}{}",
        if r.label.is_empty() { String::new() } else { format!("{} ", r.label) },
        format!("{:?}", r.workload).to_lowercase(),
        r.size_label,
        r.concurrency,
        t.mib_s,
        t.req_s,
        t.p50_ms,
        t.p99_ms,
        t.requests,
        t.errors,
        if t.corrupt > 0 { format!(" CORRUPT={}", t.corrupt) } else { String::new() },
    );
    for p in &r.window.procs {
        s.push_str(&format!(
            " | {}: cpu={:.2} peak-100ms={:.2} busiest-thread={:.2} crypto-pool={:.2} peak-rss={:.1}MiB",
            p.name,
            p.cpu_cores,
            p.peak_cores_100ms,
            p.busiest_thread_cores,
            p.pool_cores,
            mib(p.peak_rss_hwm.unwrap_or(p.peak_rss_sampled))
        ));
    }
    s.push_str(&format!(
        " | gen cpu={:.2} other cpu={:.2} | load {}",
        r.window.generator_cpu_cores, r.window.other_cpu_cores, r.load_after
    ));
    if let Some(e) = &t.first_error {
        s.push_str(&format!(" | first error: {e}"));
    }
    s
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("s3cp-bench: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let target = Target::new(&args.endpoint, &args.bucket, &args.region, &args.access_key, &args.secret_key, args.protocol)?;
    let connector = match (&args.ca_file, args.endpoint.starts_with("https://")) {
        (Some(ca), true) => Connector::tls(ca)?,
        (None, true) => return Err("an https:// endpoint needs --ca-file".into()),
        (_, false) => Connector::plain(),
    };
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency.max(8) * 2)
        .pool_idle_timeout(Duration::from_secs(20))
        .build(connector);
    if args.concurrency == 0 {
        return Err("--concurrency must be positive".into());
    }
    if args.workload == Workload::Soak {
        return run_soak(args, target, client).await;
    }
    if args.workload == Workload::Verify {
        let log = args.ack_log.as_deref().ok_or("--workload verify needs --ack-log")?;
        let report = verify::run(target, client, log, args.concurrency, args.request_timeout).await?;
        println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
        return if report.passed { Ok(()) } else { Err("verify: acknowledged writes missing or wrong".into()) };
    }
    let size = args.size.ok_or("--size is required")?;
    if size == 0 {
        return Err("--size must be positive".into());
    }
    if args.multipart_part_size == Some(0) {
        return Err("--multipart-part-size must be positive".into());
    }
    let default_keys = ((512u64 << 20) / size).clamp(4, 64) as usize;
    let label = match args.multipart_part_size {
        Some(p) => format!("{}-mp{}", size_label(size), size_label(p)),
        None => size_label(size),
    };
    let ctx = Arc::new(Ctx {
        target,
        client,
        pool: Pool::new(),
        size,
        label,
        range_len: args.range_len,
        range_part: args.range_part,
        prefix: args.prefix.clone(),
        keys: args.keys.unwrap_or(default_keys).max(1),
        payload: args.payload,
        verify: args.verify,
        timeout: args.request_timeout,
        part_size: args.multipart_part_size,
        create_only: args.if_none_match,
    });
    if args.create_bucket {
        ctx.create_bucket().await?;
    }
    let prefill_s = if args.workload != Workload::Put {
        prefill(&ctx, args.concurrency, args.force_prefill).await?.map(|d| d.as_secs_f64())
    } else {
        None
    };
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    if !args.warmup.is_zero() {
        let budget = Budget {
            deadline: Instant::now() + args.warmup,
            requests: None,
            bytes: Some(256 << 20),
            started: AtomicU64::new(0),
            bytes_started: AtomicU64::new(0),
        };
        let (stats, _) = run_phase(&ctx, args.workload, args.concurrency, budget, seed ^ 1).await;
        if let Some(e) = stats.iter().find_map(|s| s.first_error.clone()) {
            if stats.iter().all(|s| s.lat_us.is_empty()) {
                return Err(format!("every warm-up request failed: {e}"));
            }
        }
    }
    let load_before = procstat::loadavg();
    let window = Window::start(&args.watch);
    let budget = Budget {
        deadline: Instant::now() + args.duration,
        requests: args.requests,
        bytes: args.max_bytes,
        started: AtomicU64::new(0),
        bytes_started: AtomicU64::new(0),
    };
    let (mut stats, wall) = run_phase(&ctx, args.workload, args.concurrency, budget, seed).await;
    let window = window.finish(wall);
    let load_after = procstat::loadavg();

    let head = stats.pop().unwrap_or_default();
    let range = stats.pop().unwrap_or_default();
    let get = stats.pop().unwrap_or_default();
    let put = stats.pop().unwrap_or_default();
    let (total, put_r, get_r) = match args.workload {
        Workload::Put => (op_report(put, wall), None, None),
        Workload::Get => (op_report(get, wall), None, None),
        Workload::Range | Workload::Ranged | Workload::Soak | Workload::Verify => (op_report(range, wall), None, None),
        Workload::Head => (op_report(head, wall), None, None),
        Workload::Mixed => {
            let mut all = OpStats::default();
            all.merge(OpStats {
                lat_us: put.lat_us.clone(),
                bytes: put.bytes,
                errors: put.errors,
                corrupt: put.corrupt,
                first_error: put.first_error.clone(),
            });
            all.merge(OpStats {
                lat_us: get.lat_us.clone(),
                bytes: get.bytes,
                errors: get.errors,
                corrupt: get.corrupt,
                first_error: get.first_error.clone(),
            });
            (op_report(all, wall), Some(op_report(put, wall)), Some(op_report(get, wall)))
        }
    };
    let report = Report {
        label: args.label.clone(),
        endpoint: args.endpoint.clone(),
        protocol: args.protocol,
        workload: args.workload,
        size,
        size_label: size_label(size),
        range_len: match args.workload {
            Workload::Range => Some(args.range_len.min(size / 4).max(1)),
            Workload::Ranged => Some(args.range_part),
            _ => None,
        },
        multipart_part_size: args.multipart_part_size,
        concurrency: args.concurrency,
        payload: args.payload,
        verify: args.verify,
        prefill_s,
        wall_s: wall.as_secs_f64(),
        total,
        put: put_r,
        get: get_r,
        load_before,
        load_after,
        window,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
    } else {
        println!("{}", text_line(&report));
    }
    if report.total.requests == 0 {
        return Err(format!(
            "no request succeeded: {}",
            report.total.first_error.as_deref().unwrap_or("(no request was started)")
        ));
    }
    Ok(())
}

async fn run_soak(args: Args, target: Target, client: Client<Connector, PoolBody>) -> Result<(), String> {
    if args.protocol != Protocol::S3 {
        return Err("the soak test speaks S3 only".into());
    }
    if args.create_bucket {
        let req = target.request(Method::PUT, None, None, PoolBody::empty(), Some(0), None)?;
        let resp = client.request(req).await.map_err(|e| format!("CreateBucket: {}", err_chain(&e)))?;
        let status = resp.status();
        if !(status.is_success() || status == StatusCode::CONFLICT) {
            return Err(format!("CreateBucket: {status}"));
        }
    }
    let sargs = soak::SoakArgs {
        concurrency: args.concurrency,
        duration: args.duration,
        max_size: args.size.unwrap_or(8 << 20),
        keys_per_client: args.keys.unwrap_or(8).max(1),
        prefix: format!("{}/soak", args.prefix),
        timeout: args.request_timeout,
        rss_limit: args.rss_limit.unwrap_or((64 + args.concurrency as u64) << 20),
        rss_growth: args.rss_growth,
        rss_interval: args.rss_interval,
        progress: args.progress,
        watch: args.watch,
        pbs: args.pbs,
        attempts: args.attempts,
        ack_log: args.ack_log,
        keep_objects: args.keep_objects,
    };
    let report = soak::run(target, client, sargs).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
    }
    eprintln!("{}", soak::text(&report));
    if report.passed {
        Ok(())
    } else {
        Err("soak test failed".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert_eq!(size_label(4 << 20), "4MiB");
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[5000], 99.0), 5.0);
    }

    #[test]
    fn multipart_answers() {
        let doc = b"<InitiateMultipartUploadResult><Bucket>b</Bucket><UploadId>a1/b+c=</UploadId></InitiateMultipartUploadResult>";
        assert_eq!(xml_text(doc, "UploadId").as_deref(), Some("a1/b+c="));
        assert_eq!(xml_text(doc, "Key"), None);
        assert_eq!(percent_encode("a1/b+c=~"), "a1%2Fb%2Bc%3D~");
    }
}
