"""Backend profiles (issue 18, item 3): a provider's quirk, imitated by a relay in front of a real
Garage, is absorbed by the proxy so that the client (the PBS-faithful one) sees none of it.

B2 answers 501 NotImplemented to a PUT carrying If-None-Match. With `backend.profile: b2` the
proxy enforces `If-None-Match: *` itself and never sends the header: chunk uploads succeed, a
second upload of the same chunk gets 412, and the relay saw no PUT with the header. Without the
profile the same relay's 501 reaches the client (the imitation is real)."""

import tempfile

import pytest

from conftest import Stack


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
