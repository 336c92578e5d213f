"""HTTP mode: one ``HttpConnection`` per client connection, every request routed and balanced on
its own, over keep-alive upstream connections (``http_upstream``, ``upstream_pool``).

Per request: the head is found (``\\r\\n\\r\\n``, at most 16 KiB; a blank line with a bare LF is
a 400 at once) and parsed once (``proto.http_request``), refused with a short error response if
it could smuggle, routed (``ctx.pool_for_request``), rewritten (``proto.forwarded``: one
concatenation in the common case) and written upstream together with whatever body bytes came
with it. The body streams through as received, framed by Content-Length or ``ChunkedReader`` so
the next pipelined request starts exactly where this one ends. Requests are answered in order:
while one is in flight, bytes of the next are held and reading from the client stops, so a
pipelining client is bounded by one read.

Backpressure is tied across the pair as in TCP mode: a full upstream write buffer pauses reading
from the client, a full client write buffer pauses reading from the server.

The connection is a state machine with one state variable (``state``):

    PROXY ─header─▶ NEW ─byte─▶ HEAD ─head─▶ CONNECTING ─connected─▶ BODY ─body end─▶ WAIT
                     IDLE ─byte─▶ HEAD ─head (idle connection)──────▶ BODY / WAIT
    WAIT ─response head─▶ RESPONSE ─response end─▶ IDLE (keep-alive) or closed
    WAIT ─101─▶ TUNNEL;  WAIT ─server closed, no byte, idempotent─▶ CONNECTING (sent again)
    any ─error answer─▶ LINGER ─▶ CLOSED;  any ─close─▶ CLOSED

Each state has one deadline (``HttpSettings.limits`` and ``_FROM_ENTRY``: a limit counted from
entering the state or from the last byte either way), used both to arm the connection's single
timer and, when it fires, to decide whether the deadline really passed (``_deadline``) and what
it means (``_expire``). Empty lines before a request are head bytes: they start the head's clock, so a
client cannot hold a connection by sending CRLF forever. The one task a connection may run (a
connect) is kept in ``task`` and cancelled on close.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Final, cast

from edgeproxy.log import log
from edgeproxy.net.accept_proxy import ClientAddressReader
from edgeproxy.net.http_upstream import UpstreamConn
from edgeproxy.net.listener import TcpListener
from edgeproxy.net.upstream import connect_upstream
from edgeproxy.net.upstream_pool import IdlePool
from edgeproxy.proto.forwarded import FORWARDING_NAMES, ClientForwarding
from edgeproxy.proto.http1 import MAX_REQUEST_HEAD, ChunkedReader, HeadBuffer, HttpError, blank_line, error_response
from edgeproxy.proto.http_request import RequestParser, upgrade_protocols
from edgeproxy.proto.http_response import UNTIL_CLOSE, ResponseParser, with_connection_close
from edgeproxy.proto.https import https_location, plain_response, redirect_response, with_hsts

if TYPE_CHECKING:
    import socket

    from edgeproxy.balance import Server
    from edgeproxy.net.context import ListenerContext
    from edgeproxy.net.deadlines import Slot
    from edgeproxy.net.tls_info import TlsInfo
    from edgeproxy.pools import BackendPool

LINGER_SECONDS: Final = 2.0
INF: Final = float("inf")

# client-side states (Final: mypyc inlines each as a C constant, not a module-dict lookup per use,
# which callgrind counted at ~130 instructions each, 35 of them per keep-alive request)
PROXY: Final = 0
NEW: Final = 1
IDLE: Final = 2
HEAD: Final = 3
CONNECTING: Final = 4
BODY: Final = 5
WAIT: Final = 6
RESPONSE: Final = 7
TUNNEL: Final = 8
LINGER: Final = 9
CLOSED: Final = 10
STATE_NAMES: Final = (
    "PROXY", "NEW", "IDLE", "HEAD", "CONNECTING", "BODY", "WAIT", "RESPONSE", "TUNNEL", "LINGER", "CLOSED"
)  # fmt: skip

# The deadline of each state: True counts its limit from entering the state, False from the last
# byte in either direction (or entering, if later). Limits: ``HttpSettings.limits`` (0: no deadline).
_FROM_ENTRY: Final = (True, True, True, True, False, False, False, False, False, True, False)

# reasons to stop reading from the client (a bit mask: reading resumes when none is left)
_HOLD: Final = 1  # a request is in flight and bytes of the next one are held
_UPSTREAM_FULL: Final = 2  # the server is not reading the request body fast enough

# RFC 9110 9.2.2: only these may be sent again automatically once they may have reached a server.
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# Forwarding headers in chunked trailers: refused from untrusted clients (some servers merge
# trailers into the head).
_FORBIDDEN_TRAILERS: Final = FORWARDING_NAMES | {b"host", b"content-length", b"transfer-encoding"}

_UPGRADES: Final[dict[tuple[str, ...], frozenset[bytes]]] = {}


class RequestState(RequestParser):
    """The request in flight: its parser, and the relay's fields of it (where it goes, what
    it has cost so far), which an idle keep-alive connection has no use for."""

    __slots__ = (
        "body_left",
        "chunks",
        "connect_s",
        "pool",
        "req_in",
        "req_out",
        "req_start",
        "resends",
        "response_s",
        "sent_at",
        "server",
        "status",
        "tried",
        "up_head",
    )

    def __init__(self, upgrades: frozenset[bytes]) -> None:
        super().__init__(upgrades)
        self.up_head = b""  # the head as sent upstream (kept for a resend until the response ends)
        self.pool: BackendPool | None = None
        self.server: Server | None = None
        self.chunks: ChunkedReader | None = None
        self.body_left = 0
        self.resends = 0
        self.tried: tuple[Server, ...] = ()  # (a tuple: most requests never add to it)
        self.status = 0
        self.req_in = 0
        self.req_out = 0
        self.req_start = self.sent_at = self.connect_s = self.response_s = 0.0


# A connection holds a RequestState only while a request is under way (~650 bytes with what its
# parser keeps of the last request, ~110 of them the relay's fields): it takes one from here for
# a head and gives it back when the request is over, and points at _NO_PARSER meanwhile, which
# nothing ever writes (the two places that start a request, _request and _refuse, take one first).
_NO_PARSER: Final = RequestState(frozenset())
_FREE_PARSERS: Final[dict[frozenset[bytes], list[RequestState]]] = {}  # by the upgrades they allow
_MAX_FREE_PARSERS: Final = 1024  # per upgrades setting


class HttpSettings:
    """What a connection reads of its listener's settings, as they were when it connected (a
    reload makes new ones for the connections after it): one object per setting, kept in
    ``ctx.http_settings`` and shared, where each connection held the four (issue 15)."""

    __slots__ = ("hsts", "idle", "limits", "upgrades")

    def __init__(self, ctx: ListenerContext, idle: IdlePool[UpstreamConn]) -> None:
        t = ctx.timeouts
        idle_s = ctx.idle_timeout
        # Seconds allowed in each state (0: no deadline).
        # PROXY NEW IDLE HEAD CONNECTING BODY WAIT RESPONSE TUNNEL LINGER CLOSED
        # CONNECTING has none of its own: connect_upstream bounds every attempt by timeouts.connect.
        self.limits: tuple[float, ...] = (t.http_request, t.http_request, t.client_idle, t.http_request, 0.0,
                                          idle_s, t.server_idle, idle_s, idle_s, LINGER_SECONDS, 0.0)  # fmt: skip
        self.hsts = ctx.hsts  # b"" or the Strict-Transport-Security line responses get
        upgrades = ctx.listener.upgrades
        allowed = _UPGRADES.get(upgrades)
        if allowed is None:
            allowed = _UPGRADES[upgrades] = upgrade_protocols(upgrades)
        self.upgrades = allowed  # what a request may upgrade to (the parsers' setting)
        self.idle = idle  # the process's shared idle upstream connections


def _settings(ctx: ListenerContext, idle: IdlePool[UpstreamConn]) -> HttpSettings:
    settings = ctx.http_settings
    if not isinstance(settings, HttpSettings) or settings.idle is not idle:
        settings = ctx.http_settings = HttpSettings(ctx, idle)
    return settings


class HttpListener(TcpListener):
    """TCP accept side; on stop (SIGTERM, reload that removes the listener) idle keep-alive
    connections close at once and busy ones after their current response. ``idle``: the
    process's pool of idle upstream connections, owned by whoever composes the listeners."""

    def __init__(self, ctx: ListenerContext, sockets: list[socket.socket], idle: IdlePool[UpstreamConn]) -> None:
        super().__init__(ctx, sockets, lambda: HttpConnection(ctx, idle))

    async def stop(self) -> None:
        await super().stop()
        for conn in list(self.ctx.connections):
            cast(HttpConnection, conn).finish()


class HttpConnection(asyncio.Protocol):
    """The client side of one connection: a ``ResponseSink`` for the ``UpstreamConn`` serving
    its request in flight."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "client",
        "client_eof",
        "closed",
        "closing",
        "ctx",
        "dest",
        "entered",
        "fwd",
        "header_reader",
        "held",
        "in_request",
        "keep_alive",
        "last_activity",
        "linger",
        "log_prefix",
        "parser",
        "partial",
        "paused",
        "private",
        "server_eof",
        "settings",
        "state",
        "task",
        "timer",
        "timer_at",
        "transport",
        "upstream",
        "write_paused",
    )

    def __init__(self, ctx: ListenerContext, idle: IdlePool[UpstreamConn]) -> None:
        # (mypyc lays the fields out in this order: the bools together take 8 bytes, not 24)
        self.ctx = ctx
        self.settings = _settings(ctx, idle)
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.client: tuple[str, int] = ("", 0)
        self.dest: tuple[str, int] = ("", 0)
        self.header_reader: ClientAddressReader | None = None
        # shared by the connections of one client address (ForwardingPolicy.for_client)
        self.fwd: ClientForwarding | None = None
        # the access log members that are the same for every request: made at the first access
        # line, so a connection holds none while access logging is off
        self.log_prefix = ""
        # the request under way: its parser and fields, lent per request (see _take_parser)
        self.parser = _NO_PARSER
        self.state = NEW
        self.partial: HeadBuffer | None = None  # a request head that did not come in one read
        self.held = b""  # bytes after the request in flight (reading is paused meanwhile)
        self.upstream: UpstreamConn | None = None
        self.private: IdlePool[UpstreamConn] | None = None  # send_proxy backends: this client's own
        self.paused = 0
        self.write_paused = False
        self.keep_alive = True
        self.closing = False
        self.client_eof = False
        self.server_eof = False
        self.linger = False  # close after an error answer: see _linger
        self.in_request = False  # a request is in flight (its fields: RequestState)
        self.closed: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.timer: Slot | None = None  # its deadline's, in ctx.deadlines (net/deadlines.py)
        self.timer_at = INF
        self.task: asyncio.Task[None] | None = None
        # (in NEW, ``entered`` is the accept: the first request's clock runs from it)
        self.last_activity = self.entered = self.ctx.loop.time()

    # -- the state machine's clock ---------------------------------------------------------------
    def _enter(self, state: int, since: float) -> None:
        """Go to ``state`` whose clock starts at ``since``; arm the timer for its deadline.

        ``since`` is never before the last byte (it is now, or the accept for a first request),
        so at entry ``_deadline`` is ``since + limit`` whichever way the state counts."""
        self.state = state
        self.entered = since
        limit = self.settings.limits[state]
        if limit and since + limit < self.timer_at:
            self._arm(since + limit)

    def _deadline(self, state: int) -> float:
        since = self.entered
        if not _FROM_ENTRY[state] and self.last_activity > since:
            since = self.last_activity
        return since + self.settings.limits[state]

    def _arm(self, when: float) -> None:
        deadlines = self.ctx.deadlines
        if self.timer is not None:
            deadlines.discard(self, self.timer)
        self.timer_at = when
        self.timer = deadlines.add(self, when)

    def on_deadline(self) -> None:
        self.timer = None
        self.timer_at = INF
        state = self.state
        if not self.settings.limits[state]:
            return  # no deadline here; the next state arms its own
        deadline = self._deadline(state)
        now = self.ctx.loop.time()
        if now < deadline:
            self._arm(deadline)  # activity moved it on since the timer was set
            return
        self._expire(state, now)

    def _expire(self, state: int, now: float) -> None:
        """The deadline of ``state`` passed."""
        if state == PROXY:
            cast(ClientAddressReader, self.header_reader).timed_out()
        elif state == NEW:
            self.close("request_timeout")  # connected and sent nothing: nothing to answer
        elif state == IDLE:
            self.close("client_idle")
        elif state == HEAD:
            self._refuse(_TIMED_OUT, self._partial_head(), self.entered)
        elif state == WAIT:
            self._error(504, "server_timeout", "no response within timeouts.server_idle")
        elif state == BODY and not self.parser.status:
            # The body stalled: on the client's side (408) or the server stopped reading it (504).
            if self.paused & _UPSTREAM_FULL:
                self._error(504, "server_timeout", "the server stopped reading the request body")
            else:
                self._error(408, "request_timeout", "request body stalled")
        elif state == LINGER:
            self.state = CLOSED
            self.transport.close()
        else:  # BODY with a response under way, RESPONSE, TUNNEL: nothing moved for too long
            self.close("idle_timeout")

    # -- client side -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)
        ctx = self.ctx
        ctx.opened(self)
        peer = t.get_extra_info("peername")
        local = t.get_extra_info("sockname")
        self.client = (peer[0], peer[1])
        self.dest = ctx.local_address(local)
        # (Behind TLS the layer read the PROXY header before the handshake: net/tls.py.)
        if ctx.tls is None and ctx.must_send_proxy_header(peer[0]):
            self.header_reader = ClientAddressReader(ctx, self)
            self._enter(PROXY, self.entered)
            return
        self._client_known()
        self._enter(NEW, self.entered)

    def _client_known(self) -> None:
        client = self.client
        fwd = self.fwd = self.ctx.forwarding.for_client(client, self.dest)
        if fwd.client == client[0]:
            self.client = (fwd.client, client[1])  # one string for all of a client's connections

    def _log_prefix(self) -> str:
        """The access log members that are the same for every request of the connection."""
        prefix = f'"listener":{_json(self.ctx.listener.name)},"client":"{_hostport(self.client)}",'
        # (the transport's, not ctx.tls: a reload may have turned TLS on or off since the accept)
        info = cast("TlsInfo | None", self.transport.get_extra_info("tls"))
        if info is not None:
            sni = _json(info.sni) if info.sni is not None else "null"
            prefix += f'"tls":"{info.version}","sni":{sni},'
        self.log_prefix = prefix
        return prefix

    def proxy_header_done(self, client: tuple[str, int], dest: tuple[str, int], rest: bytes) -> None:
        """The accept_proxy reader parsed a trusted peer's header: that is the client now. The
        first request's clock still runs from accept."""
        self.header_reader = None
        self.client, self.dest = client, dest
        self._client_known()
        self._enter(NEW, self.entered)
        if rest:
            self.data_received(rest)

    def data_received(self, data: bytes) -> None:
        now = self.last_activity = self.ctx.loop.time()
        state = self.state
        if state == PROXY:
            cast(ClientAddressReader, self.header_reader).feed(data)
            return
        self.bytes_in += len(data)
        if state <= HEAD:  # NEW, IDLE, HEAD
            self._head_data(data, now)
        elif state == BODY:
            self._body(data)
        elif state == TUNNEL:
            self.parser.req_in += len(data)
            up = self.upstream
            if up is not None:  # (always, in TUNNEL: a plain test, cheaper than cast())
                up.send(data)
        elif state < LINGER:  # CONNECTING, WAIT, RESPONSE: held until this request is done
            self.held += data
            self._pause(_HOLD)
        # LINGER, CLOSED: dropped

    def _head_data(self, data: bytes, now: float) -> None:
        """Bytes toward the next request head (states NEW, IDLE, HEAD)."""
        partial = self.partial
        if partial is None:
            # Any byte starts the head's clock, empty lines too; the first request's clock has
            # run since accept. (A head that is complete in this read never waits in HEAD.)
            state = self.state
            since = now if state == IDLE else self.entered  # (NEW: the accept; HEAD: its first byte)
            if data[0] == 13 or data[0] == 10:
                data = data.lstrip(b"\r\n")  # RFC 9112 2.2: empty lines before a request are ignored
                if not data:
                    if state != HEAD:
                        self._enter(HEAD, since)
                    return
            end = data.find(b"\r\n\r\n")
            if 0 <= end <= MAX_REQUEST_HEAD - 4:  # the common case: the whole head in one read
                n = end + 4
                if n == len(data):
                    self._request(data, b"", since, now)
                else:
                    self._request(data[:n], data[n:], since, now)
                return
            if state != HEAD:
                self._enter(HEAD, since)
            if end >= 0:
                self._refuse(_TOO_LARGE, data, self.entered)
                return
            if blank_line(data, 0, len(data)) >= 0:
                self._refuse(_BARE_LF, data, self.entered)
                return
            if len(data) > MAX_REQUEST_HEAD:
                self._refuse(_TOO_LARGE, data, self.entered)
                return
            self.partial = HeadBuffer(data)
            return
        n, bare = partial.add(data)
        if bare >= 0:
            self._refuse(_BARE_LF, self._partial_head(), self.entered)
        elif n < 0:
            if len(partial) > MAX_REQUEST_HEAD:
                self._refuse(_TOO_LARGE, self._partial_head(), self.entered)
        elif n > MAX_REQUEST_HEAD:
            self._refuse(_TOO_LARGE, self._partial_head(), self.entered)
        else:
            self.partial = None
            buf = partial.take()
            self._request(buf[:n], buf[n:], self.entered, now)

    def _partial_head(self) -> bytes:
        """The start of a head that never completed, for the log line of its refusal."""
        partial = self.partial
        self.partial = None
        return bytes(partial.data[:400]) if partial is not None else b""

    def _take_parser(self) -> RequestState:
        """This connection's parser for the request starting now (one from the free list)."""
        parser = self.parser
        if parser is _NO_PARSER:
            free = _FREE_PARSERS.get(self.settings.upgrades)
            parser = self.parser = free.pop() if free else RequestState(self.settings.upgrades)
        return parser

    def _give_parser_back(self) -> None:
        """The request is over (logged): the parser goes back to the free list, unless it is in
        the middle of a message (a request cut short: its llhttp state is this connection's)."""
        parser = self.parser
        if parser is _NO_PARSER:
            return
        self.parser = _NO_PARSER
        if parser.between_messages():
            # what the next request overwrites anyway, not kept alive by the free list meanwhile
            parser.up_head = b""
            parser.pool = None
            parser.chunks = None
            parser.body_left = 0
            free = _FREE_PARSERS.get(self.settings.upgrades)
            if free is None:
                free = _FREE_PARSERS[self.settings.upgrades] = []
            if len(free) < _MAX_FREE_PARSERS:
                free.append(parser)

    def _request(self, head: bytes, rest: bytes, since: float, now: float) -> None:
        """A complete head whose first byte came at ``since``: parse, route, pick, then send it
        on an idle connection or connect."""
        parser = self._take_parser()
        try:
            parser.parse(head)
        except HttpError as e:
            self._refuse(e, head, since)
            return
        self._begin_request(len(head), since)
        self.keep_alive = parser.keep_alive and not self.closing
        fwd = self.fwd
        assert fwd is not None  # set before any request byte is read
        if parser.chunked:
            parser.chunks = ChunkedReader(frozenset() if fwd.trusted else _FORBIDDEN_TRAILERS)
            parser.body_left = -1
        else:
            parser.chunks = None
            parser.body_left = parser.content_length
        ctx = self.ctx
        if ctx.answers_locally and self._local_answer(rest, now):
            return
        parser.up_head = fwd.rewrite(head, parser)
        pool = parser.pool = ctx.pool_for_request(parser.host, parser.routing_path() if ctx.route_table else b"")
        if pool is None:
            self._error(503, "no_backend", "no backend for this request")
            return
        server = pool.balancer.pick(self.client[0])  # passive health: the balancer's own clock
        if server is None:
            self._error(503, "no_server", f"no server of backend {pool.name} is up")
            return
        idle = self.private if pool.sends_proxy else self.settings.idle
        conn = idle.get(server) if idle is not None else None
        if conn is not None:
            server.acquire()
            parser.server = server
            self._dispatch(conn, rest, now)
        else:
            self.held = rest
            self._connect_to(pool, server, now)

    def _local_answer(self, rest: bytes, now: float) -> bool:
        """Requests a plain listener answers itself, before routing: an ACME HTTP-01 challenge
        on the board (``ctx.http01``, set where ACME is wired), then ``redirect_https``."""
        ctx = self.ctx
        parser = self.parser
        # A request body would have to be read and dropped: answer, then close instead.
        close = not self.keep_alive or self.parser.body_left != 0
        http01 = ctx.http01
        if http01 is not None and parser.method in (b"GET", b"HEAD"):
            body = http01(parser.target.decode("latin-1"))
            if body is not None:
                data = plain_response(b"200 OK", b"application/octet-stream", body, close=close)
                if parser.method == b"HEAD":
                    data = data[: len(data) - len(body)]
                self._answer(200, data, "acme_http01", close, rest, now)
                return True
        port = ctx.listener.redirect_https
        if port is None:
            return False
        location = https_location(parser.host, parser.target, port, self.dest[0])
        if location is None:
            self._error(400, "bad_request", "Host is not a host name or an IP address")
            return True
        self._answer(308, redirect_response(location, close=close), "redirect", close, rest, now)
        return True

    def _answer(self, status: int, data: bytes, end: str, close: bool, rest: bytes, now: float) -> None:
        """A complete response from here; keep-alive goes on with the next request (handled on
        the next loop turn, so a read of many pipelined requests is not a deep recursion)."""
        self.parser.status = status
        self.parser.pool = None
        self.parser.req_out += len(data)
        self.transport.write(data)
        self._log_request(end, None, now)
        if close:
            self.linger = True
            self.close(end)
            return
        self._give_parser_back()
        self.state = IDLE
        self.entered = now
        deadline = now + self.settings.limits[IDLE]
        if deadline < self.timer_at:
            self._arm(deadline)
        if rest:
            self.held = rest
            self._pause(_HOLD)
            self.ctx.loop.call_soon(self._after_answer)
        elif self.client_eof:
            self.close("client_closed")

    def _after_answer(self) -> None:
        if self.state != IDLE or not self.held:
            return
        held, self.held = self.held, b""
        self._resume(_HOLD)
        self._head_data(held, self.ctx.loop.time())
        if self.client_eof and self.state in (IDLE, HEAD):
            self.close("client_closed")

    def _begin_request(self, head_len: int, since: float) -> None:
        """The fields of the request in flight, for a head just read (forwarded or refused) whose
        clock started at ``since`` (its first byte; the accept, for a connection's first)."""
        req = self.parser
        self.in_request = True
        req.req_start = since
        req.status = 0
        req.req_in = head_len
        req.req_out = 0
        req.connect_s = req.response_s = 0.0
        req.resends = 0
        if req.tried:
            req.tried = ()

    def _connect_to(self, pool: BackendPool, server: Server | None, now: float) -> None:
        """Open a new upstream connection (to ``server``, else one the balancer picks)."""
        self._enter(CONNECTING, now)
        self._pause(_HOLD)  # the body, or the next request, waits in the kernel meanwhile
        self.task = self.ctx.loop.create_task(self._connect(pool, server))

    async def _connect(self, pool: BackendPool, server: Server | None) -> None:
        try:
            await self._connected(pool, server)
        except Exception as e:  # a bug must cost this client only, and not leave it hanging
            log.error("http relay: connecting failed", listener=self.ctx.listener.name, error=repr(e))
            self._error(502, "connect_failed", "internal error while connecting")

    async def _connected(self, pool: BackendPool, server: Server | None) -> None:
        started = self.ctx.loop.time()
        tried = self.parser.tried
        header = pool.proxy_header(self.client, self.dest)
        result = await connect_upstream(
            self.ctx, pool, self.client[0], self._upstream, first=server, exclude=tried, header=header
        )
        self.task = None
        if self.closed is not None:  # closed as the connect completed (close() cancels it otherwise)
            if result is not None:
                result[0].close()
                result[1].release()
            return
        if result is None:
            self._error(502, "connect_failed", f"no server of backend {pool.name} accepted a connection")
            return
        transport, self.parser.server = result
        now = self.ctx.loop.time()
        self.parser.connect_s = now - started
        rest, self.held = self.held, b""
        conn = cast(UpstreamConn, transport.get_protocol())
        self._dispatch(conn, rest, now)

    def _upstream(self, server: Server) -> UpstreamConn:
        return UpstreamConn(server, self.ctx.loop.time)

    def _dispatch(self, conn: UpstreamConn, rest: bytes, now: float) -> None:
        """Write the request head, and the body bytes already here, on ``conn``: the one way a
        request goes upstream (idle connection, new connection, sent again)."""
        req = self.parser
        self.upstream = conn
        req.sent_at = now
        head = req.up_head
        if req.body_left:
            try:
                out, after = self._frame(rest)
            except HttpError as e:
                self._refuse(e, b"", self.entered)
                return
            conn.begin(self, req.method == b"HEAD", head + out if out else head, self.write_paused)
            if after is None:
                self._enter(BODY, now)
                self._resume(_HOLD)
                return
        else:
            conn.begin(self, req.method == b"HEAD", head, self.write_paused)
            after = rest
        # _enter(WAIT, now), inlined like the two other transitions of every keep-alive request
        # (RESPONSE, IDLE): callgrind counts ~1100 instructions for the call, 1.3% of a request.
        self.state = WAIT
        self.entered = now
        deadline = now + self.settings.limits[WAIT]
        if deadline < self.timer_at:
            self._arm(deadline)
        if after:
            self.held = after
            self._pause(_HOLD)
        elif self.paused & _HOLD:
            self._resume(_HOLD)

    def _frame(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Split ``data`` into this request's body bytes and what follows (None: body goes on)."""
        req = self.parser
        chunks = req.chunks
        if chunks is not None:
            out, after = chunks.feed(data)
        else:
            left = req.body_left
            if len(data) < left:
                req.body_left = left - len(data)
                out, after = data, None
            else:
                req.body_left = 0
                out, after = (data, b"") if len(data) == left else (data[:left], data[left:])
        if out:
            if req.feed_body(out) != (after is not None):
                raise HttpError(400, "bad_request", "ambiguous request body framing")
            req.req_in += len(out)
        return out, after

    def _body(self, data: bytes) -> None:
        try:
            out, after = self._frame(data)
        except HttpError as e:
            self._refuse(e, b"", self.entered)
            return
        up = self.upstream
        if out and up is not None:
            up.send(out)
        if after is not None:
            # The request is complete; the response may already be under way (an early answer).
            self._enter(RESPONSE if self.parser.status else WAIT, self.last_activity)
            if after:
                self.held = after
                self._pause(_HOLD)

    def eof_received(self) -> bool:
        self.client_eof = True
        state = self.state
        if state == TUNNEL:
            cast(UpstreamConn, self.upstream).send_eof()
            if self.server_eof:
                self.close("client_closed")
                return False
            return True
        if state in (WAIT, RESPONSE) or (state == CONNECTING and not self.parser.body_left):
            # Complete requests then a half-close: they are still answered, then we close.
            return True
        self.close("client_closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.close("client_closed" if self.closed is None else self.closed)
        self.state = CLOSED
        if self.timer is not None:  # LINGER's
            self.ctx.deadlines.discard(self, self.timer)
            self.timer = None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.upstream is not None:
            self.upstream.resume_reading()

    def _pause(self, reason: int) -> None:
        if not self.paused and self.closed is None:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.closed is None:
                self.transport.resume_reading()

    # -- ResponseSink: what the upstream connection tells us ---------------------------------------
    def upgrade_requested(self) -> bool:
        return self.parser.upgrade

    def response_interim(self, head: bytes, now: float) -> None:
        """A 1xx response: HTTP/1.0 clients do not know them (RFC 9110 15.2)."""
        self.last_activity = now
        if self.parser.version_11:
            self.parser.req_out += len(head)
            self.transport.write(head)

    def response_head(self, parser: ResponseParser, head: bytes, now: float) -> bytes:
        """The final response head is here: decide whether the client connection stays open."""
        self.last_activity = now
        self.parser.status = parser.status
        self.parser.response_s = now - self.parser.sent_at
        hsts = self.settings.hsts
        if hsts:
            head = with_hsts(head, hsts)
        if self.state == WAIT:  # (_enter(RESPONSE, now) inlined: see _dispatch)
            self.state = RESPONSE  # (its clock is the last byte: last_activity, now)
            deadline = now + self.settings.limits[RESPONSE]
            if deadline < self.timer_at:
                self._arm(deadline)
        if self.keep_alive and not parser.close and parser.framing != UNTIL_CLOSE:
            return head
        self.keep_alive = False
        if parser.close and parser.has_connection:
            return head
        return with_connection_close(head)

    def response_data(self, data: bytes, now: float) -> None:
        self.last_activity = now
        self.parser.req_out += len(data)
        self.transport.write(data)

    def response_progress(self, now: float) -> None:
        self.last_activity = now

    def response_end(self, conn: UpstreamConn, data: bytes, reusable: bool, now: float) -> None:
        req = self.parser
        self.last_activity = now
        if data:
            req.req_out += len(data)
            self.transport.write(data)
        self._log_request("ok", None, now)
        server = req.server
        self.upstream = None
        req.server = None
        if server is not None:
            server.release()
        if self.paused & _UPSTREAM_FULL:
            self._resume(_UPSTREAM_FULL)  # that server's backpressure no longer concerns us
        complete = self.state == RESPONSE
        if reusable and complete:
            if self.write_paused:
                conn.resume_reading()
            conn.release()
            pool = req.pool
            if pool is not None and pool.sends_proxy:
                if self.private is None:
                    self.private = IdlePool(self.ctx.loop)
                self.private.put(conn)
            else:
                self.settings.idle.put(conn)
        else:
            conn.close()
        if not complete or not self.keep_alive:
            # (An early answer before the whole request body arrived: where the client's next
            # request would start is unknowable for the server too, so the connection ends.)
            self.close("done")
            return
        self.state = IDLE  # (_enter(IDLE, now) inlined: see _dispatch)
        self.entered = now
        self._give_parser_back()  # (with the head, kept for a resend until now)
        deadline = now + self.settings.limits[IDLE]
        if deadline < self.timer_at:
            self._arm(deadline)
        if self.held:
            held, self.held = self.held, b""
            self._resume(_HOLD)
            self._head_data(held, now)
        if self.client_eof and self.state in (IDLE, HEAD):
            self.close("client_closed")  # it half-closed after its last complete request

    def upstream_failed(self, status: int, end: str, detail: str) -> None:
        """The server sent something we cannot forward safely, or did not answer in time."""
        self.upstream = None
        self._error(status, end, detail)

    def upstream_lost(self, conn: UpstreamConn) -> None:
        """The server closed before the response was complete."""
        self.upstream = None
        server = self._resend_to(conn)
        if server is None:
            self._error(502, "server_closed", "the server closed the connection before a complete response")
            return
        self.parser.resends += 1
        old = cast("Server", self.parser.server)
        self.parser.server = None
        old.release()
        self._connect_to(cast("BackendPool", self.parser.pool), server, self.ctx.loop.time())

    def _resend_to(self, conn: UpstreamConn) -> Server | None:
        """Where to send the request again after ``conn`` closed, or None.

        Only a request that may be repeated (RFC 9110 9.2.2: an idempotent method; and no body,
        which is streamed, not kept) that got no byte of an answer, at most ``retries`` times.
        A reused idle connection that the server closed as we sent on it (its keep-alive timer
        fired) says nothing about the server: a new connection to it. A new connection that
        closed: another server, as nginx's ``proxy_next_upstream error`` does.
        """
        pool = self.parser.pool
        if (
            conn.got_bytes
            or self.state != WAIT
            or pool is None
            or self.parser.resends >= pool.config.retries
            or self.parser.chunks is not None
            or self.parser.content_length
            or self.parser.method not in IDEMPOTENT
        ):
            return None
        if conn.reused:
            return conn.server
        self.parser.tried += (conn.server,)
        return pool.pick(self.client[0], self.parser.tried)

    def tunnel_start(self, conn: UpstreamConn, data: bytes, now: float) -> None:
        """101 Switching Protocols: from now on bytes are relayed as they are, both ways."""
        self.last_activity = now
        self.parser.status = 101
        self.parser.response_s = now - self.parser.sent_at
        self._enter(TUNNEL, now)
        self.parser.req_out += len(data)
        self.transport.write(data)
        held, self.held = self.held, b""
        self._resume(_HOLD)
        if held:
            conn.send(held)
            self.parser.req_in += len(held)
        if self.client_eof:
            conn.send_eof()

    def tunnel_eof(self) -> None:
        self.server_eof = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.client_eof:
            self.close("server_closed")

    def tunnel_lost(self) -> None:
        self.close("server_closed")

    def upstream_full(self, full: bool) -> None:
        if full:
            self._pause(_UPSTREAM_FULL)
        else:
            self._resume(_UPSTREAM_FULL)

    # -- errors, the end ---------------------------------------------------------------------------
    def _refuse(self, e: HttpError, head: bytes, since: float) -> None:
        """A request we will not forward (400, 405, 408, 431, 505), its head begun at ``since``."""
        if not self.in_request:
            self._set_request_fields(head)  # (takes the parser: first)
            self._begin_request(len(head), since)
            self.parser.pool = None
        self._error(e.status, e.end, e.detail)

    def _set_request_fields(self, head: bytes) -> None:
        """For the log line of a refused head: what could be read of its request line."""
        parser = self._take_parser()
        line = head[: head.find(b"\r\n")] if b"\r\n" in head else head[:200]
        parts = line.split(b" ")
        parser.method = parts[0][:20] if parts else b""
        parser.target = parts[1][:200] if len(parts) > 1 else b""
        parser.host = None

    def _error(self, status: int, end: str, detail: str) -> None:
        """Answer with a short error and close (the connection may be mid-request). Once part
        of a response went out, all that is left to do is to stop."""
        if self.parser.status or self.closed is not None:
            if self.closed is None:
                self._log_request(end, detail, self.ctx.loop.time())
            self.close(end)
            return
        self.parser.status = status
        data = error_response(status)
        self.parser.req_out += len(data)
        self.transport.write(data)
        self._log_request(end, detail, self.ctx.loop.time())
        self.linger = True
        self.close(end)

    def _log_request(self, end: str, detail: str | None, now: float) -> None:
        """Count and log the request in flight (once)."""
        req = self.parser
        if not self.in_request:
            return
        self.in_request = False
        status = req.status
        stats = self.ctx.stats
        stats.requests[status] = stats.requests.get(status, 0) + 1
        duration = now - req.req_start
        stats.request_duration.observe(duration)
        self.bytes_out += req.req_out
        if log.access is None:
            return
        server = req.server
        host = req.host
        pool = req.pool
        if detail is None:
            # Formatted here rather than json.dumps of a dict: measured 2x the cost of proxying.
            log.access_json(
                f'{self.log_prefix or self._log_prefix()}"method":"{req.method.decode("ascii")}",'
                f'"host":{_json(host.decode("latin-1")) if host is not None else "null"},'
                f'"path":{_json(req.target.decode("latin-1"))},"status":{status},'
                f'"backend":{_json_name(pool.name) if pool is not None else "null"},'
                f'"server":{_json_name(server.name) if server is not None else "null"},'
                f'"bytes_in":{req.req_in},"bytes_out":{req.req_out},"duration_ms":{duration * 1000:.1f},'
                f'"connect_ms":{req.connect_s * 1000:.1f},"response_ms":{req.response_s * 1000:.1f},'
                f'"end":"{end}"'
            )
            return
        log.access_line(
            {
                "listener": self.ctx.listener.name,
                "client": _hostport(self.client),
                "method": req.method.decode("latin-1"),
                "host": host.decode("latin-1") if host is not None else None,
                "path": req.target.decode("latin-1"),
                "status": status,
                "backend": pool.name if pool is not None else self.ctx.listener.backend,
                "server": server.name if server is not None else None,
                "bytes_in": req.req_in,
                "bytes_out": req.req_out,
                "duration_ms": round(duration * 1000, 1),
                "connect_ms": round(req.connect_s * 1000, 1),
                "response_ms": round(req.response_s * 1000, 1),
                "end": end,
                "error": detail,
                **self._tls_fields(),
            }
        )

    def _tls_fields(self) -> dict[str, str | None]:
        info = cast("TlsInfo | None", self.transport.get_extra_info("tls")) if self.ctx.tls is not None else None
        return {"tls": info.version, "sni": info.sni} if info is not None else {}

    def finish(self) -> None:
        """Drain: idle connections close now, busy ones after their current response."""
        self.closing = True
        self.keep_alive = False
        state = self.state
        if state in (PROXY, NEW, IDLE) or (state == HEAD and self.partial is None):
            self.close("drain")

    def close(self, reason: str, *, abort: bool = False) -> None:
        if self.closed is not None:
            return
        self.closed = reason
        self.state = CLOSED
        task = self.task
        if task is not None:
            self.task = None
            task.cancel()
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.close()
        if self.in_request:
            if not self.parser.status:
                self.parser.status = 499  # nginx's "client closed request": no response was sent
            self._log_request(reason, None, self.ctx.loop.time())
        server = self.parser.server
        if server is not None:
            self.parser.server = None
            server.release()
        self._give_parser_back()
        if self.private is not None:
            self.private.close_all()
        t = self.transport
        if not abort and self.linger and not t.is_closing() and t.can_write_eof():
            # After an error answer the client may still be sending (a request body, pipelined
            # requests). Closing with unread bytes makes the kernel send a reset that can destroy
            # the answer before the client reads it, so: FIN after the answer, read and drop what
            # still comes for up to LINGER_SECONDS, then close (nginx's lingering_close).
            t.write_eof()
            t.resume_reading()
            self._enter(LINGER, self.ctx.loop.time())
        else:
            if self.timer is not None:
                self.ctx.deadlines.discard(self, self.timer)
                self.timer = None
            if abort:
                t.abort()
            else:
                t.close()
        self.ctx.closed(self, reason, self.bytes_in, self.bytes_out)


_TIMED_OUT: Final = HttpError(408, "request_timeout", "request head not complete in time")
_BARE_LF: Final = HttpError(400, "bad_request", "request head lines must end with CRLF, not a bare LF")
_TOO_LARGE: Final = HttpError(431, "head_too_large", "request head larger than 16 KiB")

_json: Final = json.encoder.encode_basestring_ascii  # the C encoder of one JSON string, quotes included
_json_names: Final[dict[str, str]] = {}


def _json_name(name: str) -> str:
    """Backend and server names repeat: encode each once."""
    encoded = _json_names.get(name)
    if encoded is None:
        if len(_json_names) > 10000:
            _json_names.clear()
        encoded = _json_names[name] = _json(name)
    return encoded


def _hostport(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
