//! Wire messages and cryptography of the key-delivery protocol.
//!
//! Both sides live here so that `memkey-admin` and `memkey-server` cannot drift apart; the
//! normative description (with test vectors produced by [`vectors`]) is `docs/key-protocol.md`.
//!
//! ```text
//! fp   = SHA-256(S_pub)
//! sigS = Ed25519(S, "memkey v1 challenge" ‖ C ‖ T ‖ Es_pub)
//! TH   = SHA-256("memkey v1 transcript" ‖ C ‖ T ‖ Es_pub ‖ Ea_pub ‖ S_pub ‖ A_pub)
//! Z    = X25519(ea, Es_pub) = X25519(es, Ea_pub)
//! K    = HKDF-SHA256(salt = TH, ikm = Z, info = "memkey v1 key-wrap", L = 32)
//! P    = key_id (u32 BE) ‖ flags (u8, bit 0 = make current) ‖ master key (32)
//!   or, for an m-of-n share (flags bit 1):
//!        key_id ‖ flags ‖ index (u8) ‖ threshold (u8) ‖ kcv (8) ‖ share (32)
//! CT   = XChaCha20-Poly1305(K, N, P, aad = TH)
//! sigA = Ed25519(A, "memkey v1 delivery" ‖ TH ‖ N ‖ CT)
//! ACK  = HKDF-SHA256(salt = TH, ikm = Z, info = "memkey v1 confirm" ‖ key_id ‖ is_current, L = 32)
//! ```
//! C is the 32-byte challenge (it is also the challenge's id), T the server's Unix time in
//! seconds as u64 big-endian.

use std::fmt;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use rand::rngs::OsRng;
use rand::RngCore;
use s3cp_format::keys::{KeyId, MasterKey, KCV_LEN, KEY_LEN};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey as XPublic, StaticSecret};
use zeroize::Zeroizing;

/// Protocol version carried in every message.
pub const PROTOCOL_VERSION: u32 = 1;
/// Length of a challenge (random, also its id).
pub const CHALLENGE_LEN: usize = 32;
/// XChaCha20-Poly1305 nonce length.
pub const NONCE_LEN: usize = 24;
/// Sealed payload: key id (4) ‖ flags (1) ‖ key (32).
pub const PAYLOAD_LEN: usize = 4 + 1 + KEY_LEN;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Ciphertext length including the tag.
pub const CIPHERTEXT_LEN: usize = PAYLOAD_LEN + TAG_LEN;
/// Flag bit: the delivered key becomes the current key.
pub const FLAG_MAKE_CURRENT: u8 = 0x01;
/// Flag bit: the payload is one m-of-n share, not a whole key (`docs/key-protocol.md` §11).
pub const FLAG_SHARE: u8 = 0x02;
/// Sealed share payload: key id (4) ‖ flags (1) ‖ index (1) ‖ threshold (1) ‖ kcv (8) ‖ share (32).
pub const SHARE_PAYLOAD_LEN: usize = 4 + 1 + 1 + 1 + KCV_LEN + KEY_LEN;
/// Share ciphertext length including the tag.
pub const SHARE_CIPHERTEXT_LEN: usize = SHARE_PAYLOAD_LEN + TAG_LEN;

const LABEL_CHALLENGE: &[u8] = b"memkey v1 challenge";
const LABEL_TRANSCRIPT: &[u8] = b"memkey v1 transcript";
const LABEL_DELIVERY: &[u8] = b"memkey v1 delivery";
const INFO_WRAP: &[u8] = b"memkey v1 key-wrap";
const INFO_CONFIRM: &[u8] = b"memkey v1 confirm";

/// SHA-256 of an Ed25519 public key: what operators pin and compare.
pub fn fingerprint(public: &VerifyingKey) -> [u8; 32] {
    Sha256::digest(public.as_bytes()).into()
}

/// [`fingerprint`] as 64 lowercase hex characters.
pub fn fingerprint_hex(public: &VerifyingKey) -> String {
    hex::encode(fingerprint(public))
}

/// Parses a 64-hex-character fingerprint (case-insensitive, `:` separators tolerated).
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let cleaned: String = text.trim().chars().filter(|c| *c != ':').collect();
    decode_hex_array::<32>(&cleaned)
}

/// Constant-time comparison of two fingerprints.
pub fn fingerprints_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    bool::from(a.ct_eq(b))
}

/// Decodes exactly `N` bytes of hex.
pub fn decode_hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

/// An Ed25519 identity from a 64-hex-character seed.
pub fn signing_key_from_hex(text: &str) -> Option<SigningKey> {
    let seed = Zeroizing::new(decode_hex_array::<32>(text)?);
    Some(SigningKey::from_bytes(&seed))
}

/// An Ed25519 public key from 64 hex characters; rejects encodings that are not curve points.
pub fn verifying_key_from_hex(text: &str) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(&decode_hex_array::<32>(text)?).ok()
}

/// A fresh Ed25519 identity.
pub fn generate_identity() -> SigningKey {
    SigningKey::generate(&mut OsRng)
}

/// Why a message could not be used. The `code` strings are the protocol's error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u32),
    #[error("server fingerprint mismatch: expected {expected}, got {got}")]
    FingerprintMismatch { expected: String, got: String },
    #[error("the challenge signature does not verify against the server's identity")]
    BadServerSignature,
    #[error("the delivery signature does not verify against the admin's key")]
    BadAdminSignature,
    #[error("the ephemeral key is a low-order point (no shared secret)")]
    BadEphemeral,
    #[error("the sealed key does not authenticate (tampered or wrong transcript)")]
    DecryptionFailed,
    #[error("the decrypted payload is malformed")]
    BadPayload,
    #[error("the server's acknowledgement does not match (the key may not have been accepted)")]
    BadConfirmation,
}

// ---------------------------------------------------------------------------------------------
// Wire messages (JSON, binary fields as lowercase hex).
// ---------------------------------------------------------------------------------------------

/// `GET /challenge` response body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeMsg {
    pub version: u32,
    /// 32 random bytes, hex; single use; also identifies the challenge.
    pub challenge: String,
    /// Server Unix time (seconds) when the challenge was issued.
    pub timestamp: u64,
    /// Seconds the challenge stays valid.
    pub expires_in: u64,
    /// Server Ed25519 identity public key, hex.
    pub server_public_key: String,
    /// Server ephemeral X25519 public key for this challenge, hex.
    pub server_ephemeral: String,
    /// Ed25519 signature by the server identity, hex.
    pub signature: String,
}

/// `POST /key` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryMsg {
    pub version: u32,
    pub challenge: String,
    pub admin_public_key: String,
    pub admin_ephemeral: String,
    pub nonce: String,
    pub ciphertext: String,
    pub signature: String,
}

/// `POST /key` success body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryAck {
    pub status: String,
    pub key_id: KeyId,
    /// Whether the delivered key is now the current key.
    pub current: bool,
    /// The key id was already loaded with identical material.
    pub already_loaded: bool,
    pub key_ids: Vec<KeyId>,
    pub current_key_id: Option<KeyId>,
    /// Key confirmation (hex): proves the responder derived the shared secret.
    pub confirmation: String,
    /// Share deliveries only: distinct admins counted in this round (M when this share
    /// completed it and the key was reconstructed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares_received: Option<usize>,
    /// Share deliveries only: shares needed (M).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u8>,
}

/// Error body of every 4xx/5xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Transcript pieces.
// ---------------------------------------------------------------------------------------------

/// Bytes the server signs when issuing a challenge.
pub fn challenge_signed_bytes(
    challenge: &[u8; CHALLENGE_LEN],
    timestamp: u64,
    server_ephemeral: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(LABEL_CHALLENGE.len() + 32 + 8 + 32);
    m.extend_from_slice(LABEL_CHALLENGE);
    m.extend_from_slice(challenge);
    m.extend_from_slice(&timestamp.to_be_bytes());
    m.extend_from_slice(server_ephemeral);
    m
}

/// The transcript hash TH binding one delivery to one challenge and both identities.
pub fn transcript_hash(
    challenge: &[u8; CHALLENGE_LEN],
    timestamp: u64,
    server_ephemeral: &[u8; 32],
    admin_ephemeral: &[u8; 32],
    server_public: &[u8; 32],
    admin_public: &[u8; 32],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(LABEL_TRANSCRIPT);
    h.update(challenge);
    h.update(timestamp.to_be_bytes());
    h.update(server_ephemeral);
    h.update(admin_ephemeral);
    h.update(server_public);
    h.update(admin_public);
    h.finalize().into()
}

/// Bytes the admin signs: label ‖ TH ‖ nonce ‖ ciphertext.
pub fn delivery_signed_bytes(th: &[u8; 32], nonce: &[u8; NONCE_LEN], ciphertext: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(LABEL_DELIVERY.len() + 32 + NONCE_LEN + ciphertext.len());
    m.extend_from_slice(LABEL_DELIVERY);
    m.extend_from_slice(th);
    m.extend_from_slice(nonce);
    m.extend_from_slice(ciphertext);
    m
}

fn hkdf(th: &[u8; 32], shared: &[u8; 32], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(th), shared);
    let mut out = Zeroizing::new([0u8; 32]);
    hk.expand_multi_info(info, &mut out[..])
        .expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

/// K: the XChaCha20-Poly1305 key sealing the master key.
pub fn wrap_key(th: &[u8; 32], shared: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    hkdf(th, shared, &[INFO_WRAP])
}

/// ACK: the server's key confirmation for an accepted delivery.
pub fn confirmation(th: &[u8; 32], shared: &[u8; 32], key_id: KeyId, is_current: bool) -> [u8; 32] {
    let id = key_id.to_be_bytes();
    let flag = [u8::from(is_current)];
    *hkdf(th, shared, &[INFO_CONFIRM, &id, &flag])
}

fn encode_payload(key: &MasterKey, make_current: bool) -> Zeroizing<Vec<u8>> {
    let mut p = Zeroizing::new(Vec::with_capacity(CIPHERTEXT_LEN));
    p.extend_from_slice(&key.id().to_be_bytes());
    p.push(if make_current { FLAG_MAKE_CURRENT } else { 0 });
    p.extend_from_slice(key.expose());
    p
}

/// Payload P for a key (for test vectors and documentation).
pub fn payload_bytes(key: &MasterKey, make_current: bool) -> Zeroizing<Vec<u8>> {
    encode_payload(key, make_current)
}

fn diffie_hellman(
    secret: &StaticSecret,
    peer: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, ProtocolError> {
    let shared = secret.diffie_hellman(&XPublic::from(*peer));
    if !shared.was_contributory() {
        return Err(ProtocolError::BadEphemeral);
    }
    Ok(Zeroizing::new(*shared.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Server side.
// ---------------------------------------------------------------------------------------------

/// A challenge as the server keeps it until it is used or expires.
pub struct IssuedChallenge {
    pub challenge: [u8; CHALLENGE_LEN],
    pub timestamp: u64,
    pub ephemeral_secret: StaticSecret,
    pub ephemeral_public: [u8; 32],
}

impl fmt::Debug for IssuedChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IssuedChallenge {{ challenge: {}, timestamp: {} }}",
            hex::encode(self.challenge),
            self.timestamp
        )
    }
}

impl IssuedChallenge {
    /// A fresh challenge: random C, fresh X25519 key pair.
    pub fn new(timestamp: u64) -> Self {
        let mut challenge = [0u8; CHALLENGE_LEN];
        OsRng.fill_bytes(&mut challenge);
        Self::from_parts(challenge, timestamp, StaticSecret::random_from_rng(OsRng))
    }

    /// Deterministic construction (test vectors).
    pub fn from_parts(
        challenge: [u8; CHALLENGE_LEN],
        timestamp: u64,
        ephemeral_secret: StaticSecret,
    ) -> Self {
        let ephemeral_public = XPublic::from(&ephemeral_secret).to_bytes();
        Self {
            challenge,
            timestamp,
            ephemeral_secret,
            ephemeral_public,
        }
    }

    /// The signed challenge message sent to the admin.
    pub fn to_message(&self, identity: &SigningKey, expires_in: u64) -> ChallengeMsg {
        let sig = identity.sign(&challenge_signed_bytes(
            &self.challenge,
            self.timestamp,
            &self.ephemeral_public,
        ));
        ChallengeMsg {
            version: PROTOCOL_VERSION,
            challenge: hex::encode(self.challenge),
            timestamp: self.timestamp,
            expires_in,
            server_public_key: hex::encode(identity.verifying_key().as_bytes()),
            server_ephemeral: hex::encode(self.ephemeral_public),
            signature: hex::encode(sig.to_bytes()),
        }
    }
}

/// A syntactically valid delivery (all lengths checked), not yet authenticated.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub challenge: [u8; CHALLENGE_LEN],
    pub admin_public_key: [u8; 32],
    pub admin_ephemeral: [u8; 32],
    pub nonce: [u8; NONCE_LEN],
    /// [`CIPHERTEXT_LEN`] bytes (a whole key) or [`SHARE_CIPHERTEXT_LEN`] (one share).
    pub ciphertext: Vec<u8>,
    pub signature: [u8; 64],
}

impl Delivery {
    /// Parses a JSON body. Errors are [`ProtocolError::Malformed`] / [`ProtocolError::UnsupportedVersion`].
    pub fn from_json(body: &[u8]) -> Result<Self, ProtocolError> {
        let msg: DeliveryMsg = serde_json::from_slice(body)
            .map_err(|_| ProtocolError::Malformed("body is not a delivery JSON object"))?;
        Self::from_message(&msg)
    }

    pub fn from_message(msg: &DeliveryMsg) -> Result<Self, ProtocolError> {
        if msg.version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion(msg.version));
        }
        Ok(Self {
            challenge: decode_hex_array(&msg.challenge).ok_or(ProtocolError::Malformed(
                "challenge must be 64 hex characters",
            ))?,
            admin_public_key: decode_hex_array(&msg.admin_public_key).ok_or(
                ProtocolError::Malformed("admin_public_key must be 64 hex characters"),
            )?,
            admin_ephemeral: decode_hex_array(&msg.admin_ephemeral).ok_or(
                ProtocolError::Malformed("admin_ephemeral must be 64 hex characters"),
            )?,
            nonce: decode_hex_array(&msg.nonce)
                .ok_or(ProtocolError::Malformed("nonce must be 48 hex characters"))?,
            ciphertext: hex::decode(msg.ciphertext.trim())
                .ok()
                .filter(|c| c.len() == CIPHERTEXT_LEN || c.len() == SHARE_CIPHERTEXT_LEN)
                .ok_or(ProtocolError::Malformed(
                    "ciphertext must be 106 hex characters (a key) or 126 (a share)",
                ))?,
            signature: decode_hex_array(&msg.signature).ok_or(ProtocolError::Malformed(
                "signature must be 128 hex characters",
            ))?,
        })
    }

    pub fn to_message(&self) -> DeliveryMsg {
        DeliveryMsg {
            version: PROTOCOL_VERSION,
            challenge: hex::encode(self.challenge),
            admin_public_key: hex::encode(self.admin_public_key),
            admin_ephemeral: hex::encode(self.admin_ephemeral),
            nonce: hex::encode(self.nonce),
            ciphertext: hex::encode(&self.ciphertext),
            signature: hex::encode(self.signature),
        }
    }
}

/// A delivery the server authenticated and decrypted.
pub struct OpenedDelivery {
    pub key: MasterKey,
    pub make_current: bool,
    transcript: [u8; 32],
    shared: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for OpenedDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OpenedDelivery {{ key: {:?}, make_current: {} }}",
            self.key, self.make_current
        )
    }
}

impl OpenedDelivery {
    /// The acknowledgement to return once the key is stored.
    pub fn confirmation(&self, is_current: bool) -> [u8; 32] {
        confirmation(&self.transcript, &self.shared, self.key.id(), is_current)
    }
}

/// A share delivery the server authenticated and decrypted.
pub struct OpenedShare {
    pub share: crate::shamir::KeyShare,
    pub make_current: bool,
    transcript: [u8; 32],
    shared: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for OpenedShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpenedShare {{ share: {:?} }}", self.share)
    }
}

impl OpenedShare {
    /// The acknowledgement: ACK over the share's key id and whether that key is now current.
    pub fn confirmation(&self, is_current: bool) -> [u8; 32] {
        confirmation(
            &self.transcript,
            &self.shared,
            self.share.key_id,
            is_current,
        )
    }
}

/// What a delivery carried: a whole key or one m-of-n share.
#[derive(Debug)]
pub enum OpenedPayload {
    Key(OpenedDelivery),
    Share(OpenedShare),
}

/// Server side: authenticates a delivery from `admin` (already checked against the allow list)
/// for the challenge `issued`, then decrypts the master key. A share payload is
/// [`ProtocolError::BadPayload`] here; see [`open_any_delivery`].
pub fn open_delivery(
    delivery: &Delivery,
    issued: &IssuedChallenge,
    server_public: &VerifyingKey,
    admin: &VerifyingKey,
) -> Result<OpenedDelivery, ProtocolError> {
    match open_any_delivery(delivery, issued, server_public, admin)? {
        OpenedPayload::Key(k) => Ok(k),
        OpenedPayload::Share(_) => Err(ProtocolError::BadPayload),
    }
}

/// Server side: [`open_delivery`] for both payload kinds.
pub fn open_any_delivery(
    delivery: &Delivery,
    issued: &IssuedChallenge,
    server_public: &VerifyingKey,
    admin: &VerifyingKey,
) -> Result<OpenedPayload, ProtocolError> {
    let th = transcript_hash(
        &issued.challenge,
        issued.timestamp,
        &issued.ephemeral_public,
        &delivery.admin_ephemeral,
        server_public.as_bytes(),
        admin.as_bytes(),
    );
    let sig = Signature::from_bytes(&delivery.signature);
    admin
        .verify_strict(
            &delivery_signed_bytes(&th, &delivery.nonce, &delivery.ciphertext),
            &sig,
        )
        .map_err(|_| ProtocolError::BadAdminSignature)?;
    let shared = diffie_hellman(&issued.ephemeral_secret, &delivery.admin_ephemeral)?;
    let k = wrap_key(&th, &shared);
    let cipher = XChaCha20Poly1305::new((&*k).into());
    let mut buf = Zeroizing::new(Vec::with_capacity(SHARE_CIPHERTEXT_LEN));
    buf.extend_from_slice(&delivery.ciphertext);
    cipher
        .decrypt_in_place(XNonce::from_slice(&delivery.nonce), &th, &mut *buf)
        .map_err(|_| ProtocolError::DecryptionFailed)?;
    if buf.len() < 5 {
        return Err(ProtocolError::BadPayload);
    }
    let id = KeyId::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let flags = buf[4];
    let make_current = flags & FLAG_MAKE_CURRENT != 0;
    if buf.len() == PAYLOAD_LEN && flags & !FLAG_MAKE_CURRENT == 0 {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&buf[5..]);
        return Ok(OpenedPayload::Key(OpenedDelivery {
            key: MasterKey::new(id, *bytes),
            make_current,
            transcript: th,
            shared,
        }));
    }
    if buf.len() == SHARE_PAYLOAD_LEN
        && flags & !(FLAG_MAKE_CURRENT | FLAG_SHARE) == 0
        && flags & FLAG_SHARE != 0
    {
        let (index, threshold) = (buf[5], buf[6]);
        if index == 0 || threshold < 2 {
            return Err(ProtocolError::BadPayload);
        }
        let mut kcv = [0u8; KCV_LEN];
        kcv.copy_from_slice(&buf[7..7 + KCV_LEN]);
        let mut value = Zeroizing::new([0u8; KEY_LEN]);
        value.copy_from_slice(&buf[7 + KCV_LEN..]);
        return Ok(OpenedPayload::Share(OpenedShare {
            share: crate::shamir::KeyShare {
                key_id: id,
                index,
                // The total number of shares is not sent: the server does not need it.
                count: 0,
                threshold,
                kcv,
                value,
            },
            make_current,
            transcript: th,
            shared,
        }));
    }
    Err(ProtocolError::BadPayload)
}

/// Share payload P for one share (documentation and tests).
pub fn share_payload_bytes(
    share: &crate::shamir::KeyShare,
    make_current: bool,
) -> Zeroizing<Vec<u8>> {
    let mut p = Zeroizing::new(Vec::with_capacity(SHARE_CIPHERTEXT_LEN));
    p.extend_from_slice(&share.key_id.to_be_bytes());
    p.push(FLAG_SHARE | if make_current { FLAG_MAKE_CURRENT } else { 0 });
    p.push(share.index);
    p.push(share.threshold);
    p.extend_from_slice(&share.kcv);
    p.extend_from_slice(&share.value[..]);
    p
}

// ---------------------------------------------------------------------------------------------
// Admin side.
// ---------------------------------------------------------------------------------------------

/// A challenge whose server signature verified against the pinned fingerprint.
/// Only [`ChallengeMsg::verify`] creates one, so a key can only be sealed to an authenticated server.
#[derive(Debug, Clone)]
pub struct VerifiedChallenge {
    pub challenge: [u8; CHALLENGE_LEN],
    pub timestamp: u64,
    pub expires_in: u64,
    pub server_public: VerifyingKey,
    pub server_ephemeral: [u8; 32],
}

impl ChallengeMsg {
    /// Admin side: checks the server's identity against the pinned fingerprint (constant time)
    /// and its signature over (challenge ‖ timestamp ‖ ephemeral key). Nothing secret is used yet.
    pub fn verify(
        &self,
        pinned_fingerprint: &[u8; 32],
    ) -> Result<VerifiedChallenge, ProtocolError> {
        if self.version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion(self.version));
        }
        let spk: [u8; 32] = decode_hex_array(&self.server_public_key)
            .ok_or(ProtocolError::Malformed("server_public_key"))?;
        let got: [u8; 32] = Sha256::digest(spk).into();
        if !fingerprints_equal(&got, pinned_fingerprint) {
            return Err(ProtocolError::FingerprintMismatch {
                expected: hex::encode(pinned_fingerprint),
                got: hex::encode(got),
            });
        }
        let server_public = VerifyingKey::from_bytes(&spk)
            .map_err(|_| ProtocolError::Malformed("server_public_key"))?;
        let challenge =
            decode_hex_array(&self.challenge).ok_or(ProtocolError::Malformed("challenge"))?;
        let server_ephemeral = decode_hex_array(&self.server_ephemeral)
            .ok_or(ProtocolError::Malformed("server_ephemeral"))?;
        let sig: [u8; 64] =
            decode_hex_array(&self.signature).ok_or(ProtocolError::Malformed("signature"))?;
        server_public
            .verify_strict(
                &challenge_signed_bytes(&challenge, self.timestamp, &server_ephemeral),
                &Signature::from_bytes(&sig),
            )
            .map_err(|_| ProtocolError::BadServerSignature)?;
        Ok(VerifiedChallenge {
            challenge,
            timestamp: self.timestamp,
            expires_in: self.expires_in,
            server_public,
            server_ephemeral,
        })
    }
}

/// What the admin keeps to check the server's acknowledgement.
pub struct SealedDelivery {
    pub delivery: Delivery,
    pub key_id: KeyId,
    transcript: [u8; 32],
    shared: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for SealedDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedDelivery {{ key_id: {}, .. }}", self.key_id)
    }
}

impl SealedDelivery {
    /// The transcript hash TH of this delivery.
    pub fn transcript(&self) -> &[u8; 32] {
        &self.transcript
    }

    /// Checks the server's acknowledgement (constant time).
    pub fn check_confirmation(&self, ack: &DeliveryAck) -> Result<(), ProtocolError> {
        let got: [u8; 32] =
            decode_hex_array(&ack.confirmation).ok_or(ProtocolError::BadConfirmation)?;
        let want = confirmation(&self.transcript, &self.shared, self.key_id, ack.current);
        if ack.key_id == self.key_id && bool::from(got.ct_eq(&want)) {
            Ok(())
        } else {
            Err(ProtocolError::BadConfirmation)
        }
    }
}

/// Admin side: seals `key` to the verified server with fresh randomness.
pub fn seal_delivery(
    challenge: &VerifiedChallenge,
    admin: &SigningKey,
    key: &MasterKey,
    make_current: bool,
) -> Result<SealedDelivery, ProtocolError> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    seal_delivery_with(
        challenge,
        admin,
        key,
        make_current,
        StaticSecret::random_from_rng(OsRng),
        nonce,
    )
}

/// [`seal_delivery`] with caller-chosen ephemeral secret and nonce (test vectors only).
pub fn seal_delivery_with(
    challenge: &VerifiedChallenge,
    admin: &SigningKey,
    key: &MasterKey,
    make_current: bool,
    ephemeral: StaticSecret,
    nonce: [u8; NONCE_LEN],
) -> Result<SealedDelivery, ProtocolError> {
    let payload = encode_payload(key, make_current);
    seal_payload_with(challenge, admin, key.id(), payload, ephemeral, nonce)
}

/// Admin side: seals one m-of-n share to the verified server (same protocol, share payload).
pub fn seal_share_delivery(
    challenge: &VerifiedChallenge,
    admin: &SigningKey,
    share: &crate::shamir::KeyShare,
    make_current: bool,
) -> Result<SealedDelivery, ProtocolError> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    seal_payload_with(
        challenge,
        admin,
        share.key_id,
        share_payload_bytes(share, make_current),
        StaticSecret::random_from_rng(OsRng),
        nonce,
    )
}

fn seal_payload_with(
    challenge: &VerifiedChallenge,
    admin: &SigningKey,
    key_id: KeyId,
    payload: Zeroizing<Vec<u8>>,
    ephemeral: StaticSecret,
    nonce: [u8; NONCE_LEN],
) -> Result<SealedDelivery, ProtocolError> {
    let admin_ephemeral = XPublic::from(&ephemeral).to_bytes();
    let admin_public = admin.verifying_key().to_bytes();
    let th = transcript_hash(
        &challenge.challenge,
        challenge.timestamp,
        &challenge.server_ephemeral,
        &admin_ephemeral,
        challenge.server_public.as_bytes(),
        &admin_public,
    );
    let shared = diffie_hellman(&ephemeral, &challenge.server_ephemeral)?;
    drop(ephemeral);
    let k = wrap_key(&th, &shared);
    let cipher = XChaCha20Poly1305::new((&*k).into());
    let mut buf = payload;
    cipher
        .encrypt_in_place(XNonce::from_slice(&nonce), &th, &mut *buf)
        .map_err(|_| ProtocolError::Malformed("encryption failed"))?;
    let ciphertext = buf.to_vec();
    let signature = admin
        .sign(&delivery_signed_bytes(&th, &nonce, &ciphertext))
        .to_bytes();
    Ok(SealedDelivery {
        delivery: Delivery {
            challenge: challenge.challenge,
            admin_public_key: admin_public,
            admin_ephemeral,
            nonce,
            ciphertext,
            signature,
        },
        key_id,
        transcript: th,
        shared,
    })
}

// ---------------------------------------------------------------------------------------------
// Test vectors.
// ---------------------------------------------------------------------------------------------

/// Deterministic test vectors for `docs/key-protocol.md`: every intermediate value of one
/// delivery from fixed inputs. Returned as `(name, lowercase hex)` pairs in document order.
pub mod vectors {
    use super::*;

    fn seq(start: u8) -> [u8; 32] {
        std::array::from_fn(|i| start.wrapping_add(i as u8))
    }

    /// Renders the vectors as the text block embedded in the protocol document.
    pub fn render() -> String {
        let mut out = String::new();
        for (name, value) in generate() {
            out.push_str(&format!("{name:<24} = {value}\n"));
        }
        out
    }

    pub fn generate() -> Vec<(&'static str, String)> {
        let server = SigningKey::from_bytes(&seq(0x00));
        let admin = SigningKey::from_bytes(&seq(0x20));
        let server_eph = StaticSecret::from(seq(0x40));
        let admin_eph = StaticSecret::from(seq(0x60));
        let challenge = seq(0x80);
        let timestamp: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| 0xa0 + i as u8);
        let master = MasterKey::new(7, seq(0xc0));
        let make_current = true;

        let issued = IssuedChallenge::from_parts(challenge, timestamp, server_eph.clone());
        let cmsg = issued.to_message(&server, 30);
        let fp = fingerprint(&server.verifying_key());
        let verified = cmsg.verify(&fp).expect("vector challenge verifies");
        let sealed = seal_delivery_with(
            &verified,
            &admin,
            &master,
            make_current,
            admin_eph.clone(),
            nonce,
        )
        .expect("seal");
        let opened = open_delivery(
            &sealed.delivery,
            &issued,
            &server.verifying_key(),
            &admin.verifying_key(),
        )
        .expect("vector delivery opens");
        assert_eq!(opened.key.expose(), master.expose());
        let shared = admin_eph.diffie_hellman(&XPublic::from(issued.ephemeral_public));
        let th = *sealed.transcript();
        let k = wrap_key(&th, shared.as_bytes());
        let ack = opened.confirmation(true);

        vec![
            ("server_identity_seed", hex::encode(seq(0x00))),
            ("admin_identity_seed", hex::encode(seq(0x20))),
            ("server_ephemeral_secret", hex::encode(seq(0x40))),
            ("admin_ephemeral_secret", hex::encode(seq(0x60))),
            ("challenge", hex::encode(challenge)),
            (
                "timestamp",
                format!(
                    "{timestamp} (u64 BE {})",
                    hex::encode(timestamp.to_be_bytes())
                ),
            ),
            ("nonce", hex::encode(nonce)),
            ("master_key_id", "7".to_string()),
            ("master_key", hex::encode(master.expose())),
            ("make_current", "true".to_string()),
            ("server_public_key", cmsg.server_public_key.clone()),
            ("server_fingerprint", hex::encode(fp)),
            ("server_ephemeral", cmsg.server_ephemeral.clone()),
            ("challenge_signature", cmsg.signature.clone()),
            (
                "admin_public_key",
                hex::encode(admin.verifying_key().as_bytes()),
            ),
            (
                "admin_ephemeral",
                hex::encode(sealed.delivery.admin_ephemeral),
            ),
            ("shared_secret", hex::encode(shared.as_bytes())),
            ("transcript_hash", hex::encode(th)),
            ("wrap_key", hex::encode(*k)),
            (
                "payload",
                hex::encode(&*payload_bytes(&master, make_current)),
            ),
            ("ciphertext", hex::encode(sealed.delivery.ciphertext)),
            ("delivery_signature", hex::encode(sealed.delivery.signature)),
            ("confirmation", hex::encode(ack)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        server: SigningKey,
        admin: SigningKey,
        issued: IssuedChallenge,
        verified: VerifiedChallenge,
    }

    fn fixture() -> Fixture {
        let server = generate_identity();
        let admin = generate_identity();
        let issued = IssuedChallenge::new(1_700_000_000);
        let msg = issued.to_message(&server, 30);
        let verified = msg.verify(&fingerprint(&server.verifying_key())).unwrap();
        Fixture {
            server,
            admin,
            issued,
            verified,
        }
    }

    #[test]
    fn share_payload_layout_and_round_trip() {
        let f = fixture();
        let key = MasterKey::generate(0x0102_0304);
        let share = crate::shamir::split(&key, 2, 3).unwrap().remove(1);
        // The documented layout: id ‖ flags ‖ index ‖ threshold ‖ kcv ‖ share (47 bytes).
        let p = share_payload_bytes(&share, true);
        assert_eq!(p.len(), SHARE_PAYLOAD_LEN);
        assert_eq!(SHARE_PAYLOAD_LEN, 47);
        assert_eq!(&p[..4], &[1, 2, 3, 4]);
        assert_eq!(p[4], FLAG_SHARE | FLAG_MAKE_CURRENT);
        assert_eq!((p[5], p[6]), (2, 2));
        assert_eq!(&p[7..15], &share.kcv);
        assert_eq!(&p[15..], &share.value[..]);

        let sealed = seal_share_delivery(&f.verified, &f.admin, &share, true).unwrap();
        let msg = sealed.delivery.to_message();
        assert_eq!(msg.ciphertext.len(), 2 * SHARE_CIPHERTEXT_LEN);
        assert_eq!(msg.ciphertext.len(), 126);
        let parsed = Delivery::from_json(&serde_json::to_vec(&msg).unwrap()).unwrap();
        let (server_pk, admin_pk) = (f.server.verifying_key(), f.admin.verifying_key());
        match open_any_delivery(&parsed, &f.issued, &server_pk, &admin_pk).unwrap() {
            OpenedPayload::Share(o) => {
                assert_eq!((o.share.key_id, o.share.index, o.share.threshold), (0x0102_0304, 2, 2));
                assert_eq!(o.share.value[..], share.value[..]);
                assert!(o.make_current);
            }
            other => panic!("{other:?}"),
        }
        // A share is never taken for a whole key by the key-only entry point.
        assert_eq!(
            open_delivery(&parsed, &f.issued, &server_pk, &admin_pk).unwrap_err(),
            ProtocolError::BadPayload
        );
        // Other ciphertext lengths are malformed.
        let mut bad = msg.clone();
        bad.ciphertext.push_str("00");
        assert!(matches!(
            Delivery::from_message(&bad),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn round_trip_and_confirmation() {
        let f = fixture();
        let key = MasterKey::generate(42);
        let sealed = seal_delivery(&f.verified, &f.admin, &key, false).unwrap();
        let json = serde_json::to_vec(&sealed.delivery.to_message()).unwrap();
        let parsed = Delivery::from_json(&json).unwrap();
        let opened = open_delivery(
            &parsed,
            &f.issued,
            &f.server.verifying_key(),
            &f.admin.verifying_key(),
        )
        .unwrap();
        assert_eq!(opened.key.id(), 42);
        assert_eq!(opened.key.expose(), key.expose());
        assert!(!opened.make_current);
        let ack = DeliveryAck {
            status: "ok".into(),
            key_id: 42,
            current: true,
            already_loaded: false,
            key_ids: vec![42],
            current_key_id: Some(42),
            confirmation: hex::encode(opened.confirmation(true)),
            shares_received: None,
            threshold: None,
        };
        sealed.check_confirmation(&ack).unwrap();
        let lying = DeliveryAck {
            current: false,
            ..ack
        };
        assert_eq!(
            sealed.check_confirmation(&lying),
            Err(ProtocolError::BadConfirmation)
        );
    }

    #[test]
    fn wrong_fingerprint_is_refused_with_both_values() {
        let f = fixture();
        let msg = f.issued.to_message(&f.server, 30);
        let err = msg.verify(&[0u8; 32]).unwrap_err();
        match err {
            ProtocolError::FingerprintMismatch { expected, got } => {
                assert_eq!(expected, "00".repeat(32));
                assert_eq!(got, fingerprint_hex(&f.server.verifying_key()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn challenge_signature_covers_timestamp_and_ephemeral() {
        let f = fixture();
        let fp = fingerprint(&f.server.verifying_key());
        let mut msg = f.issued.to_message(&f.server, 30);
        msg.timestamp += 1;
        assert_eq!(
            msg.verify(&fp).unwrap_err(),
            ProtocolError::BadServerSignature
        );
        let mut msg = f.issued.to_message(&f.server, 30);
        msg.server_ephemeral =
            hex::encode(XPublic::from(&StaticSecret::random_from_rng(OsRng)).to_bytes());
        assert_eq!(
            msg.verify(&fp).unwrap_err(),
            ProtocolError::BadServerSignature
        );
        // An impostor signing with its own identity fails the pin, whatever it signs.
        let impostor = generate_identity();
        let msg = f.issued.to_message(&impostor, 30);
        assert!(matches!(
            msg.verify(&fp),
            Err(ProtocolError::FingerprintMismatch { .. })
        ));
    }

    #[test]
    fn tampering_is_detected() {
        let f = fixture();
        let key = MasterKey::generate(1);
        let sealed = seal_delivery(&f.verified, &f.admin, &key, true).unwrap();
        let spk = f.server.verifying_key();
        let apk = f.admin.verifying_key();
        // Flip one ciphertext bit: the admin signature no longer verifies.
        let mut d = sealed.delivery.clone();
        d.ciphertext[3] ^= 1;
        assert_eq!(
            open_delivery(&d, &f.issued, &spk, &apk).unwrap_err(),
            ProtocolError::BadAdminSignature
        );
        // Re-signed by the admin (a buggy admin): AEAD still refuses it.
        let th = *sealed.transcript();
        d.signature = f
            .admin
            .sign(&delivery_signed_bytes(&th, &d.nonce, &d.ciphertext))
            .to_bytes();
        assert_eq!(
            open_delivery(&d, &f.issued, &spk, &apk).unwrap_err(),
            ProtocolError::DecryptionFailed
        );
        // Another admin key: signature fails.
        let other = generate_identity();
        assert_eq!(
            open_delivery(&sealed.delivery, &f.issued, &spk, &other.verifying_key()).unwrap_err(),
            ProtocolError::BadAdminSignature
        );
        // The same delivery against a different challenge: transcript differs.
        let issued2 = IssuedChallenge::new(f.issued.timestamp);
        assert_eq!(
            open_delivery(&sealed.delivery, &issued2, &spk, &apk).unwrap_err(),
            ProtocolError::BadAdminSignature
        );
    }

    #[test]
    fn low_order_ephemeral_rejected() {
        let f = fixture();
        let key = MasterKey::generate(1);
        let mut v = f.verified.clone();
        v.server_ephemeral = [0u8; 32];
        assert_eq!(
            seal_delivery(&v, &f.admin, &key, true).unwrap_err(),
            ProtocolError::BadEphemeral
        );
    }

    #[test]
    fn malformed_deliveries() {
        assert!(matches!(
            Delivery::from_json(b"{}"),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            Delivery::from_json(b"not json"),
            Err(ProtocolError::Malformed(_))
        ));
        let f = fixture();
        let sealed = seal_delivery(&f.verified, &f.admin, &MasterKey::generate(1), true).unwrap();
        let mut m = sealed.delivery.to_message();
        m.version = 2;
        assert_eq!(
            Delivery::from_message(&m).unwrap_err(),
            ProtocolError::UnsupportedVersion(2)
        );
        let mut m = sealed.delivery.to_message();
        m.nonce.pop();
        assert!(matches!(
            Delivery::from_message(&m),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn fingerprint_parsing() {
        let fp = [0xabu8; 32];
        assert_eq!(parse_fingerprint(&hex::encode(fp)), Some(fp));
        assert_eq!(parse_fingerprint(&hex::encode_upper(fp)), Some(fp));
        let colons = fp
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_fingerprint(&colons), Some(fp));
        assert_eq!(parse_fingerprint("abcd"), None);
    }

    /// The vectors in docs/key-protocol.md are exactly what this code computes.
    /// Regenerate with `KEYD_BLESS_VECTORS=1 cargo test -p keyd vectors_match_document`.
    #[test]
    fn vectors_match_document() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/key-protocol.md");
        let doc = std::fs::read_to_string(&path).expect("docs/key-protocol.md");
        let begin = "<!-- test-vectors:begin -->\n```text\n";
        let end = "```\n<!-- test-vectors:end -->";
        let start = doc.find(begin).expect("begin marker") + begin.len();
        let stop = doc.find(end).expect("end marker");
        let rendered = vectors::render();
        if std::env::var_os("KEYD_BLESS_VECTORS").is_some() {
            let new = format!("{}{}{}", &doc[..start], rendered, &doc[stop..]);
            std::fs::write(&path, new).unwrap();
            return;
        }
        assert_eq!(
            &doc[start..stop],
            rendered,
            "test vectors in {} are stale",
            path.display()
        );
    }
}
