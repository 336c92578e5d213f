"""A reload never stops the proxy, whatever goes wrong while the new file is read (issue 10).

The loader is total now (tests/unit/test_config_yaml.py, the fuzzers), so nothing real makes
``parse_config`` raise anything but ``ConfigError`` any more. These tests stand in for the next
unknown bug with a ``parse_config`` that raises (a stand-in, named so): the runtime must count a
failed reload and keep its configuration, in the single process and in a worker.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
from pathlib import Path

import pytest

from edgeproxy.admin.view import StatsView
from edgeproxy.config import Config, parse_config
from edgeproxy.log import log
from edgeproxy.pools import PoolRegistry
from edgeproxy.runtime import reload as reload_module
from edgeproxy.runtime.channel import Channel, Message
from edgeproxy.runtime.control import ControlPlane
from edgeproxy.runtime.dataplane import DataPlane
from edgeproxy.runtime.main import control_plane
from edgeproxy.runtime.single import SingleProcess
from edgeproxy.runtime.sockets import SocketSet
from edgeproxy.runtime.worker import Worker
from tests.helpers import free_port


def config_bytes(port: int | None = None) -> bytes:
    return (
        f'listeners: [{{name: web, bind: "127.0.0.1:{port or free_port()}", backend: app}}]\n'
        'backends: {app: {health: {type: none}, servers: ["127.0.0.1:2"]}}\n'
    ).encode()


def raising_parse_config(raw: bytes, path: str = "", **kw: object) -> Config:
    raise RuntimeError("stand-in for a loader bug")


def test_single_process_reload_counts_any_exception_as_a_failed_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        path = tmp_path / "edgeproxy.yaml"
        raw = config_bytes()
        path.write_bytes(raw)
        config = parse_config(raw, str(path))
        registry, sockets = PoolRegistry(), SocketSet()

        def make_control(view: StatsView) -> ControlPlane:
            return control_plane(registry, view)

        proxy = SingleProcess(config, registry, sockets, DataPlane(registry, sockets), make_control)
        await proxy.start()
        try:
            monkeypatch.setattr(reload_module, "parse_config", raising_parse_config)
            events = io.StringIO()
            monkeypatch.setattr(log, "events", events)
            assert await proxy.reload() is False
            assert proxy.config is config
            assert (proxy.reloads.failure, proxy.reloads.success) == (1, 0)
            record = json.loads(events.getvalue().splitlines()[-1])
            assert record["msg"] == "reload failed: keeping the running configuration"
            assert record["config"] == str(path)
            assert "RuntimeError('stand-in for a loader bug')" in json.dumps(record["errors"])
            assert set(proxy.dataplane.contexts) == {"web"}
        finally:
            await proxy.shutdown()

    asyncio.run(main())


def test_worker_answers_a_config_it_cannot_load_and_keeps_running(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        registry, sockets = PoolRegistry(), SocketSet(can_bind=False)
        worker = Worker(theirs.detach(), 1, registry, sockets, DataPlane(registry, sockets))
        supervisor = Channel(ours, lambda m, s: None, lambda: None)
        run = asyncio.ensure_future(worker.run())
        listening = socket.create_server(("127.0.0.1", 0))
        port = listening.getsockname()[1]
        supervisor.send({"op": "socket", "key": ["tcp", "127.0.0.1", port]}, [listening])
        raw = config_bytes(port).decode()
        started: Message = await supervisor.request({"op": "config", "path": "e.yaml", "raw": raw}, timeout=10)
        assert started["ok"] is True
        monkeypatch.setattr(reload_module, "parse_config", raising_parse_config)
        reply: Message = await supervisor.request({"op": "prepare", "path": "e.yaml", "raw": raw}, timeout=10)
        assert reply["ok"] is False and "RuntimeError" in reply["error"]
        assert not run.done()  # still reading the channel: the next config would be applied
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # and still accepting on its listener
        listening.close()
        supervisor.send({"op": "stop"})
        assert await asyncio.wait_for(run, 10) == 0
        ours.close()

    asyncio.run(main())
