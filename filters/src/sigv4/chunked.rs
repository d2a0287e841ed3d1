//! aws-chunked request bodies (`Content-Encoding: aws-chunked`), decoded as they stream.
//!
//! Three payload modes (`x-amz-content-sha256`) use this framing:
//!
//! * `STREAMING-AWS4-HMAC-SHA256-PAYLOAD`:
//!   `hex(size);chunk-signature=<sig>\r\n<data>\r\n` ... `0;chunk-signature=<sig>\r\n\r\n`.
//!   Each chunk's signature covers its data and the previous signature (the first one the
//!   request's seed signature): string to sign
//!   `AWS4-HMAC-SHA256-PAYLOAD\n<amz-date>\n<scope>\n<previous>\n<sha256("")>\n<sha256(data)>`.
//! * `STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER`: the same chunks, then after the final
//!   0-size chunk the trailer lines (`x-amz-checksum-crc32:<b64>\r\n`) and
//!   `x-amz-trailer-signature:<sig>\r\n\r\n`, whose string to sign is
//!   `AWS4-HMAC-SHA256-TRAILER\n<amz-date>\n<scope>\n<final chunk signature>\n<sha256(trailer)>`,
//!   the trailer in canonical form: `name:value\n` per line, sorted by name.
//! * `STREAMING-UNSIGNED-PAYLOAD-TRAILER` (what boto3 >= 1.36 and aws-cli send by default
//!   over HTTPS): `hex(size)\r\n<data>\r\n` ... `0\r\n`, trailer lines, `\r\n`. No
//!   signatures; the trailer checksum is what protects the data.
//!
//! [`ChunkedDecoder`] takes the raw body in pieces split anywhere and returns the payload.
//! It is strict about signatures, sizes and the lengths it promised, and tolerant where real
//! clients differ harmlessly: chunk extensions in the unsigned mode are ignored, a blank line
//! between the final chunk and the trailer is skipped, and the body may end without the
//! final `\r\n` once everything it must carry (final chunk, trailer, trailer signature) has
//! come. It never holds more than one chunk header line or trailer line (at most
//! [`MAX_LINE`] bytes, and [`MAX_TRAILER`] for the whole trailer) beyond what it returns.
//!
//! # When signatures are checked, and why releasing data early is sound
//!
//! Payload bytes are returned as soon as they arrive, before the signature of their chunk
//! can be checked: that needs the whole chunk, which may be megabytes. A chunk's signature
//! is checked when its last data byte arrives (the `feed` call that completes the chunk
//! fails on a mismatch), the trailer signature when its line arrives. So a caller can have
//! passed on data of a chunk that later turns out forged. This is acceptable only because
//! the caller commits nothing before [`ChunkedDecoder::finish`] succeeds: the crypto filter
//! holds back its final ciphertext (and with it the completion of the upstream upload) until
//! the end of the body and the decoder's verdict. Every chunk, including the last data chunk
//! and the empty final chunk, is verified before `finish` can return `Ok`, and a forged or
//! truncated stream makes the upload fail instead of storing data. **A caller must not make
//! any decoded byte durable or visible before `finish` has returned `Ok`.**
//!
//! A checksum trailer is returned by `finish` for the caller to compare with its own
//! checksum of the payload ([`crate::checksum::Checksummer::verify`], `BadDigest` on
//! mismatch, as S3 answers).

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::checksum::{invalid_value_error, ChecksumAlgorithm};
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::request::PayloadMode;

use super::VerifiedRequest;

/// Longest chunk header line (`hex;chunk-signature=<64 hex>\r\n` is at most 99 bytes; the
/// unsigned mode may carry chunk extensions) and longest trailer line.
pub const MAX_LINE: usize = 4096;
/// Most bytes the whole trailer (after the final chunk) may take.
pub const MAX_TRAILER: usize = 4096;

const EMPTY_SHA256_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const SIGNATURE_EXT: &[u8] = b"chunk-signature=";
const TRAILER_SIGNATURE: &str = "x-amz-trailer-signature";

/// What the signed modes need from the verified request.
pub struct ChunkSigning {
    pub signing_key: Zeroizing<Vec<u8>>,
    pub amz_date: String,
    pub scope: String,
    pub seed_signature: String,
}

impl ChunkSigning {
    pub fn from_verified(v: &VerifiedRequest) -> Self {
        Self {
            signing_key: Zeroizing::new(v.signing_key().to_vec()),
            amz_date: v.amz_date.clone(),
            scope: v.scope.clone(),
            seed_signature: v.seed_signature.clone(),
        }
    }
}

impl std::fmt::Debug for ChunkSigning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkSigning")
            .field("signing_key", &"<redacted>")
            .field("amz_date", &self.amz_date)
            .field("scope", &self.scope)
            .field("seed_signature", &self.seed_signature)
            .finish()
    }
}

/// The chain of chunk signatures of the signed modes.
struct Chain {
    key: Zeroizing<Vec<u8>>,
    amz_date: String,
    scope: String,
    /// The last verified signature (lower-case hex): the seed, then each chunk's.
    previous: String,
    /// The signature the current chunk's header announced.
    announced: [u8; 64],
    /// SHA-256 of the current chunk's data so far.
    hasher: Sha256,
}

impl Chain {
    fn verify(&mut self, algorithm: &str, hash_lines: &str, provided: &[u8; 64], what: &str) -> Result<(), S3Error> {
        let sts = format!("{algorithm}\n{}\n{}\n{}\n{hash_lines}", self.amz_date, self.scope, self.previous);
        let expected = aws_sigv4::sign::v4::calculate_signature(&self.key[..], sts.as_bytes());
        if !bool::from(expected.as_bytes().ct_eq(&provided[..])) {
            return Err(s3err(
                S3ErrorCode::SignatureDoesNotMatch,
                format!("The {what} signature we calculated does not match the signature you provided. Check your key and signing method."),
            ));
        }
        self.previous = expected;
        Ok(())
    }

    /// Checks the announced signature of the chunk whose data has been hashed.
    fn verify_chunk(&mut self) -> Result<(), S3Error> {
        let data_hash = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let provided = self.announced;
        self.verify("AWS4-HMAC-SHA256-PAYLOAD", &format!("{EMPTY_SHA256_HEX}\n{data_hash}"), &provided, "chunk")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Signed,
    SignedTrailer,
    UnsignedTrailer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading a chunk header line.
    Header,
    /// Inside a chunk's data.
    Data { remaining: u64 },
    /// After a chunk's data, expecting `\r\n`.
    DataEnd { seen_cr: bool },
    /// After the final 0-size chunk: trailer lines up to an empty line.
    Trailer,
    /// The empty line that ends the body has come: nothing may follow.
    Done,
}

/// Where the decoded payload of one `feed` call goes: kept as one slice of the input when it
/// is one contiguous run (the usual case: a piece inside one chunk), copied together only
/// when a piece spans chunk boundaries.
enum Output {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Output {
    fn push(&mut self, b: Bytes, capacity: usize) {
        *self = match std::mem::replace(self, Output::Empty) {
            Output::Empty => Output::One(b),
            Output::One(first) => {
                let mut m = BytesMut::with_capacity(first.len() + capacity);
                m.extend_from_slice(&first);
                m.extend_from_slice(&b);
                Output::Many(m)
            }
            Output::Many(mut m) => {
                m.extend_from_slice(&b);
                Output::Many(m)
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Output::Empty => Bytes::new(),
            Output::One(b) => b,
            Output::Many(m) => m.freeze(),
        }
    }
}

/// Streaming decoder of one aws-chunked request body. See the module documentation.
pub struct ChunkedDecoder {
    variant: Variant,
    chain: Option<Chain>,
    trailer_alg: Option<ChecksumAlgorithm>,
    decoded_len: u64,
    /// Payload bytes announced by the chunk headers so far.
    announced: u64,
    state: State,
    /// A header or trailer line split across `feed` calls.
    line: Vec<u8>,
    trailer_bytes: usize,
    /// Trailer lines as (lower-case name, trimmed value), without the signature line.
    trailer: Vec<(String, String)>,
    checksum: Option<(ChecksumAlgorithm, String)>,
    /// The trailer signature has been verified: only the closing empty line may follow.
    trailer_signed: bool,
    skipped_blank: bool,
    failed: Option<S3Error>,
}

impl std::fmt::Debug for ChunkedDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedDecoder")
            .field("variant", &self.variant)
            .field("state", &self.state)
            .field("decoded_len", &self.decoded_len)
            .field("announced", &self.announced)
            .field("trailer", &self.trailer_alg)
            .field("failed", &self.failed.as_ref().map(|e| e.code))
            .finish_non_exhaustive()
    }
}

fn malformed(what: &str) -> S3Error {
    s3err(S3ErrorCode::InvalidRequest, format!("Malformed aws-chunked request body: {what}."))
}

fn incomplete(what: &str) -> S3Error {
    s3err(S3ErrorCode::IncompleteBody, format!("The request body terminated unexpectedly: {what}."))
}

fn parse_signature(s: &[u8]) -> Option<[u8; 64]> {
    let sig: [u8; 64] = s.try_into().ok()?;
    sig.iter().all(u8::is_ascii_hexdigit).then(|| sig.map(|b| b.to_ascii_lowercase()))
}

impl ChunkedDecoder {
    /// `mode` must be one of the streaming modes. `signing` is required for the signed
    /// ones (and ignored for `STREAMING-UNSIGNED-PAYLOAD-TRAILER`); `trailer` is the
    /// checksum announced in `x-amz-trailer`, only allowed with the `-TRAILER` modes;
    /// `decoded_len` is `x-amz-decoded-content-length`.
    pub fn new(
        mode: PayloadMode,
        signing: Option<ChunkSigning>,
        trailer: Option<ChecksumAlgorithm>,
        decoded_len: u64,
    ) -> Result<Self, S3Error> {
        let variant = match mode {
            PayloadMode::StreamingSigned => Variant::Signed,
            PayloadMode::StreamingSignedTrailer => Variant::SignedTrailer,
            PayloadMode::StreamingUnsignedTrailer => Variant::UnsignedTrailer,
            other => return Err(S3Error::internal("aws-chunked decoder", format!("not a streaming payload mode: {other:?}"))),
        };
        if variant == Variant::Signed && trailer.is_some() {
            return Err(s3err(
                S3ErrorCode::InvalidRequest,
                "x-amz-trailer requires x-amz-content-sha256 STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER or STREAMING-UNSIGNED-PAYLOAD-TRAILER.",
            ));
        }
        let chain = match (variant, signing) {
            (Variant::UnsignedTrailer, _) => None,
            (_, Some(s)) => Some(Chain {
                key: s.signing_key,
                amz_date: s.amz_date,
                scope: s.scope,
                previous: s.seed_signature.to_ascii_lowercase(),
                announced: [0; 64],
                hasher: Sha256::new(),
            }),
            (_, None) => return Err(S3Error::internal("aws-chunked decoder", "signed streaming mode without signing parameters")),
        };
        Ok(Self {
            variant,
            chain,
            trailer_alg: trailer,
            decoded_len,
            announced: 0,
            state: State::Header,
            line: Vec::new(),
            trailer_bytes: 0,
            trailer: Vec::new(),
            checksum: None,
            trailer_signed: false,
            skipped_blank: false,
            failed: None,
        })
    }

    /// Feeds the next piece of the raw body (split anywhere) and returns the payload bytes
    /// it completes, as slices of `input` (no copy) unless the piece spans chunk boundaries.
    /// After an error every later call returns that error again.
    pub fn feed_bytes(&mut self, input: Bytes) -> Result<Bytes, S3Error> {
        self.feed_inner(&input, Some(&input))
    }

    /// [`Self::feed_bytes`] for a borrowed piece: the payload is copied out of it.
    pub fn feed(&mut self, input: &[u8]) -> Result<Bytes, S3Error> {
        self.feed_inner(input, None)
    }

    /// Payload bytes announced by the chunk headers so far (they are returned as they come).
    pub fn decoded_so_far(&self) -> u64 {
        self.announced
            - match self.state {
                State::Data { remaining } => remaining,
                _ => 0,
            }
    }

    /// Ends the body: errors if it is incomplete or cut (`IncompleteBody`), if the final
    /// chunk or trailer signature is missing, or if an earlier `feed` failed. Returns the
    /// trailer checksum (algorithm and base64 value as sent) if the body carried one; it
    /// always does when one was announced.
    pub fn finish(self) -> Result<Option<(ChecksumAlgorithm, String)>, S3Error> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        match self.state {
            State::Done => Ok(self.checksum),
            State::Trailer if self.line.is_empty() => {
                self.check_trailer_complete(true)?;
                Ok(self.checksum)
            }
            State::Trailer => Err(incomplete("the trailer is cut short")),
            State::Header if self.line.is_empty() && self.announced == 0 => Err(incomplete("the body has no chunks")),
            State::Header | State::Data { .. } | State::DataEnd { .. } => Err(incomplete("the final 0-size chunk did not arrive")),
        }
    }

    fn feed_inner(&mut self, input: &[u8], owner: Option<&Bytes>) -> Result<Bytes, S3Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut out = Output::Empty;
        match self.run(input, owner, &mut out) {
            Ok(()) => Ok(out.into_bytes()),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn run(&mut self, input: &[u8], owner: Option<&Bytes>, out: &mut Output) -> Result<(), S3Error> {
        let mut pos = 0;
        while pos < input.len() {
            match self.state {
                State::Data { remaining } => {
                    let n = usize::try_from(remaining).unwrap_or(usize::MAX).min(input.len() - pos);
                    let data = &input[pos..pos + n];
                    if let Some(chain) = &mut self.chain {
                        chain.hasher.update(data);
                    }
                    out.push(
                        match owner {
                            Some(b) => b.slice(pos..pos + n),
                            None => Bytes::copy_from_slice(data),
                        },
                        input.len() - pos,
                    );
                    pos += n;
                    let remaining = remaining - n as u64;
                    self.state = State::Data { remaining };
                    if remaining == 0 {
                        if let Some(chain) = &mut self.chain {
                            chain.verify_chunk()?;
                        }
                        self.state = State::DataEnd { seen_cr: false };
                    }
                }
                State::DataEnd { seen_cr } => {
                    self.state = match (seen_cr, input[pos]) {
                        (false, b'\r') => State::DataEnd { seen_cr: true },
                        (true, b'\n') => State::Header,
                        _ => return Err(malformed("chunk data is not followed by CRLF (chunk longer than its size?)")),
                    };
                    pos += 1;
                }
                State::Header | State::Trailer => {
                    // Bytes this line may still take (the partial line is in `self.line`).
                    let limit = if self.state == State::Header {
                        MAX_LINE - self.line.len()
                    } else {
                        MAX_LINE.min(MAX_TRAILER - self.trailer_bytes) - self.line.len()
                    };
                    let rest = &input[pos..];
                    let window = &rest[..rest.len().min(limit)];
                    match window.iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            let end = pos + i + 1;
                            if self.state == State::Trailer {
                                self.trailer_bytes += self.line.len() + i + 1;
                            }
                            if self.line.is_empty() {
                                self.on_line(&input[pos..end])?;
                            } else {
                                let mut line = std::mem::take(&mut self.line);
                                line.extend_from_slice(&input[pos..end]);
                                let r = self.on_line(&line);
                                line.clear();
                                self.line = line;
                                r?;
                            }
                            pos = end;
                        }
                        None if window.len() == rest.len() => {
                            self.line.extend_from_slice(rest);
                            pos = input.len();
                        }
                        None if self.state == State::Header => {
                            return Err(malformed(&format!("chunk header line longer than {MAX_LINE} bytes")))
                        }
                        None => return Err(malformed(&format!("trailer longer than {MAX_TRAILER} bytes"))),
                    }
                }
                State::Done => return Err(malformed("data follows the end of the body")),
            }
        }
        Ok(())
    }

    /// One complete line, with its line end.
    fn on_line(&mut self, line: &[u8]) -> Result<(), S3Error> {
        let line = line
            .strip_suffix(b"\r\n")
            .ok_or_else(|| malformed("line not terminated by CRLF"))?;
        match self.state {
            State::Header => self.on_chunk_header(line),
            _ => self.on_trailer_line(line),
        }
    }

    fn on_chunk_header(&mut self, line: &[u8]) -> Result<(), S3Error> {
        let (size_hex, ext) = match line.iter().position(|&b| b == b';') {
            Some(i) => (&line[..i], Some(&line[i + 1..])),
            None => (line, None),
        };
        if size_hex.is_empty() || size_hex.len() > 16 || !size_hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(malformed("chunk size is not a hexadecimal number"));
        }
        let size_str = std::str::from_utf8(size_hex).map_err(|_| malformed("chunk size is not ASCII"))?;
        let size = u64::from_str_radix(size_str, 16).map_err(|_| malformed("chunk size is not a hexadecimal number"))?;
        if let Some(chain) = &mut self.chain {
            let sig = ext
                .and_then(|e| e.strip_prefix(SIGNATURE_EXT))
                .and_then(parse_signature)
                .ok_or_else(|| {
                    s3err(S3ErrorCode::SignatureDoesNotMatch, "Each chunk must carry one chunk-signature of 64 hexadecimal characters.")
                })?;
            chain.announced = sig;
        }
        // The unsigned mode ignores chunk extensions (RFC 9112 chunk-ext).
        if size > self.decoded_len - self.announced {
            return Err(incomplete("the chunks carry more data than x-amz-decoded-content-length"));
        }
        self.announced += size;
        if size > 0 {
            self.state = State::Data { remaining: size };
            return Ok(());
        }
        // The final chunk.
        if self.announced != self.decoded_len {
            return Err(incomplete(&format!(
                "x-amz-decoded-content-length is {} but the chunks carried {} bytes",
                self.decoded_len, self.announced
            )));
        }
        if let Some(chain) = &mut self.chain {
            chain.verify_chunk()?;
        }
        self.state = State::Trailer;
        Ok(())
    }

    fn on_trailer_line(&mut self, line: &[u8]) -> Result<(), S3Error> {
        if line.is_empty() {
            let nothing_yet = self.trailer.is_empty() && !self.trailer_signed;
            if nothing_yet && !self.skipped_blank && self.variant != Variant::Signed && self.expects_more_trailer() {
                // Tolerated: a blank line between the final chunk and the trailer.
                self.skipped_blank = true;
                return Ok(());
            }
            self.check_trailer_complete(false)?;
            self.state = State::Done;
            return Ok(());
        }
        if self.variant == Variant::Signed {
            return Err(malformed("a trailer needs x-amz-content-sha256 STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"));
        }
        if self.trailer_signed {
            return Err(malformed("trailer lines follow x-amz-trailer-signature"));
        }
        let text = std::str::from_utf8(line).map_err(|_| malformed("trailer line is not UTF-8"))?;
        let (name, value) = text.split_once(':').ok_or_else(|| malformed("trailer line without ':'"))?;
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if name == TRAILER_SIGNATURE {
            return self.on_trailer_signature(value);
        }
        if name.starts_with("x-amz-checksum-") {
            let alg = ChecksumAlgorithm::from_header_name(&name)
                .ok_or_else(|| s3err(S3ErrorCode::InvalidRequest, format!("The trailing header {name} names an unsupported checksum algorithm.")))?;
            if self.trailer_alg != Some(alg) {
                return Err(s3err(S3ErrorCode::InvalidRequest, format!("The trailing header {name} was not announced in x-amz-trailer.")));
            }
            if self.checksum.is_some() {
                return Err(s3err(S3ErrorCode::InvalidRequest, format!("The trailing header {name} appears more than once.")));
            }
            if !alg.is_valid_value(value) {
                return Err(invalid_value_error(alg, true));
            }
            self.checksum = Some((alg, value.to_string()));
        }
        // Other trailing headers are covered by the trailer signature and otherwise ignored.
        self.trailer.push((name, value.to_string()));
        Ok(())
    }

    fn on_trailer_signature(&mut self, value: &str) -> Result<(), S3Error> {
        let chain = match (self.variant, &mut self.chain) {
            (Variant::SignedTrailer, Some(c)) => c,
            _ => return Err(malformed("x-amz-trailer-signature in a body whose trailer is not signed")),
        };
        let provided = parse_signature(value.as_bytes()).ok_or_else(|| {
            s3err(S3ErrorCode::SignatureDoesNotMatch, "x-amz-trailer-signature must be 64 hexadecimal characters.")
        })?;
        let mut sorted: Vec<&(String, String)> = self.trailer.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut canonical = Sha256::new();
        for (n, v) in sorted {
            canonical.update(n.as_bytes());
            canonical.update(b":");
            canonical.update(v.as_bytes());
            canonical.update(b"\n");
        }
        chain.verify("AWS4-HMAC-SHA256-TRAILER", &hex::encode(canonical.finalize()), &provided, "trailer")?;
        self.trailer_signed = true;
        Ok(())
    }

    /// Whether the trailer still lacks something it must carry.
    fn expects_more_trailer(&self) -> bool {
        (self.variant == Variant::SignedTrailer && !self.trailer_signed) || (self.trailer_alg.is_some() && self.checksum.is_none())
    }

    /// At the end of the trailer (`at_eof`: the body ended without the closing empty line).
    fn check_trailer_complete(&self, at_eof: bool) -> Result<(), S3Error> {
        if let Some(alg) = self.trailer_alg.filter(|_| self.checksum.is_none()) {
            return Err(if at_eof {
                incomplete(&format!("the trailing header {} did not arrive", alg.header_name()))
            } else {
                s3err(S3ErrorCode::InvalidRequest, format!("x-amz-trailer announced {} but the trailer does not carry it.", alg.header_name()))
            });
        }
        if self.variant == Variant::SignedTrailer && !self.trailer_signed {
            return Err(if at_eof {
                incomplete("x-amz-trailer-signature did not arrive")
            } else {
                s3err(S3ErrorCode::SignatureDoesNotMatch, "The trailer lacks x-amz-trailer-signature.")
            });
        }
        Ok(())
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::Checksummer;
    use aws_sigv4::sign::v4;
    use proptest::prelude::*;
    use std::time::SystemTime;

    const AK: &str = "AKIAIOSFODNN7EXAMPLE";
    const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20130524T000000Z";
    const SCOPE: &str = "20130524/us-east-1/s3/aws4_request";
    /// "Signature Calculations for the Authorization Header: Transferring Payload in Multiple
    /// Chunks", Example: PUT Object (seed, then the signatures of the 64 KiB, 1 KiB and 0 chunks).
    const DOC_SEED: &str = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
    const DOC_SIGS: [&str; 3] = [
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
    ];
    /// "Signature calculations for trailing headers (chunked uploads)", same object, with a
    /// CRC32C trailer.
    const DOC_TRAILER_SEED: &str = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e";
    const DOC_TRAILER_SIGS: [&str; 3] = [
        "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
        "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
        "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
    ];
    const DOC_TRAILER: &str = "x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n";

    type Decoded = (Vec<u8>, Option<(ChecksumAlgorithm, String)>);

    fn time() -> SystemTime {
        super::super::parse_amz_date(DATE).unwrap()
    }

    fn signing(seed: &str) -> ChunkSigning {
        let key = v4::generate_signing_key(SK, time(), "us-east-1", "s3");
        ChunkSigning {
            signing_key: Zeroizing::new(key.as_ref().to_vec()),
            amz_date: DATE.into(),
            scope: SCOPE.into(),
            seed_signature: seed.into(),
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 31 + 7) % 251) as u8).collect()
    }

    fn b64(alg: ChecksumAlgorithm, data: &[u8]) -> String {
        let mut c = Checksummer::new(alg);
        c.update(data);
        c.finish_base64()
    }

    #[derive(Clone, Copy, Debug)]
    struct Setup {
        mode: PayloadMode,
        seed: &'static str,
        trailer: Option<ChecksumAlgorithm>,
        len: u64,
    }

    impl Setup {
        fn signed(len: usize) -> Self {
            Setup { mode: PayloadMode::StreamingSigned, seed: DOC_SEED, trailer: None, len: len as u64 }
        }
        fn signed_trailer(len: usize, alg: ChecksumAlgorithm) -> Self {
            Setup { mode: PayloadMode::StreamingSignedTrailer, seed: DOC_TRAILER_SEED, trailer: Some(alg), len: len as u64 }
        }
        fn unsigned(len: usize, alg: Option<ChecksumAlgorithm>) -> Self {
            Setup { mode: PayloadMode::StreamingUnsignedTrailer, seed: "", trailer: alg, len: len as u64 }
        }

        fn decoder(&self) -> ChunkedDecoder {
            let signing = (self.mode != PayloadMode::StreamingUnsignedTrailer).then(|| signing(self.seed));
            ChunkedDecoder::new(self.mode, signing, self.trailer, self.len).unwrap()
        }

        /// Feeds `body` cut at the ascending positions `cuts`, then finishes.
        fn decode_cuts(&self, body: &[u8], cuts: &[usize]) -> Result<Decoded, S3Error> {
            let mut d = self.decoder();
            let mut out = Vec::new();
            let mut start = 0;
            for &c in cuts.iter().chain([body.len()].iter()) {
                out.extend_from_slice(&d.feed_bytes(Bytes::copy_from_slice(&body[start..c]))?);
                start = c;
            }
            let trailer = d.finish()?;
            Ok((out, trailer))
        }

        fn decode(&self, body: &[u8]) -> Result<Decoded, S3Error> {
            self.decode_cuts(body, &[])
        }

        fn err(&self, body: &[u8]) -> S3ErrorCode {
            self.decode(body).unwrap_err().code
        }
    }

    /// A signed body built with aws-sigv4's own `sign_chunk` / `sign_trailer` (an
    /// implementation independent of the decoder's). `sizes`: the data chunks.
    fn sign_body(seed: &str, data: &[u8], sizes: &[usize], trailer: Option<(&str, &str)>) -> Vec<u8> {
        let identity = aws_credential_types::Credentials::new(AK, SK, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("s3")
            .time(time())
            .settings(())
            .build()
            .unwrap();
        let (mut body, mut prev, mut off) = (Vec::new(), seed.to_string(), 0);
        for &n in sizes.iter().chain([0].iter()) {
            let chunk = Bytes::copy_from_slice(&data[off..off + n]);
            off += n;
            let sig = v4::sign_chunk(&chunk, &prev, &params).unwrap().signature().to_string();
            body.extend_from_slice(format!("{n:x};chunk-signature={sig}\r\n").as_bytes());
            if n > 0 {
                body.extend_from_slice(&chunk);
                body.extend_from_slice(b"\r\n");
            }
            prev = sig;
        }
        assert_eq!(off, data.len());
        match trailer {
            None => body.extend_from_slice(b"\r\n"),
            Some((name, value)) => {
                let mut h = aws_smithy_runtime_api::http::Headers::new();
                h.insert(name.to_string(), value.to_string());
                let sig = v4::sign_trailer(&h, &prev, &params).unwrap().signature().to_string();
                body.extend_from_slice(format!("{name}:{value}\r\nx-amz-trailer-signature:{sig}\r\n\r\n").as_bytes());
            }
        }
        body
    }

    /// An unsigned-trailer body as botocore's AwsChunkedWrapper writes it.
    fn unsigned_body(data: &[u8], sizes: &[usize], trailer: Option<(&str, &str)>) -> Vec<u8> {
        let (mut body, mut off) = (Vec::new(), 0);
        for &n in sizes {
            body.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            body.extend_from_slice(&data[off..off + n]);
            body.extend_from_slice(b"\r\n");
            off += n;
        }
        assert_eq!(off, data.len());
        body.extend_from_slice(b"0\r\n");
        if let Some((name, value)) = trailer {
            body.extend_from_slice(format!("{name}:{value}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body
    }

    fn doc_body(sigs: [&str; 3], after_final: &str) -> Vec<u8> {
        let mut b = format!("10000;chunk-signature={}\r\n", sigs[0]).into_bytes();
        b.extend_from_slice(&[b'a'; 65536]);
        b.extend_from_slice(format!("\r\n400;chunk-signature={}\r\n", sigs[1]).as_bytes());
        b.extend_from_slice(&[b'a'; 1024]);
        b.extend_from_slice(format!("\r\n0;chunk-signature={}\r\n{after_final}", sigs[2]).as_bytes());
        b
    }

    /// Small bodies of each mode (data, body, setup), for exhaustive split and cut tests.
    fn small_bodies(len: usize, sizes: &[usize]) -> Vec<(Vec<u8>, Vec<u8>, Setup)> {
        let data = pattern(len);
        let crc32 = b64(ChecksumAlgorithm::Crc32, &data);
        let crc64 = b64(ChecksumAlgorithm::Crc64Nvme, &data);
        vec![
            (data.clone(), sign_body(DOC_SEED, &data, sizes, None), Setup::signed(len)),
            (
                data.clone(),
                sign_body(DOC_TRAILER_SEED, &data, sizes, Some(("x-amz-checksum-crc32", &crc32))),
                Setup::signed_trailer(len, ChecksumAlgorithm::Crc32),
            ),
            (
                data.clone(),
                unsigned_body(&data, sizes, Some(("x-amz-checksum-crc64nvme", &crc64))),
                Setup::unsigned(len, Some(ChecksumAlgorithm::Crc64Nvme)),
            ),
            (data.clone(), unsigned_body(&data, sizes, None), Setup::unsigned(len, None)),
        ]
    }

    fn flip_hex(body: &mut [u8], at: usize) {
        body[at] = if body[at] == b'0' { b'1' } else { b'0' };
    }

    fn find(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).position(|w| w == needle).unwrap()
    }

    #[test]
    fn aws_doc_example_signed_chunks() {
        let body = doc_body(DOC_SIGS, "\r\n");
        assert_eq!(body.len(), 66824, "Content-Length of the documented request");
        let setup = Setup::signed(66560);
        for piece in [1usize, 7, 100, 8192, 65536, 65623, 70000] {
            let cuts: Vec<usize> = (piece..body.len()).step_by(piece).collect();
            let (data, trailer) = setup.decode_cuts(&body, &cuts).unwrap();
            assert_eq!(data, vec![b'a'; 66560], "pieces of {piece}");
            assert_eq!(trailer, None);
        }
        // Upper-case hex signatures are the same signatures.
        let upper = [DOC_SIGS[0].to_uppercase(), DOC_SIGS[1].to_uppercase(), DOC_SIGS[2].to_uppercase()];
        setup.decode(&doc_body([&upper[0], &upper[1], &upper[2]], "\r\n")).unwrap();
        // The documented signatures are what aws-sigv4 computes too.
        assert_eq!(sign_body(DOC_SEED, &[b'a'; 66560], &[65536, 1024], None), body);
    }

    #[test]
    fn aws_doc_example_signed_trailer() {
        assert_eq!(b64(ChecksumAlgorithm::Crc32c, &[b'a'; 66560]), "sOO8/Q==");
        let setup = Setup::signed_trailer(66560, ChecksumAlgorithm::Crc32c);
        let want = Some((ChecksumAlgorithm::Crc32c, "sOO8/Q==".to_string()));
        // As documented (the body ends after the trailer signature line), with the closing
        // empty line, and with a blank line before the trailer: all accepted.
        for after in [DOC_TRAILER.to_string(), format!("{DOC_TRAILER}\r\n"), format!("\r\n{DOC_TRAILER}\r\n")] {
            let body = doc_body(DOC_TRAILER_SIGS, &after);
            let (data, trailer) = setup.decode_cuts(&body, &[3, 65600, 66000]).unwrap();
            assert_eq!(data, vec![b'a'; 66560]);
            assert_eq!(trailer, want);
        }
        let body = doc_body(DOC_TRAILER_SIGS, &format!("{DOC_TRAILER}\r\n"));
        let ours = sign_body(DOC_TRAILER_SEED, &[b'a'; 66560], &[65536, 1024], Some(("x-amz-checksum-crc32c", "sOO8/Q==")));
        assert_eq!(ours, body);
    }

    /// The documented request through `verify`, then its body through the decoder seeded by
    /// `ChunkSigning::from_verified`.
    #[test]
    fn aws_doc_example_from_verified_request() {
        let mut r = pingora::http::RequestHeader::build("PUT", b"/examplebucket/chunkObject.txt", None).unwrap();
        for (k, v) in [
            ("host", "s3.amazonaws.com"),
            ("x-amz-date", DATE),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"),
            ("content-length", "66824"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"),
        ] {
            r.append_header(k.to_string(), v).unwrap();
        }
        let s = crate::request::S3Request::parse(&r, None).unwrap();
        let v = super::super::verify(&r, &s, &super::super::Credentials::new(AK, SK), time()).unwrap();
        assert_eq!(v.seed_signature, DOC_SEED);
        let mut d = ChunkedDecoder::new(v.payload, Some(ChunkSigning::from_verified(&v)), None, 66560).unwrap();
        let out = d.feed_bytes(Bytes::from(doc_body(DOC_SIGS, "\r\n"))).unwrap();
        assert_eq!(out.len(), 66560);
        assert_eq!(d.finish().unwrap(), None);
    }

    #[test]
    fn every_split_position_and_byte_at_a_time() {
        for (data, body, setup) in small_bodies(100, &[40, 33, 27]) {
            let all: Vec<usize> = (1..body.len()).collect();
            assert_eq!(setup.decode_cuts(&body, &all).unwrap().0, data, "{setup:?} byte at a time");
            for i in 0..=body.len() {
                let (got, trailer) = setup.decode_cuts(&body, &[i]).unwrap();
                assert_eq!(got, data, "{setup:?} split at {i}");
                assert_eq!(trailer.map(|t| t.0), setup.trailer);
            }
        }
    }

    #[test]
    fn every_pair_of_split_positions() {
        for (data, body, setup) in small_bodies(20, &[9, 11]) {
            for i in 0..=body.len() {
                for j in i..=body.len() {
                    assert_eq!(setup.decode_cuts(&body, &[i, j]).unwrap().0, data, "{setup:?} split at {i}, {j}");
                }
            }
        }
    }

    #[test]
    fn empty_object() {
        for (data, body, setup) in small_bodies(0, &[]) {
            assert_eq!(setup.decode(&body).unwrap().0, data);
        }
        assert_eq!(
            Setup::unsigned(0, Some(ChecksumAlgorithm::Crc32)).decode(b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n").unwrap(),
            (vec![], Some((ChecksumAlgorithm::Crc32, "AAAAAA==".into())))
        );
        assert_eq!(Setup::unsigned(0, None).err(b""), S3ErrorCode::IncompleteBody);
    }

    /// A body cut anywhere fails, except without its closing empty line (tolerated: all
    /// it must carry has come by then).
    #[test]
    fn truncated_at_every_position() {
        for (data, body, setup) in small_bodies(100, &[40, 33, 27]) {
            for p in 0..body.len() {
                let r = setup.decode(&body[..p]);
                if p == body.len() - 2 {
                    assert_eq!(r.unwrap().0, data, "{setup:?} without the final CRLF");
                } else {
                    assert_eq!(r.unwrap_err().code, S3ErrorCode::IncompleteBody, "{setup:?} cut at {p}");
                }
            }
        }
    }

    #[test]
    fn wrong_chunk_signatures() {
        let body = doc_body(DOC_SIGS, "\r\n");
        let setup = Setup::signed(66560);
        // First chunk: the data is released as it comes; the feed that completes the chunk fails.
        let mut bad = body.clone();
        flip_hex(&mut bad, 30);
        let mut d = setup.decoder();
        let header_end = find(&bad, b"\r\n") + 2;
        assert_eq!(d.feed(&bad[..header_end + 65535]).unwrap().len(), 65535);
        assert_eq!(d.feed(&bad[header_end + 65535..]).unwrap_err().code, S3ErrorCode::SignatureDoesNotMatch);
        assert_eq!(d.feed(b"more").unwrap_err().code, S3ErrorCode::SignatureDoesNotMatch, "errors stick");
        assert_eq!(d.finish().unwrap_err().code, S3ErrorCode::SignatureDoesNotMatch);
        // Second and final (0-size) chunk.
        for sig in [DOC_SIGS[1], DOC_SIGS[2]] {
            let mut bad = body.clone();
            flip_hex(&mut bad, find(&body, sig.as_bytes()) + 63);
            assert_eq!(setup.err(&bad), S3ErrorCode::SignatureDoesNotMatch);
        }
        // One data byte changed, a wrong seed, chunks signed in another order.
        let mut bad = body.clone();
        bad[5000] = b'b';
        assert_eq!(setup.err(&bad), S3ErrorCode::SignatureDoesNotMatch);
        let other_seed = Setup { seed: DOC_TRAILER_SEED, ..setup };
        assert_eq!(other_seed.err(&body), S3ErrorCode::SignatureDoesNotMatch);
        assert_eq!(setup.err(&doc_body([DOC_SIGS[1], DOC_SIGS[0], DOC_SIGS[2]], "\r\n")), S3ErrorCode::SignatureDoesNotMatch);
        // The trailer example's signatures in the non-trailer mode.
        assert_eq!(setup.err(&doc_body(DOC_TRAILER_SIGS, "\r\n")), S3ErrorCode::SignatureDoesNotMatch);
        // Missing or malformed chunk-signature extensions.
        let len = Setup::signed(5);
        assert_eq!(len.err(b"5\r\nhello\r\n0\r\n\r\n"), S3ErrorCode::SignatureDoesNotMatch);
        let short = format!("5;chunk-signature={}\r\nhello\r\n", &DOC_SIGS[0][..63]);
        assert_eq!(len.err(short.as_bytes()), S3ErrorCode::SignatureDoesNotMatch);
        let ext = format!("5;x=y;chunk-signature={}\r\nhello\r\n", DOC_SIGS[0]);
        assert_eq!(len.err(ext.as_bytes()), S3ErrorCode::SignatureDoesNotMatch);
    }

    #[test]
    fn wrong_trailer_signature_or_trailer() {
        let setup = Setup::signed_trailer(66560, ChecksumAlgorithm::Crc32c);
        let good = doc_body(DOC_TRAILER_SIGS, &format!("{DOC_TRAILER}\r\n"));
        let mut bad = good.clone();
        flip_hex(&mut bad, find(&good, b"d81f82fc") + 3);
        assert_eq!(setup.err(&bad), S3ErrorCode::SignatureDoesNotMatch);
        // The checksum value is covered by the trailer signature.
        let altered = doc_body(DOC_TRAILER_SIGS, &format!("{}\r\n", DOC_TRAILER.replace("sOO8/Q==", "sOO8/A==")));
        assert_eq!(setup.err(&altered), S3ErrorCode::SignatureDoesNotMatch);
        // No signature line, then lines after it.
        let unsigned = doc_body(DOC_TRAILER_SIGS, "x-amz-checksum-crc32c:sOO8/Q==\r\n\r\n");
        assert_eq!(setup.err(&unsigned), S3ErrorCode::SignatureDoesNotMatch);
        let after = doc_body(DOC_TRAILER_SIGS, &format!("{DOC_TRAILER}x-amz-meta-a:b\r\n\r\n"));
        assert_eq!(setup.err(&after), S3ErrorCode::InvalidRequest);
        let short_sig = doc_body(DOC_TRAILER_SIGS, &format!("{}\r\n", DOC_TRAILER.replace("e435\r\n", "e43\r\n")));
        assert_eq!(setup.err(&short_sig), S3ErrorCode::SignatureDoesNotMatch);
        // Any other trailing header is part of what the signature covers.
        let data = pattern(50);
        let signed = sign_body(DOC_TRAILER_SEED, &data, &[50], Some(("x-amz-meta-note", "  hi  ")));
        let s = Setup::signed_trailer(50, ChecksumAlgorithm::Crc32);
        assert_eq!(s.err(&signed), S3ErrorCode::InvalidRequest, "announced checksum missing");
        let s = Setup { trailer: None, ..s };
        assert_eq!(s.decode(&signed).unwrap(), (data, None));
    }

    #[test]
    fn extra_bytes_after_the_end() {
        let setup = Setup::signed(66560);
        for extra in ["x", "\r\n", "0\r\n\r\n"] {
            assert_eq!(setup.err(&doc_body(DOC_SIGS, &format!("\r\n{extra}"))), S3ErrorCode::InvalidRequest);
        }
        let mut d = setup.decoder();
        d.feed(&doc_body(DOC_SIGS, "\r\n")).unwrap();
        assert_eq!(d.feed(b"!").unwrap_err().code, S3ErrorCode::InvalidRequest);
        let u = Setup::unsigned(5, None);
        assert_eq!(u.err(b"5\r\nhello\r\n0\r\n\r\n\r\n"), S3ErrorCode::InvalidRequest);
    }

    #[test]
    fn oversized_lines_are_refused_without_buffering_them() {
        let setup = Setup::unsigned(1 << 40, None);
        let mut d = setup.decoder();
        for _ in 0..40 {
            d.feed(&[b'1'; 100]).unwrap();
        }
        assert_eq!(d.feed(&[b'1'; 100]).unwrap_err().code, S3ErrorCode::InvalidRequest);
        assert!(d.line.len() <= MAX_LINE);
        let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(MAX_LINE));
        assert_eq!(Setup::unsigned(5, None).err(long_ext.as_bytes()), S3ErrorCode::InvalidRequest);
        let ok_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(MAX_LINE - 6));
        Setup::unsigned(5, None).decode(ok_ext.as_bytes()).unwrap();
        // A trailer of many lines.
        let many = format!("5\r\nhello\r\n0\r\n{}\r\n", "x-amz-meta-a:b\r\n".repeat(300));
        assert_eq!(Setup::unsigned(5, None).err(many.as_bytes()), S3ErrorCode::InvalidRequest);
        // A chunk size beyond u64.
        assert_eq!(Setup::unsigned(5, None).err(b"10000000000000000\r\n"), S3ErrorCode::InvalidRequest);
    }

    #[test]
    fn decoded_length_must_match() {
        let body = doc_body(DOC_SIGS, "\r\n");
        for len in [66559, 66561, 0, 65536] {
            assert_eq!(Setup::signed(len).err(&body), S3ErrorCode::IncompleteBody, "declared {len}");
        }
        // More data than declared is refused at the chunk header, before any of it is returned.
        let mut d = Setup::signed(65535).decoder();
        assert_eq!(d.feed(&body[..100]).unwrap_err().code, S3ErrorCode::IncompleteBody);
        let u = Setup::unsigned(4, None);
        assert_eq!(u.err(b"5\r\nhello\r\n0\r\n\r\n"), S3ErrorCode::IncompleteBody);
        let u = Setup::unsigned(6, None);
        assert_eq!(u.err(b"5\r\nhello\r\n0\r\n\r\n"), S3ErrorCode::IncompleteBody);
    }

    #[test]
    fn malformed_framing() {
        let u = Setup::unsigned(5, None);
        for body in [
            &b"5\r\nhelloX\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b";\r\nhello\r\n0\r\n\r\n",
            b"\r\n5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nno colon\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx-amz-trailer-signature:abc\r\n\r\n",
        ] {
            assert_eq!(u.err(body), S3ErrorCode::InvalidRequest, "{:?}", String::from_utf8_lossy(body));
        }
        // Liberal: chunk extensions in the unsigned mode, upper-case hex sizes, leading zeros.
        assert_eq!(u.decode(b"5;foo=bar;chunk-signature=zz\r\nhello\r\n0;x\r\n\r\n").unwrap().0, b"hello");
        let u = Setup::unsigned(26, None);
        assert_eq!(u.decode(b"001A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n").unwrap().0.len(), 26);
        // A trailer in the mode without one.
        let body = doc_body(DOC_SIGS, "x-amz-checksum-crc32c:sOO8/Q==\r\n\r\n");
        assert_eq!(Setup::signed(66560).err(&body), S3ErrorCode::InvalidRequest);
    }

    #[test]
    fn trailer_checksum_rules() {
        use ChecksumAlgorithm::*;
        let hello_crc32 = b64(Crc32, b"hello");
        let body = |t: &str| format!("5\r\nhello\r\n0\r\n{t}\r\n").into_bytes();
        let line = format!("x-amz-checksum-crc32:{hello_crc32}\r\n");
        let ok = Setup::unsigned(5, Some(Crc32));
        assert_eq!(ok.decode(&body(&line)).unwrap().1, Some((Crc32, hello_crc32.clone())));
        // Header names are case-insensitive, values trimmed; a blank line before the trailer is skipped.
        let spaced = format!("X-Amz-Checksum-CRC32: {hello_crc32} \r\n");
        assert_eq!(ok.decode(&body(&spaced)).unwrap().1, Some((Crc32, hello_crc32.clone())));
        assert_eq!(ok.decode(&body(&format!("\r\n{line}"))).unwrap().1, Some((Crc32, hello_crc32.clone())));
        // Not announced, another algorithm, twice, malformed, unknown.
        assert_eq!(Setup::unsigned(5, None).err(&body(&line)), S3ErrorCode::InvalidRequest);
        assert_eq!(Setup::unsigned(5, Some(Crc32c)).err(&body(&line)), S3ErrorCode::InvalidRequest);
        assert_eq!(ok.err(&body(&format!("{line}{line}"))), S3ErrorCode::InvalidRequest);
        let e = ok.decode(&body("x-amz-checksum-crc32:AAAA\r\n")).unwrap_err();
        assert_eq!(e.message, "Value for x-amz-checksum-crc32 trailing header is invalid.");
        assert_eq!(ok.err(&body("x-amz-checksum-md5:AAAAAA==\r\n")), S3ErrorCode::InvalidRequest);
        // Announced but absent: the body ends first (one blank line may precede the trailer),
        // or the trailer ends without it.
        assert_eq!(ok.err(b"5\r\nhello\r\n0\r\n"), S3ErrorCode::IncompleteBody);
        assert_eq!(ok.err(&body("")), S3ErrorCode::IncompleteBody);
        assert_eq!(ok.err(b"5\r\nhello\r\n0\r\n\r\n\r\n"), S3ErrorCode::InvalidRequest);
        assert_eq!(ok.err(b"5\r\nhello\r\n0\r\nx-amz-meta-a:b\r\n\r\n"), S3ErrorCode::InvalidRequest);
        // Other trailing headers are ignored.
        let other = format!("x-amz-meta-x:y\r\n{line}");
        assert_eq!(ok.decode(&body(&other)).unwrap().1, Some((Crc32, hello_crc32)));
    }

    #[test]
    fn constructor_checks() {
        let e = ChunkedDecoder::new(PayloadMode::StreamingSigned, Some(signing(DOC_SEED)), Some(ChecksumAlgorithm::Crc32), 1);
        assert_eq!(e.err().unwrap().code, S3ErrorCode::InvalidRequest);
        let e = ChunkedDecoder::new(PayloadMode::Unsigned, None, None, 1);
        assert_eq!(e.err().unwrap().code, S3ErrorCode::InternalError);
        let e = ChunkedDecoder::new(PayloadMode::StreamingSignedTrailer, None, None, 1);
        assert_eq!(e.err().unwrap().code, S3ErrorCode::InternalError);
        // The unsigned mode ignores signing parameters.
        let mut d = ChunkedDecoder::new(PayloadMode::StreamingUnsignedTrailer, Some(signing(DOC_SEED)), None, 5).unwrap();
        d.feed(b"5\r\nhello\r\n0\r\n\r\n").unwrap();
        d.finish().unwrap();
        assert!(!format!("{:?}", signing(DOC_SEED)).contains(&hex::encode(&signing(DOC_SEED).signing_key[..])));
    }

    #[test]
    fn payload_inside_one_chunk_is_not_copied() {
        let body = Bytes::from(doc_body(DOC_SIGS, "\r\n"));
        let mut d = Setup::signed(66560).decoder();
        let first = d.feed_bytes(body.slice(..10_000)).unwrap();
        assert_eq!(first.len(), 10_000 - 88);
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        assert!(range.contains(&(first.as_ptr() as usize)), "a slice of the input");
        assert_eq!(d.decoded_so_far(), 10_000 - 88);
        // A piece spanning two chunks comes back as one buffer.
        let rest = d.feed_bytes(body.slice(10_000..)).unwrap();
        assert_eq!(rest.len(), 66560 - first.len());
        assert_eq!(d.decoded_so_far(), 66560);
        d.finish().unwrap();
    }

    /// `aws s3 cp` (aws-cli 1.45.11, botocore 1.43.11) over HTTPS, recorded by
    /// `tests/fixtures/capture_aws_cli.py`.
    #[test]
    fn aws_cli_put_object_body() {
        let body = include_bytes!("../../tests/fixtures/aws-cli-1.45.11-put.body");
        let req: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/aws-cli-1.45.11-put.headers.json")).unwrap();
        let h = |n: &str| req["headers"][n].as_str().unwrap().to_string();
        let mode = PayloadMode::parse(&h("X-Amz-Content-SHA256")).unwrap();
        assert_eq!(mode, PayloadMode::StreamingUnsignedTrailer);
        let trailer = ChecksumAlgorithm::from_header_name(&h("X-Amz-Trailer"));
        let len: u64 = h("X-Amz-Decoded-Content-Length").parse().unwrap();
        let want: String = (0..80).map(|i| format!("line {i:04}: the quick brown fox jumps over the lazy dog\n")).collect();
        for piece in [1usize, 13, 1000, body.len()] {
            let mut d = ChunkedDecoder::new(mode, None, trailer, len).unwrap();
            let mut got = Vec::new();
            for p in body.chunks(piece) {
                got.extend_from_slice(&d.feed(p).unwrap());
            }
            let (alg, value) = d.finish().unwrap().unwrap();
            assert_eq!(got, want.as_bytes());
            assert_eq!((alg, value.as_str()), (ChecksumAlgorithm::Crc32, "IUkoHQ=="));
            let mut c = Checksummer::new(alg);
            c.update(&got);
            c.verify(&value).unwrap();
        }
    }

    /// Bodies written by botocore's AwsChunkedWrapper (`tests/fixtures/gen_fixtures.py`).
    #[test]
    fn botocore_bodies() {
        use ChecksumAlgorithm::*;
        let cases: [(&[u8], usize, Option<ChecksumAlgorithm>); 3] = [
            (include_bytes!("../../tests/fixtures/botocore-crc32-2500b-1000chunks.body"), 2500, Some(Crc32)),
            (include_bytes!("../../tests/fixtures/botocore-sha256-trickle.body"), 700, Some(Sha256)),
            (include_bytes!("../../tests/fixtures/botocore-no-checksum.body"), 300, None),
        ];
        for (body, len, alg) in cases {
            let setup = Setup::unsigned(len, alg);
            let cuts: Vec<usize> = [1, 5, 6, 200, 201, 202, 400, 401, 402].into_iter().filter(|&c| c <= body.len()).collect();
            let (data, trailer) = setup.decode_cuts(body, &cuts).unwrap();
            assert_eq!(data, pattern(len));
            assert_eq!(trailer, alg.map(|a| (a, b64(a, &data))));
        }
    }

    /// Every byte of a signed body, changed in three ways: refused, unless only the letter
    /// case of a hex digit or a header name changed and the payload still comes out intact.
    #[test]
    fn any_changed_byte_of_a_signed_body_is_refused() {
        let data = pattern(300);
        let crc = b64(ChecksumAlgorithm::Crc32, &data);
        let body = sign_body(DOC_TRAILER_SEED, &data, &[128, 100, 72], Some(("x-amz-checksum-crc32", &crc)));
        let setup = Setup::signed_trailer(300, ChecksumAlgorithm::Crc32);
        for i in 0..body.len() {
            for xor in [0x01u8, 0x20, 0x80] {
                let mut bad = body.clone();
                bad[i] ^= xor;
                match setup.decode(&bad) {
                    Err(_) => {}
                    Ok((got, _)) => assert!(
                        bad[i].eq_ignore_ascii_case(&body[i]) && got == data,
                        "byte {i} ({:?}) ^ {xor:#x} accepted",
                        body[i] as char
                    ),
                }
            }
        }
    }

    fn sizes_for(len: usize, raw: &[usize]) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut left = len;
        for &s in raw.iter().cycle().take(len + 1) {
            if left == 0 {
                break;
            }
            let n = s.clamp(1, left);
            sizes.push(n);
            left -= n;
        }
        sizes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random data, chunking and cuts, in every mode: the payload comes out unchanged.
        #[test]
        fn random_bodies_decode(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            raw_sizes in proptest::collection::vec(1usize..1200, 1..8),
            raw_cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
        ) {
            let sizes = sizes_for(data.len(), &raw_sizes);
            let crc = b64(ChecksumAlgorithm::Crc32c, &data);
            let sha = b64(ChecksumAlgorithm::Sha1, &data);
            let cases = [
                (sign_body(DOC_SEED, &data, &sizes, None), Setup::signed(data.len())),
                (sign_body(DOC_TRAILER_SEED, &data, &sizes, Some(("x-amz-checksum-crc32c", &crc))), Setup::signed_trailer(data.len(), ChecksumAlgorithm::Crc32c)),
                (unsigned_body(&data, &sizes, Some(("x-amz-checksum-sha1", &sha))), Setup::unsigned(data.len(), Some(ChecksumAlgorithm::Sha1))),
            ];
            for (body, setup) in cases {
                let mut cuts: Vec<usize> = raw_cuts.iter().map(|i| i.index(body.len() + 1)).collect();
                cuts.sort_unstable();
                let (got, trailer) = setup.decode_cuts(&body, &cuts).unwrap();
                prop_assert_eq!(&got, &data);
                if let Some((alg, value)) = trailer {
                    let mut c = Checksummer::new(alg);
                    c.update(&got);
                    prop_assert!(c.verify(&value).is_ok());
                }
            }
        }
    }
}
