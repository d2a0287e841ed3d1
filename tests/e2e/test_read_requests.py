"""Backend requests per client read (issue 14, goal 1): a Range GET that starts in the
first MiB of a single-part object costs one backend request (the first segment header comes
with the data, docs/object-format.md 6.3); a HEAD of a single-part object one. Objects the
single request cannot serve (multipart, another chunk size) are planned anew on its answer
and still read back exactly. Every request the proxy makes passes the counting relay
(tests/e2e/chaos.py) in front of Garage."""

import os
import re
import tempfile
import time
import types

import botocore.exceptions
import pytest

import harness
from conftest import BUCKET, Stack
from test_parts import multipart
from test_pbs import blob

C = 65536
MIB = 1 << 20


@pytest.fixture(scope="module")
def counted(workroot):
    d = tempfile.mkdtemp(prefix="read-requests-", dir=workroot)
    s = Stack(d, "garage", tls=False, relay=True)
    yield s
    s.stop()


def backend_requests(stack, key, call):
    """Runs `call` and returns (its result, the requests for `key` the backend saw meanwhile;
    the proxy's own backend health checks are left out)."""
    relay = stack.relay
    before = len(relay.seen)
    result = call()
    return result, [(m, t) for m, t in relay.seen[before:] if t.split("?")[0] == f"/{BUCKET}/{key}"]


def rewriting(name, change):
    """A relay rewrite of an answer's header `name` (bytes, lowercase) by `change`."""
    def rewrite(head, body):
        lines = [change(l) if l.lower().startswith(name + b":") else l for l in head.split(b"\r\n")]
        return b"\r\n".join(lines), body
    return rewrite


def ranged(s3, key, spec):
    r = s3.get_object(Bucket=BUCKET, Key=key, Range=spec)
    return r["ContentRange"], r["Body"].read()


@pytest.mark.parametrize("spec, first, last", [
    ("bytes=0-99", 0, 99),
    ("bytes=0-4194303", 0, 3 * MIB - 1),           # s5cmd / SDK downloaders: one range, whole object
    ("bytes=65530-65545", 65530, 65545),            # across a chunk boundary
    ("bytes=100000-", 100000, 3 * MIB - 1),         # open end
    (f"bytes={3 * C}-{3 * C + 9}", 3 * C, 3 * C + 9),  # up to 256 KiB ahead are fetched with it
    (f"bytes={15 * C}-{3 * MIB - 1}", 15 * C, 3 * MIB - 1),  # further only when the range is at least as long (1 MiB at most)
])
def test_a_range_near_the_start_is_one_backend_request(counted, spec, first, last):
    s3 = counted.boto()
    key = f"reads/single-{os.urandom(3).hex()}"
    data = blob(3 * MIB, key)
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    (content_range, body), seen = backend_requests(counted, key, lambda: ranged(s3, key, spec))
    assert body == data[first:last + 1]
    assert content_range == f"bytes {first}-{last}/{len(data)}"
    assert seen == [("GET", f"/{BUCKET}/{key}")], seen


def test_head_and_whole_get_of_a_single_part_object_are_one_request(counted):
    s3 = counted.boto()
    key = "reads/head"
    data = blob(300_000, key)
    s3.put_object(Bucket=BUCKET, Key=key, Body=data, ContentType="text/x-reads")
    head, seen = backend_requests(counted, key, lambda: s3.head_object(Bucket=BUCKET, Key=key))
    assert head["ContentLength"] == len(data) and head["ContentType"] == "text/x-reads"
    assert seen == [("HEAD", f"/{BUCKET}/{key}")], seen
    body, seen = backend_requests(counted, key, lambda: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert body == data and len(seen) == 1, seen


@pytest.mark.parametrize("spec, first, last", [
    ("bytes=2000000-2000099", 2000000, 2000099),
    (f"bytes={5 * C}-{5 * C + 99}", 5 * C, 5 * C + 99),
])
def test_a_short_range_further_in_costs_a_header_read(counted, spec, first, last):
    """A short range more than 256 KiB in: the header is read apart (108 bytes), then only
    the chunks the range needs (not everything before them)."""
    s3 = counted.boto()
    key = f"reads/deep-{os.urandom(3).hex()}"
    data = blob(3 * MIB, key)
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    (content_range, body), seen = backend_requests(counted, key, lambda: ranged(s3, key, spec))
    assert body == data[first:last + 1] and content_range == f"bytes {first}-{last}/{len(data)}"
    assert len(seen) == 2, seen


def test_a_range_beyond_the_end_in_the_last_chunk_is_416(counted):
    s3 = counted.boto()
    key = "reads/short"
    s3.put_object(Bucket=BUCKET, Key=key, Body=blob(1000, key))
    (_, seen) = backend_requests(counted, key, lambda: pytest.raises(botocore.exceptions.ClientError,
                                                                 s3.get_object, Bucket=BUCKET, Key=key, Range="bytes=1000-2000"))
    err = _.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 416 and err["Error"]["Code"] == "InvalidRange"
    assert err["ResponseMetadata"]["HTTPHeaders"]["content-range"] == "bytes */1000"
    assert len(seen) == 1, seen


def three_parts(s3, key, part=5 * MIB):
    """A fresh 3-part object (2 full parts and 1000 bytes): nothing of it is remembered."""
    data = blob(2 * part + 1000, key)
    multipart(s3, key, [data[off:off + part] for off in range(0, len(data), part)])
    return data


def test_a_multipart_object_is_planned_anew_and_read_exactly(counted):
    """The single request's answer shows a multipart object: the proxy plans the range with
    the header probes and asks again; the client sees one exact answer. (A first read of each
    object: later reads of it are planned from what this one learned, see below.)"""
    s3 = counted.boto()
    part = 5 * MIB
    total = 2 * part + 1000
    # (range, backend requests): the first answer serves a range inside part 1 once the
    # header probes (first part: its length; last part: the total) have planned it, and an
    # open range to the end once the first header has; a range into part 2 is asked again.
    cases = [("bytes=0-99", 0, 99, 3), ("bytes=5000-6000", 5000, 6000, 3), (f"bytes=0-{part - 1}", 0, part - 1, 3),
             ("bytes=100-", 100, total - 1, 2), (f"bytes=0-{part + 9}", 0, part + 9, 4)]
    for i, (spec, first, last, requests) in enumerate(cases):
        key = f"reads/multipart-{i}"
        data = three_parts(s3, key)
        (content_range, body), seen = backend_requests(counted, key, lambda: ranged(s3, key, spec))
        assert body == data[first:last + 1], spec
        assert content_range == f"bytes {first}-{last}/{len(data)}"
        assert len(seen) == requests and all(m == "GET" for m, _ in seen), (spec, seen)


def test_an_object_of_another_chunk_size_is_planned_anew(counted, workroot):
    """Written by a replica configured with another chunk size: the offsets of the single
    request do not fit; the range is planned with the object's own chunk size."""
    other = harness.Proxy(tempfile.mkdtemp(dir=workroot), counted.proxy.backend, counted.keyd,
                          encryption={"chunk_size": 16384},
                          **{k: v for k, v in counted.proxy.config.items() if k in ("allowed_buckets", "conditional_writes")})
    try:
        other.wait_ready()
        key = "reads/chunk-16k"
        data = blob(200_000, key)
        Stack.boto(types.SimpleNamespace(proxy=other)).put_object(Bucket=BUCKET, Key=key, Body=data)
        s3 = counted.boto()
        for spec, first, last in [("bytes=0-99", 0, 99), ("bytes=20000-90000", 20000, 90000), ("bytes=150000-", 150000, len(data) - 1)]:
            content_range, body = ranged(s3, key, spec)
            assert body == data[first:last + 1] and content_range == f"bytes {first}-{last}/{len(data)}", spec
    finally:
        other.stop()


def test_a_damaged_first_header_fails_the_single_request_read(counted):
    """The header read from the start of the answer is authenticated before any byte goes
    on: a flipped bit in it cuts the answer (never a clean short or wrong answer)."""
    s3 = counted.boto()
    key = "reads/damaged"
    data = blob(200_000, key)
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    stored = bytearray(counted.stored(key))
    stored[40] ^= 1   # inside the wrap nonce
    meta = counted.direct.head_object(Bucket=BUCKET, Key=key)["Metadata"]
    counted.direct.put_object(Bucket=BUCKET, Key=key, Body=bytes(stored), Metadata=meta)
    try:
        r = s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=0-99")
        got = r["Body"].read()
    except (botocore.exceptions.ClientError, botocore.exceptions.IncompleteReadError,
            botocore.exceptions.ResponseStreamingError, ConnectionError):
        return
    raise AssertionError(f"a damaged object was served: {len(got)} bytes")


def test_a_range_from_a_part_boundary_fetches_that_parts_header_with_the_data(counted):
    """A range (or `partNumber` read) starting at or just after a part boundary gets that
    part's header from the start of the data request instead of a probe of its own."""
    s3 = counted.boto()
    part = 5 * MIB
    # First header (the part length), last header (the total) unless the range reaches the
    # last part, and the data request carrying the header of the part the range starts in
    # (each a first read of a fresh object).
    for i, (spec, first, last, requests) in enumerate([(f"bytes={part}-{part + 99}", part, part + 99, 3),
                                                       (f"bytes={part + 100_000}-{part + 200_000}", part + 100_000, part + 200_000, 3),
                                                       (f"bytes={2 * part}-", 2 * part, 2 * part + 999, 2)]):
        key = f"reads/part-boundary-{i}"
        data = three_parts(s3, key)
        (content_range, body), seen = backend_requests(counted, key, lambda: ranged(s3, key, spec))
        assert body == data[first:last + 1] and content_range == f"bytes {first}-{last}/{len(data)}", spec
        assert len(seen) == requests, (spec, seen)
    for n, requests in [(2, 3), (3, 2)]:
        key = f"reads/part-boundary-part{n}"
        data = three_parts(s3, key)
        r, seen = backend_requests(counted, key, lambda: s3.get_object(Bucket=BUCKET, Key=key, PartNumber=n))
        assert r["Body"].read() == data[(n - 1) * part:n * part] and r["PartsCount"] == 3
        assert len(seen) == requests, (n, seen)
    # A damaged header of part 2 fails the read that takes it from the data.
    # (Stored again with one PUT: the sealed metadata's segment count is not in the ETag any
    # more, so the segment count check would also fail it; the header check comes first.)
    stored = bytearray(counted.stored(key))
    part2_header = 108 + part + (part // C) * 16
    stored[part2_header + 50] ^= 1
    meta = counted.direct.head_object(Bucket=BUCKET, Key=key)["Metadata"]
    counted.direct.put_object(Bucket=BUCKET, Key=key, Body=bytes(stored), Metadata=meta)
    with pytest.raises((botocore.exceptions.ClientError, botocore.exceptions.IncompleteReadError,
                        botocore.exceptions.ResponseStreamingError, ConnectionError)):
        s3.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={part}-{part + 99}")["Body"].read()


def test_an_object_replaced_while_a_range_is_planned_is_read_anew(counted):
    """The header probes that plan a range on a speculative answer are pinned to its ETag:
    a replaced object (the backend's 412 to a pinned probe) is read anew as a whole, never
    planned with one version's headers and served from another's bytes (nor failed)."""
    s3 = counted.boto(retries={"total_max_attempts": 1, "mode": "standard"})
    key = "reads/replaced"
    part = 5 * MIB
    data = blob(2 * part + 1000, key)
    multipart(s3, key, [data[off:off + part] for off in range(0, len(data), part)])
    # The speculative GET carries no If-Match; the first pinned request meets "replaced".
    fault = counted.relay.arm(method="GET", path_contains=key, header="if-match", status=412, empty_body=True)
    try:
        (content_range, body), seen = backend_requests(counted, key, lambda: ranged(s3, key, "bytes=0-99"))
    finally:
        counted.relay.clear()
    assert fault.fired == 1
    assert body == data[:100] and content_range == f"bytes 0-99/{len(data)}"
    # Speculative answer, the refused first-header probe, then the whole object read anew.
    assert len(seen) == 3, seen


def test_later_reads_of_an_object_are_one_request_each(counted):
    """What the first read's header probes established is remembered (per replica, per
    version): every later Range or `partNumber` read of that version is one request,
    pinned to it with If-Match; a multipart HEAD is one request too (aws-cli's download: a
    HEAD, then ranged GETs of the parts)."""
    s3 = counted.boto()
    plans = {p: counted.proxy.metric("s3_crypt_proxy_read_plans_total", plan=p) for p in ("memory", "header_reads")}
    key = "reads/remembered-single"
    data = blob(3 * MIB, key)
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    for spec, first, last, requests in [("bytes=2000000-2000099", 2000000, 2000099, 2),
                                        ("bytes=1000000-1000009", 1000000, 1000009, 1),
                                        ("bytes=-100", len(data) - 100, len(data) - 1, 1),
                                        ("bytes=0-99", 0, 99, 1)]:
        (content_range, body), seen = backend_requests(counted, key, lambda: ranged(s3, key, spec))
        assert body == data[first:last + 1] and content_range == f"bytes {first}-{last}/{len(data)}", spec
        assert len(seen) == requests and all(m == "GET" for m, _ in seen), (spec, seen)
    # The metrics are counted when a request ends (after the client has its answer).
    deadline = time.time() + 5
    while counted.proxy.metric("s3_crypt_proxy_read_plans_total", plan="memory") < plans["memory"] + 3 and time.time() < deadline:
        time.sleep(0.05)
    assert counted.proxy.metric("s3_crypt_proxy_read_plans_total", plan="memory") == plans["memory"] + 3
    assert counted.proxy.metric("s3_crypt_proxy_read_plans_total", plan="header_reads") == plans["header_reads"] + 1

    # A range near the start (one request, the header with the data) is remembered too: a
    # seek further in afterwards is one request.
    key = "reads/remembered-from-start"
    data = blob(3 * MIB, key)
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    for spec, first, last in [("bytes=0-99", 0, 99), ("bytes=2000000-2000099", 2000000, 2000099), ("bytes=-100", len(data) - 100, len(data) - 1)]:
        (content_range, body), seen = backend_requests(counted, key, lambda: ranged(s3, key, spec))
        assert body == data[first:last + 1] and content_range == f"bytes {first}-{last}/{len(data)}", spec
        assert len(seen) == 1, (spec, seen)

    key = "reads/remembered-multipart"
    part = 5 * MIB
    data = three_parts(s3, key)
    head, seen = backend_requests(counted, key, lambda: s3.head_object(Bucket=BUCKET, Key=key))
    assert head["ContentLength"] == len(data) and len(seen) == 3, seen   # HEAD, first and last header
    head, seen = backend_requests(counted, key, lambda: s3.head_object(Bucket=BUCKET, Key=key))
    assert head["ContentLength"] == len(data) and seen == [("HEAD", f"/{BUCKET}/{key}")], seen
    for first in range(0, len(data), part):
        last = min(first + part, len(data)) - 1
        (content_range, body), seen = backend_requests(counted, key, lambda: ranged(s3, key, f"bytes={first}-{last}"))
        assert body == data[first:last + 1] and content_range == f"bytes {first}-{last}/{len(data)}"
        assert len(seen) == 1, (first, seen)
    r, seen = backend_requests(counted, key, lambda: s3.get_object(Bucket=BUCKET, Key=key, PartNumber=2))
    assert r["Body"].read() == data[part:2 * part] and r["PartsCount"] == 3 and len(seen) == 1, seen
    # Deep inside part 2: its header is read once, then remembered.
    deep = f"bytes={part + 3_000_000}-{part + 3_000_099}"
    for requests in (2, 1):
        (_, body), seen = backend_requests(counted, key, lambda: ranged(s3, key, deep))
        assert body == data[part + 3_000_000:part + 3_000_100] and len(seen) == requests, seen


def test_a_remembered_object_replaced_elsewhere_is_planned_anew(counted):
    """Another replica (here: the stored bytes of another version put back directly) replaced
    the object this replica remembers: the pinned request gets 412, the read is planned from
    fresh probes and serves the new version exactly; an answer for another ETag (a backend
    that ignores If-Match) is never decrypted with the remembered plan either."""
    s3 = counted.boto(retries={"total_max_attempts": 1, "mode": "standard"})
    key = "reads/remembered-replaced"
    old, new = blob(3 * MIB, key + "-old"), blob(3 * MIB + 5000, key + "-new")
    s3.put_object(Bucket=BUCKET, Key=key, Body=new)
    stored_new = counted.stored(key)
    meta_new = counted.direct.head_object(Bucket=BUCKET, Key=key)["Metadata"]
    s3.put_object(Bucket=BUCKET, Key=key, Body=old)
    spec, first, last = "bytes=2000000-2000099", 2000000, 2000099
    (_, body), seen = backend_requests(counted, key, lambda: ranged(s3, key, spec))
    assert body == old[first:last + 1] and len(seen) == 2
    counted.direct.put_object(Bucket=BUCKET, Key=key, Body=stored_new, Metadata=meta_new)
    (content_range, body), seen = backend_requests(counted, key, lambda: ranged(s3, key, spec))
    assert body == new[first:last + 1] and content_range == f"bytes {first}-{last}/{len(new)}"
    assert len(seen) == 3, seen    # 412 to the pinned request, the first header, the data
    (_, body), seen = backend_requests(counted, key, lambda: ranged(s3, key, spec))
    assert body == new[first:last + 1] and len(seen) == 1, seen

    # Answers that are not that version although the backend took If-Match: another ETag, or
    # the same ETag with another stored length. Each is dropped unread: the answer, the first
    # header, the data.
    other_etag = rewriting(b"etag", lambda l: b'ETag: "0123456789abcdef0123456789abcdef"')
    other_length = rewriting(b"content-range", lambda l: re.sub(rb"/(\d+)$", lambda m: b"/%d" % (int(m.group(1)) + 16), l))
    for rewrite in (other_etag, other_length):
        fault = counted.relay.arm(method="GET", path_contains=key, header="if-match", rewrite_response=rewrite)
        try:
            (content_range, body), seen = backend_requests(counted, key, lambda: ranged(s3, key, spec))
        finally:
            counted.relay.clear()
        assert fault.fired == 1
        assert body == new[first:last + 1] and content_range == f"bytes {first}-{last}/{len(new)}"
        assert len(seen) == 3, seen


@pytest.mark.parametrize("ask", ["range", "part"])
def test_a_first_read_whose_data_answer_is_another_version_is_refused(counted, ask):
    """A read planned from its own header reads (nothing remembered) sends its data request
    with If-Match; a backend that ignores it while the object is replaced (here: the answer
    rewritten to another ETag, or another stored length) gives bytes of another version than
    the headers the plan and the announced total came from. The proxy answers 503 (retry)
    instead of a mix of two versions, and the retry reads the object exactly."""
    s3 = counted.boto(retries={"total_max_attempts": 1, "mode": "standard"})
    other_etag = rewriting(b"etag", lambda l: b'ETag: "0123456789abcdef0123456789abcdef-3"')
    other_length = rewriting(b"content-range", lambda l: re.sub(rb"/(\d+)$", lambda m: b"/%d" % (int(m.group(1)) + 16), l))
    for n, rewrite in enumerate((other_etag, other_length)):
        key = f"reads/first-read-other-version-{ask}-{n}"
        parts = [blob(5 * MIB, key + "1"), blob(5 * MIB, key + "2"), blob(1000, key + "3")]
        multipart(s3, key, parts)
        size = sum(map(len, parts))
        if ask == "range":
            def read():
                return ranged(s3, key, "bytes=6000000-6000099")
        else:
            def read():
                r = s3.get_object(Bucket=BUCKET, Key=key, PartNumber=2)
                return r["ContentRange"], r["Body"].read()
        # The data request is the last of the read's requests pinned with If-Match: a range
        # deep in part 2 first reads (pinned) the last header and part 2's header; a part
        # read, the last header (part 2's comes with the data).
        fault = counted.relay.arm(method="GET", path_contains=key, header="if-match", rewrite_response=rewrite,
                                  skip=2 if ask == "range" else 1)
        try:
            with pytest.raises(botocore.exceptions.ClientError) as e:
                read()
        finally:
            counted.relay.clear()
        assert fault.fired == 1
        assert e.value.response["Error"]["Code"] == "ServiceUnavailable", e.value.response
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        content_range, body = read()
        assert content_range.endswith(f"/{size}")
        whole = b"".join(parts)
        assert body == (whole[6000000:6000100] if ask == "range" else parts[1])
