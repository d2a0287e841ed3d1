"""Key material and process hardening (issue 13, item 10), with the real binaries: no core
dumps and keys locked in RAM, a private runtime directory for the upgrade socket and PID
file, no credentials in the logs, a different key under a loaded key id refused, and the
admin API's rewrap and the configuration obeying allowed_buckets."""

import json
import os
import re
import signal
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest
import yaml

import harness
from conftest import BUCKET, OTHER, Stack
from test_operations import boto_for


@pytest.fixture(scope="module", params=["moto", "garage"])
def hstack(request, workroot):
    """Plain HTTP, with a fault-injecting relay between the proxy and the backend."""
    d = tempfile.mkdtemp(prefix=f"hardening-{request.param}-", dir=workroot)
    s = Stack(d, request.param, tls=False, relay=True, backend_options={"timeout": "3s"})
    yield s
    s.stop()


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def core_limit(pid):
    with open(f"/proc/{pid}/limits") as f:
        line = next(l for l in f if l.startswith("Max core file size"))
    return line.split()[4:6]  # soft, hard


def admin_json(proxy, path, method="GET", token=None):
    req = urllib.request.Request(proxy.admin_url + path, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(what, cond, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def log_text(proxy):
    with open(proxy.proc.log_path, errors="replace") as f:
        return f.read()


def base_config(tmp_path, **extra):
    """A complete configuration for `check` / `run` (pass-through: no key source needed)."""
    cfg = {
        "listen_addr": f"127.0.0.1:{harness.free_port()}",
        "admin_listen_addr": f"127.0.0.1:{harness.free_port()}",
        "backend": {"endpoint": "http://127.0.0.1:9", "access_key": "a", "secret_key": "b", "path_style": True},
        "client": {"access_key": "c", "secret_key": "d"},
        "filters": ["sigv4", "allowlist", "resign"],
        "audit_log": "off",
    }
    cfg.update(extra)
    path = tmp_path / f"config-{os.urandom(3).hex()}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3CP_") and k != "RUNTIME_DIRECTORY"}
    env.update(extra)
    return env


def proxy_cmd(*args, env=None, timeout=15):
    """Runs the proxy binary; `run` that starts is stopped after `timeout` (the test failed then)."""
    return subprocess.run([harness.binary("s3-crypt-proxy"), *args], capture_output=True, text=True,
                          env=env or clean_env(), timeout=timeout)


def one_line_exit_2(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


# ---------------------------------------------------------------- core dumps and locked keys

def test_running_proxy_has_no_core_dumps_and_locked_keys(hstack):
    p = hstack.proxy
    assert core_limit(p.proc.pid) == ["0", "0"]
    # The ring's pages are mlock-ed (root here, so RLIMIT_MEMLOCK does not stop it).
    assert int(proc_status(p.proc.pid)["VmLck"].split()[0]) > 0
    assert p.metric("s3_crypt_proxy_core_dumps_disabled") == 1
    assert p.metric("s3_crypt_proxy_key_memory_locked") == 1
    status, body = admin_json(p, "/api/v1/key/status", token=p.admin_token)
    assert status == 200 and body["memory_locked"] is True and body["memory_lock_error"] is None, body
    assert body["core_dumps_disabled"] is True and body["conflict"] is None, body
    _, info = admin_json(p, "/api/v1/info")
    assert info["key_memory_locked"] is True and info["core_dumps_disabled"] is True and info["key_conflict"] is False
    assert "process hardening: RLIMIT_CORE=0, PR_SET_DUMPABLE=0" in log_text(p)


def test_proxy_is_not_dumpable(tmp_path):
    """Run as an unprivileged user, a non-dumpable process's /proc/PID files (mem, status, …)
    belong to root (proc(5)); a dumpable one (a plain `sleep` as the same user) keeps its own.
    Core limit 0 as well."""
    nobody = 65534
    d = tempfile.mkdtemp(prefix="s3cp-nodump-")
    try:
        os.chmod(d, 0o755)
        run_dir = os.path.join(d, "run")
        os.mkdir(run_dir, 0o700)
        os.chown(run_dir, nobody, nobody)
        conf = base_config(tmp_path, server={"upgrade_sock": f"{run_dir}/upgrade.sock", "pid_file": f"{run_dir}/proxy.pid",
                                             "grace_period_seconds": 0, "graceful_shutdown_timeout_seconds": 1})
        conf_copy = os.path.join(d, "config.yaml")
        with open(conf_copy, "w") as f:
            f.write(conf.read_text())
        os.chmod(conf_copy, 0o644)
        port = yaml.safe_load(conf.read_text())["admin_listen_addr"].rsplit(":", 1)[1]
        as_nobody = dict(user=nobody, group=nobody, extra_groups=[], cwd=d, env=clean_env())
        log = open(os.path.join(d, "proxy.log"), "wb")
        proxy = subprocess.Popen([harness.binary("s3-crypt-proxy"), "run", "--config", conf_copy],
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_nobody)
        control = subprocess.Popen(["sleep", "30"], **as_nobody)
        try:
            harness.wait_port(int(port), proxy)
            assert proc_status(proxy.pid)["Uid"].split()[1] == str(nobody)
            assert os.stat(f"/proc/{proxy.pid}/mem").st_uid == 0, "dumpable: /proc/PID/mem would belong to the user"
            assert os.stat(f"/proc/{control.pid}/mem").st_uid == nobody, "control: a dumpable process of that user"
            assert core_limit(proxy.pid) == ["0", "0"]
        finally:
            for p in (proxy, control):
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            log.close()
    finally:
        subprocess.run(["rm", "-rf", d], check=False)


def test_daemonized_proxy_locks_its_keys_again_after_the_fork(hstack, tmp_path):
    """`run --daemon` loads the key before pingora forks, and memory locks do not survive a
    fork: the daemon locks its ring again."""
    cfg = dict(hstack.proxy.config)
    cfg["listen_addr"] = f"127.0.0.1:{harness.free_port()}"
    admin_port = harness.free_port()
    cfg["admin_listen_addr"] = f"127.0.0.1:{admin_port}"
    cfg["audit_log"] = "off"
    cfg["server"] = dict(cfg["server"], upgrade_sock=str(tmp_path / "u.sock"), pid_file=str(tmp_path / "daemon.pid"),
                         grace_period_seconds=0, graceful_shutdown_timeout_seconds=1)
    conf = tmp_path / "daemon.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    with open(tmp_path / "daemon.log", "wb") as log:
        r = subprocess.run([harness.binary("s3-crypt-proxy"), "run", "--config", str(conf), "--daemon"],
                           stdout=log, stderr=log, env=clean_env(), timeout=60)
    assert r.returncode == 0, harness.tail(str(tmp_path / "daemon.log"))
    wait_for("the PID file", lambda: (tmp_path / "daemon.pid").exists())
    pid = int((tmp_path / "daemon.pid").read_text())
    try:
        harness.wait_port(admin_port)
        metrics = lambda: urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read().decode()
        wait_for("key memory locked", lambda: "s3_crypt_proxy_key_memory_locked 1" in metrics())
        assert int(proc_status(pid)["VmLck"].split()[0]) > 0
        assert core_limit(pid) == ["0", "0"]
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for("the daemon to stop", lambda: not os.path.exists(f"/proc/{pid}"), 15)


# ---------------------------------------------------------------- the runtime directory

def test_default_runtime_files_are_not_in_tmp(tmp_path):
    conf = base_config(tmp_path)
    r = proxy_cmd("check", "--config", str(conf))
    assert r.returncode == 0, r.stderr
    assert "upgrade socket /run/s3-crypt-proxy/upgrade.sock, PID file /run/s3-crypt-proxy/proxy.pid" in r.stdout, r.stdout
    # Under systemd, $RUNTIME_DIRECTORY (RuntimeDirectory=) is used.
    r = proxy_cmd("check", "--config", str(conf), env=clean_env(RUNTIME_DIRECTORY=str(tmp_path / "rt")))
    assert f"upgrade socket {tmp_path}/rt/upgrade.sock, PID file {tmp_path}/rt/proxy.pid" in r.stdout, r.stdout + r.stderr


def test_upgrade_goes_through_the_private_runtime_directory(hstack, tmp_path, monkeypatch):
    """A proxy without server.upgrade_sock/pid_file under systemd's $RUNTIME_DIRECTORY: the
    directory is created 0700 and the socket handover of a graceful upgrade happens in it."""
    rt = tmp_path / "runtime" / "s3-crypt-proxy"
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(rt))
    before_tmp = set(os.listdir("/tmp"))
    server = {"grace_period_seconds": 1, "graceful_shutdown_timeout_seconds": 2, "threads": 2}
    p = harness.Proxy(hstack.workdir, hstack.backend, hstack.keyd, tls=False, name="proxy-rt",
                      allowed_buckets=[BUCKET], server=server)
    try:
        p.wait_ready()
        assert stat.S_IMODE(os.stat(rt).st_mode) == 0o700
        _, info = admin_json(p, "/api/v1/info")
        assert info["upgrade_sock"] == f"{rt}/upgrade.sock" and info["pid_file"] == f"{rt}/proxy.pid"
        mine = boto_for(p)
        mine.put_object(Bucket=BUCKET, Key="hardening/upgrade", Body=b"through the upgrade")
        old = p.proc
        p.start(upgrade=True)
        wait_for("the upgrade socket", lambda: (rt / "upgrade.sock").exists())
        assert stat.S_ISSOCK(os.lstat(rt / "upgrade.sock").st_mode)
        time.sleep(0.3)
        os.kill(old.pid, signal.SIGQUIT)
        old.p.wait(timeout=30)
        assert p.proc.poll() is None, harness.tail(p.proc.log_path)
        assert mine.get_object(Bucket=BUCKET, Key="hardening/upgrade")["Body"].read() == b"through the upgrade"
        assert not [n for n in set(os.listdir("/tmp")) - before_tmp if "s3-crypt-proxy" in n]
    finally:
        p.stop()


@pytest.mark.parametrize("how", ["upgrade_sock", "pid_file", "RUNTIME_DIRECTORY", "tmp"])
def test_world_writable_runtime_directory_is_refused(tmp_path, how):
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    env = clean_env()
    if how == "upgrade_sock":
        conf = base_config(tmp_path, server={"upgrade_sock": f"{loose}/upgrade.sock", "pid_file": f"{tmp_path}/p.pid"})
    elif how == "pid_file":
        conf = base_config(tmp_path, server={"upgrade_sock": f"{tmp_path}/u.sock", "pid_file": f"{loose}/proxy.pid"})
    elif how == "tmp":  # the old default
        conf = base_config(tmp_path, server={"upgrade_sock": "/tmp/s3-crypt-proxy-upgrade.sock", "pid_file": "/tmp/s3-crypt-proxy.pid"})
        loose = "/tmp"
    else:
        conf = base_config(tmp_path)
        env = clean_env(RUNTIME_DIRECTORY=str(loose))
    setting = "server.pid_file" if how == "pid_file" else "server.upgrade_sock"
    for cmd in ("run", "check"):
        r = proxy_cmd(cmd, "--config", str(conf), env=env)
        one_line_exit_2(r, setting, f"directory {loose} is group- or world-writable")


def test_runtime_directory_of_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    conf = base_config(tmp_path, server={"upgrade_sock": f"{theirs}/upgrade.sock", "pid_file": f"{theirs}/proxy.pid"})
    one_line_exit_2(proxy_cmd("run", "--config", str(conf)), "server.upgrade_sock", "belongs to uid 65534")
    # `check` run by root validates for the service user: the owner is theirs to be.
    assert proxy_cmd("check", "--config", str(conf)).returncode == 0
    theirs.chmod(0o770)
    one_line_exit_2(proxy_cmd("check", "--config", str(conf)), "group- or world-writable")


# ---------------------------------------------------------------- credentials in logs

def test_presigned_url_credentials_never_reach_the_log(hstack):
    """A presigned GET whose backend connection fails (5xx from the proxy, logged as an error):
    the log line names the request without its signature or credential."""
    p, relay = hstack.proxy, hstack.relay
    s3 = hstack.boto(signature_version="s3v4")
    key = f"hardening/presigned-{os.urandom(3).hex()}"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"x" * 5000)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=600)
    q = dict(re.findall(r"([A-Za-z-]+)=([^&]+)", url.split("?", 1)[1]))
    signature, credential = q["X-Amz-Signature"], q["X-Amz-Credential"]
    relay.clear()
    relay.arm(method="GET", path_contains=key, reset_response_after=5, times=5)
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=10)
        assert e.value.code in (502, 503), e.value.code
    finally:
        relay.clear()
    with urllib.request.urlopen(url, timeout=10) as r:  # the URL itself is fine
        assert r.read() == b"x" * 5000

    def logged():
        text = log_text(p)
        return [l for l in text.splitlines() if key in l and "Fail to proxy" in l]
    wait_for("the error log line", lambda: logged())
    lines = logged()
    assert all("X-Amz-Signature=REDACTED" in l and "X-Amz-Credential=REDACTED" in l for l in lines), lines
    text = log_text(p)
    assert signature not in text and credential not in text and credential.replace("%2F", "/") not in text
    with open(p.config["audit_log"], errors="replace") as f:
        audit = f.read()
    assert key in audit and signature not in audit and credential not in audit


# ---------------------------------------------------------------- key replaced under its id

def test_different_key_under_a_loaded_id_is_refused_and_old_objects_stay_readable(hstack):
    p, keyd = hstack.proxy, hstack.keyd
    s3 = hstack.boto()
    s3.put_object(Bucket=BUCKET, Key="hardening/old", Body=b"written with the original key 1")
    conflicts_before = p.metric("s3_crypt_proxy_key_conflicts_total")
    impostor = os.path.join(keyd.dir, f"impostor-{os.urandom(3).hex()}.key")
    keyd.admin("key", "generate", "--id", "1", "--out", impostor)
    keyd.stop()
    keyd.start()  # memory only: empty again
    assert keyd.send_key(impostor).returncode == 0
    try:
        wait_for("the refusal", lambda: p.metric("s3_crypt_proxy_key_conflict") == 1)
        assert p.metric("s3_crypt_proxy_key_conflicts_total") == conflicts_before + 1
        refusals = [l for l in log_text(p).splitlines() if "REFUSED the keys keyd offers" in l]
        assert len(refusals) == 1 and " ERROR " in refusals[0] and "key id [1]" in refusals[0], refusals
        status, body = admin_json(p, "/api/v1/key/status", token=p.admin_token)
        assert status == 200 and body["conflict"]["key_ids"] == [1] and body["current_key_id"] == 1, body
        _, info = admin_json(p, "/api/v1/info")
        assert info["key_conflict"] is True
        # The loaded key stays: old objects read, new ones are written with it.
        assert s3.get_object(Bucket=BUCKET, Key="hardening/old")["Body"].read() == b"written with the original key 1"
        s3.put_object(Bucket=BUCKET, Key="hardening/during", Body=b"written during the conflict")
        time.sleep(1)  # several polls: still refused, logged once
        assert p.metric("s3_crypt_proxy_key_conflict") == 1
        assert sum("REFUSED the keys keyd offers" in l for l in log_text(p).splitlines()) == 1
        assert p.proc.poll() is None
    finally:
        keyd.stop()
        keyd.start()
        assert keyd.send_key(hstack.key_file).returncode == 0
    wait_for("the refusal to clear", lambda: p.metric("s3_crypt_proxy_key_conflict") == 0)
    _, body = admin_json(p, "/api/v1/key/status", token=p.admin_token)
    assert body["conflict"] is None
    # Both objects are under the original key: readable by the proxy and by the key file.
    for key, data in (("hardening/old", b"written with the original key 1"), ("hardening/during", b"written during the conflict")):
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
        r = subprocess.run([harness.binary("memkey-admin"), "object", "decrypt", "--key-file", hstack.key_file,
                            "--bucket", BUCKET, "--key", key], input=hstack.stored(key), capture_output=True)
        assert r.returncode == 0 and r.stdout == data, r.stderr


# ---------------------------------------------------------------- allowed_buckets

def test_rewrap_of_a_disallowed_bucket_is_refused(hstack):
    p = hstack.proxy
    hstack.direct.put_object(Bucket=OTHER, Key="untouched", Body=b"not the proxy's")
    status, body = admin_json(p, f"/api/v1/rewrap?bucket={OTHER}&prefix=", method="POST", token=p.admin_token)
    assert status == 403 and body["code"] == "AccessDenied" and "allowed_buckets" in body["error"], body
    assert hstack.direct.get_object(Bucket=OTHER, Key="untouched")["Body"].read() == b"not the proxy's"
    status, body = admin_json(p, "/api/v1/rewrap?bucket=none-such-bucket", method="POST", token=p.admin_token)
    assert status == 403, body
    # The allowed bucket is accepted (and the job runs to its end).
    status, body = admin_json(p, f"/api/v1/rewrap?bucket={BUCKET}&prefix=hardening/", method="POST", token=p.admin_token)
    assert status == 202 and body["bucket"] == BUCKET, body
    wait_for("the rewrap job", lambda: admin_json(p, "/api/v1/rewrap", token=p.admin_token)[1]["state"] != "running", 60)
    assert admin_json(p, "/api/v1/rewrap", token=p.admin_token)[1]["state"] == "done"


def test_allowed_buckets_without_the_allowlist_filter_is_refused(tmp_path):
    conf = base_config(tmp_path, allowed_buckets=["pbs-bucket"], filters=["sigv4", "resign"],
                       server={"upgrade_sock": f"{tmp_path}/u.sock", "pid_file": f"{tmp_path}/p.pid"})
    for cmd in ("check", "run"):
        one_line_exit_2(proxy_cmd(cmd, "--config", str(conf)), "allowed_buckets", "allowlist")
    conf = base_config(tmp_path, filters=["sigv4", "resign"], server={"upgrade_sock": f"{tmp_path}/u.sock", "pid_file": f"{tmp_path}/p.pid"})
    one_line_exit_2(proxy_cmd("check", "--config", str(conf), env=clean_env(S3CP_ALLOWED_BUCKETS="a,b")), "allowlist filter is not in filters")
    assert proxy_cmd("check", "--config", str(conf)).returncode == 0
