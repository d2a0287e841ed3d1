"""The benchmark tool (scripts/bench.sh → bench/matrix.py) on a tiny run: HAProxy as a TLS relay,
the pass-through and the full proxy (also without verified writes) listening with TLS, the
default kinds of cells (a signed PUT with Content-MD5, whole objects read by Range requests as
s5cmd sends them, small objects with several clients), every cell answered without an error,
and the table reporting each target's throughput beside its server's and Garage's CPU per GiB
or per object."""

import json
import os
import subprocess
import sys
import tempfile

from test_soak import bench_binary

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_matrix_smoke(workroot):
    bin_dir = os.path.dirname(bench_binary())
    out = tempfile.mkdtemp(prefix="bench-matrix-", dir=workroot)
    cells = "put:1MiB:2:signed,ranged:1MiB:2,get:16KiB:4,put:16KiB:4"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "matrix.py"), "--bin-dir", bin_dir,
                        "--targets", "haproxy,pass,full,full-unverified", "--cells", cells, "--range-part", "256KiB", "--keys", "4",
                        "--duration", "0.5s", "--warmup", "0s", "--rss-size", "", "--out", out],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "S3CP_BIN_DIR": bin_dir})
    assert r.returncode == 0, r.stderr[-4000:]
    with open(os.path.join(out, "results.jsonl")) as f:
        results = [json.loads(line) for line in f]
    seen = set()
    server_cpu = {}
    for rep in results:
        assert not rep.get("failed"), rep
        assert rep["total"]["errors"] == 0, rep["total"]["first_error"]
        assert rep["total"]["requests"] > 0, rep
        # TLS on the client side for every target here (HAProxy and both proxies).
        assert rep["endpoint"].startswith("https://"), rep["endpoint"]
        procs = {p["name"]: p for p in rep["window"]["procs"]}
        server = "haproxy" if rep["target"] == "haproxy" else "proxy"
        assert server in procs and "garage" in procs, procs.keys()
        # A half-second window is a few 10 ms ticks: the server's CPU is checked over its cells.
        server_cpu[rep["target"]] = server_cpu.get(rep["target"], 0) + procs[server]["cpu_cores"]
        seen.add((rep["target"], rep["workload"], rep["payload"], rep["size"]))
    assert all(server_cpu[t] > 0 for t in ("haproxy", "pass", "full", "full-unverified")), server_cpu
    for t in ("haproxy", "pass", "full", "full-unverified"):
        for cell in (("put", "signed", 1 << 20), ("ranged", "unsigned", 1 << 20), ("get", "unsigned", 16 << 10),
                     ("put", "unsigned", 16 << 10)):
            assert (t, *cell) in seen, (t, cell, seen)
    # Ranged: whole objects, in 4 Range requests of 256 KiB each.
    ranged = [x for x in results if x["workload"] == "ranged"]
    assert all(x["range_len"] == 256 << 10 for x in ranged), ranged
    assert all(x["total"]["mib_s"] > 0 for x in ranged)
    with open(os.path.join(out, "table.md")) as f:
        table = f.read()
    assert "| get | 16KiB | 4 | haproxy |" in table, table
    assert "ms/obj" in table and "s/GiB" in table, table
    assert "put (signed+MD5) | 1MiB | 2 | full |" in table, table
    assert "put (signed+MD5) | 1MiB | 2 | full-unverified |" in table, table
