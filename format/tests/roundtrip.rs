//! Deterministic round trips (the proptests in `prop.rs` cover random shapes).

mod common;
use common::*;
use s3cp_format::*;

#[test]
fn single_part_sizes() {
    let ring = ring();
    for c in [4096u32, 65536] {
        let cs = c as usize;
        for len in [0, 1, cs - 1, cs, cs + 1, 3 * cs, 3 * cs + 17] {
            let plain = plaintext(len);
            for (i, sizes) in [&[][..], &[1], &[7, 4096, 3], &[cs + 16]]
                .into_iter()
                .enumerate()
            {
                let cipher = ChunkCipher::ALL[i % 2];
                let stored = encrypt_segment(cipher, ring.current(), OBJ, 0, &plain, c, sizes);
                assert_eq!(stored[..8], magic(cipher));
                assert_eq!(stored.len() as u64, segment_cipher_len(len as u64, c));
                assert_eq!(
                    object_plain_len(stored.len() as u64, c, 1),
                    Some(len as u64)
                );
                assert_eq!(is_encrypted_prefix(&stored), Some(true));
                for dsizes in [&[][..], &[1], &[100, 5000], &[cs + 16]] {
                    let out = decrypt(&ring, OBJ, &stored, dsizes, Some(1));
                    assert_eq!(out.result, Ok(()), "len {len} c {c}");
                    assert_eq!(out.released, plain);
                }
            }
        }
    }
}

#[test]
fn multipart_round_trip() {
    let ring = ring();
    let c = 4096u32;
    let p = 2 * 4096;
    let plain = plaintext(5 * p + 100);
    let stored = encrypt_object(&ring, OBJ, &plain, c, Some(p), &[V1, V2, V2]);
    assert_eq!(
        stored.len() as u64,
        object_cipher_len(plain.len() as u64, c, Some(p as u64))
    );
    assert_eq!(
        object_plain_len(stored.len() as u64, c, 6),
        Some(plain.len() as u64)
    );
    let out = decrypt(&ring, OBJ, &stored, &[999], Some(6));
    assert_eq!(out.result, Ok(()));
    assert_eq!(out.released, plain);
    let mut dec = Decryptor::new(ring.clone(), OBJ);
    assert_eq!(dec.key_id(), None);
    dec.update(&stored[..200]).unwrap();
    assert_eq!(dec.key_id(), Some(1));
}

#[test]
fn range_reads_across_parts() {
    let ring = ring();
    let c = 4096u32;
    let p = 2 * 4096u64;
    let plain = plaintext(3 * p as usize + 5000);
    let stored = encrypt_object(&ring, OBJ, &plain, c, Some(p as usize), &[V2, V1]);
    let total = plain.len() as u64;
    let part = SegmentHeader::parse(&stored[..HEADER_LEN])
        .unwrap()
        .plain_len;
    assert_eq!(part, p);
    for (first, last) in [
        (0, 0),
        (0, total - 1),
        (p - 1, p),
        (p - 10, 2 * p + 10),
        (4095, 4096),
        (total - 1, total + 100),
        (5000, 5000 + 3 * p),
    ] {
        let plan = plan_range(first, last, total, c, Some(part)).unwrap();
        let header = &stored[plan.header_offset as usize..plan.header_offset as usize + HEADER_LEN];
        let mut dec = Decryptor::for_range(ring.clone(), OBJ, header, &plan).unwrap();
        let mut got = Vec::new();
        for piece in stored[plan.cipher_start as usize..=plan.cipher_end as usize].chunks(777) {
            got.extend_from_slice(&dec.update(piece).unwrap());
        }
        got.extend_from_slice(&dec.finish().unwrap());
        let last = last.min(total - 1);
        assert_eq!(
            got,
            &plain[first as usize..=last as usize],
            "range {first}-{last}"
        );
    }
}

#[test]
fn rewrap_moves_and_rotates() {
    let old = MasterKey::new(1, [0x11; 32]);
    let new = MasterKey::new(2, [0x22; 32]);
    let ring = KeyRing::new(1, &[old.clone(), new.clone()]).unwrap();
    let c = 4096u32;
    let plain = plaintext(3 * 4096 + 10);
    let dst = ObjectId {
        bucket: "other",
        key: "renamed",
    };
    for (part, mix) in [
        (None, &[V1][..]),
        (None, &[V2]),
        (Some(4096usize), &[V1, V2]),
    ] {
        let stored = encrypt_object(&ring, OBJ, &plain, c, part, mix);
        let mut rw = Rewrapper::new(ring.clone(), OBJ, dst, ring.get(2).unwrap().clone());
        let mut moved = Vec::new();
        for piece in stored.chunks(1000) {
            moved.extend_from_slice(&rw.update(piece).unwrap());
        }
        moved.extend_from_slice(&rw.finish().unwrap());
        assert_eq!(moved.len(), stored.len());
        let n = if part.is_some() { 4 } else { 1 };
        let out = decrypt(&ring, dst, &moved, &[4096], Some(n));
        assert_eq!(out.result, Ok(()));
        assert_eq!(out.released, plain);
        assert_eq!(SegmentHeader::parse(&moved).unwrap().key_id, 2);
        // Chunks are copied unchanged, so every header keeps its version (chunk cipher).
        let mut at = 0;
        for i in 0..n as usize {
            let h = SegmentHeader::parse(&moved[at..]).unwrap();
            assert_eq!(h.cipher, mix[i % mix.len()]);
            assert_eq!(moved[at + 7], stored[at + 7]);
            at += h.cipher_len() as usize;
        }
        // the old name no longer opens it, and a ring without key 2 cannot read it
        assert_eq!(
            decrypt(&ring, OBJ, &moved, &[], Some(n)).result,
            Err(FormatError::HeaderTampered)
        );
        assert_eq!(
            decrypt(&KeyRing::single(&old), dst, &moved, &[], Some(n)).result,
            Err(FormatError::UnknownKeyId(2))
        );
    }
}
