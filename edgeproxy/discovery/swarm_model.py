"""Pure functions from the Engine API's JSON (GET /nodes, /services, /tasks) to edgeproxy's view
of a swarm: nodes with the address clients can reach them at, services with their published ports,
and the servers of a backend. No I/O here, so every rule is unit-tested on recorded responses.

The algorithm is Prometheus' ``dockerswarm_sd`` (role tasks): a server is the address of the node
that runs a task + that task's host-mode ``PublishedPort``. Overlay task IPs are never used: they are
unreachable from outside the cluster.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeproxy.balance import Server, ServerState

INGRESS_HINT = "publish it with mode: host, or edgeproxy can't see the client"
_UNSPECIFIED = ("0.0.0.0", "127.0.0.1", "::", "::1", "")


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    hostname: str
    address: str  # where clients reach this node's host-mode ports
    role: str  # manager | worker
    availability: str  # active | pause | drain
    state: str  # ready | down | unknown | disconnected
    leader: bool = False
    manager_addr: str | None = None  # ManagerStatus.Addr (ip:2377, the raft port, not the API)
    reachability: str | None = None

    @property
    def accepts(self) -> bool:
        """May this node's servers get new connections?"""
        return self.state == "ready" and self.availability == "active"


@dataclass(frozen=True, slots=True)
class PortEntry:
    target: int
    published: int
    mode: str  # host | ingress
    protocol: str  # tcp | udp | sctp


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    name: str
    labels: Mapping[str, str]
    ports: tuple[PortEntry, ...]  # from Endpoint.Ports (what is published) or Spec.EndpointSpec
    mode: str  # replicated | global
    replicas: int | None

    def ingress_ports(self) -> list[PortEntry]:
        return [p for p in self.ports if p.mode == "ingress"]


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    service_id: str
    node_id: str
    slot: int | None
    state: str  # Status.State
    desired: str  # DesiredState
    ports: tuple[PortEntry, ...] = field(default=())

    @property
    def running(self) -> bool:
        return self.state == "running" and self.desired == "running"

    @property
    def converging(self) -> bool:
        """Desired running but not there yet: the scheduler is still placing or starting it."""
        return self.desired == "running" and self.state in (
            "new",
            "allocated",
            "pending",
            "assigned",
            "accepted",
            "preparing",
            "ready",
            "starting",
        )


def _ports(entries: Any) -> tuple[PortEntry, ...]:
    """Port entries with the IPv4/IPv6 twins the engine reports for each host binding merged."""
    out: list[PortEntry] = []
    for p in entries or ():
        if not isinstance(p, dict) or "TargetPort" not in p:
            continue
        entry = PortEntry(
            int(p["TargetPort"]),
            int(p.get("PublishedPort") or 0),
            str(p.get("PublishMode") or "ingress"),
            str(p.get("Protocol") or "tcp"),
        )
        if entry not in out:
            out.append(entry)
    return tuple(out)


def _host_of(addr: str) -> str:
    """'10.0.0.1:2377' -> '10.0.0.1'; '[fd00::1]:2377' -> 'fd00::1'."""
    if addr.startswith("["):
        return addr[1:].partition("]")[0]
    return addr.rpartition(":")[0] if addr.count(":") == 1 else addr


def node_address(raw: Mapping[str, Any], overrides: Mapping[str, str]) -> str:
    """``Status.Addr``, except ``0.0.0.0``/``127.0.0.1`` on a manager: the host of ManagerStatus.Addr.

    ``swarm.node_addresses`` (by hostname or node ID) overrides either.
    """
    hostname = str(raw.get("Description", {}).get("Hostname", ""))
    node_id = str(raw.get("ID", ""))
    for key in (node_id, hostname):
        if key and key in overrides:
            return overrides[key]
    addr = str(raw.get("Status", {}).get("Addr") or "")
    manager = raw.get("ManagerStatus") or {}
    if addr in _UNSPECIFIED and manager.get("Addr"):
        addr = _host_of(str(manager["Addr"]))
    return addr


def parse_nodes(data: Iterable[Mapping[str, Any]], overrides: Mapping[str, str] | None = None) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    for raw in data:
        spec = raw.get("Spec", {})
        manager = raw.get("ManagerStatus") or {}
        node = Node(
            id=str(raw["ID"]),
            hostname=str(raw.get("Description", {}).get("Hostname", "")),
            address=node_address(raw, overrides or {}),
            role=str(spec.get("Role", "worker")),
            availability=str(spec.get("Availability", "active")),
            state=str(raw.get("Status", {}).get("State", "unknown")),
            leader=bool(manager.get("Leader", False)),
            manager_addr=str(manager["Addr"]) if manager.get("Addr") else None,
            reachability=str(manager["Reachability"]) if manager.get("Reachability") else None,
        )
        nodes[node.id] = node
    return nodes


def parse_services(data: Iterable[Mapping[str, Any]]) -> dict[str, Service]:
    """Services by name."""
    services: dict[str, Service] = {}
    for raw in data:
        spec = raw.get("Spec", {})
        endpoint = raw.get("Endpoint", {})
        # Endpoint.Ports is what the swarm actually published; the spec is the fallback while a
        # new service is being allocated.
        ports = _ports(endpoint.get("Ports") or spec.get("EndpointSpec", {}).get("Ports"))
        mode_spec = spec.get("Mode", {})
        replicas = mode_spec.get("Replicated", {}).get("Replicas") if "Replicated" in mode_spec else None
        svc = Service(
            id=str(raw["ID"]),
            name=str(spec.get("Name", raw["ID"])),
            labels=dict(spec.get("Labels") or {}),
            ports=ports,
            mode="replicated" if "Replicated" in mode_spec else "global",
            replicas=int(replicas) if replicas is not None else None,
        )
        services[svc.name] = svc
    return services


def parse_tasks(data: Iterable[Mapping[str, Any]]) -> list[Task]:
    tasks: list[Task] = []
    for raw in data:
        status = raw.get("Status", {})
        tasks.append(
            Task(
                id=str(raw["ID"]),
                service_id=str(raw.get("ServiceID", "")),
                node_id=str(raw.get("NodeID", "")),
                slot=int(raw["Slot"]) if raw.get("Slot") is not None else None,
                state=str(status.get("State", "")),
                desired=str(raw.get("DesiredState", "")),
                ports=_ports((status.get("PortStatus") or {}).get("Ports")),
            )
        )
    return tasks


def servers_for(
    service: Service,
    tasks: Iterable[Task],
    nodes: Mapping[str, Node],
    target_port: int,
    protocol: str = "tcp",
) -> list[Server]:
    """One server per running task with a host-mode binding of ``target_port``.

    Servers on a node that is not ready, or is drained/paused, are listed in state DRAIN: they get
    no new connections and the pool keeps their counters. A task on an unknown node or a node
    without an address is left out (there is nowhere to connect).
    """
    out: dict[tuple[str, int], Server] = {}
    for task in tasks:
        if task.service_id != service.id or not task.running:
            continue
        node = nodes.get(task.node_id)
        if node is None or not node.address:
            continue
        for p in task.ports:
            if p.mode != "host" or p.target != target_port or p.protocol != protocol or not p.published:
                continue
            host = _canonical_host(node.address)
            server = Server(
                host,
                p.published,
                source="swarm",
                meta={"service": service.name, "task": task.id, "node": node.hostname or node.id},
            )
            if not node.accepts:
                server.state = ServerState.DRAIN
            out.setdefault(server.key, server)
    return sorted(out.values(), key=lambda s: s.key)


def _canonical_host(host: str) -> str:
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host  # a hostname from node_addresses is used as given


@dataclass(frozen=True, slots=True)
class Quorum:
    managers: int
    quorum: int
    tolerated: int
    warnings: tuple[str, ...]


def quorum_table(n: int) -> Quorum:
    """Raft arithmetic for N managers, with Docker's advice (odd count, at most 7)."""
    warnings: list[str] = []
    if n > 0 and n % 2 == 0:
        warnings.append(f"{n} managers tolerate no more failures than {n - 1}: use an odd number of managers")
    if n > 7:
        warnings.append(f"{n} managers: Docker advises at most 7 (more slow down every raft write)")
    if n == 1:
        warnings.append("1 manager: losing it stops all changes to the swarm (tasks keep running)")
    return Quorum(n, n // 2 + 1 if n else 0, (n - 1) // 2 if n else 0, tuple(warnings))
