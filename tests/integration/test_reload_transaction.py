"""A reload is a transaction (runtime/reload.py), tested in process on real sockets: a failure at
any step (the file, a socket, the access log, the admin endpoint, a component's bug in prepare or
in commit) leaves the running configuration whole, or as whole as a commit bug allows, and the
process serving; a good reload after them applies everything.

The process is built as runtime/main.py builds it, except where a test adds a component that
fails on purpose (a test double, named as such)."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeproxy.admin.view import StatsView
from edgeproxy.config import Config, parse_config
from edgeproxy.log import log
from edgeproxy.metrics import Family
from edgeproxy.pools import PoolRegistry
from edgeproxy.runtime.control import ControlPlane
from edgeproxy.runtime.dataplane import DataPlane
from edgeproxy.runtime.main import control_plane
from edgeproxy.runtime.single import SingleProcess
from edgeproxy.runtime.sockets import SocketSet
from edgeproxy.staged import Staged
from tests.helpers import Backend, echo_handler, exchange, free_port


class FailingComponent:
    """A control-plane component that fails on purpose (a test double): in ``prepare`` or, as a
    bug would, in its commit."""

    def __init__(self) -> None:
        self.fail_prepare = False
        self.fail_commit = False

    async def prepare(self, config: Config) -> Staged:
        if self.fail_prepare:
            raise RuntimeError("a bug in prepare")

        def commit() -> None:
            if self.fail_commit:
                raise RuntimeError("a bug in commit")

        return Staged(commit)

    async def ready(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def collect(self) -> list[Family]:
        return []

    def status(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def backends() -> Iterator[tuple[Backend, Backend]]:
    a, b = Backend(echo_handler), Backend(echo_handler)
    yield a, b
    a.close()
    b.close()


def busy_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def port_is_free(port: int) -> bool:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        return False
    finally:
        s.close()
    return True


class Scenario:
    def __init__(self, tmp: Path, a: Backend) -> None:
        self.server = a
        self.path = tmp / "edgeproxy.yaml"
        self.tmp = tmp
        self.port = free_port()
        self.cfg: dict[str, Any] = {
            "log": {"access": str(tmp / "access-1.log")},
            "timeouts": {"connect": "1s", "drain": "2s"},
            "admin": {"bind": f"127.0.0.1:{free_port()}"},
            "listeners": [{"name": "front", "bind": f"127.0.0.1:{self.port}", "mode": "tcp", "backend": "app"}],
            "backends": {"app": {"health": {"type": "none"}, "servers": [a.address]}},
        }
        self.failing = FailingComponent()
        self.path.write_text(yaml.safe_dump(self.cfg))
        config = parse_config(self.path.read_bytes(), str(self.path))
        registry = PoolRegistry()
        sockets = SocketSet()

        def make_control(view: StatsView) -> ControlPlane:
            plane = control_plane(registry, view)
            plane.components.append(self.failing)
            return plane

        self.proxy = SingleProcess(config, registry, sockets, DataPlane(registry, sockets), make_control)

    def write(self, cfg: dict[str, Any]) -> None:
        self.path.write_text(yaml.safe_dump(cfg))

    async def reload_fails(self) -> None:
        """The reload fails, is counted, and the old configuration serves, whole."""
        before = self.proxy.config
        failures = self.proxy.reloads.failure
        assert await self.proxy.reload() is False
        assert self.proxy.reloads.failure == failures + 1
        assert self.proxy.config is before
        assert await asyncio.to_thread(exchange, self.port) == b"hello"
        assert set(self.proxy.dataplane.contexts) == {"front"}
        assert set(self.proxy.registry.pools) == {"app"}
        assert [s.name for s in self.proxy.registry.pools["app"].servers] == [self.server.address]


def test_a_failure_at_any_step_leaves_the_running_configuration_whole(
    tmp_path: Path, backends: tuple[Backend, Backend]
) -> None:
    a, b = backends

    async def main() -> None:
        sc = Scenario(tmp_path, a)
        proxy = sc.proxy
        await proxy.start()
        steps: list[str] = []
        events = tmp_path / "events.log"
        try:
            with open(events, "w") as fh:
                log.events = fh
                second = free_port()
                good = copy.deepcopy(sc.cfg)
                good["listeners"].append(
                    {"name": "second", "bind": f"127.0.0.1:{second}", "mode": "tcp", "backend": "app"}
                )
                good["backends"]["app"]["servers"] = [b.address]
                good["backends"]["extra"] = {"health": {"type": "none"}, "servers": [b.address]}
                good["log"]["access"] = str(tmp_path / "access-2.log")

                # 1. the file: not YAML at all
                sc.path.write_text("listeners: [\n")
                await sc.reload_fails()
                # 2. a socket: the new listener's address is taken
                held = busy_port()
                bad = copy.deepcopy(good)
                bad["listeners"][1]["bind"] = f"127.0.0.1:{held.getsockname()[1]}"
                sc.write(bad)
                await sc.reload_fails()
                held.close()
                # 3. the access log cannot be opened: the socket bound for `second` is closed again
                bad = copy.deepcopy(good)
                bad["log"]["access"] = str(tmp_path)  # a directory
                sc.write(bad)
                await sc.reload_fails()
                assert port_is_free(second)
                # 4. the admin endpoint cannot move: `second` had started serving; it stops again
                held = busy_port()
                bad = copy.deepcopy(good)
                bad["admin"]["bind"] = f"127.0.0.1:{held.getsockname()[1]}"
                sc.write(bad)
                await sc.reload_fails()
                assert port_is_free(second)
                held.close()
                # 5. a component's bug in prepare
                sc.failing.fail_prepare = True
                sc.write(good)
                await sc.reload_fails()
                sc.failing.fail_prepare = False
                assert a.seen and not b.seen
                assert not (tmp_path / "access-2.log").exists() or (tmp_path / "access-2.log").read_text() == ""

                # 6. a component's bug in commit: the rest is committed, the process serves, it counts
                sc.failing.fail_commit = True
                assert await proxy.reload() is False
                sc.failing.fail_commit = False
                assert proxy.reloads.failure == 6 and proxy.reloads.success == 0
                assert await asyncio.to_thread(exchange, second) == b"hello"
                assert b.seen  # the new server list is in

                # 7. a good reload after all that
                good["listeners"].pop()
                del good["backends"]["extra"]
                sc.write(good)
                assert await proxy.reload() is True
                assert proxy.reloads.success == 1 and set(proxy.dataplane.contexts) == {"front"}
                assert await asyncio.to_thread(exchange, sc.port) == b"hello"
            log.flush()
        finally:
            log.events = sys.stderr
            await proxy.shutdown()
        text = events.read_text()
        for line in text.splitlines():
            rec = json.loads(line)
            if rec.get("msg", "").startswith("reload failed"):
                steps.append(rec["step"])
                assert rec["config"] == str(sc.path)
        assert steps == ["config", "sockets", "log", "components", "components"], text

    asyncio.run(main())
