"""The server side of http mode: one keep-alive connection to a server, framing its responses.

An ``UpstreamConn`` serves one request at a time for its current ``owner`` (the client's
``HttpConnection``) and writes the response straight into the owner's transport: the bytes are
forwarded as received (a head is rewritten only to add ``Connection: close``), a body is never
decoded or buffered, and the end of each response is found exactly, so extra bytes from a
confused server are never passed to the client as part of this response (they make the
connection non-reusable instead). Between requests it sits in an ``IdlePool``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from edgeproxy.proto.http1 import MAX_RESPONSE_HEAD, ChunkedReader, HttpError
from edgeproxy.proto.http_response import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, ResponseParser, crlf_head

if TYPE_CHECKING:
    from edgeproxy.balance import Server
    from edgeproxy.net.http_relay import HttpConnection
    from edgeproxy.net.upstream_pool import IdlePool

# states
IDLE, HEAD, BODY_LENGTH, BODY_CHUNKED, BODY_CLOSE, TUNNEL, CLOSED = range(7)


class UpstreamConn(asyncio.Protocol):
    __slots__ = (
        "body_left",
        "buf",
        "chunks",
        "got_bytes",
        "head_request",
        "home",
        "idle_tick",
        "owner",
        "parser",
        "reused",
        "server",
        "state",
        "transport",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)  # set by connection_made
        self.owner: HttpConnection | None = None
        self.parser = ResponseParser()
        self.state = IDLE
        self.buf = b""
        self.body_left = 0
        self.chunks: ChunkedReader | None = None
        self.head_request = False
        self.got_bytes = False  # any byte of a response to the current request
        self.reused = False
        self.home: IdlePool | None = None  # the pool holding it while idle
        self.idle_tick = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def begin(self, owner: HttpConnection, head_request: bool) -> None:
        """A request is about to be written: its response belongs to ``owner``."""
        self.owner = owner
        self.state = HEAD
        self.head_request = head_request
        self.got_bytes = False

    def release(self) -> None:
        """The exchange is over; the caller pools or closes this connection."""
        self.owner = None
        if self.state != CLOSED:
            self.state = IDLE
        self.reused = True

    def close(self) -> None:
        self.owner = None
        if self.state != CLOSED:
            self.state = CLOSED
            if self.transport is not None:  # None until connection_made
                self.transport.close()

    # -- response bytes ----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:
            self.close()  # bytes nobody asked for: this server is not speaking HTTP to us
            return
        self.got_bytes = True
        owner.last_activity = owner.loop.time()
        try:
            state = self.state
            if state == HEAD:
                self._head(owner, self.buf + data if self.buf else data)
            elif state == BODY_LENGTH:
                left = self.body_left
                if len(data) < left:
                    self.body_left = left - len(data)
                    if self.parser.feed(data):
                        raise HttpError(502, "bad_response", "ambiguous response framing")
                    owner.req_out += len(data)
                    owner.transport.write(data)
                else:
                    body = data if len(data) == left else data[:left]
                    if not self.parser.feed(body):
                        raise HttpError(502, "bad_response", "ambiguous response framing")
                    self._last(owner, body, len(data) > left)
            elif state == BODY_CHUNKED:
                self._chunked(owner, data, b"")
            else:  # BODY_CLOSE, TUNNEL
                owner.req_out += len(data)
                owner.transport.write(data)
        except HttpError as e:
            # Client-side wording (400, bad_chunk) turned into what it is here: a bad response.
            self._fail(e if e.status >= 500 else HttpError(502, "bad_response", e.detail))
        except ValueError as e:  # int() of a garbage status or length
            self._fail(HttpError(502, "bad_response", str(e)))

    def _head(self, owner: HttpConnection, buf: bytes) -> None:
        parser = self.parser
        while True:
            end = buf.find(b"\r\n\r\n")
            if (fixed := crlf_head(buf, end)) is not None:
                buf = fixed
                end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_RESPONSE_HEAD:
                    raise HttpError(502, "bad_response", "response head too large")
                self.buf = buf
                return
            self.buf = b""
            n = end + 4
            head = buf if n == len(buf) else buf[:n]
            parser.parse(head, self.head_request)
            if parser.status >= 200:
                break
            # 1xx: a complete message of its own, then the real head follows
            if not parser.feed(head):
                raise HttpError(502, "bad_response", "ambiguous response framing")
            rest = buf[n:]
            if parser.status == 101:
                if not owner.upgrading():
                    raise HttpError(502, "bad_response", "101 Switching Protocols without an Upgrade request")
                self.state = TUNNEL
                owner.start_tunnel(self, head, rest)
                return
            owner.interim(head)  # 100 Continue, 103 Early Hints: passed on
            if not rest:
                return
            buf = rest
        out_head = owner.response_head(self, head)
        framing = parser.framing
        if framing == LENGTH:
            total = n + parser.content_length
            if len(buf) >= total:  # the common case: the whole response in one read (_last inlined)
                msg = buf if len(buf) == total else buf[:total]
                if not parser.feed(msg):
                    raise HttpError(502, "bad_response", "ambiguous response framing")
                data = msg if out_head is head else out_head + msg[n:]
                owner.req_out += len(data)
                owner.transport.write(data)
                self.state = IDLE
                owner.response_done(self, len(buf) == total and not parser.close)
                return
            if parser.feed(buf):
                raise HttpError(502, "bad_response", "ambiguous response framing")
            self.state = BODY_LENGTH
            self.body_left = total - len(buf)
            data = buf if out_head is head else out_head + buf[n:]
        elif framing == NO_BODY:
            if self.head_request:
                parser.feed(head)  # syntax check only: llhttp now waits for a body that is not coming
                parser.reset()
            elif not parser.feed(head):
                raise HttpError(502, "bad_response", "ambiguous response framing")
            self._last(owner, out_head, len(buf) > n)
            return
        elif framing == CHUNKED:
            parser.feed(head)
            self.chunks = ChunkedReader()
            self.state = BODY_CHUNKED
            self._chunked(owner, buf[n:], out_head)
            return
        else:  # UNTIL_CLOSE: the end of the connection ends the response
            parser.feed(buf)
            self.state = BODY_CLOSE
            data = out_head + buf[n:]
        owner.req_out += len(data)
        owner.transport.write(data)

    def _chunked(self, owner: HttpConnection, data: bytes, head: bytes) -> None:
        chunks = self.chunks
        assert chunks is not None
        out, after = chunks.feed(data)
        if out and self.parser.feed(out) != (after is not None):
            raise HttpError(502, "bad_response", "ambiguous response framing")
        if head:
            out = head + out
        if after is None:
            owner.req_out += len(out)
            owner.transport.write(out)
        else:
            self._last(owner, out, bool(after))

    def _last(self, owner: HttpConnection, data: bytes, extra: bool) -> None:
        """The response ends with ``data``. ``extra``: the server sent more than the response,
        which is not forwarded and makes the connection unfit for reuse."""
        if data:
            owner.req_out += len(data)
            owner.transport.write(data)
        self.state = IDLE
        owner.response_done(self, not extra and not self.parser.close)

    def _fail(self, e: HttpError) -> None:
        owner = self.owner
        self.close()
        if owner is not None:
            owner.upstream_failed(e.status, e.end, e.detail)

    # -- connection events -------------------------------------------------------------------------
    def eof_received(self) -> bool:
        owner = self.owner
        if owner is not None and self.state == TUNNEL:
            owner.tunnel_server_eof()
            return True  # the client may still be sending
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        owner = self.owner
        state = self.state
        self.state = CLOSED
        if self.home is not None:
            self.home.discard(self)
        if owner is None:
            return
        if state == BODY_CLOSE:
            self.owner = None
            owner.response_done(self, False)
        elif state == TUNNEL:
            self.owner = None
            owner.tunnel_server_lost()
        elif state != IDLE:
            self.owner = None
            owner.upstream_lost(self)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_full(True)

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_full(False)


__all__ = ["BODY_CLOSE", "TUNNEL", "UNTIL_CLOSE", "UpstreamConn"]
