//! ETags the client sees.
//!
//! The backend's ETag is the MD5 of the ciphertext, which no client can check against
//! what it uploaded. An object's ETag, the same in the PUT answer, GET and HEAD, is:
//! - the MD5 of the plaintext when the client sent `Content-MD5` with the upload (PBS,
//!   rclone, s3cmd do): the proxy verifies it and seals it into the object's metadata;
//! - otherwise the backend's ETag with a `-1` suffix (single-part objects), so that clients
//!   that treat a plain 32-hex ETag as an MD5 do not compare it with their data. Multipart
//!   ETags (`…-N`) already say they are not an MD5 and pass unchanged.
//!
//! Listings cannot read sealed metadata, so they show the second form for every object.
//! Conditional headers (`If-Match`, `If-None-Match`) accept both forms.

/// The part count `N` of a multipart upload's ETag (`…-N`); `None` for an object stored by a PUT.
fn multipart_parts(etag: &str) -> Option<u32> {
    let t = etag.trim().trim_matches('"');
    t.rsplit_once('-').and_then(|(_, n)| n.parse::<u32>().ok()).filter(|n| *n > 0)
}

/// Number of parts (= segments) an object has, from the backend's ETag.
pub fn segments_from_etag(etag: &str) -> u32 {
    multipart_parts(etag).unwrap_or(1)
}

/// The backend's ETag is that of a multipart upload (`…-N`), one part or more.
pub fn is_multipart_etag(etag: &str) -> bool {
    multipart_parts(etag).is_some()
}

/// The ETag shown to the client for an encrypted object (quoted).
pub fn client_etag(backend_etag: &str, plaintext_md5: Option<&str>) -> String {
    if let Some(md5) = plaintext_md5 {
        return format!("\"{md5}\"");
    }
    let t = backend_etag.trim().trim_matches('"');
    if t.contains('-') {
        format!("\"{t}\"")
    } else {
        format!("\"{t}-1\"")
    }
}

/// The backend ETag behind a client-visible mapped ETag, if it is one.
pub fn backend_etag_of(client: &str) -> Option<String> {
    let t = client.trim().trim_matches('"');
    t.strip_suffix("-1").map(|b| format!("\"{b}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_mapping_round_trips() {
        assert_eq!(segments_from_etag("\"abc-12\""), 12);
        assert_eq!(segments_from_etag("\"abc\""), 1);
        assert_eq!(client_etag("\"abc\"", None), "\"abc-1\"");
        assert_eq!(client_etag("\"abc-3\"", None), "\"abc-3\"");
        assert_eq!(client_etag("\"abc\"", Some("d41d")), "\"d41d\"");
        assert_eq!(backend_etag_of("\"abc-1\"").as_deref(), Some("\"abc\""));
    }
}
