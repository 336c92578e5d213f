"""``workers: N``: a supervisor and N worker processes sharing the listening sockets."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

from tests.helpers import (
    Backend,
    RequestLoad,
    admin_json,
    echo_handler,
    edgeproxy,
    exchange,
    free_port,
    metric,
    proxy_config,
    scrape,
)


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_workers_1_runs_without_a_supervisor() -> None:
    backend = Backend(echo_handler)
    port, admin = free_port(), free_port()
    with edgeproxy(proxy_config(port, [backend.address], admin=admin, workers=1)) as proxy:
        assert exchange(port, b"x") == b"x"
        assert children(proxy.proc.pid) == []
        assert admin_json(admin)["workers"] == []


def test_two_workers_share_connections_and_one_scrape_sees_the_sum() -> None:
    backend = Backend(echo_handler)
    port, admin = free_port(), free_port()
    with edgeproxy(proxy_config(port, [backend.address], admin=admin, workers=2)) as proxy:
        status = admin_json(admin)
        pids = sorted(w["pid"] for w in status["workers"])
        assert sorted(children(proxy.proc.pid)) == pids and len(pids) == 2
        load = RequestLoad(port, clients=4)
        time.sleep(1.5)
        load.stop()
        assert load.failures == []
        # Each worker served a share: the access log says which worker handled each connection.
        proxy.wait_log(lambda r: sum(1 for x in proxy.log_lines() if "end" in x) >= load.ok)
        by_worker = Counter(r["worker"] for r in proxy.log_lines() if "end" in r)
        assert set(by_worker) == {1, 2}
        assert min(by_worker.values()) > load.ok * 0.1, by_worker
        # One scrape sees the sum over both workers.
        m = scrape(admin)
        assert metric(m, "edgeproxy_connections_total", listener="front") == load.ok
        assert metric(m, "edgeproxy_server_connections_total", server=backend.address) == load.ok
        assert metric(m, "edgeproxy_workers") == 2


def test_sigkill_a_worker_under_load_loses_only_its_open_connections_and_it_is_restarted() -> None:
    backend = Backend(echo_handler)
    port, admin = free_port(), free_port()
    clients = 4
    with edgeproxy(proxy_config(port, [backend.address], admin=admin, workers=2, access="off")) as proxy:
        load = RequestLoad(port, clients=clients)
        try:
            time.sleep(1.0)
            before = scrape(admin)
            victim = next(w for w in admin_json(admin)["workers"] if w["id"] == 1)
            os.kill(victim["pid"], signal.SIGKILL)
            rec = proxy.wait_log(lambda r: r.get("msg") == "worker restarted", timeout=15)
            assert rec["worker"] == 1 and rec["pid"] != victim["pid"]
            died = proxy.wait_log(lambda r: r.get("msg", "").startswith("worker died"))
            assert died["status"] == "signal SIGKILL"
            ok_at_restart = load.ok
            time.sleep(1.0)
        finally:
            load.stop()
        print(f"SIGKILL of a worker: {load.ok} requests, {len(load.failures)} failed: {load.failures}")
        # At most the connections the killed worker had open: one per client at most.
        assert len(load.failures) <= clients, load.failures
        assert load.ok > ok_at_restart  # serving goes on
        status = admin_json(admin)
        assert [w["id"] for w in status["workers"]] == [1, 2]
        assert next(w for w in status["workers"] if w["id"] == 1)["restarts"] == 1
        after = scrape(admin)
        # Totals never go backwards when a worker is replaced (its last report is kept).
        total = metric(after, "edgeproxy_connections_total", listener="front")
        assert total >= metric(before, "edgeproxy_connections_total", listener="front")
        assert metric(after, "edgeproxy_worker_restarts_total") == 1
        assert exchange(port, b"after") == b"after"


def test_worker_exits_when_the_supervisor_is_killed() -> None:
    backend = Backend(echo_handler)
    port, admin = free_port(), free_port()
    with edgeproxy(proxy_config(port, [backend.address], admin=admin, workers=2)) as proxy:
        pids = children(proxy.proc.pid)
        proxy.proc.kill()
        proxy.proc.wait()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{p}").exists() and _state(p) != "Z" for p in pids):
            assert time.monotonic() < deadline, "orphaned workers kept running"
            time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"
