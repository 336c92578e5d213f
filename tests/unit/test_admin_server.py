"""The admin endpoint against a stats view and a pool registry alone (no process around it), over
real HTTP on loopback: what /metrics and /status show comes from the view and the registry, a
drain goes through the registry, and a reload moves the endpoint or fails leaving it in place."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeproxy.admin.server import AdminError, AdminServer
from edgeproxy.config import Address, AdminConfig, Backend, Config, ServerConfig, parse_address, parse_config
from edgeproxy.metrics import Family
from edgeproxy.pools import Change, PoolRegistry
from edgeproxy.stats import ReloadStats

BASE = parse_config(b"listeners: [{name: front, bind: '127.0.0.1:1', mode: tcp, backend: app}]\nbackends: {app: {}}\n")


def with_admin(host: str, port: int = 0, token: str | None = None) -> Config:
    return dataclasses.replace(BASE, admin=AdminConfig(Address(host, port), token))


@dataclasses.dataclass
class View:
    """A StatsView (admin/view.py) with fixed numbers: what the process would report."""

    config: Config
    draining: bool = False
    started: float = 1700000000.0
    reloads: ReloadStats = dataclasses.field(default_factory=ReloadStats)

    async def data_plane_families(self) -> list[Family]:
        conns = Family("edgeproxy_connections_total", "counter", "c")
        conns.add(7, listener="front")
        return [conns]

    def control_families(self) -> list[Family]:
        workers = Family("edgeproxy_workers", "gauge", "w")
        workers.add(2)
        return [workers]

    def status_sections(self) -> dict[str, Any]:
        return {"workers": [{"id": 1}], "swarm": {"up": True}}


async def request(port: int, method: str, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def port_of(admin: AdminServer) -> int:
    assert admin.server is not None
    port: int = admin.server.sockets[0].getsockname()[1]
    return port


def registry_with_app() -> PoolRegistry:
    registry = PoolRegistry()
    servers = (ServerConfig(parse_address("10.0.0.1:80")),)
    registry.stage({"app": Backend(name="app", servers=servers)}).commit()
    return registry


def test_metrics_status_and_drain_read_the_view_and_change_only_the_registry() -> None:
    async def main() -> None:
        registry = registry_with_app()
        changes: list[Change] = []
        registry.subscribe(changes.append)
        view = View(with_admin("127.0.0.1"))
        admin = AdminServer(view, registry)
        (await admin.prepare(view.config)).commit()
        port = port_of(admin)
        try:
            status, body = await request(port, "GET", "/metrics")
            got = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(body.decode())
                for s in f.samples
            }
            assert status == 200
            assert got[("edgeproxy_connections_total", (("listener", "front"),))] == 7
            assert got[("edgeproxy_workers", ())] == 2
            assert got[("edgeproxy_server_up", (("backend", "app"), ("server", "10.0.0.1:80")))] == 1
            assert got[("edgeproxy_config_reloads_total", (("result", "failure"),))] == 0
            status, body = await request(port, "POST", "/servers/app/10.0.0.1:80/drain")
            assert status == 200 and json.loads(body)["state"] == "drain"
            assert changes == [Change(frozenset({"app"}))]  # the workers would be told
            status, body = await request(port, "GET", "/status")
            doc = json.loads(body)
            assert doc["workers"] == [{"id": 1}] and doc["swarm"] == {"up": True}
            assert doc["backends"][0]["servers"][0]["state"] == "drain"
            assert doc["listeners"][0]["connections_total"] == 7
            assert (await request(port, "POST", "/servers/nope/x/ready"))[0] == 404
            assert (await request(port, "GET", "/healthz"))[0] == 200
            view.draining = True
            assert (await request(port, "GET", "/healthz"))[0] == 503
        finally:
            await admin.stop()

    asyncio.run(main())


def test_a_reload_moves_the_endpoint_or_fails_leaving_it_where_it_was() -> None:
    async def main() -> None:
        registry = registry_with_app()
        view = View(with_admin("127.0.0.1"))
        admin = AdminServer(view, registry)
        (await admin.prepare(view.config)).commit()
        old = port_of(admin)
        busy = socket.socket()
        busy.bind(("127.0.0.3", 0))
        busy.listen()
        try:
            # The new address is in use: the prepare fails, nothing changed.
            with pytest.raises(AdminError, match=r"admin.bind: cannot bind 127.0.0.3:\d+"):
                await admin.prepare(with_admin("127.0.0.3", busy.getsockname()[1]))
            assert (await request(old, "GET", "/healthz"))[0] == 200
            # Prepared but aborted (another step of the reload failed): still where it was.
            staged = await admin.prepare(with_admin("127.0.0.2"))
            staged.abort()
            assert (await request(old, "GET", "/healthz"))[0] == 200 and port_of(admin) == old
            # Committed: the new address answers, the old one is closed.
            staged = await admin.prepare(with_admin("127.0.0.2"))
            staged.commit()
            new = port_of(admin)
            assert (await request(new, "GET", "/healthz", host="127.0.0.2"))[0] == 200
            with pytest.raises(ConnectionRefusedError):
                await request(old, "GET", "/healthz")
            # A token change at the same address keeps the socket.
            server = admin.server
            (await admin.prepare(with_admin("127.0.0.2", token="s3cret"))).commit()
            assert admin.server is server
            assert (await request(new, "GET", "/status", host="127.0.0.2"))[0] == 401
            # admin: removed by a reload: the endpoint closes.
            (await admin.prepare(BASE)).commit()
            assert admin.server is None
            with pytest.raises(ConnectionRefusedError):
                await request(new, "GET", "/healthz", host="127.0.0.2")
        finally:
            busy.close()
            await admin.stop()

    asyncio.run(main())
