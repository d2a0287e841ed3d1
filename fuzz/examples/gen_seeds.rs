//! Writes the committed seed inputs to `fuzz/seeds/<target>/`:
//! `cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds`.
//!
//! A handful per target, in each target's input format (byte 0 = mode): realistic requests,
//! bodies, listings, objects and messages made with the same fixed keys as the targets,
//! so that the fuzzer starts deep inside each parser instead of at its first byte check.
//! None of them is a validly signed request or a valid key delivery: those targets assert
//! that nothing the fuzzer sends is accepted.

use std::fs;
use std::path::{Path, PathBuf};

use filters::checksum::ChecksumAlgorithm;
use s3cp_format::object_cipher_len;
use s3cp_fuzz::{chunked, delivery, object, pseudo_bytes};

fn write(dir: &Path, target: &str, name: &str, data: &[u8]) {
    let d = dir.join(target);
    fs::create_dir_all(&d).expect("create seed dir");
    fs::write(d.join(name), data).expect("write seed");
}

fn with_mode(mode: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(rest);
    v
}

fn sigv4(dir: &Path) {
    let ak = s3cp_fuzz::sigv4::ACCESS_KEY;
    let date = s3cp_fuzz::sigv4::NOW;
    let day = &date[..8];
    let sig = "d".repeat(64);
    let seeds = [
        (
            "get_header_auth",
            format!(
                "GET /fuzz-bucket/dir/a%3Ab.txt\nhost: 127.0.0.1:8080\nx-amz-date: {date}\nx-amz-content-sha256: UNSIGNED-PAYLOAD\nauthorization: AWS4-HMAC-SHA256 Credential={ak}/{day}/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={sig}\n"
            ),
        ),
        (
            "presigned_get",
            format!(
                "GET /fuzz-bucket/key.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={ak}%2F{day}%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date={date}&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature={sig}\nhost: fuzz-bucket.s3.fuzz.local\n"
            ),
        ),
        (
            "put_streaming",
            format!(
                "PUT /fuzz-bucket/obj?partNumber=2&uploadId=abc\nhost: 127.0.0.1\nx-amz-date: {date}\nx-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER\nx-amz-decoded-content-length: 66560\ncontent-length: 66824\ncontent-md5: 1B2M2Y8AsgTpgAmY7PhCfg==\nx-amz-trailer: x-amz-checksum-crc32c\nauthorization: AWS4-HMAC-SHA256 Credential={ak}/{day}/us-east-1/s3/aws4_request,SignedHeaders=content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length,Signature={sig}\n"
            ),
        ),
        (
            "copy_vhost",
            format!(
                "PUT /dst%20key?x-id=CopyObject\nhost: fuzz-bucket.s3.fuzz.local:9000\nx-amz-copy-source: /src-bucket/src%2Bkey?versionId=3\nx-amz-metadata-directive: REPLACE\nx-amz-date: {date}\nx-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\nif-none-match: *\nauthorization: AWS4-HMAC-SHA256 Credential={ak}/{day}/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-copy-source;x-amz-date, Signature={sig}\n"
            ),
        ),
        ("list_v2_anonymous", "GET /fuzz-bucket?list-type=2&prefix=a+b%2F&delimiter=%2F&max-keys=10\nhost: localhost\n".to_string()),
        ("sigv2", "DELETE /fuzz-bucket/k?uploadId=1\nhost: localhost\nauthorization: AWS AKID:c2lnbmF0dXJl\ndate: Thu, 01 Jan 2026 00:00:00 GMT\n".to_string()),
        ("post_delete", format!("POST /fuzz-bucket?delete\nhost: localhost\nx-amz-date: {date}\nx-amz-content-sha256: UNSIGNED-PAYLOAD\nauthorization: AWS4-HMAC-SHA256 Credential={ak}/{day}/us-east-1/s3/aws4_request, SignedHeaders=host, Signature={sig}\n")),
    ];
    for (name, text) in seeds {
        write(dir, "sigv4_auth", name, text.as_bytes());
    }
}

/// Raw-mode aws_chunked input: mode, trailer selector, decoded length, cuts, body.
fn chunked_raw(
    mode: u8,
    trailer: Option<ChecksumAlgorithm>,
    decoded_len: u16,
    cuts: &[u16],
    body: &[u8],
) -> Vec<u8> {
    let sel = trailer.map_or(ChecksumAlgorithm::ALL.len(), |a| {
        ChecksumAlgorithm::ALL
            .iter()
            .position(|x| *x == a)
            .expect("known")
    });
    let mut v = vec![mode, sel as u8];
    v.extend_from_slice(&decoded_len.to_le_bytes());
    v.push(cuts.len() as u8);
    for c in cuts {
        v.extend_from_slice(&c.to_le_bytes());
    }
    v.extend_from_slice(body);
    v
}

fn aws_chunked(dir: &Path) {
    let data = pseudo_bytes(1, 300);
    let key = chunked::signing_key();
    let crc = ChecksumAlgorithm::Crc32;
    let crc_line = vec![(
        crc.header_name().to_string(),
        chunked::checksum_b64(crc, &data),
    )];
    let sizes = [128usize, 100];
    let n = data.len() as u16;
    let t = "aws_chunked";
    write(
        dir,
        t,
        "unsigned_crc32",
        &chunked_raw(
            0,
            Some(crc),
            n,
            &[7, 150],
            &chunked::unsigned_body(&data, &sizes, &crc_line),
        ),
    );
    write(
        dir,
        t,
        "unsigned_plain",
        &chunked_raw(0, None, 5, &[], b"5;ext=1\r\nhello\r\n0\r\n\r\n"),
    );
    let sha = ChecksumAlgorithm::Sha256;
    let sha_line = vec![
        ("x-amz-meta-note".to_string(), "hi".to_string()),
        (
            sha.header_name().to_string(),
            chunked::checksum_b64(sha, &data),
        ),
    ];
    write(
        dir,
        t,
        "unsigned_sha256_meta",
        &chunked_raw(
            0,
            Some(sha),
            n,
            &[1],
            &chunked::unsigned_body(&data, &[300], &sha_line),
        ),
    );
    write(
        dir,
        t,
        "signed",
        &chunked_raw(
            1,
            None,
            n,
            &[90, 91, 300],
            &chunked::signed_body(&key, &data, &sizes, None),
        ),
    );
    let c64 = ChecksumAlgorithm::Crc64Nvme;
    let c64_line = vec![(
        c64.header_name().to_string(),
        chunked::checksum_b64(c64, &data),
    )];
    write(
        dir,
        t,
        "signed_trailer",
        &chunked_raw(
            2,
            Some(c64),
            n,
            &[400],
            &chunked::signed_body(&key, &data, &sizes, Some(&c64_line)),
        ),
    );
    for mode in 3u8..6 {
        write(
            dir,
            t,
            &format!("structured_{mode}"),
            &with_mode(mode, &pseudo_bytes(u64::from(mode), 96)),
        );
    }
}

fn listing(dir: &Path) {
    let c = 65536u32;
    let single = object_cipher_len(1000, c, None);
    let multi = object_cipher_len(300_000, c, Some(131_072));
    let empty = object_cipher_len(0, c, None);
    let v2 = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>fuzz-bucket</Name><Prefix>dir/</Prefix><KeyCount>4</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>\
<Contents><Key>dir/a &amp; b.txt</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag><Size>{single}</Size><StorageClass>STANDARD</StorageClass></Contents>\
<Contents><Key>dir/big</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>\"d41d8cd98f00b204e9800998ecf8427e-3\"</ETag><Size>{multi}</Size><Owner><ID>x</ID></Owner></Contents>\
<Contents><Key>dir/empty</Key><ETag>\"d41d8cd98f00b204e9800998ecf8427e\"</ETag><Size>{empty}</Size></Contents>\
<Contents><Key>dir/plain-upload</Key><ETag>\"abc\"</ETag><Size>5</Size></Contents>\
<CommonPrefixes><Prefix>dir/sub/</Prefix></CommonPrefixes><ContinuationToken>t</ContinuationToken></ListBucketResult>"
    );
    let parts = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListPartsResult><Bucket>b</Bucket><Key>k</Key><UploadId>u</UploadId><PartNumberMarker>0</PartNumberMarker>\
<Part><PartNumber>1</PartNumber><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>&quot;aa&quot;</ETag><Size>{}</Size></Part>\
<Part><PartNumber>2</PartNumber><ETag>\"bb\"</ETag><Size>{single}</Size></Part><IsTruncated>false</IsTruncated></ListPartsResult>",
        object_cipher_len(131_072, c, None)
    );
    let v1 = "<ListBucketResult><Name>b</Name><Prefix></Prefix><Marker></Marker><IsTruncated>true</IsTruncated><NextMarker>z</NextMarker><Contents><Key>z</Key><Size>124</Size><ETag>\"e\"</ETag></Contents><!-- c --><![CDATA[x]]></ListBucketResult>";
    let t = "listing_rewrite";
    write(dir, t, "v2", &with_mode(0, v2.as_bytes()));
    write(dir, t, "parts", &with_mode(0, parts.as_bytes()));
    write(dir, t, "v1", &with_mode(0, v1.as_bytes()));
    write(
        dir,
        t,
        "error",
        &with_mode(
            0,
            b"<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>x</Message></Error>",
        ),
    );
    for i in 0..3u8 {
        write(
            dir,
            t,
            &format!("structured_{i}"),
            &with_mode(1, &pseudo_bytes(10 + u64::from(i), 200)),
        );
    }
}

fn object_decoder(dir: &Path) {
    let ring = object::ring();
    let cases: [(&str, usize, Option<usize>); 5] = [
        ("empty", 0, None),
        ("small", 100, None),
        ("two_chunks", 5000, None),
        ("three_parts", 9000, Some(4096)),
        ("one_part", 300, Some(4096)),
    ];
    for (i, (name, len, part)) in cases.into_iter().enumerate() {
        let (stored, _) =
            object::encrypt(&ring, &pseudo_bytes(i as u64 + 1, len), part, 99 + i as u64);
        // Piece sizes 4113 and 17, then the object.
        let mut input = vec![0u8];
        input.extend_from_slice(&4112u16.to_le_bytes());
        input.push(16);
        input.extend_from_slice(&stored);
        write(dir, "object_decoder", name, &input);
    }
    for i in 0..3u8 {
        write(
            dir,
            "object_decoder",
            &format!("structured_{i}"),
            &with_mode(1, &pseudo_bytes(20 + u64::from(i), 64)),
        );
    }
}

fn key_delivery(dir: &Path) {
    let t = "key_delivery";
    let admin = delivery::admin().verifying_key();
    let r = pseudo_bytes(77, 32 + 24 + 53 + 64);
    // Well-formed, for the fixed challenge and the configured admin, but not signed by it.
    let forged = serde_json::json!({
        "version": 1,
        "challenge": hex::encode(delivery::CHALLENGE),
        "admin_public_key": hex::encode(admin.as_bytes()),
        "admin_ephemeral": hex::encode(&r[..32]),
        "nonce": hex::encode(&r[32..56]),
        "ciphertext": hex::encode(&r[56..109]),
        "signature": hex::encode(&r[109..173]),
    });
    let forged = serde_json::to_vec(&forged).expect("json");
    write(dir, t, "delivery_forged", &with_mode(0, &forged));
    write(dir, t, "service_forged", &with_mode(1, &forged));
    let challenge = delivery::issued().to_message(&delivery::server(), 30);
    write(
        dir,
        t,
        "challenge_valid",
        &with_mode(0, &serde_json::to_vec(&challenge).expect("json")),
    );
    write(
        dir,
        t,
        "service_malformed",
        &with_mode(1, b"{\"version\":2}"),
    );
    for i in 0..3u8 {
        write(
            dir,
            t,
            &format!("tamper_{i}"),
            &with_mode(2, &pseudo_bytes(30 + u64::from(i), 48)),
        );
    }
}

fn main() {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    sigv4(&dir);
    aws_chunked(&dir);
    listing(&dir);
    object_decoder(&dir);
    key_delivery(&dir);
    println!("seeds written to {}", dir.display());
}
