"""Operating the proxy: zero-downtime upgrade under load, several stateless replicas,
keyd restarts."""

import os
import signal
import tempfile
import threading
import time

import boto3
import botocore.config
import pytest

import harness
from conftest import BUCKET, Stack


def boto_for(proxy):
    return boto3.client("s3", endpoint_url=proxy.endpoint, region_name="us-east-1", verify=False,
                        aws_access_key_id=proxy.access_key, aws_secret_access_key=proxy.secret_key,
                        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


@pytest.fixture(scope="module")
def ops_stack(workroot):
    d = tempfile.mkdtemp(prefix="ops-", dir=workroot)
    s = Stack(d, "moto", tls=False)
    yield s
    s.stop()


def test_graceful_upgrade_under_load(ops_stack):
    proxy = ops_stack.proxy
    s3 = boto_for(proxy)
    stop = threading.Event()
    stats = {"ok": 0, "failed": 0, "corrupt": 0, "errors": []}

    def loop(worker):
        i = 0
        while not stop.is_set():
            key = f"upgrade/{worker}/{i % 20}"
            body = os.urandom(1000 + (i * 7919) % 200_000)
            try:
                s3.put_object(Bucket=BUCKET, Key=key, Body=body)
                got = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                if got != body:
                    stats["corrupt"] += 1
                stats["ok"] += 1
            except Exception as e:  # counted, not raised: the test reports them all
                stats["failed"] += 1
                stats["errors"].append(repr(e)[:300])
            i += 1

    workers = [threading.Thread(target=loop, args=(w,)) for w in range(3)]
    for w in workers:
        w.start()
    time.sleep(2)
    old = proxy.proc
    before = stats["ok"]
    # The new process takes the listening sockets from the old one, which then drains.
    proxy.start(upgrade=True)
    time.sleep(0.5)
    os.kill(old.pid, signal.SIGQUIT)
    old.p.wait(timeout=30)
    time.sleep(2)
    stop.set()
    for w in workers:
        w.join()
    assert stats["failed"] == 0, stats["errors"][:5]
    assert stats["corrupt"] == 0
    assert stats["ok"] > before + 10, stats
    assert proxy.proc.poll() is None, "the new process serves"
    status, _ = proxy.admin_get("/healthz")
    assert status == 200


def test_two_replicas_alternating_including_multipart_parts(ops_stack):
    first = ops_stack.proxy
    second = harness.Proxy(ops_stack.workdir, ops_stack.backend, ops_stack.keyd, tls=False, name="proxy-b",
                           allowed_buckets=[BUCKET], client={"access_key": first.access_key, "secret_key": first.secret_key})
    try:
        second.wait_ready()
        clients = [boto_for(ops_stack.proxy), boto_for(second)]
        mib = 1024 * 1024
        parts = [os.urandom(5 * mib), os.urandom(5 * mib), os.urandom(777)]
        up = clients[0].create_multipart_upload(Bucket=BUCKET, Key="replicas/mp")
        etags = []
        for n, body in enumerate(parts, start=1):
            etags.append(clients[n % 2].upload_part(Bucket=BUCKET, Key="replicas/mp", UploadId=up["UploadId"], PartNumber=n, Body=body)["ETag"])
        clients[1].complete_multipart_upload(Bucket=BUCKET, Key="replicas/mp", UploadId=up["UploadId"],
                                             MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})
        for c in clients:
            assert c.get_object(Bucket=BUCKET, Key="replicas/mp")["Body"].read() == b"".join(parts)
        for i in range(10):
            body = os.urandom(i * 10_000)
            clients[i % 2].put_object(Bucket=BUCKET, Key=f"replicas/{i}", Body=body)
            assert clients[(i + 1) % 2].get_object(Bucket=BUCKET, Key=f"replicas/{i}")["Body"].read() == body
            h0 = clients[0].head_object(Bucket=BUCKET, Key=f"replicas/{i}")
            h1 = clients[1].head_object(Bucket=BUCKET, Key=f"replicas/{i}")
            assert h0["ETag"] == h1["ETag"] and h0["ContentLength"] == h1["ContentLength"] == len(body)
    finally:
        second.stop()


def test_keyd_restart_keeps_the_loaded_key_and_new_proxies_wait_for_it(ops_stack):
    s3 = boto_for(ops_stack.proxy)
    s3.put_object(Bucket=BUCKET, Key="keyd/before", Body=b"before restart")
    ops_stack.keyd.stop()
    ops_stack.keyd.start()  # memory only: the restarted keyd holds no key
    time.sleep(0.5)
    assert s3.get_object(Bucket=BUCKET, Key="keyd/before")["Body"].read() == b"before restart"
    s3.put_object(Bucket=BUCKET, Key="keyd/after", Body=b"after restart")
    fresh = harness.Proxy(ops_stack.workdir, ops_stack.backend, ops_stack.keyd, tls=False, name="proxy-fresh")
    try:
        c = boto_for(fresh)
        with pytest.raises(c.exceptions.ClientError) as e:
            c.list_objects_v2(Bucket=BUCKET)
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert ops_stack.keyd.send_key(ops_stack.key_file).returncode == 0
        fresh.wait_ready()
    finally:
        fresh.stop()
