"""The data plane of one process (the single process, or a worker): its listeners, their contexts
and counters, and the end of connections that outlive a reload or a server.

It reads backend pools from the registry (one mapping for the life of the process) and follows
the registry's label routes; it never runs health checks or discovery, and nothing here knows
whether it runs beside the control plane or in a worker.

Reload (runtime/reload.py): ``prepare`` builds the contexts of new and re-created listeners and
starts serving them on their sockets (bound by the sockets step), so that a failure to serve fails
the reload before anything changes; ``commit`` updates the listeners that stay, and retires those
removed or re-created (they stop accepting; their open connections finish, bounded by drain).

TLS: the certificates come read and checked from the control plane (tls/files.py ``CertificateSet``,
as PEM: a worker may not be allowed to open the key files); ``prepare`` builds the SSL contexts
(tls/contexts.py, reusing unchanged ones, so their session caches and ticket keys survive) and the
commit hands them to the listener contexts: new handshakes use them, open connections keep theirs.
``use_certificates`` does the same between reloads (ACME, issue 14).

ACME (issue 14): where the config has ``acme:``, every plain http listener answers HTTP-01 from the
challenge board before redirecting or routing, and every TLS listener asks it for a TLS-ALPN-01
validation before choosing its own certificate (acme/answers.py). The board is the control
plane's, handed over whole (``use_challenges``): the data plane never sees the account key.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Coroutine, Mapping
from functools import partial
from typing import Any, Protocol

from edgeproxy.acme.answers import ChallengeContexts, http01_response
from edgeproxy.acme.board import ChallengeBoard
from edgeproxy.admin.metrics import data_plane_families
from edgeproxy.config import Config, Listener
from edgeproxy.log import log
from edgeproxy.metrics import Family
from edgeproxy.net.context import ListenerContext
from edgeproxy.net.http_relay import HttpListener
from edgeproxy.net.http_upstream import UpstreamConn
from edgeproxy.net.listener import TcpListener
from edgeproxy.net.tcp_relay import TcpConnection
from edgeproxy.net.upstream_pool import IdlePool
from edgeproxy.pools import Change, PoolRegistry
from edgeproxy.runtime.sockets import SocketSet, socket_key
from edgeproxy.staged import Staged
from edgeproxy.stats import ListenerStats
from edgeproxy.tls.contexts import ChallengeHook, ContextKey, build_contexts
from edgeproxy.tls.files import NO_CERTIFICATES, CertificateSet

SWEEP_INTERVAL = 1.0


class Serving(Protocol):
    """A listener's accept side (TCP) or datagram side (UDP)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def make_serving(ctx: ListenerContext, sockets: list[socket.socket], idle: IdlePool[UpstreamConn]) -> Serving:
    """The accept side for a listener's mode; ``idle``: the process's idle upstream connections."""
    mode = ctx.listener.mode
    if mode == "tcp":
        return TcpListener(ctx, sockets, lambda: TcpConnection(ctx))
    if mode == "udp":
        from edgeproxy.net.udp import UdpListener  # only where a udp listener is configured

        return UdpListener(ctx, sockets)
    if mode == "http":
        return HttpListener(ctx, sockets, idle)
    raise OSError(0, f"listener {ctx.listener.name}: mode {mode} is not available in this build")


class DataPlane:
    def __init__(self, registry: PoolRegistry, sockets: SocketSet, idle: IdlePool[UpstreamConn]) -> None:
        self.registry = registry
        self.sockets = sockets
        self.idle = idle  # the process's idle upstream connections (http); closed after the drain
        self.config: Config | None = None
        self.certs = NO_CERTIFICATES  # what the TLS listeners serve
        self.ssl_contexts: dict[ContextKey, ssl.SSLContext] = {}  # in use, reused while unchanged
        # ACME TLS-ALPN-01 (issue 14): the context answering a validation's ClientHello, asked
        # before SNI on every TLS listener (tls/contexts.py); kept across reloads. Set it, then
        # ``use_certificates(self.certs)`` to apply it to the listeners already running.
        self.challenges = ChallengeBoard()  # ACME answers, the control plane's (use_challenges)
        self._alpn_answers: ChallengeHook = ChallengeContexts(self.challenges).for_hello
        self.contexts: dict[str, ListenerContext] = {}
        self.servings: dict[str, Serving] = {}
        self.retired: list[ListenerContext] = []  # removed by a reload, connections still open
        self.draining = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._unsubscribe = registry.subscribe(self._registry_changed)

    @property
    def drain_timeout(self) -> float:
        return self.config.timeouts.drain if self.config is not None else 0.0

    # -- reload ------------------------------------------------------------------------------------
    async def prepare(self, new: Config, certs: CertificateSet = NO_CERTIFICATES) -> Staged:
        loop = asyncio.get_running_loop()
        # (ssl.SSLError if OpenSSL refuses what the checks passed: the step fails, nothing changed)
        tls, made = build_contexts(new, certs, self.ssl_contexts, self._tls_alpn01(new))
        old = {lst.name: lst for lst in self.config.listeners} if self.config is not None else {}
        kept: list[Listener] = []
        started: dict[str, tuple[ListenerContext, Serving]] = {}
        try:
            for listener in new.listeners:
                prev = old.get(listener.name)
                if (
                    prev is not None
                    and prev.mode == listener.mode
                    and prev.bind == listener.bind
                    and listener.name in self.contexts
                ):
                    kept.append(listener)
                    continue
                routes = self.registry.routes.get(listener.name, ())
                ctx = ListenerContext(loop, listener, new.timeouts, self.registry.pools, routes, tls.get(listener.name))
                self._answer_http01(new, ctx)
                stats = self._stats_of(listener.name)
                if stats is not None:
                    ctx.stats = stats  # a listener re-created under its name keeps counting (no counter reset)
                socks = [self.sockets.get(socket_key(listener, a)) for a in listener.bind]
                serving = make_serving(ctx, socks, self.idle)
                started[listener.name] = (ctx, serving)
                await serving.start()
        except BaseException:
            for ctx, serving in started.values():
                await serving.stop()
                self._retire_context(ctx, new.timeouts.drain)
            raise

        def commit() -> None:
            self.config = new
            self.certs, self.ssl_contexts = certs, made
            names = {lst.name for lst in new.listeners}
            for name in [n for n in self.contexts if n not in names or n in started]:
                self._retire(name, new.timeouts.drain)
            for listener in kept:
                self.contexts[listener.name].update(listener, new.timeouts, tls.get(listener.name))
                self._answer_http01(new, self.contexts[listener.name])
            for name, (ctx, serving) in started.items():
                self.contexts[name] = ctx
                self.servings[name] = serving
            self._publish_routes()
            if self._sweeper is None:
                self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep_drained)

        def abort() -> None:
            for ctx, serving in started.values():
                self._stop_serving(ctx, serving, new.timeouts.drain)

        return Staged(commit, abort)

    def use_certificates(self, certs: CertificateSet) -> None:
        """Serve ``certs`` from the next handshake on, with the running configuration (ACME puts a
        new or renewed certificate in between reloads). Raises ``ssl.SSLError`` if OpenSSL refuses
        one, changing nothing."""
        if self.config is None:
            return
        tls, made = build_contexts(self.config, certs, self.ssl_contexts, self._tls_alpn01(self.config))
        self.certs, self.ssl_contexts = certs, made
        for name, ctx in self.contexts.items():
            ctx.update(ctx.listener, ctx.timeouts, tls.get(name))

    def use_challenges(self, board: Mapping[str, Any]) -> None:
        """The ACME challenges to answer from now on (``ChallengeBoard.to_wire``); ``ValueError``
        for a malformed one, nothing changed."""
        self.challenges.apply_wire(board)

    def _tls_alpn01(self, config: Config) -> ChallengeHook | None:
        """What a TLS listener asks first about each ClientHello (with ``acme:`` only: otherwise
        a handshake does not pay for the question)."""
        return self._alpn_answers if config.acme is not None else None

    def _answer_http01(self, config: Config, ctx: ListenerContext) -> None:
        plain_http = ctx.listener.mode == "http" and ctx.listener.tls is None
        ctx.http01 = partial(http01_response, self.challenges) if config.acme is not None and plain_http else None

    def _stats_of(self, name: str) -> ListenerStats | None:
        ctx = self.contexts.get(name) or next((c for c in self.retired if c.listener.name == name), None)
        return ctx.stats if ctx is not None else None

    def _retire(self, name: str, drain: float) -> None:
        """Stop accepting on a listener; its open connections finish (bounded by drain)."""
        self._stop_serving(self.contexts.pop(name), self.servings.pop(name), drain)

    def _stop_serving(self, ctx: ListenerContext, serving: Serving, drain: float) -> None:
        self.retired.append(ctx)
        ctx.loop.call_later(drain, self._end_retired, ctx)

        async def stop() -> None:
            await serving.stop()
            if not ctx.connections:
                self._forget_retired(ctx)

        self._follow(stop())

    def _retire_context(self, ctx: ListenerContext, drain: float) -> None:
        if ctx.connections:
            self.retired.append(ctx)
            ctx.loop.call_later(drain, self._end_retired, ctx)

    def _end_retired(self, ctx: ListenerContext) -> None:
        ctx.close_all("drain", abort=True)
        self._forget_retired(ctx)

    def _forget_retired(self, ctx: ListenerContext) -> None:
        with contextlib.suppress(ValueError):
            self.retired.remove(ctx)

    def _follow(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run work that follows a commit (commits do not wait); kept until done, awaited at stop."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def settled(self) -> None:
        """Wait for the work commits and aborts set going (listeners stopping)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("data plane: stopping a listener failed", error=repr(task.exception()))

    # -- the registry ------------------------------------------------------------------------------
    def _registry_changed(self, change: Change) -> None:
        if change.routes:
            self._publish_routes()

    def _publish_routes(self) -> None:
        """Every listener's ``extra_routes`` from the registry's label routes."""
        routes = self.registry.routes
        for name, ctx in self.contexts.items():
            ctx.extra_routes = routes.get(name, ())

    def _sweep_drained(self) -> None:
        """End connections to servers that left their pool more than timeouts.drain ago.

        A connection names its server in a ``server`` attribute (TcpConnection does); one
        without it is left to finish on its own.
        """
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep_drained)
        late = self.registry.late_servers(time.monotonic() - self.drain_timeout)
        if not late:
            return
        for ctx in [*self.contexts.values(), *self.retired]:
            for conn in list(ctx.connections):
                if getattr(conn, "server", None) in late:
                    conn.close("drain", abort=True)

    # -- numbers -------------------------------------------------------------------------------------
    def listener_stats(self) -> Mapping[str, tuple[ListenerStats, int]]:
        """Counters and open connections by listener name (retired contexts included)."""
        out: dict[str, tuple[ListenerStats, int]] = {}
        for ctx in [*self.contexts.values(), *self.retired]:
            name = ctx.listener.name
            stats, active = out.get(name, (ctx.stats, 0))
            out[name] = (stats, active + len(ctx.connections))
        return out

    def families(self) -> list[Family]:
        return data_plane_families(self.listener_stats(), self.registry.pools.values())

    def open_connections(self) -> int:
        return sum(len(c.connections) for c in [*self.contexts.values(), *self.retired])

    # -- stop --------------------------------------------------------------------------------------
    async def stop_accepting(self) -> None:
        """Stop every listener and close the listening sockets: new clients are refused at once
        (and can go to another edge node) instead of waiting in a backlog nobody accepts from."""
        self.draining = True
        for serving in self.servings.values():
            await serving.stop()
        self.sockets.close()

    async def drain(self) -> int:
        """Wait for open connections (bounded by timeouts.drain), end the rest; how many were cut."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        while self.open_connections() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        left = self.open_connections()
        for ctx in [*self.contexts.values(), *self.retired]:
            ctx.close_all("drain", abort=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await self.settled()
        self.idle.close_all()
        self._unsubscribe()
        return left
