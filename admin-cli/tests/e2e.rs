//! End-to-end: the real `memkey-admin` binary against an in-process memkey-server over HTTPS
//! (self-signed certificate) and the Unix socket.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use keyd::config::TlsFiles;
use keyd::protocol::{self, ChallengeMsg, ErrorBody};
use keyd::{Config, Server, ServerHandle};
use s3cp_format::keys::{DerivedKeys, MasterKey};

const BIN: &str = env!("CARGO_BIN_EXE_memkey-admin");

struct Lab {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

struct Srv {
    handle: Option<ServerHandle>,
    url: String,
    fp: String,
    socket: PathBuf,
}

impl Lab {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        let cert = dir.path().join("memkey.crt");
        let key = dir.path().join("memkey.key");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        Self { rt, dir, cert, key }
    }

    fn admin_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a server with TLS and a Unix socket; `tweak` adjusts the config.
    fn server(
        &self,
        name: &str,
        identity: SigningKey,
        admins: &[&str],
        tweak: impl FnOnce(&mut Config),
    ) -> Srv {
        let run = self.dir.path().join(format!("run-{name}"));
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o750)).unwrap();
        let socket = run.join("memkey.sock");
        let mut cfg = Config::new(identity);
        cfg.tls = Some(TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
        });
        cfg.unix_socket_path = Some(socket.clone());
        cfg.admins = admins
            .iter()
            .map(|a| protocol::verifying_key_from_hex(a).unwrap())
            .collect();
        tweak(&mut cfg);
        let handle = self.rt.block_on(Server::start(cfg)).unwrap();
        Srv {
            url: handle.url(),
            fp: handle.fingerprint().to_owned(),
            socket,
            handle: Some(handle),
        }
    }

    fn admin(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(BIN)
            .env("MEMKEY_ADMIN_DIR", dir)
            .env_remove("XDG_CONFIG_HOME")
            .args(args)
            .output()
            .unwrap()
    }

    /// `init` against `srv` (insecure TLS: lab cert) and returns the admin public key.
    fn init(&self, dir: &Path, srv: &Srv, fp: &str) -> String {
        let o = self.admin(
            dir,
            &[
                "init",
                "--server",
                &srv.url,
                "--fingerprint",
                fp,
                "--cacert",
                self.cert.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "init: {}", text(&o));
        let o = self.admin(dir, &["identity"]);
        assert!(o.status.success());
        String::from_utf8(o.stdout).unwrap().trim().to_owned()
    }

    fn keyring(&self, srv: &Srv) -> Option<s3cp_format::KeyRing> {
        self.rt
            .block_on(keyd::client::fetch_keyring(&srv.socket))
            .unwrap()
    }

    fn status(&self, srv: &Srv) -> keyd::client::StatusInfo {
        self.rt
            .block_on(keyd::client::fetch_status(&srv.socket))
            .unwrap()
    }
}

impl Srv {
    fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().unwrap()
    }
    fn received(&self) -> u64 {
        self.handle()
            .service()
            .stats
            .deliveries_received
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh admin dir, server that knows the admin, and a generated key file.
fn ready_lab(tweak: impl FnOnce(&mut Config)) -> (Lab, Srv, PathBuf) {
    let lab = Lab::new();
    let admin_dir = lab.admin_dir("admin");
    let server_id = protocol::generate_identity();
    let fp = protocol::fingerprint_hex(&server_id.verifying_key());
    // Pin first (creates the identity), then start the server with that admin allowed.
    let pre = Srv {
        handle: None,
        url: "https://127.0.0.1:1".into(),
        fp: fp.clone(),
        socket: PathBuf::new(),
    };
    let admin_pub = lab.init(&admin_dir, &pre, &fp);
    std::fs::remove_file(admin_dir.join("config.yaml")).unwrap();
    let srv = lab.server("a", server_id, &[&admin_pub], tweak);
    let o = lab.admin(
        &admin_dir,
        &[
            "init",
            "--server",
            &srv.url,
            "--fingerprint",
            &fp,
            "--cacert",
            lab.cert.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    (lab, srv, admin_dir)
}

fn key_from_file(p: &Path) -> MasterKey {
    MasterKey::from_file_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn https_agent() -> ureq::Agent {
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

fn get_json(agent: &ureq::Agent, url: &str) -> (u16, serde_json::Value) {
    let mut r = agent.get(url).call().unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.body_mut().read_to_vec().unwrap()).unwrap(),
    )
}

fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> (u16, ErrorBody) {
    let mut r = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let status = r.status().as_u16();
    let bytes = r.body_mut().read_to_vec().unwrap();
    let parsed = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
        error: String::from_utf8_lossy(&bytes).into_owned(),
        code: "ok".into(),
        retry_after: None,
    });
    (status, parsed)
}

/// A sealed delivery body for `srv` built directly with the protocol library.
fn sealed_body(agent: &ureq::Agent, srv: &Srv, admin: &SigningKey, key: &MasterKey) -> Vec<u8> {
    let (st, v) = get_json(agent, &format!("{}/challenge", srv.url));
    assert_eq!(st, 200);
    let msg: ChallengeMsg = serde_json::from_value(v).unwrap();
    let verified = msg
        .verify(&protocol::parse_fingerprint(&srv.fp).unwrap())
        .unwrap();
    let sealed = protocol::seal_delivery(&verified, admin, key, true).unwrap();
    serde_json::to_vec(&sealed.delivery.to_message()).unwrap()
}

#[test]
fn delivery_over_https_then_proxy_reads_keyring_over_socket() {
    let (lab, srv, admin) = ready_lab(|_| {});
    assert!(lab.keyring(&srv).is_none(), "no key before delivery");
    let st = lab.status(&srv);
    assert!(!st.loaded && st.key_ids.is_empty() && st.current.is_none());

    let o = lab.admin(&admin, &["key", "generate", "--id", "5"]);
    assert!(o.status.success(), "{}", text(&o));
    let key_path = admin.join("master.key");
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Refuses to overwrite.
    let o = lab.admin(&admin, &["key", "generate", "--id", "5"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr(&o).contains("refusing to overwrite"));

    let o = lab.admin(&admin, &["key", "send"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("key id 5 delivered, current") && out.contains("confirmed"),
        "{out}"
    );

    let key = key_from_file(&key_path);
    let ring = lab.keyring(&srv).expect("key loaded");
    assert_eq!(ring.current_id(), 5);
    assert_eq!(ring.ids().collect::<Vec<_>>(), vec![5]);
    assert_eq!(ring.current().kek(), DerivedKeys::derive(&key).kek());

    let st = lab.status(&srv);
    assert!(st.loaded);
    assert_eq!((st.key_ids.clone(), st.current), (vec![5], Some(5)));
    assert!(
        st.loaded_at
            .as_deref()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 20),
        "{st:?}"
    );
    assert_eq!(st.fingerprint, srv.fp);

    // Status over HTTPS via the CLI, with fingerprint check.
    let o = lab.admin(&admin, &["status"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("matches the pinned one") && out.contains("ids [5], current 5"),
        "{out}"
    );
    assert!(!out.contains(&hex::encode(key.expose())));

    // Same key again: idempotent.
    let o = lab.admin(&admin, &["key", "send"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("was already loaded"));
}

#[test]
fn wrong_fingerprint_is_refused_before_the_key_leaves() {
    let (lab, srv, admin) = ready_lab(|_| {});
    assert!(lab.admin(&admin, &["key", "generate"]).status.success());
    let wrong = "ab".repeat(32);
    let o = lab.admin(
        &admin,
        &["key", "send", "--server", &format!("{}#{wrong}", srv.url)],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let err = stderr(&o);
    assert!(err.contains("FINGERPRINT MISMATCH"), "{err}");
    assert!(
        err.contains(&format!("expected {wrong}")) && err.contains(&format!("got {}", srv.fp)),
        "{err}"
    );
    assert!(err.contains("NOT sent"), "{err}");
    assert_eq!(srv.received(), 0, "no POST /key may reach the server");
    assert!(lab.keyring(&srv).is_none());

    // `status` also flags it.
    let o = lab.admin(
        &admin,
        &["status", "--server", &srv.url, "--fingerprint", &wrong],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
}

#[test]
fn unknown_admin_is_rejected_with_a_clear_message() {
    let (lab, srv, _admin) = ready_lab(|_| {});
    let other = lab.admin_dir("other");
    lab.init(&other, &srv, &srv.fp);
    assert!(lab.admin(&other, &["key", "generate"]).status.success());
    let o = lab.admin(&other, &["key", "send"]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(
        stderr(&o).contains("not in the server's admins list"),
        "{}",
        text(&o)
    );
    assert!(lab.keyring(&srv).is_none());
}

#[test]
fn lockout_is_reached_and_lifted() {
    let (lab, srv, _admin) = ready_lab(|c| {
        c.max_failed_attempts = 3;
        c.lockout_duration = Duration::from_secs(2);
    });
    let other = lab.admin_dir("intruder");
    lab.init(&other, &srv, &srv.fp);
    assert!(lab.admin(&other, &["key", "generate"]).status.success());
    for _ in 0..3 {
        let o = lab.admin(&other, &["key", "send"]);
        assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    }
    let o = lab.admin(&other, &["key", "send"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("locked out") && err.contains("time left: "),
        "{err}"
    );
    // Raw check: 429 with Retry-After.
    let agent = https_agent();
    let r = agent.get(&format!("{}/challenge", srv.url)).call().unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let ra: u64 = r
        .headers()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&ra), "{ra}");
    // Status is never locked.
    assert!(lab.admin(&other, &["status"]).status.success());
    std::thread::sleep(Duration::from_millis(2200));
    let o = lab.admin(&other, &["key", "send"]);
    assert_eq!(
        o.status.code(),
        Some(6),
        "lockout lifted, back to `unknown admin`: {}",
        text(&o)
    );
}

#[test]
fn replayed_delivery_is_rejected() {
    let lab = Lab::new();
    let admin = protocol::generate_identity();
    let apub = hex::encode(admin.verifying_key().as_bytes());
    let srv = lab.server("r", protocol::generate_identity(), &[&apub], |_| {});
    let agent = https_agent();
    let key = MasterKey::generate(1);
    let body = sealed_body(&agent, &srv, &admin, &key);
    let (st, _) = post(&agent, &format!("{}/key", srv.url), &body);
    assert_eq!(st, 200);
    let (st, e) = post(&agent, &format!("{}/key", srv.url), &body);
    assert_eq!((st, e.code.as_str()), (409, "challenge_used"), "{e:?}");
}

#[test]
fn expired_challenge_is_rejected() {
    let lab = Lab::new();
    let admin = protocol::generate_identity();
    let apub = hex::encode(admin.verifying_key().as_bytes());
    let srv = lab.server("x", protocol::generate_identity(), &[&apub], |c| {
        c.challenge_timeout = Duration::from_secs(1)
    });
    let agent = https_agent();
    let body = sealed_body(&agent, &srv, &admin, &MasterKey::generate(1));
    std::thread::sleep(Duration::from_millis(1300));
    let (st, e) = post(&agent, &format!("{}/key", srv.url), &body);
    assert!(
        (st, e.code.as_str()) == (410, "challenge_expired")
            || (st, e.code.as_str()) == (401, "unknown_challenge"),
        "{st} {e:?}"
    );
    assert!(lab.keyring(&srv).is_none());
}

#[test]
fn tampered_ciphertext_is_rejected() {
    let lab = Lab::new();
    let admin = protocol::generate_identity();
    let apub = hex::encode(admin.verifying_key().as_bytes());
    let srv = lab.server("t", protocol::generate_identity(), &[&apub], |_| {});
    let agent = https_agent();
    let body = sealed_body(&agent, &srv, &admin, &MasterKey::generate(1));
    let mut msg: keyd::protocol::DeliveryMsg = serde_json::from_slice(&body).unwrap();
    let mut ct = hex::decode(&msg.ciphertext).unwrap();
    ct[10] ^= 0x80;
    msg.ciphertext = hex::encode(&ct);
    let (st, e) = post(
        &agent,
        &format!("{}/key", srv.url),
        &serde_json::to_vec(&msg).unwrap(),
    );
    assert_eq!((st, e.code.as_str()), (401, "bad_signature"), "{e:?}");

    // Tampered and re-signed by the (buggy) admin: the AEAD still refuses it.
    let (st, v) = get_json(&agent, &format!("{}/challenge", srv.url));
    assert_eq!(st, 200);
    let verified = serde_json::from_value::<ChallengeMsg>(v)
        .unwrap()
        .verify(&protocol::parse_fingerprint(&srv.fp).unwrap())
        .unwrap();
    let sealed = protocol::seal_delivery(&verified, &admin, &MasterKey::generate(1), true).unwrap();
    let mut d = sealed.delivery.clone();
    d.ciphertext[0] ^= 1;
    use ed25519_dalek::Signer;
    d.signature = admin
        .sign(&protocol::delivery_signed_bytes(
            sealed.transcript(),
            &d.nonce,
            &d.ciphertext,
        ))
        .to_bytes();
    let (st, e) = post(
        &agent,
        &format!("{}/key", srv.url),
        &serde_json::to_vec(&d.to_message()).unwrap(),
    );
    assert_eq!((st, e.code.as_str()), (401, "decryption_failed"), "{e:?}");
    assert!(lab.keyring(&srv).is_none());
}

#[test]
fn malformed_requests_get_json_4xx_and_change_nothing() {
    let lab = Lab::new();
    let admin = protocol::generate_identity();
    let apub = hex::encode(admin.verifying_key().as_bytes());
    let srv = lab.server("m", protocol::generate_identity(), &[&apub], |c| {
        c.max_failed_attempts = 1
    });
    let agent = https_agent();
    let url = format!("{}/key", srv.url);
    for (body, status, code) in [
        (&b"not json"[..], 400, "malformed"),
        (b"{}", 400, "malformed"),
        (br#"{"version":9,"challenge":"","admin_public_key":"","admin_ephemeral":"","nonce":"","ciphertext":"","signature":""}"#, 400, "unsupported_version"),
    ] {
        let (st, e) = post(&agent, &url, body);
        assert_eq!((st, e.code.as_str()), (status, code), "{e:?}");
        assert!(!e.error.is_empty());
    }
    let (st, e) = post(&agent, &url, &vec![b'x'; 20_000]);
    assert_eq!((st, e.code.as_str()), (413, "body_too_large"));
    let r = agent.get(&url).call().unwrap();
    assert_eq!(r.status().as_u16(), 405);
    // max_failed_attempts = 1 and still not locked out: a valid delivery works.
    let body = sealed_body(&agent, &srv, &admin, &MasterKey::generate(1));
    assert_eq!(post(&agent, &url, &body).0, 200);
}

#[test]
fn key_raw_is_absent_on_tcp_and_socket_is_0660() {
    let (lab, srv, admin) = ready_lab(|_| {});
    let agent = https_agent();
    let (st, v) = get_json(&agent, &format!("{}/key/raw", srv.url));
    assert_eq!((st, v["code"].as_str()), (404, Some("not_found")));
    let (st, v) = get_json(&agent, &format!("{}/health", srv.url));
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")));

    let meta = std::fs::symlink_metadata(&srv.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    // On the socket: /key/raw answers 503 JSON before delivery, and /challenge does not exist.
    let raw = |path: &str| {
        let mut s = std::os::unix::net::UnixStream::connect(&srv.socket).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let r = raw("/key/raw");
    assert!(
        r.starts_with("HTTP/1.1 503") && r.contains(r#"{"error":"no key loaded","code":"no_key"}"#),
        "{r}"
    );
    assert!(raw("/challenge").starts_with("HTTP/1.1 404"));

    assert!(lab
        .admin(&admin, &["key", "generate", "--id", "9"])
        .status
        .success());
    assert!(lab.admin(&admin, &["key", "send"]).status.success());
    let r = raw("/key/raw");
    let body = &r[r.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let key = key_from_file(&admin.join("master.key"));
    assert_eq!(v["current"], 9);
    assert_eq!(v["keys"][0]["id"], 9);
    assert_eq!(v["keys"][0]["key"], hex::encode(key.expose()));
    assert!(v["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert!(r.contains("cache-control: no-store"));
}

#[test]
fn two_keys_loaded_and_current_switches() {
    let (lab, srv, admin) = ready_lab(|_| {});
    let k1 = admin.join("k1.key");
    let k2 = admin.join("k2.key");
    let k1b = admin.join("k1b.key");
    for (id, p) in [("1", &k1), ("2", &k2), ("1", &k1b)] {
        assert!(lab
            .admin(
                &admin,
                &["key", "generate", "--id", id, "--out", p.to_str().unwrap()]
            )
            .status
            .success());
    }
    let send = |extra: &[&str]| {
        let mut args = vec!["key", "send"];
        args.extend_from_slice(extra);
        lab.admin(&admin, &args)
    };
    assert!(send(&["--key-file", k1.to_str().unwrap()]).status.success());
    let o = send(&["--key-file", k2.to_str().unwrap(), "--no-make-current"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("not current"));
    let ring = lab.keyring(&srv).unwrap();
    assert_eq!(
        (ring.ids().collect::<Vec<_>>(), ring.current_id()),
        (vec![1, 2], 1)
    );
    assert!(send(&["--key-file", k2.to_str().unwrap()]).status.success());
    let ring = lab.keyring(&srv).unwrap();
    assert_eq!(
        (ring.ids().collect::<Vec<_>>(), ring.current_id()),
        (vec![1, 2], 2)
    );
    assert_eq!(
        ring.get(1).unwrap().kek(),
        DerivedKeys::derive(&key_from_file(&k1)).kek()
    );
    assert_eq!(
        ring.get(2).unwrap().kek(),
        DerivedKeys::derive(&key_from_file(&k2)).kek()
    );
    // A different key under an existing id is refused and changes nothing.
    let o = send(&["--key-file", k1b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(stderr(&o).contains("different key with this id"));
    let ring = lab.keyring(&srv).unwrap();
    assert_eq!(ring.current_id(), 2);
    assert_eq!(
        ring.get(1).unwrap().kek(),
        DerivedKeys::derive(&key_from_file(&k1)).kek()
    );
}

#[test]
fn one_command_delivers_to_several_servers() {
    let (lab, srv_a, admin) = ready_lab(|_| {});
    let apub = String::from_utf8(lab.admin(&admin, &["identity"]).stdout)
        .unwrap()
        .trim()
        .to_owned();
    let srv_b = lab.server("b", protocol::generate_identity(), &[&apub], |_| {});
    assert!(lab
        .admin(&admin, &["key", "generate", "--id", "3"])
        .status
        .success());
    // Per-server fingerprints in the URL#FP form.
    let o = lab.admin(
        &admin,
        &[
            "key",
            "send",
            "--server",
            &format!("{}#{}", srv_a.url, srv_a.fp),
            "--server",
            &format!("{}#{}", srv_b.url, srv_b.fp),
            "--cacert",
            lab.cert.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(lab.keyring(&srv_a).unwrap().current_id(), 3);
    assert_eq!(lab.keyring(&srv_b).unwrap().current_id(), 3);

    // Pin B with `init` too; then plain `key send` goes to both pinned servers.
    let o = lab.admin(
        &admin,
        &[
            "init",
            "--server",
            &srv_b.url,
            "--fingerprint",
            &srv_b.fp,
            "--cacert",
            lab.cert.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = lab.admin(&admin, &["key", "send"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches("was already loaded")
            .count(),
        2
    );

    // Fingerprints paired by position with --fingerprint.
    let o = lab.admin(
        &admin,
        &[
            "status",
            "--server",
            &srv_a.url,
            "--fingerprint",
            &srv_a.fp,
            "--server",
            &srv_b.url,
            "--fingerprint",
            &srv_b.fp,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // Mismatched counts are a usage error.
    let o = lab.admin(
        &admin,
        &[
            "status",
            "--server",
            &srv_a.url,
            "--server",
            &srv_b.url,
            "--fingerprint",
            &srv_a.fp,
        ],
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn tls_trust_and_unreachable_server() {
    let (lab, srv, admin) = ready_lab(|_| {});
    assert!(lab.admin(&admin, &["key", "generate"]).status.success());
    let target = format!("{}#{}", srv.url, srv.fp);
    // No --cacert and no --insecure-tls: the self-signed certificate is not trusted.
    let fresh = lab.admin_dir("fresh");
    lab.init(&fresh, &srv, &srv.fp);
    let o = Command::new(BIN)
        .env("MEMKEY_ADMIN_DIR", &fresh)
        .args(["status", "--server", &target])
        .output()
        .unwrap();
    // The stored entry carries --cacert from init, so this works...
    assert!(o.status.success(), "{}", text(&o));
    // ...but an unpinned URL form without trust settings fails with a TLS hint.
    let alias = srv.url.replace("127.0.0.1", "localhost");
    let o = lab.admin(
        &fresh,
        &["status", "--server", &format!("{alias}#{}", srv.fp)],
    );
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(stderr(&o).contains("--cacert"), "{}", text(&o));
    // --insecure-tls works: the key is still protected by the pinned fingerprint.
    let o = lab.admin(
        &admin,
        &[
            "key",
            "send",
            "--server",
            &format!("{alias}#{}", srv.fp),
            "--insecure-tls",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));

    // Unreachable.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let o = lab.admin(
        &admin,
        &[
            "key",
            "send",
            "--server",
            &format!("https://127.0.0.1:{dead}#{}", srv.fp),
        ],
    );
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(stderr(&o).contains("cannot reach"), "{}", text(&o));
}

#[test]
fn key_import_validates_and_protects_the_current_key() {
    let lab = Lab::new();
    let dir = lab.admin_dir("imp");
    let good = lab.dir.path().join("backup.key");
    std::fs::write(&good, MasterKey::generate(4).to_file_string().as_bytes()).unwrap();
    let bad = lab.dir.path().join("bad.key");
    std::fs::write(&bad, "s3cp-master-key v1 4 abcd\n").unwrap();
    let o = lab.admin(&dir, &["key", "import", "--file", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = lab.admin(&dir, &["key", "import", "--file", good.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let stored = dir.join("master.key");
    assert_eq!(
        std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        key_from_file(&stored).expose(),
        key_from_file(&good).expose()
    );
    let other = lab.dir.path().join("other.key");
    std::fs::write(&other, MasterKey::generate(5).to_file_string().as_bytes()).unwrap();
    let o = lab.admin(&dir, &["key", "import", "--file", other.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = lab.admin(
        &dir,
        &[
            "key",
            "import",
            "--file",
            other.to_str().unwrap(),
            "--force",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(key_from_file(&stored).id(), 5);
    // Sending without any server pinned: a usage error that says what to do.
    let o = lab.admin(&dir, &["key", "send"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("memkey-admin init"), "{}", text(&o));
}

#[test]
fn help_texts_explain_every_option_with_an_example() {
    for args in [
        &["--help"][..],
        &["init", "--help"],
        &["key", "generate", "--help"],
        &["key", "import", "--help"],
        &["key", "send", "--help"],
        &["status", "--help"],
    ] {
        let o = Command::new(BIN).args(args).output().unwrap();
        assert!(o.status.success());
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(help.contains("Example"), "{args:?}: {help}");
    }
}
