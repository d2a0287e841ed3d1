//! Size arithmetic and range mapping: pure functions of lengths, no keys, no I/O.
//!
//! Listings and HEAD report plaintext sizes from the stored (ciphertext) size, the chunk size
//! kept in the clear in the metadata header, and the segment count from the backend's ETag.

use crate::error::FormatError;
use crate::layout::Layout;

/// Length of a segment header.
pub const HEADER_LEN: usize = 108;
/// Length of the Poly1305 tag after every chunk.
pub const TAG_LEN: usize = 16;
/// Chunk size used unless configured otherwise.
pub const DEFAULT_CHUNK_SIZE: u32 = 65536;
/// Smallest allowed chunk size.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest allowed chunk size.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Largest part number (S3 allows 10000 parts).
pub const MAX_PART_NUMBER: u32 = 10_000;
/// Largest plaintext length of one segment (256 TiB, far above S3's 5 GiB part limit; keeps
/// every length computation inside u64).
pub const MAX_SEGMENT_PLAIN_LEN: u64 = 1 << 48;

const H: u64 = HEADER_LEN as u64;
const T: u64 = TAG_LEN as u64;

/// Checks that `c` is a power of two in `4096..=16 MiB`.
pub fn validate_chunk_size(c: u32) -> Result<(), FormatError> {
    if c.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&c) {
        Ok(())
    } else {
        Err(FormatError::InvalidChunkSize(c))
    }
}

/// Number of chunks of a segment of `plain_len` bytes: `max(1, ceil(plain_len / chunk_size))`.
pub fn chunk_count(plain_len: u64, chunk_size: u32) -> u64 {
    plain_len.div_ceil(u64::from(chunk_size.max(1))).max(1)
}

/// Stored length of one segment: `HEADER_LEN + plain_len + chunks * TAG_LEN`.
///
/// `chunk_size` should be valid (see [`validate_chunk_size`]); the result saturates instead
/// of overflowing for absurd inputs.
pub fn segment_cipher_len(plain_len: u64, chunk_size: u32) -> u64 {
    H.saturating_add(plain_len)
        .saturating_add(chunk_count(plain_len, chunk_size).saturating_mul(T))
}

/// Plaintext length of a stored object of `cipher_len` bytes made of `segments` segments
/// (1 for a single-part object, N for an N-part multipart upload), all written with
/// `chunk_size`.
///
/// Exact when every segment but the last holds a non-zero multiple of `chunk_size` plaintext
/// bytes (the multipart layout rule). Returns `None` when no object of this layout can have
/// this length (or for an invalid chunk size or zero segments).
pub fn object_plain_len(cipher_len: u64, chunk_size: u32, segments: u32) -> Option<u64> {
    validate_chunk_size(chunk_size).ok()?;
    if segments == 0 || segments > MAX_PART_NUMBER {
        return None;
    }
    let n = u64::from(segments);
    let body = cipher_len.checked_sub(n * H)?;
    let ct = u64::from(chunk_size) + T;
    let chunks = body.div_ceil(ct);
    let rest = body % ct;
    // A short last chunk holds at least its tag.
    if rest != 0 && rest < T {
        return None;
    }
    // Every segment has at least one chunk.
    if chunks < n {
        return None;
    }
    // An empty chunk exists only as the sole chunk of an empty segment; in a single segment
    // it cannot follow full chunks.
    if rest == T && segments == 1 && body != T {
        return None;
    }
    Some(body - chunks * T)
}

/// Stored length of an object of `plain_len` plaintext bytes: one segment when
/// `part_plain_size` is `None`, else parts of `P = part_plain_size` bytes (the last one
/// shorter or equal). `Some(0)` is treated like `None`.
pub fn object_cipher_len(plain_len: u64, chunk_size: u32, part_plain_size: Option<u64>) -> u64 {
    match part_plain_size {
        Some(p) if p > 0 && plain_len > p => {
            let parts = plain_len.div_ceil(p);
            let full = parts - 1;
            full.saturating_mul(segment_cipher_len(p, chunk_size))
                .saturating_add(segment_cipher_len(plain_len - full * p, chunk_size))
        }
        _ => segment_cipher_len(plain_len, chunk_size),
    }
}

/// Which stored bytes to fetch for a plaintext byte range, and which decrypted bytes to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangePlan {
    /// 0-based ordinal of the segment holding the first requested byte.
    pub segment: u32,
    /// Stored offset of that segment's header.
    pub header_offset: u64,
    /// First stored byte to fetch: the start of the chunk holding the first requested byte.
    pub cipher_start: u64,
    /// Last stored byte to fetch (inclusive): the end of the tag of the chunk holding the
    /// last requested byte.
    pub cipher_end: u64,
    /// Decrypted bytes to drop at the start (relative to the first chunk fetched).
    pub skip: u64,
    /// Decrypted bytes to keep after `skip`.
    pub len: u64,
    /// The object as the plan assumes it; the range reader checks every segment header it
    /// reads against it.
    pub layout: Layout,
}

/// Maps the plaintext range `[first, last]` (inclusive) of an object of `object_plain_len`
/// bytes to stored offsets.
///
/// `part_plain_size` is `None` for single-part objects and `Some(P)` for multipart objects,
/// `P` being the `plain_len` of segment 1 (read from its header). `last` is clamped to the
/// end of the object. Returns `None` if `first > last`, `first >= object_plain_len`, the
/// chunk size is invalid, or a multipart object of more than one segment has a part size
/// that is zero or not a multiple of the chunk size (its layout cannot be mapped).
pub fn plan_range(
    first: u64,
    last: u64,
    object_plain_len: u64,
    chunk_size: u32,
    part_plain_size: Option<u64>,
) -> Option<RangePlan> {
    validate_chunk_size(chunk_size).ok()?;
    if first > last || first >= object_plain_len {
        return None;
    }
    let last = last.min(object_plain_len - 1);
    let c = u64::from(chunk_size);
    // Segment plaintext size, or `None` when the object is a single segment.
    let part = match part_plain_size {
        Some(p) if object_plain_len > p => {
            if p == 0 || p % c != 0 {
                return None;
            }
            Some(p)
        }
        _ => None,
    };
    // Position of plaintext byte `x`: (segment ordinal, segment's plain start, segment's plain len).
    let locate = |x: u64| -> (u64, u64, u64) {
        match part {
            None => (0, 0, object_plain_len),
            Some(p) => {
                let s = x / p;
                let start = s * p;
                (s, start, p.min(object_plain_len - start))
            }
        }
    };
    let full_segment = part.map(|p| segment_cipher_len(p, chunk_size)).unwrap_or(0);
    let chunk_pos = |x: u64| -> (u64, u64, u64, u64, u64) {
        let (s, seg_start, seg_len) = locate(x);
        let header_offset = s * full_segment;
        let in_seg = x - seg_start;
        let chunk = in_seg / c;
        let chunk_cipher_start = header_offset + H + chunk * (c + T);
        let chunk_plain_len = c.min(seg_len - chunk * c);
        (
            s,
            header_offset,
            chunk_cipher_start,
            chunk_plain_len,
            in_seg - chunk * c,
        )
    };
    let layout = Layout {
        plain_len: object_plain_len,
        chunk_size,
        segments: match part {
            Some(p) => u32::try_from(object_plain_len.div_ceil(p)).ok()?,
            None => 1,
        },
        part_len: Some(part.unwrap_or(object_plain_len)),
    };
    let (segment, header_offset, cipher_start, _, skip) = chunk_pos(first);
    let (_, _, last_chunk_start, last_chunk_len, _) = chunk_pos(last);
    Some(RangePlan {
        segment: u32::try_from(segment).ok()?,
        header_offset,
        cipher_start,
        cipher_end: last_chunk_start + last_chunk_len + T - 1,
        skip,
        len: last - first + 1,
        layout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert!(validate_chunk_size(4096).is_ok());
        assert!(validate_chunk_size(65536).is_ok());
        assert!(validate_chunk_size(16 << 20).is_ok());
        for bad in [0, 1, 2048, 4095, 5000, 32 << 20, u32::MAX] {
            assert_eq!(
                validate_chunk_size(bad),
                Err(FormatError::InvalidChunkSize(bad))
            );
        }
    }

    #[test]
    fn segment_lengths() {
        let c = 4096;
        assert_eq!(segment_cipher_len(0, c), 108 + 16);
        assert_eq!(segment_cipher_len(1, c), 108 + 1 + 16);
        assert_eq!(segment_cipher_len(4096, c), 108 + 4096 + 16);
        assert_eq!(segment_cipher_len(4097, c), 108 + 4097 + 32);
        for l in [0u64, 1, 4095, 4096, 4097, 100_000] {
            assert_eq!(object_plain_len(segment_cipher_len(l, c), c, 1), Some(l));
        }
    }

    #[test]
    fn impossible_lengths() {
        let c = 4096;
        assert_eq!(object_plain_len(0, c, 1), None);
        assert_eq!(object_plain_len(123, c, 1), None);
        assert_eq!(object_plain_len(108 + 4112 + 5, c, 1), None);
        // full chunk followed by an empty chunk
        assert_eq!(object_plain_len(108 + 4112 + 16, c, 1), None);
        assert_eq!(object_plain_len(1000, 1000, 1), None);
        assert_eq!(object_plain_len(1000, c, 0), None);
        // two segments need two chunks at least
        assert_eq!(object_plain_len(2 * 108 + 20, c, 2), None);
    }

    #[test]
    fn multipart_lengths() {
        let c = 4096;
        let p = 3 * 4096;
        for total in [1u64, 100, p, p + 1, 2 * p, 5 * p - 7] {
            let cl = object_cipher_len(total, c, Some(p));
            let n = total.div_ceil(p) as u32;
            assert_eq!(object_plain_len(cl, c, n), Some(total), "total {total}");
        }
    }

    #[test]
    fn simple_ranges() {
        let c = 4096;
        let p = plan_range(0, 0, 10, c, None).unwrap();
        assert_eq!(
            p,
            RangePlan {
                segment: 0,
                header_offset: 0,
                cipher_start: 108,
                cipher_end: 108 + 10 + 16 - 1,
                skip: 0,
                len: 1,
                layout: Layout {
                    plain_len: 10,
                    chunk_size: c,
                    segments: 1,
                    part_len: Some(10)
                },
            }
        );
        assert!(plan_range(10, 20, 10, c, None).is_none());
        assert!(plan_range(5, 4, 10, c, None).is_none());
        let p = plan_range(5000, u64::MAX, 10_000, c, None).unwrap();
        assert_eq!(p.cipher_start, 108 + 4112);
        assert_eq!(p.skip, 5000 - 4096);
        assert_eq!(p.len, 5000);
        assert_eq!(p.cipher_end, segment_cipher_len(10_000, c) - 1);
    }
}
