"""The registry's wire format: how a worker's registry is kept in step with the supervisor's.

Health checks, discovery and the admin API run once, in the supervisor, and change its registry
(servers joining or leaving a source, UP/DOWN/DRAIN, label backends and their routes). The
supervisor subscribes to those changes and sends each worker a message with what changed; the
worker applies it to its own registry, keeping each ``Server`` object (and so its open-connection
counts) by address. A worker's configured pools come from its own copy of the config file, so
only what runs in the supervisor travels:

- ``labels``: the label backends' settings (no servers: those travel as ``servers``) and the
  routes by listener; sent before the servers that fill them, and only when they changed;
- ``servers``: per pool that changed, per source, every server with its state and the two flags
  behind it (so that a worker's own reload re-lists a server in the right state).

Every value is plain JSON (runtime/channel.py carries it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from edgeproxy.balance import Server, ServerState
from edgeproxy.config import Backend, Health, Route, SwarmRef
from edgeproxy.pools.pool import BackendPool
from edgeproxy.pools.registry import PoolRegistry

# (host, port, weight, backup, meta, state, admin_drain, check_down) per server, per source.
Entry = tuple[str, int, int, bool, dict[str, str], str, bool, bool]
PoolSnapshot = dict[str, list[Entry]]


def snapshot(pool: BackendPool) -> PoolSnapshot:
    return {
        source: [
            (s.host, s.port, s.weight, s.backup, dict(s.meta), s.state.value, s.admin_drain, s.check_down)
            for s in servers
        ]
        for source, servers in pool.servers_by_source.items()
    }


def snapshots(registry: PoolRegistry, names: Iterable[str] | None = None) -> dict[str, PoolSnapshot]:
    """Snapshots of the pools named (all without ``names``); names without a pool are skipped."""
    pools = registry.pools
    wanted = pools.keys() if names is None else [n for n in names if n in pools]
    return {name: snapshot(pools[name]) for name in wanted}


def labels(registry: PoolRegistry) -> dict[str, Any]:
    """The label backends (settings only) and the label routes by listener."""
    backends = {}
    for name in sorted(registry.dynamic):
        pool = registry.pools.get(name)
        if pool is not None:
            d = dataclasses.asdict(pool.config)
            d.pop("servers")  # a label backend's servers are all from swarm: ``servers`` carries them
            backends[name] = d
    routes = {name: [[r.backend, r.host, r.path_prefix] for r in rs] for name, rs in registry.routes.items()}
    return {"backends": backends, "routes": routes}


def message(label_wire: dict[str, Any] | None, servers: Mapping[str, PoolSnapshot]) -> dict[str, Any]:
    """The body of one update: ``labels`` when given, ``servers`` when any."""
    out: dict[str, Any] = {}
    if label_wire is not None:
        out["labels"] = label_wire
    if servers:
        out["servers"] = {
            name: {src: [list(t) for t in entries] for src, entries in snap.items()} for name, snap in servers.items()
        }
    return out


def apply(registry: PoolRegistry, msg: Mapping[str, Any]) -> None:
    """A worker: make its registry say what the supervisor's says (labels first, then servers)."""
    wire = msg.get("labels")
    if wire is not None:
        backends = {name: _backend(d) for name, d in wire.get("backends", {}).items()}
        routes = {
            name: [Route(backend=str(b), host=h, path_prefix=p) for b, h, p in rs]
            for name, rs in wire.get("routes", {}).items()
        }
        registry.set_label_backends(backends, routes)
    for name, sources in msg.get("servers", {}).items():
        pool = registry.pools.get(name)
        if pool is None:
            continue  # a backend this worker does not know (yet)
        states: dict[tuple[str, int], tuple[ServerState, bool, bool]] = {}
        for source, servers in sources.items():
            entries: list[Entry] = [
                (str(h), int(p), int(w), bool(b), dict(m), str(st), bool(ad), bool(cd))
                for h, p, w, b, m, st, ad, cd in servers
            ]
            current = pool.servers_by_source.get(source, [])
            if [(s.host, s.port, s.weight, s.backup, s.meta) for s in current] != [e[:5] for e in entries]:
                registry.set_servers(
                    name, source, [Server(e[0], e[1], weight=e[2], backup=e[3], meta=e[4]) for e in entries]
                )
            for h, p, _w, _b, _m, st, ad, cd in entries:
                states[(h, p)] = (ServerState(st), ad, cd)
        registry.set_states(name, states)


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
