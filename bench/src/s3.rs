//! Building requests: S3 path-style with SigV4 (aws-sigv4, the same signer the proxy uses
//! towards its backend), or plain HTTP for servers without S3 (rclone serve webdav).

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4::SigningParams;
use aws_smithy_runtime_api::client::identity::Identity;
use http::{HeaderValue, Method, Request};

use crate::body::PoolBody;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Protocol {
    /// S3, path-style, SigV4-signed.
    S3,
    /// Plain HTTP PUT/GET/HEAD of `<endpoint>/<key>` (a WebDAV server such as rclone serve
    /// webdav); `/` in keys becomes `_` so no directories are needed.
    Plain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Payload {
    /// x-amz-content-sha256: UNSIGNED-PAYLOAD, no Content-MD5: the generator spends no CPU
    /// hashing (it shares the cores with the proxy and the backend).
    Unsigned,
    /// The payload's SHA-256 signed and a Content-MD5 header, as PBS sends them.
    Signed,
}

pub struct Target {
    pub endpoint: String,
    pub authority: String,
    pub bucket: String,
    pub region: String,
    pub protocol: Protocol,
    identity: Identity,
}

impl Target {
    pub fn new(endpoint: &str, bucket: &str, region: &str, ak: &str, sk: &str, protocol: Protocol) -> Result<Self, String> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let uri: http::Uri = endpoint.parse().map_err(|e| format!("--endpoint {endpoint}: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err("--endpoint must be http://host:port or https://host:port".into());
        }
        let authority = uri.authority().ok_or("--endpoint needs a host")?.to_string();
        Ok(Target {
            endpoint,
            authority,
            bucket: bucket.to_string(),
            region: region.to_string(),
            protocol,
            identity: Credentials::new(ak, sk, None, None, "s3cp-bench").into(),
        })
    }

    fn uri(&self, key: Option<&str>) -> String {
        match (self.protocol, key) {
            (Protocol::S3, Some(k)) => format!("{}/{}/{}", self.endpoint, self.bucket, k),
            (Protocol::S3, None) => format!("{}/{}", self.endpoint, self.bucket),
            (Protocol::Plain, Some(k)) => format!("{}/{}", self.endpoint, k.replace('/', "_")),
            (Protocol::Plain, None) => format!("{}/", self.endpoint),
        }
    }

    /// A request for `key` (None: the bucket), signed when speaking S3. `digests` are the
    /// payload's (SHA-256 hex, MD5 base64) for signed-payload uploads.
    pub fn request(
        &self,
        method: Method,
        key: Option<&str>,
        range: Option<(u64, u64)>,
        body: PoolBody,
        content_length: Option<u64>,
        digests: Option<(String, String)>,
    ) -> Result<Request<PoolBody>, String> {
        let uri = self.uri(key);
        let mut headers: Vec<(&'static str, String)> = vec![("host", self.authority.clone())];
        if let Some((a, b)) = range {
            headers.push(("range", format!("bytes={a}-{b}")));
        }
        if let Some((_, md5)) = &digests {
            headers.push(("content-md5", md5.clone()));
        }
        self.signed(method, uri, headers, body, content_length, digests)
    }

    /// A request for `key` with a query string (multipart uploads; S3 only). `query` is
    /// already percent-encoded; `digests` as for [`Target::request`].
    pub fn request_query(
        &self,
        method: Method,
        key: &str,
        query: &str,
        body: PoolBody,
        content_length: Option<u64>,
        digests: Option<(String, String)>,
    ) -> Result<Request<PoolBody>, String> {
        if self.protocol != Protocol::S3 {
            return Err("multipart uploads need --protocol s3".into());
        }
        let uri = format!("{}?{query}", self.uri(Some(key)));
        let mut headers = vec![("host", self.authority.clone())];
        if let Some((_, md5)) = &digests {
            headers.push(("content-md5", md5.clone()));
        }
        self.signed(method, uri, headers, body, content_length, digests)
    }

    /// A request for `key` (None: the bucket) with an optional query string (already
    /// percent-encoded; `delete=` for DeleteObjects) and extra signed headers such as
    /// `if-none-match`; S3 only. `digests` as for [`Target::request`].
    pub fn request_with(
        &self,
        method: Method,
        key: Option<&str>,
        query: Option<&str>,
        extra: &[(&'static str, String)],
        body: PoolBody,
        content_length: Option<u64>,
        digests: Option<(String, String)>,
    ) -> Result<Request<PoolBody>, String> {
        let mut uri = self.uri(key);
        if let Some(q) = query {
            uri = format!("{uri}?{q}");
        }
        let mut headers = vec![("host", self.authority.clone())];
        headers.extend(extra.iter().cloned());
        if let Some((_, md5)) = &digests {
            headers.push(("content-md5", md5.clone()));
        }
        self.signed(method, uri, headers, body, content_length, digests)
    }

    /// ListObjectsV2 of `prefix` (S3 only); `prefix` holds only unreserved characters and `/`.
    pub fn list(&self, prefix: &str) -> Result<Request<PoolBody>, String> {
        let uri = format!("{}?list-type=2&prefix={}", self.uri(None), prefix.replace('/', "%2F"));
        let headers = vec![("host", self.authority.clone())];
        self.signed(Method::GET, uri, headers, PoolBody::empty(), None, None)
    }

    fn signed(
        &self,
        method: Method,
        uri: String,
        headers: Vec<(&'static str, String)>,
        body: PoolBody,
        content_length: Option<u64>,
        digests: Option<(String, String)>,
    ) -> Result<Request<PoolBody>, String> {
        let mut b = Request::builder().method(method.clone()).uri(&uri);
        if self.protocol == Protocol::S3 {
            let body = match &digests {
                Some((sha, _)) => SignableBody::Precomputed(sha.clone()),
                None => SignableBody::UnsignedPayload,
            };
            let signable = SignableRequest::new(
                method.as_str(),
                uri.as_str(),
                headers.iter().map(|(n, v)| (*n, v.as_str())),
                body,
            )
            .map_err(|e| format!("signing: {e}"))?;
            let mut settings = SigningSettings::default();
            settings.percent_encoding_mode = PercentEncodingMode::Single;
            settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
            let params = SigningParams::builder()
                .identity(&self.identity)
                .region(&self.region)
                .name("s3")
                .time(SystemTime::now())
                .settings(settings)
                .build()
                .map_err(|e| format!("signing: {e}"))?
                .into();
            let (instructions, _) = sign(signable, &params).map_err(|e| format!("signing: {e}"))?.into_parts();
            let (signed, _) = instructions.into_parts();
            for h in signed {
                b = b.header(h.name(), HeaderValue::from_str(h.value()).map_err(|e| e.to_string())?);
            }
        }
        for (n, v) in headers {
            b = b.header(n, v);
        }
        if let Some(n) = content_length {
            b = b.header("content-length", n);
        }
        b.body(body).map_err(|e| e.to_string())
    }
}
