//! `memkey-admin object decrypt|encrypt`: disaster recovery with a key file, interoperating
//! with the format crate the proxy uses; no plaintext on any authentication failure.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use s3cp_format::{meta, ChunkCipher, KeyRing, MasterKey, ObjectId, SegmentEncryptor};

const BIN: &str = env!("CARGO_BIN_EXE_memkey-admin");

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("MEMKEY_ADMIN_DIR", "/nonexistent-memkey-admin-dir")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn text(o: &Output) -> String {
    format!(
        "status {:?} stderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn plaintext(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// Encrypts with the format crate directly, as the proxy would (one segment per part).
fn encrypt_lib(key: &MasterKey, bucket: &str, name: &str, parts: &[&[u8]], chunk: u32) -> Vec<u8> {
    let ring = KeyRing::single(key);
    let obj = ObjectId { bucket, key: name };
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let part_no = if parts.len() == 1 { 0 } else { i as u32 + 1 };
        let mut e =
            // Parts alternate between format versions 1 and 2, as through differently set proxies.
            SegmentEncryptor::new(ChunkCipher::ALL[i % 2], ring.current(), obj, part_no, p.len() as u64, chunk).unwrap();
        out.extend_from_slice(&e.update(p).unwrap());
        out.extend_from_slice(&e.finish().unwrap());
    }
    out
}

struct Fx {
    dir: tempfile::TempDir,
    key_file: PathBuf,
    key: MasterKey,
}

fn fx() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate(3);
    let key_file = dir.path().join("master.key");
    std::fs::write(&key_file, key.to_file_string().as_bytes()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    Fx { dir, key_file, key }
}

fn kf(f: &Fx) -> &str {
    f.key_file.to_str().unwrap()
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn decrypts_objects_written_by_the_format_crate() {
    let f = fx();
    let data = plaintext(50_000);
    let raw = encrypt_lib(&f.key, "b", "dir/obj", &[&data], 4096);
    let o = run(
        &[
            "object",
            "decrypt",
            "--key-file",
            kf(&f),
            "--bucket",
            "b",
            "--key",
            "dir/obj",
        ],
        &raw,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(o.stdout, data);
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("decrypted and verified 50000 bytes (key id 3, 1 segment)"));

    // Multipart: three segments; --parts checks the count.
    let (a, b, c) = (plaintext(10_000), plaintext(9_000), plaintext(5));
    let raw = encrypt_lib(&f.key, "b", "mp", &[&a, &b, &c], 4096);
    let o = run(
        &[
            "object",
            "decrypt",
            "--key-file",
            kf(&f),
            "--bucket",
            "b",
            "--key",
            "mp",
            "--parts",
            "3",
        ],
        &raw,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(o.stdout, [a.clone(), b.clone(), c.clone()].concat());
    let o = run(
        &[
            "object",
            "decrypt",
            "--key-file",
            kf(&f),
            "--bucket",
            "b",
            "--key",
            "mp",
            "--parts",
            "4",
        ],
        &raw,
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(o.stdout.is_empty());
    // Dropping the last part is caught with --parts.
    let two = encrypt_lib(&f.key, "b", "mp", &[&a, &b], 4096);
    let o = run(
        &[
            "object",
            "decrypt",
            "--key-file",
            kf(&f),
            "--bucket",
            "b",
            "--key",
            "mp",
            "--parts",
            "3",
        ],
        &two,
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn no_plaintext_on_any_tampering() {
    let f = fx();
    let data = plaintext(40_000);
    let raw = encrypt_lib(&f.key, "b", "k", &[&data], 4096);
    let mut cases: Vec<(&str, Vec<u8>, &str, &str)> = Vec::new();
    let mut flipped = raw.clone();
    flipped[raw.len() - 100] ^= 1; // inside the last chunk: earlier chunks authenticate fine
    cases.push(("flip in last chunk", flipped, "b", "k"));
    let mut flipped = raw.clone();
    flipped[200] ^= 0x40;
    cases.push(("flip in first chunk", flipped, "b", "k"));
    cases.push(("truncated", raw[..raw.len() - 1].to_vec(), "b", "k"));
    cases.push(("trailing data", [raw.clone(), vec![0]].concat(), "b", "k"));
    cases.push(("other key name", raw.clone(), "b", "k2"));
    cases.push(("other bucket", raw.clone(), "c", "k"));
    cases.push(("not encrypted", data.clone(), "b", "k"));
    for (what, bytes, bucket, key) in &cases {
        let o = run(
            &[
                "object",
                "decrypt",
                "--key-file",
                kf(&f),
                "--bucket",
                bucket,
                "--key",
                key,
            ],
            bytes,
        );
        assert_eq!(o.status.code(), Some(7), "{what}: {}", text(&o));
        assert!(o.stdout.is_empty(), "{what}: plaintext leaked to stdout");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("no plaintext was written"),
            "{what}"
        );

        // Same with --in/--out: the output file is never created, no temp file is left.
        let raw_path = f.dir.path().join("raw.bin");
        std::fs::write(&raw_path, bytes).unwrap();
        let out = f.dir.path().join("plain.bin");
        let o = run(
            &[
                "object",
                "decrypt",
                "--key-file",
                kf(&f),
                "--bucket",
                bucket,
                "--key",
                key,
                "--in",
                raw_path.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            b"",
        );
        assert_eq!(o.status.code(), Some(7), "{what}: {}", text(&o));
        assert!(!out.exists(), "{what}: output file created");
        assert!(
            leftovers(f.dir.path()).is_empty(),
            "{what}: {:?}",
            leftovers(f.dir.path())
        );
    }
    // A different key under the same id: reported as the wrong key, nothing written.
    let other = f.dir.path().join("other.key");
    std::fs::write(&other, MasterKey::generate(3).to_file_string().as_bytes()).unwrap();
    let o = run(
        &[
            "object",
            "decrypt",
            "--key-file",
            other.to_str().unwrap(),
            "--bucket",
            "b",
            "--key",
            "k",
        ],
        &raw,
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(o.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not the key"),
        "{}",
        text(&o)
    );
}

#[test]
fn encrypt_then_decrypt_round_trip_with_metadata() {
    let f = fx();
    let data = plaintext(70_001);
    let plain = f.dir.path().join("p.bin");
    std::fs::write(&plain, &data).unwrap();
    let enc = f.dir.path().join("p.s3cp");
    let o = run(
        &[
            "object",
            "encrypt",
            "--key-file",
            kf(&f),
            "--bucket",
            "bk",
            "--key",
            "a/p.bin",
            "--chunk-size",
            "8192",
            "--content-type",
            "application/x-test",
            "--in",
            plain.to_str().unwrap(),
            "--out",
            enc.to_str().unwrap(),
        ],
        b"",
    );
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let meta_value = err
        .lines()
        .find_map(|l| l.strip_prefix("x-amz-meta-s3cp: "))
        .expect("metadata line")
        .to_owned();
    // The format crate (as the proxy) reads both the body and the metadata.
    let ring = KeyRing::single(&f.key);
    let obj = ObjectId {
        bucket: "bk",
        key: "a/p.bin",
    };
    let opened = meta::open(&ring, obj, &meta_value).unwrap();
    assert_eq!(opened.chunk_size, 8192);
    assert!(String::from_utf8_lossy(&opened.payload).contains("application/x-test"));
    let raw = std::fs::read(&enc).unwrap();
    let mut d = s3cp_format::Decryptor::new(ring, obj);
    let mut got = d.update(&raw).unwrap().to_vec();
    got.extend_from_slice(&d.finish().unwrap());
    assert_eq!(got, data);

    // And the CLI decrypts it, verifying the metadata too, through stdin/stdout.
    let o = run(
        &[
            "object",
            "decrypt",
            "--key-file",
            kf(&f),
            "--bucket",
            "bk",
            "--key",
            "a/p.bin",
            "--meta",
            &meta_value,
        ],
        &raw,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(o.stdout, data);
    assert!(String::from_utf8_lossy(&o.stderr).contains("metadata verified"));
    // Metadata for another object name is refused.
    let o = run(
        &[
            "object",
            "decrypt",
            "--key-file",
            kf(&f),
            "--bucket",
            "bk",
            "--key",
            "other",
            "--meta",
            &meta_value,
        ],
        &raw,
    );
    assert_eq!(o.status.code(), Some(7));
    assert!(o.stdout.is_empty());

    // Encrypt from stdin to stdout.
    let o = run(
        &[
            "object",
            "encrypt",
            "--key-file",
            kf(&f),
            "--bucket",
            "bk",
            "--key",
            "s",
        ],
        &data,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o2 = run(
        &[
            "object",
            "decrypt",
            "--key-file",
            kf(&f),
            "--bucket",
            "bk",
            "--key",
            "s",
        ],
        &o.stdout,
    );
    assert!(o2.status.success(), "{}", text(&o2));
    assert_eq!(o2.stdout, data);

    // --out never overwrites.
    let o = run(
        &[
            "object",
            "decrypt",
            "--key-file",
            kf(&f),
            "--bucket",
            "bk",
            "--key",
            "a/p.bin",
            "--in",
            enc.to_str().unwrap(),
            "--out",
            plain.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let out = f.dir.path().join("restored.bin");
    let o = run(
        &[
            "object",
            "decrypt",
            "--key-file",
            kf(&f),
            "--bucket",
            "bk",
            "--key",
            "a/p.bin",
            "--in",
            enc.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        b"",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(leftovers(f.dir.path()).is_empty());
}

#[test]
fn several_key_files_for_rotated_keys() {
    let f = fx();
    let k2 = MasterKey::generate(9);
    let k2_file = f.dir.path().join("k2.key");
    std::fs::write(&k2_file, k2.to_file_string().as_bytes()).unwrap();
    let raw = encrypt_lib(&k2, "b", "k", &[&plaintext(100)], 4096);
    let o = run(
        &[
            "object",
            "decrypt",
            "--key-file",
            kf(&f),
            "--bucket",
            "b",
            "--key",
            "k",
        ],
        &raw,
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("key id 9"),
        "{}",
        text(&o)
    );
    let o = run(
        &[
            "object",
            "decrypt",
            "--key-file",
            kf(&f),
            "--key-file",
            k2_file.to_str().unwrap(),
            "--bucket",
            "b",
            "--key",
            "k",
        ],
        &raw,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(o.stdout, plaintext(100));
}
