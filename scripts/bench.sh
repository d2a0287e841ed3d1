#!/usr/bin/env bash
# Benchmarks s3-crypt-proxy against Garage: direct, HAProxy as a plain TLS relay, the proxy
# with a pass-through chain, the full (encrypting) proxy and rclone over a crypt remote, all on
# one Garage in one run; the proxies and HAProxy with TLS on the client side.
# Builds the release binaries, then runs bench/matrix.py, which prints a Markdown table.
#
#   scripts/bench.sh --quick             # default cells, GET 4 MiB c=8, GET 64 MiB c=1, 1 GiB RSS test (~5-7 min)
#   scripts/bench.sh                     # full matrix: put,get,range,mixed x 4KiB..64MiB x c=1,8,64 + default cells
#   # issue 14's comparison (signed+MD5 PUT, ranged GET as s5cmd sends, 16 KiB GET/PUT c=32):
#   scripts/bench.sh --targets haproxy,pass,full --cells put:4MiB:8:signed,ranged:4MiB:8,get:16KiB:32,put:16KiB:32 \
#     --repeat 3 --rss-size ''
#   scripts/bench.sh --sizes 4MiB --concurrency 8 --workloads put,get --duration 10s
#   scripts/bench.sh --help              # every option of bench/matrix.py
#   scripts/bench.sh --remote --delay 30ms   # a remote backend: TLS + round-trip delay, proxy vs direct (bench/remote.py)
#   # two proxy builds side by side (HEAD, Range, GET; multipart read sets above 5 MiB):
#   S3CP_BENCH_NO_BUILD=1 scripts/bench.sh --bin-dir NEW --before-bin-dir OLD --targets pass,full-before,full \
#     --cells head:4MiB:1,head:15MiB:1,range:15MiB:8,get:4MiB:8 --multipart-part-size 5MiB --range-len 64KiB \
#     --no-signed --rss-size ''
#
# One cell by hand against any endpoint:
#   target/release/s3cp-bench --endpoint http://127.0.0.1:8080 --access-key AK --secret-key SK \
#     --bucket b --workload put --size 4MiB --concurrency 8 --duration 10s [--json]
#
# The load generator sends UNSIGNED-PAYLOAD without Content-MD5 by default (no hashing in
# the generator, which shares the cores with the proxy and the backend); --payload signed
# on s3cp-bench signs the SHA-256 and sends Content-MD5 as PBS does.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/bootstrap.sh)"

if [ -z "${S3CP_BENCH_NO_BUILD:-}" ]; then
  echo "bench: cargo build --release (s3cp-bench, s3-crypt-proxy, memkey-server, memkey-admin)" >&2
  cargo build --release --locked -p s3cp-bench -p s3-crypt-proxy -p keyd -p memkey-admin >&2
fi

echo "bench: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# --remote: Garage behind TLS and a round-trip delay (bench/remote.py; `--delay 30ms`, `--help` for the rest).
if [ "${1:-}" = "--remote" ]; then
  shift
  exec python3 bench/remote.py "$@"
fi
exec python3 bench/matrix.py "$@"
