"""Dropping root for the data plane, as nginx does: the supervisor keeps root (it binds ports
below 1024, owns the Docker socket and the manager's TLS keys); a worker, once it holds its
listening sockets, becomes ``user`` for good.

``user: NAME|UID[:GROUP]`` resolves to a uid and a gid when the config is loaded
(config/user.py); :func:`drop` then leaves no way back: no supplementary groups (root's would
otherwise stay, e.g. ``docker``), the
gid and uid set for real, effective and saved ids, every capability gone (bounding and ambient
sets too, so nothing can be regained through an executable with file capabilities), and
``PR_SET_NO_NEW_PRIVS`` (no setuid executable raises it either). It checks the result in
/proc/self/status and raises :class:`PrivilegeError` rather than run half-dropped.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from edgeproxy.config import User

_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}

_libc = ctypes.CDLL(None, use_errno=True)


class PrivilegeError(Exception):
    """The process could not become the configured user."""


def _prctl(option: int, arg: int, what: str) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"{what}: {os.strerror(err)}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _clear_capability_sets() -> None:
    """capset(2) with nothing in the effective, permitted and inheritable sets (setuid clears
    the first two, not the inheritable one)."""
    number = _SYS_CAPSET.get(os.uname().machine)
    if number is None:
        raise PrivilegeError(f"capset: unknown system call number on {os.uname().machine}")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.syscall(number, ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"capset: {os.strerror(err)}")


def _last_capability() -> int:
    return int(Path("/proc/sys/kernel/cap_last_cap").read_text())


def drop(user: User) -> None:
    """Become ``user`` irreversibly (the calling process, all its threads: call it before
    starting any). Needs root; raises :class:`PrivilegeError` if any step fails."""
    if os.geteuid() != 0:
        raise PrivilegeError(f"cannot become {user}: not running as root")
    # The uid and gid calls reach every thread (glibc), but capabilities and no_new_privs are
    # per thread: another thread would keep root's.
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise PrivilegeError(f"cannot become {user}: {threads} threads run (drop privileges before starting any)")
    try:
        for cap in range(_last_capability() + 1):
            _prctl(_PR_CAPBSET_DROP, cap, f"dropping capability {cap} from the bounding set")
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "clearing the ambient capabilities")
        os.setgroups([])
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)  # the kernel clears permitted and effective
        _clear_capability_sets()
        _prctl(_PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    except OSError as e:
        raise PrivilegeError(f"cannot become {user}: {e}") from None
    _verify(user)


def _verify(user: User) -> None:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    want = {
        "Uid": " ".join([str(user.uid)] * 4),
        "Gid": " ".join([str(user.gid)] * 4),
        "Groups": "",
        "NoNewPrivs": "1",
        **{f"Cap{kind}": "0" * 16 for kind in ("Inh", "Prm", "Eff", "Bnd", "Amb")},
    }
    wrong = {
        key: status.get(key, "").split() for key, value in want.items() if status.get(key, "").split() != value.split()
    }
    if wrong:
        raise PrivilegeError(f"became {user} only in part: {wrong}")


def import_dirs(modules: Iterable[ModuleType]) -> list[str]:
    """The directories these modules were imported from (a package's parent): computed before
    :func:`drop`, while everything is readable, for :func:`check_readable` after it."""
    dirs = set()
    for m in modules:
        path = getattr(m, "__file__", None)
        if path:
            d = os.path.dirname(path)
            dirs.add(os.path.dirname(d) if os.path.basename(path) == "__init__.py" else d)
    return sorted(dirs)


def check_readable(user: User, dirs: Iterable[str]) -> None:
    """After :func:`drop`: Python imports modules lazily (a codec the first time a file is decoded,
    say), so the dropped process must still read the standard library and the packages it runs.
    Say so at once, naming the directory, rather than fail later with an odd import error (a
    Python installed under /root, mode 0700, is the usual cause)."""
    for d in dirs:
        try:
            os.listdir(d)
        except OSError as e:
            raise PrivilegeError(
                f"as {user}, cannot read {d} ({e.strerror}): "
                "install edgeproxy and its Python where the user can read them"
            ) from None
