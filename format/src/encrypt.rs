//! Streaming encryption of one segment.

use std::fmt;

use bytes::{Bytes, BytesMut};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::chunk::{ChunkAead, ChunkCipher, DEK_LEN};
use crate::error::FormatError;
use crate::header::{ObjectId, SegmentHeader, WRAP_NONCE_LEN};
use crate::keys::DerivedKeys;
use crate::size::{
    chunk_count, segment_cipher_len, validate_chunk_size, HEADER_LEN, MAX_PART_NUMBER,
    MAX_SEGMENT_PLAIN_LEN,
};

/// Encrypts one segment (a single-part object, or one part of a multipart upload) as a stream.
///
/// Owns everything it needs (`Send + 'static`). Retains at most one chunk of plaintext
/// between calls; the data key lives only inside the two chunk ciphers, which wipe it on drop.
pub struct SegmentEncryptor {
    /// The encoded header until it has been emitted.
    header: Option<[u8; HEADER_LEN]>,
    aead: ChunkAead,
    chunk_size: usize,
    plain_len: u64,
    chunks: u64,
    received: u64,
    /// Index of the chunk whose plaintext is being collected in `buf`.
    next_chunk: u64,
    /// Plaintext of chunk `next_chunk` received so far.
    buf: BytesMut,
    failed: bool,
}

impl SegmentEncryptor {
    /// Starts a segment of exactly `plain_len` plaintext bytes for the object `obj`, with a
    /// fresh random data key wrapped under `keys`, its chunks sealed with `cipher` (format
    /// version 1 or 2). `part_number` is 0 for a single-part object, else 1..=10000.
    pub fn new(
        cipher: ChunkCipher,
        keys: &DerivedKeys,
        obj: ObjectId<'_>,
        part_number: u32,
        plain_len: u64,
        chunk_size: u32,
    ) -> Result<Self, FormatError> {
        let mut dek = Zeroizing::new([0u8; DEK_LEN]);
        let mut wrap_nonce = [0u8; WRAP_NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut dek[..]);
        rand::rngs::OsRng.fill_bytes(&mut wrap_nonce);
        Self::with_fixed_randomness(
            cipher,
            keys,
            obj,
            part_number,
            plain_len,
            chunk_size,
            &dek,
            wrap_nonce,
        )
    }

    /// Like [`SegmentEncryptor::new`] with a caller-chosen data key and wrap nonce.
    ///
    /// FOR TEST VECTORS ONLY: reusing a data key across segments destroys confidentiality.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn with_fixed_randomness(
        cipher: ChunkCipher,
        keys: &DerivedKeys,
        obj: ObjectId<'_>,
        part_number: u32,
        plain_len: u64,
        chunk_size: u32,
        dek: &[u8; DEK_LEN],
        wrap_nonce: [u8; WRAP_NONCE_LEN],
    ) -> Result<Self, FormatError> {
        validate_chunk_size(chunk_size)?;
        if part_number > MAX_PART_NUMBER {
            return Err(FormatError::InvalidPartNumber(part_number));
        }
        if plain_len > MAX_SEGMENT_PLAIN_LEN {
            return Err(FormatError::InputTooLong);
        }
        let header = SegmentHeader::seal(
            cipher,
            keys,
            &obj.name_ad(),
            chunk_size,
            part_number,
            plain_len,
            dek,
            wrap_nonce,
        );
        Ok(Self {
            header: Some(header.to_bytes()),
            aead: ChunkAead::for_sealing(cipher, dek),
            chunk_size: chunk_size as usize,
            plain_len,
            chunks: chunk_count(plain_len, chunk_size),
            received: 0,
            next_chunk: 0,
            buf: BytesMut::new(),
            failed: false,
        })
    }

    /// Stored length of the segment (the backend's Content-Length).
    pub fn cipher_len(&self) -> u64 {
        segment_cipher_len(self.plain_len, self.chunk_size as u32)
    }

    /// Feeds plaintext in pieces of any size. Returns the ciphertext ready to send: the header
    /// (on the first call), then every completed chunk except the segment's final chunk, which
    /// is held back until [`SegmentEncryptor::finish`].
    ///
    /// Errors with `InputTooLong` (and stays failed) if more than `plain_len` bytes arrive.
    pub fn update(&mut self, input: &[u8]) -> Result<Bytes, FormatError> {
        if self.failed {
            return Err(FormatError::InputTooLong);
        }
        if input.len() as u64 > self.plain_len - self.received {
            self.failed = true;
            self.buf = BytesMut::new();
            return Err(FormatError::InputTooLong);
        }
        self.received += input.len() as u64;
        let c = self.chunk_size;
        let mut ready = 0;
        let header_len = if self.header.is_some() { HEADER_LEN } else { 0 };
        let tags = (self.buf.len() + input.len()) / c + 1;
        self.buf
            .reserve(header_len + input.len() + tags * crate::TAG_LEN);
        if let Some(h) = self.header.take() {
            // Nothing was received before the first call, so `buf` is empty.
            debug_assert!(self.buf.is_empty());
            self.buf.extend_from_slice(&h);
            ready = HEADER_LEN;
        }
        let hint = input.len();
        let mut next = None;
        let mut input = input;
        while !input.is_empty() {
            let have = self.buf.len() - ready;
            if have == 0 && ready > 0 && input.len() < c {
                // The input ends inside a chunk that starts here: collect it in its own
                // buffer (sized for the next call) instead of behind this call's output.
                let mut b = BytesMut::with_capacity(c + crate::TAG_LEN + hint.min(2 * c));
                b.extend_from_slice(input);
                next = Some(b);
                break;
            }
            let take = (c - have).min(input.len());
            debug_assert!(take > 0, "input beyond plain_len was rejected above");
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.buf.len() - ready == c && self.next_chunk + 1 < self.chunks {
                let tag = self
                    .aead
                    .seal(self.next_chunk, false, &mut self.buf[ready..]);
                self.buf.extend_from_slice(&tag);
                ready = self.buf.len();
                self.next_chunk += 1;
            }
        }
        let out = self.buf.split_to(ready).freeze();
        if let Some(b) = next {
            debug_assert!(self.buf.is_empty());
            self.buf = b;
        }
        Ok(out)
    }

    /// Encrypts and returns the held-back final chunk (preceded by the header if `update` was
    /// never called). Call it only once the caller's own checks (signatures, checksums) have
    /// passed: not calling it leaves the backend with a short, unreadable body.
    ///
    /// Errors with `InputTooShort` if fewer than `plain_len` bytes were fed.
    pub fn finish(mut self) -> Result<Bytes, FormatError> {
        if self.failed {
            return Err(FormatError::InputTooLong);
        }
        if self.received < self.plain_len {
            return Err(FormatError::InputTooShort);
        }
        debug_assert_eq!(self.next_chunk + 1, self.chunks);
        let (mut out, start) = match self.header.take() {
            Some(h) => {
                let mut out = BytesMut::with_capacity(HEADER_LEN + self.buf.len() + crate::TAG_LEN);
                out.extend_from_slice(&h);
                out.extend_from_slice(&self.buf);
                (out, HEADER_LEN)
            }
            None => {
                let mut out = std::mem::take(&mut self.buf);
                out.reserve(crate::TAG_LEN);
                (out, 0)
            }
        };
        let tag = self.aead.seal(self.next_chunk, true, &mut out[start..]);
        out.extend_from_slice(&tag);
        Ok(out.freeze())
    }
}

impl fmt::Debug for SegmentEncryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentEncryptor")
            .field("chunk_size", &self.chunk_size)
            .field("plain_len", &self.plain_len)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    /// Whatever the piece sizes, at most one chunk of plaintext (and about three chunks of
    /// capacity) is retained between calls.
    #[test]
    fn retains_at_most_one_chunk() {
        let keys = DerivedKeys::derive(&MasterKey::new(1, [1; 32]));
        let c = 4096usize;
        let len = 300_000usize;
        let data = vec![7u8; len];
        for piece in [1usize, 100, 4095, 4096, 4097, 10_000, 100_000, len] {
            let mut e = SegmentEncryptor::new(
                ChunkCipher::Aes256Gcm,
                &keys,
                ObjectId {
                    bucket: "b",
                    key: "k",
                },
                0,
                len as u64,
                c as u32,
            )
            .unwrap();
            let mut sent = 0;
            for p in data.chunks(piece) {
                sent += e.update(p).unwrap().len();
                assert!(e.buf.len() <= c, "piece {piece}: {} buffered", e.buf.len());
                assert!(
                    e.buf.capacity() <= 4 * (c + crate::TAG_LEN) + HEADER_LEN,
                    "piece {piece}: capacity {}",
                    e.buf.capacity()
                );
            }
            let cipher_len = e.cipher_len() as usize;
            sent += e.finish().unwrap().len();
            assert_eq!(sent, cipher_len);
        }
    }
}
