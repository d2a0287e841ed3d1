"""Issue 17: three replicas behind HAProxy on a 3-node Garage cluster, proven under failures
(the short version of scripts/soak.sh --cluster; tests/e2e/cluster_drills.py builds it).

Each drill runs PBS-like load through HAProxy with TLS (s3cp-bench --pbs, retrying 5xx and
transport errors as clients do) plus boto3 multipart uploads and Range GETs, applies one
fault, and then demands: no operation failed after its retries, no read returned wrong
bytes, every acknowledged write reads back byte for byte through every replica, and raw
backend objects fetched straight from Garage decrypt with memkey-admin to the acknowledged
bytes. The figures of each drill are printed (pytest -s) and kept in cluster-drills.json in
the work directory."""

import json
import os
import tempfile
import time

import pytest

import cluster_drills as cd

# Short timings for CI (2 cores, debug builds): the five drills before "stop" with their end checks took
# 195–224 s here at load 8–15 (other builds on the same 2 cores); less on a quiet machine.
SHORT = {
    "kill": dict(seconds=16, lead=3, timing={"down": 2}),
    "upgrade": dict(seconds=16, lead=3, timing={"between": 1}),
    "stop": dict(seconds=24, lead=3, timing={"down": 2}),
    "garage": dict(seconds=28, lead=3, timing={"down": 15}),
    "keyd": dict(seconds=16, lead=3, timing={"down": 2}),
    "slow": dict(seconds=18, lead=3, timing={"down": 10}),
}
# What a client may have had to retry: 503 only (a replica without its backend, HAProxy with
# no usable server for a moment, or a DeleteObjects answer 200 whose DeleteResult holds a
# ServiceUnavailable for some key while a Garage node goes away), and while a replica is
# killed also the connection errors (and HAProxy's 502) of the requests it had in flight.
# botocore reported a 503 that arrived before it finished sending a body (a part upload
# reaching a replica that lost its backend) as a broken connection; since the replica reads
# a body it said 100 Continue to before it answers, the garage drill shows 503s only (2 of 2
# runs), but a connection error stays allowed for boto3.
# A Garage node that stops breaks off the answers it is streaming (its SIGTERM does not wait
# for them), and the replica must then cut its own answer to the client: a GET whose status
# went out can end only in a cut, never in a clean short body. So a stopped Garage node may
# also cause cuts ("cut": broken off after the status line), but never an answer-less close.
RETRYABLE = {"503", "503 in DeleteResult"}
RETRYABLE_WHEN_KILLED = RETRYABLE | {"502", "connection", "cut"}
RETRYABLE_BACKEND_STOPPED = RETRYABLE | {"cut"}
BOTO_RETRYABLE = RETRYABLE | {"connection"}


@pytest.fixture(scope="module")
def cluster(workroot):
    d = tempfile.mkdtemp(prefix="cluster-", dir=workroot)
    c = cd.Cluster(d)
    yield c
    c.stop()


def test_one_key_send_reaches_all_three_memkey_servers(cluster):
    for p in cluster.proxies:
        status, body = p.admin_get("/readyz")
        assert status == 200 and json.loads(body)["keyd_holds_key"], body
    assert cluster.lb.server_states() == {"proxy-a": 2, "proxy-b": 2, "proxy-c": 2}


def test_a_range_read_remembered_by_one_replica_follows_a_write_through_another(cluster):
    """Replicas keep their own memory of what they read (docs/object-format.md 6.3.2): a
    replica that remembers an object plans its next Range read from that memory, pinned to
    the version it read; after another replica replaced the object, the pinned request is
    refused and the read is planned anew, so the new bytes come back exactly."""
    import harness
    from test_pbs import blob
    a, b = cluster.proxies[0], cluster.proxies[1]
    via_a = cluster.boto(endpoint=a.endpoint, ca=harness.test_ca(a.dir)[0])
    via_b = cluster.boto(endpoint=b.endpoint, ca=harness.test_ca(b.dir)[0])
    key = "remembered/replaced-elsewhere"
    old, new = blob(3 << 20, key + "-old"), blob((3 << 20) + 777, key + "-new")
    via_a.put_object(Bucket=cd.BUCKET, Key=key, Body=old)
    spec = "bytes=2000000-2000099"

    def read():
        r = via_b.get_object(Bucket=cd.BUCKET, Key=key, Range=spec)
        return r["ContentRange"], r["Body"].read()

    assert read() == (f"bytes 2000000-2000099/{len(old)}", old[2000000:2000100])
    memory = b.metric("s3_crypt_proxy_read_plans_total", plan="memory")
    assert read()[1] == old[2000000:2000100]
    via_a.put_object(Bucket=cd.BUCKET, Key=key, Body=new)
    replanned = b.metric("s3_crypt_proxy_read_plans_total", plan="replanned")
    assert read() == (f"bytes 2000000-2000099/{len(new)}", new[2000000:2000100])
    # Counted as each request ends (after the client has its answer).
    deadline = time.time() + 5
    while b.metric("s3_crypt_proxy_read_plans_total", plan="replanned") < replanned + 1 and time.time() < deadline:
        time.sleep(0.05)
    assert b.metric("s3_crypt_proxy_read_plans_total", plan="replanned") == replanned + 1
    assert b.metric("s3_crypt_proxy_read_plans_total", plan="memory") >= memory + 1
    # No idle connection of this test is left to the replicas the drills upgrade and kill.
    via_a.close()
    via_b.close()


@pytest.mark.parametrize("name", list(SHORT))
def test_drill(cluster, name):
    r = cd.run_drill(cluster, name, clients=8, max_size="1MiB", **SHORT[name])
    with open(os.path.join(cluster.workdir, "..", "cluster-drills.json"), "a") as f:
        f.write(json.dumps(r) + "\n")
    print("\n" + cd.summary_line(r))
    print(json.dumps(r["fault"]))
    s, b = r["soak"], r["boto"]
    assert s.get("attempted"), s
    assert s["errors"] == 0 and not s["failed"], (s["failed"], s["problems"])
    assert s["mismatches"] == 0, s["problems"]
    allowed = {"kill": RETRYABLE_WHEN_KILLED, "garage": RETRYABLE_BACKEND_STOPPED}.get(name, RETRYABLE)
    assert set(s["retried"]) <= allowed, (s["retried"], s["problems"])
    assert not b["failed"] and b["wrong_bytes"] == 0, b
    assert set(b["retried"]) <= allowed | BOTO_RETRYABLE, b["retried"]
    for replica, v in r["verify"].items():
        assert v.get("passed") and v["objects"] > 0, (replica, v)
        assert v["lost"] == 0 and v["wrong_bytes"] == 0, (replica, v["problems"])
    assert r["decrypt_sample"] and all(d["ok"] for d in r["decrypt_sample"]), r["decrypt_sample"]

    f = r["fault"]
    assert f["ended_under_load"], f
    if name == "kill":
        assert f["readyz_after_restart"]["key_loaded"] and f["readyz_after_restart"]["keyd_holds_key"], f
    elif name == "upgrade":
        assert len(f["upgrades"]) == 3 and all(u["new_pid"] != u["old_pid"] for u in f["upgrades"]), f
        assert all(u["old_exit_code"] == 0 for u in f["upgrades"]), f
    elif name == "stop":
        # HAProxy took the replica out while it still answered (drain_seconds 5), and it
        # stopped cleanly.
        assert f["marked_down_after_s"] < f["exited_after_s"] and f["exit_code"] == 0, f
    elif name == "garage":
        # Replica c's backend (node 3) was gone: it left the pool through /readyz.
        assert f["replica_c_marked_down_after_s"] is not None, f
    elif name == "keyd":
        status, body = f["readyz_without_keyd_key"]
        assert status == 503 and body["key_loaded"] and not body["keyd_holds_key"], f
        assert f["key_send_exit"] == 0, f["key_send_output"]

