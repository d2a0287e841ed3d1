"""A short soak (issue 7): 64 clients for about a minute of random PUT / GET / Range GET /
LIST / DELETE with random sizes through the full proxy on Garage, every answer checked
against what the client stored (s3cp-bench --workload soak). Zero errors, zero mismatches
and a flat proxy RSS, or the test fails. The 10-minute run: scripts/soak.sh."""

import json
import os
import subprocess
import tempfile

import pytest

import harness
from conftest import BUCKET, Stack

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DURATION = os.environ.get("S3CP_SOAK_DURATION", "60s")


def bench_binary():
    """s3cp-bench next to the other binaries (scripts/test.sh builds every workspace bin),
    else built here."""
    path = os.path.join(harness.BIN_DIR, "s3cp-bench")
    if os.path.exists(path):
        return path
    subprocess.run(["cargo", "build", "--locked", "-p", "s3cp-bench"], cwd=ROOT, check=True)
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT, check=True,
                          capture_output=True, text=True)
    return os.path.join(json.loads(meta.stdout)["target_directory"], "debug", "s3cp-bench")


@pytest.fixture(scope="module")
def soak_stack(workroot):
    d = tempfile.mkdtemp(prefix="soak-", dir=workroot)
    # LMDB: with SQLite, Garage answers some writes of 64 clients 503 "database is locked".
    s = Stack(d, "garage", tls=False, backend_args={"db_engine": "lmdb"})
    yield s
    s.stop()


def test_soak_64_clients(soak_stack):
    bench = bench_binary()
    p = soak_stack.proxy
    r = subprocess.run([bench, "--workload", "soak", "--endpoint", p.endpoint, "--access-key", p.access_key,
                        "--secret-key", p.secret_key, "--region", "us-east-1", "--bucket", BUCKET,
                        "--prefix", "soak-test", "--concurrency", "64", "--duration", DURATION, "--size", "8MiB",
                        "--rss-interval", "1s", "--progress", "15s", "--watch", f"proxy={p.proc.pid}", "--json"],
                       capture_output=True, text=True, timeout=900)
    print(r.stderr)
    assert r.stdout.strip(), r.stderr[-3000:]
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["errors"] == 0, rep["problems"]
    assert rep["mismatches"] == 0, rep["problems"]
    counts = {o["op"]: o["count"] for o in rep["ops"]}
    for op in ("put", "get", "range", "list", "delete", "get-404"):
        assert counts[op] > 0, counts
    (rss,) = rep["rss"]
    assert rss["ok"], rss
    assert rep["passed"] and r.returncode == 0, r.stderr[-3000:]
    # Nothing left behind: every client deleted its keys (checked by LIST in the bench too).
    left = soak_stack.direct.list_objects_v2(Bucket=BUCKET, Prefix="soak-test/").get("KeyCount", 0)
    assert left == 0
