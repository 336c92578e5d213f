"""ACME with ``storage: swarm`` on the real single-node swarm and a real pebble: two instances
share one order per name, the validation is answered by the instance that did NOT order (its
board filled from the swarm's configs), both end with the same certificate; a lock holder killed
mid-order is taken over after its lease; a swarm that does not answer keeps the certificates served."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from edgeproxy.acme.board import ChallengeBoard
from edgeproxy.acme.client import AcmeClient
from edgeproxy.acme.manager import AcmeManager, Settings
from edgeproxy.acme.report import collect
from edgeproxy.acme.sealed import Sealer
from edgeproxy.acme.swarm_api import SwarmConfigs, config_data, config_labels
from edgeproxy.acme.swarm_storage import L_CA, L_HOLDER, L_KIND, SwarmStorage
from edgeproxy.config import parse_config
from edgeproxy.discovery.docker_api import Endpoint
from tests.acme_responder import Responder, eventually
from tests.pebble import Pebble, running_pebble
from tests.swarm.conftest import Swarm

pytestmark = [pytest.mark.swarm, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Pebble]:
    with running_pebble(tmp_path / "pebble") as peb:
        yield peb


@pytest.fixture(autouse=True)
def no_acme_configs(swarm: Swarm) -> Iterator[None]:
    """Each test starts and ends with no ACME config in the session's swarm: a later pebble may get
    an earlier one's port, hence its directory URL, hence its objects."""

    def clean() -> None:
        for c in swarm.api("/configs"):
            if "edgeproxy.acme.kind" in (c.get("Spec", {}).get("Labels") or {}):
                swarm.docker("config", "rm", c["ID"], check=False)

    clean()
    yield
    clean()


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    path = tmp_path / "edgeproxy-acme-key"
    path.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    return str(path)


class Node:
    def __init__(self, swarm: Swarm, peb: Pebble, key_file: str, instance: str, *, respond: bool, **kw: float) -> None:
        self.board = ChallengeBoard()
        self.storage = SwarmStorage(
            SwarmConfigs([Endpoint.parse(swarm.url)]), peb.directory, Sealer.from_file(key_file), instance
        )
        settings = Settings(email="ops@example.com", instance=instance, refresh=1.0, **kw)  # type: ignore[arg-type]
        client = AcmeClient(peb.directory, ca_file=peb.ca, timeout=5)
        self.manager = AcmeManager(client, self.storage, self.board, settings)
        self.responder = Responder(self.board, peb.http01_port, peb.tlsalpn01_port) if respond else None

    async def start(self, names: list[str]) -> Node:
        if self.responder is not None:
            await self.responder.start()
        self.manager.want([[n] for n in names])
        await self.manager.start()
        return self

    async def close(self) -> None:
        await self.manager.close()
        if self.responder is not None:
            await self.responder.close()


async def ours(storage: SwarmStorage, kind: str | None = None) -> list[dict[str, object]]:
    labels = [f"{L_CA}={storage.ca}"] + ([f"{L_KIND}={kind}"] if kind else [])
    return await storage.configs.list(labels=labels)


def test_two_instances_one_order_answered_by_the_other(swarm: Swarm, pebble: Pebble, key_file: str) -> None:
    names = ["s1.test", "s2.test"]

    async def scenario() -> None:
        # A orders and answers nothing itself (no responder); B answers, from the swarm's configs.
        a = await Node(swarm, pebble, key_file, "node-a", respond=False, publish_wait=2.0).start(names)
        b = Node(swarm, pebble, key_file, "node-b", respond=True)
        try:
            await wait_for_async(lambda: _holds_locks(a.storage, "node-a", 2))
            await b.start(names)
            t0 = time.monotonic()
            await eventually(lambda: len(a.manager.certificates) == 2 and len(b.manager.certificates) == 2)
            print(
                f"\nswarm: 2 names ordered by A, validated through B, served by both in {time.monotonic() - t0:.2f} s"
            )
            for n in names:
                assert a.manager.certificates[n].fingerprint == b.manager.certificates[n].fingerprint
            assert b.responder is not None and {s for _p, s in b.responder.http_hits} == {200}
            assert len(b.responder.http_hits) >= 2  # pebble asked B, which had not ordered
            assert all(m.orders["success"] == 0 for m in b.manager.managed.values())  # B never ordered

            # what stays in the swarm: one certificate and one status per name, no lock, no challenge
            async def kinds() -> list[str]:
                return sorted(config_labels(c)[L_KIND] for c in await ours(a.storage))

            await wait_for_async(lambda: _equal(kinds(), ["acct", "cert", "cert", "stat", "stat"]), timeout=20)
            for c in await ours(a.storage):
                data = config_data(c)
                assert b"PRIVATE KEY" not in data  # keys are sealed
            # `edgeproxy certs` on a host that cannot read the encryption key still lists them
            report = await collect(parse_config(_config(swarm, pebble, "/nonexistent/key", names).encode()))
            rows = {r["id"]: r for r in report["certificates"]}
            assert set(rows) == set(names) and report["acme"]["storage"] == "swarm"
            for n in names:
                assert rows[n]["names"] == [n] and "Pebble Intermediate CA" in rows[n]["issuer"]
                assert rows[n]["by"] == "node-a" and rows[n]["failures"] == 0 and rows[n]["last_error"] is None
            # a swarm that does not answer: both keep serving, the error is counted, then it recovers
            errors = b.manager.storage_errors
            swarm.pause()
            try:
                await eventually(lambda: b.manager.storage_errors > errors, timeout=30)
                assert len(b.manager.certificates) == 2
            finally:
                swarm.resume()
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())
    assert pebble.count("POST /order-plz") == 2  # one order per name
    assert pebble.count("POST /sign-me-up") == 1  # one account, shared


def test_dead_lock_holder_is_taken_over_after_its_lease(
    swarm: Swarm, pebble: Pebble, key_file: str, tmp_path: Path
) -> None:
    lease = 6.0

    async def scenario() -> None:
        storage = SwarmStorage(
            SwarmConfigs([Endpoint.parse(swarm.url)]), pebble.directory, Sealer.from_file(key_file), "observer"
        )
        # A, in a process of its own, takes the lock, places the order, publishes its challenge
        # and waits 60 s before asking the CA: it is killed in the middle of that.
        args = [swarm.url, pebble.directory, pebble.ca, key_file, "node-a", str(lease), "60", "k.test"]
        with open(tmp_path / "node-a.log", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.swarm.acme_node", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            await wait_for_async(lambda: _has(storage, "chal"), timeout=60)
            locks = await ours(storage, "lock")
            assert [config_labels(c)[L_HOLDER] for c in locks] == ["node-a"]
        finally:
            proc.kill()
            proc.wait()
        killed = time.time()
        b = await Node(swarm, pebble, key_file, "node-b", respond=True, lock_lease=lease).start(["k.test"])
        try:
            await eventually(lambda: "k.test" in b.manager.certificates, timeout=60)
            took = time.time() - killed
            st = b.manager.managed["k.test"].status
            assert st.last_attempt is not None and st.by == "node-b"
            # B ordered only once A's lease had run out (it was extended up to the kill, at most lease/3 before)
            assert st.last_attempt >= killed + lease * 2 / 3 - 1, (st.last_attempt - killed, lease)
            print(
                f"\nlock holder killed: the other instance had the certificate {took:.2f} s later (lease {lease:g} s)"
            )
        finally:
            await b.close()
        assert not await ours(storage, "lock")

    asyncio.run(scenario())
    assert pebble.count("POST /order-plz") == 2  # A's abandoned order and B's
    assert pebble.count("POST /sign-me-up") == 1  # B used the account A registered, from the swarm


async def wait_for_async(cond: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():  # type: ignore[misc]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def _holds_locks(storage: SwarmStorage, holder: str, n: int) -> bool:
    locks = await ours(storage, "lock")
    return sum(config_labels(c).get(L_HOLDER) == holder for c in locks) >= n


async def _has(storage: SwarmStorage, kind: str) -> bool:
    return bool(await ours(storage, kind))


async def _equal(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


def _config(swarm: Swarm, peb: Pebble, key_file: str, names: list[str]) -> str:
    return f"""
listeners:
  - {{name: https, bind: "127.0.0.1:{peb.tlsalpn01_port}", mode: http, backend: web, tls: {{acme: {names}}}}}
backends:
  web: {{servers: ["127.0.0.1:9"]}}
swarm: {{managers: ["{swarm.url}"]}}
acme: {{directory: "{peb.directory}", storage: swarm, encryption_key: "{key_file}", ca: "{peb.ca}"}}
"""


def test_lock_lease_is_extended_while_held_and_lost_when_taken(swarm: Swarm, key_file: str) -> None:
    directory = f"https://lease.test/{os.urandom(4).hex()}/dir"  # a storage of its own

    def storage(instance: str) -> SwarmStorage:
        configs = SwarmConfigs([Endpoint.parse(swarm.url)])
        return SwarmStorage(configs, directory, Sealer.from_file(key_file), instance)

    async def expires(s: SwarmStorage) -> float:
        (lock,) = await ours(s, "lock")
        return float(config_labels(lock)["edgeproxy.acme.expires"])

    async def scenario() -> None:
        a, b = storage("node-a"), storage("node-b")
        async with a.lock("cert-x.test", 1.5) as held:
            assert held is not None
            first = await expires(a)
            async with b.lock("cert-x.test", 1.5) as other:
                assert other is None  # held and not expired
            await asyncio.sleep(2.5)  # past the first lease: extended meanwhile (every 0.5 s)
            assert await expires(a) > first + 1.5 and not held.lost
            async with b.lock("cert-x.test", 1.5) as other:
                assert other is None
            # someone deletes it (as a taker-over does once it has expired): the holder learns it lost it
            (lock,) = await ours(a, "lock")
            await a.configs.delete(str(lock["ID"]))
            await eventually(lambda: held.lost, timeout=10)
        async with b.lock("cert-x.test", 1.5) as other:
            assert other is not None  # free again
        assert not await ours(a, "lock")

    asyncio.run(scenario())


def test_two_running_proxies_one_order_validated_at_the_other(
    swarm: Swarm, pebble: Pebble, key_file: str, request: pytest.FixtureRequest
) -> None:
    """Two ``edgeproxy run`` (2 workers each) on storage swarm. pebble validates at 127.0.0.1,
    where only A listens; B (127.0.0.2) orders the name. A's workers answer B's HTTP-01 challenge
    (it reached A's supervisor through the swarm's configs, then its workers); B serves the
    certificate; A, given the name by SIGHUP, serves the same one without an order of its own."""
    from tests.acme.test_wired import NAME, first_certificate, open_tls, serial
    from tests.helpers import HttpBackend, edgeproxy

    backend = HttpBackend()
    request.addfinalizer(backend.close)

    def config(ip: str, names: list[str]) -> dict[str, object]:
        return {
            "workers": 2,
            "log": {"access": "stderr"},
            "listeners": [
                {"name": "https", "bind": f"{ip}:{pebble.tlsalpn01_port}", "mode": "http", "backend": "web"}
                | {"tls": {"acme": names}},
                {"name": "http", "bind": f"{ip}:{pebble.http01_port}", "mode": "http", "backend": "web"},
            ],
            "backends": {"web": {"health": {"type": "none"}, "servers": [backend.address]}},
            "swarm": {"managers": [swarm.url], "timeout": "2s"},
            "acme": {"directory": pebble.directory, "ca": pebble.ca, "storage": "swarm", "encryption_key": key_file},
        }

    a_config = config("127.0.0.1", [])
    with edgeproxy(a_config) as a, edgeproxy(config("127.0.0.2", [NAME])) as b:
        started = time.monotonic()
        seconds, b_serial = first_certificate(pebble, pebble.tlsalpn01_port, started, ip="127.0.0.2")
        print(f"\nswarm storage, validated at the other instance: served by the orderer after {seconds:.2f} s")
        a_config["listeners"][0]["tls"] = {"acme": [NAME]}  # type: ignore[index]
        a.write_config(a_config)
        a.send(signal.SIGHUP)
        _, a_serial = first_certificate(pebble, pebble.tlsalpn01_port, time.monotonic())
        assert a_serial == b_serial
        with open_tls(pebble, pebble.tlsalpn01_port) as s:
            assert serial(s) == b_serial
    assert pebble.count("POST /order-plz") == 1
    answered = [r for r in a.log_lines() if r.get("listener") == "http" and r.get("end") == "acme_http01"]
    assert answered, "A did not answer the validation"
    assert not [r for r in b.log_lines() if r.get("listener") == "http" and r.get("end") == "acme_http01"]
    assert not [r for r in a.log_lines() if r.get("msg") == "acme: asking the CA to validate"]


def test_a_cancelled_holder_still_releases_its_lock(swarm: Swarm, key_file: str) -> None:
    """A shutdown cancels an order's task right after its certificate arrived, and the manager's
    close sends the cancellation again while the release is on its way: the lock is released all
    the same (found in CI: the lock stayed until its lease ran out)."""
    directory = f"https://release.test/{os.urandom(4).hex()}/dir"
    storage = SwarmStorage(SwarmConfigs([Endpoint.parse(swarm.url)]), directory, Sealer.from_file(key_file), "node-a")

    async def scenario() -> None:
        inside = asyncio.Event()

        async def hold() -> None:
            async with storage.lock("cert-x.test", 30) as held:
                assert held is not None
                inside.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(hold())
        await inside.wait()
        assert len(await ours(storage, "lock")) == 1
        cancels = 0
        while not task.done():  # cancelled again and again, as a close does
            task.cancel()
            cancels += 1
            await asyncio.sleep(0)
        assert task.cancelled()
        assert cancels > 1  # the release took more than one cancellation's time
        assert not await ours(storage, "lock")

    asyncio.run(scenario())
