"""Proxmox Backup Server's exact request sequence through the proxy, against moto and
against Garage (with `conditional_writes: enforce`): every status and header PBS needs,
and only ciphertext on the backend."""

import hashlib
import os
import re
import xml.etree.ElementTree as ET

import pytest

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
HTTP_DATE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$")
STORE = "store"


def chunk_key(data, bad=None):
    d = hashlib.sha256(data).hexdigest()
    return f"{STORE}/.chunks/{d[:4]}/{d}" + (f".{bad}.bad" if bad is not None else "")


def blob(n, seed):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}-{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def findall(xml_bytes, tag):
    return [e.text or "" for e in ET.fromstring(xml_bytes).iter(NS + tag)]


def test_head_bucket(stack):
    c = stack.client()
    r = c.head_bucket()
    assert r.status == 200, r


def test_chunk_upload_if_none_match_and_get(stack):
    c = stack.client()
    data = blob(4 * 1024 * 1024 + 123, "chunk")
    key = chunk_key(data)
    r = c.put_object(key, data)
    assert r.status == 200, r
    assert r.body == b""
    assert r.header("etag") == '"%s"' % hashlib.md5(data).hexdigest()
    # Already there: 412, which PBS counts as success; the object is unchanged.
    r2 = c.put_object(key, blob(10, "other"))
    assert r2.status == 412, r2
    g = c.get_object(key)
    assert g.status == 200, g
    assert g.body == data
    assert int(g.header("content-length")) == len(data)
    assert "chunked" not in (g.header("transfer-encoding") or "")
    assert g.header("content-type")
    assert g.header("etag")
    assert HTTP_DATE.match(g.header("last-modified")), g.header("last-modified")
    assert HTTP_DATE.match(g.header("date")), g.header("date")


def test_zero_length_marker(stack):
    c = stack.client()
    key = f"{STORE}/.in-use"
    c.delete_object(key)
    assert c.put_object(key, b"").status == 200
    assert c.put_object(key, b"").status == 412
    g = c.get_object(key)
    assert g.status == 200 and g.body == b"" and g.header("content-length") == "0"


def test_replace_put_and_colon_paths(stack):
    c = stack.client()
    key = f"{STORE}/.cnt/vm/100/2026-11-22T21:45:19Z/index.json.blob"
    assert c.put_object(key, b"first version", replace=True).status == 200
    assert c.put_object(key, b"second, longer version", replace=True).status == 200
    g = c.get_object(key)
    assert g.status == 200 and g.body == b"second, longer version"


def test_missing_object_is_404(stack):
    r = stack.client().get_object(f"{STORE}/.chunks/0000/" + "0" * 64)
    assert r.status == 404, r
    assert b"<Code>NoSuchKey</Code>" in r.body


def test_listing_pages_keys_and_plaintext_sizes(stack):
    c = stack.client()
    prefix = f"{STORE}/.cnt/vm/1001"
    written = {}
    for i in range(1050):
        key = f"{prefix}/2026-11-22T10:{i // 60:02d}:{i % 60:02d}Z/blob-{i}"
        data = blob(i % 300, f"list-{i}")
        assert c.put_object(key, data, replace=True).status == 200
        written[key] = len(data)
    # A prefix not aligned to "/" also matches the "vm/1001..." siblings: none exist.
    seen, token, pages = {}, None, 0
    while True:
        r = c.list_objects_v2(f"{STORE}/.cnt/vm/100", token)
        assert r.status == 200, r
        root = ET.fromstring(r.body)
        for tag in ("Name", "Prefix", "KeyCount", "MaxKeys", "IsTruncated"):
            assert root.find(NS + tag) is not None, tag
        for cont in root.iter(NS + "Contents"):
            k = cont.find(NS + "Key").text
            seen[k] = int(cont.find(NS + "Size").text)
            for tag in ("LastModified", "ETag", "StorageClass"):
                assert cont.find(NS + tag) is not None, tag
        pages += 1
        if root.find(NS + "IsTruncated").text == "true":
            token = root.find(NS + "NextContinuationToken").text
        else:
            break
    assert pages >= 2
    for k, size in written.items():
        assert seen[k] == size, k


def test_copy_to_bad_chunk_name(stack):
    c = stack.client()
    data = blob(100_000, "corrupt-chunk")
    key = chunk_key(data)
    c.put_object(key, data)
    bad = chunk_key(data, bad=0)
    r = c.copy_object(key, bad)
    assert r.status == 200, r
    assert findall(r.body, "LastModified") and findall(r.body, "ETag")
    g = c.get_object(bad)
    assert g.status == 200 and g.body == data


def test_delete_is_204_and_delete_objects(stack):
    c = stack.client()
    keys = []
    for i in range(5):
        data = blob(1000 + i, f"gc-{i}")
        k = chunk_key(data)
        assert c.put_object(k, data).status == 200
        keys.append(k)
    r = c.delete_object(keys[0])
    assert r.status == 204, r
    assert c.get_object(keys[0]).status == 404
    r = c.delete_objects(keys[1:] + [f"{STORE}/.chunks/ffff/" + "f" * 64])
    assert r.status == 200, r
    assert b"<Error>" not in r.body
    assert len(findall(r.body, "Deleted")) >= 0
    for k in keys[1:]:
        assert c.get_object(k).status == 404


def test_backend_holds_only_ciphertext(stack):
    c = stack.client()
    secret = b"PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()
    data = secret * 5000
    key = f"{STORE}/.cnt/ct/{os.urandom(4).hex()}/secret.blob"
    assert c.put_object(key, data, replace=True).status == 200
    raw = stack.raw_objects()
    assert key in raw
    assert len(raw[key]) > len(data)
    for k, v in raw.items():
        assert secret not in v, k
        assert b"PLAINTEXT-MARKER" not in v, k
    head = stack.direct.head_object(Bucket="pbs-bucket", Key=key)
    assert "s3cp" in head["Metadata"]
    assert c.get_object(key).body == data
