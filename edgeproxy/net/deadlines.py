"""Coarse deadlines for many connections, without an event-loop timer for each.

An HTTP connection has one deadline at a time (net/http_relay.py: the limit of the state it is
in). With ``loop.call_at`` per connection, every idle keep-alive connection holds a TimerHandle, a
libuv timer, a copy of the context and a bound method: ~600 bytes of its ~4 KiB (issue 15). Here
a deadline is a member of the set of its time slot (``RESOLUTION`` wide), and each slot that has
members has one loop timer (cancelled when its last member leaves): a connection costs a set
entry, and arming or moving a deadline is a set operation rather than a timer allocation.

A deadline fires up to ``RESOLUTION`` late (never early: its slot ends after it), which the
callback sees as the loop's time and is free to re-arm from (http_relay's ``_on_timer`` checks
the real deadline of the state it is in).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

RESOLUTION = 0.05  # seconds: how late a deadline may fire


def slot_time(slot: int) -> float:
    """When the loop timer of ``slot`` fires: the end of the slot."""
    return slot * RESOLUTION


class Expiring(Protocol):
    def on_deadline(self) -> None: ...


class Deadlines:
    """The deadlines of one event loop's connections (one per listener context)."""

    __slots__ = ("loop", "slots", "timers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slots: dict[int, set[Expiring]] = {}  # slot number -> who is due in it
        self.timers: dict[int, asyncio.TimerHandle] = {}  # slot number -> its loop timer

    def add(self, who: Expiring, when: float) -> int:
        """``who.on_deadline()`` at ``when`` (or up to RESOLUTION later); returns the slot, to
        ``discard`` it with (a slot number is never 0)."""
        slot = int(when / RESOLUTION) + 1
        members = self.slots.get(slot)
        if members is None:
            members = self.slots[slot] = set()
            self.timers[slot] = self.loop.call_at(slot_time(slot), self._fire, slot)
        members.add(who)
        return slot

    def discard(self, who: Expiring, slot: int) -> None:
        members = self.slots.get(slot)
        if members is not None:
            members.discard(who)
            if not members:
                del self.slots[slot]
                self.timers.pop(slot).cancel()

    def _fire(self, slot: int) -> None:
        del self.timers[slot]
        members = self.slots.pop(slot)
        for who in members:
            try:
                who.on_deadline()
            except Exception as e:  # one connection's failure must not cost the others their deadline
                self.loop.call_exception_handler(
                    {"message": "deadline callback failed", "exception": e, "protocol": who}
                )

    def __len__(self) -> int:
        return sum(len(m) for m in self.slots.values())
