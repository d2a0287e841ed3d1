#!/usr/bin/env bash
# Soak test (issue 7): 64 concurrent clients for DURATION (default 10m) of random PUT, GET,
# Range GET, LIST and DELETE with sizes from 0 to 8 MiB (log-distributed) through the full
# proxy on Garage, all on 127.0.0.1; stops by itself. Every GET is compared with what was PUT,
# every LIST with the client's own keys and plaintext sizes, every DELETE followed by a 404
# check; the proxy's RSS is sampled every 2 s. Exit code 0 only with zero errors, zero
# mismatches and a flat RSS (≤ 64 MiB + 1 MiB per client, last quarter ≤ first quarter + 16 MiB).
#
#   scripts/soak.sh                # 10 minutes, release build
#   scripts/soak.sh 2m --clients 16 --max-size 64MiB
#   scripts/soak.sh 10m --json soak.json
#
# Extra options after DURATION go to bench/soak.py (--clients, --max-size, --bin-dir, --json,
# --keep) or, when unknown there, to s3cp-bench (e.g. --rss-growth 8MiB).
# A short version runs in the end-to-end tests: tests/e2e/test_soak.py.
#
# Issue 17, the cluster soak: 3 replicas behind HAProxy (TLS) on a 3-node Garage, the six
# failure drills under PBS-like load (s3cp-bench --pbs and boto3), each with its end check,
# then throughput with 1, 2 and 3 replicas (BENCHMARKS.md, "Three replicas under failures"):
#
#   scripts/soak.sh --cluster --minutes 5.5 --clients 32 --max-size 2MiB --json cluster.json
#
# The short version runs in the end-to-end tests: tests/e2e/test_cluster.py.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/bootstrap.sh)"

duration=10m
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
  duration=$1
  shift
fi

if [ -z "${S3CP_BENCH_NO_BUILD:-}" ]; then
  echo "soak: cargo build --release (s3cp-bench, s3-crypt-proxy, memkey-server, memkey-admin)" >&2
  cargo build --release --locked -p s3cp-bench -p s3-crypt-proxy -p keyd -p memkey-admin >&2
fi

exec python3 bench/soak.py --duration "$duration" "$@"
