//! Chunk encryption: XChaCha20-Poly1305 under the segment's data key with the nonce
//! `[0; 15] || final_flag || index (u64 BE)`, computed the fast way.
//!
//! XChaCha20-Poly1305(K, N) is ChaCha20-Poly1305(HChaCha20(K, N[0..16]), [0; 4] || N[16..24]).
//! `N[0..16]` depends only on the final flag, so the two HChaCha20 subkeys are computed once
//! per segment and every chunk is a plain ChaCha20-Poly1305 operation with nonce
//! `[0; 4] || index`. That operation runs on ring's assembly, about twice the speed of the
//! portable implementation (see format/BENCH.md); HChaCha20 stays with RustCrypto.

use std::mem::ManuallyDrop;

use chacha20::cipher::consts::U10;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use zeroize::Zeroize;

use crate::size::TAG_LEN;

/// Length of a data encryption key.
pub const DEK_LEN: usize = 32;

/// A ring ChaCha20-Poly1305 key that is wiped on drop. ring keeps the key words in plain
/// memory and has no Drop that clears them, so this wrapper overwrites them itself.
struct WipedKey(ManuallyDrop<LessSafeKey>);

// The wipe below relies on ring's key being plain data: no drop glue, nothing on the heap.
const _: () = assert!(!std::mem::needs_drop::<LessSafeKey>());

impl WipedKey {
    fn new(key: &[u8; DEK_LEN]) -> Self {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key");
        WipedKey(ManuallyDrop::new(LessSafeKey::new(unbound)))
    }
}

impl std::ops::Deref for WipedKey {
    type Target = LessSafeKey;
    fn deref(&self) -> &LessSafeKey {
        &self.0
    }
}

impl Drop for WipedKey {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        let key: *mut LessSafeKey = &mut *self.0;
        // SAFETY: `key` points to a live, aligned `LessSafeKey` that we own. It has no drop
        // glue and no heap parts (asserted above; ring 0.17 stores the key inline), so
        // zeroing its bytes wipes every copy ring made of the key. It is never read or
        // dropped again: it sits in a ManuallyDrop and `self` is being dropped.
        unsafe { zeroize::zeroize_flat_type(key) }
    }
}

/// The two per-segment chunk ciphers (non-final and final chunks). Keys are wiped on drop.
pub(crate) struct ChunkAead {
    body: WipedKey,
    last: WipedKey,
}

/// The first 16 bytes of a chunk nonce: 15 zero bytes and the final flag.
fn nonce_prefix(is_final: bool) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[15] = u8::from(is_final);
    p
}

/// The full 24-byte XChaCha20 nonce of chunk `index` (used by tests and the spec).
pub fn chunk_nonce(index: u64, is_final: bool) -> [u8; 24] {
    let mut n = [0u8; 24];
    n[..16].copy_from_slice(&nonce_prefix(is_final));
    n[16..].copy_from_slice(&index.to_be_bytes());
    n
}

fn subkey(dek: &[u8; DEK_LEN], is_final: bool) -> WipedKey {
    let mut k: [u8; 32] =
        chacha20::hchacha::<U10>(dek.into(), &nonce_prefix(is_final).into()).into();
    let key = WipedKey::new(&k);
    k.zeroize();
    key
}

fn inner_nonce(index: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&index.to_be_bytes());
    // Unique per key: each (segment data key, final flag) pair sees each index once.
    Nonce::assume_unique_for_key(n)
}

impl ChunkAead {
    pub(crate) fn new(dek: &[u8; DEK_LEN]) -> Self {
        Self {
            body: subkey(dek, false),
            last: subkey(dek, true),
        }
    }

    fn aead(&self, is_final: bool) -> &LessSafeKey {
        if is_final {
            &self.last
        } else {
            &self.body
        }
    }

    /// Encrypts `buf` in place and returns the tag.
    pub(crate) fn seal(&self, index: u64, is_final: bool, buf: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .aead(is_final)
            .seal_in_place_separate_tag(inner_nonce(index), Aad::empty(), buf)
            .expect("chunks are far below ChaCha20-Poly1305's 256 GiB message limit");
        tag.as_ref().try_into().expect("16-byte tag")
    }

    /// Verifies `tag` and decrypts `buf` in place. On failure `buf` holds no plaintext (ring
    /// zeroes what its one-pass open had decrypted) and must be discarded.
    pub(crate) fn open(
        &self,
        index: u64,
        is_final: bool,
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        self.aead(is_final)
            .open_in_place_separate_tag(inner_nonce(index), Aad::empty(), Tag::from(*tag), buf, 0..)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};

    /// The fast construction is exactly XChaCha20-Poly1305 with the documented nonce.
    #[test]
    fn equals_xchacha20poly1305() {
        let dek: [u8; 32] = core::array::from_fn(|i| (i * 7 + 3) as u8);
        let fast = ChunkAead::new(&dek);
        let reference = XChaCha20Poly1305::new(&dek.into());
        for (index, is_final, len) in [
            (0u64, false, 0usize),
            (0, true, 0),
            (1, false, 1),
            (7, true, 100),
            (u64::MAX, false, 4096),
            (0x0102_0304_0506_0708, true, 65536),
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut a = plain.clone();
            let tag_a = fast.seal(index, is_final, &mut a);
            let mut b = plain.clone();
            let nonce = chunk_nonce(index, is_final);
            let tag_b = reference
                .encrypt_in_place_detached(XNonce::from_slice(&nonce), &[], &mut b)
                .unwrap();
            assert_eq!(a, b);
            assert_eq!(&tag_a[..], &tag_b[..]);
            // and the reference opens what the fast path sealed, and vice versa
            assert!(reference
                .decrypt_in_place_detached(XNonce::from_slice(&nonce), &[], &mut b, &tag_b)
                .is_ok());
            assert_eq!(b, plain);
            assert!(fast.open(index, is_final, &mut a, &tag_a));
            assert_eq!(a, plain);
        }
    }

    #[test]
    fn final_flag_and_index_matter() {
        let dek = [9u8; 32];
        let aead = ChunkAead::new(&dek);
        let mut buf = b"hello".to_vec();
        let tag = aead.seal(3, false, &mut buf);
        let ct = buf.clone();
        assert!(!aead.open(3, true, &mut buf, &tag));
        assert_ne!(buf, b"hello", "a failed open releases no plaintext");
        let mut buf = ct.clone();
        assert!(!aead.open(4, false, &mut buf, &tag));
        assert_ne!(buf, b"hello");
        let mut buf = ct.clone();
        assert!(aead.open(3, false, &mut buf, &tag));
        assert_eq!(buf, b"hello");
    }
}
