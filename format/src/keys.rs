//! The key hierarchy: a master key (delivered by keyd, never on disk on the proxy host)
//! and the sub-keys HKDF-SHA256 derives from it.
//!
//! ```text
//! master key (32 bytes, key id)
//!   ├── KEK  = HKDF(master, info "s3cp v1 key-encryption key")  wraps per-segment data keys
//!   ├── MEK  = HKDF(master, info "s3cp v1 metadata key")        seals user metadata
//!   └── KCV  = HKDF(master, info "s3cp v1 key check")[..8]       tells "wrong key" from "corrupt"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Identifies a master key. Stored in every object so keys can rotate.
pub type KeyId = u32;

/// Length of every symmetric key in the hierarchy.
pub const KEY_LEN: usize = 32;
/// Length of the key check value stored in each segment header.
pub const KCV_LEN: usize = 8;

const HKDF_SALT: &[u8] = b"s3-crypt-proxy";
const INFO_KEK: &[u8] = b"s3cp v1 key-encryption key";
const INFO_MEK: &[u8] = b"s3cp v1 metadata key";
const INFO_KCV: &[u8] = b"s3cp v1 key check";

/// Errors reading or parsing key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    #[error("master key file is malformed: {0}")]
    Malformed(&'static str),
}

/// A 256-bit master key with its id. Wiped on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    #[zeroize(skip)]
    id: KeyId,
    bytes: [u8; KEY_LEN],
}

impl MasterKey {
    pub fn new(id: KeyId, bytes: [u8; KEY_LEN]) -> Self {
        Self { id, bytes }
    }

    /// A fresh key from the operating system's CSPRNG.
    pub fn generate(id: KeyId) -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self { id, bytes }
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The raw key bytes. Callers must not log or persist them.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// The key file format: one line `s3cp-master-key v1 <id> <64 lowercase hex>`.
    pub fn to_file_string(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "s3cp-master-key v1 {} {}\n",
            self.id,
            hex::encode(self.bytes)
        ))
    }

    /// Parses the key file format written by [`MasterKey::to_file_string`].
    pub fn from_file_str(text: &str) -> Result<Self, KeyError> {
        let mut words = text.split_whitespace();
        if words.next() != Some("s3cp-master-key") || words.next() != Some("v1") {
            return Err(KeyError::Malformed(
                "expected `s3cp-master-key v1 <id> <hex>`",
            ));
        }
        let id = words
            .next()
            .and_then(|w| w.parse::<KeyId>().ok())
            .ok_or(KeyError::Malformed("key id is not a number"))?;
        let hex_key = Zeroizing::new(words.next().unwrap_or("").to_owned());
        if words.next().is_some() {
            return Err(KeyError::Malformed("trailing data after the key"));
        }
        let mut bytes = [0u8; KEY_LEN];
        hex::decode_to_slice(hex_key.as_bytes(), &mut bytes)
            .map_err(|_| KeyError::Malformed("key is not 64 hex characters"))?;
        Ok(Self { id, bytes })
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey {{ id: {}, bytes: <redacted> }}", self.id)
    }
}

/// The sub-keys of one master key.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DerivedKeys {
    #[zeroize(skip)]
    id: KeyId,
    kek: [u8; KEY_LEN],
    mek: [u8; KEY_LEN],
    kcv: [u8; KCV_LEN],
}

impl DerivedKeys {
    pub fn derive(master: &MasterKey) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), master.expose());
        let mut keys = Self {
            id: master.id(),
            kek: [0; KEY_LEN],
            mek: [0; KEY_LEN],
            kcv: [0; KCV_LEN],
        };
        // HKDF-SHA256 can expand up to 8160 bytes; these lengths cannot fail.
        hk.expand(INFO_KEK, &mut keys.kek).expect("32 <= 255*32");
        hk.expand(INFO_MEK, &mut keys.mek).expect("32 <= 255*32");
        hk.expand(INFO_KCV, &mut keys.kcv).expect("8 <= 255*32");
        keys
    }

    pub fn id(&self) -> KeyId {
        self.id
    }
    pub fn kek(&self) -> &[u8; KEY_LEN] {
        &self.kek
    }
    pub fn mek(&self) -> &[u8; KEY_LEN] {
        &self.mek
    }
    pub fn kcv(&self) -> &[u8; KCV_LEN] {
        &self.kcv
    }
    /// Constant-time check of a stored key check value against this key.
    pub fn kcv_matches(&self, stored: &[u8]) -> bool {
        stored.len() == KCV_LEN && bool::from(self.kcv.ct_eq(stored))
    }
}

impl fmt::Debug for DerivedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DerivedKeys {{ id: {}, .. }}", self.id)
    }
}

/// Every loaded master key, by id, and the one new objects are written with.
#[derive(Clone, Debug)]
pub struct KeyRing {
    current: KeyId,
    keys: BTreeMap<KeyId, Arc<DerivedKeys>>,
}

impl KeyRing {
    /// Builds a ring; `current` must be one of `masters`.
    pub fn new(current: KeyId, masters: &[MasterKey]) -> Option<Self> {
        let keys: BTreeMap<_, _> = masters
            .iter()
            .map(|m| (m.id(), Arc::new(DerivedKeys::derive(m))))
            .collect();
        keys.contains_key(&current)
            .then_some(Self { current, keys })
    }

    /// A ring holding one key, which is current.
    pub fn single(master: &MasterKey) -> Self {
        Self::new(master.id(), std::slice::from_ref(master)).expect("current key is in the ring")
    }

    pub fn current(&self) -> &Arc<DerivedKeys> {
        &self.keys[&self.current]
    }
    pub fn current_id(&self) -> KeyId {
        self.current
    }
    pub fn get(&self, id: KeyId) -> Option<&Arc<DerivedKeys>> {
        self.keys.get(&id)
    }
    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip() {
        let k = MasterKey::generate(7);
        let text = k.to_file_string();
        let back = MasterKey::from_file_str(&text).unwrap();
        assert_eq!(back.id(), 7);
        assert_eq!(back.expose(), k.expose());
    }

    #[test]
    fn key_file_rejects_garbage() {
        assert!(MasterKey::from_file_str("s3cp-master-key v1 1 abcd").is_err());
        assert!(MasterKey::from_file_str("nope").is_err());
        assert!(
            MasterKey::from_file_str(&format!("s3cp-master-key v1 x {}", "00".repeat(32))).is_err()
        );
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let k = MasterKey::new(1, [0xab; 32]);
        assert!(!format!("{k:?}").contains("ab"));
    }

    #[test]
    fn sub_keys_are_distinct() {
        let d = DerivedKeys::derive(&MasterKey::new(1, [1; 32]));
        assert_ne!(d.kek(), d.mek());
        assert!(d.kcv_matches(d.kcv()));
        assert!(!d.kcv_matches(&[0; 8]));
    }
}
