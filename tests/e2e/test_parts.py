"""Multipart features through the proxy with real backends: UploadPartCopy (boto3, aws-cli),
GET/HEAD of one part (partNumber), x-amz-checksum-mode, plain Transfer-Encoding: chunked
bodies, and repeated or malformed CompleteMultipartUpload."""

import base64
import hashlib
import http.client
import json
import os
import ssl
import subprocess
import zlib

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.credentials
import pytest

from conftest import BUCKET
from test_pbs import blob

MIB = 1024 * 1024


def crc32_b64(data):
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def multipart(s3, key, parts):
    """Uploads `parts` (list of bytes) as a multipart upload; returns the Complete answer."""
    up = s3.create_multipart_upload(Bucket=BUCKET, Key=key)
    done = []
    for i, p in enumerate(parts, 1):
        r = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=up["UploadId"], PartNumber=i, Body=p)
        done.append({"PartNumber": i, "ETag": r["ETag"]})
    return s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up["UploadId"], MultipartUpload={"Parts": done})


def aws(stack, *args, check=True):
    p = stack.proxy
    env = dict(os.environ, AWS_ACCESS_KEY_ID=p.access_key, AWS_SECRET_ACCESS_KEY=p.secret_key,
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    env.pop("AWS_CA_BUNDLE", None)
    r = subprocess.run(["aws", "--no-verify-ssl", "--endpoint-url", p.endpoint, *args], env=env, capture_output=True)
    if check:
        assert r.returncode == 0, r.stderr.decode()
    return r


def test_upload_part_copy_whole_and_ranged(stack):
    """boto3 upload_part_copy from a single-part and a multipart source, whole and ranged;
    the result is downloaded and compared byte for byte; the backend holds no plaintext."""
    s3 = stack.boto()
    small = blob(300_000, "pc-small")
    s3.put_object(Bucket=BUCKET, Key="pc/src-small", Body=small)
    big = blob(12 * MIB + 12345, "pc-big")
    multipart(s3, "pc/src-big", [big[:5 * MIB], big[5 * MIB:10 * MIB], big[10 * MIB:]])

    up = s3.create_multipart_upload(Bucket=BUCKET, Key="pc/dst")
    uid = up["UploadId"]
    # Part 1: 5 MiB from the middle of the multipart source (crosses its part boundary).
    r1 = s3.upload_part_copy(Bucket=BUCKET, Key="pc/dst", UploadId=uid, PartNumber=1,
                             CopySource={"Bucket": BUCKET, "Key": "pc/src-big"},
                             CopySourceRange=f"bytes={3 * MIB}-{8 * MIB - 1}")
    # Part 2: an uploaded part. Part 3: the whole small source.
    p2 = big[:5 * MIB]
    r2 = s3.upload_part(Bucket=BUCKET, Key="pc/dst", UploadId=uid, PartNumber=2, Body=p2)
    r3 = s3.upload_part_copy(Bucket=BUCKET, Key="pc/dst", UploadId=uid, PartNumber=3,
                             CopySource={"Bucket": BUCKET, "Key": "pc/src-small"})
    for r in (r1, r3):
        assert r["CopyPartResult"]["ETag"].startswith('"') and r["CopyPartResult"]["LastModified"]
    parts = s3.list_parts(Bucket=BUCKET, Key="pc/dst", UploadId=uid)["Parts"]
    assert [p["ETag"] for p in parts] == [r1["CopyPartResult"]["ETag"], r2["ETag"], r3["CopyPartResult"]["ETag"]]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="pc/dst", UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": r1["CopyPartResult"]["ETag"]}, {"PartNumber": 2, "ETag": r2["ETag"]},
        {"PartNumber": 3, "ETag": r3["CopyPartResult"]["ETag"]}]})
    want = big[3 * MIB:8 * MIB] + p2 + small
    got = s3.get_object(Bucket=BUCKET, Key="pc/dst")["Body"].read()
    assert len(got) == len(want) and hashlib.sha256(got).digest() == hashlib.sha256(want).digest()
    assert s3.head_object(Bucket=BUCKET, Key="pc/dst")["ContentLength"] == len(want)
    raw = stack.direct.get_object(Bucket=BUCKET, Key="pc/dst")["Body"].read()
    assert small[:4096] not in raw and big[3 * MIB:3 * MIB + 4096] not in raw
    # A range of the copy crossing from the copied part into the uploaded one.
    r = s3.get_object(Bucket=BUCKET, Key="pc/dst", Range=f"bytes={5 * MIB - 10}-{5 * MIB + 9}")
    assert r["Body"].read() == want[5 * MIB - 10:5 * MIB + 10]


def test_upload_part_copy_refusals(stack):
    s3 = stack.boto()
    data = blob(100_000, "pc-ref")
    put = s3.put_object(Bucket=BUCKET, Key="pc/ref", Body=data)
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="pc/ref-dst")["UploadId"]
    src = {"Bucket": BUCKET, "Key": "pc/ref"}

    def err(**kw):
        with pytest.raises(s3.exceptions.ClientError) as e:
            s3.upload_part_copy(Bucket=BUCKET, Key="pc/ref-dst", UploadId=uid, PartNumber=1, **kw)
        return e.value.response["Error"]["Code"], e.value.response["ResponseMetadata"]["HTTPStatusCode"]

    assert err(CopySource=src, CopySourceRange="bytes=0-100000") == ("InvalidRange", 416)
    assert err(CopySource=src, CopySourceRange="bytes=100000-100001") == ("InvalidRange", 416)
    assert err(CopySource=src, CopySourceRange="bytes=10-") == ("InvalidArgument", 400)
    assert err(CopySource={"Bucket": BUCKET, "Key": "pc/none"}) == ("NoSuchKey", 404)
    assert err(CopySource=src, CopySourceIfMatch='"0123"') == ("PreconditionFailed", 412)
    assert err(CopySource=src, CopySourceIfNoneMatch=put["ETag"]) == ("PreconditionFailed", 412)
    ok = s3.upload_part_copy(Bucket=BUCKET, Key="pc/ref-dst", UploadId=uid, PartNumber=1, CopySource=src,
                             CopySourceIfMatch=put["ETag"], CopySourceRange="bytes=99990-99999")
    s3.complete_multipart_upload(Bucket=BUCKET, Key="pc/ref-dst", UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": ok["CopyPartResult"]["ETag"]}]})
    assert s3.get_object(Bucket=BUCKET, Key="pc/ref-dst")["Body"].read() == data[99990:]
    with pytest.raises(s3.exceptions.ClientError) as e:
        s3.upload_part_copy(Bucket=BUCKET, Key="pc/ref-dst", UploadId="no-such-upload", PartNumber=1, CopySource=src)
    assert e.value.response["Error"]["Code"] == "NoSuchUpload"


def test_aws_cli_upload_part_copy(stack, tmp_path):
    s3 = stack.boto()
    data = blob(6 * MIB + 99, "cli-pc")
    s3.put_object(Bucket=BUCKET, Key="pc/cli-src", Body=data)
    s3.put_object(Bucket=BUCKET, Key="pc/cli-src5", Body=data[:5 * MIB])
    uid = json.loads(aws(stack, "s3api", "create-multipart-upload", "--bucket", BUCKET, "--key", "pc/cli-dst").stdout)["UploadId"]
    common = ["--bucket", BUCKET, "--key", "pc/cli-dst", "--upload-id", uid]
    e1 = json.loads(aws(stack, "s3api", "upload-part-copy", *common, "--part-number", "1",
                        "--copy-source", f"{BUCKET}/pc/cli-src5").stdout)["CopyPartResult"]["ETag"]
    e2 = json.loads(aws(stack, "s3api", "upload-part-copy", *common, "--part-number", "2", "--copy-source", f"{BUCKET}/pc/cli-src",
                        "--copy-source-range", f"bytes={5 * MIB}-{len(data) - 1}").stdout)["CopyPartResult"]["ETag"]
    parts = json.dumps({"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    aws(stack, "s3api", "complete-multipart-upload", "--bucket", BUCKET, "--key", "pc/cli-dst", "--upload-id", uid,
        "--multipart-upload", parts)
    out = tmp_path / "out"
    aws(stack, "s3", "cp", f"s3://{BUCKET}/pc/cli-dst", str(out))
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_part_number_get_and_head(stack):
    s3 = stack.boto()
    data = blob(11 * MIB + 777, "pn")
    p = 5 * MIB
    multipart(s3, "pn/multi", [data[:p], data[p:2 * p], data[2 * p:]])
    for n in (1, 2, 3):
        first, last = (n - 1) * p, min(n * p, len(data)) - 1
        g = s3.get_object(Bucket=BUCKET, Key="pn/multi", PartNumber=n)
        assert g["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert g["ContentRange"] == f"bytes {first}-{last}/{len(data)}"
        assert g["PartsCount"] == 3 and g["ContentLength"] == last - first + 1
        assert g["Body"].read() == data[first:last + 1]
        h = s3.head_object(Bucket=BUCKET, Key="pn/multi", PartNumber=n)
        assert h["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert (h["ContentLength"], h["PartsCount"], h["ContentRange"]) == (last - first + 1, 3, f"bytes {first}-{last}/{len(data)}")
    single = blob(70_000, "pn-single")
    s3.put_object(Bucket=BUCKET, Key="pn/single", Body=single)
    g = s3.get_object(Bucket=BUCKET, Key="pn/single", PartNumber=1)
    assert g["Body"].read() == single and g["ContentRange"] == f"bytes 0-{len(single) - 1}/{len(single)}"
    assert "PartsCount" not in g
    assert s3.head_object(Bucket=BUCKET, Key="pn/single", PartNumber=1)["ContentLength"] == len(single)
    # A one-part multipart upload is still multipart: PartsCount 1.
    multipart(s3, "pn/one", [single])
    g = s3.get_object(Bucket=BUCKET, Key="pn/one", PartNumber=1)
    assert g["Body"].read() == single and g["PartsCount"] == 1
    assert s3.head_object(Bucket=BUCKET, Key="pn/one", PartNumber=1)["PartsCount"] == 1
    # Beyond the last part: the backend's own answer (S3 and moto: 416 InvalidPartNumber;
    # Garage, like Ceph RGW: 400 InvalidPart).
    want = (400, "InvalidPart") if stack.backend.__class__.__name__ == "Garage" else (416, "InvalidPartNumber")
    for key, n in [("pn/multi", 4), ("pn/single", 2), ("pn/one", 2)]:
        with pytest.raises(s3.exceptions.ClientError) as e:
            s3.get_object(Bucket=BUCKET, Key=key, PartNumber=n)
        assert (e.value.response["ResponseMetadata"]["HTTPStatusCode"], e.value.response["Error"]["Code"]) == want, (key, n)
    with pytest.raises(s3.exceptions.ClientError) as e:
        s3.get_object(Bucket=BUCKET, Key="pn/none", PartNumber=1)
    assert e.value.response["Error"]["Code"] == "NoSuchKey"


def test_checksum_mode_returns_the_uploaded_checksum(http_stack):
    """Over HTTP the SDKs send x-amz-checksum-crc32 as a header: it is sealed with the object
    and returned with x-amz-checksum-mode: ENABLED, which boto3 then validates."""
    p = http_stack.proxy
    cfg = dict(request_checksum_calculation="when_supported", response_checksum_validation="when_supported")
    s3 = http_stack.boto(**cfg)
    data = blob(300_000, "ck")
    put = s3.put_object(Bucket=BUCKET, Key="ck/obj", Body=data)
    assert put["ChecksumCRC32"] == crc32_b64(data)
    g = s3.get_object(Bucket=BUCKET, Key="ck/obj", ChecksumMode="ENABLED")
    assert g["ChecksumCRC32"] == crc32_b64(data)
    assert g["Body"].read() == data  # boto3 validated the CRC32 while reading
    h = s3.head_object(Bucket=BUCKET, Key="ck/obj", ChecksumMode="ENABLED")
    assert h["ChecksumCRC32"] == crc32_b64(data)
    assert "ChecksumCRC32" not in s3.head_object(Bucket=BUCKET, Key="ck/obj")
    sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
    s3.put_object(Bucket=BUCKET, Key="ck/sha", Body=data, ChecksumSHA256=sha)
    assert s3.head_object(Bucket=BUCKET, Key="ck/sha", ChecksumMode="ENABLED")["ChecksumSHA256"] == sha
    # Copies keep it; ranges do not carry a whole-object checksum.
    s3.copy_object(Bucket=BUCKET, Key="ck/copy", CopySource={"Bucket": BUCKET, "Key": "ck/obj"})
    assert s3.head_object(Bucket=BUCKET, Key="ck/copy", ChecksumMode="ENABLED")["ChecksumCRC32"] == crc32_b64(data)
    r = s3.get_object(Bucket=BUCKET, Key="ck/obj", Range="bytes=0-9", ChecksumMode="ENABLED")
    assert r["Body"].read() == data[:10] and "ChecksumCRC32" not in r
    # The backend sees neither the plaintext checksum nor its value in clear metadata.
    raw = http_stack.direct.head_object(Bucket=BUCKET, Key="ck/obj", ChecksumMode="ENABLED")
    assert raw.get("ChecksumCRC32") != crc32_b64(data)
    assert crc32_b64(data) not in json.dumps(raw["ResponseMetadata"]["HTTPHeaders"])
    # A wrong checksum header is refused and nothing is stored.
    with pytest.raises(s3.exceptions.ClientError) as e:
        boto3.client("s3", endpoint_url=p.endpoint, region_name="us-east-1", aws_access_key_id=p.access_key,
                     aws_secret_access_key=p.secret_key,
                     config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **cfg)
                     ).put_object(Bucket=BUCKET, Key="ck/bad", Body=data[:1000], ChecksumCRC32=crc32_b64(b"other"))
    assert e.value.response["Error"]["Code"] == "BadDigest"
    assert "ck/bad" not in http_stack.raw_objects()


def test_checksum_defaults_over_https(stack):
    """The newest boto3 defaults over TLS (trailer checksums, checksum-mode on GET): every
    round trip works; a checksum is never one of the ciphertext."""
    s3 = stack.boto(request_checksum_calculation="when_supported", response_checksum_validation="when_supported")
    data = blob(200_000, "ck-https")
    put = s3.put_object(Bucket=BUCKET, Key="ck/https", Body=data)
    assert put["ChecksumCRC32"] == crc32_b64(data)
    g = s3.get_object(Bucket=BUCKET, Key="ck/https", ChecksumMode="ENABLED")
    assert g["Body"].read() == data
    assert g.get("ChecksumCRC32") in (None, crc32_b64(data))
    s3.put_object(Bucket=BUCKET, Key="ck/https-hdr", Body=data, ChecksumCRC32=crc32_b64(data))
    assert s3.head_object(Bucket=BUCKET, Key="ck/https-hdr", ChecksumMode="ENABLED")["ChecksumCRC32"] == crc32_b64(data)


def signed_chunked(stack, method, path, body, headers=None, pieces=3):
    """Sends `body` with Transfer-Encoding: chunked (no aws-chunked), signed by botocore with
    the SHA-256 of the whole body; returns (status, body)."""
    p = stack.proxy
    url = f"{p.endpoint}{path}"
    h = {"x-amz-content-sha256": hashlib.sha256(body).hexdigest(), "Transfer-Encoding": "chunked", **(headers or {})}
    req = botocore.awsrequest.AWSRequest(method=method, url=url, data=body, headers=h)
    botocore.auth.S3SigV4Auth(botocore.credentials.Credentials(p.access_key, p.secret_key), "s3", "us-east-1").add_auth(req)
    host, port = "127.0.0.1", p.port
    conn = (http.client.HTTPSConnection(host, port, context=ssl._create_unverified_context()) if p.tls
            else http.client.HTTPConnection(host, port))
    step = max(1, len(body) // pieces)
    conn.request(method, path, body=(body[i:i + step] for i in range(0, len(body), step)),
                 headers={k: v for k, v in req.headers.items() if k.lower() != "content-length"}, encode_chunked=True)
    r = conn.getresponse()
    out = (r.status, r.read())
    conn.close()
    return out


def test_plain_chunked_bodies(http_stack):
    """A signed Transfer-Encoding: chunked body is judged by its real hash (it used to be
    taken for an empty body: XAmzContentSHA256Mismatch): PUT, Complete and DeleteObjects
    sent chunked work."""
    s3 = http_stack.boto()
    data = blob(6 * MIB, "chunked")
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="chunked/mp")["UploadId"]
    e1 = s3.upload_part(Bucket=BUCKET, Key="chunked/mp", UploadId=uid, PartNumber=1, Body=data[:5 * MIB])["ETag"]
    e2 = s3.upload_part(Bucket=BUCKET, Key="chunked/mp", UploadId=uid, PartNumber=2, Body=data[5 * MIB:])["ETag"]
    xml = (f'<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{e1}</ETag></Part>'
           f'<Part><PartNumber>2</PartNumber><ETag>{e2}</ETag></Part></CompleteMultipartUpload>').encode()
    status, body = signed_chunked(http_stack, "POST", f"/{BUCKET}/chunked/mp?uploadId={uid}", xml)
    assert status == 200 and b"<CompleteMultipartUpload" in body, body
    assert s3.get_object(Bucket=BUCKET, Key="chunked/mp")["Body"].read() == data

    # A chunked PUT is collected (its length goes into the segment header), then encrypted.
    small = blob(300_000, "chunked-put")
    status, body = signed_chunked(http_stack, "PUT", f"/{BUCKET}/chunked/put", small, pieces=7)
    assert status == 200, body
    assert s3.get_object(Bucket=BUCKET, Key="chunked/put")["Body"].read() == small
    assert small[:1000] not in http_stack.raw_objects()["chunked/put"]
    # boto3 with Transfer-Encoding: chunked added (as ceph/s3-tests does).
    te = http_stack.boto()
    te.meta.events.register_first("before-sign.*.*", lambda request, **kw: request.headers.add_header("Transfer-Encoding", "chunked"))
    assert te.put_object(Bucket=BUCKET, Key="chunked/boto", Body=b"bar")["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_object(Bucket=BUCKET, Key="chunked/boto")["Body"].read() == b"bar"
    # Above the collection limit (16 MiB): 411, and nothing is stored.
    status, body = signed_chunked(http_stack, "PUT", f"/{BUCKET}/chunked/huge", b"z" * (17 * MIB), pieces=17)
    assert status == 411 and b"<Code>MissingContentLength</Code>" in body, body
    assert "chunked/huge" not in http_stack.raw_objects()

    s3.put_object(Bucket=BUCKET, Key="chunked/del", Body=b"x")
    delete = b'<Delete><Object><Key>chunked/del</Key></Object></Delete>'
    md5 = base64.b64encode(hashlib.md5(delete).digest()).decode()
    status, body = signed_chunked(http_stack, "POST", f"/{BUCKET}?delete", delete, {"Content-MD5": md5})
    if http_stack.backend.__class__.__name__ == "Moto":
        # moto's server itself refuses a chunked DeleteObjects ("Content-Length required").
        assert status == 411 and b"XAmzContentSHA256Mismatch" not in body, body
    else:
        assert status == 200 and b"<Deleted>" in body, body
        assert "chunked/del" not in http_stack.raw_objects()
    # A wrong hash is still refused.
    p = http_stack.proxy
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="chunked/mp")["UploadId"]
    req = botocore.awsrequest.AWSRequest(method="POST", url=f"{p.endpoint}/{BUCKET}/chunked/mp?uploadId={uid}", data=xml)
    botocore.auth.S3SigV4Auth(botocore.credentials.Credentials(p.access_key, p.secret_key), "s3", "us-east-1").add_auth(req)
    conn = http.client.HTTPConnection("127.0.0.1", p.port)
    forged = xml.replace(b"<PartNumber>2<", b"<PartNumber>3<")
    conn.request("POST", f"/{BUCKET}/chunked/mp?uploadId={uid}", body=iter([forged]),
                 headers={k: v for k, v in req.headers.items() if k.lower() != "content-length"}, encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 400 and b"XAmzContentSHA256Mismatch" in r.read()


def test_complete_twice_and_malformed(stack):
    s3 = stack.boto()
    data = blob(5 * MIB + 10, "twice")
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="mp/twice")["UploadId"]
    parts = [{"PartNumber": 1, "ETag": s3.upload_part(Bucket=BUCKET, Key="mp/twice", UploadId=uid, PartNumber=1, Body=data[:5 * MIB])["ETag"]},
             {"PartNumber": 2, "ETag": s3.upload_part(Bucket=BUCKET, Key="mp/twice", UploadId=uid, PartNumber=2, Body=data[5 * MIB:])["ETag"]}]
    # An empty or garbled body: MalformedXML, and the upload is still there.
    for body in (b"", b"not xml at all", b"<CompleteMultipartUpload></CompleteMultipartUpload>"):
        p = stack.proxy
        req = botocore.awsrequest.AWSRequest(method="POST", url=f"{p.endpoint}/{BUCKET}/mp/twice?uploadId={uid}", data=body)
        req.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
        botocore.auth.S3SigV4Auth(botocore.credentials.Credentials(p.access_key, p.secret_key), "s3", "us-east-1").add_auth(req)
        conn = http.client.HTTPSConnection("127.0.0.1", p.port, context=ssl._create_unverified_context())
        conn.request("POST", f"/{BUCKET}/mp/twice?uploadId={uid}", body=body, headers=dict(req.headers.items()))
        r = conn.getresponse()
        out = r.read()
        assert r.status == 400 and b"<Code>MalformedXML</Code>" in out, (body, out)
        conn.close()
    assert len(s3.list_parts(Bucket=BUCKET, Key="mp/twice", UploadId=uid)["Parts"]) == 2
    first = s3.complete_multipart_upload(Bucket=BUCKET, Key="mp/twice", UploadId=uid, MultipartUpload={"Parts": parts})
    direct_kind = stack.backend.__class__.__name__
    try:
        again = s3.complete_multipart_upload(Bucket=BUCKET, Key="mp/twice", UploadId=uid, MultipartUpload={"Parts": parts})
    except s3.exceptions.ClientError as e:
        # Only where the backend itself refuses a repeated Complete (Garage forgets the upload).
        assert direct_kind == "Garage", e.response
        assert e.response["Error"]["Code"] == "NoSuchUpload"
    else:
        assert again["ETag"] == first["ETag"]
    assert s3.get_object(Bucket=BUCKET, Key="mp/twice")["Body"].read() == data
    # An upload that never existed: NoSuchUpload (moto itself answers 500 there).
    with pytest.raises(s3.exceptions.ClientError) as e:
        s3.complete_multipart_upload(Bucket=BUCKET, Key="mp/never", UploadId="abc1234def",
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"1234"'}]})
    assert (e.value.response["ResponseMetadata"]["HTTPStatusCode"], e.value.response["Error"]["Code"]) == (404, "NoSuchUpload")
    # An upload without parts: MalformedXML for an empty part list, InvalidPart for a listed one.
    uid2 = s3.create_multipart_upload(Bucket=BUCKET, Key="mp/empty")["UploadId"]
    with pytest.raises(s3.exceptions.ClientError) as e:
        s3.complete_multipart_upload(Bucket=BUCKET, Key="mp/empty", UploadId=uid2,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"abc"'}]})
    assert e.value.response["Error"]["Code"] == "InvalidPart"


def test_versioned_sources(moto_stack):
    """Range GETs and UploadPartCopy of an older version read that version (moto versions)."""
    moto_stack.direct.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3 = moto_stack.boto()
    old, new = blob(5 * MIB, "v-old"), blob(5 * MIB, "v-new")
    v1 = s3.put_object(Bucket=BUCKET, Key="v/k", Body=old)["VersionId"]
    s3.put_object(Bucket=BUCKET, Key="v/k", Body=new)
    r = s3.get_object(Bucket=BUCKET, Key="v/k", VersionId=v1, Range="bytes=70000-70009")
    assert r["Body"].read() == old[70000:70010]
    assert s3.get_object(Bucket=BUCKET, Key="v/k", Range="bytes=70000-70009")["Body"].read() == new[70000:70010]
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="v/dst")["UploadId"]
    src = {"Bucket": BUCKET, "Key": "v/k", "VersionId": v1}
    e1 = s3.upload_part_copy(Bucket=BUCKET, Key="v/dst", UploadId=uid, PartNumber=1, CopySource=src)["CopyPartResult"]["ETag"]
    e2 = s3.upload_part_copy(Bucket=BUCKET, Key="v/dst", UploadId=uid, PartNumber=2, CopySourceRange="bytes=1000-1999",
                             CopySource=src)["CopyPartResult"]["ETag"]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="v/dst", UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert s3.get_object(Bucket=BUCKET, Key="v/dst")["Body"].read() == old + old[1000:2000]


def test_complete_must_name_parts_one_to_n(stack):
    """Issue 13 item 3: segment N of an object is bound to part number N, so a Complete
    naming {1,3} or {2,3} of three uploaded parts is refused (400 InvalidPart, the rule in
    the message) and completes nothing; naming {1,2} succeeds and the object is exactly
    parts 1+2, however part 3 (left out) looks."""
    s3 = stack.boto()
    key = "mp/subset"
    # Part 3 is larger than part 1: the layout rule holds only for the parts named.
    data = {1: blob(5 * MIB, "subset-1"), 2: blob(5 * MIB, "subset-2"), 3: blob(6 * MIB, "subset-3")}
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    etags = {n: s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=n, Body=d)["ETag"] for n, d in data.items()}

    def complete(numbers):
        return s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid,
                                            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in numbers]})

    for numbers, missing in [((1, 3), 2), ((2, 3), 1), ((2,), 1)]:
        with pytest.raises(s3.exceptions.ClientError) as e:
            complete(numbers)
        err = e.value.response
        assert (err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Code"]) == (400, "InvalidPart"), (numbers, err)
        assert "1..N without gaps" in err["Error"]["Message"] and f"part {missing} is not named" in err["Error"]["Message"], err
        # Nothing completed: no object, and the upload keeps its three parts.
        assert stack.stored(key) is None
        assert [p["PartNumber"] for p in s3.list_parts(Bucket=BUCKET, Key=key, UploadId=uid)["Parts"]] == [1, 2, 3]
    with pytest.raises(s3.exceptions.ClientError) as e:
        complete((2, 1))
    assert e.value.response["Error"]["Code"] == "InvalidPartOrder"
    assert stack.stored(key) is None

    complete((1, 2))
    got = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert len(got) == 10 * MIB and hashlib.sha256(got).digest() == hashlib.sha256(data[1] + data[2]).digest()
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == 10 * MIB
