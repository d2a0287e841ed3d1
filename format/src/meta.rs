//! Sealed user metadata: the backend object's `x-amz-meta-s3cp` header.
//!
//! Value = standard base64 (with padding) of
//! `version (1) || chunk_size u32 || key_id u32 || nonce [24] || XChaCha20-Poly1305(MEK, nonce, payload, AD)`
//! with `AD = "s3cp-meta-v1" || value[0..9] || u32 len(bucket) || bucket || u32 len(key) || key`.
//! The payload is opaque here (the proxy stores JSON in it).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand::RngCore;

use crate::error::FormatError;
use crate::header::ObjectId;
use crate::keys::{DerivedKeys, KeyId, KeyRing};
use crate::size::{validate_chunk_size, TAG_LEN};

/// The backend user-metadata header holding the sealed metadata.
pub const HEADER: &str = "x-amz-meta-s3cp";
/// Largest payload: S3 allows 2 KB of user metadata (names + values); base64 of
/// `MAX_PAYLOAD + OVERHEAD` bytes plus the header name fits.
pub const MAX_PAYLOAD: usize = 1400;
/// Version byte of the sealed value.
pub const META_VERSION: u8 = 1;
/// Bytes added to the payload before base64: version, chunk size, key id, nonce, tag.
pub const OVERHEAD: usize = PREFIX_LEN + NONCE_LEN + TAG_LEN;

const PREFIX_LEN: usize = 9;
const NONCE_LEN: usize = 24;
const LABEL: &[u8] = b"s3cp-meta-v1";

fn ad(prefix: &[u8], obj_name_ad: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(LABEL.len() + prefix.len() + obj_name_ad.len());
    v.extend_from_slice(LABEL);
    v.extend_from_slice(prefix);
    v.extend_from_slice(obj_name_ad);
    v
}

/// Seals `payload` for the object `obj` under `keys`' metadata key; returns the header value.
/// Errors: `InvalidChunkSize`, `MetadataTooLarge` if `payload` exceeds [`MAX_PAYLOAD`].
pub fn seal(
    keys: &DerivedKeys,
    obj: ObjectId<'_>,
    chunk_size: u32,
    payload: &[u8],
) -> Result<String, FormatError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    seal_with_nonce(keys, obj, chunk_size, payload, nonce)
}

/// [`seal`] with a caller-chosen nonce. FOR TEST VECTORS ONLY.
#[doc(hidden)]
pub fn seal_with_nonce(
    keys: &DerivedKeys,
    obj: ObjectId<'_>,
    chunk_size: u32,
    payload: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Result<String, FormatError> {
    validate_chunk_size(chunk_size)?;
    if payload.len() > MAX_PAYLOAD {
        return Err(FormatError::MetadataTooLarge(payload.len()));
    }
    let mut raw = Vec::with_capacity(OVERHEAD + payload.len());
    raw.push(META_VERSION);
    raw.extend_from_slice(&chunk_size.to_be_bytes());
    raw.extend_from_slice(&keys.id().to_be_bytes());
    raw.extend_from_slice(&nonce);
    let ad = ad(&raw[..PREFIX_LEN], &obj.name_ad());
    let start = raw.len();
    raw.extend_from_slice(payload);
    let tag = XChaCha20Poly1305::new(keys.mek().into())
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), &ad, &mut raw[start..])
        .expect("small message");
    raw.extend_from_slice(&tag);
    Ok(STANDARD.encode(raw))
}

/// Opened metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub key_id: KeyId,
    pub chunk_size: u32,
    pub payload: Vec<u8>,
}

/// Opens a header value sealed by [`seal`] for `obj`.
///
/// Errors: `MetadataMalformed` (not base64 / too short), `UnsupportedVersion`,
/// `InvalidChunkSize`, `UnknownKeyId`, `MetadataTampered` (authentication failed: modified,
/// another object's metadata, or a different key under the same id).
pub fn open(ring: &KeyRing, obj: ObjectId<'_>, value: &str) -> Result<Opened, FormatError> {
    let mut raw = STANDARD
        .decode(value.trim().as_bytes())
        .map_err(|_| FormatError::MetadataMalformed)?;
    if raw.len() < OVERHEAD {
        return Err(FormatError::MetadataMalformed);
    }
    if raw[0] != META_VERSION {
        return Err(FormatError::UnsupportedVersion(raw[0]));
    }
    let chunk_size = u32::from_be_bytes(raw[1..5].try_into().expect("4 bytes"));
    validate_chunk_size(chunk_size)?;
    let key_id = u32::from_be_bytes(raw[5..9].try_into().expect("4 bytes"));
    let keys = ring.get(key_id).ok_or(FormatError::UnknownKeyId(key_id))?;
    let nonce: [u8; NONCE_LEN] = raw[PREFIX_LEN..PREFIX_LEN + NONCE_LEN]
        .try_into()
        .expect("24 bytes");
    let ad = ad(&raw[..PREFIX_LEN], &obj.name_ad());
    let tag_at = raw.len() - TAG_LEN;
    let tag = *Tag::from_slice(&raw[tag_at..]);
    let body = &mut raw[PREFIX_LEN + NONCE_LEN..tag_at];
    XChaCha20Poly1305::new(keys.mek().into())
        .decrypt_in_place_detached(XNonce::from_slice(&nonce), &ad, body, &tag)
        .map_err(|_| FormatError::MetadataTampered)?;
    let payload = body.to_vec();
    Ok(Opened {
        key_id,
        chunk_size,
        payload,
    })
}

/// The chunk size from a header value without opening it (unauthenticated; use it only as a
/// hint, e.g. for listings). `None` if the value is not version-1 sealed metadata.
pub fn peek_chunk_size(value: &str) -> Option<u32> {
    // 8 base64 characters encode the first 6 bytes: version and chunk size.
    let head = STANDARD.decode(value.trim().get(..8)?).ok()?;
    if head[0] != META_VERSION {
        return None;
    }
    let c = u32::from_be_bytes(head[1..5].try_into().ok()?);
    validate_chunk_size(c).ok().map(|_| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    #[test]
    fn round_trip_and_binding() {
        let ring = KeyRing::single(&MasterKey::new(3, [4; 32]));
        let obj = ObjectId {
            bucket: "b",
            key: "dir/k",
        };
        let payload = br#"{"h":[["content-type","text/plain"]]}"#;
        let v = seal(ring.current(), obj, 65536, payload).unwrap();
        assert_eq!(peek_chunk_size(&v), Some(65536));
        let o = open(&ring, obj, &v).unwrap();
        assert_eq!(
            o,
            Opened {
                key_id: 3,
                chunk_size: 65536,
                payload: payload.to_vec()
            }
        );
        assert_eq!(
            open(
                &ring,
                ObjectId {
                    bucket: "b",
                    key: "dir/k2"
                },
                &v
            ),
            Err(FormatError::MetadataTampered)
        );
        assert_eq!(
            open(
                &ring,
                ObjectId {
                    bucket: "c",
                    key: "dir/k"
                },
                &v
            ),
            Err(FormatError::MetadataTampered)
        );
        assert_eq!(
            open(&ring, obj, "not base64!"),
            Err(FormatError::MetadataMalformed)
        );
        assert_eq!(
            open(&ring, obj, "AAAA"),
            Err(FormatError::MetadataMalformed)
        );
        let other = KeyRing::single(&MasterKey::new(4, [4; 32]));
        assert_eq!(open(&other, obj, &v), Err(FormatError::UnknownKeyId(3)));
        let wrong = KeyRing::single(&MasterKey::new(3, [5; 32]));
        assert_eq!(open(&wrong, obj, &v), Err(FormatError::MetadataTampered));
    }

    #[test]
    fn clear_prefix_is_authenticated() {
        let ring = KeyRing::single(&MasterKey::new(3, [4; 32]));
        let obj = ObjectId {
            bucket: "b",
            key: "k",
        };
        let v = seal(ring.current(), obj, 65536, b"x").unwrap();
        let mut raw = STANDARD.decode(&v).unwrap();
        raw[1..5].copy_from_slice(&4096u32.to_be_bytes());
        let forged = STANDARD.encode(&raw);
        assert_eq!(peek_chunk_size(&forged), Some(4096));
        assert_eq!(
            open(&ring, obj, &forged),
            Err(FormatError::MetadataTampered)
        );
    }

    #[test]
    fn size_limit() {
        let ring = KeyRing::single(&MasterKey::new(1, [4; 32]));
        let obj = ObjectId {
            bucket: "b",
            key: "k",
        };
        let v = seal(ring.current(), obj, 65536, &[b'a'; MAX_PAYLOAD]).unwrap();
        // Fits S3's 2 KB user-metadata budget together with the header name.
        assert!(v.len() + HEADER.len() <= 2048, "{}", v.len());
        assert_eq!(
            seal(ring.current(), obj, 65536, &[0; MAX_PAYLOAD + 1]),
            Err(FormatError::MetadataTooLarge(MAX_PAYLOAD + 1))
        );
        assert_eq!(
            seal(ring.current(), obj, 1000, b""),
            Err(FormatError::InvalidChunkSize(1000))
        );
    }
}
