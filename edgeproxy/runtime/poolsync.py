"""Keeping the workers' server sets in step with the supervisor's.

Health checks, discovery and the admin API run once, in the supervisor, and change its pools
(servers joining or leaving a source, UP/DOWN/DRAIN). The supervisor compares a snapshot of each
pool with the one it last sent and sends the workers what changed; a worker applies it to its own
pools, keeping each ``Server`` object (and so its open-connection counts) by address. Polling the
snapshot, rather than asking each component to announce its changes, means a new component
(discovery, say) needs no hook to reach the workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeproxy.balance import Server, ServerState
from edgeproxy.runtime.pools import BackendPool

# (host, port, weight, backup, meta, state, admin_drain, check_down) per server, per source; the
# two flags travel too so that a worker's own reload re-lists a server in the right state.
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


def snapshots(pools: Mapping[str, BackendPool]) -> dict[str, PoolSnapshot]:
    return {name: snapshot(pool) for name, pool in pools.items()}


def changed(new: dict[str, PoolSnapshot], old: dict[str, PoolSnapshot]) -> dict[str, PoolSnapshot]:
    return {name: snap for name, snap in new.items() if old.get(name) != snap}


def to_wire(snaps: dict[str, PoolSnapshot]) -> dict[str, Any]:
    return {name: {src: [list(t) for t in servers] for src, servers in snap.items()} for name, snap in snaps.items()}


def apply(pools: Mapping[str, BackendPool], wire: Mapping[str, Any]) -> None:
    """Make the worker's pools match; a backend this worker does not know (yet) is skipped."""
    for name, sources in wire.items():
        pool = pools.get(name)
        if pool is None:
            continue
        for source, servers in sources.items():
            entries: list[Entry] = [
                (str(h), int(p), int(w), bool(b), dict(m), str(st), bool(ad), bool(cd))
                for h, p, w, b, m, st, ad, cd in servers
            ]
            current = pool.servers_by_source.get(source, [])
            if [(s.host, s.port, s.weight, s.backup, s.meta) for s in current] != [e[:5] for e in entries]:
                pool.set_source(source, [Server(e[0], e[1], weight=e[2], backup=e[3], meta=e[4]) for e in entries])
            by_key = {s.key: s for s in pool.servers_by_source.get(source, [])}
            for h, p, _w, _b, _m, st, ad, cd in entries:
                s = by_key.get((h, p))
                if s is not None:
                    s.state, s.admin_drain, s.check_down = ServerState(st), ad, cd
