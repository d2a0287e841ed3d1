"""Runs the soak test (s3cp-bench --workload soak) against a full s3-crypt-proxy on Garage.

Started by scripts/soak.sh. Uses tests/e2e/harness.py for Garage, memkey-server, the key
delivery and the proxy (plain HTTP, default filter chain, conditional_writes: enforce as on
Garage in the tests), all on 127.0.0.1, and stops them by PID at the end. The exit code is
s3cp-bench's: 0 only with zero errors, zero mismatches and a flat proxy RSS.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

BUCKET = "soak"


def start(workdir, bin_dir, db_engine="lmdb"):
    """Garage, keyd with a key and the full proxy; returns (garage, keyd, proxy)."""
    os.environ["S3CP_BIN_DIR"] = bin_dir
    import harness as h
    h.BIN_DIR = bin_dir
    garage = h.Garage(workdir, db_engine=db_engine)
    keyd = proxy = None
    try:
        import boto3
        from botocore.config import Config
        s3 = boto3.client("s3", endpoint_url=garage.endpoint, region_name=garage.region,
                          aws_access_key_id=garage.access_key, aws_secret_access_key=garage.secret_key,
                          config=Config(s3={"addressing_style": "path"}))
        s3.create_bucket(Bucket=BUCKET)
        keyd = h.Keyd(workdir)
        r = keyd.send_key(keyd.new_key(1))
        if r.returncode != 0:
            raise RuntimeError(f"memkey-admin key send: {r.stderr}")
        proxy = h.Proxy(workdir, garage, keyd, tls=False, allowed_buckets=[BUCKET], conditional_writes="enforce",
                        log_level="warn")
        proxy.wait_ready()
    except BaseException:
        for p in (proxy, keyd, garage):
            if p is not None:
                p.stop()
        raise
    return garage, keyd, proxy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", default="10m")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--max-size", default="8MiB")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--garage-db", choices=["lmdb", "sqlite"], default="lmdb",
                    help="Garage's metadata engine (sqlite answers 503 'database is locked' under this load)")
    ap.add_argument("--min-free-gib", type=float, default=6.0,
                    help="stop the run early (cleanly) when less is free on the work disk")
    ap.add_argument("--json", default=None, help="also write the report as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--cluster", action="store_true",
                    help="issue 17: 3 replicas behind HAProxy on a 3-node Garage, the six failure drills under "
                         "PBS-like load, then throughput with 1, 2 and 3 replicas (tests/e2e/cluster_drills.py)")
    ap.add_argument("--minutes", type=float, default=None, help="--cluster: total load time of the drills (default 5.5)")
    ap.add_argument("--throughput-seconds", type=int, default=30, help="--cluster: seconds per throughput run")
    ap.add_argument("--skip-drills", action="store_true", help="--cluster: only the throughput runs (on a fresh cluster)")
    args, extra = ap.parse_known_args()
    if args.cluster:
        sys.exit(cluster_main(args))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bin_dir = os.path.abspath(args.bin_dir)
    workdir = tempfile.mkdtemp(prefix="s3cp-soak-")
    st = os.statvfs(workdir)
    print(f"soak: work directory {workdir} ({st.f_bavail * st.f_frsize / 2**30:.0f} GiB free; a 10-minute run "
          f"keeps ~30 GB in Garage); {os.cpu_count()} cores, load {open('/proc/loadavg').read().split()[:3]}",
          file=sys.stderr, flush=True)
    garage, keyd, proxy = start(workdir, bin_dir, args.garage_db)
    rc = 1
    try:
        cmd = [os.path.join(bin_dir, "s3cp-bench"), "--workload", "soak", "--endpoint", proxy.endpoint,
               "--access-key", proxy.access_key, "--secret-key", proxy.secret_key, "--region", "us-east-1",
               "--bucket", BUCKET, "--concurrency", str(args.clients), "--duration", args.duration,
               "--size", args.max_size, "--watch", f"proxy={proxy.proc.pid}", *extra]
        if args.json:
            cmd.append("--json")
        print("soak: " + " ".join(cmd), file=sys.stderr, flush=True)
        bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        # Garage frees deleted blocks only ~10 minutes later: a 10-minute soak keeps ~30 GB.
        # Stop the run cleanly (SIGTERM: the clients clean up, the report is printed) before
        # the disk fills up.
        stop = threading.Event()

        def watch_disk():
            while not stop.wait(5):
                st = os.statvfs(workdir)
                free = st.f_bavail * st.f_frsize / 2**30
                if free < args.min_free_gib:
                    print(f"soak: only {free:.1f} GiB free on the work disk: stopping the run early",
                          file=sys.stderr, flush=True)
                    bench.send_signal(signal.SIGTERM)
                    return

        watcher = threading.Thread(target=watch_disk, daemon=True)
        watcher.start()
        out, _ = bench.communicate()
        stop.set()
        r = subprocess.CompletedProcess(cmd, bench.returncode, out)
        if args.json:
            with open(args.json, "w") as f:
                f.write(r.stdout)
        rc = r.returncode
    finally:
        for p in (proxy, keyd, garage):
            try:
                p.stop()
            except Exception as e:
                print(f"soak: stopping: {e}", file=sys.stderr)
        if rc != 0 or args.keep:
            print(f"soak: logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(rc)


def cluster_main(args):
    """The full soak of issue 17; prints one line per drill and the throughput table, and
    writes everything as JSON (--json)."""
    import json
    import time
    bin_dir = os.path.abspath(args.bin_dir)
    os.environ["S3CP_BIN_DIR"] = bin_dir
    import harness as h
    h.BIN_DIR = bin_dir
    import cluster_drills as cd
    clients = args.clients if args.clients != 64 else 32
    max_size = args.max_size if args.max_size != "8MiB" else "2MiB"
    total = (args.minutes or 5.5) * 60
    # Shares of the total load time; each drill's fault lasts what the issue asks for.
    plan = {
        "kill": dict(share=0.15, lead=0.3, timing={"down": 10}),
        "upgrade": dict(share=0.15, lead=0.2, timing={"between": 5}),
        "stop": dict(share=0.15, lead=0.2, timing={"down": 10}),
        "garage": dict(share=0.25, lead=0.1, timing={"down": 60}),
        "keyd": dict(share=0.15, lead=0.2, timing={"down": 15}),
        "slow": dict(share=0.15, lead=0.3, timing={"down": 10}),
    }
    workdir = tempfile.mkdtemp(prefix="s3cp-cluster-soak-")
    print(f"soak --cluster: work directory {workdir}; {os.cpu_count()} cores, load "
          f"{open('/proc/loadavg').read().split()[:3]}; {clients} clients, {total / 60:.1f} min of drills",
          file=sys.stderr, flush=True)
    c = cd.Cluster(workdir)
    out = {"clients": clients, "max_size": max_size, "drills": [], "throughput": [],
           "load_before": open("/proc/loadavg").read().split()[:3]}
    ok = True
    try:
        def free_gib():
            st = os.statvfs(workdir)
            return st.f_bavail * st.f_frsize / 2**30

        for name, p in ({} if args.skip_drills else plan).items():
            if free_gib() < args.min_free_gib:
                print(f"soak --cluster: only {free_gib():.1f} GiB free: drill {name} skipped", file=sys.stderr, flush=True)
                ok = False
                continue
            seconds = max(int(total * p["share"]), p["timing"].get("down", 0) + 20)
            r = cd.run_drill(c, name, seconds=seconds, lead=int(seconds * p["lead"]), timing=p["timing"],
                             clients=clients, max_size=max_size)
            out["drills"].append(r)
            print(cd.summary_line(r), flush=True)
            print("  fault: " + json.dumps(r["fault"]), flush=True)
            s, b = r["soak"], r["boto"]
            good = (not s.get("failed") and s.get("mismatches") == 0 and not b["failed"] and b["wrong_bytes"] == 0
                    and all(v.get("passed") for v in r["verify"].values()) and all(d["ok"] for d in r["decrypt_sample"]))
            ok = ok and good
        if free_gib() >= args.min_free_gib + 10:
            out["throughput"] = cd.throughput(c, seconds=args.throughput_seconds)
        else:
            print(f"soak --cluster: only {free_gib():.1f} GiB free: throughput runs skipped", file=sys.stderr, flush=True)
        for row in out["throughput"]:
            print("throughput " + json.dumps(row), flush=True)
    finally:
        out["load_after"] = open("/proc/loadavg").read().split()[:3]
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
        c.stop()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"soak --cluster: logs kept in {workdir}", file=sys.stderr)
    print("soak --cluster: " + ("PASSED" if ok else "FAILED"), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    main()
