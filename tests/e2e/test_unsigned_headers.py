"""Only what was signed acts (issue 13, items 2 and 11).

* An `x-amz-*` header the signature does not cover is refused as S3 refuses it (403
  AccessDenied, `<HeadersNotSigned>`), for presigned URLs and header auth alike, and nothing
  reaches the backend: a presigned PutObject URL cannot become a CopyObject, a presigned
  UploadPart cannot become an UploadPartCopy, and a captured signed request cannot be
  replayed with extra headers.
* In a pass-through chain (no crypto), the piece of an aws-chunked body held back for the
  trailer's verdict stays held across reads that decode to nothing, so a forged trailer
  checksum leaves nothing stored.
"""

import base64
import os
import tempfile
import time
import urllib.parse
import zlib

import boto3
import botocore.config
import pytest

import harness
from conftest import BUCKET, OTHER, Stack
from pbs_client import Response, quote_key

UNSIGNED = b"There were headers present in the request which were not signed"


@pytest.fixture(scope="module", params=["moto", "garage"])
def stack(request, workroot):
    """conftest's stack with a relay between the proxy and the backend that records every
    request the backend receives (`stack.relay.seen`)."""
    d = tempfile.mkdtemp(prefix=f"relayed-{request.param}-", dir=workroot)
    s = Stack(d, request.param, relay=True)
    yield s
    s.stop()


def send(stack, method, path_and_query, headers, body=b"", pieces=None, pause=0.0):
    """One raw HTTP request to the proxy; `pieces` (bytes each) are written one by one with
    `pause` seconds between them instead of `body`. The answer's `backend_requests` are the
    requests for this test's objects the backend received meanwhile (a relayed stack only)."""
    relay = getattr(stack, "relay", None)
    seen_before = len(relay.seen) if relay else 0
    r = _send(stack, method, path_and_query, headers, body, pieces, pause)
    r.backend_requests = [s for s in relay.seen[seen_before:] if "/unsigned" in s[1]] if relay else None
    return r


def _send(stack, method, path_and_query, headers, body, pieces, pause):
    conn = stack.client()._connect()
    try:
        conn.putrequest(method, path_and_query, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if "host" not in {k.lower() for k in headers}:
            conn.putheader("host", f"127.0.0.1:{stack.proxy.port}")
        conn.endheaders()
        for i, piece in enumerate(pieces if pieces is not None else [body]):
            if i and pause:
                time.sleep(pause)
            if piece:
                conn.send(piece)
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def path_of(url):
    u = urllib.parse.urlsplit(url)
    return u.path + ("?" + u.query if u.query else "")


def assert_headers_not_signed(r, *names):
    assert r.backend_requests in (None, []), f"the backend was asked: {r.backend_requests}"
    assert r.status == 403, r
    assert b"<Code>AccessDenied</Code>" in r.body and UNSIGNED in r.body, r
    listed = r.body.split(b"<HeadersNotSigned>")[1].split(b"</HeadersNotSigned>")[0].decode()
    assert sorted(listed.split(", ")) == sorted(names), r


def put_via_proxy(stack, key, data):
    assert stack.client().put_object(key, data, replace=True).status == 200


# ------------------------------------------------------------------ presigned URLs

def test_presigned_put_plus_copy_source_is_refused(stack):
    """A presigned PutObject URL (SignedHeaders=host) with an added x-amz-copy-source would
    copy any object the proxy can read; refused, and the destination is neither created nor
    changed."""
    s3 = stack.boto(signature_version="s3v4")
    secret = b"a private object the URL holder must not get " + os.urandom(8)
    put_via_proxy(stack, "unsigned/secret", secret)
    for dest, existing in [("unsigned/new-dest", None), ("unsigned/old-dest", b"the destination before")]:
        if existing:
            put_via_proxy(stack, dest, existing)
        before = stack.stored(dest)
        url = s3.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": dest}, ExpiresIn=300)
        assert "X-Amz-SignedHeaders=host" in url
        for source in (f"{BUCKET}/unsigned/secret", f"/{BUCKET}/unsigned/secret", f"{OTHER}/anything"):
            r = send(stack, "PUT", path_of(url), {"x-amz-copy-source": source, "content-length": "0"})
            assert_headers_not_signed(r, "x-amz-copy-source")
            assert stack.stored(dest) == before
        # Several unsigned headers are all named.
        r = send(stack, "PUT", path_of(url), {"x-amz-copy-source": f"{BUCKET}/unsigned/secret",
                                              "x-amz-metadata-directive": "REPLACE", "content-length": "0"})
        assert_headers_not_signed(r, "x-amz-copy-source", "x-amz-metadata-directive")
        assert stack.stored(dest) == before
    # The URL used as meant still works, and so does a presigned GET.
    url = s3.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": "unsigned/new-dest"}, ExpiresIn=300)
    r = send(stack, "PUT", path_of(url), {"content-length": "11"}, b"uploaded ok")
    assert r.status == 200, r
    assert r.backend_requests, "the relay sees what reaches the backend"
    get = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "unsigned/new-dest"}, ExpiresIn=300)
    r = send(stack, "GET", path_of(get), {})
    assert r.status == 200 and r.body == b"uploaded ok", r
    # A presigned GET with an added x-amz-* header is refused too.
    r = send(stack, "GET", path_of(get), {"x-amz-checksum-mode": "ENABLED"})
    assert_headers_not_signed(r, "x-amz-checksum-mode")


def test_presigned_upload_part_plus_copy_source_is_refused(stack):
    """A presigned UploadPart URL with an added x-amz-copy-source would become UploadPartCopy."""
    s3 = stack.boto(signature_version="s3v4")
    put_via_proxy(stack, "unsigned/part-source", os.urandom(70_000))
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="unsigned/mpu")["UploadId"]
    try:
        url = s3.generate_presigned_url("upload_part", ExpiresIn=300, Params={
            "Bucket": BUCKET, "Key": "unsigned/mpu", "UploadId": upload, "PartNumber": 1})
        for extra in ({"x-amz-copy-source": f"{BUCKET}/unsigned/part-source"},
                      {"x-amz-copy-source": f"{BUCKET}/unsigned/part-source", "x-amz-copy-source-range": "bytes=0-99"}):
            r = send(stack, "PUT", path_of(url), dict(extra, **{"content-length": "0"}))
            assert_headers_not_signed(r, *extra)
            assert s3.list_parts(Bucket=BUCKET, Key="unsigned/mpu", UploadId=upload).get("Parts", []) == []
        # The URL as meant uploads the part.
        r = send(stack, "PUT", path_of(url), {"content-length": "5"}, b"part1")
        assert r.status == 200, r
        assert [p["PartNumber"] for p in s3.list_parts(Bucket=BUCKET, Key="unsigned/mpu", UploadId=upload)["Parts"]] == [1]
    finally:
        s3.abort_multipart_upload(Bucket=BUCKET, Key="unsigned/mpu", UploadId=upload)


# ------------------------------------------------------------------ header auth

def crc32_b64(data):
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


BODY = b"the body the signer sent"
EXTRA_HEADERS = {
    "x-amz-metadata-directive": "REPLACE",
    "x-amz-tagging": "owner=attacker",
    "x-amz-acl": "public-read",
    "x-amz-website-redirect-location": "/elsewhere",
    "x-amz-object-lock-mode": "GOVERNANCE",
    "x-amz-checksum-crc32": crc32_b64(BODY),  # the right value: only the missing signature refuses it
    "x-amz-meta-injected": "1",
    "x-amz-storage-class": "STANDARD",
}


@pytest.mark.parametrize("header", sorted(EXTRA_HEADERS))
def test_signed_put_replayed_with_an_extra_header_is_refused(stack, header):
    """A captured header-signed PutObject replayed with one more x-amz-* header: refused
    whether the key is new or the object exists, and the stored object is untouched."""
    c = stack.client()
    key = f"unsigned/replay-{header}"
    path = f"/{BUCKET}/{quote_key(key)}"
    signed = c.sign("PUT", path, [], {"content-type": "application/octet-stream"}, BODY)
    tampered = dict(signed, **{header: EXTRA_HEADERS[header]})
    assert_headers_not_signed(send(stack, "PUT", path, tampered, BODY), header)
    assert stack.stored(key) is None
    # The captured request itself goes through; its replay with the extra header still does not.
    assert send(stack, "PUT", path, signed, BODY).status == 200
    before = stack.stored(key)
    assert_headers_not_signed(send(stack, "PUT", path, tampered, BODY), header)
    assert stack.stored(key) == before
    assert c.get_object(key).body == BODY


def test_signed_put_replayed_as_a_copy_is_refused(stack):
    c = stack.client()
    put_via_proxy(stack, "unsigned/copy-src", b"source bytes")
    path = f"/{BUCKET}/{quote_key('unsigned/copy-dst')}"
    signed = c.sign("PUT", path, [], {"content-type": "application/octet-stream"}, b"")
    before = stack.proxy.metric("s3_crypt_proxy_auth_failures_total", reason="unsigned_headers")
    r = send(stack, "PUT", path, dict(signed, **{"x-amz-copy-source": f"{BUCKET}/unsigned/copy-src"}))
    assert_headers_not_signed(r, "x-amz-copy-source")
    assert stack.stored("unsigned/copy-dst") is None
    deadline = time.time() + 5
    while stack.proxy.metric("s3_crypt_proxy_auth_failures_total", reason="unsigned_headers") <= before:
        assert time.time() < deadline, "the refusal is not counted as reason=unsigned_headers"
        time.sleep(0.1)


def test_signed_amz_headers_still_work(stack):
    """Clients sign the x-amz-* headers they send: such requests are unaffected (the PBS
    client's REPLACE copy, boto3 metadata and tagging)."""
    c = stack.client()
    put_via_proxy(stack, "unsigned/ok-src", b"copied")
    assert c.copy_object("unsigned/ok-src", "unsigned/ok-dst").status == 200
    assert c.get_object("unsigned/ok-dst").body == b"copied"
    s3 = stack.boto(signature_version="s3v4")
    s3.put_object(Bucket=BUCKET, Key="unsigned/ok-meta", Body=b"m", Metadata={"a": "b"})
    assert s3.head_object(Bucket=BUCKET, Key="unsigned/ok-meta")["Metadata"]["a"] == "b"


# ------------------------------------------------------------------ pass-through aws-chunked

@pytest.fixture(scope="module", params=["moto", "garage"])
def passthrough_stack(request, workroot):
    """A proxy with the pass-through chain (no crypto, no listing, no key source)."""
    d = tempfile.mkdtemp(prefix=f"pass-{request.param}-", dir=workroot)
    s = Stack.__new__(Stack)
    s.workdir = d
    s.backend = harness.start_backend(request.param, d)
    s.direct = boto3.client("s3", endpoint_url=s.backend.endpoint, region_name=s.backend.region,
                            aws_access_key_id=s.backend.access_key, aws_secret_access_key=s.backend.secret_key,
                            config=botocore.config.Config(s3={"addressing_style": "path"}))
    s.direct.create_bucket(Bucket=BUCKET)
    s.keyd = None
    s.proxy = harness.Proxy(d, s.backend, None, tls=False, allowed_buckets=[BUCKET],
                            filters=["sigv4", "allowlist", "resign"])
    s.proxy.wait_ready()
    yield s
    s.stop()


def chunked_trailer_upload(stack, key, data, trailer_value, pause=0.3):
    """PutObject with STREAMING-UNSIGNED-PAYLOAD-TRAILER (what SDKs send over HTTPS), written
    so that the proxy reads the final chunk on its own, between the last data and the
    trailer: that read decodes to no payload at all."""
    half = len(data) // 2
    pieces = [
        f"{half:x}\r\n".encode() + data[:half] + b"\r\n",
        f"{len(data) - half:x}\r\n".encode() + data[half:] + b"\r\n",
        b"0\r\n",
        f"x-amz-checksum-crc32:{trailer_value}\r\n\r\n".encode(),
    ]
    length = sum(map(len, pieces))
    c = stack.client()
    path = f"/{BUCKET}/{quote_key(key)}"
    headers = c.sign("PUT", path, [], {"content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
                                       "x-amz-trailer": "x-amz-checksum-crc32", "content-length": str(length),
                                       "content-type": "application/octet-stream"},
                     b"", payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    return send(stack, "PUT", path, headers, pieces=pieces, pause=pause)


def test_passthrough_forged_trailer_stores_nothing(passthrough_stack):
    s = passthrough_stack
    data = os.urandom(50_000)
    forged = crc32_b64(b"something else")
    # New key: nothing appears.
    r = chunked_trailer_upload(s, "pass/new", data, forged)
    assert r.status == 400 and b"<Code>BadDigest</Code>" in r.body, r
    time.sleep(0.5)  # let a backend that got a whole body finish storing it
    assert s.stored("pass/new") is None
    # Existing key: it keeps its content.
    r = chunked_trailer_upload(s, "pass/old", b"the old content", crc32_b64(b"the old content"))
    assert r.status == 200, r
    r = chunked_trailer_upload(s, "pass/old", data, forged)
    assert r.status == 400, r
    time.sleep(0.5)
    assert s.stored("pass/old") == b"the old content"
    # The right checksum stores exactly the payload (pass-through: as plaintext).
    r = chunked_trailer_upload(s, "pass/good", data, crc32_b64(data))
    assert r.status == 200, r
    assert s.stored("pass/good") == data
