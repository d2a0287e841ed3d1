//! What earlier reads established about recently read object versions, so that the next
//! Range or `partNumber` read of the same version is one backend request instead of one
//! after its header probes (issue 14, goal 1).
//!
//! An entry holds only authenticated facts about one stored version, named by the backend's
//! ETag: the layout its first (and, for a multipart object, last) segment header confirmed,
//! and the segment headers read so far. A plan made from an entry is sent with `If-Match:
//! <that ETag>`, and its answer must carry the same ETag: an object replaced meanwhile (by
//! this replica or another one) answers 412 or another ETag, and the read is planned anew
//! from fresh probes. Every header is authenticated again when its segment is decrypted, so
//! an entry can save requests but never let a byte through unchecked.
//!
//! This is a cache, not shared state: each replica keeps its own, bounded by [`CAPACITY`]
//! entries (least recently used go first), and a replica that has never seen an object
//! reads it as before. Writes through this replica forget the name at once.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use bytes::Bytes;
use lru::LruCache;
use s3cp_format::{Layout, ObjectId};

/// Object versions remembered (about 400 bytes each with a typical key).
pub const CAPACITY: usize = 2048;

/// Segment headers kept per version besides the first (108 bytes each).
const MAX_HEADERS: usize = 4;

/// Object keys longer than this are not remembered (the entry would be mostly name).
const MAX_NAME: usize = 512;

/// One stored object version as its authenticated headers describe it.
#[derive(Clone, Debug)]
pub struct Known {
    pub backend_etag: String,
    /// The announced layout, its part length learned from the first header.
    pub layout: Layout,
    /// Segment 0's header.
    pub first_header: Bytes,
    /// The last segment's header was checked against the layout (always true for a single
    /// segment): the total a read announces rests on it.
    pub last_checked: bool,
    /// Other segments' headers, authenticated when they were read.
    headers: Vec<(u32, Bytes)>,
}

impl Known {
    pub fn new(backend_etag: String, layout: Layout, first_header: Bytes) -> Self {
        let last_checked = layout.segments <= 1;
        Self { backend_etag, layout, first_header, last_checked, headers: Vec::new() }
    }

    /// The stored length of this version (every segment's header and chunks), which every
    /// answer for it must show.
    pub fn stored_len(&self) -> Option<u64> {
        let last = self.layout.segments.checked_sub(1)?;
        let tail = s3cp_format::segment_cipher_len(self.layout.segment_len(last)?, self.layout.chunk_size);
        self.layout.segment_offset(last)?.checked_add(tail)
    }

    /// The header of segment `ordinal`, if it was read.
    pub fn header(&self, ordinal: u32) -> Option<&Bytes> {
        if ordinal == 0 {
            return Some(&self.first_header);
        }
        self.headers.iter().find(|(o, _)| *o == ordinal).map(|(_, h)| h)
    }

    /// Records the authenticated header of segment `ordinal`.
    pub fn add_header(&mut self, ordinal: u32, header: Bytes) {
        if ordinal + 1 == self.layout.segments {
            self.last_checked = true;
        }
        if ordinal == 0 || self.header(ordinal).is_some() {
            return;
        }
        if self.headers.len() == MAX_HEADERS {
            self.headers.remove(0);
        }
        self.headers.push((ordinal, header));
    }
}

#[derive(Hash, PartialEq, Eq)]
struct Name {
    bucket: String,
    key: String,
    version: Option<String>,
}

impl Name {
    fn of(obj: ObjectId<'_>, version: Option<&str>) -> Option<Self> {
        (obj.key.len() <= MAX_NAME).then(|| Self { bucket: obj.bucket.to_string(), key: obj.key.to_string(), version: version.map(str::to_string) })
    }
}

/// The remembered object versions of this replica.
pub struct KnownObjects {
    entries: Mutex<LruCache<Name, Known>>,
}

impl Default for KnownObjects {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl KnownObjects {
    pub fn with_capacity(capacity: usize) -> Self {
        Self { entries: Mutex::new(LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("at least 1"))) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<Name, Known>> {
        // A poisoned lock only means a panic while holding plain data.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is remembered of `obj` (the version last seen, when `version` is `None`).
    pub fn get(&self, obj: ObjectId<'_>, version: Option<&str>) -> Option<Known> {
        self.with(obj, version, Known::clone)
    }

    /// `f` of what is remembered of `obj`, looked at in place (no copy of the entry).
    pub fn with<R>(&self, obj: ObjectId<'_>, version: Option<&str>, f: impl FnOnce(&Known) -> R) -> Option<R> {
        let name = Name::of(obj, version)?;
        self.lock().get(&name).map(f)
    }

    pub fn remember(&self, obj: ObjectId<'_>, version: Option<&str>, known: Known) {
        if let Some(name) = Name::of(obj, version) {
            self.lock().put(name, known);
        }
    }

    /// Forgets `obj` (every version named without a version id; a version id names one
    /// immutable version, which a write cannot change).
    pub fn forget(&self, obj: ObjectId<'_>, version: Option<&str>) {
        if let Some(name) = Name::of(obj, version) {
            self.lock().pop(&name);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(segments: u32) -> Layout {
        Layout { plain_len: u64::from(segments) * (5 << 20) - 1, chunk_size: 65_536, segments, part_len: Some(5 << 20) }
    }

    #[test]
    fn remembers_per_name_and_version_and_forgets() {
        let known = KnownObjects::with_capacity(2);
        let a = ObjectId { bucket: "b", key: "a" };
        known.remember(a, None, Known::new("\"e1\"".into(), layout(1), Bytes::from_static(b"h0")));
        known.remember(a, Some("v1"), Known::new("\"e0\"".into(), layout(1), Bytes::from_static(b"h0")));
        assert_eq!(known.get(a, None).unwrap().backend_etag, "\"e1\"");
        assert_eq!(known.get(a, Some("v1")).unwrap().backend_etag, "\"e0\"");
        assert!(known.get(ObjectId { bucket: "c", key: "a" }, None).is_none());
        // Bounded: the least recently used goes first.
        known.get(a, None);
        known.remember(ObjectId { bucket: "b", key: "z" }, None, Known::new("\"e2\"".into(), layout(1), Bytes::new()));
        assert!(known.get(a, Some("v1")).is_none());
        assert_eq!(known.len(), 2);
        known.forget(a, None);
        assert!(known.get(a, None).is_none());
        // Overlong keys are not remembered.
        let long = "k".repeat(MAX_NAME + 1);
        known.remember(ObjectId { bucket: "b", key: &long }, None, Known::new("\"e\"".into(), layout(1), Bytes::new()));
        assert!(known.get(ObjectId { bucket: "b", key: &long }, None).is_none());
    }

    #[test]
    fn keeps_a_few_segment_headers_and_notes_the_last() {
        let mut k = Known::new("\"e-3\"".into(), layout(3), Bytes::from_static(b"h0"));
        assert!(!k.last_checked);
        assert_eq!(k.header(0).unwrap().as_ref(), b"h0");
        k.add_header(1, Bytes::from_static(b"h1"));
        assert!(!k.last_checked);
        k.add_header(2, Bytes::from_static(b"h2"));
        assert!(k.last_checked);
        assert_eq!(k.header(1).unwrap().as_ref(), b"h1");
        let mut many = Known::new("\"e-9\"".into(), layout(9), Bytes::new());
        for s in 1..=8 {
            many.add_header(s, Bytes::from(vec![s as u8]));
        }
        assert!(many.header(4).is_none() && many.header(5).is_some() && many.header(8).is_some());
        assert!(Known::new("\"e\"".into(), layout(1), Bytes::new()).last_checked);
    }

    #[test]
    fn the_stored_length_follows_the_layout() {
        let full = 65_536 + 16;
        // One segment of 1 MiB + 10 bytes: a header, 16 full chunks and one of 10 bytes.
        let one = Layout { plain_len: (1 << 20) + 10, chunk_size: 65_536, segments: 1, part_len: Some((1 << 20) + 10) };
        assert_eq!(Known::new("\"e\"".into(), one, Bytes::new()).stored_len(), Some(108 + 16 * full + 10 + 16));
        // Three parts of 5 MiB, 5 MiB and 1000 bytes.
        let three = Layout { plain_len: 2 * (5 << 20) + 1000, chunk_size: 65_536, segments: 3, part_len: Some(5 << 20) };
        assert_eq!(Known::new("\"e-3\"".into(), three, Bytes::new()).stored_len(), Some(2 * (108 + 80 * full) + 108 + 1000 + 16));
    }
}
