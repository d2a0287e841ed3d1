"""Key rotation: a second key made current with memkey-admin; new objects use it, old ones
stay readable; the admin API re-wraps old objects to the current key and reports progress."""

import json
import os
import tempfile
import time
import urllib.request

import pytest

from conftest import BUCKET, Stack


@pytest.fixture(scope="module")
def rot_stack(workroot):
    d = tempfile.mkdtemp(prefix="rotation-", dir=workroot)
    s = Stack(d, "moto", tls=False)
    yield s
    s.stop()


def key_id_of(stack, key):
    """The key id an object is sealed with, as the audit log reports for a GET of it (the
    line is written just after the answer, so wait for it)."""
    def gets():
        with open(stack.proxy.config["audit_log"]) as f:
            lines = [json.loads(l) for l in f if l.strip()]
        return [l for l in lines if l["key"] == key and l["operation"] == "GetObject"]
    before = len(gets())
    stack.boto().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    deadline = time.time() + 5
    while len(gets()) == before and time.time() < deadline:
        time.sleep(0.05)
    return gets()[-1]["key_id"]


def admin(stack, method, path):
    p = stack.proxy
    req = urllib.request.Request(p.admin_url + path, method=method, headers={"Authorization": f"Bearer {p.admin_token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_rotation_and_rewrap(rot_stack):
    s3 = rot_stack.boto()
    old = {f"rot/old-{i}": os.urandom(1000 * i + 7) for i in range(6)}
    for k, v in old.items():
        s3.put_object(Bucket=BUCKET, Key=k, Body=v)
    assert key_id_of(rot_stack, "rot/old-1") == 1

    key2 = rot_stack.keyd.new_key(2)
    assert rot_stack.keyd.send_key(key2).returncode == 0
    deadline = time.time() + 10
    while admin(rot_stack, "GET", "/api/v1/key/status")[1].get("current_key_id") != 2 and time.time() < deadline:
        time.sleep(0.1)
    status = admin(rot_stack, "GET", "/api/v1/key/status")[1]
    assert status["current_key_id"] == 2 and status["key_ids"] == [1, 2]
    assert "key" not in json.dumps(status).replace("key_ids", "").replace("current_key_id", "").replace("loaded", "")

    s3.put_object(Bucket=BUCKET, Key="rot/new", Body=b"written under key 2")
    assert key_id_of(rot_stack, "rot/new") == 2
    for k, v in old.items():
        assert s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() == v

    code, job = admin(rot_stack, "POST", f"/api/v1/rewrap?bucket={BUCKET}&prefix=rot/")
    assert code == 202, job
    deadline = time.time() + 60
    while job["state"] == "running" and time.time() < deadline:
        time.sleep(0.2)
        job = admin(rot_stack, "GET", "/api/v1/rewrap")[1]
    assert job["state"] == "done", job
    assert job["total"] == 7 and job["done"] == 6 and job["already_current"] == 1 and job["failed"] == 0, job
    for k, v in old.items():
        assert s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() == v
        assert key_id_of(rot_stack, k) == 2
    # The rewrap API needs the admin token.
    req = urllib.request.Request(rot_stack.proxy.admin_url + "/api/v1/rewrap", method="GET")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 401
