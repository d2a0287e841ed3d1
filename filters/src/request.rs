//! The client's request, parsed once: addressing (bucket, key), the S3 operation and the
//! headers the filters act on, each as a type. Later filters read these fields instead of
//! re-parsing strings.

use http::Method;
use percent_encoding::percent_decode_str;
use pingora::http::RequestHeader;

use crate::error::{s3err, S3Error, S3ErrorCode};

/// The S3 operations the proxy distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    ListBuckets,
    HeadBucket,
    CreateBucket,
    DeleteBucket,
    ListObjectsV1,
    ListObjectsV2,
    ListMultipartUploads,
    /// `GET /bucket?versions`: sizes and ETags rewritten like ListObjects.
    ListObjectVersions,
    DeleteObjects,
    /// Other bucket sub-resources (location, versioning, ...): passed through.
    BucketOther,
    HeadObject,
    GetObject,
    PutObject,
    CopyObject,
    DeleteObject,
    CreateMultipartUpload,
    UploadPart,
    UploadPartCopy,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    ListParts,
    /// `GET ?attributes`: answered by the proxy with plaintext values.
    GetObjectAttributes,
    /// `POST ?restore` (archive tiers): passed through, its XML body checked.
    RestoreObject,
    /// Object sub-resources without content (tagging, acl, retention, legal-hold).
    ObjectOther,
}

impl Operation {
    /// The metric / audit label.
    pub fn name(self) -> &'static str {
        use Operation::*;
        match self {
            ListBuckets => "ListBuckets",
            HeadBucket => "HeadBucket",
            CreateBucket => "CreateBucket",
            DeleteBucket => "DeleteBucket",
            ListObjectsV1 => "ListObjects",
            ListObjectsV2 => "ListObjectsV2",
            ListMultipartUploads => "ListMultipartUploads",
            ListObjectVersions => "ListObjectVersions",
            DeleteObjects => "DeleteObjects",
            BucketOther => "BucketOther",
            HeadObject => "HeadObject",
            GetObject => "GetObject",
            PutObject => "PutObject",
            CopyObject => "CopyObject",
            DeleteObject => "DeleteObject",
            CreateMultipartUpload => "CreateMultipartUpload",
            UploadPart => "UploadPart",
            UploadPartCopy => "UploadPartCopy",
            CompleteMultipartUpload => "CompleteMultipartUpload",
            AbortMultipartUpload => "AbortMultipartUpload",
            ListParts => "ListParts",
            GetObjectAttributes => "GetObjectAttributes",
            RestoreObject => "RestoreObject",
            ObjectOther => "ObjectOther",
        }
    }

    /// Operations whose request body is object data the crypto filter encrypts.
    pub fn carries_object_data(self) -> bool {
        matches!(self, Operation::PutObject | Operation::UploadPart)
    }
}

/// How the client declared its payload in `x-amz-content-sha256`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadMode {
    /// The hex SHA-256 of the whole body, covered by the signature.
    Signed([u8; 32]),
    Unsigned,
    /// aws-chunked with per-chunk signatures.
    StreamingSigned,
    StreamingSignedTrailer,
    StreamingUnsignedTrailer,
}

impl PayloadMode {
    pub fn parse(value: &str) -> Result<Self, S3Error> {
        Ok(match value {
            "UNSIGNED-PAYLOAD" => PayloadMode::Unsigned,
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" => PayloadMode::StreamingSigned,
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => PayloadMode::StreamingSignedTrailer,
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => PayloadMode::StreamingUnsignedTrailer,
            hexv => {
                let mut h = [0u8; 32];
                hex::decode_to_slice(hexv, &mut h).map_err(|_| {
                    s3err(S3ErrorCode::InvalidArgument, "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, a STREAMING-* value or 64 hex characters")
                })?;
                PayloadMode::Signed(h)
            }
        })
    }

    pub fn is_streaming(self) -> bool {
        matches!(
            self,
            PayloadMode::StreamingSigned
                | PayloadMode::StreamingSignedTrailer
                | PayloadMode::StreamingUnsignedTrailer
        )
    }
}

/// `If-None-Match` on a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfNoneMatch {
    Any,
    ETags(String),
}

/// A parsed `x-amz-copy-source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopySource {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
}

/// Everything the filters need to know about the client's request.
#[derive(Clone, Debug)]
pub struct S3Request {
    pub method: Method,
    pub op: Operation,
    pub bucket: Option<String>,
    /// The decoded object key.
    pub key: Option<String>,
    /// The path exactly as the client sent it (for its signature).
    pub raw_path: String,
    /// The query string exactly as sent, without `?`.
    pub raw_query: String,
    /// Decoded query parameters in order.
    pub query: Vec<(String, String)>,
    pub content_length: Option<u64>,
    pub decoded_content_length: Option<u64>,
    pub content_md5: Option<[u8; 16]>,
    pub payload: Option<PayloadMode>,
    pub if_none_match: Option<IfNoneMatch>,
    pub copy_source: Option<CopySource>,
    pub metadata_replace: bool,
}

impl S3Request {
    /// Parses the request line and headers. `vhost_suffix` enables virtual-host addressing
    /// (`bucket.<suffix>`); path-style always works.
    pub fn parse(req: &RequestHeader, vhost_suffix: Option<&str>) -> Result<Self, S3Error> {
        let raw_path = req.uri.path().to_string();
        let raw_query = req.uri.query().unwrap_or("").to_string();
        let query = parse_query(&raw_query);
        let host = header_str(req, "host")?.unwrap_or("");
        let host_no_port = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) { h } else { host }
        });

        let path = decode_path(&raw_path)?;
        let vhost_bucket = vhost_suffix.and_then(|sfx| {
            host_no_port
                .strip_suffix(sfx)
                .and_then(|b| b.strip_suffix('.'))
                .filter(|b| !b.is_empty())
                .map(str::to_string)
        });
        let (bucket, key) = match vhost_bucket {
            Some(b) => {
                let k = path.strip_prefix('/').unwrap_or(&path);
                (Some(b), (!k.is_empty()).then(|| k.to_string()))
            }
            None => {
                let p = path.strip_prefix('/').unwrap_or(&path);
                match p.split_once('/') {
                    Some((b, k)) => (Some(b.to_string()), (!k.is_empty()).then(|| k.to_string())),
                    None if p.is_empty() => (None, None),
                    None => (Some(p.to_string()), None),
                }
            }
        };
        if let Some(b) = &bucket {
            validate_bucket(b)?;
        }
        if let Some(k) = &key {
            if k.len() > 1024 {
                return Err(s3err(S3ErrorCode::KeyTooLongError, "Your key is too long"));
            }
        }

        let has = |name: &str| query.iter().any(|(k, _)| k == name);
        let copy_source = match header_str(req, "x-amz-copy-source")? {
            Some(v) => Some(parse_copy_source(v)?),
            None => None,
        };
        let m = &req.method;
        let op = match (&bucket, &key) {
            (None, _) if *m == Method::GET => Operation::ListBuckets,
            (None, _) => return Err(s3err(S3ErrorCode::MethodNotAllowed, "only GET is allowed on /")),
            (Some(_), None) => match *m {
                Method::HEAD => Operation::HeadBucket,
                Method::GET if query.iter().any(|(k, v)| k == "list-type" && v == "2") => Operation::ListObjectsV2,
                Method::GET if has("uploads") => Operation::ListMultipartUploads,
                Method::GET if has("versions") => Operation::ListObjectVersions,
                Method::GET if query.iter().any(|(k, _)| is_bucket_subresource(k)) => Operation::BucketOther,
                Method::GET => Operation::ListObjectsV1,
                Method::POST if has("delete") => Operation::DeleteObjects,
                Method::PUT if query.is_empty() => Operation::CreateBucket,
                Method::DELETE if query.is_empty() => Operation::DeleteBucket,
                Method::PUT | Method::DELETE => Operation::BucketOther,
                _ => return Err(s3err(S3ErrorCode::MethodNotAllowed, "method not allowed on a bucket")),
            },
            (Some(_), Some(_)) => {
                let part = has("partNumber") && has("uploadId");
                match *m {
                    Method::PUT if copy_source.is_some() && part => Operation::UploadPartCopy,
                    Method::PUT if part => Operation::UploadPart,
                    Method::PUT if query.iter().any(|(k, _)| is_object_meta_subresource(k)) => Operation::ObjectOther,
                    Method::PUT if copy_source.is_some() => Operation::CopyObject,
                    Method::PUT => Operation::PutObject,
                    Method::GET if has("uploadId") => Operation::ListParts,
                    Method::GET if has("attributes") => Operation::GetObjectAttributes,
                    Method::GET if query.iter().any(|(k, _)| is_object_meta_subresource(k)) => Operation::ObjectOther,
                    Method::GET => Operation::GetObject,
                    Method::HEAD => Operation::HeadObject,
                    Method::POST if has("uploads") => Operation::CreateMultipartUpload,
                    Method::POST if has("restore") => Operation::RestoreObject,
                    Method::POST if has("uploadId") => Operation::CompleteMultipartUpload,
                    Method::DELETE if has("uploadId") => Operation::AbortMultipartUpload,
                    Method::DELETE if query.iter().any(|(k, _)| is_object_meta_subresource(k)) => Operation::ObjectOther,
                    Method::DELETE => Operation::DeleteObject,
                    _ => return Err(s3err(S3ErrorCode::NotImplemented, "this object operation is not supported through the encryption proxy")),
                }
            }
        };
        if matches!(op, Operation::GetObject | Operation::HeadObject | Operation::ObjectOther)
            && query.iter().any(|(k, _)| refused_object_subresource(k))
        {
            return Err(s3err(S3ErrorCode::NotImplemented, "this sub-resource would expose ciphertext and is not supported through the encryption proxy"));
        }

        let content_md5 = match header_str(req, "content-md5")? {
            Some(v) => Some(decode_md5(v)?),
            None => None,
        };
        let payload = header_str(req, "x-amz-content-sha256")?.map(PayloadMode::parse).transpose()?;
        let if_none_match = header_str(req, "if-none-match")?.map(|v| {
            if v.trim() == "*" { IfNoneMatch::Any } else { IfNoneMatch::ETags(v.to_string()) }
        });
        let metadata_replace = header_str(req, "x-amz-metadata-directive")?
            .is_some_and(|v| v.eq_ignore_ascii_case("REPLACE"));

        Ok(Self {
            method: m.clone(),
            op,
            bucket,
            key,
            raw_path,
            raw_query,
            query,
            content_length: header_u64(req, "content-length")?,
            decoded_content_length: header_u64(req, "x-amz-decoded-content-length")?,
            content_md5,
            payload,
            if_none_match,
            copy_source,
            metadata_replace,
        })
    }

    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// `/bucket/key` for error resources and logs.
    pub fn resource(&self) -> String {
        match (&self.bucket, &self.key) {
            (Some(b), Some(k)) => format!("/{b}/{k}"),
            (Some(b), None) => format!("/{b}"),
            _ => "/".to_string(),
        }
    }

    /// Length of the plaintext body the client sends (aws-chunked declares it separately).
    pub fn plaintext_length(&self) -> Option<u64> {
        if self.payload.is_some_and(PayloadMode::is_streaming) {
            self.decoded_content_length
        } else {
            self.content_length
        }
    }
}

fn is_bucket_subresource(k: &str) -> bool {
    matches!(
        k,
        "location" | "versioning" | "acl" | "policy" | "cors" | "lifecycle" | "tagging"
            | "encryption" | "object-lock" | "ownershipControls" | "publicAccessBlock"
            | "notification" | "logging" | "website" | "replication" | "accelerate"
            | "requestPayment" | "versions" | "policyStatus" | "analytics" | "metrics"
            | "inventory" | "intelligent-tiering"
    )
}

fn is_object_meta_subresource(k: &str) -> bool {
    matches!(k, "tagging" | "acl" | "retention" | "legal-hold")
}

/// Sub-resources that would hand out ciphertext-derived data as if it were the object.
fn refused_object_subresource(k: &str) -> bool {
    matches!(k, "torrent" | "select")
}

fn header_str<'a>(req: &'a RequestHeader, name: &str) -> Result<Option<&'a str>, S3Error> {
    match req.headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| s3err(S3ErrorCode::InvalidArgument, format!("header {name} is not valid ASCII"))),
    }
}

fn header_u64(req: &RequestHeader, name: &str) -> Result<Option<u64>, S3Error> {
    header_str(req, name)?
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                s3err(S3ErrorCode::InvalidArgument, format!("header {name} must be a non-negative integer"))
            })
        })
        .transpose()
}

fn decode_md5(v: &str) -> Result<[u8; 16], S3Error> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .map_err(|_| s3err(S3ErrorCode::InvalidDigest, "The Content-MD5 you specified was not valid base64"))?;
    bytes
        .try_into()
        .map_err(|_| s3err(S3ErrorCode::InvalidDigest, "The Content-MD5 you specified must be 16 bytes"))
}

fn decode_path(raw: &str) -> Result<String, S3Error> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| s3err(S3ErrorCode::InvalidArgument, "the request path is not valid UTF-8"))
}

/// Decodes a query string the way S3 does: `%XX` escapes, and a raw `+` means a space.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (query_decode(k), query_decode(v))
        })
        .collect()
}

fn query_decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

fn validate_bucket(b: &str) -> Result<(), S3Error> {
    let ok = (3..=63).contains(&b.len())
        && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.' || c == b'_')
        && !b.contains("..");
    if ok {
        Ok(())
    } else {
        Err(s3err(S3ErrorCode::InvalidBucketName, "The specified bucket is not valid.").with_resource(b))
    }
}

fn parse_copy_source(v: &str) -> Result<CopySource, S3Error> {
    let (path, version) = match v.split_once("?versionId=") {
        Some((p, ver)) => (p, Some(ver.to_string())),
        None => (v, None),
    };
    let decoded = decode_path(path)?;
    let trimmed = decoded.strip_prefix('/').unwrap_or(&decoded);
    let (bucket, key) = trimmed
        .split_once('/')
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or_else(|| s3err(S3ErrorCode::InvalidArgument, "x-amz-copy-source must be bucket/key"))?;
    validate_bucket(bucket)?;
    Ok(CopySource { bucket: bucket.to_string(), key: key.to_string(), version_id: version })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, uri.as_bytes(), None).unwrap();
        r.insert_header("host", "127.0.0.1:8080").unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn pbs_paths_decode_colon_and_keep_raw_path() {
        let r = req("GET", "/pbs-bucket/store/.cnt/vm/100/2026-11-22T21%3A45%3A19Z/index.json.blob", &[]);
        let s = S3Request::parse(&r, None).unwrap();
        assert_eq!(s.op, Operation::GetObject);
        assert_eq!(s.bucket.as_deref(), Some("pbs-bucket"));
        assert_eq!(s.key.as_deref(), Some("store/.cnt/vm/100/2026-11-22T21:45:19Z/index.json.blob"));
        assert!(s.raw_path.contains("%3A"));
    }

    #[test]
    fn operations_are_recognised() {
        let cases = [
            ("GET", "/", Operation::ListBuckets),
            ("HEAD", "/bkt/", Operation::HeadBucket),
            ("GET", "/bkt/?list-type=2&prefix=a", Operation::ListObjectsV2),
            ("GET", "/bkt", Operation::ListObjectsV1),
            ("POST", "/bkt/?delete", Operation::DeleteObjects),
            ("PUT", "/bkt/k", Operation::PutObject),
            ("PUT", "/bkt/k?partNumber=2&uploadId=x", Operation::UploadPart),
            ("POST", "/bkt/k?uploads", Operation::CreateMultipartUpload),
            ("POST", "/bkt/k?uploadId=x", Operation::CompleteMultipartUpload),
            ("DELETE", "/bkt/k?uploadId=x", Operation::AbortMultipartUpload),
            ("GET", "/bkt/k?uploadId=x", Operation::ListParts),
            ("DELETE", "/bkt/k", Operation::DeleteObject),
            ("GET", "/bkt/k?tagging", Operation::ObjectOther),
            ("GET", "/bkt/k?retention", Operation::ObjectOther),
            ("PUT", "/bkt/k?legal-hold", Operation::ObjectOther),
            ("GET", "/bkt?versions&prefix=a", Operation::ListObjectVersions),
            ("GET", "/bkt?object-lock", Operation::BucketOther),
            ("GET", "/bkt/k?attributes", Operation::GetObjectAttributes),
            ("GET", "/bkt/k?attributes&versionId=v1", Operation::GetObjectAttributes),
            ("POST", "/bkt/k?restore", Operation::RestoreObject),
            ("GET", "/bkt/k?versionId=v1", Operation::GetObject),
            ("DELETE", "/bkt/k?versionId=v1", Operation::DeleteObject),
        ];
        for (m, u, op) in cases {
            assert_eq!(S3Request::parse(&req(m, u, &[]), None).unwrap().op, op, "{m} {u}");
        }
        let copy = req("PUT", "/bkt/k.0.bad", &[("x-amz-copy-source", "bkt/k")]);
        let s = S3Request::parse(&copy, None).unwrap();
        assert_eq!(s.op, Operation::CopyObject);
        assert_eq!(s.copy_source.unwrap().key, "k");
    }

    #[test]
    fn refuses_content_exposing_subresources() {
        let e = S3Request::parse(&req("GET", "/bkt/k?torrent", &[]), None).unwrap_err();
        assert_eq!(e.code, S3ErrorCode::NotImplemented);
    }

    #[test]
    fn virtual_host_addressing() {
        let mut r = RequestHeader::build("GET", b"/a/b.txt", None).unwrap();
        r.insert_header("host", "mybucket.s3.local:8443").unwrap();
        let s = S3Request::parse(&r, Some("s3.local")).unwrap();
        assert_eq!(s.bucket.as_deref(), Some("mybucket"));
        assert_eq!(s.key.as_deref(), Some("a/b.txt"));
    }

    #[test]
    fn bad_headers_are_typed_errors() {
        let e = S3Request::parse(&req("PUT", "/bkt/k", &[("content-md5", "###")]), None).unwrap_err();
        assert_eq!(e.code, S3ErrorCode::InvalidDigest);
        let e = S3Request::parse(&req("PUT", "/bkt/k", &[("x-amz-content-sha256", "xyz")]), None).unwrap_err();
        assert_eq!(e.code, S3ErrorCode::InvalidArgument);
        let e = S3Request::parse(&req("GET", "/Bad_Bucket!/k", &[]), None).unwrap_err();
        assert_eq!(e.code, S3ErrorCode::InvalidBucketName);
    }

    #[test]
    fn plus_in_query_is_space() {
        assert_eq!(parse_query("prefix=a+b%2Fc&delete"), vec![("prefix".into(), "a b/c".into()), ("delete".into(), "".into())]);
    }
}
