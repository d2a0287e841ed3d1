//! Encrypt/decrypt throughput of the format against the raw AEAD on the same bytes.
//!
//! `raw` = OpenSSL's ChaCha20-Poly1305 (the per-chunk operation the format uses) over the
//! same 64 KiB chunking, on a buffer prepared outside the timed region (no copies, no
//! framing). `format` = `SegmentEncryptor` / `Decryptor` fed in 64 KiB pieces, including key
//! wrapping, header handling and the copy into their buffers. For comparison, the same chunks
//! through two other implementations: `ring` (ChaCha20-Poly1305) and `xchacha-rustcrypto`
//! (RustCrypto's portable XChaCha20-Poly1305, what the format used first).
//!
//! Format version 2 (AES-256-GCM chunks) beside version 1: `raw-aes-gcm` is OpenSSL's
//! AES-256-GCM over the same chunking, `format-v2` the format writing and reading version 2
//! (`format` is version 1). Only these: `cargo bench -p s3cp-format --bench throughput -- 'v2|raw'`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion, Throughput};
use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use s3cp_format::{
    chunk_nonce, ChunkCipher, Decryptor, KeyRing, MasterKey, ObjectId, SegmentEncryptor,
    DEFAULT_CHUNK_SIZE,
};

const SIZES: [(usize, &str); 3] = [(64 << 10, "64KiB"), (1 << 20, "1MiB"), (4 << 20, "4MiB")];
const C: usize = DEFAULT_CHUNK_SIZE as usize;
const OBJ: ObjectId<'static> = ObjectId {
    bucket: "bench-bucket",
    key: "some/object/key",
};

type Tag = [u8; 16];

/// The format's per-chunk nonce under a subkey: `[0; 4] || index`.
fn raw_nonce(i: usize) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&(i as u64).to_be_bytes());
    n
}

/// Sealing and opening contexts under one fixed key, as the format keeps per segment.
struct Raw {
    seal: CipherCtx,
    open: CipherCtx,
}

fn raw_key() -> Raw {
    raw_key_for(Cipher::chacha20_poly1305())
}

fn raw_key_for(cipher: &openssl::cipher::CipherRef) -> Raw {
    let mut seal = CipherCtx::new().unwrap();
    seal.encrypt_init(Some(cipher), Some(&[9u8; 32]), None).unwrap();
    let mut open = CipherCtx::new().unwrap();
    open.decrypt_init(Some(cipher), Some(&[9u8; 32]), None).unwrap();
    Raw { seal, open }
}

fn raw_encrypt(key: &mut Raw, buf: &mut [u8], tags: &mut Vec<Tag>) {
    tags.clear();
    let ctx = &mut key.seal;
    for (i, chunk) in buf.chunks_mut(C).enumerate() {
        ctx.encrypt_init(None, None, Some(&raw_nonce(i))).unwrap();
        let len = chunk.len();
        ctx.cipher_update_inplace(chunk, len).unwrap();
        ctx.cipher_final(&mut []).unwrap();
        let mut tag = [0u8; 16];
        ctx.tag(&mut tag).unwrap();
        tags.push(tag);
    }
}

fn raw_decrypt(key: &mut Raw, buf: &mut [u8], tags: &[Tag]) {
    let ctx = &mut key.open;
    for (i, chunk) in buf.chunks_mut(C).enumerate() {
        ctx.decrypt_init(None, None, Some(&raw_nonce(i))).unwrap();
        let len = chunk.len();
        ctx.cipher_update_inplace(chunk, len).unwrap();
        ctx.set_tag(&tags[i]).unwrap();
        ctx.cipher_final(&mut []).unwrap();
    }
}

fn ring_encrypt(key: &LessSafeKey, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(C).enumerate() {
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(raw_nonce(i)), Aad::empty(), chunk)
            .unwrap();
        black_box(tag.as_ref());
    }
}

fn rustcrypto_encrypt(aead: &XChaCha20Poly1305, buf: &mut [u8]) {
    let n = buf.len().div_ceil(C).max(1);
    for (i, chunk) in buf.chunks_mut(C).enumerate() {
        let nonce = chunk_nonce(i as u64, i + 1 == n);
        black_box(
            aead.encrypt_in_place_detached(XNonce::from_slice(&nonce), &[], chunk)
                .unwrap(),
        );
    }
}

fn format_encrypt(ring: &KeyRing, plain: &[u8]) -> usize {
    format_encrypt_with(ChunkCipher::XChaCha20Poly1305, ring, plain)
}

fn format_encrypt_with(cipher: ChunkCipher, ring: &KeyRing, plain: &[u8]) -> usize {
    let mut enc = SegmentEncryptor::new(
        cipher,
        ring.current(),
        OBJ,
        0,
        plain.len() as u64,
        DEFAULT_CHUNK_SIZE,
    )
    .unwrap();
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
    let mut aead = raw_key();
    let mut gcm = raw_key_for(Cipher::aes_256_gcm());
    let ring_key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[9u8; 32]).unwrap());
    let ring_gcm = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[9u8; 32]).unwrap());
    let xchacha = XChaCha20Poly1305::new(&[9u8; 32].into());
    for (size, label) in SIZES {
        let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut g = c.benchmark_group(format!("encrypt/{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = plain.clone();
        let mut tags = Vec::new();
        g.bench_function(BenchmarkId::from_parameter("raw"), |b| {
            b.iter(|| raw_encrypt(&mut aead, black_box(&mut buf), &mut tags))
        });
        g.bench_function(BenchmarkId::from_parameter("format"), |b| {
            b.iter(|| format_encrypt(&ring, black_box(&plain)))
        });
        g.bench_function(BenchmarkId::from_parameter("raw-aes-gcm"), |b| {
            b.iter(|| raw_encrypt(&mut gcm, black_box(&mut buf), &mut tags))
        });
        g.bench_function(BenchmarkId::from_parameter("format-v2"), |b| {
            b.iter(|| format_encrypt_with(ChunkCipher::Aes256Gcm, &ring, black_box(&plain)))
        });
        g.bench_function(BenchmarkId::from_parameter("ring"), |b| {
            b.iter(|| ring_encrypt(&ring_key, black_box(&mut buf)))
        });
        g.bench_function(BenchmarkId::from_parameter("ring-aes-gcm"), |b| {
            b.iter(|| ring_encrypt(&ring_gcm, black_box(&mut buf)))
        });
        g.bench_function(BenchmarkId::from_parameter("xchacha-rustcrypto"), |b| {
            b.iter(|| rustcrypto_encrypt(&xchacha, black_box(&mut buf)))
        });
        g.finish();

        let mut g = c.benchmark_group(format!("decrypt/{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        let mut sealed = plain.clone();
        let mut tags = Vec::new();
        raw_encrypt(&mut aead, &mut sealed, &mut tags);
        g.bench_function(BenchmarkId::from_parameter("raw"), |b| {
            b.iter_batched_ref(
                || sealed.clone(),
                |buf| raw_decrypt(&mut aead, black_box(buf), &tags),
                BatchSize::LargeInput,
            )
        });
        let mut gcm_sealed = plain.clone();
        let mut gcm_tags = Vec::new();
        raw_encrypt(&mut gcm, &mut gcm_sealed, &mut gcm_tags);
        g.bench_function(BenchmarkId::from_parameter("raw-aes-gcm"), |b| {
            b.iter_batched_ref(
                || gcm_sealed.clone(),
                |buf| raw_decrypt(&mut gcm, black_box(buf), &gcm_tags),
                BatchSize::LargeInput,
            )
        });
        for (cipher, name) in [
            (ChunkCipher::XChaCha20Poly1305, "format"),
            (ChunkCipher::Aes256Gcm, "format-v2"),
        ] {
            let mut stored = Vec::new();
            let mut enc =
                SegmentEncryptor::new(cipher, ring.current(), OBJ, 0, size as u64, DEFAULT_CHUNK_SIZE)
                    .unwrap();
            stored.extend_from_slice(&enc.update(&plain).unwrap());
            stored.extend_from_slice(&enc.finish().unwrap());
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| format_decrypt(&ring, black_box(&stored)))
            });
        }
        g.finish();
    }
}

/// Paired measurement: raw and format alternate round by round on the same data, so load from
/// other processes on a shared machine hits both alike. Prints the median ratio per case.
fn paired_overhead() {
    let ring = KeyRing::single(&MasterKey::new(1, [7; 32]));
    let mut aead = raw_key();
    let rounds = 41;
    println!(
        "\npaired overhead (median of {rounds} alternating rounds, format time / raw time - 1):"
    );
    for (size, label) in SIZES {
        let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let iters = ((8 << 20) / size).max(2);
        let mut sealed = plain.clone();
        let mut sealed_tags = Vec::new();
        raw_encrypt(&mut aead, &mut sealed, &mut sealed_tags);
        let mut tags = Vec::new();
        let mut stored = Vec::new();
        let mut enc =
            SegmentEncryptor::new(ChunkCipher::XChaCha20Poly1305, ring.current(), OBJ, 0, size as u64, DEFAULT_CHUNK_SIZE).unwrap();
        stored.extend_from_slice(&enc.update(&plain).unwrap());
        stored.extend_from_slice(&enc.finish().unwrap());
        for op in ["encrypt", "decrypt"] {
            let mut ratios = Vec::new();
            let (mut raw_total, mut fmt_total) = (Duration::ZERO, Duration::ZERO);
            let mut buf = plain.clone();
            for round in 0..rounds {
                let mut raw = Duration::ZERO;
                let mut fmt = Duration::ZERO;
                let mut run_raw = || {
                    for _ in 0..iters {
                        if op == "encrypt" {
                            let t = Instant::now();
                            raw_encrypt(&mut aead, black_box(&mut buf), &mut tags);
                            raw += t.elapsed();
                        } else {
                            buf.copy_from_slice(&sealed);
                            let t = Instant::now();
                            raw_decrypt(&mut aead, black_box(&mut buf), &sealed_tags);
                            raw += t.elapsed();
                        }
                    }
                };
                let mut run_fmt = || {
                    let t = Instant::now();
                    for _ in 0..iters {
                        if op == "encrypt" {
                            black_box(format_encrypt(&ring, black_box(&plain)));
                        } else {
                            black_box(format_decrypt(&ring, black_box(&stored)));
                        }
                    }
                    fmt += t.elapsed();
                };
                if round % 2 == 0 {
                    run_raw();
                    run_fmt();
                } else {
                    run_fmt();
                    run_raw();
                }
                if round > 0 {
                    // round 0 warms up
                    ratios.push(fmt.as_secs_f64() / raw.as_secs_f64());
                    raw_total += raw;
                    fmt_total += fmt;
                }
            }
            ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let median = ratios[ratios.len() / 2];
            let bytes = (size * iters * (rounds - 1)) as f64;
            let mib = |d: Duration| bytes / d.as_secs_f64() / (1 << 20) as f64;
            println!(
                "  {op} {label:>5}: raw {:7.1} MiB/s  format {:7.1} MiB/s  overhead {:+5.1}% (quartiles {:+.1}% .. {:+.1}%)",
                mib(raw_total),
                mib(fmt_total),
                (median - 1.0) * 100.0,
                (ratios[ratios.len() / 4] - 1.0) * 100.0,
                (ratios[3 * ratios.len() / 4] - 1.0) * 100.0
            );
        }
    }
}

/// Paired measurement of the two format versions: version 1 and version 2 alternate round by
/// round on the same plaintext (64 KiB chunks), so load from other processes hits both alike.
/// Prints each version's throughput and the median time ratio v2 / v1 per case.
fn paired_versions() {
    let ring = KeyRing::single(&MasterKey::new(1, [7; 32]));
    let rounds = 41;
    println!("\nformat v2 (AES-256-GCM) against v1 (XChaCha20-Poly1305), median of {rounds} alternating rounds:");
    for (size, label) in SIZES {
        let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let iters = ((8 << 20) / size).max(2);
        let stored = |cipher| {
            let mut enc =
                SegmentEncryptor::new(cipher, ring.current(), OBJ, 0, size as u64, DEFAULT_CHUNK_SIZE).unwrap();
            let mut v = enc.update(&plain).unwrap().to_vec();
            v.extend_from_slice(&enc.finish().unwrap());
            v
        };
        let stored = [stored(ChunkCipher::XChaCha20Poly1305), stored(ChunkCipher::Aes256Gcm)];
        for op in ["encrypt", "decrypt"] {
            let mut ratios = Vec::new();
            let mut totals = [Duration::ZERO; 2];
            for round in 0..rounds {
                let mut times = [Duration::ZERO; 2];
                let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
                for v in order {
                    let cipher = [ChunkCipher::XChaCha20Poly1305, ChunkCipher::Aes256Gcm][v];
                    let t = Instant::now();
                    for _ in 0..iters {
                        if op == "encrypt" {
                            black_box(format_encrypt_with(cipher, &ring, black_box(&plain)));
                        } else {
                            black_box(format_decrypt(&ring, black_box(&stored[v])));
                        }
                    }
                    times[v] = t.elapsed();
                }
                if round > 0 {
                    ratios.push(times[1].as_secs_f64() / times[0].as_secs_f64());
                    totals[0] += times[0];
                    totals[1] += times[1];
                }
            }
            ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let bytes = (size * iters * (rounds - 1)) as f64;
            let gbs = |d: Duration| bytes / d.as_secs_f64() / 1e9;
            println!(
                "  {op} {label:>5}: v1 {:5.2} GB/s  v2 {:5.2} GB/s  time v2/v1 {:.2} (quartiles {:.2} .. {:.2})",
                gbs(totals[0]),
                gbs(totals[1]),
                ratios[ratios.len() / 2],
                ratios[ratios.len() / 4],
                ratios[3 * ratios.len() / 4]
            );
        }
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Skipped when criterion only lists or filters benchmarks.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--list" || a == "--test") {
        // `S3CP_BENCH_PAIRED=versions` runs only the version comparison.
        if std::env::var("S3CP_BENCH_PAIRED").as_deref() != Ok("versions") {
            paired_overhead();
        }
        paired_versions();
    }
}
