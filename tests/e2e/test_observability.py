"""Metrics move as expected after known traffic; the audit log has the line for a known
request and no secrets; a TLS backend is verified against a configured CA; a replaced
certificate is served after a graceful upgrade."""

import json
import os
import signal
import ssl
import tempfile
import time

import boto3
import botocore.config
import pytest

import harness
from conftest import BUCKET, Stack


@pytest.fixture(scope="module")
def obs_stack(workroot):
    d = tempfile.mkdtemp(prefix="obs-", dir=workroot)
    s = Stack(d, "moto", tls=False)
    yield s
    s.stop()


def wait_metric(proxy, name, want, **labels):
    deadline = time.time() + 5
    while time.time() < deadline:
        v = proxy.metric(name, **labels)
        if v >= want:
            return v
        time.sleep(0.05)
    return proxy.metric(name, **labels)


def test_metrics_follow_known_traffic(obs_stack):
    p = obs_stack.proxy
    s3 = obs_stack.boto()
    base = {
        "put": p.metric("s3_crypt_proxy_requests_total", method="PUT", operation="PutObject", status="200"),
        "get": p.metric("s3_crypt_proxy_requests_total", method="GET", operation="GetObject", status="200"),
        "enc": p.metric("s3_crypt_proxy_bytes_encrypted_total"),
        "dec": p.metric("s3_crypt_proxy_bytes_decrypted_total"),
        "auth": p.metric("s3_crypt_proxy_auth_failures_total", reason="signature"),
        "hist": p.metric("s3_crypt_proxy_request_duration_seconds_count", operation="PutObject"),
    }
    body = os.urandom(100_000)
    for i in range(3):
        s3.put_object(Bucket=BUCKET, Key=f"metrics/{i}", Body=body)
    for i in range(2):
        s3.get_object(Bucket=BUCKET, Key=f"metrics/{i}")["Body"].read()
    bad = boto3.client("s3", endpoint_url=p.endpoint, region_name="us-east-1", aws_access_key_id=p.access_key,
                       aws_secret_access_key="wrong", config=botocore.config.Config(retries={"max_attempts": 1}))
    with pytest.raises(bad.exceptions.ClientError):
        bad.get_object(Bucket=BUCKET, Key="metrics/0")
    assert wait_metric(p, "s3_crypt_proxy_requests_total", base["put"] + 3, method="PUT", operation="PutObject", status="200") == base["put"] + 3
    assert wait_metric(p, "s3_crypt_proxy_requests_total", base["get"] + 2, method="GET", operation="GetObject", status="200") == base["get"] + 2
    assert p.metric("s3_crypt_proxy_bytes_encrypted_total") == base["enc"] + 3 * len(body)
    assert p.metric("s3_crypt_proxy_bytes_decrypted_total") == base["dec"] + 2 * len(body)
    assert wait_metric(p, "s3_crypt_proxy_auth_failures_total", base["auth"] + 1, reason="signature") == base["auth"] + 1
    assert p.metric("s3_crypt_proxy_request_duration_seconds_count", operation="PutObject") == base["hist"] + 3
    assert p.metric("s3_crypt_proxy_key_loaded") == 1
    assert p.metric("s3_crypt_proxy_backend_up") == 1
    assert p.metric("s3_crypt_proxy_active_requests") == 0


def test_audit_line_for_a_known_request(obs_stack):
    p = obs_stack.proxy
    body = b"audited body that must not appear in the log"
    obs_stack.boto().put_object(Bucket=BUCKET, Key="audit/known", Body=body)
    deadline = time.time() + 5
    line = None
    while line is None and time.time() < deadline:
        with open(p.config["audit_log"]) as f:
            text = f.read()
        lines = [json.loads(l) for l in text.splitlines() if l.strip()]
        line = next((l for l in lines if l["key"] == "audit/known"), None)
        time.sleep(0.05)
    assert line is not None
    assert line["operation"] == "PutObject" and line["method"] == "PUT" and line["bucket"] == BUCKET
    assert line["status"] == 200 and line["access_key"] == p.access_key and line["key_id"] == 1
    assert line["bytes_in"] >= len(body) and line["client"].startswith("127.0.0.1:")
    assert line["time"].endswith("Z") and line["duration_ms"] > 0
    assert body.decode() not in text
    assert p.secret_key not in text and p.config["backend"]["secret_key"] not in text


def test_key_status_needs_the_token_and_shows_no_key_material(obs_stack):
    p = obs_stack.proxy
    assert p.admin_get("/api/v1/key/status")[0] == 401
    assert p.admin_get("/api/v1/key/status", token="wrong")[0] == 401
    status, body = p.admin_get("/api/v1/key/status", token=p.admin_token)
    assert status == 200
    doc = json.loads(body)
    assert doc["loaded"] is True and doc["current_key_id"] == 1 and doc["loaded_at"]
    with open(obs_stack.key_file) as f:
        key_hex = f.read().split()[-1]
    assert key_hex not in body.decode()
    assert p.admin_get("/healthz")[0] == 200 and p.admin_get("/readyz")[0] == 200


def test_tls_backend_verified_with_a_custom_ca(workroot):
    d = tempfile.mkdtemp(prefix="tlsbackend-", dir=workroot)
    backend = harness.Moto(d, tls=True)
    try:
        boto3.client("s3", endpoint_url=backend.endpoint, region_name=backend.region, verify=backend.ca_file,
                     aws_access_key_id="a", aws_secret_access_key="b").create_bucket(Bucket=BUCKET)
        keyd = harness.Keyd(d)
        keyd.send_key(keyd.new_key(1))
        good = harness.Proxy(d, backend, keyd, tls=True, name="proxy-ca",
                             backend=dict(endpoint=backend.endpoint, region=backend.region, access_key="a",
                                          secret_key="b", path_style=True, ca_file=backend.ca_file))
        s = Stack.__new__(Stack)
        s.proxy = good
        c = s.client()
        assert c.put_object("tls/obj", b"over verified TLS").status == 200
        assert c.get_object("tls/obj").body == b"over verified TLS"
        # Without the CA the backend's certificate is not trusted: no request succeeds.
        untrusted = harness.Proxy(d, backend, keyd, tls=True, name="proxy-noca",
                                  backend=dict(endpoint=backend.endpoint, region=backend.region, access_key="a",
                                               secret_key="b", path_style=True))
        s.proxy = untrusted
        r = s.client().get_object("tls/obj")
        assert r.status == 503, r
        good.stop()
        untrusted.stop()
        keyd.stop()
    finally:
        backend.stop()


def test_certificate_replaced_by_graceful_upgrade(obs_stack, tmp_path):
    # A proxy with TLS in the same stack: replace its certificate files, upgrade, and the
    # new certificate is served without a moment of downtime.
    p = harness.Proxy(obs_stack.workdir, obs_stack.backend, obs_stack.keyd, tls=True, name="proxy-tls")
    try:
        def served():
            der = ssl.get_server_certificate(("127.0.0.1", p.port))
            return harness.cert_fingerprint_pem(der)
        before = served()
        new_cert, new_key = harness.self_signed_cert(str(tmp_path), "renewed")
        os.replace(new_cert, p.cert)
        os.replace(new_key, p.key)
        old = p.proc
        p.start(upgrade=True)
        time.sleep(0.5)
        os.kill(old.pid, signal.SIGQUIT)
        old.p.wait(timeout=30)
        after = served()
        assert before != after
        assert after == harness.cert_fingerprint(p.cert)
    finally:
        p.stop()
