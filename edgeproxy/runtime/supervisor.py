"""``workers: N`` (N > 1): a supervisor process and N worker processes.

Design (nginx's master/worker model, with in-place reload):
- The supervisor binds every listening socket and passes each to every worker (SCM_RIGHTS over a
  Unix socketpair; runtime/channel.py). All workers accept from the *same* socket, so there is
  one accept queue per address: when a worker exits, is killed or restarts, connections waiting
  in the queue are accepted by the others. (With SO_REUSEPORT each worker would own a queue, and
  the connections queued on an exiting worker's socket would be reset.) UDP addresses are the
  exception: each worker gets its own socket of a SO_REUSEPORT group steered by client address,
  so one client's datagrams all reach one worker (runtime/udp_steering.py, ``_give_sockets``).
- SIGHUP is a two-phase commit over the workers (runtime/reload.py): the supervisor reads and
  validates the file once, binds any new address and prepares its control plane; then sends the
  new sockets and the file's bytes to every worker, which prepares its data plane (``prepare``)
  and says whether it could. Only when every worker could does each get ``commit`` (and the
  supervisor commit its own side); otherwise every worker gets ``abort`` and the whole edgeproxy
  keeps the old configuration. Open connections, including long ones, are not disturbed.
- Control plane once: health checks, discovery and the admin endpoint run here, on the
  supervisor's pool registry; every change to it reaches the workers (pools/wire.py). So a
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
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from edgeproxy.config import Config
from edgeproxy.log import iso_time, log
from edgeproxy.metrics import Families, Family, merge
from edgeproxy.pools import Change, PoolRegistry, wire
from edgeproxy.runtime import reload
from edgeproxy.runtime.channel import Channel, ChannelClosed, Message
from edgeproxy.runtime.role import ControlRole, MakeControl
from edgeproxy.runtime.sockets import SocketKey, SocketSet, socket_keys
from edgeproxy.runtime.udp_steering import UdpGroups
from edgeproxy.staged import Staged
from edgeproxy.tls.files import CertificateSet

WORKER_MODULE = "edgeproxy.runtime.main"  # ``python -m edgeproxy.runtime.main worker FD ID [UID:GID]``
START_TIMEOUT = 30.0
RELOAD_TIMEOUT = 30.0
STATS_TIMEOUT = 2.0
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


class Supervisor(ControlRole):
    serving_step = "workers"

    def __init__(self, config: Config, registry: PoolRegistry, sockets: SocketSet, make_control: MakeControl) -> None:
        super().__init__(config, registry, sockets, make_control)
        # ``sockets`` binds UDP with SO_REUSEPORT (runtime/main.py): each such address is a group
        # with one socket per worker (runtime/udp_steering.py).
        self.udp_groups = UdpGroups()
        self.workers: dict[int, WorkerHandle] = {}
        self.exited: Families = {}  # counters of workers that are gone, kept so totals never drop
        self.restarts_total = 0
        self.raw = b""
        self._sent_labels: dict[str, Any] | None = None
        self._sent_servers: dict[str, wire.PoolSnapshot] = {}
        self._dirty: set[str] = set()
        self._push_soon: asyncio.Handle | None = None
        self._backoff: dict[int, float] = {}
        self._reaping: set[asyncio.Task[None]] = set()
        self._acks: list[asyncio.Future[Message]] = []  # workers' answers to commit or abort
        self._spawned = False  # the first workers are spawned by the start's transaction
        # A worker (re)started while a reload is under way would get the old file: one at a time.
        self._config_lock = asyncio.Lock()
        registry.subscribe(self._registry_changed)

    # -- start -----------------------------------------------------------------------------------
    async def start(self) -> None:
        with open(self.config.path, "rb") as fh:
            raw = fh.read()
        if hashlib.sha256(raw).hexdigest() != self.config.digest:
            # The file changed since the command line validated it: run what it says now.
            self._config = reload.parse(raw, self.config.path)
        self.raw = raw
        await super().start()
        # The workers get the discovered servers and label backends now, not one change later.
        self._push(full=True)

    async def _prepare_serving(self, new: Config, raw: bytes, certs: CertificateSet) -> Staged:
        if not self._spawned:  # the start: spawn them (they get the file, certificates and sockets)
            self._spawned = True
            self.certs = certs
            handles = await asyncio.gather(*(self._spawn(i) for i in range(1, new.workers + 1)))
            failed = [h for h in handles if not h.ready]
            if failed:
                for h in handles:
                    self._kill(h)
                raise OSError(0, f"worker {failed[0].id} could not start")
            return Staged()
        return await self._prepare_workers(new, raw, certs)

    def _access_log(self, new: Config) -> str:
        # Only the workers write access lines, and they open the file themselves: as `user` when
        # it is set. Were the supervisor to open it first, as root, it would create it root's.
        return "off"

    def _set_config(self, new: Config, raw: bytes, certs: CertificateSet) -> None:
        super()._set_config(new, raw, certs)
        if raw:
            self.raw = raw

    def _start_fields(self) -> dict[str, Any]:
        return {"workers": len(self.workers), "worker_pids": [h.proc.pid for h in self.workers.values()]}

    async def _spawn(self, wid: int, restarts: int = 0) -> WorkerHandle:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with child:
            user = [f"{self.config.user.uid}:{self.config.user.gid}"] if self.config.user else []
            proc = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, "worker", str(child.fileno()), str(wid), *user],
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
            )
        h = WorkerHandle(wid, proc, restarts)
        self.workers[wid] = h
        h.channel = Channel(parent, lambda m, s: self._from_worker(h, m, s), lambda: self._worker_gone(h))
        self._give_sockets(h)
        try:
            reply = await h.channel.request(
                {
                    **reload.worker_message("config", self.config, self.raw),
                    **{"certs": self.certs.to_wire(), "challenges": self.challenges},
                },
                timeout=START_TIMEOUT,
            )
        except (ChannelClosed, TimeoutError) as e:
            reply = {"ok": False, "error": str(e) or "timeout"}
        if reply.get("ok"):
            h.ready = True
            h.channel.send(
                {"op": "registry", **wire.message(wire.labels(self.registry), wire.snapshots(self.registry))}
            )
        else:
            log.error("worker failed to start", worker=wid, pid=proc.pid, error=reply.get("error"))
        return h

    def _give_sockets(self, h: WorkerHandle, workers: int | None = None) -> None:
        """Every socket ``h`` lacks; of a UDP address, its own member of the group sized for
        ``workers`` (default: the running configuration's)."""
        assert h.channel is not None
        for key, sock in self.sockets.sockets.items():
            if key not in h.sent:
                if key[0] == "udp":
                    sock = self.udp_groups.member(key, sock, h.id - 1, workers or self.config.workers)
                h.channel.send({"op": "socket", "key": list(key)}, [sock])
                h.sent.add(key)

    def _from_worker(self, h: WorkerHandle, msg: Message, socks: list[socket.socket]) -> None:
        for s in socks:
            s.close()
        if msg.get("op") == "final":
            h.families = [Family.from_json(f) for f in msg.get("families", [])]

    # -- workers that exit -----------------------------------------------------------------------
    def _worker_gone(self, h: WorkerHandle) -> None:
        task = asyncio.get_running_loop().create_task(self._reap(h))
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

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
        async with self._config_lock:
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

    # -- reload: prepare every worker, then commit all or abort all --------------------------------
    async def reload(self) -> bool:
        async with self._config_lock:
            return await super().reload()

    def _live(self) -> list[WorkerHandle]:
        return [h for h in self.workers.values() if h.channel is not None and not h.channel.closed and not h.stopping]

    async def _prepare_workers(self, new: Config, raw: bytes, certs: CertificateSet) -> Staged:
        live = self._live()
        for h in live:
            self._give_sockets(h, new.workers)
        msg = {**reload.worker_message("prepare", new, raw), "certs": certs.to_wire()}
        replies = await asyncio.gather(*(self._request(h, msg, RELOAD_TIMEOUT) for h in live), return_exceptions=True)
        errors = []
        for h, r in zip(live, replies, strict=True):
            if isinstance(r, BaseException):
                errors.append(f"worker {h.id}: {str(r) or type(r).__name__}")
            elif not r.get("ok"):
                errors.append(f"worker {h.id}: {r.get('error')}")

        def tell(op: str) -> None:
            # Answered once the worker has switched (or dropped what it prepared): _settle waits.
            self._acks = [asyncio.ensure_future(self._request(h, {"op": op}, RELOAD_TIMEOUT)) for h in live]

        def end(op: str, config: Config) -> None:
            tell(op)
            keys = set(socket_keys(config))  # each worker now holds exactly these sockets
            for h in live:
                h.sent &= keys
            self.udp_groups.retain(keys)
            self.udp_groups.resize(config.workers)

        if errors:
            end("abort", self.config)
            raise reload.ReloadFailed("workers", errors)
        return Staged(lambda: end("commit", new), lambda: end("abort", self.config))

    async def _use_certificates(self, certs: CertificateSet) -> None:
        """Every worker serves ``certs`` (the ACME hook, ``ControlRole.use_certificates``); a worker
        restarted later gets them with its configuration (``self.certs``)."""
        msg = {"op": "certificates", "certs": certs.to_wire()}
        await self._tell(msg, [h for h in self._live() if h.ready], "the new certificates")

    async def _use_challenges(self, board: dict[str, Any]) -> None:
        """Every worker answers the challenges of ``board`` (a worker still starting too: it
        applies the board as soon as it reads it, before its configuration)."""
        await self._tell({"op": "challenges", "board": board}, self._live(), "the ACME challenges")

    async def _tell(self, msg: Message, workers: list[WorkerHandle], what: str) -> None:
        """``msg`` to ``workers``, waiting for their answers; a worker that fails is logged."""
        replies = await asyncio.gather(
            *(self._request(h, msg, RELOAD_TIMEOUT) for h in workers), return_exceptions=True
        )
        for h, r in zip(workers, replies, strict=True):
            if isinstance(r, BaseException) or not r.get("ok"):
                log.error(f"a worker did not take {what}", worker=h.id, error=str(r))

    async def _settle(self) -> None:
        acks, self._acks = self._acks, []
        replies = await asyncio.gather(*acks, return_exceptions=True)
        for r in replies:
            if isinstance(r, BaseException) or not r.get("ok"):
                log.warning("a worker did not confirm the reload's end", error=str(r))

    async def _after_reload(self) -> None:
        await self._scale(self.config.workers)

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

    # -- the registry to the workers ---------------------------------------------------------------
    def _registry_changed(self, change: Change) -> None:
        """Health checks, discovery, the admin API or a reload changed the registry: the workers
        are told on the next loop turn (one message for a burst of changes)."""
        self._dirty |= change.pools
        if self._push_soon is None:
            self._push_soon = asyncio.get_running_loop().call_soon(self._push)

    def _push(self, *, full: bool = False) -> None:
        self._push_soon = None
        names = None if full else self._dirty
        self._dirty = set()
        labels = wire.labels(self.registry)
        send_labels = full or labels != self._sent_labels
        self._sent_labels = labels
        snaps = wire.snapshots(self.registry, names)
        diff = snaps if full else {n: s for n, s in snaps.items() if self._sent_servers.get(n) != s}
        self._sent_servers.update(snaps)
        for gone in [n for n in self._sent_servers if n not in self.registry.pools]:
            del self._sent_servers[gone]
        if not diff and not send_labels:
            return
        msg = {"op": "registry", **wire.message(labels if send_labels else None, diff)}
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

    def control_families(self) -> list[Family]:
        up = Family("edgeproxy_workers", "gauge", "Worker processes running")
        up.add(sum(1 for h in self.workers.values() if h.ready))
        restarts = Family("edgeproxy_worker_restarts_total", "counter", "Workers restarted after dying")
        restarts.add(self.restarts_total)
        return [*super().control_families(), up, restarts]

    def status_sections(self) -> dict[str, Any]:
        return {"workers": [h.describe() for _, h in sorted(self.workers.items())], **super().status_sections()}

    # -- stop ------------------------------------------------------------------------------------
    async def stop_accepting(self) -> None:
        self._draining = True
        self.sockets.close()  # our copies; each worker closes its own before it answers
        self.udp_groups.close()
        live = [h for h in self.workers.values() if h.channel is not None and not h.channel.closed]
        await asyncio.gather(*(self._request(h, {"op": "stop"}, 5.0) for h in live), return_exceptions=True)
        log.info(
            "draining: no new connections",
            workers=len(live),
            drain_timeout_s=self.config.timeouts.drain,
        )

    async def finish(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeouts.drain + 5.0
        while any(h.proc.poll() is None for h in self.workers.values()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        killed = 0
        for h in list(self.workers.values()):
            if h.proc.poll() is None:
                killed += 1
                log.error("worker did not stop in time: killed", worker=h.id, pid=h.proc.pid)
                self._kill(h)
        if self._push_soon is not None:
            self._push_soon.cancel()
        await asyncio.sleep(0)  # let the channel EOFs be seen
        await self.control.stop()
        log.info("stopped", cut_at_drain_timeout=killed)
        log.flush()

    def abort_start(self) -> None:
        for h in list(self.workers.values()):
            self._kill(h)
        self.udp_groups.close()
        self.sockets.close()

    def kill_now(self) -> None:
        for h in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                h.proc.kill()
