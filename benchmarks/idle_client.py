"""Scenario 5's client: ``python -m benchmarks.idle_client PORT COUNT HOLD_SECONDS``.

Opens COUNT connections to 127.0.0.1:PORT, sends one keep-alive request on each and reads the
answer (so every connection is established end to end), prints ``READY established=N failed=N
open_seconds=S``, holds them all idle for HOLD_SECONDS, sends a second request on a sample to
prove they are still alive, prints ``DONE checked=N ok=N`` and closes everything. Sources spread
over 127.0.0.2-127.0.0.61 so no single source address runs out of ephemeral ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import time

REQUEST = b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"
SOURCES = [f"127.0.0.{i}" for i in range(2, 62)]
PARALLEL = 256  # connections being opened at once
SAMPLE = 100
_FAILURES = (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return head.startswith(b"HTTP/1.1 200")


async def main(port: int, count: int, hold: float) -> None:
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failed = 0
    gate = asyncio.Semaphore(PARALLEL)

    async def open_one(i: int) -> None:
        nonlocal failed
        async with gate:
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, local_addr=(SOURCES[i % len(SOURCES)], 0)), 10
                )
                if await asyncio.wait_for(_exchange(r, w), 10):
                    conns.append((r, w))
                else:
                    failed += 1
                    w.close()
            except _FAILURES:
                failed += 1

    t0 = time.monotonic()
    await asyncio.gather(*(open_one(i) for i in range(count)))
    print(f"READY established={len(conns)} failed={failed} open_seconds={time.monotonic() - t0:.2f}", flush=True)
    await asyncio.sleep(hold)
    ok = 0
    sample = conns[:: max(1, len(conns) // SAMPLE)][:SAMPLE]
    for r, w in sample:
        with contextlib.suppress(*_FAILURES):
            ok += await asyncio.wait_for(_exchange(r, w), 10)
    print(f"DONE checked={len(sample)} ok={ok}", flush=True)
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
