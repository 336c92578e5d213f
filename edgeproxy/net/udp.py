"""UDP mode: flows keyed by client address, each with its own connected upstream socket.

A flow is one client address (ip, port) on one listening address. It is bound to a server picked
by the backend's ``balance`` (source hashing keeps a client on its server across flows) and owns
a UDP socket connected to that server, so a reply arriving there belongs to exactly one client.
With ``send_proxy: v2`` every datagram to the server is prefixed by a PROXY v2 DGRAM header;
src/dst never change within a flow, so the header is built once.

Reading and writing, each choice measured with benchmarks/udp_dns.py (figures in the README):
- A flow's upstream socket is a plain non-blocking socket (socket + connect, synchronous; its
  first datagram leaves in the same callback) in the listener's epoll set (``_Poller``), which
  the event loop watches as a single reader. A datagram endpoint per flow (a task, a
  transport, a loop handle each) cost a fresh flow ~50 us more; an epoll_ctl is all ours costs.
  Each ready socket gives one datagram per round and the set is asked again: an empty ``poll``
  returns ``[]`` where reading a socket until EAGAIN costs a ~3 us exception per wake-up.
- A listening socket bound to a specific address is read by uvloop's datagram transport (its C
  loop reads every waiting datagram; its ``sendto`` is cheaper than a Python socket call).
- A wildcard bind (``0.0.0.0:53``) must reply from the address the client sent to, which takes
  ``recvmsg``/``sendmsg`` with IP_PKTINFO ancillary data (net/udp_pktinfo.py); no transport
  exposes them, so that socket is in the epoll set too.

No datagram lost to a dead server: until the flow's server first answers (and for at most
``timeouts.connect``), the flow keeps what it sent (up to ``KEEP_MAX`` datagrams). An ICMP port
unreachable (or host/net unreachable) surfaces as ``ECONNREFUSED`` on the connected socket; the
server is then held out for ``SUSPECT_HOLD`` (passive health, as in TCP mode) and the kept
datagrams are re-sent to another server, within the backend's ``retries``. A flow whose server
answered already moves on its next datagram (at once, with the datagram in hand, when the
refusal shows up on a send).

Bookkeeping per datagram is a dict lookup and an ``OrderedDict.move_to_end``: the listener's
flows stay ordered by last activity, so the once-a-second idle sweep stops at the first live
flow and the flow cap evicts the least recently active one in O(1); no timer per datagram. The
only tasks are hostname resolutions of servers given by name; the listener tracks them and the
sweep timer, and cancels them when it finishes. Nothing a client or server sends can raise out
of the callbacks: an unexpected error drops that datagram, is counted and logged once.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import errno
import functools
import math
import select
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from edgeproxy.balance import ServerState
from edgeproxy.log import log
from edgeproxy.net import udp_pktinfo
from edgeproxy.net.tcp_relay import _hostport as _hp
from edgeproxy.net.upstream import SUSPECT_HOLD
from edgeproxy.proto.proxy_protocol import build_v2

if TYPE_CHECKING:
    from edgeproxy.balance import Server
    from edgeproxy.net.context import ListenerContext

Addr = tuple[Any, ...]  # (host, port), or (host, port, flowinfo, scope_id) from an IPv6 socket

KEEP_MAX = 16  # datagrams a flow keeps for a re-send until its server first answers
POLL_EVENTS = 64  # ready sockets taken from the listener's epoll set at a time
POLL_ROUNDS = 8  # rounds of those per loop callback before the loop runs other callbacks
READ_BATCH = 16  # datagrams read from a wildcard listening socket per round
BUF_SIZE = 65536  # one shared receive buffer per listener: every datagram is sent on at once
SWEEP_MAX = 1.0  # seconds between idle sweeps (shorter when client_idle is shorter)
DRAIN_IDLE = 1.0  # after stop(): a flow quiet for this long has had its reply and ends
# Errors on a connected UDP socket that mean "this server is not there" (ICMP unreachable kinds).
_UNREACHABLE = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN})
_UP = ServerState.UP
_EPOLLIN = select.EPOLLIN
_DGRAM_NONBLOCK = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK


@functools.lru_cache(maxsize=4096)
def _literal_family(host: str) -> int | None:
    """AF_INET/AF_INET6 for an IP literal; None for a name that needs resolving."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return family
    return None


class _Poller:
    """A listener's sockets in one epoll set, which the event loop watches as one reader.

    Level-triggered: a socket that still holds a datagram after its handler read one is returned
    again by the next ``poll``. Closing a socket removes it from the set (we never dup them), so
    a flow that ends only closes its socket and drops its handler.
    """

    __slots__ = ("ep", "handlers", "loop", "on_error")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_error: Callable[[Exception], None]) -> None:
        self.loop = loop
        self.on_error = on_error
        self.ep = select.epoll()
        self.handlers: dict[int, Callable[[], None]] = {}
        loop.add_reader(self.ep.fileno(), self._ready)

    def add(self, fd: int, handler: Callable[[], None]) -> None:
        try:
            self.ep.register(fd, _EPOLLIN)
        except FileExistsError:  # a closed socket's number, reused before the set forgot it
            self.ep.modify(fd, _EPOLLIN)
        self.handlers[fd] = handler

    def discard(self, fd: int) -> None:
        """Before closing a socket of ours (never dup'ed): closing it takes it out of the set."""
        self.handlers.pop(fd, None)

    def remove(self, fd: int) -> None:
        """Before closing a dup: the set keeps a socket until every descriptor of it is closed."""
        self.handlers.pop(fd, None)
        with contextlib.suppress(OSError):
            self.ep.unregister(fd)

    def _ready(self) -> None:
        poll, handlers = self.ep.poll, self.handlers
        for _ in range(POLL_ROUNDS):
            events = poll(0, POLL_EVENTS)
            if not events:
                return
            for fd, _ in events:
                handler = handlers.get(fd)
                if handler is None:  # closed earlier in this round (a stale event), or a leak
                    with contextlib.suppress(OSError):
                        self.ep.unregister(fd)  # a leak would come back on every poll
                    continue
                try:
                    handler()
                except Exception as exc:  # a bug must not stop the other sockets: drop, count, say
                    self.on_error(exc)

    def close(self) -> None:
        self.loop.remove_reader(self.ep.fileno())
        self.ep.close()
        self.handlers.clear()


class UdpFlow:
    __slots__ = (
        "addr",
        "backend",
        "bytes_in",
        "bytes_out",
        "client",
        "closed",
        "cmsg",
        "ctx",
        "dest",
        "dgrams_in",
        "dgrams_out",
        "endpoint",
        "fd",
        "header",
        "keep_until",
        "kept",
        "key",
        "last_activity",
        "opened",
        "owner",
        "server",
        "server_name",
        "sock",
        "started",
        "task",
        "tried",
    )

    def __init__(self, endpoint: _Endpoint, key: object, addr: Addr, info: bytes | None, now: float) -> None:
        self.endpoint = endpoint
        self.owner = endpoint.owner
        self.ctx = endpoint.owner.ctx
        self.key = key  # the flow's key in its endpoint: the address, with the pktinfo on a wildcard
        self.addr = addr  # where replies go, as the listening socket reported it
        self.client: tuple[str, int] = (addr[0].partition("%")[0], addr[1])
        if info is None:
            self.dest = endpoint.local
            self.cmsg: list[udp_pktinfo.Cmsg] | None = None
        else:  # a wildcard bind: the address this client actually sent to
            self.dest = (udp_pktinfo.local_ip(info), endpoint.local[1])
            self.cmsg = udp_pktinfo.reply_cmsg(info)
        self.server: Server | None = None
        self.server_name: str | None = None
        self.backend = ""
        self.header = b""
        self.sock: _socket.socket | None = None
        self.fd = -1
        self.task: asyncio.Task[None] | None = None  # resolving a server given by hostname
        # Sent to the current server since it was picked, until it answers (None after that).
        self.kept: list[bytes] | None = None
        self.keep_until = 0.0
        self.tried: list[Server] = []  # servers that refused this flow since its last reply
        self.dgrams_in = self.dgrams_out = self.bytes_in = self.bytes_out = 0
        self.opened = 0  # upstream sockets opened: moves = opened - 1
        self.closed: str | None = None
        self.started = self.last_activity = now

    # -- client -> server --------------------------------------------------------------------------
    def send(self, data: bytes | memoryview, now: float) -> None:
        self.last_activity = now
        self.dgrams_in += 1
        self.bytes_in += len(data)
        server = self.server
        # Inline Server.usable(now): this runs per datagram.
        if (server is None or server.state is not _UP or now < server.suspect_until) and not self._pick(now):
            self.ctx.stats.udp_dropped += 1
            return
        kept = self.kept
        if kept is not None:
            if now > self.keep_until:
                self.kept = None  # silent past connect's timeout: nothing to re-send any more
            elif len(kept) < KEEP_MAX:
                kept.append(bytes(data))
            elif self.sock is None:
                self.ctx.stats.udp_dropped += 1  # resolving, and the queue is full
                return
        if self.sock is not None:
            self._transmit(data)

    def _transmit(self, data: bytes | memoryview) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            # header + data, not sendmsg((header, data)): ~1 us less for DNS-sized datagrams.
            sock.send(self.header + data if self.header else data)
        except BlockingIOError:
            self.ctx.stats.udp_dropped += 1  # the socket's send buffer is full: UDP drops
        except OSError as exc:
            self._upstream_error(exc, data)

    def _pick(self, now: float) -> bool:
        """Bind the flow to a usable server it has not tried, and open its socket."""
        self._let_go()
        pool = self.ctx.pool_for_connection()
        if pool is not None:
            retries = pool.config.retries
            while len(self.tried) <= retries:
                server = pool.pick(self.client[0], self.tried)
                if server is None:
                    break
                server.acquire()
                self.server = server
                self.server_name = server.name
                self.backend = pool.name
                self.header = build_v2(self.client, self.dest, dgram=True) if pool.config.send_proxy == "v2" else b""
                self.kept = []
                opened = self._open(server, now)
                if opened:
                    return True
                if opened is None:
                    break  # no socket for anyone (descriptors): trying other servers cannot help
        self.tried.clear()
        return False

    def _open(self, server: Server, now: float) -> bool | None:
        """Open the socket to ``server``: True; False when the server is unreachable (it is held
        out and added to ``tried``); None when no socket could be created at all."""
        family = _literal_family(server.host)
        if family is None:
            self.keep_until = math.inf  # datagrams wait in ``kept`` until the name is resolved
            self.task = self.owner.spawn(self._resolve(server))
            return True
        return self._connect(server, family, (server.host, server.port), now)

    def _connect(self, server: Server, family: int, address: tuple[Any, ...], now: float) -> bool | None:
        try:
            # The C socket type, non-blocking from birth: the Python wrapper (socket.socket) and a
            # setblocking() (one more syscall) cost ~3 us more per flow.
            sock = _socket.socket(family, _DGRAM_NONBLOCK)
        except OSError as exc:
            self.ctx.stats.udp_errors += 1
            log.warning("udp upstream socket failed", server=server.name, error=exc.strerror or str(exc))
            self._let_go()
            return None
        try:
            sock.connect(address)  # UDP: no packet, only the route and the peer are fixed
            fd = sock.fileno()
            self.owner.poller.add(fd, self._readable)
        except OSError as exc:
            sock.close()
            self._server_failed(server, now, "udp server unreachable", exc)
            return False
        self.sock = sock
        self.fd = fd
        self.opened += 1
        self.keep_until = now + self.ctx.timeouts.connect
        return True

    async def _resolve(self, server: Server) -> None:
        try:
            infos = await self.ctx.loop.getaddrinfo(server.host, server.port, type=socket.SOCK_DGRAM)
            error: OSError | None = None if infos else OSError(errno.ENOENT, "no address")
        except OSError as exc:
            infos, error = [], exc
        self.task = None
        if self.server is not server or self.closed is not None:
            return
        now = time.monotonic()
        resend = self.kept or []
        if error is None:
            family, _, _, _, address = infos[0]
            opened = self._connect(server, family, address, now)
            if opened:
                for data in resend:
                    self._transmit(data)
                return
            if opened is None:
                self.ctx.stats.udp_dropped += len(resend)
                return
        else:
            self._server_failed(server, now, "udp server name does not resolve", error)
        self._failover(resend, now)

    # -- server -> client --------------------------------------------------------------------------
    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        owner = self.owner
        try:
            n = sock.recv_into(owner.buf)
        except BlockingIOError:
            return
        except OSError as exc:
            self._upstream_error(exc, None)
            return
        if self.closed is not None:
            return
        self.last_activity = time.monotonic()
        self.dgrams_out += 1
        self.bytes_out += n
        if self.kept is not None:  # the server answered: nothing to re-send any more
            self.kept = None
            self.tried.clear()
        owner.order.move_to_end(self)
        self.endpoint.reply(owner.view[:n], self)

    def _upstream_error(self, exc: OSError, data: bytes | memoryview | None) -> None:
        server = self.server
        if server is None or exc.errno not in _UNREACHABLE:
            self.ctx.stats.udp_errors += 1
            return
        now = time.monotonic()
        # Not answered yet: all it kept. Answered before: only the datagram in hand, if any.
        resend = self.kept if self.kept is not None else [bytes(data)] if data is not None else []
        self.ctx.stats.udp_refused += 1
        msg = "udp server refused (ICMP port unreachable)" if exc.errno == errno.ECONNREFUSED else ""
        self._server_failed(server, now, msg or "udp server unreachable", exc, resend=len(resend))
        self._failover(resend, now)

    def _server_failed(self, server: Server, now: float, msg: str, exc: OSError, **fields: Any) -> None:
        """Passive health: hold ``server`` out, let it go, and do not try it again for this flow."""
        server.mark_failed(now, SUSPECT_HOLD)
        self.tried.append(server)
        log.warning(msg, server=server.name, client=_hp(self.client), error=exc.strerror or str(exc), **fields)
        self._let_go()

    def _failover(self, resend: list[bytes], now: float) -> None:
        """Re-send what the failed server never answered to another one (within retries)."""
        if not resend:
            return  # the next datagram picks a server
        if not self._pick(now):
            self.ctx.stats.udp_dropped += len(resend)
            return
        kept = self.kept = list(resend)
        for data in resend:
            if self.kept is not kept or self.sock is None:
                return  # resolving (it sends ``kept``), or refused at once and re-sent from there
            self._transmit(data)

    # -- ending ------------------------------------------------------------------------------------
    def _let_go(self) -> None:
        """Leave the current server: stop resolving, close the socket, release the count."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        sock = self.sock
        if sock is not None:
            self.sock = None
            self.owner.poller.discard(self.fd)
            sock.close()
        server = self.server
        if server is not None:
            self.server = None
            server.release()

    def close(self, reason: str, *, abort: bool = False) -> None:
        if self.closed is not None:
            return
        self.closed = reason
        self._let_go()
        self.kept = None
        self.endpoint.forget(self)
        ctx = self.ctx
        ctx.closed(self, reason, self.bytes_in, self.bytes_out)
        if log.access is None:
            return
        log.access_line(
            {
                "listener": ctx.listener.name,
                "client": _hp(self.client),
                "backend": self.backend or ctx.listener.backend,
                "server": self.server_name,
                "datagrams_in": self.dgrams_in,
                "datagrams_out": self.dgrams_out,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "moves": max(self.opened - 1, 0),
                "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
                "end": reason,
            }
        )


class _Endpoint(asyncio.DatagramProtocol):
    """One listening socket (a dup of the runtime's): finds the client's flow, or starts one.

    A specific address is read by uvloop's datagram transport: its C loop reads every waiting
    datagram without an exception at the end, and its ``sendto`` skips the GIL dance of a
    Python socket call (benchmarks/udp_dns.py: ~4 us a pair less than reading it from the
    epoll set). A wildcard address needs recvmsg/sendmsg with IP_PKTINFO, which no transport
    exposes: it is read from the listener's epoll set instead.
    """

    __slots__ = ("fd", "flows", "local", "owner", "sock", "transport", "wildcard")

    def __init__(self, owner: UdpListener, sock: socket.socket) -> None:
        self.owner = owner
        self.sock = sock
        self.fd = sock.fileno()
        local = sock.getsockname()
        self.local: tuple[str, int] = (local[0], local[1])
        self.wildcard = udp_pktinfo.is_wildcard(local[0])
        self.flows: dict[object, UdpFlow] = {}
        self.transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        self.sock.setblocking(False)
        if self.wildcard:
            udp_pktinfo.enable(self.sock)
            self.owner.poller.add(self.fd, self._readable_wildcard)
        else:
            await self.owner.ctx.loop.create_datagram_endpoint(lambda: self, sock=self.sock)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        owner = self.owner
        stats = owner.ctx.stats
        stats.datagrams_in += 1
        if len(data) > owner.ctx.listener.max_datagram_size:
            stats.dropped_oversize += 1
            return
        try:
            self._received(addr, addr, None, data)
        except Exception as exc:  # a bug must not reach the transport: drop, count, say
            owner.unexpected(exc)

    def error_received(self, exc: Exception) -> None:
        # e.g. ICMP unreachable for a reply to a client that went away: never fatal.
        self.owner.ctx.stats.udp_errors += 1

    def _readable_wildcard(self) -> None:
        """Datagrams and their destination address (IP_PKTINFO), from the listener's epoll set.

        Up to ``READ_BATCH`` per call, until EAGAIN: the listening socket is the busy one, and
        an exception per burst costs less than a ``poll`` round per datagram."""
        owner = self.owner
        stats = owner.ctx.stats
        limit = owner.ctx.listener.max_datagram_size
        recv, into, anc_size, flows = self.sock.recvmsg_into, (owner.view[: limit + 1],), owner.anc_size, self.flows
        for _ in range(READ_BATCH):
            try:
                n, anc, flags, addr = recv(into, anc_size)
            except BlockingIOError:
                return
            except OSError:
                stats.udp_errors += 1
                return
            stats.datagrams_in += 1
            if n > limit or flags & socket.MSG_TRUNC:
                stats.dropped_oversize += 1
                continue
            # Only pktinfo is enabled on this socket: the first item is it (checked on a new flow).
            flow = flows.get((addr, anc[0][2]) if anc else addr)
            if flow is not None:
                owner.order.move_to_end(flow)
                flow.send(owner.view[:n], time.monotonic())
                continue
            info = udp_pktinfo.destination(anc)
            self._received((addr, info) if info is not None else addr, addr, info, owner.view[:n])

    def _received(self, key: object, addr: Addr, info: bytes | None, data: bytes | memoryview) -> None:
        owner = self.owner
        now = time.monotonic()
        flow = self.flows.get(key)
        if flow is None:
            if owner.stopped:
                owner.ctx.stats.udp_dropped += 1
                return
            flow = owner.new_flow(self, key, addr, info, now)
        else:
            owner.order.move_to_end(flow)
        flow.send(data, now)

    def reply(self, data: memoryview, flow: UdpFlow) -> None:
        stats = self.owner.ctx.stats
        transport = self.transport
        try:
            if transport is not None:
                # A copy: a transport may queue what it cannot send at once, and ``data`` is a
                # view of the listener's buffer, which the next datagram overwrites.
                transport.sendto(bytes(data), flow.addr)
            elif flow.cmsg is None:
                self.sock.sendto(data, flow.addr)
            else:
                self.sock.sendmsg((data,), flow.cmsg, 0, flow.addr)
        except BlockingIOError:
            stats.udp_dropped += 1
            return
        except OSError:
            stats.udp_errors += 1  # e.g. the local address the client used has gone away
            return
        stats.datagrams_out += 1

    def forget(self, flow: UdpFlow) -> None:
        self.flows.pop(flow.key, None)
        self.owner.order.pop(flow, None)
        self.owner.maybe_finish()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # closes the dup it was given
        else:
            self.owner.poller.remove(self.fd)
            self.sock.close()


class UdpListener:
    """The datagram side of a ``mode: udp`` listener (same shape as ``TcpListener``)."""

    def __init__(self, ctx: ListenerContext, sockets: list[socket.socket]) -> None:
        self.ctx = ctx
        self.sockets = sockets
        self.endpoints: list[_Endpoint] = []
        self.order: OrderedDict[UdpFlow, None] = OrderedDict()  # least recently active first
        self.stopped = False
        self.finished = False
        self.buf = bytearray(BUF_SIZE)
        self.view = memoryview(self.buf)
        self.anc_size = max(udp_pktinfo.ancillary_size(f) for f in (socket.AF_INET, socket.AF_INET6))
        self.tasks: set[asyncio.Task[None]] = set()
        self.poller: _Poller
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._unexpected_logged = False

    async def start(self) -> None:
        self.poller = _Poller(self.ctx.loop, self.unexpected)
        for sock in self.sockets:
            # On a dup: closing it closes only the duplicate; the runtime owns the original.
            endpoint = _Endpoint(self, sock.dup())
            await endpoint.start()
            self.endpoints.append(endpoint)
        self._schedule_sweep()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.ctx.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def unexpected(self, exc: Exception) -> None:
        self.ctx.stats.udp_errors += 1
        if not self._unexpected_logged:  # once: a bug hit by every datagram must not flood the log
            self._unexpected_logged = True
            log.error("udp: unexpected error, datagram dropped", listener=self.ctx.listener.name, error=repr(exc))

    def new_flow(self, endpoint: _Endpoint, key: object, addr: Addr, info: bytes | None, now: float) -> UdpFlow:
        ctx = self.ctx
        if len(self.order) >= ctx.listener.max_connections:
            oldest = next(iter(self.order))
            ctx.stats.evictions += 1
            log.info("udp flow cap reached: evicting the least recently active flow", client=_hp(oldest.client))
            oldest.close("evicted")
        flow = UdpFlow(endpoint, key, addr, info, now)
        endpoint.flows[key] = flow
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
        if not self.finished:
            self._schedule_sweep()

    async def stop(self) -> None:
        """Take no new flows; open ones get their replies and end once quiet (or at drain)."""
        self.stopped = True
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._schedule_sweep()
        self.maybe_finish()

    def maybe_finish(self) -> None:
        """Stopped and no flow left: close the sockets, cancel the sweep and any task."""
        if not self.stopped or self.order or self.finished:
            return
        self.finished = True
        for ep in self.endpoints:
            ep.close()
        self.poller.close()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for task in list(self.tasks):
            task.cancel()
