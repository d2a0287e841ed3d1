//! The `listing` filter: ListObjects (V1 and V2) and ListParts answers report plaintext sizes.
//!
//! The backend lists ciphertext sizes. The object format makes the plaintext size a pure
//! function of the ciphertext size, the chunk size and the number of segments (parts),
//! and the backend's ETag tells the number of parts (`-N`), so no object is read. The
//! answer is buffered (a page is at most 1000 entries) and rewritten as a whole, keeping
//! every element and query-driven field the backend sent.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use quick_xml::events::{BytesText, Event};
use quick_xml::{Reader, Writer};

use crate::ctx::RequestCtx;
use crate::error::S3Error;
use crate::etag::{client_etag, segments_from_etag};
use crate::filter::Filter;
use crate::request::Operation;

/// Largest listing answer buffered (a 1000-key page is a few hundred KiB).
const MAX_LISTING: usize = 16 << 20;

#[derive(Default)]
pub struct ListingCtx {
    active: bool,
    buf: BytesMut,
}

pub struct ListingFilter {
    chunk_size: u32,
}

impl ListingFilter {
    pub fn new(chunk_size: u32) -> Self {
        Self { chunk_size }
    }
}

#[async_trait]
impl Filter for ListingFilter {
    fn name(&self) -> &'static str {
        "listing"
    }

    async fn upstream_response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        let op = ctx.s3()?.op;
        if resp.status.as_u16() == 200 && matches!(op, Operation::ListObjectsV1 | Operation::ListObjectsV2 | Operation::ListParts) {
            ctx.listing.active = true;
            // The rewritten length is known only at the end: the answer goes out chunked.
            resp.remove_header("content-length");
            resp.remove_header("content-md5");
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
            *body = Some(rewrite_listing(&raw, self.chunk_size)?);
        } else {
            *body = Some(Bytes::new());
        }
        Ok(())
    }
}

/// Rewrites `<Size>` and `<ETag>` of every `<Contents>` entry.
pub fn rewrite_listing(xml: &[u8], chunk_size: u32) -> Result<Bytes, S3Error> {
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
                let events = entry.take().expect("inside an entry");
                for out in rewrite_entry(events, chunk_size) {
                    writer.write_event(out).map_err(|e| bad(&e))?;
                }
            }
            (Some(events), _) => events.push(ev),
            (None, _) => writer.write_event(ev).map_err(|e| bad(&e))?,
        }
    }
    Ok(Bytes::from(writer.into_inner()))
}

/// `<Contents>` of object listings, `<Part>` of ListParts (a part is one segment).
fn is_entry(name: &[u8]) -> bool {
    name == b"Contents" || name == b"Part"
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

fn rewrite_entry(mut events: Vec<Event<'static>>, chunk_size: u32) -> Vec<Event<'static>> {
    if matches!(events.first(), Some(Event::Start(s)) if s.name().as_ref() == b"Part") {
        // Part ETags go back to the backend in CompleteMultipartUpload: keep them.
        if let Some(plain) = field(&events, b"Size").and_then(|s| s.parse::<u64>().ok()).and_then(|s| s3cp_format::object_plain_len(s, chunk_size, 1)) {
            replace_field(&mut events, b"Size", &plain.to_string());
        }
        return events;
    }
    let etag = field(&events, b"ETag");
    let size = field(&events, b"Size").and_then(|s| s.parse::<u64>().ok());
    if let (Some(etag), Some(size)) = (etag, size) {
        let segments = segments_from_etag(&etag);
        // Objects that cannot be in our format (sizes no encryption produces) keep theirs.
        if let Some(plain) = s3cp_format::object_plain_len(size, chunk_size, segments) {
            replace_field(&mut events, b"Size", &plain.to_string());
            replace_field(&mut events, b"ETag", &client_etag(&etag, None));
        }
    }
    events
}
