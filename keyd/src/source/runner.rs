//! Runs a key source: unseals every sealed key file at start-up (and again on SIGHUP),
//! retrying with capped, jittered exponential back-off while the HSM or KMS is unreachable,
//! and loads the keys into the vault the proxy reads. Failures are logged as one line each
//! (file, key id, reason; never key material) and counted by reason in `/status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{build, unseal, KeySource, KeySourceConfig, Reason, SealedKeyFile, SourceKind, UnsealError};
use crate::audit::AuditEvent;
use crate::service::KeyService;
use crate::util::{rfc3339, unix_now};

/// The `key_source` part of `GET /status`. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SourceStatus {
    /// `delivery`, `pkcs11`, `aws-kms`.
    pub kind: String,
    /// `waiting_for_delivery`, `unsealing`, `retrying`, `loaded` or `failed`.
    pub state: String,
    /// How many sealed key files are configured.
    pub sealed_key_files: usize,
    /// RFC 3339 time of the last successful unseal.
    pub last_unseal_at: Option<String>,
    /// The same, as Unix seconds (for metrics).
    pub last_unseal_unix: Option<u64>,
    /// How long the last successful unseal of all files took, in milliseconds.
    pub last_unseal_ms: Option<u64>,
    /// The last failure (one line, no key material), cleared by a success.
    pub last_error: Option<String>,
    /// Failed unseal attempts since start, by reason (`Reason::as_str`).
    pub failures: BTreeMap<String, u64>,
}

impl Default for SourceStatus {
    fn default() -> Self {
        Self {
            kind: SourceKind::Delivery.as_str().to_owned(),
            state: "waiting_for_delivery".to_owned(),
            sealed_key_files: 0,
            last_unseal_at: None,
            last_unseal_unix: None,
            last_unseal_ms: None,
            last_error: None,
            failures: BTreeMap::new(),
        }
    }
}

/// A random wait in [d/2, d]: many servers restarted together do not hit the KMS in step.
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis().max(2) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
}

/// The back-off after `delay`: doubled, at most `max`.
fn next_delay(delay: Duration, max: Duration) -> Duration {
    (delay * 2).min(max)
}

/// Starts unsealing in the background; `None` for the delivery source (nothing to do).
pub fn spawn(service: Arc<KeyService>, cfg: KeySourceConfig) -> Option<tokio::task::JoinHandle<()>> {
    service.update_source_status(|s| {
        s.kind = cfg.kind.as_str().to_owned();
        s.sealed_key_files = cfg.sealed_key_files.len();
        s.state = if cfg.kind == SourceKind::Delivery { "waiting_for_delivery" } else { "unsealing" }.to_owned();
    });
    if cfg.kind == SourceKind::Delivery {
        return None;
    }
    Some(tokio::spawn(run(service, cfg)))
}

async fn run(service: Arc<KeyService>, cfg: KeySourceConfig) {
    let fail = |e: &UnsealError, what: &str| {
        service.update_source_status(|s| {
            *s.failures.entry(e.reason.as_str().to_owned()).or_default() += 1;
            s.last_error = Some(format!("{what}: {e}"));
        });
        let detail = format!("{what}: {e}");
        service.audit().record(AuditEvent::Refused {
            reason: e.reason.as_str(),
            detail: &detail,
            key_id: None,
            admin: None,
            ip: None,
            source: Some(cfg.kind.as_str()),
        });
    };
    let source: Arc<dyn KeySource> = match build(&cfg) {
        Ok(Some(s)) => Arc::from(s),
        Ok(None) => return,
        Err(e) => {
            log::error!("key source {}: {e}", cfg.kind);
            fail(&e, "key source");
            service.update_source_status(|s| s.state = "failed".into());
            return;
        }
    };
    let started = Instant::now();
    let n = cfg.sealed_key_files.len();
    for (i, path) in cfg.sealed_key_files.iter().enumerate() {
        let make_current = i + 1 == n;
        let mut delay = cfg.retry_initial;
        let mut attempt = 1u32;
        loop {
            match unseal_file(source.clone(), path.clone()).await {
                Ok(key) => {
                    let id = key.id();
                    match service.load_unsealed(&key, make_current) {
                        Ok(_) => {
                            log::info!("key id {id} unsealed from {} by {} (attempt {attempt})", path.display(), cfg.kind);
                            service.audit().record(AuditEvent::Unsealed { source: cfg.kind.as_str(), key_id: id });
                            break;
                        }
                        Err(e) => {
                            let e = UnsealError::new(Reason::Conflict, e.to_string());
                            log::error!("unsealed key id {id} from {} not loaded: {e}", path.display());
                            fail(&e, &path.display().to_string());
                            service.update_source_status(|s| s.state = "failed".into());
                            return;
                        }
                    }
                }
                Err(e) if e.reason.retryable() => {
                    let wait = jitter(delay);
                    log::warn!(
                        "cannot unseal {} with {} (attempt {attempt}): {e}; retrying in {:.1}s",
                        path.display(),
                        cfg.kind,
                        wait.as_secs_f64()
                    );
                    fail(&e, &path.display().to_string());
                    service.update_source_status(|s| s.state = "retrying".into());
                    tokio::time::sleep(wait).await;
                    delay = next_delay(delay, cfg.retry_max);
                    attempt += 1;
                }
                Err(e) => {
                    log::error!(
                        "cannot unseal {} with {}: {e}; not retrying: fix it and send SIGHUP (or deliver the key with `memkey-admin key send`)",
                        path.display(),
                        cfg.kind
                    );
                    fail(&e, &path.display().to_string());
                    service.update_source_status(|s| s.state = "failed".into());
                    return;
                }
            }
        }
    }
    let took = started.elapsed();
    let now = unix_now();
    service.update_source_status(|s| {
        s.state = "loaded".into();
        s.last_unseal_at = Some(rfc3339(now));
        s.last_unseal_unix = Some(now);
        s.last_unseal_ms = Some(took.as_millis() as u64);
        s.last_error = None;
    });
    log::info!("{n} sealed key file(s) unsealed by {} in {} ms; no administrator needed", cfg.kind, took.as_millis());
}

/// Reads and unseals one file on a blocking thread (HSM and KMS calls block).
async fn unseal_file(source: Arc<dyn KeySource>, path: PathBuf) -> Result<s3cp_format::keys::MasterKey, UnsealError> {
    tokio::task::spawn_blocking(move || unseal_path(&*source, &path))
        .await
        .unwrap_or_else(|e| Err(UnsealError::new(Reason::Config, format!("unseal task failed: {e}"))))
}

/// Reads and unseals one file (blocking).
pub fn unseal_path(source: &dyn KeySource, path: &Path) -> Result<s3cp_format::keys::MasterKey, UnsealError> {
    let file = SealedKeyFile::read(path)?;
    unseal(source, &file).map_err(|e| UnsealError::new(e.reason, format!("key id {}: {}", file.key_id, e.message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_to_the_cap_with_jitter() {
        let max = Duration::from_secs(60);
        let mut d = Duration::from_secs(1);
        let mut seen = vec![];
        for _ in 0..9 {
            seen.push(d.as_secs());
            d = next_delay(d, max);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        for _ in 0..1000 {
            let j = jitter(Duration::from_secs(8));
            assert!(j >= Duration::from_secs(4) && j <= Duration::from_secs(8), "{j:?}");
        }
    }
}
