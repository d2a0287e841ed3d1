"""A remote backend, as users have it (issue 14, goal 4): Garage behind a TLS terminator and a
round-trip delay, the proxy and the load generator outside; PBS-like uploads and whole-object
downloads through the full proxy against direct access over the same path, in one interleaved
run; backend requests per client operation and TLS handshakes counted.

Started by `scripts/bench.sh --remote` (which builds the release binaries). The path:

    s3cp-bench ──┬───────────────────────────────┐ direct: https://127.0.0.1:<relay>
                 └─ s3-crypt-proxy (full chain) ─┤ proxy: http://127.0.0.1:<proxy>, backend https://127.0.0.1:<relay>
                                                 ▼
            s3cp-delay-relay (RTT/2 each way, TCP handshake's round trip, 4 MiB window)
                                                 ▼  veth into network namespace s3cp-remote-<pid>
            [ HAProxy: TLS 1.3 termination, mode tcp ] ─▶ [ Garage on the namespace's 127.0.0.1 ]

The delay is added in user space because this machine's kernel has no netem qdisc
(CONFIG_NET_SCH_NETEM is off, and fq for EDT pacing too); `--no-netns` keeps Garage and
HAProxy in the root namespace on 127.0.0.1 (for a machine where this runs without root).
HAProxy in `mode tcp` relays each TLS connection to one Garage connection, so its
`CumSslConns` counts the TLS handshakes of whoever connects, the proxy or the generator.

Targets: `direct` (the generator to the TLS endpoint), `full` (the proxy, default chain,
profile garage: `conditional_writes: enforce`), and for the PUT cells `full-cond-backend`
(the same with `conditional_writes: backend`, a measurement of what the enforcing HEAD costs;
NOT sound on Garage, which ignores If-None-Match).
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
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
sys.path.insert(0, HERE)

import matrix  # noqa: E402  (parse_bytes, proxy_proc, loadavg, log)

BUCKET = "bench"
log = matrix.log
FULL_CHAIN = ["sigv4", "allowlist", "conditional", "crypto", "listing", "resign"]


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


class Netns:
    """A network namespace joined to the root one by a veth pair; removed by close()."""

    def __init__(self):
        tag = os.getpid() % 10000
        self.name = f"s3cp-remote-{tag}"
        self.host_if, self.ns_if = f"s3r{tag}h", f"s3r{tag}n"
        net = tag % 250
        self.host_ip, self.ns_ip = f"10.231.{net}.1", f"10.231.{net}.2"
        self.created = False
        sh("ip", "netns", "add", self.name)
        self.created = True
        try:
            sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            sh("ip", "link", "set", self.ns_if, "netns", self.name)
            sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            sh("ip", "link", "set", self.host_if, "up")
            sh("ip", "-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
            sh("ip", "-n", self.name, "link", "set", self.ns_if, "up")
            sh("ip", "-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def prefix(self):
        return ["ip", "netns", "exec", self.name]

    def wait_port(self, port, proc, timeout=30):
        deadline = time.time() + timeout
        # Garage listens on the namespace's loopback, the TLS front on its veth address.
        probe = self.prefix() + ["bash", "-c", f"(exec 3<>/dev/tcp/127.0.0.1/{port}) || exec 3<>/dev/tcp/{self.ns_ip}/{port}"]
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited: {proc.log_path}")
            if subprocess.run(probe, capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"nothing listens on port {port} in {self.name}")

    def close(self):
        # Deleting the namespace deletes its end of the veth pair, and so the pair.
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            self.created = False


def garage_class(h, ns):
    """harness.Garage, its server and CLI run inside `ns` (None: as harness runs it)."""
    if ns is None:
        return h.Garage

    class NsGarage(h.Garage):
        def start(self):
            self.proc = h.Proc(ns.prefix() + [shutil.which("garage"), "-c", self.conf, "server"], self.dir, "garage",
                               env={"RUST_LOG": "warn"})
            ns.wait_port(self.port, self.proc.p)

        def _garage(self, *args):
            for _ in range(50):
                r = subprocess.run(ns.prefix() + [shutil.which("garage"), "-c", self.conf, *args], capture_output=True, text=True)
                if r.returncode == 0:
                    return r.stdout
                time.sleep(0.2)
            raise RuntimeError(f"garage {' '.join(args)} failed: {r.stderr}")

    return NsGarage


METRICS = ("s3_crypt_proxy_backend_requests_total", "s3_crypt_proxy_backend_connections_total",
           "s3_crypt_proxy_backend_tls_handshakes_total", "s3_crypt_proxy_requests_total")


def scrape(proxy):
    """{(name, labels...): value} of the counters this report uses."""
    import re
    _, text = proxy.admin_get("/metrics")
    out = {}
    for line in text.decode().splitlines():
        m = re.match(r"([a-zA-Z0-9_:]+)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) not in METRICS:
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def delta(after, before):
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def summarize(d):
    """Client requests, backend requests by kind, new connections, TLS handshakes."""
    s = {"client": 0.0, "backend": {}, "conns": 0.0, "tls": 0.0}
    for (name, labels), v in d.items():
        lab = dict(labels)
        if name == "s3_crypt_proxy_requests_total":
            s["client"] += v
        elif name == "s3_crypt_proxy_backend_requests_total":
            s["backend"][lab["kind"]] = s["backend"].get(lab["kind"], 0.0) + v
        elif name == "s3_crypt_proxy_backend_connections_total":
            s["conns"] += v
        elif name == "s3_crypt_proxy_backend_tls_handshakes_total":
            s["tls"] += v
    return s


class Target:
    def __init__(self, name, endpoint, ak, sk, ca_file=None, proxy=None, watch=()):
        self.name, self.endpoint, self.ak, self.sk, self.ca_file, self.proxy = name, endpoint, ak, sk, ca_file, proxy
        self.watch = list(watch)
        self.rtt_ms = None  # the round trip added on its path (set by main)


def start_proxy(h, workdir, name, backend, ca_file, keyd, conditional, verified_writes="trailer"):
    d = os.path.join(workdir, name)
    os.makedirs(d, exist_ok=True)
    p = h.Proxy(d, backend, keyd, tls=False, name="proxy",
                backend_options={"ca_file": ca_file, "profile": "garage", "verified_writes": verified_writes},
                filters=FULL_CHAIN, allowed_buckets=[BUCKET], audit_log="off", log_level="warn",
                conditional_writes=conditional,
                # memkey's default poll interval, which also paces the readiness probe (HEAD bucket).
                memkey={"socket_path": keyd.socket, "poll_interval": "5s"})
    p.wait_ready(60)
    return p


def cpu_halves():
    """The machine's CPUs split in two: (client side, backend side) for --pin."""
    cpus = sorted(os.sched_getaffinity(0))
    half = max(1, len(cpus) // 2)
    return cpus[:half], cpus[half:] or cpus[:half]


def pin(pid, cpus):
    """Every thread of `pid` (and the threads it starts later) on `cpus`."""
    subprocess.run(["taskset", "-a", "-p", "-c", ",".join(map(str, cpus)), str(pid)], check=True, capture_output=True)
    if os.sched_getaffinity(pid) != set(cpus):
        raise RuntimeError(f"pinning {pid} to CPUs {cpus} did not take: {sorted(os.sched_getaffinity(pid))}")


def run_cell(bench_bin, t, workload, size, conc, args, extra=()):
    cmd = [bench_bin, "--endpoint", t.endpoint, "--access-key", t.ak, "--secret-key", t.sk, "--bucket", BUCKET,
           "--workload", workload, "--size", str(size), "--concurrency", str(conc), "--json", "--prefix", t.name.replace("@", "-"),
           "--label", t.name.replace("@", "-"), "--request-timeout", "120s", *extra]
    if t.ca_file:
        cmd += ["--ca-file", t.ca_file]
    for n, pid in t.watch:
        cmd += ["--watch", f"{n}={pid}"]
    if args.pin:
        cmd = ["taskset", "-c", ",".join(map(str, args.client_cpus)), *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    try:
        rep = json.loads(line)
    except ValueError:
        rep = {"failed": True, "error": (r.stderr or r.stdout).strip()[-500:]}
    if r.returncode != 0:
        rep["failed"] = True
        rep.setdefault("error", r.stderr.strip()[-500:])
    return rep


def measure(bench_bin, t, term, workload, size, conc, args, extra):
    """One cell with the counters read around it."""
    before_m = scrape(t.proxy) if t.proxy else {}
    before_tls = term.tls_handshakes()
    rep = run_cell(bench_bin, t, workload, size, conc, args, extra)
    rep["tls_handshakes_seen_by_backend"] = term.tls_handshakes() - before_tls
    if t.proxy:
        rep["proxy_counts"] = summarize(delta(scrape(t.proxy), before_m))
    return rep


def human(n):
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n} B"


def render(results, args, elapsed, env):
    L = [f"Remote backend: RTT {args.rtt}{' (targets marked @0ms: ' + args.also_rtt + ')' if args.also_rtt else ''} added by s3cp-delay-relay, TLS 1.3 (HAProxy) in front of one Garage "
         f"{'in its own network namespace' if env['netns'] else 'on 127.0.0.1'}; {env['cpu']}"
         + (f", client side (proxies, load generator) pinned to CPUs {env['pinned']['client']} and backend side (Garage, TLS front, relays) to {env['pinned']['backend']}" if env.get("pinned") else "")
         + f"; load before {env['load_before']}.", ""]
    L.append("| workload | c | target | MiB/s | of direct | p50 / p99 ms | client requests | backend requests per client request (by kind) "
             "| new backend connections | TLS handshakes per 1,000 requests | proxy CPU cores | load (1/5/15) |")
    L.append("|---|--:|---|--:|--:|--:|--:|---|--:|--:|--:|---|")
    direct = {}
    for r in results:
        if r["target"].startswith("direct") and not r.get("failed"):
            direct[(r["cell"], r["repeat"], r.get("rtt_ms"))] = r["total"]["mib_s"]
    for r in results:
        head = f"| {r['cell_name']} | {r['concurrency']} | {r['target']} |"
        if r.get("failed"):
            L.append(head + f" failed: {r.get('error', '')[:120]} | | | | | | | | |")
            continue
        t = r["total"]
        d = direct.get((r["cell"], r["repeat"], r.get("rtt_ms")))
        of = f"{t['mib_s'] / d * 100:.0f} %" if d and not r["target"].startswith("direct") else "–"
        ops = t.get("requests") or 0
        pc = r.get("proxy_counts")
        if pc:
            client = pc["client"] or 1
            kinds = ", ".join(f"{k} {v / client:.2f}" for k, v in sorted(pc["backend"].items(), key=lambda kv: kv[0] != "proxied"))
            per = f"{sum(pc['backend'].values()) / client:.2f} ({kinds})"
            conns = f"{pc['conns']:.0f}"
            tls = f"{pc['tls'] / client * 1000:.1f}"
            nreq = f"{pc['client']:.0f}"
        else:
            nreq = str(ops) if ops else "–"
            per = "1.00 (the request itself)"
            conns = f"{r['tls_handshakes_seen_by_backend']}"
            tls = f"{r['tls_handshakes_seen_by_backend'] / ops * 1000:.1f}" if ops else "–"
        p = matrix.proxy_proc(r)
        cpu = f"{p['cpu_cores']:.2f}" if p else "–"
        L.append(f"{head} {t['mib_s']:.1f} | {of} | {t['p50_ms']:.0f} / {t['p99_ms']:.0f} | {nreq} | {per} | {conns} | {tls} | {cpu} | {r['load_after']} |")
    L.append("")
    L.append("Backend requests, connections and handshakes of the proxy rows come from the proxy's own counters "
             "(`s3_crypt_proxy_backend_requests_total{kind}`, `..._backend_connections_total`, `..._backend_tls_handshakes_total`, "
             "client requests from `s3_crypt_proxy_requests_total`, read before and after each cell); the direct rows' "
             "handshakes are HAProxy's `CumSslConns`. The GET cells' read set was uploaded before the counters were read.")
    L.append(f"\nRun time: {elapsed / 60:.1f} min.")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rtt", "--delay", dest="rtt", default="30ms", help="round trip added between the proxy and the backend")
    ap.add_argument("--also-rtt", default="", help="more round-trip times measured in the same run (e.g. 0ms: "
                    "what the delay itself costs), each through its own relay and proxies; targets get @<rtt> appended")
    ap.add_argument("--total", default="512MiB", help="bytes per PUT cell (and read per GET cell)")
    ap.add_argument("--size", default="4MiB", help="object (chunk) size")
    ap.add_argument("--concurrency", default="8,16")
    ap.add_argument("--workloads", default="put,get", help="put (signed SHA-256 + Content-MD5 + If-None-Match: *), get (whole objects) and ranged (whole objects by one Range request each, as s5cmd sends them)")
    ap.add_argument("--before-bin-dir", help="a second proxy build: target full-before runs its s3-crypt-proxy (conditional_writes: enforce)")
    ap.add_argument("--targets", default="direct,full,full-cond-backend")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--window", default="4096", help="s3cp-delay-relay's window per direction and connection, KiB")
    ap.add_argument("--pin", action="store_true", help="the backend side (Garage, its TLS front, the delay relays) on one half "
                    "of the CPUs, the client side (proxies, load generator) on the other, as if the backend were another "
                    "machine: the proxy's CPU then does not take the backend's")
    ap.add_argument("--no-netns", action="store_true", help="Garage and HAProxy on 127.0.0.1 in the root namespace")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--out", default=None, help="directory for results.jsonl and table.md")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--work-root", default=None, help="where the work directory (and Garage's data) goes, e.g. /dev/shm "
                    "to keep a 512 MiB × cells run off a small disk (default: the system's temporary directory)")
    ap.add_argument("--min-free-gib", type=float, default=8.0, help="stop before an upload that would leave less free space")
    args = ap.parse_args()
    args.client_cpus, args.backend_cpus = cpu_halves()

    args.bin_dir = os.path.abspath(args.bin_dir)
    os.environ["S3CP_BIN_DIR"] = args.bin_dir
    import harness as h
    h.BIN_DIR = args.bin_dir
    bench_bin, relay_bin = h.binary("s3cp-bench"), h.binary("s3cp-delay-relay")
    size, total = matrix.parse_bytes(args.size), matrix.parse_bytes(args.total)
    rtt_ms = int(args.rtt.removesuffix("ms"))
    rtts = [rtt_ms] + [int(x.removesuffix("ms")) for x in args.also_rtt.split(",") if x and int(x.removesuffix("ms")) != rtt_ms]
    wanted = args.targets.split(",")
    concs = [int(c) for c in args.concurrency.split(",") if c]
    workloads = [w for w in args.workloads.split(",") if w]

    workdir = tempfile.mkdtemp(prefix="s3cp-remote-", dir=args.work_root)
    # A SIGTERM (a timeout, an operator) still runs the clean-up below: processes, namespace, files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = args.out or os.path.join(workdir, "out")
    os.makedirs(out, exist_ok=True)
    log(f"remote: work directory {workdir}, results in {out}")
    env = {"cpu": f"{os.cpu_count()} cores", "load_before": matrix.loadavg(), "netns": not args.no_netns}
    ns = None
    stopping = []
    results = []
    t0 = time.time()
    try:
        if not args.no_netns:
            ns = Netns()
            log(f"remote: namespace {ns.name}, backend host {ns.ns_ip}")
        garage = garage_class(h, ns)(workdir, db_engine="lmdb")
        stopping.append(garage)
        term = h.TlsFront(workdir, garage.port, listen_ip=ns.ns_ip if ns else "127.0.0.1",
                          prefix=ns.prefix() if ns else (), wait=ns.wait_port if ns else None)
        stopping.append(term)
        if args.pin:
            for pid in (garage.proc.pid, term.proc.pid):
                pin(pid, args.backend_cpus)
            log(f"remote: client side on CPUs {args.client_cpus}, backend side on {args.backend_cpus}")
            env["pinned"] = {"client": args.client_cpus, "backend": args.backend_cpus}
        upstream = f"{ns.ns_ip if ns else '127.0.0.1'}:{term.port}"
        endpoints = {}
        for ms in rtts:
            # One relay per round-trip time, all to the same TLS front and Garage.
            relay_port = h.free_port()
            relay = h.Proc([relay_bin, "--listen", f"127.0.0.1:{relay_port}", "--upstream", upstream, "--rtt", f"{ms}ms",
                            "--window-kib", args.window, "--max-lifetime", "7200s"], workdir, f"relay-{ms}ms")
            stopping.append(relay)
            if args.pin:
                pin(relay.pid, args.backend_cpus)
            h.wait_port(relay_port, relay.p)
            endpoints[ms] = f"https://127.0.0.1:{relay_port}"
        endpoint = endpoints[rtt_ms]
        # The bucket, over the delayed TLS path like everything else.
        r = subprocess.run([bench_bin, "--endpoint", endpoint, "--ca-file", term.ca_file, "--access-key", garage.access_key,
                            "--secret-key", garage.secret_key, "--bucket", BUCKET, "--workload", "head", "--size", "1",
                            "--create-bucket", "--duration", "1s", "--warmup", "0s", "--requests", "1", "--keys", "1"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"creating the bucket over {endpoint} failed: {r.stderr[-2000:]}")
        keyd = h.Keyd(workdir)
        stopping.append(keyd)
        keyd.send_key(keyd.new_key(1))
        gw = ("garage", garage.proc.pid)
        targets = {}
        order = []
        for ms in rtts:
            suffix = "" if ms == rtt_ms else f"@{ms}ms"
            backend = types.SimpleNamespace(endpoint=endpoints[ms], region="garage", access_key=garage.access_key,
                                            secret_key=garage.secret_key)
            if "direct" in wanted:
                order.append("direct" + suffix)
                targets["direct" + suffix] = Target("direct" + suffix, endpoints[ms], garage.access_key, garage.secret_key,
                                                    ca_file=term.ca_file, watch=[gw])
            # full-unverified: verified_writes off, to tell the proxy's own cost from what Garage 2.5's
            # aws-chunked decoder spends on the trailer (BENCHMARKS.md, ninth session).
            for name, cond, verified in (("full", "enforce", "trailer"), ("full-before", "enforce", "trailer"),
                                         ("full-cond-backend", "backend", "trailer"), ("full-unverified", "enforce", "off")):
                if name in wanted:
                    if name == "full-before" and not args.before_bin_dir:
                        raise SystemExit("target full-before needs --before-bin-dir")
                    # harness.binary() reads BIN_DIR when the proxy starts.
                    h.BIN_DIR = os.path.abspath(args.before_bin_dir) if name == "full-before" else args.bin_dir
                    p = start_proxy(h, workdir, name + suffix.replace("@", "-"), backend, term.ca_file, keyd, cond, verified)
                    if args.pin:
                        pin(p.proc.pid, args.client_cpus)
                    h.BIN_DIR = args.bin_dir
                    stopping.append(p)
                    order.append(name + suffix)
                    targets[name + suffix] = Target(name + suffix, p.endpoint, p.access_key, p.secret_key, proxy=p,
                                                    watch=[("proxy", p.proc.pid), gw])
            for name in order:
                targets[name].rtt_ms = targets[name].rtt_ms if targets[name].rtt_ms is not None else ms
        log(f"remote: RTT {rtt_ms} ms via {endpoint} -> {upstream} (and {', '.join(f'{m} ms' for m in rtts if m != rtt_ms) or 'no other'}); "
            f"targets {', '.join(order)}; load {matrix.loadavg()}")

        for wl in workloads:
            for conc in concs:
                cell = f"{wl}:{conc}"
                cell_name = {"put": f"PUT {human(size)} ×{total // size} signed+MD5, If-None-Match: *",
                             "get": f"GET {human(size)} whole, {human(total)} read",
                             "ranged": f"GET {human(size)} by Range (bytes=0-…), {human(total)} read"}[wl]
                for rep_i in range(args.repeat):
                    for name in order:
                        if wl in ("get", "ranged") and name.startswith("full-cond-backend"):
                            continue
                        if wl == "put" and name.startswith("full-cond-backend@"):
                            continue  # the enforce cost is measured at the main round-trip time
                        t = targets[name]
                        st = os.statvfs(workdir)
                        if st.f_bavail * st.f_frsize < total + args.min_free_gib * 2**30:
                            raise RuntimeError(f"less than {args.min_free_gib} GiB would stay free in {workdir}: stopping")
                        extra = ["--warmup", "0s", "--duration", "600s", "--max-bytes", str(total)]
                        if wl == "put":
                            extra += ["--payload", "signed", "--if-none-match"]
                        else:
                            # The read set first, outside the counted window.
                            run_cell(bench_bin, t, "get", size, conc, args, ["--warmup", "0s", "--duration", "1s", "--requests", "1",
                                                                             "--keys", str(max(4, min(64, total // size // 2)))])
                            extra += ["--keys", str(max(4, min(64, total // size // 2)))]
                        rep = measure(bench_bin, t, term, wl, size, conc, args, extra + (["--range-part", "50MiB"] if wl == "ranged" else []))
                        rep.update(target=name, cell=cell, cell_name=cell_name, repeat=rep_i, concurrency=conc, rtt_ms=t.rtt_ms)
                        results.append(rep)
                        with open(os.path.join(out, "results.jsonl"), "a") as f:
                            f.write(json.dumps(rep) + "\n")
                        if rep.get("failed"):
                            log(f"remote: {cell} {name}: failed {rep.get('error')}")
                        else:
                            pc = rep.get("proxy_counts")
                            extra_s = f" backend {pc['backend']} conns {pc['conns']:.0f} tls {pc['tls']:.0f} client {pc['client']:.0f}" if pc else ""
                            log(f"remote: [{time.time() - t0:5.0f}s] {cell:7} {name:17} {rep['total']['mib_s']:7.1f} MiB/s "
                                f"p50 {rep['total']['p50_ms']:.0f} ms, handshakes at the backend {rep['tls_handshakes_seen_by_backend']}{extra_s} "
                                f"load {rep['load_after']}")
        table = render(results, args, time.time() - t0, env)
        with open(os.path.join(out, "table.md"), "w") as f:
            f.write(table)
        print(table)
    finally:
        for p in reversed(stopping):
            try:
                p.stop()
            except Exception as e:
                log(f"remote: stopping: {e}")
        if ns is not None:
            ns.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
