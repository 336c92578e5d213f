"""UDP flows in-process, on real loopback sockets: a server given by name is resolved off the
loop without losing the datagrams that wait for it, and what a flow starts (the resolution task)
ends with the flow; a stopped listener leaves no task, timer or socket behind.

These run on asyncio's own loop rather than uvloop: the resolver is replaced on the loop object
(there is no DNS server here for a made-up name), which uvloop's C type does not allow.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from edgeproxy.config import Backend, Health, Listener, ServerConfig, Timeouts, parse_address
from edgeproxy.net.context import ListenerContext
from edgeproxy.net.udp import UdpListener
from edgeproxy.pools import BackendPool
from tests.helpers import UdpBackend, udp_client


class FakeResolver:
    """Stands in for ``loop.getaddrinfo`` (named so): answers ``address`` for any name, or never."""

    def __init__(self, address: tuple[str, int] | None) -> None:
        self.address = address
        self.asked: list[str] = []
        self.cancelled = 0

    async def __call__(self, host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        self.asked.append(host)
        if self.address is None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", self.address)]


def udp_listener(server: str) -> tuple[UdpListener, ListenerContext, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    listener = Listener(name="dns", bind=(parse_address(f"127.0.0.1:{port}"),), mode="udp", backend="r")
    backend = Backend(
        name="r",
        servers=(ServerConfig(parse_address(server, allow_hostname=True)),),
        health=Health(type="none"),
    )
    ctx = ListenerContext(asyncio.get_running_loop(), listener, Timeouts(), {"r": BackendPool(backend)})
    return UdpListener(ctx, [sock]), ctx, port


async def until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_a_server_name_is_resolved_and_the_datagrams_waiting_for_it_go_through() -> None:
    backend = UdpBackend(lambda q, _d: b"re:" + q)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        resolver = FakeResolver(("127.0.0.1", backend.port))
        loop.getaddrinfo = resolver  # type: ignore[method-assign]
        udp, ctx, port = udp_listener(f"dns-a.example:{backend.port}")
        await udp.start()
        with udp_client("127.0.0.41") as c:
            c.setblocking(False)
            for q in (b"one", b"two"):  # both sent before the name resolves: both are kept
                c.sendto(q, ("127.0.0.1", port))
            got = {await loop.sock_recv(c, 512), await loop.sock_recv(c, 512)}
        assert got == {b"re:one", b"re:two"} and resolver.asked == ["dns-a.example"]
        assert not udp.tasks
        ctx.close_all("drain")
        await udp.stop()
        assert udp.finished

    asyncio.run(main())
    backend.close()


def test_a_flow_ended_while_its_server_name_resolves_leaves_no_task_timer_or_socket() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        resolver = FakeResolver(None)  # never answers
        loop.getaddrinfo = resolver  # type: ignore[method-assign]
        udp, ctx, port = udp_listener("dns-b.example:53")
        await udp.start()
        with udp_client("127.0.0.41") as c:
            c.sendto(b"q", ("127.0.0.1", port))
            await until(lambda: resolver.asked)
            assert len(udp.tasks) == 1 and len(ctx.connections) == 1
            await udp.stop()  # stopping takes no new flows; the open one ends at drain
            assert not udp.finished
            ctx.close_all("drain")
            await until(lambda: not udp.tasks)
        assert resolver.cancelled == 1
        assert udp.finished and udp._sweep_handle is None
        assert all(ep.sock.fileno() == -1 for ep in udp.endpoints)  # our dups are closed
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())
