"""The remote-backend benchmark (scripts/bench.sh --remote → bench/remote.py) on a tiny run:
Garage behind HAProxy's TLS and s3cp-delay-relay's round trip, the client side and the backend
side pinned to separate CPUs (--pin), direct access against the full proxy with and without
verified writes. Every cell answers without an error, and the proxy's own counters show the
backend requests each client request costs: a PUT with If-None-Match: * one PUT and one HEAD
(conditional_writes: enforce on Garage), a whole GET one request."""

import json
import os
import subprocess
import sys
import tempfile

from test_soak import bench_binary

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_remote_smoke(workroot):
    bin_dir = os.path.dirname(bench_binary())
    out = tempfile.mkdtemp(prefix="bench-remote-", dir=workroot)
    # --no-netns: Garage on 127.0.0.1, so that the test needs no network namespace.
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "remote.py"), "--bin-dir", bin_dir, "--no-netns", "--pin",
                        "--rtt", "10ms", "--size", "1MiB", "--total", "4MiB", "--concurrency", "2",
                        "--targets", "direct,full,full-unverified", "--workloads", "put,get", "--min-free-gib", "0",
                        "--work-root", workroot, "--out", out],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "S3CP_BIN_DIR": bin_dir})
    assert r.returncode == 0, r.stderr[-4000:]
    with open(os.path.join(out, "results.jsonl")) as f:
        results = [json.loads(line) for line in f]
    seen = set()
    for rep in results:
        assert not rep.get("failed"), rep
        assert rep["total"]["errors"] == 0, rep["total"]["first_error"]
        assert rep["total"]["requests"] == 4, rep["total"]
        seen.add((rep["target"], rep["cell"]))
        pc = rep.get("proxy_counts")
        if rep["target"] == "direct":
            assert pc is None, rep
            continue
        backend = pc["backend"]
        if rep["cell"].startswith("put"):
            # Each new object: the PUT and the existence check that makes If-None-Match exact.
            assert pc["client"] == 4 and backend["proxied"] == 4 and backend["head"] == 4, pc
        else:
            assert backend["proxied"] == pc["client"] >= 4 and "head" not in backend, pc
    assert seen == {(t, c) for t in ("direct", "full", "full-unverified") for c in ("put:2", "get:2")}, seen
    with open(os.path.join(out, "table.md")) as f:
        table = f.read()
    assert "pinned to CPUs" in table, table
    assert "| full-unverified |" in table and "of direct" in table, table
