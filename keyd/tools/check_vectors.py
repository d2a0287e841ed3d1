#!/usr/bin/env python3
"""Independent re-computation of the test vectors in docs/key-protocol.md from the
one-line formulas, with the Python `cryptography` package (not the Rust code).

    python3 keyd/tools/check_vectors.py docs/key-protocol.md
"""
import hashlib
import re
import struct
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def rotl(v, c):
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def hchacha20(key, nonce16):
    """HChaCha20 (draft-irtf-cfrg-xchacha): 20 ChaCha rounds, no final addition."""
    s = list(struct.unpack("<4I", b"expand 32-byte k")) + list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))

    def qr(a, b, c, d):
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 16)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 12)
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 8)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 7)

    for _ in range(10):
        qr(0, 4, 8, 12); qr(1, 5, 9, 13); qr(2, 6, 10, 14); qr(3, 7, 11, 15)
        qr(0, 5, 10, 15); qr(1, 6, 11, 12); qr(2, 7, 8, 13); qr(3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def xchacha20poly1305_encrypt(key, nonce24, msg, aad):
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).encrypt(b"\0" * 4 + nonce24[16:], msg, aad)


def hkdf(salt, ikm, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def main(path):
    doc = open(path).read()
    block = doc.split("<!-- test-vectors:begin -->")[1].split("<!-- test-vectors:end -->")[0]
    v = dict(re.findall(r"^(\w+)\s+= ([0-9a-f]+)", block, re.M))
    b = {k: bytes.fromhex(x) if len(x) % 2 == 0 and k not in ("timestamp", "master_key_id") else x for k, x in v.items()}
    S = Ed25519PrivateKey.from_private_bytes(b["server_identity_seed"])
    A = Ed25519PrivateKey.from_private_bytes(b["admin_identity_seed"])
    es = X25519PrivateKey.from_private_bytes(b["server_ephemeral_secret"])
    ea = X25519PrivateKey.from_private_bytes(b["admin_ephemeral_secret"])
    S_pub, A_pub = S.public_key().public_bytes(*RAW), A.public_key().public_bytes(*RAW)
    Es, Ea = es.public_key().public_bytes(*RAW), ea.public_key().public_bytes(*RAW)
    C, N, M = b["challenge"], b["nonce"], b["master_key"]
    T = struct.pack(">Q", int(v["timestamp"]))
    key_id = int(v["master_key_id"])

    got = {}
    got["server_public_key"] = S_pub
    got["server_fingerprint"] = hashlib.sha256(S_pub).digest()
    got["server_ephemeral"] = Es
    got["challenge_signature"] = S.sign(b"memkey v1 challenge" + C + T + Es)
    got["admin_public_key"] = A_pub
    got["admin_ephemeral"] = Ea
    Z = ea.exchange(X25519PublicKey.from_public_bytes(Es))
    assert Z == es.exchange(X25519PublicKey.from_public_bytes(Ea))
    got["shared_secret"] = Z
    TH = hashlib.sha256(b"memkey v1 transcript" + C + T + Es + Ea + S_pub + A_pub).digest()
    got["transcript_hash"] = TH
    K = hkdf(TH, Z, b"memkey v1 key-wrap")
    got["wrap_key"] = K
    P = struct.pack(">IB", key_id, 1) + M
    got["payload"] = P
    CT = xchacha20poly1305_encrypt(K, N, P, TH)
    got["ciphertext"] = CT
    got["delivery_signature"] = A.sign(b"memkey v1 delivery" + TH + N + CT)
    got["confirmation"] = hkdf(TH, Z, b"memkey v1 confirm" + struct.pack(">IB", key_id, 1))
    Ed25519PublicKey.from_public_bytes(S_pub).verify(got["challenge_signature"], b"memkey v1 challenge" + C + T + Es)

    bad = [k for k, x in got.items() if b[k] != x]
    for k in bad:
        print(f"MISMATCH {k}: doc {b[k].hex()} computed {got[k].hex()}")
    print(f"{len(got) - len(bad)}/{len(got)} derived values match")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/key-protocol.md"))
