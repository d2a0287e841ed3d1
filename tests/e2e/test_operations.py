"""Operating the proxy: zero-downtime upgrade under load, several stateless replicas,
keyd restarts."""

import http.client
import json
import os
import signal
import socket
import tempfile
import threading
import time
import urllib.parse

import boto3
import botocore.config
import pytest

import harness
from conftest import BUCKET, Stack


def boto_for(proxy):
    return boto3.client("s3", endpoint_url=proxy.endpoint, region_name="us-east-1", verify=False,
                        aws_access_key_id=proxy.access_key, aws_secret_access_key=proxy.secret_key,
                        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


@pytest.fixture(scope="module")
def ops_stack(workroot):
    d = tempfile.mkdtemp(prefix="ops-", dir=workroot)
    s = Stack(d, "moto", tls=False)
    yield s
    s.stop()


def test_graceful_upgrade_under_load(ops_stack):
    proxy = ops_stack.proxy
    s3 = boto_for(proxy)
    stop = threading.Event()
    stats = {"ok": 0, "failed": 0, "corrupt": 0, "errors": []}

    def loop(worker):
        i = 0
        while not stop.is_set():
            key = f"upgrade/{worker}/{i % 20}"
            body = os.urandom(1000 + (i * 7919) % 200_000)
            try:
                s3.put_object(Bucket=BUCKET, Key=key, Body=body)
                got = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                if got != body:
                    stats["corrupt"] += 1
                stats["ok"] += 1
            except Exception as e:  # counted, not raised: the test reports them all
                stats["failed"] += 1
                stats["errors"].append(repr(e)[:300])
            i += 1

    workers = [threading.Thread(target=loop, args=(w,)) for w in range(3)]
    for w in workers:
        w.start()
    time.sleep(2)
    old = proxy.proc
    before = stats["ok"]
    # The new process takes the listening sockets from the old one, which then drains.
    proxy.start(upgrade=True)
    time.sleep(0.5)
    os.kill(old.pid, signal.SIGQUIT)
    old.p.wait(timeout=30)
    time.sleep(2)
    stop.set()
    for w in workers:
        w.join()
    assert stats["failed"] == 0, stats["errors"][:5]
    assert stats["corrupt"] == 0
    assert stats["ok"] > before + 10, stats
    assert proxy.proc.poll() is None, "the new process serves"
    status, _ = proxy.admin_get("/healthz")
    assert status == 200


def raw_get(url_or_path, port):
    """A GET request as bytes, for a socket kept open across answers (the path of a presigned
    URL, or a bare path)."""
    u = urllib.parse.urlsplit(url_or_path)
    target = u.path + ("?" + u.query if u.query else "")
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


def exchange(sock, request):
    """Sends `request` on `sock` and reads one whole answer: (status, lower-cased headers,
    body, whether the server closed the connection right after the answer)."""
    sock.sendall(request)
    r = http.client.HTTPResponse(sock, method="GET")
    r.begin()
    body = r.read()
    headers = {k.lower(): v for k, v in r.getheaders()}
    # A server that ends the connection does so right after the answer; one that keeps it
    # sends nothing more. (Pingora's own close of idle connections comes 5 s after SIGQUIT.)
    sock.settimeout(1.5)
    try:
        closed = sock.recv(1) == b""
    except socket.timeout:
        closed = False
    sock.settimeout(10)
    return r.status, headers, body, closed


def log_count(proc, text):
    with open(proc.log_path, errors="replace") as f:
        return f.read().count(text)


def wait_log(proc, text, count, timeout=10):
    deadline = time.time() + timeout
    while log_count(proc, text) < count:
        assert time.time() < deadline, f"{text!r} not logged\n{harness.tail(proc.log_path)}"
        time.sleep(0.05)


def test_an_upgrade_ends_each_kept_connection_after_an_answer(ops_stack):
    """proxy/src/drain.rs: pingora closes the idle keep-alive connections when the old process
    stops, and a request sent on one at that moment meets a closed connection (HAProxy can
    resend only a body that fits its 16 KiB buffer). From SIGQUIT on, the old process answers
    every request with `Connection: close` and then closes, so each kept connection ends
    after a whole answer, proxied or the proxy's own."""
    proxy = ops_stack.proxy
    s3 = boto_for(proxy)
    s3.put_object(Bucket=BUCKET, Key="drain/upgrade", Body=b"kept until the answer")
    requests = [(raw_get(proxy.presigned_url("get_object", BUCKET, "drain/upgrade"), proxy.port), 200), (raw_get(f"/{BUCKET}/drain/upgrade", proxy.port), 403)]
    kept = [socket.create_connection(("127.0.0.1", proxy.port), timeout=10) for _ in requests]
    try:
        for sock, (req, status) in zip(kept, requests):
            got = exchange(sock, req)
            assert got[0] == status and got[1]["connection"] == "keep-alive" and not got[3], got[:2]
        said = log_count(proxy.proc, "SIGQUIT: handing")
        old = proxy.upgrade(wait_old=False)
        wait_log(old, "SIGQUIT: handing", said + 1)
        for sock, (req, status) in zip(kept, requests):
            got = exchange(sock, req)
            assert got[0] == status and got[1]["connection"] == "close", got[:2]
            assert got[3], "the old process closes the connection after its answer"
        old.p.wait(30)
        old.log.close()
        assert old.p.returncode == 0
        # The new process keeps its connections as before.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            got = exchange(sock, requests[0][0])
            assert got[0] == 200 and got[1]["connection"] == "keep-alive" and got[2] == b"kept until the answer"
    finally:
        for sock in kept:
            sock.close()


def test_a_stop_drains_before_it_stops_accepting(ops_stack):
    """SIGTERM: for server.drain_seconds the proxy still accepts and answers, each answer
    closing its connection, while /readyz says 503 `draining` so load balancers take it out;
    then the graceful stop (exit 0)."""
    first = ops_stack.proxy
    p = harness.Proxy(ops_stack.workdir, ops_stack.backend, ops_stack.keyd, tls=False, name="proxy-drain",
                      allowed_buckets=[BUCKET], client={"access_key": first.access_key, "secret_key": first.secret_key},
                      server_options={"drain_seconds": 6})
    try:
        p.wait_ready()
        s3 = boto_for(p)
        s3.put_object(Bucket=BUCKET, Key="drain/stop", Body=b"answered while draining")
        req = raw_get(p.presigned_url("get_object", BUCKET, "drain/stop"), p.port)
        kept = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        got = exchange(kept, req)
        assert got[0] == 200 and got[1]["connection"] == "keep-alive" and not got[3]
        status, body = p.admin_get("/readyz")
        assert status == 200 and json.loads(body)["draining"] is False, body

        stopped_at = time.time()
        p.proc.p.send_signal(signal.SIGTERM)
        wait_log(p.proc, "SIGTERM: draining", 1)
        status, body = p.admin_get("/readyz")
        assert status == 503 and json.loads(body)["draining"] is True, body
        got = exchange(kept, req)
        assert got[0] == 200 and got[1]["connection"] == "close" and got[3], got[:2]
        kept.close()
        # A new connection is still accepted and answered during the drain.
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock:
            got = exchange(sock, req)
            assert got[0] == 200 and got[2] == b"answered while draining" and got[1]["connection"] == "close", got[:2]
        assert p.proc.poll() is None, "still serving within drain_seconds"
        p.proc.p.wait(20)
        assert p.proc.p.returncode == 0, harness.tail(p.proc.log_path)
        assert time.time() - stopped_at >= 6
    finally:
        p.stop()


def test_two_replicas_alternating_including_multipart_parts(ops_stack):
    first = ops_stack.proxy
    second = harness.Proxy(ops_stack.workdir, ops_stack.backend, ops_stack.keyd, tls=False, name="proxy-b",
                           allowed_buckets=[BUCKET], client={"access_key": first.access_key, "secret_key": first.secret_key})
    try:
        second.wait_ready()
        clients = [boto_for(ops_stack.proxy), boto_for(second)]
        mib = 1024 * 1024
        parts = [os.urandom(5 * mib), os.urandom(5 * mib), os.urandom(777)]
        up = clients[0].create_multipart_upload(Bucket=BUCKET, Key="replicas/mp")
        etags = []
        for n, body in enumerate(parts, start=1):
            etags.append(clients[n % 2].upload_part(Bucket=BUCKET, Key="replicas/mp", UploadId=up["UploadId"], PartNumber=n, Body=body)["ETag"])
        clients[1].complete_multipart_upload(Bucket=BUCKET, Key="replicas/mp", UploadId=up["UploadId"],
                                             MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})
        for c in clients:
            assert c.get_object(Bucket=BUCKET, Key="replicas/mp")["Body"].read() == b"".join(parts)
        for i in range(10):
            body = os.urandom(i * 10_000)
            clients[i % 2].put_object(Bucket=BUCKET, Key=f"replicas/{i}", Body=body)
            assert clients[(i + 1) % 2].get_object(Bucket=BUCKET, Key=f"replicas/{i}")["Body"].read() == body
            h0 = clients[0].head_object(Bucket=BUCKET, Key=f"replicas/{i}")
            h1 = clients[1].head_object(Bucket=BUCKET, Key=f"replicas/{i}")
            assert h0["ETag"] == h1["ETag"] and h0["ContentLength"] == h1["ContentLength"] == len(body)
    finally:
        second.stop()


def test_keyd_restart_keeps_the_loaded_key_and_new_proxies_wait_for_it(ops_stack):
    s3 = boto_for(ops_stack.proxy)
    s3.put_object(Bucket=BUCKET, Key="keyd/before", Body=b"before restart")
    ops_stack.keyd.stop()
    ops_stack.keyd.start()  # memory only: the restarted keyd holds no key
    time.sleep(0.5)
    assert s3.get_object(Bucket=BUCKET, Key="keyd/before")["Body"].read() == b"before restart"
    s3.put_object(Bucket=BUCKET, Key="keyd/after", Body=b"after restart")
    fresh = harness.Proxy(ops_stack.workdir, ops_stack.backend, ops_stack.keyd, tls=False, name="proxy-fresh")
    try:
        c = boto_for(fresh)
        with pytest.raises(c.exceptions.ClientError) as e:
            c.list_objects_v2(Bucket=BUCKET)
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert ops_stack.keyd.send_key(ops_stack.key_file).returncode == 0
        fresh.wait_ready()
    finally:
        fresh.stop()
