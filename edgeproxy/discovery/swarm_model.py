"""From the managers' API answers (``GET /services``, ``/tasks``, ``/nodes``) to backend servers.

Pure functions over decoded JSON: no sockets, no clock, so every rule here is tested on recorded
answers of a real engine (tests/unit/data/swarm/).

The algorithm is Prometheus' ``dockerswarm_sd`` (role tasks): a server is a running task's node
address plus the task's ``PublishMode: host`` port for the wanted target port. Ingress-mode ports
are never used: the routing mesh would hide the client address, which is the point of edgeproxy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeproxy.balance import Server, ServerState
from edgeproxy.config.model import Backend, Health, Listener, Route, SwarmConfig, SwarmRef

# Tasks on their way to running: discovery polls faster while it sees any (Swarm emits no task events).
TRANSIT_STATES = frozenset({"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"})
INGRESS_HINT = "publish it with mode: host, or edgeproxy can't see the client"


@dataclass(frozen=True, slots=True)
class Port:
    target: int
    published: int
    protocol: str  # tcp | udp | sctp
    mode: str  # host | ingress


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    hostname: str
    role: str  # manager | worker
    availability: str  # active | pause | drain
    state: str  # ready | down | unknown | disconnected
    addr: str  # Status.Addr
    manager_addr: str = ""  # ManagerStatus.Addr, "ip:2377" (the raft port, not the API)
    leader: bool = False
    reachability: str = ""  # reachable | unreachable | unknown

    @property
    def usable(self) -> bool:
        """May new connections go to this node's tasks?

        Not when the node is drained or paused, or down/disconnected. ``unknown`` is usable: after
        every leader change the new leader reports all workers ``unknown`` ("Node moved to unknown
        state due to leadership change") until they heartbeat again (recorded in
        tests/unit/data/swarm/lab-nodes-restarted.json); draining them then would turn a control
        plane hiccup into an outage of healthy tasks.
        """
        return self.availability == "active" and self.state not in ("down", "disconnected")


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    name: str
    labels: Mapping[str, str]
    mode: str  # replicated | global | replicated-job | global-job
    replicas: int | None
    ports: tuple[Port, ...]  # as the spec publishes them (Endpoint.Ports)


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    service_id: str
    node_id: str
    slot: int | None
    state: str  # Status.State
    desired: str  # DesiredState
    ports: tuple[Port, ...]  # Status.PortStatus.Ports, IPv4/IPv6 twins removed
    message: str = ""  # Status.Err or Status.Message


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent read of the cluster, from one manager."""

    services: tuple[Service, ...]
    tasks: tuple[Task, ...]
    nodes: tuple[Node, ...]
    manager: str = ""

    def service(self, name_or_id: str) -> Service | None:
        for s in self.services:
            if name_or_id in (s.name, s.id):
                return s
        return None

    def node(self, node_id: str) -> Node | None:
        for n in self.nodes:
            if n.id == node_id:
                return n
        return None


# -- parsing the API's JSON ------------------------------------------------------------------------
def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def parse_ports(items: Any) -> tuple[Port, ...]:
    """Port entries in order, duplicates removed: with the userland proxy the engine lists every
    host port twice, once per IPv4/IPv6 binding (TESTBED.md)."""
    out: dict[Port, None] = {}
    for p in _list(items):
        p = _dict(p)
        try:
            port = Port(
                target=int(p.get("TargetPort", 0)),
                published=int(p.get("PublishedPort", 0)),
                protocol=str(p.get("Protocol", "tcp")),
                mode=str(p.get("PublishMode", "ingress")),
            )
        except (TypeError, ValueError):
            continue
        out[port] = None
    return tuple(out)


def parse_nodes(data: Any) -> tuple[Node, ...]:
    nodes = []
    for n in _list(data):
        n = _dict(n)
        spec, status, mgr = _dict(n.get("Spec")), _dict(n.get("Status")), _dict(n.get("ManagerStatus"))
        nodes.append(
            Node(
                id=str(n.get("ID", "")),
                hostname=str(_dict(n.get("Description")).get("Hostname", "")),
                role=str(spec.get("Role", "worker")),
                availability=str(spec.get("Availability", "active")),
                state=str(status.get("State", "unknown")),
                addr=str(status.get("Addr", "")),
                manager_addr=str(mgr.get("Addr", "")),
                leader=bool(mgr.get("Leader", False)),
                reachability=str(mgr.get("Reachability", "")),
            )
        )
    return tuple(nodes)


def parse_services(data: Any) -> tuple[Service, ...]:
    services = []
    for s in _list(data):
        s = _dict(s)
        spec = _dict(s.get("Spec"))
        mode_spec = _dict(spec.get("Mode"))
        mode = next(iter(mode_spec), "replicated").lower()
        mode = {"replicatedjob": "replicated-job", "globaljob": "global-job"}.get(mode, mode)
        replicas = _dict(mode_spec.get("Replicated")).get("Replicas")
        # Endpoint.Ports is what the engine applied; EndpointSpec is the request (same for host mode).
        ports = _dict(s.get("Endpoint")).get("Ports") or _dict(spec.get("EndpointSpec")).get("Ports")
        labels = {str(k): str(v) for k, v in _dict(spec.get("Labels")).items()}
        services.append(
            Service(
                id=str(s.get("ID", "")),
                name=str(spec.get("Name", "")),
                labels=labels,
                mode=mode,
                replicas=int(replicas) if isinstance(replicas, int) else None,
                ports=parse_ports(ports),
            )
        )
    return tuple(services)


def parse_tasks(data: Any) -> tuple[Task, ...]:
    tasks = []
    for t in _list(data):
        t = _dict(t)
        status = _dict(t.get("Status"))
        slot = t.get("Slot")
        tasks.append(
            Task(
                id=str(t.get("ID", "")),
                service_id=str(t.get("ServiceID", "")),
                node_id=str(t.get("NodeID", "")),  # absent while the task is pending
                slot=slot if isinstance(slot, int) else None,
                state=str(status.get("State", "")),
                desired=str(t.get("DesiredState", "")),
                ports=parse_ports(_dict(status.get("PortStatus")).get("Ports")),
                message=str(status.get("Err") or status.get("Message") or ""),
            )
        )
    return tuple(tasks)


def parse_snapshot(services: Any, tasks: Any, nodes: Any, manager: str = "") -> Snapshot:
    return Snapshot(parse_services(services), parse_tasks(tasks), parse_nodes(nodes), manager)


# -- addresses ---------------------------------------------------------------------------------------
_UNSPECIFIED = frozenset({"", "0.0.0.0", "127.0.0.1", "::", "::1"})


def split_host(hostport: str) -> str:
    """The host of "ip:port" / "[v6]:port"."""
    if hostport.startswith("["):
        return hostport[1 : hostport.find("]")]
    host, sep, _port = hostport.rpartition(":")
    return host if sep and ":" not in host else hostport


def node_address(node: Node, overrides: Mapping[str, str]) -> str | None:
    """Where a node's published ports are reached.

    ``swarm.node_addresses`` (by hostname or node ID) wins. Otherwise ``Status.Addr``, except when
    a manager reports ``0.0.0.0``/``127.0.0.1`` there (moby/moby#35437: managers started with
    ``--listen-addr 0.0.0.0`` or on loopback): then the host of ``ManagerStatus.Addr``.
    """
    for key in (node.hostname, node.id):
        if key and key in overrides:
            return overrides[key]
    if node.addr not in _UNSPECIFIED:
        return node.addr
    if node.role == "manager" and node.manager_addr:
        host = split_host(node.manager_addr)
        if host not in ("", "0.0.0.0", "::"):
            return host
    if node.addr in ("127.0.0.1", "::1"):
        return node.addr
    return None


# -- servers -------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Resolved:
    """The servers for one (service, target port), and why there may be none."""

    servers: list[Server] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def ingress_problem(service: Service, target: int, protocol: str) -> str | None:
    """A hint when the service publishes ``target`` only through the routing mesh."""
    wanted = [p for p in service.ports if p.target == target and p.protocol == protocol]
    if wanted and all(p.mode == "ingress" for p in wanted):
        pub = wanted[0].published
        return f"service {service.name}: port {target}/{protocol} is published in ingress mode (:{pub}); {INGRESS_HINT}"
    return None


def servers_for(
    snap: Snapshot,
    service: Service,
    target: int,
    protocol: str,
    overrides: Mapping[str, str],
) -> Resolved:
    """Servers of ``service`` for ``target``: one per running task's host-mode published port.

    Tasks on a node that is not ready, or is drained/paused, are listed in DRAIN (no new
    connections; open ones finish) rather than dropped, so a refresh that sees the node come back
    simply returns them to UP.
    """
    out = Resolved()
    hint = ingress_problem(service, target, protocol)
    if hint:
        out.problems.append(hint)
        return out
    seen: dict[tuple[str, int], Server] = {}
    for task in snap.tasks:
        if task.service_id != service.id or task.state != "running" or task.desired != "running":
            continue
        node = snap.node(task.node_id)
        if node is None:
            continue
        ports = [p for p in task.ports if p.target == target and p.protocol == protocol and p.mode == "host"]
        if not ports:
            continue
        addr = node_address(node, overrides)
        if addr is None:
            out.problems.append(
                f"node {node.hostname or node.id}: no usable address (Status.Addr {node.addr!r}); "
                "set swarm.node_addresses"
            )
            continue
        for p in ports:
            key = (addr, p.published)
            if key in seen:
                if node.usable:  # two tasks on one address: UP wins over DRAIN
                    seen[key].state = ServerState.UP
                continue
            server = Server(
                addr,
                p.published,
                source="swarm",
                meta={
                    "service": service.name,
                    "task": task.id,
                    "slot": "" if task.slot is None else str(task.slot),
                    "node": node.hostname or node.id,
                    "node_id": node.id,
                },
            )
            if not node.usable:
                server.state = ServerState.DRAIN
            seen[key] = server
    out.servers = list(seen.values())
    return out


def in_transit(snap: Snapshot, service_ids: Iterable[str]) -> bool:
    """Are tasks of these services on their way to running (scale-up, rescheduling after a drain)?"""
    ids = set(service_ids)
    return any(t.service_id in ids and t.desired == "running" and t.state in TRANSIT_STATES for t in snap.tasks)


# -- labels ----------------------------------------------------------------------------------------------
LABEL_PREFIX = "edgeproxy."
LABEL_KEYS = frozenset(
    {
        "enable",
        "port",
        "listener",
        "host",
        "path_prefix",
        "balance",
        "send_proxy",
        "health.path",
    }
)
_HOST_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?$")


@dataclass(frozen=True, slots=True)
class LabelBackend:
    """A backend (and its HTTP route) built from a service's ``edgeproxy.*`` labels."""

    service: str
    backend: Backend
    port: int
    listener: str | None  # the http listener that gets the route; None: no http listener at all
    route: Route | None


class LabelError(ValueError):
    pass


def label_enabled(service: Service) -> bool:
    return service.labels.get(LABEL_PREFIX + "enable", "").strip().lower() == "true"


def label_backend(service: Service, listeners: Sequence[Listener], protocol: str = "tcp") -> LabelBackend:
    """Read a labelled service; raise ``LabelError`` naming the bad label (the service is skipped)."""
    labels = {k[len(LABEL_PREFIX) :]: v.strip() for k, v in service.labels.items() if k.startswith(LABEL_PREFIX)}
    name = service.name
    unknown = sorted(set(labels) - LABEL_KEYS)
    if unknown:
        raise LabelError(
            f"service {name}: unknown label {LABEL_PREFIX}{unknown[0]} (known: "
            + ", ".join(LABEL_PREFIX + k for k in sorted(LABEL_KEYS))
            + ")"
        )
    # port: the label, or the only target port the service publishes
    if "port" in labels:
        try:
            port = int(labels["port"])
        except ValueError:
            port = 0
        if not 1 <= port <= 65535:
            raise LabelError(f"service {name}: {LABEL_PREFIX}port={labels['port']!r} is not a port number")
    else:
        targets = sorted({p.target for p in service.ports if p.protocol == protocol})
        if not targets:
            raise LabelError(f"service {name}: publishes no {protocol} port; publish one with mode: host")
        if len(targets) > 1:
            raise LabelError(
                f"service {name}: publishes ports {', '.join(map(str, targets))}; say which with {LABEL_PREFIX}port"
            )
        port = targets[0]
    balance = labels.get("balance", "roundrobin")
    if balance not in ("roundrobin", "leastconn", "source", "random"):
        raise LabelError(
            f"service {name}: {LABEL_PREFIX}balance={balance!r} is not one of roundrobin, leastconn, source, random"
        )
    send_proxy = labels.get("send_proxy", "none")
    if send_proxy not in ("none", "v1", "v2"):
        raise LabelError(f"service {name}: {LABEL_PREFIX}send_proxy={send_proxy!r} is not one of none, v1, v2")
    health = Health()
    if "health.path" in labels:
        path = labels["health.path"]
        if not path.startswith("/") or any(c.isspace() for c in path):
            raise LabelError(f"service {name}: {LABEL_PREFIX}health.path={path!r} must be a path starting with /")
        health = Health(type="http", path=path)
    host = labels.get("host") or None
    if host is not None:
        host = host.lower()
        if not _HOST_RE.match(host):
            raise LabelError(f"service {name}: {LABEL_PREFIX}host={host!r} is not a host name")
        host = host.rstrip(".")
    prefix = labels.get("path_prefix") or None
    if prefix is not None and (not prefix.startswith("/") or any(c.isspace() for c in prefix)):
        raise LabelError(f"service {name}: {LABEL_PREFIX}path_prefix={prefix!r} must start with /")
    http = [lst for lst in listeners if lst.mode == "http"]
    listener: str | None
    if "listener" in labels:
        listener = labels["listener"]
        match = next((lst for lst in listeners if lst.name == listener), None)
        if match is None:
            known = ", ".join(lst.name for lst in http) or "none"
            raise LabelError(
                f"service {name}: {LABEL_PREFIX}listener={listener!r}: no such listener (http listeners: {known})"
            )
        if match.mode != "http":
            raise LabelError(
                f"service {name}: {LABEL_PREFIX}listener={listener!r} is a {match.mode} listener; routes need http"
            )
    else:
        listener = http[0].name if http else None
    backend = Backend(
        name=name,
        balance=balance,  # type: ignore[arg-type]  # checked above
        send_proxy=send_proxy,  # type: ignore[arg-type]
        health=health,
        swarm=SwarmRef(service=name, port=port),
    )
    route = Route(backend=name, host=host, path_prefix=prefix) if listener is not None else None
    return LabelBackend(service=name, backend=backend, port=port, listener=listener, route=route)


def route_order(route: Route) -> tuple[bool, int, str]:
    """Label routes are tried most specific first: with a host, then the longest path prefix."""
    return (route.host is None, -len(route.path_prefix or ""), route.backend)


# -- the whole picture -----------------------------------------------------------------------------
@dataclass(slots=True)
class Discovery:
    """What one snapshot means for the config: servers per backend, label backends, problems."""

    servers: dict[str, list[Server]] = field(default_factory=dict)
    labelled: dict[str, LabelBackend] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    relevant: set[str] = field(default_factory=set)  # IDs of the services that feed a backend


def backend_protocol(name: str, listeners: Sequence[Listener]) -> str:
    """udp when a udp listener uses the backend: then the service's udp port is wanted."""
    for lst in listeners:
        if lst.mode == "udp" and (lst.backend == name or any(r.backend == name for r in lst.routes)):
            return "udp"
    return "tcp"


def resolve(
    snap: Snapshot,
    backends: Mapping[str, Backend],
    listeners: Sequence[Listener],
    swarm: SwarmConfig,
) -> Discovery:
    out = Discovery()
    overrides = swarm.node_addresses
    for name, be in backends.items():
        if be.swarm is None:
            continue
        service = snap.service(be.swarm.service)
        if service is None:
            out.servers[name] = []
            out.problems.append(f"backend {name}: no service named {be.swarm.service!r} in the swarm")
            continue
        out.relevant.add(service.id)
        got = servers_for(snap, service, be.swarm.port, backend_protocol(name, listeners), overrides)
        out.servers[name] = got.servers
        out.problems.extend(f"backend {name}: {p}" for p in got.problems)
    if not swarm.labels:
        return out
    for service in snap.services:
        if not label_enabled(service):
            continue
        if service.name in backends:
            out.problems.append(
                f"service {service.name}: labelled edgeproxy.enable=true, but backend {service.name!r} is "
                "defined in the config; the config wins"
            )
            continue
        protocol = backend_protocol(service.name, listeners)
        try:
            lb = label_backend(service, listeners, protocol)
        except LabelError as e:
            out.problems.append(f"{e}; service skipped")
            continue
        out.relevant.add(service.id)
        out.labelled[service.name] = lb
        got = servers_for(snap, service, lb.port, protocol, overrides)
        out.servers[service.name] = got.servers
        out.problems.extend(got.problems)
    return out


# -- quorum ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Quorum:
    managers: int
    quorum: int
    tolerated: int
    warnings: tuple[str, ...]


def quorum(managers: int) -> Quorum:
    """Raft arithmetic for N managers, with Docker's advice (odd N, at most 7)."""
    q = managers // 2 + 1 if managers > 0 else 0
    tolerated = (managers - 1) // 2 if managers > 0 else 0
    warnings = []
    if managers == 0:
        warnings.append("no manager answered: the cluster's managers are unknown")
    elif managers == 1:
        warnings.append("a single manager: if it fails, no service can change (running tasks keep serving)")
    elif managers % 2 == 0:
        warnings.append(
            f"{managers} managers tolerate no more failures than {managers - 1} would ({tolerated}); "
            "Docker advises an odd number"
        )
    if managers > 7:
        warnings.append(f"{managers} managers: more than 7 slows every change down; Docker advises at most 7")
    return Quorum(managers, q, tolerated, tuple(warnings))


def manager_urls(snap: Snapshot, configured: Sequence[str]) -> list[str]:
    """API URLs of the cluster's other managers, for failover beyond the configured list.

    ``ManagerStatus.Addr`` is the raft port (2377), not the API: the API is assumed on the same
    scheme and port as the first configured tcp:// or https:// manager (a unix socket reaches
    only its own machine, so from unix:// managers alone nothing can be learnt).
    """
    template = next((u for u in configured if u.startswith(("tcp://", "https://"))), None)
    if template is None:
        return []
    scheme, _, rest = template.partition("://")
    hostport = rest.split("/", 1)[0]
    port = hostport.rsplit(":", 1)[1] if hostport.rsplit(":", 1)[-1].isdigit() and ":" in hostport else ""
    out = []
    for node in snap.nodes:
        if node.role != "manager" or not node.manager_addr:
            continue
        host = split_host(node.manager_addr)
        if host in ("", "0.0.0.0", "::"):
            continue
        h = f"[{host}]" if ":" in host else host
        url = f"{scheme}://{h}:{port}" if port else f"{scheme}://{h}"
        if url not in configured and url not in out:
            out.append(url)
    return out
