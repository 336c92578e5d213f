"""TLS handshakes with and without resumption: ``python -m benchmarks.tls_resume [--rounds N] [--seconds S]``.

wrk keeps no TLS session between connections, so scenarios 10 and 11 of ``python -m benchmarks``
measure full handshakes only. Here a Python client (``--clients`` processes on the load CPU) opens
a new TLS connection per request (``GET /small``, ``Connection: close``), either fresh each time
or resuming its last session (a TLS 1.3 ticket, or a TLS 1.2 session id), against edgeproxy and
HAProxy serving the same ECDSA P-256 certificate, alternating, and prints each proxy's median CPU
per handshake and the share of connections that did resume. The client is slower than wrk, so
handshakes/s is the client's limit; CPU per handshake is the proxies' figure.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import machine
from benchmarks.backend import Nginx
from benchmarks.procs import cpu_seconds
from benchmarks.tls_certs import certificate_file

REQUEST = b"GET /small HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n"


def _client(port: int, seconds: float, resume: bool, version: str, out: multiprocessing.Queue[tuple[int, int]]) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the benchmark's self-signed certificate
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    session: ssl.SSLSession | None = None
    done = reused = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            s = ctx.wrap_socket(raw, server_hostname="bench.test", session=session if resume else None)
            s.sendall(REQUEST)
            while s.recv(65536):
                pass
            reused += bool(s.session_reused)
            session = s.session  # (TLS 1.3: the ticket came after the handshake, with the data)
            s.close()
        done += 1
    out.put((done, reused))


def _load(port: int, seconds: float, resume: bool, version: str, clients: int) -> tuple[int, int]:
    q: multiprocessing.Queue[tuple[int, int]] = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_client, args=(port, seconds, resume, version, q)) for _ in range(clients)]
    for p in procs:
        p.start()
    results = [q.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(10)
    return sum(r[0] for r in results), sum(r[1] for r in results)


def compare(rounds: int, seconds: float, clients: int) -> None:
    from benchmarks.proxies import EdgeProxy, HAProxy, Proxy, Setup

    nofile = machine.raise_nofile()
    proxy_cpus, _, load_cpus = machine.cpu_split()
    if load_cpus:
        os.sched_setaffinity(0, {int(c) for c in load_cpus.split(",")})  # the clients inherit it
    workdir = Path(tempfile.mkdtemp(prefix="edgeproxy-tls-resume-"))
    nginx = Nginx(workdir, load_cpus, nofile)
    proxies: list[Proxy] = []
    try:
        setup = Setup("http", nginx.http_port, tls_pem=str(certificate_file(workdir, "ecdsa")))
        proxies = [EdgeProxy(setup, workdir, proxy_cpus), HAProxy(setup, workdir, proxy_cpus)]
        figures: dict[tuple[str, str, bool], list[float]] = {}
        for rnd in range(rounds):
            for version in ("1.3", "1.2"):
                for resume in (False, True):
                    for proxy in proxies:
                        cpu0 = cpu_seconds(proxy.pid)
                        done, reused = _load(proxy.port, seconds, resume, version, clients)
                        us = (cpu_seconds(proxy.pid) - cpu0) / max(1, done) * 1e6
                        figures.setdefault((proxy.name, version, resume), []).append(us)
                        print(f"round {rnd + 1} {proxy.name:9} TLS {version} {'resumed' if resume else 'full   '} "
                              f"{done / seconds:6.0f} handshakes/s {us:7.1f} us/handshake "
                              f"resumed {reused}/{done}", flush=True)  # fmt: skip
        print("\n| TLS | handshake | edgeproxy µs | HAProxy µs | ratio |\n|---|---|---:|---:|---:|")
        for version in ("1.3", "1.2"):
            for resume in (False, True):
                ep = statistics.median(figures[("edgeproxy", version, resume)])
                ha = statistics.median(figures[("haproxy", version, resume)])
                kind = "resumed" if resume else "full"
                print(f"| {version} | {kind} | {ep:.0f} | {ha:.0f} | {ep / ha:.2f} |")
    finally:
        for proxy in proxies:
            proxy.stop()
        nginx.stop()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tls_resume", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    args = p.parse_args()
    compare(args.rounds, args.seconds, args.clients)
    return 0


if __name__ == "__main__":
    sys.exit(main())
