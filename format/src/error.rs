//! The one error type of the format crate.

use crate::keys::KeyId;

/// Everything that can go wrong writing or reading the object format.
///
/// Reading errors tell apart the causes an operator must handle differently: the object is
/// not in this format at all, the proxy lacks the key, the key is the wrong one, or the
/// stored bytes were modified, cut short or extended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The data does not start with the format's magic: it was not written by the proxy.
    #[error("the object is not in the s3-crypt-proxy format (no magic)")]
    NotEncrypted,
    /// The magic is there but with a format version this code does not read.
    #[error("unsupported object format version {0}")]
    UnsupportedVersion(u8),
    /// A chunk size that is not a power of two in 4096..=16 MiB.
    #[error("invalid chunk size {0} (must be a power of two from 4096 to 16777216)")]
    InvalidChunkSize(u32),
    /// A part number outside 0..=10000 given to the encryptor.
    #[error("invalid part number {0} (must be 0 for a single-part object or 1..=10000)")]
    InvalidPartNumber(u32),
    /// The object names a master key that is not loaded.
    #[error("the object was written with master key id {0}, which is not loaded")]
    UnknownKeyId(KeyId),
    /// The master key with this id is loaded, but it is not the key the object was written
    /// with (the key check values differ). Not a sign of corruption.
    #[error("the loaded master key with id {0} is not the key this object was written with (key check value mismatch)")]
    WrongKey(KeyId),
    /// A segment header failed authentication or holds impossible values: the header was
    /// modified, or the object was moved or copied to another bucket/key without re-wrapping.
    #[error(
        "segment header failed authentication (modified, or object moved/copied to another name)"
    )]
    HeaderTampered,
    /// A chunk failed authentication (modified, reordered, duplicated or from another object).
    /// `segment` is the 0-based ordinal of the segment in the object, `chunk` the 0-based
    /// index of the chunk in its segment.
    #[error("chunk {chunk} of segment {segment} failed authentication")]
    ChunkTampered { segment: u32, chunk: u64 },
    /// The data ended early: inside a header or chunk, or before the final chunk of a segment,
    /// or with fewer segments than expected.
    #[error("the object is truncated")]
    Truncated,
    /// Bytes follow the end of the object (after a single-part segment, after the expected
    /// number of segments, or after the requested range).
    #[error("unexpected data after the end of the object")]
    TrailingData,
    /// Segments of a multipart object are not numbered 1, 2, 3, … in order.
    #[error("segment order violated: expected part number {expected}, found {found}")]
    SegmentOrder { expected: u32, found: u32 },
    /// A range read whose segment header does not fit the object layout the range was planned
    /// with (wrong chunk size, part size or offset).
    #[error("the segment header does not match the planned object layout")]
    LayoutMismatch,
    /// The encryptor received more plaintext than the announced length.
    #[error("more plaintext than the announced length")]
    InputTooLong,
    /// The encryptor received less plaintext than the announced length.
    #[error("less plaintext than the announced length")]
    InputTooShort,
    /// The metadata payload (in bytes) is larger than [`crate::meta::MAX_PAYLOAD`].
    #[error("metadata payload of {0} bytes exceeds the limit of 1400 bytes")]
    MetadataTooLarge(usize),
    /// The metadata header value is not valid base64 or too short to be sealed metadata.
    #[error("the sealed metadata header is malformed")]
    MetadataMalformed,
    /// The metadata header value failed authentication (modified, wrong key, or the object
    /// was moved or copied to another name without re-sealing).
    #[error("the sealed metadata failed authentication (modified, wrong key, or object moved)")]
    MetadataTampered,
}

impl FormatError {
    /// A short, stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FormatError::NotEncrypted => "not_encrypted",
            FormatError::UnsupportedVersion(_) => "unsupported_version",
            FormatError::InvalidChunkSize(_) => "invalid_chunk_size",
            FormatError::InvalidPartNumber(_) => "invalid_part_number",
            FormatError::UnknownKeyId(_) => "unknown_key",
            FormatError::WrongKey(_) => "wrong_key",
            FormatError::HeaderTampered
            | FormatError::ChunkTampered { .. }
            | FormatError::MetadataTampered => "tampered",
            FormatError::Truncated => "truncated",
            FormatError::TrailingData => "trailing_data",
            FormatError::SegmentOrder { .. } => "segment_order",
            FormatError::LayoutMismatch => "layout_mismatch",
            FormatError::InputTooLong => "input_too_long",
            FormatError::InputTooShort => "input_too_short",
            FormatError::MetadataTooLarge(_) => "metadata_too_large",
            FormatError::MetadataMalformed => "metadata_malformed",
        }
    }
}
