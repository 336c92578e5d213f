"""Swarm discovery's pure parts on API responses recorded from a real dockerd 20.10 (API 1.41) in
swarm mode (tests/unit/data/swarm): servers from tasks, node addresses, labels, the quorum table."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.balance import ServerState
from edgeproxy.config import Listener
from edgeproxy.config.values import acme_name_error, parse_address
from edgeproxy.discovery.labels import LabelError, label_backend
from edgeproxy.discovery.swarm_model import (
    INGRESS_HINT,
    node_address,
    parse_nodes,
    parse_services,
    parse_tasks,
    quorum_table,
    servers_for,
)

DATA = Path(__file__).parent / "data" / "swarm"


def load(name: str) -> Any:
    return json.loads((DATA / f"{name}.json").read_text())


def test_host_mode_task_gives_one_server_despite_ipv4_ipv6_twin_entries() -> None:
    tasks_raw = load("tasks")
    web_task = next(t for t in tasks_raw if t["Status"].get("PortStatus", {}).get("Ports"))
    assert len(web_task["Status"]["PortStatus"]["Ports"]) == 2  # the twins, as recorded
    nodes = parse_nodes(load("nodes"))
    services = parse_services(load("services"))
    servers = servers_for(services["web"], parse_tasks(tasks_raw), nodes, 80)
    assert [(s.host, s.port, s.state, s.source) for s in servers] == [("192.0.2.2", 18082, ServerState.UP, "swarm")]
    assert servers[0].meta == {"service": "web", "task": web_task["ID"], "node": "vm"}
    assert servers_for(services["web"], parse_tasks(tasks_raw), nodes, 8080) == []  # another target port


def test_ingress_service_is_flagged_and_gives_no_server() -> None:
    services = parse_services(load("services"))
    ing = services["ing"]
    assert [(p.target, p.published, p.mode) for p in ing.ingress_ports()] == [(80, 18083, "ingress")]
    assert servers_for(ing, parse_tasks(load("tasks")), parse_nodes(load("nodes")), 80) == []
    assert services["web"].ingress_ports() == []


def test_drained_node_lists_its_servers_in_drain() -> None:
    nodes = parse_nodes(load("nodes_drain"))
    assert not nodes[next(iter(nodes))].accepts
    servers = servers_for(parse_services(load("services"))["web"], parse_tasks(load("tasks")), nodes, 80)
    assert [s.state for s in servers] == [ServerState.DRAIN]


def test_not_running_tasks_are_left_out() -> None:
    tasks_raw = copy.deepcopy(load("tasks"))
    for t in tasks_raw:
        t["Status"]["State"] = "preparing"
    tasks = parse_tasks(tasks_raw)
    assert all(t.converging and not t.running for t in tasks)
    assert servers_for(parse_services(load("services"))["web"], tasks, parse_nodes(load("nodes")), 80) == []


@pytest.mark.parametrize("unspecified", ["0.0.0.0", "127.0.0.1"])
def test_manager_with_unspecified_status_addr_uses_manager_status_host(unspecified: str) -> None:
    raw = copy.deepcopy(load("nodes")[0])
    raw["Status"]["Addr"] = unspecified
    raw["ManagerStatus"]["Addr"] = "10.0.0.11:2377"
    assert node_address(raw, {}) == "10.0.0.11"
    raw["ManagerStatus"]["Addr"] = "[fd00::11]:2377"
    assert node_address(raw, {}) == "fd00::11"


def test_worker_and_manager_status_addr_and_overrides() -> None:
    raw = copy.deepcopy(load("nodes")[0])
    assert node_address(raw, {}) == "192.0.2.2"  # Status.Addr as recorded
    assert node_address(raw, {"vm": "127.0.0.1"}) == "127.0.0.1"  # by hostname
    assert node_address(raw, {raw["ID"]: "203.0.113.14"}) == "203.0.113.14"  # by node ID
    node = parse_nodes([raw])[raw["ID"]]
    assert (node.role, node.leader, node.manager_addr, node.reachability) == (
        "manager",
        True,
        "192.0.2.2:2377",
        "reachable",
    )


@pytest.mark.parametrize(
    ("n", "quorum", "tolerated", "even", "too_many"),
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
def test_quorum_table(n: int, quorum: int, tolerated: int, even: bool, too_many: bool) -> None:
    q = quorum_table(n)
    assert (q.managers, q.quorum, q.tolerated) == (n, quorum, tolerated)
    assert any("odd number" in w for w in q.warnings) == even
    assert any("at most 7" in w for w in q.warnings) == too_many


LISTENERS = (
    Listener("raw", (parse_address("127.0.0.1:1"),), "tcp", None),
    Listener("web", (parse_address("127.0.0.1:2"),), "http", None),
)


def labelled(**labels: str) -> Any:
    raw = copy.deepcopy(next(s for s in load("services") if s["Spec"]["Name"] == "web"))
    raw["Spec"]["Labels"] = {f"edgeproxy.{k.replace('__', '.')}": v for k, v in labels.items()}
    return parse_services([raw])["web"]


def test_labels_make_backend_and_route_on_first_http_listener() -> None:
    lb = label_backend(
        labelled(enable="true", host="App.Example.com", path_prefix="/v1", balance="leastconn"), LISTENERS
    )
    assert lb.listener == "web"
    assert lb.backend.name == "web" and lb.backend.balance == "leastconn"
    assert lb.backend.swarm is not None and lb.backend.swarm.port == 80
    assert lb.route is not None and (lb.route.backend, lb.route.host, lb.route.path_prefix) == (
        "web",
        "app.example.com",
        "/v1",
    )
    lb = label_backend(labelled(enable="true", listener="raw", send_proxy="v2", health__path="/hz"), LISTENERS)
    assert (lb.listener, lb.route, lb.backend.send_proxy, lb.backend.health.path) == ("raw", None, "v2", "/hz")


def test_tls_label_asks_an_acme_certificate_for_the_host() -> None:
    lb = label_backend(labelled(enable="true", host="Shop.Example.com.", tls="true"), LISTENERS)
    assert lb.acme_host == "shop.example.com"
    assert label_backend(labelled(enable="true", host="a.test", tls="false"), LISTENERS).acme_host is None
    assert label_backend(labelled(enable="true", host="a.test"), LISTENERS).acme_host is None


_LABEL_TEXT = st.one_of(st.text(max_size=80), st.sampled_from(["true", "TRUE", "a.test", "../x", "a..b", "-a.b"]))


@given(host=_LABEL_TEXT, tls=_LABEL_TEXT)
def test_tls_and_host_labels_are_total(host: str, tls: str) -> None:
    """Any label text: a backend or a LabelError; a host that gets a certificate is a DNS name
    (it names files in the ACME storage: no '/', no '..')."""
    try:
        lb = label_backend(labelled(enable="true", host=host, tls=tls), LISTENERS)
    except LabelError:
        return
    if lb.acme_host is not None:
        assert acme_name_error(lb.acme_host) is None
        assert "/" not in lb.acme_host and ".." not in lb.acme_host


@pytest.mark.parametrize(
    ("labels", "error"),
    [
        ({"balance": "fastest"}, "edgeproxy.balance"),
        ({"port": "81"}, "no host-mode port"),
        ({"port": "x"}, "not a port"),
        ({"listener": "nope"}, "no such listener"),
        ({"colour": "blue"}, "unknown label"),
        ({"path_prefix": "v1"}, "must start with /"),
        ({"tls": "true"}, "needs edgeproxy.host"),
        ({"tls": "maybe", "host": "a.test"}, "expected true or false"),
        ({"tls": "true", "host": "../../etc"}, "not a DNS name"),  # a file name in the ACME storage
        ({"tls": "true", "host": "10.0.0.1"}, "IP address"),
    ],
)
def test_bad_labels_are_reported(labels: dict[str, str], error: str) -> None:
    with pytest.raises(LabelError, match=error):
        label_backend(labelled(enable="true", **labels), LISTENERS)


def test_ingress_only_service_label_error_carries_the_hint() -> None:
    ing = parse_services(load("services"))["ing"]
    with pytest.raises(LabelError) as e:
        label_backend(ing, LISTENERS)
    assert INGRESS_HINT in str(e.value)


def test_events_recorded_are_newline_delimited_json() -> None:
    lines = [json.loads(x) for x in (DATA / "events.jsonl").read_text().splitlines() if x.strip()]
    assert {e["Type"] for e in lines} == {"service", "node"}


# -- a 3-manager + 1-worker swarm (tests/swarm/lab.sh), recorded ------------------------------------
# lab-nodes / lab-tasks / lab-services: global service web on host port 18090 on node1..node4
# (10.77.0.11-14); -drain: after `docker node update --availability drain node4`; -restarted: right
# after the leader's dockerd was stopped and another manager elected.


def test_global_service_on_four_nodes() -> None:
    web = parse_services(load("lab-services"))["web"]
    servers = servers_for(web, parse_tasks(load("lab-tasks")), parse_nodes(load("lab-nodes")), 80)
    assert [(s.name, s.state) for s in servers] == [(f"10.77.0.{n}:18090", ServerState.UP) for n in (11, 12, 13, 14)]


def test_drain_of_one_node_of_four() -> None:
    web = parse_services(load("lab-services"))["web"]
    nodes = parse_nodes(load("lab-nodes-drain"))
    # Drained but its task not stopped yet: DRAIN; seconds later the task is shut down: gone.
    servers = servers_for(web, parse_tasks(load("lab-tasks")), nodes, 80)
    assert [s.state for s in servers] == [ServerState.UP] * 3 + [ServerState.DRAIN]
    servers = servers_for(web, parse_tasks(load("lab-tasks-drain")), nodes, 80)
    assert [s.name for s in servers] == [f"10.77.0.{n}:18090" for n in (11, 12, 13)]


def test_nodes_unknown_after_a_leader_change_keep_their_servers() -> None:
    raw = load("lab-nodes-restarted")
    node4 = next(n for n in raw if n["Description"]["Hostname"] == "node4")
    assert node4["Status"]["State"] == "unknown"
    assert "leadership change" in node4["Status"]["Message"]
    web = parse_services(load("lab-services"))["web"]
    servers = servers_for(web, parse_tasks(load("lab-tasks")), parse_nodes(raw), 80)
    assert [s.state for s in servers] == [ServerState.UP] * 4
    # A node that is really down drains.
    node4["Status"]["State"] = "down"
    servers = servers_for(web, parse_tasks(load("lab-tasks")), parse_nodes(raw), 80)
    assert [s.state for s in servers] == [ServerState.UP] * 3 + [ServerState.DRAIN]


def test_leaderless_manager_answer_is_classified_no_leader() -> None:
    from edgeproxy.discovery.docker_api import NoLeader, _classify

    message = load("lab-noleader-500")["message"]
    assert isinstance(_classify("unix:///x", 500, message), NoLeader)
