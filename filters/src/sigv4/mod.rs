//! AWS Signature Version 4: verifying the client (header and presigned query auth) and
//! the pieces shared with upstream re-signing.
//!
//! Verification rebuilds the canonical request from the request exactly as it arrived
//! (the client's `SignedHeaders`, its raw path, its `x-amz-date`) and compares signatures
//! in constant time. The HMAC chain comes from `aws-sigv4`. A request whose signature holds
//! is still refused when it carries `x-amz-*` headers the signature does not cover
//! ([`coverage`]).

mod canonical;
pub mod chunked;
mod coverage;
mod payload;

pub use canonical::{aws_uri_encode, canonical_query};
pub use payload::PayloadVerifier;

use std::time::{Duration, SystemTime};

use pingora::http::RequestHeader;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::request::{PayloadMode, S3Request};

/// Largest clock difference S3 accepts between the client and the server.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// Longest validity of a presigned URL (7 days), as in S3.
pub const MAX_PRESIGN_EXPIRY: u64 = 7 * 24 * 3600;

/// An access key and its secret; the secret is wiped on drop and never printed.
#[derive(Clone)]
pub struct Credentials {
    pub access_key: String,
    secret: Zeroizing<String>,
}

impl Credentials {
    pub fn new(access_key: impl Into<String>, secret: impl Into<String>) -> Self {
        Self { access_key: access_key.into(), secret: Zeroizing::new(secret.into()) }
    }
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ access_key: {:?}, secret: <redacted> }}", self.access_key)
    }
}

/// Proof that a request's signature was checked. Only [`verify`] creates one, and the
/// filters after authentication require it, so skipping the check cannot compile.
#[derive(Debug)]
pub struct VerifiedRequest {
    pub access_key: String,
    /// The payload mode the signature covers (`UNSIGNED-PAYLOAD` for presigned URLs
    /// without `x-amz-content-sha256`).
    pub payload: PayloadMode,
    /// The request's signature: the seed of aws-chunked chunk signatures.
    pub seed_signature: String,
    pub amz_date: String,
    pub scope: String,
    signing_key: Zeroizing<Vec<u8>>,
    _private: (),
}

impl VerifiedRequest {
    /// The derived signing key, for chunk and trailer signatures.
    pub fn signing_key(&self) -> &[u8] {
        &self.signing_key
    }
}

/// Where the client put its signature.
struct AuthParams {
    access_key: String,
    date: String,
    region: String,
    service: String,
    signed_headers: String,
    signature: String,
    amz_date: String,
    presigned: bool,
    expires: Option<u64>,
}

/// Parses `Authorization: AWS4-HMAC-SHA256 Credential=AK/20261122/us-east-1/s3/aws4_request, SignedHeaders=a;b, Signature=hex`.
fn parse_authorization(value: &str) -> Result<(String, String, String), S3Error> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256").ok_or_else(|| {
        if value.starts_with("AWS ") {
            s3err(S3ErrorCode::InvalidRequest, "Signature Version 2 is not supported; use AWS4-HMAC-SHA256 (SigV4)")
        } else {
            s3err(S3ErrorCode::InvalidArgument, "Unsupported Authorization Type")
        }
    })?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = Some(v.to_string());
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v.to_string());
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v.to_string());
        }
    }
    match (cred, signed, sig) {
        (Some(c), Some(h), Some(s)) => Ok((c, h, s)),
        _ => Err(s3err(S3ErrorCode::InvalidArgument, "the Authorization header is missing Credential, SignedHeaders or Signature")),
    }
}

fn split_credential(cred: &str) -> Result<(String, String, String, String), S3Error> {
    let parts: Vec<&str> = cred.split('/').collect();
    match parts.as_slice() {
        [ak, date, region, service, "aws4_request"] => {
            Ok((ak.to_string(), date.to_string(), region.to_string(), service.to_string()))
        }
        _ => Err(s3err(S3ErrorCode::InvalidArgument, "malformed credential scope: expected AK/YYYYMMDD/region/s3/aws4_request")),
    }
}

fn auth_params(req: &RequestHeader, s3: &S3Request) -> Result<AuthParams, S3Error> {
    if let Some(h) = req.headers.get("authorization") {
        let v = h.to_str().map_err(|_| s3err(S3ErrorCode::InvalidArgument, "Authorization is not ASCII"))?;
        let (cred, signed_headers, signature) = parse_authorization(v)?;
        let (access_key, date, region, service) = split_credential(&cred)?;
        let amz_date = req
            .headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| s3err(S3ErrorCode::AccessDenied, "AWS authentication requires a valid x-amz-date header"))?
            .to_string();
        return Ok(AuthParams { access_key, date, region, service, signed_headers, signature, amz_date, presigned: false, expires: None });
    }
    let q = |n: &str| s3.query_value(n).map(str::to_string);
    match q("X-Amz-Algorithm").as_deref() {
        Some("AWS4-HMAC-SHA256") => {}
        Some(_) => return Err(s3err(S3ErrorCode::InvalidArgument, "X-Amz-Algorithm must be AWS4-HMAC-SHA256")),
        None if s3.query_value("Signature").is_some() => {
            return Err(s3err(S3ErrorCode::InvalidRequest, "Signature Version 2 presigned URLs are not supported; use SigV4"))
        }
        None => return Err(s3err(S3ErrorCode::AccessDenied, "Anonymous access is not allowed: sign your requests with SigV4")),
    }
    let missing = || s3err(S3ErrorCode::AuthorizationQueryParametersError, "presigned URL lacks X-Amz-Credential, X-Amz-Date, X-Amz-Expires, X-Amz-SignedHeaders or X-Amz-Signature");
    let (access_key, date, region, service) = split_credential(&q("X-Amz-Credential").ok_or_else(missing)?)?;
    let expires = q("X-Amz-Expires")
        .ok_or_else(missing)?
        .parse::<u64>()
        .map_err(|_| s3err(S3ErrorCode::AuthorizationQueryParametersError, "X-Amz-Expires must be a number of seconds"))?;
    if expires > MAX_PRESIGN_EXPIRY {
        return Err(s3err(S3ErrorCode::AuthorizationQueryParametersError, "X-Amz-Expires must be less than a week (604800 seconds)"));
    }
    Ok(AuthParams {
        access_key,
        date,
        region,
        service,
        signed_headers: q("X-Amz-SignedHeaders").ok_or_else(missing)?,
        signature: q("X-Amz-Signature").ok_or_else(missing)?,
        amz_date: q("X-Amz-Date").ok_or_else(missing)?,
        presigned: true,
        expires: Some(expires),
    })
}

/// Parses `20261122T214519Z`.
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let dt = time::PrimitiveDateTime::parse(s, &fmt).ok()?.assume_utc();
    let secs = u64::try_from(dt.unix_timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Checks the client's SigV4 signature (header or presigned query form) against `creds`.
pub fn verify(
    req: &RequestHeader,
    s3: &S3Request,
    creds: &Credentials,
    now: SystemTime,
) -> Result<VerifiedRequest, S3Error> {
    verify_with(
        req,
        s3,
        |key| bool::from(key.as_bytes().ct_eq(creds.access_key.as_bytes())).then_some(std::slice::from_ref(creds)),
        now,
    )
}

/// Checks the signature against the secrets `secrets_of` gives for the request's access key
/// (several during a rotation: the first that matches wins; none → `InvalidAccessKeyId`).
pub fn verify_with<'c>(
    req: &RequestHeader,
    s3: &S3Request,
    secrets_of: impl FnOnce(&str) -> Option<&'c [Credentials]>,
    now: SystemTime,
) -> Result<VerifiedRequest, S3Error> {
    let p = auth_params(req, s3)?;
    let candidates = match secrets_of(&p.access_key) {
        Some(c) if !c.is_empty() => c,
        _ => return Err(s3err(S3ErrorCode::InvalidAccessKeyId, "The AWS Access Key Id you provided does not exist in our records.")),
    };
    if p.service != "s3" {
        return Err(s3err(S3ErrorCode::SignatureDoesNotMatch, "the credential scope must name the s3 service"));
    }
    let signed_at = parse_amz_date(&p.amz_date)
        .ok_or_else(|| s3err(S3ErrorCode::AccessDenied, "x-amz-date must look like 20261122T214519Z"))?;
    if !p.amz_date.starts_with(&p.date) {
        return Err(s3err(S3ErrorCode::SignatureDoesNotMatch, "the credential scope date does not match x-amz-date"));
    }
    let skew = match now.duration_since(signed_at) {
        Ok(ago) => ago,
        Err(ahead) => ahead.duration(),
    };
    if let Some(expires) = p.expires {
        let future = signed_at.duration_since(now).is_ok_and(|d| d > MAX_SKEW);
        if future {
            return Err(s3err(S3ErrorCode::RequestTimeTooSkewed, "The difference between the request time and the server's time is too large."));
        }
        if now > signed_at + Duration::from_secs(expires) {
            return Err(s3err(S3ErrorCode::AccessDenied, "Request has expired"));
        }
    } else if skew > MAX_SKEW {
        return Err(s3err(S3ErrorCode::RequestTimeTooSkewed, "The difference between the request time and the server's time is too large."));
    }

    let payload_header = req.headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok());
    let payload_str = match (payload_header, p.presigned) {
        (Some(v), _) => v.to_string(),
        (None, true) => "UNSIGNED-PAYLOAD".to_string(),
        (None, false) => {
            return Err(s3err(S3ErrorCode::InvalidRequest, "Missing required header for this request: x-amz-content-sha256"))
        }
    };
    let payload = PayloadMode::parse(&payload_str)?;

    let signed: Vec<&str> = p.signed_headers.split(';').filter(|h| !h.is_empty()).collect();
    if !signed.contains(&"host") {
        return Err(s3err(S3ErrorCode::SignatureDoesNotMatch, "the host header must be signed"));
    }
    let headers = canonical::canonical_headers(req, &signed)?;
    let query = canonical_query(&s3.query, p.presigned);
    let scope = format!("{}/{}/{}/aws4_request", p.date, p.region, p.service);
    let signing_key_of = |creds: &Credentials| {
        Zeroizing::new(
            aws_sigv4::sign::v4::generate_signing_key(creds.secret(), signed_at, &p.region, &p.service)
                .as_ref()
                .to_vec(),
        )
    };
    let expected_sig = |signing_key: &[u8], path: &str| {
        let creq = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            req.method.as_str(),
            if path.is_empty() { "/" } else { path },
            query,
            headers,
            p.signed_headers,
            payload_str
        );
        let sts = canonical::string_to_sign(&p.amz_date, &scope, &creq);
        aws_sigv4::sign::v4::calculate_signature(signing_key, sts.as_bytes())
    };
    let provided = p.signature.to_ascii_lowercase();
    // Some clients send a character raw that they encoded when signing (or the other way
    // round); both forms name the same key, so the canonical encoding is accepted too.
    let decoded = percent_encoding::percent_decode_str(&s3.raw_path).decode_utf8_lossy();
    let canonical_path = aws_uri_encode(&decoded, false);
    let mut paths = vec![s3.raw_path.as_str()];
    if canonical_path != s3.raw_path {
        paths.push(&canonical_path);
    }
    let matches = |key: &[u8]| paths.iter().any(|path| bool::from(expected_sig(key, path).as_bytes().ct_eq(provided.as_bytes())));
    let signing_key = candidates.iter().map(signing_key_of).find(|key| matches(key));
    let Some(signing_key) = signing_key else {
        return Err(s3err(S3ErrorCode::SignatureDoesNotMatch, "The request signature we calculated does not match the signature you provided. Check your key and signing method."));
    };
    coverage::require_signed_amz_headers(req, &signed, p.presigned)?;
    Ok(VerifiedRequest {
        access_key: p.access_key,
        payload,
        seed_signature: provided,
        amz_date: p.amz_date,
        scope,
        signing_key,
        _private: (),
    })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod test_signer;
