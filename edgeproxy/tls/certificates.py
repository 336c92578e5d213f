"""Certificates and keys, checked, and turned into ``ssl.SSLContext`` objects.

The control plane reads the PEM files (it may be the only process allowed to) and checks them the
way an operator wants ``edgeproxy check`` to (tls/pem.py: the file can be read, holds a
certificate chain and an unencrypted private key, the key is the certificate's, the certificate is
not expired; one that expires within ``EXPIRY_WARNING`` is a warning). A ``Certificate`` carries
the PEM bytes, so a worker that may not read the key file gets the material over the control
channel and builds its contexts from memory (``memfd``), never from a file on disk.

This module needs only ``ssl``: ``cryptography``, which parses the certificates in tls/pem.py,
costs some 10 MiB of RSS and is imported only where a certificate is read or made.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

EXPIRY_WARNING = 14 * 86400.0
"""A certificate that expires sooner than this is a warning (``edgeproxy check``, reload, log)."""


class CertificateError(ValueError):
    """A certificate or key that cannot be served; the message says why (no YAML path: the caller
    adds it). ``part`` says which file is at fault: ``"cert"`` or ``"key"``."""

    def __init__(self, message: str, part: str = "cert") -> None:
        super().__init__(message)
        self.part = part


@dataclass(frozen=True, slots=True)
class Certificate:
    """A leaf certificate with its chain and key, checked, ready to serve."""

    names: tuple[str, ...]
    """DNS names it is valid for (subjectAltName, lower-cased; its CN when it has no DNS SAN)."""
    not_before: float
    not_after: float
    """Validity, in seconds since the epoch."""
    issuer: str
    subject: str
    key_type: str
    """e.g. ``ECDSA P-256``, ``RSA 2048``."""
    fingerprint: str
    """SHA-256 of the leaf's DER, hex: what changes when a file is replaced by a new certificate."""
    chain_pem: bytes
    """The leaf then the intermediates, PEM."""
    key_pem: bytes
    """The private key, PEM (PKCS#8, unencrypted)."""
    source: str
    """Where it came from: the certificate file's path, or ``acme``."""

    @property
    def name(self) -> str:
        """One name for logs and metrics: the first DNS name, else the subject."""
        return self.names[0] if self.names else self.subject

    def expires_within(self, seconds: float, now: float | None = None) -> bool:
        return self.not_after - (time.time() if now is None else now) < seconds

    def to_wire(self) -> dict[str, str]:
        """For the control channel to the workers (JSON)."""
        return {
            "chain": self.chain_pem.decode("ascii"),
            "key": self.key_pem.decode("ascii"),
            "source": self.source,
        }


def server_context(
    certificate: Certificate, *, min_version: str = "1.2", alpn: Sequence[str] = ("http/1.1",)
) -> ssl.SSLContext:
    """A server-side context serving ``certificate``: OpenSSL's secure defaults (its cipher
    suites, no compression, no renegotiation), TLS ``min_version`` and up, ``alpn`` offered."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    load_chain(ctx, certificate.chain_pem, certificate.key_pem)
    return ctx


def load_chain(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """``ctx.load_cert_chain`` from memory: ``ssl`` only takes a path, so the PEM goes through an
    anonymous in-memory file (Linux ``memfd``), or a private temporary file elsewhere, and the key
    never lands in a file anyone else could open."""
    data = chain_pem + b"\n" + key_pem
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("edgeproxy-tls", os.MFD_CLOEXEC)
        try:
            _write_all(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    import tempfile  # (not on Linux)

    with tempfile.TemporaryDirectory(prefix="edgeproxy-tls-") as d:  # 0700, removed at once
        path = os.path.join(d, "chain.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        ctx.load_cert_chain(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
