"""TCP mode: accept, pick a server, connect (with retries), send the PROXY header, relay.

One ``TcpConnection`` per client. Its client side is the asyncio Protocol of the accepted
transport; the upstream side is a small ``_Upstream`` protocol that forwards into it. Both
directions are plain ``transport.write`` calls with backpressure tied across the pair: when one
transport's write buffer passes its high-water mark (``pause_writing``), reading from the other
side stops until it drains. Nothing else buffers, so memory per connection is bounded by the two
transports' high-water marks.

A listener with ``sni`` routes reads the client's TLS ClientHello first (proto/tls_hello.py:
records and messages split across reads are reassembled, at most 32 KiB are looked at), picks
the backend by its server name, then connects and relays every byte the client sent, the
ClientHello first, untouched. First bytes that are not a ClientHello end the connection with a
log line; nothing is forwarded. With ``send_proxy: v2`` the server name travels in the header
(``PP2_TYPE_AUTHORITY``); on a listener that terminates TLS, so do the version and cipher
(``PP2_TYPE_SSL``), taken from the transport's ``tls`` extra info.

One timer per connection: while a trusted peer's PROXY header or the ClientHello is awaited its
deadline is ``timeouts.http_request`` from accept, afterwards the idle limit from the last byte
either way. The connecting task is kept and cancelled on close.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from edgeproxy.log import log
from edgeproxy.net.accept_proxy import ClientAddressReader
from edgeproxy.net.upstream import connect_upstream
from edgeproxy.proto.proxy_protocol import NEED_DATA, tls_tlvs
from edgeproxy.proto.tls_hello import ClientHelloReader, TlsHelloError

if TYPE_CHECKING:
    from edgeproxy.balance import Server
    from edgeproxy.net.context import ListenerContext
    from edgeproxy.net.tls_info import TlsInfo


class _Upstream(asyncio.Protocol):
    """The server side of one relayed connection; every event is handed to the owner."""

    __slots__ = ("conn", "early", "peer", "transport")

    def __init__(self, conn: TcpConnection) -> None:
        self.conn = conn
        self.peer: asyncio.Transport | None = None  # the client's transport, once relaying
        self.early: list[bytes] = []  # what the server said before `peer` was wired

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.bytes_out += len(data)
        conn.last_activity = conn.loop.time()
        peer = self.peer
        if peer is None:
            # A server that speaks first (SMTP, MySQL, a banner) can be heard before the
            # connecting task has wired ``peer`` (uvloop starts reading right after
            # connection_made, even if it paused): keep this one read and stop reading.
            self.early.append(data)
            self.transport.pause_reading()
            return
        peer.write(data)

    def wire(self, peer: asyncio.Transport) -> None:
        self.peer = peer
        if self.early:
            peer.write(b"".join(self.early))
            self.early.clear()
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.conn.server_eof()
        return True  # keep our write side open: the client may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.server_lost()

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.conn.client_eof:
            self.peer.resume_reading()


class TcpConnection(asyncio.Protocol):
    __slots__ = (
        "backend",
        "bytes_in",
        "bytes_out",
        "client",
        "client_eof",
        "client_transport",
        "closed",
        "connecting",
        "ctx",
        "dest",
        "header_reader",
        "hello",
        "idle_handle",
        "last_activity",
        "loop",
        "pending",
        "server",
        "server_eof_seen",
        "sni",
        "started",
        "tls",
        "upstream",
        "upstream_transport",
    )

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.client_transport: asyncio.Transport | None = None
        self.upstream_transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.server: Server | None = None
        self.backend = ""
        self.client: tuple[str, int] = ("", 0)
        self.dest: tuple[str, int] = ("", 0)
        self.pending: list[bytes] = []  # client bytes that arrived before the upstream was ready
        self.header_reader: ClientAddressReader | None = None
        self.hello: ClientHelloReader | None = None  # while the ClientHello is read (sni routes)
        self.sni: str | None = None  # the server name the client asked for, once known
        self.tls: TlsInfo | None = None  # the handshake, on a listener that terminates TLS
        self.bytes_in = 0
        self.bytes_out = 0
        self.client_eof = False
        self.server_eof_seen = False
        self.closed: str | None = None
        self.started = self.last_activity = self.loop.time()
        self.idle_handle: asyncio.TimerHandle | None = None
        self.connecting: asyncio.Task[None] | None = None

    # -- client side ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.client_transport = cast(asyncio.Transport, transport)
        ctx = self.ctx
        ctx.opened(self)
        peer = t.get_extra_info("peername")
        local = t.get_extra_info("sockname")
        self.client = (peer[0], peer[1])
        self.dest = (local[0], local[1])
        if ctx.tls is not None:  # terminated here: the handshake's facts (net/tls_info.TlsInfo)
            self.tls = cast("TlsInfo | None", t.get_extra_info("tls"))
            if self.tls is not None:
                self.sni = self.tls.sni
        if ctx.tls is None and ctx.must_send_proxy_header(peer[0]):  # (with tls: read by net/tls.py)
            self.header_reader = ClientAddressReader(ctx, self)
        elif ctx.peek_hello:
            self.hello = ClientHelloReader()
        self.idle_handle = self.loop.call_at(self._deadline(), self._check_idle)
        if self.header_reader is not None or self.hello is not None:
            return
        t.pause_reading()  # until the upstream is connected: no unbounded buffering meanwhile
        self._start_connect()

    def proxy_header_done(self, client: tuple[str, int], dest: tuple[str, int], rest: bytes) -> None:
        """Called by the accept_proxy reader once a trusted peer's header has been parsed."""
        self.header_reader = None
        self.client, self.dest = client, dest
        if self.ctx.peek_hello:  # the ClientHello follows the header, within the same deadline
            self.hello = ClientHelloReader()
            if rest:
                self._hello_data(rest)
            return
        self._rearm()
        if rest:
            self.pending.append(rest)
        cast(asyncio.Transport, self.client_transport).pause_reading()
        self._start_connect()

    def _hello_data(self, data: bytes) -> None:
        """Bytes of the ClientHello: kept to be relayed; once it is whole, route and connect."""
        hello = cast(ClientHelloReader, self.hello)
        self.bytes_in += len(data)
        self.pending.append(data)
        try:
            found = hello.feed(data)
        except TlsHelloError as e:
            self._refuse("bad_client_hello", str(e))
            return
        if found is NEED_DATA:
            return
        self.hello = None
        self.sni = found.sni
        self._rearm()
        cast(asyncio.Transport, self.client_transport).pause_reading()
        self._start_connect()

    def _refuse(self, reason: str, detail: str) -> None:
        """A client whose first bytes are not a TLS ClientHello: closed, nothing forwarded."""
        log.warning(
            "dropping client: no TLS ClientHello",
            listener=self.ctx.listener.name,
            client=_hostport(self.client),
            error=detail,
        )
        self.close(reason)

    def _rearm(self) -> None:
        """The deadline of the first bytes is over: from now on the idle one."""
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        self.idle_handle = self.loop.call_at(self._deadline(), self._check_idle)

    def _start_connect(self) -> None:
        self.connecting = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        ctx = self.ctx
        pool = ctx.pool_for_connection(self.sni)
        if pool is None:
            self.connecting = None
            self.close("no_server")
            return
        upstream = _Upstream(self)
        header = pool.proxy_header(self.client, self.dest, self._tlvs() if self.sni or self.tls else b"")
        # The client's first bytes (a ClientHello, what followed a PROXY header) go with the header.
        first = b"".join(self.pending)
        self.pending.clear()
        result = await connect_upstream(ctx, pool, self.client[0], lambda _server: upstream, header=header, data=first)
        self.connecting = None
        if self.closed is not None:  # closed as the connect completed (close() cancels it otherwise)
            if result is not None:
                result[0].close()
                result[1].release()
            return
        if result is None:
            self.close("connect_failed")
            return
        transport, self.server = result
        self.upstream_transport = transport
        self.upstream = upstream
        self.backend = pool.name
        if self.pending:  # what came during the connect (a read already under way when paused)
            transport.write(b"".join(self.pending))
            self.pending.clear()
        client = cast(asyncio.Transport, self.client_transport)
        upstream.wire(client)
        if self.client_eof:
            if transport.can_write_eof():
                transport.write_eof()
        else:
            client.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        if self.upstream_transport is not None:
            self.bytes_in += len(data)
            self.upstream_transport.write(data)
        elif self.header_reader is not None:
            self.header_reader.feed(data)
        elif self.hello is not None:
            self._hello_data(data)
        else:
            self.bytes_in += len(data)
            self.pending.append(data)

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.header_reader is not None or self.hello is not None:
            self.close("client_closed")
            return False
        up = self.upstream_transport
        if up is not None and up.can_write_eof():
            up.write_eof()
        if self.server_eof_seen:
            self.close("client_closed")
            return False
        return True  # half-close: the reply may still be on its way to the client

    def connection_lost(self, exc: Exception | None) -> None:
        self.close("client_closed" if self.closed is None else self.closed)

    def pause_writing(self) -> None:
        if self.upstream_transport is not None:
            self.upstream_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream_transport is not None and not self.server_eof_seen:
            self.upstream_transport.resume_reading()

    def _tlvs(self) -> bytes:
        """PROXY v2 TLVs for this client's TLS: its server name, and what was negotiated when
        this listener terminated it."""
        facts = self.tls
        if facts is not None:
            return tls_tlvs(facts.sni, facts.version, facts.cipher)
        return tls_tlvs(self.sni)

    # -- server side -----------------------------------------------------------------------------
    def server_eof(self) -> None:
        self.server_eof_seen = True
        client = self.client_transport
        if client is not None and client.can_write_eof():
            client.write_eof()
        if self.client_eof:
            self.close("server_closed")

    def server_lost(self) -> None:
        if self.closed is None:
            self.close("server_closed")

    # -- ending ----------------------------------------------------------------------------------
    def _deadline(self) -> float:
        """When the connection ends if nothing happens: one rule to arm and to fire the timer."""
        if self.header_reader is not None or self.hello is not None:
            return self.started + self.ctx.timeouts.http_request
        return self.last_activity + self.ctx.idle_timeout

    def _check_idle(self) -> None:
        self.idle_handle = None
        if self.closed is not None:
            return
        deadline = self._deadline()
        if self.loop.time() < deadline:
            self.idle_handle = self.loop.call_at(deadline, self._check_idle)
        elif self.header_reader is not None:
            self.header_reader.timed_out()
        elif self.hello is not None:
            self._refuse("client_hello_timeout", "no complete ClientHello within timeouts.http_request")
        else:
            self.close("idle_timeout")

    def close(self, reason: str, *, abort: bool = False) -> None:
        """End both sides once; buffered bytes are still flushed unless ``abort``."""
        if self.closed is not None:
            return
        self.closed = reason
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        for t in (self.client_transport, self.upstream_transport):
            if t is not None:
                if abort:
                    t.abort()
                else:
                    t.close()
        server = self.server
        if server is not None:
            server.release()
        ctx = self.ctx
        ctx.closed(self, reason, self.bytes_in, self.bytes_out)
        line = {
            "listener": ctx.listener.name,
            "client": _hostport(self.client),
            "backend": self.backend or ctx.listener.backend,
            "server": server.name if server is not None else None,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_ms": round((self.loop.time() - self.started) * 1000, 1),
            "end": reason,
        }
        if self.sni is not None:
            line["sni"] = self.sni
        log.access_line(line)


def _hostport(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
