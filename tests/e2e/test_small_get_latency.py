"""Small GETs through the proxy do not wait for a delayed ACK (issue 14, goal 3).

Garage leaves Nagle's algorithm on: it writes a response header, then holds back a body
smaller than a segment until the header is acknowledged, and a receiver whose socket is in
delayed-ACK mode (it has just sent a request) acknowledges only after 40 ms. The proxy asks
for a prompt ACK (TCP_QUICKACK) as soon as it has read the backend's header, so a 16 KiB GET
through it takes a few milliseconds; the same GETs sent to Garage directly by the same client
show the wait (printed for comparison, not asserted: it is Garage's and the kernel's doing)."""

import os
import statistics
import tempfile
import time

import pytest

from conftest import BUCKET, Stack


@pytest.fixture(scope="module")
def garage_stack(workroot):
    d = tempfile.mkdtemp(prefix="small-get-", dir=workroot)
    s = Stack(d, "garage")
    yield s
    s.stop()


def median_get_ms(client, key, n=25):
    client.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # connection up, caches warm
    times = []
    for _ in range(n):
        t = time.perf_counter()
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        times.append((time.perf_counter() - t) * 1000)
        assert len(body) == 16 << 10
    return statistics.median(times)


def test_16k_get_does_not_wait_for_a_delayed_ack(garage_stack):
    s = garage_stack
    body = os.urandom(16 << 10)
    proxy = s.boto()
    proxy.put_object(Bucket=BUCKET, Key="small-get/16k", Body=body)
    s.direct.put_object(Bucket=BUCKET, Key="small-get/16k-direct", Body=body)
    through_proxy = median_get_ms(proxy, "small-get/16k")
    direct = median_get_ms(s.direct, "small-get/16k-direct")
    print(f"16 KiB GET, median of 25 sequential: through the proxy {through_proxy:.1f} ms, Garage directly {direct:.1f} ms")
    # 40 ms per GET before the proxy acknowledged the header at once; a loaded CI machine
    # still answers in well under 25 ms.
    assert through_proxy < 25, f"16 KiB GET through the proxy took {through_proxy:.1f} ms (median): a delayed ACK?"
