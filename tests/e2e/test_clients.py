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
    head = s3.head_object(Bucket=BUCKET, Key="boto/a.txt")
    # One ETag per object: PUT, HEAD and GET agree.
    assert put["ETag"] == head["ETag"]
    # With Content-MD5 the ETag is the plaintext MD5, as S3 gives it.
    import base64
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    put2 = s3.put_object(Bucket=BUCKET, Key="boto/a-md5.txt", Body=data, ContentMD5=md5)
    assert put2["ETag"] == '"%s"' % hashlib.md5(data).hexdigest()
    assert s3.head_object(Bucket=BUCKET, Key="boto/a-md5.txt")["ETag"] == put2["ETag"]
    assert s3.get_object(Bucket=BUCKET, Key="boto/a-md5.txt", IfMatch=put2["ETag"])["Body"].read() == data
    assert head["ContentLength"] == len(data)
    assert head["ContentType"] == "text/plain"
    assert head["Metadata"] == {"color": "blue"}
    assert head["ContentDisposition"] == "attachment"
    got = s3.get_object(Bucket=BUCKET, Key="boto/a.txt")
    assert got["Body"].read() == data
    assert got["ETag"] == put["ETag"]
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


def audit_lines(stack, key=None, op=None, count=0):
    """Audit lines, waiting until `count` lines for `key`/`op` are written (each is written
    just after its answer)."""
    import json
    import time
    deadline = time.time() + 5
    while True:
        with open(stack.proxy.config["audit_log"]) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        match = [a for a in lines if (key is None or a["key"] == key) and (op is None or a["operation"] == op)]
        if len(match) >= count or time.time() > deadline:
            return match


def test_range_get_fetches_only_the_needed_chunks(http_stack):
    s3 = http_stack.boto()
    data = os.urandom(3 * 1024 * 1024)
    s3.put_object(Bucket=BUCKET, Key="boto/big-range", Body=data)
    for first, last in [(1_000_000, 1_000_099), (0, 0), (len(data) - 5, len(data) - 1), (65535, 65536)]:
        r = s3.get_object(Bucket=BUCKET, Key="boto/big-range", Range=f"bytes={first}-{last}")
        assert r["Body"].read() == data[first:last + 1]
        assert r["ContentRange"] == f"bytes {first}-{last}/{len(data)}"
        assert r["ContentLength"] == last - first + 1
    gets = audit_lines(http_stack, "boto/big-range", "GetObject", 4)
    assert len(gets) == 4
    # At most two 64 KiB chunks (plus tags) came from the backend for each range, and the
    # first segment header when it came with them (a range near the start: one request).
    assert all(0 < g["backend_bytes_in"] <= 2 * (65536 + 16) + 108 for g in gets), gets


def test_range_get_across_multipart_parts(http_stack):
    s3 = http_stack.boto()
    part = 5 * 1024 * 1024
    data = os.urandom(2 * part + 1000)
    cfg = boto3.s3.transfer.TransferConfig(multipart_threshold=part, multipart_chunksize=part)
    s3.upload_fileobj(io.BytesIO(data), BUCKET, "boto/mp-range", Config=cfg)
    for first, last in [(part - 10, part + 10), (2 * part + 5, 2 * part + 999), (100, 200), (part * 2 - 1, part * 2)]:
        r = s3.get_object(Bucket=BUCKET, Key="boto/mp-range", Range=f"bytes={first}-{last}")
        assert r["Body"].read() == data[first:last + 1], (first, last)
    gets = audit_lines(http_stack, "boto/mp-range", "GetObject", 4)
    assert all(g["backend_bytes_in"] <= 2 * (65536 + 16) + 108 for g in gets), gets


def test_multipart_low_level_any_order_list_parts_and_layout_rule(http_stack):
    s3 = http_stack.boto()
    mib = 1024 * 1024
    parts = {1: os.urandom(5 * mib), 2: os.urandom(5 * mib), 3: os.urandom(123)}
    up = s3.create_multipart_upload(Bucket=BUCKET, Key="boto/lowlevel", ContentType="application/x-test", Metadata={"m": "1"})
    uid = up["UploadId"]
    etags = {}
    for n in (3, 1, 2, 2):  # any order, and a retried part
        etags[n] = s3.upload_part(Bucket=BUCKET, Key="boto/lowlevel", UploadId=uid, PartNumber=n, Body=parts[n])["ETag"]
    listed = s3.list_parts(Bucket=BUCKET, Key="boto/lowlevel", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [(1, 5 * mib), (2, 5 * mib), (3, 123)]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="boto/lowlevel", UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in (1, 2, 3)]})
    got = s3.get_object(Bucket=BUCKET, Key="boto/lowlevel")
    assert got["Body"].read() == parts[1] + parts[2] + parts[3]
    assert got["ContentType"] == "application/x-test" and got["Metadata"] == {"m": "1"}

    # Parts of different sizes cannot be laid out: refused at completion, with the rule.
    up = s3.create_multipart_upload(Bucket=BUCKET, Key="boto/badlayout")
    uid = up["UploadId"]
    bad = {1: os.urandom(5 * mib), 2: os.urandom(6 * mib), 3: b"x"}
    et = {n: s3.upload_part(Bucket=BUCKET, Key="boto/badlayout", UploadId=uid, PartNumber=n, Body=b)["ETag"] for n, b in bad.items()}
    with pytest.raises(s3.exceptions.ClientError) as e:
        s3.complete_multipart_upload(Bucket=BUCKET, Key="boto/badlayout", UploadId=uid,
                                     MultipartUpload={"Parts": [{"PartNumber": n, "ETag": et[n]} for n in (1, 2, 3)]})
    assert e.value.response["Error"]["Code"] == "InvalidRequest"
    assert "same size" in e.value.response["Error"]["Message"]
    s3.abort_multipart_upload(Bucket=BUCKET, Key="boto/badlayout", UploadId=uid)
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=BUCKET, Key="boto/badlayout")


def test_presigned_urls(http_stack):
    import urllib.request
    import urllib.error
    import botocore.config
    s3 = http_stack.boto(signature_version="s3v4")
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": "boto/presigned"}, ExpiresIn=300)
    req = urllib.request.Request(put_url, data=b"presigned body", method="PUT")
    with urllib.request.urlopen(req) as r:
        assert r.status == 200
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "boto/presigned"}, ExpiresIn=300)
    with urllib.request.urlopen(get_url) as r:
        assert r.read() == b"presigned body"
    head_url = s3.generate_presigned_url("head_object", Params={"Bucket": BUCKET, "Key": "boto/presigned"}, ExpiresIn=300)
    with urllib.request.urlopen(urllib.request.Request(head_url, method="HEAD")) as r:
        assert r.headers["Content-Length"] == str(len(b"presigned body"))
    # Tampered: another key with the same signature.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(get_url.replace("boto/presigned", "boto/presigneX"))
    assert e.value.code == 403 and b"SignatureDoesNotMatch" in e.value.read()
    # Expired.
    old = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "boto/presigned"}, ExpiresIn=1)
    import time
    time.sleep(2)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(old)
    assert e.value.code == 403 and b"expired" in e.value.read()


def test_conditional_gets_and_response_overrides(http_stack):
    s3 = http_stack.boto()
    data = b"conditional body" * 100
    put = s3.put_object(Bucket=BUCKET, Key="boto/cond", Body=data, ContentType="text/plain")
    etag = put["ETag"]
    assert s3.get_object(Bucket=BUCKET, Key="boto/cond", IfMatch=etag)["Body"].read() == data
    with pytest.raises(s3.exceptions.ClientError) as e:
        s3.get_object(Bucket=BUCKET, Key="boto/cond", IfMatch='"0123"')
    assert e.value.response["Error"]["Code"] in ("PreconditionFailed", "412")
    with pytest.raises(s3.exceptions.ClientError) as e:
        s3.get_object(Bucket=BUCKET, Key="boto/cond", IfNoneMatch=etag)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="boto/cond")["Contents"][0]["ETag"]
    assert s3.get_object(Bucket=BUCKET, Key="boto/cond", IfMatch=listed)["Body"].read() == data
    lm = s3.head_object(Bucket=BUCKET, Key="boto/cond")["LastModified"]
    import datetime
    with pytest.raises(s3.exceptions.ClientError) as e:
        s3.get_object(Bucket=BUCKET, Key="boto/cond", IfModifiedSince=lm + datetime.timedelta(seconds=5))
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    # The ETag conditions win over the date ones (S3 and RFC 9110): If-Match true with
    # If-Unmodified-Since false is 200 with the data; If-None-Match true with
    # If-Modified-Since false is 200 too; If-None-Match false is 304 whatever the date says.
    earlier, later = lm - datetime.timedelta(days=1), lm + datetime.timedelta(days=1)
    assert s3.get_object(Bucket=BUCKET, Key="boto/cond", IfMatch=etag, IfUnmodifiedSince=earlier)["Body"].read() == data
    assert s3.get_object(Bucket=BUCKET, Key="boto/cond", IfNoneMatch='"0123"', IfModifiedSince=later)["Body"].read() == data
    with pytest.raises(s3.exceptions.ClientError) as e:
        s3.get_object(Bucket=BUCKET, Key="boto/cond", IfNoneMatch=etag, IfModifiedSince=earlier)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(s3.exceptions.ClientError) as e:
        s3.get_object(Bucket=BUCKET, Key="boto/cond", IfUnmodifiedSince=earlier)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    r = s3.get_object(Bucket=BUCKET, Key="boto/cond", ResponseContentType="application/x-override", ResponseContentDisposition="inline")
    assert r["ContentType"] == "application/x-override" and r["ContentDisposition"] == "inline"


def get_if_range(s3, key, byte_range, validator):
    """A Range GET with `If-Range: validator` (boto3 has no parameter for it): (status,
    Content-Range, body)."""
    def add(request, **_):
        request.headers["If-Range"] = validator
    s3.meta.events.register_first("before-sign.s3.GetObject", add)
    try:
        r = s3.get_object(Bucket=BUCKET, Key=key, Range=byte_range)
        return r["ResponseMetadata"]["HTTPStatusCode"], r.get("ContentRange"), r["Body"].read()
    finally:
        s3.meta.events.unregister("before-sign.s3.GetObject", add)


def test_if_range_resumes_only_the_version_the_client_holds(http_stack):
    """If-Range (as S3 honours it): the Range is served only when the validator names the
    stored version — its ETag (strong comparison) or its exact Last-Modified time; otherwise
    the whole object comes back with 200, so a resumed download never appends a piece of
    another version. Every read path: a range near the start (one request with the header),
    further in (header read first, then remembered) and open-ended."""
    s3 = http_stack.boto()
    key = "boto/if-range"
    data = blob(3 << 20, key)
    etag = s3.put_object(Bucket=BUCKET, Key=key, Body=data)["ETag"]
    modified = s3.head_object(Bucket=BUCKET, Key=key)["ResponseMetadata"]["HTTPHeaders"]["last-modified"]
    n = len(data)
    for byte_range, first, last in [("bytes=100-199", 100, 199), ("bytes=2000000-2000099", 2000000, 2000099),
                                    ("bytes=2000000-2000099", 2000000, 2000099), ("bytes=1000000-", 1000000, n - 1)]:
        for current in (etag, modified):
            assert get_if_range(s3, key, byte_range, current) == (206, f"bytes {first}-{last}/{n}", data[first:last + 1]), (byte_range, current)
        for stale in ('"0123456789abcdef0123456789abcdef"', "W/" + etag, "Sun, 01 Jan 2023 00:00:00 GMT"):
            status, content_range, body = get_if_range(s3, key, byte_range, stale)
            assert (status, content_range) == (200, None) and body == data, (byte_range, stale)


def test_head_with_a_range_answers_as_the_get_would(http_stack):
    """HeadObject takes a Range as S3 does: 206 with the range's Content-Length and
    Content-Range (from the object's authenticated length), 416 when it cannot be met."""
    s3 = http_stack.boto()
    key = "boto/head-range"
    data = blob(300_000, key)
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    n = len(data)
    for byte_range, first, last in [("bytes=100-199", 100, 199), ("bytes=-10", n - 10, n - 1),
                                    ("bytes=299990-400000", 299990, n - 1), ("bytes=0-", 0, n - 1)]:
        r = s3.head_object(Bucket=BUCKET, Key=key, Range=byte_range)
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 206, byte_range
        assert (r["ContentLength"], r["ContentRange"]) == (last - first + 1, f"bytes {first}-{last}/{n}"), byte_range
    with pytest.raises(s3.exceptions.ClientError) as e:
        s3.head_object(Bucket=BUCKET, Key=key, Range=f"bytes={n}-")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416
    plain = s3.head_object(Bucket=BUCKET, Key=key)
    assert plain["ResponseMetadata"]["HTTPStatusCode"] == 200 and plain["ContentLength"] == n and "ContentRange" not in plain


def test_copy_of_a_multipart_object_reads_back_with_the_right_size(http_stack):
    s3 = http_stack.boto()
    part = 5 * 1024 * 1024
    data = os.urandom(2 * part + 333)
    cfg = boto3.s3.transfer.TransferConfig(multipart_threshold=part, multipart_chunksize=part)
    s3.upload_fileobj(io.BytesIO(data), BUCKET, "boto/mp-src", Config=cfg)
    s3.copy_object(Bucket=BUCKET, Key="boto/mp-copy", CopySource={"Bucket": BUCKET, "Key": "boto/mp-src"})
    assert s3.head_object(Bucket=BUCKET, Key="boto/mp-copy")["ContentLength"] == len(data)
    assert s3.get_object(Bucket=BUCKET, Key="boto/mp-copy")["Body"].read() == data
    listed = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="boto/mp-")["Contents"]}
    assert listed["boto/mp-copy"] == listed["boto/mp-src"] == len(data)
    r = s3.get_object(Bucket=BUCKET, Key="boto/mp-copy", Range=f"bytes={part - 3}-{part + 3}")
    assert r["Body"].read() == data[part - 3:part + 4]


def test_copy_source_conditions_put_if_match_and_copy_to_itself(http_stack):
    s3 = http_stack.boto()
    s3.put_object(Bucket=BUCKET, Key="boto/cond-src", Body=b"source body")
    etag = s3.head_object(Bucket=BUCKET, Key="boto/cond-src")["ETag"]
    src = {"Bucket": BUCKET, "Key": "boto/cond-src"}
    s3.copy_object(Bucket=BUCKET, Key="boto/cond-dst", CopySource=src, CopySourceIfMatch=etag)
    for kw in ({"CopySourceIfMatch": '"nope"'}, {"CopySourceIfNoneMatch": etag}):
        with pytest.raises(s3.exceptions.ClientError) as e:
            s3.copy_object(Bucket=BUCKET, Key="boto/cond-dst2", CopySource=src, **kw)
        assert e.value.response["Error"]["Code"] == "PreconditionFailed", kw
    with pytest.raises(s3.exceptions.ClientError) as e:
        s3.copy_object(Bucket=BUCKET, Key="boto/cond-src", CopySource=src)
    assert e.value.response["Error"]["Code"] == "InvalidRequest"
    # PUT If-Match with the ETag the client was shown overwrites.
    s3.put_object(Bucket=BUCKET, Key="boto/cond-src", Body=b"replaced", IfMatch=etag)
    assert s3.get_object(Bucket=BUCKET, Key="boto/cond-src")["Body"].read() == b"replaced"
