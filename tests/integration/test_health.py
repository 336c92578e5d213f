"""Active health checks against real servers on loopback."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from proxyprotocol.result import ProxyResultLocal, ProxyResultUnknown

from tests.helpers import (
    Backend,
    Seen,
    admin_json,
    connect,
    echo_handler,
    edgeproxy,
    exchange,
    free_port,
    metric,
    proxy_config,
    scrape,
    whoami_handler,
)


def server_status(admin: int, name: str) -> dict[str, Any]:
    for be in admin_json(admin)["backends"]:
        for s in be["servers"]:
            if s["name"] == name:
                return dict(s)
    raise KeyError(name)


def test_dead_server_marked_down_within_interval_times_fall_gets_no_traffic_comes_back_after_rise() -> None:
    a, b = Backend(echo_handler), Backend(echo_handler)
    port, admin = free_port(), free_port()
    health = {"type": "tcp", "interval": "200ms", "timeout": "200ms", "rise": 2, "fall": 2}
    with edgeproxy(proxy_config(port, [a.address, b.address], admin=admin, health=health)) as proxy:
        deadline = time.monotonic() + 5
        while server_status(admin, a.address)["last_check"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        a.close()
        t0 = time.monotonic()
        rec = proxy.wait_log(lambda r: r.get("msg") == "server down" and r.get("server") == a.address, timeout=5)
        down_after = time.monotonic() - t0
        assert down_after < 0.2 * 2 + 1.5, down_after  # interval * fall, plus margin for a busy machine
        assert rec["check"] == "connection refused"
        assert server_status(admin, a.address)["state"] == "down"
        assert metric(scrape(admin), "edgeproxy_server_up", server=a.address) == 0
        for _ in range(20):
            assert exchange(port, b"ping") == b"ping"
        # No client was sent to the dead server: not one failed connect to it was needed.
        assert not [r for r in proxy.log_lines() if r.get("msg") == "connect to server failed"]
        assert len(b.seen) >= 20
        a2 = Backend(echo_handler, port=a.port)  # it comes back on the same address
        t1 = time.monotonic()
        proxy.wait_log(lambda r: r.get("msg") == "server up" and r.get("server") == a.address, timeout=5)
        assert time.monotonic() - t1 < 0.2 * 2 + 1.5
        before = len([s for s in a2.seen])
        for _ in range(10):
            assert exchange(port, b"ping") == b"ping"
        assert len(a2.seen) - before >= 3  # traffic again (the checks are counted in `seen` too)
        a2.close()
    b.close()


@pytest.mark.parametrize(("version", "kind"), [("v2", ProxyResultLocal), ("v1", ProxyResultUnknown)])
def test_proxy_expecting_backend_gets_local_checks_not_client_traffic(version: str, kind: type) -> None:
    backend = Backend(whoami_handler, expect_proxy=True)
    port, admin = free_port(), free_port()
    health = {"type": "tcp", "interval": "150ms", "timeout": "500ms"}
    with edgeproxy(proxy_config(port, [backend.address], admin=admin, health=health, send_proxy=version)):
        deadline = time.monotonic() + 5
        while len(backend.seen) < 3:
            assert time.monotonic() < deadline, "no health checks arrived"
            time.sleep(0.05)
        with connect("127.0.0.1", port, source="127.0.0.31") as c:
            cport = c.getsockname()[1]
            assert c.makefile("rb").readline() == f"src=127.0.0.31:{cport} dst=127.0.0.1:{port}\n".encode()
        time.sleep(0.3)
        checks = [s for s in backend.seen if isinstance(s.proxy, kind)]
        clients = [s for s in backend.seen if not isinstance(s.proxy, kind)]
        # Every connection carried a header the independent parser accepted; the checks said
        # LOCAL/UNKNOWN (the backend can tell them from clients), the one client its address.
        assert len(checks) >= 3
        assert [str(s.proxy.source[0]) for s in clients if s.proxy] == ["127.0.0.31"]
        assert server_status(admin, backend.address)["state"] == "up"
    backend.close()


def test_http_check_sends_path_and_judges_status_against_expect() -> None:
    requests: list[bytes] = []

    def http(status: int) -> Any:
        def handler(conn: socket.socket, seen: Seen) -> None:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            requests.append(head)
            conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status)

        return handler

    good, bad = Backend(http(204), expect_proxy=True), Backend(http(503), expect_proxy=True)
    port, admin = free_port(), free_port()
    health = {"type": "http", "path": "/healthz", "expect": "2xx", "interval": "150ms", "timeout": "500ms", "fall": 2}
    with edgeproxy(
        proxy_config(port, [good.address, bad.address], admin=admin, health=health, send_proxy="v1")
    ) as proxy:
        proxy.wait_log(lambda r: r.get("msg") == "server down" and r.get("server") == bad.address)
        time.sleep(0.3)
        assert server_status(admin, good.address)["state"] == "up"
        bad_status = server_status(admin, bad.address)
        assert bad_status["state"] == "down"
        assert bad_status["last_check"]["detail"] == "HTTP 503" and bad_status["last_check"]["ok"] is False
        assert server_status(admin, good.address)["last_check"]["detail"] == "HTTP 204"
    assert requests[0].startswith(b"GET /healthz HTTP/1.1\r\n")
    assert all(isinstance(s.proxy, ProxyResultUnknown) for s in [*good.seen, *bad.seen])
    good.close()
    bad.close()


def test_checks_are_spread_over_the_interval_and_run_once_per_interval_with_two_workers() -> None:
    times: dict[int, list[float]] = {}
    lock = threading.Lock()

    def record(conn: socket.socket, seen: Seen) -> None:
        with lock:
            times.setdefault(conn.getsockname()[1], []).append(time.monotonic())

    backends = [Backend(record) for _ in range(4)]
    port, admin = free_port(), free_port()
    interval = 0.4
    health = {"type": "tcp", "interval": "400ms", "timeout": "300ms"}
    with edgeproxy(proxy_config(port, [b.address for b in backends], admin=admin, health=health, workers=2)):
        time.sleep(0.2)
        with lock:
            times.clear()
        window = 2.4
        time.sleep(window)
        with lock:
            counts = {p: len(t) for p, t in times.items()}
            firsts = sorted(t[0] for t in times.values())
    assert len(counts) == 4
    expected = window / interval  # 6 per server; one checker for both workers, not 12
    for n in counts.values():
        assert expected - 3 <= n <= expected + 2, counts
    # Not one burst: the first checks of the four servers in the window are spread out.
    assert firsts[-1] - firsts[0] >= interval * 0.3, firsts
    for b in backends:
        b.close()
