"""UDP mode: flows keyed by client address, each with its own connected upstream socket.

A flow is one client address (ip, port) on one listening socket. It is bound to a server picked
by the backend's ``balance`` (source hashing keeps a client on its server across flows) and owns
a connected UDP socket to that server, so a reply arriving there belongs to exactly one client
and is sent back with the *listening* transport's ``sendto``: the client sees it come from the
address it wrote to. With ``send_proxy: v2`` every datagram to the server is prefixed by a PROXY
v2 DGRAM header; src/dst never change within a flow, so the header is built once.

Bookkeeping per datagram is a dict lookup and an ``OrderedDict.move_to_end``: the listener's
flows stay ordered by last activity, so the once-a-second idle sweep stops at the first live
flow and the flow cap evicts the least recently active one in O(1) — no timer per datagram.

A flow whose server went down (health check, or ICMP port unreachable seen on its upstream
socket as ``error_received(ConnectionRefusedError)``) is moved to another server on its next
datagram. Nothing a client or server sends can raise out of the protocol callbacks.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, cast

from edgeproxy.balance import ServerState
from edgeproxy.log import log
from edgeproxy.net.tcp_relay import _hostport as _hp
from edgeproxy.proto.proxy_protocol import build_v2

if TYPE_CHECKING:
    from edgeproxy.balance import Server
    from edgeproxy.net.context import ListenerContext

Addr = tuple[str, int]

PENDING_MAX = 16  # datagrams queued per flow while its upstream socket is being created
SWEEP_MAX = 1.0  # seconds between idle sweeps (shorter when client_idle is shorter)
DRAIN_IDLE = 1.0  # after stop(): a flow quiet for this long has had its reply and ends
FAIL_HOLD = 5.0  # passive health: a refused server gets no new flows for this long


class _Upstream(asyncio.DatagramProtocol):
    """The flow's connected socket to its server; replies go back through the listener."""

    __slots__ = ("flow",)

    def __init__(self, flow: UdpFlow) -> None:
        self.flow = flow

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.flow.reply(data, self)

    def error_received(self, exc: Exception) -> None:
        self.flow.upstream_error(exc, self)


class UdpFlow:
    __slots__ = (
        "backend",
        "bytes_in",
        "bytes_out",
        "client",
        "closed",
        "ctx",
        "dest",
        "dgrams_in",
        "dgrams_out",
        "endpoint",
        "header",
        "key",
        "last_activity",
        "moves",
        "pending",
        "protocol",
        "server",
        "started",
        "transport",
    )

    def __init__(self, endpoint: _Endpoint, key: object, client: Addr) -> None:
        self.endpoint = endpoint
        self.ctx = endpoint.owner.ctx
        self.key = key  # the address tuple as the listening socket reported it (4-tuple on IPv6)
        self.client = client
        self.dest = endpoint.local
        self.server: Server | None = None
        self.backend = ""
        self.header = b""
        self.transport: asyncio.DatagramTransport | None = None
        self.protocol: _Upstream | None = None  # identifies the current upstream (moves replace it)
        self.pending: list[bytes] | None = None  # set while an upstream socket is being created
        self.dgrams_in = self.dgrams_out = self.bytes_in = self.bytes_out = 0
        self.moves = 0
        self.closed: str | None = None
        self.started = self.last_activity = time.monotonic()

    # -- client -> server --------------------------------------------------------------------------
    def send(self, data: bytes, now: float) -> None:
        self.last_activity = now
        self.dgrams_in += 1
        self.bytes_in += len(data)
        server = self.server
        # Inline Server.usable(now): this runs per datagram.
        if (server is None or server.state is not ServerState.UP or now < server.suspect_until) and not self._pick(now):
            self.ctx.stats.udp_dropped += 1
            return
        if self.pending is not None:
            if len(self.pending) < PENDING_MAX:
                self.pending.append(data)
            else:
                self.ctx.stats.udp_dropped += 1
            return
        cast(asyncio.DatagramTransport, self.transport).sendto(self.header + data if self.header else data)

    def _pick(self, now: float) -> bool:
        """Bind the flow to a (new) usable server and start its upstream socket."""
        pool = self.ctx.pool_for_connection()
        old = self.server
        server = pool.pick(self.client[0], (old,) if old is not None else ()) if pool is not None else None
        if old is not None:
            old.release()
            self.moves += 1
            if self.transport is not None:
                self.transport.close()
            self.transport = self.protocol = None
        self.server = server
        if server is None or pool is None:
            self.pending = None
            return False
        server.acquire()
        self.backend = pool.name
        self.header = build_v2(self.client, self.dest, dgram=True) if pool.config.send_proxy == "v2" else b""
        protocol = self.protocol = _Upstream(self)
        self.pending = []
        self.ctx.loop.create_task(self._connect(server, protocol))
        return True

    async def _connect(self, server: Server, protocol: _Upstream) -> None:
        try:
            transport, _ = await self.ctx.loop.create_datagram_endpoint(
                lambda: protocol, remote_addr=(server.host, server.port)
            )
        except OSError as exc:
            if self.protocol is protocol:
                server.mark_failed(time.monotonic(), FAIL_HOLD)
                log.warning("udp upstream socket failed", server=server.name, error=str(exc))
                self.pending = None
                self.server = None  # the next datagram picks again
                server.release()
            return
        if self.protocol is not protocol or self.closed is not None:
            transport.close()  # moved or ended while connecting
            return
        self.transport = transport
        pending, self.pending = self.pending or [], None
        header = self.header
        for data in pending:
            self.transport.sendto(header + data)

    # -- server -> client --------------------------------------------------------------------------
    def reply(self, data: bytes, protocol: _Upstream) -> None:
        if protocol is not self.protocol or self.closed is not None:
            return
        self.last_activity = time.monotonic()
        self.dgrams_out += 1
        self.bytes_out += len(data)
        self.endpoint.owner.order.move_to_end(self)
        self.endpoint.reply(data, self.key)

    def upstream_error(self, exc: Exception, protocol: _Upstream) -> None:
        if protocol is not self.protocol:
            return
        server = self.server
        if isinstance(exc, ConnectionRefusedError) and server is not None:
            # ICMP port unreachable: nothing listens there now. Hold the server out so the next
            # datagram (and other flows' next datagrams) go elsewhere.
            server.mark_failed(time.monotonic(), FAIL_HOLD)
            self.ctx.stats.udp_refused += 1
            log.warning("udp server refused (ICMP port unreachable)", server=server.name, client=_hp(self.client))
        else:
            self.ctx.stats.udp_errors += 1

    # -- ending ------------------------------------------------------------------------------------
    def close(self, reason: str, *, abort: bool = False) -> None:
        if self.closed is not None:
            return
        self.closed = reason
        if self.transport is not None:
            self.transport.close()
        self.transport = self.protocol = None
        self.pending = None
        server = self.server
        if server is not None:
            server.release()
        self.endpoint.forget(self)
        ctx = self.ctx
        ctx.closed(self, reason, self.bytes_in, self.bytes_out)
        log.access_line(
            {
                "listener": ctx.listener.name,
                "client": _hp(self.client),
                "backend": self.backend or ctx.listener.backend,
                "server": server.name if server is not None else None,
                "datagrams_in": self.dgrams_in,
                "datagrams_out": self.dgrams_out,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "moves": self.moves,
                "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
                "end": reason,
            }
        )


class _Endpoint(asyncio.DatagramProtocol):
    """One listening socket: finds the client's flow, or starts one."""

    __slots__ = ("flows", "local", "owner", "transport")

    def __init__(self, owner: UdpListener, local: Addr) -> None:
        self.owner = owner
        self.local = local
        self.flows: dict[object, UdpFlow] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        owner = self.owner
        stats = owner.ctx.stats
        stats.datagrams_in += 1
        if len(data) > owner.ctx.listener.max_datagram_size:
            stats.dropped_oversize += 1
            return
        now = time.monotonic()
        flow = self.flows.get(addr)
        if flow is None:
            if owner.stopped:
                stats.udp_dropped += 1
                return
            flow = owner.new_flow(self, addr)
        else:
            owner.order.move_to_end(flow)
        flow.send(data, now)

    def error_received(self, exc: Exception) -> None:
        # e.g. ICMP unreachable for a reply to a client that went away: never fatal.
        self.owner.ctx.stats.udp_errors += 1

    def reply(self, data: bytes, addr: object) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            self.owner.ctx.stats.datagrams_out += 1
            t.sendto(data, addr)  # type: ignore[arg-type]

    def forget(self, flow: UdpFlow) -> None:
        self.flows.pop(flow.key, None)
        self.owner.order.pop(flow, None)
        self.owner.maybe_finish()


class UdpListener:
    """The datagram side of a ``mode: udp`` listener (same shape as ``TcpListener``)."""

    def __init__(self, ctx: ListenerContext, sockets: list[socket.socket]) -> None:
        self.ctx = ctx
        self.sockets = sockets
        self.endpoints: list[_Endpoint] = []
        self.order: OrderedDict[UdpFlow, None] = OrderedDict()  # least recently active first
        self.stopped = False
        self._sweep_handle: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        for sock in self.sockets:
            local = sock.getsockname()
            endpoint = _Endpoint(self, (local[0], local[1]))
            # On a dup: stopping closes only the duplicate; the runtime owns the original.
            await self.ctx.loop.create_datagram_endpoint(lambda ep=endpoint: ep, sock=sock.dup())  # type: ignore[misc]
            self.endpoints.append(endpoint)
        self._schedule_sweep()

    def new_flow(self, endpoint: _Endpoint, addr: Addr) -> UdpFlow:
        ctx = self.ctx
        if len(self.order) >= ctx.listener.max_connections:
            oldest = next(iter(self.order))
            ctx.stats.evictions += 1
            log.info("udp flow cap reached: evicting the least recently active flow", client=_hp(oldest.client))
            oldest.close("evicted")
        flow = UdpFlow(endpoint, addr, (addr[0], addr[1]))
        endpoint.flows[addr] = flow
        self.order[flow] = None
        ctx.opened(flow)
        return flow

    def _idle_limit(self) -> float:
        idle = self.ctx.timeouts.client_idle_for("udp")
        return min(idle, DRAIN_IDLE) if self.stopped else idle

    def _schedule_sweep(self) -> None:
        interval = min(SWEEP_MAX, max(0.05, self._idle_limit() / 4))
        self._sweep_handle = self.ctx.loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        self._sweep_handle = None
        cutoff = time.monotonic() - self._idle_limit()
        order = self.order
        while order:
            flow = next(iter(order))
            if flow.last_activity > cutoff:
                break
            flow.close("drain" if self.stopped else "idle_timeout")
        if not (self.stopped and not order):
            self._schedule_sweep()

    async def stop(self) -> None:
        """Take no new flows; open ones get their replies and end once quiet (or at drain)."""
        self.stopped = True
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._schedule_sweep()
        self.maybe_finish()

    def maybe_finish(self) -> None:
        if not self.stopped or self.order:
            return
        for ep in self.endpoints:
            if ep.transport is not None:
                ep.transport.close()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
