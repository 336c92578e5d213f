"""TLS termination: a Protocol of our own between a listener's raw transport and the app protocol
(``HttpConnection`` / ``TcpConnection``), driving an ``ssl.SSLObject`` over two ``MemoryBIO``s.

Why not uvloop's native SSL (``create_server(ssl=ctx)``) or ``loop.start_tls``: they cost the same
CPU (measured with a prototype of this layer, wrk -c50 keep-alive small responses on this machine:
52.6 µs/request here, 53.4 with uvloop's) but neither can do what a TLS listener must:

- read a trusted ``accept_proxy`` peer's PROXY header *before* the handshake (``start_tls``
  cannot take bytes already read);
- read the ClientHello first (proto/tls_hello.py) and choose the context from it: the
  certificate by SNI, an ACME TLS-ALPN-01 answer by ALPN (tls/contexts.py);
- bound the handshake by ``timeouts.http_request`` from accept, and close garbage, plain HTTP and
  half-open handshakes with an access-log line and a count, while other clients are served.

Life of a connection (``state``): ``PROXY`` (a trusted peer's header) -> ``HELLO`` (bytes of the
ClientHello, kept in the incoming BIO for OpenSSL while the reader looks at them) -> ``HANDSHAKE``
-> ``OPEN``: the app protocol is made and given this object as its transport, so it sees the
client and destination (the PROXY header's, if one was read) in ``get_extra_info`` and the TLS
session in ``get_extra_info("tls")`` (net/tls_info.py). Until ``OPEN`` the layer is the
listener's connection (counted by ``max_connections``, ended by a drain); from then on the app is.

Flow control both ways: a full raw write buffer pauses the app's writing (``pause_writing`` is
passed on); the app pausing its reading pauses the raw transport and stops handing it decrypted
data, resumed where it stopped. Closing sends ``close_notify``; ``write_eof`` sends it and keeps
reading (TLS 1.3 half-close; a TLS 1.2 peer closes in turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from edgeproxy.log import log
from edgeproxy.net.accept_proxy import ClientAddressReader
from edgeproxy.net.tls_info import TlsInfo
from edgeproxy.proto.proxy_protocol import NEED_DATA
from edgeproxy.proto.tls_hello import ClientHelloReader, TlsHelloError

if TYPE_CHECKING:
    from edgeproxy.net.context import ListenerContext

PROXY, HELLO, HANDSHAKE, OPEN, CLOSED = range(5)
READ_SIZE = 16384  # one TLS record's plaintext at most: SSL_read returns no more per call


class TlsLayer(asyncio.Protocol, asyncio.Transport):
    """The raw transport's protocol, and the app protocol's transport."""

    __slots__ = (
        "app",
        "app_paused",
        "bytes_in",
        "client",
        "closing",
        "ctx",
        "dest",
        "drained",
        "eof_pending",
        "eof_sent",
        "fin_pending",
        "header_reader",
        "hello",
        "incoming",
        "info",
        "loop",
        "make_app",
        "outgoing",
        "peer_eof",
        "raw",
        "sni",
        "sslobj",
        "started",
        "state",
        "timer",
        "write_paused",
    )

    def __init__(self, ctx: ListenerContext, make_app: Callable[[], asyncio.Protocol]) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.make_app = make_app
        self.app: asyncio.Protocol | None = None
        self.raw: asyncio.Transport = cast(asyncio.Transport, None)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj: ssl.SSLObject | None = None
        self.hello: ClientHelloReader | None = ClientHelloReader()
        self.header_reader: ClientAddressReader | None = None
        self.info: TlsInfo | None = None
        self.sni: str | None = None
        self.client: tuple[str, int] = ("", 0)
        self.dest: tuple[str, int] = ("", 0)
        self.state = HELLO
        self.bytes_in = 0
        self.app_paused = False
        self.write_paused = False
        self.drained = True  # no complete record left unread in the incoming BIO
        self.eof_pending = False  # write_eof asked while records were unread (see write_eof)
        self.eof_sent = False
        self.fin_pending = False  # a FIN read while records before it were still unread
        self.peer_eof = False
        self.closing = False
        self.timer: asyncio.TimerHandle | None = None
        self.started = self.loop.time()

    # -- the raw side: handshake ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = self.raw = cast(asyncio.Transport, transport)
        ctx = self.ctx
        peer = raw.get_extra_info("peername")
        local = raw.get_extra_info("sockname")
        self.client = (peer[0], peer[1])
        self.dest = (local[0], local[1])
        ctx.opened(self)
        # One deadline for the PROXY header and the handshake, from accept (a half-open or
        # trickled handshake cannot hold a connection longer than a request head may take).
        self.timer = self.loop.call_at(self.started + ctx.timeouts.http_request, self._timed_out)
        if ctx.must_send_proxy_header(peer[0]):
            self.header_reader = ClientAddressReader(ctx, self)
            self.state = PROXY

    def proxy_header_done(self, client: tuple[str, int], dest: tuple[str, int], rest: bytes) -> None:
        """A trusted peer's PROXY header was read: that is the client now; the hello follows."""
        self.header_reader = None
        self.client, self.dest = client, dest
        self.state = HELLO
        if rest:
            self._hello_data(rest)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == OPEN:
            if self.peer_eof:
                return
            self.incoming.write(data)
            self.drained = False
            if not self.app_paused:
                self._deliver()
        elif state == HANDSHAKE:
            self.bytes_in += len(data)
            self.incoming.write(data)
            self._handshake()
        elif state == HELLO:
            self._hello_data(data)
        elif state == PROXY:
            cast(ClientAddressReader, self.header_reader).feed(data)

    def _hello_data(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.incoming.write(data)  # for OpenSSL: the reader only looks
        reader = cast(ClientHelloReader, self.hello)
        try:
            hello = reader.feed(data)
        except TlsHelloError as e:
            why = "plain HTTP on a TLS port" if data[:1].isalpha() else "not a TLS ClientHello"
            self._fail("tls_bad_hello", f"{why}: {e}")
            return
        if hello is NEED_DATA:
            return
        self.hello = None
        self.sni = hello.sni
        tls = self.ctx.tls
        context = tls.for_hello(hello) if tls is not None else None
        if context is None:
            self._fail("tls_no_certificate", f"no certificate to serve for {hello.sni or 'a client without SNI'}")
            return
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.state = HANDSHAKE
        self._handshake()

    def _handshake(self) -> None:
        sslobj = cast(ssl.SSLObject, self.sslobj)
        try:
            sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as e:
            self._flush()  # the alert, so the client learns why
            self._fail("tls_handshake_failed", e.reason or str(e))
            return
        self._flush()
        self._established(sslobj)

    def _established(self, sslobj: ssl.SSLObject) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        ctx = self.ctx
        ctx.stats.tls_handshakes_ok += 1
        cipher = sslobj.cipher()
        self.info = TlsInfo(
            sslobj.version() or "", cipher[0] if cipher else "", self.sni, sslobj.selected_alpn_protocol()
        )
        ctx.handed_over(self)  # the app counts itself from here
        self.state = OPEN
        self.drained = False
        app = self.app = self.make_app()
        app.connection_made(self)
        if not self.app_paused and not self.closing:
            self._deliver()  # the client's first request may have come with its Finished

    def _timed_out(self) -> None:
        self.timer = None
        if self.state == PROXY:
            cast(ClientAddressReader, self.header_reader).timed_out()
        elif self.state in (HELLO, HANDSHAKE):
            self._fail("tls_timeout", "handshake not complete within timeouts.http_request")

    def _fail(self, end: str, detail: str) -> None:
        """End a connection whose handshake did not complete: counted, logged, closed."""
        if self.state >= OPEN:
            return
        counted = self.state == HANDSHAKE or self.bytes_in > 0 or end == "tls_timeout"
        if counted:
            self.ctx.stats.tls_handshakes_failed += 1
        if log.access is not None and counted:
            log.access_line(
                {
                    "listener": self.ctx.listener.name,
                    "client": _hostport(self.client),
                    "sni": self.sni,
                    "bytes_in": self.bytes_in,
                    "duration_ms": round((self.loop.time() - self.started) * 1000, 1),
                    "end": end,
                    "error": detail,
                }
            )
        self._end(end)
        self.raw.close()

    def _end(self, reason: str) -> None:
        """The end of a connection that never reached the app."""
        self.state = CLOSED
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.ctx.closed(self, reason, self.bytes_in, 0)

    # -- the raw side once open ----------------------------------------------------------------
    def _deliver(self) -> None:
        """Hand the app every complete record's plaintext, until it pauses or none is left."""
        sslobj = cast(ssl.SSLObject, self.sslobj)
        app = cast(asyncio.Protocol, self.app)
        incoming = self.incoming
        while not self.app_paused and not self.closing:
            try:
                data = sslobj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                self.drained = True
                break
            except ssl.SSLZeroReturnError:
                self._peer_closed()
                return
            except ssl.SSLError as e:
                self._broken(e)
                return
            if not data:
                self._peer_closed()  # close_notify
                return
            app.data_received(data)
            if not incoming.pending and not sslobj.pending():
                self.drained = True  # the common case: no exception raised to learn it
                break
        if self.outgoing.pending:
            self._flush()  # post-handshake messages (TLS 1.3 key update)
        if self.eof_pending and self.drained:
            self.eof_pending = False
            self._send_close_notify()
        if self.fin_pending and self.drained and not self.closing:
            self.fin_pending = False
            if not app.eof_received():
                self.close()

    def _peer_closed(self) -> None:
        """The client sent close_notify: it will send nothing more."""
        self.drained = True
        self.peer_eof = True  # anything after it is ignored (RFC 8446 6.1)
        if self.eof_pending:
            self.eof_pending = False
            self._send_close_notify()
        keep = cast(asyncio.Protocol, self.app).eof_received()
        if not keep:
            self.close()

    def _broken(self, e: ssl.SSLError) -> None:
        """A record that does not decrypt or a protocol error after the handshake."""
        log.debug("tls: connection error", listener=self.ctx.listener.name, client=_hostport(self.client), error=str(e))
        self._flush()
        self.raw.abort()

    def eof_received(self) -> bool | None:
        state = self.state
        if state == OPEN:
            if self.peer_eof:
                return True  # its close_notify was the EOF; the app has been told
            # A FIN without close_notify (a truncation, or a client that does not bother): the
            # app decides, as with a plain EOF, once it has read every record before it (it may
            # have paused with records left, and a resume lets the FIN in before they are read).
            if not self.drained:
                self.fin_pending = True
                return True
            return cast(asyncio.Protocol, self.app).eof_received()
        if state in (PROXY, HELLO, HANDSHAKE):
            if self.header_reader is not None or self.bytes_in == 0:
                self._end("client_closed")  # a port check: connected and went away
            else:
                self._fail("client_closed", "the client closed during the handshake")
            return False
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        if state == OPEN:
            self.state = CLOSED
            self.closing = True
            cast(asyncio.Protocol, self.app).connection_lost(exc)
        elif state != CLOSED:
            if self.bytes_in == 0 and self.header_reader is None:
                self._end("client_closed")
            else:
                self._fail("client_closed", f"the connection was lost during the handshake: {exc!r}")

    def pause_writing(self) -> None:
        if self.state == OPEN and not self.write_paused:
            self.write_paused = True
            cast(asyncio.Protocol, self.app).pause_writing()

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            if self.state == OPEN:
                cast(asyncio.Protocol, self.app).resume_writing()

    def _flush(self) -> None:
        out = self.outgoing.read()
        if out and not self.raw.is_closing():
            self.raw.write(out)

    # -- the app's transport -------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing or self.eof_sent or self.state != OPEN:
            return
        sslobj = cast(ssl.SSLObject, self.sslobj)
        try:
            n = sslobj.write(data)
            while n < len(data):  # (a memory BIO takes everything; never loops in practice)
                n += sslobj.write(memoryview(data)[n:])
        except ssl.SSLError as e:
            self._broken(e)
            return
        self.raw.write(self.outgoing.read())

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Send close_notify and go on reading (the peer may still send: TLS 1.3 half-close).

        OpenSSL's shutdown also tries to read the peer's close_notify and fails on any complete
        application record it finds first (APPLICATION_DATA_AFTER_CLOSE_NOTIFY); so while the
        app has records left unread (it paused), the close_notify waits until they are read."""
        if self.state != OPEN or self.eof_sent or self.eof_pending:
            return
        if self.drained:
            self._send_close_notify()
        else:
            self.eof_pending = True

    def _send_close_notify(self) -> None:
        if self.eof_sent:
            return
        self.eof_sent = True
        # (SSLWantReadError: sent, the peer's is awaited; or already closed)
        with contextlib.suppress(ssl.SSLError):
            cast(ssl.SSLObject, self.sslobj).unwrap()
        self._flush()

    def close(self, reason: str = "closed", *, abort: bool = False) -> None:
        """The app's ``transport.close()``; also ``ListenerContext.close_all`` (a drain) while
        handshaking. close_notify first, then the raw transport flushes and closes."""
        if self.closing:
            return
        if self.state != OPEN:
            if self.state == CLOSED:
                return
            self._end(reason)
            if abort:
                self.raw.abort()
            else:
                self.raw.close()
            return
        self.closing = True
        if abort:
            self.raw.abort()
            return
        # (Records left unread make OpenSSL's shutdown fail after it wrote close_notify: fine
        # here, nothing more is read.)
        self._send_close_notify()
        self.raw.close()

    def abort(self) -> None:
        self.closing = True
        self.raw.abort()

    def finish(self) -> None:
        """Drain (the listener stops): a handshake not yet done is ended now."""
        if self.state != OPEN:
            self.close("drain")

    def is_closing(self) -> bool:
        return self.closing or self.raw.is_closing()

    def pause_reading(self) -> None:
        if not self.app_paused:
            self.app_paused = True
            self.raw.pause_reading()

    def resume_reading(self) -> None:
        if self.app_paused:
            self.app_paused = False
            if not self.closing:
                self.raw.resume_reading()
            if not self.drained:
                # Records that came while paused: handed over on the next loop turn (not from
                # inside the app's call to resume_reading).
                self.loop.call_soon(self._resume_delivery)

    def _resume_delivery(self) -> None:
        if self.state == OPEN and not self.app_paused and not self.drained and not self.peer_eof:
            self._deliver()

    def is_reading(self) -> bool:
        return not self.app_paused

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.raw.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.client
        if name == "sockname":
            return self.dest
        if name == "tls":
            return self.info
        if name == "ssl_object":
            return self.sslobj
        if name == "raw_peername":
            return self.raw.get_extra_info("peername", default)
        return self.raw.get_extra_info(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return cast(asyncio.BaseProtocol, self.app)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.app = cast(asyncio.Protocol, protocol)


def _hostport(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
