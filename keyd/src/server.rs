//! HTTP front end: the TCP listener (HTTPS, or plain HTTP for labs) for admins and the Unix
//! socket for the local proxy.
//!
//! | listener | routes |
//! |----------|--------|
//! | TCP      | `GET /challenge`, `POST /key`, `GET /status`, `GET /health` |
//! | Unix     | `GET /key/raw`, `GET /status`, `GET /health` |
//!
//! `/key/raw` does not exist on TCP (404), `/challenge` and `/key` do not exist on the socket.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use zeroize::Zeroizing;

use crate::config::Config;
use crate::service::{ApiError, KeyService};

/// Largest accepted request body (a delivery is about 600 bytes).
pub const MAX_BODY: usize = 8 * 1024;
/// Concurrent connections per listener.
const MAX_CONNECTIONS: usize = 512;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// Why the server could not start. `Config` problems map to exit status 2, `Io` to 1.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
}

/// Response body chunk: either plain bytes or a buffer that is wiped when hyper drops it.
pub enum Chunk {
    Plain(Bytes),
    Secret(Zeroizing<Vec<u8>>, usize),
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        match self {
            Chunk::Plain(b) => b.remaining(),
            Chunk::Secret(v, pos) => v.len() - pos,
        }
    }
    fn chunk(&self) -> &[u8] {
        match self {
            Chunk::Plain(b) => b.chunk(),
            Chunk::Secret(v, pos) => &v[*pos..],
        }
    }
    fn advance(&mut self, cnt: usize) {
        match self {
            Chunk::Plain(b) => b.advance(cnt),
            Chunk::Secret(v, pos) => {
                assert!(*pos + cnt <= v.len(), "advance past end");
                *pos += cnt;
            }
        }
    }
}

type Body = Full<Chunk>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listener {
    Tcp,
    Unix,
}

/// Entry point for running memkey-server in-process.
pub struct Server;

impl Server {
    /// Binds the TCP listener (and the Unix socket when configured) and starts serving.
    pub async fn start(config: Config) -> Result<ServerHandle, StartError> {
        let tls = match &config.tls {
            Some(files) => Some(tokio_rustls::TlsAcceptor::from(load_tls(
                &files.cert,
                &files.key,
            )?)),
            None => None,
        };
        // TCP first: if the port is taken, no socket file is left behind.
        let tcp = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|e| StartError::Io(format!("cannot listen on {}: {e}", config.listen_addr)))?;
        let local_addr = tcp
            .local_addr()
            .map_err(|e| StartError::Io(e.to_string()))?;
        let unix = match &config.unix_socket_path {
            Some(p) => Some((bind_unix(p)?, p.clone())),
            None => None,
        };

        let audit =
            crate::audit::AuditLog::from_config(config.audit_path.as_deref()).map_err(|e| {
                StartError::Io(format!(
                    "cannot open the audit log {}: {e}",
                    config
                        .audit_path
                        .as_deref()
                        .unwrap_or(Path::new("-"))
                        .display()
                ))
            })?;
        let service = Arc::new(KeyService::with_audit(&config, audit));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let is_tls = tls.is_some();
        if config.shares.is_some() {
            tasks.push(tokio::spawn(share_expiry_loop(
                service.clone(),
                shutdown_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(tcp_loop(
            tcp,
            tls,
            service.clone(),
            shutdown_rx.clone(),
        )));
        let socket_path = if let Some((listener, path)) = unix {
            tasks.push(tokio::spawn(unix_loop(
                listener,
                service.clone(),
                shutdown_rx,
            )));
            Some(path)
        } else {
            None
        };
        if !is_tls {
            log::warn!("TLS is disabled (tls_enabled: false): admin traffic on {local_addr} is plain HTTP; use only in a lab");
        }
        if config.admins.is_empty() {
            log::warn!("no admins configured: every key delivery will be refused until `admins:` lists a public key");
        }
        if let Err(why) = service.memory_lock_status() {
            log::warn!("key memory is not locked in RAM: {why}");
        }
        log::info!(
            "listening on {}://{local_addr}{}",
            if is_tls { "https" } else { "http" },
            socket_path
                .as_ref()
                .map(|p| format!(" and unix:{}", p.display()))
                .unwrap_or_default()
        );
        Ok(ServerHandle {
            service,
            local_addr,
            socket_path,
            tls: is_tls,
            shutdown_tx,
            tasks,
        })
    }
}

/// Discards m-of-n shares whose window elapsed even when no further share arrives.
async fn share_expiry_loop(service: Arc<KeyService>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => service.expire_shares(),
            _ = shutdown.changed() => return,
        }
    }
}

/// A running server. Dropping it stops the listeners; [`ServerHandle::shutdown`] also waits.
pub struct ServerHandle {
    service: Arc<KeyService>,
    local_addr: SocketAddr,
    socket_path: Option<PathBuf>,
    tls: bool,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    /// The bound TCP address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `https://ip:port` (or `http://` when TLS is disabled).
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.local_addr
        )
    }

    pub fn socket_path(&self) -> Option<&Path> {
        self.socket_path.as_deref()
    }

    pub fn fingerprint(&self) -> &str {
        self.service.fingerprint()
    }

    /// The state machine behind the listeners (counters, status).
    pub fn service(&self) -> &Arc<KeyService> {
        &self.service
    }

    /// Stops accepting, closes connections, wipes the keys and removes the socket file.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.cleanup();
    }

    fn cleanup(&mut self) {
        self.service.wipe();
        if let Some(p) = self.socket_path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        self.cleanup();
    }
}

fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| {
            StartError::Config(format!(
                "cannot read server.tls_cert {}: {e}",
                cert.display()
            ))
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            StartError::Config(format!(
                "server.tls_cert {} is not a PEM certificate file: {e}",
                cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(StartError::Config(format!(
            "server.tls_cert {} contains no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        StartError::Config(format!(
            "cannot read a PEM private key from server.tls_key {}: {e}",
            key.display()
        ))
    })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StartError::Config(format!("TLS setup: {e}")))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        StartError::Config(format!(
            "server.tls_cert and server.tls_key do not form a usable pair: {e}"
        ))
    })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Creates the Unix socket safely: the parent directory must exist and must not be
/// world-writable; a stale socket is removed (a live one is an error); the socket is bound
/// under a temporary name, set to mode 0660, then renamed into place so it is never
/// reachable with looser permissions.
fn bind_unix(path: &Path) -> Result<UnixListener, StartError> {
    let cfg_err = |m: String| StartError::Config(m);
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| {
            cfg_err(format!(
                "server.unix_socket_path {} has no parent directory",
                path.display()
            ))
        })?;
    let meta = std::fs::metadata(parent).map_err(|e| {
        cfg_err(format!(
            "parent directory {} of server.unix_socket_path does not exist or is unreadable: {e}",
            parent.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(cfg_err(format!(
            "{} (parent of server.unix_socket_path) is not a directory",
            parent.display()
        )));
    }
    if meta.permissions().mode() & 0o002 != 0 {
        return Err(cfg_err(format!(
            "parent directory {} of server.unix_socket_path is world-writable; use a dedicated directory such as /run/memkey (mode 0750)",
            parent.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(StartError::Io(format!(
                    "another process is serving {}",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(|e| {
                StartError::Io(format!(
                    "cannot remove stale socket {}: {e}",
                    path.display()
                ))
            })?;
            log::info!("removed stale socket {}", path.display());
        }
        Ok(_) => {
            return Err(cfg_err(format!(
                "server.unix_socket_path {} exists and is not a socket; refusing to replace it",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(StartError::Io(format!(
                "cannot inspect {}: {e}",
                path.display()
            )))
        }
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = parent.join(format!(".{name}.{}.{seq}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)
        .map_err(|e| StartError::Io(format!("cannot bind {}: {e}", tmp.display())))?;
    let finish = || -> io::Result<()> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(&tmp);
        return Err(StartError::Io(format!(
            "cannot install socket {}: {e}",
            path.display()
        )));
    }
    Ok(listener)
}

async fn tcp_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: Arc<KeyService>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            log::warn!("connection limit reached; dropping connection from {peer}");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let tls = tls.clone();
        let ip = peer.ip().to_canonical();
        conns.spawn(async move {
            let _permit = permit;
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => serve_conn(s, service, Listener::Tcp, Some(ip)).await,
                        Ok(Err(e)) => log::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => log::debug!("TLS handshake with {peer} timed out"),
                    }
                }
                None => serve_conn(stream, service, Listener::Tcp, Some(ip)).await,
            }
        });
    }
    conns.shutdown().await;
}

async fn unix_loop(
    listener: UnixListener,
    service: Arc<KeyService>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let stream = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("unix accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let service = service.clone();
        conns.spawn(async move {
            let _permit = permit;
            serve_conn(stream, service, Listener::Unix, None).await;
        });
    }
    conns.shutdown().await;
}

async fn serve_conn<I>(io: I, service: Arc<KeyService>, kind: Listener, ip: Option<IpAddr>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let service = service.clone();
        async move { Ok::<_, Infallible>(route(&service, kind, ip, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(io), svc);
    if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
        log::debug!("connection error: {e}");
    }
}

fn respond(status: u16, body: Chunk) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn json<T: Serialize>(status: u16, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    respond(status, Chunk::Plain(Bytes::from(body)))
}

fn error(e: ApiError) -> Response<Body> {
    let mut r = json(e.status, &e.body());
    if let Some(secs) = e.retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(ApiError::new(
        405,
        "method_not_allowed",
        format!("use {allow}"),
    ));
    r.headers_mut()
        .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    r
}

async fn route(
    service: &KeyService,
    kind: Listener,
    ip: Option<IpAddr>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let get = req.method() == Method::GET;
    match (kind, path.as_str()) {
        (_, "/health") if get => json(200, &serde_json::json!({"status": "ok"})),
        (_, "/health") => method_not_allowed("GET"),
        (_, "/status") if get => json(200, &service.status()),
        (_, "/status") => method_not_allowed("GET"),
        (Listener::Tcp, "/challenge") if get => {
            let ip = ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
            match service.issue_challenge(ip) {
                Ok(msg) => json(200, &msg),
                Err(e) => error(e),
            }
        }
        (Listener::Tcp, "/challenge") => method_not_allowed("GET"),
        (Listener::Tcp, "/key") if req.method() == Method::POST => {
            let ip = ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
            match read_body(req).await {
                Ok(body) => match service.deliver(ip, &body) {
                    Ok(ack) => json(200, &ack),
                    Err(e) => error(e),
                },
                Err(e) => error(e),
            }
        }
        (Listener::Tcp, "/key") => method_not_allowed("POST"),
        (Listener::Unix, "/key/raw") if get => match service.raw_keys() {
            Some(body) => respond(200, Chunk::Secret(body, 0)),
            None => error(ApiError::new(503, "no_key", "no key loaded")),
        },
        (Listener::Unix, "/key/raw") => method_not_allowed("GET"),
        _ => error(ApiError::new(404, "not_found", "no such endpoint")),
    }
}

/// Oversized bodies up to this size are read and discarded before the 413 is sent: closing
/// a connection with unread data makes the kernel reset it, and the client would see a
/// broken pipe instead of the JSON error. Larger ones are cut off.
const DRAIN_LIMIT: u64 = 64 * 1024;

async fn drain(mut body: Incoming) {
    let _ = tokio::time::timeout(BODY_TIMEOUT, async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            "body_too_large",
            format!("request body exceeds {MAX_BODY} bytes"),
        )
    };
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
        match len.to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
            Some(n) if n > MAX_BODY as u64 => {
                if n <= DRAIN_LIMIT {
                    drain(req.into_body()).await;
                }
                return Err(too_large());
            }
            Some(_) => {}
            None => return Err(ApiError::new(400, "malformed", "invalid Content-Length")),
        }
    }
    let body = Limited::new(req.into_body(), MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(_)) => Err(ApiError::new(
            400,
            "malformed",
            "could not read the request body",
        )),
        Err(_) => Err(ApiError::new(
            408,
            "timeout",
            "request body not received in time",
        )),
    }
}
