//! Verified writes: every object body the proxy sends to the backend carries a checksum of
//! the ciphertext, which the backend verifies before it stores anything, so a byte damaged
//! between the proxy and the backend fails the upload instead of being found at restore time.
//!
//! The body goes upstream as `Content-Encoding: aws-chunked` with
//! `x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER` and a checksum trailer
//! (`x-amz-checksum-crc32c` by default), the framing [`crate::sigv4::chunked`] decodes on the
//! client side:
//!
//! ```text
//! hex(size)\r\n<data>\r\n ... 0\r\nx-amz-checksum-crc32c:<b64>\r\n\r\n
//! ```
//!
//! The ciphertext length is known before the first byte (the format's layout), so the
//! chunk sizes are fixed ([`CHUNK`] bytes each, the last shorter) and the framed length goes
//! in `Content-Length`; the checksum is computed as the ciphertext streams through, in the
//! same pass that adds the framing. Memory stays bounded: nothing is held beyond the piece
//! being framed. A piece that lies inside one aws-chunk (neither starts nor ends it: most
//! pieces, which are smaller than [`CHUNK`]) goes out as it came, shared, not copied; copying
//! every piece into a fresh buffer cost the proxy more in page faults than in the copy.

use bytes::{BufMut, Bytes, BytesMut};

use crate::checksum::{ChecksumAlgorithm, Checksummer};
use crate::error::S3Error;

/// Size of every aws-chunk but the last. AWS requires at least 8 KiB per chunk; larger
/// chunks only make the framing cheaper.
pub const CHUNK: u64 = 256 << 10;

/// Whether a backend's error answer (`code`, `message`) to a body the proxy framed and
/// checksummed says the body arrived damaged: the checksum did not match (AWS `BadDigest`,
/// Garage `InvalidDigest`), or the framing was broken on the way (Garage: `InvalidRequest`
/// "Chunk format error"). Such a refusal is the network's fault, and the client may retry.
pub fn is_damage_refusal(code: &str, message: &str) -> bool {
    matches!(code, "BadDigest" | "InvalidDigest" | "XAmzContentChecksumMismatch" | "InvalidChunkSizeError" | "IncompleteBody")
        || (code == "InvalidRequest" && (message.contains("Chunk format error") || message.contains("checksum")))
}

/// How the proxy protects the bodies it sends to the backend (`backend.verified_writes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifiedWrites {
    /// aws-chunked with a checksum trailer of this algorithm (CRC32C or CRC64NVME).
    Trailer(ChecksumAlgorithm),
    /// `UNSIGNED-PAYLOAD` without a checksum, for backends that do not understand
    /// aws-chunked trailers (the body is still sealed by the format's AEAD).
    Off,
}

impl Default for VerifiedWrites {
    fn default() -> Self {
        Self::Trailer(ChecksumAlgorithm::Crc32c)
    }
}

impl VerifiedWrites {
    /// From `backend.verified_writes` (`trailer`, the default, or `off`) and
    /// `backend.verified_writes_checksum` (`crc32c`, the default, or `crc64nvme`).
    pub fn from_config(mode: &str, checksum: &str) -> Result<Self, String> {
        let alg = match checksum.to_ascii_lowercase().as_str() {
            "crc32c" => ChecksumAlgorithm::Crc32c,
            "crc64nvme" => ChecksumAlgorithm::Crc64Nvme,
            other => return Err(format!("backend.verified_writes_checksum must be crc32c or crc64nvme, not {other:?}")),
        };
        match mode.to_ascii_lowercase().as_str() {
            "trailer" => Ok(Self::Trailer(alg)),
            "off" => Ok(Self::Off),
            other => Err(format!("backend.verified_writes must be trailer or off, not {other:?}")),
        }
    }

    /// The framer for one upstream body of `cipher_len` bytes, and the headers to set on
    /// its request (to be signed with [`crate::backend::Backend::sign_upload`]).
    pub fn framer(self, cipher_len: u64) -> BodyFramer {
        match self {
            Self::Trailer(alg) => BodyFramer::Trailer(TrailerFramer::new(alg, cipher_len)),
            Self::Off => BodyFramer::Plain { cipher_len },
        }
    }
}

/// One upstream body on its way out: passed through as it is, or framed with a trailer.
#[derive(Debug)]
pub enum BodyFramer {
    Plain { cipher_len: u64 },
    Trailer(TrailerFramer),
}

impl BodyFramer {
    pub fn is_trailer(&self) -> bool {
        matches!(self, Self::Trailer(_))
    }

    /// The request's `Content-Length`.
    pub fn content_length(&self) -> u64 {
        match self {
            Self::Plain { cipher_len } => *cipher_len,
            Self::Trailer(t) => t.framed_len(),
        }
    }

    /// Headers that describe the framed body (besides `Content-Length`); they are all
    /// signed (`x-amz-*`) or harmless to leave unsigned (`content-encoding`).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Plain { .. } => Vec::new(),
            Self::Trailer(t) => vec![
                ("content-encoding", "aws-chunked".to_string()),
                ("x-amz-decoded-content-length", t.decoded_len.to_string()),
                ("x-amz-trailer", t.sum.algorithm().header_name().to_string()),
                // As the SDKs send it: S3 (and moto) accept an Object Lock PUT only with a
                // checksum, and take this header as the sign of one.
                ("x-amz-sdk-checksum-algorithm", t.sum.algorithm().name().to_string()),
            ],
        }
    }

    /// A piece of the ciphertext; the last piece goes through [`BodyFramer::last`].
    pub fn piece(&mut self, data: Bytes) -> Bytes {
        match self {
            Self::Plain { .. } => data,
            Self::Trailer(t) => t.frame(data, false),
        }
    }

    /// The last piece of the ciphertext, with the final chunk and the checksum trailer.
    /// Errors if the ciphertext was not as long as announced (a bug: the format's layout
    /// gives the length).
    pub fn last(&mut self, data: Bytes) -> Result<Bytes, S3Error> {
        match self {
            Self::Plain { .. } => Ok(data),
            Self::Trailer(t) => {
                let out = t.frame(data, true);
                if t.sent != t.decoded_len {
                    return Err(S3Error::internal("framing the upstream body", format!("{} bytes sent, {} announced", t.sent, t.decoded_len)));
                }
                Ok(out)
            }
        }
    }
}

/// aws-chunked framing with a checksum trailer, over a body of known length.
pub struct TrailerFramer {
    sum: Checksummer,
    decoded_len: u64,
    /// Payload bytes framed so far.
    sent: u64,
}

impl std::fmt::Debug for TrailerFramer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrailerFramer({:?}, {}/{})", self.sum.algorithm(), self.sent, self.decoded_len)
    }
}

/// Bytes of `hex(size)\r\n` + `\r\n` around a chunk of `size` bytes.
fn chunk_overhead(size: u64) -> u64 {
    let hex_digits = if size == 0 { 1 } else { (64 - size.leading_zeros() as u64).div_ceil(4) };
    hex_digits + 4
}

impl TrailerFramer {
    pub fn new(alg: ChecksumAlgorithm, decoded_len: u64) -> Self {
        Self { sum: Checksummer::new(alg), decoded_len, sent: 0 }
    }

    /// `0\r\n` + `name:value\r\n` + `\r\n`.
    fn trailer_len(&self) -> u64 {
        let alg = self.sum.algorithm();
        let b64 = (alg.digest_len() as u64).div_ceil(3) * 4;
        3 + alg.header_name().len() as u64 + 1 + b64 + 2 + 2
    }

    /// The length of the framed body (`Content-Length`).
    pub fn framed_len(&self) -> u64 {
        let full = self.decoded_len / CHUNK;
        let rest = self.decoded_len % CHUNK;
        let mut n = full * (CHUNK + chunk_overhead(CHUNK));
        if rest > 0 {
            n += rest + chunk_overhead(rest);
        }
        n + self.trailer_len()
    }

    /// Frames `data` (checksummed on the way) and, when `last`, appends the trailer.
    fn frame(&mut self, data: Bytes, last: bool) -> Bytes {
        let offset = self.sent % CHUNK;
        let chunk_end = CHUNK.min(self.decoded_len - (self.sent - offset));
        if !last && offset != 0 && offset + (data.len() as u64) < chunk_end {
            // Inside the current aws-chunk: nothing to add.
            self.sum.update(&data);
            self.sent += data.len() as u64;
            return data;
        }
        let data = &data[..];
        // Every chunk that starts in this piece adds at most 16 + 4 bytes of framing.
        let chunks = data.len() as u64 / CHUNK + 2;
        let mut out = BytesMut::with_capacity(data.len() + (chunks * 20) as usize + if last { self.trailer_len() as usize } else { 0 });
        let mut data = data;
        while !data.is_empty() {
            let offset = self.sent % CHUNK;
            if offset == 0 {
                let size = CHUNK.min(self.decoded_len - self.sent);
                out.put_slice(format!("{size:x}\r\n").as_bytes());
            }
            let chunk_end = CHUNK.min(self.decoded_len - (self.sent - offset));
            let take = ((chunk_end - offset) as usize).min(data.len());
            let (now, rest) = data.split_at(take);
            self.sum.update(now);
            out.put_slice(now);
            self.sent += take as u64;
            data = rest;
            if offset + take as u64 == chunk_end {
                out.put_slice(b"\r\n");
            }
        }
        if last {
            let alg = self.sum.algorithm();
            let sum = std::mem::replace(&mut self.sum, Checksummer::new(alg));
            out.put_slice(b"0\r\n");
            out.put_slice(alg.header_name().as_bytes());
            out.put_u8(b':');
            out.put_slice(sum.finish_base64().as_bytes());
            out.put_slice(b"\r\n\r\n");
        }
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::PayloadMode;
    use crate::sigv4::chunked::ChunkedDecoder;
    use proptest::prelude::*;

    fn frame_all(alg: ChecksumAlgorithm, data: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut f = VerifiedWrites::Trailer(alg).framer(data.len() as u64);
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts {
            let c = c.min(data.len()).max(at);
            out.extend_from_slice(&f.piece(Bytes::copy_from_slice(&data[at..c])));
            at = c;
        }
        out.extend_from_slice(&f.last(Bytes::copy_from_slice(&data[at..])).unwrap());
        assert_eq!(out.len() as u64, f.content_length(), "Content-Length announced before the body");
        out
    }

    fn decode(alg: ChecksumAlgorithm, framed: &[u8], len: u64) -> Result<Vec<u8>, S3Error> {
        let mut d = ChunkedDecoder::new(PayloadMode::StreamingUnsignedTrailer, None, Some(alg), len)?;
        let body = d.feed(framed)?.to_vec();
        let (got_alg, value) = d.finish()?.expect("a trailer");
        assert_eq!(got_alg, alg);
        let mut sum = Checksummer::new(alg);
        sum.update(&body);
        sum.verify(&value)?;
        Ok(body)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Round trip through the proxy's own aws-chunked parser, whatever the piece
        /// boundaries, and the trailer carries the checksum of the payload.
        #[test]
        fn round_trips_through_the_decoder(len in 0usize..(3 * CHUNK as usize + 100), cuts in proptest::collection::vec(0usize..(3 * CHUNK as usize + 100), 0..6), c64 in any::<bool>()) {
            let alg = if c64 { ChecksumAlgorithm::Crc64Nvme } else { ChecksumAlgorithm::Crc32c };
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let framed = frame_all(alg, &data, &cuts);
            prop_assert_eq!(decode(alg, &framed, len as u64).unwrap(), data);
        }
    }

    #[test]
    fn exact_framing_of_a_small_body() {
        let framed = frame_all(ChecksumAlgorithm::Crc32c, b"hello", &[2]);
        // CRC32C("hello") = 0x9a71bb4c
        assert_eq!(framed, b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32c:mnG7TA==\r\n\r\n");
    }

    #[test]
    fn chunk_boundaries_fall_every_chunk() {
        let data = vec![1u8; CHUNK as usize + 1];
        let framed = frame_all(ChecksumAlgorithm::Crc32c, &data, &[10, CHUNK as usize]);
        assert!(framed.starts_with(format!("{CHUNK:x}\r\n").as_bytes()));
        let header = format!("{CHUNK:x}\r\n").len();
        let after_first = &framed[header + CHUNK as usize..];
        assert!(after_first.starts_with(b"\r\n1\r\n\x01\r\n0\r\nx-amz-checksum-crc32c:"), "{:?}", String::from_utf8_lossy(after_first));
    }

    /// Pieces inside an aws-chunk go out as they came (the same memory); the others are
    /// framed; the whole still decodes to the payload.
    #[test]
    fn pieces_inside_a_chunk_are_not_copied() {
        let data: Vec<u8> = (0..4 * CHUNK as usize + 1000).map(|i| (i * 31) as u8).collect();
        let mut f = VerifiedWrites::Trailer(ChecksumAlgorithm::Crc32c).framer(data.len() as u64);
        let mut framed = Vec::new();
        let mut shared = 0;
        let pieces: Vec<&[u8]> = data.chunks(65_536).collect();
        for (i, p) in pieces.iter().enumerate() {
            let piece = Bytes::copy_from_slice(p);
            let out = if i + 1 == pieces.len() { f.last(piece.clone()).unwrap() } else { f.piece(piece.clone()) };
            if out.as_ptr() == piece.as_ptr() && out.len() == piece.len() {
                shared += 1;
                // Neither the first piece of an aws-chunk nor its last.
                assert!(i % 4 == 1 || i % 4 == 2, "piece {i}");
            }
            framed.extend_from_slice(&out);
        }
        // Of every four 64 KiB pieces of a 256 KiB aws-chunk, the middle two.
        assert_eq!(shared, 8);
        assert_eq!(framed.len() as u64, f.content_length());
        assert_eq!(decode(ChecksumAlgorithm::Crc32c, &framed, data.len() as u64).unwrap(), data);
    }

    #[test]
    fn a_flipped_payload_byte_fails_the_checksum() {
        let data = vec![7u8; 100_000];
        let mut framed = frame_all(ChecksumAlgorithm::Crc32c, &data, &[]);
        framed[50_000] ^= 1;
        let e = decode(ChecksumAlgorithm::Crc32c, &framed, data.len() as u64).unwrap_err();
        assert_eq!(e.code.as_str(), "BadDigest");
    }

    #[test]
    fn config_values() {
        assert_eq!(VerifiedWrites::from_config("trailer", "crc32c").unwrap(), VerifiedWrites::Trailer(ChecksumAlgorithm::Crc32c));
        assert_eq!(VerifiedWrites::from_config("trailer", "CRC64NVME").unwrap(), VerifiedWrites::Trailer(ChecksumAlgorithm::Crc64Nvme));
        assert_eq!(VerifiedWrites::from_config("off", "crc32c").unwrap(), VerifiedWrites::Off);
        assert!(VerifiedWrites::from_config("header", "crc32c").is_err());
        assert!(VerifiedWrites::from_config("auto", "crc32c").is_err());
        assert!(VerifiedWrites::from_config("trailer", "md5").is_err());
        let f = VerifiedWrites::Off.framer(10);
        assert_eq!(f.content_length(), 10);
        assert!(f.headers().is_empty());
    }
}
