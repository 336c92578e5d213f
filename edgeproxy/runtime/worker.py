"""A worker process (``workers: N``, N > 1): the data plane on sockets the supervisor passed.

Started by the supervisor as ``python -m edgeproxy.runtime.main worker <channel fd> <worker id>``
(the composition root builds it). It never binds and never reads the config file: listening
sockets and the config's bytes (validated once by the supervisor) arrive over the control channel,
so every worker runs exactly the same file. It runs no health checks, discovery or admin endpoint;
its pool registry is kept in step with the supervisor's (pools/wire.py). A reload is prepared
(``prepare``: everything built and serving-ready, the answer says whether it could be), then
committed or aborted as the supervisor says, so all workers switch together or none does. When
the supervisor goes away (the channel closes), it drains and exits, so no orphan keeps serving an
old config.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import signal
import socket

from edgeproxy.config import Config
from edgeproxy.log import log
from edgeproxy.pools import PoolRegistry, wire
from edgeproxy.runtime import reload
from edgeproxy.runtime.channel import Channel, Message
from edgeproxy.runtime.dataplane import DataPlane
from edgeproxy.runtime.reload import Transaction
from edgeproxy.runtime.sockets import SocketSet, socket_keys
from edgeproxy.tls.files import CertificateSet


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
    def __init__(
        self, channel_fd: int, wid: int, registry: PoolRegistry, sockets: SocketSet, dataplane: DataPlane
    ) -> None:
        self.id = wid
        self.registry = registry
        self.sockets = sockets
        self.dataplane = dataplane
        self.started = False
        self.pending: Transaction | None = None  # a prepared reload, waiting for commit or abort
        self._preparing = False
        self._abort_prepared = False  # an abort came while the prepare was still running
        self.queue: asyncio.Queue[Message] = asyncio.Queue()  # config, prepare and stop, in order
        self.interrupts = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.channel = Channel(socket.socket(fileno=channel_fd), self.on_message, self.on_close)

    def on_message(self, msg: Message, socks: list[socket.socket]) -> None:
        op = msg.get("op")
        if op == "socket":
            proto, host, port = msg["key"]
            self.sockets.adopt((str(proto), str(host), int(port)), socks[0])
            return
        for s in socks:
            s.close()
        if op == "registry":
            wire.apply(self.registry, msg)
        elif op == "stats":
            self.channel.reply(msg, families=[f.to_json() for f in self.dataplane.families()])
        elif op in ("commit", "abort"):
            # Sent once this worker answered the prepare, so it is here; handled at once, in
            # order with the registry updates that follow it; answered once it took effect.
            if op == "abort" and self.pending is None and self._preparing:
                self._abort_prepared = True  # the supervisor gave up waiting: drop it once built
            self._finish_pending(op == "commit")
            task = asyncio.ensure_future(self._settled(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif op == "certificates":  # between reloads (ACME): ControlRole.use_certificates
            try:
                self.dataplane.use_certificates(CertificateSet.from_wire(msg["certs"]))
            except Exception as e:
                self.channel.reply(msg, ok=False, error=reload.describe(e))
            else:
                self.channel.reply(msg, ok=True)
        elif op == "challenges":  # ACME answers, pushed by the supervisor before it asks the CA
            try:
                self.dataplane.use_challenges(msg["board"])
            except (KeyError, ValueError) as e:
                self.channel.reply(msg, ok=False, error=str(e))
            else:
                self.channel.reply(msg, ok=True)
        elif op in ("config", "prepare", "stop"):
            self.queue.put_nowait(msg)

    def on_close(self) -> None:
        if self.started and not self.dataplane.draining:
            log.warning("supervisor gone: draining")
        self._finish_pending(False)
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
            await self.prepare(msg)

    async def _prepare(self, config: Config, certs: CertificateSet) -> Transaction:
        tx = Transaction()
        # A worker cannot bind: a socket the supervisor did not pass fails the step.
        tx.stage("sockets", lambda: self.sockets.stage(socket_keys(config)))
        tx.stage("log", lambda: log.prepare(config.log.level, config.log.access, config.log.format))
        tx.stage("pools", lambda: self.registry.stage(config.backends))
        await tx.stage_async("listeners", lambda: self.dataplane.prepare(config, certs))
        return tx

    async def prepare(self, msg: Message) -> None:
        """``config`` (the start: prepared and committed at once) or ``prepare`` (a reload)."""
        self._finish_pending(False)
        self._preparing, self._abort_prepared = True, False
        try:
            config = per_worker(reload.parse_message(msg))
            # (PEM from the supervisor, which read the files: this process may not be allowed to)
            certs = CertificateSet.from_wire(msg.get("certs") or {})
            if msg.get("challenges"):
                self.dataplane.use_challenges(msg["challenges"])
            tx = await self._prepare(config, certs)
        except Exception as e:  # never let a reload end the worker: say why, keep serving
            self.channel.reply(msg, ok=False, error=reload.describe(e))
            if not self.started:
                raise SystemExit(1) from None
            return
        finally:
            self._preparing = False
        if msg["op"] == "prepare":
            if self._abort_prepared:
                tx.abort()
                self.channel.reply(msg, ok=False, error="aborted while preparing")
                return
            self.pending = tx
            self.channel.reply(msg, ok=True)
            return
        tx.commit()
        self.started = True
        log.info("worker started", pid=os.getpid())
        self.channel.reply(msg, ok=True, pid=os.getpid())

    async def _settled(self, msg: Message) -> None:
        await self.dataplane.settled()
        self.channel.reply(msg, ok=True)

    def _finish_pending(self, commit: bool) -> None:
        tx, self.pending = self.pending, None
        if tx is None:
            return
        if commit:
            tx.commit()
            log.debug("configuration reloaded")  # the supervisor logs it once for all
        else:
            tx.abort()

    async def stop(self, msg: Message) -> int:
        if not self.started:
            return 0
        await self.dataplane.stop_accepting()
        log.info(
            "worker draining", open=self.dataplane.open_connections(), drain_timeout_s=self.dataplane.drain_timeout
        )
        if "id" in msg:
            self.channel.reply(msg, ok=True)  # the supervisor counts this worker as no longer accepting
        left = await self.dataplane.drain()
        log.info("stopped", cut_at_drain_timeout=left)
        # Last counters, so that the totals /metrics shows do not lose what this worker did.
        self.channel.send({"op": "final", "families": [f.to_json() for f in self.dataplane.families()]})
        for _ in range(100):
            if not self.channel.pending():
                break
            await asyncio.sleep(0.01)
        return 0
