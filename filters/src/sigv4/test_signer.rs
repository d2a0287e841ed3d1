//! A header-auth SigV4 signer for unit tests of code that needs a verified request signed
//! at the current time (the AWS examples are fixed in 2013). It builds the canonical request
//! with the verifier's own pieces, which the AWS examples in `tests.rs` pin down.

use std::time::SystemTime;

use pingora::http::RequestHeader;

use super::canonical::{canonical_headers, canonical_query, string_to_sign};
use super::Credentials;
use crate::request::parse_query;

/// Adds `x-amz-date`, `x-amz-content-sha256: payload` and an `Authorization` header that
/// signs `signed` (names, sorted as clients send them) for `now`.
pub fn sign(req: &mut RequestHeader, creds: &Credentials, signed: &[&str], payload: &str, now: SystemTime) {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let amz_date = time::OffsetDateTime::from(now).format(&fmt).unwrap();
    req.insert_header("x-amz-date", amz_date.as_str()).unwrap();
    req.insert_header("x-amz-content-sha256", payload).unwrap();
    let date = &amz_date[..8];
    let scope = format!("{date}/us-east-1/s3/aws4_request");
    let signed_list = signed.join(";");
    let creq = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method.as_str(),
        req.uri.path(),
        canonical_query(&parse_query(req.uri.query().unwrap_or("")), false),
        canonical_headers(req, signed).unwrap(),
        signed_list,
        payload
    );
    let sts = string_to_sign(&amz_date, &scope, &creq);
    let key = aws_sigv4::sign::v4::generate_signing_key(creds.secret(), now, "us-east-1", "s3");
    let sig = aws_sigv4::sign::v4::calculate_signature(key.as_ref(), sts.as_bytes());
    let auth = format!("AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_list}, Signature={sig}", creds.access_key);
    req.insert_header("authorization", auth).unwrap();
}
