//! `filters::listing::rewrite_listing(xml, 65536)`: the ListObjects / ListParts rewrite.
//!
//! Input: byte 0 picks the mode.
//! * raw (even): the rest is the backend's answer as-is. Properties: no panic, and when
//!   the rewrite succeeds its output can itself be rewritten (what the proxy sends stays
//!   parseable XML). The same answer is also normalised (`listing::normalize`, as one of
//!   the five listings, picked by byte 0): no panic, and a normalised answer normalised
//!   again is unchanged (every field it filled now counts as sent).
//! * structured (odd): `arbitrary` builds a ListBucketResult (V1 or V2) or ListPartsResult
//!   with entries (keys, sizes, ETags, other fields in varying order), serialized to XML,
//!   rewritten, and parsed back. Properties:
//!   - entries, their keys / part numbers and their order are preserved, as are the
//!     fields outside entries (bucket name, prefix, common prefixes);
//!   - an object's `<Size>` becomes `object_plain_len(size, 65536, segments)` when that is
//!     `Some` (segments from the ETag's `-N`), and its ETag the client form (`…-1` for a
//!     single-part ETag); otherwise both stay; a part's size becomes
//!     `object_plain_len(size, 65536, 1)` when `Some` and its ETag stays;
//!   - sizes of objects that really were written in the format (ciphertext length of a
//!     plaintext length and part layout) come back as exactly that plaintext length.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use filters::etag::{client_etag, segments_from_etag};
use filters::listing::{normalize, rewrite_listing, ListingRequest};
use filters::request::Operation;
use filters::xml::escape;
use libfuzzer_sys::fuzz_target;
use quick_xml::events::Event;
use quick_xml::Reader;
use s3cp_format::{object_cipher_len, object_plain_len, MAX_PART_NUMBER};

const CHUNK: u32 = 65536;

#[derive(Arbitrary, Debug)]
enum Etag {
    /// A plain MD5 (single-part upload).
    Md5([u8; 16]),
    /// A multipart ETag `md5-N`.
    Multipart([u8; 16], u16),
    /// Anything else a backend might send.
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Size {
    Raw(u64),
    /// The ciphertext length of an object of `plain` bytes written as one segment, or as
    /// parts of `part_chunks` × 64 KiB (the multipart layout rule); the ETag then says how
    /// many segments it has.
    Layout {
        plain: u32,
        part_chunks: Option<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Entry {
    key: String,
    size: Size,
    etag: Etag,
    /// Quotes as `&quot;` (Amazon) rather than raw `"` (other backends).
    entity_quotes: bool,
    size_first: bool,
    omit_etag: bool,
    storage_class: bool,
    part_number: u16,
}

#[derive(Arbitrary, Debug)]
enum Kind {
    V1,
    V2,
    Parts,
}

#[derive(Arbitrary, Debug)]
struct Listing {
    kind: Kind,
    declaration: bool,
    name: String,
    prefix: String,
    entries: Vec<Entry>,
    common_prefixes: Vec<String>,
    truncated: bool,
}

/// What one entry must look like after the rewrite.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    id: String,
    size: String,
    etag: Option<String>,
}

fn md5_hex(b: &[u8; 16]) -> String {
    hex::encode(b)
}

/// Serializes one entry; returns its XML and the expected rewritten entry.
fn entry_xml(e: &Entry, parts: bool) -> (String, Expected) {
    // The backend's ETag text and the number of segments this harness knows it stands for.
    let (size, etag, known_segments, exact_plain) = match &e.size {
        Size::Raw(s) => {
            let (etag, segs) = match &e.etag {
                Etag::Md5(m) => (format!("\"{}\"", md5_hex(m)), Some(1)),
                Etag::Multipart(m, n) => (
                    format!("\"{}-{n}\"", md5_hex(m)),
                    Some(u32::from(*n).max(1)),
                ),
                Etag::Other(s) => (s.clone(), None),
            };
            (*s, etag, segs, None)
        }
        Size::Layout { plain, part_chunks } => {
            let plain = u64::from(*plain);
            let part = part_chunks.map(|k| u64::from(k.max(1)) * u64::from(CHUNK));
            let segments = match part {
                Some(p) if plain > p => plain.div_ceil(p),
                _ => 1,
            };
            let md5 = match &e.etag {
                Etag::Md5(m) | Etag::Multipart(m, _) => md5_hex(m),
                Etag::Other(_) => "0123456789abcdef0123456789abcdef".into(),
            };
            let etag = if segments > 1 {
                format!("\"{md5}-{segments}\"")
            } else {
                format!("\"{md5}\"")
            };
            let cipher = object_cipher_len(plain, CHUNK, part);
            let exact = (segments <= u64::from(MAX_PART_NUMBER)).then_some(plain);
            (cipher, etag, Some(segments as u32), exact)
        }
    };
    let with_quotes = |t: &str| {
        if e.entity_quotes {
            escape(t)
        } else {
            escape(t).replace("&quot;", "\"")
        }
    };

    let mut x = String::new();
    let expected = if parts {
        let plain = object_plain_len(size, CHUNK, 1);
        let new_size = plain.map_or(size.to_string(), |p| p.to_string());
        x.push_str(&format!("<Part><PartNumber>{}</PartNumber><LastModified>2026-01-01T00:00:00.000Z</LastModified>", e.part_number));
        let size_el = format!("<Size>{size}</Size>");
        let etag_el = format!("<ETag>{}</ETag>", with_quotes(&etag));
        if e.size_first {
            x.push_str(&size_el);
        }
        if !e.omit_etag {
            x.push_str(&etag_el);
        }
        if !e.size_first {
            x.push_str(&size_el);
        }
        x.push_str("</Part>");
        Expected {
            id: e.part_number.to_string(),
            size: new_size,
            etag: (!e.omit_etag).then(|| etag.clone()),
        }
    } else {
        let segments = segments_from_etag(&etag);
        if let Some(k) = known_segments {
            assert_eq!(segments, k, "segments_from_etag({etag:?})");
        }
        // An empty `<ETag></ETag>` carries no text: the rewrite treats it as absent.
        let no_etag = e.omit_etag || etag.is_empty();
        let plain = if no_etag {
            None
        } else {
            object_plain_len(size, CHUNK, segments)
        };
        if let (Some(want), Some(got)) = (exact_plain, plain) {
            assert_eq!(got, want, "object_plain_len of a real layout");
        }
        if exact_plain.is_some() && !no_etag {
            assert!(
                plain.is_some(),
                "object_plain_len refused the real layout {:?}",
                e.size
            );
        }
        let (new_size, new_etag) = match plain {
            Some(p) => (p.to_string(), client_etag(&etag, None)),
            None => (size.to_string(), etag.clone()),
        };
        x.push_str(&format!(
            "<Contents><Key>{}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>",
            escape(&e.key)
        ));
        let size_el = format!("<Size>{size}</Size>");
        let etag_el = format!("<ETag>{}</ETag>", with_quotes(&etag));
        if e.size_first {
            x.push_str(&size_el);
        }
        if !e.omit_etag {
            x.push_str(&etag_el);
        }
        if !e.size_first {
            x.push_str(&size_el);
        }
        if e.storage_class {
            x.push_str("<StorageClass>STANDARD</StorageClass>");
        }
        x.push_str("</Contents>");
        Expected {
            id: e.key.clone(),
            size: new_size,
            etag: (!e.omit_etag).then_some(new_etag),
        }
    };
    (x, expected)
}

/// Entries (id, Size, ETag) and the texts of `Name`, `Prefix` and common prefixes, read
/// back from a rewritten answer.
#[derive(Debug, Default)]
struct ParsedBack {
    entries: Vec<Expected>,
    outside: Vec<String>,
}

fn parse_back(xml: &[u8]) -> ParsedBack {
    let mut reader = Reader::from_reader(xml);
    let mut out = ParsedBack::default();
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut buf = Vec::new();
    let mut current: Option<Expected> = None;
    loop {
        let ev = reader
            .read_event_into(&mut buf)
            .expect("the rewritten listing parses");
        match ev {
            Event::Eof => break,
            Event::Start(s) => {
                let name = s.name().as_ref().to_vec();
                if path.len() == 1 && (name == b"Contents" || name == b"Part") {
                    current = Some(Expected {
                        id: String::new(),
                        size: String::new(),
                        etag: None,
                    });
                }
                if let Some(c) = current
                    .as_mut()
                    .filter(|_| path.len() == 2 && name == b"ETag")
                {
                    c.etag = Some(String::new());
                }
                path.push(name);
            }
            Event::End(_) => {
                let name = path.pop().expect("balanced");
                if path.len() == 1 && (name == b"Contents" || name == b"Part") {
                    out.entries.push(current.take().expect("in an entry"));
                }
            }
            Event::Text(t) => {
                let text = t.unescape().expect("text unescapes").into_owned();
                let last = path.last().map(Vec::as_slice);
                match (&mut current, last) {
                    (Some(c), Some(b"Key" | b"PartNumber")) if path.len() == 3 => {
                        c.id.push_str(&text)
                    }
                    (Some(c), Some(b"Size")) if path.len() == 3 => c.size.push_str(&text),
                    (Some(c), Some(b"ETag")) if path.len() == 3 => {
                        c.etag.get_or_insert_with(String::new).push_str(&text)
                    }
                    (None, Some(b"Name" | b"Prefix")) => out.outside.push(text),
                    _ => {}
                }
            }
            _ => {}
        }
        buf.clear();
    }
    out
}

fn structured(data: &[u8]) -> arbitrary::Result<()> {
    let l = Listing::arbitrary_take_rest(Unstructured::new(data))?;
    let parts = matches!(l.kind, Kind::Parts);
    let mut xml = String::new();
    if l.declaration {
        xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    }
    let root = if parts {
        "ListPartsResult"
    } else {
        "ListBucketResult"
    };
    xml.push_str(&format!(
        "<{root} xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
    ));
    let mut outside = vec![l.name.clone()];
    xml.push_str(&format!("<Name>{}</Name>", escape(&l.name)));
    if parts {
        xml.push_str("<Key>k</Key><UploadId>u</UploadId>");
    } else {
        xml.push_str(&format!("<Prefix>{}</Prefix>", escape(&l.prefix)));
        outside.push(l.prefix.clone());
        if matches!(l.kind, Kind::V2) {
            xml.push_str(&format!(
                "<KeyCount>{}</KeyCount><MaxKeys>1000</MaxKeys>",
                l.entries.len()
            ));
        }
    }
    xml.push_str(&format!("<IsTruncated>{}</IsTruncated>", l.truncated));
    let mut expected = Vec::new();
    for e in l.entries.iter().take(64) {
        let (x, exp) = entry_xml(e, parts);
        xml.push_str(&x);
        expected.push(exp);
    }
    if !parts {
        for p in l.common_prefixes.iter().take(8) {
            xml.push_str(&format!(
                "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
                escape(p)
            ));
            outside.push(p.clone());
        }
    }
    xml.push_str(&format!("</{root}>"));

    let out = rewrite_listing(xml.as_bytes(), CHUNK).expect("a well-formed listing is rewritten");
    let back = parse_back(&out);
    // Empty texts produce no Text event: compare with empty strings dropped.
    let outside_want: Vec<&String> = outside.iter().filter(|s| !s.is_empty()).collect();
    let outside_got: Vec<&String> = back.outside.iter().filter(|s| !s.is_empty()).collect();
    assert_eq!(
        outside_got, outside_want,
        "fields outside the entries changed"
    );
    assert_eq!(
        back.entries.len(),
        expected.len(),
        "entries added or dropped"
    );
    for (i, (got, want)) in back.entries.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "entry {i}");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel % 2 == 0 {
        let op = [
            Operation::ListObjectsV2,
            Operation::ListObjectsV1,
            Operation::ListObjectVersions,
            Operation::ListParts,
            Operation::ListMultipartUploads,
        ][usize::from(sel / 2) % 5];
        let query = [("prefix".to_string(), "p/".to_string()), ("max-keys".to_string(), "2".to_string()), ("uploadId".to_string(), "u".to_string())];
        let req = ListingRequest { op, bucket: "b", key: Some("k"), query: &query };
        if let Ok(once) = normalize(rest, &req) {
            let twice = normalize(&once, &req).expect("a normalised listing parses");
            assert_eq!(twice, once, "normalising is not idempotent for {op:?}: {:?}", String::from_utf8_lossy(rest));
        }
        if let Ok(out) = rewrite_listing(rest, CHUNK) {
            if let Err(e) = rewrite_listing(&out, CHUNK) {
                panic!(
                    "the rewritten listing no longer parses: {e:?}\ninput:  {:?}\noutput: {:?}",
                    String::from_utf8_lossy(rest),
                    String::from_utf8_lossy(&out)
                );
            }
        }
    } else {
        let _ = structured(rest);
    }
});
