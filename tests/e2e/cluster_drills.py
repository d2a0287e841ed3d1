"""The reference deployment of issue 17 and its failure drills, shared by the short CI run
(tests/e2e/test_cluster.py) and the full soak (scripts/soak.sh --cluster, bench/soak.py).

The cluster, all on 127.0.0.1: a 3-node Garage (replication factor 3, one zone per node,
LMDB), three s3-crypt-proxy replicas each with its own memkey-server (the key delivered to
all three by one `memkey-admin key send`), TLS on every client-facing listener, and HAProxy
in front running deploy/haproxy/haproxy.cfg (health checks on /readyz, key affinity by path).
Replica i uses Garage node i as its backend, as when each proxy runs beside a storage node.

A drill runs PBS-like load through HAProxy (s3cp-bench --workload soak --pbs: signed chunk
uploads with Content-MD5 and If-None-Match: *, index replaces, listings, DeleteObjects
batches, whole and Range GETs, retried on 500/502/503/504 and transport errors) and a boto3
client (multipart uploads over TLS, hence aws-chunked with trailers, and Range GETs), applies
one fault meanwhile, and then checks the end state: every acknowledged write reads back
byte for byte through EVERY replica (s3cp-bench --workload verify), and a sample of raw
backend objects fetched straight from Garage decrypts with `memkey-admin object decrypt`."""

import hashlib
import json
import os
import random
import signal
import subprocess
import threading
import time

import boto3
import botocore.config
from boto3.s3.transfer import TransferConfig

import harness

BUCKET = "pbs-cluster"
REPLICAS = 3


class Cluster:
    def __init__(self, workdir, debug_logs=False):
        self.workdir = workdir
        self.garage = self.keys = self.lb = None
        self.proxies = []
        try:
            self._start(debug_logs)
        except BaseException:
            self.stop()
            raise

    def _start(self, debug_logs):
        self.garage = harness.GarageCluster(self.workdir)
        self.direct = [self._direct(n) for n in self.garage.nodes]
        self.direct[0].create_bucket(Bucket=BUCKET)
        self.keys = harness.KeyServers(self.workdir, REPLICAS)
        self.key_file = self.keys.new_key(1)
        r = self.keys.send_key(self.key_file)
        assert r.returncode == 0, r.stdout + r.stderr
        self.send_output = r.stdout + r.stderr
        creds = {"access_key": "pbs-client", "secret_key": "pbs-client-secret-" + os.urandom(8).hex()}
        for i in range(REPLICAS):
            keyd = self.keys.servers[i]
            self.proxies.append(harness.Proxy(
                self.workdir, self.garage.nodes[i], keyd, name=f"proxy-{chr(ord('a') + i)}",
                client=dict(creds), allowed_buckets=[BUCKET], conditional_writes="enforce",
                log_level="info" if debug_logs else "warn",
                memkey={"socket_path": keyd.socket, "poll_interval": "200ms", "ready_requires_keyd_key": True},
                # Requests in flight when a replica is upgraded finish within these (debug
                # builds on a loaded 2-core machine are slow).
                server={"upgrade_sock": os.path.join(self.workdir, f"proxy-{i}-upgrade.sock"),
                        "pid_file": os.path.join(self.workdir, f"proxy-{i}.pid"),
                        "grace_period_seconds": 2, "graceful_shutdown_timeout_seconds": 20, "threads": 2,
                        # The shipped default: a stop serves on for 5 s with /readyz 503.
                        "drain_seconds": 5}))
        for p in self.proxies:
            p.wait_ready(timeout=60)
        self.lb = harness.HAProxy(self.workdir, self.proxies)
        self.lb.wait_up()
        self.lb_ca = harness.test_ca(self.lb.dir)[0]

    def _direct(self, node):
        return boto3.client("s3", endpoint_url=node.endpoint, region_name="garage",
                            aws_access_key_id=self.garage.access_key, aws_secret_access_key=self.garage.secret_key,
                            config=botocore.config.Config(s3={"addressing_style": "path"},
                                                          retries={"max_attempts": 5, "mode": "standard"}))

    def boto(self, endpoint=None, ca=None, max_attempts=10):
        p = self.proxies[0]
        return boto3.client("s3", endpoint_url=endpoint or self.lb.endpoint, region_name="us-east-1",
                            verify=ca or self.lb_ca, aws_access_key_id=p.access_key, aws_secret_access_key=p.secret_key,
                            config=botocore.config.Config(s3={"addressing_style": "path"}, max_pool_connections=8,
                                                          retries={"max_attempts": max_attempts, "mode": "standard"},
                                                          connect_timeout=10, read_timeout=120))

    def stop(self):
        for part in [self.lb, *self.proxies, self.keys, self.garage]:
            if part is None:
                continue
            try:
                if part in self.proxies:
                    # Torn down, not stopped as in production: no drain (drain_seconds 5).
                    part.proc.stop(signal.SIGINT)
                else:
                    part.stop()
            except Exception as e:  # keep stopping the rest
                print(f"stopping {part}: {e}")


def bench_binary():
    return os.path.join(harness.BIN_DIR, "s3cp-bench")


# ---------------------------------------------------------------- load


class BotoLoad:
    """boto3 over TLS through HAProxy: multipart uploads (2 parts of 5 MiB and a tail) and
    Range GETs of them, checked byte for byte; retries (standard mode: 5xx and connection
    errors) counted by cause; every acknowledged upload recorded for the end check."""

    def __init__(self, cluster, prefix):
        self.cluster, self.prefix = cluster, prefix
        self.s3 = cluster.boto()
        self.counts = {"attempted": 0, "succeeded": 0, "failed": {}, "retried": {}, "wrong_bytes": 0}
        self.acked = {}  # key -> (size, sha256 hex, parts)
        self.errors = []
        self.stop_event = threading.Event()
        self.s3.meta.events.register("needs-retry.s3", self._count_retry)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _count_retry(self, response=None, caught_exception=None, attempts=None, **_):
        cause = None
        if caught_exception is not None:
            cause = "connection"
        elif response is not None and response[0].status_code in (500, 502, 503, 504):
            cause = str(response[0].status_code)
        if cause and attempts < 10:
            self.counts["retried"][cause] = self.counts["retried"].get(cause, 0) + 1

    def _op(self, fn):
        self.counts["attempted"] += 1
        try:
            fn()
            self.counts["succeeded"] += 1
        except Exception as e:  # counted and reported
            status = getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") if hasattr(e, "response") else None
            cause = str(status) if status else type(e).__name__
            self.counts["failed"][cause] = self.counts["failed"].get(cause, 0) + 1
            self.errors.append(repr(e)[:300])

    def _run(self):
        mib = 1 << 20
        cfg = TransferConfig(multipart_threshold=5 * mib, multipart_chunksize=5 * mib, max_concurrency=2)
        i = 0
        while not self.stop_event.is_set():
            key = f"{self.prefix}/boto/mp-{i:04d}"
            body = random.randbytes(10 * mib + random.randrange(1, 300_000))

            def upload():
                import io
                self.s3.upload_fileobj(io.BytesIO(body), BUCKET, key, Config=cfg)
                self.acked[key] = (len(body), hashlib.sha256(body).hexdigest(), 3)
            self._op(upload)
            if key in self.acked:
                for _ in range(2):
                    a = random.randrange(len(body) - 1)
                    b = min(len(body) - 1, a + random.randrange(1, 2 * mib))

                    def ranged():
                        got = self.s3.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={a}-{b}")["Body"].read()
                        if got != body[a:b + 1]:
                            self.counts["wrong_bytes"] += 1
                            raise AssertionError(f"Range {a}-{b} of {key}: wrong bytes")
                    self._op(ranged)
            i += 1

    def start(self):
        self.thread.start()

    def finish(self):
        self.stop_event.set()
        self.thread.join(300)

    def ack_lines(self):
        return [json.dumps({"k": k, "s": s, "h": h}) for k, (s, h, _) in self.acked.items()]


def run_bench(cluster, args, timeout):
    return subprocess.run([bench_binary(), *args], capture_output=True, text=True, timeout=timeout)


def start_soak(cluster, prefix, seconds, clients, max_size, ack_log):
    p = cluster.proxies[0]
    args = ["--workload", "soak", "--pbs", "--endpoint", cluster.lb.endpoint, "--ca-file", cluster.lb_ca,
            "--access-key", p.access_key, "--secret-key", p.secret_key, "--region", "us-east-1", "--bucket", BUCKET,
            "--prefix", prefix, "--concurrency", str(clients), "--duration", f"{seconds}s", "--size", max_size,
            "--keys", "16", "--attempts", "12", "--ack-log", ack_log, "--keep-objects", "--request-timeout", "120s",
            "--rss-limit", "1GiB", "--rss-growth", "1GiB", "--progress", "3600s", "--json"]
    for proxy in cluster.proxies:
        args += ["--watch", f"{proxy.dir.rsplit('/', 1)[-1]}={proxy.proc.pid}"]
    return subprocess.Popen([bench_binary(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---------------------------------------------------------------- end check


def verify_everywhere(cluster, ack_log, clients=8):
    """s3cp-bench --workload verify of the ack log through every replica directly."""
    out = {}
    p0 = cluster.proxies[0]
    for p in cluster.proxies:
        r = run_bench(cluster, ["--workload", "verify", "--endpoint", p.endpoint, "--ca-file", harness.test_ca(p.dir)[0],
                                "--access-key", p0.access_key, "--secret-key", p0.secret_key, "--region", "us-east-1",
                                "--bucket", BUCKET, "--ack-log", ack_log, "--concurrency", str(clients),
                                "--request-timeout", "120s"], timeout=900)
        line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "{}"
        rep = json.loads(line)
        rep["exit_code"] = r.returncode
        rep["stderr"] = r.stderr[-2000:]
        out[p.dir.rsplit("/", 1)[-1]] = rep
    return out


def decrypt_sample(cluster, ack_log, n=6, parts_of=None):
    """Raw objects fetched straight from Garage (a random node per object) decrypt with
    memkey-admin and the key file alone, to the acknowledged bytes."""
    with open(ack_log) as f:
        last = {}
        for line in f:
            v = json.loads(line)
            last[v["k"]] = v
    objects = [v for v in last.values() if "h" in v]
    sample = random.sample(objects, min(n, len(objects)))
    # Always include multipart objects when there are some (they need --parts).
    sample += [v for v in objects if parts_of and v["k"] in parts_of][:2]
    results = []
    for v in sample:
        node = random.randrange(len(cluster.direct))
        raw = cluster.direct[node].get_object(Bucket=BUCKET, Key=v["k"])["Body"].read()
        extra = ["--parts", str(parts_of[v["k"]])] if parts_of and v["k"] in parts_of else []
        r = subprocess.run([harness.binary("memkey-admin"), "object", "decrypt", "--key-file", cluster.key_file,
                            "--bucket", BUCKET, "--key", v["k"], *extra], input=raw, capture_output=True)
        ok = r.returncode == 0 and len(r.stdout) == v["s"] and hashlib.sha256(r.stdout).hexdigest() == v["h"]
        results.append({"key": v["k"], "size": v["s"], "node": node + 1, "ok": ok,
                        "stderr": r.stderr.decode(errors="replace")[-300:] if not ok else ""})
    return results


# ---------------------------------------------------------------- drills


def _sleep_until(t):
    time.sleep(max(0.0, t - time.time()))


def fault_kill(cluster, timing, log):
    """SIGKILL replica b mid-run; restart it: it takes its key from its memkey-server again."""
    p = cluster.proxies[1]
    p.proc.p.send_signal(signal.SIGKILL)
    p.proc.p.wait()
    p.proc.log.close()
    log["killed_at"] = time.time()
    log["marked_down_after_s"] = round(cluster.lb.wait_state("proxy-b", False, 60) - log["killed_at"], 1)
    time.sleep(timing["down"])
    p.start()
    p.wait_ready(timeout=60)
    status, body = p.admin_get("/readyz")
    log["readyz_after_restart"] = json.loads(body)
    log["back_up_after_s"] = round(cluster.lb.wait_state("proxy-b", True, 60) - log["killed_at"], 1)


def fault_upgrade(cluster, timing, log):
    """Rolling graceful upgrade of all three replicas, one after the other."""
    log["upgrades"] = []
    draining = []
    for i, p in enumerate(cluster.proxies):
        t = time.time()
        old = p.upgrade(timeout=60, wait_old=False)
        p.wait_ready(timeout=60)
        draining.append((old, t))
        log["upgrades"].append({"replica": f"proxy-{chr(ord('a') + i)}", "old_pid": old.pid, "new_pid": p.proc.pid,
                                "new_serving_after_s": round(time.time() - t, 1), "haproxy_states": cluster.lb.server_states()})
        time.sleep(timing["between"])
    # Every old process finishes its requests and exits (server.graceful_shutdown_timeout_seconds).
    for (old, t), u in zip(draining, log["upgrades"]):
        old.p.wait(60)
        old.log.close()
        u["old_exit_code"] = old.p.returncode


def fault_stop(cluster, timing, log):
    """`systemctl stop` of replica a under load, then start: SIGTERM drains first (/readyz
    503 takes it out of HAProxy's pool while it still answers, each answer closing its
    connection), then it stops accepting and exits."""
    p = cluster.proxies[0]
    p.proc.p.send_signal(signal.SIGTERM)
    log["stopped_at"] = t = time.time()
    log["marked_down_after_s"] = round(cluster.lb.wait_state("proxy-a", False, 30) - t, 1)
    p.proc.p.wait(60)
    p.proc.log.close()
    log["exit_code"] = p.proc.p.returncode
    log["exited_after_s"] = round(time.time() - t, 1)
    time.sleep(timing["down"])
    p.start()
    p.wait_ready(timeout=60)
    log["back_up_after_s"] = round(cluster.lb.wait_state("proxy-a", True, 60) - t, 1)


def fault_garage(cluster, timing, log):
    """Stop Garage node 3 (the backend of replica c) for a while, then start it again."""
    node = cluster.garage.nodes[2]
    # A clean stop (SIGTERM), as an operator's `systemctl stop` would; Garage then breaks off
    # the transfers it has in progress (seen in its log), so answers may be cut. The teardown
    # default kills after 3 s.
    node.stop(timeout=30)
    log["stopped_at"] = time.time()
    try:
        log["replica_c_marked_down_after_s"] = round(cluster.lb.wait_state("proxy-c", False, timing["down"]) - log["stopped_at"], 1)
    except RuntimeError:
        log["replica_c_marked_down_after_s"] = None
    _sleep_until(log["stopped_at"] + timing["down"])
    t = time.time()
    node.start()
    log["replica_c_back_after_restart_s"] = round(cluster.lb.wait_state("proxy-c", True, 120) - t, 1)


def fault_keyd(cluster, timing, log):
    """Restart replica a's memkey-server (it comes back without a key): replica a must leave
    the pool through /readyz; one `memkey-admin key send` brings it back."""
    k = cluster.keys.servers[0]
    k.stop()
    k.start()
    log["restarted_at"] = time.time()
    log["left_pool_after_s"] = round(cluster.lb.wait_state("proxy-a", False, 60) - log["restarted_at"], 1)
    status, body = cluster.proxies[0].admin_get("/readyz")
    log["readyz_without_keyd_key"] = [status, json.loads(body)]
    time.sleep(timing["down"])
    r = cluster.keys.send_key(cluster.key_file)
    log["key_send_exit"] = r.returncode
    log["key_send_output"] = (r.stdout + r.stderr)[-600:]
    t = time.time()
    log["back_after_send_s"] = round(cluster.lb.wait_state("proxy-a", True, 60) - t, 1)


def fault_slow(cluster, timing, log):
    """Pause replica c with SIGSTOP for a while, then SIGCONT."""
    p = cluster.proxies[2]
    os.kill(p.proc.pid, signal.SIGSTOP)
    t = log["stopped_at"] = time.time()
    seen_down = None
    while time.time() < t + timing["down"]:
        if seen_down is None and cluster.lb.server_states().get("proxy-c") != 2:
            seen_down = round(time.time() - t, 1)
        time.sleep(0.2)
    os.kill(p.proc.pid, signal.SIGCONT)
    t = time.time()
    log["paused_s"] = round(t - log.setdefault("stopped_at", t), 1)
    log["marked_down_after_s"] = seen_down
    log["back_up_after_cont_s"] = round(cluster.lb.wait_state("proxy-c", True, 60) - t, 1)


DRILLS = {
    "kill": fault_kill,
    "upgrade": fault_upgrade,
    "stop": fault_stop,
    "garage": fault_garage,
    "keyd": fault_keyd,
    "slow": fault_slow,
}


def run_drill(cluster, name, *, seconds, lead, timing, clients, max_size, boto=True):
    """PBS-like load for `seconds` through HAProxy, the fault `name` `lead` seconds in, then
    the end check. Returns a report dict."""
    prefix = f"drill-{name}"
    ack_log = os.path.join(cluster.workdir, f"{prefix}.ack.jsonl")
    if os.path.exists(ack_log):
        os.unlink(ack_log)
    load = BotoLoad(cluster, prefix) if boto else None
    t0 = time.time()
    bench = start_soak(cluster, prefix, seconds, clients, max_size, ack_log)
    if load:
        load.start()
    fault = {}
    time.sleep(lead)
    try:
        DRILLS[name](cluster, timing, fault)
        # The whole fault, recovery included, happened under load.
        fault["ended_under_load"] = time.time() < t0 + seconds
    finally:
        out, err = bench.communicate(timeout=seconds + 600)
        if load:
            load.finish()
    wall = time.time() - t0
    soak = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-3000:]}
    soak["stderr_tail"] = err[-1500:]
    parts_of = {}
    if load:
        with open(ack_log, "a") as f:
            for line in load.ack_lines():
                f.write(line + "\n")
        parts_of = {k: parts for k, (_, _, parts) in load.acked.items()}
    for p in cluster.proxies:
        assert p.proc.poll() is None, f"{p.dir} exited:\n{harness.tail(p.proc.log_path)}"
    cluster.lb.wait_up(timeout=120)
    verify = verify_everywhere(cluster, ack_log)
    decrypted = decrypt_sample(cluster, ack_log, parts_of=parts_of)
    return {
        "drill": name,
        "wall_s": round(wall, 1),
        "fault": fault,
        "soak": {k: soak.get(k) for k in ("clients", "wall_s", "attempted", "succeeded", "failed", "retried", "errors",
                                          "mismatches", "stale_listed", "problems", "mib_put", "mib_got", "ops", "rss", "load_before",
                                          "load_after", "stderr_tail", "error")},
        "boto": dict(load.counts, errors=load.errors[:5], multipart_objects=len(load.acked)) if load else None,
        "verify": verify,
        "decrypt_sample": decrypted,
    }


def summary_line(r):
    s, b = r["soak"], r["boto"] or {}
    v = r["verify"]
    objects = min((x.get("objects", 0) for x in v.values()), default=0)
    lost = sum(x.get("lost", 0) for x in v.values())
    wrong = sum(x.get("wrong_bytes", 0) for x in v.values()) + (s.get("mismatches") or 0) + b.get("wrong_bytes", 0)
    ok_dec = sum(1 for d in r["decrypt_sample"] if d["ok"])
    return (f"{r['drill']:8} s3cp-bench: attempted {s.get('attempted')}, succeeded {s.get('succeeded')}, "
            f"failed {s.get('failed')}, retried {s.get('retried')} | boto3: attempted {b.get('attempted')}, "
            f"succeeded {b.get('succeeded')}, failed {b.get('failed')}, retried {b.get('retried')} | "
            f"acknowledged objects checked through {len(v)} replicas: {objects} each, lost {lost}, wrong bytes {wrong} | "
            f"raw decrypt {ok_dec}/{len(r['decrypt_sample'])}")


# ---------------------------------------------------------------- throughput with 1, 2, 3 replicas


def _rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def throughput(cluster, seconds=30, size="4MiB", concurrency=16, max_bytes="1GiB"):
    """PBS-like PUT (signed payload, Content-MD5) and whole-object GET through HAProxy with
    TLS, with 1, 2 and 3 replicas in the pool (the others in `maint`), on the same cluster in
    one run; each run stops after `seconds` or `max_bytes` of payload (Garage keeps the
    blocks of overwritten objects for about 10 minutes, three times over). Each proxy's CPU time comes from /proc/PID/stat over the measured window (the
    bench's --watch). Returns one row per (replicas, workload)."""
    p0 = cluster.proxies[0]
    rows = []
    try:
        for n in (1, 2, 3):
            for i, name in enumerate(cluster.lb.names):
                cluster.lb.set_state(name, "ready" if i < n else "maint")
            cluster.lb.wait_up(names=cluster.lb.names[:n], timeout=60)
            for workload in ("put", "get"):
                idle_rss = {p.dir.rsplit("/", 1)[-1]: round(_rss_bytes(p.proc.pid) / 2**20, 1) for p in cluster.proxies}
                watch = []
                for p in cluster.proxies:
                    watch += ["--watch", f"{p.dir.rsplit('/', 1)[-1]}={p.proc.pid}"]
                watch += ["--watch", f"haproxy={cluster.lb.proc.pid}"]
                for j, g in enumerate(cluster.garage.nodes):
                    watch += ["--watch", f"garage-{j + 1}={g.proc.pid}"]
                r = run_bench(cluster, ["--workload", workload, "--endpoint", cluster.lb.endpoint, "--ca-file", cluster.lb_ca,
                                        "--access-key", p0.access_key, "--secret-key", p0.secret_key, "--region", "us-east-1",
                                        "--bucket", BUCKET, "--prefix", f"throughput-{n}", "--size", size,
                                        "--concurrency", str(concurrency), "--duration", f"{seconds}s", "--warmup", "2s",
                                        "--payload", "signed", "--keys", "32", "--max-bytes", max_bytes, *watch, "--json"],
                                timeout=seconds * 10 + 600)
                if r.returncode != 0 or not r.stdout.strip():
                    rows.append({"replicas": n, "workload": workload, "error": (r.stderr or r.stdout)[-1000:]})
                    continue
                rep = json.loads(r.stdout.strip().splitlines()[-1])
                gib = rep["total"]["mib_s"] * rep["wall_s"] / 1024
                procs = {pr["name"]: pr for pr in rep["window"]["procs"]}
                proxies = {k: v for k, v in procs.items() if k.startswith("proxy-")}
                cpu_s = {k: v["cpu_cores"] * rep["wall_s"] for k, v in proxies.items()}
                rows.append({
                    "replicas": n, "workload": workload, "size": size, "concurrency": concurrency,
                    "mib_s": round(rep["total"]["mib_s"], 1), "req_s": round(rep["total"]["req_s"], 1),
                    "p50_ms": rep["total"]["p50_ms"], "p99_ms": rep["total"]["p99_ms"],
                    "errors": rep["total"]["errors"], "corrupt": rep["total"]["corrupt"], "gib": round(gib, 2),
                    "proxy_cpu_s_per_gib": {k: round(v / gib, 2) for k, v in cpu_s.items() if gib > 0},
                    "proxy_cpu_s_per_gib_total": round(sum(cpu_s.values()) / gib, 2) if gib > 0 else None,
                    "proxy_peak_rss_mib": {k: round((v.get("peak_rss_hwm") or v["peak_rss_sampled"]) / 2**20, 1) for k, v in proxies.items()},
                    "proxy_idle_rss_mib": idle_rss,
                    "haproxy_cpu_s_per_gib": round(procs["haproxy"]["cpu_cores"] * rep["wall_s"] / gib, 2) if gib > 0 else None,
                    "garage_cpu_cores": round(sum(v["cpu_cores"] for k, v in procs.items() if k.startswith("garage")), 2),
                    "generator_cpu_cores": round(rep["window"]["generator_cpu_cores"], 2),
                    "machine_cpu_cores": round(rep["window"]["machine_cpu_cores"], 2),
                    "load_after": rep["load_after"],
                })
    finally:
        for name in cluster.lb.names:
            cluster.lb.set_state(name, "ready")
    return rows
