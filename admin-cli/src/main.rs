//! memkey-admin: the administrator's tool for memkey-server.

mod object;
mod shares;
mod seal;
mod store;
mod transport;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ed25519_dalek::SigningKey;
use keyd::protocol::{self, ChallengeMsg, DeliveryAck, ProtocolError};
use keyd::service::StatusInfo;
use keyd::util::human_duration;
use s3cp_format::keys::{KeyId, MasterKey};

use store::{
    normalize_url, read_master_key, write_atomic, write_new, AdminConfig, ServerEntry, Store,
    MASTER_KEY_FILE,
};
use transport::{Answer, Client, Target};

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_FINGERPRINT: u8 = 3;
pub const EXIT_UNREACHABLE: u8 = 4;
pub const EXIT_LOCKED_OUT: u8 = 5;
pub const EXIT_REJECTED: u8 = 6;
pub const EXIT_TAMPERED: u8 = 7;

/// A failure with its exit status and a one-line message.
#[derive(Debug)]
pub struct Fail {
    pub code: u8,
    pub message: String,
}

impl Fail {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(EXIT_USAGE, message)
    }
    pub fn error(message: impl Into<String>) -> Self {
        Self::new(EXIT_ERROR, message)
    }
}

/// Administrator tool for memkey-server (s3-crypt-proxy): pins servers by fingerprint, holds
/// the admin's Ed25519 identity, generates/imports master keys and delivers them over the
/// authenticated, forward-secret memkey protocol (docs/key-protocol.md).
///
/// First use:
///   memkey-admin init --server https://keyhost:7070 --fingerprint <64 hex from the server log>
///   (add the printed admin public key to `admins:` in memkey.yaml, restart memkey-server)
///   memkey-admin key generate            # or: memkey-admin key import --file master.key
///   memkey-admin key send
///
/// After every memkey-server restart:  memkey-admin status && memkey-admin key send
///
/// Exit status: 0 success, 1 error, 2 usage or local configuration error,
/// 3 server identity mismatch (fingerprint / signature / acknowledgement),
/// 4 server unreachable (network or TLS), 5 locked out, 6 rejected by the server
/// (e.g. admin key not in the server's admins list), 7 object failed authentication
/// (`object decrypt`: tampered, truncated, wrong name or wrong key; nothing was written).
#[derive(Parser, Debug)]
#[command(
    name = "memkey-admin",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
struct Cli {
    /// Directory holding config.yaml, admin.key and master.key (created with mode 0700).
    /// Default: $XDG_CONFIG_HOME/memkey-admin or ~/.config/memkey-admin.
    /// Example: --config-dir /root/.memkey-admin
    #[arg(
        long,
        global = true,
        env = "MEMKEY_ADMIN_DIR",
        value_name = "DIR",
        verbatim_doc_comment
    )]
    config_dir: Option<PathBuf>,

    /// Network timeout per server, in seconds.
    /// Example: --timeout 30
    #[arg(
        long,
        global = true,
        default_value_t = 15,
        value_name = "SECS",
        verbatim_doc_comment
    )]
    timeout: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pin a memkey-server by fingerprint and create the admin identity (kept if it exists).
    ///
    /// Run it again to add more servers or to update a fingerprint after a server identity change.
    /// Example: memkey-admin init --server https://keyhost:7070 --fingerprint 5647…708c --cacert memkey.crt
    #[command(verbatim_doc_comment)]
    Init(InitArgs),
    /// Master key files: generate, import.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Show each server's state: key loaded?, key ids, current id, uptime; checks the fingerprint.
    ///
    /// Example: memkey-admin status
    /// Example: memkey-admin status --server https://keyhost2:7070#<fingerprint>
    #[command(verbatim_doc_comment)]
    Status(ServerSelection),
    /// Disaster recovery without the proxy: decrypt or encrypt raw backend objects.
    #[command(subcommand)]
    Object(ObjectCommand),
    /// PKCS#11 HSM set-up for memkey-server's pkcs11 key source.
    #[command(subcommand)]
    Hsm(HsmCommand),
    /// Print this workstation's admin public key (for `admins:` in memkey.yaml).
    ///
    /// Example: memkey-admin identity
    #[command(verbatim_doc_comment)]
    Identity,
}

#[derive(Args, Debug)]
struct InitArgs {
    /// memkey-server URL; `URL#FINGERPRINT` is accepted too.
    /// Example: --server https://keyhost.example:7070
    #[arg(long, value_name = "URL", verbatim_doc_comment)]
    server: String,
    /// The SERVER FINGERPRINT line of the server's log (64 hex), verified out of band.
    /// Example: --fingerprint 56475aa75463474c0285df5dbf2bcab73da651358839e9b77481b2eab107708c
    #[arg(long, value_name = "HEX", verbatim_doc_comment)]
    fingerprint: Option<String>,
    /// PEM file with the server's TLS certificate or its CA, stored for later commands.
    /// Example: --cacert /etc/s3-crypt-proxy/memkey.crt
    #[arg(long, value_name = "FILE", verbatim_doc_comment)]
    cacert: Option<PathBuf>,
    /// Do not verify the server's TLS certificate (self-signed lab certificates). The key is
    /// still sealed to the pinned fingerprint, so it cannot be read or replaced in transit.
    /// Example: --insecure-tls
    #[arg(long, verbatim_doc_comment)]
    insecure_tls: bool,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Generate a new random master key file (mode 0600; never overwrites).
    ///
    /// Without --out it becomes this workstation's current key (<config-dir>/master.key).
    /// Keep an offline backup: objects encrypted with a lost key cannot be recovered.
    /// Example: memkey-admin key generate --id 2 --out /media/backup/master-2.key
    #[command(verbatim_doc_comment)]
    Generate {
        /// Key id stored with the key and in every object it encrypts.
        /// Example: --id 2
        #[arg(long, default_value_t = 1, value_name = "N", verbatim_doc_comment)]
        id: KeyId,
        /// Where to write the key file.
        /// Example: --out master-2.key
        #[arg(long, value_name = "FILE", verbatim_doc_comment)]
        out: Option<PathBuf>,
    },
    /// Validate a master key file and make it this workstation's current key.
    ///
    /// Example: memkey-admin key import --file /media/backup/master.key
    #[command(verbatim_doc_comment)]
    Import {
        /// Key file in the format `s3cp-master-key v1 <id> <64 hex>`.
        /// Example: --file master.key
        #[arg(long, value_name = "FILE", verbatim_doc_comment)]
        file: PathBuf,
        /// Replace an existing, different current key file.
        /// Example: --force
        #[arg(long, verbatim_doc_comment)]
        force: bool,
    },
    /// Deliver the master key to one or more memkey-servers.
    ///
    /// Without --server, every server pinned by `init` receives the key.
    /// Example: memkey-admin key send
    /// Example: memkey-admin key send --server https://a:7070#<fp-a> --server https://b:7070#<fp-b>
    /// Example: memkey-admin key send --key-file master-2.key --no-make-current
    #[command(verbatim_doc_comment)]
    Send {
        #[command(flatten)]
        servers: ServerSelection,
        /// Key file to send (default: <config-dir>/master.key).
        /// Example: --key-file master-2.key
        #[arg(long, value_name = "FILE", verbatim_doc_comment)]
        key_file: Option<PathBuf>,
        /// Load the key without making it the current key (new objects keep using the old one).
        /// Example: --no-make-current
        #[arg(long, verbatim_doc_comment)]
        no_make_current: bool,
    },
    /// Split a master key into N share files, any M of which rebuild it (m-of-n delivery).
    ///
    /// Give each administrator one share file; fewer than M shares reveal nothing about the key.
    /// memkey-server with `shares: {threshold: M}` loads the key once M distinct admins have sent
    /// their shares with `key send-share`. Keep the original key file offline (backup).
    /// Example: memkey-admin key split --shares 3 --threshold 2 --in master.key --out-dir shares/
    /// Example: ... --admin <alice public key> --admin <bob public key> --admin <carol public key>
    #[command(verbatim_doc_comment)]
    Split {
        /// N: how many shares to write (2..=255).
        /// Example: --shares 3
        #[arg(long, value_name = "N", verbatim_doc_comment)]
        shares: u8,
        /// M: how many distinct shares rebuild the key (2..=N); must equal the server's shares.threshold.
        /// Example: --threshold 2
        #[arg(long, value_name = "M", verbatim_doc_comment)]
        threshold: u8,
        /// Master key file to split (default: <config-dir>/master.key).
        /// Example: --in master.key
        #[arg(long = "in", value_name = "FILE", verbatim_doc_comment)]
        input: Option<PathBuf>,
        /// Directory for the share files (created with mode 0700; files are 0600, never overwritten).
        /// Example: --out-dir shares/
        #[arg(long, value_name = "DIR", verbatim_doc_comment)]
        out_dir: PathBuf,
        /// Label share i for admin i (public key from `memkey-admin identity`); repeat N times.
        /// Example: --admin 29acbae1…6dd7
        #[arg(long = "admin", value_name = "HEX", verbatim_doc_comment)]
        admins: Vec<String>,
    },
    /// Deliver one m-of-n share (from `key split`) to memkey-servers, over the same protocol as `key send`.
    ///
    /// The server counts one share per distinct admin identity and loads the key when
    /// shares.threshold admins have delivered within the window.
    /// Example: memkey-admin key send-share --share share-2-of-3.key
    #[command(verbatim_doc_comment)]
    SendShare {
        #[command(flatten)]
        servers: ServerSelection,
        /// Share file written by `key split`.
        /// Example: --share share-2-of-3.key
        #[arg(long, value_name = "FILE", verbatim_doc_comment)]
        share: PathBuf,
        /// Load the rebuilt key without making it the current key (the first share of a round decides).
        /// Example: --no-make-current
        #[arg(long, verbatim_doc_comment)]
        no_make_current: bool,
    },
    /// Check that a key file (or a share) is the key of a bucket's objects, before sending it.
    ///
    /// Compares the key id and key-check value (never the key) with the objects' headers:
    /// through the proxy's admin API (--proxy-admin URL, bearer token from --token or
    /// S3CP_ADMIN_TOKEN), or offline on a raw object file (--object FILE, as fetched from the backend).
    /// Exit status 0 on a match, 6 on a mismatch or when no object uses the key id.
    /// Example: memkey-admin key verify --bucket backups --proxy-admin http://127.0.0.1:9090 --token T
    /// Example: memkey-admin key verify --bucket backups --key-file old.key --object raw-object.bin
    #[command(verbatim_doc_comment)]
    Verify {
        /// Bucket whose objects to compare with.
        /// Example: --bucket backups
        #[arg(long, value_name = "BUCKET", verbatim_doc_comment)]
        bucket: String,
        /// Key file to check (default: <config-dir>/master.key).
        /// Example: --key-file master-2.key
        #[arg(
            long,
            value_name = "FILE",
            verbatim_doc_comment,
            conflicts_with = "share"
        )]
        key_file: Option<PathBuf>,
        /// Check a share file instead of a key file (its key id and key-check value).
        /// Example: --share share-1-of-3.key
        #[arg(long, value_name = "FILE", verbatim_doc_comment)]
        share: Option<PathBuf>,
        /// The proxy's admin listener.
        /// Example: --proxy-admin http://127.0.0.1:9090
        #[arg(
            long,
            value_name = "URL",
            verbatim_doc_comment,
            required_unless_present = "object"
        )]
        proxy_admin: Option<String>,
        /// Admin API bearer token (admin.token of the proxy).
        /// Example: --token "$S3CP_ADMIN_TOKEN"
        #[arg(
            long,
            value_name = "TOKEN",
            env = "S3CP_ADMIN_TOKEN",
            hide_env_values = true,
            verbatim_doc_comment
        )]
        token: Option<String>,
        /// Only objects under this prefix (admin API).
        /// Example: --prefix pbs/
        #[arg(long, value_name = "PREFIX", default_value = "", verbatim_doc_comment)]
        prefix: String,
        /// How many objects to examine (admin API, 1..=100).
        /// Example: --limit 20
        #[arg(long, value_name = "N", default_value_t = 5, verbatim_doc_comment)]
        limit: usize,
        /// Offline: a raw object file as stored in the backend.
        /// Example: --object raw-object.bin
        #[arg(
            long,
            value_name = "FILE",
            verbatim_doc_comment,
            conflicts_with = "proxy_admin"
        )]
        object: Option<PathBuf>,
    },
    /// Seal a master key file for memkey-server's pkcs11, aws-kms or kmip key source.
    ///
    /// The sealed key file is safe on disk and in backups: unsealing it needs the HSM and its
    /// PIN, or KMS credentials allowed to decrypt with the KMS key. Give --in an existing
    /// sealed key file (same source) to re-seal it under another HSM key or KMS key.
    /// Example: MEMKEY_PKCS11_PIN=1234 memkey-admin key seal --source pkcs11 --module /usr/lib/softhsm/libsofthsm2.so --token-label s3cp --key-label s3cp-wrap --in master.key --out master-1.sealed.json
    /// Example: memkey-admin key seal --source aws-kms --region eu-west-1 --kms-key-id alias/s3cp --in master.key --out master-1.sealed.json
    /// Example: memkey-admin key seal --source kmip --kmip-server kmip:5696 --kmip-ca-file ca.crt --kmip-client-cert c.crt --kmip-client-key c.key --kmip-uid 1 --in master.key --out master-1.sealed.json
    #[command(verbatim_doc_comment)]
    Seal(seal::SealArgs),
}

#[derive(Subcommand, Debug)]
enum HsmCommand {
    /// Create the non-extractable AES-256 wrapping key on a token (for labs and SoftHSM;
    /// production HSMs usually have their own tools for this).
    ///
    /// Example: MEMKEY_PKCS11_PIN=1234 memkey-admin hsm init-key --module /usr/lib/softhsm/libsofthsm2.so --token-label s3cp --key-label s3cp-wrap
    #[command(verbatim_doc_comment)]
    InitKey(seal::InitKeyArgs),
}

#[derive(Subcommand, Debug)]
enum ObjectCommand {
    /// Decrypt a raw object as stored in the backend (read from stdin or --in).
    ///
    /// The plaintext is released only after the whole object authenticated: on any tampering,
    /// truncation, wrong bucket/key or wrong master key the exit status is 7 and nothing is
    /// written (output is staged in a private temporary file first).
    /// Example: aws s3 cp s3://backup/vm-100.img - | memkey-admin object decrypt --key-file master.key --bucket backup --key vm-100.img > vm-100.img
    /// Example: memkey-admin object decrypt --bucket backup --key a/b.bin --in raw.bin --out b.bin --parts 3
    #[command(verbatim_doc_comment)]
    Decrypt {
        /// Master key file(s); repeat for objects written under different key ids
        /// (default: <config-dir>/master.key).
        /// Example: --key-file master-1.key --key-file master-2.key
        #[arg(long = "key-file", value_name = "FILE", verbatim_doc_comment)]
        key_files: Vec<PathBuf>,
        /// Bucket the object is stored in (it is bound into the encryption).
        /// Example: --bucket pbs-backup
        #[arg(long, value_name = "BUCKET", verbatim_doc_comment)]
        bucket: String,
        /// Object key (name) in the bucket, exactly as stored.
        /// Example: --key .chunks/ab12/ab12cd…
        #[arg(long, value_name = "KEY", verbatim_doc_comment)]
        key: String,
        /// Number of multipart parts (the N of an ETag ending in -N); detects dropped trailing parts.
        /// Example: --parts 3
        #[arg(long, value_name = "N", verbatim_doc_comment)]
        parts: Option<u32>,
        /// The object's x-amz-meta-s3cp header value: verified and shown on stderr.
        /// Example: --meta AQABAAAAAAEo…
        #[arg(long, value_name = "VALUE", verbatim_doc_comment)]
        meta: Option<String>,
        /// Read the raw object from FILE instead of stdin.
        /// Example: --in raw.bin
        #[arg(long = "in", value_name = "FILE", verbatim_doc_comment)]
        input: Option<PathBuf>,
        /// Write the plaintext to FILE (created with mode 0600, never overwritten) instead of stdout.
        /// Example: --out plain.bin
        #[arg(long, value_name = "FILE", verbatim_doc_comment)]
        out: Option<PathBuf>,
    },
    /// Encrypt a file into the stored object format (single part), for re-uploading to the
    /// backend directly; prints the x-amz-meta-s3cp header value to upload with it.
    ///
    /// Example: memkey-admin object encrypt --bucket backup --key docs/a.pdf --in a.pdf --out a.pdf.s3cp
    #[command(verbatim_doc_comment)]
    Encrypt {
        /// Master key file (default: <config-dir>/master.key).
        /// Example: --key-file master-2.key
        #[arg(long, value_name = "FILE", verbatim_doc_comment)]
        key_file: Option<PathBuf>,
        /// Bucket the object will be stored in.
        /// Example: --bucket pbs-backup
        #[arg(long, value_name = "BUCKET", verbatim_doc_comment)]
        bucket: String,
        /// Object key (name) it will be stored under.
        /// Example: --key docs/a.pdf
        #[arg(long, value_name = "KEY", verbatim_doc_comment)]
        key: String,
        /// Chunk size in bytes: a power of two from 4096 to 16777216 (default 65536).
        /// Example: --chunk-size 1048576
        #[arg(long, value_name = "BYTES", verbatim_doc_comment)]
        chunk_size: Option<u32>,
        /// Content-Type the proxy will report for the object (sealed in the metadata).
        /// Example: --content-type application/pdf
        #[arg(long, value_name = "TYPE", verbatim_doc_comment)]
        content_type: Option<String>,
        /// Read the plaintext from FILE instead of stdin (stdin is staged in a private temporary file).
        /// Example: --in a.pdf
        #[arg(long = "in", value_name = "FILE", verbatim_doc_comment)]
        input: Option<PathBuf>,
        /// Write the encrypted object to FILE (never overwritten) instead of stdout.
        /// Example: --out a.pdf.s3cp
        #[arg(long, value_name = "FILE", verbatim_doc_comment)]
        out: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct ServerSelection {
    /// Server URL, optionally with its fingerprint as `URL#FINGERPRINT`; repeat for several
    /// servers. Without it: every server pinned by `init`.
    /// Example: --server https://keyhost:7070
    #[arg(long = "server", value_name = "URL", verbatim_doc_comment)]
    servers: Vec<String>,
    /// Pinned fingerprint for the --server at the same position (overrides the stored one).
    /// Example: --server https://a:7070 --fingerprint <64 hex>
    #[arg(long = "fingerprint", value_name = "HEX", verbatim_doc_comment)]
    fingerprints: Vec<String>,
    /// PEM file with the server certificate or CA (overrides the stored setting).
    /// Example: --cacert memkey.crt
    #[arg(long, value_name = "FILE", verbatim_doc_comment)]
    cacert: Option<PathBuf>,
    /// Skip TLS certificate verification (lab self-signed certificates; see `init --help`).
    /// Example: --insecure-tls
    #[arg(long, verbatim_doc_comment)]
    insecure_tls: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("memkey-admin: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Fail> {
    let store = Store::locate(cli.config_dir.clone())?;
    let timeout = Duration::from_secs(cli.timeout.max(1));
    match cli.command {
        Command::Init(a) => init(&store, a),
        Command::Identity => {
            let id = store.identity()?;
            println!("{}", hex::encode(id.verifying_key().as_bytes()));
            Ok(())
        }
        Command::Key(KeyCommand::Generate { id, out }) => key_generate(&store, id, out),
        Command::Key(KeyCommand::Import { file, force }) => key_import(&store, &file, force),
        Command::Key(KeyCommand::Send {
            servers,
            key_file,
            no_make_current,
        }) => key_send(&store, &servers, key_file, !no_make_current, timeout),
        Command::Key(KeyCommand::Split {
            shares,
            threshold,
            input,
            out_dir,
            admins,
        }) => {
            let input = input.unwrap_or_else(|| store.path(MASTER_KEY_FILE));
            let written = shares::key_split(&input, threshold, shares, &out_dir, &admins)?;
            for p in &written {
                println!("wrote {}", p.display());
            }
            println!(
                "{} shares of the key in {}; any {threshold} of them rebuild it, fewer reveal nothing. Give each administrator one share file; configure memkey-server with shares: {{threshold: {threshold}}}.",
                written.len(),
                input.display()
            );
            Ok(())
        }
        Command::Key(KeyCommand::SendShare {
            servers,
            share,
            no_make_current,
        }) => key_send_share(&store, &servers, &share, !no_make_current, timeout),
        Command::Key(KeyCommand::Verify {
            bucket,
            key_file,
            share,
            proxy_admin,
            token,
            prefix,
            limit,
            object,
        }) => {
            let candidate = match share {
                Some(p) => {
                    let s = shares::read_share(&p)?;
                    verify::Candidate {
                        key_id: s.key_id,
                        kcv: s.kcv,
                        source: format!("share file {}", p.display()),
                    }
                }
                None => {
                    let p = key_file.unwrap_or_else(|| store.path(MASTER_KEY_FILE));
                    let k = read_master_key(&p)?;
                    verify::Candidate {
                        key_id: k.id(),
                        kcv: keyd::shamir::key_check_value(&k),
                        source: format!("key file {}", p.display()),
                    }
                }
            };
            match (object, proxy_admin) {
                (Some(obj), _) => verify::offline(&candidate, &obj, &bucket),
                (None, Some(url)) => {
                    let token = token.ok_or_else(|| {
                        Fail::usage("--token (or S3CP_ADMIN_TOKEN) is required with --proxy-admin")
                    })?;
                    verify::via_proxy(&candidate, &url, &token, &bucket, &prefix, limit, timeout)
                }
                (None, None) => Err(Fail::usage("give --proxy-admin URL or --object FILE")),
            }
        }
        Command::Key(KeyCommand::Seal(a)) => seal::seal(a),
        Command::Hsm(HsmCommand::InitKey(a)) => seal::init_key(a),
        Command::Status(sel) => status(&store, &sel, timeout),
        Command::Object(ObjectCommand::Decrypt {
            key_files,
            bucket,
            key,
            parts,
            meta,
            input,
            out,
        }) => {
            let key_files = if key_files.is_empty() {
                vec![store.path(MASTER_KEY_FILE)]
            } else {
                key_files
            };
            object::decrypt(object::DecryptArgs {
                key_files: &key_files,
                bucket: &bucket,
                key: &key,
                parts,
                meta: meta.as_deref(),
                input: input.as_deref(),
                out: out.as_deref(),
            })
        }
        Command::Object(ObjectCommand::Encrypt {
            key_file,
            bucket,
            key,
            chunk_size,
            content_type,
            input,
            out,
        }) => {
            let key_file = key_file.unwrap_or_else(|| store.path(MASTER_KEY_FILE));
            object::encrypt(object::EncryptArgs {
                key_file: &key_file,
                bucket: &bucket,
                key: &key,
                chunk_size,
                content_type: content_type.as_deref(),
                input: input.as_deref(),
                out: out.as_deref(),
            })
        }
    }
}

fn split_url(arg: &str) -> (String, Option<String>) {
    match arg.split_once('#') {
        Some((u, fp)) => (normalize_url(u), Some(fp.to_owned())),
        None => (normalize_url(arg), None),
    }
}

fn parse_fp(text: &str) -> Result<[u8; 32], Fail> {
    protocol::parse_fingerprint(text).ok_or_else(|| {
        Fail::usage(format!(
            "fingerprint {text:?} is not 64 hex characters (SHA-256)"
        ))
    })
}

fn init(store: &Store, a: InitArgs) -> Result<(), Fail> {
    let (url, url_fp) = split_url(&a.server);
    let fp_text = a.fingerprint.or(url_fp).ok_or_else(|| {
        Fail::usage("--fingerprint HEX is required: copy it from the server log line `SERVER FINGERPRINT: …`")
    })?;
    let fp = parse_fp(&fp_text)?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(Fail::usage(format!(
            "--server {url:?} must start with https:// (or http:// in a lab)"
        )));
    }
    if url.starts_with("http://") {
        eprintln!("warning: {url} is plain HTTP; the key is still sealed to the pinned server, but use HTTPS outside a lab");
    }
    if let Some(ca) = &a.cacert {
        if !ca.is_file() {
            return Err(Fail::usage(format!(
                "--cacert {} does not exist",
                ca.display()
            )));
        }
    }
    let cacert = a.cacert.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    let mut cfg = store.load_config()?;
    let replaced = cfg.find(&url).map(|e| e.fingerprint.clone());
    cfg.upsert(ServerEntry {
        url: url.clone(),
        fingerprint: hex::encode(fp),
        cacert,
        insecure_tls: a.insecure_tls,
    });
    let (identity, created) = match store.load_identity()? {
        Some(k) => (k, false),
        None => (store.create_identity()?, true),
    };
    store.save_config(&cfg)?;
    match replaced {
        Some(old) if old != hex::encode(fp) => {
            println!("Updated {url}: fingerprint {old} -> {}", hex::encode(fp))
        }
        Some(_) => println!("{url} was already pinned with this fingerprint"),
        None => println!("Pinned {url} with fingerprint {}", hex::encode(fp)),
    }
    println!(
        "{} admin identity in {}",
        if created { "Created" } else { "Using existing" },
        store.path(store::IDENTITY_FILE).display()
    );
    println!();
    println!("Admin public key (add it to memkey.yaml on the server, then restart memkey-server):");
    println!();
    println!("admins:");
    println!(
        "  - \"{}\"",
        hex::encode(identity.verifying_key().as_bytes())
    );
    Ok(())
}

fn key_generate(store: &Store, id: KeyId, out: Option<PathBuf>) -> Result<(), Fail> {
    let path = match out {
        Some(p) => p,
        None => {
            store.ensure_dir()?;
            store.path(MASTER_KEY_FILE)
        }
    };
    let key = MasterKey::generate(id);
    write_new(&path, key.to_file_string().as_bytes())?;
    println!(
        "Wrote master key id {id} to {} (mode 0600).",
        path.display()
    );
    println!(
        "Keep an offline backup of this file: data encrypted with a lost key cannot be recovered."
    );
    Ok(())
}

fn key_import(store: &Store, file: &std::path::Path, force: bool) -> Result<(), Fail> {
    let key = read_master_key(file)?;
    store.ensure_dir()?;
    let dest = store.path(MASTER_KEY_FILE);
    if dest.exists() {
        let existing = read_master_key(&dest).ok();
        let same = existing
            .as_ref()
            .is_some_and(|e| e.id() == key.id() && e.expose() == key.expose());
        if same {
            println!(
                "{} already holds this key (id {})",
                dest.display(),
                key.id()
            );
            return Ok(());
        }
        if !force {
            return Err(Fail::usage(format!(
                "{} already holds a different key{}; back it up, then re-run with --force to replace it",
                dest.display(),
                existing.map(|e| format!(" (id {})", e.id())).unwrap_or_default()
            )));
        }
    }
    write_atomic(&dest, key.to_file_string().as_bytes(), 0o600)?;
    println!(
        "Imported master key id {} into {}",
        key.id(),
        dest.display()
    );
    Ok(())
}

/// Resolves the servers to contact from the command line and the stored configuration.
fn targets(cfg: &AdminConfig, sel: &ServerSelection) -> Result<Vec<Target>, Fail> {
    let tls = |entry: Option<&ServerEntry>| -> (Option<PathBuf>, bool) {
        if sel.insecure_tls {
            (None, true)
        } else if sel.cacert.is_some() {
            (sel.cacert.clone(), false)
        } else {
            entry
                .map(|e| (e.cacert.clone(), e.insecure_tls))
                .unwrap_or((None, false))
        }
    };
    if sel.servers.is_empty() {
        if !sel.fingerprints.is_empty() {
            return Err(Fail::usage("--fingerprint needs a --server"));
        }
        if cfg.servers.is_empty() {
            return Err(Fail::usage("no server pinned yet: run `memkey-admin init --server URL --fingerprint HEX` or pass --server URL#FINGERPRINT"));
        }
        return cfg
            .servers
            .iter()
            .map(|e| {
                let (cacert, insecure_tls) = tls(Some(e));
                Ok(Target {
                    url: normalize_url(&e.url),
                    fingerprint: parse_fp(&e.fingerprint)?,
                    cacert,
                    insecure_tls,
                })
            })
            .collect();
    }
    if !sel.fingerprints.is_empty() && sel.fingerprints.len() != sel.servers.len() {
        return Err(Fail::usage(format!(
            "{} --fingerprint for {} --server: give one per server, in the same order (or use URL#FINGERPRINT)",
            sel.fingerprints.len(),
            sel.servers.len()
        )));
    }
    sel.servers
        .iter()
        .enumerate()
        .map(|(i, arg)| {
            let (url, url_fp) = split_url(arg);
            let entry = cfg.find(&url);
            let fp_text = url_fp
                .or_else(|| sel.fingerprints.get(i).cloned())
                .or_else(|| entry.map(|e| e.fingerprint.clone()))
                .ok_or_else(|| {
                    Fail::usage(format!(
                        "no pinned fingerprint for {url}: use --server {url}#FINGERPRINT, --fingerprint HEX, or `memkey-admin init`"
                    ))
                })?;
            let (cacert, insecure_tls) = tls(entry);
            Ok(Target { url, fingerprint: parse_fp(&fp_text)?, cacert, insecure_tls })
        })
        .collect()
}

fn server_error(target: &Target, what: &str, a: &Answer) -> Fail {
    let e = a.error();
    match (a.status, e.code.as_str()) {
        (429, "locked_out") => {
            let secs = e.retry_after.or(a.retry_after).unwrap_or(0);
            Fail::new(
                EXIT_LOCKED_OUT,
                format!(
                    "{}: locked out after too many failed attempts from this address; time left: {} (Retry-After {secs}s)",
                    target.url,
                    human_duration(Duration::from_secs(secs))
                ),
            )
        }
        (_, "unknown_admin") => Fail::new(
            EXIT_REJECTED,
            format!(
                "{}: this admin key is not in the server's admins list; add the output of `memkey-admin identity` to `admins:` in memkey.yaml and restart memkey-server",
                target.url
            ),
        ),
        (_, "key_id_conflict") => Fail::new(
            EXIT_REJECTED,
            format!(
                "{}: the server already holds a different key with this id; nothing was changed (check the key file; restarting memkey-server clears its keys)",
                target.url
            ),
        ),
        (status, "") => {
            Fail::new(EXIT_REJECTED, format!("{}: {what} failed with HTTP {status}: {}", target.url, e.error))
        }
        (status, code) => {
            Fail::new(EXIT_REJECTED, format!("{}: {what} refused (HTTP {status}, {code}): {}", target.url, e.error))
        }
    }
}

fn identity_failure(target: &Target, e: ProtocolError) -> Fail {
    match e {
        ProtocolError::FingerprintMismatch { expected, got } => Fail::new(
            EXIT_FINGERPRINT,
            format!(
                "{}: SERVER FINGERPRINT MISMATCH - expected {expected}, got {got}. The key was NOT sent. \
If the server identity was changed on purpose, read the new fingerprint from the server log \
(journalctl -u memkey-server | grep 'SERVER FINGERPRINT') and re-run `memkey-admin init`.",
                target.url
            ),
        ),
        ProtocolError::BadServerSignature => Fail::new(
            EXIT_FINGERPRINT,
            format!("{}: the challenge signature does not verify; the key was NOT sent", target.url),
        ),
        other => Fail::new(EXIT_FINGERPRINT, format!("{}: invalid challenge ({other}); the key was NOT sent", target.url)),
    }
}

/// One complete delivery to one server.
/// What one delivery carries.
#[derive(Clone, Copy)]
enum Payload<'a> {
    Key(&'a MasterKey),
    Share(&'a keyd::shamir::KeyShare),
}

fn send_one(
    target: &Target,
    timeout: Duration,
    admin: &SigningKey,
    payload: Payload<'_>,
    make_current: bool,
) -> Result<DeliveryAck, Fail> {
    let client = Client::new(target, timeout)?;
    let a = client.get("/challenge")?;
    if a.status != 200 {
        return Err(server_error(target, "challenge request", &a));
    }
    let msg: ChallengeMsg = serde_json::from_slice(&a.body).map_err(|e| {
        Fail::new(
            EXIT_FINGERPRINT,
            format!(
                "{}: malformed challenge: {e}; the key was NOT sent",
                target.url
            ),
        )
    })?;
    let verified = msg
        .verify(&target.fingerprint)
        .map_err(|e| identity_failure(target, e))?;
    let sealed = match payload {
        Payload::Key(key) => protocol::seal_delivery(&verified, admin, key, make_current),
        Payload::Share(share) => {
            protocol::seal_share_delivery(&verified, admin, share, make_current)
        }
    }
    .map_err(|e| identity_failure(target, e))?;
    let body = serde_json::to_vec(&sealed.delivery.to_message())
        .map_err(|e| Fail::error(e.to_string()))?;
    let a = client.post_json("/key", &body)?;
    if a.status != 200 {
        return Err(server_error(target, "key delivery", &a));
    }
    let ack: DeliveryAck = serde_json::from_slice(&a.body).map_err(|e| {
        Fail::new(
            EXIT_FINGERPRINT,
            format!("{}: malformed acknowledgement: {e}", target.url),
        )
    })?;
    sealed.check_confirmation(&ack).map_err(|_| {
        Fail::new(
            EXIT_FINGERPRINT,
            format!("{}: the acknowledgement is not from the pinned server (bad key confirmation); delivery state unknown", target.url),
        )
    })?;
    Ok(ack)
}

fn key_send(
    store: &Store,
    sel: &ServerSelection,
    key_file: Option<PathBuf>,
    make_current: bool,
    timeout: Duration,
) -> Result<(), Fail> {
    let cfg = store.load_config()?;
    let targets = targets(&cfg, sel)?;
    let admin = store.identity()?;
    let key_path = key_file.unwrap_or_else(|| store.path(MASTER_KEY_FILE));
    if !key_path.exists() {
        return Err(Fail::usage(format!(
            "no key file {}: use --key-file FILE, `memkey-admin key generate` or `memkey-admin key import --file FILE`",
            key_path.display()
        )));
    }
    let key = read_master_key(&key_path)?;
    deliver_to_each(&targets, |t| {
        send_one(t, timeout, &admin, Payload::Key(&key), make_current).map(|ack| {
            println!(
                "{}: key id {} {}{}; loaded ids {:?}, current {} (confirmed by server {})",
                t.url,
                ack.key_id,
                if ack.already_loaded {
                    "was already loaded"
                } else {
                    "delivered"
                },
                if ack.current {
                    ", current"
                } else {
                    ", not current"
                },
                ack.key_ids,
                ack.current_key_id
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                &hex::encode(t.fingerprint)[..16],
            )
        })
    })
}

/// Runs one delivery per server; a failure is reported and the others still run. The first
/// failure decides the exit status.
fn deliver_to_each(targets: &[Target], mut deliver: impl FnMut(&Target) -> Result<(), Fail>) -> Result<(), Fail> {
    let mut first_failure: Option<Fail> = None;
    for t in targets {
        if let Err(f) = deliver(t) {
            eprintln!("memkey-admin: {}", f.message);
            first_failure.get_or_insert(Fail::new(f.code, String::new()));
        }
    }
    match first_failure {
        None => Ok(()),
        Some(f) => {
            if targets.len() > 1 {
                eprintln!("memkey-admin: delivery failed for at least one of {} servers", targets.len());
            }
            Err(f)
        }
    }
}


fn key_send_share(
    store: &Store,
    sel: &ServerSelection,
    share_path: &std::path::Path,
    make_current: bool,
    timeout: Duration,
) -> Result<(), Fail> {
    let cfg = store.load_config()?;
    let targets = targets(&cfg, sel)?;
    let admin = store.identity()?;
    let share = shares::read_share(share_path)?;
    deliver_to_each(&targets, |t| {
        let ack = send_one(t, timeout, &admin, Payload::Share(&share), make_current)?;
        match ack {
            ack if ack.status == "ok" => println!(
                "{}: share {} accepted; key id {} reconstructed from {} admins' shares and {}{}; loaded ids {:?} (confirmed by server {})",
                t.url,
                share.index,
                ack.key_id,
                ack.shares_received.unwrap_or(0),
                if ack.already_loaded { "was already loaded" } else { "loaded" },
                if ack.current { ", current" } else { "" },
                ack.key_ids,
                &hex::encode(t.fingerprint)[..16],
            ),
            ack => println!(
                "{}: share {} of key id {} {}; {} of {} admins have delivered; key not loaded yet (confirmed by server {})",
                t.url,
                share.index,
                ack.key_id,
                if ack.status == "share_already_counted" {
                    "received again: this admin was already counted"
                } else {
                    "received"
                },
                ack.shares_received.unwrap_or(0),
                ack.threshold.unwrap_or(share.threshold),
                &hex::encode(t.fingerprint)[..16],
            ),
        }
        Ok(())
    })
}

fn status(store: &Store, sel: &ServerSelection, timeout: Duration) -> Result<(), Fail> {
    let cfg = store.load_config()?;
    let targets = targets(&cfg, sel)?;
    let mut first_failure: Option<Fail> = None;
    for t in &targets {
        let r = (|| -> Result<(), Fail> {
            let client = Client::new(t, timeout)?;
            let a = client.get("/status")?;
            if a.status != 200 {
                return Err(server_error(t, "status request", &a));
            }
            let s: StatusInfo = serde_json::from_slice(&a.body)
                .map_err(|e| Fail::error(format!("{}: malformed status: {e}", t.url)))?;
            let pinned = hex::encode(t.fingerprint);
            let fp_ok = protocol::parse_fingerprint(&s.fingerprint)
                .is_some_and(|got| protocol::fingerprints_equal(&got, &t.fingerprint));
            println!("{}", t.url);
            println!(
                "  fingerprint:   {} ({})",
                s.fingerprint,
                if fp_ok {
                    "matches the pinned one"
                } else {
                    "DOES NOT MATCH the pinned one"
                }
            );
            if s.loaded {
                println!(
                    "  key loaded:    yes; ids {:?}, current {}, since {}",
                    s.key_ids,
                    s.current
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    s.loaded_at.as_deref().unwrap_or("?")
                );
            } else {
                println!("  key loaded:    NO (run `memkey-admin key send`)");
            }
            println!(
                "  memory locked: {}",
                if s.memory_locked {
                    "yes"
                } else {
                    "no (mlock failed; see server log)"
                }
            );
            println!(
                "  uptime:        {}",
                human_duration(Duration::from_secs(s.uptime_seconds))
            );
            println!("  version:       {}", s.version);
            if !fp_ok {
                return Err(Fail::new(
                    EXIT_FINGERPRINT,
                    format!(
                        "{}: SERVER FINGERPRINT MISMATCH - expected {pinned}, got {}",
                        t.url, s.fingerprint
                    ),
                ));
            }
            Ok(())
        })();
        if let Err(f) = r {
            eprintln!("memkey-admin: {}", f.message);
            first_failure.get_or_insert(Fail::new(f.code, String::new()));
        }
    }
    first_failure.map_or(Ok(()), Err)
}
