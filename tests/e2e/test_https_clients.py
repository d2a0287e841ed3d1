"""The SDKs' newest defaults, which they use over HTTPS: aws-chunked uploads with checksum
trailers (boto3, aws-cli), flexible checksums, and signed aws-chunked bodies."""

import base64
import hashlib
import io
import os
import subprocess
import zlib

import boto3.s3.transfer
import pytest

from conftest import BUCKET


def crc32_b64(data):
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def test_boto3_default_aws_chunked_with_crc32_trailer(stack):
    s3 = stack.boto()
    data = os.urandom(200_000)
    put = s3.put_object(Bucket=BUCKET, Key="https/trailer", Body=data)
    assert put["ChecksumCRC32"] == crc32_b64(data)
    assert s3.get_object(Bucket=BUCKET, Key="https/trailer")["Body"].read() == data
    put = s3.put_object(Bucket=BUCKET, Key="https/sha256", Body=data, ChecksumAlgorithm="SHA256")
    assert put["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert s3.get_object(Bucket=BUCKET, Key="https/sha256")["Body"].read() == data
    # The backend never sees a checksum of the plaintext.
    raw = stack.direct.head_object(Bucket=BUCKET, Key="https/trailer", ChecksumMode="ENABLED")
    assert raw.get("ChecksumCRC32") != crc32_b64(data)


def test_boto3_multipart_over_https(stack):
    s3 = stack.boto()
    data = os.urandom(11 * 1024 * 1024 + 17)
    cfg = boto3.s3.transfer.TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    s3.upload_fileobj(io.BytesIO(data), BUCKET, "https/multipart", Config=cfg)
    out = io.BytesIO()
    s3.download_fileobj(BUCKET, "https/multipart", out, Config=cfg)
    assert out.getvalue() == data


def test_aws_cli_over_https(stack, tmp_path):
    p = stack.proxy
    env = dict(os.environ, AWS_ACCESS_KEY_ID=p.access_key, AWS_SECRET_ACCESS_KEY=p.secret_key, AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    env.pop("AWS_CA_BUNDLE", None)
    src = tmp_path / "f.bin"
    data = os.urandom(9 * 1024 * 1024 + 1)
    src.write_bytes(data)
    base = ["aws", "--endpoint-url", p.endpoint, "--no-verify-ssl"]
    r = subprocess.run(base + ["s3", "cp", str(src), f"s3://{BUCKET}/https/cli.bin"], env=env, capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    r = subprocess.run(base + ["s3", "cp", f"s3://{BUCKET}/https/cli.bin", "-"], env=env, capture_output=True)
    assert r.returncode == 0 and r.stdout == data, r.stderr.decode()


def chunked_unsigned(data, trailer_value):
    return (f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n" +
            f"x-amz-checksum-crc32:{trailer_value}\r\n\r\n".encode())


def test_wrong_trailer_checksum_is_bad_digest_and_stores_nothing(stack):
    c = stack.client()
    for i, body_len in enumerate([10, 150_000]):
        data = os.urandom(body_len)
        key = f"https/bad-trailer-{i}-{os.urandom(3).hex()}"
        body = chunked_unsigned(data, crc32_b64(b"other"))
        r = c.request("PUT", key, headers={"content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
                                           "x-amz-trailer": "x-amz-checksum-crc32"},
                      body=body, payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        assert r.status == 400 and b"<Code>BadDigest</Code>" in r.body, r
        assert stack.stored(key) is None
        good = chunked_unsigned(data, crc32_b64(data))
        r = c.request("PUT", key, headers={"content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
                                           "x-amz-trailer": "x-amz-checksum-crc32"},
                      body=good, payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        assert r.status == 200, r
        assert c.get_object(key).body == data


def test_wrong_checksum_header_is_bad_digest(stack):
    c = stack.client()
    key = f"https/bad-header-{os.urandom(3).hex()}"
    r = c.request("PUT", key, headers={"x-amz-checksum-crc32": crc32_b64(b"not it")}, body=b"some data")
    assert r.status == 400 and b"<Code>BadDigest</Code>" in r.body, r
    assert stack.stored(key) is None


def test_signed_aws_chunked_and_forged_chunk(stack):
    c = stack.client()
    data = os.urandom(150_000)
    r = c.put_aws_chunked_signed("https/signed", data, chunk_size=65536)
    assert r.status == 200, r
    assert c.get_object("https/signed").body == data
    r = c.put_aws_chunked_signed("https/signed-trailer", data, trailer=("x-amz-checksum-crc32", crc32_b64(data)))
    assert r.status == 200, r
    assert r.header("x-amz-checksum-crc32") == crc32_b64(data)
    for bad in (0, 2, 3):  # first, last data chunk, the empty final chunk
        key = f"https/forged-{bad}"
        r = c.put_aws_chunked_signed(key, data, tamper_chunk=bad)
        assert r.status == 403 and b"SignatureDoesNotMatch" in r.body, (bad, r)
        assert stack.stored(key) is None
