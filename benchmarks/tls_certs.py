"""The certificates of the HTTPS scenarios: one self-signed certificate per key type, the key in
the same PEM file (what HAProxy's ``crt`` takes, and edgeproxy's ``certificates: [FILE]``), so
both proxies serve exactly the same certificate."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edgeproxy.tls.pem import self_signed

NAME = "bench.test"
KEY_TYPES = ("ecdsa", "rsa")  # ECDSA P-256, RSA 2048


def certificate_file(workdir: Path, key_type: str) -> Path:
    """``<workdir>/bench-<key_type>.pem`` (made once per run): certificate, then private key."""
    path = workdir / f"bench-{key_type}.pem"
    if path.exists():
        return path
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"key type {key_type!r}: one of {', '.join(KEY_TYPES)}")
    now = datetime.datetime.now(datetime.UTC)
    cert = self_signed(NAME, key, now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return path
