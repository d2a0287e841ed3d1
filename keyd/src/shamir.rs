//! m-of-n key shares: Shamir secret sharing of a 32-byte master key over GF(256), and the
//! share file administrators keep.
//!
//! Each byte of the key is the constant term of its own random polynomial of degree M−1 over
//! GF(2^8); share `i` holds the 32 evaluations at x = i (1..=N). Any M shares determine the
//! key by Lagrange interpolation at x = 0; any M−1 shares are uniformly distributed whatever
//! the key is, so they reveal nothing about it (information-theoretic, not computational).
//!
//! The arithmetic is [`vsss_rs::Gf256`] (byte-oriented GF(256) Shamir): a maintained crate of
//! secret-sharing schemes with published security audits, whose GF(256) multiplication and
//! inversion are branch-free bit operations (no log/exp tables indexed by secret bytes, so no
//! cache-timing leak), and which rejects duplicate share identifiers.
//!
//! A share file is one line, readable and safe to paste:
//!
//! ```text
//! s3cp-key-share v1 <key id> <index>/<count> threshold=<M> kcv=<16 hex> <64 hex share>
//! ```
//!
//! `kcv` is the master key's key-check value (`HKDF(master, "s3cp v1 key check")[..8]`, the
//! value every object segment header carries): it lets memkey-server tell a correct
//! reconstruction from a wrong one, and lets `memkey-admin key verify` match shares to a
//! bucket. It is a function of the key and is the same in every share, so it adds nothing to
//! what one object header already shows.

use std::fmt;

use rand::rngs::OsRng;
use s3cp_format::keys::{DerivedKeys, KeyId, MasterKey, KCV_LEN, KEY_LEN};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// First word of a share file.
pub const SHARE_FILE_HEADER: &str = "s3cp-key-share";
/// Most shares one key can be split into (GF(256) has 255 non-zero x coordinates).
pub const MAX_SHARES: u8 = 255;

/// Why a split, a share file or a reconstruction was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("threshold must be at least 2 and at most the number of shares (got {threshold} of {count})")]
    BadThreshold { threshold: u8, count: u8 },
    #[error("malformed share file: {0}")]
    Malformed(&'static str),
    #[error("need {need} shares, have {have}")]
    NotEnough { need: u8, have: usize },
    #[error("the shares do not belong to one split (key id, threshold or kcv differ)")]
    Mixed,
    #[error("two shares have the same index {0}")]
    DuplicateIndex(u8),
    #[error(
        "the reconstructed key does not match the key-check value (a wrong or corrupted share)"
    )]
    KcvMismatch,
}

/// Key-check value of a master key (the one object segment headers carry).
pub fn key_check_value(key: &MasterKey) -> [u8; KCV_LEN] {
    *DerivedKeys::derive(key).kcv()
}

/// One share of a master key.
#[derive(Clone)]
pub struct KeyShare {
    pub key_id: KeyId,
    /// x coordinate, 1..=count.
    pub index: u8,
    /// How many shares were made (informational; not needed to combine).
    pub count: u8,
    /// M: how many distinct shares reconstruct the key.
    pub threshold: u8,
    pub kcv: [u8; KCV_LEN],
    /// The 32 share bytes (y coordinates).
    pub value: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyShare {{ key_id: {}, index: {}/{}, threshold: {}, value: <redacted> }}",
            self.key_id, self.index, self.count, self.threshold
        )
    }
}

impl KeyShare {
    /// The share file text (one line).
    pub fn to_file_string(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{SHARE_FILE_HEADER} v1 {} {}/{} threshold={} kcv={} {}\n",
            self.key_id,
            self.index,
            self.count,
            self.threshold,
            hex::encode(self.kcv),
            hex::encode(*self.value)
        ))
    }

    /// Parses a share file (lines starting with `#` are comments).
    pub fn from_file_str(text: &str) -> Result<Self, ShareError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or(ShareError::Malformed("empty file"))?;
        let mut w = line.split_whitespace();
        if w.next() != Some(SHARE_FILE_HEADER) || w.next() != Some("v1") {
            return Err(ShareError::Malformed(
                "expected `s3cp-key-share v1 <id> <i>/<n> threshold=<m> kcv=<hex> <hex>`",
            ));
        }
        let key_id = w
            .next()
            .and_then(|s| s.parse::<KeyId>().ok())
            .ok_or(ShareError::Malformed("key id is not a number"))?;
        let (index, count) = w
            .next()
            .and_then(|s| s.split_once('/'))
            .and_then(|(i, n)| Some((i.parse::<u8>().ok()?, n.parse::<u8>().ok()?)))
            .ok_or(ShareError::Malformed("expected <index>/<count>"))?;
        let threshold = w
            .next()
            .and_then(|s| s.strip_prefix("threshold="))
            .and_then(|s| s.parse::<u8>().ok())
            .ok_or(ShareError::Malformed("expected threshold=<m>"))?;
        let kcv = w
            .next()
            .and_then(|s| s.strip_prefix("kcv="))
            .and_then(crate::protocol::decode_hex_array::<KCV_LEN>)
            .ok_or(ShareError::Malformed("expected kcv=<16 hex>"))?;
        let mut value = Zeroizing::new([0u8; KEY_LEN]);
        let hex_value = Zeroizing::new(w.next().unwrap_or("").to_owned());
        hex::decode_to_slice(hex_value.as_bytes(), &mut value[..])
            .map_err(|_| ShareError::Malformed("share value is not 64 hex characters"))?;
        if w.next().is_some() {
            return Err(ShareError::Malformed("trailing data after the share"));
        }
        if index == 0 || index > count || threshold < 2 || threshold > count {
            return Err(ShareError::Malformed(
                "index, count and threshold are inconsistent",
            ));
        }
        Ok(Self {
            key_id,
            index,
            count,
            threshold,
            kcv,
            value,
        })
    }

    /// Whether two shares come from the same split (same key id, threshold and kcv).
    pub fn same_split(&self, other: &KeyShare) -> bool {
        self.key_id == other.key_id
            && self.threshold == other.threshold
            && bool::from(self.kcv.ct_eq(&other.kcv))
    }
}

/// Splits `key` into `count` shares, any `threshold` of which reconstruct it.
pub fn split(key: &MasterKey, threshold: u8, count: u8) -> Result<Vec<KeyShare>, ShareError> {
    if threshold < 2 || threshold > count {
        return Err(ShareError::BadThreshold { threshold, count });
    }
    let kcv = key_check_value(key);
    let mut raw = vsss_rs::Gf256::split_array(
        usize::from(threshold),
        usize::from(count),
        key.expose(),
        OsRng,
    )
    .map_err(|_| ShareError::BadThreshold { threshold, count })?;
    let mut out = Vec::with_capacity(raw.len());
    for r in raw.iter_mut() {
        // vsss-rs layout: identifier byte, then one y byte per secret byte.
        debug_assert_eq!(r.len(), 1 + KEY_LEN);
        let mut value = Zeroizing::new([0u8; KEY_LEN]);
        value.copy_from_slice(&r[1..]);
        out.push(KeyShare {
            key_id: key.id(),
            index: r[0],
            count,
            threshold,
            kcv,
            value,
        });
        r.zeroize();
    }
    Ok(out)
}

/// Reconstructs the key from at least `threshold` shares of one split and checks it against
/// the key-check value (constant time). Every intermediate buffer is wiped.
pub fn combine(shares: &[&KeyShare]) -> Result<MasterKey, ShareError> {
    let first = shares
        .first()
        .ok_or(ShareError::NotEnough { need: 2, have: 0 })?;
    if shares.len() < usize::from(first.threshold) {
        return Err(ShareError::NotEnough {
            need: first.threshold,
            have: shares.len(),
        });
    }
    if shares.iter().any(|s| !s.same_split(first)) {
        return Err(ShareError::Mixed);
    }
    for (i, a) in shares.iter().enumerate() {
        if let Some(b) = shares[i + 1..].iter().find(|b| b.index == a.index) {
            return Err(ShareError::DuplicateIndex(b.index));
        }
    }
    let mut raw: Vec<Vec<u8>> = shares
        .iter()
        .map(|s| {
            let mut v = Vec::with_capacity(1 + KEY_LEN);
            v.push(s.index);
            v.extend_from_slice(&s.value[..]);
            v
        })
        .collect();
    let result = vsss_rs::Gf256::combine_array(&raw);
    for r in raw.iter_mut() {
        r.zeroize();
    }
    let mut secret = result.map_err(|_| ShareError::KcvMismatch)?;
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    let ok_len = secret.len() == KEY_LEN;
    if ok_len {
        bytes.copy_from_slice(&secret);
    }
    secret.zeroize();
    if !ok_len {
        return Err(ShareError::KcvMismatch);
    }
    let key = MasterKey::new(first.key_id, *bytes);
    if !bool::from(key_check_value(&key).ct_eq(&first.kcv)) {
        return Err(ShareError::KcvMismatch);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_threshold_subset_reconstructs_and_fewer_do_not() {
        let key = MasterKey::generate(9);
        let shares = split(&key, 3, 5).unwrap();
        assert_eq!(
            shares.iter().map(|s| s.index).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        for a in 0..5 {
            for b in a + 1..5 {
                for c in b + 1..5 {
                    let k = combine(&[&shares[a], &shares[b], &shares[c]]).unwrap();
                    assert_eq!(k.expose(), key.expose());
                    assert_eq!(k.id(), 9);
                }
            }
        }
        assert_eq!(
            combine(&[&shares[0], &shares[1]]).unwrap_err(),
            ShareError::NotEnough { need: 3, have: 2 }
        );
        assert_eq!(
            combine(&[&shares[0], &shares[1], &shares[1]]).unwrap_err(),
            ShareError::DuplicateIndex(2)
        );
    }

    #[test]
    fn a_wrong_share_fails_the_key_check() {
        let key = MasterKey::generate(1);
        let mut shares = split(&key, 2, 3).unwrap();
        shares[1].value[0] ^= 1;
        assert_eq!(
            combine(&[&shares[0], &shares[1]]).unwrap_err(),
            ShareError::KcvMismatch
        );
        let other = split(&MasterKey::generate(1), 2, 3).unwrap();
        assert_eq!(
            combine(&[&shares[0], &other[2]]).unwrap_err(),
            ShareError::Mixed
        );
    }

    #[test]
    fn one_share_is_independent_of_the_key() {
        // With threshold 2, share 1 of key K is K + r·1 for a uniform r: every share value is
        // equally likely whatever K is. Two different keys split with the same randomness
        // source give unrelated first shares; and no share equals the key it came from.
        let key = MasterKey::new(1, [0x42; KEY_LEN]);
        let shares = split(&key, 2, 2).unwrap();
        assert_ne!(&shares[0].value[..], key.expose());
        assert_ne!(&shares[1].value[..], key.expose());
        assert_ne!(shares[0].value[..], shares[1].value[..]);
    }

    #[test]
    fn file_round_trip_and_garbage() {
        let key = MasterKey::generate(77);
        let s = &split(&key, 2, 3).unwrap()[2];
        let text = s.to_file_string();
        assert!(text.starts_with("s3cp-key-share v1 77 3/3 threshold=2 kcv="));
        let back = KeyShare::from_file_str(&format!("# for alice\n{}", text.as_str())).unwrap();
        assert_eq!(
            (back.key_id, back.index, back.count, back.threshold),
            (77, 3, 3, 2)
        );
        assert_eq!(back.value[..], s.value[..]);
        assert!(!text.contains(&hex::encode(key.expose())));
        for bad in [
            "",
            "s3cp-key-share v1 1 0/3 threshold=2 kcv=0000000000000000 00",
            "s3cp-key-share v1 1 1/3 threshold=1 kcv=0000000000000000 00",
            "s3cp-master-key v1 1 00",
        ] {
            assert!(KeyShare::from_file_str(bad).is_err(), "{bad}");
        }
        assert!(split(&key, 1, 3).is_err());
        assert!(split(&key, 4, 3).is_err());
    }
}
