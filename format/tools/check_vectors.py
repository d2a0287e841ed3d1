#!/usr/bin/env python3
"""Independent reader for the object-format test vectors (format/tests/vectors/*), written
from docs/object-format.md with the Python `cryptography` package, not from the Rust code.

    python3 format/tools/check_vectors.py format/tests/vectors/*

For every vector it derives the sub-keys, parses and authenticates each segment header,
decrypts every chunk (version 1: XChaCha20-Poly1305 built from HChaCha20 + ChaCha20-Poly1305;
version 2: AES-256-GCM), applies
the reader rules, and compares the outcome with `expect:` and the SHA-256 of the released
plaintext with `payload:`. Also opens the sealed metadata header when a vector has one.
Prints the derived keys with -v.
"""
import base64
import hashlib
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"S3CPOBJ"
VERSIONS = (1, 2)  # 1: XChaCha20-Poly1305 chunks, 2: AES-256-GCM chunks
H, T = 108, 16


def hkdf(ikm, info, n):
    return HKDF(algorithm=hashes.SHA256(), length=n, salt=b"s3-crypt-proxy", info=info).derive(ikm)


def rotl(v, c):
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def hchacha20(key, n16):
    st = list(struct.unpack("<4I", b"expand 32-byte k") + struct.unpack("<8I", key) + struct.unpack("<4I", n16))

    def quarter(a, b, c, d):
        st[a] = (st[a] + st[b]) & 0xFFFFFFFF
        st[d] = rotl(st[d] ^ st[a], 16)
        st[c] = (st[c] + st[d]) & 0xFFFFFFFF
        st[b] = rotl(st[b] ^ st[c], 12)
        st[a] = (st[a] + st[b]) & 0xFFFFFFFF
        st[d] = rotl(st[d] ^ st[a], 8)
        st[c] = (st[c] + st[d]) & 0xFFFFFFFF
        st[b] = rotl(st[b] ^ st[c], 7)

    for _ in range(10):
        quarter(0, 4, 8, 12); quarter(1, 5, 9, 13); quarter(2, 6, 10, 14); quarter(3, 7, 11, 15)
        quarter(0, 5, 10, 15); quarter(1, 6, 11, 12); quarter(2, 7, 8, 13); quarter(3, 4, 9, 14)
    return struct.pack("<8I", *(st[0:4] + st[12:16]))


def xchacha_open(key, nonce24, ct_and_tag, ad):
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).decrypt(b"\0\0\0\0" + nonce24[16:], ct_and_tag, ad)


def name_ad(bucket, key):
    b, k = bucket.encode(), key.encode()
    return struct.pack(">I", len(b)) + b + struct.pack(">I", len(k)) + k


class Fail(Exception):
    def __init__(self, kind):
        self.kind = kind


def read_object(data, master, key_id, bucket, key, segments_expected, released):
    kek = hkdf(master, b"s3cp v1 key-encryption key", 32)
    kcv = hkdf(master, b"s3cp v1 key check", 8)
    pos, prev, seen = 0, None, 0
    while True:
        if prev is not None and pos == len(data):
            break
        if prev == 0:
            raise Fail("trailing data")
        hdr = data[pos:pos + H]
        if prev is None and hdr[:7] != MAGIC[:len(hdr)]:
            raise Fail("header failure")  # not encrypted
        if len(hdr) < H:
            raise Fail("truncated")
        if hdr[:7] != MAGIC or hdr[7] not in VERSIONS:
            raise Fail("header failure")
        version = hdr[7]
        c, kid, part, plen = struct.unpack(">IIIQ", hdr[8:28])
        if c & (c - 1) or not 4096 <= c <= 1 << 24 or part > 10000:
            raise Fail("header failure")
        if kid != key_id:
            raise Fail("header failure")  # unknown key id
        if hdr[28:36] != kcv:  # a real reader compares in constant time
            raise Fail("wrong key")
        expected = 1 if prev is None else prev + 1
        if not (part == expected or (prev is None and part == 0)):
            raise Fail("header failure")  # segment order
        try:
            dek = xchacha_open(kek, hdr[36:60], hdr[60:108], hdr[:36] + name_ad(bucket, key))
        except InvalidTag:
            raise Fail("header failure")
        seen += 1
        pos += H
        n = max(1, -(-plen // c))
        for i in range(n):
            final = i == n - 1
            clen = (plen - i * c if final else c) + T
            chunk = data[pos:pos + clen]
            if len(chunk) < clen:
                raise Fail("truncated")
            flag = b"\x01" if final else b"\x00"
            try:
                if version == 1:
                    nonce = b"\0" * 15 + flag + struct.pack(">Q", i)
                    released.extend(xchacha_open(dek, nonce, chunk, b""))
                else:
                    nonce = b"\0" * 3 + flag + struct.pack(">Q", i)
                    released.extend(AESGCM(dek).decrypt(nonce, chunk, b""))
            except InvalidTag:
                raise Fail("payload failure")
            pos += clen
        prev = part
    if seen < segments_expected:
        raise Fail("truncated")
    if seen > segments_expected:
        raise Fail("trailing data")


def check(path, verbose):
    text = open(path).read()
    head, body = text.split("\n\n", 1)
    f = dict(line.split(": ", 1) for line in head.splitlines())
    data = bytes.fromhex("".join(body.split()))
    master = bytes.fromhex(f["master key"])
    released = bytearray()
    try:
        read_object(data, master, int(f["key id"]), f["bucket"], f["key"], int(f["segments"]), released)
        outcome = "success"
    except Fail as e:
        outcome = e.kind
    ok = outcome == f["expect"] and hashlib.sha256(released).hexdigest() == f["payload"]
    if "metadata" in f:
        raw = base64.b64decode(f["metadata"], validate=True)
        mek = hkdf(master, b"s3cp v1 metadata key", 32)
        ad = b"s3cp-meta-v1" + raw[:9] + name_ad(f["bucket"], f["key"])
        payload = xchacha_open(mek, raw[9:33], raw[33:], ad)
        ok = ok and raw[0] == 1 and payload == f["metadata payload"].encode()
        ok = ok and struct.unpack(">I", raw[1:5])[0] == int(f["chunk size"])
    print(f"{'ok  ' if ok else 'FAIL'} {path}: {outcome}")
    if verbose:
        print("  kek", hkdf(master, b"s3cp v1 key-encryption key", 32).hex())
        print("  mek", hkdf(master, b"s3cp v1 metadata key", 32).hex())
        print("  kcv", hkdf(master, b"s3cp v1 key check", 8).hex())
    return ok


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "-v"]
    results = [check(p, "-v" in sys.argv) for p in args]
    if not results or not all(results):
        sys.exit(1)
