"""``edgeproxy swarm status``: what discovery sees, for an operator (table) or a script (``--json``).

Managers as configured (reachable? a manager? the leader?), the raft arithmetic of the cluster,
services -> tasks -> the servers they give, and each backend's resulting servers.
"""

from __future__ import annotations

from typing import Any

from edgeproxy.config import Config
from edgeproxy.config.model import SwarmConfig
from edgeproxy.discovery.docker_api import DockerAPI, DockerError
from edgeproxy.discovery.swarm import fetch_snapshot
from edgeproxy.discovery.swarm_model import (
    Snapshot,
    ingress_problem,
    manager_urls,
    node_address,
    quorum,
    resolve,
)


async def probe_manager(url: str, swarm: SwarmConfig) -> dict[str, Any]:
    entry: dict[str, Any] = {"url": url, "reachable": False, "manager": False, "leader": False}
    try:
        info = await DockerAPI(url, swarm.tls, swarm.timeout).get("/info")
    except DockerError as e:
        entry["error"] = str(e)
        return entry
    sw = info.get("Swarm") or {}
    entry.update(
        reachable=True,
        manager=bool(sw.get("ControlAvailable")),
        node=str(info.get("Name", "")),
        node_id=str(sw.get("NodeID", "")),
        swarm_state=str(sw.get("LocalNodeState", "")),
    )
    if sw.get("Error"):
        entry["error"] = str(sw["Error"])
    return entry


async def gather(config: Config) -> dict[str, Any]:
    """Everything ``swarm status`` shows, as JSON-ready data."""
    swarm = config.swarm
    assert swarm is not None
    managers = [await probe_manager(url, swarm) for url in swarm.managers]
    snap: Snapshot | None = None
    errors: list[str] = []
    for entry in sorted(managers, key=lambda m: not m["manager"]):
        try:
            snap = await fetch_snapshot(DockerAPI(entry["url"], swarm.tls, swarm.timeout), lambda s: True)
            break
        except DockerError as e:
            errors.append(f"{entry['url']}: {e}")
    out: dict[str, Any] = {"managers": managers, "answered": snap.manager if snap else None, "errors": errors}
    if snap is None:
        return out
    leader = next((n.id for n in snap.nodes if n.leader), None)
    for m in managers:
        m["leader"] = bool(leader and m.get("node_id") == leader)
    cluster = [n for n in snap.nodes if n.role == "manager"]
    q = quorum(len(cluster))
    out["cluster"] = {
        "managers": [
            {
                "node": n.hostname,
                "id": n.id,
                "address": n.manager_addr,
                "reachability": n.reachability,
                "leader": n.leader,
                "availability": n.availability,
            }
            for n in cluster
        ],
        "other_manager_urls": manager_urls(snap, swarm.managers),
        "quorum": {"managers": q.managers, "quorum": q.quorum, "tolerated": q.tolerated, "warnings": list(q.warnings)},
        "nodes": [
            {
                "node": n.hostname,
                "id": n.id,
                "role": n.role,
                "state": n.state,
                "availability": n.availability,
                "address": node_address(n, swarm.node_addresses),
            }
            for n in snap.nodes
        ],
    }
    services = []
    for s in snap.services:
        tasks = [t for t in snap.tasks if t.service_id == s.id]
        hints = {h for p in s.ports if (h := ingress_problem(s, p.target, p.protocol))}
        services.append(
            {
                "name": s.name,
                "id": s.id,
                "mode": s.mode,
                "replicas": s.replicas,
                "running": sum(1 for t in tasks if t.state == "running"),
                "ports": [
                    {"target": p.target, "published": p.published, "protocol": p.protocol, "mode": p.mode}
                    for p in s.ports
                ],
                "ingress": sorted(hints),
                "labels": {k: v for k, v in s.labels.items() if k.startswith("edgeproxy.")},
                "tasks": [
                    {
                        "id": t.id,
                        "slot": t.slot,
                        "node": (node.hostname if (node := snap.node(t.node_id)) else t.node_id),
                        "address": node_address(node, swarm.node_addresses) if node else None,
                        "state": t.state,
                        "desired": t.desired,
                        "ports": [f"{p.published}->{p.target}/{p.protocol} {p.mode}" for p in t.ports],
                        "message": t.message,
                    }
                    for t in tasks
                ],
            }
        )
    out["services"] = services
    result = resolve(snap, config.backends, config.listeners, swarm)
    backends = []
    for name, servers in result.servers.items():
        lb = result.labelled.get(name)
        be = lb.backend if lb else config.backends[name]
        assert be.swarm is not None
        row: dict[str, Any] = {
            "name": name,
            "from": "labels" if lb else "config",
            "service": be.swarm.service,
            "port": be.swarm.port,
            "servers": [
                {
                    "address": srv.name,
                    "state": str(srv.state),
                    "task": srv.meta.get("task"),
                    "node": srv.meta.get("node"),
                }
                for srv in servers
            ],
        }
        if lb is not None:
            row["listener"] = lb.listener
            if lb.route is not None:
                row["route"] = {"host": lb.route.host, "path_prefix": lb.route.path_prefix}
        backends.append(row)
    out["backends"] = backends
    out["problems"] = result.problems
    return out


# -- the table ------------------------------------------------------------------------------------------
def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render(st: dict[str, Any]) -> str:
    lines = ["Managers (swarm.managers)"]
    rows = [["URL", "REACHABLE", "ROLE", "NODE", "LEADER"]]
    for m in st["managers"]:
        if not m["reachable"]:
            rows.append([m["url"], "no", "-", "-", m.get("error", "")])
            continue
        role = "manager" if m["manager"] else f"not a manager ({m.get('swarm_state') or 'no swarm'})"
        rows.append([m["url"], "yes", role, m.get("node", ""), "yes" if m["leader"] else ""])
    lines += _table(rows)
    if st.get("answered") is None:
        lines += ["", "No manager answered: " + "; ".join(st["errors"])]
        return "\n".join(lines) + "\n"
    cl = st["cluster"]
    q = cl["quorum"]
    lines += [
        "",
        f"Cluster: {q['managers']} manager(s), quorum {q['quorum']}, "
        f"tolerates {q['tolerated']} manager failure(s)   (read through {st['answered']})",
    ]
    rows = [["NODE", "ID", "RAFT ADDRESS", "REACHABILITY", "LEADER"]]
    for m in cl["managers"]:
        rows.append([m["node"], m["id"][:12], m["address"], m["reachability"], "*" if m["leader"] else ""])
    lines += _table(rows)
    lines += [f"  warning: {w}" for w in q["warnings"]]
    if cl["other_manager_urls"]:
        lines.append("  failover also tries: " + ", ".join(cl["other_manager_urls"]))
    lines += ["", "Nodes"]
    rows = [["NODE", "ROLE", "STATE", "AVAILABILITY", "ADDRESS"]]
    for n in cl["nodes"]:
        rows.append(
            [n["node"], n["role"], n["state"], n["availability"], n["address"] or "? (set swarm.node_addresses)"]
        )
    lines += _table(rows)
    lines += ["", "Services"]
    if not st["services"]:
        lines.append("  (none)")
    for s in st["services"]:
        want = f"{s['running']}/{s['replicas']}" if s["replicas"] is not None else f"{s['running']} running"
        ports = ", ".join(f"{p['target']}->{p['published'] or '?'}/{p['protocol']} {p['mode']}" for p in s["ports"])
        lines.append(f"  {s['name']}  {s['mode']} {want}  ports: {ports or 'none'}")
        lines += [f"    ! {h}" for h in s["ingress"]]
        for t in s["tasks"]:
            slot = f".{t['slot']}" if t["slot"] is not None else ""
            where = f"{t['node'] or '-'} ({t['address'] or 'no address'})" if t["node"] else "(not placed)"
            extra = f"  {t['message']}" if t["state"] != "running" and t["message"] not in ("", t["state"]) else ""
            tports = ", ".join(t["ports"]) or "-"
            lines.append(f"    {s['name']}{slot} {t['id'][:12]}  {where}  {t['state']}  {tports}{extra}")
    lines += ["", "Backends"]
    if not st["backends"]:
        lines.append("  (no backend uses swarm discovery)")
    for b in st["backends"]:
        origin = f"{b['from']}: service {b['service']}, port {b['port']}"
        if b.get("route") is not None:
            r = b["route"]
            origin += f"; route on {b['listener']}: host {r['host'] or '*'} path {r['path_prefix'] or '/'}"
        lines.append(f"  {b['name']}  ({origin})  {len(b['servers'])} server(s)")
        for srv in b["servers"]:
            lines.append(f"    {srv['address']}  {srv['state']}  task {(srv['task'] or '')[:12]} on {srv['node']}")
    if st["problems"]:
        lines += ["", "Problems"] + [f"  ! {p}" for p in st["problems"]]
    return "\n".join(lines) + "\n"
