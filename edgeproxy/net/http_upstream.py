"""The server side of http mode: one keep-alive connection to a server, framing its responses.

An ``UpstreamConn`` serves one request at a time and hands the response to the ``ResponseSink``
that began it (the client side, ``http_relay.HttpConnection``): the bytes are passed on as
received (a head is rewritten only to add ``Connection: close``), a body is never decoded or
buffered, and the end of each response is found exactly, so extra bytes from a confused server
are never passed to the client as part of this response (they make the connection non-reusable
instead). Between requests it sits in an ``IdlePool``.

The two sides talk only through ``ResponseSink`` (what the server side tells the client side)
and the public methods of ``UpstreamConn`` (``begin``, ``send``, ``send_eof``, ``pause_reading``,
``resume_reading``, ``release``, ``close``): neither writes the other's transport or fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from edgeproxy.proto.http1 import MAX_RESPONSE_HEAD, ChunkedReader, HeadBuffer, HttpError, blank_line
from edgeproxy.proto.http_response import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, ResponseParser, crlf_head

if TYPE_CHECKING:
    from edgeproxy.balance import Server
    from edgeproxy.net.upstream_pool import IdlePool

# states
IDLE: Final = 0
HEAD: Final = 1
BODY_LENGTH: Final = 2
BODY_CHUNKED: Final = 3
BODY_CLOSE: Final = 4
TUNNEL: Final = 5
CLOSED: Final = 6


class ResponseSink(Protocol):
    """What an ``UpstreamConn`` tells the client side about the response to its request."""

    def upgrade_requested(self) -> bool:
        """The request asked to switch protocols (and the listener allows it): a 101 may come."""
        ...

    def response_interim(self, head: bytes, now: float) -> None:
        """A 1xx other than 101 (100 Continue, 103 Early Hints). ``now`` (here and below): when
        the bytes came, on the clock the connection was made with."""
        ...

    def response_head(self, parser: ResponseParser, head: bytes, now: float) -> bytes:
        """The final response head; returns the head to forward (``Connection: close`` added
        when the client connection will not stay open)."""
        ...

    def response_data(self, data: bytes, now: float) -> None:
        """Bytes to forward: head and body of the response as they come, or tunnel bytes."""
        ...

    def response_end(self, conn: UpstreamConn, data: bytes, reusable: bool, now: float) -> None:
        """The response ends with ``data`` (may be empty). ``reusable``: the server may take the
        next request on ``conn``."""
        ...

    def response_progress(self, now: float) -> None:
        """Bytes of a head came that complete nothing yet (the server is alive)."""
        ...

    def upstream_failed(self, status: int, end: str, detail: str) -> None:
        """The server sent what we cannot forward safely; ``conn`` is closed already."""
        ...

    def upstream_lost(self, conn: UpstreamConn) -> None:
        """The server closed before the response was complete."""
        ...

    def tunnel_start(self, conn: UpstreamConn, data: bytes, now: float) -> None:
        """101 Switching Protocols: ``data`` is its head and what followed it."""
        ...

    def tunnel_eof(self) -> None:
        """The server half-closed the tunnel."""
        ...

    def tunnel_lost(self) -> None:
        """The server's side of the tunnel is gone."""
        ...

    def upstream_full(self, full: bool) -> None:
        """The server is not reading the request fast enough (True) / caught up (False)."""
        ...


class UpstreamConn(asyncio.Protocol):
    __slots__ = (
        "body_left",
        "chunks",
        "clock",
        "got_bytes",
        "head_request",
        "home",
        "idle_tick",
        "interim",
        "parser",
        "partial",
        "reused",
        "server",
        "sink",
        "state",
        "transport",
    )

    def __init__(self, server: Server, clock: Callable[[], float]) -> None:
        self.server = server
        self.clock = clock  # the event loop's time(): read once per read, handed to the sink
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)  # set by connection_made
        self.sink: ResponseSink | None = None
        self.parser = ResponseParser()
        self.state = IDLE
        self.partial: HeadBuffer | None = None  # a head that did not come in one read
        self.body_left = 0
        self.chunks: ChunkedReader | None = None
        self.head_request = False
        self.interim = b""  # the last 1xx head of the current response that llhttp took
        self.got_bytes = False  # any byte of a response to the current request
        self.reused = False
        self.home: IdlePool[Any] | None = None  # the pool holding it while idle
        self.idle_tick = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    # -- what the client side asks ---------------------------------------------------------------
    def begin(self, sink: ResponseSink, head_request: bool, data: bytes, paused: bool) -> None:
        """Write a request's first bytes; its response belongs to ``sink``. ``paused``: the
        client is not reading, so neither do we until ``resume_reading``."""
        self.sink = sink
        self.state = HEAD
        self.head_request = head_request
        self.interim = b""
        self.got_bytes = False
        t = self.transport
        if paused:
            t.pause_reading()
        t.write(data)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def send_eof(self) -> None:
        t = self.transport
        if t is not None and t.can_write_eof():
            t.write_eof()

    def pause_reading(self) -> None:
        if self.transport is not None and self.state != CLOSED:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.state != CLOSED:
            self.transport.resume_reading()

    def release(self) -> None:
        """The exchange is over; the caller pools or closes this connection."""
        self.sink = None
        if self.state != CLOSED:
            self.state = IDLE
        self.reused = True

    def close(self) -> None:
        self.sink = None
        if self.state != CLOSED:
            self.state = CLOSED
            if self.transport is not None:  # None until connection_made
                self.transport.close()

    # -- response bytes ----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            self.close()  # bytes nobody asked for: this server is not speaking HTTP to us
            return
        self.got_bytes = True
        now = self.clock()
        try:
            state = self.state
            if state == HEAD:
                self._head(sink, data, now)
            elif state == BODY_LENGTH:
                left = self.body_left
                if len(data) < left:
                    self.body_left = left - len(data)
                    if self.parser.feed(data):
                        raise HttpError(502, "bad_response", "ambiguous response framing")
                    sink.response_data(data, now)
                else:
                    body = data if len(data) == left else data[:left]
                    if not self.parser.feed(body):
                        raise HttpError(502, "bad_response", "ambiguous response framing")
                    self._last(sink, body, len(data) > left, now)
            elif state == BODY_CHUNKED:
                self._chunked(sink, data, b"", now)
            elif state in (BODY_CLOSE, TUNNEL):
                sink.response_data(data, now)
            else:  # after the response's end, before its sink let go: not part of any response
                self.close()
        except HttpError as e:
            # Client-side wording (400, bad_chunk) turned into what it is here: a bad response.
            self._fail(e if e.status >= 500 else HttpError(502, "bad_response", e.detail))

    def _head(self, sink: ResponseSink, data: bytes, now: float) -> None:
        partial = self.partial
        if partial is not None:
            end, bare = partial.add(data)
            if end < 0 and bare < 0:
                if len(partial) > MAX_RESPONSE_HEAD:
                    raise HttpError(502, "bad_response", "response head too large")
                sink.response_progress(now)
                return
            self.partial = None
            data = partial.take()
        parser = self.parser
        buf = data
        # Whether buf's head was searched for a blank line with a bare LF (CGI servers end their
        # lines that way: crlf_head). The usual response (CRLF CRLF found, a Content-Length, all of
        # it in this read) skips the search: llhttp refuses any bare LF in a head, so a refusal
        # there is when to search (and start again), before anything reached the sink. The search
        # was ~8% of the instructions of a keep-alive request (callgrind, benchmarks.hotpath).
        searched = False
        while True:
            end = buf.find(b"\r\n\r\n")
            if not searched and end < 0:
                searched = True
                if blank_line(buf, 0, len(buf)) >= 0:
                    buf = crlf_head(buf)
                    continue
            if end < 0:
                if len(buf) > MAX_RESPONSE_HEAD:
                    raise HttpError(502, "bad_response", "response head too large")
                partial = self.partial = HeadBuffer()
                partial.add(buf)
                sink.response_progress(now)
                return
            n = end + 4
            head = buf if n == len(buf) else buf[:n]
            total = 0  # the whole response is in buf: its length (the usual response), else 0
            try:
                parser.parse(head, self.head_request)
                if parser.status >= 200 and parser.framing == LENGTH and len(buf) >= n + parser.content_length:
                    total = n + parser.content_length
                    msg = buf if len(buf) == total else buf[:total]
                    complete = parser.feed(msg)
            except HttpError:
                if searched or blank_line(buf, 0, end) < 0:
                    raise
                searched = True
                parser.reset()  # (llhttp refused: it takes nothing more)
                if self.interim:
                    # A fresh llhttp must be where the refused one was: after the 1xx it took, which
                    # may have closed it (HTTP/1.0 100). Forgetting that forwarded the next head
                    # when the whole answer came in one read and refused it when cut (fuzzing).
                    parser.feed(self.interim)
                buf = crlf_head(buf)
                continue
            if not searched and not total:  # another response: searched before the sink hears of it
                searched = True
                if blank_line(buf, 0, end) >= 0:
                    buf = crlf_head(buf)
                    continue
            if parser.status >= 200:
                break
            # 1xx: a complete message of its own, then the real head follows
            if not parser.feed(head):
                raise HttpError(502, "bad_response", "ambiguous response framing")
            rest = buf[n:]
            self.interim = head
            if parser.status == 101:
                if not sink.upgrade_requested():
                    raise HttpError(502, "bad_response", "101 Switching Protocols without an Upgrade request")
                self.state = TUNNEL
                sink.tunnel_start(self, head + rest if rest else head, now)
                return
            sink.response_interim(head, now)
            if not rest:
                return
            buf = rest
            searched = False
        out_head = sink.response_head(parser, head, now)
        framing = parser.framing
        if total:  # the common case: the whole response in one read, fed to llhttp above
            if not complete:
                raise HttpError(502, "bad_response", "ambiguous response framing")
            self.state = IDLE  # (_last, inlined: the common response)
            data = msg if out_head is head else out_head + msg[n:]
            sink.response_end(self, data, len(buf) == total and not parser.close, now)
            return
        if framing == LENGTH:
            if parser.feed(buf):
                raise HttpError(502, "bad_response", "ambiguous response framing")
            self.state = BODY_LENGTH
            self.body_left = n + parser.content_length - len(buf)
            data = buf if out_head is head else out_head + buf[n:]
        elif framing == NO_BODY:
            if self.head_request:
                parser.feed(head)  # syntax check only: llhttp now waits for a body that is not coming
                parser.reset()
            elif not parser.feed(head):
                raise HttpError(502, "bad_response", "ambiguous response framing")
            self._last(sink, out_head, len(buf) > n, now)
            return
        elif framing == CHUNKED:
            parser.feed(head)
            self.chunks = ChunkedReader()
            self.state = BODY_CHUNKED
            self._chunked(sink, buf[n:], out_head, now)
            return
        else:  # UNTIL_CLOSE: the end of the connection ends the response
            parser.feed(buf)
            self.state = BODY_CLOSE
            data = out_head + buf[n:]
        sink.response_data(data, now)

    def _chunked(self, sink: ResponseSink, data: bytes, head: bytes, now: float) -> None:
        chunks = self.chunks
        assert chunks is not None
        out, after = chunks.feed(data)
        if out and self.parser.feed(out) != (after is not None):
            raise HttpError(502, "bad_response", "ambiguous response framing")
        if head:
            out = head + out
        if after is None:
            if out:
                sink.response_data(out, now)
            else:
                sink.response_progress(now)
        else:
            self._last(sink, out, bool(after), now)

    def _last(self, sink: ResponseSink, data: bytes, extra: bool, now: float) -> None:
        """The response ends with ``data``. ``extra``: the server sent more than the response,
        which is not forwarded and makes the connection unfit for reuse."""
        self.state = IDLE
        sink.response_end(self, data, not extra and not self.parser.close, now)

    def _fail(self, e: HttpError) -> None:
        sink = self.sink
        self.close()
        if sink is not None:
            sink.upstream_failed(e.status, e.end, e.detail)

    # -- connection events -------------------------------------------------------------------------
    def eof_received(self) -> bool:
        sink = self.sink
        if sink is not None and self.state == TUNNEL:
            sink.tunnel_eof()
            return True  # the client may still be sending
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        sink = self.sink
        state = self.state
        self.state = CLOSED
        self.sink = None
        if self.home is not None:
            self.home.discard(self)
        if sink is None:
            return
        if state == BODY_CLOSE:
            sink.response_end(self, b"", False, self.clock())
        elif state == TUNNEL:
            sink.tunnel_lost()
        elif state != IDLE:
            sink.upstream_lost(self)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_full(True)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_full(False)


__all__ = ["BODY_CLOSE", "TUNNEL", "UNTIL_CLOSE", "ResponseSink", "UpstreamConn"]
