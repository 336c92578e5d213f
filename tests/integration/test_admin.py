"""The admin endpoint: /metrics (parsed by prometheus_client), /healthz, /status, server drain."""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from edgeproxy.admin.server import AdminError, check_admin
from edgeproxy.config import AdminConfig, parse_address
from tests.helpers import (
    ROOT,
    Backend,
    Held,
    Seen,
    admin_json,
    admin_request,
    connect,
    echo_handler,
    edgeproxy,
    exchange,
    free_port,
    metric,
    proxy_config,
    recv_all,
    scrape,
)


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_parse_and_count_exactly_what_was_sent(workers: int) -> None:
    def double(conn: socket.socket, seen: Seen) -> None:
        data = recv_all(conn)
        conn.sendall(data * 2)

    backend = Backend(double)
    port, admin = free_port(), free_port()
    sent = [b"x" * (100 + i) for i in range(25)]
    with edgeproxy(proxy_config(port, [backend.address], admin=admin, workers=workers)):
        for payload in sent:
            assert exchange(port, payload) == payload * 2
        time.sleep(0.2)  # the last connections' ends are counted
        m = scrape(admin)
    n, nbytes = len(sent), sum(map(len, sent))
    assert metric(m, "edgeproxy_connections_total", listener="front") == n
    assert metric(m, "edgeproxy_active_connections", listener="front") == 0
    assert metric(m, "edgeproxy_bytes_total", listener="front", direction="in") == nbytes
    assert metric(m, "edgeproxy_bytes_total", listener="front", direction="out") == 2 * nbytes
    assert metric(m, "edgeproxy_connections_ended_total", listener="front") == n
    assert metric(m, "edgeproxy_server_connections_total", backend="app", server=backend.address) == n
    assert metric(m, "edgeproxy_server_up", backend="app", server=backend.address) == 1
    assert metric(m, "edgeproxy_config_reloads_total", result="success") == 0
    assert metric(m, "edgeproxy_config_reloads_total", result="failure") == 0
    # Histograms: one connect time per connection, cumulative buckets ending at +Inf.
    assert metric(m, "edgeproxy_upstream_connect_seconds_count", listener="front") == n
    assert metric(m, "edgeproxy_upstream_connect_seconds_bucket", listener="front", le="+Inf") == n
    assert metric(m, "edgeproxy_request_duration_seconds_count", listener="front") == 0


def test_token_is_required_except_for_healthz() -> None:
    backend = Backend(echo_handler)
    port, admin = free_port(), free_port()
    token = "s3cret-token"
    with edgeproxy(proxy_config(port, [backend.address], admin={"bind": f"127.0.0.1:{admin}", "token": token})):
        for path in ("/metrics", "/status"):
            assert admin_request(admin, path)[0] == 401
            assert admin_request(admin, path, token="wrong")[0] == 401
            assert admin_request(admin, path, token=token)[0] == 200
        assert admin_request(admin, "/servers/app/x/drain", method="POST")[0] == 401
        assert admin_request(admin, "/healthz") == (200, b"ok\n")
        assert admin_request(admin, "/nope", token=token)[0] == 404


def test_non_loopback_admin_without_token_is_refused() -> None:
    port, admin = free_port(), free_port()
    cfg = proxy_config(port, ["127.0.0.1:9"], admin={"bind": f"0.0.0.0:{admin}"})
    path = ROOT / "tests" / f".admin-refused-{admin}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        for cmd in ("check", "run"):
            r = subprocess.run(
                [sys.executable, "-m", "edgeproxy", cmd, "-c", str(path)], capture_output=True, text=True, timeout=30
            )
            assert r.returncode == 1
            assert "admin.bind" in r.stderr and "token" in r.stderr
    finally:
        path.unlink()
    # The endpoint refuses too, whatever built the config.
    with pytest.raises(AdminError, match="refusing"):
        check_admin(AdminConfig(bind=parse_address("0.0.0.0:9901")))
    check_admin(AdminConfig(bind=parse_address("[::1]:9901")))
    check_admin(AdminConfig(bind=parse_address("0.0.0.0:9901"), token="t"))


@pytest.mark.parametrize("workers", [1, 2])
def test_healthz_is_503_while_draining(workers: int) -> None:
    held = Held(b"a", b"")
    backend = Backend(held)
    port, admin = free_port(), free_port()
    with edgeproxy(proxy_config(port, [backend.address], admin=admin, workers=workers)) as proxy:
        assert admin_request(admin, "/healthz") == (200, b"ok\n")
        conn = connect("127.0.0.1", port)
        assert conn.recv(1) == b"a"
        proxy.send(signal.SIGTERM)
        proxy.wait_log(lambda r: r.get("msg", "").startswith("draining"))
        assert admin_request(admin, "/healthz") == (503, b"draining\n")
        assert admin_json(admin)["draining"] is True
        held.release()
        conn.close()
        assert proxy.proc.wait(15) == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_drain_and_ready_a_server_from_the_admin_api(workers: int) -> None:
    a, b = Backend(echo_handler), Backend(echo_handler)
    port, admin = free_port(), free_port()
    with edgeproxy(proxy_config(port, [a.address, b.address], admin=admin, workers=workers)) as proxy:
        status, body = admin_request(admin, f"/servers/app/{a.address}/drain", method="POST")
        assert status == 200 and b'"drain"' in body
        time.sleep(0.3)  # reaches the workers within the pool sync interval (0.1 s)
        for _ in range(10):
            assert exchange(port, b"p") == b"p"
        assert len(a.seen) == 0 and len(b.seen) == 10
        srv = next(s for s in admin_json(admin)["backends"][0]["servers"] if s["name"] == a.address)
        assert srv["state"] == "drain" and srv["admin_drain"] is True
        assert metric(scrape(admin), "edgeproxy_server_up", server=a.address) == 0
        proxy.wait_log(lambda r: r.get("msg") == "admin: server set to drain")
        assert admin_request(admin, f"/servers/app/{a.address}/ready", method="POST")[0] == 200
        time.sleep(0.3)
        for _ in range(10):
            assert exchange(port, b"p") == b"p"
        assert len(a.seen) >= 3  # back in rotation (each worker runs its own round robin)
        assert admin_request(admin, "/servers/app/127.0.0.1:1/drain", method="POST")[0] == 404
        assert admin_request(admin, "/servers/nope/x/drain", method="POST")[0] == 404
        assert admin_request(admin, f"/servers/app/{a.address}/drain")[0] == 405


def test_status_lists_listeners_backends_servers_config_hash_and_reload() -> None:
    held = Held(b"a", b"")
    backend = Backend(held)
    port, admin = free_port(), free_port()
    cfg = proxy_config(port, [backend.address], admin=admin)
    with edgeproxy(cfg) as proxy:
        conn = connect("127.0.0.1", port)
        assert conn.recv(1) == b"a"
        st = admin_json(admin)
        assert st["config"]["sha256"] == hashlib.sha256(proxy.config_path.read_bytes()).hexdigest()
        assert st["config"]["last_reload"]["result"] == "initial"
        assert st["listeners"] == [
            {
                "name": "front",
                "mode": "tcp",
                "bind": [f"127.0.0.1:{port}"],
                "backend": "app",
                "active": 1,
                "connections_total": 1,
            }
        ]
        server = st["backends"][0]["servers"][0]
        assert (server["name"], server["state"], server["source"], server["active"]) == (
            backend.address,
            "up",
            "static",
            1,
        )
        cfg["timeouts"]["connect"] = "2s"
        proxy.write_config(cfg)
        proxy.send(signal.SIGHUP)
        proxy.wait_log(lambda r: r.get("msg") == "configuration reloaded")
        st = admin_json(admin)
        assert st["config"]["last_reload"]["result"] == "success"
        assert st["config"]["sha256"] == hashlib.sha256(proxy.config_path.read_bytes()).hexdigest()
        held.release()
        conn.close()
