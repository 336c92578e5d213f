"""``edgeproxy swarm status``: what discovery sees, as a table or JSON.

Managers (each configured endpoint: reachable or why not; the swarm's managers with leader and
reachability), the quorum table for this cluster, then services -> tasks -> servers, with
ingress-mode ports flagged.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from edgeproxy.config import Config
from edgeproxy.discovery.docker_api import APIError
from edgeproxy.discovery.swarm import Snapshot, fetch_snapshot, make_clients
from edgeproxy.discovery.swarm_model import INGRESS_HINT, quorum_table, servers_for


async def collect(config: Config) -> dict[str, Any]:
    assert config.swarm is not None
    endpoints: list[dict[str, Any]] = []
    snap: Snapshot | None = None
    for client in make_clients(config.swarm):
        try:
            got = await fetch_snapshot(client, config.swarm.node_addresses)
        except APIError as e:
            endpoints.append({"url": client.url, "reachable": False, "error": e.message})
            continue
        endpoints.append({"url": client.url, "reachable": True})
        snap = snap or got
    report: dict[str, Any] = {"endpoints": endpoints, "swarm_up": snap is not None}
    if snap is None:
        return report
    managers = [n for n in snap.nodes.values() if n.role == "manager"]
    q = quorum_table(len(managers))
    report["managers"] = [
        {"node": n.hostname, "id": n.id, "addr": n.manager_addr, "reachability": n.reachability, "leader": n.leader}
        for n in managers
    ]
    report["quorum"] = {"managers": q.managers, "quorum": q.quorum, "tolerated": q.tolerated, "warnings": q.warnings}
    report["nodes"] = [
        {"node": n.hostname, "address": n.address, "state": n.state, "availability": n.availability}
        for n in snap.nodes.values()
    ]
    wanted = {be.swarm.service: be.swarm.port for be in config.backends.values() if be.swarm is not None}
    services = []
    for svc in sorted(snap.services.values(), key=lambda s: s.name):
        tasks = [t for t in snap.tasks if t.service_id == svc.id]
        host_targets = sorted({p.target for p in svc.ports if p.mode == "host"})
        targets = [wanted[svc.name]] if svc.name in wanted else host_targets
        servers = [s for port in targets for s in servers_for(svc, snap.tasks, snap.nodes, port)]
        services.append(
            {
                "service": svc.name,
                "labels": {k: v for k, v in svc.labels.items() if k.startswith("edgeproxy.")},
                "ports": [f"{p.published}->{p.target}/{p.protocol} {p.mode}" for p in svc.ports],
                "ingress_warning": INGRESS_HINT if svc.ingress_ports() else None,
                "tasks": [
                    {
                        "task": t.id,
                        "node": snap.nodes[t.node_id].hostname if t.node_id in snap.nodes else t.node_id,
                        "state": t.state,
                    }
                    for t in tasks
                ],
                "servers": [{"server": s.name, "state": s.state.value, **s.meta} for s in servers],
            }
        )
    report["services"] = services
    return report


def render(report: dict[str, Any]) -> str:
    out: list[str] = ["API endpoints:"]
    for e in report["endpoints"]:
        out.append(f"  {e['url']:<40} {'reachable' if e['reachable'] else 'UNREACHABLE: ' + e['error']}")
    if not report["swarm_up"]:
        out.append("no manager answered: the swarm's state is unknown")
        return "\n".join(out)
    out.append("\nmanagers:")
    out.append(f"  {'NODE':<20} {'ADDR':<24} {'REACHABILITY':<13} LEADER")
    for m in report["managers"]:
        out.append(
            f"  {m['node']:<20} {m['addr'] or '-':<24} {m['reachability'] or '-':<13} {'yes' if m['leader'] else ''}"
        )
    q = report["quorum"]
    out.append(f"\nquorum: {q['managers']} manager(s), quorum {q['quorum']}, failures tolerated {q['tolerated']}")
    out.extend(f"  WARNING: {w}" for w in q["warnings"])
    out.append("\nnodes:")
    for n in report["nodes"]:
        out.append(f"  {n['node']:<20} {n['address']:<24} {n['state']:<8} {n['availability']}")
    out.append("\nservices:")
    for s in report["services"]:
        out.append(f"  {s['service']}  ports: {', '.join(s['ports']) or '-'}")
        if s["ingress_warning"]:
            out.append(f"    WARNING: ingress-mode port: {s['ingress_warning']}")
        for t in s["tasks"]:
            out.append(f"    task {t['task'][:12]} on {t['node']}: {t['state']}")
        for srv in s["servers"]:
            out.append(f"    -> server {srv['server']} ({srv['state']})")
    return "\n".join(out)


def main(config: Config, as_json: bool) -> int:
    if config.swarm is None:
        print(f"{config.path}: no 'swarm:' section; nothing to discover")
        return 1
    report = asyncio.run(collect(config))
    print(json.dumps(report, indent=2) if as_json else render(report))
    return 0 if report["swarm_up"] else 2
