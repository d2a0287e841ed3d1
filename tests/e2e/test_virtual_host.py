"""Virtual-host addressing from clients, over TLS (issue 18, item 3): PBS's default endpoint
template is `{{bucket}}.host`, so the proxy must serve `bucket.<suffix>` names with a certificate
valid for them. The proxy runs with `virtual_host_suffix: s3.test` and a wildcard certificate
(`*.s3.test`, issued by the test CA); boto3 verifies it by name (its default newest-SDK upload
path, aws-chunked with a CRC trailer, runs because this is HTTPS), and the PBS-faithful client
pins it by fingerprint. Path-style requests keep working on the same listener, and the backend
is still addressed path-style. `*.s3.test` is resolved to 127.0.0.1 inside this test process
(no system resolver change), so only in-process clients are driven here."""

import hashlib
import socket
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
