//! Content-MD5 cost of PBS-like uploads: CPU-seconds per GiB of MD5 for 1, 4, 8 and 16
//! concurrent 4 MiB uploads fed in 64 KiB pieces (what the proxy's upload path receives),
//! through `md5_lanes` (multi-buffer lanes) against the `md-5` crate on each upload's own
//! thread (what the proxy used before), in the same run. SHA-256 (`sha2`, SHA-NI) is shown
//! for scale. CPU time is the process's (user + system), so waiting is not counted.
//!
//! `cargo bench -p filters --bench digests` (release build; ~20 s).

use std::time::Instant;

use bytes::Bytes;
use filters::md5_lanes::Md5Stream;
use filters::md5_sha256::Md5Sha256;
use md5::Digest as _;

const OBJECT: usize = 4 << 20;
const PIECE: usize = 64 << 10;
const GIB: f64 = (1u64 << 30) as f64;

/// User + system CPU time of this process (`/proc/self/stat`, in USER_HZ = 100 ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("reading /proc/self/stat");
    let after_name = &stat[stat.rfind(')').expect("stat has a name") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `after_name` starts at field 3.
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

fn body() -> Bytes {
    Bytes::from((0..OBJECT as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>())
}

/// Runs `uploads` concurrent uploaders, each hashing `per_upload` objects with `hash`;
/// returns (GB/s wall, CPU-s per GiB).
fn run(uploads: usize, per_upload: usize, hash: fn(&Bytes) -> [u8; 16]) -> (f64, f64) {
    let data = body();
    let expected: [u8; 16] = md5::Md5::digest(&data).into();
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    std::thread::scope(|s| {
        for _ in 0..uploads {
            let data = data.clone();
            s.spawn(move || {
                for _ in 0..per_upload {
                    assert_eq!(hash(&data), expected);
                }
            });
        }
    });
    let bytes = (uploads * per_upload * OBJECT) as f64;
    (bytes / t0.elapsed().as_secs_f64() / 1e9, (cpu_seconds() - cpu0) / (bytes / GIB))
}

fn lanes(data: &Bytes) -> [u8; 16] {
    let mut s = Md5Stream::new();
    for off in (0..data.len()).step_by(PIECE) {
        s.feed(data.slice(off..(off + PIECE).min(data.len())));
    }
    s.finish()
}

fn md5_crate(data: &Bytes) -> [u8; 16] {
    let mut h = md5::Md5::new();
    for p in data.chunks(PIECE) {
        h.update(p);
    }
    h.finalize().into()
}

/// md5-many's single-stream kernel alone (what a one-lane batch used before).
fn md5_many_single(data: &Bytes) -> [u8; 16] {
    let mut s = md5_many::Md5State::new();
    for p in data.chunks(PIECE) {
        s.update(p);
    }
    s.finalize()
}

/// libcrypto's assembly MD5 alone (what a solo stream of md5_lanes uses).
fn libcrypto(data: &Bytes) -> [u8; 16] {
    libcrypto_digest(openssl::hash::MessageDigest::md5(), data)
}

/// One libcrypto digest of `data`, fed in the proxy's piece size.
fn libcrypto_digest<const N: usize>(md: openssl::hash::MessageDigest, data: &Bytes) -> [u8; N] {
    let mut h = openssl::hash::Hasher::new(md).expect("libcrypto digest");
    for p in data.chunks(PIECE) {
        h.update(p).expect("libcrypto digest");
    }
    h.finish().expect("libcrypto digest").as_ref().try_into().expect("the digest's length")
}

fn sha256(data: &Bytes) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for p in data.chunks(PIECE) {
        h.update(p);
    }
    h.finalize().into()
}

/// libcrypto's SHA-256 (its own SHA-NI assembly), beside `sha2`'s.
fn sha256_libcrypto(data: &Bytes) -> [u8; 32] {
    libcrypto_digest(openssl::hash::MessageDigest::sha256(), data)
}

/// Both digests of a PBS upload apart, as the proxy hashes them without the stitched kernel
/// (md5-many's one-stream MD5, then `sha2`), folded into one value to compare.
fn md5_then_sha256(data: &Bytes) -> [u8; 32] {
    let md5 = md5_many_single(data);
    fold(md5, sha256(data))
}

fn stitched(data: &Bytes) -> [u8; 32] {
    let mut h = Md5Sha256::new().expect("checked by the caller");
    for p in data.chunks(PIECE) {
        h.update(p);
    }
    let (md5, sha) = h.finalize();
    fold(md5, sha)
}

fn fold(md5: [u8; 16], mut sha: [u8; 32]) -> [u8; 32] {
    sha.iter_mut().zip(md5).for_each(|(s, m)| *s ^= m);
    sha
}

fn main() {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    println!("{:<28} {:>8} {:>10} {:>12}", "digest", "uploads", "GB/s", "CPU-s/GiB");
    for uploads in [1usize, 4, 8, 16] {
        let per = 96 / uploads.max(1) + 8;
        let mut kinds = vec![("md-5 (before)", md5_crate as fn(&Bytes) -> [u8; 16]), ("md5_lanes", lanes)];
        if uploads == 1 {
            kinds.extend([("md5-many one stream", md5_many_single as fn(&Bytes) -> [u8; 16]), ("libcrypto MD5", libcrypto)]);
        }
        for (name, f) in kinds {
            let (gbs, cpu) = run(uploads, per, f);
            println!("{name:<28} {uploads:>8} {gbs:>10.2} {cpu:>12.3}");
        }
    }
    // SHA-256 for scale, one stream: the `sha2` crate (what the proxy uses) and libcrypto;
    // then both digests of a PBS upload, one after the other and stitched (md5_sha256).
    let data = body();
    assert_eq!(sha256(&data), sha256_libcrypto(&data));
    let mut kinds = vec![("sha2 SHA-256 (scale)", sha256 as fn(&Bytes) -> [u8; 32]), ("libcrypto SHA-256", sha256_libcrypto), ("MD5 then SHA-256 (apart)", md5_then_sha256)];
    if Md5Sha256::new().is_some() {
        assert_eq!(md5_then_sha256(&data), stitched(&data));
        kinds.push(("MD5 + SHA-256 stitched", stitched));
    } else {
        println!("(no SHA extensions here: no stitched MD5 + SHA-256)");
    }
    for (name, f) in kinds {
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        for _ in 0..96 {
            std::hint::black_box(f(&data));
        }
        let bytes = (96 * OBJECT) as f64;
        println!("{name:<28} {:>8} {:>10.2} {:>12.3}", 1, bytes / t0.elapsed().as_secs_f64() / 1e9, (cpu_seconds() - cpu0) / (bytes / GIB));
    }
}
