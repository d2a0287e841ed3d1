//! Copy, rename and key rotation without re-encrypting chunks.

use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rand::RngCore;

use crate::decrypt::{check_order, Phase};
use crate::layout::Layout;
use crate::error::FormatError;
use crate::header::{ObjectId, SegmentHeader, WRAP_NONCE_LEN};
use crate::keys::{DerivedKeys, KeyRing};
use crate::size::{HEADER_LEN, TAG_LEN};

/// Position inside a segment's chunks.
struct Body {
    part_number: u32,
    /// Stored bytes of the segment still to come.
    remaining: u64,
    /// Stored length of the segment's final chunk (plaintext + tag).
    final_len: u64,
}

/// Passes an object's stored bytes through, replacing every segment header with one whose
/// data key is re-wrapped for another name (`to`) and/or master key (`to_keys`); the chunks
/// are copied unchanged.
///
/// Every header is authenticated (unwrapped) under the source name, part numbers are checked
/// as a reader would, and the final chunk of the last segment is held back until
/// [`Rewrapper::finish`] confirms the stream ended cleanly. Chunks are *not* authenticated
/// here (no data-key work per byte); a destination reader authenticates them as usual.
pub struct Rewrapper {
    ring: KeyRing,
    from_ad: Vec<u8>,
    to_ad: Vec<u8>,
    to_keys: Arc<DerivedKeys>,
    /// What the copy announced of its source; every source header must agree.
    layout: Option<Layout>,
    phase: Phase<Body>,
    out: BytesMut,
    /// Trailing bytes of `out` (the current segment's final chunk) not yet released.
    held: usize,
    segments: u32,
    failed: Option<FormatError>,
}

impl Rewrapper {
    pub fn new(
        ring: KeyRing,
        from: ObjectId<'_>,
        to: ObjectId<'_>,
        to_keys: Arc<DerivedKeys>,
    ) -> Self {
        Self {
            ring,
            from_ad: from.name_ad(),
            to_ad: to.name_ad(),
            to_keys,
            layout: None,
            phase: Phase::start(),
            out: BytesMut::new(),
            held: 0,
            segments: 0,
            failed: None,
        }
    }

    /// A rewrapper whose source must have `layout` (reader rule 5.11): a source header that
    /// disagrees (another length or chunk size than the copy announced) fails the copy.
    pub fn expecting(mut self, layout: Layout) -> Self {
        self.layout = Some(layout);
        self
    }

    /// Number of segments whose header has been re-wrapped so far.
    pub fn segments(&self) -> u32 {
        self.segments
    }

    /// Feeds source bytes; returns destination bytes ready to send.
    pub fn update(&mut self, input: &[u8]) -> Result<Bytes, FormatError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.process(input) {
            Ok(()) => {
                let ready = self.out.len() - self.held;
                Ok(self.out.split_to(ready).freeze())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Releases the held-back bytes once the source ended after a complete segment.
    /// Errors with `Truncated` otherwise (and, with a layout, unless its segment count was
    /// copied).
    pub fn finish(mut self) -> Result<Bytes, FormatError> {
        match self.layout {
            Some(l) => self.finish_expecting_segments(l.segments),
            None => self.finish_inner(),
        }
    }

    /// [`Rewrapper::finish`], then checks that exactly `n` segments were copied.
    pub fn finish_expecting_segments(mut self, n: u32) -> Result<Bytes, FormatError> {
        let rest = self.finish_inner()?;
        match self.segments.cmp(&n) {
            std::cmp::Ordering::Less => Err(FormatError::Truncated),
            std::cmp::Ordering::Greater => Err(FormatError::TrailingData),
            std::cmp::Ordering::Equal => Ok(rest),
        }
    }

    fn finish_inner(&mut self) -> Result<Bytes, FormatError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if !matches!(self.phase, Phase::Done { .. }) {
            return Err(self.fail(FormatError::Truncated));
        }
        self.held = 0;
        Ok(std::mem::take(&mut self.out).freeze())
    }

    fn fail(&mut self, e: FormatError) -> FormatError {
        self.failed = Some(e.clone());
        self.out = BytesMut::new();
        self.held = 0;
        e
    }

    fn process(&mut self, mut input: &[u8]) -> Result<(), FormatError> {
        self.out.reserve(input.len());
        while !input.is_empty() {
            match &mut self.phase {
                // Another segment follows a `Done` one; the previous final chunk stays held
                // until its header is accepted.
                Phase::Done { .. } | Phase::Header { .. } => {
                    if let Some((buf, prev)) = self.phase.collect_header(&mut input)? {
                        let body = self.rewrap_header(&buf, prev)?;
                        self.phase = Phase::Body(body);
                    }
                }
                Phase::Body(body) => {
                    let take = body.remaining.min(input.len() as u64) as usize;
                    self.out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    body.remaining -= take as u64;
                    // Bytes of the final chunk received so far stay held.
                    self.held = body
                        .final_len
                        .saturating_sub(body.remaining)
                        .min(self.out.len() as u64) as usize;
                    if body.remaining == 0 {
                        let part_number = body.part_number;
                        self.phase = Phase::Done { part_number };
                    }
                }
            }
        }
        Ok(())
    }

    fn rewrap_header(
        &mut self,
        buf: &[u8; HEADER_LEN],
        prev: Option<u32>,
    ) -> Result<Body, FormatError> {
        let hdr = SegmentHeader::parse(buf)?;
        check_order(prev, hdr.part_number)?;
        let (_, dek) = hdr.open(&self.ring, &self.from_ad)?;
        if let Some(layout) = &mut self.layout {
            layout.check(self.segments, &hdr)?;
        }
        let mut nonce = [0u8; WRAP_NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // This header is valid: the previous segment's final chunk may go.
        self.held = 0;
        // The chunks are copied unchanged, so the new header keeps their cipher (version).
        let new = SegmentHeader::seal(
            hdr.cipher,
            &self.to_keys,
            &self.to_ad,
            hdr.chunk_size,
            hdr.part_number,
            hdr.plain_len,
            &dek,
            nonce,
        );
        self.out.extend_from_slice(&new.to_bytes());
        self.segments += 1;
        let c = u64::from(hdr.chunk_size);
        let last_plain = hdr.plain_len - (hdr.chunk_count() - 1) * c;
        Ok(Body {
            part_number: hdr.part_number,
            remaining: hdr.cipher_len() - HEADER_LEN as u64,
            final_len: last_plain + TAG_LEN as u64,
        })
    }
}

impl fmt::Debug for Rewrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rewrapper")
            .field("segments", &self.segments)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}
