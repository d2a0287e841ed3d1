//! The signing examples of the Amazon S3 API reference ("Signature Calculations for the
//! Authorization Header" and "Query String Authentication"), named after them.

use super::*;

const AK: &str = "AKIAIOSFODNN7EXAMPLE";
const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn at(amz: &str, plus_secs: u64) -> SystemTime {
    parse_amz_date(amz).unwrap() + Duration::from_secs(plus_secs)
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> (RequestHeader, S3Request) {
    let mut r = RequestHeader::build(method, uri.as_bytes(), None).unwrap();
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).unwrap();
    }
    let s = S3Request::parse(&r, Some("s3.amazonaws.com")).unwrap();
    (r, s)
}

fn example_get_object() -> (RequestHeader, S3Request) {
    request(
        "GET",
        "/test.txt",
        &[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            ("x-amz-date", "20130524T000000Z"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
        ],
    )
}

#[test]
fn example_get_object_verifies() {
    let (r, s) = example_get_object();
    let v = verify(&r, &s, &Credentials::new(AK, SK), at("20130524T000000Z", 60)).unwrap();
    assert_eq!(v.access_key, AK);
    assert_eq!(v.scope, "20130524/us-east-1/s3/aws4_request");
}

#[test]
fn example_put_object_verifies() {
    let (r, s) = request(
        "PUT",
        "/test%24file.text",
        &[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"),
        ],
    );
    let v = verify(&r, &s, &Credentials::new(AK, SK), at("20130524T000000Z", 0)).unwrap();
    assert!(matches!(v.payload, PayloadMode::Signed(_)));
}

#[test]
fn example_presigned_get_verifies_and_expires() {
    let uri = "/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
    let (r, s) = request("GET", uri, &[("host", "examplebucket.s3.amazonaws.com")]);
    let creds = Credentials::new(AK, SK);
    let v = verify(&r, &s, &creds, at("20130524T000000Z", 3600)).unwrap();
    assert_eq!(v.payload, PayloadMode::Unsigned);
    let e = verify(&r, &s, &creds, at("20130524T000000Z", 86401)).unwrap_err();
    assert_eq!(e.code, S3ErrorCode::AccessDenied);
    // Tampering with the query breaks the signature.
    let (r, s) = request("GET", &uri.replace("86400", "86401"), &[("host", "examplebucket.s3.amazonaws.com")]);
    assert_eq!(verify(&r, &s, &creds, at("20130524T000000Z", 1)).unwrap_err().code, S3ErrorCode::SignatureDoesNotMatch);
}

#[test]
fn wrong_secret_unknown_key_and_skew_are_told_apart() {
    let (r, s) = example_get_object();
    let now = at("20130524T000000Z", 0);
    assert_eq!(verify(&r, &s, &Credentials::new(AK, "other"), now).unwrap_err().code, S3ErrorCode::SignatureDoesNotMatch);
    assert_eq!(verify(&r, &s, &Credentials::new("AKOTHER", SK), now).unwrap_err().code, S3ErrorCode::InvalidAccessKeyId);
    assert_eq!(verify(&r, &s, &Credentials::new(AK, SK), at("20130524T000000Z", 16 * 60)).unwrap_err().code, S3ErrorCode::RequestTimeTooSkewed);
}

#[test]
fn a_changed_signed_header_breaks_the_signature() {
    let (mut r, _) = example_get_object();
    r.insert_header("range", "bytes=0-10").unwrap();
    let s = S3Request::parse(&r, Some("s3.amazonaws.com")).unwrap();
    let e = verify(&r, &s, &Credentials::new(AK, SK), at("20130524T000000Z", 0)).unwrap_err();
    assert_eq!(e.code, S3ErrorCode::SignatureDoesNotMatch);
}

#[test]
fn anonymous_requests_are_denied() {
    let (r, s) = request("GET", "/test.txt", &[("host", "examplebucket.s3.amazonaws.com")]);
    assert_eq!(verify(&r, &s, &Credentials::new(AK, SK), SystemTime::now()).unwrap_err().code, S3ErrorCode::AccessDenied);
}

#[test]
fn uri_encoding_matches_aws_rules() {
    assert_eq!(aws_uri_encode("a b/c:d~e+f", false), "a%20b/c%3Ad~e%2Bf");
    assert_eq!(aws_uri_encode("a/b", true), "a%2Fb");
    assert_eq!(canonical_query(&[("prefix".into(), "a b".into()), ("delete".into(), "".into())], false), "delete=&prefix=a%20b");
}

fn headers_not_signed(e: &S3Error) -> &str {
    assert_eq!((e.code, e.status()), (S3ErrorCode::AccessDenied, 403), "{e}");
    assert_eq!(e.message, "There were headers present in the request which were not signed");
    match e.details.as_slice() {
        [("HeadersNotSigned", names)] => names,
        other => panic!("no HeadersNotSigned: {other:?}"),
    }
}

/// The AWS presigned example signs only `host`: an `x-amz-copy-source` added by whoever holds
/// the URL keeps the signature valid, and must not turn the request into a copy.
#[test]
fn presigned_url_with_an_added_amz_header_is_refused() {
    let uri = "/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
    let creds = Credentials::new(AK, SK);
    let now = at("20130524T000000Z", 60);
    let (r, s) = request("GET", uri, &[("host", "examplebucket.s3.amazonaws.com"), ("x-amz-copy-source", "other/secret")]);
    assert_eq!(headers_not_signed(&verify(&r, &s, &creds, now).unwrap_err()), "x-amz-copy-source");
    // x-amz-content-sha256 is the canonical request's payload line: bound without being named.
    let (r, s) = request("GET", uri, &[("host", "examplebucket.s3.amazonaws.com"), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")]);
    verify(&r, &s, &creds, now).unwrap();
    // A different payload hash than the one signed breaks the signature instead.
    let (r, s) = request("GET", uri, &[("host", "examplebucket.s3.amazonaws.com"), ("x-amz-content-sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")]);
    assert_eq!(verify(&r, &s, &creds, now).unwrap_err().code, S3ErrorCode::SignatureDoesNotMatch);
}

/// A captured header-signed request replayed with extra `x-amz-*` headers.
#[test]
fn replayed_request_with_extra_amz_headers_is_refused() {
    let creds = Credentials::new(AK, SK);
    let now = at("20130524T000000Z", 0);
    for extra in [
        "x-amz-metadata-directive",
        "x-amz-tagging",
        "x-amz-acl",
        "x-amz-website-redirect-location",
        "x-amz-object-lock-mode",
        "x-amz-checksum-crc32",
        "x-amz-meta-anything",
    ] {
        let (mut r, _) = example_get_object();
        r.append_header(extra, "v").unwrap();
        let s = S3Request::parse(&r, Some("s3.amazonaws.com")).unwrap();
        assert_eq!(headers_not_signed(&verify(&r, &s, &creds, now).unwrap_err()), extra);
    }
    let (mut r, _) = example_get_object();
    r.append_header("x-amz-tagging", "a=b").unwrap();
    r.append_header("x-amz-acl", "public-read").unwrap();
    r.append_header("x-amz-tagging", "c=d").unwrap();
    let s = S3Request::parse(&r, Some("s3.amazonaws.com")).unwrap();
    assert_eq!(headers_not_signed(&verify(&r, &s, &creds, now).unwrap_err()), "x-amz-acl, x-amz-tagging");
}

/// Signed `x-amz-*` headers (the AWS PUT example signs `x-amz-storage-class`) and headers
/// outside `x-amz-*` are not affected.
#[test]
fn signed_amz_headers_and_other_unsigned_headers_pass() {
    let creds = Credentials::new(AK, SK);
    let (mut r, _) = example_get_object();
    for (k, v) in [("user-agent", "x"), ("x-amzn-trace-id", "Root=1"), ("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg=="), ("expect", "100-continue")] {
        r.append_header(k, v).unwrap();
    }
    let s = S3Request::parse(&r, Some("s3.amazonaws.com")).unwrap();
    verify(&r, &s, &creds, at("20130524T000000Z", 0)).unwrap();

    let mut r = RequestHeader::build("PUT", b"/bkt/k", None).unwrap();
    r.insert_header("host", "proxy:9000").unwrap();
    r.insert_header("x-amz-copy-source", "bkt/src").unwrap();
    r.insert_header("x-amz-metadata-directive", "REPLACE").unwrap();
    let now = SystemTime::now();
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    test_signer::sign(&mut r, &creds, &["host", "x-amz-content-sha256", "x-amz-copy-source", "x-amz-date", "x-amz-metadata-directive"], empty, now);
    let s = S3Request::parse(&r, None).unwrap();
    verify(&r, &s, &creds, now).unwrap();
    // Signing all but one of them is not enough.
    test_signer::sign(&mut r, &creds, &["host", "x-amz-content-sha256", "x-amz-copy-source", "x-amz-date"], empty, now);
    assert_eq!(headers_not_signed(&verify(&r, &s, &creds, now).unwrap_err()), "x-amz-metadata-directive");
}
