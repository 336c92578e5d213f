"""Reload as a transaction across processes (runtime/supervisor.py): every worker prepares the new
configuration and answers before any of them switches, so a failure in one worker leaves the whole
edgeproxy on the old configuration; and the admin endpoint moves with ``admin.bind``.

The worker-only failure is real, not simulated: the test lowers one worker's RLIMIT_NOFILE below
its next free descriptor (prlimit), so opening the new access log file fails there with EMFILE
while the supervisor and the other worker open it fine.
"""

from __future__ import annotations

import copy
import os
import resource
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    Backend,
    admin_json,
    echo_handler,
    edgeproxy,
    exchange,
    free_port,
    metric,
    proxy_config,
    scrape,
)


def reload_logged(proxy: Any, msg: str, n: int = 1) -> dict[str, Any]:
    proxy.wait_log(lambda r: sum(1 for x in proxy.log_lines() if x.get("msg") == msg) >= n, timeout=30)
    return [r for r in proxy.log_lines() if r.get("msg") == msg][n - 1]


def lowest_free_fd(pid: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(i for i in range(len(used) + 1) if i not in used)


def access_workers(path: Path, server_port: int) -> Counter[int]:
    """Which worker served the connections to ``server_port`` (its access log lines)."""
    import json

    out: Counter[int] = Counter()
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if str(rec.get("server", "")).endswith(f":{server_port}"):
            out[rec["worker"]] += 1
    return out


def test_a_worker_that_cannot_prepare_keeps_every_worker_on_the_old_config(tmp_path: Path) -> None:
    a, b = Backend(echo_handler), Backend(echo_handler)
    port, admin = free_port(), free_port()
    access = tmp_path / "access.log"
    cfg = proxy_config(port, [a.address], admin=admin, workers=2, access=str(access), drain="2s")
    try:
        with edgeproxy(cfg) as proxy:
            pids = sorted(w["pid"] for w in admin_json(admin)["workers"])
            victim = pids[0]
            new = copy.deepcopy(cfg)
            new["backends"]["app"]["servers"] = [b.address]
            new["log"]["access"] = str(tmp_path / "access-new.log")
            proxy.write_config(new)
            limit = resource.prlimit(victim, resource.RLIMIT_NOFILE)
            resource.prlimit(victim, resource.RLIMIT_NOFILE, (lowest_free_fd(victim), limit[1]))
            try:
                proxy.send(signal.SIGHUP)
                failed = reload_logged(proxy, "reload failed: keeping the running configuration")
            finally:
                resource.prlimit(victim, resource.RLIMIT_NOFILE, limit)
            assert failed["step"] == "workers", failed
            (error,) = failed["errors"]
            assert error.startswith("worker ") and "Too many open files" in error, error
            # Both workers still run the old configuration: every connection goes to `a`.
            for i in range(40):
                assert exchange(port, b"x%d" % i) == b"x%d" % i
            assert len(a.seen) == 40 and b.seen == []
            time.sleep(0.5)  # access lines are flushed every 0.2 s
            assert set(access_workers(access, a.port)) == {1, 2}  # and both served some
            assert not (tmp_path / "access-new.log").exists() or (tmp_path / "access-new.log").read_text() == ""
            m = scrape(admin)
            assert metric(m, "edgeproxy_config_reloads_total", result="failure") == 1
            assert sorted(w["pid"] for w in admin_json(admin)["workers"]) == pids  # nobody died
            # With the limit lifted, the same file reloads in every worker.
            proxy.send(signal.SIGHUP)
            reload_logged(proxy, "configuration reloaded")
            for i in range(40):
                assert exchange(port, b"y%d" % i) == b"y%d" % i
            assert len(a.seen) == 40 and len(b.seen) == 40
            time.sleep(0.5)
            assert set(access_workers(tmp_path / "access-new.log", b.port)) == {1, 2}
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_changed_admin_bind_moves_the_endpoint_or_fails_the_reload(workers: int) -> None:
    backend = Backend(echo_handler)
    port, admin, moved = free_port(), free_port(), free_port()
    cfg = proxy_config(port, [backend.address], admin=admin, workers=workers)
    try:
        with edgeproxy(cfg) as proxy:
            cfg["admin"]["bind"] = f"127.0.0.1:{moved}"
            proxy.write_config(cfg)
            proxy.send(signal.SIGHUP)
            reload_logged(proxy, "configuration reloaded")
            assert admin_json(moved)["config"]["last_reload"]["result"] == "success"
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", admin), timeout=2)
            # An address in use: the reload fails, with the reason, and changes nothing (the
            # listener it also adds does not serve).
            busy = socket.socket()
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            extra = free_port()
            bad = copy.deepcopy(cfg)
            bad["admin"]["bind"] = f"127.0.0.1:{taken}"
            bad["listeners"].append({"name": "extra", "bind": f"127.0.0.1:{extra}", "mode": "tcp", "backend": "app"})
            proxy.write_config(bad)
            proxy.send(signal.SIGHUP)
            failed = reload_logged(proxy, "reload failed: keeping the running configuration")
            busy.close()
            assert failed["step"] == "components"
            assert failed["errors"] == [f"admin.bind: cannot bind 127.0.0.1:{taken}: Address already in use"]
            assert exchange(port) == b"hello"
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", extra), timeout=2)
            assert metric(scrape(moved), "edgeproxy_config_reloads_total", result="failure") == 1
    finally:
        backend.close()
