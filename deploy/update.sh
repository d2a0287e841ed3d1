#!/usr/bin/env bash
# Updates an installation made by deploy.sh: rebuild, install, zero-downtime proxy reload,
# memkey-server restart only when its binary changed. Run `deploy/update.sh --help`.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: sudo deploy/update.sh [options]

Brings an installation made by deploy/deploy.sh up to this checkout (git pull first):

  1. cargo build --release (unless --skip-build)
  2. installs the binaries, the reload helper and the systemd units that changed
  3. memkey-server: restarted only when its binary changed (a restart empties its key
     store); then waits until the key has been sent again with `memkey-admin key send`
     from the admin workstation (unless --skip-key)
  4. s3-crypt-proxy: `systemctl reload s3-crypt-proxy`, a zero-downtime handover to a new
     process (binary, configuration and certificates are re-read). If memkey-server was
     restarted and holds no key yet, the reload is postponed (a new process would answer
     503 until the key arrives) and the command to run afterwards is printed.

Options:
  --skip-build         do not build; use target/release (or --bin-dir)
  --bin-dir DIR        take the binaries from DIR (implies --skip-build)
  --skip-key           do not wait for the key after a memkey-server restart
  --key-timeout SECS   how long to wait for the key (default 900)
  --force              no confirmation prompts (for automation)
  -h, --help           this text; changes nothing

Configuration changes alone need no update: `systemctl reload s3-crypt-proxy`, or for
memkey.yaml `systemctl restart memkey-server` and `memkey-admin key send`.
EOF
}

# running_binary_replaced UNIT BINARY: the unit's main process runs a binary other than the
# file now at BINARY (replaced on disk, or a different file).
running_binary_replaced() {
  local pid exe
  pid=$(systemctl show -p MainPID --value "$1" 2>/dev/null || echo 0)
  [ -n "$pid" ] && [ "$pid" != 0 ] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  [ -n "$exe" ] || return 1
  [[ $exe == *" (deleted)" ]] || [ "$exe" != "$2" ]
}

proxy_readyz() {
  local addr
  addr=$(awk '/^admin_listen_addr:/ { gsub(/"/, "", $2); print $2; exit }' "$PROXY_CONFIG")
  addr=${addr/0.0.0.0/127.0.0.1}
  curl -ks --max-time 3 -o /dev/null -w '%{http_code}' "https://$addr/readyz" 2>/dev/null ||
    curl -s --max-time 3 -o /dev/null -w '%{http_code}' "http://$addr/readyz" 2>/dev/null || true
}

main() {
  local skip_build=0 skip_key=0 bin_dir="" key_timeout=900
  while [ $# -gt 0 ]; do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --skip-build) skip_build=1; shift ;;
      --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; skip_build=1; shift 2 ;;
      --skip-key) skip_key=1; shift ;;
      --key-timeout) key_timeout=${2:?--key-timeout needs seconds}; shift 2 ;;
      --force) INTERACTIVE=0; shift ;;
      *) usage >&2; die "unknown option $1" ;;
    esac
  done
  [[ $key_timeout =~ ^[0-9]+$ ]] || die "--key-timeout must be a number of seconds"
  need_root
  local f
  for f in "$UNIT_DIR/s3-crypt-proxy.service" "$PROXY_CONFIG" "$MEMKEY_CONFIG"; do
    [ -e "$f" ] || die "$f is missing: no installation to update (run deploy/deploy.sh first)"
  done

  # 1. Build.
  if [ "$skip_build" = 1 ]; then
    bin_dir=${bin_dir:-$REPO_DIR/target/release}
  else
    # shellcheck disable=SC1091
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    command -v cargo >/dev/null 2>&1 || install_build_deps
    build_release
    bin_dir=$REPO_DIR/target/release
  fi
  check_binaries "$bin_dir"

  # 2. What changes.
  local b changed=() memkey_changed=0
  for b in "${BINARIES[@]}"; do
    if [ "$(sha256_of "$bin_dir/$b")" != "$(sha256_of "$BIN_PREFIX/$b")" ]; then
      changed+=("$b")
    fi
  done
  if [ "$(sha256_of "$DEPLOY_DIR/$RELOAD_HELPER")" != "$(sha256_of "$BIN_PREFIX/$RELOAD_HELPER")" ]; then
    changed+=("$RELOAD_HELPER")
  fi
  if [[ " ${changed[*]} " == *" memkey-server "* ]] ||
    running_binary_replaced memkey-server.service "$BIN_PREFIX/memkey-server"; then
    memkey_changed=1
  fi
  local b_old b_new
  for b in s3-crypt-proxy memkey-server; do
    b_old=$("$BIN_PREFIX/$b" --version 2>/dev/null || echo "not installed")
    b_new=$("$bin_dir/$b" --version)
    log "$b: installed: $b_old; new: $b_new"
  done
  if [ "${#changed[@]}" -eq 0 ]; then
    log "the installed binaries are already these ones"
  else
    log "changed: ${changed[*]}"
  fi
  if [ "$memkey_changed" = 1 ]; then
    warn "memkey-server will be restarted: its key store is emptied and the key must be sent again (memkey-admin key send); the running proxy keeps serving with the keys it holds"
  fi
  confirm "Install and reload now?" || die "nothing changed"

  # 3. Install.
  install_binaries "$bin_dir"
  if [ -n "$(install_units)" ]; then
    log "systemd units updated (daemon-reload done)"
  fi

  # 4. memkey-server, only if its binary changed.
  local postpone=0
  if [ "$memkey_changed" = 1 ]; then
    confirm "Restart memkey-server now (empties its key store)?" || die "stopped: binaries are installed, nothing was restarted; run update.sh again or reload by hand"
    systemctl restart memkey-server
    local _
    for _ in $(seq 50); do
      [ -S "$MEMKEY_SOCKET" ] && break
      sleep 0.2
    done
    log "memkey-server restarted (SERVER FINGERPRINT $(memkey_fingerprint), unchanged: same identity)"
    if [ "$skip_key" = 1 ]; then
      warn "--skip-key: deliver the key with \`memkey-admin key send\` from the admin workstation"
    else
      log "send the key now, from the admin workstation:  memkey-admin key send"
      log "waiting up to ${key_timeout}s for memkey-server to hold a key (Ctrl-C stops waiting; the proxy is not reloaded then)"
      if wait_for_key "$key_timeout"; then
        log "memkey-server holds a key again"
      else
        warn "no key after ${key_timeout}s"
      fi
    fi
    keyd_has_key || postpone=1
  fi

  # 5. The proxy: zero-downtime reload (start it if it is not running).
  if [ "$postpone" = 1 ]; then
    warn "s3-crypt-proxy NOT reloaded: memkey-server holds no key and a new proxy process would answer 503 until it does. The running proxy keeps serving. After \`memkey-admin key send\`: systemctl reload s3-crypt-proxy"
  elif systemctl is-active --quiet s3-crypt-proxy; then
    local old_pid new_pid
    old_pid=$(systemctl show -p MainPID --value s3-crypt-proxy)
    systemctl reload s3-crypt-proxy || die "reload failed; the running proxy ($old_pid) keeps serving unless the journal says otherwise: journalctl -u s3-crypt-proxy -n 50"
    new_pid=$(systemctl show -p MainPID --value s3-crypt-proxy)
    log "s3-crypt-proxy reloaded: main PID $old_pid -> $new_pid (the old process drains for up to server.grace_period_seconds)"
  else
    systemctl start s3-crypt-proxy
    log "s3-crypt-proxy was not running: started"
  fi
  log "s3-crypt-proxy /readyz: $(proxy_readyz)"
}

main "$@"
