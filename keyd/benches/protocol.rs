//! In-process throughput of the delivery protocol (no network):
//! `cargo bench -p keyd --bench protocol`

use std::net::IpAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keyd::protocol::{
    self, fingerprint, generate_identity, seal_delivery, Delivery, IssuedChallenge,
};
use keyd::service::KeyService;
use keyd::Config;
use s3cp_format::keys::MasterKey;

fn service() -> (KeyService, ed25519_dalek::SigningKey, [u8; 32]) {
    let admin = generate_identity();
    let mut cfg = Config::new(generate_identity());
    cfg.admins = vec![admin.verifying_key()];
    cfg.challenge_timeout = Duration::from_secs(1);
    cfg.max_pending_challenges = 1 << 22;
    cfg.max_pending_per_ip = usize::MAX;
    let fp = fingerprint(&cfg.identity.verifying_key());
    (KeyService::new(&cfg), admin, fp)
}

fn benches(c: &mut Criterion) {
    let ip: IpAddr = [127, 0, 0, 1].into();
    let (svc, admin, fp) = service();
    let key = MasterKey::generate(1);

    let mut g = c.benchmark_group("in_process");
    g.throughput(Throughput::Elements(1));
    g.bench_function("challenge_issue", |b| {
        b.iter(|| svc.issue_challenge(ip).unwrap())
    });
    g.bench_function("full_delivery", |b| {
        b.iter(|| {
            let verified = svc.issue_challenge(ip).unwrap().verify(&fp).unwrap();
            let sealed = seal_delivery(&verified, &admin, &key, true).unwrap();
            let body = serde_json::to_vec(&sealed.delivery.to_message()).unwrap();
            let ack = svc.deliver(ip, &body).unwrap();
            sealed.check_confirmation(&ack).unwrap();
        })
    });
    g.finish();

    // The pieces, to see where the time goes.
    let server = generate_identity();
    let mut g = c.benchmark_group("steps");
    g.bench_function("server_make_challenge", |b| {
        b.iter(|| IssuedChallenge::new(1).to_message(&server, 30))
    });
    let issued = IssuedChallenge::new(1);
    let msg = issued.to_message(&server, 30);
    let sfp = fingerprint(&server.verifying_key());
    g.bench_function("admin_verify_challenge", |b| {
        b.iter(|| msg.verify(&sfp).unwrap())
    });
    let verified = msg.verify(&sfp).unwrap();
    g.bench_function("admin_seal", |b| {
        b.iter(|| seal_delivery(&verified, &admin, &key, true).unwrap())
    });
    let sealed = seal_delivery(&verified, &admin, &key, true).unwrap();
    let d: Delivery = sealed.delivery.clone();
    g.bench_function("server_open", |b| {
        b.iter(|| {
            protocol::open_delivery(&d, &issued, &server.verifying_key(), &admin.verifying_key())
                .unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = group;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(group);
