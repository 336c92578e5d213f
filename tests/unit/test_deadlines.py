"""net/deadlines.py: many connections' deadlines on one loop timer per time slot."""

from __future__ import annotations

from typing import Any, cast

import pytest

from edgeproxy.net.deadlines import RESOLUTION, Deadlines
from tests.unit.fakes import FakeLoop


class Conn:
    def __init__(self, loop: FakeLoop, fired: list[tuple[str, float]], name: str, fail: bool = False) -> None:
        self.loop, self.fired, self.name, self.fail = loop, fired, name, fail

    def on_deadline(self) -> None:
        self.fired.append((self.name, self.loop.now))
        if self.fail:
            raise RuntimeError("boom")


def deadlines() -> tuple[FakeLoop, Deadlines, list[tuple[str, float]]]:
    loop = FakeLoop()
    loop_any: Any = loop
    return loop, Deadlines(loop_any), []


def test_a_deadline_fires_never_early_and_at_most_resolution_late() -> None:
    loop, d, fired = deadlines()
    for i, delay in enumerate([0.01, 1.0, 1.02, 7.3]):
        d.add(Conn(loop, fired, f"c{i}"), loop.now + delay)
    assert len(loop.armed()) == 3  # c1 and c2 share a slot
    loop.advance(10)
    # (the members of one slot fire in no particular order)
    assert sorted(name for name, _ in fired) == ["c0", "c1", "c2", "c3"]
    for name, at in fired:
        delay = [0.01, 1.0, 1.02, 7.3][int(name[1])]
        assert 50_000 + delay <= at <= 50_000 + delay + RESOLUTION
    assert len(d) == 0 and loop.armed() == []


def test_moving_a_deadline_leaves_no_timer_behind() -> None:
    loop, d, fired = deadlines()
    c = Conn(loop, fired, "c")
    slot = d.add(c, loop.now + 60)
    d.discard(c, slot)
    slot = d.add(c, loop.now + 10)
    assert loop.armed() == [pytest.approx(50_010 + RESOLUTION)]  # the 60 s slot's timer was cancelled
    d.discard(c, slot)
    assert loop.armed() == [] and len(d) == 0
    loop.advance(100)
    assert fired == []


def test_one_failing_callback_does_not_cost_the_others_their_deadline() -> None:
    loop, d, fired = deadlines()
    reported: list[dict[str, Any]] = []
    loop_any: Any = loop
    loop_any.call_exception_handler = reported.append
    for name in ("a", "b", "c"):
        d.add(Conn(loop, fired, name, fail=name == "b"), loop.now + 1)
    loop.advance(2)
    assert sorted(name for name, _ in fired) == ["a", "b", "c"]
    assert [str(r["exception"]) for r in reported] == ["boom"]


def test_a_callback_that_ends_another_member_of_its_slot_is_not_called_for_it() -> None:
    loop, d, fired = deadlines()
    a, b = Conn(loop, fired, "a"), Conn(loop, fired, "b")
    slot_a = d.add(a, loop.now + 1)
    slot_b = d.add(b, loop.now + 1)
    assert slot_a is slot_b
    first, second = cast(list[Conn], list(slot_a.members))

    def end_the_other() -> None:
        fired.append((first.name, loop.now))
        d.discard(second, slot_a)

    first.on_deadline = end_the_other  # type: ignore[method-assign]
    loop.advance(2)
    assert [name for name, _ in fired] == [first.name]
