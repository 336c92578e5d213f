"""The composition root: the one place that builds a process's parts and hands each the narrow
interface it needs (ARCHITECTURE.md).

- ``serve(config)`` (``edgeproxy run``): ``workers: 1`` is one process with the data plane and
  the control plane (runtime/single.py); more is a supervisor with the control plane
  (runtime/supervisor.py) and that many worker processes.
- ``python -m edgeproxy.runtime.main worker FD ID``: a worker process (runtime/worker.py), the
  data plane only, driven by its channel to the supervisor.

Every process has one pool registry (pools/registry.py), shared by its data plane and, where it
runs, its control plane. The control plane's components are listed in ``control_plane``: a new
one (TLS certificates, ACME) is built there with what it needs, and nowhere else. The data plane's
per-process resources (the upstream idle connection pools of net/upstream_pool.py) belong here
too, created with the data plane and closed after it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from edgeproxy.config import Config, User
from edgeproxy.health.checker import HealthChecker
from edgeproxy.log import log
from edgeproxy.net.loop import loop_name, run
from edgeproxy.net.upstream_pool import IdlePool
from edgeproxy.pools import PoolRegistry
from edgeproxy.runtime.acme_service import AcmeService
from edgeproxy.runtime.control import Component, ControlPlane, OnDemand
from edgeproxy.runtime.dataplane import DataPlane
from edgeproxy.runtime.process import ProcessLoop
from edgeproxy.runtime.reload import describe
from edgeproxy.runtime.role import ControlRole
from edgeproxy.runtime.single import SingleProcess
from edgeproxy.runtime.sockets import SocketSet

if TYPE_CHECKING:
    from edgeproxy.runtime.supervisor import Supervisor
    from edgeproxy.runtime.worker import Worker


def control_plane(registry: PoolRegistry, role: ControlRole) -> ControlPlane:
    """The components that run once per edgeproxy, in the order they start. ACME adds its
    certificates to those each reload serves (``certificate_sources``) and hands them, and its
    challenge answers, to the data plane through the role."""
    acme = AcmeService(role, registry)
    role.certificate_sources.append(acme.with_certificates)

    def discovery() -> Component:
        from edgeproxy.discovery.swarm import SwarmDiscovery

        return SwarmDiscovery(registry)

    def admin() -> Component:
        from edgeproxy.admin.server import AdminServer

        return AdminServer(role, registry)

    return ControlPlane([
        HealthChecker(registry),
        OnDemand(lambda config: config.swarm is not None, discovery),
        acme,
        OnDemand(lambda config: config.admin is not None, admin),
    ])  # fmt: skip


def build(config: Config) -> SingleProcess | Supervisor:
    """The process that owns the config file: the single process, or the supervisor. With
    ``user``, the data plane runs in workers as that user, even one: the process that keeps root
    (binds, holds the Docker socket and the TLS keys) must not be the one facing clients."""
    registry = PoolRegistry()
    if config.workers <= 1 and config.user is None:
        sockets = SocketSet()
        dataplane = DataPlane(registry, sockets, IdlePool(asyncio.get_running_loop()))
        return SingleProcess(config, registry, sockets, dataplane, lambda role: control_plane(registry, role))
    # Imported here: a single process needs none of the supervisor's machinery (memory, issue 15).
    from edgeproxy.runtime.supervisor import Supervisor

    # A UDP address becomes a SO_REUSEPORT group, a socket per worker (runtime/udp_steering.py).
    sockets = SocketSet(reuseport_udp=True)
    return Supervisor(config, registry, sockets, lambda role: control_plane(registry, role))


def build_worker(channel_fd: int, wid: int) -> Worker:
    from edgeproxy.runtime.worker import Worker

    registry = PoolRegistry()
    sockets = SocketSet(can_bind=False)
    dataplane = DataPlane(registry, sockets, IdlePool(asyncio.get_running_loop()))
    return Worker(channel_fd, wid, registry, sockets, dataplane)


def serve(config: Config) -> int:
    """Run until stopped; 0 on a clean stop, 1 if it could not start."""
    if config.user is not None and os.geteuid() != 0:
        log.error(
            "cannot start",
            error=f"user: {config.user} needs edgeproxy started as root (it runs as uid {os.geteuid()}): "
            "start it as root, or remove user",
        )
        return 1

    async def main() -> int:
        try:
            await ProcessLoop(build(config)).run()
        except Exception as e:
            log.error("cannot start", error=describe(e), loop=loop_name())
            return 1
        return 0

    return _run(main())


def become(uid_gid: str) -> None:
    """A worker's first act when ``user`` is set (before a thread or a connection exists): drop
    to UID:GID for good, then check it can still read its Python, which loads modules lazily."""
    from edgeproxy.runtime.privileges import check_readable, drop, import_dirs

    uid, _, gid = uid_gid.partition(":")
    user = User(int(uid), int(gid), uid_gid)
    # Where the standard library (os; select: lib-dynload), edgeproxy and its dependencies are.
    dirs = import_dirs(sys.modules[m] for m in ("os", "select", "edgeproxy", "yaml") if m in sys.modules)
    drop(user)
    check_readable(user, dirs)


def serve_worker(channel_fd: int, wid: int) -> int:
    log.worker = wid

    async def main() -> int:
        return await build_worker(channel_fd, wid).run()

    return _run(main())


def _run(main: Coroutine[Any, Any, int]) -> int:
    try:
        return run(main)
    except KeyboardInterrupt:
        return 1
    finally:
        log.flush()
        sys.stderr.flush()


if __name__ == "__main__":
    import signal

    args = sys.argv[1:]
    if args[:1] != ["worker"] or len(args) not in (3, 4):
        sys.exit(
            "usage: python -m edgeproxy.runtime.main worker CHANNEL_FD WORKER_ID [UID:GID] (started by the supervisor)"
        )
    from edgeproxy.runtime.privileges import PrivilegeError

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's loop handler is installed
    if len(args) == 4:
        try:
            become(args[3])
        except (PrivilegeError, ValueError) as e:
            log.worker = int(args[2])
            log.error("worker cannot drop privileges", error=str(e))
            log.flush()
            sys.exit(1)
    sys.exit(serve_worker(int(args[1]), int(args[2])))
