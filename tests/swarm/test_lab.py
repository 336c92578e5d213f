"""Three managers (and a worker), each a dockerd in its own network namespace (lab.py, lab.sh):
discovery fails over when the leader dies and keeps the last known servers when quorum is lost.

A manager dies by SIGKILL of its dockerd: the control plane on that node is gone while its task
keeps serving, as when an engine crashes or is restarted on a live node.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.helpers import edgeproxy, free_port, metric, scrape
from tests.swarm.conftest import _rootfs_tar, http_get, need_swarm
from tests.swarm.lab import Lab

pytestmark = pytest.mark.swarm
PORT = 18090  # each node is its own network namespace: the port is free there


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need_swarm()
    lab = Lab(_rootfs_tar()).start()  # ~6 s; ~560 MiB while it runs
    try:
        yield lab
    finally:
        lab.stop()


def served(port: int, first: int, lab: Lab, n: int) -> None:
    for i in range(n):
        body = http_get("127.0.0.1", port, "/cgi-bin/ip", source=f"127.0.0.{first + i}")
        assert b"200 OK" in body and f"remote=[::ffff:{lab.net}.1]".encode() in body, body  # edgeproxy's side


def listed(proxy: object, backend: str) -> list[str]:
    lines = [r for r in proxy.log_lines() if r.get("msg") == "swarm: servers changed" and r["backend"] == backend]  # type: ignore[attr-defined]
    return sorted(lines[-1]["servers"])


@pytest.mark.timeout(240)  # lab up ~6 s, down ~8 s, an election ~10 s, quorum loss noticed ~20 s
def test_leader_loss_then_quorum_loss(lab: Lab) -> None:
    lab.docker(
        1, "service", "create", "--detach", "--name", "web", "--mode", "global", "--no-resolve-image",
        "--stop-grace-period", "1s", "--publish", f"mode=host,target=80,published={PORT}",
        "local/bb:2", "/bin/httpd", "-f", "-p", "80", "-h", "/www",
    )  # fmt: skip
    nodes = [lab.addr(n) for n in range(1, 5)]
    deadline = time.monotonic() + 30
    while True:
        try:
            if all(b"remote=" in http_get(a, PORT, "/cgi-bin/ip") for a in nodes):
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "web did not answer on the 4 nodes"
        time.sleep(0.25)
    port, admin = free_port(), free_port()
    cfg = {
        "timeouts": {"connect": "1s", "drain": "2s"},
        "admin": {"bind": f"127.0.0.1:{admin}"},
        "listeners": [{"name": "front", "bind": f"127.0.0.1:{port}", "mode": "tcp", "backend": "app"}],
        "backends": {"app": {"swarm": {"service": "web", "port": 80}, "health": {"type": "none"}}},
        "swarm": {"managers": [lab.url(1), lab.url(2), lab.url(3)], "refresh": "1s", "timeout": "1s"},
    }
    with edgeproxy(cfg) as proxy:
        # The servers are the four nodes' Status.Addr and the published port.
        assert listed(proxy, "app") == [f"{a}:{PORT} up" for a in nodes]
        served(port, 70, lab, 8)

        # 1. The leader's dockerd dies: discovery goes on through another manager once one is elected.
        t0 = time.monotonic()
        lab.kill(1)
        killed_at = time.time()
        while metric(scrape(admin), "edgeproxy_swarm_last_success_timestamp_seconds") <= killed_at:
            served(port, 80, lab, 2)  # meanwhile every request is served
            assert time.monotonic() - t0 < 60, "no refresh through another manager within 60 s"
            time.sleep(0.3)
        t_failover = time.monotonic() - t0
        # Every node reads "unknown" right after the election: their servers stay in rotation.
        assert listed(proxy, "app") == [f"{a}:{PORT} up" for a in nodes]
        served(port, 90, lab, 8)

        # 2. A second manager dies: no quorum. The survivor answers from stale state for a while,
        # then blocks, then answers 500 "no leader"; the last known servers serve throughout.
        t0 = time.monotonic()
        lab.kill(2)
        while metric(scrape(admin), "edgeproxy_swarm_up") != 0:
            served(port, 100, lab, 2)
            assert time.monotonic() - t0 < 90, "swarm_up still 1 long after quorum was lost"
            time.sleep(0.5)
        t_down = time.monotonic() - t0
        for _ in range(4):
            served(port, 110, lab, 4)
            time.sleep(0.5)
        assert listed(proxy, "app") == [f"{a}:{PORT} up" for a in nodes]
        warning = proxy.wait_log(lambda r: r.get("msg") == "swarm: no manager answered; keeping the last known servers")
        assert len(warning["errors"]) == 3
    print(
        f"\nleader killed: discovery through another manager after {t_failover:.1f}s; "
        f"quorum lost: swarm_up 0 after {t_down:.1f}s; every request served throughout"
    )
