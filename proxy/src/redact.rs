//! Keeps request credentials out of the logs: presigned URLs carry `X-Amz-Signature` and
//! `X-Amz-Credential` (SigV2: `Signature`, `AWSAccessKeyId`) in the query, and a logged
//! `Authorization` header would carry the same. A captured signature can be replayed until
//! the URL expires, so every log line the proxy writes goes through [`redact`], and pingora's
//! request summaries are built by [`request_summary`].

use std::borrow::Cow;

use pingora::http::RequestHeader;

/// The value that replaces a secret.
const HIDDEN: &str = "REDACTED";

/// Query parameters and `key=value` fields (of an Authorization header) whose values are
/// credentials, lowercase. `signature` covers `x-amz-signature` and SigV4's `Signature=`;
/// `credential` covers `x-amz-credential` and SigV4's `Credential=`.
const SECRET_FIELDS: &[&str] = &["signature", "credential", "x-amz-security-token", "awsaccesskeyid"];

/// Whether a byte ends a field value in a URL, a header value or a log line.
fn ends_value(b: u8) -> bool {
    matches!(b, b'&' | b',' | b';' | b'"' | b'\'' | b' ' | b'\t' | b'\r' | b'\n' | b'}' | b')' | b']' | b'>')
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Replaces the values of credential fields and `Authorization` headers in `text`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let lower = text.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    // (start, end) of each value to hide, in order.
    let mut hide: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        // A field name starts at a name boundary.
        if i > 0 && is_name_byte(bytes[i - 1]) {
            i += 1;
            continue;
        }
        let rest = &lower[i..];
        let field_len = |r: &str| SECRET_FIELDS.iter().find(|f| r.starts_with(**f)).map(|f| f.len());
        // x-amz-signature, x-amz-credential: the prefix, then a listed field.
        let field = field_len(rest).or_else(|| rest.strip_prefix("x-amz-").and_then(field_len).map(|n| n + "x-amz-".len()));
        if let Some(n) = field {
            if bytes.get(i + n) == Some(&b'=') {
                let start = i + n + 1;
                let end = (start..bytes.len()).find(|&j| ends_value(bytes[j])).unwrap_or(bytes.len());
                if end > start {
                    hide.push((start, end));
                }
                i = end;
                continue;
            }
        }
        if rest.starts_with("authorization") && !bytes.get(i + 13).copied().is_some_and(is_name_byte) {
            // `authorization: value`, `"authorization": "value"`, `authorization=value`:
            // everything up to the end of the quoted value or of the line.
            let mut j = i + 13;
            while j < bytes.len() && matches!(bytes[j], b'"' | b'\'' | b' ') {
                j += 1;
            }
            if j < bytes.len() && matches!(bytes[j], b':' | b'=') {
                j += 1;
                while j < bytes.len() && matches!(bytes[j], b' ' | b'\t') {
                    j += 1;
                }
                let quoted = j < bytes.len() && matches!(bytes[j], b'"' | b'\'');
                let start = if quoted { j + 1 } else { j };
                let end = (start..bytes.len())
                    .find(|&k| if quoted { bytes[k] == bytes[j] } else { matches!(bytes[k], b'\r' | b'\n') })
                    .unwrap_or(bytes.len());
                if end > start {
                    hide.push((start, end));
                }
                i = end;
                continue;
            }
        }
        i += 1;
    }
    if hide.is_empty() {
        return Cow::Borrowed(text);
    }
    // ASCII lowercasing keeps byte offsets, so they index `text` as well.
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in hide {
        out.push_str(&text[at..start]);
        out.push_str(HIDDEN);
        at = end;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

/// `METHOD path?query, Host: host` as pingora logs failed requests, with credentials hidden.
pub fn request_summary(req: &RequestHeader) -> String {
    let host = req.headers.get("host").map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()).unwrap_or_default();
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{} {}, Host: {}", req.method.as_str(), redact(target), host)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRESIGNED: &str = "/pbs-bucket/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20261205%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261205T000000Z&X-Amz-Expires=600&X-Amz-SignedHeaders=host&X-Amz-Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn presigned_url_loses_signature_and_credential_only() {
        let r = redact(PRESIGNED);
        assert!(!r.contains("0123456789abcdef") && !r.contains("AKIDEXAMPLE"), "{r}");
        assert!(r.contains("X-Amz-Signature=REDACTED") && r.contains("X-Amz-Credential=REDACTED&"), "{r}");
        assert!(r.contains("X-Amz-Date=20261205T000000Z") && r.contains("X-Amz-SignedHeaders=host"), "{r}");
        assert!(r.starts_with("/pbs-bucket/k?"), "{r}");
    }

    #[test]
    fn sigv2_query_and_security_token() {
        let r = redact("GET /b/k?AWSAccessKeyId=AKID&Expires=1&Signature=abc%2Bdef&x-amz-security-token=TOKEN, Host: h");
        assert_eq!(r, "GET /b/k?AWSAccessKeyId=REDACTED&Expires=1&Signature=REDACTED&x-amz-security-token=REDACTED, Host: h");
    }

    #[test]
    fn authorization_headers_in_any_form() {
        let h = "AWS4-HMAC-SHA256 Credential=AKID/20261205/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=feedface";
        for line in [format!("authorization: {h}"), format!("{{\"authorization\": \"{h}\", \"host\": \"x\"}}"), "Authorization: Bearer sekrit".to_string()] {
            let r = redact(&line);
            assert!(!r.contains("feedface") && !r.contains("AKID") && !r.contains("sekrit"), "{r}");
        }
        let json = format!("{{\"authorization\": \"{h}\", \"host\": \"x\"}}");
        let r = redact(&json);
        assert!(r.ends_with("\"host\": \"x\"}"), "{r}");
    }

    #[test]
    fn ordinary_text_is_untouched() {
        for s in ["backend answered 503 to ListParts for /b/k", "key=signatures/file", "/b/my-signature=x"] {
            assert!(matches!(redact(s), Cow::Borrowed(_)), "{s}");
        }
        // A field name inside a longer name is not a field.
        assert_eq!(redact("mysignature=abc"), "mysignature=abc");
    }
}
