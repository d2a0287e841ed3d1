//! PKCS#11 source: an HSM (or SoftHSM, YubiHSM 2, a cloud HSM, TPM 2.0 through tpm2-pkcs11)
//! decrypts the sealed key with an AES key that is non-extractable and never leaves it.
//!
//! Mechanism: CKM_AES_GCM, 96-bit IV generated at seal time (stored in `params.iv`), 128-bit
//! tag, the sealed file's binding (key id, KCV, source) as additional authenticated data, so
//! an edited file fails with CKR_ENCRYPTED_DATA_INVALID. Through the `cryptoki` crate.

use std::path::Path;

use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use rand::RngCore;
use s3cp_format::keys::MasterKey;
use zeroize::Zeroizing;

use super::config::{Pin, Pkcs11Config};
use super::{KeySource, Reason, SealedKeyFile, SourceKind, UnsealError};

const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;
pub const MECHANISM: &str = "CKM_AES_GCM";

pub struct Pkcs11Source {
    cfg: Pkcs11Config,
}

impl Pkcs11Source {
    pub fn new(cfg: Pkcs11Config) -> Self {
        Self { cfg }
    }

    fn pin(&self) -> Result<Zeroizing<String>, UnsealError> {
        match &self.cfg.pin {
            Pin::Value(v) => Ok(v.clone()),
            Pin::File(p) => {
                let text = Zeroizing::new(std::fs::read_to_string(p).map_err(|e| {
                    UnsealError::new(Reason::Config, format!("cannot read the HSM PIN file {}: {e}", p.display()))
                })?);
                Ok(Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned()))
            }
        }
    }

    /// A logged-in user session on the configured token.
    fn session(&self, rw: bool) -> Result<(Pkcs11, Session), UnsealError> {
        let pin = self.pin()?;
        let ctx = open(&self.cfg.module)?;
        let slot = find_token(&ctx, &self.cfg.token_label)?;
        let session = if rw { ctx.open_rw_session(slot) } else { ctx.open_ro_session(slot) }
            .map_err(|e| classify(e, "opening a session"))?;
        let auth = AuthPin::new(pin.to_string());
        match session.login(UserType::User, Some(&auth)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(classify(e, &format!("logging in to token {:?}", self.cfg.token_label))),
        }
        Ok((ctx, session))
    }

    fn wrapping_key(&self, session: &Session, label: &str) -> Result<ObjectHandle, UnsealError> {
        let found = session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(label.as_bytes().to_vec())])
            .map_err(|e| classify(e, "searching the wrapping key"))?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(UnsealError::new(
                Reason::KeyUnavailable,
                format!("token {:?} has no secret key labelled {label:?}", self.cfg.token_label),
            )),
            _ => Err(UnsealError::new(
                Reason::KeyUnavailable,
                format!("token {:?} has {} secret keys labelled {label:?}; labels must be unique", self.cfg.token_label, found.len()),
            )),
        }
    }
}

fn open(module: &Path) -> Result<Pkcs11, UnsealError> {
    let ctx = Pkcs11::new(module).map_err(|e| {
        UnsealError::new(Reason::Config, format!("cannot load PKCS#11 module {}: {e}", module.display()))
    })?;
    match ctx.initialize(CInitializeArgs::OsThreads) {
        Ok(()) | Err(CkError::AlreadyInitialized) => Ok(ctx),
        Err(e) => Err(classify(e, "initialising the PKCS#11 module")),
    }
}

fn find_token(ctx: &Pkcs11, label: &str) -> Result<cryptoki::slot::Slot, UnsealError> {
    let slots = ctx.get_slots_with_token().map_err(|e| classify(e, "listing slots"))?;
    for slot in slots {
        if let Ok(info) = ctx.get_token_info(slot) {
            if info.label().trim_end() == label {
                return Ok(slot);
            }
        }
    }
    Err(UnsealError::new(Reason::Unreachable, format!("no PKCS#11 token labelled {label:?} is present")))
}

/// Maps a PKCS#11 error to a reason and a short line (the `RvError` name, not its essay).
fn classify(e: CkError, doing: &str) -> UnsealError {
    let (reason, what) = match &e {
        CkError::Pkcs11(rv, _) => {
            let reason = match rv {
                RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange => Reason::Auth,
                RvError::PinLocked | RvError::PinExpired | RvError::UserPinNotInitialized => Reason::Auth,
                RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange => Reason::Tampered,
                RvError::KeyHandleInvalid | RvError::KeyFunctionNotPermitted | RvError::KeyTypeInconsistent => {
                    Reason::KeyUnavailable
                }
                RvError::MechanismInvalid | RvError::MechanismParamInvalid => Reason::Config,
                _ => Reason::Unreachable,
            };
            let hint = match rv {
                RvError::PinIncorrect => " (wrong PIN; not retried so the token does not lock it: fix the PIN and send SIGHUP)",
                RvError::PinLocked => " (the user PIN is locked; the security officer must reset it)",
                _ => "",
            };
            (reason, format!("{rv:?}{hint}"))
        }
        other => (Reason::Unreachable, other.to_string()),
    };
    UnsealError::new(reason, format!("PKCS#11 error {doing}: {what}"))
}

impl KeySource for Pkcs11Source {
    fn kind(&self) -> SourceKind {
        SourceKind::Pkcs11
    }

    fn unwrap_key(&self, file: &SealedKeyFile) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
        let label = file.param("key_label")?;
        let mechanism = file.param("mechanism")?;
        if mechanism != MECHANISM {
            return Err(UnsealError::new(Reason::BadFile, format!("params.mechanism {mechanism:?} is not supported (use {MECHANISM})")));
        }
        let mut iv = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(file.param("iv")?)
                .ok()
                .filter(|v| v.len() == IV_LEN)
                .ok_or_else(|| UnsealError::new(Reason::BadFile, "params.iv is not 12 bytes of base64"))?
        };
        let wrapped = file.wrapped_bytes().unwrap_or_default();
        let aad = file.binding();
        let (_ctx, session) = self.session(false)?;
        let key = self.wrapping_key(&session, label)?;
        let params = GcmParams::new(&mut iv, &aad, TAG_BITS.into()).map_err(|e| classify(e, "building GCM parameters"))?;
        let plain = session.decrypt(&Mechanism::AesGcm(params), key, &wrapped).map(Zeroizing::new).map_err(|e| {
            // The session is open and the key found: a failing AES-GCM decryption is a tag that
            // does not verify. HSMs differ in how they say so (SoftHSM: CKR_GENERAL_ERROR).
            let auth_failed =
                matches!(e, CkError::Pkcs11(RvError::GeneralError | RvError::FunctionFailed, _));
            let mut e = classify(e, &format!("decrypting the sealed key id {} with {label:?}", file.key_id));
            if auth_failed {
                e.reason = Reason::Tampered;
            }
            if e.reason == Reason::Tampered {
                e.message.push_str(": the sealed key file was altered, or it was sealed with another HSM key");
            }
            e
        })?;
        Ok(plain)
    }

    fn wrap_key(&self, file: &mut SealedKeyFile, key: &MasterKey) -> Result<(), UnsealError> {
        let label = file.param("key_label")?.to_owned();
        let mut iv = [0u8; IV_LEN];
        rand::rngs::OsRng.fill_bytes(&mut iv);
        {
            use base64::Engine;
            file.params.insert("iv".into(), base64::engine::general_purpose::STANDARD.encode(iv));
        }
        file.params.insert("mechanism".into(), MECHANISM.into());
        file.params.insert("token_label".into(), self.cfg.token_label.clone());
        let aad = file.binding();
        let (_ctx, session) = self.session(false)?;
        let handle = self.wrapping_key(&session, &label)?;
        let params = GcmParams::new(&mut iv, &aad, TAG_BITS.into()).map_err(|e| classify(e, "building GCM parameters"))?;
        let wrapped = session
            .encrypt(&Mechanism::AesGcm(params), handle, key.expose())
            .map_err(|e| classify(e, &format!("encrypting with {label:?}")))?;
        file.set_wrapped(&wrapped);
        Ok(())
    }
}

/// Creates a non-extractable, sensitive AES-256 key labelled `label` on the token, allowed
/// to encrypt and decrypt only (`memkey-admin hsm init-key`; real HSMs usually have their
/// own tools for this). Refuses when the label exists.
pub fn generate_wrapping_key(cfg: &Pkcs11Config, label: &str) -> Result<(), UnsealError> {
    let src = Pkcs11Source::new(cfg.clone());
    let (_ctx, session) = src.session(true)?;
    if src.wrapping_key(&session, label).is_ok() {
        return Err(UnsealError::new(Reason::Config, format!("token {:?} already has a key labelled {label:?}", cfg.token_label)));
    }
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
            ],
        )
        .map_err(|e| classify(e, "generating the wrapping key"))?;
    Ok(())
}
