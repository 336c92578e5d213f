"""Swarm discovery against a pool registry alone (no process around it). The engine is a scripted
stand-in on a real unix socket answering with the lab swarm's recorded JSON (tests/swarm/ has
the real dockerds): discovery fills configured pools and label backends through the registry,
and a reload that removes ``swarm:`` stops it and takes back everything it added."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeproxy.config import Config, Route, parse_config
from edgeproxy.discovery.swarm import SwarmDiscovery
from edgeproxy.pools import Change, PoolRegistry

DATA = Path(__file__).parent / "data" / "swarm"


def engine_answers() -> dict[str, bytes]:
    services = json.loads((DATA / "lab-services.json").read_text())
    services[0]["Spec"]["Labels"] = {"edgeproxy.enable": "true", "edgeproxy.host": "shop.test"}  # "web"
    return {
        "/version": b'{"ApiVersion": "1.41", "MinAPIVersion": "1.12"}',
        "/v1.41/nodes": (DATA / "lab-nodes.json").read_bytes(),
        "/v1.41/services": json.dumps(services).encode(),
        "/v1.41/tasks": (DATA / "lab-tasks.json").read_bytes(),
    }


async def start_engine(sock: str) -> asyncio.AbstractServer:
    answers = engine_answers()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode().partition("?")[0]
        if path.endswith("/events"):  # a stream that ends at once: discovery reconnects later
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        else:
            body = answers[path]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(serve, sock)


def config(text: str) -> Config:
    return parse_config(text.encode(), "inline.yaml")


def with_swarm(sock: str, swarm_extra: str = "") -> Config:
    return config(f"""
listeners: [{{name: web, bind: "127.0.0.1:1", mode: http, backend: app}}]
backends: {{app: {{health: {{type: none}}, swarm: {{service: web, port: 80}}}}}}
swarm: {{managers: ["unix://{sock}"], refresh: 30s, timeout: 1s, labels: true{swarm_extra}}}
""")


WITHOUT_SWARM = config("""
listeners: [{name: web, bind: "127.0.0.1:1", mode: http, backend: app}]
backends: {app: {health: {type: none}, servers: ["10.0.0.1:80"]}}
""")


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def apply(registry: PoolRegistry, disc: SwarmDiscovery, cfg: Config) -> None:
    """What the runtime does on start and reload: the pools step, then the component."""
    pools = registry.stage(cfg.backends)
    staged = await disc.prepare(cfg)
    pools.commit()
    staged.commit()


def test_discovery_fills_the_registry_and_a_reload_without_swarm_takes_it_all_back() -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as d:
            engine = await start_engine(f"{d}/docker.sock")
            registry = PoolRegistry()
            changes: list[Change] = []
            registry.subscribe(changes.append)
            disc = SwarmDiscovery(registry)
            await apply(registry, disc, with_swarm(f"{d}/docker.sock"))
            await disc.ready()
            try:
                app = registry.pools["app"]
                assert disc.refreshes == 1 and disc.swarm_up == 1
                assert len(app.servers_by_source["swarm"]) == 4  # one per running task
                assert registry.dynamic == {"web"} and len(registry.pools["web"].servers) == 4
                assert registry.routes == {"web": (Route(backend="web", host="shop.test"),)}
                assert any(c.routes for c in changes) and disc.status()["swarm"]["label_backends"] == ["web"]
                assert {f.name for f in disc.collect()} >= {"edgeproxy_swarm_up", "edgeproxy_swarm_refreshes_total"}

                # A reload without `swarm:` (its backends lose their swarm: reference too).
                await apply(registry, disc, WITHOUT_SWARM)
                assert not disc.running and disc.status() == {} and disc.collect() == []
                assert app.servers_by_source["swarm"] == [] and [s.name for s in app.servers] == ["10.0.0.1:80"]
                assert "web" not in registry.pools and registry.dynamic == set() and registry.routes == {}

                # A reload that adds it again starts discovery again.
                await apply(registry, disc, with_swarm(f"{d}/docker.sock"))
                await until(lambda: "web" in registry.pools and len(app.servers_by_source["swarm"]) == 4)
                assert disc.running
            finally:
                await disc.stop()
                engine.close()

    asyncio.run(main())


def test_a_swarm_section_that_cannot_be_used_fails_the_prepare_and_changes_nothing() -> None:
    async def main() -> None:
        registry = PoolRegistry()
        disc = SwarmDiscovery(registry)
        await apply(registry, disc, WITHOUT_SWARM)
        bad = config("""
listeners: [{name: web, bind: "127.0.0.1:1", mode: http, backend: app}]
backends: {app: {servers: ["10.0.0.1:80"]}}
swarm:
  managers: ["tcp://127.0.0.1:2376"]
  tls: {ca: /nonexistent/ca.pem, cert: /nonexistent/cert.pem, key: /nonexistent/key.pem}
""")
        with pytest.raises(OSError):
            await disc.prepare(bad)
        assert not disc.running and disc.clients == []

    asyncio.run(main())
