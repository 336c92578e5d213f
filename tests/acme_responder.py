"""A challenge responder built the way the listeners will answer: a real asyncio HTTP server that
answers ``/.well-known/acme-challenge/`` from a ``ChallengeBoard``, and a real TLS server that
reads the ClientHello first (``proto.tls_hello``) and picks the acme-tls/1 context by its ALPN and
SNI (``acme.answers.ChallengeContexts``), then handshakes over memory BIOs with the bytes it read.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import cast

import trustme

from edgeproxy.acme.answers import HTTP01_CONTENT_TYPE, ChallengeContexts, http01_response
from edgeproxy.acme.board import ChallengeBoard
from edgeproxy.proto.proxy_protocol import NEED_DATA
from edgeproxy.proto.tls_hello import ClientHelloReader, TlsHelloError
from tests.unit.test_tls_certificates import handshake


class Responder:
    def __init__(self, board: ChallengeBoard, http_port: int, tls_port: int, host: str = "127.0.0.1") -> None:
        self.board = board
        self.contexts = ChallengeContexts(board)
        self.host, self.http_port, self.tls_port = host, http_port, tls_port
        self.http_hits: list[tuple[str, int]] = []  # (path, status)
        self.tls_hits: list[tuple[str | None, bool]] = []  # (sni, answered with an acme-tls/1 certificate)
        self._servers: list[asyncio.Server] = []

    async def start(self) -> Responder:
        loop = asyncio.get_running_loop()
        self._servers = [
            await asyncio.start_server(self._http, self.host, self.http_port),
            await loop.create_server(lambda: _TlsAlpn(self), self.host, self.tls_port),
        ]
        return self

    async def close(self) -> None:
        for s in self._servers:
            s.close()
            await s.wait_closed()

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            path = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("ascii", "replace")
            body = http01_response(self.board, path)
            status = 200 if body is not None else 404
            body = body or b"not found\n"
            self.http_hits.append((path, status))
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: {HTTP01_CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, IndexError):
            pass
        finally:
            writer.close()


class _TlsAlpn(asyncio.Protocol):
    """Reads the ClientHello, chooses the context, then runs the handshake over memory BIOs."""

    def __init__(self, responder: Responder) -> None:
        self.r = responder
        self.reader = ClientHelloReader()
        self.transport: asyncio.Transport | None = None
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls: ssl.SSLObject | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.incoming.write(data)
        if self.tls is None:
            try:
                hello = self.reader.feed(data)
            except TlsHelloError:
                self.transport.close()
                return
            if hello is NEED_DATA:
                return
            ctx = self.r.contexts.for_hello(hello)
            self.r.tls_hits.append((hello.sni, ctx is not None))
            if ctx is None:
                self.transport.close()  # a listener would go on with its own certificates
                return
            self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        try:
            self.tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        except ssl.SSLError:
            self.transport.close()
            return
        out = self.outgoing.read()
        if out:
            self.transport.write(out)
        if done:
            self.transport.close()  # the validation only looks at the certificate


class _Trust:
    """What ``tests.unit.test_tls_certificates.handshake`` asks of its CA: trust for the client."""

    def __init__(self, cadata: str | None) -> None:
        self.cadata = cadata

    def configure_trust(self, ctx: ssl.SSLContext) -> None:
        if self.cadata is not None:
            ctx.load_verify_locations(cadata=self.cadata)


def memory_handshake(
    server_ctx: ssl.SSLContext, sni: str, *, cadata: str | None = None, alpn: tuple[str, ...] = ()
) -> ssl.SSLObject:
    """A full handshake with Python's client over memory BIOs (the TLS tests' helper), trusting
    ``cadata`` (None: no verification, to inspect a self-signed certificate); the client's side."""
    client: dict[str, object] = {}
    if cadata is None:
        client.update(check_hostname=False, verify_mode=ssl.CERT_NONE)
    if alpn:
        client["alpn"] = alpn
    return handshake(server_ctx, cast(trustme.CA, _Trust(cadata)), sni, **client)


async def eventually(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``cond`` until true (generous deadlines: the machine may be loaded)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
