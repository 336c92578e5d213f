"""A reload is a transaction: the new configuration is built completely (file read and validated,
sockets bound, access log opened, pools made, new listeners serving, admin endpoint bound,
discovery clients built; with workers, every worker prepared) before anything is swapped in, and
a failure at any step leaves the running configuration whole (edgeproxy/staged.py).

Whatever goes wrong inside a reload, the process keeps serving: every exception is caught, logged
with the config path and the step that failed, and counted in
``edgeproxy_config_reloads_total{result="failure"}``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from edgeproxy.config import Config, ConfigError, parse_config
from edgeproxy.config.files import FileReader, read_from, read_from_disk
from edgeproxy.config.loader import ConfigIssue
from edgeproxy.log import log
from edgeproxy.staged import Staged


class ReloadFailed(Exception):
    """Why a reload (or the start) failed: the step and its error lines."""

    def __init__(self, step: str, errors: list[str]) -> None:
        super().__init__(f"{step}: {'; '.join(errors)}")
        self.step = step
        self.errors = errors


def describe(e: BaseException) -> str:
    if isinstance(e, ReloadFailed):
        return "; ".join(e.errors)
    if isinstance(e, OSError) and e.strerror:
        return str(e.strerror)
    return str(e) or repr(e)


def parse(raw: bytes, path: str, read_file: FileReader = read_from_disk) -> Config:
    """The file's bytes as a ``Config``; ``ReloadFailed`` for anything else, never another exception.
    ``read_file`` reads the files it names (config/files.py)."""
    try:
        return parse_config(raw, path, read_file=read_file)
    except ConfigError as e:
        raise ReloadFailed("config", [str(i) for i in e.issues]) from None
    except Exception as e:  # the loader is meant to be total; if it is not, this still is
        raise ReloadFailed("config", [f"{path}: cannot parse: {e!r}"]) from None


def worker_message(op: str, config: Config, raw: bytes) -> dict[str, Any]:
    """What a worker is sent to build ``config``: the file's bytes and the contents of the files
    it names (a worker does not open them: it may run as a ``user`` that cannot)."""
    files = {name: data.decode("ascii") for name, data in config.files().items()}  # PEM: ASCII
    return {"op": op, "path": config.path, "raw": raw.decode(), "files": files}


def parse_message(msg: Mapping[str, Any]) -> Config:
    """A worker's side of ``worker_message``."""
    files = {str(k): str(v).encode("ascii") for k, v in dict(msg.get("files") or {}).items()}
    return parse(str(msg["raw"]).encode(), str(msg["path"]), read_from(files))


def read(path: str) -> tuple[bytes, Config]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise ReloadFailed("config", [str(ConfigIssue(path, 0, "", f"cannot read: {e.strerror or e}"))]) from None
    return raw, parse(raw, path)


class Transaction:
    """The prepared steps of one reload, committed together or aborted together."""

    def __init__(self) -> None:
        self._staged: list[Staged] = []

    def stage(self, step: str, prepare: Callable[[], Staged]) -> None:
        with self._step(step):
            self._staged.append(prepare())

    async def stage_async(self, step: str, prepare: Callable[[], Awaitable[Staged]]) -> None:
        with self._step(step):
            self._staged.append(await prepare())

    @contextlib.contextmanager
    def _step(self, step: str) -> Iterator[None]:
        """A step that fails aborts every step prepared before it and raises ReloadFailed."""
        try:
            yield
        except Exception as e:
            self.abort()
            raise ReloadFailed(step, [describe(e)]) from e
        except BaseException:
            self.abort()
            raise

    def commit(self) -> bool:
        """Swap every step in, in order, without yielding to the loop. A commit is built not to
        fail; if one does (a bug), the others still commit and False says so."""
        ok = True
        for staged in self._staged:
            try:
                staged.commit()
            except Exception as e:
                ok = False
                log.error("reload: a commit step failed (a bug; the other steps are committed)", error=repr(e))
        return ok

    def abort(self) -> None:
        for staged in reversed(self._staged):
            try:
                staged.abort()
            except Exception as e:
                log.error("reload: undoing a prepared step failed", error=repr(e))
        self._staged.clear()
