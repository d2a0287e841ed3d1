"""Several clients on one proxy (issue 18, item 2), with the real binary against moto and Garage:
each access key has its own secret(s), role, buckets or key prefixes, and rate limit. A read-only
client cannot change anything; a client limited to a bucket prefix cannot reach anything else by
any path (bucket, key, listing, copy source, DeleteObjects body, presigned URL); a rotated
secret works beside the new one; a client over its rate gets 503 SlowDown with Retry-After,
which the SDK retries; metrics and the audit log name the access key; an admin-role client
opens the admin API with its own secret."""

import concurrent.futures
import json
import os
import re
import secrets
import tempfile
import threading
import time
import urllib.error
import urllib.request

import boto3
import botocore.config
import pytest
import requests

from conftest import BUCKET, OTHER, Stack

SECRETS = {k: f"{k}-secret-{secrets.token_hex(6)}" for k in ("reader", "hosta", "limited", "ops")}
HOSTA_OLD = "hosta-old-secret-" + secrets.token_hex(6)


@pytest.fixture(scope="module", params=["moto", "garage"])
def cstack(request, workroot):
    d = tempfile.mkdtemp(prefix=f"clients-{request.param}-", dir=workroot)
    secret_file = os.path.join(d, "hosta.secret")
    with open(secret_file, "w") as f:
        f.write(SECRETS["hosta"] + "\n")
    clients = [
        {"access_key": "reader", "secret_key": SECRETS["reader"], "role": "read-only", "buckets": [BUCKET]},
        {"access_key": "hosta", "secret_key_file": secret_file, "previous_secret_keys": [HOSTA_OLD],
         "buckets": [f"{OTHER}/host-a/"]},
        {"access_key": "limited", "secret_key": SECRETS["limited"], "buckets": [BUCKET],
         "rate_limit": {"requests_per_second": 2}},
        {"access_key": "ops", "secret_key": SECRETS["ops"], "role": "admin"},
    ]
    s = Stack(d, request.param, tls=False, clients=clients, allowed_buckets=[BUCKET, OTHER])
    # The single `client:` stays a read-write client of the proxy-wide buckets: it seeds data.
    owner = s.boto()
    owner.put_object(Bucket=BUCKET, Key="shared/doc.txt", Body=b"shared document")
    owner.put_object(Bucket=OTHER, Key="host-a/chunk", Body=b"host a data")
    owner.put_object(Bucket=OTHER, Key="host-b/chunk", Body=b"host b data")
    yield s
    s.stop()


def as_client(stack, key, secret=None, retries=1):
    return boto3.client("s3", endpoint_url=stack.proxy.endpoint, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret or SECRETS[key],
                        config=botocore.config.Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                                                      retries={"max_attempts": retries, "mode": "standard"}))


def denied(call):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    return e.value.response["Error"]["Code"], e.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_read_only_client_reads_and_changes_nothing(cstack):
    r = as_client(cstack, "reader")
    assert r.get_object(Bucket=BUCKET, Key="shared/doc.txt")["Body"].read() == b"shared document"
    assert r.head_object(Bucket=BUCKET, Key="shared/doc.txt")["ContentLength"] == 15
    assert [o["Key"] for o in r.list_objects_v2(Bucket=BUCKET, Prefix="shared/")["Contents"]] == ["shared/doc.txt"]
    before = cstack.raw_objects()
    writes = [
        lambda: r.put_object(Bucket=BUCKET, Key="ro/new", Body=b"x"),
        lambda: r.delete_object(Bucket=BUCKET, Key="shared/doc.txt"),
        lambda: r.copy_object(Bucket=BUCKET, Key="ro/copy", CopySource={"Bucket": BUCKET, "Key": "shared/doc.txt"}),
        lambda: r.create_multipart_upload(Bucket=BUCKET, Key="ro/mp"),
        lambda: r.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "shared/doc.txt"}]}),
        lambda: r.complete_multipart_upload(Bucket=BUCKET, Key="ro/mp", UploadId="x",
                                            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"e"'}]}),
        lambda: r.put_object_tagging(Bucket=BUCKET, Key="shared/doc.txt", Tagging={"TagSet": [{"Key": "a", "Value": "b"}]}),
    ]
    for w in writes:
        assert denied(w) == ("AccessDenied", 403)
    # A presigned PUT signed by the read-only client is refused as well.
    url = r.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": "ro/presigned"}, ExpiresIn=300)
    resp = requests.put(url, data=b"presigned body", timeout=10)
    assert resp.status_code == 403 and b"<Code>AccessDenied</Code>" in resp.content
    # Nothing was stored, changed or deleted.
    assert cstack.raw_objects() == before
    # And it reaches no other bucket, even to read.
    assert denied(lambda: r.get_object(Bucket=OTHER, Key="host-a/chunk")) == ("AccessDenied", 403)


def test_prefix_client_stays_inside_its_prefix_by_every_path(cstack):
    a = as_client(cstack, "hosta")
    a.put_object(Bucket=OTHER, Key="host-a/new", Body=b"written by host a")
    assert a.get_object(Bucket=OTHER, Key="host-a/new")["Body"].read() == b"written by host a"
    assert sorted(o["Key"] for o in a.list_objects_v2(Bucket=OTHER, Prefix="host-a/")["Contents"]) == ["host-a/chunk", "host-a/new"]
    # ListBuckets shows only its own bucket.
    assert [b["Name"] for b in a.list_buckets()["Buckets"]] == [OTHER]
    before = cstack.raw_objects(OTHER)
    for call in [
        lambda: a.get_object(Bucket=OTHER, Key="host-b/chunk"),
        lambda: a.put_object(Bucket=OTHER, Key="host-b/evil", Body=b"x"),
        lambda: a.delete_object(Bucket=OTHER, Key="host-b/chunk"),
        lambda: a.list_objects_v2(Bucket=OTHER),
        lambda: a.list_objects_v2(Bucket=OTHER, Prefix="host-b/"),
        lambda: a.get_object(Bucket=BUCKET, Key="shared/doc.txt"),
        # Copy sources outside the grant, into its own prefix.
        lambda: a.copy_object(Bucket=OTHER, Key="host-a/stolen", CopySource={"Bucket": OTHER, "Key": "host-b/chunk"}),
        lambda: a.copy_object(Bucket=OTHER, Key="host-a/stolen", CopySource={"Bucket": BUCKET, "Key": "shared/doc.txt"}),
        # A DeleteObjects on its bucket naming another host's key.
        lambda: a.delete_objects(Bucket=OTHER, Delete={"Objects": [{"Key": "host-a/chunk"}, {"Key": "host-b/chunk"}]}),
        lambda: a.put_bucket_versioning(Bucket=OTHER, VersioningConfiguration={"Status": "Enabled"}),
        # Settings a backend may not implement: moto answers them as a listing of the whole
        # bucket (every host's keys and sizes).
        lambda: a.get_bucket_request_payment(Bucket=OTHER),
        lambda: a.get_bucket_policy_status(Bucket=OTHER),
        lambda: a.get_bucket_metrics_configuration(Bucket=OTHER, Id="x"),
    ]:
        assert denied(call) == ("AccessDenied", 403)
    # The settings clients read stay readable.
    for read in (a.get_bucket_location, a.get_bucket_versioning):
        assert read(Bucket=OTHER)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert cstack.raw_objects(OTHER) == before
    # Its own keys can be batch-deleted (PBS garbage collection).
    r = a.delete_objects(Bucket=OTHER, Delete={"Objects": [{"Key": "host-a/new"}]})
    assert [d["Key"] for d in r.get("Deleted", [])] == ["host-a/new"] and not r.get("Errors")
    # A presigned GET of another host's object is refused.
    url = a.generate_presigned_url("get_object", Params={"Bucket": OTHER, "Key": "host-b/chunk"}, ExpiresIn=300)
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 403 and b"host b data" not in resp.content


def test_rotated_secret_is_accepted_beside_the_new_one(cstack):
    new = as_client(cstack, "hosta")
    old = as_client(cstack, "hosta", secret=HOSTA_OLD)
    for c in (new, old):
        assert c.get_object(Bucket=OTHER, Key="host-a/chunk")["Body"].read() == b"host a data"
    wrong = as_client(cstack, "hosta", secret="not-a-secret-of-hosta")
    assert denied(lambda: wrong.get_object(Bucket=OTHER, Key="host-a/chunk")) == ("SignatureDoesNotMatch", 403)
    unknown = as_client(cstack, "reader", secret=SECRETS["hosta"])
    assert denied(lambda: unknown.get_object(Bucket=BUCKET, Key="shared/doc.txt")) == ("SignatureDoesNotMatch", 403)


def test_rate_limit_answers_slowdown_that_clients_retry(cstack):
    once = as_client(cstack, "limited", retries=1)
    start = threading.Barrier(8)
    spans = []

    def head(_):
        start.wait()
        t0 = time.monotonic()
        try:
            once.head_object(Bucket=BUCKET, Key="shared/doc.txt")
            return 200, None
        except botocore.exceptions.ClientError as e:
            return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["ResponseMetadata"]["HTTPHeaders"]
        finally:
            spans.append((t0, time.monotonic()))

    # Eight at once against 2 requests/s (a burst of one second's worth, 2): the proxy lets
    # through at most the burst plus 2 per second of the time the eight took to arrive (a
    # loaded machine spreads them out; counted generously from the first start to the last
    # end), and refuses the rest.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(head, range(8)))
    codes = [c for c, _ in answers]
    window = max(e for _, e in spans) - min(s for s, _ in spans)
    assert 200 in codes and 503 in codes, codes
    assert codes.count(200) <= 2 + 2 * window + 1, (codes, window)
    assert codes.count(200) + codes.count(503) == 8, codes
    assert all(h.get("retry-after", "").isdigit() for c, h in answers if c == 503)
    # A GET's error body names SlowDown (a HEAD answer has none).
    def get(_):
        try:
            once.get_object(Bucket=BUCKET, Key="shared/doc.txt")["Body"].read()
            return None
        except botocore.exceptions.ClientError as e:
            return e.response["Error"]["Code"]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert "SlowDown" in list(pool.map(get, range(6)))
    # With the SDK's retries, every request gets through, at the configured pace.
    patient = as_client(cstack, "limited", retries=10)
    t0 = time.time()
    for _ in range(8):
        assert patient.get_object(Bucket=BUCKET, Key="shared/doc.txt")["Body"].read() == b"shared document"
    assert time.time() - t0 >= 2.0
    # Other clients are not slowed by it: ten HEADs in a row, none refused.
    reader = as_client(cstack, "reader")
    for _ in range(10):
        reader.head_object(Bucket=BUCKET, Key="shared/doc.txt")
    denied(lambda: reader.put_object(Bucket=BUCKET, Key="ro/x", Body=b"x"))  # a 4xx for the metrics below
    as_client(cstack, "hosta").put_object(Bucket=OTHER, Key="host-a/metered", Body=b"bytes in")
    status, metrics = cstack.proxy.admin_get("/metrics")
    text = metrics.decode()
    throttled = re.search(r's3_crypt_proxy_client_throttled_total\{access_key="limited"\} (\d+)', text)
    assert throttled and int(throttled.group(1)) >= 2, text[-2000:]
    assert re.search(r's3_crypt_proxy_client_requests_total\{access_key="reader",class="2xx"\} [1-9]', text)
    assert re.search(r's3_crypt_proxy_client_requests_total\{access_key="reader",class="4xx"\} [1-9]', text)
    assert re.search(r's3_crypt_proxy_client_bytes_total\{access_key="hosta",direction="in"\} [1-9]', text)
    assert 'access_key="not-a-client"' not in text


def test_audit_log_names_the_access_key(cstack):
    as_client(cstack, "reader").head_object(Bucket=BUCKET, Key="shared/doc.txt")
    deadline = time.time() + 5
    while True:
        with open(os.path.join(cstack.proxy.dir, "audit.log")) as f:
            lines = [json.loads(l) for l in f if l.strip()]
        keys = {l.get("access_key") for l in lines}
        if {"reader", "hosta", "limited"} <= keys or time.time() > deadline:
            break
        time.sleep(0.2)
    assert {"reader", "hosta", "limited"} <= keys, keys
    assert not any(s in json.dumps(lines) for s in SECRETS.values())


def test_admin_role_opens_the_admin_api(cstack):
    p = cstack.proxy
    assert p.admin_get("/api/v1/key/status", token=f"ops:{SECRETS['ops']}")[0] == 200
    assert p.admin_get("/api/v1/key/status", token=p.admin_token)[0] == 200
    for token in (f"reader:{SECRETS['reader']}", f"ops:{SECRETS['reader']}", "ops:", f"hosta:{SECRETS['hosta']}"):
        assert p.admin_get("/api/v1/key/status", token=token)[0] == 401, token
