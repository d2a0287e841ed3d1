//! Shared fixtures of the s3-crypt-proxy fuzz targets: fixed keys and credentials, input
//! decoders, byte mutations, and builders of valid inputs (signed aws-chunked bodies,
//! encrypted objects, listing XML, sealed key deliveries) that the structured modes mutate.
//!
//! Everything here is deterministic: the same fuzz input always runs the same way, so a
//! crash reproduces with `cargo fuzz run <target> <artifact>`.

use arbitrary::Arbitrary;

/// Byte-level damage applied to a valid input: flips, cuts, insertions, deletions, and
/// copies of one region over another (chunk/segment reordering and duplication).
/// Positions are taken modulo the current length, so every value is meaningful.
#[derive(Arbitrary, Debug, Clone)]
pub enum Mutation {
    Flip {
        at: u32,
        mask: u8,
    },
    Set {
        at: u32,
        byte: u8,
    },
    Truncate {
        at: u32,
    },
    Insert {
        at: u32,
        bytes: Vec<u8>,
    },
    Delete {
        at: u32,
        len: u16,
    },
    /// Copies `len` bytes from `from` over the bytes at `to`.
    Overwrite {
        from: u32,
        to: u32,
        len: u16,
    },
    /// Inserts a copy of `len` bytes from `from` at `to`.
    Duplicate {
        from: u32,
        to: u32,
        len: u16,
    },
}

/// Applies `muts` in order (at most 4 are used).
pub fn apply_mutations(data: &mut Vec<u8>, muts: &[Mutation]) {
    for m in muts.iter().take(4) {
        let len = data.len();
        let pos = |p: u32| if len == 0 { 0 } else { p as usize % (len + 1) };
        match m {
            Mutation::Flip { at, mask } => {
                if len > 0 {
                    let i = *at as usize % len;
                    // A zero mask would change nothing; flip the low bit instead.
                    data[i] ^= if *mask == 0 { 1 } else { *mask };
                }
            }
            Mutation::Set { at, byte } => {
                if len > 0 {
                    data[*at as usize % len] = *byte;
                }
            }
            Mutation::Truncate { at } => data.truncate(pos(*at)),
            Mutation::Insert { at, bytes } => {
                let i = pos(*at);
                data.splice(i..i, bytes.iter().take(64).copied());
            }
            Mutation::Delete { at, len: n } => {
                let i = pos(*at);
                let end = (i + *n as usize).min(len);
                data.drain(i..end);
            }
            Mutation::Overwrite { from, to, len: n } => {
                if len > 0 {
                    let f = *from as usize % len;
                    let t = *to as usize % len;
                    let n = (*n as usize).min(len - f).min(len - t);
                    data.copy_within(f..f + n, t);
                }
            }
            Mutation::Duplicate { from, to, len: n } => {
                if len > 0 {
                    let f = *from as usize % len;
                    let n = (*n as usize).min(len - f);
                    let copy = data[f..f + n].to_vec();
                    let t = pos(*to);
                    data.splice(t..t, copy);
                }
            }
        }
    }
}

/// Splits `data` at the given positions (taken modulo `len + 1`, sorted): the pieces cover
/// `data` exactly, empty pieces included.
pub fn split_at_cuts<'a>(data: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| c as usize % (data.len() + 1))
        .collect();
    at.sort_unstable();
    let mut out = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for c in at {
        out.push(&data[start..c]);
        start = c;
    }
    out.push(&data[start..]);
    out
}

/// Pieces whose sizes cycle through `sizes` (each at least 1); `[data]` if `sizes` is empty.
pub fn split_cycling<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![data];
    }
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let n = sizes[i % sizes.len()].max(1).min(data.len() - at);
        out.push(&data[at..at + n]);
        at += n;
        i += 1;
    }
    out
}

/// A cheap deterministic byte stream (xorshift64*), to fill large plaintexts from a small seed.
pub fn pseudo_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// `SigV4` verification fixtures and the text request format of the `sigv4_auth` target.
pub mod sigv4 {
    use std::time::SystemTime;

    use filters::sigv4::Credentials;
    use pingora::http::RequestHeader;

    pub const ACCESS_KEY: &str = "AKIAFUZZFUZZFUZZFUZZ";
    pub const SECRET_KEY: &str = "fuzzSecretKeyThatNobodyKnowsButTheProxy/00";
    /// The server clock of every run (requests in the seeds are dated this day).
    pub const NOW: &str = "20260101T000000Z";

    pub fn credentials() -> Credentials {
        Credentials::new(ACCESS_KEY, SECRET_KEY)
    }

    pub fn now() -> SystemTime {
        filters::sigv4::parse_amz_date(NOW).expect("valid date")
    }

    /// Builds a request from the text form
    /// `METHOD SP TARGET ("\n" NAME ":" VALUE)*` (a `\r` before `\n` and one space after the
    /// colon are dropped). `None` when the request line or a header is something
    /// `RequestHeader` / `http` refuse to represent (no real request can carry it).
    pub fn request_from_text(data: &[u8]) -> Option<RequestHeader> {
        let mut lines = data
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let first = lines.next()?;
        let sp = first.iter().position(|&b| b == b' ')?;
        let (method, target) = (&first[..sp], &first[sp + 1..]);
        let mut req = RequestHeader::build(method, target, None).ok()?;
        for line in lines {
            if line.is_empty() {
                continue;
            }
            let colon = line.iter().position(|&b| b == b':')?;
            let name = http::HeaderName::from_bytes(&line[..colon]).ok()?;
            let raw = &line[colon + 1..];
            let value =
                http::HeaderValue::from_bytes(raw.strip_prefix(b" ").unwrap_or(raw)).ok()?;
            req.append_header(name, value).ok()?;
        }
        Some(req)
    }
}

/// aws-chunked fixtures: fixed signing parameters and writers of valid bodies.
pub mod chunked {
    use filters::checksum::{ChecksumAlgorithm, Checksummer};
    use filters::sigv4::chunked::ChunkSigning;
    use sha2::{Digest, Sha256};
    use zeroize::Zeroizing;

    pub const SECRET_KEY: &str = "fuzzChunkSecretKey/0000000000000000000000";
    pub const AMZ_DATE: &str = "20260101T000000Z";
    pub const SCOPE: &str = "20260101/us-east-1/s3/aws4_request";
    /// The request signature that seeds the chunk signature chain.
    pub const SEED_SIGNATURE: &str =
        "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
    const EMPTY_SHA256_HEX: &str =
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    pub fn signing_key() -> Vec<u8> {
        let t = filters::sigv4::parse_amz_date(AMZ_DATE).expect("valid date");
        aws_sigv4::sign::v4::generate_signing_key(SECRET_KEY, t, "us-east-1", "s3")
            .as_ref()
            .to_vec()
    }

    pub fn signing() -> ChunkSigning {
        ChunkSigning {
            signing_key: Zeroizing::new(signing_key()),
            amz_date: AMZ_DATE.into(),
            scope: SCOPE.into(),
            seed_signature: SEED_SIGNATURE.into(),
        }
    }

    pub fn checksum_b64(alg: ChecksumAlgorithm, data: &[u8]) -> String {
        let mut c = Checksummer::new(alg);
        c.update(data);
        c.finish_base64()
    }

    fn sign(key: &[u8], kind: &str, prev: &str, hash_lines: &str) -> String {
        let sts = format!("{kind}\n{AMZ_DATE}\n{SCOPE}\n{prev}\n{hash_lines}");
        aws_sigv4::sign::v4::calculate_signature(key, sts.as_bytes())
    }

    /// A signed body (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`) of `data` in chunks of
    /// `sizes` (the last chunk takes what is left), signed from the module's documentation:
    /// each chunk's string to sign chains the previous signature and the chunk's SHA-256;
    /// `trailer` lines (lower-case name, trimmed value) get an `x-amz-trailer-signature`.
    pub fn signed_body(
        key: &[u8],
        data: &[u8],
        sizes: &[usize],
        trailer: Option<&[(String, String)]>,
    ) -> Vec<u8> {
        let mut body = Vec::with_capacity(data.len() + 128 * (sizes.len() + 2));
        let mut prev = SEED_SIGNATURE.to_string();
        let mut chunk_lens: Vec<usize> = Vec::new();
        let mut left = data.len();
        for &s in sizes {
            if left == 0 {
                break;
            }
            let n = s.clamp(1, left);
            chunk_lens.push(n);
            left -= n;
        }
        if left > 0 {
            chunk_lens.push(left);
        }
        chunk_lens.push(0);
        let mut off = 0;
        for n in chunk_lens {
            let chunk = &data[off..off + n];
            off += n;
            let hash = hex::encode(Sha256::digest(chunk));
            let sig = sign(
                key,
                "AWS4-HMAC-SHA256-PAYLOAD",
                &prev,
                &format!("{EMPTY_SHA256_HEX}\n{hash}"),
            );
            body.extend_from_slice(format!("{n:x};chunk-signature={sig}\r\n").as_bytes());
            if n > 0 {
                body.extend_from_slice(chunk);
                body.extend_from_slice(b"\r\n");
            }
            prev = sig;
        }
        match trailer {
            None => body.extend_from_slice(b"\r\n"),
            Some(lines) => {
                let mut sorted: Vec<&(String, String)> = lines.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                let mut canonical = Sha256::new();
                for (n, v) in sorted {
                    canonical.update(format!("{n}:{v}\n").as_bytes());
                }
                let sig = sign(
                    key,
                    "AWS4-HMAC-SHA256-TRAILER",
                    &prev,
                    &hex::encode(canonical.finalize()),
                );
                for (n, v) in lines {
                    body.extend_from_slice(format!("{n}:{v}\r\n").as_bytes());
                }
                body.extend_from_slice(format!("x-amz-trailer-signature:{sig}\r\n\r\n").as_bytes());
            }
        }
        body
    }

    /// An unsigned-trailer body (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`) as botocore writes it.
    pub fn unsigned_body(data: &[u8], sizes: &[usize], trailer: &[(String, String)]) -> Vec<u8> {
        let mut body = Vec::with_capacity(data.len() + 16 * (sizes.len() + 2));
        let mut off = 0;
        for &s in sizes.iter().chain(std::iter::once(&usize::MAX)) {
            if off == data.len() {
                break;
            }
            let n = s.clamp(1, data.len() - off);
            body.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            body.extend_from_slice(&data[off..off + n]);
            body.extend_from_slice(b"\r\n");
            off += n;
        }
        body.extend_from_slice(b"0\r\n");
        for (n, v) in trailer {
            body.extend_from_slice(format!("{n}:{v}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body
    }
}

/// Object-format fixtures: one key ring, one object name, and a deterministic encryptor.
pub mod object {
    use s3cp_format::{ChunkCipher, KeyRing, MasterKey, ObjectId, SegmentEncryptor};

    pub const OBJ: ObjectId<'static> = ObjectId {
        bucket: "fuzz-bucket",
        key: "dir/fuzzed object.bin",
    };
    pub const CHUNK: u32 = 4096;

    pub fn ring() -> KeyRing {
        KeyRing::single(&MasterKey::new(7, [0x42; 32]))
    }

    /// Encrypts `plain` as one segment (part 0), or as parts of `part` bytes numbered from 1.
    /// Each segment gets its own data key and wrap nonce (derived from `seed` and the part
    /// number; fixed so that runs reproduce, distinct as real random ones would be), and its
    /// own format version (chunk cipher) from bit `part number` of `seed`, so that objects
    /// mix versions 1 and 2 as parts uploaded through differently configured proxies do.
    /// Returns the stored bytes and the number of segments.
    pub fn encrypt(ring: &KeyRing, plain: &[u8], part: Option<usize>, seed: u64) -> (Vec<u8>, u32) {
        let parts: Vec<(u32, &[u8])> = match part {
            Some(p) if plain.len() > p => plain
                .chunks(p)
                .enumerate()
                .map(|(i, c)| (i as u32 + 1, c))
                .collect(),
            Some(_) => vec![(1, plain)],
            None => vec![(0, plain)],
        };
        let mut out = Vec::new();
        for (number, data) in &parts {
            let rnd = super::pseudo_bytes(seed ^ (u64::from(*number) << 40), 56);
            let dek: [u8; 32] = rnd[..32].try_into().expect("32 bytes");
            let nonce: [u8; 24] = rnd[32..].try_into().expect("24 bytes");
            let cipher = ChunkCipher::ALL[((seed >> (number % 64)) & 1) as usize];
            let mut enc = SegmentEncryptor::with_fixed_randomness(
                cipher,
                ring.current(),
                OBJ,
                *number,
                data.len() as u64,
                CHUNK,
                &dek,
                nonce,
            )
            .expect("valid segment parameters");
            out.extend_from_slice(&enc.update(data).expect("announced length"));
            out.extend_from_slice(&enc.finish().expect("announced length"));
        }
        (out, parts.len() as u32)
    }
}

/// Key-delivery fixtures: a fixed server identity, admin, and issued challenge.
pub mod delivery {
    use ed25519_dalek::SigningKey;
    use keyd::protocol::{seal_delivery_with, IssuedChallenge, SealedDelivery, CHALLENGE_LEN};
    use s3cp_format::MasterKey;
    use x25519_dalek::StaticSecret;

    pub const CHALLENGE: [u8; CHALLENGE_LEN] = [0xc4; CHALLENGE_LEN];
    pub const TIMESTAMP: u64 = 1_767_225_600;
    pub const MASTER_KEY_ID: u32 = 9;

    pub fn server() -> SigningKey {
        SigningKey::from_bytes(&[0x51; 32])
    }

    pub fn admin() -> SigningKey {
        SigningKey::from_bytes(&[0xad; 32])
    }

    pub fn issued() -> IssuedChallenge {
        IssuedChallenge::from_parts(CHALLENGE, TIMESTAMP, StaticSecret::from([0xe5; 32]))
    }

    pub fn master_key() -> MasterKey {
        MasterKey::new(MASTER_KEY_ID, [0x3c; 32])
    }

    /// The admin's valid delivery of [`master_key`] for [`issued`] (fixed randomness).
    pub fn valid_delivery() -> SealedDelivery {
        let server = server();
        let msg = issued().to_message(&server, 30);
        let verified = msg
            .verify(&keyd::protocol::fingerprint(&server.verifying_key()))
            .expect("own challenge verifies");
        seal_delivery_with(
            &verified,
            &admin(),
            &master_key(),
            true,
            StaticSecret::from([0xa5; 32]),
            [0x4e; 24],
        )
        .expect("seal")
    }
}
