//! The sealed key file: a master key wrapped by an HSM or a KMS, safe to keep on disk.
//!
//! ```json
//! {"format":"s3cp-sealed-key","version":1,"key_id":1,"kcv":"<16 hex>",
//!  "source":"pkcs11","params":{"key_label":"s3cp-wrap","mechanism":"CKM_AES_GCM","iv":"<b64>"},
//!  "wrapped":"<base64>","created_at":"2026-12-06T03:00:00Z"}
//! ```
//!
//! The key id, the key check value (KCV, `format::keys`) and the source kind are bound to the
//! wrapped bytes (AES-GCM additional data for PKCS#11, the encryption context for AWS KMS), so
//! a file edited on disk fails to unseal. After unsealing, the KCV of the recovered key must
//! equal the file's: a key unsealed by the wrong HSM key can never be loaded.

use std::collections::BTreeMap;
use std::path::Path;

use s3cp_format::keys::{DerivedKeys, KeyId, MasterKey, KCV_LEN, KEY_LEN};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Reason, UnsealError};

/// The `format` field.
pub const FORMAT: &str = "s3cp-sealed-key";
/// The only version this build reads and writes.
pub const VERSION: u32 = 1;
/// Largest file accepted (a sealed 32-byte key is well under 2 KiB even with a KMS blob).
const MAX_FILE: u64 = 64 * 1024;

/// A sealed key file as stored (no secret in it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedKeyFile {
    pub format: String,
    pub version: u32,
    pub key_id: KeyId,
    /// Hex of the 8-byte key check value of the master key.
    pub kcv: String,
    /// `pkcs11`, `aws-kms` or `kmip`.
    pub source: String,
    /// Source parameters (HSM key label, KMS key id, KMIP uid, IV...), strings only.
    pub params: BTreeMap<String, String>,
    /// Base64 (standard, padded) of the wrapped key.
    pub wrapped: String,
    /// RFC 3339, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

impl SealedKeyFile {
    /// A file for `key` with empty params and ciphertext, to be filled by a source.
    pub fn template(key: &MasterKey, source: &str) -> Self {
        Self {
            format: FORMAT.to_owned(),
            version: VERSION,
            key_id: key.id(),
            kcv: hex::encode(DerivedKeys::derive(key).kcv()),
            source: source.to_owned(),
            params: BTreeMap::new(),
            wrapped: String::new(),
            created_at: Some(crate::util::rfc3339(crate::util::unix_now())),
        }
    }

    /// Reads and checks the structure (not the ciphertext) of a file.
    pub fn read(path: &Path) -> Result<Self, UnsealError> {
        let bad = |m: String| UnsealError::new(Reason::BadFile, m);
        let meta = std::fs::metadata(path)
            .map_err(|e| bad(format!("cannot read sealed key file {}: {e}", path.display())))?;
        if meta.len() > MAX_FILE {
            return Err(bad(format!("sealed key file {} is larger than {MAX_FILE} bytes", path.display())));
        }
        let text = std::fs::read(path)
            .map_err(|e| bad(format!("cannot read sealed key file {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| bad(format!("sealed key file {}: {}", path.display(), e.message)))
    }

    /// Parses and checks the structure.
    pub fn parse(text: &[u8]) -> Result<Self, UnsealError> {
        let bad = |m: String| UnsealError::new(Reason::BadFile, m);
        let f: Self = serde_json::from_slice(text).map_err(|e| bad(format!("not a sealed key file: {e}")))?;
        if f.format != FORMAT {
            return Err(bad(format!("format is {:?}, expected {FORMAT:?}", f.format)));
        }
        if f.version != VERSION {
            return Err(bad(format!("version {} is not supported (this build reads {VERSION})", f.version)));
        }
        if f.kcv_bytes().is_none() {
            return Err(bad("kcv must be 16 hex characters".into()));
        }
        if f.wrapped_bytes().is_none() {
            return Err(bad("wrapped is not base64".into()));
        }
        Ok(f)
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("plain struct");
        s.push('\n');
        s
    }

    pub fn kcv_bytes(&self) -> Option<[u8; KCV_LEN]> {
        let mut out = [0u8; KCV_LEN];
        hex::decode_to_slice(&self.kcv, &mut out).ok()?;
        Some(out)
    }

    pub fn wrapped_bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(&self.wrapped).ok()
    }

    pub fn set_wrapped(&mut self, bytes: &[u8]) {
        use base64::Engine;
        self.wrapped = base64::engine::general_purpose::STANDARD.encode(bytes);
    }

    /// A parameter the source needs, or a `bad_file` error naming it.
    pub fn param(&self, name: &str) -> Result<&str, UnsealError> {
        self.params.get(name).map(String::as_str).ok_or_else(|| {
            UnsealError::new(Reason::BadFile, format!("sealed key file has no params.{name} (needed by source {})", self.source))
        })
    }

    /// The bytes bound to the ciphertext (PKCS#11 AES-GCM additional data): the format, key id,
    /// KCV and source, in a fixed order. Params are not included: they say where the wrapping
    /// key is, and a wrong one simply fails to unwrap.
    pub fn binding(&self) -> Vec<u8> {
        format!("{FORMAT} v{}\nkey_id={}\nkcv={}\nsource={}\n", self.version, self.key_id, self.kcv.to_ascii_lowercase(), self.source)
            .into_bytes()
    }

    /// The same binding as an AWS KMS encryption context.
    pub fn encryption_context(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("s3cp:format".to_owned(), format!("{FORMAT} v{}", self.version)),
            ("s3cp:key_id".to_owned(), self.key_id.to_string()),
            ("s3cp:kcv".to_owned(), self.kcv.to_ascii_lowercase()),
        ])
    }

    /// Turns the unwrapped bytes into the master key, refusing a wrong length or a KCV that
    /// differs from the file's (the wrong key was unsealed).
    pub fn finish(&self, plain: Zeroizing<Vec<u8>>) -> Result<MasterKey, UnsealError> {
        if plain.len() != KEY_LEN {
            return Err(UnsealError::new(
                Reason::KeyCheckMismatch,
                format!("the unsealed key is {} bytes, expected {KEY_LEN}", plain.len()),
            ));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&plain);
        let key = MasterKey::new(self.key_id, *bytes);
        let stored = self.kcv_bytes().unwrap_or([0; KCV_LEN]);
        if !DerivedKeys::derive(&key).kcv_matches(&stored) {
            return Err(UnsealError::new(
                Reason::KeyCheckMismatch,
                format!("the unsealed key id {} does not match the file's key check value; refusing it", self.key_id),
            ));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let key = MasterKey::generate(7);
        let mut f = SealedKeyFile::template(&key, "pkcs11");
        f.params.insert("key_label".into(), "w".into());
        f.set_wrapped(b"ciphertext");
        let g = SealedKeyFile::parse(f.to_json().as_bytes()).unwrap();
        assert_eq!(f, g);
        assert_eq!(g.wrapped_bytes().unwrap(), b"ciphertext");
        // The KCV check refuses another key under the same id, and a short key.
        let ok = g.finish(Zeroizing::new(key.expose().to_vec())).unwrap();
        assert_eq!(ok.id(), 7);
        let e = g.finish(Zeroizing::new(MasterKey::generate(7).expose().to_vec())).unwrap_err();
        assert_eq!(e.reason, Reason::KeyCheckMismatch);
        assert_eq!(g.finish(Zeroizing::new(vec![0; 16])).unwrap_err().reason, Reason::KeyCheckMismatch);
        // The binding changes with every bound field.
        let mut h = g.clone();
        h.key_id = 8;
        assert_ne!(h.binding(), g.binding());
        assert_ne!(h.encryption_context(), g.encryption_context());
    }

    #[test]
    fn malformed_files() {
        let key = MasterKey::generate(1);
        let good = SealedKeyFile::template(&key, "aws-kms").to_json();
        for (from, to) in [("s3cp-sealed-key", "other"), ("\"version\": 1", "\"version\": 2")] {
            let e = SealedKeyFile::parse(good.replace(from, to).as_bytes()).unwrap_err();
            assert_eq!(e.reason, Reason::BadFile, "{from}");
        }
        assert_eq!(SealedKeyFile::parse(b"{}").unwrap_err().reason, Reason::BadFile);
        let extra = good.replacen('{', "{\"x\":1,", 1);
        assert_eq!(SealedKeyFile::parse(extra.as_bytes()).unwrap_err().reason, Reason::BadFile);
    }
}
