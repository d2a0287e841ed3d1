//! The PKCS#11 source against a real token: SoftHSM 2 with a token created by the test.
//! (End to end with memkey-server and the proxy: tests/e2e/test_unseal.py.)

use std::process::Command;

use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::object::{Attribute, AttributeType};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keyd::source::config::{Pin, Pkcs11Config};
use keyd::source::pkcs11::{generate_wrapping_key, Pkcs11Source};
use keyd::source::{seal, unseal, Reason};
use s3cp_format::keys::MasterKey;
use zeroize::Zeroizing;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

#[test]
fn softhsm_seal_unseal_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(&conf, format!("directories.tokendir = {}\n", tokens.display())).unwrap();
    // The only test in this binary: nothing else reads the environment concurrently.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let st = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "t", "--pin", "1234", "--so-pin", "5678"])
        .output()
        .expect("softhsm2-util (Debian package softhsm2, installed by scripts/bootstrap.sh)");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let cfg = |label: &str, pin: &str| Pkcs11Config {
        module: MODULE.into(),
        token_label: label.into(),
        pin: Pin::Value(Zeroizing::new(pin.into())),
    };

    generate_wrapping_key(&cfg("t", "1234"), "wrap").unwrap();
    assert_eq!(generate_wrapping_key(&cfg("t", "1234"), "wrap").unwrap_err().reason, Reason::Config, "labels stay unique");

    // The wrapping key never leaves the token: sensitive, not extractable.
    {
        let ctx = Pkcs11::new(MODULE).unwrap();
        ctx.initialize(CInitializeArgs::OsThreads).unwrap();
        let slot = ctx.get_slots_with_token().unwrap().into_iter().find(|s| ctx.get_token_info(*s).unwrap().label() == "t").unwrap();
        let s = ctx.open_ro_session(slot).unwrap();
        s.login(UserType::User, Some(&AuthPin::new("1234".into()))).unwrap();
        let h = s.find_objects(&[Attribute::Label(b"wrap".to_vec())]).unwrap()[0];
        let attrs = s.get_attributes(h, &[AttributeType::Sensitive, AttributeType::Extractable]).unwrap();
        assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
        assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
    }

    let key = MasterKey::generate(9);
    let src = Pkcs11Source::new(cfg("t", "1234"));
    let file = seal(&src, &key, [("key_label".to_owned(), "wrap".to_owned())]).unwrap();
    assert_eq!(file.params["mechanism"], "CKM_AES_GCM");
    assert_eq!(unseal(&src, &file).unwrap().expose(), key.expose());

    // Altered file: the AES-GCM tag (with the binding as AAD) does not verify.
    let mut kcv = file.clone();
    kcv.kcv = "0000000000000000".into();
    assert_eq!(unseal(&src, &kcv).unwrap_err().reason, Reason::Tampered);
    let mut id = file.clone();
    id.key_id = 10;
    assert_eq!(unseal(&src, &id).unwrap_err().reason, Reason::Tampered);

    // Wrong PIN, absent token, unknown key label.
    let e = unseal(&Pkcs11Source::new(cfg("t", "9999")), &file).unwrap_err();
    assert_eq!(e.reason, Reason::Auth);
    assert!(e.message.contains("PinIncorrect") && !e.message.contains("9999"), "{e}");
    assert_eq!(unseal(&Pkcs11Source::new(cfg("absent", "1234")), &file).unwrap_err().reason, Reason::Unreachable);
    let mut other = file.clone();
    other.params.insert("key_label".into(), "nope".into());
    assert_eq!(unseal(&src, &other).unwrap_err().reason, Reason::KeyUnavailable);
}
