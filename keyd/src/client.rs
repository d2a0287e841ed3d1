//! The proxy's side of the Unix socket: fetch the key ring and the status from memkey-server.
//!
//! A deliberately small HTTP/1.1 client (one `GET`, `Connection: close`) so the response,
//! which carries key material, is read into one fixed-size buffer that is wiped afterwards.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keyd::client::ClientError> {
//! let socket = std::path::Path::new("/run/memkey/memkey.sock");
//! match keyd::client::fetch_keyring(socket).await? {
//!     Some(ring) => println!("current key id {}", ring.current_id()),
//!     None => println!("memkey-server has no key yet"),
//! }
//! # Ok(()) }
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use s3cp_format::keys::{KeyId, KeyRing, MasterKey, KEY_LEN};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use zeroize::Zeroizing;

pub use crate::service::StatusInfo;

/// Whole-request deadline.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted (32 keys need about 4 KiB).
const MAX_RESPONSE: usize = 64 * 1024;

/// Errors talking to memkey-server over its socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to memkey socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("I/O error on memkey socket: {0}")]
    Io(#[from] io::Error),
    #[error("memkey socket did not answer within {0:?}")]
    Timeout(Duration),
    #[error("memkey-server answered HTTP {status} ({code}): {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
    },
    #[error("malformed answer from memkey-server: {0}")]
    Malformed(String),
}

/// Keys as served by `/key/raw`, with their metadata.
pub struct RawKeys {
    pub current: KeyId,
    /// Ascending by id. Wiped on drop (MasterKey zeroizes itself).
    pub keys: Vec<MasterKey>,
    pub loaded_at: Option<String>,
}

impl std::fmt::Debug for RawKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawKeys")
            .field("current", &self.current)
            .field("keys", &self.keys)
            .field("loaded_at", &self.loaded_at)
            .finish()
    }
}

impl RawKeys {
    pub fn keyring(&self) -> Option<KeyRing> {
        KeyRing::new(self.current, &self.keys)
    }
}

/// Fetches every loaded key and builds the proxy's [`KeyRing`]. `Ok(None)`: no key loaded yet.
pub async fn fetch_keyring(socket: &Path) -> Result<Option<KeyRing>, ClientError> {
    match fetch_raw_keys(socket).await? {
        Some(raw) => raw
            .keyring()
            .map(Some)
            .ok_or_else(|| ClientError::Malformed("current key id is not among the keys".into())),
        None => Ok(None),
    }
}

/// Fetches the master keys themselves (for tools that need more than the derived ring).
pub async fn fetch_raw_keys(socket: &Path) -> Result<Option<RawKeys>, ClientError> {
    let (status, body) = get(socket, "/key/raw").await?;
    match status {
        200 => parse_raw(&body).map(Some),
        503 => Ok(None),
        _ => Err(status_error(status, &body)),
    }
}

/// Fetches `/status` (key loaded?, key ids, current id, loaded_at, fingerprint, uptime).
pub async fn fetch_status(socket: &Path) -> Result<StatusInfo, ClientError> {
    let (status, body) = get(socket, "/status").await?;
    if status != 200 {
        return Err(status_error(status, &body));
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::Malformed(format!("status: {e}")))
}

#[derive(Deserialize)]
struct RawBody<'a> {
    current: KeyId,
    #[serde(borrow)]
    keys: Vec<RawKey<'a>>,
    #[serde(default)]
    loaded_at: Option<&'a str>,
}

#[derive(Deserialize)]
struct RawKey<'a> {
    id: KeyId,
    key: &'a str,
}

fn parse_raw(body: &[u8]) -> Result<RawKeys, ClientError> {
    // Borrowed &str fields: the hex never leaves the wiped response buffer.
    let raw: RawBody<'_> = serde_json::from_slice(body)
        .map_err(|e| ClientError::Malformed(format!("/key/raw: {e}")))?;
    let mut keys = Vec::with_capacity(raw.keys.len());
    for k in &raw.keys {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(k.key, &mut bytes[..]).map_err(|_| {
            ClientError::Malformed(format!("key {} is not 64 hex characters", k.id))
        })?;
        keys.push(MasterKey::new(k.id, *bytes));
    }
    keys.sort_unstable_by_key(|k| k.id());
    if keys.is_empty() {
        return Err(ClientError::Malformed("no keys in a 200 answer".into()));
    }
    Ok(RawKeys {
        current: raw.current,
        keys,
        loaded_at: raw.loaded_at.map(str::to_owned),
    })
}

fn status_error(status: u16, body: &[u8]) -> ClientError {
    #[derive(Deserialize)]
    struct E {
        error: String,
        code: String,
    }
    match serde_json::from_slice::<E>(body) {
        Ok(e) => ClientError::Status {
            status,
            code: e.code,
            message: e.error,
        },
        Err(_) => ClientError::Status {
            status,
            code: String::new(),
            message: String::from_utf8_lossy(body).into_owned(),
        },
    }
}

/// One `GET` over the socket; returns the status and the body in a wiped buffer.
async fn get(socket: &Path, path: &str) -> Result<(u16, Zeroizing<Vec<u8>>), ClientError> {
    tokio::time::timeout(TIMEOUT, get_inner(socket, path))
        .await
        .map_err(|_| ClientError::Timeout(TIMEOUT))?
}

async fn get_inner(socket: &Path, path: &str) -> Result<(u16, Zeroizing<Vec<u8>>), ClientError> {
    let mut s = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_owned(),
            source,
        })?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: memkey\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;

    // Fixed-size buffer: never reallocated, so no unwiped copies are left behind.
    let mut buf = Zeroizing::new(vec![0u8; MAX_RESPONSE]);
    let mut n = 0;
    let mut head: Option<(u16, usize, Option<usize>)> = None;
    loop {
        if let Some((_, start, Some(len))) = head {
            if n >= start + len {
                break;
            }
        }
        if n == buf.len() {
            return Err(ClientError::Malformed("response too large".into()));
        }
        let r = s.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
        if head.is_none() {
            head = parse_head(&buf[..n])?;
        }
    }
    let (status, start, len) =
        head.ok_or_else(|| ClientError::Malformed("incomplete HTTP response".into()))?;
    let end = match len {
        Some(len) if n >= start + len => start + len,
        Some(_) => {
            return Err(ClientError::Malformed(
                "truncated HTTP response body".into(),
            ))
        }
        None => n,
    };
    let mut body = Zeroizing::new(Vec::with_capacity(end - start));
    body.extend_from_slice(&buf[start..end]);
    Ok((status, body))
}

/// Parses the status line and headers once they are complete: (status, body start, length).
fn parse_head(data: &[u8]) -> Result<Option<(u16, usize, Option<usize>)>, ClientError> {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&data[..end])
        .map_err(|_| ClientError::Malformed("non-UTF-8 headers".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(ClientError::Malformed(format!(
            "bad status line {status_line:?}"
        )));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Malformed(format!("bad status line {status_line:?}")))?;
    let mut len = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") {
            len = Some(
                value
                    .trim()
                    .parse()
                    .map_err(|_| ClientError::Malformed("bad Content-Length".into()))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ClientError::Malformed(
                "unexpected Transfer-Encoding".into(),
            ));
        }
    }
    Ok(Some((status, end + 4, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n").unwrap(),
            None
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap(),
            Some((200, 38, Some(5)))
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").unwrap(),
            Some((503, 36, None))
        );
        assert!(parse_head(b"SMTP 200\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn raw_parsing() {
        let k = "ab".repeat(32);
        let body = format!(
            r#"{{"current":2,"keys":[{{"id":2,"key":"{k}"}},{{"id":1,"key":"{k}"}}],"loaded_at":"2026-01-01T00:00:00Z"}}"#
        );
        let raw = parse_raw(body.as_bytes()).unwrap();
        assert_eq!(
            raw.keys.iter().map(|k| k.id()).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(raw.keyring().unwrap().current_id(), 2);
        assert!(parse_raw(br#"{"current":1,"keys":[{"id":1,"key":"00"}]}"#).is_err());
        assert!(parse_raw(br#"{"current":1,"keys":[]}"#).is_err());
        let bad_current = format!(r#"{{"current":9,"keys":[{{"id":2,"key":"{k}"}}]}}"#);
        assert!(parse_raw(bad_current.as_bytes())
            .unwrap()
            .keyring()
            .is_none());
    }
}
