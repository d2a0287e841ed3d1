//! Helpers shared by the integration tests.
#![allow(dead_code)]

use s3cp_format::{
    ChunkCipher, Decryptor, DerivedKeys, FormatError, KeyRing, MasterKey, ObjectId,
    SegmentEncryptor,
};

/// Format version 1 and 2 chunk ciphers, for short test code.
pub const V1: ChunkCipher = ChunkCipher::XChaCha20Poly1305;
pub const V2: ChunkCipher = ChunkCipher::Aes256Gcm;
/// Both, and the two mixes (segment i uses entry i mod len).
pub const CIPHER_MIXES: [&[ChunkCipher]; 4] = [&[V1], &[V2], &[V1, V2], &[V2, V1]];

pub const OBJ: ObjectId<'static> = ObjectId {
    bucket: "test-bucket",
    key: "dir/object.bin",
};

pub fn ring() -> KeyRing {
    KeyRing::single(&MasterKey::new(1, [0x11; 32]))
}

pub fn plaintext(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

/// Splits `data` into pieces whose sizes cycle through `sizes` (0 = feed an empty piece).
pub fn pieces<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    if sizes.is_empty() {
        return vec![data];
    }
    while at < data.len() {
        let n = sizes[i % sizes.len()].min(data.len() - at);
        out.push(&data[at..at + n]);
        at += n;
        i += 1;
        if i > 4 * data.len() + 8 {
            out.push(&data[at..]);
            break;
        }
    }
    out
}

/// Encrypts one segment with `cipher` feeding the plaintext in pieces of `sizes`.
pub fn encrypt_segment(
    cipher: ChunkCipher,
    keys: &DerivedKeys,
    obj: ObjectId<'_>,
    part: u32,
    plain: &[u8],
    chunk: u32,
    sizes: &[usize],
) -> Vec<u8> {
    let mut enc =
        SegmentEncryptor::new(cipher, keys, obj, part, plain.len() as u64, chunk).unwrap();
    let expected = enc.cipher_len();
    let mut out = Vec::new();
    for p in pieces(plain, sizes) {
        out.extend_from_slice(&enc.update(p).unwrap());
    }
    out.extend_from_slice(&enc.finish().unwrap());
    assert_eq!(out.len() as u64, expected);
    out
}

/// Encrypts a whole object: one segment (part 0) or parts of `part_size` bytes; segment `i`
/// uses `ciphers[i % len]` (as parts uploaded through proxies with different settings).
pub fn encrypt_object(
    ring: &KeyRing,
    obj: ObjectId<'_>,
    plain: &[u8],
    chunk: u32,
    part_size: Option<usize>,
    ciphers: &[ChunkCipher],
) -> Vec<u8> {
    match part_size {
        None => encrypt_segment(ciphers[0], ring.current(), obj, 0, plain, chunk, &[]),
        Some(p) => {
            let mut out = Vec::new();
            let parts: Vec<&[u8]> = if plain.is_empty() {
                vec![plain]
            } else {
                plain.chunks(p).collect()
            };
            for (i, part) in parts.iter().enumerate() {
                out.extend(encrypt_segment(
                    ciphers[i % ciphers.len()],
                    ring.current(),
                    obj,
                    i as u32 + 1,
                    part,
                    chunk,
                    &[],
                ));
            }
            out
        }
    }
}

/// What a decryption run produced: the plaintext released before the end or the error.
#[derive(Debug)]
pub struct Outcome {
    pub released: Vec<u8>,
    pub result: Result<(), FormatError>,
}

/// Decrypts `stored` fed in pieces of `sizes`, collecting plaintext released before any error.
pub fn decrypt(
    ring: &KeyRing,
    obj: ObjectId<'_>,
    stored: &[u8],
    sizes: &[usize],
    segments: Option<u32>,
) -> Outcome {
    let mut dec = Decryptor::new(ring.clone(), obj);
    let mut released = Vec::new();
    for p in pieces(stored, sizes) {
        match dec.update(p) {
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
        Some(n) => dec.finish_expecting_segments(n),
        None => dec.finish(),
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
