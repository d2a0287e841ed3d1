# shellcheck shell=bash disable=SC2034
# (SC2034: the variables below are used by the scripts that source this file.)
# Shared by deploy.sh and update.sh (sourced, never run). Paths, logging, prompts, the build
# and the binary installation live here so that both scripts do these steps the same way.

# ----------------------------------------------------------------------------- layout
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY_DIR="$REPO_DIR/deploy"

BIN_PREFIX=/usr/local/bin
UNIT_DIR=/etc/systemd/system
PROXY_ETC=/etc/s3-crypt-proxy
MEMKEY_ETC=/etc/memkey
PROXY_CONFIG="$PROXY_ETC/config.yaml"
MEMKEY_CONFIG="$MEMKEY_ETC/memkey.yaml"
PROXY_CERT="$PROXY_ETC/proxy.crt"
PROXY_KEY="$PROXY_ETC/proxy.key"
MEMKEY_CERT="$MEMKEY_ETC/memkey.crt"
MEMKEY_KEY="$MEMKEY_ETC/memkey.key"
MEMKEY_SOCKET=/run/memkey/memkey.sock
PROXY_RUN_DIR=/run/s3-crypt-proxy

PROXY_USER=s3cp
MEMKEY_USER=memkey
CLIENT_GROUP=memkey-clients

# The binaries a release build produces, and the packages that hold them.
BINARIES=(s3-crypt-proxy memkey-server memkey-admin)
CARGO_PACKAGES=(-p s3-crypt-proxy -p keyd -p memkey-admin)
RELOAD_HELPER=s3-crypt-proxy-reload

# ----------------------------------------------------------------------------- output
if [ -t 2 ]; then
  _b=$'\e[1m' _y=$'\e[33m' _r=$'\e[31m' _n=$'\e[0m'
else
  _b='' _y='' _r='' _n=''
fi
log() { printf '%s==>%s %s\n' "$_b" "$_n" "$*" >&2; }
warn() { printf '%swarning:%s %s\n' "$_y" "$_n" "$*" >&2; }
die() {
  printf '%serror:%s %s\n' "$_r" "$_n" "$*" >&2
  exit 1
}

need_root() {
  [ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
}

# INTERACTIVE=1: prompts read from the terminal. 0: every answer comes from the environment.
INTERACTIVE=${INTERACTIVE:-1}

# confirm "question" -> 0 for yes. Non-interactive runs (and --force) answer yes.
confirm() {
  local answer
  [ "$INTERACTIVE" = 1 ] || return 0
  read -r -p "$1 [y/N] " answer </dev/tty || return 1
  [[ $answer =~ ^[Yy]([Ee][Ss])?$ ]]
}

# Run a project binary without the S3CP_*/MEMKEY_* variables of this shell: the scripts use
# the same names as inputs, and the binaries would read them as overrides of the files.
clean_run() {
  (
    for v in $(compgen -e); do
      case $v in S3CP_* | MEMKEY_*) unset "$v" ;; esac
    done
    exec "$@"
  )
}

sha256_of() {
  if [ -e "$1" ]; then sha256sum "$1" | cut -d' ' -f1; else echo none; fi
}

# ----------------------------------------------------------------------------- build
# The minimum Rust version, from the workspace manifest (rust-version = "1.95").
required_rust() {
  sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$REPO_DIR/Cargo.toml" | head -n1
}

# version_ge A B: A >= B for dotted versions.
version_ge() {
  [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$2" ]
}

install_build_deps() {
  log "installing build dependencies (build-essential, cmake, pkg-config, libssl-dev, curl, openssl)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq build-essential cmake pkg-config libssl-dev curl openssl ca-certificates >/dev/null
  # rustup's cargo for root, if a previous run installed it.
  # shellcheck disable=SC1091
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: installing the Rust toolchain with rustup (stable, minimal profile)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  fi
  local have need
  have=$(rustc --version | awk '{print $2}')
  need=$(required_rust)
  if [ -n "$need" ] && ! version_ge "$have" "$need"; then
    if command -v rustup >/dev/null 2>&1; then
      log "rustc $have is older than $need: updating the stable toolchain"
      rustup toolchain install stable --profile minimal
      rustup default stable
    else
      die "rustc $have is older than the required $need and is not managed by rustup (Ubuntu's rustc package is too old): remove it or install rustup (https://rustup.rs), then run again"
    fi
  fi
}

build_release() {
  log "building release binaries (cargo build --release; this takes a while on small machines)"
  (cd "$REPO_DIR" && cargo build --release --locked "${CARGO_PACKAGES[@]}")
}

# check_binaries DIR: every binary is there and runs.
check_binaries() {
  local dir=$1 b
  for b in "${BINARIES[@]}"; do
    [ -x "$dir/$b" ] || die "$dir/$b is missing (build first, or pass --bin-dir)"
    "$dir/$b" --version >/dev/null || die "$dir/$b does not run"
  done
}

# install_file SRC DEST MODE: atomic replacement (a running binary cannot be overwritten in
# place, but it can be renamed over; the running process keeps the old inode).
install_file() {
  local src=$1 dest=$2 mode=$3 tmp
  tmp="$(dirname "$dest")/.$(basename "$dest").new.$$"
  install -m "$mode" -o root -g root "$src" "$tmp"
  mv -f "$tmp" "$dest"
}

# install_binaries DIR: the three binaries and the reload helper into $BIN_PREFIX.
install_binaries() {
  local dir=$1 b
  install -d -m 0755 "$BIN_PREFIX"
  for b in "${BINARIES[@]}"; do
    install_file "$dir/$b" "$BIN_PREFIX/$b" 0755
  done
  install_file "$DEPLOY_DIR/$RELOAD_HELPER" "$BIN_PREFIX/$RELOAD_HELPER" 0755
  log "installed ${BINARIES[*]} $RELOAD_HELPER into $BIN_PREFIX"
}

# install_units: copies the unit files; prints "changed" when any differs from the installed one.
install_units() {
  local u changed=""
  for u in memkey-server.service s3-crypt-proxy.service; do
    if ! cmp -s "$DEPLOY_DIR/systemd/$u" "$UNIT_DIR/$u"; then
      install -m 0644 -o root -g root "$DEPLOY_DIR/systemd/$u" "$UNIT_DIR/$u"
      changed=changed
    fi
  done
  systemctl daemon-reload
  echo "$changed"
}

# ----------------------------------------------------------------------------- key server
# keyd_status: the JSON of GET /status on the Unix socket (root may connect), or nothing.
keyd_status() {
  curl -fsS --max-time 3 --unix-socket "$MEMKEY_SOCKET" http://memkey/status 2>/dev/null || true
}

keyd_has_key() {
  keyd_status | grep -q '"loaded":[[:space:]]*true'
}

memkey_fingerprint() {
  clean_run "$BIN_PREFIX/memkey-server" --config "$MEMKEY_CONFIG" --check-config 2>/dev/null |
    sed -n 's/.*SERVER FINGERPRINT: *\([0-9a-f]\{64\}\).*/\1/p'
}

# wait_for_key SECONDS: polls keyd until it holds a key; 1 on timeout.
wait_for_key() {
  local deadline=$((SECONDS + $1))
  while [ "$SECONDS" -lt "$deadline" ]; do
    keyd_has_key && return 0
    sleep 2
  done
  return 1
}
