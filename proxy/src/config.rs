//! Configuration: a YAML file, then `S3CP_*` environment variables on top, then checks.
//! Any problem is one clear line and exit code 2 (see `main`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use filters::backend::BackendConfig;
use filters::clients::{Client, Clients, Grant, RateLimit, Role};
use filters::delete_emulation::DeleteObjectsMode;
use filters::profile::Profile;
use filters::conditional::ConditionalMode;
use filters::crypto::UnencryptedPolicy;
use filters::sigv4::Credentials;
use filters::FilterKind;
use s3cp_format::ChunkCipher;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen_addr: Option<String>,
    pub admin_listen_addr: Option<String>,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub backend: RawBackend,
    #[serde(default)]
    pub client: RawClient,
    /// Several clients, each with its own secret(s), role, buckets and rate limits.
    pub clients: Option<Vec<RawClientEntry>>,
    #[serde(default)]
    pub encryption: RawEncryption,
    pub allowed_buckets: Option<Vec<String>>,
    #[serde(default)]
    pub memkey: RawMemkey,
    pub filters: Option<Vec<String>>,
    pub conditional_writes: Option<String>,
    pub unencrypted_objects: Option<String>,
    pub unencrypted_before: Option<String>,
    pub unencrypted_prefixes: Option<Vec<String>>,
    pub virtual_host_suffix: Option<String>,
    pub log_level: Option<String>,
    pub audit_log: Option<String>,
    #[serde(default)]
    pub server: RawServer,
    /// systemd's `$RUNTIME_DIRECTORY` (the unit's `RuntimeDirectory=`), not a file setting.
    #[serde(skip)]
    pub runtime_directory: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub path_style: Option<bool>,
    pub insecure_skip_verify: Option<bool>,
    pub ca_file: Option<String>,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    /// aws, minio, garage, b2, wasabi, hetzner, r2, gcs, ceph or generic (filters/src/profile.rs).
    pub profile: Option<String>,
    /// Whether `If-None-Match` reaches the backend on writes (default: the profile's).
    pub send_if_none_match: Option<bool>,
    /// `native` or `emulate` (one DELETE per object; default: the profile's).
    pub delete_objects: Option<String>,
    /// `trailer` (default) or `off`: see filters/src/verified_write.rs.
    pub verified_writes: Option<String>,
    /// `crc32c` (default) or `crc64nvme`.
    pub verified_writes_checksum: Option<String>,
    /// Fill the fields a provider leaves out of listings (default: the profile's, on).
    pub normalize_listings: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientEntry {
    pub access_key: Option<String>,
    /// The secret itself, or where to read it: a file (first line) or an environment variable.
    pub secret_key: Option<String>,
    pub secret_key_file: Option<String>,
    pub secret_key_env: Option<String>,
    /// Secrets still accepted during a rotation, after the current one.
    pub previous_secret_keys: Option<Vec<String>>,
    /// read-only, read-write (default) or admin.
    pub role: Option<String>,
    /// `bucket` or `bucket/prefix`; none: the proxy-wide allowed_buckets apply.
    pub buckets: Option<Vec<String>>,
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub requests_per_second: Option<f64>,
    /// A number of bytes, or a size such as `100MiB` / `50MB`.
    pub bytes_per_second: Option<serde_yaml::Value>,
}

/// `123`, `64KiB`, `100MiB`, `1GiB`, `50MB`, `1GB`.
fn byte_rate(name: &str, v: &serde_yaml::Value) -> Result<f64, String> {
    let bad = || format!("{name}: {v:?} is not a size like 104857600 or 100MiB");
    let n = match v {
        serde_yaml::Value::Number(n) => n.as_f64().ok_or_else(bad)?,
        serde_yaml::Value::String(t) => {
            let t = t.trim();
            let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let mult = match unit.trim() {
                "" | "B" => 1.0,
                "KiB" => 1024.0,
                "MiB" => 1024.0 * 1024.0,
                "GiB" => 1024.0 * 1024.0 * 1024.0,
                "KB" | "kB" => 1e3,
                "MB" => 1e6,
                "GB" => 1e9,
                _ => return Err(bad()),
            };
            num.trim().parse::<f64>().map_err(|_| bad())? * mult
        }
        _ => return Err(bad()),
    };
    if n > 0.0 && n.is_finite() {
        Ok(n)
    } else {
        Err(bad())
    }
}

impl RawClientEntry {
    fn finish(self, i: usize, env: &dyn Fn(&str) -> Option<String>) -> Result<Client, String> {
        let access_key = self.access_key.filter(|k| !k.is_empty()).ok_or_else(|| format!("clients[{i}].access_key is required"))?;
        let at = |field: &str| format!("clients[{i}] ({access_key}).{field}");
        let secret = match (self.secret_key, self.secret_key_file, self.secret_key_env) {
            (Some(s), None, None) => s,
            (None, Some(f), None) => std::fs::read_to_string(&f)
                .map_err(|e| format!("{}: cannot read {f}: {e}", at("secret_key_file")))?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
            (None, None, Some(var)) => env(&var).ok_or_else(|| format!("{}: the variable {var} is not set", at("secret_key_env")))?,
            _ => return Err(format!("{}: set exactly one of secret_key, secret_key_file, secret_key_env", at("secret_key"))),
        };
        if secret.is_empty() {
            return Err(format!("{} is empty", at("secret_key")));
        }
        let mut secrets = vec![secret];
        secrets.extend(self.previous_secret_keys.unwrap_or_default().into_iter().filter(|s| !s.is_empty()));
        let role: Role = self.role.as_deref().unwrap_or("read-write").parse().map_err(|e| format!("{}: {e}", at("role")))?;
        let grants = self
            .buckets
            .unwrap_or_default()
            .iter()
            .map(|b| Grant::parse(b).map_err(|e| format!("{}: {e}", at("buckets"))))
            .collect::<Result<Vec<_>, _>>()?;
        let rate = match self.rate_limit {
            Some(r) => RateLimit {
                requests_per_second: match r.requests_per_second {
                    Some(n) if n > 0.0 && n.is_finite() => Some(n),
                    Some(n) => return Err(format!("{}: {n} must be a positive number", at("rate_limit.requests_per_second"))),
                    None => None,
                },
                bytes_per_second: r.bytes_per_second.as_ref().map(|v| byte_rate(&at("rate_limit.bytes_per_second"), v)).transpose()?,
            },
            None => RateLimit::default(),
        };
        Ok(Client::new(access_key, secrets, role, grants, rate))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEncryption {
    pub chunk_size: Option<u32>,
    pub former_chunk_sizes: Option<Vec<u32>>,
    /// Chunk cipher of new writes: `auto` (default), `aes-256-gcm` or `chacha20-poly1305`.
    pub cipher: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMemkey {
    pub socket_path: Option<String>,
    pub endpoint: Option<String>,
    pub poll_interval: Option<String>,
    /// `/readyz` answers 503 while keyd holds no key (or cannot be reached), even though
    /// this process still holds the keys it loaded. For several replicas behind a load
    /// balancer: a replica whose keyd lost the key (restarted) leaves the pool until the
    /// administrator sends the key again, instead of serving on with a key it could not
    /// get back after its own restart or upgrade. Default false (a single proxy keeps serving).
    pub ready_requires_keyd_key: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub threads: Option<usize>,
    pub drain_seconds: Option<u64>,
    pub grace_period_seconds: Option<u64>,
    pub graceful_shutdown_timeout_seconds: Option<u64>,
    pub upgrade_sock: Option<String>,
    pub pid_file: Option<String>,
}

/// The checked configuration.
#[derive(Debug)]
pub struct Config {
    pub listen_addr: String,
    pub admin_listen_addr: String,
    pub tls: Option<(String, String)>,
    pub admin_token: Option<String>,
    pub backend: BackendConfig,
    /// Every client (the single `client:` included), by access key.
    pub clients: Arc<Clients>,
    pub chunk_size: u32,
    /// Chunk cipher (format version) of the segments this proxy writes; reads take both.
    pub cipher: ChunkCipher,
    /// Chunk sizes objects in these buckets were written with before (listings size them).
    pub former_chunk_sizes: Vec<u32>,
    pub allowed_buckets: Vec<String>,
    pub memkey_socket: Option<String>,
    /// keyd's HTTPS address, shown to operators (the key itself only ever comes over the socket).
    pub memkey_endpoint: Option<String>,
    pub poll_interval: Duration,
    /// `memkey.ready_requires_keyd_key`.
    pub ready_requires_keyd_key: bool,
    pub filters: Vec<FilterKind>,
    pub conditional_writes: ConditionalMode,
    pub unencrypted_objects: UnencryptedPolicy,
    pub virtual_host_suffix: Option<String>,
    /// `backend.normalize_listings`: listings completed and ordered as S3 sends them.
    pub normalize_listings: bool,
    pub log_level: String,
    pub audit_log: Option<String>,
    pub threads: usize,
    /// On SIGTERM: seconds of serving with `/readyz` 503 and `Connection: close` (drain.rs).
    pub drain_seconds: u64,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub upgrade_sock: String,
    pub pid_file: String,
}

/// Every variable the proxy reads, with the setting it overrides.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("S3CP_LISTEN_ADDR", "listen_addr"),
    ("S3CP_ADMIN_LISTEN_ADDR", "admin_listen_addr"),
    ("S3CP_TLS_CERT_FILE", "tls.cert_file"),
    ("S3CP_TLS_KEY_FILE", "tls.key_file"),
    ("S3CP_ADMIN_TOKEN", "admin.token"),
    ("S3CP_BACKEND_ENDPOINT", "backend.endpoint"),
    ("S3CP_BACKEND_REGION", "backend.region"),
    ("S3CP_BACKEND_ACCESS_KEY", "backend.access_key"),
    ("S3CP_BACKEND_SECRET_KEY", "backend.secret_key"),
    ("S3CP_BACKEND_PATH_STYLE", "backend.path_style"),
    ("S3CP_BACKEND_INSECURE", "backend.insecure_skip_verify"),
    ("S3CP_BACKEND_CA_FILE", "backend.ca_file"),
    ("S3CP_BACKEND_PROFILE", "backend.profile"),
    ("S3CP_BACKEND_VERIFIED_WRITES", "backend.verified_writes"),
    ("S3CP_BACKEND_NORMALIZE_LISTINGS", "backend.normalize_listings"),
    ("S3CP_CLIENT_ACCESS_KEY", "client.access_key"),
    ("S3CP_CLIENT_SECRET_KEY", "client.secret_key"),
    ("S3CP_CHUNK_SIZE", "encryption.chunk_size"),
    ("S3CP_FORMER_CHUNK_SIZES", "encryption.former_chunk_sizes (comma-separated)"),
    ("S3CP_CIPHER", "encryption.cipher"),
    ("S3CP_ALLOWED_BUCKETS", "allowed_buckets (comma-separated)"),
    ("S3CP_MEMKEY_SOCKET", "memkey.socket_path"),
    ("S3CP_MEMKEY_ENDPOINT", "memkey.endpoint"),
    ("S3CP_MEMKEY_POLL_INTERVAL", "memkey.poll_interval"),
    ("S3CP_FILTERS", "filters (comma-separated)"),
    ("S3CP_CONDITIONAL_WRITES", "conditional_writes"),
    ("S3CP_UNENCRYPTED_OBJECTS", "unencrypted_objects"),
    ("S3CP_UNENCRYPTED_BEFORE", "unencrypted_before"),
    ("S3CP_UNENCRYPTED_PREFIXES", "unencrypted_prefixes (comma-separated)"),
    ("S3CP_VIRTUAL_HOST_SUFFIX", "virtual_host_suffix"),
    ("S3CP_LOG_LEVEL", "log_level"),
    ("S3CP_AUDIT_LOG", "audit_log"),
    ("RUNTIME_DIRECTORY", "directory of the default server.upgrade_sock and pid_file (systemd sets it)"),
];

/// Where the upgrade socket and the PID file go by default, without `$RUNTIME_DIRECTORY`.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/s3-crypt-proxy";

fn parse_bool(var: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("{var}={v:?} is not a boolean (true/false)")),
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

fn duration(name: &str, v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v).map_err(|e| format!("{name}: {v:?} is not a duration like 5s or 2m ({e})"))
}

impl RawConfig {
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        serde_yaml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Applies `S3CP_*` variables from `env` (a lookup function, so tests need no globals).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        let s = |k: &str| env(k);
        macro_rules! set {
            ($var:literal, $field:expr) => {
                if let Some(v) = s($var) {
                    $field = Some(v);
                }
            };
        }
        set!("S3CP_LISTEN_ADDR", self.listen_addr);
        set!("S3CP_ADMIN_LISTEN_ADDR", self.admin_listen_addr);
        set!("S3CP_TLS_CERT_FILE", self.tls.cert_file);
        set!("S3CP_TLS_KEY_FILE", self.tls.key_file);
        set!("S3CP_ADMIN_TOKEN", self.admin.token);
        set!("S3CP_BACKEND_ENDPOINT", self.backend.endpoint);
        set!("S3CP_BACKEND_REGION", self.backend.region);
        set!("S3CP_BACKEND_ACCESS_KEY", self.backend.access_key);
        set!("S3CP_BACKEND_SECRET_KEY", self.backend.secret_key);
        set!("S3CP_BACKEND_CA_FILE", self.backend.ca_file);
        set!("S3CP_BACKEND_PROFILE", self.backend.profile);
        set!("S3CP_BACKEND_VERIFIED_WRITES", self.backend.verified_writes);
        set!("S3CP_CLIENT_ACCESS_KEY", self.client.access_key);
        set!("S3CP_CLIENT_SECRET_KEY", self.client.secret_key);
        set!("S3CP_MEMKEY_SOCKET", self.memkey.socket_path);
        set!("S3CP_MEMKEY_ENDPOINT", self.memkey.endpoint);
        set!("S3CP_MEMKEY_POLL_INTERVAL", self.memkey.poll_interval);
        set!("S3CP_CONDITIONAL_WRITES", self.conditional_writes);
        set!("S3CP_UNENCRYPTED_OBJECTS", self.unencrypted_objects);
        set!("S3CP_UNENCRYPTED_BEFORE", self.unencrypted_before);
        set!("S3CP_VIRTUAL_HOST_SUFFIX", self.virtual_host_suffix);
        set!("S3CP_LOG_LEVEL", self.log_level);
        set!("S3CP_AUDIT_LOG", self.audit_log);
        if let Some(v) = s("RUNTIME_DIRECTORY") {
            // systemd separates several directories with ':'; the first is the unit's own.
            self.runtime_directory = v.split(':').next().filter(|d| !d.is_empty()).map(str::to_string);
        }
        if let Some(v) = s("S3CP_BACKEND_PATH_STYLE") {
            self.backend.path_style = Some(parse_bool("S3CP_BACKEND_PATH_STYLE", &v)?);
        }
        if let Some(v) = s("S3CP_BACKEND_NORMALIZE_LISTINGS") {
            self.backend.normalize_listings = Some(parse_bool("S3CP_BACKEND_NORMALIZE_LISTINGS", &v)?);
        }
        if let Some(v) = s("S3CP_BACKEND_INSECURE") {
            self.backend.insecure_skip_verify = Some(parse_bool("S3CP_BACKEND_INSECURE", &v)?);
        }
        if let Some(v) = s("S3CP_CHUNK_SIZE") {
            self.encryption.chunk_size = Some(v.parse().map_err(|_| format!("S3CP_CHUNK_SIZE={v:?} is not a number"))?);
        }
        if let Some(v) = s("S3CP_CIPHER") {
            self.encryption.cipher = Some(v);
        }
        if let Some(v) = s("S3CP_FORMER_CHUNK_SIZES") {
            let sizes = list(&v).iter().map(|n| n.parse().map_err(|_| format!("S3CP_FORMER_CHUNK_SIZES={v:?} is not a list of numbers"))).collect::<Result<_, _>>()?;
            self.encryption.former_chunk_sizes = Some(sizes);
        }
        if let Some(v) = s("S3CP_UNENCRYPTED_PREFIXES") {
            self.unencrypted_prefixes = Some(list(&v));
        }
        if let Some(v) = s("S3CP_ALLOWED_BUCKETS") {
            self.allowed_buckets = Some(list(&v));
        }
        if let Some(v) = s("S3CP_FILTERS") {
            self.filters = Some(list(&v));
        }
        Ok(())
    }

    /// Checks everything and fills defaults.
    pub fn finish(self) -> Result<Config, String> {
        let need = |v: Option<String>, name: &str| v.filter(|s| !s.is_empty()).ok_or_else(|| format!("{name} is required"));
        let tls = match (self.tls.cert_file, self.tls.key_file) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err("tls.cert_file and tls.key_file must be set together".into()),
        };
        // Without a profile: the defaults of the proxy's first releases (conditions left to
        // the backend, headers sent as they came).
        let profile: Profile = match self.backend.profile.as_deref() {
            Some(name) => name.parse()?,
            None => Profile {
                name: "none",
                conditional_writes: ConditionalMode::Backend,
                send_if_none_match: true,
                delete_objects: DeleteObjectsMode::Native,
                trailer_checksums: true,
                normalize_listings: true,
            },
        };
        let conditional_writes: ConditionalMode = match self.conditional_writes.as_deref() {
            Some(mode) => mode.parse()?,
            None => profile.conditional_writes,
        };
        let send_if_none_match = self.backend.send_if_none_match.unwrap_or(profile.send_if_none_match);
        if !send_if_none_match && conditional_writes != ConditionalMode::Enforce {
            return Err(format!("backend.send_if_none_match is false (profile {}) but conditional_writes is backend: If-None-Match: * would silently overwrite; use conditional_writes: enforce", profile.name));
        }
        let normalize_listings = self.backend.normalize_listings.unwrap_or(profile.normalize_listings);
        let backend = BackendConfig {
            endpoint: need(self.backend.endpoint, "backend.endpoint (S3CP_BACKEND_ENDPOINT)")?,
            region: self.backend.region.unwrap_or_else(|| "us-east-1".into()),
            credentials: Credentials::new(
                need(self.backend.access_key, "backend.access_key (S3CP_BACKEND_ACCESS_KEY)")?,
                need(self.backend.secret_key, "backend.secret_key (S3CP_BACKEND_SECRET_KEY)")?,
            ),
            path_style: self.backend.path_style.unwrap_or(false),
            insecure_skip_verify: self.backend.insecure_skip_verify.unwrap_or(false),
            ca_file: self.backend.ca_file,
            connect_timeout: duration("backend.connect_timeout", self.backend.connect_timeout.as_deref().unwrap_or("10s"))?,
            io_timeout: duration("backend.timeout", self.backend.timeout.as_deref().unwrap_or("5m"))?,
            idle_timeout: Duration::from_secs(60),
            send_if_none_match,
            delete_objects: match self.backend.delete_objects.as_deref() {
                Some(mode) => mode.parse()?,
                None => profile.delete_objects,
            },
            verified_writes: filters::verified_write::VerifiedWrites::from_config(
                self.backend.verified_writes.as_deref().unwrap_or(if profile.trailer_checksums { "trailer" } else { "off" }),
                self.backend.verified_writes_checksum.as_deref().unwrap_or("crc32c"),
            )?,
        };
        let clients = match self.clients {
            Some(entries) => {
                let env = |k: &str| std::env::var(k).ok();
                let mut list = entries.into_iter().enumerate().map(|(i, c)| c.finish(i, &env)).collect::<Result<Vec<_>, _>>()?;
                // The single `client:` (or S3CP_CLIENT_*) joins the list as a read-write client.
                if let (Some(k), Some(s)) = (self.client.access_key.filter(|k| !k.is_empty()), self.client.secret_key.filter(|s| !s.is_empty())) {
                    list.push(Client::new(k, vec![s], Role::ReadWrite, Vec::new(), RateLimit::default()));
                }
                Clients::new(list)?
            }
            None => Clients::single(Credentials::new(
                need(self.client.access_key, "client.access_key (S3CP_CLIENT_ACCESS_KEY) or clients")?,
                need(self.client.secret_key, "client.secret_key (S3CP_CLIENT_SECRET_KEY)")?,
            )),
        };
        let clients = Arc::new(clients);
        let filters: Vec<FilterKind> = match self.filters {
            Some(names) => names.iter().map(|n| n.parse()).collect::<Result<_, _>>()?,
            None => FilterKind::default_chain(),
        };
        let memkey_socket = self.memkey.socket_path.filter(|s| !s.is_empty());
        filters::validate_order(&filters, memkey_socket.is_some())?;
        let allowed_buckets = self.allowed_buckets.unwrap_or_default();
        if !allowed_buckets.is_empty() && !filters.contains(&FilterKind::Allowlist) {
            return Err("allowed_buckets is set but the allowlist filter is not in filters, so every bucket would be reachable: add allowlist after sigv4, or remove allowed_buckets".into());
        }
        let runtime_dir = self.runtime_directory.unwrap_or_else(|| DEFAULT_RUNTIME_DIR.into());
        let in_runtime_dir = |name: &str| Path::new(&runtime_dir).join(name).to_string_lossy().into_owned();
        let chunk_size = self.encryption.chunk_size.unwrap_or(s3cp_format::DEFAULT_CHUNK_SIZE);
        s3cp_format::validate_chunk_size(chunk_size).map_err(|e| format!("encryption.chunk_size: {e}"))?;
        let cipher = cipher_setting(self.encryption.cipher.as_deref().unwrap_or("auto"), ChunkCipher::auto)?;
        let mut former_chunk_sizes = Vec::new();
        for c in self.encryption.former_chunk_sizes.unwrap_or_default() {
            s3cp_format::validate_chunk_size(c).map_err(|e| format!("encryption.former_chunk_sizes: {e}"))?;
            if c != chunk_size && !former_chunk_sizes.contains(&c) {
                former_chunk_sizes.push(c);
            }
        }
        let unencrypted_objects = UnencryptedPolicy::from_config(
            self.unencrypted_objects.as_deref().unwrap_or("refuse"),
            self.unencrypted_before.as_deref(),
            self.unencrypted_prefixes.unwrap_or_default(),
        )?;
        let poll_interval = duration("memkey.poll_interval", self.memkey.poll_interval.as_deref().unwrap_or("5s"))?;
        if poll_interval < Duration::from_millis(100) {
            return Err("memkey.poll_interval must be at least 100ms".into());
        }
        let cfg = Config {
            listen_addr: self.listen_addr.unwrap_or_else(|| "0.0.0.0:8080".into()),
            admin_listen_addr: self.admin_listen_addr.unwrap_or_else(|| "127.0.0.1:9090".into()),
            tls,
            admin_token: self.admin.token.filter(|t| !t.is_empty()),
            backend,
            clients,
            chunk_size,
            cipher,
            former_chunk_sizes,
            allowed_buckets,
            memkey_socket,
            memkey_endpoint: self.memkey.endpoint,
            poll_interval,
            ready_requires_keyd_key: self.memkey.ready_requires_keyd_key.unwrap_or(false),
            filters,
            conditional_writes,
            unencrypted_objects,
            virtual_host_suffix: self.virtual_host_suffix.filter(|s| !s.is_empty()),
            normalize_listings,
            log_level: self.log_level.unwrap_or_else(|| "info".into()),
            audit_log: self.audit_log.filter(|s| s != "off"),
            threads: self.server.threads.unwrap_or(0),
            drain_seconds: self.server.drain_seconds.unwrap_or(5),
            grace_period_seconds: self.server.grace_period_seconds.unwrap_or(30),
            graceful_shutdown_timeout_seconds: self.server.graceful_shutdown_timeout_seconds.unwrap_or(30),
            upgrade_sock: self.server.upgrade_sock.filter(|s| !s.is_empty()).unwrap_or_else(|| in_runtime_dir("upgrade.sock")),
            pid_file: self.server.pid_file.filter(|s| !s.is_empty()).unwrap_or_else(|| in_runtime_dir("proxy.pid")),
        };
        crate::listen::check_distinct(&cfg.listeners())?;
        Ok(cfg)
    }
}

impl Config {
    /// Every TCP listener, with the setting that names it.
    pub fn listeners(&self) -> [(&'static str, &str); 2] {
        [("listen_addr", &self.listen_addr), ("admin_listen_addr", &self.admin_listen_addr)]
    }

    /// The directories of the upgrade socket and the PID file, with the setting each is for.
    pub fn runtime_dirs(&self) -> Vec<(&'static str, &Path)> {
        fn parent(f: &str) -> &Path {
            match Path::new(f).parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            }
        }
        vec![("server.upgrade_sock", parent(&self.upgrade_sock)), ("server.pid_file", parent(&self.pid_file))]
    }
}

/// `encryption.cipher`: a chunk cipher name, or `auto` for what `auto` picks on this CPU
/// (AES-256-GCM with AES instructions, else ChaCha20-Poly1305).
fn cipher_setting(v: &str, auto: impl FnOnce() -> ChunkCipher) -> Result<ChunkCipher, String> {
    match v.trim() {
        "auto" => Ok(auto()),
        name => name.parse().map_err(|e| format!("encryption.cipher: {e}, or auto")),
    }
}

/// Loads the file (optional), applies the process environment and checks.
pub fn load(path: Option<&Path>) -> Result<Config, String> {
    let mut raw = match path {
        Some(p) => RawConfig::from_file(p)?,
        None => RawConfig::default(),
    };
    raw.apply_env(|k| std::env::var(k).ok())?;
    raw.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const MIN: &str = "backend: {endpoint: 'http://127.0.0.1:9000', access_key: a, secret_key: b}\nclient: {access_key: c, secret_key: d}\nmemkey: {socket_path: /run/memkey/memkey.sock}\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c: RawConfig = serde_yaml::from_str(MIN).unwrap();
        let c = c.finish().unwrap();
        assert_eq!(c.listen_addr, "0.0.0.0:8080");
        assert_eq!(c.filters, FilterKind::default_chain());
        assert_eq!(c.chunk_size, 65536);
        assert_eq!(c.poll_interval, Duration::from_secs(5));
        assert!(!c.ready_requires_keyd_key, "a single proxy keeps serving when keyd loses the key");
        assert_eq!(c.upgrade_sock, "/run/s3-crypt-proxy/upgrade.sock");
        assert_eq!(c.pid_file, "/run/s3-crypt-proxy/proxy.pid");
        let c: RawConfig = serde_yaml::from_str(&MIN.replace("memkey: {", "memkey: {ready_requires_keyd_key: true, ")).unwrap();
        assert!(c.finish().unwrap().ready_requires_keyd_key);
    }

    #[test]
    fn runtime_files_default_to_systemds_runtime_directory() {
        let mut c: RawConfig = serde_yaml::from_str(MIN).unwrap();
        c.apply_env(|k| (k == "RUNTIME_DIRECTORY").then(|| "/run/s3cp-a:/run/other".into())).unwrap();
        let c = c.finish().unwrap();
        assert_eq!(c.upgrade_sock, "/run/s3cp-a/upgrade.sock");
        assert_eq!(c.pid_file, "/run/s3cp-a/proxy.pid");
        let dirs: Vec<_> = c.runtime_dirs().into_iter().map(|(_, d)| d.to_path_buf()).collect();
        assert_eq!(dirs, vec![Path::new("/run/s3cp-a"), Path::new("/run/s3cp-a")]);
        // Explicit paths win.
        let c: RawConfig = serde_yaml::from_str(&format!("{MIN}server: {{upgrade_sock: /srv/p/u.sock, pid_file: p.pid}}")).unwrap();
        let c = c.finish().unwrap();
        assert_eq!(c.upgrade_sock, "/srv/p/u.sock");
        assert_eq!(c.runtime_dirs()[1].1, Path::new("."));
    }

    #[test]
    fn clients_list_with_secrets_from_value_file_and_environment() {
        let dir = std::env::temp_dir().join(format!("s3cp-clients-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "from-file\nignored second line\n").unwrap();
        let entry = |yaml: &str| serde_yaml::from_str::<RawClientEntry>(yaml).unwrap();
        let env = |k: &str| (k == "PBS_SECRET").then(|| "from-env".to_string());
        let c = entry(&format!("{{access_key: a, secret_key_file: {}, role: read-only, buckets: [b, 'c/p/'], rate_limit: {{requests_per_second: 5, bytes_per_second: 2MiB}}}}", file.display()))
            .finish(0, &env)
            .unwrap();
        assert_eq!((c.secrets[0].secret(), c.role), ("from-file", Role::ReadOnly));
        assert_eq!(c.grant("c").unwrap().prefixes, vec!["p/".to_string()]);
        assert!(c.limited());
        let c = entry("{access_key: b, secret_key_env: PBS_SECRET, previous_secret_keys: [old]}").finish(1, &env).unwrap();
        assert_eq!(c.secrets.iter().map(|s| s.secret()).collect::<Vec<_>>(), vec!["from-env", "old"]);
        assert_eq!(c.role, Role::ReadWrite);
        for (yaml, needle) in [
            ("{access_key: a}", "exactly one of"),
            ("{access_key: a, secret_key: s, secret_key_env: X}", "exactly one of"),
            ("{access_key: a, secret_key_env: MISSING}", "MISSING is not set"),
            ("{access_key: a, secret_key: s, role: root}", "unknown role"),
            ("{access_key: a, secret_key: s, buckets: ['/x']}", "no bucket"),
            ("{access_key: a, secret_key: s, rate_limit: {bytes_per_second: lots}}", "not a size"),
            ("{secret_key: s}", "access_key is required"),
        ] {
            let e = entry(yaml).finish(3, &env).unwrap_err();
            assert!(e.contains(needle) && !e.contains('\n'), "{yaml}: {e}");
        }
        // The single `client:` joins a `clients:` list; a key configured twice is refused.
        let cfg = |extra: &str| serde_yaml::from_str::<RawConfig>(&format!("{MIN}{extra}")).unwrap().finish();
        let c = cfg("clients: [{access_key: r, secret_key: s, role: read-only}]\n").unwrap();
        assert!(c.clients.get("r").is_some() && c.clients.get("c").is_some());
        assert!(cfg("clients: [{access_key: c, secret_key: s}]\n").unwrap_err().contains("twice"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn backend_profiles_set_defaults_that_single_settings_override() {
        let cfg = |extra: &str| serde_yaml::from_str::<RawConfig>(&MIN.replace("backend: {", &format!("backend: {{{extra}"))).unwrap().finish();
        let c = cfg("profile: b2, ").unwrap();
        assert_eq!(c.conditional_writes, ConditionalMode::Enforce);
        assert!(!c.backend.send_if_none_match);
        assert_eq!(c.backend.verified_writes, filters::verified_write::VerifiedWrites::Off);
        assert_ne!(cfg("profile: garage, ").unwrap().backend.verified_writes, filters::verified_write::VerifiedWrites::Off);
        assert_ne!(cfg("profile: b2, verified_writes: trailer, ").unwrap().backend.verified_writes, filters::verified_write::VerifiedWrites::Off);
        let c = cfg("profile: aws, ").unwrap();
        assert_eq!(c.conditional_writes, ConditionalMode::Backend);
        assert!(c.backend.send_if_none_match);
        let c = cfg("profile: b2, send_if_none_match: true, ").unwrap();
        assert!(c.backend.send_if_none_match);
        let c = cfg("").unwrap();
        assert_eq!(c.conditional_writes, ConditionalMode::Backend);
        assert!(cfg("profile: s3, ").unwrap_err().contains("unknown"));
        // Listing normalisation: on by default, with or without a profile; off alone.
        assert!(cfg("").unwrap().normalize_listings && cfg("profile: gcs, ").unwrap().normalize_listings);
        assert!(!cfg("profile: gcs, normalize_listings: false, ").unwrap().normalize_listings);
        let mut raw = serde_yaml::from_str::<RawConfig>(MIN).unwrap();
        raw.apply_env(|k| (k == "S3CP_BACKEND_NORMALIZE_LISTINGS").then(|| "off".into())).unwrap();
        assert!(!raw.finish().unwrap().normalize_listings);
        // Dropping the header while nobody enforces the condition would overwrite silently.
        let e = serde_yaml::from_str::<RawConfig>(&format!("{}conditional_writes: backend\n", MIN.replace("backend: {", "backend: {profile: b2, "))).unwrap().finish().unwrap_err();
        assert!(e.contains("enforce") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn allowed_buckets_without_the_allowlist_filter_is_refused() {
        let yaml = format!("{MIN}allowed_buckets: [a]\nfilters: [sigv4, crypto, listing, resign]\n");
        let c: RawConfig = serde_yaml::from_str(&yaml).unwrap();
        let e = c.finish().unwrap_err();
        assert!(e.contains("allowed_buckets") && e.contains("allowlist") && !e.contains('\n'), "{e}");
        // Through the environment too.
        let mut c: RawConfig = serde_yaml::from_str(&format!("{MIN}filters: [sigv4, crypto, listing, resign]\n")).unwrap();
        c.apply_env(|k| (k == "S3CP_ALLOWED_BUCKETS").then(|| "a,b".into())).unwrap();
        assert!(c.finish().unwrap_err().contains("allowlist filter is not in filters"));
        // An empty list restricts nothing and is fine; with the filter it is the normal case.
        let c: RawConfig = serde_yaml::from_str(&format!("{MIN}allowed_buckets: []\nfilters: [sigv4, crypto, listing, resign]\n")).unwrap();
        assert!(c.finish().is_ok());
        let c: RawConfig = serde_yaml::from_str(&format!("{MIN}allowed_buckets: [a]\n")).unwrap();
        assert_eq!(c.finish().unwrap().allowed_buckets, vec!["a"]);
    }

    #[test]
    fn env_overrides_file() {
        let mut c: RawConfig = serde_yaml::from_str(MIN).unwrap();
        let env: HashMap<&str, &str> = [("S3CP_ALLOWED_BUCKETS", "a-bkt, b-bkt"), ("S3CP_BACKEND_PATH_STYLE", "true"), ("S3CP_LISTEN_ADDR", "127.0.0.1:1")].into();
        c.apply_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        let c = c.finish().unwrap();
        assert_eq!(c.allowed_buckets, vec!["a-bkt", "b-bkt"]);
        assert!(c.backend.path_style);
        assert_eq!(c.listen_addr, "127.0.0.1:1");
    }

    #[test]
    fn verified_writes_default_on_and_can_be_switched_off() {
        use filters::checksum::ChecksumAlgorithm;
        use filters::verified_write::VerifiedWrites;
        let c: RawConfig = serde_yaml::from_str(MIN).unwrap();
        assert_eq!(c.finish().unwrap().backend.verified_writes, VerifiedWrites::Trailer(ChecksumAlgorithm::Crc32c));
        let yaml = MIN.replace("secret_key: b}", "secret_key: b, verified_writes: trailer, verified_writes_checksum: crc64nvme}");
        let c: RawConfig = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(c.finish().unwrap().backend.verified_writes, VerifiedWrites::Trailer(ChecksumAlgorithm::Crc64Nvme));
        let mut c: RawConfig = serde_yaml::from_str(MIN).unwrap();
        c.apply_env(|k| (k == "S3CP_BACKEND_VERIFIED_WRITES").then(|| "off".into())).unwrap();
        assert_eq!(c.finish().unwrap().backend.verified_writes, VerifiedWrites::Off);
        let c: RawConfig = serde_yaml::from_str(&MIN.replace("secret_key: b}", "secret_key: b, verified_writes: maybe}")).unwrap();
        assert!(c.finish().unwrap_err().contains("backend.verified_writes"));
    }

    #[test]
    fn cipher_setting_and_env() {
        let c: RawConfig = serde_yaml::from_str(MIN).unwrap();
        assert_eq!(c.finish().unwrap().cipher, ChunkCipher::auto(), "auto by default");
        for (v, want) in [("aes-256-gcm", ChunkCipher::Aes256Gcm), ("chacha20-poly1305", ChunkCipher::XChaCha20Poly1305)] {
            let c: RawConfig = serde_yaml::from_str(&format!("{MIN}encryption: {{cipher: {v}}}")).unwrap();
            assert_eq!(c.finish().unwrap().cipher, want);
            // The variable overrides the file.
            let mut c: RawConfig = serde_yaml::from_str(&format!("{MIN}encryption: {{cipher: auto}}")).unwrap();
            c.apply_env(|k| (k == "S3CP_CIPHER").then(|| v.into())).unwrap();
            assert_eq!(c.finish().unwrap().cipher, want);
        }
        let c: RawConfig = serde_yaml::from_str(&format!("{MIN}encryption: {{cipher: aes-128-gcm}}")).unwrap();
        let e = c.finish().unwrap_err();
        assert!(e.contains("encryption.cipher") && e.contains("aes-128-gcm"), "{e}");
        // auto follows the CPU.
        assert_eq!(cipher_setting("auto", || ChunkCipher::Aes256Gcm), Ok(ChunkCipher::Aes256Gcm));
        assert_eq!(cipher_setting("auto", || ChunkCipher::XChaCha20Poly1305), Ok(ChunkCipher::XChaCha20Poly1305));
    }

    #[test]
    fn former_chunk_sizes_are_checked() {
        let c: RawConfig = serde_yaml::from_str(&format!("{MIN}encryption: {{chunk_size: 16384, former_chunk_sizes: [65536, 16384, 65536]}}")).unwrap();
        let c = c.finish().unwrap();
        assert_eq!((c.chunk_size, c.former_chunk_sizes), (16384, vec![65536]));
        let c: RawConfig = serde_yaml::from_str(&format!("{MIN}encryption: {{former_chunk_sizes: [1000]}}")).unwrap();
        assert!(c.finish().unwrap_err().contains("encryption.former_chunk_sizes"));
        let mut c: RawConfig = serde_yaml::from_str(MIN).unwrap();
        c.apply_env(|k| (k == "S3CP_FORMER_CHUNK_SIZES").then(|| "65536, 131072".into())).unwrap();
        assert_eq!(c.finish().unwrap().former_chunk_sizes, vec![131072]);
    }

    #[test]
    fn passthrough_needs_a_cut_off_or_prefixes() {
        let parse = |extra: &str| serde_yaml::from_str::<RawConfig>(&format!("{MIN}{extra}")).unwrap().finish();
        let e = parse("unencrypted_objects: passthrough").unwrap_err();
        assert!(e.contains("unencrypted_before") && !e.contains('\n'), "{e}");
        assert!(parse("unencrypted_objects: passthrough\nunencrypted_before: soon").unwrap_err().contains("RFC 3339"));
        assert!(parse("unencrypted_before: '2026-01-01T00:00:00Z'").unwrap_err().contains("only with unencrypted_objects: passthrough"));
        let c = parse("unencrypted_objects: passthrough\nunencrypted_before: '2026-01-01T00:00:00Z'\nunencrypted_prefixes: [old/]").unwrap();
        let legacy = c.unencrypted_objects.legacy().unwrap();
        assert!(legacy.before.is_some() && legacy.prefixes == ["old/"]);
        assert_eq!(parse("").unwrap().unencrypted_objects, UnencryptedPolicy::Refuse);
        let mut raw: RawConfig = serde_yaml::from_str(MIN).unwrap();
        let env: HashMap<&str, &str> = [("S3CP_UNENCRYPTED_OBJECTS", "passthrough"), ("S3CP_UNENCRYPTED_PREFIXES", "a/,b/")].into();
        raw.apply_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(raw.finish().unwrap().unencrypted_objects.legacy().unwrap().prefixes, ["a/", "b/"]);
    }

    #[test]
    fn errors_are_one_clear_line() {
        let bad = serde_yaml::from_str::<RawConfig>("listen_adr: x").unwrap_err().to_string();
        assert!(bad.contains("unknown field `listen_adr`"), "{bad}");
        let mut c: RawConfig = serde_yaml::from_str(MIN).unwrap();
        c.filters = Some(vec!["allowlist".into(), "sigv4".into()]);
        assert!(c.finish().unwrap_err().contains("sigv4 must come first"));
        let c: RawConfig = serde_yaml::from_str("client: {access_key: c, secret_key: d}").unwrap();
        assert!(c.finish().unwrap_err().contains("backend.endpoint"));
        let mut c: RawConfig = serde_yaml::from_str(MIN).unwrap();
        assert!(c.apply_env(|k| (k == "S3CP_BACKEND_PATH_STYLE").then(|| "maybe".into())).unwrap_err().contains("not a boolean"));
    }
}
