"""Backends built from swarm service labels, and their routes, from the supervisor to the workers.

With ``workers: N`` discovery runs once, in the supervisor, and poolsync carries server lists to
the workers, but only for pools a worker already has: a label backend is a pool no worker's
config file defines, and its route is published on listeners that live in the workers. So the
supervisor also sends the label backends' settings and the routes (``{"op": "labels"}``), before
the pool updates that fill them; a worker creates, reconfigures or removes those pools
(``proxy.dynamic_pools``) and sets its listeners' ``extra_routes``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edgeproxy.config import Backend, Health, Route, SwarmRef
from edgeproxy.runtime.pools import BackendPool

if TYPE_CHECKING:
    from edgeproxy.runtime.proxy import Proxy


def publish_routes(proxy: Proxy) -> None:
    """Every listener's ``extra_routes`` from ``proxy.label_routes`` (also after a reload re-created one)."""
    for name, ctx in proxy.contexts.items():
        routes = proxy.label_routes.get(name, ())
        if ctx.extra_routes != routes:
            ctx.extra_routes = routes


def to_wire(proxy: Proxy) -> dict[str, Any]:
    backends = {}
    for name in sorted(proxy.dynamic_pools):
        pool = proxy.pools.get(name)
        if pool is not None:
            d = dataclasses.asdict(pool.config)
            d.pop("servers")  # a label backend's servers are all from swarm: poolsync carries them
            backends[name] = d
    routes = {name: [[r.backend, r.host, r.path_prefix] for r in rs] for name, rs in proxy.label_routes.items()}
    return {"backends": backends, "routes": routes}


def apply(proxy: Proxy, wire: Mapping[str, Any]) -> None:
    """A worker: make its label backends and routes the supervisor's."""
    wanted = {name: _backend(d) for name, d in wire.get("backends", {}).items()}
    for name in [n for n in proxy.dynamic_pools if n not in wanted]:
        proxy.dynamic_pools.discard(name)
        if name in proxy.config.backends:
            continue  # a reload made it a backend of the config file: that one owns it now
        pool = proxy.pools.pop(name, None)
        if pool is not None:
            pool.set_source("swarm", [])  # open connections finish; the sweeper ends them at drain
            if pool.draining:
                proxy.gone_pools.append(pool)
    for name, be in wanted.items():
        if name in proxy.config.backends:
            continue  # the config file's backend of that name wins
        pool = proxy.pools.get(name)
        if pool is None:
            proxy.pools[name] = BackendPool(be)
        elif pool.config != be:
            pool.reconfigure(be)
        proxy.dynamic_pools.add(name)
    proxy.label_routes = {
        name: tuple(Route(backend=str(b), host=h, path_prefix=p) for b, h, p in rs)
        for name, rs in wire.get("routes", {}).items()
    }
    publish_routes(proxy)


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
