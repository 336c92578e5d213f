"""SNI routing in tcp mode, sans-IO: a TcpConnection on fake transports (tests/unit/fakes.py) fed
real ClientHellos (made by Python's ssl over memory BIOs), and the PROXY v2 TLVs it sends checked
with the independent ``proxyprotocol`` parser."""

from __future__ import annotations

import contextlib
import json
import ssl
from typing import Any

import pytest
from proxyprotocol.detect import ProxyProtocolDetect
from proxyprotocol.result import ProxyResult

from edgeproxy.config import Address, Backend, Health, Listener, Route, ServerConfig, Timeouts
from edgeproxy.config.model import ListenerTLS, SendProxy
from edgeproxy.net.context import ListenerContext
from edgeproxy.net.tcp_relay import TcpConnection
from edgeproxy.net.tls_info import TlsInfo
from edgeproxy.pools import BackendPool
from edgeproxy.proto.proxy_protocol import build_v2_tlvs, tls_tlvs
from tests.unit.fakes import FakeLoop, FakeTransport, access_log, event_log, sansio, settle

TIMEOUTS = Timeouts(connect=5.0, client_idle=60.0, server_idle=30.0, http_request=10.0, drain=5.0)
# The backends' servers, by port: which one a connection went to shows in the fake connect.
PORTS = {"alpha": 1001, "beta": 1002, "fallback": 1003}


class TlsTransport(FakeTransport):
    """A connection of a listener that terminated TLS: ``get_extra_info("tls")`` is its TlsInfo."""

    def __init__(self, info: TlsInfo) -> None:
        super().__init__()
        self.info = info

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.info if name == "tls" else super().get_extra_info(name, default)


def client_hello(server_name: str | None) -> bytes:
    """The first flight of a real TLS client (Python's ssl), as it would go on the wire."""
    ctx = ssl.create_default_context()
    if server_name is None:
        ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server's answer
        obj.do_handshake()
    return outgoing.read()


def context(*, send_proxy: SendProxy = "none", tls: bool = False) -> tuple[FakeLoop, ListenerContext]:
    loop = FakeLoop()
    routes = () if tls else (Route(backend="alpha", sni="alpha.test"), Route(backend="beta", sni="*.beta.test"))
    listener = Listener(
        name="sni",
        bind=(Address("192.0.2.1", 443),),
        mode="tcp",
        backend="fallback",
        routes=routes,
        tls=ListenerTLS() if tls else None,
    )
    pools = {
        name: BackendPool(
            Backend(
                name=name,
                send_proxy=send_proxy,
                health=Health(type="none"),
                servers=(ServerConfig(Address("10.0.0.1", port)),),
            )
        )
        for name, port in PORTS.items()
    }
    fake: Any = loop
    # The listener's SSL contexts are only looked at for being there (the handshake is done by
    # net/tls.py before the relay sees the connection): a stand-in, named so.
    contexts: Any = object() if tls else None
    return loop, ListenerContext(fake, listener, TIMEOUTS, pools, tls=contexts)


def parse_header(data: bytes) -> tuple[ProxyResult, bytes]:
    length = int.from_bytes(data[14:16], "big")
    return ProxyProtocolDetect().unpack(data[: 16 + length]), data[16 + length :]


def backend_of(loop: FakeLoop) -> str:
    (upstream,) = loop.connections
    return {port: name for name, port in PORTS.items()}[upstream.peer[1]]


@sansio
async def test_client_hello_fed_byte_by_byte_is_routed_by_sni_and_relayed_untouched() -> None:
    for name, backend in [("alpha.test", "alpha"), ("x.beta.test", "beta"), ("a.b.beta.test", "fallback")]:
        loop, ctx = context()
        conn = TcpConnection(ctx)
        client = FakeTransport(conn)
        conn.connection_made(client)  # type: ignore[arg-type]
        hello = client_hello(name)
        for i in range(len(hello)):
            conn.data_received(hello[i : i + 1])
            await settle()
            if i < len(hello) - 1:
                assert not loop.connections, "connected before the ClientHello was whole"
        conn.data_received(b"more")
        await settle()
        assert backend_of(loop) == backend, name
        assert loop.connections[0].written == hello + b"more"
        with access_log() as out:
            client.lose()
        assert json.loads(out.getvalue())["sni"] == name


@sansio
async def test_no_sni_goes_to_the_listeners_backend_and_v2_header_has_no_authority() -> None:
    loop, ctx = context(send_proxy="v2")
    conn = TcpConnection(ctx)
    conn.connection_made(FakeTransport(conn))  # type: ignore[arg-type]
    hello = client_hello(None)
    conn.data_received(hello)
    await settle()
    assert backend_of(loop) == "fallback"
    header, rest = parse_header(bytes(loop.connections[0].written))
    assert header.tlv.authority is None and rest == hello


@sansio
async def test_v2_header_carries_the_sni_as_authority() -> None:
    loop, ctx = context(send_proxy="v2")
    conn = TcpConnection(ctx)
    conn.connection_made(FakeTransport(conn))  # type: ignore[arg-type]
    hello = client_hello("x.beta.test")
    conn.data_received(hello)
    await settle()
    header, rest = parse_header(bytes(loop.connections[0].written))
    assert str(header.source[0]) == "192.0.2.10" and header.source[1] == 40000  # type: ignore[index]
    assert header.tlv.authority == "x.beta.test"
    assert not header.tlv.ssl.has_ssl  # not terminated here: nothing to say about the TLS
    assert rest == hello


@sansio
async def test_not_a_client_hello_is_closed_with_a_log_line_and_nothing_forwarded() -> None:
    for first in (b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"):
        loop, ctx = context()
        conn = TcpConnection(ctx)
        client = FakeTransport(conn)
        conn.connection_made(client)  # type: ignore[arg-type]
        with event_log() as events, access_log() as access:
            conn.data_received(first)
            await settle()
        assert client.closed and not loop.connections
        warning = json.loads(events.getvalue())
        assert warning["msg"] == "dropping client: no TLS ClientHello" and warning["client"] == "192.0.2.10:40000"
        assert json.loads(access.getvalue())["end"] == "bad_client_hello"


@sansio
async def test_a_silent_client_is_closed_at_the_request_deadline() -> None:
    loop, ctx = context()
    conn = TcpConnection(ctx)
    client = FakeTransport(conn)
    conn.connection_made(client)  # type: ignore[arg-type]
    conn.data_received(client_hello("alpha.test")[:20])
    loop.advance(TIMEOUTS.http_request - 0.1)
    assert not client.closed
    with event_log(), access_log() as access:
        loop.advance(0.2)
    assert client.closed and not loop.connections
    assert json.loads(access.getvalue())["end"] == "client_hello_timeout"


@sansio
async def test_terminating_listener_sends_pp2_ssl_with_version_cipher_and_authority() -> None:
    loop, ctx = context(send_proxy="v2", tls=True)
    conn = TcpConnection(ctx)
    info = TlsInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", sni="alpha.test", alpn=None)
    conn.connection_made(TlsTransport(info))  # type: ignore[arg-type]
    await settle()
    header, rest = parse_header(bytes(loop.connections[0].written))
    assert rest == b""
    assert header.tlv.authority == "alpha.test"
    ssl_tlv = header.tlv.ssl
    assert ssl_tlv.has_ssl and ssl_tlv.verified  # PP2_CLIENT_SSL, verify == 0
    assert (ssl_tlv.version, ssl_tlv.cipher) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384")


def test_tls_tlvs_without_sni_and_over_long_names() -> None:
    header = build_v2_tlvs(("192.0.2.1", 1), ("192.0.2.2", 2), tls_tlvs(None, "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256"))
    parsed, rest = parse_header(header)
    assert rest == b"" and parsed.tlv.authority is None
    assert parsed.tlv.ssl.version == "TLSv1.2" and parsed.tlv.ssl.cipher == "ECDHE-RSA-AES128-GCM-SHA256"
    assert tls_tlvs(None) == b""
    with pytest.raises(ValueError, match="over 255"):
        tls_tlvs("a" * 256)
