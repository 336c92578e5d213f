"""``workers: N`` (N > 1): a supervisor process and N worker processes.

Design (nginx's master/worker model, with in-place reload):
- The supervisor binds every listening socket and passes each to every worker (SCM_RIGHTS over a
  Unix socketpair; runtime/channel.py). All workers accept from the *same* socket, so there is
  one accept queue per address: when a worker exits, is killed or restarts, connections waiting
  in the queue are accepted by the others. (With SO_REUSEPORT each worker would own a queue, and
  the connections queued on an exiting worker's socket would be reset.) UDP addresses are the
  exception: each worker gets its own socket of a SO_REUSEPORT group steered by client address,
  so one client's datagrams all reach one worker (runtime/udp_steering.py).
- SIGHUP: the supervisor reads and validates the file once, binds any new address, then sends
  the new sockets and the file's bytes to every worker, which applies them in place (the same
  code as ``workers: 1``): open connections, including long ones, are not disturbed. The
  supervisor closes its copy of a removed socket only after every worker has let go of it.
- Control plane once: health checks, discovery and the admin endpoint run here, on the
  supervisor's own pools; what they change reaches the workers by runtime/poolsync.py. So a
  server is checked once per interval whatever the number of workers.
- /metrics asks every worker for its counters and sums them, plus the last counters of workers
  that have exited, so the totals never go backwards when a worker is restarted.
- A worker that dies is logged and restarted (with a back-off if it keeps dying); SIGTERM makes
  every worker stop accepting and drain, then the supervisor exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from edgeproxy.admin.metrics import Families, Family, merge
from edgeproxy.config import Config, parse_config
from edgeproxy.log import iso_time, log
from edgeproxy.runtime import labelsync, poolsync
from edgeproxy.runtime.channel import Channel, ChannelClosed, Message
from edgeproxy.runtime.proxy import Proxy
from edgeproxy.runtime.sockets import SocketKey, SocketSet
from edgeproxy.runtime.udp_steering import UdpGroups

START_TIMEOUT = 30.0
RELOAD_TIMEOUT = 30.0
STATS_TIMEOUT = 2.0
SYNC_INTERVAL = 0.1  # how often pool changes (health, discovery, admin) are pushed to workers
STABLE_AFTER = 10.0  # a worker that lived this long is restarted at once; earlier deaths back off


class WorkerHandle:
    def __init__(self, wid: int, proc: subprocess.Popen[bytes], restarts: int) -> None:
        self.id = wid
        self.proc = proc
        self.channel: Channel | None = None
        self.started = time.time()
        self.ready = False
        self.stopping = False  # asked to stop: its exit is not a death
        self.restarts = restarts
        self.sent: set[SocketKey] = set()  # sockets this worker has been given
        self.families: list[Family] = []  # last counters it reported

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.proc.pid,
            "ready": self.ready,
            "started": iso_time(self.started),
            "restarts": self.restarts,
        }


class Supervisor(Proxy):
    def __init__(self, config: Config) -> None:
        super().__init__(config, role="supervisor", sockets=SocketSet(reuseport_udp=True))
        self.udp_groups = UdpGroups()  # a UDP address: one socket per worker (runtime/udp_steering.py)
        self.workers: dict[int, WorkerHandle] = {}
        self.exited: Families = {}  # counters of workers that are gone, kept so totals never drop
        self.restarts_total = 0
        self.raw = b""
        self._sent_pools: dict[str, poolsync.PoolSnapshot] = {}
        self._sent_labels: dict[str, Any] = {}
        self._sync: asyncio.TimerHandle | None = None
        self._backoff: dict[int, float] = {}

    # -- start -----------------------------------------------------------------------------------
    async def _start_serving(self) -> None:
        with open(self.config.path, "rb") as fh:
            raw = fh.read()
        if hashlib.sha256(raw).hexdigest() != self.config.digest:
            # The file changed since the command line validated it: run what it says now.
            self.config = parse_config(raw, self.config.path)
        self.raw = raw
        handles = await asyncio.gather(*(self._spawn(i) for i in range(1, self.config.workers + 1)))
        failed = [h for h in handles if not h.ready]
        if failed:
            for h in handles:
                self._kill(h)
            raise OSError(0, f"worker {failed[0].id} could not start")
        self._sync = self.loop.call_later(SYNC_INTERVAL, self._sync_pools)

    def _control_plane_started(self) -> None:
        # The workers get the discovered servers and label backends now, not one sync interval later.
        self._push_pools(full=True)

    def _start_fields(self) -> dict[str, Any]:
        return {"workers": len(self.workers), "worker_pids": [h.proc.pid for h in self.workers.values()]}

    async def _spawn(self, wid: int, restarts: int = 0) -> WorkerHandle:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with child:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edgeproxy.runtime.worker", str(child.fileno()), str(wid)],
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
            )
        h = WorkerHandle(wid, proc, restarts)
        self.workers[wid] = h
        h.channel = Channel(parent, lambda m, s: self._from_worker(h, m, s), lambda: self._worker_gone(h))
        self._give_sockets(h)
        try:
            reply = await h.channel.request(
                {"op": "config", "path": self.config.path, "raw": self.raw.decode()}, timeout=START_TIMEOUT
            )
        except (ChannelClosed, TimeoutError) as e:
            reply = {"ok": False, "error": str(e) or "timeout"}
        if reply.get("ok"):
            h.ready = True
            h.channel.send({"op": "labels", **labelsync.to_wire(self)})  # before the pools that fill them
            h.channel.send({"op": "pools", "pools": poolsync.to_wire(poolsync.snapshots(self.pools))})
        else:
            log.error("worker failed to start", worker=wid, pid=proc.pid, error=reply.get("error"))
        return h

    def _give_sockets(self, h: WorkerHandle) -> None:
        assert h.channel is not None
        for key, sock in self.sockets.sockets.items():
            if key not in h.sent:
                if key[0] == "udp":
                    sock = self.udp_groups.member(key, sock, h.id - 1, self.config.workers)
                h.channel.send({"op": "socket", "key": list(key)}, [sock])
                h.sent.add(key)

    def _from_worker(self, h: WorkerHandle, msg: Message, socks: list[socket.socket]) -> None:
        for s in socks:
            s.close()
        if msg.get("op") == "final":
            h.families = [Family.from_json(f) for f in msg.get("families", [])]

    # -- workers that exit -----------------------------------------------------------------------
    def _worker_gone(self, h: WorkerHandle) -> None:
        self.loop.create_task(self._reap(h))

    async def _reap(self, h: WorkerHandle) -> None:
        for _ in range(500):  # the channel closes as the process exits; wait for its status
            if h.proc.poll() is not None:
                break
            await asyncio.sleep(0.01)
        else:
            self._kill(h)
        merge(self.exited, h.families, counters_only=True)
        h.families = []
        if self.workers.get(h.id) is h:
            del self.workers[h.id]
        code = h.proc.returncode
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        if h.stopping or self.draining:
            log.info("worker exited", worker=h.id, pid=h.proc.pid, status=how)
            return
        lived = time.time() - h.started
        delay = 0.0 if lived > STABLE_AFTER else min(max(self._backoff.get(h.id, 0.05) * 2, 0.1), 5.0)
        self._backoff[h.id] = delay
        log.error("worker died; restarting it", worker=h.id, pid=h.proc.pid, status=how, restart_in_s=delay)
        await asyncio.sleep(delay)
        if self.draining or h.id in self.workers:
            return
        self.restarts_total += 1
        new = await self._spawn(h.id, h.restarts + 1)
        if new.ready:
            log.warning("worker restarted", worker=h.id, pid=new.proc.pid, restarts=new.restarts)

    def _kill(self, h: WorkerHandle) -> None:
        if h.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                h.proc.kill()
            h.proc.wait()

    # -- reload ----------------------------------------------------------------------------------
    async def _apply_serving(self, old: Config, new: Config, raw: bytes) -> None:
        """Push the validated file and any new socket to every worker and wait for them."""
        self.raw = raw
        live = [h for h in self.workers.values() if h.channel is not None and not h.channel.closed]
        keys = set(self._socket_keys(new))
        self.udp_groups.retain(keys)
        self.udp_groups.resize(new.workers)
        for h in live:
            self._give_sockets(h)
            h.sent &= keys
        msg = {"op": "config", "path": new.path, "raw": raw.decode()}
        replies = await asyncio.gather(*(self._request(h, msg, RELOAD_TIMEOUT) for h in live), return_exceptions=True)
        for h, r in zip(live, replies, strict=True):
            if isinstance(r, BaseException) or not r.get("ok"):
                log.error(
                    "worker did not apply the reload",
                    worker=h.id,
                    error=str(r if isinstance(r, BaseException) else r.get("error")),
                )
        self._push_pools(full=True)
        await self._scale(new.workers)

    async def _request(self, h: WorkerHandle, msg: Message, timeout: float) -> Message:
        if h.channel is None:
            raise ChannelClosed("no channel")
        return await h.channel.request(msg, timeout=timeout)

    async def _scale(self, n: int) -> None:
        ids = sorted(self.workers)
        for wid in range(1, n + 1):
            if wid not in self.workers:
                await self._spawn(wid)
        for wid in ids:
            if wid > n:
                h = self.workers[wid]
                h.stopping = True
                log.info("stopping a worker: workers reduced", worker=wid, workers=n)
                if h.channel is not None:
                    h.channel.send({"op": "stop"})

    # -- pools to workers ------------------------------------------------------------------------
    def _sync_pools(self) -> None:
        self._sync = self.loop.call_later(SYNC_INTERVAL, self._sync_pools)
        self._push_pools(full=False)

    def _push_pools(self, *, full: bool) -> None:
        labels = labelsync.to_wire(self)
        if full or labels != self._sent_labels:  # label backends first: the pool updates fill them
            self._sent_labels = labels
            for h in self.workers.values():
                if h.channel is not None and h.ready:
                    h.channel.send({"op": "labels", **labels})
        snaps = poolsync.snapshots(self.pools)
        diff = snaps if full else poolsync.changed(snaps, self._sent_pools)
        self._sent_pools = snaps
        if not diff:
            return
        msg = {"op": "pools", "pools": poolsync.to_wire(diff)}
        for h in self.workers.values():
            if h.channel is not None and h.ready:
                h.channel.send(msg)

    # -- metrics and status ----------------------------------------------------------------------
    async def data_plane_families(self) -> list[Family]:
        live = [h for h in self.workers.values() if h.ready and h.channel is not None]
        replies = await asyncio.gather(
            *(self._request(h, {"op": "stats"}, STATS_TIMEOUT) for h in live), return_exceptions=True
        )
        total: Families = merge({}, self.exited.values())
        for h, r in zip(live, replies, strict=True):
            if not isinstance(r, BaseException):
                h.families = [Family.from_json(f) for f in r.get("families", [])]
            merge(total, h.families)  # a worker that did not answer counts with its last report
        return list(total.values())

    def runtime_families(self) -> list[Family]:
        up = Family("edgeproxy_workers", "gauge", "Worker processes running")
        up.add(sum(1 for h in self.workers.values() if h.ready))
        restarts = Family("edgeproxy_worker_restarts_total", "counter", "Workers restarted after dying")
        restarts.add(self.restarts_total)
        return [up, restarts]

    def workers_status(self) -> list[dict[str, Any]]:
        return [h.describe() for _, h in sorted(self.workers.items())]

    # -- stop ------------------------------------------------------------------------------------
    async def stop_accepting(self) -> None:
        self.draining = True
        self.sockets.close()  # our copies; each worker closes its own before it answers
        self.udp_groups.close()
        live = [h for h in self.workers.values() if h.channel is not None and not h.channel.closed]
        await asyncio.gather(*(self._request(h, {"op": "stop"}, 5.0) for h in live), return_exceptions=True)
        log.info(
            "draining: no new connections",
            workers=len(live),
            drain_timeout_s=self.config.timeouts.drain,
        )

    async def _drain(self) -> int:
        deadline = self.loop.time() + self.config.timeouts.drain + 5.0
        while any(h.proc.poll() is None for h in self.workers.values()) and self.loop.time() < deadline:
            if self._interrupts >= 2:
                break
            await asyncio.sleep(0.05)
        killed = 0
        for h in list(self.workers.values()):
            if h.proc.poll() is None:
                killed += 1
                log.error("worker did not stop in time: killed", worker=h.id, pid=h.proc.pid)
                self._kill(h)
        if self._sync is not None:
            self._sync.cancel()
        await asyncio.sleep(0)  # let the channel EOFs be seen
        return killed

    def open_connections(self) -> int:
        return 0  # the workers hold them; each reports its own

    def abort_start(self) -> None:
        for h in list(self.workers.values()):
            self._kill(h)
        self.udp_groups.close()
        super().abort_start()

    def _exit_now(self) -> None:
        for h in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                h.proc.kill()
        os._exit(1)
