//! memkey-server's audit log: one JSON object per line for every key event.
//!
//! Written to the file `audit.path` (`MEMKEY_AUDIT_PATH`) opened in append mode with mode
//! 0600, or to stderr (the journal under systemd) when no path is configured. A line never
//! carries key material or shares: only key ids, admin key fingerprints (SHA-256 of the admin
//! public key, the value operators already compare), source addresses, sources and reasons.
//!
//! ```text
//! {"ts":"2026-12-06T02:40:41Z","event":"delivered","key_id":7,"admin":"<64 hex>","ip":"10.0.0.5","current":true,"already_loaded":false}
//! ```
//!
//! Callers build an [`AuditEvent`] and hand it to [`AuditLog::record`]; a failing write is
//! reported on the regular log and never stops key handling.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ed25519_dalek::VerifyingKey;
use s3cp_format::keys::KeyId;
use serde_json::{json, Map, Value};

use crate::protocol::fingerprint_hex;
use crate::util::{rfc3339, unix_now};

/// One key event. Borrowed fields keep call sites allocation-free until the line is written.
#[derive(Debug, Clone)]
pub enum AuditEvent<'a> {
    /// A whole master key was delivered by one admin (`memkey-admin key send`).
    Delivered {
        key_id: KeyId,
        admin: &'a VerifyingKey,
        ip: IpAddr,
        current: bool,
        already_loaded: bool,
    },
    /// One Shamir share was accepted (m-of-n delivery).
    ShareReceived {
        key_id: KeyId,
        admin: &'a VerifyingKey,
        ip: IpAddr,
        share_index: u8,
        /// Distinct admins whose shares are now held (this one included).
        distinct_admins: usize,
        threshold: u8,
    },
    /// The collection window ended before the threshold was reached; the shares were wiped.
    SharesExpired {
        key_id: KeyId,
        discarded: usize,
        threshold: u8,
    },
    /// M distinct admins' shares were combined, checked against the key-check value and loaded.
    KeyReconstructed {
        key_id: KeyId,
        admins: &'a [VerifyingKey],
        current: bool,
        already_loaded: bool,
    },
    /// A key was obtained from an unseal source (`"pkcs11"`, `"aws-kms"`, `"kmip"`, ...).
    Unsealed { source: &'a str, key_id: KeyId },
    /// Something was refused. `reason` is a stable machine code (the protocol's error codes,
    /// or a source's own such as `"unseal_failed"`); `detail` is for humans.
    Refused {
        reason: &'a str,
        detail: &'a str,
        key_id: Option<KeyId>,
        admin: Option<&'a VerifyingKey>,
        ip: Option<IpAddr>,
        source: Option<&'a str>,
    },
    /// A key id left memory (`reason`: e.g. `"shutdown"`).
    KeyRetired { key_id: KeyId, reason: &'a str },
}

impl AuditEvent<'_> {
    /// The `event` field of the line.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Delivered { .. } => "delivered",
            Self::ShareReceived { .. } => "share_received",
            Self::SharesExpired { .. } => "shares_expired",
            Self::KeyReconstructed { .. } => "key_reconstructed",
            Self::Unsealed { .. } => "unsealed",
            Self::Refused { .. } => "refused",
            Self::KeyRetired { .. } => "key_retired",
        }
    }

    /// The JSON line (without the trailing newline) stamped with `unix_secs`.
    pub fn to_line(&self, unix_secs: u64) -> String {
        let mut m = Map::new();
        m.insert("ts".into(), json!(rfc3339(unix_secs)));
        m.insert("event".into(), json!(self.name()));
        let fp = |a: &VerifyingKey| json!(fingerprint_hex(a));
        match self {
            Self::Delivered {
                key_id,
                admin,
                ip,
                current,
                already_loaded,
            } => {
                m.insert("key_id".into(), json!(key_id));
                m.insert("admin".into(), fp(admin));
                m.insert("ip".into(), json!(ip.to_string()));
                m.insert("current".into(), json!(current));
                m.insert("already_loaded".into(), json!(already_loaded));
            }
            Self::ShareReceived {
                key_id,
                admin,
                ip,
                share_index,
                distinct_admins,
                threshold,
            } => {
                m.insert("key_id".into(), json!(key_id));
                m.insert("admin".into(), fp(admin));
                m.insert("ip".into(), json!(ip.to_string()));
                m.insert("share_index".into(), json!(share_index));
                m.insert("distinct_admins".into(), json!(distinct_admins));
                m.insert("threshold".into(), json!(threshold));
            }
            Self::SharesExpired {
                key_id,
                discarded,
                threshold,
            } => {
                m.insert("key_id".into(), json!(key_id));
                m.insert("discarded".into(), json!(discarded));
                m.insert("threshold".into(), json!(threshold));
            }
            Self::KeyReconstructed {
                key_id,
                admins,
                current,
                already_loaded,
            } => {
                m.insert("key_id".into(), json!(key_id));
                m.insert(
                    "admins".into(),
                    Value::Array(admins.iter().map(fp).collect()),
                );
                m.insert("current".into(), json!(current));
                m.insert("already_loaded".into(), json!(already_loaded));
            }
            Self::Unsealed { source, key_id } => {
                m.insert("key_id".into(), json!(key_id));
                m.insert("source".into(), json!(source));
            }
            Self::Refused {
                reason,
                detail,
                key_id,
                admin,
                ip,
                source,
            } => {
                m.insert("reason".into(), json!(reason));
                m.insert("detail".into(), json!(detail));
                if let Some(id) = key_id {
                    m.insert("key_id".into(), json!(id));
                }
                if let Some(a) = admin {
                    m.insert("admin".into(), fp(a));
                }
                if let Some(ip) = ip {
                    m.insert("ip".into(), json!(ip.to_string()));
                }
                if let Some(s) = source {
                    m.insert("source".into(), json!(s));
                }
            }
            Self::KeyRetired { key_id, reason } => {
                m.insert("key_id".into(), json!(key_id));
                m.insert("reason".into(), json!(reason));
            }
        }
        Value::Object(m).to_string()
    }
}

enum Sink {
    Stderr,
    File {
        file: File,
        path: PathBuf,
    },
    /// Lines kept in memory (unit tests).
    Memory(Vec<String>),
}

/// Where audit lines go. Shared by reference; one line is one `write` under a lock, so
/// concurrent events never interleave.
pub struct AuditLog {
    sink: Mutex<Sink>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

impl Default for AuditLog {
    fn default() -> Self {
        Self::stderr()
    }
}

impl AuditLog {
    /// Lines on stderr (the journal when run by systemd).
    pub fn stderr() -> Self {
        Self {
            sink: Mutex::new(Sink::Stderr),
        }
    }

    /// Appends to `path`, created with mode 0600 if missing.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let file = opts.open(path)?;
        Ok(Self {
            sink: Mutex::new(Sink::File {
                file,
                path: path.to_owned(),
            }),
        })
    }

    /// [`AuditLog::open`] for `Some(path)`, stderr for `None`.
    pub fn from_config(path: Option<&Path>) -> std::io::Result<Self> {
        match path {
            Some(p) => Self::open(p),
            None => Ok(Self::stderr()),
        }
    }

    /// Keeps lines in memory; read them with [`AuditLog::lines`] (tests).
    pub fn memory() -> Self {
        Self {
            sink: Mutex::new(Sink::Memory(Vec::new())),
        }
    }

    /// Lines recorded by a [`AuditLog::memory`] log (empty for the other sinks).
    pub fn lines(&self) -> Vec<String> {
        match &*self.sink.lock().expect("audit lock") {
            Sink::Memory(v) => v.clone(),
            _ => Vec::new(),
        }
    }

    /// Writes one line for `event`.
    pub fn record(&self, event: AuditEvent<'_>) {
        let mut line = event.to_line(unix_now());
        line.push('\n');
        let mut sink = self.sink.lock().expect("audit lock");
        let result = match &mut *sink {
            Sink::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
            Sink::File { file, .. } => file.write_all(line.as_bytes()),
            Sink::Memory(v) => {
                line.pop();
                v.push(line);
                Ok(())
            }
        };
        if let Err(e) = result {
            let where_ = match &*sink {
                Sink::File { path, .. } => path.display().to_string(),
                _ => "stderr".into(),
            };
            log::error!(
                "cannot write the audit log {where_}: {e} (event {})",
                event.name()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::generate_identity;

    #[test]
    fn lines_are_json_with_the_documented_fields() {
        let admin = generate_identity().verifying_key();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let line = AuditEvent::Delivered {
            key_id: 7,
            admin: &admin,
            ip,
            current: true,
            already_loaded: false,
        }
        .to_line(1_767_225_600);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ts"], "2026-01-01T00:00:00Z");
        assert_eq!(v["event"], "delivered");
        assert_eq!(v["key_id"], 7);
        assert_eq!(v["admin"], fingerprint_hex(&admin));
        assert_eq!(v["ip"], "10.0.0.5");
        // The admin appears as its fingerprint, not as the raw public key.
        assert!(!line.contains(&hex::encode(admin.as_bytes())));

        let line = AuditEvent::Refused {
            reason: "unknown_admin",
            detail: "not in admins",
            key_id: None,
            admin: None,
            ip: Some(ip),
            source: None,
        }
        .to_line(0);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "refused");
        assert_eq!(v["reason"], "unknown_admin");
        assert!(v.get("key_id").is_none());

        let v: Value = serde_json::from_str(
            &AuditEvent::Unsealed {
                source: "pkcs11",
                key_id: 3,
            }
            .to_line(0),
        )
        .unwrap();
        assert_eq!(
            (v["event"].as_str(), v["source"].as_str()),
            (Some("unsealed"), Some("pkcs11"))
        );
    }

    #[test]
    fn file_sink_appends_one_line_per_event_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.record(AuditEvent::KeyRetired {
            key_id: 1,
            reason: "shutdown",
        });
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        log.record(AuditEvent::Unsealed {
            source: "kmip",
            key_id: 2,
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let events: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(events, ["key_retired", "unsealed"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
