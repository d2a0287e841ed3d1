"""Objects above 100 MiB through the proxy (TLS, so the clients use their newest defaults:
aws-chunked with checksum trailers) to Garage: multipart with aws-cli `s3 cp` and boto3
`upload_file`, and one single PUT of the whole object (aws-cli with a multipart threshold
above its size). Data comes from a seeded PRNG into a temporary file and is compared by
SHA-256 of the downloaded file; Python never holds the object in memory."""

import hashlib
import os
import random
import subprocess
import tempfile
import time

import boto3.s3.transfer
import pytest

from conftest import BUCKET, Stack

MIB = 1024 * 1024
SIZE = 110 * MIB + 12345  # not a multiple of anything: the last chunk and part are partial
BUDGET = 60  # seconds per test (2 cores, debug build)


@pytest.fixture(scope="module")
def garage_stack(workroot):
    d = tempfile.mkdtemp(prefix="large-garage-", dir=workroot)
    s = Stack(d, "garage")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """SIZE bytes from random.Random(110), written in 1 MiB pieces; returns (path, sha256)."""
    path = tmp_path_factory.mktemp("large") / "big.bin"
    rng, h, left = random.Random(110), hashlib.sha256(), SIZE
    with open(path, "wb") as f:
        while left:
            piece = rng.randbytes(min(MIB, left))
            h.update(piece)
            f.write(piece)
            left -= len(piece)
    return str(path), h.hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(MIB):
            h.update(piece)
    return h.hexdigest()


def aws(stack, config_text, *args):
    p = stack.proxy
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as cfg:
        cfg.write(config_text)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=p.access_key, AWS_SECRET_ACCESS_KEY=p.secret_key,
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=cfg.name, AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    env.pop("AWS_CA_BUNDLE", None)
    try:
        r = subprocess.run(["aws", "--no-verify-ssl", "--endpoint-url", p.endpoint, *args], env=env, capture_output=True)
    finally:
        os.unlink(cfg.name)
    assert r.returncode == 0, r.stderr.decode()[-2000:]


def check_stored(stack, key, parts):
    """The proxy reports the plaintext size; the backend holds ciphertext with `parts` segments."""
    head = stack.boto().head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == SIZE
    raw = stack.direct.head_object(Bucket=BUCKET, Key=key)
    assert raw["ContentLength"] > SIZE
    etag = raw["ETag"].strip('"')
    assert (etag.rsplit("-", 1)[1] if "-" in etag else "1") == str(parts)
    # The stored bytes are not the plaintext.
    first = stack.direct.get_object(Bucket=BUCKET, Key=key, Range="bytes=0-4095")["Body"].read()
    assert first[:7] == b"S3CPOBJ"


def test_aws_cli_multipart_cp(garage_stack, big_file, tmp_path):
    path, digest = big_file
    t0 = time.monotonic()
    cfg = "[default]\ns3 =\n  multipart_threshold = 16MB\n  multipart_chunksize = 16MB\n"
    aws(garage_stack, cfg, "s3", "cp", path, f"s3://{BUCKET}/large/cli-multipart")
    out = tmp_path / "down"
    aws(garage_stack, cfg, "s3", "cp", f"s3://{BUCKET}/large/cli-multipart", str(out))
    assert sha256_file(out) == digest
    check_stored(garage_stack, "large/cli-multipart", parts=7)
    assert time.monotonic() - t0 < BUDGET


def test_boto3_upload_file_multipart(garage_stack, big_file, tmp_path):
    path, digest = big_file
    t0 = time.monotonic()
    s3 = garage_stack.boto()
    cfg = boto3.s3.transfer.TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4)
    s3.upload_file(path, BUCKET, "large/boto3", Config=cfg)
    out = str(tmp_path / "down")
    s3.download_file(BUCKET, "large/boto3", out, Config=cfg)
    assert sha256_file(out) == digest
    check_stored(garage_stack, "large/boto3", parts=14)
    # A range in the middle of a late part, decrypted from just its chunks.
    r = s3.get_object(Bucket=BUCKET, Key="large/boto3", Range=f"bytes={100 * MIB - 5}-{100 * MIB + 4}")
    with open(path, "rb") as f:
        f.seek(100 * MIB - 5)
        assert r["Body"].read() == f.read(10)
    assert time.monotonic() - t0 < BUDGET


def test_aws_cli_single_put(garage_stack, big_file, tmp_path):
    path, digest = big_file
    t0 = time.monotonic()
    cfg = "[default]\ns3 =\n  multipart_threshold = 1GB\n"
    aws(garage_stack, cfg, "s3", "cp", path, f"s3://{BUCKET}/large/cli-single")
    check_stored(garage_stack, "large/cli-single", parts=1)
    out = tmp_path / "down"
    aws(garage_stack, cfg, "s3", "cp", f"s3://{BUCKET}/large/cli-single", str(out))
    assert sha256_file(out) == digest
    assert time.monotonic() - t0 < BUDGET
