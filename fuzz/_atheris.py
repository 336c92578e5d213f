"""Shared entry point of the harnesses: ``run(test_one_input)`` under atheris with coverage of
edgeproxy's own modules."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run(test_one_input: Callable[[bytes], None]) -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
