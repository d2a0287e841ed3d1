"""Virtual-host addressing from clients, over TLS (issue 18, item 3): PBS's default endpoint
template is `{{bucket}}.host`, so the proxy must serve `bucket.<suffix>` names with a certificate
valid for them. The proxy runs with `virtual_host_suffix: s3.test` and a wildcard certificate
(`*.s3.test`, issued by the test CA); boto3 verifies it by name (its default newest-SDK upload
path, aws-chunked with a CRC trailer, runs because this is HTTPS), and the PBS-faithful client
pins it by fingerprint. Path-style requests keep working on the same listener, and the backend
is still addressed path-style. For boto3 `*.s3.test` is resolved to 127.0.0.1 inside this test
process; aws-cli and rclone run in their own processes (rclone is a static Go binary with its
own resolver), so their tests add test-only /etc/hosts lines for the names they use
(harness.hosts_entries, removed afterwards) and verify the certificate with the test CA.

The proxy also addresses the backend either way (`backend.path_style`): Garage, behind a relay
that records every request line, is reached as `bucket.s3.garage.localhost` (its
`root_domain`) with `path_style: false`, and as `/bucket/key` with `path_style: true`."""

import hashlib
import json
import os
import socket
import subprocess
import tempfile

import boto3
import botocore.config
import pytest

import harness
from conftest import BUCKET, Stack
from pbs_client import PbsClient

SUFFIX = "s3.test"


@pytest.fixture(scope="module", params=["moto", "garage"])
def vstack(request, workroot):
    d = tempfile.mkdtemp(prefix=f"vhost-{request.param}-", dir=workroot)
    s = Stack(d, request.param, tls=True, virtual_host_suffix=SUFFIX, cert_names=[SUFFIX, f"*.{SUFFIX}"])
    yield s
    s.stop()


@pytest.fixture
def resolve_test_names(monkeypatch):
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kw):
        if isinstance(host, str) and (host == SUFFIX or host.endswith("." + SUFFIX)):
            host = "127.0.0.1"
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def vhost_boto(stack):
    p = stack.proxy
    ca, _ = harness.test_ca(p.dir)
    return boto3.client("s3", endpoint_url=f"https://{SUFFIX}:{p.port}", region_name="us-east-1", verify=ca,
                        aws_access_key_id=p.access_key, aws_secret_access_key=p.secret_key,
                        config=botocore.config.Config(s3={"addressing_style": "virtual"}, retries={"max_attempts": 1}))


def test_boto3_virtual_host_over_verified_tls(vstack, resolve_test_names):
    s3 = vhost_boto(vstack)
    seen_hosts = []
    s3.meta.events.register("before-send.s3.*", lambda request, **kw: seen_hosts.append(request.url.split("/")[2]))
    body = bytes(range(256)) * 4096  # 1 MiB
    s3.put_object(Bucket=BUCKET, Key="vh/one", Body=body)
    assert s3.get_object(Bucket=BUCKET, Key="vh/one")["Body"].read() == body
    assert s3.get_object(Bucket=BUCKET, Key="vh/one", Range="bytes=1000-1999")["Body"].read() == body[1000:2000]
    assert s3.head_object(Bucket=BUCKET, Key="vh/one")["ContentLength"] == len(body)
    # Multipart, copy, listing and batch delete, all by virtual host.
    parts = [b"p" * (5 << 20), b"last part"]  # every part but the last: a multiple of the chunk size
    mp = s3.create_multipart_upload(Bucket=BUCKET, Key="vh/multi")
    etags = [s3.upload_part(Bucket=BUCKET, Key="vh/multi", UploadId=mp["UploadId"], PartNumber=n, Body=parts[n - 1])["ETag"]
             for n in (1, 2)]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="vh/multi", UploadId=mp["UploadId"],
                                 MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags)]})
    got = s3.get_object(Bucket=BUCKET, Key="vh/multi")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(b"".join(parts)).digest()
    s3.copy_object(Bucket=BUCKET, Key="vh/copy", CopySource={"Bucket": BUCKET, "Key": "vh/one"})
    assert s3.get_object(Bucket=BUCKET, Key="vh/copy")["Body"].read() == body
    listed = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="vh/")["Contents"]}
    assert listed == {"vh/one": len(body), "vh/copy": len(body), "vh/multi": sum(map(len, parts))}
    r = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in listed]})
    assert len(r["Deleted"]) == 3 and not r.get("Errors")
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="vh/").get("KeyCount") == 0
    # Every request really went to the bucket's own name.
    assert seen_hosts and all(h.startswith(f"{BUCKET}.{SUFFIX}:") for h in seen_hosts), set(seen_hosts)
    # The backend holds ciphertext only.
    s3.put_object(Bucket=BUCKET, Key="vh/plain", Body=b"virtual host plaintext")
    assert b"virtual host plaintext" not in vstack.stored("vh/plain")


def test_pbs_client_virtual_host_with_pinned_certificate(vstack):
    p = vstack.proxy
    pbs = PbsClient("127.0.0.1", p.port, BUCKET, p.access_key, p.secret_key,
                    fingerprint=harness.cert_fingerprint(p.cert), vhost_suffix=SUFFIX)
    key = "store/.chunks/0123/" + "01" * 32
    assert pbs.head_bucket().status == 200
    assert pbs.put_object(key, b"chunk").status == 200
    assert pbs.put_object(key, b"chunk again").status == 412
    assert pbs.get_object(key).body == b"chunk"
    listing = pbs.list_objects_v2("store/.chunks/")
    assert listing.status == 200 and key.encode() in listing.body
    assert pbs.copy_object(key, key + ".0.bad").status == 200
    r = pbs.delete_objects([key, key + ".0.bad"])
    assert r.status == 200 and b"<Error>" not in r.body
    assert pbs.get_object(key).status == 404
    # Path-style requests still work on the same listener.
    path_style = PbsClient("127.0.0.1", p.port, BUCKET, p.access_key, p.secret_key, fingerprint=harness.cert_fingerprint(p.cert))
    assert path_style.put_object("store/path-style", b"x").status == 200
    assert pbs.get_object("store/path-style").body == b"x"


@pytest.fixture(scope="module")
def system_names():
    """The names other-process clients resolve: the bare suffix and the bucket's host."""
    with harness.hosts_entries(SUFFIX, f"{BUCKET}.{SUFFIX}"):
        yield


def test_aws_cli_virtual_host_over_verified_tls(vstack, system_names, tmp_path):
    p = vstack.proxy
    ca, _ = harness.test_ca(p.dir)
    cfg = tmp_path / "aws-config"
    cfg.write_text("[default]\ns3 =\n  addressing_style = virtual\n")
    env = dict(os.environ, AWS_ACCESS_KEY_ID=p.access_key, AWS_SECRET_ACCESS_KEY=p.secret_key, AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE=str(cfg), AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    env.pop("AWS_CA_BUNDLE", None)

    def aws(*args, debug=False):
        r = subprocess.run(["aws", "--endpoint-url", f"https://{SUFFIX}:{p.port}", "--ca-bundle", ca, *(["--debug"] if debug else []), *args],
                           env=env, capture_output=True, timeout=300)
        assert r.returncode == 0, r.stderr.decode()[-3000:]
        return r

    data = os.urandom(9 * 1024 * 1024 + 1)  # multipart with aws-cli's 8 MiB threshold, aws-chunked over TLS
    (tmp_path / "f.bin").write_bytes(data)
    r = aws("s3", "cp", str(tmp_path / "f.bin"), f"s3://{BUCKET}/vh-cli/f.bin", debug=True)
    urls = {line.split("url=", 1)[1].split("/")[2] for line in r.stderr.decode().splitlines() if "Sending http request" in line and "url=" in line}
    assert urls == {f"{BUCKET}.{SUFFIX}:{p.port}"}, urls
    assert aws("s3", "cp", f"s3://{BUCKET}/vh-cli/f.bin", "-").stdout == data
    aws("s3", "cp", f"s3://{BUCKET}/vh-cli/f.bin", f"s3://{BUCKET}/vh-cli/copy.bin", "--content-type", "text/x-copy", "--metadata-directive", "REPLACE")
    head = json.loads(aws("s3api", "head-object", "--bucket", BUCKET, "--key", "vh-cli/copy.bin").stdout)
    assert (head["ContentLength"], head["ContentType"]) == (len(data), "text/x-copy")
    listed = json.loads(aws("s3api", "list-objects-v2", "--bucket", BUCKET, "--prefix", "vh-cli/").stdout)
    assert {o["Key"]: o["Size"] for o in listed["Contents"]} == {"vh-cli/f.bin": len(data), "vh-cli/copy.bin": len(data)}
    aws("s3", "rm", "--recursive", f"s3://{BUCKET}/vh-cli/")
    assert json.loads(aws("s3api", "list-objects-v2", "--bucket", BUCKET, "--prefix", "vh-cli/").stdout or "{}").get("KeyCount", 0) == 0


def test_rclone_virtual_host_over_verified_tls(vstack, system_names, tmp_path):
    p = vstack.proxy
    ca, _ = harness.test_ca(p.dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"RCLONE_CONFIG_VH_TYPE": "s3", "RCLONE_CONFIG_VH_PROVIDER": "Other", "RCLONE_CONFIG_VH_ENDPOINT": f"https://{SUFFIX}:{p.port}",
                "RCLONE_CONFIG_VH_ACCESS_KEY_ID": p.access_key, "RCLONE_CONFIG_VH_SECRET_ACCESS_KEY": p.secret_key,
                "RCLONE_CONFIG_VH_REGION": "us-east-1", "RCLONE_CONFIG_VH_FORCE_PATH_STYLE": "false"})

    def rclone(*args):
        r = subprocess.run(["rclone", "--config", "/dev/null", "--s3-no-check-bucket", "--ca-cert", ca, *args], capture_output=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr.decode()[-3000:]
        return r

    src = tmp_path / "src"
    src.mkdir()
    data = {"small": os.urandom(3000), "parts": os.urandom(11 * 1024 * 1024 + 7)}
    for name, content in data.items():
        (src / name).write_bytes(content)
    r = rclone("copy", "-vv", "--dump", "headers", "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", str(src), f"vh:{BUCKET}/vh-rclone")
    hosts = {line.split(":", 1)[1].strip() for line in r.stderr.decode().splitlines() if line.lower().startswith("host:")}
    assert hosts == {f"{BUCKET}.{SUFFIX}:{p.port}"}, r.stderr.decode()[-4000:]
    rclone("check", str(src), f"vh:{BUCKET}/vh-rclone")
    listed = json.loads(rclone("lsjson", f"vh:{BUCKET}/vh-rclone").stdout)
    assert {o["Path"]: o["Size"] for o in listed} == {k: len(v) for k, v in data.items()}
    assert rclone("cat", "--offset", "6000000", "--count", "100", f"vh:{BUCKET}/vh-rclone/parts").stdout == data["parts"][6000000:6000100]
    rclone("purge", f"vh:{BUCKET}/vh-rclone")
    assert json.loads(rclone("lsjson", f"vh:{BUCKET}/vh-rclone").stdout) == []


GARAGE_DOMAIN = "s3.garage.localhost"  # Garage's root_domain (harness.Garage)


@pytest.fixture(scope="module", params=["path", "virtual"])
def addressed_stack(request, workroot):
    """The proxy addressing Garage (through a recording relay) path-style or by virtual host."""
    d = tempfile.mkdtemp(prefix=f"backend-{request.param}-", dir=workroot)
    with harness.hosts_entries(GARAGE_DOMAIN):
        s = Stack(d, "garage", relay=True, backend_host=GARAGE_DOMAIN, backend_options={"path_style": request.param == "path"})
        s.style = request.param
        yield s
        s.stop()


def test_backend_addressed_path_style_or_by_virtual_host(addressed_stack):
    s = addressed_stack
    s3 = s.boto()
    body = os.urandom(200_000)
    s3.put_object(Bucket=BUCKET, Key="addr/one", Body=body, ContentType="text/x-addr")
    got = s3.get_object(Bucket=BUCKET, Key="addr/one")
    assert got["Body"].read() == body and got["ContentType"] == "text/x-addr"
    s3.copy_object(Bucket=BUCKET, Key="addr/copy", CopySource={"Bucket": BUCKET, "Key": "addr/one"})
    mp = s3.create_multipart_upload(Bucket=BUCKET, Key="addr/multi")
    etag = s3.upload_part(Bucket=BUCKET, Key="addr/multi", UploadId=mp["UploadId"], PartNumber=1, Body=b"part")["ETag"]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="addr/multi", UploadId=mp["UploadId"], MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    listed = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="addr/")["Contents"]}
    assert listed == {"addr/one": len(body), "addr/copy": len(body), "addr/multi": 4}
    pbs = s.client()
    assert pbs.put_object("addr/chunk", b"c").status == 200 and pbs.put_object("addr/chunk", b"c").status == 412
    r = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in [*listed, "addr/chunk"]]})
    assert len(r["Deleted"]) == 4 and not r.get("Errors")
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="addr/")["KeyCount"] == 0
    # Every request line the backend received names the bucket in the path, or never does.
    targets = [t for _, t in s.relay.seen]
    assert len(targets) >= 10
    in_path = [t.startswith(f"/{BUCKET}/") or t.startswith(f"/{BUCKET}?") or t == f"/{BUCKET}" for t in targets]
    assert all(in_path) if s.style == "path" else not any(in_path), targets
