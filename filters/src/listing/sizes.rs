//! The size a listing reports for one entry, from what the listing shows (stored size,
//! ETag, LastModified, key) and, only where that is ambiguous, from a HEAD of the object.
//!
//! The plaintext size of an encrypted object is a pure function of its stored size, its
//! chunk size and its segment count (`object_plain_len`). The chunk size is in the clear
//! prefix of the object's sealed metadata, which a listing does not show. Every chunk size
//! the buckets were written with is declared (`encryption.chunk_size` and
//! `encryption.former_chunk_sizes`); where all of them give the same plaintext size (always
//! for objects of at most one chunk of the smallest size) that size is exact without a
//! request, and where they disagree the object's own metadata decides.

use s3cp_format::object_plain_len;
use time::OffsetDateTime;

use crate::passthrough::LegacyObjects;

/// Everything a listing needs to size its entries.
#[derive(Clone, Debug)]
pub struct SizeRule {
    /// The chunk size new objects (and every part of an upload in progress) are written with.
    pub current: u32,
    /// Chunk sizes used before in these buckets.
    pub former: Vec<u32>,
    /// Objects served as plaintext (`unencrypted_objects: passthrough`).
    pub legacy: Option<LegacyObjects>,
}

/// One listed object, as the listing shows it.
#[derive(Clone, Copy, Debug)]
pub struct Listed<'a> {
    pub key: &'a str,
    /// The version id of a ListObjectVersions entry (not `null`).
    pub version: Option<&'a str>,
    pub stored: u64,
    pub segments: u32,
    pub last_modified: Option<OffsetDateTime>,
}

/// What the listing reports for an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sized {
    /// An encrypted object of this plaintext size (its ETag is shown in the client form).
    Encrypted(u64),
    /// Not an object in the proxy's format: its stored size and ETag as they are (a
    /// plaintext object that predates encryption, or one the proxy refuses to serve).
    Stored,
    /// The listing alone cannot tell: ask the object (HEAD).
    Ask,
}

/// What a HEAD of the object told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Sealed metadata naming this chunk size.
    Sealed(u32),
    /// No sealed metadata (or none this proxy can read).
    NoMetadata,
    /// No answer (gone since the listing, backend error): decide without it.
    Failed,
}

impl SizeRule {
    pub fn single(chunk_size: u32) -> Self {
        Self { current: chunk_size, former: Vec::new(), legacy: None }
    }

    /// Whether some entry may need a HEAD (only then is the listing sized asynchronously).
    pub fn may_ask(&self) -> bool {
        self.former.iter().any(|&c| c != self.current) || self.legacy.as_ref().is_some_and(|l| !l.prefixes.is_empty())
    }

    /// Whether `c` is a chunk size objects in these buckets are declared to have.
    pub fn declared(&self, c: u32) -> bool {
        c == self.current || self.former.contains(&c)
    }

    /// The distinct plaintext sizes the entry has under the declared chunk sizes (the
    /// current one first).
    pub fn candidates(&self, e: &Listed<'_>) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for c in std::iter::once(self.current).chain(self.former.iter().copied()) {
            if let Some(p) = object_plain_len(e.stored, c, e.segments) {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// The entry's size from the listing alone.
    pub fn size(&self, e: &Listed<'_>) -> Sized {
        // Last written before encryption began: no object of ours can be that old (the
        // backend dates every write), so it is a legacy plaintext object.
        if self.legacy.as_ref().is_some_and(|l| l.predates(e.last_modified)) {
            return Sized::Stored;
        }
        let candidates = self.candidates(e);
        // Under a legacy prefix objects are plaintext unless the proxy wrote them since.
        let under_legacy_prefix = self.legacy.as_ref().is_some_and(|l| l.has_prefix(e.key));
        match candidates.as_slice() {
            // No encryption produces this size: whatever it is, it is not ours.
            [] => Sized::Stored,
            [only] if !under_legacy_prefix => Sized::Encrypted(*only),
            _ => Sized::Ask,
        }
    }

    /// The entry's size once the object was asked.
    pub fn size_after(&self, e: &Listed<'_>, probe: Probe) -> Sized {
        match probe {
            Probe::Sealed(c) => object_plain_len(e.stored, c, e.segments).map_or(Sized::Stored, Sized::Encrypted),
            Probe::NoMetadata => Sized::Stored,
            // The best guess without the object: the current chunk size's reading.
            Probe::Failed => self.candidates(e).first().map_or(Sized::Stored, |p| Sized::Encrypted(*p)),
        }
    }

    /// [`Self::size`] without asking (a synchronous rewrite): ambiguous entries take the
    /// best guess.
    pub fn size_without_asking(&self, e: &Listed<'_>) -> Sized {
        match self.size(e) {
            Sized::Ask => self.size_after(e, Probe::Failed),
            s => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3cp_format::object_cipher_len;

    const K16: u32 = 16 << 10;
    const K64: u32 = 64 << 10;

    fn listed(stored: u64, segments: u32) -> Listed<'static> {
        Listed { key: "k", version: None, stored, segments, last_modified: None }
    }

    fn rule() -> SizeRule {
        SizeRule { current: K16, former: vec![K64], legacy: None }
    }

    #[test]
    fn small_objects_agree_under_every_chunk_size() {
        for plain in [0u64, 1, 100, 16 << 10] {
            let stored = object_cipher_len(plain, K64, None);
            assert_eq!(rule().candidates(&listed(stored, 1)), vec![plain]);
            assert_eq!(rule().size(&listed(stored, 1)), Sized::Encrypted(plain));
        }
    }

    #[test]
    fn larger_objects_are_asked_and_sized_by_their_own_chunk_size() {
        for (plain, chunk, part) in [(200_000u64, K64, None), (200_000, K16, None), (5 << 20, K64, Some(1u64 << 20)), (3 << 20, K16, Some(1 << 20))] {
            let stored = object_cipher_len(plain, chunk, part);
            let segments = part.map_or(1, |p| plain.div_ceil(p) as u32);
            let e = listed(stored, segments);
            assert_eq!(rule().size(&e), Sized::Ask, "{plain} {chunk}");
            assert_eq!(rule().size_after(&e, Probe::Sealed(chunk)), Sized::Encrypted(plain));
            // Only the current chunk size declared: no request, the current reading.
            let only = SizeRule::single(chunk);
            assert_eq!(only.size(&e), Sized::Encrypted(plain));
            assert!(!only.may_ask());
        }
    }

    #[test]
    fn impossible_sizes_and_plain_objects_keep_their_stored_size() {
        assert_eq!(rule().size(&listed(50, 1)), Sized::Stored);
        assert_eq!(rule().size_after(&listed(300_000, 1), Probe::NoMetadata), Sized::Stored);
    }

    #[test]
    fn legacy_objects_keep_their_stored_size() {
        let legacy = LegacyObjects::from_config(Some("2026-01-01T00:00:00Z"), vec!["old/".into()]).unwrap();
        let r = SizeRule { current: K64, former: vec![], legacy: Some(legacy) };
        assert!(r.may_ask());
        let before = crate::passthrough::listing_date("2025-12-31T23:59:59.000Z");
        let after = crate::passthrough::listing_date("2026-01-01T00:00:01.000Z");
        let e = |key, last_modified| Listed { key, version: None, stored: 1000, segments: 1, last_modified };
        assert_eq!(r.size(&e("x", before)), Sized::Stored);
        assert_eq!(r.size(&e("x", after)), Sized::Encrypted(1000 - 124));
        // Under a legacy prefix the object may have been written through the proxy since.
        assert_eq!(r.size(&e("old/x", after)), Sized::Ask);
        assert_eq!(r.size_after(&e("old/x", after), Probe::NoMetadata), Sized::Stored);
        assert_eq!(r.size_after(&e("old/x", after), Probe::Sealed(K64)), Sized::Encrypted(1000 - 124));
        assert_eq!(r.size(&e("old/x", after).clone_with_stored(10)), Sized::Stored);
    }

    impl Listed<'_> {
        fn clone_with_stored(mut self, stored: u64) -> Self {
            self.stored = stored;
            self
        }
    }
}
