"""A restore is never silently wrong: objects damaged on the backend (cut at a chunk
boundary, combined with another version's metadata, reduced to a remnant) fail on every
read path — HEAD, GET, Range, partNumber, CopyObject, UploadPartCopy, aws-cli and boto3
downloads — instead of answering success with fewer or other bytes.

Every tamper case rewrites the raw backend object directly, as an attacker (or a damaged
disk) with access to the backend would."""

import hashlib
import http.client
import os
import tempfile
import types

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.exceptions
import pytest

import harness
from conftest import BUCKET, Stack
from test_parts import aws, multipart, signed_chunked
from test_pbs import blob

C = 65536
CT = C + 16
MIB = 1 << 20


def fresh(prefix):
    return f"integrity/{prefix}-{os.urandom(4).hex()}"


def rewrite_raw(stack, key, body):
    """Replaces the stored object's body, keeping its (sealed) metadata."""
    meta = stack.direct.head_object(Bucket=BUCKET, Key=key)["Metadata"]
    stack.direct.put_object(Bucket=BUCKET, Key=key, Body=body, Metadata=meta)


def error_status(call):
    """The HTTP status of a boto3 call that must fail."""
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    return e.value.response["ResponseMetadata"]["HTTPStatusCode"]


def get_fails(s3, key, **kw):
    """A GET either answers an error status or breaks off before all announced bytes."""
    try:
        r = s3.get_object(Bucket=BUCKET, Key=key, **kw)
    except botocore.exceptions.ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]
    announced = r["ContentLength"]
    try:
        got = r["Body"].read()
    except (botocore.exceptions.IncompleteReadError, botocore.exceptions.ResponseStreamingError,
            http.client.IncompleteRead, ConnectionError) as e:
        return f"cut: {e.__class__.__name__}"
    raise AssertionError(f"a damaged object was served: {len(got)} of {announced} bytes, status {r['ResponseMetadata']['HTTPStatusCode']}")


def assert_every_read_fails(stack, s3, key, size):
    assert error_status(lambda: s3.head_object(Bucket=BUCKET, Key=key)) == 500
    get_fails(s3, key)
    get_fails(s3, key, Range="bytes=-100")
    get_fails(s3, key, Range="bytes=0-99")
    get_fails(s3, key, Range=f"bytes={size // 2}-{size // 2 + 10}")
    get_fails(s3, key, PartNumber=1)
    assert error_status(lambda: s3.head_object(Bucket=BUCKET, Key=key, PartNumber=1)) == 500
    # A copy of a damaged object is refused and stores nothing.
    dst = key + "-copy"
    assert error_status(lambda: s3.copy_object(Bucket=BUCKET, Key=dst, CopySource={"Bucket": BUCKET, "Key": key})) == 500
    assert stack.stored(dst) is None
    # So is a ranged UploadPartCopy: the upload gets no part.
    up = s3.create_multipart_upload(Bucket=BUCKET, Key=dst)["UploadId"]
    status = error_status(lambda: s3.upload_part_copy(Bucket=BUCKET, Key=dst, UploadId=up, PartNumber=1,
                                                      CopySource={"Bucket": BUCKET, "Key": key},
                                                      CopySourceRange=f"bytes=0-{min(size, 5 * MIB) - 1}"))
    assert status == 500
    assert s3.list_parts(Bucket=BUCKET, Key=dst, UploadId=up).get("Parts", []) == []
    s3.abort_multipart_upload(Bucket=BUCKET, Key=dst, UploadId=up)


@pytest.mark.parametrize("chunks_dropped", [1, 3])
def test_single_part_cut_at_a_chunk_boundary_fails_every_read(stack, chunks_dropped):
    """The issue's first finding: HEAD, Range -100, partNumber=1 and copies used to answer
    success with the shorter length. The length is now sealed and checked."""
    s3 = stack.boto()
    size = 10 * C + 1000
    data = blob(size, "cut")
    key = fresh("cut")
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    raw = stack.stored(key)
    last_chunk = 1000 + 16
    rewrite_raw(stack, key, raw[:len(raw) - last_chunk - (chunks_dropped - 1) * CT])
    assert_every_read_fails(stack, s3, key, size)


def test_objects_without_a_sealed_length_are_checked_by_their_header(stack):
    """Objects whose metadata holds no length (written before it was sealed, or sent
    chunked without a length) are checked against their authenticated segment header."""
    s3 = stack.boto()
    size = 6 * C + 7
    data = blob(size, "legacy")
    key = fresh("legacy")
    status, body = signed_chunked(stack, "PUT", f"/{BUCKET}/{key}", data, pieces=5)
    assert status == 200, body
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == size
    assert s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=-100")["Body"].read() == data[-100:]
    raw = stack.stored(key)
    rewrite_raw(stack, key, raw[:len(raw) - (7 + 16) - CT])
    assert_every_read_fails(stack, s3, key, size)


def test_a_remnant_is_not_an_empty_object(stack):
    """Cut to 124 bytes (one header and one tag), the arithmetic says 0 bytes: the empty
    answer would be complete before any byte is checked, so it is checked first."""
    s3 = stack.boto()
    for key, write in ((fresh("remnant"), lambda k, d: s3.put_object(Bucket=BUCKET, Key=k, Body=d)),
                       (fresh("remnant-legacy"), lambda k, d: signed_chunked(stack, "PUT", f"/{BUCKET}/{k}", d))):
        write(key, blob(3 * C, "remnant"))
        raw = stack.stored(key)
        rewrite_raw(stack, key, raw[:108] + raw[-16:])
        assert error_status(lambda: s3.head_object(Bucket=BUCKET, Key=key)) == 500
        assert get_fails(s3, key) == 500


def rebuild_from_own_parts(stack, key, spans, stash=None):
    """The attacker's rebuild of a stored object as a new multipart upload (UploadPartCopy of
    its own stored byte ranges `spans`, the metadata kept): the backend's ETag then honestly
    counts len(spans) parts. `stash`: a raw copy of the object as it was, kept by the caller."""
    meta = stack.direct.head_object(Bucket=BUCKET, Key=key)["Metadata"]
    keep = stash is not None
    if not keep:
        stash = key + "-stash"
        stack.direct.copy_object(Bucket=BUCKET, Key=stash, CopySource={"Bucket": BUCKET, "Key": key})
    rebuilt = stack.direct.create_multipart_upload(Bucket=BUCKET, Key=key, Metadata=meta)["UploadId"]
    done = []
    for i, (a, b) in enumerate(spans, 1):
        r = stack.direct.upload_part_copy(Bucket=BUCKET, Key=key, UploadId=rebuilt, PartNumber=i,
                                          CopySource={"Bucket": BUCKET, "Key": stash}, CopySourceRange=f"bytes={a}-{b}")
        done.append({"PartNumber": i, "ETag": r["CopyPartResult"]["ETag"]})
    stack.direct.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=rebuilt, MultipartUpload={"Parts": done})
    if not keep:
        stack.direct.delete_object(Bucket=BUCKET, Key=stash)
    assert stack.direct.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"').endswith(f"-{len(spans)}")


def test_multipart_last_part_cut_fails_every_read(stack):
    """A multipart object rebuilt on the backend (UploadPartCopy of its own stored parts,
    the last one cut at a chunk boundary) keeps an honest `-3` ETag: HEAD, ranges in the
    first part (which announce the total) and partNumber reads check the last header."""
    s3 = stack.boto()
    parts = [blob(5 * MIB, "mp1"), blob(5 * MIB, "mp2"), blob(3 * C + 500, "mp3")]
    key = fresh("mp")
    multipart(s3, key, parts)
    size = sum(map(len, parts))
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == size
    raw = stack.stored(key)
    full = 108 + 5 * MIB + (5 * MIB // C) * 16
    rebuild_from_own_parts(stack, key, [(0, full - 1), (full, 2 * full - 1), (2 * full, len(raw) - 1 - (500 + 16) - CT)])
    assert_every_read_fails(stack, s3, key, size)


@pytest.mark.parametrize("order", [[1, 2, 1], [1, 3], [1, 2, 2, 3]])
def test_multipart_rebuilt_from_its_own_parts_in_another_order_fails(stack, order):
    """Parts 1, 2, 1 under an honest `-3` (or 1, 3 under `-2`, 1, 2, 2, 3 under `-4`): the
    first and last headers the size rests on are genuine headers of this object, so only
    their part numbers show that they are not in their place. HEAD, Range, partNumber and
    GetObjectAttributes announced sizes the object never had (15 MiB for 1, 2, 1)."""
    s3 = stack.boto()
    parts = [blob(5 * MIB, "re1"), blob(5 * MIB, "re2"), blob(1000, "re3")]
    key = fresh("reorder")
    multipart(s3, key, parts)
    size = sum(map(len, parts))
    raw = stack.stored(key)
    full = 108 + 5 * MIB + (5 * MIB // C) * 16
    spans = {1: (0, full - 1), 2: (full, 2 * full - 1), 3: (2 * full, len(raw) - 1)}
    stash = key + "-as-written"
    stack.direct.copy_object(Bucket=BUCKET, Key=stash, CopySource={"Bucket": BUCKET, "Key": key})
    rebuild_from_own_parts(stack, key, [spans[p] for p in order], stash)
    assert_every_read_fails(stack, s3, key, size)
    assert error_status(lambda: s3.get_object_attributes(Bucket=BUCKET, Key=key, ObjectAttributes=["ObjectSize", "ObjectParts"])) == 500
    # The parts in their own order read back exactly (the check refuses nothing genuine).
    rebuild_from_own_parts(stack, key, [spans[p] for p in (1, 2, 3)], stash)
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == size
    assert s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=0-99")["ContentRange"] == f"bytes 0-99/{size}"
    assert s3.get_object(Bucket=BUCKET, Key=key, PartNumber=2)["Body"].read() == parts[1]
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"".join(parts)


def test_metadata_of_a_version_with_another_chunk_size_fails(stack, workroot):
    """Metadata of one version with the body of another written with a different
    chunk_size (another replica's configuration): every read fails; none drops or invents
    bytes."""
    s3 = stack.boto()
    same = {k: v for k, v in stack.proxy.config.items() if k in ("allowed_buckets", "conditional_writes")}
    other = harness.Proxy(tempfile.mkdtemp(dir=workroot), stack.proxy.backend, stack.keyd,
                          encryption={"chunk_size": 16384}, **same)
    try:
        other.wait_ready()
        s3b = Stack.boto(types.SimpleNamespace(proxy=other))
        size = 5 * C + 3
        key = fresh("chunk-size")
        s3.put_object(Bucket=BUCKET, Key=key, Body=blob(size, "v1"))
        meta_v1 = stack.direct.head_object(Bucket=BUCKET, Key=key)["Metadata"]
        s3b.put_object(Bucket=BUCKET, Key=key, Body=blob(size, "v2"))
        assert s3b.get_object(Bucket=BUCKET, Key=key)["Body"].read() == blob(size, "v2")
        body_v2 = stack.stored(key)
        stack.direct.put_object(Bucket=BUCKET, Key=key, Body=body_v2, Metadata=meta_v1)
        assert_every_read_fails(stack, s3, key, size)
    finally:
        other.stop()


@pytest.mark.parametrize("tool", ["aws-cli", "boto3"])
def test_downloads_of_a_cut_24_mib_object_fail(stack, tool, tmp_path):
    """aws s3 cp and boto3 download_file (HEAD, then ranged GETs) used to exit 0 with a
    short file; aws s3 cp to another key made a valid short object."""
    s3 = stack.boto()
    data = blob(24 * MIB, "big")
    key = fresh("big")
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    raw = stack.stored(key)
    rewrite_raw(stack, key, raw[:len(raw) - 5 * CT])
    out = tmp_path / "restored"
    if tool == "aws-cli":
        r = aws(stack, "s3", "cp", f"s3://{BUCKET}/{key}", str(out), check=False)
        assert r.returncode != 0, r.stdout.decode()
        r = aws(stack, "s3", "cp", f"s3://{BUCKET}/{key}", f"s3://{BUCKET}/{key}-copy", check=False)
        assert r.returncode != 0, r.stdout.decode()
        assert stack.stored(f"{key}-copy") is None
    else:
        with pytest.raises(Exception):
            s3.download_file(BUCKET, key, str(out))
    # Whatever was written is never a complete-looking restore.
    assert not out.exists() or out.stat().st_size < len(data) or hashlib.sha256(out.read_bytes()).digest() != hashlib.sha256(data).digest()


def test_intact_objects_read_back_exactly_on_every_path(stack, tmp_path):
    """The checks cost nothing in correctness: single-part (sealed length), chunked
    (header-checked) and multipart objects read back exactly on every path."""
    s3 = stack.boto()
    single = blob(9 * MIB + 5, "ok-single")
    s3.put_object(Bucket=BUCKET, Key="integrity/ok-single", Body=single)
    parts = [blob(5 * MIB, "ok1"), blob(5 * MIB, "ok2"), blob(12345, "ok3")]
    multipart(s3, "integrity/ok-mp", parts)
    whole = b"".join(parts)
    for key, data in (("integrity/ok-single", single), ("integrity/ok-mp", whole)):
        assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == len(data)
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
        r = s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=0-99")
        assert r["Body"].read() == data[:100] and r["ContentRange"] == f"bytes 0-99/{len(data)}"
        assert s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=-100")["Body"].read() == data[-100:]
        p1 = s3.get_object(Bucket=BUCKET, Key=key, PartNumber=1)["Body"].read()
        assert p1 == data[:len(p1)] and len(p1) in (len(data), 5 * MIB)
        out = tmp_path / key.replace("/", "_")
        s3.download_file(BUCKET, key, str(out))
        assert out.read_bytes() == data
    empty = fresh("empty")
    s3.put_object(Bucket=BUCKET, Key=empty, Body=b"")
    assert s3.head_object(Bucket=BUCKET, Key=empty)["ContentLength"] == 0
    assert s3.get_object(Bucket=BUCKET, Key=empty)["Body"].read() == b""


def test_empty_user_metadata_is_kept(stack):
    """`x-amz-meta-foo: ""` is stored and returned, on PUT and on a REPLACE copy (ceph
    s3-tests test_object_set_get_metadata_none_to_empty / overwrite_to_empty)."""
    s3 = stack.boto()
    key = fresh("meta-empty")
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"x", Metadata={"meta1": ""})
    assert s3.head_object(Bucket=BUCKET, Key=key)["Metadata"] == {"meta1": ""}
    assert s3.get_object(Bucket=BUCKET, Key=key)["Metadata"] == {"meta1": ""}
    s3.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET, "Key": key},
                   Metadata={"meta2": "", "meta3": "v"}, MetadataDirective="REPLACE")
    assert s3.head_object(Bucket=BUCKET, Key=key)["Metadata"] == {"meta2": "", "meta3": "v"}


def test_head_subprocess_aws_cli_reports_the_written_size(stack):
    """aws s3api head-object shows the plaintext size of a sealed-length object."""
    s3 = stack.boto()
    key = fresh("cli-head")
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"z" * 12345)
    r = aws(stack, "s3api", "head-object", "--bucket", BUCKET, "--key", key)
    assert b'"ContentLength": 12345' in r.stdout, r.stdout


@pytest.fixture(scope="module", params=["moto", "garage"])
def relay_stack(request, workroot):
    """A backend behind the fault-injecting relay (tests/e2e/chaos.py)."""
    d = tempfile.mkdtemp(prefix=f"integrity-relay-{request.param}-", dir=workroot)
    s = Stack(d, request.param, tls=False, relay=True)
    yield s
    s.stop()


def test_a_retried_upload_keeps_its_sealed_metadata(relay_stack):
    """A PUT or CreateMultipartUpload retried on a fresh backend connection (after a stale
    pooled one was closed under it) used to answer 500: the sealed metadata had been used up
    by the first attempt. (CreateMultipartUpload, a POST, is retried by the proxy too.)"""
    # No client retries: the proxy's own retry is what is tested.
    s, relay = relay_stack.boto(retries={"total_max_attempts": 1, "mode": "standard"}), relay_stack.relay
    relay.keepalive = True
    try:
        s.put_object(Bucket=BUCKET, Key="integrity/warm", Body=b"warm the pool")
        for i in range(3):
            before = relay.stale_closed
            relay.stale_next = True
            data = blob(20_000 + i, f"retried-{i}")
            key = fresh("retried")
            s.put_object(Bucket=BUCKET, Key=key, Body=data, Metadata={"attempt": str(i)})
            assert relay.stale_closed == before + 1, "the request did not meet a stale connection"
            got = s.get_object(Bucket=BUCKET, Key=key)
            assert got["Body"].read() == data and got["Metadata"] == {"attempt": str(i)}
        relay.stale_next = True
        before = relay.stale_closed
        up = s.create_multipart_upload(Bucket=BUCKET, Key="integrity/retried-mp", ContentType="text/x-retried")
        assert relay.stale_closed == before + 1
        part = s.upload_part(Bucket=BUCKET, Key="integrity/retried-mp", UploadId=up["UploadId"], PartNumber=1, Body=b"p" * 1000)
        s.complete_multipart_upload(Bucket=BUCKET, Key="integrity/retried-mp", UploadId=up["UploadId"],
                                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
        got = s.get_object(Bucket=BUCKET, Key="integrity/retried-mp")
        assert got["Body"].read() == b"p" * 1000 and got["ContentType"] == "text/x-retried"
    finally:
        relay.keepalive = relay.stale_next = False


def test_an_object_replaced_during_a_ranged_read_gets_a_whole_error_answer(relay_stack):
    """The backend's 412 to the pinned data request may have no body (Garage): the 503 the
    client gets is still a complete XML error document."""
    s, relay = relay_stack.boto(), relay_stack.relay
    key = fresh("changed")
    s.put_object(Bucket=BUCKET, Key=key, Body=blob(2_000_000, "changed"))
    # A range beyond the first MiB: the first GET is the header probe; the second, pinned
    # with If-Match, fails.
    relay.arm(method="GET", path_contains=key, status=412, skip=1, empty_body=True)
    p = relay_stack.proxy
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    req = botocore.awsrequest.AWSRequest(method="GET", url=f"{p.endpoint}/{BUCKET}/{key}",
                                         headers={"Range": "bytes=1500000-1500099", "x-amz-content-sha256": hashlib.sha256(b"").hexdigest()})
    botocore.auth.S3SigV4Auth(botocore.credentials.Credentials(p.access_key, p.secret_key), "s3", "us-east-1").add_auth(req)
    conn.request("GET", f"/{BUCKET}/{key}", headers=dict(req.headers.items()))
    r = conn.getresponse()
    body = r.read()
    conn.close()
    relay.clear()
    assert r.status == 503 and r.getheader("retry-after"), (r.status, r.headers)
    assert int(r.getheader("content-length")) == len(body) and b"<Code>ServiceUnavailable</Code>" in body, body
