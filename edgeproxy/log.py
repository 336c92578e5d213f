"""Structured logs: the access log (one line per connection / request / flow) and edgeproxy's
own events (reload, health transitions, worker restarts), both as JSON lines (or key=value text).

Access lines are buffered and flushed every ``FLUSH_INTERVAL`` or when the buffer is large: one
write(2) per request would cost more than the proxying itself in http mode. Events are written at
once: they are rare and an operator waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from typing import IO, Any

from edgeproxy.staged import Staged

FLUSH_INTERVAL = 0.2
FLUSH_BYTES = 64 * 1024
_PIPE_BUF = 4096
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


# The last formatted second and millisecond: an access line per HTTP request would otherwise
# format the same time again and again (strftime is ~1.7 us here).
_last_sec = -1
_last_sec_text = ""
_last_ms = -1
_last_ms_text = ""


def _now_iso(t: float) -> str:
    global _last_sec, _last_sec_text, _last_ms, _last_ms_text
    ms = int(t * 1000)
    if ms == _last_ms:
        return _last_ms_text
    sec = ms // 1000
    if sec != _last_sec:
        _last_sec = sec
        _last_sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    _last_ms = ms
    _last_ms_text = f"{_last_sec_text}.{ms % 1000:03d}Z"
    return _last_ms_text


iso_time = _now_iso  # for other modules (admin /status)


def _format(record: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(record, separators=(",", ":"), default=str)
    return " ".join(f"{k}={v}" for k, v in record.items())


def _open(target: str) -> IO[str] | None:
    if target == "off":
        return None
    if target == "stderr":
        return sys.stderr
    if target == "stdout":
        return sys.stdout
    return open(target, "a", encoding="utf-8", buffering=1)


def _close(handle: IO[str] | None) -> None:
    if handle is not None and handle not in (sys.stderr, sys.stdout):
        with contextlib.suppress(OSError, ValueError):  # a full disk must not fail the commit
            handle.close()


class Logger:
    """Both logs of one process. ``configure`` may be called again on reload."""

    def __init__(self) -> None:
        self.level = _LEVELS["info"]
        self.fmt = "json"
        self.events: IO[str] = sys.stderr
        self.access: IO[str] | None = sys.stderr
        self._access_target = "stderr"
        self._buffer: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self.worker: int | None = None

    def configure(self, level: str, access: str, fmt: str) -> None:
        self.prepare(level, access, fmt).commit()

    def prepare(self, level: str, access: str, fmt: str) -> Staged:
        """Open a new access log target now (OSError if it cannot be: a reload fails before it
        changes anything); ``commit`` switches to the new settings and closes the old file."""
        handle = _open(access) if access != self._access_target else self.access

        def commit() -> None:
            self.level = _LEVELS.get(level, 20)
            self.fmt = fmt
            if access != self._access_target:
                self.flush()
                old = self.access
                self.access = handle
                self._access_target = access
                _close(old)

        def abort() -> None:
            if handle is not self.access:
                _close(handle)

        return Staged(commit, abort)

    # -- events ------------------------------------------------------------------------------
    def event(self, level: str, msg: str, **fields: Any) -> None:
        if _LEVELS[level] < self.level:
            return
        t = time.time()
        record: dict[str, Any] = {"time": _now_iso(t), "level": level, "msg": msg}
        if self.worker is not None:
            record["worker"] = self.worker
        record.update(fields)
        self.flush()  # keep events and access lines in order
        try:
            self.events.write(_format(record, self.fmt) + "\n")
            self.events.flush()
        except (OSError, ValueError):
            pass

    def debug(self, msg: str, **fields: Any) -> None:
        self.event("debug", msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.event("info", msg, **fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self.event("warning", msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.event("error", msg, **fields)

    # -- access ------------------------------------------------------------------------------
    def access_line(self, record: dict[str, Any]) -> None:
        if self.access is None:
            return
        if self.worker is not None:
            record = {**record, "worker": self.worker}
        self._buffer_line(_format({"time": _now_iso(time.time()), **record}, self.fmt) + "\n")

    def access_json(self, members: str) -> None:
        """An access line whose JSON members (``"key":value,...``, without braces) the caller
        has already formatted: http mode logs every request, and building a dict for
        ``json.dumps`` costs more than proxying the request. Other formats get a dict."""
        if self.access is None:
            return
        if self.fmt != "json":
            self.access_line(json.loads("{" + members + "}"))
            return
        if self.worker is not None:
            members = f'{members},"worker":{self.worker}'
        self._buffer_line('{"time":"' + _now_iso(time.time()) + '",' + members + "}\n")

    def _buffer_line(self, line: str) -> None:
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer or self.access is None:
            return
        chunks = self._chunks() if self.worker is not None else ["".join(self._buffer)]
        self._buffer.clear()
        self._size = 0
        try:
            for data in chunks:
                self.access.write(data)
                self.access.flush()
        except (OSError, ValueError):
            pass

    def _chunks(self) -> list[str]:
        """Whole lines, at most PIPE_BUF bytes per write: workers share stderr (or the log file),
        and a pipe keeps a write whole only up to PIPE_BUF, so no two workers' lines interleave."""
        out: list[str] = []
        cur: list[str] = []
        size = 0
        for line in self._buffer:
            if cur and size + len(line) > _PIPE_BUF:
                out.append("".join(cur))
                cur, size = [], 0
            cur.append(line)
            size += len(line)
        if cur:
            out.append("".join(cur))
        return out


log = Logger()


def worker_label() -> str:
    return str(os.getpid())
