//! Test vectors: `format/tests/vectors/*` (CCTV-like files) and the labelled vectors in
//! `docs/object-format.md`.
//!
//! * `vector_files_are_current` rebuilds every vector from fixed keys, data keys and nonces
//!   and compares the files byte for byte (`S3CP_WRITE_VECTORS=1` rewrites them instead).
//! * `run_vector_files` reads every file like a third-party reader would and checks the
//!   expectation and the SHA-256 of the plaintext released before the end or the error.
//! * `spec_matches_vectors` checks the values printed in the spec.
//!
//! File format: `name: value` lines, a blank line, the stored object in hex (whitespace
//! ignored). Fields read by the runner: `expect` (success | header failure | payload failure |
//! wrong key | truncated | trailing data), `payload` (SHA-256 of the plaintext a reader that
//! releases every chunk as soon as it is authenticated has released when it succeeds or
//! fails), `master key`, `key id`, `bucket`, `key`, `segments` (the count the reader expects,
//! as from the backend ETag), optional `metadata`/`metadata payload`. Other fields describe how
//! the vector was made.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use s3cp_format::*;
use sha2::{Digest, Sha256};

const MASTER: [u8; 32] = seq(0x00);
const WRONG_MASTER: [u8; 32] = seq(0xe0);
const KEY_ID: u32 = 7;
const BUCKET: &str = "example-bucket";
const KEY: &str = "docs/report.txt";
const OBJ: ObjectId<'static> = ObjectId {
    bucket: BUCKET,
    key: KEY,
};

const fn seq<const N: usize>(start: u8) -> [u8; N] {
    let mut a = [0u8; N];
    let mut i = 0;
    while i < N {
        a[i] = start.wrapping_add(i as u8);
        i += 1;
    }
    a
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Plaintext of the multi-chunk vectors: byte i is i mod 251.
fn counting(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

const HELLO: &[u8] = b"Hello from s3-crypt-proxy!\n";
const META_PAYLOAD: &[u8] =
    br#"{"h":[["content-type","text/plain"],["x-amz-meta-author","alice"]]}"#;

const V1: ChunkCipher = ChunkCipher::XChaCha20Poly1305;
const V2: ChunkCipher = ChunkCipher::Aes256Gcm;

/// One version 1 segment with a fixed data key and wrap nonce.
fn segment(part: u32, plain: &[u8], chunk: u32, dek: [u8; 32], nonce: [u8; 24]) -> Vec<u8> {
    segment_with(V1, part, plain, chunk, dek, nonce)
}

/// One segment of the given chunk cipher (format version) with a fixed data key and wrap nonce.
fn segment_with(
    cipher: ChunkCipher,
    part: u32,
    plain: &[u8],
    chunk: u32,
    dek: [u8; 32],
    nonce: [u8; 24],
) -> Vec<u8> {
    let keys = DerivedKeys::derive(&MasterKey::new(KEY_ID, MASTER));
    let mut e = SegmentEncryptor::with_fixed_randomness(
        cipher,
        &keys,
        OBJ,
        part,
        plain.len() as u64,
        chunk,
        &dek,
        nonce,
    )
    .unwrap();
    let mut v = e.update(plain).unwrap().to_vec();
    v.extend_from_slice(&e.finish().unwrap());
    v
}

struct Vector {
    name: &'static str,
    comment: &'static str,
    expect: &'static str,
    /// Plaintext released before success or failure.
    released: Vec<u8>,
    reader_key: [u8; 32],
    bucket: &'static str,
    key: &'static str,
    segments: u32,
    /// Descriptive fields (how it was made).
    info: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Vector {
    fn render(&self) -> String {
        let mut s = String::new();
        let mut field = |k: &str, v: &str| writeln!(s, "{k}: {v}").unwrap();
        field("expect", self.expect);
        field("payload", &sha(&self.released));
        field("master key", &hex::encode(self.reader_key));
        field("key id", &KEY_ID.to_string());
        field("bucket", self.bucket);
        field("key", self.key);
        field("segments", &self.segments.to_string());
        field("comment", self.comment);
        for (k, v) in &self.info {
            field(k, v);
        }
        s.push('\n');
        for line in self.body.chunks(64) {
            s.push_str(&hex::encode(line));
            s.push('\n');
        }
        s
    }
}

fn base(
    name: &'static str,
    comment: &'static str,
    expect: &'static str,
    released: Vec<u8>,
    body: Vec<u8>,
) -> Vector {
    Vector {
        name,
        comment,
        expect,
        released,
        reader_key: MASTER,
        bucket: BUCKET,
        key: KEY,
        segments: 1,
        info: vec![],
        body,
    }
}

fn describe(
    chunk: u32,
    parts: &[u32],
    deks: &[[u8; 32]],
    nonces: &[[u8; 24]],
    plaintext: &str,
) -> Vec<(&'static str, String)> {
    let join = |v: Vec<String>| v.join(" ");
    vec![
        ("chunk size", chunk.to_string()),
        (
            "part number",
            join(parts.iter().map(|p| p.to_string()).collect()),
        ),
        ("dek", join(deks.iter().map(hex::encode).collect())),
        ("wrap nonce", join(nonces.iter().map(hex::encode).collect())),
        ("plaintext", plaintext.to_string()),
    ]
}

const DEK1: [u8; 32] = seq(0x40);
const NONCE1: [u8; 24] = seq(0x60);
const DEK2: [u8; 32] = seq(0x80);
const NONCE2: [u8; 24] = seq(0xa0);
const META_NONCE: [u8; 24] = seq(0xc0);

fn all_vectors() -> Vec<Vector> {
    let mut v = Vec::new();
    let c64 = DEFAULT_CHUNK_SIZE;

    // 1. empty object
    let body = segment(0, b"", c64, DEK1, NONCE1);
    let mut x = base(
        "empty",
        "empty single-part object: header and one empty final chunk",
        "success",
        vec![],
        body,
    );
    x.info = describe(c64, &[0], &[DEK1], &[NONCE1], "(empty)");
    v.push(x);

    // 2. one partial chunk
    let hello = segment(0, HELLO, c64, DEK1, NONCE1);
    let mut x = base(
        "partial_chunk",
        "single-part object shorter than one chunk",
        "success",
        HELLO.to_vec(),
        hello.clone(),
    );
    x.info = describe(
        c64,
        &[0],
        &[DEK1],
        &[NONCE1],
        &format!("{:?}", std::str::from_utf8(HELLO).unwrap()),
    );
    v.push(x);

    // 3. several chunks of 4096, with sealed metadata
    let plain = counting(10_000);
    let chunks = segment(0, &plain, 4096, DEK1, NONCE1);
    let keys = DerivedKeys::derive(&MasterKey::new(KEY_ID, MASTER));
    let sealed = meta::seal_with_nonce(&keys, OBJ, 4096, META_PAYLOAD, META_NONCE).unwrap();
    let plain_desc = "10000 bytes, byte i = i mod 251";
    let info = || {
        let mut i = describe(4096, &[0], &[DEK1], &[NONCE1], plain_desc);
        i.push(("metadata nonce", hex::encode(META_NONCE)));
        i.push((
            "metadata payload",
            String::from_utf8(META_PAYLOAD.to_vec()).unwrap(),
        ));
        i.push(("metadata", sealed.clone()));
        i
    };
    let mut x = base(
        "chunks_4096",
        "three chunks of chunk size 4096 (4096, 4096, 1808) and the sealed metadata header",
        "success",
        plain.clone(),
        chunks.clone(),
    );
    x.info = info();
    v.push(x);

    // 4. multipart: two parts of 8192 and 1808 bytes
    let p1 = segment(1, &plain[..8192], 4096, DEK1, NONCE1);
    let p2 = segment(2, &plain[8192..], 4096, DEK2, NONCE2);
    let mut x = base(
        "multipart",
        "two-part multipart upload (parts of 8192 and 1808 bytes); each part has its own data key",
        "success",
        plain.clone(),
        [&p1[..], &p2].concat(),
    );
    x.segments = 2;
    x.info = describe(4096, &[1, 2], &[DEK1, DEK2], &[NONCE1, NONCE2], plain_desc);
    v.push(x);

    // Negative vectors, all derived from the ones above.
    let ct = 4096 + TAG_LEN;
    let c = |i: usize| HEADER_LEN + i * ct..(HEADER_LEN + (i + 1) * ct).min(chunks.len());
    let neg = |name, comment, expect, released: Vec<u8>, body: Vec<u8>| {
        let mut x = base(name, comment, expect, released, body);
        x.info = describe(4096, &[0], &[DEK1], &[NONCE1], plain_desc);
        x
    };
    let mut b = chunks.clone();
    b[c(1).start + 100] ^= 0x01;
    v.push(neg(
        "chunk_bit_flip",
        "chunks_4096 with bit 0 of byte 100 of chunk 1 flipped",
        "payload failure",
        plain[..4096].to_vec(),
        b,
    ));
    let mut b = chunks.clone();
    *b.last_mut().unwrap() ^= 0x80;
    v.push(neg(
        "tag_bit_flip",
        "chunks_4096 with the top bit of the final chunk's last tag byte flipped",
        "payload failure",
        plain[..8192].to_vec(),
        b,
    ));
    let mut b = chunks.clone();
    b[40] ^= 0x01;
    v.push(neg(
        "header_bit_flip",
        "chunks_4096 with a bit of the wrap nonce (header byte 40) flipped",
        "header failure",
        vec![],
        b,
    ));
    let mut b = chunks.clone();
    b[20..28].copy_from_slice(&8192u64.to_be_bytes());
    v.push(neg(
        "header_length_changed",
        "chunks_4096 with plain_len rewritten to 8192 (the header is authenticated)",
        "header failure",
        vec![],
        b,
    ));
    v.push(neg(
        "truncated_mid_chunk",
        "chunks_4096 cut 2000 bytes into chunk 1",
        "truncated",
        plain[..4096].to_vec(),
        chunks[..c(1).start + 2000].to_vec(),
    ));
    v.push(neg(
        "dropped_final_chunk",
        "chunks_4096 without its final chunk (ends on a chunk boundary)",
        "truncated",
        plain[..8192].to_vec(),
        chunks[..c(2).start].to_vec(),
    ));
    let b = [
        &chunks[..HEADER_LEN],
        &chunks[c(1)],
        &chunks[c(0)],
        &chunks[c(2)],
    ]
    .concat();
    v.push(neg(
        "swapped_chunks",
        "chunks_4096 with chunks 0 and 1 swapped",
        "payload failure",
        vec![],
        b,
    ));
    let mut b = chunks[..c(1).end].to_vec();
    b.extend_from_slice(&chunks[c(1)]);
    b.extend_from_slice(&chunks[c(2)]);
    v.push(neg(
        "duplicated_chunk",
        "chunks_4096 with chunk 1 repeated",
        "payload failure",
        plain[..8192].to_vec(),
        b,
    ));

    let mut x = base("wrong_key", "partial_chunk read with another master key under the same key id (key check value mismatch)", "wrong key", vec![], hello.clone());
    x.reader_key = WRONG_MASTER;
    x.info = describe(c64, &[0], &[DEK1], &[NONCE1], "as partial_chunk");
    v.push(x);
    let mut x = base(
        "moved",
        "partial_chunk stored under another key name without re-wrapping",
        "header failure",
        vec![],
        hello.clone(),
    );
    x.key = "docs/report-copy.txt";
    x.info = describe(c64, &[0], &[DEK1], &[NONCE1], "as partial_chunk");
    v.push(x);
    let mut x = base(
        "moved_bucket",
        "partial_chunk stored in another bucket without re-wrapping",
        "header failure",
        vec![],
        hello.clone(),
    );
    x.bucket = "other-bucket";
    x.info = describe(c64, &[0], &[DEK1], &[NONCE1], "as partial_chunk");
    v.push(x);
    let mut x = base(
        "trailing_data",
        "partial_chunk followed by one zero byte",
        "trailing data",
        HELLO.to_vec(),
        [&hello[..], &[0]].concat(),
    );
    x.info = describe(c64, &[0], &[DEK1], &[NONCE1], "as partial_chunk");
    v.push(x);

    let mp = |name, comment, expect, released: Vec<u8>, body: Vec<u8>| {
        let mut x = base(name, comment, expect, released, body);
        x.segments = 2;
        x.info = describe(4096, &[1, 2], &[DEK1, DEK2], &[NONCE1, NONCE2], plain_desc);
        x
    };
    v.push(mp(
        "multipart_swapped",
        "multipart with its segments in the order 2, 1",
        "header failure",
        vec![],
        [&p2[..], &p1].concat(),
    ));
    v.push(mp(
        "multipart_missing_part",
        "multipart without its last part; only the expected segment count (ETag -2) reveals it",
        "truncated",
        plain[..8192].to_vec(),
        p1.clone(),
    ));

    // Format version 2: AES-256-GCM chunks, same keys, nonces and plaintexts as above.
    let v2 = |name, comment, plain: &[u8], chunk: u32, desc: String| {
        let body = segment_with(V2, 0, plain, chunk, DEK1, NONCE1);
        let mut x = base(name, comment, "success", plain.to_vec(), body);
        x.info = describe(chunk, &[0], &[DEK1], &[NONCE1], &desc);
        x.info.insert(0, ("version", "2".into()));
        x
    };
    v.push(v2(
        "v2_empty",
        "format version 2 (AES-256-GCM chunks): empty single-part object",
        b"",
        c64,
        "(empty)".into(),
    ));
    v.push(v2(
        "v2_partial_chunk",
        "format version 2: single-part object shorter than one chunk",
        HELLO,
        c64,
        format!("{:?}", std::str::from_utf8(HELLO).unwrap()),
    ));
    let v2_chunks = v2(
        "v2_chunks_4096",
        "format version 2: three chunks of chunk size 4096 (4096, 4096, 1808)",
        &plain,
        4096,
        plain_desc.into(),
    );
    let v2_body = v2_chunks.body.clone();
    v.push(v2_chunks);
    // Parts written by proxies with different settings: part 1 version 1, part 2 version 2.
    let q2 = segment_with(V2, 2, &plain[8192..], 4096, DEK2, NONCE2);
    let mut x = base(
        "multipart_mixed",
        "two-part multipart upload, part 1 in version 1 (XChaCha20-Poly1305), part 2 in version 2 (AES-256-GCM)",
        "success",
        plain.clone(),
        [&p1[..], &q2].concat(),
    );
    x.segments = 2;
    x.info = describe(4096, &[1, 2], &[DEK1, DEK2], &[NONCE1, NONCE2], plain_desc);
    x.info.insert(0, ("version", "1 2".into()));
    v.push(x);
    // The version byte is authenticated: flipped, the header no longer opens.
    let mut b = v2_body.clone();
    b[7] = 1;
    let mut x = base(
        "v2_version_flipped",
        "v2_chunks_4096 with its version byte changed to 1 (the header's associated data changes)",
        "header failure",
        vec![],
        b,
    );
    x.info = describe(4096, &[0], &[DEK1], &[NONCE1], plain_desc);
    x.info.insert(0, ("version", "2".into()));
    v.push(x);
    let mut b = chunks.clone();
    b[7] = 2;
    v.push(neg(
        "v1_version_flipped",
        "chunks_4096 with its version byte changed to 2",
        "header failure",
        vec![],
        b,
    ));
    let mut b = v2_body.clone();
    b[c(1).start + 100] ^= 0x01;
    let mut x = base(
        "v2_chunk_bit_flip",
        "v2_chunks_4096 with bit 0 of byte 100 of chunk 1 flipped",
        "payload failure",
        plain[..4096].to_vec(),
        b,
    );
    x.info = describe(4096, &[0], &[DEK1], &[NONCE1], plain_desc);
    x.info.insert(0, ("version", "2".into()));
    v.push(x);
    let mut b = v2_body.clone();
    b.truncate(c(2).start);
    let mut x = base(
        "v2_dropped_final_chunk",
        "v2_chunks_4096 without its final chunk (ends on a chunk boundary)",
        "truncated",
        plain[..8192].to_vec(),
        b,
    );
    x.info = describe(4096, &[0], &[DEK1], &[NONCE1], plain_desc);
    x.info.insert(0, ("version", "2".into()));
    v.push(x);
    v
}

#[test]
fn vector_files_are_current() {
    let write = std::env::var_os("S3CP_WRITE_VECTORS").is_some();
    let vectors = all_vectors();
    if write {
        std::fs::create_dir_all(dir()).unwrap();
    }
    for v in &vectors {
        let path = dir().join(v.name);
        let text = v.render();
        if write {
            std::fs::write(&path, &text).unwrap();
        } else {
            let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (run with S3CP_WRITE_VECTORS=1)", path.display())
            });
            assert_eq!(
                on_disk, text,
                "vector {} differs from what the code produces",
                v.name
            );
        }
    }
    let files = std::fs::read_dir(dir()).unwrap().count();
    assert_eq!(files, vectors.len(), "stray files in tests/vectors");
}

/// A parsed vector file.
struct VectorFile {
    fields: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn parse_vector(text: &str) -> VectorFile {
    let (head, body) = text
        .split_once("\n\n")
        .expect("blank line after the fields");
    let fields = head
        .lines()
        .map(|l| {
            let (k, v) = l
                .split_once(": ")
                .unwrap_or_else(|| panic!("bad field line {l:?}"));
            (k.to_string(), v.to_string())
        })
        .collect();
    let hex: String = body.split_whitespace().collect();
    VectorFile {
        fields,
        body: hex::decode(hex).expect("hex body"),
    }
}

fn error_matches(expect: &str, e: &FormatError) -> bool {
    match expect {
        "header failure" => matches!(
            e,
            FormatError::HeaderTampered
                | FormatError::SegmentOrder { .. }
                | FormatError::NotEncrypted
                | FormatError::UnsupportedVersion(_)
                | FormatError::InvalidChunkSize(_)
                | FormatError::UnknownKeyId(_)
        ),
        "payload failure" => matches!(e, FormatError::ChunkTampered { .. }),
        "wrong key" => matches!(e, FormatError::WrongKey(_)),
        "truncated" => matches!(e, FormatError::Truncated),
        "trailing data" => matches!(e, FormatError::TrailingData),
        other => panic!("unknown expectation {other:?}"),
    }
}

/// Feeds `body` in pieces of `piece` bytes; returns released plaintext and the outcome.
fn read(v: &VectorFile, piece: usize) -> (Vec<u8>, Result<(), FormatError>) {
    let f = |k: &str| {
        v.fields
            .get(k)
            .unwrap_or_else(|| panic!("missing field {k}"))
            .as_str()
    };
    let key: [u8; 32] = hex::decode(f("master key")).unwrap().try_into().unwrap();
    let ring = KeyRing::single(&MasterKey::new(f("key id").parse().unwrap(), key));
    let obj = ObjectId {
        bucket: f("bucket"),
        key: f("key"),
    };
    let mut dec = Decryptor::new(ring, obj);
    let mut released = Vec::new();
    for p in v.body.chunks(piece.max(1)) {
        match dec.update(p) {
            Ok(b) => released.extend_from_slice(&b),
            Err(e) => return (released, Err(e)),
        }
    }
    match dec.finish_expecting_segments(f("segments").parse().unwrap()) {
        Ok(b) => {
            released.extend_from_slice(&b);
            (released, Ok(()))
        }
        Err(e) => (released, Err(e)),
    }
}

#[test]
fn run_vector_files() {
    let mut names: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert!(names.len() >= 10);
    for path in names {
        let v = parse_vector(&std::fs::read_to_string(&path).unwrap());
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let expect = v.fields["expect"].clone();
        // Byte by byte: every chunk is released as soon as it is authenticated.
        let (released, result) = read(&v, 1);
        assert_eq!(
            sha(&released),
            v.fields["payload"],
            "{name}: released plaintext"
        );
        match (&result, expect.as_str()) {
            (Ok(()), "success") => {}
            (Err(e), exp) if exp != "success" => {
                assert!(error_matches(exp, e), "{name}: expected {exp}, got {e:?}")
            }
            (r, exp) => panic!("{name}: expected {exp}, got {r:?}"),
        }
        // All at once: same outcome; nothing released on failure.
        let (all, result2) = read(&v, usize::MAX);
        assert_eq!(result2, result, "{name}");
        if result.is_err() && !matches!(result, Err(FormatError::Truncated)) {
            assert!(
                all.is_empty(),
                "{name}: plaintext released by a failing single update"
            );
        }
        if let Some(sealed) = v.fields.get("metadata") {
            let key: [u8; 32] = hex::decode(&v.fields["master key"])
                .unwrap()
                .try_into()
                .unwrap();
            let ring = KeyRing::single(&MasterKey::new(v.fields["key id"].parse().unwrap(), key));
            let obj = ObjectId {
                bucket: &v.fields["bucket"],
                key: &v.fields["key"],
            };
            let opened = meta::open(&ring, obj, sealed).unwrap();
            assert_eq!(opened.payload, v.fields["metadata payload"].as_bytes());
            assert_eq!(opened.chunk_size.to_string(), v.fields["chunk size"]);
            assert_eq!(meta::peek_chunk_size(sealed), Some(opened.chunk_size));
        }
    }
}

/// The labelled vectors printed in docs/object-format.md: every `name: value` line of a block
/// starting with `vector: <file>` must agree with the file or with what the code derives.
#[test]
fn spec_matches_vectors() {
    let spec = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/object-format.md"),
    )
    .unwrap();
    let mut checked = 0;
    let mut rest = spec.as_str();
    while let Some(at) = rest.find("```text\nvector: ") {
        let block_start = at + "```text\n".len();
        let len = rest[block_start..].find("```").unwrap();
        let block = &rest[block_start..block_start + len];
        rest = &rest[block_start + len..];
        check_spec_block(block);
        checked += 1;
    }
    assert!(
        checked >= 3,
        "the spec must show at least three labelled vectors, found {checked}"
    );
}

fn check_spec_block(block: &str) {
    let mut lines = block.lines().peekable();
    let name = lines
        .next()
        .unwrap()
        .strip_prefix("vector: ")
        .unwrap()
        .trim();
    let file = parse_vector(&std::fs::read_to_string(dir().join(name)).unwrap());
    let keys = DerivedKeys::derive(&MasterKey::new(
        file.fields["key id"].parse().unwrap(),
        hex::decode(&file.fields["master key"])
            .unwrap()
            .try_into()
            .unwrap(),
    ));
    while let Some(line) = lines.next() {
        let (k, v) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("{name}: bad line {line:?}"));
        let v = v.trim();
        // multi-line hex values: the following lines without ':'
        let mut value = v.to_string();
        while let Some(next) = lines.peek() {
            if next.contains(':') {
                break;
            }
            value.push_str(next.trim());
            lines.next();
        }
        let body = &file.body;
        match k {
            "kek" => assert_eq!(value, hex::encode(keys.kek()), "{name}: kek"),
            "mek" => assert_eq!(value, hex::encode(keys.mek()), "{name}: mek"),
            "kcv" => assert_eq!(value, hex::encode(keys.kcv()), "{name}: kcv"),
            "header" => assert_eq!(value, hex::encode(&body[..HEADER_LEN]), "{name}: header"),
            "ciphertext sha256" => assert_eq!(value, sha(body), "{name}: ciphertext sha256"),
            "ciphertext length" => assert_eq!(value, body.len().to_string(), "{name}: length"),
            "ciphertext" => assert_eq!(value, hex::encode(body), "{name}: ciphertext"),
            "plaintext sha256" => {
                assert_eq!(value, file.fields["payload"], "{name}: plaintext sha256")
            }
            _ => {
                let expected = file
                    .fields
                    .get(k)
                    .unwrap_or_else(|| panic!("{name}: spec field {k:?} not in the vector file"));
                assert_eq!(&value, expected, "{name}: {k}");
            }
        }
    }
}
