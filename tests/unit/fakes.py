"""Sans-IO doubles for the relays: a loop whose clock moves only when the test says so, and
transports that record what was written. Named fakes because they stand in for what a unit test
cannot have (a kernel socket, the passing of time); the integration tests use the real ones.

``FakeLoop.create_task`` hands coroutines to the running asyncio loop (the relay's connect task
awaits ``asyncio.timeout`` and ``create_connection``), so tests that connect run under
``asyncio.run`` (``sansio``); timers are the fake clock's alone.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import io
import itertools
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from edgeproxy.log import log


class FakeTimer:
    def __init__(self, when: float, seq: int, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.seq = seq
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: FakeTimer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class FakeLoop:
    """``time``, ``call_at``/``call_later`` on a fake clock; ``create_connection`` to fake
    servers (``refuse`` holds ports that refuse; ``hold`` makes connects wait until released)."""

    def __init__(self, now: float = 50_000.0) -> None:
        self.now = now  # far from time.monotonic(): a clock mix-up shows
        self._timers: list[FakeTimer] = []
        self._seq = itertools.count()
        self.refuse: set[int] = set()
        self.hold: asyncio.Event | None = None
        self.connections: list[FakeTransport] = []  # upstream transports, in connect order
        self.tasks: list[asyncio.Task[Any]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> FakeTimer:
        timer = FakeTimer(when, next(self._seq), callback, args)
        heapq.heappush(self._timers, timer)
        return timer

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeTimer:
        return self.call_at(self.now + delay, callback, *args)

    def armed(self) -> list[float]:
        """When the timers still pending will fire."""
        return sorted(t.when for t in self._timers if not t.cancelled)

    def advance(self, seconds: float) -> None:
        """Move the clock, firing every timer that falls due on the way, in order."""
        end = self.now + seconds
        while self._timers and self._timers[0].when <= end:
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self.now = max(self.now, timer.when)
            timer.callback(*timer.args)
        self.now = end

    def create_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        return task

    async def create_connection(
        self, factory: Callable[[], asyncio.Protocol], host: str, port: int
    ) -> tuple[FakeTransport, asyncio.Protocol]:
        if self.hold is not None:
            await self.hold.wait()
        if port in self.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        protocol = factory()
        transport = FakeTransport(protocol, peer=(host, port), sock=("127.0.0.1", 50000 + len(self.connections)))
        self.connections.append(transport)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return transport, protocol


class FakeTransport:
    """Records writes, pauses, EOF and close; ``lose()`` delivers connection_lost."""

    def __init__(
        self,
        protocol: asyncio.BaseProtocol | None = None,
        peer: tuple[str, int] = ("192.0.2.10", 40000),
        sock: tuple[str, int] = ("192.0.2.1", 80),
    ) -> None:
        self.protocol = protocol
        self.peer = peer
        self.sock = sock
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.aborted = False
        self.eof_written = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        assert isinstance(data, bytes), "only bytes may be handed to a transport"
        self.written += data

    def take(self) -> bytes:
        out = bytes(self.written)
        self.written.clear()
        return out

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def lose(self) -> None:
        """The peer went away (or our close completed): connection_lost."""
        self.closed = True
        assert self.protocol is not None
        self.protocol.connection_lost(None)

    def get_protocol(self) -> asyncio.BaseProtocol | None:
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": self.sock}.get(name, default)


def sansio(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an ``async def`` test under asyncio.run (for the relay's connect task)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


async def settle() -> None:
    """Let the tasks the relay started run as far as they can."""
    for _ in range(10):
        await asyncio.sleep(0)


@contextmanager
def _captured(stream: str) -> Iterator[io.StringIO]:
    out = io.StringIO()
    # Lines an earlier test left in the buffer (flushed by its loop's timer, which may never run)
    # go to the stream they were written for, not into this capture.
    log.flush()
    saved = getattr(log, stream)
    setattr(log, stream, out)
    try:
        yield out
    finally:
        log.flush()
        setattr(log, stream, saved)


def access_log() -> AbstractContextManager[io.StringIO]:
    """The access lines written meanwhile (read them after the block)."""
    return _captured("access")


def event_log() -> AbstractContextManager[io.StringIO]:
    """edgeproxy's own events (warnings...) written meanwhile."""
    return _captured("events")
