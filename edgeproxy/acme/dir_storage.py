"""``acme.storage: DIR``: the account, certificates, keys and statuses as files.

Layout (one folder per CA directory, as Caddy does, so two CAs never mix)::

    DIR/<ca>/account-<email>.json      {"directory", "email", "uri", "key"}   0600
    DIR/<ca>/certificates/<id>.crt     chain, leaf first                      0600
    DIR/<ca>/certificates/<id>.key     its private key                        0600
    DIR/<ca>/certificates/<id>.json    status: last attempt, last error ...   0600
    DIR/<ca>/lock-<key>                flock(2) of the process ordering it

Every file is written atomically (a temporary file in the same folder, fsync, rename, fsync of the
folder), so a crash leaves the old file or the new one, never half of one; the key is written
before its certificate, so a certificate on disk always has its key. Folders are 0700.

The files are read and written in a thread (``asyncio.to_thread``): a slow disk must not stall the
event loop. Locks are flock(2) on a file per key (released by the kernel if the holder dies), so
two processes on one host sharing the folder (a restart that overlaps) do not order twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from edgeproxy.acme.board import Challenge
from edgeproxy.acme.client import Account
from edgeproxy.acme.storage import (
    CertStatus,
    StorageError,
    StorageUnavailable,
    StoredCertificate,
    ca_slug,
    dumps,
    email_slug,
    loads,
    run_to_end,
)

_LOCK_POLL = 0.2
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(slots=True)
class _FileLease:
    lost: bool = False


class DirStorage:
    shared = False

    def __init__(self, root: str, directory: str) -> None:
        self.root = os.path.join(root, ca_slug(directory))
        self.certs = os.path.join(self.root, "certificates")
        self.directory = directory
        self.description = f"dir {self.root}"
        self._challenges: list[Challenge] = []

    # -- account ------------------------------------------------------------------------------
    def _account_path(self, email: str | None) -> str:
        return os.path.join(self.root, f"account-{email_slug(email)}.json")

    async def load_account(self, email: str | None) -> Account | None:
        path = self._account_path(email)
        raw = await _to_thread(_read, path)
        if raw is None:
            return None
        d = loads(raw, path)
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in ("uri", "key")):
            raise StorageError(f"{path}: not an account (uri, key)")
        return Account(self.directory, email, d["key"].encode("ascii"), d["uri"])

    async def save_account(self, account: Account) -> None:
        data = {
            "directory": account.directory,
            "email": account.email,
            "uri": account.uri,
            "key": account.key_pem.decode("ascii"),
        }
        await _to_thread(self._write, self._account_path(account.email), dumps(data))

    # -- certificates -------------------------------------------------------------------------
    async def load_certificates(self) -> dict[str, StoredCertificate]:
        return await _to_thread(self._load_certificates)

    def _load_certificates(self) -> dict[str, StoredCertificate]:
        out: dict[str, StoredCertificate] = {}
        for cid in self._ids(".crt"):
            f = cid + ".crt"
            chain = _read(os.path.join(self.certs, f))
            key = _read(os.path.join(self.certs, cid + ".key"))
            if chain is None or key is None:
                continue
            status = _read(os.path.join(self.certs, cid + ".json"))
            names: tuple[str, ...] = (cid,)
            if status is not None:
                with contextlib.suppress(StorageError):
                    names = CertStatus.from_json(loads(status, cid)).names
            stored_at = os.stat(os.path.join(self.certs, f)).st_mtime
            out[cid] = StoredCertificate(cid, names, chain, key, stored_at)
        return out

    def _ids(self, suffix: str) -> list[str]:
        """Certificate ids that have a ``<id><suffix>`` file."""
        try:
            files = sorted(os.listdir(self.certs))
        except FileNotFoundError:
            return []
        return [f[: -len(suffix)] for f in files if f.endswith(suffix) and not f.startswith(".")]

    async def save_certificate(self, cert: StoredCertificate) -> None:
        def write() -> None:
            self._write(os.path.join(self.certs, cert.id + ".key"), cert.key_pem)
            self._write(os.path.join(self.certs, cert.id + ".crt"), cert.chain_pem)

        await _to_thread(write)

    async def load_statuses(self) -> dict[str, CertStatus]:
        def load() -> dict[str, CertStatus]:
            out: dict[str, CertStatus] = {}
            for cid in self._ids(".json"):
                raw = _read(os.path.join(self.certs, cid + ".json"))
                if raw is not None:
                    with contextlib.suppress(StorageError):
                        st = CertStatus.from_json(loads(raw, cid))
                        out[st.id] = st
            return out

        return await _to_thread(load)

    async def save_status(self, status: CertStatus) -> None:
        await _to_thread(self._write, os.path.join(self.certs, status.id + ".json"), dumps(status.to_json()))

    # -- challenges: this instance only answers its own ------------------------------------------
    async def publish(self, challenges: Sequence[Challenge]) -> None:
        self._challenges.extend(challenges)

    async def withdraw(self, challenges: Sequence[Challenge]) -> None:
        self._challenges = [c for c in self._challenges if c not in challenges]

    async def published(self) -> list[Challenge]:
        return list(self._challenges)

    # -- locks --------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lock(self, key: str, lease: float) -> AsyncIterator[_FileLease | None]:
        """flock(2) on ``lock-<key>``; waits up to ``lease`` for another process to let go, then
        yields None (the holder is alive: the kernel would have released a dead one's lock)."""
        await _to_thread(_mkdirs, self.root)
        path = os.path.join(self.root, "lock-" + "".join(c if c.isalnum() or c in ".-_" else "_" for c in key))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + lease
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        yield None
                        return
                    await asyncio.sleep(_LOCK_POLL)
            try:
                yield _FileLease()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    async def changes(self) -> AsyncIterator[None]:
        await asyncio.Event().wait()  # nobody else writes here
        yield

    async def close(self) -> None:
        return

    # -- files --------------------------------------------------------------------------------
    def _write(self, path: str, data: bytes) -> None:
        _mkdirs(os.path.dirname(path))
        write_atomic(path, data)


def write_atomic(path: str, data: bytes) -> None:
    """Write ``path`` (mode 0600) so that a crash leaves the old content or the new, never a mix."""
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)  # the rename itself survives a crash
    finally:
        os.close(dfd)


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(1 << 20)
    except FileNotFoundError:
        return None


async def _to_thread(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run file work in a thread; an OS error is the storage being unavailable (a full disk, a
    permission problem): the manager logs it and tries again later."""
    try:
        # A cancelled caller (the manager closing) waits for the thread all the same: the
        # thread would write on after the storage was closed, and a restart could find the
        # certificate's key written and its chain not yet.
        return await run_to_end(asyncio.to_thread(fn, *args, **kwargs))
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise StorageUnavailable(f"{where}{e.strerror or e}") from None
