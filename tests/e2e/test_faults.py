"""Faults: corrupted ciphertext, clients and backends that go away mid-transfer. The client
gets a clean error or a cut connection, never unauthenticated plaintext, and no partial
object becomes visible."""

import http.client
import json
import os
import signal
import socket
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

import botocore.exceptions
import pytest

import harness
from conftest import BUCKET, Stack

CHUNK = 65536 + 16
HEADER = 108


@pytest.fixture(scope="module")
def fstack(workroot):
    d = tempfile.mkdtemp(prefix="faults-", dir=workroot)
    s = Stack(d, "garage", tls=False)
    yield s
    s.stop()


def raw_get(stack, key):
    """GET through the proxy; returns (status, body, complete)."""
    c = stack.client()
    try:
        r = c.get_object(key)
        return r.status, r.body, True
    except http.client.IncompleteRead as e:
        return 200, e.partial, False
    finally:
        c.close()


def send_put_head(stack, key, body):
    """Opens a raw connection to the proxy and sends a signed PUT's head; the body is the caller's."""
    c = stack.client()
    hdrs = c.sign("PUT", f"/{BUCKET}/{key}", [], {"content-type": "application/octet-stream"}, body)
    s = socket.create_connection(("127.0.0.1", stack.proxy.port))
    s.sendall(f"PUT /{BUCKET}/{key} HTTP/1.1\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()).encode() + b"\r\n")
    return s


def store_raw(stack, key, data):
    c = stack.client()
    assert c.put_object(key, data, replace=True).status == 200
    obj = stack.direct.get_object(Bucket=BUCKET, Key=key)
    return bytearray(obj["Body"].read()), obj["Metadata"]


def assert_never_unauthenticated(stack, key, data, before):
    status, got, complete = raw_get(stack, key)
    assert not (status == 200 and complete and got == data), "a damaged object was served whole"
    if status == 200:
        assert data.startswith(got), "released bytes that are not the authenticated prefix"
    deadline = time.time() + 5
    while stack.proxy.metric("s3_crypt_proxy_encryption_errors_total") <= before and time.time() < deadline:
        time.sleep(0.05)
    assert stack.proxy.metric("s3_crypt_proxy_encryption_errors_total") > before


@pytest.mark.parametrize("damage", ["truncate_tail", "truncate_chunk_boundary", "swap_chunks", "drop_chunk", "flip_header"])
def test_damaged_ciphertext(fstack, damage):
    data = os.urandom(5 * 65536 + 1000)
    key = f"faults/{damage}"
    raw, meta = store_raw(fstack, key, data)
    if damage == "truncate_tail":
        raw = raw[:-7]
    elif damage == "truncate_chunk_boundary":
        raw = raw[:HEADER + 3 * CHUNK]
    elif damage == "swap_chunks":
        a, b = HEADER + CHUNK, HEADER + 2 * CHUNK
        raw[a:b], raw[b:b + CHUNK] = raw[b:b + CHUNK], raw[a:b]
    elif damage == "drop_chunk":
        del raw[HEADER + CHUNK:HEADER + 2 * CHUNK]
    elif damage == "flip_header":
        raw[70] ^= 0x80
    before = fstack.proxy.metric("s3_crypt_proxy_encryption_errors_total")
    fstack.direct.put_object(Bucket=BUCKET, Key=key, Body=bytes(raw), Metadata=meta)
    assert_never_unauthenticated(fstack, key, data, before)


def test_object_swapped_with_another_keys_object(fstack):
    a, b = os.urandom(70_000), os.urandom(70_000)
    store_raw(fstack, "faults/swap-a", a)
    raw_b, meta_b = store_raw(fstack, "faults/swap-b", b)
    before = fstack.proxy.metric("s3_crypt_proxy_encryption_errors_total")
    fstack.direct.put_object(Bucket=BUCKET, Key="faults/swap-a", Body=bytes(raw_b), Metadata=meta_b)
    status, got, _ = raw_get(fstack, "faults/swap-a")
    assert status == 500 and b not in got and a not in got
    assert fstack.proxy.metric("s3_crypt_proxy_encryption_errors_total") > before


def test_client_disconnecting_mid_upload_stores_nothing(fstack):
    c = fstack.client()
    key = "faults/half-upload"
    existing = b"the old content stays"
    assert c.put_object(key, existing, replace=True).status == 200
    body = os.urandom(3 * 1024 * 1024)
    s = send_put_head(fstack, key, body)
    s.sendall(body[:1024 * 1024])
    time.sleep(0.3)
    s.close()
    time.sleep(1)
    assert fstack.direct.get_object(Bucket=BUCKET, Key=key)["Body"].read() != body
    assert c.get_object(key).body == existing


def test_backend_killed_mid_get_and_mid_put(fstack):
    data = os.urandom(24 * 1024 * 1024)
    c = fstack.client()
    assert c.put_object("faults/big", data, replace=True).status == 200
    # Mid-GET: read a little, kill the backend, read the rest.
    s = socket.create_connection(("127.0.0.1", fstack.proxy.port))
    hdrs = c.sign("GET", f"/{BUCKET}/faults/big", [], {}, b"")
    s.sendall(f"GET /{BUCKET}/faults/big HTTP/1.1\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()).encode() + b"\r\n")
    s.settimeout(30)
    got = s.recv(65536)
    fstack.backend.proc.stop(signal.SIGKILL)
    try:
        while True:
            piece = s.recv(1 << 20)
            if not piece:
                break
            got += piece
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    head, _, body = got.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    assert len(body) < len(data) and data.startswith(body)
    # Mid-PUT: the backend dies while the body streams; nothing appears once it is back.
    fstack.backend.start()
    time.sleep(1)
    body = os.urandom(16 * 1024 * 1024)
    s = send_put_head(fstack, "faults/killed-put", body)
    s.sendall(body[:4 * 1024 * 1024])
    fstack.backend.proc.stop(signal.SIGKILL)
    try:
        s.sendall(body[4 * 1024 * 1024:])
        answer = s.recv(4096)
    except (BrokenPipeError, ConnectionResetError):
        answer = b""
    s.close()
    assert answer == b"" or b" 200 " not in answer.split(b"\r\n")[0], answer[:200]
    fstack.backend.start()
    time.sleep(1)
    with pytest.raises(fstack.direct.exceptions.NoSuchKey):
        fstack.direct.get_object(Bucket=BUCKET, Key="faults/killed-put")
    assert c.get_object("faults/big").body == data


def test_unreachable_backend_after_100_continue_answers_503_not_a_reset(fstack):
    """A PUT sent with `Expect: 100-continue` (botocore's for bodies over 1 MB, curl's, PBS's
    HTTP client's): the proxy says 100 Continue once the request passed its checks, so the
    client sends its body, and only then does the backend turn out to be unreachable. A client
    that sends everything before it reads must get the 503: the proxy reads the rest of the
    body before it answers and closes (closing on an unread body makes the kernel send a
    reset; behind HAProxy botocore saw these as broken connections, not retryable 503s)."""
    import types
    import urllib.parse
    dead = types.SimpleNamespace(endpoint=f"http://127.0.0.1:{harness.free_port()}", region="us-east-1",
                                 access_key="nobody", secret_key="nothing")
    first = fstack.proxy
    p = harness.Proxy(fstack.workdir, dead, fstack.keyd, tls=False, name="proxy-dead-backend", allowed_buckets=[BUCKET],
                      client={"access_key": first.access_key, "secret_key": first.secret_key})
    try:
        url = urllib.parse.urlsplit(p.presigned_url("put_object", BUCKET, "dead/backend"))
        size = 12 << 20  # more than the sockets buffer between the two: a reset breaks the send
        sock = socket.create_connection(("127.0.0.1", p.port), timeout=30)
        sock.sendall(f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: 127.0.0.1:{p.port}\r\n"
                     f"Content-Length: {size}\r\nExpect: 100-continue\r\n\r\n".encode())
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(1)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(os.urandom(size))  # all of it, then read: as botocore and PBS do
        r = http.client.HTTPResponse(sock, method="PUT")
        r.begin()
        body = r.read()
        sock.close()
        assert r.status == 503 and b"<Code>ServiceUnavailable</Code>" in body, (r.status, body[:300])
        with open(os.path.join(p.dir, "audit.log")) as f:
            line = [json.loads(x) for x in f if '"dead/backend"' in x][-1]
        assert line["status"] == 503 and line["bytes_in"] == size, line
    finally:
        p.stop()


# ------------------------------------------------- a backend that fails, stalls or resets

@pytest.fixture(scope="module")
def rstack(workroot):
    """Garage behind a fault-injecting relay (chaos.Relay); the proxy's backend timeout is 3 s."""
    d = tempfile.mkdtemp(prefix="faults-relay-", dir=workroot)
    s = Stack(d, "garage", tls=False, relay=True, backend_options={"timeout": "3s"})
    yield s
    s.stop()


@pytest.fixture
def relay(rstack):
    rstack.relay.clear()
    yield rstack.relay
    rstack.relay.clear()


def error_code(body):
    return ET.fromstring(body).findtext("Code")


@pytest.mark.parametrize("status,code", [(500, "InternalError"), (503, "SlowDown")])
def test_backend_error_on_put_keeps_the_old_object(rstack, relay, status, code):
    c = rstack.client()
    key = f"relay/put-{status}"
    old = os.urandom(100_000)
    assert c.put_object(key, old, replace=True).status == 200
    raw_before = rstack.stored(key)
    relay.arm(method="PUT", path_contains=key, status=status, code=code)
    r = c.put_object(key, os.urandom(2 * 1024 * 1024), replace=True)
    assert r.status == status and error_code(r.body) == code, (r.status, r.body[:300])
    assert rstack.stored(key) == raw_before
    assert c.get_object(key).body == old


def test_backend_answering_before_the_body_gets_to_the_client(rstack, relay):
    """The backend answers 503 as soon as it has the request head and hangs up (a Garage node
    starting or stopping), while the proxy is still sending the body. The client, which sends
    its whole body before it reads (as PBS and http.client do), gets that 503, not a reset: the
    proxy reads the rest of the body before it closes. The old object stays."""
    c = rstack.client()
    key = "relay/early-503"
    old = os.urandom(100_000)
    assert c.put_object(key, old, replace=True).status == 200
    raw_before = rstack.stored(key)
    for size in (4 * 1024 * 1024, 12 * 1024 * 1024):
        relay.arm(method="PUT", path_contains=key, status=503, code="SlowDown", early=True)
        r = c.put_object(key, os.urandom(size), replace=True)
        assert r.status == 503 and error_code(r.body) == "SlowDown", (size, r.status, r.body[:300])
        c = rstack.client()
    assert rstack.stored(key) == raw_before
    assert c.get_object(key).body == old


@pytest.mark.parametrize("status,code", [(500, "InternalError"), (503, "SlowDown")])
def test_backend_error_on_get_is_a_clean_s3_error(rstack, relay, status, code):
    c = rstack.client()
    key = f"relay/get-{status}"
    data = os.urandom(300_000)
    assert c.put_object(key, data, replace=True).status == 200
    raw = rstack.stored(key)
    relay.arm(method="GET", path_contains=key, status=status, code=code)
    r = c.get_object(key)
    assert r.status == status and error_code(r.body) == code
    assert data[:64] not in r.body and raw[200:264] not in r.body
    assert c.get_object(key).body == data  # the next request is served again


def test_slow_backend_within_the_timeout_is_served(rstack, relay):
    c = rstack.client()
    data = os.urandom(1_500_000)
    relay.arm(method="PUT", path_contains="relay/slow", delay=1.5)
    assert c.put_object("relay/slow", data, replace=True).status == 200
    relay.arm(method="GET", path_contains="relay/slow", delay=1.5)
    t0 = time.monotonic()
    assert c.get_object("relay/slow").body == data
    assert time.monotonic() - t0 >= 1.5  # the delay really was on this path


def test_backend_slower_than_the_timeout_gets_503_and_stores_nothing(rstack, relay):
    c = rstack.client()
    data = os.urandom(2 * 1024 * 1024)
    # The relay holds the request longer than the backend timeout (3 s) plus the lingering
    # read of the client's unread body (up to 5 s) before the proxy lets go of the backend
    # connection: under load the two together came close to 8 s.
    relay.arm(method="PUT", path_contains="relay/stalled", delay=12)
    t0 = time.monotonic()
    r = c.put_object("relay/stalled", data, replace=True)
    waited = time.monotonic() - t0
    assert r.status == 503 and error_code(r.body) == "ServiceUnavailable", (r.status, r.body[:300])
    assert 2.5 <= waited < 12, waited
    assert r.header("Retry-After")
    time.sleep(12 - waited + 0.5)  # past the relay's delay: the dropped request must not arrive late
    assert rstack.stored("relay/stalled") is None, relay.seen[-5:]
    r = c.put_object("relay/stalled", data, replace=True)
    assert r.status == 200, (r.status, r.body[:300])
    relay.arm(method="GET", path_contains="relay/stalled", delay=8)
    r = c.get_object("relay/stalled")
    assert r.status == 503 and error_code(r.body) == "ServiceUnavailable", (r.status, r.body[:300])
    assert data[:64] not in r.body


def test_backend_reset_mid_get_cuts_the_client_after_authenticated_bytes(rstack, relay):
    c = rstack.client()
    data = os.urandom(3 * 1024 * 1024)
    assert c.put_object("relay/reset-get", data, replace=True).status == 200
    relay.arm(method="GET", path_contains="relay/reset-get", reset_response_after=1024 * 1024 + 333)
    status, got, complete = raw_get(rstack, "relay/reset-get")
    assert status == 200 and not complete
    assert len(got) < len(data) and data.startswith(got)
    assert c.get_object("relay/reset-get").body == data


def test_backend_reset_mid_put_stores_nothing(rstack, relay):
    key = "relay/reset-put"
    relay.arm(method="PUT", path_contains=key, reset_request_after=1024 * 1024)
    body = os.urandom(4 * 1024 * 1024)
    s = send_put_head(rstack, key, body)
    s.settimeout(20)
    answer = b""
    try:
        s.sendall(body)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the proxy may answer and close before it has read the whole body
    try:
        while True:
            piece = s.recv(65536)
            if not piece:
                break
            answer += piece
    except ConnectionResetError:
        pass
    s.close()
    assert relay.faults[0].fired == 1
    # Either the 503 arrived before the connection closed, or the client saw the connection cut.
    if answer:
        head, _, xml = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ") and error_code(xml) == "ServiceUnavailable", answer[:300]
    assert rstack.stored(key) is None
    with pytest.raises(botocore.exceptions.ClientError):
        rstack.boto().head_object(Bucket=BUCKET, Key=key)


def test_multipart_survives_failed_parts_and_a_failed_complete(rstack, relay):
    """A 503 on one UploadPart is retried by the SDK; a 500 on Complete leaves no object, and
    retrying Complete then yields exactly the uploaded bytes."""
    s3 = rstack.boto(retries={"max_attempts": 4, "mode": "standard"})
    key = "relay/multipart"
    parts = [os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024), os.urandom(1234)]
    up = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    relay.arm(method="PUT", path_contains="partNumber=2", status=503, code="SlowDown")
    done = []
    for n, p in enumerate(parts, 1):
        done.append({"PartNumber": n, "ETag": s3.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=n, Body=p)["ETag"]})
    assert relay.faults[0].fired == 1
    retried = [t for m, t in relay.seen if m == "PUT" and "partNumber=2" in t]
    assert len(retried) == 2
    relay.arm(method="POST", path_contains="uploadId=", status=500, code="InternalError")
    one_shot = rstack.boto(retries={"total_max_attempts": 1})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        one_shot.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up, MultipartUpload={"Parts": done})
    assert e.value.response["Error"]["Code"] == "InternalError"
    assert rstack.stored(key) is None
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up, MultipartUpload={"Parts": done})
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"".join(parts)
