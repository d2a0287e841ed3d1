//! Canonical forms of SigV4: URI encoding, the canonical query, headers and string to sign.

use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};

use crate::error::{s3err, S3Error, S3ErrorCode};

/// AWS's URI encoding: every byte but `A-Z a-z 0-9 - . _ ~` becomes `%XX` (upper-case hex);
/// `/` is kept unless `encode_slash`.
pub fn aws_uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 2);
    for &b in s.as_bytes() {
        let keep = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || (b == b'/' && !encode_slash);
        if keep {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    out
}

/// The canonical query: decoded pairs re-encoded, sorted by key then value. For presigned
/// requests `X-Amz-Signature` is left out.
pub fn canonical_query(pairs: &[(String, String)], presigned: bool) -> String {
    let mut enc: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| !(presigned && k == "X-Amz-Signature"))
        .map(|(k, v)| (aws_uri_encode(k, true), aws_uri_encode(v, true)))
        .collect();
    enc.sort();
    let mut out = String::new();
    for (i, (k, v)) in enc.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// `name:value\n` for each signed header, values of repeated headers joined by `,`, inner
/// runs of spaces folded.
pub fn canonical_headers(req: &RequestHeader, signed: &[&str]) -> Result<String, S3Error> {
    let mut out = String::with_capacity(256);
    for name in signed {
        let values: Vec<&str> = req
            .headers
            .get_all(*name)
            .iter()
            .map(|v| v.to_str().map(str::trim))
            .collect::<Result<_, _>>()
            .map_err(|_| s3err(S3ErrorCode::SignatureDoesNotMatch, format!("signed header {name} is not ASCII")))?;
        if values.is_empty() {
            return Err(s3err(S3ErrorCode::SignatureDoesNotMatch, format!("signed header {name} is missing from the request")));
        }
        out.push_str(name);
        out.push(':');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let mut prev_space = false;
            for c in v.chars() {
                if c == ' ' {
                    if !prev_space {
                        out.push(' ');
                    }
                    prev_space = true;
                } else {
                    out.push(c);
                    prev_space = false;
                }
            }
        }
        out.push('\n');
    }
    Ok(out)
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    let hash = hex::encode(Sha256::digest(canonical_request.as_bytes()));
    format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hash}")
}
