//! memkey-server: holds the s3-crypt-proxy master keys in memory only.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use keyd::protocol::{fingerprint_hex, generate_identity};
use keyd::{Config, Server, StartError};
use zeroize::Zeroizing;

/// Key server for s3-crypt-proxy: keeps master keys in locked memory only (never on disk),
/// accepts them from `memkey-admin` over HTTPS with a signed, forward-secret challenge-response
/// protocol, and serves them to the local proxy over a Unix socket.
///
/// Configuration comes from the YAML file given with --config, then MEMKEY_* environment
/// variables override single settings: MEMKEY_LISTEN_ADDR, MEMKEY_TLS_ENABLED, MEMKEY_TLS_CERT,
/// MEMKEY_TLS_KEY, MEMKEY_SOCKET, MEMKEY_IDENTITY_KEY, MEMKEY_CHALLENGE_TIMEOUT,
/// MEMKEY_MAX_FAILED_ATTEMPTS, MEMKEY_LOCKOUT_DURATION, MEMKEY_ADMINS (comma-separated),
/// and for the key source (`key_source:`): MEMKEY_KEY_SOURCE, MEMKEY_SEALED_KEY_FILES,
/// MEMKEY_PKCS11_MODULE, MEMKEY_PKCS11_TOKEN_LABEL, MEMKEY_PKCS11_PIN_FILE, MEMKEY_PKCS11_PIN,
/// MEMKEY_KMS_REGION, MEMKEY_KMS_ENDPOINT, MEMKEY_KMS_CA_FILE (AWS credentials: AWS_* variables).
/// SIGHUP reloads the key source settings and unseals again.
/// See conf/memkey.example.yaml.
///
/// Exit status: 0 clean shutdown, 1 runtime failure (e.g. port in use), 2 bad configuration.
#[derive(Parser, Debug)]
#[command(
    name = "memkey-server",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
struct Cli {
    /// Path of the YAML configuration file.
    /// Example: --config /etc/s3-crypt-proxy/memkey.yaml
    /// Without it, settings come from MEMKEY_* variables and built-in defaults.
    #[arg(
        long,
        short = 'c',
        env = "MEMKEY_CONFIG",
        value_name = "PATH",
        verbatim_doc_comment
    )]
    config: Option<PathBuf>,

    /// Print a new Ed25519 identity seed (64 hex characters) on stdout and exit.
    /// Put it in `identity.private_key` (or MEMKEY_IDENTITY_KEY); the matching public key
    /// and SERVER FINGERPRINT are printed on stderr.
    /// Example: memkey-server --generate-identity > identity.hex
    #[arg(long, verbatim_doc_comment)]
    generate_identity: bool,

    /// Validate the configuration, print the SERVER FINGERPRINT and exit (0 = valid, 2 = invalid).
    /// Example: memkey-server --config /etc/s3-crypt-proxy/memkey.yaml --check-config
    #[arg(long, verbatim_doc_comment)]
    check_config: bool,

    /// Log level: error, warn, info or debug.
    /// Example: --log-level debug
    #[arg(
        long,
        env = "MEMKEY_LOG_LEVEL",
        default_value = "info",
        value_name = "LEVEL",
        verbatim_doc_comment
    )]
    log_level: LogLevel,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
        }
    }
}

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
            && (m.target().starts_with("keyd") || m.target().starts_with("memkey"))
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let ts = keyd::util::rfc3339(keyd::util::unix_now());
            let _ = writeln!(
                std::io::stderr().lock(),
                "{ts} {:<5} {}",
                r.level(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(cli.log_level.into());

    if cli.generate_identity {
        let id = generate_identity();
        let seed = Zeroizing::new(hex::encode(id.to_bytes()));
        println!("{}", seed.as_str());
        eprintln!(
            "public key:         {}",
            hex::encode(id.verifying_key().as_bytes())
        );
        eprintln!(
            "SERVER FINGERPRINT: {}",
            fingerprint_hex(&id.verifying_key())
        );
        eprintln!(
            "Put the seed in identity.private_key (memkey.yaml, mode 0600) or MEMKEY_IDENTITY_KEY."
        );
        return ExitCode::SUCCESS;
    }

    let config = match Config::load_from_env(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("memkey-server: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        println!(
            "configuration OK; SERVER FINGERPRINT: {}",
            config.fingerprint()
        );
        return ExitCode::SUCCESS;
    }

    // Before any key can arrive; reported once the server is up so that a start-up
    // configuration error stays the only line on stderr.
    let report = keyd::harden::disable_core_dumps();

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("memkey-server: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let config_path = cli.config.clone();
    rt.block_on(async move {
        let fingerprint = config.fingerprint();
        let key_source = config.key_source.clone();
        let handle = match Server::start(config).await {
            Ok(h) => h,
            Err(StartError::Config(e)) => {
                eprintln!("memkey-server: configuration error: {e}");
                return ExitCode::from(2);
            }
            Err(StartError::Io(e)) => {
                eprintln!("memkey-server: {e}");
                return ExitCode::from(1);
            }
        };
        if !report.applied.is_empty() {
            log::info!("process hardening: {}", report.applied.join(", "));
        }
        for f in &report.failed {
            log::warn!("process hardening failed: {f}");
        }
        log::info!("SERVER FINGERPRINT: {fingerprint}");
        if let Some(path) = &config_path {
            warn_if_readable(path);
        }
        let mut signals = Signals::new();
        let mut unsealer = start_key_source(&handle, key_source);
        loop {
            match signals.next().await {
                Signal::Stop => break,
                Signal::Reload => {
                    // SIGHUP: read the configuration again (a corrected PIN file, a new sealed
                    // key file) and unseal again; the keys already loaded stay.
                    let source = match Config::load_from_env(config_path.as_deref()) {
                        Ok(c) => c.key_source,
                        Err(e) => {
                            log::error!("SIGHUP: configuration error, key source unchanged: {e}");
                            continue;
                        }
                    };
                    log::info!("SIGHUP: unsealing again with key source {}", source.kind);
                    if let Some(task) = unsealer.take() {
                        task.abort();
                    }
                    unsealer = start_key_source(&handle, source);
                }
            }
        }
        if let Some(task) = unsealer {
            task.abort();
        }
        log::info!("shutting down: wiping keys");
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Starts the configured key source (nothing for delivery).
fn start_key_source(
    handle: &keyd::ServerHandle,
    source: keyd::source::KeySourceConfig,
) -> Option<tokio::task::JoinHandle<()>> {
    if source.kind == keyd::source::SourceKind::Delivery {
        log::info!("{}", keyd::source::delivery::WAITING);
    } else {
        log::info!(
            "key source {}: unsealing {} sealed key file(s); `memkey-admin key send` is accepted too",
            source.kind,
            source.sealed_key_files.len()
        );
    }
    keyd::source::runner::spawn(handle.service().clone(), source)
}

enum Signal {
    Stop,
    Reload,
}

/// The signals memkey-server acts on, registered once so none is lost between two waits.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    async fn next(&mut self) -> Signal {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => Signal::Stop,
            _ = recv(&mut self.term) => Signal::Stop,
            _ = recv(&mut self.hup) => Signal::Reload,
        }
    }
}

fn warn_if_readable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o004 != 0 {
            log::warn!(
                "{} is world-readable but holds the server identity; chmod 0640 or 0600",
                path.display()
            );
        }
    }
}
