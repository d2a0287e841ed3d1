//! Object bodies without per-request copies or allocation of payload bytes.
//!
//! One pool of pseudo-random bytes is generated once (deterministically, so a later run can
//! verify what an earlier run uploaded). An object body is a list of frames, each a
//! zero-copy `Bytes` slice of the pool at a pseudo-random offset chosen from the object's
//! seed. Every upload therefore carries different, incompressible bytes (a backend that
//! deduplicates or compresses blocks, as Garage does, gets no advantage over the ciphertext
//! the proxy writes), while the generator only ever holds the pool in memory.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// Bytes per frame (and the granularity of the pseudo-random layout).
pub const FRAME: usize = 1 << 20;
/// Range of frame start offsets inside the pool.
const SPREAD: usize = 32 << 20;

/// SplitMix64: a small, fast generator, good enough for offsets and fill bytes.
#[derive(Clone, Debug)]
pub struct Mix(pub u64);

impl Mix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// A stable 64-bit hash of a string (FNV-1a), for per-object seeds.
pub fn seed_of(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

#[derive(Clone)]
pub struct Pool {
    bytes: Bytes,
}

impl Pool {
    /// The same bytes on every run.
    pub fn new() -> Self {
        let len = SPREAD + FRAME;
        let mut v = Vec::with_capacity(len);
        let mut m = Mix(0x5333_4350_4245_4e43);
        while v.len() < len {
            v.extend_from_slice(&m.next_u64().to_le_bytes());
        }
        v.truncate(len);
        Pool { bytes: Bytes::from(v) }
    }

    /// Frame layout (pool offset, length) of an object of `size` bytes with `seed`.
    pub fn layout(seed: u64, size: u64) -> impl Iterator<Item = (usize, usize)> {
        let mut m = Mix(seed);
        let mut left = size;
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let n = left.min(FRAME as u64) as usize;
            left -= n as u64;
            Some((m.below(SPREAD as u64) as usize, n))
        })
    }

    /// Pool slices (offset, length) of bytes `start..start + len` of an object.
    fn span(seed: u64, size: u64, start: u64, len: u64) -> VecDeque<(usize, usize)> {
        let (mut skip, mut left) = (start, len);
        let mut out = VecDeque::new();
        for (o, n) in Self::layout(seed, size) {
            if left == 0 {
                break;
            }
            if skip >= n as u64 {
                skip -= n as u64;
                continue;
            }
            let k = (n as u64 - skip).min(left) as usize;
            out.push_back((o + skip as usize, k));
            left -= k as u64;
            skip = 0;
        }
        out
    }

    /// The body of an object, as zero-copy frames.
    pub fn body(&self, seed: u64, size: u64) -> PoolBody {
        self.body_range(seed, size, 0, size)
    }

    /// Bytes `start..start + len` of an object (a part of a multipart upload), as zero-copy frames.
    pub fn body_range(&self, seed: u64, size: u64, start: u64, len: u64) -> PoolBody {
        let frames = Self::span(seed, size, start, len).into_iter().map(|(o, n)| self.bytes.slice(o..o + n)).collect();
        PoolBody { frames, len }
    }

    /// Checks a downloaded byte stream against the object (from byte `start` on).
    pub fn verifier(&self, seed: u64, size: u64, start: u64) -> Verifier {
        Verifier { pool: self.bytes.clone(), frames: Self::span(seed, size, start, size - start), ok: true }
    }

    /// SHA-256 of a body.
    pub fn sha256(body: &PoolBody) -> [u8; 32] {
        use sha2::Digest as _;
        let mut sha = sha2::Sha256::new();
        for f in &body.frames {
            sha2::Digest::update(&mut sha, f);
        }
        sha2::Digest::finalize(sha).into()
    }

    /// SHA-256 (hex) and MD5 (base64) of a body, for signed-payload runs.
    pub fn digests(body: &PoolBody) -> (String, String) {
        use base64::Engine as _;
        use md5::Digest as _;
        let mut sha = sha2::Sha256::new();
        let mut md5 = md5::Md5::new();
        for f in &body.frames {
            sha2::Digest::update(&mut sha, f);
            md5.update(f);
        }
        (
            hex::encode(sha2::Digest::finalize(sha)),
            base64::engine::general_purpose::STANDARD.encode(md5.finalize()),
        )
    }
}

pub struct Verifier {
    pool: Bytes,
    frames: VecDeque<(usize, usize)>,
    ok: bool,
}

impl Verifier {
    pub fn feed(&mut self, mut data: &[u8]) {
        while self.ok && !data.is_empty() {
            let Some(&(o, n)) = self.frames.front() else {
                self.ok = false;
                return;
            };
            let k = n.min(data.len());
            if self.pool[o..o + k] != data[..k] {
                self.ok = false;
                return;
            }
            data = &data[k..];
            if k == n {
                self.frames.pop_front();
            } else {
                self.frames[0] = (o + k, n - k);
            }
        }
    }

    /// True when every byte fed matched (the caller checks the length separately).
    pub fn ok(&self) -> bool {
        self.ok
    }
}

/// A request body made of pre-built frames with an exact length.
pub struct PoolBody {
    frames: VecDeque<Bytes>,
    len: u64,
}

impl PoolBody {
    pub fn empty() -> Self {
        PoolBody { frames: VecDeque::new(), len: 0 }
    }

    /// A small body built by the generator (e.g. a CompleteMultipartUpload document).
    pub fn from_bytes(b: Bytes) -> Self {
        let len = b.len() as u64;
        PoolBody { frames: VecDeque::from([b]), len }
    }
}

impl Body for PoolBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.frames.pop_front().map(|b| {
            self.len -= b.len() as u64;
            Ok(Frame::data(b))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_accepts_the_body_and_its_ranges() {
        let pool = Pool::new();
        let size = 3 * FRAME as u64 + 1234;
        let body: Vec<u8> = pool.body(7, size).frames.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(body.len() as u64, size);
        for start in [0u64, 1, FRAME as u64 - 1, FRAME as u64, 2 * FRAME as u64 + 17] {
            let mut v = pool.verifier(7, size, start);
            for piece in body[start as usize..].chunks(70_001) {
                v.feed(piece);
            }
            assert!(v.ok(), "start {start}");
        }
        let mut v = pool.verifier(8, size, 0);
        v.feed(&body);
        assert!(!v.ok());
    }

    #[test]
    fn parts_concatenate_to_the_body() {
        let pool = Pool::new();
        let size = 3 * FRAME as u64 + 1234;
        let whole: Vec<u8> = pool.body(7, size).frames.iter().flat_map(|b| b.iter().copied()).collect();
        for part in [FRAME as u64, FRAME as u64 + 1, 5 * FRAME as u64, 777_777] {
            let mut joined = Vec::new();
            let mut start = 0;
            while start < size {
                let len = part.min(size - start);
                let b = pool.body_range(7, size, start, len);
                assert_eq!(b.len, len);
                joined.extend(b.frames.iter().flat_map(|f| f.iter().copied()));
                start += len;
            }
            assert!(joined == whole, "part size {part}");
        }
    }
}
