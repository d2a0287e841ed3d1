//! Per-request state shared by the filters. Each filter owns its own field; the proxy
//! reads the rest for metrics and the audit log.

use std::time::Instant;

use s3cp_format::KeyId;

use crate::auth::BodyCheck;
use crate::checksum::ChecksumAlgorithm;
use crate::conditional::ConditionalCtx;
use crate::crypto::CryptoCtx;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::listing::ListingCtx;
use crate::request::S3Request;
use crate::sigv4::VerifiedRequest;

pub struct RequestCtx {
    pub request_id: String,
    pub started: Instant,
    /// The backend connection's socket while the request is proxied (see backend::ack_promptly).
    pub upstream_fd: Option<i32>,
    /// The parsed request; set by the proxy before the first filter runs.
    pub s3: Option<S3Request>,
    /// Set by the sigv4 filter once the signature checked out.
    pub verified: Option<VerifiedRequest>,
    /// The configured client that signed the request (its role, grants and limits).
    pub client: Option<std::sync::Arc<crate::clients::Client>>,
    /// The request was refused by the client's rate limit.
    pub throttled: bool,
    /// The sigv4 filter's check of the body on its way (auth.rs): made for each backend
    /// attempt, consumed by the verdict at the body's end.
    pub body_check: Option<BodyCheck>,
    /// The flexible checksum the client declared: algorithm, and the value when it came as
    /// a header (a trailer brings it at the end of the body).
    pub checksum_spec: Option<(ChecksumAlgorithm, Option<String>)>,
    /// The verified checksum of the plaintext, echoed in the answer as S3 does.
    pub checksum_result: Option<(ChecksumAlgorithm, String)>,
    /// The MD5 of the plaintext body when the client declared Content-MD5, once verified.
    pub body_md5: Option<[u8; 16]>,
    /// The crypto filter replaced the body: the upstream payload is not the client's.
    pub body_rewritten: bool,
    /// The crypto filter sends the body aws-chunked with a checksum trailer (verified writes):
    /// the resign filter signs `STREAMING-UNSIGNED-PAYLOAD-TRAILER`.
    pub upstream_trailer: bool,
    /// The crypto filter planned a read anew on the backend's answer: the request is sent
    /// to the backend again (once) instead of answering this one.
    pub resend_upstream: bool,
    /// The conditional filter's object lock (`enforce` mode), held until the backend answers.
    pub conditional: ConditionalCtx,
    pub crypto: CryptoCtx,
    /// An XML body held back until it passed its check (`xml_body`), in every chain.
    pub xml_body: Option<crate::xml_body::HeldBody>,
    pub listing: ListingCtx,
    /// The master key used to write or read the object.
    pub key_id: Option<KeyId>,
    /// Plaintext bytes encrypted / decrypted for this request (metrics).
    pub bytes_encrypted: u64,
    pub bytes_decrypted: u64,
    /// How a Range / `partNumber` read was planned (metrics): `memory` (from what this
    /// replica remembered, no header read), `header_reads`, `from_start` (one request from
    /// stored byte 0), `replanned` (the remembered version was replaced).
    pub read_plan: Option<&'static str>,
    /// Why the request failed, kept for `fail_to_proxy`, metrics and the audit log.
    pub error: Option<S3Error>,
    /// A short label when the failure was cryptographic (`tampered`, `wrong_key`, ...).
    pub crypto_failure: Option<&'static str>,
    pub auth_failure: Option<&'static str>,
    /// The proxy read and threw away what was left of the request body after an early
    /// answer (lingering close): tried once per request, whichever path comes first.
    pub lingered: bool,
    /// The proxy answered `Expect: 100-continue` with 100 Continue: the client sends its body
    /// (and an early answer must read it before closing).
    pub continued: bool,
}

impl RequestCtx {
    pub fn new(request_id: String) -> Self {
        Self {
            request_id,
            started: Instant::now(),
            upstream_fd: None,
            s3: None,
            verified: None,
            client: None,
            throttled: false,
            body_check: None,
            checksum_spec: None,
            checksum_result: None,
            body_md5: None,
            body_rewritten: false,
            upstream_trailer: false,
            resend_upstream: false,
            conditional: ConditionalCtx::default(),
            crypto: CryptoCtx::default(),
            xml_body: None,
            listing: ListingCtx::default(),
            key_id: None,
            bytes_encrypted: 0,
            bytes_decrypted: 0,
            read_plan: None,
            error: None,
            crypto_failure: None,
            auth_failure: None,
            lingered: false,
            continued: false,
        }
    }

    /// The parsed request. The proxy sets it before any filter runs.
    pub fn s3(&self) -> Result<&S3Request, S3Error> {
        self.s3.as_ref().ok_or_else(|| S3Error::internal("filter chain", "request was not parsed"))
    }

    /// The proof that the client was authenticated; filters that act on the client's
    /// behalf require it.
    pub fn verified(&self) -> Result<&VerifiedRequest, S3Error> {
        self.verified
            .as_ref()
            .ok_or_else(|| s3err(S3ErrorCode::AccessDenied, "request was not authenticated"))
    }
}
