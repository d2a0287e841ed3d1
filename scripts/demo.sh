#!/usr/bin/env bash
# The whole stack on this machine: `scripts/demo.sh` starts it, `scripts/demo.sh down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
# Only what the demo needs: cmake, libssl-dev, a venv with moto and aws-cli (no Garage, no test tools).
eval "$(scripts/bootstrap.sh --demo)"
case "${1:-up}" in
  up)
    # The three binaries the demo runs, nothing else of the workspace.
    cargo build --locked -p s3-crypt-proxy -p keyd -p memkey-admin --bins
    target_dir=$(cargo metadata --format-version 1 --no-deps | python -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    S3CP_BIN_DIR="$target_dir/debug" python scripts/demo.py up ;;
  down)
    python scripts/demo.py down ;;
  *) echo "usage: scripts/demo.sh [up|down]" >&2; exit 2 ;;
esac
