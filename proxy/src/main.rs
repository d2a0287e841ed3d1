//! s3-crypt-proxy: a stateless, transparent S3 encryption proxy on pingora.

mod admin;
mod audit;
mod background;
mod config;
mod drain;
mod key_verify;
mod key_usage;
mod listen;
mod malloc;
mod metrics;
mod redact;
mod rewrap;
mod service;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use filters::allowlist::AllowlistFilter;
use filters::auth::Sigv4Filter;
use filters::backend::Backend;
use filters::conditional::ConditionalFilter;
use filters::crypto::CryptoFilter;
use filters::keys::KeyState;
use filters::listing::ListingFilter;
use filters::resign::ResignFilter;
use filters::{Chain, Filter, FilterKind};
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

const AFTER_HELP: &str = "\
Configuration comes from the YAML file given with --config, then from S3CP_* environment
variables (see conf/proxy.example.yaml and the README). Example:

  s3-crypt-proxy run --config /etc/s3-crypt-proxy/config.yaml
  s3-crypt-proxy run --config config.yaml --upgrade      # take over the sockets of a running proxy
  s3-crypt-proxy check --config config.yaml              # validate and exit
  s3-crypt-proxy fingerprint --cert /etc/s3-crypt-proxy/proxy.crt   # for PBS's fingerprint field";

#[derive(Parser)]
#[command(name = "s3-crypt-proxy", version, about = "Stateless, transparent S3 encryption proxy", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy.
    Run {
        /// YAML configuration file; S3CP_* variables override it.
        /// Example: --config /etc/s3-crypt-proxy/config.yaml
        #[arg(short, long, env = "S3CP_CONFIG", verbatim_doc_comment)]
        config: Option<PathBuf>,
        /// Zero-downtime upgrade: take the listening sockets of the running proxy over
        /// server.upgrade_sock; then send the old process SIGQUIT so it drains and exits.
        /// Example: s3-crypt-proxy run --config config.yaml --upgrade --daemon && kill -QUIT $OLD_PID
        #[arg(short, long, verbatim_doc_comment)]
        upgrade: bool,
        /// Detach into the background, writing server.pid_file (systemd Type=forking).
        /// Example: --daemon
        #[arg(short, long, verbatim_doc_comment)]
        daemon: bool,
    },
    /// Check the configuration (including filter order, TLS files and the backend address) and exit.
    Check {
        /// The configuration to check.
        /// Example: --config /etc/s3-crypt-proxy/config.yaml
        #[arg(short, long, env = "S3CP_CONFIG", verbatim_doc_comment)]
        config: Option<PathBuf>,
    },
    /// Print the SHA-256 fingerprint of the TLS certificate in the form PBS expects.
    Fingerprint {
        /// The certificate (PEM); defaults to tls.cert_file of the configuration.
        /// Example: --cert /etc/s3-crypt-proxy/proxy.crt
        #[arg(long, verbatim_doc_comment)]
        cert: Option<PathBuf>,
        /// Read tls.cert_file from this configuration.
        /// Example: --config /etc/s3-crypt-proxy/config.yaml
        #[arg(short, long, env = "S3CP_CONFIG", verbatim_doc_comment)]
        config: Option<PathBuf>,
    },
}

/// Prints one line and exits with code 2: the contract for configuration errors.
fn die(msg: impl std::fmt::Display) -> ! {
    eprintln!("s3-crypt-proxy: {msg}");
    std::process::exit(2);
}

/// The `S3CP_*` variables, for `--help`.
fn env_help() -> String {
    let mut s = String::from("Environment variables (override the file):\n");
    for (var, setting) in config::ENV_VARS {
        s.push_str(&format!("  {var:<28} {setting}\n"));
    }
    s
}

fn main() {
    let cmd = Cli::command().mut_subcommand("run", |c| c.after_long_help(env_help()));
    let cli = Cli::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit());
    match cli.cmd {
        Cmd::Fingerprint { cert, config } => {
            let path = match cert {
                Some(p) => p,
                None => match config::load(config.as_deref()).unwrap_or_else(|e| die(e)).tls {
                    Some((c, _)) => PathBuf::from(c),
                    None => die("no certificate: pass --cert or configure tls.cert_file"),
                },
            };
            println!("{}", tls::fingerprint_file(&path).unwrap_or_else(|e| die(e)));
        }
        Cmd::Check { config } => {
            let cfg = config::load(config.as_deref()).unwrap_or_else(|e| die(e));
            prepare(&cfg, false).unwrap_or_else(|e| die(e));
            println!(
                "configuration OK: filters {:?}; upgrade socket {}, PID file {}",
                cfg.filters.iter().map(|f| f.name()).collect::<Vec<_>>(),
                cfg.upgrade_sock,
                cfg.pid_file
            );
        }
        Cmd::Run { config, upgrade, daemon } => {
            let cfg = config::load(config.as_deref()).unwrap_or_else(|e| die(e));
            // Before any thread starts.
            let malloc_tuned = malloc::tune();
            // Before any key is fetched.
            let hardening = keyd::harden::disable_core_dumps();
            let parts = prepare(&cfg, true).unwrap_or_else(|e| die(e));
            if !upgrade {
                // With --upgrade the running process holds the sockets and hands them over.
                listen::check_free(&cfg.listeners()).unwrap_or_else(|e| die(e));
            }
            init_logging(&cfg.log_level);
            if malloc_tuned {
                log::debug!("malloc: heaps keep up to {} KiB free; blocks from {} KiB are mmap'd", malloc::TRIM_THRESHOLD >> 10, malloc::MMAP_THRESHOLD >> 10);
            }
            if !hardening.applied.is_empty() {
                log::info!("process hardening: {}", hardening.applied.join(", "));
            }
            for f in &hardening.failed {
                log::warn!("process hardening failed: {f}");
            }
            run(cfg, parts, hardening.failed.is_empty(), upgrade, daemon);
        }
    }
}

/// env_logger's line format, with every message passed through [`redact::redact`] (pingora and
/// the filters log request lines and errors that may quote credentials).
fn init_logging(level: &str) {
    use std::io::Write;
    env_logger::Builder::new()
        .parse_filters(&format!("warn,s3_crypt_proxy={level},filters={level},keyd={level},pingora={}", if level == "debug" { "info" } else { "warn" }))
        .format(|buf, record| {
            let msg = record.args().to_string();
            writeln!(buf, "[{} {:<5} {}] {}", buf.timestamp_millis(), record.level(), record.target(), redact::redact(&msg))
        })
        .init();
}

/// Everything that can fail before the server starts, checked up front (pingora would
/// panic on a bad certificate or an unresolvable backend later).
struct Parts {
    backend: Arc<Backend>,
    fingerprint: Option<String>,
}

/// `create`: make a missing runtime directory (`run`); `check` only inspects.
fn prepare(cfg: &config::Config, create: bool) -> Result<Parts, String> {
    for (setting, dir) in cfg.runtime_dirs() {
        keyd::harden::private_dir(dir, create).map_err(|e| format!("{setting}: {e}"))?;
    }
    let backend = Arc::new(Backend::new(cfg.backend.clone())?);
    let fingerprint = match &cfg.tls {
        Some((cert, key)) => Some(tls::check_pair(cert, key)?),
        None => None,
    };
    if let Some(a) = &cfg.audit_log {
        audit::Audit::open(a)?;
    }
    Ok(Parts { backend, fingerprint })
}

fn build_chain(cfg: &config::Config, backend: &Arc<Backend>, keys: &Arc<KeyState>) -> Chain {
    let filters: Vec<Arc<dyn Filter>> = cfg
        .filters
        .iter()
        .map(|k| -> Arc<dyn Filter> {
            match k {
                FilterKind::Sigv4 => Arc::new(Sigv4Filter::with_clients(cfg.clients.clone())),
                FilterKind::Allowlist => Arc::new(AllowlistFilter::new(cfg.allowed_buckets.clone())),
                FilterKind::Conditional => {
                    let filter = ConditionalFilter::new(cfg.conditional_writes, backend.clone());
                    // With encryption, If-Match may name the sealed plaintext MD5 a client was shown.
                    Arc::new(if cfg.filters.contains(&FilterKind::Crypto) { filter.with_keys(keys.clone()) } else { filter })
                }
                FilterKind::Crypto => Arc::new(CryptoFilter::new(keys.clone(), backend.clone(), cfg.chunk_size, cfg.cipher, cfg.unencrypted_objects.clone())),
                FilterKind::Listing => Arc::new(
                    ListingFilter::new(cfg.chunk_size, cfg.former_chunk_sizes.clone(), cfg.unencrypted_objects.legacy().cloned(), backend.clone())
                        .normalizing_listings(cfg.normalize_listings),
                ),
                FilterKind::Resign => Arc::new(ResignFilter::new(backend.clone())),
            }
        })
        .collect();
    Chain::new(filters)
}

/// Loads the key before the listeners start; true when keyd handed one over.
fn initial_key_fetch(socket: PathBuf, keys: &KeyState, metrics: &metrics::Metrics) -> bool {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            log::warn!("initial key fetch skipped: {e}");
            return false;
        }
    };
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), keyd::client::fetch_keyring(&socket)).await }) {
        Ok(Ok(Some(ring))) => {
            background::take_up(keys, metrics, ring);
            return true;
        }
        Ok(Ok(None)) => log::warn!("keyd holds no key yet: S3 requests get 503 until `memkey-admin key send`"),
        Ok(Err(e)) => log::warn!("cannot reach keyd at {}: {e}", socket.display()),
        Err(_) => log::warn!("keyd at {} did not answer within 3 s", socket.display()),
    }
    false
}

/// Locks a key ring's memory in RAM (see `keyd::harden`).
fn lock_keyring(ring: &s3cp_format::KeyRing) -> Result<Box<dyn std::any::Any + Send + Sync>, String> {
    keyd::harden::MemoryLock::of_keyring(ring).map(|l| Box::new(l) as Box<dyn std::any::Any + Send + Sync>)
}

fn run(cfg: config::Config, parts: Parts, hardened: bool, upgrade: bool, daemon: bool) {
    let opt = Opt { upgrade, daemon, nocapture: false, test: false, conf: None };
    let conf = ServerConf {
        threads: if cfg.threads == 0 { std::thread::available_parallelism().map_or(2, |n| n.get()) } else { cfg.threads },
        grace_period_seconds: Some(cfg.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(cfg.graceful_shutdown_timeout_seconds),
        upgrade_sock: cfg.upgrade_sock.clone(),
        pid_file: cfg.pid_file.clone(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let keys = Arc::new(KeyState::with_memory_lock(lock_keyring));
    let drain = Arc::new(drain::Drain::default());
    let metrics = Arc::new(metrics::Metrics::new());
    // Every configured client's throttle counter exists from the start (at 0), so alerts and
    // dashboards see the series before the first refusal.
    for client in cfg.clients.iter() {
        metrics.client_throttled.with_label_values(&[client.access_key.as_str()]);
    }
    metrics.core_dumps_disabled.set(i64::from(hardened));
    let needs_key = cfg.filters.contains(&FilterKind::Crypto);
    let chain = build_chain(&cfg, &parts.backend, &keys);
    let names = chain.names();
    let audit = cfg.audit_log.as_deref().map(|a| Arc::new(audit::Audit::open(a).unwrap_or_else(|e| die(e))));

    let proxy = service::S3Proxy {
        chain,
        backend: parts.backend.clone(),
        keys: keys.clone(),
        needs_key,
        vhost_suffix: cfg.virtual_host_suffix.clone(),
        metrics: metrics.clone(),
        audit,
        drain: drain.clone(),
    };
    let mut s3 = pingora::proxy::http_proxy_service_with_name(&server.configuration, proxy, "s3");
    match &cfg.tls {
        Some((cert, key)) => {
            s3.add_tls(&cfg.listen_addr, cert, key).unwrap_or_else(|e| die(format!("tls: {e}")));
            log::info!("S3 listener https://{} (certificate fingerprint {})", cfg.listen_addr, parts.fingerprint.as_deref().unwrap_or("?"));
        }
        None => {
            s3.add_tcp(&cfg.listen_addr);
            log::warn!("S3 listener http://{} WITHOUT TLS: configure tls.cert_file/key_file for production (PBS requires HTTPS)", cfg.listen_addr);
        }
    }
    server.add_service(s3);

    let keyd_holds_key = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin_api = admin::AdminApi {
        backend: parts.backend.clone(),
        rewrap: Arc::new(rewrap::Rewrapper::new(cfg.cipher)),
        keys: keys.clone(),
        metrics: metrics.clone(),
        token: cfg.admin_token.clone(),
        clients: cfg.clients.clone(),
        needs_key,
        ready_requires_keyd_key: cfg.ready_requires_keyd_key,
        keyd_holds_key: keyd_holds_key.clone(),
        started: SystemTime::now(),
        filters: names.clone(),
        memkey_endpoint: cfg.memkey_endpoint.clone(),
        allowed_buckets: cfg.allowed_buckets.clone(),
        core_dumps_disabled: hardened,
        upgrade_sock: cfg.upgrade_sock.clone(),
        pid_file: cfg.pid_file.clone(),
        drain: drain.clone(),
    };
    let mut admin = Service::new("admin".to_string(), HttpServer::new_app(admin_api));
    match &cfg.tls {
        Some((cert, key)) => admin.add_tls(&cfg.admin_listen_addr, cert, key).unwrap_or_else(|e| die(format!("tls: {e}"))),
        None => admin.add_tcp(&cfg.admin_listen_addr),
    }
    server.add_service(admin);

    if let Some(sock) = &cfg.memkey_socket {
        // Load the key before the listeners start, so that a process taking over from
        // another one (graceful upgrade) never answers 503 while its poller starts.
        let fetched = initial_key_fetch(PathBuf::from(sock), &keys, &metrics);
        keyd_holds_key.store(fetched, std::sync::atomic::Ordering::Relaxed);
        server.add_service(background_service(
            "keyd poller",
            background::KeyPoller {
                socket: PathBuf::from(sock),
                interval: cfg.poll_interval,
                keys: keys.clone(),
                metrics: metrics.clone(),
                keyd_holds_key: keyd_holds_key.clone(),
            },
        ));
    }
    server.add_service(background_service(
        "backend probe",
        background::BackendProbe {
            backend: parts.backend.clone(),
            bucket: cfg.allowed_buckets.first().cloned(),
            interval: cfg.poll_interval.max(Duration::from_secs(1)),
            metrics: metrics.clone(),
        },
    ));
    log::info!("s3-crypt-proxy {} starting: filters {:?}, backend {:?}, chunk cipher {} (format version {})", env!("CARGO_PKG_VERSION"), names, parts.backend, cfg.cipher, cfg.cipher.version());
    let stop_after = Duration::from_secs(cfg.drain_seconds);
    server.run(RunArgs { shutdown_signal: Box::new(drain::DrainingSignals { drain, stop_after }) });
    std::process::exit(0)
}
