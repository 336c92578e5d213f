"""Shared entry point of the harnesses: ``run(test_one_input)`` under atheris with coverage of
edgeproxy's own modules."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator

# PyYAML too: the config harness steers by the YAML parser's branches (libyaml, in C, is not seen).
OURS = ("edgeproxy", "fuzz", "yaml")


def run(test_one_input: Callable[[bytes], None]) -> None:
    import atheris

    # Only our own functions (and PyYAML's) get coverage feedback: atheris.instrument_all() also
    # rewrote the ~3300 functions of the standard library and dependencies loaded by then, which
    # took ~40 s of each harness's time in CI before the first input (ours: ~2 s).
    for func in _our_functions():
        atheris.instrument_func(func)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def _our_functions() -> Iterator[types.FunctionType]:
    """Every function and method defined in a module of ``OURS`` loaded now; nested functions are
    instrumented with the code that holds them."""
    seen: set[int] = set()
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(OURS):
            continue
        for obj in list(vars(module).values()):
            members = vars(obj).values() if isinstance(obj, type) else (obj,)
            for member in members:
                func = _function_of(member)
                if func is not None and func.__module__.startswith(OURS) and id(func) not in seen:
                    seen.add(id(func))
                    yield func


def _function_of(member: object) -> types.FunctionType | None:
    if isinstance(member, (staticmethod, classmethod)):
        member = member.__func__
    elif isinstance(member, property):
        member = member.fget
    return member if isinstance(member, types.FunctionType) else None
