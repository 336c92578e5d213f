"""The health checker against a pool registry alone (no process around it), probing real sockets
on loopback: verdicts go through the registry and are announced; servers that discovery adds are
checked at once, those that leave are no longer checked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from edgeproxy.balance import Server, ServerState
from edgeproxy.config import Backend, Health, ServerConfig, parse_address, parse_config
from edgeproxy.health.checker import HealthChecker
from edgeproxy.pools import Change, PoolRegistry
from tests.helpers import closed_port

FAST = Health(type="tcp", interval=0.1, timeout=0.5, rise=1, fall=2)
CONFIG = parse_config(b"listeners: [{name: a, bind: '127.0.0.1:1', mode: tcp, backend: b}]\nbackends: {b: {}}\n")


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_verdicts_go_through_the_registry_and_new_servers_are_checked_at_once() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        live = server.sockets[0].getsockname()[1]
        held, dead = closed_port()
        registry = PoolRegistry()
        changes: list[Change] = []
        registry.subscribe(changes.append)
        servers = tuple(ServerConfig(parse_address(f"127.0.0.1:{p}")) for p in (live, dead))
        registry.stage({"app": Backend(name="app", health=FAST, servers=servers)}).commit()
        up, down = registry.pools["app"].servers
        checker = HealthChecker(registry)
        (await checker.prepare(CONFIG)).commit()
        try:
            await until(lambda: down.state is ServerState.DOWN)
            assert up.state is ServerState.UP and up.last_check is not None and up.last_check.ok
            assert Change(frozenset({"app"})) in changes[1:]  # the verdict was announced
            # A server discovery adds is checked at once, not at some polling interval.
            registry.set_servers("app", "swarm", [Server("127.0.0.1", dead, meta={"task": "t"})])
            await until(lambda: len(checker.checks) == 3)
            # One that leaves (it was DOWN) is no longer checked, and rests UP (passive only).
            registry.set_servers("app", "static", [Server("127.0.0.1", live)])
            await until(lambda: len(checker.checks) == 2)
            assert not down.check_down
            # A reload may turn checks off for a backend: its servers lose their checks.
            registry.stage({"app": Backend(name="app", health=Health(type="none"), servers=servers[:1])}).commit()
            await until(lambda: not checker.checks)
            (fam,) = checker.collect()
            assert fam.name == "edgeproxy_health_checks_total"
        finally:
            await checker.stop()
            server.close()
            held.close()

    asyncio.run(main())


def test_a_server_that_answers_again_comes_back_after_rise() -> None:
    async def main() -> None:
        held, port = closed_port()
        registry = PoolRegistry()
        be = Backend(name="app", health=FAST, servers=(ServerConfig(parse_address(f"127.0.0.1:{port}")),))
        registry.stage({"app": be}).commit()
        (s,) = registry.pools["app"].servers
        checker = HealthChecker(registry)
        (await checker.prepare(CONFIG)).commit()
        try:
            await until(lambda: s.state is ServerState.DOWN)
            held.listen()  # the same socket now accepts: the server is back
            await until(lambda: s.state is ServerState.UP)
        finally:
            await checker.stop()
            held.close()

    asyncio.run(main())
