//! Range GETs that fetch only the ciphertext chunks holding the requested bytes, and the
//! header probes that authenticate what a read announces.
//!
//! A small probe reads the first segment header (and with it the object's length, ETag
//! and sealed metadata); for a multipart object whose range starts in a later part, a
//! second probe reads that part's header. The main request then asks the backend for just
//! the planned ciphertext bytes, pinned with `If-Match` to the probed ETag so that an object
//! replaced in between is noticed instead of mixed.
//!
//! Every length a read announces is checked against authenticated headers before the
//! answer is sent (reader rule 5.11): the first header always, and for a multipart object
//! the last one too when the range does not reach it, since the total depends on it.

use s3cp_format::{meta, plan_range, FormatError, KeyRing, Layout, ObjectId, RangePlan, SegmentHeader, HEADER_LEN};

use super::known::{Known, KnownObjects};
use super::range::ByteRange;
use crate::backend::Backend;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::request::S3Request;

/// A planned ranged read.
#[derive(Debug, Clone)]
pub struct RangedRead {
    pub plan: RangePlan,
    /// The header of the segment the plan starts in; `None` when it comes with the data (the
    /// backend is then asked from `plan.header_offset`, and the plan starts at that segment's
    /// first chunk).
    pub header: Option<bytes::Bytes>,
    /// Plaintext the plan decrypts before `first` (with the header fetched with the data, the
    /// plan starts at the segment's first chunk).
    pub lead: u64,
    pub backend_etag: String,
    pub plain_len: u64,
    pub first: u64,
    pub last: u64,
    /// The object's segment (= part) count, for `x-amz-mp-parts-count` (multipart objects only).
    pub parts_count: Option<u32>,
    /// Planned from what this replica remembered of the object, without probes: an answer
    /// for another version means the read is planned anew.
    pub remembered: bool,
    /// The stored length of the version planned for (its answer must show it).
    pub stored_len: Option<u64>,
}

impl RangedRead {
    /// The first stored byte to ask the backend for: the segment header when it comes with
    /// the data, else the first chunk needed.
    pub fn fetch_start(&self) -> u64 {
        if self.header.is_some() {
            self.plan.cipher_start
        } else {
            self.plan.header_offset
        }
    }
}

/// What a planned read wants: a byte range, or a part (`partNumber`) of the plaintext.
#[derive(Debug, Clone, Copy)]
pub enum Want {
    Range(ByteRange),
    Part(u32),
}

pub enum Prepared {
    Plan(RangedRead),
    /// The range lies outside the object (answer 416 with the plaintext length).
    Unsatisfiable(u64),
    /// `partNumber` beyond the object's part count.
    NoSuchPart,
    /// Not an object the proxy can plan for (absent, not encrypted, …): the ordinary read
    /// path answers it.
    Fallback,
    /// The stored object does not match what its authenticated headers say.
    Damaged(FormatError),
}

/// What a header probe found.
enum Probe {
    /// The object's answer header and the 108 bytes at the probed offset.
    Header(Box<pingora::http::ResponseHeader>, bytes::Bytes),
    /// Anything but a 206 with exactly those bytes (its status).
    Other(u16),
}

async fn probe(backend: &Backend, obj: ObjectId<'_>, version: Option<&str>, from: u64, if_match: Option<&str>) -> Result<Probe, S3Error> {
    let (bucket, key) = (Some(obj.bucket), Some(obj.key));
    let range = format!("bytes={}-{}", from, from + HEADER_LEN as u64 - 1);
    let mut headers = vec![("range", range.as_str())];
    if let Some(e) = if_match {
        headers.push(("if-match", e));
    }
    let query: Vec<(String, String)> = version.iter().map(|v| ("versionId".to_string(), v.to_string())).collect();
    let req = backend.request("GET", bucket, key, &query, &headers, None)?;
    let mut ex = backend.open(bucket, req).await?;
    let resp = ex.read_header().await?;
    let status = resp.status.as_u16();
    if status != 206 {
        // Absent, not ranged, …: the ordinary read answers it; this body is not wanted
        // (it may be an error document or, from a backend ignoring Range, the whole object).
        ex.release_without_body().await;
        return Ok(Probe::Other(status));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(piece) = ex.read_body().await? {
        if body.len() + piece.len() > HEADER_LEN {
            ex.release_without_body().await;
            return Ok(Probe::Other(status));
        }
        body.extend_from_slice(&piece);
    }
    ex.release().await;
    Ok(if body.len() == HEADER_LEN { Probe::Header(Box::new(resp), body.freeze()) } else { Probe::Other(status) })
}

/// Parses and authenticates a segment header read under the name `obj`.
fn open_header(ring: &KeyRing, obj: ObjectId<'_>, bytes: &[u8]) -> Result<SegmentHeader, FormatError> {
    let hdr = SegmentHeader::parse(bytes).map_err(|e| if e == FormatError::NotEncrypted { FormatError::HeaderTampered } else { e })?;
    hdr.open(ring, &obj.name_ad())?;
    Ok(hdr)
}

/// Authenticates `bytes` as the header of segment `ordinal` of `layout` (for segment 0 of a
/// multipart object, learning the part length).
fn check_header(ring: &KeyRing, obj: ObjectId<'_>, bytes: &[u8], layout: &mut Layout, ordinal: u32) -> Result<(), FormatError> {
    open_header(ring, obj, bytes).and_then(|hdr| layout.check(ordinal, &hdr))
}

/// The object changed between two requests of one read.
pub(super) fn changed() -> S3Error {
    s3err(S3ErrorCode::ServiceUnavailable, "The object changed while it was being read; please retry").with_retry_after(1)
}

/// A probe answered with `status` (not a partial answer): the object changed (412), is
/// shorter than the header's place (416: damage), or the backend failed.
fn unexpected(obj: ObjectId<'_>, status: u16) -> Result<FormatError, S3Error> {
    match status {
        412 => Err(changed()),
        416 => Ok(FormatError::Truncated),
        // An archived object (GLACIER, DEEP_ARCHIVE, …) is not readable until restored; its
        // headers cannot be read, so the length a HEAD would announce cannot be authenticated.
        403 => Err(s3err(
            S3ErrorCode::InvalidObjectState,
            "The backend refused reading the object's content (403): an object in an archive storage class must be restored (RestoreObject) before its encrypted segment headers, and with them its length, can be read through the encryption proxy",
        )
        .with_resource(format!("/{}/{}", obj.bucket, obj.key))),
        // The whole object for a Range of 108 bytes of an object of at least 124: the backend
        // ignores Range. Asking again would get the same; a retryable 503 would be retried forever.
        200 => {
            log::warn!("backend answered a segment header probe of /{}/{} with the whole object: it does not honour Range", obj.bucket, obj.key);
            Err(s3err(
                S3ErrorCode::NotImplemented,
                "The backend answered a Range request with the whole object (200): reading an encrypted object's length and ranges needs a backend that honours Range",
            )
            .with_resource(format!("/{}/{}", obj.bucket, obj.key)))
        }
        s => {
            log::warn!("backend answered {s} to a segment header probe of /{}/{}", obj.bucket, obj.key);
            Err(s3err(S3ErrorCode::ServiceUnavailable, "the object could not be read; please retry").with_retry_after(1))
        }
    }
}

/// Reads and authenticates the header of segment `ordinal` of the object version pinned by
/// `etag`, and checks it against `layout`. Returns its bytes.
async fn read_header_at(backend: &Backend, ring: &KeyRing, obj: ObjectId<'_>, version: Option<&str>, etag: &str, layout: &mut Layout, ordinal: u32) -> Result<Result<bytes::Bytes, FormatError>, S3Error> {
    let offset = layout.segment_offset(ordinal).unwrap_or(0);
    match probe(backend, obj, version, offset, Some(etag)).await? {
        Probe::Header(_, b) => Ok(check_header(ring, obj, &b, layout, ordinal).map(|()| b)),
        Probe::Other(status) => unexpected(obj, status).map(Err),
    }
}

/// Checks the headers an announced length depends on: segment 0's always, and for a
/// multipart object the last segment's too, which holds the rest of the total. Returns the
/// object as those headers describe it (remembered for later reads).
pub async fn verify_layout(backend: &Backend, ring: &KeyRing, obj: ObjectId<'_>, version: Option<&str>, etag: &str, mut layout: Layout) -> Result<Result<Known, FormatError>, S3Error> {
    let first = match read_header_at(backend, ring, obj, version, etag, &mut layout, 0).await? {
        Ok(b) => b,
        Err(e) => return Ok(Err(e)),
    };
    let mut known = Known::new(etag.to_string(), layout, first);
    let segments = layout.segments;
    if segments > 1 {
        match read_header_at(backend, ring, obj, version, etag, &mut known.layout, segments - 1).await? {
            Ok(b) => known.add_header(segments - 1, b),
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(known))
}

/// A Range or `partNumber` GET planned from what this replica remembers of the object: one
/// backend request, pinned to the remembered version. Only a plan comes from memory: a
/// length, part count or shape that refuses the read may be out of date, and is asked of the
/// backend.
pub fn remembered_plan(remembered: &KnownObjects, s3: &S3Request, want: Want) -> Option<RangedRead> {
    let obj = ObjectId { bucket: s3.bucket.as_deref().unwrap_or(""), key: s3.key.as_deref().unwrap_or("") };
    let planned = remembered.with(obj, s3.query_value("versionId"), |known| plan_known(known, want, HeaderRead::WithData))?;
    match planned {
        Planning::Done(Prepared::Plan(read)) => Some(RangedRead { remembered: true, ..read }),
        _ => None,
    }
}

/// Plans a Range or `partNumber` GET with header probes: on what this replica remembers of
/// the object, the probes it still needs pinned to that version; else (nothing remembered,
/// or the remembered version is gone) from the first header on. Remembered for later reads.
pub async fn prepare(backend: &Backend, ring: &KeyRing, remember: &KnownObjects, s3: &S3Request, want: Want) -> Result<Prepared, S3Error> {
    let obj = ObjectId { bucket: s3.bucket.as_deref().unwrap_or(""), key: s3.key.as_deref().unwrap_or("") };
    let version = s3.query_value("versionId");
    if let Some(mut known) = remember.get(obj, version) {
        if let Ok(Prepared::Plan(read)) = complete_plan(backend, ring, obj, version, &mut known, want, HeaderRead::WithData).await {
            remember.remember(obj, version, known);
            return Ok(Prepared::Plan(RangedRead { remembered: true, ..read }));
        }
        // Replaced (412 to a pinned probe), refused or damaged: asked of the backend anew.
        remember.forget(obj, version);
    }
    prepare_object(backend, ring, obj, version, want, HeaderRead::WithData, None, Some(remember)).await
}

/// How a planned read gets the header of the segment its range starts in (beyond the first).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum HeaderRead {
    /// With the data when it is close ahead of the first chunk needed (a range starting at a
    /// part boundary, a `partNumber` read): one request less; the reader takes the header
    /// from the start of the answer.
    WithData,
    /// Always by a probe of its own (readers that need it before the data).
    Probe,
}

/// Plans a read of `want` from the stored object `obj`, probing its headers.
/// `pinned`: the backend ETag of an answer already received for this read (a speculative
/// one): the plan must be made on that same version (a replaced object is read anew whole).
/// `remember`: where what the probes established is kept for later reads.
#[allow(clippy::too_many_arguments)]
pub async fn prepare_object(backend: &Backend, ring: &KeyRing, obj: ObjectId<'_>, version: Option<&str>, want: Want, header_read: HeaderRead, pinned: Option<&str>, remember: Option<&KnownObjects>) -> Result<Prepared, S3Error> {
    let mut known = match learn(backend, ring, obj, version, pinned).await? {
        Ok(known) => known,
        Err(prepared) => {
            if let (Some(r), Prepared::Damaged(_)) = (remember, &prepared) {
                r.forget(obj, version);
            }
            return Ok(prepared);
        }
    };
    let prepared = complete_plan(backend, ring, obj, version, &mut known, want, header_read).await?;
    if let Some(r) = remember {
        match prepared {
            Prepared::Damaged(_) => r.forget(obj, version),
            _ => r.remember(obj, version, known),
        }
    }
    Ok(prepared)
}

/// Plans `want` on `known`, reading (pinned to its version) the segment headers the plan
/// still needs, which `known` keeps.
async fn complete_plan(backend: &Backend, ring: &KeyRing, obj: ObjectId<'_>, version: Option<&str>, known: &mut Known, want: Want, header_read: HeaderRead) -> Result<Prepared, S3Error> {
    loop {
        match plan_known(known, want, header_read) {
            Planning::Done(prepared) => return Ok(prepared),
            Planning::NeedHeader(ordinal) => {
                let etag = known.backend_etag.clone();
                match read_header_at(backend, ring, obj, version, &etag, &mut known.layout, ordinal).await? {
                    Ok(b) => known.add_header(ordinal, b),
                    Err(e) => return Ok(Prepared::Damaged(e)),
                }
            }
        }
    }
}

/// Reads the first segment header, which comes with the object's length, ETag and sealed
/// metadata, and authenticates the layout it announces. `Err`: what the read becomes
/// instead (`Fallback`, `Damaged`).
async fn learn(backend: &Backend, ring: &KeyRing, obj: ObjectId<'_>, version: Option<&str>, pinned: Option<&str>) -> Result<Result<Known, Prepared>, S3Error> {
    let Probe::Header(resp, first_header) = probe(backend, obj, version, 0, pinned).await? else { return Ok(Err(Prepared::Fallback)) };
    let h = |n: &str| resp.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (Some(sealed), Some(etag), Some(content_range)) = (h(meta::HEADER), h("etag"), h("content-range")) else {
        return Ok(Err(Prepared::Fallback));
    };
    // Metadata that does not open is reported by the ordinary read path.
    let Ok(opened) = meta::open(ring, obj, &sealed) else { return Ok(Err(Prepared::Fallback)) };
    let Some(total) = content_range.rsplit('/').next().and_then(|t| t.parse::<u64>().ok()) else {
        return Ok(Err(Prepared::Fallback));
    };
    let mut layout = match super::metadata::Sealed::parse(&opened.payload).and_then(|p| p.announced_layout(opened.chunk_size, total, &etag)) {
        Ok((layout, _)) => layout,
        Err(e) => return Ok(Err(Prepared::Damaged(e))),
    };
    // Segment 0's header, authenticated; a multipart object's part length is learned here.
    if let Err(e) = check_header(ring, obj, &first_header, &mut layout, 0) {
        return Ok(Err(Prepared::Damaged(e)));
    }
    Ok(Ok(Known::new(etag, layout, first_header)))
}

/// A plan, or the segment header it still needs read.
enum Planning {
    Done(Prepared),
    NeedHeader(u32),
}

/// Plans `want` on what is known of the object.
fn plan_known(known: &Known, want: Want, header_read: HeaderRead) -> Planning {
    let layout = known.layout;
    let plain_len = layout.plain_len;
    let segments = layout.segments;
    let part_len = layout.part_len.unwrap_or(plain_len);
    let (first, last) = match want {
        Want::Range(range) => match range.resolve(plain_len) {
            Some(r) => r,
            None => return Planning::Done(Prepared::Unsatisfiable(plain_len)),
        },
        Want::Part(n) => {
            if n == 0 || n > segments {
                return Planning::Done(Prepared::NoSuchPart);
            }
            // Part n is segment n: every part but the last holds the first one's length.
            let first = u64::from(n - 1) * part_len;
            let end = (first + part_len).min(plain_len);
            if part_len == 0 || first >= end {
                // An empty object: the ordinary read answers it whole.
                return Planning::Done(Prepared::Fallback);
            }
            (first, end - 1)
        }
    };
    let multipart = (segments > 1).then_some(part_len);
    let Some(plan) = plan_range(first, last, plain_len, layout.chunk_size, multipart) else { return Planning::Done(Prepared::Fallback) };
    // The plan from the first chunk of the segment the range starts in: its header is then
    // the start of the data.
    let from_segment = plan_range(u64::from(plan.segment) * part_len, last, plain_len, layout.chunk_size, multipart)
        .filter(|whole| header_read == HeaderRead::WithData && plan.cipher_start - whole.cipher_start <= super::range::AHEAD_ALWAYS);
    let (plan, header, lead) = if let Some(h) = known.header(plan.segment) {
        (plan, Some(h.clone()), 0)
    } else if let Some(whole) = from_segment {
        let lead = first - u64::from(plan.segment) * part_len;
        (whole, None, lead)
    } else {
        return Planning::NeedHeader(plan.segment);
    };
    // The total (Content-Range) of a multipart object rests on its last segment's header:
    // check it here unless the range reaches that segment (the range reader checks it then).
    let last_segment = u32::try_from(last.min(plain_len - 1) / part_len).unwrap_or(u32::MAX);
    if segments > 1 && last_segment + 1 < segments && !known.last_checked {
        return Planning::NeedHeader(segments - 1);
    }
    // A multipart object (backend ETag `…-N`, even for N = 1) reports its part count.
    let parts_count = known.backend_etag.trim_matches('"').contains('-').then_some(segments);
    let backend_etag = known.backend_etag.clone();
    Planning::Done(Prepared::Plan(RangedRead { plan, header, lead, backend_etag, plain_len, first, last, parts_count, remembered: false, stored_len: known.stored_len() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_answers_that_are_not_partial() {
        let obj = ObjectId { bucket: "b", key: "k" };
        assert_eq!(unexpected(obj, 416).unwrap(), FormatError::Truncated);
        let changed = unexpected(obj, 412).unwrap_err();
        assert_eq!((changed.status(), changed.retry_after), (503, Some(1)));
        let failed = unexpected(obj, 500).unwrap_err();
        assert_eq!((failed.status(), failed.retry_after), (503, Some(1)));
        // A backend that ignores Range would answer every retry the same: not retryable.
        let ignored = unexpected(obj, 200).unwrap_err();
        assert_eq!((ignored.code, ignored.retry_after), (S3ErrorCode::NotImplemented, None));
        assert_eq!(ignored.status(), 501);
    }

    const C: u32 = 65_536;
    const FULL: u64 = 65_536 + 16;

    fn known(plain_len: u64, segments: u32, part_len: u64) -> Known {
        let layout = Layout { plain_len, chunk_size: C, segments, part_len: Some(part_len) };
        Known::new("\"etag-3\"".into(), layout, bytes::Bytes::from_static(b"first"))
    }

    fn plan(k: &Known, want: Want) -> RangedRead {
        match plan_known(k, want, HeaderRead::WithData) {
            Planning::Done(Prepared::Plan(r)) => r,
            Planning::Done(_) => panic!("not a plan"),
            Planning::NeedHeader(s) => panic!("needs header {s}"),
        }
    }

    #[test]
    fn a_remembered_single_part_object_plans_any_range_without_probes() {
        let k = known(3 << 20, 1, 3 << 20);
        let r = plan(&k, Want::Range(ByteRange::FromTo(2_000_000, 2_000_099)));
        // Only the chunk holding the range, after the (remembered) header.
        let j = 2_000_000 / u64::from(C);
        assert_eq!((r.plan.cipher_start, r.plan.cipher_end), (108 + j * FULL, 108 + j * FULL + FULL - 1));
        assert_eq!(r.header.as_deref(), Some(&b"first"[..]));
        assert_eq!((r.first, r.last, r.plain_len, r.lead), (2_000_000, 2_000_099, 3 << 20, 0));
        assert_eq!(r.fetch_start(), r.plan.cipher_start);
        // A suffix counts from the remembered length.
        let r = plan(&k, Want::Range(ByteRange::Suffix(10)));
        assert_eq!((r.first, r.last), ((3 << 20) - 10, (3 << 20) - 1));
        // What refuses a read is never answered from memory (prepare asks the backend).
        assert!(matches!(plan_known(&k, Want::Range(ByteRange::From(3 << 20)), HeaderRead::WithData), Planning::Done(Prepared::Unsatisfiable(_))));
    }

    #[test]
    fn a_multipart_object_needs_its_last_header_and_far_segment_headers() {
        let part = 5u64 << 20;
        let mut k = known(2 * part + 1000, 3, part);
        // A range inside part 1 announces a total that rests on the last header.
        assert!(matches!(plan_known(&k, Want::Range(ByteRange::FromTo(0, 99)), HeaderRead::WithData), Planning::NeedHeader(2)));
        k.add_header(2, bytes::Bytes::from_static(b"last"));
        assert!(k.last_checked);
        let r = plan(&k, Want::Range(ByteRange::FromTo(0, 99)));
        assert_eq!(r.header.as_deref(), Some(&b"first"[..]));
        assert_eq!(r.parts_count, Some(3));
        // Far into part 2: its header is read first; at its start it comes with the data.
        let deep = Want::Range(ByteRange::FromTo(part + 3_000_000, part + 3_000_099));
        assert!(matches!(plan_known(&k, deep, HeaderRead::WithData), Planning::NeedHeader(1)));
        let r = plan(&k, Want::Part(2));
        assert!(r.header.is_none());
        assert_eq!(r.fetch_start(), r.plan.header_offset);
        assert!(matches!(plan_known(&k, Want::Part(2), HeaderRead::Probe), Planning::NeedHeader(1)));
        k.add_header(1, bytes::Bytes::from_static(b"second"));
        let r = plan(&k, deep);
        assert_eq!(r.header.as_deref(), Some(&b"second"[..]));
        assert_eq!(r.plan.segment, 1);
        // The last part: its own header comes with the data (no separate check needed).
        let r = plan(&k, Want::Part(3));
        assert_eq!(r.header.as_deref(), Some(&b"last"[..]));
        assert!(matches!(plan_known(&k, Want::Part(4), HeaderRead::WithData), Planning::Done(Prepared::NoSuchPart)));
    }
}
