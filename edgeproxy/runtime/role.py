"""What the two roles that own the configuration file share (the single process,
runtime/single.py, and the supervisor, runtime/supervisor.py): the control plane, the reload
transaction around their own data-plane step, and the stats view the admin endpoint reads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from edgeproxy.config import Config, User
from edgeproxy.log import log
from edgeproxy.metrics import Family
from edgeproxy.pools import PoolRegistry
from edgeproxy.runtime import reload
from edgeproxy.runtime.control import ControlPlane
from edgeproxy.runtime.reload import ReloadFailed, Transaction
from edgeproxy.runtime.sockets import SocketSet, socket_keys
from edgeproxy.staged import Staged
from edgeproxy.stats import ReloadStats
from edgeproxy.tls.files import NO_CERTIFICATES, CertificateFilesError, CertificateSet, read_certificates

MakeControl = Callable[["ControlRole"], ControlPlane]
CertificateSource = Callable[[Config, CertificateSet], CertificateSet]


def read_tls_files(config: Config) -> CertificateSet:
    """Every certificate file ``config`` names, read and checked (``ReloadFailed`` with one line
    per bad file and its YAML path); a certificate expiring soon is logged as a warning."""
    try:
        certs, warnings = read_certificates(config)
    except CertificateFilesError as e:
        raise ReloadFailed("certificates", [str(i) for i in e.issues]) from None
    for w in warnings:
        log.warning("certificate expires soon", detail=str(w))
    return certs


def certificate_expiry(certs: CertificateSet) -> Family:
    fam = Family(
        "edgeproxy_tls_certificate_expiry_timestamp_seconds", "gauge", "When a served certificate expires (Unix time)"
    )
    seen: set[str] = set()
    for cert in certs.certificates():  # (two certificates for one name, e.g. ECDSA and RSA: the first)
        if cert.name not in seen:
            seen.add(cert.name)
            fam.add(cert.not_after, name=cert.name)
    return fam


class ControlRole:
    """Base of the roles that run the control plane. A subclass adds its data plane to the
    transaction (``_prepare_serving``) and says where data-plane counters come from."""

    started_msg = "edgeproxy started"
    serving_step = "listeners"  # the name of the data plane's step in the transaction (and the log)

    def __init__(self, config: Config, registry: PoolRegistry, sockets: SocketSet, make_control: MakeControl) -> None:
        self._config = config
        self.registry = registry
        self.sockets = sockets
        self.reloads = ReloadStats()
        self.started = time.time()
        self._draining = False
        self.certs = NO_CERTIFICATES  # what the TLS listeners serve (read from the files at each reload)
        # Certificates besides the files (ACME: runtime/acme_service.py), added to them at each reload.
        self.certificate_sources: list[CertificateSource] = []
        self.challenges: dict[str, Any] = {}  # the ACME challenge board's wire form, as last handed over
        self.control = make_control(self)

    # -- StatsView ---------------------------------------------------------------------------------
    @property
    def config(self) -> Config:
        return self._config

    @property
    def draining(self) -> bool:
        return self._draining

    async def data_plane_families(self) -> list[Family]:
        raise NotImplementedError

    def control_families(self) -> list[Family]:
        return [*self.control.families(), certificate_expiry(self.certs)]

    def status_sections(self) -> dict[str, Any]:
        return self.control.status_sections()

    # -- one transaction for the start and every reload ---------------------------------------------
    async def _prepare(self, new: Config, raw: bytes) -> Transaction:
        """Every step of ``new``; ReloadFailed (everything prepared aborted) if one fails."""
        certs = read_tls_files(new)  # only reads: nothing to undo if a later step fails
        for add in self.certificate_sources:
            certs = add(new, certs)
        tx = Transaction()
        tx.stage("user", lambda: self._same_user(new))
        tx.stage("sockets", lambda: self.sockets.stage(socket_keys(new)))
        tx.stage("log", lambda: log.prepare(new.log.level, self._access_log(new), new.log.format))
        tx.stage("pools", lambda: self.registry.stage(new.backends))
        await tx.stage_async(self.serving_step, lambda: self._prepare_serving(new, raw, certs))
        await tx.stage_async("components", lambda: self.control.prepare(new))
        tx.stage("config", lambda: Staged(lambda: self._set_config(new, raw, certs)))
        return tx

    async def _prepare_serving(self, new: Config, raw: bytes, certs: CertificateSet) -> Staged:
        raise NotImplementedError

    async def use_certificates(self, certs: CertificateSet) -> None:
        """THE HOOK FOR ACME (issue 14): serve ``certs`` (every TLS listener's certificates, by
        listener name, the first its default; build it from ``self.certs`` plus what was obtained)
        from the next handshake on, in every process, without a reload. Open connections keep
        theirs; the next reload reads the files again (ACME's certificates must then be merged
        in again). Raises ``ssl.SSLError`` if OpenSSL refuses one (nothing changed)."""
        await self._use_certificates(certs)
        self.certs = certs

    async def _use_certificates(self, certs: CertificateSet) -> None:
        raise NotImplementedError

    async def use_challenges(self, board: dict[str, Any]) -> None:
        """Answer the ACME challenges of ``board`` (``ChallengeBoard.to_wire``) in every process,
        from now on; returns once every data plane has them (the CA is told to look then)."""
        self.challenges = board  # (a worker started meanwhile gets it with its configuration)
        await self._use_challenges(board)

    async def _use_challenges(self, board: dict[str, Any]) -> None:
        raise NotImplementedError

    def _access_log(self, new: Config) -> str:
        """Where this process writes access lines: the config's target, unless it serves none."""
        return new.log.access

    def _same_user(self, new: Config) -> Staged:
        """The data plane's user is fixed for the life of the process: a worker that dropped root
        cannot take another uid, and adding or removing ``user`` changes the process model."""
        old = self._config.user

        def ids(user: User | None) -> tuple[int, int] | None:
            return (user.uid, user.gid) if user is not None else None

        if ids(new.user) != ids(old):
            raise ValueError(f"user: changing it ({old or '(none)'} -> {new.user or '(none)'}) takes a restart")
        return Staged()

    def _set_config(self, new: Config, raw: bytes, certs: CertificateSet) -> None:
        self._config = new
        self.certs = certs

    async def start(self) -> None:
        """Bind every socket first, so a bad address fails before anything serves."""
        tx = await self._prepare(self._config, b"")
        tx.commit()
        await self.control.ready()
        cfg = self._config
        log.info(
            self.started_msg,
            config=cfg.path,
            pid=os.getpid(),
            listeners=[f"{lst.name} {lst.mode} {' '.join(map(str, lst.bind))}" for lst in cfg.listeners],
            **self._start_fields(),
        )

    def _start_fields(self) -> dict[str, Any]:
        return {}

    async def reload(self) -> bool:
        """Re-read and validate the whole file and apply it as one transaction; on any error keep
        the running configuration whole. Never raises."""
        path = self._config.path
        try:
            raw, new = reload.read(path)
            tx = await self._prepare(new, raw)
        except Exception as e:  # anything at all: the process keeps serving the old configuration
            step, errors = (e.step, e.errors) if isinstance(e, ReloadFailed) else ("unexpected", [repr(e)])
            self.reloads.count(False)
            await self._settle()
            log.error("reload failed: keeping the running configuration", config=path, step=step, errors=errors)
            return False
        ok = tx.commit()
        self.reloads.count(ok)
        await self._settle()
        log.info(
            "configuration reloaded" if ok else "configuration reloaded with errors (see above)",
            config=new.path,
            digest=new.digest[:12],
            listeners=len(new.listeners),
            backends=len(new.backends),
        )
        try:
            await self._after_reload()
        except Exception as e:
            log.error("after the reload", error=repr(e))
        return ok

    async def _settle(self) -> None:
        """Wait (bounded) until what a commit or an abort set going is done: listeners it stopped
        no longer accept, every worker has switched. Then the log line is true when written."""

    async def _after_reload(self) -> None:
        """Work that follows a committed reload and does not decide it (scaling the workers)."""
