//! The admin's local state: `config.yaml` (pinned servers), `admin.key` (Ed25519 identity) and
//! `master.key` (the current master key file), all in one directory of mode 0700.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use s3cp_format::keys::MasterKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::Fail;

pub const CONFIG_FILE: &str = "config.yaml";
pub const IDENTITY_FILE: &str = "admin.key";
pub const MASTER_KEY_FILE: &str = "master.key";
const IDENTITY_HEADER: &str = "memkey-admin-identity v1";

/// One pinned memkey-server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    pub url: String,
    /// Hex SHA-256 of the server's Ed25519 identity key.
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_tls: bool,
}

/// `config.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default)]
    pub servers: Vec<ServerEntry>,
}

/// Trailing slashes removed so `https://h:7070/` and `https://h:7070` are the same server.
pub fn normalize_url(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

impl AdminConfig {
    pub fn find(&self, url: &str) -> Option<&ServerEntry> {
        let u = normalize_url(url);
        self.servers.iter().find(|s| normalize_url(&s.url) == u)
    }

    /// Adds or replaces the entry for `entry.url`.
    pub fn upsert(&mut self, entry: ServerEntry) {
        let u = normalize_url(&entry.url);
        match self.servers.iter_mut().find(|s| normalize_url(&s.url) == u) {
            Some(s) => *s = entry,
            None => self.servers.push(entry),
        }
    }
}

/// The configuration directory: `--config-dir`, `$MEMKEY_ADMIN_DIR`, `$XDG_CONFIG_HOME/memkey-admin`
/// or `~/.config/memkey-admin`.
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    pub fn locate(explicit: Option<PathBuf>) -> Result<Self, Fail> {
        if let Some(d) = explicit {
            return Ok(Self { dir: d });
        }
        if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
            return Ok(Self {
                dir: PathBuf::from(x).join("memkey-admin"),
            });
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => Ok(Self {
                dir: PathBuf::from(h).join(".config").join("memkey-admin"),
            }),
            None => Err(Fail::usage(
                "cannot find a home directory; use --config-dir DIR or MEMKEY_ADMIN_DIR",
            )),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates the directory with mode 0700 if needed.
    pub fn ensure_dir(&self) -> Result<(), Fail> {
        if !self.dir.exists() {
            fs::create_dir_all(&self.dir)
                .map_err(|e| Fail::error(format!("cannot create {}: {e}", self.dir.display())))?;
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| Fail::error(format!("cannot chmod {}: {e}", self.dir.display())))?;
        }
        Ok(())
    }

    pub fn load_config(&self) -> Result<AdminConfig, Fail> {
        let p = self.path(CONFIG_FILE);
        match fs::read_to_string(&p) {
            Ok(t) if t.trim().is_empty() => Ok(AdminConfig::default()),
            Ok(t) => serde_yaml::from_str(&t)
                .map_err(|e| Fail::usage(format!("{}: {}", p.display(), one_line(&e.to_string())))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AdminConfig::default()),
            Err(e) => Err(Fail::error(format!("cannot read {}: {e}", p.display()))),
        }
    }

    pub fn save_config(&self, cfg: &AdminConfig) -> Result<(), Fail> {
        self.ensure_dir()?;
        let mut text =
            String::from("# memkey-admin configuration (written by `memkey-admin init`).\n");
        text.push_str(&serde_yaml::to_string(cfg).map_err(|e| Fail::error(e.to_string()))?);
        write_atomic(&self.path(CONFIG_FILE), text.as_bytes(), 0o600)
    }

    /// Loads the admin identity, if one exists.
    pub fn load_identity(&self) -> Result<Option<SigningKey>, Fail> {
        let p = self.path(IDENTITY_FILE);
        let text = match fs::read_to_string(&p) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Fail::error(format!("cannot read {}: {e}", p.display()))),
        };
        warn_if_exposed(&p);
        let seed_hex = text
            .trim()
            .strip_prefix(IDENTITY_HEADER)
            .map(str::trim)
            .ok_or_else(|| {
                Fail::usage(format!(
                    "{} is not a memkey-admin identity file",
                    p.display()
                ))
            })?;
        keyd::protocol::signing_key_from_hex(seed_hex)
            .map(Some)
            .ok_or_else(|| Fail::usage(format!("{} holds a malformed identity", p.display())))
    }

    /// The identity, or an error telling the user to run `init`.
    pub fn identity(&self) -> Result<SigningKey, Fail> {
        self.load_identity()?.ok_or_else(|| {
            Fail::usage(format!(
                "no admin identity in {}; run `memkey-admin init --server URL --fingerprint HEX` first",
                self.dir.display()
            ))
        })
    }

    /// Writes a fresh identity (refuses to overwrite).
    pub fn create_identity(&self) -> Result<SigningKey, Fail> {
        self.ensure_dir()?;
        let key = keyd::protocol::generate_identity();
        let text = Zeroizing::new(format!(
            "{IDENTITY_HEADER} {}\n",
            hex::encode(key.to_bytes())
        ));
        write_new(&self.path(IDENTITY_FILE), text.as_bytes())?;
        Ok(key)
    }
}

/// Reads and validates a master key file.
pub fn read_master_key(path: &Path) -> Result<MasterKey, Fail> {
    let text = match fs::read_to_string(path) {
        Ok(t) => Zeroizing::new(t),
        Err(e) => {
            return Err(Fail::usage(format!(
                "cannot read key file {}: {e}",
                path.display()
            )))
        }
    };
    warn_if_exposed(path);
    MasterKey::from_file_str(&text).map_err(|e| Fail::usage(format!("{}: {e}", path.display())))
}

/// Warns when a secret file is readable by group or others.
pub fn warn_if_exposed(path: &Path) {
    if let Ok(m) = fs::metadata(path) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: {} has mode {mode:04o}; it holds a secret, run: chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
}

/// Creates `path` with mode 0600; fails if it exists.
pub fn write_new(path: &Path, data: &[u8]) -> Result<(), Fail> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Fail::usage(format!(
                    "{} already exists; refusing to overwrite it",
                    path.display()
                ))
            } else {
                Fail::error(format!("cannot create {}: {e}", path.display()))
            }
        })?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| Fail::error(format!("cannot write {}: {e}", path.display())))
}

/// Writes `path` through a temporary file in the same directory and renames it into place.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), Fail> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| Fail::error(format!("cannot create {}: {e}", tmp.display())))?;
    let r = f
        .write_all(data)
        .and_then(|_| f.sync_all())
        .and_then(|_| fs::rename(&tmp, path));
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(Fail::error(format!("cannot write {}: {e}", path.display())));
    }
    Ok(())
}

pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
