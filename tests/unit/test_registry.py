"""The pool registry (pools/registry.py) and its wire format (pools/wire.py), without a process:
staged reloads, label backends, notifications, and a supervisor's registry reaching a worker's."""

from __future__ import annotations

import json
import time
from typing import Any

from edgeproxy.balance import Server, ServerState
from edgeproxy.config import Backend, Health, Route, ServerConfig, SwarmRef, parse_address, parse_config
from edgeproxy.pools import Change, PoolRegistry, wire
from edgeproxy.runtime.worker import per_worker


def backend(name: str, *addresses: str, **kw: Any) -> Backend:
    return Backend(name=name, servers=tuple(ServerConfig(parse_address(a)) for a in addresses), **kw)


def loaded(*backends: Backend) -> tuple[PoolRegistry, list[Change]]:
    registry = PoolRegistry()
    changes: list[Change] = []
    registry.subscribe(changes.append)
    registry.stage({b.name: b for b in backends}).commit()
    return registry, changes


def test_a_staged_reload_shows_new_pools_at_once_and_changes_the_rest_only_at_commit() -> None:
    registry, changes = loaded(backend("app", "10.0.0.1:80"), backend("old", "10.0.0.9:80"))
    pools = registry.pools  # the mapping a listener keeps: the same object for the whole life
    app, old = pools["app"], pools["old"]
    old.servers[0].acquire()  # a connection still open to old's server
    assert changes == [Change(frozenset({"app", "old"}))]
    staged = registry.stage(
        {"app": backend("app", "10.0.0.2:80", balance="leastconn"), "new": backend("new", "10.0.0.3:80")}
    )
    assert set(pools) == {"app", "old", "new"}  # a listener the reload adds may serve already
    assert app.config.balance == "roundrobin" and [s.name for s in app.servers] == ["10.0.0.1:80"]
    assert len(changes) == 1  # nothing told yet
    staged.commit()
    assert registry.pools is pools and set(pools) == {"app", "new"} and pools["app"] is app
    assert app.config.balance == "leastconn" and [s.name for s in app.servers] == ["10.0.0.2:80"]
    assert changes[-1] == Change(frozenset({"app", "new", "old"}))
    # The removed pool's open connection keeps its server until drain, then it is late.
    assert registry.gone == [old] and old.servers == [] and next(iter(old.draining)).state is ServerState.DRAIN
    assert registry.late_servers(time.monotonic() - 60) == set()
    assert {s.name for s in registry.late_servers(time.monotonic() + 1)} == {"10.0.0.9:80"}
    next(iter(old.draining)).release()
    registry.late_servers(time.monotonic() + 1)
    assert registry.gone == []


def test_an_aborted_reload_leaves_the_registry_as_it_was() -> None:
    registry, changes = loaded(backend("app", "10.0.0.1:80"))
    before = dict(registry.pools)
    staged = registry.stage({"other": backend("other", "10.0.0.5:80")})
    assert "other" in registry.pools
    staged.abort()
    staged.commit()  # a second call does nothing
    assert dict(registry.pools) == before and registry.configured == {"app"} and len(changes) == 1


def test_label_backends_come_and_go_with_their_routes_and_the_config_file_wins() -> None:
    registry, changes = loaded(backend("app", "10.0.0.1:80"))
    label = Backend(name="shop", swarm=SwarmRef(service="shop", port=80))
    shadowed = Backend(name="app", swarm=SwarmRef(service="app", port=80))
    route = Route(backend="shop", host="shop.test")
    registry.set_label_backends({"shop": label, "app": shadowed}, {"web": [route], "tcp": []})
    assert registry.dynamic == {"shop"} and registry.pools["app"].config.swarm is None
    assert registry.routes == {"web": (route,)}
    assert changes[-1] == Change(frozenset({"shop"}), routes=True)
    registry.set_servers("shop", "swarm", [Server("10.0.1.1", 8080)])
    registry.set_servers("nope", "swarm", [Server("10.0.1.1", 8080)])  # no such pool: ignored
    assert changes[-1] == Change(frozenset({"shop"}))
    # A reload that defines "shop" in the file takes it over (same pool object, now configured).
    pool = registry.pools["shop"]
    registry.stage({"app": registry.pools["app"].config, "shop": backend("shop", "10.0.0.7:80")}).commit()
    assert registry.pools["shop"] is pool and registry.dynamic == set() and registry.configured == {"app", "shop"}
    registry.set_label_backends({}, {})
    assert "shop" in registry.pools and registry.routes == {}
    assert changes[-1] == Change(frozenset(), routes=True)


def test_health_and_admin_verdicts_go_through_the_registry_and_are_told() -> None:
    registry, changes = loaded(backend("app", "10.0.0.1:80"))
    s = registry.pools["app"].servers[0]
    registry.set_check_down("app", s, True)
    assert s.state is ServerState.DOWN and changes[-1] == Change(frozenset({"app"}))
    found = registry.find_server("app", "10.0.0.1:80")
    assert found is s and registry.find_server("app", "x") is None and registry.find_server("x", "y") is None
    registry.set_admin_drain("app", s, True)
    registry.set_check_down("app", s, False)  # a draining server stays draining
    assert s.state is ServerState.DRAIN
    registry.set_admin_drain("app", s, False)
    assert s.state is ServerState.UP


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    registry = PoolRegistry()
    seen: list[Change] = []

    def broken(change: Change) -> None:
        raise RuntimeError("bug")

    registry.subscribe(broken)
    unsubscribe = registry.subscribe(seen.append)
    registry.stage({"app": backend("app", "10.0.0.1:80")}).commit()
    assert len(seen) == 1
    unsubscribe()
    registry.set_servers("app", "swarm", [])
    assert len(seen) == 1


def test_the_supervisors_registry_reaches_a_workers_keeping_its_objects() -> None:
    app = backend("app", "10.0.0.1:80", "10.0.0.2:80")
    sup, _ = loaded(app)
    wrk, told = loaded(app)
    kept = wrk.pools["app"].servers[0]
    kept.acquire()  # an open connection in the worker
    sup.set_check_down("app", sup.pools["app"].servers[0], True)
    sup.set_servers("app", "swarm", [Server("10.0.0.9", 8080, meta={"task": "t1"})])
    label = Backend(name="shop", health=Health(type="http", path="/up"), swarm=SwarmRef(service="shop", port=80))
    sup.set_label_backends({"shop": label}, {"web": [Route(backend="shop", host="shop.test")]})
    sup.set_servers("shop", "swarm", [Server("10.0.1.1", 8080)])

    msg = wire.message(wire.labels(sup), wire.snapshots(sup))
    wire.apply(wrk, json.loads(json.dumps(msg)))  # what the channel carries: plain JSON

    assert wrk.pools["app"].servers[0] is kept and kept.state is ServerState.DOWN and kept.active == 1
    assert [(s.name, s.source, s.meta) for s in wrk.pools["app"].servers_by_source["swarm"]] == [
        ("10.0.0.9:8080", "swarm", {"task": "t1"})
    ]
    assert wrk.pools["shop"].config == label and [s.name for s in wrk.pools["shop"].servers] == ["10.0.1.1:8080"]
    assert wrk.routes == {"web": (Route(backend="shop", host="shop.test"),)}
    assert any(c.routes for c in told)
    # The worker's own reload re-lists its static servers: a DOWN one stays DOWN.
    wrk.stage({"app": backend("app", "10.0.0.1:80", "10.0.0.2:80", balance="leastconn")}).commit()
    assert kept.state is ServerState.DOWN
    # Nothing changed: nothing to send.
    assert wire.labels(sup) == wire.labels(sup) and wire.snapshots(sup) == wire.snapshots(sup)
    assert wire.message(None, {}) == {}


def test_each_worker_takes_its_share_of_max_connections() -> None:
    raw = b"""
workers: 3
listeners: [{name: a, bind: "127.0.0.1:1", mode: tcp, backend: b, max_connections: 10}]
backends: {b: {servers: ["127.0.0.1:2"]}}
"""
    assert per_worker(parse_config(raw)).listeners[0].max_connections == 4
