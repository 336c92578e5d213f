"""Swarm discovery: the runtime component that keeps backend pools in step with the cluster.

- A full re-list (``/services``, ``/nodes``, ``/tasks``) every ``swarm.refresh``, because Swarm
  emits no task events (moby/moby#37403); faster (every second) while tasks of a watched service
  are on their way to running, for up to ``SETTLE_WINDOW`` after a change.
- ``GET /events`` (service and node events) on the current manager: any event triggers a re-list
  at once, so a label change, a scale or a drain is followed within a second or so.
- Managers are tried in turn (the last good one first, then the configured ones, then the other
  managers the cluster lists). When none answers, the pools keep the last known servers: running
  tasks keep serving without a leader, and a backend is never emptied because the API is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from edgeproxy.admin.metrics import Family
from edgeproxy.config import Config, Route
from edgeproxy.config.model import SwarmConfig
from edgeproxy.discovery.docker_api import DockerAPI, DockerError
from edgeproxy.discovery.swarm_model import (
    Discovery,
    Service,
    Snapshot,
    in_transit,
    label_enabled,
    manager_urls,
    parse_nodes,
    parse_services,
    parse_tasks,
    resolve,
    route_order,
)
from edgeproxy.log import log
from edgeproxy.runtime import labelsync
from edgeproxy.runtime.labelsync import LabelHost
from edgeproxy.runtime.pools import BackendPool

FAST_POLL = 0.5  # seconds between re-lists while tasks are in transit (a re-list is ~5 ms of API calls)
SETTLE_WINDOW = 30.0  # ... for at most this long after the last change (a task may stay pending forever)
DEBOUNCE = 0.1  # one change arrives as several events: re-list once for the burst
EVENT_FILTERS = {"type": ["service", "node"]}


async def fetch_snapshot(api: DockerAPI, select: Callable[[Service], bool]) -> Snapshot:
    """Services, nodes and the running-or-starting tasks of the selected services, from one manager.

    Tasks are asked for by service ID (only those that feed a backend: a big cluster's whole task
    list is not read every few seconds) and ``desired-state=running``.
    """
    services = parse_services(await api.get("/services"))
    nodes = parse_nodes(await api.get("/nodes"))
    ids = sorted(s.id for s in services if select(s))
    tasks: Any = []
    if ids:
        try:
            tasks = await api.get("/tasks", {"service": ids, "desired-state": ["running"]})
        except DockerError as e:
            if e.kind != "not_found":
                raise
            # A service was removed between the two calls (the engine answers 404): again without it.
            services = parse_services(await api.get("/services"))
            live = [i for i in ids if i in {s.id for s in services}]
            tasks = await api.get("/tasks", {"service": live, "desired-state": ["running"]}) if live else []
    return Snapshot(services, parse_tasks(tasks), nodes, api.url)


class SwarmDiscovery:
    """A runtime component (``start``/``reload``/``stop``).

    Counters as plain attributes: ``swarm_up`` (bool), ``refreshes_total``,
    ``refresh_errors_total``, ``events_total``, ``last_success`` (unix time, 0 before the first),
    ``last_refresh_seconds``, ``manager`` (URL of the manager that answered last), ``last_error``;
    ``collect()`` turns them into /metrics families, ``describe()`` is the /status section.
    """

    def __init__(self, host: LabelHost) -> None:
        self.host = host
        self.swarm_up = False
        self.refreshes_total = 0
        self.refresh_errors_total = 0
        self.events_total = 0
        self.last_success = 0.0
        self.last_refresh_seconds = 0.0
        self.manager: str | None = None
        self.last_error = ""
        self.snapshot: Snapshot | None = None
        self.result: Discovery | None = None
        self._swarm: SwarmConfig | None = None
        self._apis: dict[str, DockerAPI] = {}
        self._learned: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._watching: str | None = None
        self._kick = asyncio.Event()
        self._first = asyncio.Event()
        self._up = asyncio.Event()
        self._problems: set[str] = set()
        self._shown: dict[str, list[str]] = {}  # backend -> servers as last logged
        self._backoff = 0.0
        self._last_change = float("-inf")
        self._down_since = 0.0
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.host.config.swarm is not None

    # -- component life ---------------------------------------------------------------------------
    async def start(self) -> None:
        swarm = self.host.config.swarm
        if swarm is None:
            return
        self._configure(swarm)
        self._task = asyncio.create_task(self._run(), name="swarm-discovery")
        # Start serving with the discovered servers when the API answers at once; never hold the
        # start for long on a dead manager (the first refresh then goes on in the background).
        wait = min(10.0, swarm.timeout * max(1, len(swarm.managers)) + 1.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._first.wait()

    async def reload(self, config: Config) -> None:
        swarm = config.swarm
        if swarm is None:
            if self._task is not None:
                await self.stop()
                self._clear()
                log.info("swarm discovery stopped: no 'swarm:' section any more")
            return
        self._configure(swarm)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="swarm-discovery")
            return
        # New or changed backends get their servers now, from the last snapshot, then a fresh look.
        if self.snapshot is not None:
            self._apply(self.snapshot)
        self.kick()

    async def stop(self) -> None:
        for task in (self._task, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._watch_task = None
        self._watching = None

    def kick(self) -> None:
        """Re-list now (an event arrived, the event stream broke, the config changed)."""
        self._kick.set()

    def _configure(self, swarm: SwarmConfig) -> None:
        if swarm != self._swarm:
            old = self._swarm
            self._swarm = swarm
            if old is None or (old.managers, old.tls, old.timeout) != (swarm.managers, swarm.tls, swarm.timeout):
                self._apis.clear()
                self._learned = []
                if self.manager not in swarm.managers:
                    self.manager = None

    def _api(self, url: str) -> DockerAPI:
        api = self._apis.get(url)
        if api is None:
            assert self._swarm is not None
            api = self._apis[url] = DockerAPI(url, self._swarm.tls, self._swarm.timeout)
        return api

    # -- the loop ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._kick.clear()
            try:
                ok = await self._refresh()
            except Exception as e:  # a bug must not end discovery: log it and keep going
                log.error("swarm: refresh failed unexpectedly", error=f"{type(e).__name__}: {e}")
                self.refresh_errors_total += 1
                ok = False
            self._first.set()
            self._ensure_watch()
            delay = self._next_delay(ok, loop.time())
            try:
                async with asyncio.timeout(delay):
                    await self._kick.wait()
            except TimeoutError:
                continue
            await asyncio.sleep(DEBOUNCE)

    def _next_delay(self, ok: bool, now: float) -> float:
        assert self._swarm is not None
        refresh = self._swarm.refresh
        if not ok:
            # Back off 1, 2, 4 ... s up to the refresh interval: a manager coming back is seen soon,
            # a dead one is not hammered.
            self._backoff = min(refresh, max(1.0, self._backoff * 2))
            return self._backoff
        self._backoff = 0.0
        snap, result = self.snapshot, self.result
        settling = now - self._last_change < SETTLE_WINDOW
        if settling and snap is not None and result is not None and in_transit(snap, result.relevant):
            return min(refresh, FAST_POLL)
        return refresh

    def _order(self) -> list[str]:
        assert self._swarm is not None
        order = [self.manager] if self.manager else []
        for url in [*self._swarm.managers, *self._learned]:
            if url not in order:
                order.append(url)
        return order

    async def _refresh(self) -> bool:
        assert self._swarm is not None
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        errors: list[str] = []
        kinds: set[str] = set()
        for url in self._order():
            try:
                snap = await self._fetch(self._api(url))
            except DockerError as e:
                errors.append(f"{url}: {e}")
                kinds.add(e.kind)
                continue
            self.last_refresh_seconds = loop.time() - t0
            self._succeeded(url, snap, errors)
            return True
        self.last_refresh_seconds = loop.time() - t0
        self._failed(errors, kinds)
        return False

    async def _fetch(self, api: DockerAPI) -> Snapshot:
        """One consistent look at the cluster through one manager."""
        assert self._swarm is not None
        labels = self._swarm.labels
        wanted = {be.swarm.service for be in self.host.config.backends.values() if be.swarm is not None}
        return await fetch_snapshot(api, lambda s: s.name in wanted or s.id in wanted or (labels and label_enabled(s)))

    def _succeeded(self, url: str, snap: Snapshot, errors: list[str]) -> None:
        assert self._swarm is not None
        if errors:
            log.info("swarm: manager(s) skipped", skipped=errors, answered=url)
        was_down = not self.swarm_up
        self.manager = url
        self.swarm_up = True
        self._up.set()
        self.refreshes_total += 1
        self.last_success = time.time()
        self.last_error = ""
        self._learned = manager_urls(snap, self._swarm.managers)
        if was_down and self._warned:
            log.info(
                "swarm: discovery recovered",
                manager=url,
                down_s=round(time.monotonic() - self._down_since, 1),
            )
        self._warned = False
        self.snapshot = snap
        self._apply(snap)

    def _failed(self, errors: list[str], kinds: set[str]) -> None:
        self.refresh_errors_total += 1
        self.last_error = "; ".join(errors)
        if self.swarm_up or not self._warned:
            self._down_since = time.monotonic()
            extra = {}
            if kinds & {"no_leader", "timeout"}:
                extra["hint"] = "the control plane may have lost quorum; running tasks keep serving"
            log.warning("swarm: no manager answered; keeping the last known servers", errors=errors, **extra)
            self._warned = True
        self.swarm_up = False
        self._up.clear()

    # -- applying a snapshot --------------------------------------------------------------------------
    def _apply(self, snap: Snapshot) -> None:
        host, cfg = self.host, self.host.config
        assert cfg.swarm is not None
        result = resolve(snap, cfg.backends, cfg.listeners, cfg.swarm)
        self.result = result
        for name, lb in result.labelled.items():
            if name not in host.label_pools:
                route = lb.route
                log.info(
                    "swarm: backend from service labels",
                    backend=name,
                    port=lb.port,
                    listener=lb.listener,
                    host=route.host if route else None,
                    path_prefix=route.path_prefix if route else None,
                )
        routes: dict[str, list[Route]] = {}
        for lb in result.labelled.values():
            if lb.listener is not None and lb.route is not None:
                routes.setdefault(lb.listener, []).append(lb.route)
        changed = labelsync.adopt(
            host,
            {name: lb.backend for name, lb in result.labelled.items()},
            {name: tuple(sorted(rs, key=route_order)) for name, rs in routes.items()},
        )
        for name in [n for n in self._shown if n not in result.servers]:
            del self._shown[name]
        for name, servers in result.servers.items():
            pool = host.pools.get(name)
            if pool is not None:
                pool.set_source("swarm", servers)
                changed |= self._show(name, pool)
        problems = set(result.problems)
        for p in sorted(problems - self._problems):
            log.warning("swarm: " + p)
        self._problems = problems
        if changed:
            self._last_change = asyncio.get_running_loop().time()

    def _show(self, name: str, pool: BackendPool) -> bool:
        """Log a backend's swarm servers when they change; True if they did."""
        now = [f"{s.name} {s.state}" for s in pool.servers_by_source.get("swarm", [])]
        if self._shown.get(name) == now:
            return False
        self._shown[name] = now
        log.info("swarm: servers", backend=name, servers=now)
        return True

    def _clear(self) -> None:
        """The swarm section is gone: swarm servers drain, label backends and routes go."""
        labelsync.adopt(self.host, {}, {})
        for pool in self.host.pools.values():
            pool.set_source("swarm", [])
        self.swarm_up = False
        self.snapshot = self.result = None
        self._shown.clear()
        self._problems.clear()

    # -- events ---------------------------------------------------------------------------------------
    def _ensure_watch(self) -> None:
        """Follow the event stream of the manager that answered last."""
        if self._watch_task is not None and not self._watch_task.done():
            if self._watching == self.manager or not self.swarm_up:
                return
            self._watch_task.cancel()
        if self.manager is None or not self.swarm_up:
            return
        self._watching = self.manager
        self._watch_task = asyncio.create_task(self._watch(self.manager), name="swarm-events")

    async def _watch(self, url: str) -> None:
        api = self._api(url)
        try:
            await api.watch_events(EVENT_FILTERS, self._on_event, on_open=self.kick)
            why = "the engine ended the event stream"
        except DockerError as e:
            why = str(e)
        log.debug("swarm: event stream ended", manager=url, reason=why)
        # The manager may be gone: a re-list finds out (and fails over); the next successful one
        # opens the stream again. Wait a little first so a broken stream cannot spin.
        await asyncio.sleep(1.0)
        self._watching = None
        self.kick()

    def _on_event(self, event: dict[str, Any]) -> None:
        self.events_total += 1
        self._last_change = asyncio.get_running_loop().time()
        actor = event.get("Actor") if isinstance(event.get("Actor"), dict) else {}
        log.debug(
            "swarm: event",
            type=event.get("Type"),
            action=event.get("Action"),
            name=(actor or {}).get("Attributes", {}).get("name"),
        )
        self.kick()

    # -- /metrics and /status ------------------------------------------------------------------------
    def collect(self) -> Iterable[Family]:
        up = Family("edgeproxy_swarm_up", "gauge", "1 when the last refresh got an answer from a swarm manager")
        up.add(1 if self.swarm_up else 0)
        refreshes = Family("edgeproxy_swarm_refreshes_total", "counter", "Swarm re-lists, by result")
        refreshes.add(self.refreshes_total, result="success")
        refreshes.add(self.refresh_errors_total, result="failure")
        events = Family("edgeproxy_swarm_events_total", "counter", "Service and node events received from the manager")
        events.add(self.events_total)
        last = Family(
            "edgeproxy_swarm_last_success_timestamp_seconds", "gauge", "When a manager last answered (Unix time)"
        )
        last.add(self.last_success)
        took = Family("edgeproxy_swarm_refresh_seconds", "gauge", "How long the last re-list took")
        took.add(self.last_refresh_seconds)
        problems = Family(
            "edgeproxy_swarm_problems", "gauge", "Services discovery cannot use (ingress ports, bad labels...)"
        )
        problems.add(len(self._problems))
        return [up, refreshes, events, last, took, problems]

    def describe(self) -> dict[str, Any]:
        swarm = self.host.config.swarm
        return {
            "enabled": swarm is not None,
            "up": self.swarm_up,
            "manager": self.manager,
            "managers": [*(swarm.managers if swarm else ()), *self._learned],
            "refreshes": self.refreshes_total,
            "errors": self.refresh_errors_total,
            "events": self.events_total,
            "last_success": self.last_success,
            "last_refresh_seconds": round(self.last_refresh_seconds, 4),
            "last_error": self.last_error,
            "problems": sorted(self._problems),
            "label_backends": sorted(self.host.label_pools),
        }
