"""memkey-server unseals its master key with no administrator: from a sealed key file through a
PKCS#11 HSM (SoftHSM 2, token created here) or AWS KMS (moto's server mode). Objects written
before a restart of memkey-server and the proxy read back byte for byte after it; a wrong PIN,
a deleted KMS key, an unreachable KMS and a sealed key file altered on disk give one clear log
line each, memkey-server keeps running and the proxy answers 503 (S3 XML) until a key loads."""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request

import boto3
import botocore.config
import botocore.exceptions
import pytest
import yaml

import harness
from conftest import BUCKET

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
PIN, SO_PIN = "pin-4711-xyz", "so-pin-0815-xyz"
WRONG_PIN = "wrong-pin-9183"


class SealedKeyd(harness.Keyd):
    """memkey-server with a `key_source:` section and extra environment (PIN, credentials)."""

    def __init__(self, workdir, key_source, env=None):
        self.key_source, self.env = key_source, dict(env or {})
        super().__init__(workdir)

    def start(self):
        with open(self.conf) as f:
            cfg = yaml.safe_load(f)
        cfg["key_source"] = self.key_source
        with open(os.open(self.conf, os.O_WRONLY | os.O_TRUNC, 0o600), "w") as f:
            yaml.safe_dump(cfg, f)
        self.proc = harness.Proc([harness.binary("memkey-server"), "--config", self.conf], self.dir, "memkey-server",
                                 env=self.env)
        harness.wait_port(self.port, self.proc.p)

    def status(self):
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with urllib.request.urlopen(self.url + "/status", context=ctx, timeout=5) as r:
            return json.loads(r.read())

    def wait_status(self, pred, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = self.status()
            if pred(st):
                return st
            time.sleep(0.1)
        raise AssertionError(f"status never matched: {self.status()}\n{harness.tail(self.proc.log_path)}")

    def log(self):
        with open(self.proc.log_path, errors="replace") as f:
            return f.read()

    def wait_log(self, needle, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if needle in self.log():
                return
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} not in the memkey-server log:\n{harness.tail(self.proc.log_path)}")


class Forwarder:
    """A TCP relay on a port chosen before anything listens there (an 'unreachable' KMS that
    comes up later)."""

    def __init__(self, port, target_port):
        self.listener = socket.create_server(("127.0.0.1", port))
        self.target_port = target_port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self):
        self.listener.close()


def admin(*args, env=None, check=True):
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([harness.binary("memkey-admin"), *args], capture_output=True, text=True, env=full, check=check)


def master_key(d, key_id=1):
    path = os.path.join(d, f"master-{key_id}.key")
    admin("--config-dir", os.path.join(d, "adm"), "key", "generate", "--id", str(key_id), "--out", path)
    return path


def s3(proxy):
    return boto3.client("s3", endpoint_url=proxy.endpoint, region_name="us-east-1", verify=False,
                        aws_access_key_id=proxy.access_key, aws_secret_access_key=proxy.secret_key,
                        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def assert_503(proxy):
    """The proxy is up but has no key: S3 XML 503, and the process keeps running."""
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3(proxy).put_object(Bucket=BUCKET, Key="no-key", Body=b"x")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert e.value.response["Error"]["Code"], "an S3 error code in the XML body"
    assert proxy.proc.poll() is None
    status, body = proxy.admin_get("/readyz")
    assert status == 503 and json.loads(body)["key_loaded"] is False


def wait_metric(proxy, name, want, timeout=20, **labels):
    """The proxy mirrors memkey-server's key source status in its metrics (polled every 200 ms)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proxy.metric(name, **labels) == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name}{labels} = {proxy.metric(name, **labels)}, expected {want}")


def restart_roundtrip(keyd, proxy, objects):
    """Objects written now read back after memkey-server and the proxy restart, with no admin."""
    c = s3(proxy)
    for k, v in objects.items():
        c.put_object(Bucket=BUCKET, Key=k, Body=v)
    proxy.stop()
    keyd.stop()
    keyd.start()
    proxy.start()
    proxy.wait_ready(timeout=60)
    c = s3(proxy)
    for k, v in objects.items():
        assert c.get_object(Bucket=BUCKET, Key=k)["Body"].read() == v
    st = keyd.status()
    assert st["loaded"] and st["key_source"]["state"] == "loaded", st
    assert st["key_source"]["last_unseal_at"]
    # A figure for the report (run with -s), not an assertion.
    print(f"\nunseal time after restart, {st['key_source']['kind']}: {st['key_source']['last_unseal_ms']} ms")


def tamper(path, workdir, how):
    with open(path) as f:
        doc = json.load(f)
    if how == "key_id":
        doc["key_id"] += 1
    else:  # flip one bit of the wrapped key
        import base64
        raw = bytearray(base64.b64decode(doc["wrapped"]))
        raw[len(raw) // 2] ^= 1
        doc["wrapped"] = base64.b64encode(bytes(raw)).decode()
    out = os.path.join(workdir, f"tampered-{how}.json")
    with open(out, "w") as f:
        json.dump(doc, f)
    return out


# ---------------------------------------------------------------- PKCS#11 (SoftHSM 2)

@pytest.fixture(scope="module")
def hsm(workroot):
    d = tempfile.mkdtemp(prefix="unseal-hsm-", dir=workroot)
    tokens = os.path.join(d, "tokens")
    os.makedirs(tokens)
    conf = os.path.join(d, "softhsm2.conf")
    with open(conf, "w") as f:
        f.write(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    env = {"SOFTHSM2_CONF": conf}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "s3cp", "--pin", PIN, "--so-pin", SO_PIN],
                   check=True, capture_output=True, env={**os.environ, **env})
    pin_file = os.path.join(d, "hsm.pin")
    with open(os.open(pin_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(PIN + "\n")
    hsm_args = ["--module", SOFTHSM, "--token-label", "s3cp", "--pin-file", pin_file]
    admin("hsm", "init-key", "--key-label", "s3cp-wrap", *hsm_args, env=env)
    key = master_key(d)
    sealed = os.path.join(d, "master-1.sealed.json")
    r = admin("key", "seal", "--source", "pkcs11", "--key-label", "s3cp-wrap", *hsm_args, "--in", key, "--out", sealed, env=env)
    assert "sealed key file" in r.stdout
    backend = harness.Moto(d)
    boto3.client("s3", endpoint_url=backend.endpoint, region_name="us-east-1", aws_access_key_id="a",
                 aws_secret_access_key="b").create_bucket(Bucket=BUCKET)
    ns = type("Hsm", (), {})()
    ns.dir, ns.env, ns.pin_file, ns.sealed, ns.backend, ns.key = d, env, pin_file, sealed, backend, key
    ns.source = lambda files, pin_file=pin_file: {
        "kind": "pkcs11", "sealed_key_files": files, "retry_initial": "200ms", "retry_max": "1s",
        "pkcs11": {"module": SOFTHSM, "token_label": "s3cp", "pin_file": pin_file}}
    yield ns
    backend.stop()


def stack(parent, name, key_source, env, backend):
    d = os.path.join(parent, name)
    os.makedirs(d)
    keyd = SealedKeyd(d, key_source, env)
    proxy = harness.Proxy(d, backend, keyd, allowed_buckets=[BUCKET])
    return keyd, proxy


def test_hsm_unseals_at_start_and_after_restart(hsm):
    keyd, proxy = stack(hsm.dir, "ok", hsm.source([hsm.sealed]), hsm.env, hsm.backend)
    try:
        proxy.wait_ready(timeout=60)  # no `memkey-admin key send` anywhere
        keyd.wait_log("key id 1 unsealed from")
        # The audit log (stderr here) names the source; never key material.
        keyd.wait_log('"event":"unsealed"')
        audit = [json.loads(l[l.index("{"):]) for l in keyd.log().splitlines() if '"event":"unsealed"' in l]
        assert audit and audit[0]["source"] == "pkcs11" and audit[0]["key_id"] == 1, audit
        objects = {f"hsm/obj-{i}": os.urandom(1000 * i + 3) for i in range(4)}
        restart_roundtrip(keyd, proxy, objects)
        st = keyd.status()["key_source"]
        assert st["kind"] == "pkcs11" and st["failures"] == {}
        wait_metric(proxy, "s3_crypt_proxy_key_source_info", 1, kind="pkcs11", state="loaded")
        assert proxy.metric("s3_crypt_proxy_key_source_last_unseal_timestamp_seconds") >= time.time() - 600
    finally:
        proxy.stop()
        keyd.stop()


def test_hsm_wrong_pin_then_sighup(hsm):
    bad = os.path.join(hsm.dir, "wrong.pin")
    with open(bad, "w") as f:
        f.write(WRONG_PIN + "\n")
    keyd, proxy = stack(hsm.dir, "wrong-pin", hsm.source([hsm.sealed], pin_file=bad), hsm.env, hsm.backend)
    try:
        keyd.wait_log("PinIncorrect")
        st = keyd.wait_status(lambda s: s["key_source"]["state"] == "failed")
        assert st["key_source"]["failures"] == {"auth": 1}, "a wrong PIN is tried once (HSMs lock PINs)"
        assert not st["loaded"] and keyd.proc.poll() is None
        assert PIN not in keyd.log() and WRONG_PIN not in keyd.log()
        keyd.wait_log('"event":"refused"')
        assert '"reason":"auth"' in keyd.log() and '"source":"pkcs11"' in keyd.log()
        assert_503(proxy)
        wait_metric(proxy, "s3_crypt_proxy_key_source_unseal_failures", 1, reason="auth")
        wait_metric(proxy, "s3_crypt_proxy_key_source_info", 1, kind="pkcs11", state="failed")
        # The operator fixes the PIN file and sends SIGHUP: the key loads, no restart needed.
        with open(bad, "w") as f:
            f.write(PIN + "\n")
        keyd.proc.p.send_signal(signal.SIGHUP)
        proxy.wait_ready(timeout=60)
        assert keyd.status()["key_source"]["state"] == "loaded"
    finally:
        proxy.stop()
        keyd.stop()


def assert_altered_file_refused(source, how, env, backend, log_needle):
    """A sealed key file altered on disk (its wrapped key, or the key id bound to it) is refused:
    one clear log line, the source stops (no retry), memkey-server keeps running, the proxy 503s."""
    altered = tamper(source.sealed, source.dir, how)
    keyd, proxy = stack(source.dir, f"tampered-{how}", source.source([altered]), env, backend)
    try:
        keyd.wait_log(log_needle)
        st = keyd.wait_status(lambda s: s["key_source"]["state"] == "failed")
        assert st["key_source"]["failures"] == {"tampered": 1} and not st["loaded"] and keyd.proc.poll() is None
        assert_503(proxy)
    finally:
        proxy.stop()
        keyd.stop()


@pytest.mark.parametrize("how", ["wrapped", "key_id"])
def test_hsm_refuses_altered_file(hsm, how):
    assert_altered_file_refused(hsm, how, hsm.env, hsm.backend, "the sealed key file was altered")


def test_reseal_under_a_new_hsm_key(hsm):
    hsm_args = ["--module", SOFTHSM, "--token-label", "s3cp", "--pin-file", hsm.pin_file]
    admin("hsm", "init-key", "--key-label", "s3cp-wrap-2", *hsm_args, env=hsm.env)
    resealed = os.path.join(hsm.dir, "master-1.resealed.json")
    admin("key", "seal", "--source", "pkcs11", "--key-label", "s3cp-wrap-2", *hsm_args, "--in", hsm.sealed,
          "--out", resealed, env=hsm.env)
    with open(hsm.sealed) as a, open(resealed) as b:
        old, new = json.load(a), json.load(b)
    assert new["params"]["key_label"] == "s3cp-wrap-2" and new["kcv"] == old["kcv"] and new["wrapped"] != old["wrapped"]
    keyd, proxy = stack(hsm.dir, "resealed", hsm.source([resealed]), hsm.env, hsm.backend)
    try:
        proxy.wait_ready(timeout=60)
        assert keyd.status()["key_ids"] == [1]
    finally:
        proxy.stop()
        keyd.stop()


# ---------------------------------------------------------------- AWS KMS (moto)

KMS_ENV = {"AWS_ACCESS_KEY_ID": "kms-test", "AWS_SECRET_ACCESS_KEY": "kms-test-secret", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def kms(workroot):
    d = tempfile.mkdtemp(prefix="unseal-kms-", dir=workroot)
    moto = harness.Moto(d)  # serves S3 (the backend) and KMS
    boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1", aws_access_key_id="a",
                 aws_secret_access_key="b").create_bucket(Bucket=BUCKET)
    client = boto3.client("kms", endpoint_url=moto.endpoint, region_name="us-east-1",
                          aws_access_key_id="a", aws_secret_access_key="b")
    kms_key = client.create_key(Description="s3cp master key wrapping")["KeyMetadata"]["KeyId"]
    key = master_key(d)
    sealed = os.path.join(d, "master-1.sealed.json")
    admin("key", "seal", "--source", "aws-kms", "--kms-key-id", kms_key, "--endpoint", moto.endpoint, "--in", key,
          "--out", sealed, env=KMS_ENV)
    ns = type("Kms", (), {})()
    ns.dir, ns.moto, ns.client, ns.kms_key, ns.sealed, ns.key = d, moto, client, kms_key, sealed, key
    ns.source = lambda files, endpoint=moto.endpoint: {
        "kind": "aws-kms", "sealed_key_files": files, "retry_initial": "200ms", "retry_max": "1s",
        "aws_kms": {"region": "us-east-1", "endpoint": endpoint}}
    yield ns
    moto.stop()


def test_kms_unseals_at_start_and_after_restart(kms):
    with open(kms.sealed) as f:
        doc = json.load(f)
    assert doc["source"] == "aws-kms" and kms.kms_key in doc["params"]["kms_key_id"]
    keyd, proxy = stack(kms.dir, "ok", kms.source([kms.sealed]), KMS_ENV, kms.moto)
    try:
        proxy.wait_ready(timeout=60)
        objects = {f"kms/obj-{i}": os.urandom(777 * i + 1) for i in range(4)}
        restart_roundtrip(keyd, proxy, objects)
        assert KMS_ENV["AWS_SECRET_ACCESS_KEY"] not in keyd.log()
    finally:
        proxy.stop()
        keyd.stop()


def test_kms_reseal_under_a_new_kms_key(kms):
    new_key = kms.client.create_key()["KeyMetadata"]["KeyId"]
    resealed = os.path.join(kms.dir, "master-1.resealed.json")
    admin("key", "seal", "--source", "aws-kms", "--kms-key-id", new_key, "--endpoint", kms.moto.endpoint,
          "--in", kms.sealed, "--out", resealed, env=KMS_ENV)
    with open(kms.sealed) as a, open(resealed) as b:
        old, new = json.load(a), json.load(b)
    assert new_key in new["params"]["kms_key_id"] and new["kcv"] == old["kcv"]
    keyd, proxy = stack(kms.dir, "resealed", kms.source([resealed]), KMS_ENV, kms.moto)
    try:
        proxy.wait_ready(timeout=60)
    finally:
        proxy.stop()
        keyd.stop()


def test_kms_unreachable_then_up(kms):
    port = harness.free_port()  # nothing listens here yet
    keyd, proxy = stack(kms.dir, "unreachable", kms.source([kms.sealed], endpoint=f"http://127.0.0.1:{port}"),
                        KMS_ENV, kms.moto)
    fwd = None
    try:
        keyd.wait_log("cannot reach KMS at")
        keyd.wait_log("retrying in")
        st = keyd.wait_status(lambda s: s["key_source"]["failures"].get("unreachable", 0) >= 2)
        assert st["key_source"]["state"] == "retrying" and not st["loaded"]
        assert_503(proxy)
        fwd = Forwarder(port, kms.moto.port)  # the KMS comes up: the next retry loads the key
        proxy.wait_ready(timeout=60)
        assert keyd.status()["key_source"]["state"] == "loaded"
    finally:
        proxy.stop()
        keyd.stop()
        if fwd:
            fwd.stop()


@pytest.mark.parametrize("how", ["wrapped", "key_id"])
def test_kms_refuses_altered_file(kms, how):
    assert_altered_file_refused(kms, how, KMS_ENV, kms.moto, "InvalidCiphertextException")


def test_kms_deleted_key_keeps_503(kms):
    """A KMS key that no longer exists (moto 5.2 does not refuse Decrypt under a disabled key,
    so the revoked key here is a deleted one: moto's reset forgets every key)."""
    d = os.path.join(kms.dir, "revoked")
    os.makedirs(d)
    moto = harness.Moto(d)
    try:
        client = boto3.client("kms", endpoint_url=moto.endpoint, region_name="us-east-1",
                              aws_access_key_id="a", aws_secret_access_key="b")
        kms_key = client.create_key()["KeyMetadata"]["KeyId"]
        sealed = os.path.join(d, "sealed.json")
        admin("key", "seal", "--source", "aws-kms", "--kms-key-id", kms_key, "--endpoint", moto.endpoint, "--in", kms.key,
              "--out", sealed, env=KMS_ENV)
        urllib.request.urlopen(urllib.request.Request(moto.endpoint + "/moto-api/reset", method="POST"), timeout=10).read()
        keyd, proxy = stack(d, "stack", kms.source([sealed], endpoint=moto.endpoint), KMS_ENV, kms.moto)
        try:
            keyd.wait_log("NotFoundException")
            st = keyd.wait_status(lambda s: s["key_source"]["failures"].get("key_unavailable", 0) >= 2)
            assert not st["loaded"] and keyd.proc.poll() is None
            assert_503(proxy)
            # An administrator can still bridge the outage by delivering the key by hand.
            r = keyd.send_key(kms.key)
            assert r.returncode == 0, r.stderr
            proxy.wait_ready(timeout=30)
        finally:
            proxy.stop()
            keyd.stop()
    finally:
        moto.stop()


# ---------------------------------------------------------------- KMIP (PyKMIP)

def client_cert(workdir, name, cn):
    """A TLS client certificate (clientAuth) issued by the test CA."""
    ca_cert, ca_key = harness.test_ca(workdir)
    cert, key, csr, ext = (os.path.join(workdir, f"{name}.{e}") for e in ("crt", "key", "csr", "ext"))
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n")
    harness.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-subj", f"/CN={cn}", "-keyout", key, "-out", csr])
    harness.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
                 "-days", "2", "-extfile", ext, "-out", cert])
    return cert, key


class PyKmip:
    """PyKMIP's KMIP server over mutual TLS on 127.0.0.1."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "pykmip")
        os.makedirs(os.path.join(self.dir, "policies"), exist_ok=True)
        self.ca = harness.test_ca(workdir)[0]
        cert, key = harness.self_signed_cert(workdir, "pykmip-server")
        self.client_cert, self.client_key = client_cert(workdir, "kmip-client", "memkey-server")
        self.port = harness.free_port()
        self.conf = os.path.join(self.dir, "server.conf")
        with open(self.conf, "w") as f:
            f.write(f"""[server]
hostname=127.0.0.1
port={self.port}
certificate_path={cert}
key_path={key}
ca_path={self.ca}
auth_suite=TLS1.2
policy_path={os.path.join(self.dir, "policies")}
enable_tls_client_auth=True
logging_level=INFO
database_path={os.path.join(self.dir, "pykmip.db")}
""")
        self.proc = harness.Proc([shutil.which("pykmip-server"), "-f", self.conf, "-l", os.path.join(self.dir, "server.log")],
                                 self.dir, "pykmip")
        harness.wait_port(self.port, self.proc.p, timeout=60)

    def client(self):
        from kmip.pie.client import ProxyKmipClient
        from kmip.core import enums
        return ProxyKmipClient(hostname="127.0.0.1", port=self.port, cert=self.client_cert, key=self.client_key,
                               ca=self.ca, kmip_version=enums.KMIPVersion.KMIP_1_2)

    def create_aes_key(self, name):
        from kmip.core import enums
        with self.client() as c:
            return c.create(enums.CryptographicAlgorithm.AES, 256, name=name)

    def destroy(self, uid):
        with self.client() as c:
            c.destroy(uid)

    def args(self):
        return ["--kmip-server", f"127.0.0.1:{self.port}", "--kmip-ca-file", self.ca,
                "--kmip-client-cert", self.client_cert, "--kmip-client-key", self.client_key]

    def stop(self):
        self.proc.stop()


@pytest.fixture(scope="module")
def kmip(workroot):
    d = tempfile.mkdtemp(prefix="unseal-kmip-", dir=workroot)
    server = PyKmip(d)
    backend = harness.Moto(d)
    boto3.client("s3", endpoint_url=backend.endpoint, region_name="us-east-1", aws_access_key_id="a",
                 aws_secret_access_key="b").create_bucket(Bucket=BUCKET)
    uid = server.create_aes_key("s3cp-kek")
    key = master_key(d)
    sealed = os.path.join(d, "master-1.sealed.json")
    admin("key", "seal", "--source", "kmip", "--kmip-uid", uid, *server.args(), "--in", key, "--out", sealed)
    ns = type("Kmip", (), {})()
    ns.dir, ns.server, ns.backend, ns.uid, ns.key, ns.sealed = d, server, backend, uid, key, sealed
    ns.source = lambda files, port=server.port: {
        "kind": "kmip", "sealed_key_files": files, "retry_initial": "200ms", "retry_max": "1s",
        "kmip": {"host": "127.0.0.1", "port": port, "ca_file": server.ca, "client_cert": server.client_cert,
                 "client_key": server.client_key}}
    yield ns
    backend.stop()
    server.stop()


def test_kmip_unseals_at_start_and_after_restart(kmip):
    with open(kmip.sealed) as f:
        doc = json.load(f)
    assert doc["source"] == "kmip" and doc["params"]["kmip_uid"] == kmip.uid
    keyd, proxy = stack(kmip.dir, "ok", kmip.source([kmip.sealed]), {}, kmip.backend)
    try:
        proxy.wait_ready(timeout=60)
        objects = {f"kmip/obj-{i}": os.urandom(555 * i + 9) for i in range(4)}
        restart_roundtrip(keyd, proxy, objects)
        assert keyd.status()["key_source"]["kind"] == "kmip"
    finally:
        proxy.stop()
        keyd.stop()


@pytest.mark.parametrize("how", ["wrapped", "key_id"])
def test_kmip_refuses_altered_file(kmip, how):
    assert_altered_file_refused(kmip, how, {}, kmip.backend, "the sealed key file was altered")


def test_kmip_unreachable_then_destroyed_key(kmip):
    """Nothing listens: retried with back-off. A destroyed KMIP key: retried, 503 throughout."""
    uid = kmip.server.create_aes_key("s3cp-kek-doomed")
    sealed = os.path.join(kmip.dir, "doomed.sealed.json")
    admin("key", "seal", "--source", "kmip", "--kmip-uid", uid, *kmip.server.args(), "--in", kmip.key, "--out", sealed)
    kmip.server.destroy(uid)
    keyd, proxy = stack(kmip.dir, "doomed", kmip.source([sealed]), {}, kmip.backend)
    try:
        keyd.wait_log("item not found")
        st = keyd.wait_status(lambda s: s["key_source"]["failures"].get("key_unavailable", 0) >= 2)
        assert st["key_source"]["state"] == "retrying" and not st["loaded"]
        assert_503(proxy)
    finally:
        proxy.stop()
        keyd.stop()
    port = harness.free_port()
    keyd, proxy = stack(kmip.dir, "unreachable", kmip.source([kmip.sealed], port=port), {}, kmip.backend)
    fwd = None
    try:
        keyd.wait_log("cannot reach KMIP server")
        keyd.wait_status(lambda s: s["key_source"]["failures"].get("unreachable", 0) >= 2)
        assert_503(proxy)
        fwd = Forwarder(port, kmip.server.port)
        proxy.wait_ready(timeout=60)
    finally:
        proxy.stop()
        keyd.stop()
        if fwd:
            fwd.stop()
