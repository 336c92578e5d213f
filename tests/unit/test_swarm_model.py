"""Swarm discovery's rules, on answers recorded from real engines (tests/unit/data/swarm/):

- ``single-*``: a one-node swarm (dockerd 20.10.24) with services ``web`` (host port 18082, a
  second replica Pending: "host-mode port already in use"), ``dyn`` (two replicas, two dynamic host
  ports each), ``ing`` (ingress mode, labelled). Recorded with the userland proxy on 0.0.0.0 and
  [::], so every host port is listed twice.
- ``lab-*``: testbed/swarmlab.sh, 3 managers + 1 worker (10.77.0.11-14), global service ``web``
  on host port 18090; ``-drain`` after ``docker node update --availability drain node4``;
  ``-restarted`` right after the leader (node1) was stopped and a new leader elected;
  ``lab-noleader-500.json``: a manager's answer with 2 of 3 managers down.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.config import Listener, Route, parse_config
from edgeproxy.config.model import SwarmConfig
from edgeproxy.discovery.docker_api import classify, negotiate
from edgeproxy.discovery.swarm_model import (
    INGRESS_HINT,
    LabelError,
    Node,
    Service,
    in_transit,
    label_backend,
    manager_urls,
    node_address,
    parse_nodes,
    parse_ports,
    parse_services,
    parse_snapshot,
    quorum,
    resolve,
    route_order,
    servers_for,
)

DATA = Path(__file__).parent / "data" / "swarm"


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def snapshot(prefix: str, nodes: str = "", tasks: str = "") -> Any:
    return parse_snapshot(
        load(f"{prefix}-services.json"),
        load(tasks or f"{prefix}-tasks.json"),
        load(nodes or f"{prefix}-nodes.json"),
    )


def names(servers: list[Any]) -> list[str]:
    return sorted(f"{s.name} {s.state}" for s in servers)


# -- parsing --------------------------------------------------------------------------------------
def test_twin_port_entries_are_one_port() -> None:
    task = next(t for t in load("single-tasks.json") if t["ID"].startswith("p0ynv9"))
    raw = task["Status"]["PortStatus"]["Ports"]
    assert len(raw) == 2 and raw[0] == raw[1]  # the engine lists the IPv4 and IPv6 bindings
    ports = parse_ports(raw)
    assert [(p.target, p.published, p.protocol, p.mode) for p in ports] == [(80, 18082, "tcp", "host")]


def test_services_parse_modes_ports_labels() -> None:
    services = {s.name: s for s in parse_services(load("single-services.json"))}
    assert services["web"].mode == "replicated" and services["web"].replicas == 2
    assert services["web"].labels == {"edgeproxy.host": "x.example"}
    assert [(p.target, p.mode) for p in services["dyn"].ports] == [(8080, "host"), (80, "host")]
    assert [(p.target, p.published, p.mode) for p in services["ing"].ports] == [(80, 18083, "ingress")]
    (lab,) = parse_services(load("lab-services.json"))
    assert lab.mode == "global" and lab.replicas is None


# -- servers ----------------------------------------------------------------------------------------
def test_host_mode_service_gives_one_server_per_running_task() -> None:
    snap = snapshot("single")
    web = snap.service("web")
    assert web is not None
    got = servers_for(snap, web, 80, "tcp", {})
    # web.2 is Pending (no NodeID, no ports): not a server
    assert names(got.servers) == ["127.0.0.1:18082 up"]
    (server,) = got.servers
    assert server.source == "swarm"
    assert server.meta == {
        "service": "web",
        "task": "p0ynv91ji9p598r8bblr49ewn",
        "slot": "1",
        "node": "vm",
        "node_id": "ul7469q43afn8wh5oghw4xw1f",
    }
    assert in_transit(snap, [web.id])  # the pending replica: discovery polls faster


def test_target_port_selects_among_several_published_ports() -> None:
    snap = snapshot("single")
    dyn = snap.service("dyn")
    assert dyn is not None
    assert names(servers_for(snap, dyn, 80, "tcp", {}).servers) == ["127.0.0.1:32770 up", "127.0.0.1:32771 up"]
    assert names(servers_for(snap, dyn, 8080, "tcp", {}).servers) == ["127.0.0.1:32768 up", "127.0.0.1:32769 up"]
    assert servers_for(snap, dyn, 80, "udp", {}).servers == []
    assert not in_transit(snap, [dyn.id])


def test_ingress_port_is_reported_not_used() -> None:
    snap = snapshot("single")
    ing = snap.service("ing")
    assert ing is not None
    got = servers_for(snap, ing, 80, "tcp", {})
    assert got.servers == []
    assert got.problems == [f"service ing: port 80/tcp is published in ingress mode (:18083); {INGRESS_HINT}"]


def test_global_service_on_four_nodes() -> None:
    snap = snapshot("lab")
    web = snap.service("web")
    assert web is not None
    got = servers_for(snap, web, 80, "tcp", {})
    assert names(got.servers) == [f"10.77.0.{n}:18090 up" for n in (11, 12, 13, 14)]
    assert sorted(s.meta["node"] for s in got.servers) == ["node1", "node2", "node3", "node4"]


def test_drained_node_still_running_its_task_drains_then_leaves() -> None:
    # The node is drained but the engine has not stopped its task yet: DRAIN, no new connections.
    snap = snapshot("lab", nodes="lab-nodes-drain.json")
    web = snap.service("web")
    assert web is not None
    got = names(servers_for(snap, web, 80, "tcp", {}).servers)
    assert got == ["10.77.0.11:18090 up", "10.77.0.12:18090 up", "10.77.0.13:18090 up", "10.77.0.14:18090 drain"]
    # Seconds later its task is shut down (DesiredState shutdown, no ports): gone.
    snap = snapshot("lab", nodes="lab-nodes-drain.json", tasks="lab-tasks-drain.json")
    got = names(servers_for(snap, web, 80, "tcp", {}).servers)
    assert got == ["10.77.0.11:18090 up", "10.77.0.12:18090 up", "10.77.0.13:18090 up"]


def test_leader_change_unknown_worker_keeps_serving_but_down_node_drains() -> None:
    nodes = load("lab-nodes-restarted.json")
    node4 = next(n for n in nodes if n["Description"]["Hostname"] == "node4")
    assert node4["Status"]["State"] == "unknown"  # "moved to unknown state due to leadership change"
    snap = snapshot("lab", nodes="lab-nodes-restarted.json")
    web = snap.service("web")
    assert web is not None
    assert "10.77.0.14:18090 up" in names(servers_for(snap, web, 80, "tcp", {}).servers)
    node4["Status"]["State"] = "down"
    snap = parse_snapshot(load("lab-services.json"), load("lab-tasks.json"), nodes)
    assert "10.77.0.14:18090 drain" in names(servers_for(snap, web, 80, "tcp", {}).servers)


# -- node addresses --------------------------------------------------------------------------------
def _node(raw: dict[str, Any], **status: Any) -> Node:
    raw = copy.deepcopy(raw)
    raw["Status"].update(status)
    (node,) = parse_nodes([raw])
    return node


def test_node_address_rules() -> None:
    (single,) = load("single-nodes.json")
    lab = {n["Description"]["Hostname"]: n for n in load("lab-nodes.json")}
    # A worker: its Status.Addr.
    assert node_address(_node(lab["node4"]), {}) == "10.77.0.14"
    # The single manager reports 127.0.0.1: the host of ManagerStatus.Addr ("127.0.0.1:<port>").
    assert single["Status"]["Addr"] == "127.0.0.1"
    assert node_address(_node(single), {}) == "127.0.0.1"
    # A manager that reports 0.0.0.0 (moby/moby#35437; recorded node1 with its Status.Addr so):
    assert node_address(_node(lab["node1"], Addr="0.0.0.0"), {}) == "10.77.0.11"
    # A worker at 0.0.0.0 has no usable address: reported, not guessed.
    assert node_address(_node(lab["node4"], Addr="0.0.0.0"), {}) is None
    # swarm.node_addresses wins, by hostname or by node ID.
    assert node_address(_node(lab["node4"]), {"node4": "203.0.113.14"}) == "203.0.113.14"
    assert node_address(_node(lab["node4"]), {lab["node4"]["ID"]: "203.0.113.4"}) == "203.0.113.4"


def test_worker_without_address_is_a_problem_not_a_server() -> None:
    nodes = load("lab-nodes.json")
    for n in nodes:
        if n["Description"]["Hostname"] == "node4":
            n["Status"]["Addr"] = "0.0.0.0"
    snap = parse_snapshot(load("lab-services.json"), load("lab-tasks.json"), nodes)
    web = snap.service("web")
    assert web is not None
    got = servers_for(snap, web, 80, "tcp", {})
    assert len(got.servers) == 3
    assert got.problems == ["node node4: no usable address (Status.Addr '0.0.0.0'); set swarm.node_addresses"]
    got = servers_for(snap, web, 80, "tcp", {"node4": "10.77.0.14"})
    assert len(got.servers) == 4 and not got.problems


def test_other_managers_api_urls_follow_the_configured_tcp_manager() -> None:
    snap = snapshot("lab")
    urls = manager_urls(snap, ["tcp://10.77.0.11:2376"])
    assert sorted(urls) == ["tcp://10.77.0.12:2376", "tcp://10.77.0.13:2376"]
    assert manager_urls(snap, ["unix:///var/run/docker.sock"]) == []  # a socket reaches one machine only


# -- quorum ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "q", "tolerated", "even", "too_many"),
    [
        (1, 1, 0, False, False),
        (2, 2, 0, True, False),
        (3, 2, 1, False, False),
        (4, 3, 1, True, False),
        (5, 3, 2, False, False),
        (6, 4, 2, True, False),
        (7, 4, 3, False, False),
        (8, 5, 3, True, True),
        (9, 5, 4, False, True),
    ],
)
def test_quorum_table(n: int, q: int, tolerated: int, even: bool, too_many: bool) -> None:
    got = quorum(n)
    assert (got.managers, got.quorum, got.tolerated) == (n, q, tolerated)
    assert any("odd number" in w for w in got.warnings) == even
    assert any("at most 7" in w for w in got.warnings) == too_many


# -- labels ----------------------------------------------------------------------------------------
HTTP = Listener(name="web", bind=(), mode="http", backend="default")
HTTP2 = Listener(name="admin", bind=(), mode="http", backend="default")
TCP = Listener(name="pg", bind=(), mode="tcp", backend="pg")


def svc(labels: dict[str, str], ports: list[tuple[int, str]] | None = None) -> Service:
    raw = [{"TargetPort": t, "PublishedPort": 8000 + t, "Protocol": "tcp", "PublishMode": m} for t, m in ports or []]
    return Service("id1", "api", {"edgeproxy.enable": "true", **labels}, "replicated", 1, parse_ports(raw))


def test_labels_full_set() -> None:
    lb = label_backend(
        svc(
            {
                "edgeproxy.port": "8080",
                "edgeproxy.listener": "admin",
                "edgeproxy.host": "API.Example.com",
                "edgeproxy.path_prefix": "/v1",
                "edgeproxy.balance": "leastconn",
                "edgeproxy.send_proxy": "v2",
                "edgeproxy.health.path": "/healthz",
            },
            [(8080, "host"), (9090, "host")],
        ),
        [HTTP, HTTP2],
    )
    assert lb.port == 8080 and lb.listener == "admin"
    assert lb.route == Route(backend="api", host="api.example.com", path_prefix="/v1")
    be = lb.backend
    assert (be.name, be.balance, be.send_proxy) == ("api", "leastconn", "v2")
    assert (be.health.type, be.health.path) == ("http", "/healthz")
    assert be.swarm is not None and (be.swarm.service, be.swarm.port) == ("api", 8080)


def test_labels_defaults() -> None:
    lb = label_backend(svc({}, [(80, "host")]), [TCP, HTTP, HTTP2])
    assert (lb.port, lb.listener) == (80, "web")  # the only port; the first http listener
    assert lb.route == Route(backend="api")
    assert (lb.backend.balance, lb.backend.send_proxy, lb.backend.health.type) == ("roundrobin", "none", "tcp")
    # No http listener at all: a backend (a tcp listener may name it) without a route.
    lb = label_backend(svc({}, [(80, "host")]), [TCP])
    assert lb.listener is None and lb.route is None


@pytest.mark.parametrize(
    ("labels", "ports", "error"),
    [
        ({"edgeproxy.hots": "a"}, [(80, "host")], "unknown label edgeproxy.hots"),
        ({}, [(80, "host"), (443, "host")], "publishes ports 80, 443; say which with edgeproxy.port"),
        ({}, [], "publishes no tcp port"),
        ({"edgeproxy.port": "http"}, [(80, "host")], "edgeproxy.port='http' is not a port number"),
        ({"edgeproxy.balance": "fastest"}, [(80, "host")], "edgeproxy.balance='fastest'"),
        ({"edgeproxy.send_proxy": "v3"}, [(80, "host")], "edgeproxy.send_proxy='v3'"),
        ({"edgeproxy.listener": "nope"}, [(80, "host")], "no such listener (http listeners: web)"),
        ({"edgeproxy.listener": "pg"}, [(80, "host")], "is a tcp listener; routes need http"),
        ({"edgeproxy.host": "a b"}, [(80, "host")], "is not a host name"),
        ({"edgeproxy.path_prefix": "v1"}, [(80, "host")], "must start with /"),
        ({"edgeproxy.health.path": "healthz"}, [(80, "host")], "must be a path starting with /"),
    ],
)
def test_bad_labels_name_the_label(labels: dict[str, str], ports: list[tuple[int, str]], error: str) -> None:
    with pytest.raises(LabelError, match=r"^service api: ") as e:
        label_backend(svc(labels, ports), [HTTP, TCP])
    assert error in str(e.value)


def test_resolve_merges_config_backends_and_labels() -> None:
    cfg = parse_config(
        b"""
listeners:
  - {name: web, bind: 127.0.0.1:8080, mode: http, backend: site}
backends:
  site: {swarm: {service: web, port: 80}}
  gone: {swarm: {service: nosuch, port: 80}}
  dyn: {swarm: {service: dyn, port: 8080}}
swarm: {labels: true}
"""
    )
    assert cfg.swarm is not None
    snap = snapshot("single")
    d = resolve(snap, cfg.backends, cfg.listeners, cfg.swarm)
    assert names(d.servers["site"]) == ["127.0.0.1:18082 up"]
    assert d.servers["gone"] == []
    assert names(d.servers["dyn"]) == ["127.0.0.1:32768 up", "127.0.0.1:32769 up"]
    # "ing" is labelled: a backend (and route on the first http listener) with no server, and the hint.
    assert list(d.labelled) == ["ing"]
    assert d.labelled["ing"].route == Route(backend="ing") and d.labelled["ing"].listener == "web"
    assert d.servers["ing"] == []
    assert "backend gone: no service named 'nosuch' in the swarm" in d.problems
    assert any(INGRESS_HINT in p for p in d.problems)
    web, dyn, ing = snap.service("web"), snap.service("dyn"), snap.service("ing")
    assert web and dyn and ing
    assert d.relevant == {web.id, dyn.id, ing.id}
    # A labelled service named like a config backend: the config's backend wins.
    cfg2 = parse_config(
        b"listeners: [{name: web, bind: 127.0.0.1:8080, mode: http, backend: ing}]\n"
        b"backends: {ing: {servers: [127.0.0.1:9]}}\nswarm: {labels: true}\n"
    )
    assert cfg2.swarm is not None
    d2 = resolve(snap, cfg2.backends, cfg2.listeners, cfg2.swarm)
    assert d2.labelled == {} and d2.servers == {}
    assert d2.problems == [
        "service ing: labelled edgeproxy.enable=true, but backend 'ing' is defined in the config; the config wins"
    ]
    # Labels off: no label backends.
    d = resolve(snap, cfg.backends, cfg.listeners, SwarmConfig(labels=False))
    assert d.labelled == {} and set(d.servers) == {"site", "gone", "dyn"}


def test_label_routes_most_specific_first() -> None:
    routes = [
        Route("catchall"),
        Route("prefix", path_prefix="/a"),
        Route("host", host="x.example"),
        Route("longer", path_prefix="/a/b"),
        Route("hostprefix", host="x.example", path_prefix="/v1"),
    ]
    assert [r.backend for r in sorted(routes, key=route_order)] == [
        "hostprefix",
        "host",
        "longer",
        "prefix",
        "catchall",
    ]


# -- API answers ---------------------------------------------------------------------------------------
def test_error_classification_of_recorded_answers() -> None:
    msg = load("lab-noleader-500.json")["message"]
    assert classify(500, msg) == "no_leader"
    assert classify(500, "rpc error: code = DeadlineExceeded desc = context deadline exceeded") == "no_leader"
    assert classify(503, 'This node is not a swarm manager. Use "docker swarm init"') == "unavailable"
    assert classify(404, "service abc not found") == "not_found"
    assert classify(500, "something else") == "http"


@pytest.mark.parametrize(
    ("api", "min_api", "chosen"),
    [
        ("1.41", "1.12", "1.41"),  # dockerd 20.10 (Debian 12)
        ("1.52", "1.44", "1.44"),  # Docker 29 serves 1.44+ only
        ("1.45", "1.24", "1.41"),  # Docker 26: our version
        ("1.40", None, "1.40"),  # older than ours: its newest
    ],
)
def test_api_version_negotiation(api: str, min_api: str | None, chosen: str) -> None:
    info = {"ApiVersion": api, **({"MinAPIVersion": min_api} if min_api else {})}
    assert negotiate(info) == chosen
