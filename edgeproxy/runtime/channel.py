"""The supervisor <-> worker control channel: JSON messages over a Unix socketpair, with file
descriptors (listening sockets) passed alongside (SCM_RIGHTS).

asyncio transports cannot carry ancillary data, so this drives a non-blocking socket with
``add_reader``/``add_writer`` and ``sendmsg``/``recvmsg``. Frames are a 4-byte big-endian length
and a JSON object; a frame that carries descriptors says how many in ``"nfds"``. The kernel
delivers descriptors with the first byte of the frame they were sent with, and frames are read in
order, so the receiver takes them from a queue as it parses each frame.

Control traffic only (reloads, pool updates, a scrape's counters): never on the data path.
"""

from __future__ import annotations

import array
import asyncio
import itertools
import json
import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

Message = dict[str, Any]
MAX_FRAME = 64 * 1024 * 1024
_MAX_FDS = 253  # SCM_MAX_FD: the most descriptors one sendmsg may carry on Linux
_ANC_SPACE = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)


class ChannelClosed(ConnectionError):
    pass


class Channel:
    """One end of a socketpair. ``on_message(msg, fds)`` gets each frame; ``on_close()`` the EOF."""

    def __init__(
        self,
        sock: socket.socket,
        on_message: Callable[[Message, list[socket.socket]], None],
        on_close: Callable[[], None],
    ) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.on_message = on_message
        self.on_close = on_close
        self.closed = False
        self._out: deque[tuple[bytes, list[int]]] = deque()
        self._writing = False
        self._in = bytearray()
        self._fds: deque[int] = deque()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._readable)

    # -- sending -------------------------------------------------------------------------------
    def send(self, msg: Message, socks: Sequence[socket.socket] = ()) -> None:
        if self.closed:
            return
        if len(socks) > _MAX_FDS:
            raise ValueError(f"at most {_MAX_FDS} sockets per message")
        if socks:
            msg = {**msg, "nfds": len(socks)}
        data = json.dumps(msg, separators=(",", ":")).encode()
        # dup() so the caller may close its socket at once; ours are closed once sent.
        fds = [os.dup(s.fileno()) for s in socks]
        self._out.append((len(data).to_bytes(4, "big") + data, fds))
        self._flush()

    async def request(self, msg: Message, socks: Sequence[socket.socket] = (), timeout: float = 10.0) -> Message:
        """Send and wait for the reply carrying the same ``id``."""
        rid = next(self._ids)
        fut: asyncio.Future[Message] = self.loop.create_future()
        self._waiting[rid] = fut
        try:
            self.send({**msg, "id": rid}, socks)
            if self.closed:
                raise ChannelClosed("channel closed")
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._waiting.pop(rid, None)

    def reply(self, msg: Message, **fields: Any) -> None:
        self.send({"op": "reply", "id": msg.get("id"), **fields})

    def pending(self) -> bool:
        """Whether bytes are still waiting to be written."""
        return bool(self._out)

    def _flush(self) -> None:
        while self._out:
            data, fds = self._out[0]
            try:
                if fds:
                    n = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                else:
                    n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                self._want_write(True)
                return
            except OSError:
                self.close()
                return
            for fd in fds:
                os.close(fd)  # the kernel holds its own reference now
            if n < len(data):
                self._out[0] = (data[n:], [])
                self._want_write(True)
                return
            self._out.popleft()
        self._want_write(False)

    def _want_write(self, on: bool) -> None:
        if on and not self._writing:
            self.loop.add_writer(self.sock.fileno(), self._flush)
        elif not on and self._writing:
            self.loop.remove_writer(self.sock.fileno())
        self._writing = on

    # -- receiving -----------------------------------------------------------------------------
    def _readable(self) -> None:
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(1 << 16, _ANC_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, anc = b"", []
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
                self._fds.extend(fds)
        if not data:
            self.close()
            return
        self._in += data
        while len(self._in) >= 4:
            size = int.from_bytes(self._in[:4], "big")
            if size > MAX_FRAME:
                self.close()
                return
            if len(self._in) < 4 + size:
                return
            msg: Message = json.loads(self._in[4 : 4 + size])
            del self._in[: 4 + size]
            socks = [socket.socket(fileno=self._fds.popleft()) for _ in range(int(msg.get("nfds", 0)))]
            if msg.get("op") == "reply":
                fut = self._waiting.get(int(msg.get("id", 0)))
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                continue
            self.on_message(msg, socks)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with_fd = self.sock.fileno()
        if with_fd >= 0:
            self.loop.remove_reader(with_fd)
            if self._writing:
                self.loop.remove_writer(with_fd)
        self.sock.close()
        for _data, fds in self._out:
            for fd in fds:
                os.close(fd)
        self._out.clear()
        while self._fds:
            os.close(self._fds.popleft())
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ChannelClosed("channel closed"))
        self.on_close()
