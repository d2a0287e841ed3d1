"""XML request bodies are checked before anything reaches the backend (issue 13 item 5):
deeply nested, oversized or off-schema DeleteObjects / CompleteMultipartUpload bodies and
deep configuration bodies answer 400 MalformedXML, in the encrypting chain and in a
pass-through chain; the backend never sees them (Garage 2.5 dies of a 100,000-deep body)
and nothing is deleted or completed. Real clients' bodies pass unchanged."""

import base64
import hashlib
import http.client
import ssl
import tempfile

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest

import harness
from conftest import BUCKET
from test_parts import aws
from test_more_clients import rclone

DEEP = 100_000


def signed(proxy, method, path, body, headers=None):
    """One SigV4-signed request (payload hash signed, Content-MD5 as DeleteObjects needs);
    returns (status, body)."""
    h = {"x-amz-content-sha256": hashlib.sha256(body).hexdigest(),
         "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode(), **(headers or {})}
    req = botocore.awsrequest.AWSRequest(method=method, url=f"{proxy.endpoint}{path}", data=body, headers=h)
    botocore.auth.S3SigV4Auth(botocore.credentials.Credentials(proxy.access_key, proxy.secret_key), "s3", "us-east-1").add_auth(req)
    conn = (http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ssl._create_unverified_context(), timeout=60) if proxy.tls
            else http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60))
    conn.request(method, path, body=body, headers=dict(req.headers.items()))
    r = conn.getresponse()
    out = (r.status, r.read())
    conn.close()
    return out


def nested(name, depth, inner=""):
    return f"<{name}>" * depth + inner + f"</{name}>" * depth


def delete_body(keys, quiet=False):
    objs = "".join(f"<Object><Key>{k}</Key></Object>" for k in keys)
    return f'<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{objs}{"<Quiet>true</Quiet>" if quiet else ""}</Delete>'.encode()


def refused(proxy, method, path, body):
    status, out = signed(proxy, method, path, body)
    assert status == 400 and b"<Code>MalformedXML</Code>" in out, (body[:200], status, out)


def backend_alive(stack):
    """The backend still answers (a deep body kills Garage 2.5)."""
    assert stack.direct.list_objects_v2(Bucket=BUCKET, MaxKeys=1)["ResponseMetadata"]["HTTPStatusCode"] == 200


def bad_bodies_are_refused(stack, proxy):
    """Every refused body leaves the objects and the upload as they were."""
    s3 = stack.direct
    keys = [f"xml/keep/{i}" for i in range(3)]
    for k in keys:
        s3.put_object(Bucket=BUCKET, Key=k, Body=b"kept")
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="xml/mp")["UploadId"]
    etag = s3.upload_part(Bucket=BUCKET, Key="xml/mp", UploadId=uid, PartNumber=1, Body=b"p" * 1000)["ETag"]

    deletes = [
        # 100,000-deep <Object> inside and outside <Delete>
        f'<Delete>{nested("Object", DEEP, "<Key>xml/keep/0</Key>")}</Delete>'.encode(),
        nested("Object", DEEP).encode(),
        # over 1,000 keys (the first ones exist), no key, unknown elements, text, a DTD
        delete_body(keys + [f"xml/none/{i}" for i in range(1001)]),
        b"<Delete></Delete>",
        b"<Delete><Object><Key>xml/keep/0</Key><Evil/></Object></Delete>",
        b"<Delete><Object><Key>xml/keep/0</Key></Object><Object><Key>xml/keep/1</Key><Key>xml/keep/2</Key></Object></Delete>",
        b"<Delete>text<Object><Key>xml/keep/0</Key></Object></Delete>",
        b'<!DOCTYPE Delete [<!ENTITY k "xml/keep/0">]><Delete><Object><Key>&k;</Key></Object></Delete>',
        b"<Delete><Object><Key>xml/keep/0</Key></Object>",
    ]
    for body in deletes:
        refused(proxy, "POST", f"/{BUCKET}?delete", body)
    completes = [
        f"<CompleteMultipartUpload>{nested('Part', DEEP)}</CompleteMultipartUpload>".encode(),
        nested("Part", DEEP).encode(),
        f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag><Size>1</Size></Part></CompleteMultipartUpload>".encode(),
    ]
    for body in completes:
        refused(proxy, "POST", f"/{BUCKET}/xml/mp?uploadId={uid}", body)
    # Configuration bodies: a depth and a size limit. (Only operations the backend
    # implements: Garage answers an unimplemented one from its header, before any body.)
    refused(proxy, "PUT", f"/{BUCKET}?cors", f"<CORSConfiguration>{nested('CORSRule', 50_000)}</CORSConfiguration>".encode())
    refused(proxy, "PUT", f"/{BUCKET}?lifecycle", nested("Rule", 17).encode())
    refused(proxy, "PUT", f"/{BUCKET}?lifecycle", b"<LifecycleConfiguration>" + b" " * (3 << 20) + b"</LifecycleConfiguration>")
    if stack.backend.__class__.__name__ == "Moto":
        refused(proxy, "PUT", f"/{BUCKET}/xml/keep/0?tagging", nested("Tagging", DEEP).encode())

    backend_alive(stack)
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="xml/keep/").get("Contents", [])}
    assert listed == set(keys)
    assert [p["PartNumber"] for p in s3.list_parts(Bucket=BUCKET, Key="xml/mp", UploadId=uid)["Parts"]] == [1]
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="xml/mp")
    s3.abort_multipart_upload(Bucket=BUCKET, Key="xml/mp", UploadId=uid)
    s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys]})


def test_bad_xml_bodies_are_refused_before_the_backend(stack):
    bad_bodies_are_refused(stack, stack.proxy)


@pytest.fixture(scope="module")
def pass_proxy(stack):
    """A pass-through proxy (no crypto) in front of the same backend."""
    d = tempfile.mkdtemp(prefix="pass-", dir=stack.workdir)
    p = harness.Proxy(d, stack.backend, None, tls=False, name="proxy-pass",
                      filters=["sigv4", "allowlist", "resign"], allowed_buckets=[BUCKET])
    yield p
    p.stop()


def test_pass_through_chain_refuses_them_too(stack, pass_proxy):
    bad_bodies_are_refused(stack, pass_proxy)
    # And a real body still goes through: 1,000 keys.
    keys = [f"xml/pass/{i:04}" for i in range(1000)]
    for k in keys[:5]:
        stack.direct.put_object(Bucket=BUCKET, Key=k, Body=b"x")
    status, out = signed(pass_proxy, "POST", f"/{BUCKET}?delete", delete_body(keys))
    assert status == 200 and out.count(b"<Deleted>") == 1000, out[:500]
    assert "Contents" not in stack.direct.list_objects_v2(Bucket=BUCKET, Prefix="xml/pass/")


def test_real_clients_delete_objects(stack, tmp_path):
    """boto3 delete_objects with 1,000 keys (verbose and quiet), aws s3 rm --recursive,
    rclone delete and the PBS client's DeleteObjects pass unchanged."""
    s3 = stack.boto()
    keys = [f"xml/boto/{i:04} &<>" for i in range(1000)]
    for k in keys[:10]:
        s3.put_object(Bucket=BUCKET, Key=k, Body=b"x")
    r = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys]})
    assert len(r["Deleted"]) == 1000 and not r.get("Errors"), r.get("Errors")
    for k in keys[:10]:
        s3.put_object(Bucket=BUCKET, Key=k, Body=b"x")
    r = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
    assert not r.get("Errors"), r  # (moto lists the deleted keys even when quiet)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="xml/boto/")

    for i in range(5):
        s3.put_object(Bucket=BUCKET, Key=f"xml/cli/{i}", Body=b"x")
    aws(stack, "s3", "rm", "--recursive", f"s3://{BUCKET}/xml/cli/")
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="xml/cli/")

    for i in range(5):
        s3.put_object(Bucket=BUCKET, Key=f"xml/rclone/{i}", Body=b"x")
    rclone(stack, "delete", f"px:{BUCKET}/xml/rclone")
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="xml/rclone/")

    c = stack.client()
    pbs_keys = [f"store/.chunks/xml0/{i:064x}" for i in range(3)]
    for k in pbs_keys:
        assert c.put_object(k, b"chunk").status == 200
    r = c.delete_objects(pbs_keys)
    assert r.status == 200 and r.body.count(b"<Deleted>") == 3, r
    assert all(stack.stored(k) is None for k in pbs_keys)


def test_configuration_bodies_from_clients_pass(stack):
    """Configuration bodies as boto3 sends them still reach the backend: bucket CORS and
    lifecycle, object tagging (moto: Garage does not implement it)."""
    s3 = stack.boto()
    cors = {"CORSRules": [{"AllowedMethods": ["GET", "PUT"], "AllowedOrigins": ["https://example.com"], "MaxAgeSeconds": 60}]}
    s3.put_bucket_cors(Bucket=BUCKET, CORSConfiguration=cors)
    assert s3.get_bucket_cors(Bucket=BUCKET)["CORSRules"][0]["AllowedOrigins"] == ["https://example.com"]
    s3.delete_bucket_cors(Bucket=BUCKET)
    rule = {"ID": "expire-tmp", "Status": "Enabled", "Filter": {"Prefix": "xml/tmp/"}, "Expiration": {"Days": 3}}
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": [rule]})
    assert s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"][0]["ID"] == "expire-tmp"
    s3.delete_bucket_lifecycle(Bucket=BUCKET)
    if stack.backend.__class__.__name__ != "Moto":
        return
    # A canned ACL comes as a header, without a body: it stays bodyless.
    s3.put_object(Bucket=BUCKET, Key="xml/acl", Body=b"x")
    s3.put_object_acl(Bucket=BUCKET, Key="xml/acl", ACL="private")
    s3.put_object(Bucket=BUCKET, Key="xml/tagged", Body=b"x")
    tags = {"TagSet": [{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2 = 3"}]}
    s3.put_object_tagging(Bucket=BUCKET, Key="xml/tagged", Tagging=tags)
    got = s3.get_object_tagging(Bucket=BUCKET, Key="xml/tagged")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in got) == [("a", "1"), ("b", "2 = 3")]


def test_complete_with_part_checksums(stack):
    """boto3 multipart with CRC32 part checksums: the Complete body names them."""
    s3 = stack.boto()
    data = [b"a" * (5 * 1024 * 1024), b"tail"]
    uid = s3.create_multipart_upload(Bucket=BUCKET, Key="xml/ck", ChecksumAlgorithm="CRC32")["UploadId"]
    parts = []
    for n, d in enumerate(data, 1):
        r = s3.upload_part(Bucket=BUCKET, Key="xml/ck", UploadId=uid, PartNumber=n, Body=d, ChecksumAlgorithm="CRC32")
        parts.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumCRC32": r["ChecksumCRC32"]})
    s3.complete_multipart_upload(Bucket=BUCKET, Key="xml/ck", UploadId=uid, MultipartUpload={"Parts": parts})
    assert s3.get_object(Bucket=BUCKET, Key="xml/ck")["Body"].read() == b"".join(data)


def test_delete_objects_with_version_ids(moto_stack):
    """boto3 delete_objects naming versions (moto versions; Garage has none)."""
    moto_stack.direct.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3 = moto_stack.boto()
    old = s3.put_object(Bucket=BUCKET, Key="xml/ver", Body=b"old")["VersionId"]
    s3.put_object(Bucket=BUCKET, Key="xml/ver", Body=b"new")
    r = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "xml/ver", "VersionId": old}], "Quiet": False})
    assert r["Deleted"] == [{"Key": "xml/ver", "VersionId": old}] and not r.get("Errors"), r
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix="xml/ver").get("Versions", [])
    assert [v["VersionId"] for v in versions if v["VersionId"] == old] == []
    assert s3.get_object(Bucket=BUCKET, Key="xml/ver")["Body"].read() == b"new"
