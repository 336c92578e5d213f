"""The HTTP request path in-process: ``python -m benchmarks.hotpath [--requests N] [--rounds R]``.

Drives the real ``HttpConnection`` and ``UpstreamConn`` (net/http_relay.py, net/http_upstream.py)
with transports that only count bytes and a loop stub, no sockets: everything of a request that is
our own code (head find, parse, rewrite, routing, balancing pick, idle pool, relay callbacks, the
response framing) and nothing of the kernel's or uvloop's. It is deterministic and takes seconds,
so it compares builds (pure Python, mypyc, Cython) on a shared machine where a wrk run cannot tell
10% apart: the best of ``--rounds`` is the figure (noise only ever adds time).

Three paths, as the benchmark's scenarios 1 to 3: ``keepalive`` (one client connection, requests
one after another, an idle upstream connection reused each time), ``close`` (a new client
connection per request, ``Connection: close``, the upstream connection still reused) and ``tcp``
(net/tcp_relay.py: one relayed connection, a request and its response through it each time).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

from edgeproxy.build import description
from edgeproxy.config import Address, Backend, Forwarded, Health, Listener, ServerConfig, Timeouts
from edgeproxy.log import log
from edgeproxy.net.context import ListenerContext
from edgeproxy.net.http_relay import HttpConnection
from edgeproxy.net.http_upstream import UpstreamConn
from edgeproxy.net.tcp_relay import TcpConnection, _Upstream
from edgeproxy.net.upstream_pool import IdlePool
from edgeproxy.pools import BackendPool

REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"  # what wrk sends
CLOSE_REQUEST = REQUEST[:-2] + b"Connection: close\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 01:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 17\r\nConnection: keep-alive\r\n\r\n"
    b"hello from nginx\n"
)


class _Handle:
    __slots__ = ()

    def cancel(self) -> None:
        pass


class _Loop:
    """What the relay asks of its loop on this path: the clock and timers (never fired here)."""

    time = staticmethod(time.monotonic)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> _Handle:
        return _Handle()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> _Handle:
        return _Handle()

    def create_task(self, coro: Coroutine[Any, Any, None]) -> None:
        coro.close()  # the TCP relay's connect: the rig wires the upstream itself


class _Transport:
    """Counts what is written; the rest are the no-ops the relay may call."""

    __slots__ = ("protocol", "written")

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else ("127.0.0.1", 8080)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class Path:
    """One listener, one backend of one server, one idle upstream connection to it."""

    def __init__(self) -> None:
        loop: Any = _Loop()
        self.loop = loop
        listener = Listener(
            name="web", bind=(Address("127.0.0.1", 8080),), mode="http", backend="b",
            forwarded=Forwarded(headers=("x-forwarded-for",)),
        )  # fmt: skip
        backend = Backend(name="b", health=Health(type="none"), servers=(ServerConfig(Address("127.0.0.1", 8081)),))
        timeouts = Timeouts(connect=5.0, client_idle=60.0, server_idle=30.0, http_request=10.0, drain=5.0)
        self.ctx = ListenerContext(loop, listener, timeouts, {"b": BackendPool(backend)})
        self.idle: IdlePool[UpstreamConn] = IdlePool(loop)
        server = self.ctx.pools["b"].servers[0]
        self.upstream = UpstreamConn(server, loop.time)
        self.up_transport = _Transport(self.upstream)
        self.upstream.connection_made(cast(Any, self.up_transport))
        self.upstream.release()
        self.idle.put(self.upstream)
        tcp = Listener(name="tcp", bind=(Address("127.0.0.1", 8443),), mode="tcp", backend="b2")
        backend2 = Backend(
            name="b2", health=Health(type="none"), servers=(ServerConfig(Address("127.0.0.1", 8082)),),
            send_proxy="v2",
        )  # fmt: skip
        self.tcp_ctx = ListenerContext(loop, tcp, timeouts, {"b2": BackendPool(backend2)})

    def client(self) -> tuple[HttpConnection, _Transport]:
        conn = HttpConnection(self.ctx, self.idle)
        t = _Transport(conn)
        conn.connection_made(cast(Any, t))
        return conn, t

    def keepalive(self, n: int) -> None:
        conn, t = self.client()
        up = self.upstream
        for _ in range(n):
            conn.data_received(REQUEST)
            up.data_received(RESPONSE)
        assert t.written == n * len(RESPONSE), "every response reached the client"
        conn.connection_lost(None)

    def close(self, n: int) -> None:
        up = self.upstream
        for _ in range(n):
            conn, t = self.client()
            conn.data_received(CLOSE_REQUEST)
            up.data_received(RESPONSE)
            conn.connection_lost(None)
        assert t.written > 0, "the last response reached the client"

    def tcp(self, n: int) -> None:
        conn = TcpConnection(self.tcp_ctx)
        t = _Transport(conn)
        conn.connection_made(cast(Any, t))  # starts a connect the stub loop drops: wired here
        up = _Upstream(conn)
        ut = _Transport(up)
        up.connection_made(cast(Any, ut))
        conn.upstream, conn.upstream_transport = up, cast(Any, ut)
        up.wire(cast(Any, t))
        for _ in range(n):
            conn.data_received(REQUEST)
            up.data_received(RESPONSE)
        assert t.written == n * len(RESPONSE) and ut.written == n * len(REQUEST), "relayed both ways"
        conn.connection_lost(None)


def measure(path: str, requests: int, rounds: int) -> float:
    """Best µs per request over ``rounds``."""
    rig = Path()
    run = {"keepalive": rig.keepalive, "close": rig.close, "tcp": rig.tcp}[path]
    run(min(requests, 2000))  # warm-up: caches, the first-call costs
    best = float("inf")
    gc.disable()
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            run(requests)
            best = min(best, (time.perf_counter() - t0) / requests * 1e6)
            gc.collect()
    finally:
        gc.enable()
    return best


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hotpath", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=7)
    paths = ["keepalive", "close", "tcp"]
    p.add_argument("--paths", nargs="+", default=paths, choices=paths)
    args = p.parse_args()
    log.configure("warning", "off", "json")  # as the benchmark's proxies run: no access log
    print(f"edgeproxy {description}")
    for path in args.paths:
        us = measure(path, args.requests, args.rounds)
        print(f"{path:10} {us:7.2f} us/request (best of {args.rounds} x {args.requests})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
