"""The running proxy of one process: sockets, pools, listeners; reload and drain.

Signal handlers only record what was asked (uvicorn's ``handle_exit`` model); the ``run`` loop
acts on it. A reload never kills the process: an invalid file or a failed bind leaves the old
config serving and is logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from typing import Protocol

from edgeproxy.config import Config, ConfigError, Listener, load_config
from edgeproxy.log import log
from edgeproxy.net.context import ListenerContext
from edgeproxy.net.http_relay import HttpConnection, HttpListener
from edgeproxy.net.listener import TcpListener
from edgeproxy.net.tcp_relay import TcpConnection
from edgeproxy.runtime.pools import BackendPool
from edgeproxy.runtime.sockets import SocketKey, SocketSet, socket_key


class Serving(Protocol):
    """A listener's accept side (TCP) or datagram side (UDP)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Component(Protocol):
    """Something that runs beside the listeners: health checks, discovery, the admin endpoint."""

    async def start(self) -> None: ...

    async def reload(self, config: Config) -> None: ...

    async def stop(self) -> None: ...


def make_serving(ctx: ListenerContext, sockets: list[socket.socket]) -> Serving:
    """The accept side for a listener's mode."""
    mode = ctx.listener.mode
    if mode == "tcp":
        return TcpListener(ctx, sockets, lambda: TcpConnection(ctx))
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
    def __init__(self, config: Config) -> None:
        self.config = config
        self.sockets = SocketSet()
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
        for listener in cfg.listeners:
            await self._add_listener(listener)
        for comp in self._make_components():
            self.components.append(comp)
            await comp.start()
        log.info(
            "edgeproxy started",
            config=cfg.path,
            pid=os.getpid(),
            listeners=[f"{lst.name} {lst.mode} {' '.join(map(str, lst.bind))}" for lst in cfg.listeners],
        )

    def _make_components(self) -> list[Component]:
        """Health checks, discovery and admin, where the modules exist and are configured."""
        comps: list[Component] = []
        return comps

    def _socket_keys(self, cfg: Config) -> list[SocketKey]:
        return [socket_key(lst, a) for lst in cfg.listeners for a in lst.bind]

    async def _add_listener(self, listener: Listener) -> None:
        ctx = ListenerContext(self.loop, listener, self.config.timeouts, self.pools)
        socks = [self.sockets.get(socket_key(listener, a)) for a in listener.bind]
        serving = make_serving(ctx, socks)
        self.contexts[listener.name] = ctx
        self.servings[listener.name] = serving
        await serving.start()

    # -- reload ------------------------------------------------------------------------------------
    async def reload(self) -> bool:
        """Re-read the config file; keep the old config on any error."""
        path = self.config.path
        try:
            new = load_config(path)
        except ConfigError as e:
            self._reload_failed([str(i) for i in e.issues])
            return False
        try:
            added = self.sockets.ensure(self._socket_keys(new))
        except OSError as e:
            self._reload_failed([str(e.strerror or e)])
            return False
        old = self.config
        self.config = new
        log.configure(new.log.level, new.log.access, new.log.format)
        # Pools first, so listeners see the new backends the moment they are updated.
        pools: dict[str, BackendPool] = {}
        for name, be in new.backends.items():
            pool = self.pools.get(name)
            if pool is None:
                pool = BackendPool(be)
            elif pool.config != be:
                pool.reconfigure(be)
            pools[name] = pool
        for name, pool in self.pools.items():
            if name not in pools:
                pool.set_source("static", [])
                pool.set_source("swarm", [])
        self.pools = pools
        old_listeners = {lst.name: lst for lst in old.listeners}
        new_names = {lst.name for lst in new.listeners}
        for name in list(self.contexts):
            if name not in new_names:
                await self._retire(name)
        for listener in new.listeners:
            prev = old_listeners.get(listener.name)
            if prev is not None and prev.mode == listener.mode and prev.bind == listener.bind:
                self.contexts[listener.name].update(listener, new.timeouts, pools)
            else:
                if prev is not None:
                    await self._retire(listener.name)
                await self._add_listener(listener)
        self.sockets.retain(set(self._socket_keys(new)))
        for comp in self.components:
            await comp.reload(new)
        self.reloads.success += 1
        self.reloads.last_time = time.time()
        self.reloads.last_result = "success"
        log.info(
            "configuration reloaded",
            config=path,
            digest=new.digest[:12],
            new_sockets=len(added),
            listeners=len(new.listeners),
            backends=len(new.backends),
        )
        return True

    def _reload_failed(self, errors: list[str]) -> None:
        self.reloads.failure += 1
        self.reloads.last_time = time.time()
        self.reloads.last_result = "failure"
        log.error("reload failed: keeping the running configuration", config=self.config.path, errors=errors)

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

    # -- stop --------------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop accepting, let open connections finish up to timeouts.drain, then end them."""
        self.draining = True
        for serving in self.servings.values():
            await serving.stop()
        # Close the listening sockets too: new clients are refused at once (and can go to
        # another edge node) instead of waiting in a backlog nobody will accept from.
        self.sockets.close()
        log.info(
            "draining: no new connections", open=self.open_connections(), drain_timeout_s=self.config.timeouts.drain
        )
        # Components (admin's /healthz answers 503 now, health checks) stop after the listeners.
        deadline = self.loop.time() + self.config.timeouts.drain
        while self.open_connections() and self.loop.time() < deadline and self._interrupts < 2:
            await asyncio.sleep(0.05)
        left = self.open_connections()
        for ctx in [*self.contexts.values(), *self.retired]:
            ctx.close_all("drain", abort=True)
        for comp in self.components:
            with contextlib.suppress(Exception):
                await comp.stop()
        log.info("stopped", cut_at_drain_timeout=left)
        log.flush()

    def open_connections(self) -> int:
        return sum(len(c.connections) for c in [*self.contexts.values(), *self.retired])

    # -- signals and the main loop -----------------------------------------------------------------
    def install_signals(self) -> None:
        loop = self.loop
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        loop.add_signal_handler(signal.SIGHUP, self._hup.set)

    def request_stop(self) -> None:
        self._stop.set()

    def _on_sigint(self) -> None:
        self._interrupts += 1
        if self._interrupts >= 2:
            log.warning("second interrupt: exiting at once")
            log.flush()
            os._exit(1)
        self._stop.set()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT; SIGHUP reloads."""
        await self.start()
        self.install_signals()
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
