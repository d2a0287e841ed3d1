"""aws-cli and boto3 through the proxy (plain HTTP listener: the SDKs sign payloads)."""

import hashlib
import io
import os
import subprocess

import boto3.s3.transfer
import pytest

from conftest import BUCKET
from test_pbs import blob


def aws(stack, *args, input=None, check=True):
    p = stack.proxy
    env = dict(os.environ, AWS_ACCESS_KEY_ID=p.access_key, AWS_SECRET_ACCESS_KEY=p.secret_key,
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    env.pop("AWS_CA_BUNDLE", None)
    r = subprocess.run(["aws", "--endpoint-url", p.endpoint, *args], env=env, capture_output=True, input=input)
    if check:
        assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def test_boto3_object_round_trip_with_metadata(http_stack):
    s3 = http_stack.boto()
    data = blob(150_000, "boto")
    put = s3.put_object(Bucket=BUCKET, Key="boto/a.txt", Body=data, ContentType="text/plain",
                        Metadata={"color": "blue"}, ContentDisposition="attachment")
    assert put["ETag"] == '"%s"' % hashlib.md5(data).hexdigest()
    head = s3.head_object(Bucket=BUCKET, Key="boto/a.txt")
    assert head["ContentLength"] == len(data)
    assert head["ContentType"] == "text/plain"
    assert head["Metadata"] == {"color": "blue"}
    assert head["ContentDisposition"] == "attachment"
    got = s3.get_object(Bucket=BUCKET, Key="boto/a.txt")
    assert got["Body"].read() == data
    assert got["Metadata"] == {"color": "blue"}
    # The backend sees neither the metadata nor the content type.
    raw = http_stack.direct.head_object(Bucket=BUCKET, Key="boto/a.txt")
    assert "color" not in raw["Metadata"] and raw["ContentType"] != "text/plain"


def test_boto3_ranges(http_stack):
    s3 = http_stack.boto()
    data = blob(200_000, "range")
    s3.put_object(Bucket=BUCKET, Key="boto/range", Body=data)
    for rng, want in [("bytes=0-9", data[:10]), ("bytes=65530-65545", data[65530:65546]), ("bytes=-100", data[-100:]),
                      ("bytes=199990-", data[199990:])]:
        r = s3.get_object(Bucket=BUCKET, Key="boto/range", Range=rng)
        assert r["Body"].read() == want, rng
        assert r["ContentRange"].endswith("/200000")
    with pytest.raises(s3.exceptions.ClientError) as e:
        s3.get_object(Bucket=BUCKET, Key="boto/range", Range="bytes=300000-")
    assert e.value.response["Error"]["Code"] == "InvalidRange"


def test_boto3_list_copy_delete(http_stack):
    s3 = http_stack.boto()
    for i in range(3):
        s3.put_object(Bucket=BUCKET, Key=f"boto/list/{i}", Body=b"x" * (i * 1000))
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="boto/list/")
    assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [("boto/list/0", 0), ("boto/list/1", 1000), ("boto/list/2", 2000)]
    v1 = s3.list_objects(Bucket=BUCKET, Prefix="boto/list/")
    assert [o["Size"] for o in v1["Contents"]] == [0, 1000, 2000]
    s3.copy_object(Bucket=BUCKET, Key="boto/list/copy", CopySource={"Bucket": BUCKET, "Key": "boto/list/2"})
    assert s3.get_object(Bucket=BUCKET, Key="boto/list/copy")["Body"].read() == b"x" * 2000
    s3.copy_object(Bucket=BUCKET, Key="boto/list/copy", CopySource={"Bucket": BUCKET, "Key": "boto/list/copy"},
                   MetadataDirective="REPLACE", Metadata={"k": "v"}, ContentType="text/x-copy")
    h = s3.head_object(Bucket=BUCKET, Key="boto/list/copy")
    assert h["Metadata"] == {"k": "v"} and h["ContentType"] == "text/x-copy"
    d = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": f"boto/list/{i}"} for i in range(3)]})
    assert len(d["Deleted"]) == 3 and not d.get("Errors")
    s3.delete_object(Bucket=BUCKET, Key="boto/list/copy")
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="boto/list/")["KeyCount"] == 0


def test_boto3_multipart_upload(http_stack):
    s3 = http_stack.boto()
    data = os.urandom(12 * 1024 * 1024 + 4321)
    cfg = boto3.s3.transfer.TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024, max_concurrency=3)
    s3.upload_fileobj(io.BytesIO(data), BUCKET, "boto/multipart.bin", Config=cfg)
    head = s3.head_object(Bucket=BUCKET, Key="boto/multipart.bin")
    assert head["ContentLength"] == len(data)
    assert s3.get_object(Bucket=BUCKET, Key="boto/multipart.bin")["Body"].read() == data
    r = s3.get_object(Bucket=BUCKET, Key="boto/multipart.bin", Range="bytes=5242870-5242889")
    assert r["Body"].read() == data[5242870:5242890]
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="boto/multipart.bin")["Contents"][0]
    assert listed["Size"] == len(data)


def test_aws_cli_cp_ls_rm(http_stack, tmp_path):
    src = tmp_path / "file.bin"
    data = blob(3 * 1024 * 1024 + 7, "cli")
    src.write_bytes(data)
    aws(http_stack, "s3", "cp", str(src), f"s3://{BUCKET}/cli/file.bin")
    out = aws(http_stack, "s3", "ls", f"s3://{BUCKET}/cli/").decode()
    assert str(len(data)) in out and "file.bin" in out
    assert aws(http_stack, "s3", "cp", f"s3://{BUCKET}/cli/file.bin", "-") == data
    head = aws(http_stack, "s3api", "head-object", "--bucket", BUCKET, "--key", "cli/file.bin").decode()
    assert f'"ContentLength": {len(data)}' in head
    aws(http_stack, "s3", "rm", f"s3://{BUCKET}/cli/file.bin")
    assert "file.bin" not in aws(http_stack, "s3", "ls", f"s3://{BUCKET}/cli/", check=False).decode()


def test_aws_cli_large_multipart(http_stack, tmp_path):
    src = tmp_path / "big.bin"
    data = os.urandom(20 * 1024 * 1024 + 1)
    src.write_bytes(data)
    aws(http_stack, "s3", "cp", str(src), f"s3://{BUCKET}/cli/big.bin")
    dst = tmp_path / "back.bin"
    aws(http_stack, "s3", "cp", f"s3://{BUCKET}/cli/big.bin", str(dst))
    assert dst.read_bytes() == data


def audit_lines(stack):
    import json
    with open(stack.proxy.config["audit_log"]) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_range_get_fetches_only_the_needed_chunks(http_stack):
    s3 = http_stack.boto()
    data = os.urandom(3 * 1024 * 1024)
    s3.put_object(Bucket=BUCKET, Key="boto/big-range", Body=data)
    for first, last in [(1_000_000, 1_000_099), (0, 0), (len(data) - 5, len(data) - 1), (65535, 65536)]:
        r = s3.get_object(Bucket=BUCKET, Key="boto/big-range", Range=f"bytes={first}-{last}")
        assert r["Body"].read() == data[first:last + 1]
        assert r["ContentRange"] == f"bytes {first}-{last}/{len(data)}"
        assert r["ContentLength"] == last - first + 1
    gets = [a for a in audit_lines(http_stack) if a["key"] == "boto/big-range" and a["operation"] == "GetObject"]
    assert len(gets) == 4
    # At most two 64 KiB chunks (plus tags) came from the backend for each range.
    assert all(0 < g["backend_bytes_in"] <= 2 * (65536 + 16) for g in gets), gets


def test_range_get_across_multipart_parts(http_stack):
    s3 = http_stack.boto()
    part = 5 * 1024 * 1024
    data = os.urandom(2 * part + 1000)
    cfg = boto3.s3.transfer.TransferConfig(multipart_threshold=part, multipart_chunksize=part)
    s3.upload_fileobj(io.BytesIO(data), BUCKET, "boto/mp-range", Config=cfg)
    for first, last in [(part - 10, part + 10), (2 * part + 5, 2 * part + 999), (100, 200), (part * 2 - 1, part * 2)]:
        r = s3.get_object(Bucket=BUCKET, Key="boto/mp-range", Range=f"bytes={first}-{last}")
        assert r["Body"].read() == data[first:last + 1], (first, last)
    gets = [a for a in audit_lines(http_stack) if a["key"] == "boto/mp-range" and a["operation"] == "GetObject"]
    assert all(g["backend_bytes_in"] <= 2 * (65536 + 16) + 108 for g in gets), gets
