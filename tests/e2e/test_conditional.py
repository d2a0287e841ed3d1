"""Conditional writes enforced by the proxy (`conditional_writes: enforce`), issue 13 item 4.

Garage ignores If-None-Match and If-Match on writes; moto honours them but is given the
same proxy setting here, so both backends prove the proxy's own enforcement. Writers race
for real: each round starts 20 writers of one new key behind a barrier, each with its own
connection and its own body, and exactly one may win. Then the same through two proxy
replicas behind HAProxy running the shipped deploy/haproxy/haproxy.cfg."""

import json
import os
import tempfile
import threading
import time

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError

import harness
from conftest import BUCKET, Stack

WRITERS = 20
ROUNDS = 5


@pytest.fixture(scope="module", params=["moto", "garage"])
def enforce_stack(request, workroot):
    d = tempfile.mkdtemp(prefix=f"cond-{request.param}-", dir=workroot)
    s = Stack(d, request.param, conditional_writes="enforce")
    yield s
    s.stop()


def client(endpoint, proxy):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", verify=False,
                        aws_access_key_id=proxy.access_key, aws_secret_access_key=proxy.secret_key,
                        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                                      max_pool_connections=4))


def outcome(call):
    """200, or the S3 error code and status of a failed call."""
    try:
        call()
        return 200
    except ClientError as e:
        return (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])


def race(clients, attempt):
    """Runs attempt(client, i) for every client at once; their outcomes, by writer."""
    barrier = threading.Barrier(len(clients))
    results = [None] * len(clients)

    def run(i):
        barrier.wait()
        results[i] = outcome(lambda: attempt(clients[i], i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def body_of(writer, rnd):
    # Distinct per writer, large enough that the writes overlap (several chunks each).
    return (f"writer {writer} round {rnd} ".encode() * 20000)[: 300_000 + writer]


def assert_one_winner(results, what):
    winners = [i for i, r in enumerate(results) if r == 200]
    others = [r for r in results if r != 200]
    assert len(winners) == 1, f"{what}: {len(winners)} writers got 200: {results}"
    assert all(r == ("PreconditionFailed", 412) for r in others), f"{what}: {results}"
    return winners[0]


def if_none_match_rounds(endpoint, proxy, reader, prefix):
    """ROUNDS rounds of WRITERS concurrent If-None-Match: * PUTs of one new key; returns the keys."""
    clients = [client(endpoint, proxy) for _ in range(WRITERS)]
    keys = []
    for rnd in range(ROUNDS):
        key = f"{prefix}/new-{rnd}"
        results = race(clients, lambda s3, i: s3.put_object(Bucket=BUCKET, Key=key, Body=body_of(i, rnd), IfNoneMatch="*"))
        winner = assert_one_winner(results, f"round {rnd}")
        # The stored object is the winner's, whole.
        assert reader.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body_of(winner, rnd), f"round {rnd}"
        keys.append(key)
    return keys


def test_concurrent_if_none_match_one_proxy(enforce_stack):
    s = enforce_stack
    if_none_match_rounds(s.proxy.endpoint, s.proxy, s.boto(), "inm")


def test_if_match_stale_and_current(enforce_stack):
    s3 = enforce_stack.boto()
    key = "im/obj"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"version 1")
    stale = s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
    current = s3.put_object(Bucket=BUCKET, Key=key, Body=b"version 2")["ETag"]
    assert current != stale
    assert outcome(lambda: s3.put_object(Bucket=BUCKET, Key=key, Body=b"version 3", IfMatch=stale)) == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"version 2"
    new = s3.put_object(Bucket=BUCKET, Key=key, Body=b"version 3", IfMatch=current)["ETag"]
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"version 3"
    # The ETag it replaced no longer matches; `*` matches any existing object.
    assert outcome(lambda: s3.put_object(Bucket=BUCKET, Key=key, Body=b"version 4", IfMatch=current)) == ("PreconditionFailed", 412)
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"version 4", IfMatch="*")
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"version 4"
    assert new != current
    # If-Match on a missing object: 404 NoSuchKey, as S3 answers; nothing is created.
    assert outcome(lambda: s3.put_object(Bucket=BUCKET, Key="im/missing", Body=b"x", IfMatch=current)) == ("NoSuchKey", 404)
    assert enforce_stack.stored("im/missing") is None


def test_if_none_match_with_etags_on_a_write_is_not_implemented(enforce_stack):
    """S3 takes only `*` in a write's If-None-Match; an ETag (list) is 501, never an
    unconditional overwrite (Garage ignores the header)."""
    s3 = enforce_stack.boto()
    key = "inm/etags"
    etag = s3.put_object(Bucket=BUCKET, Key=key, Body=b"kept")["ETag"]
    for value in (etag, '"abc"', '*, "x"'):
        assert outcome(lambda: s3.put_object(Bucket=BUCKET, Key=key, Body=b"overwritten", IfNoneMatch=value)) == ("NotImplemented", 501)
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"kept"


def test_a_write_held_up_by_a_trickled_one_is_answered_after_30_s(enforce_stack):
    """Under `enforce` a write waits for the other write of its object to end; a writer
    trickling its body (a valid presigned PUT is enough) must not hold every other writer
    for as long as it keeps sending: after 30 s the waiting one gets a retryable 503."""
    import socket
    import ssl
    import urllib.parse
    p = enforce_stack.proxy
    key = "lock/trickled"
    url = urllib.parse.urlsplit(p.presigned_url("put_object", BUCKET, key))
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    slow = tls.wrap_socket(socket.create_connection(("127.0.0.1", p.port), timeout=60), server_hostname="127.0.0.1")
    slow.sendall(f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: 127.0.0.1:{p.port}\r\nContent-Length: 1000\r\n\r\n".encode() + b"z" * 10)
    s3 = boto3.client("s3", endpoint_url=p.endpoint, region_name="us-east-1", verify=False,
                      aws_access_key_id=p.access_key, aws_secret_access_key=p.secret_key,
                      config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))
    result, done = {}, threading.Event()

    def second():
        start = time.time()
        result["outcome"] = outcome(lambda: s3.put_object(Bucket=BUCKET, Key=key, Body=b"second"))
        result["after"] = time.time() - start
        done.set()
    threading.Thread(target=second, daemon=True).start()
    started = time.time()
    try:
        while not done.wait(2) and time.time() - started < 45:  # a byte every 2 s: never idle long
            slow.sendall(b"z")
    finally:
        slow.close()
    assert result["outcome"] == ("ServiceUnavailable", 503), result
    assert 29 <= result["after"] < 40, result
    # The lock is free once the trickler is gone: the write goes through.
    deadline = time.time() + 90
    while True:
        try:
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"third")
            break
        except ClientError:
            assert time.time() < deadline
            time.sleep(1)
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"third"


def test_if_match_with_the_md5_etag(enforce_stack):
    """A client that sent Content-MD5 (PBS, rclone, s3cmd) was shown the plaintext MD5 as ETag."""
    import base64
    import hashlib
    s3 = enforce_stack.boto()
    key = "im/md5"
    v1 = b"md5 version 1"
    etag = s3.put_object(Bucket=BUCKET, Key=key, Body=v1, ContentMD5=base64.b64encode(hashlib.md5(v1).digest()).decode())["ETag"]
    assert etag == f'"{hashlib.md5(v1).hexdigest()}"'
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"md5 version 2", IfMatch=etag)
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"md5 version 2"


def test_concurrent_if_match_one_winner(enforce_stack):
    """20 writers replacing the version they all read: exactly one replaces it."""
    s = enforce_stack
    reader = s.boto()
    clients = [client(s.proxy.endpoint, s.proxy) for _ in range(WRITERS)]
    for rnd in range(2):
        key = f"im/race-{rnd}"
        reader.put_object(Bucket=BUCKET, Key=key, Body=b"base")
        etag = reader.head_object(Bucket=BUCKET, Key=key)["ETag"]
        results = race(clients, lambda s3, i: s3.put_object(Bucket=BUCKET, Key=key, Body=body_of(i, rnd), IfMatch=etag))
        winner = assert_one_winner(results, f"If-Match round {rnd}")
        assert reader.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body_of(winner, rnd)


def test_complete_multipart_if_none_match(enforce_stack):
    """CompleteMultipartUpload with If-None-Match: * creates only if absent, also racing."""
    s = enforce_stack
    s3 = s.boto()
    clients = [client(s.proxy.endpoint, s.proxy) for _ in range(5)]
    key = "mpu/new"
    uploads = []
    for i, c in enumerate(clients):
        up = c.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        etag = c.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=1, Body=body_of(i, 0))["ETag"]
        uploads.append((up, etag))

    def complete(c, i):
        up, etag = uploads[i]
        c.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up, IfNoneMatch="*",
                                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})

    winner = assert_one_winner(race(clients, complete), "CompleteMultipartUpload")
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body_of(winner, 0)
    # The losers' uploads are still open on moto (Garage drops them when another upload of
    # the key completes): complete one of them the same way, refused the same way.
    loser = next(i for i in range(len(uploads)) if i != winner)
    if outcome(lambda: s3.list_parts(Bucket=BUCKET, Key=key, UploadId=uploads[loser][0])) == 200:
        assert outcome(lambda: complete(s3, loser)) == ("PreconditionFailed", 412)
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body_of(winner, 0)
    for i, (up, _) in enumerate(uploads):
        if i != winner:
            outcome(lambda: s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up))


def test_copy_object_if_none_match(enforce_stack):
    s3 = enforce_stack.boto()
    s3.put_object(Bucket=BUCKET, Key="cp/src", Body=b"source")
    s3.put_object(Bucket=BUCKET, Key="cp/dst-taken", Body=b"already here")
    src = {"Bucket": BUCKET, "Key": "cp/src"}
    assert outcome(lambda: s3.copy_object(Bucket=BUCKET, Key="cp/dst-taken", CopySource=src, IfNoneMatch="*")) == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=BUCKET, Key="cp/dst-taken")["Body"].read() == b"already here"
    s3.copy_object(Bucket=BUCKET, Key="cp/dst-new", CopySource=src, IfNoneMatch="*")
    assert s3.get_object(Bucket=BUCKET, Key="cp/dst-new")["Body"].read() == b"source"


# ---------------------------------------------------------------- two replicas behind HAProxy

@pytest.fixture(scope="module", params=["moto", "garage"])
def replicas(request, workroot):
    """Two proxies on one backend (one keyd, the same client credentials), behind HAProxy."""
    d = tempfile.mkdtemp(prefix=f"lb-{request.param}-", dir=workroot)
    s = Stack(d, request.param, conditional_writes="enforce")
    other = harness.Proxy(d, s.proxy.backend, s.keyd, name="proxy-b", conditional_writes="enforce",
                          allowed_buckets=[BUCKET], client=dict(s.proxy.config["client"]))
    lb = None
    try:
        other.wait_ready()
        lb = harness.HAProxy(d, [s.proxy, other])
        lb.wait_up()
        yield s, other, lb
    finally:
        for part in (lb, other):
            if part is not None:
                part.stop()
        s.stop()


def audit_keys(proxy, prefix):
    """{key: count} of PutObject lines with keys under prefix in a proxy's audit log."""
    time.sleep(0.5)  # each line is written just after its answer
    counts = {}
    with open(proxy.config["audit_log"]) as f:
        for line in f:
            a = json.loads(line)
            if a.get("operation") == "PutObject" and (a.get("key") or "").startswith(prefix):
                counts[a["key"]] = counts.get(a["key"], 0) + 1
    return counts


def test_concurrent_if_none_match_two_replicas_behind_haproxy(replicas):
    s, other, lb = replicas
    reader = client(lb.endpoint, s.proxy)
    keys = if_none_match_rounds(lb.endpoint, s.proxy, reader, "lb")
    # Every writer of one key reached the same replica (key affinity)...
    a, b = audit_keys(s.proxy, "lb/"), audit_keys(other, "lb/")
    for k in keys:
        assert (a.get(k, 0), b.get(k, 0)) in ((WRITERS, 0), (0, WRITERS)), f"{k}: proxy-a {a.get(k)}, proxy-b {b.get(k)}"
    # ...and the keys are spread over both replicas (so both took part).
    spread = [f"lb/spread-{i}" for i in range(16)]
    for k in spread:
        reader.put_object(Bucket=BUCKET, Key=k, Body=b"x", IfNoneMatch="*")
    a, b = audit_keys(s.proxy, "lb/spread-"), audit_keys(other, "lb/spread-")
    assert a and b, f"all keys went to one replica: {a} {b}"


def test_draining_a_replica_keeps_one_winner(replicas):
    """A drained replica leaves the hash: its keys go to the other one, still exact."""
    s, other, lb = replicas
    reader = client(lb.endpoint, s.proxy)
    try:
        lb.set_state("proxy-a", "drain")
        before = audit_keys(s.proxy, "drain/")
        keys = if_none_match_rounds(lb.endpoint, s.proxy, reader, "drain")
        assert audit_keys(s.proxy, "drain/") == before, "a drained replica still got writes"
        assert sum(audit_keys(other, "drain/").get(k, 0) for k in keys) == WRITERS * len(keys)
    finally:
        lb.set_state("proxy-a", "ready")
