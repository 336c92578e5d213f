"""What an idle process and an idle connection no longer hold (issue 15), held by behaviour: the
forwarding rewrite shared by a client's connections, and control-plane components made only
once a config has their section (tests/integration/test_benchmarks_memory.py holds the modules
an idle process loads)."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Iterable
from typing import Any

from edgeproxy.config import Address, AdminConfig, Config, Forwarded, parse_config
from edgeproxy.metrics import Family
from edgeproxy.proto.forwarded import ForwardingPolicy
from edgeproxy.proto.http_request import RequestParser
from edgeproxy.runtime.control import OnDemand
from edgeproxy.staged import Staged

BASE = parse_config(b"listeners: [{name: front, bind: '127.0.0.1:1', mode: tcp, backend: app}]\nbackends: {app: {}}\n")
HEAD = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"


def test_a_clients_connections_share_one_rewrite_and_it_rewrites_for_that_client() -> None:
    policy = ForwardingPolicy(Forwarded())
    first = policy.for_client(("192.0.2.7", 40000), ("192.0.2.1", 80))
    assert policy.for_client(("192.0.2.7", 40001), ("192.0.2.1", 80)) is first  # another port of the client
    other_port = policy.for_client(("192.0.2.7", 40000), ("192.0.2.1", 8080))
    other_client = policy.for_client(("192.0.2.8", 40000), ("192.0.2.1", 80))
    assert len({id(first), id(other_port), id(other_client)}) == 3
    parser = RequestParser()
    parser.parse(HEAD)
    assert b"\r\nX-Forwarded-For: 192.0.2.7\r\n" in first.rewrite(HEAD, parser)
    assert b"\r\nX-Forwarded-For: 192.0.2.8\r\n" in other_client.rewrite(HEAD, parser)
    assert b"6.6.6.6" not in first.rewrite(HEAD, parser)


def test_the_shared_rewrites_kept_are_bounded() -> None:
    policy = ForwardingPolicy(Forwarded())
    kept = [policy.for_client((f"10.0.{i // 256}.{i % 256}", 1), ("192.0.2.1", 80)) for i in range(1000)]
    assert len(policy.shared) <= 256
    assert kept[-1].client == "10.0.3.231"  # a connection keeps its own, whatever the cache forgot


class _Component:
    def __init__(self) -> None:
        self.prepared: list[Config] = []
        self.stopped = False

    async def prepare(self, config: Config) -> Staged:
        self.prepared.append(config)
        return Staged()

    async def ready(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True

    def collect(self) -> Iterable[Family]:
        return [Family("edgeproxy_x", "gauge", "x")]

    def status(self) -> dict[str, Any]:
        return {"x": {}}


def test_a_component_on_demand_is_made_by_the_first_config_that_wants_it_and_stays() -> None:
    made: list[_Component] = []

    def make() -> _Component:
        made.append(_Component())
        return made[-1]

    comp = OnDemand(lambda config: config.admin is not None, make)
    with_admin = dataclasses.replace(BASE, admin=AdminConfig(Address("127.0.0.1", 0), None))

    async def scenario() -> None:
        (await comp.prepare(BASE)).commit()
        await comp.ready()
        assert made == [] and list(comp.collect()) == [] and comp.status() == {}
        (await comp.prepare(with_admin)).commit()
        (await comp.prepare(BASE)).commit()  # removed again: the component turns itself off, as before
        await comp.stop()

    asyncio.run(scenario())
    assert len(made) == 1 and made[0].prepared == [with_admin, BASE] and made[0].stopped
    assert comp.status() == {"x": {}}


def test_a_plain_config_makes_neither_the_admin_endpoint_nor_discovery() -> None:
    """In a fresh interpreter: the composition root's control plane for a config with neither
    section imports neither module (each would cost every process its RSS)."""
    import subprocess

    code = (
        "import asyncio, sys\n"
        "from edgeproxy.config import parse_config\n"
        "from edgeproxy.pools import PoolRegistry\n"
        "from edgeproxy.runtime.main import control_plane\n"
        "class Role:\n"
        "    certificate_sources = []\n"
        "cfg = parse_config(b\"listeners: [{name: f, bind: '127.0.0.1:1', mode: http, backend: a}]\\n"
        'backends: {a: {health: {type: none}}}\\n")\n'
        "async def main():\n"
        "    plane = control_plane(PoolRegistry(), Role())\n"
        "    (await plane.prepare(cfg)).commit()\n"
        "    await plane.stop()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith(('edgeproxy.admin.server', 'edgeproxy.discovery'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]
