"""``acme.storage: swarm``: ACME state kept as Docker configs, through the managers' Raft store.

Every edgeproxy instance of the swarm reads the same objects, so any of them answers any
challenge (the CA's validation may reach an edge node that did not order) and serves every
certificate, and exactly one of them orders a given certificate at a time.

Objects (configs; labels ``edgeproxy.acme.*``; ``ca`` is a hash of the directory URL)::

    kind  id                          data (JSON)                               versions
    acct  <email>                     {directory, email, uri, key: sealed}      newest kept
    cert  <certificate id>            {names, chain, key: sealed}               newest kept
    stat  <certificate id>            CertStatus                                newest kept
    chal  <type>/<token>              Challenge                                 deleted after the order
    lock  cert-<id> | account-<email> {}  labels holder, expires               deleted on release

Configs are immutable: a new version is a new config (name ``epacme-<kind>-<hash>-<version>``),
then the older versions are deleted. Private keys are sealed (``sealed.Sealer``, AES-GCM) with the
operator's key: a worker node or anyone who can list configs sees only ciphertext.

The lock: creating a config of a fixed name succeeds for exactly one creator (409 for the others:
the managers' Raft store decides). Its ``expires`` label is a lease: the holder extends it (label
update, checked against the config's version) every third of the lease; a holder that died stops
extending, and the next one to find it expired deletes it and creates its own.

A swarm without a leader answers nothing: every call raises ``StorageUnavailable`` and the manager
keeps serving the certificates it has, and tries again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgeproxy.acme.board import Challenge
from edgeproxy.acme.client import Account
from edgeproxy.acme.sealed import Sealer, SealError
from edgeproxy.acme.storage import (
    CertStatus,
    StorageError,
    StorageUnavailable,
    StoredCertificate,
    dumps,
    email_slug,
    loads,
    run_to_end,
)
from edgeproxy.acme.swarm_api import CONFLICT, NOT_FOUND, SwarmConfigs, config_data, config_labels
from edgeproxy.discovery.docker_api import APIError
from edgeproxy.log import log

PREFIX = "edgeproxy.acme."
L_KIND, L_CA, L_ID, L_VERSION = PREFIX + "kind", PREFIX + "ca", PREFIX + "id", PREFIX + "version"
L_HOLDER, L_EXPIRES, L_KEY_ID = PREFIX + "holder", PREFIX + "expires", PREFIX + "keyid"
STALE_CHALLENGE = 3600.0  # a challenge older than this was left by an orderer that died: removed


@dataclass(slots=True)
class _SwarmLease:
    config_id: str
    name: str
    lost: bool = False


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except APIError as e:
        raise StorageUnavailable(f"swarm: {e}") from None


class SwarmStorage:
    shared = True

    def __init__(
        self,
        configs: SwarmConfigs,
        directory: str,
        sealer: Sealer | None,
        instance: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.configs = configs
        self.directory = directory
        self.sealer = sealer
        self.instance = instance
        self.clock = clock
        self.ca = hashlib.sha256(directory.encode("utf-8")).hexdigest()[:16]
        self.description = "swarm"

    # -- naming -------------------------------------------------------------------------------
    def _name(self, kind: str, ident: str, version: str | None = None) -> str:
        h = hashlib.sha256(f"{self.ca}/{kind}/{ident}".encode()).hexdigest()[:16]
        return f"epacme-{kind}-{h}" + (f"-{version}" if version else "")

    def _labels(self, kind: str, ident: str, **more: str) -> dict[str, str]:
        return {L_KIND: kind, L_CA: self.ca, L_ID: ident, **more}

    def _context(self, kind: str, ident: str) -> str:
        return f"{self.ca}/{kind}/{ident}"

    async def _list(self, kind: str) -> list[dict[str, Any]]:
        with _unavailable():
            return await self.configs.list(labels=[f"{L_KIND}={kind}", f"{L_CA}={self.ca}"])

    async def _latest(self, kind: str) -> dict[str, tuple[dict[str, str], bytes]]:
        """The newest version of each object of ``kind``: id -> (labels, data)."""
        best: dict[str, tuple[str, dict[str, str], bytes]] = {}
        for c in await self._list(kind):
            labels = config_labels(c)
            ident, version = labels.get(L_ID), labels.get(L_VERSION, "")
            if not ident:
                continue
            try:
                data = config_data(c)
            except ValueError:
                continue
            if ident not in best or _newer(version, best[ident][0]):
                best[ident] = (version, labels, data)
        return {ident: (labels, data) for ident, (_v, labels, data) in best.items()}

    async def _put(self, kind: str, ident: str, data: bytes, **labels: str) -> None:
        """A new version of (kind, ident), then the older versions deleted."""
        version = f"{time.time_ns():016x}"
        with _unavailable():
            await self.configs.create(
                self._name(kind, ident, version), self._labels(kind, ident, **labels, **{L_VERSION: version}), data
            )
            for c in await self.configs.list(labels=[f"{L_KIND}={kind}", f"{L_CA}={self.ca}", f"{L_ID}={ident}"]):
                if _newer(version, config_labels(c).get(L_VERSION, "")):
                    await self.configs.delete(str(c.get("ID", "")))

    def _seal(self, plaintext: bytes, kind: str, ident: str) -> tuple[str, str]:
        if self.sealer is None:
            raise StorageError("no encryption key: this storage was opened to read certificates only")
        return self.sealer.seal(plaintext, self._context(kind, ident)), self.sealer.key_id

    def _open(self, sealed: Any, kind: str, ident: str, labels: Mapping[str, str]) -> bytes:
        if self.sealer is None:
            return b""  # opened without the key (``edgeproxy certs`` on a host without the secret)
        if not isinstance(sealed, str):
            raise StorageError(f"{kind} {ident}: no sealed key")
        try:
            return self.sealer.open(sealed, self._context(kind, ident))
        except SealError as e:
            other = labels.get(L_KEY_ID)
            if other and other != self.sealer.key_id:
                ours = self.sealer.key_id
                raise StorageError(
                    f"{kind} {ident}: sealed with another encryption key (key id {other}, ours {ours})"
                ) from None
            raise StorageError(f"{kind} {ident}: {e}") from None

    # -- account ------------------------------------------------------------------------------
    async def load_account(self, email: str | None) -> Account | None:
        ident = email_slug(email)
        found = (await self._latest("acct")).get(ident)
        if found is None:
            return None
        labels, raw = found
        d = loads(raw, f"account {ident}")
        if not isinstance(d, dict) or not isinstance(d.get("uri"), str):
            raise StorageError(f"account {ident}: no uri")
        key = self._open(d.get("key"), "acct", ident, labels)
        return Account(self.directory, email, key, d["uri"])

    async def save_account(self, account: Account) -> None:
        ident = email_slug(account.email)
        sealed, key_id = self._seal(account.key_pem, "acct", ident)
        data = {"directory": account.directory, "email": account.email, "uri": account.uri, "key": sealed}
        await self._put("acct", ident, dumps(data), **{L_KEY_ID: key_id})

    # -- certificates and statuses -------------------------------------------------------------
    async def load_certificates(self) -> dict[str, StoredCertificate]:
        out: dict[str, StoredCertificate] = {}
        for ident, (labels, raw) in (await self._latest("cert")).items():
            try:
                d = loads(raw, f"certificate {ident}")
                if (
                    not isinstance(d, dict)
                    or not isinstance(d.get("chain"), str)
                    or not isinstance(d.get("names"), list)
                ):
                    raise StorageError(f"certificate {ident}: no chain or names")
                key = self._open(d.get("key"), "cert", ident, labels)
                stored_at = int(labels.get(L_VERSION, "0"), 16) / 1e9
                names = tuple(str(n) for n in d["names"])
                out[ident] = StoredCertificate(ident, names, d["chain"].encode("ascii"), key, stored_at)
            except (StorageError, ValueError, UnicodeEncodeError) as e:
                log.warning("acme: unusable certificate in the swarm", certificate=ident, error=str(e))
        return out

    async def save_certificate(self, cert: StoredCertificate) -> None:
        sealed, key_id = self._seal(cert.key_pem, "cert", cert.id)
        data = {"names": list(cert.names), "chain": cert.chain_pem.decode("ascii"), "key": sealed}
        await self._put("cert", cert.id, dumps(data), **{L_KEY_ID: key_id})

    async def load_statuses(self) -> dict[str, CertStatus]:
        out: dict[str, CertStatus] = {}
        for ident, (_labels, raw) in (await self._latest("stat")).items():
            with contextlib.suppress(StorageError):
                out[ident] = CertStatus.from_json(loads(raw, f"status {ident}"))
        return out

    async def save_status(self, status: CertStatus) -> None:
        await self._put("stat", status.id, dumps(status.to_json()))

    # -- challenges ---------------------------------------------------------------------------
    async def publish(self, challenges: Sequence[Challenge]) -> None:
        for c in challenges:
            ident = f"{c.type}/{c.token}"
            with _unavailable():
                try:
                    await self.configs.create(
                        self._name("chal", ident), self._labels("chal", ident), dumps(c.to_json())
                    )
                except APIError as e:
                    if e.status != CONFLICT:  # 409: published already (a retried call)
                        raise

    async def withdraw(self, challenges: Sequence[Challenge]) -> None:
        idents = {f"{c.type}/{c.token}" for c in challenges}
        for c in await self._list("chal"):
            if config_labels(c).get(L_ID) in idents:
                with _unavailable():
                    await self.configs.delete(str(c.get("ID", "")))

    async def published(self) -> list[Challenge]:
        out: list[Challenge] = []
        now = self.clock()
        for c in await self._list("chal"):
            created = _created(c)
            if created is not None and now - created > STALE_CHALLENGE:
                with contextlib.suppress(StorageUnavailable), _unavailable():
                    await self.configs.delete(str(c.get("ID", "")))
                continue
            try:
                out.append(Challenge.from_json(loads(config_data(c), "challenge")))
            except (StorageError, ValueError) as e:
                log.debug("acme: unreadable challenge in the swarm", error=str(e))
        return out

    # -- locks --------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lock(self, key: str, lease: float) -> AsyncIterator[_SwarmLease | None]:
        held = await self._acquire(key, lease)
        if held is None:
            yield None
            return
        beat = asyncio.create_task(self._heartbeat(held, lease), name=f"acme lease {key}")
        try:
            yield held
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            # A shutdown cancels the order's task, often right after the certificate arrived and
            # while this release is on its way: it is finished first (the manager's close waits
            # for it), or every other instance would wait out the lease for nothing.
            await run_to_end(self._release(held, key))

    async def _release(self, held: _SwarmLease, key: str) -> None:
        try:
            with _unavailable():
                await self.configs.delete(held.config_id)
        except StorageUnavailable as e:
            log.warning("acme: could not release the lock; it expires with its lease", lock=key, error=str(e))

    async def _acquire(self, key: str, lease: float) -> _SwarmLease | None:
        name = self._name("lock", key)
        for _ in range(3):
            labels = self._labels("lock", key, **{L_HOLDER: self.instance, L_EXPIRES: f"{self.clock() + lease:.3f}"})
            with _unavailable():
                try:
                    return _SwarmLease(await self.configs.create(name, labels, b"{}"), name)
                except APIError as e:
                    if e.status != CONFLICT:
                        raise
                found = await self.configs.list(name=name)
            if not found:
                continue  # released in between: try again
            theirs = config_labels(found[0])
            if theirs.get(L_HOLDER) == self.instance:
                return _SwarmLease(str(found[0].get("ID", "")), name)  # ours: an answer lost on the way
            try:
                expires = float(theirs.get(L_EXPIRES, "0"))
            except ValueError:
                expires = 0.0
            if expires > self.clock():
                return None
            log.info("acme: lock expired; taking it over", lock=key, holder=theirs.get(L_HOLDER, "?"))
            with _unavailable():
                await self.configs.delete(str(found[0].get("ID", "")))
        return None

    async def _heartbeat(self, held: _SwarmLease, lease: float) -> None:
        while True:
            await asyncio.sleep(lease / 3)
            try:
                current = await self.configs.inspect(held.config_id)
                version = int(current.get("Version", {}).get("Index", 0))
                spec = current.get("Spec", {})
                labels = {**config_labels(current), L_EXPIRES: f"{self.clock() + lease:.3f}"}
                await self.configs.update_labels(held.config_id, version, spec, labels)
            except APIError as e:
                if e.status == NOT_FOUND:
                    held.lost = True
                    log.warning("acme: lock lost (expired and taken over)", lock=held.name)
                    return
                log.warning("acme: could not extend the lock's lease", lock=held.name, error=str(e))

    # -- events -------------------------------------------------------------------------------
    async def changes(self) -> AsyncIterator[None]:
        try:
            async for event in self.configs.events():
                name = str(event.get("Actor", {}).get("Attributes", {}).get("name", ""))
                if name.startswith("epacme-") and not name.startswith("epacme-lock-"):
                    yield None
        except APIError as e:
            raise StorageUnavailable(f"swarm events: {e}") from None

    async def close(self) -> None:
        return


def _newer(a: str, b: str) -> bool:
    """Versions are fixed-width hex nanoseconds: compare as numbers, a malformed one is oldest."""
    try:
        return int(a, 16) > int(b or "0", 16)
    except ValueError:
        return False


def _created(config: Mapping[str, Any]) -> float | None:
    version = config_labels(config).get(L_VERSION)
    if version:
        with contextlib.suppress(ValueError):
            return int(version, 16) / 1e9
    return None
