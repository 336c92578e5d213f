"""Privilege separation (``user:``), with a real ``edgeproxy run`` started as root: the supervisor
keeps root, binds every listening socket (ports below 1024 too, on reload too) and reads what only
root may; the data plane runs in workers that became ``user`` (even with ``workers: 1``): no
groups, no capabilities, no_new_privs. What a worker may do is asked of the worker process itself
(tests/process_probe.py: gdb makes it issue the system call).

Starting as another user (nobody): with ``user`` it is refused, without it edgeproxy runs as
before.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import process_probe
from tests.helpers import (
    ROOT,
    Backend,
    UdpBackend,
    connect,
    edgeproxy,
    free_port,
    proxy_config,
    reserve_first,
    udp_client,
    whoami_handler,
)
from tests.integration.test_udp import ask, dns_server, udp_config
from tests.privsep import NOBODY, directory, need_privsep, python_for


@pytest.fixture
def as_root() -> None:
    need_privsep()


def free_low_port(taken: Collection[int] = (), kind: int = socket.SOCK_STREAM) -> int:
    """A port below 1024, free on 127.0.0.1 (as root, we can try), reserved like free_port()'s
    until the test ends: two test processes cannot both pick it."""
    low = [port for port in range(600, 1024) if port not in taken]
    port = reserve_first(random.sample(low, len(low)), host="127.0.0.1", kind=kind)
    if port is None:
        raise RuntimeError("no free port below 1024 on 127.0.0.1")
    return port


@pytest.fixture
def root_key() -> Iterator[Path]:
    """A private key as an operator keeps it: root's, 0600, in a directory anyone may enter."""
    with directory(0o755) as d:
        key = d / "client-key.pem"
        key.write_text("-----BEGIN PRIVATE KEY-----\n")
        key.chmod(0o600)
        yield key


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may write to."""
    with directory(0o777) as d:
        yield d


def whoami(port: int, source: str) -> str:
    with connect("127.0.0.1", port, source=source) as c:
        return c.makefile("rb").readline().decode().strip()


def test_one_worker_drops_root_while_the_supervisor_binds_low_ports(
    as_root: None, root_key: Path, open_dir: Path
) -> None:
    backend = Backend(whoami_handler, expect_proxy=True)
    low, low2 = free_low_port(), 0
    access = open_dir / "access.log"  # made by the worker, as nobody: only workers write access lines
    cfg = proxy_config(low, [backend.address], send_proxy="v2", admin=free_port(), access=str(access))
    cfg["user"] = "nobody"  # workers: 1 (the default)
    with edgeproxy(cfg, python=python_for()) as proxy:
        started = proxy.wait_log(lambda r: r.get("msg") == "edgeproxy started")
        (worker,) = started["worker_pids"]  # a supervisor and one worker, not one process
        supervisor = proxy.proc.pid
        assert process_probe.status(supervisor)["Uid"] == ["0"] * 4
        assert process_probe.credentials(worker) == process_probe.dropped(NOBODY, NOBODY)
        assert whoami(low, "127.0.0.31").startswith("src=127.0.0.31:")

        # What the worker itself may do: not read root's key; the supervisor may.
        assert process_probe.open_errno(worker, str(root_key)) == errno.EACCES
        assert process_probe.open_errno(supervisor, str(root_key)) == 0

        # A reload binds a new port below 1024: the supervisor does, the worker serves it.
        low2 = free_low_port({low})
        cfg["listeners"].append({"name": "more", "bind": f"127.0.0.1:{low2}", "mode": "tcp", "backend": "app"})
        proxy.write_config(cfg)
        proxy.send(signal.SIGHUP)
        proxy.wait_log(lambda r: r.get("msg") == "configuration reloaded")
        assert whoami(low2, "127.0.0.32").startswith("src=127.0.0.32:")

        # The user cannot change on a reload: a worker that dropped root cannot become another.
        proxy.write_config({**cfg, "user": "daemon"})
        proxy.send(signal.SIGHUP)
        failed = proxy.wait_log(lambda r: r.get("msg") == "reload failed: keeping the running configuration")
        assert failed["step"] == "user" and "takes a restart" in failed["errors"][0], failed
        assert whoami(low2, "127.0.0.33").startswith("src=127.0.0.33:")

        deadline = time.monotonic() + 10
        while "127.0.0.33" not in (access.read_text() if access.exists() else ""):
            assert time.monotonic() < deadline, "no access line"
            time.sleep(0.1)
        assert access.stat().st_uid == NOBODY

        # A worker that dies is restarted as the user too.
        os.kill(worker, signal.SIGKILL)
        restarted = proxy.wait_log(lambda r: r.get("msg") == "worker restarted")
        assert process_probe.credentials(restarted["pid"]) == process_probe.dropped(NOBODY, NOBODY)
        assert whoami(low, "127.0.0.34").startswith("src=127.0.0.34:")
    assert proxy.proc.returncode == 0
    backend.close()


def test_udp_on_a_port_below_1024_with_two_dropped_workers(as_root: None) -> None:
    """A UDP address is a SO_REUSEPORT group bound by the supervisor, a socket per worker: the
    workers, as nobody, serve it and answer from the listener's address."""
    backend = UdpBackend(dns_server("192.0.2.7"), expect_proxy=True)
    port = free_low_port(kind=socket.SOCK_DGRAM)
    cfg = {**udp_config(port, [backend.address], send_proxy="v2"), "user": "nobody", "workers": 2}
    with edgeproxy(cfg, python=python_for()) as proxy:
        workers = proxy.wait_log(lambda r: r.get("msg") == "edgeproxy started")["worker_pids"]
        assert [process_probe.credentials(w) for w in workers] == [process_probe.dropped(NOBODY, NOBODY)] * 2
        clients = [udp_client(f"127.0.0.{51 + i}") for i in range(6)]
        for n, c in enumerate(clients):
            assert ask(c, port, n) == "192.0.2.7"  # from 127.0.0.1:port, or ask() fails
        expected = {c.getsockname() for c in clients}
        for c in clients:
            c.close()
    assert {(str(d.proxy.source[0]), d.proxy.source[1]) for d in backend.seen if d.proxy} == expected
    backend.close()


def run_as_nobody(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``edgeproxy ARGS`` started as nobody (no groups), its output in ``log``."""
    python, env = python_for()
    with open(log, "wb") as out:
        return subprocess.Popen(
            [python, "-m", "edgeproxy", *args],
            cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1", **env), stdout=out, stderr=subprocess.STDOUT,
            user=NOBODY, group=NOBODY, extra_groups=[],
        )  # fmt: skip


def test_not_started_as_root_user_is_refused_and_no_user_serves_as_before(as_root: None, open_dir: Path) -> None:
    tmp_path = open_dir
    backend = Backend(whoami_handler, expect_proxy=True)
    port = free_port()
    cfg: dict[str, Any] = proxy_config(port, [backend.address], send_proxy="v2", drain="1s")
    path = tmp_path / "edgeproxy.yaml"
    log = tmp_path / "log"

    import yaml

    path.write_text(yaml.safe_dump({**cfg, "user": "nobody"}))
    path.chmod(0o644)
    assert run_as_nobody(["run", "-c", str(path)], log).wait(30) == 1
    assert "needs edgeproxy started as root (it runs as uid 65534)" in log.read_text()

    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "log2"
    proc = run_as_nobody(["run", "-c", str(path)], log)
    try:
        deadline = time.monotonic() + 20
        while '"msg":"edgeproxy started"' not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.05)
        assert whoami(port, "127.0.0.35").startswith("src=127.0.0.35:")
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text()
    backend.close()
