"""What a running process itself may do: gdb attaches to it and makes *it* issue one system call
(connect to a unix socket, open a file for reading), then detaches; and its /proc status.

For the privilege-separation tests: "a worker cannot connect to the Docker socket" is asked of the
worker process, with its own credentials, not of a look-alike. gdb (Debian's ``gdb``) runs as
root here; the call interrupts the worker's event loop for a moment (epoll_wait restarts).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

# System call numbers, by machine: socket, connect, openat, close.
_SYSCALLS = {
    "x86_64": {"socket": 41, "connect": 42, "openat": 257, "close": 3},
    "aarch64": {"socket": 198, "connect": 203, "openat": 56, "close": 57},
}
_AT_FDCWD = -100


def available() -> str | None:
    """None, or why probing cannot work here."""
    if shutil.which("gdb") is None:
        return "gdb is not installed (apt-get install gdb)"
    if os.uname().machine not in _SYSCALLS:
        return f"no system call table for {os.uname().machine}"
    return None


def _run(pid: int, lines: list[str]) -> tuple[int, int]:
    """Run gdb commands in ``pid`` that end by printing ``RESULT <return value> <errno>``."""
    preamble = [
        "set $syscall = (long(*)(long, long, long, long))syscall",
        "set $errno = (int*(*)(void))__errno_location",
    ]
    cmd = ["gdb", "-nx", "-batch", "-p", str(pid)]
    for line in preamble + lines:
        cmd += ["-ex", line]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"^RESULT (-?\d+) (\d+)$", r.stdout, re.M)
    if m is None:
        raise RuntimeError(f"gdb in pid {pid} said:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return int(m.group(1)), int(m.group(2))


def _string(var: str, text: str, offset: int = 0) -> list[str]:
    """gdb commands that put ``text`` (NUL-terminated) at ``offset`` in a new buffer ``var``.
    Written by gdb itself: glibc's string functions are IFUNCs, which a cast call would not run."""
    data = text.encode()
    if b'"' in data or b"\\" in data or not data.isascii():
        raise ValueError(f"path not usable here: {text!r}")
    return [
        f"set ${var} = (char*)((void*(*)(long))malloc)({offset + len(data) + 1})",
        f'set var {{char[{len(data) + 1}]}}(${var} + {offset}) = "{text}"',
    ]


def _nr(name: str) -> int:
    return _SYSCALLS[os.uname().machine][name]


def connect_errno(pid: int, path: str) -> int:
    """Process ``pid`` connects a new AF_UNIX stream socket to ``path``: 0, or the errno."""
    rc, err = _run(
        pid,
        [
            *_string("sa", path, offset=2),
            "set var *(unsigned short*)$sa = 1",  # sun_family = AF_UNIX
            f"set $fd = $syscall({_nr('socket')}, 1, 1, 0)",  # AF_UNIX, SOCK_STREAM
            f"set $rc = $syscall({_nr('connect')}, $fd, (long)$sa, {2 + len(path.encode()) + 1}, 0)",
            "set $err = *$errno()",
            f"call $syscall({_nr('close')}, $fd, 0, 0, 0)",
            "call ((void(*)(void*))free)($sa)",
            'printf "RESULT %ld %d\\n", $rc, $err',
        ],
    )
    return 0 if rc == 0 else err


def open_errno(pid: int, path: str) -> int:
    """Process ``pid`` opens ``path`` read-only: 0, or the errno."""
    rc, err = _run(
        pid,
        [
            *_string("path", path),
            f"set $rc = $syscall({_nr('openat')}, {_AT_FDCWD}, (long)$path, 0, 0)",  # O_RDONLY
            "set $err = *$errno()",
            f"call $syscall({_nr('close')}, $rc, 0, 0, 0)",  # nothing to close (EBADF) when it failed
            "call ((void(*)(void*))free)($path)",
            'printf "RESULT %ld %d\\n", $rc, $err',
        ],
    )
    return 0 if rc >= 0 else err


def status(pid: int) -> dict[str, list[str]]:
    """/proc/PID/status, each field split on whitespace."""
    with open(f"/proc/{pid}/status") as f:
        return {k: v.split() for k, _, v in (line.partition(":") for line in f.read().splitlines())}


CREDENTIALS = ("Uid", "Gid", "Groups", "NoNewPrivs", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def credentials(pid: int) -> dict[str, list[str]]:
    """The credential lines of /proc/PID/status."""
    st = status(pid)
    return {k: st[k] for k in CREDENTIALS}


def dropped(uid: int, gid: int) -> dict[str, list[str]]:
    """What ``credentials`` shows for a process that became uid:gid with nothing else."""
    zero = ["0000000000000000"]
    return {"Uid": [str(uid)] * 4, "Gid": [str(gid)] * 4, "Groups": [], "NoNewPrivs": ["1"],
            **{k: zero for k in CREDENTIALS if k.startswith("Cap")}}  # fmt: skip
