//! Multipart uploads. Every part is encrypted on its own by whichever proxy receives it
//! (its own segment, its own data key): nothing about an upload lives in the proxy. The
//! object format needs one thing from the parts (docs/object-format.md, "Multipart"): they
//! are numbered 1..N without gaps and all but the last have the same size, a multiple of
//! the chunk size. That is checked here on the parts the CompleteMultipartUpload body names
//! (parts uploaded but left out are discarded by the backend and do not matter), with their
//! sizes from the backend's part list, before the last byte of the body goes on: an upload
//! that breaks the rule is refused with the rule in the message, and nothing is completed.

use bytes::{Bytes, BytesMut};
use quick_xml::events::Event;
use quick_xml::Reader;
use s3cp_format::object_plain_len;

use crate::backend::Backend;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::request::S3Request;
use crate::xml_body::{self, Rule, COMPLETE};

/// An uploaded part, as the backend lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPart {
    pub number: u32,
    /// Stored (ciphertext) size.
    pub size: u64,
    pub etag: String,
}

/// A part a CompleteMultipartUpload body names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPart {
    pub number: u32,
    pub etag: Option<String>,
}

/// Every uploaded part.
async fn list_parts(backend: &Backend, s3: &S3Request, upload_id: &str) -> Result<Vec<ListedPart>, S3Error> {
    let (bucket, key) = (s3.bucket.as_deref(), s3.key.as_deref());
    let mut parts = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut q = vec![("uploadId".to_string(), upload_id.to_string())];
        if let Some(m) = &marker {
            q.push(("part-number-marker".to_string(), m.clone()));
        }
        let req = backend.request("GET", bucket, key, &q, &[], None)?;
        let (resp, body) = backend.send(bucket, req, None, 8 << 20).await?;
        match resp.status.as_u16() {
            200 => {}
            404 => return Err(s3err(S3ErrorCode::NoSuchUpload, "The specified upload does not exist.")),
            s => {
                log::warn!("backend answered {s} to ListParts for {}", s3.resource());
                return Err(s3err(S3ErrorCode::ServiceUnavailable, "could not list the upload's parts; please retry").with_retry_after(1));
            }
        }
        let page = parse_parts(&body).map_err(|e| S3Error::internal("parsing ListParts", e))?;
        parts.extend(page.parts);
        match (page.truncated, page.next_marker) {
            (true, Some(m)) if marker.as_deref() != Some(m.as_str()) => marker = Some(m),
            _ => break,
        }
    }
    Ok(parts)
}

struct PartsPage {
    parts: Vec<ListedPart>,
    truncated: bool,
    next_marker: Option<String>,
}

fn parse_parts(xml: &[u8]) -> Result<PartsPage, quick_xml::Error> {
    let mut r = Reader::from_reader(xml);
    let mut buf = Vec::new();
    let mut path: Vec<Vec<u8>> = Vec::new();
    let (mut parts, mut truncated, mut next_marker) = (Vec::new(), false, None);
    let (mut num, mut size, mut etag) = (None, None, String::new());
    loop {
        match r.read_event_into(&mut buf)? {
            Event::Start(s) => path.push(s.name().as_ref().to_vec()),
            Event::End(_) => {
                if path.last().map(Vec::as_slice) == Some(b"Part") {
                    if let (Some(number), Some(size)) = (num.take(), size.take()) {
                        parts.push(ListedPart { number, size, etag: std::mem::take(&mut etag) });
                    }
                }
                path.pop();
            }
            Event::Text(t) => {
                let text = t.unescape().unwrap_or_default().trim().to_string();
                let in_part = path.iter().any(|p| p == b"Part");
                match path.last().map(Vec::as_slice) {
                    Some(b"PartNumber") if in_part => num = text.parse().ok(),
                    Some(b"Size") if in_part => size = text.parse().ok(),
                    Some(b"ETag") if in_part => etag = text,
                    Some(b"IsTruncated") => truncated = text == "true",
                    Some(b"NextPartNumberMarker") => next_marker = Some(text),
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(PartsPage { parts, truncated, next_marker })
}

/// S3's smallest part but the last (5 MiB).
const MIN_PART_SIZE: u64 = 5 << 20;

/// The rule, checked on stored part sizes.
pub fn check_layout(parts: &mut [(u32, u64)], chunk_size: u32) -> Result<(), S3Error> {
    parts.sort_unstable();
    let rule = format!(
        "parts of an encrypted multipart upload must be numbered 1..N without gaps, and every part but the last must have the same size, a multiple of {chunk_size} bytes (the encryption chunk size)"
    );
    let bad = |why: String| s3err(S3ErrorCode::InvalidRequest, format!("{why}: {rule}"));
    let plain: Vec<u64> = parts
        .iter()
        .map(|(n, stored)| object_plain_len(*stored, chunk_size, 1).ok_or_else(|| bad(format!("part {n} has an impossible stored size"))))
        .collect::<Result<_, _>>()?;
    // A size refusal of an upload with a part under S3's minimum is the error S3 gives it.
    let under_minimum = plain.len() > 1 && plain[..plain.len() - 1].iter().any(|s| *s < MIN_PART_SIZE);
    let bad_size = |why: String| {
        let code = if under_minimum { S3ErrorCode::EntityTooSmall } else { S3ErrorCode::InvalidRequest };
        s3err(code, format!("{why}: {rule}"))
    };
    for (i, (n, _)) in parts.iter().enumerate() {
        if *n as usize != i + 1 {
            return Err(bad(format!("part {} is missing", i + 1)));
        }
    }
    if let Some((first, rest)) = plain.split_first() {
        if parts.len() > 1 && first % u64::from(chunk_size) != 0 {
            return Err(bad_size(format!("part 1 has {first} bytes")));
        }
        let middle = &rest[..rest.len().saturating_sub(1)];
        if let Some(p) = middle.iter().position(|s| s != first) {
            return Err(bad_size(format!("part {} has {} bytes, part 1 has {first}", p + 2, middle[p])));
        }
        if let Some(last) = rest.last() {
            if last > first {
                return Err(bad_size(format!("the last part has {last} bytes, more than part 1's {first}")));
            }
        }
    }
    Ok(())
}

/// Part checksums in a CompleteMultipartUpload body describe the plaintext parts, which the
/// backend never saw: they are overwritten with spaces (the body keeps its length, which
/// the backend was already told). The proxy verified each part's checksum on upload.
pub fn blank_part_checksums(xml: &mut [u8]) {
    for tag in ["ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256", "ChecksumType"] {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let mut from = 0;
        while let Some(start) = find(&xml[from..], open.as_bytes()).map(|i| i + from) {
            let Some(end) = find(&xml[start..], close.as_bytes()).map(|i| i + start + close.len()) else { break };
            xml[start..end].fill(b' ');
            from = end;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What the backend's part list says about an upload about to be completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadState {
    /// Its uploaded parts (the body then names which ones make the object).
    Parts(Vec<ListedPart>),
    /// No part yet: the Complete body decides (no part listed: MalformedXML; parts listed:
    /// InvalidPart), as in S3.
    NoParts,
    /// Unknown to ListParts: completed already (S3 answers a repeated Complete with the
    /// same result) or never existed. Nothing can be stored from it: the backend answers.
    Gone,
}

/// A CompleteMultipartUpload in progress: the upload's parts as listed before, and its
/// body as collected so far.
pub struct Completion {
    upload: UploadState,
    body: BytesMut,
}

impl Completion {
    /// The upload was unknown to ListParts.
    pub fn upload_is_gone(&self) -> bool {
        self.upload == UploadState::Gone
    }

    /// A new backend attempt collects the body again.
    pub fn restart(&mut self) {
        self.body.clear();
    }
}

/// Reads the upload's parts (ListParts) before a CompleteMultipartUpload, for the check of
/// its body; an empty body is refused at once.
pub(super) async fn before_complete(backend: &Backend, s3: &S3Request) -> Result<Completion, S3Error> {
    if s3.content_length == Some(0) {
        return Err(xml_body::malformed());
    }
    let upload_id = s3.query_value("uploadId").unwrap_or_default().to_string();
    let upload = match list_parts(backend, s3, &upload_id).await {
        Ok(p) if p.is_empty() => UploadState::NoParts,
        Ok(mut p) => {
            p.sort_unstable_by_key(|p| p.number);
            UploadState::Parts(p)
        }
        Err(e) if e.code == S3ErrorCode::NoSuchUpload => UploadState::Gone,
        Err(e) => return Err(e),
    };
    Ok(Completion { upload, body: BytesMut::new() })
}

/// Largest CompleteMultipartUpload body (10,000 parts with ETags and checksums fit).
const MAX_COMPLETE_BODY: usize = 4 << 20;

/// The CompleteMultipartUpload body: collected whole and judged before its last byte goes
/// on (a refused body leaves the backend's request short, and nothing is completed), then
/// passed on with the part checksums blanked.
pub(super) fn complete_body(c: &mut Completion, body: &mut Option<Bytes>, end: bool, chunk_size: u32) -> Result<(), S3Error> {
    if let Some(b) = body.take() {
        if c.body.len() + b.len() > MAX_COMPLETE_BODY {
            return Err(s3err(S3ErrorCode::MalformedXML, "the CompleteMultipartUpload body is too large"));
        }
        c.body.extend_from_slice(&b);
    }
    if !end {
        *body = Some(Bytes::new());
        return Ok(());
    }
    let mut all = std::mem::take(&mut c.body);
    let named = named_parts(&all)?;
    match &c.upload {
        UploadState::NoParts => return Err(invalid_part()),
        UploadState::Parts(listed) => check_named_parts(&named, listed, chunk_size)?,
        UploadState::Gone => {}
    }
    blank_part_checksums(&mut all);
    *body = Some(all.freeze());
    Ok(())
}

fn invalid_part() -> S3Error {
    s3err(S3ErrorCode::InvalidPart, "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag.")
}

/// The parts a CompleteMultipartUpload body names, in its order; the body must follow
/// S3's schema (MalformedXML otherwise).
pub fn named_parts(xml: &[u8]) -> Result<Vec<NamedPart>, S3Error> {
    let mut parts = Vec::new();
    let (mut number, mut etag) = (None, None);
    xml_body::check(Rule::Schema(&COMPLETE), xml, |path, text| {
        match path {
            [_, _, "PartNumber"] => {
                number = Some(text.trim().parse::<u32>().map_err(|_| xml_body::malformed())?);
            }
            [_, _, "ETag"] => etag = Some(text.trim().to_string()),
            [_, "Part"] => {
                // The schema guarantees one PartNumber per Part.
                parts.push(NamedPart { number: number.take().unwrap_or(0), etag: etag.take() });
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(parts)
}

/// The parts a Complete names must be listed in ascending order (as S3 requires), be
/// exactly 1..N (segment k of the object carries part number k, authenticated: an object
/// made of parts {1,3} or {2,3} could never be read), exist with the ETag named, and
/// follow the layout rule. Parts uploaded but not named do not matter: the backend
/// discards them.
pub fn check_named_parts(named: &[NamedPart], listed: &[ListedPart], chunk_size: u32) -> Result<(), S3Error> {
    if named.windows(2).any(|w| w[0].number >= w[1].number) {
        return Err(s3err(S3ErrorCode::InvalidPartOrder, "The list of parts was not in ascending order. Parts must be ordered by part number."));
    }
    if let Some((i, p)) = named.iter().enumerate().find(|(i, p)| p.number as usize != i + 1) {
        let missing = i + 1;
        let after = if i == 0 { "the first part named is".to_string() } else { format!("part {i} is followed by") };
        return Err(s3err(
            S3ErrorCode::InvalidPart,
            format!(
                "the encryption proxy can complete a multipart upload only from parts numbered 1..N without gaps (segment N of an encrypted object is bound to part number N): part {missing} is not named, {after} part {}. Name every part from 1 on (parts left out at the end are discarded)",
                p.number
            ),
        ));
    }
    let etag_norm = |e: &str| e.trim().trim_matches('"').to_ascii_lowercase();
    let mut sizes = Vec::with_capacity(named.len());
    for p in named {
        let found = listed.binary_search_by_key(&p.number, |l| l.number).ok().map(|i| &listed[i]).ok_or_else(invalid_part)?;
        // The sizes below are those of the part the body names: a part uploaded again
        // since the list was read has another ETag.
        if p.etag.as_deref().is_some_and(|e| etag_norm(e) != etag_norm(&found.etag)) {
            return Err(invalid_part());
        }
        sizes.push((found.number, found.size));
    }
    check_layout(&mut sizes, chunk_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3cp_format::segment_cipher_len;

    const C: u32 = 65536;

    fn stored(plain: &[u64]) -> Vec<(u32, u64)> {
        plain.iter().enumerate().map(|(i, p)| (i as u32 + 1, segment_cipher_len(*p, C))).collect()
    }

    #[test]
    fn uniform_parts_pass() {
        check_layout(&mut stored(&[5 << 20, 5 << 20, 1000]), C).unwrap();
        check_layout(&mut stored(&[5 << 20, 5 << 20]), C).unwrap();
        check_layout(&mut stored(&[1234]), C).unwrap();
    }

    #[test]
    fn rule_breakers_under_s3s_minimum_part_size_get_entity_too_small() {
        let e = check_layout(&mut stored(&[10 << 10, 10 << 10, 100]), C).unwrap_err();
        assert_eq!(e.code, S3ErrorCode::EntityTooSmall);
        // Small parts that keep the rule are fine (backends without the minimum).
        check_layout(&mut stored(&[64 << 10, 64 << 10, 100]), C).unwrap();
    }

    #[test]
    fn rule_breakers_are_refused_with_the_rule() {
        for (case, why) in [
            (stored(&[5 << 20, 6 << 20, 1000]), "part 2"),
            (stored(&[(5 << 20) + 1, (5 << 20) + 1, 10]), "part 1 has"),
            (stored(&[5 << 20, 6 << 20]), "last part"),
        ] {
            let mut c = case;
            let e = check_layout(&mut c, C).unwrap_err();
            assert_eq!(e.code, S3ErrorCode::InvalidRequest);
            assert!(e.message.contains(why) && e.message.contains("multiple of 65536"), "{}", e.message);
        }
        let mut gap = stored(&[5 << 20, 5 << 20, 10]);
        gap[1].0 = 5;
        assert!(check_layout(&mut gap, C).unwrap_err().message.contains("part 2 is missing"));
    }

    #[test]
    fn part_checksums_are_blanked_in_place() {
        let mut xml = b"<CompleteMultipartUpload><Part><ETag>\"a\"</ETag><ChecksumCRC32>7z4jdQ==</ChecksumCRC32><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>".to_vec();
        let len = xml.len();
        blank_part_checksums(&mut xml);
        let s = String::from_utf8(xml).unwrap();
        assert_eq!(s.len(), len);
        assert!(!s.contains("Checksum") && s.contains("<PartNumber>1</PartNumber>") && s.contains("<ETag>"));
    }

    #[test]
    fn complete_bodies_are_checked() {
        let ok = br#"<?xml version="1.0"?><CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><ETag>"a"</ETag><PartNumber>1</PartNumber></Part><Part><PartNumber>2</PartNumber><ChecksumCRC32>7z4jdQ==</ChecksumCRC32></Part></CompleteMultipartUpload>"#;
        assert_eq!(
            named_parts(ok).unwrap(),
            vec![NamedPart { number: 1, etag: Some("\"a\"".into()) }, NamedPart { number: 2, etag: None }]
        );
        for bad in [&b""[..], b"garbage", b"<CompleteMultipartUpload></CompleteMultipartUpload>", b"<CompleteMultipartUpload/>",
            b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part>", b"<Other><Part/></Other>",
            b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber></Part></CompleteMultipartUpload>"] {
            assert_eq!(named_parts(bad).unwrap_err().code, S3ErrorCode::MalformedXML, "{}", String::from_utf8_lossy(bad));
        }
    }

    fn listed(plain: &[u64]) -> Vec<ListedPart> {
        stored(plain).into_iter().map(|(number, size)| ListedPart { number, size, etag: format!("\"e{number}\"") }).collect()
    }

    fn named(numbers: &[u32]) -> Vec<NamedPart> {
        numbers.iter().map(|&n| NamedPart { number: n, etag: Some(format!("\"e{n}\"")) }).collect()
    }

    #[test]
    fn named_parts_must_be_one_to_n() {
        let up = listed(&[5 << 20, 5 << 20, 1000]);
        check_named_parts(&named(&[1, 2, 3]), &up, C).unwrap();
        // A stray part left out at the end: the object is parts 1..2.
        check_named_parts(&named(&[1, 2]), &up, C).unwrap();
        check_named_parts(&named(&[1]), &up, C).unwrap();
        for (case, why) in [(&[1, 3][..], "part 2 is not named, part 1 is followed by part 3"), (&[2, 3][..], "part 1 is not named, the first part named is part 2")] {
            let e = check_named_parts(&named(case), &up, C).unwrap_err();
            assert_eq!(e.code, S3ErrorCode::InvalidPart, "{case:?}");
            assert!(e.message.contains(why) && e.message.contains("1..N without gaps"), "{}", e.message);
        }
        for case in [&[2, 1][..], &[1, 1, 2]] {
            assert_eq!(check_named_parts(&named(case), &up, C).unwrap_err().code, S3ErrorCode::InvalidPartOrder, "{case:?}");
        }
    }

    #[test]
    fn named_parts_must_exist_with_their_etag() {
        let up = listed(&[5 << 20, 5 << 20]);
        assert_eq!(check_named_parts(&named(&[1, 2, 3]), &up, C).unwrap_err().code, S3ErrorCode::InvalidPart);
        let mut other = named(&[1, 2]);
        other[1].etag = Some("\"re-uploaded\"".into());
        assert_eq!(check_named_parts(&other, &up, C).unwrap_err().code, S3ErrorCode::InvalidPart);
        // Quotes, case and a missing ETag do not matter.
        let mut loose = named(&[1, 2]);
        loose[0].etag = Some("E1".into());
        loose[1].etag = None;
        check_named_parts(&loose, &up, C).unwrap();
    }

    #[test]
    fn the_layout_is_checked_on_named_parts_only() {
        // Part 3 is larger than part 1 (or part 2 is the short last part): fine when left out.
        let up = listed(&[5 << 20, 1000, 6 << 20]);
        check_named_parts(&named(&[1, 2]), &up, C).unwrap();
        let e = check_named_parts(&named(&[1, 2, 3]), &up, C).unwrap_err();
        // Part 2 (1000 bytes) is not the last one: under S3's 5 MiB minimum.
        assert_eq!(e.code, S3ErrorCode::EntityTooSmall);
        assert!(e.message.contains("same size"), "{}", e.message);
    }

    #[test]
    fn parses_list_parts() {
        let xml = br#"<ListPartsResult><Bucket>b</Bucket><IsTruncated>true</IsTruncated><NextPartNumberMarker>2</NextPartNumberMarker>
            <Part><PartNumber>1</PartNumber><ETag>"x"</ETag><Size>100</Size></Part><Part><PartNumber>2</PartNumber><Size>50</Size></Part></ListPartsResult>"#;
        let p = parse_parts(xml).unwrap();
        let got: Vec<_> = p.parts.iter().map(|l| (l.number, l.size, l.etag.as_str())).collect();
        assert_eq!(got, vec![(1, 100, "\"x\""), (2, 50, "")]);
        assert!(p.truncated);
        assert_eq!(p.next_marker.as_deref(), Some("2"));
    }
}
