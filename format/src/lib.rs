//! The s3-crypt-proxy object format and key hierarchy. See `docs/object-format.md`.
#![forbid(unsafe_code)]

pub mod keys;

pub use keys::{DerivedKeys, KeyId, KeyRing, MasterKey};
