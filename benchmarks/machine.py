"""Prerequisites (named with the apt-get line that installs them) and the machine's description."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import socket
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# tool -> Debian package
TOOLS = {"haproxy": "haproxy", "wrk": "wrk", "nginx": "nginx-light", "taskset": "util-linux"}
APT_LINE = "apt-get install -y haproxy wrk nginx-light"


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def missing_message(missing: list[str]) -> str:
    pkgs = " ".join(dict.fromkeys(TOOLS[t] for t in missing))
    return f"missing: {', '.join(missing)}; install with: apt-get install -y {pkgs}  (all: {APT_LINE})"


def raise_nofile(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE for us and every process we start (10k idle connections need ~20k fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))  # root may raise hard
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_split() -> tuple[str | None, str | None, str | None]:
    """(proxy CPUs, proxy CPUs with 2 workers, load+backend CPUs) on this machine's allowed CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, None
    return str(cpus[1]), f"{cpus[0]},{cpus[1]}", str(cpus[0])


def _first_line(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except OSError as e:
        return f"unavailable ({e})"
    out = (p.stdout + p.stderr).strip().splitlines()
    return out[0] if out else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _meminfo_mib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _git(root: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            p = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except OSError:
            return ""
        return p.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}  # fmt: skip


def describe(root: Path) -> dict[str, Any]:
    import edgeproxy

    try:
        uv = version("uvloop")
    except PackageNotFoundError:
        uv = "not installed"
    return {
        "host": socket.gethostname(),
        "os": _os_name(),
        "kernel": platform.release(),
        "cpu_model": _cpu_model(),
        "cpus_online": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "memory_mib": _meminfo_mib(),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "uvloop": uv,
        "edgeproxy": edgeproxy.__version__,
        "git": _git(root),
        "haproxy": _first_line(["haproxy", "-v"]),
        "nginx": _first_line(["nginx", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
    }
