"""The /status document: every listener, backend and server with its state, source, counts and
last health check, plus the config file's hash and the last reload. Counts come from the same
summed data-plane families as /metrics, so with several workers they are totals."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from edgeproxy import __version__
from edgeproxy.admin.view import StatsView
from edgeproxy.log import iso_time
from edgeproxy.metrics import Family
from edgeproxy.pools import PoolRegistry


def _by_labels(families: Iterable[Family], name: str, *keys: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for f in families:
        if f.name != name:
            continue
        for (suffix, labels), v in f.samples.items():
            if suffix:
                continue
            d = dict(labels)
            k = tuple(d.get(key, "") for key in keys)
            out[k] = out.get(k, 0) + v
    return out


def build_status(view: StatsView, registry: PoolRegistry, data: list[Family]) -> dict[str, Any]:
    cfg = view.config
    conns = _by_labels(data, "edgeproxy_connections_total", "listener")
    active = _by_labels(data, "edgeproxy_active_connections", "listener")
    s_active = _by_labels(data, "edgeproxy_server_active_connections", "backend", "server")
    s_total = _by_labels(data, "edgeproxy_server_connections_total", "backend", "server")
    s_failed = _by_labels(data, "edgeproxy_server_connect_failures_total", "backend", "server")
    listeners = [
        {
            "name": lst.name,
            "mode": lst.mode,
            "bind": [str(a) for a in lst.bind],
            "backend": lst.backend,
            "active": int(active.get((lst.name,), 0)),
            "connections_total": int(conns.get((lst.name,), 0)),
        }
        for lst in cfg.listeners
    ]
    backends = []
    for name, pool in registry.pools.items():
        be = pool.config
        servers = []
        for s in pool.servers:
            key = (name, s.name)
            check = s.last_check
            servers.append(
                {
                    "name": s.name,
                    "state": s.state.value,
                    "source": s.source,
                    **s.meta,  # swarm servers: service, task, node
                    "weight": s.weight,
                    "backup": s.backup,
                    "admin_drain": s.admin_drain,
                    "active": int(s_active.get(key, 0)),
                    "connections_total": int(s_total.get(key, 0)),
                    "connect_failures": int(s_failed.get(key, 0)),
                    "last_check": None
                    if check is None
                    else {
                        "ok": check.ok,
                        "detail": check.detail,
                        "time": iso_time(check.time),
                        "duration_ms": round(check.duration * 1000, 1),
                    },
                }
            )
        backends.append(
            {
                "name": name,
                "balance": be.balance,
                "send_proxy": be.send_proxy,
                "health": be.health.type,
                "servers": servers,
            }
        )
    r = view.reloads
    doc: dict[str, Any] = {
        "version": __version__,
        "pid": os.getpid(),
        "started": iso_time(view.started),
        "draining": view.draining,
        "config": {
            "path": cfg.path,
            "sha256": cfg.digest,
            "last_reload": {
                "time": iso_time(r.last_time),
                "result": r.last_result,
                "successes": r.success,
                "failures": r.failure,
            },
        },
        "workers": [],
        "listeners": listeners,
        "backends": backends,
    }
    doc.update(view.status_sections())  # workers, and the components' own (swarm discovery)
    return doc
