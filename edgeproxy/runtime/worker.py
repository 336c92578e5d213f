"""A worker process (``workers: N``, N > 1): the data plane on sockets the supervisor passed.

Started by the supervisor as ``python -m edgeproxy.runtime.worker <channel fd> <worker id>``. It
never binds and never reads the config file: listening sockets and the config's bytes (validated
once by the supervisor) arrive over the control channel, so every worker runs exactly the same
file. It runs no health checks, discovery or admin endpoint; server states arrive as pool updates
(runtime/poolsync.py). When the supervisor goes away (the channel closes), it drains and exits,
so no orphan keeps serving an old config.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import signal
import socket
import sys

from edgeproxy.admin.metrics import collect_data_plane
from edgeproxy.config import Config, ConfigError, parse_config
from edgeproxy.log import log
from edgeproxy.net.loop import run
from edgeproxy.runtime import labelsync, poolsync
from edgeproxy.runtime.channel import Channel, Message
from edgeproxy.runtime.proxy import Proxy
from edgeproxy.runtime.sockets import SocketSet


def per_worker(config: Config) -> Config:
    """``max_connections`` is per listener for the whole edgeproxy: each worker takes its share."""
    n = config.workers
    if n <= 1:
        return config
    listeners = tuple(
        dataclasses.replace(lst, max_connections=math.ceil(lst.max_connections / n)) for lst in config.listeners
    )
    return dataclasses.replace(config, listeners=listeners)


class Worker:
    def __init__(self, channel_fd: int, wid: int) -> None:
        self.id = wid
        self.sockets = SocketSet(can_bind=False)
        self.proxy: Proxy | None = None
        self.queue: asyncio.Queue[Message] = asyncio.Queue()  # config and stop, applied in order
        self.interrupts = 0
        self.channel = Channel(socket.socket(fileno=channel_fd), self.on_message, self.on_close)

    def on_message(self, msg: Message, socks: list[socket.socket]) -> None:
        op = msg.get("op")
        if op == "socket":
            proto, host, port = msg["key"]
            self.sockets.adopt((str(proto), str(host), int(port)), socks[0])
        elif op == "labels":
            if self.proxy is not None:
                labelsync.apply(self.proxy, msg)
        elif op == "pools":
            if self.proxy is not None:
                poolsync.apply(self.proxy.pools, msg["pools"])
        elif op == "stats":
            fams = collect_data_plane(self.proxy) if self.proxy is not None else []
            self.channel.reply(msg, families=[f.to_json() for f in fams])
        elif op in ("config", "stop"):
            self.queue.put_nowait(msg)
        for s in socks if op != "socket" else ():
            s.close()

    def on_close(self) -> None:
        if self.proxy is not None and not self.proxy.draining:
            log.warning("supervisor gone: draining")
        self.queue.put_nowait({"op": "stop"})

    def on_signal(self, sig: int) -> None:
        if sig == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts >= 2:
                os._exit(1)
        self.queue.put_nowait({"op": "stop"})

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor owns reloads
        while True:
            msg = await self.queue.get()
            if msg["op"] == "stop":
                return await self.stop(msg)
            await self.configure(msg)

    async def configure(self, msg: Message) -> None:
        try:
            raw = str(msg["raw"]).encode()
            config = per_worker(parse_config(raw, str(msg["path"])))
        except ConfigError as e:  # cannot happen for bytes the supervisor validated; say so if it does
            self.channel.reply(msg, ok=False, error="; ".join(map(str, e.issues)))
            return
        except Exception as e:  # nor this; but a worker that stops here takes its listeners with it
            self.channel.reply(msg, ok=False, error=f"cannot load the configuration: {e!r}"[:500])
            return
        if self.proxy is None:
            self.proxy = Proxy(config, role="worker", sockets=self.sockets)
            self.proxy.started_msg = "worker started"
            try:
                await self.proxy.start()
            except Exception as e:
                self.channel.reply(msg, ok=False, error=str(getattr(e, "strerror", None) or e))
                raise SystemExit(1) from None
            self.channel.reply(msg, ok=True, pid=os.getpid())
            return
        ok = await self.proxy.apply(config, raw)
        self.channel.reply(msg, ok=ok)

    async def stop(self, msg: Message) -> int:
        proxy = self.proxy
        if proxy is None:
            return 0
        await proxy.stop_accepting()
        if "id" in msg:
            self.channel.reply(msg, ok=True)  # the supervisor counts this worker as no longer accepting
        await proxy.finish()
        # Last counters, so that the totals /metrics shows do not lose what this worker did.
        self.channel.send({"op": "final", "families": [f.to_json() for f in collect_data_plane(proxy)]})
        for _ in range(100):
            if not self.channel.pending():
                break
            await asyncio.sleep(0.01)
        return 0


def main(argv: list[str]) -> int:
    fd, wid = int(argv[1]), int(argv[2])
    log.worker = wid
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop's handler is installed

    async def go() -> int:
        return await Worker(fd, wid).run()

    try:
        return run(go())
    except KeyboardInterrupt:
        return 1
    finally:
        log.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
