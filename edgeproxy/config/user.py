"""``user: NAME|UID[:GROUP]``: who the data plane runs as (runtime/privileges.py drops to it).

Resolved when the file is loaded, in this system's user and group databases (in a container, the
image's /etc/passwd and /etc/group), so ``edgeproxy check`` rejects a user that does not exist
where it runs, as ``nginx -t`` does.
"""

from __future__ import annotations

import grp
import pwd
import re
from dataclasses import dataclass

_DIGITS = re.compile(r"[0-9]+")
_NO_ID = 2**32 - 1  # (uid_t) -1 means "no change" to setresuid: not an id


@dataclass(frozen=True, slots=True)
class User:
    uid: int
    gid: int
    spec: str  # as written, for logs and errors

    def __str__(self) -> str:
        return f"{self.spec} (uid {self.uid}, gid {self.gid})"


def _number(text: str, spec: str) -> int | None:
    if not _DIGITS.fullmatch(text):
        return None
    if int(text) >= _NO_ID:
        raise ValueError(f"invalid user {spec!r}: ids go up to {_NO_ID - 1}")
    return int(text)


def parse_user(spec: str) -> User:
    """``NAME``, ``UID``, ``NAME:GROUP`` or ``UID:GID`` -> :class:`User`; ``ValueError`` says why not.

    A user without a group takes its primary group. A bare uid with no passwd entry has no
    primary group: that is an error (Docker would run it with gid 0), unless a group is given.
    Root (uid or gid 0) is refused: the point is to be someone else.
    """
    spec = spec.strip()
    user, sep, group = spec.partition(":")
    if not user or (sep and not group) or not spec.isprintable():
        raise ValueError(f"invalid user {spec!r}: write NAME, UID, NAME:GROUP or UID:GID")
    uid, gid = _number(user, spec), _number(group, spec)
    entry: pwd.struct_passwd | None = None
    try:
        entry = pwd.getpwuid(uid) if uid is not None else pwd.getpwnam(user)
    except KeyError:
        if uid is None:
            raise ValueError(f"unknown user {user!r}: no such entry in this system's user database") from None
    if entry is not None:
        uid = entry.pw_uid
    assert uid is not None
    if group and gid is None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"unknown group {group!r}: no such entry in this system's group database") from None
    elif not group:
        if entry is None:
            raise ValueError(f"uid {uid} has no entry in this system's user database: give its group too ({uid}:GID)")
        gid = entry.pw_gid
    assert gid is not None
    if uid == 0 or gid == 0:
        raise ValueError(f"user {spec!r} is root (uid {uid}, gid {gid}): name an unprivileged user")
    return User(uid, gid, spec)
