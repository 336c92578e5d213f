"""Issuance and renewal times against a real pebble on loopback (the figures in issue 14's note).

    flock /tmp/edgeproxy-bench.lock .venv/bin/python -m tests.acme.measure [RUNS]

Per run, a fresh pebble: ``first`` = start of the manager to the certificate installed (account
registration included), ``next`` = a second name with the account known, ``renewal`` = the order
that replaces a 9-second certificate (pebble's certificateValidityPeriod) a third before its end.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edgeproxy.acme.board import ChallengeBoard, ChallengeType
from edgeproxy.acme.client import AcmeClient
from edgeproxy.acme.dir_storage import DirStorage
from edgeproxy.acme.manager import AcmeManager, Settings
from tests.acme_responder import Responder, eventually
from tests.pebble import running_pebble


async def one_run(d: Path, kind: ChallengeType) -> dict[str, float]:
    with running_pebble(d / "pebble", validity=9) as peb:
        board = ChallengeBoard()
        responder = await Responder(board, peb.http01_port, peb.tlsalpn01_port).start()
        got: list[float] = []
        manager = AcmeManager(
            AcmeClient(peb.directory, ca_file=peb.ca, timeout=5),
            DirStorage(str(d / "store"), peb.directory),
            board,
            Settings(email="ops@example.com", prefer=(kind,)),
            on_certificate=lambda cid, cert: got.append(time.monotonic()),
        )
        try:
            t0 = time.monotonic()
            manager.want([["a.test"]])
            await manager.start()
            await eventually(lambda: len(got) >= 1)
            first = got[0] - t0
            t1 = time.monotonic()
            manager.want([["a.test"], ["b.test"]])
            manager.wake("b.test")
            await eventually(lambda: "b.test" in manager.certificates)
            second = time.monotonic() - t1
            manager.want([["a.test"]])
            await eventually(lambda: manager.managed["a.test"].orders["success"] >= 2, timeout=30)
            renewal = manager.managed["a.test"].last_duration or 0.0
        finally:
            await manager.close()
            await responder.close()
    return {"first": first, "next": second, "renewal": renewal}


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for kind in ("http-01", "tls-alpn-01"):
        results = []
        for _ in range(runs):
            with tempfile.TemporaryDirectory(prefix="acme-measure-") as d:
                results.append(asyncio.run(one_run(Path(d), kind)))  # type: ignore[arg-type]
        for key in ("first", "next", "renewal"):
            xs = [r[key] for r in results]
            spread = f"min {min(xs):.2f}  max {max(xs):.2f}"
            print(f"{kind:12} {key:8} median {statistics.median(xs):.2f} s  {spread}  (n={runs})")


if __name__ == "__main__":
    main()
