#!/usr/bin/env bash
# Runs every test: unit and integration tests of the Rust workspace, then the end-to-end
# tests (real S3 servers on 127.0.0.1, real clients, the real binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/bootstrap.sh)"

echo "== cargo test (workspace)"
cargo test --workspace --locked 2>&1 | tee /tmp/s3cp-cargo-test.log | grep -E "^test result|FAILED|panicked|^error" || true
if grep -qE "FAILED|^error(\[|:)" /tmp/s3cp-cargo-test.log; then
  echo "cargo test failed; see /tmp/s3cp-cargo-test.log"; tail -50 /tmp/s3cp-cargo-test.log; exit 1
fi
passed=$(grep -E "^test result" /tmp/s3cp-cargo-test.log | awk '{s+=$4} END {print s}')
echo "cargo: ${passed} passed"

echo "== shellcheck (scripts/, .ci/; deploy/ is checked by tests/e2e/test_deploy.py)"
shellcheck scripts/*.sh .ci/run

echo "== end-to-end (pytest)"
# --tests: the same feature set as `cargo test` above (dev-dependencies unify features), so
# nothing is compiled twice.
cargo build --workspace --bins --tests --locked
target_dir=$(cargo metadata --format-version 1 --no-deps | python -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
S3CP_BIN_DIR="$target_dir/debug" python -m pytest tests/e2e -q -p no:cacheprovider "$@"

# Every fuzz target for a bounded time (S3CP_FUZZ_SECONDS, default 60; 0 skips it for quick
# local runs — CI always runs it). Longer runs by hand: scripts/fuzz.sh 600.
fuzz_secs=${S3CP_FUZZ_SECONDS:-60}
if [ "$fuzz_secs" -gt 0 ]; then
  echo "== fuzz (${fuzz_secs}s per target)"
  scripts/fuzz.sh "$fuzz_secs"
fi
