#!/usr/bin/env bash
# Installs what the tests (default) or only the demo (`--demo`) need on a fresh Debian machine, once.
# Tests: Debian packages (cmake for pingora, libssl-dev for the chunk cipher, shellcheck, openssl, curl,
# chromium for the dashboard test, systemd and kubectl for the deploy tests, haproxy for the replica tests,
# SoftHSM 2 for the PKCS#11 unseal tests, iproute2 for `scripts/bench.sh --remote`'s network namespace), a Python venv with the S3 servers and clients, rclone included
# (cached under ~/.cache, keyed by tests/requirements.txt), and the Garage binary (cached in cargo's bin
# folder). Demo: cmake, libssl-dev and a small venv (moto, aws-cli; tests/requirements-demo.txt), no Garage.
# Safe to run again: it skips what is there. Prints `export` lines for the caller to eval: S3CP_VENV, PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "bootstrap: $*" >&2; }

mode=tests
[ "${1:-}" = "--demo" ] && mode=demo

need_apt=()
wanted="cmake:cmake"
[ "$mode" = tests ] && wanted="$wanted shellcheck:shellcheck openssl:openssl curl:curl chromium:chromium systemd-analyze:systemd kubectl:kubernetes-client haproxy:haproxy softhsm2-util:softhsm2 ip:iproute2"
for pair in $wanted; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# libcrypto's headers: format/ seals object chunks with OpenSSL's ChaCha20-Poly1305.
pkg-config --exists openssl 2>/dev/null || need_apt+=(libssl-dev pkg-config)
python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ "${#need_apt[@]}" -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${need_apt[@]}" >&2
fi

cache="${XDG_CACHE_HOME:-$HOME/.cache}/s3-crypt-proxy"
requirements=tests/requirements.txt
[ "$mode" = demo ] && requirements=tests/requirements-demo.txt
req_hash=$(sha256sum "$requirements" | cut -c1-16)
venv="$cache/venv-$req_hash"
# `.complete` marks a finished install (venvs made before the marker existed have pytest).
if [ ! -e "$venv/.complete" ] && [ ! -x "$venv/bin/pytest" ]; then
  log "creating Python venv $venv"
  mkdir -p "$cache"
  python3 -m venv --clear "$venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -r "$requirements" >&2
  touch "$venv/.complete"
fi

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if [ "$mode" = tests ] && [ ! -x "$cargo_bin/garage" ]; then
  log "building Garage 2.5.0 (about 8 minutes on 2 cores, once per machine)"
  cargo install garage@2.5.0 --no-default-features --features bundled-libs,lmdb,sqlite --locked >&2
fi

echo "export S3CP_VENV='$venv'"
echo "export PATH='$venv/bin:$cargo_bin:'\"\$PATH\""
