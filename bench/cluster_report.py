"""Markdown tables from the JSON of `scripts/soak.sh --cluster --json FILE` (bench/soak.py):
one row per drill (operations attempted / succeeded / failed / retried, end check) and one
per throughput run (replicas, MiB/s, proxy CPU seconds per GiB). Used for BENCHMARKS.md.

    python3 bench/cluster_report.py cluster.json
"""

import json
import sys


def fmt(d):
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) if d else "–"


def drills(rep):
    print("| drill | fault | s3cp-bench attempted / succeeded | failed | retried | boto3 attempted / succeeded (retried) "
          "| acknowledged objects read back × replicas | lost | wrong bytes | stale listing entries | raw decrypt |")
    print("|---|---|--:|---|---|---|--:|--:|--:|--:|--:|")
    for r in rep["drills"]:
        s, b, v = r["soak"], r["boto"] or {}, r["verify"]
        objects = min(x.get("objects", 0) for x in v.values())
        ok_all = all(x.get("objects_ok") == x.get("objects") for x in v.values())
        lost = sum(x.get("lost", 0) for x in v.values())
        wrong = sum(x.get("wrong_bytes", 0) for x in v.values()) + (s.get("mismatches") or 0) + b.get("wrong_bytes", 0)
        f = r["fault"]
        fault = {
            "kill": lambda: f"SIGKILL proxy-b; down in HAProxy after {f.get('marked_down_after_s')} s, back {f.get('back_up_after_s')} s after the kill",
            "upgrade": lambda: "graceful upgrade of a, b, c; new process serving after " + ", ".join(
                f"{u['new_serving_after_s']} s" for u in f.get("upgrades", [])),
            "stop": lambda: f"`systemctl stop` (SIGTERM) proxy-a: out of HAProxy after {f.get('marked_down_after_s')} s while draining, exit {f.get('exit_code')} after {f.get('exited_after_s')} s, back {f.get('back_up_after_s')} s after the stop",
            "garage": lambda: f"Garage node 3 stopped; proxy-c out after {f.get('replica_c_marked_down_after_s')} s, back {f.get('replica_c_back_after_restart_s')} s after the restart",
            "keyd": lambda: f"memkey-server a restarted; proxy-a out after {f.get('left_pool_after_s')} s, back {f.get('back_after_send_s')} s after one key send",
            "slow": lambda: f"proxy-c SIGSTOP {f.get('paused_s')} s; marked down after {f.get('marked_down_after_s')} s, back {f.get('back_up_after_cont_s')} s after SIGCONT",
        }[r["drill"]]()
        decrypted = r["decrypt_sample"]
        print(f"| {r['drill']} | {fault} | {s.get('attempted')} / {s.get('succeeded')} | {fmt(s.get('failed'))} | "
              f"{fmt(s.get('retried'))} | {b.get('attempted')} / {b.get('succeeded')} ({fmt(b.get('retried'))}) | "
              f"{objects} × {len(v)}{'' if ok_all else ' (NOT all)'} | **{lost}** | **{wrong}** | {s.get('stale_listed')} | "
              f"{sum(d['ok'] for d in decrypted)}/{len(decrypted)} |")


def throughput(rep):
    print("| replicas | workload | MiB/s | req/s | p50 / p99 ms | proxy CPU-s per GiB (each replica) | all proxies CPU-s/GiB "
          "| HAProxy CPU-s/GiB | proxy RSS idle → peak MiB | machine CPU busy | load |")
    print("|--:|---|--:|--:|---|---|--:|--:|---|--:|---|")
    for t in rep["throughput"]:
        if "error" in t:
            print(f"| {t['replicas']} | {t['workload']} | error: {t['error'][:200]} |")
            continue
        each = ", ".join(f"{k[-1]} {v}" for k, v in sorted(t["proxy_cpu_s_per_gib"].items()))
        rss = ", ".join(f"{k[-1]} {t['proxy_idle_rss_mib'][k]} → {v}" for k, v in sorted(t["proxy_peak_rss_mib"].items()))
        print(f"| {t['replicas']} | {t['workload']} {t['size']} c={t['concurrency']} | {t['mib_s']} | {t['req_s']} | "
              f"{t['p50_ms']:.0f} / {t['p99_ms']:.0f} | {each} | {t['proxy_cpu_s_per_gib_total']} | {t['haproxy_cpu_s_per_gib']} | "
              f"{rss} | {t['machine_cpu_cores']} | {t['load_after']} |")


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        rep = json.load(f)
    drills(rep)
    print()
    throughput(rep)
