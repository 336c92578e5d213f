"""Fixtures for the tests against a real dockerd in swarm mode (see engine.py).

Without root or docker these tests skip and say why; with ``EDGEPROXY_SWARM_TESTS=require`` (set
by .ci/run) a missing requirement fails them instead, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import EdgeProxy
from tests.swarm.engine import Engine, Lab, missing_requirements
from tests.swarm.support import start_proxy


def _need_swarm() -> None:
    why = missing_requirements()
    if why is None:
        return
    if os.environ.get("EDGEPROXY_SWARM_TESTS") == "require":
        pytest.fail(f"swarm tests required but cannot run: {why}")
    pytest.skip(f"real swarm tests skipped: {why}")


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """A single-node swarm on a private dockerd, shared by the session's swarm tests."""
    _need_swarm()
    eng = Engine().start()
    try:
        yield eng
    finally:
        eng.stop()


@pytest.fixture(scope="session")
def plain_engine() -> Iterator[Engine]:
    """A second private dockerd that is not in any swarm (its API answers 503 to /services)."""
    _need_swarm()
    eng = Engine(swarm=False, tls=False).start()
    try:
        yield eng
    finally:
        eng.stop()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A 3-manager + 1-worker swarm in network namespaces (~6 s up, ~8 s down, ~560 MiB)."""
    _need_swarm()
    lab = Lab().start()
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def service_name(engine: Engine, request: pytest.FixtureRequest) -> Iterator[str]:
    """A service name unique to the test; the service (if created) is removed afterwards."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[-40:].strip("-")
    yield name
    with contextlib.suppress(RuntimeError):
        engine.docker("service", "rm", name)


@pytest.fixture
def proxy_factory() -> Iterator[Callable[[dict[str, Any]], EdgeProxy]]:
    """Start ``edgeproxy run`` processes; all are stopped after the test."""
    started: list[EdgeProxy] = []

    def make(cfg: dict[str, Any]) -> EdgeProxy:
        p = start_proxy(cfg)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()
