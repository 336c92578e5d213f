"""Response heads and framing, as an upstream connection reads them: any bytes from a server,
in one read or cut in two, end as a forwarded response, a response still going, or our own 502,
never another exception; and the cut changes nothing of what the client is sent or how it ends
(bytes after a complete response are never sent, whichever read brings them), except that a
response refused after its head went out is cut short where one read gets a clean 502
(``_same_failure``).

The first byte picks the cut and whether the request was a HEAD."""

from __future__ import annotations

import time
from typing import Any, cast

from edgeproxy.balance import Server
from edgeproxy.net.http_upstream import UpstreamConn
from edgeproxy.proto.http_response import ResponseParser


class _Sink:
    """A ResponseSink that records what the client side would be told."""

    def __init__(self) -> None:
        self.out = b""
        self.end: str | None = None

    def upgrade_requested(self) -> bool:
        return True

    def response_interim(self, head: bytes, now: float) -> None:
        self.out += head

    def response_head(self, parser: ResponseParser, head: bytes, now: float) -> bytes:
        return head

    def response_data(self, data: bytes, now: float) -> None:
        self.out += data

    def response_end(self, conn: UpstreamConn, data: bytes, reusable: bool, now: float) -> None:
        self.out += data
        # (Whether the connection may be reused depends on bytes after the response, which a
        # later read may bring: not compared.)
        self.end = "done"
        if reusable:  # as the relay does
            conn.release()
        else:
            conn.close()

    def response_progress(self, now: float) -> None:
        pass

    def upstream_failed(self, status: int, end: str, detail: str) -> None:
        self.end = f"{status} {end}"

    def upstream_lost(self, conn: UpstreamConn) -> None:
        self.end = "lost"

    def tunnel_start(self, conn: UpstreamConn, data: bytes, now: float) -> None:
        self.out += data
        self.end = "tunnel"

    def tunnel_eof(self) -> None:
        pass

    def tunnel_lost(self) -> None:
        pass

    def upstream_full(self, full: bool) -> None:
        pass


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass


def _run(data: bytes, cut: int, head_request: bool) -> tuple[bytes, str | None]:
    conn = UpstreamConn(Server("192.0.2.9", 80), time.monotonic)
    conn.connection_made(cast(Any, _Transport()))
    sink = _Sink()
    conn.begin(sink, head_request, b"", False)
    for piece in (data[:cut], data[cut:]) if 0 < cut < len(data) else (data,):
        if conn.sink is None:
            break
        conn.data_received(piece)
    return sink.out, sink.end


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    head_request = bool(data[0] & 1)
    body = data[1:]
    cut = data[0] % (len(body) + 1)
    whole = _run(body, 0, head_request)
    split = _run(body, cut, head_request)
    if whole != split and not _same_failure(whole, split):
        raise AssertionError(f"cut at {cut}: {split!r}; in one read: {whole!r}")


def _same_failure(a: tuple[bytes, str | None], b: tuple[bytes, str | None]) -> bool:
    """The one difference a cut may make: a response refused after its head was forwarded.

    Streaming forwards a head once it is whole; body bytes refused later (a bad chunk) can only
    cut the response short. When the same bytes come in one read the refusal is found before
    anything is sent, and the client gets our 502 instead. HAProxy does the same (it answers 502
    until it has forwarded the headers, then aborts). Both are the same failure, and what was
    sent in one case is a prefix of what was sent in the other: no different byte ever reaches
    the client.
    """
    (out_a, end_a), (out_b, end_b) = a, b
    if end_a != end_b or end_a is None or not end_a.startswith("502 "):
        return False
    return out_a.startswith(out_b) or out_b.startswith(out_a)


if __name__ == "__main__":
    from fuzz._atheris import run

    run(test_one_input)
