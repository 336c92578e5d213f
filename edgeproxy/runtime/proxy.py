"""The running proxy of one process: sockets, pools, listeners; reload and drain.

Signal handlers only record what was asked (uvicorn's ``handle_exit`` model); the ``run`` loop
acts on it. A reload never kills the process: an invalid file, a failed bind or an unexpected
error while applying leaves the process serving, and is logged and counted.

Roles (see runtime/supervisor.py for the multi-process design):
- ``single`` (``workers: 1``): one process does everything: listeners, health checks, discovery,
  the admin endpoint.
- ``worker``: the data plane only: listeners on sockets received from the supervisor; no
  components; reloads are pushed by the supervisor, so SIGHUP is ignored.
- the supervisor subclasses ``Proxy`` and replaces the listeners by worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Mapping
from typing import Any, Literal, Protocol

from edgeproxy.admin.metrics import Family, collect_data_plane
from edgeproxy.config import Config, ConfigError, Listener, Route, parse_config
from edgeproxy.config.loader import ConfigIssue
from edgeproxy.log import log
from edgeproxy.net.context import ListenerContext
from edgeproxy.net.http_relay import HttpConnection, HttpListener
from edgeproxy.net.listener import TcpListener
from edgeproxy.net.tcp_relay import TcpConnection
from edgeproxy.net.udp import UdpListener
from edgeproxy.runtime import labelsync
from edgeproxy.runtime.pools import BackendPool
from edgeproxy.runtime.sockets import SocketKey, SocketSet, socket_key
from edgeproxy.stats import ListenerStats

Role = Literal["single", "worker", "supervisor"]


class Serving(Protocol):
    """A listener's accept side (TCP) or datagram side (UDP)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Component(Protocol):
    """Something that runs beside the listeners: health checks, discovery, the admin endpoint.

    Components run once per edgeproxy (in the single process or in the supervisor, never in each
    worker); what they change in ``proxy.pools`` reaches the workers by runtime/poolsync.py.
    A component may also have ``collect() -> Iterable[Family]`` for /metrics (admin/metrics.py).
    """

    async def start(self) -> None: ...

    async def reload(self, config: Config) -> None: ...

    async def stop(self) -> None: ...


def make_serving(ctx: ListenerContext, sockets: list[socket.socket]) -> Serving:
    """The accept side for a listener's mode."""
    mode = ctx.listener.mode
    if mode == "tcp":
        return TcpListener(ctx, sockets, lambda: TcpConnection(ctx))
    if mode == "udp":
        return UdpListener(ctx, sockets)
    if mode == "http":
        return HttpListener(ctx, sockets, lambda: HttpConnection(ctx))
    raise OSError(0, f"listener {ctx.listener.name}: mode {mode} is not available in this build")


class ReloadStats:
    __slots__ = ("failure", "last_result", "last_time", "success")

    def __init__(self) -> None:
        self.success = 0
        self.failure = 0
        self.last_time = time.time()
        self.last_result = "initial"


class Proxy:
    started_msg = "edgeproxy started"

    def __init__(self, config: Config, *, role: Role = "single", sockets: SocketSet | None = None) -> None:
        self.config = config
        self.role = role
        self.sockets = sockets if sockets is not None else SocketSet()
        self.pools: dict[str, BackendPool] = {}
        self.contexts: dict[str, ListenerContext] = {}
        self.servings: dict[str, Serving] = {}
        self.retired: list[ListenerContext] = []  # removed by a reload, connections still open
        self.components: list[Component] = []
        self.reloads = ReloadStats()
        self.draining = False
        self.started = time.time()
        self._stop = asyncio.Event()
        self._hup = asyncio.Event()
        self._interrupts = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self.gone_pools: list[BackendPool] = []  # removed by a reload, servers still draining
        # Pools added at run time (swarm label backends): a reload keeps them; their owner
        # removes them.
        self.dynamic_pools: set[str] = set()
        # Their HTTP routes by listener name (set by discovery, or the supervisor in a worker).
        self.label_routes: dict[str, tuple[Route, ...]] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    # -- start -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind every socket first, so a bad address fails before anything serves."""
        cfg = self.config
        log.configure(cfg.log.level, cfg.log.access, cfg.log.format)
        self.sockets.ensure(self._socket_keys(cfg))
        self.pools = {name: BackendPool(be) for name, be in cfg.backends.items()}
        await self._start_serving()
        if self.role != "worker":
            for comp in self._make_components():
                self.components.append(comp)
                await comp.start()
            self._control_plane_started()
        self._sweeper = self.loop.call_later(1.0, self._sweep_drained)
        log.info(
            self.started_msg,
            config=cfg.path,
            pid=os.getpid(),
            listeners=[f"{lst.name} {lst.mode} {' '.join(map(str, lst.bind))}" for lst in cfg.listeners],
            **self._start_fields(),
        )

    def _start_fields(self) -> dict[str, Any]:
        return {}

    def _control_plane_started(self) -> None:
        """Components have started (discovery has had its first look); the supervisor pushes pools."""

    def _make_components(self) -> list[Component]:
        """Health checks, discovery and admin (control plane: once per edgeproxy)."""
        from edgeproxy.admin.server import AdminServer
        from edgeproxy.health.checker import HealthChecker

        comps: list[Component] = [HealthChecker(self), AdminServer(self)]
        if self.config.swarm is not None:
            from edgeproxy.discovery.swarm import SwarmDiscovery

            comps.append(SwarmDiscovery(self))
        return comps

    async def _start_serving(self) -> None:
        for listener in self.config.listeners:
            await self._add_listener(listener)

    def _socket_keys(self, cfg: Config) -> list[SocketKey]:
        return [socket_key(lst, a) for lst in cfg.listeners for a in lst.bind]

    async def _add_listener(self, listener: Listener, stats: ListenerStats | None = None) -> None:
        ctx = ListenerContext(self.loop, listener, self.config.timeouts, self.pools)
        if stats is not None:
            ctx.stats = stats  # a listener re-created under its name keeps counting (no counter reset)
        socks = [self.sockets.get(socket_key(listener, a)) for a in listener.bind]
        serving = make_serving(ctx, socks)
        self.contexts[listener.name] = ctx
        self.servings[listener.name] = serving
        await serving.start()

    # -- reload ------------------------------------------------------------------------------------
    async def reload(self) -> bool:
        """Re-read and validate the whole config file; keep the old config on any error."""
        path = self.config.path
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
            new = parse_config(raw, path)
        except OSError as e:
            self._reload_failed([str(ConfigIssue(path, 0, "", f"cannot read: {e.strerror}"))])
            return False
        except ConfigError as e:
            self._reload_failed([str(i) for i in e.issues])
            return False
        except Exception as e:  # whatever goes wrong reading the file, the old config keeps serving
            self._reload_failed([str(ConfigIssue(path, 1, "", f"cannot load: {e!r}"[:500]))])
            return False
        return await self.apply(new, raw)

    async def apply(self, new: Config, raw: bytes) -> bool:
        """Swap in a validated config: bind first, then pools, listeners, components."""
        try:
            added = self.sockets.ensure(self._socket_keys(new))
        except OSError as e:
            self._reload_failed([str(e.strerror or e)])
            return False
        old = self.config
        try:
            log.configure(new.log.level, new.log.access, new.log.format)
        except OSError as e:
            log.configure(old.log.level, old.log.access, old.log.format)
            for key in added:
                self.sockets.sockets.pop(key).close()
            self._reload_failed([f"log.access: cannot open {new.log.access}: {e.strerror or e}"])
            return False
        self.config = new
        try:
            self._apply_pools(new)
            await self._apply_serving(old, new, raw)
            labelsync.publish_routes(self)  # on listeners this reload re-created too
            self.sockets.retain(set(self._socket_keys(new)))
            for comp in self.components:
                await comp.reload(new)
        except Exception as e:  # a bug must not end the process: log it, keep serving
            log.error("reload failed while applying; the new configuration is partly applied", error=repr(e))
            self._count_reload("failure")
            return False
        self._count_reload("success")
        log.event(
            "debug" if self.role == "worker" else "info",  # the supervisor logs it once for all
            "configuration reloaded",
            config=new.path,
            digest=new.digest[:12],
            new_sockets=len(added),
            listeners=len(new.listeners),
            backends=len(new.backends),
        )
        return True

    def _apply_pools(self, new: Config) -> None:
        # Pools first, so listeners see the new backends the moment they are updated.
        pools: dict[str, BackendPool] = {}
        for name, be in new.backends.items():
            pool = self.pools.get(name)
            if pool is None:
                pool = BackendPool(be)
            elif pool.config != be:
                pool.reconfigure(be)
            pools[name] = pool
        for name in self.dynamic_pools:
            if name not in pools and name in self.pools:
                pools[name] = self.pools[name]
        for name, pool in self.pools.items():
            if name not in pools:
                pool.set_source("static", [])
                pool.set_source("swarm", [])
                if pool.draining:
                    self.gone_pools.append(pool)
        self.pools = pools

    async def _apply_serving(self, old: Config, new: Config, raw: bytes) -> None:
        old_listeners = {lst.name: lst for lst in old.listeners}
        new_names = {lst.name for lst in new.listeners}
        for name in list(self.contexts):
            if name not in new_names:
                await self._retire(name)
        for listener in new.listeners:
            prev = old_listeners.get(listener.name)
            if prev is not None and prev.mode == listener.mode and prev.bind == listener.bind:
                self.contexts[listener.name].update(listener, new.timeouts, self.pools)
            else:
                # Same name, same counters: a re-created listener (new bind or mode, or back
                # while its old self still drains) continues its series instead of resetting it.
                stats = next((c.stats for c in self.retired if c.listener.name == listener.name), None)
                if prev is not None and listener.name in self.contexts:
                    stats = self.contexts[listener.name].stats
                    await self._retire(listener.name)
                await self._add_listener(listener, stats)

    def _reload_failed(self, errors: list[str]) -> None:
        self._count_reload("failure")
        log.error("reload failed: keeping the running configuration", config=self.config.path, errors=errors)

    def _count_reload(self, result: str) -> None:
        if result == "success":
            self.reloads.success += 1
        else:
            self.reloads.failure += 1
        self.reloads.last_time = time.time()
        self.reloads.last_result = result

    async def _retire(self, name: str) -> None:
        """Stop accepting on a listener; its open connections finish (bounded by drain)."""
        serving = self.servings.pop(name)
        ctx = self.contexts.pop(name)
        await serving.stop()
        if ctx.connections:
            self.retired.append(ctx)
            self.loop.call_later(self.config.timeouts.drain, self._end_retired, ctx)

    def _end_retired(self, ctx: ListenerContext) -> None:
        ctx.close_all("drain", abort=True)
        with contextlib.suppress(ValueError):
            self.retired.remove(ctx)

    def _sweep_drained(self) -> None:
        """End connections to servers that left their pool more than timeouts.drain ago.

        A connection names its server in a ``server`` attribute (TcpConnection does); one
        without it is left to finish on its own.
        """
        self._sweeper = self.loop.call_later(1.0, self._sweep_drained)
        deadline = time.monotonic() - self.config.timeouts.drain
        pools = [*self.pools.values(), *self.gone_pools]
        late = set()
        for pool in pools:
            for s, since in list(pool.draining.items()):
                if not s.active:
                    del pool.draining[s]
                elif since <= deadline:
                    late.add(s)
        self.gone_pools = [p for p in self.gone_pools if p.draining]
        if not late:
            return
        for ctx in [*self.contexts.values(), *self.retired]:
            for conn in list(ctx.connections):
                if getattr(conn, "server", None) in late:
                    conn.close("drain", abort=True)

    # -- numbers for the admin endpoint --------------------------------------------------------
    def listener_stats(self) -> Mapping[str, tuple[ListenerStats, int]]:
        """Counters and open connections by listener name (retired contexts included)."""
        out: dict[str, tuple[ListenerStats, int]] = {}
        for ctx in [*self.contexts.values(), *self.retired]:
            name = ctx.listener.name
            stats, active = out.get(name, (ctx.stats, 0))
            out[name] = (stats, active + len(ctx.connections))
        return out

    async def data_plane_families(self) -> list[Family]:
        """Data-plane metric families (admin/metrics.py); the supervisor sums its workers'."""
        return collect_data_plane(self)

    def runtime_families(self) -> list[Family]:
        """Families about the process model itself (the supervisor's workers)."""
        return []

    def workers_status(self) -> list[dict[str, Any]]:
        return []

    # -- stop --------------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop accepting, let open connections finish up to timeouts.drain, then end them."""
        await self.stop_accepting()
        await self.finish()

    async def stop_accepting(self) -> None:
        self.draining = True
        for serving in self.servings.values():
            await serving.stop()
        # Close the listening sockets too: new clients are refused at once (and can go to
        # another edge node) instead of waiting in a backlog nobody will accept from.
        self.sockets.close()
        log.info(
            "draining: no new connections" if self.role != "worker" else "worker draining",
            open=self.open_connections(),
            drain_timeout_s=self.config.timeouts.drain,
        )

    async def finish(self) -> None:
        """Wait for open connections (bounded by timeouts.drain), end the rest, stop components."""
        # Components (admin's /healthz answers 503 now, health checks) stop after the listeners.
        left = await self._drain()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for comp in self.components:
            with contextlib.suppress(Exception):
                await comp.stop()
        log.info("stopped", cut_at_drain_timeout=left)
        log.flush()

    async def _drain(self) -> int:
        deadline = self.loop.time() + self.config.timeouts.drain
        while self.open_connections() and self.loop.time() < deadline and self._interrupts < 2:
            await asyncio.sleep(0.05)
        left = self.open_connections()
        for ctx in [*self.contexts.values(), *self.retired]:
            ctx.close_all("drain", abort=True)
        return left

    def abort_start(self) -> None:
        """Undo a start that failed half-way: release what was bound or spawned."""
        self.sockets.close()

    def open_connections(self) -> int:
        return sum(len(c.connections) for c in [*self.contexts.values(), *self.retired])

    # -- signals and the main loop -----------------------------------------------------------------
    def install_signals(self) -> None:
        loop = self.loop
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        if self.role == "worker":
            # The supervisor validates once and pushes reloads; a HUP sent to the whole group
            # (pkill -HUP) must not make each worker re-read the file on its own.
            loop.add_signal_handler(signal.SIGHUP, lambda: None)
        else:
            loop.add_signal_handler(signal.SIGHUP, self._hup.set)

    def request_stop(self) -> None:
        self._stop.set()

    def _on_sigint(self) -> None:
        self._interrupts += 1
        if self._interrupts >= 2:
            log.warning("second interrupt: exiting at once")
            log.flush()
            self._exit_now()
        self._stop.set()

    def _exit_now(self) -> None:
        os._exit(1)

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT; SIGHUP reloads."""
        # Signals first: a HUP or TERM that arrives while starting is acted on once started,
        # instead of killing the process with the default action.
        self.install_signals()
        try:
            await self.start()
        except BaseException:
            self.abort_start()
            raise
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                hup = asyncio.ensure_future(self._hup.wait())
                await asyncio.wait({stop, hup}, return_when=asyncio.FIRST_COMPLETED)
                if self._hup.is_set() and not self._stop.is_set():
                    self._hup.clear()
                    log.info("SIGHUP: reloading", config=self.config.path)
                    await self.reload()
                hup.cancel()
        finally:
            stop.cancel()
            await self.shutdown()
