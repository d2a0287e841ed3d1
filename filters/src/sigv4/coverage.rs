//! Every `x-amz-*` header a request carries must be covered by its signature, as S3
//! requires. The canonical request binds only the headers `SignedHeaders` names, so a header
//! outside that list can be added by anyone holding a presigned URL or a captured request:
//! `x-amz-copy-source` would turn a presigned PutObject into a CopyObject of another object
//! (and UploadPart into UploadPartCopy), and `x-amz-metadata-directive`, `x-amz-tagging`,
//! `x-amz-acl`, `x-amz-object-lock-*`, `x-amz-checksum-*` ... would change what the signer
//! asked for. S3 refuses such requests with 403 AccessDenied, "There were headers present in
//! the request which were not signed", naming them in `<HeadersNotSigned>`; so does this
//! proxy, before anything reaches the backend.
//!
//! Exempt are only the headers whose value the signature binds without naming them:
//! `x-amz-content-sha256` is the canonical request's last line (header and presigned auth
//! alike: the verifier takes the payload hash from it), and with header auth `x-amz-date`
//! is the string to sign's timestamp. (AWS S3 accepts both unsigned; some clients do not sign
//! `x-amz-content-sha256`.) With a presigned URL the time comes from `X-Amz-Date` in the
//! query, so an `x-amz-date` header there is bound by nothing and must be signed.

use pingora::http::RequestHeader;

use crate::error::{s3err, S3Error, S3ErrorCode};

/// The `x-amz-*` headers of `req` that `signed` (the `SignedHeaders` names) does not cover,
/// sorted and without repeats.
pub fn unsigned_amz_headers(req: &RequestHeader, signed: &[&str], presigned: bool) -> Vec<String> {
    let mut missing: Vec<String> = req
        .headers
        .keys()
        .map(|name| name.as_str())
        .filter(|name| name.starts_with("x-amz-"))
        .filter(|name| !is_bound_anyway(name, presigned))
        .filter(|name| !signed.iter().any(|s| s.eq_ignore_ascii_case(name)))
        .map(str::to_string)
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

/// Headers whose value enters the signature even when `SignedHeaders` leaves them out.
fn is_bound_anyway(name: &str, presigned: bool) -> bool {
    name == "x-amz-content-sha256" || (name == "x-amz-date" && !presigned)
}

/// S3's answer to a request carrying unsigned `x-amz-*` headers.
pub fn headers_not_signed(names: &[String]) -> S3Error {
    s3err(S3ErrorCode::AccessDenied, "There were headers present in the request which were not signed")
        .with_detail("HeadersNotSigned", names.join(", "))
}

/// Refuses `req` when it carries an `x-amz-*` header its signature does not cover.
pub fn require_signed_amz_headers(req: &RequestHeader, signed: &[&str], presigned: bool) -> Result<(), S3Error> {
    let missing = unsigned_amz_headers(req, signed, presigned);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(headers_not_signed(&missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("PUT", b"/b/k", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn every_unsigned_amz_header_is_named_once() {
        let r = req(&[
            ("host", "h"),
            ("x-amz-date", "20130524T000000Z"),
            ("X-Amz-Copy-Source", "other/secret"),
            ("x-amz-tagging", "a=b"),
            ("x-amz-tagging", "c=d"),
            ("x-amz-meta-signed", "1"),
            ("content-type", "text/plain"),
            ("x-amzn-trace-id", "Root=1"),
        ]);
        let signed = ["host", "x-amz-date", "X-Amz-Meta-Signed"];
        assert_eq!(unsigned_amz_headers(&r, &signed, false), ["x-amz-copy-source", "x-amz-tagging"]);
        let e = require_signed_amz_headers(&r, &signed, false).unwrap_err();
        assert_eq!(e.code, S3ErrorCode::AccessDenied);
        assert_eq!(e.status(), 403);
        assert_eq!(e.details, [("HeadersNotSigned", "x-amz-copy-source, x-amz-tagging".to_string())]);
    }

    #[test]
    fn only_headers_bound_by_the_signature_are_exempt() {
        let r = req(&[("host", "h"), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"), ("x-amz-date", "20130524T000000Z")]);
        // Header auth: both values are part of what was signed.
        assert!(require_signed_amz_headers(&r, &["host"], false).is_ok());
        // Presigned: the time comes from the query; the header is bound by nothing.
        assert_eq!(unsigned_amz_headers(&r, &["host"], true), ["x-amz-date"]);
        let r = req(&[("host", "h"), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")]);
        assert!(require_signed_amz_headers(&r, &["host"], true).is_ok());
        for name in ["x-amz-decoded-content-length", "x-amz-trailer", "x-amz-security-token", "x-amz-checksum-crc32"] {
            let r = req(&[("host", "h"), (name, "1")]);
            assert_eq!(unsigned_amz_headers(&r, &["host"], false), [name], "{name}");
        }
    }
}
