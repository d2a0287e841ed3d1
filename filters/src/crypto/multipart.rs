//! Multipart uploads. Every part is encrypted on its own by whichever proxy receives it
//! (its own segment, its own data key): nothing about an upload lives in the proxy. The
//! object format needs one thing from the parts (docs/object-format.md, "Multipart"): they
//! are numbered 1..N without gaps and all but the last have the same size, a multiple of
//! the chunk size. That is checked here, from the backend's part list, before the upload is
//! completed; an upload that breaks the rule is refused with the rule in the message.

use quick_xml::events::Event;
use quick_xml::Reader;
use s3cp_format::object_plain_len;

use crate::backend::Backend;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::request::S3Request;

/// (part number, stored size) of every uploaded part.
async fn list_parts(backend: &Backend, s3: &S3Request, upload_id: &str) -> Result<Vec<(u32, u64)>, S3Error> {
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
    parts: Vec<(u32, u64)>,
    truncated: bool,
    next_marker: Option<String>,
}

fn parse_parts(xml: &[u8]) -> Result<PartsPage, quick_xml::Error> {
    let mut r = Reader::from_reader(xml);
    let mut buf = Vec::new();
    let mut path: Vec<Vec<u8>> = Vec::new();
    let (mut parts, mut truncated, mut next_marker) = (Vec::new(), false, None);
    let (mut num, mut size) = (None, None);
    loop {
        match r.read_event_into(&mut buf)? {
            Event::Start(s) => path.push(s.name().as_ref().to_vec()),
            Event::End(_) => {
                if path.last().map(Vec::as_slice) == Some(b"Part") {
                    if let (Some(n), Some(sz)) = (num.take(), size.take()) {
                        parts.push((n, sz));
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
    for (i, (n, _)) in parts.iter().enumerate() {
        if *n as usize != i + 1 {
            return Err(bad(format!("part {} is missing", i + 1)));
        }
    }
    if let Some((first, rest)) = plain.split_first() {
        if parts.len() > 1 && first % u64::from(chunk_size) != 0 {
            return Err(bad(format!("part 1 has {first} bytes")));
        }
        let middle = &rest[..rest.len().saturating_sub(1)];
        if let Some(p) = middle.iter().position(|s| s != first) {
            return Err(bad(format!("part {} has {} bytes, part 1 has {first}", p + 2, middle[p])));
        }
        if let Some(last) = rest.last() {
            if last > first {
                return Err(bad(format!("the last part has {last} bytes, more than part 1's {first}")));
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    /// Parts that follow the layout rule.
    Parts,
    /// No part yet: the Complete body decides (no part listed: MalformedXML; parts listed:
    /// InvalidPart), as in S3.
    NoParts,
    /// Unknown to ListParts: completed already (S3 answers a repeated Complete with the
    /// same result) or never existed. Nothing can be stored from it: the backend answers.
    Gone,
}

/// Refuses to complete an upload whose parts break the layout rule.
pub async fn check_before_complete(backend: &Backend, s3: &S3Request, chunk_size: u32) -> Result<UploadState, S3Error> {
    let upload_id = s3.query_value("uploadId").unwrap_or_default().to_string();
    let mut parts = match list_parts(backend, s3, &upload_id).await {
        Ok(p) => p,
        Err(e) if e.code == S3ErrorCode::NoSuchUpload => return Ok(UploadState::Gone),
        Err(e) => return Err(e),
    };
    if parts.is_empty() {
        return Ok(UploadState::NoParts);
    }
    check_layout(&mut parts, chunk_size)?;
    Ok(UploadState::Parts)
}

/// Checks a CompleteMultipartUpload body: well-formed XML whose root is
/// `CompleteMultipartUpload`, listing at least one part; returns how many.
pub fn check_complete_body(xml: &[u8]) -> Result<usize, S3Error> {
    let malformed = || s3err(S3ErrorCode::MalformedXML, "The XML you provided was not well-formed or did not validate against our published schema");
    let mut r = Reader::from_reader(xml);
    let mut buf = Vec::new();
    let (mut depth, mut parts, mut root_ok) = (0usize, 0usize, false);
    loop {
        match r.read_event_into(&mut buf).map_err(|_| malformed())? {
            Event::Start(s) => {
                if depth == 0 {
                    root_ok = s.local_name().as_ref() == b"CompleteMultipartUpload";
                } else if depth == 1 && s.local_name().as_ref() == b"Part" {
                    parts += 1;
                }
                depth += 1;
            }
            Event::Empty(s) if depth == 0 => root_ok = s.local_name().as_ref() == b"CompleteMultipartUpload",
            Event::End(_) => depth = depth.checked_sub(1).ok_or_else(malformed)?,
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !root_ok || depth != 0 || parts == 0 {
        return Err(malformed());
    }
    Ok(parts)
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
        let ok = br#"<?xml version="1.0"?><CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><ETag>"a"</ETag><PartNumber>1</PartNumber></Part><Part><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>"#;
        assert_eq!(check_complete_body(ok).unwrap(), 2);
        for bad in [&b""[..], b"garbage", b"<CompleteMultipartUpload></CompleteMultipartUpload>", b"<CompleteMultipartUpload/>",
            b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part>", b"<Other><Part/></Other>"] {
            assert_eq!(check_complete_body(bad).unwrap_err().code, S3ErrorCode::MalformedXML, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn parses_list_parts() {
        let xml = br#"<ListPartsResult><Bucket>b</Bucket><IsTruncated>true</IsTruncated><NextPartNumberMarker>2</NextPartNumberMarker>
            <Part><PartNumber>1</PartNumber><ETag>"x"</ETag><Size>100</Size></Part><Part><PartNumber>2</PartNumber><Size>50</Size></Part></ListPartsResult>"#;
        let p = parse_parts(xml).unwrap();
        assert_eq!(p.parts, vec![(1, 100), (2, 50)]);
        assert!(p.truncated);
        assert_eq!(p.next_marker.as_deref(), Some("2"));
    }
}
