//! `S3Request::parse` + `sigv4::verify` on arbitrary requests.
//!
//! Input: a request in text form, `METHOD SP TARGET` then `NAME: VALUE` lines (see
//! `s3cp_fuzz::sigv4::request_from_text`); inputs `RequestHeader` refuses are skipped.
//!
//! Properties:
//! * neither function panics, with path-style and virtual-host addressing;
//! * `verify` never accepts: nothing here is signed with the proxy's secret, so every
//!   request — header-signed, presigned, SigV2, anonymous — must be refused, and refused
//!   the same way under a second secret (the verdict cannot depend on the secret except
//!   through the signature);
//! * a parsed request keeps what the filters rely on: the raw path and query exactly as
//!   sent, a valid bucket name, a key of at most 1024 bytes, and an operation consistent
//!   with the addressing (object operations have a key, bucket operations a bucket).
#![no_main]

use filters::request::{Operation, S3Request};
use filters::sigv4::{self, Credentials};
use libfuzzer_sys::fuzz_target;
use s3cp_fuzz::sigv4 as fx;

fn check_parsed(req: &pingora::http::RequestHeader, s3: &S3Request) {
    assert_eq!(s3.raw_path, req.uri.path());
    assert_eq!(s3.raw_query, req.uri.query().unwrap_or(""));
    if let Some(b) = &s3.bucket {
        assert!((3..=63).contains(&b.len()), "bucket {b:?}");
        assert!(
            b.bytes().all(|c| c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'-' | b'.' | b'_')),
            "bucket {b:?}"
        );
        assert!(!b.contains(".."), "bucket {b:?}");
    }
    if let Some(k) = &s3.key {
        assert!(!k.is_empty() && k.len() <= 1024, "key of {} bytes", k.len());
        assert!(s3.bucket.is_some(), "a key without a bucket");
    }
    use Operation::*;
    match s3.op {
        ListBuckets => assert!(s3.bucket.is_none()),
        HeadBucket | CreateBucket | DeleteBucket | ListObjectsV1 | ListObjectsV2
        | ListMultipartUploads | ListObjectVersions | DeleteObjects | BucketOther => {
            assert!(s3.bucket.is_some() && s3.key.is_none(), "{:?}", s3.op)
        }
        HeadObject
        | GetObject
        | PutObject
        | CopyObject
        | DeleteObject
        | CreateMultipartUpload
        | UploadPart
        | UploadPartCopy
        | CompleteMultipartUpload
        | AbortMultipartUpload
        | ListParts
        | GetObjectAttributes
        | RestoreObject
        | ObjectOther => {
            assert!(s3.key.is_some(), "{:?} without a key", s3.op)
        }
    }
    if matches!(s3.op, CopyObject | UploadPartCopy) {
        assert!(s3.copy_source.is_some());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(req) = fx::request_from_text(data) else {
        return;
    };
    let creds = fx::credentials();
    let other = Credentials::new(fx::ACCESS_KEY, "anotherSecretKey/0000000000000000000000000");
    let now = fx::now();
    for vhost in [None, Some("s3.fuzz.local")] {
        let Ok(s3) = S3Request::parse(&req, vhost) else {
            continue;
        };
        check_parsed(&req, &s3);
        let verdict = sigv4::verify(&req, &s3, &creds, now);
        let Err(e) = verdict else {
            panic!(
                "an unsigned request was accepted: {:?}",
                verdict.map(|v| v.access_key)
            );
        };
        let e2 = sigv4::verify(&req, &s3, &other, now).expect_err("accepted under another secret");
        assert_eq!(
            e.code, e2.code,
            "the verdict depends on the secret beyond the signature"
        );
    }
});
