"""The swarm discovery component: keeps the pools' ``swarm`` servers (and the label backends and
their routes) in step with the managers' API.

Refresh = GET /nodes, /services, /tasks from the first manager that answers (the last good one
first). It runs every ``swarm.refresh``, at once when /events reports a service or node change,
and every second while a task is still being placed or started (Swarm emits no task events,
moby/moby#37403, so a scale-up is only seen by asking again). When no manager answers, the
pools are left alone: tasks keep running without a leader, so the last known servers are still
the best answer; ``swarm_up`` drops to 0, a warning is logged once and the retries back off.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from edgeproxy.admin.metrics import Family
from edgeproxy.config import Config, Route, SwarmConfig
from edgeproxy.discovery.docker_api import APIError, DockerClient, Endpoint, NoLeader, filters
from edgeproxy.discovery.labels import LabelError, enabled, label_backend
from edgeproxy.discovery.swarm_model import (
    INGRESS_HINT,
    Node,
    Service,
    Task,
    parse_nodes,
    parse_services,
    parse_tasks,
    servers_for,
)
from edgeproxy.log import log
from edgeproxy.runtime.pools import BackendPool

if TYPE_CHECKING:
    from edgeproxy.runtime.proxy import Proxy

FAST_INTERVAL = 1.0  # while tasks converge, and after an event
FAST_WINDOW = 15.0  # seconds of fast refreshes after an event (a task takes a few s to start)
MAX_BACKOFF = 30.0
EVENT_FILTERS = {"filters": filters(type=["service", "node"])}


@dataclass(frozen=True, slots=True)
class Snapshot:
    nodes: Mapping[str, Node]
    services: Mapping[str, Service]
    tasks: tuple[Task, ...]
    manager: str  # the API endpoint that answered


async def fetch_snapshot(client: DockerClient, overrides: Mapping[str, str]) -> Snapshot:
    nodes = await client.get("/nodes")
    services = await client.get("/services")
    tasks = await client.get("/tasks", {"filters": filters(desired_state=["running"])})
    return Snapshot(parse_nodes(nodes, overrides), parse_services(services), tuple(parse_tasks(tasks)), client.url)


def make_clients(cfg: SwarmConfig, extra: list[str] | None = None) -> list[DockerClient]:
    urls = list(dict.fromkeys([*cfg.managers, *(extra or [])]))
    return [DockerClient(Endpoint.parse(u, cfg.tls), cfg.timeout) for u in urls]


def discovered_manager_urls(cfg: SwarmConfig, nodes: Mapping[str, Node]) -> list[str]:
    """API URLs of the other managers: their host (ManagerStatus.Addr is the raft port, 2377) with
    the scheme and port of the first configured tcp:// manager; none with only a unix socket."""
    tcp = next((urlsplit(u) for u in cfg.managers if not u.startswith("unix://")), None)
    if tcp is None:
        return []
    port = tcp.port or (2376 if cfg.tls else 2375)
    out = []
    for n in nodes.values():
        if n.role == "manager" and n.manager_addr:
            host = n.manager_addr.rpartition(":")[0].strip("[]")
            out.append(f"{tcp.scheme}://[{host}]:{port}" if ":" in host else f"{tcp.scheme}://{host}:{port}")
    return out


class SwarmDiscovery:
    """A Component (runtime/proxy.py). Counters are plain attributes, read by /metrics."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.config: SwarmConfig = _swarm(proxy.config)
        self.clients = make_clients(self.config)
        self.refreshes = 0  # successful refreshes
        self.errors = 0  # failed refreshes (no manager answered)
        self.events = 0  # /events received
        self.last_success: float | None = None  # time.time() of the last successful refresh
        self.swarm_up = 0  # 1 when the last refresh got an answer
        self.last_error = ""
        self.snapshot: Snapshot | None = None
        self.label_pools: dict[str, BackendPool] = {}
        self._wake = asyncio.Event()
        self._fast_until = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._label_errors: dict[str, str] = {}  # service -> last error logged (log each once)
        self._published: dict[str, tuple[str, int]] = {}  # backend -> servers signature logged

    # -- Component ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._refresh_loop()), asyncio.ensure_future(self._event_loop())]

    async def reload(self, config: Config) -> None:
        if config.swarm is None:
            await self.stop()
            self.snapshot = None
            self._apply_snapshot()
            return
        if config.swarm != self.config:
            self.config = config.swarm
            self.clients = make_clients(self.config)
        if not self._tasks:
            await self.start()
        self._apply_snapshot()  # new or re-created pools/listeners get the last known servers at once
        self._wake.set()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []

    # -- loops -------------------------------------------------------------------------------------
    async def _refresh_loop(self) -> None:
        backoff = 1.0
        while True:
            try:
                ok = await self.refresh()
            except Exception as e:  # a bug must not stop discovery for good: log, count, go on
                log.error("swarm: refresh failed", error=repr(e))
                self.errors += 1
                ok = False
            now = time.monotonic()
            if ok:
                backoff = 1.0
                converging = self.snapshot is not None and any(t.converging for t in self.snapshot.tasks)
                delay = FAST_INTERVAL if converging or now < self._fast_until else self.config.refresh
            else:
                delay = min(backoff, self.config.refresh, MAX_BACKOFF)
                backoff *= 2
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
                await asyncio.sleep(0.1)  # coalesce a burst of events into one refresh
            self._wake.clear()

    async def _event_loop(self) -> None:
        """Watch /events on a manager that answers; any service/node event wakes a refresh."""
        backoff = 1.0
        while True:
            for client in self._ordered_clients():
                try:
                    async for _ev in client.events(EVENT_FILTERS):
                        self.events += 1
                        backoff = 1.0
                        self._fast_until = time.monotonic() + FAST_WINDOW
                        self._wake.set()
                except APIError:
                    continue
                except Exception as e:  # same: never let the watcher die
                    log.error("swarm: event stream failed", manager=client.url, error=repr(e))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.refresh)

    def _ordered_clients(self) -> list[DockerClient]:
        """The manager that answered last first, then the others in the configured order."""
        last = self.snapshot.manager if self.snapshot else None
        return sorted(self.clients, key=lambda c: c.url != last)

    # -- refresh -----------------------------------------------------------------------------------
    async def refresh(self) -> bool:
        errors: list[str] = []
        leaderless = False
        for client in self._ordered_clients():
            try:
                snap = await fetch_snapshot(client, self.config.node_addresses)
            except APIError as e:
                errors.append(str(e))
                leaderless = leaderless or isinstance(e, NoLeader)
                continue
            self._succeeded(snap)
            return True
        self.errors += 1
        self.last_error = "; ".join(errors)
        if self.swarm_up or self.errors == 1:
            log.warning(
                "swarm: no manager answered; keeping the last known servers",
                reason="no leader (quorum lost?)" if leaderless else "managers unreachable",
                errors=errors,
            )
        self.swarm_up = 0
        return False

    def _succeeded(self, snap: Snapshot) -> None:
        if not self.swarm_up and self.errors:
            log.info("swarm: managers answer again", manager=snap.manager)
        self.swarm_up = 1
        self.refreshes += 1
        self.last_success = time.time()
        self.snapshot = snap
        extra = discovered_manager_urls(self.config, snap.nodes)
        if any(u not in {c.url for c in self.clients} for u in extra):
            self.clients = make_clients(self.config, extra)
        self._apply_snapshot()

    # -- applying a snapshot to the pools ----------------------------------------------------------
    def _apply_snapshot(self) -> None:
        snap = self.snapshot
        cfg = self.proxy.config
        if snap is None:
            # Discovery turned off by a reload: label backends go, swarm servers stay until the
            # pools' own reload handling (a backend without swarm: has no swarm servers to keep).
            self._set_label_pools({})
            return
        for name, be in cfg.backends.items():
            pool = self.proxy.pools.get(name)
            if be.swarm is None or pool is None:
                continue
            svc = snap.services.get(be.swarm.service)
            if svc is None:
                self._publish(pool, [])
                continue
            self._warn_ingress(svc, be.swarm.port)
            self._publish(pool, servers_for(svc, snap.tasks, snap.nodes, be.swarm.port, self._protocol(name)))
        wanted: dict[str, Any] = {}
        if cfg.swarm is not None and cfg.swarm.labels:
            wanted = self._label_backends(snap, cfg)
        self._set_label_pools(wanted)

    def _label_backends(self, snap: Snapshot, cfg: Config) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for svc in snap.services.values():
            if not enabled(svc):
                continue
            if svc.name in cfg.backends:
                continue  # the config file's backend of that name wins
            try:
                lb = label_backend(svc, cfg.listeners)
            except LabelError as e:
                if self._label_errors.get(svc.name) != str(e):
                    self._label_errors[svc.name] = str(e)
                    log.warning("swarm: bad edgeproxy labels; service skipped", service=svc.name, error=str(e))
                continue
            self._label_errors.pop(svc.name, None)
            assert lb.backend.swarm is not None
            servers = servers_for(svc, snap.tasks, snap.nodes, lb.backend.swarm.port, self._protocol(svc.name))
            out[svc.name] = (lb, servers)
        return out

    def _set_label_pools(self, wanted: Mapping[str, Any]) -> None:
        pools = self.proxy.pools
        for name in list(self.label_pools):
            if name not in wanted:
                pool = self.label_pools.pop(name)
                self.proxy.dynamic_pools.discard(name)
                if name in self.proxy.config.backends:
                    continue  # a reload made it a backend of the config file: that one owns it now
                pool.set_source("swarm", [])
                if pools.get(name) is pool:
                    del pools[name]
                self._published.pop(name, None)
                log.info("swarm: label backend removed", backend=name)
        routes: dict[str, list[Route]] = {}
        for name, (lb, servers) in wanted.items():
            existing = self.label_pools.get(name)
            if existing is None:
                pool = BackendPool(lb.backend)
                self.label_pools[name] = pool
                log.info("swarm: label backend added", backend=name, listener=lb.listener, route=_route_text(lb.route))
            else:
                pool = existing
                if pool.config != lb.backend:
                    pool.reconfigure(lb.backend)
            pools[name] = pool
            self.proxy.dynamic_pools.add(name)
            self._publish(pool, servers)
            if lb.route is not None and lb.listener is not None:
                routes.setdefault(lb.listener, []).append(lb.route)
        for lname, ctx in self.proxy.contexts.items():
            ctx.extra_routes = tuple(sorted(routes.get(lname, ()), key=_route_order))

    def _publish(self, pool: BackendPool, servers: list[Any]) -> None:
        pool.set_source("swarm", servers)
        shown = [f"{s.name} {s.state.value}" for s in servers]
        signature = (";".join(shown), len(servers))
        if self._published.get(pool.name) != signature:
            self._published[pool.name] = signature
            log.info("swarm: servers changed", backend=pool.name, servers=shown)

    def _warn_ingress(self, svc: Service, port: int) -> None:
        if any(p.target == port for p in svc.ingress_ports()) and self._label_errors.get(svc.name) != "ingress":
            self._label_errors[svc.name] = "ingress"
            log.warning("swarm: port published in ingress mode", service=svc.name, port=port, hint=INGRESS_HINT)

    def _protocol(self, backend: str) -> str:
        modes = {lst.mode for lst in self.proxy.config.listeners if lst.backend == backend}
        return "udp" if "udp" in modes else "tcp"

    # -- metrics -----------------------------------------------------------------------------------
    def metric_families(self) -> list[Family]:
        up = Family("edgeproxy_swarm_up", "gauge", "1 when the last discovery refresh got an answer from a manager")
        up.add(self.swarm_up)
        refreshes = Family("edgeproxy_swarm_refreshes_total", "counter", "Swarm discovery refreshes, by result")
        refreshes.add(self.refreshes, result="success")
        refreshes.add(self.errors, result="error")
        events = Family("edgeproxy_swarm_events_total", "counter", "Service/node events received from /events")
        events.add(self.events)
        last = Family("edgeproxy_swarm_last_success_timestamp_seconds", "gauge", "When discovery last succeeded")
        last.add(self.last_success or 0)
        return [up, refreshes, events, last]


def _swarm(config: Config) -> SwarmConfig:
    assert config.swarm is not None
    return config.swarm


def _route_text(route: Route | None) -> str | None:
    return None if route is None else f"{route.host or '*'}{route.path_prefix or '/'}"


def _route_order(r: Route) -> tuple[int, int]:
    """Most specific first: routes with a host, then longer path prefixes."""
    return (0 if r.host else 1, -len(r.path_prefix or ""))
