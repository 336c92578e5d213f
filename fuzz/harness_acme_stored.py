"""ACME data read back from elsewhere: the swarm's configs (any instance, or anyone with access to
the managers, may have written them) and the board pushed to workers. Any bytes as JSON give a
value or our own error (ValueError / StorageError / SealError), never another exception."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from edgeproxy.acme.board import Challenge, ChallengeBoard
from edgeproxy.acme.sealed import Sealer, SealError
from edgeproxy.acme.storage import CertStatus, StorageError
from edgeproxy.acme.swarm_api import config_data, config_labels

_SEALER = Sealer(b"fuzzing key of sixteen bytes or more")


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(SealError):
        _SEALER.open(data.decode("utf-8", "replace"), "ca/cert/a.test")
    try:
        value: Any = json.loads(data)
    except (ValueError, RecursionError):
        return
    for parse in (Challenge.from_json, CertStatus.from_json):
        with contextlib.suppress(ValueError, StorageError):
            parse(value)
    if isinstance(value, dict):
        with contextlib.suppress(ValueError):
            ChallengeBoard().apply_wire(value)
        with contextlib.suppress(ValueError):
            config_data(value)
        config_labels(value)


if __name__ == "__main__":
    from fuzz._atheris import run

    run(test_one_input)
