//! The `key_source:` section of memkey.yaml and its `MEMKEY_*` overrides.
//!
//! ```yaml
//! key_source:
//!   kind: pkcs11                 # delivery (default) | pkcs11 | aws-kms | kmip   MEMKEY_KEY_SOURCE
//!   sealed_key_files: [/etc/s3-crypt-proxy/master-1.sealed.json]            MEMKEY_SEALED_KEY_FILES (comma-separated)
//!   retry_initial: 1s            # first back-off while the HSM/KMS is unreachable
//!   retry_max: 60s               # back-off cap (each wait is jittered to 50-100 %)
//!   pkcs11:
//!     module: /usr/lib/softhsm/libsofthsm2.so                                MEMKEY_PKCS11_MODULE
//!     token_label: s3cp                                                      MEMKEY_PKCS11_TOKEN_LABEL
//!     pin_file: /etc/s3-crypt-proxy/hsm.pin    # or MEMKEY_PKCS11_PIN        MEMKEY_PKCS11_PIN_FILE
//!   aws_kms:
//!     region: eu-west-1                                                      MEMKEY_KMS_REGION
//!     endpoint: https://kms.eu-west-1.amazonaws.com   # default from region  MEMKEY_KMS_ENDPOINT
//!     ca_file: /etc/ssl/certs/ca-certificates.crt     # optional             MEMKEY_KMS_CA_FILE
//!     # credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN)
//!   kmip:
//!     host: kmip.example.net                                                 MEMKEY_KMIP_HOST
//!     port: 5696                                                             MEMKEY_KMIP_PORT
//!     ca_file: /etc/s3-crypt-proxy/kmip-ca.crt                               MEMKEY_KMIP_CA_FILE
//!     client_cert: /etc/s3-crypt-proxy/kmip-client.crt                       MEMKEY_KMIP_CLIENT_CERT
//!     client_key: /etc/s3-crypt-proxy/kmip-client.key                       MEMKEY_KMIP_CLIENT_KEY
//! ```
//!
//! The PIN and the AWS secret are never accepted on a command line.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::config::ConfigError;
use crate::util::parse_duration;

/// Which source loads the master key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceKind {
    #[default]
    Delivery,
    Pkcs11,
    AwsKms,
    Kmip,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Delivery => "delivery",
            SourceKind::Pkcs11 => "pkcs11",
            SourceKind::AwsKms => "aws-kms",
            SourceKind::Kmip => "kmip",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "delivery" => Some(SourceKind::Delivery),
            "pkcs11" => Some(SourceKind::Pkcs11),
            "aws-kms" | "kms" => Some(SourceKind::AwsKms),
            "kmip" => Some(SourceKind::Kmip),
            _ => None,
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the HSM user PIN comes from.
#[derive(Clone)]
pub enum Pin {
    /// Read at every unseal (so a corrected file plus SIGHUP is enough).
    File(PathBuf),
    /// From `MEMKEY_PKCS11_PIN`.
    Value(Zeroizing<String>),
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pin::File(p) => write!(f, "File({})", p.display()),
            Pin::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    pub module: PathBuf,
    pub token_label: String,
    pub pin: Pin,
}

#[derive(Clone)]
pub struct AwsKmsConfig {
    pub region: String,
    pub endpoint: String,
    pub ca_file: Option<PathBuf>,
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
    pub session_token: Option<Zeroizing<String>>,
    pub timeout: Duration,
}

impl fmt::Debug for AwsKmsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsConfig")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("ca_file", &self.ca_file)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// The validated `key_source:` section.
#[derive(Debug, Clone)]
pub struct KeySourceConfig {
    pub kind: SourceKind,
    /// Unsealed in order; the key of the last file becomes the current key.
    pub sealed_key_files: Vec<PathBuf>,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub pkcs11: Option<Pkcs11Config>,
    pub aws_kms: Option<AwsKmsConfig>,
    pub kmip: Option<super::kmip::KmipConfig>,
}

impl Default for KeySourceConfig {
    fn default() -> Self {
        Self {
            kind: SourceKind::Delivery,
            sealed_key_files: Vec::new(),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            pkcs11: None,
            aws_kms: None,
            kmip: None,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKeySource {
    kind: Option<String>,
    sealed_key_files: Option<Vec<String>>,
    retry_initial: Option<String>,
    retry_max: Option<String>,
    #[serde(default)]
    pkcs11: RawPkcs11,
    #[serde(default)]
    aws_kms: RawAwsKms,
    #[serde(default)]
    kmip: RawKmip,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKmip {
    host: Option<String>,
    port: Option<u16>,
    server_name: Option<String>,
    ca_file: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    timeout: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPkcs11 {
    module: Option<String>,
    token_label: Option<String>,
    pin_file: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAwsKms {
    region: Option<String>,
    endpoint: Option<String>,
    ca_file: Option<String>,
    timeout: Option<String>,
}

fn err(m: impl Into<String>) -> ConfigError {
    ConfigError(m.into())
}

fn set(slot: &mut Option<String>, env: &impl Fn(&str) -> Option<String>, name: &str) {
    if let Some(v) = env(name) {
        *slot = Some(v);
    }
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

impl RawKeySource {
    pub(crate) fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) {
        set(&mut self.kind, env, "MEMKEY_KEY_SOURCE");
        if let Some(v) = env("MEMKEY_SEALED_KEY_FILES") {
            self.sealed_key_files = Some(v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect());
        }
        set(&mut self.pkcs11.module, env, "MEMKEY_PKCS11_MODULE");
        set(&mut self.pkcs11.token_label, env, "MEMKEY_PKCS11_TOKEN_LABEL");
        set(&mut self.pkcs11.pin_file, env, "MEMKEY_PKCS11_PIN_FILE");
        set(&mut self.aws_kms.region, env, "MEMKEY_KMS_REGION");
        set(&mut self.aws_kms.endpoint, env, "MEMKEY_KMS_ENDPOINT");
        set(&mut self.aws_kms.ca_file, env, "MEMKEY_KMS_CA_FILE");
        set(&mut self.kmip.host, env, "MEMKEY_KMIP_HOST");
        if let Some(p) = env("MEMKEY_KMIP_PORT").and_then(|p| p.trim().parse().ok()) {
            self.kmip.port = Some(p);
        }
        set(&mut self.kmip.ca_file, env, "MEMKEY_KMIP_CA_FILE");
        set(&mut self.kmip.client_cert, env, "MEMKEY_KMIP_CLIENT_CERT");
        set(&mut self.kmip.client_key, env, "MEMKEY_KMIP_CLIENT_KEY");
    }

    pub(crate) fn validate(self, env: &impl Fn(&str) -> Option<String>) -> Result<KeySourceConfig, ConfigError> {
        let mut cfg = KeySourceConfig::default();
        if let Some(k) = nonempty(self.kind) {
            cfg.kind = SourceKind::parse(&k)
                .ok_or_else(|| err(format!("key_source.kind {k:?} is not one of delivery, pkcs11, aws-kms, kmip")))?;
        }
        let dur = |v: Option<String>, name: &str, default: Duration| -> Result<Duration, ConfigError> {
            match nonempty(v) {
                Some(s) => parse_duration(&s).map_err(|e| err(format!("key_source.{name}: {e}"))),
                None => Ok(default),
            }
        };
        cfg.retry_initial = dur(self.retry_initial, "retry_initial", cfg.retry_initial)?;
        cfg.retry_max = dur(self.retry_max, "retry_max", cfg.retry_max)?;
        if cfg.retry_initial < Duration::from_millis(10) || cfg.retry_max < cfg.retry_initial || cfg.retry_max > Duration::from_secs(3600) {
            return Err(err("key_source: need 10ms <= retry_initial <= retry_max <= 1h"));
        }
        cfg.sealed_key_files = self.sealed_key_files.unwrap_or_default().into_iter().map(PathBuf::from).collect();
        match cfg.kind {
            SourceKind::Delivery => {
                if !cfg.sealed_key_files.is_empty() {
                    return Err(err("key_source.sealed_key_files is set but key_source.kind is delivery; set kind to the source that sealed them"));
                }
                return Ok(cfg);
            }
            _ => {}
        }
        if cfg.sealed_key_files.is_empty() {
            return Err(err(format!("key_source.kind is {} but key_source.sealed_key_files (MEMKEY_SEALED_KEY_FILES) is empty; create one with `memkey-admin key seal`", cfg.kind)));
        }
        match cfg.kind {
            SourceKind::Pkcs11 => {
                let p = self.pkcs11;
                let module = nonempty(p.module).ok_or_else(|| err("key_source.pkcs11.module (MEMKEY_PKCS11_MODULE) is not set"))?;
                let token_label = nonempty(p.token_label)
                    .ok_or_else(|| err("key_source.pkcs11.token_label (MEMKEY_PKCS11_TOKEN_LABEL) is not set"))?;
                let pin = match (nonempty(p.pin_file), env("MEMKEY_PKCS11_PIN")) {
                    (_, Some(v)) if !v.is_empty() => Pin::Value(Zeroizing::new(v)),
                    (Some(f), _) => Pin::File(PathBuf::from(f)),
                    _ => return Err(err("key_source.pkcs11.pin_file (MEMKEY_PKCS11_PIN_FILE) or MEMKEY_PKCS11_PIN is needed")),
                };
                cfg.pkcs11 = Some(Pkcs11Config { module: PathBuf::from(module), token_label, pin });
            }
            SourceKind::AwsKms => {
                let k = self.aws_kms;
                let region = nonempty(k.region)
                    .or_else(|| nonempty(env("AWS_REGION")))
                    .ok_or_else(|| err("key_source.aws_kms.region (MEMKEY_KMS_REGION or AWS_REGION) is not set"))?;
                let endpoint = nonempty(k.endpoint).unwrap_or_else(|| format!("https://kms.{region}.amazonaws.com"));
                if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                    return Err(err(format!("key_source.aws_kms.endpoint {endpoint:?} must start with https:// (http:// for a lab)")));
                }
                let access_key_id = nonempty(env("AWS_ACCESS_KEY_ID"))
                    .ok_or_else(|| err("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set for key_source.kind aws-kms"))?;
                let secret = env("AWS_SECRET_ACCESS_KEY")
                    .filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| err("AWS_SECRET_ACCESS_KEY must be set for key_source.kind aws-kms"))?;
                cfg.aws_kms = Some(AwsKmsConfig {
                    region,
                    endpoint: endpoint.trim_end_matches('/').to_owned(),
                    ca_file: nonempty(k.ca_file).map(PathBuf::from),
                    access_key_id,
                    secret_access_key: Zeroizing::new(secret.trim().to_owned()),
                    session_token: nonempty(env("AWS_SESSION_TOKEN")).map(Zeroizing::new),
                    timeout: dur(k.timeout, "aws_kms.timeout", Duration::from_secs(10))?,
                });
            }
            SourceKind::Kmip => {
                let k = self.kmip;
                let need = |v: Option<String>, name: &str, var: &str| {
                    nonempty(v).ok_or_else(|| err(format!("key_source.kmip.{name} ({var}) is not set")))
                };
                let host = need(k.host, "host", "MEMKEY_KMIP_HOST")?;
                cfg.kmip = Some(super::kmip::KmipConfig {
                    server_name: nonempty(k.server_name).unwrap_or_else(|| host.clone()),
                    host,
                    port: k.port.unwrap_or(5696),
                    ca_file: PathBuf::from(need(k.ca_file, "ca_file", "MEMKEY_KMIP_CA_FILE")?),
                    client_cert: PathBuf::from(need(k.client_cert, "client_cert", "MEMKEY_KMIP_CLIENT_CERT")?),
                    client_key: PathBuf::from(need(k.client_key, "client_key", "MEMKEY_KMIP_CLIENT_KEY")?),
                    timeout: dur(k.timeout, "kmip.timeout", Duration::from_secs(10))?,
                });
            }
            SourceKind::Delivery => unreachable!("handled above"),
        }
        Ok(cfg)
    }
}
