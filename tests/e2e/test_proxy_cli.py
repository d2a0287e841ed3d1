"""The proxy binary's start-up contract: configuration errors are one line and exit 2."""

import os
import subprocess

import yaml

import harness

BASE = {
    "backend": {"endpoint": "http://127.0.0.1:9", "access_key": "a", "secret_key": "b", "path_style": True},
    "client": {"access_key": "c", "secret_key": "d"},
    "memkey": {"socket_path": "/tmp/none.sock"},
}


def check(tmp_path, cfg, env=None):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("S3CP_")}
    full_env.update(env or {})
    return subprocess.run([harness.binary("s3-crypt-proxy"), "check", "--config", str(path)],
                          capture_output=True, text=True, env=full_env, timeout=30)


def one_line_exit_2(r, needle):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0], lines[0]


def test_valid_config_checks_ok(tmp_path):
    r = check(tmp_path, BASE)
    assert r.returncode == 0, r.stderr
    assert "sigv4" in r.stdout


def test_invalid_filter_orders_are_refused_with_the_reason(tmp_path):
    one_line_exit_2(check(tmp_path, dict(BASE, filters=["allowlist", "sigv4", "crypto", "listing", "resign"])), "sigv4 must come first")
    one_line_exit_2(check(tmp_path, dict(BASE, filters=["sigv4", "resign", "crypto", "listing"])), "resign must come last")
    one_line_exit_2(check(tmp_path, dict(BASE, filters=["sigv4", "allowlist", "resign"])), "crypto is missing")
    one_line_exit_2(check(tmp_path, dict(BASE, filters=["sigv4", "encrypt", "resign"])), "unknown filter")


def test_bad_values_and_env(tmp_path):
    one_line_exit_2(check(tmp_path, dict(BASE, listen_adr="x")), "unknown field")
    one_line_exit_2(check(tmp_path, {"client": BASE["client"]}), "backend.endpoint")
    one_line_exit_2(check(tmp_path, BASE, {"S3CP_BACKEND_PATH_STYLE": "perhaps"}), "not a boolean")
    one_line_exit_2(check(tmp_path, BASE, {"S3CP_CHUNK_SIZE": "1000"}), "chunk_size")
    one_line_exit_2(check(tmp_path, dict(BASE, tls={"cert_file": "/nonexistent.crt", "key_file": "/nonexistent.key"})), "certificate")


def test_env_alone_is_a_complete_configuration(tmp_path):
    env = {"S3CP_BACKEND_ENDPOINT": "http://127.0.0.1:9", "S3CP_BACKEND_ACCESS_KEY": "a", "S3CP_BACKEND_SECRET_KEY": "b",
           "S3CP_CLIENT_ACCESS_KEY": "c", "S3CP_CLIENT_SECRET_KEY": "d", "S3CP_MEMKEY_SOCKET": "/tmp/x.sock"}
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("S3CP_")}
    full_env.update(env)
    r = subprocess.run([harness.binary("s3-crypt-proxy"), "check"], capture_output=True, text=True, env=full_env)
    assert r.returncode == 0, r.stderr


def test_help_lists_every_variable():
    out = subprocess.run([harness.binary("s3-crypt-proxy"), "run", "--help"], capture_output=True, text=True).stdout
    for var in ["S3CP_LISTEN_ADDR", "S3CP_BACKEND_ENDPOINT", "S3CP_CLIENT_SECRET_KEY", "S3CP_ALLOWED_BUCKETS", "S3CP_MEMKEY_SOCKET", "S3CP_FILTERS"]:
        assert var in out, var


def test_fingerprint_matches_pbs_format(tmp_path):
    cert, _ = harness.self_signed_cert(str(tmp_path), "fp")
    out = subprocess.run([harness.binary("s3-crypt-proxy"), "fingerprint", "--cert", cert], capture_output=True, text=True, check=True).stdout.strip()
    assert out == harness.cert_fingerprint(cert)


def test_one_port_for_s3_and_admin_is_refused(tmp_path):
    port = harness.free_port()
    one_line_exit_2(check(tmp_path, dict(BASE, listen_addr=f"127.0.0.1:{port}", admin_listen_addr=f"127.0.0.1:{port}")),
                    "are the same socket")
    one_line_exit_2(check(tmp_path, dict(BASE, admin_listen_addr=f"127.0.0.1:{port}"), {"S3CP_LISTEN_ADDR": f"0.0.0.0:{port}"}),
                    "are the same socket")


def test_a_port_held_by_another_server_stops_the_start(tmp_path):
    """Pingora alone would retry for 30 s and then lose only that listener, leaving a process
    whose /readyz says ready while S3 clients reach whoever holds the port."""
    import socket
    import time
    held = socket.create_server(("127.0.0.1", 0))
    port = held.getsockname()[1]
    cfg = dict(BASE, listen_addr=f"127.0.0.1:{port}", admin_listen_addr=f"127.0.0.1:{harness.free_port()}",
               server={"upgrade_sock": str(tmp_path / "u.sock"), "pid_file": str(tmp_path / "p.pid")})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3CP_")}
    started = time.time()
    try:
        r = subprocess.run([harness.binary("s3-crypt-proxy"), "run", "--config", str(path)],
                           capture_output=True, text=True, env=env, timeout=30)
    finally:
        held.close()
    assert r.returncode == 2 and time.time() - started < 20, (r.returncode, r.stderr)
    assert f"listen_addr: cannot listen on 127.0.0.1:{port}: Address already in use" in r.stderr, r.stderr
