"""Load generators: wrk (with a Lua ``done`` hook that prints exact figures as JSON) and the
idle-connection client of scenario 5, each a subprocess pinned beside the backend."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.procs import pinned

# wrk calls done() once at the end with its own summary; latencies are in microseconds.
WRK_LUA = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"bytes":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


@dataclass
class WrkResult:
    requests: int
    bytes: int
    seconds: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def run_wrk(
    port: int,
    path: str,
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str],
    cpus: str | None,
    workdir: Path,
    every: tuple[float, Callable[[], None]] | None = None,
    https: bool = False,
    host: str = "127.0.0.1",
) -> WrkResult:
    """Run wrk for ``seconds``; ``every=(interval, fn)`` calls fn at that interval meanwhile."""
    script = workdir / "done.lua"
    if not script.exists():
        script.write_text(WRK_LUA)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd += ["-s", str(script), f"{'https' if https else 'http'}://{host}:{port}{path}"]
    proc = subprocess.Popen(pinned(cmd, cpus), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + seconds + 30  # wrk ends by itself; this bounds a hung one
    next_tick = time.monotonic() + every[0] if every else float("inf")
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if every and time.monotonic() >= next_tick:
                every[1]()
                next_tick += every[0]
            time.sleep(0.02)
    finally:  # also on an interrupt: no wrk is left behind
        if proc.poll() is None:
            proc.kill()
    out = proc.communicate()[0]
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            d = json.loads(line[len("WRKJSON ") :])
            return WrkResult(
                requests=d["requests"],
                bytes=d["bytes"],
                seconds=d["duration_us"] / 1e6,
                errors={k: d[k] for k in ("connect", "read", "write", "status", "timeout")},
                p50_ms=d["p50_us"] / 1000,
                p90_ms=d["p90_us"] / 1000,
                p99_ms=d["p99_us"] / 1000,
                max_ms=d["max_us"] / 1000,
            )
    raise RuntimeError(f"wrk gave no result (exit {proc.returncode}): {out[-500:]}")


@dataclass
class IdleResult:
    established: int
    failed: int
    checked_ok: int
    checked: int
    open_seconds: float


class IdleClients:
    """``benchmarks.idle_client`` in a subprocess: opens ``count`` keep-alive connections (one
    request each), reports READY, holds them for ``hold`` seconds, checks a sample, closes."""

    def __init__(self, port: int, count: int, hold: float, cpus: str | None) -> None:
        cmd = [sys.executable, "-m", "benchmarks.idle_client", str(port), str(count), str(hold)]
        self.proc = subprocess.Popen(
            pinned(cmd, cpus),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=0,  # raw reads: select() must see every byte that is not yet consumed
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.lines: list[str] = []
        self._partial = b""

    def wait_line(self, prefix: str, timeout: float) -> dict[str, float]:
        """Wait (at most ``timeout``) until the client prints ``prefix k=v ...``; its fields as numbers."""
        out = self.proc.stdout
        assert out is not None
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._partial:
                raw, self._partial = self._partial.split(b"\n", 1)
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if line.startswith(prefix + " "):
                    return {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([out], [], [], left)[0]:
                break
            chunk = os.read(out.fileno(), 65536)
            if not chunk:
                break
            self._partial += chunk
        self.proc.kill()
        raise RuntimeError(f"idle client: no {prefix} line: {' | '.join(self.lines[-5:])}")

    def finish(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
