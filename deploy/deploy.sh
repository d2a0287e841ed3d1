#!/usr/bin/env bash
# Installs s3-crypt-proxy and memkey-server on one Ubuntu 24.04 host: build, users, TLS,
# configuration, hardened systemd units. Run `deploy/deploy.sh --help` for the details.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROXY_PID_FILE="$PROXY_RUN_DIR/proxy.pid"
PROXY_UPGRADE_SOCK="$PROXY_RUN_DIR/upgrade.sock"

usage() {
  cat <<'EOF'
Usage: sudo deploy/deploy.sh [options]

Installs s3-crypt-proxy and memkey-server on this host (Ubuntu 24.04), from this checkout:

  1. build dependencies (build-essential, cmake, pkg-config, libssl-dev, curl; rustup only when cargo
     is missing) and a release build of s3-crypt-proxy, memkey-server and memkey-admin
  2. the binaries and the reload helper in /usr/local/bin
  3. system users s3cp (proxy) and memkey (key server), group memkey-clients (may use
     keyd's socket; s3cp is a member)
  4. the backend settings, asked for (or read from the environment)
  5. client credentials for PBS and an admin API token (random)
  6. TLS certificates for the proxy and for memkey-server (self-signed, or your files)
  7. memkey-server's identity (memkey-server --generate-identity)
  8. /etc/s3-crypt-proxy/config.yaml (0640 root:s3cp), /etc/memkey/memkey.yaml (0640 root:memkey)
  9. the systemd units, enabled and started
 10. prints the SERVER FINGERPRINT, the proxy certificate fingerprint, the PBS settings and
     the key delivery steps

Existing configuration files, certificates and identities are kept unless --overwrite is
given (then the old files are kept as *.bak.<time>).

Options:
  --non-interactive  no prompts: answers come from the environment (below); for automation
  --env-file FILE    read the variables below from FILE (shell syntax, VAR=value)
  --skip-build       do not build; use target/release (or --bin-dir)
  --bin-dir DIR      take the three binaries from DIR (implies --skip-build)
  --overwrite        replace existing configuration, certificates and identity
  --no-start         install and enable, but do not (re)start the services
  -h, --help         this text; changes nothing

Environment (defaults in brackets; * = required with --non-interactive):
  S3CP_BACKEND_ENDPOINT *   backend URL, e.g. https://s3.eu-central-1.amazonaws.com
  S3CP_BACKEND_REGION       [us-east-1]
  S3CP_BACKEND_ACCESS_KEY * backend credentials
  S3CP_BACKEND_SECRET_KEY *
  S3CP_BACKEND_PATH_STYLE   true for MinIO/Garage/Ceph without wildcard DNS [false]
  S3CP_BACKEND_CA_FILE      PEM CA for a backend with a private CA [system CAs]
  S3CP_ALLOWED_BUCKETS *    comma-separated buckets the proxy serves
  S3CP_CONDITIONAL_WRITES   backend | enforce (Garage ignores If-None-Match) [backend]
  S3CP_LISTEN_ADDR          S3 listener for PBS [0.0.0.0:8080]
  S3CP_ADMIN_LISTEN_ADDR    /healthz, /readyz, /metrics, dashboard [127.0.0.1:9090]
  S3CP_PUBLIC_NAME          host name PBS uses; certificate name [hostname -f]
  S3CP_PUBLIC_IP            address added to the certificates [first of hostname -I]
  S3CP_CLIENT_ACCESS_KEY    PBS credentials [random]
  S3CP_CLIENT_SECRET_KEY    [random]
  S3CP_ADMIN_TOKEN          Bearer token for /api/v1/* [random]
  S3CP_TLS_CERT_FILE        proxy certificate and key to install [self-signed]
  S3CP_TLS_KEY_FILE
  MEMKEY_LISTEN_ADDR        memkey-server HTTPS for memkey-admin [127.0.0.1:7070]
  MEMKEY_TLS_CERT           memkey-server certificate and key [self-signed]
  MEMKEY_TLS_KEY
  MEMKEY_ADMINS             comma-separated admin public keys (memkey-admin identity) [none yet]

Example (automation):
  sudo env S3CP_BACKEND_ENDPOINT=https://s3.example.net S3CP_BACKEND_ACCESS_KEY=AK \
       S3CP_BACKEND_SECRET_KEY=SK S3CP_ALLOWED_BUCKETS=pbs deploy/deploy.sh --non-interactive
EOF
}

# ----------------------------------------------------------------------------- prompts
# ask VAR "question" default [required] [secret]: sets VAR from the environment, the default
# or (interactive) the answer typed.
ask() {
  local var=$1 question=$2 default=$3 required=${4:-} secret=${5:-} current answer
  current=${!var:-$default}
  while :; do
    if [ "$INTERACTIVE" = 1 ]; then
      if [ "$secret" = secret ]; then
        read -r -s -p "$question${current:+ [keep current]}: " answer </dev/tty
        echo >&2
      else
        read -r -p "$question${current:+ [$current]}: " answer </dev/tty
      fi
      answer=${answer:-$current}
    else
      answer=$current
    fi
    if [ -z "$answer" ] && [ "$required" = required ]; then
      [ "$INTERACTIVE" = 1 ] || die "$var is required with --non-interactive (see --help)"
      warn "a value is required"
      continue
    fi
    printf -v "$var" '%s' "$answer"
    return 0
  done
}

is_true() {
  case ${1,,} in true | yes | y | 1 | on) return 0 ;; *) return 1 ;; esac
}

# yq STRING: a double-quoted YAML scalar.
yq() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

is_ip() {
  [[ $1 =~ ^[0-9]+(\.[0-9]+){3}$ || $1 == *:* ]]
}

random_hex() {
  openssl rand -hex "$1"
}

# ----------------------------------------------------------------------------- settings
# write_proxy_config / write_memkey_config: whether this run writes the file (fresh install or
# --overwrite); the questions for a kept file are skipped.
write_proxy_config() { [ "$OVERWRITE" = 1 ] || [ ! -e "$PROXY_CONFIG" ]; }
write_memkey_config() { [ "$OVERWRITE" = 1 ] || [ ! -e "$MEMKEY_CONFIG" ]; }

collect_settings() {
  local default_name default_ip a
  default_name=$(hostname -f 2>/dev/null || hostname)
  default_ip=$(hostname -I 2>/dev/null | awk '{print $1}')

  log "This host"
  ask S3CP_PUBLIC_NAME "Name PBS and the admins use to reach this host" "$default_name" required
  ask S3CP_PUBLIC_IP "IP address to put in the certificates (empty: none)" "$default_ip"

  if write_proxy_config; then
    log "S3 backend (where the encrypted objects go)"
    ask S3CP_BACKEND_ENDPOINT "Backend endpoint URL (https://...)" "" required
    [[ $S3CP_BACKEND_ENDPOINT =~ ^https?://[^/]+ ]] || die "S3CP_BACKEND_ENDPOINT must be an http(s):// URL"
    [[ $S3CP_BACKEND_ENDPOINT == http://* ]] && warn "the backend is reached without TLS"
    ask S3CP_BACKEND_REGION "Backend region" us-east-1 required
    ask S3CP_BACKEND_ACCESS_KEY "Backend access key" "" required
    ask S3CP_BACKEND_SECRET_KEY "Backend secret key" "" required secret
    ask S3CP_BACKEND_PATH_STYLE "Path-style addressing (true for MinIO, Garage, Ceph)" false
    if is_true "$S3CP_BACKEND_PATH_STYLE"; then S3CP_BACKEND_PATH_STYLE=true; else S3CP_BACKEND_PATH_STYLE=false; fi
    ask S3CP_BACKEND_CA_FILE "CA file for the backend certificate (empty: system CAs)" ""
    [ -z "$S3CP_BACKEND_CA_FILE" ] || [ -r "$S3CP_BACKEND_CA_FILE" ] || die "cannot read $S3CP_BACKEND_CA_FILE"
    ask S3CP_ALLOWED_BUCKETS "Bucket(s) the proxy serves, comma-separated" "" required
    [[ $S3CP_ALLOWED_BUCKETS =~ ^[a-z0-9][a-z0-9.,-]*$ ]] || die "S3CP_ALLOWED_BUCKETS: lowercase bucket names, comma-separated"
    ask S3CP_CONDITIONAL_WRITES "Conditional writes: backend, or enforce for Garage" backend
    case $S3CP_CONDITIONAL_WRITES in backend | enforce) ;; *) die "S3CP_CONDITIONAL_WRITES must be backend or enforce" ;; esac

    log "Proxy listeners and certificate"
    ask S3CP_LISTEN_ADDR "S3 listen address for PBS" 0.0.0.0:8080 required
    ask S3CP_ADMIN_LISTEN_ADDR "Admin listen address (health, metrics, dashboard)" 127.0.0.1:9090 required
    ask S3CP_TLS_CERT_FILE "Proxy certificate (PEM; empty: self-signed)" ""
    if [ -n "$S3CP_TLS_CERT_FILE" ]; then
      ask S3CP_TLS_KEY_FILE "Proxy private key (PEM)" "" required
    fi
    S3CP_CLIENT_ACCESS_KEY=${S3CP_CLIENT_ACCESS_KEY:-S3CP$(random_hex 8 | tr a-f A-F)}
    S3CP_CLIENT_SECRET_KEY=${S3CP_CLIENT_SECRET_KEY:-$(random_hex 20)}
    S3CP_ADMIN_TOKEN=${S3CP_ADMIN_TOKEN:-$(random_hex 32)}
  else
    log "keeping $PROXY_CONFIG (--overwrite writes a new one)"
  fi

  if write_memkey_config; then
    log "memkey-server"
    ask MEMKEY_LISTEN_ADDR "memkey-server HTTPS address for memkey-admin (keep it private)" 127.0.0.1:7070 required
    ask MEMKEY_TLS_CERT "memkey-server certificate (PEM; empty: self-signed)" ""
    if [ -n "$MEMKEY_TLS_CERT" ]; then
      ask MEMKEY_TLS_KEY "memkey-server private key (PEM)" "" required
    fi
    ask MEMKEY_ADMINS "Admin public keys from \`memkey-admin identity\`, comma-separated (empty: add later)" ""
    for a in ${MEMKEY_ADMINS//,/ }; do
      [[ $a =~ ^[0-9a-f]{64}$ ]] || die "MEMKEY_ADMINS: '$a' is not 64 lowercase hex characters"
    done
  else
    log "keeping $MEMKEY_CONFIG and its identity (--overwrite writes new ones)"
    MEMKEY_LISTEN_ADDR=$(yaml_get "$MEMKEY_CONFIG" server listen_addr)
    MEMKEY_LISTEN_ADDR=${MEMKEY_LISTEN_ADDR:-127.0.0.1:7070}
  fi
}

# ----------------------------------------------------------------------------- rendering
# The memkey endpoint the proxy shows on its dashboard: the listen address, with 0.0.0.0
# replaced by the loopback address.
memkey_local_url() {
  local addr=${MEMKEY_LISTEN_ADDR/0.0.0.0/127.0.0.1}
  echo "https://$addr"
}

render_proxy_config() {
  local b ca_line="  # ca_file: \"$PROXY_ETC/backend-ca.pem\"   # for a backend with a private CA"
  [ -z "${PROXY_BACKEND_CA:-}" ] || ca_line="  ca_file: $(yq "$PROXY_BACKEND_CA")"
  cat <<EOF
# s3-crypt-proxy configuration, written by deploy/deploy.sh.
# Annotated reference: conf/proxy.example.yaml. Apply changes with
#   systemctl reload s3-crypt-proxy      (zero downtime; the new file is checked first)

listen_addr: $(yq "$S3CP_LISTEN_ADDR")
admin_listen_addr: $(yq "$S3CP_ADMIN_LISTEN_ADDR")

tls:
  cert_file: $(yq "$PROXY_CERT")
  key_file: $(yq "$PROXY_KEY")

admin:
  token: $(yq "$S3CP_ADMIN_TOKEN")

backend:
  endpoint: $(yq "$S3CP_BACKEND_ENDPOINT")
  region: $(yq "$S3CP_BACKEND_REGION")
  access_key: $(yq "$S3CP_BACKEND_ACCESS_KEY")
  secret_key: $(yq "$S3CP_BACKEND_SECRET_KEY")
  path_style: $S3CP_BACKEND_PATH_STYLE
  insecure_skip_verify: false
$ca_line
  connect_timeout: "10s"
  timeout: "5m"

# PBS signs its requests with these.
client:
  access_key: $(yq "$S3CP_CLIENT_ACCESS_KEY")
  secret_key: $(yq "$S3CP_CLIENT_SECRET_KEY")

encryption:
  chunk_size: 65536   # fixed for the life of the buckets

allowed_buckets:
EOF
  for b in ${S3CP_ALLOWED_BUCKETS//,/ }; do
    echo "  - $(yq "$b")"
  done
  cat <<EOF

memkey:
  socket_path: $(yq "$MEMKEY_SOCKET")
  endpoint: $(yq "$(memkey_local_url)")
  poll_interval: "5s"

conditional_writes: $S3CP_CONDITIONAL_WRITES
unencrypted_objects: refuse
log_level: info
audit_log: stdout           # one JSON line per request, into the journal

server:
  threads: 0
  grace_period_seconds: 30
  graceful_shutdown_timeout_seconds: 30
  # Must match PIDFile= and the reload helper's arguments in s3-crypt-proxy.service.
  upgrade_sock: $(yq "$PROXY_UPGRADE_SOCK")
  pid_file: $(yq "$PROXY_PID_FILE")
EOF
}

# render_memkey_config SEED
render_memkey_config() {
  local seed=$1 a
  cat <<EOF
# memkey-server configuration, written by deploy/deploy.sh. Holds the server identity:
# keep it 0640 root:memkey. Reference: conf/memkey.example.yaml.
# After a change: systemctl restart memkey-server, then memkey-admin key send.

server:
  listen_addr: $(yq "$MEMKEY_LISTEN_ADDR")
  tls_enabled: true
  tls_cert: $(yq "$MEMKEY_CERT")
  tls_key: $(yq "$MEMKEY_KEY")
  unix_socket_path: $(yq "$MEMKEY_SOCKET")

identity:
  private_key: $(yq "$seed")

security:
  challenge_timeout: "30s"
  max_failed_attempts: 5
  lockout_duration: "5m"

# Admin public keys (memkey-admin identity) allowed to deliver keys.
EOF
  if [ -z "${MEMKEY_ADMINS:-}" ]; then
    echo "admins: []"
  else
    echo "admins:"
    for a in ${MEMKEY_ADMINS//,/ }; do
      echo "  - $(yq "$a")"
    done
  fi
}

# yaml_get FILE SECTION KEY: a scalar of the files this script writes (SECTION "" = top
# level). Enough for reading back our own output, not a YAML parser.
yaml_get() {
  awk -v sec="$2" -v key="$3" '
    function val(l) { sub(/^[^:]*:[[:space:]]*/, "", l); sub(/[[:space:]]+#.*$/, "", l); gsub(/^"|"$/, "", l); return l }
    sec == "" && $0 ~ "^" key ":" { print val($0); exit }
    sec != "" && $0 ~ "^" sec ":" { insec = 1; next }
    insec && /^[^[:space:]#]/ { insec = 0 }
    insec && $0 ~ "^[[:space:]]+" key ":" { print val($0); exit }
  ' "$1"
}

# yaml_first_item FILE SECTION: the first "- item" of a top-level list.
yaml_first_item() {
  awk -v sec="$2" '
    $0 ~ "^" sec ":" { insec = 1; next }
    insec && /^[^[:space:]#]/ { exit }
    insec && /^[[:space:]]*- / { l = $0; sub(/^[[:space:]]*- */, "", l); gsub(/^"|"$/, "", l); print l; exit }
  ' "$1"
}

# ----------------------------------------------------------------------------- TLS
# gen_cert CERT KEY NAME [IP]: a self-signed leaf certificate (CA:FALSE: rustls clients such
# as memkey-admin refuse a CA certificate as a server certificate), EC P-256, 10 years.
gen_cert() {
  local crt=$1 key=$2 name=$3 ip=${4:-} cnf san
  san="DNS:localhost,IP:127.0.0.1"
  if is_ip "$name"; then san="IP:$name,$san"; else san="DNS:$name,$san"; fi
  if [ -n "$ip" ] && [ "$ip" != "$name" ]; then san="$san,IP:$ip"; fi
  cnf=$(mktemp)
  cat >"$cnf" <<EOF
[req]
distinguished_name = dn
x509_extensions = leaf
prompt = no
[dn]
CN = $name
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $san
subjectKeyIdentifier = hash
EOF
  (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -days 3650 -config "$cnf" -keyout "$key" -out "$crt" 2>/dev/null)
  rm -f "$cnf"
}

# place_cert SRC_CRT SRC_KEY DEST_CRT DEST_KEY GROUP NAME: installs given files, or a new
# self-signed pair when SRC_CRT is empty. Existing files stay unless --overwrite.
place_cert() {
  local src_crt=$1 src_key=$2 crt=$3 key=$4 group=$5 name=$6
  if [ -e "$crt" ] && [ "$OVERWRITE" != 1 ] && [ -z "$src_crt" ]; then
    log "keeping $crt"
  else
    backup "$crt"
    backup "$key"
    if [ -n "$src_crt" ]; then
      install -m 0644 -o root -g root "$src_crt" "$crt"
      install -m 0640 -o root -g "$group" "$src_key" "$key"
      log "installed $crt"
    else
      gen_cert "$crt" "$key" "$name" "$S3CP_PUBLIC_IP"
      log "generated a self-signed certificate $crt for $name"
    fi
  fi
  chown root:root "$crt"
  chmod 0644 "$crt"
  chown "root:$group" "$key"
  chmod 0640 "$key"
}

backup() {
  [ -e "$1" ] || return 0
  cp -p "$1" "$1.bak.$(date +%Y%m%d%H%M%S)"
}

# ----------------------------------------------------------------------------- steps
create_users() {
  getent group "$CLIENT_GROUP" >/dev/null || groupadd --system "$CLIENT_GROUP"
  local u
  for u in "$PROXY_USER" "$MEMKEY_USER"; do
    if ! id -u "$u" >/dev/null 2>&1; then
      useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment "s3-crypt-proxy ($u)" "$u"
      log "created system user $u"
    fi
  done
  usermod -a -G "$CLIENT_GROUP" "$PROXY_USER"
}

# check_proxy_config FILE / check_memkey_config FILE: validation by the binaries themselves,
# running as the service users, so that file permissions are checked too.
check_proxy_config() {
  clean_run runuser -u "$PROXY_USER" -- "$BIN_PREFIX/s3-crypt-proxy" check --config "$1" >/dev/null
}
check_memkey_config() {
  clean_run runuser -u "$MEMKEY_USER" -g "$CLIENT_GROUP" -G "$MEMKEY_USER" -- \
    "$BIN_PREFIX/memkey-server" --config "$1" --check-config >/dev/null
}

# install_config TMP DEST GROUP CHECK: puts TMP next to DEST (0640 root:GROUP), lets CHECK
# validate it there and only then replaces DEST. A rejected file leaves DEST as it was.
install_config() {
  local tmp=$1 dest=$2 group=$3 check=$4
  install -m 0640 -o root -g "$group" "$tmp" "$dest.new"
  if ! "$check" "$dest.new"; then
    rm -f "$dest.new" "$tmp"
    die "the new $(basename "$dest") was rejected (see the message above); $dest is unchanged. Fix the answer and run again"
  fi
  backup "$dest"
  mv -f "$dest.new" "$dest"
}

write_configs() {
  install -d -m 0750 -o root -g "$PROXY_USER" "$PROXY_ETC"
  install -d -m 0750 -o root -g "$MEMKEY_USER" "$MEMKEY_ETC"

  place_cert "${S3CP_TLS_CERT_FILE:-}" "${S3CP_TLS_KEY_FILE:-}" "$PROXY_CERT" "$PROXY_KEY" "$PROXY_USER" "$S3CP_PUBLIC_NAME"
  place_cert "${MEMKEY_TLS_CERT:-}" "${MEMKEY_TLS_KEY:-}" "$MEMKEY_CERT" "$MEMKEY_KEY" "$MEMKEY_USER" "$S3CP_PUBLIC_NAME"

  local tmp seed
  tmp=$(mktemp)
  if write_memkey_config; then
    seed=$(clean_run "$BIN_PREFIX/memkey-server" --generate-identity 2>/dev/null)
    [[ $seed =~ ^[0-9a-f]{64}$ ]] || die "memkey-server --generate-identity gave no seed"
    render_memkey_config "$seed" >"$tmp"
    install_config "$tmp" "$MEMKEY_CONFIG" "$MEMKEY_USER" check_memkey_config
    log "wrote $MEMKEY_CONFIG with a new identity"
  else
    check_memkey_config "$MEMKEY_CONFIG" || die "memkey-server rejects the existing $MEMKEY_CONFIG"
  fi
  if write_proxy_config; then
    PROXY_BACKEND_CA=""
    if [ -n "${S3CP_BACKEND_CA_FILE:-}" ]; then
      PROXY_BACKEND_CA="$PROXY_ETC/backend-ca.pem"
      install -m 0644 -o root -g root "$S3CP_BACKEND_CA_FILE" "$PROXY_BACKEND_CA"
    fi
    render_proxy_config >"$tmp"
    install_config "$tmp" "$PROXY_CONFIG" "$PROXY_USER" check_proxy_config
    log "wrote $PROXY_CONFIG"
  else
    check_proxy_config "$PROXY_CONFIG" || die "s3-crypt-proxy rejects the existing $PROXY_CONFIG"
  fi
  rm -f "$tmp"
}

start_services() {
  systemctl enable memkey-server.service s3-crypt-proxy.service
  if [ "$NO_START" = 1 ]; then
    log "not starting the services (--no-start)"
    return 0
  fi
  local proxy_was_running=0 _
  systemctl is-active --quiet s3-crypt-proxy && proxy_was_running=1
  if systemctl is-active --quiet memkey-server; then
    confirm "memkey-server is running; restarting it empties its key store (the running proxy keeps its keys). Restart?" ||
      die "stopped before restarting memkey-server"
  fi
  systemctl restart memkey-server
  for _ in $(seq 50); do
    [ -S "$MEMKEY_SOCKET" ] && break
    sleep 0.2
  done
  [ -S "$MEMKEY_SOCKET" ] || die "memkey-server did not create $MEMKEY_SOCKET (journalctl -u memkey-server)"
  if [ "$proxy_was_running" = 1 ]; then
    # A new proxy process would start without a key; the running one keeps serving.
    PROXY_LEFT_RUNNING=1
    warn "s3-crypt-proxy was running and was left alone: after \`memkey-admin key send\` run \`systemctl reload s3-crypt-proxy\` (zero downtime) to load the new binary and configuration"
  else
    systemctl start s3-crypt-proxy
  fi
  log "memkey-server and s3-crypt-proxy are running"
}

print_summary() {
  local fp proxy_fp listen port host bucket region access secret token admin_addr memkey_addr memkey_host memkey_port
  fp=$(memkey_fingerprint)
  proxy_fp=$(clean_run "$BIN_PREFIX/s3-crypt-proxy" fingerprint --config "$PROXY_CONFIG")
  # Read back what the installed files say (they may have been kept from an earlier run).
  listen=$(yaml_get "$PROXY_CONFIG" "" listen_addr)
  admin_addr=$(yaml_get "$PROXY_CONFIG" "" admin_listen_addr)
  region=$(yaml_get "$PROXY_CONFIG" backend region)
  access=$(yaml_get "$PROXY_CONFIG" client access_key)
  secret=$(yaml_get "$PROXY_CONFIG" client secret_key)
  token=$(yaml_get "$PROXY_CONFIG" admin token)
  bucket=$(yaml_first_item "$PROXY_CONFIG" allowed_buckets)
  memkey_addr=$(yaml_get "$MEMKEY_CONFIG" server listen_addr)
  port=${listen##*:}
  host=$S3CP_PUBLIC_NAME
  memkey_host=${memkey_addr%:*}
  memkey_port=${memkey_addr##*:}

  cat <<EOF

=============================================================================
 s3-crypt-proxy is installed
=============================================================================

 memkey-server SERVER FINGERPRINT:
   $fp
 (the same line is in \`journalctl -u memkey-server\`; give it to the admin workstation
 over a channel you trust)

 Proxy certificate fingerprint (PBS format):
   $proxy_fp

 PBS S3 endpoint settings:
   Endpoint       $host
   Port           $port
   Path style     yes
   Region         $region (any value works)
   Access key     $access
   Secret key     $secret
   Fingerprint    $proxy_fp
   Bucket         $bucket

 The same on the PBS host (PBS 4.x; see \`proxmox-backup-manager s3 endpoint create --help\`):
   proxmox-backup-manager s3 endpoint create s3cp --endpoint $host --port $port \\
     --path-style true --region $region --fingerprint $proxy_fp \\
     --access-key $access --secret-key '$secret'
   proxmox-backup-manager datastore create <name> <local cache dir> \\
     --backend type=s3,client=s3cp,bucket=$bucket

 Admin API token (Bearer, /api/v1/*): $token
 Readiness: curl -k https://${admin_addr/0.0.0.0/127.0.0.1}/readyz   (503 until a key is delivered)

 Next steps, on the admin workstation (with memkey-admin installed):
EOF
  if [ "$memkey_host" = 127.0.0.1 ] || [ "$memkey_host" = localhost ]; then
    cat <<EOF
   0. memkey-server listens on $memkey_addr only: open a tunnel first
        ssh -N -L $memkey_port:127.0.0.1:$memkey_port root@$host
      and use https://127.0.0.1:$memkey_port below.
EOF
    memkey_host=127.0.0.1
  elif [ "$memkey_host" = 0.0.0.0 ]; then
    memkey_host=$host
  fi
  cat <<EOF
   1. copy $MEMKEY_CERT to the workstation, then
        memkey-admin init --server https://$memkey_host:$memkey_port --fingerprint $fp --cacert memkey.crt
   2. add the admin public key that init (or \`memkey-admin identity\`) prints to admins: in
      $MEMKEY_CONFIG on this host, then: systemctl restart memkey-server
   3. memkey-admin key generate      (keep an offline copy of the key file)
   4. memkey-admin key send          (again after every memkey-server restart)
   5. memkey-admin status; the proxy's /readyz turns 200 within seconds
EOF
  if [ "${PROXY_LEFT_RUNNING:-0}" = 1 ]; then
    echo "   6. systemctl reload s3-crypt-proxy   (the running proxy still has the old binary/config)"
  fi
  cat <<EOF

 Updates later: sudo deploy/update.sh (rebuild, install, zero-downtime proxy reload).
EOF
}

# ----------------------------------------------------------------------------- main
main() {
  local skip_build=0 bin_dir="" env_file=""
  OVERWRITE=0 NO_START=0 INTERACTIVE=1
  while [ $# -gt 0 ]; do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --non-interactive) INTERACTIVE=0; shift ;;
      --env-file) env_file=${2:?--env-file needs a file}; shift 2 ;;
      --skip-build) skip_build=1; shift ;;
      --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; skip_build=1; shift 2 ;;
      --overwrite) OVERWRITE=1; shift ;;
      --no-start) NO_START=1; shift ;;
      *) usage >&2; die "unknown option $1" ;;
    esac
  done
  need_root
  if [ -n "$env_file" ]; then
    [ -r "$env_file" ] || die "cannot read $env_file"
    set -a
    # shellcheck disable=SC1090
    . "$env_file"
    set +a
  fi
  if [ "$INTERACTIVE" = 1 ] && ! { : </dev/tty; } 2>/dev/null; then
    die "no terminal for the questions: use --non-interactive with the environment variables (see --help)"
  fi
  grep -qs 'Ubuntu' /etc/os-release || warn "written for Ubuntu 24.04; continuing on $(sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null)"

  collect_settings
  confirm "Install s3-crypt-proxy and memkey-server on this host now?" || die "nothing changed"

  if [ "$skip_build" = 1 ]; then
    if ! command -v openssl >/dev/null || ! command -v curl >/dev/null; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl curl ca-certificates >/dev/null
    fi
    bin_dir=${bin_dir:-$REPO_DIR/target/release}
  else
    install_build_deps
    build_release
    bin_dir=$REPO_DIR/target/release
  fi
  check_binaries "$bin_dir"

  create_users
  install_binaries "$bin_dir"
  write_configs
  install_units >/dev/null
  start_services
  print_summary
}

# Sourcing this file (the tests do) only defines the functions.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
