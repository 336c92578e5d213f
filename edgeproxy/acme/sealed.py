"""Private keys kept encrypted where others can read them (the swarm's configs).

AES-256-GCM (``cryptography``), with a key derived by HKDF-SHA256 from a secret the operator
provides as a swarm secret (a file, e.g. ``/run/secrets/edgeproxy-acme-key``; any 16 or more
bytes, ``openssl rand -base64 32`` is plenty). Each sealed value is bound to what it is (its
associated data names the CA, the kind and the id), so a value moved to another object does not
open. Format: ``v1.`` + base64(12-byte nonce + ciphertext and tag).
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_SECRET = 16
_PREFIX = "v1."


class SealError(ValueError):
    pass


class Sealer:
    __slots__ = ("_aead", "key_id")

    def __init__(self, secret: bytes) -> None:
        secret = secret.strip()
        if len(secret) < MIN_SECRET:
            raise SealError(f"the encryption key has {len(secret)} bytes; it needs at least {MIN_SECRET}")
        key = HKDF(hashes.SHA256(), 32, salt=None, info=b"edgeproxy acme private keys v1").derive(secret)
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"edgeproxy key id:" + key).hexdigest()[:12]
        """Names the key without revealing it: stored beside each sealed value, so an instance
        given another key says so instead of 'damaged data'."""

    @classmethod
    def from_file(cls, path: str) -> Sealer:
        try:
            with open(path, "rb") as fh:
                secret = fh.read(4096)
        except OSError as e:
            raise SealError(f"cannot read the encryption key file {path}: {e.strerror or e}") from None
        return cls(secret)

    def seal(self, plaintext: bytes, context: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext, context.encode("utf-8"))
        return _PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, token: str, context: str) -> bytes:
        if not token.startswith(_PREFIX):
            raise SealError("not a sealed value (v1.)")
        try:
            raw = base64.b64decode(token[len(_PREFIX) :], validate=True)
        except ValueError:
            raise SealError("a sealed value that is not base64") from None
        if len(raw) < 12 + 16:
            raise SealError("a sealed value too short to hold anything")
        try:
            return self._aead.decrypt(raw[:12], raw[12:], context.encode("utf-8"))
        except InvalidTag:
            raise SealError("cannot decrypt: another encryption key, or damaged data") from None
