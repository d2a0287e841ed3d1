"""Versioned buckets, Object Lock and archive tiers through the proxy (issue 16).

moto supports versioning and Object Lock; Garage has neither, so the tests that need them
run on moto, and the ones that apply to every bucket (GetObjectAttributes, RestoreObject
passed through, no x-amz-version-id without versioning) run on both."""

import os
import re
import tempfile
import time
from datetime import datetime, timedelta, timezone

import pytest
from botocore.exceptions import ClientError

from conftest import BUCKET, OTHER as OTHER_BUCKET, Stack
from test_rotation import admin

VB = "versioned-bucket"
LB = "locked-bucket"
MiB = 1 << 20


@pytest.fixture(scope="module")
def vstack(workroot):
    d = tempfile.mkdtemp(prefix="versions-", dir=workroot)
    s = Stack(d, "moto", tls=False, relay=True, allowed_buckets=[BUCKET, VB, LB])
    s.direct.create_bucket(Bucket=VB)
    # Versioning is switched on through the proxy (a bucket sub-resource, passed on).
    s.boto().put_bucket_versioning(Bucket=VB, VersioningConfiguration={"Status": "Enabled"})
    yield s
    s.stop()


def error_of(call):
    with pytest.raises(ClientError) as e:
        call()
    r = e.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"]


def multipart(s3, bucket, key, parts, **kw):
    up = s3.create_multipart_upload(Bucket=bucket, Key=key, **kw)
    done = [{"PartNumber": i + 1, "ETag": s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=i + 1, Body=p)["ETag"]}
            for i, p in enumerate(parts)]
    return s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"], MultipartUpload={"Parts": done})


def all_versions(s3, **kw):
    """Every version and delete marker, paged with KeyMarker / VersionIdMarker."""
    seen, markers, pages = [], {}, 0
    while True:
        page = s3.list_object_versions(Bucket=VB, **markers, **kw)
        pages += 1
        seen += [(v["Key"], v["VersionId"], v["Size"], v["ETag"], v["IsLatest"]) for v in page.get("Versions", [])]
        seen += [(m["Key"], m["VersionId"], None, None, m["IsLatest"]) for m in page.get("DeleteMarkers", [])]
        if not page["IsTruncated"]:
            return seen, pages
        markers = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}


def test_versions_are_listed_and_read_as_plaintext(vstack):
    s3 = vstack.boto()
    assert s3.get_bucket_versioning(Bucket=VB)["Status"] == "Enabled"
    k = "docs/a.bin"
    written = {}
    for n in (1000, 200_000, 0):
        data = os.urandom(n)
        put = s3.put_object(Bucket=VB, Key=k, Body=data)
        assert put["VersionId"]
        written[put["VersionId"]] = (data, put["ETag"])
    big = os.urandom(6 * MiB + 777)
    done = multipart(s3, VB, k, [big[:5 * MiB], big[5 * MiB:]])
    assert done["VersionId"]
    written[done["VersionId"]] = (big, done["ETag"])
    s3.put_object(Bucket=VB, Key="docs/sub/x", Body=b"x" * 10)
    gone = s3.delete_object(Bucket=VB, Key=k)
    assert gone["DeleteMarker"] and gone["VersionId"]

    listed = s3.list_object_versions(Bucket=VB, Prefix="docs/")
    versions = {v["VersionId"]: v for v in listed["Versions"] if v["Key"] == k}
    assert set(versions) == set(written)
    for vid, (data, etag) in written.items():
        # The listing, HEAD and GET of every version agree on the plaintext size and ETag.
        assert (versions[vid]["Size"], versions[vid]["ETag"]) == (len(data), etag), vid
        head = s3.head_object(Bucket=VB, Key=k, VersionId=vid)
        assert (head["ContentLength"], head["ETag"], head["VersionId"]) == (len(data), etag, vid)
        got = s3.get_object(Bucket=VB, Key=k, VersionId=vid)
        assert got["Body"].read() == data and got["VersionId"] == vid
    markers = [m for m in listed["DeleteMarkers"] if m["Key"] == k]
    assert [(m["VersionId"], m["IsLatest"]) for m in markers] == [(gone["VersionId"], True)]
    # The backend lists ciphertext sizes; the proxy never shows them.
    raw = vstack.direct.list_object_versions(Bucket=VB, Prefix="docs/")
    raw_sizes = {v["VersionId"]: v["Size"] for v in raw["Versions"]}
    assert all(raw_sizes[vid] > len(data) for vid, (data, _) in written.items())

    # The latest is a delete marker: GET without a version is NoSuchKey, as on S3.
    assert error_of(lambda: s3.get_object(Bucket=VB, Key=k))[0] == "NoSuchKey"

    by_delimiter = s3.list_object_versions(Bucket=VB, Prefix="docs/", Delimiter="/")
    assert [p["Prefix"] for p in by_delimiter["CommonPrefixes"]] == ["docs/sub/"]
    assert {v["Key"] for v in by_delimiter["Versions"]} == {k}

    everything, _ = all_versions(s3, Prefix="docs/")
    paged, pages = all_versions(s3, Prefix="docs/", MaxKeys=2)
    assert pages >= 3 and sorted(paged, key=str) == sorted(everything, key=str)
    assert len(everything) == len(written) + 2


def test_listings_of_keys_a_backend_did_not_encode_keep_them(vstack):
    """moto's ListObjectVersions and ListMultipartUploads ignore `encoding-type=url` (boto3
    asks for it): the proxy must not claim `EncodingType: url` over the raw keys, or boto3
    decodes `foo+1/bar` into `foo 1/bar` and a DeleteObjects of what it listed deletes
    nothing (s3-tests left such buckets undeletable). An empty delimiter is not echoed."""
    s3 = vstack.boto()
    keys = ["enc/foo+1/bar", "enc/asdf+b", "enc/c%ab", "enc/anyfilename%25.txt", "enc/a b"]
    for k in keys:
        s3.put_object(Bucket=VB, Key=k, Body=b"x")
    listed = s3.list_object_versions(Bucket=VB, Prefix="enc/")
    assert sorted(v["Key"] for v in listed["Versions"]) == sorted(keys), listed
    ups = [s3.create_multipart_upload(Bucket=VB, Key=k)["UploadId"] for k in keys[:2]]
    try:
        uploads = s3.list_multipart_uploads(Bucket=VB, Prefix="enc/")
        assert sorted(u["Key"] for u in uploads["Uploads"]) == sorted(keys[:2]), uploads
    finally:
        for k, u in zip(keys, ups):
            s3.abort_multipart_upload(Bucket=VB, Key=k, UploadId=u)
    objects = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in listed["Versions"]]
    gone = s3.delete_objects(Bucket=VB, Delete={"Objects": objects})
    assert len(gone["Deleted"]) == len(keys) and not gone.get("Errors"), gone
    assert "Versions" not in s3.list_object_versions(Bucket=VB, Prefix="enc/")
    assert "Delimiter" not in s3.list_objects_v2(Bucket=VB, Prefix="enc/", Delimiter="")


def test_an_answer_for_another_version_than_asked_is_refused(vstack):
    """A backend answering `?versionId=v1` with another version's id (a naive rollback or a
    broken cache) is refused on GET, Range and HEAD; the version ids are not authenticated,
    so this catches only a backend that says so (docs/object-format.md 11)."""
    s3 = vstack.boto(retries={"total_max_attempts": 1, "mode": "standard"})
    k = "vid/lie"
    v1 = s3.put_object(Bucket=VB, Key=k, Body=b"one" * 1000)["VersionId"]
    v2 = s3.put_object(Bucket=VB, Key=k, Body=b"two" * 1000)["VersionId"]

    def other_id(head, body):
        return re.sub(rb"(?im)^x-amz-version-id:.*$", b"x-amz-version-id: " + v2.encode(), head), body
    for method, call in (("GET", lambda: s3.get_object(Bucket=VB, Key=k, VersionId=v1)["Body"].read()),
                         ("GET", lambda: s3.get_object(Bucket=VB, Key=k, VersionId=v1, Range="bytes=10-20")["Body"].read()),
                         ("HEAD", lambda: s3.head_object(Bucket=VB, Key=k, VersionId=v1))):
        fault = vstack.relay.arm(method=method, path_contains="versionId=", rewrite_response=other_id)
        try:
            assert error_of(call)[1] == 500
        finally:
            vstack.relay.clear()
        assert fault.fired >= 1
    assert s3.get_object(Bucket=VB, Key=k, VersionId=v1)["Body"].read() == b"one" * 1000


def test_ranges_parts_and_copies_of_an_older_version(vstack):
    s3 = vstack.boto()
    k = "old/obj"
    big = os.urandom(6 * MiB + 5)
    mp = multipart(s3, VB, k, [big[:5 * MiB], big[5 * MiB:]])["VersionId"]
    mid = os.urandom(300_000)
    mid_v = s3.put_object(Bucket=VB, Key=k, Body=mid)["VersionId"]
    # A small, single-part latest version: a probe of the wrong version would plan wrong.
    latest = s3.put_object(Bucket=VB, Key=k, Body=b"latest")["VersionId"]
    assert s3.get_object(Bucket=VB, Key=k)["Body"].read() == b"latest"

    r = s3.get_object(Bucket=VB, Key=k, VersionId=mp, Range="bytes=5242870-5242889")
    assert r["Body"].read() == big[5242870:5242890]
    assert r["ContentRange"] == f"bytes 5242870-5242889/{len(big)}" and r["VersionId"] == mp
    r = s3.get_object(Bucket=VB, Key=k, VersionId=mp, PartNumber=2)
    assert r["Body"].read() == big[5 * MiB:] and r["PartsCount"] == 2
    assert s3.head_object(Bucket=VB, Key=k, VersionId=mp, PartNumber=1)["ContentLength"] == 5 * MiB
    r = s3.get_object(Bucket=VB, Key=k, VersionId=mid_v, Range="bytes=100000-100009")
    assert r["Body"].read() == mid[100000:100010]
    r = s3.get_object(Bucket=VB, Key=k, VersionId=mid_v, Range="bytes=-7")
    assert r["Body"].read() == mid[-7:]

    copied = s3.copy_object(Bucket=VB, Key="old/copy", CopySource={"Bucket": VB, "Key": k, "VersionId": mid_v})
    assert copied["CopySourceVersionId"] == mid_v and copied["VersionId"]
    assert s3.get_object(Bucket=VB, Key="old/copy", VersionId=copied["VersionId"])["Body"].read() == mid

    up = s3.create_multipart_upload(Bucket=VB, Key="old/assembled")["UploadId"]
    p1 = s3.upload_part_copy(Bucket=VB, Key="old/assembled", UploadId=up, PartNumber=1, CopySource={"Bucket": VB, "Key": k, "VersionId": mp},
                             CopySourceRange=f"bytes=0-{5 * MiB - 1}")
    assert p1["CopySourceVersionId"] == mp
    p2 = s3.upload_part_copy(Bucket=VB, Key="old/assembled", UploadId=up, PartNumber=2, CopySource={"Bucket": VB, "Key": k, "VersionId": mid_v})
    done = s3.complete_multipart_upload(Bucket=VB, Key="old/assembled", UploadId=up, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": p1["CopyPartResult"]["ETag"]}, {"PartNumber": 2, "ETag": p2["CopyPartResult"]["ETag"]}]})
    assert done["VersionId"]
    assert s3.get_object(Bucket=VB, Key="old/assembled")["Body"].read() == big[:5 * MiB] + mid

    # DELETE by version removes exactly that version; the others stay readable.
    d = s3.delete_object(Bucket=VB, Key=k, VersionId=mid_v)
    assert d["VersionId"] == mid_v and not d.get("DeleteMarker")
    left = {v["VersionId"] for v in s3.list_object_versions(Bucket=VB, Prefix=k)["Versions"]}
    assert left == {mp, latest}
    assert error_of(lambda: s3.get_object(Bucket=VB, Key=k, VersionId=mid_v))[1] in (400, 404)
    assert error_of(lambda: s3.copy_object(Bucket=VB, Key="old/c2", CopySource={"Bucket": VB, "Key": k, "VersionId": mid_v}))[1] in (400, 404)
    assert s3.get_object(Bucket=VB, Key=k, VersionId=mp)["Body"].read() == big


def read_fails(call):
    """The read must fail: an S3 error (500, the object is damaged) or a body cut short;
    never a clean answer."""
    try:
        body = call()["Body"].read()
    except ClientError as e:
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 500, e.response
        return
    except Exception:  # the connection was cut mid-body (IncompleteRead, …)
        return
    raise AssertionError(f"a damaged version was served cleanly ({len(body)} bytes)")


def test_damaged_older_version_fails_every_read(vstack):
    s3, direct = vstack.boto(), vstack.direct
    k = "dmg/obj"
    data = os.urandom(5 * MiB + 300_000)
    good = multipart(s3, VB, k, [data[:5 * MiB], data[5 * MiB:]])["VersionId"]
    raw = direct.get_object(Bucket=VB, Key=k, VersionId=good)
    sealed, body = raw["Metadata"]["s3cp"], raw["Body"].read()
    first_part = direct.head_object(Bucket=VB, Key=k, VersionId=good, PartNumber=1)["ContentLength"]
    # The same ciphertext with one byte of the last segment's header flipped, stored as a
    # version of the same key on the backend; then a good version on top of it.
    bad = bytearray(body)
    bad[first_part + 40] ^= 1
    up = direct.create_multipart_upload(Bucket=VB, Key=k, Metadata={"s3cp": sealed}, ContentType="application/octet-stream")["UploadId"]
    parts = [{"PartNumber": n + 1, "ETag": direct.upload_part(Bucket=VB, Key=k, UploadId=up, PartNumber=n + 1, Body=bytes(b))["ETag"]}
             for n, b in enumerate([bad[:first_part], bad[first_part:]])]
    damaged = direct.complete_multipart_upload(Bucket=VB, Key=k, UploadId=up, MultipartUpload={"Parts": parts})["VersionId"]
    s3.put_object(Bucket=VB, Key=k, Body=b"fine")

    assert s3.get_object(Bucket=VB, Key=k)["Body"].read() == b"fine"
    assert s3.get_object(Bucket=VB, Key=k, VersionId=good)["Body"].read() == data
    # Each read of the damaged version checks that version's own headers (a probe of the
    # latest would see another ETag and answer 503, not 500).
    assert error_of(lambda: s3.head_object(Bucket=VB, Key=k, VersionId=damaged)) == ("500", 500)
    read_fails(lambda: s3.get_object(Bucket=VB, Key=k, VersionId=damaged))
    read_fails(lambda: s3.get_object(Bucket=VB, Key=k, VersionId=damaged, Range="bytes=0-99"))
    read_fails(lambda: s3.get_object(Bucket=VB, Key=k, VersionId=damaged, PartNumber=1))
    read_fails(lambda: s3.get_object(Bucket=VB, Key=k, VersionId=damaged, PartNumber=2))
    code = error_of(lambda: s3.get_object_attributes(Bucket=VB, Key=k, VersionId=damaged, ObjectAttributes=["ObjectSize"]))
    assert code[1] == 500
    assert error_of(lambda: s3.copy_object(Bucket=VB, Key="dmg/copy", CopySource={"Bucket": VB, "Key": k, "VersionId": damaged}))[1] == 500
    assert s3.list_object_versions(Bucket=VB, Prefix="dmg/copy").get("Versions") is None


def test_object_lock_through_the_proxy(vstack):
    s3, direct = vstack.boto(), vstack.direct
    s3.create_bucket(Bucket=LB, ObjectLockEnabledForBucket=True)
    assert direct.get_object_lock_configuration(Bucket=LB)["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
    s3.put_object_lock_configuration(Bucket=LB, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
    rule = s3.get_object_lock_configuration(Bucket=LB)["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]
    assert (rule["Mode"], rule["Days"]) == ("GOVERNANCE", 1)
    # Without a default rule: a PUT under a default rule needs a checksum of the stored body
    # (verified writes, see test_lock_headers_on_put_and_copy).
    s3.put_object_lock_configuration(Bucket=LB, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"})

    until = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)
    data = os.urandom(100_000)
    vid = s3.put_object(Bucket=LB, Key="l/a", Body=data)["VersionId"]
    s3.put_object_retention(Bucket=LB, Key="l/a", VersionId=vid, Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until})
    s3.put_object_legal_hold(Bucket=LB, Key="l/a", VersionId=vid, LegalHold={"Status": "ON"})
    # (moto 5.2 has no GetObjectRetention: it answers the object; HEAD shows the lock.)
    # The lock is the backend's.
    assert direct.head_object(Bucket=LB, Key="l/a", VersionId=vid)["ObjectLockMode"] == "COMPLIANCE"
    assert s3.get_object_legal_hold(Bucket=LB, Key="l/a", VersionId=vid)["LegalHold"]["Status"] == "ON"
    head = s3.head_object(Bucket=LB, Key="l/a", VersionId=vid)
    assert (head["ObjectLockMode"], head["ObjectLockLegalHoldStatus"], head["ContentLength"]) == ("COMPLIANCE", "ON", len(data))
    assert head["ObjectLockRetainUntilDate"] == until
    assert error_of(lambda: s3.delete_object(Bucket=LB, Key="l/a", VersionId=vid)) == ("AccessDenied", 403)
    s3.put_object_legal_hold(Bucket=LB, Key="l/a", VersionId=vid, LegalHold={"Status": "OFF"})
    assert s3.get_object_legal_hold(Bucket=LB, Key="l/a", VersionId=vid)["LegalHold"]["Status"] == "OFF"
    assert error_of(lambda: s3.delete_object(Bucket=LB, Key="l/a", VersionId=vid)) == ("AccessDenied", 403)
    gone = s3.delete_objects(Bucket=LB, Delete={"Objects": [{"Key": "l/a", "VersionId": vid}]})
    assert [e["Code"] for e in gone.get("Errors", [])] == ["AccessDenied"]
    # A plain DELETE only adds a delete marker; the locked version stays readable.
    assert s3.delete_object(Bucket=LB, Key="l/a")["DeleteMarker"]
    assert s3.get_object(Bucket=LB, Key="l/a", VersionId=vid)["Body"].read() == data

    # GOVERNANCE: refused, unless the client bypasses it; retention can be extended.
    g = s3.put_object(Bucket=LB, Key="l/g", Body=b"g" * 10)["VersionId"]
    s3.put_object_retention(Bucket=LB, Key="l/g", VersionId=g, Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until})
    s3.put_object_retention(Bucket=LB, Key="l/g", VersionId=g, Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until + timedelta(days=1)})
    assert s3.head_object(Bucket=LB, Key="l/g", VersionId=g)["ObjectLockRetainUntilDate"] == until + timedelta(days=1)
    assert error_of(lambda: s3.delete_object(Bucket=LB, Key="l/g", VersionId=g)) == ("AccessDenied", 403)
    s3.delete_object(Bucket=LB, Key="l/g", VersionId=g, BypassGovernanceRetention=True)

    # CreateMultipartUpload with the lock headers (signed by the client) is accepted (moto 5.2
    # ignores them on multipart uploads); the completed upload is locked afterwards.
    big = os.urandom(5 * MiB + 10)
    mp = multipart(s3, LB, "l/mp", [big[:5 * MiB], big[5 * MiB:]], ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until,
                   ObjectLockLegalHoldStatus="ON")
    s3.put_object_legal_hold(Bucket=LB, Key="l/mp", VersionId=mp["VersionId"], LegalHold={"Status": "ON"})
    assert error_of(lambda: s3.delete_object(Bucket=LB, Key="l/mp", VersionId=mp["VersionId"])) == ("AccessDenied", 403)
    assert s3.get_object(Bucket=LB, Key="l/mp")["Body"].read() == big


def test_lock_headers_on_put_and_copy(vstack):
    """A backend stores a PUT with Object Lock headers only with a checksum of the stored body (moto:
    MissingUploadObjectWithObjectLockHeaders): the verified writes' ciphertext CRC trailer is that checksum."""
    s3 = vstack.boto()
    until = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)
    data = os.urandom(10_000)
    put = s3.put_object(Bucket=LB, Key="l/put", Body=data, ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until, ObjectLockLegalHoldStatus="ON")
    assert s3.head_object(Bucket=LB, Key="l/put", VersionId=put["VersionId"])["ObjectLockMode"] == "COMPLIANCE"
    c = s3.copy_object(Bucket=LB, Key="l/copy", CopySource={"Bucket": LB, "Key": "l/put", "VersionId": put["VersionId"]},
                       ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until)
    assert s3.head_object(Bucket=LB, Key="l/copy", VersionId=c["VersionId"])["ObjectLockMode"] == "COMPLIANCE"
    assert s3.get_object(Bucket=LB, Key="l/copy")["Body"].read() == data


def test_archived_objects_and_restore_on_moto(vstack):
    s3 = vstack.boto()
    data = os.urandom(70_000)
    s3.put_object(Bucket=VB, Key="cold/a", Body=data, StorageClass="GLACIER")
    head = s3.head_object(Bucket=VB, Key="cold/a")
    assert (head["StorageClass"], head["ContentLength"]) == ("GLACIER", len(data))
    # The backend's InvalidObjectState, as it sent it.
    assert error_of(lambda: s3.get_object(Bucket=VB, Key="cold/a")) == ("InvalidObjectState", 403)
    assert error_of(lambda: s3.get_object(Bucket=VB, Key="cold/a", Range="bytes=0-9")) == ("InvalidObjectState", 403)
    attrs = s3.get_object_attributes(Bucket=VB, Key="cold/a", ObjectAttributes=["StorageClass", "ObjectSize"])
    assert (attrs["StorageClass"], attrs["ObjectSize"]) == ("GLACIER", len(data))
    r = s3.restore_object(Bucket=VB, Key="cold/a", RestoreRequest={"Days": 1})
    assert r["ResponseMetadata"]["HTTPStatusCode"] in (200, 202)
    # moto completes a restore after a few reads of the object's state.
    for _ in range(10):
        if 'ongoing-request="false"' in s3.head_object(Bucket=VB, Key="cold/a").get("Restore", ""):
            break
    assert 'ongoing-request="false"' in s3.head_object(Bucket=VB, Key="cold/a")["Restore"]
    assert s3.get_object(Bucket=VB, Key="cold/a")["Body"].read() == data
    # A restore of an object that is not archived: the backend's answer, as direct.
    s3.put_object(Bucket=VB, Key="cold/std", Body=b"s")
    vstack.direct.put_object(Bucket=VB, Key="cold/direct", Body=b"s")
    assert error_of(lambda: s3.restore_object(Bucket=VB, Key="cold/std", RestoreRequest={"Days": 1})) == \
        error_of(lambda: vstack.direct.restore_object(Bucket=VB, Key="cold/direct", RestoreRequest={"Days": 1}))


def test_old_key_versions_stay_readable_and_are_reported(vstack):
    """Runs last in this module: it makes key 2 current."""
    s3 = vstack.boto()
    old = os.urandom(70_000)
    v1 = s3.put_object(Bucket=VB, Key="rot/obj", Body=old)["VersionId"]
    legacy = s3.put_object(Bucket=VB, Key="rot/legacy", Body=b"legacy")["VersionId"]
    key2 = vstack.keyd.new_key(2)
    assert vstack.keyd.send_key(key2).returncode == 0
    deadline = time.time() + 10
    while admin(vstack, "GET", "/api/v1/key/status")[1].get("current_key_id") != 2 and time.time() < deadline:
        time.sleep(0.1)
    new = os.urandom(500)
    v2 = s3.put_object(Bucket=VB, Key="rot/obj", Body=new)["VersionId"]
    assert s3.get_object(Bucket=VB, Key="rot/obj", VersionId=v1)["Body"].read() == old
    assert s3.get_object(Bucket=VB, Key="rot/obj")["Body"].read() == new

    # The rewrap job writes a new version of each latest object under the old key; the
    # older versions keep key 1.
    code, job = admin(vstack, "POST", f"/api/v1/rewrap?bucket={VB}&prefix=rot/")
    assert code == 202, job
    while job["state"] == "running":
        time.sleep(0.2)
        job = admin(vstack, "GET", "/api/v1/rewrap")[1]
    assert (job["state"], job["done"], job["already_current"], job["failed"]) == ("done", 1, 1, 0), job
    code, usage = admin(vstack, "GET", f"/api/v1/key-usage?bucket={VB}&prefix=rot/")
    assert code == 200, usage
    assert usage["versions_per_key_id"] == {"1": 2, "2": 2} and usage["current_key_id"] == 2, usage
    still_old = {(v["key"], v["version_id"]) for v in usage["versions"]}
    assert still_old == {("rot/obj", v1), ("rot/legacy", legacy)}
    assert all(v["key_id"] == 1 and not v["is_latest"] for v in usage["versions"])
    assert {v["key"] for v in admin(vstack, "GET", f"/api/v1/key-usage?bucket={VB}&prefix=rot/&key_id=2")[1]["versions"]} == {"rot/obj", "rot/legacy"}
    assert admin(vstack, "GET", f"/api/v1/key-usage?bucket={OTHER_BUCKET}")[0] == 403

    # Retiring key 1: its versions are removed (or expired by a lifecycle rule) first.
    for key, version in still_old:
        s3.delete_object(Bucket=VB, Key=key, VersionId=version)
    usage = admin(vstack, "GET", f"/api/v1/key-usage?bucket={VB}&prefix=rot/")[1]
    assert usage["versions_per_key_id"] == {"2": 2} and usage["versions"] == [], usage
    assert s3.get_object(Bucket=VB, Key="rot/legacy")["Body"].read() == b"legacy"


# --- every backend ----------------------------------------------------------------------

def test_get_object_attributes_are_plaintext(http_stack):
    s3 = http_stack.boto()
    data = os.urandom(300_000)
    put = s3.put_object(Bucket=BUCKET, Key="attr/one", Body=data, ChecksumAlgorithm="CRC32")
    head = s3.head_object(Bucket=BUCKET, Key="attr/one")
    everything = ["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]
    a = s3.get_object_attributes(Bucket=BUCKET, Key="attr/one", ObjectAttributes=everything)
    assert a["ObjectSize"] == len(data) and '"%s"' % a["ETag"] == head["ETag"] == put["ETag"]
    assert a["StorageClass"] == "STANDARD" and "ObjectParts" not in a
    # The plaintext checksum the client sent, sealed at upload; never the backend's.
    assert a["Checksum"]["ChecksumCRC32"] == put["ChecksumCRC32"]

    big = os.urandom(5 * MiB + 1234)
    done = multipart(s3, BUCKET, "attr/mp", [big[:5 * MiB], big[5 * MiB:]])
    a = s3.get_object_attributes(Bucket=BUCKET, Key="attr/mp", ObjectAttributes=everything)
    assert a["ObjectSize"] == len(big) and '"%s"' % a["ETag"] == done["ETag"]
    parts = a["ObjectParts"]
    assert parts["TotalPartsCount"] == 2 and [(p["PartNumber"], p["Size"]) for p in parts["Parts"]] == [(1, 5 * MiB), (2, 1234)]
    assert "Checksum" not in a
    page = s3.get_object_attributes(Bucket=BUCKET, Key="attr/mp", ObjectAttributes=["ObjectParts"], MaxParts=1)["ObjectParts"]
    assert page["IsTruncated"] and page["NextPartNumberMarker"] == 1 and [p["PartNumber"] for p in page["Parts"]] == [1]
    page = s3.get_object_attributes(Bucket=BUCKET, Key="attr/mp", ObjectAttributes=["ObjectParts"], PartNumberMarker=1)["ObjectParts"]
    assert not page["IsTruncated"] and [(p["PartNumber"], p["Size"]) for p in page["Parts"]] == [(2, 1234)]
    # A one-part upload is a multipart object of one part, as S3 reports it (s3-tests
    # test_get_single_multipart_object_attributes).
    one = os.urandom(5 * MiB)
    multipart(s3, BUCKET, "attr/one-part", [one])
    parts = s3.get_object_attributes(Bucket=BUCKET, Key="attr/one-part", ObjectAttributes=everything)["ObjectParts"]
    assert parts["TotalPartsCount"] == 1 and [(p["PartNumber"], p["Size"]) for p in parts["Parts"]] == [(1, 5 * MiB)]
    assert error_of(lambda: s3.get_object_attributes(Bucket=BUCKET, Key="attr/none", ObjectAttributes=["ObjectSize"])) == ("NoSuchKey", 404)
    # An object stored around the proxy is refused, as a GET of it is.
    http_stack.direct.put_object(Bucket=BUCKET, Key="attr/raw", Body=b"raw")
    assert error_of(lambda: s3.get_object_attributes(Bucket=BUCKET, Key="attr/raw", ObjectAttributes=["ObjectSize"])) == ("InvalidObjectState", 403)


def test_restore_object_is_passed_to_the_backend(http_stack):
    s3, direct = http_stack.boto(), http_stack.direct
    s3.put_object(Bucket=BUCKET, Key="restore/a", Body=b"a")
    direct.put_object(Bucket=BUCKET, Key="restore/direct", Body=b"a")
    # Whatever the backend answers (moto: InvalidObjectState for a STANDARD object; Garage:
    # not implemented), the client gets it as a direct client would.
    assert error_of(lambda: s3.restore_object(Bucket=BUCKET, Key="restore/a", RestoreRequest={"Days": 1})) == \
        error_of(lambda: direct.restore_object(Bucket=BUCKET, Key="restore/direct", RestoreRequest={"Days": 1}))
