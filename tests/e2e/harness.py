"""Starts the real pieces on 127.0.0.1 for end-to-end tests and the demo: S3 backends
(moto, Garage), memkey-server with a key delivered by memkey-admin, and s3-crypt-proxy.
Every process is started by this module and stopped by its PID."""

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import ssl

import yaml

BIN_DIR = os.environ.get("S3CP_BIN_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "target", "debug"))


def binary(name):
    path = os.path.join(BIN_DIR, name)
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing: run `cargo build --bins` first")
    return path


HOSTS_FILE = "/etc/hosts"


class hosts_entries:
    """Test-only /etc/hosts lines resolving `names` to 127.0.0.1, removed on exit. Clients in
    other processes (aws-cli through glibc, rclone through Go's own resolver) read
    /etc/hosts; neither resolves `*.localhost` or a wildcard by itself (nss-myhostname is
    not in Debian's default nsswitch, and a static Go binary does not use NSS modules).
    Needs root, as CI runs; the file is rewritten in place (it may be a bind mount)."""

    def __init__(self, *names):
        self.marker = f"# s3cp-e2e {os.getpid()} {secrets.token_hex(4)}"
        self.lines = [f"127.0.0.1 {n} {self.marker}\n" for n in names]

    def __enter__(self):
        if not os.access(HOSTS_FILE, os.W_OK):
            raise RuntimeError(f"{HOSTS_FILE} is not writable: virtual-host tests with other-process clients run as root (as CI does)")
        with open(HOSTS_FILE, "r+") as f:
            text = f.read()
            if text and not text.endswith("\n"):
                text += "\n"
            f.seek(0)
            f.write(text + "".join(self.lines))
            f.truncate()
        return self

    def __exit__(self, *exc):
        with open(HOSTS_FILE, "r+") as f:
            kept = [l for l in f.readlines() if self.marker not in l]
            f.seek(0)
            f.write("".join(kept))
            f.truncate()


_ports_given = set()


def free_port():
    """A port nothing listens on now, and never one this test run handed out before: the kernel
    may offer a just-released port again, and two servers given one port (a proxy's S3 and admin
    listeners, say) would not both start."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def wait_port(port, proc=None, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}; log: {proc.log_path}\n{tail(proc.log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def tail(path, n=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


class Proc:
    """A child process with its output in a log file."""

    def __init__(self, args, workdir, name, env=None):
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.log = open(self.log_path, "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=full_env, cwd=workdir,
                                  start_new_session=True)
        self.p.log_path = self.log_path
        self.pid = self.p.pid

    def poll(self):
        return self.p.poll()

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def run(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def test_ca(workdir):
    """A throw-away CA for the test certificates (rustls rejects CA certificates used as
    server certificates, so leaves are issued by this CA)."""
    ca_cert, ca_key = os.path.join(workdir, "test-ca.crt"), os.path.join(workdir, "test-ca.key")
    if not os.path.exists(ca_cert):
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "2", "-subj", "/CN=s3-crypt-proxy test CA", "-keyout", ca_key, "-out", ca_cert])
    return ca_cert, ca_key


def self_signed_cert(workdir, name, dns_names=()):
    """A server certificate for 127.0.0.1/localhost (and `dns_names`, e.g. a wildcard for virtual-host
    buckets) issued by the test CA (`ca_file(workdir)`)."""
    ca_cert, ca_key = test_ca(workdir)
    cert, key, csr = (os.path.join(workdir, f"{name}.{ext}") for ext in ("crt", "key", "csr"))
    ext = os.path.join(workdir, f"{name}.ext")
    with open(ext, "w") as f:
        sans = ",".join(["IP:127.0.0.1", "DNS:localhost"] + [f"DNS:{n}" for n in dns_names])
        f.write(f"basicConstraints=critical,CA:FALSE\nsubjectAltName={sans}\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=localhost", "-keyout", key, "-out", csr])
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
         "-days", "2", "-extfile", ext, "-out", cert])
    return cert, key


def cert_fingerprint_pem(pem):
    """SHA-256 of a PEM certificate's DER, colon-separated lowercase hex (PBS's form)."""
    der = ssl.PEM_cert_to_DER_cert(pem)
    return ":".join(f"{b:02x}" for b in hashlib.sha256(der).digest())


def cert_fingerprint(cert_path):
    with open(cert_path) as f:
        return cert_fingerprint_pem(f.read())


# ---------------------------------------------------------------- backends

class Moto:
    name = "moto"
    region = "us-east-1"
    access_key = "moto-access"
    secret_key = "moto-secret-key"

    def __init__(self, workdir, tls=False):
        self.port = free_port()
        args = ["moto_server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.ca_file = None
        if tls:
            cert, key = self_signed_cert(workdir, "moto")
            args += ["-c", cert, "-k", key]
            self.ca_file = test_ca(workdir)[0]
        self.proc = Proc(args, workdir, "moto")
        wait_port(self.port, self.proc.p)
        self.endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.stop()


class Garage:
    name = "garage"
    region = "garage"

    def __init__(self, workdir, db_engine="sqlite", block_size=None, name="garage", replication_factor=1,
                 rpc_secret=None, setup=True):
        """db_engine: Garage's metadata engine; "lmdb" for heavy concurrent writes (with SQLite
        Garage answers some of them 503 "database is locked"). block_size: the size of the
        blocks Garage cuts objects into (Garage's default: 1 MiB). name, replication_factor,
        rpc_secret and setup=False (no layout, no key) are for the nodes of a GarageCluster."""
        d = os.path.join(workdir, name)
        os.makedirs(d, exist_ok=True)
        self.port, rpc, admin = free_port(), free_port(), free_port()
        self.conf = os.path.join(d, "garage.toml")
        with open(self.conf, "w") as f:
            f.write(f"""metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "{db_engine}"
{f"block_size = {block_size}" if block_size else ""}
replication_factor = {replication_factor}
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{rpc_secret or secrets.token_hex(32)}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{self.port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{secrets.token_hex(16)}"
""")
        self.dir = d
        self.rpc_port = rpc
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.start()
        self.node_id = self._garage("node", "id", "-q").strip().split("@")[0]
        if not setup:
            return
        node = self.node_id
        self._garage("layout", "assign", "-z", "dc1", "-c", "1G", node)
        self._garage("layout", "apply", "--version", "1")
        self.access_key = "GK" + secrets.token_hex(12)
        self.secret_key = secrets.token_hex(32)
        self._garage("key", "import", "--yes", "-n", "s3cp-test", self.access_key, self.secret_key)
        self._garage("key", "allow", "--create-bucket", self.access_key)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self):
        self.proc = Proc([shutil.which("garage") or "garage", "-c", self.conf, "server"], self.dir, "garage", env={"RUST_LOG": "warn"})
        wait_port(self.port, self.proc.p)

    def _garage(self, *args):
        for attempt in range(50):
            r = subprocess.run([shutil.which("garage") or "garage", "-c", self.conf, *args], capture_output=True, text=True)
            if r.returncode == 0:
                return r.stdout
            time.sleep(0.2)
        raise RuntimeError(f"garage {' '.join(args)} failed: {r.stderr}")

    def stop(self, timeout=3):
        # Garage that has served traffic takes 10 s to exit on SIGTERM; its data dir is thrown
        # away (or, in the drills, LMDB recovers), so a test waits at most `timeout` then kills.
        self.proc.stop(timeout=timeout)


class GarageCluster:
    """A real distributed Garage on 127.0.0.1 (shared/test-env.md): `nodes` servers with one
    shared rpc_secret, replication factor 3, one zone per node, LMDB metadata. Any node's S3
    port serves the whole cluster; `nodes[i].endpoint` is node i's. Stopping one node of
    three keeps reads and writes working (quorum 2 of 3)."""

    name = "garage"
    region = "garage"

    def __init__(self, workdir, nodes=3, db_engine="lmdb"):
        secret = secrets.token_hex(32)
        self.nodes = []
        try:
            for i in range(nodes):
                self.nodes.append(Garage(workdir, db_engine=db_engine, name=f"garage-{i + 1}", replication_factor=3,
                                         rpc_secret=secret, setup=False))
            first = self.nodes[0]
            for n in self.nodes[1:]:
                first._garage("node", "connect", f"{n.node_id}@127.0.0.1:{n.rpc_port}")
            for i, n in enumerate(self.nodes):
                first._garage("layout", "assign", "-z", f"z{i + 1}", "-c", "1G", n.node_id)
            first._garage("layout", "apply", "--version", "1")
            self.access_key = "GK" + secrets.token_hex(12)
            self.secret_key = secrets.token_hex(32)
            first._garage("key", "import", "--yes", "-n", "s3cp-test", self.access_key, self.secret_key)
            first._garage("key", "allow", "--create-bucket", self.access_key)
            for n in self.nodes:
                n.access_key, n.secret_key = self.access_key, self.secret_key
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.endpoint = first.endpoint

    def wait_healthy(self, timeout=60):
        """Until `garage status` on the first node lists every node as up (no "failed" nodes)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run([shutil.which("garage") or "garage", "-c", self.nodes[0].conf, "status"],
                                 capture_output=True, text=True).stdout
            if out.count("127.0.0.1:") >= len(self.nodes) and "Failed nodes" not in out and "FAILED" not in out.upper():
                return
            time.sleep(0.5)
        raise RuntimeError(f"garage cluster not healthy: {out}")

    def stop(self):
        for n in self.nodes:
            try:
                n.stop()
            except Exception as e:  # keep stopping the rest
                print(f"stopping garage node: {e}")


def start_backend(kind, workdir, **options):
    return {"moto": Moto, "garage": Garage}[kind](workdir, **options)


# ---------------------------------------------------------------- keyd

class Keyd:
    """memkey-server over HTTPS and a Unix socket, and an initialised memkey-admin."""

    def __init__(self, workdir, name="keyd", admin_dir=None):
        """admin_dir: a memkey-admin configuration shared with other memkey-servers (see
        KeyServers): this server is pinned there too, with its CA, so that one
        `memkey-admin key send` reaches them all."""
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, mode=0o750, exist_ok=True)
        os.chmod(self.dir, 0o750)
        self.admin_dir = admin_dir or os.path.join(self.dir, "admin")
        self.socket = os.path.join(self.dir, "memkey.sock")
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.cert, self.key = self_signed_cert(self.dir, "memkey")
        seed = run([binary("memkey-server"), "--generate-identity"]).stdout.strip().split()[-1]
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives import serialization
        pub = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed)).public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.fingerprint = hashlib.sha256(pub).hexdigest()
        self.admin("init", "--server", self.url, "--fingerprint", self.fingerprint,
                   *(["--cacert", test_ca(self.dir)[0]] if admin_dir else []))
        admin_pub = self.admin("identity").stdout.strip()
        self.conf = os.path.join(self.dir, "memkey.yaml")
        with open(os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            yaml.safe_dump({
                "server": {"listen_addr": f"127.0.0.1:{self.port}", "tls_enabled": True, "tls_cert": self.cert,
                           "tls_key": self.key, "unix_socket_path": self.socket},
                "identity": {"private_key": seed},
                "security": {"challenge_timeout": "30s", "max_failed_attempts": 5, "lockout_duration": "5m"},
                "admins": [admin_pub],
            }, f)
        self.start()

    def start(self):
        self.proc = Proc([binary("memkey-server"), "--config", self.conf], self.dir, "memkey-server")
        wait_port(self.port, self.proc.p)
        deadline = time.time() + 10
        while not os.path.exists(self.socket) and time.time() < deadline:
            time.sleep(0.05)

    def admin(self, *args, check=True):
        return subprocess.run([binary("memkey-admin"), "--config-dir", self.admin_dir, *args],
                              capture_output=True, text=True, check=check)

    def new_key(self, key_id=1):
        path = os.path.join(self.dir, f"master-{key_id}.key")
        if not os.path.exists(path):
            self.admin("key", "generate", "--id", str(key_id), "--out", path)
        return path

    def send_key(self, key_file, *extra):
        return self.admin("key", "send", "--key-file", key_file, "--cacert", test_ca(self.dir)[0], *extra)

    def stop(self):
        self.proc.stop()


class KeyServers:
    """Several memkey-servers (one per proxy replica) pinned by one memkey-admin: one
    `memkey-admin key send` (without --server: every pinned server) delivers the key to all."""

    def __init__(self, workdir, count):
        self.admin_dir = os.path.join(workdir, "memkey-admin")
        self.servers = []
        try:
            for i in range(count):
                self.servers.append(Keyd(workdir, name=f"keyd-{chr(ord('a') + i)}", admin_dir=self.admin_dir))
        except BaseException:
            self.stop()
            raise

    def admin(self, *args, check=True):
        return subprocess.run([binary("memkey-admin"), "--config-dir", self.admin_dir, *args],
                              capture_output=True, text=True, check=check)

    def new_key(self, key_id=1):
        path = os.path.join(self.admin_dir, f"master-{key_id}.key")
        if not os.path.exists(path):
            self.admin("key", "generate", "--id", str(key_id), "--out", path)
        return path

    def send_key(self, key_file, *extra):
        """One `memkey-admin key send` to every pinned server."""
        return self.admin("key", "send", "--key-file", key_file, *extra, check=False)

    def stop(self):
        for k in self.servers:
            k.stop()


# ---------------------------------------------------------------- the proxy

class Proxy:
    def __init__(self, workdir, backend_server, keyd=None, tls=True, name="proxy", backend_options=None, cert_names=(),
                 server_options=None, **overrides):
        """backend_options / server_options: extra keys of the `backend:` (e.g. timeout) / `server:` section;
        cert_names: more DNS names in the TLS certificate; other overrides replace top-level keys."""
        backend = backend_server
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port, self.admin_port = free_port(), free_port()
        self.access_key, self.secret_key = "pbs-client", "pbs-client-secret-" + secrets.token_hex(8)
        self.admin_token = secrets.token_hex(16)
        self.backend = backend
        self.tls = tls
        cfg = {
            "listen_addr": f"127.0.0.1:{self.port}",
            "admin_listen_addr": f"127.0.0.1:{self.admin_port}",
            "admin": {"token": self.admin_token},
            "backend": {"endpoint": backend.endpoint, "region": backend.region, "access_key": backend.access_key,
                        "secret_key": backend.secret_key, "path_style": True},
            "client": {"access_key": self.access_key, "secret_key": self.secret_key},
            "audit_log": os.path.join(self.dir, "audit.log"),
            "server": {"upgrade_sock": os.path.join(self.dir, "upgrade.sock"), "pid_file": os.path.join(self.dir, "proxy.pid"),
                       "grace_period_seconds": 1, "graceful_shutdown_timeout_seconds": 2, "threads": 2,
                       # Tests stop proxies all the time; the stop drain has its own tests.
                       "drain_seconds": 0},
            "memkey": {"poll_interval": "200ms"},
        }
        cfg["backend"].update(backend_options or {})
        cfg["server"].update(server_options or {})
        if keyd is not None:
            cfg["memkey"]["socket_path"] = keyd.socket
        if tls:
            self.cert, self.key = self_signed_cert(self.dir, "proxy", cert_names)
            cfg["tls"] = {"cert_file": self.cert, "key_file": self.key}
        for k, v in overrides.items():
            cfg[k] = v
        self.access_key, self.secret_key = cfg["client"]["access_key"], cfg["client"]["secret_key"]
        self.config = cfg
        self.conf = os.path.join(self.dir, "config.yaml")
        with open(self.conf, "w") as f:
            yaml.safe_dump(cfg, f)
        self.start()

    @property
    def endpoint(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def admin_url(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.admin_port}"

    def start(self, upgrade=False):
        args = [binary("s3-crypt-proxy"), "run", "--config", self.conf] + (["--upgrade"] if upgrade else [])
        self.proc = Proc(args, self.dir, "proxy", env={"RUST_BACKTRACE": "1"})
        wait_port(self.port, self.proc.p)

    def upgrade(self, timeout=30, wait_old=True):
        """Pingora's graceful upgrade, as deploy/s3-crypt-proxy-reload does it: a new process
        started with --upgrade waits on server.upgrade_sock for the listening sockets; the old
        one gets SIGQUIT, hands them over, finishes its requests and exits. wait_old=False
        returns as soon as the new process serves; the old one (returned, a Proc) may still
        be draining."""
        old = self.proc
        sock = self.config["server"]["upgrade_sock"]
        if os.path.exists(sock):
            os.unlink(sock)
        args = [binary("s3-crypt-proxy"), "run", "--config", self.conf, "--upgrade"]
        self.proc = Proc(args, self.dir, "proxy", env={"RUST_BACKTRACE": "1"})
        deadline = time.time() + timeout
        while not os.path.exists(sock):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the new proxy process did not open {sock}\n{tail(self.proc.log_path)}")
            time.sleep(0.05)
        time.sleep(0.2)
        old.p.send_signal(signal.SIGQUIT)
        if wait_old:
            old.p.wait(timeout)
            old.log.close()
        if self.proc.poll() is not None:
            raise RuntimeError(f"the new proxy process exited\n{tail(self.proc.log_path)}")
        return old

    def admin_get(self, path, token=None):
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        req = urllib.request.Request(self.admin_url + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def wait_ready(self, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, body = self.admin_get("/readyz")
            if status == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"proxy not ready: {body!r}\n{tail(self.proc.log_path)}")

    def metric(self, name, **labels):
        """The value of one metric sample, 0 when absent."""
        _, text = self.admin_get("/metrics")
        total = 0.0
        for line in text.decode().splitlines():
            if not line.startswith(name):
                continue
            m = re.match(r"([a-zA-Z0-9_:]+)(\{[^}]*\})?\s+(\S+)", line)
            if not m or m.group(1) != name:
                continue
            lab = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(lab.get(k) == str(v) for k, v in labels.items()):
                total += float(m.group(3))
        return total

    def presigned_url(self, operation, bucket, key, expires=600):
        """A SigV4 presigned URL of this proxy's client credential for `operation` (boto3's
        name, e.g. "put_object") on `bucket`/`key`."""
        import boto3
        import botocore.config
        s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.access_key,
                          aws_secret_access_key=self.secret_key,
                          config=botocore.config.Config(s3={"addressing_style": "path"}, signature_version="s3v4"))
        return s3.generate_presigned_url(operation, Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)

    def stop(self):
        self.proc.stop()


# ---------------------------------------------------------------- load balancer

HAPROXY_CFG = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "haproxy", "haproxy.cfg")


class HAProxy:
    """HAProxy (Debian's 2.6) running the shipped deploy/haproxy/haproxy.cfg unchanged, in
    front of proxies listening with TLS: its settings come from the environment variables
    that file names. `replicas` is a list of Proxy objects (proxy-a, proxy-b, proxy-c, …).
    With more than two, each further replica gets a copy of the file's `server` line with
    its own variables, as the file's header says (the rendered copy is written next to the
    logs; every other line is the shipped one)."""

    def __init__(self, workdir, replicas, name="haproxy"):
        if shutil.which("haproxy") is None:
            raise RuntimeError("haproxy is missing: scripts/bootstrap.sh installs it (apt-get install haproxy)")
        a, b = replicas[:2]
        self.names = [f"proxy-{chr(ord('a') + i)}" for i in range(len(replicas))]
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        cert, key = self_signed_cert(self.dir, "haproxy")
        self.pem = os.path.join(self.dir, "haproxy.pem")
        with open(self.pem, "w") as out:
            for part in (cert, key):
                with open(part) as f:
                    out.write(f.read())
        self.stats_socket = os.path.join(self.dir, "admin.sock")
        # Each proxy's certificate comes from the test CA of its own directory.
        ca_bundle = os.path.join(self.dir, "replicas-ca.pem")
        with open(ca_bundle, "w") as out:
            for r in replicas:
                with open(test_ca(r.dir)[0]) as f:
                    out.write(f.read())
        self.env = {
            "S3CP_LB_LISTEN": f"127.0.0.1:{self.port}",
            "S3CP_LB_CERT": self.pem,
            "S3CP_LB_STATS_SOCKET": self.stats_socket,
            "S3CP_REPLICA_CA": ca_bundle,
            "S3CP_REPLICA_A": f"127.0.0.1:{a.port}",
            "S3CP_REPLICA_A_ADMIN_PORT": str(a.admin_port),
            "S3CP_REPLICA_B": f"127.0.0.1:{b.port}",
            "S3CP_REPLICA_B_ADMIN_PORT": str(b.admin_port),
        }
        self.cfg = HAPROXY_CFG
        if len(replicas) > 2:
            self.cfg = os.path.join(self.dir, "haproxy.cfg")
            with open(HAPROXY_CFG) as f:
                shipped = f.read()
            line_b = next(line for line in shipped.splitlines() if line.strip().startswith("server proxy-b "))
            extra = []
            for i, r in enumerate(replicas[2:], start=2):
                letter = chr(ord("A") + i)
                self.env[f"S3CP_REPLICA_{letter}"] = f"127.0.0.1:{r.port}"
                self.env[f"S3CP_REPLICA_{letter}_ADMIN_PORT"] = str(r.admin_port)
                extra.append(line_b.replace("proxy-b", f"proxy-{letter.lower()}").replace("S3CP_REPLICA_B", f"S3CP_REPLICA_{letter}"))
            with open(self.cfg, "w") as f:
                f.write(shipped.replace(line_b, "\n".join([line_b] + extra)))
        check = subprocess.run(["haproxy", "-c", "-f", self.cfg], env={**os.environ, **self.env}, capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c refused the shipped config:\n{check.stdout}{check.stderr}")
        # -db: stay in the foreground, so that stop() ends it by its PID.
        self.proc = Proc(["haproxy", "-db", "-f", self.cfg], self.dir, "haproxy", env=self.env)
        wait_port(self.port, self.proc.p)

    @property
    def endpoint(self):
        return f"https://127.0.0.1:{self.port}"

    def command(self, line):
        """One runtime API command on the stats socket; its answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.stats_socket)
            s.sendall(line.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def server_states(self):
        """{server name: operational state} from `show servers state` (2 = running/up)."""
        lines = [line.split() for line in self.command("show servers state s3cp_replicas").splitlines()]
        return {f[3]: int(f[5]) for f in lines if len(f) > 5 and f[0].isdigit()}

    def wait_up(self, names=None, timeout=60):
        names = names or self.names
        deadline = time.time() + timeout
        while time.time() < deadline:
            states = self.server_states()
            if all(states.get(n) == 2 for n in names):
                return
            time.sleep(0.2)
        raise RuntimeError(f"haproxy servers not up: {self.server_states()}\n{tail(self.proc.log_path)}")

    def wait_state(self, name, up, timeout=60):
        """Until HAProxy's health checks see replica `name` up (True) or down (False)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if (self.server_states().get(name) == 2) == up:
                return time.time()
            time.sleep(0.1)
        raise RuntimeError(f"{name} not {'up' if up else 'down'}: {self.server_states()}")

    def set_state(self, server, state):
        """`ready`, `drain` or `maint` for one replica."""
        return self.command(f"set server s3cp_replicas/{server} state {state}")

    def stop(self):
        self.proc.stop()


# ---------------------------------------------------------------- a TLS front for a backend

class TlsFront:
    """HAProxy terminating TLS in front of a plain backend (Garage), as S3 providers serve:
    `mode tcp`, so each TLS connection is one backend connection and HAProxy's `CumSslConns`
    counts the TLS handshakes of whoever connects. Listens on `listen_ip`; its certificate
    comes from the test CA in its own directory (`ca_file`). `prefix` runs HAProxy inside a
    network namespace (`["ip", "netns", "exec", NAME]`, bench/remote.py); then `wait` must be
    a function(port, proc) that checks the port from inside it."""

    def __init__(self, workdir, backend_port, listen_ip="127.0.0.1", name="tls-front", prefix=(), wait=None):
        if shutil.which("haproxy") is None:
            raise RuntimeError("haproxy is missing: scripts/bootstrap.sh installs it (apt-get install haproxy)")
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        cert, key = self_signed_cert(self.dir, "backend")
        self.ca_file = test_ca(self.dir)[0]
        pem = os.path.join(self.dir, "backend.pem")
        with open(pem, "w") as out:
            for part in (cert, key):
                with open(part) as f:
                    out.write(f.read())
        self.stats_socket = os.path.join(self.dir, "stats.sock")
        cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
    maxconn 4096
    nbthread 1
    stats socket {self.stats_socket} mode 600 level admin
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend s3_tls
    bind {listen_ip}:{self.port} ssl crt {pem} alpn http/1.1
    default_backend plain
backend plain
    server backend 127.0.0.1:{backend_port}
""")
        run(["haproxy", "-c", "-f", cfg])
        self.proc = Proc([*prefix, "haproxy", "-db", "-f", cfg], self.dir, "haproxy")
        try:
            (wait or wait_port)(self.port, self.proc.p)
        except BaseException:
            self.proc.stop()
            raise
        self.endpoint = f"https://{listen_ip}:{self.port}"

    def info(self):
        """HAProxy's `show info` as a dict (CumConns, CumSslConns, ...)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.stats_socket)
            s.sendall(b"show info\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.decode().splitlines() if ":" in line)}

    def tls_handshakes(self):
        """TLS connections accepted so far (each one a full or resumed handshake)."""
        return int(self.info().get("CumSslConns", 0))

    def stop(self):
        self.proc.stop()
