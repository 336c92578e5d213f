"""HTTP mode: one ``HttpConnection`` per client connection, every request routed and balanced on
its own, over keep-alive upstream connections (``http_upstream``, ``upstream_pool``).

Per request: the head is found (``\\r\\n\\r\\n``, at most 16 KiB) and parsed once
(``proto.http_request``), refused with a short error response if it could smuggle, routed
(``ctx.pool_for_request``), rewritten (``proto.forwarded``: one concatenation in the common case)
and written upstream together with whatever body bytes came with it. The body streams through as
received, framed by Content-Length or ``ChunkedReader`` so the next pipelined request starts
exactly where this one ends. Requests are answered in order: while one is in flight, bytes of the
next are held and reading from the client stops, so a pipelining client is bounded by one read.

Backpressure is tied across the pair as in TCP mode: a full upstream write buffer pauses reading
from the client, a full client write buffer pauses reading from the server.

Timers: one per connection, re-armed only when a deadline moves earlier (rare). Its meaning
follows the state: waiting for a request head (``http_request`` from the first byte, or from
accept for the first request; 408 once bytes have arrived), idle between requests
(``client_idle``), waiting for the response head (``server_idle``, 504), streaming (both idle
limits).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, cast

from edgeproxy.log import log
from edgeproxy.net.accept_proxy import ClientAddressReader
from edgeproxy.net.http_upstream import UpstreamConn
from edgeproxy.net.listener import TcpListener
from edgeproxy.net.upstream import connect_upstream
from edgeproxy.net.upstream_pool import IdlePool, shared_pool
from edgeproxy.proto.forwarded import FORWARDING_NAMES, ClientForwarding
from edgeproxy.proto.http1 import MAX_REQUEST_HEAD, ChunkedReader, HttpError, error_response
from edgeproxy.proto.http_request import RequestParser
from edgeproxy.proto.http_response import UNTIL_CLOSE, with_connection_close

if TYPE_CHECKING:
    from edgeproxy.balance import Server
    from edgeproxy.net.context import ListenerContext
    from edgeproxy.pools import BackendPool

LINGER_SECONDS = 2.0

# client-side states
HEAD, CONNECTING, BODY, WAIT, TUNNEL, CLOSED = range(6)
# reasons to stop reading from the client (a bit mask: reading resumes when none is left)
_HOLD = 1  # a request is in flight and bytes of the next one are held
_UPSTREAM_FULL = 2  # the server is not reading the request body fast enough

# Forwarding headers in chunked trailers: refused from untrusted clients (some servers merge
# trailers into the head).
_FORBIDDEN_TRAILERS = FORWARDING_NAMES | {b"host", b"content-length", b"transfer-encoding"}


class HttpListener(TcpListener):
    """TCP accept side; on stop (SIGTERM, reload that removes the listener) idle keep-alive
    connections close at once and busy ones after their current response."""

    async def stop(self) -> None:
        await super().stop()
        for conn in list(self.ctx.connections):
            cast(HttpConnection, conn).finish()


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "body_left",
        "buf",
        "bytes_in",
        "bytes_out",
        "chunks",
        "client",
        "client_eof",
        "closed",
        "closing",
        "connect_s",
        "ctx",
        "dest",
        "fwd",
        "head_start",
        "header_reader",
        "idle",
        "in_request",
        "keep_alive",
        "last_activity",
        "linger",
        "log_prefix",
        "loop",
        "parser",
        "paused",
        "pool",
        "private",
        "req_in",
        "req_out",
        "req_start",
        "requests",
        "response_s",
        "retried",
        "sent_at",
        "server",
        "server_eof",
        "started",
        "state",
        "status",
        "timer",
        "timer_at",
        "transport",
        "up_head",
        "upstream",
        "write_paused",
    )

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.client: tuple[str, int] = ("", 0)
        self.dest: tuple[str, int] = ("", 0)
        self.header_reader: ClientAddressReader | None = None
        self.fwd: ClientForwarding | None = None
        self.log_prefix = ""  # the access log members that are the same for every request
        self.parser = RequestParser()
        self.state = HEAD
        self.buf = b""
        self.upstream: UpstreamConn | None = None
        self.pool: BackendPool | None = None
        self.server: Server | None = None
        self.private: IdlePool | None = None  # send_proxy backends: this client's own idle conns
        self.idle = shared_pool(self.loop)
        self.chunks: ChunkedReader | None = None
        self.body_left = 0
        self.paused = 0
        self.write_paused = False
        self.keep_alive = True
        self.closing = False
        self.client_eof = False
        self.server_eof = False
        self.closed: str | None = None
        self.linger = False  # close after an error answer: see _linger
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        # the request in flight
        self.in_request = False
        self.up_head = b""
        self.retried = False
        self.status = 0
        self.req_in = 0
        self.req_out = 0
        self.req_start = self.sent_at = self.connect_s = self.response_s = 0.0
        self.started = self.last_activity = self.head_start = self.loop.time()

    # -- client side -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.transport = cast(asyncio.Transport, transport)
        ctx = self.ctx
        ctx.opened(self)
        peer = t.get_extra_info("peername")
        local = t.get_extra_info("sockname")
        self.client = (peer[0], peer[1])
        self.dest = (local[0], local[1])
        self._arm(self.started + ctx.timeouts.http_request)
        if ctx.must_send_proxy_header(peer[0]):
            self.header_reader = ClientAddressReader(ctx, self)
            return
        self._client_known()

    def _client_known(self) -> None:
        self.fwd = self.ctx.forwarding.for_client(self.client, self.dest)
        self.log_prefix = f'"listener":{_json(self.ctx.listener.name)},"client":"{_hostport(self.client)}",'

    def proxy_header_done(self, client: tuple[str, int], dest: tuple[str, int], rest: bytes) -> None:
        """The accept_proxy reader parsed a trusted peer's header: that is the client now."""
        self.header_reader = None
        self.client, self.dest = client, dest
        self._client_known()
        if rest:
            self.data_received(rest)

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        state = self.state
        if state == HEAD:
            if self.header_reader is not None:
                self.header_reader.feed(data)
                return
            self.bytes_in += len(data)
            self._head_bytes(self.buf + data if self.buf else data)
            return
        self.bytes_in += len(data)
        if state == BODY:
            self._body(data)
        elif state == TUNNEL:
            up = self.upstream
            if up is not None:
                up.transport.write(data)
                self.req_in += len(data)
        elif state != CLOSED:  # CONNECTING or WAIT: hold the bytes until the upstream can take them
            self.buf += data
            self._pause(_HOLD)

    def _head_bytes(self, buf: bytes) -> None:
        if buf[:1] in (b"\r", b"\n"):
            buf = buf.lstrip(b"\r\n")  # RFC 9112 2.2: empty lines before a request are ignored
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_REQUEST_HEAD:
                self._refuse(HttpError(431, "head_too_large", "request head larger than 16 KiB"), buf)
                return
            if buf and not self.buf and self.requests:
                # First bytes of a keep-alive request: from now the whole head has http_request.
                self.head_start = self.last_activity
                self._arm(self.head_start + self.ctx.timeouts.http_request)
            self.buf = buf
            return
        n = end + 4
        if n > MAX_REQUEST_HEAD:
            self._refuse(HttpError(431, "head_too_large", "request head larger than 16 KiB"), buf)
            return
        self.req_start = self.head_start if self.buf or not self.requests else self.last_activity
        self.buf = b""
        if n == len(buf):
            head, rest = buf, b""
        else:
            head, rest = buf[:n], buf[n:]
        parser = self.parser
        try:
            parser.parse(head)
        except HttpError as e:
            self._refuse(e, head)
            return
        except ValueError as e:  # a Content-Length beyond what int() takes (llhttp caps it earlier)
            self._refuse(HttpError(400, "bad_request", str(e)), head)
            return
        self.requests += 1
        self.in_request = True
        self.status = 0
        self.req_in = len(head)
        self.req_out = 0
        self.retried = False
        self.connect_s = self.response_s = 0.0
        self.keep_alive = parser.keep_alive and not self.closing
        fwd = self.fwd
        assert fwd is not None  # set before any request byte is read
        if parser.chunked:
            self.chunks = ChunkedReader(frozenset() if fwd.trusted else _FORBIDDEN_TRAILERS)
            self.body_left = -1
        else:
            self.chunks = None
            self.body_left = parser.content_length
        up_head = self.up_head = fwd.rewrite(head, parser)
        ctx = self.ctx
        pool = self.pool = ctx.pool_for_request(parser.host, parser.routing_path() if ctx.route_table else b"")
        if pool is None:
            self._error(503, "no_backend", "no backend for this request")
            return
        server = pool.balancer.pick(self.client[0], (), now=self.last_activity)
        if server is None:
            self._error(503, "no_server", f"no server of backend {pool.name} is up")
            return
        idle = self.idle if pool.config.send_proxy == "none" else self.private
        conn = idle.get(server) if idle is not None else None
        if conn is not None:
            server.acquire()
            self.server = server
            if self.body_left or self.write_paused:
                self._send(conn, rest, b"")
                return
            # The common case inlined (measured: each call saved is ~0.15 us here): a request
            # without body on an idle keep-alive connection.
            self.upstream = conn
            conn.begin(self, parser.method == b"HEAD")
            self.sent_at = now = self.last_activity
            self.state = WAIT
            conn.transport.write(up_head)
            if now + ctx.timeouts.server_idle < self.timer_at:
                self._arm(now + ctx.timeouts.server_idle)
            if rest:
                self.buf = rest
                self._pause(_HOLD)
            elif self.paused & _HOLD:
                self._resume(_HOLD)
            return
        self.state = CONNECTING
        self.buf = rest
        self._pause(_HOLD)
        self.loop.create_task(self._connect(pool, server))

    async def _connect(self, pool: BackendPool, server: Server) -> None:
        started = self.loop.time()
        result = await connect_upstream(self.ctx, pool, self.client[0], lambda: UpstreamConn(server), first=server)
        if self.closed is not None:  # the client went away meanwhile
            if result is not None:
                result[0].close()
                result[1].release()
            return
        if result is None:
            self._error(502, "connect_failed", f"no server of backend {pool.name} accepted a connection")
            return
        transport, picked = result
        conn = cast(UpstreamConn, transport.get_protocol())
        if picked is not server:  # a retry went to another server
            conn.server = picked
        self.server = picked
        self.connect_s = self.loop.time() - started
        buf, self.buf = self.buf, b""
        self._send(conn, buf, pool.proxy_header(self.client, self.dest))

    def _send(self, conn: UpstreamConn, rest: bytes, prefix: bytes) -> None:
        """Write the request head (and the body bytes already here) on ``conn``."""
        self.upstream = conn
        conn.begin(self, self.parser.method == b"HEAD")
        if self.write_paused:
            conn.transport.pause_reading()
        self.sent_at = now = self.loop.time()
        limit = now + min(self.ctx.timeouts.server_idle, self.ctx.idle_timeout)
        if limit < self.timer_at:
            self._arm(limit)
        head = prefix + self.up_head if prefix else self.up_head
        if self.body_left:
            self.state = BODY
            try:
                out, after = self._frame(rest)
            except HttpError as e:
                self._refuse(e, b"")
                return
            conn.transport.write(head + out if out else head)
            if after is None:
                self._resume(_HOLD)
                return
        else:
            conn.transport.write(head)
            after = rest
        self.state = WAIT
        self.buf = after
        if after:
            self._pause(_HOLD)
        else:
            self._resume(_HOLD)

    def _frame(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Split ``data`` into this request's body bytes and what follows (None: body goes on)."""
        chunks = self.chunks
        if chunks is not None:
            out, after = chunks.feed(data)
        else:
            left = self.body_left
            if len(data) < left:
                self.body_left = left - len(data)
                out, after = data, None
            else:
                self.body_left = 0
                out, after = (data, b"") if len(data) == left else (data[:left], data[left:])
        if out:
            if self.parser.feed_body(out) != (after is not None):
                raise HttpError(400, "bad_request", "ambiguous request body framing")
            self.req_in += len(out)
        return out, after

    def _body(self, data: bytes) -> None:
        try:
            out, after = self._frame(data)
        except HttpError as e:
            self._refuse(e, b"")
            return
        if out:
            up = self.upstream
            if up is not None:
                up.transport.write(out)
        if after is not None:
            self.state = WAIT
            if after:
                self.buf = after
                self._pause(_HOLD)

    def eof_received(self) -> bool:
        self.client_eof = True
        state = self.state
        if state == TUNNEL:
            up = self.upstream
            if up is not None and up.transport is not None and up.transport.can_write_eof():
                up.transport.write_eof()
            if self.server_eof:
                self.close("client_closed")
                return False
            return True
        if state == WAIT or (state == CONNECTING and not self.body_left):
            # Complete requests then a half-close: they are still answered, then we close.
            return True
        self.close("client_closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.close("client_closed" if self.closed is None else self.closed)

    def pause_writing(self) -> None:
        self.write_paused = True
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.resume_reading()

    def upstream_full(self, full: bool) -> None:
        if full:
            self._pause(_UPSTREAM_FULL)
        else:
            self._resume(_UPSTREAM_FULL)

    def _pause(self, reason: int) -> None:
        if not self.paused and self.closed is None:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.closed is None:
                self.transport.resume_reading()

    # -- called by the upstream connection ---------------------------------------------------------
    def upgrading(self) -> bool:
        return self.parser.upgrade

    def interim(self, head: bytes) -> None:
        """A 1xx response: HTTP/1.0 clients do not know them (RFC 9110 15.2)."""
        if self.parser.version_11:
            self.req_out += len(head)
            self.transport.write(head)

    def response_head(self, conn: UpstreamConn, head: bytes) -> bytes:
        """The final response head is here: decide whether the client connection stays open."""
        p = conn.parser
        self.status = p.status
        self.response_s = self.last_activity - self.sent_at
        if self.keep_alive and not p.close and p.framing != UNTIL_CLOSE:
            return head
        self.keep_alive = False
        if p.close and p.has_connection:
            return head
        return with_connection_close(head)

    def response_done(self, conn: UpstreamConn, reusable: bool) -> None:
        self._log_request("ok")
        server = self.server
        self.upstream = None
        self.server = None
        if server is not None:
            server.release()
        if self.paused & _UPSTREAM_FULL:
            self._resume(_UPSTREAM_FULL)  # that server's backpressure no longer concerns us
        complete = self.state == WAIT
        if reusable and complete:
            if self.write_paused:
                conn.transport.resume_reading()
            conn.release()
            pool = self.pool
            if pool is not None and pool.config.send_proxy != "none":
                if self.private is None:
                    self.private = IdlePool(self.loop)
                self.private.put(conn)
            else:
                self.idle.put(conn)
        else:
            conn.close()
        if not complete or not self.keep_alive:
            # (An early answer before the whole request body arrived: where the client's next
            # request would start is unknowable for the server too, so the connection ends.)
            self.close("done")
            return
        self.state = HEAD
        self.head_start = now = self.last_activity
        idle_until = now + self.ctx.timeouts.client_idle
        if idle_until < self.timer_at:
            self._arm(idle_until)
        if self.buf:
            buf, self.buf = self.buf, b""
            self._resume(_HOLD)
            self._head_bytes(buf)
        if self.client_eof and self.state == HEAD:
            self.close("client_closed")  # it half-closed after its last complete request

    def upstream_failed(self, status: int, end: str, detail: str) -> None:
        """The server sent something we cannot forward safely, or did not answer in time."""
        self.upstream = None
        if self.status:  # the client already has part of a response: all we can do is stop
            self._log_request(end, detail)
            self.close(end)
        else:
            self._error(status, end, detail)

    def upstream_lost(self, conn: UpstreamConn) -> None:
        """The server closed before the response was complete."""
        self.upstream = None
        if (
            not conn.got_bytes
            and conn.reused
            and not self.retried
            and self.state == WAIT
            and self.parser.content_length == 0
            and not self.parser.chunked
        ):
            # A reused connection that the server closed as we sent (its keep-alive timer fired):
            # the request never reached it, so it is sent again on a new connection, once.
            self.retried = True
            self.state = CONNECTING
            server = cast("Server", self.server)
            server.release()
            self.server = None
            self.loop.create_task(self._connect(cast("BackendPool", self.pool), server))
            return
        self.upstream_failed(502, "server_closed", "the server closed the connection before a complete response")

    def start_tunnel(self, conn: UpstreamConn, head: bytes, rest: bytes) -> None:
        """101 Switching Protocols: from now on bytes are relayed as they are, both ways."""
        self.status = 101
        self.response_s = self.loop.time() - self.sent_at
        self.state = TUNNEL
        data = head + rest if rest else head
        self.req_out += len(data)
        self.transport.write(data)
        buf, self.buf = self.buf, b""
        self._resume(_HOLD)
        if buf:
            conn.transport.write(buf)
            self.req_in += len(buf)
        if self.client_eof and conn.transport is not None and conn.transport.can_write_eof():
            conn.transport.write_eof()

    def tunnel_server_eof(self) -> None:
        self.server_eof = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.client_eof:
            self.close("server_closed")

    def tunnel_server_lost(self) -> None:
        self.close("server_closed")

    # -- errors, timers, the end -------------------------------------------------------------------
    def _refuse(self, e: HttpError, head: bytes) -> None:
        """A request we will not forward (400, 405, 408, 431, 505)."""
        if not self.in_request:
            self.in_request = True
            self.pool = None
            self.req_in = len(head)
            self.req_out = 0
            self.connect_s = self.response_s = 0.0
            self._set_request_fields(head)
        self._error(e.status, e.end, e.detail)

    def _set_request_fields(self, head: bytes) -> None:
        """For the log line of a refused head: what could be read of its request line."""
        parser = self.parser
        line = head[: head.find(b"\r\n")] if b"\r\n" in head else head[:200]
        parts = line.split(b" ")
        parser.method = parts[0][:20] if parts else b""
        parser.target = parts[1][:200] if len(parts) > 1 else b""
        parser.host = None

    def _error(self, status: int, end: str, detail: str) -> None:
        """Answer with a short error and close (the connection may be mid-request)."""
        if self.status or self.closed is not None:
            self.close(end)
            return
        self.status = status
        data = error_response(status)
        self.req_out += len(data)
        self.transport.write(data)
        self._log_request(end, detail)
        self.linger = True
        self.close(end)

    def _linger(self) -> None:
        """After an error answer the client may still be sending (a request body, pipelined
        requests). Closing with unread bytes makes the kernel send a reset that can destroy
        the answer before the client reads it, so: FIN after the answer, read and drop what
        still comes for up to LINGER_SECONDS, then close (nginx's lingering_close)."""
        t = self.transport
        if t.is_closing() or not t.can_write_eof():
            t.close()
            return
        t.write_eof()
        t.resume_reading()
        self.loop.call_later(LINGER_SECONDS, t.close)

    def _log_request(self, end: str, detail: str | None = None) -> None:
        """Count and log the request in flight (once)."""
        if not self.in_request:
            return
        self.in_request = False
        now = self.last_activity if self.closed is None else self.loop.time()
        status = self.status
        stats = self.ctx.stats
        stats.requests[status] = stats.requests.get(status, 0) + 1
        duration = now - self.req_start
        stats.request_duration.observe(duration)
        self.bytes_out += self.req_out
        if log.access is None:
            return
        parser = self.parser
        server = self.server
        host = parser.host
        pool = self.pool
        if detail is None:
            # Formatted here rather than json.dumps of a dict: measured 2x the cost of proxying.
            log.access_json(
                f'{self.log_prefix}"method":"{parser.method.decode("ascii")}",'
                f'"host":{_json(host.decode("latin-1")) if host is not None else "null"},'
                f'"path":{_json(parser.target.decode("latin-1"))},"status":{status},'
                f'"backend":{_json_name(pool.name) if pool is not None else "null"},'
                f'"server":{_json_name(server.name) if server is not None else "null"},'
                f'"bytes_in":{self.req_in},"bytes_out":{self.req_out},"duration_ms":{duration * 1000:.1f},'
                f'"connect_ms":{self.connect_s * 1000:.1f},"response_ms":{self.response_s * 1000:.1f},'
                f'"end":"{end}"'
            )
            return
        log.access_line(
            {
                "listener": self.ctx.listener.name,
                "client": _hostport(self.client),
                "method": parser.method.decode("latin-1"),
                "host": host.decode("latin-1") if host is not None else None,
                "path": parser.target.decode("latin-1"),
                "status": status,
                "backend": pool.name if pool is not None else self.ctx.listener.backend,
                "server": server.name if server is not None else None,
                "bytes_in": self.req_in,
                "bytes_out": self.req_out,
                "duration_ms": round(duration * 1000, 1),
                "connect_ms": round(self.connect_s * 1000, 1),
                "response_ms": round(self.response_s * 1000, 1),
                "end": end,
                "error": detail,
            }
        )

    def finish(self) -> None:
        """Drain: idle connections close now, busy ones after their current response."""
        self.closing = True
        self.keep_alive = False
        if self.state == HEAD and not self.buf:
            self.close("drain")

    def _arm(self, when: float) -> None:
        if self.timer is None or when < self.timer_at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer_at = when
            self.timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.closed is not None:
            return
        now = self.loop.time()
        timeouts = self.ctx.timeouts
        state = self.state
        if state == HEAD:
            if self.header_reader is not None:
                deadline = now + timeouts.http_request  # the reader's own timer ends that phase
            elif self.buf or not self.requests:
                deadline = self.head_start + timeouts.http_request
            else:
                deadline = self.last_activity + timeouts.client_idle
        elif state == CONNECTING:
            deadline = now + timeouts.connect  # connect_upstream bounds each attempt itself
        elif state == WAIT and not self.status:
            deadline = self.last_activity + timeouts.server_idle
        else:
            deadline = self.last_activity + self.ctx.idle_timeout
        if now < deadline:
            self.timer_at = deadline
            self.timer = self.loop.call_at(deadline, self._on_timer)
            return
        if state == HEAD:
            if self.buf:
                self._refuse(HttpError(408, "request_timeout", "request head not complete in time"), self.buf)
            else:  # nothing sent (yet, or since the last response): nothing to answer
                self.close("request_timeout" if not self.requests else "client_idle")
        elif state == WAIT and not self.status:
            up = self.upstream
            if up is not None:
                up.close()
            self.upstream_failed(504, "server_timeout", "no response within timeouts.server_idle")
        elif state == BODY and not self.status:
            # The body stalled: on the client's side (408) or the server stopped reading it (504).
            if self.paused & _UPSTREAM_FULL:
                self._error(504, "server_timeout", "the server stopped reading the request body")
            else:
                self._error(408, "request_timeout", "request body stalled")
        else:
            self.close("idle_timeout")

    def close(self, reason: str, *, abort: bool = False) -> None:
        if self.closed is not None:
            return
        self.closed = reason
        self.state = CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.header_reader is not None:
            self.header_reader._cancel()
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.close()
        if self.in_request:
            if not self.status:
                self.status = 499  # nginx's "client closed request": no response was sent
            self._log_request(reason)
        server = self.server
        self.server = None
        if server is not None:
            server.release()
        if self.private is not None:
            self.private.close_all()
        if abort:
            self.transport.abort()
        elif self.linger:
            self._linger()
        else:
            self.transport.close()
        self.ctx.closed(self, reason, self.bytes_in, self.bytes_out)


_json = json.encoder.encode_basestring_ascii  # the C encoder of one JSON string, quotes included
_json_names: dict[str, str] = {}


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
