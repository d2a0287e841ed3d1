//! The s3-crypt-proxy object format and key hierarchy. See `docs/object-format.md`.
//!
//! * [`SegmentEncryptor`] writes one segment (a single-part object or one multipart part).
//! * [`Decryptor`] reads whole objects or planned ranges ([`plan_range`]), checking every
//!   segment header against the [`Layout`] the reader announced.
//! * [`Rewrapper`] re-binds an object to a new name or master key without touching chunks.
//! * [`meta`] seals the user metadata kept in the `x-amz-meta-s3cp` header.
//! * The size functions map stored lengths to plaintext lengths without reading objects.
// No unsafe code but one line: reading ring's AES-GCM key out of the `MaybeUninit` that lets
// `chunk::GcmKey` wipe it (chunk.rs); everything else keeps the workspace's `deny`.
#![deny(unsafe_code)]

mod chunk;
mod decrypt;
mod encrypt;
mod error;
mod header;
pub mod keys;
mod layout;
pub mod meta;
mod rewrap;
mod size;

pub use chunk::{chunk_nonce, cpu_has_aes_gcm, gcm_chunk_nonce, ChunkCipher, DEK_LEN};
pub use decrypt::Decryptor;
pub use encrypt::SegmentEncryptor;
pub use error::FormatError;
pub use header::{
    is_encrypted_prefix, magic, ObjectId, SegmentHeader, FORMAT_VERSIONS, MAGIC_PREFIX,
    WRAPPED_DEK_LEN, WRAP_NONCE_LEN,
};
pub use keys::{DerivedKeys, KeyId, KeyRing, MasterKey};
pub use layout::Layout;
pub use rewrap::Rewrapper;
pub use size::{
    chunk_count, object_cipher_len, object_plain_len, plan_range, segment_cipher_len,
    validate_chunk_size, RangePlan, DEFAULT_CHUNK_SIZE, HEADER_LEN, MAX_CHUNK_SIZE,
    MAX_PART_NUMBER, MAX_SEGMENT_PLAIN_LEN, MIN_CHUNK_SIZE, TAG_LEN,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_static<T: Send + 'static>() {}

    #[test]
    fn stream_types_are_send_and_static() {
        assert_send_static::<SegmentEncryptor>();
        assert_send_static::<Decryptor>();
        assert_send_static::<Rewrapper>();
    }
}
