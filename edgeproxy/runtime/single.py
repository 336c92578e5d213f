"""``workers: 1``: one process runs the data plane (its listeners) and the control plane (health
checks, discovery, the admin endpoint), with no supervisor (SPEC.md, issue 4)."""

from __future__ import annotations

from typing import Any

from edgeproxy.config import Config
from edgeproxy.log import log
from edgeproxy.metrics import Family
from edgeproxy.pools import PoolRegistry
from edgeproxy.runtime.dataplane import DataPlane
from edgeproxy.runtime.role import ControlRole, MakeControl
from edgeproxy.runtime.sockets import SocketSet
from edgeproxy.staged import Staged
from edgeproxy.tls.files import CertificateSet


class SingleProcess(ControlRole):
    def __init__(
        self,
        config: Config,
        registry: PoolRegistry,
        sockets: SocketSet,
        dataplane: DataPlane,
        make_control: MakeControl,
    ) -> None:
        self.dataplane = dataplane
        super().__init__(config, registry, sockets, make_control)

    async def _prepare_serving(self, new: Config, raw: bytes, certs: CertificateSet) -> Staged:
        return await self.dataplane.prepare(new, certs)

    async def _use_certificates(self, certs: CertificateSet) -> None:
        self.dataplane.use_certificates(certs)

    async def _use_challenges(self, board: dict[str, Any]) -> None:
        self.dataplane.use_challenges(board)

    async def _settle(self) -> None:
        await self.dataplane.settled()

    async def data_plane_families(self) -> list[Family]:
        return self.dataplane.families()

    async def stop_accepting(self) -> None:
        self._draining = True
        await self.dataplane.stop_accepting()
        log.info(
            "draining: no new connections",
            open=self.dataplane.open_connections(),
            drain_timeout_s=self.config.timeouts.drain,
        )

    async def finish(self) -> None:
        # Components stop after the listeners: admin's /healthz answers 503 meanwhile.
        left = await self.dataplane.drain()
        await self.control.stop()
        log.info("stopped", cut_at_drain_timeout=left)
        log.flush()

    async def shutdown(self) -> None:
        await self.stop_accepting()
        await self.finish()

    def abort_start(self) -> None:
        self.sockets.close()

    def kill_now(self) -> None:
        return None
