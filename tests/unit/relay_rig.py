"""A client connection of the HTTP relay wired to fakes (tests/unit/fakes.py): one listener, one
backend of N servers, the process's idle pool, a client transport. What the client and each
server connection were sent is in their transports."""

from __future__ import annotations

import time
from typing import Any, cast

from edgeproxy.balance import Server
from edgeproxy.config import Address, Backend, Forwarded, Health, Listener, ServerConfig, Timeouts
from edgeproxy.config.model import AcceptProxy, SendProxy
from edgeproxy.config.values import parse_network
from edgeproxy.net.context import ListenerContext
from edgeproxy.net.http_relay import STATE_NAMES, HttpConnection
from edgeproxy.net.http_upstream import UpstreamConn
from edgeproxy.net.upstream_pool import IdlePool
from edgeproxy.pools import BackendPool
from tests.unit.fakes import FakeLoop, FakeTransport

TIMEOUTS = Timeouts(connect=5.0, client_idle=60.0, server_idle=30.0, http_request=10.0, drain=5.0)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def get(path: str = "/", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: a.test\r\n{extra}\r\n".encode()


class Rig:
    def __init__(
        self,
        *,
        servers: int = 1,
        timeouts: Timeouts = TIMEOUTS,
        retries: int = 2,
        send_proxy: SendProxy = "none",
        upgrades: tuple[str, ...] = ("websocket",),
        accept_proxy: str | None = None,
        peer: tuple[str, int] = ("192.0.2.10", 40000),
    ) -> None:
        self.loop = FakeLoop()
        listener = Listener(
            name="web",
            bind=(Address("192.0.2.1", 80),),
            mode="http",
            backend="b",
            forwarded=Forwarded(),
            upgrades=upgrades,
            accept_proxy=AcceptProxy((parse_network(accept_proxy),)) if accept_proxy else None,
        )
        backend = Backend(
            name="b",
            retries=retries,
            send_proxy=send_proxy,
            health=Health(type="none"),
            servers=tuple(ServerConfig(Address(f"10.0.0.{i + 1}", 8080)) for i in range(servers)),
        )
        loop: Any = self.loop
        self.ctx = ListenerContext(loop, listener, timeouts, {"b": BackendPool(backend)})
        self.pool = self.ctx.pools["b"]
        self.idle: IdlePool[UpstreamConn] = IdlePool(loop)
        self.conn = HttpConnection(self.ctx, self.idle)
        self.client = FakeTransport(self.conn, peer=peer)
        self.conn.connection_made(cast(Any, self.client))

    @property
    def state(self) -> str:
        return STATE_NAMES[self.conn.state]

    @property
    def servers(self) -> list[Server]:
        return self.pool.servers

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)

    def idle_upstream(self, server: int = 0) -> FakeTransport:
        """An idle keep-alive connection to a server, in the pool (a previous request's)."""
        s = self.servers[server]
        up = UpstreamConn(s, self.loop.time)
        t = FakeTransport(up, peer=(s.host, s.port))
        up.connection_made(cast(Any, t))
        up.release()
        self.idle.put(up)
        return t

    def answer(self, upstream: FakeTransport, data: bytes = OK) -> None:
        assert upstream.protocol is not None
        cast(UpstreamConn, upstream.protocol).data_received(data)

    def suspect(self, server: int) -> None:
        """Passive health holds the server out (as a failed connect does)."""
        self.servers[server].mark_failed(time.monotonic(), 5.0)
