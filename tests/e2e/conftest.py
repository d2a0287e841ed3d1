import os
import shutil
import sys
import tempfile
import types

import boto3
import botocore.config
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

BUCKET = "pbs-bucket"
OTHER = "other-bucket"


class Stack:
    """One backend, keyd with a delivered key, and a proxy in front."""

    def __init__(self, workdir, backend_kind, tls=True, relay=False, backend_args=None, backend_host=None, **proxy_overrides):
        """relay=True puts a fault-injecting relay (chaos.Relay, as .relay) between the proxy and the backend;
        backend_args go to the backend's constructor (e.g. Garage's db_engine); backend_host: the name the proxy
        gives the backend's endpoint instead of 127.0.0.1 (virtual-host addressing needs a name, see
        harness.hosts_entries)."""
        self.workdir = workdir
        self.backend = harness.start_backend(backend_kind, workdir, **(backend_args or {}))
        self.direct = boto3.client("s3", endpoint_url=self.backend.endpoint, region_name=self.backend.region,
                                   aws_access_key_id=self.backend.access_key, aws_secret_access_key=self.backend.secret_key,
                                   config=botocore.config.Config(s3={"addressing_style": "path"}))
        for b in (BUCKET, OTHER):
            self.direct.create_bucket(Bucket=b)
        self.keyd = harness.Keyd(workdir)
        self.key_file = self.keyd.new_key(1)
        r = self.keyd.send_key(self.key_file)
        assert r.returncode == 0, r.stderr
        overrides = {"allowed_buckets": [BUCKET]}
        if backend_kind == "garage":
            overrides["conditional_writes"] = "enforce"
        overrides.update(proxy_overrides)
        upstream = self.backend
        if relay:
            import chaos
            self.relay = chaos.Relay(self.backend.port)
            upstream = types.SimpleNamespace(endpoint=f"http://127.0.0.1:{self.relay.port}", region=self.backend.region,
                                             access_key=self.backend.access_key, secret_key=self.backend.secret_key)
        if backend_host:
            upstream = types.SimpleNamespace(endpoint=upstream.endpoint.replace("127.0.0.1", backend_host), region=upstream.region,
                                             access_key=upstream.access_key, secret_key=upstream.secret_key)
        self.proxy = harness.Proxy(workdir, upstream, self.keyd, tls=tls, **overrides)
        self.proxy.wait_ready()

    def client(self, bucket=BUCKET):
        from pbs_client import PbsClient
        p = self.proxy
        return PbsClient("127.0.0.1", p.port, bucket, p.access_key, p.secret_key,
                         fingerprint=harness.cert_fingerprint(p.cert) if p.tls else None, tls=p.tls)

    def boto(self, tls=False, **cfg):
        p = self.proxy
        return boto3.client("s3", endpoint_url=p.endpoint, region_name="us-east-1", verify=False,
                            aws_access_key_id=p.access_key, aws_secret_access_key=p.secret_key,
                            config=botocore.config.Config(**{"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 1}, **cfg}))

    def stored(self, key, bucket=BUCKET):
        """The raw (encrypted) object as the backend holds it, or None."""
        try:
            return self.direct.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.direct.exceptions.NoSuchKey:
            return None

    def raw_objects(self, bucket=BUCKET):
        """Every stored object, read straight from the backend: {key: bytes}."""
        out = {}
        for page in self.direct.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                out[o["Key"]] = self.direct.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        return out

    def stop(self):
        for part in (self.proxy, self.keyd, getattr(self, "relay", None), self.backend):
            if part is None:
                continue
            try:
                part.stop()
            except Exception as e:  # keep stopping the rest
                print(f"stopping {part}: {e}")


@pytest.fixture(scope="session")
def workroot():
    d = tempfile.mkdtemp(prefix="s3cp-e2e-")
    yield d
    if os.environ.get("S3CP_KEEP_LOGS"):
        print(f"logs kept in {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module", params=["moto", "garage"])
def stack(request, workroot):
    d = tempfile.mkdtemp(prefix=f"{request.param}-", dir=workroot)
    s = Stack(d, request.param)
    yield s
    s.stop()


@pytest.fixture(scope="module", params=["moto", "garage"])
def http_stack(request, workroot):
    """A proxy listening on plain HTTP, where SDKs sign the payload instead of using
    aws-chunked."""
    d = tempfile.mkdtemp(prefix=f"http-{request.param}-", dir=workroot)
    s = Stack(d, request.param, tls=False)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def moto_stack(workroot):
    d = tempfile.mkdtemp(prefix="moto-only-", dir=workroot)
    s = Stack(d, "moto")
    yield s
    s.stop()
