"""Runs edgeproxy's command line inside a process that can describe its own memory on request.

``python benchmarks/memory_probe.py OUT_DIR FRAMES edgeproxy-args...`` (by benchmarks.memory, as
a script run by the Python of the edgeproxy install being measured: the directory on sys.path is
this one, so ``edgeproxy`` is the installed package, compiled or not, and never this tree's).
FRAMES > 0 starts tracemalloc with that many frames before edgeproxy is imported; FRAMES = 0
meters every import instead (``ImportMeter``).

On SIGUSR2 it writes ``OUT_DIR/mark-K.json`` (RSS, the modules loaded, live objects per type
counted by the garbage collector, the imports metered) and, when tracing,
``OUT_DIR/mark-K.tracemalloc`` (a snapshot for ``tracemalloc.Snapshot.load``), then
``OUT_DIR/mark-K.done``. Only the standard library here.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import FrameType

# Nothing else is imported here before edgeproxy: what the idle process loads is edgeproxy's doing
# (tracemalloc, pickle and linecache with it, only when tracing).


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def type_counts() -> tuple[dict[str, int], dict[str, int]]:
    """Live objects the collector tracks, by type: (how many, their ``sys.getsizeof`` bytes).
    str, bytes and tuples of them are not tracked: tracemalloc sees them."""
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for obj in gc.get_objects():
        t = type(obj)
        name = f"{t.__module__}.{t.__qualname__}"
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    return dict(counts), dict(sizes)


class ImportMeter:
    """First on ``sys.meta_path``, finds nothing itself: it asks the finders after it and wraps
    the loader found, to read the RSS before the module is created (an extension module's
    library is loaded then) and after its code ran. ``records``: (module, the module whose code
    imported it, RSS growth of its own in KiB, with what it imported in turn)."""

    def __init__(self) -> None:
        self.start_kib = rss_kib()
        self.records: list[tuple[str, str, int, int]] = []
        self._open: list[list[int]] = []  # per import under way: [RSS before, its imports' growth]

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if sys.meta_path[0] is not self:  # edgeproxy.build put its finder first: go back before it
            sys.meta_path.remove(self)
            sys.meta_path.insert(0, self)
        for finder in sys.meta_path[1:]:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Metered(spec.loader, self, name, _importer())
                return spec
        return None

    def begin(self) -> None:
        self._open.append([rss_kib(), 0])

    def end(self, name: str, importer: str) -> None:
        before, inner = self._open.pop()
        total = rss_kib() - before
        if self._open:
            self._open[-1][1] += total
        self.records.append((name, importer, total - inner, total))


def _importer() -> str:
    """The module whose code runs the import statement (a function's module for a lazy one)."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        name = str(frame.f_globals.get("__name__", ""))
        if not name.startswith(("importlib", "_frozen_importlib")) and frame.f_code.co_filename != __file__:
            return name
        frame = frame.f_back
    return ""


class _Metered:
    def __init__(self, loader: Any, meter: ImportMeter, name: str, importer: str) -> None:
        self._loader, self._meter, self._name, self._by = loader, meter, name, importer

    def create_module(self, spec: Any) -> Any:
        self._meter.begin()
        try:
            create = getattr(self._loader, "create_module", None)
            return create(spec) if create is not None else None
        except BaseException:
            self._meter.end(self._name, self._by)
            raise

    def exec_module(self, module: Any) -> None:
        try:
            self._loader.exec_module(module)
        finally:
            self._meter.end(self._name, self._by)

    def __getattr__(self, attr: str) -> Any:  # get_code, get_source, is_package, resources...
        return getattr(self._loader, attr)


class Marks:
    def __init__(self, out: str, meter: ImportMeter | None) -> None:
        self.out = out
        self.meter = meter
        self.taken = 0

    def take(self, signum: int = 0, frame: FrameType | None = None) -> None:
        gc.collect()
        rss = rss_kib()  # before the counting below allocates
        k = self.taken
        self.taken += 1
        counts, sizes = type_counts()
        mark: dict[str, Any] = {
            "rss_kib": rss,
            "modules": list(sys.modules),
            "types": counts,
            "type_bytes": sizes,
        }
        if self.meter is not None:
            mark["start_kib"] = self.meter.start_kib
            mark["imports"] = self.meter.records
        if "tracemalloc" in sys.modules:
            import tracemalloc

            tracemalloc.take_snapshot().dump(self._path(k, "tracemalloc"))
            mark["traced_bytes"] = tracemalloc.get_traced_memory()[0]
        with open(self._path(k, "json"), "w") as f:
            json.dump(mark, f)
        open(self._path(k, "done"), "w").close()

    def _path(self, k: int, suffix: str) -> str:
        return os.path.join(self.out, f"mark-{k}.{suffix}")


def main() -> int:
    out, frames, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    del sys.path[0]  # this directory: its modules (load, report...) must not shadow anyone's
    meter = None
    if frames > 0:
        import tracemalloc

        tracemalloc.start(frames)
    else:
        meter = ImportMeter()
        sys.meta_path.insert(0, meter)
    signal.signal(signal.SIGUSR2, Marks(out, meter).take)
    sys.argv = ["edgeproxy", *args]
    from edgeproxy.cli import main as edgeproxy_main

    return edgeproxy_main(args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
