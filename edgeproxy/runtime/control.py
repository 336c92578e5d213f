"""The control plane: the components that run once per edgeproxy (in the single process, or in
the supervisor, never in each worker) beside the data plane.

Each component gets from the composition root (runtime/main.py) only the narrow interfaces it
needs: the pool registry (health checks, discovery, the admin API), the stats view (the admin
endpoint). What they change in the registry reaches the workers by pools/wire.py.

A component is told the whole configuration on start and on every reload and decides from it
whether it runs: discovery starts when a reload adds a ``swarm:`` section and stops when one
removes it; the admin endpoint moves with ``admin.bind``. Its ``prepare`` does what can fail (bind,
read files) without changing what runs; the returned ``Staged`` commits or aborts it with the
rest of the reload (edgeproxy/staged.py). TLS certificates and ACME (issues 13, 14) plug in the
same way: a component built in the composition root, certificate sets prepared, swapped at commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from edgeproxy.config import Config
from edgeproxy.log import log
from edgeproxy.metrics import Family
from edgeproxy.staged import Staged


class Component(Protocol):
    async def prepare(self, config: Config) -> Staged:
        """Start, reload, or turn itself on or off as ``config`` says: do everything that can
        fail now (raising leaves the component as it was); the commit must not fail."""
        ...

    async def ready(self) -> None:
        """After the first commit: wait, bounded, for a first result (discovery's first look)."""
        ...

    async def stop(self) -> None:
        """Shut down (the process is stopping)."""
        ...

    def collect(self) -> Iterable[Family]:
        """Families of its own counters for /metrics."""
        ...

    def status(self) -> dict[str, Any]:
        """Sections it adds to /status (none: an empty dict)."""
        ...


class OnDemand:
    """A component made, and its module imported, only once a config uses it (``wanted``): the
    admin endpoint and swarm discovery are some 0.7 MiB of modules (the http and urllib packages
    with them) that a process whose config never had them does not load (issue 15). Until then it
    is what the component is while off: prepares nothing, reports nothing; from then on it is
    the component, which turns itself off as before when a reload removes its section."""

    def __init__(self, wanted: Callable[[Config], bool], make: Callable[[], Component]) -> None:
        self.wanted = wanted
        self.make = make
        self.component: Component | None = None

    async def prepare(self, config: Config) -> Staged:
        if self.component is None:
            if not self.wanted(config):
                return Staged()
            self.component = self.make()
        return await self.component.prepare(config)

    async def ready(self) -> None:
        if self.component is not None:
            await self.component.ready()

    async def stop(self) -> None:
        if self.component is not None:
            await self.component.stop()

    def collect(self) -> Iterable[Family]:
        return self.component.collect() if self.component is not None else ()

    def status(self) -> dict[str, Any]:
        return self.component.status() if self.component is not None else {}


class ControlPlane:
    def __init__(self, components: Sequence[Component]) -> None:
        self.components = list(components)

    async def prepare(self, config: Config) -> Staged:
        """Every component's share of ``config``; the first failure aborts those already prepared."""
        staged: list[Staged] = []
        try:
            for comp in self.components:
                staged.append(await comp.prepare(config))
        except BaseException:
            for s in reversed(staged):
                s.abort()
            raise

        def commit() -> None:
            for s in staged:
                s.commit()

        def abort() -> None:
            for s in reversed(staged):
                s.abort()

        return Staged(commit, abort)

    async def ready(self) -> None:
        for comp in self.components:
            await comp.ready()

    async def stop(self) -> None:
        for comp in reversed(self.components):
            try:
                await comp.stop()
            except Exception as e:  # stopping: go on with the others
                log.error("stopping a component failed", component=type(comp).__name__, error=repr(e))

    def families(self) -> list[Family]:
        return [f for comp in self.components for f in comp.collect()]

    def status_sections(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for comp in self.components:
            out.update(comp.status())
        return out
