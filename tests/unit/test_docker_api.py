"""The Engine API client's version negotiation, against a scripted engine on a real unix socket.

The scripted engine (a stand-in, named as such) plays an engine newer than the one on these
machines: Docker 29 serves API 1.44 and above only. Everything else about the client is tested
against a real dockerd in tests/swarm/.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from typing import Any

import pytest

from edgeproxy.discovery.docker_api import DockerClient, Endpoint, negotiate


@pytest.mark.parametrize(
    ("api", "min_api", "chosen"),
    [
        ("1.41", "1.12", "1.41"),  # dockerd 20.10 (Debian 12)
        ("1.45", "1.24", "1.41"),  # Docker 26: ours
        ("1.52", "1.44", "1.44"),  # Docker 29: the oldest it still serves
        ("1.40", None, "1.40"),  # older than ours: its newest
    ],
)
def test_version_negotiation(api: str, min_api: str | None, chosen: str) -> None:
    info = {"ApiVersion": api, **({"MinAPIVersion": min_api} if min_api else {})}
    assert negotiate("unix:///x", info) == chosen


def test_a_newer_engine_is_spoken_to_in_a_version_it_serves() -> None:
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode()
        seen.append(path)
        if path == "/version":
            body = json.dumps({"ApiVersion": "1.52", "MinAPIVersion": "1.44"}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        elif path.startswith("/v1.44/events"):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            event = b'{"Type":"service","Action":"update"}\n'
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
        elif path.startswith("/v1.44/"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")
        else:  # what Docker 29 answers to an older version
            body = b'{"message":"client version 1.41 is too old. Minimum supported API version is 1.44"}'
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    async def main() -> tuple[Any, list[Any]]:
        with tempfile.TemporaryDirectory() as d:
            server = await asyncio.start_unix_server(serve, f"{d}/docker.sock")
            async with server:
                client = DockerClient(Endpoint.parse(f"unix://{d}/docker.sock"), timeout=2)
                nodes = await client.get("/nodes")
                events = [e async for e in client.events({})]
        return nodes, events

    nodes, events = asyncio.run(main())
    assert nodes == [] and events == [{"Type": "service", "Action": "update"}]
    assert seen == ["/version", "/v1.44/nodes", "/v1.44/events"]  # asked once, then remembered


def test_snapshot_asks_for_the_tasks_of_the_selected_services_only() -> None:
    """Discovery reads the tasks of the services it uses, by ID (recorded answers, lab swarm)."""
    from pathlib import Path
    from urllib.parse import parse_qs, urlsplit

    from edgeproxy.discovery.swarm import fetch_snapshot

    data = Path(__file__).parent / "data" / "swarm"
    answers = {
        "/v1.41/nodes": (data / "lab-nodes.json").read_bytes(),
        "/v1.41/services": (data / "lab-services.json").read_bytes(),
        "/v1.41/tasks": (data / "lab-tasks.json").read_bytes(),
    }
    queries: list[dict[str, Any]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        target = urlsplit(head.split(b" ", 2)[1].decode())
        if target.path == "/version":
            body = b'{"ApiVersion": "1.41", "MinAPIVersion": "1.12"}'
        else:
            body = answers[target.path]
            if target.query:
                queries.append(json.loads(parse_qs(target.query)["filters"][0]))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    async def main() -> tuple[Any, Any]:
        with tempfile.TemporaryDirectory() as d:
            server = await asyncio.start_unix_server(serve, f"{d}/docker.sock")
            async with server:
                client = DockerClient(Endpoint.parse(f"unix://{d}/docker.sock"), timeout=2)
                some = await fetch_snapshot(client, {}, lambda s: s.name == "web")
                none = await fetch_snapshot(client, {}, lambda s: False)
        return some, none

    some, none = asyncio.run(main())
    web_id = some.services["web"].id
    assert queries == [{"desired-state": ["running"], "service": [web_id]}]  # no /tasks call for "none"
    assert len(some.tasks) == 4 and none.tasks == ()
