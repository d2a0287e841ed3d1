"""Listing and copy-header quirks absorbed (issue 18, item 3), in front of a real Garage.

A relay between the proxy and Garage imitates providers that leave fields out of listing
answers (`Name`, `Prefix`, `KeyCount`, `MaxKeys`, `IsTruncated`, markers, echoes, and
`StorageClass` as Google Cloud Storage does; the next token moved after the entries) and
one that lost the Content-Type of objects copied with `x-amz-metadata-directive: REPLACE`.
boto3, aws-cli, rclone and the PBS-faithful client, over TLS, page through listings with
small max-keys and see complete answers in S3's order, plaintext sizes, and the right
Content-Type. The same relay without `backend.normalize_listings` shows the quirks reach
clients (the imitation is real)."""

import json
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET

import pytest

import quirks
from conftest import BUCKET, Stack

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# Plaintext sizes: the backend stores more (headers and tags per chunk).
OBJECTS = {f"ls/{c}": n for c, n in zip("abcdefg", (1, 1000, 65536, 65537, 200_000, 3, 77))}
OBJECTS["ls/sub/deep"] = 12
OBJECTS["ls/with space+plus"] = 5


def arm_quirks(relay):
    """Listing fields left out of every bucket-level GET (object listings, uploads) and of
    ListParts; Content-Type left out of answers about `ct-` objects; a CopyObject reaching
    the backend would be refused (it never does: the proxy copies by GET and PUT)."""
    strip = quirks.strip_listing_fields()
    return {
        "listing": relay.arm(method="GET", path_contains="/?", rewrite_response=strip, times=10**6),
        "parts": relay.arm(method="GET", path_contains="?uploadId=", rewrite_response=strip, times=10**6),
        "get": relay.arm(method="GET", path_contains="/ct-", rewrite_response=quirks.drop_headers("content-type"), times=10**6),
        "head": relay.arm(method="HEAD", path_contains="/ct-", rewrite_response=quirks.drop_headers("content-type"), times=10**6),
        "copy": relay.arm(method="PUT", header="x-amz-copy-source", status=501, code="NotImplemented", times=10**6),
    }


def fill(stack):
    s3 = stack.boto()
    for k, n in OBJECTS.items():
        s3.put_object(Bucket=BUCKET, Key=k, Body=os.urandom(n))
    return s3


@pytest.fixture(scope="module")
def quirky(workroot):
    d = tempfile.mkdtemp(prefix="quirks-", dir=workroot)
    s = Stack(d, "garage", relay=True, backend_options={"profile": "garage"})
    s.faults = arm_quirks(s.relay)
    fill(s)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def asking(workroot):
    """A proxy with a former chunk size declared: ambiguous entries make it fetch listing
    pages itself (and HEAD those entries) instead of rewriting the backend's answer."""
    d = tempfile.mkdtemp(prefix="quirks-asking-", dir=workroot)
    s = Stack(d, "garage", relay=True, backend_options={"profile": "garage"},
              encryption={"chunk_size": 65536, "former_chunk_sizes": [16384]})
    s.faults = arm_quirks(s.relay)
    fill(s)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def unnormalised(workroot):
    d = tempfile.mkdtemp(prefix="quirks-off-", dir=workroot)
    s = Stack(d, "garage", relay=True, backend_options={"profile": "garage", "normalize_listings": False})
    s.faults = arm_quirks(s.relay)
    fill(s)
    yield s
    s.stop()


def test_boto3_pages_are_complete(quirky):
    s3 = quirky.boto()
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="ls/", PaginationConfig={"PageSize": 3}))
    assert quirky.faults["listing"].fired >= len(pages) >= 3
    seen = {}
    for i, page in enumerate(pages):
        assert page["Name"] == BUCKET and page["Prefix"] == "ls/" and page["MaxKeys"] == 3, page
        assert page["KeyCount"] == len(page.get("Contents", [])) + len(page.get("CommonPrefixes", []))
        assert page["IsTruncated"] == (i < len(pages) - 1), (i, page)
        for o in page["Contents"]:
            assert o["StorageClass"] == "STANDARD", o
            seen[o["Key"]] = o["Size"]
    assert seen == OBJECTS
    # Delimiter, start-after and the token are echoed; the encoding type (boto3 asks for
    # url) is Garage's own.
    r = s3.list_objects_v2(Bucket=BUCKET, Prefix="ls/", Delimiter="/", StartAfter="ls/c", MaxKeys=4)
    assert r["Delimiter"] == "/" and r["EncodingType"] == "url" and r["StartAfter"] == "ls/c", r
    assert [o["Key"] for o in r["Contents"]] == ["ls/d", "ls/e", "ls/f", "ls/g"] and r["IsTruncated"] and r["KeyCount"] == 4
    r2 = s3.list_objects_v2(Bucket=BUCKET, Prefix="ls/", Delimiter="/", ContinuationToken=r["NextContinuationToken"], MaxKeys=4)
    assert r2["ContinuationToken"] == r["NextContinuationToken"] and not r2["IsTruncated"]
    assert [p["Prefix"] for p in r2["CommonPrefixes"]] == ["ls/sub/"] and r2["KeyCount"] == 2, r2
    # ListObjects (v1): pages continue only while IsTruncated says so. Without the backend's
    # word, a full page counts as truncated (one more, empty page; never a lost key).
    keys = []
    for page in s3.get_paginator("list_objects").paginate(Bucket=BUCKET, Prefix="ls/", PaginationConfig={"PageSize": 3}):
        assert page["Name"] == BUCKET and page["MaxKeys"] == 3 and "Marker" in page, page
        keys += [o["Key"] for o in page.get("Contents", []) if o["StorageClass"] == "STANDARD"]
    assert sorted(keys) == sorted(OBJECTS)


def test_boto3_parts_and_uploads_are_complete(quirky):
    s3 = quirky.boto()
    mp = s3.create_multipart_upload(Bucket=BUCKET, Key="mp/obj")
    uid = mp["UploadId"]
    try:
        for n in (1, 2, 3):
            s3.upload_part(Bucket=BUCKET, Key="mp/obj", UploadId=uid, PartNumber=n, Body=b"x" * (1000 * n))
        r = s3.list_parts(Bucket=BUCKET, Key="mp/obj", UploadId=uid, MaxParts=2)
        assert quirky.faults["parts"].fired >= 1
        assert (r["Bucket"], r["Key"], r["UploadId"], r["MaxParts"], r["StorageClass"]) == (BUCKET, "mp/obj", uid, 2, "STANDARD"), r
        assert r["IsTruncated"] and r["NextPartNumberMarker"] == 2 and r["PartNumberMarker"] == 0
        assert [(p["PartNumber"], p["Size"]) for p in r["Parts"]] == [(1, 1000), (2, 2000)]
        r = s3.list_parts(Bucket=BUCKET, Key="mp/obj", UploadId=uid, MaxParts=2, PartNumberMarker=2)
        assert not r["IsTruncated"] and [(p["PartNumber"], p["Size"]) for p in r["Parts"]] == [(3, 3000)], r
        u = s3.list_multipart_uploads(Bucket=BUCKET, Prefix="mp/")
        assert u["Bucket"] == BUCKET and u["MaxUploads"] == 1000 and u["IsTruncated"] is False and u["Prefix"] == "mp/", u
        assert [(x["Key"], x["UploadId"], x["StorageClass"]) for x in u["Uploads"]] == [("mp/obj", uid, "STANDARD")]
    finally:
        s3.abort_multipart_upload(Bucket=BUCKET, Key="mp/obj", UploadId=uid)


def test_pbs_client_gets_the_full_shape_in_order(quirky):
    """PBS's parser: the scalar fields, in S3's order, before the entries; each entry
    complete (Key, LastModified, ETag, Size, StorageClass)."""
    r = quirky.client().list_objects_v2("ls/")
    assert r.status == 200 and r.headers.get("content-type") == "application/xml", r
    root = ET.fromstring(r.body)
    names = [c.tag.replace(NS, "") for c in root]
    assert names[:5] == ["Name", "Prefix", "KeyCount", "MaxKeys", "IsTruncated"], names
    assert set(names[5:]) == {"Contents"}
    assert [root.find(NS + n).text for n in ("Name", "Prefix", "KeyCount", "MaxKeys", "IsTruncated")] == [BUCKET, "ls/", str(len(OBJECTS)), "1000", "false"]
    listed = {}
    for c in root.findall(NS + "Contents"):
        assert [f.tag.replace(NS, "") for f in c] == ["Key", "LastModified", "ETag", "Size", "StorageClass"]
        listed[c.find(NS + "Key").text] = int(c.find(NS + "Size").text)
    assert listed == OBJECTS


def aws(stack, *args):
    p = stack.proxy
    env = dict(os.environ, AWS_ACCESS_KEY_ID=p.access_key, AWS_SECRET_ACCESS_KEY=p.secret_key, AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    env.pop("AWS_CA_BUNDLE", None)
    r = subprocess.run(["aws", "--endpoint-url", p.endpoint, "--no-verify-ssl", *args], env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    return r.stdout.decode()


def test_aws_cli_lists_every_page(quirky):
    for api in ("list-objects-v2", "list-objects"):
        out = json.loads(aws(quirky, "s3api", api, "--bucket", BUCKET, "--prefix", "ls/", "--page-size", "3"))
        assert {o["Key"]: o["Size"] for o in out["Contents"]} == OBJECTS, api
        assert all(o["StorageClass"] == "STANDARD" for o in out["Contents"])
    lines = aws(quirky, "s3", "ls", "--recursive", "--page-size", "3", f"s3://{BUCKET}/ls/").splitlines()
    assert {l.split(None, 3)[3]: int(l.split(None, 3)[2]) for l in lines} == OBJECTS


def rclone(stack, *args):
    p = stack.proxy
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"RCLONE_CONFIG_PX_TYPE": "s3", "RCLONE_CONFIG_PX_PROVIDER": "Other", "RCLONE_CONFIG_PX_ENDPOINT": p.endpoint,
                "RCLONE_CONFIG_PX_ACCESS_KEY_ID": p.access_key, "RCLONE_CONFIG_PX_SECRET_ACCESS_KEY": p.secret_key,
                "RCLONE_CONFIG_PX_REGION": "us-east-1", "RCLONE_CONFIG_PX_FORCE_PATH_STYLE": "true"})
    r = subprocess.run(["rclone", "--config", "/dev/null", "--s3-no-check-bucket", "--no-check-certificate", *args],
                       capture_output=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    return r.stdout.decode()


def test_rclone_lists_every_page(quirky):
    for version in ("2", "1"):
        out = json.loads(rclone(quirky, "lsjson", "-R", "--files-only", "--s3-list-chunk", "3", "--s3-list-version", version, f"px:{BUCKET}/ls"))
        assert {"ls/" + o["Path"]: o["Size"] for o in out} == OBJECTS, version


def test_content_type_after_copies(quirky):
    s3 = quirky.boto()
    s3.put_object(Bucket=BUCKET, Key="ct-src", Body=b"typed", ContentType="text/x-source", Metadata={"m": "1"})
    s3.copy_object(Bucket=BUCKET, Key="ct-replaced", CopySource={"Bucket": BUCKET, "Key": "ct-src"},
                   MetadataDirective="REPLACE", ContentType="text/x-replaced", Metadata={"m": "2"})
    s3.copy_object(Bucket=BUCKET, Key="ct-kept", CopySource={"Bucket": BUCKET, "Key": "ct-src"})
    s3.copy_object(Bucket=BUCKET, Key="ct-untyped", CopySource={"Bucket": BUCKET, "Key": "ct-src"}, MetadataDirective="REPLACE")
    for key, ctype, meta in [("ct-replaced", "text/x-replaced", {"m": "2"}), ("ct-kept", "text/x-source", {"m": "1"}),
                             ("ct-untyped", "binary/octet-stream", {})]:
        got = s3.get_object(Bucket=BUCKET, Key=key)
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert (got["ContentType"], head["ContentType"], got["Metadata"]) == (ctype, ctype, meta), key
        assert got["Body"].read() == b"typed" and head["ContentLength"] == 5
    # The backend's answers really lacked Content-Type, and no CopyObject ever reached it.
    assert quirky.faults["get"].fired >= 3 and quirky.faults["head"].fired >= 3
    assert quirky.faults["copy"].fired == 0
    # aws-cli's REPLACE copy, rclone's server-side copy, PBS's rename of a bad chunk.
    aws(quirky, "s3", "cp", f"s3://{BUCKET}/ct-src", f"s3://{BUCKET}/ct-cli", "--content-type", "text/x-cli", "--metadata-directive", "REPLACE")
    assert json.loads(aws(quirky, "s3api", "head-object", "--bucket", BUCKET, "--key", "ct-cli"))["ContentType"] == "text/x-cli"
    rclone(quirky, "copyto", f"px:{BUCKET}/ct-src", f"px:{BUCKET}/ct-rclone")
    assert json.loads(rclone(quirky, "lsjson", "--stat", f"px:{BUCKET}/ct-rclone"))["MimeType"] == "text/x-source"
    pbs = quirky.client()
    assert pbs.put_object("ct-chunk", b"chunk").status == 200
    assert pbs.copy_object("ct-chunk", "ct-chunk.0.bad").status == 200
    r = pbs.get_object("ct-chunk.0.bad")
    assert r.status == 200 and r.body == b"chunk" and r.headers.get("content-type") == "application/octet-stream", r
    assert quirky.faults["copy"].fired == 0


def test_pages_the_proxy_fetches_itself_are_complete(asking):
    s3 = asking.boto()
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="ls/", PaginationConfig={"PageSize": 4}))
    assert len(pages) == 3 and asking.faults["listing"].fired >= 3
    assert any(m == "HEAD" for m, _ in asking.relay.seen), "no entry was ambiguous: the request-phase path was not taken"
    seen = {}
    for i, page in enumerate(pages):
        assert (page["Name"], page["Prefix"], page["MaxKeys"], page["IsTruncated"]) == (BUCKET, "ls/", 4, i < 2), page
        assert page["KeyCount"] == len(page["Contents"])
        seen.update({o["Key"]: o["Size"] for o in page["Contents"] if o["StorageClass"] == "STANDARD"})
    assert seen == OBJECTS
    out = json.loads(rclone(asking, "lsjson", "-R", "--files-only", "--s3-list-chunk", "4", f"px:{BUCKET}/ls"))
    assert {"ls/" + o["Path"]: o["Size"] for o in out} == OBJECTS


def test_without_normalisation_the_quirks_reach_clients(unnormalised):
    """The control: the same relay, `backend.normalize_listings: false`."""
    s3 = unnormalised.boto()
    r = s3.list_objects_v2(Bucket=BUCKET, Prefix="ls/", MaxKeys=3)
    assert "KeyCount" not in r and "Name" not in r and "StorageClass" not in r["Contents"][0], r
    # A v1 client stops after the first page: keys are lost.
    keys = [o["Key"] for page in s3.get_paginator("list_objects").paginate(Bucket=BUCKET, Prefix="ls/", PaginationConfig={"PageSize": 3})
            for o in page["Contents"]]
    assert len(keys) == 3
