"""How long a large config file takes to load and to reload, and how long requests wait meanwhile.

``python -m benchmarks.config_reload [--root DIR] [--backends N] [--reloads K]``, under the bench
lock. ``--root`` picks the edgeproxy checkout to measure (e.g. an older one, for a before/after).

1. ``parse_config`` of a generated ~1 MB file (one http listener with a route per backend, N
   backends of 8 servers each), in a child process of ``--root``: with libyaml when the checkout
   can use it, and with the pure-Python parser.
2. ``edgeproxy run`` (``workers: 1``) on that file plus a tcp listener to a local echo server; a
   client makes one request after another through it while the proxy is sent K SIGHUPs: the time
   from each HUP to its "configuration reloaded" line, and the longest request during the run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.netutil import free_port

HERE = Path(__file__).resolve().parent.parent


def big_config(backends: int, listen: int, echo: int) -> str:
    lines = [
        "timeouts: {connect: 2s, drain: 1s}",
        "log: {access: 'off'}",
        "listeners:",
        f"  - {{name: probe, bind: '127.0.0.1:{listen}', backend: echo}}",
        f"  - name: web\n    bind: '127.0.0.1:{free_port()}'\n    mode: http\n    backend: b0\n    routes:",
    ]
    route = "      - {{host: host{0}.example.com, path_prefix: /api/v{1}/, backend: b{0}}}"
    lines += [route.format(i, i % 7) for i in range(backends)]
    lines += ["backends:", f"  echo: {{health: {{type: none}}, servers: ['127.0.0.1:{echo}']}}"]
    for i in range(backends):
        lines += [f"  b{i}:", "    balance: roundrobin", "    health: {type: none}", "    servers:"]
        lines += [f"      - {{address: 10.{i // 250}.{i % 250}.{j + 1}:8080, weight: {1 + j % 3}}}" for j in range(8)]
    return "\n".join(lines) + "\n"


_PARSE = """
import sys, time, inspect
from edgeproxy.config import parse_config
raw = open(sys.argv[1], "rb").read()
modes = [True, False] if "libyaml" in inspect.signature(parse_config).parameters else [None]
for mode in modes:
    kw = {} if mode is None else {"libyaml": mode}
    t0 = time.perf_counter()
    parse_config(raw, sys.argv[1], **kw)
    print({True: "libyaml", False: "pure-python", None: "as-built"}[mode], round(time.perf_counter() - t0, 3))
"""


def echo_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv, int(srv.getsockname()[1])


def reload_run(root: Path, path: Path, port: int, reloads: int) -> dict[str, float]:
    log_path = path.with_suffix(".log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeproxy", "run", "-c", str(path)],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
    try:

        def count(msg: str) -> int:
            return log_path.read_text(errors="replace").count(f'"msg":"{msg}"')

        deadline = time.monotonic() + 120
        while count("edgeproxy started") == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.05)
        worst = 0.0
        failed = 0
        stop = threading.Event()

        def client() -> None:
            # A request that waits on a reload blocking the event loop can also fail: its connect
            # timer (timeouts.connect) fires late, when the loop is back.
            nonlocal worst, failed
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=60) as c:
                        c.sendall(b"ping")
                        if c.recv(4) != b"ping":
                            failed += 1
                except OSError:
                    failed += 1
                worst = max(worst, time.perf_counter() - t0)

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        times = []
        for n in range(1, reloads + 1):
            time.sleep(0.5)
            t0 = time.perf_counter()
            proc.send_signal(signal.SIGHUP)
            while count("configuration reloaded") < n:
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError("no reload within 120 s")
                time.sleep(0.005)
            times.append(time.perf_counter() - t0)
        time.sleep(0.5)
        stop.set()
        thread.join(60)
        return {
            "reload_s_max": round(max(times), 3),
            "reload_s_min": round(min(times), 3),
            "request_s_max": round(worst, 3),
            "requests_failed": failed,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.config_reload", description=__doc__)
    ap.add_argument("--root", type=Path, default=HERE, help="the edgeproxy checkout to measure")
    ap.add_argument("--backends", type=int, default=2000, help="backends in the file (2000: about 1 MB)")
    ap.add_argument("--reloads", type=int, default=3)
    args = ap.parse_args()
    srv, echo = echo_server()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="edgeproxy-config-bench-") as d:
        path = Path(d) / "big.yaml"
        path.write_text(big_config(args.backends, port, echo))
        size = path.stat().st_size
        parse = subprocess.run(
            [sys.executable, "-c", _PARSE, str(path)],
            cwd=args.root,
            env={**os.environ, "PYTHONPATH": str(args.root)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        result = {
            "root": str(args.root),
            "bytes": size,
            "parse_s": dict(zip(parse[::2], map(float, parse[1::2]), strict=True)),
            **reload_run(args.root, path, port, args.reloads),
        }
    srv.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
