"""HTTPS by label on the real dockerd: a service labelled ``edgeproxy.tls=true`` gets its
``edgeproxy.host`` a pebble-issued certificate from a running ``edgeproxy run`` (2 workers), and
its requests are served over TLS with it."""

from __future__ import annotations

import contextlib
import ssl
import time
from pathlib import Path

import pytest

from tests.helpers import connect, edgeproxy, free_port, recv_all
from tests.pebble import running_pebble
from tests.swarm.conftest import Swarm

pytestmark = [pytest.mark.swarm, pytest.mark.timeout(180)]
HOST = "lab.test"


def test_label_gets_its_host_a_certificate(swarm: Swarm, tmp_path: Path) -> None:
    published, admin = free_port(), free_port()
    with running_pebble(tmp_path / "pebble") as peb:
        cfg = {
            "workers": 2,
            "listeners": [
                # acme-only TLS listener with no name of its own: the label's host is served here
                {
                    "name": "https",
                    "bind": f"127.0.0.1:{peb.tlsalpn01_port}",
                    "mode": "http",
                    "backend": "none",
                    "tls": {"acme": []},
                },
                {
                    "name": "http",
                    "bind": f"127.0.0.1:{peb.http01_port}",
                    "mode": "http",
                    "backend": "none",
                    "redirect_https": True,
                },
            ],
            "backends": {"none": {"health": {"type": "none"}, "servers": ["127.0.0.1:9"]}},
            "admin": {"bind": f"127.0.0.1:{admin}"},
            "swarm": {
                "managers": [swarm.url],
                "timeout": "2s",
                "labels": True,
                "node_addresses": {swarm.hostname: "127.0.0.1"},
            },
            "acme": {"directory": peb.directory, "ca": peb.ca, "storage": str(tmp_path / "acme")},
        }
        labels = {"edgeproxy.enable": "true", "edgeproxy.host": HOST, "edgeproxy.tls": "true"}
        with edgeproxy(cfg) as proxy:
            started = time.monotonic()
            swarm.service("tlslab", published, labels=labels)
            try:
                ctx = ssl.create_default_context(cadata=peb.root_pem().decode())
                deadline = time.monotonic() + 90
                body = b""
                while time.monotonic() < deadline and b"remote=" not in body:
                    with (
                        contextlib.suppress(OSError, ssl.SSLError),
                        ctx.wrap_socket(connect("127.0.0.1", peb.tlsalpn01_port), server_hostname=HOST) as s,
                    ):
                        s.sendall(f"GET /cgi-bin/ip HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
                        body = recv_all(s)
                    time.sleep(0.2)
                assert b"remote=" in body, proxy.log()[-3000:]
                seconds = time.monotonic() - started
                print(f"\nlabel -> certificate served over TLS {seconds:.2f} s after the service create")
                assert peb.count("POST /order-plz") == 1
            finally:
                swarm.docker("service", "rm", "tlslab", check=False)
