"""ACME parts without a CA: the board and its wire form, the answers a listener gives (with real
ClientHellos from Python's ssl), the RFC 8737 certificate, renewal and back-off policy, Retry-After,
sealing, storage helpers, and ACME Renewal Information against recorded responses served by a real
HTTP server on loopback (pebble 2.4 offers no renewalInfo)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.acme.answers import ChallengeContexts, http01_response
from edgeproxy.acme.board import Challenge, ChallengeBoard
from edgeproxy.acme.client import AcmeClient, parse_retry_after
from edgeproxy.acme.dir_storage import DirStorage, write_atomic
from edgeproxy.acme.ids import cert_id
from edgeproxy.acme.keys import ID_PE_ACME_IDENTIFIER, private_key_pem, tls_alpn_certificate
from edgeproxy.acme.manager import AcmeManager, Settings
from edgeproxy.acme.policy import Backoff, renewal_time
from edgeproxy.acme.sealed import Sealer, SealError
from edgeproxy.acme.storage import CertStatus, StorageError, StoredCertificate, ca_slug
from edgeproxy.proto.proxy_protocol import NEED_DATA
from edgeproxy.proto.tls_hello import ClientHello, read_client_hello
from tests.acme_responder import eventually, memory_handshake

H1 = Challenge("http-01", "a.test", "tok1", "tok1.thumb")
A1 = Challenge("tls-alpn-01", "b.test", "tok2", "tok2.thumb")

# -- board -------------------------------------------------------------------------------------


def test_board_sources_and_versions() -> None:
    board = ChallengeBoard()
    board.add("own", H1)
    v1 = board.version
    assert board.http01 == {"tok1": "tok1.thumb"} and v1 == 1
    board.set_source("shared", [H1, A1])  # the same challenge from two sources: one entry
    assert set(board.tls_alpn01) == {"b.test"} and board.version == v1 + 1
    cert = board.tls_alpn01["b.test"]
    board.set_source("shared", [H1, A1])  # unchanged: no new version, no new key
    assert board.version == v1 + 1 and board.tls_alpn01["b.test"] is cert
    board.remove("own", H1)
    assert board.http01 == {"tok1": "tok1.thumb"}  # still wanted by the shared source
    board.set_source("shared", [])
    assert not board.http01 and not board.tls_alpn01 and board.version == v1 + 2


def test_board_wire_round_trip() -> None:
    board = ChallengeBoard()
    board.set_source("own", [H1, A1])
    wire = json.loads(json.dumps(board.to_wire()))  # what the channel carries
    worker = ChallengeBoard.from_wire(wire)
    assert worker.http01 == board.http01 and worker.tls_alpn01 == board.tls_alpn01
    assert worker.version == board.version
    assert "thumb" in json.dumps(wire) and "ACCOUNT" not in json.dumps(wire)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


@given(json_values)
def test_wire_and_stored_json_are_total(value: Any) -> None:
    """Whatever JSON arrives (channel, swarm configs): a value or our own error, nothing else."""
    board = ChallengeBoard()
    for parse in (
        lambda: board.apply_wire(value) if isinstance(value, dict) else None,
        lambda: Challenge.from_json(value),
        lambda: CertStatus.from_json(value),
    ):
        with contextlib.suppress(ValueError, StorageError):
            parse()
    mixed = {"version": 1, "http01": value, "tls_alpn01": {}}
    with contextlib.suppress(ValueError):
        board.apply_wire(mixed)


# -- the RFC 8737 certificate and the answers --------------------------------------------------


def test_tls_alpn_certificate_is_rfc8737() -> None:
    chain, _key = tls_alpn_certificate("b.test", "tok2.thumb")
    cert = x509.load_pem_x509_certificate(chain)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["b.test"]
    ext = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    assert ext.critical
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"tok2.thumb").digest()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/.well-known/acme-challenge/tok1", b"tok1.thumb"),
        ("/.well-known/acme-challenge/tok1?x=1", b"tok1.thumb"),
        ("/.well-known/acme-challenge/other", None),
        ("/.well-known/acme-challenge/", None),
        ("/tok1", None),
    ],
)
def test_http01_response(path: str, body: bytes | None) -> None:
    board = ChallengeBoard()
    board.add("own", H1)
    assert http01_response(board, path) == body


def client_hello(sni: str | None, alpn: list[str]) -> ClientHello:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    out = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = read_client_hello(out.read())
    assert hello is not NEED_DATA
    return hello  # type: ignore[return-value]


def handshake(server: ssl.SSLContext, sni: str, alpn: list[str]) -> tuple[str | None, x509.Certificate]:
    client = memory_handshake(server, sni, alpn=tuple(alpn))
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return client.selected_alpn_protocol(), x509.load_der_x509_certificate(der)


def test_challenge_context_chosen_by_alpn_and_sni() -> None:
    board = ChallengeBoard()
    contexts = ChallengeContexts(board)
    board.add("own", A1)
    assert contexts.for_hello(client_hello("b.test", ["http/1.1"])) is None  # a browser: not the challenge
    assert contexts.for_hello(client_hello("other.test", ["acme-tls/1"])) is None  # not on the board
    assert contexts.for_hello(client_hello(None, ["acme-tls/1"])) is None
    ctx = contexts.for_hello(client_hello("b.test", ["acme-tls/1"]))
    assert ctx is not None and contexts.for_hello(client_hello("b.test", ["acme-tls/1"])) is ctx  # cached
    alpn, cert = handshake(ctx, "b.test", ["acme-tls/1"])
    assert alpn == "acme-tls/1"
    assert cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER).critical
    board.remove("own", A1)
    assert contexts.for_hello(client_hello("b.test", ["acme-tls/1"])) is None


# -- policy -------------------------------------------------------------------------------------

DAY = 86400.0


def test_renewal_time() -> None:
    nb, na = 0.0, 90 * DAY
    assert renewal_time(nb, na, 30 * DAY, lambda: 0.0) == 60 * DAY
    assert renewal_time(nb, na, 30 * DAY, lambda: 1.0) == 57 * DAY  # jitter: up to a tenth of the window
    assert renewal_time(nb, 6 * DAY, 30 * DAY, lambda: 0.0) == 4 * DAY  # capped at a third of the lifetime
    assert renewal_time(nb, na, 30 * DAY, lambda: 0.0, ari=10 * DAY) == 10 * DAY  # the CA says earlier
    assert renewal_time(nb, na, 30 * DAY, lambda: 0.0, ari=80 * DAY) == 60 * DAY


def test_backoff() -> None:
    b = Backoff(base=60, cap=3600, jitter=0.1)
    assert [b.delay(n, None, lambda: 0.5) for n in (1, 2, 3, 7, 8, 50)] == [60, 120, 240, 3600, 3600, 3600]
    assert b.delay(1, None, lambda: 0.0) == pytest.approx(54) and b.delay(1, None, lambda: 1.0) == pytest.approx(66)
    assert b.delay(1, 7200, lambda: 0.5) == 7200  # Retry-After wins over a shorter back-off
    assert b.delay(8, 10, lambda: 0.5) == 3600


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 60) == 60.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 + 60) == 0.0
    for bad in (None, "", "soon", "-5", "1e9"):
        assert parse_retry_after(bad) is None


# -- sealing and storage helpers ---------------------------------------------------------------


def test_sealer() -> None:
    s = Sealer(b"0123456789abcdef0123\n")
    token = s.seal(b"-----BEGIN PRIVATE KEY-----", "ca/cert/a.test")
    assert token.startswith("v1.") and b"PRIVATE" not in token.encode()
    assert s.open(token, "ca/cert/a.test") == b"-----BEGIN PRIVATE KEY-----"
    with pytest.raises(SealError, match="another encryption key"):
        s.open(token, "ca/cert/b.test")  # moved to another object
    with pytest.raises(SealError, match="another encryption key"):
        Sealer(b"another secret of 16+ bytes").open(token, "ca/cert/a.test")
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(SealError):
        s.open(tampered, "ca/cert/a.test")
    for junk in ("", "v1.", "v1.!!!", "v2.AAAA"):
        with pytest.raises(SealError):
            s.open(junk, "x")
    with pytest.raises(SealError, match="at least 16"):
        Sealer(b"short\n")
    assert s.key_id == Sealer(b"0123456789abcdef0123").key_id != Sealer(b"0123456789abcdef0124").key_id


def test_sealer_from_file(tmp_path: Path) -> None:
    with pytest.raises(SealError, match="cannot read the encryption key file"):
        Sealer.from_file(str(tmp_path / "missing"))


def test_ids_and_slugs() -> None:
    assert cert_id(["a.test"]) == "a.test"
    assert cert_id(["a.test", "b.test"]).startswith("a.test+") and cert_id(["a.test", "b.test"]) != cert_id(
        ["a.test", "c.test"]
    )
    assert ca_slug("https://acme-v02.api.letsencrypt.org/directory") == "acme-v02.api.letsencrypt.org-directory"
    assert ca_slug("https://127.0.0.1:14000/dir") == "127.0.0.1-14000-dir"
    assert ca_slug("https://x/../../etc") == "x-..-..-etc"  # no slash: stays one path component


def test_write_atomic(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_atomic(str(path), b"one")
    write_atomic(str(path), b"two")
    assert path.read_bytes() == b"two" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["k.key"]


# -- ACME Renewal Information (RFC 9773) against recorded responses ------------------------------

# RFC 9773 section 4.1's example certificate identifiers and section 4.2's example response.
ARI_AKI = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
ARI_SERIAL = 0x87654321
ARI_PATH = "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
ARI_RESPONSE = {
    "suggestedWindow": {"start": "2025-01-02T04:00:00Z", "end": "2025-01-03T04:00:00Z"},
    "explanationURL": "https://acme.example.com/docs/ari",
}


@pytest.fixture
def recorded_ca() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server replaying a directory with renewalInfo and the RFC's ARI answer."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            headers = {"Content-Type": "application/json"}
            if self.path == "/directory":
                body = {
                    "newNonce": f"{base}/acme/new-nonce",
                    "newAccount": f"{base}/acme/new-acct",
                    "newOrder": f"{base}/acme/new-order",
                    "renewalInfo": f"{base}/acme/renewal-info",
                }
            elif self.path == f"/acme/renewal-info/{ARI_PATH}":
                body, headers["Retry-After"] = ARI_RESPONSE, "21600"
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/directory", seen
    finally:
        srv.shutdown()
        srv.server_close()


def ari_certificate(key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(ARI_SERIAL)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.AuthorityKeyIdentifier(ARI_AKI, None, None), critical=False)
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


def test_renewal_information(recorded_ca: tuple[str, list[str]]) -> None:
    directory, seen = recorded_ca
    client = AcmeClient(directory)
    assert client.offers_renewal_info()
    when, ask_again = client.renewal_info(ari_certificate())
    assert seen[-1] == f"/acme/renewal-info/{ARI_PATH}"  # the RFC's identifier for that certificate
    start = datetime.datetime(2025, 1, 2, 4, tzinfo=datetime.UTC).timestamp()
    assert when is not None and start <= when <= start + 86400  # a random time within the window
    assert ask_again == pytest.approx(datetime.datetime.now().timestamp() + 21600, abs=60)  # its Retry-After
    # the window is in the past: the policy renews at once, whatever renew_before says
    now = datetime.datetime.now(datetime.UTC).timestamp()
    assert renewal_time(now, now + 90 * DAY, 30 * DAY, lambda: 0.0, ari=when) == when < now


def test_manager_renews_when_renewal_information_says_so(recorded_ca: tuple[str, list[str]], tmp_path: Path) -> None:
    """A 90-day certificate, 30-day renew_before: not due for two months by our policy, but the CA's
    renewal window (RFC 9773's example) is in the past, so the manager orders at once (the recorded
    CA cannot issue: the attempt fails, is recorded and backed off)."""
    directory, seen = recorded_ca
    key = ec.generate_private_key(ec.SECP256R1())
    chain = ari_certificate(key)

    async def scenario() -> AcmeManager:
        storage = DirStorage(str(tmp_path), directory)
        await storage.save_certificate(StoredCertificate("a.test", ("a.test",), chain, private_key_pem(key), 0.0))
        manager = AcmeManager(AcmeClient(directory, timeout=5), storage, ChallengeBoard(), Settings())
        manager.want([["a.test"]])
        await manager.start()
        try:
            await eventually(lambda: manager.managed["a.test"].status.failures >= 1, timeout=30)
        finally:
            await manager.close()
        return manager

    manager = asyncio.run(scenario())
    m = manager.managed["a.test"]
    assert m.cert is not None and m.cert.not_after - time.time() > 80 * DAY  # still served
    assert m.ari_when is not None and m.ari_when < time.time()
    assert f"/acme/renewal-info/{ARI_PATH}" in seen
    assert m.status.last_attempt is not None and m.status.next_attempt is not None  # tried, then backed off


def test_a_cancelled_save_has_written_its_files_when_the_cancellation_arrives(tmp_path: Path) -> None:
    """The manager closing cancels a save in its thread: the caller's cancellation waits for the
    thread, so no half-saved certificate (a key without its chain, a .tmp file) is left for the
    next start (found as a flaky tests/acme/test_pebble_dir.py::test_restart_reuses_storage)."""
    big = b"k" * (32 << 20)  # long enough to write that the cancellation surely comes first

    async def scenario() -> None:
        storage = DirStorage(str(tmp_path), "https://ca.test/dir")
        task = asyncio.create_task(storage.save_certificate(StoredCertificate("a.test", ("a.test",), big, big, 0.0)))
        await asyncio.sleep(0.01)  # the thread is writing
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        files = {p.name: p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()}
        assert not [n for n in files if n.endswith(".tmp")], files
        assert files.get("a.test.key") == len(big) and files.get("a.test.crt") == len(big), files

    asyncio.run(scenario())
