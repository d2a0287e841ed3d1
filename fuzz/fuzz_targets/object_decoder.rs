//! `s3cp_format::Decryptor`, the streaming object decryptor, with a fixed key ring and
//! object name.
//!
//! Input: byte 0 picks the mode.
//! * raw (even): bytes 1..4 choose two piece sizes, the rest is the stored object, fed
//!   whole and in pieces. Properties: no panic; both feedings reach the same verdict
//!   (same error, or both complete with the same plaintext); and when one fails, the
//!   plaintext each released is a prefix of the other's (release never depends on how
//!   the stream was cut).
//! * structured (odd): a fuzzed plaintext is encrypted with `SegmentEncryptor` as one
//!   segment or as 1..N parts, each in format version 1 or 2 (chosen by the seed), then damaged (flip, set, truncate, insert, delete,
//!   overwrite/duplicate a region) and decrypted in fuzzed pieces, expecting the object's
//!   segment count. Properties:
//!   - the plaintext released is always a prefix of the original;
//!   - decryption succeeds iff the stored bytes are unmodified, and then releases exactly
//!     the original;
//!   - all of the (non-empty) original is released only if the stored object is intact up
//!     to its end (bytes appended after it are refused afterwards);
//!   - a range read (`plan_range` + `Decryptor::for_range`) of the possibly damaged object
//!     releases a prefix of the requested plaintext, and all of it when it succeeds;
//!   - the proxy's whole-object read (length announced from the stored size with
//!     `Layout::announced`, then `Decryptor::expecting`) succeeds only with exactly the
//!     original length and bytes, and when it fails it never released all announced bytes.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use s3cp_format::{plan_range, Decryptor, FormatError, KeyRing, Layout, HEADER_LEN};
use s3cp_fuzz::object::{self as fx, CHUNK, OBJ};
use s3cp_fuzz::{apply_mutations, pseudo_bytes, split_cycling, Mutation};

/// The plaintext released, and the verdict.
struct Outcome {
    released: Vec<u8>,
    result: Result<(), FormatError>,
}

fn decrypt(ring: &KeyRing, pieces: &[&[u8]], segments: Option<u32>) -> Outcome {
    let mut d = Decryptor::new(ring.clone(), OBJ);
    let mut released = Vec::new();
    for p in pieces {
        match d.update(p) {
            Ok(b) => released.extend_from_slice(&b),
            Err(e) => {
                return Outcome {
                    released,
                    result: Err(e),
                }
            }
        }
    }
    let end = match segments {
        Some(n) => d.finish_expecting_segments(n),
        None => d.finish(),
    };
    match end {
        Ok(b) => {
            released.extend_from_slice(&b);
            Outcome {
                released,
                result: Ok(()),
            }
        }
        Err(e) => Outcome {
            released,
            result: Err(e),
        },
    }
}

fn raw(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let p1 = usize::from(u16::from_le_bytes([data[0], data[1]])) % 9000 + 1;
    let p2 = usize::from(data[2]) + 1;
    let stored = &data[3..];
    let ring = fx::ring();
    let whole = decrypt(&ring, &[stored], None);
    let split = decrypt(&ring, &split_cycling(stored, &[p1, p2]), None);
    assert_eq!(
        whole.result, split.result,
        "one piece and pieces of {p1}/{p2} disagree"
    );
    if whole.result.is_ok() {
        assert!(
            whole.released == split.released,
            "same verdict, different plaintext"
        );
    } else {
        let (a, b) = (&whole.released, &split.released);
        let n = a.len().min(b.len());
        assert!(a[..n] == b[..n], "released plaintexts diverge");
    }
}

#[derive(Arbitrary, Debug)]
struct Structured {
    plain_len: u16,
    seed: u64,
    /// 0: a single-part object; k: parts of k × 4096 bytes (k ≤ 3).
    parts: u8,
    mutations: Vec<Mutation>,
    pieces: Vec<u16>,
    range: Option<(u16, u16)>,
}

fn structured(s: Structured) {
    let plain = pseudo_bytes(s.seed, usize::from(s.plain_len) % 20_001);
    let part = match s.parts % 4 {
        0 => None,
        k => Some(usize::from(k) * CHUNK as usize),
    };
    let ring = fx::ring();
    let (stored, segments) = fx::encrypt(&ring, &plain, part, s.seed);
    let mut damaged = stored.clone();
    apply_mutations(&mut damaged, &s.mutations);
    let modified = damaged != stored;
    let sizes: Vec<usize> = s
        .pieces
        .iter()
        .take(8)
        .map(|&p| usize::from(p) % 9000 + 1)
        .collect();

    let out = decrypt(&ring, &split_cycling(&damaged, &sizes), Some(segments));
    assert!(
        plain.starts_with(&out.released),
        "released bytes that are not a prefix of the plaintext"
    );
    if modified {
        assert!(
            out.result.is_err(),
            "a modified object decrypted successfully"
        );
        if !plain.is_empty() && out.released.len() == plain.len() {
            assert!(
                damaged.starts_with(&stored),
                "all plaintext released from an object modified before its end"
            );
        }
    } else {
        assert_eq!(out.result, Ok(()), "an intact object failed to decrypt");
        assert!(
            out.released == plain,
            "an intact object decrypted to something else"
        );
    }

    // The proxy's whole-object GET: the length announced from the stored size (before any
    // byte is read), then every segment header checked against it (reader rule 5.11).
    if let Ok(layout) = Layout::announced(damaged.len() as u64, CHUNK, segments, None) {
        let announced = layout.plain_len;
        let mut d = Decryptor::expecting(ring.clone(), OBJ, layout);
        let mut released = Vec::new();
        let result = (|| {
            for p in split_cycling(&damaged, &sizes) {
                released.extend_from_slice(&d.update(p)?);
            }
            released.extend_from_slice(&d.finish()?);
            Ok::<(), FormatError>(())
        })();
        assert!(
            plain.starts_with(&released),
            "an announced read released bytes that are not a prefix of the plaintext"
        );
        match result {
            Ok(()) => assert!(
                announced == plain.len() as u64 && released == plain,
                "an announced read succeeded with another length or plaintext"
            ),
            Err(_) => assert!(
                (released.len() as u64) < announced || announced == 0,
                "a failed announced read released all {announced} announced bytes"
            ),
        }
    }

    // A range of the (possibly damaged) object, planned from the original layout.
    let Some((a, b)) = s.range else { return };
    if plain.is_empty() {
        return;
    }
    let total = plain.len() as u64;
    let (first, last) = (u64::from(a) % total, u64::from(a) % total + u64::from(b));
    let Some(plan) = plan_range(first, last, total, CHUNK, part.map(|p| p as u64)) else {
        panic!("no plan for {first}-{last} of {total} (part {part:?})");
    };
    let last = last.min(total - 1);
    let want = &plain[first as usize..=last as usize];
    let h = plan.header_offset as usize;
    let Some(header) = damaged.get(h..h + HEADER_LEN) else {
        return;
    };
    let mut released = Vec::new();
    let result = Decryptor::for_range(ring.clone(), OBJ, header, &plan).and_then(|mut d| {
        let start = (plan.cipher_start as usize).min(damaged.len());
        let end = (plan.cipher_end as usize + 1).min(damaged.len()).max(start);
        for p in split_cycling(&damaged[start..end], &sizes) {
            released.extend_from_slice(&d.update(p)?);
        }
        released.extend_from_slice(&d.finish()?);
        Ok(())
    });
    assert!(
        want.starts_with(&released),
        "range {first}-{last}: released bytes outside the requested plaintext"
    );
    if !modified {
        assert_eq!(
            result,
            Ok(()),
            "range {first}-{last} of an intact object failed"
        );
    }
    if result.is_ok() {
        assert!(
            released == want,
            "range {first}-{last} succeeded with a short or different plaintext"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel % 2 == 0 {
        raw(rest);
    } else if let Ok(s) = Structured::arbitrary_take_rest(Unstructured::new(rest)) {
        structured(s);
    }
});
