//! Time to unseal one sealed key file, per key source, as memkey-server does it at start-up:
//! PKCS#11 (SoftHSM 2: load the module, C_Initialize, log in, C_Decrypt) and AWS KMS (one
//! SigV4-signed Decrypt against moto's server mode on 127.0.0.1). Sources whose tool is
//! missing (softhsm2-util, moto_server) are skipped with a note.
//!
//! `cargo bench -p keyd --bench unseal` (env: BENCH_ROUNDS=20)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyd::source::config::{AwsKmsConfig, Pin, Pkcs11Config};
use keyd::source::{self, aws_kms::AwsKmsSource, pkcs11, KeySource};
use s3cp_format::keys::MasterKey;
use zeroize::Zeroizing;

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn report(name: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "unseal/{name:<8} rounds {:>3}  min {:>7.2} ms  median {:>7.2} ms  max {:>7.2} ms",
        times.len(),
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    );
}

fn time(src: &dyn KeySource, file: &source::SealedKeyFile, rounds: usize) -> Vec<Duration> {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            let k = source::unseal(src, file).expect("unseal");
            let d = t.elapsed();
            assert_eq!(k.id(), file.key_id);
            d
        })
        .collect()
}

fn pkcs11_bench(rounds: usize, key: &MasterKey) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(&conf, format!("directories.tokendir = {}\n", tokens.display())).unwrap();
    // Read by SoftHSM at C_Initialize; the bench is single-threaded here.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let ok = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin", "5678"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok || !std::path::Path::new(SOFTHSM).exists() {
        println!("unseal/pkcs11: skipped (softhsm2 not installed)");
        return;
    }
    let cfg = Pkcs11Config { module: SOFTHSM.into(), token_label: "bench".into(), pin: Pin::Value(Zeroizing::new("1234".into())) };
    pkcs11::generate_wrapping_key(&cfg, "wrap").unwrap();
    let src = pkcs11::Pkcs11Source::new(cfg);
    let file = source::seal(&src, key, [("key_label".to_owned(), "wrap".to_owned())]).unwrap();
    report("pkcs11", time(&src, &file, rounds));
}

fn kms_bench(rounds: usize, key: &MasterKey) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let Ok(mut moto) = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        println!("unseal/aws-kms: skipped (moto_server not on PATH; eval \"$(scripts/bootstrap.sh)\")");
        return;
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let cfg = AwsKmsConfig {
        region: "us-east-1".into(),
        endpoint: endpoint.clone(),
        ca_file: None,
        access_key_id: "bench".into(),
        secret_access_key: Zeroizing::new("bench-secret".into()),
        session_token: None,
        timeout: Duration::from_secs(10),
    };
    let created = ureq::post(&endpoint)
        .header("x-amz-target", "TrentService.CreateKey")
        .header("content-type", "application/x-amz-json-1.1")
        .header("authorization", "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0")
        .send("{}")
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let kms_key = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    let src = AwsKmsSource::new(cfg).unwrap();
    let file = source::seal(&src, key, [("kms_key_id".to_owned(), kms_key)]).unwrap();
    report("aws-kms", time(&src, &file, rounds));
    let _ = moto.kill();
    let _ = moto.wait();
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let key = MasterKey::generate(1);
    pkcs11_bench(rounds, &key);
    kms_bench(rounds, &key);
}
