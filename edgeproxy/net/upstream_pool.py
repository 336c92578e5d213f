"""Idle keep-alive connections to servers, for http mode to reuse (SPEC.md: "idle upstream
connections are reused unless send_proxy is set").

The process's shared pool holds the connections any client may reuse; it is made and closed by
whoever composes the listeners (runtime) and handed to each http listener. A client connection
whose backend has ``send_proxy`` keeps its own private pool instead, because the PROXY header at
the start of an upstream connection speaks for one client only.

Connections are taken most-recently-used first, so the older ones age out. They are closed
after ``IDLE_SECONDS``: many application servers close idle keep-alive connections after 5 s
(Node.js, uvicorn, gunicorn's 2 s is shorter still, and a race there is retried, see
http_relay), and closing ours first avoids most "server closed it while we were sending" races.
Expiry is a one-second tick rather than a timer per connection, to keep the per-request cost of
``put``/``get`` at a list append/pop.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from edgeproxy.balance import Server

IDLE_SECONDS: Final = 3
MAX_IDLE_PER_SERVER: Final = 256  # per process; beyond it the oldest idle one is closed


class Pooled(Protocol):
    """What a pool needs of a connection it holds (``http_upstream.UpstreamConn``)."""

    server: Server
    home: IdlePool[Any] | None  # the pool holding it while idle
    idle_tick: int

    def close(self) -> None: ...


C = TypeVar("C", bound=Pooled)


class IdlePool(Generic[C]):
    __slots__ = ("conns", "loop", "tick", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.conns: dict[Server, list[C]] = {}
        self.tick = 0
        self.timer: asyncio.TimerHandle | None = None

    def get(self, server: Server) -> C | None:
        conns = self.conns.get(server)
        if not conns:
            return None
        conn = conns.pop()
        conn.home = None
        return conn

    def put(self, conn: C) -> None:
        conns = self.conns.get(conn.server)
        if conns is None:
            conns = self.conns[conn.server] = []
        elif len(conns) >= MAX_IDLE_PER_SERVER:
            oldest = conns.pop(0)
            oldest.home = None
            oldest.close()
        conn.idle_tick = self.tick
        conn.home = self
        conns.append(conn)
        if self.timer is None:
            self.timer = self.loop.call_later(1.0, self._sweep)

    def discard(self, conn: C) -> None:
        """An idle connection closed (the server ended it): forget it."""
        conn.home = None
        conns = self.conns.get(conn.server)
        if conns is not None:
            with contextlib.suppress(ValueError):
                conns.remove(conn)
            if not conns:
                del self.conns[conn.server]

    def _sweep(self) -> None:
        self.tick += 1
        oldest_kept = self.tick - IDLE_SECONDS
        for server, conns in list(self.conns.items()):
            # Oldest first in each list: stop at the first one young enough.
            n = 0
            while n < len(conns) and conns[n].idle_tick <= oldest_kept:
                n += 1
            if n:
                expired = conns[:n]
                del conns[:n]
                for conn in expired:
                    conn.home = None
                    conn.close()
            if not conns:
                del self.conns[server]
        self.timer = self.loop.call_later(1.0, self._sweep) if self.conns else None

    def close_all(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conns = [c for group in self.conns.values() for c in group]
        self.conns.clear()
        for conn in conns:
            conn.home = None
            conn.close()

    def __len__(self) -> int:
        return sum(len(c) for c in self.conns.values())
