//! Background tasks: polling keyd for the key ring, and probing the backend for `/readyz`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use filters::backend::Backend;
use filters::keys::{KeyState, Offer};
use s3cp_format::KeyRing;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::metrics::Metrics;

/// Reads the key ring from keyd every `interval`. When keyd has no key (it was restarted),
/// the proxy keeps the ring it has: data stays readable until an operator delivers the key
/// again. A ring with different key material under a loaded key id is refused (see
/// `filters::keys`).
pub struct KeyPoller {
    pub socket: PathBuf,
    pub interval: Duration,
    pub keys: Arc<KeyState>,
    pub metrics: Arc<Metrics>,
    /// Whether keyd answered the last poll with a key (`memkey.ready_requires_keyd_key`).
    pub keyd_holds_key: Arc<AtomicBool>,
}

/// Offers a ring fetched from keyd to the key state; logs and counts what happened.
pub fn take_up(keys: &KeyState, metrics: &Metrics, ring: KeyRing) {
    let ids: Vec<u32> = ring.ids().collect();
    let current = ring.current_id();
    match keys.set(ring) {
        Offer::Loaded => {
            log::info!("encryption keys loaded from keyd: ids {ids:?}, current {current}");
            if let Some(Err(why)) = keys.memory_locked() {
                log::warn!("encryption keys are not locked in RAM: {why}");
            }
        }
        Offer::Unchanged => {}
        Offer::Refused { key_ids, first } => {
            if first {
                metrics.key_conflicts.inc();
                log::error!(
                    "REFUSED the keys keyd offers: key id {key_ids:?} comes with key material different from the key this proxy loaded under that id. \
                     Keeping the loaded keys (objects written with them stay readable; nothing is written with the offered key). \
                     Deliver the original key again with `memkey-admin key send`, or give a new key a new id"
                );
            }
        }
    }
    update_key_metrics(keys, metrics);
}

/// Mirrors memkey-server's key source status (kind, state, last unseal, failures by reason).
pub fn update_key_source_metrics(metrics: &Metrics, status: &keyd::source::runner::SourceStatus) {
    metrics.key_source.reset();
    metrics.key_source.with_label_values(&[&status.kind, &status.state]).set(1);
    metrics.key_source_last_unseal.set(status.last_unseal_unix.unwrap_or(0) as i64);
    for reason in keyd::source::Reason::ALL {
        let n = status.failures.get(reason.as_str()).copied().unwrap_or(0);
        metrics.key_source_unseal_failures.with_label_values(&[reason.as_str()]).set(n as i64);
    }
}

pub fn update_key_metrics(keys: &KeyState, metrics: &Metrics) {
    metrics.key_loaded.set(i64::from(keys.get().is_some()));
    metrics.key_memory_locked.set(i64::from(matches!(keys.memory_locked(), Some(Ok(())))));
    metrics.key_conflict.set(i64::from(keys.refused().is_some()));
}

#[async_trait]
impl BackgroundService for KeyPoller {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // The ring loaded at start-up may predate a fork (`run --daemon`), which drops locks.
        self.keys.relock();
        update_key_metrics(&self.keys, &self.metrics);
        let mut last_problem = String::new();
        loop {
            match keyd::client::fetch_keyring(&self.socket).await {
                Ok(Some(ring)) => {
                    take_up(&self.keys, &self.metrics, ring);
                    self.keyd_holds_key.store(true, Ordering::Relaxed);
                    last_problem.clear();
                }
                Ok(None) => {
                    self.keyd_holds_key.store(false, Ordering::Relaxed);
                    // Whatever keyd offered before, it offers nothing now.
                    self.keys.clear_refusal();
                    let msg = if self.keys.get().is_some() {
                        "keyd holds no key (restarted?); keeping the keys already loaded"
                    } else {
                        "keyd holds no key yet: S3 requests get 503 until `memkey-admin key send`"
                    };
                    if last_problem != msg {
                        log::warn!("{msg}");
                        last_problem = msg.to_string();
                    }
                }
                Err(e) => {
                    self.keyd_holds_key.store(false, Ordering::Relaxed);
                    let msg = format!("cannot reach keyd at {}: {e}", self.socket.display());
                    if last_problem != msg {
                        log::warn!("{msg}");
                        last_problem = msg;
                    }
                }
            }
            if let Ok(status) = keyd::client::fetch_status(&self.socket).await {
                update_key_source_metrics(&self.metrics, &status.key_source);
            }
            update_key_metrics(&self.keys, &self.metrics);
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Asks the backend a cheap question every `interval`; any HTTP answer means it is up.
pub struct BackendProbe {
    pub backend: Arc<Backend>,
    pub bucket: Option<String>,
    pub interval: Duration,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for BackendProbe {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut was_up = None;
        loop {
            let bucket = self.bucket.as_deref();
            let up = match self.backend.request("HEAD", bucket, None, &[], &[], None) {
                Ok(req) => match tokio::time::timeout(Duration::from_secs(10), self.backend.send(bucket, req, None, 0)).await {
                    Ok(Ok((resp, _))) => resp.status.as_u16() < 500,
                    _ => false,
                },
                Err(_) => false,
            };
            if was_up != Some(up) {
                if up {
                    log::info!("backend {:?} answers", self.backend);
                } else {
                    log::warn!("backend {:?} does not answer", self.backend);
                }
                was_up = Some(up);
            }
            self.metrics.backend_up.set(i64::from(up));
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
