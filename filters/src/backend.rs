//! The untrusted S3 backend: where it is, how requests to it are addressed and signed, and
//! small side requests (HEAD for conditional writes, object reads for copies) that go
//! through pingora's connector, outside the main proxied request.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials as AwsCredentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4::SigningParams;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, WrappedX509};

use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::sigv4::{aws_uri_encode, Credentials};
use crate::verified_write::{BodyFramer, VerifiedWrites};

/// Backend settings, as read from the configuration.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// `https://host[:port]` or `http://host[:port]`.
    pub endpoint: String,
    pub region: String,
    pub credentials: Credentials,
    pub path_style: bool,
    pub insecure_skip_verify: bool,
    /// PEM file with the CA (or certificate) that signs the backend's certificate.
    pub ca_file: Option<String>,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub idle_timeout: Duration,
    /// `false` for providers that reject `If-None-Match` on PUT (the proxy enforces it then).
    pub send_if_none_match: bool,
    /// `Emulate` for providers without DeleteObjects (`delete_emulation`).
    pub delete_objects: crate::delete_emulation::DeleteObjectsMode,
    /// How object bodies sent to the backend carry a checksum it verifies (verified_write.rs).
    pub verified_writes: VerifiedWrites,
}

/// A resolved, ready-to-use backend.
pub struct Backend {
    host: String,
    port: u16,
    tls: bool,
    addr: SocketAddr,
    cfg: BackendConfig,
    ca: Option<Arc<[WrappedX509]>>,
    identity: Identity,
    connector: Connector,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backend({}://{}:{})", if self.tls { "https" } else { "http" }, self.host, self.port)
    }
}

impl Backend {
    /// Parses the endpoint, resolves it once (pingora's `HttpPeer::new` would resolve
    /// synchronously and panic on failure) and loads the CA file.
    pub fn new(cfg: BackendConfig) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = cfg.endpoint.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = cfg.endpoint.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("backend.endpoint {:?} must start with http:// or https://", cfg.endpoint));
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(format!("backend.endpoint {:?} must not have a path", cfg.endpoint));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p.parse::<u16>().map_err(|_| format!("backend.endpoint has a bad port {p:?}"))?;
                (h.trim_start_matches('[').trim_end_matches(']').to_string(), port)
            }
            _ => (authority.to_string(), if tls { 443 } else { 80 }),
        };
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve backend host {host:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("backend host {host:?} has no address"))?;
        let ca = match &cfg.ca_file {
            Some(path) => Some(load_ca(path)?),
            None => None,
        };
        let aws_creds = AwsCredentials::new(
            cfg.credentials.access_key.clone(),
            cfg.credentials.secret().to_string(),
            None,
            None,
            "s3-crypt-proxy",
        );
        Ok(Self {
            host,
            port,
            tls,
            addr,
            ca,
            identity: aws_creds.into(),
            connector: Connector::new(None),
            cfg,
        })
    }

    pub fn sends_if_none_match(&self) -> bool {
        self.cfg.send_if_none_match
    }

    pub fn delete_objects(&self) -> crate::delete_emulation::DeleteObjectsMode {
        self.cfg.delete_objects
    }

    pub fn region(&self) -> &str {
        &self.cfg.region
    }

    /// The peer for pingora, with every timeout set (pingora's defaults are none).
    pub fn peer(&self, bucket: Option<&str>) -> HttpPeer {
        // SNI and certificate names carry no port; virtual-host style names the bucket.
        let sni = match (self.tls, bucket) {
            (false, _) => String::new(),
            (true, Some(b)) if !self.cfg.path_style => format!("{b}.{}", self.host),
            (true, _) => self.host.clone(),
        };
        let mut peer = HttpPeer::new(self.addr, self.tls, sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(self.cfg.connect_timeout);
        o.total_connection_timeout = Some(self.cfg.connect_timeout * 2);
        o.read_timeout = Some(self.cfg.io_timeout);
        o.write_timeout = Some(self.cfg.io_timeout);
        o.idle_timeout = Some(self.cfg.idle_timeout);
        o.verify_cert = !self.cfg.insecure_skip_verify;
        o.verify_hostname = !self.cfg.insecure_skip_verify;
        o.ca = self.ca.clone();
        peer
    }

    /// The Host the backend sees: `host[:port]`, prefixed by the bucket for virtual-host style.
    pub fn host_for(&self, bucket: Option<&str>) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        let hp = if self.port == default_port { self.host.clone() } else { format!("{}:{}", self.host, self.port) };
        match bucket {
            Some(b) if !self.cfg.path_style => format!("{b}.{hp}"),
            _ => hp,
        }
    }

    /// The path and query for an object or bucket on the backend, canonically encoded so
    /// that the request line and the signature agree.
    pub fn path_and_query(&self, bucket: Option<&str>, key: Option<&str>, query: &[(String, String)]) -> String {
        let mut p = String::from("/");
        if let Some(b) = bucket {
            if self.cfg.path_style {
                p.push_str(b);
                p.push('/');
            }
            if let Some(k) = key {
                p.push_str(&aws_uri_encode(k, false));
            }
        }
        if !query.is_empty() {
            p.push('?');
            for (i, (k, v)) in query.iter().enumerate() {
                if i > 0 {
                    p.push('&');
                }
                p.push_str(&aws_uri_encode(k, true));
                // A sub-resource without a value goes on as SDKs send it (`?retention`, not
                // `?retention=`: moto reads the latter as a plain GET of the object). Both
                // sign the same (the canonical query always has `k=`).
                if !v.is_empty() {
                    p.push('=');
                    p.push_str(&aws_uri_encode(v, true));
                }
            }
        }
        p
    }

    /// Signs `req` for the backend. `payload_sha256` is the hex SHA-256 of the body, or
    /// `None` for `UNSIGNED-PAYLOAD` (the body is sealed by our AEAD and, on the wire, TLS).
    /// Signs `host`, `content-md5`, `content-type` and every `x-amz-*` header present.
    pub fn sign(&self, req: &mut RequestHeader, payload_sha256: Option<&str>) -> Result<(), S3Error> {
        match payload_sha256 {
            Some(h) => self.sign_body(req, SignableBody::Precomputed(h.to_string())),
            None => self.sign_body(req, SignableBody::UnsignedPayload),
        }
    }

    /// How object bodies sent to this backend are protected.
    pub fn verified_writes(&self) -> VerifiedWrites {
        self.cfg.verified_writes
    }

    /// Sets the headers of an object body framed by `framer` (Content-Length, and for a
    /// trailer the aws-chunked headers) and signs the request: `STREAMING-UNSIGNED-PAYLOAD-TRAILER`
    /// with a trailer, `UNSIGNED-PAYLOAD` without.
    pub fn sign_upload(&self, req: &mut RequestHeader, framer: &BodyFramer) -> Result<(), S3Error> {
        for h in ["content-length", "content-encoding", "x-amz-decoded-content-length", "x-amz-trailer"] {
            req.remove_header(h);
        }
        let mut headers = framer.headers();
        headers.push(("content-length", framer.content_length().to_string()));
        for (n, v) in headers {
            req.insert_header(n, v).map_err(|e| S3Error::internal("setting an upstream body header", e))?;
        }
        if framer.is_trailer() {
            self.sign_trailer(req)
        } else {
            self.sign_body(req, SignableBody::UnsignedPayload)
        }
    }

    /// Signs a request whose body is aws-chunked with a checksum trailer (its headers set).
    pub fn sign_trailer(&self, req: &mut RequestHeader) -> Result<(), S3Error> {
        self.sign_body(req, SignableBody::StreamingUnsignedPayloadTrailer)
    }

    fn sign_body(&self, req: &mut RequestHeader, body: SignableBody<'_>) -> Result<(), S3Error> {
        for h in ["authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"] {
            req.remove_header(h);
        }
        let uri = req.uri.to_string();
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .filter(|(n, _)| {
                let n = n.as_str();
                n == "host" || n == "content-md5" || n == "content-type" || n.starts_with("x-amz-")
            })
            .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str().to_string(), v.to_string())))
            .collect();
        let signable = SignableRequest::new(
            req.method.as_str(),
            uri.as_str(),
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            body,
        )
        .map_err(|e| S3Error::internal("building the upstream signature", e))?;
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = SigningParams::builder()
            .identity(&self.identity)
            .region(&self.cfg.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| S3Error::internal("building the upstream signing parameters", e))?
            .into();
        let (instructions, _sig) = sign(signable, &params)
            .map_err(|e| S3Error::internal("signing the upstream request", e))?
            .into_parts();
        let (hdrs, _) = instructions.into_parts();
        for h in hdrs {
            req.insert_header(h.name(), h.value())
                .map_err(|e| S3Error::internal("applying the upstream signature", e))?;
        }
        Ok(())
    }

    /// A new request to the backend for `bucket`/`key`, signed, with an exact length.
    pub fn request(
        &self,
        method: &str,
        bucket: Option<&str>,
        key: Option<&str>,
        query: &[(String, String)],
        headers: &[(&str, &str)],
        body_len: Option<u64>,
    ) -> Result<RequestHeader, S3Error> {
        let pq = self.path_and_query(bucket, key, query);
        let mut req = RequestHeader::build(method, pq.as_bytes(), None)
            .map_err(|e| S3Error::internal("building a backend request", e))?;
        let ins = |req: &mut RequestHeader, n: &str, v: &str| {
            req.insert_header(n.to_string(), v.to_string())
                .map_err(|e| S3Error::internal("building a backend request", e))
        };
        ins(&mut req, "host", &self.host_for(bucket))?;
        for (n, v) in headers {
            ins(&mut req, n, v)?;
        }
        if let Some(n) = body_len {
            ins(&mut req, "content-length", &n.to_string())?;
        }
        self.sign(&mut req, None)?;
        Ok(req)
    }

    /// A PUT of an object body of `cipher_len` bytes (a copy, a part copy, a re-wrap), signed,
    /// and the framer its body goes through ([`BodyFramer::piece`], then [`BodyFramer::last`]).
    pub fn upload_request(
        &self,
        bucket: Option<&str>,
        key: Option<&str>,
        query: &[(String, String)],
        headers: &[(&str, &str)],
        cipher_len: u64,
    ) -> Result<(RequestHeader, BodyFramer), S3Error> {
        let mut req = self.request("PUT", bucket, key, query, headers, None)?;
        let framer = self.cfg.verified_writes.framer(cipher_len);
        self.sign_upload(&mut req, &framer)?;
        Ok((req, framer))
    }

    /// Opens a connection and sends a request header; the caller streams the body (if any)
    /// and reads the answer through the returned exchange.
    pub async fn open(&self, bucket: Option<&str>, req: RequestHeader) -> Result<Exchange<'_>, S3Error> {
        let peer = self.peer(bucket);
        let (mut session, reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| backend_unreachable(&e))?;
        crate::backend_stats::side_request(&req, self.cfg.path_style, reused, self.tls);
        session.set_read_timeout(Some(self.cfg.io_timeout));
        session.set_write_timeout(Some(self.cfg.io_timeout));
        session.write_request_header(Box::new(req)).await.map_err(|e| backend_unreachable(&e))?;
        // The socket's fd: pingora's connection id is the raw fd of the TCP stream under it.
        if let Some(stream) = session.stream() {
            ack_promptly(stream.id());
        }
        Ok(Exchange { backend: self, peer, session: Some(session) })
    }

    /// A small request with an optional in-memory body; returns the answer and its body
    /// (at most `max_body` bytes are read).
    pub async fn send(
        &self,
        bucket: Option<&str>,
        req: RequestHeader,
        body: Option<Bytes>,
        max_body: usize,
    ) -> Result<(ResponseHeader, Bytes), S3Error> {
        let mut ex = self.open(bucket, req).await?;
        if let Some(b) = body {
            ex.write_body(b, true).await?;
        }
        let head = ex.read_header().await?;
        let mut buf = BytesMut::new();
        while let Some(piece) = ex.read_body().await? {
            if buf.len() + piece.len() > max_body {
                return Err(S3Error::internal("backend side request", "answer larger than expected"));
            }
            buf.extend_from_slice(&piece);
        }
        ex.release().await;
        Ok((head, buf.freeze()))
    }
}

/// One request/response exchange with the backend on a pooled connection.
pub struct Exchange<'a> {
    backend: &'a Backend,
    peer: HttpPeer,
    session: Option<HttpSession>,
}

impl Exchange<'_> {
    fn session(&mut self) -> &mut HttpSession {
        self.session.as_mut().expect("exchange used after release")
    }

    pub async fn write_body(&mut self, data: Bytes, end: bool) -> Result<(), S3Error> {
        self.session().write_request_body(data, end).await.map_err(|e| backend_unreachable(&e))?;
        if end {
            self.session().finish_request_body().await.map_err(|e| backend_unreachable(&e))?;
        }
        Ok(())
    }

    pub async fn read_header(&mut self) -> Result<ResponseHeader, S3Error> {
        let s = self.session();
        s.read_response_header().await.map_err(|e| backend_unreachable(&e))?;
        s.response_header().cloned().ok_or_else(|| s3err(S3ErrorCode::BadGateway, "the backend sent no response header"))
    }

    pub async fn read_body(&mut self) -> Result<Option<Bytes>, S3Error> {
        self.session().read_response_body().await.map_err(|e| backend_unreachable(&e))
    }

    /// Ends an exchange whose answer body is not wanted (the connection is closed).
    pub async fn release_without_body(mut self) {
        if let Some(mut s) = self.session.take() {
            s.shutdown().await;
        }
    }

    /// Returns the connection to the pool when the exchange finished cleanly.
    pub async fn release(mut self) {
        if let Some(mut s) = self.session.take() {
            if s.response_done() {
                self.backend.connector.release_http_session(s, &self.peer, Some(self.backend.cfg.idle_timeout)).await;
            } else {
                s.shutdown().await;
            }
        }
    }
}

fn backend_unreachable(e: &pingora::Error) -> S3Error {
    log::warn!("backend side request failed: {e}");
    s3err(S3ErrorCode::ServiceUnavailable, "The storage backend could not be reached. Please try again.").with_retry_after(1)
}

fn load_ca(path: &str) -> Result<Arc<[WrappedX509]>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read backend.ca_file {path:?}: {e}"))?;
    let certs: Vec<WrappedX509> = rustls_pemfile::certs(&mut pem.as_slice())
        .map(|c| c.map(|der| WrappedX509::new(der.to_vec(), parse_x509)))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("backend.ca_file {path:?} is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("backend.ca_file {path:?} holds no certificate"));
    }
    Ok(certs.into())
}

/// Asks the kernel to acknowledge what the backend sends right away (TCP_QUICKACK) instead of
/// delaying the ACK in the hope of piggybacking it on our next request. Backends that leave
/// Nagle's algorithm on (Garage does) hold back the small last segment of an answer (a
/// header probe's body, the tail of an object whose size is not a multiple of their write
/// size) until the previous segment is acknowledged, which a delayed ACK postpones by
/// 40 ms. The kernel leaves quick-ACK mode again by itself, so this is set for every
/// request, just after the request is sent. Best effort: errors are ignored.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn ack_promptly(fd: std::os::unix::io::RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a valid pointer to a local;
    // a bad or non-TCP fd only makes the call fail (EBADF/ENOTSOCK/ENOPROTOOPT).
    unsafe {
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_QUICKACK, (&on as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t);
    }
}

#[cfg(not(target_os = "linux"))]
pub fn ack_promptly(_fd: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(endpoint: &str, path_style: bool) -> Backend {
        Backend::new(BackendConfig {
            endpoint: endpoint.into(),
            region: "garage".into(),
            credentials: Credentials::new("GK1", "secret"),
            path_style,
            insecure_skip_verify: false,
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            send_if_none_match: true,
            delete_objects: crate::delete_emulation::DeleteObjectsMode::Native,
            verified_writes: VerifiedWrites::default(),
        })
        .unwrap()
    }

    #[test]
    fn addressing_styles() {
        let b = backend("http://127.0.0.1:3900", true);
        assert_eq!(b.host_for(Some("bkt")), "127.0.0.1:3900");
        assert_eq!(b.path_and_query(Some("bkt"), Some("a b/c:d"), &[]), "/bkt/a%20b/c%3Ad");
        assert_eq!(b.path_and_query(Some("bkt"), Some("k"), &[("retention".into(), "".into()), ("versionId".into(), "v/1".into())]), "/bkt/k?retention&versionId=v%2F1");
        let v = backend("https://localhost", false);
        assert_eq!(v.host_for(Some("bkt")), "bkt.localhost");
        assert_eq!(
            v.path_and_query(Some("bkt"), None, &[("list-type".into(), "2".into()), ("prefix".into(), "a/b".into())]),
            "/?list-type=2&prefix=a%2Fb"
        );
    }

    #[test]
    fn sni_has_no_port() {
        let b = backend("https://127.0.0.1:9443", true);
        assert_eq!(b.peer(Some("bkt")).sni, "127.0.0.1");
        let v = backend("https://localhost:9443", false);
        assert_eq!(v.peer(Some("bkt")).sni, "bkt.localhost");
    }

    #[test]
    fn bad_endpoints_are_refused() {
        let cfg = |e: &str| BackendConfig { endpoint: e.into(), ..backend("http://127.0.0.1:1", true).cfg.clone() };
        assert!(Backend::new(cfg("ftp://x")).is_err());
        assert!(Backend::new(cfg("http://127.0.0.1:1/path")).is_err());
        assert!(Backend::new(cfg("http://127.0.0.1:notaport")).is_err());
    }

    #[test]
    fn signing_sets_authorization_for_unsigned_payload() {
        let b = backend("http://127.0.0.1:3900", true);
        let req = b.request("PUT", Some("bkt"), Some("k"), &[], &[("x-amz-meta-s3cp", "abc")], Some(5)).unwrap();
        let auth = req.headers.get("authorization").unwrap().to_str().unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=GK1/"));
        assert!(auth.contains("/garage/s3/aws4_request"));
        assert!(auth.contains("x-amz-meta-s3cp"));
        assert_eq!(req.headers.get("x-amz-content-sha256").unwrap(), "UNSIGNED-PAYLOAD");
    }
}
