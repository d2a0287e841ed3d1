"""Faults: corrupted ciphertext, clients and backends that go away mid-transfer. The client
gets a clean error or a cut connection, never unauthenticated plaintext, and no partial
object becomes visible."""

import http.client
import os
import signal
import socket
import tempfile
import threading
import time

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
    hdrs = c.sign("PUT", f"/{BUCKET}/{key}", [], {"content-type": "application/octet-stream"}, body)
    s = socket.create_connection(("127.0.0.1", fstack.proxy.port))
    s.sendall(f"PUT /{BUCKET}/{key} HTTP/1.1\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()).encode() + b"\r\n")
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
    hdrs = c.sign("PUT", f"/{BUCKET}/faults/killed-put", [], {"content-type": "application/octet-stream"}, body)
    s = socket.create_connection(("127.0.0.1", fstack.proxy.port))
    s.sendall(f"PUT /{BUCKET}/faults/killed-put HTTP/1.1\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()).encode() + b"\r\n")
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
