"""DNS-sized datagrams/s through edgeproxy (mode udp) next to the same client talking directly to
the server, in one run.

    .venv/bin/python benchmarks/udp_dns.py [--pairs 20000] [--window 16] [--send-proxy]

The server is a separate process (a blocking DNS-style responder) and so is edgeproxy; the client
keeps ``window`` queries in flight on one socket (one flow) and counts request/response pairs.
A lost datagram is not retried: the run reports how many replies came back. CPU per pair for
edgeproxy is utime+stime from /proc (steadier than the rate on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
QUERY = struct.pack("!HHHHHH", 0, 0x0100, 1, 0, 0, 0) + b"\x03web\x07example\x00" + struct.pack("!HH", 1, 1)

SERVER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("192.0.2.1")
while True:
    q, peer = s.recvfrom(2048)
    if len(q) > 16 and q[:12] == b"\r\n\r\n\x00\r\nQUIT\n":  # PROXY v2 signature: strip the header
        q = q[16 + int.from_bytes(q[14:16], "big"):]
    s.sendto(q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + q[12:] + rr, peer)
"""


def run_client(port: int, pairs: int, window: int) -> tuple[float, int]:
    """(seconds, replies) for ``pairs`` queries with ``window`` in flight."""
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind(("127.0.0.41", 0))
    c.settimeout(0.5)
    dst = ("127.0.0.1", port)
    sent = got = 0
    t0 = time.perf_counter()
    while got < pairs:
        while sent < pairs and sent - got < window:
            c.sendto(struct.pack("!H", sent & 0xFFFF) + QUERY[2:], dst)
            sent += 1
        try:
            c.recv(2048)
        except TimeoutError:
            if sent >= pairs:
                break  # the rest were lost
            got += 1  # count a loss as done so the window moves on
            continue
        got += 1
    elapsed = time.perf_counter() - t0
    c.close()
    return elapsed, got


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--send-proxy", action="store_true")
    args = ap.parse_args()

    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    sport = int(server.stdout.readline())
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    pport = probe.getsockname()[1]
    probe.close()
    d = Path(tempfile.mkdtemp(prefix="edgeproxy-udp-bench-"))
    cfg = {
        "log": {"access": "off", "level": "warning"},
        "listeners": [{"name": "dns", "bind": f"127.0.0.1:{pport}", "mode": "udp", "backend": "r"}],
        "backends": {"r": {"servers": [f"127.0.0.1:{sport}"], "send_proxy": "v2" if args.send_proxy else "none"}},
    }
    (d / "c.yaml").write_text(yaml.safe_dump(cfg))
    proxy = subprocess.Popen([sys.executable, "-m", "edgeproxy", "run", "-c", str(d / "c.yaml")], cwd=ROOT)
    try:
        time.sleep(1.5)
        run_client(sport, 1000, args.window)  # warm-up, both paths
        run_client(pport, 1000, args.window)
        t_direct, n_direct = run_client(sport, args.pairs, args.window)
        cpu0 = cpu_seconds(proxy.pid)
        t_proxy, n_proxy = run_client(pport, args.pairs, args.window)
        cpu = cpu_seconds(proxy.pid) - cpu0
        print(f"pairs={args.pairs} window={args.window} send_proxy={'v2' if args.send_proxy else 'none'}")
        print(f"direct:    {n_direct / t_direct:9.0f} pairs/s  ({n_direct} replies in {t_direct:.2f} s)")
        print(f"edgeproxy: {n_proxy / t_proxy:9.0f} pairs/s  ({n_proxy} replies in {t_proxy:.2f} s)")
        print(f"edgeproxy CPU: {cpu * 1e6 / max(n_proxy, 1):.1f} us per pair (2 datagrams relayed)")
    finally:
        proxy.terminate()
        proxy.wait(15)
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
