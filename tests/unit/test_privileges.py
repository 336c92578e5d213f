"""``user:`` (config/user.py) resolves against the real user database, and a child forked as
root that drops to it (runtime/privileges.py) holds no way back: its /proc status, then what it
can no longer open, connect to, bind or regain. (The drop needs root; skipped otherwise.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.config import User, parse_user
from edgeproxy.runtime.privileges import check_readable, drop, import_dirs
from tests.privsep import directory

NOBODY = 65534  # nobody / nogroup on Debian


@pytest.mark.parametrize(
    ("spec", "uid", "gid"),
    [("nobody", NOBODY, NOBODY), ("nobody:nogroup", NOBODY, NOBODY), (str(NOBODY), NOBODY, NOBODY),
     ("nobody:100", NOBODY, 100), ("12345:12345", 12345, 12345), ("12345:nogroup", 12345, NOBODY)],
)  # fmt: skip
def test_parse_user(spec: str, uid: int, gid: int) -> None:
    assert parse_user(spec) == User(uid, gid, spec)


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("no-such-user", "unknown user 'no-such-user'"),
        ("nobody:no-such-group", "unknown group 'no-such-group'"),
        ("12345", "uid 12345 has no entry in this system's user database: give its group too (12345:GID)"),
        ("4294967295:1", "ids go up to 4294967294"),
        ("a\x00b", "invalid user"),
        ("root", "is root"),
        ("0:100", "is root"),
        ("nobody:0", "is root"),
        ("nobody:root", "is root"),
        ("", "invalid user"),
        ("nobody:", "invalid user"),
        (":nogroup", "invalid user"),
    ],
)
def test_parse_user_refuses(spec: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_user(spec)


def in_child(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``probe`` in a forked child (one thread, whatever runs in this one) and return its
    JSON-able result or the exception it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read)
        try:
            out: dict[str, Any] = probe()
        except BaseException as e:
            out = {"error": f"{type(e).__name__}: {e}"}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))


def attempt(action: Callable[[], object]) -> str:
    try:
        action()
    except OSError as e:
        return f"{type(e).__name__} {e.errno}"
    except subprocess.CalledProcessError:
        return "CalledProcessError"
    return "ok"


@pytest.fixture
def root_only() -> Iterator[Path]:
    """A directory anyone may enter, holding what only root (or the docker group) may use."""
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    with directory(0o755) as d:
        yield d


def test_a_dropped_child_has_the_user_no_capabilities_and_no_way_back(root_only: Path) -> None:
    key = root_only / "key.pem"
    key.write_text("secret\n")
    key.chmod(0o600)
    public = root_only / "public.txt"
    public.write_text("hello\n")
    public.chmod(0o644)
    # Like /var/run/docker.sock: root:docker 0660.
    sock_path = str(root_only / "docker.sock")
    engine = socket.socket(socket.AF_UNIX)
    engine.bind(sock_path)
    engine.listen()
    os.chmod(sock_path, 0o660)
    # A copy of cat with the file capability to read anything: exec must not grant it.
    cat = root_only / "cat"
    shutil.copy("/bin/cat", cat)
    has_setcap = shutil.which("setcap") is not None
    if has_setcap:
        subprocess.run(["setcap", "cap_dac_read_search+ep", str(cat)], check=True)
    os.setgroups([*os.getgroups(), 4242])  # a supplementary group root had: must not survive

    def probe() -> dict[str, Any]:
        drop(User(NOBODY, NOBODY, "nobody"))
        status = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines())

        def connect() -> None:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sock_path)

        def bind_80() -> None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 80))

        return {
            "status": {k: status[k].split() for k in ("Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapInh",
                                                      "CapBnd", "CapAmb", "NoNewPrivs")},
            "read key": attempt(key.read_text),
            "read public": attempt(public.read_text),
            "connect socket": attempt(connect),
            "bind 80": attempt(bind_80),
            "setuid 0": attempt(lambda: os.setuid(0)),
            "setgid 0": attempt(lambda: os.setgid(0)),
            "exec cat with cap_dac_read_search": attempt(
                lambda: subprocess.run([str(cat), str(key)], capture_output=True, check=True)
            ),
        }  # fmt: skip

    try:
        seen = in_child(probe)
    finally:
        engine.close()
        os.setgroups([g for g in os.getgroups() if g != 4242])
    assert "error" not in seen, seen
    zero = ["0000000000000000"]
    assert seen["status"] == {
        "Uid": [str(NOBODY)] * 4, "Gid": [str(NOBODY)] * 4, "Groups": [],
        "CapEff": zero, "CapPrm": zero, "CapInh": zero, "CapBnd": zero, "CapAmb": zero, "NoNewPrivs": ["1"],
    }  # fmt: skip
    assert seen["read key"] == "PermissionError 13"
    assert seen["read public"] == "ok"
    assert seen["connect socket"] == "PermissionError 13"  # EACCES, as from a worker to the engine
    assert seen["bind 80"] == "PermissionError 13"
    assert seen["setuid 0"] == "PermissionError 1"
    assert seen["setgid 0"] == "PermissionError 1"
    # The kernel refuses to run a file whose capabilities the bounding set no longer has (EPERM);
    # without the capability, cat would be denied the key (exit 1).
    assert seen["exec cat with cap_dac_read_search"] in ("PermissionError 1", "CalledProcessError"), seen
    if not has_setcap:
        pytest.skip("setcap missing (libcap2-bin): the file-capability case was only a plain copy")


def test_drop_refuses_without_root_or_with_threads(root_only: Path) -> None:
    def not_root() -> dict[str, Any]:
        os.setresuid(NOBODY, NOBODY, NOBODY)
        drop(User(NOBODY, NOBODY, "nobody"))
        return {}

    assert in_child(not_root) == {
        "error": "PrivilegeError: cannot become nobody (uid 65534, gid 65534): not running as root"
    }

    def threaded() -> dict[str, Any]:
        import threading

        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
        drop(User(NOBODY, NOBODY, "nobody"))
        return {}

    assert "2 threads run" in in_child(threaded)["error"]


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_parse_user_is_total(spec: str) -> None:
    """Any text is a user or a ValueError saying why not (the loader turns it into an issue)."""
    try:
        user = parse_user(spec)
    except ValueError:
        return
    assert 0 < user.uid < 2**32 - 1 and 0 < user.gid < 2**32 - 1


def test_a_dropped_child_that_cannot_read_its_python_says_so(root_only: Path) -> None:
    private = root_only / "private"
    private.mkdir(mode=0o700)

    def probe() -> dict[str, Any]:
        user = User(NOBODY, NOBODY, "nobody")
        dirs = import_dirs([json])  # a package: its parent directory
        drop(user)
        check_readable(user, [str(root_only)])  # 0755: fine
        check_readable(user, [str(private), *dirs])
        return {}

    assert import_dirs([json, os]) == sorted(
        {os.path.dirname(os.path.dirname(json.__file__)), os.path.dirname(os.__file__)}
    )
    assert in_child(probe) == {
        "error": f"PrivilegeError: as nobody (uid 65534, gid 65534), cannot read {private} (Permission denied): "
        "install edgeproxy and its Python where the user can read them"
    }
