"""Coarse deadlines for many connections, without an event-loop timer for each.

An HTTP connection has one deadline at a time (net/http_relay.py: the limit of the state it is
in). With ``loop.call_at`` per connection, every idle keep-alive connection holds a TimerHandle, a
libuv timer, a copy of the context and a bound method: ~600 bytes of its ~4 KiB (issue 15). Here
a deadline is a member of the set of its time slot (``RESOLUTION`` wide), and each slot that has
members has one loop timer (cancelled when its last member leaves): a connection costs a set
entry, and arming or moving a deadline is a set operation rather than a timer allocation. (The
sets are dicts: at these sizes a dict's entry is about half a set's, ~25 bytes a connection.)

A deadline fires up to ``RESOLUTION`` late (never early: its slot ends after it), which the
callback sees as the loop's time and is free to re-arm from (http_relay's ``on_deadline`` checks
the real deadline of the state it is in).
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

RESOLUTION: Final = 0.05  # seconds: how late a deadline may fire


class Expiring(Protocol):
    def on_deadline(self) -> None: ...


class Slot:
    """The deadlines due in one time slot: what a connection holds while it waits (shared: a
    connection costs its entry in ``members``, no object of its own)."""

    __slots__ = ("handle", "members", "number")

    def __init__(self, number: int, handle: asyncio.TimerHandle) -> None:
        self.number = number
        self.handle = handle  # the loop timer that fires the slot
        self.members: dict[Expiring, None] = {}  # (a set, see the module's docstring)

    @property
    def when(self) -> float:
        """When the slot fires: its end."""
        return self.number * RESOLUTION


class Deadlines:
    """The deadlines of one event loop's connections (one per listener context)."""

    __slots__ = ("loop", "slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slots: dict[int, Slot] = {}  # by number

    def add(self, who: Expiring, when: float) -> Slot:
        """``who.on_deadline()`` at ``when`` (or up to RESOLUTION later); returns the slot, to
        ``discard`` it with."""
        number = int(when / RESOLUTION) + 1
        slot = self.slots.get(number)
        if slot is None:
            handle = self.loop.call_at(number * RESOLUTION, self._fire, number)
            slot = self.slots[number] = Slot(number, handle)
        slot.members[who] = None
        return slot

    def discard(self, who: Expiring, slot: Slot) -> None:
        members = slot.members
        members.pop(who, None)
        if not members and self.slots.get(slot.number) is slot:
            del self.slots[slot.number]
            slot.handle.cancel()

    def _fire(self, number: int) -> None:
        slot = self.slots.pop(number)
        members = slot.members
        for who in list(members):
            if who not in members:
                continue  # discarded by an earlier callback (a connection closed by another)
            try:
                who.on_deadline()
            except Exception as e:  # one connection's failure must not cost the others their deadline
                self.loop.call_exception_handler(
                    {"message": "deadline callback failed", "exception": e, "protocol": who}
                )

    def __len__(self) -> int:
        return sum(len(s.members) for s in self.slots.values())
