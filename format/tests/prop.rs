//! Property tests: size arithmetic and range planning against a byte-by-byte model of the
//! layout, and round trips of random shapes through the streaming encryptor and decryptor.

mod common;
use common::*;
use proptest::prelude::*;
use s3cp_format::*;

const H: u64 = HEADER_LEN as u64;
const T: u64 = TAG_LEN as u64;

/// Where one plaintext byte ends up, found by walking the layout byte by byte.
#[derive(Clone, Copy, Debug)]
struct BytePos {
    segment: u32,
    header_offset: u64,
    chunk_cipher_start: u64,
    /// Last stored byte of the chunk (end of its tag).
    chunk_cipher_end: u64,
    offset_in_chunk: u64,
}

struct Model {
    bytes: Vec<BytePos>,
    cipher_len: u64,
    segments: u32,
}

/// Segment plaintext lengths of an object: one segment, or parts of `p` bytes.
fn segment_lengths(total: u64, part: Option<u64>) -> Vec<u64> {
    match part {
        Some(p) if total > p => {
            let mut v = vec![p; (total / p) as usize];
            if !total.is_multiple_of(p) {
                v.push(total % p);
            }
            v
        }
        _ => vec![total],
    }
}

/// Walks the layout byte by byte: header, then plaintext bytes with a tag after every
/// `c` bytes and after the last (possibly empty) chunk of each segment.
fn model(total: u64, c: u64, part: Option<u64>) -> Model {
    let mut bytes = Vec::with_capacity(total as usize);
    let mut pos = 0u64;
    let lens = segment_lengths(total, part);
    for (s, &len) in lens.iter().enumerate() {
        let header_offset = pos;
        pos += H;
        let mut chunk_start = pos;
        let mut in_chunk = 0u64;
        let mut pending: Vec<usize> = Vec::new(); // indexes in `bytes` of the open chunk
        for _ in 0..len {
            if in_chunk == c {
                pos += T;
                for &i in &pending {
                    bytes[i] = BytePos {
                        chunk_cipher_end: pos - 1,
                        ..bytes[i]
                    };
                }
                pending.clear();
                chunk_start = pos;
                in_chunk = 0;
            }
            pending.push(bytes.len());
            bytes.push(BytePos {
                segment: s as u32,
                header_offset,
                chunk_cipher_start: chunk_start,
                chunk_cipher_end: 0,
                offset_in_chunk: in_chunk,
            });
            pos += 1;
            in_chunk += 1;
        }
        pos += T;
        for &i in &pending {
            bytes[i] = BytePos {
                chunk_cipher_end: pos - 1,
                ..bytes[i]
            };
        }
    }
    Model {
        bytes,
        cipher_len: pos,
        segments: lens.len() as u32,
    }
}

fn chunk_size() -> impl Strategy<Value = u32> {
    prop_oneof![Just(4096u32), Just(8192)]
}

/// Interesting lengths around chunk boundaries, plus arbitrary ones.
fn length(c: u32) -> impl Strategy<Value = u64> {
    let c = u64::from(c);
    prop_oneof![
        Just(0),
        Just(1),
        Just(c - 1),
        Just(c),
        Just(c + 1),
        Just(3 * c),
        0..6 * c,
    ]
}

/// Format version 1 or 2.
fn cipher() -> impl Strategy<Value = ChunkCipher> {
    prop_oneof![Just(V1), Just(V2)]
}

/// Per-segment ciphers: all version 1, all version 2, or alternating (parts uploaded through
/// proxies with different settings).
fn cipher_mix() -> impl Strategy<Value = &'static [ChunkCipher]> {
    prop::sample::select(&CIPHER_MIXES[..])
}

fn piece_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1usize..64, 1usize..20_000, Just(0)], 1..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Single-part: cipher length, plaintext length and every range against the model.
    #[test]
    fn single_part_layout_matches_model((c, total) in chunk_size().prop_flat_map(|c| (Just(c), length(c))), a in any::<u64>(), b in any::<u64>()) {
        let m = model(total, u64::from(c), None);
        prop_assert_eq!(segment_cipher_len(total, c), m.cipher_len);
        prop_assert_eq!(object_cipher_len(total, c, None), m.cipher_len);
        prop_assert_eq!(object_plain_len(m.cipher_len, c, 1), Some(total));
        check_ranges(&m, total, c, None, a, b)?;
    }

    /// Multipart: parts of k chunks, last part shorter or equal.
    #[test]
    fn multipart_layout_matches_model(c in chunk_size(), k in 1u64..4, total in 1u64..60_000, a in any::<u64>(), b in any::<u64>()) {
        let p = k * u64::from(c);
        let m = model(total, u64::from(c), Some(p));
        prop_assert_eq!(object_cipher_len(total, c, Some(p)), m.cipher_len);
        prop_assert_eq!(object_plain_len(m.cipher_len, c, m.segments), Some(total));
        check_ranges(&m, total, c, Some(p.min(total)), a, b)?;
    }

    /// `object_plain_len` accepts exactly the lengths a single segment can have.
    #[test]
    fn impossible_single_lengths_rejected(c in chunk_size(), x in 0u64..50_000) {
        match object_plain_len(x, c, 1) {
            Some(l) => prop_assert_eq!(segment_cipher_len(l, c), x),
            None => {
                let lo = x.saturating_sub(H + (x / u64::from(c) + 2) * T);
                for l in lo..=x {
                    prop_assert_ne!(segment_cipher_len(l, c), x);
                }
            }
        }
    }

    /// Round trip with random piece sizes on both sides.
    #[test]
    fn round_trip(c in chunk_size(), len_seed in any::<prop::sample::Index>(), enc_sizes in piece_sizes(), dec_sizes in piece_sizes(), cipher in cipher()) {
        let cs = u64::from(c);
        let candidates = [0, 1, cs - 1, cs, cs + 1, 2 * cs, 5 * cs + 3, len_seed.index(6 * cs as usize) as u64];
        let len = candidates[len_seed.index(candidates.len())] as usize;
        let ring = ring();
        let plain = plaintext(len);
        let stored = encrypt_segment(cipher, ring.current(), OBJ, 0, &plain, c, &enc_sizes);
        prop_assert_eq!(SegmentHeader::parse(&stored).unwrap().cipher, cipher);
        prop_assert_eq!(stored[7], cipher.version());
        prop_assert_eq!(stored.len() as u64, segment_cipher_len(len as u64, c));
        let out = decrypt(&ring, OBJ, &stored, &dec_sizes, Some(1));
        prop_assert_eq!(out.result, Ok(()));
        prop_assert_eq!(out.released, plain);
    }

    /// Multipart round trip (several segments) and range reads across part boundaries.
    #[test]
    fn multipart_round_trip_and_ranges(k in 1u64..3, total in 1usize..40_000, dec_sizes in piece_sizes(), ranges in prop::collection::vec((any::<u64>(), 0u64..20_000), 1..4), mix in cipher_mix()) {
        let c = 4096u32;
        let p = k * 4096;
        let ring = ring();
        let plain = plaintext(total);
        let stored = encrypt_object(&ring, OBJ, &plain, c, Some(p as usize), mix);
        let n = total.div_ceil(p as usize) as u32;
        prop_assert_eq!(object_plain_len(stored.len() as u64, c, n), Some(total as u64));
        let out = decrypt(&ring, OBJ, &stored, &dec_sizes, Some(n));
        prop_assert_eq!(out.result, Ok(()));
        prop_assert_eq!(&out.released, &plain);
        // P as the proxy learns it: from segment 1's header.
        let part = SegmentHeader::parse(&stored).unwrap().plain_len;
        for (start, span) in ranges {
            let first = start % total as u64;
            let last = first + span;
            let plan = plan_range(first, last, total as u64, c, Some(part)).unwrap();
            let h = plan.header_offset as usize;
            let mut dec = Decryptor::for_range(ring.clone(), OBJ, &stored[h..h + HEADER_LEN], &plan).unwrap();
            let mut got = Vec::new();
            for piece in pieces(&stored[plan.cipher_start as usize..=plan.cipher_end as usize], &dec_sizes) {
                got.extend_from_slice(&dec.update(piece).unwrap());
            }
            got.extend_from_slice(&dec.finish().unwrap());
            let last = last.min(total as u64 - 1);
            prop_assert_eq!(&got[..], &plain[first as usize..=last as usize]);
        }
    }
}

fn check_ranges(
    m: &Model,
    total: u64,
    c: u32,
    part: Option<u64>,
    a: u64,
    b: u64,
) -> Result<(), TestCaseError> {
    if total == 0 {
        prop_assert_eq!(plan_range(0, 0, 0, c, part), None);
        return Ok(());
    }
    // A few ranges from the random seeds, plus both ends.
    let picks = [
        (a % total, b % total),
        (a % total, u64::MAX),
        (0, total - 1),
        (total - 1, total - 1),
        (b % total, b % total),
    ];
    for (x, y) in picks {
        let (first, last) = (x.min(y), x.max(y));
        let plan = plan_range(first, last, total, c, part).expect("valid range");
        let last_c = last.min(total - 1);
        let f = m.bytes[first as usize];
        let l = m.bytes[last_c as usize];
        prop_assert_eq!(plan.segment, f.segment);
        prop_assert_eq!(plan.header_offset, f.header_offset);
        prop_assert_eq!(plan.cipher_start, f.chunk_cipher_start);
        prop_assert_eq!(plan.cipher_end, l.chunk_cipher_end);
        prop_assert_eq!(plan.skip, f.offset_in_chunk);
        prop_assert_eq!(plan.len, last_c - first + 1);
    }
    prop_assert_eq!(plan_range(total, total + 5, total, c, part), None);
    if total > 1 {
        prop_assert_eq!(plan_range(1, 0, total, c, part), None);
    }
    Ok(())
}

/// Damage an attacker with write access to the backend can do to a stored object.
#[derive(Clone, Debug)]
enum Damage {
    None,
    /// Cut the stored bytes at this position (modulo the length).
    Truncate(usize),
    /// Cut at a chunk boundary: drop this many trailing chunks of the last segment.
    DropTrailingChunks(usize),
    /// Duplicate the stored chunk at this index (modulo the chunk count of segment 0).
    DuplicateChunk(usize),
    /// Swap two chunks of segment 0.
    SwapChunks(usize, usize),
    /// Announce another chunk size (metadata of a version written with another one).
    OtherChunkSize,
    /// Seal another plaintext length (metadata of another version).
    OtherSealedLength(u64),
    /// Flip the version byte of segment i (modulo the count) between 1 and 2, so that it
    /// names the other chunk cipher.
    FlipVersion(usize),
    /// Rebuild a multipart object from its own stored segments, in this order (indices
    /// modulo the segment count), under an honest segment count (UploadPartCopy of its own
    /// ranges, or a backend serving them so). Parts 1..k in order are the shorter object
    /// section 6.4 cannot tell from a genuine one; any other arrangement must never be read
    /// as the object, nor change an announced length.
    Reassemble(Vec<usize>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        Just(Damage::None),
        any::<usize>().prop_map(Damage::Truncate),
        (1usize..4).prop_map(Damage::DropTrailingChunks),
        any::<usize>().prop_map(Damage::DuplicateChunk),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Damage::SwapChunks(a, b)),
        Just(Damage::OtherChunkSize),
        (0u64..40_000).prop_map(Damage::OtherSealedLength),
        any::<usize>().prop_map(Damage::FlipVersion),
        prop::collection::vec(any::<usize>(), 1..6).prop_map(Damage::Reassemble),
    ]
}

/// Applies `d`; returns the stored bytes, the chunk size and sealed length a reader is told.
fn apply(d: &Damage, stored: &[u8], c: u32, total: usize, last_plain: usize, sealed: Option<u64>) -> (Vec<u8>, u32, Option<u64>) {
    let ct = c as usize + TAG_LEN;
    let seg0_chunks = total.div_ceil(c as usize).max(1);
    let chunk = |i: usize| HEADER_LEN + i * ct..(HEADER_LEN + (i + 1) * ct).min(stored.len());
    match *d {
        Damage::None => (stored.to_vec(), c, sealed),
        Damage::Truncate(at) => (stored[..at % stored.len()].to_vec(), c, sealed),
        Damage::DropTrailingChunks(k) => {
            // Cut at a chunk boundary of the last segment: a length the size arithmetic
            // accepts (the last chunk holds 1..=C bytes, or none in an empty segment).
            let last_chunk = if last_plain == 0 { TAG_LEN } else { (last_plain - 1) % c as usize + 1 + TAG_LEN };
            let cut = stored.len().saturating_sub(last_chunk + (k - 1) * ct);
            (stored[..cut].to_vec(), c, sealed)
        }
        Damage::DuplicateChunk(i) => {
            let i = i % seg0_chunks;
            let r = chunk(i);
            let mut v = stored[..r.end].to_vec();
            v.extend_from_slice(&stored[r.clone()]);
            v.extend_from_slice(&stored[r.end..]);
            (v, c, sealed)
        }
        Damage::SwapChunks(a, b) => {
            let (a, b) = (a % seg0_chunks, b % seg0_chunks);
            let (ra, rb) = (chunk(a.min(b)), chunk(a.max(b)));
            if ra.len() != rb.len() {
                return (stored.to_vec(), c, sealed);
            }
            let mut v = stored.to_vec();
            let tmp = v[ra.clone()].to_vec();
            v.copy_within(rb.clone(), ra.start);
            v[rb].copy_from_slice(&tmp);
            (v, c, sealed)
        }
        Damage::OtherChunkSize => (stored.to_vec(), c * 2, sealed),
        Damage::OtherSealedLength(l) => (stored.to_vec(), c, Some(l)),
        Damage::FlipVersion(i) => {
            let mut starts = vec![0usize];
            loop {
                let at = *starts.last().unwrap();
                let next = at + SegmentHeader::parse(&stored[at..]).unwrap().cipher_len() as usize;
                if next >= stored.len() {
                    break;
                }
                starts.push(next);
            }
            let mut v = stored.to_vec();
            v[starts[i % starts.len()] + 7] ^= 3;
            (v, c, sealed)
        }
        // Segment arrangements are applied by `reassemble` (they change the segment count).
        Damage::Reassemble(_) => (stored.to_vec(), c, sealed),
    }
}

/// The stored bytes of `stored` (an object of `n` segments of `part` plaintext bytes but the
/// last) rebuilt from its own segments in the order `order` (indices modulo `n`), and the
/// segment count a reader is then told (the honest `-k` of such an upload).
fn reassemble(order: &[usize], stored: &[u8], c: u32, n: usize, part: usize) -> (Vec<u8>, u32) {
    let full = segment_cipher_len(part as u64, c) as usize;
    let segment = |i: usize| &stored[i * full..if i + 1 == n { stored.len() } else { (i + 1) * full }];
    let v = order.iter().flat_map(|i| segment(i % n).iter().copied()).collect();
    (v, order.len() as u32)
}

/// What the proxy's HEAD answers: the announced length, checked as it checks it (sealed
/// length, else the first header and, for multipart objects, the last one).
fn head(ring: &KeyRing, stored: &[u8], c: u32, n: u32, sealed: Option<u64>) -> Result<u64, FormatError> {
    let mut layout = Layout::announced(stored.len() as u64, c, n, sealed)?;
    if sealed.is_some() {
        return Ok(layout.plain_len);
    }
    let header_at = |layout: &mut Layout, ordinal: u32| -> Result<(), FormatError> {
        let off = layout.segment_offset(ordinal).unwrap_or(0) as usize;
        let bytes = stored.get(off..off + HEADER_LEN).ok_or(FormatError::Truncated)?;
        let hdr = SegmentHeader::parse(bytes)?;
        hdr.open(ring, &OBJ.name_ad())?;
        layout.check(ordinal, &hdr)
    };
    header_at(&mut layout, 0)?;
    if n > 1 {
        header_at(&mut layout, n - 1)?;
    }
    Ok(layout.plain_len)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every read path of the proxy (HEAD, whole GET, Range, partNumber), modelled with the
    /// format API exactly as the proxy calls it, either fails or gives exactly the written
    /// bytes and length; a failing GET or Range never releases all the bytes it announced.
    #[test]
    fn every_read_path_fails_or_is_exact(
        total in 0usize..30_000,
        multipart in any::<bool>(),
        seal_len in any::<bool>(),
        d in damage(),
        (first, span) in (any::<u64>(), 0u64..12_000),
        dec_sizes in piece_sizes(),
        mix in cipher_mix(),
    ) {
        let c = 4096u32;
        let ring = ring();
        let plain = plaintext(total);
        let part = (multipart && total > 8192).then_some(8192usize);
        let good = encrypt_object(&ring, OBJ, &plain, c, part, mix);
        let n = part.map_or(1, |p| total.div_ceil(p) as u32);
        // Only single-part objects seal their length.
        let sealed = (seal_len && part.is_none()).then_some(total as u64);
        let last_plain = part.map_or(total, |p| total - (n as usize - 1) * p);
        let (stored, c_told, sealed) = apply(&d, &good, c, total, last_plain, sealed);
        // The lengths a read may announce: the object's; for parts rebuilt into a k-part
        // object (k < n), that of its first k parts (section 6.4: parts 1..k are a genuine
        // object; any other k parts must fail where they differ from them).
        let mut lengths = vec![total as u64];
        let (stored, n) = match (&d, part) {
            (Damage::Reassemble(order), Some(p)) => {
                if order.len() < n as usize {
                    lengths.push((order.len() * p) as u64);
                }
                reassemble(order, &stored, c, n as usize, p)
            }
            _ => (stored, n),
        };

        // HEAD.
        if let Ok(len) = head(&ring, &stored, c_told, n, sealed) {
            prop_assert!(lengths.contains(&len), "HEAD announced a wrong length {}", len);
        }

        // Whole GET: announce, then stream with the layout.
        if let Ok(layout) = Layout::announced(stored.len() as u64, c_told, n, sealed) {
            let announced = layout.plain_len;
            let mut dec = Decryptor::expecting(ring.clone(), OBJ, layout);
            let mut got = Vec::new();
            let mut result = Ok(());
            for piece in pieces(&stored, &dec_sizes) {
                match dec.update(piece) {
                    Ok(b) => got.extend_from_slice(&b),
                    Err(e) => { result = Err(e); break; }
                }
            }
            if result.is_ok() {
                match dec.finish() {
                    Ok(b) => got.extend_from_slice(&b),
                    Err(e) => result = Err(e),
                }
            }
            prop_assert!(plain.starts_with(&got), "GET released bytes that were not written");
            prop_assert!(!(matches!(d, Damage::FlipVersion(_)) && result.is_ok()),
                "a segment whose version byte was flipped was read");
            match result {
                Ok(()) => {
                    prop_assert!(lengths.contains(&announced), "GET announced a wrong length {}", announced);
                    prop_assert_eq!(got.len() as u64, announced);
                }
                Err(_) => prop_assert!((got.len() as u64) < announced || announced == 0,
                    "a failed GET released all {} announced bytes", announced),
            }
            // An announced length of 0 is answered only after the HEAD checks.
            if announced == 0 && head(&ring, &stored, c_told, n, sealed).is_ok() {
                prop_assert_eq!(total, 0);
            }
        }

        // Range (and partNumber, which is a range of whole parts).
        if let Ok(mut layout) = Layout::announced(stored.len() as u64, c_told, n, sealed) {
            let read = (|| -> Result<(u64, Vec<u8>, u64), FormatError> {
                let hdr0 = SegmentHeader::parse(stored.get(..HEADER_LEN).ok_or(FormatError::Truncated)?)?;
                hdr0.open(&ring, &OBJ.name_ad())?;
                layout.check(0, &hdr0)?;
                let plain_len = layout.plain_len;
                if plain_len == 0 {
                    return Err(FormatError::Truncated); // 416: nothing to range over
                }
                let first = first % plain_len;
                let last = (first + span).min(plain_len - 1);
                let multi = (layout.segments > 1).then(|| layout.part_len.unwrap());
                let plan = plan_range(first, last, plain_len, c_told, multi).ok_or(FormatError::LayoutMismatch)?;
                let h = plan.header_offset as usize;
                let header = stored.get(h..h + HEADER_LEN).ok_or(FormatError::Truncated)?;
                if let Some(p) = multi {
                    if last / p + 1 < u64::from(layout.segments) {
                        let off = layout.segment_offset(layout.segments - 1).unwrap() as usize;
                        let hn = SegmentHeader::parse(stored.get(off..off + HEADER_LEN).ok_or(FormatError::Truncated)?)?;
                        hn.open(&ring, &OBJ.name_ad())?;
                        layout.check(layout.segments - 1, &hn)?;
                    }
                }
                let mut dec = Decryptor::for_range(ring.clone(), OBJ, header, &plan)?;
                let body = stored.get(plan.cipher_start as usize..=plan.cipher_end as usize).ok_or(FormatError::Truncated)?;
                let mut got = Vec::new();
                for piece in pieces(body, &dec_sizes) {
                    got.extend_from_slice(&dec.update(piece)?);
                }
                got.extend_from_slice(&dec.finish()?);
                Ok((first, got, plain_len))
            })();
            if let Ok((first, got, plain_len)) = read {
                prop_assert!(lengths.contains(&plain_len), "a range announced a wrong total {}", plain_len);
                prop_assert_eq!(&got[..], &plain[first as usize..first as usize + got.len()]);
                let last = (first + span).min(plain_len - 1);
                prop_assert_eq!(got.len() as u64, last - first + 1);
            }
        }
    }
}
