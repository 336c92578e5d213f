"""Keys, CSRs and the RFC 8737 TLS-ALPN-01 certificate, with ``cryptography``.

Certificate keys and the account key are ECDSA P-256 (what Let's Encrypt and Caddy default to:
small handshakes, fast signatures); every private key travels as unencrypted PKCS#8 PEM, the form
``edgeproxy.tls.pem`` checks and ``edgeproxy.tls.certificates`` serves.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeproxy.tls.pem import self_signed

ID_PE_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
"""RFC 8737 section 6.1: the critical extension holding SHA-256 of the key authorization."""


def new_private_key_pem() -> bytes:
    """A fresh ECDSA P-256 key, PKCS#8 PEM."""
    return private_key_pem(ec.generate_private_key(ec.SECP256R1()))


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_ec_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """An ECDSA key from PEM; ``ValueError`` for anything else (a damaged or foreign file)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except Exception as e:  # a parser we do not own
        raise ValueError(f"not a PEM private key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"expected an ECDSA key, got {type(key).__name__}")
    return key


def make_csr(key_pem: bytes, names: Sequence[str]) -> bytes:
    """A CSR (PEM) for ``names``: every name in subjectAltName, the first as CN too."""
    key = load_ec_key(key_pem)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def tls_alpn_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """The self-signed certificate that answers a TLS-ALPN-01 challenge for ``name`` (RFC 8737
    section 3): subjectAltName = the name alone, and the critical acmeIdentifier extension holding
    the DER OCTET STRING of SHA-256(key authorization). Returns (certificate PEM, key PEM).

    Its validity is short and starts a minute back: the CA looks at it once, within minutes."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = datetime.datetime.now(datetime.UTC)
    # DER OCTET STRING (tag 0x04, length 32) around the digest, as RFC 8737 section 3 says
    identifier = x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, b"\x04\x20" + digest)
    cert = self_signed(
        name, key, now - datetime.timedelta(minutes=1), now + datetime.timedelta(days=7), [(identifier, True)]
    )
    return cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key)
