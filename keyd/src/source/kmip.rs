//! KMIP (OASIS Key Management Interoperability Protocol) source: not implemented yet.
//!
//! The plan (docs/key-protocol.md, "Sources"): KMIP 1.x over mutually authenticated TLS,
//! `Decrypt` (AES-GCM, the sealed file's binding as authenticated data) under a symmetric
//! key identified by its unique identifier (`params.kmip_uid`), against PyKMIP's server in
//! the tests. Configuring `key_source.kind: kmip` is refused at start-up with this message.

use super::{Reason, UnsealError};

pub fn not_implemented() -> UnsealError {
    UnsealError::new(
        Reason::Config,
        "key_source.kind kmip is not implemented in this build; use pkcs11, aws-kms or delivery",
    )
}
