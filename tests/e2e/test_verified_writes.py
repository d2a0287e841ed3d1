"""Verified writes: every body the proxy sends to the backend (PutObject, UploadPart, the
proxy-side copies) is framed aws-chunked with a CRC32C trailer of the ciphertext, which the
backend checks before it stores anything. A byte damaged between the proxy and the backend
(the fault relay of tests/e2e/chaos.py flips one) makes the backend refuse the upload, the
client gets an error its SDK retries, and nothing damaged is ever stored.

moto accepts wrong CRCs (shared/test-env.md), so on moto the tests check what the proxy
sends: the framing, the announced lengths and a trailer that is the CRC32C of exactly the
ciphertext the backend stored. The refusal of a damaged byte is proven on Garage, which
verifies trailers."""
import os
import tempfile

import base64
import botocore.exceptions
import pytest

from conftest import BUCKET, Stack
from test_pbs import blob

MIB = 1 << 20


def fresh(prefix):
    return f"verified/{prefix}-{os.urandom(4).hex()}"


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_T = _crc32c_table()


def crc32c(data):
    """CRC32C (Castagnoli), written out here so that the check does not share code with the proxy."""
    c = 0xFFFFFFFF
    for b in data:
        c = _T[(c ^ b) & 0xFF] ^ (c >> 8)
    return (c ^ 0xFFFFFFFF).to_bytes(4, "big")


def headers_of(head):
    out = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        out[name.strip().lower()] = value.strip()
    return out


def decode_aws_chunked(body):
    """(payload, trailer lines) of an unsigned aws-chunked body; strict about its framing."""
    payload, at = bytearray(), 0
    while True:
        end = body.index(b"\r\n", at)
        size = int(body[at:end], 16)
        at = end + 2
        if size == 0:
            break
        payload += body[at:at + size]
        at += size
        assert body[at:at + 2] == b"\r\n", "chunk data not followed by CRLF"
        at += 2
    trailer = bytes(body[at:])
    assert trailer.endswith(b"\r\n\r\n"), trailer
    lines = [l for l in trailer.split(b"\r\n") if l]
    return bytes(payload), dict(l.decode().split(":", 1) for l in lines)


def assert_verified_body(fault, stored):
    """The recorded request carried `stored` (the ciphertext the backend holds), framed, with
    its CRC32C as the trailer, signed as a streaming upload."""
    h = headers_of(fault.head)
    assert h["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER", h
    assert h["content-encoding"].split(",")[0] == "aws-chunked", h
    assert h["x-amz-trailer"] == "x-amz-checksum-crc32c", h
    assert "x-amz-trailer" in h["authorization"] and "x-amz-decoded-content-length" in h["authorization"], h["authorization"]
    assert int(h["content-length"]) == len(fault.body), "Content-Length is the framed length"
    payload, trailer = decode_aws_chunked(bytes(fault.body))
    assert int(h["x-amz-decoded-content-length"]) == len(payload) == len(stored)
    assert payload == stored
    assert trailer == {"x-amz-checksum-crc32c": base64.b64encode(crc32c(stored)).decode()}, trailer


@pytest.fixture(scope="module", params=["moto", "garage"])
def vstack(request, workroot):
    d = tempfile.mkdtemp(prefix=f"verified-{request.param}-", dir=workroot)
    s = Stack(d, request.param, tls=False, relay=True)
    s.kind = request.param
    yield s
    s.stop()


def test_put_sends_the_ciphertext_with_its_crc32c_trailer(vstack):
    s, relay = vstack.boto(), vstack.relay
    for size in (0, 1, 300_000):
        key = fresh(f"put-{size}")
        fault = relay.arm(method="PUT", path_contains=key, record=True)
        data = blob(size, key)
        s.put_object(Bucket=BUCKET, Key=key, Body=data)
        assert fault.fired == 1
        assert_verified_body(fault, vstack.stored(key))
        assert s.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data


def test_upload_part_and_proxy_side_copies_send_a_trailer(vstack):
    s, relay = vstack.boto(), vstack.relay
    key = fresh("mp")
    up = s.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    part1, part2 = blob(5 * MIB, "p1"), blob(70_000, "p2")
    f1 = relay.arm(method="PUT", path_contains="partNumber=1", record=True)
    e1 = s.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=1, Body=part1)["ETag"]
    src = fresh("copy-src")
    s.put_object(Bucket=BUCKET, Key=src, Body=part2)
    # UploadPartCopy: the proxy decrypts the source and uploads the part itself.
    f2 = relay.arm(method="PUT", path_contains="partNumber=2", record=True)
    e2 = s.upload_part_copy(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=2, CopySource={"Bucket": BUCKET, "Key": src})["CopyPartResult"]["ETag"]
    assert f1.fired == f2.fired == 1
    s.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up,
                                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    stored = vstack.stored(key)
    p1, _ = decode_aws_chunked(bytes(f1.body))
    assert_verified_body(f1, stored[:len(p1)])
    assert_verified_body(f2, stored[len(p1):])
    assert s.get_object(Bucket=BUCKET, Key=key)["Body"].read() == part1 + part2

    # CopyObject: the proxy re-wraps the source's segment headers and PUTs the copy.
    dst = fresh("copy-dst")
    f3 = relay.arm(method="PUT", path_contains=dst, record=True)
    s.copy_object(Bucket=BUCKET, Key=dst, CopySource={"Bucket": BUCKET, "Key": key})
    assert f3.fired == 1
    assert_verified_body(f3, vstack.stored(dst))
    assert s.get_object(Bucket=BUCKET, Key=dst)["Body"].read() == part1 + part2


def garage_only(stack):
    if stack.kind != "garage":
        pytest.skip("moto stores bodies whose trailer CRC does not match (shared/test-env.md); Garage verifies it")


# Body offset of a byte inside the first chunk's data (after the `40000\r\n` chunk header).
FLIP_AT = 5000


@pytest.mark.parametrize("mode", ["standard", "legacy"])
def test_a_byte_damaged_on_the_way_is_refused_and_the_sdk_retries(vstack, mode):
    """Damage on the first attempt only: the backend refuses it, boto3 retries, the object is
    stored exactly once and intact."""
    garage_only(vstack)
    s, relay = vstack.boto(retries={"total_max_attempts": 3, "mode": mode}), vstack.relay
    key = fresh("flip-put")
    data = blob(200_000, key)
    fault = relay.arm(method="PUT", path_contains=key, flip_body_byte_at=FLIP_AT)
    s.put_object(Bucket=BUCKET, Key=key, Body=data)
    assert fault.fired == 1
    assert [m for m, t in relay.seen if key in t and m == "PUT"] == ["PUT", "PUT"], "the client retried"
    assert s.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data


def test_persistent_damage_fails_with_a_retryable_error_and_stores_nothing(vstack):
    """Every attempt damaged: the client's error is the retryable RequestTimeout, the old
    object stays, a new key stays absent."""
    garage_only(vstack)
    s, relay = vstack.boto(retries={"total_max_attempts": 1, "mode": "standard"}), vstack.relay  # one answer, no retries
    key = fresh("flip-old")
    old = blob(100_000, "old")
    s.put_object(Bucket=BUCKET, Key=key, Body=old)
    relay.arm(method="PUT", path_contains=key, flip_body_byte_at=FLIP_AT, times=10)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s.put_object(Bucket=BUCKET, Key=key, Body=blob(150_000, "new"))
    err = e.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400 and err["Error"]["Code"] == "RequestTimeout", err
    assert "damaged" in err["Error"]["Message"]
    assert s.get_object(Bucket=BUCKET, Key=key)["Body"].read() == old

    new_key = fresh("flip-new")
    relay.arm(method="PUT", path_contains=new_key, flip_body_byte_at=FLIP_AT, times=10)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s.put_object(Bucket=BUCKET, Key=new_key, Body=blob(150_000, "new"))
    assert e.value.response["Error"]["Code"] == "RequestTimeout"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s.get_object(Bucket=BUCKET, Key=new_key)
    assert e.value.response["Error"]["Code"] == "NoSuchKey"


def test_damaged_parts_and_copies_are_refused_and_retried(vstack):
    garage_only(vstack)
    s, relay = vstack.boto(retries={"total_max_attempts": 3, "mode": "standard"}), vstack.relay
    key = fresh("flip-mp")
    up = s.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    part1, part2 = blob(5 * MIB, "fp1"), blob(90_000, "fp2")
    f1 = relay.arm(method="PUT", path_contains="partNumber=1", flip_body_byte_at=FLIP_AT)
    e1 = s.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=1, Body=part1)["ETag"]
    src = fresh("flip-src")
    s.put_object(Bucket=BUCKET, Key=src, Body=part2)
    # The proxy's own PUT of an UploadPartCopy: refused, answered 503, retried by boto3.
    f2 = relay.arm(method="PUT", path_contains="partNumber=2", flip_body_byte_at=FLIP_AT)
    e2 = s.upload_part_copy(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=2, CopySource={"Bucket": BUCKET, "Key": src})["CopyPartResult"]["ETag"]
    assert f1.fired == f2.fired == 1
    s.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up,
                                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert s.get_object(Bucket=BUCKET, Key=key)["Body"].read() == part1 + part2

    # CopyObject, damaged on every attempt: a 503, and no copy is stored.
    dst = fresh("flip-dst")
    relay.arm(method="PUT", path_contains=dst, flip_body_byte_at=FLIP_AT, times=10)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s.copy_object(Bucket=BUCKET, Key=dst, CopySource={"Bucket": BUCKET, "Key": key})
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert vstack.stored(dst) is None


def test_without_verified_writes_the_damage_is_stored(workroot):
    """The contrast that shows the relay's flip is real damage: with verified_writes: off the
    backend stores the damaged ciphertext, and it is found only when read back."""
    d = tempfile.mkdtemp(prefix="verified-off-", dir=workroot)
    stack = Stack(d, "garage", tls=False, relay=True, backend_options={"verified_writes": "off"})
    try:
        s = stack.boto()
        key = fresh("flip-off")
        fault = stack.relay.arm(method="PUT", path_contains=key, flip_body_byte_at=FLIP_AT, record=True)
        s.put_object(Bucket=BUCKET, Key=key, Body=blob(200_000, key))
        assert fault.fired == 1
        assert headers_of(fault.head)["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        with pytest.raises(Exception):
            s.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    finally:
        stack.stop()
