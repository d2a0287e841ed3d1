"""Disaster recovery: an object written through the proxy, fetched straight from the
backend, decrypts with memkey-admin and the master key file alone; tampering gives a
non-zero exit and no plaintext."""

import os
import subprocess

import harness
from conftest import BUCKET


def decrypt(stack, raw, key, extra=()):
    return subprocess.run([harness.binary("memkey-admin"), "object", "decrypt", "--key-file", stack.key_file,
                           "--bucket", BUCKET, "--key", key, *extra], input=raw, capture_output=True)


def test_decrypt_backend_object_without_the_proxy(stack):
    data = os.urandom(300_000)
    key = "recovery/store/.chunks/abcd/obj"
    assert stack.client().put_object(key, data, replace=True).status == 200
    raw = stack.direct.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    r = decrypt(stack, raw, key)
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
    bad = bytearray(raw)
    bad[len(bad) // 2] ^= 1
    r = decrypt(stack, bytes(bad), key)
    assert r.returncode != 0 and r.stdout == b""
    r = decrypt(stack, raw[:-10], key)
    assert r.returncode != 0 and r.stdout == b""
    r = decrypt(stack, raw, key + "-elsewhere")
    assert r.returncode != 0 and r.stdout == b""
