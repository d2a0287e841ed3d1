//! Streaming decryption of whole objects and of planned ranges.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

use crate::chunk::ChunkAead;
use crate::error::FormatError;
use crate::header::{check_magic_prefix, ObjectId, SegmentHeader};
use crate::keys::{KeyId, KeyRing};
use crate::layout::Layout;
use crate::size::{RangePlan, HEADER_LEN, TAG_LEN};

/// Checks that a segment with `found` as part number may follow a segment numbered `prev`
/// (`None` at the start of a whole object).
pub(crate) fn check_order(prev: Option<u32>, found: u32) -> Result<(), FormatError> {
    match prev {
        None if found <= 1 => Ok(()),
        None => Err(FormatError::SegmentOrder { expected: 1, found }),
        Some(0) => Err(FormatError::TrailingData),
        Some(p) if found == p + 1 => Ok(()),
        Some(p) => Err(FormatError::SegmentOrder {
            expected: p + 1,
            found,
        }),
    }
}

/// Where the reader is in the stream.
pub(crate) enum Phase<S> {
    /// Collecting a segment header; `prev_part` is the part number of the segment before it.
    Header {
        buf: [u8; HEADER_LEN],
        filled: usize,
        prev_part: Option<u32>,
    },
    /// Inside a segment's chunks.
    Body(S),
    /// A segment just ended with its final chunk.
    Done { part_number: u32 },
}

/// A complete segment header and the part number of the segment before it (`None` at the
/// start of the stream).
pub(crate) type CollectedHeader = ([u8; HEADER_LEN], Option<u32>);

impl<S> Phase<S> {
    pub(crate) fn start() -> Self {
        Phase::Header {
            buf: [0; HEADER_LEN],
            filled: 0,
            prev_part: None,
        }
    }

    /// Steps a reader that is between chunks (`Done`, `Header`) over `input`: after a
    /// segment's end, the next header starts (none may follow a single-part object's); the
    /// header takes what it still needs from `input`, its magic checked as it arrives. Returns
    /// the whole header and the part number of the segment before it once it is complete; the
    /// caller then opens it and moves to `Body`.
    pub(crate) fn collect_header(
        &mut self,
        input: &mut &[u8],
    ) -> Result<Option<CollectedHeader>, FormatError> {
        if let Phase::Done { part_number } = *self {
            if part_number == 0 {
                return Err(FormatError::TrailingData);
            }
            *self = Phase::Header {
                buf: [0; HEADER_LEN],
                filled: 0,
                prev_part: Some(part_number),
            };
        }
        let Phase::Header {
            buf,
            filled,
            prev_part,
        } = self
        else {
            unreachable!("called between chunks")
        };
        let take = (HEADER_LEN - *filled).min(input.len());
        buf[*filled..*filled + take].copy_from_slice(&input[..take]);
        *filled += take;
        *input = &input[take..];
        check_magic_prefix(&buf[..*filled], prev_part.is_none())?;
        Ok((*filled == HEADER_LEN).then_some((*buf, *prev_part)))
    }
}

/// The segment being decrypted.
struct Segment {
    ordinal: u32,
    part_number: u32,
    chunk_size: u64,
    plain_len: u64,
    chunks: u64,
    /// Index of the chunk being collected.
    next: u64,
    aead: ChunkAead,
}

impl Segment {
    fn chunk_plain_len(&self) -> usize {
        (self.plain_len - self.next * self.chunk_size).min(self.chunk_size) as usize
    }
    fn is_final(&self) -> bool {
        self.next + 1 == self.chunks
    }
}

struct RangeState {
    /// Stored bytes still expected.
    remaining_in: u64,
    /// Decrypted bytes still to drop.
    skip: u64,
    /// Decrypted bytes still to emit.
    take: u64,
}

/// Decrypts and authenticates an object (or a planned range of it) as a stream.
///
/// Owns everything it needs (`Send + 'static`). Keeps at most one chunk of ciphertext
/// between calls and releases plaintext only from chunks whose tag verified. After the first
/// error every further call returns that error.
pub struct Decryptor {
    ring: KeyRing,
    name_ad: Vec<u8>,
    range: Option<RangeState>,
    /// What the reader announced; every segment header must agree before any of its
    /// plaintext is released. `None` only for self-describing reads (recovery tools).
    layout: Option<Layout>,
    phase: Phase<Segment>,
    /// `[..committed]`: authenticated plaintext to release; `[committed..]`: the ciphertext of
    /// the chunk being collected.
    out: BytesMut,
    committed: usize,
    /// A chunk begun at the end of the current call, collected apart from `out`.
    next_out: Option<BytesMut>,
    /// Segments whose header was accepted (for ranges: ordinal of the last one + 1).
    segments: u32,
    first_key: Option<KeyId>,
    failed: Option<FormatError>,
}

impl Decryptor {
    /// Reads a whole object: one or more segments, from stored byte 0, trusting each
    /// segment header for its length. For recovery tools that announce nothing before they
    /// read; a server that announces a length uses [`Decryptor::expecting`].
    pub fn new(ring: KeyRing, obj: ObjectId<'_>) -> Self {
        Self {
            ring,
            name_ad: obj.name_ad(),
            range: None,
            layout: None,
            phase: Phase::start(),
            out: BytesMut::new(),
            committed: 0,
            next_out: None,
            segments: 0,
            first_key: None,
            failed: None,
        }
    }

    /// Reads a whole object that must have `layout` (rule 5.11): every segment header must
    /// agree with it before any of its plaintext is released, and the object must have
    /// exactly `layout.segments` segments. So the plaintext released is exactly
    /// `layout.plain_len` bytes, and its last byte is released only once the final chunk of
    /// the last segment has been authenticated.
    pub fn expecting(ring: KeyRing, obj: ObjectId<'_>, layout: Layout) -> Self {
        let mut d = Self::new(ring, obj);
        d.layout = Some(layout);
        d
    }

    /// Reads a range planned with [`crate::plan_range`]. `header` is the [`HEADER_LEN`] bytes
    /// stored at `plan.header_offset`; the caller then feeds the stored bytes
    /// `plan.cipher_start..=plan.cipher_end`. Emits only the plaintext
    /// `[plan.skip, plan.skip + plan.len)` counted from the first chunk fetched, crossing into
    /// following segments (their headers are inside the fetched bytes).
    ///
    /// `plan.layout` is the object as announced, with its part length known (multipart
    /// objects: from the first segment's header); this header and every later one the range
    /// crosses must agree with it (rule 5.11).
    ///
    /// Errors: those of [`SegmentHeader::parse`] and [`SegmentHeader::open`] (a header that is
    /// not one gives `LayoutMismatch`), `SegmentOrder` if the header's part number is not the
    /// planned segment's, `LayoutMismatch` if the plan's offsets do not fit the header, and
    /// those of [`Layout::check`].
    pub fn for_range(
        ring: KeyRing,
        obj: ObjectId<'_>,
        header: &[u8],
        plan: &RangePlan,
    ) -> Result<Self, FormatError> {
        let mut layout = plan.layout;
        let hdr = SegmentHeader::parse(header).map_err(|e| match e {
            FormatError::NotEncrypted => FormatError::LayoutMismatch,
            e => e,
        })?;
        let expected = plan.segment.saturating_add(1);
        if !(hdr.part_number == expected || (hdr.part_number == 0 && plan.segment == 0)) {
            return Err(FormatError::SegmentOrder {
                expected,
                found: hdr.part_number,
            });
        }
        let c = u64::from(hdr.chunk_size);
        let first_chunk = plan
            .cipher_start
            .checked_sub(plan.header_offset.saturating_add(HEADER_LEN as u64))
            .filter(|off| off % (c + TAG_LEN as u64) == 0)
            .map(|off| off / (c + TAG_LEN as u64))
            .filter(|i| *i < hdr.chunk_count())
            .ok_or(FormatError::LayoutMismatch)?;
        if plan.cipher_end < plan.cipher_start {
            return Err(FormatError::LayoutMismatch);
        }
        let name_ad = obj.name_ad();
        let (_, dek) = hdr.open(&ring, &name_ad)?;
        layout.check(plan.segment, &hdr)?;
        let seg = Segment {
            ordinal: plan.segment,
            part_number: hdr.part_number,
            chunk_size: c,
            plain_len: hdr.plain_len,
            chunks: hdr.chunk_count(),
            next: first_chunk,
            aead: ChunkAead::for_opening(hdr.cipher, &dek),
        };
        Ok(Self {
            ring,
            name_ad,
            range: Some(RangeState {
                remaining_in: plan.cipher_end - plan.cipher_start + 1,
                skip: plan.skip,
                take: plan.len,
            }),
            layout: Some(layout),
            phase: Phase::Body(seg),
            out: BytesMut::new(),
            committed: 0,
            next_out: None,
            segments: plan.segment + 1,
            first_key: Some(hdr.key_id),
            failed: None,
        })
    }

    /// The key id of the first segment, once its header was read.
    pub fn key_id(&self) -> Option<KeyId> {
        self.first_key
    }

    /// Number of segments whose header has been accepted so far (for a range reader: the
    /// ordinal of the current segment + 1).
    pub fn segments(&self) -> u32 {
        self.segments
    }

    /// Feeds stored bytes in pieces of any size; returns the plaintext of every chunk
    /// authenticated by this call (possibly empty).
    pub fn update(&mut self, input: &[u8]) -> Result<Bytes, FormatError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.process(input) {
            Ok(()) => {
                let done = self.out.split_to(self.committed).freeze();
                self.committed = 0;
                if let Some(next) = self.next_out.take() {
                    debug_assert!(self.out.is_empty());
                    self.out = next;
                }
                Ok(done)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Ends the stream. Errors with `Truncated` if it ended inside a header or chunk, before
    /// the final chunk of the last segment (whole objects), or before `plan.cipher_end`
    /// (ranges).
    pub fn finish(mut self) -> Result<Bytes, FormatError> {
        self.finish_inner()
    }

    /// [`Decryptor::finish`], then for whole objects checks that exactly `n` segments were
    /// read (`Truncated` if fewer, `TrailingData` if more). `n` comes from the backend's ETag
    /// (`…-N` for an N-part upload, else 1): the only defence against whole trailing parts
    /// being dropped, which the format cannot detect by itself. Ranges skip the count check.
    pub fn finish_expecting_segments(mut self, n: u32) -> Result<Bytes, FormatError> {
        let rest = self.finish_inner()?;
        if self.range.is_none() {
            if self.segments < n {
                return Err(FormatError::Truncated);
            }
            if self.segments > n {
                return Err(FormatError::TrailingData);
            }
        }
        Ok(rest)
    }

    fn fail(&mut self, e: FormatError) -> FormatError {
        self.failed = Some(e.clone());
        self.out = BytesMut::new();
        self.next_out = None;
        self.committed = 0;
        self.phase = Phase::Done { part_number: 0 };
        e
    }

    fn finish_inner(&mut self) -> Result<Bytes, FormatError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let complete = match (&self.range, &self.phase) {
            (Some(r), Phase::Body(_)) => {
                r.remaining_in == 0 && r.take == 0 && self.out.len() == self.committed
            }
            (Some(r), Phase::Done { .. }) => r.remaining_in == 0 && r.take == 0,
            (_, Phase::Header { .. }) | (None, Phase::Body(_)) => false,
            (None, Phase::Done { .. }) => self
                .layout
                .is_none_or(|l| l.segments == self.segments),
        };
        if !complete {
            return Err(self.fail(FormatError::Truncated));
        }
        let rest = self.out.split_to(self.committed).freeze();
        self.committed = 0;
        Ok(rest)
    }

    fn process(&mut self, mut input: &[u8]) -> Result<(), FormatError> {
        if let Some(r) = &mut self.range {
            if input.len() as u64 > r.remaining_in {
                return Err(FormatError::TrailingData);
            }
            r.remaining_in -= input.len() as u64;
        }
        let hint = input.len();
        self.out.reserve(input.len());
        while !input.is_empty() {
            match &mut self.phase {
                Phase::Done { .. } | Phase::Header { .. } => {
                    if let Some((buf, prev)) = self.phase.collect_header(&mut input)? {
                        let seg = self.start_segment(&buf, prev)?;
                        self.phase = Phase::Body(seg);
                    }
                }
                Phase::Body(seg) => {
                    let clen = seg.chunk_plain_len() + TAG_LEN;
                    let have = self.out.len() - self.committed;
                    if have == 0 && self.committed > 0 && input.len() < clen {
                        // The input ends inside a chunk that starts here. Collect it in its
                        // own buffer, sized for the next call, so that it neither shares the
                        // allocation handed out now nor has to be moved later.
                        let mut next = BytesMut::with_capacity(clen + hint.min(2 * clen));
                        next.extend_from_slice(input);
                        self.next_out = Some(next);
                        break;
                    }
                    let take = (clen - have).min(input.len());
                    self.out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if have + take == clen {
                        self.open_chunk()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn start_segment(
        &mut self,
        buf: &[u8; HEADER_LEN],
        prev: Option<u32>,
    ) -> Result<Segment, FormatError> {
        let hdr = SegmentHeader::parse(buf)?;
        check_order(prev, hdr.part_number)?;
        let (_, dek) = hdr.open(&self.ring, &self.name_ad)?;
        let ordinal = self.segments;
        if let Some(layout) = &mut self.layout {
            layout.check(ordinal, &hdr)?;
        }
        self.first_key.get_or_insert(hdr.key_id);
        self.segments += 1;
        Ok(Segment {
            ordinal,
            part_number: hdr.part_number,
            chunk_size: u64::from(hdr.chunk_size),
            plain_len: hdr.plain_len,
            chunks: hdr.chunk_count(),
            next: 0,
            aead: ChunkAead::for_opening(hdr.cipher, &dek),
        })
    }

    /// Authenticates and decrypts the complete chunk at `out[committed..]`.
    fn open_chunk(&mut self) -> Result<(), FormatError> {
        let Phase::Body(seg) = &mut self.phase else {
            unreachable!("called in the body phase")
        };
        let plen = seg.chunk_plain_len();
        let start = self.committed;
        let tag: [u8; TAG_LEN] = self.out[start + plen..start + plen + TAG_LEN]
            .try_into()
            .expect("16 bytes");
        let is_final = seg.is_final();
        if !seg
            .aead
            .open(seg.next, is_final, &mut self.out[start..start + plen], &tag)
        {
            return Err(FormatError::ChunkTampered {
                segment: seg.ordinal,
                chunk: seg.next,
            });
        }
        seg.next += 1;
        if is_final {
            let part_number = seg.part_number;
            self.phase = Phase::Done { part_number };
        }
        self.out.truncate(start + plen);
        self.release(plen);
        Ok(())
    }

    /// Commits the `plen` plaintext bytes just decrypted at `out[committed..]`, minus what a
    /// range read drops at its start and end.
    fn release(&mut self, plen: usize) {
        let Some(r) = &mut self.range else {
            self.committed += plen;
            return;
        };
        let start = self.committed;
        let drop = r.skip.min(plen as u64) as usize;
        r.skip -= drop as u64;
        let keep = r.take.min((plen - drop) as u64) as usize;
        r.take -= keep as u64;
        if drop > 0 {
            if start == 0 {
                self.out.advance(drop);
            } else {
                self.out.copy_within(start + drop..start + plen, start);
            }
        }
        self.out.truncate(start + keep);
        self.committed += keep;
    }
}

impl fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decryptor")
            .field("range", &self.range.is_some())
            .field("segments", &self.segments)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;
    use crate::SegmentEncryptor;

    /// Whatever the piece sizes, at most one chunk of ciphertext (and about three chunks of
    /// capacity) is retained between calls.
    #[test]
    fn retains_at_most_one_chunk() {
        let m = MasterKey::new(1, [1; 32]);
        let ring = KeyRing::single(&m);
        let obj = ObjectId {
            bucket: "b",
            key: "k",
        };
        let c = 4096usize;
        let len = 300_000usize;
        let mut e = SegmentEncryptor::new(crate::ChunkCipher::Aes256Gcm, ring.current(), obj, 0, len as u64, c as u32).unwrap();
        let mut stored = e.update(&vec![9u8; len]).unwrap().to_vec();
        stored.extend_from_slice(&e.finish().unwrap());
        for piece in [1usize, 100, 4111, 4112, 4113, 10_000, 100_000, stored.len()] {
            let mut d = Decryptor::new(ring.clone(), obj);
            let mut got = 0;
            for p in stored.chunks(piece) {
                got += d.update(p).unwrap().len();
                let held = d.out.len() - d.committed;
                assert!(held <= c + TAG_LEN, "piece {piece}: {held} held");
                assert!(
                    d.out.capacity() <= 4 * (c + TAG_LEN),
                    "piece {piece}: capacity {}",
                    d.out.capacity()
                );
            }
            got += d.finish().unwrap().len();
            assert_eq!(got, len);
        }
    }
}
