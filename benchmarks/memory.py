"""``python -m benchmarks.memory``: where edgeproxy's memory goes, idle and with idle connections.

Two parts, each printed as a table (``--json FILE`` keeps the raw figures):

- **imports**: the idle process's RSS (a plain HTTP listener, nothing else configured), the
  modules it has loaded, and what each costs: a fresh interpreter imports them again in the
  order they were loaded, deepest first (``-X importtime``'s order), reading its RSS after each.
  A module's cost is charged to its package and to the edgeproxy module that imported it first
  (the nearest one above it in the import tree), so a heavy dependency shows who pulls it in.
- **connections**: the RSS growth per idle keep-alive client connection (scenario 5 of
  ``python -m benchmarks``, after one request each: by default 2,000), then the same under
  tracemalloc: the live Python allocations per connection by source line, and the objects per
  connection by type (counted by the garbage collector, sized by ``sys.getsizeof``).

The edgeproxy measured is the one ``--python`` imports (default: this interpreter), run as that
install would run it: from a temporary directory, so a non-editable install's compiled modules
are the ones loaded (``EDGEPROXY_PURE_PYTHON=1`` in the environment: the pure ones). The probe
(benchmarks/memory_probe.py) wraps edgeproxy's command line to answer SIGUSR2 with a report.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks import machine
from benchmarks.backend import Nginx
from benchmarks.load import IdleClients
from benchmarks.netutil import free_port, wait_http
from benchmarks.procs import Managed, wait_until
from benchmarks.proxies import Setup, edgeproxy_config

PROBE = Path(__file__).resolve().parent / "memory_probe.py"
SWEPT_AFTER = 5.0  # seconds: the idle upstream pool (net/upstream_pool.py) has closed its connections
TOP = 25


@dataclass
class Probe:
    """edgeproxy under benchmarks/memory_probe.py, serving ``config``."""

    proc: Managed
    out: Path
    port: int
    marks: int = 0

    def mark(self, timeout: float = 60.0) -> dict[str, Any]:
        k = self.marks
        self.marks += 1
        self.proc.signal(signal.SIGUSR2)
        done = self.out / f"mark-{k}.done"
        if not wait_until(done.exists, timeout):
            raise RuntimeError(f"edgeproxy did not answer SIGUSR2: {self.proc.log_tail()}")
        mark: dict[str, Any] = json.loads((self.out / f"mark-{k}.json").read_text())
        return mark

    def snapshot(self, k: int) -> tracemalloc.Snapshot:
        return tracemalloc.Snapshot.load(str(self.out / f"mark-{k}.tracemalloc"))


def start_probe(
    python: str,
    workdir: Path,
    name: str,
    backend_port: int,
    frames: int,
    nofile: int,
    *,
    pure: bool = False,
) -> Probe:
    out = workdir / name
    out.mkdir()
    port = free_port()
    setup = Setup(mode="http", backend_port=backend_port, max_conns=max(1000, nofile // 2 - 200))
    cfg = out / "edgeproxy.yaml"
    cfg.write_text(yaml.safe_dump(edgeproxy_config(setup, port), sort_keys=False))
    cmd = [
        python,
        str(PROBE),
        str(out),
        str(frames),
        "run",
        "-c",
        str(cfg),
    ]
    if pure:
        cmd = ["env", "EDGEPROXY_PURE_PYTHON=1", *cmd]
    proc = Managed(f"edgeproxy-{name}", cmd, out / "log", cwd=out)
    error = wait_http(port, "/small", timeout=180, alive=proc.alive)  # tracemalloc slows imports 5x
    if error is not None:
        proc.stop()
        raise RuntimeError(f"edgeproxy did not serve ({error}): {proc.log_tail()}")
    return Probe(proc, out, port)


# -- imports ------------------------------------------------------------------------------------


def package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "edgeproxy" and len(parts) > 1 else parts[0]


def brought_by(module: str, importer: dict[str, str]) -> str:
    """The first edgeproxy module on the way from ``module`` up its import chain."""
    seen = set()
    m = module
    while m and m not in seen:
        if m.startswith("edgeproxy"):
            return m
        seen.add(m)
        m = importer.get(m, "")
    return "(not edgeproxy's)"


def imports_part(idle: dict[str, Any]) -> dict[str, Any]:
    """What the imports metered in the idle process cost (benchmarks/memory_probe.py)."""
    importer: dict[str, str] = {}
    by_module: dict[str, int] = {}
    by_package: dict[str, int] = {}
    by_importer: dict[str, int] = {}
    first: dict[str, str] = {}
    for name, by, own, _ in idle["imports"]:
        importer[name] = by
        by_module[name] = own
        first.setdefault(package(name), name)
    for name, own in by_module.items():
        by_package[package(name)] = by_package.get(package(name), 0) + own
        charged = brought_by(name, importer)
        by_importer[charged] = by_importer.get(charged, 0) + own
    return {
        "idle_rss_kib": idle["rss_kib"],
        "modules": len(idle["modules"]),
        "interpreter_kib": idle["start_kib"],
        "imported_kib": sum(by_module.values()),
        "by_package": _descending(by_package),
        "by_importer": _descending(by_importer),
        "by_module": _descending(by_module),
        # how each heavier package came in: the import chain of its first module
        "chains": {p: _chain(first[p], importer) for p, kib in by_package.items() if kib >= 256},
        "loaded": sorted({package(m) for m in idle["modules"] if m.split(".")[0] in _WATCHED}),
    }


def _descending(kib: dict[str, int]) -> dict[str, int]:
    return dict(sorted(kib.items(), key=lambda kv: -kv[1]))


def _chain(module: str, importer: dict[str, str]) -> str:
    chain = [module]
    while importer.get(chain[-1]) and importer[chain[-1]] not in chain:
        chain.append(importer[chain[-1]])
    return " <- ".join(chain)


# Dependencies a plain HTTP config should not need loaded (listed when they are).
_WATCHED = {"cryptography", "yaml", "_hashlib", "email", "http", "urllib", "json", "difflib", "tempfile", "random"}


# -- connections --------------------------------------------------------------------------------


def connections_part(probe: Probe, count: int, load_cpus: str | None, traced: bool) -> dict[str, Any]:
    """Marks: 0 idle after one request, 1 with ``count`` idle client connections just opened
    (what scenario 5 reads), 2 the same after the idle upstream pool swept."""
    wait_http(probe.port, "/small", timeout=10)
    base = probe.mark()
    client = IdleClients(probe.port, count, hold=600.0, cpus=load_cpus)
    try:
        ready = client.wait_line("READY", timeout=180)
        held = probe.mark()
        time.sleep(SWEPT_AFTER)
        swept = probe.mark()
    finally:
        client.proc.kill()
        client.finish(timeout=30)
    n = max(1, int(ready["established"]))
    fig: dict[str, Any] = {
        "established": n,
        "failed": int(ready["failed"]),
        "base_rss_kib": base["rss_kib"],
        "held_rss_kib": held["rss_kib"],
        "swept_rss_kib": swept["rss_kib"],
        "rss_kib_per_conn": round((held["rss_kib"] - base["rss_kib"]) / n, 3),
        "swept_rss_kib_per_conn": round((swept["rss_kib"] - base["rss_kib"]) / n, 3),
        "objects_per_conn": _per_conn_types(base, swept, n),
    }
    if traced:
        fig["traced_kib_per_conn"] = round((swept["traced_bytes"] - base["traced_bytes"]) / n / 1024, 3)
        fig["held_traced_kib_per_conn"] = round((held["traced_bytes"] - base["traced_bytes"]) / n / 1024, 3)
        fig["lines_per_conn"] = _per_conn_lines(probe.snapshot(0), probe.snapshot(2), n)
    return fig


def _per_conn_types(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, tuple[float, float]]:
    """type -> (objects, their bytes) per connection, the types with at least one per 20 connections."""
    out = {}
    for t, count in after["types"].items():
        objects = (count - before["types"].get(t, 0)) / n
        if objects >= 0.05:
            size = (after["type_bytes"][t] - before["type_bytes"].get(t, 0)) / n
            out[t] = (round(objects, 2), round(size, 1))
    return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))


def _per_conn_lines(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int) -> list[dict[str, Any]]:
    rows = []
    for stat in after.compare_to(before, "traceback")[:TOP]:
        if stat.size_diff <= 0:
            continue
        frames = [f"{_short(f.filename)}:{f.lineno}" for f in stat.traceback] or ["<no Python frame>"]
        rows.append({
            "bytes_per_conn": round(stat.size_diff / n, 1),
            "blocks_per_conn": round(stat.count_diff / n, 2),
            "where": frames[-1],
            "stack": " < ".join(reversed(frames)),
        })  # fmt: skip
    return rows


def _short(filename: str) -> str:
    """A path from its package on: ``edgeproxy/net/http_relay.py``, ``asyncio/events.py``."""
    if "/site-packages/" in filename:
        return filename.split("/site-packages/", 1)[1]
    if "/lib/python3." in filename:
        return filename.split("/lib/python3.", 1)[1].split("/", 1)[-1]
    return filename


# -- the run ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=sys.executable, help="the Python of the edgeproxy install to measure")
    p.add_argument("--connections", type=int, default=2000, help="idle client connections (default 2000)")
    p.add_argument("--frames", type=int, default=6, help="tracemalloc frames kept per allocation (default 6)")
    p.add_argument("--no-trace", action="store_true", help="skip the tracemalloc run")
    p.add_argument(
        "--trace-as-installed",
        action="store_true",
        help="trace the build as installed (default: the pure-Python modules, whose every line "
        "tracemalloc sees; compiled code runs without Python frames)",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--imports-only", action="store_true", help="only the idle process and its imports")
    return p


def build_description(python: str, cwd: Path) -> str:
    res = subprocess.run([python, "-c", "import edgeproxy.build as b; print(b.description)"],
                         capture_output=True, text=True, timeout=60, cwd=cwd)  # fmt: skip
    return res.stdout.strip() or res.stderr.strip().splitlines()[-1]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    nofile = machine.raise_nofile()
    _, _, load_cpus = machine.cpu_split()
    workdir = Path(tempfile.mkdtemp(prefix="edgeproxy-memory-"))
    result: dict[str, Any] = {"python": args.python, "build": build_description(args.python, workdir)}
    print(f"edgeproxy: {result['build']} ({args.python})", flush=True)
    nginx = Nginx(workdir, load_cpus, nofile)
    try:
        probe = start_probe(args.python, workdir, "plain", nginx.http_port, 0, nofile)
        try:
            idle = probe.mark()
            result["imports"] = imports_part(idle)
            print_imports(result["imports"])
            if not args.imports_only:
                result["connections"] = connections_part(probe, args.connections, load_cpus, traced=False)
        finally:
            probe.proc.stop()
        if not args.imports_only:
            if not args.no_trace:
                result["traced"] = traced_part(args, workdir, nginx.http_port, nofile, load_cpus)
            print_connections(result["connections"], result.get("traced"))
    finally:
        nginx.stop()
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def traced_part(args: argparse.Namespace, workdir: Path, backend_port: int, nofile: int, load_cpus: str | None) -> Any:
    pure = not args.trace_as_installed
    probe = start_probe(args.python, workdir, "traced", backend_port, args.frames, nofile, pure=pure)
    try:
        fig = connections_part(probe, args.connections, load_cpus, traced=True)
    finally:
        probe.proc.stop()
    fig["build"] = "pure Python" if pure else "as installed"
    return fig


def print_imports(fig: dict[str, Any]) -> None:
    print(f"\nidle process (plain HTTP listener): RSS {fig['idle_rss_kib'] / 1024:.1f} MiB, {fig['modules']} modules")
    print(f"  the interpreter before edgeproxy {fig['interpreter_kib'] / 1024:.1f} MiB, "
          f"the imports since {fig['imported_kib'] / 1024:.1f} MiB")  # fmt: skip
    print(f"\n  {'KiB':>7}  by package")
    for name, kib in list(fig["by_package"].items())[:TOP]:
        print(f"  {kib:7d}  {name}")
    print(f"\n  {'KiB':>7}  by the edgeproxy module that imports it first")
    for name, kib in list(fig["by_importer"].items())[:TOP]:
        print(f"  {kib:7d}  {name}")
    print("\n  how the heavier packages come in:")
    for chain in fig["chains"].values():
        print(f"    {chain}")
    print(f"\n  loaded though a plain HTTP config may not need them: {', '.join(sorted(set(fig['loaded']))) or 'none'}")


def print_connections(fig: dict[str, Any], traced: dict[str, Any] | None) -> None:
    print(f"\n{fig['established']} idle keep-alive connections: RSS {fig['base_rss_kib'] / 1024:.1f} -> "
          f"{fig['held_rss_kib'] / 1024:.1f} MiB ({fig['rss_kib_per_conn']:.2f} KiB/conn); after the idle "
          f"upstream pool swept {fig['swept_rss_kib'] / 1024:.1f} MiB "
          f"({fig['swept_rss_kib_per_conn']:.2f} KiB/conn)")  # fmt: skip
    print(f"\n  {'objects':>7} {'bytes':>6}  per connection, by type (objects the garbage collector tracks)")
    for name, (n, size) in list(fig["objects_per_conn"].items())[:TOP]:
        print(f"  {n:7.2f} {size:6.0f}  {name}")
    if traced is None:
        return
    print(f"\n  under tracemalloc ({traced['build']}): {traced['traced_kib_per_conn']:.2f} KiB/conn of live "
          f"Python allocations ({traced['held_traced_kib_per_conn']:.2f} before the pool swept)")  # fmt: skip
    print(f"  {'B/conn':>7} {'blocks':>6}  where (innermost frame < callers)")
    for row in traced["lines_per_conn"]:
        print(f"  {row['bytes_per_conn']:7.1f} {row['blocks_per_conn']:6.2f}  {row['stack']}")


if __name__ == "__main__":
    sys.exit(main())
