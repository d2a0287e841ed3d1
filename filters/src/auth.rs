//! The `sigv4` filter: authenticates the client and checks the body it sends.
//!
//! Request phase: verifies the signature and leaves a [`VerifiedRequest`] in the context.
//! Body phase: hashes every piece once (signed SHA-256, Content-MD5) and judges at the end
//! of the body. When the body goes upstream unchanged, the last piece is held back until
//! the verdict, so a bad body never reaches the backend whole; when the crypto filter
//! rewrites the body it holds back its own final chunk instead.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::checksum::{self, ChecksumAlgorithm, Checksummer};
use crate::ctx::RequestCtx;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::filter::{Filter, Flow};
use crate::request::PayloadMode;
use crate::sigv4::chunked::{ChunkSigning, ChunkedDecoder};
use crate::clients::{Client, Clients};
use crate::sigv4::{verify_with, Credentials, PayloadVerifier};

/// SHA-256 of the empty string.
const EMPTY_SHA256: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae,
    0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

pub struct Sigv4Filter {
    clients: Arc<Clients>,
}

impl Sigv4Filter {
    /// One read-write client.
    pub fn new(creds: Credentials) -> Self {
        Self::with_clients(Arc::new(Clients::single(creds)))
    }

    pub fn with_clients(clients: Arc<Clients>) -> Self {
        Self { clients }
    }
}

/// Admits the request under the client's rate limits, or answers 503 SlowDown with the
/// wait in Retry-After (S3's answer to a client going too fast; SDKs and PBS retry it).
fn admit(client: &Client, s3: &crate::request::S3Request) -> Result<(), S3Error> {
    let upload = s3.plaintext_length().unwrap_or(0);
    client.admit(upload).map_err(|wait| {
        s3err(S3ErrorCode::SlowDown, "Please reduce your request rate: this client is over its configured rate limit.")
            .with_retry_after(wait.as_secs_f64().ceil().max(1.0) as u32)
    })
}

/// The `reason` label of `s3_crypt_proxy_auth_failures_total`.
pub fn auth_failure_label(code: S3ErrorCode) -> &'static str {
    match code {
        S3ErrorCode::SignatureDoesNotMatch => "signature",
        S3ErrorCode::InvalidAccessKeyId => "access_key",
        S3ErrorCode::RequestTimeTooSkewed => "clock_skew",
        S3ErrorCode::AccessDenied => "denied",
        S3ErrorCode::XAmzContentSHA256Mismatch => "payload_hash",
        S3ErrorCode::BadDigest => "content_md5",
        _ => "malformed",
    }
}

#[async_trait]
impl Filter for Sigv4Filter {
    fn name(&self) -> &'static str {
        "sigv4"
    }

    async fn request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Result<Flow, S3Error> {
        let s3 = ctx.s3()?;
        let clients = &self.clients;
        let verified = match verify_with(req, s3, |key| clients.get(key).map(|c| c.secrets.as_slice()), SystemTime::now()) {
            Ok(v) => v,
            Err(e) => {
                let unsigned = e.details.iter().any(|(name, _)| *name == "HeadersNotSigned");
                ctx.auth_failure = Some(if unsigned { "unsigned_headers" } else { auth_failure_label(e.code) });
                return Err(e);
            }
        };
        if verified.payload.is_streaming() && s3.decoded_content_length.is_none() {
            return Err(s3err(S3ErrorCode::MissingContentLength, "aws-chunked uploads must send x-amz-decoded-content-length"));
        }
        let trailer = match req.headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()) {
            Some(name) => Some(ChecksumAlgorithm::from_header_name(name.trim()).ok_or_else(|| {
                s3err(S3ErrorCode::InvalidRequest, format!("The trailer {name} is not a supported checksum"))
            })?),
            None => None,
        };
        let checksum_spec = match (checksum::from_request_headers(&req.headers)?, trailer) {
            (Some((alg, value)), _) => Some((alg, Some(value))),
            (None, Some(alg)) => Some((alg, None)),
            (None, None) => None,
        };
        // A request without a body is judged now: by the time the (empty) body phase runs,
        // a DELETE would already have reached the backend.
        // `Transfer-Encoding: chunked` without Content-Length has a body of unknown length.
        let chunked = req.headers.get("transfer-encoding").and_then(|v| v.to_str().ok()).is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let bodyless = !chunked && s3.content_length.unwrap_or(0) == 0;
        if let (true, PayloadMode::Signed(h)) = (bodyless, verified.payload) {
            if h != EMPTY_SHA256 {
                ctx.auth_failure = Some("payload_hash");
                return Err(s3err(S3ErrorCode::XAmzContentSHA256Mismatch, "The provided 'x-amz-content-sha256' header does not match what was computed."));
            }
        }
        let client = self.clients.get(&verified.access_key).cloned();
        let admitted = client.as_deref().map_or(Ok(()), |c| admit(c, s3));
        // Set before the verdict, so that a throttled request is counted and audited under its
        // (authenticated) access key.
        ctx.client = client;
        ctx.checksum_spec = checksum_spec;
        ctx.verified = Some(verified);
        if let Err(e) = admitted {
            ctx.throttled = true;
            return Err(e);
        }
        Ok(Flow::Continue)
    }

    async fn upstream_request(&self, up: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        // A retried attempt replays the body from its start: its check starts anew.
        let check = BodyCheck::new(ctx)?;
        if check.decoder.is_some() {
            // The body goes on decoded: describe it as such (the crypto filter, if any,
            // then replaces the length by the ciphertext's).
            for h in ["content-encoding", "x-amz-decoded-content-length", "x-amz-trailer", "transfer-encoding"] {
                up.remove_header(h);
            }
            if let Some((alg, _)) = &ctx.checksum_spec {
                up.remove_header(alg.header_name());
            }
            let decoded = ctx.s3()?.decoded_content_length.unwrap_or(0);
            up.insert_header("content-length", decoded.to_string()).map_err(|e| S3Error::internal("content-length", e))?;
        }
        ctx.body_check = Some(check);
        Ok(())
    }

    async fn upstream_response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        // A download's size is known now: the client's byte budget pays for it.
        if let (Some(client), true) = (&ctx.client, ctx.s3.as_ref().is_some_and(|s| s.method == http::Method::GET)) {
            if resp.status.is_success() {
                let len = resp.headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
                client.charge_bytes(len.unwrap_or(0));
            }
        }
        // Echo the verified plaintext checksum, as S3 does (runs after the crypto filter
        // removed the backend's ciphertext checksums).
        if let Some((alg, value)) = &ctx.checksum_result {
            if resp.status.is_success() {
                resp.insert_header(alg.header_name(), value.as_str()).map_err(|e| S3Error::internal("checksum header", e))?;
            }
        }
        Ok(())
    }

    fn request_body(&self, body: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx) -> Result<(), S3Error> {
        if ctx.body_check.is_none() {
            ctx.body_check = Some(BodyCheck::new(ctx)?);
        }
        let check = ctx.body_check.as_mut().expect("made above");
        // aws-chunked: from here on the body is the decoded payload.
        if let Some(decoder) = check.decoder.as_mut() {
            if let Some(raw) = body.take() {
                *body = Some(decoder.feed_bytes(raw).inspect_err(|e| ctx.auth_failure = Some(auth_failure_label(e.code)))?);
            }
        }
        if let Some(b) = body.as_ref() {
            check.verifier.update(b);
            if let Some(c) = check.sum.as_mut() {
                c.update(b);
            }
        }
        if !end {
            if !ctx.body_rewritten {
                check.pass_on_one_piece_late(body);
            }
            return Ok(());
        }
        let BodyCheck { verifier, decoder, sum, held } = ctx.body_check.take().expect("made above");
        let trailer = match decoder {
            Some(d) => d.finish().inspect_err(|e| ctx.auth_failure = Some(auth_failure_label(e.code)))?,
            None => None,
        };
        match verifier.finish() {
            Ok(md5) => ctx.body_md5 = md5,
            Err(e) => {
                ctx.auth_failure = Some(auth_failure_label(e.code));
                return Err(e);
            }
        }
        if let Some(c) = sum {
            let alg = c.algorithm();
            let computed = c.finish_base64();
            let expected = match &ctx.checksum_spec {
                Some((_, Some(header_value))) => Some(header_value.clone()),
                _ => trailer.filter(|(a, _)| *a == alg).map(|(_, v)| v),
            };
            match expected {
                Some(e) if e != computed => {
                    ctx.auth_failure = Some("checksum");
                    return Err(checksum::mismatch_error(alg));
                }
                Some(_) => ctx.checksum_result = Some((alg, computed)),
                None => return Err(s3err(S3ErrorCode::InvalidRequest, format!("The {} trailer announced in x-amz-trailer did not come", alg.header_name()))),
            }
        }
        if ctx.body_rewritten {
            return Ok(());
        }
        // The whole body checked out: the held piece goes on with the last one.
        *body = match (held, body.take()) {
            (Some(p), Some(c)) if !c.is_empty() => {
                let mut joined = BytesMut::with_capacity(p.len() + c.len());
                joined.extend_from_slice(&p);
                joined.extend_from_slice(&c);
                Some(joined.freeze())
            }
            (Some(p), _) => Some(p),
            (None, c) => c,
        };
        Ok(())
    }
}

/// The sigv4 filter's check of one attempt's request body: made anew for every backend
/// attempt (a retried attempt replays the body from its start), consumed by the verdict at
/// the body's end.
pub struct BodyCheck {
    /// SHA-256 of a signed payload, and the Content-MD5, over the plaintext.
    verifier: PayloadVerifier,
    /// aws-chunked framing being decoded (the streaming payload modes).
    decoder: Option<ChunkedDecoder>,
    /// The flexible checksum the client declared, over the plaintext.
    sum: Option<Checksummer>,
    /// When the body goes on as the client sent it (no filter rewrites it): the last piece,
    /// held back until the verdict, so a forged body never reaches the backend whole.
    held: Option<Bytes>,
}

impl BodyCheck {
    fn new(ctx: &RequestCtx) -> Result<Self, S3Error> {
        let v = ctx.verified()?;
        let s3 = ctx.s3()?;
        let signed = match v.payload {
            PayloadMode::Signed(h) => Some(h),
            _ => None,
        };
        let decoder = if v.payload.is_streaming() {
            let trailer = ctx.checksum_spec.as_ref().filter(|(_, value)| value.is_none()).map(|(alg, _)| *alg);
            let signing = matches!(v.payload, PayloadMode::StreamingSigned | PayloadMode::StreamingSignedTrailer).then(|| ChunkSigning::from_verified(v));
            Some(ChunkedDecoder::new(v.payload, signing, trailer, s3.decoded_content_length.unwrap_or(0))?)
        } else {
            None
        };
        Ok(Self {
            verifier: PayloadVerifier::new(signed, s3.content_md5),
            decoder,
            sum: ctx.checksum_spec.as_ref().map(|(alg, _)| Checksummer::new(*alg)),
            held: None,
        })
    }

    /// Before the body's end: `body` goes on in place of the piece held before it, and is
    /// held itself.
    fn pass_on_one_piece_late(&mut self, body: &mut Option<Bytes>) {
        let previous = self.held.take();
        match body.take() {
            // A read can decode to nothing (an aws-chunked read holding only framing: a
            // chunk header, the final chunk, part of the trailer). The held piece may be
            // the last data, so it stays held: releasing it now would hand the backend the
            // whole body before the trailer's verdict.
            Some(c) if !c.is_empty() => {
                self.held = Some(c);
                *body = Some(previous.unwrap_or_default());
            }
            _ => {
                self.held = previous;
                *body = Some(Bytes::new());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::S3Request;
    use crate::sigv4::test_signer;

    const PAYLOAD: &str = "hello world";
    const CRC32_OF_PAYLOAD: &str = "DUoRhQ==";

    /// An aws-chunked PutObject (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`, CRC32 trailer) through
    /// a chain without crypto: feeds `reads` to the filter and returns what it released
    /// upstream before each read's answer, and the verdict of the last read.
    async fn upload(reads: &[&[u8]]) -> (Vec<Vec<u8>>, Result<(), S3Error>) {
        let creds = Credentials::new("AKTEST", "secret");
        let filter = Sigv4Filter::new(creds.clone());
        let raw_len: usize = reads.iter().map(|r| r.len()).sum();
        let mut req = RequestHeader::build("PUT", b"/bkt/k", None).unwrap();
        for (k, v) in [
            ("host", "proxy:9000".to_string()),
            ("content-encoding", "aws-chunked".to_string()),
            ("content-length", raw_len.to_string()),
            ("x-amz-decoded-content-length", PAYLOAD.len().to_string()),
            ("x-amz-trailer", "x-amz-checksum-crc32".to_string()),
        ] {
            req.insert_header(k, v).unwrap();
        }
        let signed = ["content-encoding", "host", "x-amz-content-sha256", "x-amz-date", "x-amz-decoded-content-length", "x-amz-trailer"];
        test_signer::sign(&mut req, &creds, &signed, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", SystemTime::now());
        send(&filter, &req, reads).await
    }

    /// Runs a signed request through the filter as one backend attempt: the pieces the
    /// backend would get (up to the first error), and the verdict.
    async fn send(filter: &Sigv4Filter, req: &RequestHeader, reads: &[&[u8]]) -> (Vec<Vec<u8>>, Result<(), S3Error>) {
        let mut ctx = RequestCtx::new("test".into());
        ctx.s3 = Some(S3Request::parse(req, None).unwrap());
        filter.request(req, &mut ctx).await.unwrap();
        filter.upstream_request(&mut req.clone(), &mut ctx).await.unwrap();
        let mut released = Vec::new();
        for (i, read) in reads.iter().enumerate() {
            let mut body = Some(Bytes::copy_from_slice(read));
            let verdict = filter.request_body(&mut body, i + 1 == reads.len(), &mut ctx);
            if verdict.is_err() {
                return (released, verdict);
            }
            released.push(body.map(|b| b.to_vec()).unwrap_or_default());
        }
        (released, Ok(()))
    }

    fn reads(trailer_crc: &str) -> Vec<Vec<u8>> {
        vec![
            b"5\r\nhello\r\n".to_vec(),
            b"6\r\n".to_vec(), // a chunk header alone: decodes to nothing
            b" world\r\n".to_vec(),
            b"0\r\n".to_vec(), // the final chunk alone: decodes to nothing
            format!("x-amz-checksum-crc32:{trailer_crc}\r\n\r\n").into_bytes(),
        ]
    }

    /// Reads that decode to nothing must not push the held piece out: the last data piece
    /// waits for the trailer's verdict, so a forged trailer never lets the whole body through.
    #[tokio::test]
    async fn held_piece_waits_for_the_trailer_verdict_across_empty_reads() {
        let forged = reads("AAAAAA==");
        let (released, verdict) = upload(&forged.iter().map(Vec::as_slice).collect::<Vec<_>>()).await;
        assert!(verdict.is_err(), "a forged trailer checksum must fail the upload");
        let upstream: Vec<u8> = released.concat();
        assert!(upstream.len() < PAYLOAD.len(), "the whole body went upstream before the verdict: {:?}", String::from_utf8_lossy(&upstream));
        assert_eq!(upstream, b"hello");

        let good = reads(CRC32_OF_PAYLOAD);
        let (released, verdict) = upload(&good.iter().map(Vec::as_slice).collect::<Vec<_>>()).await;
        verdict.unwrap();
        assert_eq!(released.concat(), PAYLOAD.as_bytes());
        assert_eq!(released.last().unwrap(), b" world", "the last data piece is released with the end of the body");
    }

    async fn signed_put(declared: &[u8], reads: &[&[u8]]) -> (Vec<Vec<u8>>, Result<(), S3Error>) {
        use sha2::Digest;
        let creds = Credentials::new("AKTEST", "secret");
        let filter = Sigv4Filter::new(creds.clone());
        let mut req = RequestHeader::build("PUT", b"/bkt/k", None).unwrap();
        req.insert_header("host", "proxy:9000").unwrap();
        req.insert_header("content-length", declared.len().to_string()).unwrap();
        let sha = hex::encode(sha2::Sha256::digest(declared));
        test_signer::sign(&mut req, &creds, &["content-length", "host", "x-amz-content-sha256", "x-amz-date"], &sha, SystemTime::now());
        send(&filter, &req, reads).await
    }

    /// A signed payload goes on one piece late, whole once its SHA-256 checked out, and a
    /// body that does not match never reaches the backend whole.
    #[tokio::test]
    async fn signed_payload_goes_on_one_piece_late() {
        let body = b"hello signed world";
        let (released, verdict) = signed_put(body, &[b"hello ", b"signed ", b"world"]).await;
        verdict.unwrap();
        assert_eq!(released, vec![b"".to_vec(), b"hello ".to_vec(), b"signed world".to_vec()]);

        let (released, verdict) = signed_put(body, &[b"hello ", b"signed ", b"WORLD"]).await;
        assert_eq!(verdict.unwrap_err().code, S3ErrorCode::XAmzContentSHA256Mismatch);
        assert_eq!(released.concat(), b"hello ");
    }

}
