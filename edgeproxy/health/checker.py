"""Active health checks: one task per server, each on a fixed beat of ``interval``.

A server goes DOWN after ``fall`` consecutive failed checks and comes back UP after ``rise``
consecutive good ones (HAProxy's semantics; a new server starts UP, as in HAProxy). Checks are
spread over the interval: the servers a reconcile finds are given evenly spaced first-check
offsets, so N servers are not probed in one burst. This runs once per edgeproxy (the single
process or the supervisor), so with several workers a server is still checked once per interval.

The checker follows the pool registry (pools/registry.py): each change it announces (servers
that discovery or a reload added or removed) re-reads the server set on the next loop turn, so a
new server gets a task at once and one that left loses its task. Verdicts go back through the
registry (``set_check_down``), which tells the workers. The ``Server`` objects are kept across
reloads by the pools, so a server that stays keeps its health state and counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from edgeproxy.balance import CheckResult, Server
from edgeproxy.config import Config
from edgeproxy.health.probes import probe
from edgeproxy.log import log
from edgeproxy.metrics import Family
from edgeproxy.pools import Change, PoolRegistry
from edgeproxy.staged import Staged

Key = tuple[str, Server]  # (backend name, the server object: kept by the pools across reloads)


class _Check:
    __slots__ = ("backend", "failed_total", "fails", "ok_total", "passes", "server", "task")

    def __init__(self, backend: str, server: Server) -> None:
        self.backend = backend
        self.server = server
        self.passes = 0  # consecutive
        self.fails = 0  # consecutive
        self.ok_total = 0  # for /metrics
        self.failed_total = 0
        self.task: asyncio.Task[None] | None = None


class HealthChecker:
    """A control-plane component (runtime/control.py): checks every server of the registry's pools."""

    def __init__(self, registry: PoolRegistry) -> None:
        self.registry = registry
        self.checks: dict[Key, _Check] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._soon: asyncio.Handle | None = None

    # -- Component ---------------------------------------------------------------------------------
    async def prepare(self, config: Config) -> Staged:
        # Nothing to prepare: a reload's pools reach the checker as a registry change.
        return Staged(None if self._unsubscribe is not None else self._start)

    def _start(self) -> None:
        self._unsubscribe = self.registry.subscribe(self._changed)
        self._reconcile()

    async def ready(self) -> None:
        return None

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._soon is not None:
            self._soon.cancel()
        tasks = [c.task for c in self.checks.values() if c.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.checks.clear()

    def status(self) -> dict[str, Any]:
        return {}

    # -- following the registry ----------------------------------------------------------------------
    def _changed(self, change: Change) -> None:
        # A burst of changes (a discovery refresh, a reload) is one reconcile, on the next loop turn.
        if change.pools and self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self._reconcile)

    def _reconcile(self) -> None:
        self._soon = None
        wanted: dict[Key, tuple[str, Server]] = {}
        for name, pool in self.registry.pools.items():
            if pool.config.health.type == "none":
                continue
            for s in pool.servers:
                wanted[(name, s)] = (name, s)
        for key in [k for k in self.checks if k not in wanted]:
            check = self.checks.pop(key)
            if check.task is not None:
                check.task.cancel()
            if check.server.check_down:  # nobody checks it any more: back to passive health only
                self.registry.set_check_down(check.backend, check.server, False)
        new = [(k, v) for k, v in wanted.items() if k not in self.checks]
        by_backend: dict[str, list[tuple[Key, Server]]] = {}
        for key, (name, s) in new:
            by_backend.setdefault(name, []).append((key, s))
        if not by_backend:
            return
        import random  # (here: a config without health checks does without its ~0.3 MiB, issue 15)

        loop = asyncio.get_running_loop()
        for name, items in by_backend.items():
            interval = self.registry.pools[name].config.health.interval
            phase = random.uniform(0, interval / max(len(items), 1))
            for i, (key, s) in enumerate(items):
                check = self.checks[key] = _Check(name, s)
                offset = phase + interval * i / len(items)
                check.task = loop.create_task(self._run(check, offset))

    async def _run(self, check: _Check, offset: float) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + offset
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            pool = self.registry.pools.get(check.backend)
            if pool is None:
                return
            cfg = pool.config
            started = loop.time()
            s = check.server
            ok, detail = await probe(s.host, s.port, cfg.health, cfg.send_proxy)
            self._record(check, ok, detail, loop.time() - started)
            # Fixed beat: the next check is due one interval after this one was due.
            next_at = max(next_at + cfg.health.interval, loop.time())

    def _record(self, check: _Check, ok: bool, detail: str, took: float) -> None:
        s = check.server
        s.last_check = CheckResult(ok=ok, detail=detail, time=time.time(), duration=took)
        pool = self.registry.pools.get(check.backend)
        if pool is None:
            return
        health = pool.config.health
        if ok:
            check.ok_total += 1
            check.passes += 1
            check.fails = 0
            if s.check_down and check.passes >= health.rise:
                self.registry.set_check_down(check.backend, s, False)
                log.info("server up", backend=check.backend, server=s.name, check=detail, rise=health.rise)
        else:
            check.failed_total += 1
            check.fails += 1
            check.passes = 0
            if not s.check_down and check.fails >= health.fall:
                self.registry.set_check_down(check.backend, s, True)
                log.warning("server down", backend=check.backend, server=s.name, check=detail, fall=health.fall)

    def collect(self) -> Iterable[Family]:
        checks = Family("edgeproxy_health_checks_total", "counter", "Active health checks, by result")
        for c in self.checks.values():
            labels = {"backend": c.backend, "server": c.server.name}
            checks.add(c.ok_total, **labels, result="success")
            checks.add(c.failed_total, **labels, result="failure")
        return [checks]
