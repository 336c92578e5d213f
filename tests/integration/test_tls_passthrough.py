"""TLS through edgeproxy without terminating it (tcp listeners with ``sni`` routes) and TLS from
edgeproxy to backends (``backends.X.tls``): a real edgeproxy process, real TLS servers and clients
(Python's ssl, certificates of a throw-away CA made by trustme), PROXY headers read by the
independent ``proxyprotocol`` package on the backend side."""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.helpers import (
    NO_CHECKS,
    Backend,
    EdgeProxy,
    HttpBackend,
    HttpClient,
    Seen,
    connect,
    edgeproxy,
    free_port,
    recv_all,
)
from tests.helpers import (
    test_dir as make_dir,
)
from tests.privsep import need_privsep, python_for


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def ca_file(ca: trustme.CA) -> str:
    path = make_dir("edgeproxy-ca-") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


class TlsServer:
    """A TLS server (over a tests.helpers.Backend): answers each connection with its label and
    the server name the client asked for, then echoes. ``expect_proxy``: a PROXY header first."""

    def __init__(self, ctx: ssl.SSLContext, label: str, *, expect_proxy: bool = False) -> None:
        self.label = label
        self.names: list[str | None] = []
        ctx.sni_callback = self._sni
        self.ctx = ctx
        self.backend = Backend(self._serve, expect_proxy=expect_proxy)

    def _sni(self, _obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.names.append(name)

    def _serve(self, conn: socket.socket, seen: Seen) -> None:
        conn.settimeout(10)
        with self.ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(f"{self.label}\n".encode())
            while data := tls.recv(65536):
                tls.sendall(data)

    @property
    def address(self) -> str:
        return self.backend.address

    @property
    def seen(self) -> list[Seen]:
        return self.backend.seen


def ask(port: int, ctx: ssl.SSLContext, name: str | None) -> str:
    """A TLS client to ``name`` through the proxy: the label of the server that answered, after
    a round trip of data."""
    with connect("127.0.0.1", port) as raw, ctx.wrap_socket(raw, server_hostname=name) as tls:
        label = tls.recv(100).decode().strip()
        tls.sendall(b"ping")
        assert tls.recv(4) == b"ping"
        return label


def sni_config(port: int, servers: dict[str, str], **backend: Any) -> dict[str, Any]:
    return {
        "timeouts": {"connect": "2s", "http_request": "2s", "client_idle": "30s"},
        "listeners": [
            {
                "name": "sni",
                "bind": f"127.0.0.1:{port}",
                "mode": "tcp",
                "backend": "fallback",
                "routes": [{"sni": "alpha.test", "backend": "alpha"}, {"sni": "*.beta.test", "backend": "beta"}],
            }
        ],
        "backends": {name: {"servers": [address], "health": NO_CHECKS, **backend} for name, address in servers.items()},
    }


@contextlib.contextmanager
def three_servers(ca: trustme.CA, *, expect_proxy: bool = False) -> Iterator[dict[str, TlsServer]]:
    servers = {
        "alpha": TlsServer(server_context(ca, "alpha.test"), "alpha", expect_proxy=expect_proxy),
        "beta": TlsServer(server_context(ca, "*.beta.test"), "beta", expect_proxy=expect_proxy),
        "fallback": TlsServer(server_context(ca, "fallback.test", "127.0.0.1"), "fallback", expect_proxy=expect_proxy),
    }
    try:
        yield servers
    finally:
        for s in servers.values():
            s.backend.close()


@contextlib.contextmanager
def sni_proxy(ca: trustme.CA, **backend: Any) -> Iterator[tuple[int, dict[str, TlsServer], EdgeProxy]]:
    """edgeproxy's tcp listener with sni routes to the three servers: (its port, servers, proxy)."""
    port = free_port()
    with (
        three_servers(ca, expect_proxy=backend.get("send_proxy") == "v2") as servers,
        edgeproxy(sni_config(port, {k: v.address for k, v in servers.items()}, **backend)) as proxy,
    ):
        yield port, servers, proxy


def test_passthrough_to_real_tls_servers_chosen_by_sni(ca: trustme.CA) -> None:
    client = client_context(ca)
    with sni_proxy(ca) as (port, servers, proxy):
        assert ask(port, client, "alpha.test") == "alpha"
        assert ask(port, client, "ALPHA.test") == "alpha"  # names are case-insensitive
        assert ask(port, client, "www.beta.test") == "beta"
        assert ask(port, client, "fallback.test") == "fallback"  # no route: the listener's backend
        no_sni = client_context(ca)
        assert ask(port, no_sni, "127.0.0.1") == "fallback"  # an IP address: no SNI sent
        # The servers terminated the TLS themselves: they saw the names exactly as the clients
        # sent them (the bytes are relayed untouched; only the routing lower-cases).
        assert servers["alpha"].names == ["alpha.test", "ALPHA.test"]
        assert servers["beta"].names == ["www.beta.test"]
        assert servers["fallback"].names == ["fallback.test", None]
        names = {"alpha.test", "www.beta.test", "fallback.test"}
        access = proxy.wait_lines(
            lambda r: r.get("listener") == "sni" and "end" in r, lambda lines: {r.get("sni") for r in lines} >= names
        )
        assert {r.get("sni") for r in access} >= names


def test_send_proxy_v2_carries_the_sni_as_authority(ca: trustme.CA) -> None:
    client = client_context(ca)
    with sni_proxy(ca, send_proxy="v2") as (port, servers, _proxy):
        with connect("127.0.0.1", port, source="127.0.0.31") as raw:
            cport = raw.getsockname()[1]
            with client.wrap_socket(raw, server_hostname="x.beta.test") as tls:
                assert tls.recv(100) == b"beta\n"
        assert ask(port, client, "127.0.0.1") == "fallback"
    (seen,) = servers["beta"].seen
    assert seen.proxy is not None and seen.proxy.tlv.authority == "x.beta.test"
    assert seen.proxy.source == (seen.proxy.source[0], cport) and str(seen.proxy.source[0]) == "127.0.0.31"
    (no_sni,) = servers["fallback"].seen
    assert no_sni.proxy is not None and no_sni.proxy.tlv.authority is None


def send_hello_byte_by_byte(port: int, ctx: ssl.SSLContext, name: str) -> str:
    """A TLS client whose ClientHello goes one byte per TCP segment (TCP_NODELAY, a pause
    between), then finishes the handshake over memory BIOs: the label of the server."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with connect("127.0.0.1", port) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(ssl.SSLWantReadError):
            obj.do_handshake()
        for byte in outgoing.read():
            s.send(bytes((byte,)))
            time.sleep(0.001)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if out := outgoing.read():
                    s.sendall(out)
                data = s.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)
        s.sendall(outgoing.read())
        while True:
            try:
                return obj.read(100).decode().strip()
            except ssl.SSLWantReadError:
                incoming.write(s.recv(65536))


def test_client_hello_one_byte_per_segment(ca: trustme.CA) -> None:
    with sni_proxy(ca) as (port, _servers, _proxy):
        assert send_hello_byte_by_byte(port, client_context(ca), "alpha.test") == "alpha"
        assert send_hello_byte_by_byte(port, client_context(ca), "b.beta.test") == "beta"


def test_non_tls_and_silent_clients_are_closed_while_others_are_served(ca: trustme.CA) -> None:
    client = client_context(ca)
    with sni_proxy(ca) as (port, servers, proxy):
        # 50 clients that connect and say nothing, held open meanwhile.
        silent = [connect("127.0.0.1", port) for _ in range(50)]
        try:
            with connect("127.0.0.1", port) as plain:
                plain.sendall(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
                assert recv_all(plain) == b""  # closed, no answer
            proxy.wait_log(lambda r: r.get("msg") == "dropping client: no TLS ClientHello")
            with connect("127.0.0.1", port) as junk:
                junk.sendall(bytes(range(256)))
                assert recv_all(junk) == b""
            assert ask(port, client, "alpha.test") == "alpha"  # served while the 50 wait
            started = time.monotonic()
            for s in silent:  # each is closed at timeouts.http_request (2s) from its accept
                s.settimeout(15)
                assert recv_all(s) == b""
            assert time.monotonic() - started < 15
        finally:
            for s in silent:
                s.close()
        assert ask(port, client, "www.beta.test") == "beta"
        lines = proxy.wait_lines(
            lambda r: r.get("listener") == "sni" and "end" in r,
            lambda ls: [r["end"] for r in ls].count("client_hello_timeout") >= 50,
        )
        ends = [r["end"] for r in lines]
        assert ends.count("client_hello_timeout") == 50
        assert ends.count("bad_client_hello") == 2
    # Nothing of the refused clients reached a server.
    assert [len(s.seen) for s in servers.values()] == [1, 1, 0]


# -- TLS to backends -------------------------------------------------------------------------------
class TlsHttpBackend(HttpBackend):
    """tests.helpers.HttpBackend behind TLS (its own certificate for ``names``)."""

    def __init__(self, ca: trustme.CA, *names: str) -> None:
        self.ctx = server_context(ca, *names)
        self.handshake_errors: list[str] = []
        super().__init__()

    def _serve(self, conn: socket.socket, seen: Seen) -> None:
        conn.settimeout(10)
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.handshake_errors.append(str(e))
            return
        with tls:
            super()._serve(tls, seen)


def http_config(port: int, servers: list[str], tls: dict[str, Any] | bool, **extra: Any) -> dict[str, Any]:
    return {
        "timeouts": {"connect": "2s"},
        "listeners": [{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "backend": "app"}],
        "backends": {"app": {"servers": servers, "health": NO_CHECKS, "tls": tls, **extra}},
    }


def test_http_to_a_tls_backend_verified_with_its_ca_keeps_connections_alive(ca: trustme.CA) -> None:
    backend = TlsHttpBackend(ca, "app.internal")
    port = free_port()
    cfg = http_config(port, [backend.address], {"ca": ca_file(ca), "sni": "app.internal"})
    with edgeproxy(cfg):
        for i in range(5):  # a new client connection each time: the upstream one is reused
            with HttpClient("127.0.0.1", port, source=f"127.0.0.{40 + i}") as c:
                seen = c.json("/")
                assert seen["xff"] == [f"127.0.0.{40 + i}"]
    assert len(backend.requests) == 5
    assert backend.connections == 1  # one TLS connection, kept alive and pooled
    backend.close()


def test_failed_verification_is_502_with_a_log_line_naming_backend_and_reason(ca: trustme.CA) -> None:
    other_ca = trustme.CA()
    backend = TlsHttpBackend(other_ca, "app.internal")  # signed by a CA edgeproxy does not trust
    wrong_name = TlsHttpBackend(ca, "other.internal")
    port = free_port()
    cfg = http_config(port, [backend.address], {"ca": ca_file(ca), "sni": "app.internal"}, retries=0)
    cfg["backends"]["named"] = {
        "servers": [wrong_name.address],
        "health": NO_CHECKS,
        "retries": 0,
        "tls": {"ca": ca_file(ca), "sni": "app.internal"},
    }
    cfg["listeners"][0]["routes"] = [{"path_prefix": "/named", "backend": "named"}]
    with edgeproxy(cfg) as proxy:
        with HttpClient("127.0.0.1", port) as c:
            status, _headers, _body = c.request("/")
            assert status == 502
        rec = proxy.wait_log(lambda r: r.get("msg") == "connect to server failed" and r.get("backend") == "app")
        assert rec["error"].startswith("certificate verify failed: unable to get local issuer certificate")
        with HttpClient("127.0.0.1", port) as c:
            status, _headers, _body = c.request("/named")
            assert status == 502
        rec = proxy.wait_log(lambda r: r.get("msg") == "connect to server failed" and r.get("backend") == "named")
        assert "Hostname mismatch" in rec["error"] or "hostname" in rec["error"].lower()
    assert backend.requests == [] and wrong_name.requests == []
    backend.close()
    wrong_name.close()


def test_verify_false_accepts_any_certificate(ca: trustme.CA) -> None:
    backend = TlsHttpBackend(trustme.CA(), "anything")
    port = free_port()
    with edgeproxy(http_config(port, [backend.address], {"verify": False})), HttpClient("127.0.0.1", port) as c:
        assert c.json("/")["xff"] == ["127.0.0.1"]
    backend.close()


def test_tcp_to_a_tls_backend_with_proxy_header_first_and_close_on_failure(ca: trustme.CA) -> None:
    """tcp listener, TLS to the server: the PROXY header in clear, then the handshake (HAProxy's
    ``send-proxy`` with ``ssl``); a server the CA did not sign: the client is closed."""
    good = TlsServer(server_context(ca, "db.internal"), "db", expect_proxy=True)
    bad = TlsServer(server_context(trustme.CA(), "db.internal"), "bad", expect_proxy=True)
    ports = free_port(), free_port()
    tls = {"ca": ca_file(ca), "sni": "db.internal"}
    cfg: dict[str, Any] = {
        "timeouts": {"connect": "2s"},
        "listeners": [
            {"name": "good", "bind": f"127.0.0.1:{ports[0]}", "mode": "tcp", "backend": "good"},
            {"name": "bad", "bind": f"127.0.0.1:{ports[1]}", "mode": "tcp", "backend": "bad"},
        ],
        "backends": {
            name: {"servers": [s.address], "health": NO_CHECKS, "send_proxy": "v2", "retries": 0, "tls": tls}
            for name, s in (("good", good), ("bad", bad))
        },
    }
    with edgeproxy(cfg) as proxy:
        with connect("127.0.0.1", ports[0], source="127.0.0.51") as c:
            # edgeproxy terminates nothing here: the client speaks plain bytes, the server TLS.
            assert c.recv(100) == b"db\n"
            c.sendall(b"hello")
            assert c.recv(5) == b"hello"
        with connect("127.0.0.1", ports[1]) as c:
            assert recv_all(c) == b""
        rec = proxy.wait_log(lambda r: r.get("msg") == "connect to server failed" and r.get("backend") == "bad")
        assert "certificate verify failed" in rec["error"]
    (seen,) = good.seen
    assert seen.proxy is not None and str(seen.proxy.source[0]) == "127.0.0.51"
    assert good.names == ["db.internal"]
    good.backend.close()
    bad.backend.close()


def test_check_refuses_a_missing_ca_file_with_its_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "edgeproxy.yaml"
    cfg.write_text(
        "listeners:\n"
        "  - {name: web, bind: 127.0.0.1:8080, mode: http, backend: app}\n"
        "backends:\n"
        "  app:\n"
        "    servers: [127.0.0.1:8443]\n"
        "    tls:\n"
        f"      ca: {tmp_path}/missing.pem\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "edgeproxy", "check", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert f"{cfg}:7: backends.app.tls.ca: cannot read {tmp_path}/missing.pem: No such file or directory" in (
        out.stdout + out.stderr
    )


def test_workers_dropped_to_nobody_verify_with_a_ca_file_only_root_can_read(ca: trustme.CA, tmp_path: Path) -> None:
    """The supervisor (root) reads the ca file; the workers (nobody, which cannot open it: mode
    0600 in root's 0700 pytest directory) get its contents over the channel, at start and reload."""
    need_privsep()
    backend = TlsHttpBackend(ca, "app.internal")
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    ca_path.chmod(0o600)
    port = free_port()
    cfg = {**http_config(port, [backend.address], {"ca": str(ca_path), "sni": "app.internal"}), "user": "nobody"}
    cfg["workers"] = 2
    with edgeproxy(cfg, python=python_for()) as proxy:
        for i in range(4):
            with HttpClient("127.0.0.1", port, source=f"127.0.0.{60 + i}") as c:
                assert c.json("/")["xff"] == [f"127.0.0.{60 + i}"]
        cfg["backends"]["app"]["retries"] = 1
        proxy.write_config(cfg)
        proxy.send(signal.SIGHUP)
        proxy.wait_log(lambda r: r.get("msg") == "configuration reloaded")
        with HttpClient("127.0.0.1", port) as c:
            assert c.json("/")["xff"] == ["127.0.0.1"]
    assert len(backend.requests) == 5
    backend.close()
