"""m-of-n key delivery (Shamir shares) with the real memkey-server, memkey-admin and proxy;
memkey-server's audit log; `memkey-admin key verify` through the admin API and offline.

One module-scoped stack: objects are written with key 1 delivered the usual way, then
memkey-server is restarted configured for 2-of-3 shares (window 4 s, three admins) and the
proxy restarted too, so it starts with no key (503) until two admins have sent shares."""

import json
import os
import subprocess
import tempfile
import time

import botocore.exceptions
import pytest
import yaml

import harness
from conftest import BUCKET, Stack

WINDOW = 4  # seconds


class Admin:
    """One administrator workstation (its own memkey-admin config dir and identity)."""

    def __init__(self, keyd, name):
        self.keyd = keyd
        self.dir = os.path.join(keyd.dir, f"admin-{name}")
        self.run("init", "--server", keyd.url, "--fingerprint", keyd.fingerprint)
        self.public = self.run("identity").stdout.strip()

    def run(self, *args, check=True):
        return subprocess.run([harness.binary("memkey-admin"), "--config-dir", self.dir, *args],
                              capture_output=True, text=True, check=check)

    def send_share(self, share_file):
        return self.run("key", "send-share", "--share", share_file, "--cacert", harness.test_ca(self.keyd.dir)[0], check=False)

    def send_key(self, key_file):
        return self.run("key", "send", "--key-file", key_file, "--cacert", harness.test_ca(self.keyd.dir)[0], check=False)


@pytest.fixture(scope="module")
def mofn(workroot):
    d = tempfile.mkdtemp(prefix="shares-", dir=workroot)
    s = Stack(d, "moto", tls=False)
    s3 = s.boto()
    s.objects = {f"shares/obj-{i}": os.urandom(3000 * i + 11) for i in range(4)}
    for k, v in s.objects.items():
        s3.put_object(Bucket=BUCKET, Key=k, Body=v)

    keyd = s.keyd
    s.admins = [Admin(keyd, n) for n in ("alice", "bob", "carol")]
    s.intruder = Admin(keyd, "mallory")  # never added to admins:
    s.audit = os.path.join(keyd.dir, "audit.jsonl")
    with open(keyd.conf) as f:
        conf = yaml.safe_load(f)
    conf["admins"] = [a.public for a in s.admins]
    conf["shares"] = {"threshold": 2, "window": f"{WINDOW}s"}
    conf["audit"] = {"path": s.audit}
    with open(keyd.conf, "w") as f:
        yaml.safe_dump(conf, f)

    s.share_dir = os.path.join(d, "shares")
    r = keyd.admin("key", "split", "--shares", "3", "--threshold", "2", "--in", s.key_file, "--out-dir", s.share_dir,
                   *sum((["--admin", a.public] for a in s.admins), []))
    assert r.returncode == 0, r.stderr
    s.shares = sorted(os.path.join(s.share_dir, n) for n in os.listdir(s.share_dir))
    assert len(s.shares) == 3

    # Restart both: memkey-server forgets its key, the proxy starts without one.
    s.proxy.stop()
    keyd.stop()
    keyd.start()
    s.proxy.start()
    yield s
    s.stop()


def audit_events(s):
    if not os.path.exists(s.audit):
        return []
    with open(s.audit) as f:
        return [json.loads(line) for line in f if line.strip()]


def key_loaded(s):
    status, body = s.proxy.admin_get("/readyz")
    return json.loads(body)["key_loaded"]


def assert_proxy_refuses(s):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s.boto().get_object(Bucket=BUCKET, Key="shares/obj-1")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert e.value.response["Error"]["Code"]  # parsed from the S3 XML error body


def test_share_files_reveal_no_key(mofn):
    with open(mofn.key_file) as f:
        key_hex = f.read().split()[-1]
    for p in mofn.shares:
        assert os.stat(p).st_mode & 0o777 == 0o600
        text = open(p).read()
        assert key_hex not in text
        assert "threshold=2" in text and text.count("s3cp-key-share v1 1 ") == 1


def test_a_single_admin_cannot_load_a_key(mofn):
    r = mofn.admins[0].send_key(mofn.key_file)
    assert r.returncode == 6, r.stdout + r.stderr
    assert "shares_required" in r.stderr and "single admin" in r.stderr
    time.sleep(0.5)
    assert not key_loaded(mofn)
    assert_proxy_refuses(mofn)


def test_a_share_from_an_unknown_admin_is_refused(mofn):
    r = mofn.intruder.send_share(mofn.shares[2])
    assert r.returncode == 6, r.stdout + r.stderr
    assert "not in the server's admins list" in r.stderr
    refused = [e for e in audit_events(mofn) if e["event"] == "refused" and e["reason"] == "unknown_admin"]
    assert refused and refused[-1]["ip"] == "127.0.0.1"


def test_m_minus_one_shares_and_the_same_admin_twice_load_nothing(mofn):
    alice = mofn.admins[0]
    r = alice.send_share(mofn.shares[0])
    assert r.returncode == 0, r.stderr
    assert "1 of 2 admins" in r.stdout and "not loaded" in r.stdout
    # The same admin again, even with another share: still one admin.
    r = alice.send_share(mofn.shares[1])
    assert r.returncode == 0, r.stderr
    assert "already counted" in r.stdout and "1 of 2 admins" in r.stdout
    time.sleep(0.5)
    assert not key_loaded(mofn)
    assert_proxy_refuses(mofn)


def test_an_expired_window_discards_the_shares(mofn):
    time.sleep(WINDOW + 1.0)  # the server's timer discards alice's share
    expired = [e for e in audit_events(mofn) if e["event"] == "shares_expired"]
    assert expired and expired[-1]["discarded"] == 1 and expired[-1]["key_id"] == 1
    # bob's share now starts a new round: 1 of 2, nothing loaded.
    r = mofn.admins[1].send_share(mofn.shares[1])
    assert r.returncode == 0, r.stderr
    assert "1 of 2 admins" in r.stdout
    assert not key_loaded(mofn)


def test_m_distinct_admins_load_the_key_and_old_objects_are_served(mofn):
    r = mofn.admins[2].send_share(mofn.shares[2])
    assert r.returncode == 0, r.stderr
    assert "reconstructed from 2 admins' shares and loaded" in r.stdout
    deadline = time.time() + 10
    while not key_loaded(mofn) and time.time() < deadline:
        time.sleep(0.1)
    s3 = mofn.boto()
    for k, v in mofn.objects.items():
        assert s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() == v


def test_the_audit_log_has_every_event_and_no_key_material(mofn):
    events = audit_events(mofn)
    names = [e["event"] for e in events]
    for want in ("refused", "share_received", "shares_expired", "key_reconstructed"):
        assert want in names, names
    rec = [e for e in events if e["event"] == "key_reconstructed"][-1]
    fps = {a.public: __import__("hashlib").sha256(bytes.fromhex(a.public)).hexdigest() for a in mofn.admins}
    assert sorted(rec["admins"]) == sorted([fps[mofn.admins[1].public], fps[mofn.admins[2].public]])
    assert any(e["event"] == "refused" and e["reason"] == "shares_required" for e in events)
    for e in events:
        assert e["ts"].endswith("Z")
    text = open(mofn.audit).read()
    with open(mofn.key_file) as f:
        key_hex = f.read().split()[-1]
    assert key_hex not in text
    for p in mofn.shares:
        share_hex = open(p).read().split()[-1]
        assert share_hex not in text
    assert os.stat(mofn.audit).st_mode & 0o777 == 0o600


def verify(s, *args):
    return s.keyd.admin("key", "verify", "--bucket", BUCKET, *args, check=False)


def test_key_verify_through_the_admin_api(mofn):
    p = mofn.proxy
    r = verify(mofn, "--key-file", mofn.key_file, "--proxy-admin", p.admin_url, "--token", p.admin_token, "--prefix", "shares/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MATCH" in r.stdout and "key ids in use: [1]" in r.stdout
    # The shares carry the key id and key-check value too.
    r = verify(mofn, "--share", mofn.shares[0], "--proxy-admin", p.admin_url, "--token", p.admin_token)
    assert r.returncode == 0, r.stdout + r.stderr
    # Another key with the same id: a mismatch, caught before sending.
    wrong = os.path.join(mofn.workdir, "wrong-1.key")
    mofn.keyd.admin("key", "generate", "--id", "1", "--out", wrong)
    r = verify(mofn, "--key-file", wrong, "--proxy-admin", p.admin_url, "--token", p.admin_token)
    assert r.returncode == 6 and "MISMATCH" in r.stderr, r.stdout + r.stderr
    other_id = mofn.keyd.new_key(7)
    r = verify(mofn, "--key-file", other_id, "--proxy-admin", p.admin_url, "--token", p.admin_token)
    assert r.returncode == 6 and "no examined object" in r.stderr, r.stdout + r.stderr
    # The endpoint needs the admin token and never returns key material.
    status, body = p.admin_get(f"/api/v1/key/verify?bucket={BUCKET}&key_id=1&kcv=0000000000000000")
    assert status == 401
    status, body = p.admin_get(f"/api/v1/key/verify?bucket={BUCKET}&key_id=1&kcv=0000000000000000", token=p.admin_token)
    assert status == 200 and json.loads(body)["verdict"] == "mismatch"
    with open(mofn.key_file) as f:
        assert f.read().split()[-1] not in body.decode()


def test_key_verify_offline_on_a_raw_object(mofn):
    raw = os.path.join(mofn.workdir, "raw-object.bin")
    with open(raw, "wb") as f:
        f.write(mofn.stored("shares/obj-2"))
    r = verify(mofn, "--key-file", mofn.key_file, "--object", raw)
    assert r.returncode == 0 and "MATCH" in r.stdout, r.stdout + r.stderr
    r = verify(mofn, "--key-file", os.path.join(mofn.workdir, "wrong-1.key"), "--object", raw)
    assert r.returncode == 6 and "MISMATCH" in r.stderr, r.stdout + r.stderr


def test_a_wrong_reconstruction_is_refused_audited_and_wiped(mofn):
    # alice's share file corrupted on disk (one hex digit of the share value changed).
    text = open(mofn.shares[0]).read()
    head, value = text.rstrip("\n").rsplit(" ", 1)
    bad_value = ("0" if value[0] != "0" else "1") + value[1:]
    bad = os.path.join(mofn.workdir, "corrupted-share.key")
    with open(os.open(bad, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(f"{head} {bad_value}\n")
    r = mofn.admins[0].send_share(bad)
    assert r.returncode == 0 and "1 of 2 admins" in r.stdout, r.stdout + r.stderr
    r = mofn.admins[1].send_share(mofn.shares[1])
    assert r.returncode == 6, r.stdout + r.stderr
    assert "share_reconstruction_failed" in r.stderr and "discarded" in r.stderr
    refused = [e for e in audit_events(mofn) if e["event"] == "refused" and e["reason"] == "share_reconstruction_failed"]
    assert refused, audit_events(mofn)
    # The shares were wiped: bob's next share starts a new round (1 of 2), not a second failure.
    r = mofn.admins[1].send_share(mofn.shares[1])
    assert r.returncode == 0 and "1 of 2 admins" in r.stdout, r.stdout + r.stderr
    # The key loaded before is still served.
    assert mofn.boto().get_object(Bucket=BUCKET, Key="shares/obj-3")["Body"].read() == mofn.objects["shares/obj-3"]
