//! Streaming checks of the request body against what the client declared: the signed
//! SHA-256 (`x-amz-content-sha256`) and `Content-MD5`. Every byte is hashed once, as it
//! passes; the verdict comes at the end of the body, before the crypto filter releases the
//! last ciphertext chunk.

use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{s3err, S3Error, S3ErrorCode};

pub struct PayloadVerifier {
    sha256: Option<(Sha256, [u8; 32])>,
    md5: Option<Md5>,
    expected_md5: Option<[u8; 16]>,
    received: u64,
}

impl PayloadVerifier {
    /// Hashes only what the client declared: nothing is computed that is not checked.
    pub fn new(signed_sha256: Option<[u8; 32]>, content_md5: Option<[u8; 16]>) -> Self {
        Self {
            sha256: signed_sha256.map(|h| (Sha256::new(), h)),
            md5: content_md5.map(|_| Md5::new()),
            expected_md5: content_md5,
            received: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.received += data.len() as u64;
        if let Some((h, _)) = &mut self.sha256 {
            h.update(data);
        }
        if let Some(m) = &mut self.md5 {
            m.update(data);
        }
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Checks the digests; returns the body's MD5 when it was computed.
    pub fn finish(self) -> Result<Option<[u8; 16]>, S3Error> {
        if let Some((h, expected)) = self.sha256 {
            let got: [u8; 32] = h.finalize().into();
            if !bool::from(got.ct_eq(&expected)) {
                return Err(s3err(S3ErrorCode::XAmzContentSHA256Mismatch, "The provided 'x-amz-content-sha256' header does not match what was computed."));
            }
        }
        let md5: Option<[u8; 16]> = self.md5.map(|m| m.finalize().into());
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

    #[test]
    fn detects_mismatches() {
        let body = b"hello world";
        let sha: [u8; 32] = Sha256::digest(body).into();
        let md5: [u8; 16] = Md5::digest(body).into();
        let mut v = PayloadVerifier::new(Some(sha), Some(md5));
        v.update(&body[..3]);
        v.update(&body[3..]);
        assert_eq!(v.finish().unwrap(), Some(md5));

        let mut v = PayloadVerifier::new(Some(sha), None);
        v.update(b"hello worlD");
        assert_eq!(v.finish().unwrap_err().code, S3ErrorCode::XAmzContentSHA256Mismatch);

        let mut v = PayloadVerifier::new(None, Some(md5));
        v.update(b"hello worlD");
        assert_eq!(v.finish().unwrap_err().code, S3ErrorCode::BadDigest);
    }
}
