"""The Engine API client against a scripted engine on a real unix socket.

The scripted engine (a stand-in, named as such) answers what a real one answers in the cases a
single-node test swarm cannot produce on demand: a manager without a leader (the recorded 500), a
manager that hangs, an event stream cut into arbitrary chunks. Everything else is tested against a
real dockerd in tests/swarm/.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.discovery.docker_api import DockerAPI, DockerError

DATA = Path(__file__).parent / "data" / "swarm"
Handler = Callable[[str, asyncio.StreamWriter], Awaitable[None]]


def response(status: int, body: bytes, reason: str = "X") -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


VERSION = response(200, json.dumps({"ApiVersion": "1.41", "MinAPIVersion": "1.12"}).encode())


async def scripted_engine(handler: Handler, body: Callable[[str], Awaitable[Any]]) -> Any:
    """Run ``body(socket_url)`` while a scripted engine serves ``handler(path, writer)`` per request."""
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode()
        seen.append(path)
        try:
            if path == "/version":
                writer.write(VERSION)
            else:
                await handler(path, writer)
            await writer.drain()
        finally:
            writer.close()

    with tempfile.TemporaryDirectory() as d:
        sock = f"{d}/docker.sock"
        server = await asyncio.start_unix_server(serve, sock)
        async with server:
            result = await body(f"unix://{sock}")
    return result, seen


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


def test_get_negotiates_the_version_and_sends_filters() -> None:
    async def handler(path: str, w: asyncio.StreamWriter) -> None:
        w.write(response(200, b'[{"ID": "abc"}]'))

    async def body(url: str) -> Any:
        return await DockerAPI(url).get("/tasks", {"desired-state": ["running"]})

    result, seen = run(scripted_engine(handler, body))
    assert result == [{"ID": "abc"}]
    assert seen == ["/version", "/v1.41/tasks?filters=%7B%22desired-state%22%3A%5B%22running%22%5D%7D"]


def test_leaderless_manager_answer_is_no_leader() -> None:
    recorded = (DATA / "lab-noleader-500.json").read_bytes()

    async def handler(path: str, w: asyncio.StreamWriter) -> None:
        w.write(response(500, recorded, "Internal Server Error"))

    async def body(url: str) -> DockerError:
        with pytest.raises(DockerError) as e:
            await DockerAPI(url).get("/services")
        return e.value

    err, _ = run(scripted_engine(handler, body))
    assert (err.kind, err.status) == ("no_leader", 500)
    assert "The swarm does not have a leader" in str(err)


def test_hanging_manager_times_out_at_the_deadline() -> None:
    async def handler(path: str, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)  # a manager without quorum blocks ~20 s before answering

    async def body(url: str) -> tuple[str, float]:
        t0 = time.monotonic()
        with pytest.raises(DockerError) as e:
            await DockerAPI(url, timeout=0.3).get("/services")
        return e.value.kind, time.monotonic() - t0

    (kind, took), _ = run(scripted_engine(handler, body))
    assert kind == "timeout"
    assert 0.25 < took < 2.0


def test_unreachable_engines() -> None:
    async def main() -> list[str]:
        kinds = []
        for url in ("unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1"):
            with pytest.raises(DockerError) as e:
                await DockerAPI(url, timeout=1).get("/services")
            kinds.append(f"{e.value.kind}: {e.value}")
        return kinds

    assert run(main()) == ["unreachable: no such socket", "unreachable: connection refused"]


def test_event_stream_in_arbitrary_chunks() -> None:
    events = [
        {"Type": "service", "Action": "update", "Actor": {"ID": "a", "Attributes": {"name": "web"}}},
        {"Type": "node", "Action": "update", "Actor": {"ID": "n", "Attributes": {"availability.new": "drain"}}},
        {"Type": "service", "Action": "remove", "Actor": {"ID": "a", "Attributes": {"name": "wéb"}}},
    ]
    stream = b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in events)

    async def handler(path: str, w: asyncio.StreamWriter) -> None:
        assert path.startswith("/v1.41/events?filters=")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        # cut inside the first object, inside a UTF-8 sequence, and two objects in one chunk
        cuts = [0, 17, stream.index("é".encode()) + 1, len(stream)]
        for a, b in itertools.pairwise(cuts):
            w.write(f"{b - a:x}\r\n".encode() + stream[a:b] + b"\r\n")
            await w.drain()
            await asyncio.sleep(0.01)
        w.write(b"0\r\n\r\n")

    async def body(url: str) -> tuple[list[dict[str, Any]], int]:
        got: list[dict[str, Any]] = []
        opened = []
        await DockerAPI(url).watch_events({"type": ["service", "node"]}, got.append, on_open=lambda: opened.append(1))
        return got, len(opened)

    (got, opened), _ = run(scripted_engine(handler, body))
    assert got == events
    assert opened == 1


def test_event_stream_refused_by_a_non_manager() -> None:
    async def handler(path: str, w: asyncio.StreamWriter) -> None:
        w.write(response(503, b'{"message":"This node is not a swarm manager."}'))

    async def body(url: str) -> DockerError:
        got: list[Any] = []
        with pytest.raises(DockerError) as e:
            await DockerAPI(url).watch_events({"type": ["service"]}, got.append)
        assert got == []  # the error body is not an event
        return e.value

    err, _ = run(scripted_engine(handler, body))
    assert err.kind == "unavailable"
