"""For the tests of privilege separation (``user:``): what they need, and a Python the dropped
workers can read.

A worker drops root first thing and then still imports modules lazily, so the interpreter and the
packages must be readable by ``user`` (edgeproxy checks it and refuses to start otherwise). Where
this test run's own Python is not (a pyenv under /root, mode 0700, as on the CI machines), the
edgeproxy under test runs on Debian's /usr/bin/python3 of the same version, with this
environment's site-packages on PYTHONPATH and the checkout as its working directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from edgeproxy.runtime.privileges import import_dirs
from tests import process_probe

NOBODY = 65534


def need_privsep() -> None:
    """Root and gdb; skip saying why elsewhere, fail under EDGEPROXY_SWARM_TESTS=require (.ci/run)."""
    reason = "privilege separation needs edgeproxy started as root" if os.geteuid() != 0 else None
    reason = reason or process_probe.available()
    if reason is not None:
        if os.environ.get("EDGEPROXY_SWARM_TESTS") == "require":
            pytest.fail(f"EDGEPROXY_SWARM_TESTS=require: {reason}")
        pytest.skip(reason)


@contextlib.contextmanager
def directory(mode: int) -> Iterator[Path]:
    """A new directory in /tmp with ``mode`` (pytest's tmp_path sits in root's 0700 directory,
    which a dropped process could not even enter), removed with what it holds."""
    d = Path(tempfile.mkdtemp(prefix="ep-privsep-", dir="/tmp"))
    d.chmod(mode)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _readable_by(uid: int, gid: int, dirs: list[str]) -> bool:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            for d in dirs:
                os.listdir(d)
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def python_for(uid: int = NOBODY, gid: int = NOBODY) -> tuple[str, dict[str, str]]:
    """(interpreter, extra environment) with which workers dropped to uid:gid can run."""
    import select

    import edgeproxy

    if _readable_by(uid, gid, import_dirs([os, select, edgeproxy, yaml])):
        return sys.executable, {}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/bin")
    site = [sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    if system is not None:
        probe = "import os, select; print(os.__file__); print(getattr(select, '__file__', os.__file__))"
        stdlib = subprocess.run([system, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
        if _readable_by(uid, gid, [os.path.dirname(p) for p in stdlib] + site):
            return system, {"PYTHONPATH": os.pathsep.join(dict.fromkeys(site))}
    pytest.fail(f"no Python that uid {uid} can read: neither {sys.executable} nor /usr/bin/{version}")
