"""Three managers (and a worker), each a dockerd in its own network namespace (lab.sh): discovery
fails over when the leader dies, and keeps the last known servers when quorum is lost.

A manager "dies" by SIGKILL of its dockerd: the control plane on that node is gone while its
task keeps serving, as when the engine crashes or is restarted on a live node.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.helpers import admin_json, free_port, metric, scrape
from tests.swarm.engine import Lab, http_get, wait_for
from tests.swarm.support import servers_logged

pytestmark = pytest.mark.swarm
PORT = 18090  # each node is its own network namespace: any port is free there


@pytest.mark.timeout(240)  # lab up ~6 s, down ~8 s, elections ~10-25 s
def test_leader_loss_then_quorum_loss(lab: Lab, proxy_factory: Any) -> None:
    lab.docker(
        1, "service", "create", "--detach", "--name", "web", "--mode", "global", "--no-resolve-image",
        "--stop-grace-period", "1s", "--publish", f"mode=host,target=80,published={PORT}",
        "local/bb:2", "/bin/httpd", "-f", "-p", "80", "-h", "/www",
    )  # fmt: skip
    nodes = [lab.addr(n) for n in range(1, 5)]
    wait_for(lambda: all(http_get(PORT, host=a, timeout=1)[0] == 200 for a in nodes), 30, what="web on 4 nodes")
    port, admin = free_port(), free_port()
    cfg = {
        "timeouts": {"connect": "1s", "drain": "2s"},
        "admin": {"bind": f"127.0.0.1:{admin}"},
        "listeners": [{"name": "front", "bind": f"127.0.0.1:{port}", "mode": "tcp", "backend": "app"}],
        "backends": {"app": {"swarm": {"service": "web", "port": 80}, "health": {"type": "none"}}},
        "swarm": {"managers": [lab.url(1), lab.url(2), lab.url(3)], "refresh": "1s", "timeout": "1s"},
    }
    proxy = proxy_factory(cfg)
    # Status.Addr of each node: the servers are the four nodes' published ports.
    assert sorted(servers_logged(proxy, "app")[-1]) == [f"{a}:{PORT} up" for a in nodes]

    def all_served(n: int = 8) -> None:
        for i in range(n):
            status, body = http_get(port, source=f"127.0.0.{70 + i}")
            assert status == 200 and body.startswith(f"remote=[::ffff:{lab.net}.1]"), body  # edgeproxy's side

    all_served()

    # 1. The leader's dockerd dies: discovery goes on through another manager once one is elected.
    t0, wall0 = time.monotonic(), time.time()
    lab.kill(1)

    def through_another_manager() -> bool:
        sw = admin_json(admin)["swarm"]
        return bool(sw["up"] and sw["manager"] != lab.url(1) and sw["last_success"] > wall0)

    deadline = time.monotonic() + 45
    while not through_another_manager():
        all_served(2)  # meanwhile every request is served
        assert time.monotonic() < deadline, "no refresh through another manager within 45 s"
        time.sleep(0.3)
    t_failover = time.monotonic() - t0
    # After the election every node reads "unknown" for a while: their servers are kept.
    assert sorted(servers_logged(proxy, "app")[-1]) == [f"{a}:{PORT} up" for a in nodes]

    # 2. A second manager dies: no quorum. The survivor answers from stale state for a while, then
    # blocks and finally answers 500 "no leader"; the last known servers keep serving throughout.
    t0 = time.monotonic()
    lab.kill(2)
    deadline = time.monotonic() + 60
    while metric(scrape(admin), "edgeproxy_swarm_up") != 0:
        all_served(2)
        assert time.monotonic() < deadline, "swarm_up still 1 a minute after quorum was lost"
        time.sleep(0.5)
    t_down = time.monotonic() - t0
    for _ in range(4):
        all_served(4)
        time.sleep(0.5)
    assert sorted(servers_logged(proxy, "app")[-1]) == [f"{a}:{PORT} up" for a in nodes]
    warning = proxy.wait_log(lambda r: r.get("msg") == "swarm: no manager answered; keeping the last known servers")
    assert len(warning["errors"]) == 3
    print(f"\nleader killed: discovery through another manager after {t_failover:.1f}s; "
          f"quorum lost: swarm_up 0 after {t_down:.1f}s, every request served throughout")  # fmt: skip
