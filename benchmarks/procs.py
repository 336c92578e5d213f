"""Processes of the benchmark: start them pinned, read their CPU time and memory from /proc.

CPU seconds of a proxy are summed over its whole process tree (a master and its workers), each
process counted as utime+stime plus cutime+cstime: the kernel adds a child's times to its parent's
c-fields when the parent reaps it, so a worker that exits during the run (HAProxy's old worker
after a reload) is still counted, once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            kids.setdefault(int(fields[1]), []).append(int(entry.name))
    return kids


def tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    kids = children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    """User+system CPU of the tree under ``root``, reaped children included."""
    ticks = 0
    for pid in tree(root):
        f = _stat_fields(pid)
        if f is not None:  # fields after the name: [11]=utime [12]=stime [13]=cutime [14]=cstime
            ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return ticks / CLOCK_TICKS


def rss_kib(root: int) -> int:
    """Resident memory summed over the tree (shared pages of forked workers count once per process)."""
    total = 0
    for pid in tree(root):
        f = _stat_fields(pid)
        if f is not None:
            total += int(f[21]) * PAGE_KIB
    return total


class RssSampler:
    """Samples the tree's RSS every ``interval`` seconds in a thread; ``peak`` is the maximum seen."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.peak = rss_kib(root)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_kib(self.root))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.root))


def pinned(cmd: Sequence[str], cpus: str | None) -> list[str]:
    """``cmd`` under ``taskset -c cpus`` (no pinning when the machine has a single CPU)."""
    return ["taskset", "-c", cpus, *cmd] if cpus else list(cmd)


class Managed:
    """A long-running process (backend or proxy) with its output in a log file; stops by itself."""

    def __init__(self, name: str, cmd: Sequence[str], log_path: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        # A new session: signals meant for the harness (Ctrl-C) do not hit it directly; the
        # harness stops it in order instead.
        self.proc = subprocess.Popen(
            self.cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # Kill the whole session (workers too), by its id: it is ours alone.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
