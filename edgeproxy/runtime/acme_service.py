"""ACME in the running proxy: the control-plane component that keeps the certificates of
``tls.acme`` names (and of services labelled ``edgeproxy.tls=true``) obtained and renewed, and
hands them and the challenge answers to the data plane (issue 14).

It runs where the control plane runs (the single process, or the supervisor): the account key
never reaches a worker. What it hands over, through the role that owns the data plane
(``CertificateHost``: runtime/role.py):

- certificates: ``place_certificates`` merges what was obtained into the listeners' certificate
  set, at every reload (``with_certificates``, called by the role before its serving step, so a
  reload never serves a set without them) and whenever a certificate is obtained or renewed
  (``use_certificates``: new handshakes get it, open connections keep theirs, nothing restarts);
- the challenge board: pushed whole when its version moves, and awaited before the CA is told
  to validate (``AcmeManager.on_board``), so the validation finds every worker answering.

The ACME protocol library (certbot's ``acme``, with ``requests``: some 11 MB) is imported when a
config first has ``acme:``, not by every process that imports the composition root (workers).

A reload that changes the ``acme:`` section (or which challenge types the listeners can answer)
starts a new manager and closes the old one; any other reload only changes the names wanted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from edgeproxy.acme.board import ChallengeBoard, ChallengeType
from edgeproxy.acme.placement import place_certificates
from edgeproxy.config import Config
from edgeproxy.config.model import AcmeConfig
from edgeproxy.log import log
from edgeproxy.metrics import Family
from edgeproxy.pools import Change, PoolRegistry
from edgeproxy.staged import Staged
from edgeproxy.tls.certificates import Certificate
from edgeproxy.tls.files import CertificateSet

if TYPE_CHECKING:
    from edgeproxy.acme.manager import AcmeManager

START_WAIT = 10.0
"""Seconds ``ready`` waits for the manager to install what the storage holds (a swarm storage
behind an unreachable manager must not hold up the start: it keeps trying in the background)."""


class CertificateHost(Protocol):
    """What the component needs of the role that owns the data plane."""

    @property
    def config(self) -> Config: ...

    async def use_certificates(self, certs: CertificateSet) -> None: ...

    async def use_challenges(self, board: dict[str, Any]) -> None: ...


def challenge_types(config: Config) -> tuple[ChallengeType, ...]:
    """The challenge types the listeners can answer: HTTP-01 on a plain http listener (preferred:
    it works behind any TLS setup), TLS-ALPN-01 on a TLS listener."""
    types: list[ChallengeType] = []
    if any(lst.mode == "http" and lst.tls is None for lst in config.listeners):
        types.append("http-01")
    if any(lst.tls is not None for lst in config.listeners):
        types.append("tls-alpn-01")
    return tuple(types)


def name_sets(config: Config, labelled: Iterable[str]) -> list[list[str]]:
    """``acme.build.acme_name_sets``, imported when needed (a manager exists then)."""
    from edgeproxy.acme.build import acme_name_sets

    return acme_name_sets(config, labelled)


def labelled_names(registry: PoolRegistry) -> tuple[str, ...]:
    """The ``edgeproxy.host`` of every service labelled ``edgeproxy.tls=true``."""
    return tuple(registry.acme_hosts)


class AcmeService:
    def __init__(self, host: CertificateHost, registry: PoolRegistry) -> None:
        self.host = host
        self.registry = registry
        self.board = ChallengeBoard()
        self.manager: AcmeManager | None = None
        self._settings: tuple[AcmeConfig, tuple[ChallengeType, ...]] | None = None
        self.obtained: dict[str, Certificate] = {}  # cert id -> the certificate held
        self._files: CertificateSet | None = None  # the running config's certificate files
        self._staged_files: tuple[Config, CertificateSet, int] | None = None  # with the version placed
        self._version = 0  # moves with every certificate obtained
        self._placed = 0  # the version the data plane serves
        self._pusher: asyncio.Task[None] | None = None
        self._board_lock = asyncio.Lock()
        self._board_sent = 0
        self._starting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._labelled = labelled_names(registry)
        registry.subscribe(self._registry_changed)

    # -- the role's certificate source ------------------------------------------------------------
    def with_certificates(self, config: Config, files: CertificateSet) -> CertificateSet:
        """``files`` (the certificate files of ``config``, being prepared) with the ACME
        certificates placed; kept for the commit, when they become the ones pushes build on."""
        self._staged_files = (config, files, self._version)
        return place_certificates(config, files, self.obtained, self._labelled)

    # -- Component ----------------------------------------------------------------------------------
    async def prepare(self, config: Config) -> Staged:
        staged = self._staged_files if self._staged_files is not None and self._staged_files[0] is config else None
        self._staged_files = None
        settings = (config.acme, challenge_types(config)) if config.acme is not None else None
        old = self.manager
        if settings == self._settings:
            new = old
        elif settings is None:
            new = None
        else:
            from edgeproxy.acme.build import build_manager  # (see the module's docstring)

            # (can fail: the swarm storage's encryption key unreadable; the reload fails, nothing changed)
            new = build_manager(
                config, self.board, on_certificate=self._obtained, on_board=self._push_board, prefer=settings[1]
            )
        names = name_sets(config, self._labelled) if new is not None else []

        def commit() -> None:
            if staged is not None:
                self._files = staged[1]
                self._placed = max(self._placed, staged[2])
            if self._placed != self._version:
                self._ensure_pusher()  # obtained while the reload was prepared
            if new is not old:
                self.manager, self._settings = new, settings
                if old is not None:
                    self._spawn(old.close())
                if new is None and self.obtained:
                    self.obtained.clear()  # no acme: any more: nothing renews them
                    self._changed()
                if new is not None:
                    self._starting = self._spawn(new.start())
            if new is not None:
                new.want(names)

        def abort() -> None:
            if new is not old and new is not None:
                self._spawn(new.close())  # built, never started: its storage's session, if any

        return Staged(commit, abort)

    async def ready(self) -> None:
        starting = self._starting
        if starting is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(starting), START_WAIT)
        if self._pusher is not None:
            await asyncio.shield(self._pusher)  # the stored certificates are served when started

    async def stop(self) -> None:
        if self.manager is not None:
            await self.manager.close()
            self.manager = None
        for t in [*self._tasks]:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)

    def collect(self) -> Iterable[Family]:
        return self.manager.metric_families() if self.manager is not None else []

    def status(self) -> dict[str, Any]:
        m = self.manager
        if m is None:
            return {}
        out = []
        for cid, managed in sorted(m.managed.items()):
            st = managed.status
            cert = managed.cert
            out.append(
                {
                    "certificate": cid,
                    "names": list(managed.names),
                    "expires": cert.not_after if cert is not None else None,
                    "issuer": cert.issuer if cert is not None else None,
                    "next_order": m.due(managed),
                    "last_attempt": st.last_attempt,
                    "last_error": st.last_error,
                    "failures": st.failures,
                }
            )
        return {"acme": out}

    # -- certificates -------------------------------------------------------------------------------
    def _obtained(self, cid: str, cert: Certificate) -> None:
        self.obtained[cid] = cert
        self._changed()

    def _changed(self) -> None:
        """What the data plane should serve changed: push it (now, or after the push under way)."""
        self._version += 1
        self._ensure_pusher()

    def _ensure_pusher(self) -> None:
        if self._pusher is None or self._pusher.done():
            self._pusher = self._spawn(self._push_loop())

    async def _push_loop(self) -> None:
        """Until the data plane serves the latest certificates (one push at a time; certificates
        obtained meanwhile go in the next)."""
        while self._placed != self._version and self._files is not None:
            version, config, files = self._version, self.host.config, self._files
            certs = place_certificates(config, files, self.obtained, self._labelled)
            try:
                await self.host.use_certificates(certs)
            except ssl.SSLError as e:  # OpenSSL refused what the checks passed: keep the old ones
                log.error("acme: cannot serve the certificates", error=str(e))
            if self.host.config is config and self._files is files:
                self._placed = max(self._placed, version)
            else:  # a reload committed while the workers took it: push again, on top of the reload
                self._version += 1

    # -- the challenge board ----------------------------------------------------------------------
    async def _push_board(self) -> None:
        """The board to every data plane, the latest last (serialised), before validation."""
        async with self._board_lock:
            if self.board.version == self._board_sent:
                return
            version, wire = self.board.version, self.board.to_wire()
            try:
                await self.host.use_challenges(wire)
            except Exception as e:  # the order goes on; a validation that finds no answer fails it
                log.error("acme: cannot hand the challenges to the data plane", error=repr(e))
            self._board_sent = version

    # -- labels ---------------------------------------------------------------------------------
    def _registry_changed(self, change: Change) -> None:
        labelled = labelled_names(self.registry)
        if labelled == self._labelled:
            return
        self._labelled = labelled
        if self.manager is not None:
            self.manager.want(name_sets(self.host.config, labelled))
        elif labelled:
            log.warning("edgeproxy.tls=true labels but no acme: section: no certificate", hosts=list(labelled))
        self._changed()  # a name no longer labelled stops being served

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
