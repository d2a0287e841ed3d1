//! Streaming checks of the request body against what the client declared: the signed
//! SHA-256 (`x-amz-content-sha256`) and `Content-MD5`. Every byte is hashed once, as it
//! passes; the verdict comes at the end of the body, before the crypto filter releases the
//! last ciphertext chunk.
//!
//! Hashing is the most expensive work on a PBS upload (SHA-256 ≈ 1.8 GB/s and MD5 ≈ 0.6 GB/s
//! per core against ≈ 4 GB/s for the encryption). How the declared digests are hashed is one
//! [`Hashing`] plan per request:
//! - SHA-256 runs as a [`Behind`] stream: with idle cores, piece N is hashed on the pool while
//!   this request encrypts and forwards piece N and reads piece N+1.
//! - MD5 alone runs as an [`Md5Stream`], hashed in SIMD lanes beside other uploads'.
//! - Both (a PBS upload) are hashed together by the stitched kernel ([`Md5Sha256`]: SHA-256
//!   for ~0.2-0.4 CPU-s/GiB on top of MD5 instead of ~0.7), as one [`Behind`] stream, unless
//!   enough uploads are hashing MD5 for the lanes to fill ([`LANES_PAY_FROM`]), where MD5 in
//!   lanes and SHA-256 apart cost less.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::md5_lanes::{self, Md5Stream};
use crate::md5_sha256::Md5Sha256;
use crate::offload::Behind;

fn hash_piece<H: Digest>(h: &mut H, piece: &[u8]) {
    h.update(piece);
}

fn hasher<H: Digest + Send + 'static>() -> Behind<H> {
    Behind::new(H::new(), hash_piece::<H>)
}

/// Uploads hashing MD5 at once (this one included) from which MD5 in lanes with SHA-256 apart
/// costs less than both stitched. `cargo bench -p filters --bench digests`: MD5 in lanes costs
/// 1.58 CPU-s/GiB at 4 uploads (the lanes do not fill), 0.69 at 8 and 0.75 at 16, SHA-256 0.69,
/// both stitched 1.8-2.0.
const LANES_PAY_FROM: usize = 8;

/// What hashes the body: only the declared digests, each once.
enum Hashing {
    Nothing,
    Sha256(Behind<Sha256>),
    Md5(Md5Stream),
    /// Both, stitched.
    Together(Behind<Md5Sha256>),
    /// Both, MD5 in lanes.
    Apart(Behind<Sha256>, Md5Stream),
}

impl Hashing {
    fn new(sha256: bool, md5: bool) -> Self {
        match (sha256, md5) {
            (false, false) => Self::Nothing,
            (true, false) => Self::Sha256(hasher()),
            (false, true) => Self::Md5(Md5Stream::new()),
            (true, true) => Self::both(md5_lanes::live() + 1 >= LANES_PAY_FROM),
        }
    }

    /// Both digests: stitched, unless `lanes_fill` (or the CPU cannot stitch).
    fn both(lanes_fill: bool) -> Self {
        match Md5Sha256::new() {
            Some(both) if !lanes_fill => Self::Together(Behind::new(both, Md5Sha256::update)),
            _ => Self::Apart(hasher(), Md5Stream::new()),
        }
    }

    fn feed(&mut self, data: &Bytes) {
        match self {
            Self::Nothing => {}
            Self::Sha256(sha) => sha.feed(data.clone()),
            Self::Md5(md5) => md5.feed(data.clone()),
            Self::Together(both) => both.feed(data.clone()),
            Self::Apart(sha, md5) => {
                sha.feed(data.clone());
                md5.feed(data.clone());
            }
        }
    }

    /// (SHA-256, MD5), each where it was hashed.
    fn finish(self) -> (Option<[u8; 32]>, Option<[u8; 16]>) {
        let sha = |h: Behind<Sha256>| -> [u8; 32] { h.finish().finalize().into() };
        match self {
            Self::Nothing => (None, None),
            Self::Sha256(h) => (Some(sha(h)), None),
            Self::Md5(m) => (None, Some(m.finish())),
            Self::Together(both) => {
                let (md5, sha256) = both.finish().finalize();
                (Some(sha256), Some(md5))
            }
            Self::Apart(h, m) => (Some(sha(h)), Some(m.finish())),
        }
    }
}

pub struct PayloadVerifier {
    hashing: Hashing,
    expected_sha256: Option<[u8; 32]>,
    expected_md5: Option<[u8; 16]>,
    received: u64,
}

impl PayloadVerifier {
    /// Hashes only what the client declared: nothing is computed that is not checked.
    pub fn new(signed_sha256: Option<[u8; 32]>, content_md5: Option<[u8; 16]>) -> Self {
        Self {
            hashing: Hashing::new(signed_sha256.is_some(), content_md5.is_some()),
            expected_sha256: signed_sha256,
            expected_md5: content_md5,
            received: 0,
        }
    }

    pub fn update(&mut self, data: &Bytes) {
        self.received += data.len() as u64;
        self.hashing.feed(data);
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Checks the digests; returns the body's MD5 when it was computed.
    pub fn finish(self) -> Result<Option<[u8; 16]>, S3Error> {
        let (sha256, md5) = self.hashing.finish();
        if let (Some(got), Some(expected)) = (sha256, self.expected_sha256) {
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
        verify_with(PayloadVerifier::new(sha, md5), body, piece)
    }

    fn verify_with(mut v: PayloadVerifier, body: &[u8], piece: usize) -> Result<Option<[u8; 16]>, S3Error> {
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

    /// Both digests declared: stitched and apart (MD5 in lanes) give the same verdicts.
    #[test]
    fn both_plans_check_both_digests() {
        let body: Vec<u8> = (0..1_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let sha: [u8; 32] = Sha256::digest(&body).into();
        let md5: [u8; 16] = Md5::digest(&body).into();
        let mut bad = body.clone();
        bad[777_777] ^= 0x10;
        for lanes_fill in [false, true] {
            let plan = |sha, md5| PayloadVerifier { hashing: Hashing::both(lanes_fill), expected_sha256: Some(sha), expected_md5: Some(md5), received: 0 };
            if !lanes_fill && Md5Sha256::new().is_some() {
                assert!(matches!(Hashing::both(lanes_fill), Hashing::Together(_)));
            }
            for piece in [1000, 65_536, 100_003] {
                assert_eq!(verify_with(plan(sha, md5), &body, piece).unwrap(), Some(md5), "lanes {lanes_fill} piece {piece}");
                assert_eq!(verify_with(plan(sha, md5), &bad, piece).unwrap_err().code, S3ErrorCode::XAmzContentSHA256Mismatch);
                let other_sha: [u8; 32] = Sha256::digest(&bad).into();
                assert_eq!(verify_with(plan(other_sha, md5), &bad, piece).unwrap_err().code, S3ErrorCode::BadDigest);
            }
        }
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
