//! The segment header and the wrapping of per-segment data keys.

use std::sync::Arc;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::chunk::{ChunkCipher, DEK_LEN};
use crate::error::FormatError;
use crate::keys::{DerivedKeys, KeyId, KeyRing, KCV_LEN};
use crate::size::{
    chunk_count, validate_chunk_size, HEADER_LEN, MAX_PART_NUMBER, MAX_SEGMENT_PLAIN_LEN, TAG_LEN,
};

/// The first 7 bytes of every segment; byte 7 is the format version, which names the
/// chunk cipher ([`ChunkCipher::version`]).
pub const MAGIC_PREFIX: [u8; 7] = *b"S3CPOBJ";
/// The format versions this code writes and reads: 1 (XChaCha20-Poly1305 chunks) and 2
/// (AES-256-GCM chunks).
pub const FORMAT_VERSIONS: [u8; 2] = [1, 2];

/// The 8-byte magic of a segment whose chunks use `cipher`.
pub const fn magic(cipher: ChunkCipher) -> [u8; 8] {
    let mut m = [0u8; 8];
    let mut i = 0;
    while i < 7 {
        m[i] = MAGIC_PREFIX[i];
        i += 1;
    }
    m[7] = cipher.version();
    m
}
/// Length of the wrap nonce.
pub const WRAP_NONCE_LEN: usize = 24;
/// Length of the wrapped data key (32-byte key + 16-byte tag).
pub const WRAPPED_DEK_LEN: usize = DEK_LEN + TAG_LEN;
/// Length of the authenticated prefix of the header (magic through kcv).
pub const HEADER_AD_LEN: usize = 36;

/// The name of an object, bound into every wrapped key and the sealed metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectId<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
}

impl ObjectId<'_> {
    /// `u32 len(bucket) || bucket || u32 len(key) || key`, the name part of the associated data.
    pub fn name_ad(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.bucket.len() + self.key.len());
        for s in [self.bucket, self.key] {
            // S3 names are at most 1024 bytes; saturating keeps this total for absurd input.
            v.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
            v.extend_from_slice(s.as_bytes());
        }
        v
    }
}

/// True if `data` starts with the format's magic (any version); `None` while fewer than 8
/// bytes are known. Objects written before the proxy was installed give `Some(false)`.
pub fn is_encrypted_prefix(data: &[u8]) -> Option<bool> {
    if data.len() < 8 {
        return None;
    }
    Some(data[..7] == MAGIC_PREFIX)
}

/// A parsed segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The chunk cipher, from the version byte.
    pub cipher: ChunkCipher,
    pub chunk_size: u32,
    pub key_id: KeyId,
    /// 0 for a single-part object, else the multipart part number 1..=10000.
    pub part_number: u32,
    /// Plaintext length of this segment.
    pub plain_len: u64,
    /// Key check value of the master key.
    pub kcv: [u8; KCV_LEN],
    pub wrap_nonce: [u8; WRAP_NONCE_LEN],
    /// The data key sealed under the KEK (ciphertext || tag).
    pub wrapped_dek: [u8; WRAPPED_DEK_LEN],
}

impl SegmentHeader {
    /// Parses the first [`HEADER_LEN`] bytes of `bytes`.
    ///
    /// Checks the magic (`NotEncrypted`), the version (`UnsupportedVersion`), the length
    /// (`Truncated`), the chunk size (`InvalidChunkSize`) and the value ranges of the part
    /// number and length (`HeaderTampered`). Does not authenticate: see [`SegmentHeader::open`].
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        check_magic_prefix(bytes, true)?;
        if bytes.len() < HEADER_LEN {
            return Err(FormatError::Truncated);
        }
        let b = &bytes[..HEADER_LEN];
        let u32_at = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let chunk_size = u32_at(8);
        validate_chunk_size(chunk_size)?;
        let part_number = u32_at(16);
        let plain_len = u64::from_be_bytes(b[20..28].try_into().expect("8 bytes"));
        if part_number > MAX_PART_NUMBER || plain_len > MAX_SEGMENT_PLAIN_LEN {
            return Err(FormatError::HeaderTampered);
        }
        let cipher =
            ChunkCipher::from_version(b[7]).expect("check_magic_prefix checked the version");
        Ok(Self {
            cipher,
            chunk_size,
            key_id: u32_at(12),
            part_number,
            plain_len,
            kcv: b[28..36].try_into().expect("8 bytes"),
            wrap_nonce: b[36..60].try_into().expect("24 bytes"),
            wrapped_dek: b[60..108].try_into().expect("48 bytes"),
        })
    }

    /// The 108-byte encoding.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..36].copy_from_slice(&self.ad_prefix());
        b[36..60].copy_from_slice(&self.wrap_nonce);
        b[60..108].copy_from_slice(&self.wrapped_dek);
        b
    }

    /// Header bytes 0..36 (magic through kcv), the header part of the wrap's associated data.
    fn ad_prefix(&self) -> [u8; HEADER_AD_LEN] {
        let mut b = [0u8; HEADER_AD_LEN];
        b[..8].copy_from_slice(&magic(self.cipher));
        b[8..12].copy_from_slice(&self.chunk_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.key_id.to_be_bytes());
        b[16..20].copy_from_slice(&self.part_number.to_be_bytes());
        b[20..28].copy_from_slice(&self.plain_len.to_be_bytes());
        b[28..36].copy_from_slice(&self.kcv);
        b
    }

    fn wrap_ad(&self, name_ad: &[u8]) -> Vec<u8> {
        let mut ad = Vec::with_capacity(HEADER_AD_LEN + name_ad.len());
        ad.extend_from_slice(&self.ad_prefix());
        ad.extend_from_slice(name_ad);
        ad
    }

    /// Number of chunks in this segment.
    pub fn chunk_count(&self) -> u64 {
        chunk_count(self.plain_len, self.chunk_size)
    }

    /// Stored length of this segment, header included.
    pub fn cipher_len(&self) -> u64 {
        crate::size::segment_cipher_len(self.plain_len, self.chunk_size)
    }

    /// Builds a header for `keys` and wraps `dek` under its KEK with `wrap_nonce`. The
    /// version byte, and with it the wrap's associated data, follows `cipher`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn seal(
        cipher: ChunkCipher,
        keys: &DerivedKeys,
        name_ad: &[u8],
        chunk_size: u32,
        part_number: u32,
        plain_len: u64,
        dek: &[u8; DEK_LEN],
        wrap_nonce: [u8; WRAP_NONCE_LEN],
    ) -> Self {
        let mut h = Self {
            cipher,
            chunk_size,
            key_id: keys.id(),
            part_number,
            plain_len,
            kcv: *keys.kcv(),
            wrap_nonce,
            wrapped_dek: [0; WRAPPED_DEK_LEN],
        };
        let mut buf = Zeroizing::new(*dek);
        let tag = XChaCha20Poly1305::new(keys.kek().into())
            .encrypt_in_place_detached(
                XNonce::from_slice(&wrap_nonce),
                &h.wrap_ad(name_ad),
                &mut buf[..],
            )
            .expect("32-byte message");
        h.wrapped_dek[..DEK_LEN].copy_from_slice(&buf[..]);
        h.wrapped_dek[DEK_LEN..].copy_from_slice(&tag);
        h
    }

    /// Finds the header's key in `ring`, checks the key check value and unwraps the data key.
    ///
    /// Errors: `UnknownKeyId`, `WrongKey` (kcv mismatch, compared in constant time),
    /// `HeaderTampered` (unwrap failed: modified header or another object name).
    pub fn open(
        &self,
        ring: &KeyRing,
        name_ad: &[u8],
    ) -> Result<(Arc<DerivedKeys>, Zeroizing<[u8; DEK_LEN]>), FormatError> {
        let keys = ring
            .get(self.key_id)
            .ok_or(FormatError::UnknownKeyId(self.key_id))?
            .clone();
        if !keys.kcv_matches(&self.kcv) {
            return Err(FormatError::WrongKey(self.key_id));
        }
        let mut dek = Zeroizing::new([0u8; DEK_LEN]);
        dek.copy_from_slice(&self.wrapped_dek[..DEK_LEN]);
        XChaCha20Poly1305::new(keys.kek().into())
            .decrypt_in_place_detached(
                XNonce::from_slice(&self.wrap_nonce),
                &self.wrap_ad(name_ad),
                &mut dek[..],
                Tag::from_slice(&self.wrapped_dek[DEK_LEN..]),
            )
            .map_err(|_| FormatError::HeaderTampered)?;
        Ok((keys, dek))
    }
}

/// Checks the known bytes of a header start against the magic. `first` selects the error for
/// a mismatch: `NotEncrypted` for an object's first segment, `HeaderTampered` where a later
/// segment's header must start (a damaged header, or garbage appended to a multipart
/// object). A version byte other than 1 or 2 gives `UnsupportedVersion`.
pub(crate) fn check_magic_prefix(bytes: &[u8], first: bool) -> Result<(), FormatError> {
    let n = bytes.len().min(7);
    if bytes[..n] != MAGIC_PREFIX[..n] {
        return Err(if first {
            FormatError::NotEncrypted
        } else {
            FormatError::HeaderTampered
        });
    }
    if bytes.len() >= 8 && ChunkCipher::from_version(bytes[7]).is_none() {
        return Err(FormatError::UnsupportedVersion(bytes[7]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    #[test]
    fn header_round_trip_and_open() {
        let m = MasterKey::new(5, [3; 32]);
        let ring = KeyRing::single(&m);
        let keys = ring.current().clone();
        let name = ObjectId {
            bucket: "b",
            key: "k",
        }
        .name_ad();
        let dek = [7u8; 32];
        for (cipher, magic) in [
            (ChunkCipher::XChaCha20Poly1305, b"S3CPOBJ\x01"),
            (ChunkCipher::Aes256Gcm, b"S3CPOBJ\x02"),
        ] {
            let h = SegmentHeader::seal(cipher, &keys, &name, 4096, 0, 12345, &dek, [1; 24]);
            let mut bytes = h.to_bytes();
            assert_eq!(&bytes[..8], magic);
            let p = SegmentHeader::parse(&bytes).unwrap();
            assert_eq!(p, h);
            assert_eq!(p.cipher, cipher);
            let (_, got) = p.open(&ring, &name).unwrap();
            assert_eq!(*got, dek);
            // The version byte is in the wrap's associated data: flipped between 1 and 2 the
            // header still parses (as the other suite) but no longer opens.
            bytes[7] ^= 3;
            let flipped = SegmentHeader::parse(&bytes).unwrap();
            assert_ne!(flipped.cipher, cipher);
            assert_eq!(
                flipped.open(&ring, &name).unwrap_err(),
                FormatError::HeaderTampered
            );
        }
        let h = SegmentHeader::seal(
            ChunkCipher::Aes256Gcm,
            &keys,
            &name,
            4096,
            0,
            12345,
            &dek,
            [1; 24],
        );
        let p = SegmentHeader::parse(&h.to_bytes()).unwrap();
        let other = ObjectId {
            bucket: "b",
            key: "k2",
        }
        .name_ad();
        assert_eq!(
            p.open(&ring, &other).unwrap_err(),
            FormatError::HeaderTampered
        );
    }

    #[test]
    fn prefixes() {
        assert_eq!(is_encrypted_prefix(b"S3CPOB"), None);
        assert_eq!(is_encrypted_prefix(b"S3CPOBJ\x01rest"), Some(true));
        assert_eq!(is_encrypted_prefix(b"S3CPOBJ\x02rest"), Some(true));
        assert_eq!(is_encrypted_prefix(b"S3CPOBJ\x09rest"), Some(true));
        assert_eq!(is_encrypted_prefix(b"<html>\n\n"), Some(false));
        assert_eq!(
            SegmentHeader::parse(b"hello world").unwrap_err(),
            FormatError::NotEncrypted
        );
        assert_eq!(
            SegmentHeader::parse(b"S3CPOBJ\x03").unwrap_err(),
            FormatError::UnsupportedVersion(3)
        );
        assert_eq!(
            SegmentHeader::parse(b"S3CPOBJ\x00").unwrap_err(),
            FormatError::UnsupportedVersion(0)
        );
        for v in FORMAT_VERSIONS {
            assert_eq!(
                SegmentHeader::parse(&[&MAGIC_PREFIX[..], &[v]].concat()).unwrap_err(),
                FormatError::Truncated
            );
        }
        assert_eq!(
            SegmentHeader::parse(b"S3C").unwrap_err(),
            FormatError::Truncated
        );
    }
}
