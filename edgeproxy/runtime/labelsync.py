"""Backends and routes built from swarm service labels: held by a proxy, and sent to the workers.

Discovery (single process or supervisor) decides which labelled services are backends; this module
puts them in place: a ``BackendPool`` in ``proxy.label_pools`` and ``proxy.pools`` (unless the
config defines a backend of that name), and each listener's ``extra_routes``.

With ``workers: N`` the workers do not run discovery, and poolsync (which fills the servers of
pools a worker already has) cannot create a pool. So the supervisor sends the label backends'
settings and the routes first (message ``{"op": "labels"}``), and the pool updates that follow
find the pools in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from edgeproxy.config import Backend, Config, Health, Route, SwarmRef
from edgeproxy.log import log
from edgeproxy.net.context import ListenerContext
from edgeproxy.runtime.pools import BackendPool

Routes = Mapping[str, tuple[Route, ...]]  # listener name -> routes, in the order they are tried


class LabelHost(Protocol):
    config: Config
    pools: dict[str, BackendPool]
    contexts: dict[str, ListenerContext]
    label_pools: dict[str, BackendPool]
    label_routes: dict[str, tuple[Route, ...]]
    gone_pools: list[BackendPool]


def adopt(host: LabelHost, backends: Mapping[str, Backend], routes: Routes, *, quiet: bool = False) -> bool:
    """Make the label backends and routes exactly these; True when a backend came or went."""
    changed = False
    for name, be in backends.items():
        pool = host.label_pools.get(name)
        if pool is None:
            pool = host.label_pools[name] = BackendPool(be)
            changed = True
        elif pool.config != be:
            pool.reconfigure(be)
            if not quiet:
                log.info("swarm: backend labels changed", backend=name)
        if name not in host.config.backends:
            host.pools[name] = pool
    for name in [n for n in host.label_pools if n not in backends]:
        pool = host.label_pools.pop(name)
        pool.set_source("swarm", [])  # its servers drain; open connections finish
        if host.pools.get(name) is pool:
            del host.pools[name]
        if pool.draining:
            host.gone_pools.append(pool)
        changed = True
        if not quiet:
            log.info("swarm: backend from service labels removed", backend=name)
    host.label_routes = {name: tuple(r) for name, r in routes.items() if r}
    publish_routes(host)
    return changed


def publish_routes(host: LabelHost) -> None:
    """Set every listener's ``extra_routes`` (also after a reload re-created a listener)."""
    for name, ctx in host.contexts.items():
        routes = host.label_routes.get(name, ())
        if ctx.extra_routes != routes:
            ctx.extra_routes = routes


# -- supervisor -> worker ------------------------------------------------------------------------
def to_wire(host: LabelHost) -> dict[str, Any]:
    backends = {}
    for name, pool in host.label_pools.items():
        d = dataclasses.asdict(pool.config)
        d.pop("servers")  # label backends have swarm servers only; poolsync carries those
        backends[name] = d
    routes = {name: [[r.backend, r.host, r.path_prefix] for r in rs] for name, rs in host.label_routes.items()}
    return {"backends": backends, "routes": routes}


def apply(host: LabelHost, wire: Mapping[str, Any]) -> None:
    """A worker: take the supervisor's label backends and routes."""
    backends = {name: _backend(d) for name, d in wire.get("backends", {}).items()}
    routes = {
        name: tuple(Route(backend=str(b), host=h, path_prefix=p) for b, h, p in rs)
        for name, rs in wire.get("routes", {}).items()
    }
    adopt(host, backends, routes, quiet=True)


def _backend(d: Mapping[str, Any]) -> Backend:
    health = dict(d["health"])
    health["expect"] = tuple(health["expect"])
    swarm = d.get("swarm")
    return Backend(
        name=str(d["name"]),
        balance=d["balance"],
        send_proxy=d["send_proxy"],
        retries=int(d["retries"]),
        health=Health(**health),
        swarm=SwarmRef(**swarm) if swarm else None,
    )
