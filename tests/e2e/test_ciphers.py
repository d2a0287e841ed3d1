"""Format versions 1 and 2 side by side (docs/object-format.md 4.3): two proxies on one Garage
backend and one key, one writing XChaCha20-Poly1305 chunks (`encryption.cipher:
chacha20-poly1305`, version byte 1), the other AES-256-GCM (`aes-256-gcm`, version byte 2).
Each reads what the other wrote, on every read path; a multipart object whose parts went
through both reads back exactly; the raw backend objects carry the writer's version byte; and
a raw object whose version byte was flipped to the other cipher is refused with an S3 error,
never served."""

import os
import tempfile

import boto3
import botocore.config
import botocore.exceptions
import pytest

import harness
from conftest import BUCKET, Stack
from test_pbs import blob

MIB = 1 << 20
C = 65536
V1, V2 = b"S3CPOBJ\x01", b"S3CPOBJ\x02"


def segment_cipher_len(plain_len, c=C):
    chunks = max(1, -(-plain_len // c))
    return 108 + plain_len + 16 * chunks


@pytest.fixture(scope="module")
def pair(workroot):
    """(stack, chacha proxy's client, aes proxy's client); the stack's own proxy is the ChaCha one."""
    d = tempfile.mkdtemp(prefix="ciphers-", dir=workroot)
    s = Stack(d, "garage", tls=False, encryption={"cipher": "chacha20-poly1305"})
    aes = harness.Proxy(d, s.proxy.backend, s.keyd, tls=False, name="proxy-aes", conditional_writes="enforce",
                        allowed_buckets=[BUCKET], client=dict(s.proxy.config["client"]),
                        encryption={"cipher": "aes-256-gcm"})
    try:
        aes.wait_ready()
        yield s, client(s.proxy), client(aes)
    finally:
        aes.stop()
        s.stop()


def client(proxy):
    return boto3.client("s3", endpoint_url=proxy.endpoint, region_name="us-east-1",
                        aws_access_key_id=proxy.access_key, aws_secret_access_key=proxy.secret_key,
                        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def fresh(name):
    return f"ciphers/{name}-{os.urandom(4).hex()}"


def get(s3, key, **kw):
    return s3.get_object(Bucket=BUCKET, Key=key, **kw)["Body"].read()


def reads_back(s3, key, data, parts=None):
    """Whole GET, Ranges, HEAD and partNumber through `s3` give exactly `data`."""
    assert get(s3, key) == data
    n = len(data)
    for a, b in [(0, 99), (C - 5, 3 * C + 7), (n - 1000, n - 1), (n // 2, n + 50)]:
        assert get(s3, key, Range=f"bytes={a}-{b}") == data[a:b + 1], (a, b)
    assert get(s3, key, Range="bytes=-300") == data[-300:]
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == n
    if parts is None:
        assert get(s3, key, PartNumber=1) == data
    else:
        at = 0
        for i, p in enumerate(parts, 1):
            assert get(s3, key, PartNumber=i) == data[at:at + p], i
            assert s3.head_object(Bucket=BUCKET, Key=key, PartNumber=i)["ContentLength"] == p
            at += p


def test_each_reads_what_the_other_wrote(pair):
    stack, chacha, aes = pair
    data = blob(5 * C + 1234, "ciphers-single")
    for writer, reader, version, other_version in [(chacha, aes, V1, V2), (aes, chacha, V2, V1)]:
        key = fresh("single")
        writer.put_object(Bucket=BUCKET, Key=key, Body=data)
        raw = stack.stored(key)
        assert raw[:8] == version
        assert len(raw) == segment_cipher_len(len(data))
        reads_back(reader, key, data)
        reads_back(writer, key, data)
        # CopyObject through the reader: a single segment is re-wrapped, its chunks (and so
        # its version) kept; both proxies read the copy.
        dst = key + "-copy"
        reader.copy_object(Bucket=BUCKET, Key=dst, CopySource={"Bucket": BUCKET, "Key": key})
        assert stack.stored(dst)[:8] == version
        assert get(writer, dst) == data and get(reader, dst) == data
        # An empty object too (one empty final chunk).
        empty = fresh("empty")
        writer.put_object(Bucket=BUCKET, Key=empty, Body=b"")
        assert stack.stored(empty)[:8] == version
        assert get(reader, empty) == b""
        assert reader.head_object(Bucket=BUCKET, Key=empty)["ContentLength"] == 0
        assert other_version != version


def test_multipart_with_parts_from_both(pair):
    """Part 1 through the ChaCha proxy, part 2 through the AES proxy: segment 1 is version 1,
    segment 2 version 2, and the object reads back exactly through both. Copies that re-encrypt
    (a multipart source into one segment, UploadPartCopy) use the copying proxy's cipher."""
    stack, chacha, aes = pair
    key = fresh("mixed")
    p1, p2 = 5 * MIB, 3 * C + 77
    data = blob(p1 + p2, "ciphers-mixed")
    up = chacha.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    e1 = chacha.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=1, Body=data[:p1])["ETag"]
    e2 = aes.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=2, Body=data[p1:])["ETag"]
    aes.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up,
                                  MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    raw = stack.stored(key)
    s2 = segment_cipher_len(p1)
    assert raw[:8] == V1 and raw[s2:s2 + 8] == V2
    assert len(raw) == s2 + segment_cipher_len(p2)
    for s3 in (chacha, aes):
        reads_back(s3, key, data, parts=[p1, p2])
    for s3, version in [(chacha, V1), (aes, V2)]:
        dst = fresh("mixed-copy")
        s3.copy_object(Bucket=BUCKET, Key=dst, CopySource={"Bucket": BUCKET, "Key": key})
        assert stack.stored(dst)[:8] == version
        assert get(chacha, dst) == data and get(aes, dst) == data
    # UploadPartCopy through the AES proxy into an upload the ChaCha proxy started.
    dst = fresh("partcopy")
    up = chacha.create_multipart_upload(Bucket=BUCKET, Key=dst)["UploadId"]
    r = aes.upload_part_copy(Bucket=BUCKET, Key=dst, UploadId=up, PartNumber=1, CopySource={"Bucket": BUCKET, "Key": key},
                             CopySourceRange=f"bytes={p1 - 100}-{p1 + 99}")
    chacha.complete_multipart_upload(Bucket=BUCKET, Key=dst, UploadId=up,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": r["CopyPartResult"]["ETag"]}]})
    assert stack.stored(dst)[:8] == V2
    assert get(chacha, dst) == data[p1 - 100:p1 + 100]


def outcome(call):
    """("error", status, code) for an S3 error answer; else ("cut", bytes received) when the
    body broke off, or ("served", bytes) when it completed."""
    try:
        body = call()["Body"]
    except botocore.exceptions.ClientError as e:
        return "error", e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]
    got = b""
    try:
        while chunk := body.read(4096):
            got += chunk
    except (botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError):
        return "cut", len(got)
    return "served", len(got)


def test_flipped_version_byte_is_refused(pair):
    """The version byte is authenticated: flipped 1 <-> 2 on the backend, the object is refused
    by both proxies and no byte of it is served. Planned Ranges, partNumber and CopyObject answer
    an S3 XML error; a whole GET or a range near the start, which stream from the first backend
    answer (docs/object-format.md 5.10, 6.3.1), may instead have sent their status already and
    then break off before any byte."""
    stack, chacha, aes = pair
    data = blob(3 * C + 10, "ciphers-flip")
    for writer in (chacha, aes):
        key = fresh("flip")
        writer.put_object(Bucket=BUCKET, Key=key, Body=data)
        raw = bytearray(stack.stored(key))
        assert raw[7] in (1, 2)
        raw[7] ^= 3
        meta = stack.direct.head_object(Bucket=BUCKET, Key=key)["Metadata"]
        stack.direct.put_object(Bucket=BUCKET, Key=key, Body=bytes(raw), Metadata=meta)
        for s3 in (chacha, aes):
            # Streamed from the first backend answer (whole, or a range near the start,
            # docs/object-format.md 6.3.1): the status may be out, but not one byte.
            for kw in ({}, {"Range": "bytes=0-99"}, {"Range": f"bytes={C}-{C + 10}"}):
                got = outcome(lambda: s3.get_object(Bucket=BUCKET, Key=key, **kw))
                assert got == ("cut", 0) or (got[:2] == ("error", 500) and got[2]), (kw, got)
            # Planned from the header first: an S3 XML error.
            for kw in ({"Range": "bytes=-10"}, {"PartNumber": 1}):
                got = outcome(lambda: s3.get_object(Bucket=BUCKET, Key=key, **kw))
                assert got == ("error", 500, "InternalError"), (kw, got)
            dst = key + "-copy"
            with pytest.raises(botocore.exceptions.ClientError) as e:
                s3.copy_object(Bucket=BUCKET, Key=dst, CopySource={"Bucket": BUCKET, "Key": key})
            assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
            assert stack.stored(dst) is None
