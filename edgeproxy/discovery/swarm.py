"""The swarm discovery component: keeps the pools' ``swarm`` servers (and the label backends and
their routes) in step with the managers' API, through the pool registry (pools/registry.py).

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from edgeproxy.balance import Server
from edgeproxy.config import Backend, Config, Route, SwarmConfig
from edgeproxy.discovery.docker_api import APIError, DockerClient, Endpoint, NoLeader, filters
from edgeproxy.discovery.labels import LabelBackend, LabelError, enabled, label_backend
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
from edgeproxy.log import iso_time, log
from edgeproxy.metrics import Family
from edgeproxy.pools import PoolRegistry
from edgeproxy.staged import Staged

FAST_INTERVAL = 1.0  # while tasks converge, and after an event
FAST_WINDOW = 15.0  # seconds of fast refreshes after an event (a task takes a few s to start)
CONVERGE_WINDOW = 60.0  # fast refreshes for converging tasks stop this long after the tasks last changed
MAX_BACKOFF = 30.0
EVENT_FILTERS = {"filters": filters(type=["service", "node"])}


@dataclass(frozen=True, slots=True)
class Snapshot:
    nodes: Mapping[str, Node]
    services: Mapping[str, Service]
    tasks: tuple[Task, ...]
    manager: str  # the API endpoint that answered


async def fetch_snapshot(
    client: DockerClient, overrides: Mapping[str, str], select: Callable[[Service], bool] | None = None
) -> Snapshot:
    """Nodes, services, and the tasks (desired running) of the services ``select`` keeps (all
    without it): a big cluster's whole task list is not read every second while one service
    converges, and other services' tasks cannot keep discovery polling fast."""
    nodes = parse_nodes(await client.get("/nodes"), overrides)
    services = parse_services(await client.get("/services"))
    if select is None:
        raw = await client.get("/tasks", {"filters": filters(desired_state=["running"])})
        return Snapshot(nodes, services, tuple(parse_tasks(raw)), client.url)
    ids = sorted(s.id for s in services.values() if select(s))
    tasks: list[Task] = []
    if ids:
        try:
            tasks = parse_tasks(
                await client.get("/tasks", {"filters": filters(desired_state=["running"], service=ids)})
            )
        except APIError as e:
            if e.status != 404:
                raise
            # A service removed between the two calls (the engine answers 404 for the filter): again.
            services = parse_services(await client.get("/services"))
            ids = [i for i in ids if i in {s.id for s in services.values()}]
            if ids:
                query = {"filters": filters(desired_state=["running"], service=ids)}
                tasks = parse_tasks(await client.get("/tasks", query))
    return Snapshot(nodes, services, tuple(tasks), client.url)


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
    """A control-plane component (runtime/control.py), on while the config has a ``swarm:``
    section: a reload that adds one starts discovery, one that removes it stops it and withdraws
    what it added. Counters are plain attributes, read by /metrics."""

    def __init__(self, registry: PoolRegistry) -> None:
        self.registry = registry
        self.full: Config | None = None  # the running config (backends and listeners name services)
        self.config = SwarmConfig()
        self.clients: list[DockerClient] = []
        self.refreshes = 0  # successful refreshes
        self.errors = 0  # failed refreshes (no manager answered)
        self.events = 0  # /events received
        self.last_success: float | None = None  # time.time() of the last successful refresh
        self.swarm_up = 0  # 1 when the last refresh got an answer
        self.last_error = ""
        self.snapshot: Snapshot | None = None
        self.label_backends: list[str] = []
        self._wake = asyncio.Event()
        self._first = asyncio.Event()  # set after the first refresh, answered or not
        self._fast_until = 0.0
        self._tasks_changed = 0.0  # monotonic time the watched tasks (ids, states) last changed
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: set[asyncio.Task[None]] = set()
        self._label_errors: dict[str, str] = {}  # service -> last error logged (log each once)
        self._published: dict[str, tuple[str, int]] = {}  # backend -> servers signature logged

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    # -- Component ---------------------------------------------------------------------------------
    async def prepare(self, config: Config) -> Staged:
        """The managers' clients are built here (reading TLS files may fail: the reload does)."""
        swarm = config.swarm
        if swarm is None:
            return Staged(self._withdraw if self.running else None)
        clients = self.clients if self.running and swarm == self.config else make_clients(swarm)

        def commit() -> None:
            self.full, self.config, self.clients = config, swarm, clients
            if not self.running:
                self._first.clear()
                self._tasks = [
                    asyncio.ensure_future(self._refresh_loop()),
                    asyncio.ensure_future(self._event_loop()),
                ]
                return
            self._apply_snapshot()  # new or re-created pools/listeners get the last known servers at once
            self._wake.set()

        return Staged(commit)

    async def ready(self) -> None:
        """Serve with the discovered servers from the first request on when a manager answers at
        once ("edgeproxy started" then means it); never hold the start long for a dead one."""
        if not self.running:
            return
        wait = min(10.0, self.config.timeout * max(1, len(self.clients)) + 1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first.wait(), wait)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in [*tasks, *self._stopping]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def _withdraw(self) -> None:
        """Discovery turned off by a reload: stop asking, and take back what it added (label
        backends go; the servers it listed in configured pools leave them)."""
        for t in self._tasks:
            t.cancel()
            self._stopping.add(t)
            t.add_done_callback(self._stopping.discard)
        self._tasks = []
        self.snapshot = None
        self.swarm_up = 0
        for name in sorted(self.registry.configured):
            pool = self.registry.pools.get(name)
            if pool is not None and pool.servers_by_source.get("swarm"):
                self._publish(name, [])
        self._set_label_backends({})
        log.info("swarm: discovery stopped (no 'swarm:' section any more)")

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
            self._first.set()
            now = time.monotonic()
            if ok:
                backoff = 1.0
                # Fast while a watched task is on its way to running, but not for ever: a replica
                # that cannot be placed (host port in use on every node) stays pending.
                converging = (
                    self.snapshot is not None
                    and now - self._tasks_changed < CONVERGE_WINDOW
                    and any(t.converging for t in self.snapshot.tasks)
                )
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
                snap = await fetch_snapshot(client, self.config.node_addresses, self._wanted)
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

    def _wanted(self, svc: Service) -> bool:
        """Services whose tasks discovery needs: named by a backend, or labelled."""
        backends = self.full.backends.values() if self.full is not None else ()
        if any(be.swarm is not None and be.swarm.service in (svc.name, svc.id) for be in backends):
            return True
        return self.config.labels and enabled(svc)

    def _succeeded(self, snap: Snapshot) -> None:
        if not self.swarm_up and self.errors:
            log.info("swarm: managers answer again", manager=snap.manager)
        self.swarm_up = 1
        self.last_error = ""  # /status shows the error while no manager answers
        self.refreshes += 1
        self.last_success = time.time()
        old = {(t.id, t.state) for t in self.snapshot.tasks} if self.snapshot else None
        if old != {(t.id, t.state) for t in snap.tasks}:
            self._tasks_changed = time.monotonic()
        self.snapshot = snap
        extra = discovered_manager_urls(self.config, snap.nodes)
        if any(u not in {c.url for c in self.clients} for u in extra):
            self.clients = make_clients(self.config, extra)
        self._apply_snapshot()

    # -- applying a snapshot to the pools ----------------------------------------------------------
    def _apply_snapshot(self) -> None:
        snap, cfg = self.snapshot, self.full
        if snap is None or cfg is None:
            return
        for name, be in cfg.backends.items():
            pool = self.registry.pools.get(name)
            if pool is None:
                continue
            if be.swarm is None:
                if pool.servers_by_source.get("swarm"):
                    self._publish(name, [])  # a reload took its swarm: reference away
                continue
            svc = snap.services.get(be.swarm.service)
            if svc is None:
                self._publish(name, [])
                continue
            self._warn_ingress(svc, be.swarm.port)
            self._publish(name, servers_for(svc, snap.tasks, snap.nodes, be.swarm.port, self._protocol(name)))
        wanted: dict[str, tuple[LabelBackend, list[Server]]] = {}
        if cfg.swarm is not None and cfg.swarm.labels:
            wanted = self._label_backends(snap, cfg)
        self._set_label_backends(wanted)

    def _label_backends(self, snap: Snapshot, cfg: Config) -> dict[str, tuple[LabelBackend, list[Server]]]:
        out: dict[str, tuple[LabelBackend, list[Server]]] = {}
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

    def _set_label_backends(self, wanted: Mapping[str, tuple[LabelBackend, list[Server]]]) -> None:
        before = set(self.label_backends)
        for name in sorted(before - wanted.keys()):
            self._published.pop(name, None)
            log.info("swarm: label backend removed", backend=name)
        backends: dict[str, Backend] = {}
        routes: dict[str, list[Route]] = {}
        acme_hosts: list[str] = []
        for name, (lb, _servers) in wanted.items():
            if name not in before:
                log.info("swarm: label backend added", backend=name, listener=lb.listener, route=_route_text(lb.route))
            backends[name] = lb.backend
            if lb.route is not None and lb.listener is not None:
                routes.setdefault(lb.listener, []).append(lb.route)
            if lb.acme_host is not None:
                acme_hosts.append(lb.acme_host)
        self.registry.set_label_backends(
            backends, {name: sorted(rs, key=_route_order) for name, rs in routes.items()}, acme_hosts
        )
        self.label_backends = sorted(wanted)
        for name, (_lb, servers) in wanted.items():
            self._publish(name, servers)

    def _publish(self, backend: str, servers: list[Server]) -> None:
        self.registry.set_servers(backend, "swarm", servers)
        shown = [f"{s.name} {s.state.value}" for s in servers]
        signature = (";".join(shown), len(servers))
        if self._published.get(backend) != signature:
            self._published[backend] = signature
            log.info("swarm: servers changed", backend=backend, servers=shown)

    def _warn_ingress(self, svc: Service, port: int) -> None:
        if any(p.target == port for p in svc.ingress_ports()) and self._label_errors.get(svc.name) != "ingress":
            self._label_errors[svc.name] = "ingress"
            log.warning("swarm: port published in ingress mode", service=svc.name, port=port, hint=INGRESS_HINT)

    def _protocol(self, backend: str) -> str:
        listeners = self.full.listeners if self.full is not None else ()
        modes = {lst.mode for lst in listeners if lst.backend == backend}
        return "udp" if "udp" in modes else "tcp"

    # -- metrics and /status -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The ``swarm`` section of /status (none while discovery is off)."""
        if not self.running:
            return {}
        snap = self.snapshot
        return {
            "swarm": {
                "up": bool(self.swarm_up),
                "manager": snap.manager if snap else None,
                "managers": [c.url for c in self.clients],
                "refreshes": self.refreshes,
                "errors": self.errors,
                "events": self.events,
                "last_success": iso_time(self.last_success) if self.last_success else None,
                "last_error": self.last_error or None,
                "label_backends": self.label_backends,
            }
        }

    def collect(self) -> list[Family]:
        if not self.running:
            return []
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


def _route_text(route: Route | None) -> str | None:
    return None if route is None else f"{route.host or '*'}{route.path_prefix or '/'}"


def _route_order(r: Route) -> tuple[int, int]:
    """Most specific first: routes with a host, then longer path prefixes."""
    return (0 if r.host else 1, -len(r.path_prefix or ""))
