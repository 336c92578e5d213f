"""``python -m fuzz [--seconds N] [--jobs J] [NAME ...]``: run the harnesses under atheris, each for
N seconds, J at a time (default: one per CPU, so CI's fuzzing costs its time once per core).

Each harness runs in its own process (libFuzzer owns the process and exits on a crash). New inputs
go to a scratch directory, the committed seeds in ``fuzz/corpus/<name>/`` are read only, and a
crashing input is written to ``fuzz/crashes/<name>-*`` and the run exits 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent


def harnesses() -> list[str]:
    return sorted(p.stem.removeprefix("harness_") for p in HERE.glob("harness_*.py"))


def run_one(name: str, seconds: int) -> int:
    seeds = HERE / "corpus" / name
    seeds.mkdir(parents=True, exist_ok=True)
    crashes = HERE / "crashes"
    crashes.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as scratch:
        cmd = [
            sys.executable,
            "-m",
            f"fuzz.harness_{name}",
            f"-max_total_time={seconds}",
            f"-artifact_prefix={crashes}/{name}-",
            "-rss_limit_mb=2048",
            "-timeout=10",
            scratch,
            str(seeds),
        ]
        # atheris instruments Python bytecode: the mypyc-compiled build would give it no coverage
        # of the parsers, so the harnesses run their sources (edgeproxy/build.py).
        env = dict(os.environ, EDGEPROXY_PURE_PYTHON="1")
        proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True, env=env)
        stats = [ln for ln in proc.stderr.splitlines() if ln.startswith(("Done", "#")) and "DONE" in ln]
        if proc.returncode != 0:
            print(proc.stderr[-6000:], file=sys.stderr)
            print(f"== fuzz {name}: FAILED (exit {proc.returncode}); crash inputs in {crashes}", flush=True)
        else:
            print(f"== fuzz {name}: ok after {seconds} s {stats[-1] if stats else ''}", flush=True)
        return proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    ap.add_argument("--seconds", type=int, default=30, help="time per harness (default 30)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="harnesses run at once (default: CPUs)")
    ap.add_argument("names", nargs="*", help=f"harnesses to run (default all: {', '.join(harnesses())})")
    args = ap.parse_args()
    names = args.names or harnesses()
    unknown = sorted(set(names) - set(harnesses()))
    if unknown:
        ap.error(f"unknown harness {', '.join(unknown)}")
    # Threads only wait on the harness processes; libFuzzer owns each process, so they never share.
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        codes = list(pool.map(lambda n: run_one(n, args.seconds), names))
    failed = [n for n, code in zip(names, codes, strict=True) if code != 0]
    if failed:
        print(f"fuzz: {len(failed)} harness(es) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
