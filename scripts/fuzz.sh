#!/usr/bin/env bash
# Coverage-guided fuzzing of s3-crypt-proxy (cargo-fuzz / libFuzzer, on stable Rust).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]        (default 60)
#
# Installs cargo-fuzz if missing, builds every target in fuzz/fuzz_targets, runs each for
# SECONDS_PER_TARGET seconds (libFuzzer -max_total_time), starting from the committed seeds
# (fuzz/seeds/<target>, read-only) plus the local working corpus (fuzz/corpus/<target>,
# git-ignored, grows across runs; cache it in CI to keep the coverage reached). Prints per
# target: executions, exec/s, coverage (edges at start -> end), new corpus units, crashes.
# Exits non-zero if any target crashed (panic, failed property, timeout, OOM); the crashing
# inputs are in fuzz/artifacts/<target>/ with a reproduction command printed.
#
# Environment:
#   FUZZ_TARGETS="a b"   only these targets (default: all)
#   FUZZ_SANITIZER=none  cargo-fuzz sanitizer (default none: the fuzzed crates deny
#                        unsafe code (one setsockopt aside), and without ASan throughput is ~2-3x higher;
#                        use `address` to also check the dependencies' unsafe code)
#   FUZZ_JOBS=1          targets fuzzed at the same time (each uses one core)
#   FUZZ_TIMEOUT=10      seconds before one input counts as a hang
#   FUZZ_RSS_MB=2048     memory limit per target
set -euo pipefail

SECS=${1:-60}
case $SECS in '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, sancov passes); allow them on stable.
export RUSTC_BOOTSTRAP=1

SANITIZER=${FUZZ_SANITIZER:-none}
JOBS=${FUZZ_JOBS:-1}
TIMEOUT=${FUZZ_TIMEOUT:-10}
RSS_MB=${FUZZ_RSS_MB:-2048}
ALL_TARGETS=$(find fuzz/fuzz_targets -maxdepth 1 -name '*.rs' -printf '%f\n' | sed 's/\.rs$//' | sort)
TARGETS=${FUZZ_TARGETS:-$ALL_TARGETS}
# -a: debug assertions and overflow checks, so arithmetic overflows are findings too.
FUZZ_FLAGS=(--fuzz-dir fuzz -s "$SANITIZER" -a)

start=$(date +%s)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

LOGS=fuzz/target/fuzz-logs
mkdir -p "$LOGS"
echo "== building fuzz targets (sanitizer: $SANITIZER)"
build_start=$(date +%s)
if ! cargo fuzz build "${FUZZ_FLAGS[@]}" >"$LOGS/build.log" 2>&1; then
    tail -n 60 "$LOGS/build.log" >&2
    echo "fuzz build failed (full log: $LOGS/build.log)" >&2
    exit 1
fi
build_secs=$(($(date +%s) - build_start))
echo "   built in ${build_secs}s"

count_findings() {
    find "fuzz/artifacts/$1" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) 2>/dev/null | wc -l
}

# Runs one target; its one-line summary goes to $LOGS/<target>.summary.
run_target() {
    local t=$1 log="$LOGS/$1.log"
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" "fuzz/seeds/$t"
    local before after rc=0
    before=$(count_findings "$t")
    cargo fuzz run "${FUZZ_FLAGS[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$SECS" -print_final_stats=1 -timeout="$TIMEOUT" -rss_limit_mb="$RSS_MB" \
        >"$log" 2>&1 || rc=$?
    after=$(count_findings "$t")
    local execs eps units cov0 cov1
    # (`|| true`: a run that died early lacks some of these lines.)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1 || true)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1 || true)
    units=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -n1 || true)
    cov0=$(grep -E '^#[0-9]+[[:space:]]+INITED' "$log" | head -n1 | sed -n 's/.* cov: \([0-9]*\).*/\1/p' || true)
    cov1=$(grep -E '^#[0-9]+[[:space:]]' "$log" | grep ' cov: ' | tail -n1 | sed -n 's/.* cov: \([0-9]*\).*/\1/p' || true)
    local crashes=$((after - before))
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1 # died without an artifact (e.g. failed to start): still a failure
    fi
    printf '%-16s %12s %8s %17s %10s %8s\n' "$t" "${execs:-?}" "${eps:-?}" \
        "${cov0:-?} -> ${cov1:-?}" "${units:-?}" "$crashes" >"$LOGS/$t.summary"
    if [ "$crashes" -ne 0 ]; then
        {
            echo "!! $t: exit $rc, $crashes finding(s); log: $log"
            grep -E -m3 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | sed 's/^/   /' || true
            find "fuzz/artifacts/$t" -maxdepth 1 -type f -newer "$LOGS/build.log" \
                \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) |
                while read -r a; do
                    echo "   reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -s $SANITIZER -a $t $a"
                done
        } >>"$LOGS/$t.summary"
    fi
}

echo "== fuzzing each target for ${SECS}s (jobs: $JOBS)"
for t in $TARGETS; do
    rm -f "$LOGS/$t.summary"
    if [ "$JOBS" -le 1 ]; then
        run_target "$t"
    else
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
        run_target "$t" &
    fi
done
wait

echo
printf '%-16s %12s %8s %17s %10s %8s\n' target executions exec/s "cov (edges)" "new units" crashes
failed=0
for t in $TARGETS; do
    cat "$LOGS/$t.summary"
    c=$(head -n1 "$LOGS/$t.summary" | awk '{print $NF}')
    [ "$c" = 0 ] || failed=1
done
total=$(($(date +%s) - start))
echo
echo "total wall time: ${total}s (build ${build_secs}s); logs in $LOGS/"
if [ "$failed" -ne 0 ]; then
    echo "FUZZING FOUND CRASHES" >&2
    exit 1
fi
