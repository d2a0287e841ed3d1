"""Bad input gets the right S3 error and leaves nothing stored; tampered ciphertext never
reaches a client as plaintext."""

import base64
import hashlib
import http.client
import os
import tempfile
import time

import pytest

import harness
from conftest import BUCKET, OTHER, Stack
from test_pbs import blob, chunk_key

KEY_PREFIX = "store/.chunks/bad"


def test_bad_signature_is_refused_and_nothing_stored(stack):
    c = stack.client()
    c.tamper_signature = True
    key = f"{KEY_PREFIX}/sig-{os.urandom(4).hex()}"
    r = c.put_object(key, b"x" * 1000)
    assert r.status == 403, r
    assert b"<Code>SignatureDoesNotMatch</Code>" in r.body
    assert stack.stored(key) is None


@pytest.mark.parametrize("size,answered", [(4 * 1024 * 1024, True), (40 * 1024 * 1024, False)])
def test_early_error_is_read_by_a_client_still_sending(stack, size, answered):
    """A refused PBS-sized upload: the proxy reads and discards the rest of the body (up to
    16 MiB) so that a client that sends everything before reading gets the S3 error, not a
    reset; a larger body is cut instead of being read for nothing. Nothing is stored."""
    c = stack.client()
    c.tamper_signature = True
    key = f"{KEY_PREFIX}/linger-{size}"
    body = os.urandom(size)
    sent_all, r = True, None
    try:
        r = c.request("PUT", key, headers={"content-type": "application/octet-stream"}, body=body)
    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected, OSError):
        sent_all = False
    if answered:
        assert sent_all and r.status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in r.body, r
        assert r.header("connection") != "close"  # the body was read whole: the connection stays
        c.tamper_signature = False
        assert c.head_bucket().status == 200
    else:
        assert not sent_all or r.status == 403, r
    assert stack.stored(key) is None


def test_a_client_trickling_its_body_is_lingered_on_once(stack):
    """After an early error the proxy reads and throws away the rest of the body for at most
    5 s (lingering close) before it answers and closes. Our own reply's lingering and the one
    at the end of every request are one: a client trickling its body is answered and closed
    after about 5 s, not kept another 5 s."""
    import socket
    import ssl
    port = stack.proxy.port
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname="127.0.0.1")
    head = (f"PUT /{BUCKET}/{KEY_PREFIX}/trickle HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 1048576\r\n"
            "x-amz-content-sha256: UNSIGNED-PAYLOAD\r\n"
            "Authorization: AWS4-HMAC-SHA256 Credential=nobody/20260101/us-east-1/s3/aws4_request, "
            "SignedHeaders=host, Signature=00\r\n\r\n")
    start = time.time()
    sock.sendall(head.encode())
    sock.settimeout(0.2)
    answer, answered_at, closed_at = b"", None, None
    while time.time() - start < 20:
        try:
            got = sock.recv(65536)
            if not got:
                closed_at = time.time() - start
                break
            answer += got
            answered_at = answered_at or time.time() - start
        except (TimeoutError, socket.timeout, ssl.SSLWantReadError):
            pass
        except OSError:
            closed_at = time.time() - start
            break
        try:
            sock.sendall(b"x" * 1024)  # 5 KiB/s: never done within the lingering time
        except OSError:
            pass
    sock.close()
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert answered_at is not None and 4 <= answered_at < 8, answered_at
    assert closed_at is not None and closed_at - answered_at < 2, (answered_at, closed_at)
    assert stack.stored(f"{KEY_PREFIX}/trickle") is None


def test_unknown_access_key(stack):
    c = stack.client()
    c.access_key = "nobody"
    r = c.put_object(f"{KEY_PREFIX}/ak", b"x")
    assert r.status == 403 and b"<Code>InvalidAccessKeyId</Code>" in r.body, r


@pytest.mark.parametrize("size", [10, 200_000])
def test_bad_payload_hash_stores_nothing_and_overwrites_nothing(stack, size):
    c = stack.client()
    key = f"{KEY_PREFIX}/hash-{size}-{os.urandom(4).hex()}"
    good = blob(size, "good")
    # New key: nothing appears.
    r = c.put_object(key, good, payload_hash=hashlib.sha256(b"something else").hexdigest())
    assert r.status == 400 and b"<Code>XAmzContentSHA256Mismatch</Code>" in r.body, r
    assert stack.stored(key) is None
    # Existing key: it keeps its content.
    assert c.put_object(key, good, replace=True).status == 200
    before = stack.stored(key)
    r = c.put_object(key, blob(size, "evil"), replace=True, payload_hash=hashlib.sha256(b"other").hexdigest())
    assert r.status == 400, r
    assert stack.stored(key) == before
    assert c.get_object(key).body == good


@pytest.mark.parametrize("size", [10, 200_000])
def test_bad_content_md5_stores_nothing(stack, size):
    c = stack.client()
    key = f"{KEY_PREFIX}/md5-{size}-{os.urandom(4).hex()}"
    wrong = base64.b64encode(hashlib.md5(b"not the body").digest()).decode()
    r = c.request("PUT", key, headers={"content-md5": wrong, "content-type": "application/octet-stream"}, body=blob(size, "m"))
    assert r.status == 400 and b"<Code>BadDigest</Code>" in r.body, r
    assert stack.stored(key) is None


def test_disallowed_bucket(stack):
    c = stack.client(bucket=OTHER)
    r = c.put_object("k", b"data")
    assert r.status == 403 and b"<Code>AccessDenied</Code>" in r.body, r
    assert stack.direct.list_objects_v2(Bucket=OTHER).get("KeyCount", 0) == 0
    # Copying out of a disallowed bucket is refused too.
    c2 = stack.client()
    r = c2.request("PUT", "copied", headers={"x-amz-copy-source": f"{OTHER}/k"})
    assert r.status == 403, r


def test_list_buckets_comes_from_the_allowlist(stack):
    r = stack.client().request("GET", None, bucket="")
    # GET / through the PBS client's path form "//" is not ListBuckets; use boto3.
    names = [b["Name"] for b in stack.boto().list_buckets()["Buckets"]]
    assert names == [BUCKET]


def test_tampered_ciphertext_is_never_released(stack):
    c = stack.client()
    data = blob(300_000, "tamper")  # five 64 KiB chunks
    key = f"{KEY_PREFIX}/tamper-{os.urandom(4).hex()}"
    assert c.put_object(key, data, replace=True).status == 200
    obj = stack.direct.get_object(Bucket=BUCKET, Key=key)
    raw, meta = bytearray(obj["Body"].read()), obj["Metadata"]
    before = stack.proxy.metric("s3_crypt_proxy_encryption_errors_total")
    # Flip one bit in the third chunk.
    pos = 108 + 2 * (65536 + 16) + 100
    raw[pos] ^= 0x01
    stack.direct.put_object(Bucket=BUCKET, Key=key, Body=bytes(raw), Metadata=meta)
    c.close()
    try:
        r = c.get_object(key)
        got = r.body
        assert r.status != 200, "a tampered object was served whole"
    except http.client.IncompleteRead as e:
        got = e.partial
    c.close()
    # Whatever arrived is an authenticated prefix that stops before the bad chunk.
    assert data.startswith(got)
    assert len(got) <= 2 * 65536
    deadline = time.time() + 5
    while stack.proxy.metric("s3_crypt_proxy_encryption_errors_total") <= before and time.time() < deadline:
        time.sleep(0.1)
    assert stack.proxy.metric("s3_crypt_proxy_encryption_errors_total") > before


def test_object_moved_to_another_key_is_refused(stack):
    c = stack.client()
    data = b"bound to its name" * 100
    key = f"{KEY_PREFIX}/bound-{os.urandom(4).hex()}"
    assert c.put_object(key, data, replace=True).status == 200
    moved = key + "-moved"
    stack.direct.copy_object(Bucket=BUCKET, Key=moved, CopySource={"Bucket": BUCKET, "Key": key})
    r = c.get_object(moved)
    assert r.status == 500, r
    assert data not in r.body


def test_unencrypted_objects_are_refused_by_default(stack):
    key = f"{KEY_PREFIX}/plain-{os.urandom(4).hex()}"
    stack.direct.put_object(Bucket=BUCKET, Key=key, Body=b"written around the proxy")
    r = stack.client().get_object(key)
    assert r.status == 403 and b"InvalidObjectState" in r.body, r
    assert b"written around the proxy" not in r.body


def test_no_key_loaded_answers_503_until_delivered(workroot):
    d = tempfile.mkdtemp(prefix="nokey-", dir=workroot)
    backend = harness.start_backend("moto", d)
    import boto3
    boto3.client("s3", endpoint_url=backend.endpoint, region_name=backend.region, aws_access_key_id=backend.access_key,
                 aws_secret_access_key=backend.secret_key).create_bucket(Bucket=BUCKET)
    keyd = harness.Keyd(d)
    proxy = harness.Proxy(d, backend, keyd)
    try:
        s = Stack.__new__(Stack)
        s.proxy = proxy
        c = s.client()
        for _ in range(3):
            r = c.put_object("k", b"data")
            assert r.status == 503 and b"<Code>ServiceUnavailable</Code>" in r.body, r
            assert r.header("retry-after")
        status, body = proxy.admin_get("/readyz")
        assert status == 503
        assert keyd.send_key(keyd.new_key(1)).returncode == 0
        proxy.wait_ready()
        assert c.put_object("k", b"data").status == 200
        assert c.get_object("k").body == b"data"
    finally:
        proxy.stop()
        keyd.stop()
        backend.stop()


def test_unencrypted_objects_passthrough_mode(workroot):
    """With `unencrypted_objects: passthrough`, objects written around the proxy (before it
    was installed) are served as they are, while new writes are still encrypted."""
    d = tempfile.mkdtemp(prefix="passthrough-", dir=workroot)
    s = Stack(d, "moto", tls=False, unencrypted_objects="passthrough", unencrypted_prefixes=["legacy/"])
    try:
        s.direct.put_object(Bucket=BUCKET, Key="legacy/plain.txt", Body=b"written before the proxy", ContentType="text/plain")
        s3 = s.boto()
        got = s3.get_object(Bucket=BUCKET, Key="legacy/plain.txt")
        assert got["Body"].read() == b"written before the proxy"
        s3.put_object(Bucket=BUCKET, Key="legacy/new.txt", Body=b"new and encrypted")
        assert b"new and encrypted" not in s.stored("legacy/new.txt")
        assert s3.get_object(Bucket=BUCKET, Key="legacy/new.txt")["Body"].read() == b"new and encrypted"
    finally:
        s.stop()
