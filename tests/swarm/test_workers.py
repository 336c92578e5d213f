"""``workers: 2`` with swarm discovery: discovery runs once, in the supervisor; the servers, the
label backends and their routes reach every worker (pools/wire.py)."""

from __future__ import annotations

import time

import pytest

from tests.helpers import connect, edgeproxy, free_port, recv_all
from tests.swarm.conftest import Swarm, http_get

pytestmark = pytest.mark.swarm


def served_by_all(port: int, first: int, n: int = 8) -> bool:
    """n requests, each a new connection from another 127.0.0.x (both workers accept some)."""
    try:
        return all(
            b"remote=" in http_get("127.0.0.1", port, "/cgi-bin/ip", source=f"127.0.0.{first + i}") for i in range(n)
        )
    except OSError:
        return False


def get_host(port: int, host: str) -> bytes:
    """A request for ``host`` (http_get always names "test")."""
    with connect("127.0.0.1", port, timeout=5) as c:
        c.sendall(f"GET /cgi-bin/ip HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        return recv_all(c)


def wait(cond: object, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():  # type: ignore[operator]
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout}s"
        time.sleep(0.1)
    return time.monotonic() - t0


def test_label_backend_and_route_reach_every_worker(swarm: Swarm) -> None:
    tcp_port, http_port, published = free_port(), free_port(), free_port()
    swarm.service("wlab", published, labels={"edgeproxy.enable": "true", "edgeproxy.host": "w.example"})
    try:
        swarm.wait_task_answers(published)
        cfg = {
            "workers": 2,
            "timeouts": {"connect": "1s", "drain": "2s"},
            "listeners": [
                # a tcp listener may name a label backend; the http listener gets its route
                {"name": "tcp", "bind": f"127.0.0.1:{tcp_port}", "mode": "tcp", "backend": "wlab"},
                {"name": "web", "bind": f"127.0.0.1:{http_port}", "mode": "http", "backend": "none"},
            ],
            "backends": {"none": {"servers": ["127.0.0.1:9"], "health": {"type": "none"}}},
            "swarm": {
                "managers": [swarm.url],
                "refresh": "5s",
                "timeout": "1s",
                "labels": True,
                "node_addresses": {swarm.hostname: "127.0.0.1"},
            },
        }
        with edgeproxy(cfg) as proxy:
            assert served_by_all(tcp_port, 50), proxy.log()
            routed = [get_host(http_port, "w.example") for _ in range(6)]
            assert all(b"200 OK" in r and b"remote=" in r for r in routed), routed
            swarm.docker("service", "update", "--detach", "--label-rm", "edgeproxy.enable", "wlab")
            gone = wait(lambda: not served_by_all(tcp_port, 60, 2), 10, "label removed in every worker")
            assert b"remote=" not in get_host(http_port, "w.example")
            swarm.docker("service", "update", "--detach", "--label-add", "edgeproxy.enable=true", "wlab")
            back = wait(lambda: served_by_all(tcp_port, 70), 10, "label back in every worker")
            print(f"\nworkers: label removed -> gone in {gone:.2f}s, added -> back in {back:.2f}s")
    finally:
        swarm.docker("service", "rm", "wlab", check=False)
