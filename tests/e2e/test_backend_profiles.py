"""Backend profiles (issue 18, item 3): a provider's quirk, imitated by a relay in front of a real
Garage, is absorbed by the proxy so that the client (the PBS-faithful one) sees none of it.

B2 answers 501 NotImplemented to a PUT carrying If-None-Match. With `backend.profile: b2` the
proxy enforces `If-None-Match: *` itself and never sends the header: chunk uploads succeed, a
second upload of the same chunk gets 412, and the relay saw no PUT with the header. Without the
profile the same relay's 501 reaches the client (the imitation is real)."""

import tempfile

import pytest

from conftest import BUCKET, Stack


@pytest.fixture(scope="module")
def b2_stack(workroot):
    d = tempfile.mkdtemp(prefix="profile-b2-", dir=workroot)
    s = Stack(d, "garage", tls=False, relay=True, backend_options={"profile": "b2"}, conditional_writes=None)
    s.relay.arm(method="PUT", header="if-none-match", status=501, code="NotImplemented", times=10_000)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def plain_stack(workroot):
    d = tempfile.mkdtemp(prefix="profile-none-", dir=workroot)
    s = Stack(d, "garage", tls=False, relay=True)
    s.relay.arm(method="PUT", header="if-none-match", status=501, code="NotImplemented", times=10_000)
    yield s
    s.stop()


def test_b2_profile_absorbs_the_if_none_match_rejection(b2_stack):
    pbs = b2_stack.client()
    key = "store/.chunks/abcd/" + "ab" * 32
    first = pbs.put_object(key, b"chunk bytes")
    assert first.status == 200, first
    again = pbs.put_object(key, b"other bytes")
    assert again.status == 412, again
    assert pbs.get_object(key).body == b"chunk bytes"
    # A replace (no condition) still overwrites.
    assert pbs.put_object(key, b"replaced", replace=True).status == 200
    assert pbs.get_object(key).body == b"replaced"
    quirk = b2_stack.relay.faults[0]
    assert quirk.fired == 0, "a PUT with If-None-Match reached the (imitated) B2 backend"


def test_without_the_profile_the_quirk_reaches_the_client(plain_stack):
    pbs = plain_stack.client()
    r = pbs.put_object("store/.chunks/abcd/" + "cd" * 32, b"chunk bytes")
    assert r.status == 501 and plain_stack.relay.faults[0].fired >= 1, r


@pytest.fixture(scope="module")
def gcs_stack(workroot):
    """A backend without DeleteObjects (Google Cloud Storage's XML API), imitated in front of Garage."""
    d = tempfile.mkdtemp(prefix="profile-gcs-", dir=workroot)
    s = Stack(d, "garage", tls=False, relay=True, backend_options={"profile": "gcs"})
    s.relay.arm(method="POST", path_contains="delete", status=501, code="NotImplemented", times=10_000)
    yield s
    s.stop()


def test_gcs_profile_emulates_delete_objects(gcs_stack):
    s3 = gcs_stack.boto()
    keys = [f"gc/{i:03d}" for i in range(20)] + ["gc/with space & amp", "gc/keep-me"]
    for k in keys:
        s3.put_object(Bucket=BUCKET, Key=k, Body=k.encode())
    # One DELETE refused by the backend: reported as an <Error> for that key only.
    gcs_stack.relay.arm(method="DELETE", path_contains="keep-me", status=403, code="AccessDenied")
    r = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys + ["gc/never-existed"]]})
    deleted = sorted(d["Key"] for d in r.get("Deleted", []))
    assert deleted == sorted([k for k in keys if k != "gc/keep-me"] + ["gc/never-existed"])
    assert [(e["Key"], e["Code"]) for e in r.get("Errors", [])] == [("gc/keep-me", "AccessDenied")]
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="gc/").get("Contents", [])]
    assert left == ["gc/keep-me"]
    # The PBS-faithful client's garbage collection (Content-MD5, no Quiet) gets a clean result.
    pbs = gcs_stack.client()
    r = pbs.delete_objects(["gc/keep-me"])
    assert r.status == 200 and b"<Deleted><Key>gc/keep-me</Key></Deleted>" in r.body and b"<Error>" not in r.body
    # Quiet: only errors are listed.
    s3.put_object(Bucket=BUCKET, Key="gc/quiet", Body=b"q")
    r = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "gc/quiet"}], "Quiet": True})
    assert not r.get("Deleted") and not r.get("Errors")
    # The imitated backend never saw a DeleteObjects.
    assert gcs_stack.relay.faults[0].fired == 0
    assert not any(m == "POST" for m, _ in gcs_stack.relay.seen)
    # A malformed body is refused before anything is deleted.
    s3.put_object(Bucket=BUCKET, Key="gc/survivor", Body=b"s")
    bad = pbs.request("POST", None, [("delete", "")], body=b"<Delete><Object></Object></Delete>")
    assert bad.status == 400 and b"MalformedXML" in bad.body
    assert s3.get_object(Bucket=BUCKET, Key="gc/survivor")["Body"].read() == b"s"
