"""Dropping root for the data plane, as nginx does: the supervisor keeps root (it binds ports
below 1024, owns the Docker socket and the manager's TLS keys); a worker, once it holds its
listening sockets, becomes ``user`` for good.

``user: NAME|UID[:GROUP]`` resolves to a uid and a gid (:func:`resolve`); :func:`drop` then
leaves no way back: no supplementary groups (root's would otherwise stay, e.g. ``docker``), the
gid and uid set for real, effective and saved ids, every capability gone (bounding and ambient
sets too, so nothing can be regained through an executable with file capabilities), and
``PR_SET_NO_NEW_PRIVS`` (no setuid executable raises it either). It checks the result in
/proc/self/status and raises :class:`PrivilegeError` rather than run half-dropped.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}

_libc = ctypes.CDLL(None, use_errno=True)


class PrivilegeError(Exception):
    """The user cannot be resolved, or the process could not become it."""


@dataclass(frozen=True, slots=True)
class RunAs:
    """Who the data plane runs as."""

    uid: int
    gid: int
    spec: str  # as configured, for logs and errors

    def __str__(self) -> str:
        return f"{self.spec} (uid {self.uid}, gid {self.gid})"


def resolve(spec: str) -> RunAs:
    """``NAME``, ``UID``, ``NAME:GROUP`` or ``UID:GID`` -> :class:`RunAs`, looked up in this
    system's user and group databases (in a container: the image's /etc/passwd and /etc/group).

    A user without a group takes its primary group. A bare uid with no passwd entry has no
    primary group: that is an error (Docker would run it with gid 0), unless a group is given.
    Root, uid or gid 0, is refused: the point is to be someone else.
    """
    user, sep, group = spec.partition(":")
    if not user or (sep and not group):
        raise PrivilegeError(f"invalid user {spec!r}: write NAME, UID, NAME:GROUP or UID:GID")
    entry: pwd.struct_passwd | None
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise PrivilegeError(f"unknown user {user!r} (no such entry in the user database)") from None
        entry = None
    uid = entry.pw_uid if entry is not None else int(user)
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"unknown group {group!r} (no such entry in the group database)") from None
    elif entry is not None:
        gid = entry.pw_gid
    else:
        raise PrivilegeError(f"uid {uid} has no entry in the user database: give its group too ({uid}:GID)")
    if uid == 0 or gid == 0:
        raise PrivilegeError(f"user {spec!r} is root (uid {uid}, gid {gid}): name an unprivileged user")
    return RunAs(uid, gid, spec)


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


def drop(run_as: RunAs) -> None:
    """Become ``run_as`` irreversibly (the calling process, all its threads: call it before
    starting any). Needs root; raises :class:`PrivilegeError` if any step fails."""
    if os.geteuid() != 0:
        raise PrivilegeError(f"cannot become {run_as}: not running as root")
    # The uid and gid calls reach every thread (glibc), but capabilities and no_new_privs are
    # per thread: another thread would keep root's.
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise PrivilegeError(f"cannot become {run_as}: {threads} threads run (drop privileges before starting any)")
    try:
        for cap in range(_last_capability() + 1):
            _prctl(_PR_CAPBSET_DROP, cap, f"dropping capability {cap} from the bounding set")
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "clearing the ambient capabilities")
        os.setgroups([])
        os.setresgid(run_as.gid, run_as.gid, run_as.gid)
        os.setresuid(run_as.uid, run_as.uid, run_as.uid)  # the kernel clears permitted and effective
        _clear_capability_sets()
        _prctl(_PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    except OSError as e:
        raise PrivilegeError(f"cannot become {run_as}: {e}") from None
    _verify(run_as)


def _verify(run_as: RunAs) -> None:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    want = {
        "Uid": " ".join([str(run_as.uid)] * 4),
        "Gid": " ".join([str(run_as.gid)] * 4),
        "Groups": "",
        "NoNewPrivs": "1",
        **{f"Cap{kind}": "0" * 16 for kind in ("Inh", "Prm", "Eff", "Bnd", "Amb")},
    }
    wrong = {
        key: status.get(key, "").split() for key, value in want.items() if status.get(key, "").split() != value.split()
    }
    if wrong:
        raise PrivilegeError(f"became {run_as} only in part: {wrong}")
