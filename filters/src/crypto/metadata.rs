//! The client's object metadata, sealed into `x-amz-meta-s3cp` so the backend cannot read
//! it. Payload: JSON `{"h": [[name, value], …], "md5": "<hex>", "l": <plaintext length>}`
//! (`md5` only when the client sent Content-MD5, i.e. it is known before the body; `l` for
//! single-part objects, whose length is known before the body).

use pingora::http::{RequestHeader, ResponseHeader};
use serde::{Deserialize, Serialize};

use s3cp_format::{FormatError, Layout};

use crate::error::S3Error;

/// Headers that describe the object to the client and travel sealed.
const SEALED: &[&str] = &[
    "content-type",
    "content-disposition",
    "content-encoding",
    "content-language",
    "cache-control",
    "expires",
    "x-amz-website-redirect-location",
];

fn is_sealed(name: &str) -> bool {
    SEALED.contains(&name) || (name.starts_with("x-amz-meta-") && name != s3cp_format::meta::HEADER)
}

/// A sealed payload, parsed once per request.
#[derive(Serialize, Deserialize, Default)]
pub struct Sealed {
    h: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    md5: Option<String>,
    /// The flexible checksum of the plaintext the client declared in a header
    /// (`x-amz-checksum-<alg>`, value), shown on GET/HEAD with `x-amz-checksum-mode: ENABLED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ck: Option<(String, String)>,
    /// The plaintext length of a single-part object: every read announces it, and checks the
    /// stored object against it, without reading the body (docs/object-format.md 6.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    l: Option<u64>,
    /// The segment count, for objects whose backend ETag cannot tell it (section 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<u32>,
}

/// The metadata payload of an upload request. `known_md5` (hex) is kept when the content
/// is unchanged (a copy replacing the metadata).
pub fn from_request(req: &RequestHeader, content_md5: Option<[u8; 16]>, known_md5: Option<&str>) -> Vec<u8> {
    let mut sealed = Sealed { h: Vec::new(), md5: content_md5.map(hex::encode).or_else(|| known_md5.map(str::to_string)), ..Default::default() };
    for (name, value) in req.headers.iter() {
        let n = name.as_str();
        if !is_sealed(n) {
            continue;
        }
        let Ok(v) = value.to_str() else { continue };
        if n == "content-encoding" {
            // aws-chunked describes the transfer, not the object.
            let rest = v.split(',').map(str::trim).filter(|t| !t.eq_ignore_ascii_case("aws-chunked")).collect::<Vec<_>>().join(",");
            if !rest.is_empty() {
                sealed.h.push((n.to_string(), rest));
            }
        } else if !v.is_empty() || n.starts_with("x-amz-meta-") {
            // User metadata may be empty and is returned as stored (S3 keeps `x-amz-meta-a: ""`).
            sealed.h.push((n.to_string(), v.to_string()));
        }
    }
    serde_json::to_vec(&sealed).expect("strings serialize")
}

impl Sealed {
    /// Parses an opened payload (`MetadataMalformed` if it is not the proxy's JSON).
    pub fn parse(payload: &[u8]) -> Result<Self, FormatError> {
        serde_json::from_slice(payload).map_err(|_| FormatError::MetadataMalformed)
    }

    /// The plaintext MD5, if it was known at upload.
    pub fn md5(&self) -> Option<&str> {
        self.md5.as_deref()
    }

    /// The plaintext checksum: (header name, base64 value).
    pub fn checksum(&self) -> Option<(String, String)> {
        self.ck.clone()
    }

    /// The object as every read path announces it: plaintext length, chunk size and segment
    /// count from the stored length, the sealed chunk size, and the sealed segment count or
    /// the backend's ETag — checked against the sealed plaintext length when there is one.
    /// `verified` is true when that check covered the length (nothing more needs reading).
    pub fn announced_layout(&self, chunk_size: u32, stored_len: u64, backend_etag: &str) -> Result<(Layout, bool), FormatError> {
        let segments = self.n.unwrap_or_else(|| crate::etag::segments_from_etag(backend_etag));
        let layout = Layout::announced(stored_len, chunk_size, segments, self.l)?;
        Ok((layout, self.l.is_some()))
    }

    /// Replaces the backend's descriptive headers by the unsealed ones; returns the sealed
    /// MD5.
    pub fn restore(self, resp: &mut ResponseHeader) -> Result<Option<String>, S3Error> {
        let names: Vec<String> = resp
            .headers
            .keys()
            .map(|k| k.as_str().to_string())
            .filter(|n| is_sealed(n) || n == s3cp_format::meta::HEADER)
            .collect();
        for n in names {
            resp.remove_header(&n);
        }
        for (n, v) in self.h {
            resp.append_header(n, v).map_err(|e| S3Error::internal("restoring metadata", e))?;
        }
        if !resp.headers.contains_key("content-type") {
            resp.insert_header("content-type", "binary/octet-stream").map_err(|e| S3Error::internal("restoring metadata", e))?;
        }
        Ok(self.md5)
    }
}

/// Adds (or replaces) the sealed plaintext checksum of a payload made by [`from_request`].
pub fn with_checksum(payload: Vec<u8>, checksum: Option<(String, String)>) -> Vec<u8> {
    let Some(ck) = checksum else { return payload };
    edit(payload, |s| s.ck = Some(ck))
}

/// Seals the plaintext length of a single-part object into a payload (`None`: unknown
/// yet). Such an object has one segment, so a segment count is dropped.
pub fn with_plain_len(payload: Vec<u8>, len: Option<u64>) -> Vec<u8> {
    edit(payload, |s| {
        s.l = len;
        s.n = None;
    })
}

fn edit(payload: Vec<u8>, change: impl FnOnce(&mut Sealed)) -> Vec<u8> {
    match serde_json::from_slice::<Sealed>(&payload) {
        Ok(mut sealed) => {
            change(&mut sealed);
            serde_json::to_vec(&sealed).expect("strings serialize")
        }
        Err(_) => payload,
    }
}

/// Removes the sealed headers from a request going to the backend.
pub fn strip_sealed_headers(up: &mut RequestHeader) {
    let names: Vec<String> = up.headers.keys().map(|k| k.as_str().to_string()).filter(|n| is_sealed(n)).collect();
    for n in names {
        up.remove_header(&n);
    }
}

/// `response-content-type` and friends in a GET's query override the stored values.
pub fn apply_response_overrides(resp: &mut ResponseHeader, query: &[(String, String)]) -> Result<(), S3Error> {
    for (k, v) in query {
        if let Some(h) = k.strip_prefix("response-") {
            if matches!(h, "content-type" | "content-language" | "expires" | "cache-control" | "content-disposition" | "content-encoding") {
                resp.insert_header(h.to_string(), v.as_str()).map_err(|e| S3Error::internal("response override", e))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trip() {
        let mut req = RequestHeader::build("PUT", b"/b/k", None).unwrap();
        req.insert_header("content-type", "text/plain").unwrap();
        req.insert_header("x-amz-meta-color", "blue").unwrap();
        req.insert_header("content-encoding", "gzip, aws-chunked").unwrap();
        req.insert_header("x-amz-date", "x").unwrap();
        let payload = from_request(&req, Some([1; 16]), None);
        assert_eq!(Sealed::parse(&payload).unwrap().md5(), Some("01010101010101010101010101010101"));
        strip_sealed_headers(&mut req);
        assert!(req.headers.get("x-amz-meta-color").is_none() && req.headers.get("x-amz-date").is_some());

        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-type", "application/octet-stream").unwrap();
        resp.insert_header("x-amz-meta-s3cp", "sealed").unwrap();
        let payload = with_checksum(payload, Some(("x-amz-checksum-crc32".into(), "AAAAAA==".into())));
        assert_eq!(Sealed::parse(&payload).unwrap().checksum(), Some(("x-amz-checksum-crc32".into(), "AAAAAA==".into())));
        let md5 = Sealed::parse(&payload).unwrap().restore(&mut resp).unwrap();
        assert_eq!(md5.as_deref(), Some("01010101010101010101010101010101"));
        assert_eq!(resp.headers.get("content-type").unwrap(), "text/plain");
        assert_eq!(resp.headers.get("x-amz-meta-color").unwrap(), "blue");
        assert_eq!(resp.headers.get("content-encoding").unwrap(), "gzip");
        assert!(resp.headers.get("x-amz-meta-s3cp").is_none());
    }
}
