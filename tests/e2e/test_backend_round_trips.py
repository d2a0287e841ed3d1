"""The proxy counts what it asks of its backend: requests by kind
(`s3_crypt_proxy_backend_requests_total{kind}`: the client's request relayed, `proxied`, or a
filter's side request) and the connections they needed (`..._backend_connections_total{path}`,
`..._backend_tls_handshakes_total{path}`). The counts must agree with what the backend's side
saw: every request through a relay that records them, every TLS handshake as HAProxy in front
of Garage counts it. Against a remote backend each request is a round trip and each new
connection one or two more: these counters are how an operator sees that cost per operation."""

import os
import tempfile
import types

import pytest

import harness
from conftest import BUCKET, Stack

KINDS = ["proxied", "head", "head_bucket", "get", "range_get", "list", "put", "post", "delete", "other"]
BODY = os.urandom(300_000)  # several chunks


def requests_by_kind(proxy):
    return {k: proxy.metric("s3_crypt_proxy_backend_requests_total", kind=k) for k in KINDS}


def diff(after, before):
    return {k: int(after[k] - before[k]) for k in after if after[k] != before[k]}


def connections(proxy):
    return (proxy.metric("s3_crypt_proxy_backend_connections_total"),
            proxy.metric("s3_crypt_proxy_backend_tls_handshakes_total"))


def object_requests(seen):
    """The relay's record without the readiness probe's HEAD of the bucket."""
    return [(m, t) for m, t in seen if not (m == "HEAD" and t.rstrip("/") == f"/{BUCKET}")]


@pytest.fixture(scope="module")
def relayed(workroot):
    d = tempfile.mkdtemp(prefix="roundtrips-", dir=workroot)
    s = Stack(d, "garage", tls=False, relay=True)  # the garage profile's default: conditional_writes enforce
    s.relay.keepalive = True  # the proxy pools its backend connections, as with a real backend
    yield s
    s.stop()


def one_operation(stack, action):
    """Runs `action`; returns (its answer, backend requests by kind, requests the relay saw)."""
    p = stack.proxy
    before, seen = requests_by_kind(p), len(stack.relay.seen)
    answer = action()
    counted = diff(requests_by_kind(p), before)
    counted.pop("head_bucket", None)  # the readiness probe runs on its own schedule
    return answer, counted, object_requests(stack.relay.seen[seen:])


def test_each_operation_costs_the_backend_requests_counted(relayed):
    c = relayed.client()

    # A plain PUT: the client's request, nothing else.
    r, counted, seen = one_operation(relayed, lambda: c.put_object("rt/plain", BODY, replace=True))
    assert r.status == 200, r
    assert counted == {"proxied": 1}
    assert [m for m, _ in seen] == ["PUT"]

    # PBS's chunk upload, If-None-Match: * on a backend that ignores it (enforce): one HEAD,
    # sent while the body streams (conditional.rs), so both requests are in flight at once.
    r, counted, seen = one_operation(relayed, lambda: c.put_object("rt/chunk", BODY))
    assert r.status == 200, r
    assert counted == {"head": 1, "proxied": 1}
    assert sorted(m for m, _ in seen) == ["HEAD", "PUT"]

    # Another body under the same name: the HEAD finds the chunk, the upload is cut off before
    # its end (412) and the stored chunk is unchanged.
    r, counted, seen = one_operation(relayed, lambda: c.put_object("rt/chunk", BODY[::-1]))
    assert r.status == 412, r
    assert counted == {"head": 1, "proxied": 1}
    assert sorted(m for m, _ in seen) == ["HEAD", "PUT"]
    assert c.get_object("rt/chunk").body == BODY

    # A whole-object GET: one request.
    r, counted, seen = one_operation(relayed, lambda: c.get_object("rt/plain"))
    assert r.status == 200 and r.body == BODY
    assert counted == {"proxied": 1}
    assert [m for m, _ in seen] == ["GET"]

    # A ranged GET: the client's request, and at most one side read (the segment header).
    r, counted, seen = one_operation(relayed, lambda: c.request("GET", "rt/plain", headers={"range": "bytes=100000-100099"}))
    assert r.status == 206 and r.body == BODY[100000:100100]
    assert counted.get("proxied") == 1
    assert set(counted) <= {"proxied", "range_get"} and counted.get("range_get", 0) <= 1, counted
    assert len(seen) == sum(counted.values()) and all(m == "GET" for m, _ in seen)

    # HEAD: the client's request.
    r, counted, seen = one_operation(relayed, lambda: c.request("HEAD", "rt/plain"))
    assert r.status == 200 and r.headers["content-length"] == str(len(BODY))
    assert counted == {"proxied": 1}
    assert [m for m, _ in seen] == ["HEAD"]


def test_tls_handshakes_counted_and_connections_reused(workroot):
    d = tempfile.mkdtemp(prefix="roundtrips-tls-", dir=workroot)
    garage = harness.Garage(d)
    front = keyd = proxy = None
    try:
        front = harness.TlsFront(d, garage.port)
        keyd = harness.Keyd(d)
        keyd.send_key(keyd.new_key(1))
        backend = types.SimpleNamespace(endpoint=front.endpoint, region=garage.region, access_key=garage.access_key,
                                        secret_key=garage.secret_key)
        # The readiness probe once a minute, so that it opens no connection during the test.
        proxy = harness.Proxy(d, backend, keyd, tls=False, backend_options={"ca_file": front.ca_file, "profile": "garage"},
                              allowed_buckets=[BUCKET], memkey={"socket_path": keyd.socket, "poll_interval": "60s"})
        proxy.wait_ready(30)
        s = Stack.__new__(Stack)
        s.proxy = proxy
        c = s.client()
        import boto3
        boto3.client("s3", endpoint_url=garage.endpoint, region_name=garage.region, aws_access_key_id=garage.access_key,
                     aws_secret_access_key=garage.secret_key).create_bucket(Bucket=BUCKET)
        assert c.put_object("tls/warm", BODY).status == 200
        conns0, tls0 = connections(proxy)
        seen0 = front.tls_handshakes()
        requests0 = sum(requests_by_kind(proxy).values())
        for i in range(10):
            assert c.put_object(f"tls/{i}", BODY).status == 200
            assert c.get_object(f"tls/{i}").body == BODY
            assert c.request("GET", f"tls/{i}", headers={"range": "bytes=5-104"}).body == BODY[5:105]
        requests = sum(requests_by_kind(proxy).values()) - requests0
        conns, tls = connections(proxy)
        # Every new connection to an https:// backend is a TLS handshake, and HAProxy saw each one.
        assert tls - tls0 == conns - conns0
        assert tls - tls0 == front.tls_handshakes() - seen0
        # Sequential requests reuse pooled connections: far fewer handshakes than requests.
        assert requests >= 40, requests  # 10 × (HEAD + PUT, GET, ranged GET and its side read if any)
        assert tls - tls0 <= 2, (tls - tls0, requests)
    finally:
        for part in (proxy, keyd, front, garage):
            if part is not None:
                part.stop()
