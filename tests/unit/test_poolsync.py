"""Pool updates from the supervisor keep the worker's Server objects and their counters."""

from __future__ import annotations

from edgeproxy.balance import Server, ServerState
from edgeproxy.config import Backend, ServerConfig, parse_address, parse_config
from edgeproxy.runtime import poolsync
from edgeproxy.runtime.pools import BackendPool
from edgeproxy.runtime.worker import per_worker


def pool(*addresses: str) -> BackendPool:
    return BackendPool(Backend(name="app", servers=tuple(ServerConfig(parse_address(a)) for a in addresses)))


def test_states_and_members_reach_the_worker_keeping_its_objects() -> None:
    sup, wrk = pool("10.0.0.1:80", "10.0.0.2:80"), pool("10.0.0.1:80", "10.0.0.2:80")
    kept = wrk.servers[0]
    kept.acquire()  # an open connection in the worker
    sup.servers[0].check_down = True
    sup.servers[0].state = ServerState.DOWN
    sup.set_source("swarm", [Server("10.0.0.9", 8080, meta={"task": "t1"})])
    sent = poolsync.to_wire(poolsync.changed(poolsync.snapshots({"app": sup}), {}))
    poolsync.apply({"app": wrk}, sent)
    assert wrk.servers[0] is kept and kept.state is ServerState.DOWN and kept.active == 1
    assert [(s.name, s.source, s.meta) for s in wrk.servers_by_source["swarm"]] == [
        ("10.0.0.9:8080", "swarm", {"task": "t1"})
    ]
    # The worker's own reload re-lists its static servers: a DOWN one stays DOWN.
    wrk.reconfigure(Backend(name="app", balance="leastconn", servers=wrk.config.servers))
    assert kept.state is ServerState.DOWN
    # Nothing changed: nothing to send.
    snaps = poolsync.snapshots({"app": sup})
    assert poolsync.changed(snaps, snaps) == {}


def test_each_worker_takes_its_share_of_max_connections() -> None:
    raw = b"""
workers: 3
listeners: [{name: a, bind: "127.0.0.1:1", mode: tcp, backend: b, max_connections: 10}]
backends: {b: {servers: ["127.0.0.1:2"]}}
"""
    assert per_worker(parse_config(raw)).listeners[0].max_connections == 4
