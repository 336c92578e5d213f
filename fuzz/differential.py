"""The relay against an independent strict parser: for any bytes a client sends, what edgeproxy
sends upstream must parse with h11 into the same requests that h11 reads from the client's bytes
(method, target, headers other than forwarding and hop-by-hop ones, body, trailers), each with our
X-Forwarded-For and nothing else of the kind. Used by the hypothesis test
(tests/unit/test_http_differential.py) and the atheris harness (fuzz/harness_http_relay.py).

The relay runs sans-IO (tests/unit/relay_rig.py): a client connection on a fake transport, its
backend's idle pool kept stocked with connections whose other end is an h11 server that answers
``200`` at the end of each request, so pipelined requests flow one after the other.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import h11

from edgeproxy.log import log
from tests.unit.relay_rig import Rig

CLIENT_IP = b"192.0.2.10"
# Names the relay owns or may remove: forwarding headers in every "-"/"_" spelling (SPEC.md),
# hop-by-hop fields.
_FORWARDING = (b"x-forwarded-for", b"x-real-ip", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port")


def _spellings(name: bytes) -> set[bytes]:
    parts = name.split(b"-")
    return {
        parts[0] + b"".join(sep + part for sep, part in zip(seps, parts[1:], strict=True))
        for seps in itertools.product((b"-", b"_"), repeat=len(parts) - 1)
    }


_OURS = {b"forwarded"}.union(*(_spellings(name) for name in _FORWARDING))
_KEPT = {b"host", b"content-length", b"transfer-encoding"}
_HOP = {b"connection", b"upgrade", b"http2-settings", b"keep-alive", b"te"}


class Finding(AssertionError):
    """The property does not hold: what was sent upstream differs from what the client sent."""


@dataclass
class Message:
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def comparable(self) -> tuple[Any, ...]:
        """Everything but the fields a proxy may change."""
        dropped = set(_OURS) | _HOP
        for name, value in self.headers:
            if name == b"connection":  # hop-by-hop options, but never the framing or Host (SPEC)
                dropped |= {t.strip(b" \t").lower() for t in value.split(b",")} - _KEPT
        kept = [(n, v.lower() if n == b"transfer-encoding" else v) for n, v in self.headers if n not in dropped]
        # RFC 9110 5.3: the order of fields with different names carries no meaning (a restated
        # framing line comes last); the order within one name does (a stable sort keeps it).
        kept.sort(key=lambda field: field[0])
        return self.method, self.target, self.version, kept, self.body, self.trailers


def _read(conn: h11.Connection, current: list[Message], done: list[Message]) -> bool:
    """Events until h11 needs data or the request is complete; True at the end of a request."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            return False
        if isinstance(event, h11.Request):
            current.append(Message(event.method, event.target, event.http_version, [(n, v) for n, v in event.headers]))
        elif isinstance(event, h11.Data):
            current[-1].body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            current[-1].trailers = [(n, v) for n, v in event.headers]
            done.append(current.pop())
            return True


def _answer(conn: h11.Connection) -> bytes:
    out = conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
    out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
    return out


def client_requests(stream: bytes) -> tuple[list[Message], str | None]:
    """The requests h11 reads from the client's bytes, up to its first refusal (and why).

    h11 does not skip empty lines before a request, which RFC 9112 2.2 allows (and we do): each
    request is read by a fresh h11 connection from what is left, with those lines removed."""
    done: list[Message] = []
    current: list[Message] = []
    rest = stream
    while rest.lstrip(b"\r\n"):
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        conn.receive_data(rest.lstrip(b"\r\n"))
        try:
            if not _read(conn, current, done):
                return done, "incomplete"
        except h11.RemoteProtocolError as e:
            return done, str(e)
        _answer(conn)
        if conn.our_state is h11.MUST_CLOSE:
            break
        rest = bytes(conn.trailing_data[0])
    return done, None


class _Upstream:
    """One upstream connection whose server side is h11."""

    def __init__(self, rig: Rig) -> None:
        self.transport = rig.idle_upstream()
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        self.current: list[Message] = []
        self.gone = False


class RelayRun:
    def __init__(self) -> None:
        self.rig = Rig()
        self.upstreams: list[_Upstream] = []
        self.seen: list[Message] = []  # what the servers received, in order

    def _stock(self) -> None:
        if not self.rig.idle.conns.get(self.rig.servers[0]):
            self.upstreams.append(_Upstream(self.rig))

    def feed(self, chunk: bytes) -> None:
        self._stock()
        if not self.rig.client.closed and self.rig.state not in ("LINGER", "CLOSED"):
            self.rig.send(chunk)
        self._pump()

    def _pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for up in self.upstreams:
                if up.gone:
                    continue
                data = up.transport.take()
                if not data:
                    continue
                moved = True
                up.h11.receive_data(data)
                try:
                    complete = _read(up.h11, up.current, self.seen)
                except h11.RemoteProtocolError as e:
                    raise Finding(f"h11 refuses what was sent upstream: {e}: {bytes(data)[:300]!r}") from None
                if complete:
                    self._stock()
                    answer = _answer(up.h11)
                    closing = up.h11.our_state is h11.MUST_CLOSE
                    if not closing:
                        up.h11.start_next_cycle()
                    self.rig.answer(up.transport, answer)
                    if closing:
                        up.gone = True
                        if not up.transport.closed:
                            up.transport.lose()


def check(chunks: Sequence[bytes]) -> RelayRun:
    """Feed ``chunks`` to a client connection; raise Finding if the property fails."""
    run = RelayRun()
    for chunk in chunks:
        if chunk:
            run.feed(chunk)
    expected, refusal = client_requests(b"".join(chunks))
    for i, got in enumerate(run.seen):
        xff = [v for n, v in got.headers if n == b"x-forwarded-for"]
        if xff != [CLIENT_IP]:
            raise Finding(f"request {i}: X-Forwarded-For {xff!r}, not exactly ours")
        for name, value in got.headers:
            if (name == b"upgrade" and value.lower() != b"websocket") or name == b"http2-settings":
                raise Finding(f"request {i}: {name!r}: {value!r} reached the server")
            if name == b"transfer-encoding" and value != b"chunked":
                raise Finding(f"request {i}: Transfer-Encoding {value!r} is not canonical")
            if name == b"content-length" and (not value.isdigit() or value != b"%d" % int(value)):
                raise Finding(f"request {i}: Content-Length {value!r} is not canonical")
        if i >= len(expected):
            raise Finding(f"request {i} forwarded, but h11 reads only {len(expected)} from the client ({refusal})")
        if got.comparable() != expected[i].comparable():
            sent, received = got.comparable(), expected[i].comparable()
            raise Finding(f"request {i} differs:\n upstream {sent!r}\n client   {received!r}")
    return run


@contextmanager
def quiet() -> Iterator[None]:
    """No access lines or warnings while fuzzing (millions of runs)."""
    access, level = log.access, log.level
    log.access, log.level = None, 100
    try:
        yield
    finally:
        log.access, log.level = access, level
