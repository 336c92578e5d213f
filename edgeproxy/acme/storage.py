"""Where ACME state lives: one interface, two kinds (``dir_storage``, ``swarm_storage``).

A storage is scoped to one ACME directory (a staging certificate never serves for production) and
holds: the account (one per directory and email), the certificates (chain and key, by id), the
status of each certificate (last attempt, last error: what ``edgeproxy certs`` shows), the
challenges being answered (shared storage only: every instance answers any challenge), and locks
(one orderer per certificate, one registration per account).

Every method is a coroutine; a storage that cannot be reached raises ``StorageUnavailable`` and
the manager keeps serving what it already has.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from edgeproxy.acme.board import Challenge

if TYPE_CHECKING:  # not at run time: readers of stored data need not load the ACME library
    from edgeproxy.acme.client import Account


class StorageError(Exception):
    """Stored data that cannot be used (damaged, encrypted with another key): says which."""


class StorageUnavailable(StorageError):
    """The storage cannot be read or written now (swarm without a leader, disk error): retry later."""


@dataclass(frozen=True, slots=True)
class StoredCertificate:
    id: str
    names: tuple[str, ...]
    chain_pem: bytes
    key_pem: bytes
    stored_at: float


@dataclass(slots=True)
class CertStatus:
    """What happened to one certificate's orders (kept with it, shown by ``edgeproxy certs``)."""

    id: str
    names: tuple[str, ...]
    last_attempt: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    failures: int = 0
    """Consecutive failed attempts (0 after a success)."""
    next_attempt: float | None = None
    by: str | None = None
    """The instance that made the last attempt."""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["names"] = list(self.names)
        return d

    @classmethod
    def from_json(cls, d: Any) -> CertStatus:
        if not isinstance(d, dict) or not isinstance(d.get("id"), str) or not isinstance(d.get("names"), list):
            raise StorageError("a certificate status is a JSON object with id and names")

        def num(k: str) -> float | None:
            v = d.get(k)
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

        def text(k: str) -> str | None:
            v = d.get(k)
            return v if isinstance(v, str) else None

        return cls(
            id=d["id"],
            names=tuple(str(n) for n in d["names"]),
            last_attempt=num("last_attempt"),
            last_success=num("last_success"),
            last_error=text("last_error"),
            failures=int(num("failures") or 0),
            next_attempt=num("next_attempt"),
            by=text("by"),
        )


class Lease(Protocol):
    """A held lock. ``lost`` turns true when the storage says someone else took it over."""

    @property
    def lost(self) -> bool: ...


class Storage(Protocol):
    description: str
    """For logs: ``dir /var/lib/edgeproxy/acme/...`` or ``swarm``."""
    shared: bool
    """True when other instances read and write it too (the swarm): their challenges must be
    answered here, and their certificates served."""

    async def load_account(self, email: str | None) -> Account | None: ...
    async def save_account(self, account: Account) -> None: ...
    async def load_certificates(self) -> dict[str, StoredCertificate]: ...
    async def save_certificate(self, cert: StoredCertificate) -> None: ...
    async def load_statuses(self) -> dict[str, CertStatus]: ...
    async def save_status(self, status: CertStatus) -> None: ...
    async def publish(self, challenges: Sequence[Challenge]) -> None: ...
    async def withdraw(self, challenges: Sequence[Challenge]) -> None: ...
    async def published(self) -> list[Challenge]: ...

    def lock(self, key: str, lease: float) -> AbstractAsyncContextManager[Lease | None]:
        """Hold ``key`` (``None`` inside when another holder has it now); ``lease``: how long a
        holder that died keeps it."""
        ...

    def changes(self) -> AsyncIterator[None]:
        """Yields when others may have changed something (shared storage); never, otherwise."""
        ...

    async def close(self) -> None: ...


def ca_slug(directory: str) -> str:
    """A directory URL as a path component: ``acme-v02.api.letsencrypt.org-directory`` (as Caddy
    names its folders), so certificates from two CAs never mix."""
    parts = urlsplit(directory)
    raw = "-".join(p for p in (parts.hostname or "", str(parts.port or ""), parts.path.strip("/")) if p)
    slug = "".join(ch if ch.isalnum() or ch in ".-_" else "-" for ch in raw).strip(".-") or "ca"
    return slug[:120]


def email_slug(email: str | None) -> str:
    if not email:
        return "default"
    return "".join(ch if ch.isalnum() or ch in ".-_@+" else "_" for ch in email.lower())[:120]


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8")


def loads(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as e:
        raise StorageError(f"{what}: not JSON ({e})") from None


T = TypeVar("T")


async def run_to_end(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even if the caller is cancelled meanwhile; then the cancellation
    goes on. A storage write cut short by a shutdown would leave a lock held until its lease runs
    out (swarm), or a file half written while the storage is already closed (directory: the
    thread goes on without anyone waiting). ``work`` must be bounded (API timeouts, file I/O)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()
