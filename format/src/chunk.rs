//! Chunk encryption under the segment's data key, in one of two suites chosen by the writer
//! and named by the header's version byte (docs/object-format.md 4.3):
//!
//! * **Version 1, XChaCha20-Poly1305** with the nonce `[0; 15] || final_flag || index (u64 BE)`,
//!   computed the fast way. XChaCha20-Poly1305(K, N) is
//!   ChaCha20-Poly1305(HChaCha20(K, N[0..16]), [0; 4] || N[16..24]). `N[0..16]` depends only
//!   on the final flag, so the two HChaCha20 subkeys are computed once per segment and every
//!   chunk is a plain ChaCha20-Poly1305 operation with nonce `[0; 4] || index`.
//! * **Version 2, AES-256-GCM** with the data key itself and the 12-byte nonce
//!   `[0; 3] || final_flag || index (u64 BE)`: one cipher context per segment.
//!
//! Version 1 runs on OpenSSL (libcrypto 3), whose ChaCha20-Poly1305 seals and opens about
//! 4 GB/s per core here; HChaCha20 stays with RustCrypto. Version 2 runs on ring, whose
//! AES-256-GCM uses VAES with AVX2 (2024, from BoringSSL) where OpenSSL 3.0 has VAES only for
//! AVX-512: on the reference machine (AMD EPYC, AVX2 and VAES, no AVX-512) ring seals 5.7–6.3
//! GiB/s against OpenSSL's 2.7–3.3 (format/BENCH.md). ChaCha remains for CPUs without AES
//! instructions, where GCM is slow.

use std::fmt;
use std::mem::MaybeUninit;
use std::str::FromStr;
use std::sync::OnceLock;

use chacha20::cipher::consts::U10;
use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use zeroize::Zeroize;

use crate::size::TAG_LEN;

/// Length of a data encryption key.
pub const DEK_LEN: usize = 32;

/// The chunk cipher of a segment, chosen by its writer and recorded in the header's version
/// byte. Readers accept both; the segments of one object may differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkCipher {
    /// Format version 1: XChaCha20-Poly1305. Fast everywhere (no table lookups).
    XChaCha20Poly1305,
    /// Format version 2: AES-256-GCM. About twice as fast where the CPU has AES and
    /// carry-less multiply instructions, much slower where it has not.
    Aes256Gcm,
}

impl ChunkCipher {
    /// Every suite, oldest first.
    pub const ALL: [ChunkCipher; 2] = [ChunkCipher::XChaCha20Poly1305, ChunkCipher::Aes256Gcm];

    /// The header's version byte (magic byte 7) of this suite.
    pub const fn version(self) -> u8 {
        match self {
            ChunkCipher::XChaCha20Poly1305 => 1,
            ChunkCipher::Aes256Gcm => 2,
        }
    }

    /// The suite of a version byte; `None` for versions this code does not know.
    pub const fn from_version(v: u8) -> Option<Self> {
        match v {
            1 => Some(ChunkCipher::XChaCha20Poly1305),
            2 => Some(ChunkCipher::Aes256Gcm),
            _ => None,
        }
    }

    /// The configuration name: `chacha20-poly1305` or `aes-256-gcm`.
    pub const fn name(self) -> &'static str {
        match self {
            ChunkCipher::XChaCha20Poly1305 => "chacha20-poly1305",
            ChunkCipher::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// AES-256-GCM if this CPU has AES and carry-less multiply instructions, else
    /// XChaCha20-Poly1305 (the `auto` setting).
    pub fn auto() -> Self {
        if cpu_has_aes_gcm() {
            ChunkCipher::Aes256Gcm
        } else {
            ChunkCipher::XChaCha20Poly1305
        }
    }
}

/// True where AES-GCM runs in hardware: x86_64 with AES-NI and PCLMULQDQ, aarch64 with the
/// AES extension (which brings PMULL).
pub fn cpu_has_aes_gcm() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

impl fmt::Display for ChunkCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ChunkCipher {
    type Err = String;

    /// Parses a configuration name (not `auto`, which the caller resolves with [`ChunkCipher::auto`]).
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown chunk cipher {s:?} (aes-256-gcm or chacha20-poly1305)"))
    }
}

/// A segment's chunk cipher, set up for one direction. OpenSSL keeps the keys inside its
/// cipher contexts and wipes them when they are freed (`EVP_CIPHER_CTX_free` clears the
/// cipher state); our copies are zeroized at once; ring's key is wiped by [`GcmKey`].
pub(crate) enum ChunkAead {
    /// Version 1: the HChaCha20 subkeys of the non-final chunks and of the final chunk.
    XChaCha20Poly1305 { body: CipherCtx, last: CipherCtx },
    /// Version 2: the data key, for every chunk (both directions).
    Aes256Gcm(GcmKey),
}

/// ring's AES-256-GCM key of one segment, wiped when dropped. ring keeps the expanded key
/// (AES round keys, whose first is the data key itself, and the GHASH key table) inline in
/// `LessSafeKey` and does not wipe it. It lives in a box, so that moving a `ChunkAead` never
/// leaves a copy behind, as a `MaybeUninit`, so that its bytes can be overwritten with
/// zeroize's volatile writes: `LessSafeKey` owns no memory besides its bytes and has no
/// `Drop`, so nothing is skipped by not dropping it.
pub(crate) struct GcmKey(Box<MaybeUninit<LessSafeKey>>);

impl GcmKey {
    fn new(dek: &[u8; DEK_LEN]) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, dek).expect("AES-256-GCM takes a 32-byte key");
        Self(Box::new(MaybeUninit::new(LessSafeKey::new(key))))
    }

    fn get(&self) -> &LessSafeKey {
        // The one `unsafe` of this crate (lib.rs).
        #[allow(unsafe_code)]
        // SAFETY: initialised by `new`; only `drop` overwrites it, and nothing reads it after.
        unsafe {
            self.0.assume_init_ref()
        }
    }

    fn seal(&self, nonce: [u8; 12], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let nonce = Nonce::assume_unique_for_key(nonce);
        let tag = self
            .get()
            .seal_in_place_separate_tag(nonce, Aad::empty(), buf)
            .expect("a chunk is far below GCM's message limit");
        tag.as_ref().try_into().expect("a 16-byte tag")
    }

    fn open(&self, nonce: [u8; 12], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        let nonce = Nonce::assume_unique_for_key(nonce);
        self.get()
            .open_in_place_separate_tag(nonce, Aad::empty(), Tag::from(*tag), buf, 0..)
            .is_ok()
    }
}

impl Drop for GcmKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The first 16 bytes of a version 1 chunk nonce: 15 zero bytes and the final flag.
fn nonce_prefix(is_final: bool) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[15] = u8::from(is_final);
    p
}

/// The full 24-byte XChaCha20 nonce of chunk `index` in version 1 (used by tests and the spec).
pub fn chunk_nonce(index: u64, is_final: bool) -> [u8; 24] {
    let mut n = [0u8; 24];
    n[..16].copy_from_slice(&nonce_prefix(is_final));
    n[16..].copy_from_slice(&index.to_be_bytes());
    n
}

/// The 12-byte AES-GCM nonce of chunk `index` in version 2: `[0; 3] || final_flag || index`.
pub fn gcm_chunk_nonce(index: u64, is_final: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3] = u8::from(is_final);
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

#[derive(Clone, Copy)]
enum Direction {
    Seal,
    Open,
}

/// The ciphers, fetched from the provider once: passing OpenSSL 3 the legacy constants makes
/// it look the algorithm up again on every context set-up.
fn chacha20_poly1305() -> &'static Cipher {
    static CIPHER: OnceLock<Cipher> = OnceLock::new();
    CIPHER.get_or_init(|| {
        Cipher::fetch(None, "ChaCha20-Poly1305", None)
            .expect("libcrypto provides ChaCha20-Poly1305")
    })
}

fn context(cipher: &Cipher, key: &[u8], direction: Direction) -> CipherCtx {
    let mut ctx = CipherCtx::new().expect("allocating a cipher context");
    match direction {
        Direction::Seal => ctx.encrypt_init(Some(cipher), Some(key), None),
        Direction::Open => ctx.decrypt_init(Some(cipher), Some(key), None),
    }
    .expect("the chunk ciphers take a 32-byte key");
    // Both take a 12-byte nonce, OpenSSL's default for them.
    debug_assert_eq!(ctx.iv_length(), 12);
    ctx
}

fn subkey(dek: &[u8; DEK_LEN], is_final: bool, direction: Direction) -> CipherCtx {
    // Kept in the array hchacha returns and wiped there, so no copy of the subkey is left.
    let mut k = chacha20::hchacha::<U10>(dek.into(), &nonce_prefix(is_final).into());
    let ctx = context(chacha20_poly1305(), k.as_slice(), direction);
    k.as_mut_slice().zeroize();
    ctx
}

fn inner_nonce(index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

impl ChunkAead {
    /// Chunk cipher for writing a segment.
    pub(crate) fn for_sealing(cipher: ChunkCipher, dek: &[u8; DEK_LEN]) -> Self {
        Self::new(cipher, dek, Direction::Seal)
    }

    /// Chunk cipher for reading a segment.
    pub(crate) fn for_opening(cipher: ChunkCipher, dek: &[u8; DEK_LEN]) -> Self {
        Self::new(cipher, dek, Direction::Open)
    }

    fn new(cipher: ChunkCipher, dek: &[u8; DEK_LEN], direction: Direction) -> Self {
        match cipher {
            ChunkCipher::XChaCha20Poly1305 => Self::XChaCha20Poly1305 {
                body: subkey(dek, false, direction),
                last: subkey(dek, true, direction),
            },
            ChunkCipher::Aes256Gcm => Self::Aes256Gcm(GcmKey::new(dek)),
        }
    }

    /// Encrypts `buf` in place and returns the tag. Only on a [`ChunkAead::for_sealing`].
    pub(crate) fn seal(&mut self, index: u64, is_final: bool, buf: &mut [u8]) -> [u8; TAG_LEN] {
        match self {
            Self::XChaCha20Poly1305 { body, last } => {
                openssl_seal(if is_final { last } else { body }, &inner_nonce(index), buf)
            }
            Self::Aes256Gcm(key) => key.seal(gcm_chunk_nonce(index, is_final), buf),
        }
    }

    /// Verifies `tag` and decrypts `buf` in place. Only on a [`ChunkAead::for_opening`].
    /// On failure `buf` is zeroed (OpenSSL decrypts before it checks the tag, ring leaves it
    /// unspecified) and the caller must discard it.
    pub(crate) fn open(
        &mut self,
        index: u64,
        is_final: bool,
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        let ok = match self {
            Self::XChaCha20Poly1305 { body, last } => openssl_open(
                if is_final { last } else { body },
                &inner_nonce(index),
                buf,
                tag,
            ),
            Self::Aes256Gcm(key) => key.open(gcm_chunk_nonce(index, is_final), buf, tag),
        };
        if !ok {
            buf.zeroize();
        }
        ok
    }
}

// Chunks (at most 16 MiB) are far below both ciphers' message limits (256 GiB for
// ChaCha20-Poly1305, 64 GiB for GCM): sealing fails only on a context or key set up for the
// other direction, a bug.

fn openssl_seal(ctx: &mut CipherCtx, nonce: &[u8; 12], buf: &mut [u8]) -> [u8; TAG_LEN] {
    let mut tag = [0u8; TAG_LEN];
    (|| {
        ctx.encrypt_init(None, None, Some(nonce))?;
        if !buf.is_empty() {
            let len = buf.len();
            ctx.cipher_update_inplace(buf, len)?;
        }
        ctx.cipher_final(&mut [])?;
        ctx.tag(&mut tag)
    })()
    .expect("sealing a chunk with a sealing context");
    tag
}

fn openssl_open(
    ctx: &mut CipherCtx,
    nonce: &[u8; 12],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> bool {
    (|| {
        ctx.decrypt_init(None, None, Some(nonce))?;
        if !buf.is_empty() {
            let len = buf.len();
            ctx.cipher_update_inplace(buf, len)?;
        }
        ctx.set_tag(tag)?;
        ctx.cipher_final(&mut [])
    })()
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};

    const CASES: [(u64, bool, usize); 6] = [
        (0, false, 0),
        (0, true, 0),
        (1, false, 1),
        (7, true, 100),
        (u64::MAX, false, 4096),
        (0x0102_0304_0506_0708, true, 65536),
    ];

    fn dek() -> [u8; 32] {
        core::array::from_fn(|i| (i * 7 + 3) as u8)
    }

    /// The fast construction is exactly XChaCha20-Poly1305 with the documented nonce.
    #[test]
    fn equals_xchacha20poly1305() {
        let dek = dek();
        let mut fast = ChunkAead::for_sealing(ChunkCipher::XChaCha20Poly1305, &dek);
        let mut fast_open = ChunkAead::for_opening(ChunkCipher::XChaCha20Poly1305, &dek);
        let reference = XChaCha20Poly1305::new(&dek.into());
        for (index, is_final, len) in CASES {
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
            assert!(fast_open.open(index, is_final, &mut a, &tag_a));
            assert_eq!(a, plain);
        }
    }

    /// Version 2 chunks are exactly AES-256-GCM (OpenSSL's, an implementation independent of
    /// ring's) under the data key with the documented nonce and no associated data.
    #[test]
    fn equals_aes256gcm() {
        use openssl::symm::{decrypt_aead, encrypt_aead, Cipher as Symm};
        let dek = dek();
        let mut fast = ChunkAead::for_sealing(ChunkCipher::Aes256Gcm, &dek);
        let mut fast_open = ChunkAead::for_opening(ChunkCipher::Aes256Gcm, &dek);
        for (index, is_final, len) in CASES {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut a = plain.clone();
            let tag_a = fast.seal(index, is_final, &mut a);
            let nonce = gcm_chunk_nonce(index, is_final);
            let mut tag_b = [0u8; TAG_LEN];
            let b = encrypt_aead(
                Symm::aes_256_gcm(),
                &dek,
                Some(&nonce),
                &[],
                &plain,
                &mut tag_b,
            )
            .unwrap();
            assert_eq!(a, b, "ciphertext of ({index}, {is_final}, {len})");
            assert_eq!(tag_a, tag_b, "tag of ({index}, {is_final}, {len})");
            // the reference opens what ring sealed, and ring what the reference sealed
            let opened =
                decrypt_aead(Symm::aes_256_gcm(), &dek, Some(&nonce), &[], &a, &tag_a).unwrap();
            assert_eq!(opened, plain);
            let mut b = b;
            assert!(fast_open.open(index, is_final, &mut b, &tag_b));
            assert_eq!(b, plain);
        }
        // The nonce layout of the spec: 3 zero bytes, the final flag, the index.
        assert_eq!(
            gcm_chunk_nonce(0x0102_0304_0506_0708, true),
            [0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    /// Dropping a version 2 cipher wipes ring's expanded key (whose first round key is the
    /// data key itself), so no copy of it is left in freed memory.
    #[test]
    fn gcm_key_is_wiped_on_drop() {
        let dek = dek();
        let mut key = GcmKey::new(&dek);
        let bytes = |k: &GcmKey| -> Vec<u8> {
            let p = k.0.as_ptr().cast::<u8>();
            (0..std::mem::size_of::<LessSafeKey>())
                // SAFETY (test only): reads the bytes of the box's MaybeUninit.
                .map(|i| {
                    #[allow(unsafe_code)]
                    unsafe {
                        std::ptr::read_volatile(p.add(i))
                    }
                })
                .collect()
        };
        let before = bytes(&key);
        assert!(
            before.windows(DEK_LEN).any(|w| w == dek),
            "the data key is the first AES-256 round key"
        );
        key.0.zeroize();
        assert!(bytes(&key).iter().all(|&b| b == 0));
        // Put a key back so that `drop` has a key to wipe.
        key.0.write(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &dek).unwrap(),
        ));
    }

    #[test]
    fn final_flag_and_index_matter() {
        for cipher in ChunkCipher::ALL {
            let dek = [9u8; 32];
            let mut sealer = ChunkAead::for_sealing(cipher, &dek);
            let mut aead = ChunkAead::for_opening(cipher, &dek);
            let mut buf = b"hello".to_vec();
            let tag = sealer.seal(3, false, &mut buf);
            let ct = buf.clone();
            assert!(!aead.open(3, true, &mut buf, &tag), "{cipher}");
            assert_eq!(
                buf, [0; 5],
                "{cipher}: a failed open leaves no plaintext behind"
            );
            let mut buf = ct.clone();
            assert!(!aead.open(4, false, &mut buf, &tag), "{cipher}");
            assert_ne!(buf, b"hello");
            let mut buf = ct.clone();
            assert!(aead.open(3, false, &mut buf, &tag), "{cipher}");
            assert_eq!(buf, b"hello");
        }
    }

    /// A chunk sealed under one suite never opens under the other with the same data key.
    #[test]
    fn suites_do_not_open_each_other() {
        let dek = dek();
        for (w, r) in [
            (ChunkCipher::XChaCha20Poly1305, ChunkCipher::Aes256Gcm),
            (ChunkCipher::Aes256Gcm, ChunkCipher::XChaCha20Poly1305),
        ] {
            let mut buf = b"some plaintext".to_vec();
            let tag = ChunkAead::for_sealing(w, &dek).seal(0, true, &mut buf);
            assert!(!ChunkAead::for_opening(r, &dek).open(0, true, &mut buf, &tag));
        }
    }

    #[test]
    fn names_and_versions() {
        for c in ChunkCipher::ALL {
            assert_eq!(c.name().parse::<ChunkCipher>(), Ok(c));
            assert_eq!(ChunkCipher::from_version(c.version()), Some(c));
        }
        assert_eq!(ChunkCipher::XChaCha20Poly1305.version(), 1);
        assert_eq!(ChunkCipher::Aes256Gcm.version(), 2);
        assert_eq!(ChunkCipher::from_version(0), None);
        assert_eq!(ChunkCipher::from_version(3), None);
        assert!("auto".parse::<ChunkCipher>().is_err());
        assert!("AES-256-GCM".parse::<ChunkCipher>().is_err());
        assert_eq!(
            ChunkCipher::auto(),
            if cpu_has_aes_gcm() {
                ChunkCipher::Aes256Gcm
            } else {
                ChunkCipher::XChaCha20Poly1305
            }
        );
    }
}
