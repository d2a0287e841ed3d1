//! Where the master key comes from.
//!
//! * [`delivery`]: an administrator sends it with `memkey-admin key send` (the default).
//! * [`pkcs11`]: an HSM decrypts a sealed key file with a key that never leaves it.
//! * [`aws_kms`]: AWS KMS (or a compatible endpoint) decrypts a sealed key file.
//! * [`kmip`]: a KMIP server hands out a key-encryption key (`Get`) that opens a sealed key file.
//!
//! Every non-delivery source implements [`KeySource`]; [`runner`] calls it at start-up and
//! on SIGHUP, with back-off while the HSM or KMS is unreachable, and puts the keys in the
//! same vault deliveries go to. Delivery stays possible alongside any source.

pub mod aws_kms;
pub mod config;
pub mod delivery;
pub mod kmip;
pub mod pkcs11;
pub mod runner;
pub mod sealed;

use std::fmt;

use s3cp_format::keys::MasterKey;
use zeroize::Zeroizing;

pub use config::{KeySourceConfig, SourceKind};
pub use sealed::SealedKeyFile;

/// Why an unseal failed, as counted in `/status` and the proxy's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The HSM, token or KMS cannot be reached (retried with back-off).
    Unreachable,
    /// Wrong PIN, refused credentials, access denied (not retried: HSMs lock PINs).
    Auth,
    /// The wrapping key is disabled, revoked, deleted or not found (retried: it may be re-enabled).
    KeyUnavailable,
    /// The wrapped key does not authenticate: the file was altered or belongs to another key.
    Tampered,
    /// The unsealed key does not match the file's key check value.
    KeyCheckMismatch,
    /// The sealed key file is missing, unreadable or malformed.
    BadFile,
    /// Another key is already loaded under this key id.
    Conflict,
    /// The source is misconfigured (e.g. the PKCS#11 module cannot be loaded).
    Config,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Unreachable,
        Reason::Auth,
        Reason::KeyUnavailable,
        Reason::Tampered,
        Reason::KeyCheckMismatch,
        Reason::BadFile,
        Reason::Conflict,
        Reason::Config,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unreachable => "unreachable",
            Reason::Auth => "auth",
            Reason::KeyUnavailable => "key_unavailable",
            Reason::Tampered => "tampered",
            Reason::KeyCheckMismatch => "key_check_mismatch",
            Reason::BadFile => "bad_file",
            Reason::Conflict => "conflict",
            Reason::Config => "config",
        }
    }

    /// Whether trying again later can succeed without an operator changing something.
    /// A wrong PIN is never retried: real HSMs lock the PIN after a few failures.
    pub fn retryable(self) -> bool {
        matches!(self, Reason::Unreachable | Reason::KeyUnavailable)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed seal or unseal: a reason and one line for the log (never key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsealError {
    pub reason: Reason,
    pub message: String,
}

impl UnsealError {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        let message: String = message.into();
        // One line whatever the underlying library printed.
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        Self { reason, message }
    }
}

impl fmt::Display for UnsealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.reason)
    }
}

impl std::error::Error for UnsealError {}

/// An HSM or KMS that can wrap a master key into a sealed key file and unwrap it again.
/// Calls block (network, HSM); the runner calls them on a blocking thread.
pub trait KeySource: Send + Sync {
    fn kind(&self) -> SourceKind;

    /// The plaintext key bytes of `file` (checked against the file's KCV by [`unseal`]).
    fn unwrap_key(&self, file: &SealedKeyFile) -> Result<Zeroizing<Vec<u8>>, UnsealError>;

    /// Fills `file.params` and `file.wrapped` for `key` (the params naming the wrapping
    /// key, e.g. `key_label` or `kms_key_id`, are already set by the caller).
    fn wrap_key(&self, file: &mut SealedKeyFile, key: &MasterKey) -> Result<(), UnsealError>;
}

/// Unseals one file: the source must match the file's, and the KCV must match the key.
pub fn unseal(source: &dyn KeySource, file: &SealedKeyFile) -> Result<MasterKey, UnsealError> {
    if file.source != source.kind().as_str() {
        return Err(UnsealError::new(
            Reason::BadFile,
            format!("the sealed key file for key id {} was sealed with source {:?}, but key_source.kind is {}", file.key_id, file.source, source.kind()),
        ));
    }
    let plain = source.unwrap_key(file)?;
    file.finish(plain)
}

/// Seals `key` with `source`; `params` name the wrapping key.
pub fn seal(
    source: &dyn KeySource,
    key: &MasterKey,
    params: impl IntoIterator<Item = (String, String)>,
) -> Result<SealedKeyFile, UnsealError> {
    let mut file = SealedKeyFile::template(key, source.kind().as_str());
    file.params.extend(params);
    source.wrap_key(&mut file, key)?;
    Ok(file)
}

/// The configured source, or `None` for delivery.
pub fn build(cfg: &KeySourceConfig) -> Result<Option<Box<dyn KeySource>>, UnsealError> {
    Ok(match cfg.kind {
        SourceKind::Delivery => None,
        SourceKind::Pkcs11 => Some(Box::new(pkcs11::Pkcs11Source::new(cfg.pkcs11.clone().ok_or_else(missing("pkcs11"))?))),
        SourceKind::AwsKms => Some(Box::new(aws_kms::AwsKmsSource::new(cfg.aws_kms.clone().ok_or_else(missing("aws_kms"))?)?)),
        SourceKind::Kmip => Some(Box::new(kmip::KmipSource::new(cfg.kmip.clone().ok_or_else(missing("kmip"))?)?)),
    })
}

fn missing(section: &'static str) -> impl Fn() -> UnsealError {
    move || UnsealError::new(Reason::Config, format!("key_source.{section} is not configured"))
}
