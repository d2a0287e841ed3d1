//! memkey-server's key-delivery messages (`keyd::protocol`, `keyd::service`).
//!
//! Input: byte 0 picks the mode, the rest is a message body.
//! * 0 — protocol: the body as a `POST /key` body through `Delivery::from_json` and
//!   `open_delivery` with a fixed server identity, admin and issued challenge, and as a
//!   `GET /challenge` answer through `ChallengeMsg::verify` (the admin side) pinned to
//!   the fixed server. Properties: no panic; a parsed delivery survives
//!   `to_message` → JSON → `from_json` unchanged; `open_delivery` never succeeds, neither
//!   for the configured admin nor for the admin key the body names (the fuzzer holds no
//!   private key, and `verify_strict` must refuse weak keys); a challenge that verifies
//!   is the one the fixed server signed, with nothing but `expires_in` changed.
//! * 1 — service: the body through `KeyService::deliver` of a fresh server (fixed
//!   identity, one admin) that has just issued a challenge; the fixed challenge's hex in
//!   the body is replaced by the issued one's, so the fuzzer can reach the checks after the
//!   challenge lookup. Properties: never `Ok`; no key is loaded afterwards; a delivery that
//!   consumed the challenge cannot be replayed (`challenge_used`).
//! * 2 — tampering: the admin's valid delivery JSON, damaged by fuzzed mutations, then
//!   parsed and opened. Properties: the intact body opens to the delivered key; a damaged
//!   one opens only if every authenticated field (ephemeral key, nonce, ciphertext,
//!   signature) decodes to the original bytes, and then to the same key.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use keyd::protocol::{fingerprint, open_delivery, ChallengeMsg, Delivery, IssuedChallenge};
use keyd::service::KeyService;
use keyd::Config;
use libfuzzer_sys::fuzz_target;
use s3cp_fuzz::delivery as fx;
use s3cp_fuzz::{apply_mutations, Mutation};

struct Fixed {
    issued: IssuedChallenge,
    server_public: ed25519_dalek::VerifyingKey,
    admin_public: ed25519_dalek::VerifyingKey,
    fingerprint: [u8; 32],
    issued_message: ChallengeMsg,
    valid_json: Vec<u8>,
    valid: Delivery,
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let server = fx::server();
        let issued = fx::issued();
        let sealed = fx::valid_delivery();
        Fixed {
            issued_message: issued.to_message(&server, 30),
            issued,
            server_public: server.verifying_key(),
            admin_public: fx::admin().verifying_key(),
            fingerprint: fingerprint(&server.verifying_key()),
            valid_json: serde_json::to_vec(&sealed.delivery.to_message()).expect("serializes"),
            valid: sealed.delivery,
        }
    })
}

fn same_delivery(a: &Delivery, b: &Delivery) -> bool {
    a.challenge == b.challenge
        && a.admin_public_key == b.admin_public_key
        && a.admin_ephemeral == b.admin_ephemeral
        && a.nonce == b.nonce
        && a.ciphertext == b.ciphertext
        && a.signature == b.signature
}

fn protocol(body: &[u8]) {
    let f = fixed();
    if let Ok(d) = Delivery::from_json(body) {
        let json = serde_json::to_vec(&d.to_message()).expect("serializes");
        let again = Delivery::from_json(&json).expect("a re-serialized delivery parses");
        assert!(
            same_delivery(&d, &again),
            "to_message/from_json changed the delivery"
        );
        if let Ok(o) = open_delivery(&d, &f.issued, &f.server_public, &f.admin_public) {
            panic!(
                "forged delivery opened for the configured admin: key id {}",
                o.key.id()
            );
        }
        if let Ok(named) = ed25519_dalek::VerifyingKey::from_bytes(&d.admin_public_key) {
            if let Ok(o) = open_delivery(&d, &f.issued, &f.server_public, &named) {
                panic!(
                    "delivery opened for the admin key it names ({}): key id {}",
                    hex::encode(d.admin_public_key),
                    o.key.id()
                );
            }
        }
    }
    if let Ok(msg) = serde_json::from_slice::<ChallengeMsg>(body) {
        if let Ok(v) = msg.verify(&f.fingerprint) {
            let m = &f.issued_message;
            assert_eq!(
                hex::encode(v.challenge),
                m.challenge,
                "accepted a challenge the server never signed"
            );
            assert_eq!(v.timestamp, m.timestamp, "accepted a changed timestamp");
            assert_eq!(
                hex::encode(v.server_ephemeral),
                m.server_ephemeral,
                "accepted a changed ephemeral key"
            );
            assert_eq!(v.server_public, f.server_public);
        }
    }
}

fn service(body: &[u8]) {
    let f = fixed();
    let mut config = Config::new(fx::server());
    config.admins = vec![f.admin_public];
    let svc = KeyService::new(&config);
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    let issued = svc
        .issue_challenge(ip)
        .expect("a fresh server issues a challenge");
    // Point the body at the challenge just issued.
    let placeholder = hex::encode(fx::CHALLENGE);
    let text = String::from_utf8_lossy(body);
    let body: Vec<u8> = if text.contains(&placeholder) {
        text.replace(&placeholder, &issued.challenge).into_bytes()
    } else {
        body.to_vec()
    };

    let first = match svc.deliver(ip, &body) {
        Ok(ack) => panic!(
            "the service accepted a forged delivery: key id {}",
            ack.key_id
        ),
        Err(e) => e,
    };
    assert!(!svc.status().loaded, "a rejected delivery loaded a key");
    if !matches!(
        first.code,
        "malformed" | "unsupported_version" | "unknown_challenge"
    ) {
        // The challenge was found and consumed: the same body again is a replay.
        let second = svc.deliver(ip, &body).expect_err("replay accepted");
        assert_eq!(second.code, "challenge_used", "replay after {first:?}");
    }
}

fn tamper(data: &[u8]) -> arbitrary::Result<()> {
    let f = fixed();
    let muts: Vec<Mutation> = Vec::arbitrary_take_rest(Unstructured::new(data))?;
    let mut body = f.valid_json.clone();
    apply_mutations(&mut body, &muts);
    let Ok(d) = Delivery::from_json(&body) else {
        assert!(body != f.valid_json, "the valid delivery no longer parses");
        return Ok(());
    };
    match open_delivery(&d, &f.issued, &f.server_public, &f.admin_public) {
        Ok(o) => {
            let v = &f.valid;
            assert!(
                d.admin_ephemeral == v.admin_ephemeral
                    && d.nonce == v.nonce
                    && d.ciphertext == v.ciphertext
                    && d.signature == v.signature,
                "a modified delivery opened"
            );
            let want = fx::master_key();
            assert_eq!(o.key.id(), want.id());
            assert_eq!(o.key.expose(), want.expose());
            assert!(o.make_current);
        }
        Err(e) => assert!(
            body != f.valid_json,
            "the valid delivery failed to open: {e:?}"
        ),
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => protocol(rest),
        1 => service(rest),
        _ => {
            let _ = tamper(rest);
        }
    }
});
