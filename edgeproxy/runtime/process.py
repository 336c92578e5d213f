"""Signals and the main loop of a process that owns the configuration file (the single process or
the supervisor; a worker is driven by its channel instead, runtime/worker.py).

Signal handlers only record what was asked (uvicorn's ``handle_exit`` model); the loop acts on it:
SIGHUP reloads (a reload never ends the process, runtime/reload.py), SIGTERM and SIGINT stop
accepting and drain, a second SIGINT exits at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Protocol

from edgeproxy.config import Config
from edgeproxy.log import log


class Role(Protocol):
    @property
    def config(self) -> Config: ...

    async def start(self) -> None:
        """Bind, serve, start the control plane; raise if that cannot be done."""
        ...

    async def reload(self) -> bool:
        """Re-read the file and apply it as one transaction; never raises."""
        ...

    async def stop_accepting(self) -> None: ...

    async def finish(self) -> None:
        """Let open connections finish (bounded by timeouts.drain), then stop the control plane."""
        ...

    def abort_start(self) -> None:
        """Undo a start that failed half-way: release what was bound or spawned."""
        ...

    def kill_now(self) -> None:
        """Before the process exits at once: end what it started (worker processes)."""
        ...


class ProcessLoop:
    def __init__(self, role: Role) -> None:
        self.role = role
        self._stop = asyncio.Event()
        self._hup = asyncio.Event()
        self._interrupts = 0

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        loop.add_signal_handler(signal.SIGHUP, self._hup.set)

    def _on_sigint(self) -> None:
        self._interrupts += 1
        if self._interrupts >= 2:
            log.warning("second interrupt: exiting at once")
            log.flush()
            self.role.kill_now()
            os._exit(1)
        self._stop.set()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT; SIGHUP reloads."""
        # Signals first: a HUP or TERM that arrives while starting is acted on once started,
        # instead of killing the process with the default action.
        self.install_signals()
        try:
            await self.role.start()
        except BaseException:
            self.role.abort_start()
            raise
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                hup = asyncio.ensure_future(self._hup.wait())
                await asyncio.wait({stop, hup}, return_when=asyncio.FIRST_COMPLETED)
                if self._hup.is_set() and not self._stop.is_set():
                    self._hup.clear()
                    log.info("SIGHUP: reloading", config=self.role.config.path)
                    await self.role.reload()
                hup.cancel()
        finally:
            stop.cancel()
            await self.role.stop_accepting()
            await self.role.finish()
