"""Listings report the exact size of every object whatever the current configuration, and
`unencrypted_objects: passthrough` serves only objects that predate encryption (issue 13.9).

One bucket per backend lives through a configuration change: a plaintext object written
straight to the backend before the cut-off, objects written through a proxy with 64 KiB
chunks, then a second proxy with 16 KiB chunks (`former_chunk_sizes: [65536]`) and
passthrough limited by `unencrypted_before`, which writes new objects. Then a plaintext
object is written around the proxy after the cut-off, and an encrypted object loses its
sealed metadata on the backend."""

import datetime
import json
import os
import subprocess
import tempfile
import time
import types

import pytest

import harness
from conftest import BUCKET, Stack
from test_proxy_cli import BASE, check, one_line_exit_2

PART = 5 * 1024 * 1024
REFUSAL = b"no valid encryption metadata"


def data(n, tag):
    return (tag.encode() * (n // len(tag) + 1))[:n]


def put(s3, key, body):
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def put_multipart(s3, key, body):
    up = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts = []
    for i, off in enumerate(range(0, len(body), PART), start=1):
        r = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=i, Body=body[off:off + PART])
        parts.append({"PartNumber": i, "ETag": r["ETag"]})
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up, MultipartUpload={"Parts": parts})


def objects(tag):
    """Small (agree under every chunk size), medium and large single-part, and multipart."""
    return {
        f"{tag}/small": (data(100, tag), False),
        f"{tag}/one-chunk": (data(16 * 1024, tag), False),
        f"{tag}/medium": (data(200_000, tag), False),
        f"{tag}/large": (data(3 * 1024 * 1024 + 17, tag), False),
        f"{tag}/multi": (data(2 * PART + 1000, tag), True),
        # Listings with encoding-type=url (boto3's and aws-cli's default) encode this key.
        f"{tag}/odd key+plus é": (data(150_000, tag), False),
    }


def aws(proxy, *args):
    env = dict(os.environ, AWS_ACCESS_KEY_ID=proxy.access_key, AWS_SECRET_ACCESS_KEY=proxy.secret_key,
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    env.pop("AWS_CA_BUNDLE", None)
    r = subprocess.run(["aws", "--endpoint-url", proxy.endpoint, *args], env=env, capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def rfc3339(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module", params=["moto", "garage"])
def world(request, workroot):
    d = tempfile.mkdtemp(prefix=f"listing-{request.param}-", dir=workroot)
    s = Stack(d, request.param, tls=False)  # 64 KiB chunks
    try:
        # Before the proxy is in use: a plaintext object, then the cut-off.
        legacy = data(5000, "legacy")
        s.direct.put_object(Bucket=BUCKET, Key="legacy/plain", Body=legacy)
        time.sleep(1.2)
        cutoff = rfc3339(time.time())
        time.sleep(1.2)
        written = {"legacy/plain": legacy}
        old = objects("old")
        for key, (body, multi) in old.items():
            (put_multipart if multi else put)(s.boto(), key, body)
            written[key] = body
        s.proxy.stop()
        # The same buckets, 16 KiB chunks from now on; passthrough for pre-cut-off objects.
        overrides = {"allowed_buckets": [BUCKET], "encryption": {"chunk_size": 16384, "former_chunk_sizes": [65536]},
                     "unencrypted_objects": "passthrough", "unencrypted_before": cutoff}
        if request.param == "garage":
            overrides["conditional_writes"] = "enforce"
        s.proxy = harness.Proxy(d, s.backend, s.keyd, tls=False, name="proxy2", **overrides)
        s.proxy.wait_ready()
        new = objects("new")
        for key, (body, multi) in new.items():
            (put_multipart if multi else put)(s.boto(), key, body)
            written[key] = body
        # After the cut-off, around the proxy: a plaintext object, and an encrypted object
        # whose sealed metadata is removed.
        s.direct.put_object(Bucket=BUCKET, Key="late/plain", Body=data(5000, "late"))
        put(s.boto(), "late/stripped", data(200_000, "stripped"))
        s.direct.copy_object(Bucket=BUCKET, Key="late/stripped", CopySource={"Bucket": BUCKET, "Key": "late/stripped"},
                             MetadataDirective="REPLACE", Metadata={})
        assert "s3cp" not in s.direct.head_object(Bucket=BUCKET, Key="late/stripped")["Metadata"]
        s.written = written
        yield s
    finally:
        s.stop()


def test_boto3_listings_v1_and_v2_report_written_sizes(world):
    s3 = world.boto()
    v2 = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    v1 = {o["Key"]: o["Size"] for o in s3.list_objects(Bucket=BUCKET)["Contents"]}
    # Small pages: the HEADs of ambiguous entries happen page by page.
    paged = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, PaginationConfig={"PageSize": 3}):
        paged.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    for key, body in world.written.items():
        assert (v2[key], v1[key], paged[key]) == (len(body),) * 3, key


def test_aws_cli_ls_and_list_objects_v2_report_written_sizes(world):
    ls = {}
    for line in aws(world.proxy, "s3", "ls", f"s3://{BUCKET}/", "--recursive").splitlines():
        _, _, size, key = line.split(None, 3)
        ls[key] = int(size)
    api = {o["Key"]: o["Size"] for o in json.loads(aws(world.proxy, "s3api", "list-objects-v2", "--bucket", BUCKET))["Contents"]}
    for key, body in world.written.items():
        assert ls[key] == len(body) and api[key] == len(body), key


def test_old_and_new_objects_read_back_exactly(world):
    s3 = world.boto()
    for key, body in world.written.items():
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body, key
        assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == len(body), key


@pytest.mark.parametrize("key", ["late/plain", "late/stripped"])
def test_objects_without_metadata_after_the_cut_off_are_refused(world, key):
    c = world.client()
    r = c.get_object(key)
    assert r.status == 403 and b"<Code>InvalidObjectState</Code>" in r.body, r
    assert REFUSAL in r.body and b"not encrypted" not in r.body, r.body
    assert data(100, "late") not in r.body and data(100, "stripped") not in r.body
    assert c.request("HEAD", key).status == 403


def test_passthrough_without_a_cut_off_is_refused(tmp_path):
    one_line_exit_2(check(tmp_path, dict(BASE, unencrypted_objects="passthrough")), "unencrypted_before")
    one_line_exit_2(check(tmp_path, dict(BASE, unencrypted_objects="passthrough", unencrypted_before="last week")), "RFC 3339")
    one_line_exit_2(check(tmp_path, dict(BASE, encryption={"former_chunk_sizes": [1000]})), "former_chunk_sizes")
    r = check(tmp_path, dict(BASE, unencrypted_objects="passthrough", unencrypted_prefixes=["legacy/"]))
    assert r.returncode == 0, r.stderr



@pytest.mark.parametrize("rng", ["bytes=10-19", "bytes=-7", "bytes=5-"])
def test_ranges_of_passthrough_objects_are_exact(world, rng):
    """The backend is asked for the whole object (ranges are planned for the format): the
    proxy cuts the Range out of it, never hands over the whole object as the range."""
    data = world.written["legacy/plain"]
    r = world.client().request("GET", "legacy/plain", [], headers={"range": rng})
    spec = rng.split("=", 1)[1]
    a, b = spec.split("-")
    first, last = (len(data) - int(b), len(data) - 1) if a == "" else (int(a), int(b) if b else len(data) - 1)
    assert r.status == 206 and r.body == data[first:last + 1], r
    assert r.header("Content-Range") == f"bytes {first}-{last}/{len(data)}"


def test_part_reads_of_passthrough_objects_are_refused_not_wrong(world):
    """A partNumber read of a legacy object is refused instead of answered with the whole."""
    r = world.client().request("GET", "legacy/plain", [("partNumber", "1")])
    assert r.status == 501 and b"<Code>NotImplemented</Code>" in r.body, r
    assert world.written["legacy/plain"][:100] not in r.body


def test_objects_without_metadata_are_listed_with_their_stored_size(world):
    """Documented rule: an ambiguous entry without metadata (HEAD) keeps its stored size."""
    listed = {o["Key"]: o["Size"] for o in world.boto().list_objects_v2(Bucket=BUCKET, Prefix="late/")["Contents"]}
    stored = world.direct.head_object(Bucket=BUCKET, Key="late/stripped")["ContentLength"]
    assert listed["late/stripped"] == stored


def test_undeclared_chunk_size_is_warned_and_counted(world, tmp_path):
    """A proxy that does not declare 64 KiB any more warns when it reads such an object."""
    b = world.backend
    p = harness.Proxy(str(tmp_path), b, world.keyd, tls=False, name="proxy3", allowed_buckets=[BUCKET],
                      encryption={"chunk_size": 16384}, conditional_writes="enforce")
    try:
        p.wait_ready()
        s = types.SimpleNamespace(proxy=p)
        s3 = Stack.boto(s)
        name = "s3_crypt_proxy_undeclared_chunk_size_reads_total"
        assert p.metric(name) == 0
        for _ in range(2):
            assert s3.get_object(Bucket=BUCKET, Key="old/medium")["Body"].read() == world.written["old/medium"]
        assert s3.get_object(Bucket=BUCKET, Key="new/medium")["Body"].read() == world.written["new/medium"]
        assert p.metric(name) == 2
        log = open(p.proc.log_path).read()
        assert log.count("add 65536 to former_chunk_sizes") == 1, log[-2000:]
    finally:
        p.stop()


def test_presigned_listing_is_sized_too(world):
    """The listing fetched by the proxy itself (former chunk sizes declared) drops the
    presigned URL's authentication before asking the backend."""
    import urllib.parse
    import urllib.request
    import xml.etree.ElementTree as ET
    url = world.boto(signature_version="s3v4").generate_presigned_url("list_objects_v2", Params={"Bucket": BUCKET, "Prefix": "old/"})
    with urllib.request.urlopen(url, timeout=30) as r:
        root = ET.fromstring(r.read())
    ns = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
    # encoding-type=url (boto3 adds it): keys come percent-encoded.
    sizes = {urllib.parse.unquote_plus(c.find("s3:Key", ns).text): int(c.find("s3:Size", ns).text) for c in root.findall("s3:Contents", ns)}
    old = {k: len(v) for k, v in world.written.items() if k.startswith("old/")}
    assert sizes == old
