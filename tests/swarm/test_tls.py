"""A ``tcp://`` manager with TLS client certificates, against the real dockerd's TLS listener
(``--tlsverify``, a throw-away CA: conftest.py), as ``docker --tlsverify`` would talk to it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgeproxy.config.model import TLSFiles
from edgeproxy.discovery.docker_api import DockerClient, Endpoint, ManagerUnavailable
from tests.helpers import edgeproxy, free_port
from tests.swarm.conftest import Swarm, http_get, make_tls

pytestmark = pytest.mark.swarm


def test_discovery_through_a_tls_manager(swarm: Swarm) -> None:
    published, port = free_port(), free_port()
    swarm.service("tlsweb", published)
    try:
        swarm.wait_task_answers(published)
        t = swarm.tls
        cfg = {
            "listeners": [{"name": "front", "bind": f"127.0.0.1:{port}", "mode": "tcp", "backend": "app"}],
            "backends": {"app": {"health": {"type": "none"}, "swarm": {"service": "tlsweb", "port": 80}}},
            "swarm": {
                "managers": [swarm.tls_url],
                "tls": {"ca": t["ca"], "cert": t["client_cert"], "key": t["client_key"]},
                "timeout": "2s",
                "node_addresses": {swarm.hostname: "127.0.0.1"},
            },
        }
        with edgeproxy(cfg) as proxy:
            proxy.wait_log(
                lambda r: r.get("msg") == "swarm: servers changed" and r["servers"] == [f"127.0.0.1:{published} up"]
            )
            assert b"remote=" in http_get("127.0.0.1", port, "/cgi-bin/ip", source="127.0.0.33")
    finally:
        swarm.docker("service", "rm", "tlsweb", check=False)


def test_tls_manager_refuses_what_it_does_not_trust(swarm: Swarm, tmp_path: Path) -> None:
    """A client certificate from another CA is refused by the engine; an engine certificate from
    another CA is refused by edgeproxy. Both read as an unavailable manager (try the next one)."""
    other = make_tls(tmp_path / "other")
    t = swarm.tls

    async def nodes(tls: TLSFiles) -> str:
        client = DockerClient(Endpoint.parse(swarm.tls_url, tls), timeout=3)
        try:
            await client.get("/nodes")
        except ManagerUnavailable as e:
            return str(e)
        return "answered"

    ok = asyncio.run(nodes(TLSFiles(t["ca"], t["client_cert"], t["client_key"])))
    assert ok == "answered"
    wrong_client = asyncio.run(nodes(TLSFiles(t["ca"], other["client_cert"], other["client_key"])))
    wrong_server = asyncio.run(nodes(TLSFiles(other["ca"], t["client_cert"], t["client_key"])))
    assert wrong_client != "answered" and wrong_server != "answered"
    assert "CERTIFICATE_VERIFY_FAILED" in wrong_server, wrong_server
