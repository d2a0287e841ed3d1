//! The key-delivery state machine, independent of HTTP: challenges, lockouts, the vault.
//!
//! [`KeyService`] is what the HTTP layer calls; benchmarks and tests can drive it directly.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, Zeroizing};

use crate::audit::{AuditEvent, AuditLog};
use crate::config::Config;
use crate::protocol::{
    fingerprint_hex, open_any_delivery, ChallengeMsg, Delivery, DeliveryAck, ErrorBody,
    IssuedChallenge, OpenedDelivery, OpenedPayload, OpenedShare, ProtocolError, CHALLENGE_LEN,
};
use crate::share_quorum::{Offered, Refusal, ShareQuorum};
use crate::util::{rfc3339, unix_now};
use crate::vault::{Vault, VaultError};
use s3cp_format::keys::KeyId;

/// Upper bound on the per-IP failure table (memory bound under a many-address attack).
const MAX_TRACKED_IPS: usize = 65_536;

/// A rejected request: HTTP status, stable machine code, human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429 answers (also sent as `Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.message.clone(),
            code: self.code.to_owned(),
            retry_after: self.retry_after,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

/// `GET /status` body. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// At least one key is loaded.
    pub loaded: bool,
    /// Loaded key ids, ascending.
    pub key_ids: Vec<KeyId>,
    /// The key id new objects are written with.
    pub current: Option<KeyId>,
    /// RFC 3339 time the key set last changed.
    pub loaded_at: Option<String>,
    /// Hex SHA-256 of the server's Ed25519 identity public key.
    pub fingerprint: String,
    pub uptime_seconds: u64,
    /// Whether key memory is locked in RAM (mlock).
    pub memory_locked: bool,
    pub version: String,
    /// Where keys come from and how unsealing went (absent from older servers).
    #[serde(default)]
    pub key_source: crate::source::runner::SourceStatus,
}

/// Counters, for tests and monitoring.
#[derive(Debug, Default)]
pub struct Stats {
    pub challenges_issued: AtomicU64,
    pub deliveries_received: AtomicU64,
    pub deliveries_accepted: AtomicU64,
    pub deliveries_rejected: AtomicU64,
    pub lockouts: AtomicU64,
}

struct Pending {
    issued: IssuedChallenge,
    at: Instant,
    ip: IpAddr,
}

#[derive(Default)]
struct Challenges {
    pending: HashMap<[u8; CHALLENGE_LEN], Pending>,
    per_ip: HashMap<IpAddr, usize>,
    /// Consumed challenge ids until their expiry, to report replays precisely.
    used: HashMap<[u8; CHALLENGE_LEN], Instant>,
    last_purge: Option<Instant>,
}

impl Challenges {
    fn release_ip(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    fn purge(&mut self, now: Instant, timeout: Duration, force: bool) {
        if !force
            && self
                .last_purge
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_purge = Some(now);
        let expired: Vec<([u8; CHALLENGE_LEN], IpAddr)> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.at) > timeout)
            .map(|(k, p)| (*k, p.ip))
            .collect();
        for (k, ip) in expired {
            self.pending.remove(&k);
            self.release_ip(ip);
        }
        self.used.retain(|_, until| *until > now);
    }
}

#[derive(Clone, Copy)]
struct FailEntry {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

#[derive(Default)]
struct Failures {
    map: HashMap<IpAddr, FailEntry>,
    last_purge: Option<Instant>,
}

impl Failures {
    /// Remaining lockout for `ip`, clearing lockouts that ended.
    fn locked(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let e = self.map.get(&ip)?;
        match e.locked_until {
            Some(until) if until > now => Some(until - now),
            Some(_) => {
                self.map.remove(&ip);
                None
            }
            None => None,
        }
    }

    /// Records a failure; true when this failure starts a lockout.
    fn fail(&mut self, ip: IpAddr, now: Instant, max: u32, window: Duration) -> bool {
        if self
            .last_purge
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(1))
        {
            self.last_purge = Some(now);
            self.map.retain(|_, e| match e.locked_until {
                Some(until) => until > now,
                None => now.duration_since(e.last) <= window,
            });
        }
        if !self.map.contains_key(&ip) && self.map.len() >= MAX_TRACKED_IPS {
            log::warn!("failure table full ({MAX_TRACKED_IPS} addresses); not tracking {ip}");
            return false;
        }
        let e = self.map.entry(ip).or_insert(FailEntry {
            count: 0,
            last: now,
            locked_until: None,
        });
        // Failures older than the lockout window are forgotten.
        if now.duration_since(e.last) > window {
            e.count = 0;
        }
        e.count += 1;
        e.last = now;
        if e.count >= max {
            e.locked_until = Some(now + window);
            true
        } else {
            false
        }
    }

    fn success(&mut self, ip: IpAddr) {
        self.map.remove(&ip);
    }
}

/// The memkey-server core.
pub struct KeyService {
    identity: SigningKey,
    public: VerifyingKey,
    fingerprint: String,
    admins: Vec<VerifyingKey>,
    challenge_timeout: Duration,
    max_failed_attempts: u32,
    lockout_duration: Duration,
    max_pending: usize,
    max_pending_per_ip: usize,
    started: Instant,
    challenges: Mutex<Challenges>,
    failures: Mutex<Failures>,
    vault: Mutex<Vault>,
    /// m-of-n collector; `Some` means single-admin key deliveries are refused.
    quorum: Option<Mutex<ShareQuorum>>,
    audit: AuditLog,
    source_status: Mutex<crate::source::runner::SourceStatus>,
    pub stats: Stats,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyService {{ fingerprint: {} }}", self.fingerprint)
    }
}

fn locked_out(remaining: Duration) -> ApiError {
    let secs = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
    let secs = secs.max(1);
    ApiError {
        status: 429,
        code: "locked_out",
        message: format!("too many failed attempts from this address; retry in {secs}s"),
        retry_after: Some(secs),
    }
}

impl KeyService {
    /// A service whose audit lines go to stderr; see [`KeyService::with_audit`].
    pub fn new(config: &Config) -> Self {
        Self::with_audit(config, AuditLog::stderr())
    }

    /// A service writing its key events to `audit`.
    pub fn with_audit(config: &Config, audit: AuditLog) -> Self {
        let public = config.identity.verifying_key();
        let vault = Vault::new();
        Self {
            identity: config.identity.clone(),
            public,
            fingerprint: fingerprint_hex(&public),
            admins: config.admins.clone(),
            challenge_timeout: config.challenge_timeout,
            max_failed_attempts: config.max_failed_attempts,
            lockout_duration: config.lockout_duration,
            max_pending: config.max_pending_challenges,
            max_pending_per_ip: config.max_pending_per_ip,
            started: Instant::now(),
            challenges: Mutex::new(Challenges::default()),
            failures: Mutex::new(Failures::default()),
            vault: Mutex::new(vault),
            quorum: config.shares.map(|s| Mutex::new(ShareQuorum::new(s))),
            audit,
            source_status: Mutex::new(Default::default()),
            stats: Stats::default(),
        }
    }

    /// The audit log (key sources record `unsealed` / `refused` here).
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Hex SHA-256 of the identity public key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// `Err(reason)` when key memory could not be locked.
    pub fn memory_lock_status(&self) -> Result<(), String> {
        self.vault
            .lock()
            .expect("vault lock")
            .lock_status()
            .map_err(str::to_owned)
    }

    fn check_lockout(&self, ip: IpAddr) -> Result<(), ApiError> {
        match self
            .failures
            .lock()
            .expect("failures lock")
            .locked(ip, Instant::now())
        {
            Some(rem) => Err(locked_out(rem)),
            None => Ok(()),
        }
    }

    fn record_failure(&self, ip: IpAddr, e: &ApiError) {
        self.stats
            .deliveries_rejected
            .fetch_add(1, Ordering::Relaxed);
        let locked = self.failures.lock().expect("failures lock").fail(
            ip,
            Instant::now(),
            self.max_failed_attempts,
            self.lockout_duration,
        );
        log::warn!(
            "key delivery from {ip} rejected: {} ({})",
            e.code,
            e.message
        );
        if locked {
            self.stats.lockouts.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "{ip} locked out for {}s after {} failed deliveries",
                self.lockout_duration.as_secs(),
                self.max_failed_attempts
            );
        }
    }

    /// `GET /challenge`: a fresh signed challenge with a fresh server X25519 key.
    pub fn issue_challenge(&self, ip: IpAddr) -> Result<ChallengeMsg, ApiError> {
        self.check_lockout(ip)?;
        let issued = IssuedChallenge::new(unix_now());
        let msg = issued.to_message(&self.identity, self.challenge_timeout.as_secs());
        let now = Instant::now();
        let mut ch = self.challenges.lock().expect("challenges lock");
        ch.purge(now, self.challenge_timeout, false);
        if ch.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_pending_per_ip {
            ch.purge(now, self.challenge_timeout, true);
            if ch.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_pending_per_ip {
                return Err(ApiError::new(
                    429,
                    "too_many_challenges",
                    "too many outstanding challenges from this address; use or let them expire",
                ));
            }
        }
        if ch.pending.len() >= self.max_pending {
            ch.purge(now, self.challenge_timeout, true);
            if ch.pending.len() >= self.max_pending {
                return Err(ApiError::new(
                    503,
                    "busy",
                    "too many outstanding challenges; retry shortly",
                ));
            }
        }
        *ch.per_ip.entry(ip).or_insert(0) += 1;
        ch.pending.insert(
            issued.challenge,
            Pending {
                issued,
                at: now,
                ip,
            },
        );
        drop(ch);
        self.stats.challenges_issued.fetch_add(1, Ordering::Relaxed);
        Ok(msg)
    }

    /// `POST /key`: authenticates and stores a delivered key.
    ///
    /// Malformed bodies are rejected without touching any state. A well-formed delivery always
    /// consumes the challenge it names (one attempt per challenge), and every authentication
    /// failure counts toward the source address's lockout.
    ///
    /// Every outcome is audited: `delivered` on success, `refused` (with the error code as the
    /// reason and the *claimed* admin key when the body named one) otherwise.
    pub fn deliver(&self, ip: IpAddr, body: &[u8]) -> Result<DeliveryAck, ApiError> {
        let mut claimed_admin = None;
        let result = self.deliver_audited(ip, body, &mut claimed_admin);
        if let Err(e) = &result {
            self.audit.record(AuditEvent::Refused {
                reason: e.code,
                detail: &e.message,
                key_id: None,
                admin: claimed_admin.as_ref(),
                ip: Some(ip),
                source: None,
            });
        }
        result
    }

    fn deliver_audited(
        &self,
        ip: IpAddr,
        body: &[u8],
        claimed_admin: &mut Option<VerifyingKey>,
    ) -> Result<DeliveryAck, ApiError> {
        self.check_lockout(ip)?;
        self.stats
            .deliveries_received
            .fetch_add(1, Ordering::Relaxed);
        let delivery = match Delivery::from_json(body) {
            Ok(d) => d,
            Err(ProtocolError::UnsupportedVersion(v)) => {
                return Err(ApiError::new(
                    400,
                    "unsupported_version",
                    format!("protocol version {v} is not supported"),
                ))
            }
            Err(e) => return Err(ApiError::new(400, "malformed", e.to_string())),
        };
        *claimed_admin = VerifyingKey::from_bytes(&delivery.admin_public_key).ok();
        let result = self.authenticate_and_store(ip, &delivery);
        if let Err(e) = &result {
            // Refusals of an authenticated admin's payload are not authentication failures.
            if !matches!(
                e.code,
                "key_id_conflict"
                    | "key_store_full"
                    | "shares_required"
                    | "shares_not_configured"
                    | "share_threshold_mismatch"
                    | "share_round_busy"
                    | "share_index_taken"
                    | "share_reconstruction_failed"
            ) {
                self.record_failure(ip, e);
            }
        }
        result
    }

    fn authenticate_and_store(&self, ip: IpAddr, d: &Delivery) -> Result<DeliveryAck, ApiError> {
        let now = Instant::now();
        let pending = {
            let mut ch = self.challenges.lock().expect("challenges lock");
            match ch.pending.remove(&d.challenge) {
                Some(p) => {
                    ch.release_ip(p.ip);
                    if ch.used.len() < self.max_pending {
                        ch.used.insert(d.challenge, p.at + self.challenge_timeout);
                    }
                    p
                }
                None if ch.used.get(&d.challenge).is_some_and(|until| *until > now) => {
                    return Err(ApiError::new(
                        409,
                        "challenge_used",
                        "this challenge was already used (replay?)",
                    ));
                }
                None => {
                    return Err(ApiError::new(
                        401,
                        "unknown_challenge",
                        "unknown or expired challenge; request a new one",
                    ));
                }
            }
        };
        if now.duration_since(pending.at) > self.challenge_timeout {
            return Err(ApiError::new(
                410,
                "challenge_expired",
                format!(
                    "the challenge expired (valid for {}s); request a new one",
                    self.challenge_timeout.as_secs()
                ),
            ));
        }
        let admin = self.find_admin(&d.admin_public_key).ok_or_else(|| {
            ApiError::new(
                403,
                "unknown_admin",
                "this admin public key is not in the server's admins list",
            )
        })?;
        let opened =
            open_any_delivery(d, &pending.issued, &self.public, &admin).map_err(|e| match e {
                ProtocolError::BadAdminSignature => {
                    ApiError::new(401, "bad_signature", "the admin signature does not verify")
                }
                ProtocolError::BadEphemeral => {
                    ApiError::new(400, "bad_ephemeral", "the admin ephemeral key is invalid")
                }
                ProtocolError::DecryptionFailed => ApiError::new(
                    401,
                    "decryption_failed",
                    "the sealed key does not authenticate",
                ),
                ProtocolError::BadPayload => {
                    ApiError::new(400, "bad_payload", "the decrypted payload is malformed")
                }
                other => ApiError::new(400, "malformed", other.to_string()),
            })?;
        drop(pending);
        let opened = match opened {
            OpenedPayload::Key(k) => k,
            OpenedPayload::Share(share) => return self.accept_share(ip, &admin, share),
        };
        if let Some(q) = &self.quorum {
            let m = q.lock().expect("quorum lock").settings().threshold;
            return Err(ApiError::new(
                403,
                "shares_required",
                format!(
                    "this server loads keys only from {m} administrators' shares (m-of-n); a single admin cannot load or replace a key: use `memkey-admin key send-share`"
                ),
            ));
        }
        self.store_whole_key(ip, &admin, opened)
    }

    fn store_whole_key(
        &self,
        ip: IpAddr,
        admin: &VerifyingKey,
        opened: OpenedDelivery,
    ) -> Result<DeliveryAck, ApiError> {
        let key_id = opened.key.id();
        let (inserted, key_ids, current) = {
            let mut v = self.vault.lock().expect("vault lock");
            let r = v
                .insert(&opened.key, opened.make_current)
                .map_err(|e| match e {
                    VaultError::Conflict(_) => ApiError::new(409, "key_id_conflict", e.to_string()),
                    VaultError::Full => ApiError::new(507, "key_store_full", e.to_string()),
                })?;
            (r, v.ids(), v.current())
        };
        self.failures.lock().expect("failures lock").success(ip);
        self.stats
            .deliveries_accepted
            .fetch_add(1, Ordering::Relaxed);
        self.audit.record(AuditEvent::Delivered {
            key_id,
            admin,
            ip,
            current: inserted.is_current,
            already_loaded: inserted.already_loaded,
        });
        log::info!(
            "key id {key_id} {} by admin {} from {ip}; current key id {:?}, loaded ids {key_ids:?}",
            if inserted.already_loaded {
                "re-delivered"
            } else {
                "loaded"
            },
            &hex::encode(admin.as_bytes())[..16],
            current
        );
        Ok(DeliveryAck {
            status: "ok".into(),
            key_id,
            current: inserted.is_current,
            already_loaded: inserted.already_loaded,
            key_ids,
            current_key_id: current,
            confirmation: hex::encode(opened.confirmation(inserted.is_current)),
            shares_received: None,
            threshold: None,
        })
    }

    /// One authenticated m-of-n share: counted per distinct admin; the M-th reconstructs the key.
    fn accept_share(
        &self,
        ip: IpAddr,
        admin: &VerifyingKey,
        opened: OpenedShare,
    ) -> Result<DeliveryAck, ApiError> {
        let Some(quorum) = &self.quorum else {
            return Err(ApiError::new(
                409,
                "shares_not_configured",
                "this server is not configured for m-of-n delivery (no shares: section); send the whole key with `memkey-admin key send`",
            ));
        };
        let key_id = opened.share.key_id;
        let index = opened.share.index;
        let mut q = quorum.lock().expect("quorum lock");
        self.record_expiry(&mut q);
        let outcome = q.offer(
            Instant::now(),
            *admin,
            opened.share.clone(),
            opened.make_current,
        );
        drop(q);
        let (key_ids, current_key_id) = {
            let v = self.vault.lock().expect("vault lock");
            (v.ids(), v.current())
        };
        match outcome {
            Ok(Offered::Held {
                distinct_admins,
                threshold,
                counted,
                ..
            }) => {
                self.audit.record(AuditEvent::ShareReceived {
                    key_id,
                    admin,
                    ip,
                    share_index: index,
                    distinct_admins,
                    threshold,
                });
                log::info!(
                    "share {index} of key id {key_id} {} from admin {} ({ip}); {distinct_admins} of {threshold} admins",
                    if counted { "received" } else { "repeated (an admin counts once)" },
                    &hex::encode(admin.as_bytes())[..16],
                );
                self.failures.lock().expect("failures lock").success(ip);
                Ok(DeliveryAck {
                    status: if counted { "share_received" } else { "share_already_counted" }.into(),
                    key_id,
                    current: false,
                    already_loaded: false,
                    key_ids,
                    current_key_id,
                    confirmation: hex::encode(opened.confirmation(false)),
                    shares_received: Some(distinct_admins),
                    threshold: Some(threshold),
                })
            }
            Ok(Offered::Reconstructed {
                key,
                admins,
                make_current,
            }) => {
                let threshold = admins.len();
                self.audit.record(AuditEvent::ShareReceived {
                    key_id,
                    admin,
                    ip,
                    share_index: index,
                    distinct_admins: threshold,
                    threshold: threshold as u8,
                });
                let (inserted, key_ids, current) = {
                    let mut v = self.vault.lock().expect("vault lock");
                    let r = v.insert(&key, make_current).map_err(|e| match e {
                        VaultError::Conflict(_) => {
                            ApiError::new(409, "key_id_conflict", e.to_string())
                        }
                        VaultError::Full => ApiError::new(507, "key_store_full", e.to_string()),
                    })?;
                    (r, v.ids(), v.current())
                };
                drop(key);
                self.failures.lock().expect("failures lock").success(ip);
                self.stats
                    .deliveries_accepted
                    .fetch_add(1, Ordering::Relaxed);
                self.audit.record(AuditEvent::KeyReconstructed {
                    key_id,
                    admins: &admins,
                    current: inserted.is_current,
                    already_loaded: inserted.already_loaded,
                });
                log::info!(
                    "key id {key_id} reconstructed from {threshold} admins' shares and {}; current key id {current:?}, loaded ids {key_ids:?}",
                    if inserted.already_loaded { "was already loaded" } else { "loaded" },
                );
                Ok(DeliveryAck {
                    status: "ok".into(),
                    key_id,
                    current: inserted.is_current,
                    already_loaded: inserted.already_loaded,
                    key_ids,
                    current_key_id: current,
                    confirmation: hex::encode(opened.confirmation(inserted.is_current)),
                    shares_received: Some(threshold),
                    threshold: Some(threshold as u8),
                })
            }
            Err(Refusal::ThresholdMismatch { got, want }) => Err(ApiError::new(
                400,
                "share_threshold_mismatch",
                format!("this share was made for a threshold of {got}; the server needs {want} (shares.threshold)"),
            )),
            Err(Refusal::OtherRoundInProgress { key_id: other }) => Err(ApiError::new(
                409,
                "share_round_busy",
                format!("shares of key id {other} (another split) are being collected; retry when that window ends"),
            )),
            Err(Refusal::IndexTaken { index }) => Err(ApiError::new(
                409,
                "share_index_taken",
                format!("another admin already delivered share {index} in this round"),
            )),
            Err(Refusal::Reconstruction { why, admins, .. }) => Err(ApiError::new(
                422,
                "share_reconstruction_failed",
                format!(
                    "the shares of {} admins did not reconstruct key id {key_id}: {why}; all shares were discarded",
                    admins.len()
                ),
            )),
        }
    }

    /// Discards shares whose window elapsed (the server calls this periodically).
    pub fn expire_shares(&self) {
        if let Some(q) = &self.quorum {
            let mut q = q.lock().expect("quorum lock");
            self.record_expiry(&mut q);
        }
    }

    fn record_expiry(&self, q: &mut ShareQuorum) {
        if let Some(e) = q.expire(Instant::now()) {
            let threshold = q.settings().threshold;
            self.audit.record(AuditEvent::SharesExpired {
                key_id: e.key_id,
                discarded: e.discarded,
                threshold,
            });
            log::warn!(
                "m-of-n window of {}s ended with {} of {threshold} shares for key id {}; shares discarded",
                q.settings().window.as_secs(),
                e.discarded,
                e.key_id
            );
        }
    }

    /// Constant-time membership test over the whole admin list.
    fn find_admin(&self, candidate: &[u8; 32]) -> Option<VerifyingKey> {
        let mut found = Choice::from(0u8);
        let mut which = 0usize;
        for (i, a) in self.admins.iter().enumerate() {
            let eq = a.as_bytes().ct_eq(candidate);
            // Branch-free select of the matching index.
            which = u64::conditional_select(&(which as u64), &(i as u64), eq) as usize;
            found |= eq;
        }
        bool::from(found).then(|| self.admins[which])
    }

    /// `GET /status`.
    pub fn status(&self) -> StatusInfo {
        let v = self.vault.lock().expect("vault lock");
        StatusInfo {
            loaded: !v.is_empty(),
            key_ids: v.ids(),
            current: v.current(),
            loaded_at: v.loaded_at().map(system_time_rfc3339),
            fingerprint: self.fingerprint.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            memory_locked: v.lock_status().is_ok(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            key_source: {
                let mut ks = self.source_status.lock().expect("source status lock").clone();
                // With delivery as the only source, "loaded" simply means a key was delivered.
                if ks.kind == crate::source::SourceKind::Delivery.as_str() && !v.is_empty() {
                    ks.state = "loaded".into();
                }
                ks
            },
        }
    }

    /// Stores a key unsealed by a key source (HSM, KMS). Same rules as a delivery: a key id
    /// already loaded with different material is refused.
    pub fn load_unsealed(
        &self,
        key: &s3cp_format::keys::MasterKey,
        make_current: bool,
    ) -> Result<crate::vault::Inserted, VaultError> {
        self.vault.lock().expect("vault lock").insert(key, make_current)
    }

    /// Updates the key source part of `/status`.
    pub fn update_source_status(&self, f: impl FnOnce(&mut crate::source::runner::SourceStatus)) {
        f(&mut self.source_status.lock().expect("source status lock"));
    }

    /// `GET /key/raw` body (Unix socket only), built in a zeroizing buffer sized up front.
    /// `Ok(None)` when no key is loaded.
    pub fn raw_keys(&self) -> Option<Zeroizing<Vec<u8>>> {
        let v = self.vault.lock().expect("vault lock");
        let current = v.current()?;
        let n = v.ids().len();
        let mut out = Zeroizing::new(Vec::with_capacity(128 + n * 128));
        let _ = write!(out, "{{\"current\":{current},\"keys\":[");
        let mut first = true;
        v.for_each_key(|k| {
            let mut hexbuf = [0u8; 64];
            hex::encode_to_slice(k.expose(), &mut hexbuf).expect("64 = 2 * 32");
            let _ = write!(
                out,
                "{}{{\"id\":{},\"key\":\"",
                if first { "" } else { "," },
                k.id()
            );
            out.extend_from_slice(&hexbuf);
            out.extend_from_slice(b"\"}");
            hexbuf.zeroize();
            first = false;
        });
        let loaded_at = v.loaded_at().map(system_time_rfc3339).unwrap_or_default();
        let _ = write!(out, "],\"loaded_at\":\"{loaded_at}\"}}");
        debug_assert!(out.capacity() >= out.len());
        Some(out)
    }

    /// Wipes every key (shutdown); each key id leaving memory is audited as `key_retired`.
    pub fn wipe(&self) {
        if let Some(q) = &self.quorum {
            q.lock().expect("quorum lock").wipe();
        }
        let mut v = self.vault.lock().expect("vault lock");
        let ids = v.ids();
        v.clear();
        drop(v);
        for key_id in ids {
            self.audit.record(AuditEvent::KeyRetired {
                key_id,
                reason: "shutdown",
            });
        }
    }

    /// Current challenge timeout.
    pub fn challenge_timeout(&self) -> Duration {
        self.challenge_timeout
    }
}

fn system_time_rfc3339(t: SystemTime) -> String {
    rfc3339(
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{fingerprint, generate_identity, seal_delivery, DeliveryMsg};
    use s3cp_format::keys::MasterKey;

    fn setup(
        timeout: Duration,
        max_failed: u32,
        lockout: Duration,
    ) -> (KeyService, SigningKey, [u8; 32]) {
        let admin = generate_identity();
        let mut cfg = Config::new(generate_identity());
        cfg.admins = vec![admin.verifying_key()];
        cfg.challenge_timeout = timeout;
        cfg.max_failed_attempts = max_failed;
        cfg.lockout_duration = lockout;
        cfg.max_pending_per_ip = 4;
        let fp = fingerprint(&cfg.identity.verifying_key());
        (KeyService::new(&cfg), admin, fp)
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn delivery(
        svc: &KeyService,
        from: IpAddr,
        admin: &SigningKey,
        fp: &[u8; 32],
        key: &MasterKey,
        cur: bool,
    ) -> DeliveryMsg {
        let ch = svc.issue_challenge(from).unwrap().verify(fp).unwrap();
        seal_delivery(&ch, admin, key, cur)
            .unwrap()
            .delivery
            .to_message()
    }

    #[test]
    fn deliver_replay_and_raw() {
        let (svc, admin, fp) = setup(Duration::from_secs(30), 5, Duration::from_secs(60));
        assert!(svc.raw_keys().is_none());
        let key = MasterKey::generate(3);
        let body = serde_json::to_vec(&delivery(&svc, ip(1), &admin, &fp, &key, true)).unwrap();
        let ack = svc.deliver(ip(1), &body).unwrap();
        assert_eq!(
            (ack.key_id, ack.current, ack.already_loaded),
            (3, true, false)
        );
        assert_eq!(
            svc.deliver(ip(1), &body).unwrap_err().code,
            "challenge_used"
        );
        let raw = svc.raw_keys().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(v["current"], 3);
        assert_eq!(v["keys"][0]["key"], hex::encode(key.expose()));
        let st = svc.status();
        assert!(st.loaded);
        assert_eq!(st.key_ids, vec![3]);
        assert_eq!((st.key_source.kind.as_str(), st.key_source.state.as_str()), ("delivery", "loaded"));
        assert!(!serde_json::to_string(&st)
            .unwrap()
            .contains(&hex::encode(key.expose())));
    }

    #[test]
    fn deliveries_and_refusals_are_audited_without_key_material() {
        let admin = generate_identity();
        let mut cfg = Config::new(generate_identity());
        cfg.admins = vec![admin.verifying_key()];
        let fp = fingerprint(&cfg.identity.verifying_key());
        let svc = KeyService::with_audit(&cfg, AuditLog::memory());
        let key = MasterKey::generate(5);
        let body = serde_json::to_vec(&delivery(&svc, ip(1), &admin, &fp, &key, true)).unwrap();
        svc.deliver(ip(1), &body).unwrap();
        let intruder = generate_identity();
        let body = serde_json::to_vec(&delivery(&svc, ip(2), &intruder, &fp, &key, true)).unwrap();
        svc.deliver(ip(2), &body).unwrap_err();
        svc.wipe();
        let lines = svc.audit().lines();
        let events: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), 3, "{lines:?}");
        assert_eq!(events[0]["event"], "delivered");
        assert_eq!(events[0]["key_id"], 5);
        assert_eq!(events[0]["admin"], fingerprint_hex(&admin.verifying_key()));
        assert_eq!(events[0]["ip"], "10.0.0.1");
        assert_eq!(events[1]["event"], "refused");
        assert_eq!(events[1]["reason"], "unknown_admin");
        assert_eq!(
            events[1]["admin"],
            fingerprint_hex(&intruder.verifying_key())
        );
        assert_eq!(events[2]["event"], "key_retired");
        let secret = hex::encode(key.expose());
        assert!(lines.iter().all(|l| !l.contains(&secret)));
    }

    #[test]
    fn m_of_n_through_deliver() {
        use crate::protocol::seal_share_delivery;
        use crate::share_quorum::ShareSettings;
        let admins: Vec<SigningKey> = (0..3).map(|_| generate_identity()).collect();
        let mut cfg = Config::new(generate_identity());
        cfg.admins = admins.iter().map(|a| a.verifying_key()).collect();
        cfg.shares = Some(ShareSettings {
            threshold: 2,
            window: Duration::from_secs(60),
        });
        let fp = fingerprint(&cfg.identity.verifying_key());
        let svc = KeyService::with_audit(&cfg, AuditLog::memory());
        let key = MasterKey::generate(6);
        // A whole key from one admin is refused.
        let body = serde_json::to_vec(&delivery(&svc, ip(1), &admins[0], &fp, &key, true)).unwrap();
        assert_eq!(
            svc.deliver(ip(1), &body).unwrap_err().code,
            "shares_required"
        );
        assert!(svc.raw_keys().is_none());
        let shares = crate::shamir::split(&key, 2, 3).unwrap();
        let send = |who: &SigningKey, i: usize| {
            let ch = svc.issue_challenge(ip(1)).unwrap().verify(&fp).unwrap();
            let sealed = seal_share_delivery(&ch, who, &shares[i], true).unwrap();
            let body = serde_json::to_vec(&sealed.delivery.to_message()).unwrap();
            let r = svc.deliver(ip(1), &body);
            if let Ok(ack) = &r {
                sealed.check_confirmation(ack).unwrap();
            }
            r
        };
        let ack = send(&admins[0], 0).unwrap();
        assert_eq!(
            (ack.status.as_str(), ack.shares_received),
            ("share_received", Some(1))
        );
        let ack = send(&admins[0], 1).unwrap();
        assert_eq!(ack.status, "share_already_counted");
        assert!(svc.raw_keys().is_none());
        let ack = send(&admins[1], 2).unwrap();
        assert_eq!((ack.status.as_str(), ack.current), ("ok", true));
        let raw = svc.raw_keys().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(v["keys"][0]["key"], hex::encode(key.expose()));
        let lines = svc.audit().lines();
        let events: Vec<String> = lines
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            events,
            [
                "refused",
                "share_received",
                "share_received",
                "share_received",
                "key_reconstructed"
            ]
        );
        for s in &shares {
            let secret = hex::encode(&s.value[..]);
            assert!(lines.iter().all(|l| !l.contains(&secret)));
        }
        assert!(lines
            .iter()
            .all(|l| !l.contains(&hex::encode(key.expose()))));
    }

    #[test]
    fn malformed_changes_nothing() {
        let (svc, admin, fp) = setup(Duration::from_secs(30), 1, Duration::from_secs(60));
        for body in [&b""[..], b"{", b"[]", b"{\"version\":1}"] {
            assert_eq!(svc.deliver(ip(1), body).unwrap_err().status, 400);
        }
        // max_failed_attempts = 1, yet not locked: malformed bodies are not counted.
        let key = MasterKey::generate(1);
        let body = serde_json::to_vec(&delivery(&svc, ip(1), &admin, &fp, &key, true)).unwrap();
        svc.deliver(ip(1), &body).unwrap();
    }

    #[test]
    fn lockout_and_expiry() {
        let (svc, admin, fp) = setup(Duration::from_millis(200), 2, Duration::from_millis(300));
        let key = MasterKey::generate(1);
        let body = serde_json::to_vec(&delivery(&svc, ip(2), &admin, &fp, &key, true)).unwrap();
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            svc.deliver(ip(2), &body).unwrap_err().code,
            "challenge_expired"
        );
        let intruder = generate_identity();
        let body = serde_json::to_vec(&delivery(&svc, ip(2), &intruder, &fp, &key, true)).unwrap();
        assert_eq!(svc.deliver(ip(2), &body).unwrap_err().code, "unknown_admin");
        let e = svc.issue_challenge(ip(2)).unwrap_err();
        assert_eq!((e.status, e.code), (429, "locked_out"));
        assert!(e.retry_after.unwrap() >= 1);
        // Another address is unaffected.
        svc.issue_challenge(ip(3)).unwrap();
        std::thread::sleep(Duration::from_millis(350));
        let body = serde_json::to_vec(&delivery(&svc, ip(2), &admin, &fp, &key, true)).unwrap();
        svc.deliver(ip(2), &body).unwrap();
    }

    #[test]
    fn per_ip_challenge_cap() {
        let (svc, _, _) = setup(Duration::from_secs(30), 5, Duration::from_secs(60));
        for _ in 0..4 {
            svc.issue_challenge(ip(9)).unwrap();
        }
        assert_eq!(
            svc.issue_challenge(ip(9)).unwrap_err().code,
            "too_many_challenges"
        );
        svc.issue_challenge(ip(8)).unwrap();
    }

    #[test]
    fn find_admin_picks_the_right_key() {
        let a = generate_identity().verifying_key();
        let b = generate_identity().verifying_key();
        let mut cfg = Config::new(generate_identity());
        cfg.admins = vec![a, b];
        let svc = KeyService::new(&cfg);
        assert_eq!(svc.find_admin(a.as_bytes()), Some(a));
        assert_eq!(svc.find_admin(b.as_bytes()), Some(b));
        assert_eq!(svc.find_admin(&[0; 32]), None);
    }
}
