"""ACME against a real pebble, dir storage: issuance by HTTP-01 and by TLS-ALPN-01 answered from
the challenge board by real servers on loopback, a restart that orders nothing, a CA that is down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from edgeproxy.acme.board import ChallengeBoard, ChallengeType
from edgeproxy.acme.client import AcmeClient
from edgeproxy.acme.dir_storage import DirStorage, _FileLease
from edgeproxy.acme.manager import AcmeManager, Settings
from edgeproxy.acme.policy import Backoff
from edgeproxy.tls.certificates import Certificate
from tests.acme_responder import Responder, eventually, memory_handshake
from tests.pebble import Pebble, running_pebble

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Pebble]:
    with running_pebble(tmp_path / "pebble") as peb:
        yield peb


class Node:
    """One edgeproxy's ACME side: manager + board + storage, and the responder its listeners would be."""

    def __init__(
        self,
        peb: Pebble,
        storage_dir: Path,
        prefer: tuple[ChallengeType, ...],
        storage: DirStorage | None = None,
        clock: Callable[[], float] = time.time,
        **settings: object,
    ) -> None:
        self.board = ChallengeBoard()
        self.storage = storage or DirStorage(str(storage_dir), peb.directory)
        self.got: list[tuple[str, Certificate]] = []
        self.manager = AcmeManager(
            AcmeClient(peb.directory, ca_file=peb.ca, timeout=5),
            self.storage,
            self.board,
            Settings(email="ops@example.com", prefer=prefer, **settings),  # type: ignore[arg-type]
            clock=clock,
            on_certificate=lambda cid, cert: self.got.append((cid, cert)),
        )
        self.responder = Responder(self.board, peb.http01_port, peb.tlsalpn01_port)

    async def __aenter__(self) -> Node:
        await self.responder.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.manager.close()
        await self.responder.close()


def verify_chain(peb: Pebble, cert: Certificate, name: str) -> None:
    """The chain verifies up to pebble's root for ``name`` (a real TLS handshake, served from memory)."""
    from edgeproxy.tls.certificates import server_context

    client = memory_handshake(server_context(cert), name, cadata=peb.root_pem().decode())
    assert client.getpeercert()["subjectAltName"] == tuple(("DNS", n) for n in cert.names)


@pytest.mark.parametrize("kind", ["http-01", "tls-alpn-01"])
async def test_issuance(pebble: Pebble, tmp_path: Path, kind: ChallengeType) -> None:
    async with Node(pebble, tmp_path / "store", (kind,)) as node:
        node.manager.want([["a.test"], ["b.test"]])
        t0 = time.monotonic()
        await node.manager.start()
        await eventually(lambda: len(node.manager.certificates) == 2)
        took = time.monotonic() - t0
        print(f"\n{kind}: 2 certificates in {took:.2f} s")
        for cid in ("a.test", "b.test"):
            cert = node.manager.certificates[cid]
            assert cert.names == (cid,) and cert.key_type == "ECDSA P-256" and cert.source == "acme"
            assert "Pebble Intermediate CA" in cert.issuer
            verify_chain(pebble, cert, cid)
        # The CA's validation really went through our responder, and only through the board.
        if kind == "http-01":
            assert {p for p, s in node.responder.http_hits if s == 200} and not node.responder.tls_hits
            assert pebble.count("Attempting to validate w/ HTTP") >= 2
        else:
            assert {(sni, ok) for sni, ok in node.responder.tls_hits} == {("a.test", True), ("b.test", True)}
            assert not node.responder.http_hits
        assert not node.board.http01 and not node.board.tls_alpn01  # answers withdrawn after the order
        assert pebble.count("POST /sign-me-up") == 1  # one account for the two concurrent orders
        assert pebble.count("POST /order-plz") == 2
        assert sorted(cid for cid, _ in node.got) == ["a.test", "b.test"]  # each announced once
        metrics = {f.name: f for f in node.manager.metric_families()}
        orders = metrics["edgeproxy_acme_orders_total"].samples
        assert orders[("", (("certificate", "a.test"), ("result", "success")))] == 1


async def test_restart_reuses_storage(pebble: Pebble, tmp_path: Path) -> None:
    store = tmp_path / "store"
    async with Node(pebble, store, ("http-01",)) as node:
        node.manager.want([["a.test"]])
        await node.manager.start()
        await eventually(lambda: "a.test" in node.manager.certificates)
        first = node.manager.certificates["a.test"]
    # Files: 0600, in 0700 folders, no temporary file left.
    files = [p for p in store.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), files
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in store.rglob("*") if p.is_dir())
    assert not [p for p in files if p.name.endswith(".tmp")]
    orders, accounts = pebble.count("POST /order-plz"), pebble.count("POST /sign-me-up")
    async with Node(pebble, store, ("http-01",)) as again:
        again.manager.want([["a.test"]])
        await again.manager.start()
        assert again.manager.certificates["a.test"].fingerprint == first.fingerprint  # served at once
        await asyncio.sleep(1.0)  # give a wrong order time to show up in pebble's log
        assert again.manager.certificates["a.test"].fingerprint == first.fingerprint
        # a new name orders with the stored account: no second registration
        again.manager.want([["a.test"], ["c.test"]])
        await eventually(lambda: "c.test" in again.manager.certificates)
    assert pebble.count("POST /order-plz") == orders + 1
    assert pebble.count("POST /sign-me-up") == accounts


class _FollowedSlowLock(DirStorage):
    """A dir storage that behaves as shared (the manager follows it, as it does the swarm's) and
    whose lock waits for a gate: the slow lock of a loaded swarm, made deterministic."""

    shared = True

    def __init__(self, root: str, directory: str) -> None:
        super().__init__(root, directory)
        self.gate = asyncio.Event()
        self.waiting = False

    @contextlib.asynccontextmanager
    async def lock(self, key: str, lease: float) -> AsyncIterator[_FileLease | None]:
        self.waiting = True
        await self.gate.wait()
        async with super().lock(key, lease) as held:
            yield held


async def test_no_second_order_when_the_certificate_came_while_waiting_for_the_lock(
    pebble: Pebble, tmp_path: Path
) -> None:
    """Regression (CI, stop 20): B waited for the lock while A ordered; B's follow of the shared
    storage adopted A's certificate meanwhile; with the lock, B re-read the storage, found nothing
    newer than what it held, and ordered the same name again (a CA's duplicate-certificate limit
    spent for nothing)."""
    store = tmp_path / "store"
    slow = _FollowedSlowLock(str(store), pebble.directory)
    b = Node(pebble, store, ("http-01",), storage=slow, refresh=0.2)  # no responder: A's answers the CA
    try:
        b.manager.want([["a.test"]])
        await b.manager.start()
        await eventually(lambda: slow.waiting)  # B is due and waits for the lock
        async with Node(pebble, store, ("http-01",)) as a:
            a.manager.want([["a.test"]])
            await a.manager.start()
            await eventually(lambda: "a.test" in a.manager.certificates)
            ordered = a.manager.certificates["a.test"]
        await eventually(lambda: "a.test" in b.manager.certificates)  # adopted by the follow
        slow.gate.set()
        await asyncio.sleep(1.5)  # time for a wrong order to reach pebble
        assert pebble.count("POST /order-plz") == 1
        assert b.manager.certificates["a.test"].fingerprint == ordered.fingerprint
        assert b.manager.managed["a.test"].orders == {"success": 0, "failure": 0}
    finally:
        await b.manager.close()


async def test_ca_down_keeps_certificates_and_backs_off(pebble: Pebble, tmp_path: Path) -> None:
    backoff = Backoff(base=1.0, cap=4.0, jitter=0.0)
    async with Node(pebble, tmp_path / "store", ("http-01",), backoff=backoff) as node:
        node.manager.want([["a.test"]])
        await node.manager.start()
        await eventually(lambda: "a.test" in node.manager.certificates)
        held = node.manager.certificates["a.test"]
        pebble.stop()
        node.manager.want([["a.test"], ["down.test"]])
        await eventually(lambda: node.manager.managed["down.test"].status.failures >= 3, timeout=30)
        st = node.manager.managed["down.test"].status
        assert st.last_error is not None and st.last_error.startswith("cannot reach the CA"), st.last_error
        assert node.manager.certificates["a.test"] is held  # still served
        # the status is kept in the storage too (written just after the failure is recorded)
        for _ in range(100):
            stored = (await node.storage.load_statuses()).get("down.test")
            if stored is not None and stored.failures >= 3:
                break
            await asyncio.sleep(0.05)
        assert stored is not None and stored.failures >= 3 and (stored.last_error or "").startswith("cannot reach")
        # back-off: 1 s, 2 s, 4 s, 4 s ... never a tight loop
        t_fail = st.last_attempt
        await eventually(lambda: node.manager.managed["down.test"].status.failures >= 4, timeout=30)
        assert node.manager.managed["down.test"].status.last_attempt - t_fail >= 3.5  # type: ignore[operator]
        pebble.start()  # a new pebble: it forgot our account; the manager registers the same key again
        await eventually(lambda: "down.test" in node.manager.certificates, timeout=30)
        assert node.manager.managed["down.test"].status.failures == 0
        assert node.manager.registrations == 2


async def test_an_order_backing_off_sleeps_until_its_retry(pebble: Pebble, tmp_path: Path) -> None:
    """Regression: a certificate with none held yet, backing off after a failed order, woke every
    50 ms (its renewal-information time, 0 until a certificate comes, cut each wait short)."""
    looks = 0

    def clock() -> float:
        nonlocal looks
        looks += 1
        return time.time()

    pebble.stop()
    async with Node(pebble, tmp_path / "store", ("http-01",), backoff=Backoff(base=60.0), clock=clock) as node:
        node.manager.want([["down.test"]])
        await node.manager.start()
        await eventually(lambda: node.manager.managed["down.test"].status.failures == 1)
        await asyncio.sleep(0.3)  # the status is saved
        before = looks
        await asyncio.sleep(2.0)
        assert looks - before <= 2, f"{looks - before} looks at the clock in 2 s of a 60-s back-off"
        assert node.manager.managed["down.test"].status.failures == 1


async def test_renewal_of_short_lived_certificates(tmp_path: Path) -> None:
    """pebble issuing 9-second certificates: each is renewed a third of its life before it ends
    (renew_before 30d is capped at lifetime/3), and the old one is served until the new is in."""
    with running_pebble(tmp_path / "pebble", validity=9) as peb:
        async with Node(peb, tmp_path / "store", ("http-01",)) as node:
            node.manager.want([["a.test"]])
            await node.manager.start()
            await eventually(lambda: len(node.got) >= 1)
            first = node.got[0][1]
            t_first = time.time()
            seen_gap = False
            while len(node.got) < 3:
                seen_gap |= "a.test" not in node.manager.certificates
                assert time.time() - t_first < 40, "no renewal"
                await asyncio.sleep(0.02)
            assert not seen_gap
            second, third = node.got[1][1], node.got[2][1]
            assert len({first.fingerprint, second.fingerprint, third.fingerprint}) == 3
            for old, new in ((first, second), (second, third)):
                lifetime = old.not_after - old.not_before
                # renewed before the end, after about two thirds of the life (jitter: up to 10 % of a third)
                assert new.not_before <= old.not_after - lifetime / 3 + 2
            durations = [m.last_duration for m in node.manager.managed.values()]
            print(f"\nrenewal: last order took {durations[0]:.2f} s")
            assert peb.count("POST /order-plz") == 3 and peb.count("POST /sign-me-up") == 1


async def test_certs_command_shows_names_issuer_expiry_and_errors(pebble: Pebble, tmp_path: Path) -> None:
    store = tmp_path / "store"
    config = tmp_path / "edgeproxy.yaml"
    config.write_text(
        f"""
listeners:
  - name: https
    bind: "127.0.0.1:{pebble.tlsalpn01_port}"
    mode: http
    backend: web
    tls: {{acme: [a.test, never.test]}}
backends:
  web: {{servers: ["127.0.0.1:9"]}}
acme: {{directory: "{pebble.directory}", email: ops@example.com, storage: "{store}", ca: "{pebble.ca}"}}
"""
    )
    async with Node(pebble, store, ("http-01",), backoff=Backoff(base=60.0)) as node:
        node.manager.want([["a.test"]])
        await node.manager.start()
        await eventually(lambda: "a.test" in node.manager.certificates)
        pebble.stop()
        node.manager.want([["a.test"], ["never.test"]])
        await eventually(lambda: node.manager.managed["never.test"].status.failures >= 1)
        await asyncio.sleep(0.2)  # the status is saved right after the failure is recorded

    def certs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgeproxy", "certs", "-c", str(config), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    out = certs("--json")
    assert out.returncode == 0, out.stderr
    rows = {r["id"]: r for r in json.loads(out.stdout)["certificates"]}
    a, never = rows["a.test"], rows["never.test"]
    assert a["source"] == "acme" and a["names"] == ["a.test"] and "Pebble Intermediate CA" in a["issuer"]
    assert a["not_after"] > time.time() + 86400 and a["last_error"] is None and a["last_success"]
    assert "not_after" not in never and never["failures"] >= 1
    assert never["last_error"].startswith("cannot reach the CA") and never["last_attempt"]
    table = certs()
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert any(line.startswith("a.test ") and "Pebble Intermediate CA" in line for line in lines), lines
    assert any(
        line.startswith("never.test ") and "no certificate yet" in line and "cannot reach" in line for line in lines
    )
