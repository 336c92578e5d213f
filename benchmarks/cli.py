"""``python -m benchmarks [--quick] [--scenarios 1 3 ...]``: run, print the table, save JSON + chart."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import machine, report
from benchmarks.backend import Nginx
from benchmarks.runner import IDLE_MARGIN, Options, idle_count, max_connections, run_scenario
from benchmarks.scenarios import SCENARIOS, select

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    names = ", ".join(f"{s.key}={s.name}" for s in SCENARIOS)
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="edgeproxy vs HAProxy on this machine.")
    p.add_argument("--quick", action="store_true", help="every scenario for ~2 s, one round (proves the harness)")
    p.add_argument("--scenarios", nargs="+", metavar="S", help=f"numbers or names (default all): {names}")
    p.add_argument("--rounds", type=int, help="rounds per proxy, alternating A B A B (default 3; --quick 1)")
    p.add_argument("--seconds", type=float, help="seconds per measured run (default 10; --quick 2)")
    p.add_argument("--idle-count", type=int, help="connections of scenario 5 (default 10000; --quick 1000)")
    p.add_argument("--output", type=Path, default=RESULTS, help=f"where results go (default {RESULTS})")
    p.add_argument(
        "--edgeproxy",
        metavar="CMD",
        default="",
        help="command that runs edgeproxy (default: this Python's -m edgeproxy), e.g. "
        "'env PYTHONPATH=/src/edgeproxy python3 -m edgeproxy' to measure another tree",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir with the generated configs and logs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        scenarios = select(args.scenarios)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = machine.missing_tools()
    if missing:
        print(f"error: {machine.missing_message(missing)}", file=sys.stderr)
        return 2
    nofile = machine.raise_nofile()
    proxy_cpus, multi_cpus, load_cpus = machine.cpu_split()
    if proxy_cpus is None:
        print("warning: fewer than 2 CPUs allowed: nothing is pinned, figures mix proxy and load", file=sys.stderr)
    else:
        # The harness itself (its /proc sampling, its polling) stays off the proxies' CPU too.
        os.sched_setaffinity(0, {int(c) for c in str(load_cpus).split(",")})
    workdir = Path(tempfile.mkdtemp(prefix="edgeproxy-bench-"))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    opts = Options(
        seconds=args.seconds or (2.0 if args.quick else 10.0),
        warmup=0.0 if args.quick else 2.0,
        rounds=args.rounds or (1 if args.quick else 3),
        idle_count=args.idle_count or (1000 if args.quick else None),
        max_conns=max_connections(nofile),
        idle_hold=1.0 if args.quick else 3.0,
        proxy_cpus=proxy_cpus,
        multi_cpus=multi_cpus,
        load_cpus=load_cpus,
        workdir=workdir,
        commands={"edgeproxy": shlex.split(args.edgeproxy)} if args.edgeproxy else {},
        log=log,
    )
    started = time.time()
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "machine": machine.describe(ROOT),
        "options": {
            "quick": args.quick,
            "seconds": opts.seconds,
            "warmup": opts.warmup,
            "rounds": opts.rounds,
            "idle_count": min(opts.idle_count or 10_000, opts.max_conns - IDLE_MARGIN),
            "max_conns": opts.max_conns,
            "proxy_cpus": proxy_cpus,
            "two_worker_cpus": multi_cpus,
            "load_cpus": load_cpus,
            "rlimit_nofile": nofile,
            "edgeproxy_command": args.edgeproxy or None,
        },
        "scenarios": [],
    }
    nginx = None
    # SIGTERM (a CI timeout, kill) ends the run like Ctrl-C: every process we started is stopped
    # (they run in their own sessions, so nothing else would stop them) and the table is printed.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        nginx = Nginx(workdir, load_cpus, nofile)
        for sc in scenarios:
            log(f"scenario {sc.key} {sc.name}: {sc.title}")
            outcomes = run_scenario(sc, nginx, opts)
            result["scenarios"].append(
                {
                    "key": sc.key,
                    "name": sc.name,
                    "title": sc.title,
                    "kind": sc.kind,
                    "mode": sc.mode,
                    "workers": sc.workers,
                    "connections": sc.connections if sc.kind == "wrk" else idle_count(sc, opts),
                    "path": sc.path,
                    "headers": sc.headers,
                    "send_proxy": sc.send_proxy,
                    "reload_every": sc.reload_every,
                    "proxies": {name: out.as_json() for name, out in outcomes.items()},
                }
            )
    except KeyboardInterrupt:
        log("interrupted: reporting what was measured")
    finally:
        if nginx is not None:
            nginx.stop()
        if args.keep:
            log(f"configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["elapsed_s"] = round(time.time() - started, 1)
    report.finish(result["scenarios"])
    table = report.markdown(result)
    print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    stem = _stem(args.output, time.strftime("%Y-%m-%d", time.localtime(started)), result["machine"]["host"])
    report.write_json(result, args.output / f"{stem}.json")
    (args.output / f"{stem}.md").write_text(table)
    why_not = report.chart(result, args.output / f"{stem}.png")
    if why_not:
        log(f"no chart: {why_not}")
    log(f"results: {args.output / stem}.json .md{'' if why_not else ' .png'} ({result['elapsed_s']} s)")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stem(out: Path, date: str, host: str) -> str:
    """``<date>-<host>``, with -2, -3... for a second run the same day."""
    stem, n = f"{date}-{host}", 1
    while (out / f"{stem}.json").exists():
        n += 1
        stem = f"{date}-{host}-{n}"
    return stem
