//! Encrypt/decrypt throughput of the format against the raw AEAD on the same bytes.
//!
//! `raw` = `chacha20poly1305::XChaCha20Poly1305` `encrypt_in_place_detached` /
//! `decrypt_in_place_detached` over the same 64 KiB chunking, on a buffer prepared outside the
//! timed region (no copies, no framing). `format` = `SegmentEncryptor` / `Decryptor` fed in
//! 64 KiB pieces, including key wrapping, header handling and the copy into their buffers.

use std::hint::black_box;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use s3cp_format::{chunk_nonce, Decryptor, KeyRing, MasterKey, ObjectId, SegmentEncryptor, DEFAULT_CHUNK_SIZE};

const SIZES: [(usize, &str); 3] = [(64 << 10, "64KiB"), (1 << 20, "1MiB"), (4 << 20, "4MiB")];
const C: usize = DEFAULT_CHUNK_SIZE as usize;
const OBJ: ObjectId<'static> = ObjectId { bucket: "bench-bucket", key: "some/object/key" };

fn raw_encrypt(aead: &XChaCha20Poly1305, buf: &mut [u8], tags: &mut Vec<Tag>) {
    tags.clear();
    let n = buf.len().div_ceil(C).max(1);
    for (i, chunk) in buf.chunks_mut(C).enumerate() {
        let nonce = chunk_nonce(i as u64, i + 1 == n);
        tags.push(aead.encrypt_in_place_detached(XNonce::from_slice(&nonce), &[], chunk).unwrap());
    }
}

fn raw_decrypt(aead: &XChaCha20Poly1305, buf: &mut [u8], tags: &[Tag]) {
    let n = tags.len();
    for (i, chunk) in buf.chunks_mut(C).enumerate() {
        let nonce = chunk_nonce(i as u64, i + 1 == n);
        aead.decrypt_in_place_detached(XNonce::from_slice(&nonce), &[], chunk, &tags[i]).unwrap();
    }
}

fn format_encrypt(ring: &KeyRing, plain: &[u8]) -> usize {
    let mut enc = SegmentEncryptor::new(ring.current(), OBJ, 0, plain.len() as u64, DEFAULT_CHUNK_SIZE).unwrap();
    let mut n = 0;
    for piece in plain.chunks(C) {
        n += black_box(enc.update(piece).unwrap()).len();
    }
    n + black_box(enc.finish().unwrap()).len()
}

fn format_decrypt(ring: &KeyRing, stored: &[u8]) -> usize {
    let mut dec = Decryptor::new(ring.clone(), OBJ);
    let mut n = 0;
    for piece in stored.chunks(C) {
        n += black_box(dec.update(piece).unwrap()).len();
    }
    n + black_box(dec.finish_expecting_segments(1).unwrap()).len()
}

fn bench(c: &mut Criterion) {
    let ring = KeyRing::single(&MasterKey::new(1, [7; 32]));
    let aead = XChaCha20Poly1305::new(&[9u8; 32].into());
    for (size, label) in SIZES {
        let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut g = c.benchmark_group(format!("encrypt/{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = plain.clone();
        let mut tags = Vec::new();
        g.bench_function(BenchmarkId::from_parameter("raw"), |b| b.iter(|| raw_encrypt(&aead, black_box(&mut buf), &mut tags)));
        g.bench_function(BenchmarkId::from_parameter("format"), |b| b.iter(|| format_encrypt(&ring, black_box(&plain))));
        g.finish();

        let mut g = c.benchmark_group(format!("decrypt/{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        let mut sealed = plain.clone();
        let mut tags = Vec::new();
        raw_encrypt(&aead, &mut sealed, &mut tags);
        g.bench_function(BenchmarkId::from_parameter("raw"), |b| {
            b.iter_batched_ref(|| sealed.clone(), |buf| raw_decrypt(&aead, black_box(buf), &tags), BatchSize::LargeInput)
        });
        let mut stored = Vec::new();
        let mut enc = SegmentEncryptor::new(ring.current(), OBJ, 0, size as u64, DEFAULT_CHUNK_SIZE).unwrap();
        stored.extend_from_slice(&enc.update(&plain).unwrap());
        stored.extend_from_slice(&enc.finish().unwrap());
        g.bench_function(BenchmarkId::from_parameter("format"), |b| b.iter(|| format_decrypt(&ring, black_box(&stored))));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
