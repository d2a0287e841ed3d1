//! What a reader announces to its client before it reads, and the check every segment
//! header must pass against it (reader rule 5.11 of `docs/object-format.md`).
//!
//! A proxy sends the response headers (Content-Length, Content-Range) before the body has
//! been read, so the lengths it announces come from unauthenticated inputs: the stored
//! length, the chunk size in the metadata's clear prefix, the segment count in the ETag.
//! The segment headers are authenticated. A [`Layout`] holds what was announced; a reader
//! compares each segment header with it before releasing any byte of that segment, so a
//! damaged object fails before the client holds a complete answer.

use crate::error::FormatError;
use crate::header::SegmentHeader;
use crate::size::{object_plain_len, segment_cipher_len, validate_chunk_size};

/// The object as a reader announced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Plaintext length of the whole object.
    pub plain_len: u64,
    /// Chunk size of every segment.
    pub chunk_size: u32,
    /// Number of segments (1 for a single-part object, N for an N-part upload).
    pub segments: u32,
    /// Plaintext length `P` of every segment but the last; `None` until the first segment
    /// header of a multipart object has been read (it is learned from there).
    pub part_len: Option<u64>,
}

impl Layout {
    /// The layout of a stored object of `stored_len` bytes, as computed from the chunk size
    /// and segment count (section 6.1), and checked against the sealed plaintext length when
    /// the metadata carries one (`sealed_len`, authenticated).
    ///
    /// Errors: `LayoutMismatch` for a length no object of this shape can have; `Truncated`
    /// when the stored object is shorter than the sealed length says, `TrailingData` when
    /// it is longer.
    pub fn announced(
        stored_len: u64,
        chunk_size: u32,
        segments: u32,
        sealed_len: Option<u64>,
    ) -> Result<Self, FormatError> {
        validate_chunk_size(chunk_size)?;
        let plain_len = object_plain_len(stored_len, chunk_size, segments);
        if let Some(sealed) = sealed_len {
            let expected = segment_cipher_len(sealed, chunk_size);
            if segments != 1 {
                // Only single-part objects seal their length: metadata of another version.
                return Err(FormatError::LayoutMismatch);
            }
            if stored_len < expected {
                return Err(FormatError::Truncated);
            }
            if stored_len > expected {
                return Err(FormatError::TrailingData);
            }
        }
        let plain_len = plain_len.ok_or(FormatError::LayoutMismatch)?;
        Ok(Self {
            plain_len,
            chunk_size,
            segments,
            part_len: (segments == 1).then_some(plain_len),
        })
    }

    /// Plaintext length of segment `ordinal` (0-based), once the part length is known.
    pub fn segment_len(&self, ordinal: u32) -> Option<u64> {
        if ordinal >= self.segments {
            return None;
        }
        let p = self.part_len?;
        if ordinal + 1 == self.segments {
            Some(self.plain_len - u64::from(self.segments - 1) * p)
        } else {
            Some(p)
        }
    }

    /// Stored offset of segment `ordinal`'s header, once the part length is known.
    pub fn segment_offset(&self, ordinal: u32) -> Option<u64> {
        let p = self.part_len?;
        Some(u64::from(ordinal) * segment_cipher_len(p, self.chunk_size))
    }

    /// Checks the header of segment `ordinal` against the announced layout; for the first
    /// segment of a multipart object whose part length is not yet known, learns it.
    ///
    /// Errors: `LayoutMismatch` (other chunk size, or a part length that cannot produce the
    /// announced total), `Truncated` (the header holds more plaintext than announced: the
    /// stored object was cut), `TrailingData` (it holds less, or the segment is one too many),
    /// `SegmentOrder` (segment `ordinal` of a multipart object is not part `ordinal + 1`: the
    /// object was assembled from its own parts in another order or number, section 6.2).
    pub fn check(&mut self, ordinal: u32, hdr: &SegmentHeader) -> Result<(), FormatError> {
        if hdr.chunk_size != self.chunk_size {
            return Err(FormatError::LayoutMismatch);
        }
        if ordinal >= self.segments {
            return Err(FormatError::TrailingData);
        }
        // A single segment is a PutObject (part 0) or a one-part upload (part 1).
        let part_fits = match self.segments {
            1 => hdr.part_number <= 1,
            _ => hdr.part_number == ordinal + 1,
        };
        if !part_fits {
            return Err(FormatError::SegmentOrder { expected: ordinal + 1, found: hdr.part_number });
        }
        if self.part_len.is_none() {
            if ordinal != 0 {
                return Err(FormatError::LayoutMismatch);
            }
            self.learn_part_len(hdr.plain_len)?;
        }
        let expected = self.segment_len(ordinal).ok_or(FormatError::LayoutMismatch)?;
        match hdr.plain_len.cmp(&expected) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Greater => Err(FormatError::Truncated),
            std::cmp::Ordering::Less => Err(FormatError::TrailingData),
        }
    }

    /// `P` for a multipart object: a non-zero multiple of the chunk size with
    /// `(N − 1)·P < total ≤ N·P` (section 6.2).
    fn learn_part_len(&mut self, p: u64) -> Result<(), FormatError> {
        let n = u64::from(self.segments);
        let c = u64::from(self.chunk_size);
        if p == 0 || !p.is_multiple_of(c) || n.checked_mul(p).is_none_or(|all| all < self.plain_len) {
            return Err(FormatError::LayoutMismatch);
        }
        if (n - 1) * p >= self.plain_len {
            // The parts before the last hold more than the announced total: bytes were cut.
            return Err(FormatError::Truncated);
        }
        self.part_len = Some(p);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::SegmentHeader;

    fn header(part_number: u32, plain_len: u64, chunk_size: u32) -> SegmentHeader {
        SegmentHeader {
            cipher: crate::ChunkCipher::XChaCha20Poly1305,
            chunk_size,
            key_id: 7,
            part_number,
            plain_len,
            kcv: [0; 8],
            wrap_nonce: [0; 24],
            wrapped_dek: [0; 48],
        }
    }

    #[test]
    fn single_part_header_must_hold_the_announced_length() {
        let c = 4096;
        let stored = segment_cipher_len(10_000, c);
        let mut l = Layout::announced(stored, c, 1, None).unwrap();
        assert_eq!(l.plain_len, 10_000);
        assert_eq!(l.check(0, &header(0, 10_000, c)), Ok(()));
        // The stored object was cut at a chunk boundary: the header says more.
        let cut = segment_cipher_len(8192, c);
        let mut l = Layout::announced(cut, c, 1, None).unwrap();
        assert_eq!(l.check(0, &header(0, 10_000, c)), Err(FormatError::Truncated));
        // Another chunk size in the metadata than in the body.
        let mut l = Layout::announced(stored, 8192, 1, None).unwrap();
        assert_eq!(l.check(0, &header(0, 10_000, c)), Err(FormatError::LayoutMismatch));
        // One segment too many.
        let mut l = Layout::announced(stored, c, 1, None).unwrap();
        assert_eq!(l.check(1, &header(0, 10_000, c)), Err(FormatError::TrailingData));
    }

    #[test]
    fn sealed_length_is_checked_before_reading() {
        let c = 4096;
        let stored = segment_cipher_len(10_000, c);
        assert_eq!(Layout::announced(stored, c, 1, Some(10_000)).unwrap().plain_len, 10_000);
        let cut = segment_cipher_len(8192, c);
        assert_eq!(Layout::announced(cut, c, 1, Some(10_000)), Err(FormatError::Truncated));
        assert_eq!(Layout::announced(124, c, 1, Some(10_000)), Err(FormatError::Truncated));
        assert_eq!(Layout::announced(stored + 20, c, 1, Some(10_000)), Err(FormatError::TrailingData));
        // An impossible stored length with no sealed length.
        assert_eq!(Layout::announced(120, c, 1, None), Err(FormatError::LayoutMismatch));
    }

    #[test]
    fn multipart_learns_the_part_length_and_checks_the_last_segment() {
        let c = 4096;
        let p = 8192;
        let stored = 2 * segment_cipher_len(p, c) + segment_cipher_len(100, c);
        let mut l = Layout::announced(stored, c, 3, None).unwrap();
        assert_eq!(l.plain_len, 2 * p + 100);
        l.check(0, &header(1, p, c)).unwrap();
        assert_eq!(l.segment_offset(2), Some(2 * segment_cipher_len(p, c)));
        l.check(1, &header(2, p, c)).unwrap();
        l.check(2, &header(3, 100, c)).unwrap();
        // The last segment cut at a chunk boundary: its header holds more.
        let mut l = Layout::announced(stored, c, 3, None).unwrap();
        l.check(0, &header(1, p, c)).unwrap();
        assert_eq!(l.check(2, &header(3, 4196, c)), Err(FormatError::Truncated));
        // A part length that cannot produce the announced total.
        let mut l = Layout::announced(stored, c, 3, None).unwrap();
        assert_eq!(l.check(0, &header(1, 4 * p, c)), Err(FormatError::Truncated));
        let mut l = Layout::announced(stored, c, 3, None).unwrap();
        assert_eq!(l.check(0, &header(1, 4096, c)), Err(FormatError::LayoutMismatch));
    }

    #[test]
    fn every_checked_segment_is_the_part_its_place_says() {
        let c = 4096;
        let p = 8192;
        let stored = 2 * segment_cipher_len(p, c) + segment_cipher_len(100, c);
        let order = |expected, found| Err(FormatError::SegmentOrder { expected, found });
        // The object's own parts in another order or number (UploadPartCopy of its own
        // ranges, or a backend serving them so): e.g. parts 1, 2, 1 under an honest `-3`.
        let mut l = Layout::announced(stored, c, 3, None).unwrap();
        l.check(0, &header(1, p, c)).unwrap();
        assert_eq!(l.check(2, &header(1, p, c)), order(3, 1));
        assert_eq!(l.check(1, &header(3, p, c)), order(2, 3));
        let mut l = Layout::announced(stored, c, 3, None).unwrap();
        assert_eq!(l.check(0, &header(2, p, c)), order(1, 2));
        assert_eq!(l.check(0, &header(0, p, c)), order(1, 0));
        // A single segment is part 0 (PutObject) or 1 (a one-part upload), nothing else.
        let one = segment_cipher_len(p, c);
        for part in [0, 1] {
            Layout::announced(one, c, 1, None).unwrap().check(0, &header(part, p, c)).unwrap();
        }
        assert_eq!(Layout::announced(one, c, 1, None).unwrap().check(0, &header(2, p, c)), order(1, 2));
    }
}
