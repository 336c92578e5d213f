"""Certificate checks and server contexts, with a throw-away CA made at test time (trustme), and
real handshakes through Python's ssl client against the contexts built from memory."""

from __future__ import annotations

import contextlib
import datetime
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeproxy.proto.names import NameTable
from edgeproxy.tls.certificates import EXPIRY_WARNING, CertificateError, server_context
from edgeproxy.tls.pem import certificate_from_wire, parse_certificate, read_certificate

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def files(tmp_path: Path, leaf: trustme.LeafCert, name: str = "site") -> tuple[str, str]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return str(cert), str(key)


def handshake(ctx: ssl.SSLContext, ca: trustme.CA, sni: str | None, **client: object) -> ssl.SSLObject:
    """A full TLS handshake between ``ctx`` and Python's client over memory BIOs."""
    cctx = ssl.create_default_context()
    ca.configure_trust(cctx)
    if sni is None:
        cctx.check_hostname = False
    for k, v in client.items():
        if k == "alpn":
            cctx.set_alpn_protocols(list(v))  # type: ignore[call-overload]
        else:
            setattr(cctx, k, v)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = cctx.wrap_bio(c_in, c_out, server_hostname=sni)
    srv = ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (cli, srv):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if cli.version() and srv.version() and not (c_out.pending or s_out.pending):
            try:
                cli.do_handshake()
                srv.do_handshake()
            except ssl.SSLWantReadError:
                continue
            return cli
    raise AssertionError("no handshake")


def test_ecdsa_with_intermediate(tmp_path: Path, ca: trustme.CA) -> None:
    child = ca.create_child_ca()
    leaf = child.issue_cert("Example.com", "*.example.com", "127.0.0.1")
    cert = read_certificate(*files(tmp_path, leaf))
    assert cert.names == ("example.com", "*.example.com")
    assert cert.name == "example.com"
    assert cert.key_type == "ECDSA P-256"
    assert cert.chain_pem.count(b"BEGIN CERTIFICATE") == 2  # leaf + intermediate, in that order
    assert cert.not_before < NOW.timestamp() < cert.not_after
    assert len(cert.fingerprint) == 64
    cli = handshake(server_context(cert), ca, "www.example.com")
    assert cli.getpeercert()["subjectAltName"][0] == ("DNS", "example.com")


def test_rsa_and_key_in_the_certificate_file(tmp_path: Path, ca: trustme.CA) -> None:
    rsa_ca = trustme.CA(key_type=trustme.KeyType.RSA)
    leaf = rsa_ca.issue_cert("rsa.example.com", key_type=trustme.KeyType.RSA)
    combined = tmp_path / "combined.pem"
    combined.write_bytes(leaf.private_key_pem.bytes() + b"".join(b.bytes() for b in leaf.cert_chain_pems))
    cert = read_certificate(str(combined), None)
    assert cert.key_type == "RSA 2048"
    assert cert.names == ("rsa.example.com",)
    handshake(server_context(cert), rsa_ca, "rsa.example.com")


def test_wire_round_trip(tmp_path: Path, ca: trustme.CA) -> None:
    cert = read_certificate(*files(tmp_path, ca.issue_cert("wire.example.com")))
    again = certificate_from_wire(cert.to_wire())
    assert again == cert


def test_alpn_and_min_version(tmp_path: Path, ca: trustme.CA) -> None:
    cert = read_certificate(*files(tmp_path, ca.issue_cert("v.example.com")))
    cli = handshake(server_context(cert, alpn=("h2", "http/1.1")), ca, "v.example.com", alpn=("http/1.1",))
    assert cli.selected_alpn_protocol() == "http/1.1"
    assert cli.version() == "TLSv1.3"
    tls12 = handshake(server_context(cert), ca, "v.example.com", maximum_version=ssl.TLSVersion.TLSv1_2)
    assert tls12.version() == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        handshake(server_context(cert, min_version="1.3"), ca, "v.example.com", maximum_version=ssl.TLSVersion.TLSv1_2)


def test_key_that_does_not_match(tmp_path: Path, ca: trustme.CA) -> None:
    cert, _ = files(tmp_path, ca.issue_cert("a.example.com"), "a")
    _, other_key = files(tmp_path, ca.issue_cert("b.example.com"), "b")
    with pytest.raises(CertificateError, match="does not match"):
        read_certificate(cert, other_key)


def test_expired_and_not_yet_valid(tmp_path: Path, ca: trustme.CA) -> None:
    old = ca.issue_cert("old.example.com", not_before=NOW - datetime.timedelta(days=30), not_after=NOW)
    with pytest.raises(CertificateError, match="expired on"):
        read_certificate(*files(tmp_path, old, "old"), now=NOW.timestamp() + 60)
    future = ca.issue_cert("new.example.com", not_before=NOW + datetime.timedelta(days=3))
    with pytest.raises(CertificateError, match="not valid before"):
        read_certificate(*files(tmp_path, future, "new"))
    soon = ca.issue_cert("soon.example.com", not_after=NOW + datetime.timedelta(days=3))
    cert = read_certificate(*files(tmp_path, soon, "soon"))
    assert cert.expires_within(EXPIRY_WARNING)
    assert not read_certificate(*files(tmp_path, ca.issue_cert("ok.example.com"), "ok")).expires_within(EXPIRY_WARNING)


def test_unreadable_and_malformed(tmp_path: Path, ca: trustme.CA) -> None:
    cert, key = files(tmp_path, ca.issue_cert("m.example.com"))
    with pytest.raises(CertificateError, match=r"cannot read the certificate file .*missing\.pem"):
        read_certificate(str(tmp_path / "missing.pem"), key)
    with pytest.raises(CertificateError, match="cannot read the key file"):
        read_certificate(cert, str(tmp_path))
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError, match="not a valid PEM certificate"):
        read_certificate(str(garbage), key)
    with pytest.raises(CertificateError, match="no PEM certificate"):
        read_certificate(key, key)
    with pytest.raises(CertificateError, match="no private key"):
        read_certificate(cert, None)
    with pytest.raises(CertificateError, match="not a valid PEM private key"):
        parse_certificate(
            Path(cert).read_bytes(), b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", source="x"
        )


def test_encrypted_key(tmp_path: Path, ca: trustme.CA) -> None:
    leaf = ca.issue_cert("enc.example.com")
    cert, _ = files(tmp_path, leaf)
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    enc = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(CertificateError, match="encrypted"):
        parse_certificate(Path(cert).read_bytes(), enc, source=cert)


def test_name_table() -> None:
    table = NameTable([(("example.com", "*.example.com"), "a"), (("www.example.com",), "b"), (("*.example.com",), "c")])
    assert table.lookup("www.example.com") == "b"  # exact beats wildcard
    assert table.lookup("API.Example.COM.") == "a"  # case and trailing dot; first entry wins the wildcard
    assert table.lookup("example.com") == "a"
    assert table.lookup("a.b.example.com") is None  # one label only
    assert table.lookup(".example.com") is None
    assert table.lookup(None) is None
    assert table.lookup("") is None
    assert not NameTable([])
