"""rclone, s3cmd and minio-py through the proxy: uploads, downloads, syncs, and the ETag
checks these clients make against the MD5 of what they uploaded."""

import hashlib
import os
import subprocess

import pytest

from conftest import BUCKET


def files(tmp_path, sizes):
    d = tmp_path / "src"
    d.mkdir()
    out = {}
    for name, size in sizes.items():
        data = os.urandom(size)
        (d / name).write_bytes(data)
        out[name] = data
    return d, out


def rclone(stack, *args):
    p = stack.proxy
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"RCLONE_CONFIG_PX_TYPE": "s3", "RCLONE_CONFIG_PX_PROVIDER": "Other", "RCLONE_CONFIG_PX_ENDPOINT": p.endpoint,
                "RCLONE_CONFIG_PX_ACCESS_KEY_ID": p.access_key, "RCLONE_CONFIG_PX_SECRET_ACCESS_KEY": p.secret_key,
                "RCLONE_CONFIG_PX_REGION": "us-east-1", "RCLONE_CONFIG_PX_FORCE_PATH_STYLE": "true"})
    tls = ["--no-check-certificate"] if p.tls else []
    r = subprocess.run(["rclone", "--config", "/dev/null", "--s3-no-check-bucket", *tls, *args], capture_output=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    return r.stdout


def test_rclone_copy_sync_check_cat(http_stack, tmp_path):
    src, data = files(tmp_path, {"empty": 0, "small": 1000, "chunky": 300_000, "big": 12 * 1024 * 1024 + 5})
    rclone(http_stack, "copy", str(src), f"px:{BUCKET}/rclone")
    out = rclone(http_stack, "check", str(src), f"px:{BUCKET}/rclone")
    (src / "small").write_bytes(b"changed")
    data["small"] = b"changed"
    rclone(http_stack, "sync", str(src), f"px:{BUCKET}/rclone")
    rclone(http_stack, "check", str(src), f"px:{BUCKET}/rclone")
    assert rclone(http_stack, "cat", f"px:{BUCKET}/rclone/chunky") == data["chunky"]
    assert rclone(http_stack, "cat", "--offset", "70000", "--count", "1000", f"px:{BUCKET}/rclone/chunky") == data["chunky"][70000:71000]
    assert rclone(http_stack, "cat", "--offset", "6000000", "--count", "100", f"px:{BUCKET}/rclone/big") == data["big"][6000000:6000100]
    dst = tmp_path / "back"
    rclone(http_stack, "copy", f"px:{BUCKET}/rclone", str(dst))
    for name, content in data.items():
        assert (dst / name).read_bytes() == content, name


def test_rclone_over_https_with_its_defaults_and_multipart(stack, tmp_path):
    """The rclone from tests/requirements.txt (the newest release) over TLS, with its own
    upload defaults for single PUTs and, past a 5 MiB cutoff, multipart uploads."""
    version = subprocess.run(["rclone", "version"], capture_output=True, text=True).stdout.splitlines()[0]
    src, data = files(tmp_path, {"one": 3000, "parts": 11 * 1024 * 1024 + 7})
    rclone(stack, "copy", "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", str(src), f"px:{BUCKET}/rclone-tls")
    rclone(stack, "check", str(src), f"px:{BUCKET}/rclone-tls")
    listing = rclone(stack, "lsl", f"px:{BUCKET}/rclone-tls").decode()
    assert f"{len(data['parts'])} " in listing, (version, listing)
    assert rclone(stack, "cat", "--offset", "5242870", "--count", "20", f"px:{BUCKET}/rclone-tls/parts") == data["parts"][5242870:5242890]
    dst = tmp_path / "back"
    rclone(stack, "copy", f"px:{BUCKET}/rclone-tls", str(dst))
    for name, content in data.items():
        assert (dst / name).read_bytes() == content, (version, name)
    # What the backend holds is ciphertext, not the file.
    raw = stack.stored("rclone-tls/one")
    assert raw is not None and len(raw) > len(data["one"]) and data["one"][:64] not in raw


def s3cmd(stack, tmp_path, *args):
    p = stack.proxy
    host = p.endpoint.split("://")[1]
    cfg = tmp_path / "s3cfg"
    cfg.write_text(f"[default]\naccess_key = {p.access_key}\nsecret_key = {p.secret_key}\nhost_base = {host}\n"
                   f"host_bucket = {host}\nuse_https = {'True' if p.tls else 'False'}\ncheck_ssl_certificate = False\n"
                   "signature_v2 = False\nbucket_location = us-east-1\n")
    r = subprocess.run(["s3cmd", "-c", str(cfg), *args], capture_output=True, timeout=300)
    assert r.returncode == 0, (r.stdout.decode()[-2000:], r.stderr.decode()[-3000:])
    out = r.stdout.decode() + r.stderr.decode()
    assert "MD5 Sums don't match" not in out and "doesn't match" not in out.lower(), out
    return out


def test_s3cmd_put_get_sync(http_stack, tmp_path):
    src, data = files(tmp_path, {"a.bin": 100_000, "b.bin": 7 * 1024 * 1024})
    s3cmd(http_stack, tmp_path, "put", str(src / "a.bin"), f"s3://{BUCKET}/s3cmd/a.bin")
    got = tmp_path / "a.back"
    s3cmd(http_stack, tmp_path, "get", f"s3://{BUCKET}/s3cmd/a.bin", str(got))
    assert got.read_bytes() == data["a.bin"]
    s3cmd(http_stack, tmp_path, "sync", str(src) + "/", f"s3://{BUCKET}/s3cmd/sync/")
    out = s3cmd(http_stack, tmp_path, "ls", f"s3://{BUCKET}/s3cmd/sync/")
    assert "a.bin" in out and "b.bin" in out
    back = tmp_path / "syncback"
    back.mkdir()
    s3cmd(http_stack, tmp_path, "sync", f"s3://{BUCKET}/s3cmd/sync/", str(back) + "/")
    assert (back / "b.bin").read_bytes() == data["b.bin"]


def test_minio_py(http_stack):
    import io

    import minio
    p = http_stack.proxy
    c = minio.Minio(p.endpoint.split("://")[1], access_key=p.access_key, secret_key=p.secret_key, secure=p.tls, region="us-east-1")
    data = os.urandom(6 * 1024 * 1024 + 3)
    res = c.put_object(BUCKET, "minio/obj", io.BytesIO(data), len(data), part_size=5 * 1024 * 1024)
    got = c.get_object(BUCKET, "minio/obj")
    assert got.read() == data
    st = c.stat_object(BUCKET, "minio/obj")
    assert st.size == len(data)
    small = b"minio small object"
    res = c.put_object(BUCKET, "minio/small", io.BytesIO(small), len(small))
    # minio-py sends no Content-MD5: the ETag is the proxy's stable form, the same on HEAD.
    assert res.etag == c.stat_object(BUCKET, "minio/small").etag
    assert [o.object_name for o in c.list_objects(BUCKET, prefix="minio/")] == ["minio/obj", "minio/small"]
    assert c.get_object(BUCKET, "minio/obj", offset=5 * 1024 * 1024 - 2, length=4).read() == data[5 * 1024 * 1024 - 2:5 * 1024 * 1024 + 2]
    c.remove_object(BUCKET, "minio/small")
