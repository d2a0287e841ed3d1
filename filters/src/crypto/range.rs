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

#[cfg(test)]
mod tests {
    use super::*;

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
