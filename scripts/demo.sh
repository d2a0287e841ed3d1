#!/usr/bin/env bash
# The whole stack on this machine: `scripts/demo.sh` starts it, `scripts/demo.sh down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/bootstrap.sh)"
case "${1:-up}" in
  up)
    cargo build --bins --locked
    target_dir=$(cargo metadata --format-version 1 --no-deps | python -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    S3CP_BIN_DIR="$target_dir/debug" python scripts/demo.py up ;;
  down)
    python scripts/demo.py down ;;
  *) echo "usage: scripts/demo.sh [up|down]" >&2; exit 2 ;;
esac
