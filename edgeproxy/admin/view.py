"""What the admin endpoint may read about the running edgeproxy: a read-only view.

The process role that runs the control plane (runtime/single.py, runtime/supervisor.py) provides
it; the admin endpoint never sees the role itself. Server states come from the pool registry,
which the admin endpoint also gets (it is the one thing it changes: drain/ready).
"""

from __future__ import annotations

from typing import Any, Protocol

from edgeproxy.config import Config
from edgeproxy.metrics import Family
from edgeproxy.stats import ReloadStats


class StatsView(Protocol):
    @property
    def config(self) -> Config:
        """The running configuration."""
        ...

    @property
    def draining(self) -> bool:
        """Stopping: /healthz answers 503."""
        ...

    @property
    def started(self) -> float:
        """When this edgeproxy started (time.time())."""
        ...

    @property
    def reloads(self) -> ReloadStats: ...

    async def data_plane_families(self) -> list[Family]:
        """The data plane's counters, summed over every process that proxies (only counters,
        gauges that add up, and histograms)."""
        ...

    def control_families(self) -> list[Family]:
        """The control plane's own families (health checks, discovery, workers)."""
        ...

    def status_sections(self) -> dict[str, Any]:
        """Sections of /status besides listeners, backends and config: ``workers`` (a list,
        empty with one process) and each component's (``swarm``)."""
        ...
