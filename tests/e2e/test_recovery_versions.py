"""The README's recovery walkthrough, end to end with aws-cli on moto: a backup prefix in an
Object Lock bucket is overwritten and deleted by a compromised client; the locked versions
cannot be deleted, and scripts/restore-point-in-time.sh puts every object back to its state
at a point in time, through the proxy."""

import json
import os
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import BUCKET, Stack

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
BACKUPS = "backups"


@pytest.fixture(scope="module")
def rstack(workroot):
    d = tempfile.mkdtemp(prefix="recovery-versions-", dir=workroot)
    s = Stack(d, "moto", tls=False, allowed_buckets=[BUCKET, BACKUPS])
    yield s
    s.stop()


def env_of(stack):
    p = stack.proxy
    env = dict(os.environ, AWS_ACCESS_KEY_ID=p.access_key, AWS_SECRET_ACCESS_KEY=p.secret_key, AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null", S3_ENDPOINT=p.endpoint)
    env.pop("AWS_CA_BUNDLE", None)
    return env


def aws(stack, *args, check=True):
    r = subprocess.run(["aws", "--endpoint-url", stack.proxy.endpoint, *args], env=env_of(stack), capture_output=True, text=True)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def restore(stack, *args):
    r = subprocess.run([os.path.join(ROOT, "scripts", "restore-point-in-time.sh"), *args], env=env_of(stack), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout
    return r.stdout


def test_restore_a_prefix_to_a_point_in_time(rstack, tmp_path):
    aws(rstack, "s3api", "create-bucket", "--bucket", BACKUPS, "--object-lock-enabled-for-bucket")
    # (A default retention rule makes the backend demand a checksum of every stored body:
    # that needs verified writes; until then the backup client sets retention per version.)
    until = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    # Last night's backup: small files and one large enough for a multipart upload.
    originals = {"host1/index.json": os.urandom(2_000), "host1/chunks/a": os.urandom(300_000), "host1/disk.img": os.urandom(9 << 20),
                 "host1/name with space": b"space"}
    original_versions = {}
    for key, data in originals.items():
        f = tmp_path / "upload"
        f.write_bytes(data)
        aws(rstack, "s3", "cp", str(f), f"s3://{BACKUPS}/{key}")
        # The backup client asks for retention explicitly (as PBS or restic can).
        head = json.loads(aws(rstack, "s3api", "head-object", "--bucket", BACKUPS, "--key", key).stdout)
        original_versions[key] = head["VersionId"]
        aws(rstack, "s3api", "put-object-retention", "--bucket", BACKUPS, "--key", key, "--version-id", head["VersionId"],
            "--retention", json.dumps({"Mode": "COMPLIANCE", "RetainUntilDate": until}))
    time.sleep(1.5)
    good_state = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    time.sleep(1.5)

    # The compromised client overwrites, deletes and adds.
    junk = tmp_path / "junk"
    junk.write_bytes(b"encrypted by ransomware" * 100)
    for key in ("host1/index.json", "host1/disk.img"):
        aws(rstack, "s3", "cp", str(junk), f"s3://{BACKUPS}/{key}")
    aws(rstack, "s3", "rm", f"s3://{BACKUPS}/host1/chunks/a")
    aws(rstack, "s3", "rm", f"s3://{BACKUPS}/host1/name with space")
    aws(rstack, "s3", "cp", str(junk), f"s3://{BACKUPS}/host1/README-ransom")
    # Removing the versions themselves is refused: compliance-mode retention.
    versions = json.loads(aws(rstack, "s3api", "list-object-versions", "--bucket", BACKUPS, "--prefix", "host1/").stdout)
    for key, version in original_versions.items():
        r = aws(rstack, "s3api", "delete-object", "--bucket", BACKUPS, "--key", key, "--version-id", version, check=False)
        assert r.returncode != 0 and "AccessDenied" in r.stderr, r.stderr
    # The listing shows plaintext sizes, and the delete markers.
    sizes = {(v["Key"], v["Size"]) for v in versions["Versions"]}
    assert all((k, len(d)) in sizes for k, d in originals.items())
    assert {m["Key"] for m in versions["DeleteMarkers"]} == {"host1/chunks/a", "host1/name with space"}

    plan = restore(rstack, "--dry-run", BACKUPS, "host1/", good_state)
    assert "restored 4, deleted 1 (dry run" in plan, plan
    out = restore(rstack, BACKUPS, "host1/", good_state)
    assert "restored 4, deleted 1" in out, out
    for key, data in originals.items():
        f = tmp_path / "download"
        aws(rstack, "s3", "cp", f"s3://{BACKUPS}/{key}", str(f))
        assert f.read_bytes() == data, key
    listed = json.loads(aws(rstack, "s3api", "list-objects-v2", "--bucket", BACKUPS, "--prefix", "host1/").stdout)
    assert {(o["Key"], o["Size"]) for o in listed["Contents"]} == {(k, len(d)) for k, d in originals.items()}
    # Every version is still there: the restore only added versions and a delete marker.
    after = json.loads(aws(rstack, "s3api", "list-object-versions", "--bucket", BACKUPS, "--prefix", "host1/").stdout)
    assert {v["VersionId"] for v in versions["Versions"]} <= {v["VersionId"] for v in after["Versions"]}
