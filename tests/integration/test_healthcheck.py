"""``edgeproxy healthcheck`` (the image's HEALTHCHECK) against a real ``edgeproxy run``: exit 0
while it serves, 1 while it drains or when nothing answers; a config without an admin endpoint
is not checked."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, Backend, connect, echo_handler, edgeproxy, free_port, proxy_config


def healthcheck(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeproxy", "healthcheck", "-c", str(config), "--timeout", "2"],
        capture_output=True, text=True, cwd=ROOT, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])  # a wildcard bind is asked on loopback
def test_healthy_while_serving_unhealthy_while_draining(bind: str) -> None:
    backend = Backend(echo_handler)
    port, admin = free_port(), free_port()
    cfg = proxy_config(port, [backend.address], admin={"bind": f"{bind}:{admin}", "token": "t"}, drain="10s")
    with edgeproxy(cfg) as proxy:
        r = healthcheck(proxy.config_path)
        assert (r.returncode, r.stdout) == (0, "healthy: HTTP/1.1 200 OK ok\n"), r
        with connect("127.0.0.1", port) as held:  # keeps the drain going
            held.sendall(b"x")
            assert held.recv(1) == b"x"
            proxy.send(signal.SIGTERM)
            proxy.wait_log(lambda rec: rec.get("msg") == "draining: no new connections")
            r = healthcheck(proxy.config_path)
            assert r.returncode == 1 and r.stderr.startswith("unhealthy: HTTP/1.1 503"), r
    r = healthcheck(proxy.config_path)
    assert r.returncode == 1 and "Connection refused" in r.stderr, r


def test_without_an_admin_endpoint_nothing_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "edgeproxy.yaml"
    path.write_text(yaml.safe_dump(proxy_config(free_port(), ["127.0.0.1:9"])))
    r = healthcheck(path)
    assert (r.returncode, r.stdout) == (0, f"{path} has no admin.bind: /healthz not checked\n"), r


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (None, "cannot read the config"),
        ("admin: {bind: [1, 2]}\n", "admin.bind is not a host:port"),
        ("admin: {bind: 'localhost:9901'}\n", "'localhost' is not an IP address"),
        ("admin: [\n", "cannot read the config"),
    ],
)
def test_an_unreadable_admin_address_is_unhealthy(tmp_path: Path, text: str | None, error: str) -> None:
    path = tmp_path / "edgeproxy.yaml"
    if text is not None:
        path.write_text(text)
    r = healthcheck(path)
    assert r.returncode == 1 and error in r.stderr, r
