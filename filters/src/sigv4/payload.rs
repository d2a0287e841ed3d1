//! Streaming checks of the request body against what the client declared: the signed
//! SHA-256 (`x-amz-content-sha256`) and `Content-MD5`. Every byte is hashed once, as it
//! passes; the verdict comes at the end of the body, before the crypto filter releases the
//! last ciphertext chunk.
//!
//! Hashing is the most expensive work on a PBS upload (SHA-256 ≈ 1.8 GB/s and MD5 ≈ 0.6 GB/s
//! per core against ≈ 4 GB/s for the encryption), so neither runs on the request's thread:
//! SHA-256 is a [`Behind`] stream (with idle cores, piece N is hashed on the pool while this
//! request encrypts and forwards piece N and reads piece N+1), and MD5 an [`Md5Stream`],
//! hashed in SIMD lanes beside the other uploads' (see `md5_lanes`).

use bytes::Bytes;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::md5_lanes::Md5Stream;
use crate::offload::Behind;

fn hash_piece<H: Digest>(h: &mut H, piece: &[u8]) {
    h.update(piece);
}

fn hasher<H: Digest + Send + 'static>() -> Behind<H> {
    Behind::new(H::new(), hash_piece::<H>)
}

pub struct PayloadVerifier {
    sha256: Option<Behind<Sha256>>,
    md5: Option<Md5Stream>,
    expected_sha256: Option<[u8; 32]>,
    expected_md5: Option<[u8; 16]>,
    received: u64,
}

impl PayloadVerifier {
    /// Hashes only what the client declared: nothing is computed that is not checked.
    pub fn new(signed_sha256: Option<[u8; 32]>, content_md5: Option<[u8; 16]>) -> Self {
        Self {
            sha256: signed_sha256.map(|_| hasher()),
            md5: content_md5.map(|_| Md5Stream::new()),
            expected_sha256: signed_sha256,
            expected_md5: content_md5,
            received: 0,
        }
    }

    pub fn update(&mut self, data: &Bytes) {
        self.received += data.len() as u64;
        if let Some(h) = &mut self.sha256 {
            h.feed(data.clone());
        }
        if let Some(m) = &mut self.md5 {
            m.feed(data.clone());
        }
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Checks the digests; returns the body's MD5 when it was computed.
    pub fn finish(self) -> Result<Option<[u8; 16]>, S3Error> {
        let sha256 = self.sha256.map(Behind::finish);
        let md5 = self.md5.map(Md5Stream::finish);
        if let (Some(h), Some(expected)) = (sha256, self.expected_sha256) {
            let got: [u8; 32] = h.finalize().into();
            if !bool::from(got.ct_eq(&expected)) {
                return Err(s3err(S3ErrorCode::XAmzContentSHA256Mismatch, "The provided 'x-amz-content-sha256' header does not match what was computed."));
            }
        }
        if let (Some(expected), Some(got)) = (self.expected_md5, md5) {
            if !bool::from(got.ct_eq(&expected)) {
                return Err(s3err(S3ErrorCode::BadDigest, "The Content-MD5 you specified did not match what we received."));
            }
        }
        Ok(md5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Md5;

    fn verify_in_pieces(body: &[u8], sha: Option<[u8; 32]>, md5: Option<[u8; 16]>, piece: usize) -> Result<Option<[u8; 16]>, S3Error> {
        let mut v = PayloadVerifier::new(sha, md5);
        for p in body.chunks(piece.max(1)) {
            v.update(&Bytes::copy_from_slice(p));
        }
        assert_eq!(v.received(), body.len() as u64);
        v.finish()
    }

    #[test]
    fn detects_mismatches() {
        let body = b"hello world";
        let sha: [u8; 32] = Sha256::digest(body).into();
        let md5: [u8; 16] = Md5::digest(body).into();
        assert_eq!(verify_in_pieces(body, Some(sha), Some(md5), 3).unwrap(), Some(md5));
        let e = verify_in_pieces(b"hello worlD", Some(sha), None, 3).unwrap_err();
        assert_eq!(e.code, S3ErrorCode::XAmzContentSHA256Mismatch);
        let e = verify_in_pieces(b"hello worlD", None, Some(md5), 3).unwrap_err();
        assert_eq!(e.code, S3ErrorCode::BadDigest);
        assert_eq!(verify_in_pieces(body, None, None, 3).unwrap(), None);
    }

    /// Pieces hashed on the pool (large) and in place (small), mixed: the digests are those of
    /// the whole body in order, and a change in any one piece is caught.
    #[test]
    fn offloaded_pieces_keep_their_order() {
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let sha: [u8; 32] = Sha256::digest(&body).into();
        let md5: [u8; 16] = Md5::digest(&body).into();
        for piece in [1000, crate::offload::OFFLOAD_MIN - 1, crate::offload::OFFLOAD_MIN, 65_536, 1 << 20, body.len()] {
            assert_eq!(verify_in_pieces(&body, Some(sha), Some(md5), piece).unwrap(), Some(md5), "piece {piece}");
        }
        let mut v = PayloadVerifier::new(Some(sha), Some(md5));
        for (i, p) in body.chunks(65_536).enumerate() {
            let mut p = p.to_vec();
            if i == 20 {
                p[100] ^= 1;
            }
            v.update(&Bytes::from(p));
        }
        assert_eq!(v.finish().unwrap_err().code, S3ErrorCode::XAmzContentSHA256Mismatch);
        // Two pieces swapped: same bytes, different order.
        let mut v = PayloadVerifier::new(None, Some(md5));
        let pieces: Vec<&[u8]> = body.chunks(65_536).collect();
        for i in [1, 0].into_iter().chain(2..pieces.len()) {
            v.update(&Bytes::copy_from_slice(pieces[i]));
        }
        assert_eq!(v.finish().unwrap_err().code, S3ErrorCode::BadDigest);
    }
}
