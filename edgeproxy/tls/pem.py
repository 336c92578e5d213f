"""Certificates and keys in PEM, read and checked with ``cryptography`` (Python's ``ssl`` has no
parser for a certificate that is not a peer's), and self-signed ones made.

Kept apart from tls/certificates.py because ``cryptography`` costs some 10 MiB of RSS: only a
process that reads a certificate (a TLS listener's files, one received by a worker, ACME's) or
makes one imports this module.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import re
import time
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from edgeproxy.tls.certificates import Certificate, CertificateError

_KEY_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----\s*", re.S)
_PUBLIC = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def read_certificate(cert_path: str, key_path: str | None, *, now: float | None = None) -> Certificate:
    """Read and check a certificate file (chain included) and its key file (``None``: the key is in
    the certificate file, as in HAProxy's ``crt`` files)."""
    chain = _read(cert_path, "certificate")
    key = _read(key_path, "key", "key") if key_path is not None else None
    return parse_certificate(chain, key, source=cert_path, now=now)


def parse_certificate(
    chain_pem: bytes, key_pem: bytes | None, *, source: str, now: float | None = None, check_expiry: bool = True
) -> Certificate:
    """Check PEM bytes as ``read_certificate`` does; ``check_expiry=False`` accepts an expired one
    (what a worker receives was checked by the control plane when it was read)."""
    if key_pem is None:
        found = _KEY_BLOCK.search(chain_pem)
        if found is None:
            raise CertificateError("no private key: give `key`, or put the key in the certificate file", "key")
        key_pem = found.group(0)
    certs = _certificates(chain_pem)
    leaf = certs[0]
    key = _private_key(key_pem)
    if key.public_key().public_bytes(*_PUBLIC) != leaf.public_key().public_bytes(*_PUBLIC):
        raise CertificateError("the private key does not match the certificate (the first one in the file)", "key")
    try:
        not_before = leaf.not_valid_before_utc.timestamp()
        not_after = leaf.not_valid_after_utc.timestamp()
        names = _dns_names(leaf)
        subject = leaf.subject.rfc4514_string()
        issuer = leaf.issuer.rfc4514_string()
    except Exception as e:  # a parser we do not own: whatever it raises is a bad certificate
        raise CertificateError(f"unreadable certificate fields: {e}") from None
    if check_expiry:
        t = time.time() if now is None else now
        if not_after < t:
            raise CertificateError(f"the certificate expired on {_date(not_after)}")
        if not_before > t + 86400:
            raise CertificateError(f"the certificate is not valid before {_date(not_before)}")
    return Certificate(
        names=names,
        not_before=not_before,
        not_after=not_after,
        issuer=issuer,
        subject=subject,
        key_type=_key_type(key),
        fingerprint=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        source=source,
    )


def certificate_from_wire(msg: dict[str, str]) -> Certificate:
    """A ``Certificate.to_wire`` received over the control channel. Checked when the control
    plane read it; a worker restarted after it expired must still start and serve what the
    running configuration holds."""
    return parse_certificate(
        msg["chain"].encode("ascii"), msg["key"].encode("ascii"), source=msg["source"], check_expiry=False
    )


def _read(path: str, what: str, part: str = "cert") -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(1 << 20)  # a chain is a few KiB; a 1 MiB cap keeps a wrong path harmless
    except OSError as e:
        raise CertificateError(f"cannot read the {what} file {path}: {e.strerror or e}", part) from None


def _certificates(chain_pem: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in chain_pem:
        raise CertificateError("no PEM certificate (-----BEGIN CERTIFICATE-----) in the certificate file")
    try:
        return x509.load_pem_x509_certificates(chain_pem)
    except Exception as e:  # ValueError and friends from a parser we do not own
        raise CertificateError(f"not a valid PEM certificate chain: {e}") from None


def _private_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    if b"ENCRYPTED" in key_pem:
        raise CertificateError("the private key is encrypted (edgeproxy needs it without a passphrase)", "key")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except Exception as e:
        raise CertificateError(f"not a valid PEM private key: {e}", "key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise CertificateError(f"unsupported private key type {type(key).__name__}", "key")
    return key


def _key_type(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ECDSA P-256", "secp384r1": "ECDSA P-384", "secp521r1": "ECDSA P-521"}.get(
            key.curve.name, f"ECDSA {key.curve.name}"
        )
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    return "Ed25519"


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    names: list[str] = []
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    if not names:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = [str(cn.value).lower() for cn in cns if cn.value]
    return tuple(dict.fromkeys(names))


def _date(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def self_signed(
    name: str,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    """A certificate for ``name`` alone (common name and subjectAltName) signed by its own key,
    with ``extensions`` (extension, critical) added: a TLS-ALPN-01 answer (acme/keys.py), the
    benchmarks' certificate."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(key, hashes.SHA256())
