"""The certificate manager: which certificates to hold, when to order and renew them.

Runs in the control plane (the supervisor, or the single process) on the event loop; the ACME
exchanges run in threads (``client`` is blocking) and the storage is async. For each certificate
(a set of names, usually one name) a task keeps it valid:

- at start, what the storage holds is installed at once (a restart orders nothing);
- a missing certificate is ordered; a held one is renewed at ``policy.renewal_time`` (or when the
  CA's renewal information says so);
- an order holds the storage's lock for that certificate: with the swarm storage exactly one edge
  node orders it, and the others take its result from the storage;
- a failure is recorded (status, log line, counters) and retried with ``policy.Backoff``, never
  sooner than the CA's ``Retry-After``; a CA that cannot be reached, or asks us to wait, holds back
  every order, not just the one that failed. The certificate already held keeps being served.

The account is registered once per directory and email: one registration at a time in this
process (an asyncio lock) and across instances (the storage's lock), then reused from storage.

What the composition root wires: ``want(name_sets)`` at start and on reload, ``start()`` /
``close()``, ``on_certificate`` (push the new certificate to the listeners/workers), the
``board`` (pushed to workers when its version moves), and ``metric_families()`` for /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from edgeproxy.acme.board import Challenge, ChallengeBoard, ChallengeType
from edgeproxy.acme.client import Account, AcmeClient, AcmeError
from edgeproxy.acme.ids import cert_id
from edgeproxy.acme.keys import new_private_key_pem
from edgeproxy.acme.policy import Backoff, Random, renewal_time
from edgeproxy.acme.storage import (
    CertStatus,
    Storage,
    StorageError,
    StoredCertificate,
    email_slug,
)
from edgeproxy.log import log
from edgeproxy.metrics import Family
from edgeproxy.tls.certificates import Certificate, CertificateError
from edgeproxy.tls.pem import parse_certificate

OWN = "own"  # board source: this instance's orders
SHARED = "shared"  # board source: every instance's, read from a shared storage


def instance_name() -> str:
    """Who holds a lock or made an attempt: host, pid and a random tag (a restarted process on
    the same host is another holder)."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


@dataclass(frozen=True, slots=True)
class Settings:
    email: str | None = None
    renew_before: float = 30 * 86400.0
    prefer: tuple[ChallengeType, ...] = ("http-01", "tls-alpn-01")
    """Challenge types in order of preference (the composition root knows which listeners exist:
    HTTP-01 needs a plain listener on port 80, TLS-ALPN-01 a TLS listener on 443)."""
    lock_lease: float = 60.0
    """How long a dead orderer's lock outlives it (a live one extends it)."""
    backoff: Backoff = field(default_factory=Backoff)
    publish_wait: float = 0.0
    """Shared storage: seconds between publishing the answers and telling the CA to look, so the
    other edge nodes have loaded them (they follow the storage's events)."""
    refresh: float = 30.0
    """Shared storage: re-read it at least this often (events may be missed)."""
    check_every: float = 3600.0
    """Look at each certificate at least this often (renewal information, clock jumps)."""
    order_timeout: float = 120.0
    max_concurrent_orders: int = 2
    instance: str = field(default_factory=instance_name)


@dataclass(slots=True)
class _Managed:
    id: str
    names: tuple[str, ...]
    status: CertStatus
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    cert: Certificate | None = None
    jitter: float = 0.0  # drawn once per certificate: its renewal time does not move at each look
    hold_until: float = 0.0  # another instance is ordering it: look again then
    ari_when: float | None = None
    ari_next: float = 0.0
    orders: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    last_duration: float | None = None


class AcmeManager:
    def __init__(
        self,
        client: AcmeClient,
        storage: Storage,
        board: ChallengeBoard,
        settings: Settings,
        *,
        on_certificate: Callable[[str, Certificate], None] | None = None,
        on_board: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
        rand: Random = random.random,
    ) -> None:
        self.client = client
        self.storage = storage
        self.board = board
        self.settings = settings
        self.on_certificate = on_certificate
        # Awaited after every change of the board, before the CA is told to look: the composition
        # root pushes the board to the workers there (a validation must find every worker ready).
        self.on_board = on_board
        self.clock = clock
        self.rand = rand
        self.managed: dict[str, _Managed] = {}
        self.account: Account | None = None
        self.registrations = 0
        self.storage_errors = 0
        self._account_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(settings.max_concurrent_orders)
        self._ca_hold_until = 0.0  # the CA cannot be reached or asked us to wait: every order waits
        self._ari: bool | None = None  # does the CA offer renewal information (asked once)
        self._started = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._own: set[Challenge] = set()
        self._stored: dict[str, StoredCertificate] = {}
        self._stored_status: dict[str, CertStatus] = {}

    # -- the composition root's calls --------------------------------------------------------
    def want(self, name_sets: Iterable[Sequence[str]]) -> None:
        """The certificates to hold (at start and on each reload): new ones are obtained, dropped
        ones stop being renewed (their files stay in the storage)."""
        wanted = {cert_id(tuple(names)): tuple(names) for names in name_sets if names}
        for cid in [c for c in self.managed if c not in wanted]:
            m = self.managed.pop(cid)
            if m.task is not None:
                m.task.cancel()
        for cid, names in wanted.items():
            if cid not in self.managed:
                status = self._stored_status.get(cid) or CertStatus(cid, names)
                m = self.managed[cid] = _Managed(cid, names, status)
                if self._started:
                    self._adopt(m, self._stored.get(cid))
                    self._spawn(m)

    async def start(self) -> None:
        """Install what the storage holds, then keep every wanted certificate valid."""
        try:
            self._stored = await self.storage.load_certificates()
            self._stored_status = await self.storage.load_statuses()
        except StorageError as e:
            self.storage_errors += 1
            log.error(
                "acme: cannot read the storage; ordering as needed", storage=self.storage.description, error=str(e)
            )
        for m in self.managed.values():
            if m.id in self._stored_status:
                m.status = self._stored_status[m.id]
            self._adopt(m, self._stored.get(m.id))
        self._started = True
        for m in self.managed.values():
            self._spawn(m)
        if self.storage.shared:
            self._track(asyncio.create_task(self._follow_shared(), name="acme shared storage"))

    async def close(self) -> None:
        tasks = [*self._tasks, *(m.task for m in self.managed.values() if m.task is not None)]
        while tasks:
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks, timeout=1.0)  # a cancellation lost in a library is sent again
            tasks = [t for t in tasks if not t.done()]
        await self.storage.close()

    @property
    def certificates(self) -> dict[str, Certificate]:
        return {cid: m.cert for cid, m in self.managed.items() if m.cert is not None}

    def wake(self, cid: str | None = None) -> None:
        """Look again now (all certificates, or one)."""
        for m in self.managed.values():
            if cid is None or m.id == cid:
                m.wake.set()

    # -- one task per certificate ------------------------------------------------------------
    def _spawn(self, m: _Managed) -> None:
        if m.task is None or m.task.done():
            m.task = asyncio.create_task(self._keep(m), name=f"acme {m.id}")

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def due(self, m: _Managed) -> float:
        """When ``m`` should next be ordered (renewed), all holds considered."""
        if m.cert is None:
            when = 0.0
        else:
            when = renewal_time(
                m.cert.not_before, m.cert.not_after, self.settings.renew_before, lambda: m.jitter, m.ari_when
            )
        if m.status.failures and m.status.next_attempt is not None:
            when = max(when, m.status.next_attempt)
        return max(when, m.hold_until, self._ca_hold_until)

    async def _keep(self, m: _Managed) -> None:
        while True:
            now = self.clock()
            if self.due(m) <= now:
                async with self._slots:
                    if self.due(m) <= self.clock():  # another instance's result may have come meanwhile
                        try:
                            await self._attempt(m)
                        except Exception as e:  # a bug must not end the renewals of this certificate
                            log.error("acme: unexpected error", certificate=m.id, error=repr(e))
                            self._failed(m, e, 0.0)
                continue
            if m.cert is not None and now >= m.ari_next:
                await self._check_renewal_info(m)
                continue
            # renewal information is asked only for a certificate held: without one, ``ari_next``
            # (0 until the first) must not cut the wait short, or a backing-off order wakes 20x a second
            ari_next = m.ari_next if m.cert is not None else math.inf
            wait = min(self.due(m), ari_next, now + self.settings.check_every) - now
            m.wake.clear()
            await _wait(m.wake, max(0.05, wait))

    async def _attempt(self, m: _Managed) -> None:
        st = m.status
        started = time.monotonic()
        try:
            async with self.storage.lock(f"cert-{m.id}", self.settings.lock_lease) as lease:
                if lease is None:
                    # Another edge node orders it: its certificate reaches us through the storage.
                    m.hold_until = self.clock() + min(self.settings.lock_lease, self.settings.refresh)
                    log.debug("acme: another instance is ordering; waiting for its certificate", certificate=m.id)
                    return
                # Another instance may have finished it while we waited for the lock. Its certificate
                # may be new here, or already adopted by the shared follow during that wait (then
                # ``_adopt`` says False: nothing newer); either way it is no longer due.
                await self._adopt_from_storage(m)
                if self.due(m) > self.clock():
                    return
                st.last_attempt, st.by = self.clock(), self.settings.instance
                cert = await self._order(m)
                if lease.lost:
                    log.warning("acme: the lock was taken over during the order", certificate=m.id)
        except (AcmeError, StorageError, CertificateError) as e:
            self._failed(m, e, time.monotonic() - started)
        else:
            m.orders["success"] += 1
            m.last_duration = time.monotonic() - started
            st.last_success, st.last_error, st.failures, st.next_attempt = self.clock(), None, 0, None
            log.info(
                "acme: certificate obtained",
                certificate=m.id,
                names=",".join(m.names),
                issuer=cert.issuer,
                expires=_iso(cert.not_after),
                seconds=round(m.last_duration, 3),
            )
        await self._save_status(m)

    def _failed(self, m: _Managed, e: Exception, seconds: float) -> None:
        st = m.status
        if st.last_attempt is None or st.last_attempt < self.clock() - seconds - 1:
            st.last_attempt, st.by = self.clock(), self.settings.instance  # failed before the order began
        st.failures += 1
        retry_after = e.retry_after if isinstance(e, AcmeError) else None
        delay = self.settings.backoff.delay(st.failures, retry_after, self.rand)
        st.next_attempt = self.clock() + delay
        st.last_error = str(e) or type(e).__name__
        m.orders["failure"] += 1
        m.last_duration = seconds
        if isinstance(e, AcmeError) and (retry_after is not None or str(e).startswith("cannot reach the CA")):
            # the CA as a whole is out of reach or asked us to wait: hold back every order
            self._ca_hold_until = max(self._ca_hold_until, self.clock() + delay)
        if isinstance(e, StorageError):
            self.storage_errors += 1
        log.error(
            "acme: order failed",
            certificate=m.id,
            names=",".join(m.names),
            error=st.last_error,
            failures=st.failures,
            retry_in=round(delay, 1),
            serving="the certificate held until " + _iso(m.cert.not_after) if m.cert else "none",
        )

    async def _order(self, m: _Managed) -> Certificate:
        account = await self._get_account()
        key = new_private_key_pem()
        prefer = self.settings.prefer
        try:
            pending = await asyncio.to_thread(self.client.order, account, m.names, key, prefer)
        except AcmeError as e:
            if not e.account_missing:
                raise
            account = await self._get_account(stale=account)  # the CA forgot it: register the key again
            pending = await asyncio.to_thread(self.client.order, account, m.names, key, prefer)
        await self._publish(pending.challenges)
        log.info(
            "acme: asking the CA to validate",
            certificate=m.id,
            challenges=",".join(sorted({c.type for c in pending.challenges})) or "none (authorized already)",
        )
        try:
            if self.storage.shared and pending.challenges and self.settings.publish_wait:
                await asyncio.sleep(self.settings.publish_wait)
            chain = await asyncio.to_thread(self.client.validate, pending, self.settings.order_timeout)
        finally:
            await self._withdraw(pending.challenges)
        cert = parse_certificate(chain.encode("ascii", "replace"), key, source="acme")
        await self.storage.save_certificate(
            StoredCertificate(m.id, m.names, cert.chain_pem, cert.key_pem, self.clock())
        )
        self._install(m, cert)
        return cert

    async def _get_account(self, stale: Account | None = None) -> Account:
        """The account, registered at most once (``stale``: the CA said it does not know it)."""
        email = self.settings.email
        async with self._account_lock:
            if self.account is not None and self.account != stale:
                return self.account
            while True:
                stored = await self.storage.load_account(email)
                if stored is not None and stored != stale:
                    self.account = stored
                    return stored
                async with self.storage.lock(f"account-{email_slug(email)}", self.settings.lock_lease) as lease:
                    if lease is None:
                        await asyncio.sleep(1.0)  # another instance registers it: read it again
                        continue
                    stored = await self.storage.load_account(email)
                    if stored is None or stored == stale:
                        key = stale.key_pem if stale is not None else new_private_key_pem()
                        stored = await asyncio.to_thread(self.client.register, key, email)
                        self.registrations += 1
                        await self.storage.save_account(stored)
                        log.info("acme: account registered", email=email or "", account=stored.uri)
                    self.account = stored
                    return stored

    async def _publish(self, challenges: Sequence[Challenge]) -> None:
        self._own.update(challenges)
        self.board.set_source(OWN, self._own)
        await self._board_moved()
        await self.storage.publish(challenges)

    async def _withdraw(self, challenges: Sequence[Challenge]) -> None:
        self._own.difference_update(challenges)
        self.board.set_source(OWN, self._own)
        await self._board_moved()
        try:
            await self.storage.withdraw(challenges)
        except StorageError as e:
            self.storage_errors += 1
            log.warning("acme: could not withdraw challenges (cleaned up later)", error=str(e))

    async def _board_moved(self) -> None:
        if self.on_board is not None:
            await self.on_board()

    async def _save_status(self, m: _Managed) -> None:
        try:
            await self.storage.save_status(m.status)
        except StorageError as e:
            self.storage_errors += 1
            log.warning("acme: could not save the status", certificate=m.id, error=str(e))

    async def _check_renewal_info(self, m: _Managed) -> None:
        assert m.cert is not None
        now = self.clock()
        m.ari_next = now + self.settings.check_every
        try:
            if self._ari is None:
                self._ari = await asyncio.to_thread(self.client.offers_renewal_info)
            if not self._ari:
                m.ari_next = float("inf")  # asked once per directory: it does not change while we run
                return
            m.ari_when, m.ari_next = await asyncio.to_thread(self.client.renewal_info, m.cert.chain_pem)
        except AcmeError as e:
            m.ari_next = now + max(e.retry_after or 0.0, self.settings.check_every)
            log.warning("acme: renewal information unavailable", certificate=m.id, error=str(e))

    # -- certificates from the storage -------------------------------------------------------
    def _adopt(self, m: _Managed, stored: StoredCertificate | None) -> bool:
        """Serve ``stored`` when it is newer than what ``m`` holds."""
        if stored is None:
            return False
        try:
            cert = parse_certificate(stored.chain_pem, stored.key_pem, source="acme", check_expiry=False)
        except CertificateError as e:
            log.warning("acme: unusable stored certificate", certificate=m.id, error=str(e))
            return False
        if cert.not_after <= self.clock():
            return False  # expired: order a new one
        if m.cert is not None and (cert.fingerprint == m.cert.fingerprint or cert.not_before < m.cert.not_before):
            return False
        self._install(m, cert)
        return True

    async def _adopt_from_storage(self, m: _Managed) -> bool:
        self._stored = await self.storage.load_certificates()
        return self._adopt(m, self._stored.get(m.id))

    def _install(self, m: _Managed, cert: Certificate) -> None:
        m.cert = cert
        m.jitter = self.rand()
        m.ari_when, m.ari_next, m.hold_until = None, 0.0, 0.0
        if m.status.failures:
            m.status.failures, m.status.next_attempt = 0, None
        if self.on_certificate is not None:
            self.on_certificate(m.id, cert)
        m.wake.set()

    async def _follow_shared(self) -> None:
        """Shared storage: answer every instance's challenges, serve every instance's certificates."""
        changed = asyncio.Event()

        async def listen() -> None:
            while True:
                try:
                    async for _ in self.storage.changes():
                        changed.set()
                except StorageError as e:
                    log.debug("acme: storage events interrupted", error=str(e))
                await asyncio.sleep(self.settings.refresh / 4)

        listener = asyncio.create_task(listen(), name="acme storage events")
        try:
            while True:
                changed.clear()
                try:
                    self.board.set_source(SHARED, await self.storage.published())
                    await self._board_moved()
                    self._stored = await self.storage.load_certificates()
                    for m in self.managed.values():
                        self._adopt(m, self._stored.get(m.id))
                except StorageError as e:
                    self.storage_errors += 1
                    log.warning("acme: cannot read the shared storage; serving what is known", error=str(e))
                await _wait(changed, self.settings.refresh)
        finally:
            listener.cancel()

    # -- /metrics -----------------------------------------------------------------------------
    def metric_families(self) -> list[Family]:
        orders = Family("edgeproxy_acme_orders_total", "counter", "ACME orders by certificate and result")
        duration = Family("edgeproxy_acme_last_order_seconds", "gauge", "How long the last order took")
        expiry = Family(
            "edgeproxy_acme_certificate_expiry_timestamp_seconds", "gauge", "notAfter of the held certificate"
        )
        due = Family(
            "edgeproxy_acme_next_order_timestamp_seconds", "gauge", "When the certificate is next ordered or renewed"
        )
        failures = Family("edgeproxy_acme_consecutive_failures", "gauge", "Failed orders since the last success")
        for m in self.managed.values():
            for result, n in m.orders.items():
                orders.add(n, certificate=m.id, result=result)
            if m.last_duration is not None:
                duration.add(m.last_duration, certificate=m.id)
            if m.cert is not None:
                expiry.add(m.cert.not_after, certificate=m.id)
            due.add(self.due(m), certificate=m.id)
            failures.add(m.status.failures, certificate=m.id)
        accounts = Family("edgeproxy_acme_account_registrations_total", "counter", "ACME accounts registered")
        accounts.add(self.registrations)
        storage = Family("edgeproxy_acme_storage_errors_total", "counter", "ACME storage reads or writes that failed")
        storage.add(self.storage_errors)
        board = Family("edgeproxy_acme_challenges", "gauge", "Challenge answers on the board, by type")
        board.add(len(self.board.http01), type="http-01")
        board.add(len(self.board.tls_alpn01), type="tls-alpn-01")
        return [orders, duration, expiry, due, failures, accounts, storage, board]


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set or ``timeout`` passes. Not ``asyncio.wait_for``: on Python 3.11 it
    swallows a cancellation that arrives as the event is set, and a task would outlive ``close``."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
