"""The certificate files a configuration names (``listeners[].tls.certificates``), read and checked
as one set, for ``edgeproxy check``, the start and every reload.

The control plane (the single process, or the supervisor) reads them: it may be the only process
allowed to open the keys (under ``user:`` workers cannot). Every problem is a ``ConfigIssue`` with
the file's line and YAML path (``listeners[0].tls.certificates[1].cert: ...``), the way the loader
reports, so a bad file fails ``check`` and a reload exactly like a bad value; a certificate that
expires within ``EXPIRY_WARNING`` is a warning. The result, a ``CertificateSet``, travels to the
workers as PEM (``to_wire``) and is what every TLS listener of every process serves.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from edgeproxy.config import Config, ConfigIssue
from edgeproxy.config.model import CertificateFiles
from edgeproxy.tls.certificates import EXPIRY_WARNING, Certificate, CertificateError


class CertificateFilesError(Exception):
    """Certificate files that cannot be served; ``issues`` says which and why (one line each)."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(map(str, issues)))


@dataclass(frozen=True, slots=True)
class CertificateSet:
    """Every TLS listener's certificates, in the order written (the first is the listener's
    default), by listener name."""

    listeners: Mapping[str, tuple[Certificate, ...]]

    def certificates(self) -> list[Certificate]:
        """Each certificate once (by fingerprint), first listed first."""
        seen: dict[str, Certificate] = {}
        for certs in self.listeners.values():
            for c in certs:
                seen.setdefault(c.fingerprint, c)
        return list(seen.values())

    def to_wire(self) -> dict[str, Any]:
        """JSON for the control channel: each certificate once, listeners by index."""
        certs = self.certificates()
        index = {c.fingerprint: i for i, c in enumerate(certs)}
        return {
            "certificates": [c.to_wire() for c in certs],
            "listeners": {name: [index[c.fingerprint] for c in cs] for name, cs in self.listeners.items()},
        }

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any]) -> CertificateSet:
        from edgeproxy.tls.pem import certificate_from_wire  # cryptography: only with certificates

        certs = [certificate_from_wire(c) for c in msg.get("certificates", [])]
        return cls(
            MappingProxyType(
                {str(name): tuple(certs[i] for i in ids) for name, ids in msg.get("listeners", {}).items()}
            )
        )


NO_CERTIFICATES = CertificateSet(MappingProxyType({}))


def read_certificates(config: Config, *, now: float | None = None) -> tuple[CertificateSet, list[ConfigIssue]]:
    """Read and check every certificate file of ``config``: the set and its warnings, or
    ``CertificateFilesError`` with every error (nothing is half-read: all or none)."""
    t = time.time() if now is None else now
    errors: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    read: dict[tuple[str, str | None], Certificate | None] = {}  # a file used twice is read once
    out: dict[str, tuple[Certificate, ...]] = {}
    for lst in config.listeners:
        if lst.tls is None:
            continue
        certs: list[Certificate] = []
        for files in lst.tls.certificates:
            key = (files.cert, files.key)
            if key in read:
                cert = read[key]
            else:
                cert = read[key] = _read_one(config.path, files, t, errors, warnings)
            if cert is not None:
                certs.append(cert)
        out[lst.name] = tuple(certs)
    if errors:
        raise CertificateFilesError(errors)
    return CertificateSet(MappingProxyType(out)), warnings


def _read_one(
    path: str, files: CertificateFiles, now: float, errors: list[ConfigIssue], warnings: list[ConfigIssue]
) -> Certificate | None:
    from edgeproxy.tls.pem import read_certificate  # cryptography: only with certificates to read

    try:
        cert = read_certificate(files.cert, files.key, now=now)
    except CertificateError as e:
        part = "key" if e.part == "key" and files.key is not None else "cert"
        errors.append(ConfigIssue(path, files.line, f"{files.where}.{part}", str(e)))
        return None
    if cert.expires_within(EXPIRY_WARNING, now):
        days = max(0.0, (cert.not_after - now) / 86400)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(cert.not_after))
        warnings.append(
            ConfigIssue(
                path, files.line, f"{files.where}.cert", f"warning: {cert.name} expires on {when} (in {days:.1f} days)"
            )
        )
    return cert
