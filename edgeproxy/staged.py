"""A prepared change, the unit of a reload transaction (a leaf module: any layer may use it).

A reload is built completely before anything is swapped in: each part of the process (sockets,
log, pools, listeners, every control-plane component) *prepares* its share of the new
configuration, doing everything that can fail (binding, opening files, loading certificates)
without changing what serves. Only when every part has prepared are they all committed, in one
go and without yielding to the event loop; if any part fails, those already prepared are
aborted and the running configuration is left whole (runtime/reload.py).
"""

from __future__ import annotations

from collections.abc import Callable


class Staged:
    """What a ``prepare`` returns: ``commit()`` swaps the change in and must not fail (nothing
    fallible is left for it); ``abort()`` releases what the preparation took. Exactly one of
    them runs, once; a second call does nothing."""

    __slots__ = ("_abort", "_commit", "done")

    def __init__(self, commit: Callable[[], None] | None = None, abort: Callable[[], None] | None = None) -> None:
        self._commit = commit
        self._abort = abort
        self.done = False

    def commit(self) -> None:
        if not self.done:
            self.done = True
            if self._commit is not None:
                self._commit()

    def abort(self) -> None:
        if not self.done:
            self.done = True
            if self._abort is not None:
                self._abort()
