//! Client byte ranges over the plaintext.

use bytes::Bytes;

/// One `Range: bytes=…` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    FromTo(u64, u64),
    From(u64),
    Suffix(u64),
}

impl ByteRange {
    /// Parses a single range. Like S3, a header it cannot parse (or a multi-range) is
    /// ignored and the whole object is sent.
    pub fn parse(v: &str) -> Option<Self> {
        let spec = v.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        match (a.is_empty(), b.is_empty()) {
            (true, false) => b.parse().ok().map(ByteRange::Suffix),
            (false, true) => a.parse().ok().map(ByteRange::From),
            (false, false) => {
                let (a, b) = (a.parse().ok()?, b.parse().ok()?);
                (a <= b).then_some(ByteRange::FromTo(a, b))
            }
            (true, true) => None,
        }
    }

    /// The inclusive plaintext range for an object of `len` bytes, or `None` when it
    /// cannot be satisfied (answer 416).
    pub fn resolve(self, len: u64) -> Option<(u64, u64)> {
        if len == 0 {
            return None;
        }
        match self {
            ByteRange::FromTo(a, b) => (a < len).then(|| (a, b.min(len - 1))),
            ByteRange::From(a) => (a < len).then(|| (a, len - 1)),
            ByteRange::Suffix(n) => (n > 0).then(|| (len - n.min(len), len - 1)),
        }
    }
}

/// Passes on the part of `piece` that lies in the window: first drops `skip` bytes, then
/// lets at most `take` through.
pub fn trim(skip: &mut u64, take: &mut u64, piece: Bytes) -> Bytes {
    let mut p = piece;
    let drop = (*skip).min(p.len() as u64) as usize;
    *skip -= drop as u64;
    let p2 = p.split_off(drop);
    let keep = (*take).min(p2.len() as u64) as usize;
    *take -= keep as u64;
    p2.slice(..keep)
}

/// `bytes first-last/total` of a 206 answer.
pub fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let (span, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// How far ahead of its first chunk a Range read may start fetching to get the object's
/// first segment header in the same request (docs/object-format.md 6.3.1): up to
/// [`AHEAD_ALWAYS`], or as many bytes as the range needs anyway, never more than
/// [`AHEAD_MAX`]. A round trip saved against at most twice the bytes (plus 256 KiB).
pub const AHEAD_ALWAYS: u64 = 256 << 10;
pub const AHEAD_MAX: u64 = 1 << 20;

/// The stored bytes to ask for, from offset 0, to serve `range` of a single-segment object
/// with chunks of `chunk_size` in one request: `Some(Some(end))` (inclusive; the backend
/// clamps it to the object), `Some(None)` (to the end), or `None` when the range starts too
/// far into the object (or counts from its end) for the header to come along cheaply.
pub fn from_start(range: ByteRange, chunk_size: u32) -> Option<Option<u64>> {
    let (c, t, h) = (u64::from(chunk_size), s3cp_format::TAG_LEN as u64, s3cp_format::HEADER_LEN as u64);
    let chunk_start = |x: u64| (x / c).checked_mul(c + t)?.checked_add(h);
    match range {
        ByteRange::FromTo(a, b) => {
            let (start, end) = (chunk_start(a)?, chunk_start(b)?.checked_add(c + t - 1)?);
            let ahead = start - h;
            (ahead <= AHEAD_ALWAYS || ahead <= (end - start + 1).min(AHEAD_MAX)).then_some(Some(end))
        }
        // The length needed is unknown: only the cheap case.
        ByteRange::From(a) => (chunk_start(a)? - h <= AHEAD_ALWAYS).then_some(None),
        ByteRange::Suffix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_near_the_start_are_fetched_with_the_header() {
        let c = 65_536u32;
        let full = 65_536 + 16;
        assert_eq!(from_start(ByteRange::FromTo(0, 99), c), Some(Some(108 + full - 1)));
        // The end of the chunk holding the last byte, whatever the object's length.
        assert_eq!(from_start(ByteRange::FromTo(0, 4 << 20), c), Some(Some(108 + 65 * full - 1)));
        assert_eq!(from_start(ByteRange::FromTo(65_536, 65_536), c), Some(Some(108 + 2 * full - 1)));
        assert_eq!(from_start(ByteRange::From(100), c), Some(None));
        // Up to 256 KiB ahead (three chunks and tags here) are always fetched; further only as
        // far as the range is long.
        assert_eq!(from_start(ByteRange::From(3 * 65_536), c), Some(None));
        assert_eq!(from_start(ByteRange::From(4 * 65_536), c), None);
        assert_eq!(from_start(ByteRange::FromTo(4 * 65_536, 4 * 65_536), c), None);
        assert_eq!(from_start(ByteRange::FromTo(4 * 65_536, 8 * 65_536 - 1), c), Some(Some(108 + 8 * full - 1)));
        // Never more than 1 MiB ahead, however long the range.
        assert!(from_start(ByteRange::FromTo(15 * 65_536, 100 << 20), c).is_some());
        assert_eq!(from_start(ByteRange::FromTo(16 * 65_536, 100 << 20), c), None);
        assert_eq!(from_start(ByteRange::Suffix(10), c), None);
        assert_eq!(from_start(ByteRange::FromTo(0, u64::MAX), c), None);
        assert_eq!(parse_content_range("bytes 0-65659/200000"), Some((0, 65_659, 200_000)));
        assert_eq!(parse_content_range("bytes */200000"), None);
    }

    #[test]
    fn parses_and_resolves_like_s3() {
        assert_eq!(ByteRange::parse("bytes=0-9").unwrap().resolve(100), Some((0, 9)));
        assert_eq!(ByteRange::parse("bytes=90-200").unwrap().resolve(100), Some((90, 99)));
        assert_eq!(ByteRange::parse("bytes=10-").unwrap().resolve(100), Some((10, 99)));
        assert_eq!(ByteRange::parse("bytes=-10").unwrap().resolve(100), Some((90, 99)));
        assert_eq!(ByteRange::parse("bytes=-1000").unwrap().resolve(100), Some((0, 99)));
        assert_eq!(ByteRange::parse("bytes=100-").unwrap().resolve(100), None);
        assert_eq!(ByteRange::parse("bytes=0-0").unwrap().resolve(0), None);
        assert_eq!(ByteRange::parse("bytes=-0").unwrap().resolve(10), None);
        assert_eq!(ByteRange::parse("bytes=5-1"), None);
        assert_eq!(ByteRange::parse("bytes=0-1,3-4"), None);
        assert_eq!(ByteRange::parse("items=0-1"), None);
    }

    #[test]
    fn trimming_across_pieces() {
        let (mut skip, mut take) = (3u64, 4u64);
        assert_eq!(trim(&mut skip, &mut take, Bytes::from_static(b"ab")), Bytes::new());
        assert_eq!(trim(&mut skip, &mut take, Bytes::from_static(b"cdef")), Bytes::from_static(b"def"));
        assert_eq!(trim(&mut skip, &mut take, Bytes::from_static(b"ghij")), Bytes::from_static(b"g"));
        assert_eq!(trim(&mut skip, &mut take, Bytes::from_static(b"k")), Bytes::new());
    }
}
