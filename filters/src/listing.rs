//! The `listing` filter: ListObjects (V1 and V2), ListObjectVersions and ListParts answers
//! report plaintext sizes (and the client's ETags). Every `<Version>` of a versioned bucket
//! is sized as a `<Contents>` entry is (an ambiguous one is asked with its `versionId`);
//! `<DeleteMarker>` entries have no size and pass unchanged.
//!
//! The backend lists stored sizes. The plaintext size of an encrypted object is a pure
//! function of its stored size, its chunk size and its number of segments (the backend's
//! ETag tells the number of parts, `-N`); `listing/sizes.rs` decides each entry, including
//! objects that predate encryption (`unencrypted_objects: passthrough`).
//!
//! With one chunk size ever used (no `encryption.former_chunk_sizes`) and no legacy
//! prefixes, no entry needs more than the listing: the backend's answer is buffered (a
//! page is at most 1000 entries) and rewritten as a whole, keeping every element and
//! query-driven field the backend sent. Otherwise an entry can be ambiguous (its size reads
//! differently under two declared chunk sizes, or it lies under a legacy prefix), and the
//! object's own metadata decides: the filter then fetches the page itself in the `request`
//! phase, HEADs the ambiguous entries (at most [`HEAD_CONCURRENCY`] at a time) and answers
//! with the rewritten page.
//!
//! With `backend.normalize_listings` (every profile's default) each listing answer,
//! ListMultipartUploads and ListParts included, is also completed and put in S3's order
//! (`listing/normalize.rs`): fields a provider leaves out are filled from the request.
//!
//! On GET/HEAD the filter also notices objects whose chunk size is not declared (a warning
//! once per chunk size, and `s3_crypt_proxy_undeclared_chunk_size_reads_total`): their
//! listed sizes can be wrong until the size is added to `former_chunk_sizes`.

mod normalize;
mod sizes;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use percent_encoding::percent_decode_str;
use pingora::http::{RequestHeader, ResponseHeader};
use quick_xml::events::{BytesText, Event};
use quick_xml::{Reader, Writer};
use s3cp_format::meta;

use crate::backend::Backend;
use crate::ctx::RequestCtx;
use crate::error::S3Error;
use crate::etag::{client_etag, segments_from_etag};
use crate::filter::{Filter, Flow, Reply};
use crate::passthrough::{listing_date, LegacyObjects};
use crate::request::Operation;
pub use normalize::{normalize, ListingRequest};
pub use sizes::{Listed, Probe, SizeRule, Sized};

/// Largest listing answer buffered (a 1000-key page is a few hundred KiB).
const MAX_LISTING: usize = 16 << 20;
/// HEADs in flight at once for one listing page.
pub const HEAD_CONCURRENCY: usize = 8;

/// GET/HEAD answers of objects whose chunk size is neither `encryption.chunk_size` nor
/// in `encryption.former_chunk_sizes` (registered by the proxy's metrics).
pub static UNDECLARED_CHUNK_SIZE_READS: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::IntCounter::new(
        "s3_crypt_proxy_undeclared_chunk_size_reads_total",
        "Objects read whose chunk size is not declared in encryption.chunk_size / former_chunk_sizes (listings may misreport their size)",
    )
    .expect("valid metric")
});

#[derive(Default)]
pub struct ListingCtx {
    active: bool,
    buf: BytesMut,
}

pub struct ListingFilter {
    rule: SizeRule,
    backend: Arc<Backend>,
    /// Undeclared chunk sizes already warned about.
    warned: Mutex<HashSet<u32>>,
    /// Fill the fields a backend leaves out of listings (`backend.normalize_listings`).
    normalize: bool,
}

impl ListingFilter {
    pub fn new(chunk_size: u32, former_chunk_sizes: Vec<u32>, legacy: Option<LegacyObjects>, backend: Arc<Backend>) -> Self {
        Self { rule: SizeRule { current: chunk_size, former: former_chunk_sizes, legacy }, backend, warned: Mutex::new(HashSet::new()), normalize: false }
    }

    /// Listings are completed and ordered as S3 sends them (`listing/normalize.rs`).
    pub fn normalizing_listings(mut self, on: bool) -> Self {
        self.normalize = on;
        self
    }

    /// Whether this filter rewrites the answer of `op`.
    fn rewrites(&self, op: Operation) -> bool {
        is_object_listing(op) || op == Operation::ListParts || (self.normalize && normalize::is_normalised(op))
    }

    /// The client's answer: normalised when configured.
    fn finish(&self, body: Bytes, ctx: &RequestCtx) -> Result<Bytes, S3Error> {
        if !self.normalize {
            return Ok(body);
        }
        let s3 = ctx.s3()?;
        let req = ListingRequest { op: s3.op, bucket: s3.bucket.as_deref().unwrap_or(""), key: s3.key.as_deref(), query: &s3.query };
        normalize(&body, &req)
    }

    fn note_chunk_size(&self, resp: &ResponseHeader, ctx: &RequestCtx) {
        let Some(c) = resp.headers.get(meta::HEADER).and_then(|v| v.to_str().ok()).and_then(meta::peek_chunk_size) else { return };
        if self.rule.declared(c) {
            return;
        }
        UNDECLARED_CHUNK_SIZE_READS.inc();
        if self.warned.lock().map(|mut w| w.insert(c)).unwrap_or(false) {
            let resource = ctx.s3.as_ref().map(|s| s.resource()).unwrap_or_default();
            log::warn!(
                "object {resource} was written with chunk size {c}, which is neither encryption.chunk_size ({}) nor in encryption.former_chunk_sizes: listings can misreport the size of such objects; add {c} to former_chunk_sizes",
                self.rule.current
            );
        }
    }

    /// Fetches a ListObjects page from the backend, sizes every entry (asking the objects
    /// the listing leaves ambiguous) and returns the client's answer.
    async fn list_and_size(&self, ctx: &RequestCtx) -> Result<Reply, S3Error> {
        let s3 = ctx.s3()?;
        let bucket = s3.bucket.as_deref();
        // The client's query, without a presigned URL's authentication (`X-Amz-*`; no
        // listing parameter starts so).
        let query: Vec<(String, String)> = s3.query.iter().filter(|(k, _)| !k.starts_with("X-Amz-")).cloned().collect();
        let req = self.backend.request("GET", bucket, None, &query, &[], None)?;
        let (resp, body) = self.backend.send(bucket, req, None, MAX_LISTING).await?;
        if resp.status.as_u16() != 200 {
            // The backend's error, as it is.
            let content_type = resp.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/xml").to_string();
            return Ok(Reply { status: resp.status.as_u16(), headers: vec![("content-type", content_type)], body });
        }
        let url_keys = s3.query_value("encoding-type").is_some_and(|v| v.eq_ignore_ascii_case("url"));
        let mut ask: Vec<Entry> = Vec::new();
        walk(&body, url_keys, self.rule.current, |e| {
            if self.rule.size(e) == Sized::Ask {
                ask.push(entry_of(e));
            }
            None
        })?;
        let probes = self.probe_all(bucket.unwrap_or(""), ask).await;
        let out = walk(&body, url_keys, self.rule.current, |e| {
            Some(match probes.get(&entry_of(e)) {
                // The same object as listed (not replaced since): its metadata decides.
                Some((p, len)) if *len == Some(e.stored) => self.rule.size_after(e, *p),
                Some(_) => self.rule.size_after(e, Probe::Failed),
                None => self.rule.size_without_asking(e),
            })
        })?;
        Ok(Reply { status: 200, headers: vec![("content-type", "application/xml".into())], body: self.finish(out, ctx)? })
    }

    /// HEADs the objects (each listed version by its id), [`HEAD_CONCURRENCY`] at a time.
    async fn probe_all(&self, bucket: &str, keys: Vec<Entry>) -> HashMap<Entry, (Probe, Option<u64>)> {
        let mut out = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut keys = keys.into_iter();
        loop {
            while tasks.len() < HEAD_CONCURRENCY {
                let Some(key) = keys.next() else { break };
                let (backend, bucket) = (self.backend.clone(), bucket.to_string());
                tasks.spawn(async move {
                    let p = probe(&backend, &bucket, &key.0, key.1.as_deref()).await;
                    (key, p)
                });
            }
            match tasks.join_next().await {
                Some(Ok((key, p))) => {
                    out.insert(key, p);
                }
                Some(Err(e)) => log::warn!("listing: a HEAD task failed: {e}"),
                None => break,
            }
        }
        out
    }
}

/// A listed entry to ask: its key and, in a ListObjectVersions page, its version id.
type Entry = (String, Option<String>);

fn entry_of(e: &Listed<'_>) -> Entry {
    (e.key.to_string(), e.version.map(str::to_string))
}

/// What the object's own metadata says about its format, and its stored length (to
/// recognise an object replaced since the listing). A listed version is asked by its id
/// (versions never change, so its length always matches).
async fn probe(backend: &Backend, bucket: &str, key: &str, version: Option<&str>) -> (Probe, Option<u64>) {
    let query: Vec<(String, String)> = version.iter().map(|v| ("versionId".to_string(), v.to_string())).collect();
    let head = match backend.request("HEAD", Some(bucket), Some(key), &query, &[], None) {
        Ok(h) => h,
        Err(_) => return (Probe::Failed, None),
    };
    match backend.send(Some(bucket), head, None, 0).await {
        Ok((resp, _)) if resp.status.as_u16() == 200 => {
            let len = resp.headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            let probe = match resp.headers.get(meta::HEADER).and_then(|v| v.to_str().ok()) {
                Some(v) => meta::peek_chunk_size(v).map_or(Probe::NoMetadata, Probe::Sealed),
                None => Probe::NoMetadata,
            };
            (probe, len)
        }
        Ok((resp, _)) => {
            log::debug!("listing: HEAD {bucket}/{key} answered {}", resp.status);
            (Probe::Failed, None)
        }
        Err(e) => {
            log::warn!("listing: HEAD {bucket}/{key} failed: {}", e.message);
            (Probe::Failed, None)
        }
    }
}

fn is_object_listing(op: Operation) -> bool {
    matches!(op, Operation::ListObjectsV1 | Operation::ListObjectsV2 | Operation::ListObjectVersions)
}

#[async_trait]
impl Filter for ListingFilter {
    fn name(&self) -> &'static str {
        "listing"
    }

    async fn request(&self, _req: &RequestHeader, ctx: &mut RequestCtx) -> Result<Flow, S3Error> {
        if is_object_listing(ctx.s3()?.op) && self.rule.may_ask() {
            return Ok(Flow::Respond(self.list_and_size(ctx).await?));
        }
        Ok(Flow::Continue)
    }

    async fn upstream_response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        let op = ctx.s3()?.op;
        let status = resp.status.as_u16();
        if matches!(op, Operation::GetObject | Operation::HeadObject) && (status == 200 || status == 206) {
            self.note_chunk_size(resp, ctx);
        }
        if status == 200 && self.rewrites(op) {
            ctx.listing.active = true;
            // The rewritten length is known only at the end: the answer goes out chunked.
            resp.remove_header("content-length");
            resp.remove_header("content-md5");
            if self.normalize && !resp.headers.contains_key("content-type") {
                resp.insert_header("content-type", "application/xml").map_err(|e| S3Error::internal("listing rewrite", e))?;
            }
        }
        Ok(())
    }

    fn response_body(&self, body: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        if !ctx.listing.active {
            return Ok(());
        }
        if let Some(b) = body.take() {
            if ctx.listing.buf.len() + b.len() > MAX_LISTING {
                return Err(S3Error::internal("listing rewrite", "listing answer too large"));
            }
            ctx.listing.buf.extend_from_slice(&b);
        }
        if end {
            let raw = std::mem::take(&mut ctx.listing.buf);
            let url_keys = ctx.s3()?.query_value("encoding-type").is_some_and(|v| v.eq_ignore_ascii_case("url"));
            let sized = rewrite_with(&raw, &self.rule, url_keys)?;
            *body = Some(self.finish(sized, ctx)?);
        } else {
            *body = Some(Bytes::new());
        }
        Ok(())
    }
}

/// Rewrites `<Size>` and `<ETag>` of every `<Contents>` entry, and `<Size>` of every
/// `<Part>`, for objects written with `chunk_size` only.
pub fn rewrite_listing(xml: &[u8], chunk_size: u32) -> Result<Bytes, S3Error> {
    rewrite_with(xml, &SizeRule::single(chunk_size), false)
}

/// The rewrite without requests: an ambiguous entry takes the best guess
/// ([`SizeRule::size_without_asking`]).
pub fn rewrite_with(xml: &[u8], rule: &SizeRule, url_keys: bool) -> Result<Bytes, S3Error> {
    walk(xml, url_keys, rule.current, |e| Some(rule.size_without_asking(e)))
}

/// Walks the listing's entries: `size` is called for every object entry and its answer
/// (if any) applied; parts are sized with the current chunk size (every part of an upload
/// in progress is written with it). Returns the rewritten listing.
fn walk(xml: &[u8], url_keys: bool, part_chunk: u32, mut size: impl FnMut(&Listed<'_>) -> Option<Sized>) -> Result<Bytes, S3Error> {
    let bad = |e: &dyn std::fmt::Display| S3Error::internal("parsing the backend's listing", e);
    let mut reader = Reader::from_reader(xml);
    let mut writer = Writer::new(Vec::with_capacity(xml.len() + 64));
    let mut entry: Option<Vec<Event<'static>>> = None;
    let mut buf = Vec::new();
    loop {
        let ev = reader.read_event_into(&mut buf).map_err(|e| bad(&e))?.into_owned();
        buf.clear();
        match (&mut entry, &ev) {
            (_, Event::Eof) => break,
            (None, Event::Start(s)) if is_entry(s.name().as_ref()) => entry = Some(vec![ev]),
            (Some(events), Event::End(e)) if is_entry(e.name().as_ref()) => {
                events.push(ev);
                let mut events = entry.take().expect("inside an entry");
                rewrite_entry(&mut events, url_keys, part_chunk, &mut size);
                for out in events {
                    writer.write_event(out).map_err(|e| bad(&e))?;
                }
            }
            (Some(events), _) => events.push(ev),
            (None, _) => writer.write_event(ev).map_err(|e| bad(&e))?,
        }
    }
    Ok(Bytes::from(writer.into_inner()))
}

/// `<Contents>` of object listings, `<Version>` of ListObjectVersions, `<Part>` of ListParts
/// (a part is one segment). A `<DeleteMarker>` has no size and no ETag: it passes as it is.
fn is_entry(name: &[u8]) -> bool {
    name == b"Contents" || name == b"Version" || name == b"Part"
}

/// The text inside `<name>…</name>` among an entry's events.
fn field(events: &[Event<'static>], name: &[u8]) -> Option<String> {
    let i = events.iter().position(|e| matches!(e, Event::Start(s) if s.name().as_ref() == name))?;
    match events.get(i + 1) {
        Some(Event::Text(t)) => t.unescape().ok().map(|c| c.into_owned()),
        _ => None,
    }
}

fn replace_field(events: &mut [Event<'static>], name: &[u8], value: &str) {
    if let Some(i) = events.iter().position(|e| matches!(e, Event::Start(s) if s.name().as_ref() == name)) {
        if let Some(slot @ Event::Text(_)) = events.get_mut(i + 1) {
            *slot = Event::Text(BytesText::new(value).into_owned());
        }
    }
}

/// A listed key as the object's name (`encoding-type=url` listings percent-encode it, with
/// `+` for a space).
fn listed_key(raw: &str, url_keys: bool) -> String {
    if url_keys {
        percent_decode_str(&raw.replace('+', " ")).decode_utf8_lossy().into_owned()
    } else {
        raw.to_string()
    }
}

fn rewrite_entry(events: &mut [Event<'static>], url_keys: bool, part_chunk: u32, size: &mut impl FnMut(&Listed<'_>) -> Option<Sized>) {
    let stored = field(events, b"Size").and_then(|s| s.parse::<u64>().ok());
    if matches!(events.first(), Some(Event::Start(s)) if s.name().as_ref() == b"Part") {
        // Part ETags go back to the backend in CompleteMultipartUpload: keep them. A part is
        // one segment, written with the current chunk size.
        if let Some(plain) = stored.and_then(|s| s3cp_format::object_plain_len(s, part_chunk, 1)) {
            replace_field(events, b"Size", &plain.to_string());
        }
        return;
    }
    let (Some(etag), Some(stored)) = (field(events, b"ETag"), stored) else { return };
    let key = listed_key(&field(events, b"Key").unwrap_or_default(), url_keys);
    let version = field(events, b"VersionId").filter(|v| v != "null");
    let listed = Listed {
        key: &key,
        version: version.as_deref(),
        stored,
        segments: segments_from_etag(&etag),
        last_modified: field(events, b"LastModified").and_then(|v| listing_date(&v)),
    };
    if let Some(Sized::Encrypted(plain)) = size(&listed) {
        replace_field(events, b"Size", &plain.to_string());
        replace_field(events, b"ETag", &client_etag(&etag, None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3cp_format::object_cipher_len;

    #[test]
    fn version_listings_show_plaintext_sizes_and_keep_delete_markers() {
        const CHUNK: u32 = 65536;
        let single = object_cipher_len(1000, CHUNK, None);
        let multi = object_cipher_len(6 << 20, CHUNK, Some(5 << 20));
        let xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>d/</Prefix><KeyMarker></KeyMarker><VersionIdMarker></VersionIdMarker><NextKeyMarker>d/a</NextKeyMarker><NextVersionIdMarker>v1</NextVersionIdMarker><MaxKeys>3</MaxKeys><IsTruncated>true</IsTruncated><DeleteMarker><Key>d/a</Key><VersionId>v3</VersionId><IsLatest>true</IsLatest><LastModified>2026-12-06T03:00:00.000Z</LastModified></DeleteMarker><Version><Key>d/a</Key><VersionId>v2</VersionId><IsLatest>false</IsLatest><LastModified>2026-12-06T02:00:00.000Z</LastModified><ETag>"0123456789abcdef0123456789abcdef-2"</ETag><Size>{multi}</Size><StorageClass>STANDARD</StorageClass></Version><Version><Key>d/a</Key><VersionId>v1</VersionId><IsLatest>false</IsLatest><LastModified>2026-12-06T01:00:00.000Z</LastModified><ETag>"0123456789abcdef0123456789abcdef"</ETag><Size>{single}</Size><StorageClass>STANDARD</StorageClass></Version><CommonPrefixes><Prefix>d/sub/</Prefix></CommonPrefixes></ListVersionsResult>"#
        );
        let out = String::from_utf8(rewrite_listing(xml.as_bytes(), CHUNK).unwrap().to_vec()).unwrap().replace("&quot;", "\"");
        assert!(out.contains(&format!("<Size>{}</Size>", 6 << 20)), "{out}");
        assert!(out.contains("<Size>1000</Size>"), "{out}");
        assert!(!out.contains(&format!("<Size>{single}</Size>")) && !out.contains(&format!("<Size>{multi}</Size>")), "{out}");
        assert!(out.contains(r#"<ETag>"0123456789abcdef0123456789abcdef-1"</ETag>"#), "{out}");
        assert!(out.contains(r#"<ETag>"0123456789abcdef0123456789abcdef-2"</ETag>"#), "{out}");
        // Delete markers, markers and prefixes pass as they are.
        for kept in ["<DeleteMarker><Key>d/a</Key><VersionId>v3</VersionId><IsLatest>true</IsLatest>", "<NextVersionIdMarker>v1</NextVersionIdMarker>", "<Prefix>d/sub/</Prefix>", "<VersionId>v2</VersionId>"] {
            assert!(out.contains(kept), "{kept} in {out}");
        }
    }
}
