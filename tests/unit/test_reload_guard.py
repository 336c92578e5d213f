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

from edgeproxy.config import Config, parse_config
from edgeproxy.log import log
from edgeproxy.runtime import proxy as proxy_module
from edgeproxy.runtime import worker as worker_module
from edgeproxy.runtime.channel import Channel, Message
from edgeproxy.runtime.proxy import Proxy
from edgeproxy.runtime.worker import Worker

CONFIG = b"""listeners: [{name: web, bind: "127.0.0.1:1", backend: app}]
backends: {app: {servers: ["127.0.0.1:2"]}}
"""


def raising_parse_config(raw: bytes, path: str = "", **kw: object) -> Config:
    raise RecursionError("stand-in for a loader bug")


def test_proxy_reload_counts_any_exception_as_a_failed_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "edgeproxy.yaml"
    path.write_bytes(CONFIG)
    config = parse_config(CONFIG, str(path))
    proxy = Proxy(config)
    monkeypatch.setattr(proxy_module, "parse_config", raising_parse_config)
    events = io.StringIO()
    monkeypatch.setattr(log, "events", events)
    assert asyncio.run(proxy.reload()) is False
    assert proxy.config is config and (proxy.reloads.failure, proxy.reloads.success) == (1, 0)
    record = json.loads(events.getvalue().splitlines()[-1])
    assert record["msg"] == "reload failed: keeping the running configuration" and record["config"] == str(path)
    assert record["errors"] == [f"{path}:1: cannot load: RecursionError('stand-in for a loader bug')"]


def test_worker_answers_a_config_it_cannot_load_and_keeps_running(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        worker = Worker(theirs.detach(), 1)
        supervisor = Channel(ours, lambda m, s: None, lambda: None)
        monkeypatch.setattr(worker_module, "parse_config", raising_parse_config)
        run = asyncio.ensure_future(worker.run())
        reply: Message = await supervisor.request({"op": "config", "path": "e.yaml", "raw": CONFIG.decode()})
        assert reply["ok"] is False and "RecursionError" in reply["error"]
        assert not run.done()  # still reading the channel: the next config would be applied
        supervisor.send({"op": "stop"})
        assert await asyncio.wait_for(run, 10) == 0
        ours.close()

    asyncio.run(main())
