//! Throughput over HTTPS on the loopback interface: a real memkey-server (in-process, TLS with
//! a self-signed certificate) and blocking HTTPS clients on keep-alive connections, all on
//! this machine's cores.
//!
//! `cargo bench -p keyd --bench loopback` (env: BENCH_SECS=5, BENCH_CLIENTS=4)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyd::config::TlsFiles;
use keyd::protocol::{self, ChallengeMsg};
use keyd::{Config, Server};
use s3cp_format::keys::MasterKey;

fn agent() -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(true)
        .build();
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .build(),
    )
}

fn run(
    name: &str,
    url: &str,
    fp: [u8; 32],
    clients: usize,
    secs: u64,
    deliver: bool,
    admin: &ed25519_dalek::SigningKey,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (stop, count, errors) = (stop.clone(), count.clone(), errors.clone());
            let url = url.to_owned();
            let admin = admin.clone();
            std::thread::spawn(move || {
                let a = agent();
                let key = MasterKey::new(1000 + i as u32, [i as u8; 32]);
                while !stop.load(Ordering::Relaxed) {
                    let ok = (|| -> Option<()> {
                        let mut r = a.get(&format!("{url}/challenge")).call().ok()?;
                        if r.status() != 200 {
                            return None;
                        }
                        let body = r.body_mut().read_to_vec().ok()?;
                        if !deliver {
                            return Some(());
                        }
                        let msg: ChallengeMsg = serde_json::from_slice(&body).ok()?;
                        let v = msg.verify(&fp).ok()?;
                        let sealed = protocol::seal_delivery(&v, &admin, &key, false).ok()?;
                        let body = serde_json::to_vec(&sealed.delivery.to_message()).ok()?;
                        let mut r = a.post(&format!("{url}/key")).send(&body[..]).ok()?;
                        let ack: protocol::DeliveryAck =
                            serde_json::from_slice(&r.body_mut().read_to_vec().ok()?).ok()?;
                        sealed.check_confirmation(&ack).ok()
                    })();
                    match ok {
                        Some(()) => count.fetch_add(1, Ordering::Relaxed),
                        None => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let n = count.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "loopback-https {name:<12} {clients} clients: {n} in {secs:.1}s = {:.0}/s ({} errors)",
        n as f64 / secs,
        errors.load(Ordering::Relaxed)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful: run briefly.
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let clients: usize = std::env::var("BENCH_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let tls = TlsFiles {
        cert: dir.path().join("c.pem"),
        key: dir.path().join("k.pem"),
    };
    std::fs::write(&tls.cert, ck.cert.pem()).unwrap();
    std::fs::write(&tls.key, ck.key_pair.serialize_pem()).unwrap();
    let admin = protocol::generate_identity();
    let mut cfg = Config::new(protocol::generate_identity());
    cfg.tls = Some(tls);
    cfg.admins = vec![admin.verifying_key()];
    cfg.max_pending_per_ip = 1 << 20;
    cfg.max_pending_challenges = 1 << 20;
    cfg.challenge_timeout = Duration::from_secs(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = rt.block_on(Server::start(cfg)).unwrap();
    let url = handle.url();
    let fp = protocol::parse_fingerprint(handle.fingerprint()).unwrap();
    println!(
        "cores available: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    run("challenges", &url, fp, clients, secs, false, &admin);
    run("deliveries", &url, fp, clients, secs, true, &admin);
    drop(handle);
}
