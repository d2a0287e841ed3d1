"""Runs the s3cp-bench matrix over several targets on one Garage and prints the table.

Started by scripts/bench.sh (which builds the release binaries and sets up the venv).
Reuses tests/e2e/harness.py for Garage, memkey-server and key delivery; starts the proxies
itself (TLS on the client side with a certificate made for the run, unless --no-client-tls;
audit log off, log level warn), HAProxy as a plain TLS relay and, as the peer a user would
otherwise pick, rclone over a crypt remote wrapping an s3 remote on the same Garage.

Targets:
  direct  Garage itself (plain HTTP: Garage has no TLS listener)
  haproxy HAProxy terminating TLS and relaying HTTP to Garage, nothing else: the cost floor
          of moving bytes with TLS on the client side
  pass    s3-crypt-proxy with filters [sigv4, allowlist, conditional, resign], no memkey
  full    s3-crypt-proxy with the default chain and a key delivered by memkey-admin
  full-before  the same as full with the s3-crypt-proxy of --before-bin-dir (an older build),
          to compare two versions of the proxy side by side in one run
  full-unverified  full with `backend.verified_writes: off`: the bodies go to Garage plain
          instead of aws-chunked with a CRC32C trailer, which shows what the trailer costs
          Garage (its aws-chunked decoder copies the body a byte at a time, BENCHMARKS.md)
  rclone  `rclone serve s3` over crypt when this rclone has it, else `rclone serve webdav`
          over the same crypt remote (Debian 12's rclone 1.60 has no `serve s3`)

Cells run target after target for the same (size, concurrency, workload), so a change in
the machine's load hits all targets alike. The proxies are restarted for every object size
and their peak RSS is reset (clear_refs) at the start of every measured window.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

BUCKET = "bench"
def parse_bytes(text):
    """'8MiB', '512KiB' or a plain number of bytes."""
    for unit, mult in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if text.endswith(unit):
            return int(text[:-len(unit)]) * mult
    return int(text)


WORKLOADS = ["put", "get", "ranged", "range", "mixed", "head"]

# Cells every run has besides the matrix (size, concurrency, workload, payload): what PBS,
# s5cmd and the Go SDK send. PUT with a signed payload SHA-256 and Content-MD5 (PBS), whole
# objects read by Range requests (s5cmd), and many small objects with 32 clients.
DEFAULT_CELLS = [(4 << 20, 8, "put", "signed"), (4 << 20, 8, "ranged", "unsigned"),
                 (16 << 10, 32, "get", "unsigned"), (16 << 10, 32, "put", "unsigned")]
# --quick: those, a 4 MiB GET and one 64 MiB GET alone (5-7 min with the 1 GiB RSS test on 2 busy cores).
QUICK_CELLS = DEFAULT_CELLS + [(4 << 20, 8, "get", "unsigned"), (64 << 20, 1, "get", "unsigned")]
QUICK_RCLONE_CELLS = "get:4MiB:8,get:64MiB:1"

SIZES = {"4KiB": 4 << 10, "16KiB": 16 << 10, "1MiB": 1 << 20, "4MiB": 4 << 20, "64MiB": 64 << 20, "1GiB": 1 << 30}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Target:
    def __init__(self, name, endpoint, ak, sk, protocol="s3", proc=None, watch=(), ca_file=None):
        self.name, self.endpoint, self.ak, self.sk, self.protocol = name, endpoint, ak, sk, protocol
        self.proc = proc          # harness.Proc we restart, or None
        self.watch = list(watch)  # [(name, pid)]
        self.ca_file = ca_file    # CA of an https:// endpoint's certificate


def run_ca(h, workdir, name):
    """The CA that signs the certificate of the server started in workdir/name (harness.test_ca)."""
    return h.test_ca(os.path.join(workdir, name))[0]


def start_proxy(h, workdir, name, garage, filters, keyd=None, binary=None, tls=False, verified_writes=True):
    """An s3-crypt-proxy on Garage; (proc, endpoint). With tls, it listens with TLS on a
    certificate made for the run (its CA: run_ca(h, workdir, name)) and endpoint is https://.
    verified_writes=False sends the bodies to Garage without the ciphertext checksum trailer."""
    d = os.path.join(workdir, name)
    os.makedirs(d, exist_ok=True)
    port, admin_port = h.free_port(), h.free_port()
    cfg = {
        "listen_addr": f"127.0.0.1:{port}",
        "admin_listen_addr": f"127.0.0.1:{admin_port}",
        "backend": {"endpoint": garage.endpoint, "region": garage.region, "access_key": garage.access_key,
                    "secret_key": garage.secret_key, "path_style": True,
                    "verified_writes": "trailer" if verified_writes else "off"},
        "client": {"access_key": "bench-client", "secret_key": "bench-client-secret"},
        "allowed_buckets": [BUCKET],
        "filters": filters,
        "audit_log": "off",
        "log_level": "warn",
        "server": {"threads": 0, "upgrade_sock": os.path.join(d, "upgrade.sock"),
                   "pid_file": os.path.join(d, "proxy.pid"), "grace_period_seconds": 1,
                   "graceful_shutdown_timeout_seconds": 2},
    }
    if keyd is not None:
        cfg["memkey"] = {"socket_path": keyd.socket, "poll_interval": "200ms"}
    if tls:
        cert, key = h.self_signed_cert(d, "proxy")
        cfg["tls"] = {"cert_file": cert, "key_file": key}
    import yaml
    conf = os.path.join(d, "config.yaml")
    with open(conf, "w") as f:
        yaml.safe_dump(cfg, f)
    proc = h.Proc([binary or h.binary("s3-crypt-proxy"), "run", "--config", conf], d, "proxy")
    h.wait_port(port, proc.p)
    # Ready: key loaded (full) and backend reachable.
    import ssl
    import urllib.request
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    scheme = "https" if tls else "http"
    deadline = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{admin_port}/readyz", timeout=2, context=ctx) as r:
                if r.status == 200:
                    break
        except Exception:
            pass
        if time.time() > deadline:
            raise RuntimeError(f"proxy {name} not ready\n{h.tail(proc.log_path)}")
        time.sleep(0.1)
    return proc, f"{scheme}://127.0.0.1:{port}"


HAPROXY_RELAY_CFG = """global
    log stdout format raw daemon
    # S3 requests carry large signed headers (as deploy/haproxy/haproxy.cfg).
    tune.bufsize 32768

defaults
    mode http
    timeout connect 5s
    timeout client 5m
    timeout server 5m
    timeout http-request 30s
    timeout http-keep-alive 30s

frontend s3
    bind 127.0.0.1:{port} ssl crt {pem} alpn http/1.1
    default_backend garage

backend garage
    server garage {backend}
"""


def start_haproxy_relay(h, workdir, garage, name="haproxy"):
    """HAProxy terminating TLS (a certificate made for the run, CA: run_ca(h, workdir, name))
    and relaying HTTP to Garage unchanged, keep-alive on both sides, no logging per request:
    what moving the bytes with TLS costs at least. Returns (proc, endpoint)."""
    if shutil.which("haproxy") is None:
        raise RuntimeError("haproxy is missing: scripts/bootstrap.sh installs it (apt-get install haproxy)")
    d = os.path.join(workdir, name)
    os.makedirs(d, exist_ok=True)
    cert, key = h.self_signed_cert(d, "haproxy")
    pem = os.path.join(d, "haproxy.pem")
    with open(pem, "w") as out:
        for part in (cert, key):
            with open(part) as f:
                out.write(f.read())
    port = h.free_port()
    cfg = os.path.join(d, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(HAPROXY_RELAY_CFG.format(port=port, pem=pem, backend=garage.endpoint.split("://", 1)[1]))
    # -db: stay in the foreground, so that stop() ends it by its PID.
    proc = h.Proc(["haproxy", "-db", "-f", cfg], d, "haproxy")
    h.wait_port(port, proc.p)
    return proc, f"https://127.0.0.1:{port}"


def rclone_has_serve_s3():
    r = subprocess.run(["rclone", "serve", "s3", "--help"], capture_output=True, text=True)
    # rclone without it prints the generic `serve` help (exit 0) instead.
    return r.returncode == 0 and "s3 server" in (r.stdout + r.stderr)


def start_rclone(h, workdir, garage):
    d = os.path.join(workdir, "rclone")
    os.makedirs(d, exist_ok=True)
    password = subprocess.run(["rclone", "obscure", "bench-crypt-password"], capture_output=True, text=True,
                              check=True).stdout.strip()
    conf = os.path.join(d, "rclone.conf")
    with open(conf, "w") as f:
        f.write(f"""[garage]
type = s3
provider = Other
access_key_id = {garage.access_key}
secret_access_key = {garage.secret_key}
endpoint = {garage.endpoint}
region = {garage.region}
force_path_style = true
# `serve s3` shows directories as buckets: the bucket directory needs a marker object to exist.
directory_markers = true

[secret]
type = crypt
remote = garage:{BUCKET}/rclone
password = {password}
""")
    port = h.free_port()
    if rclone_has_serve_s3():
        subprocess.run(["rclone", "--config", conf, "mkdir", f"secret:{BUCKET}"], check=True, capture_output=True,
                       env={**os.environ, "AWS_CA_BUNDLE": ""})
        kind = "serve s3"
        args = ["rclone", "--config", conf, "serve", "s3", "secret:", "--addr", f"127.0.0.1:{port}",
                "--auth-key", "rclone-ak,rclone-sk"]
    else:
        kind = "serve webdav"
        args = ["rclone", "--config", conf, "serve", "webdav", "secret:", "--addr", f"127.0.0.1:{port}"]
    # AWS_CA_BUNDLE (set in some environments) makes rclone's S3 client refuse its own transport.
    proc = h.Proc(args, d, "rclone", env={"AWS_CA_BUNDLE": ""})
    h.wait_port(port, proc.p)
    return proc, f"http://127.0.0.1:{port}", kind


def save_logs(src, dest, prefix, skip=None):
    os.makedirs(dest, exist_ok=True)
    for dirpath, _, files in os.walk(src):
        if skip and os.path.commonpath([dirpath, skip]) == skip:
            continue
        for fn in files:
            if fn.endswith(".log"):
                rel = os.path.relpath(os.path.join(dirpath, fn), src).replace(os.sep, "_")
                shutil.copy(os.path.join(dirpath, fn), os.path.join(dest, f"{prefix}_{rel}"))


class Stack:
    """Garage, the two proxies and rclone; restarted together (keyd stays)."""

    def __init__(self, h, workdir, wanted, keyd, procs, logs, before_proxy=None, client_tls=False):
        self.h, self.workdir, self.wanted, self.keyd, self.procs, self.logs = h, workdir, wanted, keyd, procs, logs
        self.before_proxy = before_proxy  # s3-crypt-proxy binary of target full-before
        self.client_tls = client_tls      # the proxies listen with TLS
        self.generation = 0
        self.garage = None
        self.own = []
        self.targets = {}
        self.rclone_kind = None
        self.written = 0
        self.garage_block_size = None
        self.deleting = []  # background deletions of old Garage directories (rm processes)

    def stop(self, background=False):
        """Stops the servers and deletes Garage's directory; with background, the deletion
        runs on at idle I/O priority while the next cells run (a Garage that stored many
        small objects took 1-2 minutes to delete on a busy disk), else stop waits for it and
        for earlier ones."""
        for p in self.own:
            p.stop()
            self.procs.remove(p)
        self.own = []
        if self.garage is not None:
            save_logs(self.garage.dir, self.logs, f"backend-{self.generation}")
            if background and shutil.which("ionice"):
                trash = self.garage.dir + ".deleting"
                os.rename(self.garage.dir, trash)
                self.deleting.append(subprocess.Popen(["ionice", "-c3", "nice", "-n19", "rm", "-rf", trash]))
            else:
                shutil.rmtree(self.garage.dir, ignore_errors=True)
            self.garage = None
        if not background:
            for d in self.deleting:
                d.wait()
            self.deleting = []

    def _own(self, proc):
        self.own.append(proc)
        self.procs.append(proc)
        return proc

    def restart(self):
        h = self.h
        self.stop(background=True)
        self.generation += 1
        gdir = os.path.join(self.workdir, f"backend-{self.generation}")
        os.makedirs(gdir)
        garage = h.Garage(gdir, block_size=self.garage_block_size)
        garage.dir = gdir
        self.garage = garage
        self._own(garage.proc)
        import boto3
        from botocore.config import Config
        s3 = boto3.client("s3", endpoint_url=garage.endpoint, region_name=garage.region,
                          aws_access_key_id=garage.access_key, aws_secret_access_key=garage.secret_key,
                          config=Config(s3={"addressing_style": "path"}))
        s3.create_bucket(Bucket=BUCKET)
        gw = ("garage", garage.proc.pid)
        t = {}
        if "direct" in self.wanted:
            t["direct"] = Target("direct", garage.endpoint, garage.access_key, garage.secret_key, watch=[gw])
        if "haproxy" in self.wanted:
            proc, endpoint = start_haproxy_relay(h, gdir, garage)
            self._own(proc)
            t["haproxy"] = Target("haproxy", endpoint, garage.access_key, garage.secret_key, watch=[("haproxy", proc.pid), gw],
                                  ca_file=run_ca(h, gdir, "haproxy"))
        full_chain = ["sigv4", "allowlist", "conditional", "crypto", "listing", "resign"]
        specs = {"pass": (["sigv4", "allowlist", "conditional", "resign"], None, None, True),
                 "full-before": (full_chain, self.keyd, self.before_proxy, True),
                 "full": (full_chain, self.keyd, None, True),
                 "full-unverified": (full_chain, self.keyd, None, False)}
        for name, (filters, kd, binary, verified) in specs.items():
            if name in self.wanted:
                proc, endpoint = start_proxy(h, gdir, name, garage, filters, kd, binary, tls=self.client_tls,
                                             verified_writes=verified)
                self._own(proc)
                t[name] = Target(name, endpoint, "bench-client", "bench-client-secret", proc=proc,
                                 watch=[("proxy", proc.pid), gw],
                                 ca_file=run_ca(h, gdir, name) if self.client_tls else None)
        if "rclone" in self.wanted:
            proc, endpoint, self.rclone_kind = start_rclone(h, gdir, garage)
            self._own(proc)
            if self.rclone_kind == "serve s3":
                t["rclone"] = Target("rclone", endpoint, "rclone-ak", "rclone-sk", watch=[("rclone", proc.pid), gw])
            else:
                t["rclone"] = Target("rclone", endpoint, "", "", protocol="plain", watch=[("rclone", proc.pid), gw])
        self.targets = t
        self.written = 0

    def account(self, rep):
        """Bytes a cell uploaded (measured window, warm-up and read set, roughly)."""
        if rep.get("failed"):
            return
        wall = rep["wall_s"]
        if rep["workload"] == "put":
            self.written += rep["total"]["mib_s"] * wall * 2**20 + (256 << 20)
        elif rep["workload"] == "mixed":
            self.written += rep["put"]["mib_s"] * wall * 2**20 + (256 << 20)
        if rep.get("prefill_s") is not None:
            self.written += min(512 << 20, rep["size"] * 64)


def read_set_args(workload, size, args):
    """s3cp-bench options for the read set and ranges of a cell."""
    extra = []
    part = parse_bytes(args.multipart_part_size) if args.multipart_part_size else None
    if part and workload != "put" and size > part:
        extra += ["--multipart-part-size", str(part)]
    if args.range_len and workload == "range":
        extra += ["--range-len", str(parse_bytes(args.range_len))]
    if getattr(args, "range_part", None) and workload == "ranged":
        extra += ["--range-part", str(parse_bytes(args.range_part))]
    if getattr(args, "keys", None) and workload != "put":
        extra += ["--keys", str(args.keys)]
    return extra


TARGET_ORDER = ["direct", "haproxy", "pass", "full-before", "full", "full-unverified", "rclone"]


def parse_cells(spec):
    """'put:4MiB:8:signed,get:16KiB:32' -> [(size, concurrency, workload, payload)]."""
    cells = []
    for x in spec.split(","):
        f = x.split(":")
        if len(f) not in (3, 4) or (len(f) == 4 and f[3] not in ("signed", "unsigned")):
            raise SystemExit(f"bad cell {x!r}: workload:size:concurrency[:signed]")
        cells.append((parse_bytes(f[1]), int(f[2]), f[0], f[3] if len(f) == 4 else "unsigned"))
    return cells


def run_cell(bench_bin, t, workload, size, conc, args, extra=(), payload="unsigned"):
    cmd = [bench_bin, "--payload", payload, "--endpoint", t.endpoint, "--access-key", t.ak, "--secret-key", t.sk,
           "--bucket", BUCKET, "--protocol", t.protocol, "--workload", workload, "--size", str(size),
           "--concurrency", str(conc), "--duration", args.duration, "--warmup", args.warmup,
           "--prefix", t.name, "--label", t.name, "--json",
           # A stalled request fails its cell after this instead of holding the matrix.
           "--request-timeout", f"{max(60, size // (5 << 20))}s", *read_set_args(workload, size, args), *extra]
    for name, pid in t.watch:
        cmd += ["--watch", f"{name}={pid}"]
    if getattr(t, "ca_file", None):
        cmd += ["--ca-file", t.ca_file]
    if args.verify:
        cmd.append("--verify")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    try:
        rep = json.loads(line)
    except ValueError:
        rep = {"label": t.name, "workload": workload, "size": size, "concurrency": conc, "failed": True,
               "error": (r.stderr or r.stdout).strip()[-500:]}
    if r.returncode != 0 and not rep.get("failed"):
        rep["failed"] = True
        rep["error"] = r.stderr.strip()[-500:]
    return rep, cmd


def fmt_cell(rep):
    if rep is None:
        return "–"
    if rep.get("failed"):
        return "failed"
    t = rep["total"]
    return f"{t['mib_s']:.1f}"


def rate(rep):
    """What a cell is ranked by: requests/s for HEAD (no payload), MiB/s otherwise."""
    return rep["total"]["req_s"] if rep["workload"] == "head" else rep["total"]["mib_s"]


def proxy_proc(rep, name="proxy"):
    for p in rep.get("window", {}).get("procs", []):
        if p["name"] == name:
            return p
    return None


SERVERS = ("proxy", "haproxy", "rclone")


def server_proc(rep):
    """The watched process that serves the target (proxy, HAProxy or rclone), None for direct."""
    for name in SERVERS:
        p = proxy_proc(rep, name)
        if p is not None:
            return p
    return None


def peak_rss(p):
    if p is None:
        return None
    return (p["peak_rss_hwm"] if p["peak_rss_hwm"] is not None else p["peak_rss_sampled"]) / 2**20


def human_size(n):
    for k, v in SIZES.items():
        if v == n:
            return k
    if n % (1 << 20) == 0:
        return f"{n >> 20}MiB"
    return str(n)


def object_label(rep):
    """'4MiB', or '15MiB (3×5MiB parts)' for a read set of multipart uploads."""
    part = rep.get("multipart_part_size")
    if not part:
        return human_size(rep["size"])
    return f"{human_size(rep['size'])} ({-(-rep['size'] // part)}×{human_size(part)} parts)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true",
                    help="the default cells (4 MiB signed PUT and ranged GET c=8, 16 KiB GET/PUT c=32), 4 MiB GET c=8, "
                         "64 MiB GET c=1, and the 1 GiB RSS test")
    ap.add_argument("--sizes", default="4KiB,1MiB,4MiB,64MiB")
    ap.add_argument("--concurrency", default="1,8,64")
    ap.add_argument("--workloads", default="put,get,range,mixed",
                    help="put, get, ranged (whole objects by Range requests, as s5cmd), range (--range-len at random "
                         "offsets), mixed, head")
    ap.add_argument("--cells", default=None,
                    help="exactly these cells (workload:size:concurrency[:signed], comma-separated, e.g. head:15MiB:1 "
                         "or put:4MiB:8:signed) instead of sizes x concurrency x workloads and the default cells")
    ap.add_argument("--targets", default="direct,haproxy,pass,full,rclone",
                    help="direct, haproxy, pass, full, full-before, full-unverified, rclone")
    ap.add_argument("--client-tls", action=argparse.BooleanOptionalAction, default=True,
                    help="the proxies listen with TLS (a certificate made for the run), as PBS reaches them")
    ap.add_argument("--before-bin-dir", default=None,
                    help="directory with an older build's s3-crypt-proxy, run as target full-before")
    ap.add_argument("--multipart-part-size", default=None,
                    help="upload read sets of objects larger than this as multipart uploads in parts of this size "
                         "(e.g. 5MiB: a 15MiB object is 3 parts); HEAD, GET and Range then read multipart objects")
    ap.add_argument("--range-len", default=None, help="bytes per Range GET (s3cp-bench's default: 256KiB)")
    ap.add_argument("--range-part", default=None,
                    help="Range of each request of workload ranged (s3cp-bench's default: 50MiB, s5cmd's part size)")
    ap.add_argument("--keys", type=int, default=None,
                    help="objects in each read set (s3cp-bench's default: 64, fewer for large objects)")
    ap.add_argument("--rclone-cells", default="put:4MiB:8,get:4MiB:8,put:64MiB:1,get:64MiB:1",
                    help="cells (workload:size:concurrency) run against rclone in the full matrix; 'all' for every cell")
    ap.add_argument("--duration", default=None, help="measured time per cell (default 5s)")
    ap.add_argument("--warmup", default=None, help="unmeasured time per cell (default 1s with --quick, else 0.5s)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every cell N times (targets interleaved) and report the run with the median throughput")
    ap.add_argument("--min-free-gib", type=float, default=8.0,
                    help="skip an upload cell when less would stay free on the work disk")
    ap.add_argument("--restart-gib", type=float, default=6.0,
                    help="start a fresh Garage before the next cell once this much was uploaded")
    ap.add_argument("--rss-size", default="1GiB", help="object size of the RSS test ('' to skip)")
    ap.add_argument("--garage-block-size", default=None,
                    help="Garage's block_size (default: Garage's own, 1MiB). A 4 MiB object is 4 blocks; its "
                         "ciphertext (4 MiB + 1132 B) is 5, which costs Garage more per GET; e.g. 8MiB removes that difference")
    ap.add_argument("--signed", action=argparse.BooleanOptionalAction, default=True,
                    help="the full matrix also runs 64 MiB PUT c=1 with a signed payload SHA-256 and Content-MD5 "
                         "(as PBS sends; 4 MiB c=8 is a default cell)")
    ap.add_argument("--verify", action="store_true", help="check every downloaded byte (generator CPU)")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--out", default=None, help="directory for results.jsonl and table.md")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    args.duration = args.duration or "5s"
    args.warmup = args.warmup or ("1s" if args.quick else "0.5s")
    # Stop the children on SIGTERM too (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    args.bin_dir = os.path.abspath(args.bin_dir)
    os.environ["S3CP_BIN_DIR"] = args.bin_dir
    import harness as h
    h.BIN_DIR = args.bin_dir
    bench_bin = h.binary("s3cp-bench")

    if args.quick:
        cells = list(QUICK_CELLS)
    elif args.cells:
        cells = parse_cells(args.cells)
    else:
        sizes = [parse_bytes(s) for s in args.sizes.split(",") if s]
        concs = [int(c) for c in args.concurrency.split(",") if c]
        wls = [w for w in args.workloads.split(",") if w]
        cells = [(s, c, w, "unsigned") for s in sizes for c in concs for w in wls]
        cells += [c for c in DEFAULT_CELLS if c not in cells]
        if args.signed:
            # One large PBS-like upload alone shows whether a single connection's work spreads over the cores.
            cells.append((64 << 20, 1, "put", "signed"))
    for c in cells:
        if c[2] not in WORKLOADS:
            ap.error(f"unknown workload {c[2]} (one of {', '.join(WORKLOADS)})")
    targets_wanted = args.targets.split(",")
    if "full-before" in targets_wanted and not args.before_bin_dir:
        ap.error("target full-before needs --before-bin-dir")
    before_proxy = os.path.join(os.path.abspath(args.before_bin_dir), "s3-crypt-proxy") if args.before_bin_dir else None
    rclone_spec = QUICK_RCLONE_CELLS if args.quick else args.rclone_cells
    rclone_cells = None if rclone_spec == "all" else {
        (w, parse_bytes(s), int(c)) for w, s, c in (x.split(":")[:3] for x in rclone_spec.split(","))}

    workdir = tempfile.mkdtemp(prefix="s3cp-bench-")
    out = args.out or os.path.join(workdir, "out")
    os.makedirs(out, exist_ok=True)
    log(f"bench: work directory {workdir}, results in {out}")
    procs = []
    results = []
    stack = None
    try:
        keyd = None
        if any(t.startswith("full") for t in targets_wanted):
            keyd = h.Keyd(workdir)
            procs.append(keyd.proc)
            keyd.send_key(keyd.new_key(1))
        stack = Stack(h, workdir, targets_wanted, keyd, procs, os.path.join(out, "logs"), before_proxy,
                      client_tls=args.client_tls)
        if args.garage_block_size:
            stack.garage_block_size = parse_bytes(args.garage_block_size)
        stack.restart()
        rclone_kind = stack.rclone_kind
        if rclone_kind:
            log(f"bench: rclone {subprocess.run(['rclone', 'version'], capture_output=True, text=True).stdout.splitlines()[0]}: using `rclone {rclone_kind}` over a crypt remote")
        targets = stack.targets

        order = TARGET_ORDER
        jsonl = open(os.path.join(out, "results.jsonl"), "w")
        # The first size runs on the stack just started.
        last_size = min((c[0] for c in cells), default=None)
        t_start = time.time()
        for size, conc, wl, payload in sorted(cells, key=lambda x: (x[0], x[1], WORKLOADS.index(x[2]), x[3])):
            # A fresh Garage (and proxies, rclone) for every object size, and whenever the
            # uploads since the last start pass --restart-gib: Garage frees overwritten
            # blocks only about 10 minutes later, so this bounds the disk space the run uses.
            if size != last_size or stack.written > args.restart_gib * 2**30:
                t_restart = time.time()
                stack.restart()
                targets = stack.targets
                last_size = size
                st = os.statvfs(workdir)
                log(f"bench: {human_size(size)}: fresh Garage and proxies ({time.time() - t_restart:.0f} s); {st.f_bavail * st.f_frsize / 2**30:.1f} GiB free on the work disk, load {loadavg()}")
            cap = max(1 << 30, conc * size)
            for name, rep_i in [(n, i) for i in range(args.repeat) for n in order]:
                if name not in targets:
                    continue
                if name == "rclone" and (payload != "unsigned" or (rclone_cells is not None and (wl, size, conc) not in rclone_cells)):
                    continue
                t = targets[name]
                st = os.statvfs(workdir)
                uploads = wl in ("put", "mixed")
                if uploads and st.f_bavail * st.f_frsize < cap + args.min_free_gib * 2**30:
                    log(f"bench: skipping {name} {wl} {human_size(size)} c={conc}: less than {args.min_free_gib} GiB would stay free")
                    continue
                extra = ["--max-bytes", str(cap)] if uploads else []
                rep, cmd = run_cell(bench_bin, t, wl, size, conc, args, extra=extra, payload=payload)
                stack.account(rep)
                rep["target"] = name
                rep["payload"] = payload
                rep["repeat"] = rep_i
                if name == "rclone":
                    rep["rclone_kind"] = rclone_kind
                results.append(rep)
                jsonl.write(json.dumps(rep) + "\n")
                jsonl.flush()
                p = server_proc(rep)
                extra = ""
                if p is not None:
                    extra = f" {p['name']} cpu={p['cpu_cores']:.2f} peak-100ms={p['peak_cores_100ms']:.2f} pool={p.get('pool_cores', 0.0):.2f} peak-rss={peak_rss(p):.1f}MiB"
                g = proxy_proc(rep, "garage")
                if g is not None:
                    extra += f" garage cpu={g['cpu_cores']:.2f}"
                if not rep.get("failed"):
                    w = rep["window"]
                    extra += f" gen={w['generator_cpu_cores']:.2f} other={w['other_cpu_cores']:.2f} load={rep['load_after']}"
                    if rep["total"]["errors"]:
                        extra += f" errors={rep['total']['errors']} ({rep['total']['first_error']})"
                else:
                    extra += f" {rep.get('error')}"
                shown = f"{rep['total']['req_s']:7.1f} req/s" if (wl == "head" or size < (1 << 20)) and not rep.get("failed") else f"{fmt_cell(rep):>7} MiB/s"
                log(f"bench: [{time.time() - t_start:6.0f}s] {name:11} {wl + ('(signed)' if payload == 'signed' else ''):13} {human_size(size):5} c={conc:<2} "
                    f"{shown}{extra}")

        # The RSS test: one large object through each proxy, PUT then GET, c=1.
        rss_results = []
        if args.rss_size:
            size = SIZES.get(args.rss_size) or int(args.rss_size)
            stack.restart()
            targets = stack.targets
            for name in ["pass", "full"]:
                if name not in targets:
                    continue
                t = targets[name]
                for wl in ["put", "get"]:
                    a = argparse.Namespace(**vars(args))
                    a.duration, a.warmup = "1s", "0s"
                    rep, cmd = run_cell(bench_bin, t, wl, size, 1, a, extra=["--requests", "1", "--keys", "1"])
                    stack.account(rep)
                    rep["target"] = name
                    rep["rss_test"] = True
                    rss_results.append(rep)
                    jsonl.write(json.dumps(rep) + "\n")
                    jsonl.flush()
                    p = proxy_proc(rep)
                    log(f"bench: RSS test {name:4} {wl:3} {human_size(size)}: {fmt_cell(rep)} MiB/s, proxy peak RSS "
                        f"{peak_rss(p) if p else float('nan'):.1f} MiB, cpu={p['cpu_cores'] if p else 0:.2f} "
                        f"peak-100ms={p['peak_cores_100ms'] if p else 0:.2f} load={rep.get('load_after')} {rep.get('error', '')}")
        jsonl.close()
        table = render(results, rss_results, rclone_kind, time.time() - t_start)
        with open(os.path.join(out, "table.md"), "w") as f:
            f.write(table)
        print(table)
    finally:
        # Keep the servers' logs with the results (a failed cell is investigated from them).
        if stack is not None:
            stack.stop()
        for p in reversed(procs):
            try:
                p.stop()
            except Exception:
                pass
        save_logs(workdir, os.path.join(out, "logs"), "run", skip=out)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def render_side_by_side(results, by, groups, keys):
    """Latency, rate and CPU per request of every target, one row per cell."""
    order = [t for t in TARGET_ORDER if any(r["target"] == t for r in results)]
    label = {(r["workload"], r.get("payload", "unsigned"), r["size"], r["concurrency"]): object_label(r) for r in results}

    def unit(wl):
        return "req/s" if wl in ("head", "range") else "MiB/s"

    def value(r, wl):
        return r["total"]["req_s"] if wl in ("head", "range") else r["total"]["mib_s"]

    def cell(k, t):
        r = by.get((*k, t))
        if r is None:
            return ["–", "–", "–"]
        if r.get("failed"):
            return ["failed", "–", "–"]
        runs = [x for x in groups.get((*k, t), []) if not x.get("failed")]
        v = [value(x, k[0]) for x in runs]
        spread = f" ({min(v):.0f}–{max(v):.0f})" if len(v) > 1 else ""
        # CPU milliseconds per request: the server (proxy, HAProxy or rclone) and Garage.
        ms = []
        for name in (*SERVERS, "garage"):
            p = proxy_proc(r, name)
            if p is not None and r["total"]["req_s"] > 0:
                ms.append(f"{p['cpu_cores'] / r['total']['req_s'] * 1000:.2f}")
        return [f"{r['total']['p50_ms']:.2f} / {r['total']['p99_ms']:.2f}", f"{value(r, k[0]):.1f}{spread}", " + ".join(ms) or "–"]

    head = "| workload | object | c | unit |"
    rule = "|---|---|---|---|"
    for t in order:
        head += f" {t} p50 / p99 ms | {t} rate | {t} CPU ms/req |"
        rule += "--:|--:|--:|"
    compare = "full-before" in order and "full" in order
    if compare:
        head += " full − full-before p50 ms | full / full-before rate |"
        rule += "--:|--:|"
    head += " load (1/5/15) |"
    rule += "---|"
    L = ["Side by side (median run by rate, range of the runs in brackets; rate is requests/s for HEAD and "
         "Range, MiB/s otherwise; CPU ms/req is the proxy's (or HAProxy's, rclone's) + Garage's CPU time per request):", "", head, rule]
    for k in keys:
        wl, payload, size, c = k
        row = f"| {wl + (' (signed+MD5)' if payload == 'signed' else '')} | {label[k]} | {c} | {unit(wl)} |"
        for t in order:
            row += " " + " | ".join(cell(k, t)) + " |"
        if compare:
            a, b = by.get((*k, "full")), by.get((*k, "full-before"))
            if a and b and not a.get("failed") and not b.get("failed") and value(b, wl) > 0:
                row += f" {a['total']['p50_ms'] - b['total']['p50_ms']:+.2f} | {value(a, wl) / value(b, wl) * 100:.0f} % |"
            else:
                row += " – | – |"
        runs = [by[(*k, t)] for t in order if (*k, t) in by and not by[(*k, t)].get("failed")]
        row += f" {runs[-1]['load_after'] if runs else '–'} |"
        L.append(row)
    return L


def per_object(size):
    """Small objects are counted in objects per second and CPU time per object."""
    return size < (1 << 20)


def cost(r, name):
    """CPU of process `name` per unit moved: CPU-s per GiB (objects ≥ 1 MiB) or CPU-ms per
    object, i.e. CPU-s per 1,000 objects (smaller ones); None when not watched."""
    p = proxy_proc(r, name) if name != "server" else server_proc(r)
    if p is None:
        return None
    if per_object(r["size"]):
        return p["cpu_cores"] / r["total"]["req_s"] * 1000 if r["total"]["req_s"] > 0 else None
    gib_s = r["total"]["mib_s"] / 1024
    return p["cpu_cores"] / gib_s if gib_s > 0 else None


def render_cost(by, groups, keys):
    """The headline: throughput of every target beside the CPU its server and Garage spent."""
    L = ["Throughput and CPU cost (median run; MiB/s and CPU-s per GiB for objects of 1 MiB and more, objects/s "
         "and CPU-ms per object = CPU-s per 1,000 objects below; `server` is the proxy, HAProxy or rclone; the "
         "range of the runs in brackets):", "",
         "| workload | object | c | target | MiB/s | obj/s | p50 / p99 ms | server CPU | Garage CPU | CPU unit | load (1/5/15) |",
         "|---|---|---|---|--:|--:|--:|--:|--:|---|---|"]
    for k in keys:
        wl, payload, size, c = k
        if wl == "head":
            continue
        for t in TARGET_ORDER:
            r = by.get((*k, t))
            if r is None:
                continue
            name = wl + (" (signed+MD5)" if payload == "signed" else "")
            if r.get("failed"):
                L.append(f"| {name} | {object_label(r)} | {c} | {t} | failed | | | | | | |")
                continue
            runs = [x for x in groups.get((*k, t), []) if not x.get("failed")]
            small = per_object(size)
            v = [x["total"]["req_s"] if small else x["total"]["mib_s"] for x in runs]
            spread = f" ({min(v):.0f}–{max(v):.0f})" if len(v) > 1 else ""
            mib_s = f"{r['total']['mib_s']:.1f}" + ("" if small else spread)
            obj_s = f"{r['total']['req_s']:.0f}" + (spread if small else "")
            srv, g = cost(r, "server"), cost(r, "garage")
            unit = "ms/obj" if small else "s/GiB"
            L.append(f"| {name} | {object_label(r)} | {c} | {t} | {mib_s} | {obj_s} "
                     f"| {r['total']['p50_ms']:.2f} / {r['total']['p99_ms']:.2f} "
                     f"| {'–' if srv is None else f'{srv:.2f}'} | {'–' if g is None else f'{g:.2f}'} | {unit} | {r['load_after']} |")
    return L


def render(results, rss_results, rclone_kind, elapsed):
    wl_order = WORKLOADS
    groups = {}
    for r in results:
        groups.setdefault((r["workload"], r.get("payload", "unsigned"), r["size"], r["concurrency"], r["target"]), []).append(r)
    by = {}
    for k, runs in groups.items():
        good = sorted((r for r in runs if not r.get("failed")), key=rate)
        by[k] = good[(len(good) - 1) // 2] if good else runs[0]
    repeats = max((len(v) for v in groups.values()), default=1)
    keys = sorted({(r["workload"], r.get("payload", "unsigned"), r["size"], r["concurrency"]) for r in results},
                  key=lambda k: (wl_order.index(k[0]), k[1] != "unsigned", k[2], k[3]))

    def ok(k, t):
        r = by.get((*k, t))
        return None if r is None or r.get("failed") else r

    def ratio(a, b):
        if a is None or b is None or b["total"]["mib_s"] == 0:
            return None
        return a["total"]["mib_s"] / b["total"]["mib_s"]

    def fr(x):
        return "–" if x is None else f"{x:.2f}"

    def lat(r):
        return "–" if r is None else f"{r['total']['p50_ms']:.1f} / {r['total']['p99_ms']:.1f}"

    def wname(wl, payload):
        return wl + (" (signed+MD5)" if payload == "signed" else "")

    L = []
    if repeats > 1:
        L.append(f"Each cell ran {repeats} times, targets interleaved; the run with the median throughput is shown.")
        L.append("")
    L.extend(render_cost(by, groups, keys))
    L.append("")
    L.extend(render_side_by_side(results, by, groups, keys))
    L.append("")
    # HEAD moves no payload: it is in the table above only.
    keys = [k for k in keys if k[0] != "head"]
    L.append("| workload | size | c | direct MiB/s | pass MiB/s | full MiB/s | rclone MiB/s | full/pass | full/direct | full/rclone "
             "| full p50 / p99 ms | pass p50 / p99 ms | full proxy CPU cores (peak 100 ms) | full RSS MiB (budget) | pass RSS MiB | other CPU | load (1/5/15) |")
    L.append("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    for k in keys:
        wl, payload, size, c = k
        d, p, f, rc = (ok(k, t) for t in ["direct", "pass", "full", "rclone"])
        fp = proxy_proc(f) if f else None
        pp = proxy_proc(p) if p else None
        runs = [r for r in (d, p, f, rc) if r]
        other = max((r["window"]["other_cpu_cores"] for r in runs), default=None)
        load = runs[-1]["load_after"] if runs else "–"
        cpu = f"{fp['cpu_cores']:.2f} ({fp['peak_cores_100ms']:.2f})" if fp else "–"
        frss = f"{peak_rss(fp):.0f} ({64 + c})" if fp else "–"
        prss = f"{peak_rss(pp):.0f}" if pp else "–"
        def spread(t):
            runs = [r for r in groups.get((*k, t), []) if not r.get("failed")]
            if len(runs) < 2:
                return fmt_cell(by.get((*k, t)))
            v = [r["total"]["mib_s"] for r in runs]
            return f"{fmt_cell(by.get((*k, t)))} ({min(v):.0f}–{max(v):.0f})"
        cells = " | ".join(spread(t) for t in ["direct", "pass", "full", "rclone"])
        L.append(f"| {wname(wl, payload)} | {human_size(size)} | {c} | {cells} | {fr(ratio(f, p))} | {fr(ratio(f, d))} "
                 f"| {fr(ratio(f, rc))} | {lat(f)} | {lat(p)} | {cpu} | {frss} | {prss} | {fr(other)} | {load} |")

    L.append("")
    L.append("CPU cost per GiB moved (CPU seconds / GiB of payload; `server` is the proxy, HAProxy or rclone):")
    L.append("")
    L.append("| workload | size | c | target | MiB/s | server s/GiB | garage s/GiB | generator s/GiB | machine busy cores | other cores |")
    L.append("|---|---|---|---|--:|--:|--:|--:|--:|--:|")
    for k in keys:
        wl, payload, size, c = k
        for t in TARGET_ORDER:
            r = ok(k, t)
            if r is None or r["total"]["mib_s"] == 0:
                continue
            gib_s = r["total"]["mib_s"] / 1024
            w = r["window"]
            srv = server_proc(r)
            g = proxy_proc(r, "garage")
            L.append(f"| {wname(wl, payload)} | {human_size(size)} | {c} | {t} | {r['total']['mib_s']:.1f} "
                     f"| {(srv['cpu_cores'] / gib_s) if srv else 0:.2f} | {(g['cpu_cores'] / gib_s) if g else 0:.2f} "
                     f"| {w['generator_cpu_cores'] / gib_s:.2f} | {w['machine_cpu_cores']:.2f} | {w['other_cpu_cores']:.2f} |")

    if rss_results:
        L.append("")
        L.append("| RSS test | target | op | MiB/s | proxy peak RSS MiB (VmHWM) | max sampled VmRSS MiB | proxy CPU cores | of which crypto pool | peak 100 ms | busiest thread | load |")
        L.append("|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|")
        for r in rss_results:
            p = proxy_proc(r)
            if r.get("failed") or p is None:
                L.append(f"| {human_size(r['size'])} | {r['target']} | {r['workload']} | failed: {r.get('error', '')[:80]} | | | | | | | |")
                continue
            L.append(f"| {human_size(r['size'])} | {r['target']} | {r['workload']} | {r['total']['mib_s']:.1f} | {peak_rss(p):.1f} "
                     f"| {p['peak_rss_sampled'] / 2**20:.1f} | {p['cpu_cores']:.2f} | {p.get('pool_cores', 0.0):.2f} | {p['peak_cores_100ms']:.2f} "
                     f"| {p['busiest_thread_cores']:.2f} | {r['load_after']} |")

    # Goals.
    L.append("")
    L.append("Goals:")
    L.append("")
    for wl in ["put", "get"]:
        k = (wl, "unsigned", 4 << 20, 8)
        f, p, rc = ok(k, "full"), ok(k, "pass"), ok(k, "rclone")
        x = ratio(f, p)
        if x is not None:
            L.append(f"- 4 MiB {wl.upper()} c=8, full ≥ 85 % of pass-through: {x * 100:.0f} % → {'met' if x >= 0.85 else 'NOT met'}")
        y = ratio(f, rc)
        if y is not None:
            L.append(f"- 4 MiB {wl.upper()} c=8, full ≥ 3× rclone: {y:.2f}× → {'met' if y >= 3 else 'NOT met'}")
    for wl, payload, size, c in [("put", "unsigned", 16 << 10, 32), ("get", "unsigned", 16 << 10, 32)]:
        f, hp = ok((wl, payload, size, c), "full"), ok((wl, payload, size, c), "haproxy")
        if f and hp and hp["total"]["req_s"] > 0:
            x = f["total"]["req_s"] / hp["total"]["req_s"]
            L.append(f"- 16 KiB {wl.upper()} c=32, full ≥ HAProxy in objects/s: {f['total']['req_s']:.0f} / "
                     f"{hp['total']['req_s']:.0f} = {x * 100:.0f} % → {'met' if x >= 1 else 'NOT met'}")
    k = ("ranged", "unsigned", 4 << 20, 8)
    f, p = ok(k, "full"), ok(k, "pass")
    x = ratio(f, p)
    if x is not None:
        L.append(f"- 4 MiB ranged GET c=8, full ≥ 95 % of pass-through: {x * 100:.0f} % → {'met' if x >= 0.95 else 'NOT met'}")
        fc, pc = cost(f, "server"), cost(p, "server")
        if fc is not None and pc is not None:
            L.append(f"- 4 MiB ranged GET c=8, full proxy CPU ≤ pass + 0.35 CPU-s/GiB: {fc:.2f} vs {pc:.2f} + 0.35 → "
                     f"{'met' if fc <= pc + 0.35 else 'NOT met'}")
        fg, pg = cost(f, "garage"), cost(p, "garage")
        if fg is not None and pg:
            L.append(f"- 4 MiB ranged GET c=8, Garage CPU per GiB on full within 10 % of pass: {fg:.2f} vs {pg:.2f} → "
                     f"{'met' if fg <= pg * 1.1 else 'NOT met'}")
    for c, goal in [(8, 2.5), (1, 3.3)]:
        for size in (4 << 20, 64 << 20):
            f = ok(("put", "signed", size, c), "full")
            fc = cost(f, "server") if f else None
            if fc is not None:
                L.append(f"- {human_size(size)} PUT (signed+MD5) c={c}, full proxy ≤ {goal} CPU-s/GiB: {fc:.2f} → "
                         f"{'met' if fc <= goal else 'NOT met'}")
    worst = None
    for r in results + rss_results:
        p = proxy_proc(r) if not r.get("failed") else None
        if p is None:
            continue
        budget = 64 + r["concurrency"]
        over = peak_rss(p) - budget
        if worst is None or over > worst[0]:
            worst = (over, r, peak_rss(p), budget)
    if worst:
        over, r, rss, budget = worst
        L.append(f"- proxy RSS ≤ 64 MiB + 1 MiB per in-flight request: closest cell {r['target']} {r['workload']} "
                 f"{human_size(r['size'])} c={r['concurrency']} at {rss:.1f} MiB of {budget} MiB → {'met' if over <= 0 else 'NOT met'}")
    big = [r for r in rss_results if not r.get("failed") and r["target"] == "full" and proxy_proc(r)]
    if big:
        L.append("- large object streams without growing memory: full proxy peak RSS "
                 + ", ".join(f"{r['workload']} {human_size(r['size'])} {peak_rss(proxy_proc(r)):.1f} MiB" for r in big))
    for wl, payload in [("put", "signed"), ("put", "unsigned"), ("get", "unsigned")]:
        r = ok((wl, payload, 64 << 20, 1), "full")
        p = proxy_proc(r) if r else None
        if p:
            pool = p.get("pool_cores", 0.0)
            conn = p["cpu_cores"] - pool
            # Both sides busy: the digests run on pool threads while the connection's own
            # thread encrypts and moves the bytes (the backend, on the same cores, sets the pace).
            spread = pool >= 0.15 and conn >= 0.15
            L.append(f"- one connection, 64 MiB {wname(wl, payload)}: full proxy {p['cpu_cores']:.2f} cores on average "
                     f"({pool:.2f} on the crypto pool, {conn:.2f} on the other threads), at most "
                     f"{p['peak_cores_100ms']:.2f} over any 100 ms, above 1.1 cores {p['share_above_one_core'] * 100:.0f} % of the time "
                     f"→ work spread over cores: {'yes' if spread else 'no'}")
    if rclone_kind:
        L.append("")
        L.append(f"rclone: `rclone {rclone_kind}` over a crypt remote on the same Garage"
                 + (" (this rclone has no `serve s3`, added in 1.65; WebDAV PUT/GET of the same objects instead)" if rclone_kind != "serve s3" else ""))
    L.append(f"\nMatrix time: {elapsed / 60:.1f} min.")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
